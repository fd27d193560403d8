"""Sweep wall time: one run after another against worker processes.

An 8-run sweep (seeds 0-7) of a small digits run: 8 learners on a star, an MLP 64-10,
``--rounds`` rounds (default 300) of batch-10 SGD, evaluation every 100 rounds. It runs
twice through the command line, each time into a fresh directory: ``netfl sweep --workers
1`` (in one process, torch's default thread count) and ``--workers N`` (default 2: one
process and one torch thread per run at a time). Both include start-up (imports, data),
as a user sees them. The runs' metrics.csv are checked to be identical; the last line is
``serial S s, N workers P s, ratio P/S``. Why: a sweep on an N-core machine should take
about 1/N of its serial time (target on 2 cores: ratio <= 0.6).

    python tools/bench/bench_sweep.py [--workers 2] [--rounds 300] [--serial-threads 1]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SWEEP = {
    "name": "bench",
    "base": {
        "device": "cpu",
        "network": {"topology": {"generator": "star"}, "bandwidth": "100 Mbit/s",
                    "latency": "5 ms"},
        "learners": {"count": 8, "compute_time": "10 ms"},
        "data": {"dataset": "digits", "batch_size": 10},
        "model": {"kind": "mlp", "hidden": [64]},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "protocol": {"name": "periodic", "b": 5},
        "eval": {"every": 100, "local": False},
    },
    "grid": {"seed": list(range(8))},
}


def timed_sweep(path: Path, out: Path, workers: int, threads: int | None = None) -> float:
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "netfl.cli", "sweep", str(path), "--out", str(out),
                    "--quiet", "--workers", str(workers)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_names(out: Path) -> list[str]:
    with (out / "sweep.csv").open() as handle:
        return [row["run"] for row in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--keep", help="write the sweeps here instead of a temporary folder")
    ap.add_argument("--serial-threads", type=int,
                    help="torch threads of the serial sweep (OMP_NUM_THREADS; default: torch's)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec = {**SWEEP, "base": {**SWEEP["base"], "horizon": {"rounds": args.rounds}}}
        path = root / "bench.sweep.yaml"
        path.write_text(yaml.safe_dump(spec))
        serial = timed_sweep(path, root / "serial", 1, args.serial_threads)
        print(f"serial (--workers 1): {serial:.1f} s")
        parallel = timed_sweep(path, root / "parallel", args.workers)
        print(f"--workers {args.workers}: {parallel:.1f} s")
        runs = [(root / "serial" / a, root / "parallel" / b)
                for a, b in zip(run_names(root / "serial"), run_names(root / "parallel"))]
        same = all((a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
                   for a, b in runs)
        print(f"{len(runs)} runs, metrics.csv identical: {same}")
        print(f"serial {serial:.1f} s, {args.workers} workers {parallel:.1f} s, "
              f"ratio {parallel / serial:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
