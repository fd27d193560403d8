"""Scenario -> Simulation: the one place that wires data, model, network and protocol together.

Components never import each other sideways; this module picks them from
their registries and hands each its own seed, split from the scenario's root
seed so that adding a component never shifts another's random stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import simpy
import torch

from netfl import compression
from netfl.compression import Codec
from netfl.data.custom import as_dataset
from netfl.data.datasets import DataError, Dataset, load_dataset
from netfl.data.drift import DriftSchedule, make_source
from netfl.data.partition import LABEL_SCHEMES, partition
from netfl.data.sources import BatchSource, DatasetSource
from netfl.data.streams import SampleStream
from netfl.learning import memory
from netfl.learning.bank import LearnerBank
from netfl.learning.bank import resolve_device as bank_device
from netfl.learning.custom import custom_model
from netfl.learning.models import ModelError, build_model, last_layer
from netfl.learning.replicas import ReplicaBank, ReplicaSource
from netfl.observers import Observer
from netfl.probes.parameters import ParameterProbe, Projection, one_bank_refusal, replica_seed
from netfl.probes.representation import RepresentationProbe, local_samples
from netfl.protocols import PROTOCOLS
from netfl.scenario import (
    DRIFTING,
    ComputeTime,
    ProbesConfig,
    Scenario,
    ScenarioError,
    TopologyFile,
)
from netfl.sim import availability as availability_mod
from netfl.sim import devices as devices_mod
from netfl.sim import topology
from netfl.sim.engine import Simulation
from netfl.sim.failures import Failures, elements
from netfl.sim.interface import COORDINATOR
from netfl.sim.network import Network

SEED_STREAMS = ("data", "init", "stream", "network", "protocol", "compute", "drift",
                "availability", "devices")  # append only: earlier streams never shift


def seeds(root: int) -> dict[str, int]:
    """Independent per-component seeds from the scenario's root seed."""
    children = np.random.SeedSequence(root).spawn(len(SEED_STREAMS))
    return {name: int(c.generate_state(1)[0]) for name, c in zip(SEED_STREAMS, children)}


def resolve_device(name: str) -> torch.device:
    """The bank's device rule, with a user error when CUDA is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ScenarioError("device: cuda requested but no CUDA device is available")
    return bank_device(name)


def step_times(config: ComputeTime, m: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds per step for each learner; a distribution draws persistent stragglers."""
    if config.dist == "constant":
        return np.full(m, config.mean)
    if config.dist == "uniform":
        return rng.uniform(config.low, config.high, m)
    if config.dist == "lognormal":
        return config.mean * rng.lognormal(-config.sigma**2 / 2, config.sigma, m)
    return rng.exponential(config.mean, m)


def to_ticks(times: np.ndarray, tick: float) -> np.ndarray:
    return np.maximum(1, np.rint(times / tick)).astype(np.int64)


def build_graph(scenario: Scenario, m: int, seed: int) -> tuple[nx.Graph, Any, list[Any]]:
    net = scenario.network
    if isinstance(net.topology, TopologyFile):
        graph = topology.load_graph(net.topology.file)
    else:
        params = dict(net.topology.params)
        n = net.topology.n
        if net.topology.generator == "hierarchy" and n is None:
            params.setdefault("leaves", m)  # one access node per learner
        elif n is None:
            n = m + 1  # the coordinator's node plus one per learner
        graph = topology.generate(net.topology.generator, n, seed=seed, **params)
    overrides = [o.model_dump(exclude_none=True) for o in net.links]
    tiers = {name: t.model_dump(exclude_none=True) for name, t in net.tiers.items()}
    graph = topology.configure_links(
        graph, bandwidth=net.bandwidth, reverse_bandwidth=net.reverse_bandwidth,
        latency=net.latency, loss=net.loss, tiers=tiers, overrides=overrides,
        tiers_key="network.tiers", overrides_key="network.links",  # the keys the user wrote
    )
    where = net.topology.file if isinstance(net.topology, TopologyFile) else "network.topology"
    coordinator, nodes = topology.place(
        graph, m, coordinator=net.coordinator, learners=net.placement,
        coordinator_key="network.coordinator", learners_key="network.placement",
        graph_key=where,
    )
    return graph, coordinator, nodes


def build_codecs(scenario: Scenario) -> tuple[Codec | None, Codec | None]:
    """The uplink and downlink codecs; a bad codec parameter names its scenario key."""
    codecs = []
    for direction in ("uplink", "downlink"):
        config = getattr(scenario.compression, direction)
        if config is None:
            codecs.append(None)
            continue
        try:
            codecs.append(compression.get(config.name, **config.params()))
        except compression.CodecError as exc:
            raise ScenarioError(f"compression.{direction}: {exc}") from None
    return codecs[0], codecs[1]


def loss_for(source: BatchSource) -> str:
    """The training loss the data call for: squared error for regression targets."""
    return "mse" if source.task == "regression" else "cross_entropy"


def pretrain(scenario: Scenario, model, source, device: torch.device, seed: int,
             init: str = "reset"):
    """The model every learner starts from after centralized SGD on the whole training set.

    This is the public pretrained network of transfer learning (seed 002): it happens
    before the simulation, so it costs no simulated time and no bytes."""
    if not isinstance(source, DatasetSource):
        raise ScenarioError("model.pretrain_steps: needs a fixed dataset, not a drifting stream")
    data, opt = source.dataset, scenario.optimizer
    central = LearnerBank(model, 1, optimizer=opt.name, lr=opt.lr, momentum=opt.momentum,
                          weight_decay=opt.weight_decay, betas=opt.betas, eps=opt.eps,
                          reduction=opt.reduction, device=device, seed=seed,
                          loss=loss_for(source), init=init)
    everything = np.arange(len(data.y_train))
    stream = SampleStream([everything], scenario.data.batch_size, seed=seed, device=device)
    for step in range(scenario.model.pretrain_steps):
        index = stream.indices_all(step).to(data.x_train.device).long()
        central.step(central.all_idx, data.x_train[index], data.y_train[index])
    return central.mean()


def partition_labels(dataset: Dataset) -> np.ndarray:
    """What partitioning reads: class labels, or one dummy class for regression targets
    (only the label-free schemes iid, shared, by_size and natural take those)."""
    if dataset.task == "regression":
        return np.zeros(len(dataset.y_train), dtype=np.int64)
    return dataset.y_train.cpu().numpy()


_DATA_KEY = {"npz": "data.path", "python": "data.factory", "leaf": "data.root"}
_PARTITION_KEYS = {"m": "learners.count", "alpha": "data.alpha", "groups": "data.groups",
                   "shards": "data.shards", "size_exponent": "data.size_exponent",
                   "min_size": "learners.count"}


def load_data(scenario: Scenario, seed: int, dataset: Any = None) -> Dataset:
    """The scenario's fixed dataset, or ``dataset`` (anything ``as_dataset`` takes) in its
    place; a file or factory error names the key that chose it."""
    data = scenario.data
    if dataset is not None:
        if data.dataset in DRIFTING:
            raise ScenarioError(f"dataset: a dataset object replaces a fixed dataset, but "
                                f"data.dataset is the drifting stream {data.dataset!r}")
        try:
            return as_dataset(dataset, test_fraction=data.test_fraction, seed=seed)
        except DataError as exc:
            raise ScenarioError(f"dataset: {exc}") from None
    extra: dict[str, Any] = dict(data.params)
    if data.dataset == "npz":
        extra["path"] = data.path
    elif data.dataset == "python":
        extra = {"factory": data.factory, "params": dict(data.params)}
    try:
        return load_dataset(data.dataset, seed=seed, test_fraction=data.test_fraction,
                            root=data.root, **extra)
    except DataError as exc:
        key = _DATA_KEY.get(data.dataset)
        if key is None:  # built-in datasets name their own parameter
            raise
        raise ScenarioError(f"{key}: {exc}") from None


def partition_for(scenario: Scenario, dataset: Dataset, seed: int) -> list[np.ndarray]:
    """Each learner's training indices under the scenario's partition scheme; errors name
    the scenario key (``learners.count``, ``data.partition``, ``data.shards``, ...)."""
    data, m = scenario.data, scenario.learners.count
    if dataset.task == "regression" and data.partition in LABEL_SCHEMES:
        raise ScenarioError(f"data.partition: {data.partition!r} splits by class label; the "
                            "dataset's targets are real vectors (regression): use iid, shared, "
                            "by_size or natural")
    if data.partition == "natural":
        if dataset.users_train is None:
            raise ScenarioError(
                "data.partition: natural splits by the data's own users, and this dataset "
                "has none (LEAF data have them; give an npz file a 'users' array, a dict a "
                "'users' key, one user id per sample)")
        users = len(np.unique(dataset.users_train))
        if users < m:
            raise ScenarioError(f"learners.count: {m} learners but the dataset has only "
                                f"{users} users; partition natural gives each learner whole "
                                f"users, so use at most {users} learners")
    try:
        return partition(
            partition_labels(dataset), m, data.partition, seed=seed, alpha=data.alpha,
            groups=data.groups, shards=data.shards, size_exponent=data.size_exponent,
            users=dataset.users_train,
        )
    except DataError as exc:
        field, _, rest = str(exc).partition(": ")
        if field in _PARTITION_KEYS:
            raise ScenarioError(f"{_PARTITION_KEYS[field]}: {rest}") from None
        raise


def build_source(scenario: Scenario, seed: dict[str, int], device: torch.device,
                 dataset: Any = None):
    """The batch source: a fixed dataset through index streams, or a drifting stream.

    ``dataset`` (a netfl Dataset, or anything ``netfl.data.as_dataset`` takes) replaces
    loading ``data.dataset``; the scenario's partition, batch size and augment still apply."""
    data, m = scenario.data, scenario.learners.count
    evaluation = scenario.eval
    if data.dataset in DRIFTING and dataset is None:
        drift = data.drift
        schedule = DriftSchedule(
            drift.mode, rounds=[r - 1 for r in drift.rounds], p=drift.p, seed=seed["drift"],
            kind=drift.kind, width=drift.width, pool=drift.pool,
        )
        params = dict(data.params)
        if data.dataset == "digits_permuted":
            digits = load_dataset("digits", seed=seed["data"], test_fraction=data.test_fraction)
            params.setdefault("dataset", digits)
            params.setdefault("parts", partition_for(scenario, digits, seed["data"]))
            params.setdefault("eval_on", evaluation.on)
            params.setdefault("max_eval", evaluation.max_samples)
        return make_source(data.dataset, m=m, batch_size=data.batch_size, seed=seed["stream"],
                           device=device, schedule=schedule, **params)
    dataset = load_data(scenario, seed["data"], dataset).to(device)
    parts = partition_for(scenario, dataset, seed["data"])
    stream = SampleStream(parts, data.batch_size, seed=seed["stream"], device=device)
    try:
        return DatasetSource(dataset, stream, eval_on=evaluation.on,
                             max_eval=evaluation.max_samples, shift=data.augment.shift,
                             noise=data.augment.noise, seed=seed["stream"])
    except ValueError as exc:  # augment that does not fit the data's shape
        raise ScenarioError(str(exc)) from None


def build_probes(
    scenario: Scenario, seed: dict[str, int], simulation: Simulation, source: BatchSource,
    model: torch.nn.Module | None = None, replicas: Replicas | None = None,
) -> list[Observer]:
    """The scenario's probes as observers of ``simulation``; they report their rows to its
    other observers (``Observer.on_probe``).

    Probes read the bank and keep their own generators; the parameter probe reads its
    replicas from the run's bank where ``replicas`` put them there (``one_bank_replicas``),
    and otherwise gets a factory of replicas (this scenario without probes, with replica r's
    stream seed; ``model`` is the researcher's module the replicas start from, as the run
    did). ``source`` is the run's own (replica 0's) source.
    """
    config = scenario.probes
    if config.representation is None and config.parameters is None:
        return []
    m = scenario.learners.count
    protocol_cls = PROTOCOLS[scenario.protocol.name]
    if not protocol_cls.needs(scenario.protocol, m).local_models:
        raise ScenarioError(f"probes: the {scenario.protocol.name} protocol trains one model at "
                            "the coordinator; probes need one model per learner")
    probes: list[Observer] = []

    rep = config.representation
    if rep is not None:
        if rep.every == "sync" and not protocol_cls.synchronizes:
            raise ScenarioError(
                f"probes.representation.every: 'sync' needs a protocol that synchronizes; "
                f"{scenario.protocol.name} never does (for averaging without redistribution "
                "give every: k rounds)")
        if not isinstance(source, DatasetSource):
            raise ScenarioError(
                f"probes.representation: needs a fixed dataset with per-learner partitions, "
                f"got the drifting stream {scenario.data.dataset!r}")
        if source.task == "regression":
            raise ScenarioError("probes.representation: records I(Y;Z) with class labels and "
                                "accuracy; this dataset's targets are real vectors (regression)")
        parts = partition_for(scenario, source.dataset, seed["data"])
        if [len(p) for p in parts] != source.stream.sizes:  # build_source's own partition
            raise RuntimeError("probes.representation: partition differs from the run's")
        x, y = local_samples(parts, source.dataset.x_train, source.dataset.y_train,
                             rep.samples, seed=[scenario.seed, rep.seed])
        probes.append(RepresentationProbe(x, y, every=rep.every, estimator=rep.estimator,
                                          seed=rep.seed))

    par = config.parameters
    if par is not None:
        if m < 2:
            raise ScenarioError("probes.parameters: needs at least 2 learners (MI between pairs)")
        bare = scenario.model_copy(update={"probes": ProbesConfig()})

        def make_replica(r: int) -> Simulation:
            stream = replica_seed(seed["stream"], r)
            given = source.dataset if isinstance(source, DatasetSource) else None
            return build(bare, seed_overrides={"stream": stream}, dataset=given,
                         model=model).simulation

        bank = None if replicas is None else replicas.bank
        size = simulation.bank.num_params if bank is None else bank.replica_params
        projection = Projection(size, par.dims, par.projection, seed=par.seed,
                                device=simulation.bank.device)
        probes.append(ParameterProbe(
            replicas=par.replicas, every=par.every, estimators=par.estimators, k=par.k,
            projection=projection, seed=par.seed, make_replica=make_replica, bank=bank,
            fallback=None if replicas is None else replicas.fallback,
        ))
    return probes


@dataclass
class Replicas:
    """How the parameter probe's replicas run: ``bank``/``source`` (R x m rows of the run's
    bank and the R replicas' sources) on the one-bank path; both None and ``fallback``
    saying why on the separate path."""

    bank: ReplicaBank | None = None
    source: ReplicaSource | None = None
    fallback: str | None = None


def one_bank_replicas(
    scenario: Scenario, seed: dict[str, int], bank: LearnerBank, source: BatchSource,
    device: torch.device, observers: list[Observer], new_bank: Callable[[int], LearnerBank],
) -> Replicas | None:
    """The parameter probe's R replicas as R x m rows of one bank, where that gives exactly
    what R separate runs give (``one_bank_refusal``; and the bank must fit ``device``), or a
    Replicas saying why not; None without a parameter probe. ``bank`` is the run's m-row
    bank after any pretraining (every replica starts from it), ``new_bank(rows)`` a fresh
    bank of the scenario's options, ``source`` the run's source; replica r > 0 draws from
    ``replica_seed(stream, r)`` like the separate replicas."""
    par = scenario.probes.parameters
    if par is None or scenario.learners.count < 2:
        return None
    refusal = one_bank_refusal(scenario, observers)
    if refusal is None and bank.m != scenario.learners.count:
        refusal = "the protocol trains one model at the coordinator"
    rows = par.replicas * bank.m
    if refusal is None:
        try:
            memory.check_bank(scenario, source.input_shape, source.num_classes, rows,
                              memory.source_bytes(source), device)
        except ScenarioError as exc:
            refusal = f"memory: {exc}"
    if refusal is not None:
        return Replicas(fallback=refusal)
    given = source.dataset if isinstance(source, DatasetSource) else None  # as make_replica
    sources = [source] + [
        build_source(scenario, {**seed, "stream": replica_seed(seed["stream"], r)}, device,
                     given)
        for r in range(1, par.replicas)
    ]
    return Replicas(bank=ReplicaBank.tile(bank, par.replicas, new_bank(rows)),
                    source=ReplicaSource(sources))


@dataclass
class Built:
    simulation: Simulation
    source: BatchSource
    graph: nx.Graph
    device: torch.device
    probes: list[Observer] = field(default_factory=list)


def build(
    scenario: Scenario,
    *,
    observers: Iterable[Observer] = (),
    seed_overrides: dict[str, int] | None = None,
    dataset: Dataset | Any = None,
    model: torch.nn.Module | None = None,
    one_bank: bool = True,
) -> Built:
    """Wire a Simulation watched by ``observers`` (then the scenario's probes, which are
    observers too; ``netfl.observers``); ``seed_overrides`` replaces per-component seeds (the
    parameter probe's replicas); ``dataset`` (a netfl Dataset, or anything
    ``netfl.data.as_dataset`` takes) replaces loading ``data.dataset``; ``model`` (any
    ``torch.nn.Module`` that ``netfl.learning.custom.check_model`` accepts; not modified)
    replaces the scenario's model kind, and every learner starts from its weights.
    ``one_bank=False`` runs the parameter probe's replicas as separate simulations even
    where they could train in the run's bank (the reference the tests compare with)."""
    observers = list(observers)
    seed = seeds(scenario.seed)
    seed.update(seed_overrides or {})
    device = resolve_device(scenario.device)
    m = scenario.learners.count
    protocol_cls = PROTOCOLS[scenario.protocol.name]
    needs = protocol_cls.needs(scenario.protocol, m)

    memory.check_data(scenario, device)  # before a synthetic set is generated
    source = build_source(scenario, seed, device, dataset)

    spec = scenario.model
    memory.check_bank(scenario, source.input_shape, source.num_classes, needs.bank_size,
                      memory.source_bytes(source), device)  # before anything is allocated
    if model is None and spec.kind != "python":  # a built-in kind, initialised by the bank
        model = build_model(
            spec.kind, source.input_shape, source.num_classes, hidden=spec.hidden,
            activation=spec.activation,
        )
        init, trainable = "reset", last_layer(model) if spec.train == "last" else None
    else:  # the researcher's own module, checked on entry; its weights are the start
        try:
            model, trainable = custom_model(
                model, spec.factory, spec.params, spec.train, source, seed["init"],
                features=scenario.probes.representation is not None)
        except ModelError as exc:
            raise ScenarioError(str(exc)) from exc
        init = "given"
    opt = scenario.optimizer

    def new_bank(rows: int) -> LearnerBank:
        return LearnerBank(
            model, rows, optimizer=opt.name, lr=opt.lr, momentum=opt.momentum,
            weight_decay=opt.weight_decay, betas=opt.betas, eps=opt.eps,
            reduction=opt.reduction, device=device, seed=seed["init"],
            init_noise=scenario.learners.init_noise, trainable=trainable,
            loss=loss_for(source), init=init,
            input_shape=None if init == "reset" else source.input_shape,  # built-ins know theirs
        )

    bank = new_bank(needs.bank_size)
    if spec.pretrain_steps:
        bank.assign(bank.all_idx, pretrain(scenario, model, source, device, seed["init"], init))
    # the parameter probe's replicas as rows of this run's bank, where that is exact
    replicas = (one_bank_replicas(scenario, seed, bank, source, device, observers, new_bank)
                if one_bank else Replicas(fallback="build(one_bank=False)"))
    replicated = replicas is not None and replicas.bank is not None

    times = step_times(scenario.learners.compute_time, m, np.random.default_rng(seed["compute"]))
    devices = load_devices(scenario, seed["devices"])
    if devices is not None:
        times = 1.0 / devices.steps_per_s
    tick = scenario.learners.tick or float(times.min())
    if not tick >= 1e-9:
        raise ScenarioError(f"learners.tick: the fastest learner's step takes {tick:.3g} s, "
                            "below the 1 ns clock resolution; set learners.tick (or a larger "
                            "compute_time)")
    durations = to_ticks(times, tick)
    if int(durations.max()) > 2**53:
        raise ScenarioError(f"learners.tick: {tick:.3g} s makes the slowest step "
                            f"{int(durations.max())} ticks; set a larger learners.tick")
    if needs.one_machine:  # one machine does every learner's step in turn
        durations = np.array([int(durations.sum())])

    graph, coordinator, nodes = build_graph(scenario, m, seed["network"])
    if devices is not None:
        device_links(graph, coordinator, nodes, devices)
    env = simpy.Environment()
    placement: dict[Any, Any] = {COORDINATOR: coordinator, **dict(enumerate(nodes))}
    net = scenario.network
    loss_seed, failure_seed = np.random.SeedSequence(seed["network"]).spawn(2)
    network = Network(
        env, graph, placement, rng=np.random.default_rng(loss_seed), model=net.model,
        retransmit_timeout=net.retransmit_timeout, tcp_window=net.tcp_window,
        sharing=net.sharing, give_up=net.give_up,
    )
    failures = build_failures(scenario, env, network, np.random.default_rng(failure_seed),
                              None)

    def make_protocol(sim: Simulation):
        return protocol_cls(sim, scenario.protocol, seed=seed["protocol"])

    evaluation = scenario.eval
    uplink, downlink = build_codecs(scenario)
    if not needs.models_on_wire and (uplink or downlink):
        raise ScenarioError(f"compression: the {scenario.protocol.name} protocol sends "
                            "samples, not models")

    simulation = Simulation(
        env=env, network=network, bank=replicas.bank if replicated else bank,
        source=replicas.source if replicated else source,
        protocol_factory=make_protocol, tick=tick, durations=durations,
        horizon_rounds=scenario.horizon.rounds, horizon_time=scenario.horizon.sim_time,
        eval_every=evaluation.every,
        divergence_every=evaluation.divergence_every or evaluation.every,
        eval_local=evaluation.local and needs.local_models, observers=observers,
        uplink=uplink, downlink=downlink,
        batches_per_step=needs.batches_per_step,
    )
    if replicated:  # the wire carries R replicas' models; charge one replica's bytes
        simulation.message_size = replicas.bank.message_size
    if failures is not None:
        failures.quiet = simulation.quiet
        failures.on_event = simulation.observers.event  # events.csv rows
    availability = build_availability(scenario, env, simulation, seed["availability"])
    if availability is not None:
        availability.quiet = simulation.quiet
        simulation.availability = True
        availability.start()
    probes = build_probes(scenario, seed, simulation, source,
                          model=model if init == "given" else None, replicas=replicas)
    simulation.observers.extend(probes)
    return Built(simulation, source, graph, device, probes)


def load_devices(scenario: Scenario, seed: int) -> devices_mod.Devices | None:
    """Per-learner device speeds and bandwidths from learners.devices, or None."""
    config = scenario.learners.devices
    if config is None:
        return None
    try:
        _, table = devices_mod.read_devices(config.file)
    except devices_mod.DeviceTraceError as exc:
        raise ScenarioError(f"learners.devices.file: {exc}") from None
    return devices_mod.assign(table, scenario.learners.count, config.assign,
                              np.random.default_rng(seed))


def device_links(graph: nx.Graph, coordinator: Any, nodes: list[Any],
                 devices: devices_mod.Devices) -> None:
    try:
        devices_mod.apply_links(graph, coordinator, nodes, devices)
    except devices_mod.DeviceTraceError as exc:
        raise ScenarioError(f"learners.devices: {exc}") from None


def build_availability(scenario: Scenario, env: simpy.Environment, simulation: Simulation,
                       seed: int) -> availability_mod.Availability | None:
    """The learners' online/offline process (learners.availability), or None: always on."""
    config = scenario.learners.availability
    m = scenario.learners.count
    rng = np.random.default_rng(seed)
    if config.kind == "always" or (config.kind == "markov" and not config.offline_fraction
                                   and config.mean_online is None):
        return None
    if simulation.m != m:
        raise ScenarioError(f"learners.availability: the {scenario.protocol.name} protocol "
                            "trains one central model on every learner's data; availability "
                            "applies to protocols whose learners train")
    if config.kind == "markov":
        initial, next_change = availability_mod.markov(config.online_mean(),
                                                       config.mean_offline, m, rng)
    elif config.kind == "schedule":
        entries = [w.model_dump(by_alias=True) for w in config.offline]
        initial, next_change = availability_mod.windows(entries, m)
    else:
        try:
            trace = availability_mod.read_trace(config.file)
        except availability_mod.TraceError as exc:
            raise ScenarioError(f"learners.availability.file: {exc}") from None
        intervals = availability_mod.trace_intervals(trace, m, wrap=config.wrap,
                                                     assign=config.assign, rng=rng)
        initial, next_change = availability_mod.from_intervals(intervals)
    return availability_mod.Availability(env, m, initial, next_change, simulation.set_online)


def check_network(scenario: Scenario) -> None:
    """Build the scenario's network alone (graph, placement, links, failures): what
    ``netfl validate`` checks so that a bad topology or failure entry never waits for a run."""
    seed = seeds(scenario.seed)
    m = scenario.learners.count
    graph, coordinator, nodes = build_graph(scenario, m, seed["network"])
    env = simpy.Environment()
    placement: dict[Any, Any] = {COORDINATOR: coordinator, **dict(enumerate(nodes))}
    net = scenario.network
    try:
        network = Network(env, graph, placement, rng=np.random.default_rng(0), model=net.model,
                          retransmit_timeout=net.retransmit_timeout, tcp_window=net.tcp_window,
                          sharing=net.sharing, give_up=net.give_up)
    except ValueError as exc:
        raise ScenarioError(f"network: {exc}") from None
    build_failures(scenario, env, network, np.random.default_rng(0), None)


def build_failures(scenario: Scenario, env: simpy.Environment, network: Network,
                   rng: np.random.Generator, on_event) -> Failures | None:
    """The scenario's link and node failures; a bad link or node names its entry."""
    entries = scenario.network.failures
    if not entries:
        return None
    failures = Failures(env, network, rng, on_event)
    for i, entry in enumerate(entries):
        try:
            if entry.link is not None:
                failures.scheduled(("link", tuple(entry.link)), entry.at, entry.for_)
            elif entry.node is not None:
                failures.scheduled(("node", entry.node), entry.at, entry.for_)
            else:
                chosen = elements(network.graph, entry.links, entry.nodes)
                failures.random(chosen, entry.mtbf, entry.mttr)
        except ValueError as exc:
            raise ScenarioError(f"network.failures[{i}]: {exc}") from None
    return failures
