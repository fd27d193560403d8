"""One registry per extension point, and the schema accepts exactly the registry's names."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from netfl import compression, scenario
from netfl.build import build
from netfl.data.datasets import DATASETS
from netfl.data.drift import SOURCES
from netfl.learning.models import KINDS
from netfl.protocols import PROTOCOLS
from netfl.sim.topology import GENERATORS

from .conftest import BASE, merge


def literal(model, field: str) -> set[str]:
    annotation = model.model_fields[field].annotation
    return set(typing.get_args(annotation))


def test_protocol_names_in_the_schema_are_the_registry_and_each_config_names_itself():
    configs = typing.get_args(typing.get_args(scenario.ProtocolConfig)[0])
    names = {next(iter(literal(config, "name"))) for config in configs}
    assert names == set(PROTOCOLS)
    for name, cls in PROTOCOLS.items():
        assert literal(cls.Config, "name") == {name} and cls.name == name


def test_other_schema_names_are_their_registries():
    assert literal(scenario.CodecConfig, "name") == set(compression.REGISTRY)
    assert literal(scenario.DataConfig, "dataset") == set(DATASETS) | set(SOURCES)
    assert literal(scenario.TopologyGenerator, "generator") == set(GENERATORS)
    assert literal(scenario.ModelConfig, "kind") == set(KINDS) | {"python"}  # a factory


def randk_draws(**changes) -> np.ndarray:
    """The first coordinates a randk uplink keeps for learner 0, through a built run."""
    s = scenario.from_dict(merge(BASE, {"compression": {"uplink": {"name": "randk", "k": 8}},
                                        **changes}))
    channel = build(s).simulation.protocol.channel
    state = channel.states[0]
    return np.asarray(state.rng.permutation(1000)[:8])


@pytest.mark.parametrize("protocol", [{"name": "periodic"}, {"name": "dynamic"}])
def test_codec_draws_follow_the_seed_and_not_protocol_parameters(protocol):
    base = randk_draws(protocol={**protocol, "b": 5}, seed=0)
    assert not np.array_equal(base, randk_draws(protocol={**protocol, "b": 5}, seed=1))
    assert np.array_equal(base, randk_draws(protocol={**protocol, "b": 6}, seed=0))
