"""Energy model (accel/energy.py): the table, its loader's errors and the per-component arithmetic.

Expected energies are worked out here by hand from the rules of docs/energy.md, not by calling the code.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from accel.energy import (
    ACTIONS,
    COMPONENTS,
    EnergyTable,
    design_energy,
    layer_energy,
    load_energy_table,
)
from sim.results import DesignRun, DesignTraffic, LayerRun
from spec.config import ConfigError, EngineConfig

# Horowitz, ISSCC 2014, 45 nm.
HOROWITZ = {"mult_int8": 0.2, "add_acc": 0.1, "compare": 0.1, "dram_byte": 160.0}
HOROWITZ_SRAM = {8192: 10.0, 32768: 20.0, 1048576: 100.0}


def _write(tmp_path: Path, text: str, name: str = "table.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the built-in table -------------------------------------------------------------------------------


def test_default_table_has_horowitz_figures():
    t = load_energy_table(None)
    assert "Horowitz" in t.name
    for name, pj in HOROWITZ.items():
        assert t.actions[name] == pj
        assert "Horowitz" in t.sources[name]
    # 640 pJ per 32-bit word.
    assert t.actions["dram_byte"] * 4 == 640.0
    assert t.actions["static_cycle"] == 5.0
    assert t.sources["static_cycle"].startswith("assumption")
    assert t.sram_sizes_bytes == tuple(float(s) for s in HOROWITZ_SRAM)
    assert t.sram_pj_per_64bit == tuple(HOROWITZ_SRAM.values())
    assert "Horowitz" in t.sources["sram"]
    assert t.write_factor == 1.0
    assert t.sources["write_factor"].startswith("assumption")
    assert set(t.actions) == set(ACTIONS)
    assert load_energy_table() == t


def test_sram_hits_table_points_exactly():
    t = load_energy_table(None)
    for size, pj in HOROWITZ_SRAM.items():
        assert t.sram_access_pj(size, 64) == pj
        assert t.sram_access_pj(size, 32) == pj / 2
        assert t.sram_access_pj(size, 33) == pj * 33 / 64
        assert t.sram_access_pj(size, 64, write=True) == pj  # write factor 1


def test_sram_log_log_interpolation_and_extrapolation():
    t = load_energy_table(None)
    # Geometric middle of 8 KB and 32 KB (16 KB) lies at the geometric middle of 10 and 20 pJ.
    assert t.sram_access_pj(16384, 64) == pytest.approx(math.sqrt(10.0 * 20.0), rel=1e-12)
    # Below 8 KB: along the first segment, energy ∝ size^(log 2 / log 4) = size^0.5.
    assert t.sram_access_pj(2048, 64) == pytest.approx(10.0 * 0.5, rel=1e-12)
    # Above 1 MB: along the last segment, energy ∝ size^(log 5 / log 32).
    assert t.sram_access_pj(32 * 1048576, 64) == pytest.approx(100.0 * 5.0, rel=1e-12)


def test_sram_monotonic_between_points():
    t = load_energy_table(None)
    sizes = [1024 * 1.1**i for i in range(80)]  # 1 KB .. about 2 MB
    energies = [t.sram_access_pj(s, 64) for s in sizes]
    assert all(b > a for a, b in zip(energies, energies[1:], strict=False))
    for s, e in zip(sizes, energies, strict=True):
        if 8192 <= s <= 32768:
            assert 10.0 <= e <= 20.0
        elif 32768 <= s <= 1048576:
            assert 20.0 <= e <= 100.0


def test_sram_rejects_nonpositive_size():
    t = load_energy_table(None)
    with pytest.raises(ValueError):
        t.sram_access_pj(0, 64)


# --- user tables --------------------------------------------------------------------------------------


def test_user_table_overrides(tmp_path):
    path = _write(
        tmp_path,
        """
[table]
name = "my 7 nm guess"
[actions.mult_int8]
pj = 0.05
source = "my notes"
[actions.dram_byte]
pj = 20
[sram]
sizes_bytes = [1024, 65536]
pj_per_64bit = [1.0, 4.0]
source = "my SRAM compiler"
write_factor = 1.5
""",
    )
    t = load_energy_table(path)
    assert t.name == "my 7 nm guess"
    assert t.actions["mult_int8"] == 0.05
    assert t.sources["mult_int8"] == "my notes"
    assert t.actions["dram_byte"] == 20.0
    assert str(path) in t.sources["dram_byte"]  # no source given: the file is named instead
    # Actions left out keep the built-in figure and source.
    assert t.actions["add_acc"] == 0.1 and "Horowitz" in t.sources["add_acc"]
    assert t.actions["static_cycle"] == 5.0
    assert t.sram_sizes_bytes == (1024.0, 65536.0)
    assert t.sources["sram"] == "my SRAM compiler"
    assert t.write_factor == 1.5
    # 8 KB lies at the middle of 1 KB .. 64 KB in log size (8 = 64^0.5): energy 1 * 4^0.5 = 2 pJ.
    assert t.sram_access_pj(8192, 64) == pytest.approx(2.0, rel=1e-12)
    assert t.sram_access_pj(1024, 32, write=True) == pytest.approx(0.5 * 1.5, rel=1e-12)


def test_user_table_partial_keeps_default_sram(tmp_path):
    t = load_energy_table(_write(tmp_path, "[actions.static_cycle]\npj = 0.0\nsource = 'none'\n"))
    assert t.actions["static_cycle"] == 0.0
    assert t.sram_pj_per_64bit == (10.0, 20.0, 100.0)
    assert str(tmp_path) in t.name


def test_one_point_sram_table_is_constant(tmp_path):
    t = load_energy_table(_write(tmp_path, "[sram]\nsizes_bytes = [4096]\npj_per_64bit = [3.0]\n"))
    assert t.sram_access_pj(16, 64) == 3.0
    assert t.sram_access_pj(1 << 30, 32) == 1.5


BAD_TABLES = [
    ("not toml [", "not valid TOML", None),
    ("[actions.mult_int8]\npj = -0.2\n", "actions.mult_int8.pj", "-0.2"),
    ("[actions.mult_int8]\npj = nan\n", "actions.mult_int8.pj", "nan"),
    ("[actions.mult_int8]\npj = inf\n", "actions.mult_int8.pj", "inf"),
    ("[actions.mult_int8]\npj = 'x'\n", "actions.mult_int8.pj", "'x'"),
    ("[actions.mult_int8]\npj = true\n", "actions.mult_int8.pj", "True"),
    ("[actions.mult_int8]\nsource = 'x'\n", "actions.mult_int8.pj", "missing"),
    ("[actions.mult_int8]\npj = 0.2\nunit = 'pJ'\n", "'unit'", "'pJ'"),
    ("[actions.mult_fp32]\npj = 3.7\n", "'mult_fp32'", "3.7"),
    ("[actions]\nmult_int8 = 0.2\n", "actions.mult_int8", "0.2"),
    ("[memory]\nx = 1\n", "'memory'", "'x': 1"),
    ("[table]\nname = 'a'\nyear = 2014\n", "'year'", "2014"),
    ("[table]\nname = 7\n", "table.name", "7"),
    (
        "[sram]\nsizes_bytes = [8192, 8192]\npj_per_64bit = [1.0, 2.0]\n",
        "sram.sizes_bytes",
        "[8192.0, 8192.0]",
    ),
    ("[sram]\nsizes_bytes = [32768, 8192]\npj_per_64bit = [1.0, 2.0]\n", "sram.sizes_bytes", "32768"),
    ("[sram]\nsizes_bytes = [8192, 32768]\npj_per_64bit = [1.0]\n", "sram.pj_per_64bit", "[1.0]"),
    ("[sram]\nsizes_bytes = [8192]\n", "sram.pj_per_64bit", "missing"),
    ("[sram]\nsizes_bytes = []\npj_per_64bit = []\n", "sram.sizes_bytes", "[]"),
    ("[sram]\nsizes_bytes = [0, 8192]\npj_per_64bit = [1.0, 2.0]\n", "sram.sizes_bytes", "0"),
    ("[sram]\nsizes_bytes = [8192]\npj_per_64bit = [-1.0]\n", "sram.pj_per_64bit", "-1.0"),
    ("[sram]\nsizes_bytes = 8192\npj_per_64bit = [1.0]\n", "sram.sizes_bytes", "8192"),
    ("[sram]\nwrite_factor = -1\n", "sram.write_factor", "-1"),
    ("[sram]\nwrite_factor = nan\n", "sram.write_factor", "nan"),
    ("[sram]\nbanks = 4\n", "'banks'", "4"),
]


@pytest.mark.parametrize(("text", "key", "value"), BAD_TABLES)
def test_bad_table_raises_config_error(tmp_path, text, key, value):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_energy_table(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert key in message
    if value is not None:
        assert value in message
    # No chained traceback behind the one-line message.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_missing_file_raises_config_error(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: cannot read energy table"):
        load_energy_table(path)


def test_direct_construction_is_checked():
    good = load_energy_table(None)
    with pytest.raises(ConfigError, match="mine.toml: .*static_cycle"):
        EnergyTable(
            name="x",
            actions={k: v for k, v in good.actions.items() if k != "static_cycle"},
            sources={},
            sram_sizes_bytes=(1.0,),
            sram_pj_per_64bit=(1.0,),
            origin="mine.toml",
        )


# --- design_energy ------------------------------------------------------------------------------------

# Buffer sizes chosen to land on table points where convenient:
#   input  = 2048 words x 4 lanes x 8 bits  = 8192 B  -> 10 pJ per 64 bits, a 32-bit word 5 pJ
#   weight = 8192 words x 4 lanes x 8 bits  = 32768 B -> 20 pJ per 64 bits, a 32-bit word 10 pJ
#   output = 2048 entries x (31 + 1) bits   = 8192 B  -> 10 pJ per 64 bits, an entry 5 pJ
#   threshold = 256 entries x 31 bits       = 992 B   -> below 8 KB: 10 * (992/8192)^0.5 per 64 bits
ENGINE = EngineConfig(
    pes=2,
    lanes=4,
    act_width=8,
    weight_width=8,
    acc_width=31,
    input_depth=2048,
    weight_depth=8192,
    output_depth=2048,
    threshold_depth=256,
)
THR_ENTRY_PJ = 10.0 * math.sqrt(992 / 8192) * 31 / 64


def _run(gates_on: float, spill: float = 0.0, compressed: dict | None = None) -> DesignRun:
    counters = {
        "cycles": 90.0,
        "base_macs": 1000.0,
        "cond_macs": 300.0,
        "busy_pe_cycles": 50.0,
        "idle_pe_cycles": 130.0,
        "stall_cycles": 6.0,
        "gates_on": gates_on,
    }
    buffer = {"input_fill_words": 20.0, "weight_fill_words": 30.0, "output_drain_words": 40.0}
    if spill:
        buffer["psum_spill_words"] = spill
    traffic = DesignTraffic(
        {"weights": 100.0, "params": 10.0, "inputs": 200.0, "outputs": 40.0, "psum_spill": 0.0},
        compressed=compressed,
    )
    return DesignRun(counters=counters, compute_cycles=90.0, cycles=120.0, traffic=traffic, buffer=buffer)


def test_design_energy_gated_by_hand():
    e = design_energy(_run(gates_on=12.0), ENGINE, load_energy_table(None), gated=True, outputs=40)
    assert tuple(e) == COMPONENTS
    expected = {
        "mac": 0.2 * 1300,
        "accumulate": 0.1 * 1300,
        "compare": 0.1 * 40,
        "input_buffer": (50 + 20) * 5.0,
        "weight_buffer": (50 + 30) * 10.0,
        # writes: 40 outputs + 12 phase-2 write-backs + 12 queue writes; reads: 40 drained + 12 queue reads
        "output_buffer": (40 + 12 + 12 + 40 + 12) * 5.0,
        "threshold_buffer": 40 * THR_ENTRY_PJ,
        "dram": 160.0 * 350,
        "static": 5.0 * 120,
    }
    for k, v in expected.items():
        assert e[k] == pytest.approx(v, rel=1e-12), k


def test_design_energy_dense_has_no_gating_energy():
    e = design_energy(_run(gates_on=40.0), ENGINE, load_energy_table(None), gated=False, outputs=40)
    assert e["compare"] == 0.0
    assert e["threshold_buffer"] == 0.0
    # 40 writes + 40 drain reads, no queue, no phase-2 write-backs.
    assert e["output_buffer"] == pytest.approx(80 * 5.0, rel=1e-12)
    assert e["mac"] == pytest.approx(260.0, rel=1e-12)
    assert e["static"] == pytest.approx(600.0, rel=1e-12)


def test_design_energy_writes_spill_and_compression(tmp_path):
    table = load_energy_table(
        _write(tmp_path, "[sram]\nwrite_factor = 2.0\n[actions.dram_byte]\npj = 1.0\nsource = 's'\n")
    )
    run = _run(gates_on=12.0, spill=16.0, compressed={"inputs": 50.0, "outputs": 10.0, "weights": 100.0})
    e = design_energy(run, ENGINE, table, gated=True, outputs=40)
    # Reads cost 1x, writes 2x.
    assert e["input_buffer"] == pytest.approx(50 * 5.0 + 20 * 10.0, rel=1e-12)
    assert e["weight_buffer"] == pytest.approx(50 * 10.0 + 30 * 20.0, rel=1e-12)
    # writes 40 + 12 + 12 + 8 (spill read back), reads 40 + 12 + 8 (spilled)
    assert e["output_buffer"] == pytest.approx((40 + 12 + 12 + 8) * 10.0 + (40 + 12 + 8) * 5.0, rel=1e-12)
    assert e["threshold_buffer"] == pytest.approx(40 * THR_ENTRY_PJ, rel=1e-12)  # reads only
    # Zero-compressed bytes are the ones moved.
    assert e["dram"] == pytest.approx(160.0, rel=1e-12)


def test_layer_energy_designs():
    table = load_energy_table(None)
    layer = LayerRun(
        name="conv1",
        kind="conv",
        mapped=True,
        gated=True,
        shape_out=(4, 5, 2),
        designs={"dense": _run(40.0), "gated": _run(12.0), "pruned": _run(12.0, spill=16.0)},
    )
    out = layer_energy(layer, ENGINE, table)
    assert list(out) == ["dense", "gated", "pruned"]
    assert out["dense"]["compare"] == 0.0
    assert out["gated"]["compare"] == pytest.approx(4.0, rel=1e-12)
    assert out["pruned"]["output_buffer"] > out["gated"]["output_buffer"]
    ungated = LayerRun(
        name="fc", kind="fc", mapped=True, gated=False, shape_out=(40, 1, 1), designs=layer.designs
    )
    assert all(d["threshold_buffer"] == 0.0 for d in layer_energy(ungated, ENGINE, table).values())
    assert layer_energy(LayerRun(name="pool", kind="pool", mapped=False, gated=False), ENGINE, table) == {}
