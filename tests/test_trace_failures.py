"""Failure paths of the trace loader (trace_format/, docs/trace-format.md "Checks"): what a user can hand
``accel trace info`` / ``accel report`` as a trace ends in one ``TraceError`` naming the file, the field and
the value, never a hang, a traceback or a wrong figure."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_run import one_line_error as _one_line_error
from cli_run import run as _run
from test_trace import raw_keys, small_trace, write_raw

import trace_format
import trace_format.reader as reader_module
from spec.config import ConfigError, EngineConfig
from trace_format import LayerMeta, TraceError, TraceLayer, load_trace, validate_trace

ROOT = Path(__file__).resolve().parents[1]
HUGE = 10**400  # a 400-digit integer: float() and math.isfinite() raise OverflowError on it


def _refused(path: Path, *pieces: str, verify_data: bool = True) -> str:
    with pytest.raises(TraceError) as info:
        load_trace(path, verify_data=verify_data).close()
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    for piece in pieces:
        assert piece in message, (piece, message)
    return message


def _with_meta(tmp_path: Path, change, name: str = "bad.npz", text: str | None = None) -> Path:
    """A copy of the small trace with its metadata changed by ``change(meta)`` (or replaced by ``text``)."""
    meta, arrays = small_trace()
    change(meta)
    keys = raw_keys(meta, arrays)
    if text is not None:
        keys["meta"] = np.array(text)
    return write_raw(tmp_path / name, keys)


def _member_bytes(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, value, allow_pickle=False)
    return buf.getvalue()


def _write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for key, data in members.items():
            zf.writestr(f"{key}.npy", data)
    return path


def _small_members() -> dict[str, bytes]:
    return {key: _member_bytes(value) for key, value in raw_keys(*small_trace()).items()}


def _set_directory_field(path: Path, member: str, offset: int, value: int) -> None:
    """Overwrite a 4-byte field of ``member``'s central directory entry (16 CRC, 20 compressed size, 24
    uncompressed size): what zipfile takes the member's sizes from."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        n = int.from_bytes(data[at + 28 : at + 30], "little")
        if bytes(data[at + 46 : at + 46 + n]) == name:
            data[at + offset : at + offset + 4] = value.to_bytes(4, "little")
            path.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{member} not in {path}")


# --------------------------------------------------------------------------------------------------------
# 1. Not a regular file: a FIFO would block until a writer comes, /dev/zero never ends


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def load():
        try:
            load_trace(fifo)
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 (checked below)
            result.append(exc)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # blocked in open(): a writer that closes at once unblocks it, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        thread.join(10)
        pytest.fail("load_trace blocked on a FIFO")
    assert isinstance(result[0], TraceError), result
    message = str(result[0])
    assert message == f"{fifo}: cannot read the file (not a regular file: a FIFO)", message


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_device_is_refused():
    _refused(Path("/dev/zero"), "not a regular file", "character device")


def test_directory_is_refused(tmp_path):
    _refused(tmp_path, "cannot read the file", "not a regular file", "a directory")


def _python(args: list[str], cwd: Path, hung: str) -> subprocess.CompletedProcess:
    """Python with ``args`` in a child process, failing the test if it runs 60 s (a hang)."""
    try:
        return subprocess.run(
            [sys.executable, *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(hung)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("command", ["trace info", "report"])
def test_fifo_on_the_command_line_ends_clean(tmp_path, command):
    fifo = tmp_path / "f.npz"
    os.mkfifo(fifo)
    argv = ["trace", "info", str(fifo)] if command == "trace info" else ["report", str(fifo), "--no-progress"]
    proc = _python(["-m", "accel.cli", *argv], tmp_path, f"accel {command} hung on a FIFO")
    _one_line_error(proc.returncode, proc.stderr, str(fifo), "not a regular file")
    assert not (tmp_path / "report-f").exists()


# --------------------------------------------------------------------------------------------------------
# 2. Zip members: exactly header + data, sizes the compressed data can back, small metadata members


@pytest.mark.parametrize("extra", [1, 1000, 100_000])
def test_member_with_bytes_after_its_data_is_refused(tmp_path, extra):
    """A version.npy with zeros after the scalar (4 GB of them deflate to 4 MB) is not what np.save wrote:
    refused for its size (exactly header + data), or above the bound of a metadata member unread."""
    members = _small_members()
    members["version"] += bytes(extra)
    path = _write_zip(tmp_path / "bomb.npz", members)
    assert path.stat().st_size < 20_000  # the zeros deflate away
    need = len(_member_bytes(np.array(1)))
    if need + extra <= reader_module.TOP_MEMBER_LIMIT["version"]:
        pieces = [f"holds {need + extra} bytes", f"header says {need} ({need - 8} of header, 8 of data)"]
    else:
        pieces = [f"{need + extra} bytes, more than the 65536 a trace's 'version' may take"]
    _refused(path, "key 'version'", *pieces)


def test_member_claiming_more_than_its_compressed_data_can_give(tmp_path):
    path = _write_zip(tmp_path / "forged.npz", _small_members())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("layer/conv/inputs.npy")
    _set_directory_field(path, "layer/conv/inputs.npy", 24, 0xFFFF0000)  # uncompressed size: 4 GB
    _refused(
        path,
        "key 'layer/conv/inputs'",
        f"{0xFFFF0000} bytes",
        f"than its {info.compress_size} deflated bytes",
        verify_data=False,
    )


def test_member_larger_than_the_file_is_refused(tmp_path):
    path = _write_zip(tmp_path / "forged.npz", _small_members(), zipfile.ZIP_STORED)
    _set_directory_field(path, "layer/conv/inputs.npy", 20, 0x7FFF0000)  # compressed size: 2 GB
    _set_directory_field(path, "layer/conv/inputs.npy", 24, 0x7FFF0000)
    _refused(path, "key 'layer/conv/inputs'", f"takes {0x7FFF0000} bytes", "the file has", verify_data=False)


def test_compression_numpy_never_writes_is_refused(tmp_path):
    path = _write_zip(tmp_path / "bz2.npz", _small_members(), zipfile.ZIP_BZIP2)
    _refused(path, "zip compression method 12", "stored (0) or deflated (8)")


def test_metadata_member_is_bounded_before_it_is_read(tmp_path, monkeypatch):
    meta, arrays = small_trace()
    meta["made_by"]["notes"] = "x" * 50_000  # informational, but 200 KB of <U text
    path = write_raw(tmp_path / "big-meta.npz", raw_keys(meta, arrays))
    load_trace(path).close()  # within the real limit
    assert (
        reader_module.TOP_MEMBER_LIMIT["meta"] >= 1 << 24
        and reader_module.TOP_MEMBER_LIMIT["version"] < 1 << 20
    )
    monkeypatch.setitem(reader_module.TOP_MEMBER_LIMIT, "meta", 100_000)
    read = []
    monkeypatch.setattr(reader_module, "_read_array", lambda *a: read.append(a) or pytest.fail("read"))
    _refused(path, "key 'meta'", "bytes, more than the 100000 a trace's 'meta' may take")
    assert not read


@pytest.mark.parametrize("bad", [b"{'''descr'", b"(('descr'"], ids=["open string", "open bracket"])
def test_npy_header_numpy_cannot_tokenize(tmp_path, bad):
    """numpy reads a .npy header with tokenize, whose TokenError is no ValueError: a traceback before."""
    members = _small_members()
    members["layer/conv/bias"] = members["layer/conv/bias"].replace(b"{'descr'", bad, 1)
    path = _write_zip(tmp_path / "t.npz", members)
    _refused(path, "key 'layer/conv/bias'", "not a readable array (bad .npy header")


def test_out_of_memory_while_reading_an_array_is_a_trace_error(tmp_path, monkeypatch):
    path = write_raw(tmp_path / "t.npz", raw_keys(*small_trace()))
    with load_trace(path) as trace:

        def no_memory(fp, npy):
            raise MemoryError

        monkeypatch.setattr(reader_module, "_read_array", no_memory)
        with pytest.raises(TraceError, match=r"layer 'conv': key 'layer/conv/inputs': not enough memory"):
            _ = trace["conv"].inputs


# --------------------------------------------------------------------------------------------------------
# 3. Numbers out of range: huge integers (OverflowError before), 1e400 (inf)


def _at(*path):
    def change(meta, value):
        obj = meta
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return change


NUMBER_FIELDS = {
    "accuracy.float": (_at("accuracy", "float"), "'accuracy.float'"),
    "accuracy.dense_float": (_at("accuracy", "dense_float"), "'accuracy.dense_float'"),
    "gate_agreement": (_at("gate_agreement"), "'gate_agreement'"),
    "flops.dense": (_at("flops", "dense"), "'flops.dense'"),
    "flops.gated": (_at("flops", "gated"), "'flops.gated'"),
    "layer flops.dense": (_at("layers", "conv", "flops", "dense"), "'flops.dense'"),
    "layer flops.gated": (_at("layers", "fc", "flops", "gated"), "'flops.gated'"),
    "gate_on_fraction": (_at("layers", "conv", "gate_on_fraction"), "'gate_on_fraction'"),
    "channel_pruning threshold": (_at("channel_pruning", 0, "threshold"), "'channel_pruning[0].threshold'"),
    "channel_pruning accuracy": (
        _at("channel_pruning", 0, "int8_accuracy"),
        "'channel_pruning[0].int8_accuracy'",
    ),
}


def _with_pruning(meta):
    meta["channel_pruning"] = [{"threshold": 0.1, "int8_accuracy": 0.5}]


@pytest.mark.parametrize("value", [HUGE, -HUGE, 1e400], ids=["huge", "-huge", "1e400"])
@pytest.mark.parametrize("field", list(NUMBER_FIELDS))
def test_number_out_of_range_is_refused(tmp_path, field, value):
    change, name = NUMBER_FIELDS[field]

    def apply(meta):
        _with_pruning(meta)
        change(meta, value)

    meta, _ = small_trace()
    apply(meta)
    text = json.dumps(meta).replace("Infinity", "1e400")  # JSON has no inf: 1e400 parses as one
    path = _with_meta(tmp_path, apply, text=text)
    message = _refused(path, name, "out of range")
    assert len(message) < 400  # the value is shortened, not printed in full


INT_FIELDS = {
    "num_classes": _at("num_classes"),
    "samples": _at("samples"),
    "c_out": _at("layers", "pool", "c_out"),
    "kernel": _at("layers", "pool", "kernel"),
    "stride": _at("layers", "conv", "stride"),
    "gate_groups": _at("layers", "conv", "gate_groups"),
}


@pytest.mark.parametrize("field", list(INT_FIELDS))
@pytest.mark.parametrize("value", [HUGE, 1 << 31], ids=["huge", "2**31"])
def test_integer_field_out_of_range_is_refused(tmp_path, field, value):
    path = _with_meta(tmp_path, lambda m: INT_FIELDS[field](m, value))
    message = _refused(path, f"'{field}'", "out of range", f"at most {(1 << 31) - 1}")
    assert len(message) < 400


def test_input_shape_out_of_range_is_refused(tmp_path):
    path = _with_meta(tmp_path, lambda m: m.__setitem__("input_shape", [4, HUGE, 6]))
    _refused(path, "'input_shape'", "integers in [1, 2147483647]")


@pytest.mark.parametrize("command", ["trace info", "report"])
@pytest.mark.parametrize("field", ["accuracy.float", "flops.gated", "channel_pruning threshold"])
def test_huge_numbers_on_the_command_line_end_clean(tmp_path, command, field):
    change, name = NUMBER_FIELDS[field]

    def apply(meta):
        _with_pruning(meta)
        change(meta, HUGE)

    path = _with_meta(tmp_path, apply)
    out = tmp_path / "out"
    argv = (
        ["trace", "info", path]
        if command == "trace info"
        else ["report", path, "--out", out, "--no-progress"]
    )
    code, stdout, err = _run(*argv)
    _one_line_error(code, err, str(path), name, "out of range")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------
# 4. flops: the network totals are the sums of the layers', the layers' follow from their geometry


def test_zero_gated_total_is_refused_and_never_printed_as_infinite(tmp_path):
    path = _with_meta(tmp_path, lambda m: m["flops"].__setitem__("gated", 0))
    code, out, err = _run("trace", "info", path)
    _one_line_error(code, err, "'flops.gated' = 0", "expected 3348", "sum of the 2 engine layers'")
    assert "inf" not in out


@pytest.mark.parametrize("key, change", [("dense", 1), ("gated", 1e9)])
def test_network_flops_not_the_sum_of_the_layers(tmp_path, key, change):
    meta, _ = small_trace()
    total = meta["flops"][key]
    value = total + change
    path = _with_meta(tmp_path, lambda m: m["flops"].__setitem__(key, value))
    _refused(path, f"'flops.{key}' = {json.dumps(value)}", f"expected {total:.15g}")


def test_network_flops_within_float_rounding_are_accepted(tmp_path):
    meta, _ = small_trace()
    gated = meta["flops"]["gated"] * (1 + 1e-13)
    load_trace(_with_meta(tmp_path, lambda m: m["flops"].__setitem__("gated", gated))).close()


@pytest.mark.parametrize(
    "layer, key, value, pieces",
    [
        ("conv", "dense", 100, ["layer 'conv'", "'flops.dense' = 100", "expected 5184", "kernel^2"]),
        ("fc", "dense", 107, ["layer 'fc'", "'flops.dense' = 107", "expected 108", "c_in * c_out"]),
        ("conv", "gated", 0, ["layer 'conv'", "'flops.gated' = 0", "from 2592 to 5184", "base segment"]),
        ("conv", "gated", 6000, ["layer 'conv'", "'flops.gated' = 6000", "from 2592 to 5184"]),
        ("fc", "gated", 54, ["layer 'fc'", "'flops.gated' = 54", "expected 108", "ungated"]),
    ],
)
def test_layer_flops_against_its_geometry(tmp_path, layer, key, value, pieces):
    def change(meta):
        meta["layers"][layer]["flops"][key] = value
        engine = [lm for lm in meta["layers"].values() if "flops" in lm]
        meta["flops"][key] = sum(lm["flops"][key] for lm in engine)  # the totals agree: the layer is wrong

    _refused(_with_meta(tmp_path, change), *pieces)


def test_synthetic_rounding_of_gated_flops_is_accepted(tmp_path):
    def change(meta):
        conv = meta["layers"]["conv"]["flops"]
        conv["gated"] = round(conv["gated"]) + 0.5 if conv["gated"] == round(conv["gated"]) else conv["gated"]
        meta["flops"]["gated"] = conv["gated"] + meta["layers"]["fc"]["flops"]["gated"]

    load_trace(_with_meta(tmp_path, change)).close()


@pytest.mark.parametrize("path", sorted((ROOT / "traces").glob("*.npz")), ids=lambda p: p.name)
def test_shipped_traces_pass_the_flops_checks(path):
    load_trace(path, verify_data=False).close()
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
    engine = [lm for lm in meta["layers"].values() if lm["kind"] in ("conv", "fc")]
    assert engine and meta["flops"]["dense"] == sum(lm["flops"]["dense"] for lm in engine)


def test_trace_without_engine_layers_is_refused(tmp_path):
    meta, _ = small_trace()
    layers = {
        "pool": {**meta["layers"]["pool"], "inputs": ["input"]},
        "flatten": meta["layers"]["flatten"],
    }
    meta.update(layer_order=list(layers), layers=layers, flops={"dense": 0, "gated": 0})
    keys = {"format": np.array("cgnet-trace"), "version": np.array(1), "meta": np.array(json.dumps(meta))}
    path = write_raw(tmp_path / "hostonly.npz", keys)
    code, out, err = _run("trace", "info", path)
    _one_line_error(code, err, "no conv or fc layer")
    assert "inf" not in out


# --------------------------------------------------------------------------------------------------------
# 5. A layer outside the engine's fixed limits: the trace's fault, named as such (not "config field")

ENGINE_CASES = {
    "gate_groups 128": ({"gate_groups": 128}, "'gate_groups' = 128: the engine takes gate groups 1..64"),
    "kernel 12": ({"kernel": 12}, "'kernel' = 12: the engine takes kernels 1..11"),
    "stride 9": ({"stride": 9}, "'stride' = 9: the engine takes strides 1..8"),
    "padding 11": ({"padding": 11, "kernel": 11}, "'padding' = 11: the engine takes paddings 0..10"),
    "kernel 1 padding 1": (
        {"kernel": 1, "padding": 1},
        "'padding' = 1: the engine takes a padding smaller than the kernel (1)",
    ),
}


@pytest.mark.parametrize("case", list(ENGINE_CASES))
def test_conv_outside_the_engine_limits_is_refused_naming_the_layer(tmp_path, case):
    fields, text = ENGINE_CASES[case]
    path = _with_meta(tmp_path, lambda m: m["layers"]["conv"].update(fields))
    message = _refused(path, f"layer 'conv': metadata field {text}")
    assert "config" not in message


def test_fc_with_more_input_channels_than_the_registers_hold(tmp_path):
    path = _with_meta(tmp_path, lambda m: m["layers"]["fc"].update(c_in=70_000))
    _refused(path, "layer 'fc': metadata field 'c_in' = 70000: the engine takes at most 65535 input channels")


@pytest.mark.parametrize("case", ["gate_groups 128", "kernel 12", "kernel 1 padding 1"])
def test_report_on_a_layer_outside_the_engine_limits(tmp_path, case):
    """Before: the report ran and blamed the configuration (``config field 'groups' = 128``)."""
    meta, arrays = small_trace()
    lm = meta["layers"]["conv"]
    c = 128 if case == "gate_groups 128" else 4
    lm.update(ENGINE_CASES[case][0])
    lm.update(c_out=c, c_in=c)
    k, p = lm["kernel"], lm["padding"]
    size = 12
    lm.update(h=size, w=size, h_out=size + 2 * p - k + 1, w_out=size + 2 * p - k + 1)
    n = 2
    rng = np.random.default_rng(0)
    arrays["conv"].update(
        weights=rng.integers(-9, 9, (c, c, k, k)).astype(np.int8),
        inputs=rng.integers(0, 9, (n, c, size, size)).astype(np.int8),
        weight_scale=np.ones(c, np.float32),
        bias=np.zeros(c, np.int32),
        requant_scale=np.ones(c, np.float32),
        thresholds=np.zeros(c, np.int32),
        gates=np.ones((n, c, lm["h_out"], lm["w_out"]), bool),
    )
    meta["input_shape"] = [c, size, size]
    pool = meta["layers"]["pool"]
    pool.update(c_in=c, c_out=c, h=lm["h_out"], w=lm["w_out"], h_out=lm["h_out"] // 2, w_out=lm["w_out"] // 2)
    flat = meta["layers"]["flatten"]
    flat.update(c_in=c, h=pool["h_out"], w=pool["w_out"], c_out=c * pool["h_out"] * pool["w_out"])
    fc = meta["layers"]["fc"]
    fc["c_in"] = flat["c_out"]
    arrays["fc"].update(
        weights=rng.integers(-9, 9, (3, fc["c_in"])).astype(np.int8),
        inputs=rng.integers(0, 9, (n, fc["c_in"])).astype(np.int8),
    )
    for layer in (lm, fc):
        dense = trace_format.layer_macs(layer)
        gated = trace_format.gated_macs(layer, layer["gate_on_fraction"]) if layer["gated"] else dense
        layer["flops"] = {"dense": dense, "gated": gated}
    meta["flops"] = {key: lm["flops"][key] + fc["flops"][key] for key in ("dense", "gated")}
    path = write_raw(tmp_path / "t.npz", raw_keys(meta, arrays))
    out = tmp_path / "out"
    code, _, err = _run("report", path, "--out", out, "--no-progress", "--no-plots")
    line = _one_line_error(code, err, f"{path}: layer 'conv': metadata field {ENGINE_CASES[case][1]}")
    assert "config" not in line
    assert not out.exists()


def test_engine_config_for_names_the_layer_and_field():
    """A layer built in memory (never validated) still gets the trace's message, not the configuration's."""
    from sim.network import engine_config_for

    meta, _ = small_trace()
    lm = {**meta["layers"]["conv"], "kernel": 12}
    with pytest.raises(
        TraceError, match=r"^layer 'c': metadata field 'kernel' = 12: the engine takes kernels"
    ):
        engine_config_for(EngineConfig(), TraceLayer("c", LayerMeta.from_json(lm)))
    conv = TraceLayer("c", LayerMeta.from_json(meta["layers"]["conv"]))
    cfg, base = engine_config_for(EngineConfig(), conv)
    assert (cfg.kernel, cfg.groups, base) == (3, 2, 0)


def test_engine_limits_are_the_engines():
    from spec.tile import REGISTER_LIMIT

    limits = dict(trace_format.ENGINE_LIMITS)
    limits["groups"] = limits.pop("gate_groups")
    for key, (lo, hi) in limits.items():
        extra = {"kernel": 11, "padding": 0} if key != "kernel" else {"padding": 0}
        for value in (lo, hi):
            EngineConfig(**{**extra, key: value})
        for value in (lo - 1, hi + 1):
            with pytest.raises(ConfigError, match=f"'{key}'"):
                EngineConfig(**{**extra, key: value})
    assert trace_format.ENGINE_MAX_C_IN == REGISTER_LIMIT


# --------------------------------------------------------------------------------------------------------
# 6. More odd metadata


def test_duplicate_json_keys_are_refused(tmp_path):
    meta, _ = small_trace()
    text = json.dumps(meta)
    text = text.replace('"samples": 2', '"samples": 2, "samples": 1', 1)
    path = _with_meta(tmp_path, lambda m: None, text=text)
    _refused(path, "key 'meta'", "the key 'samples' twice")
    nested = json.dumps(meta).replace('"kernel": 3', '"kernel": 3, "kernel": 5', 1)
    _refused(_with_meta(tmp_path, lambda m: None, text=nested), "the key 'kernel' twice")


@pytest.mark.parametrize("where", ["name", "layer name"])
def test_lone_surrogate_is_refused(tmp_path, where):
    """The JSON escape "\\ud800" is valid JSON but no valid Unicode: report.json could not be written."""
    meta, arrays = small_trace()
    if where == "name":
        meta["name"] = "tiny\ud800"
    else:
        weird = "po\udfffol"
        meta["layer_order"] = [weird if k == "pool" else k for k in meta["layer_order"]]
        meta["layers"] = {(weird if k == "pool" else k): v for k, v in meta["layers"].items()}
        meta["layers"]["flatten"]["inputs"] = [weird]
    keys = raw_keys(meta, arrays)  # json.dumps writes the escape
    assert "\\ud" in str(keys["meta"])
    path = write_raw(tmp_path / "bad.npz", keys)
    out = tmp_path / "out"
    code, _, err = _run("report", path, "--out", out, "--no-progress", "--no-plots")
    _one_line_error(code, err, "key 'meta'", "lone surrogate")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["flatten", "add", "relu"])
def test_geometry_fields_on_a_layer_without_geometry(tmp_path, kind):
    """``accel trace info`` printed ``kernel/stride`` of any layer with a kernel: a KeyError before."""
    meta, arrays = small_trace()
    if kind != "flatten":  # a relu (or an add of the pool with itself) after the pool
        extra = {
            "kind": kind,
            "inputs": ["pool"] * (2 if kind == "add" else 1),
            "c_in": 4,
            "c_out": 4,
            "h": 3,
            "w": 3,
            "h_out": 3,
            "w_out": 3,
        }
        meta["layers"] = {**meta["layers"], "extra": extra}
        meta["layer_order"].insert(2, "extra")
        meta["layers"]["flatten"]["inputs"] = ["extra"]
    name = "flatten" if kind == "flatten" else "extra"
    meta["layers"][name]["kernel"] = 3
    path = write_raw(tmp_path / "t.npz", raw_keys(meta, arrays))
    code, _, err = _run("trace", "info", path)
    article = "an" if kind == "add" else "a"
    _one_line_error(
        code, err, f"layer '{name}': metadata field 'kernel' = 3: {article} {kind} layer has none"
    )


def test_gate_on_fraction_of_an_ungated_layer_is_checked(tmp_path):
    path = _with_meta(tmp_path, lambda m: m["layers"]["fc"].__setitem__("gate_on_fraction", "most"))
    _refused(path, "layer 'fc'", "'gate_on_fraction' = 'most'", "expected a number or null")
    load_trace(
        _with_meta(tmp_path, lambda m: m["layers"]["fc"].__setitem__("gate_on_fraction", 0.5), "ok.npz")
    )


@pytest.mark.parametrize("bad", ["f\nc", "f\x1bc", "f\u2028c", "/fc", ""])
def test_layer_names_with_control_characters_or_slashes(tmp_path, bad):
    meta, arrays = small_trace()
    meta["layer_order"] = [bad if k == "fc" else k for k in meta["layer_order"]]
    meta["layers"] = {(bad if k == "fc" else k): v for k, v in meta["layers"].items()}
    arrays = {(bad if k == "fc" else k): v for k, v in arrays.items()}
    with pytest.raises(TraceError, match="layer name"):
        validate_trace(raw_keys(meta, arrays), "mem")


# --------------------------------------------------------------------------------------------------------
# Tiling: the widest column block is computed, not searched from the layer's width down


def test_plan_of_a_very_wide_layer_does_not_hang():
    """A layer 10**12 columns wide tried every block width from 10**12 down before refusing the buffers."""
    code = (
        "from spec.config import EngineConfig, ConfigError\n"
        "from sim.tiling import plan_layer\n"
        "cfg = EngineConfig(kernel=1, padding=0, weight_depth=1)\n"
        "try:\n"
        "    plan_layer(cfg, 16, 16, 1, 10**12, 1, 10**12, 8, 0)\n"
        "except ConfigError as exc:\n"
        "    print('refused', exc)\n"
    )
    start = time.monotonic()
    proc = _python(["-c", code], ROOT, "plan_layer did not finish in 60 s")
    assert proc.returncode == 0 and proc.stdout.startswith("refused"), proc.stderr
    assert "weight_depth = 1" in proc.stdout and time.monotonic() - start < 60


def test_widest_block_equals_trying_every_width():
    from sim.tiling import _widest_block

    def by_search(w_out, w, rows, k, s, mult, cfg):
        # a block's input columns, rounded up to the stride (the plane is deinterleaved by S)
        def cols(w_blk):
            return -(-min(w, (w_blk - 1) * s + k) // s) * s

        w_blk = w_out
        while w_blk > 0 and (rows * cols(w_blk) > cfg.input_depth or mult * w_blk > cfg.output_depth):
            w_blk -= 1
        return w_blk

    rng = random.Random(0)
    for _ in range(3000):
        k, s = rng.randint(1, 11), rng.randint(1, 8)
        cfg = EngineConfig(
            kernel=k, stride=s, padding=0, input_depth=rng.randint(1, 300), output_depth=rng.randint(1, 300)
        )
        args = (rng.randint(1, 200), rng.randint(1, 200), rng.randint(1, 40), k, s, rng.randint(1, 8), cfg)
        assert _widest_block(*args) == by_search(*args), args
