"""bench/phase2_designs.py: the anchor (design A_inf = today's model) and the schedules' bank rules."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sim.engine import run_tile
from spec.config import EngineConfig
from spec.tile import Tile, TileGeometry
from tests.test_model import phase2_rounds


def _tiles() -> list[tuple[EngineConfig, TileGeometry, np.ndarray, np.ndarray, np.ndarray]]:
    """Small seeded tiles: G = 4 and G = 2, stride 1 and 2, G = 1 with a base fraction, padding, gate
    rates from sparse to dense."""
    rng = np.random.default_rng(12)
    cases = [
        (EngineConfig(kernel=3, stride=1, padding=1, groups=4), TileGeometry(16, 8, 8, 8, 8, 8, 1, 1), 0.1),
        (EngineConfig(kernel=3, stride=1, padding=1, groups=2), TileGeometry(32, 16, 6, 7, 6, 7, 1, 1), 0.4),
        (EngineConfig(kernel=3, stride=2, padding=1, groups=2), TileGeometry(16, 8, 9, 9, 5, 5, 1, 1), 0.3),
        (
            EngineConfig(kernel=3, stride=1, padding=1, groups=1),
            TileGeometry(24, 12, 5, 9, 5, 9, 1, 1, base_channels=8),
            0.6,
        ),
        (
            EngineConfig(kernel=3, stride=1, padding=1, groups=4, pes=4),
            TileGeometry(32, 8, 4, 10, 4, 10, 1, 1),
            0.9,
        ),
    ]
    out = []
    for cfg, g, rate in cases:
        x = rng.integers(-128, 128, (g.c_in, g.h_in, g.w_in), dtype=np.int8)
        w = rng.integers(-128, 128, (g.c_out, g.c_in, cfg.kernel, cfg.kernel), dtype=np.int8)
        # thresholds at quantiles of the base sums (all gates off: outputs = p): gate-on rate ~ `rate`
        base = run_tile(cfg, Tile(g, x, w, np.full(g.c_out, 2**31 - 1, dtype=np.int64))).outputs
        tau = np.quantile(base.reshape(g.c_out, -1), 1 - rate, axis=1).astype(np.int64)
        out.append((cfg, g, x, w, tau))
    return out


TILES = _tiles()


@pytest.mark.parametrize("case", range(len(TILES)))
def test_model_runs_the_studys_window(p2, case):
    """The model's phase 1 is A_inf's replay (P consecutive activations per round); its phase-2 rounds are
    the study's window design with the configuration's W, member for member (read off the write cycles:
    member k of a round is written k cycles after member 0, rounds at least B2 > P cycles apart)."""
    cfg, g, x, w, tau = TILES[case]
    res = run_tile(cfg, Tile(g, x, w, tau), outputs=False)
    assert 0 < res.counters["gates_on"] < g.n_outputs
    a_inf = next(d for d in p2.DESIGNS if d.name == "A_inf")
    work = p2.tile_work(cfg, g, res.gates)
    p1, _ = p2.replay(work, a_inf, p2.schedule(work, a_inf, 1), 1)
    assert p1.cycles == p2.model_phases(cfg, g, res.counters)[0]
    if cfg.stride != 1:
        return  # the study's keys assume its stride-deinterleaved input layout; the engine's is plain
    seg = g.segments(cfg)
    assert cfg.kernel**2 * (seg.n_seg - 1) * seg.nch_c > cfg.pes
    queue = work.queue()
    rounds = phase2_rounds(res.write_cycle, res.gates)
    expected = p2._schedule_window(queue, *work.kernel_args(), 2, 1, 1, cfg.window, 0)
    assert rounds == [[int(a) for a in r if a >= 0] for r in expected]
    assert len(rounds) > len(queue) / cfg.pes  # some round not full: the bank rule was exercised


def _expand_reads(p2, work, design, rounds, phase):
    """Independently of the scheduler: every beat of every round, the words each PE reads and the bank
    each word lives in, by the design's bank rule (as the docstring and docs/phase2-designs.md state it)."""
    tp = work.params
    P, K, S = int(tp[p2.T_P]), int(tp[p2.T_K]), int(tp[p2.T_S])
    pt, pl, h_in, w_in = (int(tp[i]) for i in (p2.T_PT, p2.T_PL, p2.T_HIN, p2.T_WIN))
    hp, wp = int(tp[p2.T_HP]), int(tp[p2.T_WP])
    n_seg, nch_b, nch_c, n_ch, n_groups = (
        int(tp[i]) for i in (p2.T_NSEG, p2.T_NCHB, p2.T_NCHC, p2.T_NCH, p2.T_G)
    )
    slots = 1 if phase == 1 else n_seg - 1
    nch = nch_b if phase == 1 else nch_c
    for r in rounds:
        beats = []
        for t in range(slots):
            for c in range(nch):
                for ky in range(K):
                    for kx in range(K):
                        reads = []  # (buffer, bank, word)
                        for i, a in enumerate(r):
                            if a < 0:
                                continue
                            g = int(work.grp[a])
                            seg = (g if n_groups > 1 else 0) if phase == 1 else t + (t >= g)
                            q = seg * nch_b + c
                            y, x = int(work.oy[a]) * S + ky - pt, int(work.ox[a]) * S + kx - pl
                            if 0 <= y < h_in and 0 <= x < w_in:
                                addr = (
                                    (q * hp + (y % S) * (hp // S) + y // S) * wp
                                    + (x % S) * (wp // S)
                                    + x // S
                                )
                                bank = {0: i, 1: addr % P, 2: 0}[design.in_mode]
                                reads.append(("in", bank, addr))
                            word = (int(work.co[a]) * n_ch + q) * K * K + ky * K + kx
                            bank = {0: i, 1: int(work.co[a]) % P, 2: 0}[design.w_mode]
                            reads.append(("w", bank, word))
                        beats.append(reads)
        yield r, beats


def _cycles_needed(reads) -> int:
    words: dict[tuple, set] = {}
    for buf, bank, word in reads:
        words.setdefault((buf, bank), set()).add(word)
    return max([1, *(len(v) for v in words.values())])


@pytest.mark.parametrize("case", range(len(TILES)))
def test_schedules_respect_banks_and_keep_every_activation(p2, case):
    """Every design: each queued activation scheduled exactly once; window designs never ask a bank for
    two words in one cycle; stall designs are charged exactly the cycles their conflicts need."""
    cfg, g, x, w, tau = TILES[case]
    res = run_tile(cfg, Tile(g, x, w, tau), outputs=False)
    work = p2.tile_work(cfg, g, res.gates)
    for design in p2.DESIGNS:
        for phase in (1, 2):
            rounds = p2.schedule(work, design, phase)
            expected = work.queue(design.position_major) if phase == 2 else work.order(design.position_major)
            got = rounds[rounds >= 0]
            assert sorted(got.tolist()) == sorted(expected.tolist()), (design.name, phase)
            assert len(set(got.tolist())) == got.size
            _, per_round = p2.replay(work, design, rounds, phase)
            for k, (r, beats) in enumerate(_expand_reads(p2, work, design, rounds, phase)):
                needed = [_cycles_needed(b) for b in beats]
                assert per_round[k] == sum(needed), (design.name, phase, k)
                if design.policy != p2.WINDOW or (phase == 1 and not design.position_major):
                    continue  # P consecutive entries: conflicts stall, charged above
                assert max(needed) == 1, (design.name, phase, r)  # conflict-free by construction
                if design.restrict == p2.SAME_CO:
                    assert len({int(work.co[a]) for a in r if a >= 0}) == 1
                if design.restrict == p2.DISTINCT_OUT:  # entries are indexed by lin
                    assert len({int(a) % cfg.pes for a in r if a >= 0}) == int((r >= 0).sum())
                if design.restrict == p2.DISTINCT_QUEUE:
                    position = {int(a): i for i, a in enumerate(expected)}
                    assert len({position[int(a)] % cfg.pes for a in r if a >= 0}) == int((r >= 0).sum())
                if design.restrict == p2.SAME_POS_GROUP:
                    assert (
                        len({(int(work.oy[a]), int(work.ox[a]), int(work.grp[a])) for a in r if a >= 0}) == 1
                    )


def test_window_keeps_queue_order_for_the_oldest_entry(p2):
    """The oldest waiting entry always starts the next round (no starvation)."""
    cfg, g, x, w, tau = TILES[1]
    res = run_tile(cfg, Tile(g, x, w, tau), outputs=False)
    work = p2.tile_work(cfg, g, res.gates)
    design = next(d for d in p2.DESIGNS if d.name == "B16")
    rounds = p2.schedule(work, design, 2)
    waiting = list(work.queue())
    for r in rounds:
        assert r[0] == min(waiting, key=waiting.index)
        for a in r[r >= 0]:
            waiting.remove(a)
    assert not waiting


def test_sram_table_of_the_default_config(p2):
    cfg = EngineConfig()
    designs = {d.name: p2.design_srams(d, cfg) for d in p2.DESIGNS}
    assert (
        designs["A_inf"]["input"]["bits"] == 4096 * 64
        and designs["A_inf"]["input"]["read_ports_per_bank"] == 8
    )
    assert designs["A"]["input"]["bits"] == 8 * 4096 * 64 and designs["A"]["input"]["banks"] == 8
    assert designs["B16"]["input"]["bank_bytes"] == 4096 and designs["C16"]["weight"]["banks"] == 1
    assert designs["D"]["input"]["banks"] == 1 and designs["D"]["weight"]["banks"] == 8
    assert dataclasses.is_dataclass(p2.DESIGNS[0])
