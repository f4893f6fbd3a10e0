"""The channel-gated convolution, the ResNets built on it and the FLOP counter (traces/gating.py, resnet.py,
flops.py)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install '.[train]')")

import torch.nn.functional as F  # noqa: E402

from training.flops import count_flops, flop_totals  # noqa: E402
from training.gating import (  # noqa: E402
    GatedConv2d,
    channel_shuffle,
    collect_gate_stats,
    gate_penalty,
    gate_rates,
    shuffle_permutation,
)
from training.resnet import ModelSpec, build_model  # noqa: E402


def _layer(**kw):
    torch.manual_seed(0)
    m = GatedConv2d(8, 12, 3, 1, 1, **kw)
    m.eval()
    return m


def test_grouped_base_path_is_the_grouped_convolution():
    m = _layer(gate_groups=4, target=0.3)
    x = torch.randn(2, 8, 6, 6)
    cg, og = 2, 3
    base_w = torch.cat([m.weight[g * og : (g + 1) * og, g * cg : (g + 1) * cg] for g in range(4)])
    p_ref = F.conv2d(x, base_w, None, 1, 1, 1, 4)
    torch.testing.assert_close(m.partial_sum(x), p_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m.partial_sum(x) + m.conditional_sum(x), F.conv2d(x, m.weight, None, 1, 1))


def test_first_channels_base_path_when_one_group():
    m = _layer(gate_groups=1, base_channels=3)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m.partial_sum(x), F.conv2d(x[:, :3], m.weight[:, :3], None, 1, 1))
    assert m.base_fraction() == 3 / 8


def test_forward_is_p_plus_gated_conditional_sum():
    m = _layer(gate_groups=2, target=0.2, shuffle=True)
    m.record_gates = True
    with torch.no_grad():
        m.bn_gate.running_mean.uniform_(-0.5, 0.5)
        m.bn_gate.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 8, 5, 5)
    y = m(x)
    p, r = m.partial_sum(x), m.conditional_sum(x)
    bn = (p - m.bn_gate.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        m.bn_gate.running_var.view(1, -1, 1, 1) + m.bn_gate.eps
    )
    d = bn > m.threshold.view(1, -1, 1, 1)
    assert torch.equal(m.last_gates, d)
    assert 0 < d.float().mean() < 1
    torch.testing.assert_close(y, channel_shuffle(p + d * r, 2), rtol=1e-5, atol=1e-5)


def test_straight_through_gradient_has_sigmoid_slope_alpha():
    m = _layer(gate_groups=2, target=0.0, shuffle=False)
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        m.threshold.uniform_(-0.5, 0.5)
    m(x).sum().backward()
    with torch.no_grad():
        p, r = m.partial_sum(x), m.conditional_sum(x)
        s = (p - m.bn_gate.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
            m.bn_gate.running_var.view(1, -1, 1, 1) + m.bn_gate.eps
        ) - m.threshold.view(1, -1, 1, 1)
        sig = torch.sigmoid(2.0 * s)
        expected = -(r * 2.0 * sig * (1 - sig)).sum(dim=(0, 2, 3))  # dy/dΔ = −r·α·σ'(αs)
    torch.testing.assert_close(m.threshold.grad, expected, rtol=1e-4, atol=1e-5)


def test_dense_mode_is_a_plain_convolution():
    m = _layer(dense=True)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m(x), F.conv2d(x, m.weight, None, 1, 1))
    assert not hasattr(m, "threshold")


def test_channel_shuffle_permutation():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    perm = shuffle_permutation(12, 3)
    assert channel_shuffle(x, 3).flatten().tolist() == [float(p) for p in perm]
    assert sorted(perm) == list(range(12))


def test_gate_penalty():
    spec = ModelSpec(arch="resnet8", width=0.5, gate_groups=2, target=1.5)
    model = build_model(spec)
    assert float(gate_penalty(model).detach()) == 0.0  # Δ starts at T
    layer = model.layer1[0].conv1
    with torch.no_grad():
        layer.threshold[0] = 2.5
    assert math.isclose(float(gate_penalty(model, lam=1e-4).detach()), 1e-4, rel_tol=1e-6)
    assert float(gate_penalty(build_model(ModelSpec(arch="resnet8"))).detach()) == 0.0


def test_resnet_shapes_and_gated_layers():
    for arch, blocks in (("resnet8", 3), ("resnet20", 9), ("resnet56", 27), ("resnet18", 8)):
        model = build_model(ModelSpec(arch=arch, width=0.25 if arch == "resnet18" else 1.0, gate_groups=2))
        assert len(model.blocks()) == blocks
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        gated = [m for m in model.modules() if isinstance(m, GatedConv2d) and m.gated]
        assert len(gated) == 2 * blocks  # both 3x3 convs of every block; stem and shortcuts dense
        assert model.conv1.dense


def test_flop_counter_dense_and_gated():
    model = build_model(ModelSpec(arch="resnet20"))
    dense, gated = flop_totals(count_flops(model, (3, 32, 32)))
    # ResNet-20 (1x1 conv shortcuts): stem + 3 stages of 3 blocks + 2 shortcuts + fc
    stem = 9 * 3 * 16 * 32 * 32
    stage1 = 6 * 9 * 16 * 16 * 32 * 32
    stage2 = (9 * 16 * 32 + 5 * 9 * 32 * 32) * 16 * 16 + 16 * 32 * 16 * 16
    stage3 = (9 * 32 * 64 + 5 * 9 * 64 * 64) * 8 * 8 + 32 * 64 * 8 * 8
    assert dense == stem + stage1 + stage2 + stage3 + 64 * 10
    assert gated == dense

    g = build_model(ModelSpec(arch="resnet20", gate_groups=4))
    per = count_flops(g, (3, 32, 32), {n: 0.25 for n, m in g.named_modules() if getattr(m, "gated", False)})
    conv = per["layer1.0.conv1"]
    assert conv["gated_layer"] and conv["dense"] == 9 * 16 * 16 * 32 * 32
    assert math.isclose(conv["gated"], conv["dense"] * (1 / 4 + 3 / 4 * 0.25))
    assert per["conv1"]["gated"] == per["conv1"]["dense"]


def test_gate_statistics():
    model = build_model(ModelSpec(arch="resnet8", width=0.5, gate_groups=2, target=0.0))
    model.eval()
    with collect_gate_stats(model):
        model(torch.randn(4, 3, 32, 32))
    rates = gate_rates(model)
    assert len(rates) == 6 and all(0.0 <= r <= 1.0 for r in rates.values())
