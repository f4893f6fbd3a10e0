"""The synthetic ResNet-18 trace (traces/resnet18_synthetic.py), checked on a reduced variant.

The variant keeps the network's structure (stem, 4 stages of 2 BasicBlocks, downsample convs, pools, fc)
with 8/16/32/64 channels and a 64×64 input. Every arithmetic claim is recomputed here with plain numpy
(int64 sums over kernel taps), independently of the generator's im2col/BLAS path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.reference import conv2d
from sim.resnet18_synthetic import build_resnet18, command_line, main
from trace_format import Flops, TraceError, load_trace, save_trace, validate_trace

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "traces" / "resnet18-imagenet-synthetic.npz"
SMALL = {"samples": 3, "gate_rate": 0.3, "seed": 1, "width": 8, "resolution": 64, "num_classes": 10}
DATE = "2026-11-21"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    meta, arrays = build_resnet18(**SMALL, date=DATE)
    path = tmp_path_factory.mktemp("trace") / "small.npz"
    save_trace(path, meta, arrays)
    return load_trace(path)


def conv_int64(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """The functional reference (sim/reference.py) on every image: int64 [N, O, H_out, W_out]."""
    return np.stack([conv2d(image, w, stride, padding) for image in x])


def base_and_full(layer) -> tuple[np.ndarray, np.ndarray]:
    """(p, p + r) of a gated conv with G groups: output group g reads input group g on its base path."""
    x, w = layer.inputs, layer.weights
    g = layer.meta.gate_groups
    c_out, c_in = w.shape[:2]
    mask = np.zeros((c_out, c_in, 1, 1), dtype=bool)
    for i in range(g):
        mask[i * c_out // g : (i + 1) * c_out // g, i * c_in // g : (i + 1) * c_in // g] = True
    s, p = layer.meta.stride, layer.meta.padding
    return conv_int64(x, np.where(mask, w, 0), s, p), conv_int64(x, w, s, p)


def output_of(layer) -> np.ndarray:
    """The int8 output of an engine layer, recomputed: CGNet's rule, + bias, requantize, ReLU, clamp."""
    if layer.meta.kind == "fc":
        acc = layer.inputs.astype(np.int64) @ layer.weights.astype(np.int64).T
        shape = (1, -1)
    elif layer.meta.gated:
        part, full = base_and_full(layer)
        gates = part > layer.thresholds.astype(np.int64)[None, :, None, None]
        acc = np.where(gates, full, part)
        shape = (1, -1, 1, 1)
    else:
        acc = conv_int64(layer.inputs, layer.weights, layer.meta.stride, layer.meta.padding)
        shape = (1, -1, 1, 1)
    value = (acc + layer.bias.astype(np.int64).reshape(shape)).astype(np.float64)
    value = np.rint(value * layer.requant_scale.astype(np.float64).reshape(shape))
    if layer.meta.relu:
        value = np.maximum(value, 0)
    return np.clip(value, -128, 127).astype(np.int8)


def test_small_variant_validates_and_has_resnet18_structure(small):
    assert small.meta.synthetic and small.meta.accuracy == {"float": None, "int8": None, "dense_float": None}
    assert small.meta.gate_agreement is None
    assert small.meta.samples == 3 and small.meta.input_shape == (3, 64, 64)
    kinds = [layer.meta.kind for layer in small]
    assert kinds.count("conv") == 20 and kinds.count("fc") == 1 and kinds.count("add") == 8
    assert kinds[:2] == ["conv", "maxpool"] and kinds[-3:] == ["avgpool", "flatten", "fc"]
    gated = small.gated_layers()
    assert len(gated) == 16
    assert all(
        layer.name.endswith((".conv1", ".conv2")) and layer.name.startswith("layer") for layer in gated
    )
    for name in ("conv1", "layer2.0.downsample", "layer3.0.downsample", "layer4.0.downsample", "fc"):
        assert not small[name].meta.gated
    assert [small[f"layer{i}.0.conv1"].meta.c_out for i in range(1, 5)] == [8, 16, 32, 64]
    assert small["conv1"].meta.kernel == 7 and small["conv1"].meta.stride == 2
    assert small["layer2.0.downsample"].meta.kernel == 1 and small["layer2.0.downsample"].meta.stride == 2
    assert small["fc"].meta.c_out == 10 and small["fc"].meta.c_in == 64
    for layer in gated:
        assert layer.meta.gate_groups == 2 and layer.meta.json["base"] == "groups"
    made = small.meta.made_by
    assert made["seed"] == 1 and made["date"] == DATE
    assert made["command"] == command_line("traces/resnet18-imagenet-synthetic.npz", **SMALL)
    assert "--width 8 --resolution 64 --num-classes 10" in made["command"]
    dense = sum(layer.meta.flops.dense for layer in small.engine_layers())
    gated_flops = sum(layer.meta.flops.gated for layer in small.engine_layers())
    assert small.meta.flops == Flops(dense=dense, gated=gated_flops) and gated_flops < dense


def test_gate_on_fraction_near_the_requested_rate(small):
    for layer in small.gated_layers():
        fraction = float(layer.gates.mean())
        assert layer.meta.gate_on_fraction == pytest.approx(fraction)
        assert abs(fraction - SMALL["gate_rate"]) < 0.05, layer.name
        # per output channel too (each channel has its own threshold)
        per_channel = layer.gates.mean(axis=(0, 2, 3))
        assert np.all(np.abs(per_channel - SMALL["gate_rate"]) <= 0.15), layer.name


def test_stored_gates_are_the_integer_gates(small):
    for layer in small.gated_layers():
        part, _ = base_and_full(layer)
        expected = part > layer.thresholds.astype(np.int64)[None, :, None, None]
        np.testing.assert_array_equal(layer.gates, expected, err_msg=layer.name)


def test_layer_inputs_follow_from_the_previous_layers(small):
    t = small
    # conv -> conv, inside a block (gated conv1 with ReLU feeds gated conv2)
    for stage in range(1, 5):
        for block in range(2):
            pre = f"layer{stage}.{block}"
            np.testing.assert_array_equal(t[f"{pre}.conv2"].inputs, output_of(t[f"{pre}.conv1"]), err_msg=pre)
    # stem: conv1 (ReLU) -> maxpool 3x3/2 (pads read as -128, i.e. ignored) -> layer1.0.conv1
    y = output_of(t["conv1"])
    yp = np.pad(y, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-128)
    h_out = t["maxpool"].meta.h_out
    pooled = np.full((y.shape[0], y.shape[1], h_out, h_out), -128, dtype=np.int8)
    for ky in range(3):
        for kx in range(3):
            pooled = np.maximum(pooled, yp[:, :, ky : ky + 2 * h_out : 2, kx : kx + 2 * h_out : 2])
    np.testing.assert_array_equal(t["layer1.0.conv1"].inputs, pooled)
    # residual add with a downsample shortcut: saturate, ReLU -> next block's conv1
    for stage in (2, 3, 4):
        a = output_of(t[f"layer{stage}.0.conv2"]).astype(np.int64)
        b = output_of(t[f"layer{stage}.0.downsample"]).astype(np.int64)
        added = np.maximum(np.clip(a + b, -128, 127), 0)
        np.testing.assert_array_equal(t[f"layer{stage}.1.conv1"].inputs, added)
    # identity shortcut: layer1.0's input plus layer1.0.conv2's output -> layer1.1.conv1
    a = output_of(t["layer1.0.conv2"]).astype(np.int64)
    added = np.maximum(np.clip(a + t["layer1.0.conv1"].inputs, -128, 127), 0)
    np.testing.assert_array_equal(t["layer1.1.conv1"].inputs, added)
    # the last add -> global average pool (round half to even) -> flatten -> fc
    last = np.maximum(
        np.clip(output_of(t["layer4.1.conv2"]).astype(np.int64) + t["layer4.1.conv1"].inputs, -128, 127), 0
    )
    mean = np.rint(last.sum(axis=(2, 3)) / (last.shape[2] * last.shape[3]))
    np.testing.assert_array_equal(t["fc"].inputs, mean.astype(np.int8))
    # the first conv reads the synthetic images
    assert t["conv1"].inputs.shape == (3, 3, 64, 64)


def test_outputs_use_the_int8_range(small):
    for layer in small.engine_layers():
        if layer.meta.kind == "fc":
            continue
        y = output_of(layer)
        assert y.max() >= 60, layer.name  # calibrated, not squashed towards 0
        # the 0.999 quantile of each channel maps to 127: few values clip (ties and tiny channels aside)
        per_channel = y.size // y.shape[1]
        clipped = np.mean(np.abs(y.astype(int)) >= 127)
        assert clipped <= max(0.005, 4 / per_channel), layer.name
        assert 0.2 < np.mean(y > 0) < 0.8, layer.name
    np.testing.assert_array_equal(small["conv1"].weight_scale, small["conv1"].requant_scale)
    assert all(np.abs(layer.weights.astype(int)).max() == 127 for layer in small.engine_layers())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    paths = []
    for i, seed in enumerate((SMALL["seed"], SMALL["seed"], SMALL["seed"] + 1)):
        meta, arrays = build_resnet18(**{**SMALL, "seed": seed}, date=DATE)
        path = tmp_path / f"t{i}.npz"
        save_trace(path, meta, arrays)
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    a, c = load_trace(paths[0]), load_trace(paths[2])
    assert not np.array_equal(a["layer1.0.conv1"].weights, c["layer1.0.conv1"].weights)
    assert not np.array_equal(a["conv1"].inputs, c["conv1"].inputs)


def test_gate_rate_parameter(tmp_path):
    meta, arrays = build_resnet18(**{**SMALL, "gate_rate": 0.6, "samples": 2}, date=DATE)
    trace = validate_trace(_keys(meta, arrays), source="mem")
    fractions = [layer.meta.gate_on_fraction for layer in trace.gated_layers()]
    assert all(abs(f - 0.6) < 0.06 for f in fractions)


def _keys(meta, arrays):
    keys = {"format": np.array("cgnet-trace"), "version": np.array(1), "meta": np.array(json.dumps(meta))}
    for layer, named in arrays.items():
        for name, value in named.items():
            keys[f"layer/{layer}/{name}"] = value
    return keys


@pytest.mark.parametrize(
    "override, piece",
    [({"width": 7}, "width = 7"), ({"resolution": 16}, "resolution = 16"), ({"gate_rate": 1.5}, "gate_rate")],
)
def test_bad_arguments(override, piece):
    with pytest.raises(TraceError, match=piece):
        build_resnet18(**{**SMALL, **override})


def test_module_command_line(tmp_path, capsys):
    out = tmp_path / "cli.npz"
    argv = ["--out", str(out), "--samples", "1", "--width", "8", "--resolution", "32", "--num-classes", "5"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "16 gated layers" in printed
    trace = load_trace(out)
    assert trace.meta.made_by["command"] == (
        f"python -m sim.resnet18_synthetic --out {out} --samples 1 --gate-rate 0.3 --seed 0 "
        "--width 8 --resolution 32 --num-classes 5"
    )
    assert main(["--out", str(tmp_path / "no" / "dir" / "x.npz"), "--width", "8", "--resolution", "32"]) == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped ResNet-18 trace is not there")
def test_shipped_trace():
    trace = load_trace(SHIPPED)
    assert trace.name == "resnet18-imagenet-synthetic" and trace.meta.dataset == "imagenet-shapes"
    assert trace.meta.synthetic and trace.meta.samples == 2 and trace.meta.input_shape == (3, 224, 224)
    assert trace.meta.flops.dense == 1_814_073_344  # ResNet-18's 1.8 GMAC (conv + fc) per image
    assert sum(layer.weights.size for layer in trace.engine_layers()) == 11_678_912  # conv + fc weights
    gated = trace.gated_layers()
    assert len(gated) == 16 and all(abs(layer.meta.gate_on_fraction - 0.3) < 0.01 for layer in gated)
    assert trace["layer4.1.conv2"].gates.shape == (2, 512, 7, 7)
    made = trace.meta.made_by
    # The shipped file records the command of its day: the generator lived in traces/ then
    # (it is sim/resnet18_synthetic.py now; the same command with ``sim.`` rebuilds it).
    assert made["command"] == (
        "python -m traces.resnet18_synthetic --out traces/resnet18-imagenet-synthetic.npz "
        "--samples 2 --gate-rate 0.3 --seed 0"
    )
    assert SHIPPED.stat().st_size < 14_000_000
    # the gates of one layer, recomputed
    layer = trace["layer3.1.conv1"]
    part, _ = base_and_full(layer)
    np.testing.assert_array_equal(layer.gates, part > layer.thresholds.astype(np.int64)[None, :, None, None])
