"""Coordinate chain: the output activations of one phase-1 round, advanced without division."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import const_mul
from rtl.array_port import ArrayPort
from spec.config import EngineConfig
from spec.protocol import REGISTER_WIDTH

__all__ = ["CoordinateChain", "addr_width", "base_layout", "coord_layout", "pointer_layout"]

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
    the stride (docs/microarchitecture.md, section 3) modulo the input address width; ``y_pad``,
    ``x_pad``: the rows and columns of padding before tap (0, 0), ``pad_top − oy·S`` and
    ``pad_left − ox·S`` (negative once the tap lies inside); ``y_left``, ``x_left``: the input rows and
    columns from tap (0, 0) to the tile's far edge, ``h_in + pad_top − oy·S`` and ``w_in + pad_left −
    ox·S``. The padding test reads their sign and low bits: no subtraction between the PE's registers
    and its bank request. (No weight pointer: the weights are channel-minor, an activation's word of a
    beat is the beat's word plus its ``co``.)
    """
    return data.StructLayout(
        {
            "ia": unsigned(addr_width(config.input_depth)),
            "y_pad": signed(DIM + 3),
            "x_pad": signed(DIM + 3),
            "y_left": signed(DIM + 3),
            "x_left": signed(DIM + 3),
        }
    )


def base_layout(config: EngineConfig) -> data.StructLayout:
    """What an activation's operand addresses start from: its input pointer ``ia``, output channel ``co``
    and gate group ``g`` (the engine adds the group's segment offset and the beat's pointers)."""
    return data.StructLayout(
        {"ia": unsigned(addr_width(config.input_depth)), "co": unsigned(DIM + 1), "g": unsigned(DIM)}
    )


class CoordinateChain(wiring.Component):
    """The coordinates of the P consecutive activations ``r·P … r·P + P − 1`` of round ``r``.

    Activations are numbered in ``lin`` order (``ox`` fastest, then ``oy``, then ``co``). Every PE keeps
    its activation's coordinates and running pointers (:func:`pointer_layout`) in registers of its own,
    which drive the ports directly. ``init`` (the P cycles of ``SETUP``) loads them one PE per cycle from a
    shared stepper, a mixed-radix **+1** incrementer that walks activations 0, 1, …, P; the stepper then
    holds activation P, the **step** of a round: its coordinates are the digits of P in the tile's
    (``co``, ``oy``, ``ox``), (``g``, ``col``) and (``cr``, ``cb``) radices, its ``ia`` the input words
    that P activations advance. ``advance`` adds the step to every PE at once, digit by digit with one
    compare-and-subtract carry per digit: no chain from PE to PE, no multiplication, no division.

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
        The tile's padding (``y_pad``, ``x_pad`` of activation 0).
    h_in, w_in : In(16)
        Input rows and columns of the tile (for ``y_left``, ``x_left``).
    in_origin : In(input address width)
        ``ia`` of activation 0: the word of its tap (0, 0) (``spec.tile.TileGeometry.tap_offsets``).
    row_step : In(input address width)
        ``ia`` step from the last column of an output row to the next row, ``Wp − w_out + 1`` (``ia``
        steps by one word per output column whatever the stride: the plane is deinterleaved).
    ia_plane : In(input address width)
        ``h_out·Wp``: what ``ia`` gives back when ``oy`` wraps past the tile's last output row.
    init : In(1)
        A cycle of ``SETUP``: in the k-th consecutive one (k = 0, 1, …) PE k takes activation k.
    init_last : Out(1)
        ``init`` is in its P-th cycle (k = P − 1): every PE holds its activation from the next cycle on.
    advance : In(1)
        Move every PE P activations on (the next round).
    coords_bits : Out(pes × coord_layout bits)
        Coordinates of each PE's activation: the array port :attr:`coords` (``rtl.array_port``).
    pointers_bits : Out(pes × pointer_layout bits)
        Running pointers of each PE's activation: the array port :attr:`pointers`.
    stepped_bits : Out(pes × base_layout bits)
        Each PE's ``ia``, ``co``, ``g`` in the next round (what ``advance`` loads): the array port
        :attr:`stepped`, for address registers that take the next round's addresses with it (PE 0's
        ``co ≥ C_out``: this round is the last).
    loading : Out(base_layout)
        The ``ia``, ``co``, ``g`` of the activation ``init`` loads into PE k this cycle.
    loading_pe : Out(pes)
        One-hot: the PE ``init`` loads this cycle (none without ``init``).
    """

    coords = ArrayPort(Out)
    pointers = ArrayPort(Out)
    stepped = ArrayPort(Out)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        in_aw = addr_width(config.input_depth)
        self.array_layouts = {
            "coords": data.ArrayLayout(coord_layout(config), config.pes),
            "pointers": data.ArrayLayout(pointer_layout(config), config.pes),
            "stepped": data.ArrayLayout(base_layout(config), config.pes),
        }
        super().__init__(
            {
                "stride": In(range(config.stride + 1)),
                "h_out": In(DIM),
                "w_out": In(DIM),
                "out_per_group": In(DIM),
                "pad_top": In(DIM),
                "pad_left": In(DIM),
                "h_in": In(DIM),
                "w_in": In(DIM),
                "in_origin": In(in_aw),
                "row_step": In(in_aw),
                "ia_plane": In(in_aw),
                "init": In(1),
                "init_last": Out(1),
                "advance": In(1),
                **ArrayPort.members(self),
                "loading": Out(base_layout(config)),
                "loading_pe": Out(config.pes),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg, P = self._config, self._config.pes
        in_aw = addr_width(cfg.input_depth)

        def times_stride(value, name):  # value·S, S at most the build's stride: shifts and adds, by a case
            out = Signal(DIM + 2, name=name)
            with m.Switch(self.stride):
                for stride in range(1, cfg.stride + 1):
                    with m.Case(stride):
                        m.d.comb += out.eq(const_mul(value, stride))
                with m.Default():
                    m.d.comb += out.eq(0)
            return out

        # The far edges from tap (0, 0)'s origin: h_in + pad_top rows, w_in + pad_left columns (shared).
        edges = {}
        for axis, pad, extent in (("y", self.pad_top, self.h_in), ("x", self.pad_left, self.w_in)):
            edges[axis] = Signal(DIM + 1, name=f"{axis}_edge")
            m.d.comb += edges[axis].eq(extent + pad)  # (the sum's width: no bit unread)

        def place(pointer, scaled, axis):
            """``y_pad = pad_top − oy·S`` and ``y_left = h_in + pad_top − oy·S`` from ``scaled = oy·S``
            (``axis`` "y"), or the column's ``x_pad``, ``x_left``: two subtractions side by side."""
            pad = self.pad_top if axis == "y" else self.pad_left
            return [pointer[f"{axis}_pad"].eq(pad - scaled), pointer[f"{axis}_left"].eq(edges[axis] - scaled)]

        # The stepper: activation k of the walk, ``ia`` relative to ``in_origin`` (oy·Wp + ox).
        step_layout = data.StructLayout(
            {"coord": coord_layout(cfg), "col": unsigned(DIM), "ia": unsigned(in_aw)}
        )
        # A PE: its activation, the channel within its group (to find group wraps), its pointers.
        pe_layout = data.StructLayout(
            {"coord": coord_layout(cfg), "col": unsigned(DIM), "pointer": pointer_layout(cfg)}
        )
        step = data.View(step_layout, Signal(step_layout.size, name="step", reset_less=True))
        k = Signal(range(max(P, 2)), reset_less=True)  # the init cycle (0 whenever init is low)
        m.d.sync += k.eq(Mux(self.init, k + 1, 0))
        m.d.comb += self.init_last.eq(self.init & (k == P - 1))
        walk = data.View(step_layout, Signal(step_layout.size, name="walk"))  # activation k
        m.d.comb += walk.eq(Mux(k == 0, 0, step.as_value()))
        with m.If(self.init):
            m.d.sync += step.eq(self._increment(m, walk))

        # What ia adds beside the step when ox carries (row_step − 1), and when both carry (less ia_plane).
        ia_row, ia_row_plane = Signal(in_aw, name="ia_row"), Signal(in_aw, name="ia_row_plane")
        m.d.comb += [ia_row.eq(self.row_step - 1), ia_row_plane.eq(ia_row - self.ia_plane)]
        pes = [data.View(pe_layout, Signal(pe_layout.size, name=f"pe{i}", reset_less=True)) for i in range(P)]
        loaded = data.View(pe_layout, Signal(pe_layout.size, name="loaded"))  # activation k, absolute
        m.d.comb += [
            loaded.coord.eq(walk.coord),
            loaded.col.eq(walk.col),
            loaded.pointer.ia.eq(self.in_origin + walk.ia),
        ]
        m.d.comb += place(loaded.pointer, times_stride(walk.coord.oy, "walk_oys"), "y")
        m.d.comb += place(loaded.pointer, times_stride(walk.coord.ox, "walk_oxs"), "x")
        m.d.comb += [
            self.loading.ia.eq(loaded.pointer.ia),
            self.loading.co.eq(loaded.coord.co),
            self.loading.g.eq(loaded.coord.g),
        ]
        for i, pe in enumerate(pes):
            m.d.comb += [self.coords[i].eq(pe.coord), self.pointers[i].eq(pe.pointer)]
            nxt = self._add_step(m, i, pe, step, pe_layout, (ia_row, ia_row_plane))
            m.d.comb += place(nxt.pointer, times_stride(nxt.coord.oy, f"pe{i}_oys"), "y")
            m.d.comb += place(nxt.pointer, times_stride(nxt.coord.ox, f"pe{i}_oxs"), "x")
            m.d.comb += [
                self.stepped[i].ia.eq(nxt.pointer.ia),
                self.stepped[i].co.eq(nxt.coord.co),
                self.stepped[i].g.eq(nxt.coord.g),
            ]
            m.d.comb += self.loading_pe[i].eq(self.init & (k == i))
            with m.If(self.loading_pe[i]):
                m.d.sync += pe.eq(loaded)
            with m.Elif(self.advance):
                m.d.sync += pe.eq(nxt)
        return m

    def _increment(self, m, cur):
        """The stepper's next activation: ``cur`` + 1 in mixed radix (``ia`` relative: 0 at oy = ox = 0)."""
        cfg = self._config
        c = cur.coord
        nxt = data.View(cur.shape(), Signal(cur.shape().size, name="walk_next"))
        # ox + 1, oy + 1, col + 1 at the sums' width (DIM + 1 bits), each one adder for its wrap test and
        # its next value (the low DIM bits). A sum equals a DIM-bit bound when its carry is clear and its
        # low bits equal the bound (operands of one width).
        ox1, oy1, col1 = (Signal(DIM + 1, name=f"walk_{n}") for n in ("ox_inc", "oy_inc", "col_inc"))
        m.d.comb += [ox1.eq(c.ox + 1), oy1.eq(c.oy + 1), col1.eq(cur.col + 1)]

        def reaches(inc, bound):
            return ~inc[DIM] & (inc[:DIM] == bound)

        wrap_x, wrap_y, wrap_c, wrap_b = (Signal(name=f"walk_wrap_{n}") for n in "xycb")
        m.d.comb += [
            wrap_x.eq(reaches(ox1, self.w_out)),
            wrap_y.eq(wrap_x & reaches(oy1, self.h_out)),
            wrap_c.eq(wrap_y & reaches(col1, self.out_per_group)),
            wrap_b.eq(c.cb == cfg.pes - 1),  # co mod P wraps with the next channel
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
            nxt.ia.eq(Mux(wrap_y, 0, Mux(wrap_x, cur.ia + self.row_step, cur.ia + 1))),
        ]
        return nxt

    def _add_step(self, m, i, pe, step, layout, ia_carries):
        """PE ``i``'s activation P further on: ``pe`` plus the round's step, digit by digit (its padding
        pointers are the caller's, from the new ``oy`` and ``ox``; ``ia_carries``: what ``ia`` adds
        beside the step when ``ox`` carries, and when both carry). Each digit's
        sum is below twice its radix (both terms are digits, plus a carry of one), so one subtraction of
        the radix, taken when it does not go negative, is the whole carry rule. Every digit after the
        first is computed for both carries in and chosen by the carry (a carry-select): the carries pass
        through multiplexers, not adders."""
        c, d = pe.coord, step.coord
        nxt = data.View(layout, Signal(layout.size, name=f"pe{i}_next"))

        def digit(name, a, b, carry, radix, width, named=True):
            """(a + b + carry) mod radix and its carry out, for a, b < radix (the digit a signal when
            ``named``: one copy for its several readers). The sum is at least the radix when its bits
            above the radix's are set or its low bits are at least the radix; the digit is then the low
            bits less the radix (a difference's low bits depend on its operands' low bits only): every
            compare and subtraction on operands of one width."""
            n = len(radix)
            total = Signal(width + 2, name=f"pe{i}_{name}_sum")
            out = Signal(name=f"pe{i}_{name}_carry")
            high = total[n:].any() if len(total) > n else 0
            m.d.comb += [total.eq(a + b + carry), out.eq(high | (total[:n] >= radix))]
            value = Mux(out, total[:n] - radix, total[:n])
            if named:
                named_value = Signal(width, name=f"pe{i}_{name}")
                m.d.comb += named_value.eq(value)
                value = named_value
            return value, out

        def plus(a, b, carry):  # a + b + carry, both sums formed at once
            return Mux(carry, a + b + 1, a + b)

        # ox's carry reaches oy, whose digit is formed for both carries and chosen (y_pad, y_left wait
        # for oy); cb and co take oy's carry in their adders (their paths are shorter).
        ox, cx = digit("ox", c.ox, d.ox, 0, self.w_out, DIM)
        (oy0, cy0), (oy1, cy1) = (digit(f"oy{k}", c.oy, d.oy, k, self.h_out, DIM) for k in (0, 1))
        oy, cy = Signal(DIM, name=f"pe{i}_oy"), Signal(name=f"pe{i}_oy_carry")
        m.d.comb += [oy.eq(Mux(cx, oy1, oy0)), cy.eq(Mux(cx, cy1, cy0))]
        # col too (the group g, and with it the segment offset of the next round's address, waits for it)
        (col0, cc0), (col1, cc1) = (
            digit(f"col{k}", pe.col, step.col, k, self.out_per_group, DIM, named=False) for k in (0, 1)
        )
        col, cc = Mux(cy, col1, col0), Mux(cy, cc1, cc0)
        cb, cbc = digit("cb", c.cb, d.cb, cy, Const(self._config.pes, len(c.cb) + 1), len(c.cb), named=False)
        # ia = in_origin + oy·Wp + ox: the step's oy·Wp + ox, a row's Wp − w_out when ox carried
        # (row_step − 1), less h_out·Wp when oy did; the four sums at once, chosen by the carries.
        ia = Signal.like(pe.pointer.ia, name=f"pe{i}_ia_step")
        m.d.comb += ia.eq(pe.pointer.ia + step.ia)
        ia_row, ia_row_plane = ia_carries
        ia_x = Mux(cx, ia + ia_row, ia)
        ia_xy = Mux(cx, ia + ia_row_plane, ia - self.ia_plane)
        m.d.comb += [
            nxt.coord.ox.eq(ox),
            nxt.coord.oy.eq(oy),
            nxt.coord.co.eq(c.co + d.co + cy),  # (oy's carry is early enough for one adder)
            nxt.col.eq(col),
            nxt.coord.g.eq(plus(c.g, d.g, cc)),
            nxt.coord.cb.eq(cb),
            nxt.coord.cr.eq(plus(c.cr, d.cr, cbc)),
            nxt.coord.lin.eq(c.lin + Const(self._config.pes, len(c.lin))),
            nxt.pointer.ia.eq(Mux(cy, ia_xy, ia_x)),
        ]
        return nxt
