"""Host-side packing (accel/layout.py) against values worked out independently from the spec text."""

from __future__ import annotations

import numpy as np
import pytest

from spec.config import EngineConfig
from spec.tile import Tile, TileGeometry, random_tile
from verification.layout import (
    LoadWrites,
    banked_address,
    chunk_channels,
    decode_counter,
    decode_output,
    load_writes,
    pack_lanes,
    pack_payload,
    pack_payloads,
    pack_request,
    unpack_payload,
)

SMALL = dict(input_depth=256, weight_depth=256, output_depth=64, threshold_depth=16)


def _hand_tile(c_in: int, c_out: int, h: int, w: int, k: int, **geo) -> Tile:
    """Deterministic operands with negative values, distinct per position."""
    ci, yy, xx = np.meshgrid(np.arange(c_in), np.arange(h), np.arange(w), indexing="ij")
    inputs = ((ci * 37 + yy * 11 + xx * 5) % 256 - 128).astype(np.int8)
    co, ci2, ky, kx = np.meshgrid(
        np.arange(c_out), np.arange(c_in), np.arange(k), np.arange(k), indexing="ij"
    )
    weights = ((co * 53 + ci2 * 29 + ky * 7 + kx * 3) % 256 - 128).astype(np.int8)
    thresholds = np.array([(-1) ** i * (1000 + i) for i in range(c_out)], dtype=np.int64)
    geometry = TileGeometry(
        **{"c_in": c_in, "c_out": c_out, "h_in": h, "w_in": w, "h_out": h, "w_out": w, **geo}
    )
    return Tile(geometry, inputs, weights, thresholds)


def _segments_by_hand(c_in: int, groups: int, base_channels: int) -> list[list[int]]:
    """The input channels of each segment, straight from spec section 1."""
    if groups > 1:
        cg = c_in // groups
        return [list(range(s * cg, (s + 1) * cg)) for s in range(groups)]
    return [list(range(base_channels)), list(range(base_channels, c_in))]


def _expected_words(config: EngineConfig, tile: Tile) -> tuple[dict[int, int], dict[int, int]]:
    """Input and weight words by address, with scalar loops over the spec's address formulas."""
    g, L, K = tile.geometry, config.lanes, config.kernel
    segs = _segments_by_hand(g.c_in, config.groups, g.base_channels)
    nch = [-(-len(s) // L) for s in segs]
    chunks = []  # global chunk q -> list of L channels (None = zero lane)
    for s, chans in enumerate(segs):
        for c in range(nch[s]):
            chunks.append([chans[c * L + lane] if c * L + lane < len(chans) else None for lane in range(L)])
    # Weights channel-minor: segment s starts at s·w_seg, a base segment's words rounded up to a multiple of
    # the banks (the smallest power of two >= P); chunk c of it at ((c·K + ky)·K + kx)·c_out + co.
    banks = 1
    while banks < config.pes:
        banks *= 2
    w_seg = -(-nch[0] * K * K * g.c_out // banks) * banks
    where = [(s, c) for s in range(len(segs)) for c in range(nch[s])]  # global chunk q -> (segment, chunk)
    am, wm = (1 << config.act_width) - 1, (1 << config.weight_width) - 1
    inputs, weights = {}, {}
    for q, lanes in enumerate(chunks):
        for y in range(g.h_in):
            for x in range(g.w_in):
                word = 0
                for lane, ch in enumerate(lanes):
                    if ch is not None:
                        word |= (int(tile.inputs[ch, y, x]) & am) << (lane * config.act_width)
                # the plane deinterleaved by the stride: rows and columns rounded up to S, row y at
                # (y mod S)·Hp/S + y div S, column likewise
                s = config.stride
                hp, wp = -(-g.h_in // s) * s, -(-g.w_in // s) * s
                inputs[q * hp * wp + ((y % s) * hp // s + y // s) * wp + (x % s) * wp // s + x // s] = word
        for co in range(g.c_out):
            for ky in range(K):
                for kx in range(K):
                    word = 0
                    for lane, ch in enumerate(lanes):
                        if ch is not None:
                            word |= (int(tile.weights[co, ch, ky, kx]) & wm) << (lane * config.weight_width)
                    s, c = where[q]
                    weights[s * w_seg + ((c * K + ky) * K + kx) * g.c_out + co] = word
    return inputs, weights


def _by_sel(writes: LoadWrites) -> dict[int, dict[int, int]]:
    out: dict[int, dict[int, int]] = {0: {}, 1: {}, 2: {}, 3: {}}
    for sel, addr, data in writes:
        assert addr not in out[sel], f"address {addr} of sel {sel} written twice"
        out[sel][addr] = data
    return out


CASES = [
    # (config, c_in, c_out, h, w, geometry extras)
    (
        EngineConfig(pes=2, lanes=4, kernel=2, stride=1, padding=1, groups=2, **SMALL),
        6,
        2,
        2,
        3,
        {},
    ),  # C_g=3 < L
    (
        EngineConfig(pes=1, lanes=4, kernel=3, stride=1, padding=1, groups=1, **SMALL),
        5,
        2,
        2,
        2,
        {"base_channels": 2, "pad_top": 1, "pad_left": 1},
    ),
    (  # stride 2 with odd rows and columns: a 6 x 4 plane per chunk, deinterleaved
        EngineConfig(pes=4, lanes=4, kernel=3, stride=2, padding=1, groups=2, **SMALL),
        8,
        2,
        5,
        3,
        {"h_out": 3, "w_out": 2, "pad_top": 1, "pad_left": 1},
    ),
    (
        EngineConfig(pes=3, lanes=2, kernel=1, stride=1, padding=0, groups=4, **SMALL),
        12,
        4,
        1,
        2,
        {"dense": True},
    ),
    (
        EngineConfig(pes=1, lanes=16, kernel=1, stride=1, padding=0, groups=1, **SMALL),
        20,
        3,
        1,
        2,
        {"base_channels": 18},
    ),
    (
        EngineConfig(
            pes=1,
            lanes=3,
            act_width=6,
            weight_width=5,
            acc_width=20,
            kernel=1,
            stride=1,
            padding=0,
            groups=2,
            **SMALL,
        ),
        6,
        2,
        2,
        1,
        {},
    ),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_load_writes_word_by_word(case: int) -> None:
    config, c_in, c_out, h, w, extra = CASES[case]
    tile = _hand_tile(c_in, c_out, h, w, config.kernel, **extra)
    if config.act_width < 8:  # keep the operands inside the narrower signed ranges
        tile = Tile(
            tile.geometry,
            (tile.inputs.astype(np.int64) >> (8 - config.act_width)).astype(np.int8),
            (tile.weights.astype(np.int64) >> (8 - config.weight_width)).astype(np.int8),
            tile.thresholds,
        )
    writes = load_writes(config, tile)
    got = _by_sel(writes)
    exp_in, exp_w = _expected_words(config, tile)

    g = tile.geometry
    # The register values are worked by hand in tests/test_protocol_constants.py; here: all of them, at
    # their addresses, and a few spelled out.
    assert got[0] == dict(enumerate(g.registers(config)))
    assert (got[0][0], got[0][1], got[0][4], got[0][5]) == (int(g.dense), config.kernel, g.c_out, g.h_in)
    assert sorted(got[1]) == sorted(exp_in)  # (a deinterleaved plane's rounding words are not written)
    for addr, word in exp_in.items():
        assert got[1][addr] == word, f"input word {addr}: {got[1][addr]:#x} != {word:#x}"
    assert sorted(got[2]) == sorted(exp_w)
    for addr, word in exp_w.items():
        assert got[2][addr] == word, f"weight word {addr}: {got[2][addr]:#x} != {word:#x}"
    mask = (1 << config.acc_width) - 1
    assert got[3] == {banked_address(config, co): int(t) & mask for co, t in enumerate(tile.thresholds)}
    # load order: registers, inputs, weights, thresholds; every data word fits the data width
    assert list(writes.sel) == sorted(writes.sel)
    assert all(0 <= d < (1 << config.data_width) for _, _, d in writes)
    assert writes.tolist() == list(writes)


def test_literal_words_group2() -> None:
    """A few words of the first case spelled out by hand."""
    config = EngineConfig(pes=2, lanes=4, kernel=2, stride=1, padding=1, groups=2, **SMALL)
    tile = _hand_tile(6, 2, 2, 3, 2)
    got = _by_sel(load_writes(config, tile))
    # x[c, y, x] = (37c + 11y + 5x) % 256 - 128; segment 0 = channels 0..2, segment 1 = 3..5, lane 3 zero.
    # input word 0 (q=0, y=0, x=0): x[0..2,0,0] = -128, -91, -54 -> 0x80, 0xa5, 0xca
    assert got[1][0] == 0x00CAA580
    # input word 6 + 4 (q=1, y=1, x=1): x[3..5,1,1] = 111-128+16=-1, 148-128+16=36, 185-128+16=73
    #   -> 0xff, 0x24, 0x49
    assert got[1][10] == 0x004924FF
    # weight W[co, ci, ky, kx] = (53co + 29ci + 7ky + 3kx) % 256 - 128; channel-minor, one chunk per
    # segment, K² = 4, c_out = 2: a segment is 8 words (a multiple of the 2 banks), word
    # (segment 1, chunk 0, ky=1, kx=0, co=1) = 8 + (1·2 + 0)·2 + 1 = 13: ci = 3, 4, 5 -> 19, 48, 77
    assert got[2][13] == 0x004D3013
    # thresholds 1000, -1001 in 32 bits
    assert got[3] == {0: 1000, 1: (1 << 32) - 1001}


def test_literal_words_base_fraction() -> None:
    """G = 1, C_b = 2 of 5 channels, L = 4: chunk 0 = channels 0,1 (+2 zero lanes), chunk 1 = 2,3,4."""
    config = EngineConfig(pes=1, lanes=4, kernel=3, stride=1, padding=1, groups=1, **SMALL)
    tile = _hand_tile(5, 2, 2, 2, 3, base_channels=2, pad_top=1, pad_left=1)
    got = _by_sel(load_writes(config, tile))
    assert len(got[1]) == 2 * 2 * 2
    # input word 4 (q=1, y=0, x=0): x[2..4,0,0] = 74-128, 111-128, 148-128 = -54, -17, 20
    assert got[1][4] == 0x0014EFCA
    # input word 3 (q=0, y=1, x=1): x[0..1,1,1] = 16-128, 53-128 = -112, -75
    assert got[1][3] == 0x0000B590
    assert len(got[2]) == 2 * 2 * 9


def test_wide_words_exceed_64_bits() -> None:
    config = EngineConfig(pes=1, lanes=16, kernel=1, stride=1, padding=0, groups=2, **SMALL)
    assert config.data_width == 128
    inputs = np.arange(-16, 16, dtype=np.int8).reshape(32, 1, 1)
    weights = np.full((2, 32, 1, 1), -1, dtype=np.int8)
    tile = Tile(TileGeometry(32, 2, 1, 1, 1, 1), inputs, weights, np.array([-1, 7]))
    writes = load_writes(config, tile)
    assert writes.data.dtype == object
    got = _by_sel(writes)
    # input word 1 = segment 1 = channels 16..31 = values 0..15
    assert got[1][1] == sum(v << (8 * v) for v in range(16))
    assert got[1][0] == sum(((v - 16) & 0xFF) << (8 * v) for v in range(16))
    assert got[2][0] == (1 << 128) - 1
    assert got[3] == {0: (1 << 32) - 1, 1: 7}
    payloads = pack_payloads(config, writes)
    assert payloads == [pack_payload(config, *w) for w in writes]
    assert all(unpack_payload(config, p) == w for p, w in zip(payloads, writes, strict=True))


def test_pack_lanes_matches_scalar() -> None:
    rng = np.random.default_rng(1)
    for n_lanes, width in [(1, 8), (8, 8), (9, 7), (16, 8), (5, 16), (13, 5)]:
        lanes = rng.integers(-(1 << (width - 1)), 1 << (width - 1), size=(7, n_lanes))
        words = pack_lanes(lanes, width)
        for row, word in zip(lanes, words, strict=True):
            assert int(word) == sum((int(v) & ((1 << width) - 1)) << (i * width) for i, v in enumerate(row))


def test_chunk_channels() -> None:
    config = EngineConfig(lanes=4, groups=1)
    seg = TileGeometry(c_in=11, c_out=1, h_in=3, w_in=3, h_out=3, w_out=3, base_channels=5).segments(config)
    assert chunk_channels(seg, 4).tolist() == [[0, 1, 2, 3], [4, -1, -1, -1], [5, 6, 7, 8], [9, 10, -1, -1]]


def test_pack_payload_fields() -> None:
    config = EngineConfig(**SMALL)  # depths <= 256 -> 8 address bits and the half bit; data 64 bits
    assert config.addr_width == 9 and config.half_bit == 8 and config.data_width == 64
    assert pack_payload(config, 2, 5, 0xAB) == 2 | (5 << 3) | (0xAB << 12)
    assert pack_payload(config, 7, 511, (1 << 64) - 1) == (1 << 76) - 1
    assert unpack_payload(config, pack_payload(config, 3, 17, 123456789)) == (3, 17, 123456789)
    for bad in [(8, 0, 0), (0, 512, 0), (0, 0, 1 << 64), (0, -1, 0)]:
        with pytest.raises(ValueError):
            pack_payload(config, *bad)
    assert pack_request(config, 1, 6) == 1 | (6 << 2)
    assert pack_request(config, 0, 511) == 511 << 2
    assert pack_request(config, 2, 3) == 2 | (3 << 2)
    with pytest.raises(ValueError):
        pack_request(config, 4, 0)
    tiny = EngineConfig(input_depth=4, weight_depth=4, output_depth=4, threshold_depth=4)
    assert tiny.addr_width == 6  # at least 5 address bits (the 29 configuration registers), and the half
    assert pack_payload(tiny, 1, 15, 1) == 1 | (15 << 3) | (1 << 9)


def test_banked_address() -> None:
    """Entry n of the output buffer / work queue: row n div P, bank n mod P, as row << bank_bits | bank."""
    config = EngineConfig(pes=3, output_depth=20)  # 7 rows of 3 banks; bank index in 2 bits
    assert (config.bank_bits, config.bank_rows) == (2, 7)
    assert [banked_address(config, n) for n in (0, 1, 2, 3, 4, 19)] == [0, 1, 2, 4, 5, 6 << 2 | 1]
    assert banked_address(EngineConfig(pes=8), 4095) == 4095  # P a power of two: the index itself
    assert banked_address(EngineConfig(pes=1), 17) == 17
    small = dict(input_depth=20, weight_depth=20, threshold_depth=20)
    # 7 rows << 2: 28 addresses (5 bits), 10 rows << 2: 40 addresses (6 bits); and the half bit on top
    assert EngineConfig(pes=3, output_depth=20, **small).addr_width == 6
    assert EngineConfig(pes=3, output_depth=30, **small).addr_width == 7


def test_decode_output_and_counter() -> None:
    config = EngineConfig(acc_width=32, counter_width=48)
    assert decode_output(config, 5) == (5, 0)
    assert decode_output(config, (1 << 32) | 0xFFFFFFFF) == (-1, 1)
    assert decode_output(config, (1 << 32) | 0x80000000) == (-(1 << 31), 1)
    assert decode_output(config, 0x7FFFFFFF) == ((1 << 31) - 1, 0)
    assert decode_counter(config, (1 << 48) + 12) == 12


def test_random_tiles_vectorized_equals_scalar() -> None:
    rng = np.random.default_rng(7)
    config = EngineConfig(pes=4, lanes=3, kernel=3, stride=1, padding=1, groups=2, **SMALL)
    for _ in range(5):
        geo = TileGeometry.full_layer(config, c_in=int(rng.choice([2, 4, 8])), c_out=2, h_in=3, w_in=4)
        tile = random_tile(config, geo, rng)
        got = _by_sel(load_writes(config, tile))
        exp_in, exp_w = _expected_words(config, tile)
        assert got[1] == exp_in
        assert got[2] == exp_w
