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

from netfl.observers import Observer

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
    """A run directory that cannot be used without destroying earlier results, or that
    cannot be written (read-only, disk full): the message names the file."""


LOCK = ".netfl-run.lock"  # held by the run writing a directory; removed when it ends


class RunDir:
    """A run directory claimed by this process: a lock file created with O_EXCL, so of two
    runs started on the same directory at the same moment exactly one gets it."""

    def __init__(self, path: Path, created: bool) -> None:
        self.path = path
        self.created = created  # this process made the directory (abandon removes it)

    def release(self) -> None:
        """The run is over (its files are written): let the directory go."""
        try:
            (self.path / LOCK).unlink()
        except OSError:
            pass

    def abandon(self) -> None:
        """Nothing was written: leave the directory as it was before the claim."""
        self.release()
        if self.created:
            try:
                self.path.rmdir()
            except OSError:
                pass

    def __fspath__(self) -> str:
        return str(self.path)


def _cannot(path: Path, exc: OSError, what: str = "cannot write") -> OutputError:
    return OutputError(f"{path}: {what} ({exc.strerror or exc})")


def _create_lock(path: Path, busy: str, failed: str) -> None:
    """Create ``path``'s lock file with O_EXCL, naming this process: OutputError ``busy``
    when it exists, ``failed`` (with the reason) when it cannot be created."""
    try:
        fd = os.open(path / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise OutputError(busy) from None
    except OSError as exc:
        raise _cannot(path, exc, failed) from None
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)


def _lock(path: Path, created: bool) -> RunDir:
    _create_lock(path, f"{path}: in use by another run (remove {path / LOCK} if no run is "
                 "writing there); choose another --out", "cannot create run directory")
    claimed = RunDir(path, created)
    if any(p.name != LOCK for p in path.iterdir()):
        claimed.release()
        raise OutputError(f"{path}: already exists and is not empty; choose another --out")
    return claimed


def claim_run_dir(out: str | Path | None, name: str, base: str = "runs") -> RunDir:
    """A fresh directory for one run, claimed atomically; never one that holds results."""
    if out is not None:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise OutputError(f"{path}: already exists and is not a directory; choose "
                              "another --out")
        created = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
            created = True
        except FileExistsError:
            pass
        except OSError as exc:
            raise _cannot(path, exc, "cannot create run directory") from None
        return _lock(path, created)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = Path(base) / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cannot(parent, exc, "cannot create run directory") from None
    for suffix in range(1, 10_000):
        path = parent / (stamp if suffix == 1 else f"{stamp}-{suffix}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as exc:
            raise _cannot(path, exc, "cannot create run directory") from None
        return _lock(path, True)
    raise OutputError(f"{parent}: no free run directory name for {stamp}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def claim_to_resume(path: str | Path) -> RunDir:
    """An existing run directory claimed to resume it. A lock left by a run that was killed
    (kill -9, a node lost) names a process that no longer exists: it is taken over."""
    path = Path(path)
    lock = path / LOCK
    if lock.exists():
        try:
            pid = int(lock.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid > 0 and pid != os.getpid() and _alive(pid):
            raise OutputError(f"{path}: in use by another run (process {pid}); wait for it "
                              "or stop it before resuming")
        try:
            lock.unlink()
        except OSError as exc:
            raise _cannot(lock, exc, "cannot take over the lock") from None
    _create_lock(path, f"{path}: in use by another run; choose another --out",
                 "cannot claim the run directory")
    return RunDir(path, created=False)


def prepare_run_dir(out: str | None, name: str, base: str = "runs") -> Path:
    """A fresh, empty directory (claimed, then let go): for a sweep's own directory."""
    claimed = claim_run_dir(out, name, base)
    claimed.release()
    return claimed.path


def _open(path: Path) -> IO[str]:
    return path.open("w", newline="")


class _Table:
    """A CSV file that is flushed after every write; a failed write names the file.
    ``append``: a resumed run's file (already cut at its checkpoint): its header stays and
    the columns are read from it."""

    def __init__(self, path: Path, columns: list[str], *, append: bool = False) -> None:
        self.path = path
        try:
            if append:
                with path.open(newline="") as handle:
                    columns = next(csv.reader(handle))
                self.handle: IO[str] = path.open("a", newline="")
            else:
                self.handle = _open(path)
            self.columns = list(columns)
            self.writer = csv.DictWriter(self.handle, self.columns, extrasaction="ignore")
            if not append:
                self.writer.writeheader()
            self.handle.flush()
        except (OSError, StopIteration) as exc:
            raise _cannot(path, exc if isinstance(exc, OSError) else OSError("empty file")) \
                from None

    def length(self) -> int:
        """Bytes written so far (flushed): where a resumed run cuts this file."""
        self.handle.flush()
        return self.handle.tell()

    def write(self, rows: list[dict[str, Any]]) -> None:
        try:
            self.writer.writerows(rows)
            self.handle.flush()
        except OSError as exc:
            raise _cannot(self.path, exc) from None

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError as exc:
            raise _cannot(self.path, exc) from None


def metrics_columns(sim) -> list[str]:
    """metrics.csv's columns for a simulation: base, evaluation, protocol counters, bytes."""
    extra = [*sim.protocol.counters, *(f"bytes_{k}" for k in sim.protocol.message_kinds)]
    return [*BASE_COLUMNS, *sim.eval_columns, *extra, *sim.extra_columns]


class Recorder(Observer):
    """Writes a run directory as the run goes: scenario.yaml at the start, metrics rows as
    they come (flushed), other tables on first use, links.csv and summary.json at the end.

    A write that fails (read-only, disk full) raises one OutputError naming the file; the
    recorder then writes nothing more except, at the end, the summary if it still can.
    """

    def __init__(self, run_dir: RunDir | Path, scenario: dict[str, Any], *,
                 per_learner: bool = False, messages: bool = False,
                 resume: dict[str, int] | None = None) -> None:
        self.claim = run_dir if isinstance(run_dir, RunDir) else None
        self.run_dir = Path(run_dir)
        self.scenario = scenario
        self.per_learner, self.messages = per_learner, messages
        self.rounds: _Table | None = None
        self._tables: dict[str, _Table] = {}
        self._buffers: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
        self.failed: OutputError | None = None
        self._resumed: set[str] = set()  # tables a resumed run appends to
        if resume is not None:
            self._resume(resume)

    def _resume(self, files: dict[str, int]) -> None:
        """Cut every table at its length at the checkpoint (rows after it are written again,
        the same), drop tables begun after it, and reopen metrics.csv to append."""
        for path in sorted(self.run_dir.glob("*.csv")):
            try:
                if path.name in files:
                    with path.open("r+b") as handle:
                        handle.truncate(files[path.name])
                else:
                    path.unlink()
            except OSError as exc:
                raise _cannot(path, exc) from None
        self._resumed = {name.removesuffix(".csv") for name in files}
        if "metrics" not in self._resumed:
            raise OutputError(f"{self.run_dir / 'metrics.csv'}: missing; cannot resume")
        self.rounds = _Table(self.run_dir / "metrics.csv", [], append=True)

    def lengths(self) -> dict[str, int]:
        """Every table's length in bytes now, buffered rows written first (a checkpoint)."""
        for table in list(self._buffers):
            self._flush_buffer(table)
        tables = {"metrics": self.rounds, **self._tables}
        return {f"{name}.csv": t.length() for name, t in tables.items() if t is not None}

    def listens(self, event: str) -> bool:
        if event == "on_learners":
            return self.per_learner
        if event == "on_message":
            return self.messages
        return super().listens(event)

    def _guard(self, write, *args) -> None:
        if self.failed is not None:
            return
        try:
            write(*args)
        except OutputError as exc:
            self.failed = exc
            raise

    # ---------------------------------------------------------------- observer

    def on_start(self, sim) -> None:
        self._guard(self._start, metrics_columns(sim))

    def _start(self, columns: list[str]) -> None:
        path = self.run_dir / "scenario.yaml"
        try:
            path.write_text(yaml.safe_dump(self.scenario, sort_keys=False))
        except OSError as exc:
            raise _cannot(path, exc) from None
        self.rounds = _Table(self.run_dir / "metrics.csv", columns)

    def on_round(self, sim, row: dict[str, Any]) -> None:
        self._guard(self._round, row)

    def _round(self, row: dict[str, Any]) -> None:
        self.rounds.write([row])
        for table in list(self._buffers):  # a round's messages are on disk with its row
            self._flush_buffer(table)

    def on_learners(self, sim, rows: list[dict[str, Any]]) -> None:
        self._guard(self.rows, "learners", LEARNER_COLUMNS, rows)

    def on_event(self, sim, row: dict[str, Any]) -> None:
        self._guard(self.rows, "events", EVENT_COLUMNS, [row])

    def on_probe(self, sim, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        self._guard(self.rows, table, columns, rows)

    def on_message(self, sim, row: dict[str, Any]) -> None:
        from netfl.sim.network import MESSAGE_COLUMNS

        self._guard(self.buffered, "messages", MESSAGE_COLUMNS, row)

    def on_end(self, sim, summary: dict[str, Any]) -> None:
        self.close(summary, links=sim.network.link_stats())

    # ----------------------------------------------------------------- tables

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
            self._tables[table] = _Table(self.run_dir / f"{table}.csv", columns,
                                         append=table in self._resumed)
        self._tables[table].write(rows)

    def close(self, summary: dict[str, Any], links: list[dict[str, Any]] | None = None):
        """Write what is buffered, links.csv (one row per link direction) and the summary;
        after a failed write only the summary is tried. Raises OutputError when the
        summary cannot be written."""
        if self.failed is None:
            try:
                for table in list(self._buffers):
                    self._flush_buffer(table)
                if links:
                    self._links(links)
            except OutputError as exc:
                self.failed = exc
        for table in [self.rounds, *self._tables.values()]:
            try:
                if table is not None:
                    table.close()
            except OutputError as exc:
                self.failed = self.failed or exc
        if self.failed is not None and "error" not in summary:
            summary["status"] = "failed" if summary.get("status") == "completed" else \
                summary.get("status")
            summary["error"] = str(self.failed)
        try:
            write_summary(self.run_dir, summary)
        finally:
            if self.claim is not None:
                self.claim.release()

    def _links(self, links: list[dict[str, Any]]) -> None:
        path = self.run_dir / "links.csv"
        try:
            with _open(path) as handle:
                writer = csv.DictWriter(handle, list(links[0]))
                writer.writeheader()
                writer.writerows(links)
        except OSError as exc:
            raise _cannot(path, exc) from None


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
    """Atomically (a temporary file, flushed to disk, then renamed), as strict JSON; an
    OutputError naming summary.json when it cannot be written."""
    tmp = run_dir / "summary.json.tmp"
    text = json.dumps(strict_json(summary), indent=2, sort_keys=False, allow_nan=False)
    try:
        with _open(tmp) as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, run_dir / "summary.json")
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise _cannot(run_dir / "summary.json", exc) from None


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """A run directory's summary.json, or None when it has none (or not a readable one)."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict[str, str]]:
    with (Path(run_dir) / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))
