"""The network report: per-layer and network figures of a :class:`sim.results.NetworkRun` (docs/report.md).

:func:`build_report` turns a run into the ``report.json`` structure (plain dicts, the documented schema);
:func:`format_table` and :func:`format_summary` print it; :func:`write_report` writes ``report.json``,
``layers.csv`` and the plots into a folder, all or nothing.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from accel.energy import EnergyTable, design_energy
from accel.terminal import printable
from sim.results import DESIGNS, LayerRun, NetworkRun
from trace_format import Trace

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
    "lane_utilization_dense",
    "lane_utilization_gated",
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
        # Every busy PE beat issues L lanes; the MAC counters count only its valid lanes (channels that
        # exist in the beat's chunk), so MACs / (busy PE beats x L) is the share of issued lanes that work.
        entry[f"lane_utilization_{design}"] = _ratio(d.macs, d.counters["busy_pe_cycles"] * engine.lanes)
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


def _totals(layers: list[dict], pes: int, lanes: int) -> dict:
    out: dict = {}
    for key in ("macs", "cycles", "compute_cycles", "energy_pj", "dram_bytes"):
        for design in DESIGNS:
            out[f"{key}_{design}"] = _sum(layers, f"{key}_{design}")
    for design in DESIGNS:
        busy = float(sum(e[f"counters_{design}"]["busy_pe_cycles"] for e in layers if e["mapped"]))
        out[f"pe_utilization_{design}"] = _ratio(busy, out[f"compute_cycles_{design}"] * pes)
        out[f"lane_utilization_{design}"] = _ratio(out[f"macs_{design}"], busy * lanes)
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
    pes, lanes = run.config.engine.pes, run.config.engine.lanes
    network = _totals(mapped, pes, lanes)
    network["gated_layers"] = _totals(gated, pes, lanes)
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
    meta = trace.meta
    pruning = meta.channel_pruning
    acc_at = next((p.get("int8_accuracy") for p in pruning if abs(p["threshold"] - threshold) < 1e-9), None)
    return {
        "schema_version": SCHEMA_VERSION,
        "trace": {
            "name": trace.name,
            "path": trace.path,
            "dataset": meta.dataset,
            "synthetic": meta.synthetic,
            "samples_run": run.samples,
            "accuracy": meta.accuracy,
            "gate_agreement": meta.gate_agreement,
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


def _fmt(value, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """One figure as printed: ``format(value * scale, spec) + unit``, or ``n/a`` when the figure is missing
    (None), not a number or not finite. Every figure of the table and the summary goes through here."""
    from math import isfinite
    from numbers import Real

    if value is None or isinstance(value, bool) or not isinstance(value, Real):
        return "n/a"
    value = float(value) * scale
    return format(value, spec) + unit if isfinite(value) else "n/a"


def _has_gated_layer(report: dict) -> bool:
    return any(e["mapped"] and e["gated"] for e in report["layers"])


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
        "lane util d/g",
        "gate-on",
        "energy uJ d/g",
        "DRAM KB d/g/pruned",
    )
    rows = []
    for e in report["layers"]:
        if not e["mapped"]:
            rows.append((printable(e["name"]), printable(e["kind"]), "not mapped", *[""] * (len(header) - 3)))
            continue
        rows.append(
            (
                printable(e["name"]),
                printable(e["kind"]) + ("*" if e["gated"] else ""),
                _fmt(e.get("cycles_dense"), ",.0f"),
                _fmt(e.get("cycles_gated"), ",.0f"),
                _fmt(e.get("speedup"), ".2f"),
                _fmt(e.get("theoretical_speedup"), ".2f"),
                _fmt(e.get("pe_utilization_gated"), ".0%"),
                "/".join(_fmt(e.get(f"lane_utilization_{d}"), ".0%") for d in ("dense", "gated")),
                _fmt(e.get("gate_on_fraction"), ".1%"),
                "/".join(_fmt(e.get(f"energy_pj_{d}"), ".2f", 1e-6) for d in ("dense", "gated")),
                "/".join(_fmt(e.get(f"dram_bytes_{d}"), ".1f", 1 / 1024) for d in DESIGNS),
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.append(
        "(* gated layer; not mapped: run by the host, no accelerator cycles, energy or traffic charged; "
        "lane util: valid MAC lanes / lanes issued, dense/gated)"
    )
    return "\n".join(lines)


def _energy_comparison(net: dict, has_gated: bool) -> str:
    """How the gated design's energy compares with dense, worded by direction."""
    if not has_gated:
        return "no gated layer: gated = dense"
    ratio = net.get("energy_ratio")  # dense / gated
    if _fmt(ratio, "g") == "n/a" or ratio <= 0:
        return "gated vs dense: n/a"
    if ratio > 1:
        return f"gated {ratio:.2f}x less than dense"
    if ratio < 1:
        return f"gated {1 / ratio:.2f}x more than dense"
    return "gated = dense"


def format_summary(report: dict) -> str:
    net, gl, tr = report["network"], report["network"]["gated_layers"], report["trace"]
    lo, hi = report["published_speedup_ratio"]
    acc = tr.get("accuracy") or {}
    has_gated = _has_gated_layer(report)
    lanes = (report.get("config") or {}).get("engine", {}).get("lanes")
    threshold = _fmt(tr.get("pruning_threshold"), "g")

    lines = [
        f"network:   {printable(tr['name'])} ({tr['samples_run']} image(s) simulated"
        + (", synthetic weights" if tr["synthetic"] else "")
        + ")",
        f"cycles:    dense {_fmt(net.get('cycles_dense'), ',.0f')}, "
        f"gated {_fmt(net.get('cycles_gated'), ',.0f')} per image; "
        f"speed-up {_fmt(net.get('speedup'), '.2f', unit='x')} "
        f"(theoretical {_fmt(net.get('theoretical_speedup'), '.2f', unit='x')})",
    ]
    if has_gated:
        lines.append(
            f"gated layers: speed-up {_fmt(gl.get('speedup'), '.2f', unit='x')} vs theoretical "
            f"{_fmt(gl.get('theoretical_speedup'), '.2f', unit='x')}: achieved/theoretical "
            f"{_fmt(gl.get('speedup_ratio'), '.3f')} "
            f"(published CGNet ASICs {lo:.2f}-{hi:.2f}); "
            f"compute only {_fmt(gl.get('compute_speedup'), '.2f', unit='x')}"
        )
    else:
        lines.append(
            "gated layers: none (no gated layer: gated = dense, nothing to compare with the CGNet ASICs)"
        )
    ld, lg = net.get("lane_utilization_dense"), net.get("lane_utilization_gated")
    util = (
        f"utilization: PE dense {_fmt(net.get('pe_utilization_dense'), '.1%')}, "
        f"gated {_fmt(net.get('pe_utilization_gated'), '.1%')}; MAC lanes (valid / issued) dense "
        f"{_fmt(ld, '.1%')}, gated {_fmt(lg, '.1%')}"
    )
    low = [u for u in (ld, lg) if _fmt(u, "g") != "n/a" and u < 0.995]
    if low:
        util += (
            f" (lanes idle where a segment is narrower than L = {_fmt(lanes, 'g')} or not a multiple of it)"
        )
    lines.append(util)
    lines += [
        f"energy:    dense {_fmt(net.get('energy_pj_dense'), '.2f', 1e-6)} uJ, "
        f"gated {_fmt(net.get('energy_pj_gated'), '.2f', 1e-6)} uJ, "
        f"pruned {_fmt(net.get('energy_pj_pruned'), '.2f', 1e-6)} uJ per image "
        f"({_energy_comparison(net, has_gated)})",
        f"DRAM:      dense {_fmt(net.get('dram_bytes_dense'), '.1f', 1 / 1024)} KB, "
        f"gated {_fmt(net.get('dram_bytes_gated'), '.1f', 1 / 1024)} KB, "
        f"pruned at {threshold}: {_fmt(net.get('dram_bytes_pruned'), '.1f', 1 / 1024)} KB per image "
        f"(dense/pruned {_fmt(net.get('dram_ratio_pruned'), '.2f', unit='x')})",
    ]
    if net.get("dram_bytes_pruned_compressed") is not None:
        lines.append(
            "           zero-compressed activations: "
            f"dense {_fmt(net.get('dram_bytes_dense_compressed'), '.1f', 1 / 1024)} KB, "
            f"gated {_fmt(net.get('dram_bytes_gated_compressed'), '.1f', 1 / 1024)} KB, "
            f"pruned {_fmt(net.get('dram_bytes_pruned_compressed'), '.1f', 1 / 1024)} KB"
        )
    lines.append(
        f"accuracy:  float {_fmt(acc.get('float'), '.2%')}, int8 {_fmt(acc.get('int8'), '.2%')}, "
        f"int8 with channel pruning at {threshold}: {_fmt(tr.get('int8_accuracy_pruned'), '.2%')}"
    )
    nm = report["layers_not_mapped"]
    if nm["count"]:
        kinds = ", ".join(f"{n} {printable(k)}" for k, n in sorted(nm["kinds"].items()))
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


# The files of a report folder (outfiles.folder.OutputFolder refuses a folder holding anything else).
REPORT_FILES = (
    "report.json",
    "layers.csv",
    "speedup.png",
    "conditional_work.png",
    "energy.png",
    "dram_traffic.png",
)


def write_report(report: dict, folder: Path, plots: bool = True) -> list[Path]:
    """Write ``report.json``, ``layers.csv`` and the PNG plots into ``folder`` (the staging folder of an
    :class:`outfiles.folder.OutputFolder`, which puts them in place all together or not at all)."""
    folder = Path(folder)
    (folder / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (folder / "layers.csv").write_text(layers_csv(report))
    if plots:
        from accel.plots import report_plots

        report_plots(report, folder)
    return sorted(folder.iterdir())
