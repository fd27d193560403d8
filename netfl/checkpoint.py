"""Checkpoints (``output.checkpoint_every``) and ``netfl run --resume``.

A checkpoint is the whole simulation's state at a quiet instant: between two training
steps, with no message in flight and nothing else due at that instant. It holds the
engine's arrays and clock, the bank's parameters and optimizer state, codec states, the
protocol's state, the data streams' and the network's random generators and counters,
the SimPy queue (timers, availability and failure drivers), what observers with a
``checkpoint_state`` method keep (the in-memory tables), and the byte length of every file
the run directory holds, so that a resumed run truncates them there and appends.

Why one pickle of the object graph rather than a state_dict per module: the state is
spread over many objects that refer to each other (a protocol holding the tensor its
channel also holds), and one pickle keeps that sharing without every protocol, codec and
stream writing and testing its own save and load. What must keep its identity, or cannot be
pickled, is written as a named reference (pickle's ``persistent_id``) and taken from a
fresh build of the same scenario on resume: the simulation and the bank (their attributes
are pickled and put back into the fresh objects), the SimPy environment (its queue and
clock likewise), the observers (the files are reopened), and the dataset's tensors (too
large to copy; a tensor that views them is rebuilt as the same view). The generator process
of the engine's loop is not pickled: resume starts a new one, which takes the step the
checkpoint was taken before. Every other driver is written as event callbacks for this.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import MethodType
from typing import TYPE_CHECKING, Any

import simpy
import torch
from simpy.core import BoundClass
from simpy.resources.base import BaseResource

if TYPE_CHECKING:
    from netfl.sim.engine import Simulation

FILE = "checkpoint.pkl"
FORMAT = 1
_EPS = 1e-9


class CheckpointError(ValueError):
    """A run directory that cannot be resumed (no checkpoint, another scenario, a damaged
    file): the message names the file."""


@dataclass
class Saved:
    """What a checkpoint file holds besides the pickled state."""

    round: int  # metrics rows written when it was taken
    sim_time_s: float
    digest: str  # the resolved scenario's hash: resume refuses another scenario
    files: dict[str, int]  # run-directory file -> its length in bytes at the checkpoint
    state: bytes = field(repr=False)


def _is_state(value: Any) -> bool:
    """An attribute that is data (tensors, arrays, numbers, containers), not something the
    build makes again (functions, compiled vmap transforms, modules)."""
    return isinstance(value, torch.Tensor) or not callable(value)


class _Pickler(pickle.Pickler):
    """Pickles the state with references for ``refs`` and views of the dataset's tensors,
    and collects every tensor storage once (plain pickling copies a storage per tensor, so
    a view and its base would come back apart)."""

    def __init__(self, handle: io.BytesIO, refs: dict[int, str], static: dict[int, str]):
        super().__init__(handle, protocol=pickle.HIGHEST_PROTOCOL)
        self.refs, self.static = refs, static
        self.storages: dict[Any, torch.UntypedStorage] = {}

    def persistent_id(self, obj: Any) -> Any:
        key = self.refs.get(id(obj))
        if key is not None:
            return key
        if isinstance(obj, simpy.Process):
            return "process"  # only the engine's loop, which resume starts again
        if isinstance(obj, torch.Tensor) and self.static:
            base = self.static.get(obj.untyped_storage().data_ptr())
            if base is not None:
                return ("view", base, obj.storage_offset(), tuple(obj.shape), obj.stride())
        if (type(obj) is torch.Tensor and obj.layout == torch.strided and not obj.requires_grad
                and not obj.is_quantized):
            # as a view of its storage, so that tensors sharing one come back as views of
            # one base: they then also share the in-place version counter the bank reads
            key = self._storage(obj.untyped_storage())
            return ("tensor", key, obj.dtype, obj.storage_offset(), tuple(obj.shape),
                    obj.stride())
        if isinstance(obj, torch.storage.TypedStorage):  # a Parameter's, through its reduce
            return ("storage", self._storage(obj._untyped_storage), obj.dtype)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseResource):  # a simpy Store: its event constructors are bound
            state = {k: v for k, v in vars(obj).items() if not _bound_class(v)}
            return _resource, (type(obj),), state
        return NotImplemented

    def _storage(self, untyped: torch.UntypedStorage) -> Any:
        ptr = untyped.data_ptr()
        key = (ptr, untyped.nbytes(), str(untyped.device)) if ptr else len(self.storages)
        self.storages.setdefault(key, untyped)
        return key

    def storage_table(self) -> dict[Any, tuple[str, bytes]]:
        out = {}
        for key, untyped in self.storages.items():
            raw = torch.empty(0, dtype=torch.uint8).set_(untyped.cpu())
            out[key] = (str(untyped.device), raw.numpy().tobytes())
        return out


def _bound_class(value: Any) -> bool:
    """A simpy ``BoundClass`` bound to its instance (``store.put``): made again on load."""
    return isinstance(value, MethodType) and isinstance(value.__func__, type)


def _resource(cls: type) -> Any:
    """A simpy resource without its __init__ (the state follows), its event constructors
    bound as ``BoundClass.bind_early`` binds them."""
    obj = cls.__new__(cls)
    for klass in cls.__mro__:
        for name, attr in vars(klass).items():
            if type(attr) is BoundClass and name not in vars(obj):
                setattr(obj, name, MethodType(attr.cls, obj))
    return obj


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle: io.BytesIO, objects: dict[str, Any],
                 tensors: dict[str, torch.Tensor], table: dict[Any, tuple[str, bytes]]):
        super().__init__(handle)
        self.objects, self.tensors, self.table = objects, tensors, table
        self.storages: dict[Any, torch.UntypedStorage] = {}
        self.bases: dict[tuple[Any, torch.dtype], torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> Any:
        if pid == "process":
            return None
        if isinstance(pid, tuple) and pid[0] == "view":
            _, base, offset, shape, stride = pid
            return self.tensors[base].as_strided(shape, stride, offset)
        if isinstance(pid, tuple) and pid[0] == "tensor":
            _, key, dtype, offset, shape, stride = pid
            base = self.bases.get((key, dtype))
            if base is None:
                base = torch.empty(0, dtype=dtype).set_(self._typed(key, dtype))
                self.bases[(key, dtype)] = base
            return base.as_strided(shape, stride, offset)
        if isinstance(pid, tuple) and pid[0] == "storage":
            return self._typed(pid[1], pid[2])
        return self.objects[pid]

    def _typed(self, key: Any, dtype: torch.dtype) -> torch.storage.TypedStorage:
        untyped = self.storages.get(key)
        if untyped is None:
            device, raw = self.table[key]
            untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() \
                if raw else torch.UntypedStorage(0)
            if device != "cpu":
                untyped = untyped.to(device=torch.device(device))
            self.storages[key] = untyped
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def _banks(sim: Simulation) -> dict[str, Any]:
    """The bank, and the bank it wraps if it wraps one (the parameter probe's replicas)."""
    from netfl.learning.bank import LearnerBank

    banks = {"bank": sim.bank}
    for name, value in vars(sim.bank).items():
        if isinstance(value, LearnerBank):
            banks[f"bank.{name}"] = value
    return banks


def _identities(sim: Simulation) -> dict[str, Any]:
    """Objects taken from the fresh build on resume instead of being pickled."""
    return {"sim": sim, **_banks(sim), "env": sim.env, "observers": sim.observers,
            "checkpoints": sim.checkpoints}


def _static_tensors(sim: Simulation) -> dict[str, torch.Tensor]:
    """The dataset's tensors, by attribute name: the same in every build of the scenario."""
    sources = [sim.source, *getattr(sim.source, "sources", ())]  # replicas' sources too
    out = {}
    for i, source in enumerate(sources):
        dataset = getattr(source, "dataset", None)
        if dataset is not None:
            out.update({f"dataset{i}.{name}": value for name, value in vars(dataset).items()
                        if isinstance(value, torch.Tensor)})
    return out


def quiet_point(sim: Simulation) -> bool:
    """Nothing in flight and nothing else due now: the state is then fully in the objects
    and the queue's future events (models received and not yet applied are applied first,
    as the step about to be taken would)."""
    if sim.network.in_flight:
        return False
    now = sim.env.now
    return all(entry[0] > now + _EPS for entry in sim.env._queue)


def _state(sim: Simulation) -> tuple[Any, ...]:
    env = sim.env
    banks = _banks(sim)
    return (
        dict(vars(sim)),
        {key: {k: v for k, v in vars(bank).items() if _is_state(v) and k not in banks}
         for key, bank in banks.items()},
        {"_now": env._now, "_queue": list(env._queue), "_eid": env._eid},
        torch.get_rng_state(),
        {key: _stamp(bank) for key, bank in banks.items()},
        {i: o.checkpoint_state() for i, o in enumerate(sim.observers)
         if hasattr(o, "checkpoint_state")},
    )


def _stamp(bank: Any) -> Any:
    stamp = getattr(bank, "_stamp", None)
    return None if stamp is None else stamp()


def _restamp(bank: Any, old: Any) -> None:
    """The bank caches exact results keyed by its parameters' stamp (the buffer's identity
    and in-place version), which a new process gives new values: caches that held for the
    saved parameters are re-keyed to the restored ones, any other is dropped."""
    if old is None:
        return
    new = bank._stamp()
    for name, value in list(vars(bank).items()):
        if not isinstance(value, tuple) or not value:
            continue
        if _same(value, old):
            setattr(bank, name, new)
        elif _same(value[0], old):
            setattr(bank, name, (new, *value[1:]))


def _same(value: Any, stamp: tuple) -> bool:
    return isinstance(value, tuple) and len(value) == len(stamp) and all(
        isinstance(a, int) and a == b for a, b in zip(value, stamp))


def dumps(sim: Simulation) -> bytes:
    """The simulation's state as bytes (see the module docstring for what is referenced)."""
    refs = {id(obj): key for key, obj in _identities(sim).items() if obj is not None}
    static = {t.untyped_storage().data_ptr(): key for key, t in _static_tensors(sim).items()}
    handle = io.BytesIO()
    pickler = _Pickler(handle, refs, static)
    pickler.dump(_state(sim))
    return pickle.dumps((pickler.storage_table(), handle.getvalue()),
                        protocol=pickle.HIGHEST_PROTOCOL)


def loads(fresh: Simulation, data: bytes) -> Simulation:
    """Put a checkpoint's state into ``fresh``, a new build of the same scenario whose run
    has not started; returns it, ready for ``run(resumed=True)``."""
    objects = _identities(fresh)
    table, main = pickle.loads(data)
    unpickler = _Unpickler(io.BytesIO(main), objects, _static_tensors(fresh), table)
    sim_state, bank_state, env_state, rng, stamp, observed = unpickler.load()
    for key in ("observers", "checkpoints"):
        sim_state.pop(key, None)  # the fresh build's own
    vars(fresh).update(sim_state)
    for key, bank in _banks(fresh).items():
        vars(bank).update(bank_state[key])
        _restamp(bank, stamp[key])
    env = fresh.env
    env._now, env._eid = env_state["_now"], env_state["_eid"]
    env._queue[:] = env_state["_queue"]
    env._active_proc = None
    torch.set_rng_state(rng)
    watching = list(fresh.observers)
    for i, state in observed.items():
        if i < len(watching) and hasattr(watching[i], "restore_state"):
            watching[i].restore_state(state)
    fresh.observers.sim = fresh
    fresh.observers._refresh()  # the network's message listener
    return fresh


class Checkpoints:
    """``output.checkpoint_every: k``: after every k-th metrics row, at the first quiet
    point (``quiet_point``), the state is written to ``checkpoint.pkl`` in the run directory
    (a temporary file, flushed to disk, then renamed: a kill leaves the previous one whole).
    ``files()`` gives the run directory's files and lengths, flushed, at that instant."""

    def __init__(self, run_dir: Path, every: int, digest: str, files: Any,
                 start_round: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.every = int(every)
        self.digest = digest
        self.files = files
        self.next = (start_round // self.every + 1) * self.every
        self.saved = 0
        self.last_round: int | None = None
        self.error: str | None = None  # why checkpoints stopped (a state pickle cannot hold)

    def due(self, sim: Simulation) -> bool:
        return self.error is None and sim.rows_emitted >= self.next and quiet_point(sim)

    def save(self, sim: Simulation) -> None:
        sim.apply_pending()  # the step does it first anyway; the state then has no id() keys
        try:
            state = dumps(sim)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            self.error = f"checkpoint at round {sim.rows_emitted} not written: {exc}"
            return
        saved = Saved(round=sim.rows_emitted, sim_time_s=sim.env.now, digest=self.digest,
                      files=self.files(), state=state)
        write(self.run_dir, saved)
        self.saved += 1
        self.last_round = sim.rows_emitted
        self.next = (sim.rows_emitted // self.every + 1) * self.every

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checkpoints": self.saved,
                               "last_checkpoint_round": self.last_round}
        if self.error is not None:
            out["checkpoint_error"] = self.error
        return out


def write(run_dir: Path, saved: Saved) -> None:
    from netfl.results import OutputError

    path, tmp = run_dir / FILE, run_dir / f"{FILE}.tmp"
    header = {"format": FORMAT, "round": saved.round, "sim_time_s": saved.sim_time_s,
              "digest": saved.digest, "files": saved.files}
    try:
        with tmp.open("wb") as handle:
            pickle.dump(header, handle, protocol=pickle.HIGHEST_PROTOCOL)
            handle.write(saved.state)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc})") from None


def read(run_dir: str | Path) -> Saved:
    """The run directory's checkpoint; CheckpointError when there is none or it is damaged."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        if not Path(run_dir).is_dir():
            raise CheckpointError(f"{run_dir}: no such run directory")
        raise CheckpointError(f"{path}: no checkpoint to resume from (run with "
                              "output.checkpoint_every set)")
    try:
        with path.open("rb") as handle:
            header = pickle.load(handle)
            state = handle.read()
        if header.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {header.get('format')!r}, "
                                  f"this netfl reads {FORMAT}")
        return Saved(round=int(header["round"]), sim_time_s=float(header["sim_time_s"]),
                     digest=str(header["digest"]), files=dict(header["files"]), state=state)
    except CheckpointError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
