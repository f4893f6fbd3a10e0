"""Polarization regularizer, pruning-threshold rule, physical pruning (traces/polarization.py) and the
searches (traces/search.py): Algorithm 1 and the gating-target search on stand-in trainers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.search import algorithm1, search_gate_target

# --------------------------------------------------------------------------------------------------------
# Algorithm 1 and the gate-target search (pure Python: no torch needed)


def _stand_in(calls):
    """F grows with log2(λ) (0.13 per doubling) and with t (0.25 per unit): monotone in both."""

    def trial(t, lam):
        calls.append((t, lam))
        return 0.02 + 0.13 * math.log2(lam / 1e-4) + 0.25 * (t - 1.2)

    return trial


def test_algorithm1_coarse_then_fine():
    calls = []
    res = algorithm1(_stand_in(calls), target=0.5, delta=0.05)
    assert res.converged
    # init F = 0.02; doubling λ: 0.15, 0.28, 0.41 (|F - F*| = 0.09 < 2δ ends the coarse search);
    # then t + 0.1 twice: 0.435, 0.46 (|F - F*| = 0.04 < δ).
    assert [round(lam / 1e-4) for _, lam in calls] == [1, 2, 4, 8, 8, 8]
    assert [round(t, 6) for t, _ in calls] == [1.2, 1.2, 1.2, 1.2, 1.3, 1.4]
    assert res.n_trials == 6 == len(calls)
    assert [tr.stage for tr in res.trials] == ["init", "coarse", "coarse", "coarse", "fine", "fine"]
    assert res.params == {"t": pytest.approx(1.4), "lam": pytest.approx(8e-4)}
    assert abs(res.flop_reduction - 0.5) < 0.05


def test_algorithm1_halves_lambda_and_lowers_t_when_f_too_high():
    calls = []
    res = algorithm1(_stand_in(calls), target=0.3, delta=0.05, lam0=1.6e-3)  # F(init) = 0.54
    assert res.converged and abs(res.flop_reduction - 0.3) < 0.05
    lams = [lam for _, lam in calls]
    assert lams[1] == pytest.approx(8e-4) and lams[2] == pytest.approx(4e-4)  # halved twice: 0.41, 0.28
    assert res.n_trials == 3


def test_algorithm1_gives_up_after_max_trials():
    calls = []

    def step(t, lam):  # no (t, λ) gives F within 2δ of 0.5: the coarse search oscillates
        calls.append((t, lam))
        return 0.0 if lam < 1e-3 else 1.0

    res = algorithm1(step, target=0.5, max_trials=7)
    assert not res.converged and res.n_trials == 7 == len(calls)


def test_gate_target_search_on_stand_in():
    calls = []

    def trial(target):  # more of the FLOPs are removed as T grows
        calls.append(target)
        return 1.0 - 0.5 * math.exp(-target)

    res = search_gate_target(trial, target=0.75, delta=0.02, t0=2.0)
    assert res.converged and abs(res.flop_reduction - 0.75) < 0.02
    assert calls[0] == 2.0 and calls[1] == 1.5  # coarse step down
    assert abs(res.params["T"] - math.log(2)) < 0.1
    assert res.n_trials == len(calls) <= 12


def test_gate_target_search_halves_step_when_it_overshoots():
    calls = []

    def trial(target):
        calls.append(target)
        return min(1.0, max(0.0, 0.3 * target))

    res = search_gate_target(
        trial, target=0.6, delta=0.02, t0=0.0, coarse_step=1.5, fine_step=0.5, max_trials=20
    )
    assert res.converged and abs(res.flop_reduction - 0.6) < 0.02
    # the coarse search stepped 0 -> 1.5 -> 3.0 (overshoot) -> 2.25 (half step back)
    assert calls[:4] == [0.0, 1.5, 3.0, 2.25]


# --------------------------------------------------------------------------------------------------------
# Regularizer, threshold rule, pruning (PyTorch)

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install '.[train]')")

from training.polarization import (  # noqa: E402
    channels_to_keep,
    clamp_gammas,
    flop_reduction,
    init_polarization,
    mask_resnet,
    polarization,
    polarization_loss,
    prunable_bns,
    prune_resnet,
    pruning_threshold,
)
from training.resnet import ModelSpec, build_model  # noqa: E402


def test_regularizer_value_and_gradient():
    gamma = torch.tensor([0.1, 0.2, 0.3, 0.9], dtype=torch.float64, requires_grad=True)
    r = polarization(gamma, t=1.2)
    # 1.2 * 1.5 - (|0.1-0.375| + |0.2-0.375| + |0.3-0.375| + |0.9-0.375|) = 1.8 - 1.05
    assert float(r.detach()) == pytest.approx(0.75)
    r.backward()
    # d/dγ_j: t - sign(γ_j - γ̄) + mean_i sign(γ_i - γ̄) = 1.2 - sign_j - 0.5
    np.testing.assert_allclose(gamma.grad.numpy(), [1.7, 1.7, 1.7, -0.3])

    gamma = torch.tensor([0.1, 0.4, 0.9, 0.6], dtype=torch.float64, requires_grad=True)
    r = polarization(gamma, t=1.2)
    assert float(r.detach()) == pytest.approx(2.4 - 1.0)
    r.backward()
    np.testing.assert_allclose(gamma.grad.numpy(), [2.2, 2.2, 0.2, 0.2])


def test_regularizer_over_a_model_and_clamping():
    model = build_model(ModelSpec(arch="resnet8", width=0.5))
    init_polarization(model)
    gammas = torch.cat([bn.weight for _, bn in prunable_bns(model)])
    assert len(prunable_bns(model)) == 3 and torch.all(gammas == 0.5)
    # all γ equal: R = t·Σγ
    assert float(polarization_loss(model, t=1.2, lam=0.1).detach()) == pytest.approx(
        0.1 * 1.2 * 0.5 * gammas.numel()
    )
    with torch.no_grad():
        model.layer1[0].bn1.weight[0] = 1.7
        model.layer1[0].bn1.weight[1] = -0.3
        model.bn1.weight[0] = -0.2
    clamp_gammas(model, polarized=True)
    gamma = model.layer1[0].bn1.weight.detach()
    assert float(gamma[0]) == 1.0 and float(gamma[1]) == 0.0
    assert float(model.bn1.weight.detach()[0]) == 0.0  # every BN scale stays >= 0


def _gammas(counts):
    """γ values filling 0.01-wide bins with ``counts`` (values at the bin centres)."""
    return np.concatenate([np.full(c, (i + 0.5) / 100) for i, c in enumerate(counts)])


def test_threshold_rule_on_constructed_histograms():
    # peak in bin 0, empty bins, a second peak around 0.6: the valley starts at bin 1
    counts = [30] + [0] * 49 + [5, 10, 20, 10, 5] + [0] * 45
    assert pruning_threshold(_gammas(counts)) == pytest.approx(0.01)
    # the peak nearest 0 sits in bins 2-3 (bins 0-1 empty): leading empty bins are not the minimum
    counts = [0, 0, 12, 7] + [0] * 50 + [9, 9] + [0] * 44
    assert pruning_threshold(_gammas(counts)) == pytest.approx(0.04)
    # valley that is not empty: the minimum bin 2 (3 neurons) is kept
    counts = [20, 10, 3, 5, 8, 12] + [0] * 94
    assert pruning_threshold(_gammas(counts)) == pytest.approx(0.02)
    # a flat valley counts from its first bin
    counts = [20, 4, 4, 4, 9] + [0] * 95
    assert pruning_threshold(_gammas(counts)) == pytest.approx(0.01)
    # one peak only, decreasing to the end: nothing to separate
    assert pruning_threshold(_gammas(list(range(100, 0, -1)))) == 0.0
    # γ = 1.0 falls in the last bin; γ outside [0, 1] is clipped
    assert pruning_threshold(np.array([0.0, 0.0, -0.1, 1.0, 1.2, 0.5])) == pytest.approx(0.01)


def _random_block_gammas(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, bn in prunable_bns(model):
            bn.weight.copy_(torch.rand(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)


def test_pruning_removes_the_right_channels_and_keeps_the_function():
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch="resnet8", width=0.5))
    _random_block_gammas(model)
    model.eval()
    keep = channels_to_keep(model, threshold=0.4)
    for name, bn in prunable_bns(model):
        gamma = bn.weight.detach()
        assert keep[name] == [i for i in range(gamma.numel()) if gamma[i] >= 0.4]
    pruned = prune_resnet(model, keep)
    pruned.eval()
    for (name, bn), block in zip(prunable_bns(model), pruned.blocks(), strict=True):
        assert block.conv1.weight.shape[0] == len(keep[name]) == block.conv2.weight.shape[1]
        assert block.conv2.weight.shape[0] == model.get_submodule(name).conv2.weight.shape[0]  # outputs kept
        torch.testing.assert_close(block.conv1.weight, model.get_submodule(name).conv1.weight[keep[name]])
        removed = [i for i in range(bn.num_features) if i not in keep[name]]
        assert pruned.spec.pruned_channels[name] == removed
    assert pruned.spec.mid_channels == [len(keep[n]) for n, _ in prunable_bns(model)]
    masked = mask_resnet(model, keep)
    masked.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)
    f = flop_reduction(model, pruned, (3, 32, 32))
    assert 0.0 < f < 1.0


def test_pruning_to_multiples_and_repeated_pruning():
    model = build_model(ModelSpec(arch="resnet8", width=0.5))
    _random_block_gammas(model, seed=3)
    keep = channels_to_keep(model, threshold=0.5, multiple_of=4)
    assert all(len(k) % 4 == 0 and len(k) >= 4 for k in keep.values())
    pruned = prune_resnet(model, keep)
    # prune again: the recorded channels stay relative to the original network
    keep2 = {name: [0] for name, _ in prunable_bns(pruned)}
    twice = prune_resnet(pruned, keep2)
    for name in keep:
        first_kept = keep[name]
        assert twice.spec.pruned_channels[name] == sorted(
            set(range(model.get_submodule(name).bn1.num_features)) - {first_kept[0]}
        )
    with pytest.raises(ValueError, match="dense"):
        prune_resnet(build_model(ModelSpec(arch="resnet8", gate_groups=2)), keep)
