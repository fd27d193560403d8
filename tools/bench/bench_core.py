"""Simulator overhead: netfl's periodic averaging against a bare torch.func/vmap loop.

N learners (``--learners``, 100 by default), MLP 64-64-10 on digits, 20 rounds of b=10
steps, batch 10, lr 0.1. netfl runs with its network, byte accounting and run directory;
the bare loop does the same training (vmapped SGD steps, averaging every 10 steps) and
nothing else. Each measurement runs in its own child process (a warm-up run of 2 syncs,
then the timed run), so peak memory (VmHWM) is that side's alone; wall and CPU
(``time.process_time``) times cover the timed run. Memory: peak RSS, its growth over the
child's RSS after imports and data loading, and that growth per learner against the
parameter bytes (P x 4) plus the optimizer state. Last line: both wall times and the
ratio (target <= 1.10 at 100 learners, <= 1.15 at 1,000 and more), then the CPU ratio.

    python tools/bench/bench_core.py [--learners 100] [--repeats 3] [--device cpu]
                                     [--threads 1] [--divergence-every k]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, vmap

from netfl.build import resolve_device
from netfl.data.datasets import load_dataset
from netfl.learning.models import build_model
from netfl.run import run
from netfl.scenario import from_dict

ROUNDS, B_SYNC, BATCH, LR = 20, 10, 10, 0.1
WARMUP_ROUNDS = 2
MB = 2**20


def scenario(m: int, device: str, rounds: int, divergence_every: int):
    evaluation = {"every": rounds * B_SYNC, "local": False}
    if divergence_every:  # the key only where asked (unset: with the evaluations)
        evaluation["divergence_every"] = divergence_every
    return from_dict({
        "name": "bench-core", "seed": 0, "device": device,
        "network": {"topology": {"generator": "star"}, "bandwidth": "100 Mbit/s",
                    "latency": "5 ms"},
        "learners": {"count": m, "compute_time": "10 ms"},
        # shared: every learner samples the whole training set, as the bare loop does (and
        # 10,000 learners need it: digits has 1,438 training samples to partition)
        "data": {"dataset": "digits", "batch_size": BATCH, "partition": "shared"},
        "model": {"kind": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "sgd", "lr": LR},
        "protocol": {"name": "periodic", "b": B_SYNC},
        "horizon": {"rounds": rounds * B_SYNC},
        "eval": evaluation,
    })


def bare_loop(m: int, device: torch.device, rounds: int) -> None:
    """The same training with no simulation: vmapped SGD steps and an average every b steps."""
    data = load_dataset("digits", seed=0).to(device)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=[64, 64]).to(device)
    params = {k: v.detach().unsqueeze(0).repeat(m, *[1] * v.dim()) for k, v in
              model.named_parameters()}
    gen = torch.Generator(device="cpu").manual_seed(0)
    n = len(data.y_train)

    def loss_fn(p, x, y):
        out = functional_call(model, p, (x,))
        return torch.nn.functional.cross_entropy(out, y)

    step = vmap(grad_and_value(loss_fn))
    for t in range(1, rounds * B_SYNC + 1):
        idx = torch.randint(n, (m, BATCH), generator=gen).to(device)
        grads, _ = step(params, data.x_train[idx], data.y_train[idx])
        for k in params:
            params[k].sub_(LR * grads[k])
        if t % B_SYNC == 0:
            for k in params:
                params[k].copy_(params[k].mean(0, keepdim=True).expand_as(params[k]))
    if device.type == "cuda":
        torch.cuda.synchronize()


def netfl_run(m: int, device: str, rounds: int, divergence_every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(scenario(m, device, rounds, divergence_every), f"{tmp}/run",
                      progress=False)
    assert summary["status"] == "completed"


def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(side: str, m: int, device: str, divergence_every: int) -> dict[str, float]:
    """One side's measurement in this (fresh) process: warm-up, then the timed run."""
    dev = resolve_device(device)
    load_dataset("digits", seed=0)  # imports and data in the baseline, not in the growth
    base_kb = _status_kb("VmRSS")
    if side == "bare":
        bare_loop(m, dev, WARMUP_ROUNDS)
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        bare_loop(m, dev, ROUNDS)
    else:
        netfl_run(m, device, WARMUP_ROUNDS, divergence_every)
        gc.collect()  # the warm-up run's reference cycles: not the timed run's memory
        wall, cpu = time.perf_counter(), time.process_time()
        netfl_run(m, device, ROUNDS, divergence_every)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak_kb = _status_kb("VmHWM")
    return {"wall": wall, "cpu": cpu, "peak_kb": peak_kb, "growth_kb": max(peak_kb - base_kb, 0)}


def measure(side: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", side, "--learners", str(args.learners),
           "--device", args.device, "--divergence-every", str(args.divergence_every)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def param_count() -> int:
    data = load_dataset("digits", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=[64, 64])
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (both sides)")
    ap.add_argument("--divergence-every", type=int, default=0,
                    help="netfl's eval.divergence_every (1: every metrics row; 0: unset, "
                    "the scenario default: with the evaluations)")
    ap.add_argument("--child", choices=["bare", "netfl"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.learners, args.device, args.divergence_every)))
        return
    m = args.learners
    runs = {side: [measure(side, args) for _ in range(args.repeats)] for side in ("bare", "netfl")}
    best = {side: {key: min(r[key] for r in rs) for key in rs[0]} for side, rs in runs.items()}
    p = param_count()
    # SGD without momentum keeps no state; both sides hold one gradient set per step.
    opt_bytes = 0
    print(f"learners={m} device={resolve_device(args.device)} threads={torch.get_num_threads()} "
          f"P={p} param_bytes/learner={4 * p} optimizer_state/learner={opt_bytes} "
          f"divergence_every={args.divergence_every or 'unset'} repeats={args.repeats} "
          "(best of each)")
    print(f"{'side':6} {'wall_s':>8} {'cpu_s':>8} {'peak_rss_MB':>12} {'growth_MB':>10} "
          f"{'B/learner':>10} {'x(P*4+opt)':>11}")
    for side, b in best.items():
        growth = b["growth_kb"] * 1024
        per = growth / m
        print(f"{side:6} {b['wall']:8.3f} {b['cpu']:8.3f} {b['peak_kb'] * 1024 / MB:12.1f} "
              f"{growth / MB:10.1f} {per:10.0f} {per / (4 * p + opt_bytes):11.2f}")
    bare, ours = best["bare"], best["netfl"]
    print(f"bare vmap loop: {bare['wall']:.3f} s   netfl: {ours['wall']:.3f} s   "
          f"ratio: {ours['wall'] / bare['wall']:.2f}   (cpu {bare['cpu']:.3f} s / "
          f"{ours['cpu']:.3f} s, ratio {ours['cpu'] / bare['cpu']:.2f})")


if __name__ == "__main__":
    main()
