"""Speed of the cycle model against RTL simulation of the same engine, measured in one run.

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
  (:mod:`verification.rtl_bench_tb`): the tile is loaded once and run back to back several times on the
  same data; only the run phase (the edge that samples ``start`` to the rising edge of ``done``) is timed,
  and in it Python does nothing (GPI clock, one ``RisingEdge(dut.done)`` trigger), so the rate is the
  simulator's. Simulated cycles per second = ``cycles`` counter / run-phase wall time (best run). The
  simulator time between the two edges is checked against the ``cycles`` counter for every run.
* **Identical results**: every output ``y``, gate bit and counter read back from each simulator must equal
  the model's; otherwise ``identical: no``.
* **Ratios**: model cycles/s / simulator cycles/s on the same tile, from this same run.

Builds come from the one build cache (:mod:`verification.build`; Verilator's C++ at its default
optimization, since this is a speed measurement); the testbench's data and logs go to ``rtl-bench/`` beside
it. :func:`measure` and :func:`print_results` are what ``bench/rtl_vs_model.py`` and ``bench/run_all.py``
call.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from spec.config import EngineConfig
from spec.protocol import COUNTER_NAMES
from spec.tile import Tile, TileGeometry, random_tile
from verification.build import build, default_cache_root, generate, run_testbench
from verification.driver import decode_outputs
from verification.layout import decode_counter
from verification.rtl_bench_tb import DATA_ENV, RESULT_ENV, save_data
from verification.simulators import SIMULATORS, build_args, simulator_status, tool_version

__all__ = ["CASES", "SIMULATORS", "format_seconds", "machine", "measure", "print_results", "table"]

TB_MODULE = "verification.rtl_bench_tb"
GATE_RATE = 0.3
SEED = 2024

# The small configuration and tile: simulated by the RTL and by the model.
SMALL_CONFIG = EngineConfig(
    pes=4, lanes=8, kernel=3, stride=1, padding=1, groups=2,
    input_depth=256, weight_depth=256, output_depth=512, threshold_depth=16,
)  # fmt: skip
SMALL_TILE = {"c_in": 16, "c_out": 8, "h_in": 8, "w_in": 8}
# The large tile: model only, default P = 8, L = 8, buffers as deep as the tile needs.
LARGE_CONFIG = EngineConfig(
    kernel=3, stride=1, padding=1, groups=2,
    input_depth=1 << 15, weight_depth=1 << 13, output_depth=1 << 18, threshold_depth=256,
)  # fmt: skip
LARGE_TILE = {"c_in": 64, "c_out": 64, "h_in": 56, "w_in": 56}
# The network case: the first tile of this layer of the shipped ResNet-18 trace, sample 0, gated.
NETWORK_TRACE = Path(__file__).resolve().parents[1] / "traces" / "resnet18-imagenet-synthetic.npz"
NETWORK_LAYER = "layer1.0.conv1"
CASES = ("small", "network")


def work_root() -> Path:
    """Where the testbench's data and logs go: beside the build cache."""
    return default_cache_root().parent / "rtl-bench"


# ---------------------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------------------


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
    versions["iverilog"] = tool_version(["iverilog", "-V"])
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
    from sim.layer_tiles import cut_layer
    from spec.system import SystemConfig
    from trace_format import load_trace

    cut = cut_layer(load_trace(trace_path)[layer_name], SystemConfig().engine)
    tile = cut.tile(0, sample=0)
    tile.check(cut.config)
    return cut.config, tile


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
# The RTL
# ---------------------------------------------------------------------------------------------------------


def run_rtl(sim: str, build_dir: Path, data: Path, work: Path) -> dict:
    """The timed runs of :mod:`verification.rtl_bench_tb` on one build."""
    shutil.rmtree(work, ignore_errors=True)
    result_file = work / "result.json"
    env = {DATA_ENV: str(data), RESULT_ENV: str(result_file)}
    ran = run_testbench(sim, build_dir, TB_MODULE, work, env)
    if ran.aborted is not None:
        raise RuntimeError(f"{sim}: the simulation failed ({ran.aborted!r}); log: {ran.log_file}")
    if not result_file.is_file():
        raise RuntimeError(f"{sim}: the testbench wrote no result; log: {ran.log_file}")
    out = json.loads(result_file.read_text())
    out["process_wall_s"] = ran.wall_s
    out["log"] = str(ran.log_file)
    return out


def compare(config: EngineConfig, tile: Tile, model, rtl: dict) -> list[str]:
    """Every disagreement between the RTL's read-back and the model (first output, all counters)."""
    problems = []
    got = decode_outputs(config, tile.geometry, rtl["outputs"])
    y, gate = got.y, got.gate
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


def format_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def table(rows: list[list[str]], left: int = 2) -> str:
    """Rows as a text table under a header rule: the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
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
    started = time.perf_counter()
    out: dict = {"cases": {}, "identical": True}
    for name in cases:
        config, tile = _case(name)
        log(f"[{name}] cycle model ...")
        model = bench_model(config, tile, repeats=3 if quick else 7, min_repeat_s=0.05 if quick else 0.2)
        result = model.pop("_result")
        log(f"[{name}] generating Verilog ...")
        t0 = time.perf_counter()
        generate(config)
        generate_s = time.perf_counter() - t0
        rtl: dict[str, dict] = {}
        problems: dict[str, list[str]] = {}
        for sim in sims:
            usable, what = simulator_status(sim)
            if not usable:
                problems[sim] = [f"unavailable: {what}"]
                continue
            log(f"[{name}] {sim}: building ...")
            built = build(sim, config, optimize=True)
            build_s = built.seconds
            log(f"[{name}] {sim}: running ...")
            plan = _tb_plan(name, sim, quick)
            data = save_data(work_root() / "data" / f"{name}-{sim}.npz", config, tile, plan)
            try:
                res = run_rtl(sim, built.directory, data, work_root() / "run" / f"{name}-{sim}")
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


def _row(case: str, engine: str, tile: str, r: dict, wall: float, ratio: str) -> list[str]:
    cycles_per_s, macs_per_s = _si(r["cycles_per_s"]), _si(r["macs_per_s"])
    return [case, engine, tile, str(r["cycles"]), str(r["macs"]), format_seconds(wall), cycles_per_s,
            macs_per_s, ratio]  # fmt: skip


def print_results(res: dict) -> None:
    head = ["case", "engine", "tile", "cycles", "MACs", "wall/run", "cycles/s", "MACs/s", "model/this"]
    rows = [head]
    for name, c in res["cases"].items():
        m = c["model"]
        rows.append(_row(name, "cycle model", m["tile"], m, m["wall_s_best"], "1"))
        for sim, r in c["rtl"].items():
            ratio = f"{c['ratios_cycles_per_s'][f'model_over_{sim}']:,.0f}"
            rows.append(_row(name, f"RTL {sim}", m["tile"], r, r["run_wall_s_best"], ratio))
    m = res["large_model"]["model"]
    rows.append(_row("large", "cycle model", m["tile"], m, m["wall_s_best"], "-"))
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
                f"same loaded tile (median {format_seconds(r['run_wall_s_median'])}); build "
                f"{'reused' if r['build_s'] is None else format_seconds(r['build_s'])}"
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
