"""The engine under Amaranth's simulator as a :class:`~verification.driver.EngineTransport`."""

from __future__ import annotations

from dataclasses import dataclass, field

from verification.streams import AmaranthStream

__all__ = ["AmaranthRun", "AmaranthTransport"]


@dataclass
class AmaranthRun:
    """What a run showed: its busy cycles and, per output entry (``lin``), the cycle of the run (1 = the
    first busy cycle) in which the trace port last showed it written; phase 2's result writes by banked
    work-queue address (``wb_queue``; :func:`verification.layout.queue_write_outputs` maps them)."""

    busy: int = 0
    writes: dict[int, int] = field(default_factory=dict)
    queue_writes: dict[int, int] = field(default_factory=dict)


class AmaranthTransport:
    """Streams, ``start`` and trace ports of a ``rtl.engine.GatedConvEngine`` (from testbench ``ctx``)."""

    def __init__(self, ctx, dut, pes: int) -> None:
        self.ctx = ctx
        self.dut = dut
        self.pes = pes
        self.load = AmaranthStream(ctx, dut.load)
        self.req = AmaranthStream(ctx, dut.req)
        self.resp = AmaranthStream(ctx, dut.resp)

    async def start(self) -> None:
        self.ctx.set(self.dut.start, 1)
        await self.ctx.tick()
        self.ctx.set(self.dut.start, 0)

    async def wait_done(self, timeout_cycles: int | None = None) -> AmaranthRun:
        ctx, dut = self.ctx, self.dut
        run = AmaranthRun()
        cycles = 0
        while not ctx.get(dut.done):
            cycles += 1
            if timeout_cycles is not None and cycles > timeout_cycles:
                raise AssertionError(f"no done within {timeout_cycles} cycles of start")
            run.busy += ctx.get(dut.busy)
            valid, to_queue = ctx.get(dut.wb_valid), ctx.get(dut.wb_queue)
            for i in range(self.pes):
                if (valid >> i) & 1:
                    into = run.queue_writes if i == 0 and to_queue else run.writes
                    into[ctx.get(dut.wb_addr[i])] = run.busy
            await ctx.tick()
        return run
