"""Convert FedScale's client traces to netfl's CSV traces.

FedScale (Lai et al., OSDI 2021) ships two pickled dicts keyed by client id:

- ``client_behave_trace``: ``{client: {"active": [t0, t1, ...], "inactive": [u0, u1, ...],
  "finish_time": T, "duration": ...}}``: the client is online from ``active[i]`` to
  ``inactive[i]``, and FedScale wraps time modulo ``finish_time``
  (``Client.isActive``). Written as ``learner,start_s,end_s,period_s`` rows, one per
  online interval, for ``learners.availability: {kind: trace, file: ...}``.
- ``client_device_capacity``: ``{client: {"computation": c, "communication": b}}``:
  ``c`` milliseconds per sample (FedScale's step time is ``augmentation x batch x c /
  1000`` s, augmentation 3 for forward and backward), ``b`` kbit/s for both directions.
  Written as ``learner,steps_per_s,uplink_bps,downlink_bps`` for
  ``learners.devices: FILE``; the batch size is the scenario's ``data.batch_size``.

Usage::

    python tools/convert_fedscale_trace.py behave client_behave_trace traces/avail.csv
    python tools/convert_fedscale_trace.py devices client_device_capacity traces/dev.csv \\
        --batch-size 10

Pickle runs code from the file it reads: convert only files you trust (FedScale's own).
"""

from __future__ import annotations

import argparse
import csv
import pickle
import sys
from pathlib import Path
from typing import Any

AUGMENTATION = 3.0  # FedScale's factor for forward + backward per sample


class TraceFormatError(ValueError):
    """The pickle is not in the layout FedScale documents."""


def _load(path: Path) -> dict[Any, dict[str, Any]]:
    with path.open("rb") as handle:
        data = pickle.load(handle)  # noqa: S301 - FedScale's format; see the docstring
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise TraceFormatError(f"{path}: expected a dict of client id -> dict")
    return data


def behave_rows(data: dict[Any, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per online interval ``[active[i], inactive[i])``, period ``finish_time``."""
    rows = []
    for client in sorted(data, key=int):
        trace = data[client]
        try:
            active, inactive = list(trace["active"]), list(trace["inactive"])
            period = float(trace["finish_time"])
        except KeyError as exc:
            raise TraceFormatError(f"client {client}: missing {exc.args[0]!r}") from None
        if len(active) != len(inactive):
            raise TraceFormatError(f"client {client}: {len(active)} active but "
                                   f"{len(inactive)} inactive times")
        for start, end in zip(active, inactive):
            start, end = float(start), min(float(end), period)
            if end > start:
                rows.append({"learner": int(client), "start_s": start, "end_s": end,
                             "period_s": period})
    return rows


def device_rows(data: dict[Any, dict[str, Any]], batch_size: int,
                augmentation: float = AUGMENTATION) -> list[dict[str, Any]]:
    """Steps per second from ms per sample; bit/s from kbit/s, the same both ways."""
    rows = []
    for client in sorted(data, key=int):
        capacity = data[client]
        try:
            ms_per_sample = float(capacity["computation"])
            kbps = float(capacity["communication"])
        except KeyError as exc:
            raise TraceFormatError(f"client {client}: missing {exc.args[0]!r}") from None
        if ms_per_sample <= 0 or kbps <= 0:
            raise TraceFormatError(f"client {client}: computation and communication must "
                                   "be > 0")
        rows.append({"learner": int(client),
                     "steps_per_s": 1000.0 / (augmentation * batch_size * ms_per_sample),
                     "uplink_bps": kbps * 1000.0, "downlink_bps": kbps * 1000.0})
    return rows


def write(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["behave", "devices"])
    parser.add_argument("source", type=Path, help="FedScale pickle")
    parser.add_argument("out", type=Path, help="CSV to write")
    parser.add_argument("--batch-size", type=int, default=10,
                        help="devices: the scenario's data.batch_size")
    parser.add_argument("--augmentation", type=float, default=AUGMENTATION)
    args = parser.parse_args(argv)
    try:
        data = _load(args.source)
        rows = behave_rows(data) if args.kind == "behave" else device_rows(
            data, args.batch_size, args.augmentation)
    except (OSError, pickle.UnpicklingError, TraceFormatError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {args.source}: no intervals or devices", file=sys.stderr)
        return 2
    write(rows, args.out)
    print(f"{args.out}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
