"""Payload layouts of the engine's load and unload streams (docs/microarchitecture.md, section 4)."""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

from spec.config import EngineConfig

__all__ = [
    "CONFIG_REGISTERS",
    "SEL_CONFIG",
    "SEL_COUNTERS",
    "SEL_INPUT",
    "SEL_OUTPUT",
    "SEL_THRESHOLD",
    "SEL_WEIGHT",
    "load_layout",
    "read_layout",
]

# Load stream targets.
SEL_CONFIG, SEL_INPUT, SEL_WEIGHT, SEL_THRESHOLD = 0, 1, 2, 3
# Unload request targets.
SEL_OUTPUT, SEL_COUNTERS = 0, 1

CONFIG_REGISTERS = (
    "c_in",
    "c_out",
    "h_in",
    "w_in",
    "h_out",
    "w_out",
    "pad_top",
    "pad_left",
    "base_channels",
    "dense",
)
REGISTER_WIDTH = 16


def load_layout(config: EngineConfig) -> data.StructLayout:
    """One buffer or register write: ``sel`` in the low bits, then ``addr``, then ``data``."""
    return data.StructLayout(
        {"sel": unsigned(3), "addr": unsigned(config.addr_width), "data": unsigned(config.data_width)}
    )


def read_layout(config: EngineConfig) -> data.StructLayout:
    """One unload request: ``sel`` (output buffer or counters), then ``addr``."""
    return data.StructLayout({"sel": unsigned(1), "addr": unsigned(config.addr_width)})
