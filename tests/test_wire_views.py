"""Uploads as rows of one shared buffer: bytes-like payloads without a copy each, decoded and
averaged in place, with the values (bit for bit) of separate bytes payloads."""

from __future__ import annotations

import copy
import pickle
import struct

import numpy as np
import pytest
import torch

from netfl.compression import get
from netfl.learning.bank import LearnerBank
from netfl.learning.models import build_model
from netfl.sim import wire
from netfl.sim.channel import Channel, unframe


def _rows(k: int, p: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(k, p, generator=torch.Generator().manual_seed(seed)) * 10


def _old_encode(flat: torch.Tensor) -> list[bytes]:
    """The encoding as separate bytes objects (what payloads were, and are after a resume)."""
    rows = flat.numpy().astype("<f4")
    return [struct.pack("<I", rows.shape[1]) + row.tobytes() for row in rows]


def _inside(t: torch.Tensor, owner: np.ndarray) -> bool:
    """Whether ``t``'s values lie in ``owner``'s memory (read in place, not copied)."""
    return owner.ctypes.data <= t.data_ptr() < owner.ctypes.data + owner.nbytes


def test_row_payloads_are_the_bytes_of_separate_payloads_and_bytes_like():
    flat = _rows(5, 7)
    payloads, old = wire.encode_vectors(flat), _old_encode(flat)
    assert all(isinstance(p, wire.RowPayload) for p in payloads)
    assert len({id(p) for p in payloads}) == 5  # one object per row
    base = payloads[0]._owner
    for p, q in zip(payloads, old, strict=True):
        assert p._owner is base and len(p) == len(q) == wire.message_size(q) - wire.HEADER_BYTES
        assert bytes(p) == q and p == q and q == p and hash(p) == hash(q)
        assert struct.unpack_from("<I", p) == (7,)
        assert np.array_equal(np.frombuffer(p, dtype=np.uint8), np.frombuffer(q, dtype=np.uint8))
        assert p[:-4] == q[:-4] and type(p[:-4]) is bytes  # slices are bytes
        assert p + b"xy" == q + b"xy" and b"xy" + p == b"xy" + q  # so are sums
        assert type(p + payloads[1]) is bytes and p + payloads[1] == q + old[1]
    assert payloads[0] != payloads[1]
    assert b"".join(payloads) == b"".join(old)
    # pickled (a checkpoint) and copied: the same bytes, as plain bytes
    back = pickle.loads(pickle.dumps(payloads))
    assert all(type(b) is bytes and b == q for b, q in zip(back, old, strict=True))
    assert copy.deepcopy(payloads[2]) == old[2]
    # one row, and one vector, are plain bytes
    assert type(wire.encode_vectors(flat[:1])[0]) is bytes
    assert type(wire.encode_vector(flat[0])) is bytes and wire.encode_vector(flat[0]) == old[0]


def test_consecutive_rows_decode_in_place_others_by_one_copy():
    flat = _rows(6, 9)
    payloads = wire.encode_vectors(flat)
    whole = wire.decode_vectors(payloads)
    assert torch.equal(whole, flat)
    owner = payloads[0]._owner
    assert _inside(whole, owner)  # read in place
    part = wire.decode_vectors(payloads[2:5])
    assert torch.equal(part, flat[2:5]) and _inside(part, owner)
    for picked in ([4, 1, 3], [0, 0, 2]):  # another order: one gather
        got = wire.decode_vectors([payloads[i] for i in picked])
        assert torch.equal(got, flat[picked]) and got.is_contiguous()
        assert not _inside(got, owner)
    mixed = [payloads[0], _old_encode(flat)[1], payloads[2]]  # not all rows of one buffer
    assert torch.equal(wire.decode_vectors(mixed), flat[:3])
    other = wire.encode_vectors(flat)  # rows of two buffers
    assert torch.equal(wire.decode_vectors([payloads[0], other[1]]), flat[:2])
    one = wire.decode_vectors(payloads[3:4])  # one row: a copy, pinning no buffer
    assert torch.equal(one, flat[3:4]) and not _inside(one, owner)
    assert torch.equal(wire.decode_vector(payloads[5]), flat[5])
    with pytest.raises(ValueError, match="different lengths"):
        wire.decode_vectors([payloads[0], wire.encode_vectors(_rows(2, 3))[0]])


@pytest.mark.parametrize("p", [1, 2, 3, 17, 8970])
@pytest.mark.parametrize("k", [1, 2, 3, 64, 1001])
def test_mean_of_rows_in_place_is_the_mean_of_a_copy(k, p):
    flat = _rows(k, p, seed=k * p)
    want = torch.from_numpy(np.stack([np.frombuffer(q, "<f4", p, 4)
                                      for q in _old_encode(flat)])).mean(dim=0)
    payloads = wire.encode_vectors(flat)
    assert torch.equal(wire.decode_vectors(payloads).mean(dim=0), want)
    assert torch.equal(wire.decode_vectors(_old_encode(flat)).mean(dim=0), want)


def test_channel_average_of_uploads_read_in_place_is_the_models_mean():
    bank = LearnerBank(build_model("mlp", (6,), 3, hidden=[5]), 9, seed=0, init_noise=0.5)
    channel = Channel(bank)
    learners = np.arange(9)
    payloads = channel.encode_up(learners, bank.rows())
    want = channel.decode_up(payloads).mean(dim=0)
    assert torch.equal(want, bank.buffer.mean(dim=0))
    subset = [payloads[i] for i in (7, 2, 4)]
    assert torch.equal(channel.decode_up(subset).mean(dim=0), bank.buffer[[7, 2, 4]].mean(dim=0))


def test_channel_with_an_uplink_codec_decodes_and_averages_as_before():
    bank = LearnerBank(build_model("mlp", (6,), 3, hidden=[5]), 5, seed=0, init_noise=0.5)
    channel = Channel(bank, uplink=get("fp16"))
    payloads = channel.encode_up(np.arange(5), bank.rows())
    rows = []
    for payload in payloads:  # the reconstruction, row by row
        version, blobs = unframe(payload)
        update = torch.cat([t.reshape(-1) for t in channel.uplink.decode_update(blobs)])
        rows.append(channel.bases[version] + update)
    want = torch.stack(rows)
    assert torch.equal(channel.decode_up(payloads), want)
    assert torch.equal(channel.decode_up(payloads).mean(dim=0), want.mean(dim=0))
