"""The stream protocol (spec/protocol.py) against the spec's tables (docs/microarchitecture.md, sections 3
and 4, values written here from the document), and the host-side packing (verification/layout.py) against
Amaranth's own packing of the same layouts."""

from __future__ import annotations

import random

import pytest

from spec import protocol
from spec.config import ConfigError, EngineConfig
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
        "QUEUE": 4,
    }
    assert {t.name: t.value for t in protocol.RunMode} == {"FULL": 0, "PHASE1": 1, "PHASE2": 2}
    assert {t.name: t.value for t in protocol.UnloadTarget} == {
        "OUTPUT": 0,
        "COUNTERS": 1,
        "QUEUE": 2,
        "QUEUE_ENTRY": 3,
    }
    config = EngineConfig()
    assert protocol.load_layout(config)["sel"].shape.as_shape().width == 3
    assert protocol.read_layout(config)["sel"].shape.as_shape().width == 2


def test_registers_and_counters_are_the_spec_table():
    assert protocol.CONFIG_REGISTERS == (
        "dense", "kernel", "stride", "n_cond", "c_out", "h_in", "w_in", "h_out", "w_out", "pad_top",
        "pad_left", "seg_b", "seg_c", "c_og", "plane", "in_seg", "w_gap", "w_seg", "row_step", "in_origin",
        "x_in", "x_wrap", "x_res", "y_in", "y_wrap", "y_res", "run", "queue_len", "half", "ia_plane",
    )  # fmt: skip
    assert [r.value for r in protocol.ConfigRegister] == list(range(30))
    assert REGISTER_LIMIT == 65_535
    assert protocol.COUNTER_NAMES == (
        "cycles", "base_macs", "cond_macs", "busy_pe_cycles", "idle_pe_cycles", "stall_cycles", "gates_on",
    )  # fmt: skip
    assert [c.value for c in protocol.Counter] == list(range(7))


def test_register_values_follow_the_address_map():
    # Worked by hand from docs/microarchitecture.md section 3: G = 3, L = 8, K = 5, S = 2, C_in = 30 (three
    # segments of 10 channels: nch_b = nch_c = 2, 6 chunks), C_out = 6 (2 per group), 9x11 in, 3x4 out.
    layer = EngineConfig().for_layer(kernel=5, stride=2, padding=2, groups=3)
    g = TileGeometry(c_in=30, c_out=6, h_in=9, w_in=11, h_out=3, w_out=4, pad_top=2, pad_left=1)
    assert g.registers(layer) == [
        0, 5, 2, 2, 6, 9, 11, 3, 4, 2, 1,  # dense .. pad_left
        10, 10, 2,  # seg_b, seg_c, c_og
        120, 240,  # plane = Hp·Wp = 10·12 (9, 11 rounded up to the stride 2), in_seg = 2·120
        4, 304,  # w_gap, w_seg: base weights 2 chunks · 25 taps · 6 channels = 300, up to a multiple of 8
        9,  # row_step = Wp − w_out + 1 = 12 − 4 + 1 (the plane is deinterleaved: one word per column)
        # in_origin: row −2 is plane row (−2 mod 2)·5 + (−2 div 2) = −1, column −1 is (−1 mod 2)·6 − 1 = 5:
        # −1·12 + 5 = −7, two's complement
        65_536 - 7,
        6, 65_536 - 5, 1,  # x_in = Wp/2, x_wrap = 1 − Wp/2, x_res = −1 mod 2
        60, 65_536 - 48, 0,  # y_in = Hp/2·Wp = 5·12, y_wrap = Wp − 60, y_res = −2 mod 2
        0, 0, 0,  # run FULL, queue_len (PHASE2 only), half
        36,  # ia_plane = h_out·Wp = 3·12
    ]  # fmt: skip
    assert g.registers(layer, run=protocol.RunMode.PHASE2, queue_len=17, half=1)[-4:-1] == [2, 17, 1]
    # G = 1 (fixed base fraction), dense: two segments, every output channel in group 0.
    layer = EngineConfig().for_layer(kernel=3, stride=1, padding=1, groups=1)
    g = TileGeometry(20, 5, 4, 4, 4, 4, 1, 1, base_channels=12, dense=True)
    assert g.registers(layer)[:14] == [1, 3, 1, 1, 5, 4, 4, 4, 4, 1, 1, 12, 8, 5]
    # plane 16, in_seg 2·16 (12 base channels: 2 chunks), base weights 2 chunks · 9 taps · 5 channels = 90,
    # up to a multiple of 8 banks: w_gap 6, w_seg 96; row_step 4 − 4 + 1; in_origin −(1·4 + 1); stride 1:
    # x_in = Wp (unused), x_wrap = 1, y_in = Hp·Wp (unused), y_wrap = Wp, residues 0
    # ia_plane = h_out·Wp = 4·4
    assert g.registers(layer)[14:] == [16, 32, 6, 96, 1, 65_536 - 5, 4, 1, 0, 16, 4, 0, 0, 0, 0, 16]


def test_a_build_runs_layers_up_to_its_maxima():
    build = EngineConfig()
    assert (build.kernel, build.stride, build.padding, build.groups) == (7, 2, 3, 4)  # spec section 2
    assert build.for_layer(1, 1, 0, 1).kernel == 1
    assert build.for_layer(7, 2, 3, 4).groups == 4
    with pytest.raises(ConfigError, match="layer kernel = 9: above the build's kernel = 7"):
        build.check_layer(EngineConfig(kernel=9))
    with pytest.raises(ConfigError, match="layer groups = 5"):
        build.for_layer(3, 1, 1, 5)
    with pytest.raises(ConfigError, match="'lanes' = 4: the build has 8"):
        build.check_layer(EngineConfig(lanes=4))
    assert EngineConfig(groups=1).for_layer(3, 1, 1, 1).groups == 1


def test_a_register_value_that_does_not_fit_is_refused():
    layer = EngineConfig(input_depth=1 << 18, output_depth=1 << 17).for_layer(
        kernel=1, stride=1, padding=0, groups=1
    )
    g = TileGeometry(c_in=16, c_out=1, h_in=300, w_in=300, h_out=300, w_out=300, base_channels=8)
    with pytest.raises(ConfigError, match="register 'plane' = 90000"):
        g.check(layer)


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
        pack_request(config, 4, 0)  # sel has 2 bits


@pytest.mark.parametrize("config", [*CONFIGS, EngineConfig(kernel=1, padding=0, groups=1)])
def test_queue_entry_width_is_the_layout_size(config):
    """spec.config writes out the queue entry's width (it cannot import the layouts); a load word holds it."""
    assert config.queue_entry_width == protocol.queue_layout(config).size <= config.data_width
