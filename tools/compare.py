"""Run several scenario files and print one table: cumulative loss against cumulative bytes.

    python tools/compare.py scenarios/seed004/protocols/*.yaml [--out DIR] [--set key=value]

Each run gets its own directory under --out, with the table as sweep.csv beside them.
"""

from __future__ import annotations

import argparse
import sys
import time

from netfl import scenario as scenario_mod
from netfl import sweep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", default=f"runs/compare/{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args(argv)
    scenarios = [scenario_mod.load(file, args.set) for file in args.files]
    rows = sweep.run_sweep(scenarios, args.out)
    print(sweep.format_table(sorted(rows, key=lambda r: r["bytes_total"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
