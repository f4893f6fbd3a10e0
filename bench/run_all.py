"""The benchmark suite: every figure of docs/performance.md, measured in one run, as ratios.

    python bench/run_all.py [--quick] [--out FILE] [--skip rtl,scaling,cold]

Absolute times on shared machines drift from run to run; ratios of times taken in the same run, on the
same machine and interleaved, hold. Sections:

* **network**: the whole-network run of the ResNet-18 ImageNet-shaped trace
  (``sim.network.run_network`` on ``traces/resnet18-imagenet-synthetic.npz``, every stored image, default
  system configuration: dense baseline, gated and pruned designs, every counter, traffic and timing) per
  image, against a dense float32 forward pass of the same engine layers (every conv and the fc: im2col
  with numpy, then one matrix product on BLAS) in the same process, best of several interleaved repeats,
  both warm. The reference runs with BLAS's own thread count (the machine's practical limit) and, when
  ``threadpoolctl`` is importable, with one BLAS thread. The model runs on one core (the target's figure)
  and with one thread per core over layers (``workers``, what ``accel report`` does), and once more with
  zero compression, which makes it compute every output value (the plain report computes only what cycles
  and counters depend on). The model's time includes reading each layer's arrays from the compressed
  trace file (timed apart too); an extra instrumented run splits it into the engine (``run_tile``) and the
  rest of the runner.
* **rtl**: ``verification.rtl_bench`` (alone: ``bench/rtl_vs_model.py``): the same tile through the cycle
  model and through the generated Verilog on Icarus and on Verilator (identical results required):
  simulated cycles per second and ratios.
* **scaling**: time and peak memory, each point in a fresh process (``--worker``): against images per
  trace (1, 4, 16; synthetic ResNet-18 traces built once into ``bench/build/traces/``), against the
  array size P x L (one image of the shipped trace) and against the layer size (one synthetic layer,
  gated and dense, the way ``accel run`` runs it). Memory: the process's resident-set high-water mark
  during the run above its size before it (``/proc/self/status`` VmHWM, reset through
  ``/proc/self/clear_refs``), next to the trace's resident size and the largest layer's arrays.
* **cold**: the shipped trace's whole-network run in a fresh process with an empty Numba cache
  (``NUMBA_CACHE_DIR`` set to a new directory: every kernel is compiled), then again with that cache warm.

Results: ``bench/results/benchmarks.json`` (and ``bench/results/rtl_vs_model.json`` from the rtl section),
with the machine they were measured on; the table of ratios and targets is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from verification import rtl_bench
from verification.rtl_bench import format_seconds as _fmt_s
from verification.rtl_bench import table

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

SHIPPED_TRACE = REPO / "traces" / "resnet18-imagenet-synthetic.npz"
TRACE_DIR = HERE / "build" / "traces"
DEFAULT_OUT = HERE / "results" / "benchmarks.json"
SECTIONS = ("network", "rtl", "scaling", "cold")
IMAGES = (1, 4, 16)
ARRAYS = ((4, 4), (8, 8), (16, 16), (32, 32))
LAYER_HW = (14, 28, 56, 112)  # at 64 -> 64 channels
LAYER_C = (32, 64, 128, 256)  # at 28 x 28
TARGETS = {
    "network_over_numpy": 3.0,  # at most
    "model_over_verilator": 1000.0,  # at least
    "cold_start_s": 15.0,  # at most
}


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (VmRSS, VmHWM), or None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    """Reset the resident-set high-water mark (VmHWM) to the current size (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _blas_threads() -> int | None:
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_info

        counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
        return max(counts) if counts else None
    return None


@contextlib.contextmanager
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _table(rows: list[list[str]], left: int = 1) -> str:
    return table(rows, left)


def _fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Slope of log(y) against log(x): y grows like x**slope."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# ---------------------------------------------------------------------------------------------------------
# The numpy reference: dense float32 forward of the engine layers
# ---------------------------------------------------------------------------------------------------------


def reference_layers(trace) -> list[tuple[np.ndarray, np.ndarray, int, int, int]]:
    """Per engine layer: float32 inputs ``[N, c, h, w]``, float32 weights ``[c_out, c*k*k]``, kernel, stride
    and padding.

    The conversion to float32 is done once here, as a float model holds float weights and produces float
    activations; the timed forward pass is im2col + one BLAS matrix product per layer and image.
    """
    layers = []
    for layer in trace.engine_layers():
        x = layer.inputs.astype(np.float32)
        w = layer.weights.astype(np.float32)
        if layer.meta.kind == "fc":
            x = x.reshape(x.shape[0], -1, 1, 1)
            w = w.reshape(w.shape[0], -1, 1, 1)
            s, p = 1, 0
        else:
            s, p = layer.meta.stride, layer.meta.padding
        k = w.shape[-1]
        layers.append((x, np.ascontiguousarray(w.reshape(w.shape[0], -1)), k, s, p))
    return layers


def reference_forward(layers, samples: int, keep: bool = False) -> list[np.ndarray] | None:
    """The timed forward pass; ``keep`` returns each layer's and image's outputs ``[c_out, h*w]`` (tests)."""
    kept = [] if keep else None
    for x_all, w, k, s, p in layers:
        for n in range(samples):
            x = x_all[n]
            c, h, wd = x.shape
            xp = np.pad(x, ((0, 0), (p, p), (p, p))) if p else x
            h_out = (h + 2 * p - k) // s + 1
            w_out = (wd + 2 * p - k) // s + 1
            win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::s, ::s]
            cols = np.ascontiguousarray(win[:, :h_out, :w_out].transpose(1, 2, 0, 3, 4)).reshape(
                h_out * w_out, -1
            )
            y = np.matmul(cols, w.T)
            if keep:
                kept.append(y.T)
    return kept


# ---------------------------------------------------------------------------------------------------------
# Section: network
# ---------------------------------------------------------------------------------------------------------


def bench_network(quick: bool, log) -> dict:
    import sim.network as network
    from spec.system import SystemConfig
    from trace_format import load_trace

    trace = load_trace(SHIPPED_TRACE)
    config = SystemConfig()
    # The same report with zero compression counts the bytes of every output value: the engine computes
    # all outputs (the default report computes only what cycles and counters depend on, the gate bits).
    config_out = dataclasses.replace(config, report=dataclasses.replace(config.report, zero_compression=True))
    n = trace.meta.samples
    log(f"network: warm-up (trace {SHIPPED_TRACE.name}, {n} images)")
    t0 = time.perf_counter()
    run = network.run_network(trace, config)
    first_s = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    network.run_network(trace, config_out, workers=cores)
    layers = reference_layers(trace)
    reference_forward(layers, n)
    one_thread = _blas_threads() is not None
    repeats = 3 if quick else 7
    model_s, par_s, out_s, ref_s, ref1_s = [], [], [], [], []
    for _ in range(repeats):  # interleaved: the machine's drift hits both alike
        gc.collect()
        t0 = time.perf_counter()
        network.run_network(trace, config)
        model_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        network.run_network(trace, config, workers=cores)
        par_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        network.run_network(trace, config_out, workers=cores)
        out_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference_forward(layers, n)
        ref_s.append(time.perf_counter() - t0)
        if one_thread:
            with _one_blas_thread():
                t0 = time.perf_counter()
                reference_forward(layers, n)
                ref1_s.append(time.perf_counter() - t0)

    # One instrumented run: time spent in the engine model (run_tile) vs the rest of the runner.
    engine = {"calls": 0, "s": 0.0}
    original = network.run_tile

    def timed(cfg, tile, outputs=True, **run):
        t = time.perf_counter()
        try:
            return original(cfg, tile, outputs, **run)
        finally:
            engine["s"] += time.perf_counter() - t
            engine["calls"] += 1

    network.run_tile = timed
    try:
        t0 = time.perf_counter()
        network.run_network(trace, config)
        instrumented_s = time.perf_counter() - t0
    finally:
        network.run_tile = original

    # What the runner reads from the trace file per run (a loaded trace reads large arrays on access).
    read_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        for layer in trace.engine_layers():
            _ = (layer.inputs, layer.weights)
        read_s.append(time.perf_counter() - t0)

    mapped = run.mapped()
    macs_dense = sum(lr.macs_dense for lr in mapped)
    counters = {d: sum(lr.designs[d].macs for lr in mapped) for d in ("dense", "gated", "pruned")}
    best, best_ref = min(model_s), min(ref_s)
    out = {
        "trace": str(SHIPPED_TRACE.relative_to(REPO)),
        "images": n,
        "engine_layers": len(layers),
        "tiles_per_image_pass": sum(lr.tiles for lr in mapped),
        "dense_macs_per_image": macs_dense,
        "model_macs_per_image": counters,
        "repeats": repeats,
        "first_run_s": first_s,
        "model_s": model_s,
        "model_per_image_s": best / n,
        "reference_s": ref_s,
        "reference_per_image_s": best_ref / n,
        "reference_blas_threads": _blas_threads(),
        "ratio_model_over_reference": best / best_ref,
        "cores": cores,
        "model_all_cores_s": par_s,
        "model_all_cores_per_image_s": min(par_s) / n,
        "ratio_model_all_cores_over_reference": min(par_s) / best_ref,
        "model_with_outputs_all_cores_s": out_s,
        "model_with_outputs_all_cores_per_image_s": min(out_s) / n,
        "ratio_model_with_outputs_all_cores_over_reference": min(out_s) / best_ref,
        "instrumented_run_s": instrumented_s,
        "run_tile_calls": engine["calls"],
        "run_tile_s": engine["s"],
        "run_tile_share": engine["s"] / instrumented_s,
        "run_tile_per_call_s": engine["s"] / max(engine["calls"], 1),
        "trace_read_per_image_s": min(read_s) / n,
    }
    if ref1_s:
        out["reference_1thread_s"] = ref1_s
        out["reference_1thread_per_image_s"] = min(ref1_s) / n
        out["ratio_model_over_reference_1thread"] = best / min(ref1_s)
    return out


# ---------------------------------------------------------------------------------------------------------
# Section: scaling (each point in a fresh process)
# ---------------------------------------------------------------------------------------------------------


def _trace_for(images: int, log) -> Path:
    """A synthetic ResNet-18 trace (ImageNet shapes) with ``images`` samples, built once into TRACE_DIR."""
    path = TRACE_DIR / f"resnet18-imagenet-synthetic-n{images}.npz"
    if not path.is_file():
        from sim.resnet18_synthetic import build_resnet18
        from trace_format import save_trace

        log(f"scaling: building a {images}-image trace ({path.relative_to(REPO)}) ...")
        meta, arrays = build_resnet18(samples=images, gate_rate=0.3, seed=0, date="2000-01-01")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_trace(path, meta, arrays)
    return path


def _worker(spec: dict) -> dict:
    """One scaling point, in this (fresh) process: warm the kernels, then time and measure one run (a
    layer: the best of three, the memory of the first)."""
    from sim.engine import run_tile
    from spec.config import EngineConfig
    from spec.system import SystemConfig
    from spec.tile import TileGeometry, random_tile

    # Warm-up: the Numba kernels load from the cache (or compile) on a tiny tile, outside the measurement.
    warm_cfg = EngineConfig(input_depth=1 << 12)
    run_tile(
        warm_cfg,
        random_tile(warm_cfg, TileGeometry.full_layer(warm_cfg, 16, 4, 4, 4), np.random.default_rng(0)),
    )
    rss_start = _status_kb("VmRSS")
    result: dict = {"spec": spec}
    if spec["kind"] == "network":
        from sim.network import run_network
        from trace_format import load_trace

        t0 = time.perf_counter()
        trace = load_trace(spec["trace"])
        result["load_s"] = time.perf_counter() - t0
        gc.collect()
        rss_before = _status_kb("VmRSS")
        result["trace_rss_kb"] = rss_before - rss_start if rss_before and rss_start else None
        # From the .npy headers: the loader reads an array only when it is used.
        result["trace_array_bytes"] = int(sum(layer.arrays.nbytes for layer in trace))
        engine = EngineConfig(pes=spec["pes"], lanes=spec["lanes"])
        config = SystemConfig(engine=engine)
        samples = spec.get("samples")
        reset = _reset_peak()
        t0 = time.perf_counter()
        run = run_network(trace, config, samples=samples)
        result["wall_s"] = time.perf_counter() - t0
        hwm = _status_kb("VmHWM")
        result["images"] = run.samples
        mapped = run.mapped()
        result["tiles"] = sum(lr.tiles for lr in mapped)
        result["dense_macs_per_image"] = sum(lr.macs_dense for lr in mapped)
        result["engine_macs_per_image"] = {
            d: sum(lr.designs[d].macs for lr in mapped) for d in ("dense", "gated", "pruned")
        }
        result["cycles_per_image"] = {
            d: sum(lr.designs[d].counters["cycles"] for lr in mapped) for d in ("dense", "gated", "pruned")
        }
        # The largest layer's arrays (all samples): what streaming layer by layer has to hold at least.
        result["largest_layer_array_bytes"] = int(max(layer.arrays.nbytes for layer in trace.engine_layers()))
    else:  # one synthetic layer, gated and dense, as `accel run` runs it
        import dataclasses

        from sim.synthetic import cut_tiles, synthetic_layer

        c, hw = spec["c"], spec["hw"]
        config = EngineConfig(kernel=3, stride=1, padding=1, groups=2)
        layer = synthetic_layer(c, c, hw, hw, 3, 1, 1, 2, 0.3, 0)
        tiles = cut_tiles(layer, config)
        gc.collect()
        rss_before = _status_kb("VmRSS")
        reset = _reset_peak()
        runs = [
            dataclasses.replace(tile, geometry=dataclasses.replace(tile.geometry, dense=dense))
            for tile in tiles
            for dense in (True, False)
        ]
        walls = []
        for _ in range(3):
            macs = 0
            t0 = time.perf_counter()
            for run in runs:
                r = run_tile(config, run).counters
                macs += r["base_macs"] + r["cond_macs"]
            walls.append(time.perf_counter() - t0)
            if len(walls) == 1:
                hwm = _status_kb("VmHWM")
        result["wall_s"] = min(walls)
        result["tiles"] = len(tiles)
        result["engine_macs"] = macs
        result["dense_macs"] = 9 * c * c * hw * hw
        result["layer_array_bytes"] = int(layer.inputs.nbytes + layer.weights.nbytes)
    result["peak_reset"] = reset
    result["run_peak_rss_above_start_kb"] = (hwm - rss_before) if (reset and hwm and rss_before) else None
    result["rss_before_run_kb"] = rss_before
    result["peak_rss_kb"] = hwm
    return result


def _spawn(spec: dict, env: dict | None = None, timeout: float = 600) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = wall
    return res


def bench_scaling(quick: bool, log) -> dict:
    out: dict = {"images": [], "arrays": [], "layer_hw": [], "layer_c": []}
    for n in IMAGES:
        path = _trace_for(n, log)
        log(f"scaling: {n} image(s) per trace ...")
        out["images"].append(_spawn({"kind": "network", "trace": str(path), "pes": 8, "lanes": 8}))
    for pes, lanes in ARRAYS if not quick else ARRAYS[:3]:
        log(f"scaling: P = {pes}, L = {lanes} ...")
        spec = {"kind": "network", "trace": str(SHIPPED_TRACE), "pes": pes, "lanes": lanes, "samples": 1}
        out["arrays"].append(_spawn(spec))
    for hw in LAYER_HW:
        log(f"scaling: layer 64 -> 64 channels, {hw} x {hw} ...")
        out["layer_hw"].append(_spawn({"kind": "layer", "c": 64, "hw": hw}))
    for c in LAYER_C:
        log(f"scaling: layer {c} -> {c} channels, 28 x 28 ...")
        out["layer_c"].append(_spawn({"kind": "layer", "c": c, "hw": 28}))

    # Growth: linear fits (time = fixed + slope * x) and power-law exponents (time ~ x**e).
    imgs = out["images"]
    n, t = [r["images"] for r in imgs], [r["wall_s"] for r in imgs]
    slope, fixed = np.polyfit(n, t, 1)
    out["time_vs_images"] = {
        "fixed_s": float(fixed),
        "per_image_s": float(slope),
        "exponent": _fit_exponent(n, t),
    }
    arr = out["arrays"]
    tiles, t = [r["tiles"] for r in arr], [r["wall_s"] for r in arr]
    slope, fixed = np.polyfit(tiles, t, 1)
    out["time_vs_tiles_arrays"] = {
        "fixed_s": float(fixed),
        "per_tile_s": float(slope),
        "exponent": _fit_exponent(tiles, t),
    }
    layers = out["layer_hw"] + out["layer_c"]
    macs, t = [r["engine_macs"] for r in layers], [r["wall_s"] for r in layers]
    per_mac = [b / a for a, b in zip(macs, t, strict=True)]
    out["time_vs_macs_layers"] = {
        "exponent": _fit_exponent(macs, t),
        "ns_per_mac_min": min(per_mac) * 1e9,
        "ns_per_mac_max": max(per_mac) * 1e9,
    }
    return out


# ---------------------------------------------------------------------------------------------------------
# Section: cold start
# ---------------------------------------------------------------------------------------------------------

_COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from spec.system import SystemConfig
from sim.network import run_network
from trace_format import load_trace
t_import = time.perf_counter()
trace = load_trace({trace!r})
t_load = time.perf_counter()
run_network(trace, SystemConfig())
t_first = time.perf_counter()
run_network(trace, SystemConfig())
t_second = time.perf_counter()
print(json.dumps({{"import_s": t_import - t0, "load_s": t_load - t_import, "first_run_s": t_first - t_load,
                  "second_run_s": t_second - t_first, "in_process_s": t_first - t0}}))
"""


def bench_cold(log) -> dict:
    script = _COLD_SCRIPT.format(trace=str(SHIPPED_TRACE))
    out = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            log(f"cold start: {label} Numba cache ...")
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise RuntimeError(f"cold-start run failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["process_wall_s"] = wall  # interpreter start to exit, what a user waits
            out[label] = res
    out["compile_s"] = out["cold"]["first_run_s"] - out["warm"]["first_run_s"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def summary_rows(res: dict) -> list[list[str]]:
    rows = [["measure", "value", "target", "met"]]
    net = res.get("network")
    if net:
        t = TARGETS["network_over_numpy"]
        r = net["ratio_model_over_reference"]
        blas = net["reference_blas_threads"]
        rows.append(
            [
                f"whole-network report (model, 1 core) / numpy float32 forward (BLAS {blas} thr.), per image",
                f"{r:.2f}x",
                f"<= {t:g}x",
                "yes" if r <= t else "no",
            ]
        )
        rows.append(
            [
                f"  same, model on {net['cores']} cores (threads over layers) / numpy (BLAS {blas} threads)",
                f"{net['ratio_model_all_cores_over_reference']:.2f}x",
                "",
                "",
            ]
        )
        if "ratio_model_over_reference_1thread" in net:
            r1 = net["ratio_model_over_reference_1thread"]
            rows.append(["  same, model on 1 core / numpy on 1 BLAS thread", f"{r1:.2f}x", "", ""])
        rows.append(
            [
                f"  every output value computed too (zero-compression report), {net['cores']} cores / numpy",
                f"{net['ratio_model_with_outputs_all_cores_over_reference']:.2f}x",
                "",
                "",
            ]
        )
        rows.append(
            [
                "  model per image / numpy per image",
                f"{_fmt_s(net['model_per_image_s'])} / {_fmt_s(net['reference_per_image_s'])}",
                "",
                "",
            ]
        )
        rows.append(
            ["  share of the run in the engine model (run_tile)", f"{net['run_tile_share']:.0%}", "", ""]
        )
        rows.append(
            [
                "  reading the layers' arrays from the compressed trace, per image",
                _fmt_s(net["trace_read_per_image_s"]),
                "",
                "",
            ]
        )
    rtl = res.get("rtl")
    if rtl:
        t = TARGETS["model_over_verilator"]
        for name, case in rtl["cases"].items():
            for sim, ratio in case["ratios_cycles_per_s"].items():
                sim_name = sim.removeprefix("model_over_")
                target = f">= {t:g}x" if sim_name == "verilator" else ""
                met = ("yes" if ratio >= t else "no") if sim_name == "verilator" else ""
                rows.append(
                    [f"cycle model / {sim_name}, {name} tile (cycles/s)", f"{ratio:,.0f}x", target, met]
                )
            rows.append(
                [f"  {name} tile: results identical", "yes" if case["identical"] else "NO", "yes", ""]
            )
    sc = res.get("scaling")
    if sc:
        imgs = sc["images"]
        a, b = imgs[0], imgs[-1]
        growth = (b["run_peak_rss_above_start_kb"] or 0) / 1024
        base = (a["run_peak_rss_above_start_kb"] or 0) / 1024
        rows.append(
            [
                f"run peak RSS above start, {a['images']} -> {b['images']} images",
                f"{base:.0f} -> {growth:.0f} MiB",
                "one layer",
                "",
            ]
        )
        rows.append(
            [
                f"  trace resident, {a['images']} -> {b['images']} images",
                f"{(a['trace_rss_kb'] or 0) / 1024:.0f} -> {(b['trace_rss_kb'] or 0) / 1024:.0f} MiB",
                "",
                "",
            ]
        )
        ti = sc["time_vs_images"]
        rows.append(
            [
                "time vs images: fixed + per image (linear fit)",
                f"{_fmt_s(ti['fixed_s'])} + {_fmt_s(ti['per_image_s'])} x N",
                "",
                "",
            ]
        )
        tl = sc["time_vs_macs_layers"]
        rows.append(
            [
                "time vs layer size: per engine MAC (exponent)",
                f"{tl['ns_per_mac_min']:.3f}-{tl['ns_per_mac_max']:.3f} ns ({tl['exponent']:.2f})",
                "",
                "",
            ]
        )
        ta = sc["time_vs_tiles_arrays"]
        rows.append(
            [
                "time vs P x L sweep: fixed + per tile (linear fit)",
                f"{_fmt_s(ta['fixed_s'])} + {_fmt_s(ta['per_tile_s'])} x tiles",
                "",
                "",
            ]
        )
    cold = res.get("cold")
    if cold:
        t = TARGETS["cold_start_s"]
        c = cold["cold"]["process_wall_s"]
        rows.append(
            [
                "cold start, empty Numba cache (process, whole network)",
                f"{c:.1f} s",
                f"< {t:g} s",
                "yes" if c < t else "no",
            ]
        )
        rows.append(["  same, Numba cache warm", f"{cold['warm']['process_wall_s']:.1f} s", "", ""])
        rows.append(["  JIT compilation (cold - warm first run)", f"{cold['compile_s']:.1f} s", "", ""])
    return rows


def print_scaling(sc: dict) -> None:
    rows = [["images", "wall", "per image", "tiles/pass", "run peak RSS", "trace RSS", "largest layer"]]
    for r in sc["images"]:
        rows.append(
            [
                str(r["images"]),
                _fmt_s(r["wall_s"]),
                _fmt_s(r["wall_s"] / r["images"]),
                str(r["tiles"]),
                f"{(r['run_peak_rss_above_start_kb'] or 0) / 1024:.0f} MiB",
                f"{(r['trace_rss_kb'] or 0) / 1024:.0f} MiB",
                f"{r['largest_layer_array_bytes'] / 2**20:.0f} MiB",
            ]
        )
    print(_table(rows))
    print()
    rows = [
        ["P x L", "wall (1 image)", "tiles", "gated cycles", "ns/tile", "ns per dense MAC", "run peak RSS"]
    ]
    for r in sc["arrays"]:
        rows.append(
            [
                f"{r['spec']['pes']} x {r['spec']['lanes']}",
                _fmt_s(r["wall_s"]),
                str(r["tiles"]),
                f"{r['cycles_per_image']['gated']:.3g}",
                f"{r['wall_s'] / r['tiles'] * 1e9:,.0f}",
                f"{r['wall_s'] / r['dense_macs_per_image'] * 1e9:.3f}",
                f"{(r['run_peak_rss_above_start_kb'] or 0) / 1024:.0f} MiB",
            ]
        )
    print(_table(rows))
    print()
    rows = [["layer", "wall (gated + dense)", "tiles", "engine MACs", "ns per MAC", "run peak RSS"]]
    for r in sc["layer_hw"] + sc["layer_c"]:
        s = r["spec"]
        rows.append(
            [
                f"{s['c']} -> {s['c']} ch, {s['hw']}x{s['hw']}",
                _fmt_s(r["wall_s"]),
                str(r["tiles"]),
                f"{r['engine_macs']:.3g}",
                f"{r['wall_s'] / r['engine_macs'] * 1e9:.3f}",
                f"{(r['run_peak_rss_above_start_kb'] or 0) / 1024:.1f} MiB",
            ]
        )
    print(_table(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, smaller sweeps")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument(
        "--skip", default="", help=f"sections to leave out, comma-separated ({', '.join(SECTIONS)})"
    )
    ap.add_argument("--sims", default="icarus,verilator", help="RTL simulators, comma-separated")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    for s in skip:
        if s not in SECTIONS:
            ap.error(f"--skip: unknown section {s!r} (known: {', '.join(SECTIONS)})")
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", flush=True)

    res: dict = {
        "benchmark": "run_all",
        "command": shlex.join(["python", "bench/run_all.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": rtl_bench.machine(),
        "quick": args.quick,
        "targets": TARGETS,
    }
    mem = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1])
    res["machine"]["mem_total_kb"] = mem
    res["machine"]["blas_threads"] = _blas_threads()
    if "cold" not in skip:  # first: nothing of this process's own warm-up can help it
        res["cold"] = bench_cold(log)
    if "network" not in skip:
        res["network"] = bench_network(args.quick, log)
    if "rtl" not in skip:
        sims = [s.strip() for s in args.sims.split(",") if s.strip()]
        rtl = rtl_bench.measure(args.quick, sims, log=log)
        res["rtl"] = rtl
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "rtl_vs_model.json").write_text(
            json.dumps(
                {
                    "benchmark": "rtl_vs_model",
                    "command": res["command"],
                    "date": res["date"],
                    "machine": res["machine"],
                    **rtl,
                },
                indent=2,
            )
            + "\n"
        )
    if "scaling" not in skip:
        res["scaling"] = bench_scaling(args.quick, log)
    res["total_wall_s"] = time.perf_counter() - started

    print()
    if "rtl" in res:
        rtl_bench.print_results(res["rtl"])
        print()
    if "scaling" in res:
        print_scaling(res["scaling"])
        print()
    print(_table(summary_rows(res)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"\nresults: {args.out}  (total {res['total_wall_s']:.0f} s)")
    identical = res.get("rtl", {}).get("identical", True)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
