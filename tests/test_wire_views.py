"""Uploads as rows of one shared set: bytes-like payloads without a copy each (none at all
when the bank lends its own rows), decoded and averaged in place, with the values (bit for
bit) of separate bytes payloads; lent rows keep what was sent when the bank writes."""

from __future__ import annotations

import copy
import pickle
import struct

import numpy as np
import pytest
import torch

from netfl.build import build
from netfl.checkpoint import _is_state
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


def _inside(t: torch.Tensor | np.ndarray, owner: torch.Tensor | np.ndarray) -> bool:
    """Whether ``t``'s values lie in ``owner``'s memory (read in place, not copied)."""
    def span(a):
        if isinstance(a, torch.Tensor):
            return a.data_ptr(), a.nbytes
        return a.ctypes.data, a.nbytes
    (at, _), (lo, size) = span(t), span(owner)
    return lo <= at < lo + size


def _bank(m: int = 9) -> LearnerBank:
    return LearnerBank(build_model("mlp", (6,), 3, hidden=[5]), m, seed=0, init_noise=0.5)


def test_row_payloads_are_the_bytes_of_separate_payloads_and_bytes_like():
    flat = _rows(5, 7)
    payloads, old = wire.encode_vectors(flat), _old_encode(flat)
    assert all(isinstance(p, wire.RowPayload) for p in payloads)
    assert len({id(p) for p in payloads}) == 5  # one object per row
    shared = payloads[0]._set
    assert not shared.lent and not _inside(shared.values, flat)  # without lend: a copy
    for p, q in zip(payloads, old, strict=True):
        assert p._set is shared and len(p) == len(q) == wire.message_size(q) - wire.HEADER_BYTES
        assert wire.message_size(p) == wire.message_size(q)
        assert bytes(p) == q and p == q and q == p and hash(p) == hash(q)
        assert struct.unpack_from("<I", wire.as_bytes(p)) == (7,)
        assert p[:-4] == q[:-4] and type(p[:-4]) is bytes and p[0] == q[0]  # slices: bytes
        assert p + b"xy" == q + b"xy" and b"xy" + p == b"xy" + q  # so are sums
        assert type(p + payloads[1]) is bytes and p + payloads[1] == q + old[1]
    assert payloads[0] != payloads[1] and payloads[0] != "text"
    assert b"".join(map(wire.as_bytes, payloads)) == b"".join(old)
    assert wire.as_bytes(old[0]) is old[0]
    # pickled (a checkpoint) and copied: the same bytes, as plain bytes
    back = pickle.loads(pickle.dumps(payloads))
    assert all(type(b) is bytes and b == q for b, q in zip(back, old, strict=True))
    assert copy.deepcopy(payloads[2]) == old[2] and copy.copy(payloads[2]) == old[2]
    assert "row 3 of 5 (own), 32 bytes" in repr(payloads[3])
    # one row, and one vector, are plain bytes
    assert type(wire.encode_vectors(flat[:1])[0]) is bytes
    assert type(wire.encode_vector(flat[0])) is bytes and wire.encode_vector(flat[0]) == old[0]
    # rows that are not float32 in CPU memory are converted: the conversion is the set's own
    doubles = wire.encode_vectors(flat.double(), lend=lambda rows: pytest.fail("lent"))
    assert doubles == old and not doubles[0]._set.lent


def test_consecutive_rows_decode_in_place_others_by_one_copy():
    flat = _rows(6, 9)
    payloads = wire.encode_vectors(flat)
    whole = wire.decode_vectors(payloads)
    assert torch.equal(whole, flat)
    owner = payloads[0]._set.values
    assert _inside(whole, owner)  # read in place
    part = wire.decode_vectors(payloads[2:5])
    assert torch.equal(part, flat[2:5]) and _inside(part, owner)
    for picked in ([4, 1, 3], [0, 0, 2]):  # another order: one gather
        got = wire.decode_vectors([payloads[i] for i in picked])
        assert torch.equal(got, flat[picked]) and got.is_contiguous()
        assert not _inside(got, owner)
    mixed = [payloads[0], _old_encode(flat)[1], payloads[2]]  # not all rows of one set
    assert torch.equal(wire.decode_vectors(mixed), flat[:3])
    assert torch.equal(wire.decode_vectors(_old_encode(flat)[:2] + payloads[2:4]), flat[:4])
    other = wire.encode_vectors(flat)  # rows of two sets
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
    bank = _bank()
    channel = Channel(bank)
    learners = np.arange(9)
    payloads = channel.encode_up(learners, bank.rows())
    want = channel.decode_up(payloads).mean(dim=0)
    assert torch.equal(want, bank.buffer.mean(dim=0))
    subset = [payloads[i] for i in (7, 2, 4)]
    assert torch.equal(channel.decode_up(subset).mean(dim=0), bank.buffer[[7, 2, 4]].mean(dim=0))


def test_lent_uploads_read_the_bank_in_place_and_keep_their_bytes_when_it_writes():
    bank = _bank()
    channel = Channel(bank)
    sent = _old_encode(bank.flat())
    payloads = channel.encode_up(np.arange(9), bank.rows(), bank.lend)
    shared = payloads[0]._set
    assert shared.lent and _inside(shared.values, bank.buffer)  # no copy of the models
    assert payloads == sent
    # a mean at once reads the bank's own rows; any other reader gets a copy
    assert _inside(channel.decode_up(payloads, in_place=True), bank.buffer)
    kept = channel.decode_up(payloads)
    assert not _inside(kept, bank.buffer) and torch.equal(kept, bank.flat())
    x = torch.randn(9, 4, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(3, (9, 4), generator=torch.Generator().manual_seed(2))
    bank.step(None, x, y)  # the bank writes: the uploads still alive are copied out first
    assert bank.loans_detached == 1 and not shared.lent
    assert not _inside(shared.values, bank.buffer)
    assert payloads == sent and not torch.equal(bank.flat(), wire.decode_vectors(payloads))
    assert torch.equal(wire.decode_vectors(payloads), kept)
    # uploads dropped before the next write cost no copy at all
    channel.encode_up(np.arange(9), bank.rows(), bank.lend)
    bank.assign(None, bank.mean())
    assert bank.loans_detached == 1
    # an assign detaches too
    payloads = channel.encode_up(np.arange(9), bank.rows(), bank.lend)
    before = bank.flat()
    bank.assign([0, 4], bank.unflatten(torch.zeros(bank.num_params)))
    assert bank.loans_detached == 2 and torch.equal(wire.decode_vectors(payloads), before)


def test_gathered_rows_are_not_lent_and_a_write_past_the_bank_is_an_error():
    bank = _bank()
    gathered = wire.encode_vectors(bank.rows([3, 1, 5]), bank.lend)
    assert not gathered[0]._set.lent and gathered == _old_encode(bank.flat([3, 1, 5]))
    payloads = wire.encode_vectors(bank.rows(), bank.lend)
    with torch.no_grad():
        bank.params[bank.names[0]].add_(1.0)  # in place, not through the bank: no detach
    with pytest.raises(RuntimeError, match="overwritten in place"):
        bytes(payloads[0])
    with pytest.raises(RuntimeError, match="overwritten in place"):
        wire.decode_vectors(payloads)
    # the bank's loans are transient: a checkpoint leaves them to the fresh build
    assert not _is_state(bank._loans)


HIERARCHY = {"topology": {"generator": "hierarchy", "params": {"switches": 3}}}


@pytest.mark.parametrize("wait", [True, False])
@pytest.mark.parametrize("protocol, network", [
    ({"name": "periodic", "b": 5}, {}),
    ({"name": "hierarchical", "b": 5, "b_global": 2}, HIERARCHY),
], ids=["periodic", "hierarchical"])
def test_runs_with_lent_uploads_equal_runs_with_copies(tiny, wait, protocol, network):
    """A round's uploads read the bank in place: when learners wait for the average, the
    uploads are dropped before the next write (no copy); when they train on, the bank copies
    the uploads still in flight out first (so does it in a hierarchy, where one group's
    average can arrive while another group's uploads, rows of the same set, travel on).
    Either way, the run is the one with copies."""
    scenario = tiny(protocol={**protocol, "wait": wait},
                    learners={"count": 6}, horizon={"rounds": 30},
                    network={"latency": "50 ms", **network})  # in flight over 10 ms steps
    runs = []
    for lend in (True, False):
        sim = build(scenario).simulation
        if not lend:
            sim.bank.lend = None  # the uploads copy the rows, as an encoder without a lender
        sim.run()
        runs.append(sim)
    lent, copied = runs
    assert torch.equal(lent.bank.flat(), copied.bank.flat())
    assert lent.counters == copied.counters
    if protocol["name"] == "periodic":
        assert (lent.bank.loans_detached == 0) == wait
    else:
        assert lent.bank.loans_detached > 0
    assert copied.bank.loans_detached == 0


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
