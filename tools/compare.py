"""Run several scenarios and print one table: cumulative loss against cumulative bytes.

    python tools/compare.py scenarios/seed004/*.yaml [--out runs/compare] [--set key=value]

Each run gets its own directory under --out; the table is also written there as CSV.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from netfl import scenario as scenario_mod
from netfl.run import run

COLUMNS = ["scenario", "protocol", "setting", "cumulative_loss", "bytes_total", "messages",
           "syncs", "final_accuracy", "sim_time_s", "wall_time_s"]


def setting(s: scenario_mod.Scenario) -> str:
    params = s.protocol.model_dump(exclude={"name", "wait"})
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default=f"runs/compare/{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    out = Path(args.out)
    rows = []
    for file in args.files:
        s = scenario_mod.load(file, args.set)
        summary = run(s, str(out / s.name), progress=False)
        rows.append({"scenario": s.name, "protocol": s.protocol.name, "setting": setting(s),
                     **{k: summary[k] for k in COLUMNS[3:]}})
        print(f"done {s.name}", file=sys.stderr)
    with (out / "table.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'scenario':28} {'protocol':11} {'setting':18} {'cum. loss':>11} {'bytes':>12} "
          f"{'final acc':>9}")
    for r in sorted(rows, key=lambda r: r["bytes_total"]):
        print(f"{r['scenario']:28} {r['protocol']:11} {r['setting']:18} "
              f"{r['cumulative_loss']:11.1f} {r['bytes_total']:12d} {r['final_accuracy']:9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
