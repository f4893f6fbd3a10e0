"""Per-tile constants of the address path, computed from the configuration registers in SETUP."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import ConstantDivider, const_mul
from rtl.coords import DIM, addr_width
from spec.config import EngineConfig

__all__ = ["TileConstants"]


class TileConstants(wiring.Component):
    """The segment widths, the channels per group and the pointer steps of one tile.

    Divisions by the elaboration constants G and L are reciprocal multiplications made of shifts and adds
    (:class:`~rtl.arith.ConstantDivider`); products with the constants G, K² and S are shift-and-add sums.
    Two products of run-time registers remain, ``h_in·w_in`` and ``nch_b·h_in·w_in`` (input words of one
    chunk and of one base segment, both modulo the input address width): they are needed in the first
    cycle after SETUP, which leaves no window for a sequential multiplier. ``pad_top·w_in`` is a sum of
    at most ``bit_length(padding)`` gated copies of ``w_in`` (``pad_top ≤ padding`` is part of a tile's
    check).

    Parameters
    ----------
    config : EngineConfig
        Supplies G, L, K, S, ``padding`` and the buffer depths (address widths).

    Members
    -------
    c_in, c_out, h_in, w_in, w_out, pad_top, pad_left, base_channels : In(16)
        Configuration registers.
    setup : In(1)
        Latch the registered outputs (the SETUP cycle).
    seg_b, seg_c : Out(16)
        Channels of the base segment and of each conditional segment (registered).
    out_per_group : Out(16)
        Output channels per group (registered).
    hw_in : Out(input address width)
        Input words of one chunk, ``h_in·w_in`` (registered).
    in_seg : Out(input address width)
        Input words of one base segment, ``nch_b·h_in·w_in`` (registered).
    row_step : Out(input address width)
        Input pointer step from the last column of an output row to the first of the next,
        ``S·(w_in − w_out + 1)`` (registered).
    in_origin : Out(input address width)
        Input pointer of output (0, 0), ``−pad_top·w_in − pad_left`` (combinational: valid in SETUP).
    w_co : Out(weight address width)
        Weight words of one output channel, ``n_chunks·K²`` (registered).
    w_seg : Out(weight address width)
        Weight words of one base segment of an output channel, ``nch_b·K²`` (registered).
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        in_aw, w_aw = addr_width(config.input_depth), addr_width(config.weight_depth)
        regs = ("c_in", "c_out", "h_in", "w_in", "w_out", "pad_top", "pad_left", "base_channels")
        super().__init__(
            {
                **{name: In(DIM) for name in regs},
                "setup": In(1),
                "seg_b": Out(DIM),
                "seg_c": Out(DIM),
                "out_per_group": Out(DIM),
                "hw_in": Out(in_aw),
                "in_seg": Out(in_aw),
                "row_step": Out(in_aw),
                "in_origin": Out(in_aw),
                "w_co": Out(w_aw),
                "w_seg": Out(w_aw),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._config
        G, L, K, S = cfg.groups, cfg.lanes, cfg.kernel, cfg.stride
        in_aw = len(self.hw_in)

        def ceil_lanes(name, value):
            # ceil(value / L) = floor((value + L − 1) / L)
            div = m.submodules[f"div_{name}"] = ConstantDivider(DIM + 1, L)
            m.d.comb += div.x.eq(value + (L - 1))
            return div.quotient

        seg_b, seg_c, opg = Signal(DIM), Signal(DIM), Signal(DIM)
        if G > 1:
            m.submodules.div_seg = div_seg = ConstantDivider(DIM, G)
            m.submodules.div_group = div_group = ConstantDivider(DIM, G)
            m.d.comb += [div_seg.x.eq(self.c_in), div_group.x.eq(self.c_out)]
            m.d.comb += [seg_b.eq(div_seg.quotient), seg_c.eq(div_seg.quotient), opg.eq(div_group.quotient)]
            nch_b = ceil_lanes("nch_b", seg_b)
            n_chunks = const_mul(nch_b, G)
        else:
            m.d.comb += [
                seg_b.eq(self.base_channels),
                seg_c.eq(self.c_in - self.base_channels),
                opg.eq(self.c_out),
            ]
            nch_b = ceil_lanes("nch_b", seg_b)
            n_chunks = nch_b + ceil_lanes("nch_c", seg_c)

        # The only products of two run-time registers (modulo the input address width).
        hw_in = Signal(in_aw)
        m.d.comb += hw_in.eq(self.h_in[:in_aw] * self.w_in[:in_aw])
        in_seg = nch_b[:in_aw] * hw_in

        pad_rows = 0  # pad_top · w_in, pad_top having at most bit_length(padding) bits
        for bit in range(cfg.padding.bit_length()):
            pad_rows = pad_rows + Mux(self.pad_top[bit], self.w_in << bit, 0)
        m.d.comb += self.in_origin.eq(0 - pad_rows - self.pad_left)

        row_gap = Signal(in_aw)
        m.d.comb += row_gap.eq(self.w_in - self.w_out + 1)
        with m.If(self.setup):
            m.d.sync += [
                self.seg_b.eq(seg_b),
                self.seg_c.eq(seg_c),
                self.out_per_group.eq(opg),
                self.hw_in.eq(hw_in),
                self.in_seg.eq(in_seg),
                self.row_step.eq(const_mul(row_gap, S)),
                self.w_co.eq(const_mul(n_chunks, K * K)),
                self.w_seg.eq(const_mul(nch_b, K * K)),
            ]
        return m
