"""The stream protocol (spec/protocol.py) against the spec's tables (docs/microarchitecture.md, sections 3
and 4, values written here from the document), and the host-side packing (verification/layout.py) against
Amaranth's own packing of the same layouts."""

from __future__ import annotations

import random

import pytest

from spec import protocol
from spec.config import EngineConfig
from spec.tile import REGISTER_LIMIT, TileGeometry
from verification.layout import decode_output, pack_payload, pack_request, unpack_payload

CONFIGS = [
    EngineConfig(),
    EngineConfig(pes=2, lanes=3, acc_width=20, output_depth=100),
    EngineConfig(lanes=16),
]


def test_selector_codes_are_the_spec_table():
    assert {t.name: t.value for t in protocol.LoadTarget} == {
        "CONFIG": 0,
        "INPUT": 1,
        "WEIGHT": 2,
        "THRESHOLD": 3,
    }
    assert {t.name: t.value for t in protocol.UnloadTarget} == {"OUTPUT": 0, "COUNTERS": 1}
    config = EngineConfig()
    assert protocol.load_layout(config)["sel"].shape.as_shape().width == 3
    assert protocol.read_layout(config)["sel"].shape.as_shape().width == 1


def test_registers_and_counters_are_the_spec_table():
    assert protocol.CONFIG_REGISTERS == (
        "c_in", "c_out", "h_in", "w_in", "h_out", "w_out", "pad_top", "pad_left", "base_channels", "dense",
    )  # fmt: skip
    assert [r.value for r in protocol.ConfigRegister] == list(range(10))
    # Every configuration register is a tile geometry field, in the geometry's order.
    assert list(protocol.CONFIG_REGISTERS) == list(TileGeometry.__dataclass_fields__)
    assert REGISTER_LIMIT == 65_535
    assert protocol.COUNTER_NAMES == (
        "cycles", "base_macs", "cond_macs", "busy_pe_cycles", "idle_pe_cycles", "stall_cycles", "gates_on",
    )  # fmt: skip
    assert [c.value for c in protocol.Counter] == list(range(7))


def test_register_values_follow_the_address_map():
    g = TileGeometry(c_in=5, c_out=6, h_in=7, w_in=8, h_out=9, w_out=10, pad_top=1, pad_left=2, dense=True)
    assert g.registers() == [5, 6, 7, 8, 9, 10, 1, 2, 0, 1]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"P{c.pes}L{c.lanes}A{c.acc_width}")
def test_host_packing_matches_amaranths_layouts(config):
    rng = random.Random(7)
    load, req, out = (
        protocol.load_layout(config),
        protocol.read_layout(config),
        protocol.output_layout(config),
    )
    for _ in range(200):
        sel = rng.choice(list(protocol.LoadTarget))
        addr, data = rng.getrandbits(config.addr_width), rng.getrandbits(config.data_width)
        word = load.const({"sel": sel, "addr": addr, "data": data}).as_value().value
        assert pack_payload(config, sel, addr, data) == word
        assert unpack_payload(config, word) == (sel.value, addr, data)
        target = rng.choice(list(protocol.UnloadTarget))
        assert pack_request(config, target, addr) == req.const({"sel": target, "addr": addr}).as_value().value
        y = rng.randrange(-(1 << (config.acc_width - 1)), 1 << (config.acc_width - 1))
        gate = rng.getrandbits(1)
        assert decode_output(config, out.const({"y": y, "gate": gate}).as_value().value) == (y, gate)


def test_host_packing_refuses_fields_that_do_not_fit():
    config = EngineConfig()
    with pytest.raises(ValueError, match="'addr'"):
        pack_payload(config, protocol.LoadTarget.INPUT, 1 << config.addr_width, 0)
    with pytest.raises(ValueError, match="'sel'"):
        pack_request(config, 2, 0)
