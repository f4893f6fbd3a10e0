"""Whole-network runner: every layer of a trace on the configured accelerator (docs/network.md).

For each engine layer (``conv``, ``fc``) of a trace and each stored sample image, the layer is cut into
tiles (:func:`sim.tiling.plan_layer`) and every tile runs through the engine's cycle model
(:func:`sim.engine.run_tile`, the model co-simulated against the RTL), three ways:

* **dense**: the baseline, the same hardware in dense mode (its cycles do not depend on the data, so it
  runs once per layer, on the first sample);
* **gated**: the channel-gated design (ungated layers run in dense mode in it too);
* **pruned**: the gated design with dynamic output-channel pruning: a channel whose share of gated-on
  activations in this image is at or below the threshold has its gates forced off (thresholds set to the
  largest accumulator value), so its conditional path is never computed and its conditional-path weights
  never fetched.

Off-chip transfers (:mod:`sim.traffic`) and the compute/transfer overlap of double-buffered tiles give each
layer's cycles. Layers the engine does not run are listed with ``mapped = False`` and the reason.
Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from accel.config import ConfigError, EngineConfig
from accel.system import SystemConfig
from accel.tile import COUNTER_NAMES, Tile
from sim.engine import run_tile
from sim.results import DESIGNS, LayerRun, NetworkRun
from sim.tiling import LayerPlan, plan_layer
from sim.trace import Trace, TraceLayer, layer_macs, requantize
from sim.traffic import chain_cycles, layer_traffic

__all__ = ["DESIGNS", "LayerRun", "NetworkRun", "engine_config_for", "run_network"]


def engine_config_for(config: EngineConfig, layer: TraceLayer) -> tuple[EngineConfig, int]:
    """The engine configuration a layer runs on, and its ``base_channels`` register.

    P, L, widths and buffer depths are the configuration's; kernel, stride, padding and groups are the
    layer's. A gated layer with base ``"groups"`` runs with groups = G; with ``{"first": C_b}`` with
    groups = 1 and ``base_channels = C_b``. An ungated layer runs in dense mode with groups = 1 and a base
    segment of ``L`` channels (a multiple of L: no extra beats; 1 channel when ``c_in ≤ L``).
    """
    if layer.kind == "fc":
        k, s, p = 1, 1, 0
    else:
        k, s, p = layer.kernel, layer.stride, layer.padding
    if layer.gated:
        groups = layer.gate_groups if layer.base_channels == 0 else 1
        base = layer.base_channels
    else:
        groups = 1
        base = config.lanes if layer.c_in > config.lanes else 1
    try:
        cfg = dataclasses.replace(config, kernel=k, stride=s, padding=p, groups=groups)
    except ConfigError as exc:
        raise ConfigError(f"layer {layer.name!r}: {exc}") from None
    return cfg, base


def _unmapped_reason(layer: TraceLayer) -> str:
    if not layer.is_engine_layer:
        return f"{layer.kind}: not an engine layer (done by the host)"
    if layer.kind == "conv" and layer.groups != 1:
        return f"grouped convolution (groups = {layer.groups}): the engine runs groups = 1 convolutions"
    if layer.c_in < 2:
        return "c_in = 1: the engine needs at least two input channels (a base and a conditional segment)"
    return ""


def _operands(layer: TraceLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs ``[N, c_in, h, w]``, weights ``[c_out, c_in, k, k]`` and thresholds (int64) of a layer."""
    x, w = layer.inputs, layer.weights
    if layer.kind == "fc":
        x = x.reshape(x.shape[0], -1, 1, 1)
        w = w.reshape(w.shape[0], -1, 1, 1)
    tau = layer.thresholds.astype(np.int64) if layer.gated else np.zeros(layer.c_out, dtype=np.int64)
    return x, w, tau


def _tile(plan_tile, x: np.ndarray, w: np.ndarray, tau: np.ndarray, dense: bool) -> Tile:
    ch = list(plan_tile.channels)
    geometry = dataclasses.replace(plan_tile.geometry, dense=dense)
    return Tile(
        geometry=geometry,
        inputs=np.ascontiguousarray(x[:, plan_tile.y0 : plan_tile.y1, plan_tile.x0 : plan_tile.x1]),
        weights=np.ascontiguousarray(w[ch]),
        thresholds=np.ascontiguousarray(tau[ch]),
    )


def _run_sample(
    cfg: EngineConfig, plan: LayerPlan, x: np.ndarray, w: np.ndarray, tau: np.ndarray, dense: bool, shape_out
) -> tuple[np.ndarray, np.ndarray, list[dict[str, int]]]:
    """Run every tile of one sample; return the layer's outputs, gates and each tile's counters."""
    out = np.zeros(shape_out, dtype=np.int64)
    gates = np.zeros(shape_out, dtype=bool)
    counters = []
    for t in plan:
        res = run_tile(cfg, _tile(t, x, w, tau, dense))
        ch = list(t.channels)
        out[ch, t.r0 : t.r1, t.x0_out : t.x1_out] = res.outputs
        gates[ch, t.r0 : t.r1, t.x0_out : t.x1_out] = res.gates
        counters.append(res.counters)
    return out, gates, counters


def _sum_counters(tile_counters: list[dict[str, int]]) -> dict[str, int]:
    return {name: sum(c[name] for c in tile_counters) for name in COUNTER_NAMES}


def _reference_conv(x: np.ndarray, w: np.ndarray, stride: int, padding: int) -> np.ndarray:
    """Plain numpy dense convolution (int64), for the runner's output check."""
    c_in, h, wd = x.shape
    k = w.shape[-1]
    xp = np.pad(x.astype(np.int64), ((0, 0), (padding, padding), (padding, padding)))
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (wd + 2 * padding - k) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride][
        :, :h_out, :w_out
    ]
    return np.einsum("chwij,ocij->ohw", win, w.astype(np.int64), optimize=True)


def _run_layer(layer: TraceLayer, config: SystemConfig, samples: int, check: bool) -> LayerRun:
    run = LayerRun(
        name=layer.name,
        kind=layer.kind,
        mapped=False,
        gated=layer.gated,
        shape_in=layer.shape_in,
        shape_out=layer.shape_out,
        kernel=layer.kernel if layer.kind != "fc" else 1,
        stride=layer.stride if layer.kind != "fc" else 1,
        trace_gate_on_fraction=layer.gate_on_fraction,
    )
    run.reason = _unmapped_reason(layer)
    if run.reason:
        return run
    run.mapped = True
    run.macs_dense = layer_macs(layer.meta)
    cfg, base = engine_config_for(config.engine, layer)
    try:
        plan = plan_layer(
            cfg, layer.c_in, layer.c_out, layer.h, layer.w, layer.h_out, layer.w_out, base, cfg.padding
        )
    except ConfigError as exc:
        raise ConfigError(f"layer {layer.name!r}: {exc}") from None
    run.tiles = len(plan)
    run.blocks = (plan.n_chan_blocks, plan.n_row_blocks, plan.n_col_blocks)
    x_all, w, tau = _operands(layer)
    shape_out = (layer.c_out, layer.h_out, layer.w_out)
    n_pix = layer.h_out * layer.w_out
    never = np.int64((1 << (cfg.acc_width - 1)) - 1)
    threshold = config.report.prune_threshold

    # Dense baseline: the cycles are data-independent, so the first sample stands for all.
    _, _, dense_tiles = _run_sample(cfg, plan, x_all[0], w, tau, True, shape_out)

    per_sample = {"gated": [], "pruned": []}
    outputs = []
    on_fracs, pruned_fracs = [], []
    for n in range(samples):
        x = x_all[n]
        acc, gates, gated_tiles = _run_sample(cfg, plan, x, w, tau, not layer.gated, shape_out)
        per_sample["gated"].append(gated_tiles)
        if check:
            ref = _reference_conv(x, w, run.stride, cfg.padding)
            if layer.gated:
                p = _base_sums(x, w, run.stride, cfg.padding, cfg, base)
                ref = np.where(gates, ref, p)
                ok_gates = np.array_equal(gates, p > tau[:, None, None])
            else:
                ok_gates = bool(gates.all())
            ok = ok_gates and np.array_equal(acc, ref)
            run.outputs_match = ok if run.outputs_match is None else (run.outputs_match and ok)
        outputs.append(requantize(acc[None], layer.bias, layer.requant_scale, layer.relu)[0])
        if layer.gated:
            share = gates.reshape(layer.c_out, -1).sum(axis=1) / n_pix
            pruned = share <= threshold
            on_fracs.append(float(gates.mean()))
            pruned_fracs.append(float(pruned.mean()))
            tau_p = np.where(pruned, never, tau)
            pruned_tiles = []
            for t, counters in zip(plan, gated_tiles, strict=True):
                ch = list(t.channels)
                hit = pruned[ch] & gates[ch, t.r0 : t.r1, t.x0_out : t.x1_out].reshape(len(ch), -1).any(
                    axis=1
                )
                if hit.any():  # a pruned channel had gates on here: rerun with them forced off
                    pruned_tiles.append(run_tile(cfg, _tile(t, x, w, tau_p, False)).counters)
                else:
                    pruned_tiles.append(counters)
            per_sample["pruned"].append((pruned_tiles, pruned))
        else:
            per_sample["pruned"].append((gated_tiles, np.zeros(layer.c_out, dtype=bool)))

    if layer.gated:
        run.gate_on_fraction = float(np.mean(on_fracs))
        run.pruned_channel_fraction = float(np.mean(pruned_fracs))
    traffic = layer_traffic(layer, cfg, plan, x_all[:samples], outputs, per_sample, dense_tiles, config)
    run.loop_order = traffic.loop_order
    run.designs = traffic.designs
    return run


def _base_sums(x, w, stride, padding, cfg: EngineConfig, base: int) -> np.ndarray:
    """Partial sums over each output channel's base segment (plain numpy)."""
    c_out, c_in = w.shape[:2]
    mask = np.zeros((c_out, c_in), dtype=bool)
    if cfg.groups > 1:
        cg, og = c_in // cfg.groups, c_out // cfg.groups
        for g in range(cfg.groups):
            mask[g * og : (g + 1) * og, g * cg : (g + 1) * cg] = True
    else:
        mask[:, :base] = True
    return _reference_conv(x, np.where(mask[:, :, None, None], w, 0), stride, padding)


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
    n = trace.samples if samples is None else samples
    if not 1 <= n <= trace.samples:
        raise ConfigError(f"samples = {n}: the trace stores {trace.samples} (choose 1..{trace.samples})")

    def one(layer: TraceLayer) -> LayerRun:
        result = _run_layer(layer, config, n, check)
        if progress is not None:
            progress(layer.name)
        return result

    layers = list(trace)
    # Refuse a configuration that cannot run some layer before simulating any (tiling is cheap).
    for layer in layers:
        if not _unmapped_reason(layer):
            cfg, base = engine_config_for(config.engine, layer)
            try:
                plan_layer(
                    cfg,
                    layer.c_in,
                    layer.c_out,
                    layer.h,
                    layer.w,
                    layer.h_out,
                    layer.w_out,
                    base,
                    cfg.padding,
                )
            except ConfigError as exc:
                raise ConfigError(f"layer {layer.name!r}: {exc}") from None
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, layers))
    else:
        results = [one(layer) for layer in layers]
    _chain(results, config)
    return NetworkRun(trace=trace.name, config=config, samples=n, layers=results)
