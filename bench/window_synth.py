"""Synthesize the phase-2 selection window (rtl/selection_window.py) alone, for a few window sizes.

    python bench/window_synth.py                    # W = 16 and 64, 13-bit payload, generic + ECP5
    python bench/window_synth.py --windows 16 --payload 124 --no-ecp5

Prints, per size, the generic cells, flip-flops and longest path (logic levels) and the ECP5 LUT4 and
flip-flops (docs/chip-design.md, section 2, quotes them). The payload is what each place carries beside its
keys: 13 bits is a queue index (the members' entries then read from the queue banks), 124 today's entry.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rtl.generate import component_verilog  # noqa: E402
from rtl.selection_window import SelectionWindow  # noqa: E402
from rtl.synth import synthesize  # noqa: E402
from spec.config import EngineConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--payload", type=int, default=13, help="bits carried per place (default 13)")
    parser.add_argument("--no-ecp5", action="store_true", help="generic synthesis only")
    args = parser.parse_args(argv)
    config = EngineConfig()
    print(f"default configuration: P = {config.pes}, G_max = {config.groups}; payload {args.payload} bits")
    for window in args.windows:
        dut = SelectionWindow(config, window, args.payload)
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "window.v"
            path.write_text(component_verilog(dut, "window"))  # as accel rtl writes it
            start = time.monotonic()
            report = synthesize(path, "window", ecp5=not args.no_ecp5)
        g, e = report.generic, report.ecp5
        line = (
            f"W = {window:3d}: generic {g.cells:,} cells, {g.flip_flops:,} flip-flops, "
            f"longest path {g.longest_path} levels"
        )
        if e is not None:
            line += f"; ECP5 {e.luts:,} LUT4, {e.flip_flops:,} FF"
        print(f"{line}   ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
