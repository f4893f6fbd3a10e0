"""The whole engine in Amaranth's simulator against the functional reference (small tiles, no Verilog)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.engine import GatedConvEngine
from sim.engine import run_tile
from sim.reference import tile_reference
from spec.config import EngineConfig
from spec.tile import QueueLoad, TileGeometry, random_tile
from verification.amaranth_transport import AmaranthTransport
from verification.driver import EngineDriver, decode_outputs
from verification.layout import banked_index, queue_entries, queue_write_outputs

SMALL = dict(input_depth=512, weight_depth=512, output_depth=256, threshold_depth=32)


def run_engine_amaranth(config: EngineConfig, tiles, layers=None, gating: bool = True):
    """Load, run and unload each tile on one build of ``config`` (``layers``: each tile's layer
    configuration, default the build's; ``gating`` false: the dense baseline).

    Returns per tile ``(y, gate, counters, busy, write_cycle)``: the busy cycles seen and, per output
    entry, the cycle of the run (1 = first busy cycle) in which the trace port last showed it written.
    """
    dut = GatedConvEngine(config, gating=gating)
    results = []

    async def bench(ctx):
        driver = EngineDriver(config, AmaranthTransport(ctx, dut, config.pes))
        for tile, layer in zip(tiles, layers or [config] * len(tiles), strict=True):
            await driver.load_tile(tile, layer=layer)
            run = await driver.run()
            out = await driver.read_outputs(tile.geometry)
            counters = await driver.read_counters()
            write_cycle = np.zeros(tile.geometry.n_outputs, dtype=np.int64)
            writes = {**run.writes, **queue_write_outputs(config, out.gate, run.queue_writes)}
            write_cycle[list(writes)] = list(writes.values())
            results.append((out.y, out.gate, counters, run.busy, write_cycle.reshape(out.y.shape)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results


CASES = [
    # (config overrides, geometry kwargs, gate rate)
    (dict(pes=4, lanes=4, groups=2), dict(c_in=8, c_out=4, h_in=4, w_in=4), 0.5),
    (dict(pes=3, lanes=3, groups=1), dict(c_in=7, c_out=3, h_in=3, w_in=5, base_channels=4), 0.5),
    (dict(pes=4, lanes=2, groups=4, kernel=1, padding=0), dict(c_in=8, c_out=8, h_in=3, w_in=3), 0.3),
    (dict(pes=2, lanes=4, groups=2, stride=2), dict(c_in=4, c_out=2, h_in=5, w_in=5), 1.0),
    (dict(pes=4, lanes=4, groups=2), dict(c_in=8, c_out=4, h_in=3, w_in=3), 0.0),
    (dict(pes=4, lanes=4, groups=2), dict(c_in=8, c_out=4, h_in=3, w_in=3, dense=True), 0.5),
]


@pytest.mark.parametrize("overrides,geom,rate", CASES)
def test_engine_matches_reference(overrides, geom, rate):
    config = EngineConfig(**{**SMALL, "kernel": 3, "stride": 1, "padding": 1, **overrides})
    geometry = TileGeometry.full_layer(config, **geom)
    tile = random_tile(config, geometry, np.random.default_rng(7), gate_rate=rate)
    y, gate, counters, busy, write_cycle = run_engine_amaranth(config, [tile])[0]
    # Functional level: the plain-numpy reference.
    ref_y, ref_gate, _ = tile_reference(config, tile)
    np.testing.assert_array_equal(gate, ref_gate)
    np.testing.assert_array_equal(y, ref_y)
    assert counters["cycles"] == busy
    assert counters["gates_on"] == int(ref_gate.sum())
    assert counters["idle_pe_cycles"] == config.pes * counters["cycles"] - counters["busy_pe_cycles"]
    # Cycle level: the model's counters and the cycle of every output write.
    model = run_tile(config, tile)
    assert counters == model.counters
    np.testing.assert_array_equal(write_cycle, model.write_cycle)


# (kernel, stride, padding, groups, geometry kwargs, gate rate): layers of different shapes on one build.
LAYERS = [
    (3, 1, 1, 2, dict(c_in=8, c_out=4, h_in=4, w_in=4), 0.5),
    (5, 2, 2, 4, dict(c_in=8, c_out=8, h_in=7, w_in=6), 0.4),
    (1, 2, 0, 1, dict(c_in=6, c_out=3, h_in=5, w_in=5, base_channels=4, dense=True), 0.5),
    (3, 2, 1, 3, dict(c_in=9, c_out=6, h_in=5, w_in=4), 0.6),
    (1, 1, 0, 4, dict(c_in=8, c_out=4, h_in=3, w_in=3), 1.0),
    (5, 1, 2, 1, dict(c_in=5, c_out=2, h_in=4, w_in=5, base_channels=3), 0.5),
]


def test_one_build_runs_every_layer_shape():
    """Kernel, stride, padding and groups are run-time registers: one elaboration runs them all, back to
    back, each equal to the model run with the layer's own configuration."""
    build = EngineConfig(
        **{**SMALL, "weight_depth": 1024}, pes=4, lanes=4, kernel=5, stride=2, padding=2, groups=4
    )
    rng = np.random.default_rng(11)
    layers, tiles = [], []
    for k, s, p, g, geom, rate in LAYERS:
        layer = build.for_layer(kernel=k, stride=s, padding=p, groups=g)
        layers.append(layer)
        tiles.append(random_tile(layer, TileGeometry.full_layer(layer, **geom), rng, gate_rate=rate))
    results = run_engine_amaranth(build, tiles, layers)
    for layer, tile, (y, gate, counters, busy, write_cycle) in zip(layers, tiles, results, strict=True):
        model = run_tile(layer, tile)
        np.testing.assert_array_equal(y, model.outputs)
        np.testing.assert_array_equal(gate, model.gates)
        assert counters == model.counters and counters["cycles"] == busy
        np.testing.assert_array_equal(write_cycle, model.write_cycle)
        ref_y, ref_gate, _ = tile_reference(layer, tile)
        np.testing.assert_array_equal(y, ref_y)


def test_dense_baseline_build_runs_dense_layers():
    """The build without gating hardware (the dense baseline) runs every layer shape as the gated build
    runs it in dense mode: the model's dense outputs, counters and write cycles, whatever the tile asks."""
    build = EngineConfig(
        **{**SMALL, "weight_depth": 1024}, pes=4, lanes=4, kernel=5, stride=2, padding=2, groups=4
    )
    rng = np.random.default_rng(5)
    layers, tiles = [], []
    for k, s, p, g, geom, _rate in LAYERS[:4]:
        layer = build.for_layer(kernel=k, stride=s, padding=p, groups=g)
        geometry = TileGeometry.full_layer(layer, **{**geom, "dense": True})
        layers.append(layer)
        tiles.append(random_tile(layer, geometry, rng, gate_rate=0.5))
    results = run_engine_amaranth(build, tiles, layers, gating=False)
    for layer, tile, (y, gate, counters, busy, write_cycle) in zip(layers, tiles, results, strict=True):
        model = run_tile(layer, tile)
        assert counters["cond_macs"] == 0 and gate.all()
        np.testing.assert_array_equal(y, model.outputs)
        assert counters == model.counters and counters["cycles"] == busy
        np.testing.assert_array_equal(write_cycle, model.write_cycle)
        np.testing.assert_array_equal(y, tile_reference(layer, tile)[0])


def test_dense_baseline_leaves_out_the_gating_hardware():
    """No threshold buffer, comparator, compactor or work queue in the baseline; its output banks hold
    ``acc_width``-bit words (no gate bit)."""
    from amaranth.hdl import Fragment, Shape, signed

    config = EngineConfig(**SMALL, pes=2, lanes=2, kernel=3, padding=1)
    parts = {}
    for gating in (True, False):
        fragment = Fragment.get(GatedConvEngine(config, gating=gating), None)
        parts[gating] = {name: sub for sub, name, *_ in fragment.subfragments}
    gating_parts = {"tbuf", "queue", "comparator", "compactor"}
    assert gating_parts <= parts[True].keys()
    assert not gating_parts & parts[False].keys()
    for b in range(config.pes):
        assert Shape.cast(parts[True][f"obuf{b}"]._data.shape).width == config.acc_width + 1  # y, gate
        assert parts[False][f"obuf{b}"]._data.shape == signed(config.acc_width)


def run_two_pass_amaranth(build: EngineConfig, layer: EngineConfig, before, tile, keep):
    """On one build: a full run of ``before`` (which leaves its weights in the buffers), then ``tile`` in two
    passes: PHASE1 (base-path weights only), the host reads the output buffer and queues the gated-on
    activations of the channels ``keep``, then PHASE2 with those channels' conditional-path weights.

    Returns ``(pass1, pass2, queue)``: pass 1 as ``(y, gate, counters, busy, write_cycle)``; pass 2 as
    ``(results, counters, busy, write_cycle)`` by queue entry, and the queue the host wrote.
    """
    from spec.protocol import RunMode
    from spec.tile import QueueLoad
    from verification.layout import decode_output

    dut = GatedConvEngine(build)
    got = {}

    async def bench(ctx):
        driver = EngineDriver(build, AmaranthTransport(ctx, dut, build.pes))
        await driver.load_tile(before, layer=layer)
        await driver.run()
        await driver.load_tile(tile, layer=layer, run=RunMode.PHASE1)
        run = await driver.run()
        words = await driver.read_words(range(tile.geometry.n_outputs))
        out = decode_outputs(build, tile.geometry, [words[i] for i in range(len(words))])
        counters = await driver.read_counters()
        cycle = np.zeros(tile.geometry.n_outputs, dtype=np.int64)
        cycle[list(run.writes)] = list(run.writes.values())
        got["pass1"] = (out.y, out.gate, counters, run.busy, cycle.reshape(out.y.shape), run.queue_writes)
        got["entries"] = await driver.read_queue_entries(counters["gates_on"])
        queue = QueueLoad.after_phase1(out.y, out.gate, keep)
        await driver.load_tile(tile, layer=layer, run=RunMode.PHASE2, queue=queue)
        run = await driver.run()
        results = [decode_output(build, w)[0] for w in await driver.read_queue(len(queue.lins))]
        cycle = np.zeros(len(queue.lins), dtype=np.int64)
        for addr, c in run.queue_writes.items():
            cycle[banked_index(build, addr)] = c
        after = await driver.read_words(range(tile.geometry.n_outputs))
        got["pass2"] = (np.array(results), await driver.read_counters(), run.busy, cycle, run.writes)
        got["queue"], got["untouched"] = queue, after == words

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize(
    "k,s,p,g,geom",
    [
        (3, 1, 1, 2, dict(c_in=8, c_out=8, h_in=4, w_in=4)),
        (5, 2, 2, 1, dict(c_in=6, c_out=6, h_in=7, w_in=6, base_channels=2)),
    ],
)
def test_two_pass_runs_match_the_model(k, s, p, g, geom):
    """Two-pass runs (RunMode PHASE1, then PHASE2 on the host's queue without the pruned channels): each
    pass equals the model's run of that mode in values, counters and write cycles; the kept activations'
    results are the reference's outputs, phase 2 leaves the output buffer alone, and pass 1 plus pass 2
    take one cycle more than the full run when nothing is pruned."""
    from spec.protocol import RunMode

    build = EngineConfig(
        **{**SMALL, "weight_depth": 1024}, pes=4, lanes=4, kernel=5, stride=2, padding=2, groups=4
    )
    layer = build.for_layer(kernel=k, stride=s, padding=p, groups=g)
    geometry = TileGeometry.full_layer(layer, **geom)
    rng = np.random.default_rng(23)
    before = random_tile(layer, geometry, rng, gate_rate=0.5)
    tile = random_tile(layer, geometry, rng, gate_rate=0.6)
    ref_y, ref_gate, _ = tile_reference(layer, tile)
    keep = rng.random(geometry.c_out) < 0.5
    keep[0], keep[1] = True, False  # (channels 0 and 1 have gates on at this rate and seed)
    assert ref_gate[0].any() and ref_gate[1].any()
    got = run_two_pass_amaranth(build, layer, before, tile, keep)

    y, gate, counters, busy, write_cycle, queue_writes = got["pass1"]
    model1 = run_tile(layer, tile, run=RunMode.PHASE1)
    np.testing.assert_array_equal(gate, ref_gate)
    np.testing.assert_array_equal(y, model1.outputs)
    np.testing.assert_array_equal(y[~gate], ref_y[~gate])  # gated off: p is the output
    assert counters == model1.counters and counters["cycles"] == busy and not queue_writes
    assert counters["cond_macs"] == 0 and counters["gates_on"] == int(ref_gate.sum())
    np.testing.assert_array_equal(write_cycle, model1.write_cycle)
    # The queue phase 1 left, read whole: the entries the host packs for the same activations.
    host = queue_entries(build, layer, geometry, QueueLoad.after_phase1(y, gate))
    assert got["entries"] == list(host)

    results, counters, busy, cycle, writes = got["pass2"]
    queue = got["queue"]
    assert len(queue.lins) and not writes and got["untouched"]
    model2 = run_tile(layer, tile, run=RunMode.PHASE2, queue=queue)
    np.testing.assert_array_equal(results, model2.outputs.reshape(-1)[queue.lins])
    np.testing.assert_array_equal(results, ref_y.reshape(-1)[queue.lins])
    assert counters == model2.counters and counters["cycles"] == busy
    assert counters["base_macs"] == 0 and counters["gates_on"] == len(queue.lins)
    np.testing.assert_array_equal(cycle, model2.write_cycle.reshape(-1)[queue.lins])

    full = run_tile(layer, tile)
    nothing_pruned = run_tile(layer, tile, run=RunMode.PHASE2, queue=QueueLoad.after_phase1(y, gate))
    assert model1.counters["cycles"] + nothing_pruned.counters["cycles"] == full.counters["cycles"] + 1


def test_double_buffered_tiles_load_and_unload_during_a_run():
    """Tile A runs in half 0 while the host writes tile B (registers into the shadow set, buffers into
    half 1): every write is taken at once (ready while busy), and A's outputs and counters are the model's.
    Then B runs in half 1 while the host reads A's outputs from half 0 (taken while busy, unchanged), and B
    equals the model too. A buffer write into the running half waits until the run is over."""
    from verification.layout import load_writes, pack_payloads

    config = EngineConfig(**{**SMALL, "kernel": 3, "stride": 1, "padding": 1}, pes=4, lanes=4, groups=2)
    geometry = TileGeometry.full_layer(config, c_in=8, c_out=4, h_in=5, w_in=5)
    rng = np.random.default_rng(31)
    tile_a, tile_b = (random_tile(config, geometry, rng, gate_rate=0.5) for _ in range(2))
    dut = GatedConvEngine(config)
    got = {}

    async def bench(ctx):
        transport = AmaranthTransport(ctx, dut, config.pes)
        driver = EngineDriver(config, transport)
        await driver.load_tile(tile_a, half=0)
        await transport.start()
        waited = 0  # cycles a write to the idle half found ready low while A ran
        for payload in pack_payloads(config, load_writes(config, tile_b, half=1)):
            ctx.set(dut.load.valid, 1)
            ctx.set(dut.load.payload.as_value(), payload)
            while not ctx.get(dut.load.ready):
                waited += 1
                await ctx.tick()
            await ctx.tick()
        ctx.set(dut.load.valid, 0)
        got["busy_after_load"] = ctx.get(dut.busy)
        got["waited"] = waited
        # A write into the running half (half 0) is not taken while busy.
        ctx.set(dut.load.valid, 1)
        ctx.set(dut.load.payload.as_value(), pack_payloads(config, load_writes(config, tile_a, half=0))[-1])
        got["ready_same_half"] = ctx.get(dut.load.ready)
        ctx.set(dut.load.valid, 0)
        while ctx.get(dut.busy):
            await ctx.tick()
        got["a"] = await driver.read_outputs(geometry, half=0)
        got["a_counters"] = await driver.read_counters()
        await transport.start()
        got["a_again"] = await driver.read_outputs(geometry, half=0)  # while B runs
        got["busy_after_read"] = ctx.get(dut.busy)
        while ctx.get(dut.busy):
            await ctx.tick()
        got["b"] = await driver.read_outputs(geometry, half=1)
        got["b_counters"] = await driver.read_counters()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got["busy_after_load"] and got["busy_after_read"], "the transfers did not overlap the runs"
    assert got["waited"] == 0 and not got["ready_same_half"]
    for name, tile in (("a", tile_a), ("b", tile_b)):
        model = run_tile(config, tile)
        np.testing.assert_array_equal(got[name].y, model.outputs)
        np.testing.assert_array_equal(got[name].gate, model.gates)
        assert got[f"{name}_counters"] == model.counters
    np.testing.assert_array_equal(got["a_again"].y, got["a"].y)
