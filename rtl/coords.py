"""Coordinate chain: the output activations of one phase-1 round, advanced without division."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from spec.config import EngineConfig
from spec.protocol import REGISTER_WIDTH

__all__ = ["CoordinateChain", "addr_width", "coord_layout", "pointer_layout"]

DIM = REGISTER_WIDTH  # every tile dimension fits a configuration register


def addr_width(depth: int) -> int:
    """Bits of a word address of a buffer ``depth`` words deep (at least 1)."""
    return max(1, (depth - 1).bit_length())


def coord_layout(config: EngineConfig) -> data.StructLayout:
    """Where one output activation lies: channel, group, row, column and its linear index."""
    lin = unsigned((config.output_depth + config.pes).bit_length())
    # `co` has one bit more than a register: the chain runs up to P − 1 activations past the last one.
    # `cb`, `cr`: co mod P and co div P, the threshold buffer's bank and row (rtl/threshold_buffer.py).
    rows = config.threshold_rows
    return data.StructLayout(
        {
            "co": unsigned(DIM + 1),
            "g": unsigned(DIM),
            "oy": unsigned(DIM),
            "ox": unsigned(DIM),
            "lin": lin,
            "cb": range(max(config.pes, 2)),
            "cr": range(rows + 2),
        }
    )


def pointer_layout(config: EngineConfig) -> data.StructLayout:
    """Running pointers of one activation (docs/microarchitecture.md, "Address generation").

    ``ia``: input word of tap (0, 0) in chunk 0, ``in_origin + oy·Wp + ox`` in the plane deinterleaved by
    the stride (docs/microarchitecture.md, section 3) modulo the input address width; ``yt``, ``xt``: the
    input row and column of tap (0, 0), ``oy·S − pad_top`` and
    ``ox·S − pad_left`` (signed). (No weight pointer: the weights are channel-minor, an activation's
    word of a beat is the beat's word plus its ``co``.)
    """
    return data.StructLayout(
        {
            "ia": unsigned(addr_width(config.input_depth)),
            "yt": signed(DIM + 2),
            "xt": signed(DIM + 2),
        }
    )


class CoordinateChain(wiring.Component):
    """The coordinates of the P consecutive activations ``r·P … r·P + P − 1`` of round ``r``.

    Activations are numbered in ``lin`` order (``ox`` fastest, then ``oy``, then ``co``). The chain keeps
    the first PE's coordinates in registers; PE ``i`` is PE ``i − 1`` plus one (a mixed-radix increment),
    and ``advance`` moves the first PE to the last PE plus one. Each coordinate carries its running
    pointers (:func:`pointer_layout`), advanced by the same increment with additions of host-written
    steps only: no multiplication or division.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes``, ``stride`` (the largest), ``output_depth`` and the input buffer depth.

    Members
    -------
    stride : In(range(stride + 1))
        The layer's stride S.
    h_out, w_out : In(16)
        Output rows and columns of the tile.
    out_per_group : In(16)
        Output channels per group (``C_out / G``; ``C_out`` when G = 1).
    pad_top, pad_left : In(16)
        The tile's padding (``yt``, ``xt`` of activation 0 are their negations).
    in_origin : In(input address width)
        ``ia`` of activation 0: the word of its tap (0, 0) (``spec.tile.TileGeometry.tap_offsets``).
    row_step : In(input address width)
        ``ia`` step from the last column of an output row to the next row, ``Wp − w_out + 1`` (``ia``
        steps by one word per output column whatever the stride: the plane is deinterleaved).
    clear : In(1)
        Set the first PE to activation 0.
    advance : In(1)
        Move to the next round.
    coords_bits : Out(pes × coord_layout bits)
        Coordinates of each PE's activation: the array port :attr:`coords` (``rtl.array_port``).
    pointers_bits : Out(pes × pointer_layout bits)
        Running pointers of each PE's activation: the array port :attr:`pointers`.
    next_co : Out(17)
        Output channel of the activation after the last PE's (``co ≥ C_out``: the round is the last).
    """

    coords = ArrayPort(Out)
    pointers = ArrayPort(Out)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        in_aw = addr_width(config.input_depth)
        self.array_layouts = {
            "coords": data.ArrayLayout(coord_layout(config), config.pes),
            "pointers": data.ArrayLayout(pointer_layout(config), config.pes),
        }
        super().__init__(
            {
                "stride": In(range(config.stride + 1)),
                "h_out": In(DIM),
                "w_out": In(DIM),
                "out_per_group": In(DIM),
                "pad_top": In(DIM),
                "pad_left": In(DIM),
                "in_origin": In(in_aw),
                "row_step": In(in_aw),
                "clear": In(1),
                "advance": In(1),
                **ArrayPort.members(self),
                "next_co": Out(DIM + 1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._config
        # The stride at the widths it is added to (equal operand widths: no implicit extension). Decoded by
        # a case statement: a signal assigned the narrow port would be an alias of it that yosys inlines
        # (extended again at every add).
        S = Signal(signed(DIM + 2))
        with m.Switch(self.stride):
            for stride in range(1 << len(self.stride)):
                with m.Case(stride):
                    m.d.comb += S.eq(stride)
        layout = data.StructLayout(
            {
                "coord": coord_layout(cfg),
                "col": unsigned(DIM),  # the channel within its group, to find group wraps
                "pointer": pointer_layout(cfg),
            }
        )
        # Plain signals viewed through the layout: no per-field aliases in the Verilog.
        first = data.View(layout, Signal(layout.size, name="first", reset_less=True))  # set by `clear`

        def increment(cur, i):
            c, p = cur.coord, cur.pointer
            nxt = data.View(layout, Signal(layout.size, name=f"next{i}"))
            wrap_x, wrap_y, wrap_c = (
                Signal(name=f"wrap_x{i}"),
                Signal(name=f"wrap_y{i}"),
                Signal(name=f"wrap_c{i}"),
            )
            wrap_b = Signal(name=f"wrap_b{i}")  # co mod P wraps with the next channel
            m.d.comb += wrap_b.eq(c.cb == cfg.pes - 1)
            # ox + 1, oy + 1, col + 1 at the sums' width (DIM + 1 bits), each one adder for its wrap test
            # and its next value (the low DIM bits). A sum equals a DIM-bit bound when its carry is clear
            # and its low bits equal the bound (operands of one width).
            ox1, oy1, col1 = (Signal(DIM + 1, name=f"{n}{i}") for n in ("ox_inc", "oy_inc", "col_inc"))
            m.d.comb += [ox1.eq(c.ox + 1), oy1.eq(c.oy + 1), col1.eq(cur.col + 1)]

            def reaches(inc, bound):
                return ~inc[DIM] & (inc[:DIM] == bound)

            m.d.comb += [
                wrap_x.eq(reaches(ox1, self.w_out)),
                wrap_y.eq(wrap_x & reaches(oy1, self.h_out)),
                wrap_c.eq(wrap_y & reaches(col1, self.out_per_group)),
            ]
            m.d.comb += [
                nxt.coord.lin.eq(c.lin + 1),
                nxt.coord.ox.eq(Mux(wrap_x, 0, ox1[:DIM])),
                nxt.coord.oy.eq(Mux(wrap_y, 0, Mux(wrap_x, oy1[:DIM], c.oy))),
                nxt.coord.co.eq(Mux(wrap_y, c.co + 1, c.co)),
                nxt.coord.cb.eq(Mux(wrap_y, Mux(wrap_b, 0, c.cb + 1), c.cb)),
                nxt.coord.cr.eq(Mux(wrap_y & wrap_b, c.cr + 1, c.cr)),
                nxt.col.eq(Mux(wrap_c, 0, Mux(wrap_y, col1[:DIM], cur.col))),
                nxt.coord.g.eq(Mux(wrap_c, c.g + 1, c.g)),
                nxt.pointer.xt.eq(Mux(wrap_x, -self.pad_left, p.xt + S)),
                nxt.pointer.yt.eq(Mux(wrap_y, -self.pad_top, Mux(wrap_x, p.yt + S, p.yt))),
                nxt.pointer.ia.eq(Mux(wrap_y, self.in_origin, Mux(wrap_x, p.ia + self.row_step, p.ia + 1))),
            ]
            return nxt

        cur = first
        for i in range(cfg.pes):
            m.d.comb += [
                self.coords[i].eq(cur.coord),
                self.pointers[i].eq(cur.pointer),
            ]
            cur = increment(cur, i)
        m.d.comb += self.next_co.eq(cur.coord.co)
        with m.If(self.clear):
            m.d.sync += [
                first.eq(0),
                first.pointer.ia.eq(self.in_origin),
                first.pointer.yt.eq(-self.pad_top),
                first.pointer.xt.eq(-self.pad_left),
            ]
        with m.Elif(self.advance):
            m.d.sync += first.eq(cur)
        return m
