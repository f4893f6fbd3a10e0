"""Speed of the cycle model against RTL simulation of the same engine, measured in one run.

    python bench/rtl_vs_model.py [--quick] [--out FILE] [--sims icarus,verilator] [--cases small,network]

The cases, what is timed and how, and the identical-results check are described in
:mod:`verification.rtl_bench`, which does the work (``bench/run_all.py`` calls it too); this script runs it,
prints the table and writes the results with the machine they were measured on to
``bench/results/rtl_vs_model.json``. Exit status 1 when a simulator's results differ from the model's.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from verification.rtl_bench import CASES, SIMULATORS, machine, measure, print_results, work_root

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "rtl_vs_model.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shorter timing budgets")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--sims", default=",".join(SIMULATORS), help="simulators, comma-separated")
    ap.add_argument("--cases", default=",".join(CASES), help="cases run on the RTL, comma-separated")
    args = ap.parse_args(argv)
    sims = [s.strip() for s in args.sims.split(",") if s.strip()]
    for s in sims:
        if s not in SIMULATORS:
            ap.error(f"--sims: unknown simulator {s!r} (known: {', '.join(SIMULATORS)})")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"--cases: unknown case {c!r} (known: {', '.join(CASES)})")
    res = measure(args.quick, sims, cases)
    print()
    print_results(res)
    results = {
        "benchmark": "rtl_vs_model",
        "command": shlex.join(["python", "bench/rtl_vs_model.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **res,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}  (total {res['total_wall_s']:.1f} s; testbench runs in {work_root()})")
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
