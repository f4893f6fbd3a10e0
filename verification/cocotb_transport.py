"""The generated Verilog (``gated_conv_engine``) under cocotb, as an engine transport
(:class:`~verification.driver.EngineTransport`).

:meth:`CocotbTransport.wait_done` waits on a single ``RisingEdge(dut.done)`` trigger: no Python runs per
cycle during the run, so its wall time is the simulator's own speed (what the benchmark times). A
testbench that watches every cycle overrides it (``verification.cosim_tb``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout

from verification.streams import CocotbStream

__all__ = ["CLOCK_NS", "HANDSHAKE_TIMEOUT", "CocotbTransport", "TimedRun"]

CLOCK_NS = 10
HANDSHAKE_TIMEOUT = 64  # cycles a stream may stall while the engine is idle


@dataclass
class TimedRun:
    """A run seen from its start edge to the rising edge of ``done``: wall time and clock cycles."""

    wall_s: float
    sim_cycles: int


class CocotbTransport:
    """Streams, ``start``, reset and clock of one ``gated_conv_engine`` instance."""

    def __init__(self, dut: SimHandleBase, *, timeout: int = HANDSHAKE_TIMEOUT) -> None:
        self.dut = dut
        self.load = CocotbStream(dut, "load", timeout=timeout)
        self.req = CocotbStream(dut, "req", timeout=timeout)
        self.resp = CocotbStream(dut, "resp", timeout=timeout)

    def idle_inputs(self) -> None:
        """Drive every input the host owns to its idle value."""
        dut = self.dut
        dut.start.value = 0
        dut.load__valid.value = 0
        dut.req__valid.value = 0
        dut.resp__ready.value = 0

    def start_clock(self, impl: str | None = None) -> Clock:
        """Start the clock; ``impl="gpi"`` toggles it in C (cocotb's default picks a Python coroutine clock
        unless COCOTB_TRUST_INERTIAL_WRITES is set, as the runner does for Verilator but not for Icarus)."""
        clock = Clock(self.dut.clk, CLOCK_NS, unit="ns", **({"impl": impl} if impl else {}))
        clock.start()
        return clock

    async def tick(self, cycles: int = 1) -> None:
        """Let ``cycles`` rising edges pass (inputs unchanged)."""
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)

    async def reset(self, cycles: int = 3) -> None:
        """``rst`` high from now (a writable phase) for ``cycles`` rising edges, then low for one more."""
        dut = self.dut
        dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def start(self) -> None:
        """``start`` high for one cycle: it is sampled at the next edge, SETUP is the cycle after."""
        self.dut.start.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.start.value = 0

    async def wait_done(self, timeout_cycles: int | None = None) -> TimedRun:
        """Wait for the rising edge of ``done`` (one trigger, no Python per cycle), then for the engine to be
        idle again; return the run's wall time and clock cycles."""
        dut = self.dut
        sim0 = get_sim_time(unit="ns")
        t0 = time.perf_counter()
        if timeout_cycles is None:
            await RisingEdge(dut.done)
        else:
            await with_timeout(RisingEdge(dut.done), timeout_cycles * CLOCK_NS, "ns")
        wall_s = time.perf_counter() - t0
        sim1 = get_sim_time(unit="ns")
        await ReadOnly()
        if dut.done.value != 1 or dut.busy.value != 0:
            raise AssertionError(f"at the edge of done: done = {dut.done.value}, busy = {dut.busy.value}")
        await RisingEdge(dut.clk)  # done falls, the engine is idle again
        return TimedRun(wall_s, round((sim1 - sim0) / CLOCK_NS))
