"""Scenario -> Simulation: the one place that wires data, model, network and protocol together.

Components never import each other sideways; this module picks them from
their registries and hands each its own seed, split from the scenario's root
seed so that adding a component never shifts another's random stream.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import simpy
import torch

from netfl import compression
from netfl.compression import Codec
from netfl.data.datasets import Dataset, load_dataset
from netfl.data.drift import DriftSchedule, make_source
from netfl.data.partition import partition
from netfl.data.sources import BatchSource, DatasetSource
from netfl.data.streams import SampleStream
from netfl.learning.bank import LearnerBank
from netfl.learning.bank import resolve_device as bank_device
from netfl.learning.models import build_model, last_layer
from netfl.probes.parameters import ParameterProbe, Projection, replica_seed
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
from netfl.sim import topology
from netfl.sim.engine import Simulation
from netfl.sim.failures import Failures, elements
from netfl.sim.interface import COORDINATOR
from netfl.sim.network import Network

SEED_STREAMS = ("data", "init", "stream", "network", "protocol", "compute", "drift")


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
    coordinator, nodes = topology.place(
        graph, m, coordinator=net.coordinator, learners=net.placement
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


def pretrain(scenario: Scenario, model, source, device: torch.device, seed: int):
    """The model every learner starts from after centralized SGD on the whole training set.

    This is the public pretrained network of transfer learning (seed 002): it happens
    before the simulation, so it costs no simulated time and no bytes."""
    if not isinstance(source, DatasetSource):
        raise ScenarioError("model.pretrain_steps: needs a fixed dataset, not a drifting stream")
    data, opt = source.dataset, scenario.optimizer
    central = LearnerBank(model, 1, optimizer=opt.name, lr=opt.lr, momentum=opt.momentum,
                          weight_decay=opt.weight_decay, betas=opt.betas, eps=opt.eps,
                          reduction=opt.reduction, device=device, seed=seed,
                          loss=loss_for(source))
    everything = np.arange(len(data.y_train))
    stream = SampleStream([everything], scenario.data.batch_size, seed=seed, device=device)
    for step in range(scenario.model.pretrain_steps):
        index = stream.indices_all(step).to(data.x_train.device).long()
        central.step(central.all_idx, data.x_train[index], data.y_train[index])
    return central.mean()


def partition_labels(dataset: Dataset) -> np.ndarray:
    """What partitioning reads: class labels, or one dummy class for regression targets
    (the schema only allows the label-free schemes iid and shared for those)."""
    if dataset.task == "regression":
        return np.zeros(len(dataset.y_train), dtype=np.int64)
    return dataset.y_train.cpu().numpy()


def build_source(scenario: Scenario, seed: dict[str, int], device: torch.device):
    """The batch source: a fixed dataset through index streams, or a drifting stream."""
    data, m = scenario.data, scenario.learners.count
    evaluation = scenario.eval
    if data.dataset in DRIFTING:
        drift = data.drift
        schedule = DriftSchedule(
            drift.mode, rounds=[r - 1 for r in drift.rounds], p=drift.p, seed=seed["drift"],
            kind=drift.kind, width=drift.width, pool=drift.pool,
        )
        params = dict(data.params)
        if data.dataset == "digits_permuted":
            digits = load_dataset("digits", seed=seed["data"], test_fraction=data.test_fraction)
            params.setdefault("dataset", digits)
            params.setdefault("parts", partition(
                digits.y_train.numpy(), m, data.partition, seed=seed["data"], alpha=data.alpha,
                groups=data.groups))
            params.setdefault("eval_on", evaluation.on)
            params.setdefault("max_eval", evaluation.max_samples)
        return make_source(data.dataset, m=m, batch_size=data.batch_size, seed=seed["stream"],
                           device=device, schedule=schedule, **params)
    dataset = load_dataset(
        data.dataset, seed=seed["data"], test_fraction=data.test_fraction, root=data.root,
        **data.params,
    ).to(device)
    parts = partition(
        partition_labels(dataset), m, data.partition, seed=seed["data"], alpha=data.alpha,
        groups=data.groups,
    )
    stream = SampleStream(parts, data.batch_size, seed=seed["stream"], device=device)
    return DatasetSource(dataset, stream, eval_on=evaluation.on, max_eval=evaluation.max_samples,
                         shift=data.augment.shift, noise=data.augment.noise,
                         seed=seed["stream"])


ProbeSink = Callable[[str, list[str], list[dict[str, Any]]], None]


def build_probes(
    scenario: Scenario, seed: dict[str, int], simulation: Simulation, source: BatchSource,
    sink: ProbeSink | None,
) -> list[Callable[[Simulation, int], None]]:
    """The scenario's probes as observers of ``simulation``, writing rows through ``sink``.

    Probes read the bank and keep their own generators; the parameter probe gets a factory
    of replicas (this scenario without probes, with replica r's stream seed).
    """
    config = scenario.probes
    if config.representation is None and config.parameters is None:
        return []
    m = scenario.learners.count
    protocol_cls = PROTOCOLS[scenario.protocol.name]
    if not protocol_cls.needs(scenario.protocol, m).local_models:
        raise ScenarioError(f"probes: the {scenario.protocol.name} protocol trains one model at "
                            "the coordinator; probes need one model per learner")
    sink = sink if sink is not None else (lambda table, columns, rows: None)
    probes: list[Callable[[Simulation, int], None]] = []

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
        data = scenario.data
        parts = partition(
            source.dataset.y_train.cpu().numpy(), m, data.partition, seed=seed["data"],
            alpha=data.alpha, groups=data.groups,
        )
        if [len(p) for p in parts] != source.stream.sizes:  # build_source's own partition
            raise RuntimeError("probes.representation: partition differs from the run's")
        x, y = local_samples(parts, source.dataset.x_train, source.dataset.y_train,
                             rep.samples, seed=[scenario.seed, rep.seed])
        probes.append(RepresentationProbe(x, y, every=rep.every, estimator=rep.estimator,
                                          seed=rep.seed, sink=sink))

    par = config.parameters
    if par is not None:
        if m < 2:
            raise ScenarioError("probes.parameters: needs at least 2 learners (MI between pairs)")
        bare = scenario.model_copy(update={"probes": ProbesConfig()})

        def make_replica(r: int) -> Simulation:
            stream = replica_seed(seed["stream"], r)
            return build(bare, seed_overrides={"stream": stream}).simulation

        projection = Projection(simulation.bank.num_params, par.dims, par.projection,
                                seed=par.seed, device=simulation.bank.device)
        probes.append(ParameterProbe(
            replicas=par.replicas, every=par.every, estimators=par.estimators, k=par.k,
            projection=projection, seed=par.seed, make_replica=make_replica, sink=sink,
        ))
    return probes


@dataclass
class Built:
    simulation: Simulation
    source: BatchSource
    graph: nx.Graph
    device: torch.device
    probes: list[Callable[[Simulation, int], None]] = field(default_factory=list)


def build(
    scenario: Scenario,
    *,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_learners: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_probe: ProbeSink | None = None,
    on_message: Callable[[dict[str, Any]], None] | None = None,
    seed_overrides: dict[str, int] | None = None,
) -> Built:
    """Wire a Simulation; ``on_probe(table, columns, rows)`` receives the probes' rows and
    ``seed_overrides`` replaces per-component seeds (the parameter probe's replicas)."""
    seed = seeds(scenario.seed)
    seed.update(seed_overrides or {})
    device = resolve_device(scenario.device)
    m = scenario.learners.count
    protocol_cls = PROTOCOLS[scenario.protocol.name]
    needs = protocol_cls.needs(scenario.protocol, m)

    source = build_source(scenario, seed, device)

    spec = scenario.model
    model = build_model(
        spec.kind, source.input_shape, source.num_classes, hidden=spec.hidden,
        activation=spec.activation,
    )
    opt = scenario.optimizer
    bank = LearnerBank(
        model, needs.bank_size, optimizer=opt.name, lr=opt.lr, momentum=opt.momentum,
        weight_decay=opt.weight_decay, betas=opt.betas, eps=opt.eps, reduction=opt.reduction,
        device=device, seed=seed["init"], init_noise=scenario.learners.init_noise,
        trainable=last_layer(model) if spec.train == "last" else None, loss=loss_for(source),
    )
    if spec.pretrain_steps:
        bank.assign(bank.all_idx, pretrain(scenario, model, source, device, seed["init"]))

    times = step_times(scenario.learners.compute_time, m, np.random.default_rng(seed["compute"]))
    tick = scenario.learners.tick or float(times.min())
    durations = to_ticks(times, tick)
    if needs.one_machine:  # one machine does every learner's step in turn
        durations = np.array([int(durations.sum())])

    graph, coordinator, nodes = build_graph(scenario, m, seed["network"])
    env = simpy.Environment()
    placement: dict[Any, Any] = {COORDINATOR: coordinator, **dict(enumerate(nodes))}
    net = scenario.network
    loss_seed, failure_seed = np.random.SeedSequence(seed["network"]).spawn(2)
    network = Network(
        env, graph, placement, rng=np.random.default_rng(loss_seed), model=net.model,
        retransmit_timeout=net.retransmit_timeout, tcp_window=net.tcp_window,
        sharing=net.sharing, give_up=net.give_up, on_message=on_message,
    )
    failures = build_failures(scenario, env, network, np.random.default_rng(failure_seed),
                              on_event)

    def make_protocol(sim: Simulation):
        return protocol_cls(sim, scenario.protocol, seed=seed["protocol"])

    evaluation = scenario.eval
    uplink, downlink = build_codecs(scenario)
    if not needs.models_on_wire and (uplink or downlink):
        raise ScenarioError(f"compression: the {scenario.protocol.name} protocol sends "
                            "samples, not models")

    simulation = Simulation(
        env=env, network=network, bank=bank, source=source,
        protocol_factory=make_protocol, tick=tick, durations=durations,
        horizon_rounds=scenario.horizon.rounds, horizon_time=scenario.horizon.sim_time,
        eval_every=evaluation.every,
        eval_local=evaluation.local and needs.local_models, on_round=on_round,
        on_learners=on_learners,
        on_event=on_event, uplink=uplink, downlink=downlink,
        batches_per_step=needs.batches_per_step,
    )
    if failures is not None:
        failures.quiet = simulation.quiet
    probes = build_probes(scenario, seed, simulation, source, on_probe)
    simulation.observers.extend(probes)
    return Built(simulation, source, graph, device, probes)


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
