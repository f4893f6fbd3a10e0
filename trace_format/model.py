"""The data model of a trace (docs/trace-format.md, version 1): what :func:`~trace_format.load_trace` and
:func:`~trace_format.validate_trace` return.

A :class:`Trace` holds the network's metadata (:class:`NetworkMeta`) and its layers in ``layer_order``;
a :class:`TraceLayer` holds its metadata (:class:`LayerMeta`) and its arrays. The metadata classes are
frozen and typed, built by the validator from JSON it has checked (``from_json`` assumes that: it applies
the format's defaults, it checks nothing); the JSON object itself stays available as ``meta.json`` for the
informational fields the format does not type (``made_by`` extras, ``pruned_channels``, ...) and for
writing a trace back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from trace_format.arithmetic import layer_macs
from trace_format.errors import TraceError

if TYPE_CHECKING:
    from trace_format.reader import TraceFile

FORMAT = "cgnet-trace"
VERSION = 1
ENGINE_KINDS = ("conv", "fc")
OTHER_KINDS = ("maxpool", "avgpool", "add", "relu", "flatten")
KINDS = ENGINE_KINDS + OTHER_KINDS
TOP_KEYS = ("format", "version", "meta")
LAYER_PREFIX = "layer/"


@dataclass(frozen=True)
class Flops:
    """MACs per image: ``dense`` (every MAC) and ``gated`` (fractional: a mean over gate decisions)."""

    dense: float
    gated: float

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Flops:
        return cls(dense=obj["dense"], gated=obj["gated"])


@dataclass(frozen=True)
class NetworkMeta:
    """The network-level metadata of a trace (the ``meta`` JSON object less its layers).

    ``accuracy``, ``made_by`` and each ``channel_pruning`` entry are the JSON objects as stored (their
    informational entries included); ``channel_pruning`` is empty where the trace has none.
    """

    name: str
    dataset: str
    synthetic: bool
    num_classes: int
    input_shape: tuple[int, int, int]
    samples: int
    accuracy: dict[str, float | None]
    gate_agreement: float | None
    flops: Flops
    made_by: dict[str, Any]
    channel_pruning: list[dict[str, Any]] = field(default_factory=list)
    json: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, meta: dict[str, Any]) -> NetworkMeta:
        """The metadata of a checked ``meta`` object (no checks here: the validator's are done)."""
        c, h, w = meta["input_shape"]
        return cls(
            name=meta["name"],
            dataset=meta["dataset"],
            synthetic=meta["synthetic"],
            num_classes=meta["num_classes"],
            input_shape=(c, h, w),
            samples=meta["samples"],
            accuracy=meta["accuracy"],
            gate_agreement=meta.get("gate_agreement"),
            flops=Flops.from_json(meta["flops"]),
            made_by=meta["made_by"],
            channel_pruning=meta.get("channel_pruning") or [],
            json=meta,
        )


@dataclass(frozen=True)
class LayerMeta:
    """One layer's metadata (``meta.layers[name]``), with the format's defaults filled in.

    ``sources`` is the JSON field ``inputs`` (the layers feeding this one). ``kernel``, ``stride``,
    ``padding`` and ``groups`` default to 1/1/0/1 where a kind has none; ``base_channels`` is ``C_b`` of a
    ``{"first": C_b}`` base assignment, 0 for ``"groups"`` and for ungated layers; ``flops`` is None on
    non-engine layers.
    """

    kind: str
    sources: tuple[str, ...]
    c_in: int
    c_out: int
    h: int
    w: int
    h_out: int
    w_out: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    relu: bool = False
    gated: bool = False
    shuffle: bool = False
    gate_groups: int = 1
    base_channels: int = 0
    gate_on_fraction: float | None = None
    flops: Flops | None = None
    json: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, lm: Mapping[str, Any]) -> LayerMeta:
        """The metadata of a layer's JSON object, defaults applied (no checks: the validator's are done;
        a layer built in memory, never validated, gets its values as they are)."""
        base, flops = lm.get("base"), lm.get("flops")
        return cls(
            kind=lm["kind"],
            sources=tuple(lm["inputs"]),
            c_in=lm["c_in"],
            c_out=lm["c_out"],
            h=lm["h"],
            w=lm["w"],
            h_out=lm["h_out"],
            w_out=lm["w_out"],
            kernel=lm.get("kernel", 1),
            stride=lm.get("stride", 1),
            padding=lm.get("padding", 0),
            groups=lm.get("groups", 1),
            relu=bool(lm.get("relu", False)),
            gated=bool(lm.get("gated", False)),
            shuffle=bool(lm.get("shuffle", False)),
            gate_groups=lm.get("gate_groups", 1),
            base_channels=base["first"] if isinstance(base, dict) else 0,
            gate_on_fraction=lm.get("gate_on_fraction"),
            flops=Flops.from_json(flops) if flops else None,
            json=lm,
        )

    @property
    def is_engine_layer(self) -> bool:
        return self.kind in ENGINE_KINDS

    @property
    def shape_in(self) -> tuple[int, int, int]:
        return (self.c_in, self.h, self.w)

    @property
    def shape_out(self) -> tuple[int, int, int]:
        return (self.c_out, self.h_out, self.w_out)

    @property
    def dense_macs(self) -> int:
        """Dense MACs per image of an engine layer (:func:`~trace_format.layer_macs`)."""
        return layer_macs(self.json)


class _LayerArray:
    """A :class:`TraceLayer` attribute that is the layer's array of that name, None where it has none.

    Each access goes to ``layer.arrays``: for a loaded trace a large array is read from the file anew.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, layer: TraceLayer | None, owner: type | None = None) -> np.ndarray | None:
        if layer is None:
            return self  # type: ignore[return-value]  # the class attribute itself
        return layer.arrays.get(self.name)


@dataclass(frozen=True)
class TraceLayer:
    """One layer of a trace: its metadata (:class:`LayerMeta`) and its arrays.

    ``arrays`` maps array name -> array: a :class:`~trace_format.reader.TraceArrays` for a loaded trace
    (each access of a large array reads it from the file: keep the array, not the layer, while you use
    it), a dict for :func:`~trace_format.validate_trace`'s. The arrays of the format are also attributes
    (``layer.weights``, ``layer.inputs``, ..., None where the layer has none).
    """

    name: str
    meta: LayerMeta
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)

    # Not dataclass fields (no annotation): descriptors reading ``arrays``.
    weights = _LayerArray()
    weight_scale = _LayerArray()
    inputs = _LayerArray()
    input_scale = _LayerArray()
    bias = _LayerArray()
    requant_scale = _LayerArray()
    output_scale = _LayerArray()
    thresholds = _LayerArray()
    gates = _LayerArray()


@dataclass(frozen=True)
class Trace:
    """A validated trace: network metadata and its layers in ``layer_order``.

    A trace from :func:`~trace_format.load_trace` keeps its file open while it (or one of its layers)
    lives; ``close()`` or a ``with`` block closes it earlier (arrays already kept stay readable, large
    ones no longer).
    """

    name: str
    meta: NetworkMeta
    layer_order: tuple[str, ...]
    layers: dict[str, TraceLayer]
    path: str = "<trace>"
    _file: TraceFile | None = field(default=None, repr=False, compare=False)

    def close(self) -> None:
        """Close the trace file (a no-op for a trace validated in memory, or when already closed)."""
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TraceLayer]:
        return (self.layers[name] for name in self.layer_order)

    def __len__(self) -> int:
        return len(self.layer_order)

    def __getitem__(self, name: str) -> TraceLayer:
        return self.layers[name]

    def engine_layers(self) -> list[TraceLayer]:
        return [layer for layer in self if layer.meta.is_engine_layer]

    def gated_layers(self) -> list[TraceLayer]:
        return [layer for layer in self if layer.meta.gated]


def layer_tile_operands(layer: TraceLayer, sample: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Operands of a gated conv layer for one sample, as the engine (and the tile cutter) takes them.

    Returns ``inputs`` int8 ``[c_in, h, w]``, ``weights`` int8 ``[c_out, c_in, k, k]`` and ``thresholds``
    int64 ``[c_out]``. The layer's own padding and stride are in ``layer.meta``.
    """
    meta = layer.meta
    if meta.kind != "conv" or not meta.gated:
        raise TraceError(f"layer {layer.name!r}: kind {meta.kind!r}, gated {meta.gated}: not a gated conv")
    if meta.groups != 1:
        raise TraceError(f"layer {layer.name!r}: groups = {meta.groups}: the engine takes groups = 1 convs")
    inputs = layer.inputs  # one read: a loaded trace reads large arrays from its file on each access
    n = inputs.shape[0]
    if not isinstance(sample, (int, np.integer)) or not -n <= sample < n:
        raise TraceError(f"layer {layer.name!r}: sample {sample!r} outside the {n} stored samples")
    return (
        np.ascontiguousarray(inputs[sample]),
        np.ascontiguousarray(layer.weights),
        layer.thresholds.astype(np.int64),
    )
