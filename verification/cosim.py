"""pytest side of the co-simulation: expectations, and the cocotb run of :mod:`verification.cosim_tb`.

* :func:`expectations` runs the cycle model (``sim.engine.run_tile``) in this process, plus the numpy
  spec reference and the closed-form counters and write cycles of spec section 5 (only used to word
  failure messages).
* :func:`run_cosim` builds the engine (:mod:`verification.build`), writes the tiles and expectations to an
  .npz, runs the testbench in the simulator and raises :class:`CosimFailure` with the testbench's messages
  when anything disagrees. Waveforms: always with ``ACCEL_WAVES=1``; by default a failing run is repeated
  once with waveforms on, and the failure message names the file; ``ACCEL_WAVES=0`` never records them.
  Every successful run is also appended to :data:`completed_runs` (simulator, tiles, MACs and cycles the
  testbench saw, wall seconds), from which ``tests/cosim/conftest.py`` prints the session's figures.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from spec.config import EngineConfig
from spec.protocol import COUNTER_NAMES, RunMode
from spec.tile import QueueLoad, Tile
from verification.build import TOP, build, run_testbench
from verification.cosim_data import DATA_ENV, REPORT_ENV, STATS_ENV, CosimCase, save_cases
from verification.simulators import simulator_status
from verification.spec_schedule import spec_counters, spec_write_cycles

TB_MODULE = "verification.cosim_tb"
WAVES_ENV = "ACCEL_WAVES"

__all__ = [
    "CosimFailure",
    "CosimResult",
    "completed_runs",
    "expectations",
    "read_testcases",
    "rtl_available",
    "run_cosim",
    "simulator_status",
    "spec_counters",
    "spec_write_cycles",
    "waves_policy",
]


def rtl_available() -> bool:
    return importlib.util.find_spec("rtl.generate") is not None


class CosimFailure(AssertionError):
    """The co-simulation disagreed with the expectations (or did not finish)."""

    def __init__(self, message: str, failures: list[dict], waves: Path | None = None) -> None:
        super().__init__(message)
        self.failures = failures
        self.waves = waves


@dataclass
class CosimResult:
    tests: int
    failures: list[dict] = field(default_factory=list)
    wall_s: float = 0.0  # the simulator run (start-up included), not the build
    log: str = ""
    waves: Path | None = None
    # What the testbench reports it ran (JSON lines of $ACCEL_COSIM_STATS): tiles whose run finished, the
    # sum of their `cycles` counters, of their base_macs + cond_macs counters, and of the clock cycles
    # their tests simulated (loading and unloading included).
    tiles: int = 0
    cycles: int = 0
    macs: int = 0
    clock_cycles: int = 0
    # Load writes and output reads the testbench made while a run was busy (double buffering).
    overlapped: int = 0

    def figures(self, sim: str) -> dict:
        return {
            "sim": sim,
            "tiles": self.tiles,
            "macs": self.macs,
            "cycles": self.cycles,
            "clock_cycles": self.clock_cycles,
            "wall_s": self.wall_s,
        }


# The figures of every successful run_cosim of this process, in order (see CosimResult.figures);
# tests/cosim/conftest.py moves them into the test reports and prints their sums at the end of the session.
completed_runs: list[dict] = []


# ---------------------------------------------------------------------------------------------------------
# Expectations
# ---------------------------------------------------------------------------------------------------------


def expectations(
    config: EngineConfig,
    name: str,
    tile: Tile,
    run: RunMode = RunMode.FULL,
    queue: QueueLoad | None = None,
) -> CosimCase:
    """The cycle model's results for ``tile`` of a layer configured ``config`` (computed here, never in the
    simulator process); the case runs on any build whose maxima cover the layer (``run_cosim``). ``run``,
    ``queue``: a pass of a two-pass run (the spec references are for full runs only)."""
    from sim.engine import run_tile

    tile.check(config)
    run = RunMode.FULL if tile.geometry.dense else RunMode(run)
    result = run_tile(config, tile, run=run, queue=queue)
    case = CosimCase(
        name=name,
        tile=tile,
        outputs=np.asarray(result.outputs, dtype=np.int64),
        gates=np.asarray(result.gates, dtype=bool),
        counters={k: int(result.counters[k]) for k in COUNTER_NAMES},
        write_cycle=np.asarray(result.write_cycle, dtype=np.int64),
        layer=config,
        run=run.value,
    )
    if run is RunMode.PHASE2:
        case.queue_lins = np.asarray(queue.lins, dtype=np.int64)
        case.queue_psums = np.asarray(queue.psums, dtype=np.int64)
    if run is not RunMode.FULL:
        return case
    try:
        from sim.reference import tile_reference
    except ImportError:
        tile_reference = None
    if tile_reference is not None:
        ref_y, ref_g, _ = tile_reference(config, tile)
        case.ref_outputs, case.ref_gates = np.asarray(ref_y, dtype=np.int64), np.asarray(ref_g, dtype=bool)
        case.ref_counters = spec_counters(config, tile, ref_g)
        case.ref_write_cycle = spec_write_cycles(config, tile, ref_g)
    return case


# ---------------------------------------------------------------------------------------------------------
# Running the testbench
# ---------------------------------------------------------------------------------------------------------


def waves_policy() -> str:
    """``always`` (ACCEL_WAVES=1), ``never`` (ACCEL_WAVES=0) or ``on-failure`` (unset, the default)."""
    value = os.environ.get(WAVES_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return "always"
    if value in ("0", "false", "no", "off"):
        return "never"
    return "on-failure"


def read_testcases(results_xml: Path) -> list[dict]:
    cases = []
    if not results_xml.is_file():
        return cases
    for tc in ElementTree.parse(results_xml).getroot().iter("testcase"):
        bad = tc.find("failure")
        if bad is None:
            bad = tc.find("error")
        cases.append(
            {
                "name": tc.get("name", "?"),
                "failed": bad is not None,
                "message": (bad.get("message") or bad.text or "") if bad is not None else "",
            }
        )
    return cases


# Seed of Verilator's random initial state in runs without zero-filled memories (deterministic runs).
RANDOM_INIT_SEED = 12345


def _run_once(
    sim: str,
    build_dir: Path,
    work_dir: Path,
    data: Path,
    n_tiles: int,
    waves: bool,
    random_init: bool = False,
) -> CosimResult:
    work_dir.mkdir(parents=True, exist_ok=True)
    report = work_dir / "failures.jsonl"
    report.unlink(missing_ok=True)
    stats = work_dir / "stats.jsonl"
    stats.unlink(missing_ok=True)
    waves_file = None
    plusargs = []
    if random_init and sim == "verilator":
        plusargs += ["+verilator+rand+reset+2", f"+verilator+seed+{RANDOM_INIT_SEED}"]
    if waves:
        if sim == "icarus":
            waves_file = work_dir / f"{TOP}.fst"
            plusargs.append(f"+dumpfile_path={waves_file}")
        else:
            waves_file = work_dir / "dump.vcd"
    env = {DATA_ENV: str(data), REPORT_ENV: str(report), STATS_ENV: str(stats)}
    ran = run_testbench(sim, build_dir, TB_MODULE, work_dir, env, plusargs=plusargs, waves=waves)
    aborted, log = ran.aborted, ran.log
    testcases = read_testcases(ran.results_xml)
    failures = []
    if report.is_file():
        failures = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    reported = {f["tile"] for f in failures}
    for i, tc in enumerate(testcases):  # failures the checker did not word (exceptions, X values, ...)
        if tc["failed"] and i not in reported:
            failures.append({"tile": i, "name": tc["name"], "message": tc["message"] or "failed (see log)"})
    if len(testcases) != n_tiles:
        failures.append(
            {
                "tile": None,
                "name": "simulation",
                "message": f"the simulation ran {len(testcases)} of {n_tiles} tiles ({aborted!r}); "
                f"log tail:\n{log[-3000:]}",
            }
        )
    elif aborted is not None and not failures:
        failures.append({"tile": None, "name": "simulation", "message": f"simulator failed: {aborted!r}"})
    runs = (
        [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
        if stats.is_file()
        else []
    )
    return CosimResult(
        tests=len(testcases),
        failures=failures,
        wall_s=ran.wall_s,
        log=log,
        waves=waves_file,
        tiles=len(runs),
        cycles=sum(int(r["cycles"]) for r in runs),
        macs=sum(int(r["macs"]) for r in runs),
        clock_cycles=sum(int(r["clock_cycles"]) for r in runs),
        overlapped=sum(int(r.get("overlapped_transfers", 0)) for r in runs),
    )


def run_cosim(
    sim: str,
    config: EngineConfig,
    cases: list[CosimCase],
    cache_root: Path | None,
    work_dir: Path,
    *,
    waves: str | None = None,
    zero_fill: bool = True,
) -> CosimResult:
    """Run every case in one simulation; raise :class:`CosimFailure` on any disagreement.

    ``waves`` is a :func:`waves_policy` value (default: from ``$ACCEL_WAVES``). Without ``zero_fill`` the
    memories start undefined, as SRAM does (X in four-state Icarus; seeded random values in two-state
    Verilator).
    """
    policy = waves if waves is not None else waves_policy()
    build_dir = build(sim, config, cache_root, waves=policy == "always", zero_fill=zero_fill).directory
    work_dir.mkdir(parents=True, exist_ok=True)
    data = save_cases(work_dir / "cases.npz", config, cases)
    result = _run_once(
        sim, build_dir, work_dir, data, len(cases), waves=policy == "always", random_init=not zero_fill
    )
    print(result.log)  # shown by pytest when the test fails
    if not result.failures:
        completed_runs.append(result.figures(sim))
        return result
    if policy == "on-failure":
        trace_build = build(sim, config, cache_root, waves=True, zero_fill=zero_fill).directory
        again = _run_once(
            sim, trace_build, work_dir / "waves", data, len(cases), waves=True, random_init=not zero_fill
        )
        result.waves = again.waves if again.waves is not None and again.waves.is_file() else None
    lines = [f"{sim}: {len(result.failures)} of {len(cases)} tiles failed:"]
    lines += [f"  - {f['message']}" for f in result.failures]
    if result.waves is not None:
        lines.append(f"waveform: {result.waves}")
    lines.append(f"log: {work_dir / 'sim.log'}; tiles and expectations: {data}")
    raise CosimFailure("\n".join(lines), result.failures, result.waves)
