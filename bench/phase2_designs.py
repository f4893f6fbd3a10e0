"""Phase-2 work-distribution designs under single-ported SRAM banks (issue 12, deliverable 2).

    python bench/phase2_designs.py [--quick] [--out FILE] [--jobs N]

For every shipped trace (``traces/*.npz``) and every gated layer, the layer is cut into tiles exactly as
the network runner cuts it (``sim.network.engine_config_for``, ``sim.tiling.plan_layer``), every tile runs
through the cycle model (``sim.engine.run_tile``, gated, and once per geometry dense) and the tile's gate
pattern gives its work queue: the gated-on activations in ``lin`` order (docs/microarchitecture.md, 5).
Each design then schedules phase 2 from that queue under its bank rules, and the produced schedule is
replayed beat by beat to count its cycles and SRAM reads. Phase 1 and the fixed overheads are the model's.

**Bank rule (all designs).** A bank serves at most one word per cycle; PEs asking for the *same* word of a
bank in a cycle are all served by that one read (broadcast). A PE at a padding position reads no input.
Beats are issued in lockstep (all PEs of a round on the same ``(slot, chunk, ky, kx)``, as today); a beat
whose reads need ``c`` cycles in its busiest bank takes ``c`` cycles (``c >= 1``).

**Input banks.** ``private``: a copy per PE. ``P banks``: word ``(q, y, x)`` at address
``(q*Hp + y')*Wp + x'`` of a stride-deinterleaved layout (``x' = (x mod S)*Wp/S + x div S``, likewise
``y'``; ``Hp, Wp`` = ``h_in, w_in`` rounded up to a multiple of S; the contract's layout when S = 1), bank =
address mod P. ``1 bank``: one single-ported array. **Weight banks**: ``private`` (a port per PE),
``P banks`` by tile output channel (``co mod P``), or ``1 bank``.

Designs (policy = how a phase-2 round is formed from the queue):

* ``A_inf``  unlimited ports (the engine before its selection window): P consecutive queue entries per round.
* ``A``      inputs replicated per PE, weights in P banks by ``co``; P consecutive entries, conflicts stall.
* ``B0``     inputs in P banks, weights in P banks by ``co``; P consecutive entries, conflicts stall (the
  naive replay).
* ``B16``, ``B64``  banks of B0; a reordering window over the first W = 16 / 64 queue entries: oldest
  first, an entry joins the round when, at every beat, its input and weight words hit banks no member
  uses for another word (up to P entries; fewer leave PEs idle). Rounds are conflict-free.
* ``C16``    inputs in P banks, weights in 1 bank (one weight word broadcast to every PE): a round holds
  entries of one output channel only (the queue is ``co``-major already), chosen as in B16 from a window
  of 16 entries.
* ``D``      inputs in 1 bank (one input word broadcast), weights in P banks by ``co``: the queue is
  position-major (``(oy, ox)``, then ``co``), a round holds entries of one position and one gate group
  (they read the same input word at every beat), chosen conflict-free from a window of 2P entries.
  Its phase 1 must be position-major too (one input bank): reported separately, not in the speed-up.

Speed-up of the gated layers: dense cycles / gated cycles (engine compute only; no DRAM), theoretical =
dense MACs / gated MACs, both from the model's counters. Gated cycles of a design = the model's cycles
minus its phase 2 (``PREP + R2*B2 + DRAIN2``) plus the design's phase 2 (``PREP + replayed + DRAIN2``).
Energy per image: accel/energy.py's per-access SRAM energies at each design's bank size, reads counted on
the replayed schedules of both phases. Everything is deterministic (no random choice anywhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/phase2_designs.py` from a checkout
    sys.path.insert(0, str(REPO))

from accel.energy import load_energy_table  # noqa: E402
from sim.engine import run_tile  # noqa: E402
from sim.network import engine_config_for  # noqa: E402
from sim.tiling import plan_layer  # noqa: E402
from spec.config import EngineConfig  # noqa: E402
from spec.tile import Tile, TileGeometry  # noqa: E402
from trace_format import TraceLayer, layer_tile_operands, load_trace  # noqa: E402

OUT = REPO / "bench" / "results" / "phase2_designs.json"

PRIVATE, BANKED, SINGLE = 0, 1, 2  # bank modes of the input and weight buffers
MODE_NAMES = {PRIVATE: "private", BANKED: "P banks", SINGLE: "1 bank"}
INORDER, WINDOW = 0, 1  # round policies
ANY, SAME_CO, SAME_POS_GROUP, DISTINCT_OUT, DISTINCT_QUEUE = 0, 1, 2, 3, 4  # what a round's members share
# DISTINCT_OUT / DISTINCT_QUEUE: besides the bank rule, members write distinct output banks (lin mod P) /
# sit in distinct queue banks (queue position mod P), so phase 2 could write its results into the output
# buffer's / the work queue's P 1R1W banks in one cycle (docs/chip-design.md, section 2.1).


@dataclass(frozen=True)
class Design:
    """One phase-2 work-distribution design: bank modes, round policy and queue order."""

    name: str
    rule: str
    in_mode: int
    w_mode: int
    policy: int
    window: int = 0  # WINDOW: entries considered per round (0: P)
    restrict: int = ANY
    position_major: bool = False  # queue (and phase 1) in (oy, ox, co) order instead of lin order
    unlimited: bool = False  # A_inf: multi-ported memories (the engine before its selection window)


DESIGNS: tuple[Design, ...] = (
    Design("A_inf", "unlimited ports (the engine before its window): P consecutive queue entries", PRIVATE,
           PRIVATE, INORDER, unlimited=True),
    Design("A", "inputs copied per PE; weights P banks (co mod P); P consecutive entries, stall on conflict",
           PRIVATE, BANKED, INORDER),
    Design("B0", "inputs P banks (address mod P); weights P banks; P consecutive entries, stall on conflict",
           BANKED, BANKED, INORDER),
    Design("B16", "banks of B0; oldest-first conflict-free pick from a 16-entry window", BANKED, BANKED,
           WINDOW, 16),
    Design("B64", "banks of B0; oldest-first conflict-free pick from a 64-entry window", BANKED, BANKED,
           WINDOW, 64),
    Design("B16o", "B16, and members write distinct output banks (lin mod P): results to the output "
           "buffer in one cycle", BANKED, BANKED, WINDOW, 16, DISTINCT_OUT),
    Design("B64o", "B64, and members write distinct output banks (lin mod P)", BANKED, BANKED, WINDOW, 64,
           DISTINCT_OUT),
    Design("B16q", "B16, and members sit in distinct queue banks (queue position mod P): results into their "
           "own queue entries in one cycle", BANKED, BANKED, WINDOW, 16, DISTINCT_QUEUE),
    Design("B64q", "B64, and members sit in distinct queue banks", BANKED, BANKED, WINDOW, 64,
           DISTINCT_QUEUE),
    Design("C16", "inputs P banks; one weight bank broadcast: one co per round, conflict-free pick from a "
           "16-entry window", BANKED, SINGLE, WINDOW, 16, SAME_CO),
    Design("D", "one input bank broadcast; weights P banks: position-major queue, one (position, group) per "
           "round, conflict-free pick from a 2P window", SINGLE, BANKED, WINDOW, 0, SAME_POS_GROUP, True),
)  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# Tile description and the Numba kernels
# ------------------------------------------------------------------------------------------------------

# Indices into the tile-parameter vector passed to the kernels.
T_P, T_K, T_S, T_PT, T_PL, T_HIN, T_WIN, T_HP, T_WP, T_NSEG, T_NCHB, T_NCHC, T_NCH, T_COG, T_G = range(15)


@dataclass(frozen=True)
class TileWork:
    """One tile's schedule inputs: its geometry as a parameter vector and its activations.

    ``co, oy, ox, grp`` describe every activation of the tile in ``lin`` order (index = ``lin``);
    ``gates`` their gate bits; ``params`` the vector indexed by the ``T_*`` constants.
    """

    params: np.ndarray
    co: np.ndarray
    oy: np.ndarray
    ox: np.ndarray
    grp: np.ndarray
    gates: np.ndarray

    @property
    def pes(self) -> int:
        return int(self.params[T_P])

    def kernel_args(self) -> tuple[np.ndarray, ...]:
        """The arrays the scheduling and replay kernels take first: ``co, grp, oy, ox, params``."""
        return self.co, self.grp, self.oy, self.ox, self.params

    def queue(self, position_major: bool = False) -> np.ndarray:
        """The work queue: gated-on activations in ``lin`` order (or position-major, then ``co``)."""
        return self.order(position_major)[self.gates[self.order(position_major)]]

    def order(self, position_major: bool = False) -> np.ndarray:
        """Every activation, in ``lin`` order or position-major (``(oy, ox)``, then ``co``)."""
        n = self.co.size
        if not position_major:
            return np.arange(n, dtype=np.int64)
        return np.lexsort((self.co, self.ox, self.oy)).astype(np.int64)


def tile_work(config: EngineConfig, geometry: TileGeometry, gates: np.ndarray) -> TileWork:
    """The :class:`TileWork` of a tile run on ``config`` with gate bits ``gates`` (c_out, h_out, w_out)."""
    seg = geometry.segments(config)
    k, s = config.kernel, config.stride
    n_groups = config.groups if config.groups > 1 else 1
    c_out, h_out, w_out = geometry.c_out, geometry.h_out, geometry.w_out
    params = np.array(
        [
            config.pes,
            k,
            s,
            geometry.pad_top,
            geometry.pad_left,
            geometry.h_in,
            geometry.w_in,
            -(-geometry.h_in // s) * s,
            -(-geometry.w_in // s) * s,
            seg.n_seg,
            seg.nch_b,
            seg.nch_c,
            seg.n_chunks,
            c_out // n_groups,
            n_groups,
        ],
        dtype=np.int64,
    )
    lin = np.arange(c_out * h_out * w_out, dtype=np.int64)
    co = lin // (h_out * w_out)
    pos = lin % (h_out * w_out)
    grp = co // (c_out // n_groups) if n_groups > 1 else np.zeros_like(co)
    return TileWork(params, co, pos // w_out, pos % w_out, grp, np.ascontiguousarray(gates.reshape(-1)))


@numba.njit(cache=True, nogil=True)
def _segment(phase: int, slot: int, g: int, n_groups: int) -> int:
    """Input segment a PE of gate group ``g`` reads in ``slot`` (phase 1: its base segment)."""
    if phase == 1:
        return g if n_groups > 1 else 0
    return slot + (1 if slot >= g else 0)


@numba.njit(cache=True, nogil=True)
def _add_request(words, counts, bank, word) -> None:
    """Note that ``word`` of ``bank`` is wanted this beat (identical words merge into one read)."""
    for j in range(counts[bank]):
        if words[bank, j] == word:
            return
    words[bank, counts[bank]] = word
    counts[bank] += 1


@numba.njit(cache=True, nogil=True)
def _replay(rounds, co, grp, oy, ox, tp, phase, in_mode, w_mode, out_cycles):
    """Replay ``rounds`` (``[R, P]`` activation indices, -1 = idle PE) beat by beat under the bank modes.

    Returns ``(cycles, input_reads, weight_reads, conflict_beats, beats)``; ``out_cycles[r]`` receives the
    cycles of round ``r``. Every beat costs the most distinct words any one bank must deliver (at least 1).
    """
    p, k, s = tp[T_P], tp[T_K], tp[T_S]
    pt, pl, h_in, w_in, hp, wp = tp[T_PT], tp[T_PL], tp[T_HIN], tp[T_WIN], tp[T_HP], tp[T_WP]
    n_seg, nch_b, nch_c, n_chunks, n_groups = tp[T_NSEG], tp[T_NCHB], tp[T_NCHC], tp[T_NCH], tp[T_G]
    n_slots = 1 if phase == 1 else n_seg - 1
    nch = nch_b if phase == 1 else nch_c
    hps, wps = hp // s, wp // s
    in_words = np.empty((p, p), dtype=np.int64)
    in_count = np.zeros(p, dtype=np.int64)
    w_words = np.empty((p, p), dtype=np.int64)
    w_count = np.zeros(p, dtype=np.int64)
    cycles = 0
    in_reads = 0
    w_reads = 0
    conflicts = 0
    beats = 0
    for r in range(rounds.shape[0]):
        rc = 0
        for slot in range(n_slots):
            for c in range(nch):
                for ky in range(k):
                    for kx in range(k):
                        in_count[:] = 0
                        w_count[:] = 0
                        for i in range(p):
                            a = rounds[r, i]
                            if a < 0:
                                continue
                            q = _segment(phase, slot, grp[a], n_groups) * nch_b + c
                            y = oy[a] * s + ky - pt
                            x = ox[a] * s + kx - pl
                            if 0 <= y < h_in and 0 <= x < w_in:
                                yy = (y % s) * hps + y // s
                                xx = (x % s) * wps + x // s
                                addr = (q * hp + yy) * wp + xx
                                bank = i if in_mode == 0 else (addr % p if in_mode == 1 else 0)
                                _add_request(in_words, in_count, bank, addr)
                            word = (co[a] * n_chunks + q) * k * k + ky * k + kx
                            bank = i if w_mode == 0 else (co[a] % p if w_mode == 1 else 0)
                            _add_request(w_words, w_count, bank, word)
                        worst = 1
                        for b in range(p):
                            worst = max(worst, in_count[b], w_count[b])
                            in_reads += in_count[b]
                            w_reads += w_count[b]
                        rc += worst
                        beats += 1
                        if worst > 1:
                            conflicts += 1
        out_cycles[r] = rc
        cycles += rc
    return cycles, in_reads, w_reads, conflicts, beats


@numba.njit(cache=True, nogil=True)
def _compatible(a, b, co, grp, oy, ox, tp, phase, in_mode, w_mode) -> bool:
    """Whether activations ``a`` and ``b`` can share a round without a bank conflict at any beat.

    Two PEs on the same beat read input addresses that differ by ``dq*Hp*Wp + doy*Wp + dox`` (the
    stride-deinterleaved layout makes this exact for every tap) with ``dq = dseg * nch_b``, so the input
    banks of a slot differ by that amount mod P whatever the chunk and tap; weights differ in ``co`` or in
    the segment. Padding taps (no read) are ignored, so the test is conservative there.
    """
    p = tp[T_P]
    hpwp = tp[T_HP] * tp[T_WP]
    nch_b, n_groups = tp[T_NCHB], tp[T_G]
    n_slots = 1 if phase == 1 else tp[T_NSEG] - 1
    same_pos = oy[a] == oy[b] and ox[a] == ox[b]
    for slot in range(n_slots):
        sa = _segment(phase, slot, grp[a], n_groups)
        sb = _segment(phase, slot, grp[b], n_groups)
        same_in_word = sa == sb and same_pos
        if in_mode == 1:
            ka = (sa * nch_b * hpwp + oy[a] * tp[T_WP] + ox[a]) % p
            kb = (sb * nch_b * hpwp + oy[b] * tp[T_WP] + ox[b]) % p
            if ka == kb and not same_in_word:
                return False
        elif in_mode == 2 and not same_in_word:
            return False
        same_w_word = sa == sb and co[a] == co[b]
        if w_mode == 1:
            if co[a] % p == co[b] % p and not same_w_word:
                return False
        elif w_mode == 2 and not same_w_word:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _schedule_window(order, co, grp, oy, ox, tp, phase, in_mode, w_mode, window, restrict):
    """Rounds (``[R, P]``, -1 = idle) picked from a window over ``order``.

    Each round: refill the window to ``window`` entries in queue order; take the oldest entry; then, in
    window order, every entry that shares what ``restrict`` asks with it and is compatible with every
    member so far, up to P. Picked entries leave the window; the others keep their places.
    """
    p = tp[T_P]
    n = order.shape[0]
    qpos = np.full(co.shape[0], -1, dtype=np.int64)  # queue position of each activation
    for i in range(n):
        qpos[order[i]] = i
    rounds = np.full((max(n, 1), p), -1, dtype=np.int64)
    win = np.empty(window, dtype=np.int64)
    keep = np.empty(window, dtype=np.bool_)
    n_win = 0
    head = 0
    r = 0
    while True:
        while n_win < window and head < n:
            win[n_win] = order[head]
            n_win += 1
            head += 1
        if n_win == 0:
            break
        m = 0
        for j in range(n_win):
            e = win[j]
            keep[j] = True
            if m == p:
                continue
            ok = True
            if m > 0:
                f = rounds[r, 0]
                if restrict == 1 and co[e] != co[f]:
                    ok = False
                elif restrict == 2 and (oy[e] != oy[f] or ox[e] != ox[f] or grp[e] != grp[f]):
                    ok = False
                t = 0
                while ok and t < m:
                    ok = _compatible(e, rounds[r, t], co, grp, oy, ox, tp, phase, in_mode, w_mode)
                    if restrict == 3 and e % p == rounds[r, t] % p:  # one output bank, lin mod P
                        ok = False
                    if restrict == 4 and qpos[e] % p == qpos[rounds[r, t]] % p:  # one queue bank
                        ok = False
                    t += 1
            if ok:
                rounds[r, m] = e
                m += 1
                keep[j] = False
        w = 0
        for j in range(n_win):
            if keep[j]:
                win[w] = win[j]
                w += 1
        n_win = w
        r += 1
    return rounds[:r]


def schedule_inorder(order: np.ndarray, pes: int) -> np.ndarray:
    """Rounds of P consecutive entries of ``order`` (the last one padded with -1)."""
    n = order.size
    rounds = np.full((-(-n // pes), pes), -1, dtype=np.int64)
    rounds.reshape(-1)[:n] = order
    return rounds


def schedule(work: TileWork, design: Design, phase: int) -> np.ndarray:
    """The rounds of ``design`` for one phase of a tile (phase 1: every activation, phase 2: the queue).

    Phase 1 keeps today's order (P consecutive activations) except for D, whose one input bank needs
    position-major rounds of one gate group.
    """
    order = work.queue(design.position_major) if phase == 2 else work.order(design.position_major)
    if design.policy == INORDER or (phase == 1 and not design.position_major):
        return schedule_inorder(order, work.pes)
    window = design.window or 2 * work.pes
    if phase == 1:
        window = work.pes
    return _schedule_window(
        order,
        *work.kernel_args(),
        phase,
        design.in_mode,
        design.w_mode,
        window,
        design.restrict,
    )


@dataclass
class PhaseResult:
    """A replayed phase: cycles (issue cycles only), reads, beats with a conflict, beats, rounds."""

    cycles: int = 0
    input_reads: int = 0
    weight_reads: int = 0
    conflict_beats: int = 0
    beats: int = 0
    rounds: int = 0
    pe_slots: int = 0  # rounds * P: PE positions offered, filled or idle


def replay(work: TileWork, design: Design, rounds: np.ndarray, phase: int) -> tuple[PhaseResult, np.ndarray]:
    """Replay ``rounds`` under ``design``'s banks; also each round's cycles."""
    per_round = np.zeros(rounds.shape[0], dtype=np.int64)
    if rounds.shape[0] == 0:
        return PhaseResult(), per_round
    c, ir, wr, cb, b = _replay(
        rounds,
        *work.kernel_args(),
        phase,
        design.in_mode,
        design.w_mode,
        per_round,
    )
    res = PhaseResult(int(c), int(ir), int(wr), int(cb), int(b), rounds.shape[0], rounds.size)
    return res, per_round


# ------------------------------------------------------------------------------------------------------
# SRAM bits, banks and energy per access
# ------------------------------------------------------------------------------------------------------


def queue_entry_bits(config: EngineConfig) -> int:
    """Bits of one work-queue entry as the RTL lays it out (``spec.protocol.queue_layout``)."""
    from spec.protocol import queue_layout

    return int(queue_layout(config).size)


def design_srams(design: Design, config: EngineConfig) -> dict[str, dict]:
    """SRAM bits, banks, read ports per bank and bank size of every buffer (plus window registers)."""
    p = config.pes
    in_bits = config.input_depth * config.lanes * config.act_width
    w_bits = config.weight_depth * config.lanes * config.weight_width

    def buf(total: int, mode: int, depth: int, word: int) -> dict:
        if design.unlimited:  # one array with a port per PE
            return {
                "bits": total,
                "banks": 1,
                "read_ports_per_bank": p,
                "bank_bytes": total // 8,
                "depth": depth,
                "word_bits": word,
            }
        if mode == PRIVATE:  # a copy per PE
            return {
                "bits": p * total,
                "banks": p,
                "read_ports_per_bank": 1,
                "bank_bytes": total // 8,
                "depth": depth,
                "word_bits": word,
                "copies": p,
            }
        banks = p if mode == BANKED else 1
        return {
            "bits": total,
            "banks": banks,
            "read_ports_per_bank": 1,
            "bank_bytes": total // 8 // banks,
            "depth": depth // banks,
            "word_bits": word,
        }

    def single(depth: int, word: int, ports: int) -> dict:
        ports = ports if design.unlimited else 1
        return {
            "bits": depth * word,
            "banks": 1,
            "read_ports_per_bank": ports,
            "bank_bytes": depth * word / 8,
            "depth": depth,
            "word_bits": word,
        }

    qbits = queue_entry_bits(config)
    out = {
        "input": buf(in_bits, design.in_mode, config.input_depth, config.lanes * config.act_width),
        "weight": buf(w_bits, design.w_mode, config.weight_depth, config.lanes * config.weight_width),
        "threshold": single(config.threshold_depth, config.acc_width, p),
        "output": single(config.output_depth, config.acc_width + 1, p),
        "queue": single(config.output_depth, qbits, p),
    }
    window = 0 if design.policy == INORDER else (design.window or 2 * p)
    out["window_registers"] = {"bits": window * qbits, "entries": window}
    out["total_sram_bits"] = sum(v["bits"] for k, v in out.items() if k != "window_registers")
    return out


# ------------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Sums over the tiles of one (trace, layer) for one design (gated layers only)."""

    gated_cycles: int = 0
    phase2_cycles: int = 0
    phase1_replay_cycles: int = 0  # phase 1 replayed under the design's banks (issue cycles)
    phase2_conflict_beats: int = 0
    phase2_beats: int = 0
    phase2_pe_slots: int = 0
    input_reads: int = 0
    weight_reads: int = 0


@dataclass
class LayerTally:
    """Model figures of one (trace, layer) summed over its tiles and samples, and each design's tally."""

    trace: str
    layer: str
    samples: int
    tiles: int = 0
    dense_cycles: int = 0
    model_cycles: int = 0
    model_phase1_cycles: int = 0
    model_phase2_cycles: int = 0
    dense_macs: int = 0
    gated_macs: int = 0
    gates_on: int = 0
    outputs: int = 0
    input_fill_words: int = 0
    weight_fill_words: int = 0
    tiles_b2_below_p: int = 0
    designs: dict[str, Tally] = field(default_factory=dict)


def model_phases(config: EngineConfig, geometry: TileGeometry, counters: dict[str, int]) -> tuple[int, int]:
    """Phase-1 issue cycles ``R1*B1`` and the phase-2 part (``PREP + R2*B2 + DRAIN2``) of a gated run."""
    seg = geometry.segments(config)
    r1 = -(-geometry.n_outputs // config.pes)
    phase1 = r1 * config.kernel**2 * seg.nch_b
    return phase1, counters["cycles"] - 3 - phase1


def evaluate_tile(
    config: EngineConfig, geometry: TileGeometry, gates: np.ndarray, designs: tuple[Design, ...]
) -> dict[str, tuple[PhaseResult, PhaseResult]]:
    """Phase-1 and phase-2 replays of every design on one tile (phase-1 replays shared by equal banks)."""
    work = tile_work(config, geometry, gates)
    out: dict[str, tuple[PhaseResult, PhaseResult]] = {}
    p1_cache: dict[tuple, PhaseResult] = {}
    for d in designs:
        key = (d.in_mode, d.w_mode, d.position_major, d.unlimited)
        if key not in p1_cache:
            p1_cache[key] = replay(work, d, schedule(work, d, 1), 1)[0]
        p2 = replay(work, d, schedule(work, d, 2), 2)[0] if work.gates.any() else PhaseResult()
        out[d.name] = (p1_cache[key], p2)
    return out


def run_layer(
    trace_path: Path, layer_name: str, config: EngineConfig, samples: int, max_tiles: int
) -> LayerTally:
    """Every tile (up to ``max_tiles`` per sample, 0 = all) of one gated layer, ``samples`` images."""
    trace = load_trace(trace_path)
    layer: TraceLayer = trace[layer_name]
    cfg, base = engine_config_for(config, layer)
    m = layer.meta
    plan = plan_layer(cfg, m.c_in, m.c_out, m.h, m.w, m.h_out, m.w_out, base, cfg.padding)
    tiles = list(plan)[: max_tiles or None]
    tally = LayerTally(trace_path.stem, layer_name, samples)
    tally.designs = {d.name: Tally() for d in DESIGNS}
    dense_seen: dict[TileGeometry, dict[str, int]] = {}
    for n in range(samples):
        x, w, tau = layer_tile_operands(layer, sample=n)
        for t in tiles:
            ch = np.array(t.channels)
            tile = Tile(t.geometry, x[:, t.y0 : t.y1, t.x0 : t.x1], np.ascontiguousarray(w[ch]), tau[ch])
            res = run_tile(cfg, tile, outputs=False)
            c = res.counters
            if t.geometry not in dense_seen:
                dg = dataclasses.replace(t.geometry, dense=True)
                dense_seen[t.geometry] = run_tile(
                    cfg, dataclasses.replace(tile, geometry=dg), outputs=False
                ).counters
            dc = dense_seen[t.geometry]
            g = t.geometry
            seg = g.segments(cfg)
            ph1, ph2 = model_phases(cfg, g, c)
            tally.tiles += 1
            tally.dense_cycles += dc["cycles"]
            tally.model_cycles += c["cycles"]
            tally.model_phase1_cycles += ph1
            tally.model_phase2_cycles += ph2
            tally.dense_macs += dc["base_macs"] + dc["cond_macs"]
            tally.gated_macs += c["base_macs"] + c["cond_macs"]
            tally.gates_on += c["gates_on"]
            tally.outputs += g.n_outputs
            tally.input_fill_words += seg.n_chunks * g.h_in * g.w_in
            tally.weight_fill_words += g.c_out * seg.n_chunks * cfg.kernel**2
            b2 = cfg.kernel**2 * (seg.n_seg - 1) * seg.nch_c
            tally.tiles_b2_below_p += int(b2 < cfg.pes)
            for name, (p1, p2) in evaluate_tile(cfg, g, res.gates, DESIGNS).items():
                d = tally.designs[name]
                phase2 = (3 + p2.cycles) if c["gates_on"] > 0 else 0
                d.phase2_cycles += phase2
                d.gated_cycles += c["cycles"] - ph2 + phase2
                d.phase1_replay_cycles += p1.cycles
                d.phase2_conflict_beats += p2.conflict_beats
                d.phase2_beats += p2.beats
                d.phase2_pe_slots += p2.pe_slots
                d.input_reads += p1.input_reads + p2.input_reads
                d.weight_reads += p1.weight_reads + p2.weight_reads
    return tally


def energy_pj(
    tally: LayerTally, design: Design, config: EngineConfig, srams: dict, table
) -> dict[str, float]:
    """Energy of one layer's tallies (all samples) for one design, by component (pJ).

    MACs and accumulates, input and weight reads (replayed, broadcasts merged) and fills at the design's
    bank size (a copy per PE: every fill word written P times), output/queue/threshold accesses as
    accel/energy.py counts them (the same in every design), static energy per compute cycle.
    """
    a = table.actions
    d = tally.designs[design.name]
    ib, wb = srams["input"], srams["weight"]

    def access(bank: dict, write: bool = False) -> float:
        return table.sram_access_pj(bank["bank_bytes"], bank["word_bits"], write=write)

    out_bytes = config.output_depth * (config.acc_width + 1) / 8
    out_pj = table.sram_access_pj(out_bytes, config.acc_width + 1)
    out_w = table.sram_access_pj(out_bytes, config.acc_width + 1, write=True)
    thr_pj = table.sram_access_pj(config.threshold_depth * config.acc_width / 8, config.acc_width)
    copies = ib.get("copies", 1)
    return {
        "mac": (a["mult_int8"] + a["add_acc"]) * tally.gated_macs,
        "input_buffer": d.input_reads * access(ib) + tally.input_fill_words * copies * access(ib, True),
        "weight_buffer": d.weight_reads * access(wb) + tally.weight_fill_words * access(wb, True),
        "output_queue_threshold": (tally.outputs + 2 * tally.gates_on) * out_w
        + (tally.outputs + tally.gates_on) * out_pj
        + tally.outputs * (thr_pj + a["compare"]),
        "static": a["static_cycle"] * d.gated_cycles,
    }


def summarize(tallies: list[LayerTally], config: EngineConfig, srams: dict, table) -> dict:
    """Per-trace figures of every design from the layer tallies."""
    traces: dict[str, list[LayerTally]] = {}
    for t in tallies:
        traces.setdefault(t.trace, []).append(t)
    out = {}
    for name, layers in traces.items():
        dense = sum(t.dense_cycles for t in layers)
        theo = sum(t.dense_macs for t in layers) / sum(t.gated_macs for t in layers)
        model = sum(t.model_cycles for t in layers)
        samples = layers[0].samples
        entry = {
            "gated_layers": len(layers),
            "samples": samples,
            "tiles_per_sample": sum(t.tiles for t in layers) // samples,
            "gate_on_fraction": sum(t.gates_on for t in layers) / sum(t.outputs for t in layers),
            "theoretical_speedup": theo,
            "model_speedup": dense / model,
            "model_phase1_cycles": sum(t.model_phase1_cycles for t in layers),
            "model_phase2_cycles": sum(t.model_phase2_cycles for t in layers),
            "tiles_b2_below_p": sum(t.tiles_b2_below_p for t in layers),
            "designs": {},
        }
        # Phase 2 of A_inf: the multi-ported engine's P consecutive entries per round (the engine's
        # phase 2 before the selection window), the yardstick of every design's phase 2.
        anchor = sum(t.designs["A_inf"].phase2_cycles for t in layers)
        for d in DESIGNS:
            ts = [t.designs[d.name] for t in layers]
            gated = sum(x.gated_cycles for x in ts)
            p2 = sum(x.phase2_cycles for x in ts)
            p1r = sum(x.phase1_replay_cycles for x in ts)
            beats = sum(x.phase2_beats for x in ts)
            e = [energy_pj(t, d, config, srams[d.name], table) for t in layers]
            comp = {k: sum(x[k] for x in e) / samples / 1e6 for k in e[0]}  # uJ per image
            speed = dense / gated
            entry["designs"][d.name] = {
                "achieved_speedup": speed,
                "achieved_over_theoretical": speed / theo,
                "phase2_cycles": p2,
                "phase2_vs_a_inf": p2 / max(anchor, 1),
                "phase2_conflict_beat_fraction": sum(x.phase2_conflict_beats for x in ts) / max(beats, 1),
                "phase2_pe_fill": sum(t.gates_on for t in layers)
                * 1.0
                / max(sum(x.phase2_pe_slots for x in ts), 1),
                "phase1_replay_vs_model": p1r / max(entry["model_phase1_cycles"], 1),
                "energy_uj_per_image": sum(comp.values()),
                "energy_uj_per_image_by_component": comp,
                "cycles_per_image": gated / samples,
            }
        out[name] = entry
    return out


def gated_layers(path: Path) -> list[str]:
    """Names of the gated layers of a trace."""
    return [layer.name for layer in load_trace(path) if layer.meta.gated]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 sample and at most 2 tiles per layer")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--traces", nargs="*", type=Path, default=sorted((REPO / "traces").glob("*.npz")))
    args = ap.parse_args(argv)
    config = EngineConfig()
    t0 = time.perf_counter()
    tasks = []
    skipped = []
    for path in args.traces:
        names = gated_layers(path)
        if not names:
            skipped.append(path.stem)
        samples = 1 if args.quick else load_trace(path).meta.samples
        tasks += [(path, name, samples, 2 if args.quick else 0) for name in names]
    # Largest layers first, so the two workers finish together.
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        tallies = list(pool.map(lambda a: run_layer(a[0], a[1], config, a[2], a[3]), tasks))
    elapsed = time.perf_counter() - t0
    table = load_energy_table(None)
    srams = {d.name: design_srams(d, config) for d in DESIGNS}
    traces = summarize(tallies, config, srams, table)
    result = {
        "command": "python bench/phase2_designs.py" + (" --quick" if args.quick else ""),
        "quick": args.quick,
        "seconds": round(elapsed, 1),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "numba": numba.__version__,
        },
        "config": dataclasses.asdict(config),
        "energy_table": table.name,
        "designs": {
            d.name: {
                "rule": d.rule,
                "input_banks": MODE_NAMES[d.in_mode],
                "weight_banks": MODE_NAMES[d.w_mode],
                **({"unlimited_ports": True} if d.unlimited else {}),
                "sram": srams[d.name],
            }
            for d in DESIGNS
        },
        "traces_without_gated_layers": skipped,
        "traces": traces,
        "layers": [
            {
                "trace": t.trace,
                "layer": t.layer,
                "tiles": t.tiles,
                "gates_on": t.gates_on,
                "outputs": t.outputs,
                "dense_cycles": t.dense_cycles,
                "model_cycles": t.model_cycles,
                "designs": {k: dataclasses.asdict(v) for k, v in t.designs.items()},
            }
            for t in tallies
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"\n{len(tasks)} layers in {elapsed:.1f} s; wrote {args.out}")
    return 0


def print_table(result: dict) -> None:
    """Achieved / theoretical per trace and design, then SRAM and energy per design."""
    names = list(result["designs"])
    print("achieved / theoretical speed-up of the gated layers (engine compute, phase 2 per design)")
    print(f"{'trace':34} {'theo':>6} " + " ".join(f"{n:>7}" for n in names))
    for trace, e in result["traces"].items():
        row = " ".join(f"{e['designs'][n]['achieved_over_theoretical']:7.3f}" for n in names)
        print(f"{trace:34} {e['theoretical_speedup']:6.2f} {row}")
    for skipped in result["traces_without_gated_layers"]:
        print(f"{skipped:34} (no gated layers)")
    print("\nphase-2 cycles / A_inf's; [phase-2 beats with a conflict]; {phase-1 replay / model}")
    for trace, e in result["traces"].items():
        cells = []
        for n in names:
            d = e["designs"][n]
            cells.append(
                f"{n} {d['phase2_vs_a_inf']:.2f} [{d['phase2_conflict_beat_fraction']:.0%}] "
                f"{{{d['phase1_replay_vs_model']:.2f}}}"
            )
        print(f"{trace:34} " + "  ".join(cells))
    print("\nSRAM per design (default config): Kbit (banks) per buffer, total; energy uJ/image per trace")
    head = f"{'design':7} {'input':>12} {'weight':>12} {'thr':>8} {'output':>10} {'queue':>10}"
    print(f"{head} {'total':>8}  energy")
    for n in names:
        s = result["designs"][n]["sram"]

        def cell(b: str, s: dict = s) -> str:
            return f"{s[b]['bits'] / 1024:.0f}({s[b]['banks']})"

        en = "  ".join(f"{e['designs'][n]['energy_uj_per_image']:.1f}" for e in result["traces"].values())
        print(
            f"{n:7} {cell('input'):>12} {cell('weight'):>12} {cell('threshold'):>8} {cell('output'):>10} "
            f"{cell('queue'):>10} {s['total_sram_bits'] / 1024:8.0f}  {en}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
