"""The ``meta`` JSON of a trace: parsed strictly, every field checked (docs/trace-format.md, "``meta``"), and
turned into the typed :class:`~trace_format.model.NetworkMeta` and :class:`~trace_format.model.LayerMeta`.

:func:`parse_meta` reads the JSON text (no ``NaN``/``Infinity``, no key twice, no lone surrogate);
:func:`check_metadata` checks the network fields, ``layer_order``, every layer's fields, kind rules and
engine limits, the shapes along the graph and the ``flops`` figures, and returns the metadata objects.
Every refusal is a :class:`~trace_format.errors.TraceError` naming the file, the layer and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, NoReturn

from spec.config import FIELD_LIMITS
from spec.tile import REGISTER_LIMIT, conv_output_size
from trace_format.arithmetic import layer_macs
from trace_format.errors import Where, short
from trace_format.model import ENGINE_KINDS, KINDS, LayerMeta, NetworkMeta

__all__ = [
    "ENGINE_LIMITS",
    "ENGINE_MAX_C_IN",
    "MAX_INT_FIELD",
    "MAX_NUMBER",
    "check_metadata",
    "engine_geometry_problem",
    "parse_meta",
]

INT32_MAX = (1 << 31) - 1
# Largest integer metadata field (channels, sizes, kernel, samples, ...): int32, so that every product of
# them numpy forms stays within int64.
MAX_INT_FIELD = INT32_MAX
# Largest magnitude of a metadata number (accuracies, fractions, MACs): 2**53, so that it converts to a
# float exactly and sums of them cannot overflow.
MAX_NUMBER = 1 << 53
# The engine's fixed limits on a layer's geometry: EngineConfig's field limits for kernel, stride, padding
# and groups (a gated layer's G), and the configuration registers' limit for c_in, which every tile of a
# layer takes whole.
ENGINE_LIMITS = {
    "kernel": FIELD_LIMITS["kernel"],
    "stride": FIELD_LIMITS["stride"],
    "padding": FIELD_LIMITS["padding"],
    "gate_groups": FIELD_LIMITS["groups"],
}
ENGINE_MAX_C_IN = REGISTER_LIMIT


# --------------------------------------------------------------------------------------------------------
# Typed reads of one JSON field: the value, or a refusal naming the field


_MISSING = object()


def _get(obj: Mapping, key: str, where: Where, default: Any = _MISSING) -> Any:
    if key not in obj:
        if default is not _MISSING:
            return default
        where.fail(f"{where.field_name(key)} is missing")
    return obj[key]


def _int(
    obj: Mapping,
    key: str,
    where: Where,
    lo: int | None = None,
    default: Any = _MISSING,
    hi: int = MAX_INT_FIELD,
) -> int:
    value = _get(obj, key, where, default)
    if not isinstance(value, int) or isinstance(value, bool):
        where.fail(f"{where.field_name(key)} = {short(value)}: expected an integer")
    if lo is not None and value < lo:
        where.fail(f"{where.field_name(key)} = {short(value)}: expected an integer >= {lo}")
    if value > hi:
        where.fail(f"{where.field_name(key)} = {short(value)}: out of range (at most {hi})")
    return value


def _typed(obj: Mapping, key: str, where: Where, kind: type, expected: str, default: Any = _MISSING) -> Any:
    value = _get(obj, key, where, default)
    if not isinstance(value, kind):
        where.fail(f"{where.field_name(key)} = {short(value)}: expected {expected}")
    return value


def _bool(obj: Mapping, key: str, where: Where, default: Any = _MISSING) -> bool:
    return _typed(obj, key, where, bool, "true or false", default)


def _str(obj: Mapping, key: str, where: Where, default: Any = _MISSING) -> str:
    return _typed(obj, key, where, str, "a string", default)


def _number(
    obj: Mapping,
    key: str,
    where: Where,
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
        where.fail(f"{where.field_name(key)} = {short(value)}: expected {expected}")
    # Compared as Python numbers (an int of any size against a float is exact): a huge integer never
    # meets float() or math.isfinite, which raise OverflowError on it; 1e400 parses as inf.
    if not -MAX_NUMBER <= value <= MAX_NUMBER:
        where.fail(f"{where.field_name(key)} = {short(value)}: out of range (magnitude above 2**53)")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where.fail(f"{where.field_name(key)} = {short(value)}: must lie in [{lo}, {hi}]")
    return value


def _object(obj: Mapping, key: str, where: Where, default: Any = _MISSING) -> dict:
    return _typed(obj, key, where, dict, "a JSON object", default)


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


def parse_meta(text: str, where: Where) -> dict:
    """The ``meta`` JSON object of a trace, parsed strictly: no ``NaN``/``Infinity``, no object with a key
    twice, no lone surrogate (valid JSON, but no Unicode text a report could write)."""
    try:
        meta = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        where.fail(f"key 'meta': a JSON object has the key {exc.args[0]!r} twice")
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        where.fail(f"key 'meta': not valid JSON ({exc}): {short(text)}")
    if not isinstance(meta, dict):
        where.fail(f"key 'meta' = {short(meta)}: expected a JSON object")
    try:  # a lone surrogate (the JSON escape "\ud800", or in the numpy string) cannot be written out
        json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        where.fail(f"key 'meta': a string holds {bad!r}, a lone surrogate (not valid Unicode)")
    except RecursionError:
        where.fail("key 'meta': JSON nested too deeply")
    return meta


# --------------------------------------------------------------------------------------------------------
# Network and layer fields


def _check_network_meta(meta: dict, where: Where) -> None:
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
            f"metadata field 'input_shape' = {short(shape)}: expected [channels, height, width] "
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
            where.fail(f"metadata field 'channel_pruning' = {short(pruning)}: expected a list of objects")
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
        made_where.fail(f"metadata field 'made_by.seed' = {short(seed)}: expected an integer or null")


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


def engine_geometry_problem(meta: LayerMeta) -> str | None:
    """Why the engine cannot run an engine layer of this metadata, as ``"'<field>' = <value>: ..."``: its
    geometry outside the engine's fixed limits (:data:`ENGINE_LIMITS`, :data:`ENGINE_MAX_C_IN`;
    :func:`check_metadata` refuses such a layer, so a loaded trace never has one). None when it fits, and
    for non-engine layers."""
    if not meta.is_engine_layer:
        return None
    checks = [("c_in", meta.c_in)]
    if meta.kind == "conv":
        checks += [("kernel", meta.kernel), ("stride", meta.stride), ("padding", meta.padding)]
        if meta.gated:
            checks.append(("gate_groups", meta.gate_groups))
    for key, value in checks:
        problem = _engine_limit(key, value)
        if problem is not None:
            return problem
    if meta.kind == "conv":
        return _engine_padding(meta.padding, meta.kernel)
    return None


def _check_layer_meta(lm: Any, where: Where) -> LayerMeta:
    """One layer's fields and the rules of its kind; returns its :class:`LayerMeta`."""
    if not isinstance(lm, dict):
        where.fail(f"metadata = {short(lm)}: expected a JSON object")
    kind = _str(lm, "kind", where)
    if kind not in KINDS:
        where.fail(f"metadata field 'kind' = {short(kind)}: expected one of {', '.join(KINDS)}")
    sources = _get(lm, "inputs", where)
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        where.fail(f"metadata field 'inputs' = {short(sources)}: expected a non-empty list of layer names")
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
        want_h, want_w = conv_output_size(h, k, s, p, p), conv_output_size(w, k, s, p, p)
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
                where.fail(f"metadata field {key!r} = {short(lm[key])}: {article} {kind} layer has none")
    if kind in ("maxpool", "avgpool", "add", "relu"):
        expect("c_out", c_out, c_in, f"a {kind} layer keeps its channels")
    if kind in ("add", "relu"):
        expect("h_out", h_out, h, f"a {kind} layer keeps its size")
        expect("w_out", w_out, w, f"a {kind} layer keeps its size")
    if kind == "add" and len(sources) < 2:
        where.fail(f"metadata field 'inputs' = {short(sources)}: an add layer needs at least two inputs")
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
                    f"metadata field 'base.first' = {short(cb)}: expected an integer in [1, {c_in - 1}]"
                )
        else:
            where.fail(f'metadata field \'base\' = {short(base)}: expected "groups" or {{"first": C_b}}')
        _number(lm, "gate_on_fraction", where, 0.0, 1.0)
    elif "gate_on_fraction" in lm:  # informational on an ungated layer, but a runner reports it
        _number(lm, "gate_on_fraction", where, 0.0, 1.0, null=True)
    pruned = _get(lm, "pruned_channels", where, None)
    if pruned is not None and not (
        isinstance(pruned, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in pruned)
    ):
        where.fail(f"metadata field 'pruned_channels' = {short(pruned)}: expected a list of integers")
    if kind in ENGINE_KINDS:
        _check_layer_flops(lm, where)
    return LayerMeta.from_json(lm)


def _check_layer_flops(lm: dict, where: Where) -> None:
    """A layer's ``flops`` against its geometry: ``dense = layer_macs``; ``gated`` between the base
    segment's share of ``dense`` (every gate off) and ``dense`` (every gate on), give or take the rounding
    of a synthetic trace's integer figure; ungated layers ``gated = dense``."""
    dense, gated = lm["flops"]["dense"], lm["flops"]["gated"]
    macs = layer_macs(lm)
    if dense != macs:
        how = "c_in * c_out" if lm["kind"] == "fc" else "kernel^2 * c_in/groups * c_out * h_out * w_out"
        where.fail(f"metadata field 'flops.dense' = {short(dense)}: expected {macs} ({how})")
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
            f"metadata field 'flops.gated' = {short(gated)}: expected "
            + (f"{macs}" if share == 1.0 else f"a number from {low:.6g} to {macs}")
            + f" (flops.dense = {macs}; {why})"
        )


def _check_network_flops(meta: dict, layers: list[dict], where: Where) -> None:
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
                f"metadata field 'flops.{key}' = {short(given)}: expected {total:.15g}, the sum of the "
                f"{len(engine)} engine layers' flops.{key}"
            )


def check_metadata(meta: dict, where: Where) -> tuple[NetworkMeta, dict[str, LayerMeta]]:
    """Every check of the parsed ``meta`` object; returns the network's metadata and, in ``layer_order``,
    each layer's."""
    _check_network_meta(meta, where)
    order = _get(meta, "layer_order", where)
    if not isinstance(order, list) or not all(isinstance(n, str) for n in order):
        where.fail(f"metadata field 'layer_order' = {short(order)}: expected a list of layer names")
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

    # Layer metadata, graph order and shapes along the graph.
    out_shape: dict[str, tuple[int, int, int]] = {"input": input_shape}  # type: ignore[dict-item]
    layers: dict[str, LayerMeta] = {}
    for name in order:
        lw = Where(where.source, name)
        lm = layers[name] = _check_layer_meta(layers_meta[name], lw)
        for src in lm.sources:
            if src not in out_shape:
                later = src in seen
                lw.fail(
                    f"metadata field 'inputs' names {src!r}, which is "
                    + ("not an earlier layer (it comes later in 'layer_order')" if later else "no layer")
                )
            if out_shape[src] != lm.shape_in:
                lw.fail(
                    f"metadata fields 'c_in', 'h', 'w' = {lm.c_in}x{lm.h}x{lm.w}: its input "
                    f"{src!r} gives {'x'.join(map(str, out_shape[src]))}"
                )
        out_shape[name] = lm.shape_out
    _check_network_flops(meta, [layers_meta[name] for name in order], where)
    return NetworkMeta.from_json(meta), layers
