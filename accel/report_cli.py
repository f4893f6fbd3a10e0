"""``accel report`` and ``accel sweep``: a trace through the whole accelerator (docs/report.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from accel.arguments import number_arg, out_path_arg, path_arg
from accel.terminal import printable
from outfiles.folder import OutputFolder
from spec.config import ConfigError

__all__ = ["DEFAULT_TRACE", "add_report_parsers"]

DEFAULT_TRACE = "cgnet-resnet20-digits.npz"  # shipped in the traces package
SWEEP_FILES = ("sweep.csv", "sweep.json", "sweep_*.png")  # what a sweep folder holds


def default_trace_path() -> Path:
    import traces

    return Path(traces.__file__).resolve().parent / DEFAULT_TRACE


def _positive_int(what: str):
    return number_arg(int, what, lambda v: v >= 1, "an integer >= 1")


def _fraction(what: str):
    return number_arg(float, what, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "trace",
        nargs="?",
        type=path_arg,
        metavar="TRACE",
        help=f"trace file (.npz); default: the shipped traces/{DEFAULT_TRACE}",
    )
    p.add_argument("--config", type=path_arg, metavar="FILE", help="system configuration (TOML or JSON)")
    p.add_argument(
        "--energy", type=path_arg, metavar="FILE", help="energy table (TOML) replacing the default"
    )
    p.add_argument(
        "--samples", type=_positive_int("sample count"), metavar="N", help="images to simulate (default: all)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_report_parsers(sub) -> None:
    rep = sub.add_parser(
        "report",
        help="whole-network report of a trace: cycles, energy, off-chip traffic, plots",
        description=(
            "Run every layer of a trace through the engine's cycle model on the configured accelerator "
            "(dense baseline, gated design, gated with dynamic output-channel pruning), print a per-layer "
            "table and the network summary, and write report.json, layers.csv and PNG plots."
        ),
    )
    _common(rep)
    rep.add_argument(
        "--out", type=out_path_arg, metavar="DIR", help="output folder (default: report-<trace name>)"
    )
    rep.add_argument(
        "--prune-threshold",
        type=_fraction("pruning threshold"),
        metavar="X",
        help="channel-pruning threshold (default: the configuration's, 0.1)",
    )
    rep.add_argument(
        "--zero-compression", action="store_true", help="also count zero-compressed activation traffic"
    )
    rep.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    rep.add_argument("--check", action="store_true", help="also check every layer's outputs against numpy")
    rep.add_argument(
        "--jobs",
        type=_positive_int("job count"),
        metavar="N",
        help="layers simulated at once, in threads (default: all cores; results do not depend on it)",
    )
    rep.set_defaults(func=_cmd_report)

    sw = sub.add_parser(
        "sweep",
        help="a grid over configuration parameters on one trace (all cores)",
        description=(
            "Run a trace on every point of a grid of configuration parameters, each point in its own "
            "process, and write sweep.csv, sweep.json and plots of speed-up and energy against each "
            "parameter. Example: accel sweep --param pes=4,8,16 --param dram.bytes_per_cycle=4,16"
        ),
    )
    _common(sw)
    sw.add_argument(
        "--param",
        action="append",
        required=True,
        metavar="NAME=V1,V2",
        help="a parameter and its values (repeat for a grid): engine fields (pes, lanes, input_depth, "
        "weight_depth, output_depth, ...), dram.bytes_per_cycle, dram.latency_cycles, report.prune_threshold",
    )
    sw.add_argument(
        "--out", type=out_path_arg, metavar="DIR", help="output folder (default: sweep-<trace name>)"
    )
    sw.add_argument(
        "--jobs", type=_positive_int("job count"), metavar="N", help="processes (default: all cores)"
    )
    sw.set_defaults(func=_cmd_sweep)


def _load(args):
    import dataclasses

    from accel.energy import load_energy_table
    from spec.system import load_system_config
    from trace_format import load_trace

    path = args.trace or default_trace_path()
    config = load_system_config(args.config)
    if args.energy is not None:
        config = dataclasses.replace(config, energy_table=str(args.energy))
    if getattr(args, "prune_threshold", None) is not None:
        config = dataclasses.replace(
            config, report=dataclasses.replace(config.report, prune_threshold=args.prune_threshold)
        )
    if getattr(args, "zero_compression", False):
        config = dataclasses.replace(config, report=dataclasses.replace(config.report, zero_compression=True))
    try:
        table = load_energy_table(config.energy_table)
    except ConfigError as exc:
        if args.energy is None:  # the table was named by the configuration file: say so
            raise ConfigError(f"{args.config}: [energy] table: {exc}") from None
        raise
    trace = load_trace(path)  # every member's data read once: damaged data is refused before the work
    if args.samples is not None and args.samples > trace.meta.samples:
        raise ConfigError(f"--samples {args.samples}: {path} stores {trace.meta.samples} sample(s)")
    return path, trace, config, table


def _cmd_report(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from accel.report import REPORT_FILES, build_report, format_summary, format_table, write_report
    from sim.network import run_network

    path, trace, config, table = _load(args)
    folder = OutputFolder(args.out or Path(f"report-{Path(path).stem}"), REPORT_FILES, "accel report")
    with folder as staging:
        with tqdm(
            total=len(trace), desc="layers", unit="layer", disable=args.no_progress or None, leave=False
        ) as bar:
            run = run_network(
                trace,
                config,
                samples=args.samples,
                check=args.check,
                workers=args.jobs or os.cpu_count() or 1,
                progress=lambda _: bar.update(),
            )
        report = build_report(run, trace, table)
        if args.check:
            bad = [lr.name for lr in run.layers if lr.outputs_match is False]
            if bad:
                raise ConfigError(f"engine outputs differ from numpy in layers: {', '.join(bad)}")
        write_report(report, staging, plots=not args.no_plots)
    # Printed once the files are in place: a reader that stops early (| head) costs no results.
    print(f"trace: {printable(path)}")
    print()
    print(format_table(report))
    print()
    print(format_summary(report))
    if args.check:
        print("check:     every engine layer's outputs and gates equal a plain numpy convolution")
    print()
    for p in folder.files():
        print(f"wrote {printable(p)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import sys

    from tqdm import tqdm

    from accel.plots import sweep_plots
    from accel.sweep import parse_param, run_sweep, sweep_csv, sweep_json, sweep_points

    path, trace, config, _ = _load(args)
    params = [parse_param(p) for p in args.param]
    names = [n for n, _ in params]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"sweep: parameter {twice[0]!r} is given twice")
    points = sweep_points(config, params)  # every point's configuration checked before any run
    folder = OutputFolder(args.out or Path(f"sweep-{Path(path).stem}"), SWEEP_FILES, "accel sweep")
    with folder as staging:
        with tqdm(
            total=len(points), desc="grid points", disable=args.no_progress or None, leave=False
        ) as bar:
            rows = run_sweep(
                str(path), config, params, samples=args.samples, jobs=args.jobs, progress=bar.update
            )
        (staging / "sweep.csv").write_text(sweep_csv(rows, names))
        (staging / "sweep.json").write_text(sweep_json(rows, names, str(path), config) + "\n")
        ok = [r for r in rows if not r["error"]]
        if ok:
            sweep_plots(ok, names, staging)
    shown = ["speedup", "theoretical_speedup", "energy_pj_gated", "dram_bytes_pruned"]
    print("  ".join([*names, *shown, "error"]))
    for r in rows:
        cells = [str(r[n]) for n in names]
        cells += ["-" if r[k] is None else f"{r[k]:.4g}" for k in shown]
        cells.append(printable(r["error"]))
        print("  ".join(cells).rstrip())
    for p in folder.files():
        print(f"wrote {printable(p)}")
    failed = sum(1 for r in rows if r["error"])
    if failed:
        print(
            f"accel: {failed} of {len(rows)} grid point(s) failed (see the error column of sweep.csv)",
            file=sys.stderr,
        )
    return 0 if not failed else 1
