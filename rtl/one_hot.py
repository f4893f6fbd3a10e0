"""One-hot decoding of an index, as a decoder the Verilog keeps by name."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, Value

__all__ = ["one_hot"]


def one_hot(m: Module, index: Value, enable: Value, width: int, name: str) -> Signal:
    """``enable << index`` over ``width`` bits, decoded by a case statement (an index past the end: 0).

    The shift a Python expression would give is wider than ``width``; a signal assigned from it is an alias
    of the shift's low bits that yosys inlines, leaving the name unused (a Verilator warning per use). The
    case statement drives the named signal itself.
    """
    hot = Signal(width, name=name)
    with m.If(enable):
        with m.Switch(index):
            for b in range(width):
                with m.Case(b):
                    m.d.comb += hot[b].eq(1)
            if width < 1 << len(index):
                with m.Default():  # an index past the end: 0 (a complete case statement)
                    m.d.comb += hot.eq(0)
    return hot
