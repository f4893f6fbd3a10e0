"""cocotb testbench of the RTL speed benchmark (:mod:`verification.rtl_bench`): load one tile, run it
repeatedly, time the run phase.

Run by :func:`verification.rtl_bench.run_rtl` through ``cocotb_tools.runner`` (test module
``verification.rtl_bench_tb``). The tile comes in the .npz named by ``$RTL_VS_MODEL_DATA``; the results (wall
time and simulated cycles of every run, every output-buffer word and every counter read back after the last
run) go as JSON to ``$RTL_VS_MODEL_RESULT``. The benchmark compares them with the cycle model: this module
never imports it. Importing it without ``$RTL_VS_MODEL_DATA`` defines no test.

Only the run phase (from the clock edge that samples ``start`` to the rising edge of ``done``) is timed, and
during it Python does nothing: the clock is cocotb's GPI clock (toggled in C, no Python per cycle) and the
transport waits on a single ``RisingEdge(dut.done)`` trigger
(:meth:`~verification.cocotb_transport.CocotbTransport.wait_done`), so the wall time is the simulator's own
speed (plus the cocotb/VPI clock callbacks). Loading and unloading run at Python speed and are timed apart.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.handle import SimHandleBase

from spec.config import EngineConfig
from spec.tile import Tile, TileGeometry
from verification.cocotb_transport import CocotbTransport
from verification.driver import EngineDriver

__all__ = ["DATA_ENV", "RESULT_ENV", "TimedRunsBench", "save_data", "timed_runs"]

DATA_ENV = "RTL_VS_MODEL_DATA"
RESULT_ENV = "RTL_VS_MODEL_RESULT"


def save_data(path: Path, config: EngineConfig, tile: Tile, plan: dict) -> Path:
    """The tile and the plan (``min_runs``, ``max_runs``, ``min_seconds``) for the testbench."""
    geometry = {k: (bool(v) if k == "dense" else int(v)) for k, v in vars(tile.geometry).items()}
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


def load_data(path: str | Path) -> tuple[EngineConfig, Tile, dict]:
    with np.load(path) as d:
        config = EngineConfig.from_dict(json.loads(str(d["config"])))
        geometry = TileGeometry(**json.loads(str(d["geometry"])))
        tile = Tile(geometry, d["inputs"].copy(), d["weights"].copy(), d["thresholds"].copy())
        plan = json.loads(str(d["plan"]))
    return config, tile, plan


class TimedRunsBench:
    """Reset, load the tile, run it as often as the plan says (same data), read everything back."""

    def __init__(self, config: EngineConfig, tile: Tile, plan: dict) -> None:
        self.config = config
        self.tile = tile
        self.plan = plan
        self.clock = None
        self.transport: CocotbTransport | None = None

    async def start(self, dut: SimHandleBase) -> None:
        self.transport = CocotbTransport(dut)
        self.transport.idle_inputs()
        self.clock = self.transport.start_clock(impl="gpi")
        await self.transport.reset()

    def stop(self) -> None:
        if self.clock is not None:
            self.clock.stop()

    async def measure(self) -> dict:
        driver = EngineDriver(self.config, self.transport)
        wall = time.perf_counter()
        n_writes = await driver.load_tile(self.tile)
        load_s = time.perf_counter() - wall

        runs: list[dict] = []
        total = 0.0
        plan = self.plan
        while len(runs) < plan["max_runs"] and (len(runs) < plan["min_runs"] or total < plan["min_seconds"]):
            run = await driver.run()
            runs.append({"wall_s": run.wall_s, "sim_cycles": run.sim_cycles})
            total += run.wall_s

        wall = time.perf_counter()
        words = await driver.read_words(range(self.tile.geometry.n_outputs))
        outputs = await driver.merge_results(self.tile.geometry, words)  # gated results from the queue
        counters = await driver.read_counters()
        unload_s = time.perf_counter() - wall
        return {
            "simulator": f"{cocotb.SIM_NAME} {cocotb.SIM_VERSION}",
            "clock_impl": self.clock.impl,
            "trust_inertial_writes": os.environ.get("COCOTB_TRUST_INERTIAL_WRITES", ""),
            "load_writes": n_writes,
            "load_s": load_s,
            "unload_s": unload_s,
            "runs": runs,
            "counters": counters,
            "outputs": list(outputs.values()),
        }


@cocotb.test(skip=DATA_ENV not in os.environ)
async def timed_runs(dut: SimHandleBase) -> None:
    """The timed runs of the tile in ``$RTL_VS_MODEL_DATA``; results to ``$RTL_VS_MODEL_RESULT``."""
    bench = TimedRunsBench(*load_data(os.environ[DATA_ENV]))
    await bench.start(dut)
    try:
        result = await bench.measure()
    finally:
        bench.stop()
    Path(os.environ[RESULT_ENV]).write_text(json.dumps(result))
