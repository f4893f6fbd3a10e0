"""A trace's engine layers cut into the engine's tiles, exactly as the network runner runs them.

:func:`engine_config_for` picks the configuration a layer runs on within the build, :func:`cut_layer`
plans its tiles (:func:`sim.tiling.plan_layer`) and cuts its operands once per channel block
(:class:`LayerTiles`). ``sim.network`` runs these tiles through the cycle model; ``accel cosim``
(:mod:`verification.trace_cosim`) runs the same tiles through the Verilog.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from sim.tiling import LayerPlan, TilePlan, plan_layer
from spec.config import ConfigError, EngineConfig
from spec.tile import Tile, TileGeometry
from trace_format import TraceError, TraceLayer, engine_geometry_problem

__all__ = ["LayerTiles", "cut_layer", "engine_config_for", "layer_operands", "unmapped_reason"]


def engine_config_for(config: EngineConfig, layer: TraceLayer) -> tuple[EngineConfig, int]:
    """The engine configuration a layer runs on, and its ``base_channels`` register.

    ``config`` is the build: one engine runs every layer, the layer's kernel, stride, padding and groups
    going into its run-time registers (at most the build's, :meth:`EngineConfig.for_layer`); P, L, widths
    and buffer depths are the build's. A gated layer with base ``"groups"`` runs with groups = G; with
    ``{"first": C_b}`` with groups = 1 and ``base_channels = C_b``. An ungated layer runs in dense mode
    with groups = 1 and a base segment of ``L`` channels (a multiple of L: no extra beats; 1 channel when
    ``c_in ≤ L``).

    A layer outside the engine's fixed limits (kernel 1..11, ...:
    :func:`trace_format.engine_geometry_problem`;
    a loaded trace never has one) raises :class:`TraceError` naming the layer and its metadata field.
    """
    meta = layer.meta
    problem = engine_geometry_problem(meta)
    if problem is not None:
        raise TraceError(f"layer {layer.name!r}: metadata field {problem}")
    if meta.kind == "fc":
        k, s, p = 1, 1, 0
    else:
        k, s, p = meta.kernel, meta.stride, meta.padding
    if meta.gated:
        groups = meta.gate_groups if meta.base_channels == 0 else 1
        base = meta.base_channels
    else:
        groups = 1
        base = config.lanes if meta.c_in > config.lanes else 1
    try:
        cfg = config.for_layer(kernel=k, stride=s, padding=p, groups=groups)  # within the build's maxima
    except ConfigError as exc:
        raise ConfigError(f"layer {layer.name!r}: {exc}") from None
    return cfg, base


def unmapped_reason(layer: TraceLayer) -> str:
    """Why the engine does not run ``layer`` (the host does), or "" for an engine layer."""
    meta = layer.meta
    if not meta.is_engine_layer:
        return f"{meta.kind}: not an engine layer (done by the host)"
    if meta.kind == "conv" and meta.groups != 1:
        return f"grouped convolution (groups = {meta.groups}): the engine runs groups = 1 convolutions"
    if meta.c_in < 2:
        return "c_in = 1: the engine needs at least two input channels (a base and a conditional segment)"
    return ""


def layer_operands(layer: TraceLayer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs ``[N, c_in, h, w]``, weights ``[c_out, c_in, k, k]`` and thresholds (int64) of a layer."""
    x, w, meta = layer.inputs, layer.weights, layer.meta
    if meta.kind == "fc":
        x = x.reshape(x.shape[0], -1, 1, 1)
        w = w.reshape(w.shape[0], -1, 1, 1)
    tau = layer.thresholds.astype(np.int64) if meta.gated else np.zeros(meta.c_out, dtype=np.int64)
    return x, w, tau


def plan_for(layer: TraceLayer, cfg: EngineConfig, base: int) -> LayerPlan:
    """The layer's tiles on ``cfg`` (a :class:`ConfigError` names the layer)."""
    try:
        m = layer.meta
        return plan_layer(cfg, m.c_in, m.c_out, m.h, m.w, m.h_out, m.w_out, base, cfg.padding)
    except ConfigError as exc:
        raise ConfigError(f"layer {layer.name!r}: {exc}") from None


class ChannelBlocks:
    """A layer's operands cut once per channel block (every tile of a block, every image, shares them)."""

    def __init__(self, plan: LayerPlan, w: np.ndarray, tau: np.ndarray):
        self.index: list[np.ndarray | slice] = []  # the block's layer channels: a slice where contiguous
        self.weights: list[np.ndarray] = []
        self.thresholds: list[np.ndarray] = []
        for channels in plan.block_channels:
            ch = np.array(channels)
            contiguous = bool(np.all(np.diff(ch) == 1))
            self.index.append(slice(int(ch[0]), int(ch[-1]) + 1) if contiguous else ch)
            self.weights.append(np.ascontiguousarray(w[ch]))
            self.thresholds.append(np.ascontiguousarray(tau[ch]))

    def tile(
        self,
        t: TilePlan,
        x: np.ndarray,
        geometry: TileGeometry | None = None,
        thresholds: np.ndarray | None = None,
    ) -> Tile:
        cb = t.chan_block
        return Tile(
            geometry=t.geometry if geometry is None else geometry,
            inputs=x[:, t.y0 : t.y1, t.x0 : t.x1],
            weights=self.weights[cb],
            thresholds=self.thresholds[cb] if thresholds is None else thresholds[self.index[cb]],
        )

    def where(self, t: TilePlan) -> tuple:
        """The tile's outputs in the layer's ``[c_out, h_out, w_out]``."""
        return (self.index[t.chan_block], slice(t.r0, t.r1), slice(t.x0_out, t.x1_out))


@dataclass
class LayerTiles:
    """An engine layer cut as the runner cuts it: its configuration, base segment, plan and operands."""

    layer: TraceLayer
    config: EngineConfig  # the layer's (within the build's maxima)
    base: int
    plan: LayerPlan
    inputs: np.ndarray  # [N, c_in, h, w]
    blocks: ChannelBlocks

    @property
    def gated(self) -> bool:
        return bool(self.layer.meta.gated)

    def tile(self, index: int, sample: int = 0, dense: bool = False) -> Tile:
        """Tile ``index`` of image ``sample``; ``dense``: in dense mode (the baseline's run; an ungated
        layer's tiles are dense either way)."""
        t = self.plan.tiles[index]
        geometry = dataclasses.replace(t.geometry, dense=True) if dense or not self.gated else None
        return self.blocks.tile(t, self.inputs[sample], geometry)

    def where(self, index: int) -> tuple:
        """Tile ``index``'s outputs in the layer's ``[c_out, h_out, w_out]``."""
        return self.blocks.where(self.plan.tiles[index])


def cut_layer(layer: TraceLayer, build: EngineConfig) -> LayerTiles:
    """The tiles of engine layer ``layer`` on the build ``build`` (:func:`unmapped_reason` must be "")."""
    why = unmapped_reason(layer)
    if why:
        raise ConfigError(f"layer {layer.name!r}: {why}")
    cfg, base = engine_config_for(build, layer)
    plan = plan_for(layer, cfg, base)
    x, w, tau = layer_operands(layer)
    return LayerTiles(layer, cfg, base, plan, x, ChannelBlocks(plan, w, tau))
