"""Seed 003's rate-versus-accuracy study at CPU scale, with real bytes on the wire.

    python tools/codec_study.py [--rounds 300] [--budgets 6000,18000] [--out runs/codec-study]

Two learners on non-iid digits (disjoint halves of the classes), one local SGD step
per round, every update sent through the uplink codec under the same bit budget
(the downlink is unbounded: full models, as in seed 003). M22's M is chosen per
budget by a short calibration run (netfl.compression.choose_m). Prints a table of
final accuracy and accuracy per bit, writes it as study.csv, and plots accuracy
against cumulative uplink bits (accuracy_vs_bits.png).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from netfl.compression import M22, choose_m  # noqa: E402
from netfl.results import read_metrics  # noqa: E402
from netfl.run import run  # noqa: E402
from netfl.scenario import from_dict  # noqa: E402

CODECS = {
    "uniform": {}, "fp8": {}, "fp4": {}, "countsketch": {}, "tinyscript": {}, "topk": {},
    "qsgd": {},
}


def scenario(name: str, rounds: int, uplink: dict | None, seed: int = 0):
    return from_dict({
        "name": name, "seed": seed, "device": "cpu",
        "network": {"topology": {"generator": "star"}, "bandwidth": "10 Mbit/s",
                    "latency": "10 ms"},
        "learners": {"count": 2, "compute_time": "10 ms"},
        "data": {"dataset": "digits", "partition": "classes", "batch_size": 32},
        "model": {"kind": "mlp", "hidden": [64, 64]},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "protocol": {"name": "periodic", "b": 1},
        "compression": {"uplink": uplink},
        "horizon": {"rounds": rounds},
        "eval": {"every": max(1, rounds // 30), "local": False},
    })


def one(out: Path, label: str, rounds: int, uplink: dict | None) -> dict:
    summary = run(scenario(label, rounds, uplink), str(out / label), progress=False)
    rows = read_metrics(out / label)
    curve = [(8 * int(r["bytes_up"]), float(r["acc_mean_model"]))
             for r in rows if r["acc_mean_model"]]
    bits = 8 * summary["bytes_up"]
    return {"codec": label, "final_accuracy": summary["final_accuracy"], "uplink_bits": bits,
            "accuracy_per_mbit": summary["final_accuracy"] / (bits / 1e6), "curve": curve}


def pick_m(out: Path, budget: int, rounds: int) -> tuple[int, dict]:
    """M22's M by the accuracy of a short calibration run for each candidate."""
    def accuracy_lost(codec: M22) -> float:
        label = f"calibrate-m22-M{codec.M:g}-{budget}"
        uplink = {"name": "m22", "budget_bits": budget, "M": codec.M}
        summary = run(scenario(label, rounds, uplink, seed=1), str(out / label), progress=False)
        return 1.0 - summary["final_accuracy"]

    return choose_m(accuracy_lost, candidates=(0, 1, 2, 3), budget_bits=budget)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--calibration-rounds", type=int, default=60)
    ap.add_argument("--budgets", default="6000,18000", help="bits per update (per message)")
    ap.add_argument("--out", default=f"runs/codec-study/{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [one(out, "full-float32", args.rounds, None)]
    for budget in (int(b) for b in args.budgets.split(",")):
        best_m, scores = pick_m(out, budget, args.calibration_rounds)
        print(f"budget {budget}: M22 calibration accuracy lost {scores} -> M={best_m:g}",
              file=sys.stderr)
        uplink = {"name": "m22", "budget_bits": budget, "M": best_m}
        results.append(one(out, f"m22-M{best_m:g}-{budget}", args.rounds, uplink))
        for name, params in CODECS.items():
            uplink = {"name": name, "budget_bits": budget, **params}
            results.append(one(out, f"{name}-{budget}", args.rounds, uplink))
            print(f"done {name} at {budget} bits", file=sys.stderr)

    with (out / "study.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["codec", "final_accuracy", "uplink_bits", "accuracy_per_mbit"])
        for r in results:
            writer.writerow([r["codec"], r["final_accuracy"], r["uplink_bits"],
                             r["accuracy_per_mbit"]])
    print(f"{'codec':24} {'final acc':>9} {'uplink bits':>13} {'acc / Mbit':>11}")
    for r in results:
        print(f"{r['codec']:24} {r['final_accuracy']:9.3f} {r['uplink_bits']:13d} "
              f"{r['accuracy_per_mbit']:11.4f}")

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot([x / 1e6 for x in xs], ys, label=r["codec"], linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (Mbit)")
    ax.set_ylabel("accuracy of the averaged model")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_bits.png", dpi=120)
    print(f"table and plot under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
