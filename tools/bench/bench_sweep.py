"""Sweep wall time: one run after another against worker processes.

An 8-run sweep (seeds 0-7) of a small digits run: 8 learners on a star, an MLP 64-10,
``--rounds`` rounds (default 3,000: about 7.5 s a run on the 2-core machine, the length
the target is met at; start-up dominates shorter runs) of batch-10 SGD, evaluation every
100 rounds. It runs through the command line, each time into a fresh directory, as a
user runs it, start-up (imports, the build check of every run, the worker processes)
included:

- ``netfl sweep --workers 1``: in one process, torch's default thread count (the
  serial time the target is stated against);
- the same with one torch thread (``OMP_NUM_THREADS=1``): for runs this small torch's
  extra threads buy nothing, and on a busy machine their spinning makes the serial sweep
  slower, which would flatter the workers; this is the stricter reference;
- ``netfl sweep --workers N`` (default 2: one process and one torch thread per run).

``--repeat R`` runs the three R times, interleaved, and takes each one's fastest (what
noise from other processes cannot shorten). The runs' metrics.csv are checked to be
identical across all of them. The last line is ``serial S s, N workers P s, ratio P/S
(P/S1 against one-thread serial)``. Why: a sweep on an N-core machine should take about
1/N of its serial time (target on 2 cores: ratio <= 0.6).

    python tools/bench/bench_sweep.py [--workers 2] [--rounds 3000] [--repeat 1]
        [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
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
    """Wall seconds of one `netfl sweep` into a fresh out (threads: OMP_NUM_THREADS)."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "netfl.cli", "sweep", str(path), "--out", str(out),
                    "--quiet", "--workers", str(workers)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def metrics(out: Path) -> list[bytes]:
    """Each run's metrics.csv, in sweep order."""
    with (out / "sweep.csv").open() as handle:
        names = [row["run"] for row in csv.DictReader(handle)]
    return [(out / name / "metrics.csv").read_bytes() for name in names]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; best of")
    ap.add_argument("--keep", help="write the sweeps here instead of a temporary folder")
    args = ap.parse_args(argv)
    configs = {"serial": (1, None), "serial1": (1, 1), "workers": (args.workers, None)}
    labels = {"serial": "serial (--workers 1)", "serial1": "serial, one torch thread",
              "workers": f"--workers {args.workers}"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        spec = {**SWEEP, "base": {**SWEEP["base"], "horizon": {"rounds": args.rounds}}}
        path = root / "bench.sweep.yaml"
        path.write_text(yaml.safe_dump(spec))
        times: dict[str, list[float]] = {name: [] for name in configs}
        reference = None
        same = True
        for rep in range(args.repeat):
            for name, (workers, threads) in configs.items():
                times[name].append(timed_sweep(path, root / name, workers, threads))
                print(f"[{rep + 1}/{args.repeat}] {labels[name]}: {times[name][-1]:.1f} s",
                      flush=True)
                runs = metrics(root / name)
                reference = reference or runs
                same = same and runs == reference
            if args.repeat > 1:
                last = {name: values[-1] for name, values in times.items()}
                print(f"[{rep + 1}/{args.repeat}] ratio {last['workers'] / last['serial']:.2f} "
                      f"({last['workers'] / last['serial1']:.2f} against one-thread serial)",
                      flush=True)
        print(f"{len(reference or [])} runs, metrics.csv identical: {same}")
        serial, serial1, parallel = (min(times[name]) for name in configs)
        best = " (best of each)" if args.repeat > 1 else ""
        print(f"serial {serial:.1f} s, {args.workers} workers {parallel:.1f} s, ratio "
              f"{parallel / serial:.2f} ({parallel / serial1:.2f} against one-thread serial "
              f"{serial1:.1f} s){best}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
