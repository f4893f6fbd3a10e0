"""cocotb testbench of the engine inside the recorder (``accel_cosim_top``, :mod:`verification.recorder`):
the co-simulation at the simulator's speed, for whole layers of real traces (``accel cosim``).

Run by :func:`verification.trace_cosim.run_recorded` through ``cocotb_tools.runner``; the tiles and their
expectations come from the .npz named by ``$ACCEL_COSIM_DATA`` (:mod:`verification.cosim_data`), as for
:mod:`verification.cosim_tb`, and this module never imports the cycle model. One cocotb test per tile, each a
short body around one :class:`RecordedTestbench`:

* **driver** (:class:`~verification.driver.EngineDriver` over a :class:`RecordedTransport`): loads the tile
  one write per cycle (``load_burst``: the recorder reads the writes from a file and offers them itself,
  one trigger; it counts any the engine did not take at once), raises ``start``, waits for the single
  rising edge of ``done`` (no Python runs during the run), and unloads every output row, queue row and
  counter back to back (``request_burst``: one request per cycle, ``resp.ready`` held high);
* **monitor**: the recorder's log (:class:`RecorderLog`), read after the run and after the unload: the
  run's start, busy and done cycles, every output write the trace ports showed, the responses, the
  protocol errors the wrapper saw;
* **model**: the case's expectations;
* **checker**: :func:`verification.cosim_check.compare` (or ``compare_queue`` for a phase-2-only run), the
  same as the per-cycle testbench's, and the run's protocol (busy rises the cycle after ``start``, stays
  high in one piece, ``done`` in the cycle after the last busy one).

What the per-cycle testbench checks besides (stalled streams, reset in a run, double-buffered overlap,
entries beyond the tile) is left to it (``tests/cosim``); here the streams run at full rate, as a host
with a burst interface drives them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge, with_timeout

from spec.config import EngineConfig
from spec.protocol import RunMode
from spec.tile import QueueLoad
from verification.cocotb_transport import CLOCK_NS
from verification.cosim_check import Run, compare, compare_queue
from verification.cosim_data import (
    DATA_ENV,
    REPORT_ENV,
    STATS_ENV,
    CosimCase,
    append_record,
    environment_case_count,
    load_cases,
)
from verification.driver import EngineDriver

__all__ = ["LOAD_ENV", "LOG_ENV", "RecordedTestbench", "RecordedTransport", "RecorderLog", "recorded_tile"]

LOG_ENV = "ACCEL_COSIM_LOG"  # the recorder's log (the same path as its +cosim_log plusarg)
LOAD_ENV = "ACCEL_COSIM_LOAD"  # the load bursts' file (the same path as the +cosim_load plusarg)


class RecorderLog:
    """Reads the recorder's log as it grows: each :meth:`events` call returns the lines written since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def events(self) -> list[list[str]]:
        with open(self.path) as f:
            f.seek(self._offset)
            text = f.read()
        end = text.rfind("\n") + 1  # a line still being written waits for the next call
        self._offset += len(text[:end].encode())
        return [line.split(" ") for line in text[:end].splitlines() if line]


def _hex(text: str, care: int | None = None) -> int:
    """A recorder hex value; X/Z digits (four-state simulators) raise unless outside ``care``."""
    try:
        return int(text, 16)
    except ValueError:
        pass
    value = 0
    for i, digit in enumerate(reversed(text.lower())):
        if digit in "0123456789abcdef":
            value |= int(digit, 16) << (4 * i)
        elif care is None or (care >> (4 * i)) & 0xF:
            raise AssertionError(f"response {text} has X/Z bits (hex digit {i})")
    return value


class RecordedTransport:
    """The engine's streams driven at full rate, observed through the recorder's log."""

    def __init__(self, dut: SimHandleBase, log: RecorderLog, pes: int, burst_file: Path) -> None:
        self.dut = dut
        self.log = log
        self.burst_file = burst_file
        self.pes = pes
        self.errors: list[str] = []
        self.responses: list[str] = []
        self.counts = (0, 0, 0)  # load writes taken, offers dropped, requests taken (the recorder's)
        self.run: Run | None = None
        width = len(dut.wb_addr)
        self.lin_width = width // pes

    def idle_inputs(self) -> None:
        dut = self.dut
        for name in ("start", "load__valid", "req__valid", "tb_flush", "tb_burst", "tb_burst_n"):
            getattr(dut, name).value = 0
        dut.resp__ready.value = 1  # every response is taken the cycle it comes

    async def reset(self, cycles: int = 3) -> None:
        self.dut.rst.value = 1
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def load_burst(self, payloads) -> None:
        """The writes one per cycle from the recorder's burst memory (the file it reads, then one trigger);
        the recorder counts any offer the engine did not take at once."""
        dut = self.dut
        payloads = [int(p) for p in payloads]
        if not payloads:
            return
        self.burst_file.write_text("".join(f"{p:x}\n" for p in payloads))
        dut.tb_burst_n.value = len(payloads)
        dut.tb_burst.value = 1
        await RisingEdge(dut.clk)
        dut.tb_burst.value = 0
        try:  # (the engine takes a write per cycle while idle: a burst that stalls is a failure)
            await with_timeout(FallingEdge(dut.tb_burst_busy), (len(payloads) + 1000) * CLOCK_NS, "ns")
        except TimeoutError:
            raise AssertionError(f"a burst of {len(payloads)} load writes was not taken in time") from None

    async def request_burst(self, payloads, cares) -> list[int]:
        """One request per cycle, then the responses the recorder logged."""
        dut = self.dut
        dut.req__valid.value = 1
        for payload in payloads:
            dut.req__payload.value = int(payload)
            await RisingEdge(dut.clk)
        dut.req__valid.value = 0
        await RisingEdge(dut.clk)  # the last response
        await self.flush()
        words, self.responses = self.responses, []
        if len(words) != len(payloads):
            raise AssertionError(f"{len(payloads)} requests, {len(words)} responses")
        return [_hex(w, c) for w, c in zip(words, cares, strict=True)]

    async def flush(self) -> None:
        """Have the recorder write its counts and flush its log, then read it."""
        dut = self.dut
        dut.tb_flush.value = 1
        await RisingEdge(dut.clk)
        dut.tb_flush.value = 0
        await RisingEdge(dut.clk)
        self._read()

    async def start(self) -> None:
        self.run = Run()
        self.dut.start.value = 1
        await RisingEdge(self.dut.clk)
        self.dut.start.value = 0

    async def wait_done(self, timeout_cycles: int) -> Run:
        try:
            await with_timeout(RisingEdge(self.dut.done), timeout_cycles * CLOCK_NS, "ns")
        except TimeoutError:
            await self.flush()
            raise AssertionError(f"no done within {timeout_cycles} cycles of start") from None
        await RisingEdge(self.dut.clk)
        await self.flush()
        return self.run

    def _read(self) -> None:
        """Fold the log's new lines into the run, the responses and the errors."""
        run, mask = self.run, (1 << self.lin_width) - 1
        for event in self.log.events():
            kind = event[0]
            if kind == "Q":
                self.responses.append(event[1])
            elif kind == "C":
                self.counts = tuple(int(v) for v in event[1:4])
            elif kind == "E":
                self.errors.append(" ".join(event[1:]))
            elif run is None:
                self.errors.append(f"run event {' '.join(event)} outside a run")
            elif kind == "S":
                run.start_cycle = int(event[1])
            elif kind == "B":
                if run.rise_cycle is not None:
                    self.errors.append(f"busy rose twice in one run (cycles {run.rise_cycle}, {event[1]})")
                run.rise_cycle = int(event[1])
                run.rise_ns = float(event[2]) - CLOCK_NS  # (logged at the edge that ends the cycle)
            elif kind == "W":
                n, valid, queue, addrs = (
                    int(event[1]),
                    int(event[2], 16),
                    int(event[3], 16),
                    int(event[4], 16),
                )
                for i in range(self.pes):
                    if (valid >> i) & 1:
                        into = run.queue_writes if i == 0 and queue else run.writes
                        into[(addrs >> (i * self.lin_width)) & mask] = n
                        run.n_writes += 1
            elif kind == "F":
                run.fall_cycle, run.busy_cycles = int(event[1]), int(event[2])
            elif kind == "D":
                if run.done_cycle is not None:
                    self.errors.append(f"done pulsed again in cycle {event[1]} (first in {run.done_cycle})")
                run.done_cycle = int(event[1])
            else:
                self.errors.append(f"unknown recorder event {' '.join(event)}")

    def run_problems(self) -> list[str]:
        """The run's protocol, from its events (what the per-cycle monitor checks as it goes)."""
        run, problems = self.run, []
        if run.start_cycle is None or run.rise_cycle != run.start_cycle + 1:
            problems.append(f"busy did not rise the cycle after start ({run.describe()})")
        if run.fall_cycle is None or run.done_cycle != run.fall_cycle:
            problems.append(
                f"done is not high exactly the cycle after the last busy cycle ({run.describe()})"
            )
        if run.fall_cycle is not None and run.rise_cycle is not None:
            if run.fall_cycle - run.rise_cycle != run.busy_cycles:
                problems.append(f"busy was not high in one piece ({run.describe()})")
        return problems


class RecordedTestbench:
    """Driver, recorder log, model and checker around one engine, for the cases of ``$ACCEL_COSIM_DATA``."""

    def __init__(self, config: EngineConfig, cases: list[CosimCase], report: Path | None, stats: Path | None):
        self.config = config
        self.cases = cases
        self.report_path = report
        self.stats_path = stats
        self.transport: RecordedTransport | None = None
        self.driver: EngineDriver | None = None
        self._loads = 0  # load writes made, to compare with the recorder's count

    @classmethod
    def from_environment(cls) -> RecordedTestbench:
        config, cases = load_cases(os.environ[DATA_ENV])
        paths = [Path(os.environ[env]) if os.environ.get(env) else None for env in (REPORT_ENV, STATS_ENV)]
        return cls(config, cases, *paths)

    async def start(self, dut: SimHandleBase) -> None:
        if self.transport is None:
            log = RecorderLog(Path(os.environ[LOG_ENV]))
            self.transport = RecordedTransport(dut, log, self.config.pes, Path(os.environ[LOAD_ENV]))
            self.driver = EngineDriver(self.config, self.transport)
            self.transport.idle_inputs()
            Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)
            await self.transport.reset()
        else:
            Clock(dut.clk, CLOCK_NS, unit="ns").start(start_high=False)

    async def check_tile(self, index: int) -> None:
        """Load case ``index`` (every write first made with its data inverted: a write the engine takes but
        drops would leave the wrong word, not the earlier run's same one), run it, unload everything and
        compare with the model. On any failure the engine is reset, so the next case starts clean."""
        case, t = self.cases[index], self.transport
        try:
            problems, stats = await self._check(index)
        except AssertionError as exc:
            problems, stats = [str(exc)], {"tile": index, "passed": False}
            with contextlib.suppress(AssertionError):
                await t.flush()
            problems = t.errors + problems
            t.errors, t.responses, t.run = [], [], None
            self._loads = t.counts[0]  # (the recorder's count, from here on)
            await t.reset()
        append_record(self.stats_path, stats)
        if problems:
            message = f"tile {index} '{case.name}' ({case.tile.geometry}): " + "; ".join(problems)
            append_record(self.report_path, {"tile": index, "name": case.name, "message": message})
            raise AssertionError(message)

    async def _check(self, index: int) -> tuple[list[str], dict]:
        case, driver, t = self.cases[index], self.driver, self.transport
        g = case.tile.geometry
        mode = RunMode(case.run)
        queue = QueueLoad(case.queue_lins, case.queue_psums) if case.queue_lins is not None else None
        wall, sim0 = time.perf_counter(), get_sim_time("ns")
        loads = await driver.load_tile(
            case.tile, "all", layer=case.layer, run=mode, queue=queue, half=case.half, poison=True
        )
        self._loads += loads
        loaded = time.perf_counter()
        await t.start()
        run = await t.wait_done(2 * int(case.counters["cycles"]) + 1000)
        ran = time.perf_counter()
        problems = t.run_problems()
        if queue is not None:
            results = await driver.read_queue(len(queue.lins), case.half)
            counters = await driver.read_counters()
            problems += compare_queue(self.config, case, results, counters, run, {})
        else:
            words = await driver.read_words(range(g.n_outputs), case.half)
            counters = await driver.read_counters()
            if mode is not RunMode.PHASE1:
                words = await driver.merge_results(g, words, case.half)
            problems += compare(self.config, case, words, counters, run, {})
        await t.flush()
        t.run = None  # from here on a run event is one outside any run
        taken, dropped, _ = t.counts
        if taken != self._loads or dropped:
            problems.append(f"the engine took {taken} of {self._loads} load writes; {dropped} offers dropped")
        problems = t.errors + problems
        t.errors = []
        stats = {
            "tile": index,
            "passed": not problems,
            "busy_cycles": run.busy_cycles,
            "cycles": counters["cycles"],
            "macs": counters["base_macs"] + counters["cond_macs"],
            "load_writes": loads,
            # load, run, unload and the recorder's flushes
            "clock_cycles": round((get_sim_time("ns") - sim0) / CLOCK_NS),
            "wall_s": time.perf_counter() - wall,
            "load_s": loaded - wall,
            "run_s": ran - loaded,
        }
        return problems, stats


@functools.cache
def testbench() -> RecordedTestbench:
    return RecordedTestbench.from_environment()


@cocotb.test()
@cocotb.parametrize(tile=list(range(environment_case_count())))
async def recorded_tile(dut: SimHandleBase, tile: int) -> None:
    """Load tile ``tile``, run it, unload everything and compare with the model (the recorder watches)."""
    tb = testbench()
    await tb.start(dut)
    await tb.check_tile(tile)
