"""Off-chip traffic, on-chip buffer accesses and the double-buffered timing of one layer (docs/network.md).

Operands moved between DRAM and the engine, in bytes per image:

* ``weights``: int8 weights of the tile's output channels over all input channels, K×K taps;
* ``params``: per output channel, the bias and requantization scale (4 bytes each) and, in the gated
  designs, the threshold (``acc_width`` bits);
* ``inputs``: each tile's input rows and columns, halo included, over all input channels;
  ``input_rereads`` is the part beyond one read of the layer's input (halos and re-reads per channel
  block);
* ``outputs``: int8 outputs (requantized on the way out);
* ``psum_spill``: partial sums written out and read back (only the pruned design, see below).

Loop order (dense and gated designs, chosen per layer for the fewest dense bytes): *weights stationary*
walks channel blocks outermost, loading each block's weights once and the inputs once per channel block;
*inputs stationary* walks spatial blocks outermost, loading each input block once and every channel
block's weights once per spatial block.

The pruned design knows a channel's share of gated-on activations only after the base path of all the
channel's outputs. It walks channel blocks outermost in two passes: pass 1 fetches the inputs and the
block's base-path weights, runs phase 1 and counts gates; then only the surviving channels' conditional
weights are fetched and pass 2 runs their conditional path. When a channel block has one spatial block
the partial sums stay in the output buffer and the inputs in the input buffer; otherwise pass 1 spills the
survivors' partial sums (``acc_width`` bits each) and pass 2 re-reads the inputs and the partial sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sim.results import DesignRun, DesignTraffic
from sim.tiling import LayerPlan
from spec.config import EngineConfig
from spec.protocol import CONFIG_REGISTERS, COUNTER_NAMES

__all__ = ["OPERANDS", "LayerTraffic", "Step", "Steps", "chain_cycles", "layer_traffic"]

OPERANDS = ("weights", "params", "inputs", "outputs", "psum_spill")
PARAM_BYTES = 8  # bias (int32) + requantization scale (float32) per output channel
_CYCLES = COUNTER_NAMES.index("cycles")
_GATES_ON = COUNTER_NAMES.index("gates_on")
# Stream words every tile moves besides its operands: the configuration registers in, the counters out.
_REGISTER_WORDS, _COUNTER_WORDS = len(CONFIG_REGISTERS), len(COUNTER_NAMES)


def _stream_words(tab, cs, loaded_w, loaded_in, gated, pes, reread=None):
    """(weight-side, input-side, store) words of the engine's streams per tile: registers, weight words
    and thresholds where the weights are loaded, input words where the inputs are (``reread``: twice);
    out, the rows of P output entries, of P queue results (``gates_on``, gated) and the counters."""
    ww = _REGISTER_WORDS + np.where(loaded_w, tab.weight_words + (tab.n_ch if gated else 0), 0)
    iw = np.where(loaded_in, tab.in_words, 0) * (1 if reread is None else 1 + reread)
    results = -(-cs[:, _GATES_ON] // pes) if gated else 0
    sw = -(-tab.out_size // pes) + results + _COUNTER_WORDS
    return ww.astype(float), iw.astype(float), sw.astype(float)


@dataclass
class LayerTraffic:
    loop_order: str
    designs: dict = field(default_factory=dict)  # design -> sim.results.DesignRun


@dataclass
class Step:
    """One tile's work in the double-buffered pipeline: engine cycles and the transfers around it.

    ``weight_loads`` (weights, parameters) depend on nothing computed and may be prefetched across a layer
    boundary; ``input_loads`` (activations, spilled partial sums) of a layer's first tile wait for the
    previous layer's last stores. Each list holds one entry per transfer (bytes). ``weight_words``,
    ``input_words`` and ``store_words`` are the same transfers in words of the engine's streams, which move
    one word per cycle: the load stream (registers, weights, thresholds; inputs) and the unload stream
    (output entries, queue results, counters).
    """

    compute: float
    weight_loads: list[float]
    input_loads: list[float]
    stores: list[float]
    weight_words: float = 0.0
    input_words: float = 0.0
    store_words: float = 0.0


@dataclass
class Steps:
    """A layer's tiles for one image in pipeline order, as arrays (what the runner builds).

    ``compute`` holds each tile's engine cycles ``[n]``; ``weight_loads``, ``input_loads`` and ``stores``
    the bytes of each of its transfers ``[n, entries]``, 0 where a tile has no such transfer. The meaning
    of the three kinds is :class:`Step`'s.
    """

    compute: np.ndarray
    weight_loads: np.ndarray
    input_loads: np.ndarray
    stores: np.ndarray
    weight_words: np.ndarray | None = None  # [n] stream words (None: 0)
    input_words: np.ndarray | None = None
    store_words: np.ndarray | None = None

    def words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(weight, input, store) stream words per tile, zeros where not given."""
        zero = np.zeros(len(self.compute))
        return tuple(
            zero if a is None else np.asarray(a, dtype=float)
            for a in (self.weight_words, self.input_words, self.store_words)
        )

    def __len__(self) -> int:
        return len(self.compute)

    @classmethod
    def from_steps(cls, steps: list[Step]) -> Steps:
        def table(rows: list[list[float]]) -> np.ndarray:
            out = np.zeros((len(rows), max((len(r) for r in rows), default=0)))
            for i, r in enumerate(rows):
                out[i, : len(r)] = r
            return out

        return cls(
            np.array([s.compute for s in steps], dtype=float),
            table([s.weight_loads for s in steps]),
            table([s.input_loads for s in steps]),
            table([s.stores for s in steps]),
            np.array([s.weight_words for s in steps], dtype=float),
            np.array([s.input_words for s in steps], dtype=float),
            np.array([s.store_words for s in steps], dtype=float),
        )


def _transfer_cycles(nbytes: np.ndarray, dram) -> np.ndarray:
    """Per tile, the DRAM cycles of its transfers (``DramConfig.transfer_cycles`` summed over entries)."""
    return np.where(nbytes > 0, dram.latency_cycles + nbytes / dram.bytes_per_cycle, 0.0).sum(axis=1)


def chain_cycles(layers: list[Steps | list[Step]], dram) -> list[float]:
    """Cycles of a sequence of layers of double-buffered tiles, attributed to each layer.

    While tile ``i`` computes, the DRAM channel carries tile ``i+1``'s loads and tile ``i-1``'s stores,
    the engine's load stream tile ``i+1``'s words and its unload stream tile ``i-1``'s (one word per cycle
    each, the other buffer half: the RTL's double buffering): the stage takes ``max(C_i, load(i+1) +
    store(i-1), words_in(i+1), words_out(i-1))``. At a layer boundary only the next tile's weight loads
    overlap the last tile; its input loads wait until the last tile's outputs are stored, and that exposed
    time is charged to the next layer. A DRAM transfer pays the latency once per entry; a transfer takes
    at least its stream words.
    """
    parts = [s if isinstance(s, Steps) else Steps.from_steps(s) for s in layers]
    counts = [len(p) for p in parts]
    out = np.zeros(len(parts))
    if sum(counts) == 0:
        return out.tolist()
    li = np.repeat(np.arange(len(parts)), counts)  # layer of each tile, in pipeline order
    c = np.concatenate([p.compute for p in parts])
    w = np.concatenate([_transfer_cycles(p.weight_loads, dram) for p in parts])
    ld = np.concatenate([_transfer_cycles(p.input_loads, dram) for p in parts])
    st = np.concatenate([_transfer_cycles(p.stores, dram) for p in parts])
    ww, iw, sw = (np.concatenate(a) for a in zip(*(p.words() for p in parts), strict=True))
    same = li[1:] == li[:-1]  # tile i+1 in tile i's layer
    # Store of the previous tile still to be carried while tile i computes (none after a boundary).
    prev = np.zeros_like(st)
    prev[1:] = np.where(same, st[:-1], 0.0)
    prev_w = np.zeros_like(sw)
    prev_w[1:] = np.where(same, sw[:-1], 0.0)
    stage = np.empty_like(c)
    stage[:-1] = np.maximum.reduce(
        [
            c[:-1],
            w[1:] + np.where(same, ld[1:], 0.0) + prev[:-1],
            ww[1:] + np.where(same, iw[1:], 0.0),
            prev_w[:-1],
        ]
    )
    stage[-1] = max(c[-1], prev[-1], prev_w[-1]) + max(st[-1], sw[-1])
    out += np.bincount(li, weights=stage, minlength=len(parts))
    # At a boundary the next layer waits for the last store, then loads its first inputs.
    b = np.flatnonzero(~same)
    np.add.at(out, li[b + 1], np.maximum(st[b], sw[b]) + np.maximum(ld[b + 1], iw[b + 1]))
    out[li[0]] += max(w[0] + ld[0], ww[0] + iw[0])
    return out.tolist()


def _nbytes(bits: int) -> int:
    return math.ceil(bits / 8)


@dataclass(frozen=True)
class _TileTable:
    """Per-tile sizes of a layer plan, as arrays in plan order."""

    n_ch: np.ndarray  # output channels
    in_size: np.ndarray  # input values read (halo included, all input channels)
    pix: np.ndarray  # output positions
    in_words: np.ndarray  # input buffer words filled
    weight_words: np.ndarray  # weight buffer words filled
    chan_block: np.ndarray
    row_block: np.ndarray
    col_block: np.ndarray

    @property
    def first_of_block(self) -> np.ndarray:
        """First tile of its channel block (row and column block 0)."""
        return (self.row_block == 0) & (self.col_block == 0)

    @property
    def first_of_space(self) -> np.ndarray:
        """First tile of its spatial block (channel block 0)."""
        return self.chan_block == 0

    @property
    def out_size(self) -> np.ndarray:
        return self.n_ch * self.pix

    @classmethod
    def of(cls, plan: LayerPlan, cfg: EngineConfig) -> _TileTable:
        tiles = plan.tiles
        n_chunks = tiles[0].geometry.segments(cfg).n_chunks  # every tile holds all input channels
        g = np.array(
            [
                (
                    len(t.channels),
                    t.geometry.c_in,
                    t.geometry.h_in,
                    t.geometry.w_in,
                    t.geometry.h_out,
                    t.geometry.w_out,
                    t.chan_block,
                    t.row_block,
                    t.col_block,
                )
                for t in tiles
            ],
            dtype=np.int64,
        )
        n_ch, c_in, h_in, w_in, h_out, w_out, cb, rb, xb = g.T
        return cls(
            n_ch=n_ch,
            in_size=c_in * h_in * w_in,
            pix=h_out * w_out,
            in_words=n_chunks * h_in * w_in,
            weight_words=n_ch * n_chunks * cfg.kernel**2,
            chan_block=cb,
            row_block=rb,
            col_block=xb,
        )


def _compressed(size, nonzero, elem_bytes: int):
    """Zero compression: one mask bit per value plus the non-zero values."""
    return size / 8 + nonzero * elem_bytes


def _nonzero_inputs(plan: LayerPlan, x: np.ndarray) -> np.ndarray:
    return np.array([np.count_nonzero(x[:, t.y0 : t.y1, t.x0 : t.x1]) for t in plan.tiles], dtype=float)


def _nonzero_outputs(plan: LayerPlan, y: np.ndarray) -> list[np.ndarray]:
    """Per tile, the non-zero outputs of each of its channels (tile channel order)."""
    return [
        np.count_nonzero(y[list(t.channels), t.r0 : t.r1, t.x0_out : t.x1_out], axis=(1, 2))
        for t in plan.tiles
    ]


def layer_traffic(
    layer,
    cfg: EngineConfig,
    plan: LayerPlan,
    counters: dict[str, list[np.ndarray]],
    pruned: list[np.ndarray] | None,
    config,
    x_samples: np.ndarray | None = None,
    outputs: list[np.ndarray] | None = None,
) -> LayerTraffic:
    """Traffic, buffer accesses and cycles of the three designs for one engine layer.

    ``counters[design]`` holds, per image, the engine counters of every tile (``[tiles, counters]`` in plan
    order; the dense design's one entry stands for every image); ``pruned`` per image the output channels
    whose conditional path is skipped (None: an ungated layer, the pruned design is the gated one). With
    zero compression, ``x_samples`` (the layer's inputs) and ``outputs`` (its int8 outputs per image) give
    the non-zero counts.
    """
    a_b, w_b, acc_b = _nbytes(cfg.act_width), _nbytes(cfg.weight_width), _nbytes(cfg.acc_width)
    k2 = cfg.kernel**2
    c_in = layer.c_in
    gated = layer.gated
    zc = config.report.zero_compression
    tab = _TileTable.of(plan, cfg)
    n_tiles = len(plan)
    unique = float(c_in * layer.h * layer.w * a_b)
    in_b = tab.in_size * float(a_b)
    out_b = tab.out_size * float(a_b)

    # Zero-compressed activation bytes per image (None: not asked for).
    in_c, out_nz = [], []
    if zc:
        for s, y in enumerate(outputs):
            in_c.append(_compressed(tab.in_size, _nonzero_inputs(plan, x_samples[s]), a_b))
            out_nz.append(_nonzero_outputs(plan, y))

    # Loop order: decided on the dense byte count (static, independent of the data).
    wb_all = tab.n_ch * float(c_in * k2 * w_b)
    if plan.n_chan_blocks > 1 and plan.n_row_blocks * plan.n_col_blocks > 1:
        ws = wb_all[tab.first_of_block].sum() + in_b.sum()
        is_ = wb_all.sum() + in_b[tab.first_of_space].sum()
        order = "inputs stationary" if is_ < ws else "weights stationary"
    else:
        order = "weights stationary"
    if order == "weights stationary":
        seq = np.arange(n_tiles)
        fb, fs = tab.first_of_block, np.ones(n_tiles, dtype=bool)
    else:
        # Spatial blocks outermost: plan order is (channel, row, column) block; a stable sort on the
        # spatial block keeps channel blocks in order within it.
        seq = np.lexsort((tab.chan_block, tab.col_block, tab.row_block))
        fb, fs = np.ones(n_tiles, dtype=bool), tab.first_of_space[seq]

    def mean_counters(per_sample: list[np.ndarray]) -> dict[str, float]:
        total = np.sum([c.sum(axis=0) for c in per_sample], axis=0)
        return {name: int(v) / len(per_sample) for name, v in zip(COUNTER_NAMES, total, strict=True)}

    def plain_design(per_sample: list[np.ndarray], with_tau: bool) -> DesignRun:
        """Dense or gated: every tile loads its operands by the loop order; per-image means."""
        n = len(per_sample)
        wb = wb_all[seq]
        pb = tab.n_ch[seq] * float(PARAM_BYTES + (acc_b if with_tau else 0))
        ib, ob = in_b[seq], out_b[seq]
        totals = {
            "weights": wb[fb].sum(),
            "params": pb[fb].sum(),
            "inputs": ib[fs].sum(),
            "outputs": ob.sum(),
            "psum_spill": 0.0,
        }
        weight_loads = np.stack([np.where(fb, wb, 0.0), np.where(fb, pb, 0.0)], axis=1)
        steps, comp_in, comp_out = [], 0.0, 0.0
        for s, cs in enumerate(per_sample):
            il, st = ib, ob
            if zc:
                # The dense design's one entry: the gated design's first image stands in for the outputs'
                # values (the same only for an ungated layer; for a gated one their size is).
                ic = in_c[min(s, len(in_c) - 1)][seq]
                oc = np.array(
                    [
                        _compressed(v.size * p, v.sum(), a_b)
                        for v, p in zip(out_nz[min(s, len(out_nz) - 1)], tab.pix, strict=True)
                    ]
                )[seq]
                comp_in += ic[fs].sum()
                comp_out += oc.sum()
                il, st = ic, oc
            every = np.ones(n_tiles, dtype=bool)
            words = _stream_words(tab, cs, every, every, with_tau, cfg.pes)
            ww, iw, sw = (a[seq] for a in words)
            steps.append(
                Steps(
                    cs[seq, _CYCLES].astype(float),
                    weight_loads,
                    np.where(fs, il, 0.0)[:, None],
                    st[:, None],
                    np.where(fb, ww, _REGISTER_WORDS),
                    np.where(fs, iw, 0.0),
                    sw,
                )
            )
        mean = {op: float(v) for op, v in totals.items()}  # the same bytes for every image
        comp = dict(mean, inputs=float(comp_in) / n, outputs=float(comp_out) / n)
        buf = {
            "input_fill_words": float(tab.in_words[seq][fs].sum()),
            "weight_fill_words": float(tab.weight_words[seq][fb].sum()),
            "output_drain_words": float(tab.out_size.sum()),
        }
        compute = float(np.mean([st_.compute.sum() for st_ in steps]))
        return DesignRun(
            counters=mean_counters(per_sample),
            compute_cycles=compute,
            cycles=compute,
            traffic=DesignTraffic(mean, mean["inputs"] - unique, comp if zc else None),
            buffer=buf,
            steps=steps,
        )

    dense = plain_design(counters["dense"], False)
    gated_run = plain_design(counters["gated"], gated)
    if gated and pruned is not None:
        # Width of every output channel's base segment (its conditional weights are the rest).
        base_width = c_in // cfg.groups if cfg.groups > 1 else layer.base_channels
        pruned_run = _pruned_design(
            layer,
            plan,
            tab,
            counters["pruned"],
            pruned,
            zc,
            in_c,
            out_nz,
            (a_b, w_b, acc_b, k2),
            base_width,
            unique,
            cfg.pes,
        )
    else:
        pruned_run = gated_run
    return LayerTraffic(loop_order=order, designs={"dense": dense, "gated": gated_run, "pruned": pruned_run})


def _pruned_design(
    layer, plan, tab, per_sample, pruned, zc, in_c, out_nz, widths, base_width, unique, pes
) -> DesignRun:
    """Channel blocks outermost, two passes where a block has several spatial blocks (module docstring)."""
    a_b, w_b, acc_b, k2 = widths
    c_in = layer.c_in
    cond_width = c_in - base_width
    n = len(per_sample)
    block_tiles = np.bincount(tab.chan_block)  # tiles per channel block
    fb = tab.first_of_block
    in_b = tab.in_size * float(a_b)
    totals = {op: 0.0 for op in OPERANDS}
    comp = {op: 0.0 for op in OPERANDS}
    buf = {
        "input_fill_words": 0.0,
        "weight_fill_words": 0.0,
        "output_drain_words": 0.0,
        "psum_spill_words": 0.0,
    }
    steps = []
    for s, (cs, pm) in enumerate(zip(per_sample, pruned, strict=True)):
        # Surviving channels of each channel block (positions in the block's tiles).
        keep = [np.flatnonzero(~pm[list(ch)]) for ch in plan.block_channels]
        n_surv = np.array([len(k) for k in keep], dtype=np.int64)[tab.chan_block]
        n_gone = tab.n_ch - n_surv
        two = (block_tiles[tab.chan_block] > 1) & (n_surv > 0)
        spill = np.where(two, n_surv * tab.pix * float(acc_b), 0.0)
        ob_all = tab.out_size * float(a_b)
        ob_gone = np.where(two, n_gone * tab.pix * float(a_b), 0.0)
        ob_surv = np.where(two, n_surv * tab.pix * float(a_b), 0.0)
        wl = np.stack(
            [
                np.where(fb, tab.n_ch * float(base_width * k2 * w_b), 0.0),
                np.where(fb, n_surv * float(cond_width * k2 * w_b), 0.0),
                np.where(fb, tab.n_ch * float(PARAM_BYTES + acc_b), 0.0),
            ],
            axis=1,
        )
        totals["weights"] += wl[:, 0].sum() + wl[:, 1].sum()
        totals["params"] += wl[:, 2].sum()
        totals["inputs"] += (in_b * (1 + two)).sum()
        totals["outputs"] += np.where(two, ob_gone + ob_surv, ob_all).sum()
        totals["psum_spill"] += 2 * spill.sum()
        il = in_b
        st_out = np.stack([np.where(two, ob_gone, ob_all), np.where(two, ob_surv, 0.0)], axis=1)
        if zc:
            nz = out_nz[s]
            il = in_c[s]
            c_all = np.array(
                [_compressed(v.size * p, v.sum(), a_b) for v, p in zip(nz, tab.pix, strict=True)]
            )
            c_surv = np.array(
                [
                    _compressed(len(keep[cb]) * p, v[keep[cb]].sum(), a_b)
                    for v, cb, p in zip(nz, tab.chan_block, tab.pix, strict=True)
                ]
            )
            c_gone = np.where(n_gone > 0, c_all - c_surv, 0.0)
            st_out = np.stack([np.where(two, c_gone, c_all), np.where(two, c_surv, 0.0)], axis=1)
            comp["inputs"] += (il * (1 + two)).sum()
            comp["outputs"] += st_out.sum()
        comp["weights"] += wl[:, 0].sum() + wl[:, 1].sum()
        comp["params"] += wl[:, 2].sum()
        comp["psum_spill"] += 2 * spill.sum()
        ld = np.stack([il, np.where(two, il, 0.0), spill], axis=1)
        st = np.stack([st_out[:, 0], spill, st_out[:, 1]], axis=1)
        ww, iw, sw = _stream_words(tab, cs, fb, np.ones(len(fb), dtype=bool), True, pes, two)
        steps.append(Steps(cs[:, _CYCLES].astype(float), wl, ld, st, ww, iw, sw))
        buf["input_fill_words"] += float((tab.in_words * (1 + two)).sum())
        buf["weight_fill_words"] += float(
            (tab.weight_words * (base_width + n_surv / np.maximum(tab.n_ch, 1) * cond_width) / c_in)[fb].sum()
        )
        buf["output_drain_words"] += float(tab.out_size.sum())
        buf["psum_spill_words"] += float((2 * n_surv * tab.pix)[two].sum())
    mean = {op: float(v) / n for op, v in totals.items()}
    total = np.sum([c.sum(axis=0) for c in per_sample], axis=0)
    compute = float(np.mean([st_.compute.sum() for st_ in steps]))
    return DesignRun(
        counters={name: int(v) / n for name, v in zip(COUNTER_NAMES, total, strict=True)},
        compute_cycles=compute,
        cycles=compute,
        traffic=DesignTraffic(
            mean, mean["inputs"] - unique, {op: float(v) / n for op, v in comp.items()} if zc else None
        ),
        buffer={k_: v / n for k_, v in buf.items()},
        steps=steps,
    )
