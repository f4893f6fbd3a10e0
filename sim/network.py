"""Whole-network runner: every layer of a trace on the configured accelerator (docs/network.md).

For each engine layer (``conv``, ``fc``) of a trace and each stored sample image, the layer is cut into
tiles (:func:`sim.tiling.plan_layer`) and every tile runs through the engine's cycle model
(:func:`sim.engine.run_tile`, the model co-simulated against the RTL), three ways:

* **dense**: the baseline, the same hardware in dense mode (its cycles do not depend on the data, so it
  runs once per layer, on the first sample);
* **gated**: the channel-gated design (ungated layers run in dense mode in it too);
* **pruned**: the gated design with dynamic output-channel pruning, run as the engine's two-pass protocol
  (:class:`~spec.protocol.RunMode`): every gated tile runs phase 1 alone (``PHASE1``), the host reads its
  gate bits, and a channel whose share of gated-on activations in this image is at or below the threshold
  is pruned: phase 2 (``PHASE2``) runs only the other channels' gated-on activations, so the pruned
  channels' conditional paths are never computed and their conditional-path weights never fetched
  (:func:`two_pass_counters`).

Off-chip transfers (:mod:`sim.traffic`) and the compute/transfer overlap of double-buffered tiles give each
layer's cycles. Layers the engine does not run are listed with ``mapped = False`` and the reason.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from sim.engine import run_tile
from sim.layer_tiles import ChannelBlocks, engine_config_for, layer_operands, plan_for, unmapped_reason
from sim.reference import base_mask, gated_conv
from sim.results import DESIGNS, LayerRun, NetworkRun
from sim.tiling import LayerPlan
from sim.traffic import chain_cycles, layer_traffic
from spec.config import ConfigError, EngineConfig
from spec.protocol import COUNTER_NAMES, RunMode
from spec.system import SystemConfig
from spec.tile import QueueLoad, Tile
from trace_format import Trace, TraceError, TraceLayer, requantize

__all__ = ["DESIGNS", "LayerRun", "NetworkRun", "engine_config_for", "run_network", "two_pass_counters"]

_CYCLES, _GATES_ON = COUNTER_NAMES.index("cycles"), COUNTER_NAMES.index("gates_on")
_STALLS, _IDLE = COUNTER_NAMES.index("stall_cycles"), COUNTER_NAMES.index("idle_pe_cycles")


def two_pass_counters(
    cfg: EngineConfig,
    tile: Tile,
    keep: np.ndarray,
    full: np.ndarray | None = None,
    gates: np.ndarray | None = None,
) -> np.ndarray:
    """The counters of one tile of the pruned design, in :data:`COUNTER_NAMES` order: a ``PHASE1`` run,
    the host's turn, a ``PHASE2`` run on the gated-on activations of the channels ``keep``.

    Each counter is the sum over the two runs, except ``gates_on``: the activations phase 2 ran. ``cycles``
    also counts the host's turn, in which the engine is idle: reading the work queue phase 1 left, whole
    (``UnloadTarget.QUEUE_ENTRY``, one entry per cycle: their channels give each channel's share of
    gated-on activations) and, when a pruned channel had gates on in this tile, writing back the kept
    entries (one per cycle); otherwise phase 2 runs on the queue as phase 1 left it.

    ``full``, ``gates``: the tile's counters and gate bits from a full run, when the caller has them. A
    tile where no pruned channel has a gate on then runs both passes on everything, which takes exactly the
    full run plus a second ``SETUP`` cycle (a stall, P idle PE cycles): no model run is needed.
    """
    if full is not None and gates is not None:
        on_pruned = np.asarray(gates, dtype=bool) & ~np.asarray(keep, dtype=bool)[:, None, None]
        if not on_pruned.any():
            total = np.array(full, dtype=np.int64)
            total[_CYCLES] += 1 + total[_GATES_ON]  # the second SETUP, then the host reads the queue
            total[_STALLS] += 1
            total[_IDLE] += cfg.pes
            return total
    pass1 = run_tile(cfg, tile, outputs=False, run=RunMode.PHASE1)
    on = pass1.gates
    queue = QueueLoad.after_phase1(np.zeros(on.shape, dtype=np.int64), on, keep)
    pass2 = run_tile(cfg, tile, outputs=False, run=RunMode.PHASE2, queue=queue)
    c1 = np.array(list(pass1.counters.values()), dtype=np.int64)
    c2 = np.array(list(pass2.counters.values()), dtype=np.int64)
    total = c1 + c2
    total[_GATES_ON] = c2[_GATES_ON]
    rewrite = len(queue.lins) if len(queue.lins) < c1[_GATES_ON] else 0
    total[_CYCLES] += c1[_GATES_ON] + rewrite
    return total


def _dense_counters(cfg: EngineConfig, plan: LayerPlan, blocks: ChannelBlocks, x: np.ndarray) -> np.ndarray:
    """Counters of every tile in dense mode (``[tiles, counters]``).

    A dense run's schedule depends on the tile's geometry only (every gate is on), so the engine runs once
    per distinct geometry, computing no outputs.
    """
    seen: dict = {}
    rows = []
    for t in plan:
        c = seen.get(t.geometry)
        if c is None:
            dense = dataclasses.replace(t.geometry, dense=True)
            c = seen[t.geometry] = list(
                run_tile(cfg, blocks.tile(t, x, dense), outputs=False).counters.values()
            )
        rows.append(c)
    return np.array(rows, dtype=np.int64)


def _run_sample(
    cfg: EngineConfig,
    plan: LayerPlan,
    blocks: ChannelBlocks,
    x: np.ndarray,
    shape_out,
    outputs: bool,
    dense: bool,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Run every tile of one image: the layer's outputs (when asked for), gates and each tile's counters."""
    out = np.zeros(shape_out, dtype=np.int64) if outputs else None
    gates = np.zeros(shape_out, dtype=bool)
    counters = np.empty((len(plan), len(COUNTER_NAMES)), dtype=np.int64)
    for i, t in enumerate(plan):
        geometry = dataclasses.replace(t.geometry, dense=True) if dense else None
        res = run_tile(cfg, blocks.tile(t, x, geometry), outputs=outputs)
        where = blocks.where(t)
        if outputs:
            out[where] = res.outputs
        gates[where] = res.gates
        counters[i] = list(res.counters.values())
    return out, gates, counters


def _run_layer(layer: TraceLayer, config: SystemConfig, samples: int, check: bool) -> LayerRun:
    meta = layer.meta
    run = LayerRun(
        name=layer.name,
        kind=meta.kind,
        mapped=False,
        gated=meta.gated,
        shape_in=meta.shape_in,
        shape_out=meta.shape_out,
        kernel=meta.kernel if meta.kind != "fc" else 1,
        stride=meta.stride if meta.kind != "fc" else 1,
        trace_gate_on_fraction=meta.gate_on_fraction,
    )
    run.reason = unmapped_reason(layer)
    if run.reason:
        return run
    run.mapped = True
    run.macs_dense = meta.dense_macs
    cfg, base = engine_config_for(config.engine, layer)
    plan = plan_for(layer, cfg, base)
    run.tiles = len(plan)
    run.blocks = (plan.n_chan_blocks, plan.n_row_blocks, plan.n_col_blocks)
    x_all, w, tau = layer_operands(layer)
    x_all = x_all[:samples]
    blocks = ChannelBlocks(plan, w, tau)
    shape_out = meta.shape_out
    n_pix = meta.h_out * meta.w_out
    threshold = config.report.prune_threshold
    # Output values are needed only to check them and to count zero-compressed bytes; cycles and counters
    # depend on the gate bits alone.
    need_outputs = check or config.report.zero_compression

    # Dense baseline: its cycles are data-independent, so the first image stands for all.
    dense_counters = _dense_counters(cfg, plan, blocks, x_all[0])

    counters = {"dense": [dense_counters], "gated": [], "pruned": []}
    pruned_masks = []
    outputs = []
    on_fracs, pruned_fracs = [], []
    for n in range(samples):
        x = x_all[n]
        if meta.gated or need_outputs:
            acc, gates, gated_counters = _run_sample(
                cfg, plan, blocks, x, shape_out, need_outputs, not meta.gated
            )
        else:  # an ungated layer runs in dense mode in the gated design: the baseline's tiles
            acc, gates, gated_counters = None, None, dense_counters
        counters["gated"].append(gated_counters)
        if check:  # against the functional reference (sim/reference.py), independent of the model
            mask = base_mask(w.shape[1], w.shape[0], cfg.groups, base)
            tau_ref = tau if meta.gated else np.zeros(w.shape[0], dtype=np.int64)
            ref, ref_gates, _ = gated_conv(
                x, w, tau_ref, mask, dense=not meta.gated, stride=run.stride, padding=cfg.padding
            )
            ok = np.array_equal(gates, ref_gates) and np.array_equal(acc, ref)
            if not meta.gated:  # the full dense-mode runs also confirm the baseline's data-independence
                ok = ok and np.array_equal(gated_counters, dense_counters)
            run.outputs_match = ok if run.outputs_match is None else (run.outputs_match and ok)
        if need_outputs:
            outputs.append(requantize(acc[None], layer.bias, layer.requant_scale, meta.relu)[0])
        if not meta.gated:
            continue
        share = gates.reshape(meta.c_out, -1).sum(axis=1) / n_pix
        pruned = share <= threshold
        on_fracs.append(float(gates.mean()))
        pruned_fracs.append(float(pruned.mean()))
        pruned_masks.append(pruned)
        pruned_counters = np.empty_like(gated_counters)
        for i, t in enumerate(plan):
            keep = ~pruned[blocks.index[t.chan_block]]
            where = blocks.where(t)
            pruned_counters[i] = two_pass_counters(
                cfg, blocks.tile(t, x), keep, gated_counters[i], gates[where]
            )
        counters["pruned"].append(pruned_counters)

    if meta.gated:
        run.gate_on_fraction = float(np.mean(on_fracs))
        run.pruned_channel_fraction = float(np.mean(pruned_fracs))
    traffic = layer_traffic(
        meta,
        cfg,
        plan,
        counters,
        pruned_masks if meta.gated else None,
        config,
        x_all,
        outputs if need_outputs else None,
    )
    run.loop_order = traffic.loop_order
    run.designs = traffic.designs
    return run


def _chain(results: list[LayerRun], config: SystemConfig) -> None:
    """Set every design's cycles from the whole network's chain of double-buffered tiles, per sample."""
    mapped = [lr for lr in results if lr.mapped]
    for design in DESIGNS:
        runs = [lr.designs[design] for lr in mapped]
        if not runs:
            continue
        n = max(len(r.steps) for r in runs)
        per_sample = [
            chain_cycles([r.steps[min(s, len(r.steps) - 1)] for r in runs], config.dram) for s in range(n)
        ]
        for j, r in enumerate(runs):
            r.per_sample_cycles = [cycles[j] for cycles in per_sample]
            r.cycles = float(np.mean(r.per_sample_cycles))


def run_network(
    trace: Trace,
    config: SystemConfig | None = None,
    samples: int | None = None,
    check: bool = False,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> NetworkRun:
    """Run every layer of ``trace`` (``samples`` images, default all stored) on ``config``.

    ``check`` also compares every engine layer's outputs and gates with a plain numpy convolution
    (slow; for tests). Layers run one after another (memory stays one layer's working set); ``workers``
    threads run layers concurrently when above 1. ``progress`` is called with each finished layer's name.
    """
    config = config or SystemConfig()
    stored = trace.meta.samples
    n = stored if samples is None else samples
    if not 1 <= n <= stored:
        raise ConfigError(f"samples = {n}: the trace stores {stored} (choose 1..{stored})")

    def one(layer: TraceLayer) -> LayerRun:
        result = _run_layer(layer, config, n, check)
        if progress is not None:
            progress(layer.name)
        return result

    layers = list(trace)
    # Refuse a configuration that cannot run some layer before simulating any (tiling is cheap).
    for layer in layers:
        if not unmapped_reason(layer):
            try:
                cfg, base = engine_config_for(config.engine, layer)
            except TraceError as exc:  # a layer outside the engine's limits: the trace's, not the config's
                raise TraceError(f"{trace.path}: {exc}") from None
            plan_for(layer, cfg, base)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, layers))
    else:
        results = [one(layer) for layer in layers]
    _chain(results, config)
    return NetworkRun(trace=trace.name, config=config, samples=n, layers=results)
