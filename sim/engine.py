"""Cycle model of the gated convolution engine (docs/microarchitecture.md, sections 1, 4 and 5).

The model has two parts that share nothing but the gate bits:

* the **functional part** computes what the output buffer holds after a run: the partial sum ``p`` over each
  output channel's base segment, the gate ``p > tau[co]`` and ``y = p + r`` (gate on or dense) or ``y = p``.
  It runs as an integer im2col followed by a blocked integer matrix product in Numba, with the conditional
  sum ``r`` computed only for the activations whose gate is on (as the engine does);
* the **schedule** walks the sequencer's states (SETUP, PHASE1, DRAIN1, PREP, PHASE2, DRAIN2) round by round
  and beat by beat and accumulates the performance counters exactly as section 5 says the hardware does
  during each issue and non-issue cycle. Like the hardware's ``counter_width``-bit counters, the reported
  values wrap modulo ``2**counter_width``.

Both parts are ``numba.njit(cache=True, nogil=True)`` kernels: the jitted signatures are fixed (int32
operands, int64 sums), so each kernel compiles once per machine, and callers may run tiles concurrently
from threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from accel.config import EngineConfig
from accel.tile import COUNTER_NAMES, Segments, Tile

__all__ = ["EngineResult", "run_tile"]

# Output channels per block of the matrix product: the block's packed weights stay in cache while every
# output position streams past them, and its accumulators stay in L1.
_CO_BLOCK = 64


@dataclass(frozen=True)
class EngineResult:
    """What one engine run leaves behind.

    Parameters
    ----------
    outputs : ndarray of int64, shape (c_out, h_out, w_out)
        The ``y`` values written into the output buffer.
    gates : ndarray of bool, shape (c_out, h_out, w_out)
        The gate bits written into the output buffer (all true in dense mode).
    counters : dict of str to int
        The performance counters, keys exactly :data:`accel.tile.COUNTER_NAMES` in that order.
    write_cycle : ndarray of int64, shape (c_out, h_out, w_out)
        The cycle of the run (1 = SETUP) in which each output entry is written for the last time: its
        phase-1 write-back, or its phase-2 write-back when its gate is on.
    """

    outputs: np.ndarray
    gates: np.ndarray
    counters: dict[str, int]
    write_cycle: np.ndarray


# --------------------------------------------------------------------------------------------------------
# Functional part
# --------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _im2col(
    xp: np.ndarray,
    kernel: int,
    stride: int,
    h_out: int,
    w_out: int,
    seg_start: np.ndarray,
    seg_width: np.ndarray,
) -> np.ndarray:
    """Unfold the zero-padded, channel-last input into one row per output position.

    Columns are segment-major, then ``(ky, kx)``, then the channel within the segment, so every segment's
    columns form one contiguous run (the base sum and the conditional sum each read contiguous memory).
    """
    n_cols = kernel * kernel * xp.shape[2]
    a = np.empty((h_out * w_out, n_cols), dtype=np.int32)
    for oy in range(h_out):
        for ox in range(w_out):
            row = a[oy * w_out + ox]
            col = 0
            for s in range(seg_start.shape[0]):
                c0 = seg_start[s]
                width = seg_width[s]
                for ky in range(kernel):
                    for kx in range(kernel):
                        pix = xp[oy * stride + ky, ox * stride + kx]
                        for c in range(width):
                            row[col + c] = pix[c0 + c]
                        col += width
    return a


@numba.njit(cache=True, nogil=True)
def _write_back(
    y: np.ndarray,
    gate: np.ndarray,
    row: np.ndarray,
    acc: np.ndarray,
    wm: np.ndarray,
    tau: np.ndarray,
    i: int,
    co0: int,
    nb: int,
    lo: int,
    n_base: int,
    dense: bool,
) -> None:
    """Gate, conditional sum and output entries of position ``i`` for channels ``co0 .. co0 + nb - 1``.

    ``acc`` holds their sums over the base columns ``[lo, lo + n_base)`` of im2col row ``row``.
    """
    hi = lo + n_base
    n_cols = row.shape[0]
    for j in range(nb):
        co = co0 + j
        p = acc[j]
        if dense:
            y[co, i] = p
            gate[co, i] = True
        elif p > tau[co]:
            # Conditional sum over every segment but the base one: the columns outside [lo, hi). Loops
            # start at 0 over slices: an index LLVM cannot prove non-negative keeps Numba's wrap-around
            # check and blocks vectorization.
            wr = wm[co]
            r = 0
            for k in range(lo):
                r += row[k] * wr[k]
            row_hi = row[hi:]
            wr_hi = wr[hi:]
            for k in range(n_cols - hi):
                r += row_hi[k] * wr_hi[k]
            y[co, i] = p + r
            gate[co, i] = True
        else:
            y[co, i] = p
            gate[co, i] = False


@numba.njit(cache=True, nogil=True)
def _gated_conv(
    a: np.ndarray,
    wp: np.ndarray,
    wm: np.ndarray,
    tau: np.ndarray,
    blk_co: np.ndarray,
    blk_n: np.ndarray,
    blk_lo: np.ndarray,
    dense: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Partial sums, gates and outputs of every (co, position).

    Parameters
    ----------
    a : int32 [M, n_cols]
        im2col rows, one per output position.
    wp : int32 [n_blocks, n_base, block width]
        Base-segment weights packed per block of output channels: ``wp[b, k, j]`` is the weight of column
        ``blk_lo[b] + k`` for channel ``blk_co[b] + j`` (zero beyond ``blk_n[b]``).
    wm : int32 [c_out, n_cols]
        All weights, one row per output channel (for the conditional dot product of one activation).
    tau : int64 [c_out]
        Thresholds.
    blk_co, blk_n, blk_lo : int64 [n_blocks]
        Blocks of output channels sharing a base segment: first channel, count, and the first column of
        the base segment's column range ``[lo, lo + n_base)`` (in dense mode every column).
    dense : bool
        Dense mode: ``y`` is the sum over every column and every gate is on.

    Returns
    -------
    y : int64 [c_out, M]
    gate : bool [c_out, M]
    """
    n_pos = a.shape[0]
    n_base = wp.shape[1]
    c_out = wm.shape[0]
    y = np.empty((c_out, n_pos), dtype=np.int64)
    gate = np.empty((c_out, n_pos), dtype=np.bool_)
    acc0 = np.empty(wp.shape[2], dtype=np.int64)
    acc1 = np.empty(wp.shape[2], dtype=np.int64)
    for b in range(blk_co.shape[0]):
        co0 = blk_co[b]
        nb = blk_n[b]
        lo = blk_lo[b]
        wb = wp[b]
        # Two output positions per pass share every weight load (about 1.35x faster than one). An odd
        # last position is simply computed twice.
        for i0 in range(0, n_pos, 2):
            i1 = min(i0 + 1, n_pos - 1)
            base0 = a[i0, lo : lo + n_base]
            base1 = a[i1, lo : lo + n_base]
            acc0[:] = 0
            acc1[:] = 0
            for k in range(n_base):
                v0 = base0[k]
                v1 = base1[k]
                if v0 == 0 and v1 == 0:  # padding and post-ReLU zeros add nothing
                    continue
                wk = wb[k]
                # nb is a run-time bound on purpose: LLVM vectorizes this loop better than a fully
                # unrolled constant one.
                for j in range(nb):
                    w = wk[j]
                    acc0[j] += v0 * w
                    acc1[j] += v1 * w
            _write_back(y, gate, a[i0], acc0, wm, tau, i0, co0, nb, lo, n_base, dense)
            _write_back(y, gate, a[i1], acc1, wm, tau, i1, co0, nb, lo, n_base, dense)
    return y, gate


def _functional(config: EngineConfig, tile: Tile, seg: Segments) -> tuple[np.ndarray, np.ndarray]:
    """Outputs and gate bits of a checked tile, shaped ``(c_out, h_out, w_out)``."""
    g = tile.geometry
    k, s = config.kernel, config.stride
    c_in, c_out = g.c_in, g.c_out
    k2 = k * k

    # Zero padding: the padded frame spans exactly the rows/columns the outputs read; input pixels that
    # fall outside it (rows below the last output's window) are never read.
    hp = (g.h_out - 1) * s + k
    wp = (g.w_out - 1) * s + k
    xp = np.zeros((hp, wp, c_in), dtype=np.int32)
    h_used = min(g.h_in, hp - g.pad_top)
    w_used = min(g.w_in, wp - g.pad_left)
    xp[g.pad_top : g.pad_top + h_used, g.pad_left : g.pad_left + w_used] = np.moveaxis(
        np.asarray(tile.inputs)[:, :h_used, :w_used], 0, -1
    )

    seg_start = np.array([seg.start(t) for t in range(seg.n_seg)], dtype=np.int64)
    seg_width = np.array([seg.channels(t) for t in range(seg.n_seg)], dtype=np.int64)
    # Plain ints for the scalar arguments: numpy integer fields would give the kernels new signatures.
    a = _im2col(xp, int(k), int(s), int(g.h_out), int(g.w_out), seg_start, seg_width)

    # Weights in the im2col column order: segment, then (ky, kx), then channel.
    w = np.asarray(tile.weights, dtype=np.int32)
    wm = np.concatenate(
        [
            np.moveaxis(w[:, c0 : c0 + cw], 1, -1).reshape(c_out, k2 * cw)
            for c0, cw in zip(seg_start.tolist(), seg_width.tolist(), strict=True)
        ],
        axis=1,
    )
    wm = np.ascontiguousarray(wm)
    tau = np.ascontiguousarray(tile.thresholds, dtype=np.int64)

    # Blocks of output channels that share a base segment (columns k2 * [start, start + C_sb)); in dense
    # mode one "segment" covering every column.
    n_groups = 1 if (g.dense or config.groups == 1) else config.groups
    per_group = c_out // n_groups
    n_base = k2 * c_in if g.dense else k2 * seg.base_ch
    blocks = []
    for grp in range(n_groups):
        lo = 0 if g.dense else k2 * seg.start(grp)
        first = grp * per_group
        for co0 in range(first, first + per_group, _CO_BLOCK):
            blocks.append((co0, min(_CO_BLOCK, first + per_group - co0), lo))
    wp = np.zeros((len(blocks), n_base, max(nb for _, nb, _ in blocks)), dtype=np.int32)
    for b, (co0, nb, lo) in enumerate(blocks):
        wp[b, :, :nb] = wm[co0 : co0 + nb, lo : lo + n_base].T
    blk = np.array(blocks, dtype=np.int64)
    y, gate = _gated_conv(
        a,
        wp,
        wm,
        tau,
        np.ascontiguousarray(blk[:, 0]),
        np.ascontiguousarray(blk[:, 1]),
        np.ascontiguousarray(blk[:, 2]),
        bool(g.dense),
    )
    shape = (c_out, g.h_out, g.w_out)
    return y.reshape(shape), gate.reshape(shape)


# --------------------------------------------------------------------------------------------------------
# Schedule and performance counters
# --------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _schedule(
    gate_lin: np.ndarray,
    write_cycle: np.ndarray,
    pes: int,
    lanes: int,
    taps: int,
    n_seg: int,
    base_ch: int,
    cond_ch: int,
    dense: bool,
) -> np.ndarray:
    """Walk the sequencer's states and return the counters in :data:`COUNTER_NAMES` order (unwrapped).

    Every issue cycle adds the round's valid PEs to ``busy_pe_cycles`` and valid PEs x valid lanes of the
    beat's chunk to the phase's MAC counter; every other cycle of the run is a stall.

    Parameters
    ----------
    gate_lin : bool [N]
        Gate bits in ``lin`` order (the order phase 1 hands activations to the PEs).
    pes, lanes, taps : int
        P, L and K^2.
    n_seg, base_ch, cond_ch : int
        Segments and their widths C_sb, C_sc.
    dense : bool
        Dense mode (one phase, every segment in phase 1).
    """
    n_act = gate_lin.shape[0]
    cycles = 0
    stalls = 0
    busy = 0
    base_macs = 0
    cond_macs = 0
    gates_on = 0

    # SETUP
    cycles += 1
    stalls += 1

    # PHASE1: round r gives PE i activation r*P + i; beats run over slots, chunks, ky, kx.
    # Gated: one slot, the PE's base segment; every base segment is C_sb wide (G > 1: all segments are
    # equal; G = 1: segment 0), so all valid PEs of a beat have the same valid lanes.
    # Dense: slot t is segment t, all PEs alike.
    n_slots = n_seg if dense else 1
    rounds1 = (n_act + pes - 1) // pes
    for r in range(rounds1):
        valid = min(pes, n_act - r * pes)
        for slot in range(n_slots):
            width = base_ch if slot == 0 else cond_ch
            n_chunks = (width + lanes - 1) // lanes
            for c in range(n_chunks):
                valid_lanes = min(lanes, width - c * lanes)
                for _tap in range(taps):  # (ky, kx), kx fastest
                    cycles += 1
                    busy += valid
                    base_macs += valid * valid_lanes
        # Write-back of the round (two cycles after its last beat, overlapping the next round's issue).
        for i in range(valid):
            write_cycle[r * pes + i] = cycles + 2
        if dense:
            gates_on += valid
        else:
            on = 0
            for i in range(valid):
                if gate_lin[r * pes + i]:
                    on += 1
            gates_on += on  # the compactor appends these to the work queue, in PE (= lin) order

    # DRAIN1: the last beat executes, then is written back.
    cycles += 2
    stalls += 2

    if not dense and gates_on > 0:
        # PREP: the work queue is read for round 0.
        cycles += 1
        stalls += 1
        # PHASE2: round r gives PE i queue entry r*P + i; n_seg - 1 slots (every segment but the PE's base
        # one, each C_sc wide), nch_c chunks, ky, kx. Queue reads overlap the last beat: no bubble.
        rounds2 = (gates_on + pes - 1) // pes
        n_chunks = (cond_ch + lanes - 1) // lanes
        queue = np.flatnonzero(gate_lin)  # the work queue: gated-on activations in lin order
        for r in range(rounds2):
            valid = min(pes, gates_on - r * pes)
            for _slot in range(n_seg - 1):
                for c in range(n_chunks):
                    valid_lanes = min(lanes, cond_ch - c * lanes)
                    for _tap in range(taps):
                        cycles += 1
                        busy += valid
                        cond_macs += valid * valid_lanes
            for i in range(valid):
                write_cycle[queue[r * pes + i]] = cycles + 2
        # DRAIN2
        cycles += 2
        stalls += 2

    out = np.empty(7, dtype=np.int64)
    out[0] = cycles
    out[1] = base_macs
    out[2] = cond_macs
    out[3] = busy
    out[4] = pes * cycles - busy
    out[5] = stalls
    out[6] = gates_on
    return out


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


def run_tile(config: EngineConfig, tile: Tile) -> EngineResult:
    """Run one tile through the engine model.

    Parameters
    ----------
    config : EngineConfig
        Elaboration parameters of the engine.
    tile : Tile
        Geometry and operands of the run.

    Returns
    -------
    EngineResult
        Output buffer contents (``y`` and gate bits) and the performance counters.

    Raises
    ------
    accel.config.ConfigError
        When the tile does not fit the configuration (``Tile.check``).
    """
    seg = tile.check(config)
    outputs, gates = _functional(config, tile, seg)
    g = tile.geometry
    write_cycle = np.zeros(g.n_outputs, dtype=np.int64)
    raw = _schedule(
        np.ascontiguousarray(gates.reshape(-1)),  # C order of (co, oy, ox) is lin order
        write_cycle,
        int(config.pes),
        int(config.lanes),
        int(config.kernel) ** 2,
        int(seg.n_seg),
        int(seg.base_ch),
        int(seg.cond_ch),
        bool(g.dense),
    )
    # The hardware counters are counter_width bits wide and wrap.
    mask = (1 << config.counter_width) - 1
    counters = {name: int(v) & mask for name, v in zip(COUNTER_NAMES, raw.tolist(), strict=True)}
    return EngineResult(
        outputs=outputs,
        gates=gates,
        counters=counters,
        write_cycle=write_cycle.reshape(outputs.shape),
    )
