"""Validation of a trace (docs/trace-format.md, "Checks"): the top-level keys, the metadata
(:mod:`trace_format.metadata`) and every layer's arrays, on arrays in memory (:func:`validate_trace`) or in
an open file (:func:`~trace_format.load_trace`, which hands :func:`check` its ``.npy`` headers).

The checks look at a trace through :class:`ArraySource`: its keys, each key's dtype and shape, and values
on request, read only of the small arrays the checks look at (``format``, ``version``, ``meta``, scales,
``thresholds``). Every refusal is a :class:`~trace_format.errors.TraceError` naming the file, the layer,
the key and the offending value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from trace_format.errors import Where, short
from trace_format.metadata import check_metadata, parse_meta
from trace_format.model import (
    FORMAT,
    LAYER_PREFIX,
    TOP_KEYS,
    VERSION,
    LayerMeta,
    NetworkMeta,
    Trace,
    TraceLayer,
)

if TYPE_CHECKING:
    from trace_format.reader import TraceFile

__all__ = ["ArraySource", "Checked", "build_trace", "check", "validate_trace"]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class ArraySource:
    """A trace's arrays as the checks see them: the keys, each key's dtype and shape, and values on request.

    :func:`validate_trace` checks arrays in memory (:class:`_InMemory`), :func:`~trace_format.load_trace`
    an open file (:class:`~trace_format.reader.TraceFile`, dtype and shape from the ``.npy`` headers); the
    checks are the same code.
    """

    def keys(self) -> Iterable[str]:
        raise NotImplementedError

    def __contains__(self, key: str) -> bool:
        raise NotImplementedError

    def header(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        raise NotImplementedError

    def value(self, key: str, where: Where) -> np.ndarray:
        raise NotImplementedError


class _InMemory(ArraySource):
    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self._arrays = arrays

    def keys(self) -> Iterable[str]:
        return self._arrays.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def header(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        arr = self._arrays[key]
        return arr.dtype, arr.shape

    def value(self, key: str, where: Where) -> np.ndarray:
        return self._arrays[key]


class Checked(NamedTuple):
    """What :func:`check` found valid: the metadata, and per layer array name -> key in the source."""

    network: NetworkMeta
    layers: dict[str, LayerMeta]
    keys: dict[str, dict[str, str]]


def _scalar_text(arrays: ArraySource, key: str, where: Where) -> str:
    dtype, shape = arrays.header(key)
    if dtype.kind != "U" or shape != ():
        where.fail(f"key {key!r}: dtype {dtype}, shape {shape}: expected a string scalar")
    return str(arrays.value(key, where)[()])


def _check_top(arrays: ArraySource, where: Where) -> dict:
    """``format``, ``version`` and the ``meta`` JSON object."""
    for key in TOP_KEYS:
        if key not in arrays:
            where.fail(f"key {key!r} is missing (is this a {FORMAT} trace?)")
    fmt = _scalar_text(arrays, "format", where)
    if fmt != FORMAT:
        where.fail(f"key 'format' = {fmt!r}: expected {FORMAT!r}")
    dtype, shape = arrays.header("version")
    if dtype.kind not in "iu" or shape != ():
        size = math.prod(shape)
        value = (
            short(arrays.value("version", where).tolist()) if size <= 16 else f"not shown: {size} elements"
        )
        where.fail(f"key 'version': dtype {dtype}, shape {shape}: expected an integer scalar (value {value})")
    v = int(arrays.value("version", where))
    if v > VERSION:
        where.fail(
            f"key 'version' = {v}: newer than this reader's trace format version {VERSION}; "
            "update channel-gating-accel to read it"
        )
    if v < 1:
        where.fail(f"key 'version' = {v}: expected an integer from 1 to {VERSION}")
    text = _scalar_text(arrays, "meta", where)
    return parse_meta(text, where)


def _expected_arrays(lm: LayerMeta, n: int) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """array name -> (allowed dtypes, shape) of an engine layer."""
    c_in, c_out = lm.c_in, lm.c_out
    if lm.kind == "fc":
        weights_shape: tuple[int, ...] = (c_out, c_in)
        inputs_shape: tuple[int, ...] = (n, c_in)
    else:
        weights_shape = (c_out, c_in // lm.groups, lm.kernel, lm.kernel)
        inputs_shape = (n, c_in, lm.h, lm.w)
    spec = {
        "weights": (("int8",), weights_shape),
        "weight_scale": (("float32",), (c_out,)),
        "inputs": (("int8",), inputs_shape),
        "input_scale": (("float32",), ()),
        "bias": (("int32",), (c_out,)),
        "requant_scale": (("float32",), (c_out,)),
        "output_scale": (("float32",), ()),
    }
    if lm.gated:
        spec["thresholds"] = (("int32", "int64"), (c_out,))
        spec["gates"] = (("bool",), (n, c_out, lm.h_out, lm.w_out))
    return spec


def _check_arrays(name: str, lm: LayerMeta, arrays: ArraySource, n: int, where: Where) -> None:
    """One engine layer's arrays: each present, of its dtype and shape, scales and thresholds in range."""
    spec = _expected_arrays(lm, n)
    for array, (dtypes, shape) in spec.items():
        key = f"{LAYER_PREFIX}{name}/{array}"
        if key not in arrays:
            where.fail(f"key {key!r} is missing")
        dtype, got = arrays.header(key)
        if dtype.name not in dtypes or not dtype.isnative:
            where.fail(f"key {key!r}: dtype {dtype.str} ({dtype}), expected {' or '.join(dtypes)}")
        if got != shape:
            note = f", samples = {n}" if array in ("inputs", "gates") else ""
            where.fail(f"key {key!r}: shape {got}, expected {shape} from the layer's metadata{note}")
        # Values are checked of the small arrays only (c_out entries at most): the rest are not read.
        if array.endswith("scale"):
            arr = arrays.value(key, where)
            bad = ~(np.isfinite(arr) & (arr > 0))
            if bad.any():
                index = tuple(int(i) for i in np.argwhere(bad)[0])
                where.fail(
                    f"key {key!r}: value {arr[index].item()!r} at index {index}: "
                    "scales must be positive and finite"
                )
        if array == "thresholds" and math.prod(shape):
            arr = arrays.value(key, where)
            lo, hi = int(arr.min()), int(arr.max())
            if lo < INT32_MIN or hi > INT32_MAX:
                bad_value = lo if lo < INT32_MIN else hi
                index = int(np.argmax(arr == bad_value))
                where.fail(
                    f"key {key!r}: value {bad_value} at index {index} outside the int32 range "
                    f"[{INT32_MIN}, {INT32_MAX}]"
                )


def check(arrays: ArraySource, where: Where) -> Checked:
    """Every check of docs/trace-format.md, in the order the messages assume: top-level keys, metadata,
    then the arrays (every key known, every engine layer complete)."""
    network, layers = check_metadata(_check_top(arrays, where), where)
    n = network.samples
    per_layer: dict[str, dict[str, str]] = {name: {} for name in layers}
    for key in arrays.keys():
        if key in TOP_KEYS:
            continue
        if not key.startswith(LAYER_PREFIX) or key.count("/") < 2:
            where.fail(f"key {key!r}: unknown key (expected format, version, meta or layer/<name>/<array>)")
        name, _, array = key[len(LAYER_PREFIX) :].rpartition("/")
        if name not in per_layer:
            where.fail(f"key {key!r}: layer {name!r} is not in the metadata")
        lm = layers[name]
        if not lm.is_engine_layer:
            Where(where.source, name).fail(f"key {key!r}: a {lm.kind} layer stores no arrays")
        if array not in _expected_arrays(lm, n):
            Where(where.source, name).fail(
                f"key {key!r}: unknown array {array!r} for a{' gated' if lm.gated else 'n ungated'} "
                f"{lm.kind} layer"
            )
        per_layer[name][array] = key
    for name, lm in layers.items():
        if lm.is_engine_layer:
            _check_arrays(name, lm, arrays, n, Where(where.source, name))
    return Checked(network, layers, per_layer)


def build_trace(
    checked: Checked,
    arrays: Mapping[str, Mapping[str, np.ndarray]],
    source: str,
    file: TraceFile | None = None,
) -> Trace:
    """The :class:`Trace` of checked metadata and its layers' arrays (layer name -> array name -> array)."""
    layers = {
        name: TraceLayer(name=name, meta=lm, arrays=arrays[name]) for name, lm in checked.layers.items()
    }
    network = checked.network
    return Trace(
        name=network.name, meta=network, layer_order=tuple(layers), layers=layers, path=source, _file=file
    )


def validate_trace(arrays: Mapping[str, np.ndarray], source: str = "<trace>") -> Trace:
    """Check the arrays of a trace (key -> array, as in the ``.npz``) and return the :class:`Trace`.

    Raises :class:`~trace_format.errors.TraceError` naming ``source``, the layer, the key and the
    offending value. The layers' ``arrays`` are dicts of the arrays given.
    """
    where = Where(str(source))
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            where.fail(f"key {key!r}: a {type(arr).__name__}, expected a numpy array")
        if arr.dtype.hasobject:
            where.fail(
                f"key {key!r}: an object array (pickled Python objects); traces hold plain arrays only"
            )
    checked = check(_InMemory(arrays), where)
    named = {name: {array: arrays[key] for array, key in keys.items()} for name, keys in checked.keys.items()}
    return build_trace(checked, named, str(source))
