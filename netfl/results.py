"""Run directories: the resolved scenario, metrics flushed as they come, an atomic summary.

A crash or Ctrl-C loses at most the row being written; summary.json appears
whole or not at all, so a reader never sees half a summary.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import IO, Any

import yaml

BASE_COLUMNS = [
    "round", "sim_time_s", "loss", "samples", "cumulative_loss", "bytes_up", "bytes_down",
    "bytes_peer", "bytes_total", "messages", "retransmissions", "messages_lost", "messages_late",
    "syncs", "drifts", "divergence",
]
_MESSAGE_BUFFER = 4096  # message rows are written in blocks: one per message would be slow
ROUND_COLUMNS = [*BASE_COLUMNS, "acc_mean_model", "acc_local_mean"]  # a classification run
LEARNER_COLUMNS = ["round", "learner", "sim_time_s", "loss"]
EVENT_COLUMNS = ["round", "sim_time_s", "event", "kind", "concept_from", "concept_to",
                 "element"]
SUMMARY_KEYS = [
    "status", "rounds", "learners", "cumulative_loss", "bytes_up", "bytes_down", "bytes_total",
    "messages", "sim_time_s", "wall_time_s", "final_accuracy", "seed",
]


class OutputError(ValueError):
    """A run directory that cannot be used without destroying earlier results."""


def prepare_run_dir(out: str | None, name: str, base: str = "runs") -> Path:
    """A fresh directory for one run; never reuses a directory that holds results."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise OutputError(f"{path}: already exists and is not empty; choose another --out")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(base) / name / stamp
        suffix = 1
        while path.exists():
            suffix += 1
            path = Path(base) / name / f"{stamp}-{suffix}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create run directory ({exc.strerror})") from None
    return path


class _Table:
    """A CSV file that is flushed after every row."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.columns = list(columns)
        self.handle: IO[str] = path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, self.columns, extrasaction="ignore")
        self.writer.writeheader()

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writer.writerows(rows)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class Recorder:
    """Appends metrics rows to a run directory as the run produces them."""

    def __init__(self, run_dir: Path, scenario: dict[str, Any], extra_columns: list[str] = (),
                 eval_columns: list[str] = ("acc_mean_model", "acc_local_mean")):
        self.run_dir = run_dir
        (run_dir / "scenario.yaml").write_text(yaml.safe_dump(scenario, sort_keys=False))
        columns = [*BASE_COLUMNS, *eval_columns, *extra_columns]
        self.rounds = _Table(run_dir / "metrics.csv", columns)
        self._tables: dict[str, _Table] = {}
        self._buffers: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
        self._accuracy: list[tuple[float, float]] = []  # (sim time, acc_mean_model)

    def round(self, row: dict[str, Any]) -> None:
        self.rounds.write([row])
        if row.get("acc_mean_model") is not None:
            self._accuracy.append((row["sim_time_s"], row["acc_mean_model"]))
        for table in list(self._buffers):  # a round's messages are on disk with its row
            self._flush_buffer(table)

    def first_reaching(self, target: float | None) -> float | None:
        """Simulated time of the first evaluation whose mean-model accuracy reached target."""
        if target is None:
            return None
        return next((t for t, acc in self._accuracy if acc >= target), None)

    def buffered(self, table: str, columns: list[str], row: dict[str, Any]) -> None:
        """A row of a high-volume table, written in blocks (and with every metrics row)."""
        entry = self._buffers.setdefault(table, (columns, []))
        entry[1].append(row)
        if len(entry[1]) >= _MESSAGE_BUFFER:
            self._flush_buffer(table)

    def _flush_buffer(self, table: str) -> None:
        columns, rows = self._buffers[table]
        if rows:
            self.rows(table, columns, rows)
            rows.clear()

    def rows(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """Rows of a secondary table (per learner, events, probes), created on first use."""
        if table not in self._tables:
            self._tables[table] = _Table(self.run_dir / f"{table}.csv", columns)
        self._tables[table].write(rows)

    def close(self, summary: dict[str, Any], links: list[dict[str, Any]] | None = None):
        """Write what is buffered, links.csv (one row per link direction) and the summary."""
        for table in list(self._buffers):
            self._flush_buffer(table)
        if links:
            with (self.run_dir / "links.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, list(links[0]))
                writer.writeheader()
                writer.writerows(links)
        self.rounds.close()
        for table in self._tables.values():
            table.close()
        write_summary(self.run_dir, summary)


def strict_json(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary with non-finite numbers as null, listed under ``non_finite`` (strict JSON
    parsers reject NaN and Infinity)."""
    bad: list[str] = []

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(key)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return value

    out = clean(summary, "")
    if bad:
        out["non_finite"] = bad
    return out


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """Atomically, as strict JSON."""
    tmp = run_dir / "summary.json.tmp"
    text = json.dumps(strict_json(summary), indent=2, sort_keys=False, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, run_dir / "summary.json")


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))
