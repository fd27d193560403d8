"""Scenario files: YAML in, a typed and fully defaulted Scenario out.

Everything a run depends on lives in the Scenario, including the seed, so a
run directory's resolved scenario is enough to repeat the run. Protocol
sections come from the protocols' registry; errors name the key path the user
has to fix.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from netfl.compression import REGISTRY as CODECS
from netfl.protocols import PROTOCOLS
from netfl.schema import (
    BitsPerSecond,
    Bytes,
    Node,
    PositiveSeconds,
    Probability,
    Seconds,
    Section,
)


class ScenarioError(ValueError):
    """A scenario the user has to fix; the message names the key path."""


# --------------------------------------------------------------------- network


class TopologyFile(Section):
    file: str


class TopologyGenerator(Section):
    generator: Literal[
        "star", "ring", "line", "complete", "tree", "hierarchy",
        "random_regular", "erdos_renyi", "barabasi_albert",
    ] = "star"
    n: int | None = Field(default=None, ge=1, description="nodes; default: learners + 1")
    params: dict[str, Any] = Field(default_factory=dict)


# Ranges that keep every simulated time a finite count of the engine's int64 ticks (1 ns
# ticks for 31 years): slower links, longer delays or finer ticks are typos, not scenarios.
LinkRate = Annotated[BitsPerSecond, Field(ge=1, description="bit/s, at least 1")]
LinkDelay = Annotated[Seconds, Field(le=1e6, description="s, at most 1e6 (11.6 days)")]
StepSeconds = Annotated[PositiveSeconds, Field(ge=1e-9, le=1e6)]
MIN_TICK = 1e-9  # s


class LinkOverride(Section):
    """One link's settings; u -> v gets ``bandwidth``, v -> u ``reverse_bandwidth`` if given."""

    u: Node
    v: Node
    bandwidth: LinkRate | None = None
    reverse_bandwidth: LinkRate | None = None
    latency: LinkDelay | None = None
    loss: Probability | None = None


class TierSettings(Section):
    """Settings for every link of one tier (``access``: learner links, ``core``: the rest).

    Generated trees write each link parent -> child, so ``bandwidth`` is the downlink
    (towards the learners) and ``reverse_bandwidth`` the uplink."""

    bandwidth: LinkRate | None = None
    reverse_bandwidth: LinkRate | None = None
    latency: LinkDelay | None = None
    loss: Probability | None = None


class FailureConfig(Section):
    """Links or nodes that go down and come back.

    Scheduled: ``{link: [u, v], at: 30 s, for: 10 s}`` or ``{node: x, at, for}`` (no
    ``for``: down for good). Random: ``{links: all|access|core, mtbf, mttr}`` or
    ``{nodes: all, mtbf, mttr}``: every such element fails independently, up and down
    times exponential with those means, drawn from the network's seed."""

    link: tuple[Node, Node] | None = None
    node: Node | None = None
    links: Literal["all", "access", "core"] | None = None
    nodes: Literal["all"] | None = None
    at: Seconds | None = None
    for_: PositiveSeconds | None = Field(default=None, alias="for")
    mtbf: PositiveSeconds | None = None
    mttr: PositiveSeconds | None = None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)  # `for:` key

    @model_validator(mode="after")
    def _one_kind(self) -> FailureConfig:
        targets = [k for k in ("link", "node", "links", "nodes") if getattr(self, k) is not None]
        if len(targets) != 1:
            raise ValueError("give exactly one of link, node (scheduled) or links, nodes "
                             f"(random), got {targets or 'none'}")
        if targets[0] in ("link", "node"):
            if self.at is None:
                raise ValueError(f"a scheduled {targets[0]} failure needs at: (when it goes down)")
            if self.mtbf is not None or self.mttr is not None:
                raise ValueError("mtbf and mttr are for random failures (links: or nodes:)")
        else:
            if self.mtbf is None or self.mttr is None:
                raise ValueError(f"random {targets[0]} failures need mtbf and mttr")
            if self.at is not None or self.for_ is not None:
                raise ValueError("at and for are for scheduled failures (link: or node:)")
        return self


class NetworkConfig(Section):
    topology: TopologyGenerator | TopologyFile = Field(default_factory=TopologyGenerator)
    model: Literal["flow", "store_and_forward"] = Field(
        default="flow", description="flow: max-min fair sharing (SimGrid CM02); "
        "store_and_forward: whole messages per hop, FIFO per link")
    bandwidth: LinkRate = 100e6
    reverse_bandwidth: LinkRate | None = Field(
        default=None, description="v -> u of every link (default: bandwidth)")
    latency: LinkDelay = 0.01
    loss: Probability = 0.0
    tiers: dict[Literal["access", "core"], TierSettings] = Field(default_factory=dict)
    retransmit_timeout: PositiveSeconds = 0.2
    give_up: PositiveSeconds | None = Field(
        default=60.0, description="seconds after sending at which an undelivered message is "
        "dropped as lost; null: never")
    sharing: Literal["rtt", "fair"] = Field(
        default="rtt", description="flow model: rtt: shares proportional to 1 / route latency "
        "(SimGrid CM02, TCP); fair: equal shares (plain max-min)")
    tcp_window: Bytes | None = Field(
        default=None, description="flow model: rate <= window / RTT (RTT = 2 x route latency)")
    links: list[LinkOverride] = Field(default_factory=list)
    failures: list[FailureConfig] = Field(default_factory=list)
    coordinator: Node | None = None
    placement: list[Node] | None = None

    @field_validator("topology", mode="before")
    @classmethod
    def _file_shorthand(cls, value: object) -> object:
        return {"file": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _flow_only(self) -> NetworkConfig:
        if self.model == "store_and_forward":
            if self.tcp_window is not None:
                raise ValueError("tcp_window bounds a flow's rate: needs model: flow")
            if self.failures:
                raise ValueError("failures need model: flow (store_and_forward has no "
                                 "flows to abort)")
        return self


# -------------------------------------------------------------------- learners


class ComputeTime(Section):
    """Seconds per training step; a distribution draws one speed per learner (stragglers)."""

    dist: Literal["constant", "uniform", "lognormal", "exponential"] = "constant"
    mean: StepSeconds = 0.01
    low: Seconds | None = None
    high: Annotated[Seconds, Field(le=1e6)] | None = None
    sigma: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> ComputeTime:
        if self.dist == "uniform":
            if self.low is None or self.high is None:
                raise ValueError("uniform compute_time needs low and high")
            if not 0 < self.low <= self.high:
                raise ValueError(f"need 0 < low <= high, got low={self.low}, high={self.high}")
        return self


class OfflineWindow(Section):
    """Learners offline from ``at`` for ``for`` seconds (for good without ``for``)."""

    learners: list[Annotated[int, Field(ge=0)]] | Literal["all"]
    at: Seconds
    for_: PositiveSeconds | None = Field(default=None, alias="for")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)  # `for:` key


class AvailabilityConfig(Section):
    """When learners are online (netfl.sim.availability): always, a two-state Markov chain,
    fixed offline windows, or a trace file of online intervals."""

    kind: Literal["always", "markov", "schedule", "trace"] = "always"
    mean_online: PositiveSeconds | None = Field(
        default=None, description="markov: mean seconds online")
    mean_offline: PositiveSeconds | None = Field(
        default=None, description="markov: mean seconds offline")
    offline_fraction: float | None = Field(
        default=None, ge=0, lt=1, description="markov: share offline at any time "
        "(instead of mean_online)")
    offline: list[OfflineWindow] = Field(default_factory=list, description="schedule: windows")
    file: str | None = Field(default=None, description="trace: CSV learner,start_s,end_s"
                             "[,period_s] of online intervals")
    wrap: bool = Field(default=True, description="trace: repeat it with its period (FedScale)")
    assign: Literal["id", "random"] = Field(
        default="id", description="trace: learner i takes the i-th client, or a seeded draw")

    @model_validator(mode="after")
    def _kind_keys(self) -> AvailabilityConfig:
        if self.kind == "markov":
            if self.mean_offline is None:
                raise ValueError("markov availability needs mean_offline")
            if (self.mean_online is None) == (self.offline_fraction is None):
                raise ValueError("markov availability needs exactly one of mean_online or "
                                 "offline_fraction")
        elif self.mean_online is not None or self.mean_offline is not None or \
                self.offline_fraction is not None:
            raise ValueError(f"mean_online, mean_offline and offline_fraction are for "
                             f"kind: markov, not {self.kind}")
        if self.kind == "schedule" and not self.offline:
            raise ValueError("schedule availability needs offline: [{learners, at, for}, ...]")
        if self.kind != "schedule" and self.offline:
            raise ValueError(f"offline windows are for kind: schedule, not {self.kind}")
        if self.kind == "trace" and not self.file:
            raise ValueError("trace availability needs file: (a CSV of online intervals)")
        if self.kind != "trace" and self.file:
            raise ValueError(f"file is for kind: trace, not {self.kind}")
        return self

    def online_mean(self) -> float:
        """markov: mean seconds online (from offline_fraction when that is given)."""
        if self.mean_online is not None:
            return self.mean_online
        f = self.offline_fraction or 0.0
        return math.inf if f == 0 else self.mean_offline * (1 - f) / f


class DevicesConfig(Section):
    """Per-learner compute speed and access-link bandwidth from a trace (CSV: learner,
    steps_per_s, uplink_bps, downlink_bps; FedScale's capacities converted by
    tools/convert_fedscale_trace.py), assigned to learners by seed or by id."""

    file: str
    assign: Literal["random", "id"] = "random"


class LearnersConfig(Section):
    count: int = Field(default=4, ge=1)
    compute_time: ComputeTime = Field(default_factory=ComputeTime)
    init_noise: float = Field(default=0.0, ge=0, description="seed 004 Fig. 8 epsilon")
    tick: Annotated[PositiveSeconds, Field(ge=MIN_TICK)] | None = Field(
        default=None, description="compute clock resolution; default: the fastest step time"
    )
    availability: AvailabilityConfig = Field(default_factory=AvailabilityConfig)
    devices: DevicesConfig | None = Field(
        default=None, description="compute speed and link bandwidth per learner from a trace")

    @field_validator("devices", mode="before")
    @classmethod
    def _file_shorthand(cls, value: object) -> object:
        return {"file": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _learners_exist(self) -> LearnersConfig:
        for i, window in enumerate(self.availability.offline):
            if window.learners == "all":
                window.learners = list(range(self.count))
            bad = [x for x in window.learners if x >= self.count]
            if bad:
                raise ValueError(f"availability.offline[{i}].learners: learner {bad[0]} does "
                                 f"not exist (learners.count is {self.count})")
        return self

    @field_validator("compute_time", mode="before")
    @classmethod
    def _constant_shorthand(cls, value: object) -> object:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return {"dist": "constant", "mean": value}
        return value


# ------------------------------------------------------------------------ data


class DriftConfig(Section):
    """When the concept changes. Rounds are 1-based, as in metrics.csv: the first round
    that sees the new concept."""

    mode: Literal["none", "at", "random"] = "none"
    rounds: list[Annotated[int, Field(ge=2)]] = Field(default_factory=list)
    p: float = Field(default=0.0, ge=0, le=1, description="drift probability per round")
    kind: Literal["sudden", "gradual", "recurring"] = "sudden"
    width: int = Field(default=10, ge=1, description="rounds a gradual drift takes")
    pool: int = Field(default=2, ge=2, description="concepts a recurring drift cycles through")

    @model_validator(mode="after")
    def _consistent(self) -> DriftConfig:
        if self.mode == "at" and not self.rounds:
            raise ValueError("mode 'at' needs rounds: [..]")
        if self.mode == "random" and self.p <= 0:
            raise ValueError("mode 'random' needs p > 0")
        return self


DRIFTING = ("graphical", "digits_permuted", "teacher_student")
REGRESSION = ("signal",)  # datasets whose targets are real vectors (MSE loss)


class Augment(Section):
    """Training-batch augmentation for image data (seed 002's augmented digits)."""

    shift: int = Field(default=0, ge=0, description="random shift of up to this many pixels")
    noise: float = Field(default=0.0, ge=0, description="std of added Gaussian noise")


class DataConfig(Section):
    dataset: Literal[
        "digits", "gaussian_mixture", "mnist", "cifar10", "signal",
        "npz", "python", "leaf",
        "graphical", "digits_permuted", "teacher_student",
    ] = "digits"
    root: str | None = None
    path: str | None = Field(default=None, description="npz: the .npz file of arrays x, y "
                             "[, x_test, y_test, users]")
    factory: str | None = Field(default=None, description="python: 'package.module:function' "
                                "called with params, returning the data")
    params: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    partition: Literal[
        "iid", "classes", "dirichlet", "shared", "shard", "by_size", "natural",
    ] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    groups: int | None = Field(default=None, ge=1)
    shards: int = Field(default=2, ge=1, description="shard: label-sorted shards per learner")
    size_exponent: float = Field(default=1.0, ge=0, description="by_size: learner sizes "
                                 "proportional to rank ** -size_exponent")
    batch_size: int = Field(default=10, ge=1)
    augment: Augment = Field(default_factory=lambda: Augment())
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _root_for_files(self) -> DataConfig:
        if self.dataset in ("mnist", "cifar10", "leaf") and not self.root:
            raise ValueError(f"dataset {self.dataset} reads local files: set data.root")
        if (self.dataset == "npz") != (self.path is not None):
            raise ValueError("dataset npz reads one file: set data.path" if self.path is None
                             else f"path is for dataset npz, not {self.dataset}")
        if (self.dataset == "python") != (self.factory is not None):
            raise ValueError("dataset python calls a function: set data.factory to "
                             "'package.module:function'" if self.factory is None
                             else f"factory is for dataset python, not {self.dataset}")
        if self.partition == "natural" and self.dataset in DRIFTING:
            raise ValueError(f"partition natural splits by the data's own users; the "
                             f"drifting stream {self.dataset} has none")
        if (self.augment.shift or self.augment.noise) and self.dataset in DRIFTING:
            raise ValueError("augment applies to fixed image datasets, not drifting streams")
        if self.drift.mode != "none" and self.dataset not in DRIFTING:
            raise ValueError(f"drift needs a drifting dataset ({', '.join(DRIFTING)}), "
                             f"got {self.dataset}")
        if self.dataset in REGRESSION and self.partition in ("classes", "dirichlet", "shard"):
            raise ValueError(f"partition {self.partition!r} splits by class label; dataset "
                             f"{self.dataset} is a regression task (use iid, shared or "
                             "by_size)")
        if self.dataset in REGRESSION and (self.augment.shift or self.augment.noise):
            raise ValueError(f"augment applies to image datasets; noise on {self.dataset} "
                             f"would change the scale it is asked to predict")
        return self


class ModelConfig(Section):
    """A built-in model kind, or ``kind: python``: the module ``factory`` returns."""

    kind: Literal["linear", "mlp", "cnn", "rnn", "python"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64])
    activation: Literal["relu", "tanh"] | None = Field(
        default=None, description="default: tanh for rnn, relu otherwise"
    )
    factory: str | None = Field(
        default=None, description='kind python: "package.module:function", called as '
        "function(input_shape=(...), num_classes=N, **params); returns a torch.nn.Module"
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="kind python: the factory's keyword arguments"
    )
    train: Literal["all", "last"] = Field(
        default="all", description="last: only the final layer learns (transfer learning)"
    )
    pretrain_steps: int = Field(
        default=0, ge=0, description="centralized SGD steps on the whole training set first"
    )

    @field_validator("factory")
    @classmethod
    def _factory_form(cls, value: str | None, info: ValidationInfo) -> str | None:
        python = info.data.get("kind") == "python"
        if value is None and python:
            raise ValueError('kind \'python\' needs factory: "package.module:function"')
        if value is not None and not python:
            raise ValueError(f"only for kind 'python', got {value!r} with kind "
                             f"{info.data.get('kind')!r}")
        if value is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value):
            raise ValueError(f'expected "package.module:function", got {value!r}')
        return value

    @field_validator("params")
    @classmethod
    def _params_for_python(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if value and info.data.get("kind") != "python":
            raise ValueError("only for kind 'python' (the factory's keyword arguments)")
        clash = sorted({"input_shape", "num_classes"} & set(value))
        if clash:
            raise ValueError(f"{', '.join(clash)} comes from the data; remove it")
        return value

    @model_validator(mode="after")
    def _kind_defaults(self) -> ModelConfig:
        if self.kind == "python":
            # Empty or null (as the resolved scenario writes them) is no value: it reloads.
            given = [k for k in ("hidden", "activation")
                     if k in self.model_fields_set and getattr(self, k)]
            if given:
                raise ValueError(f"kind 'python' takes no {' or '.join(given)}; give the "
                                 "factory's arguments in model.params")
            self.hidden = []  # so the resolved scenario shows no built-in layers
        elif self.activation is None:  # filled in, so the resolved scenario says what ran
            self.activation = "tanh" if self.kind == "rnn" else "relu"
        return self


class OptimizerConfig(Section):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (
        0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    reduction: Literal["mean", "sum"] = "mean"


# ------------------------------------------------------------------- protocols

# Each protocol module defines its own section (Protocol.Config, named by its `name`
# literal); the schema takes them from the registry, so a new protocol edits nothing here.
ProtocolConfig = Annotated[
    Union[tuple(cls.Config for cls in PROTOCOLS.values())],  # noqa: UP007
    Field(discriminator="name"),
]
PeriodicConfig = PROTOCOLS["periodic"].Config


# ----------------------------------------------------------------- compression


class CodecConfig(BaseModel):
    """A codec by name with its own parameters (checked by netfl.compression when built)."""

    model_config = ConfigDict(extra="allow")
    name: Literal[tuple(CODECS)]  # type: ignore[valid-type]  # the codec registry's names

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CompressionConfig(Section):
    """Codecs for models sent up to and down from the coordinator; null sends full models."""

    uplink: CodecConfig | None = None
    downlink: CodecConfig | None = None

    @field_validator("uplink", "downlink", mode="before")
    @classmethod
    def _name_shorthand(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value


# ---------------------------------------------------------------------- probes

Estimator = Literal["edge", "ksg", "gaussian", "binned"]  # netfl.probes.mi.ESTIMATORS


def _every(value: object, allow_sync: bool) -> object:
    """A probe period: a positive number of rounds, or 'sync' where allowed."""
    if allow_sync and value == "sync":
        return value
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok:
        expected = "a positive integer (rounds) or 'sync'" if allow_sync else "a positive integer"
        raise ValueError(f"must be {expected}, got {value!r}")
    return value


class RepresentationProbeConfig(Section):
    """Seed 000: MI of the last hidden layer with inputs and labels, local and averaged model."""

    every: int | Literal["sync"] = Field(
        default="sync", description="rounds between probes, or 'sync': at each synchronization"
    )
    estimator: Estimator = "ksg"
    samples: int = Field(default=500, ge=2, description="fixed local samples per learner")
    seed: int = Field(default=0, ge=0, description="the probe's own seed (sample choice, MI)")

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: object) -> object:
        return _every(value, allow_sync=True)

    @model_validator(mode="after")
    def _enough_for_ksg(self) -> RepresentationProbeConfig:
        if self.estimator == "ksg" and self.samples < 20:
            raise ValueError(f"samples: ksg (k = 3 neighbours, within classes for I(Y;Z)) "
                             f"needs at least 20 samples per learner, got {self.samples}")
        return self


class ParameterProbeConfig(Section):
    """Seed 002: client parameters as random vectors over R replicas of the run."""

    replicas: int = Field(default=20, ge=2, description="R runs: same init, new sampling noise")
    every: int = Field(default=10, description="rounds between probes")
    estimators: list[Estimator] = Field(default_factory=lambda: ["gaussian", "ksg"], min_length=1)
    k: int = Field(default=3, ge=1, description="KSG neighbours")
    dims: int = Field(default=4, ge=1, description="coordinates the MI is estimated on")
    projection: Literal["random", "coordinates"] = "random"
    seed: int = Field(default=0, ge=0, description="the probe's own seed (projection, MI)")

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: object) -> object:
        return _every(value, allow_sync=False)

    @model_validator(mode="after")
    def _enough_replicas(self) -> ParameterProbeConfig:
        r = self.replicas
        if "ksg" in self.estimators and r <= self.k:
            raise ValueError(f"ksg with k={self.k} needs replicas > k, got replicas={r}")
        if "gaussian" in self.estimators and r <= 2 * self.dims:
            raise ValueError(f"gaussian MI of two {self.dims}-dim vectors needs "
                             f"replicas > 2*dims = {2 * self.dims}, got replicas={r}")
        return self


class ProbesConfig(Section):
    """Information-flow probes; each is off when absent or null."""

    representation: RepresentationProbeConfig | None = None
    parameters: ParameterProbeConfig | None = None


# -------------------------------------------------------------- run settings


class HorizonConfig(Section):
    rounds: int | None = Field(default=None, ge=1)
    sim_time: Annotated[PositiveSeconds, Field(le=1e9)] | None = Field(
        default=None, description="simulated seconds, at most 1e9 (31 years)")

    @model_validator(mode="after")
    def _one_limit(self) -> HorizonConfig:
        if self.rounds is None and self.sim_time is None:
            self.rounds = 100
        return self


class EvalConfig(Section):
    every: int = Field(default=10, ge=1, description="rounds between evaluations")
    divergence_every: int | None = Field(
        default=None, ge=1, description="rounds between divergence values in metrics.csv "
        "(and the last round; null: every eval.every rounds, with the evaluations); other "
        "rows leave the cell empty")
    on: Literal["test", "train"] = "test"
    max_samples: int | None = Field(default=None, ge=1)
    local: bool = True
    target_accuracy: float | None = Field(
        default=None, gt=0, le=1, description="time_to_accuracy_s: first evaluation reaching it")


class OutputConfig(Section):
    dir: str | None = None
    per_learner: bool = False
    messages: bool = Field(default=False, description="messages.csv: one row per message")
    checkpoint_every: int | None = Field(
        default=None, ge=1, description="save the run's state after every k-th round, at "
        "the first step with no message in flight (checkpoint.pkl); netfl run --resume "
        "RUN_DIR continues from the last one")


class Scenario(Section):
    name: str = Field(default="scenario", description="names the run directory")
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    learners: LearnersConfig = Field(default_factory=LearnersConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    protocol: ProtocolConfig = Field(default_factory=lambda: PeriodicConfig(name="periodic"))
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    horizon: HorizonConfig = Field(default_factory=HorizonConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or value in (".", "..") or any(c in value for c in "/\\\x00"):
            raise ValueError(f"must be a plain name (it names the run directory under runs/): "
                             f"no path separators, not '.' or '..', got {value!r}")
        return value

    @field_validator("protocol", mode="before")
    @classmethod
    def _default_protocol_name(cls, value: object) -> object:
        if isinstance(value, dict) and "name" not in value:
            return {"name": "periodic", **value}
        return value

    @field_validator("probes", mode="before")
    @classmethod
    def _no_probes(cls, value: object) -> object:
        return {} if value is None else value

    @model_validator(mode="after")
    def _representation_needs_labels(self) -> Scenario:
        if self.probes.representation is not None and self.data.dataset in REGRESSION:
            raise ValueError(f"probes.representation: records I(Y;Z) with class labels and "
                             f"accuracy; dataset {self.data.dataset} is a regression task")
        return self

    def resolved(self) -> dict[str, Any]:
        """Plain data with every default filled in, as written to a run directory."""
        return self.model_dump(mode="json")


# ----------------------------------------------------------------------- load


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in item["loc"]]
        if loc[:1] == ["protocol"] and len(loc) > 1 and item["type"] != "union_tag_invalid":
            loc = ["protocol", *loc[2:]]  # drop pydantic's discriminator tag from the path
        path = ".".join(loc).replace(".[", "[") or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        field, sep, rest = message.partition(": must be an integer")
        if sep and field.isidentifier():  # Section's bool check names its field: key path
            path, message = f"{path}.{field}", "must be an integer" + rest
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "union_tag_invalid":
            message = f"unknown protocol {item['input'].get('name')!r}; expected one of " + \
                item["ctx"]["expected_tags"]
        elif "got" not in message and not isinstance(item.get("input"), (dict, list)):
            message += f", got {item['input']!r}"
        lines.append(f"{path}: {message}")
    head = f"{source}: invalid scenario" if len(lines) > 1 else f"{source}:"
    return head + ("\n  " if len(lines) > 1 else " ") + "\n  ".join(lines)


def set_key(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply one `--set key.path=value` override to raw scenario data."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ScenarioError(f"--set {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=3' -> ('a.b', 3); the value is read as YAML so numbers and lists work."""
    if "=" not in text:
        raise ScenarioError(f"--set {text}: expected key.path=value")
    key, raw = text.split("=", 1)
    if not all(part.strip() for part in key.split(".")):
        raise ScenarioError(f"--set {text}: expected key.path=value, with a key such as "
                            "learners.count before '=' (no empty part)")
    try:
        return key.strip(), yaml.load(raw, Loader=LimitedLoader)  # noqa: S506  (safe, bounded)
    except yaml.YAMLError:
        return key.strip(), raw


def from_dict(data: Any, source: str = "scenario", overrides: list[str] = ()) -> Scenario:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of sections")
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        set_key(data, key, value)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_errors(exc, source)) from None


def read_text(path: Path, what: str = "scenario file") -> str:
    """A file's text, or a ScenarioError naming it (missing, unreadable, not UTF-8)."""
    if not path.is_file():
        raise ScenarioError(f"{path}: no such {what}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") \
            from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None


MAX_YAML_NODES = 1_000_000  # after expanding aliases; a 100,000-learner placement is 100,001


class AliasBombError(yaml.YAMLError):
    """Aliases that expand past MAX_YAML_NODES nodes (a "billion laughs"), or into themselves."""


class LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand past ``max_nodes``
    nodes: PyYAML shares an aliased node, but every later walk (validation, copies, dumps)
    expands it, so nine nested aliases of nine cost 9^9 there. The expanded size is counted
    on the composed node graph, memoized per node, before anything is constructed."""

    max_nodes = MAX_YAML_NODES

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, {}, set(), self.max_nodes)
        return super().construct_document(node)


# YAML 1.2 booleans: only true/false. YAML 1.1 (PyYAML's default) also reads on/off/yes/no
# as booleans, which turns `eval: {on: test}` into the key True.
LimitedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
LimitedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int], limit: int) -> int:
    """Nodes under ``node`` with every alias expanded (stops counting past ``limit``)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise AliasBombError("an alias refers to the node that contains it (infinite expansion)")
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [c for pair in node.value for c in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, open_, limit)
        if size > limit:
            raise AliasBombError(f"its aliases expand to more than {limit:,} nodes "
                                 "(an alias bomb?)")
    open_.discard(key)
    sizes[key] = size
    return size


def parse_yaml(text: str, source: str) -> Any:
    """YAML text to plain data with alias expansion bounded; errors name ``source``."""
    try:
        return yaml.load(text, Loader=LimitedLoader)  # noqa: S506  (a SafeLoader subclass)
    except AliasBombError as exc:
        raise ScenarioError(f"{source}: refused: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: refused: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScenarioError(f"{source}: not valid YAML{where}") from None


def read_yaml(path: str | Path, what: str = "scenario file") -> Any:
    """A YAML file's data (scenario, sweep, topology): one clear error naming the file when
    it is missing, unreadable, not UTF-8, not YAML, or an alias bomb."""
    path = Path(path)
    return parse_yaml(read_text(path, what), str(path))


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read and validate a scenario file; relative topology and data paths (``data.path``,
    ``data.root``) resolve as given or beside it."""
    path = Path(path)
    data = read_yaml(path)
    scenario = from_dict(data, str(path), overrides)
    if isinstance(data, dict) and "name" not in data:
        scenario.name = path.stem
    topo = scenario.network.topology
    if isinstance(topo, TopologyFile) and not Path(topo.file).exists():
        beside = path.parent / topo.file
        if beside.exists():
            topo.file = str(beside)
    for key in ("path", "root"):  # data files resolve the same way
        value = getattr(scenario.data, key)
        if value is not None and not Path(value).expanduser().exists() \
                and (path.parent / value).exists():
            setattr(scenario.data, key, str(path.parent / value))
    return scenario
