"""Coordinate chain: the output activations of one phase-1 round, advanced without division."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from spec.config import EngineConfig

__all__ = ["CoordinateChain", "coord_layout"]

DIM = 16  # every tile dimension fits a 16-bit configuration register


def coord_layout(config: EngineConfig) -> data.StructLayout:
    """Where one output activation lies: channel, group, row, column and its linear index."""
    lin = unsigned((config.output_depth + config.pes).bit_length())
    return data.StructLayout(
        {"co": unsigned(DIM), "g": unsigned(DIM), "oy": unsigned(DIM), "ox": unsigned(DIM), "lin": lin}
    )


class CoordinateChain(wiring.Component):
    """The coordinates of the P consecutive activations ``r·P … r·P + P − 1`` of round ``r``.

    Activations are numbered in ``lin`` order (``ox`` fastest, then ``oy``, then ``co``). The chain keeps
    the first PE's coordinates in registers; PE ``i`` is PE ``i − 1`` plus one (a mixed-radix increment),
    and ``advance`` moves the first PE to the last PE plus one.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` and ``output_depth``.

    Members
    -------
    h_out, w_out : In(16)
        Output rows and columns of the tile.
    out_per_group : In(16)
        Output channels per group (``C_out / G``; ``C_out`` when G = 1).
    clear : In(1)
        Set the first PE to activation 0.
    advance : In(1)
        Move to the next round.
    coord : Out(ArrayLayout(coord_layout, pes))
        Coordinates of each PE's activation.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        super().__init__(
            {
                "h_out": In(DIM),
                "w_out": In(DIM),
                "out_per_group": In(DIM),
                "clear": In(1),
                "advance": In(1),
                "coord": Out(data.ArrayLayout(coord_layout(config), config.pes)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        layout = coord_layout(self._config)
        # `col` (the channel within its group) travels with each coordinate to find group wraps.
        first = Signal(layout)
        first_col = Signal(DIM)

        def increment(coord, col):
            nxt = Signal(layout)
            nxt_col = Signal(DIM)
            wrap_x = coord.ox + 1 == self.w_out
            wrap_y = wrap_x & (coord.oy + 1 == self.h_out)
            wrap_c = wrap_y & (col + 1 == self.out_per_group)
            m.d.comb += [
                nxt.lin.eq(coord.lin + 1),
                nxt.ox.eq(Mux(wrap_x, 0, coord.ox + 1)),
                nxt.oy.eq(Mux(wrap_y, 0, Mux(wrap_x, coord.oy + 1, coord.oy))),
                nxt.co.eq(Mux(wrap_y, coord.co + 1, coord.co)),
                nxt_col.eq(Mux(wrap_c, 0, Mux(wrap_y, col + 1, col))),
                nxt.g.eq(Mux(wrap_c, coord.g + 1, coord.g)),
            ]
            return nxt, nxt_col

        coord, col = first, first_col
        for i in range(self._config.pes):
            m.d.comb += self.coord[i].eq(coord)
            coord, col = increment(coord, col)
        with m.If(self.clear):
            m.d.sync += [first.eq(0), first_col.eq(0)]
        with m.Elif(self.advance):
            m.d.sync += [first.eq(coord), first_col.eq(col)]
        return m
