"""A sweep's table: one row per run, a column per swept key, a status for every run.

The same rows go to the console (`format_table`) and to `sweep.csv`
(`write_table`); a run that failed, was interrupted or has not run yet keeps its
row, with its status and error, so the table always lists the whole sweep.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from netfl.scenario import Scenario

TABLE_COLUMNS = [
    "run", "protocol", "setting", "cumulative_loss", "bytes_total", "bytes_up", "bytes_down",
    "messages", "syncs", "final_accuracy", "final_mse", "sim_time_s", "time_to_accuracy_s",
    "wall_time_s", "status", "error", "hash",
]
LEAD = 3  # run, protocol, setting; the swept keys' columns follow them
MAX_WIDTH = 28  # widest swept column on the console
ERROR_WIDTH = 200  # an error's length in the console's list of failed runs


def lookup(data: Any, dotted: str) -> Any:
    """The value at a dotted key path of plain data, None where the path does not exist."""
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf paths of nested mappings; an empty mapping is a leaf."""
    if not isinstance(data, dict) or (not data and prefix):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def compact(value: Any) -> str:
    """One-line form of a setting: `hierarchy`, `generator=ring n=9`, `0.005`, `[1,2]`.

    Unset (None) and empty entries of a mapping are left out; a mapping left with one
    entry shows only its value."""
    if isinstance(value, dict):
        items = {k: v for k, v in leaves(value).items() if v is not None and v != {} and v != []}
        if len(items) == 1:
            return compact(next(iter(items.values())))
        return " ".join(f"{k}={compact(v)}" for k, v in items.items())
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(compact(v) for v in value) + "]"
    return "" if value is None else str(value)


def setting(s: Scenario) -> str:
    params = s.protocol.model_dump(exclude={"name", "wait"}, exclude_none=True)
    return " ".join(f"{k}={v}" for k, v in params.items()) or "-"


def table_row(s: Scenario, summary: dict[str, Any] | None, swept: list[str], *,
              status: str | None = None, error: str | None = None,
              digest: str | None = None) -> dict[str, Any]:
    """One row: the run, its protocol, each swept key's value, the summary's numbers, then
    the status (the summary's unless given), the error of a failed run and the hash."""
    summary = summary or {}
    resolved = s.resolved()
    row = {"run": s.name, "protocol": s.protocol.name, "setting": setting(s),
           **{key: compact(lookup(resolved, key)) for key in swept},
           **{k: summary.get(k) for k in TABLE_COLUMNS[LEAD:]}}
    row["status"] = status or summary.get("status")
    row["error"] = error if error is not None else summary.get("error")
    row["hash"] = digest
    return row


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """TABLE_COLUMNS with the rows' swept keys after the first three."""
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in TABLE_COLUMNS]
    return [*TABLE_COLUMNS[:LEAD], *extra, *TABLE_COLUMNS[LEAD:]]


def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    """sweep.csv, replaced atomically so a reader never sees half a table."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _headers(keys: list[str]) -> list[str]:
    """Each key's last part, or the whole dotted key where two last parts coincide."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [part if last.count(part) == 1 else key for key, part in zip(keys, last)]


def _cell(value: Any, fmt: str, width: int) -> str:
    return f"{'-' if value is None else format(value, fmt):>{width}}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A console table; the score is accuracy, or mean squared error for regression runs.

    Every swept key gets a column, so runs that differ only in, say, the topology
    still read apart; the last column is the run's status, and the errors of failed
    runs are listed below the table."""
    key, label = "final_accuracy", "final acc"
    if rows and all(r.get("final_accuracy") is None for r in rows) and any(
            r.get("final_mse") is not None for r in rows):
        key, label = "final_mse", "final mse"
    swept = [k for k in columns(rows) if k not in TABLE_COLUMNS]
    widths = [min(MAX_WIDTH, max(len(h), *(len(str(r.get(k, ""))) for r in rows)))
              for k, h in zip(swept, _headers(swept))]
    head = " ".join([f"{'protocol':10} {'setting':34}",
                     *(f"{h[:w]:{w}}" for h, w in zip(_headers(swept), widths)),
                     f"{'cum. loss':>11} {'bytes':>13} {label:>9} {'sim time s':>10} "
                     f"{'t to acc s':>10} {'status':11}"]).rstrip()
    lines = [head, "-" * (len(head) + 11 - len("status"))]
    for r in rows:
        cells = [f"{r['protocol']:10} {r['setting'][:34]:34}",
                 *(f"{str(r.get(k, ''))[:w]:{w}}" for k, w in zip(swept, widths)),
                 _cell(r.get("cumulative_loss"), ".1f", 11), _cell(r.get("bytes_total"), "d", 13),
                 _cell(r.get(key), ".3f", 9), _cell(r.get("sim_time_s"), ".2f", 10),
                 _cell(r.get("time_to_accuracy_s"), ".2f", 10), f"{r.get('status') or '':11}"]
        lines.append(" ".join(cells).rstrip())
    for r in rows:
        if r.get("status") == "failed" and r.get("error"):
            error = " ".join(str(r["error"]).split())
            lines.append(f"failed: {r['run']}: {error[:ERROR_WIDTH]}")
    return "\n".join(lines)
