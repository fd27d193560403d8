"""Gradient statistics over a run (seed 003's modelling): what the uplink codec has to code.

    python tools/gradient_stats.py SCENARIO.yaml [--learner 0] [--every 5] [--out DIR]

Runs the scenario and records, every `every`-th upload of one learner, the update it
sends (its model minus the base it last received: exactly the input of the uplink
codec), layer by layer. Then per upload and layer: fitted GenNorm beta and scale,
excess kurtosis, Wasserstein-2 distances of the standardized update to the fitted
GenNorm, Normal and Laplace; per layer: Spearman and Kolmogorov-Smirnov independence
tests across uploads with their pass ratios. Writes layer_stats.csv and
independence.csv and prints per-layer medians. Recording is an observer of the run
(``Observer.on_upload``): it reads the update only.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

import netfl
from netfl.compression.stats import run_stats


class UpdateRecorder(netfl.Observer):
    """Keeps every ``every``-th update one learner sends up, layer by layer (read only)."""

    def __init__(self, learner: int, every: int) -> None:
        self.learner, self.every = learner, every
        self.uploads = 0
        self.history: list[list[np.ndarray]] = []

    def on_upload(self, sim, learner: int, update) -> None:
        if learner != self.learner:
            return
        self.uploads += 1
        if self.uploads % self.every == 0:
            self.history.append([t.detach().cpu().numpy()
                                 for t in sim.bank.unflatten(update).values()])


def write(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--learner", type=int, default=0)
    ap.add_argument("--every", type=int, default=1, help="keep every k-th upload")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    scenario = netfl.load(args.scenario)
    recorder = UpdateRecorder(args.learner, args.every)
    netfl.simulate(scenario, observers=[recorder])
    if recorder.uploads == 0:
        print(f"error: protocol {scenario.protocol.name} sent no model updates from learner "
              f"{args.learner}", file=sys.stderr)
        return 2
    history = recorder.history
    rows, tests = run_stats(history)
    out = Path(args.out or tempfile.mkdtemp(prefix="gradient-stats-"))
    out.mkdir(parents=True, exist_ok=True)
    write(out / "layer_stats.csv", rows)
    write(out / "independence.csv", tests)
    print(f"{len(history)} uploads of learner {args.learner} recorded; tables in {out}")
    keys = [k for k in rows[0] if k not in ("iteration", "layer")] if rows else []
    for layer in sorted({r["layer"] for r in rows}):
        mine = [r for r in rows if r["layer"] == layer]
        medians = ", ".join(f"{k}={statistics.median(r[k] for r in mine):.3g}" for k in keys)
        print(f"layer {layer}: {medians}")
    for t in tests:
        print("independence " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in t.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
