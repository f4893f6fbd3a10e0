"""Verilog generation: deterministic, with the parameters it was built with."""

from __future__ import annotations

import json

import pytest

from rtl.generate import TOP_NAME, generate_verilog
from spec.config import ConfigError, EngineConfig

SMALL = EngineConfig(pes=2, lanes=2, input_depth=64, weight_depth=64, output_depth=64, threshold_depth=8)


def test_same_parameters_give_byte_identical_verilog(tmp_path):
    a = generate_verilog(SMALL, tmp_path / "a")
    b = generate_verilog(EngineConfig(**SMALL.to_dict()), tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text()
    assert f"module {TOP_NAME}(" in text
    for port in ("load__payload", "req__payload", "resp__payload", "start", "busy", "done"):
        assert port in text
    # No source paths from this machine leak into the output.
    assert str(tmp_path) not in text and ".py" not in text
    params = json.loads((tmp_path / "a" / f"{TOP_NAME}.json").read_text())
    assert params["parameters"] == SMALL.to_dict()
    assert params["data_width"] == SMALL.data_width


def test_different_parameters_give_different_verilog(tmp_path):
    a = generate_verilog(SMALL, tmp_path / "a").read_text()
    b = generate_verilog(EngineConfig(**{**SMALL.to_dict(), "lanes": 3}), tmp_path / "b").read_text()
    assert a != b


@pytest.mark.parametrize(
    "field,value,fragment",
    [
        ("pes", 0, "'pes' = 0"),
        ("padding", 7, "'padding' = 7"),  # not below the kernel (7)
        ("acc_width", 12, "'acc_width' = 12"),
        ("lanes", "8", "'lanes'"),
    ],
)
def test_bad_configuration_is_refused_before_generation(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        EngineConfig(**{field: value})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'lane'"):
        EngineConfig.from_dict({"lane": 4})


def test_no_divider_and_no_multiplier_outside_the_datapath(tmp_path):
    """Kernel, stride and groups are run-time registers whose products the host writes: the Verilog of a
    build with non-power-of-two maxima has no divider or modulo anywhere, and multiplies only in the PEs'
    operand lanes and the MAC counter (valid PEs x lanes), never in the address path."""
    config = EngineConfig(**{**SMALL.to_dict(), "kernel": 5, "stride": 3, "padding": 2, "groups": 3})
    text = generate_verilog(config, tmp_path).read_text()
    module, where = None, {}
    for line in text.splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\")
        for op in (" * ", " / ", " % "):
            if op in line:
                where.setdefault(op.strip(), set()).add(module)
    assert "/" not in where and "%" not in where, where
    pes = {f"gated_conv_engine.macs.pe{i}" for i in range(config.pes)}
    assert where["*"] <= pes | {"gated_conv_engine.counters"}, where["*"]
    assert pes <= where["*"]  # the check sees the operand products it allows


def test_registers_have_no_power_up_value(tmp_path):
    """The Verilog declares its registers without initializers: the control registers take their values
    from rst and the datapath registers are written before they are read (checked by the co-simulation,
    which starts them unknown). The only initialized regs left are yosys's own trigger for each
    ``always @*`` block (``$auto$verilog_backend...dump_module``), which no clocked process assigns."""
    text = generate_verilog(SMALL, tmp_path).read_text()
    initialized = [
        line.strip() for line in text.splitlines() if line.lstrip().startswith("reg ") and " = " in line
    ]
    assert initialized, "the check sees yosys's always @* triggers"
    assert all("$auto$verilog_backend" in line for line in initialized), initialized[:5]
    clocked = [line for line in text.splitlines() if "always @(posedge clk)" in line]
    assert clocked  # the build has registers at all
    assert "(* init" not in text
