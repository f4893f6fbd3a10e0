"""The network report: per-layer and network figures of a :class:`sim.results.NetworkRun` (docs/report.md).

:func:`build_report` turns a run into the ``report.json`` structure (plain dicts, the documented schema);
:func:`format_table` and :func:`format_summary` print it; :func:`write_report` writes ``report.json``,
``layers.csv`` and the plots into a folder, all or nothing.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from accel.config import ConfigError
from accel.energy import EnergyTable, design_energy
from sim.results import DESIGNS, LayerRun, NetworkRun
from sim.trace import Trace

__all__ = [
    "PUBLISHED_RATIO",
    "SCHEMA_VERSION",
    "build_report",
    "format_summary",
    "format_table",
    "write_report",
]

SCHEMA_VERSION = 1
PUBLISHED_RATIO = (0.82, 0.86)  # achieved / theoretical speed-up of the published CGNet ASICs

# Columns of layers.csv, in order (the per-layer keys of report.json that are numbers or strings).
CSV_COLUMNS = (
    "name",
    "kind",
    "mapped",
    "gated",
    "shape_in",
    "shape_out",
    "tiles",
    "loop_order",
    "macs_dense",
    "macs_gated",
    "macs_pruned",
    "cycles_dense",
    "cycles_gated",
    "cycles_pruned",
    "compute_cycles_dense",
    "compute_cycles_gated",
    "speedup",
    "theoretical_speedup",
    "pe_utilization_dense",
    "pe_utilization_gated",
    "gate_on_fraction",
    "conditional_work_share",
    "channels_used_pruned",
    "energy_pj_dense",
    "energy_pj_gated",
    "energy_pj_pruned",
    "dram_bytes_dense",
    "dram_bytes_gated",
    "dram_bytes_pruned",
    "dram_bytes_dense_compressed",
    "dram_bytes_gated_compressed",
    "dram_bytes_pruned_compressed",
    "note",
)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _layer_entry(lr: LayerRun, run: NetworkRun, table: EnergyTable) -> dict:
    entry: dict = {
        "name": lr.name,
        "kind": lr.kind,
        "mapped": lr.mapped,
        "gated": lr.gated,
        "shape_in": "x".join(map(str, lr.shape_in)),
        "shape_out": "x".join(map(str, lr.shape_out)),
        "note": lr.reason,
    }
    if not lr.mapped:
        # Not run by the engine: no MACs, cycles, energy or accelerator traffic are charged to it.
        for key in ("macs", "cycles", "energy_pj", "dram_bytes"):
            for design in DESIGNS:
                entry[f"{key}_{design}"] = 0
        entry["host_elements"] = lr.shape_out[0] * lr.shape_out[1] * lr.shape_out[2]
        return entry
    engine = run.config.engine
    c, h, w = lr.shape_out
    outputs = c * h * w
    entry.update(
        tiles=lr.tiles,
        blocks={"channel": lr.blocks[0], "row": lr.blocks[1], "column": lr.blocks[2]},
        loop_order=lr.loop_order,
        kernel=lr.kernel,
        stride=lr.stride,
        gate_on_fraction=lr.gate_on_fraction,
        trace_gate_on_fraction=lr.trace_gate_on_fraction,
        pruned_channel_fraction=lr.pruned_channel_fraction,
    )
    for design in DESIGNS:
        d = lr.designs[design]
        entry[f"macs_{design}"] = d.macs
        entry[f"cycles_{design}"] = d.cycles
        entry[f"compute_cycles_{design}"] = d.compute_cycles
        entry[f"pe_utilization_{design}"] = _ratio(
            d.counters["busy_pe_cycles"], d.compute_cycles * engine.pes
        )
        energy = design_energy(d, engine, table, gated=lr.gated and design != "dense", outputs=outputs)
        entry[f"energy_pj_{design}"] = float(sum(energy.values()))
        entry[f"energy_breakdown_{design}"] = energy
        entry[f"dram_bytes_{design}"] = d.traffic.total
        entry[f"dram_operands_{design}"] = dict(d.traffic.bytes)
        entry[f"input_rereads_bytes_{design}"] = d.traffic.input_rereads
        entry[f"dram_bytes_{design}_compressed"] = d.traffic.total_compressed
        entry[f"counters_{design}"] = dict(d.counters)
    dense, gated = lr.designs["dense"], lr.designs["gated"]
    entry["speedup"] = _ratio(dense.cycles, gated.cycles)
    entry["compute_speedup"] = _ratio(dense.compute_cycles, gated.compute_cycles)
    entry["theoretical_speedup"] = _ratio(dense.macs, gated.macs)
    entry["speedup_ratio"] = (
        entry["speedup"] / entry["theoretical_speedup"]
        if entry["speedup"] and entry["theoretical_speedup"]
        else None
    )
    # Share of the conditional path's work done (the rebuttal's Figure A): conditional MACs issued over the
    # conditional MACs of the dense layer; and the share of channels whose conditional path survives pruning.
    cond_possible = dense.macs - gated.counters["base_macs"] if lr.gated else 0.0
    entry["conditional_work_share"] = _ratio(gated.counters["cond_macs"], cond_possible) if lr.gated else None
    entry["conditional_work_share_pruned"] = (
        _ratio(lr.designs["pruned"].counters["cond_macs"], cond_possible) if lr.gated else None
    )
    entry["channels_used_pruned"] = 1.0 - lr.pruned_channel_fraction if lr.gated else None
    return entry


def _sum(layers: list[dict], key: str) -> float:
    return float(sum(entry.get(key) or 0 for entry in layers))


def _totals(layers: list[dict]) -> dict:
    out: dict = {}
    for key in ("macs", "cycles", "compute_cycles", "energy_pj", "dram_bytes"):
        for design in DESIGNS:
            out[f"{key}_{design}"] = _sum(layers, f"{key}_{design}")
    for design in DESIGNS:
        comp = [e.get(f"dram_bytes_{design}_compressed") for e in layers if e["mapped"]]
        out[f"dram_bytes_{design}_compressed"] = None if any(v is None for v in comp) else float(sum(comp))
    out["speedup"] = _ratio(out["cycles_dense"], out["cycles_gated"])
    out["compute_speedup"] = _ratio(out["compute_cycles_dense"], out["compute_cycles_gated"])
    out["theoretical_speedup"] = _ratio(out["macs_dense"], out["macs_gated"])
    sp, th = out["speedup"], out["theoretical_speedup"]
    out["speedup_ratio"] = sp / th if sp and th else None
    out["energy_ratio"] = _ratio(out["energy_pj_dense"], out["energy_pj_gated"])
    out["dram_ratio_gated"] = _ratio(out["dram_bytes_dense"], out["dram_bytes_gated"])
    out["dram_ratio_pruned"] = _ratio(out["dram_bytes_dense"], out["dram_bytes_pruned"])
    return out


def build_report(run: NetworkRun, trace: Trace, table: EnergyTable) -> dict:
    """The ``report.json`` structure of a run (schema in docs/report.md)."""
    layers = [_layer_entry(lr, run, table) for lr in run.layers]
    mapped = [e for e in layers if e["mapped"]]
    gated = [e for e in layers if e["mapped"] and e["gated"]]
    network = _totals(mapped)
    network["gated_layers"] = _totals(gated)
    if mapped:
        breakdown = {}
        for design in DESIGNS:
            parts: dict[str, float] = {}
            for e in mapped:
                for part, value in e[f"energy_breakdown_{design}"].items():
                    parts[part] = parts.get(part, 0.0) + value
            breakdown[design] = parts
            ops: dict[str, float] = {}
            for e in mapped:
                for op, value in e[f"dram_operands_{design}"].items():
                    ops[op] = ops.get(op, 0.0) + value
            network[f"dram_operands_{design}"] = ops
        network["energy_breakdown"] = breakdown
    network["gate_on_fraction"] = (
        sum(e["gate_on_fraction"] * e["macs_dense"] for e in gated) / sum(e["macs_dense"] for e in gated)
        if gated
        else None
    )
    unmapped = [e for e in layers if not e["mapped"]]
    kinds: dict[str, int] = {}
    for e in unmapped:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    threshold = run.config.report.prune_threshold
    pruning = trace.meta.get("channel_pruning") or []
    acc_at = next((p.get("int8_accuracy") for p in pruning if abs(p["threshold"] - threshold) < 1e-9), None)
    return {
        "schema_version": SCHEMA_VERSION,
        "trace": {
            "name": trace.name,
            "path": trace.path,
            "dataset": trace.dataset,
            "synthetic": trace.synthetic,
            "samples_run": run.samples,
            "accuracy": trace.meta["accuracy"],
            "gate_agreement": trace.meta.get("gate_agreement"),
            "pruning_threshold": threshold,
            "int8_accuracy_pruned": acc_at,
            "channel_pruning": pruning,
        },
        "config": run.config.to_dict(),
        "energy_table": table.name,
        "published_speedup_ratio": list(PUBLISHED_RATIO),
        "network": network,
        "layers_not_mapped": {"count": len(unmapped), "kinds": kinds},
        "layers": layers,
    }


# --------------------------------------------------------------------------------------------------------
# Text


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """The per-layer table ``accel report`` prints."""
    header = (
        "layer",
        "kind",
        "cycles dense",
        "cycles gated",
        "speed-up",
        "theor.",
        "PE util",
        "gate-on",
        "energy uJ d/g",
        "DRAM KB d/g/pruned",
    )
    rows = []
    for e in report["layers"]:
        if not e["mapped"]:
            rows.append((e["name"], e["kind"], "not mapped", "", "", "", "", "", "", ""))
            continue
        rows.append(
            (
                e["name"],
                e["kind"] + ("*" if e["gated"] else ""),
                f"{e['cycles_dense']:,.0f}",
                f"{e['cycles_gated']:,.0f}",
                _fmt(e["speedup"], ".2f"),
                _fmt(e["theoretical_speedup"], ".2f"),
                _fmt(e["pe_utilization_gated"], ".0%"),
                _fmt(e["gate_on_fraction"], ".1%"),
                f"{e['energy_pj_dense'] / 1e6:.2f}/{e['energy_pj_gated'] / 1e6:.2f}",
                f"{e['dram_bytes_dense'] / 1024:.1f}/{e['dram_bytes_gated'] / 1024:.1f}/"
                f"{e['dram_bytes_pruned'] / 1024:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.append(
        "(* gated layer; not mapped: run by the host, no accelerator cycles, energy or traffic charged)"
    )
    return "\n".join(lines)


def format_summary(report: dict) -> str:
    net, gl, tr = report["network"], report["network"]["gated_layers"], report["trace"]
    lo, hi = report["published_speedup_ratio"]
    acc = tr["accuracy"]

    def pct(x):
        return "n/a" if x is None else f"{x:.2%}"

    lines = [
        f"network:   {tr['name']} ({tr['samples_run']} image(s) simulated"
        + (", synthetic weights" if tr["synthetic"] else "")
        + ")",
        f"cycles:    dense {net['cycles_dense']:,.0f}, gated {net['cycles_gated']:,.0f} per image; speed-up "
        f"{_fmt(net['speedup'], '.2f')}x (theoretical {_fmt(net['theoretical_speedup'], '.2f')}x)",
        f"gated layers: speed-up {_fmt(gl['speedup'], '.2f')}x vs theoretical "
        f"{_fmt(gl['theoretical_speedup'], '.2f')}x: achieved/theoretical "
        f"{_fmt(gl['speedup_ratio'], '.3f')} "
        f"(published CGNet ASICs {lo:.2f}-{hi:.2f}); "
        f"compute only {_fmt(gl['compute_speedup'], '.2f')}x",
        f"energy:    dense {net['energy_pj_dense'] / 1e6:.2f} uJ, "
        f"gated {net['energy_pj_gated'] / 1e6:.2f} uJ, "
        f"pruned {net['energy_pj_pruned'] / 1e6:.2f} uJ per image "
        f"({_fmt(net['energy_ratio'], '.2f')}x less, gated)",
        f"DRAM:      dense {net['dram_bytes_dense'] / 1024:.1f} KB, "
        f"gated {net['dram_bytes_gated'] / 1024:.1f} KB, "
        f"pruned at {tr['pruning_threshold']:g}: {net['dram_bytes_pruned'] / 1024:.1f} KB per image "
        f"(dense/pruned {_fmt(net['dram_ratio_pruned'], '.2f')}x)",
    ]
    if net.get("dram_bytes_pruned_compressed") is not None:
        lines.append(
            "           zero-compressed activations: "
            f"dense {net['dram_bytes_dense_compressed'] / 1024:.1f} KB, "
            f"gated {net['dram_bytes_gated_compressed'] / 1024:.1f} KB, "
            f"pruned {net['dram_bytes_pruned_compressed'] / 1024:.1f} KB"
        )
    lines.append(
        f"accuracy:  float {pct(acc.get('float'))}, int8 {pct(acc.get('int8'))}, "
        "int8 with channel pruning at "
        f"{tr['pruning_threshold']:g}: {pct(tr['int8_accuracy_pruned'])}"
    )
    nm = report["layers_not_mapped"]
    if nm["count"]:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(nm["kinds"].items()))
        lines.append(f"not mapped: {nm['count']} layers ({kinds}), run by the host")
    return "\n".join(lines)


def layers_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in report["layers"]:
        writer.writerow({k: ("" if e.get(k) is None else e.get(k, "")) for k in CSV_COLUMNS})
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------------
# Files


def prepare_out_dir(out: Path) -> None:
    """Refuse an output folder that cannot be created or written, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not out.is_dir():
        raise ConfigError(f"{out}: not a folder")
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: output folder is not writable")


def write_report(report: dict, out: Path, plots: bool = True) -> list[Path]:
    """Write ``report.json``, ``layers.csv`` and the PNG plots into ``out``, all or nothing.

    Everything is first written into a temporary folder inside ``out``; only when all files are complete
    are they moved into place (``os.replace``), so an error leaves no half-written report.
    """
    prepare_out_dir(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write into the output folder ({exc.strerror})") from None
    try:
        (tmp / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
        (tmp / "layers.csv").write_text(layers_csv(report))
        if plots:
            from accel.plots import report_plots

            report_plots(report, tmp)
        written = []
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
            written.append(out / f.name)
        return written
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the report ({exc.strerror})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
