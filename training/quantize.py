"""int8 post-training quantization of a trained network, and an integer simulation of it.

The network's layer graph is read with **forward hooks** (:func:`record_graph`): every convolution,
linear layer, residual :class:`~training.gating.Add`, pooling, flatten and stand-alone ReLU becomes a layer,
in forward order; a BatchNorm directly after a convolution and a ReLU after that are folded into the
convolution (``relu: true``). What each layer's inputs are is read from the tensors themselves.

Quantization (:func:`quantize_network`):

* weights: per output channel, symmetric, ``s_w[c] = max|W[c]| / 127``, ``W_int = round(W / s_w)``;
* activations: per tensor, symmetric, zero point 0: ``s = percentile(|a|, 99.99) / 127`` over calibration
  images from the training split (``mode="max"`` takes the maximum), for the network input and every
  engine layer's output (a layer whose only consumer is a ReLU layer is calibrated on the ReLU's output).
  ReLU, flatten and pooling keep their input's scale, and a residual add's inputs and output share one
  scale (the trace format's integer semantics: the add is a plain int8 sum), so the layers joined through
  adds — the stem and every block output of a stage, with the convolutions feeding those adds — share one
  scale, calibrated on the largest of them;
* BN (and a bias) folded into the engine layer's ``bias`` (int32, accumulator units) and
  ``requant_scale``: with ``a_c = γ/√(σ²+ε)``, ``b_c = β − a_c·μ`` the real output is
  ``a_c·s_x·s_w[c]·(acc + b_c/(a_c·s_x·s_w[c]))``, so ``requant_scale[c] = a_c·s_x·s_w[c]/s_out`` and
  ``bias[c] = round(b_c/(a_c·s_x·s_w[c]))``. A channel with ``a_c ≤ 0`` or a bias outside int32 (only BN
  scales at or near 0, which training projects to ≥ 0) gets the smallest positive ``requant_scale`` that
  keeps ``bias`` within ±2^30 (its output is then nearly the constant ``b_c``); the integer simulation
  measures what that costs;
* the gate: ``BN_g(p) > Δ ⇔ p_real > μ + Δ·√(σ²+ε) ⇔ p_int > v = (μ + Δ·√(σ²+ε)) / (s_x·s_w[c])``; for an
  integer ``p_int`` that is ``p_int > ⌊v⌋`` whether or not ``v`` is an integer, so ``τ_c = ⌊v⌋``
  (:func:`fold_gate_threshold`, clipped to int32).

Integer semantics of the simulation (:class:`IntNetwork`), per layer kind:

* conv / fc: exact integer ``acc`` (``p + [p > τ]·r`` for a gated conv, ``p`` the base-path and ``r`` the
  conditional-path sum), ``out = clamp(rint((acc + bias)·requant_scale), −128, 127)`` after ReLU if
  ``relu`` (rint: half to even, the product in float64, as
  ``trace_format.requantize``), then the channel
  shuffle if ``shuffle``. The prediction is the argmax of the fc layer's real logits
  ``(acc + bias)·s_x·s_w``;
* add: ``clamp(Σ_i a_i, −128, 127)`` (inputs and output share one scale), then ReLU if ``relu``;
  relu: ``max(a, 0)``; avgpool: ``rint(sum / count)`` (half to even, padding counted as zeros); maxpool
  (padding never wins), flatten: unchanged values. This is docs/trace-format.md's "Integer semantics".

**Dynamic output-channel pruning** (the rebuttal's rule, ``channel_threshold`` θ): in a gated layer, per
image and output channel, when the fraction of the channel's activations whose gate is on is ``≤ θ`` the
channel's conditional path is skipped entirely (all its gates off: ``acc = p``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from training.gating import Add, GatedConv2d, shuffle_permutation

__all__ = [
    "GraphNode",
    "IntNetwork",
    "QLayer",
    "fold_gate_threshold",
    "quantize_network",
    "quantize_weights",
    "record_graph",
]

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
BIAS_LIMIT = 1 << 30
EXACT_FLOAT32 = 1 << 24


# ------------------------------------------------------------------------------------------------------
# The graph, read with forward hooks


@dataclass
class GraphNode:
    name: str
    kind: str  # conv, fc, add, relu, avgpool, maxpool, flatten
    module: nn.Module
    inputs: list[str]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...] = ()
    bn: nn.BatchNorm2d | None = None
    relu: bool = False


class _Recorder:
    """Forward hooks that build the list of :class:`GraphNode` and keep every layer's final output."""

    FOLDABLE = ("conv", "fc")

    def __init__(self, model: nn.Module):
        self.model = model
        self.nodes: dict[str, GraphNode] = {}
        self.order: list[str] = []
        self.producer: dict[int, tuple[str, str]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.keep: list[torch.Tensor] = []
        self.handles = []
        gate_bns = {id(m.bn_gate) for m in model.modules() if isinstance(m, GatedConv2d) and m.gated}
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d) and id(m) in gate_bns:
                continue
            if isinstance(
                m,
                GatedConv2d
                | nn.Conv2d
                | nn.Linear
                | nn.BatchNorm2d
                | nn.ReLU
                | Add
                | nn.AdaptiveAvgPool2d
                | nn.AvgPool2d
                | nn.MaxPool2d
                | nn.Flatten,
            ):
                self.handles.append(m.register_forward_hook(self._hook(name)))

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def start(self, x: torch.Tensor) -> None:
        self.nodes.clear()
        self.order.clear()
        self.producer.clear()
        self.outputs.clear()
        self.keep = [x]
        self.producer[id(x)] = ("input", "final")
        self.outputs["input"] = x

    def _source(self, t: torch.Tensor, who: str) -> tuple[str, str]:
        if id(t) not in self.producer:
            raise ValueError(f"layer {who!r}: its input comes from an operation the exporter does not see")
        return self.producer[id(t)]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.keep.append(output)
            tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
            if isinstance(module, nn.BatchNorm2d | nn.ReLU):
                src, stage = self._source(tensors[0], name)
                node = self.nodes.get(src)
                fold = (
                    node is not None
                    and node.kind in self.FOLDABLE
                    and self.outputs[src] is tensors[0]
                    and not node.relu
                    and (isinstance(module, nn.ReLU) or (stage == "raw" and node.bn is None))
                )
                if fold:
                    if isinstance(module, nn.BatchNorm2d):
                        node.bn = module
                        self._set(src, output, "bn")
                    else:
                        node.relu = True
                        self._set(src, output, "relu")
                    return
                if isinstance(module, nn.BatchNorm2d):
                    raise ValueError(f"layer {name!r}: a BatchNorm that does not follow a convolution")
                self._add(name, "relu", module, [src], tensors[0], output)
                return
            srcs = [self._source(t, name)[0] for t in tensors]
            if isinstance(module, GatedConv2d | nn.Conv2d):
                kind = "conv"
            elif isinstance(module, nn.Linear):
                kind = "fc"
            elif isinstance(module, Add):
                kind = "add"
            elif isinstance(module, nn.AdaptiveAvgPool2d | nn.AvgPool2d):
                kind = "avgpool"
            elif isinstance(module, nn.MaxPool2d):
                kind = "maxpool"
            else:
                kind = "flatten"
            self._add(name, kind, module, srcs, tensors[0], output)

        return hook

    def _add(self, name, kind, module, srcs, x, output) -> None:
        if name in self.nodes:
            raise ValueError(f"module {name!r} runs twice in one forward pass; give each use its own module")
        self.nodes[name] = GraphNode(name, kind, module, srcs, tuple(x.shape[1:]))
        self.order.append(name)
        self._set(name, output, "raw")

    def _set(self, name: str, output: torch.Tensor, stage: str) -> None:
        self.producer[id(output)] = (name, stage)
        self.outputs[name] = output
        self.nodes[name].out_shape = tuple(output.shape[1:])


def record_graph(model: nn.Module, x: torch.Tensor) -> list[GraphNode]:
    """The layers of ``model`` in forward order for input ``x`` (module docstring)."""
    rec = _Recorder(model)
    try:
        rec.start(x)
        with torch.no_grad():
            model(x)
    finally:
        rec.close()
    return [rec.nodes[n] for n in rec.order]


# ------------------------------------------------------------------------------------------------------
# Folding


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8: ``(W_int int8, s_w float32 [c_out])``, ``s_w > 0``."""
    w = np.asarray(w, dtype=np.float64)
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(flat > 0, flat / 127.0, 1.0).astype(np.float32)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(np.rint(w / scale.astype(np.float64).reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def fold_gate_threshold(
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    delta: np.ndarray,
    input_scale: float,
    weight_scale: np.ndarray,
) -> np.ndarray:
    """Integer thresholds ``τ_c = ⌊(μ_c + Δ_c·√(σ²_c+ε)) / (s_x·s_w[c])⌋`` (int64, clipped to int32).

    For every integer ``p``: ``p > τ_c ⇔ p·s_x·s_w[c] > μ_c + Δ_c·√(σ²_c+ε) ⇔ BN_g(p_real) > Δ_c``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    sigma = np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    step = float(input_scale) * np.asarray(weight_scale, dtype=np.float32).astype(np.float64)
    v = (mean + np.asarray(delta, dtype=np.float64) * sigma) / step
    v = np.clip(v, INT32_MIN, INT32_MAX)
    return np.floor(v).astype(np.int64)


def _fold_affine(a: np.ndarray, b: np.ndarray, s_x: float, s_w: np.ndarray, s_out: float):
    """``bias`` (int32) and ``requant_scale`` (float32) for real output ``a·(s_x·s_w·acc) + b``."""
    unit = float(s_x) * s_w.astype(np.float64)  # real value of one accumulator step
    ideal = a * unit / s_out  # requant scale
    offset = b / s_out  # output offset in int8 units
    floor = np.maximum(np.abs(offset) / BIAS_LIMIT, 1e-30)
    degenerate = ~(ideal > floor)
    requant = np.where(degenerate, floor, ideal)
    bias = np.rint(offset / requant)
    bias = np.clip(bias, -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)
    return bias, requant.astype(np.float32), int(degenerate.sum())


# ------------------------------------------------------------------------------------------------------
# The quantized network


@dataclass
class QLayer:
    """One layer of the quantized network (engine layers carry the integer operands)."""

    name: str
    kind: str
    inputs: list[str]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    output_scale: float
    relu: bool = False
    # engine layers
    weights: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    input_scale: float | None = None
    bias: np.ndarray | None = None
    requant_scale: np.ndarray | None = None
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    gated: bool = False
    gate_groups: int = 1
    base_channels: int = 0  # G = 1: C_b
    base_mask: np.ndarray | None = None  # [c_out, c_in] bool
    thresholds: np.ndarray | None = None
    shuffle: bool = False
    degenerate_channels: int = 0
    module: nn.Module | None = None
    extra: dict = field(default_factory=dict)

    @property
    def is_engine(self) -> bool:
        return self.kind in ("conv", "fc")

    def dense_macs(self) -> int:
        if self.kind == "fc":
            return int(self.weights.shape[0] * self.weights.shape[1])
        if self.kind != "conv":
            return 0
        c_out, c_in, k, _ = self.weights.shape
        return int(k * k * c_in * c_out * self.out_shape[1] * self.out_shape[2])

    def base_fraction(self) -> float:
        if not self.gated:
            return 1.0
        return float(self.base_mask.sum()) / self.base_mask.size


def _scale_of(values: list[float]) -> float:
    v = float(np.mean(values)) if values else 0.0
    return v / 127.0 if v > 0 else 1.0 / 127.0


def quantize_network(
    model: nn.Module,
    calibration: torch.Tensor,
    percentile: float = 99.99,
    mode: str = "percentile",
    batch_size: int = 64,
) -> IntNetwork:
    """int8 post-training quantization of ``model`` (module docstring), calibrated on ``calibration``.

    ``calibration`` holds float input images ``[N, C, H, W]`` (training images).
    """
    if mode not in ("percentile", "max"):
        raise ValueError(f"calibration mode {mode!r}: expected 'percentile' or 'max'")
    if mode == "percentile" and not 0.0 < percentile <= 100.0:  # also refuses NaN
        raise ValueError(f"percentile = {percentile}: expected a number in (0, 100]")
    if calibration.shape[0] == 0:
        raise ValueError("no calibration images")
    model.eval()
    rec = _Recorder(model)
    stats: dict[str, list[float]] = {}
    nodes: list[GraphNode] = []
    try:
        for i in range(0, calibration.shape[0], batch_size):
            x = calibration[i : i + batch_size]
            rec.start(x)
            with torch.no_grad():
                model(x)
            if not nodes:
                nodes = [rec.nodes[n] for n in rec.order]
            for name, out in rec.outputs.items():
                a = out.detach().abs().flatten().double().numpy()
                value = float(a.max()) if mode == "max" else float(np.percentile(a, percentile))
                stats.setdefault(name, []).append(value)
    finally:
        rec.close()

    consumers: dict[str, list[GraphNode]] = {}
    for node in nodes:
        for src in node.inputs:
            consumers.setdefault(src, []).append(node)

    # Scale groups: a residual add takes int8 inputs that share one scale and keeps it (the trace format's
    # integer semantics), and ReLU, flatten and pooling keep their input's scale; so the output scale is
    # shared by every layer joined through them (union-find), calibrated on the largest member.
    parent: dict[str, str] = {"input": "input"}

    def find(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in nodes:
        parent[node.name] = node.name
        if node.kind in ("add", "relu", "flatten", "maxpool", "avgpool"):
            for src in node.inputs:
                parent[find(src)] = find(node.name)
    level: dict[str, float] = {}
    for name in ["input"] + [n.name for n in nodes]:
        node = next((n for n in nodes if n.name == name), None)
        if node is not None and node.kind in ("relu", "flatten", "maxpool", "avgpool"):
            continue  # same values as (or bounded by) their input
        users = consumers.get(name, [])
        key = users[0].name if len(users) == 1 and users[0].kind == "relu" else name
        value = _scale_of(stats[key])
        root = find(name)
        level[root] = max(level.get(root, 0.0), value)
    scales: dict[str, float] = {name: level[find(name)] for name in parent}

    layers: list[QLayer] = []
    for node in nodes:
        s_out = scales[node.name]
        q = QLayer(
            name=node.name,
            kind=node.kind,
            inputs=list(node.inputs),
            in_shape=node.in_shape,
            out_shape=node.out_shape,
            output_scale=float(np.float32(s_out)),
            relu=node.relu,
            module=node.module,
        )
        if node.kind in ("conv", "fc"):
            _quantize_engine_layer(q, node, float(np.float32(scales[node.inputs[0]])))
        elif node.kind in ("avgpool", "maxpool"):
            m = node.module
            if isinstance(m, nn.AdaptiveAvgPool2d):
                if node.out_shape[1:] != (1, 1) or node.in_shape[1] != node.in_shape[2]:
                    raise ValueError(
                        f"layer {node.name!r}: only global adaptive average pooling is supported"
                    )
                q.kernel, q.stride, q.padding = node.in_shape[1], node.in_shape[1], 0
            else:
                k, s, p = m.kernel_size, m.stride, m.padding
                q.kernel = k if isinstance(k, int) else k[0]
                q.stride = s if isinstance(s, int) else s[0]
                q.padding = p if isinstance(p, int) else p[0]
        layers.append(q)
    return IntNetwork(layers, float(np.float32(scales["input"])))


def _quantize_engine_layer(q: QLayer, node: GraphNode, s_x: float) -> None:
    m = node.module
    w = m.weight.detach().double().numpy()
    q.weights, q.weight_scale = quantize_weights(w)
    q.input_scale = s_x
    c_out = w.shape[0]
    bias = getattr(m, "bias", None)
    b0 = bias.detach().double().numpy() if isinstance(bias, torch.Tensor) else np.zeros(c_out)
    a, b = np.ones(c_out), b0.copy()
    if node.kind == "conv":
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.dilation != (1, 1)):
            raise ValueError(f"layer {node.name!r}: grouped or dilated convolutions are not supported")
        k = w.shape[2]
        q.kernel = k
        q.stride = m.stride if isinstance(m.stride, int) else m.stride[0]
        q.padding = m.padding if isinstance(m.padding, int) else m.padding[0]
        perm = list(range(c_out))
        if isinstance(m, GatedConv2d) and m.gated:
            q.gated = True
            q.gate_groups = m.gate_groups
            q.base_channels = m.base_channels if m.gate_groups == 1 else 0
            q.base_mask = m.base_mask.detach().cpu().numpy().astype(bool)
            q.shuffle = m.shuffle
            if m.shuffle:
                perm = shuffle_permutation(c_out, m.gate_groups)
            bn_g = m.bn_gate
            q.thresholds = fold_gate_threshold(
                bn_g.running_mean.detach().double().numpy(),
                bn_g.running_var.detach().double().numpy(),
                bn_g.eps,
                m.threshold.detach().double().numpy(),
                s_x,
                q.weight_scale,
            )
        if node.bn is not None:
            bn = node.bn
            inv = np.empty(c_out, dtype=np.int64)
            inv[np.asarray(perm)] = np.arange(c_out)  # engine channel c sits at BN position inv[c]
            gamma = bn.weight.detach().double().numpy()[inv]
            beta = bn.bias.detach().double().numpy()[inv]
            mu = bn.running_mean.detach().double().numpy()[inv]
            sig = np.sqrt(bn.running_var.detach().double().numpy()[inv] + bn.eps)
            a = gamma / sig
            b = beta - a * mu + a * b0
    q.bias, q.requant_scale, q.degenerate_channels = _fold_affine(a, b, s_x, q.weight_scale, q.output_scale)
    q.extra["affine_a"] = a
    q.extra["affine_b"] = b


# ------------------------------------------------------------------------------------------------------
# Integer simulation


@dataclass
class IntResult:
    logits: torch.Tensor  # real logits [N, classes]
    inputs: dict[str, torch.Tensor]  # recorded int8 inputs of engine layers
    gates: dict[str, torch.Tensor]  # int gates [N, c_out, h_out, w_out] (after channel pruning)
    macs: float  # executed MACs summed over the batch
    gated_on: dict[str, tuple[int, int]]  # per gated layer: (gates on, total)
    skipped: tuple[int, int]  # (channel-image pairs skipped, total) over gated layers


class IntNetwork:
    """Runs a quantized network (a list of :class:`QLayer`) with the integer semantics of the module."""

    def __init__(self, layers: list[QLayer], input_scale: float):
        self.layers = layers
        self.input_scale = float(np.float32(input_scale))
        self.by_name = {q.name: q for q in layers}
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        for q in layers:
            if q.is_engine:
                self._cache[q.name] = self._prepare(q)

    def _prepare(self, q: QLayer) -> dict[str, torch.Tensor]:
        c_in = q.weights.shape[1]
        bound = c_in * (q.weights.shape[2] * q.weights.shape[3] if q.kind == "conv" else 1) * 128 * 128
        dtype = torch.float32 if bound < EXACT_FLOAT32 else torch.float64
        w = torch.from_numpy(q.weights.astype(np.float64)).to(dtype)
        out = {
            "w": w,
            "bias": torch.from_numpy(q.bias.astype(np.float64)),
            "requant": torch.from_numpy(q.requant_scale.astype(np.float64)),
            "unit": torch.from_numpy(q.weight_scale.astype(np.float64)) * float(np.float32(q.input_scale)),
        }
        if q.gated:
            base = torch.from_numpy(q.base_mask.astype(np.float64)).to(dtype)[:, :, None, None]
            out["w_base"] = w * base
            out["w_cond"] = w * (1 - base)
            out["tau"] = torch.from_numpy(q.thresholds.astype(np.float64))
            out["cond_per_act"] = torch.tensor(
                float((~q.base_mask).sum(axis=1).mean() * q.weights.shape[2] * q.weights.shape[3])
            )
        out["dtype"] = dtype
        return out

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(x.double() / self.input_scale), -128, 127)

    def run(
        self,
        x: torch.Tensor,
        channel_threshold: float | None = None,
        record_inputs: bool = False,
        record_gates: bool = False,
    ) -> IntResult:
        """Simulate a batch of float images ``x``; values are held as float64 tensors of integers."""
        acts: dict[str, torch.Tensor] = {"input": self.quantize_input(x)}
        scales: dict[str, float] = {"input": self.input_scale}
        inputs, gates, gated_on = {}, {}, {}
        macs = 0.0
        skipped = [0, 0]
        logits = None
        for q in self.layers:
            a = acts[q.inputs[0]]
            if q.kind in ("conv", "fc"):
                if record_inputs:
                    inputs[q.name] = a.to(torch.int8)
                c = self._cache[q.name]
                dt = c["dtype"]
                if q.kind == "fc":
                    acc = (a.to(dt) @ c["w"].T).double()
                    macs += q.dense_macs() * a.shape[0]
                elif not q.gated:
                    acc = torch.nn.functional.conv2d(a.to(dt), c["w"], None, q.stride, q.padding).double()
                    macs += q.dense_macs() * a.shape[0]
                else:
                    xa = a.to(dt)
                    p = torch.nn.functional.conv2d(xa, c["w_base"], None, q.stride, q.padding).double()
                    r = torch.nn.functional.conv2d(xa, c["w_cond"], None, q.stride, q.padding).double()
                    on = p > c["tau"].view(1, -1, 1, 1)
                    if channel_threshold is not None:
                        share = on.double().mean(dim=(2, 3))
                        skip = share <= channel_threshold
                        skipped[0] += int(skip.sum())
                        skipped[1] += skip.numel()
                        on = on & ~skip[:, :, None, None]
                    acc = p + on.double() * r
                    if record_gates:
                        gates[q.name] = on
                    n_on = int(on.sum())
                    gated_on[q.name] = (n_on, on.numel())
                    macs += q.dense_macs() * q.base_fraction() * a.shape[0] + n_on * float(c["cond_per_act"])
                shape = [1, -1] + [1] * (acc.ndim - 2)
                y = torch.round((acc + c["bias"].view(shape)) * c["requant"].view(shape))
                if q.relu:
                    y = torch.clamp(y, min=0)
                y = torch.clamp(y, -128, 127)
                if q.shuffle:
                    n, ch, h, w = y.shape
                    g = q.gate_groups
                    y = y.view(n, g, ch // g, h, w).transpose(1, 2).reshape(n, ch, h, w)
                if q.kind == "fc":
                    logits = (acc + c["bias"].view(1, -1)) * c["unit"].view(1, -1)
            elif q.kind == "add":
                if any(scales[s] != q.output_scale for s in q.inputs):
                    raise ValueError(f"layer {q.name!r}: the inputs of an add must share its scale")
                y = torch.clamp(sum(acts[s] for s in q.inputs), -128, 127)
                if q.relu:
                    y = torch.clamp(y, min=0)
            elif q.kind == "relu":
                y = torch.clamp(a, min=0)
            elif q.kind == "avgpool":
                pooled = torch.nn.functional.avg_pool2d(
                    a, q.kernel, q.stride, q.padding, count_include_pad=True
                )
                y = torch.round(pooled)  # rint(sum / count), half to even; the scale is kept
            elif q.kind == "maxpool":
                y = torch.nn.functional.max_pool2d(a, q.kernel, q.stride, q.padding)
            elif q.kind == "flatten":
                y = a.reshape(a.shape[0], -1)
            else:  # pragma: no cover - record_graph makes no other kinds
                raise ValueError(f"layer {q.name!r}: unknown kind {q.kind!r}")
            acts[q.name] = y
            scales[q.name] = q.output_scale
        if logits is None:
            raise ValueError("the network has no fc layer: no logits")
        return IntResult(logits, inputs, gates, macs, gated_on, (skipped[0], skipped[1]))


def gate_fraction(on: int, total: int) -> float:
    return on / total if total else math.nan
