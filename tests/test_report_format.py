"""The report's figures and how they are printed (docs/report.md): lane utilization, safe layer names, traces
without gated layers, energy wording, ``n/a`` for missing figures, and sweep parameters that cannot vary."""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import math
import re
from pathlib import Path

import pytest

from accel.cli import main
from accel.energy import load_energy_table
from accel.report import build_report, format_summary, format_table, layers_csv
from sim.network import run_network
from spec.config import ConfigError
from spec.system import load_system_config
from trace_format import load_trace

ROOT = Path(__file__).resolve().parents[1]
GATED_TRACE = ROOT / "traces" / "cgnet-resnet20-digits.npz"
UNGATED_TRACE = ROOT / "traces" / "pruned-resnet20-digits.npz"
DEFAULT_CONFIG = ROOT / "configs" / "default.toml"
NON_FINITE = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _report(trace_path: Path, lanes: int | None = None) -> tuple[dict, object]:
    config = load_system_config(DEFAULT_CONFIG)
    if lanes is not None:
        config = dataclasses.replace(config, engine=dataclasses.replace(config.engine, lanes=lanes))
    trace = load_trace(trace_path)
    run = run_network(trace, config, samples=1)
    return build_report(run, trace, load_energy_table(config.energy_table)), trace


@pytest.fixture(scope="module")
def gated_report():
    return _report(GATED_TRACE)


@pytest.fixture(scope="module")
def ungated_report():
    return _report(UNGATED_TRACE)


def _row(table: str, name: str) -> str:
    rows = [line for line in table.splitlines() if line.split("  ")[0].strip() == name]
    assert len(rows) == 1, name
    return rows[0]


# --------------------------------------------------------------------------------------------------------
# 1. Lane utilization


def _segments(layer, lanes: int) -> list[int]:
    """Input-channel segments the engine walks for a layer (docs/microarchitecture.md, docs/network.md):
    a gated layer with G groups has G segments of c_in/G channels; an ungated layer runs in dense mode with a
    base segment of L channels (1 when c_in <= L) and the rest as the second segment."""
    if layer.meta.gated:
        g = layer.meta.gate_groups
        return [layer.meta.c_in // g] * g
    base = lanes if layer.meta.c_in > lanes else 1
    return [base, layer.meta.c_in - base]


def _expected_lane_utilization(layer, lanes: int) -> float:
    """Channels (valid lanes) over lanes issued: each segment of w channels takes ceil(w / L) beats of L lanes
    per tap. With G > 1 all segments are equally wide, so the gated design's ratio is the dense one's."""
    segs = _segments(layer, lanes)
    return sum(segs) / sum(math.ceil(s / lanes) * lanes for s in segs)


def _true_macs(layer) -> int:
    k = 1 if layer.meta.kind == "fc" else layer.meta.kernel
    return k * k * layer.meta.c_in * layer.meta.c_out * layer.meta.h_out * layer.meta.w_out


def test_lane_utilization_of_a_g4_layer_by_hand(gated_report):
    """layer1.0.conv1: 16 input channels, G = 4 -> 4-channel segments, each issued as one 8-lane chunk per
    tap: 4 of 8 lanes work, although every PE is busy."""
    report, trace = gated_report
    layer = trace["layer1.0.conv1"]
    assert (layer.meta.c_in, layer.meta.gate_groups, layer.meta.gated) == (16, 4, True)
    e = next(e for e in report["layers"] if e["name"] == "layer1.0.conv1")
    assert e["lane_utilization_dense"] == pytest.approx(4 / 8)
    assert e["lane_utilization_gated"] == pytest.approx(4 / 8)
    assert e["pe_utilization_dense"] > 0.99  # the PEs are busy, the lanes are not
    # The first conv: 3 channels as a 1-channel base and a 2-channel second segment, one 8-lane beat each.
    first = next(e for e in report["layers"] if e["name"] == "conv1")
    assert first["lane_utilization_dense"] == pytest.approx(3 / 16)
    assert first["lane_utilization_gated"] == pytest.approx(3 / 16)


@pytest.mark.parametrize("lanes", [8, 16])
def test_lane_utilization_per_layer_and_network(lanes):
    report, trace = _report(GATED_TRACE, lanes=lanes)
    expected = {layer.name: _expected_lane_utilization(layer, lanes) for layer in trace.engine_layers()}
    mapped = [e for e in report["layers"] if e["mapped"]]
    assert {e["name"] for e in mapped} == set(expected)
    for e in mapped:
        for design in ("dense", "gated", "pruned"):
            assert e[f"lane_utilization_{design}"] == pytest.approx(expected[e["name"]]), (e["name"], design)
    for e in report["layers"]:
        if not e["mapped"]:
            assert "lane_utilization_dense" not in e
    assert min(expected.values()) < 1.0  # the check means something: some lanes idle
    # Network: all useful lane-slots over all issued lane-slots (issued = MACs / the layer's utilization).
    layers = {layer.name: layer for layer in trace.engine_layers()}
    dense_macs = sum(_true_macs(layers[n]) for n in expected)
    dense_slots = sum(_true_macs(layers[n]) / expected[n] for n in expected)
    net = report["network"]
    assert net["lane_utilization_dense"] == pytest.approx(dense_macs / dense_slots)
    gated_slots = sum(e["macs_gated"] / expected[e["name"]] for e in mapped)
    assert net["lane_utilization_gated"] == pytest.approx(net["macs_gated"] / gated_slots)
    gated_only = [e for e in mapped if e["gated"]]
    gated_only_slots = sum(e["macs_gated"] / expected[e["name"]] for e in gated_only)
    assert net["gated_layers"]["lane_utilization_gated"] == pytest.approx(
        sum(e["macs_gated"] for e in gated_only) / gated_only_slots
    )
    for design in ("dense", "gated"):
        assert 0.0 < net[f"pe_utilization_{design}"] <= 1.0


def test_lane_utilization_in_csv_table_and_summary(gated_report):
    report, _ = gated_report
    rows = {r["name"]: r for r in csv.DictReader(io.StringIO(layers_csv(report)))}
    assert float(rows["layer1.0.conv1"]["lane_utilization_dense"]) == pytest.approx(0.5)
    assert float(rows["layer1.0.conv1"]["lane_utilization_gated"]) == pytest.approx(0.5)
    assert float(rows["layer3.1.conv1"]["lane_utilization_gated"]) == pytest.approx(1.0)
    assert rows["layer1.0.add"]["lane_utilization_gated"] == ""
    table = format_table(report)
    header = table.splitlines()[0]
    assert "lane util" in header and "PE util" in header
    assert "50%/50%" in _row(table, "layer1.0.conv1")
    assert "19%/19%" in _row(table, "conv1")  # 3/16
    assert "100%/100%" in _row(table, "layer3.1.conv1")
    summary = format_summary(report)
    line = next(line for line in summary.splitlines() if "lane" in line)
    net = report["network"]
    assert f"{net['lane_utilization_dense']:.1%}" in line
    assert f"{net['lane_utilization_gated']:.1%}" in line


# --------------------------------------------------------------------------------------------------------
# 2. Layer names with control characters


def test_table_escapes_control_characters_in_names(gated_report):
    report = copy.deepcopy(gated_report[0])
    weird = "layer1.0.conv1\nfake row\t\x1b[31m\r"
    e = next(e for e in report["layers"] if e["name"] == "layer1.0.conv1")
    e["name"] = weird
    report["trace"]["name"] = "net\nwork"
    table = format_table(report)
    lines = table.splitlines()
    # header, one line per layer, footnote: the name adds no line.
    assert len(lines) == 1 + len(report["layers"]) + 1
    assert "\x1b" not in table and "\r" not in table and "\t" not in table
    row = _row(table, r"layer1.0.conv1\nfake row\t\x1b[31m\r")
    assert "50%/50%" in row
    # Every row keeps the columns aligned: the "kind" column starts at the same offset on every row.
    kind_at = lines[0].index("kind")
    for line in lines[1:-1]:
        assert line[kind_at - 2 : kind_at] == "  ", line
    summary = format_summary(report)
    assert r"net\nwork" in summary and "net\nwork" not in summary
    # The files keep the name exactly.
    rows = list(csv.DictReader(io.StringIO(layers_csv(report))))
    assert weird in [r["name"] for r in rows]


# --------------------------------------------------------------------------------------------------------
# 3. A trace without gated layers


def test_summary_without_gated_layers(ungated_report):
    report, trace = ungated_report
    assert not trace.gated_layers()
    summary = format_summary(report)
    assert "-x" not in summary
    line = next(line for line in summary.splitlines() if line.startswith("gated layers"))
    assert "no gated layer" in line and "gated = dense" in line
    assert "x less" not in summary and "x more" not in summary


def _texts(fig) -> str:
    parts = [t.get_text() for ax in fig.axes for t in ax.texts]
    parts += [ax.get_title() for ax in fig.axes]
    return "\n".join(parts)


def test_plots_without_gated_layers_say_so(ungated_report, gated_report, tmp_path):
    import matplotlib.pyplot as plt

    from accel.plots import conditional_work_figure, report_plots, speedup_figure

    report, _ = ungated_report
    fig = conditional_work_figure(report)
    assert "no gated layer" in _texts(fig)
    plt.close(fig)
    fig = speedup_figure(report)
    assert "no gated layer" in _texts(fig)
    plt.close(fig)
    fig = conditional_work_figure(gated_report[0])
    assert "no gated layer" not in _texts(fig)
    plt.close(fig)
    written = report_plots(report, tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)


# --------------------------------------------------------------------------------------------------------
# 4. Energy wording


def _with_energy(report: dict, dense_uj: float, gated_uj: float) -> dict:
    report = copy.deepcopy(report)
    net = report["network"]
    net["energy_pj_dense"], net["energy_pj_gated"] = dense_uj * 1e6, gated_uj * 1e6
    net["energy_ratio"] = dense_uj / gated_uj
    return report


def test_energy_summary_says_more_when_gated_costs_more(gated_report):
    summary = format_summary(_with_energy(gated_report[0], 100.0, 101.0))
    line = next(line for line in summary.splitlines() if line.startswith("energy"))
    assert "1.01x more" in line and "less" not in line
    summary = format_summary(_with_energy(gated_report[0], 100.0, 50.0))
    line = next(line for line in summary.splitlines() if line.startswith("energy"))
    assert "2.00x less" in line and "more" not in line


# --------------------------------------------------------------------------------------------------------
# 5. n/a for non-finite or missing figures


def test_non_finite_figures_print_as_na(gated_report):
    report = copy.deepcopy(gated_report[0])
    net, gl = report["network"], report["network"]["gated_layers"]
    net["speedup"] = math.inf
    net["theoretical_speedup"] = math.nan
    net["energy_ratio"] = None
    net["energy_pj_gated"] = math.nan
    net["dram_bytes_pruned"] = -math.inf
    gl["speedup_ratio"] = math.nan
    gl["compute_speedup"] = math.inf
    report["trace"]["accuracy"]["float"] = math.nan
    e = next(e for e in report["layers"] if e["name"] == "layer1.0.conv1")
    e["speedup"] = math.nan
    e["cycles_gated"] = math.inf
    e["energy_pj_dense"] = math.nan
    e["dram_bytes_gated"] = None
    e["lane_utilization_gated"] = math.nan
    text = format_table(report) + "\n" + format_summary(report)
    assert not NON_FINITE.search(text), NON_FINITE.search(text)
    row = _row(format_table(report), "layer1.0.conv1")
    assert row.count("n/a") >= 4
    # An ungated layer's gate-on fraction is missing: n/a, not a bare dash.
    assert "n/a" in _row(format_table(report), "conv1")
    summary = format_summary(report)
    assert "speed-up n/a" in summary
    assert "float n/a" in summary


# --------------------------------------------------------------------------------------------------------
# 6. Sweep parameters the trace overrides


@pytest.mark.parametrize("name", ["kernel", "stride", "padding", "groups", "engine.kernel", "engine.groups"])
def test_sweep_refuses_per_layer_geometry(name):
    from accel.sweep import parse_param

    field = name.removeprefix("engine.")
    with pytest.raises(ConfigError, match=rf"'{re.escape(name)}'.*largest the build runs") as exc:
        parse_param(f"{name}=1,3")
    assert field in str(exc.value)
    # Fields the trace does not override still sweep.
    assert parse_param("lanes=4,8") == ("engine.lanes", [4, 8])


def test_sweep_points_refuses_per_layer_geometry():
    from accel.sweep import sweep_points
    from spec.system import SystemConfig

    with pytest.raises(ConfigError, match="stride.*largest the build runs"):
        sweep_points(SystemConfig(), [("engine.pes", [4, 8]), ("engine.stride", [1, 2])])
    assert len(sweep_points(SystemConfig(), [("engine.pes", [4, 8])])) == 2


def test_sweep_cli_refuses_kernel(tmp_path):
    out = tmp_path / "sweep"
    code, stdout, stderr = _run(
        "sweep", GATED_TRACE, "--param", "kernel=3,5", "--samples", "1", "--out", out, "--no-progress"
    )
    assert code == 2
    assert stderr.startswith("accel: error: ") and "kernel" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not out.exists()
