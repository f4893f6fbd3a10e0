"""cocotb testbench of ``gated_conv_engine`` (the Verilog that ``rtl/generate.py`` writes).

Run by :func:`verification.cosim.run_cosim` through ``cocotb_tools.runner`` (test module
``verification.cosim_tb``); the tiles and every expected result come from the pytest process in the .npz file
named by ``$ACCEL_COSIM_DATA`` (see :mod:`verification.cosim_data`), so this module never imports the cycle
model. Importing it without that variable defines no tests. One cocotb test per tile, all in one simulation,
in order, each a short body around one :class:`EngineTestbench` (created by the first test, kept by the
following ones, started and stopped by each):

* **driver** (:class:`~verification.driver.EngineDriver`): loads the tile through the ``load`` stream (every
  write of ``verification.layout.load_writes``, honouring valid/ready; or only the configuration registers,
  or nothing, when a case restarts on the data already loaded), raises ``start`` for one cycle, and unloads
  every output entry of the tile (and the entries of earlier, larger tiles that this run must not touch) and
  every counter through ``req``/``resp``; handshakes that wait against the spec come back through its
  ``on_protocol`` callback; the case's pacing knobs (``CosimCase.resp_stall``, ``load_gap``) set the streams'
  stalls (:func:`verification.streams.stall_pattern`): each response held with ``resp.ready`` low for a
  while (the stream checks it stays valid and unchanged; meanwhile a decoy request is offered on ``req``,
  which the engine must not take), ``load.valid`` low between writes;
* **monitor** (:class:`RunMonitor`, runs every cycle while the testbench is started): counts the cycles with
  ``busy`` high, checks that ``busy`` rises only after ``start``, stays high in one piece, that ``done`` is
  high exactly in the cycle after the last busy cycle and never otherwise, and records those cycles; in
  every busy cycle it samples the trace ports ``wb_valid``/``wb_addr``/``wb_queue`` and records, per output
  entry, the cycle of the run (1 = the first busy cycle, ``SETUP``) of its last write (a phase-2 result by the
  work-queue entry it went into, named by the gate bits read back) (no write may show while ``busy``
  is low); the end of a run is signalled to the driver by its ``finished`` event; in every cycle in which
  a response waits (``resp.valid`` high, ``resp.ready`` low) ``req.ready`` must be low; a run during which
  ``rst`` rose is aborted: busy falls, and ``done`` must not pulse;
* **model**: the case's expectations (the cycle model's outputs, gate bits, write cycles and counters);
* **checker** (:func:`compare`): compares every ``y``, gate bit, write cycle and counter with the model, the
  number of writes the trace showed with the schedule's, and the monitor's cycle count with the ``cycles``
  counter; a failure names the first diverging output ``(co, oy, ox)`` with expected and got values and
  write cycles (and the spec reference's, to say which side is off) and the simulation time of the model's
  write cycle (where to look in the waveform), every diverging counter, and the cycles of the run.

A case with ``reset_at`` (:meth:`EngineTestbench.abort_tile`) instead starts its run, raises ``rst`` in that
cycle of the busy period and checks the state the spec promises after reset (section 4, "Reset"): idle
(``busy`` and ``done`` low, ``load.ready`` and ``req.ready`` high, no response waiting), no ``done`` pulse,
every counter zero; the next case reloads (at least the registers) and must match the model.

The testbench writes its results itself: failures as JSON lines to ``$ACCEL_COSIM_REPORT`` for pytest, and
what each run took (cycles, MACs) to ``$ACCEL_COSIM_STATS``.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.simtime import get_sim_time
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout

from spec.config import EngineConfig
from spec.protocol import RunMode, UnloadTarget
from spec.tile import QueueLoad
from verification.cocotb_transport import CLOCK_NS, CocotbTransport
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
from verification.layout import pack_request
from verification.streams import stall_pattern

__all__ = ["EngineTestbench", "RunMonitor", "compare", "engine_tile"]

RECHECK_LIMIT = 256  # entries beyond the tile's own read back per run, besides the last round's


def _uint(value) -> int:
    """A resolvable value as an unsigned integer (a 1-bit port, e.g. ``wb_valid`` with P = 1, is a Logic)."""
    return value.to_unsigned() if hasattr(value, "to_unsigned") else int(value)


class RunMonitor:
    """Samples ``start``, ``busy``, ``done`` and the trace ports every cycle (in ReadOnly, after the edge)."""

    def __init__(self, dut: SimHandleBase, pes: int) -> None:
        self.dut = dut
        self.cycle = 0
        self.run: Run | None = None
        self.errors: list[str] = []
        self._busy = False
        self.waiting_cycles = 0  # cycles in which a response waited (resp.valid high, resp.ready low)
        self.pes = pes
        # wb_addr packs P lin fields, PE i at bits [i*w, (i+1)*w).
        width = len(dut.wb_addr)
        if width % pes:
            raise AssertionError(f"wb_addr is {width} bits wide, not a multiple of P = {pes}")
        self.lin_width = width // pes
        self._lin_mask = (1 << self.lin_width) - 1

    def expect_run(self) -> Run:
        """Called by the driver in the cycle it raises ``start``."""
        if self.run is not None and self.run.rise_cycle is not None and self.run.fall_cycle is None:
            self.errors.append(f"cycle {self.cycle}: start raised while a run is in progress")
        self.run = Run()
        return self.run

    def _error(self, text: str) -> None:
        self.errors.append(f"cycle {self.cycle}: {text}")

    def _trace(self, run: Run) -> None:
        """Record the output-buffer writes the trace ports show in this busy cycle of ``run``."""
        valid_v = self.dut.wb_valid.value
        if not valid_v.is_resolvable:
            self._error(f"wb_valid = {valid_v} is not 0/1 (cycle {run.busy_cycles} of the run)")
            return
        valid = _uint(valid_v)
        if not valid:
            return
        addr_v = self.dut.wb_addr.value
        if not addr_v.is_resolvable:
            self._error(f"wb_addr = {addr_v} has X/Z bits with wb_valid = {valid:#b}")
            return
        addrs = _uint(addr_v)
        queue_v = self.dut.wb_queue.value
        if not queue_v.is_resolvable:
            self._error(f"wb_queue = {queue_v} is not 0/1 with wb_valid = {valid:#b}")
            return
        for i in range(self.pes):
            if (valid >> i) & 1:
                into = run.queue_writes if i == 0 and _uint(queue_v) else run.writes
                into[(addrs >> (i * self.lin_width)) & self._lin_mask] = run.busy_cycles
                run.n_writes += 1

    async def watch(self) -> None:
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            self.cycle += 1
            busy_v, done_v = dut.busy.value, dut.done.value
            if not (busy_v.is_resolvable and done_v.is_resolvable):
                self._error(f"busy = {busy_v}, done = {done_v} are not 0/1")
                continue
            busy, done = bool(busy_v), bool(done_v)
            run = self.run
            if run is not None and run.start_cycle is None and dut.start.value == 1:
                run.start_cycle = self.cycle
            if (
                dut.rst.value == 1
                and run is not None
                and run.rise_cycle is not None
                and run.fall_cycle is None
                and run.reset_cycle is None
            ):
                run.reset_cycle = self.cycle
            self._handshakes()
            if busy and not self._busy:  # busy rises
                if run is None or run.start_cycle is None or run.rise_cycle is not None:
                    self._error("busy rose without a start")
                else:
                    run.rise_cycle = self.cycle
                    run.rise_ns = get_sim_time("ns")
                    if run.rise_cycle != run.start_cycle + 1:
                        self._error(
                            f"busy rose {run.rise_cycle - run.start_cycle} cycles after the cycle with start "
                            "high; SETUP is the cycle right after start is sampled"
                        )
            if busy and run is not None and run.fall_cycle is None:
                run.busy_cycles += 1
                self._trace(run)
            elif not busy:
                valid_v = dut.wb_valid.value
                if not valid_v.is_resolvable or _uint(valid_v):
                    self._error(f"wb_valid = {valid_v} while busy is low (output writes belong to a run)")
            if not busy and self._busy and run is not None and run.fall_cycle is None:  # busy falls
                run.fall_cycle = self.cycle
            aborted = run is not None and run.reset_cycle is not None
            if done:
                if busy:
                    self._error("done and busy are high in the same cycle")
                elif aborted:
                    self._error(f"done pulses after a run aborted by reset ({run.describe()})")
                elif run is None or run.fall_cycle != self.cycle:
                    self._error(
                        "done is high but this is not the cycle right after the last busy cycle"
                        + (f" ({run.describe()})" if run is not None else "")
                    )
                else:
                    run.done_cycle = self.cycle
            elif run is not None and run.fall_cycle == self.cycle and not aborted:
                self._error(f"done is low in the cycle right after the last busy cycle ({run.describe()})")
            if run is not None and run.fall_cycle == self.cycle:
                run.finished.set()  # the run is over: the driver may unload
            self._busy = busy

    def _handshakes(self) -> None:
        """While a response waits (valid, not taken) ``req.ready`` is low, so no request is taken."""
        dut = self.dut
        if dut.resp__valid.value != 1 or dut.resp__ready.value == 1:
            return
        self.waiting_cycles += 1
        if dut.req__ready.value != 0:
            taken = " and took the request offered" if dut.req__valid.value == 1 else ""
            self._error(f"req.ready = {dut.req__ready.value} while a response waits{taken}")


class MonitoredTransport(CocotbTransport):
    """The engine's transport whose runs are followed cycle by cycle by a :class:`RunMonitor`."""

    def __init__(self, dut: SimHandleBase, monitor: RunMonitor) -> None:
        super().__init__(dut)
        self.monitor = monitor
        self.run: Run | None = None

    async def start(self) -> None:
        self.dut.start.value = 1
        self.run = self.monitor.expect_run()
        await RisingEdge(self.dut.clk)
        self.dut.start.value = 0

    async def wait_done(self, timeout_cycles: int | None) -> Run:
        run = self.run
        try:
            await with_timeout(run.finished.wait(), timeout_cycles * CLOCK_NS, "ns")
        except TimeoutError:
            raise AssertionError(
                f"no done within {timeout_cycles} cycles of start ({run.describe()})"
            ) from None
        await RisingEdge(self.dut.clk)
        return run


class EngineTestbench:
    """Driver, monitor, model and checker around one ``gated_conv_engine`` instance, for a list of cases.

    :meth:`start` attaches it to the design for one cocotb test (the first one also resets the engine),
    :meth:`check_tile` runs one case, :meth:`stop` ends the test's part (clock and monitor).
    """

    def __init__(
        self, config: EngineConfig, cases: list[CosimCase], report: Path | None, stats: Path | None
    ) -> None:
        self.config = config
        self.cases = cases
        self.report_path = report
        self.stats_path = stats
        self.monitor: RunMonitor | None = None
        self.transport: MonitoredTransport | None = None
        self.driver: EngineDriver | None = None
        self.protocol_errors: list[str] = []
        # What each output-buffer entry held when last read back: entries that a later, smaller tile does
        # not write must keep it (spec section 3).
        self.shadows: dict[int, dict[int, int]] = {0: {}, 1: {}}  # per buffer half
        self.shadow = self.shadows[0]  # the half of the case being checked
        self.preloaded: dict[int, int] = {}  # case index -> load writes made during the previous run
        self._clock = None
        self._watch = None

    @classmethod
    def from_environment(cls) -> EngineTestbench:
        config, cases = load_cases(os.environ[DATA_ENV])
        paths = [Path(os.environ[env]) if os.environ.get(env) else None for env in (REPORT_ENV, STATS_ENV)]
        return cls(config, cases, *paths)

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def start(self, dut: SimHandleBase) -> None:
        first = self.monitor is None
        if first:
            self.monitor = RunMonitor(dut, self.config.pes)
            self.transport = MonitoredTransport(dut, self.monitor)
            self.driver = EngineDriver(self.config, self.transport, on_protocol=self._protocol)
        else:
            self.monitor.run = None
        self.transport.idle_inputs()
        self._clock = self.transport.start_clock()
        self._watch = cocotb.start_soon(self.monitor.watch())
        if first:
            await self.reset()
        else:
            await RisingEdge(dut.clk)

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._clock is not None:
            self._clock.stop()
        self._watch = self._clock = None

    async def reset(self) -> None:
        await self.transport.reset()

    # -- callbacks -----------------------------------------------------------------------------------------

    def _protocol(self, text: str) -> None:
        if len(self.protocol_errors) < 3:  # the first few tell the story
            self.protocol_errors.append(f"cycle {self.monitor.cycle}: {text}")

    def _fail(self, index: int, message: str) -> AssertionError:
        append_record(self.report_path, {"tile": index, "name": self.cases[index].name, "message": message})
        return AssertionError(message)

    # -- one case ------------------------------------------------------------------------------------------

    def _entries_to_recheck(self, n: int) -> list[int]:
        """Known entries beyond ``n`` to read back: all of the last phase-1 round's (where invalid PEs would
        write), then an even spread over the rest, at most :data:`RECHECK_LIMIT` of those."""
        known = sorted(lin for lin in self.shadow if lin >= n)  # (of the half in use: self.shadow)
        tail = -(-n // self.config.pes) * self.config.pes
        risky = [lin for lin in known if lin < tail]
        rest = [lin for lin in known if lin >= tail]
        if len(rest) > RECHECK_LIMIT:
            rest = [rest[i * len(rest) // RECHECK_LIMIT] for i in range(RECHECK_LIMIT)]
        return risky + rest

    def _pace(self, case: CosimCase) -> None:
        """Set the streams' stalls for ``case`` (none when it asks for none)."""
        t = self.transport
        t.resp.stalls = stall_pattern(case.resp_stall, [case.stall_seed, 0])
        t.load.stalls = stall_pattern(case.load_gap, [case.stall_seed, 1])
        t.resp.while_held = self._decoy if t.resp.stalls is not None else None

    def _decoy(self, on: bool) -> None:
        """Offer a request (counter 0) on ``req`` while a response is held: the engine must not take it."""
        dut = self.transport.dut
        if on:
            dut.req__payload.value = pack_request(self.config, UnloadTarget.COUNTERS, 0)
        dut.req__valid.value = int(on)

    def _stalls(self) -> tuple[int, int, int]:
        """(cycles held on resp, cycles of load gaps, cycles a response waited as the monitor saw them)."""
        t = self.transport
        return t.resp.stalled_cycles, t.load.stalled_cycles, self.monitor.waiting_cycles

    def _pacing_problems(self, case: CosimCase, before: tuple[int, int, int]) -> list[str]:
        """The case asked for stalls but none happened (the knob did nothing)."""
        held, gaps, waited = (b - a for a, b in zip(before, self._stalls(), strict=True))
        problems = []
        if self.transport.resp.stalls is not None and not (held and waited):
            problems.append(f"resp_stall = {case.resp_stall}: held {held} cycles, monitor saw {waited}")
        if self.transport.load.stalls is not None and not gaps:
            problems.append(f"load_gap = {case.load_gap}: no load gap happened")
        return problems

    async def check_tile(self, index: int) -> None:
        """Load case ``index``, run it, read everything back and compare with the model."""
        case = self.cases[index]
        if case.reset_at:
            await self.abort_tile(index)
            return
        driver, monitor = self.driver, self.monitor
        g = case.tile.geometry
        wall = time.perf_counter()
        first_cycle = monitor.cycle
        self._pace(case)
        stalls0 = self._stalls()
        mode = RunMode(case.run)
        queue = QueueLoad(case.queue_lins, case.queue_psums) if case.queue_lins is not None else None
        self.shadow = self.shadows[case.half]
        if case.overlap:  # written during the previous case's run
            n_writes = self.preloaded.pop(index, 0)
        else:
            n_writes = await driver.load_tile(
                case.tile, case.load, layer=case.layer, run=mode, queue=queue, half=case.half
            )
        early: list[str] = []
        overlapped = 0
        try:
            await self.transport.start()
            overlapped = await self._during_run(index, early)
            run = await self.transport.wait_done(2 * int(case.counters["cycles"]) + 1000)
        except AssertionError as exc:
            errors = monitor.errors + self.protocol_errors
            message = f"tile {index} '{case.name}' ({g}): {exc}" + "".join(f"; {e}" for e in errors)
            # Reset so that the following tiles start from a known state (the buffers' contents are not).
            monitor.errors, self.protocol_errors, monitor.run = [], [], None
            for shadow in self.shadows.values():
                shadow.clear()
            self.preloaded.clear()
            await self.reset()
            raise self._fail(index, message) from None

        n = g.n_outputs
        if queue is not None:  # phase 2 only: the results are in the queue, the output buffer unchanged
            results = await driver.read_queue(len(queue.lins), case.half)
            words = await driver.read_words(range(n), case.half)
            counters = await driver.read_counters()
            changed = {lin: (self.shadow[lin], w) for lin, w in words.items() if self.shadow.get(lin, w) != w}
            problems = monitor.errors + self.protocol_errors
            problems += compare_queue(self.config, case, results, counters, run, changed)
        else:
            words = await driver.read_words(range(n), case.half)
            beyond = await driver.read_words(self._entries_to_recheck(n), case.half)
            counters = await driver.read_counters()
            stale = {lin: (self.shadow[lin], w) for lin, w in beyond.items() if w != self.shadow[lin]}
            self.shadow.update(words)
            self.shadow.update(beyond)
            problems = monitor.errors + self.protocol_errors
            if mode is not RunMode.PHASE1:
                words = await driver.merge_results(g, words, case.half)
            problems += compare(self.config, case, words, counters, run, stale)
        problems += early
        monitor.errors, self.protocol_errors = [], []
        problems += self._pacing_problems(case, stalls0)
        held, gaps, _ = (b - a for a, b in zip(stalls0, self._stalls(), strict=True))
        append_record(
            self.stats_path,
            {
                "tile": index,
                "passed": not problems,
                "busy_cycles": run.busy_cycles,
                "clock_cycles": monitor.cycle - first_cycle,  # load, run and unload
                "cycles": counters["cycles"],
                "macs": counters["base_macs"] + counters["cond_macs"],
                "resp_held_cycles": held,
                "load_gap_cycles": gaps,
                "overlapped_transfers": overlapped,
            },
        )
        monitor.dut._log.info(
            "tile %d '%s' (%s): %d load writes, %d output writes traced, %d cycles (model %d), "
            "gates_on %d/%d, %s, responses held %d cycles, load gaps %d cycles, %.2f s",
            index,
            case.name,
            g,
            n_writes,
            run.n_writes,
            counters["cycles"],
            case.counters["cycles"],
            counters["gates_on"],
            n,
            run.describe(),
            held,
            gaps,
            time.perf_counter() - wall,
        )
        if problems:
            raise self._fail(index, f"tile {index} '{case.name}' ({g}): " + "; ".join(problems))

    async def _during_run(self, index: int, problems: list[str]) -> int:
        """What the host does while case ``index`` runs (double buffering): write the next case's tile into
        the other half when it is an overlapped one, and read back, from the other half, output entries
        the previous run left there (they must be unchanged). Returns the transfers made while ``busy`` was
        still high."""
        case, driver, dut = self.cases[index], self.driver, self.transport.dut
        during = 0
        nxt = self.cases[index + 1] if index + 1 < len(self.cases) else None
        if nxt is not None and nxt.overlap:
            if nxt.half == case.half:
                problems.append(f"case {index + 1} overlaps case {index} in the same half {case.half}")
                return 0
            queue = QueueLoad(nxt.queue_lins, nxt.queue_psums) if nxt.queue_lins is not None else None
            writes = await driver.load_tile(
                nxt.tile, nxt.load, layer=nxt.layer, run=RunMode(nxt.run), queue=queue, half=nxt.half
            )
            self.preloaded[index + 1] = writes
            during += writes if int(dut.busy.value) else 0
        if case.overlap:
            other = self.shadows[1 - case.half]
            lins = sorted(other)[:RECHECK_LIMIT]
            words = await driver.read_words(lins, half=1 - case.half)
            during += len(lins) if int(dut.busy.value) else 0
            bad = [lin for lin in lins if words[lin] != other[lin]]
            if bad:
                lin = bad[0]
                problems.append(
                    f"output entry {lin} of half {1 - case.half}, read during the run, changed: held "
                    f"{other[lin]:#x}, now {words[lin]:#x} ({len(bad)} of {len(lins)} differ)"
                )
        return during

    async def abort_tile(self, index: int) -> None:
        """Load case ``index``, start it, raise ``rst`` in cycle ``reset_at`` of the busy period for
        ``reset_cycles`` edges, and check that the engine is idle with its counters cleared (spec section 4,
        "Reset"); the run's outputs are not compared (the next case must match the model)."""
        case = self.cases[index]
        driver, monitor, t = self.driver, self.monitor, self.transport
        dut = t.dut
        g = case.tile.geometry
        first_cycle = monitor.cycle
        self._pace(case)
        stalls0 = self._stalls()
        await driver.load_tile(case.tile, case.load, layer=case.layer, half=case.half)
        await t.start()  # returns in SETUP, cycle 1 of the busy period
        run = t.run
        await t.tick(case.reset_at - 1)
        await t.reset(case.reset_cycles)  # rst high from cycle reset_at
        await ReadOnly()
        after = {
            name: getattr(dut, name).value
            for name in ("busy", "done", "load__ready", "req__ready", "resp__valid")
        }
        await RisingEdge(dut.clk)
        await t.tick(4)  # a few idle cycles: the monitor sees no done pulse
        counters = await driver.read_counters()

        problems = monitor.errors + self.protocol_errors
        monitor.errors, self.protocol_errors = [], []
        want = {"busy": 0, "done": 0, "load__ready": 1, "req__ready": 1, "resp__valid": 0}
        wrong = [f"{name} = {after[name]}" for name in want if str(after[name]) != str(want[name])]
        if wrong:
            problems.append(
                "after reset (the cycle after rst fell) the engine is not idle: " + ", ".join(wrong) + " "
                "(spec: busy and done low, load.ready and req.ready high, no response waiting)"
            )
        if run.reset_cycle is None or run.busy_cycles != case.reset_at:
            problems.append(
                f"rst was raised in cycle {case.reset_at} of the busy period: the run should have exactly "
                f"{case.reset_at} busy cycles and the monitor should see rst in its last one"
            )
        if run.done_cycle is not None:
            problems.append(f"done pulsed for the run aborted by reset (cycle {run.done_cycle})")
        nonzero = {name: value for name, value in counters.items() if value}
        if nonzero:
            problems.append(f"counters not cleared by reset: {nonzero}")
        problems += self._pacing_problems(case, stalls0)
        # The aborted run may have written any of its own entries.
        shadow = self.shadows[case.half]
        for lin in [lin for lin in shadow if lin < g.n_outputs]:
            del shadow[lin]
        append_record(
            self.stats_path,
            {
                "tile": index,
                "passed": not problems,
                "busy_cycles": run.busy_cycles,
                "clock_cycles": monitor.cycle - first_cycle,
                "cycles": run.busy_cycles,
                "macs": 0,
                "aborted": True,
            },
        )
        dut._log.info(
            "tile %d '%s' (%s): reset in cycle %d of %d for %d cycles: %s; after reset %s, counters %s",
            index,
            case.name,
            g,
            case.reset_at,
            case.counters["cycles"],
            case.reset_cycles,
            run.describe(),
            {k: str(v) for k, v in after.items()},
            counters,
        )
        if problems:
            raise self._fail(index, f"tile {index} '{case.name}' ({g}), aborted: " + "; ".join(problems))


@functools.cache
def testbench() -> EngineTestbench:
    """The simulation's testbench (made by its first test from the environment)."""
    return EngineTestbench.from_environment()


@cocotb.test()
@cocotb.parametrize(tile=list(range(environment_case_count())))
async def engine_tile(dut: SimHandleBase, tile: int) -> None:
    """Load tile ``tile``, run it, read everything back and compare with the model."""
    tb = testbench()
    await tb.start(dut)
    try:
        await tb.check_tile(tile)
    finally:
        tb.stop()
