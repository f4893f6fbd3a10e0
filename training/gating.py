"""The channel-gated convolution of CGNet (NeurIPS 2019) in PyTorch, and the model-level helpers around it.

:class:`GatedConv2d` holds the full weights ``W [C_out, C_in, K, K]`` of a convolution and splits each
output channel's input channels into a **base path** and a **conditional path**:

* ``gate_groups`` G > 1 (channel grouping): output group ``i`` (channels ``[i·C_out/G, (i+1)·C_out/G)``)
  uses input group ``i`` as its base path (a grouped convolution, 1/G of the inputs) and the other G − 1
  groups as its conditional path;
* G = 1: every output channel's base path is the first ``base_channels`` input channels.

Forward (training and inference alike)::

    p = W_p * x_p                               # partial sum, every output activation
    s = BN_g(p) − Δ_c                           # BN_g: BatchNorm2d without affine parameters
    d = [s > 0]  (forward);  ∂d/∂s = α·σ(αs)(1 − σ(αs))  (backward, α = 2: straight-through estimator)
    y = p + d ⊙ (W_r * x_r)                     # gated-off activations keep their partial sum
    y = shuffle(y)                              # optional channel shuffle (G groups)

The block around it applies BN and ReLU. ``Δ`` (``threshold``, one per output channel) is learned and
pulled toward the target ``T`` by :func:`gate_penalty`, ``λ_g·Σ(Δ − T)²`` with ``λ_g = 1e-4``; it starts at
``T``. With ``dense=True`` the layer is a plain convolution (the dense baseline, and the form that
polarization pruning trains).

Gate statistics: inside :func:`collect_gate_stats` every gated layer counts its gated-on activations;
:func:`gate_rates` reads the fractions.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Add",
    "GatedConv2d",
    "LAMBDA_G",
    "channel_shuffle",
    "collect_gate_stats",
    "gate_penalty",
    "gate_rates",
    "gated_layers",
    "set_gate_target",
    "shuffle_permutation",
]

LAMBDA_G = 1e-4
ALPHA = 2.0


def shuffle_permutation(channels: int, groups: int) -> list[int]:
    """``perm`` with ``shuffle(y)[:, j] = y[:, perm[j]]`` for the channel shuffle of ``groups`` groups."""
    per = channels // groups
    return [(j % groups) * per + j // groups for j in range(channels)]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: ``[N, G·m, H, W]`` viewed as ``[N, G, m, H, W]``, transposed."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _StepSTE(torch.autograd.Function):
    """``[s > 0]`` forward; the derivative of ``sigmoid(α·s)`` backward."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(s)
        ctx.alpha = alpha
        return (s > 0).to(s.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (s,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.alpha * s)
        return grad * ctx.alpha * sig * (1.0 - sig), None


class Add(nn.Module):
    """Residual addition as a module, so that forward hooks see it (exported as a metadata-only layer)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class GatedConv2d(nn.Module):
    """A channel-gated convolution (module docstring); no bias (a BN follows)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        gate_groups: int = 1,
        base_channels: int | None = None,
        target: float = 0.0,
        shuffle: bool = False,
        alpha: float = ALPHA,
        dense: bool = False,
    ) -> None:
        super().__init__()
        if gate_groups < 1:
            raise ValueError(f"gate_groups = {gate_groups}: must be at least 1")
        if not dense and gate_groups > 1 and (in_channels % gate_groups or out_channels % gate_groups):
            raise ValueError(
                f"gated conv {in_channels}->{out_channels}: channels not divisible by "
                f"gate_groups = {gate_groups}"
            )
        if base_channels is None:
            base_channels = max(1, in_channels // 2)
        if not dense and gate_groups == 1 and not 1 <= base_channels < in_channels:
            raise ValueError(f"base_channels = {base_channels}: must lie in [1, {in_channels - 1}]")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.gate_groups = gate_groups
        self.base_channels = base_channels if gate_groups == 1 else in_channels // gate_groups
        self.target = float(target)
        self.shuffle = bool(shuffle) and not dense and gate_groups > 1
        self.alpha = float(alpha)
        self.dense = bool(dense)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if not self.dense:
            self.bn_gate = nn.BatchNorm2d(out_channels, affine=False)
            self.threshold = nn.Parameter(torch.full((out_channels,), float(target)))
            self.register_buffer("base_mask", self._make_base_mask(), persistent=False)
        self._stats: list[float] | None = None
        self.last_gates: torch.Tensor | None = None
        self.record_gates = False

    def _make_base_mask(self) -> torch.Tensor:
        mask = torch.zeros(self.out_channels, self.in_channels)
        if self.gate_groups > 1:
            cg, og = self.in_channels // self.gate_groups, self.out_channels // self.gate_groups
            for g in range(self.gate_groups):
                mask[g * og : (g + 1) * og, g * cg : (g + 1) * cg] = 1.0
        else:
            mask[:, : self.base_channels] = 1.0
        return mask

    @property
    def gated(self) -> bool:
        return not self.dense

    def base_fraction(self) -> float:
        """Fraction of the dense MACs that the base path computes."""
        if self.dense:
            return 1.0
        if self.gate_groups > 1:
            return 1.0 / self.gate_groups
        return self.base_channels / self.in_channels

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}"
        )
        if self.dense:
            return s + ", dense"
        return (
            s
            + f", gate_groups={self.gate_groups}, base_channels={self.base_channels}, shuffle={self.shuffle}"
        )

    def _conv(self, x: torch.Tensor, w: torch.Tensor, groups: int = 1) -> torch.Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, 1, groups)

    def base_weight(self) -> torch.Tensor:
        """The base-path weights as a grouped-conv weight (G > 1) or the first ``base_channels`` (G = 1)."""
        if self.gate_groups > 1:
            cg, og = self.in_channels // self.gate_groups, self.out_channels // self.gate_groups
            parts = [
                self.weight[g * og : (g + 1) * og, g * cg : (g + 1) * cg] for g in range(self.gate_groups)
            ]
            return torch.cat(parts, 0)
        return self.weight[:, : self.base_channels]

    def _masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.base_mask[:, :, None, None].to(self.weight.dtype)
        return base, 1.0 - base

    def partial_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``p = W_p * x_p`` (computed as a convolution with the conditional weights zeroed)."""
        return self._conv(x, self.weight * self._masks()[0])

    def conditional_sum(self, x: torch.Tensor) -> torch.Tensor:
        """``W_r * x_r``."""
        return self._conv(x, self.weight * self._masks()[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return self._conv(x, self.weight)
        # Both paths in one convolution with 2·C_out outputs: masked full-size weights are much faster on
        # CPU than a grouped convolution's backward pass, and give the same sums.
        base, cond = self._masks()
        both = self._conv(x, torch.cat([self.weight * base, self.weight * cond], 0))
        p, r = both[:, : self.out_channels], both[:, self.out_channels :]
        s = self.bn_gate(p) - self.threshold.view(1, -1, 1, 1)
        d = _StepSTE.apply(s, self.alpha)
        if self._stats is not None:
            with torch.no_grad():
                self._stats[0] += float(d.sum())
                self._stats[1] += d.numel()
        if self.record_gates:
            self.last_gates = (d > 0).detach()
        y = p + d * r
        if self.shuffle:
            y = channel_shuffle(y, self.gate_groups)
        return y


def gated_layers(model: nn.Module) -> list[tuple[str, GatedConv2d]]:
    """The gated (not dense) :class:`GatedConv2d` modules of ``model``, in registration order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GatedConv2d) and m.gated]


def gate_penalty(model: nn.Module, lam: float = LAMBDA_G) -> torch.Tensor:
    """``λ_g · Σ_layers Σ_c (Δ_c − T)²``, zero for a model without gated layers."""
    total = None
    for _, m in gated_layers(model):
        term = ((m.threshold - m.target) ** 2).sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return lam * total


def set_gate_target(model: nn.Module, target: float, reset_thresholds: bool = True) -> None:
    """Set every gated layer's target ``T`` (and, by default, its thresholds ``Δ`` to ``T``)."""
    for _, m in gated_layers(model):
        m.target = float(target)
        if reset_thresholds:
            with torch.no_grad():
                m.threshold.fill_(float(target))


@contextlib.contextmanager
def collect_gate_stats(model: nn.Module):
    """Count gated-on activations of every gated layer while the block runs; see :func:`gate_rates`."""
    layers = gated_layers(model)
    for _, m in layers:
        m._stats = [0.0, 0]
    try:
        yield
    finally:
        for _, m in layers:
            m._final_stats = tuple(m._stats) if m._stats is not None else (0.0, 0)
            m._stats = None


def gate_rates(model: nn.Module) -> dict[str, float]:
    """Per gated layer, the fraction of gates on counted in the last :func:`collect_gate_stats` block."""
    out = {}
    for name, m in gated_layers(model):
        on, total = getattr(m, "_final_stats", (0.0, 0))
        out[name] = on / total if total else math.nan
    return out
