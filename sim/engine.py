"""Cycle model of the gated convolution engine (docs/microarchitecture.md, sections 1, 4 and 5).

The model has two parts that share nothing but the gate bits:

* the **functional part** computes what the output buffer holds after a run: the partial sum ``p`` over each
  output channel's base segment, the gate ``p > tau[co]`` and ``y = p + r`` (gate on or dense) or ``y = p``.
  It pads the input once into per-segment channel-last blocks and packs the weights in the matching
  column order, unfolds blocks of output positions into im2col rows and takes their dot products with the
  output channels' weights (four positions by two channels at a time); the conditional sum ``r`` only for
  the activations whose gate is on (as the engine does), four of a channel's at a time;
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
in int64. The results are bit-identical to integer arithmetic. Columns are zero-padded to a multiple of 32 per
segment, so the vectorized loops never run a scalar remainder.

Both parts run in one ``numba.njit(cache=True, nogil=True)`` kernel per tile (one call from Python; callers
may run tiles concurrently from threads). Its signatures depend only on the operand dtypes (int8 operands
are passed as they are, any other integer dtype as int32) and on the float type, so the kernel compiles once
per machine for a configuration's widths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numba
import numpy as np

from spec.config import EngineConfig
from spec.protocol import COUNTER_NAMES, RunMode
from spec.tile import QueueLoad, Segments, Tile, TileGeometry

__all__ = ["EngineResult", "run_tile"]


@dataclass(frozen=True)
class EngineResult:
    """What one engine run leaves behind.

    Parameters
    ----------
    outputs : ndarray of int64, shape (c_out, h_out, w_out), or None
        The ``y`` values written into the output buffer (None when the run was asked for no outputs).
    gates : ndarray of bool, shape (c_out, h_out, w_out)
        The gate bits written into the output buffer (all true in dense mode).
    counters : dict of str to int
        The performance counters, keys exactly :data:`spec.protocol.COUNTER_NAMES` in that order.
    write_cycle : ndarray of int64, shape (c_out, h_out, w_out)
        The cycle of the run (1 = SETUP) in which each output entry is written for the last time: its
        phase-1 write-back, or its phase-2 write-back when its gate is on.
    """

    outputs: np.ndarray | None
    gates: np.ndarray
    counters: dict[str, int]
    write_cycle: np.ndarray


class TileParams(NamedTuple):
    """The scalars of one tile's run, passed to the kernel as one record (Numba takes a NamedTuple).

    ``zero`` is 0 in the float type of the dot products and ``chunk`` the most products one float sum
    takes exactly (:func:`_float_plan`); ``[tau_lo, tau_hi]`` the thresholds' signed ``acc_width`` range;
    then the tile's geometry, its segments (:class:`~spec.tile.Segments`), the output-channel groups
    ``n_groups`` (1 in dense mode or for G = 1), the engine's P, L and counter width, whether the output
    values are wanted, and the :class:`~spec.protocol.RunMode` as an integer.
    """

    zero: float
    chunk: int
    tau_lo: int
    tau_hi: int
    kernel: int
    stride: int
    h_out: int
    w_out: int
    pad_top: int
    pad_left: int
    n_seg: int
    base_ch: int
    cond_ch: int
    n_groups: int
    dense: bool
    pes: int
    lanes: int
    counter_width: int
    outputs: bool
    w_in: int
    in_seg: int
    wp: int
    origin: int
    in_mask: int
    bank_mask: int
    window: int
    mode: int


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
def _dot41(a0, a1, a2, a3, b, n, chunk, zero):
    """Four rows against one weight vector."""
    t0 = 0
    t1 = 0
    t2 = 0
    t3 = 0
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        x0 = a0[c0 : c0 + m]
        x1 = a1[c0 : c0 + m]
        x2 = a2[c0 : c0 + m]
        x3 = a3[c0 : c0 + m]
        u = b[c0 : c0 + m]
        s0 = zero
        s1 = zero
        s2 = zero
        s3 = zero
        for k in range(m):
            w = u[k]
            s0 += x0[k] * w
            s1 += x1[k] * w
            s2 += x2[k] * w
            s3 += x3[k] * w
        t0 += np.int64(s0)
        t1 += np.int64(s1)
        t2 += np.int64(s2)
        t3 += np.int64(s3)
    return t0, t1, t2, t3


@numba.njit(cache=True, nogil=True, fastmath=True)
def _dot43(a0, a1, a2, a3, b0, b1, b2, n, chunk, zero, t):
    """Four rows against three weight vectors: twelve sums (into ``t``, four rows of three) from seven
    loads per step."""
    t[:] = 0
    for c0 in range(0, n, chunk):
        m = min(chunk, n - c0)
        x0 = a0[c0 : c0 + m]
        x1 = a1[c0 : c0 + m]
        x2 = a2[c0 : c0 + m]
        x3 = a3[c0 : c0 + m]
        u = b0[c0 : c0 + m]
        v = b1[c0 : c0 + m]
        z = b2[c0 : c0 + m]
        s00 = zero
        s01 = zero
        s02 = zero
        s10 = zero
        s11 = zero
        s12 = zero
        s20 = zero
        s21 = zero
        s22 = zero
        s30 = zero
        s31 = zero
        s32 = zero
        for k in range(m):
            p = u[k]
            q = v[k]
            r = z[k]
            s00 += x0[k] * p
            s01 += x0[k] * q
            s02 += x0[k] * r
            s10 += x1[k] * p
            s11 += x1[k] * q
            s12 += x1[k] * r
            s20 += x2[k] * p
            s21 += x2[k] * q
            s22 += x2[k] * r
            s30 += x3[k] * p
            s31 += x3[k] * q
            s32 += x3[k] * r
        t[0] += np.int64(s00)
        t[1] += np.int64(s01)
        t[2] += np.int64(s02)
        t[3] += np.int64(s10)
        t[4] += np.int64(s11)
        t[5] += np.int64(s12)
        t[6] += np.int64(s20)
        t[7] += np.int64(s21)
        t[8] += np.int64(s22)
        t[9] += np.int64(s30)
        t[10] += np.int64(s31)
        t[11] += np.int64(s32)


# Columns of a segment are padded with zeros to a multiple of this: the vectorized loops then have no
# scalar remainder (zero columns add nothing).
_COL_ALIGN = 32


@numba.njit(cache=True, nogil=True)
def _layout(dense, c_in, k2, n_seg, base_ch, cond_ch):
    """Segments of the column layout (dense: one segment, every channel): first channel, width, first
    column and padded column count of each."""
    n = 1 if dense else n_seg
    start = np.empty(n, dtype=np.int64)
    width = np.empty(n, dtype=np.int64)
    col = np.empty(n, dtype=np.int64)
    n_col = np.empty(n, dtype=np.int64)
    c = 0
    for s in range(n):
        if dense:
            start[s] = 0
            width[s] = c_in
        else:
            start[s] = s * base_ch
            width[s] = base_ch if s == 0 else cond_ch
        col[s] = c
        n_col[s] = (k2 * width[s] + _COL_ALIGN - 1) // _COL_ALIGN * _COL_ALIGN
        c += n_col[s]
    return start, width, col, n_col


@numba.njit(cache=True, nogil=True)
def _pad_segments(x, xb, hp, wp, pad_top, pad_left, seg_start, seg_width):
    """Copy ``x[c, y, x]`` into the zeroed buffer ``xb``: per segment ``s`` an ``[hp, wp, width_s]`` block
    (channel last) at ``hp * wp * start_s``, the input at row ``pad_top + y``, column ``pad_left + x``."""
    c_in, h_in, w_in = x.shape
    h_used = min(h_in, hp - pad_top)
    w_used = min(w_in, wp - pad_left)
    for s in range(seg_start.shape[0]):
        c0 = seg_start[s]
        width = seg_width[s]
        off = hp * wp * c0
        for yy in range(h_used):
            row = xb[off + ((pad_top + yy) * wp + pad_left) * width :]
            for xx in range(w_used):
                dst = row[xx * width : (xx + 1) * width]
                src = x[c0 : c0 + width, yy, xx]
                for c in range(width):
                    dst[c] = src[c]


@numba.njit(cache=True, nogil=True)
def _pack_weights(w, wm, k2, seg_start, seg_width, seg_col):
    """``wm[co]``: the weights of ``co`` in column order: segment, then ``(ky, kx)``, then channel."""
    c_out, c_in = w.shape[0], w.shape[1]
    wf = w.reshape(c_out, c_in, k2)
    for s in range(seg_start.shape[0]):
        c0 = seg_start[s]
        width = seg_width[s]
        for t in range(k2):
            col = seg_col[s] + t * width
            for co in range(c_out):
                src = wf[co, c0 : c0 + width, t]
                dst = wm[co, col : col + width]
                for c in range(width):
                    dst[c] = src[c]


@numba.njit(cache=True, nogil=True)
def _im2col_row(xb, row, oy, ox, kernel, stride, hp, wp, seg_start, seg_width, seg_col):
    """Unfold output position ``(oy, ox)`` into ``row``: segment-major, then ``(ky, kx)``, then channel.

    In the per-segment channel-last blocks of ``xb`` the ``kernel`` pixels of one kernel row are contiguous,
    so a row is ``kernel`` copies of ``kernel * width`` values per segment.
    """
    for s in range(seg_start.shape[0]):
        width = seg_width[s]
        run = kernel * width
        src = xb[hp * wp * seg_start[s] + (oy * stride * wp + ox * stride) * width :]
        for ky in range(kernel):
            a = src[ky * wp * width : ky * wp * width + run]
            dst = row[seg_col[s] + ky * run : seg_col[s] + (ky + 1) * run]
            for c in range(run):
                dst[c] = a[c]


@numba.njit(cache=True, nogil=True)
def _cond_sums(rows, ids, n_on, wr, lo, hi, chunk, zero, out):
    """``out[j]``: the conditional sum (the columns outside ``[lo, hi)``) of row ``rows[ids[j]]`` with the
    weights ``wr``, for ``j < n_on``; four rows at a time share the weight loads."""
    n = wr.shape[0]
    wh = wr[hi:]
    j = 0
    while j < n_on:
        if j + 1 == n_on:
            a = rows[ids[j]]
            r = 0
            if lo > 0:
                r += _dot(a, wr, lo, chunk, zero)
            if hi < n:
                r += _dot(a[hi:], wh, n - hi, chunk, zero)
            out[j] = r
            break
        # Two or three left: the last row stands in for the missing ones.
        r0 = rows[ids[j]]
        r1 = rows[ids[j + 1]]
        r2 = rows[ids[min(j + 2, n_on - 1)]]
        r3 = rows[ids[min(j + 3, n_on - 1)]]
        s0 = 0
        s1 = 0
        s2 = 0
        s3 = 0
        if lo > 0:
            s0, s1, s2, s3 = _dot41(r0, r1, r2, r3, wr, lo, chunk, zero)
        if hi < n:
            b0, b1, b2, b3 = _dot41(r0[hi:], r1[hi:], r2[hi:], r3[hi:], wh, n - hi, chunk, zero)
            s0 += b0
            s1 += b1
            s2 += b2
            s3 += b3
        out[j] = s0
        out[j + 1] = s1
        if j + 2 < n_on:
            out[j + 2] = s2
        if j + 3 < n_on:
            out[j + 3] = s3
        j += 4


# Output positions whose im2col rows are built at a time.
_BLOCK = 16


@numba.njit(cache=True, nogil=True)
def _functional(x, w, tau, xb, y, gate, prm, conditional):
    """Fill ``y`` and ``gate`` (both ``[c_out, h_out * w_out]``).

    With ``conditional`` false the conditional sums are not taken: ``y`` holds the base sums ``p`` and
    ``gate`` the gate bits, all the schedule needs.

    ``xb`` (zeroed, ``hp * wp * c_in``) is a work buffer of the float type the dot products run in; ``zero``
    is that type's 0. Output positions are taken in blocks of ``_BLOCK``: their im2col rows are built
    (columns in the order of the packed weights ``wm``), then the base sums of four rows with three
    channels' weights at a time, then per channel the conditional sums of its gated-on positions, four at
    a time. Output channels form ``n_groups`` equal groups; group ``g`` reads its base segment's columns
    (segment ``g``; groups = 1: segment 0; dense: the one segment holding every channel).
    """
    zero, chunk, kernel, stride = prm.zero, prm.chunk, prm.kernel, prm.stride
    h_out, w_out, pad_top, pad_left = prm.h_out, prm.w_out, prm.pad_top, prm.pad_left
    n_seg, base_ch, cond_ch, n_groups, dense = prm.n_seg, prm.base_ch, prm.cond_ch, prm.n_groups, prm.dense
    c_out = w.shape[0]
    c_in = x.shape[0]
    n_pos = h_out * w_out
    k2 = kernel * kernel
    hp = (h_out - 1) * stride + kernel
    wp = (w_out - 1) * stride + kernel
    seg_start, seg_width, seg_col, seg_ncol = _layout(dense, c_in, k2, n_seg, base_ch, cond_ch)
    n_cols = seg_col[-1] + seg_ncol[-1]
    _pad_segments(x, xb, hp, wp, pad_top, pad_left, seg_start, seg_width)
    wm = np.zeros((c_out, n_cols), dtype=xb.dtype)
    _pack_weights(w, wm, k2, seg_start, seg_width, seg_col)
    per_group = c_out // n_groups
    rows = np.zeros((_BLOCK, n_cols), dtype=xb.dtype)
    ids = np.empty(_BLOCK, dtype=np.int64)
    cond = np.empty(_BLOCK, dtype=np.int64)
    sums = np.empty(12, dtype=np.int64)
    for b0 in range(0, n_pos, _BLOCK):
        nb = min(_BLOCK, n_pos - b0)
        for j in range(nb):
            i = b0 + j
            oy = i // w_out
            _im2col_row(
                xb, rows[j], oy, i - oy * w_out, kernel, stride, hp, wp, seg_start, seg_width, seg_col
            )
        for grp in range(n_groups):
            bs = grp if n_groups > 1 else 0  # the group's base segment
            lo = seg_col[bs]
            hi = lo + seg_ncol[bs]
            n_base = hi - lo
            first = grp * per_group
            last = first + per_group
            # Base sums p (dense: the full sums): four positions by three channels at a time. Rows past
            # the block's last position hold stale values; their sums are not stored.
            for q in range(0, nb, 4):
                a0 = rows[q, lo:hi]
                a1 = rows[q + 1, lo:hi]
                a2 = rows[q + 2, lo:hi]
                a3 = rows[q + 3, lo:hi]
                n_here = min(4, nb - q)
                i = b0 + q
                co = first
                while co + 3 <= last:  # three channels at a time
                    _dot43(
                        a0,
                        a1,
                        a2,
                        a3,
                        wm[co, lo:hi],
                        wm[co + 1, lo:hi],
                        wm[co + 2, lo:hi],
                        n_base,
                        chunk,
                        zero,
                        sums,
                    )
                    for j in range(n_here):
                        y[co, i + j] = sums[3 * j]
                        y[co + 1, i + j] = sums[3 * j + 1]
                        y[co + 2, i + j] = sums[3 * j + 2]
                    co += 3
                if co < last:  # one or two left: the last channel stands in for the missing ones
                    _dot43(
                        a0,
                        a1,
                        a2,
                        a3,
                        wm[co, lo:hi],
                        wm[min(co + 1, last - 1), lo:hi],
                        wm[last - 1, lo:hi],
                        n_base,
                        chunk,
                        zero,
                        sums,
                    )
                    for j in range(n_here):
                        for c in range(last - co):
                            y[co + c, i + j] = sums[3 * j + c]
            # Gates, and the conditional sum r over every other segment where the gate is on.
            for co in range(first, last):
                yc = y[co, b0 : b0 + nb]
                gc = gate[co, b0 : b0 + nb]
                if dense:
                    for j in range(nb):
                        gc[j] = True
                    continue
                t = tau[co]
                n_on = nb - nb  # (not the literal 0: a literal argument would compile _cond_sums twice)
                for j in range(nb):
                    g = yc[j] > t
                    gc[j] = g
                    if g:
                        ids[n_on] = j
                        n_on += 1
                if n_on and conditional:
                    _cond_sums(rows, ids, n_on, wm[co], lo, hi, chunk, zero, cond)
                    for j in range(n_on):
                        yc[ids[j]] += cond[j]


# --------------------------------------------------------------------------------------------------------
# Schedule and performance counters
# --------------------------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def _window_keys(queue, h_out, w_out, c_og, n_groups, wp, origin, in_seg, in_mask, bank_mask, n_cond):
    """Selection-window keys of every queued activation (by queue position): ``co``, gate group ``g``,
    input position ``ia`` (the input word of tap (0, 0), ``origin + oy·Wp + ox`` in the deinterleaved
    plane, modulo the input address width) and, per
    conditional slot ``t``, the input bank ``(ia + (t + [t >= g])·in_seg) mod 2^bank_bits`` of the slot's
    first word."""
    keys = np.empty((queue.shape[0], 3 + n_cond), dtype=np.int64)
    hw = h_out * w_out
    for q in range(queue.shape[0]):
        lin = queue[q]
        co = lin // hw
        pos = lin - co * hw
        oy = pos // w_out
        ox = pos - oy * w_out
        g = co // c_og if n_groups > 1 else 0
        ia = (origin + oy * wp + ox) & in_mask
        keys[q, 0] = co
        keys[q, 1] = g
        keys[q, 2] = ia
        for t in range(n_cond):
            seg = t + 1 if t >= g else t
            keys[q, 3 + t] = (ia + seg * in_seg) & bank_mask
    return keys


@numba.njit(cache=True, nogil=True)
def _compatible(a, b, keys, n_cond, bank_mask) -> bool:
    """Whether queued activations ``a`` and ``b`` (queue positions) may share a phase-2 round: at no beat
    do they ask one weight bank (``co mod 2^bank_bits``) or one input bank for two different words (same
    channel: one weight word; same position and segment: one input word)."""
    ca, cb = keys[a, 0], keys[b, 0]
    if ca != cb and (ca & bank_mask) == (cb & bank_mask):
        return False
    ga, gb = keys[a, 1], keys[b, 1]
    same_pos = keys[a, 2] == keys[b, 2]
    for t in range(n_cond):
        same_word = same_pos and ((ga <= t) == (gb <= t))
        if keys[a, 3 + t] == keys[b, 3 + t] and not same_word:
            return False
    return True


@numba.njit(cache=True, nogil=True)
def _form_round(state, win, members, keys, n_cond, window, pes, bank_mask):
    """One round of the selection window: FILL from the queue (``state``: entries in the window, next
    queue position), then in age order every entry compatible with all members so far, up to P.

    ``win`` holds queue positions, oldest first; the round's activations go to ``members`` (PE k = the k-th
    oldest). Returns the formation's cycles (``inserted + 1 + max(members, 1)``) and the member count.
    """
    n_win, head = state[0], state[1]
    n_on = keys.shape[0]
    inserted = 0
    while n_win < window and head < n_on:
        win[n_win] = head
        n_win += 1
        head += 1
        inserted += 1
    m = 0
    kept = 0
    for j in range(n_win):
        e = win[j]
        ok = m < pes
        t = 0
        while ok and t < m:
            ok = _compatible(e, members[t], keys, n_cond, bank_mask)
            t += 1
        if ok:
            members[m] = win[j]
            m += 1
        else:
            win[kept] = win[j]
            kept += 1
    state[0], state[1] = kept, head
    return inserted + 1 + max(m, 1), m


@numba.njit(cache=True, nogil=True)
def _round_tap_cycles(first, valid, kernel, gated, geometry, base, yt, xt, addrs, per_bank):
    """Cycles of one chunk's K² beats in the phase-1 round of activations ``first … first + valid − 1``,
    by the input banks' stall rule (docs/microarchitecture.md, section 3): a beat takes as many cycles as
    the most distinct words any input bank is asked for, at least one. A PE at a padding tap asks for
    nothing. In the plane deinterleaved by the stride, a PE's word at any beat is ``oy·Wp + ox`` (plus its
    segment's offset when gated) plus an offset common to every PE (tap, chunk and slot), which changes
    neither which words are equal nor which share a bank."""
    h_out, w_out, c_og, n_groups, stride, pad_top, pad_left, w_in, in_seg = geometry[:9]
    in_mask, bank_mask, h_in, wp = geometry[9], geometry[10], geometry[11], geometry[12]
    hw = h_out * w_out
    co0 = first // hw
    ox0 = first - co0 * hw - ((first - co0 * hw) // w_out) * w_out
    if ox0 + valid <= w_out:
        return kernel * kernel  # one output row: consecutive words, P <= 2^bank_bits banks
    for i in range(valid):
        lin = first + i
        co = lin // hw
        pos = lin - co * hw
        oy = pos // w_out
        ox = pos - oy * w_out
        g = co // c_og if gated and n_groups > 1 else 0  # gated: the PE's own base segment
        yt[i] = oy * stride - pad_top
        xt[i] = ox * stride - pad_left
        base[i] = oy * wp + ox + g * in_seg
    total = 0
    for ky in range(kernel):
        for kx in range(kernel):
            n = 0
            for i in range(valid):
                y = yt[i] + ky
                x = xt[i] + kx
                if 0 <= y < h_in and 0 <= x < w_in:
                    addrs[n] = base[i] & in_mask
                    n += 1
            per_bank[:] = 0
            worst = 1
            for j in range(n):
                fresh = True
                for k in range(j):
                    if addrs[k] == addrs[j]:
                        fresh = False
                        break
                if fresh:
                    b = addrs[j] & bank_mask
                    per_bank[b] += 1
                    if per_bank[b] > worst:
                        worst = per_bank[b]
            total += worst
    return total


@numba.njit(cache=True, nogil=True)
def _schedule(
    gate_lin: np.ndarray,
    queue_in: np.ndarray,
    mode: int,
    write_cycle: np.ndarray,
    pes: int,
    lanes: int,
    kernel: int,
    n_seg: int,
    base_ch: int,
    cond_ch: int,
    dense: bool,
    geometry: np.ndarray,
    window: int,
) -> np.ndarray:
    """Walk the sequencer's states and return the counters in :data:`COUNTER_NAMES` order (unwrapped).

    Every issue cycle adds the round's valid PEs to ``busy_pe_cycles`` and valid PEs x valid lanes of the
    beat's chunk to the phase's MAC counter; every other cycle of the run is a stall.

    Parameters
    ----------
    gate_lin : bool [N]
        Gate bits in ``lin`` order (the order phase 1 hands activations to the PEs).
    queue_in : int64 [n]
        Mode 2: the work queue the host wrote, the ``lin`` of each entry in entry order (else unused).
    mode : int
        :class:`~spec.protocol.RunMode`: 0 both phases, 1 phase 1 only, 2 phase 2 only on ``queue_in``.
    pes, lanes, kernel : int
        P, L and K.
    n_seg, base_ch, cond_ch : int
        Segments and their widths C_sb, C_sc.
    dense : bool
        Dense mode (one phase, every segment in phase 1).
    geometry : int64 [14]
        What the selection window's keys and phase 1's bank conflicts need (:func:`_window_keys`,
        :func:`_round_tap_cycles`): ``h_out, w_out, c_og, n_groups, stride, pad_top, pad_left, w_in, in_seg,
        in_mask, bank_mask, h_in, Wp, origin`` (``Wp``: the deinterleaved plane's row pitch; ``origin``: the
        word of output (0, 0)'s tap (0, 0)).
    window : int
        Places of the selection window W.
    """
    n_act = gate_lin.shape[0]
    taps = kernel * kernel
    cycles = 0
    stalls = 0
    busy = 0
    base_macs = 0
    cond_macs = 0
    gates_on = 0

    run1 = mode != 2
    run2 = mode != 1
    # SETUP: P cycles, the coordinate chain taking one PE's activation per cycle; one in a run without
    # phase 1
    setup = pes if run1 else 1
    cycles += setup
    stalls += setup

    # PHASE1: round r gives PE i activation r*P + i; beats run over slots, chunks, ky, kx.
    # Gated: one slot, the PE's base segment; every base segment is C_sb wide (G > 1: all segments are
    # equal; G = 1: segment 0), so all valid PEs of a beat have the same valid lanes.
    # Dense: slot t is segment t, all PEs alike.
    # Every round issues the same beats; only its number of valid PEs differs. Walk one round's beats
    # once: their count and the valid lanes summed over them.
    n_slots = n_seg if dense else 1
    beats1 = 0
    lanes1 = 0
    for slot in range(n_slots):
        width = base_ch if slot == 0 else cond_ch
        n_chunks = (width + lanes - 1) // lanes
        for c in range(n_chunks):
            valid_lanes = min(lanes, width - c * lanes)
            for _tap in range(taps):  # (ky, kx), kx fastest
                beats1 += 1
                lanes1 += valid_lanes
    rounds1 = (n_act + pes - 1) // pes if run1 else 0
    chunks1 = beats1 // taps  # every tap once per chunk of every slot
    base = np.empty(pes, dtype=np.int64)
    yt = np.empty(pes, dtype=np.int64)
    xt = np.empty(pes, dtype=np.int64)
    addrs = np.empty(pes, dtype=np.int64)
    per_bank = np.zeros(geometry[10] + 1, dtype=np.int64)
    for r in range(rounds1):
        valid = min(pes, n_act - r * pes)
        # The round's beats: each adds the valid PEs to busy and valid PEs x valid lanes to the MACs, and
        # takes one cycle, or more when it asks an input bank for several words (the extra are stalls).
        spent = chunks1 * _round_tap_cycles(
            r * pes, valid, kernel, not dense, geometry, base, yt, xt, addrs, per_bank
        )
        cycles += spent
        stalls += spent - beats1
        busy += valid * beats1
        base_macs += valid * lanes1
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

    if run1:  # DRAIN1: the last beat executes, then is written back.
        cycles += 2
        stalls += 2
    else:  # SETUP took the host's queue length
        gates_on = queue_in.shape[0]

    if not dense and run2 and gates_on > 0:
        # Phase 2 (docs/chip-design.md, section 2.1): the selection window forms each round while the round
        # before it runs; round r's last beat waits for round r + 1's formation and for round r − 1's
        # results, which drain into their queue entries one per cycle.
        n_chunks = (cond_ch + lanes - 1) // lanes
        beats2 = 0
        lanes2 = 0
        for _slot in range(n_seg - 1):
            for c in range(n_chunks):
                valid_lanes = min(lanes, cond_ch - c * lanes)
                for _tap in range(taps):
                    beats2 += 1
                    lanes2 += valid_lanes
        # The work queue: phase 1's gated-on activations in lin order, or the host's.
        queue = np.flatnonzero(gate_lin) if run1 else queue_in
        h_out, w_out, c_og, n_groups = geometry[0], geometry[1], geometry[2], geometry[3]
        in_seg, in_mask, bank_mask, wp, origin = (
            geometry[8],
            geometry[9],
            geometry[10],
            geometry[12],
            geometry[13],
        )
        n_cond = n_seg - 1
        keys = _window_keys(
            queue,
            h_out,
            w_out,
            c_og,
            n_groups,
            wp,
            origin,
            in_seg,
            in_mask,
            bank_mask,
            n_cond,
        )
        win = np.empty(window, dtype=np.int64)
        state = np.zeros(2, dtype=np.int64)  # entries in the window, next queue entry to insert
        cur = np.empty(pes, dtype=np.int64)
        nxt = np.empty(pes, dtype=np.int64)
        # PREP: read entry 0 and start; form round 0; take it and start round 1.
        form, m_cur = _form_round(state, win, cur, keys, n_cond, window, pes, bank_mask)
        cycles += form + 2
        stalls += form + 2
        m_prev = 0
        while True:
            form, m_next = _form_round(state, win, nxt, keys, n_cond, window, pes, bank_mask)
            last = cycles + max(beats2, 1 + form, m_prev)  # the cycle of the round's last beat
            stalls += last - cycles - beats2
            cycles = last
            busy += m_cur * beats2
            cond_macs += m_cur * lanes2
            for k in range(m_cur):  # member k's result: taken at the write-back, written k + 1 cycles later
                write_cycle[queue[cur[k]]] = last + 3 + k
            m_prev = m_cur
            if m_next == 0:
                break
            cur, nxt = nxt, cur
            m_cur = m_next
        # DRAIN2: the last beat executes and is written back; its results drain one per cycle.
        cycles += m_prev + 2
        stalls += m_prev + 2

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
def _run(x, w, tau, xp, y, gate, write_cycle, counters, queue, p):
    """One tile: functional part, schedule and wrapped counters, for the run ``p`` (:class:`TileParams`).

    ``x`` ``[c_in, h_in, w_in]``, ``w`` ``[c_out, c_in, K, K]`` (int8, else int32) and ``tau`` ``[c_out]``
    (int64) are the operands, ``xp`` the zeroed work buffer of the float type the dot products run in;
    ``y`` and ``gate`` (``[c_out, h_out * w_out]``), ``write_cycle`` (``[c_out * h_out * w_out]``) and
    ``counters`` (:data:`~spec.protocol.COUNTER_NAMES` order) receive the results. (The arrays are passed
    one by one: Numba types a record of arrays far slower than the arrays themselves.) ``queue``: the lin of
    each entry of the host's work queue for a phase-2-only run (``p.mode`` 2, which computes no outputs
    here: :func:`run_tile` does), else empty.

    Returns False (and computes nothing) when a threshold lies outside ``[tau_lo, tau_hi]``. With
    ``p.outputs`` false only what the schedule depends on is computed: the gate bits (base sums) in gated
    mode, nothing in dense mode (every gate is on).
    """
    for co in range(tau.shape[0]):
        if tau[co] < p.tau_lo or tau[co] > p.tau_hi:
            return False
    if p.mode == 2:
        gate[:] = False
    elif p.dense and not p.outputs:
        gate[:] = True
    else:  # (phase 1 only: the base sums, no conditional sums)
        _functional(x, w, tau, xp, y, gate, p, p.outputs and p.mode == 0)
    # C order of (co, position) is lin order.
    geometry = np.array(
        [
            p.h_out,
            p.w_out,
            tau.shape[0] // p.n_groups,
            p.n_groups,
            p.stride,
            p.pad_top,
            p.pad_left,
            p.w_in,
            p.in_seg,
            p.in_mask,
            p.bank_mask,
            x.shape[1],
            p.wp,
            p.origin,
        ],
        dtype=np.int64,
    )
    raw = _schedule(
        gate.reshape(-1),
        queue,
        p.mode,
        write_cycle,
        p.pes,
        p.lanes,
        p.kernel,
        p.n_seg,
        p.base_ch,
        p.cond_ch,
        p.dense,
        geometry,
        p.window,
    )
    # The hardware counters are counter_width bits wide and wrap (the raw counts are never negative).
    mask = np.int64(-1) if p.counter_width >= 63 else (np.int64(1) << p.counter_width) - 1
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
        return np.float32, (1 << 24) // bound // _COL_ALIGN * _COL_ALIGN
    return np.float64, min((1 << 53) // bound, 1 << 40) // _COL_ALIGN * _COL_ALIGN


_PLANS: dict[int, tuple] = {}  # id(config) -> (config, its _Plan)
_CHECKED: dict[tuple, tuple[EngineConfig, Segments]] = {}
_NO_QUEUE = np.empty(0, dtype=np.int64)
_PLAIN = (int,) * 9 + (bool,)  # TileGeometry field types on the fast path (9 ints, then `dense`)
_INT8, _INT16, _INT64 = np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int64)


class _Plan(NamedTuple):
    """Per-configuration constants of :func:`run_tile` (computed once per configuration)."""

    fdt: type
    zero: float
    chunk: int
    tau_lo: int
    tau_hi: int
    act_ok: tuple  # operand dtypes whose every value fits the operand widths: no range check needed
    w_ok: tuple
    kernel: int
    stride: int
    groups: int
    pes: int
    lanes: int
    counter_width: int
    in_mask: int  # input word addresses are taken modulo 2**addr_width(input_depth)
    bank_mask: int  # bank of an address or channel: its low bank_bits bits
    window: int


def _plan(config: EngineConfig) -> _Plan:
    """The :class:`_Plan` of ``config``, remembered."""
    fdt, chunk = _float_plan(config)
    tau_lo, tau_hi = -(1 << (config.acc_width - 1)), (1 << (config.acc_width - 1)) - 1
    act_ok = tuple(dt for dt in (_INT8, _INT16) if dt.itemsize * 8 <= config.act_width)
    w_ok = tuple(dt for dt in (_INT8, _INT16) if dt.itemsize * 8 <= config.weight_width)
    plan = _Plan(
        fdt,
        fdt(0),
        chunk,
        tau_lo,
        tau_hi,
        act_ok,
        w_ok,
        config.kernel,
        config.stride,
        config.groups,
        config.pes,
        config.lanes,
        config.counter_width,
        (1 << max(1, (config.input_depth - 1).bit_length())) - 1,
        (1 << config.bank_bits) - 1,
        config.window,
    )
    if len(_PLANS) >= 256:
        _PLANS.clear()
    # Keyed by the configuration's identity (hashing a dataclass costs more than a tile's bookkeeping); the
    # entry holds the configuration, so its id cannot be reused while the entry exists.
    _PLANS[id(config)] = (config, plan)
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


def _phase2_results(config, tile, queue, lins, y, gate, write_cycle) -> None:
    """Turn a phase-2-only run's arrays into its results: ``gate`` marks the queued activations,
    ``write_cycle`` keeps their cycles (0 elsewhere) and ``y`` (when wanted) their results, each entry's
    ``p`` plus its conditional sum ``r`` wrapped to ``acc_width`` bits (0 elsewhere). ``r`` is the dense
    sum minus the base sum, from two runs of the functional part."""
    flat_gate, flat_cycle = gate.reshape(-1), write_cycle.reshape(-1)
    flat_gate[:] = False
    flat_gate[lins] = True
    flat_cycle[~flat_gate] = 0
    if y is None:
        return
    g = tile.geometry
    base = run_tile(config, tile, run=RunMode.PHASE1).outputs.reshape(-1)
    full = run_tile(config, Tile(replace(g, dense=True), tile.inputs, tile.weights, tile.thresholds))
    r = full.outputs.reshape(-1)[lins] - base[lins]
    half = 1 << (config.acc_width - 1)
    flat = y.reshape(-1)
    flat[:] = 0
    flat[lins] = (np.asarray(queue.psums, dtype=np.int64) + r + half) % (2 * half) - half


def run_tile(
    config: EngineConfig,
    tile: Tile,
    outputs: bool = True,
    run: RunMode = RunMode.FULL,
    queue: QueueLoad | None = None,
) -> EngineResult:
    """Run one tile through the engine model.

    Parameters
    ----------
    config : EngineConfig
        Elaboration parameters of the engine.
    tile : Tile
        Geometry and operands of the run.
    outputs : bool
        Compute the output values. When false only what the schedule depends on is computed (the base
        sums behind the gate bits in gated mode; nothing in dense mode, whose gates are all on): the gates,
        counters and write cycles are those of the full run, ``outputs`` of the result is None. For callers
        that need only cycles and counters (the network report).
    run : RunMode
        The ``run`` register (ignored in dense mode). ``PHASE1``: phase 1 only, the output buffer holds every
        partial sum (``outputs`` the base sums ``p``). ``PHASE2``: phase 2 only, on ``queue``; then
        ``outputs`` holds each queued activation's result (the entry's ``p`` plus its conditional sum, in
        ``acc_width`` bits) at its place, ``gates`` marks the queued activations and ``write_cycle`` the
        cycles of their results (0 elsewhere: the output buffer is not touched).
    queue : QueueLoad
        The work queue the host wrote for a ``PHASE2`` run.

    Returns
    -------
    EngineResult
        Output buffer contents (``y`` and gate bits) and the performance counters.

    Raises
    ------
    spec.config_file.ConfigError
        When the tile does not fit the configuration (``Tile.check``).
    """
    hit = _PLANS.get(id(config))
    plan = hit[1] if hit is not None and hit[0] is config else _plan(config)
    fdt, k, s, act_ok, w_ok = plan.fdt, plan.kernel, plan.stride, plan.act_ok, plan.w_ok
    g = tile.geometry
    mode = RunMode.FULL if g.dense else RunMode(run)
    lins = _NO_QUEUE
    if mode is RunMode.PHASE2:
        if queue is None:
            raise ValueError("run_tile: a PHASE2 run needs the queue the host wrote")
        lins = queue.check(config, g)
    seg = _geometry_segments(config, g)
    x, w, tau = tile.inputs, tile.weights, tile.thresholds
    # Fast path of Tile.check: numpy arrays of the right shapes whose dtypes cannot exceed the operand
    # widths, int64 thresholds (their range is checked in the kernel). Anything else: the full check.
    if not (
        type(x) is np.ndarray
        and type(w) is np.ndarray
        and type(tau) is np.ndarray
        and x.dtype in act_ok
        and w.dtype in w_ok
        and tau.dtype == _INT64
        and x.shape == (g.c_in, g.h_in, g.w_in)
        and w.shape == (g.c_out, g.c_in, k, k)
        and tau.shape == (g.c_out,)
    ):
        seg = tile.check(config)
    # The kernel takes int8 operands as they are, any other integer dtype as int32 (the values fit).
    x = np.ascontiguousarray(x) if x.dtype == _INT8 else np.ascontiguousarray(x, dtype=np.int32)
    w = np.ascontiguousarray(w) if w.dtype == _INT8 else np.ascontiguousarray(w, dtype=np.int32)
    tau = np.ascontiguousarray(tau, dtype=np.int64)

    c_out, h_out, w_out = int(g.c_out), int(g.h_out), int(g.w_out)
    n_pos = h_out * w_out
    # The input plane, deinterleaved by the stride (spec section 3): Hp x Wp words, h_in and w_in rounded up
    # to a multiple of S; the word of output (0, 0)'s tap (0, 0) (row −pad_top, column −pad_left).
    hq, wq = -(-int(g.h_in) // s), -(-int(g.w_in) // s)
    hp, wp = hq * s, wq * s
    pt, pl = int(g.pad_top), int(g.pad_left)
    origin = ((-pt) % s * hq + (-pt) // s) * wp + (-pl) % s * wq + (-pl) // s
    # The padded frame spans exactly the rows/columns the outputs read; input pixels outside it (below or
    # right of the last output's window) are never read.
    dense = bool(g.dense)
    wanted = (outputs or not dense) and mode is not RunMode.PHASE2  # (phase 2 only: _phase2_results)
    n_xp = ((h_out - 1) * s + k) * ((w_out - 1) * s + k) * int(g.c_in) if wanted else 0
    xp = np.zeros(n_xp, dtype=fdt)
    y = np.empty((c_out, h_out, w_out), dtype=np.int64)
    gate = np.empty((c_out, h_out, w_out), dtype=np.bool_)
    write_cycle = np.empty((c_out, h_out, w_out), dtype=np.int64)  # phase 1 writes every entry
    counters = np.empty(len(COUNTER_NAMES), dtype=np.int64)
    params = TileParams(
        zero=plan.zero,
        chunk=plan.chunk,
        tau_lo=plan.tau_lo,
        tau_hi=plan.tau_hi,
        kernel=k,
        stride=s,
        h_out=h_out,
        w_out=w_out,
        pad_top=int(g.pad_top),
        pad_left=int(g.pad_left),
        n_seg=int(seg.n_seg),
        base_ch=int(seg.base_ch),
        cond_ch=int(seg.cond_ch),
        n_groups=1 if (dense or plan.groups == 1) else plan.groups,
        dense=dense,
        pes=plan.pes,
        lanes=plan.lanes,
        counter_width=plan.counter_width,
        outputs=bool(outputs),
        w_in=int(g.w_in),
        in_seg=int(seg.nch_b) * hp * wp,
        wp=wp,
        origin=origin,
        in_mask=plan.in_mask,
        bank_mask=plan.bank_mask,
        window=plan.window,
        mode=mode.value,
    )
    ok = _run(
        x,
        w,
        tau,
        xp,
        y.reshape(c_out, n_pos),
        gate.reshape(c_out, n_pos),
        write_cycle.reshape(-1),
        counters,
        lins,
        params,
    )
    if not ok:  # a threshold out of range: the full check names it
        tile.check(config)
        raise AssertionError("run_tile: the kernel refused thresholds that Tile.check accepts")
    if mode is RunMode.PHASE2:
        _phase2_results(config, tile, queue, lins, y if outputs else None, gate, write_cycle)
    return EngineResult(
        outputs=y if outputs else None,
        gates=gate,
        counters=dict(zip(COUNTER_NAMES, counters.tolist(), strict=True)),
        write_cycle=write_cycle,
    )
