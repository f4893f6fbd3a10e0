"""valid/ready stream helpers for cocotb testbenches of Amaranth designs (``amaranth.lib.stream``).

The Verilog that Amaranth writes flattens a stream port ``load`` into ``load__valid``, ``load__ready`` and
``load__payload``; :class:`StreamPort` gathers the three handles, and :func:`stream_put` /
:func:`stream_get` move one payload across it, mirroring ``tests/streams.py`` (the same helpers for
Amaranth's own simulator).

Timing convention: both helpers are entered in a writable phase just after a rising clock edge (that is,
after ``await RisingEdge(clk)``, or at the start of a test before the first edge) and return in the same
kind of phase, right after the edge at which the transfer happened. The handshake is sampled in
``ReadOnly`` (the settled values of the cycle), so it does not matter whether a simulator updates
registered outputs before or after cocotb resumes on the edge (Icarus and Verilator differ there).
Back-to-back calls transfer one payload per cycle.
"""

from __future__ import annotations

from cocotb.handle import SimHandleBase
from cocotb.triggers import ReadOnly, RisingEdge

__all__ = ["StreamPort", "StreamStall", "stream_get", "stream_put"]


class StreamStall(AssertionError):
    """The other side did not complete a handshake within the allowed number of cycles."""


class StreamPort:
    """The ``<name>__valid``, ``<name>__ready`` and ``<name>__payload`` handles of one stream port."""

    def __init__(self, dut: SimHandleBase, name: str) -> None:
        self.name = name
        self.last_wait = 0  # cycles the last stream_put / stream_get waited for the other side
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")

    def __repr__(self) -> str:
        return f"StreamPort({self.name!r})"


async def stream_put(
    clk: SimHandleBase, stream: StreamPort, payload: int, *, timeout: int | None = None
) -> int:
    """Offer ``payload`` on ``stream`` (we are the source) until the sink takes it.

    Returns the number of cycles spent waiting for ``ready``. ``timeout`` bounds that wait (in cycles);
    exceeding it raises :class:`StreamStall`.
    """
    stream.payload.value = payload
    stream.valid.value = 1
    waited = 0
    while True:
        await ReadOnly()
        if stream.ready.value == 1:
            break
        if timeout is not None and waited >= timeout:
            raise StreamStall(f"{stream.name}: ready stayed low for {waited} cycles with valid high")
        await RisingEdge(clk)
        waited += 1
    await RisingEdge(clk)  # the transfer happens at this edge
    stream.valid.value = 0
    stream.last_wait = waited
    return waited


async def stream_get(clk: SimHandleBase, stream: StreamPort, *, timeout: int | None = None) -> int:
    """Take one payload from ``stream`` (we are the sink); return it as an unsigned integer.

    ``timeout`` bounds the wait for ``valid`` in cycles (:class:`StreamStall` beyond it); the wait is left
    in ``stream.last_wait``. A payload with X/Z bits raises :class:`AssertionError` naming the stream.
    """
    stream.ready.value = 1
    waited = 0
    while True:
        await ReadOnly()
        if stream.valid.value == 1:
            value = stream.payload.value
            break
        if timeout is not None and waited >= timeout:
            raise StreamStall(f"{stream.name}: valid stayed low for {waited} cycles with ready high")
        await RisingEdge(clk)
        waited += 1
    await RisingEdge(clk)  # the transfer happens at this edge
    stream.ready.value = 0
    stream.last_wait = waited
    if not value.is_resolvable:
        raise AssertionError(f"{stream.name}: payload {value} has unresolved (X/Z) bits")
    return value.to_unsigned()
