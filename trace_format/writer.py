"""Writing a trace: :func:`save_trace` and the ``meta`` object's builder :func:`make_meta`.

:func:`save_trace` validates first (:func:`~trace_format.validate_trace`, the reader's checks), then writes
a deflated zip of ``.npy`` members with ``np.lib.format.write_array`` to a temporary file in the target's
directory and moves it into place with ``os.replace`` (a crash never leaves half a trace). Every member gets
a fixed timestamp, so the same content always gives the same bytes.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from outfiles.folder import file_mode
from trace_format.errors import TraceError
from trace_format.model import ENGINE_KINDS, FORMAT, LAYER_PREFIX, VERSION, Trace
from trace_format.validate import validate_trace

__all__ = ["ZIP_DATE", "make_meta", "save_trace"]

# Fixed zip member timestamp: the same trace content always gives the same file bytes.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


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
