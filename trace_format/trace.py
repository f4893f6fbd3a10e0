"""Layer traces: load, validate and save the trace format of docs/trace-format.md (version 1).

A trace is one ``.npz`` file: ``format``, ``version``, ``meta`` (JSON) and the arrays
``layer/<name>/<array>`` of the layers that map to the engine. :func:`load_trace` opens it, checks every
member from its ``.npy`` header (values only of the small arrays the checks look at) and leaves the file
open: a layer's large arrays are read from it on access (:class:`TraceArrays`), never pickled data.
:func:`validate_trace` runs the same checks on arrays in memory; every refusal is a :class:`TraceError`
whose message names the file, the layer, the key and the offending value. :func:`save_trace` validates
first and then writes atomically (a temporary file in the same directory, then ``os.replace``), with fixed
zip member timestamps so that the same content always gives the same bytes.

This module imports only the standard library and numpy (``make_meta`` reads ``accel.__version__``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import stat
import tempfile
import threading
import tokenize
import weakref
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import numpy as np

from outfiles.folder import file_mode
from spec.errors import UserError

__all__ = [
    "ENGINE_KINDS",
    "FORMAT",
    "KINDS",
    "VERSION",
    "Trace",
    "TraceArrays",
    "TraceError",
    "TraceLayer",
    "engine_geometry_problem",
    "gated_macs",
    "layer_macs",
    "layer_tile_operands",
    "load_trace",
    "make_meta",
    "requantize",
    "save_trace",
    "validate_trace",
]

FORMAT = "cgnet-trace"
VERSION = 1
ENGINE_KINDS = ("conv", "fc")
OTHER_KINDS = ("maxpool", "avgpool", "add", "relu", "flatten")
KINDS = ENGINE_KINDS + OTHER_KINDS
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
TOP_KEYS = ("format", "version", "meta")
LAYER_PREFIX = "layer/"
# Fixed zip member timestamp: the same trace content always gives the same file bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
# The arrays of a loaded trace that are read from the file on every access and never kept (activations,
# gates, weights: a layer's working set); every other array (per-channel vectors, scalars) is kept once read.
LARGE_ARRAYS = frozenset({"inputs", "gates", "weights"})
# Largest integer metadata field (channels, sizes, kernel, samples, ...): int32, so that every product of
# them numpy forms stays within int64.
MAX_INT_FIELD = INT32_MAX
# Largest magnitude of a metadata number (accuracies, fractions, MACs): 2**53, so that it converts to a
# float exactly and sums of them cannot overflow.
MAX_NUMBER = 1 << 53
# The engine's fixed limits on a layer's geometry: EngineConfig's field limits (accel/config.py) for
# kernel, stride, padding and groups (a gated layer's G), and the 16-bit configuration registers
# (accel/tile.py, REGISTER_LIMIT) for c_in, which every tile of a layer takes whole.
ENGINE_LIMITS = {"kernel": (1, 11), "stride": (1, 8), "padding": (0, 10), "gate_groups": (1, 64)}
ENGINE_MAX_C_IN = (1 << 16) - 1
# Largest uncompressed size of the metadata members (bytes of the whole .npy member): they are read whole
# before anything else is checked.
TOP_MEMBER_LIMIT = {"format": 1 << 16, "version": 1 << 16, "meta": 1 << 26}
# Deflate never expands data more than 1032-fold (one 258-byte match per two bits at best).
DEFLATE_MAX_RATIO = 1032


class TraceError(UserError):
    """A trace file that cannot be used; the message names the file, layer, key and offending value."""


# --------------------------------------------------------------------------------------------------------
# In-memory representation


@dataclass(frozen=True)
class TraceLayer:
    """One layer of a trace: its metadata (``meta``, the JSON object) and its arrays.

    ``sources`` are the names of the layers feeding this one (the metadata field ``inputs``); the
    ``inputs`` property is the array of input activations (engine layers only). ``arrays`` maps array
    name -> array: a :class:`TraceArrays` for a loaded trace (each access of a large array reads it from
    the file: keep the array, not the layer, while you use it), a dict for :func:`validate_trace`'s.
    """

    name: str
    kind: str
    meta: dict
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    # -- classification
    @property
    def is_engine_layer(self) -> bool:
        return self.kind in ENGINE_KINDS

    @property
    def gated(self) -> bool:
        return bool(self.meta.get("gated", False))

    @property
    def relu(self) -> bool:
        return bool(self.meta.get("relu", False))

    @property
    def sources(self) -> list[str]:
        return list(self.meta["inputs"])

    # -- geometry
    @property
    def c_in(self) -> int:
        return self.meta["c_in"]

    @property
    def c_out(self) -> int:
        return self.meta["c_out"]

    @property
    def h(self) -> int:
        return self.meta["h"]

    @property
    def w(self) -> int:
        return self.meta["w"]

    @property
    def h_out(self) -> int:
        return self.meta["h_out"]

    @property
    def w_out(self) -> int:
        return self.meta["w_out"]

    @property
    def kernel(self) -> int:
        return self.meta.get("kernel", 1)

    @property
    def stride(self) -> int:
        return self.meta.get("stride", 1)

    @property
    def padding(self) -> int:
        return self.meta.get("padding", 0)

    @property
    def groups(self) -> int:
        return self.meta.get("groups", 1)

    @property
    def gate_groups(self) -> int:
        return self.meta.get("gate_groups", 1)

    @property
    def base_channels(self) -> int:
        """``C_b`` of a ``{"first": C_b}`` base assignment; 0 for ``"groups"`` or an ungated layer."""
        base = self.meta.get("base")
        return base["first"] if isinstance(base, dict) else 0

    @property
    def shape_in(self) -> tuple[int, int, int]:
        return (self.c_in, self.h, self.w)

    @property
    def shape_out(self) -> tuple[int, int, int]:
        return (self.c_out, self.h_out, self.w_out)

    @property
    def gate_on_fraction(self) -> float | None:
        return self.meta.get("gate_on_fraction")

    @property
    def flops_dense(self) -> float | None:
        flops = self.meta.get("flops")
        return flops["dense"] if flops else None

    @property
    def flops_gated(self) -> float | None:
        flops = self.meta.get("flops")
        return flops["gated"] if flops else None

    # -- arrays (None where the layer has none)
    @property
    def weights(self) -> np.ndarray | None:
        return self.arrays.get("weights")

    @property
    def weight_scale(self) -> np.ndarray | None:
        return self.arrays.get("weight_scale")

    @property
    def inputs(self) -> np.ndarray | None:
        return self.arrays.get("inputs")

    @property
    def input_scale(self) -> np.ndarray | None:
        return self.arrays.get("input_scale")

    @property
    def bias(self) -> np.ndarray | None:
        return self.arrays.get("bias")

    @property
    def requant_scale(self) -> np.ndarray | None:
        return self.arrays.get("requant_scale")

    @property
    def output_scale(self) -> np.ndarray | None:
        return self.arrays.get("output_scale")

    @property
    def thresholds(self) -> np.ndarray | None:
        return self.arrays.get("thresholds")

    @property
    def gates(self) -> np.ndarray | None:
        return self.arrays.get("gates")


@dataclass(frozen=True)
class Trace:
    """A validated trace: network metadata and its layers in ``layer_order``.

    A trace from :func:`load_trace` keeps its file open while it (or one of its layers) lives; ``close()``
    or a ``with`` block closes it earlier (arrays already kept stay readable, large ones no longer).
    """

    name: str
    meta: dict
    layer_order: tuple[str, ...]
    layers: dict[str, TraceLayer]
    path: str = "<trace>"
    _file: _TraceFile | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Close the trace file (a no-op for a trace validated in memory, or when already closed)."""
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def samples(self) -> int:
        return self.meta["samples"]

    @property
    def synthetic(self) -> bool:
        return self.meta["synthetic"]

    @property
    def dataset(self) -> str:
        return self.meta["dataset"]

    @property
    def flops(self) -> dict:
        return self.meta["flops"]

    def __iter__(self) -> Iterator[TraceLayer]:
        return (self.layers[name] for name in self.layer_order)

    def __len__(self) -> int:
        return len(self.layer_order)

    def __getitem__(self, name: str) -> TraceLayer:
        return self.layers[name]

    def engine_layers(self) -> list[TraceLayer]:
        return [layer for layer in self if layer.is_engine_layer]

    def gated_layers(self) -> list[TraceLayer]:
        return [layer for layer in self if layer.gated]


# --------------------------------------------------------------------------------------------------------
# Arithmetic shared by exporters, the synthetic generator and network runners


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


def layer_tile_operands(layer: TraceLayer, sample: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operands of a gated conv layer for one sample, as the engine (and the tile cutter) takes them.

    Returns ``inputs`` int8 ``[c_in, h, w]``, ``weights`` int8 ``[c_out, c_in, k, k]`` and ``thresholds``
    int64 ``[c_out]``. The layer's own padding and stride are in ``layer.padding`` / ``layer.stride``.
    """
    if layer.kind != "conv" or not layer.gated:
        raise TraceError(f"layer {layer.name!r}: kind {layer.kind!r}, gated {layer.gated}: not a gated conv")
    if layer.groups != 1:
        raise TraceError(f"layer {layer.name!r}: groups = {layer.groups}: the engine takes groups = 1 convs")
    inputs = layer.inputs  # one read: a loaded trace reads large arrays from its file on each access
    n = inputs.shape[0]
    if not isinstance(sample, (int, np.integer)) or not -n <= sample < n:
        raise TraceError(f"layer {layer.name!r}: sample {sample!r} outside the {n} stored samples")
    return (
        np.ascontiguousarray(inputs[sample]),
        np.ascontiguousarray(layer.weights),
        layer.thresholds.astype(np.int64),
    )


# --------------------------------------------------------------------------------------------------------
# Validation


class _Where:
    """Message prefix: the file, and the layer when there is one; ``prefix`` qualifies field names."""

    def __init__(self, source: str, layer: str | None = None, prefix: str = ""):
        self.source, self.layer, self.prefix = source, layer, prefix

    def fail(self, what: str) -> NoReturn:
        prefix = f"{self.source}: " + (f"layer {self.layer!r}: " if self.layer is not None else "")
        raise TraceError(prefix + what)

    def field_name(self, key: str) -> str:
        return f"metadata field '{self.prefix}{key}'"

    def sub(self, prefix: str) -> _Where:
        return _Where(self.source, self.layer, self.prefix + prefix)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_MISSING = object()


def _get(obj: Mapping, key: str, where: _Where, default: Any = _MISSING) -> Any:
    if key not in obj:
        if default is not _MISSING:
            return default
        where.fail(f"{where.field_name(key)} is missing")
    return obj[key]


def _int(
    obj: Mapping,
    key: str,
    where: _Where,
    lo: int | None = None,
    default: Any = _MISSING,
    hi: int = MAX_INT_FIELD,
) -> int:
    value = _get(obj, key, where, default)
    if not isinstance(value, int) or isinstance(value, bool):
        where.fail(f"{where.field_name(key)} = {_short(value)}: expected an integer")
    if lo is not None and value < lo:
        where.fail(f"{where.field_name(key)} = {_short(value)}: expected an integer >= {lo}")
    if value > hi:
        where.fail(f"{where.field_name(key)} = {_short(value)}: out of range (at most {hi})")
    return value


def _bool(obj: Mapping, key: str, where: _Where, default: Any = _MISSING) -> bool:
    value = _get(obj, key, where, default)
    if not isinstance(value, bool):
        where.fail(f"{where.field_name(key)} = {_short(value)}: expected true or false")
    return value


def _str(obj: Mapping, key: str, where: _Where, default: Any = _MISSING) -> str:
    value = _get(obj, key, where, default)
    if not isinstance(value, str):
        where.fail(f"{where.field_name(key)} = {_short(value)}: expected a string")
    return value


def _number(
    obj: Mapping,
    key: str,
    where: _Where,
    lo: float | None = None,
    hi: float | None = None,
    null: bool = False,
    default: Any = _MISSING,
) -> float | None:
    value = _get(obj, key, where, default)
    if value is None and null:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        expected = "a number" + (" or null" if null else "")
        where.fail(f"{where.field_name(key)} = {_short(value)}: expected {expected}")
    # Compared as Python numbers (an int of any size against a float is exact): a huge integer never
    # meets float() or math.isfinite, which raise OverflowError on it; 1e400 parses as inf.
    if not -MAX_NUMBER <= value <= MAX_NUMBER:
        where.fail(f"{where.field_name(key)} = {_short(value)}: out of range (magnitude above 2**53)")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where.fail(f"{where.field_name(key)} = {_short(value)}: must lie in [{lo}, {hi}]")
    return value


def _object(obj: Mapping, key: str, where: _Where, default: Any = _MISSING) -> dict:
    value = _get(obj, key, where, default)
    if not isinstance(value, dict):
        where.fail(f"{where.field_name(key)} = {_short(value)}: expected a JSON object")
    return value


def _pool_or_conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


class _DuplicateKey(Exception):
    """A JSON object of ``meta`` with a key twice (``json`` would keep the last one silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


class _Arrays:
    """A trace's arrays as the checks see them: the keys, each key's dtype and shape, and values on request.

    :func:`validate_trace` checks arrays in memory (:class:`_InMemory`), :func:`load_trace` an open file
    (:class:`_TraceFile`, dtype and shape from the ``.npy`` headers); the checks are the same code.
    """

    def keys(self) -> Iterable[str]:
        raise NotImplementedError

    def __contains__(self, key: str) -> bool:
        raise NotImplementedError

    def header(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        raise NotImplementedError

    def value(self, key: str, where: _Where) -> np.ndarray:
        raise NotImplementedError


class _InMemory(_Arrays):
    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self._arrays = arrays

    def keys(self) -> Iterable[str]:
        return self._arrays.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._arrays

    def header(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        arr = self._arrays[key]
        return arr.dtype, arr.shape

    def value(self, key: str, where: _Where) -> np.ndarray:
        return self._arrays[key]


def _scalar_text(arrays: _Arrays, key: str, where: _Where) -> str:
    dtype, shape = arrays.header(key)
    if dtype.kind != "U" or shape != ():
        where.fail(f"key {key!r}: dtype {dtype}, shape {shape}: expected a string scalar")
    return str(arrays.value(key, where)[()])


def _check_top(arrays: _Arrays, where: _Where) -> dict:
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
            _short(arrays.value("version", where).tolist()) if size <= 16 else f"not shown: {size} elements"
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
    try:
        meta = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        where.fail(f"key 'meta': a JSON object has the key {exc.args[0]!r} twice")
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        where.fail(f"key 'meta': not valid JSON ({exc}): {_short(text)}")
    if not isinstance(meta, dict):
        where.fail(f"key 'meta' = {_short(meta)}: expected a JSON object")
    try:  # a lone surrogate (the JSON escape "\ud800", or in the numpy string) cannot be written out
        json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        where.fail(f"key 'meta': a string holds {bad!r}, a lone surrogate (not valid Unicode)")
    except RecursionError:
        where.fail("key 'meta': JSON nested too deeply")
    return meta


def _check_network_meta(meta: dict, where: _Where) -> None:
    _str(meta, "name", where)
    _str(meta, "dataset", where)
    synthetic = _bool(meta, "synthetic", where)
    _int(meta, "num_classes", where, lo=1)
    shape = _get(meta, "input_shape", where)
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_INT_FIELD for v in shape)
    ):
        where.fail(
            f"metadata field 'input_shape' = {_short(shape)}: expected [channels, height, width] "
            f"(integers in [1, {MAX_INT_FIELD}])"
        )
    _int(meta, "samples", where, lo=1)
    accuracy = _object(meta, "accuracy", where)
    acc_where = where.sub("accuracy.")
    for key in ("float", "int8"):
        _number(accuracy, key, acc_where, 0.0, 1.0, null=synthetic)
    for key in accuracy:
        if key not in ("float", "int8"):
            _number(accuracy, key, acc_where, 0.0, 1.0, null=True)
    _number(meta, "gate_agreement", where, 0.0, 1.0, null=synthetic)
    pruning = _get(meta, "channel_pruning", where, None)
    if pruning is not None:
        if not isinstance(pruning, list) or not all(isinstance(e, dict) for e in pruning):
            where.fail(f"metadata field 'channel_pruning' = {_short(pruning)}: expected a list of objects")
        for i, entry in enumerate(pruning):
            entry_where = where.sub(f"channel_pruning[{i}].")
            _number(entry, "threshold", entry_where, 0.0, 1.0)
            _number(entry, "int8_accuracy", entry_where, 0.0, 1.0, null=True)
    flops = _object(meta, "flops", where)
    _number(flops, "dense", where.sub("flops."), lo=0)
    _number(flops, "gated", where.sub("flops."), lo=0)
    made_by = _object(meta, "made_by", where)
    made_where = where.sub("made_by.")
    _str(made_by, "command", made_where)
    seed = _get(made_by, "seed", made_where, None)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        made_where.fail(f"metadata field 'made_by.seed' = {_short(seed)}: expected an integer or null")


def _engine_limit(key: str, value: int) -> str | None:
    """Why the engine cannot take a layer's ``key`` = ``value`` (:data:`ENGINE_LIMITS`,
    :data:`ENGINE_MAX_C_IN`), as ``"'<key>' = <value>: ..."``; None when it can."""
    if key == "c_in":
        if value <= ENGINE_MAX_C_IN:
            return None
        return (
            f"'c_in' = {value}: the engine takes at most {ENGINE_MAX_C_IN} input channels (its "
            "configuration registers are 16 bits)"
        )
    lo, hi = ENGINE_LIMITS[key]
    if lo <= value <= hi:
        return None
    what = {"kernel": "kernels", "stride": "strides", "padding": "paddings", "gate_groups": "gate groups"}
    return f"{key!r} = {value}: the engine takes {what[key]} {lo}..{hi}"


def _engine_padding(padding: int, kernel: int) -> str | None:
    if padding < kernel:
        return None
    return f"'padding' = {padding}: the engine takes a padding smaller than the kernel ({kernel})"


def engine_geometry_problem(lm: Mapping) -> str | None:
    """Why the engine cannot run an engine layer of this (checked) metadata, as ``"'<field>' = <value>:
    ..."``: its geometry outside the engine's fixed limits (:data:`ENGINE_LIMITS`, :data:`ENGINE_MAX_C_IN`;
    :func:`validate_trace` refuses such a layer). None when it fits, and for non-engine layers."""
    kind = lm.get("kind")
    if kind not in ENGINE_KINDS:
        return None
    checks = [("c_in", lm["c_in"])]
    if kind == "conv":
        checks += [(key, lm.get(key, 1)) for key in ("kernel", "stride")] + [
            ("padding", lm.get("padding", 0))
        ]
        if lm.get("gated"):
            checks.append(("gate_groups", lm.get("gate_groups", 1)))
    for key, value in checks:
        problem = _engine_limit(key, value)
        if problem is not None:
            return problem
    if kind == "conv":
        return _engine_padding(lm.get("padding", 0), lm.get("kernel", 1))
    return None


def _check_layer_meta(lm: Any, where: _Where) -> None:
    if not isinstance(lm, dict):
        where.fail(f"metadata = {_short(lm)}: expected a JSON object")
    kind = _str(lm, "kind", where)
    if kind not in KINDS:
        where.fail(f"metadata field 'kind' = {_short(kind)}: expected one of {', '.join(KINDS)}")
    sources = _get(lm, "inputs", where)
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        where.fail(f"metadata field 'inputs' = {_short(sources)}: expected a non-empty list of layer names")
    c_in, c_out = _int(lm, "c_in", where, lo=1), _int(lm, "c_out", where, lo=1)
    h, w = _int(lm, "h", where, lo=1), _int(lm, "w", where, lo=1)
    h_out, w_out = _int(lm, "h_out", where, lo=1), _int(lm, "w_out", where, lo=1)

    def engine_limit(problem: str | None) -> None:
        if problem is not None:
            where.fail(f"metadata field {problem}")

    if kind in ENGINE_KINDS:
        engine_limit(_engine_limit("c_in", c_in))
    _bool(lm, "relu", where, False)
    gated = _bool(lm, "gated", where, False)
    _bool(lm, "shuffle", where, False)
    if kind in ENGINE_KINDS:
        _get(lm, "relu", where)
        _get(lm, "gated", where)
        flops = _object(lm, "flops", where)
        _number(flops, "dense", where.sub("flops."), lo=0)
        _number(flops, "gated", where.sub("flops."), lo=0)

    def expect(key: str, value: int, want: int, why: str) -> None:
        if value != want:
            where.fail(f"metadata field {key!r} = {value}: expected {want} ({why})")

    if kind in ("conv", "maxpool", "avgpool"):
        k = _int(lm, "kernel", where, lo=1)
        s = _int(lm, "stride", where, lo=1)
        p = _int(lm, "padding", where, lo=0)
        if kind == "conv":  # before the output size: a kernel the engine cannot take is the news
            for key, value in (("kernel", k), ("stride", s), ("padding", p)):
                engine_limit(_engine_limit(key, value))
            engine_limit(_engine_padding(p, k))
        want_h, want_w = _pool_or_conv_size(h, k, s, p), _pool_or_conv_size(w, k, s, p)
        why = f"h = {h}, w = {w}, kernel {k}, stride {s}, padding {p}"
        expect("h_out", h_out, want_h, why)
        expect("w_out", w_out, want_w, why)
    if kind == "conv":
        groups = _int(lm, "groups", where, lo=1)
        for key, value in (("c_in", c_in), ("c_out", c_out)):
            if value % groups:
                where.fail(f"metadata field {key!r} = {value}: not a multiple of groups = {groups}")
    if kind == "fc":
        for key, value in (("h", h), ("w", w), ("h_out", h_out), ("w_out", w_out)):
            expect(key, value, 1, "an fc layer is 1x1")
        for key, want in (("kernel", 1), ("stride", 1), ("padding", 0), ("groups", 1)):
            if key in lm:
                expect(key, _int(lm, key, where), want, "an fc layer")
    if kind in ("add", "relu", "flatten"):
        for key in ("kernel", "stride", "padding", "groups"):
            if key in lm:
                article = "an" if kind == "add" else "a"
                where.fail(f"metadata field {key!r} = {_short(lm[key])}: {article} {kind} layer has none")
    if kind in ("maxpool", "avgpool", "add", "relu"):
        expect("c_out", c_out, c_in, f"a {kind} layer keeps its channels")
    if kind in ("add", "relu"):
        expect("h_out", h_out, h, f"a {kind} layer keeps its size")
        expect("w_out", w_out, w, f"a {kind} layer keeps its size")
    if kind == "add" and len(sources) < 2:
        where.fail(f"metadata field 'inputs' = {_short(sources)}: an add layer needs at least two inputs")
    if kind == "flatten":
        expect("c_out", c_out, c_in * h * w, "flatten: c_in * h * w")
        expect("h_out", h_out, 1, "flatten")
        expect("w_out", w_out, 1, "flatten")
    if gated:
        if kind != "conv":
            where.fail(f"metadata field 'gated' = true: only conv layers can be gated, not {kind}")
        if lm.get("groups", 1) != 1:
            where.fail(f"metadata field 'groups' = {lm['groups']}: a gated conv must have groups = 1")
        g = _int(lm, "gate_groups", where, lo=1)
        engine_limit(_engine_limit("gate_groups", g))
        base = _get(lm, "base", where)
        if base == "groups":
            if g < 2:
                where.fail(f"metadata field 'gate_groups' = {g}: base \"groups\" needs gate_groups >= 2")
            for key, value in (("c_in", c_in), ("c_out", c_out)):
                if value % g:
                    where.fail(f"metadata field {key!r} = {value}: not a multiple of gate_groups = {g}")
        elif isinstance(base, dict) and set(base) == {"first"}:
            cb = base["first"]
            if g != 1:
                where.fail(
                    f"metadata field 'gate_groups' = {g}: base {{\"first\": C_b}} needs gate_groups = 1"
                )
            if not isinstance(cb, int) or isinstance(cb, bool) or not 1 <= cb < c_in:
                where.fail(
                    f"metadata field 'base.first' = {_short(cb)}: expected an integer in [1, {c_in - 1}]"
                )
        else:
            where.fail(f'metadata field \'base\' = {_short(base)}: expected "groups" or {{"first": C_b}}')
        _number(lm, "gate_on_fraction", where, 0.0, 1.0)
    elif "gate_on_fraction" in lm:  # informational on an ungated layer, but a runner reports it
        _number(lm, "gate_on_fraction", where, 0.0, 1.0, null=True)
    pruned = _get(lm, "pruned_channels", where, None)
    if pruned is not None and not (
        isinstance(pruned, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in pruned)
    ):
        where.fail(f"metadata field 'pruned_channels' = {_short(pruned)}: expected a list of integers")
    if kind in ENGINE_KINDS:
        _check_layer_flops(lm, where)


def _check_layer_flops(lm: dict, where: _Where) -> None:
    """A layer's ``flops`` against its geometry: ``dense = layer_macs``; ``gated`` between the base
    segment's share of ``dense`` (every gate off) and ``dense`` (every gate on), give or take the rounding
    of a synthetic trace's integer figure; ungated layers ``gated = dense``."""
    dense, gated = lm["flops"]["dense"], lm["flops"]["gated"]
    macs = layer_macs(lm)
    if dense != macs:
        how = "c_in * c_out" if lm["kind"] == "fc" else "kernel^2 * c_in/groups * c_out * h_out * w_out"
        where.fail(f"metadata field 'flops.dense' = {_short(dense)}: expected {macs} ({how})")
    if lm.get("gated"):
        base = lm["base"]
        share = base["first"] / lm["c_in"] if isinstance(base, dict) else 1 / lm["gate_groups"]
        why = f"its base segment, {share:.4g} of the layer, always computed"
    else:
        share, why = 1.0, "an ungated layer computes every MAC"
    slack = 0.5 + 1e-9 * macs
    if not macs * share - slack <= gated <= macs + slack:
        low = macs * share
        where.fail(
            f"metadata field 'flops.gated' = {_short(gated)}: expected "
            + (f"{macs}" if share == 1.0 else f"a number from {low:.6g} to {macs}")
            + f" (flops.dense = {macs}; {why})"
        )


def _check_network_flops(meta: dict, layers: list[dict], where: _Where) -> None:
    """``flops.dense`` and ``flops.gated`` are the sums of the engine layers' (up to float rounding)."""
    engine = [lm for lm in layers if lm["kind"] in ENGINE_KINDS]
    if not engine:
        where.fail(
            f"metadata field 'layers': no {' or '.join(ENGINE_KINDS)} layer, nothing for the engine to run"
        )
    for key in ("dense", "gated"):
        total = math.fsum(lm["flops"][key] for lm in engine)
        given = meta["flops"][key]
        if abs(given - total) > 1e-9 * total + 1e-6:
            where.fail(
                f"metadata field 'flops.{key}' = {_short(given)}: expected {total:.15g}, the sum of the "
                f"{len(engine)} engine layers' flops.{key}"
            )


def _expected_arrays(lm: dict, n: int) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """array name -> (allowed dtypes, shape) of an engine layer."""
    c_in, c_out = lm["c_in"], lm["c_out"]
    if lm["kind"] == "fc":
        weights_shape: tuple[int, ...] = (c_out, c_in)
        inputs_shape: tuple[int, ...] = (n, c_in)
    else:
        k = lm["kernel"]
        weights_shape = (c_out, c_in // lm["groups"], k, k)
        inputs_shape = (n, c_in, lm["h"], lm["w"])
    spec = {
        "weights": (("int8",), weights_shape),
        "weight_scale": (("float32",), (c_out,)),
        "inputs": (("int8",), inputs_shape),
        "input_scale": (("float32",), ()),
        "bias": (("int32",), (c_out,)),
        "requant_scale": (("float32",), (c_out,)),
        "output_scale": (("float32",), ()),
    }
    if lm.get("gated"):
        spec["thresholds"] = (("int32", "int64"), (c_out,))
        spec["gates"] = (("bool",), (n, c_out, lm["h_out"], lm["w_out"]))
    return spec


def _check_arrays(name: str, lm: dict, arrays: _Arrays, n: int, where: _Where) -> None:
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


def _check(arrays: _Arrays, where: _Where) -> tuple[dict, dict[str, dict[str, str]]]:
    """Every check of docs/trace-format.md; returns the metadata and, per layer, array name -> key."""
    meta = _check_top(arrays, where)
    _check_network_meta(meta, where)
    order = _get(meta, "layer_order", where)
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        where.fail(f"metadata field 'layer_order' = {_short(order)}: expected a list of layer names")
    layers_meta = _object(meta, "layers", where)
    seen: set[str] = set()
    for name in order:
        if name in seen:
            where.fail(f"metadata field 'layer_order': layer {name!r} listed twice")
        if not name or "/" in name or name == "input" or not name.isprintable():
            where.fail(
                f"metadata field 'layer_order': layer name {name!r} (empty, 'input', with '/' or with a "
                "control or other non-printable character)"
            )
        seen.add(name)
        if name not in layers_meta:
            where.fail(f"metadata field 'layer_order' names layer {name!r}, which has no entry in 'layers'")
    for name in layers_meta:
        if name not in seen:
            where.fail(f"metadata field 'layers' has layer {name!r}, which is not in 'layer_order'")
    input_shape = tuple(meta["input_shape"])
    n = meta["samples"]

    # Layer metadata, graph order and shapes along the graph.
    out_shape: dict[str, tuple[int, int, int]] = {"input": input_shape}  # type: ignore[dict-item]
    for name in order:
        lw = _Where(where.source, name)
        lm = layers_meta[name]
        _check_layer_meta(lm, lw)
        for src in lm["inputs"]:
            if src not in out_shape:
                later = src in seen
                lw.fail(
                    f"metadata field 'inputs' names {src!r}, which is "
                    + ("not an earlier layer (it comes later in 'layer_order')" if later else "no layer")
                )
            if out_shape[src] != (lm["c_in"], lm["h"], lm["w"]):
                lw.fail(
                    f"metadata fields 'c_in', 'h', 'w' = {lm['c_in']}x{lm['h']}x{lm['w']}: its input "
                    f"{src!r} gives {'x'.join(map(str, out_shape[src]))}"
                )
        out_shape[name] = (lm["c_out"], lm["h_out"], lm["w_out"])
    _check_network_flops(meta, [layers_meta[name] for name in order], where)

    # Arrays: every key known, every engine layer complete.
    per_layer: dict[str, dict[str, str]] = {name: {} for name in order}
    for key in arrays.keys():
        if key in TOP_KEYS:
            continue
        if not key.startswith(LAYER_PREFIX) or key.count("/") < 2:
            where.fail(f"key {key!r}: unknown key (expected format, version, meta or layer/<name>/<array>)")
        name, _, array = key[len(LAYER_PREFIX) :].rpartition("/")
        if name not in per_layer:
            where.fail(f"key {key!r}: layer {name!r} is not in the metadata")
        lm = layers_meta[name]
        if lm["kind"] not in ENGINE_KINDS:
            _Where(where.source, name).fail(f"key {key!r}: a {lm['kind']} layer stores no arrays")
        if array not in _expected_arrays(lm, n):
            _Where(where.source, name).fail(
                f"key {key!r}: unknown array {array!r} for a{' gated' if lm.get('gated') else 'n ungated'} "
                f"{lm['kind']} layer"
            )
        per_layer[name][array] = key
    for name in order:
        lm = layers_meta[name]
        if lm["kind"] in ENGINE_KINDS:
            _check_arrays(name, lm, arrays, n, _Where(where.source, name))
    return meta, per_layer


def _build(
    meta: dict, arrays: Mapping[str, Mapping[str, np.ndarray]], source: str, file: _TraceFile | None = None
) -> Trace:
    layers = {
        name: TraceLayer(
            name=name, kind=meta["layers"][name]["kind"], meta=meta["layers"][name], arrays=named
        )
        for name, named in arrays.items()
    }
    order = tuple(meta["layer_order"])
    return Trace(name=meta["name"], meta=meta, layer_order=order, layers=layers, path=source, _file=file)


def validate_trace(arrays: Mapping[str, np.ndarray], source: str = "<trace>") -> Trace:
    """Check the arrays of a trace (key -> array, as in the ``.npz``) and return the :class:`Trace`.

    Raises :class:`TraceError` naming ``source``, the layer, the key and the offending value. The layers'
    ``arrays`` are dicts of the arrays given.
    """
    where = _Where(str(source))
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            where.fail(f"key {key!r}: a {type(arr).__name__}, expected a numpy array")
        if arr.dtype.hasobject:
            where.fail(
                f"key {key!r}: an object array (pickled Python objects); traces hold plain arrays only"
            )
    meta, per_layer = _check(_InMemory(arrays), where)
    named = {name: {array: arrays[key] for array, key in keys.items()} for name, keys in per_layer.items()}
    return _build(meta, named, str(source))


# --------------------------------------------------------------------------------------------------------
# Reading and writing

# What zipfile, zlib and numpy raise on a damaged zip or member (OSError is "cannot read the file").
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, KeyError, RuntimeError, NotImplementedError, ValueError)
_CHUNK = 1 << 16


def _open_zip(fh: Any, where: _Where) -> zipfile.ZipFile:
    """The zip of an open file, refusing what ``np.load`` would not read as a ``.npz``."""
    try:
        head = fh.read(len(np.lib.format.MAGIC_PREFIX))
        if not head:
            where.fail("corrupt or truncated file (EOFError: no data in the file)")
        if head.startswith(np.lib.format.MAGIC_PREFIX):
            where.fail("a single .npy array, not a trace (.npz)")
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # np.load's test for a zip
            where.fail(f"not a trace file (not a zip of .npy arrays: it starts with {head!r})")
        fh.seek(0)
        return zipfile.ZipFile(fh)
    except TraceError:
        raise
    except OSError as exc:
        where.fail(f"cannot read the file ({exc.strerror or exc})")
    except _DAMAGE as exc:
        where.fail(f"corrupt or truncated file ({type(exc).__name__}: {exc})")


def _open_regular_file(path: str | os.PathLike, where: _Where) -> Any:
    """The file at ``path``, open for reading; anything but a regular file (a FIFO, which would block
    until a writer comes, a device such as /dev/zero, a directory) is refused without reading it."""
    try:
        st = os.stat(path)
    except OSError as exc:
        where.fail(f"cannot read the file ({exc.strerror or exc})")
    except ValueError as exc:  # a NUL in the path
        where.fail(f"cannot read the file ({exc})")
    if not stat.S_ISREG(st.st_mode):
        where.fail(f"cannot read the file (not a regular file: {_file_kind(st.st_mode)})")
    try:
        # O_NONBLOCK: should the path become a FIFO after the stat, opening it does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        where.fail(f"cannot read the file ({exc.strerror or exc})")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            where.fail(f"cannot read the file (not a regular file: {_file_kind(st.st_mode)})")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "another kind of file")


def _close_handles(zf: zipfile.ZipFile, fh: Any) -> None:
    zf.close()
    fh.close()


class _Npy(NamedTuple):
    """A ``.npy`` member's header: what it holds and where its data starts in the uncompressed member."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_start: int

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)


def _read_npy_header(fp: Any, key: str, where: _Where) -> _Npy:
    """Parse the ``.npy`` header at the start of an open member (numpy's public readers); read no data."""
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError:
        where.fail(f"key {key!r}: a zip member that is not a .npy array")
    if version not in ((1, 0), (2, 0)):
        where.fail(f"key {key!r}: .npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read(fp)
    except (ValueError, SyntaxError, TypeError, tokenize.TokenError) as exc:  # numpy tokenizes the header
        where.fail(f"key {key!r}: not a readable array (bad .npy header: {exc})")
    if dtype.hasobject:
        where.fail(
            f"key {key!r}: an object array (pickled Python objects), refused: traces are read with "
            "allow_pickle=False"
        )
    return _Npy(dtype, tuple(shape), bool(fortran_order), fp.tell())


def _read_npy_data(fp: Any, npy: _Npy) -> np.ndarray:
    """The array after the header, read in chunks straight into it (no second full-size buffer)."""
    nbytes = npy.nbytes
    if nbytes == 0:
        return np.empty(npy.shape, npy.dtype, order="F" if npy.fortran_order else "C")
    raw = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(raw)
    done = 0
    while done < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - done))
        if not chunk:
            raise EOFError(f"the member ends after {done} of its {nbytes} bytes of array data")
        view[done : done + len(chunk)] = chunk
        done += len(chunk)
    while fp.read(_CHUNK):  # on to the member's end, where zipfile checks the CRC
        pass
    arr = raw.view(npy.dtype)
    return arr.reshape(npy.shape[::-1]).transpose() if npy.fortran_order else arr.reshape(npy.shape)


class _TraceFile(_Arrays):
    """An open trace file: every member's ``.npy`` header, read at open; arrays read on request.

    Reads hold a lock (several threads may read layers). Arrays outside :data:`LARGE_ARRAYS` are kept
    once read; large ones are read again on every request. The file closes with :meth:`close` or when
    nothing refers to this object any more.
    """

    def __init__(self, path: str | os.PathLike, source: str):
        self.source = source
        self.closed = False
        self._lock = threading.Lock()
        self._members: dict[str, tuple[zipfile.ZipInfo, _Npy]] = {}
        self._kept: dict[str, np.ndarray] = {}
        where = _Where(source)
        fh = _open_regular_file(path, where)
        zf = None
        try:
            self._size = os.fstat(fh.fileno()).st_size
            zf = _open_zip(fh, where)
            for info in zf.infolist():
                self._add_member(zf, info, where)
        except BaseException:
            if zf is not None:
                zf.close()
            fh.close()
            raise
        self._zip = zf
        self._finalizer = weakref.finalize(self, _close_handles, zf, fh)

    def _add_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: _Where) -> None:
        """Check one member's sizes and ``.npy`` header (no array data is read) and record it."""
        name = info.filename
        key = name[:-4] if name.endswith(".npy") else name  # the key np.load gives it
        if key in self._members:
            where.fail(f"key {key!r}: stored twice in the zip")
        # Sizes from the zip's directory, before anything is read: a member is read into one buffer of
        # its size, so a claim its compressed data cannot back (a zip bomb, a forged size) is refused here.
        methods = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
        if info.compress_type not in methods:
            where.fail(
                f"key {key!r}: zip compression method {info.compress_type}, expected stored (0) or deflated "
                "(8), as numpy writes"
            )
        if info.compress_size > self._size:
            where.fail(
                f"key {key!r}: corrupt or truncated file (the zip says the member takes {info.compress_size} "
                f"bytes, the file has {self._size})"
            )
        most = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else DEFLATE_MAX_RATIO)
        if info.file_size > most:
            where.fail(
                f"key {key!r}: corrupt file (the zip says the member holds {info.file_size} bytes, more "
                f"than its {info.compress_size} {methods[info.compress_type]} bytes can give)"
            )
        limit = TOP_MEMBER_LIMIT.get(key)
        if limit is not None and info.file_size > limit:
            where.fail(
                f"key {key!r}: {info.file_size} bytes, more than the {limit} a trace's {key!r} may take"
            )
        try:
            with zf.open(info) as fp:
                npy = _read_npy_header(fp, key, where)
        except TraceError:
            raise
        except OSError as exc:
            where.fail(f"key {key!r}: cannot read the file ({exc.strerror or exc})")
        except _DAMAGE as exc:
            where.fail(f"key {key!r}: corrupt or truncated file ({type(exc).__name__}: {exc})")
        want = npy.data_start + npy.nbytes
        if info.file_size != want:  # np.save writes exactly the header and the data, nothing after
            what = "truncated file" if info.file_size < want else "file (bytes after the array's data)"
            where.fail(
                f"key {key!r}: corrupt or {what}: the member holds {info.file_size} bytes, its .npy header "
                f"says {want} ({npy.data_start} of header, {npy.nbytes} of data)"
            )
        self._members[key] = (info, npy)

    def keys(self) -> Iterable[str]:
        return self._members.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def header(self, key: str) -> tuple[np.dtype, tuple[int, ...]]:
        npy = self._members[key][1]
        return npy.dtype, npy.shape

    def value(self, key: str, where: _Where) -> np.ndarray:
        """The array of ``key``, read from the file (or kept from an earlier read of a small array)."""
        info, npy = self._members[key]
        keep = key.rpartition("/")[2] not in LARGE_ARRAYS
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                return kept
            if self.closed:
                where.fail(f"key {key!r}: the trace file is closed (Trace.close), its arrays cannot be read")
            try:
                with self._zip.open(info) as fp:
                    now = _read_npy_header(fp, key, where)
                    if now != npy:
                        where.fail(f"key {key!r}: its .npy header changed since the file was loaded")
                    arr = _read_npy_data(fp, npy)
            except TraceError:
                raise
            except OSError as exc:
                where.fail(f"key {key!r}: cannot read the file ({exc.strerror or exc})")
            except _DAMAGE as exc:
                where.fail(f"key {key!r}: corrupt or truncated file ({type(exc).__name__}: {exc})")
            except MemoryError:
                where.fail(f"key {key!r}: not enough memory to read its {npy.nbytes} bytes")
            if keep:
                self._kept[key] = arr
        return arr

    def verify(self, where: _Where) -> None:
        """Read every member's data to its end, where zipfile checks the CRC; keep nothing."""
        with self._lock:
            for key, (info, _) in self._members.items():
                try:
                    with self._zip.open(info) as fp:
                        while fp.read(_CHUNK):
                            pass
                except OSError as exc:
                    where.fail(f"key {key!r}: cannot read the file ({exc.strerror or exc})")
                except _DAMAGE as exc:
                    where.fail(f"key {key!r}: corrupt or truncated file ({type(exc).__name__}: {exc})")

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._finalizer()


class TraceArrays(Mapping[str, np.ndarray]):
    """The arrays of one layer of a loaded trace (array name -> array), read from the open file on access.

    Every access of a large array (``inputs``, ``gates``, ``weights``) reads it from the file anew and
    nothing keeps it; the small ones (per-channel vectors, scalars) are kept once read. ``header(name)``
    and ``nbytes`` come from the ``.npy`` headers without reading data. A member found damaged only now
    raises :class:`TraceError` naming the file, the layer and the key.
    """

    def __init__(self, file: _TraceFile, layer: str, keys: Mapping[str, str]):
        self._file = file
        self._where = _Where(file.source, layer)
        self._keys = dict(keys)  # array name -> key in the file

    def __getitem__(self, name: str) -> np.ndarray:
        return self._file.value(self._keys[name], self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def header(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """``(dtype, shape)`` of an array, from its ``.npy`` header."""
        return self._file.header(self._keys[name])

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays once read (from the headers: nothing is read)."""
        return sum(dtype.itemsize * math.prod(shape) for dtype, shape in map(self.header, self._keys))

    def __repr__(self) -> str:
        return f"<TraceArrays of layer {self._where.layer!r} in {self._file.source}: {', '.join(self._keys)}>"


def load_trace(path: str | os.PathLike, verify_data: bool = True) -> Trace:
    """Open and validate a trace file; the layers' arrays are read from it on access (:class:`TraceArrays`).

    The checks read the ``.npy`` headers of all members and the values of the small arrays they look at
    (``format``, ``version``, ``meta``, scales, thresholds); no pickled data is ever read. With
    ``verify_data`` (the default) every member's data is also read once to its end, so damaged data (a bad
    CRC, a broken compressed stream) is refused here rather than when a layer is used (about 0.1 s per
    10 MB). The file stays open while the trace or one of its layers lives (or until ``Trace.close()``).
    """
    source = str(path)
    file = _TraceFile(path, source)
    try:
        meta, per_layer = _check(file, _Where(source))
        if verify_data:
            file.verify(_Where(source))
    except BaseException:
        file.close()
        raise
    named = {name: TraceArrays(file, name, keys) for name, keys in per_layer.items()}
    return _build(meta, named, source, file)


def _keys(
    meta: Mapping, arrays: Mapping[str, Mapping[str, np.ndarray]], source: str
) -> dict[str, np.ndarray]:
    try:
        text = json.dumps(meta, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TraceError(f"{source}: key 'meta': cannot be written as JSON ({exc})") from None
    keys: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "meta": np.array(text),
    }
    for layer, named in arrays.items():
        for array, value in named.items():
            keys[f"{LAYER_PREFIX}{layer}/{array}"] = np.asarray(value)
    return keys


def save_trace(
    path: str | os.PathLike, meta: Mapping, arrays: Mapping[str, Mapping[str, np.ndarray]]
) -> Trace:
    """Validate and write a trace; returns it as :func:`load_trace` would.

    ``meta`` is the JSON metadata (see :func:`make_meta`); ``arrays`` maps layer name -> array name ->
    array. The file is a deflated zip of ``.npy`` members (what ``np.savez_compressed`` writes) with fixed
    member timestamps, written to a temporary file next to ``path`` and moved into place with
    ``os.replace``.
    """
    path = Path(path)
    keys = _keys(meta, arrays, str(path))
    trace = validate_trace(keys, str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # as a plain open would create it, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for key, value in keys.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, value, allow_pickle=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return trace


def make_meta(
    *,
    name: str,
    dataset: str,
    synthetic: bool,
    num_classes: int,
    input_shape: tuple[int, int, int] | list[int],
    samples: int,
    layer_order: list[str],
    layers: Mapping[str, Mapping],
    command: str,
    seed: int | None,
    accuracy: Mapping[str, float | None] | None = None,
    gate_agreement: float | None = None,
    channel_pruning: list[Mapping] | None = None,
    flops: Mapping[str, float] | None = None,
    date: str | None = None,
    **extra: Any,
) -> dict:
    """The ``meta`` JSON object of a trace.

    ``flops`` defaults to the sums of the layers' ``flops``; ``accuracy`` to nulls (allowed for synthetic
    traces only); ``date`` to ``SOURCE_DATE_EPOCH`` when set, else today (UTC), as ISO ``YYYY-MM-DD``.
    ``extra`` keys are added to ``made_by``.
    """
    from spec import __version__

    if flops is None:
        engine = [lm for lm in layers.values() if lm.get("kind") in ENGINE_KINDS]
        flops = {
            "dense": sum(lm["flops"]["dense"] for lm in engine),
            "gated": sum(lm["flops"]["gated"] for lm in engine),
        }
    if date is None:
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = (
            datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
            if epoch and epoch.isdigit()
            else datetime.datetime.now(datetime.UTC)
        )
        date = when.date().isoformat()
    meta: dict[str, Any] = {
        "name": name,
        "dataset": dataset,
        "synthetic": bool(synthetic),
        "num_classes": int(num_classes),
        "input_shape": [int(v) for v in input_shape],
        "samples": int(samples),
        "accuracy": dict(accuracy)
        if accuracy is not None
        else {"float": None, "int8": None, "dense_float": None},
        "gate_agreement": gate_agreement,
    }
    if channel_pruning is not None:
        meta["channel_pruning"] = [dict(e) for e in channel_pruning]
    meta["flops"] = dict(flops)
    meta["made_by"] = {
        "command": command,
        "seed": seed,
        "date": date,
        "package_version": __version__,
        **extra,
    }
    meta["layer_order"] = list(layer_order)
    meta["layers"] = {name: dict(layers[name]) for name in layer_order}
    return meta
