"""CIFAR-style ResNets built on :class:`~training.gating.GatedConv2d`.

* ``resnet20`` / ``resnet56``: He et al.'s CIFAR ResNets, 3 stages of 3 / 9 BasicBlocks with 16, 32, 64
  channels, a 3×3 stem (16 channels), global average pooling and one linear layer;
* ``resnet18``: ResNet-18 with the CIFAR stem (3×3 conv, stride 1, no max pooling), 4 stages of 2
  BasicBlocks with 64, 128, 256, 512 channels;
* ``resnet8``: one BasicBlock per stage, 16/32/64 channels (tests and quick runs).

``width`` scales every stage's channel count. Downsampling blocks use a 1×1 convolution + BN shortcut
(option B), so that every layer is a convolution the engine can run, a residual add or a pooling.

Which convolutions are gated (when the spec is not dense): the two 3×3 convolutions of every BasicBlock whose
channel counts the grouping divides. The stem (3 input channels), the 1×1 shortcuts and the classifier stay
dense. ``mid_channels`` (one per block) sets each block's internal width (``conv1``'s outputs and
``conv2``'s inputs), which is what structured pruning shrinks; the block outputs keep the stage width so the
residual additions line up.

Module names (and so the trace's layer names): ``conv1``/``bn1``/``relu`` (stem), ``layer{s}.{b}.conv1``,
``.bn1``, ``.relu1``, ``.conv2``, ``.bn2``, ``.shortcut.0`` (conv) / ``.shortcut.1`` (BN), ``.add``,
``.relu2``, then ``avgpool``, ``flatten``, ``fc``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from training.gating import Add, GatedConv2d

__all__ = ["ARCHS", "MAX_WIDTH", "BasicBlock", "CifarResNet", "ModelSpec", "build_model"]

# name -> (blocks per stage, stage widths, stage strides)
ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "resnet8": ((1, 1, 1), (16, 32, 64), (1, 2, 2)),
    "resnet20": ((3, 3, 3), (16, 32, 64), (1, 2, 2)),
    "resnet56": ((9, 9, 9), (16, 32, 64), (1, 2, 2)),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2)),
}
MAX_WIDTH = 8.0  # channel multipliers above this would build networks far beyond what these runs train
MAX_CLASSES = 10_000
MAX_IN_CHANNELS = 64


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_field(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} = {value!r}: expected {expected}")


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model (stored as JSON in a run directory).

    ``gate_groups`` 0 means dense (plain convolutions everywhere: the dense baseline). ``base_fraction`` is
    the share of input channels in the base path when ``gate_groups`` is 1. ``target`` is the gating target
    ``T``. ``mid_channels`` (one per block, in order) overrides the blocks' internal widths (pruning).
    """

    arch: str = "resnet20"
    num_classes: int = 10
    width: float = 1.0
    gate_groups: int = 0
    base_fraction: float = 0.5
    target: float = 1.0
    shuffle: bool = True
    alpha: float = 2.0
    mid_channels: list[int] | None = None
    in_channels: int = 3
    pruned_channels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def dense(self) -> bool:
        return self.gate_groups == 0

    def stages(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown model {self.arch!r}: expected one of {', '.join(ARCHS)}")
        blocks, widths, strides = ARCHS[self.arch]
        widths = tuple(max(1, int(round(w * self.width))) for w in widths)
        return blocks, widths, strides

    def default_mid_channels(self) -> list[int]:
        blocks, widths, _ = self.stages()
        return [w for n, w in zip(blocks, widths, strict=True) for _ in range(n)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        """The spec stored as ``data`` (unknown keys ignored), every field checked (:meth:`check`)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object with the model's fields, found {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        spec = cls(**{k: v for k, v in data.items() if k in names})
        spec.check()
        return spec

    def check(self) -> None:
        """Refuse a field of the wrong type or outside its range (``ValueError`` naming field and value),
        before a model is built from it (a huge ``width`` would try to allocate terabytes)."""
        _check_field("arch", self.arch, self.arch in ARCHS, f"one of {', '.join(ARCHS)}")
        _check_field(
            "num_classes",
            self.num_classes,
            _is_int(self.num_classes) and 1 <= self.num_classes <= MAX_CLASSES,
            f"an integer in [1, {MAX_CLASSES}]",
        )
        _check_field(
            "width",
            self.width,
            _is_number(self.width) and 0 < self.width <= MAX_WIDTH,
            f"a number in (0, {MAX_WIDTH:g}]",
        )
        _check_field(
            "gate_groups",
            self.gate_groups,
            _is_int(self.gate_groups) and self.gate_groups >= 0,
            "an integer >= 0 (0: dense)",
        )
        _check_field(
            "base_fraction",
            self.base_fraction,
            _is_number(self.base_fraction) and 0 < self.base_fraction < 1,
            "a number in (0, 1)",
        )
        _check_field("target", self.target, _is_number(self.target), "a finite number")
        _check_field("shuffle", self.shuffle, isinstance(self.shuffle, bool), "true or false")
        _check_field("alpha", self.alpha, _is_number(self.alpha) and self.alpha > 0, "a positive number")
        _check_field(
            "in_channels",
            self.in_channels,
            _is_int(self.in_channels) and 1 <= self.in_channels <= MAX_IN_CHANNELS,
            f"an integer in [1, {MAX_IN_CHANNELS}]",
        )
        if self.mid_channels is not None:
            full = self.default_mid_channels()
            _check_field(
                "mid_channels",
                self.mid_channels,
                isinstance(self.mid_channels, list) and len(self.mid_channels) == len(full),
                f"null or a list of {len(full)} channel counts (one per block of {self.arch})",
            )
            for i, (mid, most) in enumerate(zip(self.mid_channels, full, strict=True)):
                _check_field(
                    f"mid_channels[{i}]", mid, _is_int(mid) and 1 <= mid <= most, f"an integer in [1, {most}]"
                )
        _check_field(
            "pruned_channels",
            self.pruned_channels,
            isinstance(self.pruned_channels, dict)
            and all(
                isinstance(v, list) and all(_is_int(c) and c >= 0 for c in v)
                for v in self.pruned_channels.values()
            ),
            "an object mapping block names to lists of channel indices",
        )

    def block_convs(self) -> list[tuple[str, int, int]]:
        """``(name, c_in, c_out)`` of every BasicBlock's two 3x3 convolutions (the ones that can be gated)."""
        blocks, widths, _ = self.stages()
        mids = list(self.mid_channels) if self.mid_channels is not None else self.default_mid_channels()
        convs, in_planes, k = [], widths[0], 0
        for s, (n, planes) in enumerate(zip(blocks, widths, strict=True)):
            for b in range(n):
                name = f"layer{s + 1}.{b}"
                convs += [(f"{name}.conv1", in_planes, mids[k]), (f"{name}.conv2", mids[k], planes)]
                in_planes = planes
                k += 1
        return convs

    def gates_conv(self, c_in: int, c_out: int) -> bool:
        """Whether a block convolution ``c_in -> c_out`` is gated under this spec: not dense, the grouping
        divides both channel counts (G > 1), or there are at least 2 input channels (G = 1)."""
        g = self.gate_groups
        if self.dense:
            return False
        if g > 1:
            return c_in % g == 0 and c_out % g == 0
        return c_in >= 2


class BasicBlock(nn.Module):
    """conv1 → BN → ReLU → conv2 → BN, plus the shortcut (identity or 1×1 conv + BN), add, ReLU."""

    def __init__(self, in_planes: int, planes: int, mid: int, stride: int, make_conv) -> None:
        super().__init__()
        self.conv1 = make_conv(in_planes, mid, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu1 = nn.ReLU()
        self.conv2 = make_conv(mid, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                GatedConv2d(in_planes, planes, 1, stride, 0, dense=True), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = None
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(self.add(out, sc))


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet (module docstring) for a :class:`ModelSpec`."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        blocks, widths, strides = spec.stages()
        mids = list(spec.mid_channels) if spec.mid_channels is not None else spec.default_mid_channels()
        if len(mids) != sum(blocks):
            raise ValueError(f"mid_channels has {len(mids)} entries for {sum(blocks)} blocks")

        def make_conv(c_in: int, c_out: int, k: int, stride: int, padding: int) -> GatedConv2d:
            g = spec.gate_groups
            dense = not spec.gates_conv(c_in, c_out)
            base = max(1, min(c_in - 1, int(round(spec.base_fraction * c_in))))
            return GatedConv2d(
                c_in,
                c_out,
                k,
                stride,
                padding,
                gate_groups=max(g, 1),
                base_channels=base,
                target=spec.target,
                shuffle=spec.shuffle,
                alpha=spec.alpha,
                dense=dense,
            )

        self.conv1 = GatedConv2d(spec.in_channels, widths[0], 3, 1, 1, dense=True)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        k = 0
        for s, (n, planes, stride) in enumerate(zip(blocks, widths, strides, strict=True)):
            layer = []
            for b in range(n):
                layer.append(BasicBlock(in_planes, planes, mids[k], stride if b == 0 else 1, make_conv))
                in_planes = planes
                k += 1
            self.add_module(f"layer{s + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, spec.num_classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[BasicBlock]:
        return [m for m in self.modules() if isinstance(m, BasicBlock)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name, _ in self.spec_stages():
            x = getattr(self, name)(x)
        return self.fc(self.flatten(self.avgpool(x)))

    def spec_stages(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in self.named_children() if n.startswith("layer")]


def build_model(spec: ModelSpec) -> CifarResNet:
    """The network of ``spec`` (checked first: ``ValueError`` naming the field)."""
    spec.check()
    return CifarResNet(spec)
