"""What the network runner finds: per design, per layer and per network (sim.network, sim.traffic)."""

from __future__ import annotations

from dataclasses import dataclass, field

from spec.system import SystemConfig

__all__ = ["DESIGNS", "DesignRun", "DesignTraffic", "LayerRun", "NetworkRun"]

DESIGNS = ("dense", "gated", "pruned")


@dataclass
class DesignTraffic:
    """Bytes per operand per image; ``compressed`` the same with zero-compressed activations."""

    bytes: dict[str, float]
    input_rereads: float = 0.0
    compressed: dict[str, float] | None = None

    @property
    def total(self) -> float:
        return float(sum(self.bytes.values()))

    @property
    def total_compressed(self) -> float | None:
        return None if self.compressed is None else float(sum(self.compressed.values()))


@dataclass
class DesignRun:
    """One design's figures for one layer, per image (means over the samples).

    ``counters`` are the engine's performance counters summed over the layer's tiles; ``compute_cycles``
    is their ``cycles`` (engine busy), ``cycles`` adds the transfer time not hidden by double buffering
    (set by the runner once the whole network's tiles are chained, :func:`sim.traffic.chain_cycles`).
    ``traffic`` holds the off-chip bytes per operand. ``buffer`` counts on-chip buffer accesses by kind.
    """

    counters: dict[str, float]
    compute_cycles: float
    cycles: float
    traffic: DesignTraffic
    buffer: dict[str, float]
    per_sample_cycles: list[float] = field(default_factory=list)
    steps: list = field(default_factory=list, repr=False)  # per sample: list of sim.traffic.Step

    @property
    def macs(self) -> float:
        return self.counters["base_macs"] + self.counters["cond_macs"]


@dataclass
class LayerRun:
    """Everything the runner found for one layer of the trace."""

    name: str
    kind: str
    mapped: bool
    gated: bool
    reason: str = ""  # why a layer is not mapped
    shape_in: tuple[int, int, int] = (0, 0, 0)
    shape_out: tuple[int, int, int] = (0, 0, 0)
    kernel: int = 0
    stride: int = 0
    macs_dense: int = 0  # of the layer's true geometry (k²·c_in/groups·c_out·h_out·w_out)
    tiles: int = 0
    blocks: tuple[int, int, int] = (0, 0, 0)  # channel, row and column blocks
    loop_order: str = ""
    designs: dict[str, DesignRun] = field(default_factory=dict)
    gate_on_fraction: float | None = None  # of the engine's integer gates, over samples
    trace_gate_on_fraction: float | None = None  # of the float model's gates (the trace's metadata)
    pruned_channel_fraction: float | None = None  # channels whose conditional path is skipped
    outputs_match: bool | None = None  # engine outputs vs a plain numpy convolution, when checked


@dataclass
class NetworkRun:
    """The runner's result for a whole trace."""

    trace: str
    config: SystemConfig
    samples: int
    layers: list[LayerRun]

    def mapped(self) -> list[LayerRun]:
        return [lr for lr in self.layers if lr.mapped]
