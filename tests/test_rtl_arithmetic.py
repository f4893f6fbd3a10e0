"""Amaranth-simulator unit tests of the address path's arithmetic blocks (rtl/arith.py, the running
pointers of rtl/coords.py): construction errors and behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from rtl.arith import const_mul
from rtl.coords import CoordinateChain, addr_width
from spec.config import EngineConfig

SEED = 4321


def _run(dut, bench, clock: bool = True) -> None:
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# ---- const_mul -------------------------------------------------------


def test_const_mul_refuses_negative_or_non_integer_constants():
    for bad in (-1, 2.0, None):
        with pytest.raises(ValueError):
            const_mul(Signal(8), bad)


@pytest.mark.parametrize("constant", [0, 1, 2, 9, 25, 121, 255])
def test_const_mul_multiplies_without_operator(constant):
    m = Module()
    x = Signal(8)
    y = Signal(20)
    m.d.comb += y.eq(const_mul(x, constant))
    assert "*" not in repr(const_mul(x, constant))

    async def bench(ctx):
        for v in (0, 1, 3, 77, 255):
            ctx.set(x, v)
            assert ctx.get(y) == v * constant

    _run(m, bench, clock=False)


# ---- CoordinateChain: running pointers ------------------------------------------------------------


@pytest.mark.parametrize(
    "pes,stride,c_out,h_out,w_out,w_in,pad,groups",
    [
        (4, 1, 4, 3, 5, 7, (1, 1), 2),
        (3, 2, 6, 2, 2, 5, (1, 0), 3),
        (8, 1, 2, 1, 1, 3, (0, 0), 1),
        (5, 3, 4, 2, 3, 9, (2, 1), 2),
        (8, 2, 24, 1, 2, 4, (1, 1), 24),  # a round spans 4 channels: the step carries into co and g
        (7, 1, 9, 3, 3, 3, (0, 0), 3),  # P = 7 = w_out·h_out − 2: every round wraps oy, cb wraps mod 7
    ],
)
def test_coordinate_chain_pointers(pes, stride, c_out, h_out, w_out, w_in, pad, groups):
    # A build taking strides up to 3 runs each stride (a run-time input).
    cfg = EngineConfig(pes=pes, stride=3, output_depth=256, input_depth=1000, weight_depth=300)
    dut = CoordinateChain(cfg)
    in_mask = (1 << addr_width(cfg.input_depth)) - 1
    n = c_out * h_out * w_out
    opg = c_out // groups
    top, left = pad
    wp = -(-w_in // stride) * stride  # the input plane's row pitch, w_in rounded up to the stride
    h_in = h_out * stride + 1  # (any extent: only y_left depends on it)
    origin = -top * wp - left - 1000  # any word (the host's tap (0, 0) word; negative wraps)

    async def bench(ctx):
        ctx.set(dut.stride, stride)
        ctx.set(dut.h_out, h_out)
        ctx.set(dut.w_out, w_out)
        ctx.set(dut.out_per_group, opg)
        ctx.set(dut.pad_top, top)
        ctx.set(dut.pad_left, left)
        ctx.set(dut.in_origin, origin & in_mask)
        ctx.set(dut.row_step, wp - w_out + 1)
        ctx.set(dut.ia_plane, h_out * wp)
        ctx.set(dut.h_in, h_in)
        ctx.set(dut.w_in, w_in)
        ctx.set(dut.init, 1)  # SETUP: P cycles, init_last in the last
        for k in range(pes):
            assert ctx.get(dut.init_last) == (k == pes - 1)
            await ctx.tick()
        ctx.set(dut.init, 0)
        for r in range(-(-n // pes)):
            for i in range(pes):
                a = r * pes + i
                co, oy, ox = (int(v) for v in np.unravel_index(a, (c_out + pes, h_out, w_out)))
                ptr = ctx.get(dut.pointers[i])
                yt, xt = oy * stride - top, ox * stride - left
                assert (ptr.y_pad, ptr.x_pad) == (-yt, -xt)  # rows, columns of padding before the tap
                assert (ptr.y_left, ptr.x_left) == (h_in - yt, w_in - xt)  # rows, columns to the edge
                assert ptr.ia == (origin + oy * wp + ox) & in_mask  # one word per column: deinterleaved
                got = ctx.get(dut.coords[i])
                assert (got.lin, got.co, got.oy, got.ox) == (a, co, oy, ox)
                assert (got.g, got.cb, got.cr) == (co // opg, co % pes, co // pes)
            after = (r + 1) * pes
            assert ctx.get(dut.stepped[0]).co == after // (h_out * w_out)  # PE 0's next round
            ctx.set(dut.advance, 1)
            await ctx.tick()
            ctx.set(dut.advance, 0)

    _run(dut, bench)
