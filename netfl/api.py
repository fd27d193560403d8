"""The Python API: ``load`` a scenario, ``simulate`` it, get its tables as DataFrames.

``netfl run`` is a thin layer over :func:`simulate`; both write the same run directory.
A run stopped by Ctrl-C (SIGINT) or SIGTERM ends like a finished one, with its summary
saying ``interrupted`` (and which signal); further signals while it writes its summary are
held, so a second Ctrl-C never leaves a half-written run.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netfl.observers import Observer, Progress, Tables
from netfl.results import (
    OutputError,
    Recorder,
    RunDir,
    claim_run_dir,
    claim_to_resume,
    read_summary,
)
from netfl.scenario import Scenario, ScenarioError, from_dict
from netfl.scenario import load as load_file

if TYPE_CHECKING:
    import pandas as pd

    from netfl.checkpoint import Saved
    from netfl.sim.engine import Simulation

CORE_TABLES = ("metrics", "learners", "events", "messages")


class RunError(RuntimeError):
    """A run that could not finish (a protocol waiting forever, a bug); its directory, if it
    has one, holds a summary saying ``failed``. ``result`` holds what the run produced."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run (a KeyboardInterrupt, so code that catches Ctrl-C
    treats SIGTERM alike). Built from its args only, since SimPy re-raises a process's
    exception as ``type(exc)(*exc.args)``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = int(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process this signal ended: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signum


class SignalGuard:
    """While active, the first SIGINT or SIGTERM raises :class:`Interrupted`; later ones
    (a second Ctrl-C 2 ms after the first) and any that arrive once ``armed`` is false (the
    run is writing its summary) are only remembered. Does nothing outside the main thread,
    where Python cannot install signal handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.armed = True
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received.append(signum)
        if self.armed:
            self.armed = False
            raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        for signum, handler in self._previous.items():
            if handler is not None:  # None: not set from Python, nothing to restore
                signal.signal(signum, handler)


@dataclass
class Result:
    """What one run produced: its summary and tables (pandas DataFrames with the columns of
    the run directory's CSV files; ``learners`` and ``messages`` are empty unless
    ``output.per_learner`` / ``output.messages``), and its run directory when it has one."""

    summary: dict[str, Any]
    metrics: pd.DataFrame
    learners: pd.DataFrame
    events: pd.DataFrame
    messages: pd.DataFrame
    probes: dict[str, pd.DataFrame] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def status(self) -> str:
        return self.summary["status"]


def _override_strings(overrides: Mapping[str, Any] | Sequence[str]) -> list[str]:
    """``{"protocol.b": 4}`` or ``["protocol.b=4"]`` as ``--set`` strings."""
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            if isinstance(value, float) and not math.isfinite(value):
                text = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
            else:
                text = json.dumps(value)  # JSON is YAML, which --set values are read as
            out.append(f"{key}={text}")
        return out
    return list(overrides)


def load(source: str | Path | Mapping[str, Any] | Scenario,
         overrides: Mapping[str, Any] | Sequence[str] = ()) -> Scenario:
    """A validated scenario from a YAML file or a dict, with overrides applied as
    ``netfl run --set`` would (``{"protocol.b": 4}`` or ``["protocol.b=4"]``).
    Raises :class:`~netfl.scenario.ScenarioError` naming the key path."""
    sets = _override_strings(overrides)
    if isinstance(source, Scenario):
        return from_dict(source.resolved(), "scenario", sets) if sets else source
    if isinstance(source, Mapping):
        return from_dict(json.loads(json.dumps(dict(source))), "scenario", sets)
    if isinstance(source, (str, Path)):
        return load_file(source, sets)
    raise ScenarioError(f"netfl.load: expected a path, a dict or a Scenario, got "
                        f"{type(source).__name__}")


def summarize(sim: Simulation, scenario: Scenario, status: str, wall: float,
              time_to_accuracy: float | None = None) -> dict[str, Any]:
    """summary.json's numbers for a run that ended with ``status``."""
    net = sim.network
    final = sim.evaluate() if status in ("completed", "interrupted") else {}
    return {
        "status": status,
        "rounds": sim.rows_emitted,
        "learners": scenario.learners.count,
        "protocol": scenario.protocol.name,
        "cumulative_loss": sim.cumulative_loss,
        "bytes_up": net.bytes_up,
        "bytes_down": net.bytes_down,
        "bytes_total": net.bytes_total,
        "bytes_peer": net.bytes_peer,
        "messages": net.messages,
        "retransmissions": net.retransmissions,
        "messages_lost": net.messages_lost,
        "messages_late": sim.counters["messages_late"],
        "network_model": scenario.network.model,
        "most_loaded_link": net.most_loaded_link(),
        "time_to_accuracy_s": time_to_accuracy,
        "syncs": sim.counters["syncs"],
        "drifts": sim.counters["drifts"],
        "sim_time_s": sim.env.now,
        "wall_time_s": wall,
        "final_accuracy": final.get("acc_mean_model"),
        "final_local_accuracy": final.get("acc_local_mean"),
        "final_mse": final.get("mse_mean_model"),
        "final_local_mse": final.get("mse_local_mean"),
        "device": str(sim.bank.device),
        "seed": scenario.seed,
        **({"dropouts": sim.dropouts} if sim.availability else {}),
    }


def first_reaching(rows: Iterable[dict[str, Any]], target: float | None) -> float | None:
    """Simulated time of the first evaluation whose mean-model accuracy reached target."""
    if target is None:
        return None
    return next((r["sim_time_s"] for r in rows
                 if r.get("acc_mean_model") is not None and r["acc_mean_model"] >= target), None)


def _build(scenario: Scenario, observers: list[Observer], model: Any, dataset: Any):
    from netfl.build import build

    extra = {}
    if model is not None:
        extra["model"] = model
    if dataset is not None:
        extra["dataset"] = dataset
    return build(scenario, observers=observers, **extra)


def _result(summary: dict[str, Any], tables: Tables, run_dir: Path | None) -> Result:
    from netfl.results import EVENT_COLUMNS, LEARNER_COLUMNS
    from netfl.sim.network import MESSAGE_COLUMNS

    return Result(
        summary=summary, metrics=tables.frame("metrics"),
        learners=tables.frame("learners", LEARNER_COLUMNS),
        events=tables.frame("events", EVENT_COLUMNS),
        messages=tables.frame("messages", MESSAGE_COLUMNS),
        probes={name: tables.frame(name) for name in tables.rows if name not in CORE_TABLES},
        run_dir=run_dir,
    )


def simulate(
    scenario: Scenario | Mapping[str, Any] | str | Path,
    *,
    model: Any = None,
    dataset: Any = None,
    observers: Iterable[Observer] = (),
    out: str | Path | None = None,
    progress: bool = False,
) -> Result:
    """Run a scenario and return its :class:`Result`.

    ``observers`` (:class:`netfl.Observer`) watch the run; ``model`` (a ``torch.nn.Module``)
    and ``dataset`` replace the scenario's. With ``out`` the run writes that directory,
    claimed first (an existing non-empty one, or one another run holds, is an OutputError
    before anything is written); without it nothing touches the disk. A run stopped by
    SIGINT/SIGTERM returns with ``status: interrupted``; a signal during start-up raises
    :class:`Interrupted` and leaves no directory. A write error (read-only, disk full) raises
    OutputError after writing the summary if it can; a deadlock raises RunError."""
    if not isinstance(scenario, Scenario):
        scenario = load(scenario)
    claim = None if out is None else (lambda: claim_run_dir(out, scenario.name))
    return _simulate(scenario, claim, model=model, dataset=dataset, observers=observers,
                     progress=progress)


def simulate_into(scenario: Scenario, out: str | Path | None = None, *,
                  progress: bool = False) -> Result:
    """``netfl run``: like :func:`simulate`, always into a run directory (default:
    ``output.dir``, else runs/<name>/<date-time>); its Result keeps only the metrics in
    memory (per-learner rows and messages are on disk only: they can be millions)."""
    target = out or scenario.output.dir
    return _simulate(scenario, lambda: claim_run_dir(target, scenario.name), progress=progress,
                     keep=False)


def _simulate(scenario: Scenario, claim_dir: Callable[[], RunDir] | None, *, model: Any = None,
              dataset: Any = None, observers: Iterable[Observer] = (),
              progress: bool = False, keep: bool = True, resume: Saved | None = None
              ) -> Result:
    extra = list(observers)
    for o in extra:
        if not isinstance(o, Observer):
            raise TypeError(f"observers: expected netfl.Observer instances, got "
                            f"{type(o).__name__}")
    output = scenario.output
    with SignalGuard() as guard:
        claim = None if claim_dir is None else claim_dir()
        bar = None
        try:
            tables = Tables(learners=keep and output.per_learner,
                            messages=keep and output.messages)
            mine: list[Observer] = [tables]
            recorder = None
            if claim is not None:
                recorder = Recorder(claim, scenario.resolved(), per_learner=output.per_learner,
                                    messages=output.messages,
                                    resume=None if resume is None else resume.files)
                mine.append(recorder)
            start = 0 if resume is None else resume.round
            bar = Progress(scenario.horizon.rounds, start) if progress else None
            started = time.perf_counter()
            built = _build(scenario, [*([bar] if bar else []), *mine, *extra], model, dataset)
            sim = built.simulation
            if recorder is not None and output.checkpoint_every:
                from netfl.checkpoint import Checkpoints

                sim.checkpoints = Checkpoints(recorder.run_dir, output.checkpoint_every,
                                              scenario_digest(scenario), recorder.lengths,
                                              start_round=start)
            if resume is not None:
                from netfl.checkpoint import loads

                loads(sim, resume.state)
            return _run(sim, scenario, guard, tables, recorder, started, resume)
        except BaseException:
            guard.armed = False
            if bar is not None:
                bar.close()
            if claim is not None:  # let the directory go; removed if nothing was written
                claim.release() if resume is not None else claim.abandon()
            raise


def scenario_digest(scenario: Scenario) -> str:
    """The resolved scenario's hash, as sweeps name runs: a checkpoint resumes only the
    scenario that wrote it."""
    from netfl.sweep import digest

    return digest(scenario)


def resume(run_dir: str | Path, *, model: Any = None, dataset: Any = None,
           observers: Iterable[Observer] = (), progress: bool = False) -> Result:
    """Continue the run in ``run_dir`` from its last checkpoint (``output.checkpoint_every``)
    after Ctrl-C, SIGTERM, kill -9 or a lost node: its tables are cut at the checkpoint and
    continued, and they end as an uninterrupted run's would. ``model`` and ``dataset``: the
    objects the run was given, if it was given any (scenario.yaml cannot hold them).
    Raises CheckpointError (no checkpoint, a completed run, another scenario)."""
    scenario, saved = _resumable(run_dir)
    return _simulate(scenario, lambda: claim_to_resume(run_dir), model=model, dataset=dataset,
                     observers=observers, progress=progress, resume=saved)


def resume_into(run_dir: str | Path, *, progress: bool = False) -> Result:
    """``netfl run --resume``: :func:`resume`, keeping only the metrics in memory."""
    scenario, saved = _resumable(run_dir)
    return _simulate(scenario, lambda: claim_to_resume(run_dir), progress=progress,
                     keep=False, resume=saved)


def _resumable(run_dir: str | Path) -> tuple[Scenario, Saved]:
    """The scenario and last checkpoint of a run directory that can be resumed."""
    from netfl.checkpoint import CheckpointError, read

    run_dir = Path(run_dir)
    saved = read(run_dir)
    previous = read_summary(run_dir)
    if previous is not None and previous.get("status") == "completed":
        raise CheckpointError(f"{run_dir}: the run completed; nothing to resume")
    scenario = load_file(run_dir / "scenario.yaml")
    if scenario_digest(scenario) != saved.digest:
        raise CheckpointError(f"{run_dir / 'scenario.yaml'}: differs from the scenario the "
                              "checkpoint was taken of; resume runs the same scenario")
    return scenario, saved


def _run(sim: Simulation, scenario: Scenario, guard: SignalGuard, tables: Tables,
         recorder: Recorder | None, started: float, resume: Saved | None = None) -> Result:
    """Run a built simulation to its end, whatever ends it, and report to the observers."""
    from netfl.sim.engine import DeadlockError, DivergedError

    run_dir = None if recorder is None else recorder.run_dir
    status, error, extra = "failed", None, {}
    write_error: OutputError | None = None
    bug: BaseException | None = None
    try:
        sim.run(resumed=resume is not None)
        guard.armed = False
        status = "completed"
    except KeyboardInterrupt as exc:  # Interrupted (SIGINT, SIGTERM) or a bare Ctrl-C
        guard.armed = False
        status = "interrupted"
        extra["interrupted_by"] = exc.name if isinstance(exc, Interrupted) else "SIGINT"
    except DeadlockError as exc:
        guard.armed = False
        error = str(exc)
    except DivergedError as exc:
        guard.armed = False
        status = "diverged"
        extra.update(diverged_at_round=exc.round, error=str(exc))
    except OutputError as exc:
        guard.armed = False
        write_error = exc
        error = str(exc)
    except Exception as exc:  # a bug: recorded in the summary, then re-raised
        guard.armed = False
        bug = exc
        error = f"{type(exc).__name__}: {exc}"
    if sim.observers.listening("on_message"):
        for row in sim.network.undelivered_rows():
            sim.observers.message(row)
    metrics = tables.rows.get("metrics", [])
    summary = summarize(sim, scenario, status, time.perf_counter() - started,
                        first_reaching(metrics, scenario.eval.target_accuracy))
    summary.update(extra)
    summary.update(sim.protocol.summary())
    if sim.checkpoints is not None:
        summary.update(sim.checkpoints.summary())
    if resume is not None:
        summary["resumed_from_round"] = resume.round
    if error is not None:
        summary["error"] = error
    if run_dir is not None:
        summary["run_dir"] = str(run_dir)
    try:
        sim.observers.end(summary)
    except OutputError as exc:  # the summary itself could not be written
        where = f"{write_error}; " if write_error is not None else ""
        raise OutputError(f"{where}{exc}: the run's summary was not written") from None
    result = _result(summary, tables, run_dir)
    if write_error is None and recorder is not None:
        write_error = recorder.failed  # a file that failed as the run ended (links.csv)
    if write_error is not None:
        saved = f"; summary in {run_dir / 'summary.json'}" if run_dir is not None else ""
        raise OutputError(f"{write_error}{saved}")
    if bug is not None:
        raise bug
    if status == "failed":
        raise RunError(f"{run_dir}: {error}" if run_dir is not None else error, result)
    return result
