"""Encode+decode time of every codec on one 1,000,000-entry float32 update (CPU).

    python tools/bench/bench_codecs.py [--n 1000000] [--repeat 5] [--bits-per-entry 0.6 2]

Each codec runs dense (its defaults; topk/randk keep 10%, countsketch a 5 x 20,000 sketch)
and at equal budgets of the given bits per entry (seed 003's 332k bits for a 553k-parameter
CNN is 0.6). The input is Student-t (3 degrees of freedom) scaled to 1e-3, a heavy-tailed
stand-in for a gradient. Quantizer designs are warmed first, so times exclude the one-off
design of a (beta, R, M) table. The figure is the median of --repeat runs of
encode + decode; nmse = ||decode(encode(x)) - x||^2 / ||x||^2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from netfl.compression import get
from netfl.compression.fitted import FittedQuantCodec

DENSE = [
    ("none", {}),
    ("fp16", {}),
    ("bf16", {}),
    ("topk", {"k": 0.1}),
    ("randk", {"k": 0.1}),
    ("uniform", {"R": 4}),
    ("qsgd", {}),
    ("fp8", {}),
    ("fp4", {}),
    ("countsketch", {"cols": 20_000}),
    ("tinyscript", {}),
    ("m22", {"M": 2}),
]
BUDGETED = [
    "fp16", "bf16", "topk", "randk", "uniform", "qsgd", "fp8", "fp4", "countsketch",
    "tinyscript", "m22",
]


def time_codec(codec, x: torch.Tensor, repeat: int) -> tuple[int, float, float]:
    """(bytes, median ms of encode+decode, nmse)."""
    if isinstance(codec, FittedQuantCodec):
        codec.warm()
    blob = codec.encode(x)  # warm caches (hashes, designs) outside the timing
    codec.decode(blob)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        blob = codec.encode(x)
        y = codec.decode(blob)
        times.append(time.perf_counter() - start)
    nmse = float(((y - x) ** 2).sum() / (x**2).sum())
    return len(blob), 1e3 * statistics.median(times), nmse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bits-per-entry", type=float, nargs="*", default=[0.6, 2.0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = torch.from_numpy((1e-3 * rng.standard_t(3, size=args.n)).astype(np.float32))

    runs = [(name, params) for name, params in DENSE]
    for bpe in args.bits_per_entry:
        budget = int(bpe * args.n)
        runs += [(name, {"budget_bits": budget}) for name in BUDGETED]
        runs += [("m22", {"budget_bits": budget, "R": "auto"})]
    print(f"n = {args.n:,} float32 entries, Student-t(3) * 1e-3, median of {args.repeat}")
    print(f"{'codec':12s} {'params':34s} {'bytes':>10s} {'bits/entry':>10s} "
          f"{'ms':>8s} {'nmse':>8s}")
    for name, params in runs:
        size, ms, nmse = time_codec(get(name, **params), x, args.repeat)
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "-"
        print(f"{name:12s} {shown:34s} {size:10d} {8 * size / args.n:10.3f} "
              f"{ms:8.1f} {nmse:8.4f}")


if __name__ == "__main__":
    main()
