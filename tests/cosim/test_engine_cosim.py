"""Co-simulation of the generated Verilog against the cycle model, tile by tile (docs/microarchitecture.md).

For each configuration below the Verilog is generated and compiled once (cached by
``verification.build``, in ``build/verilog/``), the cycle model computes every tile's outputs, gate bits,
write cycles and counters in this process, and the testbench ``verification.cosim_tb`` runs all the tiles
of the configuration in one simulation,
checking every output word, gate bit, the cycle of every output's last write (trace ports), every counter
and the cycle count seen on ``busy``.

A configuration's tiles are hand-picked ones, random ones, tiles cut from a synthetic layer trace
(``sim.synthetic``: ``synthetic_layer`` + ``cut_tiles``, standing in for real traces) and restarts on the
first tile's data. ``test_engine_cosim_hypothesis`` adds lists of tiles drawn by hypothesis (shapes,
paddings, output sizes, base fractions, dense or gated, all-on / all-off / random gates), each list in one
simulation. ``test_engine_cosim_slow_host`` runs tiles with the host pacing the streams (responses held
not-ready 0-7 cycles, gaps between load writes), ``test_engine_cosim_reset_mid_run`` aborts runs by a reset
at chosen cycles and checks the state after it and the runs that follow.

Run: ``python -m pytest -q tests/cosim`` (``-k icarus`` / ``-k verilator`` to pick a simulator).
Environment: ``ACCEL_WAVES=1`` records waveforms of every run (``0``: never; default: a failing run is
repeated once with waveforms, whose path the failure names); ``ACCEL_COSIM_SEED`` changes the seed of the
random tiles (default fixed, so a run is reproducible); ``ACCEL_COSIM_RANDOM_TILES`` sets how many random
tiles each configuration adds to its hand-picked ones (default 6); ``ACCEL_COSIM_EXAMPLES`` sets how many
hypothesis examples (simulations) each configuration of the hypothesis test runs (default 3; the examples
are derandomized, so a run is reproducible).
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from sim.synthetic import cut_tiles, synthetic_layer
from spec.config import ConfigError, EngineConfig
from spec.protocol import COUNTER_NAMES, RunMode
from spec.tile import QueueLoad, Tile, TileGeometry, conv_output_size, random_tile
from verification.build import default_cache_root
from verification.cosim import (
    CosimFailure,
    expectations,
    rtl_available,
    run_cosim,
    simulator_status,
    spec_counters,
    spec_write_cycles,
)
from verification.cosim_data import CosimCase

SEED = int(os.environ.get("ACCEL_COSIM_SEED", "20261121"))
RANDOM_TILES = int(os.environ.get("ACCEL_COSIM_RANDOM_TILES", "6"))  # per configuration
EXAMPLES = int(os.environ.get("ACCEL_COSIM_EXAMPLES", "3"))  # hypothesis examples per configuration

# Elaboration parameters are fixed per build, so the cases are grouped by configuration; the default build
# also runs layers of every shape (kernel, stride, padding and groups are run-time registers).
CONFIGS: dict[str, EngineConfig] = {
    # the default shape, smaller: G = 2, 3x3, stride 1
    "g2_p4_l8_k3": EngineConfig(
        pes=4, lanes=8, kernel=3, stride=1, padding=1, groups=2,
        input_depth=1024, weight_depth=1024, output_depth=512, threshold_depth=32,
    ),
    # fixed base fraction, stride 2, lanes that rarely divide the segments, P = 3
    "g1_p3_l4_k3_s2": EngineConfig(
        pes=3, lanes=4, kernel=3, stride=2, padding=1, groups=1,
        input_depth=1024, weight_depth=1024, output_depth=512, threshold_depth=32,
    ),
    # four groups, 1x1, narrow operands, accumulator and counters (32-bit data word)
    "g4_p5_l3_k1_narrow": EngineConfig(
        pes=5, lanes=3, act_width=6, weight_width=5, acc_width=24, kernel=1, stride=1, padding=0,
        groups=4, counter_width=32, input_depth=512, weight_depth=512, output_depth=512, threshold_depth=32,
    ),
    # 5x5, stride 2, padding 2, 16 lanes (128-bit data words), two PEs
    "g2_p2_l16_k5_s2": EngineConfig(
        pes=2, lanes=16, kernel=5, stride=2, padding=2, groups=2,
        input_depth=512, weight_depth=512, output_depth=256, threshold_depth=16,
    ),
    # a single PE, two lanes, an even kernel, 64-bit accumulator and counters (65-bit data word)
    "g2_p1_l2_k2_acc64": EngineConfig(
        pes=1, lanes=2, kernel=2, stride=1, padding=1, groups=2, acc_width=64, counter_width=64,
        input_depth=256, weight_depth=256, output_depth=128, threshold_depth=16,
    ),
    # the default configuration, as `accel` generates it
    "default": EngineConfig(),
}  # fmt: skip


def _geometry(
    config: EngineConfig,
    c_in: int,
    c_out: int,
    h_in: int,
    w_in: int,
    *,
    pad: tuple[int, int] | None = None,
    shrink: tuple[int, int] = (0, 0),
    base: int = 0,
    dense: bool = False,
) -> TileGeometry:
    """A tile geometry: ``pad`` (top, left) defaults to the configured padding; ``shrink`` takes rows/columns
    off the largest output size the tile allows."""
    k, s, p = config.kernel, config.stride, config.padding
    top, left = (p, p) if pad is None else pad
    h_out = conv_output_size(h_in, k, s, top, p) - shrink[0]
    w_out = conv_output_size(w_in, k, s, left, p) - shrink[1]
    return TileGeometry(c_in, c_out, h_in, w_in, h_out, w_out, top, left, base, dense)


def _random_geometry(config: EngineConfig, rng: np.random.Generator, max_c: int, max_hw: int) -> TileGeometry:
    """A random geometry the engine accepts: channels, sizes, paddings, output sizes, dense or gated."""
    g = config.groups
    k, s = config.kernel, config.stride
    while True:
        if g > 1:
            c_in = g * int(rng.integers(1, max(2, max_c // g) + 1))
            c_out = g * int(rng.integers(1, 3))
            base = 0
        else:
            c_in = int(rng.integers(2, max_c + 1))
            c_out = int(rng.integers(1, 6))
            base = int(rng.integers(1, c_in))
        h_in, w_in = (int(v) for v in rng.integers(max(1, k - config.padding), max_hw + 1, size=2))
        top, left = (int(v) for v in rng.integers(0, config.padding + 1, size=2))
        max_h = conv_output_size(h_in, k, s, top, config.padding)
        max_w = conv_output_size(w_in, k, s, left, config.padding)
        if max_h < 1 or max_w < 1:
            continue
        geo = TileGeometry(
            c_in, c_out, h_in, w_in,
            int(rng.integers(1, max_h + 1)), int(rng.integers(1, max_w + 1)),
            top, left, base, bool(rng.random() < 0.2),
        )  # fmt: skip
        try:
            geo.check(config)
        except ConfigError:
            continue
        return geo


def _tile_specs(
    name: str, config: EngineConfig, rng: np.random.Generator
) -> list[tuple[str, TileGeometry, float | None]]:
    """(label, geometry, gate_rate) of the tiles of one configuration."""
    c = config
    if name == "g2_p4_l8_k3":
        specs = [
            ("full 16->4 6x6", _geometry(c, 16, 4, 6, 6), 0.5),
            ("interior pad0 h_out-1", _geometry(c, 16, 4, 6, 7, pad=(0, 0), shrink=(1, 0)), 0.3),
            ("pad top only, C_g=6<L", _geometry(c, 12, 6, 5, 5, pad=(1, 0), shrink=(0, 1)), None),
            ("dense", _geometry(c, 16, 4, 6, 6, dense=True), 0.5),
            ("all gates on, 2 chunks", _geometry(c, 24, 2, 5, 5), 1.0),
            ("all gates off", _geometry(c, 16, 4, 5, 5), 0.0),
            ("N=18 not a multiple of P", _geometry(c, 16, 2, 3, 3), 0.5),
            ("pad left only, 1 channel per group", _geometry(c, 2, 2, 4, 6, pad=(0, 1), shrink=(1, 2)), 0.6),
            ("large: output buffer full", _geometry(c, 32, 8, 8, 8), 0.4),
        ]
        max_c, max_hw = 24, 7
    elif name == "g1_p3_l4_k3_s2":
        specs = [
            ("full C_b=3 of 10", _geometry(c, 10, 5, 9, 9, base=3), 0.5),
            (
                "pad (0,1) C_b=4 of 8, shrunk",
                _geometry(c, 8, 3, 8, 9, pad=(0, 1), shrink=(1, 1), base=4),
                0.4,
            ),
            ("dense C_b=5 of 7", _geometry(c, 7, 4, 7, 7, base=5, dense=True), 0.5),
            ("all on C_b=1 of 9", _geometry(c, 9, 2, 6, 6, base=1), 1.0),
            ("all off C_b=6 of 7", _geometry(c, 7, 3, 6, 5, base=6), 0.0),
            ("interior pad0 C_b=2 of 6", _geometry(c, 6, 2, 7, 8, pad=(0, 0), base=2), None),
            ("large: input and output buffers full", _geometry(c, 12, 8, 16, 16, base=5), 0.5),
        ]
        max_c, max_hw = 12, 9
    elif name == "g4_p5_l3_k1_narrow":
        specs = [
            ("C_g=3=L", _geometry(c, 12, 8, 4, 5), 0.5),
            ("C_g=2<L, C_og=1", _geometry(c, 8, 4, 3, 4), 0.5),
            ("C_g=5 (2 chunks), shrunk", _geometry(c, 20, 12, 4, 4, shrink=(1, 2)), 0.3),
            ("dense", _geometry(c, 12, 4, 3, 3, dense=True), 0.5),
            ("all on", _geometry(c, 8, 8, 3, 3), 1.0),
            ("all off", _geometry(c, 8, 4, 4, 4), 0.0),
        ]
        max_c, max_hw = 20, 5
    elif name == "g2_p2_l16_k5_s2":
        specs = [
            ("full C_g=20 (2 chunks of 16)", _geometry(c, 40, 4, 7, 7), 0.5),
            ("pad (2,0) C_g=16=L", _geometry(c, 32, 2, 6, 6, pad=(2, 0)), 0.5),
            ("dense C_g=4", _geometry(c, 8, 2, 5, 5, dense=True), 0.5),
            ("all on", _geometry(c, 8, 2, 5, 5, pad=(1, 2)), 1.0),
            ("all off", _geometry(c, 16, 2, 5, 5), 0.0),
        ]
        max_c, max_hw = 24, 7
    elif name == "g2_p1_l2_k2_acc64":
        specs = [
            ("full C_g=3 (masked lane)", _geometry(c, 6, 2, 4, 4), 0.5),
            ("pad0 shrunk", _geometry(c, 4, 2, 4, 5, pad=(0, 0), shrink=(1, 0)), 0.5),
            ("dense", _geometry(c, 6, 2, 3, 3, dense=True), 0.5),
            ("all on", _geometry(c, 2, 2, 3, 3), 1.0),
            ("all off", _geometry(c, 4, 2, 3, 3, pad=(1, 0)), 0.0),
        ]
        max_c, max_hw = 6, 4
    elif name == "default":
        # Icarus runs this one at about 1 k cycles/s (64 MACs, 4096-word buffers): small tiles only.
        max_c, max_hw = 24, 6
        specs = [  # the build's largest layer: 7x7, stride 2, padding 3, G = 4
            ("7x7/2 G=4 16->4 8x8", _geometry(c, 16, 4, 8, 8), 0.3),
            ("7x7/2 G=4 interior pad0 C_g=6 (masked lanes)", _geometry(c, 24, 4, 9, 10, pad=(0, 0)), 0.6),
            ("7x7/2 dense", _geometry(c, 16, 4, 7, 7, dense=True), 0.5),
        ]
    else:
        raise KeyError(name)
    for i in range(RANDOM_TILES):
        geo = _random_geometry(config, rng, max_c, max_hw)
        specs.append((f"random {i}", geo, [None, 0.0, 0.3, 0.5, 0.8, 1.0][int(rng.integers(6))]))
    return specs


# Tiles cut from synthetic layer traces: (synthetic_layer arguments, which of cut_tiles' tiles to run).
# The layers are chosen so that the cut exercises channel blocks taken from every group, row blocks with and
# without top padding, the layer's bottom edge, and (P = 1) column blocks with and without left padding.
LAYERS: dict[str, list[tuple[dict, tuple[int, ...]]]] = {
    # G = 2: 40 output channels in 2 channel blocks x 2 row blocks (the second one ends at the bottom edge)
    "g2_p4_l8_k3": [
        (
            dict(c_in=12, c_out=40, h=5, w=7, kernel=3, stride=1, padding=1, groups=2, gate_rate=0.4),
            (0, 1, 2, 3),
        ),
    ],
    # G = 1 (base fraction 3 of 10), stride 2: 40 output channels in 2 channel blocks
    "g1_p3_l4_k3_s2": [
        (
            dict(c_in=10, c_out=40, h=7, w=7, kernel=3, stride=2, padding=1, groups=1, gate_rate=0.3,
                 base_channels=3),
            (0, 1),
        ),
    ],
    # a 40-column layer: output rows do not fit, so rows are cut into column blocks
    "g2_p1_l2_k2_acc64": [
        (
            dict(c_in=6, c_out=2, h=3, w=40, kernel=2, stride=1, padding=1, groups=2, gate_rate=0.6),
            (0, 1, 2, 3),
        ),
    ],
}  # fmt: skip


def _layer_tiles(name: str, config: EngineConfig) -> list[tuple[str, Tile]]:
    """(label, tile) of the tiles cut from the configuration's synthetic layers."""
    tiles = []
    for i, (args, keep) in enumerate(LAYERS.get(name, [])):
        layer = synthetic_layer(**args, seed=SEED + i)
        cut = cut_tiles(layer, config)
        what = f"layer {layer.c_in}->{layer.c_out} {layer.h}x{layer.w} ({len(cut)} tiles)"
        for j in keep:
            t = cut[j]
            g = t.geometry
            where = (
                f"{len(t.channels)} channels from {t.channels[0]}, rows {t.row0}-{t.row0 + g.h_out - 1}, "
                f"cols {t.col0}-{t.col0 + g.w_out - 1}"
            )
            tiles.append((f"{what} tile {j}: {where}", Tile(g, t.inputs, t.weights, t.thresholds)))
    return tiles


# The default build runs every layer shape of the shipped traces (docs/chip-design.md, section 3.1), and
# K = 7 and G = 3 besides, on one Verilog: ((kernel, stride, padding, groups) of the layer, label, tile
# geometry of a whole small layer, gate rate). Dense rows are the ungated layers (G = 1, base L or 1).
DEFAULT_BUILD_LAYERS = [
    ((3, 1, 1, 4), "CGNet gated 3x3, G=4", dict(c_in=16, c_out=8, h_in=6, w_in=6), 0.3),
    ((3, 2, 1, 4), "CGNet gated 3x3/2, G=4", dict(c_in=32, c_out=4, h_in=7, w_in=7), 0.5),
    (
        (3, 1, 1, 1),
        "conv1 dense 3x3, 3 channels",
        dict(c_in=3, c_out=8, h_in=5, w_in=5, base_channels=1, dense=True),
        0.5,
    ),
    (
        (1, 2, 0, 1),
        "shortcut dense 1x1/2",
        dict(c_in=16, c_out=8, h_in=7, w_in=7, base_channels=8, dense=True),
        0.5,
    ),
    ((1, 1, 0, 1), "fc dense 1x1", dict(c_in=24, c_out=10, h_in=1, w_in=1, base_channels=8, dense=True), 0.5),
    (
        (7, 2, 3, 1),
        "ResNet-18 stem dense 7x7/2",
        dict(c_in=3, c_out=4, h_in=11, w_in=11, base_channels=1, dense=True),
        0.5,
    ),
    ((3, 1, 1, 2), "ResNet-18 gated 3x3, G=2", dict(c_in=16, c_out=6, h_in=6, w_in=6), 0.4),
    ((3, 2, 1, 2), "ResNet-18 gated 3x3/2, G=2", dict(c_in=16, c_out=4, h_in=7, w_in=7), 0.6),
    ((7, 1, 3, 3), "gated 7x7, G=3", dict(c_in=12, c_out=6, h_in=6, w_in=6), 0.5),
    ((5, 2, 2, 3), "gated 5x5/2, G=3, 2 chunks", dict(c_in=30, c_out=3, h_in=7, w_in=7), 0.7),
    ((3, 1, 1, 1), "gated 3x3, base 3 of 10", dict(c_in=10, c_out=4, h_in=5, w_in=5, base_channels=3), 0.5),
]


def _layer_mix(config: EngineConfig, rng: np.random.Generator) -> list[tuple[str, Tile, EngineConfig]]:
    """(label, tile, layer configuration) of :data:`DEFAULT_BUILD_LAYERS` on the build ``config``."""
    out = []
    for (k, s, p, g), label, geom, rate in DEFAULT_BUILD_LAYERS:
        layer = config.for_layer(kernel=k, stride=s, padding=p, groups=g)
        geo = TileGeometry.full_layer(layer, **geom)
        out.append((f"{label} ({k},{s},{p},{g})", random_tile(layer, geo, rng, gate_rate=rate), layer))
    return out


@functools.cache
def _tiles(name: str) -> list[tuple[str, Tile, str, EngineConfig]]:
    """(label, tile, what to load, layer configuration) of the configuration, in simulation order."""
    config = CONFIGS[name]
    rng = np.random.default_rng([SEED, list(CONFIGS).index(name)])
    tiles = []
    if name == "default":
        tiles += [(label, tile, "all", layer) for label, tile, layer in _layer_mix(config, rng)]
    for label, geo, rate in _tile_specs(name, config, rng):
        geo.check(config)
        tiles.append((label, random_tile(config, geo, rng, gate_rate=rate), "all", config))
    tiles += [(label, tile, "all", config) for label, tile in _layer_tiles(name, config)]
    # Restarts on the data of the first tile: load it again, run it again with nothing reloaded (buffers,
    # registers and thresholds keep their contents), then in the other mode by rewriting the registers.
    _, first, _, layer = tiles[0]
    tiles.append(("first tile again", first, "all", layer))
    tiles.append(("restart, nothing reloaded", first, "none", layer))
    flipped = replace(first, geometry=replace(first.geometry, dense=not first.geometry.dense))
    tiles.append(("dense flipped, registers only", flipped, "registers", layer))
    return tiles


@functools.cache
def _cases(name: str) -> list[CosimCase]:
    cases = []
    for label, tile, load, layer in _tiles(name):
        case = expectations(layer, label, tile)
        case.load = load
        cases.append(case)
    return cases


# Two-pass runs (RunMode PHASE1, then PHASE2 on the host's queue): the gated tiles of these labels (default
# build: K = 7 with G = 3, stride 2 with G = 4, G = 1; P = 3: the first two gated tiles, banked queue
# addresses with an unused bank code), each pass 1 and pass 2 with a seeded half of the channels pruned,
# then one pass 2 with every channel pruned (an empty queue: SETUP, then done).
TWO_PASS = {"default": ("gated 7x7", "CGNet gated 3x3/2", "gated 3x3, base"), "g1_p3_l4_k3_s2": ()}


@functools.cache
def _two_pass_cases(name: str) -> list[CosimCase]:
    if name not in TWO_PASS:
        return []
    rng = np.random.default_rng([SEED, 2, list(CONFIGS).index(name)])
    picks = [(label, tile, layer) for label, tile, load, layer in _tiles(name) if not tile.geometry.dense]
    labels = TWO_PASS[name]
    picks = [p for p in picks if p[0].startswith(labels)] if labels else picks[:2]
    cases = []
    for label, tile, layer in picks:
        pass1 = expectations(layer, f"{label}: pass 1", tile, run=RunMode.PHASE1)
        on = pass1.gates.reshape(tile.geometry.c_out, -1).any(axis=1)
        keep = rng.random(tile.geometry.c_out) < 0.5
        if on.sum() >= 2:  # at least one channel with gates on kept and one pruned
            first, second = np.flatnonzero(on)[:2]
            keep[first], keep[second] = True, False
        queue = QueueLoad.after_phase1(pass1.outputs, pass1.gates, keep)
        pruned = int((~keep).sum())
        what = f"{label}: pass 2, {pruned} of {len(keep)} channels pruned, {len(queue.lins)} queued"
        cases += [pass1, expectations(layer, what, tile, run=RunMode.PHASE2, queue=queue)]
    label, tile, layer = picks[-1]
    empty = QueueLoad(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    cases.append(expectations(layer, f"{label}: pass 2, every channel pruned", tile, RunMode.PHASE2, empty))
    return cases


# Back-to-back double-buffered tiles: the first gated and dense tiles of these configurations, alternating
# halves (1, 0, 1, ...); each after the first is written into its half while the one before runs, and each
# run reads back the previous run's output entries from the other half. Then a two-pass pair: pass 1
# written during the last run, pass 2 in pass 1's half (it reuses pass 1's inputs), written while idle.
DOUBLE_BUFFERED = {"default": 7, "g1_p3_l4_k3_s2": 5, "g2_p1_l2_k2_acc64": 4}


@functools.cache
def _double_buffer_cases(name: str) -> list[CosimCase]:
    if name not in DOUBLE_BUFFERED:
        return []
    picks = [c for c in _cases(name) if c.load == "all" and not c.reset_at][: DOUBLE_BUFFERED[name]]
    picks += _two_pass_cases(name)[:1]
    cases = [
        replace(c, name=f"{c.name} (half {1 - k % 2}, double-buffered)", half=1 - k % 2, overlap=k > 0)
        for k, c in enumerate(picks)
    ]
    pass2 = _two_pass_cases(name)[1:2]
    return cases + [replace(c, name=f"{c.name} (half {cases[-1].half})", half=cases[-1].half) for c in pass2]


def test_two_pass_expectations_match_the_reference() -> None:
    """The two-pass cases' expectations: pass 1 has the reference's gate bits and, where the gate is off,
    its outputs (the partial sum is the output); pass 2's results are the reference's outputs of the
    queued activations, and the cases do prune channels with gates on."""
    pytest.importorskip("sim.engine")
    from sim.reference import tile_reference

    pruned_any = False
    for name in TWO_PASS:
        for case in _two_pass_cases(name):
            ref_y, ref_g, _ = tile_reference(case.layer, case.tile)
            if case.run == RunMode.PHASE1.value:
                assert np.array_equal(case.gates, ref_g), case.name
                assert np.array_equal(case.outputs[~ref_g], ref_y[~ref_g]), case.name
                on = ref_g
            else:
                lins = case.queue_lins
                assert np.array_equal(case.outputs.reshape(-1)[lins], ref_y.reshape(-1)[lins]), case.name
                assert case.counters["gates_on"] == len(lins) and case.counters["base_macs"] == 0
                queued = np.zeros(ref_g.size, dtype=bool)
                queued[lins] = True
                pruned_any |= bool((on.reshape(-1) & ~queued).any())
    assert pruned_any


def _sim_param(sim: str):
    ok, why = simulator_status(sim)
    return pytest.param(sim, marks=pytest.mark.skipif(not ok, reason=f"{sim} unavailable: {why}"), id=sim)


SIMULATORS = [_sim_param("icarus"), _sim_param("verilator")]

needs_rtl = pytest.mark.skipif(not rtl_available(), reason="rtl/generate.py is not there yet")


@pytest.fixture(scope="session")
def cosim_cache() -> Path:
    """Where compiled builds live across sessions (the one build cache, shared with the benchmark)."""
    return default_cache_root()


def _check_model(config: EngineConfig, case: CosimCase) -> None:
    """The expectations themselves: the cycle model against the numpy reference, the closed-form counters
    and the write cycles of the spec's schedule."""
    from sim.reference import tile_reference

    ref_y, ref_g, _ = tile_reference(config, case.tile)
    assert np.array_equal(case.gates, ref_g), f"{case.name}: model gate bits differ from the reference"
    assert np.array_equal(case.outputs, ref_y), f"{case.name}: model outputs differ from the reference"
    assert case.counters == spec_counters(config, case.tile, ref_g), case.name
    np.testing.assert_array_equal(
        case.write_cycle,
        spec_write_cycles(config, case.tile, ref_g),
        err_msg=f"{case.name}: model write cycles differ from the spec's schedule",
    )


@pytest.mark.parametrize("name", list(CONFIGS))
def test_model_matches_spec_reference(name: str) -> None:
    """Cycle model against the numpy reference, the closed-form counters and write cycles of every tile."""
    pytest.importorskip("sim.engine")
    pytest.importorskip("sim.reference")
    for case in _cases(name):
        _check_model(case.layer, case)


def test_cosim_tiles_exercise_input_bank_stalls() -> None:
    """Some co-simulated tiles have phase-1 beats that ask one input bank for two words (rounds that wrap
    an output row or a channel), so the crossbar's arbitration and the stall it causes are checked cycle
    for cycle, not only the conflict-free path; and some have none."""
    from verification.spec_schedule import spec_round_cycles

    stalled, clean = [], []
    for name in CONFIGS:
        for case in _cases(name):
            layer, g = case.layer, case.tile.geometry
            seg = g.segments(layer)
            b1 = layer.kernel**2 * (seg.n_chunks if g.dense else seg.nch_b)
            rounds = -(-g.n_outputs // layer.pes)
            stalls = sum(spec_round_cycles(layer, case.tile, r) for r in range(rounds)) - rounds * b1
            (stalled if stalls else clean).append(f"{name}/{case.name}")
    assert len(stalled) >= 5 and len(clean) >= 5, (stalled, clean)


@needs_rtl
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_engine_cosim(name: str, sim: str, cosim_cache: Path, tmp_path: Path) -> None:
    """Every tile of the configuration, in one simulation: outputs, gates, write cycles, counters and busy
    cycles agree."""
    config = CONFIGS[name]
    cases = _cases(name) + _two_pass_cases(name) + _double_buffer_cases(name)
    result = run_cosim(sim, config, cases, cosim_cache, tmp_path)
    assert result.tests == len(cases)
    if _double_buffer_cases(name):  # transfers did overlap runs
        assert result.overlapped > 0


# ---------------------------------------------------------------------------------------------------------
# A slow host (responses taken late, gaps between load writes) and reset in the middle of a run
# ---------------------------------------------------------------------------------------------------------


def _paced_cases(name: str) -> list[CosimCase]:
    """Tiles of the configuration with the host stalling the streams (CosimCase.resp_stall / load_gap):
    seeded random stalls of 0-7 cycles, fixed patterns, gaps between every load write. The expectations
    are the unstalled model's: pacing must change no value and no cycle count of a run."""
    cases = _cases(name)
    gated = next(c for c in cases if not c.tile.geometry.dense)
    dense = next(c for c in cases if c.tile.geometry.dense)
    large = max(cases, key=lambda c: c.tile.geometry.n_outputs)
    return [
        replace(gated, name=f"{gated.name}, resp held 0-7, load gaps 0-3", resp_stall=7, load_gap=3),
        replace(dense, name=f"{dense.name}, resp held (0,1,7,2)", resp_stall=(0, 1, 7, 2)),
        replace(
            large, name=f"{large.name}, resp held 0-7, load gaps 0-7", resp_stall=7, load_gap=7, stall_seed=2
        ),
        replace(gated, name=f"{gated.name}, load gap 1 before every write", load_gap=(1,)),
        replace(gated, name=f"{gated.name}, restart, resp held 5 each", load="none", resp_stall=(5,)),
    ]


def _reset_cases(name: str) -> list[CosimCase]:
    """Runs aborted by a reset at chosen cycles of the busy period (SETUP's first and second of its P
    cycles, phase 1, phase 2, the last busy
    cycle), each followed by a normal run that must match the model. What the spec requires after reset
    (docs/microarchitecture.md section 4, "Reset"), and what the testbench checks: the engine is idle in
    the cycle after rst falls (busy and done low, load.ready and req.ready high, resp.valid low), done
    never pulses for the aborted run, every counter reads 0; the configuration registers are cleared (so
    the next case writes them again), the buffers keep their data (so "registers" reloads suffice)."""
    cases = _cases(name)
    # a gated tile with a phase 2 of several cycles, and a dense one
    gated = next(c for c in cases if not c.tile.geometry.dense and c.counters["gates_on"] > 0)
    dense = next(c for c in cases if c.tile.geometry.dense)
    # Phase 2 ends with its last beat, the write-back and the drain of its results (at least 3 cycles):
    # cycles - 3 is at the end of phase 2, in its last beat or in the drain.
    g_cycles, d_cycles = gated.counters["cycles"], dense.counters["cycles"]

    def abort(case: CosimCase, at: int, what: str, **knobs) -> CosimCase:
        return replace(case, name=f"{case.name}: reset in {what} (cycle {at})", reset_at=at, **knobs)

    def again(case: CosimCase, load: str) -> CosimCase:
        return replace(case, name=f"{case.name}: after reset, load {load}", load=load)

    return [
        gated,
        abort(gated, 5, "phase 1"),
        again(gated, "registers"),
        abort(gated, g_cycles - 3, "the end of phase 2", reset_cycles=1, resp_stall=3),
        again(dense, "all"),
        abort(dense, 1, "SETUP", load="none"),
        again(dense, "registers"),
        abort(gated, 2, "SETUP's second cycle (the chain half loaded)"),
        again(gated, "registers"),
        abort(gated, g_cycles, "the last busy cycle", reset_cycles=2),
        again(gated, "registers"),
        abort(dense, d_cycles // 2, "phase 1 (dense)"),
        again(gated, "all"),
    ]


PACED_CONFIGS = ["g2_p4_l8_k3", "g1_p3_l4_k3_s2"]


@needs_rtl
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", PACED_CONFIGS[:1])
def test_engine_cosim_slow_host(name: str, sim: str, cosim_cache: Path, tmp_path: Path) -> None:
    """Responses held not-ready 0-7 cycles (the response stays valid and unchanged, req.ready stays low and
    a decoy request offered meanwhile is not taken) and load.valid gaps: every value read back, every write
    cycle and every counter as without stalls (the model's)."""
    cases = _paced_cases(name)
    result = run_cosim(sim, CONFIGS[name], cases, cosim_cache, tmp_path)
    assert result.tests == len(cases)


@needs_rtl
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", PACED_CONFIGS)
def test_engine_cosim_reset_mid_run(name: str, sim: str, cosim_cache: Path, tmp_path: Path) -> None:
    """Reset in the middle of runs (see :func:`_reset_cases`): the engine comes back idle with its counters
    cleared and no done pulse, and the following runs match the model exactly."""
    cases = _reset_cases(name)
    result = run_cosim(sim, CONFIGS[name], cases, cosim_cache, tmp_path)
    assert result.tests == len(cases)


# ---------------------------------------------------------------------------------------------------------
# Tiles drawn by hypothesis
# ---------------------------------------------------------------------------------------------------------

# (configuration, largest c_in, largest c_out, largest h_in / w_in) of the hypothesis test: G = 1 with
# lanes that rarely divide a segment, stride 2 and P = 3; G = 2 with a 5x5 kernel, padding 2 and 16 lanes
# (segments of one or two chunks).
HYPOTHESIS_CONFIGS = {
    "g1_p3_l4_k3_s2": (12, 5, 9),
    "g2_p2_l16_k5_s2": (40, 4, 7),
}


@dataclass(frozen=True)
class DrawnTile:
    """A tile drawn by :func:`drawn_tiles`: its geometry, gate rate and operand seed (what a falsifying
    example prints); :meth:`tile` makes its operands."""

    geometry: TileGeometry
    gate_rate: float | None
    seed: int

    def tile(self, config: EngineConfig) -> Tile:
        return random_tile(config, self.geometry, np.random.default_rng(self.seed), gate_rate=self.gate_rate)


@st.composite
def drawn_tiles(draw, config: EngineConfig, max_c: int, max_c_out: int, max_hw: int) -> DrawnTile:
    """A tile the engine accepts: channels (multiples of G, or a base fraction for G = 1), input size,
    ``pad_top``/``pad_left`` in ``[0, padding]``, output size up to the largest the input allows (often the
    largest), dense or gated, and a gate rate of 0 (all off), 1 (all on), uniform in (0, 1) or None
    (thresholds drawn uniformly)."""
    g, k, s, pad = config.groups, config.kernel, config.stride, config.padding
    if g > 1:
        c_in = g * draw(st.integers(1, max_c // g))
        c_out = g * draw(st.integers(1, max_c_out // g))
        base = 0
    else:
        c_in = draw(st.integers(2, max_c))
        c_out = draw(st.integers(1, max_c_out))
        base = draw(st.integers(1, c_in - 1))
    top, left = draw(st.integers(0, pad)), draw(st.integers(0, pad))
    # At least the first output must read its top-left tap inside the padded tile.
    h_in = draw(st.integers(max(1, k - top - pad), max_hw))
    w_in = draw(st.integers(max(1, k - left - pad), max_hw))
    max_h = conv_output_size(h_in, k, s, top, pad)
    max_w = conv_output_size(w_in, k, s, left, pad)
    h_out = draw(st.one_of(st.just(max_h), st.integers(1, max_h)))
    w_out = draw(st.one_of(st.just(max_w), st.integers(1, max_w)))
    dense = draw(st.booleans())
    rate = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0), st.none()))
    seed = draw(st.integers(0, 2**32 - 1))
    drawn = DrawnTile(TileGeometry(c_in, c_out, h_in, w_in, h_out, w_out, top, left, base, dense), rate, seed)
    try:
        drawn.geometry.check(config)  # before random_tile, which needs a valid segmentation
        drawn.tile(config).check(config)
    except ConfigError:
        assume(False)
    return drawn


_example = itertools.count()


@needs_rtl
@pytest.mark.parametrize("sim", SIMULATORS)
@pytest.mark.parametrize("name", list(HYPOTHESIS_CONFIGS))
# Each example is a whole simulation (seconds), so a few derandomized examples and no shrinking (which
# would run dozens more); a failure names the tile and the falsifying example lists every drawn geometry.
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_engine_cosim_hypothesis(
    name: str, sim: str, data: st.DataObject, cosim_cache: Path, tmp_path: Path
) -> None:
    """4 to 8 tiles drawn by hypothesis, in one simulation, agree with the model in everything."""
    config = CONFIGS[name]
    drawn = data.draw(st.lists(drawn_tiles(config, *HYPOTHESIS_CONFIGS[name]), min_size=4, max_size=8))
    cases = []
    for i, d in enumerate(drawn):
        case = expectations(
            config, f"drawn {i}: {d.geometry}, gate rate {d.gate_rate}, seed {d.seed}", d.tile(config)
        )
        _check_model(config, case)
        cases.append(case)
    result = run_cosim(sim, config, cases, cosim_cache, tmp_path / f"example{next(_example)}")
    assert result.tests == len(cases)


@needs_rtl
@pytest.mark.parametrize("sim", SIMULATORS[:1])
def test_checker_catches_wrong_model(sim: str, cosim_cache: Path, tmp_path: Path) -> None:
    """Expectations with one output word, one cycle count and one write cycle off by one must fail, naming
    each; a tile with nothing perturbed passes."""
    name = "g2_p1_l2_k2_acc64"
    config = CONFIGS[name]
    good = _cases(name)[:4]
    bad0 = _copy_case(good[0])
    co, oy, ox = 1, 2, 3
    bad0.outputs[co, oy, ox] += 1
    bad1 = _copy_case(good[1])
    bad1.counters["cycles"] += 1
    bad2 = _copy_case(good[2])
    wco, woy, wox = 1, 0, 2
    bad2.write_cycle[wco, woy, wox] += 1
    with pytest.raises(CosimFailure) as info:
        run_cosim(sim, config, [bad0, bad1, bad2, good[3]], cosim_cache, tmp_path, waves="never")
    failures = {f["tile"]: f["message"] for f in info.value.failures}
    assert set(failures) == {0, 1, 2}, info.value

    when = int(good[0].write_cycle[co, oy, ox])
    _check_divergence(failures[0], good[0], (co, oy, ox), y_off=1, cycle_off=0)
    assert f"the model writes it in cycle {when} of the run, at " in failures[0], failures[0]

    cycles = good[1].counters["cycles"]
    assert f"counter cycles: expected {cycles + 1} (model), got {cycles} (RTL)" in failures[1], failures[1]
    assert f"monitor counted {cycles} cycles with busy high" in failures[1], failures[1]
    for other in COUNTER_NAMES[1:]:
        assert f"counter {other}:" not in failures[1]
    assert "diverging output" not in failures[1], failures[1]

    _check_divergence(failures[2], good[2], (wco, woy, wox), y_off=0, cycle_off=1)
    y, gate = int(good[2].outputs[wco, woy, wox]), int(good[2].gates[wco, woy, wox])
    when = int(good[2].write_cycle[wco, woy, wox])
    assert f"spec reference y={y} gate={gate} written in cycle {when};" in failures[2], failures[2]
    assert "counter" not in failures[2], failures[2]


def _check_divergence(message: str, good: CosimCase, at: tuple[int, int, int], y_off: int, cycle_off: int):
    """``message`` names output ``at`` as the first diverging one, where the expectations were ``good``'s
    with ``y`` and the write cycle raised by ``y_off`` / ``cycle_off``, and counts one divergence."""
    co, oy, ox = at
    y, gate, when = int(good.outputs[at]), int(good.gates[at]), int(good.write_cycle[at])
    expected = f"expected y={y + y_off} gate={gate} written in cycle {when + cycle_off} (model)"
    got = f"got y={y} gate={gate} written in cycle {when} (RTL"
    assert f"first diverging output (co={co}, oy={oy}, ox={ox}): {expected}, {got}" in message, message
    counts = f"{y_off} of {good.outputs.size} outputs differ in value or gate bit, {cycle_off} in write cycle"
    assert counts in message, message


def _copy_case(case: CosimCase) -> CosimCase:
    return replace(
        case,
        outputs=case.outputs.copy(),
        gates=case.gates.copy(),
        counters=dict(case.counters),
        write_cycle=case.write_cycle.copy(),
    )


# ---------------------------------------------------------------------------------------------------------
# Memories that start undefined, as SRAM does
# ---------------------------------------------------------------------------------------------------------


# Every configuration on Icarus (four-state: X shows); on Verilator (a build of a minute each at -O0) the
# default configuration and the one with the most unusual geometry.
NO_FILL_RUNS = [
    pytest.param(name, sim.values[0], marks=sim.marks, id=f"{name}-{sim.values[0]}")
    for sim in SIMULATORS
    for name in (CONFIGS if sim.values[0] == "icarus" else ("default", "g1_p3_l4_k3_s2"))
]


@needs_rtl
@pytest.mark.parametrize("name, sim", NO_FILL_RUNS)
def test_engine_cosim_without_zero_filled_memories(
    name: str, sim: str, cosim_cache: Path, tmp_path: Path
) -> None:
    """The Verilog with its memories' initial contents removed: on four-state Icarus every value read back
    and every trace-port value the testbench checks is defined (a read of a never-written word shows X); on
    Verilator every undefined bit starts random (seeded), so nothing may depend on zeros."""
    config = CONFIGS[name]
    cases = _cases(name) + _two_pass_cases(name) + _double_buffer_cases(name)
    result = run_cosim(sim, config, cases, cosim_cache, tmp_path, zero_fill=False)
    assert result.tests == len(cases)
