"""Codecs inside the protocols: updates up, models down, real bytes charged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.compression import get
from netfl.scenario import ScenarioError
from netfl.sim import wire
from netfl.sim.channel import Channel, frame, unframe


def run(tiny, **changes):
    sim = build(tiny(**changes)).simulation
    sim.run()
    return sim


def test_frame_round_trip():
    blobs = [b"abc", b"", b"\x00" * 7]
    assert unframe(frame(3, blobs)) == (3, blobs)


def test_lossless_uplink_matches_full_models(tiny):
    plain = run(tiny, protocol={"name": "periodic", "b": 5})
    coded = run(tiny, protocol={"name": "periodic", "b": 5},
                compression={"uplink": {"name": "none"}})
    torch.testing.assert_close(coded.bank.flat(), plain.bank.flat(), atol=1e-5, rtol=0)
    assert coded.network.bytes_down == plain.network.bytes_down
    layers = len(coded.bank.names)
    # each update: frame (8) + a length per layer (4) + each layer's float32 codec blob
    assert coded.network.bytes_up > plain.network.bytes_up
    assert coded.network.bytes_up < plain.network.bytes_up + 8 * (8 + 8 * layers) * 4


def test_topk_uplink_charges_its_encoding(tiny):
    sim = run(tiny, protocol={"name": "periodic", "b": 5}, horizon={"rounds": 5},
              compression={"uplink": {"name": "topk", "k": 0.1}})
    full = wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params
    per_upload = sim.network.bytes_up / 4
    assert per_upload < 0.3 * full
    # what was charged decodes: re-encode learner 0's final update length is in range
    assert sim.network.messages_by_kind["model"] == 4


def test_budget_is_respected_per_message(tiny):
    budget = 4000
    sim = run(tiny, protocol={"name": "fedavg", "b": 5, "fraction": 0.5},
              compression={"uplink": {"name": "m22", "budget_bits": budget, "M": 2}})
    layers = len(sim.bank.names)
    uploads = sim.network.messages_by_kind["model"]
    overhead = wire.HEADER_BYTES + 8 + 4 * layers
    assert sim.network.bytes_up <= uploads * (overhead + budget // 8)
    assert sim.bank.divergence() == pytest.approx(0.0, abs=1e-10)


def test_lossy_downlink_keeps_both_ends_in_step(tiny):
    sim = run(tiny, protocol={"name": "periodic", "b": 5},
              compression={"uplink": {"name": "uniform", "R": 4},
                           "downlink": {"name": "uniform", "R": 6}})
    channel = sim.protocol.channel
    # every learner holds exactly the coordinator's reconstruction of the last base
    torch.testing.assert_close(sim.bank.flat(), channel.bases[channel.version].expand(4, -1))
    full = wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params
    assert sim.network.bytes_down < 0.3 * sim.network.messages_by_kind["broadcast"] * full


def test_dynamic_with_codecs_codes_against_the_reference(tiny):
    sim = run(tiny, learners={"count": 6}, horizon={"rounds": 30},
              protocol={"name": "dynamic", "delta": 0.02},
              compression={"uplink": {"name": "qsgd", "s": 15}})
    assert sim.counters["violations"] > 0
    full = wire.HEADER_BYTES + 4 + 4 * sim.bank.num_params
    assert sim.network.bytes_by_kind["violation"] < sim.network.messages_by_kind["violation"] * full


def test_error_feedback_state_is_per_learner(tiny):
    sim = build(tiny(compression={"uplink": {"name": "topk", "k": 0.05,
                                             "error_feedback": True}})).simulation
    channel: Channel = sim.protocol.channel
    models = sim.bank.flat() + 1.0
    channel.encode_up(np.array([0, 1]), models[:2])
    assert channel.states[0].residuals and channel.states[1].residuals
    assert not channel.states[2].residuals


def test_unknown_codec_is_a_schema_error_naming_the_key(tiny):
    with pytest.raises(ScenarioError, match="compression.uplink.name: Input should be 'none'"):
        tiny(compression={"uplink": {"name": "zip9"}})


@pytest.mark.parametrize("compression, needle", [
    ({"uplink": {"name": "m22", "Q": 3}}, "compression.uplink: m22: unknown parameter 'Q'"),
])
def test_codec_errors_name_the_key(tiny, compression, needle):
    with pytest.raises(ScenarioError, match=needle):
        build(tiny(compression=compression))


def test_channel_decodes_what_it_encodes():
    from netfl.learning.bank import LearnerBank
    from netfl.learning.models import build_model

    bank = LearnerBank(build_model("mlp", (8,), 3, hidden=[4]), 2, seed=0)
    channel = Channel(bank, uplink=get("none"))
    models = bank.flat() + torch.arange(bank.num_params, dtype=torch.float32)
    payloads = channel.encode_up(np.array([0, 1]), models)
    torch.testing.assert_close(channel.decode_up(payloads), models)
