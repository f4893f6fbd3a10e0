"""Cycle model of the gated convolution engine (docs/microarchitecture.md, sections 1, 4 and 5).

The model has two parts that share nothing but the gate bits:

* the **functional part** computes what the output buffer holds after a run: the partial sum ``p`` over each
  output channel's base segment, the gate ``p > tau[co]`` and ``y = p + r`` (gate on or dense) or ``y = p``.
  Per pair of output positions it unfolds the zero-padded input into two im2col rows and takes their dot
  products with the output channels' weights (two positions by two channels at a time), the conditional sum
  ``r`` only for the activations whose gate is on (as the engine does);
* the **schedule** walks the sequencer's states (SETUP, PHASE1, DRAIN1, PREP, PHASE2, DRAIN2) round by round
  and beat by beat and accumulates the performance counters exactly as section 5 says the hardware does
  during each issue and non-issue cycle. Like the hardware's ``counter_width``-bit counters, the reported
  values wrap modulo ``2**counter_width``.

**Exact integer results from floating-point SIMD.** The dot products run on float32 (float64 for operand
widths whose products do not fit, see :func:`_float_plan`) with Numba's ``fastmath`` so that LLVM vectorizes
them, yet every sum is exact: the operands are integers of at most ``act_width`` / ``weight_width`` bits, so
every product and every partial sum of at most ``chunk`` products is an integer of magnitude at most
``chunk * 2**(act_width-1) * 2**(weight_width-1) <= 2**24`` (2**53 for float64), which the format holds
exactly whatever the order of the additions; each chunk's sum is converted to int64 and the chunks are added
in int64. The results are bit-identical to integer arithmetic.

Both parts run in one ``numba.njit(cache=True, nogil=True)`` kernel per tile (one call from Python; callers
may run tiles concurrently from threads). Its signatures depend only on the operand dtypes (int8 operands
are passed as they are, any other integer dtype as int32) and on the float type, so the kernel compiles once
per machine for a configuration's widths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from accel.config import EngineConfig
from accel.tile import COUNTER_NAMES, Segments, Tile, TileGeometry

__all__ = ["EngineResult", "run_tile"]


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
#
# Loops index slices from 0: an index LLVM cannot prove non-negative keeps Numba's wrap-around check and
# blocks vectorization.


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot(a, b, n, chunk, zero):
    """``sum(a[:n] * b[:n])`` as an exact int64 (float sums over at most ``chunk`` products)."""
    total = 0
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        x = a[c0 : c0 + m]
        u = b[c0 : c0 + m]
        s = zero
        for k in range(m):
            s += x[k] * u[k]
        total += np.int64(s)
    return total


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot2(a0, a1, b, n, chunk, zero):
    """Two rows against one weight vector (each weight load used twice)."""
    t0 = 0
    t1 = 0
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        x0 = a0[c0 : c0 + m]
        x1 = a1[c0 : c0 + m]
        u = b[c0 : c0 + m]
        s0 = zero
        s1 = zero
        for k in range(m):
            w = u[k]
            s0 += x0[k] * w
            s1 += x1[k] * w
        t0 += np.int64(s0)
        t1 += np.int64(s1)
    return t0, t1


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot22(a0, a1, b0, b1, n, chunk, zero):
    """Two rows against two weight vectors: four sums, every load used twice."""
    t00 = 0
    t01 = 0
    t10 = 0
    t11 = 0
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        x0 = a0[c0 : c0 + m]
        x1 = a1[c0 : c0 + m]
        u = b0[c0 : c0 + m]
        v = b1[c0 : c0 + m]
        s00 = zero
        s01 = zero
        s10 = zero
        s11 = zero
        for k in range(m):
            p = x0[k]
            q = x1[k]
            s00 += p * u[k]
            s01 += p * v[k]
            s10 += q * u[k]
            s11 += q * v[k]
        t00 += np.int64(s00)
        t01 += np.int64(s01)
        t10 += np.int64(s10)
        t11 += np.int64(s11)
    return t00, t01, t10, t11


@numba.njit(cache=True, nogil=True)
def _pad_channel_last(x, xp, pad_top, pad_left):
    """Copy ``x[c, y, x]`` into the zeroed ``xp[pad_top + y, pad_left + x, c]`` (rows/columns it holds)."""
    c_in, h_in, w_in = x.shape
    h_used = min(h_in, xp.shape[0] - pad_top)
    w_used = min(w_in, xp.shape[1] - pad_left)
    for yy in range(h_used):
        dst_row = xp[pad_top + yy]
        for xx in range(w_used):
            dst = dst_row[pad_left + xx]
            src = x[:, yy, xx]
            for c in range(c_in):
                dst[c] = src[c]


@numba.njit(cache=True, nogil=True)
def _pack_weights(w, wm, k2, n_seg, base_ch, cond_ch):
    """``wm[co]``: the weights of ``co`` in im2col column order (segment, then (ky, kx), then channel)."""
    c_out, c_in = w.shape[0], w.shape[1]
    wf = w.reshape(c_out, c_in, k2)
    col = 0
    for s in range(n_seg):
        c0 = s * base_ch
        width = base_ch if s == 0 else cond_ch
        for t in range(k2):
            for co in range(c_out):
                src = wf[co, c0 : c0 + width, t]
                dst = wm[co, col : col + width]
                for c in range(width):
                    dst[c] = src[c]
            col += width


@numba.njit(cache=True, nogil=True)
def _im2col_row(xp, row, oy, ox, kernel, stride, n_seg, base_ch, cond_ch):
    """Unfold output position ``(oy, ox)``: columns segment-major, then ``(ky, kx)``, then channel, so
    every segment's columns form one contiguous run."""
    col = 0
    for s in range(n_seg):
        c0 = s * base_ch
        width = base_ch if s == 0 else cond_ch
        for ky in range(kernel):
            src_row = xp[oy * stride + ky]
            for kx in range(kernel):
                src = src_row[ox * stride + kx, c0 : c0 + width]
                dst = row[col : col + width]
                for c in range(width):
                    dst[c] = src[c]
                col += width


@numba.njit(cache=True, nogil=True)
def _functional(
    x, w, tau, xp, wm, y, gate, zero, chunk, kernel, stride, pad_top, pad_left, n_seg, base_ch, cond_ch,
    n_groups, dense,
):
    """Fill ``y`` and ``gate`` (both ``[c_out, n_pos]``).

    ``xp`` (zeroed, ``[hp, wp, c_in]``) and ``wm`` (``[c_out, n_cols]``) are work buffers of the float type
    the dot products run in; ``zero`` is that type's 0. Output channels form ``n_groups`` equal groups, each
    reading its base segment's columns ``[lo, lo + n_base)`` (dense: one group, every column).
    """
    c_out = w.shape[0]
    n_pos = y.shape[1]
    k2 = kernel * kernel
    w_out = (xp.shape[1] - kernel) // stride + 1
    _pad_channel_last(x, xp, pad_top, pad_left)
    _pack_weights(w, wm, k2, n_seg, base_ch, cond_ch)
    n_cols = wm.shape[1]
    n_base = n_cols if dense else k2 * base_ch
    per_group = c_out // n_groups
    r0 = np.empty_like(wm[0])
    r1 = np.empty_like(wm[0])
    # Two output positions per pass share every weight load. An odd last position is computed twice.
    for i0 in range(0, n_pos, 2):
        i1 = min(i0 + 1, n_pos - 1)
        _im2col_row(xp, r0, i0 // w_out, i0 % w_out, kernel, stride, n_seg, base_ch, cond_ch)
        _im2col_row(xp, r1, i1 // w_out, i1 % w_out, kernel, stride, n_seg, base_ch, cond_ch)
        for grp in range(n_groups):
            lo = 0 if dense else k2 * grp * base_ch
            hi = lo + n_base
            a0 = r0[lo:hi]
            a1 = r1[lo:hi]
            first = grp * per_group
            last = first + per_group
            # Base sums p (dense: the full sums), two channels at a time.
            for co in range(first, last, 2):
                if co + 1 < last:
                    p00, p01, p10, p11 = _dot22(a0, a1, wm[co, lo:hi], wm[co + 1, lo:hi], n_base, chunk, zero)
                    y[co, i0] = p00
                    y[co + 1, i0] = p01
                    y[co, i1] = p10
                    y[co + 1, i1] = p11
                else:
                    p00, p10 = _dot2(a0, a1, wm[co, lo:hi], n_base, chunk, zero)
                    y[co, i0] = p00
                    y[co, i1] = p10
            # Gates, and the conditional sum r over every column outside [lo, hi) where the gate is on.
            for co in range(first, last):
                if dense:
                    gate[co, i0] = True
                    gate[co, i1] = True
                    continue
                t = tau[co]
                g0 = y[co, i0] > t
                g1 = y[co, i1] > t
                gate[co, i0] = g0
                gate[co, i1] = g1
                wr = wm[co]
                if g0 and g1:
                    q0, q1 = _dot2(r0, r1, wr, lo, chunk, zero)
                    s0, s1 = _dot2(r0[hi:], r1[hi:], wr[hi:], n_cols - hi, chunk, zero)
                    y[co, i0] += q0 + s0
                    if i1 != i0:
                        y[co, i1] += q1 + s1
                elif g0:
                    y[co, i0] += _dot(r0, wr, lo, chunk, zero) + _dot(r0[hi:], wr[hi:], n_cols - hi, chunk, zero)
                elif g1:
                    y[co, i1] += _dot(r1, wr, lo, chunk, zero) + _dot(r1[hi:], wr[hi:], n_cols - hi, chunk, zero)


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


@numba.njit(cache=True, nogil=True)
def _run(
    x, w, tau, xp, wm, y, gate, write_cycle, counters, zero, chunk, tau_lo, tau_hi, kernel, stride, pad_top,
    pad_left, n_seg, base_ch, cond_ch, n_groups, dense, pes, lanes, counter_width,
):
    """One tile: functional part, schedule and wrapped counters, written into the arrays passed in.

    Returns False (and computes nothing) when a threshold lies outside ``[tau_lo, tau_hi]``.
    """
    for co in range(tau.shape[0]):
        if tau[co] < tau_lo or tau[co] > tau_hi:
            return False
    _functional(
        x, w, tau, xp, wm, y, gate, zero, chunk, kernel, stride, pad_top, pad_left, n_seg, base_ch, cond_ch,
        n_groups, dense,
    )
    # C order of (co, position) is lin order.
    raw = _schedule(gate.reshape(-1), write_cycle, pes, lanes, kernel * kernel, n_seg, base_ch, cond_ch, dense)
    # The hardware counters are counter_width bits wide and wrap (the raw counts are never negative).
    mask = np.int64(-1) if counter_width >= 63 else (np.int64(1) << counter_width) - 1
    for j in range(raw.shape[0]):
        counters[j] = raw[j] & mask
    return True


def _float_plan(config: EngineConfig) -> tuple[type, int]:
    """Float type of the dot products and the most products one float sum may take exactly.

    A product has magnitude at most ``2**(act_width-1) * 2**(weight_width-1)``; float32 holds every integer
    up to 2**24, float64 up to 2**53. float32 is used while a chunk can take at least 256 products (int8
    operands: 1024).
    """
    bound = 1 << (config.act_width - 1 + config.weight_width - 1)
    if (1 << 24) // bound >= 256:
        return np.float32, (1 << 24) // bound
    return np.float64, min((1 << 53) // bound, 1 << 40)


_PLANS: dict[EngineConfig, tuple] = {}
_CHECKED: dict[tuple, tuple[EngineConfig, Segments]] = {}
_PLAIN = (int,) * 9 + (bool,)  # TileGeometry field types on the fast path (9 ints, then `dense`)


def _plan(config: EngineConfig) -> tuple:
    plan = _PLANS.get(config)
    if plan is None:
        fdt, chunk = _float_plan(config)
        tau_lo, tau_hi = -(1 << (config.acc_width - 1)), (1 << (config.acc_width - 1)) - 1
        # Operand dtypes whose every value fits the operand widths: no range check needed.
        act_ok = tuple(dt for dt in (np.int8, np.int16) if np.iinfo(dt).bits <= config.act_width)
        w_ok = tuple(dt for dt in (np.int8, np.int16) if np.iinfo(dt).bits <= config.weight_width)
        plan = (fdt, fdt(0), chunk, tau_lo, tau_hi, act_ok, w_ok)
        if len(_PLANS) >= 256:
            _PLANS.clear()
        _PLANS[config] = plan
    return plan


def _geometry_segments(config: EngineConfig, g: TileGeometry) -> Segments:
    """``g.check(config)``, remembered for geometries of plain ``int`` fields (and a ``bool`` ``dense``)."""
    if type(g) is not TileGeometry:
        return g.check(config)
    values = tuple(g.__dict__.values())
    if tuple(map(type, values)) != _PLAIN:
        return g.check(config)
    # Keyed by the configuration's identity: the entry holds the configuration, so the id stays its own.
    key = (id(config), values)
    hit = _CHECKED.get(key)
    if hit is not None and hit[0] is config:
        return hit[1]
    seg = g.check(config)
    if len(_CHECKED) >= 4096:
        _CHECKED.clear()
    _CHECKED[key] = (config, seg)
    return seg


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
    fdt, zero, chunk, tau_lo, tau_hi, act_ok, w_ok = _plan(config)
    g = tile.geometry
    seg = _geometry_segments(config, g)
    x, w, tau = tile.inputs, tile.weights, tile.thresholds
    k = config.kernel
    # Fast path of Tile.check: numpy arrays of the right shapes whose dtypes cannot exceed the operand
    # widths, int64 thresholds (their range is checked in the kernel). Anything else: the full check.
    if not (
        type(x) is np.ndarray
        and type(w) is np.ndarray
        and type(tau) is np.ndarray
        and x.dtype in act_ok
        and w.dtype in w_ok
        and tau.dtype == np.int64
        and x.shape == (g.c_in, g.h_in, g.w_in)
        and w.shape == (g.c_out, g.c_in, k, k)
        and tau.shape == (g.c_out,)
    ):
        seg = tile.check(config)
    x = np.ascontiguousarray(x) if x.dtype == np.int8 else np.ascontiguousarray(x, dtype=np.int32)
    w = np.ascontiguousarray(w) if w.dtype == np.int8 else np.ascontiguousarray(w, dtype=np.int32)
    tau = np.ascontiguousarray(tau, dtype=np.int64)

    s = config.stride
    c_out, h_out, w_out = int(g.c_out), int(g.h_out), int(g.w_out)
    # The padded frame spans exactly the rows/columns the outputs read; input pixels outside it (below or
    # right of the last output's window) are never read.
    xp = np.zeros(((h_out - 1) * s + k, (w_out - 1) * s + k, int(g.c_in)), dtype=fdt)
    wm = np.empty((c_out, k * k * int(g.c_in)), dtype=fdt)
    n_pos = h_out * w_out
    y = np.empty((c_out, n_pos), dtype=np.int64)
    gate = np.empty((c_out, n_pos), dtype=np.bool_)
    write_cycle = np.empty(c_out * n_pos, dtype=np.int64)  # phase 1 writes every entry
    counters = np.empty(len(COUNTER_NAMES), dtype=np.int64)
    dense = bool(g.dense)
    ok = _run(
        x, w, tau, xp, wm, y, gate, write_cycle, counters, zero, chunk, tau_lo, tau_hi, k, s,
        int(g.pad_top), int(g.pad_left), int(seg.n_seg), int(seg.base_ch), int(seg.cond_ch),
        1 if (dense or config.groups == 1) else config.groups, dense, config.pes, config.lanes,
        config.counter_width,
    )
    if not ok:  # a threshold out of range: the full check names it
        tile.check(config)
        raise AssertionError("run_tile: the kernel refused thresholds that Tile.check accepts")
    shape = (c_out, h_out, w_out)
    return EngineResult(
        outputs=y.reshape(shape),
        gates=gate.reshape(shape),
        counters=dict(zip(COUNTER_NAMES, counters.tolist(), strict=True)),
        write_cycle=write_cycle.reshape(shape),
    )
