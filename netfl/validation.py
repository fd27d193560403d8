"""One validation pass: everything `netfl run` would refuse, refused before a run starts.

``check`` builds the scenario's simulation exactly as a run does (netfl.build.build) and
throws it away. That is the only way to be sure that validate and run agree: every
build-time check (topology files and their attributes, placement, links, failures, data
files and dataset parameters, the model for the data's shape, codec parameters, the
protocol's own constructor, probes, the device) lives in one place, and a check added
there is a check added here. What makes the build safe to run as a check is
netfl.learning.memory: a synthetic dataset's size and the bank's memory (parameters,
gradients, optimizer state, activations, dataset, sample stream) are estimated from shapes
and refused before anything large is allocated, so the build allocates at most what the
run itself will, once it is known to fit. Nothing is trained and no simulated time passes.

Every user error comes out as a ScenarioError whose message names the key path as the
user wrote it (``network.placement``, ``learners.count``) or the file involved.
"""

from __future__ import annotations

from netfl.scenario import Scenario, ScenarioError

# Components name their own arguments; these are the scenario keys behind them.
_ARGUMENT_KEYS = {"m": "learners.count", "learners": "learners.count"}


def _user_errors() -> dict[type[Exception], str]:
    """Exception types a component raises for input the user can fix, with the scenario
    section to name where the message does not name a key of its own."""
    from netfl.compression.errors import CodecError
    from netfl.data.datasets import DataError
    from netfl.learning.models import ModelError
    from netfl.sim.topology import TopologyError

    return {DataError: "data", ModelError: "model", TopologyError: "network.topology",
            CodecError: "compression"}


def keyed(message: str, section: str) -> str:
    """``message`` led by the scenario key it is about: kept where it already names a key
    path or a file, an argument name mapped to its key (``m`` -> ``learners.count``,
    ``hidden`` -> ``model.hidden``), else prefixed with the section."""
    head, sep, rest = message.partition(": ")
    if not sep:
        return f"{section}: {message}"
    if head in _ARGUMENT_KEYS:
        return f"{_ARGUMENT_KEYS[head]}: {rest}"
    if "/" in head or "." in head or head.startswith(("network", "learners", "data", "model")):
        return message  # a key path or a file already leads
    fields = _section_fields(section)
    if head in fields:
        return f"{section}.{message}"
    return f"{section}: {message}"


def _section_fields(section: str) -> set[str]:
    from netfl import scenario

    config = {"data": scenario.DataConfig, "model": scenario.ModelConfig}.get(section)
    return set(config.model_fields) if config is not None else set()


def check(scenario: Scenario) -> None:
    """Raise ScenarioError for anything that would stop ``netfl run`` at build time."""
    from netfl.build import build

    errors = _user_errors()
    try:
        build(scenario)
    except ScenarioError:
        raise
    except tuple(errors) as exc:
        section = next(s for t, s in errors.items() if isinstance(exc, t))
        raise ScenarioError(keyed(str(exc), section)) from None
