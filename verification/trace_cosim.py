"""Real traces through the Verilog: every engine layer cut into the tiles the network runner runs, each
run through the engine's Verilog (inside the recorder, :mod:`verification.trace_tb`) and compared with the
cycle model: what ``accel cosim`` does.

* :func:`trace_cases` cuts a trace (:mod:`sim.layer_tiles`) and computes the model's expectations for the
  three designs: **dense** (the baseline: every tile in dense mode), **gated** (gated layers' tiles gated,
  the others dense, as the gated design runs them) and **pruned** (the two-pass protocol: a ``PHASE1`` run,
  then ``PHASE2`` on the gated-on activations of the channels whose share of gates on in this image is
  above the pruning threshold, as ``sim.network`` decides it).
* :func:`run_recorded` runs a list of cases in one simulation of the recorder build and returns what each
  tile's run took and the failures.
* :func:`design_cycles` sums the co-simulated tiles' engine cycles per layer and design the way the
  network runner counts them (the pruned design adds the host's turn between the passes), to set beside
  the report's compute cycles.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sim.layer_tiles import LayerTiles, cut_layer, unmapped_reason
from spec.config import ConfigError
from spec.protocol import RunMode
from spec.system import SystemConfig
from spec.tile import QueueLoad
from trace_format import Trace
from verification.build import build, run_testbench
from verification.cosim import expectations, read_testcases
from verification.cosim_data import DATA_ENV, REPORT_ENV, STATS_ENV, CosimCase, save_cases
from verification.recorder import RECORDER_TOP
from verification.trace_tb import LOAD_ENV, LOG_ENV

__all__ = [
    "DESIGNS",
    "RecordedRun",
    "TraceTile",
    "check_request",
    "cheapest_tile",
    "design_cycles",
    "engine_layers",
    "layer_cases",
    "pick_tiles",
    "run_recorded",
    "trace_cases",
]

DESIGNS = ("dense", "gated", "pruned")
TB_MODULE = "verification.trace_tb"


@dataclass
class TraceTile:
    """One engine run of a trace: which layer, tile, image and design, and the case with its expectations.

    ``step``: "" for a full run, "pass 1" / "pass 2" for the pruned design's two passes; ``host_cycles``:
    the host's turn after pass 1 (reading the work queue, writing back the kept entries), which the
    network runner counts in the pruned design's cycles.
    """

    layer: str
    tile: int
    sample: int
    design: str
    step: str
    case: CosimCase
    host_cycles: int = 0
    counts_for: tuple[str, ...] = ()  # the designs whose cycles this run is (an ungated layer: all)


def pick_tiles(n: int, limit: int | None) -> list[int]:
    """Which of a layer's ``n`` tiles to run: all, or ``limit`` spread evenly (the first and last among
    them)."""
    if limit is None or limit >= n:
        return list(range(n))
    if limit <= 1:
        return [0]
    return sorted({round(k * (n - 1) / (limit - 1)) for k in range(limit)})


def _layer_gates(cut: LayerTiles, sample: int) -> np.ndarray:
    """The gate bits of a gated layer's outputs for one image, from the cycle model (tile by tile)."""
    from sim.engine import run_tile

    m = cut.layer.meta
    gates = np.zeros((m.c_out, m.h_out, m.w_out), dtype=bool)
    for i in range(len(cut.plan)):
        gates[cut.where(i)] = run_tile(cut.config, cut.tile(i, sample), outputs=False).gates
    return gates


def _engine_layers(trace: Trace, system: SystemConfig, layers: Sequence[str] | None) -> Iterator[LayerTiles]:
    names = [layer.name for layer in trace]
    if layers:
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise ConfigError(
                f"{trace.path}: no layer {unknown[0]!r} (engine layers: "
                + ", ".join(layer.name for layer in trace if not unmapped_reason(layer))
                + ")"
            )
    for layer in trace:
        if layers and layer.name not in layers:
            continue
        if unmapped_reason(layer):
            if layers:
                raise ConfigError(f"{trace.path}: layer {layer.name!r} is not run by the engine: "
                                  f"{unmapped_reason(layer)}")  # fmt: skip
            continue
        yield cut_layer(layer, system.engine)


def engine_layers(
    trace: Trace, system: SystemConfig, layers: Sequence[str] | None = None
) -> list[LayerTiles]:
    """The engine layers of ``trace`` (only ``layers``, by name, when given) cut as the runner cuts them."""
    return list(_engine_layers(trace, system, layers))


def layer_cases(
    cut: LayerTiles,
    system: SystemConfig,
    designs: Sequence[str] = ("dense", "gated"),
    samples: int = 1,
    tiles_per_layer: int | None = None,
    indices: Sequence[int] | None = None,
) -> list[TraceTile]:
    """The runs of one layer (see :func:`trace_cases`); ``indices``: exactly these tiles."""
    name, cfg = cut.layer.name, cut.config
    threshold = system.report.prune_threshold
    out: list[TraceTile] = []
    for s in range(samples):
        pruned = None
        if "pruned" in designs and cut.gated:
            gates = _layer_gates(cut, s)
            m = cut.layer.meta
            pruned = gates.reshape(m.c_out, -1).sum(axis=1) / (m.h_out * m.w_out) <= threshold
        for i in pick_tiles(len(cut.plan), tiles_per_layer) if indices is None else indices:
            label = f"{name} tile {i} image {s}"
            if not cut.gated:  # every design runs it dense
                case = expectations(cfg, f"{label} dense", cut.tile(i, s, dense=True))
                out.append(TraceTile(name, i, s, "dense", "", case, counts_for=tuple(designs)))
                continue
            if "dense" in designs:
                case = expectations(cfg, f"{label} dense", cut.tile(i, s, dense=True))
                out.append(TraceTile(name, i, s, "dense", "", case, counts_for=("dense",)))
            if "gated" in designs:
                case = expectations(cfg, f"{label} gated", cut.tile(i, s))
                out.append(TraceTile(name, i, s, "gated", "", case, counts_for=("gated",)))
            if pruned is not None:
                tile = cut.tile(i, s)
                keep = ~pruned[cut.where(i)[0]]
                pass1 = expectations(cfg, f"{label} pruned pass 1", tile, run=RunMode.PHASE1)
                queue = QueueLoad.after_phase1(pass1.outputs, pass1.gates, keep)
                pass2 = expectations(cfg, f"{label} pruned pass 2", tile, run=RunMode.PHASE2, queue=queue)
                on = int(pass1.counters["gates_on"])
                host = on + (len(queue.lins) if len(queue.lins) < on else 0)
                out.append(TraceTile(name, i, s, "pruned", "pass 1", pass1, 0, ("pruned",)))
                out.append(TraceTile(name, i, s, "pruned", "pass 2", pass2, host, ("pruned",)))
    return out


def cheapest_tile(cut: LayerTiles) -> int:
    """The tile of ``cut`` whose gated run (dense for an ungated layer) takes the fewest cycles, image 0."""
    from sim.engine import run_tile

    cycles = [
        run_tile(cut.config, cut.tile(i), outputs=False).counters["cycles"] for i in range(len(cut.plan))
    ]
    return int(np.argmin(cycles))


def check_request(trace: Trace, designs: Sequence[str], samples: int) -> None:
    """Refuse designs and sample counts the trace cannot give, before any work."""
    bad = [d for d in designs if d not in DESIGNS]
    if bad:
        raise ConfigError(f"design {bad[0]!r}: expected some of {', '.join(DESIGNS)}")
    if not designs:
        raise ConfigError(f"no design: expected some of {', '.join(DESIGNS)}")
    stored = trace.meta.samples
    if not 1 <= samples <= stored:
        raise ConfigError(f"samples = {samples}: the trace stores {stored} (choose 1..{stored})")


def trace_cases(
    trace: Trace,
    system: SystemConfig,
    designs: Sequence[str] = ("dense", "gated"),
    samples: int = 1,
    layers: Sequence[str] | None = None,
    tiles_per_layer: int | None = None,
) -> list[TraceTile]:
    """Every run of the chosen designs, layers (default: every engine layer), tiles (default: all, else
    ``tiles_per_layer`` spread over each layer) and the first ``samples`` images, with the cycle model's
    expectations; an ungated layer's tiles run once, dense, for every design (as each design runs them)."""
    check_request(trace, designs, samples)
    out: list[TraceTile] = []
    for cut in _engine_layers(trace, system, layers):
        out += layer_cases(cut, system, designs, samples, tiles_per_layer)
    return out


@dataclass
class RecordedRun:
    """One simulation of the recorder build: per case what its run took (``stats``, in order) and the
    failures (each with ``tile``, the case's index in the list run, and ``message``)."""

    stats: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    wall_s: float = 0.0
    log: Path | None = None
    waves: Path | None = None


def run_recorded(
    sim: str,
    system: SystemConfig,
    cases: Sequence[CosimCase],
    cache_root: Path | None,
    work_dir: Path,
    waves: bool = False,
) -> RecordedRun:
    """Run ``cases`` in order in one simulation of the build ``system.engine`` inside the recorder
    (Verilator builds optimized C++; ``waves``: a waveform build, the file in ``RecordedRun.waves``)."""
    optimize = sim == "verilator" and not waves
    built = build(
        sim, system.engine, cache_root, with_recorder=True, optimize=optimize, waves=waves
    ).directory
    work_dir.mkdir(parents=True, exist_ok=True)
    data = save_cases(work_dir / "cases.npz", system.engine, list(cases))
    report, stats, log = work_dir / "failures.jsonl", work_dir / "stats.jsonl", work_dir / "recorder.log"
    burst = work_dir / "load.hex"
    for path in (report, stats, log, burst):
        path.unlink(missing_ok=True)
    env = {DATA_ENV: str(data), REPORT_ENV: str(report), STATS_ENV: str(stats), LOG_ENV: str(log),
           LOAD_ENV: str(burst)}  # fmt: skip
    plusargs, wave_file = [f"+cosim_log={log}", f"+cosim_load={burst}"], None
    if waves:
        wave_file = work_dir / (f"{RECORDER_TOP}.fst" if sim == "icarus" else "dump.vcd")
        if sim == "icarus":
            plusargs.append(f"+dumpfile_path={wave_file}")
    ran = run_testbench(
        sim, built, TB_MODULE, work_dir, env, plusargs=plusargs, waves=waves, toplevel=RECORDER_TOP
    )
    result = RecordedRun(wall_s=ran.wall_s, log=ran.log_file, waves=wave_file)
    if stats.is_file():
        result.stats = [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
    if report.is_file():
        result.failures = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    reported = {f["tile"] for f in result.failures}
    testcases = read_testcases(ran.results_xml)
    for i, tc in enumerate(testcases):
        if tc["failed"] and i not in reported:
            result.failures.append({"tile": i, "name": tc["name"], "message": tc["message"] or "failed"})
    if len(testcases) != len(cases):
        tail = ran.log[-3000:]
        result.failures.append(
            {
                "tile": None,
                "name": "simulation",
                "message": f"ran {len(testcases)} of {len(cases)} tiles ({ran.aborted!r}); log tail:\n{tail}",
            }  # fmt: skip
        )
    return result


def design_cycles(tiles: Sequence[TraceTile], cycles: Sequence[int]) -> dict[tuple[str, str], int]:
    """Engine cycles per (layer, design), summed over ``tiles`` whose runs took ``cycles`` (the RTL's
    counters, in order), as the network runner counts a design's compute cycles: the pruned design's two
    passes plus the host's turn between them; an ungated layer's dense tiles count for every design."""
    out: dict[tuple[str, str], int] = {}
    for t, c in zip(tiles, cycles, strict=True):
        for design in t.counts_for:
            out[(t.layer, design)] = out.get((t.layer, design), 0) + int(c) + t.host_cycles
    return out
