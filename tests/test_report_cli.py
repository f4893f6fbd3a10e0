"""``accel report`` and ``accel sweep`` end to end (docs/report.md): files, schema, consistency, errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest

from accel.cli import main
from accel.report_cli import default_trace_path
from trace_format import load_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPORT_PLOTS = ("speedup.png", "conditional_work.png", "energy.png", "dram_traffic.png")
DESIGNS = ("dense", "gated", "pruned")
# Keys every layer (mapped or not) and the network carry.
FIGURES = (
    "macs_dense",
    "macs_gated",
    "cycles_dense",
    "cycles_gated",
    "energy_pj_dense",
    "energy_pj_gated",
    "dram_bytes_dense",
    "dram_bytes_gated",
    "dram_bytes_pruned",
)
# Keys only mapped layers (and the network) carry.
MAPPED_FIGURES = ("speedup", "theoretical_speedup", "gate_on_fraction")
HOST_KINDS = {"add", "relu", "avgpool", "flatten"}


def _run(*argv) -> tuple[int, str, str]:
    """``main`` with stdout and stderr captured (usable from module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def trace():
    return load_trace(default_trace_path())


@pytest.fixture(scope="module")
def report_run(tmp_path_factory):
    """One ``accel report --samples 1`` of the default trace: (exit code, stdout, stderr, folder, report)."""
    out = tmp_path_factory.mktemp("report") / "out"
    code, stdout, stderr = _run("report", "--samples", "1", "--out", out, "--no-progress")
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, stdout, stderr, out, report


# --------------------------------------------------------------------------------------------------------
# accel report: files and schema


def test_report_writes_every_file(report_run):
    code, stdout, stderr, out, _ = report_run
    assert code == 0, stderr
    assert "Traceback" not in stderr
    for name in ("report.json", "layers.csv"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
        assert f"wrote {out / name}" in stdout
    for name in REPORT_PLOTS:
        assert _is_png(out / name), name
    # The temporary folder the files were written into is gone.
    assert not [p for p in out.iterdir() if p.name.startswith(".report-")]


def test_report_schema(report_run, trace):
    *_, report = report_run
    assert report["schema_version"] == 1
    assert set(report) >= {
        "schema_version",
        "trace",
        "config",
        "energy_table",
        "published_speedup_ratio",
        "network",
        "layers_not_mapped",
        "layers",
    }
    assert report["trace"]["samples_run"] == 1
    assert report["trace"]["pruning_threshold"] == report["config"]["report"]["prune_threshold"] == 0.1
    net = report["network"]
    for key in (*FIGURES, *MAPPED_FIGURES):
        assert key in net, key
        assert isinstance(net[key], float), key
    for section in ("gated_layers",):
        assert set(net[section]) >= set(FIGURES) | {"speedup", "theoretical_speedup", "speedup_ratio"}
    for design in DESIGNS:
        assert set(net["energy_breakdown"][design]) == set(net["energy_breakdown"]["dense"])
        assert sum(net["energy_breakdown"][design].values()) == pytest.approx(net[f"energy_pj_{design}"])
        assert sum(net[f"dram_operands_{design}"].values()) == pytest.approx(net[f"dram_bytes_{design}"])
    assert [e["name"] for e in report["layers"]] == [layer.name for layer in trace]
    for e in report["layers"]:
        for key in FIGURES:
            assert key in e, (e["name"], key)
        if e["mapped"]:
            for key in MAPPED_FIGURES:
                assert key in e, (e["name"], key)
            assert (e["gate_on_fraction"] is None) == (not e["gated"])
            for design in DESIGNS:
                assert e[f"energy_pj_{design}"] > 0 and e[f"dram_bytes_{design}"] > 0
                assert sum(e[f"energy_breakdown_{design}"].values()) == pytest.approx(
                    e[f"energy_pj_{design}"]
                )


def test_report_totals_and_ratios_are_consistent(report_run):
    *_, report = report_run
    net, layers = report["network"], report["layers"]
    gated = [e for e in layers if e["mapped"] and e["gated"]]
    for key in ("macs", "cycles", "energy_pj", "dram_bytes"):
        for design in DESIGNS:
            total = sum(e[f"{key}_{design}"] for e in layers)
            assert net[f"{key}_{design}"] == pytest.approx(total, rel=1e-12), (key, design)
            gated_total = sum(e[f"{key}_{design}"] for e in gated)
            assert net["gated_layers"][f"{key}_{design}"] == pytest.approx(gated_total, rel=1e-12)
    for fig in (net, net["gated_layers"], *[e for e in layers if e["mapped"]]):
        assert fig["speedup"] == pytest.approx(fig["cycles_dense"] / fig["cycles_gated"], rel=1e-12)
        assert fig["theoretical_speedup"] == pytest.approx(fig["macs_dense"] / fig["macs_gated"], rel=1e-12)
        assert fig["cycles_gated"] > 0 and fig["macs_gated"] <= fig["macs_dense"]
    sp, th = net["gated_layers"]["speedup"], net["gated_layers"]["theoretical_speedup"]
    assert net["gated_layers"]["speedup_ratio"] == pytest.approx(sp / th)
    # The network gate-on fraction is the dense-MAC-weighted mean over the gated layers.
    weighted = sum(e["gate_on_fraction"] * e["macs_dense"] for e in gated) / sum(
        e["macs_dense"] for e in gated
    )
    assert net["gate_on_fraction"] == pytest.approx(weighted)
    assert 0.0 < net["gate_on_fraction"] < 1.0
    # A channel-gated network does less work and takes fewer cycles than its dense baseline.
    assert 1.0 < net["speedup"] <= net["theoretical_speedup"] * 1.05


def test_report_macs_match_the_exporters_count(report_run, trace):
    """macs_dense (the engine's counters) equals the trace metadata's independent FLOP count per layer."""
    *_, report = report_run
    meta = trace.meta.json["layers"]
    mapped = [e for e in report["layers"] if e["mapped"]]
    assert mapped
    for e in mapped:
        assert e["macs_dense"] == meta[e["name"]]["flops"]["dense"], e["name"]
    assert report["network"]["macs_dense"] == sum(meta[e["name"]]["flops"]["dense"] for e in mapped)


def test_unmapped_layers_are_listed_and_charged_nothing(report_run, trace):
    *_, report = report_run
    unmapped = [e for e in report["layers"] if not e["mapped"]]
    host = [layer for layer in trace if layer.meta.kind in HOST_KINDS]
    assert {e["kind"] for e in unmapped} == HOST_KINDS
    assert [e["name"] for e in unmapped] == [layer.name for layer in host]
    for e in unmapped:
        for design in DESIGNS:
            for key in ("macs", "cycles", "energy_pj", "dram_bytes"):
                assert e[f"{key}_{design}"] == 0, (e["name"], key, design)
        assert e["note"]
    nm = report["layers_not_mapped"]
    assert nm["count"] == len(unmapped)
    assert sum(nm["kinds"].values()) == len(unmapped)
    assert set(nm["kinds"]) == HOST_KINDS


def test_layers_csv_equals_the_json(report_run, trace):
    *_, out, report = report_run
    rows = list(csv.DictReader((out / "layers.csv").open()))
    assert len(rows) == len(list(trace)) == len(report["layers"])
    for row, e in zip(rows, report["layers"], strict=True):
        assert row["name"] == e["name"]
        assert row["mapped"] == str(e["mapped"])
        assert row["kind"] == e["kind"]
        for key, text in row.items():
            value = e.get(key)
            if value is None:
                assert text == "", (e["name"], key)
            elif isinstance(value, bool) or isinstance(value, str):
                assert text == str(value), (e["name"], key)
            else:
                assert float(text) == value, (e["name"], key)
        if not e["mapped"]:
            assert float(row["cycles_dense"]) == float(row["cycles_gated"]) == 0.0
    for key in ("cycles_dense", "cycles_gated", "energy_pj_gated", "dram_bytes_pruned"):
        assert sum(float(r[key]) for r in rows) == pytest.approx(report["network"][key], rel=1e-12)


def test_report_prints_the_table_and_summary(report_run):
    code, stdout, _, _, report = report_run
    assert code == 0
    summary = [line for line in stdout.splitlines() if "achieved/theoretical" in line]
    assert len(summary) == 1
    assert "0.82" in summary[0]
    assert f"{report['network']['gated_layers']['speedup_ratio']:.3f}" in summary[0]
    assert f"{report['network']['cycles_dense']:,.0f}" in stdout
    for e in report["layers"]:
        assert e["name"] in stdout


def test_write_report_is_all_or_nothing(report_run, tmp_path, monkeypatch):
    """A failure while writing (here: the plots) leaves neither report files nor the staging folder, and
    the previous report as it was."""
    import accel.plots

    *_, out, _ = report_run
    previous = tmp_path / "previous"
    shutil.copytree(out, previous)
    before = {p.name: p.read_bytes() for p in previous.iterdir()}

    def broken(report, folder):
        (Path(folder) / "speedup.png").write_bytes(PNG_MAGIC)
        raise OSError(28, "No space left on device", str(Path(folder) / "speedup.png"))

    monkeypatch.setattr(accel.plots, "report_plots", broken)
    code, _, err = _run("report", "--samples", "1", "--out", previous, "--no-progress")
    _assert_one_line_error(code, err, "No space left on device")
    assert {p.name: p.read_bytes() for p in previous.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]


# --------------------------------------------------------------------------------------------------------
# accel report: options


def test_no_plots_zero_compression_and_threshold(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        "report",
        "--samples",
        "1",
        "--no-plots",
        "--zero-compression",
        "--prune-threshold",
        "0.2",
        "--out",
        out,
        "--no-progress",
    )
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["layers.csv", "report.json"]
    assert not list(out.glob("*.png"))
    report = json.loads((out / "report.json").read_text())
    assert report["trace"]["pruning_threshold"] == 0.2
    assert report["config"]["report"]["zero_compression"] is True
    assert "zero-compressed activations" in stdout
    net = report["network"]
    for design in DESIGNS:
        plain, packed = net[f"dram_bytes_{design}"], net[f"dram_bytes_{design}_compressed"]
        assert packed is not None
        # ReLU'd activations are mostly zero: compression must pay for its bit mask over the network.
        assert packed < plain
        for e in report["layers"]:
            if e["mapped"]:
                # at worst a one-bit-per-byte mask on top of the activation bytes
                assert e[f"dram_bytes_{design}_compressed"] <= 1.125 * e[f"dram_bytes_{design}"]
    rows = list(csv.DictReader((out / "layers.csv").open()))
    assert all(r["dram_bytes_gated_compressed"] != "" for r in rows if r["mapped"] == "True")


def test_report_check_compares_every_layer_with_numpy(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(
        "report", "--samples", "1", "--check", "--no-plots", "--out", out, "--no-progress"
    )
    assert code == 0, stderr
    assert "every engine layer's outputs and gates equal a plain numpy convolution" in stdout
    assert (out / "report.json").is_file()


def test_report_does_not_depend_on_jobs(tmp_path):
    """Layers in threads: the same figures with one job as with three."""
    reports = []
    for jobs in (1, 3):
        out = tmp_path / f"out{jobs}"
        code, _, stderr = _run("report", "--jobs", jobs, "--no-plots", "--out", out, "--no-progress")
        assert code == 0, stderr
        reports.append(json.loads((out / "report.json").read_text()))
    for key in ("network", "layers", "trace", "config"):
        assert reports[0][key] == reports[1][key], key


def test_report_without_zero_compression_has_no_compressed_figures(report_run):
    *_, report = report_run
    for design in DESIGNS:
        assert report["network"][f"dram_bytes_{design}_compressed"] is None


# --------------------------------------------------------------------------------------------------------
# accel report: errors


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _assert_no_report_left(root: Path) -> None:
    assert not list(root.rglob("report.json"))
    assert not list(root.rglob("layers.csv"))
    assert not list(root.rglob("*.png"))
    assert not list(root.rglob(".report-*"))


def _assert_one_line_error(code: int, err: str, *pieces: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("accel: error: ")
    for piece in pieces:
        assert piece in lines[0], (piece, lines[0])


@pytest.mark.parametrize(
    "case",
    [
        "missing trace",
        "corrupt trace",
        "unknown key",
        "buffer too small",
        "negative bandwidth",
        "too many samples",
    ],
)
def test_report_errors(tmp_path, case):
    out = tmp_path / "out"
    argv: list = ["report", "--samples", "1", "--out", out, "--no-progress"]
    if case == "missing trace":
        argv.insert(1, tmp_path / "nope.npz")
        pieces = ["nope.npz", "cannot read"]
    elif case == "corrupt trace":
        bad = _write(tmp_path / "bad.npz", bytes(range(256)) * 8)
        argv.insert(1, bad)
        pieces = ["bad.npz", "not a trace file"]
    elif case == "unknown key":
        cfg = _write(tmp_path / "c.toml", "[engine]\nfoo = 1\n")
        argv += ["--config", cfg]
        pieces = ["c.toml", "unknown key 'foo'"]
    elif case == "buffer too small":
        cfg = _write(tmp_path / "c.toml", "[engine]\ninput_depth = 4\n")
        argv += ["--config", cfg]
        pieces = ["'conv1'", "not even one output activation", "input_depth = 4"]
    elif case == "negative bandwidth":
        cfg = _write(tmp_path / "c.toml", "[dram]\nbytes_per_cycle = -1\n")
        argv += ["--config", cfg]
        pieces = ["c.toml", "bytes_per_cycle", "-1"]
    else:
        argv[2] = "99"
        pieces = ["--samples 99", "4 sample"]
    code, _, err = _run(*argv)
    _assert_one_line_error(code, err, *pieces)
    assert not out.exists()  # created for the run, removed again when it failed
    _assert_no_report_left(tmp_path)


def test_report_error_keeps_an_existing_folder_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _write(out / "report.json", "an earlier run")
    cfg = _write(tmp_path / "c.toml", "[engine]\ninput_depth = 4\n")
    code, _, err = _run("report", "--samples", "1", "--config", cfg, "--out", out, "--no-progress")
    _assert_one_line_error(code, err, "not even one output activation")
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert (out / "report.json").read_text() == "an earlier run"


def test_report_unwritable_output_folder(tmp_path):
    blocker = _write(tmp_path / "file.txt", "a file, not a folder")
    out = blocker / "out"
    code, stdout, err = _run("report", "--samples", "1", "--out", out, "--no-progress")
    _assert_one_line_error(code, err, str(out), "cannot create the output folder")
    assert stdout == ""  # refused before any work
    _assert_no_report_left(tmp_path)
    # An output path that is an existing file is refused as well.
    code, _, err = _run("report", "--samples", "1", "--out", blocker, "--no-progress")
    _assert_one_line_error(code, err, "file.txt")
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.parametrize(
    "argv, piece",
    [
        (["--prune-threshold", "2"], "--prune-threshold"),
        (["--prune-threshold", "x"], "--prune-threshold"),
        (["--samples", "0"], "--samples"),
        (["--jobs", "0"], "--jobs"),
    ],
)
def test_report_usage_errors(tmp_path, argv, piece):
    out = tmp_path / "out"
    code, _, err = _run("report", "--out", out, "--no-progress", *argv)
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("accel report: error: argument ") and piece in last
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------
# accel sweep


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    code, stdout, stderr = _run(
        "sweep",
        "--samples",
        "1",
        "--param",
        "pes=4,8",
        "--param",
        "dram.bytes_per_cycle=8,32",
        "--jobs",
        "2",
        "--out",
        out,
        "--no-progress",
    )
    return code, stdout, stderr, out


def test_sweep_files(sweep_run):
    code, stdout, stderr, out = sweep_run
    assert code == 0, stderr
    assert "Traceback" not in stderr
    for name in ("sweep.csv", "sweep.json"):
        assert (out / name).is_file()
        assert f"wrote {out / name}" in stdout
    for name in ("sweep_pes.png", "sweep_dram_bytes_per_cycle.png"):
        assert _is_png(out / name), name
    assert not [p for p in out.iterdir() if p.name.startswith(".sweep-")]


def test_sweep_table(sweep_run):
    *_, out = sweep_run
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4
    assert list(rows[0])[:2] == ["engine.pes", "dram.bytes_per_cycle"]
    grid = [(int(r["engine.pes"]), float(r["dram.bytes_per_cycle"])) for r in rows]
    assert sorted(grid) == [(4, 8.0), (4, 32.0), (8, 8.0), (8, 32.0)]
    assert all(r["error"] == "" for r in rows)
    data = json.loads((out / "sweep.json").read_text())
    assert data["parameters"] == ["engine.pes", "dram.bytes_per_cycle"]
    assert data["base_config"]["engine"]["pes"] == 8
    assert len(data["rows"]) == 4
    for row, jrow in zip(rows, data["rows"], strict=True):
        for key, text in row.items():
            assert (text == "" and jrow[key] in (None, "")) or float(text) == float(jrow[key]), key
    table = {g: {k: float(v) for k, v in r.items() if k != "error"} for g, r in zip(grid, rows, strict=True)}
    for r in table.values():
        assert r["speedup"] == pytest.approx(r["cycles_dense"] / r["cycles_gated"], rel=1e-12)
        assert math.isfinite(r["energy_pj_gated"]) and r["energy_pj_gated"] > 0
    for bpc in (8.0, 32.0):  # more PEs never take more dense cycles
        assert table[(8, bpc)]["cycles_dense"] <= table[(4, bpc)]["cycles_dense"]
        assert table[(8, bpc)]["cycles_gated"] <= table[(4, bpc)]["cycles_gated"]
    for pes in (4, 8):  # more bandwidth never takes more cycles
        assert table[(pes, 32.0)]["cycles_dense"] <= table[(pes, 8.0)]["cycles_dense"]
        assert table[(pes, 32.0)]["cycles_gated"] <= table[(pes, 8.0)]["cycles_gated"]
    # MACs do not depend on PEs or bandwidth, so neither does the theoretical speed-up.
    theoretical = {r["theoretical_speedup"] for r in table.values()}
    assert max(theoretical) == pytest.approx(min(theoretical), rel=1e-12)


@pytest.mark.parametrize(
    "param, pieces",
    [
        ("foo=1", ["'foo'", "unknown"]),
        ("pes=0", ["pes", "must lie in"]),
        ("pes=a", ["'pes'", "'a'", "integer"]),
        ("pes=4,4", ["'pes'", "distinct"]),
        ("report.zero_compression=maybe", ["zero_compression", "'maybe'"]),
        ("pes", ["'pes'", "NAME=V1,V2"]),
    ],
)
def test_sweep_errors(tmp_path, param, pieces):
    out = tmp_path / "out"
    code, stdout, err = _run("sweep", "--samples", "1", "--param", param, "--out", out, "--no-progress")
    _assert_one_line_error(code, err, *pieces)
    assert stdout == ""
    assert not out.exists()
