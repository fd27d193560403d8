"""Reproduce seed 004's experiments at CPU scale and test its claims on netfl's network model.

    python tools/reproduce_seed004.py [--out runs/seed004] [--only fig2,fig3,fig5]

Runs scenarios/seed004/{fig2,fig3,fig5}.sweep.yaml, prints one table per figure
(protocol, setting, cumulative loss, cumulative bytes, final accuracy), writes the
plots (tradeoff.png per figure, curves.png per run with drift lines), and checks:
  (i)  for periodic b=1 there is a dynamic setting with cumulative loss within 10%
       using at most half the bytes (Fig. 2);
  (ii) under drift, dynamic averaging reaches a cumulative loss within 10% of
       periodic's with at least 5x fewer bytes, and its communication rises after
       each drift and falls between drifts (Fig. 5).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from netfl import sweep
from netfl.plots import plot_runs

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ("fig2", "fig3", "fig5")


def run_figure(name: str, out: Path) -> list[dict]:
    scenarios = sweep.load(ROOT / "scenarios" / "seed004" / f"{name}.sweep.yaml")
    rows = sweep.run_sweep(scenarios, out / name)
    plot_runs([str(out / name / s.name) for s in scenarios], str(out / name))
    return rows


def claim_i(rows: list[dict]) -> str:
    base = next(r for r in rows if r["protocol"] == "periodic" and r["setting"].startswith("b=1"))
    hits = [r for r in rows if r["protocol"] == "dynamic"
            and r["cumulative_loss"] <= 1.1 * base["cumulative_loss"]
            and r["bytes_total"] <= 0.5 * base["bytes_total"]]
    lines = [f"periodic b=1: loss {base['cumulative_loss']:.0f}, bytes {base['bytes_total']}"]
    for r in rows:
        if r["protocol"] == "dynamic":
            loss = r["cumulative_loss"] / base["cumulative_loss"]
            sent = r["bytes_total"] / base["bytes_total"]
            lines.append(f"  dynamic {r['setting']}: loss x{loss:.3f}, bytes x{sent:.3f}")
    verdict = "REPRODUCED" if hits else "NOT reproduced"
    best = f" (e.g. dynamic {hits[0]['setting']})" if hits else ""
    return f"claim (i) {verdict}{best}\n" + "\n".join(lines)


def bytes_per_round(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open() as handle:
        totals = [float(r["bytes_total"]) for r in csv.DictReader(handle)]
    return [b - a for a, b in zip([0.0, *totals], totals)]


def drift_rounds(run_dir: Path) -> list[int]:
    path = run_dir / "events.csv"
    if not path.is_file():
        return []
    with path.open() as handle:
        return [int(r["round"]) for r in csv.DictReader(handle)]


def claim_ii(rows: list[dict], out: Path, window: int) -> str:
    periodic = [r for r in rows if r["protocol"] == "periodic"]
    dynamic = [r for r in rows if r["protocol"] == "dynamic"]
    lines, any_hit = [], False
    for p in periodic:
        hits = [d for d in dynamic if d["cumulative_loss"] <= 1.1 * p["cumulative_loss"]
                and 5 * d["bytes_total"] <= p["bytes_total"]]
        any_hit |= bool(hits)
        lines.append(f"periodic {p['setting']}: loss {p['cumulative_loss']:.0f}, bytes "
                     f"{p['bytes_total']}; dynamic within 10% with >=5x fewer bytes: "
                     f"{', '.join(d['setting'] for d in hits) or 'none'}")
    for d in dynamic:
        run_dir = out / d["run"]
        per_round = bytes_per_round(run_dir)
        rises = []
        for r in drift_rounds(run_dir):
            before = sum(per_round[max(0, r - 1 - window): r - 1]) / window
            after = sum(per_round[r - 1: r - 1 + window]) / window
            late = per_round[r - 1 + window: r - 1 + 3 * window]
            falls = sum(late) / max(len(late), 1) < after
            rises.append(after > before and falls)
        ratio = d["cumulative_loss"] / periodic[0]["cumulative_loss"]
        lines.append(f"  dynamic {d['setting']}: loss x{ratio:.3f}"
                     f" of periodic {periodic[0]['setting']}, bytes "
                     f"/{periodic[0]['bytes_total'] / max(d['bytes_total'], 1):.1f}; "
                     f"communication rises after and falls between drifts at "
                     f"{sum(rises)}/{len(rises)} drifts")
    verdict = "REPRODUCED" if any_hit else "NOT reproduced"
    return f"claim (ii) loss/bytes part {verdict}\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=f"runs/seed004/{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--only", default=",".join(FIGURES))
    ap.add_argument("--window", type=int, default=20, help="rounds compared around a drift")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for name in args.only.split(","):
        rows = run_figure(name, out)
        print(f"\n== {name} ==")
        print(sweep.format_table(rows))
        if name == "fig2":
            print(claim_i(rows))
        if name == "fig5":
            print(claim_ii(rows, out / name, args.window))
    print(f"\nruns, tables (sweep.csv) and plots under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
