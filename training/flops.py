"""FLOP (MAC) counting for the traced networks.

Counted as the polarization paper does: a convolution costs ``k_h·k_w·(C_in/groups)·C_out·H_out·W_out``
multiply-accumulates, a linear layer its number of weights; nothing else (BN, ReLU, pooling, additions) is
counted. A gated convolution costs ``base + r·(dense − base)`` with ``base = dense · base_fraction``
(1/G with G groups, ``C_b/C_in`` with G = 1) and ``r`` the measured fraction of gates on.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.gating import GatedConv2d

__all__ = ["count_flops", "flop_totals"]


def count_flops(
    model: nn.Module, input_shape: tuple[int, ...], gate_rates: dict[str, float] | None = None
) -> dict[str, dict]:
    """Per conv/linear layer (module name, forward order): ``{"dense", "gated", "base", "gated_layer"}``.

    ``gate_rates`` maps gated layer names to their measured gate-on fraction; a gated layer missing from it
    counts as all gates on (``gated == dense``).
    """
    rates = gate_rates or {}
    out: dict[str, dict] = {}
    names = {m: n for n, m in model.named_modules()}
    hooks = []

    def hook(module, inputs, output):
        name = names[module]
        if isinstance(module, GatedConv2d | nn.Conv2d):
            _, c_in_per_group, k_h, k_w = module.weight.shape  # C_in / groups
            _, c_out, h_out, w_out = output.shape
            dense = k_h * k_w * c_in_per_group * c_out * h_out * w_out
        else:  # nn.Linear
            dense = module.in_features * module.out_features
        gated_layer = isinstance(module, GatedConv2d) and module.gated
        if gated_layer:
            base = dense * module.base_fraction()
            r = rates.get(name, 1.0)
            r = 1.0 if r is None or (isinstance(r, float) and math.isnan(r)) else r
            gated = base + r * (dense - base)
        else:
            base, gated = dense, dense
        out[name] = {
            "dense": int(dense),
            "gated": float(gated),
            "base": float(base),
            "gated_layer": gated_layer,
        }

    for m in model.modules():
        if isinstance(m, GatedConv2d | nn.Conv2d | nn.Linear):
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out


def flop_totals(per_layer: dict[str, dict]) -> tuple[int, float]:
    """``(dense, gated)`` sums of :func:`count_flops`' per-layer counts."""
    dense = sum(v["dense"] for v in per_layer.values())
    gated = sum(v["gated"] for v in per_layer.values())
    return dense, gated
