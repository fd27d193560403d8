"""Gradient statistics over a run (seed 003's modelling): what the uplink codec has to code.

    python tools/gradient_stats.py SCENARIO.yaml [--learner 0] [--every 5] [--out DIR]

Runs the scenario and records, every `every`-th upload of one learner, the update it
sends (its model minus the base it last received: exactly the input of the uplink
codec), layer by layer. Then per upload and layer: fitted GenNorm beta and scale,
excess kurtosis, Wasserstein-2 distances of the standardized update to the fitted
GenNorm, Normal and Laplace; per layer: Spearman and Kolmogorov-Smirnov independence
tests across uploads with their pass ratios. Writes layer_stats.csv and
independence.csv and prints per-layer medians. Recording reads the update only.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from netfl.build import build
from netfl.compression.stats import run_stats
from netfl.scenario import load


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
    scenario = load(args.scenario)
    sim = build(scenario).simulation
    channel = getattr(sim.protocol, "channel", None)
    if channel is None:
        print(f"error: protocol {scenario.protocol.name} sends no model updates", file=sys.stderr)
        return 2
    history: list[list[np.ndarray]] = []
    uploads = [0]
    encode_up = channel.encode_up

    def recording(learners, models):
        hits = np.flatnonzero(np.asarray(learners) == args.learner)
        if len(hits):
            uploads[0] += 1
            if uploads[0] % args.every == 0:
                base = channel.bases[int(channel.learner_version[args.learner])]
                update = models[int(hits[0])] - base
                history.append(channel._layers(update))
        return encode_up(learners, models)

    channel.encode_up = recording
    sim.run()
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
