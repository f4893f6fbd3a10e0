"""The stream protocol's constants, written twice on purpose until the core package holds them once (the
host-side packing must not share logic with the RTL it checks): both copies agree, with the tile checks'
register limit and the spec's table (docs/microarchitecture.md, section 4)."""

from __future__ import annotations

import spec.protocol as gateware
import verification.layout as host
from spec.config import EngineConfig
from spec.tile import REGISTER_LIMIT, TileGeometry


def test_selector_codes_agree():
    for name in ("SEL_CONFIG", "SEL_INPUT", "SEL_WEIGHT", "SEL_THRESHOLD", "SEL_OUTPUT", "SEL_COUNTERS"):
        assert getattr(host, name) == getattr(gateware, name), name
    assert (host.SEL_CONFIG, host.SEL_INPUT, host.SEL_WEIGHT, host.SEL_THRESHOLD) == (0, 1, 2, 3)
    assert (host.SEL_OUTPUT, host.SEL_COUNTERS) == (0, 1)


def test_register_table_and_width_agree():
    assert host.CONFIG_REGISTERS == gateware.CONFIG_REGISTERS
    # Every configuration register is a tile geometry field, in the geometry's order.
    assert list(host.CONFIG_REGISTERS) == [f for f in TileGeometry.__dataclass_fields__]
    assert host.REGISTER_BITS == gateware.REGISTER_WIDTH == 16
    assert REGISTER_LIMIT == (1 << host.REGISTER_BITS) - 1


def test_selector_fields_hold_every_code():
    config = EngineConfig()
    load, req = gateware.load_layout(config), gateware.read_layout(config)
    assert load["sel"].shape.width == host.SEL_BITS and req["sel"].shape.width == host.REQ_SEL_BITS
    assert max(host.SEL_CONFIG, host.SEL_INPUT, host.SEL_WEIGHT, host.SEL_THRESHOLD) < 1 << host.SEL_BITS
