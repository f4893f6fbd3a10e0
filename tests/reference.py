"""The functional reference: what a gated convolution tile computes, in plain numpy (spec section 1).

It knows nothing of cycles, PEs or buffers; the cycle model and the RTL are both checked against it.
"""

from __future__ import annotations

import numpy as np

from accel.config import EngineConfig
from accel.tile import Tile

__all__ = ["reference_outputs", "segment_masks"]


def segment_masks(config: EngineConfig, tile: Tile) -> np.ndarray:
    """Boolean ``[c_out, c_in]``: True where input channel ``ci`` is in the base path of ``co``."""
    g = tile.geometry
    base = np.zeros((g.c_out, g.c_in), dtype=bool)
    if config.groups > 1:
        cg_in, cg_out = g.c_in // config.groups, g.c_out // config.groups
        for co in range(g.c_out):
            grp = co // cg_out
            base[co, grp * cg_in : (grp + 1) * cg_in] = True
    else:
        base[:, : g.base_channels] = True
    return base


def _conv(config: EngineConfig, tile: Tile, weights: np.ndarray) -> np.ndarray:
    g, k, s = tile.geometry, config.kernel, config.stride
    # Pad generously on every side, then slice the window each output position reads.
    pad = k + s * max(g.h_out, g.w_out)
    x = np.pad(tile.inputs.astype(np.int64), ((0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((g.c_out, g.h_out, g.w_out), dtype=np.int64)
    for ky in range(k):
        for kx in range(k):
            y0 = pad + ky - g.pad_top
            x0 = pad + kx - g.pad_left
            window = x[:, y0 : y0 + s * g.h_out : s, x0 : x0 + s * g.w_out : s]
            out += np.einsum("oc,chw->ohw", weights[:, :, ky, kx], window)
    return out


def reference_outputs(config: EngineConfig, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """``(y, gate)`` of every output activation, shapes ``[c_out, h_out, w_out]``."""
    w = tile.weights.astype(np.int64)
    base = segment_masks(config, tile)[:, :, None, None]
    p = _conv(config, tile, np.where(base, w, 0))
    r = _conv(config, tile, np.where(base, 0, w))
    if tile.geometry.dense:
        return p + r, np.ones(p.shape, dtype=bool)
    gate = p > tile.thresholds.astype(np.int64)[:, None, None]
    return np.where(gate, p + r, p), gate
