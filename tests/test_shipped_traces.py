"""Every trace shipped in traces/ loads and validates, and its recorded figures are consistent."""

from __future__ import annotations

from pathlib import Path

import pytest

from trace_format import load_trace

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "traces").glob("*.npz"))


def test_traces_are_shipped():
    assert len(SHIPPED) >= 4, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_trace_validates(path):
    trace = load_trace(path)
    meta = trace.meta.json
    assert meta["made_by"]["command"], "a shipped trace records the command that made it"
    flops = meta["flops"]
    assert 0 < flops["gated"] <= flops["dense"]
    engine_layers = [layer for layer in trace.layers.values() if layer.meta.is_engine_layer]
    assert engine_layers, "a network with no layer for the engine"


def test_shipped_folder_is_small():
    assert sum(p.stat().st_size for p in SHIPPED) <= 25 * 1024 * 1024
