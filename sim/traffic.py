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

from accel.config import EngineConfig
from accel.tile import COUNTER_NAMES as cs_names
from sim.results import DesignRun, DesignTraffic
from sim.tiling import LayerPlan

__all__ = ["OPERANDS", "LayerTraffic", "Step", "chain_cycles", "layer_traffic"]

OPERANDS = ("weights", "params", "inputs", "outputs", "psum_spill")
PARAM_BYTES = 8  # bias (int32) + requantization scale (float32) per output channel


@dataclass
class LayerTraffic:
    loop_order: str
    designs: dict = field(default_factory=dict)  # design -> sim.network.DesignRun


@dataclass
class Step:
    """One tile's work in the double-buffered pipeline: engine cycles and the transfers around it.

    ``weight_loads`` (weights, parameters) depend on nothing computed and may be prefetched across a layer
    boundary; ``input_loads`` (activations, spilled partial sums) of a layer's first tile wait for the
    previous layer's last stores. Each list holds one entry per transfer (bytes).
    """

    compute: float
    weight_loads: list[float]
    input_loads: list[float]
    stores: list[float]


def chain_cycles(layers: list[list[Step]], dram) -> list[float]:
    """Cycles of a sequence of layers of double-buffered tiles, attributed to each layer.

    While tile ``i`` computes, the DRAM channel carries tile ``i+1``'s loads and tile ``i-1``'s stores:
    the stage takes ``max(C_i, load(i+1) + store(i-1))``. At a layer boundary only the next tile's weight
    loads overlap the last tile; its input loads wait until the last tile's outputs are stored, and that
    exposed time is charged to the next layer. A transfer pays the latency once per entry.
    """

    def t(parts: list[float]) -> float:
        return sum(dram.transfer_cycles(b) for b in parts)

    flat = [(li, step) for li, steps in enumerate(layers) for step in steps]
    out = [0.0] * len(layers)
    if not flat:
        return out
    first_li, first = flat[0]
    out[first_li] += t(first.weight_loads) + t(first.input_loads)
    prev_store = 0.0  # store of the tile before the current one, still to be carried
    for i, (li, step) in enumerate(flat):
        if i + 1 < len(flat):
            nli, nxt = flat[i + 1]
            if nli == li:
                out[li] += max(step.compute, t(nxt.weight_loads) + t(nxt.input_loads) + prev_store)
                prev_store = t(step.stores)
            else:
                out[li] += max(step.compute, t(nxt.weight_loads) + prev_store)
                out[nli] += t(step.stores) + t(nxt.input_loads)
                prev_store = 0.0
        else:
            out[li] += max(step.compute, prev_store) + t(step.stores)
    return out


def _nbytes(bits: int) -> int:
    return math.ceil(bits / 8)


def _compressed(values: np.ndarray, elem_bytes: int) -> float:
    """Zero compression: one mask bit per value plus the non-zero values."""
    return values.size / 8 + np.count_nonzero(values) * elem_bytes


def layer_traffic(
    layer, cfg: EngineConfig, plan: LayerPlan, x_samples, outputs, per_sample, dense_tiles, config
):
    """Traffic, buffer accesses and cycles of the three designs for one engine layer."""
    a_b, w_b, acc_b = _nbytes(cfg.act_width), _nbytes(cfg.weight_width), _nbytes(cfg.acc_width)
    k2 = cfg.kernel**2
    c_in = layer.c_in
    gated = layer.gated
    zc = config.report.zero_compression
    tiles = list(plan)
    # Width of every output channel's base segment (its conditional weights are the rest).
    base_width = c_in // cfg.groups if cfg.groups > 1 else (layer.base_channels if gated else c_in)
    if not gated:
        base_width = c_in

    def in_bytes(t, x) -> tuple[float, float]:
        sl = x[:, t.y0 : t.y1, t.x0 : t.x1]
        return float(sl.size * a_b), _compressed(sl, a_b)

    def out_bytes(t, y, ch=None) -> tuple[float, float]:
        chs = list(t.channels) if ch is None else ch
        sl = y[chs, t.r0 : t.r1, t.x0_out : t.x1_out]
        return float(sl.size * a_b), _compressed(sl, a_b)

    def weight_bytes(n_ch: int, width: int = c_in) -> float:
        return float(n_ch * width * k2 * w_b)

    def param_bytes(n_ch: int, with_tau: bool) -> float:
        return float(n_ch * (PARAM_BYTES + (acc_b if with_tau else 0)))

    def words(t):
        seg = t.geometry.segments(cfg)
        return seg.n_chunks * t.geometry.h_in * t.geometry.w_in, t.geometry.c_out * seg.n_chunks * k2

    # Loop order: decided on the dense byte count (static, independent of the data).
    spatial_order = sorted(
        range(len(tiles)), key=lambda i: (tiles[i].row_block, tiles[i].col_block, tiles[i].chan_block)
    )
    if plan.n_chan_blocks > 1 and plan.n_row_blocks * plan.n_col_blocks > 1:
        ws = sum(weight_bytes(len(t.channels)) for t in tiles if t.row_block == 0 and t.col_block == 0)
        ws += sum(in_bytes(t, x_samples[0])[0] for t in tiles)
        is_ = sum(weight_bytes(len(t.channels)) for t in tiles)
        is_ += sum(in_bytes(t, x_samples[0])[0] for t in tiles if t.chan_block == 0)
        order = "inputs stationary" if is_ < ws else "weights stationary"
    else:
        order = "weights stationary"

    def plain_design(tile_counters_per_sample, with_tau: bool, out_per_sample) -> DesignRun:
        """Dense or gated: every tile loads its operands by the loop order; return per-image means."""
        totals = {op: 0.0 for op in OPERANDS}
        comp = {op: 0.0 for op in OPERANDS}
        all_steps, compute = [], []
        buf = {"input_fill_words": 0.0, "weight_fill_words": 0.0, "output_drain_words": 0.0}
        for s, counters in enumerate(tile_counters_per_sample):
            x = x_samples[min(s, len(x_samples) - 1)]
            y = out_per_sample[min(s, len(out_per_sample) - 1)]
            seq = range(len(tiles)) if order == "weights stationary" else spatial_order
            steps = []
            for i in seq:
                t = tiles[i]
                first_of_block = (
                    (t.row_block == 0 and t.col_block == 0) if order == "weights stationary" else True
                )
                first_of_space = t.chan_block == 0 if order == "inputs stationary" else True
                ld, wl = [], []
                iw, ww = words(t)
                if first_of_space:
                    b, bc = in_bytes(t, x)
                    totals["inputs"] += b
                    comp["inputs"] += bc
                    ld.append(bc if zc else b)
                    buf["input_fill_words"] += iw
                if first_of_block:
                    wb = weight_bytes(len(t.channels))
                    pb = param_bytes(len(t.channels), with_tau)
                    totals["weights"] += wb
                    comp["weights"] += wb
                    totals["params"] += pb
                    comp["params"] += pb
                    wl += [wb, pb]
                    buf["weight_fill_words"] += ww
                ob, obc = out_bytes(t, y)
                totals["outputs"] += ob
                comp["outputs"] += obc
                buf["output_drain_words"] += t.geometry.n_outputs
                steps.append(Step(float(counters[i]["cycles"]), wl, ld, [obc if zc else ob]))
            all_steps.append(steps)
            compute.append(sum(st.compute for st in steps))
        n = len(tile_counters_per_sample)
        unique = float(c_in * layer.h * layer.w * a_b)
        mean = {op: v / n for op, v in totals.items()}
        rereads = mean["inputs"] - unique
        summed = {
            name: sum(sum(c[name] for c in cs) for cs in tile_counters_per_sample) / n for name in cs_names
        }
        buf = {k_: v / n for k_, v in buf.items()}
        return DesignRun(
            counters=summed,
            compute_cycles=float(np.mean(compute)),
            cycles=float(np.mean(compute)),
            traffic=DesignTraffic(mean, rereads, {op: v / n for op, v in comp.items()} if zc else None),
            buffer=buf,
            steps=all_steps,
        )

    # Dense outputs of the first sample stand in for the dense design's output bytes (same values only when
    # the layer is ungated; for a gated layer the dense network's outputs differ, their size does not).
    dense = plain_design([dense_tiles], False, outputs)
    gated_counters = per_sample["gated"]
    gated_run = plain_design(gated_counters, gated, outputs)
    if gated:
        pruned_run = _pruned_design(
            layer,
            cfg,
            plan,
            x_samples,
            outputs,
            per_sample["pruned"],
            config,
            in_bytes,
            out_bytes,
            weight_bytes,
            param_bytes,
            words,
            base_width,
            acc_b,
            cs_names,
        )
    else:
        pruned_run = gated_run
    return LayerTraffic(loop_order=order, designs={"dense": dense, "gated": gated_run, "pruned": pruned_run})


def _pruned_design(
    layer,
    cfg,
    plan,
    x_samples,
    outputs,
    pruned_per_sample,
    config,
    in_bytes,
    out_bytes,
    weight_bytes,
    param_bytes,
    words,
    base_width,
    acc_b,
    cs_names,
):
    zc = config.report.zero_compression
    tiles = list(plan)
    n = len(pruned_per_sample)
    totals = {op: 0.0 for op in OPERANDS}
    comp = {op: 0.0 for op in OPERANDS}
    buf = {
        "input_fill_words": 0.0,
        "weight_fill_words": 0.0,
        "output_drain_words": 0.0,
        "psum_spill_words": 0.0,
    }
    all_steps, compute = [], []
    cond_width = layer.c_in - base_width

    def add(op, b, bc=None):
        totals[op] += b
        comp[op] += b if bc is None else bc
        return bc if (zc and bc is not None) else b

    for s, (counters, pruned) in enumerate(pruned_per_sample):
        x, y = x_samples[s], outputs[s]
        steps = []
        for cb in range(plan.n_chan_blocks):
            block = [i for i, t in enumerate(tiles) if t.chan_block == cb]
            ch = list(tiles[block[0]].channels)
            surv = [c for c in ch if not pruned[c]]
            gone = [c for c in ch if pruned[c]]
            two_pass = len(block) > 1 and bool(surv)
            for j, i in enumerate(block):
                t = tiles[i]
                iw, ww = words(t)
                pix = t.geometry.h_out * t.geometry.w_out
                ld, st, wl = [], [], []
                b, bc = in_bytes(t, x)
                ld.append(add("inputs", b, bc))
                buf["input_fill_words"] += iw
                if j == 0:
                    wl.append(add("weights", weight_bytes(len(ch), base_width)))
                    wl.append(add("weights", weight_bytes(len(surv), cond_width)))
                    wl.append(add("params", param_bytes(len(ch), True)))
                    buf["weight_fill_words"] += (
                        ww * (base_width + len(surv) / max(len(ch), 1) * cond_width) / layer.c_in
                    )
                if two_pass:
                    # Pass 1 writes the pruned channels' outputs and spills the survivors' partial sums;
                    # pass 2 re-reads inputs and partial sums and writes the survivors' outputs.
                    ob, obc = out_bytes(t, y, gone) if gone else (0.0, 0.0)
                    st.append(add("outputs", ob, obc))
                    spill = float(len(surv) * pix * acc_b)
                    st.append(add("psum_spill", spill))
                    ld.append(add("inputs", b, bc))
                    ld.append(add("psum_spill", spill))
                    buf["input_fill_words"] += iw
                    buf["psum_spill_words"] += 2 * len(surv) * pix
                    ob, obc = out_bytes(t, y, surv)
                    st.append(add("outputs", ob, obc))
                else:
                    ob, obc = out_bytes(t, y)
                    st.append(add("outputs", ob, obc))
                buf["output_drain_words"] += t.geometry.n_outputs
                steps.append(Step(float(counters[i]["cycles"]), wl, ld, st))
        all_steps.append(steps)
        compute.append(sum(st_.compute for st_ in steps))
    mean = {op: v / n for op, v in totals.items()}
    unique = float(layer.c_in * layer.h * layer.w * _nbytes(cfg.act_width))
    summed = {name: sum(sum(c[name] for c in cs) for cs, _ in pruned_per_sample) / n for name in cs_names}
    return DesignRun(
        counters=summed,
        compute_cycles=float(np.mean(compute)),
        cycles=float(np.mean(compute)),
        traffic=DesignTraffic(
            mean, mean["inputs"] - unique, {op: v / n for op, v in comp.items()} if zc else None
        ),
        buffer={k_: v / n for k_, v in buf.items()},
        steps=all_steps,
    )
