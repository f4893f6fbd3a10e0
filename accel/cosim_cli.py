"""``accel cosim``: a trace's engine layers through the generated Verilog, against the cycle model.

Every engine layer is cut into the tiles the network runner runs (``sim.layer_tiles``); each tile of the
chosen designs runs through one Verilog build of the configuration (inside the recorder,
:mod:`verification.trace_tb`) and is compared with the cycle model: every output word, gate bit, counter,
each output's write cycle and the cycle count. One simulation per layer; a per-layer table and
``cosim.json`` at the end; exit status 1 on any mismatch, with the failing tile's waveform kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from accel.arguments import number_arg, out_path_arg, path_arg
from accel.report_cli import DEFAULT_TRACE, default_trace_path
from accel.terminal import one_line, printable
from outfiles.folder import OutputFolder
from spec.config import ConfigError

__all__ = ["COSIM_FILES", "add_cosim_parser"]

COSIM_FILES = ("cosim.json", "*.vcd", "*.fst", "*.log")  # what a cosim folder holds


def _designs(text: str) -> tuple[str, ...]:
    from verification.trace_cosim import DESIGNS

    names = tuple(d.strip() for d in text.split(",") if d.strip())
    bad = [d for d in names if d not in DESIGNS]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"invalid design {bad[0] if bad else text!r}: expected a list of {', '.join(DESIGNS)}"
        )
    return tuple(d for d in DESIGNS if d in names)


def add_cosim_parser(sub) -> None:
    p = sub.add_parser(
        "cosim",
        help="run a trace's tiles through the generated Verilog against the cycle model",
        description=(
            "Cut every engine layer of a trace into the tiles the network runner uses, run each through "
            "one Verilog build of the configuration (Verilator or Icarus, under cocotb) and compare every "
            "output word, gate bit, counter, write cycle and the cycle count with the cycle model. Prints "
            "a per-layer table, writes cosim.json, exits 1 on a mismatch (keeping the failing tile's "
            "waveform)."
        ),
    )
    p.add_argument(
        "trace", nargs="?", type=path_arg, metavar="TRACE",
        help=f"trace file (.npz); default: the shipped traces/{DEFAULT_TRACE}",
    )  # fmt: skip
    p.add_argument(
        "--sim", choices=("verilator", "icarus"), default="verilator", help="simulator (verilator)"
    )
    p.add_argument("--config", type=path_arg, metavar="FILE", help="system configuration (TOML or JSON)")
    positive = number_arg(int, "count", lambda v: v >= 1, "an integer >= 1")
    p.add_argument("--samples", type=positive, default=1, metavar="N", help="images (default 1)")
    p.add_argument(
        "--layers", metavar="A,B", help="only these layers (names as in accel trace info; default: every one)"
    )
    p.add_argument(
        "--tiles-per-layer", type=positive, metavar="N", help="N tiles of each layer, spread (default: all)"
    )
    p.add_argument(
        "--design", type=_designs, default=("dense", "gated"), metavar="D,D",
        help="designs to run: dense, gated, pruned (default dense,gated)",
    )  # fmt: skip
    p.add_argument("--out", type=out_path_arg, metavar="DIR", help="output folder (default: cosim-<trace>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_cosim)


def _layer_row(name: str, tiles, stats: list[dict], failures: list[dict]) -> dict:
    clock = sum(int(s.get("clock_cycles", 0)) for s in stats)
    wall = sum(float(s.get("wall_s", 0.0)) for s in stats)
    return {
        "layer": name,
        "runs": len(tiles),
        "engine_cycles": sum(int(s["cycles"]) for s in stats),
        "model_cycles": sum(int(t.case.counters["cycles"]) for t in tiles),
        "macs": sum(int(s["macs"]) for s in stats),
        "mismatches": len(failures),
        "clock_cycles": clock,
        "wall_s": round(wall, 3),
        "cycles_per_s": round(clock / wall) if wall > 0 else None,
    }


def _format_table(rows: list[dict]) -> str:
    head = (
        f"{'layer':<24} {'runs':>5} {'engine cycles':>14} {'MACs':>13} {'mismatches':>10} "
        f"{'sim cycles/s':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = f"{r['cycles_per_s']:,}" if r["cycles_per_s"] else "-"
        lines.append(
            f"{printable(r['layer'])[:24]:<24} {r['runs']:>5} {r['engine_cycles']:>14,} {r['macs']:>13,} "
            f"{r['mismatches']:>10} {rate:>12}"
        )
    return "\n".join(lines)


def _cmd_cosim(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from spec.system import load_system_config
    from trace_format import load_trace
    from verification.simulators import simulator_status
    from verification.trace_cosim import (
        check_request,
        design_cycles,
        engine_layers,
        layer_cases,
        run_recorded,
    )

    usable, why = simulator_status(args.sim)
    if not usable:
        raise ConfigError(f"--sim {args.sim}: {why}")
    path = args.trace or default_trace_path()
    system = load_system_config(args.config)
    trace = load_trace(path)
    check_request(trace, args.design, args.samples)
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    cuts = engine_layers(trace, system, names)
    folder = OutputFolder(args.out or Path(f"cosim-{Path(path).stem}"), COSIM_FILES, "accel cosim")
    rows, failures, cycles = [], [], {}
    started = time.monotonic()
    with folder as staging, tempfile.TemporaryDirectory(prefix="accel-cosim-") as scratch:
        work = Path(scratch)
        print(f"building the Verilog for {args.sim} (reused when up to date) ...", flush=True)
        with tqdm(total=len(cuts), desc="layers", unit="layer", disable=args.no_progress or None) as bar:
            for k, cut in enumerate(cuts):
                bar.set_postfix_str(printable(cut.layer.name)[:30])
                tiles = layer_cases(cut, system, args.design, args.samples, args.tiles_per_layer)
                try:
                    ran = run_recorded(args.sim, system, [t.case for t in tiles], None, work / f"layer{k}")
                except RuntimeError as exc:  # the simulator could not be built or started
                    raise ConfigError(f"--sim {args.sim}: {one_line(str(exc), 500)}") from None
                stats = sorted(ran.stats, key=lambda s: s["tile"])
                rows.append(_layer_row(cut.layer.name, tiles, stats, ran.failures))
                if len(stats) == len(tiles):
                    cycles.update(design_cycles(tiles, [s["cycles"] for s in stats]))
                log_name = None
                if ran.failures and ran.log is not None and ran.log.is_file():
                    log_name = f"{_safe(cut.layer.name)}-sim.log"  # the simulator's log, kept
                    shutil.copyfile(ran.log, staging / log_name)
                for f in ran.failures:
                    index = f.get("tile")
                    failures.append({"layer": cut.layer.name, "message": f["message"],
                                     "case": tiles[index].case.name if index is not None else None,
                                     "log": log_name})  # fmt: skip
                    if index is not None and len(failures) == 1:
                        failures[-1]["waves"] = _keep_waves(
                            args.sim,
                            system,
                            [t.case for t in tiles],
                            index,
                            work / f"layer{k}-waves",
                            staging,
                        )
                bar.update()
        wall = time.monotonic() - started
        result = {
            "trace": str(path),
            "sim": args.sim,
            "designs": list(args.design),
            "samples": args.samples,
            "tiles_per_layer": args.tiles_per_layer,
            "engine": system.engine.to_dict(),
            "layers": rows,
            # summed over the co-simulated tiles and images: with every tile of one image, each layer's
            # and design's compute cycles in the report (accel report --samples 1)
            "design_cycles": {f"{layer}/{design}": c for (layer, design), c in sorted(cycles.items())},
            "design_cycles_complete": args.tiles_per_layer is None and not failures,
            "mismatches": len(failures),
            "failures": failures,
            "wall_s": round(wall, 1),
        }
        (staging / "cosim.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"trace: {printable(path)} on {args.sim}; designs {', '.join(args.design)}")
    print()
    print(_format_table(rows))
    total_clock = sum(r["clock_cycles"] for r in rows)
    total_wall = sum(r["wall_s"] for r in rows)
    print()
    print(
        f"{sum(r['runs'] for r in rows)} runs, {sum(r['engine_cycles'] for r in rows):,} engine cycles, "
        f"{sum(r['mismatches'] for r in rows)} mismatches; {total_clock:,} simulated clock cycles "
        f"(loading and unloading included) in {total_wall:.1f} s of tiles"
        + (f": {total_clock / total_wall:,.0f} cycles/s" if total_wall else "")
        + f"; {wall:.0f} s in all"
    )
    for p in folder.files():
        print(f"wrote {printable(p)}")
    if failures:
        for f in failures[:5]:
            print(f"accel cosim: {one_line(f['message'])}", file=sys.stderr)
        return 1
    return 0


def _keep_waves(sim: str, system, cases: list, index: int, work: Path, staging: Path) -> str:
    """Run the failing case again with waveforms on (after the pruned design's first pass when it is the
    second, whose data it needs) and keep the file in the output folder; what was kept, or why not."""
    from spec.protocol import RunMode
    from verification.trace_cosim import run_recorded

    case = cases[index]
    first = index - 1 if case.run == RunMode.PHASE2.value and index > 0 else index
    try:
        ran = run_recorded(sim, system, cases[first : index + 1], None, work, waves=True)
    except (RuntimeError, OSError) as exc:
        return f"not kept: {one_line(str(exc), 300)}"
    if ran.waves is None or not ran.waves.is_file():
        return "not kept: the simulator wrote no waveform"
    name = f"{_safe(case.name)}{ran.waves.suffix}"
    shutil.move(ran.waves, staging / name)
    again = "the rerun failed too" if ran.failures else "the rerun passed: the failure needs earlier tiles"
    return f"{name} ({again})"


def _safe(name: str) -> str:
    """A layer or case name as a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
