"""The co-simulation's checker: what a run looked like from outside (:class:`Run`) and every disagreement
of the read-back outputs, gate bits, write cycles and counters with the cycle model's expectations
(:func:`compare`, :func:`compare_queue`). Shared by the per-cycle testbench (:mod:`verification.cosim_tb`)
and the recorded one (:mod:`verification.trace_tb`); it never imports the model: the expectations come in
the case (:class:`verification.cosim_data.CosimCase`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from cocotb.triggers import Event

from spec.config import EngineConfig
from spec.protocol import COUNTER_NAMES, RunMode
from verification.cocotb_transport import CLOCK_NS
from verification.cosim_data import CosimCase
from verification.driver import decode_outputs
from verification.layout import banked_index, decode_output, queue_write_outputs

__all__ = ["Run", "compare", "compare_queue"]


@dataclass
class Run:
    """What the monitor saw of one run (cycle numbers count rising edges since the test bench started)."""

    start_cycle: int | None = None  # the cycle in which start was high (sampled at its closing edge)
    rise_cycle: int | None = None  # first cycle with busy high
    rise_ns: float | None = None  # simulation time of the rising edge that starts it
    fall_cycle: int | None = None  # first cycle with busy low again
    busy_cycles: int = 0
    done_cycle: int | None = None
    reset_cycle: int | None = None  # first cycle of the run with rst high (the run is aborted)
    # From the trace ports: per output entry (lin) the cycle of the run (1 = first busy cycle) of its last
    # write; per banked work-queue address, the cycle of phase 2's result write into it (wb_queue); and the
    # number of writes seen.
    writes: dict[int, int] = field(default_factory=dict)
    queue_writes: dict[int, int] = field(default_factory=dict)
    n_writes: int = 0
    finished: Event = field(default_factory=Event)

    def time_of(self, cycle: int) -> str:
        """Where cycle ``cycle`` of the run (1 = SETUP) begins in the waveform."""
        if self.rise_ns is None:
            return "?"
        return f"{self.rise_ns + (cycle - 1) * CLOCK_NS:g} ns"

    def describe(self) -> str:
        at = f" (t = {self.rise_ns:g} ns)" if self.rise_ns is not None else ""
        text = (
            f"start high in cycle {self.start_cycle}, busy from cycle {self.rise_cycle}{at} to "
            f"{self.fall_cycle} ({self.busy_cycles} busy cycles), done at cycle {self.done_cycle}"
        )
        if self.reset_cycle is not None:
            text += f", rst high from cycle {self.reset_cycle}"
        return text


def _fmt_out(y: int, gate: int, cycle: int | None = None) -> str:
    text = f"y={y} gate={gate}"
    if cycle is not None:
        text += " never written" if cycle == 0 else f" written in cycle {cycle}"
    return text


def compare(
    config: EngineConfig,
    case: CosimCase,
    words: dict[int, int],
    counters: dict[str, int],
    run: Run,
    stale: dict[int, tuple[int, int]],
) -> list[str]:
    """Every disagreement between what was read back and the expectations, first output first."""
    g = case.tile.geometry
    n = g.n_outputs
    shape = (g.c_out, g.h_out, g.w_out)
    got = decode_outputs(config, g, [words[lin] for lin in range(n)])
    got_y, got_g = got.y, got.gate
    exp_y = np.asarray(case.outputs, dtype=np.int64)
    exp_g = np.asarray(case.gates, dtype=bool)
    # Write cycles from the trace ports (a phase-2 result by the queue entry it went into, whose activation
    # the gate bits read back name); 0 where the run showed no write of the entry.
    writes = {**run.writes, **queue_write_outputs(config, got_g, run.queue_writes)}
    got_c = np.array([writes.get(lin, 0) for lin in range(n)], dtype=np.int64).reshape(shape)
    exp_c = np.asarray(case.write_cycle, dtype=np.int64)
    problems: list[str] = []

    value_bad = (got_y != exp_y) | (got_g != exp_g)
    cycle_bad = got_c != exp_c
    bad = np.argwhere(value_bad | cycle_bad)  # C order of (co, oy, ox) = lin order
    if len(bad):
        co, oy, ox = (int(v) for v in bad[0])
        at = (co, oy, ox)
        lin = (co * g.h_out + oy) * g.w_out + ox
        exp_cycle, got_cycle = int(exp_c[at]), int(got_c[at])
        text = (
            f"first diverging output (co={co}, oy={oy}, ox={ox}): "
            f"expected {_fmt_out(int(exp_y[at]), int(exp_g[at]), exp_cycle)} (model), "
            f"got {_fmt_out(int(got_y[at]), int(got_g[at]), got_cycle)} (RTL, entry lin={lin}, "
            f"word {words[lin]:#x})"
        )
        if case.ref_outputs is not None or case.ref_write_cycle is not None:
            ry = int(case.ref_outputs[at]) if case.ref_outputs is not None else "?"
            rg = int(case.ref_gates[at]) if case.ref_gates is not None else "?"
            rc = int(case.ref_write_cycle[at]) if case.ref_write_cycle is not None else None
            text += f"; spec reference {_fmt_out(ry, rg, rc)}"
        text += f"; the model writes it in cycle {exp_cycle} of the run, at {run.time_of(exp_cycle)}"
        text += " in the waveform"
        if got_cycle not in (0, exp_cycle):
            text += f" (the RTL last writes it at {run.time_of(got_cycle)})"
        text += (
            f"; {int(value_bad.sum())} of {n} outputs differ in value or gate bit, "
            f"{int(cycle_bad.sum())} in write cycle"
        )
        problems.append(text)

    beyond = sorted((lin, cycle) for lin, cycle in writes.items() if lin >= n)
    if beyond:
        lin, cycle = beyond[0]
        problems.append(
            f"the trace shows writes to {len(beyond)} entries beyond this tile's {n} outputs, the first "
            f"to entry {lin} in cycle {cycle} of the run (at {run.time_of(cycle)})"
        )
    # Every output entry is written once in phase 1, a gated-on one once more in phase 2 (if it runs).
    phase2 = 0 if g.dense or case.run == RunMode.PHASE1.value else int(case.counters["gates_on"])
    if run.n_writes != n + phase2:
        problems.append(
            f"the trace shows {run.n_writes} output writes, the schedule has {n + phase2} "
            f"({n} in phase 1 + {phase2} in phase 2)"
        )

    for lin, (old, new) in sorted(stale.items()):
        problems.append(
            f"output entry {lin} (beyond this tile's {n} outputs) changed during the run: "
            f"held {old:#x}, now {new:#x}"
        )
        break  # the first is enough

    problems += _counter_problems(case, counters, run)
    if problems:
        problems.append(f"run: {run.describe()}")
    return problems


def compare_queue(
    config: EngineConfig,
    case: CosimCase,
    words: list[int],
    counters: dict[str, int],
    run: Run,
    changed: dict[int, tuple[int, int]],
) -> list[str]:
    """Every disagreement of a phase-2-only run (``RunMode.PHASE2``): the results read back from queue
    entries ``words`` (entry ``n`` holds activation ``case.queue_lins[n]``) and the cycles of their writes on
    the trace port, the output buffer unchanged (``changed``: entries that differ from before the run)."""
    g = case.tile.geometry
    lins = np.asarray(case.queue_lins, dtype=np.int64)
    exp_y = np.asarray(case.outputs, dtype=np.int64).reshape(-1)[lins]
    exp_c = np.asarray(case.write_cycle, dtype=np.int64).reshape(-1)[lins]
    got_y = np.array([decode_output(config, w)[0] for w in words], dtype=np.int64)
    by_entry = {banked_index(config, a): c for a, c in run.queue_writes.items()}
    got_c = np.array([by_entry.get(k, 0) for k in range(len(lins))], dtype=np.int64)
    problems: list[str] = []
    bad = np.flatnonzero((got_y != exp_y) | (got_c != exp_c))
    if len(bad):
        k = int(bad[0])
        co, pos = divmod(int(lins[k]), g.h_out * g.w_out)
        oy, ox = divmod(pos, g.w_out)
        problems.append(
            f"first diverging queue entry {k} (co={co}, oy={oy}, ox={ox}): expected y={exp_y[k]} written in "
            f"cycle {exp_c[k]} (model), got y={got_y[k]} written in cycle {got_c[k]} (RTL, word "
            f"{words[k]:#x}); {len(bad)} of {len(lins)} entries differ"
        )
    extra = sorted(k for k in by_entry if k >= len(lins))
    if extra:
        problems.append(
            f"the trace shows result writes to {len(extra)} queue entries past the {len(lins)} queued"
        )
    if run.writes:
        lin, cycle = min(run.writes.items())
        problems.append(
            f"phase 2 only wrote output entry {lin} in cycle {cycle} (it must not touch the buffer)"
        )
    if run.n_writes != len(lins):
        problems.append(f"the trace shows {run.n_writes} writes, the queue has {len(lins)} entries")
    for lin, (old, new) in sorted(changed.items())[:1]:
        problems.append(
            f"output entry {lin} changed during the phase-2-only run: held {old:#x}, now {new:#x}"
        )
    problems += _counter_problems(case, counters, run)
    if problems:
        problems.append(f"run: {run.describe()}")
    return problems


def _counter_problems(case: CosimCase, counters: dict[str, int], run: Run) -> list[str]:
    """Counters that differ from the model's and a busy period that differs from the cycles counted."""
    problems = []
    for name in COUNTER_NAMES:
        exp, got = int(case.counters[name]), int(counters[name])
        if exp != got:
            text = f"counter {name}: expected {exp} (model), got {got} (RTL)"
            if case.ref_counters is not None:
                text += f", spec formula {case.ref_counters[name]}"
            problems.append(text)
    if run.busy_cycles != counters["cycles"] or run.busy_cycles != case.counters["cycles"]:
        problems.append(
            f"cycle count: monitor counted {run.busy_cycles} cycles with busy high, cycles counter "
            f"(RTL) {counters['cycles']}, model {case.counters['cycles']}"
        )
    return problems
