"""Structured pruning with the polarization regularizer (Zhuang et al., NeurIPS 2020).

* :func:`polarization` — ``R(γ) = t·‖γ‖₁ − ‖γ − γ̄·1‖₁`` over the scale factors ``γ`` of the prunable BN
  layers (all of them concatenated; ``γ̄`` is their mean), added to the loss with weight ``λ``. The prunable
  γ start at 0.5 (:func:`init_polarization`) and are clamped to ``[0, 1]`` after every optimizer step
  (:func:`clamp_gammas`).
* :func:`pruning_threshold` — the histogram rule: ``γ`` binned in 0.01-wide bins over ``[0, 1]``; from the
  first non-empty bin climb to the first peak, then descend to the first local minimum (the first bin after
  the peak whose right neighbour is higher; a run of equal minimum bins counts from its first bin); the
  threshold is that bin's lower edge, and neurons with ``γ`` below it (the peak nearest 0) are removed.
* :func:`prune_resnet` — physical removal: in every BasicBlock the internal channels (``conv1``'s outputs,
  ``bn1``, ``conv2``'s inputs) whose γ falls below the threshold are removed, building a smaller network;
  block outputs keep their width so the residual additions still line up. :func:`mask_resnet` zeroes the
  same channels (γ and β of ``bn1``) in a copy of the unpruned network, which then computes the same
  function (tests check it).

Only the BasicBlocks' ``bn1`` are prunable (the pruning keeps block outputs).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from training.flops import count_flops, flop_totals
from training.resnet import CifarResNet, ModelSpec

__all__ = [
    "BIN_WIDTH",
    "channels_to_keep",
    "clamp_gammas",
    "flop_reduction",
    "init_polarization",
    "mask_resnet",
    "polarization",
    "polarization_loss",
    "prunable_bns",
    "prune_resnet",
    "pruning_threshold",
]

BIN_WIDTH = 0.01


def polarization(gammas: torch.Tensor, t: float) -> torch.Tensor:
    """``t·‖γ‖₁ − ‖γ − mean(γ)‖₁`` of a 1-D tensor (differentiable; ``γ̄`` depends on ``γ`` too)."""
    return t * gammas.abs().sum() - (gammas - gammas.mean()).abs().sum()


def prunable_bns(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """``(block name, bn1)`` of every BasicBlock (the BN after ``conv1``), in order."""
    from training.resnet import BasicBlock

    return [(n, m.bn1) for n, m in model.named_modules() if isinstance(m, BasicBlock)]


def polarization_loss(model: nn.Module, t: float, lam: float) -> torch.Tensor:
    """``λ·R(γ)`` over all prunable BN scales of ``model``."""
    gammas = torch.cat([bn.weight for _, bn in prunable_bns(model)])
    return lam * polarization(gammas, t)


def init_polarization(model: nn.Module, value: float = 0.5) -> None:
    with torch.no_grad():
        for _, bn in prunable_bns(model):
            bn.weight.fill_(value)


def clamp_gammas(model: nn.Module, polarized: bool) -> None:
    """Project BN scales after an optimizer step: prunable ones into ``[0, 1]`` when ``polarized``, every
    BN scale to ``≥ 0`` (so the integer fold never needs a negative requantization scale)."""
    with torch.no_grad():
        prunable = {id(bn) for _, bn in prunable_bns(model)} if polarized else set()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                if id(m) in prunable:
                    m.weight.clamp_(0.0, 1.0)
                else:
                    m.weight.clamp_(min=0.0)


def pruning_threshold(gammas, bin_width: float = BIN_WIDTH) -> float:
    """The threshold below which ``γ`` are pruned (module docstring); 0.0 when there is no valley."""
    g = np.clip(np.asarray(gammas, dtype=np.float64).ravel(), 0.0, 1.0)
    if g.size == 0:
        return 0.0
    n_bins = int(round(1.0 / bin_width))
    idx = np.minimum((g / bin_width).astype(np.int64), n_bins - 1)
    hist = np.bincount(idx, minlength=n_bins)
    nz = np.flatnonzero(hist)
    i = int(nz[0])
    while i + 1 < n_bins and hist[i + 1] >= hist[i]:  # climb to the first peak (through plateaus)
        i += 1
    while i + 1 < n_bins and hist[i + 1] <= hist[i]:  # descend to the bottom of the first valley
        i += 1
    if i + 1 >= n_bins:
        return 0.0  # no rise after the first peak: a single peak, nothing to separate
    j = i
    while j > 0 and hist[j - 1] == hist[i]:  # first bin of a flat valley
        j -= 1
    return j * bin_width


def channels_to_keep(model: nn.Module, threshold: float, multiple_of: int = 1) -> dict[str, list[int]]:
    """Per block, the internal channels to keep: ``γ ≥ threshold``, the count rounded up to a multiple of
    ``multiple_of`` (at least one multiple) by keeping the largest ``γ``; indices in ascending order."""
    keep = {}
    for name, bn in prunable_bns(model):
        gamma = bn.weight.detach().cpu().numpy()
        c = gamma.size
        n = int((gamma >= threshold).sum())
        n = min(c, max(multiple_of, math.ceil(n / multiple_of) * multiple_of))
        order = np.argsort(-gamma, kind="stable")[:n]
        keep[name] = sorted(int(i) for i in order)
    return keep


def mask_resnet(model: CifarResNet, keep: dict[str, list[int]]) -> CifarResNet:
    """A copy of ``model`` with the pruned internal channels zeroed (``bn1``'s γ and β set to 0)."""
    masked = copy.deepcopy(model)
    mods = dict(masked.named_modules())
    with torch.no_grad():
        for name, kept in keep.items():
            bn = mods[name].bn1
            drop = torch.ones(bn.num_features, dtype=torch.bool)
            drop[kept] = False
            bn.weight[drop] = 0.0
            bn.bias[drop] = 0.0
    return masked


def prune_resnet(model: CifarResNet, keep: dict[str, list[int]]) -> CifarResNet:
    """A smaller network without the pruned internal channels (module docstring).

    The new model's spec has ``mid_channels`` set and ``pruned_channels`` (block → removed indices relative
    to the unpruned model, composed with any earlier pruning) recorded.
    """
    if not model.spec.dense:
        raise ValueError("prune_resnet prunes dense networks (gate the pruned network afterwards)")
    spec = ModelSpec.from_dict(copy.deepcopy(model.spec.to_dict()))
    blocks = [n for n, _ in prunable_bns(model)]
    spec.mid_channels = [len(keep[n]) for n in blocks]
    old_pruned = spec.pruned_channels or {}
    new_pruned = {}
    for n in blocks:
        width = model.get_submodule(n).bn1.num_features
        earlier = sorted(old_pruned.get(n, []))
        # indices of the current channels in the original (unpruned) numbering
        original = [i for i in range(width + len(earlier)) if i not in set(earlier)]
        removed_now = [original[i] for i in range(width) if i not in set(keep[n])]
        new_pruned[n] = sorted(earlier + removed_now)
    spec.pruned_channels = new_pruned
    pruned = CifarResNet(spec)
    src = model.state_dict()
    dst = pruned.state_dict()
    block_keep = {n: torch.tensor(keep[n], dtype=torch.long) for n in blocks}
    for key, value in dst.items():
        tensor = src[key]
        for n, idx in block_keep.items():
            rest = key[len(n) + 1 :] if key.startswith(n + ".") else None
            if rest == "conv1.weight" or (rest and rest.startswith("bn1.") and tensor.ndim == 1):
                tensor = tensor[idx]
            elif rest == "conv2.weight":
                tensor = tensor[:, idx]
        if tensor.shape != value.shape:
            raise ValueError(f"pruning {key}: shape {tuple(tensor.shape)} does not fit {tuple(value.shape)}")
        dst[key] = tensor.clone()
    pruned.load_state_dict(dst)
    return pruned


def flop_reduction(unpruned: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...]) -> float:
    """``1 − FLOPs(pruned)/FLOPs(unpruned)``, dense counts."""
    d0, _ = flop_totals(count_flops(unpruned, input_shape))
    d1, _ = flop_totals(count_flops(pruned, input_shape))
    return 1.0 - d1 / d0
