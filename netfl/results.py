"""Run directories: the resolved scenario, metrics flushed as they come, an atomic summary.

A crash or Ctrl-C loses at most the row being written; summary.json appears
whole or not at all, so a reader never sees half a summary.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import IO, Any

import yaml

BASE_COLUMNS = [
    "round", "sim_time_s", "loss", "samples", "cumulative_loss", "bytes_up", "bytes_down",
    "bytes_total", "messages", "syncs", "drifts", "divergence",
]
ROUND_COLUMNS = [*BASE_COLUMNS, "acc_mean_model", "acc_local_mean"]  # a classification run
LEARNER_COLUMNS = ["round", "learner", "sim_time_s", "loss"]
EVENT_COLUMNS = ["round", "sim_time_s", "event", "kind", "concept_from", "concept_to"]
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

    def round(self, row: dict[str, Any]) -> None:
        self.rounds.write([row])

    def rows(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        """Rows of a secondary table (per learner, events, probes), created on first use."""
        if table not in self._tables:
            self._tables[table] = _Table(self.run_dir / f"{table}.csv", columns)
        self._tables[table].write(rows)

    def close(self, summary: dict[str, Any], links: dict[tuple[Any, Any], int] | None = None):
        if links:
            with (self.run_dir / "links.csv").open("w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["src_node", "dst_node", "bytes"])
                for (u, v), count in sorted(links.items(), key=lambda kv: str(kv[0])):
                    writer.writerow([u, v, count])
        self.rounds.close()
        for table in self._tables.values():
            table.close()
        write_summary(self.run_dir, summary)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, run_dir / "summary.json")


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))
