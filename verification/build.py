"""The one Verilog build cache: the engine's Verilog for an :class:`~spec.config.EngineConfig`, compiled
once per (simulator, configuration) for cocotb, shared by the tests and the benchmark.

:func:`generate` writes the Verilog with ``rtl.generate.generate_verilog`` (once per process and
configuration); :func:`build` compiles it into ``<cache>/<simulator>-<configuration key>/build``, a directory
named after the configuration's JSON and reused as long as the generated Verilog and the build recipe (this
module, :mod:`verification.simulators`, the cocotb version, the flags) are the same, so reformatting the
RTL's Python costs no rebuild. pytest-xdist workers may build the same configuration at once: each build
holds a file lock.

:func:`run_testbench` runs a cocotb test module (by its importable name, e.g. ``verification.cosim_tb``)
on such a build.

The cache lives in ``$ACCEL_BUILD_CACHE``, by default ``build/verilog/`` of the checkout this package runs
from (``~/.cache/accel/verilog`` when it is not in a checkout).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spec.config import EngineConfig
from verification import recorder, simulators
from verification.recorder import RECORDER_TOP, recorder_verilog
from verification.simulators import build_args, simulator_environ

__all__ = [
    "CACHE_ENV",
    "TOP",
    "Build",
    "TestbenchRun",
    "build",
    "config_key",
    "default_cache_root",
    "generate",
    "run_testbench",
]

TOP = "gated_conv_engine"
CACHE_ENV = "ACCEL_BUILD_CACHE"
DUMP_TOP = "accel_cosim_dump"


def _dump_module(top: str) -> str:
    return f"""// Waveform dump for Icarus (Verilog-2005); vvp's -none / -fst turn it off / on.
module {DUMP_TOP}();
  reg [8*1024-1:0] path;
  initial begin
    if ($value$plusargs("dumpfile_path=%s", path)) $dumpfile(path);
    else $dumpfile("{top}.fst");
    $dumpvars(0, {top});
  end
endmodule
"""


@dataclass(frozen=True)
class Build:
    """A compiled engine: the runner's build directory and the compile time (None: reused)."""

    directory: Path
    seconds: float | None


def default_cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():
        return checkout / "build" / "verilog"
    return Path.home() / ".cache" / "accel" / "verilog"


def config_key(config: EngineConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:16]


def _recipe_digest() -> str:
    """What a build depends on besides the Verilog and the flags: the build code and the cocotb version."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(simulators.__file__).read_bytes())
    h.update(Path(recorder.__file__).read_bytes())
    h.update(importlib.metadata.version("cocotb").encode())
    return h.hexdigest()


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


_generated: dict[tuple[str, Path], tuple[Path, str]] = {}


# A memory's power-up contents as yosys writes them: ``initial begin`` right after the array's declaration,
# one ``name[i] = value;`` per word.
_MEMORY_INIT = re.compile(
    r"(^[ \t]*reg\b[^;\n]*?\\?(?P<name>[\w$.\[\]]+) *\[\d+:\d+\];\n)"
    r"[ \t]*initial begin\n(?:[ \t]*(?P=name)\[\d+\] = [^;\n]+;\n)*[ \t]*end\n",
    re.M,
)


def strip_memory_init(verilog: str) -> tuple[str, int]:
    """``verilog`` without its memories' power-up contents (real SRAM is not zero at power-up), and how many
    memories lost theirs. Amaranth always gives a memory initial contents (zeros for ``init=[]``)."""
    return _MEMORY_INIT.subn(r"\1", verilog)


def generate(
    config: EngineConfig, cache_root: Path | None = None, *, zero_fill: bool = True
) -> tuple[Path, str]:
    """The Verilog of ``config`` from the current RTL (once per process) and the SHA-256 of its text.

    Without ``zero_fill`` the memories start undefined (X in Icarus), as SRAM does.
    """
    from rtl.generate import generate_verilog

    root = cache_root if cache_root is not None else default_cache_root()
    key = (config.to_json(), root, zero_fill)
    if key not in _generated:
        name = f"verilog-{config_key(config)}{'' if zero_fill else '-nofill'}"
        with _locked(root / f"{name}.lock"):
            path = generate_verilog(config, root / name)
            text = path.read_text()
            if not zero_fill:
                text, stripped = strip_memory_init(text)
                if stripped == 0:
                    raise RuntimeError(f"{path}: found no memory initial contents to remove")
                path.write_text(text)
            _generated[key] = (path, hashlib.sha256(text.encode()).hexdigest())
    return _generated[key]


def build(
    sim: str,
    config: EngineConfig,
    cache_root: Path | None = None,
    *,
    waves=False,
    optimize=False,
    zero_fill=True,
    with_recorder=False,
) -> Build:
    """Generate and compile the engine for ``config`` (reusing an up-to-date earlier build).

    Icarus builds always include a waveform dump module (off at run time unless asked for), so one build
    serves both; Verilator needs ``--trace`` at build time, so a waveform build is a separate one, and so
    is an ``optimize`` build (the C++ at Verilator's default optimization instead of -O0, for speed
    measurements). ``with_recorder``: the top level is :data:`verification.recorder.RECORDER_TOP`, the engine
    inside the recorder's wrapper (the fast co-simulation of :mod:`verification.trace_tb`).
    """
    from cocotb_tools.runner import get_runner

    root_dir = cache_root if cache_root is not None else default_cache_root()
    trace = sim == "verilator" and waves
    optimized = sim == "verilator" and optimize
    variant = (
        f"{'-recorder' if with_recorder else ''}{'-trace' if trace else ''}"
        f"{'-optimized' if optimized else ''}{'' if zero_fill else '-nofill'}"
    )
    name = f"{sim}{variant}-{config_key(config)}"
    root = root_dir / name
    stamp = root / "stamp.json"
    verilog, digest = generate(config, root_dir, zero_fill=zero_fill)
    with simulator_environ(sim, optimize=optimized):
        make = os.environ.get("MAKEFLAGS", "")
    args = build_args(sim)
    if sim == "verilator" and not zero_fill:
        # Two-state Verilator: undefined state (memories without contents, X assignments) takes seeded
        # random values at run time (+verilator+rand+reset+2), so a dependence on zeros shows as a mismatch.
        args = [*args, "--x-assign", "unique", "--x-initial", "unique"]
    want = {
        "verilog": digest,
        "recipe": _recipe_digest(),
        "args": args,
        "make": make,
        "config": config.to_dict(),
    }
    with _locked(root_dir / f"{name}.lock"):
        if stamp.is_file():
            with contextlib.suppress(ValueError):
                if json.loads(stamp.read_text()) == want:
                    return Build(root / "build", None)
        shutil.rmtree(root, ignore_errors=True)
        (root / "rtl").mkdir(parents=True)
        sources = [root / "rtl" / verilog.name]
        shutil.copyfile(verilog, sources[0])
        top = TOP
        if with_recorder:
            top = RECORDER_TOP
            sources.append(root / "rtl" / f"{RECORDER_TOP}.v")
            # (a load burst holds any tile's writes: every buffer word and register, and a queue)
            words = config.input_depth + config.weight_depth + config.threshold_depth + config.output_depth
            depth = 1 << (words + 256).bit_length()
            sources[-1].write_text(recorder_verilog(verilog.read_text(), TOP, depth))
        shutil.copyfile(verilog.with_suffix(".json"), root / "rtl" / verilog.with_suffix(".json").name)
        if sim == "icarus":
            # Yosys' Verilog starts its `always @*` blocks through a `reg ... = 0` declaration initializer,
            # which is an event only under Verilog-2005 rules; the runner's -g2012 would leave every
            # combinational output X until its inputs first change. cocotb's own dump module is
            # SystemVerilog, so a Verilog-2005 one takes its place (dumping is off unless asked for).
            dump = root / "rtl" / f"{DUMP_TOP}.v"
            dump.write_text(_dump_module(top))
            sources.append(dump)
            args = [*args, "-s", DUMP_TOP]
        t0 = time.perf_counter()
        log = root / "build.log"
        with simulator_environ(sim, optimize=optimized):
            try:
                get_runner(sim).build(
                    sources=sources,
                    hdl_toplevel=top,
                    build_dir=root / "build",
                    timescale=("1ns", "1ps"),
                    build_args=args,
                    waves=trace,
                    always=True,
                    log_file=log,
                )
            except (SystemExit, RuntimeError, subprocess.CalledProcessError) as exc:
                tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
                raise RuntimeError(f"{sim}: building {name} failed ({exc!r}); {log}:\n{tail}") from None
        seconds = time.perf_counter() - t0
        stamp.write_text(json.dumps(want))
    return Build(root / "build", seconds)


@dataclass
class TestbenchRun:
    """A finished simulator process: its wall time, its log, and why the runner gave up (None: it did not)."""

    wall_s: float
    log: str
    log_file: Path
    results_xml: Path
    aborted: BaseException | None


def run_testbench(
    sim: str,
    build_dir: Path,
    test_module: str,
    work_dir: Path,
    extra_env: dict[str, str],
    *,
    plusargs: list[str] | None = None,
    waves: bool = False,
    toplevel: str = TOP,
) -> TestbenchRun:
    """Run the cocotb tests of ``test_module`` on a build, in ``work_dir`` (results.xml and sim.log there).

    Failing tests and a simulator that does not finish do not raise: see ``aborted`` and results.xml.
    """
    from cocotb_tools.runner import get_runner

    work_dir.mkdir(parents=True, exist_ok=True)
    results_xml = work_dir / "results.xml"
    log_file = work_dir / "sim.log"
    results_xml.unlink(missing_ok=True)
    aborted = None
    wall = time.perf_counter()
    with simulator_environ(sim):
        try:
            get_runner(sim).test(
                hdl_toplevel=toplevel,
                hdl_toplevel_lang="verilog",
                test_module=test_module,
                build_dir=build_dir,
                test_dir=work_dir,
                results_xml=str(results_xml),
                extra_env={**extra_env, "COCOTB_ANSI_OUTPUT": "0"},
                plusargs=plusargs or [],
                waves=waves,
                log_file=log_file,
            )
        except (SystemExit, RuntimeError) as exc:  # failing tests / a simulator that did not finish
            aborted = exc
    wall = time.perf_counter() - wall
    log = log_file.read_text(errors="replace") if log_file.is_file() else ""
    return TestbenchRun(wall, log, log_file, results_xml, aborted)
