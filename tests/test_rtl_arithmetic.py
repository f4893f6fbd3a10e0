"""Amaranth-simulator unit tests of the address path's arithmetic blocks (rtl/arith.py,
rtl/tile_constants.py, the running pointers of rtl/coords.py): construction errors and behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from rtl.arith import ConstantDivider, const_mul, reciprocal
from rtl.coords import CoordinateChain, addr_width
from rtl.tile_constants import TileConstants
from spec.config import EngineConfig
from spec.tile import TileGeometry

SEED = 4321


def _run(dut, bench, clock: bool = True) -> None:
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# ---- reciprocal / const_mul / ConstantDivider -------------------------------------------------------


@pytest.mark.parametrize("width,divisor", [(0, 3), (-1, 3), (16, 0), (16, -2), (16, 1.5), ("16", 3)])
def test_reciprocal_refuses_bad_arguments(width, divisor):
    with pytest.raises(ValueError):
        reciprocal(width, divisor)
    with pytest.raises(ValueError):
        ConstantDivider(width, divisor)


@pytest.mark.parametrize("width", [1, 5, 16, 17])
def test_reciprocal_is_exact_for_every_dividend(width):
    x = np.arange(1 << width, dtype=object)
    for divisor in list(range(1, 70)) + [96, 255, 1000, 4095]:
        mult, shift = reciprocal(width, divisor)
        assert all((x * mult) >> shift == x // divisor), divisor


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


@pytest.mark.parametrize("width,divisor", [(16, 1), (16, 2), (16, 3), (17, 8), (17, 5), (16, 12), (17, 63)])
def test_constant_divider_divides(width, divisor):
    dut = ConstantDivider(width, divisor)
    rng = np.random.default_rng(SEED + divisor)
    values = [0, 1, divisor - 1, divisor, (1 << width) - 1, (1 << width) - 2]
    values += [int(v) for v in rng.integers(0, 1 << width, size=200)]

    async def bench(ctx):
        for v in values:
            ctx.set(dut.x, v)
            assert ctx.get(dut.quotient) == v // divisor, v

    _run(dut, bench, clock=False)


# ---- TileConstants --------------------------------------------------------------------------------

_TILE_CASES = [
    (EngineConfig(), TileGeometry(64, 16, 18, 18, 16, 16, 1, 1)),
    (EngineConfig(), TileGeometry(20, 6, 7, 9, 7, 8, 1, 0)),
    (EngineConfig(groups=1, lanes=4, stride=2), TileGeometry(22, 5, 11, 13, 6, 7, 1, 1, base_channels=9)),
    (
        EngineConfig(groups=3, lanes=3, pes=5, kernel=5, padding=2, input_depth=500, weight_depth=1400),
        TileGeometry(18, 9, 6, 5, 6, 5, 2, 2),
    ),
    (EngineConfig(groups=4, lanes=3, kernel=1, padding=0), TileGeometry(24, 8, 5, 6, 5, 6)),
]


@pytest.mark.parametrize("config,geo", _TILE_CASES)
def test_tile_constants_match_the_segmentation(config, geo):
    geo.check(config)
    seg = geo.segments(config)
    dut = TileConstants(config)
    in_mask = (1 << addr_width(config.input_depth)) - 1
    w_mask = (1 << addr_width(config.weight_depth)) - 1
    k2 = config.kernel**2

    async def bench(ctx):
        for name in ("c_in", "c_out", "h_in", "w_in", "w_out", "pad_top", "pad_left", "base_channels"):
            ctx.set(getattr(dut, name), getattr(geo, name))
        assert ctx.get(dut.in_origin) == (-geo.pad_top * geo.w_in - geo.pad_left) & in_mask
        ctx.set(dut.setup, 1)
        await ctx.tick()
        ctx.set(dut.setup, 0)
        ctx.set(dut.c_in, 0)  # latched: later register writes do not reach the outputs
        await ctx.tick()
        assert ctx.get(dut.seg_b) == seg.base_ch
        assert ctx.get(dut.seg_c) == seg.cond_ch
        assert ctx.get(dut.out_per_group) == seg.out_per_group
        assert ctx.get(dut.hw_in) == (geo.h_in * geo.w_in) & in_mask
        assert ctx.get(dut.in_seg) == (seg.nch_b * geo.h_in * geo.w_in) & in_mask
        assert ctx.get(dut.row_step) == (config.stride * (geo.w_in - geo.w_out + 1)) & in_mask
        assert ctx.get(dut.w_co) == (seg.n_chunks * k2) & w_mask
        assert ctx.get(dut.w_seg) == (seg.nch_b * k2) & w_mask

    _run(dut, bench)


# ---- CoordinateChain: running pointers ------------------------------------------------------------


@pytest.mark.parametrize(
    "pes,stride,c_out,h_out,w_out,w_in,pad,groups",
    [
        (4, 1, 4, 3, 5, 7, (1, 1), 2),
        (3, 2, 6, 2, 2, 5, (1, 0), 3),
        (8, 1, 2, 1, 1, 3, (0, 0), 1),
        (5, 3, 4, 2, 3, 9, (2, 1), 2),
    ],
)
def test_coordinate_chain_pointers(pes, stride, c_out, h_out, w_out, w_in, pad, groups):
    cfg = EngineConfig(pes=pes, stride=stride, output_depth=256, input_depth=1000, weight_depth=300)
    dut = CoordinateChain(cfg)
    in_mask, w_mask = (1 << addr_width(cfg.input_depth)) - 1, (1 << addr_width(cfg.weight_depth)) - 1
    n = c_out * h_out * w_out
    opg = c_out // groups
    top, left = pad
    w_co = 27  # an arbitrary per-tile step

    async def bench(ctx):
        ctx.set(dut.h_out, h_out)
        ctx.set(dut.w_out, w_out)
        ctx.set(dut.out_per_group, opg)
        ctx.set(dut.pad_top, top)
        ctx.set(dut.pad_left, left)
        ctx.set(dut.in_origin, (-top * w_in - left) & in_mask)
        ctx.set(dut.row_step, stride * (w_in - w_out + 1))
        ctx.set(dut.w_co, w_co)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        for r in range(-(-n // pes)):
            for i in range(pes):
                a = r * pes + i
                co, oy, ox = (int(v) for v in np.unravel_index(a, (c_out + pes, h_out, w_out)))
                ptr = ctx.get(dut.pointer[i])
                yt, xt = oy * stride - top, ox * stride - left
                assert (ptr.yt, ptr.xt) == (yt, xt)
                assert ptr.ia == (yt * w_in + xt) & in_mask
                assert ptr.wa == (co * w_co) & w_mask
                assert ctx.get(dut.coord[i]).g == co // opg
            after = (r + 1) * pes
            assert ctx.get(dut.next_co) == after // (h_out * w_out)
            ctx.set(dut.advance, 1)
            await ctx.tick()
            ctx.set(dut.advance, 0)

    _run(dut, bench)
