"""Host-side packing of the engine's streams (docs/microarchitecture.md, sections 3 and 4).

This module is for the host side only (testbenches, a host driver): the RTL and the cycle model do not
import it, so that a packing bug here cannot hide the same bug on the other side of a comparison. The
selector codes, register addresses and field offsets come from :mod:`spec.protocol`, the one definition
the gateware builds its ports from; the packing itself is written here.

* :func:`load_writes` turns a :class:`~spec.tile.Tile` into every ``(sel, addr, data)`` write of the
  load stream: configuration registers, input words, weight words and thresholds (section 3's address map).
* :func:`pack_payload` / :func:`pack_request` flatten one load write / unload request into the integer
  that the Verilog ports ``load__payload`` / ``req__payload`` carry (``sel`` in the low bits, then
  ``addr``, then ``data``).
* :func:`decode_output` splits an output-buffer entry into the signed ``y`` and the gate bit.

Everything is vectorized with numpy; data words wider than 64 bits (``lanes·width > 64``) are held in
object arrays of Python integers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from spec.config import EngineConfig
from spec.protocol import (
    LoadTarget,
    RunMode,
    UnloadTarget,
    load_layout,
    output_layout,
    queue_layout,
    read_layout,
)
from spec.tile import QueueLoad, Segments, Tile, TileGeometry

__all__ = [
    "LoadWrites",
    "banked_address",
    "banked_index",
    "chunk_channels",
    "decode_counter",
    "decode_output",
    "load_writes",
    "pack_lanes",
    "pack_payload",
    "pack_payloads",
    "pack_request",
    "queue_entries",
    "queue_write_outputs",
    "queue_writes",
    "unpack_payload",
]


def _code(target: LoadTarget | UnloadTarget | int) -> int:
    """A selector as the integer on the wire (typed targets or their plain codes)."""
    return target.value if isinstance(target, LoadTarget | UnloadTarget) else int(target)


@functools.cache
def _offsets(config: EngineConfig) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Bit offsets of the load payload's fields (sel, addr, data, end), of the request's (sel, addr, end),
    and of the output entry's gate bit -- all taken from :mod:`spec.protocol`'s layouts."""
    load, req = load_layout(config), read_layout(config)
    return (
        (*(field.offset for _, field in load), load.size),
        (*(field.offset for _, field in req), req.size),
        output_layout(config)["gate"].offset,
    )


@dataclass(frozen=True)
class LoadWrites:
    """The writes that load one tile, in load order (registers, inputs, weights, thresholds).

    ``sel`` and ``addr`` are int64 arrays; ``data`` is uint64 when ``config.data_width <= 64`` and an
    object array of Python ints otherwise. Iterating yields ``(sel, addr, data)`` tuples of Python ints,
    so the object also serves where a ``list[tuple[int, int, int]]`` is expected.
    """

    sel: np.ndarray
    addr: np.ndarray
    data: np.ndarray

    def __len__(self) -> int:
        return len(self.sel)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        return zip(self.sel.tolist(), self.addr.tolist(), [int(d) for d in self.data], strict=True)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return int(self.sel[index]), int(self.addr[index]), int(self.data[index])

    def tolist(self) -> list[tuple[int, int, int]]:
        return list(self)


def chunk_channels(seg: Segments, lanes: int) -> np.ndarray:
    """Input channel held by lane ``l`` of global chunk ``q``, shape ``(n_chunks, lanes)``; -1 = zero lane.

    Global chunk ``q = s·nch_b + c`` (``nch_c`` chunks per conditional segment); lane ``l`` is channel
    ``start(s) + c·L + l`` when ``c·L + l`` is below the segment's channel count.
    """
    rows = []
    for s in range(seg.n_seg):
        n_chunks = seg.nch_b if s == 0 else seg.nch_c
        width = seg.channels(s)
        offset = np.arange(n_chunks)[:, None] * lanes + np.arange(lanes)[None, :]
        rows.append(np.where(offset < width, seg.start(s) + offset, -1))
    return np.concatenate(rows, axis=0).astype(np.int64)


def _twos(values: np.ndarray, width: int) -> np.ndarray:
    """Two's complement of signed ``values`` in ``width`` (<= 64) bits, as uint64."""
    v = np.asarray(values, dtype=np.int64).view(np.uint64)
    if width >= 64:
        return v.copy()
    return v & np.uint64((1 << width) - 1)


def pack_lanes(lanes: np.ndarray, width: int) -> np.ndarray:
    """Pack signed lane values ``[..., L]`` into words, lane ``l`` at bits ``[l·width, (l+1)·width)``.

    Returns uint64 words when ``L·width <= 64``, else an object array of Python ints.
    """
    lanes = np.asarray(lanes)
    n_lanes = lanes.shape[-1]
    u = _twos(lanes, width)
    per_limb = max(1, 64 // width)  # lanes that fit into one 64-bit limb
    limbs = []
    for first in range(0, n_lanes, per_limb):
        part = u[..., first : first + per_limb]
        shifts = np.arange(part.shape[-1], dtype=np.uint64) * np.uint64(width)
        limbs.append(np.bitwise_or.reduce(part << shifts, axis=-1))
    if n_lanes * width <= 64:
        return np.asarray(limbs[0], dtype=np.uint64)
    words = np.zeros(lanes.shape[:-1], dtype=object)
    for i, limb in enumerate(limbs):
        shift = i * per_limb * width
        words = words + (limb.astype(object) << shift)
    return words


def load_writes(
    config: EngineConfig,
    tile: Tile,
    run: RunMode = RunMode.FULL,
    queue_len: int = 0,
    keep: np.ndarray | None = None,
    half: int = 0,
) -> LoadWrites:
    """Every ``(sel, addr, data)`` write that loads ``tile`` for a run of mode ``run`` (spec section 3's
    address map).

    Order: configuration registers 0..27 (sel 0), input words (sel 1, ascending address), weight words
    (sel 2, ascending address), thresholds (sel 3, ``co`` ascending at the banked address of entry ``co``,
    two's complement in ``acc_width`` bits). Two-pass runs load what each pass reads (docs/network.md):
    ``PHASE1`` every weight word of each channel's base segment only; ``PHASE2`` only the registers (with
    ``queue_len``) and the conditional-segment weight words of the channels ``keep`` (bool ``[c_out]``,
    default all): the inputs and thresholds are those of the phase-1 run, the queue entries are written
    apart (:func:`queue_writes`). ``half``: the buffer half the tile goes into (the ``half`` register and
    the top address bit of every buffer write, ``config.half_bit``).
    """
    run = RunMode(run)
    seg = tile.check(config)
    g = tile.geometry
    lanes = config.lanes
    chan = chunk_channels(seg, lanes)  # (n_chunks, L)
    valid = chan >= 0
    idx = np.where(valid, chan, 0)

    # Input buffer: a plane of Hp x Wp words per chunk, deinterleaved by the stride S: input (y, x) of chunk
    # q at q·Hp·Wp + y'·Wp + x', y' = (y mod S)·Hp/S + y div S, x' likewise; lane l = channel chan[q, l].
    x = np.asarray(tile.inputs, dtype=np.int64)
    xin = x[idx]  # (n_chunks, L, H, W)
    xin = np.where(valid[:, :, None, None], xin, 0)
    in_words = pack_lanes(xin.transpose(0, 2, 3, 1).reshape(-1, lanes), config.act_width)
    stride = config.stride
    hp, wp = g.plane(config)
    rows = (np.arange(g.h_in) % stride) * (hp // stride) + np.arange(g.h_in) // stride
    cols = (np.arange(g.w_in) % stride) * (wp // stride) + np.arange(g.w_in) // stride
    in_addr = (
        np.arange(seg.n_chunks)[:, None, None] * hp * wp + rows[None, :, None] * wp + cols[None, None, :]
    ).reshape(-1)
    order = np.argsort(in_addr, kind="stable")  # in address order
    in_words, in_addr = in_words[order], in_addr[order].astype(np.int64)

    # Weight buffer, channel-minor: chunk c of segment s at s·w_seg + ((c·K + ky)·K + kx)·c_out + co, lane l
    # = W[co, chan[q, l], ky, kx] for global chunk q (w_seg: a segment's words rounded up to the banks).
    w = np.asarray(tile.weights, dtype=np.int64)
    win = w[:, idx]  # (C_out, n_chunks, L, K, K)
    win = np.where(valid[None, :, :, None, None], win, 0)
    w_words = pack_lanes(win.transpose(1, 3, 4, 0, 2).reshape(-1, lanes), config.weight_width)
    k, c_out = config.kernel, g.c_out
    q = np.arange(seg.n_chunks, dtype=np.int64)
    later = np.maximum(q - seg.nch_b, 0)
    s = np.where(q < seg.nch_b, 0, 1 + later // max(seg.nch_c, 1))
    c = np.where(q < seg.nch_b, q, later % max(seg.nch_c, 1))
    beat = (c[:, None] * k * k + np.arange(k * k, dtype=np.int64)[None, :]) * c_out  # (n_chunks, K²)
    w_addr = (
        s[:, None, None] * g.weight_segment(config) + beat[:, :, None] + np.arange(c_out, dtype=np.int64)
    ).reshape(-1)
    if run is not RunMode.FULL and not g.dense:
        # A channel's base segment: its group's (G > 1), else segment 0.
        own = np.arange(c_out) // seg.out_per_group if config.groups > 1 else np.zeros(c_out, dtype=np.int64)
        base = np.broadcast_to(s[:, None, None] == own[None, None, :], (len(s), k * k, c_out)).reshape(-1)
        if run is RunMode.PHASE1:
            wanted = base
        else:
            chans = np.ones(c_out, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
            wanted = ~base & np.broadcast_to(chans[None, None, :], (len(s), k * k, c_out)).reshape(-1)
        w_words, w_addr = w_words[wanted], w_addr[wanted]

    regs = np.asarray(g.registers(config, run, queue_len, half), dtype=np.int64)
    thr = _twos(np.asarray(tile.thresholds, dtype=np.int64), config.acc_width)

    wide = config.data_width > 64
    dtype = object if wide else np.uint64
    if run is RunMode.PHASE2 and not g.dense:
        in_words, in_addr, thr = in_words[:0], in_addr[:0], thr[:0]
    parts = [
        (LoadTarget.CONFIG.value, regs.astype(np.uint64)),
        (LoadTarget.INPUT.value, in_words),
        (LoadTarget.WEIGHT.value, w_words),
        (LoadTarget.THRESHOLD.value, thr),
    ]
    sel = np.concatenate([np.full(len(d), s, dtype=np.int64) for s, d in parts])
    # Threshold co goes to its banked address (bank co mod P, row co div P); the rest in address order.
    thr_addr = banked_address(config, np.arange(len(thr), dtype=np.int64))
    top = np.int64(int(half) << config.half_bit)
    buffers = np.concatenate([in_addr, w_addr, thr_addr]).astype(np.int64) | top
    addr = np.concatenate([np.arange(len(regs), dtype=np.int64), buffers])
    # uint64 -> object converts to Python ints, which the wide words already are.
    data = np.concatenate([np.asarray(d).astype(dtype) for _, d in parts])
    return LoadWrites(sel=sel, addr=addr, data=data)


def _pack_struct(layout, values: dict) -> np.ndarray:
    """Pack arrays of field values (nested dicts for nested layouts) at ``layout``'s offsets, as object
    arrays of Python ints (negative values in two's complement at the field's width)."""
    word = None
    for name, field in layout:
        value = values[name]
        if isinstance(value, dict):
            bits = _pack_struct(field.shape, value)
        else:
            width = field.width
            bits = (np.asarray(value, dtype=np.int64) & ((1 << width) - 1)).astype(object)
        shifted = bits << field.offset if field.offset else bits
        word = shifted if word is None else word | shifted
    return word


def queue_entries(
    build: EngineConfig, layer: EngineConfig, geometry: TileGeometry, queue: QueueLoad
) -> np.ndarray:
    """The work-queue entries (:func:`spec.protocol.queue_layout` of the build) of ``queue`` for a tile of
    ``geometry`` in a layer configured ``layer``, as Python ints: each activation's channel, gate group,
    input word of tap (0, 0) (``in_origin + oy·Wp + ox`` modulo the input address width), tap box (the
    taps inside the tile, up to the build's largest kernel) and partial sum."""
    lins = queue.check(build, geometry)
    regs = geometry.register_values(layer)
    hw = geometry.h_out * geometry.w_out
    co, pos = lins // hw, lins % hw
    oy, ox = pos // geometry.w_out, pos % geometry.w_out
    wp = geometry.plane(layer)[1]
    boxes = {}
    for axis, o, pad, extent in (
        ("y", oy, geometry.pad_top, geometry.h_in),
        ("x", ox, geometry.pad_left, geometry.w_in),
    ):
        t = o * layer.stride - pad  # the input row (column) of tap (0, 0)
        boxes[f"{axis}_lo"] = np.maximum(-t, 0)
        boxes[f"{axis}_end"] = np.minimum(np.maximum(extent - t, 0), build.kernel)
    act = {
        "co": co,
        "g": co // regs["c_og"] if layer.groups > 1 else np.zeros_like(co),
        "ia": regs["in_origin"] + oy * wp + ox,  # (the field's width takes it modulo 2^width)
        "box": boxes,
    }
    return _pack_struct(queue_layout(build), {"act": act, "p": np.asarray(queue.psums, dtype=np.int64)})


def queue_writes(
    build: EngineConfig, layer: EngineConfig, geometry: TileGeometry, queue: QueueLoad, half: int = 0
) -> LoadWrites:
    """The load-stream writes of ``queue`` (:func:`queue_entries`): entry ``n`` at its banked address in
    half ``half``."""
    data = queue_entries(build, layer, geometry, queue)
    n = len(data)
    wide = build.data_width > 64
    return LoadWrites(
        sel=np.full(n, LoadTarget.QUEUE.value, dtype=np.int64),
        addr=banked_address(build, np.arange(n, dtype=np.int64)) | (int(half) << build.half_bit),
        data=np.asarray(data, dtype=object) if wide else np.asarray(list(data), dtype=np.uint64),
    )


def _check_field(name: str, value: int, bits: int) -> int:
    value = int(value)
    if not 0 <= value < (1 << bits):
        raise ValueError(f"payload field {name!r} = {value}: does not fit in {bits} unsigned bits")
    return value


def pack_payload(config: EngineConfig, sel: LoadTarget | int, addr: int, data: int) -> int:
    """``load__payload`` of one write, at :func:`spec.protocol.load_layout`'s offsets (``sel``, ``addr``,
    ``data`` from bit 0 up)."""
    (_, addr_at, data_at, end), _, _ = _offsets(config)
    sel = _check_field("sel", _code(sel), addr_at)
    addr = _check_field("addr", addr, data_at - addr_at)
    data = _check_field("data", data, end - data_at)
    return sel | (addr << addr_at) | (data << data_at)


def pack_payloads(config: EngineConfig, writes: LoadWrites) -> list[int]:
    """:func:`pack_payload` of every write, as Python ints (vectorized)."""
    (_, addr_at, data_at, _), _, _ = _offsets(config)
    if len(writes) == 0:
        return []
    if int(writes.sel.max()) >= 1 << addr_at or int(writes.addr.max()) >= 1 << (data_at - addr_at):
        bad = int(np.argmax((writes.sel >= 1 << addr_at) | (writes.addr >= 1 << (data_at - addr_at))))
        pack_payload(config, *writes[bad])  # raises with the offending field
    head = writes.sel.astype(object) | (writes.addr.astype(object) << addr_at)
    data = writes.data.astype(object)
    return (head | (data << data_at)).tolist()


def unpack_payload(config: EngineConfig, payload: int) -> tuple[int, int, int]:
    """Inverse of :func:`pack_payload`."""
    (_, addr_at, data_at, end), _, _ = _offsets(config)
    payload = int(payload)
    return (
        payload & ((1 << addr_at) - 1),
        (payload >> addr_at) & ((1 << (data_at - addr_at)) - 1),
        (payload >> data_at) & ((1 << (end - data_at)) - 1),
    )


def pack_request(config: EngineConfig, sel: UnloadTarget | int, addr: int) -> int:
    """``req__payload`` of one unload request (:func:`spec.protocol.read_layout`: ``sel``, then ``addr``)."""
    _, (_, addr_at, end), _ = _offsets(config)
    sel = _check_field("sel", _code(sel), addr_at)
    addr = _check_field("addr", addr, end - addr_at)
    return sel | (addr << addr_at)


def banked_address(config: EngineConfig, index):
    """The address of entry ``index`` of a banked buffer (output, work queue, thresholds):
    ``row << bank_bits | bank`` with ``bank = index mod P``, ``row = index div P`` (docs/
    microarchitecture.md, sections 3 and 4); ``index`` an integer or an integer array."""
    return ((index // config.pes) << config.bank_bits) | (index % config.pes)


def banked_index(config: EngineConfig, addr: int) -> int:
    """The entry index of banked address ``addr`` (the inverse of :func:`banked_address`)."""
    return (int(addr) >> config.bank_bits) * config.pes + (int(addr) & ((1 << config.bank_bits) - 1))


def queue_write_outputs(
    config: EngineConfig, gates: np.ndarray, queue_writes: dict[int, int]
) -> dict[int, int]:
    """Phase-2 result writes the trace port showed at banked work-queue addresses (``wb_queue``), by the
    output entry (``lin``) whose result each is: queue entry ``n`` holds the ``n``-th gated-on activation in
    ``lin`` order (docs/microarchitecture.md, section 4), read off the run's gate bits ``gates``. An entry
    past the gated-on ones maps to ``gates.size + n`` (beyond every output of the tile)."""
    on = np.flatnonzero(np.asarray(gates, dtype=bool).reshape(-1))
    out = {}
    for addr, cycle in queue_writes.items():
        n = banked_index(config, addr)
        out[int(on[n]) if n < len(on) else int(np.size(gates)) + n] = cycle
    return out


def decode_output(config: EngineConfig, word: int) -> tuple[int, int]:
    """Split an output-buffer entry (:func:`spec.protocol.output_layout`) into ``(y, gate)``: the signed
    ``y`` below the gate bit, then the gate."""
    _, _, a = _offsets(config)
    word = int(word)
    y = word & ((1 << a) - 1)
    if y >> (a - 1):
        y -= 1 << a
    return y, (word >> a) & 1


def decode_counter(config: EngineConfig, word: int) -> int:
    """A performance counter's value (unsigned, ``counter_width`` bits)."""
    return int(word) & ((1 << config.counter_width) - 1)
