"""Tests of the Numba cycle model (sim/engine.py) against docs/microarchitecture.md.

Every expected value here is computed without the model: the outputs and gates by a plain-numpy
convolution (np.pad + einsum, and a literal loop over the spec's formula for tiny tiles), the counters by the
closed-form expressions of spec section 5 or written out by hand.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import EngineResult, run_tile
from sim.reference import tile_reference as reference
from spec.config import ConfigError, EngineConfig
from spec.protocol import COUNTER_NAMES
from spec.tile import Tile, TileGeometry, random_tile
from tests.test_reference import naive
from verification.spec_schedule import spec_counters, spec_round_cycles, spec_write_cycles

BIG = 1 << 16  # buffer depths that never limit the small test tiles


def make_config(**kw: int) -> EngineConfig:
    """A layer configuration: a 3x3, stride-1, padding-1, G = 2 layer unless ``kw`` says otherwise."""
    depths = {"input_depth": BIG, "weight_depth": BIG, "output_depth": BIG, "threshold_depth": 1024}
    layer = {"kernel": 3, "stride": 1, "padding": 1, "groups": 2}
    return EngineConfig(**{**depths, **layer, **kw})


# ------------------------------------------------------------------------------------------------------
# Independent references
# ------------------------------------------------------------------------------------------------------


def naive_reference(config: EngineConfig, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """The formula of spec section 1, literally, one activation and one MAC at a time (tiny tiles only)."""
    g = tile.geometry
    return naive(
        tile.inputs,
        tile.weights,
        tile.thresholds,
        config.stride,
        g.pad_top,
        g.pad_left,
        g.h_out,
        g.w_out,
        config.groups,
        g.base_channels,
        g.dense,
    )


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def expected_counters(
    config: EngineConfig, geo: TileGeometry, gates_on: int, bank_stalls: int = 0
) -> dict[str, int]:
    """Closed forms of spec section 5 (computed from the raw parameters, not spec.tile.Segments): dense
    runs and gated runs without phase 2 (phase 2's cycles depend on the window's rounds). ``bank_stalls``:
    phase 1's input-bank stall cycles, zero when no round wraps an output row at stride 1."""
    p, lanes, k2 = config.pes, config.lanes, config.kernel**2
    if config.groups > 1:
        n_seg, c_sb = config.groups, geo.c_in // config.groups
        c_sc = c_sb
    else:
        n_seg, c_sb, c_sc = 2, geo.base_channels, geo.c_in - geo.base_channels
    nch_b, nch_c = ceil_div(c_sb, lanes), ceil_div(c_sc, lanes)
    n = geo.c_out * geo.h_out * geo.w_out
    r1 = ceil_div(n, p)
    if geo.dense:
        b1 = k2 * (nch_b + (n_seg - 1) * nch_c)
        cycles = p + r1 * b1 + bank_stalls + 2  # SETUP: P cycles
        base_macs, cond_macs, busy, stalls, gates_on = n * k2 * geo.c_in, 0, n * b1, p + 2 + bank_stalls, n
    else:
        b1 = k2 * nch_b
        b2 = k2 * (n_seg - 1) * nch_c
        phase2 = gates_on > 0
        cycles = p + r1 * b1 + bank_stalls + 2
        base_macs = n * k2 * c_sb
        cond_macs = gates_on * k2 * (n_seg - 1) * c_sc
        busy = n * b1 + gates_on * b2
        stalls = p + (5 if phase2 else 2) + bank_stalls
    return {
        "cycles": cycles,
        "base_macs": base_macs,
        "cond_macs": cond_macs,
        "busy_pe_cycles": busy,
        "idle_pe_cycles": p * cycles - busy,
        "stall_cycles": stalls,
        "gates_on": gates_on,
    }


def bank_stalls(config: EngineConfig, tile: Tile) -> int:
    """Phase 1's input-bank stall cycles by the spec's rule (verification/spec_schedule.py)."""
    geo = tile.geometry
    seg = geo.segments(config)
    b1 = config.kernel**2 * (seg.n_chunks if geo.dense else seg.nch_b)
    rounds = range(ceil_div(geo.n_outputs, config.pes))
    return sum(spec_round_cycles(config, tile, r) for r in rounds) - len(rounds) * b1


def check_against_reference(config: EngineConfig, tile: Tile) -> EngineResult:
    """Run the model and compare everything it returns with the references; return its result."""
    res = run_tile(config, tile)
    y_ref, g_ref, _ = reference(config, tile)
    geo = tile.geometry
    shape = (geo.c_out, geo.h_out, geo.w_out)
    assert res.outputs.shape == shape and res.outputs.dtype == np.int64
    assert res.gates.shape == shape and res.gates.dtype == np.bool_
    np.testing.assert_array_equal(res.gates, g_ref)
    np.testing.assert_array_equal(res.outputs, y_ref)

    assert tuple(res.counters) == COUNTER_NAMES
    assert all(type(v) is int for v in res.counters.values())
    gates_on = int(g_ref.sum())
    if geo.dense or gates_on == 0:
        assert res.counters == expected_counters(config, geo, gates_on, bank_stalls(config, tile))
    # Every run, phase 2 included: the spec's schedule (plain Python, verification/spec_schedule.py).
    assert res.counters == spec_counters(config, tile, g_ref)
    np.testing.assert_array_equal(res.write_cycle, spec_write_cycles(config, tile, g_ref))
    # Invariants of section 4, stated once more without the closed forms.
    c = res.counters
    assert c["gates_on"] == gates_on
    assert c["idle_pe_cycles"] == config.pes * c["cycles"] - c["busy_pe_cycles"]
    k2 = config.kernel**2
    n = geo.n_outputs
    if geo.dense:
        assert c["base_macs"] + c["cond_macs"] == k2 * geo.c_in * n
    else:
        c_sb = geo.c_in // config.groups if config.groups > 1 else geo.base_channels
        n_seg = config.groups if config.groups > 1 else 2
        c_sc = (geo.c_in - c_sb) // (n_seg - 1)
        assert c["base_macs"] + c["cond_macs"] == k2 * (c_sb * n + c_sc * (n_seg - 1) * gates_on)
    assert c["stall_cycles"] >= config.pes + 2  # SETUP (P cycles) and DRAIN1 at least
    return res


# ------------------------------------------------------------------------------------------------------
# Functional: fixed geometries
# ------------------------------------------------------------------------------------------------------

# (config overrides, geometry) pairs covering groups, kernels, strides, paddings and tile positions.
CASES = [
    # G=2, K=3, S=1, whole layer with padding 1; L divides the segments.
    (dict(groups=2, kernel=3, stride=1, padding=1, lanes=8), TileGeometry(16, 8, 6, 6, 6, 6, 1, 1)),
    # G=4, K=3, S=2; C_g = 6 with L = 4 (lanes do not divide the segment).
    (dict(groups=4, kernel=3, stride=2, padding=1, lanes=4), TileGeometry(24, 8, 7, 7, 4, 4, 1, 1)),
    # G=1, K=5, S=1, padding 2, odd base fraction.
    (dict(groups=1, kernel=5, stride=1, padding=2, lanes=4), TileGeometry(12, 6, 6, 5, 6, 5, 2, 2, 5)),
    # G=1, K=1, no padding; C_b = 3, C_sc = 4 with L = 4.
    (dict(groups=1, kernel=1, stride=1, padding=0, lanes=4), TileGeometry(7, 3, 4, 3, 4, 3, 0, 0, 3)),
    # G=2, K=5, S=2, padding 4 with an asymmetric tile (pad_top 3, pad_left 1).
    (dict(groups=2, kernel=5, stride=2, padding=4, lanes=3), TileGeometry(8, 4, 9, 8, 6, 5, 3, 1)),
    # Interior tile: pad_top = pad_left = 0 and fewer outputs than the input could give.
    (dict(groups=2, kernel=3, stride=1, padding=1, lanes=8), TileGeometry(16, 4, 8, 7, 4, 3, 0, 0)),
    # Interior tile, stride 2, G=4, K=3, padding 2 (taps beyond the bottom edge read zero).
    (dict(groups=4, kernel=3, stride=2, padding=2, lanes=2), TileGeometry(8, 4, 5, 6, 3, 3, 0, 2)),
    # K=5 with padding 0 (valid convolution), G=1.
    (dict(groups=1, kernel=5, stride=1, padding=0, lanes=8), TileGeometry(9, 2, 7, 6, 3, 2, 0, 0, 4)),
    # One output row/column only, more PEs than activations.
    (dict(groups=2, kernel=3, stride=2, padding=1, lanes=8, pes=16), TileGeometry(4, 2, 2, 2, 1, 1, 1, 1)),
]


@pytest.mark.parametrize("overrides, geo", CASES)
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("gate_rate", [0.5, 1.0, 0.0, None])
def test_outputs_match_reference(overrides: dict, geo: TileGeometry, dense: bool, gate_rate: float | None):
    config = make_config(**overrides)
    geo = TileGeometry(**{**geo.__dict__, "dense": dense})
    rng = np.random.default_rng(zlib.crc32(repr((overrides, geo, gate_rate)).encode()))
    tile = random_tile(config, geo, rng, gate_rate=gate_rate)
    res = check_against_reference(config, tile)
    if dense or gate_rate == 1.0:
        assert res.gates.all()
    elif gate_rate == 0.0:
        assert not res.gates.any()
        assert res.counters["cond_macs"] == 0
        assert res.counters["stall_cycles"] == config.pes + 2 + bank_stalls(config, tile)  # SETUP, DRAIN1


@pytest.mark.parametrize("overrides, geo", CASES[:5])
def test_reference_agrees_with_literal_formula(overrides: dict, geo: TileGeometry):
    """The np.pad/einsum reference and the literal loop over the spec's formula agree (and the model too)."""
    config = make_config(**overrides)
    tile = random_tile(config, geo, np.random.default_rng(7), gate_rate=0.5)
    y_naive, g_naive = naive_reference(config, tile)
    y_ref, g_ref, _ = reference(config, tile)
    np.testing.assert_array_equal(y_ref, y_naive)
    np.testing.assert_array_equal(g_ref, g_naive)
    res = run_tile(config, tile)
    np.testing.assert_array_equal(res.outputs, y_naive)
    np.testing.assert_array_equal(res.gates, g_naive)


def test_gate_is_strict_compare():
    """p == tau leaves the gate off; p == tau + 1 turns it on (signed compare, negative thresholds too)."""
    config = make_config(groups=2, kernel=3, stride=1, padding=1, lanes=4)
    geo = TileGeometry(8, 4, 4, 4, 4, 4, 1, 1)
    tile = random_tile(config, geo, np.random.default_rng(3), gate_rate=0.5)
    _, _, psum = reference(config, tile)
    # Channels 0, 1 get tau = p at one position, channels 2, 3 get tau = p - 1 there.
    tau = np.array([psum[0, 1, 2], psum[1, 0, 0], psum[2, 3, 3] - 1, psum[3, 2, 1] - 1], dtype=np.int64)
    tile = Tile(geo, tile.inputs, tile.weights, tau)
    res = check_against_reference(config, tile)
    assert not res.gates[0, 1, 2] and not res.gates[1, 0, 0]
    assert res.gates[2, 3, 3] and res.gates[3, 2, 1]
    assert res.outputs[0, 1, 2] == psum[0, 1, 2]


def test_gated_off_output_is_partial_sum_and_on_is_full_sum():
    config = make_config(groups=2, kernel=3, stride=1, padding=1, lanes=8)
    geo = TileGeometry(16, 4, 5, 5, 5, 5, 1, 1)
    tile = random_tile(config, geo, np.random.default_rng(11), gate_rate=0.5)
    dense_tile = Tile(
        TileGeometry(**{**geo.__dict__, "dense": True}), tile.inputs, tile.weights, tile.thresholds
    )
    res = run_tile(config, tile)
    full = run_tile(config, dense_tile).outputs
    _, _, psum = reference(config, tile)
    assert 0 < res.gates.sum() < res.gates.size  # both kinds present, or the test proves little
    np.testing.assert_array_equal(res.outputs[res.gates], full[res.gates])
    np.testing.assert_array_equal(res.outputs[~res.gates], psum[~res.gates])


def test_extreme_operands():
    """All operands at -2^(w-1): the largest sums, exact in int64 (no wrap-around in the model)."""
    config = make_config(groups=2, kernel=3, stride=1, padding=1, lanes=8)
    geo = TileGeometry(64, 2, 3, 3, 3, 3, 1, 1, dense=True)
    x = np.full((64, 3, 3), -128, dtype=np.int8)
    w = np.full((2, 64, 3, 3), -128, dtype=np.int8)
    res = run_tile(config, Tile(geo, x, w, np.zeros(2, dtype=np.int64)))
    assert res.outputs[0, 1, 1] == 64 * 9 * 128 * 128  # centre: every tap inside the tile
    assert res.outputs[0, 0, 0] == 64 * 4 * 128 * 128  # corner: 4 taps inside, 5 in the padding


def test_numpy_integer_geometry_and_operand_dtypes():
    """Geometry fields as numpy integers and operands as int64/int16 give the same result as int8 ones."""
    config = make_config(groups=2, kernel=3, stride=1, padding=1, lanes=4)
    geo = TileGeometry(8, 4, 5, 5, 5, 5, 1, 1)
    tile = random_tile(config, geo, np.random.default_rng(9), gate_rate=0.5)
    np_geo = TileGeometry(*(np.int64(v) for v in (8, 4, 5, 5, 5, 5, 1, 1)))
    other = Tile(np_geo, tile.inputs.astype(np.int64), tile.weights.astype(np.int16), tile.thresholds)
    a, b = run_tile(config, tile), run_tile(config, other)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    np.testing.assert_array_equal(a.gates, b.gates)
    assert a.counters == b.counters


# ------------------------------------------------------------------------------------------------------
# Functional + counters: randomized
# ------------------------------------------------------------------------------------------------------


@st.composite
def engine_cases(draw: st.DrawFn) -> tuple[EngineConfig, Tile]:
    groups = draw(st.sampled_from([1, 2, 4]))
    kernel = draw(st.sampled_from([1, 3, 5]))
    stride = draw(st.sampled_from([1, 2]))
    padding = draw(st.integers(0, kernel - 1))
    config = make_config(
        groups=groups,
        kernel=kernel,
        stride=stride,
        padding=padding,
        lanes=draw(st.integers(1, 8)),
        pes=draw(st.integers(1, 9)),
    )
    if groups > 1:
        c_in = groups * draw(st.integers(1, 5))
        c_out = groups * draw(st.integers(1, 3))
        base = 0
    else:
        c_in = draw(st.integers(2, 12))
        c_out = draw(st.integers(1, 6))
        base = draw(st.integers(1, c_in - 1))
    pad_top = draw(st.integers(0, padding))
    pad_left = draw(st.integers(0, padding))
    # At least one output position: the input plus both paddings must hold one kernel window.
    h_in = draw(st.integers(max(1, kernel - pad_top - padding), 8))
    w_in = draw(st.integers(max(1, kernel - pad_left - padding), 8))
    max_h = (h_in + pad_top + padding - kernel) // stride + 1
    max_w = (w_in + pad_left + padding - kernel) // stride + 1
    geo = TileGeometry(
        c_in=c_in,
        c_out=c_out,
        h_in=h_in,
        w_in=w_in,
        h_out=draw(st.integers(1, max_h)),
        w_out=draw(st.integers(1, max_w)),
        pad_top=pad_top,
        pad_left=pad_left,
        base_channels=base,
        dense=draw(st.booleans()),
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mode = draw(st.sampled_from(["rate", "on", "off", "uniform", "ties"]))
    rate = {"rate": 0.5, "on": 1.0, "off": 0.0, "uniform": None, "ties": 0.5}[mode]
    tile = random_tile(config, geo, rng, gate_rate=rate)
    if mode == "ties":
        # Thresholds taken from actual partial sums: some gates sit exactly at p == tau.
        _, _, psum = reference(config, tile)
        flat = psum.reshape(c_out, -1)
        pick = rng.integers(0, flat.shape[1], size=c_out)
        tile = Tile(geo, tile.inputs, tile.weights, flat[np.arange(c_out), pick].astype(np.int64))
    return config, tile


@settings(max_examples=30, deadline=None)
@given(engine_cases())
def test_random_tiles(case: tuple[EngineConfig, Tile]):
    config, tile = case
    check_against_reference(config, tile)


@settings(max_examples=30, deadline=None)
@given(engine_cases(), st.booleans())
def test_counters_only_run_matches_the_full_run(case: tuple[EngineConfig, Tile], dense: bool):
    """``outputs=False`` skips the arithmetic the schedule does not need, nothing the schedule sees."""
    config, tile = case
    tile = Tile(dataclasses.replace(tile.geometry, dense=dense), tile.inputs, tile.weights, tile.thresholds)
    full = run_tile(config, tile)
    lean = run_tile(config, tile, outputs=False)
    assert lean.outputs is None
    assert lean.counters == full.counters
    np.testing.assert_array_equal(lean.gates, full.gates)
    np.testing.assert_array_equal(lean.write_cycle, full.write_cycle)


# ------------------------------------------------------------------------------------------------------
# Counters: hand-worked cases
# ------------------------------------------------------------------------------------------------------


def _tile_with_thresholds(config: EngineConfig, geo: TileGeometry, tau: list[int]) -> Tile:
    tile = random_tile(config, geo, np.random.default_rng(0), gate_rate=0.5)
    return Tile(geo, tile.inputs, tile.weights, np.array(tau, dtype=np.int64))


ON, OFF = -(1 << 31), (1 << 31) - 1  # thresholds that turn a channel's gates all on / all off (acc 32)


def test_counters_hand_worked_g2_all_on():
    # P=4, L=4, K=3, G=2, c_in=8, c_out=4, 3x3 with padding 1 -> 3x3 outputs.
    # N = 4*9 = 36; C_sb = C_sc = 4 -> nch_b = nch_c = 1.
    # Phase 1: R1 = 36/4 = 9 rounds, B1 = 9 taps * 1 chunk = 9 beats, each beat 4 PEs * 4 lanes.
    # Phase 2 (all 36 gates on): B2 = 9 * (2-1) * 1 = 9; every activation once: busy 36*9, cond 36*9*4.
    # base = cond = 81 * 4 * 4 = 1296; busy = 81*4 + 36*9 = 648.
    # The window's rounds (W = 24; any W >= 16 forms these; banks mod 4): channel co (group g = co div 2)
    # at position p = 3·oy + ox has ia = p - 4 and reads segment 1 - g: input bank
    # (p - 4 + 9·(1 - g)) mod 4 = (p + 1 - g) mod 4; weight banks co mod 4 never collide. Oldest first:
    #   round 0: co0 p0..p3 (banks 1 2 3 0); round 1: co0 p4..p7 (1 2 3 0);
    #   round 2: co0 p8 (bank 1), co1 p0 refused (bank 1), co1 p1 p2 p3 (2 3 0): lin 8, 10, 11, 12;
    #   round 3: co1 p0 (1), co1 p4 refused (1), co1 p5 p6 p7 (2 3 0): lin 9, 14, 15, 16;
    #   round 4: co1 p4 (1), co1 p8 refused (1), co2 p0 (bank 0), co2 p1 refused (1), co2 p2 p3 (2 3):
    #   lin 13, 18, 20, 21.
    config = make_config(pes=4, lanes=4, kernel=3, padding=1, groups=2)
    geo = TileGeometry(8, 4, 3, 3, 3, 3, 1, 1)
    res = run_tile(config, _tile_with_thresholds(config, geo, [ON] * 4))
    c = res.counters
    assert (c["base_macs"], c["cond_macs"], c["busy_pe_cycles"], c["gates_on"]) == (1296, 1296, 648, 36)
    assert c["idle_pe_cycles"] == 4 * c["cycles"] - 648
    rounds = phase2_rounds(res.write_cycle, res.gates)
    assert rounds[:5] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 10, 11, 12], [9, 14, 15, 16], [13, 18, 20, 21]]
    assert sorted(sum(rounds, [])) == list(range(36))


def phase2_rounds(write_cycle: np.ndarray, gates: np.ndarray) -> list[list[int]]:
    """Phase-2 rounds (``lin`` of each member, PE order) read off a run's write cycles: member k of a round
    is written k cycles after member 0, and rounds at least B2 > P cycles apart do not touch."""
    flat = write_cycle.reshape(-1)
    rounds, previous = [], None
    for cycle, lin in sorted((int(flat[a]), int(a)) for a in np.flatnonzero(gates.reshape(-1))):
        if previous is None or cycle != previous + 1:
            rounds.append([])
        rounds[-1].append(lin)
        previous = cycle
    return rounds


def test_counters_hand_worked_g2_all_off_and_dense():
    config = make_config(pes=4, lanes=4, kernel=3, padding=1, groups=2)
    geo = TileGeometry(8, 4, 3, 3, 3, 3, 1, 1)
    # Input banks (word mod 4): with w_in = w_out = 3 and padding 1, the PE at position q = 3·oy + ox
    # reads, at tap (dy, dx) = (ky − 1, kx − 1), word 9·s + q + 3·dy + dx of its chunk (s: the segment
    # read, 9 words each): within one segment consecutive q ask for consecutive words, never one bank
    # twice. Rounds of 4 consecutive lin that hold q = 8 of a channel and q = 0 of the next in the same
    # segment ask words 8 apart (one bank), both inside only at the centre tap: one stall per chunk.
    # Gated (each PE its own group's segment, g = co div 2): round 2 (co0 q8 | co1 q0-q2) and round 6
    # (co2 q6-q8 | co3 q0); round 4 (co1 q7 q8 | co2 q0 q1) reads words 7, 8, 9, 10: no stall.
    # All off: phase 1 only. cycles = SETUP 4 + 81 + 2 stalls + 2 = 89; busy = 81*4 = 324;
    # idle = 356 - 324 = 32; stall_cycles = SETUP 4 + 2 + DRAIN1 2 = 8.
    res = run_tile(config, _tile_with_thresholds(config, geo, [OFF] * 4))
    assert res.counters == {
        "cycles": 89,
        "base_macs": 1296,
        "cond_macs": 0,
        "busy_pe_cycles": 324,
        "idle_pe_cycles": 32,
        "stall_cycles": 8,
        "gates_on": 0,
    }
    # Dense: B1 = 9 taps * (1 + 1) chunks = 18, R1 = 9; every PE reads the beat's segment, so rounds 2, 4
    # and 6 each stall once per chunk: 6 stalls. cycles = 4 + 162 + 6 + 2 = 174;
    # base = 162 beats * 4 PEs * 4 lanes = 2592; busy = 162*4 = 648; idle = 696 - 648 = 48; stalls 12.
    dense = TileGeometry(8, 4, 3, 3, 3, 3, 1, 1, dense=True)
    res = run_tile(config, _tile_with_thresholds(config, dense, [OFF] * 4))  # thresholds unused
    assert res.gates.all()
    assert res.counters == {
        "cycles": 174,
        "base_macs": 2592,
        "cond_macs": 0,
        "busy_pe_cycles": 648,
        "idle_pe_cycles": 48,
        "stall_cycles": 12,
        "gates_on": 36,
    }


def test_counters_hand_worked_g1_round_tails():
    # P=3, L=4, K=1, G=1, c_in=7 with C_b=3 (C_sc=4), c_out=2, 2x2 -> N=8. Channel 0 on, 1 off: 4 gates.
    # (Cycle numbers below as with a one-cycle SETUP; SETUP takes P = 3 cycles: every one is 2 later.)
    # Phase 1: R1 = ceil(8/3) = 3 rounds of 3, 3, 2 valid PEs, B1 = 1 beat of 3 valid lanes:
    #   cycles 2-4, busy 8, base 8*3 = 24; DRAIN1 5-6.
    # Phase 2: the queue holds lin 0-3 (channel 0; ia = 0..3, segment 1 at in_seg = 4 words: input banks
    #   (ia + 4) mod 4 = 0, 1, 2, 3, all distinct; one channel, one weight word). B2 = 1 beat of 4 lanes.
    #   PREP: 7 read and start, 8-15 form round 0 (4 inserted + 1, 3 members), 16 take. Round 0 = lin 0-2:
    #   its last beat waits for round 1's formation (0 inserted + 1 + 1 member = 2): cycle 16 + 3 = 19.
    #   Round 1 = lin 3: 19 + max(1, 1 + 2, 3 results of round 0 draining) = 22. DRAIN2: 1 result + 2,
    #   cycles 23-25. cycles = 25 + 2 = 27; busy 8 + 4 = 12, cond 16; stalls = 27 - 3 - 2 = 22;
    #   idle = 81 - 12 = 69.
    config = make_config(pes=3, lanes=4, kernel=1, padding=0, groups=1)
    geo = TileGeometry(7, 2, 2, 2, 2, 2, 0, 0, base_channels=3)
    res = run_tile(config, _tile_with_thresholds(config, geo, [ON, OFF]))
    assert res.gates[0].all() and not res.gates[1].any()
    assert res.counters == {
        "cycles": 27,
        "base_macs": 24,
        "cond_macs": 16,
        "busy_pe_cycles": 12,
        "idle_pe_cycles": 69,
        "stall_cycles": 22,
        "gates_on": 4,
    }
    # Dense: two slots (3 lanes, then 4 lanes), B1 = 2: cycles = 3 + 6 + 2 = 11; base = 8*3 + 8*4 = 56;
    # busy = 8*2 = 16; idle = 33 - 16 = 17; stalls = SETUP 3 + DRAIN1 2.
    dense = TileGeometry(7, 2, 2, 2, 2, 2, 0, 0, base_channels=3, dense=True)
    res = run_tile(config, _tile_with_thresholds(config, dense, [ON, OFF]))
    assert res.counters == {
        "cycles": 11,
        "base_macs": 56,
        "cond_macs": 0,
        "busy_pe_cycles": 16,
        "idle_pe_cycles": 17,
        "stall_cycles": 5,
        "gates_on": 8,
    }


def test_counters_hand_worked_lane_tail_chunks():
    # P=4, L=4, K=1, G=2, c_in=12 -> C_sb = C_sc = 6 = chunks of 4 and 2 lanes; c_out=2, 1x1 -> N=2, all on.
    # (Cycle numbers below as with a one-cycle SETUP; SETUP takes P = 4 cycles: every one is 3 later.)
    # Phase 1: 1 round of 2 PEs, 2 beats (cycles 2-3): busy 4, base 2*4 + 2*2 = 12; DRAIN1 4-5.
    # Phase 2: channels 0 and 1 share a round (weight banks 0, 1; channel 0 (group 0) reads segment 1 at
    # in_seg = 2 words: input bank 2, channel 1 segment 0: bank 0). PREP 6-12 (form: 2 + 1 + 2 = 5);
    # the round's 2 beats end at 12 + max(2, 1 + 2) = 15; DRAIN2 2 + 2 = 4 (16-19). busy 4, cond 12.
    # cycles = 19 + 3 = 22; stalls = 22 - 2 - 2 = 18; idle = 88 - 8 = 80.
    config = make_config(pes=4, lanes=4, kernel=1, padding=0, groups=2)
    geo = TileGeometry(12, 2, 1, 1, 1, 1)
    res = run_tile(config, _tile_with_thresholds(config, geo, [ON, ON]))
    assert res.counters == {
        "cycles": 22,
        "base_macs": 12,
        "cond_macs": 12,
        "busy_pe_cycles": 8,
        "idle_pe_cycles": 80,
        "stall_cycles": 18,
        "gates_on": 2,
    }


def test_counters_hand_worked_g4_three_conditional_slots():
    # P=2, L=2, K=1, G=4, c_in=8 (C_g=2), c_out=4 (one per group), 1x1 -> N=4. Channels 0, 2 on: 2 gates.
    # (Cycle numbers below as with a one-cycle SETUP; SETUP takes P = 2 cycles: every one is 1 later.)
    # Phase 1: R1 = 2 rounds of 2 PEs, B1 = 1 beat of 2 lanes (cycles 2-3): busy 4, base 8; DRAIN1 4-5.
    # Phase 2: channels 0 and 2 read weight bank 0 (co mod 2) for different words: never one round.
    #   PREP 6-11 (form: 2 inserted + 1 + 1 member = 4); B2 = 3 slots * 1 chunk = 3 beats of 2 lanes.
    #   Round 0 (lin 0) ends at 11 + max(3, 1 + 2) = 14, round 1 (lin 2) at 14 + max(3, 3, 1) = 17;
    #   DRAIN2 1 + 2 = 3 (18-20). busy 2*3 = 6, cond 2*3*2 = 12.
    # cycles = 20 + 1 = 21; stalls = 21 - 2 - 6 = 13; idle = 42 - 10 = 32.
    config = make_config(pes=2, lanes=2, kernel=1, padding=0, groups=4)
    geo = TileGeometry(8, 4, 1, 1, 1, 1)
    res = run_tile(config, _tile_with_thresholds(config, geo, [ON, OFF, ON, OFF]))
    assert res.counters == {
        "cycles": 21,
        "base_macs": 8,
        "cond_macs": 12,
        "busy_pe_cycles": 10,
        "idle_pe_cycles": 32,
        "stall_cycles": 13,
        "gates_on": 2,
    }


def test_counters_wrap_at_counter_width():
    """The hardware counters are counter_width bits wide: the model reports them modulo 2^width."""
    config = make_config(pes=1, lanes=1, kernel=3, padding=1, groups=2, counter_width=16)
    geo = TileGeometry(64, 4, 16, 16, 16, 16, 1, 1, dense=True)
    tile = _tile_with_thresholds(config, geo, [0] * 4)
    # N = 1024, B1 = 9 * 64 = 576: cycles = 3 + 589824 > 2^16.
    full = expected_counters(config, geo, gates_on=1024)
    assert full["cycles"] == 589827
    res = run_tile(config, tile)
    assert res.counters == {name: v % (1 << 16) for name, v in full.items()}


# ------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------


def _good_tile() -> tuple[EngineConfig, Tile]:
    config = make_config(groups=2, kernel=3, padding=1, lanes=4)
    geo = TileGeometry(8, 4, 4, 4, 4, 4, 1, 1)
    return config, random_tile(config, geo, np.random.default_rng(5), gate_rate=0.5)


def test_bad_input_shape():
    config, tile = _good_tile()
    bad = Tile(tile.geometry, tile.inputs[:, :, :3], tile.weights, tile.thresholds)
    with pytest.raises(ConfigError, match="'inputs'"):
        run_tile(config, bad)
    bad = Tile(tile.geometry, tile.inputs, tile.weights[:, :, :2], tile.thresholds)
    with pytest.raises(ConfigError, match="'weights'"):
        run_tile(config, bad)


def test_bad_threshold_range():
    config, tile = _good_tile()
    tau = tile.thresholds.copy()
    tau[2] = 1 << 31  # one past the signed 32-bit range
    with pytest.raises(ConfigError, match="'thresholds'.*2147483648"):
        run_tile(config, Tile(tile.geometry, tile.inputs, tile.weights, tau))


def test_bad_operand_range():
    config, tile = _good_tile()
    x = tile.inputs.astype(np.int16)
    x[0, 0, 0] = 128
    with pytest.raises(ConfigError, match="'inputs'.*128"):
        run_tile(config, Tile(tile.geometry, x, tile.weights, tile.thresholds))


def test_bad_channels_not_multiple_of_groups():
    config = make_config(groups=4, kernel=3, padding=1, lanes=4)
    geo = TileGeometry(6, 4, 4, 4, 4, 4, 1, 1)
    tile = Tile(
        geo,
        np.zeros((6, 4, 4), dtype=np.int8),
        np.zeros((4, 6, 3, 3), dtype=np.int8),
        np.zeros(4, dtype=np.int64),
    )
    with pytest.raises(ConfigError, match="'c_in'.*groups"):
        run_tile(config, tile)


def test_bad_base_channels_and_padding():
    config = make_config(groups=1, kernel=3, padding=1, lanes=4)
    geo = TileGeometry(8, 2, 4, 4, 4, 4, 1, 1, base_channels=8)
    tile = random_tile(config, TileGeometry(8, 2, 4, 4, 4, 4, 1, 1, 4), np.random.default_rng(1))
    with pytest.raises(ConfigError, match="'base_channels'"):
        run_tile(config, Tile(geo, tile.inputs, tile.weights, tile.thresholds))
    geo = TileGeometry(8, 2, 4, 4, 4, 4, 2, 1, base_channels=4)
    with pytest.raises(ConfigError, match="'pad_top'"):
        run_tile(config, Tile(geo, tile.inputs, tile.weights, tile.thresholds))


@pytest.mark.parametrize(
    "stride,rate,expect_cycles,expect_write",
    [(1, 1.0, 19, [18, 19]), (1, 0.0, 5, [5, 5]), (2, 1.0, 21, [18, 21]), (2, 0.0, 6, [6, 6])],
)
def test_write_cycles_hand_worked(stride, rate, expect_cycles, expect_write):
    # P = 2, L = 4, K = 1, G = 2, c_in = 8 (two segments of one chunk), c_out = 2, 1x1: one round of one
    # beat per phase; channel 0 (group 0) reads segment 0 in phase 1 and segment 1 in phase 2, channel 1
    # the other way round; input banks = word mod 2. (Cycle numbers below as with a one-cycle SETUP;
    # SETUP takes P = 2 cycles: every one is 1 later.)
    # Stride 1: a chunk's plane is 1 word, so phase 1 reads words 0 and 1 (two banks). SETUP is cycle 1,
    # the phase-1 beat cycle 2, its write-back cycle 4 (DRAIN1 = 3, 4); gated on: PREP 5 (read, start),
    # 6-10 (form: 2 inserted + 1 + 2 members; weight banks 0 and 1, input words 1 and 0), take 11; the beat
    # waits for the next (empty) formation: 11 + max(1, 1 + 2) = 14; write-back 16 takes the two results,
    # written 17 and 18 (DRAIN2 = 15-18).
    # Stride 2: the plane is rounded up to 2 x 2 words, so the segments start at words 0 and 4, one bank.
    # Phase 1 reads words 0 and 4: two cycles (2, 3), write-back 5 (DRAIN1 = 4, 5). Gated on: the window
    # cannot pair them (phase 2 reads words 4 and 0, one bank): PREP 6, form round 0 in 7-10 (2 inserted +
    # 1 + 1 member), take 11; round 0 (channel 0) ends at 11 + max(1, 1 + F1) with F1 = 0 + 1 + 1 = 2: 14,
    # written 14 + 3 = 17; round 1 (channel 1) at 14 + max(1, 1 + 2, 1 result draining) = 17, written 20;
    # DRAIN2 = 18-20.
    config = EngineConfig(pes=2, lanes=4, kernel=1, stride=stride, padding=0, groups=2)
    geometry = TileGeometry.full_layer(config, c_in=8, c_out=2, h_in=1, w_in=1)
    tile = random_tile(config, geometry, np.random.default_rng(3), gate_rate=rate)
    result = run_tile(config, tile)
    assert result.counters["cycles"] == expect_cycles
    assert result.write_cycle.ravel().tolist() == expect_write


@pytest.mark.parametrize(
    "overrides, geo, rate",
    [
        (dict(pes=8, kernel=3, padding=1, groups=4), dict(c_in=32, c_out=16, h_in=8, w_in=8), 0.3),
        (dict(pes=8, kernel=3, stride=2, padding=1, groups=2), dict(c_in=16, c_out=8, h_in=9, w_in=9), 0.5),
        (
            dict(pes=4, kernel=3, padding=1, groups=1),
            dict(c_in=12, c_out=6, h_in=5, w_in=7, base_channels=4),
            0.6,
        ),
        (dict(pes=8, kernel=5, padding=2, groups=3), dict(c_in=24, c_out=9, h_in=6, w_in=6), 0.4),
    ],
)
def test_phase2_rounds_read_one_word_per_input_bank(overrides, geo, rate):
    """Every beat of every phase-2 round asks each input bank (word address mod P, the input buffer's
    layout of microarchitecture.md section 3) for at most one word, and each weight bank (``co mod P``)
    for at most one channel's word: the selection window's promise, checked on the model's rounds
    (read off the write cycles) with addresses computed here from the geometry."""
    config = make_config(lanes=8, **overrides)
    geometry = TileGeometry.full_layer(config, **geo)
    tile = random_tile(config, geometry, np.random.default_rng(21), gate_rate=rate)
    res = run_tile(config, tile, outputs=False)
    seg = geometry.segments(config)
    p, k, s = config.pes, config.kernel, config.stride
    b2 = k * k * (seg.n_seg - 1) * seg.nch_c
    assert b2 > p and res.counters["gates_on"] > p
    rounds = phase2_rounds(res.write_cycle, res.gates)
    assert len(rounds) < res.counters["gates_on"]  # rounds share beats
    hw = geometry.h_out * geometry.w_out
    hp, wp = -(-geometry.h_in // s) * s, -(-geometry.w_in // s) * s  # the plane: h_in, w_in rounded up to S
    c_og = geometry.c_out // config.groups if config.groups > 1 else geometry.c_out
    for members in rounds:
        for t in range(seg.n_seg - 1):
            for c in range(seg.nch_c):
                for ky in range(k):
                    for kx in range(k):
                        inputs, weights = {}, {}
                        for lin in members:
                            co, pos = divmod(lin, hw)
                            oy, ox = divmod(pos, geometry.w_out)
                            g = co // c_og if config.groups > 1 else 0
                            segment = t + (t >= g)  # slot t of an activation of group g
                            y, x = oy * s + ky - geometry.pad_top, ox * s + kx - geometry.pad_left
                            if 0 <= y < geometry.h_in and 0 <= x < geometry.w_in:
                                q = segment * seg.nch_b + c
                                # the plane deinterleaved by the stride (spec section 3)
                                row, col = (y % s) * hp // s + y // s, (x % s) * wp // s + x // s
                                addr = q * hp * wp + row * wp + col
                                inputs.setdefault(addr % p, set()).add(addr)
                            weights.setdefault(co % p, set()).add(co)
                        assert all(len(v) == 1 for v in inputs.values()), (members, t, c, ky, kx)
                        assert all(len(v) == 1 for v in weights.values()), (members, t, c, ky, kx)
