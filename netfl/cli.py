"""Command line: `netfl run`, `netfl validate`, `netfl sweep`, `netfl plot`, `netfl topo`.

Errors a user can cause print one line naming the key or file and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from types import ModuleType

import yaml

EXIT_USER_ERROR = 2


def _lazy(name: str) -> ModuleType:
    """``name`` imported on first attribute access (importlib's LazyLoader), so that a
    Ctrl-C while torch and pydantic load falls inside ``main``'s handler, not before it."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


scenario_mod = _lazy("netfl.scenario")


def _user_errors() -> tuple[type[Exception], ...]:
    """Exception types that mean 'fix your input', gathered lazily to keep start-up light."""
    from netfl.checkpoint import CheckpointError
    from netfl.data.datasets import DataError
    from netfl.learning.models import ModelError
    from netfl.plots import PlotError
    from netfl.results import OutputError
    from netfl.sim.topology import TopologyError

    return (scenario_mod.ScenarioError, DataError, ModelError, OutputError, TopologyError,
            PlotError, CheckpointError)


def _cmd_validate(args: argparse.Namespace) -> int:
    from netfl.validation import check

    scenario = scenario_mod.load(args.file, args.set)
    check(scenario)  # every build-time check `netfl run` makes, nothing trained
    print(yaml.safe_dump(scenario.resolved(), sort_keys=False), end="")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Exit 0 completed, 3 diverged, 130/143 interrupted by SIGINT/SIGTERM (128 + signal)."""
    import signal

    from netfl.api import resume_into, simulate_into

    if args.resume is not None:
        if args.file is not None or args.set or args.out is not None:
            raise scenario_mod.ScenarioError("--resume RUN_DIR takes the scenario from the run "
                                             "directory: give no scenario file, --set or --out")
        summary = resume_into(args.resume, progress=not args.quiet).summary
    else:
        if args.file is None:
            raise scenario_mod.ScenarioError("netfl run: give a scenario file, or --resume "
                                             "RUN_DIR")
        scenario = scenario_mod.load(args.file, args.set)
        summary = simulate_into(scenario, args.out, progress=not args.quiet).summary
    print(json.dumps(summary, indent=2))
    if summary["status"] == "interrupted":
        return 128 + signal.Signals[summary.get("interrupted_by", "SIGINT")].value
    return {"completed": 0, "diverged": 3}.get(summary["status"], 1)


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Exit 0 when every run completed, 2 for a bad sweep (nothing run), 1 when a run
    failed, 3 when one diverged, 130/143 when SIGINT/SIGTERM stopped the sweep."""
    import os
    import time
    from pathlib import Path

    from netfl import sweep
    from netfl.sweep_exec import previous, run_sweep

    if args.engine != "ray" and (args.address is not None or args.gpus_per_run):
        raise scenario_mod.ScenarioError("--address and --gpus-per-run need --engine ray")
    if args.engine == "ray" and args.workers is not None:
        raise scenario_mod.ScenarioError("--workers is for --engine local; Ray gives each run "
                                         "one CPU (and --gpus-per-run GPUs)")
    scenarios = sweep.load(args.file, args.set)
    if args.dry_run:
        for s in scenarios:
            state = "" if args.out is None else \
                {"new": "", "done": "  (done)", "retry": "  (rerun)"}[
                    previous(Path(args.out) / s.name, sweep.digest(s))[0]]
            print(f"{s.name}: {s.protocol.name} {sweep.setting(s)}{state}")
        return 0
    out = args.out or f"runs/sweeps/{scenarios.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = run_sweep(scenarios, out, progress=not args.quiet,
                     workers=args.workers or os.cpu_count() or 1, engine=args.engine,
                     address=args.address, gpus_per_run=args.gpus_per_run)
    print(sweep.format_table(rows))
    print(f"table: {Path(out) / 'sweep.csv'}")
    statuses = {r["status"] for r in rows}
    if statuses - {"completed", "diverged"}:
        print(f"resume: netfl sweep {args.file} --out {out}", file=sys.stderr)
    if rows.interrupted:
        return 143 if rows.terminated else 130
    return 1 if "failed" in statuses else 3 if "diverged" in statuses else 0


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


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="netfl", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    def scenario_args(p: argparse.ArgumentParser, optional: bool = False) -> None:
        p.add_argument("file", help="scenario YAML file", nargs="?" if optional else None)
        p.add_argument(
            "--set", action="append", default=[], metavar="KEY.PATH=VALUE",
            help="override a scenario key, e.g. --set protocol.b=4 (repeatable)",
        )

    p_run = sub.add_parser("run", help="run a scenario and write a run directory")
    scenario_args(p_run, optional=True)
    p_run.add_argument("--out", help="run directory (must not exist or be empty)")
    p_run.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run from its last checkpoint "
                       "(output.checkpoint_every)")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_run.set_defaults(func=_cmd_run)

    p_val = sub.add_parser("validate", help="print the resolved scenario or its errors")
    scenario_args(p_val)
    p_val.set_defaults(func=_cmd_validate)

    p_sweep = sub.add_parser("sweep", help="run every setting of a sweep file, print one table")
    scenario_args(p_sweep)
    p_sweep.add_argument("--out", help="directory for the runs and sweep.csv")
    p_sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    p_sweep.add_argument("--dry-run", action="store_true",
                         help="validate, list the runs (and, with --out, which are done) and stop")
    p_sweep.add_argument("--workers", type=_positive_int, metavar="N",
                         help="runs at a time, each in its own process with one torch thread "
                         "(default: the machine's cores; 1: one after another in this process)")
    p_sweep.add_argument("--engine", choices=["local", "ray"], default="local",
                         help="ray: run the runs as Ray tasks (pip install 'ray>=2.9')")
    p_sweep.add_argument("--address", metavar="ADDR",
                         help="Ray cluster to join (default: start a local Ray instance)")
    p_sweep.add_argument("--gpus-per-run", type=_fraction, default=0.0, metavar="F",
                         help="GPUs Ray reserves for each run, e.g. 0.25: four runs per GPU")
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


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM (what Slurm and Kubernetes send) stops the command as Ctrl-C does."""
    from netfl.api import Interrupted

    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 2 for an error the user can fix (one line, no traceback),
    1 for a run that failed, 128 + signal when SIGINT/SIGTERM stopped it."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        _start_sweep_workers(argv)
        import netfl.api  # noqa: F401  (imported now, so the handler below never imports)

        return _main(argv)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM before or after the run itself
        signum = getattr(exc, "signum", signal.SIGINT)
        try:
            print(f"error: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        except KeyboardInterrupt:
            pass
        return 128 + signum
    finally:
        if previous is not None:  # None: not set from Python, nothing to restore
            signal.signal(signal.SIGTERM, previous)


def _start_sweep_workers(argv: list[str] | None) -> None:
    """``netfl sweep`` with workers: start their fork server before this process imports
    torch and netfl, so both import at once on two cores (netfl.workers)."""
    import contextlib
    import io

    quiet = io.StringIO()
    try:  # silently: a bad command line (or --help) is _main's to report
        with contextlib.redirect_stderr(quiet), contextlib.redirect_stdout(quiet):
            args, _ = parser().parse_known_args(argv)
    except SystemExit:
        return
    if args.command == "sweep" and args.engine == "local" and not args.dry_run:
        import os

        from netfl.workers import start_workers

        start_workers(args.workers or os.cpu_count() or 1)


def _main(argv: list[str] | None) -> int:
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


def entry() -> None:
    """The ``netfl`` command: ``main``, then exit with its code. Once a signal stopped it,
    later SIGINTs and SIGTERMs are only swallowed: the process is just exiting, and a
    second Ctrl-C that Python handles after the run's guard is gone (during interpreter
    shutdown: atexit, finalizers) would otherwise end it with a KeyboardInterrupt
    traceback. Not ``main``'s own doing: a program that calls ``main`` keeps its
    handlers."""
    import signal
    import threading

    code = main()
    if code > 128 and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: None)
    sys.exit(code)


if __name__ == "__main__":
    entry()
