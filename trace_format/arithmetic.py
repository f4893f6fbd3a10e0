"""Integer arithmetic of the trace format (docs/trace-format.md, "Integer semantics" and ``flops``).

:func:`requantize` is what an engine layer does between its exact integer sum and the int8 output that the
next layer reads; :func:`layer_macs` and :func:`gated_macs` are the MAC counts a layer's ``flops`` hold.
Exporters, the synthetic generator, the validator and network runners all use these, so that the figures
they write and check agree to the last bit. They take a layer's metadata as its JSON object (what a writer
has in hand); a loaded layer's is ``layer.meta.json``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["gated_macs", "layer_macs", "requantize"]


def requantize(acc: np.ndarray, bias: np.ndarray, requant_scale: np.ndarray, relu: bool) -> np.ndarray:
    """int8 output of an engine layer (docs/trace-format.md, "Integer semantics").

    ``acc`` has the output channel on axis 1 (``[N, c_out, ...]``) or is ``[c_out, ...]`` when it has one
    axis fewer than that; ``bias`` (int32) and ``requant_scale`` (float32) are ``[c_out]``. The product is
    taken in float64 of the exact integer ``acc + bias`` and the float32 scale, rounded half to even,
    ReLU'd if ``relu``, and clamped to ``[-128, 127]``.
    """
    acc = np.asarray(acc)
    axis = 1 if acc.ndim >= 2 else 0
    shape = [1] * acc.ndim
    shape[axis] = -1
    b = np.asarray(bias, dtype=np.int64).reshape(shape)
    s = np.asarray(requant_scale, dtype=np.float32).astype(np.float64).reshape(shape)
    y = np.rint((acc.astype(np.int64) + b).astype(np.float64) * s)
    if relu:
        y = np.maximum(y, 0.0)
    return np.clip(y, -128, 127).astype(np.int8)


def layer_macs(meta: Mapping) -> int:
    """Dense MACs per image of an engine layer: ``k²·(c_in/groups)·c_out·h_out·w_out``; fc ``c_in·c_out``."""
    if meta["kind"] == "fc":
        return int(meta["c_in"]) * int(meta["c_out"])
    k = int(meta["kernel"])
    return (
        k
        * k
        * (int(meta["c_in"]) // int(meta.get("groups", 1)))
        * int(meta["c_out"])
        * (int(meta["h_out"]) * int(meta["w_out"]))
    )


def gated_macs(meta: Mapping, gate_on_fraction: float) -> float:
    """MACs per image of a gated layer with gate-on fraction ``r``.

    Base ``"groups"``: ``dense·(1/G + (1 − 1/G)·r)`` (the brief's formula); base ``{"first": C_b}``:
    ``dense·(C_b + (c_in − C_b)·r)/c_in``.
    """
    dense = layer_macs(meta)
    r = float(gate_on_fraction)
    base = meta.get("base", "groups")
    if isinstance(base, Mapping):
        cb, c_in = int(base["first"]), int(meta["c_in"])
        return dense * (cb + (c_in - cb) * r) / c_in
    g = int(meta.get("gate_groups", 1))
    return dense * (1.0 / g + (1.0 - 1.0 / g) * r)
