"""The ``accel`` command line (accel/cli.py): the main job, Verilog generation and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest

from accel.cli import main
from spec import __version__
from spec.config import EngineConfig
from spec.config_file import load_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_error(code, err, *pieces):
    assert code == 2
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("accel: error: ")
    for piece in pieces:
        assert piece in err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0
    assert out.strip() == f"accel {__version__}"


def test_run_default(capsys, tmp_path):
    report = tmp_path / "run.json"
    code, out, err = run_cli(capsys, "run", "--json", report)
    assert code == 0, err
    for piece in (
        "outputs",
        "MACs",
        "cycles",
        "PE utilisation",
        "gate-on fraction",
        "speed-up (dense cycles / gated cycles)",
        "theoretical speed-up (dense MACs / gated MACs)",
        "achieved / theoretical",
        "0.82-0.86",
        "match the numpy reference: yes",
    ):
        assert piece in out
    data = json.loads(report.read_text())
    m = data["metrics"]
    assert data["reference_match"] is True
    assert data["config"] == EngineConfig().to_dict()
    assert m["outputs"] == 64 * 16 * 16  # the whole default layer, in 4 tiles of 32 channels x 8 x 16
    assert m["macs_dense"] == 64 * 9 * 64 * 16 * 16
    # spec section 6: C_d = P + 2 + R1 * K^2 * n_chunks per tile, 4 tiles of 4096 outputs on 8 PEs
    assert m["cycles_dense"] == 4 * (8 + 2 + 4096 // 8 * 9 * 8)  # SETUP (P = 8 cycles), DRAIN1, the beats
    assert m["speedup"] == pytest.approx(m["cycles_dense"] / m["cycles_gated"])
    assert m["theoretical_speedup"] == pytest.approx(m["macs_dense"] / m["macs_gated"])
    assert m["speedup_ratio"] == pytest.approx(m["speedup"] / m["theoretical_speedup"])
    assert 0.95 < m["speedup_ratio"] <= 1.0  # spec section 6 bounds the loss to tails and fill/drain
    assert 0.28 < m["gate_on_fraction"] < 0.32
    assert set(data["counters"]) == {"dense", "gated"}


def test_run_with_config_seed_and_all_tiles(capsys, tmp_path):
    config = tmp_path / "g1.toml"
    config.write_text("[engine]\ngroups = 1\npes = 4\noutput_depth = 1024\n")
    args = ("--seed", 5, "--gate-rate", 0.5, "--tiles", 0)
    code, _, err = run_cli(capsys, "run", "--config", config, *args)  # the layer's G = 2 > the build's 1
    assert_clean_error(code, err, "layer groups = 2: above the build's groups = 1")
    code, out, err = run_cli(capsys, "run", "--config", config, "--groups", 1, *args)
    assert code == 0, err
    assert "groups 1 (base channels 32)" in out
    assert "ran 16 of 16 tiles" in out
    assert "match the numpy reference: yes" in out


def test_default_toml_documents_every_field():
    text = DEFAULT_TOML.read_text()
    table = tomllib.loads(text)["engine"]
    assert set(table) == {f.name for f in fields(EngineConfig)}
    assert load_config(DEFAULT_TOML) == EngineConfig()
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"undocumented field: {line}"


def test_rtl(capsys, tmp_path):
    pytest.importorskip("rtl.generate", reason="rtl/generate.py does not import yet")
    out_dir = tmp_path / "build"
    code, out, err = run_cli(capsys, "rtl", "--out", out_dir, "--config", DEFAULT_TOML)
    assert code == 0, err
    verilog = out_dir / "gated_conv_engine.v"
    params = out_dir / "gated_conv_engine.json"
    assert verilog.is_file() and params.is_file()
    assert "module gated_conv_engine" in verilog.read_text()
    assert f"wrote {verilog}" in out and f"wrote {params}" in out


def test_rtl_dense_baseline(capsys, tmp_path):
    """``--dense-baseline`` writes the engine without gating hardware and says so in the parameter JSON."""
    pytest.importorskip("rtl.generate", reason="rtl/generate.py does not import yet")
    texts = {}
    for flag in ((), ("--dense-baseline",)):
        out_dir = tmp_path / ("dense" if flag else "gated")
        code, _, err = run_cli(capsys, "rtl", "--out", out_dir, "--config", DEFAULT_TOML, *flag)
        assert code == 0, err
        params = json.loads((out_dir / "gated_conv_engine.json").read_text())
        assert params["gating"] is not bool(flag)
        texts[out_dir.name] = (out_dir / "gated_conv_engine.v").read_text()
    assert "module gated_conv_engine(" in texts["dense"]
    for block in ("queue", "tbuf", "compactor", "comparator"):  # the gating blocks' modules
        assert f"module \\gated_conv_engine.{block}" in texts["gated"]
        assert f"module \\gated_conv_engine.{block}" not in texts["dense"]


def test_rtl_out_is_a_file(capsys, tmp_path):
    pytest.importorskip("rtl.generate", reason="rtl/generate.py does not import yet")
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_cli(capsys, "rtl", "--out", blocker)
    assert_clean_error(code, err, str(blocker))


@pytest.mark.parametrize("command", [["run"], ["rtl", "--out", "unused"]])
def test_unknown_config_key(capsys, tmp_path, command):
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\npes = 4\nbogus_field = 1\n")
    code, _, err = run_cli(capsys, *command, "--config", bad)
    assert_clean_error(code, err, str(bad), "bogus_field")


@pytest.mark.parametrize("command", [["run"], ["rtl", "--out", "unused"]])
def test_missing_config_file(capsys, tmp_path, command):
    missing = tmp_path / "nope.toml"
    code, _, err = run_cli(capsys, *command, "--config", missing)
    assert_clean_error(code, err, str(missing))


@pytest.mark.parametrize(
    "text, suffix, pieces",
    [
        ("pes = 0\n", ".toml", ["'pes'", "0"]),
        ('{"lanes": -3}', ".json", ["'lanes'", "-3"]),
        ("[engine]\nkernel = 3\npadding = 3\n", ".toml", ["'padding'", "3"]),
        ("[engine]\npes = 'eight'\n", ".toml", ["'pes'", "eight"]),
        ("pes = = 1\n", ".toml", ["not valid TOML"]),
        ("{", ".json", ["not valid JSON"]),
    ],
)
def test_impossible_values(capsys, tmp_path, text, suffix, pieces):
    bad = tmp_path / f"bad{suffix}"
    bad.write_text(text)
    code, _, err = run_cli(capsys, "run", "--config", bad)
    assert_clean_error(code, err, str(bad), *pieces)


def test_buffers_too_small_for_the_layer(capsys, tmp_path):
    small = tmp_path / "small.toml"
    small.write_text("weight_depth = 8\n")
    code, _, err = run_cli(capsys, "run", "--config", small)
    assert_clean_error(code, err, "weight_depth = 8")


def test_json_into_missing_directory(capsys, tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "r.json"
    code, _, err = run_cli(capsys, "run", "--json", target)
    assert_clean_error(code, err, str(target), "No such file or directory")


@pytest.mark.parametrize(
    "argv, piece",
    [
        (["run", "--seed", "-1"], "--seed"),
        (["run", "--gate-rate", "2"], "--gate-rate"),
        (["rtl"], "--out"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors(capsys, argv, piece):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and piece in err and "accel" in err


def test_subprocess_exit_status_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("pes = 0\n")
    command = [sys.executable, "-m", "accel.cli"]
    proc = subprocess.run([*command, "run", "--config", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"accel: error: {bad}: config field 'pes' = 0: must lie in [1, 64]"
    proc = subprocess.run([*command, "--version"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == f"accel {__version__}"
