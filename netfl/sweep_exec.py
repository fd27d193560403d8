"""Running a sweep: resume, failures that do not stop it, and three ways to run the runs.

A sweep directory holds one run directory per run, `sweep.csv` (rewritten after
every run) and, hidden, `.sweep.lock` and `.attempts/`. Running a sweep into a
directory that already holds it resumes it: a run whose summary says completed
(or diverged: a deterministic outcome) with the same resolved scenario is kept;
an interrupted, failed or unfinished run directory is moved to
`.attempts/<run>.<n>` and the run starts afresh. A run that fails records its
error and the sweep goes on; Ctrl-C (or SIGTERM) stops the sweep and the running
runs, which leave summaries saying interrupted.

Runs go one after another in this process, in worker processes (one torch
thread each, forked from a fork server that imported what a run imports, or
spawned where the platform has no fork server), or as Ray tasks, which Ray
schedules on a local instance or a cluster.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import yaml

from netfl.results import OutputError, read_summary
from netfl.scenario import Scenario, ScenarioError
from netfl.sweep import Sweep, check_all, digest, digest_data, from_scenarios, swept_keys
from netfl.sweep_table import table_row, write_table
from netfl.workers import worker_context

FINAL = ("completed", "diverged")  # outcomes a rerun would repeat: a resume keeps them
TABLE = "sweep.csv"
LOCK = ".sweep.lock"
ATTEMPTS = ".attempts"
RAY_MISSING = ("--engine ray needs Ray, which is not installed: pip install 'ray>=2.9' "
               "(or install this package with its [ray] extra)")
Outcome = dict[str, Any]  # {"status", "summary" (dict or None), "error" (str or None)}
Job = tuple[int, Scenario, Path]


class SweepRows(list[dict[str, Any]]):
    """The table's rows, in sweep order, and whether a signal stopped the sweep."""

    interrupted: bool = False
    terminated: bool = False  # by SIGTERM, as a cluster's scheduler stops a job


# --------------------------------------------------------------------- one run


CHECKPOINT = "checkpoint.pkl"  # netfl.checkpoint.FILE, without importing torch here


def _user_errors() -> tuple[type[Exception], ...]:
    from netfl.cli import _user_errors

    return _user_errors()


def _interrupted(run_dir: str | Path) -> Outcome:
    return {"status": "interrupted", "summary": read_summary(run_dir), "error": None}


def _limit_threads(threads: int) -> None:
    """torch's threads and the BLAS and OpenMP pools numpy and torch use: each worker has
    one core, and idle pool threads that spin on a shared core slow every run down."""
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return
    threadpool_limits(limits=threads)


def run_one(scenario: Scenario, run_dir: str, *, progress: bool = False,
            threads: int | None = None, cwd: str | None = None) -> Outcome:
    """Run one scenario into run_dir; a failure of the run is returned, never raised.

    threads sets torch's thread count (a worker's one core); cwd makes relative paths
    in the scenario mean what they mean to the sweep (a Ray worker starts elsewhere)."""
    if threads is not None:
        _limit_threads(threads)
    if cwd is not None:
        os.chdir(cwd)
    from netfl.run import RunError, run

    try:
        if (Path(run_dir) / CHECKPOINT).is_file():  # an earlier attempt's: carry on from it
            from netfl.api import resume_into

            summary = resume_into(run_dir, progress=progress).summary
        else:
            summary = run(scenario, run_dir, progress=progress)
    except KeyboardInterrupt:
        return _interrupted(run_dir)
    except RunError as exc:
        return {"status": "failed", "summary": read_summary(run_dir), "error": str(exc)}
    except _user_errors() as exc:
        return {"status": "failed", "summary": None, "error": str(exc)}
    except Exception as exc:  # a bug in one run: keep its traceback, let the sweep go on
        path = Path(run_dir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            (path / "error.txt").write_text(traceback.format_exc())
            where = f" (traceback in {path / 'error.txt'})"
        except OSError:
            where = ""
        return {"status": "failed", "summary": read_summary(run_dir),
                "error": f"{type(exc).__name__}: {exc}{where}"}
    status = summary.get("status", "failed")
    error = summary.get("error") if status != "completed" else None
    return {"status": status, "summary": summary, "error": error}


# ---------------------------------------------------------------- the engines


def _serial(jobs: list[Job], record: Callable[[int, Outcome], None], progress: bool) -> bool:
    """One run after another in this process; True when Ctrl-C stopped them."""
    for index, scenario, run_dir in jobs:
        try:
            outcome = run_one(scenario, str(run_dir), progress=progress)
        except KeyboardInterrupt:
            outcome = _interrupted(run_dir)
        record(index, outcome)
        if outcome["status"] == "interrupted":
            return True
    return False


def _interruption(signum: int) -> KeyboardInterrupt:
    """The KeyboardInterrupt a run records as stopped by this signal."""
    try:
        from netfl.api import Interrupted
    except ImportError:
        return KeyboardInterrupt()
    return Interrupted(signum)


def _interrupt_once(signum: int, frame: Any) -> None:
    """A worker's first SIGINT or SIGTERM interrupts its run; later ones are ignored, so
    the run can write its summary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _interruption(signum)


_STOP: Any = None  # a worker process's copy of the sweep's stop event (set by _init_worker)


def _init_worker(stop: Any) -> None:
    global _STOP
    _STOP = stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an idle worker outlives Ctrl-C


def _pool_task(scenario: Scenario, run_dir: str) -> Outcome | None:
    """One run in a worker; None when the sweep stopped before it could start (the pool
    queues a task ahead, which cancelling its future cannot recall)."""
    if _STOP is not None and _STOP.is_set():
        return None
    signal.signal(signal.SIGINT, _interrupt_once)
    signal.signal(signal.SIGTERM, _interrupt_once)
    try:
        return run_one(scenario, run_dir, threads=1)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _future_outcome(future: Future, run_dir: Path, interrupted: bool) -> Outcome | None:
    try:
        return future.result()
    except KeyboardInterrupt:
        return _interrupted(run_dir)
    except BrokenProcessPool:
        if interrupted:
            return _interrupted(run_dir)
        return {"status": "failed", "summary": read_summary(run_dir),
                "error": "its worker process died (killed, or out of memory?)"}
    except Exception as exc:
        return {"status": "failed", "summary": None, "error": f"{type(exc).__name__}: {exc}"}


def _processes(jobs: list[Job], record: Callable[[int, Outcome], None], workers: int) -> bool:
    """Runs in `workers` processes at a time; True when Ctrl-C stopped them."""
    context = worker_context()
    stop = context.Event()
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(stop,),
                               mp_context=context)
    futures = {pool.submit(_pool_task, s, str(run_dir)): (index, run_dir)
               for index, s, run_dir in jobs}
    left = set(futures)
    interrupted = patient = False

    def drain(batch: Iterable[Future], stopping: bool) -> None:
        """Record each future of ``batch`` as it finishes."""
        for future in as_completed(batch):
            left.discard(future)
            outcome = _future_outcome(future, futures[future][1], stopping)
            if outcome is not None:
                record(futures[future][0], outcome)

    try:
        drain(futures, False)
        patient = True
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        for future in left:
            future.cancel()
        for child in multiprocessing.active_children():  # the signal may have come to us alone
            try:
                os.kill(child.pid, signal.SIGINT)
            except OSError:
                pass
        running = [f for f in left if not f.cancelled()]
        try:
            drain(running, True)
            patient = True
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the workers
            for future in left:
                if not future.cancelled() and futures[future][1].exists():
                    record(futures[future][0], _interrupted(futures[future][1]))
    finally:
        pool.shutdown(wait=patient, cancel_futures=True)
    return interrupted


def _ray_task(scenario: Scenario, run_dir: str, cwd: str) -> Outcome:
    return run_one(scenario, run_dir, threads=1, cwd=cwd)


def _ray_outcome(ray: Any, ref: Any, run_dir: Path, interrupted: bool) -> Outcome | None:
    try:
        return ray.get(ref)
    except (ray.exceptions.TaskCancelledError, KeyboardInterrupt):
        return _interrupted(run_dir) if run_dir.exists() else None  # None: it never started
    except ray.exceptions.RayError as exc:
        if interrupted:
            return _interrupted(run_dir) if run_dir.exists() else None
        return {"status": "failed", "summary": read_summary(run_dir),
                "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"}


def import_ray() -> Any:
    """The ray module, or a ScenarioError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ScenarioError(RAY_MISSING) from None
    return ray


def _ray(jobs: list[Job], record: Callable[[int, Outcome], None], address: str | None,
         gpus_per_run: float) -> bool:
    """Runs as Ray tasks of one CPU (and gpus_per_run GPUs) each; Ray schedules them on
    the instance already started, the cluster at address, or a new local instance."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_run, max_retries=0)(_ray_task)
    cwd = os.getcwd()
    refs = {task.remote(s, str(run_dir), cwd): (index, run_dir) for index, s, run_dir in jobs}
    pending = list(refs)
    interrupted = False
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                record(refs[ref][0], _ray_outcome(ray, ref, refs[ref][1], False))
    except KeyboardInterrupt:
        interrupted = True
        for ref in pending:
            ray.cancel(ref)  # a running task gets KeyboardInterrupt and writes its summary
        ray.wait(pending, num_returns=len(pending), timeout=30)
        for ref in pending:
            outcome = _ray_outcome(ray, ref, refs[ref][1], True)
            if outcome is not None:
                record(refs[ref][0], outcome)
    finally:
        if started:
            ray.shutdown()
    return interrupted


# ---------------------------------------------------------------- the sweep dir


@contextmanager
def _claim(out: Path) -> Iterator[None]:
    """The sweep directory, new or holding this sweep, locked against a second sweep."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and not (out / TABLE).is_file() and any(
            p.name != LOCK for p in out.iterdir()):
        raise OutputError(f"{out}: already exists, is not empty and holds no sweep "
                          f"({TABLE}); choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = (out / LOCK).open("a")
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the sweep directory ({exc.strerror})") from None
    try:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this system
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise OutputError(f"{out}: another sweep is running into this directory") \
                    from None
        yield
    finally:
        handle.close()


def _dir_digest(run_dir: Path) -> str | None:
    try:
        data = yaml.safe_load((run_dir / "scenario.yaml").read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return digest_data(data) if isinstance(data, dict) else None


def previous(run_dir: Path, expected: str) -> tuple[str, dict[str, Any] | None]:
    """What an earlier attempt left: ("new" | "done" | "retry", its summary)."""
    if not run_dir.exists():
        return "new", None
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") in FINAL \
            and _dir_digest(run_dir) == expected:
        return "done", summary
    return "retry", summary


def resumable(run_dir: Path, expected: str, summary: dict[str, Any] | None) -> int | None:
    """The round an earlier attempt's checkpoint resumes from (output.checkpoint_every), or
    None when it has none of this scenario (then the attempt is set aside and rerun)."""
    from netfl.checkpoint import CheckpointError, read

    if summary is not None and summary.get("status") in ("completed", "diverged", "failed"):
        return None
    try:
        saved = read(run_dir)
    except CheckpointError:
        return None
    return saved.round if saved.digest == expected else None


def set_aside(out: Path, name: str) -> Path:
    """Move an earlier, unfinished attempt (or an earlier sweep's table) to
    out/.attempts/<name>.<n> (first free n)."""
    folder = out / ATTEMPTS
    folder.mkdir(exist_ok=True)
    n = 1
    while (folder / f"{name}.{n}").exists():
        n += 1
    target = folder / f"{name}.{n}"
    os.replace(out / name, target)
    return target


@contextmanager
def _sigterm_interrupts(rows: SweepRows) -> Iterator[None]:
    """SIGTERM stops the sweep as Ctrl-C does (in the main thread, where signals arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        rows.terminated = True
        raise _interruption(signum)

    before = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _line(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("cumulative_loss") is None:
        return ""
    return f", loss {summary['cumulative_loss']:.1f}, {summary.get('bytes_total')} bytes"


def run_sweep(scenarios: list[Scenario], out: str | Path, *, progress: bool = False,
              log: TextIO | None = None, workers: int = 1, engine: str = "local",
              address: str | None = None, gpus_per_run: float = 0.0) -> SweepRows:
    """Run (or resume) a sweep into out/<run>/ and write out/sweep.csv, one row per run.

    workers > 1 runs that many runs at a time in worker processes; engine "ray" runs
    them as Ray tasks. Every run is build-checked before anything is written."""
    log = log if log is not None else sys.stderr  # the stream of now, not of import time
    if engine not in ("local", "ray"):
        raise ScenarioError(f"--engine: expected local or ray, got {engine!r}")
    if engine == "ray":
        import_ray()  # before anything is written
    sweep = scenarios if isinstance(scenarios, Sweep) else from_scenarios(list(scenarios))
    if not sweep.checked:
        check_all(sweep, sweep.name)
    out = Path(out)
    swept = swept_keys(sweep)
    digests = [digest(s) for s in sweep]
    rows = SweepRows(table_row(s, None, swept, status="pending", digest=d)
                     for s, d in zip(sweep, digests))
    with _claim(out):
        jobs: list[Job] = []
        for index, (s, d) in enumerate(zip(sweep, digests)):
            state, summary = previous(out / s.name, d)
            if state == "done":
                rows[index] = table_row(s, summary, swept, digest=d)
                continue
            if state == "retry":
                what = summary.get("status") if summary else "unfinished"
                at = resumable(out / s.name, d, summary)
                if at is not None:
                    print(f"{s.name}: earlier attempt ({what}) resumes from its checkpoint at "
                          f"round {at}", file=log)
                else:
                    target = set_aside(out, s.name)
                    print(f"{s.name}: earlier attempt ({what}) moved to {target}", file=log)
            jobs.append((index, s, out / s.name))
        names = {s.name for s in sweep}
        strangers = sorted(p.name for p in out.iterdir()
                           if p.is_dir() and not p.name.startswith(".") and p.name not in names)
        if strangers:
            kept = ""
            if (out / TABLE).is_file():  # another sweep's table: keep it beside its runs
                kept = f"; their {TABLE} is now {set_aside(out, TABLE)}"
            print(f"note: {len(strangers)} folder(s) in {out} are not runs of this sweep and "
                  f"are left as they are ({', '.join(strangers[:3])}"
                  f"{', ...' if len(strangers) > 3 else ''}){kept}", file=log)
        write_table(rows, out / TABLE)
        done = len(sweep) - len(jobs)
        ways = (f"{min(workers, len(jobs))} worker processes" if engine == "local" else "Ray")
        print(f"sweep {sweep.name}: {len(sweep)} runs, {done} done already, {len(jobs)} to run"
              + (f" ({ways})" if jobs and (engine == "ray" or min(workers, len(jobs)) > 1)
                 else ""), file=log)
        count = [done]

        def record(index: int, outcome: Outcome) -> None:
            s = sweep[index]
            rows[index] = table_row(s, outcome["summary"], swept, status=outcome["status"],
                                    error=outcome["error"], digest=digests[index])
            write_table(rows, out / TABLE)
            count[0] += 1
            detail = f": {outcome['error']}" if outcome["status"] == "failed" else \
                _line(outcome["summary"])
            print(f"[{count[0]}/{len(sweep)}] {s.name}: {outcome['status']}{detail}", file=log)

        with _sigterm_interrupts(rows):
            try:
                if not jobs:
                    pass
                elif engine == "ray":
                    rows.interrupted = _ray(jobs, record, address, gpus_per_run)
                elif min(workers, len(jobs)) > 1:
                    rows.interrupted = _processes(jobs, record, min(workers, len(jobs)))
                else:
                    rows.interrupted = _serial(jobs, record, progress)
            except KeyboardInterrupt:
                rows.interrupted = True
        write_table(rows, out / TABLE)
    return rows
