"""Training step of seed 002's RNN in the learner bank: batched autograd against vmap(grad).

The 394-parameter network (eleven 4-unit Elman layers on 64-step signals, 2 outputs) is
hundreds of tiny ops per step, so per-op overhead decides the cost. The bank trains models
that offer ``forward_stacked`` by plain autograd over all learners at once; this prints the
time per step of that path and of the generic ``vmap(grad(functional_call))`` path on the
same bank, and their ratio, for a few learner counts (batch 10, Adam).

    python tools/bench/bench_rnn.py [--learners 3,24,72] [--steps 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model


def seconds_per_step(bank: LearnerBank, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    bank.step(None, x, y)  # warm-up
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            bank.step(None, x, y)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--learners", default="3,24,72")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = build_model("rnn", (64, 1), 2, hidden=[4] * 11, activation="tanh")
    print(f"seed 002 RNN, {sum(p.numel() for p in model.parameters())} parameters, "
          f"batch {args.batch}, {args.threads} thread(s), best of 3 x {args.steps} steps")
    print(f"{'learners':>8} {'autograd ms':>12} {'vmap ms':>9} {'vmap/autograd':>14}")
    gen = torch.Generator().manual_seed(0)
    for k in (int(v) for v in args.learners.split(",")):
        x = torch.randn(k, args.batch, 64, 1, generator=gen)
        y = torch.randn(k, args.batch, 2, generator=gen)
        fast = LearnerBank(model, k, optimizer="adam", lr=0.01, loss="mse")
        slow = LearnerBank(model, k, optimizer="adam", lr=0.01, loss="mse")
        slow._stacked_forward = None  # the generic path every other model takes
        a, b = seconds_per_step(fast, x, y, args.steps), seconds_per_step(slow, x, y, args.steps)
        print(f"{k:8d} {a * 1e3:12.1f} {b * 1e3:9.1f} {b / a:14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
