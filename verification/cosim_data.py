"""What the pytest process hands the cocotb testbench: tiles and their expected results, in one .npz file.

Both sides import this module (the pytest side through :mod:`verification.cosim`, the simulator through
:mod:`verification.cosim_tb`); it does not import the cycle model, so the simulator process starts fast. The
pytest process computes every expectation (cycle model, spec reference) and the testbench only drives,
reads back and compares.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from spec.config import EngineConfig
from spec.protocol import COUNTER_NAMES
from spec.tile import Tile, TileGeometry
from verification.driver import LOAD_MODES

__all__ = [
    "DATA_ENV",
    "REPORT_ENV",
    "STATS_ENV",
    "CosimCase",
    "append_record",
    "case_count",
    "environment_case_count",
    "load_cases",
    "save_cases",
]

DATA_ENV = "ACCEL_COSIM_DATA"  # path of the .npz file
REPORT_ENV = "ACCEL_COSIM_REPORT"  # path of the JSON-lines file where the testbench writes its failures
STATS_ENV = "ACCEL_COSIM_STATS"  # path of the JSON-lines file where it writes what each tile's run took

_GEOMETRY_FIELDS = tuple(f.name for f in fields(TileGeometry))


@dataclass
class CosimCase:
    """One tile with what the cycle model (and the plain spec reference) say the engine leaves behind.

    ``outputs``/``gates``/``counters``/``write_cycle`` are the model's (``sim.engine.run_tile``);
    ``write_cycle`` holds, per output entry, the cycle of the run (1 = SETUP) of its last write. ``ref_*``
    are the functional reference, the closed-form counters and the write cycles of spec section 5, used
    only to say in a failure message which side agrees with the spec.
    """

    name: str
    tile: Tile
    outputs: np.ndarray  # int64 [c_out, h_out, w_out]
    gates: np.ndarray  # bool  [c_out, h_out, w_out]
    counters: dict[str, int]
    write_cycle: np.ndarray  # int64 [c_out, h_out, w_out]
    ref_outputs: np.ndarray | None = None
    ref_gates: np.ndarray | None = None
    ref_counters: dict[str, int] | None = None
    ref_write_cycle: np.ndarray | None = None
    # What the testbench loads before this run (verification.driver.LOAD_MODES): "all" writes, only the
    # configuration "registers", or "none" (the buffers still hold the previous tile's data).
    load: str = "all"
    # How the host paces the streams in this case (verification.streams.stall_pattern): an integer n draws
    # each stall from [0, n] (seeded by stall_seed), a tuple is repeated. resp_stall: cycles each response is
    # held with resp.ready low after it became valid; load_gap: cycles with load.valid low before each write.
    # Neither may change any result, nor the run's cycle counts.
    resp_stall: int | tuple[int, ...] = 0
    load_gap: int | tuple[int, ...] = 0
    stall_seed: int = 0
    # Reset in the middle of the run: 0, none; k > 0, rst is high from cycle k of the busy period (1 = SETUP)
    # for reset_cycles rising edges. The run is aborted: nothing of it is compared with the model; the engine
    # must be idle after the reset (spec section 4, "Reset"), and the next case runs normally.
    reset_at: int = 0
    reset_cycles: int = 3
    # The configuration of the layer the tile belongs to (the build's with the layer's kernel, stride,
    # padding and groups: spec.config.EngineConfig.for_layer); None: the build's own.
    layer: EngineConfig | None = None
    # The run's spec.protocol.RunMode (its value). PHASE1 loads the base-path weights only and leaves every
    # partial sum in the output buffer; PHASE2 loads the registers, the work queue `queue_lins` /
    # `queue_psums` (spec.tile.QueueLoad) and the conditional-path weights of the queued channels, and its
    # expectations hold each queued activation's result and write cycle at its place (0 elsewhere).
    run: int = 0
    queue_lins: np.ndarray | None = None
    queue_psums: np.ndarray | None = None
    # Double buffering: the buffer half the run uses; with `overlap` the testbench writes this case's tile
    # while the previous case runs (into this half, the other one) and, during this case's run, reads the
    # previous case's output entries back from the other half.
    half: int = 0
    overlap: bool = False


def _pattern(value) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


def _unpattern(array: np.ndarray) -> int | tuple[int, ...]:
    return int(array) if array.ndim == 0 else tuple(int(v) for v in array)


def save_cases(path: str | Path, config: EngineConfig, cases: list[CosimCase]) -> Path:
    for c in cases:
        if c.layer is not None:
            config.check_layer(c.layer)
        if c.load not in LOAD_MODES:
            raise ValueError(f"case {c.name!r}: load = {c.load!r}, expected one of {LOAD_MODES}")
        if c.overlap and (c.reset_at or c.half not in (0, 1)):
            raise ValueError(f"case {c.name!r}: an overlapped case needs half 0 or 1 and no reset")
        if not 0 <= c.reset_at <= int(c.counters["cycles"]) or c.reset_cycles < 1:
            raise ValueError(
                f"case {c.name!r}: reset_at = {c.reset_at}, reset_cycles = {c.reset_cycles}; the run has "
                f"{c.counters['cycles']} busy cycles"
            )
    arrays: dict[str, np.ndarray] = {
        "config": np.array(config.to_json()),
        "names": np.array([c.name for c in cases]),
        "loads": np.array([c.load for c in cases]),
    }
    for i, c in enumerate(cases):
        g = c.tile.geometry
        arrays[f"t{i}_geometry"] = np.array([int(getattr(g, f)) for f in _GEOMETRY_FIELDS], dtype=np.int64)
        arrays[f"t{i}_inputs"] = np.asarray(c.tile.inputs)
        arrays[f"t{i}_weights"] = np.asarray(c.tile.weights)
        arrays[f"t{i}_thresholds"] = np.asarray(c.tile.thresholds, dtype=np.int64)
        arrays[f"t{i}_outputs"] = np.asarray(c.outputs, dtype=np.int64)
        arrays[f"t{i}_gates"] = np.asarray(c.gates, dtype=bool)
        arrays[f"t{i}_counters"] = np.array([int(c.counters[n]) for n in COUNTER_NAMES], dtype=np.int64)
        arrays[f"t{i}_write_cycle"] = np.asarray(c.write_cycle, dtype=np.int64)
        arrays[f"t{i}_resp_stall"] = _pattern(c.resp_stall)
        arrays[f"t{i}_load_gap"] = _pattern(c.load_gap)
        pacing = [c.stall_seed, c.reset_at, c.reset_cycles, c.run, c.half, int(c.overlap)]
        arrays[f"t{i}_pacing"] = np.array(pacing, dtype=np.int64)
        if c.queue_lins is not None:
            arrays[f"t{i}_queue_lins"] = np.asarray(c.queue_lins, dtype=np.int64)
            arrays[f"t{i}_queue_psums"] = np.asarray(c.queue_psums, dtype=np.int64)
        layer = c.layer or config
        fields_ = EngineConfig.LAYER_FIELDS
        arrays[f"t{i}_layer"] = np.array([getattr(layer, f) for f in fields_], dtype=np.int64)
        if c.ref_outputs is not None:
            arrays[f"t{i}_ref_outputs"] = np.asarray(c.ref_outputs, dtype=np.int64)
            arrays[f"t{i}_ref_gates"] = np.asarray(c.ref_gates, dtype=bool)
        if c.ref_counters is not None:
            arrays[f"t{i}_ref_counters"] = np.array(
                [int(c.ref_counters[n]) for n in COUNTER_NAMES], dtype=np.int64
            )
        if c.ref_write_cycle is not None:
            arrays[f"t{i}_ref_write_cycle"] = np.asarray(c.ref_write_cycle, dtype=np.int64)
    path = Path(path)
    np.savez(path, **arrays)
    return path


def case_count(path: str | Path) -> int:
    """How many cases the file holds (without loading them)."""
    with np.load(path) as z:
        return len(z["names"])


def load_cases(path: str | Path) -> tuple[EngineConfig, list[CosimCase]]:
    with np.load(path) as z:
        config = EngineConfig.from_dict(json.loads(str(z["config"])), source=str(path))
        cases = []
        loads = z["loads"].tolist()
        for i, name in enumerate(z["names"].tolist()):
            values = z[f"t{i}_geometry"].tolist()
            geo = dict(zip(_GEOMETRY_FIELDS, values, strict=True))
            geo["dense"] = bool(geo["dense"])
            tile = Tile(TileGeometry(**geo), z[f"t{i}_inputs"], z[f"t{i}_weights"], z[f"t{i}_thresholds"])

            def counters(key: str) -> dict[str, int]:
                return dict(zip(COUNTER_NAMES, z[key].tolist(), strict=True))

            has_ref = f"t{i}_ref_outputs" in z.files
            cases.append(
                CosimCase(
                    name=str(name),
                    tile=tile,
                    outputs=z[f"t{i}_outputs"],
                    gates=z[f"t{i}_gates"],
                    counters=counters(f"t{i}_counters"),
                    write_cycle=z[f"t{i}_write_cycle"],
                    ref_outputs=z[f"t{i}_ref_outputs"] if has_ref else None,
                    ref_gates=z[f"t{i}_ref_gates"] if has_ref else None,
                    ref_counters=counters(f"t{i}_ref_counters") if f"t{i}_ref_counters" in z.files else None,
                    ref_write_cycle=(
                        z[f"t{i}_ref_write_cycle"] if f"t{i}_ref_write_cycle" in z.files else None
                    ),
                    load=str(loads[i]),
                )
            )
            case = cases[-1]
            if f"t{i}_layer" in z.files:
                layer = dict(zip(EngineConfig.LAYER_FIELDS, z[f"t{i}_layer"].tolist(), strict=True))
                case.layer = config.for_layer(**layer)
            if f"t{i}_pacing" in z.files:
                pacing = z[f"t{i}_pacing"].tolist()
                case.stall_seed, case.reset_at, case.reset_cycles, case.run, case.half = pacing[:5]
                case.overlap = bool(pacing[5])
            if f"t{i}_queue_lins" in z.files:
                case.queue_lins, case.queue_psums = z[f"t{i}_queue_lins"], z[f"t{i}_queue_psums"]
                case.resp_stall = _unpattern(z[f"t{i}_resp_stall"])
                case.load_gap = _unpattern(z[f"t{i}_load_gap"])
    return config, cases


def environment_case_count() -> int:
    """How many cases the file named by ``$ACCEL_COSIM_DATA`` holds (0 without it: a testbench module
    imported outside a co-simulation defines no tests)."""
    return case_count(os.environ[DATA_ENV]) if os.environ.get(DATA_ENV) else 0


def append_record(path: Path | None, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (the testbenches' failures and stats; None: nowhere)."""
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
