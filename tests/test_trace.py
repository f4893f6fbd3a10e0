"""The trace format (docs/trace-format.md): sim/trace.py's loader, validator, writer; `accel trace info`."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from accel.cli import main
from trace_format import (
    VERSION,
    Flops,
    Trace,
    TraceArrays,
    TraceError,
    gated_macs,
    layer_macs,
    layer_tile_operands,
    load_trace,
    make_meta,
    requantize,
    save_trace,
    validate_trace,
)
from trace_format.reader import LARGE_ARRAYS

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "traces" / "resnet18-imagenet-synthetic.npz"
N = 2


def small_trace(seed: int = 0) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """input 4x6x6 -> gated conv 4->4 (3x3, G=2, ReLU) -> maxpool 2/2 -> flatten -> fc 36->3."""
    rng = np.random.default_rng(seed)
    conv = {
        "kind": "conv",
        "inputs": ["input"],
        "c_in": 4,
        "c_out": 4,
        "h": 6,
        "w": 6,
        "h_out": 6,
        "w_out": 6,
        "kernel": 3,
        "stride": 1,
        "padding": 1,
        "groups": 1,
        "relu": True,
        "gated": True,
        "gate_groups": 2,
        "base": "groups",
        "shuffle": False,
        "gate_on_fraction": 0.25,
    }
    conv["flops"] = {"dense": layer_macs(conv), "gated": gated_macs(conv, 0.25)}
    pool = {
        "kind": "maxpool",
        "inputs": ["conv"],
        "c_in": 4,
        "c_out": 4,
        "h": 6,
        "w": 6,
        "h_out": 3,
        "w_out": 3,
    }
    pool.update(kernel=2, stride=2, padding=0)
    flat = {
        "kind": "flatten",
        "inputs": ["pool"],
        "c_in": 4,
        "c_out": 36,
        "h": 3,
        "w": 3,
        "h_out": 1,
        "w_out": 1,
    }
    fc = {"kind": "fc", "inputs": ["flatten"], "c_in": 36, "c_out": 3, "h": 1, "w": 1, "h_out": 1, "w_out": 1}
    fc.update(relu=False, gated=False, flops={"dense": 108, "gated": 108})
    layers = {"conv": conv, "pool": pool, "flatten": flat, "fc": fc}
    meta = make_meta(
        name="tiny",
        dataset="unit-test",
        synthetic=True,
        num_classes=3,
        input_shape=(4, 6, 6),
        samples=N,
        layer_order=list(layers),
        layers=layers,
        command="pytest tests/test_trace.py",
        seed=seed,
        date="2026-11-21",
    )

    def engine(c_out, weights_shape, inputs_shape):
        return {
            "weights": rng.integers(-127, 128, size=weights_shape).astype(np.int8),
            "weight_scale": rng.uniform(0.01, 0.02, size=c_out).astype(np.float32),
            "inputs": rng.integers(0, 128, size=inputs_shape).astype(np.int8),
            "input_scale": np.array(1 / 32, dtype=np.float32),
            "bias": rng.integers(-1000, 1000, size=c_out).astype(np.int32),
            "requant_scale": rng.uniform(1e-3, 2e-3, size=c_out).astype(np.float32),
            "output_scale": np.array(1 / 32, dtype=np.float32),
        }

    arrays = {
        "conv": {
            **engine(4, (4, 4, 3, 3), (N, 4, 6, 6)),
            "thresholds": np.array([10, -20, 300, 0], dtype=np.int32),
            "gates": rng.random((N, 4, 6, 6)) < 0.25,
        },
        "fc": engine(3, (3, 36), (N, 36)),
    }
    return meta, arrays


def raw_keys(meta: dict, arrays: dict) -> dict[str, np.ndarray]:
    keys = {"format": np.array("cgnet-trace"), "version": np.array(1), "meta": np.array(json.dumps(meta))}
    for layer, named in arrays.items():
        for name, value in named.items():
            keys[f"layer/{layer}/{name}"] = value
    return keys


def write_raw(path: Path, keys: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **keys)
    return path


def refused(path: Path, *pieces: str) -> str:
    with pytest.raises(TraceError) as info:
        load_trace(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for piece in pieces:
        assert piece in message, f"{piece!r} not in {message!r}"
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------------------
# round trip


def test_round_trip(tmp_path):
    meta, arrays = small_trace()
    path = tmp_path / "t.npz"
    saved = save_trace(path, meta, arrays)
    trace = load_trace(path)
    assert isinstance(trace, Trace) and trace.name == "tiny" and trace.path == str(path)
    assert trace.meta.json == json.loads(json.dumps(meta)) == saved.meta.json
    assert trace.meta == saved.meta and trace.meta.input_shape == (4, 6, 6)
    assert trace.layer_order == ("conv", "pool", "flatten", "fc")
    assert [layer.name for layer in trace] == list(trace.layer_order) and len(trace) == 4
    assert trace.meta.samples == N and trace.meta.synthetic and trace.meta.dataset == "unit-test"
    assert trace.meta.flops == Flops(dense=meta["layers"]["conv"]["flops"]["dense"] + 108, gated=3240 + 108)
    for layer_name, named in arrays.items():
        layer = trace[layer_name]
        assert set(layer.arrays) == set(named)
        for name, value in named.items():
            assert layer.arrays[name].dtype == value.dtype
            np.testing.assert_array_equal(layer.arrays[name], value)
    conv, pool, fc = trace["conv"], trace["pool"], trace["fc"]
    cm = conv.meta
    assert cm.is_engine_layer and cm.gated and cm.relu and cm.gate_groups == 2 and cm.base_channels == 0
    assert cm.shape_in == (4, 6, 6) and cm.shape_out == (4, 6, 6) and cm.sources == ("input",)
    assert (cm.kernel, cm.stride, cm.padding, cm.groups) == (3, 1, 1, 1)
    assert cm.gate_on_fraction == 0.25 and cm.flops.dense == cm.dense_macs == 4 * 4 * 9 * 36
    assert cm.json is trace.meta.json["layers"]["conv"]
    assert not pool.meta.is_engine_layer and pool.meta.flops is None
    assert pool.arrays == {} and pool.weights is None
    assert fc.meta.is_engine_layer and not fc.meta.gated and fc.meta.kernel == 1
    assert fc.thresholds is None and fc.inputs.shape == (N, 36)
    assert [layer.name for layer in trace.engine_layers()] == ["conv", "fc"]
    assert [layer.name for layer in trace.gated_layers()] == ["conv"]
    assert trace.meta.made_by["package_version"] and trace.meta.accuracy["float"] is None


def test_save_is_atomic_and_reproducible(tmp_path):
    meta, arrays = small_trace()
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_trace(a, meta, arrays)
    save_trace(b, meta, arrays)
    assert a.read_bytes() == b.read_bytes()  # fixed zip timestamps: same content, same bytes
    save_trace(a, meta, arrays)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temporary left behind
    # np.load reads it like any savez_compressed file
    with np.load(a, allow_pickle=False) as npz:
        assert set(npz.files) >= {"format", "version", "meta", "layer/conv/weights"}


def test_save_refuses_invalid_content_and_keeps_the_old_file(tmp_path):
    meta, arrays = small_trace()
    path = tmp_path / "t.npz"
    save_trace(path, meta, arrays)
    before = path.read_bytes()
    arrays["conv"]["weights"] = arrays["conv"]["weights"].astype(np.int16)
    with pytest.raises(TraceError, match="layer/conv/weights"):
        save_trace(path, meta, arrays)
    meta2, arrays2 = small_trace()
    meta2["accuracy"]["float"] = float("nan")
    with pytest.raises(TraceError, match="'meta'"):
        save_trace(path, meta2, arrays2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.npz"]


def test_layer_tile_operands(tmp_path):
    meta, arrays = small_trace()
    trace = save_trace(tmp_path / "t.npz", meta, arrays)
    x, w, t = layer_tile_operands(trace["conv"], sample=1)
    assert x.dtype == np.int8 and x.shape == (4, 6, 6)
    assert w.dtype == np.int8 and w.shape == (4, 4, 3, 3)
    assert t.dtype == np.int64 and t.tolist() == [10, -20, 300, 0]
    np.testing.assert_array_equal(x, arrays["conv"]["inputs"][1])
    with pytest.raises(TraceError, match="not a gated conv"):
        layer_tile_operands(trace["fc"])
    with pytest.raises(TraceError, match="sample 5"):
        layer_tile_operands(trace["conv"], sample=5)


def test_requantize_rounds_half_to_even_and_saturates():
    acc = np.array([[[5], [-5], [1000], [-1000], [3]]])  # [N=1, c_out=5, 1]
    bias = np.zeros(5, dtype=np.int32)
    scale = np.array([0.5, 0.5, 1.0, 1.0, 0.5], dtype=np.float32)
    assert requantize(acc, bias, scale, relu=False).ravel().tolist() == [2, -2, 127, -128, 2]
    assert requantize(acc, bias, scale, relu=True).ravel().tolist() == [2, 0, 127, 0, 2]
    assert requantize(acc[0], bias, scale, relu=False).dtype == np.int8  # [c_out, ...] without a sample axis


# ------------------------------------------------------------------------------------------------------
# every check of the "Checks" section


def mutate_meta(fn):
    def apply(keys):
        meta = json.loads(str(keys["meta"]))
        fn(meta)
        keys["meta"] = np.array(json.dumps(meta))

    return apply


def _set(key, value):
    def apply(keys):
        keys[key] = value

    return apply


def _drop(key):
    def apply(keys):
        del keys[key]

    return apply


def _scale_at(key, index, value):
    def apply(keys):
        arr = keys[key].copy()
        arr[index] = value
        keys[key] = arr

    return apply


CASES = {
    "missing array key": (_drop("layer/conv/gates"), ["'conv'", "'layer/conv/gates'", "missing"]),
    "missing top key": (_drop("meta"), ["'meta'", "missing"]),
    "wrong format": (_set("format", np.array("npz-of-something")), ["'format'", "npz-of-something"]),
    "wrong dtype": (
        lambda k: k.__setitem__("layer/conv/weights", k["layer/conv/weights"].astype(np.int16)),
        ["'conv'", "'layer/conv/weights'", "int16", "int8"],
    ),
    "wrong gates dtype": (
        lambda k: k.__setitem__("layer/conv/gates", k["layer/conv/gates"].astype(np.uint8)),
        ["'conv'", "'layer/conv/gates'", "uint8", "bool"],
    ),
    "wrong shape": (
        lambda k: k.__setitem__("layer/conv/inputs", k["layer/conv/inputs"][..., :5]),
        ["'conv'", "'layer/conv/inputs'", "(2, 4, 6, 5)", "(2, 4, 6, 6)"],
    ),
    "samples mismatch": (
        mutate_meta(lambda m: m.__setitem__("samples", 3)),
        ["'conv'", "'layer/conv/weights'"],  # replaced below: the first array with N in its shape
    ),
    "newer version": (_set("version", np.array(VERSION + 1)), ["'version' = 2", "newer", "version 1"]),
    "version not an integer": (_set("version", np.array(1.0)), ["'version'", "float64", "integer"]),
    "bad JSON": (_set("meta", np.array('{"name": "tiny", ')), ["'meta'", "not valid JSON"]),
    "JSON not an object": (_set("meta", np.array("[1, 2]")), ["'meta'", "[1, 2]", "object"]),
    "missing network field": (mutate_meta(lambda m: m.pop("num_classes")), ["'num_classes'", "missing"]),
    "missing layer field": (
        mutate_meta(lambda m: m["layers"]["conv"].pop("c_in")),
        ["'conv'", "'c_in'", "missing"],
    ),
    "bad layer field": (
        mutate_meta(lambda m: m["layers"]["conv"].__setitem__("kernel", "3")),
        ["'conv'", "'kernel'", "'3'", "integer"],
    ),
    "inconsistent geometry": (
        mutate_meta(lambda m: m["layers"]["pool"].__setitem__("h_out", 4)),
        ["'pool'", "'h_out' = 4", "expected 3"],
    ),
    "threshold out of range": (
        lambda k: k.__setitem__("layer/conv/thresholds", np.array([0, 1 << 31, 0, 0], dtype=np.int64)),
        ["'conv'", "'layer/conv/thresholds'", "2147483648", "int32"],
    ),
    "non-finite scale": (
        _scale_at("layer/conv/requant_scale", 2, np.nan),
        ["'conv'", "'layer/conv/requant_scale'", "nan", "index (2,)"],
    ),
    "infinite scalar scale": (
        _set("layer/fc/input_scale", np.array(np.inf, dtype=np.float32)),
        ["'fc'", "'layer/fc/input_scale'", "inf"],
    ),
    "non-positive scale": (
        _scale_at("layer/fc/weight_scale", 1, 0.0),
        ["'fc'", "'layer/fc/weight_scale'", "0.0", "positive"],
    ),
    "unknown layer kind": (
        mutate_meta(lambda m: m["layers"]["pool"].__setitem__("kind", "conv3d")),
        ["'pool'", "'kind'", "'conv3d'"],
    ),
    "layer_order without metadata": (
        mutate_meta(lambda m: m["layer_order"].insert(1, "ghost")),
        ["'layer_order'", "'ghost'", "no entry in 'layers'"],
    ),
    "metadata without layer_order": (
        mutate_meta(lambda m: m["layer_order"].remove("pool")),
        ["'layers'", "'pool'", "not in 'layer_order'"],
    ),
    "inputs name a later layer": (
        mutate_meta(lambda m: m["layers"]["pool"].__setitem__("inputs", ["fc"])),
        ["'pool'", "'inputs'", "'fc'", "not an earlier layer"],
    ),
    "inputs name no layer": (
        mutate_meta(lambda m: m["layers"]["pool"].__setitem__("inputs", ["nowhere"])),
        ["'pool'", "'inputs'", "'nowhere'", "no layer"],
    ),
    "shape does not follow the graph": (
        mutate_meta(lambda m: m.__setitem__("input_shape", [4, 7, 7])),
        ["'conv'", "4x6x6", "'input'", "4x7x7"],
    ),
    "unknown array": (
        _set("layer/conv/extra", np.zeros(3)),
        ["'conv'", "'layer/conv/extra'", "unknown array"],
    ),
    "arrays for a layer without arrays": (
        _set("layer/pool/weights", np.zeros(3, dtype=np.int8)),
        ["'pool'", "'layer/pool/weights'", "maxpool layer stores no arrays"],
    ),
    "arrays for an unknown layer": (
        _set("layer/ghost/weights", np.zeros(3)),
        ["'layer/ghost/weights'", "'ghost'"],
    ),
    "null accuracy in a trained trace": (
        mutate_meta(lambda m: m.__setitem__("synthetic", False)),
        ["'accuracy.float'", "null", "expected a number"],
    ),
    "gated fc": (
        mutate_meta(lambda m: m["layers"]["fc"].__setitem__("gated", True)),
        ["'fc'", "'gated'", "only conv"],
    ),
    "bad base": (
        mutate_meta(lambda m: m["layers"]["conv"].__setitem__("base", {"first": 9})),
        ["'conv'", "'gate_groups' = 2"],
    ),
}
CASES["samples mismatch"] = (
    CASES["samples mismatch"][0],
    ["'conv'", "'layer/conv/inputs'", "shape (2, 4, 6, 6)", "expected (3, 4, 6, 6)"],
)


@pytest.mark.parametrize("case", list(CASES))
def test_check_refuses_with_a_clear_message(tmp_path, case):
    mutate, pieces = CASES[case]
    meta, arrays = small_trace()
    keys = raw_keys(meta, arrays)
    load_trace(write_raw(tmp_path / "ok.npz", keys))  # the unmodified trace is valid
    mutate(keys)
    path = write_raw(tmp_path / "bad.npz", keys)
    refused(path, *pieces)
    # validate_trace on the arrays in memory says the same, naming the source given
    with pytest.raises(TraceError) as info:
        validate_trace(keys, source="in-memory")
    assert str(info.value).startswith("in-memory: ")


def test_object_array_is_refused_not_unpickled(tmp_path):
    meta, arrays = small_trace()
    keys = raw_keys(meta, arrays)
    keys["layer/conv/bias"] = np.array([1, "two", None, 4.0], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **keys)  # np.savez pickles object arrays
    refused(path, "'layer/conv/bias'", "object array", "allow_pickle=False")
    with pytest.raises(TraceError, match="object array"):
        validate_trace(keys, source="mem")


@pytest.mark.parametrize(
    "content, pieces",
    [
        (b"", ["corrupt or truncated"]),
        (b"this is not a zip file at all\n" * 10, ["not a trace file"]),
        ("truncate", ["corrupt or truncated"]),
        ("flip", []),
        ("npy", ["single .npy array"]),
        ("zip-of-text", ["'notes.txt'", "not a .npy array"]),
    ],
)
def test_corrupt_or_foreign_files(tmp_path, content, pieces):
    meta, arrays = small_trace()
    good = tmp_path / "good.npz"
    save_trace(good, meta, arrays)
    path = tmp_path / "bad.npz"
    if content == "truncate":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif content == "flip":
        data = bytearray(good.read_bytes())
        for i in range(200, len(data) - 200, 97):  # damage deflated data and CRCs throughout
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))
    elif content == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path = path.with_suffix(".npy")
    elif content == "zip-of-text":
        import zipfile

        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("notes.txt", "hello")
            zf.writestr("notes.npy", "not an npy header")
    else:
        path.write_bytes(content)
    refused(path, *pieces)


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "nope.npz", "cannot read", "No such file")
    refused(tmp_path, "cannot read")


# ------------------------------------------------------------------------------------------------------
# lazy loading: headers at load, arrays on access


def _write_members(path: Path, keys: dict[str, np.ndarray], damage: dict[str, callable]) -> Path:
    """A deflated zip of .npy members, each member's bytes passed through ``damage[key]`` where given."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, value in keys.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, value, allow_pickle=False)
            data = buf.getvalue()
            zf.writestr(f"{key}.npy", damage[key](data) if key in damage else data)
    return path


needs_shipped = pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped ResNet-18 trace is not there")


@needs_shipped
def test_load_reads_no_large_array_and_keeps_none():
    with np.load(SHIPPED, allow_pickle=False) as npz:  # headers only: what the eager loader held
        sizes = [npz[k].nbytes for k in npz.files if k.endswith("/inputs")]
    tracemalloc.start()
    try:
        load_trace(SHIPPED).close()  # every member's data read through once (the CRC check), none kept
        _, peak_verify = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        trace = load_trace(SHIPPED, verify_data=False)
        loaded, peak_load = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read = [layer.inputs.nbytes for layer in trace.engine_layers()]
        current, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sorted(read) == sorted(sizes) and sum(sizes) > 4_000_000
    # The eager loader peaked above all arrays (19 MB, inputs alone 4.4 MB); this one reads headers, meta
    # and the per-channel vectors (about 0.5 MB).
    assert peak_load < sum(sizes) / 8, (peak_load, sum(sizes))
    # Verifying the data streams it in 64 KB chunks: a few chunks more, no array.
    assert peak_verify < peak_load + 4 * 65536, (peak_verify, peak_load)
    # Reading every layer's inputs in turn holds one at a time (plus read buffers), and none stays behind.
    assert peak_read - loaded < 3 * max(sizes), (peak_read - loaded, max(sizes))
    assert current - loaded < max(sizes) / 4, (current - loaded, max(sizes))
    trace.close()


@needs_shipped
def test_lazy_arrays_equal_np_load():
    trace = load_trace(SHIPPED)
    with np.load(SHIPPED, allow_pickle=False) as npz:
        files = set(npz.files)
        seen = {"format", "version", "meta"}
        for layer in trace:
            assert isinstance(layer.arrays, TraceArrays)
            for name, value in layer.arrays.items():
                key = f"layer/{layer.name}/{name}"
                seen.add(key)
                ref = npz[key]
                assert layer.arrays.header(name) == (ref.dtype, ref.shape)
                assert value.dtype == ref.dtype and value.shape == ref.shape, key
                np.testing.assert_array_equal(value, ref, err_msg=key)
            assert layer.arrays.nbytes == sum(npz[f"layer/{layer.name}/{a}"].nbytes for a in layer.arrays)
        assert seen == files
    assert trace["maxpool"].arrays == {} and len(trace["maxpool"].arrays) == 0
    trace.close()


def test_repeated_and_concurrent_access(tmp_path):
    meta, arrays = small_trace()
    path = tmp_path / "t.npz"
    save_trace(path, meta, arrays)
    with load_trace(path) as trace:
        conv = trace["conv"]
        for name, value in arrays["conv"].items():
            first, second = conv.arrays[name], conv.arrays[name]
            np.testing.assert_array_equal(first, value)
            np.testing.assert_array_equal(second, first)
            # large arrays are read anew (nothing keeps them); small ones are read once and kept
            assert (first is second) == (name not in LARGE_ARRAYS), name
        assert "gates" in conv.arrays and "nope" not in conv.arrays and conv.arrays.get("nope") is None
        assert conv.gates is not None and trace["fc"].gates is None and conv.arrays.get("gates") is not None
        with pytest.raises(KeyError):
            conv.arrays["nope"]
        # two threads reading the same file at once
        errors: list[BaseException] = []

        def reader():
            try:
                for _ in range(50):
                    for layer in trace.engine_layers():
                        for name in LARGE_ARRAYS & set(layer.arrays):
                            np.testing.assert_array_equal(layer.arrays[name], arrays[layer.name][name])
            except BaseException as exc:  # noqa: BLE001 (reported below)
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        kept = conv.bias
    # closed: kept arrays still there, large ones refused with a clear message
    assert kept is conv.bias
    with pytest.raises(TraceError, match=r"layer 'conv': key 'layer/conv/inputs': the trace file is closed"):
        _ = conv.inputs


def test_fortran_order_and_stored_members(tmp_path):
    meta, arrays = small_trace()
    arrays["conv"]["weights"] = np.asfortranarray(arrays["conv"]["weights"])
    arrays["conv"]["gates"] = np.asfortranarray(arrays["conv"]["gates"])
    path = write_raw(tmp_path / "f.npz", raw_keys(meta, arrays))
    stored = tmp_path / "stored.npz"
    np.savez(stored, **raw_keys(meta, arrays))  # not deflated
    for p in (path, stored):
        with load_trace(p) as trace:
            for name, value in arrays["conv"].items():
                np.testing.assert_array_equal(trace["conv"].arrays[name], value)
                assert trace["conv"].arrays[name].dtype == value.dtype


@pytest.mark.parametrize(
    "damage, pieces",
    [
        (lambda b: b.replace(b"'descr'", b"'DESCR'", 1), ["not a readable array", "bad .npy header"]),
        (lambda b: b[:6] + b"\x07\x00" + b[8:], [".npy format version 7.0"]),
        (lambda b: b"\x00" + b[1:], ["a zip member that is not a .npy array"]),
        (lambda b: b[:-10], ["corrupt or truncated", "header says"]),
    ],
    ids=["bad header", "unknown npy version", "bad magic", "short data"],
)
def test_bad_member_header_fails_at_load(tmp_path, damage, pieces):
    meta, arrays = small_trace()
    keys = raw_keys(meta, arrays)
    path = _write_members(tmp_path / "bad.npz", keys, {"layer/conv/inputs": damage})
    refused(path, "key 'layer/conv/inputs'", *pieces)


@needs_shipped
def test_member_damaged_in_its_data_fails_on_access(tmp_path):
    path = tmp_path / "damaged.npz"
    shutil.copyfile(SHIPPED, path)
    key = "layer/layer1.0.conv1/inputs"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the member's deflated data
    for i in range(start + info.compress_size // 2, start + info.compress_size - 16, 331):
        data[i] ^= 0xFF  # the second half only: the .npy header still reads
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match=f"key '{key}': corrupt or truncated"):
        load_trace(path)  # the default load reads every member's data once
    trace = load_trace(path, verify_data=False)  # the header is fine: loading succeeds
    np.testing.assert_array_equal(trace["conv1"].inputs, load_trace(SHIPPED)["conv1"].inputs)
    with pytest.raises(TraceError) as info_:
        _ = trace["layer1.0.conv1"].inputs
    message = str(info_.value)
    assert message.startswith(f"{path}: layer 'layer1.0.conv1': key '{key}': corrupt or truncated"), message
    assert "\n" not in message
    trace.close()


# ------------------------------------------------------------------------------------------------------
# accel trace info


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_trace_info_small(capsys, tmp_path):
    meta, arrays = small_trace()
    path = tmp_path / "tiny.npz"
    save_trace(path, meta, arrays)
    code, out, err = run_cli(capsys, "trace", "info", path)
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("layer "))
    for column in (
        "kind",
        "shape (in -> out)",
        "k/s",
        "gated",
        "gate-on",
        "dense MACs",
        "gated MACs",
        "reduction",
    ):
        assert column in header
    conv = next(line.split() for line in lines if line.startswith("conv "))
    dense = 4 * 4 * 9 * 36
    assert conv[:6] == ["conv", "conv", "4x6x6", "->", "4x6x6", "3/1"]
    assert conv[6:] == ["G=2", "25.0%", f"{dense:,}", f"{dense * 5 // 8:,}", f"{8 / 5:.2f}x"]
    pool = next(line.split() for line in lines if line.startswith("pool "))
    assert pool[:6] == ["pool", "maxpool", "4x6x6", "->", "4x3x3", "2/2"] and pool[-1] == "-"
    fc = next(line.split() for line in lines if line.startswith("fc "))
    assert fc[1:5] == ["fc", "36", "->", "3"] and fc[5:7] == ["-", "no"] and fc[-1] == "1.00x"
    total = (dense + 108) / (dense * 5 / 8 + 108)
    for piece in (
        "network:",
        "tiny",
        "dataset:",
        "unit-test (synthetic: yes)",
        "4x6x6, 3 classes, 2 samples",
        "4 (2 mapped to the engine, 1 gated)",
        "float n/a, int8 n/a",
        f"FLOP reduction: {total:.2f}x",
        "made by:",
        "pytest tests/test_trace.py",
        "seed 0, date 2026-11-21",
    ):
        assert piece in out, piece


def test_trace_info_trained_style_metadata(capsys, tmp_path):
    meta, arrays = small_trace()
    meta.update(
        synthetic=False,
        accuracy={"float": 0.975, "int8": 0.972, "dense_float": 0.978},
        gate_agreement=0.991,
        channel_pruning=[{"threshold": 0.1, "int8_accuracy": 0.968}],
    )
    path = tmp_path / "trained.npz"
    save_trace(path, meta, arrays)
    code, out, err = run_cli(capsys, "trace", "info", path)
    assert code == 0, err
    for piece in ("synthetic: no", "float 97.50%", "int8 97.20%", "dense float 97.80%", "99.10%"):
        assert piece in out
    assert "channel pruning 0.1:" in out and "96.80%" in out


def test_trace_info_errors(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    for path, pieces in ((bad, [str(bad), "not a trace file"]), (tmp_path / "none.npz", ["No such file"])):
        code, out, err = run_cli(capsys, "trace", "info", path)
        assert code == 2 and out == ""
        assert "Traceback" not in err
        assert err.strip().startswith("accel: error: ") and len(err.strip().splitlines()) == 1
        for piece in pieces:
            assert piece in err
    code, _, err = run_cli(capsys, "trace")
    assert code == 2 and "SUBCOMMAND" in err and "Traceback" not in err


def test_trace_info_subprocess_no_traceback(tmp_path):
    meta, arrays = small_trace()
    keys = raw_keys(meta, arrays)
    keys["version"] = np.array(7)
    path = write_raw(tmp_path / "future.npz", keys)
    proc = subprocess.run(
        [sys.executable, "-m", "accel.cli", "trace", "info", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"accel: error: {path}: key 'version' = 7: newer than this reader's trace format version 1; "
        "update channel-gating-accel to read it"
    )


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped ResNet-18 trace is not there")
def test_trace_info_shipped_resnet18(capsys):
    code, out, err = run_cli(capsys, "trace", "info", SHIPPED)
    assert code == 0, err
    rows = [
        line.split()
        for line in out.splitlines()
        if line.startswith(("conv1 ", "layer1", "layer2", "layer3", "layer4", "fc ", "maxpool "))
    ]
    # conv1, maxpool, 8 blocks (conv1, conv2, add), 3 downsample convs, fc
    assert len(rows) == 1 + 1 + 8 * 3 + 3 + 1
    gated = [row for row in rows if "G=2" in row]
    assert len(gated) == 16
    for row in gated:
        assert 0.28 <= float(row[row.index("G=2") + 1].rstrip("%")) / 100 <= 0.32
    for piece in (
        "resnet18-imagenet-synthetic",
        "imagenet-shapes (synthetic: yes)",
        "3x224x224, 1000 classes",
        "dense 1,814,073,344",
        "FLOP reduction:",
        "python -m traces.resnet18_synthetic --out traces/resnet18-imagenet-synthetic.npz",
    ):
        assert piece in out, piece
