"""A 1R1W memory whose ports are the values that drive them: no port signals in the Verilog."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, MemoryData, MemoryInstance, Module, Shape, Signal, Value
from amaranth.utils import ceil_log2

__all__ = ["ram_1r1w"]


def _fit(value, width: int) -> Value:
    """``value`` as ``width`` bits (truncated or zero-extended, as an assignment to a port would)."""
    value = Value.cast(value)
    if len(value) >= width:
        return value[:width]
    return Cat(value, Const(0, width - len(value)))


def ram_1r1w(m: Module, name: str, shape, depth: int, *, waddr, wdata, wen, raddr, ren) -> Signal:
    """Add memory ``name`` (``depth`` words of ``shape``; no initial content: undefined at power-up in the
    Verilog, as in SRAM, zeros in Amaranth's simulator) to ``m`` and return its read
    data: the word at ``raddr`` one cycle after a cycle with ``ren`` high (held otherwise; a read of the
    word being written gives the old word). ``wdata`` is written at ``waddr`` in a cycle with ``wen`` high.

    ``amaranth.lib.memory.Memory`` has the same ports, but as signals of its own: each one driven from
    another value becomes an alias wire in the Verilog that nothing reads (a Verilator ``UNUSEDSIGNAL``
    per port). Here the ports are the values themselves; only the read data is a signal (named
    ``<name>_rdata``). Same memory cell, same name, same behaviour.
    """
    shape = Shape.cast(shape)
    aw = ceil_log2(depth)
    mem = MemoryInstance(data=MemoryData(shape=shape, depth=depth, init=[]))
    mem.write_port(domain="sync", addr=_fit(waddr, aw), data=_fit(wdata, shape.width), en=_fit(wen, 1))
    rdata = Signal(shape, name=f"{name}_rdata")
    mem.read_port(domain="sync", addr=_fit(raddr, aw), data=rdata, en=_fit(ren, 1), transparent_for=())
    m.submodules[name] = mem
    return rdata
