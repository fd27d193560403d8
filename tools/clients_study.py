"""Unreliable clients study: accuracy and bytes against simulated time, per protocol.

Reads the run directories of ``netfl sweep scenarios/clients/study.sweep.yaml``
(each run's resolved scenario says its protocol and offline fraction), prints a
Markdown table and draws ``docs/clients_study.png``: one column per protocol,
accuracy (top) and cumulative bytes (bottom) against simulated time, one line
per unavailability level.

    netfl sweep scenarios/clients/study.sweep.yaml --out runs/clients-study
    python tools/clients_study.py runs/clients-study [--png docs/clients_study.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402


def collect(root: Path) -> list[dict]:
    """One record per finished run under ``root``: its settings, summary and metrics."""
    runs = []
    for summary_path in sorted(root.glob("**/summary.json")):
        run_dir = summary_path.parent
        if not (run_dir / "scenario.yaml").is_file():
            continue  # the sweep's own summary
        summary = json.loads(summary_path.read_text())
        scenario = yaml.safe_load((run_dir / "scenario.yaml").read_text())
        availability = scenario["learners"]["availability"]
        fraction = availability.get("offline_fraction") or 0.0
        metrics = pd.read_csv(run_dir / "metrics.csv")
        runs.append({"protocol": scenario["protocol"]["name"], "offline": float(fraction),
                     "summary": summary, "metrics": metrics})
    return runs


def table(runs: list[dict]) -> str:
    lines = ["| protocol | offline | final accuracy | time to 0.8 (s) | MB sent | rounds | "
             "selected | completed | dropped | late | messages lost |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in sorted(runs, key=lambda r: (r["protocol"], r["offline"])):
        s, last = run["summary"], run["metrics"].iloc[-1]

        def cell(name: str, last: pd.Series = last) -> str:
            return str(int(last[name])) if name in last and pd.notna(last[name]) else "-"

        tta = s.get("time_to_accuracy_s")
        acc = s.get("final_accuracy")
        lines.append(
            f"| {run['protocol']} | {run['offline']:.0%} | "
            f"{'-' if acc is None else f'{acc:.3f}'} | "
            f"{'-' if tta is None else f'{tta:.1f}'} | {s['bytes_total'] / 1e6:.1f} | "
            f"{s['rounds']} | {cell('selected')} | {cell('completed')} | {cell('dropped')} | "
            f"{s.get('messages_late', 0)} | {s['messages_lost']} |")
    return "\n".join(lines)


def plot(runs: list[dict], png: Path) -> None:
    protocols = sorted({r["protocol"] for r in runs})
    fig, axes = plt.subplots(2, len(protocols), figsize=(4.2 * len(protocols), 6.4),
                             sharex=True, squeeze=False)
    for col, name in enumerate(protocols):
        top, bottom = axes[0][col], axes[1][col]
        for run in sorted((r for r in runs if r["protocol"] == name), key=lambda r: r["offline"]):
            frame = run["metrics"]
            label = f"{run['offline']:.0%} offline"
            scored = frame.dropna(subset=["acc_mean_model"])
            top.plot(scored["sim_time_s"], scored["acc_mean_model"], marker=".", label=label)
            bottom.plot(frame["sim_time_s"], frame["bytes_total"] / 1e6, label=label)
        top.set_title(name)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy (mean model)")
        bottom.set_ylabel("MB sent")
        bottom.set_xlabel("simulated time (s)")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
        top.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the sweep's output directory")
    parser.add_argument("--png", type=Path, default=Path("docs/clients_study.png"))
    args = parser.parse_args(argv)
    runs = collect(args.root)
    if not runs:
        print(f"error: {args.root}: no run directories with summary.json", file=sys.stderr)
        return 2
    print(table(runs))
    plot(runs, args.png)
    print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
