"""Seed 002's parameter probe: R replicas as separate runs against R x m rows of one bank.

Runs each of seed 002's setups (scenarios/seed002/, 3 learners, 24 replicas) both ways in
this process, with fewer rounds (and pretraining steps) so that the separate replicas finish
in minutes, and prints the best wall time of each over ``--repeats`` runs (in the order
separate, one bank, one bank, separate, ...: a machine whose load drifts favours neither),
their ratio, and whether the two gave the same metrics and probe rows (they should, exactly).

    python tools/bench/bench_replicas.py [--setups cnn,rnn] [--rounds 40]
        [--pretrain-steps 100] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from netfl.build import build
from netfl.observers import Tables
from netfl.probes.parameters import TABLE, ParameterProbe
from netfl.scenario import Scenario, load

ROOT = Path(__file__).resolve().parents[2]


def shortened(s: Scenario, rounds: int, pretrain_steps: int) -> Scenario:
    model = s.model
    if model.pretrain_steps:
        model = model.model_copy(update={"pretrain_steps": min(model.pretrain_steps,
                                                               pretrain_steps)})
    horizon = s.horizon.model_copy(update={"rounds": rounds})
    return s.model_copy(update={"horizon": horizon, "model": model})


def timed(s: Scenario, one_bank: bool) -> tuple[float, str, dict[str, list[dict]]]:
    """Wall seconds of build + run (the separate replicas run inside), the path taken and
    the tables."""
    tables = Tables(learners=False, messages=True)
    start = time.perf_counter()
    built = build(s, observers=[tables], one_bank=one_bank)
    built.simulation.run()
    seconds = time.perf_counter() - start
    probe = next(p for p in built.probes if isinstance(p, ParameterProbe))
    return seconds, probe.path, tables.rows


def largest_difference(a: list[dict], b: list[dict]) -> float:
    """Largest relative difference between numeric cells of two row lists."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for key, value in x.items():
            if isinstance(value, float) and math.isfinite(value):
                other = y[key]
                worst = max(worst, abs(value - other) / max(abs(value), abs(other), 1e-30))
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="cnn,rnn", help="scenarios/seed002/<name>.yaml")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--pretrain-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.setups.split(","):
        s = shortened(load(ROOT / "scenarios" / "seed002" / f"{name}.yaml"), args.rounds,
                      args.pretrain_steps)
        timed(shortened(s, 2, 2), True)  # warm-up: kernels, dataset cache
        best = {False: math.inf, True: math.inf}
        got: dict[bool, dict[str, list[dict]]] = {}
        for i in range(args.repeats):
            for one_bank in ((False, True) if i % 2 == 0 else (True, False)):
                seconds, path, rows = timed(s, one_bank)
                assert path == ("one_bank" if one_bank else "separate"), path
                best[one_bank] = min(best[one_bank], seconds)
                got[one_bank] = rows
        sep_s, one_s, sep, one = best[False], best[True], got[False], got[True]
        rows = [{k: v for k, v in r.items() if k != "replica_path"} for r in one.get(TABLE, [])]
        ref = [{k: v for k, v in r.items() if k != "replica_path"} for r in sep.get(TABLE, [])]
        same_metrics = all(one.get(t) == sep.get(t) for t in ("metrics", "messages"))
        print(f"{s.name}: {s.probes.parameters.replicas} replicas x {s.learners.count} "
              f"learners, {args.rounds} rounds, pretrain {s.model.pretrain_steps} steps, "
              f"{args.threads} thread(s), best of {args.repeats}")
        print(f"  separate {sep_s:.1f} s, one bank {one_s:.1f} s, ratio {one_s / sep_s:.3f} "
              f"(speed-up {sep_s / one_s:.1f}x)")
        print(f"  metrics and messages identical: {same_metrics}; probe rows identical: "
              f"{rows == ref} (largest relative difference {largest_difference(rows, ref):.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
