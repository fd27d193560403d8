"""One run from a Scenario to a run directory, with progress, interruption and a summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from netfl.build import build
from netfl.results import EVENT_COLUMNS, LEARNER_COLUMNS, Recorder, prepare_run_dir
from netfl.scenario import Scenario
from netfl.sim.engine import DeadlockError, DivergedError
from netfl.sim.network import MESSAGE_COLUMNS


def _human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.1f}TB"


def run(scenario: Scenario, out: str | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Run a scenario; always leaves a summary.json saying completed, interrupted or failed."""
    run_dir = prepare_run_dir(out or scenario.output.dir, scenario.name)
    total = scenario.horizon.rounds
    bar = tqdm(total=total, unit="round", disable=not progress, dynamic_ncols=True, leave=True)

    def on_round(row: dict[str, Any]) -> None:
        recorder.round(row)
        bar.update(1)
        bar.set_postfix_str(
            f"t={row['sim_time_s']:.2f}s bytes={_human_bytes(row['bytes_total'])} "
            f"loss={row['loss'] / max(row['samples'], 1):.3f}",
            refresh=False,
        )

    on_learners = None
    if scenario.output.per_learner:
        def on_learners(tick: int, learners: np.ndarray, loss: np.ndarray) -> None:
            sim_time = tick * sim.tick
            rounds = sim.rounds_done[learners]
            recorder.rows("learners", LEARNER_COLUMNS, [
                {"round": int(r), "learner": int(i), "sim_time_s": sim_time, "loss": float(v)}
                for i, r, v in zip(learners, rounds, loss)
            ])

    def on_event(row: dict[str, Any]) -> None:
        recorder.rows("events", EVENT_COLUMNS, [row])

    on_message = None
    if scenario.output.messages:
        def on_message(row: dict[str, Any]) -> None:
            recorder.buffered("messages", MESSAGE_COLUMNS, row)

    def on_probe(table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        recorder.rows(table, columns, rows)

    started = time.perf_counter()
    try:
        built = build(scenario, on_round=on_round, on_learners=on_learners, on_event=on_event,
                      on_probe=on_probe, on_message=on_message)
    except BaseException:
        bar.close()
        run_dir.rmdir()  # nothing was written yet; leave no empty run behind
        raise
    sim = built.simulation
    extra = list(sim.protocol.counters) + [f"bytes_{k}" for k in sim.protocol.message_kinds]
    recorder = Recorder(run_dir, scenario.resolved(), extra, sim.eval_columns)
    status, error, diverged = "failed", None, None
    try:
        sim.run()
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    except DeadlockError as exc:
        error = str(exc)
    except DivergedError as exc:
        status, diverged = "diverged", exc
    finally:
        bar.close()
        if on_message is not None:
            for row in sim.network.undelivered_rows():
                recorder.buffered("messages", MESSAGE_COLUMNS, row)
        summary = summarize(sim, scenario, status, time.perf_counter() - started,
                            recorder.first_reaching(scenario.eval.target_accuracy))
        if diverged is not None:
            summary["diverged_at_round"] = diverged.round
            summary["error"] = str(diverged)
        summary.update(sim.protocol.summary())
        if error is not None:
            summary["error"] = error
        summary["run_dir"] = str(Path(run_dir))
        recorder.close(summary, links=sim.network.link_stats())
    if error is not None:
        raise RunError(f"{run_dir}: {error}")
    return summary


class RunError(RuntimeError):
    """A run that could not finish (a protocol waiting forever); its directory has a summary."""


def summarize(sim, scenario: Scenario, status: str, wall: float,
              time_to_accuracy: float | None = None) -> dict[str, Any]:
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
    }
