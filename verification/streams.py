"""valid/ready stream helpers (``amaranth.lib.stream``), for Amaranth's simulator and for cocotb.

:class:`AmaranthStream` moves payloads across a stream interface of the elaboratable from an Amaranth
testbench (``ctx``); :class:`CocotbStream` does the same across the flattened ports of the generated
Verilog (a stream port ``load`` becomes ``load__valid``, ``load__ready`` and ``load__payload``). Both offer
``put(payload)`` (we are the source) and ``get()`` (we are the sink) and return the cycles they waited for
the other side (``put``) or the payload as an unsigned integer (``get``).

cocotb timing convention: both calls are entered in a writable phase just after a rising clock edge (that
is, after ``await RisingEdge(clk)``, or at the start of a test before the first edge) and return in the same
kind of phase, right after the edge at which the transfer happened. The handshake is sampled in ``ReadOnly``
(the settled values of the cycle), so it does not matter whether a simulator updates registered outputs
before or after cocotb resumes on the edge (Icarus and Verilator differ there). Back-to-back calls transfer
one payload per cycle.
"""

from __future__ import annotations

__all__ = ["AmaranthStream", "CocotbStream", "StreamStall"]


class StreamStall(AssertionError):
    """The other side did not complete a handshake within the allowed number of cycles."""


class AmaranthStream:
    """One ``amaranth.lib.stream`` interface of the design under Amaranth's simulator."""

    last_wait = 0  # not counted: Amaranth's simulator checks no spec timing

    def __init__(self, ctx, stream) -> None:
        self.ctx = ctx
        self.stream = stream

    async def put(self, payload) -> int:
        """Offer ``payload`` until the sink takes it; an integer for a structured layout is its flat bits."""
        ctx, stream = self.ctx, self.stream
        target = stream.payload
        if isinstance(payload, int) and hasattr(target, "as_value"):
            target = target.as_value()
        ctx.set(stream.valid, 1)
        ctx.set(target, payload)
        await ctx.tick().until(stream.ready)
        ctx.set(stream.valid, 0)
        return 0

    async def get(self):
        """Take one payload."""
        ctx, stream = self.ctx, self.stream
        ctx.set(stream.ready, 1)
        (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
        ctx.set(stream.ready, 0)
        return payload


class CocotbStream:
    """The ``<name>__valid``, ``<name>__ready`` and ``<name>__payload`` handles of one stream port.

    ``timeout`` bounds each wait for the other side, in cycles (:class:`StreamStall` beyond it); the cycles
    the last transfer waited are in ``last_wait``.
    """

    def __init__(self, dut, name: str, *, clk=None, timeout: int | None = None) -> None:
        self.name = name
        self.clk = clk if clk is not None else dut.clk
        self.timeout = timeout
        self.last_wait = 0
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")

    def __repr__(self) -> str:
        return f"CocotbStream({self.name!r})"

    async def _transfer(self, ours: str, theirs: str):
        """Raise our flag, wait (sampling in ReadOnly) for theirs, take the payload, transfer at the edge."""
        from cocotb.triggers import ReadOnly, RisingEdge

        getattr(self, ours).value = 1
        waited = 0
        while True:
            await ReadOnly()
            if getattr(self, theirs).value == 1:
                value = self.payload.value
                break
            if self.timeout is not None and waited >= self.timeout:
                raise StreamStall(f"{self.name}: {theirs} stayed low for {waited} cycles with {ours} high")
            await RisingEdge(self.clk)
            waited += 1
        await RisingEdge(self.clk)  # the transfer happens at this edge
        getattr(self, ours).value = 0
        self.last_wait = waited
        return value

    async def put(self, payload: int) -> int:
        """Offer ``payload`` until the sink takes it; return the cycles spent waiting for ``ready``."""
        self.payload.value = payload
        await self._transfer("valid", "ready")
        return self.last_wait

    async def get(self) -> int:
        """Take one payload, as an unsigned integer; X/Z bits raise :class:`AssertionError`."""
        value = await self._transfer("ready", "valid")
        if not value.is_resolvable:
            raise AssertionError(f"{self.name}: payload {value} has unresolved (X/Z) bits")
        return value.to_unsigned()
