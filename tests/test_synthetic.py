"""The synthetic layer generator and the tile cutter (traces/synthetic.py).

Whole layers are checked against the literal formula (tests/test_reference.py's loops), tiles stitched
back against the functional reference (sim/reference.py, itself checked by those loops).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.reference import base_mask, conv2d, gated_conv
from sim.synthetic import cut_tiles, layer_reference, synthetic_layer
from spec.config import ConfigError, EngineConfig
from spec.tile import Tile, TileGeometry
from tests.test_reference import naive

# A 3x3, stride-1, padding-1, G = 2 layer on the default build (the layer `accel run` cuts by default).
LAYER3 = EngineConfig().for_layer(kernel=3, stride=1, padding=1, groups=2)


def gated(x, w, thresholds, stride, pad_top, pad_left, h_out, w_out, groups, base_channels):
    """The functional reference (sim/reference.py) on a tile's or layer's geometry: (y, gates, p, full)."""
    c_out, c_in = w.shape[:2]
    mask = base_mask(c_in, c_out, groups, base_channels)
    geometry = dict(stride=stride, pad_top=pad_top, pad_left=pad_left, h_out=h_out, w_out=w_out)
    y, gates, p = gated_conv(x, w, thresholds, mask, **geometry)
    return y, gates, p, conv2d(x, w, **geometry)


def layer_out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def test_values_look_like_int8_activations_and_weights():
    layer = synthetic_layer(32, 16, 12, 12, 3, 1, 1, 2, 0.4, seed=7)
    x, w = layer.inputs, layer.weights
    assert x.dtype == np.int8 and w.dtype == np.int8 and layer.thresholds.dtype == np.int64
    assert x.shape == (32, 12, 12) and w.shape == (16, 32, 3, 3) and layer.thresholds.shape == (16,)
    assert x.min() >= 0
    assert 0.4 < (x == 0).mean() < 0.65
    assert x.max() > 100
    assert w.min() < -100 and w.max() > 100
    assert abs(float(w.astype(np.float64).mean())) < 3
    # seeded: same seed, same layer; another seed, another layer
    again = synthetic_layer(32, 16, 12, 12, 3, 1, 1, 2, 0.4, seed=7)
    assert np.array_equal(again.inputs, x) and np.array_equal(again.weights, w)
    assert np.array_equal(again.thresholds, layer.thresholds)
    other = synthetic_layer(32, 16, 12, 12, 3, 1, 1, 2, 0.4, seed=8)
    assert not np.array_equal(other.inputs, x)


@pytest.mark.parametrize("groups, base_channels", [(1, 16), (1, 5), (2, 0), (4, 0)])
@pytest.mark.parametrize("gate_rate", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
def test_gate_rate_is_calibrated(groups, base_channels, gate_rate):
    layer = synthetic_layer(32, 16, 16, 16, 3, 1, 1, groups, gate_rate, seed=1, base_channels=base_channels)
    _, gates, _, _ = gated(
        layer.inputs, layer.weights, layer.thresholds, 1, 1, 1, 16, 16, groups, base_channels
    )
    per_channel = gates.mean(axis=(1, 2))
    assert abs(per_channel.mean() - gate_rate) < 0.01
    assert np.all(np.abs(per_channel - gate_rate) < 0.03)


def test_layer_reference_equals_the_literal_formula():
    for groups, base in [(2, 0), (1, 3)]:
        layer = synthetic_layer(8, 6, 9, 7, 3, 2, 1, groups, 0.5, seed=3, base_channels=base)
        h_out, w_out = layer_out_size(9, 3, 2, 1), layer_out_size(7, 3, 2, 1)
        for dense in (False, True):
            want = naive(
                layer.inputs, layer.weights, layer.thresholds, 2, 1, 1, h_out, w_out, groups, base, dense
            )
            y, gates = layer_reference(layer, dense=dense)
            assert np.array_equal(y, want[0]) and np.array_equal(gates, want[1])
        assert 0 < gates.sum() and not layer_reference(layer)[1].all()


def check_stitching(layer, config):
    tiles = cut_tiles(layer, config)
    k, s, p, g = layer.kernel, layer.stride, layer.padding, layer.groups
    h_out, w_out = layer_out_size(layer.h, k, s, p), layer_out_size(layer.w, k, s, p)
    y_ref, gates_ref, _, _ = gated(
        layer.inputs, layer.weights, layer.thresholds, s, p, p, h_out, w_out, g, layer.base_channels
    )
    y = np.zeros_like(y_ref)
    gates = np.zeros_like(gates_ref)
    covered = np.zeros(y_ref.shape, dtype=np.int64)
    for tile in tiles:
        assert isinstance(tile, Tile)
        tile.check(config)
        geo = tile.geometry
        assert geo.c_in == layer.c_in and not geo.dense
        assert tile.inputs.dtype == np.int8 and tile.weights.dtype == np.int8
        if tile.row0 == 0:
            assert geo.pad_top == p
        elif tile.row0 * s >= p:
            assert geo.pad_top == 0
        if tile.col0 == 0:
            assert geo.pad_left == p
        elif tile.col0 * s >= p:
            assert geo.pad_left == 0
        ty, tg, _, _ = gated(
            tile.inputs,
            tile.weights,
            tile.thresholds,
            s,
            geo.pad_top,
            geo.pad_left,
            geo.h_out,
            geo.w_out,
            g,
            geo.base_channels,
        )
        where = (
            list(tile.channels),
            slice(tile.row0, tile.row0 + geo.h_out),
            slice(tile.col0, tile.col0 + geo.w_out),
        )
        y[where] = ty
        gates[where] = tg
        covered[where] += 1
    assert np.all(covered == 1)
    assert np.array_equal(y, y_ref)
    assert np.array_equal(gates, gates_ref)
    return tiles


def test_default_layer_cuts_into_doc_example_tiles():
    layer = synthetic_layer(64, 64, 16, 16, 3, 1, 1, 2, 0.3, seed=0)
    tiles = check_stitching(layer, LAYER3)
    assert len(tiles) == 4
    assert tiles[0].geometry == TileGeometry(64, 32, 9, 16, 8, 16, pad_top=1, pad_left=1)
    # a tile takes the same block of channels from each group, group by group
    assert tiles[0].channels == tuple(range(0, 16)) + tuple(range(32, 48))
    assert cut_tiles(layer, LAYER3, max_tiles=1)[0].geometry == tiles[0].geometry


def test_column_blocks_when_a_row_does_not_fit():
    layer = synthetic_layer(16, 4, 6, 40, 3, 1, 1, 2, 0.5, seed=2)
    config = dataclasses.replace(LAYER3, input_depth=2 * 3 * 10, output_depth=16, weight_depth=4 * 2 * 9)
    tiles = check_stitching(layer, config)
    assert len({t.col0 for t in tiles}) > 1


@st.composite
def layers_and_configs(draw):
    def up(n: int, s: int) -> int:
        return -(-n // s) * s

    groups = draw(st.sampled_from([1, 2, 3]))
    kernel = draw(st.integers(1, 4))
    stride = draw(st.integers(1, 3))
    padding = draw(st.integers(0, kernel - 1))
    lanes = draw(st.sampled_from([1, 2, 4, 8]))
    c_in = groups * draw(st.integers(2 if groups == 1 else 1, 6))
    c_out = groups * draw(st.integers(1, 5))
    base = draw(st.integers(1, c_in - 1)) if groups == 1 else 0
    h = draw(st.integers(max(1, kernel - 2 * padding), 11))
    w = draw(st.integers(max(1, kernel - 2 * padding), 11))
    gate_rate = draw(st.floats(0, 1))
    seed = draw(st.integers(0, 2**32 - 1))
    layer = synthetic_layer(c_in, c_out, h, w, kernel, stride, padding, groups, gate_rate, seed, base)
    probe = TileGeometry(c_in, groups, 1, 1, 1, 1, base_channels=max(base, 1) if groups == 1 else 0)
    config = EngineConfig(pes=4, lanes=lanes, kernel=kernel, stride=stride, groups=groups, padding=padding)
    n_chunks = probe.segments(config).n_chunks
    mult = groups
    config = EngineConfig(
        pes=4,
        lanes=lanes,
        kernel=kernel,
        stride=stride,
        groups=groups,
        padding=draw(st.integers(padding, kernel - 1)),
        # one output's input window, its rows and columns rounded up to the stride (the deinterleaved plane)
        input_depth=n_chunks * up(min(kernel, h), stride) * up(min(kernel, w), stride)
        + draw(st.integers(0, 400)),
        # one channel per group, and each segment but the last padded to the 4 banks (up to 3 words)
        weight_depth=mult * n_chunks * kernel * kernel + 3 * (max(groups, 2) - 1) + draw(st.integers(0, 300)),
        output_depth=mult + draw(st.integers(0, 200)),
        threshold_depth=mult + draw(st.integers(0, 10)),
    )
    return layer, config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers_and_configs())
def test_tiles_fit_and_stitch_into_the_layer(case):
    layer, config = case
    check_stitching(layer, config)


def test_refuses_what_the_engine_cannot_run():
    layer = synthetic_layer(16, 8, 8, 8, 3, 1, 1, 2, 0.5, seed=0)
    with pytest.raises(ConfigError, match="'kernel' = 3"):
        cut_tiles(layer, dataclasses.replace(LAYER3, kernel=5))
    with pytest.raises(ConfigError, match="'groups' = 2"):
        cut_tiles(layer, dataclasses.replace(LAYER3, groups=4))
    with pytest.raises(ConfigError, match="'padding' = 1"):
        cut_tiles(layer, dataclasses.replace(LAYER3, padding=0))
    with pytest.raises(ConfigError, match="not even one output"):
        cut_tiles(layer, dataclasses.replace(LAYER3, weight_depth=10))
    with pytest.raises(ConfigError, match="'gate_rate'"):
        synthetic_layer(16, 8, 8, 8, 3, 1, 1, 2, 1.5, seed=0)
    with pytest.raises(ConfigError, match="'c_out' = 7"):
        synthetic_layer(16, 7, 8, 8, 3, 1, 1, 2, 0.5, seed=0)
    with pytest.raises(ConfigError, match="'base_channels' = 0"):
        synthetic_layer(16, 8, 8, 8, 3, 1, 1, 1, 0.5, seed=0)
