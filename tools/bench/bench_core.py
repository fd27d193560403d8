"""Simulator overhead: netfl's periodic averaging against a bare torch.func/vmap loop.

100 learners, MLP 64-64-10 on digits, 20 rounds of b=10 steps, batch 10, lr 0.1.
netfl runs with its network, byte accounting and run directory; the bare loop
does the same training (vmapped SGD steps, averaging every 10 steps) and
nothing else. Last line: both wall times and their ratio (target <= 1.3 on CPU).

    python tools/bench/bench_core.py [--learners 100] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch.func import functional_call, grad_and_value, vmap

from netfl.build import resolve_device
from netfl.data.datasets import load_dataset
from netfl.learning.models import build_model
from netfl.run import run
from netfl.scenario import from_dict

ROUNDS, B_SYNC, BATCH, LR = 20, 10, 10, 0.1


def scenario(m: int, device: str):
    return from_dict({
        "name": "bench-core", "seed": 0, "device": device,
        "network": {"topology": {"generator": "star"}, "bandwidth": "100 Mbit/s",
                    "latency": "5 ms"},
        "learners": {"count": m, "compute_time": "10 ms"},
        "data": {"dataset": "digits", "batch_size": BATCH},
        "model": {"kind": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "sgd", "lr": LR},
        "protocol": {"name": "periodic", "b": B_SYNC},
        "horizon": {"rounds": ROUNDS * B_SYNC},
        "eval": {"every": ROUNDS * B_SYNC, "local": False},
    })


def bare_loop(m: int, device: torch.device) -> float:
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
    start = time.perf_counter()
    for t in range(1, ROUNDS * B_SYNC + 1):
        idx = torch.randint(n, (m, BATCH), generator=gen).to(device)
        grads, _ = step(params, data.x_train[idx], data.y_train[idx])
        for k in params:
            params[k].sub_(LR * grads[k])
        if t % B_SYNC == 0:
            for k in params:
                params[k].copy_(params[k].mean(0, keepdim=True).expand_as(params[k]))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def netfl_run(m: int, device: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(scenario(m, device), f"{tmp}/run", progress=False)
    assert summary["status"] == "completed"
    return summary["wall_time_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (both sides)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bare_loop(args.learners, device)  # warm-up: first calls compile kernels and load data
    netfl_run(args.learners, args.device)
    bare = min(bare_loop(args.learners, device) for _ in range(args.repeats))
    ours = min(netfl_run(args.learners, args.device) for _ in range(args.repeats))
    print(f"learners={args.learners} device={device} threads={torch.get_num_threads()}")
    print(f"bare vmap loop: {bare:.3f} s   netfl: {ours:.3f} s   ratio: {ours / bare:.2f}")


if __name__ == "__main__":
    main()
