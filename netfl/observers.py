"""One observer interface: what a run reports, to whoever listens.

Everything that watches a run is an :class:`Observer`: the recorder that writes the run
directory, the progress bar, the in-memory tables of :class:`netfl.Result`, the probes and
your own. Subclass it and override the methods you need; the engine calls only methods an
observer overrides (see :meth:`Observer.listens`), so an observer that ignores messages
costs nothing per message.

Order of calls in one run: ``on_start`` once, then per simulated round any ``on_learners``
(per-learner steps), ``on_event`` (drifts, failures), ``on_message`` (each delivered or lost
message) and ``on_upload`` calls of that round, then ``on_round`` with its metrics row (and
any ``on_probe`` rows a probe writes while it observes that round), and ``on_end`` with the
summary. Messages still in flight when the run stops are reported (``delivered_s`` empty)
just before ``on_end``. Observers read the simulation; they must never change it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from netfl.sim.engine import Simulation

EVENTS = ("on_start", "on_round", "on_learners", "on_event", "on_probe", "on_message",
          "on_upload", "on_end")


class Observer:
    """Base class with no-op methods; ``sim`` is the :class:`~netfl.sim.engine.Simulation`."""

    def on_start(self, sim: Simulation) -> None:
        """The run is about to start (everything is built)."""

    def on_round(self, sim: Simulation, row: dict[str, Any]) -> None:
        """Every learner finished a round: ``row`` is that round's metrics.csv row."""

    def on_learners(self, sim: Simulation, rows: list[dict[str, Any]]) -> None:
        """Learners finished a step: one learners.csv row each (round, learner, time, loss)."""

    def on_event(self, sim: Simulation, row: dict[str, Any]) -> None:
        """A drift or a link/node failure or repair: one events.csv row."""

    def on_probe(self, sim: Simulation, table: str, columns: list[str],
                 rows: list[dict[str, Any]]) -> None:
        """A probe measured: rows of ``<table>.csv`` (``probes_representation``, ...)."""

    def on_message(self, sim: Simulation, row: dict[str, Any]) -> None:
        """A message was delivered or given up: its messages.csv row."""

    def on_upload(self, sim: Simulation, learner: int, update: torch.Tensor) -> None:
        """A learner's model goes up: ``update`` [P] is its model minus the base it last
        received, the uplink codec's input (read only; ``sim.bank.unflatten`` gives layers)."""

    def on_end(self, sim: Simulation, summary: dict[str, Any]) -> None:
        """The run ended (completed, interrupted, diverged or failed): its summary."""

    def listens(self, event: str) -> bool:
        """Whether to call method ``event`` (e.g. ``"on_message"``); default: overridden.
        Override to switch an event off at run time (the recorder's ``output.messages``)."""
        return getattr(type(self), event) is not getattr(Observer, event)


class Observers:
    """The observers of one simulation, in order, with a list of listeners per event.

    The engine asks this hub, never the observers: ``network.on_message`` is set only while
    someone listens to messages, so the network makes no Python call per message otherwise.
    """

    def __init__(self, sim: Simulation, observers: Iterable[Observer] = ()) -> None:
        self.sim = sim
        self._all: list[Observer] = []
        self._listeners: dict[str, list[Any]] = {}
        self.extend(observers)

    def append(self, observer: Observer) -> None:
        if not isinstance(observer, Observer):
            raise TypeError(f"observers must be netfl.Observer instances, got "
                            f"{type(observer).__name__}")
        self._all.append(observer)
        self._refresh()

    def extend(self, observers: Iterable[Observer]) -> None:
        for observer in observers:
            self.append(observer)
        self._refresh()

    def __iter__(self) -> Iterator[Observer]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def listening(self, event: str) -> bool:
        return bool(self._listeners.get(event))

    def _refresh(self) -> None:
        self._listeners = {e: [getattr(o, e) for o in self._all if o.listens(e)] for e in EVENTS}
        network = getattr(self.sim, "network", None)
        if network is not None:
            network.on_message = self.message if self._listeners["on_message"] else None

    # ------------------------------------------------------------- dispatch

    def start(self) -> None:
        for call in self._listeners["on_start"]:
            call(self.sim)

    def round(self, row: dict[str, Any]) -> None:
        for call in self._listeners["on_round"]:
            call(self.sim, row)

    def steps(self, tick: int, learners: np.ndarray, loss: np.ndarray) -> None:
        """Per-learner rows of one batched step; built only when someone listens."""
        calls = self._listeners["on_learners"]
        if not calls:
            return
        sim = self.sim
        now = tick * sim.tick
        rows = [{"round": int(r), "learner": int(i), "sim_time_s": now, "loss": float(v)}
                for i, r, v in zip(learners, sim.rounds_done[learners], loss)]
        for call in calls:
            call(sim, rows)

    def event(self, row: dict[str, Any]) -> None:
        for call in self._listeners["on_event"]:
            call(self.sim, row)

    def probe(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        for call in self._listeners["on_probe"]:
            call(self.sim, table, columns, rows)

    def message(self, row: dict[str, Any]) -> None:
        for call in self._listeners["on_message"]:
            call(self.sim, row)

    def upload(self, learner: int, update: torch.Tensor) -> None:
        for call in self._listeners["on_upload"]:
            call(self.sim, learner, update)

    def end(self, summary: dict[str, Any]) -> None:
        """Every observer hears the end, even after one of them failed (the first failure is
        raised afterwards): a recorder that cannot write never hides the summary from others."""
        failure: BaseException | None = None
        for call in self._listeners["on_end"]:
            try:
                call(self.sim, summary)
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


class Tables(Observer):
    """Keeps a run's tables in memory, by name: ``metrics``, ``learners`` and ``messages``
    (when ``learners`` / ``messages`` is true), ``events`` and each probe's table."""

    def __init__(self, *, learners: bool = True, messages: bool = True) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.columns: dict[str, list[str]] = {}
        self._learners, self._messages = learners, messages

    def listens(self, event: str) -> bool:
        if event == "on_learners":
            return self._learners
        if event == "on_message":
            return self._messages
        return super().listens(event)

    def add(self, table: str, columns: list[str], rows: list[dict[str, Any]]) -> None:
        self.columns.setdefault(table, list(columns))
        self.rows.setdefault(table, []).extend(rows)

    def checkpoint_state(self) -> Any:
        """What a checkpoint keeps of this observer (netfl.checkpoint): the rows so far."""
        return self.rows, self.columns

    def restore_state(self, state: Any) -> None:
        self.rows, self.columns = state

    def on_start(self, sim: Simulation) -> None:
        from netfl.results import metrics_columns

        self.columns.setdefault("metrics", metrics_columns(sim))
        self.rows.setdefault("metrics", [])

    def on_round(self, sim: Simulation, row: dict[str, Any]) -> None:
        self.rows["metrics"].append(row)

    def on_learners(self, sim: Simulation, rows: list[dict[str, Any]]) -> None:
        from netfl.results import LEARNER_COLUMNS

        self.add("learners", LEARNER_COLUMNS, rows)

    def on_event(self, sim: Simulation, row: dict[str, Any]) -> None:
        from netfl.results import EVENT_COLUMNS

        self.add("events", EVENT_COLUMNS, [row])

    def on_probe(self, sim: Simulation, table: str, columns: list[str],
                 rows: list[dict[str, Any]]) -> None:
        self.add(table, columns, rows)

    def on_message(self, sim: Simulation, row: dict[str, Any]) -> None:
        from netfl.sim.network import MESSAGE_COLUMNS

        self.columns.setdefault("messages", MESSAGE_COLUMNS)
        self.rows.setdefault("messages", []).append(row)

    def frame(self, table: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A table as a DataFrame with its CSV columns, in order (empty when never written)."""
        import pandas as pd

        cols = self.columns.get(table, columns or [])
        frame = pd.DataFrame.from_records(self.rows.get(table, []), columns=cols)
        return frame


class Progress(Observer):
    """A tqdm bar of rounds with simulated time, bytes and mean loss."""

    def __init__(self, total: int | None, initial: int = 0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="round", dynamic_ncols=True,
                        leave=True)

    def on_round(self, sim: Simulation, row: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(
            f"t={row['sim_time_s']:.2f}s bytes={human_bytes(row['bytes_total'])} "
            f"loss={row['loss'] / max(row['samples'], 1):.3f}",
            refresh=False,
        )

    def on_end(self, sim: Simulation, summary: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000:
            return f"{count:.0f}{unit}" if unit == "B" else f"{count:.1f}{unit}"
        count /= 1000
    return f"{count:.1f}TB"
