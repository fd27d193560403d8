"""Scenario files: YAML in, a typed and fully defaulted Scenario out.

Everything a run depends on lives in the Scenario, including the seed, so a
run directory's resolved scenario is enough to repeat the run. Protocol
sections come from the protocols' registry; errors name the key path the user
has to fix.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
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


class LinkOverride(Section):
    """One link's settings; u -> v gets ``bandwidth``, v -> u ``reverse_bandwidth`` if given."""

    u: Node
    v: Node
    bandwidth: BitsPerSecond | None = None
    reverse_bandwidth: BitsPerSecond | None = None
    latency: Seconds | None = None
    loss: Probability | None = None


class TierSettings(Section):
    """Settings for every link of one tier (``access``: learner links, ``core``: the rest).

    Generated trees write each link parent -> child, so ``bandwidth`` is the downlink
    (towards the learners) and ``reverse_bandwidth`` the uplink."""

    bandwidth: BitsPerSecond | None = None
    reverse_bandwidth: BitsPerSecond | None = None
    latency: Seconds | None = None
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

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True,
                              serialize_by_alias=True)

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
    bandwidth: BitsPerSecond = 100e6
    reverse_bandwidth: BitsPerSecond | None = Field(
        default=None, description="v -> u of every link (default: bandwidth)")
    latency: Seconds = 0.01
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
    mean: PositiveSeconds = 0.01
    low: Seconds | None = None
    high: Seconds | None = None
    sigma: float = Field(default=0.5, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> ComputeTime:
        if self.dist == "uniform":
            if self.low is None or self.high is None:
                raise ValueError("uniform compute_time needs low and high")
            if not 0 < self.low <= self.high:
                raise ValueError(f"need 0 < low <= high, got low={self.low}, high={self.high}")
        return self


class LearnersConfig(Section):
    count: int = Field(default=4, ge=1)
    compute_time: ComputeTime = Field(default_factory=ComputeTime)
    init_noise: float = Field(default=0.0, ge=0, description="seed 004 Fig. 8 epsilon")
    tick: PositiveSeconds | None = Field(
        default=None, description="compute clock resolution; default: the fastest step time"
    )

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
        "graphical", "digits_permuted", "teacher_student",
    ] = "digits"
    root: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    partition: Literal["iid", "classes", "dirichlet", "shared"] = "iid"
    alpha: float = Field(default=0.5, gt=0)
    groups: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=10, ge=1)
    augment: Augment = Field(default_factory=lambda: Augment())
    drift: DriftConfig = Field(default_factory=DriftConfig)

    @model_validator(mode="after")
    def _root_for_files(self) -> DataConfig:
        if self.dataset in ("mnist", "cifar10") and not self.root:
            raise ValueError(f"dataset {self.dataset} reads local files: set data.root")
        if (self.augment.shift or self.augment.noise) and self.dataset in DRIFTING:
            raise ValueError("augment applies to fixed image datasets, not drifting streams")
        if self.drift.mode != "none" and self.dataset not in DRIFTING:
            raise ValueError(f"drift needs a drifting dataset ({', '.join(DRIFTING)}), "
                             f"got {self.dataset}")
        if self.dataset in REGRESSION and self.partition in ("classes", "dirichlet"):
            raise ValueError(f"partition {self.partition!r} splits by class label; dataset "
                             f"{self.dataset} is a regression task (use iid or shared)")
        if self.dataset in REGRESSION and (self.augment.shift or self.augment.noise):
            raise ValueError(f"augment applies to image datasets; noise on {self.dataset} "
                             f"would change the scale it is asked to predict")
        return self


class ModelConfig(Section):
    kind: Literal["linear", "mlp", "cnn", "rnn"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64, 64])
    activation: Literal["relu", "tanh"] | None = Field(
        default=None, description="default: tanh for rnn, relu otherwise"
    )

    @model_validator(mode="after")
    def _kind_default_activation(self) -> ModelConfig:
        if self.activation is None:  # filled in, so the resolved scenario says what ran
            self.activation = "tanh" if self.kind == "rnn" else "relu"
        return self
    train: Literal["all", "last"] = Field(
        default="all", description="last: only the final layer learns (transfer learning)"
    )
    pretrain_steps: int = Field(
        default=0, ge=0, description="centralized SGD steps on the whole training set first"
    )


class OptimizerConfig(Section):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=0.1, gt=0)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
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
    estimator: Estimator = "edge"
    samples: int = Field(default=500, ge=2, description="fixed local samples per learner")
    seed: int = Field(default=0, ge=0, description="the probe's own seed (sample choice, MI)")

    @field_validator("every", mode="before")
    @classmethod
    def _every(cls, value: object) -> object:
        return _every(value, allow_sync=True)


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
    sim_time: PositiveSeconds | None = None

    @model_validator(mode="after")
    def _one_limit(self) -> HorizonConfig:
        if self.rounds is None and self.sim_time is None:
            self.rounds = 100
        return self


class EvalConfig(Section):
    every: int = Field(default=10, ge=1, description="rounds between evaluations")
    on: Literal["test", "train"] = "test"
    max_samples: int | None = Field(default=None, ge=1)
    local: bool = True
    target_accuracy: float | None = Field(
        default=None, gt=0, le=1, description="time_to_accuracy_s: first evaluation reaching it")


class OutputConfig(Section):
    dir: str | None = None
    per_learner: bool = False
    messages: bool = Field(default=False, description="messages.csv: one row per message")


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
    try:
        return key.strip(), yaml.safe_load(raw)
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


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read and validate a scenario file; relative topology paths resolve as given or beside it."""
    path = Path(path)
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScenarioError(f"{path}: not valid YAML{where}") from None
    scenario = from_dict(data, str(path), overrides)
    if isinstance(data, dict) and "name" not in data:
        scenario.name = path.stem
    topo = scenario.network.topology
    if isinstance(topo, TopologyFile) and not Path(topo.file).exists():
        beside = path.parent / topo.file
        if beside.exists():
            topo.file = str(beside)
    return scenario
