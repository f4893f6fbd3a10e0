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
        ("padding", 3, "'padding' = 3"),
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
