"""The functional reference: what a gated convolution computes, in plain numpy (docs/microarchitecture.md,
section 1).

It knows nothing of cycles, PEs, buffers or tiles' schedules, and imports nothing of the cycle model: the
cycle model (``sim.engine``) and the RTL are both checked against it. One copy serves ``accel report
--check``, ``accel run``, the synthetic layer generator and the tests.

* :func:`conv2d`: an exact integer convolution, with the padding of a whole layer or of a tile (padding
  before the first row/column, reads beyond the input are zero);
* :func:`base_mask`: which input channels form each output channel's base path;
* :func:`gated_conv`: the base partial sums ``p``, the gates ``p > τ`` and the outputs ``y = p + r`` where
  the gate is on (every gate on in dense mode);
* :func:`tile_reference`: the same for an engine tile.
"""

from __future__ import annotations

import numpy as np

from spec.config import EngineConfig
from spec.tile import Tile, conv_output_size

__all__ = ["base_mask", "conv2d", "gated_conv", "tile_reference"]

_FLOAT_EXACT = 1 << 53  # every partial sum below this in magnitude is exact in float64


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    stride: int = 1,
    padding: int = 0,
    *,
    pad_top: int | None = None,
    pad_left: int | None = None,
    h_out: int | None = None,
    w_out: int | None = None,
) -> np.ndarray:
    """Exact integer convolution, int64 ``[c_out, h_out, w_out]`` of ``x`` ``[c_in, h, w]`` and ``w``
    ``[c_out, c_in, k, k]``.

    ``padding`` pads all four sides (a layer); a tile gives ``pad_top``/``pad_left`` (zeros before its first
    row/column) and its output size, and every read beyond the input is zero. The product runs as a float64
    matrix product (BLAS) when every partial sum is below 2**53 in magnitude (then exact), else in int64.
    """
    c_in, h, wd = x.shape
    c_out, c_w, k, k2 = w.shape
    if c_w != c_in or k != k2:
        raise ValueError(f"weights {w.shape} do not fit inputs {x.shape}")
    top = padding if pad_top is None else pad_top
    left = padding if pad_left is None else pad_left
    h_out = conv_output_size(h, k, stride, padding, padding) if h_out is None else h_out
    w_out = conv_output_size(wd, k, stride, padding, padding) if w_out is None else w_out
    bottom = max(0, (h_out - 1) * stride + k - top - h)
    right = max(0, (w_out - 1) * stride + k - left - wd)
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    cols = win[:, :h_out, :w_out].transpose(1, 2, 0, 3, 4).reshape(h_out * w_out, c_in * k * k)
    weights = w.reshape(c_out, -1)
    largest = _magnitude(x) * _magnitude(weights) * c_in * k * k
    if largest < _FLOAT_EXACT:
        out = np.rint(cols.astype(np.float64) @ weights.astype(np.float64).T).astype(np.int64)
    else:
        out = cols.astype(np.int64) @ weights.astype(np.int64).T
    return out.T.reshape(c_out, h_out, w_out)


def _magnitude(a: np.ndarray) -> int:
    # Python ints: np.abs of an int8 -128 is -128.
    return max(-int(a.min()), int(a.max())) if a.size else 0


def base_mask(c_in: int, c_out: int, groups: int, base_channels: int = 0) -> np.ndarray:
    """Boolean ``[c_out, c_in]``: True where input channel ``ci`` is in output channel ``co``'s base path.

    With ``groups`` G > 1, output group ``co // (c_out / G)`` reads input group of the same index; with
    G = 1 the first ``base_channels`` input channels are every output channel's base path.
    """
    mask = np.zeros((c_out, c_in), dtype=bool)
    if groups > 1:
        cg, og = c_in // groups, c_out // groups
        for g in range(groups):
            mask[g * og : (g + 1) * og, g * cg : (g + 1) * cg] = True
    else:
        mask[:, :base_channels] = True
    return mask


def gated_conv(
    x: np.ndarray,
    w: np.ndarray,
    thresholds: np.ndarray,
    mask: np.ndarray,
    dense: bool = False,
    **conv,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, gates, p)`` of a gated convolution, each ``[c_out, h_out, w_out]``.

    ``p`` is the convolution over each output channel's base path (``mask``, from :func:`base_mask`),
    ``gates = p > thresholds[co]`` (all on when ``dense``), ``y = p + r`` (the full convolution) where the
    gate is on and ``p`` elsewhere. ``conv`` are :func:`conv2d`'s geometry arguments.
    """
    w = np.asarray(w)
    p = conv2d(x, np.where(mask[:, :, None, None], w, 0), **conv)
    full = conv2d(x, w, **conv)
    if dense:
        return full, np.ones(full.shape, dtype=bool), p
    gates = p > np.asarray(thresholds, dtype=np.int64)[:, None, None]
    return np.where(gates, full, p), gates, p


def tile_reference(config: EngineConfig, tile: Tile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(y, gates, p)`` of every output activation of an engine tile, shapes ``[c_out, h_out, w_out]``."""
    g = tile.geometry
    mask = base_mask(g.c_in, g.c_out, config.groups, g.base_channels)
    return gated_conv(
        tile.inputs,
        tile.weights,
        tile.thresholds,
        mask,
        dense=g.dense,
        stride=config.stride,
        pad_top=g.pad_top,
        pad_left=g.pad_left,
        h_out=g.h_out,
        w_out=g.w_out,
    )
