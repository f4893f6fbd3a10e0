"""CIFAR-style ResNets built on :class:`~traces.gating.GatedConv2d`.

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
from dataclasses import dataclass, field

import torch
from torch import nn

from traces.gating import Add, GatedConv2d

__all__ = ["ARCHS", "BasicBlock", "CifarResNet", "ModelSpec", "build_model"]

# name -> (blocks per stage, stage widths, stage strides)
ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "resnet8": ((1, 1, 1), (16, 32, 64), (1, 2, 2)),
    "resnet20": ((3, 3, 3), (16, 32, 64), (1, 2, 2)),
    "resnet56": ((9, 9, 9), (16, 32, 64), (1, 2, 2)),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512), (1, 2, 2, 2)),
}


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
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


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
            dense = spec.dense
            if not dense and g > 1 and (c_in % g or c_out % g):
                dense = True
            base = max(1, min(c_in - 1, int(round(spec.base_fraction * c_in))))
            if not dense and g == 1 and c_in < 2:
                dense = True
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
    return CifarResNet(spec)
