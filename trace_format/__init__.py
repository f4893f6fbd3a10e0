"""The layer-trace file format (docs/trace-format.md, version 1): what a trained or synthetic network leaves
for the simulator, one ``.npz`` file per network.

Modules, each for one thing the format needs:

* :mod:`~trace_format.model`: the data model, :class:`Trace` and :class:`TraceLayer` with their typed
  metadata (:class:`NetworkMeta`, :class:`LayerMeta`, :class:`Flops`);
* :mod:`~trace_format.metadata`: the ``meta`` JSON parsed strictly and checked, building that metadata;
* :mod:`~trace_format.validate`: the checks of a whole trace (keys, metadata, arrays), :func:`validate_trace`;
* :mod:`~trace_format.reader`: :func:`load_trace` and the lazily read arrays of a loaded trace;
* :mod:`~trace_format.writer`: :func:`save_trace` and :func:`make_meta`;
* :mod:`~trace_format.arithmetic`: the integer semantics shared by writers and runners (:func:`requantize`,
  :func:`layer_macs`, :func:`gated_macs`);
* :mod:`~trace_format.errors`: :class:`TraceError`, every refusal.

The package imports only numpy, the standard library, ``spec`` and ``outfiles`` (never torch, never the
simulator): ``from trace_format import load_trace``.
"""

from trace_format.arithmetic import gated_macs, layer_macs, requantize
from trace_format.errors import TraceError
from trace_format.metadata import ENGINE_LIMITS, ENGINE_MAX_C_IN, engine_geometry_problem
from trace_format.model import (
    ENGINE_KINDS,
    FORMAT,
    KINDS,
    VERSION,
    Flops,
    LayerMeta,
    NetworkMeta,
    Trace,
    TraceLayer,
    layer_tile_operands,
)
from trace_format.reader import TraceArrays, load_trace
from trace_format.validate import validate_trace
from trace_format.writer import make_meta, save_trace

__all__ = [
    "ENGINE_KINDS",
    "ENGINE_LIMITS",
    "ENGINE_MAX_C_IN",
    "FORMAT",
    "KINDS",
    "VERSION",
    "Flops",
    "LayerMeta",
    "NetworkMeta",
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
