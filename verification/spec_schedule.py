"""The engine's schedule as the spec states it, in plain Python: the counters and every output's write
cycle of a run, given its gate bits (docs/microarchitecture.md section 5; phase 2's selection window as
docs/chip-design.md section 2.1 says). Neither the cycle model (sim/engine.py) nor the RTL shares this
code; the co-simulation and the model's tests check both against it."""

from __future__ import annotations

import numpy as np

from spec.config import EngineConfig
from spec.tile import Tile

__all__ = ["spec_counters", "spec_phase2", "spec_round_cycles", "spec_write_cycles"]


def _beats(config: EngineConfig, tile: Tile) -> tuple[int, int]:
    """Beats per round of phase 1 (B1) and phase 2 (B2), spec section 5."""
    g = tile.geometry
    seg = g.segments(config)
    k2 = config.kernel**2
    return k2 * (seg.n_chunks if g.dense else seg.nch_b), k2 * (seg.n_seg - 1) * seg.nch_c


def _word(config: EngineConfig, tile: Tile, q: int, y: int, x: int) -> int:
    """The input buffer's word of chunk ``q``, row ``y``, column ``x`` (docs/microarchitecture.md section 3:
    ``h_in``, ``w_in`` rounded up to ``Hp``, ``Wp``, multiples of S; rows and columns deinterleaved by S),
    also for a position in the padding (what the engine's pointers hold there), modulo the address width."""
    g, s = tile.geometry, config.stride
    hq, wq = -(-g.h_in // s), -(-g.w_in // s)
    word = q * hq * s * wq * s + ((y % s) * hq + y // s) * wq * s + (x % s) * wq + x // s
    return word & ((1 << max(1, (config.input_depth - 1).bit_length())) - 1)


def spec_round_cycles(config: EngineConfig, tile: Tile, r: int) -> int:
    """Cycles of phase-1 round ``r``: each beat takes as many cycles as the most distinct words one input
    bank (word address mod ``2^bank_bits``) is asked for, at least one; a PE at a padding tap or past the
    last activation asks for nothing (docs/microarchitecture.md section 3, "Banked reads"). Weight banks
    never conflict (same section)."""
    g = tile.geometry
    seg = g.segments(config)
    k, s, banks = config.kernel, config.stride, 1 << config.bank_bits
    c_og = g.c_out // config.groups if config.groups > 1 else g.c_out
    acts = range(r * config.pes, min((r + 1) * config.pes, g.n_outputs))
    if g.dense:  # every chunk of every segment, in the buffer's order
        chunks = [list(range(seg.n_chunks)) for _ in acts]
    else:  # the chunks of the activation's own group's base segment
        chunks = [
            [lin // (g.h_out * g.w_out) // c_og * seg.nch_b + c for c in range(seg.nch_b)] for lin in acts
        ]
    cycles = 0
    for beat in range(len(chunks[0]) if chunks else 0):
        for ky in range(k):
            for kx in range(k):
                words: dict[int, set[int]] = {}
                for lin, own in zip(acts, chunks, strict=True):
                    co, pos = divmod(lin, g.h_out * g.w_out)
                    oy, ox = divmod(pos, g.w_out)
                    y, x = oy * s - g.pad_top + ky, ox * s - g.pad_left + kx
                    if 0 <= y < g.h_in and 0 <= x < g.w_in:
                        addr = _word(config, tile, own[beat], y, x)
                        words.setdefault(addr % banks, set()).add(addr)
                cycles += max((len(w) for w in words.values()), default=1)
    return cycles


def spec_phase2(config: EngineConfig, tile: Tile, gates: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """The selection window's phase-2 rounds (``lin`` of each member, PE order) and the cycles each round's
    formation takes, from docs/chip-design.md section 2.1 in plain Python (the model and the RTL each have
    their own): fill to W in queue order, then in age order every entry that shares no bank with the
    members so far, up to P; a formation takes ``inserted + 1 + max(members, 1)`` cycles. The last
    formation is the empty one that ends phase 2."""
    g = tile.geometry
    seg = g.segments(config)
    p, window, n_cond = config.pes, config.window, seg.n_seg - 1
    bank_mask = (1 << config.bank_bits) - 1
    c_og = g.c_out // config.groups if config.groups > 1 else g.c_out
    in_seg = _word(config, tile, seg.nch_b, 0, 0)  # the words of a base segment's chunks
    queue = [int(a) for a in np.flatnonzero(np.asarray(gates, dtype=bool).reshape(-1))]

    def keys(lin: int) -> tuple[int, int, int, list[int]]:
        co, pos = divmod(lin, g.h_out * g.w_out)
        oy, ox = divmod(pos, g.w_out)
        grp = co // c_og if config.groups > 1 else 0
        ia = _word(config, tile, 0, oy * config.stride - g.pad_top, ox * config.stride - g.pad_left)
        return co, grp, ia, [(ia + (t + (t >= grp)) * in_seg) & bank_mask for t in range(n_cond)]

    def compatible(a: int, b: int) -> bool:
        (ca, ga, ia, ka), (cb, gb, ib, kb) = keys(a), keys(b)
        if ca != cb and ca & bank_mask == cb & bank_mask:
            return False  # one weight bank, two channels' words
        return all(
            ka[t] != kb[t] or (ia == ib and (ga <= t) == (gb <= t)) for t in range(n_cond)
        )  # one input bank, two words (same position and segment: one word)

    rounds, formations, waiting, head = [], [], [], 0
    while True:
        inserted = min(window - len(waiting), len(queue) - head)
        waiting += queue[head : head + inserted]
        head += inserted
        members = []
        for lin in waiting:
            if len(members) < p and all(compatible(lin, other) for other in members):
                members.append(lin)
        waiting = [lin for lin in waiting if lin not in members]
        formations.append(inserted + 1 + max(len(members), 1))
        if not members:
            return rounds, formations
        rounds.append(members)


def _spec_schedule(config: EngineConfig, tile: Tile, gates: np.ndarray):
    """Cycles of the run, issue cycles and every output's write cycle (spec section 5; phase 2 as
    docs/chip-design.md section 2.1 says)."""
    g = tile.geometry
    p, n = config.pes, g.n_outputs
    b1, b2 = _beats(config, tile)
    r1 = -(-n // p)
    write = np.zeros(n, dtype=np.int64)
    cycles = p  # SETUP: one PE's activation per cycle
    for r in range(r1):  # phase 1: round r's last beat, then its write-back two cycles later
        cycles += spec_round_cycles(config, tile, r)
        write[r * p : (r + 1) * p] = cycles + 2
    cycles, issue = cycles + 2, r1 * b1
    if not g.dense and np.any(gates):
        rounds, formations = spec_phase2(config, tile, gates)
        cycles += formations[0] + 2  # PREP: read entry 0 and start, form round 0, take it
        before = 0  # members of the round before, still draining
        for r, members in enumerate(rounds):
            last = cycles + max(b2, 1 + formations[r + 1], before)  # the round's last beat
            for k, lin in enumerate(members):
                write[lin] = last + 3 + k  # taken at the write-back (last + 2), written k + 1 later
            cycles, issue, before = last, issue + b2, len(members)
        cycles += before + 2  # DRAIN2: execute, write back, drain
    return cycles, issue, write.reshape(g.c_out, g.h_out, g.w_out)


def spec_counters(config: EngineConfig, tile: Tile, gates: np.ndarray) -> dict[str, int]:
    """The performance counters from the spec's schedule (sections 4 and 5), given the gate bits."""
    g = tile.geometry
    seg = g.segments(config)
    k2, p, n = config.kernel**2, config.pes, g.n_outputs
    b1, b2 = _beats(config, tile)
    gates_on = int(np.count_nonzero(gates))
    phase2 = not g.dense and gates_on > 0
    cycles, issue, _ = _spec_schedule(config, tile, gates)
    busy = n * b1 + (gates_on * b2 if phase2 else 0)
    return {
        "cycles": cycles,
        "base_macs": n * k2 * (g.c_in if g.dense else seg.base_ch),
        "cond_macs": 0 if g.dense else gates_on * k2 * (seg.n_seg - 1) * seg.cond_ch,
        "busy_pe_cycles": busy,
        "idle_pe_cycles": p * cycles - busy,
        "stall_cycles": cycles - issue,
        "gates_on": n if g.dense else gates_on,
    }


def spec_write_cycles(config: EngineConfig, tile: Tile, gates: np.ndarray) -> np.ndarray:
    """The cycle of the run (1 = SETUP) of each output entry's last write (spec section 5, "When each
    output is written"), given the gate bits ``[c_out, h_out, w_out]``."""
    return _spec_schedule(config, tile, gates)[2]
