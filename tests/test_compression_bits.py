"""Byte-level building blocks: varints, bit packing, positions, minifloat tables."""

from __future__ import annotations

import numpy as np
import pytest

from netfl.compression import CodecError
from netfl.compression import positions as P
from netfl.compression.bits import (
    Reader,
    bucketize,
    pack_codes,
    packed_len,
    unpack_codes,
    varint,
    varint_len,
)
from netfl.compression.floats import minifloat_table, round_minifloat


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21 - 1, 2**21, 2**40 + 5])
def test_varint_round_trip_and_length(value):
    data = varint(value)
    assert len(data) == varint_len(value)
    reader = Reader(data)
    assert reader.varint() == value
    reader.finish()


def test_reader_overrun_and_trailing_bytes_are_codec_errors():
    with pytest.raises(CodecError, match="undecodable"):
        Reader(b"\x01").take(2)
    with pytest.raises(CodecError, match="undecodable"):
        Reader(b"\x80\x80").varint()
    reader = Reader(b"\x01\x02")
    reader.u8()
    with pytest.raises(CodecError, match="trailing"):
        reader.finish()


@pytest.mark.parametrize("bits", list(range(1, 17)))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_pack_unpack_codes(bits, count):
    codes = np.random.default_rng(bits * 1000 + count).integers(0, 2**bits, size=count)
    data = pack_codes(codes, bits)
    assert len(data) == packed_len(count, bits) == (count * bits + 7) // 8
    np.testing.assert_array_equal(unpack_codes(data, count, bits), codes)


def test_pack_layout_is_lsb_first_for_every_width():
    # code i occupies bits [i*R, (i+1)*R): the fast and the general paths agree
    assert pack_codes(np.array([1, 0, 3, 2]), 2) == bytes([0b10110001])
    assert pack_codes(np.array([5, 1]), 3) == bytes([0b00001101])


def test_bucketize_matches_searchsorted():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(5000).astype(np.float32)
    for size in (1, 3, 15, 255, 300):
        thresholds = np.sort(rng.standard_normal(size)).astype(np.float32)
        values[:size] = thresholds  # values equal to a threshold count it as not below
        np.testing.assert_array_equal(
            bucketize(values, thresholds), np.searchsorted(thresholds, values)
        )


@pytest.mark.parametrize(
    "n,k,clustered",
    [(10, 1, False), (10, 9, False), (1000, 3, False), (1000, 500, False),
     (100_000, 50, False), (100_000, 1000, True), (65_537, 20_000, False)],
)
def test_positions_round_trip_within_bound(n, k, clustered):
    rng = np.random.default_rng(n + k)
    if clustered:
        pos = np.arange(n - k, n)
    else:
        pos = np.sort(rng.choice(n, size=k, replace=False))
    block = P.encode(pos, n)
    assert len(block) <= P.bound(n, k)
    reader = Reader(block)
    np.testing.assert_array_equal(P.decode(reader, n, k), pos)
    reader.finish()


def test_positions_bound_holds_for_random_and_adversarial_gaps():
    rng = np.random.default_rng(9)
    for _ in range(300):
        n = int(rng.integers(2, 5000))
        k = int(rng.integers(1, n))
        pos = np.sort(rng.choice(n, size=k, replace=False))
        assert len(P.encode(pos, n)) <= P.bound(n, k)
    for b in range(0, 8):  # every gap a multiple of 2**b: no remainder slack at all
        n = 100_000
        pos = np.arange(0, n, 2**b + 1)[: max(1, n // 2 ** (b + 2))]
        assert len(P.encode(pos, n)) <= P.bound(n, pos.size)


def test_positions_pick_the_shorter_coding():
    n = 100_000
    sparse = np.arange(0, n, 1000)  # 100 positions: gaps cost ~11 bits, bitmap 12.5 kB
    assert P.encode(sparse, n)[0] == P.RICE
    assert len(P.encode(sparse, n)) < 200
    dense = np.arange(0, n, 2)
    assert P.encode(dense, n)[0] == P.BITMAP
    assert len(P.encode(dense, n)) == 1 + n // 8
    assert P.encode(np.arange(n), n) == b"" and P.encode(np.arange(0), n) == b""


def test_positions_reject_garbage():
    with pytest.raises(CodecError):
        P.decode(Reader(b"\x07"), 100, 5)
    with pytest.raises(CodecError):
        P.decode(Reader(b""), 3, 5)


def test_topk_picks_largest_magnitudes_ties_first_and_never_zeros():
    x = np.array([0.0, -3.0, 1.0, 3.0, -1.0, 0.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(P.topk(x, 2), [1, 3])
    np.testing.assert_array_equal(P.topk(x, 4), [1, 2, 3, 6])  # tie at |1|: lowest index
    np.testing.assert_array_equal(P.topk(x, 7), [1, 2, 3, 4, 6])  # only the 5 nonzeros
    assert P.topk(np.zeros(5, dtype=np.float32), 3).size == 0


def test_minifloat_tables_match_the_co3_layouts():
    fp8 = minifloat_table(5, 2)
    assert fp8.size == 247 and fp8.max() == 57344.0 and fp8.min() == -57344.0
    assert fp8[124] == 2.0**-16  # smallest subnormal: 1/4 * 2**(1 - 15)
    assert np.count_nonzero(fp8 == 0) == 1 and np.all(np.diff(fp8) > 0)
    fp4 = minifloat_table(2, 1)
    np.testing.assert_array_equal(
        fp4, [-3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3]
    )


@pytest.mark.parametrize("layout", [(5, 2), (2, 1)])
def test_minifloat_rounding_is_nearest(layout):
    table = minifloat_table(*layout)
    rng = np.random.default_rng(1)
    t = np.concatenate([
        table, (table[1:] + table[:-1]) / 2 * (1 + 1e-9), [0.0, -0.0, 1e9, -1e9],
        rng.uniform(-1.2, 1.2, 20_000) * table[-1],
        np.exp(rng.uniform(-30, 12, 20_000)) * rng.choice([-1, 1], 20_000),
    ])
    got = table[round_minifloat(t, *layout)]
    best = np.abs(table[np.searchsorted((table[1:] + table[:-1]) / 2, t)] - t)
    np.testing.assert_array_equal(np.abs(got - t), best)
