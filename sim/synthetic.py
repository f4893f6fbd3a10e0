"""Seeded synthetic convolution layers, a stand-in for real layer traces.

A :class:`SyntheticLayer` holds int8 activations drawn like the output of a ReLU followed by int8
quantization (about half zeros, the rest non-negative and roughly half-normal), int8 weights drawn roughly
normal and scaled to use the int8 range, and one integer gate threshold per output channel calibrated on
the layer's own base-path partial sums so that the channel's fraction of gated-on activations is about
``gate_rate``.

The channel segmentation is the engine's (docs/microarchitecture.md, section 1): with ``groups`` G > 1,
output channel ``co`` belongs to group ``co // (c_out / G)`` and its base path is input group ``g``; with
G = 1 the base path is input channels ``[0, base_channels)`` for every output channel.

:func:`cut_tiles` splits a layer into engine tiles that fit a configuration's buffers (see its docstring
for the rules), and :func:`layer_reference` computes the whole layer's gated or dense output with plain
numpy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sim.reference import base_mask, conv2d, gated_conv
from sim.tiling import plan_layer
from spec.config import ConfigError, EngineConfig
from spec.tile import Tile, conv_output_size

__all__ = [
    "LayerTile",
    "SyntheticLayer",
    "base_partial_sums",
    "cut_tiles",
    "layer_reference",
    "synthetic_layer",
]

ACT_MAX = 127
WEIGHT_MAX = 127


@dataclass(frozen=True)
class SyntheticLayer:
    """One convolution layer with gate thresholds.

    Parameters
    ----------
    inputs : ndarray of int8, shape (c_in, h, w)
        Post-ReLU activations (non-negative).
    weights : ndarray of int8, shape (c_out, c_in, kernel, kernel)
    thresholds : ndarray of int64, shape (c_out,)
        Gate thresholds: an activation's gate is on when its base-path partial sum is greater. The values
        lie in the int32 range; they are stored as int64 like :func:`spec.tile.random_tile` does.
    kernel, stride, padding, groups, base_channels : int
        Geometry; ``padding`` is applied on every side; ``base_channels`` is used only when ``groups`` is 1.
    gate_rate : float
        The requested fraction of gated-on activations per output channel.
    seed : int
    """

    inputs: np.ndarray
    weights: np.ndarray
    thresholds: np.ndarray
    kernel: int
    stride: int
    padding: int
    groups: int
    base_channels: int
    gate_rate: float
    seed: int

    @property
    def c_in(self) -> int:
        return self.inputs.shape[0]

    @property
    def c_out(self) -> int:
        return self.weights.shape[0]

    @property
    def h(self) -> int:
        return self.inputs.shape[1]

    @property
    def w(self) -> int:
        return self.inputs.shape[2]

    @property
    def h_out(self) -> int:
        return conv_output_size(self.h, self.kernel, self.stride, self.padding, self.padding)

    @property
    def w_out(self) -> int:
        return conv_output_size(self.w, self.kernel, self.stride, self.padding, self.padding)

    def base_mask(self) -> np.ndarray:
        """Boolean ``[c_out, c_in]``: True where input channel ``ci`` is in ``co``'s base path."""
        return base_mask(self.c_in, self.c_out, self.groups, self.base_channels)


@dataclass(frozen=True)
class LayerTile(Tile):
    """A :class:`~spec.tile.Tile` cut from a layer, with where its outputs go in the layer.

    ``channels[j]`` is the layer output channel of the tile's output channel ``j``; the tile's outputs cover
    layer output rows ``[row0, row0 + h_out)`` and columns ``[col0, col0 + w_out)``.
    """

    channels: tuple[int, ...]
    row0: int
    col0: int


def _check_geometry(
    c_in: int,
    c_out: int,
    h: int,
    w: int,
    kernel: int,
    stride: int,
    padding: int,
    groups: int,
    base_channels: int,
) -> None:
    for name, value, lo in (
        ("c_in", c_in, 1),
        ("c_out", c_out, 1),
        ("h", h, 1),
        ("w", w, 1),
        ("kernel", kernel, 1),
        ("stride", stride, 1),
        ("padding", padding, 0),
        ("groups", groups, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise ConfigError(f"layer field {name!r} = {value!r}: expected an integer of at least {lo}")
    if padding >= kernel:
        raise ConfigError(f"layer field 'padding' = {padding}: must be smaller than kernel = {kernel}")
    if groups > 1:
        for name, value in (("c_in", c_in), ("c_out", c_out)):
            if value % groups:
                raise ConfigError(f"layer field {name!r} = {value}: not a multiple of groups = {groups}")
    elif not 1 <= base_channels < c_in:
        raise ConfigError(
            f"layer field 'base_channels' = {base_channels}: with groups = 1 it must lie in "
            f"[1, c_in - 1] = [1, {c_in - 1}]"
        )
    for name, size in (("h", h), ("w", w)):
        if conv_output_size(size, kernel, stride, padding, padding) < 1:
            raise ConfigError(
                f"layer field {name!r} = {size}: too small for kernel {kernel} with padding {padding}"
            )


def base_partial_sums(layer: SyntheticLayer) -> np.ndarray:
    """The base-path partial sums ``p`` of every output activation, int64 ``[c_out, h_out, w_out]``."""
    mask = layer.base_mask()[:, :, None, None]
    return conv2d(layer.inputs, np.where(mask, layer.weights, 0), layer.stride, layer.padding)


def layer_reference(layer: SyntheticLayer, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The engine's output ``y`` (int64) and gate bits (bool) for the whole layer, ``[c_out, h_out, w_out]``
    (the functional reference, sim/reference.py).

    Gated: ``y = p + r`` where ``p > threshold`` and ``y = p`` elsewhere; dense: ``y = p + r`` and every gate
    bit set.
    """
    y, gates, _ = gated_conv(
        layer.inputs,
        layer.weights,
        layer.thresholds,
        layer.base_mask(),
        dense=dense,
        stride=layer.stride,
        padding=layer.padding,
    )
    return y, gates


def _calibrate(p: np.ndarray, gate_rate: float) -> int:
    """The integer threshold whose count of ``p > threshold`` is nearest ``gate_rate * p.size``."""
    values = np.sort(p.ravel())
    n = values.size
    target = gate_rate * n
    candidates = np.concatenate(([values[0] - 1], np.unique(values)))
    above = n - np.searchsorted(values, candidates, side="right")
    return int(candidates[int(np.argmin(np.abs(above - target)))])


def synthetic_layer(
    c_in: int,
    c_out: int,
    h: int,
    w: int,
    kernel: int,
    stride: int,
    padding: int,
    groups: int,
    gate_rate: float,
    seed: int,
    base_channels: int = 0,
) -> SyntheticLayer:
    """A seeded synthetic layer whose per-channel gate-on fraction is about ``gate_rate``.

    Activations: a per-channel scale (some channels are quieter than others) times a standard normal,
    rectified and rounded, so about half are zero and the rest roughly half-normal within ``[0, 127]``.
    Weights: normal with a standard deviation of 127/3, rounded and clipped to ``[-128, 127]``. Thresholds:
    per output channel, the value that puts the fraction of its partial sums above it nearest
    ``gate_rate`` (ties between equal partial sums make the fraction move in steps).
    """
    _check_geometry(c_in, c_out, h, w, kernel, stride, padding, groups, base_channels)
    if not isinstance(gate_rate, (int, float)) or not 0.0 <= gate_rate <= 1.0:
        raise ConfigError(f"layer field 'gate_rate' = {gate_rate!r}: must lie in [0, 1]")
    rng = np.random.default_rng(seed)
    scale = ACT_MAX / 3.0 * rng.uniform(0.4, 1.0, size=(c_in, 1, 1))
    inputs = np.clip(np.rint(np.maximum(rng.standard_normal((c_in, h, w)) * scale, 0.0)), 0, ACT_MAX)
    weights = np.clip(
        np.rint(rng.standard_normal((c_out, c_in, kernel, kernel)) * (WEIGHT_MAX / 3.0)),
        -WEIGHT_MAX - 1,
        WEIGHT_MAX,
    )
    layer = SyntheticLayer(
        inputs=inputs.astype(np.int8),
        weights=weights.astype(np.int8),
        thresholds=np.zeros(c_out, dtype=np.int64),
        kernel=kernel,
        stride=stride,
        padding=padding,
        groups=groups,
        base_channels=base_channels if groups == 1 else 0,
        gate_rate=float(gate_rate),
        seed=seed,
    )
    p = base_partial_sums(layer)
    thresholds = np.array([_calibrate(p[co], gate_rate) for co in range(c_out)], dtype=np.int64)
    np.clip(thresholds, -(1 << 31), (1 << 31) - 1, out=thresholds)
    return dataclasses.replace(layer, thresholds=thresholds)


def cut_tiles(layer: SyntheticLayer, config: EngineConfig, max_tiles: int | None = None) -> list[LayerTile]:
    """Split ``layer`` into engine tiles that fit ``config``'s buffers, in row-major order.

    Rules:

    * every tile holds **all input channels** of the layer (the channel segmentation is then the layer's);
    * output channels are cut into blocks of ``m`` channels **per group**: a tile takes the same block
      ``[b*m, (b+1)*m)`` of every group's ``c_out / G`` channels and lists them group by group, so tile
      channel ``j`` belongs to tile group ``j // m`` = its layer group, and each tile has whole groups
      (``c_out`` of the tile = ``G*m``). With G = 1 the blocks are plain runs of channels;
    * output rows and columns are cut into blocks; a tile holds the input rows/columns its outputs read
      (the halo), its ``pad_top``/``pad_left`` is the part of the layer's padding that falls before them
      (the layer padding for the first block, 0 for the others, unless a block is shorter than the
      padding), and reads beyond its last row/column are the layer's zero padding;
    * each dimension in turn (columns, then channels, then rows) takes the largest block that fits the
      buffers, then splits evenly into as many blocks as that block size implies (sizes differ by at most
      one); input halos count only real rows and columns (docs/network.md, "Tiling").

    The layer's kernel, stride and groups must equal the configuration's and its padding must not exceed
    the configuration's; otherwise, or when not even one output activation fits, :class:`ConfigError`.
    ``max_tiles`` keeps only the first tiles.
    """
    k, s, p, g = layer.kernel, layer.stride, layer.padding, layer.groups
    for name, have, want in (
        ("kernel", k, config.kernel),
        ("stride", s, config.stride),
        ("groups", g, config.groups),
    ):
        if have != want:
            raise ConfigError(f"layer field {name!r} = {have}: the engine is built for {name} = {want}")
    if p > config.padding:
        raise ConfigError(f"layer field 'padding' = {p}: larger than the engine's padding = {config.padding}")
    if max_tiles is not None and max_tiles < 1:
        raise ConfigError(f"max_tiles = {max_tiles}: must be at least 1")

    plan = plan_layer(
        config, layer.c_in, layer.c_out, layer.h, layer.w, layer.h_out, layer.w_out, layer.base_channels, p
    )
    tiles: list[LayerTile] = []
    for t in plan:
        channels = list(t.channels)
        tile = LayerTile(
            geometry=t.geometry,
            inputs=np.ascontiguousarray(layer.inputs[:, t.y0 : t.y1, t.x0 : t.x1]),
            weights=np.ascontiguousarray(layer.weights[channels]),
            thresholds=np.ascontiguousarray(layer.thresholds[channels]),
            channels=t.channels,
            row0=t.r0,
            col0=t.x0_out,
        )
        tile.check(config)
        tiles.append(tile)
        if max_tiles is not None and len(tiles) >= max_tiles:
            break
    return tiles
