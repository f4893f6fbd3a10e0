"""Amaranth-simulator unit tests of the engine's blocks (no external simulator)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.compactor import GateCompactor
from rtl.comparator import ThresholdComparator
from rtl.coords import CoordinateChain
from rtl.counters import PerfCounters
from rtl.pe import ProcessingElement
from spec.config import EngineConfig

SEED = 1234


def _run(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def _pack(values, width: int) -> int:
    word = 0
    for i, v in enumerate(values):
        word |= (int(v) & ((1 << width) - 1)) << (i * width)
    return word


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_pe_accumulates_masked_lanes(lanes):
    cfg = EngineConfig(lanes=lanes)
    dut = ProcessingElement(cfg)
    rng = np.random.default_rng(SEED + lanes)
    beats = []
    for _ in range(40):
        x = rng.integers(-128, 128, lanes)
        w = rng.integers(-128, 128, lanes)
        beats.append(
            dict(
                x=x,
                w=w,
                lane_en=int(rng.integers(0, 1 << lanes)),  # any subset (the MAC array sends a prefix)
                inside=int(rng.random() < 0.8),
                first=int(rng.random() < 0.2),
                init=int(rng.integers(-(1 << 20), 1 << 20)),
                en=int(rng.random() < 0.9),
            )
        )

    async def bench(ctx):
        acc = 0
        for b in beats:
            ctx.set(dut.x, _pack(b["x"], 8))
            ctx.set(dut.w, _pack(b["w"], 8))
            for name in ("lane_en", "inside", "first", "init", "en"):
                ctx.set(getattr(dut, name), b[name])
            await ctx.tick()
            if b["en"]:
                on = [(b["lane_en"] >> lane) & 1 for lane in range(lanes)]
                dot = int(np.dot(b["x"] * on, b["w"])) if b["inside"] else 0
                acc = (b["init"] if b["first"] else acc) + dot
            assert ctx.get(dut.acc) == acc

    _run(dut, bench)


def test_comparator_is_signed_strict_greater():
    cfg = EngineConfig(pes=4)
    dut = ThresholdComparator(cfg)
    cases = [(5, 4), (4, 4), (-3, -4), (-4, -3), (-(1 << 31), (1 << 31) - 1), ((1 << 31) - 1, -(1 << 31))]

    async def bench(ctx):
        for k in range(0, len(cases), 4):
            chunk = (cases[k : k + 4] + [(0, 0)] * 4)[:4]
            for i, (p, t) in enumerate(chunk):
                ctx.set(dut.psum[i], p)
                ctx.set(dut.threshold[i], t)
            await ctx.delay(1e-7)
            expect = sum((1 << i) for i, (p, t) in enumerate(chunk) if p > t)
            assert ctx.get(dut.gate) == expect

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


def test_compactor_writes_gated_on_pes_densely_in_order():
    cfg = EngineConfig(pes=6, output_depth=64)
    dut = GateCompactor(cfg)
    rng = np.random.default_rng(SEED)

    async def bench(ctx):
        for _ in range(50):
            valid, gate = int(rng.integers(0, 64)), int(rng.integers(0, 64))
            ctx.set(dut.valid, valid)
            ctx.set(dut.gate, gate)
            await ctx.delay(1e-7)
            taken = [i for i in range(6) if (valid >> i) & 1 and (gate >> i) & 1]
            assert ctx.get(dut.count) == len(taken)
            assert ctx.get(dut.write) == sum(1 << i for i in taken)
            for pos, i in enumerate(taken):
                assert ctx.get(dut.offset[i]) == pos

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("pes,c_out,h,w,groups", [(4, 4, 3, 5, 2), (3, 6, 2, 2, 3), (8, 2, 1, 1, 1)])
def test_coordinate_chain_enumerates_activations(pes, c_out, h, w, groups):
    cfg = EngineConfig(pes=pes, output_depth=256)
    dut = CoordinateChain(cfg)
    n = c_out * h * w
    rounds = -(-n // pes)

    async def bench(ctx):
        ctx.set(dut.h_out, h)
        ctx.set(dut.w_out, w)
        ctx.set(dut.out_per_group, c_out // groups)
        ctx.set(dut.init, 1)
        for _ in range(pes):
            await ctx.tick()
        ctx.set(dut.init, 0)
        for r in range(rounds):
            for i in range(pes):
                a = r * pes + i
                if a >= n:
                    continue
                co, oy, ox = np.unravel_index(a, (c_out, h, w))
                got = ctx.get(dut.coords[i])
                assert (got.lin, got.co, got.oy, got.ox, got.g) == (a, co, oy, ox, co // (c_out // groups))
            ctx.set(dut.advance, 1)
            await ctx.tick()
            ctx.set(dut.advance, 0)

    _run(dut, bench)


def test_counters_tally_a_run():
    cfg = EngineConfig(pes=4, lanes=8)
    dut = PerfCounters(cfg)
    rng = np.random.default_rng(SEED)
    script = [
        dict(
            busy=int(rng.random() < 0.9),
            issue=int(rng.random() < 0.7),
            phase2=int(rng.random() < 0.5),
            valid_pes=int(rng.integers(0, 5)),
            lanes=int(rng.integers(0, 9)),
        )
        for _ in range(100)
    ]

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        tally = dict(cycles=0, base=0, cond=0, busy_pe=0, stalls=0)
        for s in script:
            for k, v in s.items():
                ctx.set(getattr(dut, k), v)
            await ctx.tick()
            if s["busy"]:
                tally["cycles"] += 1
                if s["issue"]:
                    tally["busy_pe"] += s["valid_pes"]
                    tally["cond" if s["phase2"] else "base"] += s["valid_pes"] * s["lanes"]
                else:
                    tally["stalls"] += 1
        ctx.set(dut.gates_on, 17)
        await ctx.delay(1e-7)
        got = [ctx.get(dut.value[i]) for i in range(7)]
        assert got == [
            tally["cycles"],
            tally["base"],
            tally["cond"],
            tally["busy_pe"],
            4 * tally["cycles"] - tally["busy_pe"],
            tally["stalls"],
            17,
        ]

    _run(dut, bench)


@pytest.mark.parametrize("pes,depth", [(8, 64), (3, 20), (5, 23), (1, 6)])
def test_work_queue_appends_in_order_and_reads_rows_of_p(pes, depth):
    """Random rounds append 0..P entries at the tail (consecutive entries: distinct banks through the
    rotator); then every row reads back entries row·P + i in bank i, as a plain list says, while the row
    before is rewritten in the same cycle (phase 2's write-back); the rewrites read back too."""
    from rtl.work_queue import WorkQueue

    cfg = EngineConfig(pes=pes, output_depth=depth)
    dut = WorkQueue(cfg, 12)
    rng = np.random.default_rng(SEED + pes)
    assert dut.rows == -(-depth // pes)

    async def bench(ctx):
        for trial in range(2):  # the second time after `clear`: the tail starts again at entry 0
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            queue = []
            while len(queue) < depth:
                writers = [i for i in range(pes) if rng.random() < 0.6][: depth - len(queue)]
                ctx.set(dut.write, sum(1 << i for i in writers))
                ctx.set(dut.count, len(writers))
                for pos, i in enumerate(writers):
                    value = int(rng.integers(0, 1 << 12))
                    ctx.set(dut.offset[i], pos)
                    ctx.set(dut.wdata[i], value)
                    queue.append(value)
                await ctx.tick()
            ctx.set(dut.write, 0)
            ctx.set(dut.count, 0)
            # Phase 2's pattern: read row r while bank i rewrites entry (r - 1)·P + i in the same cycle.
            rewritten = list(queue)
            for row in range(dut.rows + 1):
                enabled = [i for i in range(pes) if row * pes + i < len(queue)]
                ctx.set(dut.read_row, min(row, dut.rows - 1))
                ctx.set(dut.read_en, sum(1 << i for i in enabled))
                back = [i for i in range(pes) if 0 <= (row - 1) * pes + i < len(queue)]
                ctx.set(dut.update, sum(1 << i for i in back))
                ctx.set(dut.update_row, max(row - 1, 0))
                for i in back:
                    rewritten[(row - 1) * pes + i] = value = int(rng.integers(0, 1 << 12))
                    ctx.set(dut.update_data[i], value)
                await ctx.tick()
                for i in enabled:
                    assert ctx.get(dut.rdata[i]) == queue[row * pes + i], (trial, row, i)
            ctx.set(dut.update, 0)
            for row in range(dut.rows):  # the rewrites landed, each in its own entry
                enabled = [i for i in range(pes) if row * pes + i < len(queue)]
                ctx.set(dut.read_row, row)
                ctx.set(dut.read_en, sum(1 << i for i in enabled))
                await ctx.tick()
                for i in enabled:
                    assert ctx.get(dut.rdata[i]) == rewritten[row * pes + i], (trial, row, i)
            ctx.set(dut.read_en, 0)

    _run(dut, bench)


@pytest.mark.parametrize("pes,depth", [(8, 64), (3, 20), (1, 5)])
def test_threshold_buffer_broadcasts_consecutive_channels(pes, depth):
    """Thresholds written at banked addresses; each cycle the P PEs ask for channels of one phase-1 round
    (at most P consecutive channels, several PEs per channel, some PEs idle) and get their own τ."""
    from rtl.threshold_buffer import ThresholdBuffer

    cfg = EngineConfig(pes=pes, threshold_depth=depth, acc_width=20)
    dut = ThresholdBuffer(cfg)
    rng = np.random.default_rng(SEED + 7 * pes)
    tau = [int(v) for v in rng.integers(-(1 << 19), 1 << 19, size=depth)]

    async def bench(ctx):
        for co, t in enumerate(tau):
            ctx.set(dut.waddr, ((co // pes) << cfg.bank_bits) | (co % pes))
            ctx.set(dut.wdata, t)
            ctx.set(dut.wen, 1)
            await ctx.tick()
        ctx.set(dut.wen, 0)
        for _ in range(40):
            first = int(rng.integers(0, depth))
            # PE i's channel: nondecreasing, consecutive, within P channels of the first (a round)
            steps = np.sort(rng.integers(0, 2, size=pes)).cumsum() if pes > 1 else np.zeros(1, int)
            channels = [min(first + int(s), depth - 1, first + pes - 1) for s in steps]
            reading = [bool(rng.random() < 0.8) for _ in range(pes)]
            for i, co in enumerate(channels):
                ctx.set(dut.bank[i], co % pes)
                ctx.set(dut.row[i], co // pes)
                ctx.set(dut.en[i], reading[i])
            await ctx.tick()
            ctx.set(dut.en, 0)
            for i, co in enumerate(channels):
                if reading[i]:
                    assert ctx.get(dut.rdata[i]) == tau[co], (i, co)

    _run(dut, bench)


def test_array_ports_are_flat_members_viewed_as_arrays():
    """A block's per-PE arrays are plain bit vectors in its signature (no layout: Amaranth would write a
    wire per element and field) and typed arrays in Python, over the same bits."""
    from amaranth.hdl import Shape, Value

    from rtl.work_queue import WorkQueue

    dut = WorkQueue(EngineConfig(pes=3, output_depth=20), 12)
    dut._MustUse__silence = True  # inspected, not elaborated
    members = dut.signature.members
    assert Shape.cast(members["rdata_bits"].shape) == Shape(3 * 12)
    assert Shape.cast(members["offset_bits"].shape) == Shape(3 * 2)
    assert "rdata" not in members and "offset" not in members
    assert len(dut.rdata) == 3 and Value.cast(dut.rdata[2]).start == 24  # element 2: bits 24..35
