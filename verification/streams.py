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

Stalls (a knob of :class:`CocotbStream`, off by default): ``stalls`` is an iterator of cycle counts, one
taken per transfer (:func:`stall_pattern` makes a seeded random or a fixed cyclic one). As a source the
stream keeps ``valid`` low that many cycles before it offers the payload (a host that does not write every
cycle); as a sink it keeps ``ready`` low that many cycles *after* ``valid`` rose before it takes the payload
(a host that takes a response late), and checks that ``valid`` stays high and the payload does not change
while it is held (the valid/ready rule: a payload offered stays offered, unchanged, until taken).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np

__all__ = ["AmaranthStream", "CocotbStream", "StreamStall", "stall_pattern"]


def stall_pattern(spec: int | Sequence[int], seed: int | Sequence[int] = 0) -> Iterator[int] | None:
    """Stall lengths for :attr:`CocotbStream.stalls`: ``spec`` an integer ``n`` draws each one uniformly from
    ``[0, n]`` (seeded by ``seed``), a sequence is repeated as it is; ``0`` or an empty sequence: None (no
    stalls)."""
    if isinstance(spec, int | np.integer):
        n = int(spec)
        if n < 0:
            raise ValueError(f"stall length {n} is negative")
        if n == 0:
            return None
        rng = np.random.default_rng(seed)
        return (int(v) for v in iter(lambda: rng.integers(0, n + 1), None))
    fixed = [int(v) for v in spec]
    if any(v < 0 for v in fixed):
        raise ValueError(f"stall pattern {fixed} has a negative length")
    return itertools.cycle(fixed) if any(fixed) else None


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

    async def get(self, care: int | None = None):
        """Take one payload (``care``: see :meth:`CocotbStream.get`; Amaranth's simulator has no X)."""
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
        # Stall knob (see the module's docstring): None, or one stall length per transfer.
        self.stalls: Iterator[int] | None = None
        # Called with True when the sink starts holding ``ready`` low with a payload due, and with False
        # (in a writable phase) just before it takes the payload: a testbench drives other inputs meanwhile.
        self.while_held: Callable[[bool], None] | None = None
        self.stalled_cycles = 0  # cycles spent in stalls so far (valid low as a source, held as a sink)
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
        gap = next(self.stalls) if self.stalls is not None else 0
        if gap:
            from cocotb.triggers import RisingEdge

            for _ in range(gap):  # valid stays low
                await RisingEdge(self.clk)
            self.stalled_cycles += gap
        self.payload.value = payload
        await self._transfer("valid", "ready")
        return self.last_wait

    async def get(self, care: int | None = None) -> int:
        """Take one payload, as an unsigned integer; X/Z bits raise :class:`AssertionError` (with ``care``,
        only in the bits it sets: the others, e.g. the entries of a row the host does not use, read as 0),
        and so does a held payload (see ``stalls``) that changes or drops ``valid`` before it is taken."""
        hold = next(self.stalls) if self.stalls is not None else 0
        if hold:
            waited, held = await self._hold(hold)
        value = await self._transfer("ready", "valid")
        if hold:
            if str(value) != str(held):
                raise AssertionError(
                    f"{self.name}: payload changed from {held} to {value} while held for {hold} cycles"
                )
            self.last_wait = waited  # the cycles before valid rose; the hold is ours
        if value.is_resolvable:
            return value.to_unsigned()
        lsb_first = str(value)[::-1]
        bad = [i for i, c in enumerate(lsb_first) if c not in "01" and (care is None or (care >> i) & 1)]
        if bad:
            raise AssertionError(f"{self.name}: payload {value} has unresolved (X/Z) bits (bit {bad[0]} …)")
        return int("".join("1" if c == "1" else "0" for c in reversed(lsb_first)) or "0", 2)

    async def _hold(self, cycles: int):
        """Keep ``ready`` low until ``valid`` has been high for ``cycles`` cycles, checking that it stays high
        with the same payload; return the cycles waited for ``valid`` and the held payload. Returns in a
        writable phase, right after the edge that ends the last held cycle."""
        from cocotb.triggers import ReadOnly, RisingEdge

        self.ready.value = 0
        if self.while_held is not None:
            self.while_held(True)
        waited = 0
        while True:
            await ReadOnly()
            if self.valid.value == 1:
                break
            if self.timeout is not None and waited >= self.timeout:
                raise StreamStall(f"{self.name}: valid stayed low for {waited} cycles")
            await RisingEdge(self.clk)
            waited += 1
        held = self.payload.value
        for i in range(1, cycles):
            await RisingEdge(self.clk)
            await ReadOnly()
            valid, now = self.valid.value, self.payload.value
            if valid != 1 or str(now) != str(held):
                raise AssertionError(
                    f"{self.name}: held payload {held} became valid={valid} payload={now} in cycle {i + 1} "
                    f"of {cycles} with ready low (it must stay valid and unchanged until taken)"
                )
        await RisingEdge(self.clk)
        if self.while_held is not None:
            self.while_held(False)
        self.stalled_cycles += cycles
        return waited, held
