"""Verilator lint of the generated Verilog: every ``-Wall`` warning, counted by code.

``python -m verification.lint [--config FILE]`` prints the counts of the engine built from ``FILE`` (the
default configuration without one); ``tests/test_lint.py`` holds the counts of the default build to the
baseline in ``tests/lint_baseline.json`` (they may fall, never grow).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from spec.config_file import load_config
from verification.build import TOP, generate
from verification.simulators import simulator_env, simulator_status

__all__ = ["LintWarning", "count_by_code", "lint_verilog"]

# "%Warning-WIDTHEXPAND: path/file.v:12:34: message"
_WARNING = re.compile(
    r"^%Warning-(?P<code>[A-Z0-9_]+): (?P<file>[^:]+):(?P<line>\d+):(?:\d+:)? (?P<text>.*)$"
)


@dataclass(frozen=True)
class LintWarning:
    """One Verilator warning: its code (``WIDTHEXPAND``, ``UNUSEDSIGNAL``, ...), where, and its text."""

    code: str
    file: str
    line: int
    text: str


def lint_verilog(verilog: Path, top: str = TOP, timeout: float = 600) -> list[LintWarning]:
    """Run ``verilator --lint-only -Wall`` on ``verilog`` and return its warnings.

    Raises RuntimeError when no usable Verilator is installed or when Verilator reports an error (not a
    warning): a file it cannot read is not a clean file.
    """
    usable, what = simulator_status("verilator")
    if not usable:
        raise RuntimeError(what)
    env = {**os.environ, **simulator_env("verilator")}
    cmd = ["verilator", "--lint-only", "-Wall", "-Wno-fatal", "--top-module", top, str(verilog)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = done.stderr.splitlines()
    errors = [line for line in lines if line.startswith("%Error")]
    if done.returncode != 0 or errors:
        raise RuntimeError(f"verilator failed on {verilog}: {(errors or lines or ['no output'])[0]}")
    found = []
    for line in lines:
        m = _WARNING.match(line)
        if m:
            found.append(LintWarning(m["code"], m["file"], int(m["line"]), m["text"]))
        elif line.startswith("%Warning"):
            raise RuntimeError(f"unrecognised Verilator warning line: {line!r}")
    return found


def count_by_code(warnings: list[LintWarning]) -> dict[str, int]:
    """Warnings per code, codes sorted."""
    return dict(sorted(collections.Counter(w.code for w in warnings).items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verification.lint", description=__doc__.splitlines()[0])
    parser.add_argument("--config", metavar="FILE", help="engine configuration (TOML or JSON)")
    args = parser.parse_args(argv)
    verilog, _ = generate(load_config(args.config))
    counts = count_by_code(lint_verilog(verilog))
    for code, n in counts.items():
        print(f"{code:20s} {n:6d}")
    print(f"{'total':20s} {sum(counts.values()):6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
