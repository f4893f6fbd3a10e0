"""The network runner (sim/network.py, sim/traffic.py, sim/tiling.py) against independent counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.network import run_network
from sim.reference import conv2d
from sim.tiling import plan_layer
from sim.traffic import Step, chain_cycles
from spec.config import ConfigError, EngineConfig
from spec.protocol import COUNTER_NAMES
from spec.system import DramConfig, ReportOptions, SystemConfig
from tests.test_trace import N, small_trace
from trace_format import load_trace, save_trace

BIG = EngineConfig(pes=4, lanes=2)  # every layer of the small trace in one tile
SMALL = EngineConfig(pes=2, lanes=2, input_depth=40, weight_depth=64, output_depth=24, threshold_depth=8)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    meta, arrays = small_trace(seed=3)
    path = tmp_path_factory.mktemp("net") / "tiny.npz"
    save_trace(path, meta, arrays)
    return load_trace(path)


def numpy_conv(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """The functional reference's convolution (sim/reference.py, stride 1), int64."""
    return conv2d(x, w, 1, pad)


def expected_gates(trace, sample: int) -> np.ndarray:
    """The integer gates p > tau of the small trace's gated conv (G = 2: own half of the inputs)."""
    layer = trace["conv"]
    w = layer.weights.astype(np.int64).copy()
    w[:2, 2:] = 0  # output group 0 reads input group 0 on its base path
    w[2:, :2] = 0
    p = numpy_conv(layer.inputs[sample], w, 1)
    return p > layer.thresholds.astype(np.int64)[:, None, None]


@pytest.mark.parametrize("engine", [BIG, SMALL], ids=["one-tile", "many-tiles"])
def test_macs_outputs_and_unmapped_layers(trace, engine):
    run = run_network(trace, SystemConfig(engine=engine), check=True)
    by_name = {lr.name: lr for lr in run.layers}
    assert [lr.name for lr in run.layers] == ["conv", "pool", "flatten", "fc"]
    assert not by_name["pool"].mapped and "not an engine layer" in by_name["pool"].reason
    assert not by_name["flatten"].mapped
    conv, fc = by_name["conv"], by_name["fc"]
    assert conv.outputs_match and fc.outputs_match

    # Dense MACs: k^2 * c_in * c_out * h_out * w_out = 9*4*4*36; fc 36*3.
    assert conv.designs["dense"].macs == 9 * 4 * 4 * 36
    assert fc.designs["dense"].macs == fc.designs["gated"].macs == 108
    # Gated: every output pays its base half (2 channels * 9 taps), gated-on ones the other half too.
    on = np.array([expected_gates(trace, s).sum() for s in range(N)])
    assert conv.designs["gated"].macs == pytest.approx(np.mean(4 * 36 * 18 + on * 18))
    assert conv.gate_on_fraction == pytest.approx(np.mean(on) / (4 * 36))


def test_tiles_cover_every_output_once():
    cfg = dataclasses.replace(SMALL, kernel=3, stride=1, padding=1, groups=2)
    plan = plan_layer(cfg, 4, 4, 6, 6, 6, 6, padding=1)
    assert len(plan) > 2
    hits = np.zeros((4, 6, 6), dtype=int)
    for t in plan:
        hits[list(t.channels), t.r0 : t.r1, t.x0_out : t.x1_out] += 1
        seg = t.geometry.check(cfg)  # fits the buffers
        assert seg.n_chunks * t.geometry.h_in * t.geometry.w_in <= cfg.input_depth
    assert (hits == 1).all()


def test_traffic_one_tile_by_hand(trace):
    run = run_network(trace, SystemConfig(engine=BIG), samples=1)
    conv = next(lr for lr in run.layers if lr.name == "conv")
    fc = next(lr for lr in run.layers if lr.name == "fc")
    assert conv.tiles == 1 and fc.tiles == 1
    dense = conv.designs["dense"].traffic.bytes
    assert dense == {"weights": 144, "params": 4 * 8, "inputs": 144, "outputs": 144, "psum_spill": 0}
    gated = conv.designs["gated"].traffic.bytes
    assert gated["params"] == 4 * (8 + 4)  # + a 32-bit threshold per channel
    assert fc.designs["dense"].traffic.bytes == {
        "weights": 108,
        "params": 24,
        "inputs": 36,
        "outputs": 3,
        "psum_spill": 0,
    }


def test_traffic_halo_rereads(trace):
    """Many row blocks: each tile reads the input rows its outputs need, halo included."""
    run = run_network(trace, SystemConfig(engine=SMALL), samples=1)
    conv = next(lr for lr in run.layers if lr.name == "conv")
    cfg = dataclasses.replace(SMALL, kernel=3, stride=1, padding=1, groups=2)
    plan = plan_layer(cfg, 4, 4, 6, 6, 6, 6, padding=1)
    expected_inputs = 0
    blocks = {(t.r0, t.r1, t.x0_out, t.x1_out) for t in plan}
    # Inputs stationary or weights stationary: either way each spatial block's inputs are read at least once.
    for r0, r1, x0, x1 in blocks:
        rows = min(6, r1 + 1) - max(0, r0 - 1)
        cols = min(6, x1 + 1) - max(0, x0 - 1)
        expected_inputs += 4 * rows * cols
    got = conv.designs["dense"].traffic
    reads_per_block = got.bytes["inputs"] / expected_inputs
    assert reads_per_block in (1.0, plan.n_chan_blocks)
    assert got.input_rereads == got.bytes["inputs"] - 4 * 36


def test_pruning_everything_leaves_the_base_path(trace):
    cfg = SystemConfig(engine=BIG, report=ReportOptions(prune_threshold=1.0))
    run = run_network(trace, cfg)
    conv = next(lr for lr in run.layers if lr.name == "conv")
    pruned = conv.designs["pruned"]
    assert conv.pruned_channel_fraction == 1.0
    assert pruned.counters["cond_macs"] == 0
    assert pruned.macs == 4 * 36 * 18
    assert pruned.traffic.bytes["weights"] == 4 * 2 * 9  # base halves only
    # Threshold 0 prunes only channels with no gate on: the MACs equal the gated design's.
    run0 = run_network(trace, dataclasses.replace(cfg, report=ReportOptions(prune_threshold=0.0)))
    conv0 = next(lr for lr in run0.layers if lr.name == "conv")
    assert conv0.designs["pruned"].macs == conv0.designs["gated"].macs


def test_chain_cycles_by_hand():
    dram = DramConfig(bytes_per_cycle=10.0, latency_cycles=5)
    a = [Step(100, [50], [100], [20]), Step(40, [], [100], [20])]
    b = [Step(30, [200], [10], [10])]
    got = chain_cycles([a, b], dram)
    # Layer a: load(0) = (5+5) + (5+10) = 25; stage 0: max(100, load(1) = 15) = 100;
    # stage 1 (last of a): max(40, weights of b (5+20) + store(0) (5+2)) = 40.
    # Layer b: exposed store(1) (7) + inputs of b (5+1) = 13; its stage: max(30, 0) + store (5+1) = 36.
    assert got == pytest.approx([25 + 100 + 40, 13 + 36])
    assert chain_cycles([], dram) == []
    # The streams move one word per cycle (weight, input and store words as the last three fields).
    a = [Step(100, [50], [100], [20], 10, 20, 60), Step(40, [], [100], [20], 70, 50, 5)]
    b = [Step(30, [200], [10], [10], 90, 30, 8)]
    # Layer a: first loads max(25, 10 + 20) = 30; stage 0: 120; stage 1: max(40, 25 + 7, 90, 60) = 90.
    # Layer b: max(7, 5) + max(6, 30) = 37; its stage: max(30, 0, 0) + max(6, 8) = 38.
    assert chain_cycles([a, b], dram) == pytest.approx([30 + 120 + 90, 37 + 38])


def test_memory_bound_layer_takes_transfer_time(trace):
    slow = SystemConfig(engine=BIG, dram=DramConfig(bytes_per_cycle=0.01, latency_cycles=0))
    run = run_network(trace, slow, samples=1)
    # One DRAM channel: the network cannot take less than its bytes over the bandwidth.
    for design in ("dense", "gated", "pruned"):
        runs = [lr.designs[design] for lr in run.mapped()]
        total_bytes = sum(r.traffic.total for r in runs)
        assert sum(r.cycles for r in runs) >= total_bytes / 0.01 - 1e-6
        assert sum(r.cycles for r in runs) > 10 * sum(r.compute_cycles for r in runs)


def test_deterministic_and_sample_bounds(trace):
    a = run_network(trace, SystemConfig(engine=SMALL))
    b = run_network(trace, SystemConfig(engine=SMALL))
    for la, lb in zip(a.layers, b.layers, strict=True):
        for d in la.designs:
            assert la.designs[d].cycles == lb.designs[d].cycles
            assert la.designs[d].traffic.bytes == lb.designs[d].traffic.bytes
    with pytest.raises(ConfigError, match="samples"):
        run_network(trace, samples=N + 1)


def test_buffers_too_small_name_the_layer(trace):
    tiny = SystemConfig(engine=EngineConfig(pes=2, lanes=2, input_depth=2, weight_depth=4, output_depth=1))
    with pytest.raises(ConfigError, match="conv"):
        run_network(trace, tiny)


def _chain_reference(layers: list[list[Step]], dram) -> list[float]:
    """chain_cycles's rule walked tile by tile (the runner's version is vectorized)."""

    def t(parts):
        return sum(dram.transfer_cycles(b) for b in parts)

    flat = [(li, step) for li, steps in enumerate(layers) for step in steps]
    out = [0.0] * len(layers)
    if not flat:
        return out
    first = flat[0][1]
    out[flat[0][0]] += max(
        t(first.weight_loads) + t(first.input_loads), first.weight_words + first.input_words
    )
    prev_store = prev_words = 0.0
    for i, (li, step) in enumerate(flat):
        if i + 1 == len(flat):
            out[li] += max(step.compute, prev_store, prev_words) + max(t(step.stores), step.store_words)
            break
        nli, nxt = flat[i + 1]
        if nli == li:
            out[li] += max(
                step.compute,
                t(nxt.weight_loads) + t(nxt.input_loads) + prev_store,
                nxt.weight_words + nxt.input_words,
                prev_words,
            )
            prev_store, prev_words = t(step.stores), step.store_words
        else:
            out[li] += max(step.compute, t(nxt.weight_loads) + prev_store, nxt.weight_words, prev_words)
            out[nli] += max(t(step.stores), step.store_words) + max(t(nxt.input_loads), nxt.input_words)
            prev_store = prev_words = 0.0
    return out


@pytest.mark.parametrize("seed", range(5))
def test_chain_cycles_against_a_tile_by_tile_walk(seed):
    rng = np.random.default_rng(seed)
    dram = DramConfig(bytes_per_cycle=float(rng.uniform(1, 32)), latency_cycles=int(rng.integers(0, 200)))

    def entries(most):
        return [float(b) for b in rng.integers(0, 5000, rng.integers(0, most + 1))]

    # Some layers empty (skipped by the chain), some with one tile.
    def words():
        return float(rng.integers(0, 3000))

    layers = [
        [
            Step(float(rng.integers(0, 4000)), entries(2), entries(3), entries(3), words(), words(), words())
            for _ in range(n)
        ]
        for n in rng.integers(0, 6, 7)
    ]
    assert chain_cycles(layers, dram) == pytest.approx(_chain_reference(layers, dram), rel=1e-12)


def test_counters_do_not_depend_on_computing_outputs(trace):
    """The report computes no output values unless asked (check, zero compression): same cycles and bytes."""
    lean = run_network(trace, SystemConfig(engine=SMALL))
    full = run_network(trace, SystemConfig(engine=SMALL), check=True)
    # Zero compression moves fewer bytes (other cycles), but the engine's work and the plain bytes stay.
    zc = run_network(trace, SystemConfig(engine=SMALL, report=ReportOptions(zero_compression=True)))
    for la, lb, lz in zip(lean.mapped(), full.mapped(), zc.mapped(), strict=True):
        assert lb.outputs_match
        for d in la.designs:
            assert la.designs[d].counters == lb.designs[d].counters == lz.designs[d].counters
            assert la.designs[d].cycles == lb.designs[d].cycles
            assert la.designs[d].traffic.bytes == lb.designs[d].traffic.bytes == lz.designs[d].traffic.bytes


def test_dense_baseline_equals_every_tile_run_in_dense_mode(trace):
    """The baseline runs one tile per distinct geometry: its sums equal running every tile in full."""
    from sim.engine import run_tile
    from sim.network import engine_config_for
    from spec.protocol import COUNTER_NAMES
    from spec.tile import Tile

    run = run_network(trace, SystemConfig(engine=SMALL))
    repeated = 0
    for lr in run.mapped():
        layer = trace[lr.name]
        cfg, base = engine_config_for(SMALL, layer)
        m = layer.meta
        plan = plan_layer(cfg, m.c_in, m.c_out, m.h, m.w, m.h_out, m.w_out, base, cfg.padding)
        repeated += len({t.geometry for t in plan}) < len(plan)
        x = layer.inputs[0].reshape(layer.meta.shape_in)
        w = layer.weights.reshape(layer.meta.c_out, layer.meta.c_in, cfg.kernel, cfg.kernel)
        total = dict.fromkeys(COUNTER_NAMES, 0)
        for t in plan:
            tile = Tile(
                dataclasses.replace(t.geometry, dense=True),
                x[:, t.y0 : t.y1, t.x0 : t.x1],
                w[list(t.channels)],
                np.zeros(len(t.channels), dtype=np.int64),
            )
            for name, v in run_tile(cfg, tile).counters.items():
                total[name] += v
        assert lr.designs["dense"].counters == total
    assert repeated  # some layer has tiles of one geometry: the shortcut is exercised


@pytest.mark.parametrize("seed", range(3))
def test_two_pass_counters_shortcut_is_the_two_runs(seed):
    """A tile without a pruned channel that has a gate on: the shortcut from the full run's counters equals
    running PHASE1 and PHASE2 through the model; with one, the two runs are taken (and phase 2 shrinks)."""
    from sim.engine import run_tile
    from sim.network import two_pass_counters
    from spec.tile import TileGeometry, random_tile

    cfg = EngineConfig(pes=4, lanes=4, groups=2, kernel=3, padding=1, output_depth=512, threshold_depth=32)
    geometry = TileGeometry.full_layer(cfg, c_in=8, c_out=6, h_in=5, w_in=6)
    tile = random_tile(cfg, geometry, np.random.default_rng(seed), gate_rate=0.4)
    full = run_tile(cfg, tile)
    counters = np.array(list(full.counters.values()))
    keep = np.ones(6, dtype=bool)
    assert (
        two_pass_counters(cfg, tile, keep, counters, full.gates) == two_pass_counters(cfg, tile, keep)
    ).all()
    keep[int(np.flatnonzero(full.gates.any(axis=(1, 2)))[0])] = False
    pruned = two_pass_counters(cfg, tile, keep, counters, full.gates)
    assert (pruned == two_pass_counters(cfg, tile, keep)).all()
    assert pruned[COUNTER_NAMES.index("cond_macs")] < counters[COUNTER_NAMES.index("cond_macs")]
