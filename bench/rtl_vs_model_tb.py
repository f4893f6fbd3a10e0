"""cocotb testbench for ``bench/rtl_vs_model.py``: load one tile, run it repeatedly, time the run phase.

Run by ``bench/rtl_vs_model.py`` through ``cocotb_tools.runner`` (never imported by the driver process).
The tile comes in the .npz named by ``$RTL_VS_MODEL_DATA``; the results (wall time and simulated cycles of
every run, every output-buffer word and every counter read back after the last run) go as JSON to
``$RTL_VS_MODEL_RESULT``. The driver compares them with the cycle model: this module never imports it.

Only the run phase (from the clock edge that samples ``start`` to the rising edge of ``done``) is timed, and
during it Python does nothing: the clock is cocotb's GPI clock (toggled in C, no Python per cycle) and the
test waits on a single ``RisingEdge(dut.done)`` trigger, so the wall time is the simulator's own speed
(plus the cocotb/VPI clock callbacks). Loading and unloading run at Python speed and are timed apart.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from spec.config import EngineConfig
from spec.tile import COUNTER_NAMES, Tile, TileGeometry
from verification.layout import SEL_COUNTERS, SEL_OUTPUT, load_writes, pack_payloads, pack_request

DATA_ENV = "RTL_VS_MODEL_DATA"
RESULT_ENV = "RTL_VS_MODEL_RESULT"
CLOCK_NS = 10
HANDSHAKE_TIMEOUT = 64  # cycles a stream may wait for the other side while the engine is idle


def _load_data(path: str) -> tuple[EngineConfig, Tile, dict]:
    with np.load(path) as d:
        config = EngineConfig.from_dict(json.loads(str(d["config"])))
        geometry = TileGeometry(**json.loads(str(d["geometry"])))
        tile = Tile(geometry, d["inputs"].copy(), d["weights"].copy(), d["thresholds"].copy())
        plan = json.loads(str(d["plan"]))
    return config, tile, plan


async def _put(dut: SimHandleBase, name: str, payload: int) -> None:
    """Offer ``payload`` on stream ``name`` until it is taken (entered and left just after a clock edge)."""
    valid, ready = getattr(dut, f"{name}__valid"), getattr(dut, f"{name}__ready")
    getattr(dut, f"{name}__payload").value = payload
    valid.value = 1
    for _ in range(HANDSHAKE_TIMEOUT):
        await ReadOnly()
        if ready.value == 1:
            await RisingEdge(dut.clk)  # the transfer happens at this edge
            valid.value = 0
            return
        await RisingEdge(dut.clk)
    raise AssertionError(f"{name}: ready stayed low for {HANDSHAKE_TIMEOUT} cycles")


async def _get(dut: SimHandleBase) -> int:
    """Take one word from the ``resp`` stream."""
    dut.resp__ready.value = 1
    for _ in range(HANDSHAKE_TIMEOUT):
        await ReadOnly()
        if dut.resp__valid.value == 1:
            value = dut.resp__payload.value
            await RisingEdge(dut.clk)
            dut.resp__ready.value = 0
            if not value.is_resolvable:
                raise AssertionError(f"resp: payload {value} has X/Z bits")
            return value.to_unsigned()
        await RisingEdge(dut.clk)
    raise AssertionError(f"resp: valid stayed low for {HANDSHAKE_TIMEOUT} cycles")


async def _read(dut: SimHandleBase, config: EngineConfig, sel: int, addr: int) -> int:
    await _put(dut, "req", pack_request(config, sel, addr))
    return await _get(dut)


@cocotb.test()
async def timed_runs(dut: SimHandleBase) -> None:
    """Reset, load the tile, run it ``plan`` times back to back (same data), read everything back."""
    config, tile, plan = _load_data(os.environ[DATA_ENV])
    dut.start.value = 0
    dut.load__valid.value = 0
    dut.req__valid.value = 0
    dut.resp__ready.value = 0
    # impl="gpi": the clock toggles in C. (cocotb's default picks a Python coroutine clock unless
    # COCOTB_TRUST_INERTIAL_WRITES is set, as the runner does for Verilator but not for Icarus.)
    clock = Clock(dut.clk, CLOCK_NS, unit="ns", impl="gpi")
    clock.start()
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    wall = time.perf_counter()
    payloads = pack_payloads(config, load_writes(config, tile))
    for payload in payloads:
        await _put(dut, "load", payload)
    load_s = time.perf_counter() - wall

    runs: list[dict] = []
    total = 0.0
    while len(runs) < plan["max_runs"] and (len(runs) < plan["min_runs"] or total < plan["min_seconds"]):
        dut.start.value = 1
        await RisingEdge(dut.clk)  # start is sampled at this edge; SETUP is the next cycle
        dut.start.value = 0
        sim0 = get_sim_time(unit="ns")
        t0 = time.perf_counter()
        await RisingEdge(dut.done)  # the only trigger of the run phase: no Python per cycle
        wall_s = time.perf_counter() - t0
        sim1 = get_sim_time(unit="ns")
        await ReadOnly()
        if dut.done.value != 1 or dut.busy.value != 0:
            raise AssertionError(f"run {len(runs)}: done = {dut.done.value}, busy = {dut.busy.value}")
        await RisingEdge(dut.clk)  # done falls, the engine is idle again
        runs.append({"wall_s": wall_s, "sim_cycles": round((sim1 - sim0) / CLOCK_NS)})
        total += wall_s

    wall = time.perf_counter()
    n = tile.geometry.n_outputs
    outputs = [await _read(dut, config, SEL_OUTPUT, lin) for lin in range(n)]
    counters = {name: await _read(dut, config, SEL_COUNTERS, i) for i, name in enumerate(COUNTER_NAMES)}
    unload_s = time.perf_counter() - wall

    result = {
        "simulator": f"{cocotb.SIM_NAME} {cocotb.SIM_VERSION}",
        "clock_impl": clock.impl,
        "trust_inertial_writes": os.environ.get("COCOTB_TRUST_INERTIAL_WRITES", ""),
        "load_writes": len(payloads),
        "load_s": load_s,
        "unload_s": unload_s,
        "runs": runs,
        "counters": counters,
        "outputs": outputs,
    }
    with open(os.environ[RESULT_ENV], "w") as f:
        json.dump(result, f)
