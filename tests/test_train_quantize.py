"""int8 quantization, the integer gate threshold fold (traces/quantize.py) and the tiny end-to-end
train → export → validate runs through the command line (accel train, accel trace export)."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install '.[train]')")
pytest.importorskip("sklearn", reason="the digits set comes with scikit-learn (the train extra)")

import torch.nn.functional as F  # noqa: E402

from accel.cli import main  # noqa: E402
from trace_format import load_trace, requantize  # noqa: E402
from training.gating import GatedConv2d  # noqa: E402
from training.quantize import _fold_affine, fold_gate_threshold, quantize_weights  # noqa: E402

# --------------------------------------------------------------------------------------------------------
# The threshold fold


def _float_gate(p_int, mean, sigma, delta, s_x, s_w):
    """The float model's decision BN_g(p) > Δ on the partial sum computed from the same integers."""
    return (p_int * s_x * s_w - mean) / sigma > delta


def test_threshold_fold_integer_boundary():
    # s_x = 2^-4, s_w = 2^-6, σ = 2 (var 4, eps 0), μ = 3.5, Δ = 0.25: v = (3.5 + 0.5) / 2^-10 = 4096 exactly
    tau = fold_gate_threshold(
        np.array([3.5]), np.array([4.0]), 0.0, np.array([0.25]), 2.0**-4, np.array([2.0**-6])
    )
    assert tau.tolist() == [4096]
    for p in (4094, 4095, 4096, 4097, 4098):
        assert (p > tau[0]) == _float_gate(p, 3.5, 2.0, 0.25, 2.0**-4, 2.0**-6)
    assert not (4096 > tau[0]) and 4097 > tau[0]  # at v itself the gate is off (strict inequality)
    # v not an integer: v = 4096.5 -> τ = 4096 (= ceil(v) - 1); p = 4096 is below v, p = 4097 above
    tau = fold_gate_threshold(
        np.array([3.5 + 2.0**-11]), np.array([4.0]), 0.0, np.array([0.25]), 2.0**-4, np.array([2.0**-6])
    )
    assert tau.tolist() == [4096]
    # negative v: floor rounds toward -inf (v = -4095.5 -> τ = -4096, and p = -4096 > v is on)
    tau = fold_gate_threshold(
        np.array([-4.0 + 2.0**-11]), np.array([4.0]), 0.0, np.array([0.0]), 2.0**-4, np.array([2.0**-6])
    )
    assert tau.tolist() == [-4096]
    assert _float_gate(-4095, -4.0 + 2.0**-11, 2.0, 0.0, 2.0**-4, 2.0**-6) and not _float_gate(
        -4096, -4.0 + 2.0**-11, 2.0, 0.0, 2.0**-4, 2.0**-6
    )


def test_threshold_fold_equals_float_gates_on_dyadic_cases():
    """Dyadic μ, Δ, σ and scales: every float operation is exact, boundaries are hit exactly."""
    rng = np.random.default_rng(0)
    c = 64
    mean = rng.integers(-2000, 2000, c) / 256.0
    sigma = 2.0 ** rng.integers(-3, 4, c)
    var = sigma**2
    delta = rng.integers(-512, 512, c) / 256.0
    s_x = 2.0**-5
    s_w = (2.0 ** rng.integers(-9, -5, c)).astype(np.float32)
    tau = fold_gate_threshold(mean, var, 0.0, delta, s_x, s_w)
    for ch in range(c):
        v = (mean[ch] + delta[ch] * sigma[ch]) / (s_x * float(s_w[ch]))
        for p in range(int(math.floor(v)) - 40, int(math.floor(v)) + 40):
            assert (p > tau[ch]) == _float_gate(p, mean[ch], sigma[ch], delta[ch], s_x, float(s_w[ch])), (
                ch,
                p,
            )


def test_threshold_fold_against_exact_rationals():
    """Arbitrary float parameters: p > τ is exactly p·s_x·s_w > μ + Δ·σ in rational arithmetic."""
    rng = np.random.default_rng(1)
    c = 200
    mean = rng.normal(0, 3, c)
    var = rng.uniform(0.01, 20, c)
    eps = 1e-5
    delta = rng.normal(0, 1.5, c)
    s_x = float(np.float32(0.0123))
    s_w = rng.uniform(1e-4, 1e-2, c).astype(np.float32)
    tau = fold_gate_threshold(mean, var, eps, delta, s_x, s_w)
    sigma = np.sqrt(var + eps)
    for ch in range(c):
        rhs = Fraction(mean[ch]) + Fraction(delta[ch]) * Fraction(sigma[ch])
        step = Fraction(s_x) * Fraction(float(s_w[ch]))
        for p in range(int(tau[ch]) - 30, int(tau[ch]) + 30):
            assert (p > tau[ch]) == (p * step > rhs), (ch, p)


def test_integer_gates_equal_the_modules_float_gates():
    """A GatedConv2d whose weights and inputs are exact multiples of the int8 scales: its float gates equal
    the integer gates p_int > τ at every activation, including partial sums that sit exactly on the
    threshold (μ is set to partial sums that occur)."""
    torch.manual_seed(0)
    c_in, c_out = 8, 6
    m = GatedConv2d(c_in, c_out, 3, 1, 1, gate_groups=2, target=0.0)
    m.eval()
    rng = np.random.default_rng(2)
    w_int = rng.integers(-127, 128, (c_out, c_in, 3, 3))
    w_int[:, 0, 0, 0] = 127  # max |W| = 127 in every channel: s_w = 2^-6 exactly
    x_int = rng.integers(0, 128, (2, c_in, 6, 6))
    s_w, s_x = 2.0**-6, 2.0**-4
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(w_int * s_w))
    q, scale = quantize_weights(m.weight.detach().double().numpy())
    assert np.array_equal(q, w_int) and np.all(scale == np.float32(s_w))
    mask = m.base_mask.numpy()[:, :, None, None]
    p_int = F.conv2d(torch.from_numpy(x_int * 1.0), torch.from_numpy(w_int * mask), None, 1, 1).numpy()
    with torch.no_grad():
        m.bn_gate.eps = 0.0
        m.bn_gate.running_var.fill_(4.0)
        # μ: a partial sum that occurs in each channel, so gates sit exactly on the boundary there
        m.bn_gate.running_mean.copy_(torch.from_numpy(p_int[0, :, 2, 3] * s_x * s_w))
        m.threshold.copy_(torch.tensor([0.0, 0.0, 0.5, -0.25, 1.0, 0.0]))
    m.record_gates = True
    with torch.no_grad():
        m(torch.from_numpy(x_int * s_x).float())
    tau = fold_gate_threshold(
        m.bn_gate.running_mean.double().numpy(),
        m.bn_gate.running_var.double().numpy(),
        0.0,
        m.threshold.detach().double().numpy(),
        s_x,
        scale,
    )
    int_gates = p_int > tau[None, :, None, None]
    assert np.array_equal(int_gates, m.last_gates.numpy())
    assert not int_gates[0, 0, 2, 3]  # exactly on the threshold: off in both


def test_weight_quantization_and_degenerate_bn():
    w = np.array([[1.0, -0.5], [0.0, 0.0], [0.01, 0.02]])
    q, s = quantize_weights(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and np.all(s > 0)
    assert q[0].tolist() == [127, -64] and q[1].tolist() == [0, 0] and q[2, 1] == 127
    # a_c = 0 (BN scale 0): requant must stay positive and the bias inside int32
    bias, requant, degenerate = _fold_affine(
        np.array([1.0, 0.0, -1.0]), np.array([0.5, 3.0, 0.0]), 0.01, np.ones(3, np.float32), 0.05
    )
    assert degenerate == 2 and np.all(requant > 0) and bias.dtype == np.int32
    assert abs(float(bias[1]) * float(requant[1]) - 3.0 / 0.05) < 1.0  # output ≈ the constant b / s_out


# --------------------------------------------------------------------------------------------------------
# End to end: accel train -> accel trace export -> load_trace, and the trace reproduces itself


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


TINY = ["--model", "resnet8", "--width", "0.5", "--epochs", "1", "--max-batches", "2", "--batch-size", "16"]
TINY += ["--max-test", "24", "--no-progress", "--seed", "3"]


def _engine_output(layer, x: np.ndarray) -> np.ndarray:
    """int8 output of an engine layer from the trace's own integers (docs/trace-format.md)."""
    w = layer.weights.astype(np.float64)
    xt = torch.from_numpy(x.astype(np.float64))
    if layer.meta.kind == "fc":
        acc = (xt @ torch.from_numpy(w).T).numpy()
    elif layer.meta.gated:
        mask = np.zeros(w.shape[:2])
        if layer.meta.base_channels == 0:  # base "groups"
            g = layer.meta.gate_groups
            og, cg = w.shape[0] // g, w.shape[1] // g
            for i in range(g):
                mask[i * og : (i + 1) * og, i * cg : (i + 1) * cg] = 1
        else:
            mask[:, : layer.meta.base_channels] = 1
        mask = mask[:, :, None, None]
        p = F.conv2d(xt, torch.from_numpy(w * mask), None, layer.meta.stride, layer.meta.padding).numpy()
        r = F.conv2d(
            xt, torch.from_numpy(w * (1 - mask)), None, layer.meta.stride, layer.meta.padding
        ).numpy()
        acc = p + (p > layer.thresholds.astype(np.int64)[None, :, None, None]) * r
    else:
        acc = F.conv2d(xt, torch.from_numpy(w), None, layer.meta.stride, layer.meta.padding).numpy()
    y = requantize(np.rint(acc).astype(np.int64), layer.bias, layer.requant_scale, layer.meta.relu)
    if layer.meta.shuffle:
        n, c, h, wd = y.shape
        g = layer.meta.gate_groups
        y = y.reshape(n, g, c // g, h, wd).transpose(0, 2, 1, 3, 4).reshape(n, c, h, wd)
    return y


def _replay(trace) -> int:
    """Run the network from the stem's stored inputs using only the trace; every engine layer's computed
    inputs must equal its stored inputs. Returns the number of engine layers checked."""
    first = trace.engine_layers()[0]
    acts = {"input": first.inputs.astype(np.int64)}
    scales = {"input": float(first.input_scale)}
    checked = 0
    for layer in trace:
        a = acts[layer.meta.sources[0]]
        if layer.meta.is_engine_layer:
            assert np.array_equal(layer.inputs, a.astype(np.int8).reshape(layer.inputs.shape)), layer.name
            assert float(layer.input_scale) == scales[layer.meta.sources[0]], layer.name
            y, s = _engine_output(layer, layer.inputs).astype(np.int64), float(layer.output_scale)
            checked += 1
        elif layer.meta.kind == "add":  # docs/trace-format.md: the inputs share one scale, a plain int8 sum
            s = scales[layer.meta.sources[0]]
            assert (
                all(scales[src] == s for src in layer.meta.sources) and layer.meta.json["output_scale"] == s
            )
            y = np.clip(sum(acts[src] for src in layer.meta.sources), -128, 127)
            if layer.meta.relu:
                y = np.maximum(y, 0)
        elif layer.meta.kind == "relu":
            y, s = np.maximum(a, 0), scales[layer.meta.sources[0]]
        elif layer.meta.kind == "avgpool":  # rint(sum / count), the scale kept
            s = scales[layer.meta.sources[0]]
            k = layer.meta.kernel
            n, c, h, w = a.shape
            sums = a.reshape(n, c, h // k, k, w // k, k).sum(axis=(3, 5))
            y = np.rint(sums / (k * k)).astype(np.int64)
        elif layer.meta.kind == "flatten":
            y, s = a.reshape(a.shape[0], -1), scales[layer.meta.sources[0]]
        else:
            raise AssertionError(f"unexpected layer kind {layer.meta.kind}")
        acts[layer.name], scales[layer.name] = y, s
    return checked


def _check_report(trace, gated: bool) -> None:
    meta = trace.meta.json
    assert 0.0 <= meta["accuracy"]["float"] <= 1.0 and 0.0 <= meta["accuracy"]["int8"] <= 1.0
    assert 0.9 <= meta["gate_agreement"] <= 1.0
    assert "accel train" in meta["made_by"]["command"] and "accel trace export" in meta["made_by"]["command"]
    assert "--seed 3" in meta["made_by"]["command"] and meta["made_by"]["seed"] == 3
    kinds = [layer.meta.kind for layer in trace]
    assert {"conv", "fc", "add", "relu", "avgpool", "flatten"} <= set(kinds)
    if gated:
        assert [e["threshold"] for e in meta["channel_pruning"]] == [0.0, 0.05, 0.1, 0.2]
        assert trace.gated_layers()
        assert meta["flops"]["gated"] < meta["flops"]["dense"]
        for layer in trace.gated_layers():
            # the float model's gates and the engine's integer gates on the same samples mostly agree
            p_gates = _engine_gates(layer)
            assert (p_gates == layer.gates).mean() > 0.9


def _engine_gates(layer) -> np.ndarray:
    w = layer.weights.astype(np.float64)
    mask = np.zeros(w.shape[:2])
    g = layer.meta.gate_groups
    og, cg = w.shape[0] // g, w.shape[1] // g
    for i in range(g):
        mask[i * og : (i + 1) * og, i * cg : (i + 1) * cg] = 1
    xt = torch.from_numpy(layer.inputs.astype(np.float64))
    p = F.conv2d(
        xt, torch.from_numpy(w * mask[:, :, None, None]), None, layer.meta.stride, layer.meta.padding
    ).numpy()
    return p > layer.thresholds[None, :, None, None]


def test_train_export_validate_gated(tmp_path, capsys):
    run = tmp_path / "run"
    out = _cli(capsys, "train", *TINY, "--gating-groups", "2", "--target", "0.5", "--out", run)
    assert "accuracy" in out
    config = json.loads((run / "config.json").read_text())
    assert (
        config["command"].startswith("accel train --model resnet8")
        and "--gating-groups" not in config["command"]
    )
    assert "--target 0.5" in config["command"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["gate_rates"]) and metrics["flops"]["gated"] < metrics["flops"]["dense"]

    path = tmp_path / "tiny.npz"
    _cli(
        capsys,
        "trace",
        "export",
        run,
        "--out",
        path,
        "--samples",
        "2",
        "--calibration",
        "32",
        "--no-progress",
    )
    trace = load_trace(path)
    assert trace.meta.samples == 2 and trace.name == "cgnet-resnet8-digits-32"
    assert trace.engine_layers()[0].inputs.shape == (2, 3, 32, 32)
    _check_report(trace, gated=True)
    assert _replay(trace) == len(trace.engine_layers())

    info = _cli(capsys, "trace", "info", path)
    assert "cgnet-resnet8-digits-32" in info

    # a run that builds on this one must use the same train/test split (else test images leak)
    code = main(
        [*map(str, ["train", *TINY, "--split-seed", "1", "--init-from", run, "--out", tmp_path / "x"])]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "split seed" in err and "Traceback" not in err


def test_prune_then_gate_export(tmp_path, capsys):
    pruned = tmp_path / "pruned"
    search = [
        "--search-epochs",
        "1",
        "--max-trials",
        "2",
        "--finetune-epochs",
        "1",
        "--prune-multiple-of",
        "2",
    ]
    out = _cli(
        capsys, "train", *TINY, "--prune-target", "0.3", *search, "--prune-lam0", "0.5", "--out", pruned
    )
    assert "Algorithm 1" in out
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert 1 <= len(metrics["prune_search"]["trials"]) <= 2
    assert all(m % 2 == 0 for m in metrics["mid_channels"])
    config = json.loads((pruned / "config.json").read_text())
    assert config["spec"]["gate_groups"] == 0 and "--prune-target 0.3" in config["command"]

    gated = tmp_path / "gated"
    _cli(capsys, "train", *TINY, "--gating-groups", "2", "--init-from", pruned, "--out", gated)
    gconfig = json.loads((gated / "config.json").read_text())
    assert gconfig["spec"]["mid_channels"] == metrics["mid_channels"]
    assert len(gconfig["commands"]) == 2 and "--prune-target" in gconfig["commands"][0]

    for run, is_gated in ((pruned, False), (gated, True)):
        path = tmp_path / f"{run.name}.npz"
        _cli(
            capsys,
            "trace",
            "export",
            run,
            "--out",
            path,
            "--samples",
            "1",
            "--calibration",
            "16",
            "--no-progress",
        )
        trace = load_trace(path)
        _check_report(trace, gated=is_gated)
        assert _replay(trace) == len(trace.engine_layers())
        conv1 = trace["layer1.0.conv1"]
        removed = metrics["mid_channels"][0]
        assert conv1.meta.c_out == removed and len(conv1.meta.json.get("pruned_channels", [])) == 8 - removed
        if not is_gated:
            assert "channel_pruning" not in trace.meta.json and trace.meta.gate_agreement == 1.0


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["trace", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.npz")])
    _, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and "not a run directory" in err
    code = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])
    _, err = capsys.readouterr()
    assert code == 2 and err.strip().startswith("accel: error:") and "data_batch_1" in err
