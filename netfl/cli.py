"""Command line: `netfl run`, `netfl validate`, `netfl sweep`, `netfl plot`, `netfl topo`.

Errors a user can cause print one line naming the key or file and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from netfl import scenario as scenario_mod

EXIT_USER_ERROR = 2


def _user_errors() -> tuple[type[Exception], ...]:
    """Exception types that mean 'fix your input', gathered lazily to keep start-up light."""
    from netfl.data.datasets import DataError
    from netfl.learning.models import ModelError
    from netfl.plots import PlotError
    from netfl.results import OutputError
    from netfl.sim.topology import TopologyError

    return (scenario_mod.ScenarioError, DataError, ModelError, OutputError, TopologyError,
            PlotError)


def _cmd_validate(args: argparse.Namespace) -> int:
    from netfl.build import check_network

    scenario = scenario_mod.load(args.file, args.set)
    check_network(scenario)
    print(yaml.safe_dump(scenario.resolved(), sort_keys=False), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from netfl.run import run

    scenario = scenario_mod.load(args.file, args.set)
    summary = run(scenario, args.out, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    return {"completed": 0, "diverged": 3}.get(summary["status"], 130)


def _cmd_sweep(args: argparse.Namespace) -> int:
    import time

    from netfl import sweep
    from netfl.results import prepare_run_dir

    scenarios = sweep.load(args.file, args.set)
    if args.dry_run:
        for s in scenarios:
            print(f"{s.name}: {s.protocol.name} {sweep.setting(s)}")
        return 0
    out = prepare_run_dir(args.out or f"runs/sweeps/{scenarios[0].name.split('-')[0]}-"
                          f"{time.strftime('%Y%m%d-%H%M%S')}", "sweep")
    rows = sweep.run_sweep(scenarios, out, progress=not args.quiet)
    print(sweep.format_table(rows))
    print(f"table: {out / 'sweep.csv'}")
    statuses = {r["status"] for r in rows}
    return 0 if statuses == {"completed"} else 130 if "interrupted" in statuses else 3


def _cmd_plot(args: argparse.Namespace) -> int:
    from netfl.plots import plot_runs

    for path in plot_runs(args.runs, args.out):
        print(path)
    return 0


def _cmd_topo(args: argparse.Namespace) -> int:
    from netfl.topo_report import topo

    text, figure = topo(args.file, args.out, args.set)
    print(text)
    print(f"figure: {figure}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="netfl", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    def scenario_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="scenario YAML file")
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
            help="override a scenario key, e.g. --set protocol.b=4 (repeatable)",
        )

    p_run = sub.add_parser("run", help="run a scenario and write a run directory")
    scenario_args(p_run)
    p_run.add_argument("--out", help="run directory (must not exist or be empty)")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_run.set_defaults(func=_cmd_run)

    p_val = sub.add_parser("validate", help="print the resolved scenario or its errors")
    scenario_args(p_val)
    p_val.set_defaults(func=_cmd_validate)

    p_sweep = sub.add_parser("sweep", help="run every setting of a sweep file, print one table")
    scenario_args(p_sweep)
    p_sweep.add_argument("--out", help="directory for the runs and sweep.csv")
    p_sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    p_sweep.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    p_sweep.set_defaults(func=_cmd_sweep)

    p_plot = sub.add_parser("plot", help="PNG figures from one or more run directories")
    p_plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p_plot.add_argument("--out", help="directory for tradeoff.png (default: beside the runs)")
    p_plot.set_defaults(func=_cmd_plot)

    p_topo = sub.add_parser("topo", help="describe a topology or a scenario's network, draw it")
    p_topo.add_argument("file", help="topology file (.graphml, .edgelist, .yaml) or scenario YAML")
    p_topo.add_argument("--out", help="PNG path (default: <stem>_topology.png beside the file)")
    p_topo.add_argument(
        "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a scenario key (scenario files only; repeatable)",
    )
    p_topo.set_defaults(func=_cmd_topo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except scenario_mod.ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USER_ERROR
        from netfl.run import RunError

        if isinstance(exc, RunError):  # e.g. a deadlock: the run directory has its summary
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
