"""rtl/selection_window.py against the phase-2 study's window (bench/phase2_designs.py, design B-W).

The study schedules a tile's work queue with its own Numba code (``_schedule_window``, in-order scan of a
window it compacts, ``_compatible`` recomputing each pair from coordinates); the gateware keeps an age
matrix and tests pairs from stored bank keys. Both must form the same rounds, member for member.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.selection_window import SelectionWindow, window_slots
from sim.engine import run_tile
from spec.config import EngineConfig
from spec.tile import Tile
from tests.test_phase2_designs import TILES


def _keys(p2, work, cfg: EngineConfig, a: int) -> dict:
    """Window keys of activation ``a`` as the study's pair rule reads them (stride-deinterleaved layout)."""
    tp = work.params
    hp, wp, nch_b, n_groups = tp[p2.T_HP], tp[p2.T_WP], tp[p2.T_NCHB], tp[p2.T_G]
    ia = int(work.oy[a] * wp + work.ox[a])
    ib = []
    for t in range(window_slots(cfg)):
        seg = p2._segment(2, t, int(work.grp[a]), int(n_groups))
        ib.append(int(seg * nch_b * hp * wp + ia) % cfg.pes)
    g = int(work.grp[a])
    return {"co": int(work.co[a]), "upper": [g <= t for t in range(window_slots(cfg))], "ia": ia, "ib": ib}


def _run_window(cfg: EngineConfig, window: int, queue: list[int], keys: dict, n_cond: int):
    """Drive the gateware through every round of ``queue``; return the rounds and, per round, the entries
    inserted, the members and the cycles from ``start`` to ``formed``."""
    dut = SelectionWindow(cfg, window, payload_width=16)
    rounds, timing = [], []

    async def bench(ctx):
        ctx.set(dut.n_cond, n_cond)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        head = 0
        while True:
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = inserted = 0
            while True:
                # The filler: the next queue entry while there is one (no gap between insertions).
                more = head < len(queue)
                ctx.set(dut.more, more)
                ctx.set(dut.insert.valid, more)
                if more:
                    a = queue[head]
                    key = dut.insert.payload.key
                    ctx.set(key.co, keys[a]["co"])
                    for t, u in enumerate(keys[a]["upper"]):
                        ctx.set(key.upper[t], u)
                    ctx.set(key.ia, keys[a]["ia"])
                    for t, b in enumerate(keys[a]["ib"]):
                        ctx.set(key.ib[t], b)
                    ctx.set(dut.insert.payload.payload, a)
                if not ctx.get(dut.forming):
                    break
                if ctx.get(dut.insert.ready) and more:
                    head += 1
                    inserted += 1
                cycles += 1
                await ctx.tick()
            assert ctx.get(dut.formed)
            valid = ctx.get(dut.member_valid)
            members = [ctx.get(dut.members[i]) for i in range(cfg.pes) if valid >> i & 1]
            assert valid == (1 << len(members)) - 1, "members fill places 0, 1, ... in order"
            timing.append((inserted, len(members), cycles))
            if not members:
                assert ctx.get(dut.empty)
                break
            rounds.append(members)
            assert len(rounds) <= len(queue), "every round takes a member: the window must empty"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return rounds, timing


@pytest.mark.parametrize("window", [16, 64])
@pytest.mark.parametrize("case", range(len(TILES)))
def test_window_forms_the_studys_rounds(p2, case, window):
    """Every round, member for member (PE k = k-th oldest), as the study's B-window forms it; a round takes
    ``inserted + 1`` FILL and ``max(members, 1)`` SELECT cycles."""
    cfg, g, x, w, tau = TILES[case]
    res = run_tile(cfg, Tile(g, x, w, tau), outputs=False)
    work = p2.tile_work(cfg, g, res.gates)
    queue = [int(a) for a in work.queue()]
    n_cond = g.segments(cfg).n_seg - 1
    expected = p2._schedule_window(np.array(queue, dtype=np.int64), *work.kernel_args(), 2, 1, 1, window, 0)
    expected = [[int(a) for a in r if a >= 0] for r in expected]
    keys = {a: _keys(p2, work, cfg, a) for a in queue}
    rounds, timing = _run_window(cfg, window, queue, keys, n_cond)
    assert rounds == expected
    assert len(expected) > len(queue) / cfg.pes  # not every round full: the pair rule was exercised
    for inserted, members, cycles in timing:
        assert cycles == inserted + 1 + max(members, 1)
    assert sum(t[0] for t in timing) == len(queue)


@pytest.mark.parametrize("window, payload", [(0, 8), (-1, 8), (4, 0), (2.0, 8)])
def test_window_refuses_bad_sizes(window, payload):
    with pytest.raises(ValueError, match="must be a positive integer"):
        SelectionWindow(EngineConfig(), window, payload)


def test_clear_empties_the_window_mid_fill():
    """``clear`` during FILL drops the entries taken so far and any held round; the next round starts
    from an empty window."""
    cfg = dataclasses.replace(EngineConfig(), pes=4, groups=2)
    dut = SelectionWindow(cfg, 8, payload_width=8)

    async def bench(ctx):
        ctx.set(dut.n_cond, 1)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.more, 1)
        ctx.set(dut.insert.valid, 1)
        for a in range(3):  # three entries in, then clear
            ctx.set(dut.insert.payload.payload, a)
            ctx.set(dut.insert.payload.key.co, a)
            assert ctx.get(dut.insert.ready)
            await ctx.tick()
        assert not ctx.get(dut.empty)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        ctx.set(dut.insert.valid, 0)
        ctx.set(dut.more, 0)
        assert ctx.get(dut.empty) and not ctx.get(dut.forming) and not ctx.get(dut.formed)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for _ in range(2):  # FILL ends at once (no more), SELECT finds nothing
            assert ctx.get(dut.forming)
            await ctx.tick()
        assert ctx.get(dut.formed) and ctx.get(dut.member_valid) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
