"""Every failure path of the command line ends clean: one ``accel: error:`` line, exit status 2, nothing
left behind; an output folder holds exactly one run (accel/errors.py, accel/outdir.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_run import leftovers as _leftovers
from cli_run import one_line_error as _one_line_error
from cli_run import run as _run

from accel.energy import load_energy_table
from accel.report_cli import default_trace_path
from outfiles.folder import OutputError, OutputFolder
from spec.config import ConfigError
from spec.config_file import load_config
from spec.system import load_system_config
from trace_format import TraceError, load_trace

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
SMALL_ENGINE = "[engine]\npes = 2\nlanes = 2\ninput_depth = 64\nweight_depth = 64\noutput_depth = 64\n"


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders land in the test's folder


# --------------------------------------------------------------------------------------------------------
# 1. Damaged array data


def _central_directory_offset(data: bytes, member: str) -> int:
    """Offset of ``member``'s entry in the zip's central directory (where zipfile takes its CRC from)."""
    name = member.encode()
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        name_len = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + name_len] == name:
            return at
        at = data.find(b"PK\x01\x02", at + 1)
    raise AssertionError(f"{member} not in the central directory")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("damaged")
    shipped = default_trace_path()
    # (a) 1000 bytes overwritten in the middle of the shipped (deflated) trace.
    data = bytearray(shipped.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 1000] = bytes(1000)
    deflate = _write(folder / "deflate.npz", bytes(data))
    # (b) one CRC byte flipped in an uncompressed np.savez copy: a large member, which the header-only
    # validation never reads.
    with np.load(shipped, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    plain = folder / "plain.npz"
    np.savez(plain, **arrays)
    largest = max(arrays, key=lambda k: arrays[k].nbytes)
    data = bytearray(plain.read_bytes())
    data[_central_directory_offset(bytes(data), f"{largest}.npy") + 16] ^= 0xFF
    crc = _write(folder / "crc.npz", bytes(data))
    return {"deflate": deflate, "crc": crc}


@pytest.mark.parametrize("kind", ["deflate", "crc"])
def test_damaged_data_is_found_when_the_trace_is_loaded(damaged, kind):
    path = damaged[kind]
    load_trace(path, verify_data=False).close()  # headers and metadata alone do not show the damage
    with pytest.raises(TraceError, match="corrupt or truncated"):
        load_trace(path)


@pytest.mark.parametrize("kind", ["deflate", "crc"])
@pytest.mark.parametrize("command", ["report", "sweep", "trace info"])
def test_damaged_trace_data_is_a_clean_error(damaged, tmp_path, kind, command):
    path = damaged[kind]
    out = tmp_path / "out"
    if command == "report":
        argv = ["report", path, "--samples", "1", "--out", out, "--no-progress"]
    elif command == "sweep":
        argv = ["sweep", path, "--param", "pes=4,8", "--samples", "1", "--out", out, "--no-progress"]
    else:
        argv = ["trace", "info", path]
    code, stdout, err = _run(*argv)
    _one_line_error(code, err, path.name, "corrupt or truncated")
    assert not out.exists() and _leftovers(tmp_path) == []


def test_trace_info_says_what_it_checked():
    code, stdout, _ = _run("trace", "info", default_trace_path())
    assert code == 0
    assert "every array's data checked" in stdout.splitlines()[0]


# --------------------------------------------------------------------------------------------------------
# 2. Configuration files: encoding, suffix, tables


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--samples", "1", "--no-progress"],
        ["sweep", "--param", "pes=4,8", "--samples", "1", "--no-progress"],
        ["rtl", "--out", "rtl-out"],
        ["run", "--tiles", "1"],
    ],
    ids=["report", "sweep", "rtl", "run"],
)
def test_non_utf8_configuration(tmp_path, argv):
    bad = _write(tmp_path / "b.toml", b"\xff\xfe[engine]\n")
    code, _, err = _run(*argv, "--config", bad)
    _one_line_error(code, err, "b.toml", "not UTF-8", "0xff")
    assert [p.name for p in tmp_path.iterdir()] == ["b.toml"]


def test_non_utf8_energy_table(tmp_path):
    bad = _write(tmp_path / "e.toml", b"[actions.dram_byte]\npj = \xff\n")
    code, _, err = _run("report", "--samples", "1", "--no-progress", "--energy", bad)
    _one_line_error(code, err, "e.toml")


@pytest.mark.parametrize("name", ["x.JSON", "x.Json", "x.json"])
def test_json_suffix_in_any_case(tmp_path, name):
    path = _write(tmp_path / name, '{"engine": {"pes": 4}, "dram": {"latency_cycles": 7}}')
    assert load_config(path).pes == 4
    system = load_system_config(path)
    assert system.engine.pes == 4 and system.dram.latency_cycles == 7


@pytest.mark.parametrize("loader", [load_config, load_system_config])
def test_misspelled_table_is_named_as_a_table(tmp_path, loader):
    path = _write(tmp_path / "c.toml", "[engin]\npes = 4\n")
    with pytest.raises(ConfigError, match=r"unknown table 'engin' \(known tables: dram, energy, engine"):
        loader(path)
    mixed = _write(tmp_path / "m.toml", "pes = 4\n[dram]\nlatency_cycles = 1\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'pes'"):
        loader(mixed)
    flat = _write(tmp_path / "f.toml", "pes = 4\n")  # the flat engine-only format stays valid
    assert load_config(flat).pes == 4 and load_system_config(flat).engine.pes == 4


# --------------------------------------------------------------------------------------------------------
# 3. Energy figures that would overflow


@pytest.mark.parametrize("value", ["1e308", "1e7", "inf"])
def test_energy_figures_that_overflow_are_refused(tmp_path, value):
    table = _write(tmp_path / "e.toml", f"[actions.dram_byte]\npj = {value}\n")
    out = tmp_path / "out"
    code, stdout, err = _run("report", "--samples", "1", "--no-progress", "--energy", table, "--out", out)
    _one_line_error(code, err, "e.toml", "actions.dram_byte.pj")
    assert stdout == "" and not out.exists()
    # The same table named by a system configuration's [energy] table.
    config = _write(tmp_path / "s.toml", 'energy.table = "e.toml"\n')
    code, _, err = _run("report", "--samples", "1", "--no-progress", "--config", config, "--out", out)
    _one_line_error(code, err, "actions.dram_byte.pj")


def test_energy_bounds_admit_every_published_figure(tmp_path):
    table = _write(
        tmp_path / "e.toml",
        "[actions.dram_byte]\npj = 1e6\n[sram]\nsizes_bytes = [8192, 1e15]\npj_per_64bit = [10, 1e6]\n"
        "write_factor = 1000\n",
    )
    loaded = load_energy_table(table)
    assert loaded.actions["dram_byte"] == 1e6 and loaded.write_factor == 1000
    with pytest.raises(ConfigError, match="sram.write_factor"):
        load_energy_table(_write(tmp_path / "w.toml", "[sram]\nwrite_factor = 1001\n"))


# --------------------------------------------------------------------------------------------------------
# 4., 5., 10., 11. accel rtl


@pytest.fixture
def no_elaboration(monkeypatch):
    """Fail the test if the engine is elaborated: the refusals below must come before that work."""
    import rtl.engine

    def refuse(self, platform):
        raise AssertionError("the engine was elaborated before the refusal")

    monkeypatch.setattr(rtl.engine.GatedConvEngine, "elaborate", refuse)


@pytest.mark.parametrize(
    "engine, pieces",
    [
        ("pes = 64\nlanes = 64\nact_width = 16\nweight_width = 16\n", ["65536 bits", "65535"]),
        (
            "input_depth = 1048576\nweight_depth = 1048576\noutput_depth = 1048576\n"
            "threshold_depth = 65536\n",
            ["input_depth = 1048576", "at most 65536 words"],
        ),
        ("output_depth = 65537\n", ["output_depth = 65537", "at most 65536 words"]),
    ],
    ids=["operand bus", "deepest buffers", "one word too deep"],
)
def test_rtl_refuses_what_it_cannot_build(tmp_path, no_elaboration, engine, pieces):
    config = _write(tmp_path / "c.toml", "[engine]\n" + engine)
    out = tmp_path / "a" / "b" / "out"
    started = time.monotonic()
    code, _, err = _run("rtl", "--config", config, "--out", out)
    _one_line_error(code, err, "c.toml", *pieces)
    assert time.monotonic() - started < 5
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_rtl_files_take_the_umask(tmp_path, umask):
    config = _write(tmp_path / "c.toml", SMALL_ENGINE)
    previous = os.umask(umask)
    try:
        code, stdout, err = _run("rtl", "--config", config, "--out", tmp_path / "v")
    finally:
        os.umask(previous)
    assert code == 0, err
    files = sorted((tmp_path / "v").iterdir())
    assert [f.name for f in files] == ["gated_conv_engine.json", "gated_conv_engine.v"]
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
        assert f"wrote {f}" in stdout
    assert (tmp_path / "v").stat().st_mode & 0o777 == 0o777 & ~umask
    assert _leftovers(tmp_path) == []


def test_save_trace_file_takes_the_umask(tmp_path):
    from test_trace import small_trace

    from trace_format import save_trace

    previous = os.umask(0o022)
    try:
        save_trace(tmp_path / "t.npz", *small_trace()).close()
    finally:
        os.umask(previous)
    assert (tmp_path / "t.npz").stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_rtl_into_a_read_only_folder(tmp_path, no_elaboration):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = _run("rtl", "--out", ro / "v")
        _one_line_error(code, err, str(ro / "v"), "not writable")
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_rtl_where_no_folder_can_be_made(no_elaboration):
    # /proc takes no new folder, even from root: the refusal names the destination, not a temporary file.
    code, _, err = _run("rtl", "--out", "/proc/accel-out")
    line = _one_line_error(code, err, "/proc/accel-out", "cannot create the output folder")
    assert ".accel-" not in line


def test_rtl_out_below_a_file(tmp_path, no_elaboration):
    blocker = _write(tmp_path / "f", "")
    code, _, err = _run("rtl", "--out", blocker / "v")
    _one_line_error(code, err, "is not a folder")


# --------------------------------------------------------------------------------------------------------
# 6.-9. Output folders: one run each, nothing left behind


def _report(out: Path, *extra) -> tuple[int, str, str]:
    return _run("report", "--samples", "1", "--no-progress", "--out", out, *extra)


def test_stale_plots_do_not_survive_a_no_plots_run(tmp_path):
    out = tmp_path / "r"
    code, _, err = _report(out)
    assert code == 0, err
    assert len(list(out.glob("*.png"))) >= 4
    code, _, err = _report(out, "--no-plots", "--prune-threshold", "0.2")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["layers.csv", "report.json"]
    assert _leftovers(tmp_path) == []


def test_failed_run_leaves_no_parent_folders(tmp_path):
    config = _write(tmp_path / "c.toml", "[engine]\ninput_depth = 4\n")  # refused when the layers are cut
    code, _, err = _report(tmp_path / "a" / "b" / "c", "--config", config)
    _one_line_error(code, err, "input_depth = 4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_failed_run_keeps_the_previous_report_as_it_was(tmp_path):
    out = tmp_path / "r"
    assert _report(out, "--no-plots")[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    config = _write(tmp_path / "c.toml", "[engine]\ninput_depth = 4\n")
    code, _, err = _report(out, "--config", config)
    _one_line_error(code, err, "input_depth = 4")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["report", "sweep", "rtl"])
def test_a_folder_holding_other_files_is_refused_before_the_work(tmp_path, command, no_elaboration):
    out = tmp_path / "mine"
    out.mkdir()
    _write(out / "notes.txt", "mine")
    argv = {
        "report": ["report", "--samples", "1", "--no-progress"],
        "sweep": ["sweep", "--param", "pes=4,8", "--samples", "1", "--no-progress"],
        "rtl": ["rtl"],
    }[command]
    code, stdout, err = _run(*argv, "--out", out)
    _one_line_error(code, err, "mine", "'notes.txt'", "does not write")
    assert stdout == ""
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("out", ["", "  ", "."])
@pytest.mark.parametrize("command", ["report", "sweep", "rtl"])
def test_out_must_name_a_new_folder(tmp_path, command, out):
    argv = {
        "report": ["report", "--no-progress"],
        "sweep": ["sweep", "--param", "pes=4,8", "--no-progress"],
        "rtl": ["rtl"],
    }[command]
    code, _, err = _run(*argv, "--out", out)
    assert code == 2 and "Traceback" not in err
    assert ("empty path" in err) if not out.strip() else ("current folder" in err)
    assert list(tmp_path.iterdir()) == []


def test_two_runs_into_one_folder_leave_the_last_one_whole(tmp_path):
    out = tmp_path / "out"
    a, b = OutputFolder(out, ("*.txt",), "test"), OutputFolder(out, ("*.txt",), "test")
    staging_a, staging_b = a.__enter__(), b.__enter__()  # both runs staged at once
    _write(staging_a / "a1.txt", "a")
    _write(staging_a / "a2.txt", "a")
    _write(staging_b / "b.txt", "b")
    assert not out.exists()  # nothing is visible before a run commits
    a.__exit__(None, None, None)
    assert sorted(p.name for p in out.iterdir()) == ["a1.txt", "a2.txt"]
    b.__exit__(None, None, None)
    # The folder is b's run, without a's files.
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert _leftovers(tmp_path) == []


def test_output_folder_removes_its_staging_and_created_parents_on_error(tmp_path):
    out = tmp_path / "x" / "y" / "out"
    with pytest.raises(RuntimeError), OutputFolder(out, ("*",), "test") as staging:
        _write(staging / "f", "partial")
        raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OutputError, match="current folder"):
        OutputFolder(Path.cwd(), ("*",), "test").check()


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "accel.cli", *argv]


def test_concurrent_reports_into_one_folder(tmp_path):
    out = tmp_path / "out"
    runs = {
        "plots": ["--prune-threshold", "0.1"],
        "no-plots": ["--no-plots", "--prune-threshold", "0.2"],
    }
    procs = {
        name: subprocess.Popen(
            _cli("report", "--samples", "1", "--no-progress", "--jobs", "1", "--out", str(out), *extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for name, extra in runs.items()
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err)
    names = sorted(p.name for p in out.iterdir())
    report = json.loads((out / "report.json").read_text())
    threshold = report["config"]["report"]["prune_threshold"]
    if threshold == 0.2:  # the no-plots run finished last: none of the other run's plots
        assert names == ["layers.csv", "report.json"]
    else:
        plots = set(names) - {"layers.csv", "report.json"}
        assert (
            threshold == 0.1
            and len(names) == len(plots) + 2
            and plots
            and all(n.endswith(".png") for n in plots)
        )
    assert _leftovers(tmp_path) == []


def _default_stop_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize(
    "command, sig, word, delay",
    [
        ("report", signal.SIGTERM, "terminated", 0.0),
        ("report", signal.SIGINT, "interrupted", 0.0),
        ("report", signal.SIGHUP, "hung up", 0.0),
        ("sweep", signal.SIGTERM, "terminated", 0.0),  # while the grid points' processes start
        ("sweep", signal.SIGTERM, "terminated", 1.0),  # while they run
        ("sweep", signal.SIGINT, "interrupted", 1.0),
    ],
)
def test_signal_during_a_run_leaves_nothing(tmp_path, command, sig, word, delay):
    trace = TRACES / "resnet18-imagenet-synthetic.npz"  # seconds of work after the folder is staged
    out = tmp_path / "a" / "out"
    extra = (
        ["--param", "pes=4,8,16,32,64", "--param", "lanes=4,8,16", "--jobs", "2"]
        if command == "sweep"
        else []
    )
    proc = subprocess.Popen(
        _cli(command, str(trace), "--no-progress", "--out", str(out), *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # As from a terminal: a test run started in the background (``cmd &`` in a script) has SIGINT
        # ignored, which the command keeps on purpose (nohup-style), so Ctrl-C would not reach it.
        preexec_fn=_default_stop_signals,
    )
    deadline = time.monotonic() + 120
    while not list((tmp_path / "a").glob(".out.accel-*")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    # It dies of the signal itself (a shell sees 128 + n, and a script stops on Ctrl-C), after its clean-up.
    assert proc.returncode == -sig, err
    assert err.strip().splitlines()[-1] == f"accel: {word}"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # staging folder and the parent created for it: gone


# --------------------------------------------------------------------------------------------------------
# The same classes elsewhere: accel run --json, accel trace export


def test_run_json_is_checked_before_the_work_and_written_whole(tmp_path, monkeypatch):
    import accel.cli

    def no_work(*args, **kwargs):
        raise AssertionError("the layer was simulated before the refusal")

    monkeypatch.setattr(accel.cli, "default_layer", no_work)
    code, _, err = _run("run", "--json", tmp_path / "missing" / "r.json")
    _one_line_error(code, err, "r.json", "No such file or directory")
    code, _, err = _run("run", "--json", tmp_path)
    _one_line_error(code, err, "is a folder")


def test_trace_export_checks_its_destination_first(tmp_path):
    pytest.importorskip("torch")
    blocker = _write(tmp_path / "f", "")
    run_dir = tmp_path / "no-run"
    code, _, err = _run("trace", "export", run_dir, "--out", blocker / "t.npz", "--samples", "1")
    _one_line_error(code, err, "t.npz", "is not a folder")


def test_shipped_traces_are_not_modified_by_the_checks():
    # The damaged copies above are copies: the shipped files still load with their data verified.
    paths = sorted(TRACES.glob("*.npz"))
    assert len(paths) == 4
    for path in paths:
        load_trace(path).close()


def test_trace_names_with_control_characters(tmp_path):
    from test_trace import small_trace

    from trace_format import save_trace

    meta, arrays = small_trace()
    weird = "f\nc\x1b[31m"
    bad_meta = {**meta, "layer_order": [weird if k == "fc" else k for k in meta["layer_order"]]}
    bad_meta["layers"] = {(weird if k == "fc" else k): v for k, v in meta["layers"].items()}
    bad_arrays = {(weird if k == "fc" else k): v for k, v in arrays.items()}
    with pytest.raises(TraceError, match=r"layer name 'f\\nc\\x1b\[31m'"):  # refused, and named escaped
        save_trace(tmp_path / "bad.npz", bad_meta, bad_arrays)
    # A network name is free text: printed escaped, on its line.
    path = tmp_path / "t.npz"
    save_trace(path, {**meta, "name": "ti\nny\x1b[0m"}, arrays).close()
    code, out, err = _run("trace", "info", path)
    assert code == 0, err
    assert "\x1b" not in out and r"ti\nny\x1b[0m" in out


# --------------------------------------------------------------------------------------------------------
# Found by a few hundred adversarial inputs


def test_a_folder_named_like_a_report_file_is_the_users(tmp_path):
    out = tmp_path / "d"
    (out / "report.json").mkdir(parents=True)
    _write(out / "report.json" / "thesis.tex", "mine")
    code, stdout, err = _report(out)
    _one_line_error(code, err, "'report.json'", "does not write")
    assert (out / "report.json" / "thesis.tex").read_text() == "mine"


def test_json_output_never_replaces_a_link_device_or_fifo(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = _write(tmp_path / "target.json", "keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    for path in (fifo, link, Path("/dev/null")):
        code, _, err = _run("run", "--tiles", "1", "--json", path)
        _one_line_error(code, err, str(path), "not a regular file")
    assert stat_is_fifo(fifo) and link.is_symlink() and target.read_text() == "keep"


def stat_is_fifo(path: Path) -> bool:
    import stat

    return stat.S_ISFIFO(path.lstat().st_mode)


@pytest.mark.parametrize("source", ["fifo", "/dev/zero", "big", "empty name"])
@pytest.mark.parametrize("option", ["--config", "--energy"])
def test_configuration_files_that_are_not_small_regular_files(tmp_path, source, option):
    if source == "fifo":
        path = tmp_path / "c.toml"
        os.mkfifo(path)  # opening it would block for ever
        piece = "not a regular file"
    elif source == "big":
        path = _write(tmp_path / "c.toml", "# " + "x" * (1 << 20) + "\n")
        piece = "at most 1048576"
    elif source == "empty name":
        path, piece = "", "not a file name"  # an argparse usage error
    else:
        path, piece = source, "not a regular file"
    code, stdout, err = _run("report", "--samples", "1", "--no-progress", option, path)
    if source == "empty name":  # refused by the option's parser: usage, then the one error line
        assert code == 2 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == f"accel report: error: argument {option}: '': not a file name"
    else:
        _one_line_error(code, err, piece)
    assert stdout == ""


@pytest.mark.parametrize(
    "name, text, piece",
    [
        ("huge.toml", "[dram]\nbytes_per_cycle = " + "9" * 400 + "\n", "bytes_per_cycle"),
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("deep.toml", "pes = " + "[" * 50_000 + "]" * 50_000 + "\n", "not valid TOML"),
        ("long.json", '{"pes": ' + "9" * 5000 + "}", "not valid JSON"),
        ("twice.json", '{"pes": 4, "pes": 8}', "key 'pes' given twice"),
        ("nul.toml", '[energy]\ntable = "a\\u0000b"\n', "[energy] field 'table'"),
        ("empty.toml", '[energy]\ntable = ""\n', "[energy] field 'table'"),
        ("missing.toml", '[energy]\ntable = "nope.toml"\n', "missing.toml: [energy] table: "),
    ],
)
def test_configuration_values_that_break_parsers(tmp_path, name, text, piece):
    path = _write(tmp_path / name, text)
    code, _, err = _run("report", "--samples", "1", "--no-progress", "--config", path)
    _one_line_error(code, err, name, piece)


@pytest.mark.parametrize("command", [["run", "--tiles", "1"], ["rtl", "--out", "v"]])
def test_run_and_rtl_check_every_table_of_the_file(tmp_path, command, no_elaboration):
    path = _write(tmp_path / "c.toml", "[engine]\npes = 2\n[dram]\nbytes_per_cycle = nan\n")
    code, _, err = _run(*command, "--config", path)
    _one_line_error(code, err, "c.toml", "bytes_per_cycle")


def test_energy_of_a_steep_sram_table_is_refused_not_overflowed(tmp_path):
    table = _write(tmp_path / "e.toml", "[sram]\nsizes_bytes = [1, 1.001]\npj_per_64bit = [1e-6, 1e6]\n")
    code, stdout, err = _run("report", "--samples", "1", "--no-progress", "--energy", table)
    _one_line_error(code, err, "e.toml", "extrapolates to above")
    assert "inf" not in stdout and "nan" not in stdout


def test_counters_that_could_wrap_are_refused(tmp_path):
    config = _write(tmp_path / "c.toml", "counter_width = 20\n")
    code, _, err = _run("run", "--config", config)
    _one_line_error(code, err, "'counter_width' = 20", "wraps the counters")
    code, _, err = _report(tmp_path / "r", "--config", config)
    _one_line_error(code, err, "layer 'conv1'", "'counter_width' = 20")
    code, stdout, err = _run(
        "sweep", "--param", "counter_width=20,48", "--samples", "1", "--no-progress", "--out", tmp_path / "s"
    )
    assert code == 1 and "1 of 2 grid point(s) failed" in err  # the 20-bit point's row says why
    rows = json.loads((tmp_path / "s" / "sweep.json").read_text())["rows"]
    assert "wraps the counters" in rows[0]["error"] and rows[1]["error"] == ""


def test_sweep_grid_size_and_repeated_parameters(tmp_path):
    values = ",".join(str(v) for v in range(1, 65))
    code, _, err = _run(
        "sweep",
        "--param",
        f"pes={values}",
        "--param",
        f"lanes={values}",
        "--param",
        "input_depth=" + ",".join(str(v) for v in range(1000, 1100)),
        "--no-progress",
    )
    _one_line_error(code, err, "409600 grid points", "at most 10000")
    code, _, err = _run("sweep", "--param", "pes=4", "--param", "engine.pes=8", "--no-progress")
    _one_line_error(code, err, "'engine.pes' is given twice")


def test_printed_paths_and_errors_stay_on_one_printable_line(tmp_path):
    weird = tmp_path / "we ird\nname\x1b[31m"
    weird.mkdir()
    trace = weird / "t.npz"
    shutil.copyfile(default_trace_path(), trace)
    code, stdout, _ = _run("trace", "info", trace)
    assert code == 0 and "\x1b" not in stdout and r"we ird\nname\x1b[31m" in stdout.splitlines()[0]
    config = _write(tmp_path / "c.toml", "x" * 100_000 + " = 1\n")
    code, _, err = _run("run", "--config", config)
    line = _one_line_error(code, err, "c.toml")
    assert len(line) <= 2020


@pytest.mark.parametrize("param", ["pes=1_6", "pes=\u0664", ".pes=4", "dram.bytes_per_cycle=1e400x"])
def test_sweep_values_are_plain_numbers(param):
    code, _, err = _run("sweep", "--param", param, "--no-progress")
    _one_line_error(code, err, "sweep parameter")


@pytest.mark.parametrize("text", ["1_0", "\u0661", "9" * 5000])
def test_counts_are_plain_ascii_integers(text):
    code, _, err = _run("report", "--samples", text, "--no-progress")
    assert code == 2 and "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("accel report: error: argument --samples: invalid sample count")
    )


def test_out_through_a_file_is_refused_as_the_system_would(tmp_path):
    _write(tmp_path / "afile", "")
    code, _, err = _run("report", "--out", tmp_path / "afile" / ".." / "x", "--no-progress")
    _one_line_error(code, err, "afile is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_folder_of_the_users_pictures_is_not_a_report(tmp_path):
    out = tmp_path / "pics"
    out.mkdir()
    _write(out / "holiday.png", "a picture")
    for argv in (["report", "--samples", "1"], ["sweep", "--param", "pes=4,8", "--samples", "1"]):
        code, _, err = _run(*argv, "--no-progress", "--out", out)
        _one_line_error(code, err, "'holiday.png'", "does not write")
    assert [p.name for p in out.iterdir()] == ["holiday.png"]


def test_a_reader_that_stops_early_costs_no_results(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(
        _cli("report", "--samples", "1", "--no-progress", "--out", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    proc.stdout.close()  # as `| head -0` would
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141 and b"Traceback" not in err and b"error" not in err, err
    assert (out / "report.json").is_file() and (out / "layers.csv").is_file()


def test_runs_creating_the_same_parent_at_once(tmp_path):
    parent = tmp_path / "results"
    a = OutputFolder(parent / "a", ("*.txt",), "test")
    b = OutputFolder(parent / "b", ("*.txt",), "test")
    staging_a = a.__enter__()
    parent_made_by_a = parent.exists()
    staging_b = b.__enter__()  # the parent exists now: b neither fails nor claims it
    _write(staging_a / "x.txt", "a")
    _write(staging_b / "y.txt", "b")
    a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    assert parent_made_by_a and sorted(p.name for p in parent.iterdir()) == ["a", "b"]


def test_replacing_a_folder_keeps_its_mode(tmp_path):
    out = tmp_path / "r"
    assert _report(out, "--no-plots")[0] == 0
    out.chmod(0o750)
    assert _report(out, "--no-plots")[0] == 0
    assert out.stat().st_mode & 0o777 == 0o750
