"""A synthetic channel-gated ResNet-18 trace with ImageNet shapes (trace (d); docs/trace-format.md).

The network is torchvision's ResNet-18 layout: a 3×224×224 input, ``conv1`` 7×7/2 (+ReLU), ``maxpool``
3×3/2, four stages of two BasicBlocks with 64/128/256/512 channels (the first block of stages 2–4 has
stride 2 and a 1×1/2 ``downsample`` conv on its shortcut), a global ``avgpool``, ``flatten`` and ``fc``
to 1000 classes. Every 3×3 conv inside a block is channel-gated with G = 2 (``gate_groups`` 2, base
``"groups"``); ``conv1``, the downsample convs and ``fc`` are not gated.

Nothing is trained: the trace is ``synthetic``, its accuracies are null. It is built as follows, all in
exact integer arithmetic (int8 operands, int64 sums; the convolutions run as float64 BLAS products of
im2col matrices, exact because every sum stays far below 2**53):

* **Images**: seeded smooth random fields (a shared luminance and a per-channel colour part, each a sum of
  bilinearly upsampled random grids of 4, 8, 16 and 32 cells), normalised per channel and quantized to
  int8 at the activation scale (std ≈ 32, i.e. 1.0 in real units).
* **Weights**: per output channel, seeded Laplace (heavy-tailed, like trained weights) draws quantized
  symmetrically so the channel's largest magnitude is 127.
* **Gates**: the base-path partial sum ``p`` (output group g over input group g), thresholds ``τ_c`` per
  output channel at the quantile of ``p`` over the stored samples that leaves ``gate_rate`` of them above
  (the integer τ whose count of ``p > τ`` is nearest ``gate_rate · count``), ``gate = p > τ``,
  ``acc = p + gate · r`` (CGNet's rule: gated-off activations keep their partial sum).
* **Bias** (a folded batch-norm shift): ``−acc``'s per-channel quantile at a seeded level in
  [0.35, 0.65], so that about half of each channel's outputs are positive.
* **Requantization**: per output channel, ``requant_scale = L / q`` with ``q`` the 0.999 quantile of
  ``|acc + bias|`` (after the ReLU where one follows) and ``L = 127``, or ``L = 63.5`` for the two convs
  that feed a residual add (so the int8 sum rarely saturates); ``fc`` uses one scale for the whole layer.
  Outputs follow :func:`trace_format.requantize`. Every activation has the same real scale ``1/32``, so
  ``weight_scale = requant_scale`` (batch norm folded into the weights).
* **Other layers**: maxpool (pads read as −128), residual add (int8 sum saturated to [−128, 127], then
  ReLU), global average pool (``rint(sum / count)``, half to even), flatten.

Regenerate the shipped trace (deterministic: the same arguments give the same bytes, given the same
date in ``made_by``, which ``SOURCE_DATE_EPOCH`` fixes)::

    python -m sim.resnet18_synthetic --out traces/resnet18-imagenet-synthetic.npz \\
        --samples 2 --gate-rate 0.3 --seed 0

``--width`` and ``--resolution`` build smaller variants (the tests use 8 channels and 64×64).
This module imports only numpy and the package's own ``trace_format``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from trace_format import (
    ENGINE_KINDS,
    Trace,
    TraceError,
    gated_macs,
    layer_macs,
    make_meta,
    requantize,
    save_trace,
)

__all__ = ["ACT_SCALE", "build_resnet18", "main", "synthetic_images"]

ACT_SCALE = np.float32(1 / 32)  # real activation = int8 * ACT_SCALE, every layer
CALIB_QUANTILE = 0.999
FULL_LEVEL = 127.0
BRANCH_LEVEL = 63.5
GATE_GROUPS = 2
BIAS_QUANTILES = (0.35, 0.65)
STAGE_CHANNELS = (1, 2, 4, 8)  # times width
DEFAULT_OUT = "traces/resnet18-imagenet-synthetic.npz"
DEFAULTS = {"samples": 2, "gate_rate": 0.3, "seed": 0, "width": 64, "resolution": 224, "num_classes": 1000}


# --------------------------------------------------------------------------------------------------------
# Integer building blocks


def _upsample_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear interpolation matrix ``[n_out, n_in]`` (align_corners=False, edges clamped)."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = pos - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def synthetic_images(rng: np.random.Generator, n: int, resolution: int, channels: int = 3) -> np.ndarray:
    """Seeded smooth random fields, int8 ``[n, channels, resolution, resolution]`` (see module docstring)."""
    grids = [g for g in (4, 8, 16, 32) if g <= resolution] or [resolution]
    ups = {g: _upsample_matrix(resolution, g) for g in grids}

    def field() -> np.ndarray:
        out = np.zeros((resolution, resolution))
        for i, g in enumerate(grids):
            out += 0.6**i * (ups[g] @ rng.standard_normal((g, g)) @ ups[g].T)
        return out

    images = np.empty((n, channels, resolution, resolution), dtype=np.int8)
    for s in range(n):
        luminance = field()
        for c in range(channels):
            x = luminance + 0.5 * field()
            x = (x - x.mean()) / (x.std() + 1e-12) + rng.normal(0.0, 0.3)
            images[s, c] = np.clip(np.rint(x / float(ACT_SCALE)), -128, 127)
    return images


def _int8_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Laplace draws, quantized per output channel (axis 0) so each channel's largest magnitude is 127."""
    w = rng.laplace(0.0, 1.0, size=shape)
    peak = np.abs(w.reshape(shape[0], -1)).max(axis=1)
    peak = peak.reshape((-1,) + (1,) * (len(shape) - 1))
    return np.clip(np.rint(w / peak * 127.0), -127, 127).astype(np.int8)


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _im2col(x: np.ndarray, k: int, s: int, p: int) -> tuple[np.ndarray, int, int]:
    """float64 ``[N * h_out * w_out, C * k * k]`` of int8 ``x`` ``[N, C, H, W]`` (zero padding)."""
    n, c, h, w = x.shape
    h_out, w_out = _out_size(h, k, s, p), _out_size(w, k, s, p)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    win = win[:, :, : (h_out - 1) * s + 1 : s, : (w_out - 1) * s + 1 : s]  # [N, C, h_out, w_out, k, k]
    cols = np.empty((n, h_out, w_out, c, k, k), dtype=np.float64)
    cols[...] = win.transpose(0, 2, 3, 1, 4, 5)
    return cols.reshape(n * h_out * w_out, c * k * k), h_out, w_out


def _exact(product: np.ndarray) -> np.ndarray:
    return np.rint(product).astype(np.int64)


def _calibrate_thresholds(p: np.ndarray, rate: float) -> np.ndarray:
    """Per column of ``p`` ``[M, C]``: the integer τ whose count of ``p > τ`` is nearest ``rate · M``."""
    m, c = p.shape
    out = np.empty(c, dtype=np.int64)
    target = rate * m
    for j in range(c):
        values = np.sort(p[:, j])
        candidates = np.concatenate(([values[0] - 1], np.unique(values)))
        above = m - np.searchsorted(values, candidates, side="right")
        out[j] = candidates[int(np.argmin(np.abs(above - target)))]
    return np.clip(out, -(1 << 31), (1 << 31) - 1)


def _quantile_index(m: int, q: float | np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(q) * (m - 1)).astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# The network


class _Builder:
    def __init__(self, samples: int, gate_rate: float, seed: int):
        ss = np.random.SeedSequence(seed)
        img_ss, w_ss, b_ss = ss.spawn(3)
        self.rng_img = np.random.default_rng(img_ss)
        self.rng_w = np.random.default_rng(w_ss)
        self.rng_b = np.random.default_rng(b_ss)
        self.n = samples
        self.gate_rate = gate_rate
        self.order: list[str] = []
        self.meta: dict[str, dict] = {}
        self.arrays: dict[str, dict[str, np.ndarray]] = {}
        self.out: dict[str, np.ndarray] = {}

    def _record(
        self, name: str, kind: str, sources: list[str], x: np.ndarray, y: np.ndarray, **extra
    ) -> None:
        c_in, h, w = (x.shape[1], 1, 1) if x.ndim == 2 else x.shape[1:]
        c_out, h_out, w_out = (y.shape[1], 1, 1) if y.ndim == 2 else y.shape[1:]
        self.order.append(name)
        self.meta[name] = {
            "kind": kind,
            "inputs": sources,
            "c_in": int(c_in),
            "c_out": int(c_out),
            "h": int(h),
            "w": int(w),
            "h_out": int(h_out),
            "w_out": int(w_out),
            **extra,
        }
        self.out[name] = y

    def _finish(self, acc: np.ndarray, relu: bool, level: float, per_channel: bool):
        """Bias and requantization calibrated on ``acc`` ``[M, c_out]``; returns (bias, scale)."""
        m, c_out = acc.shape
        srt = np.sort(acc, axis=0)
        q = self.rng_b.uniform(*BIAS_QUANTILES, size=c_out)
        bias = -srt[_quantile_index(m, q), np.arange(c_out)]
        bias = np.clip(bias, -(1 << 31), (1 << 31) - 1).astype(np.int32)
        v = acc + bias.astype(np.int64)
        if relu:
            v = np.maximum(v, 0)
        mag = np.abs(v)
        if per_channel:
            peak = np.sort(mag, axis=0)[_quantile_index(m, CALIB_QUANTILE)]
            fallback = mag.max(axis=0)
            peak = np.where(peak > 0, peak, np.where(fallback > 0, fallback, 1))
        else:
            flat = np.sort(mag.ravel())
            peak = int(flat[_quantile_index(flat.size, CALIB_QUANTILE)]) or int(flat[-1]) or 1
            peak = np.full(c_out, peak)
        scale = (level / peak.astype(np.float64)).astype(np.float32)
        return bias, scale

    def _engine_arrays(self, weights, inputs, bias, scale) -> dict[str, np.ndarray]:
        return {
            "weights": weights,
            # batch norm folded into the weights: weight_scale = requant_scale * output_scale / input_scale,
            # and every activation has the same scale
            "weight_scale": scale.copy(),
            "inputs": inputs,
            "input_scale": np.array(ACT_SCALE, dtype=np.float32),
            "bias": bias,
            "requant_scale": scale,
            "output_scale": np.array(ACT_SCALE, dtype=np.float32),
        }

    def conv(self, name, src, c_out, k, s, p, gated, relu, level=FULL_LEVEL) -> None:
        x = self.out[src]
        n, c_in, _, _ = x.shape
        weights = _int8_weights(self.rng_w, (c_out, c_in, k, k))
        cols, h_out, w_out = _im2col(x, k, s, p)
        wm = weights.reshape(c_out, -1).astype(np.float64)
        full = _exact(cols @ wm.T)  # [M, c_out]
        extra: dict = {"kernel": k, "stride": s, "padding": p, "groups": 1, "relu": relu, "gated": gated}
        arrays_extra: dict[str, np.ndarray] = {}
        if gated:
            g = GATE_GROUPS
            cg, og, kk = c_in // g, c_out // g, k * k
            part = np.empty_like(full)
            for i in range(g):
                rows, chans = slice(i * og, (i + 1) * og), slice(i * cg * kk, (i + 1) * cg * kk)
                part[:, rows] = _exact(cols[:, chans] @ wm[rows, chans].T)
            thresholds = _calibrate_thresholds(part, self.gate_rate)
            gates = part > thresholds
            acc = np.where(gates, full, part)
            gates_nchw = gates.reshape(n, h_out, w_out, c_out).transpose(0, 3, 1, 2)
            fraction = float(gates.mean())
            extra.update(gate_groups=g, base="groups", shuffle=False, gate_on_fraction=fraction)
            arrays_extra = {
                "thresholds": thresholds.astype(np.int32),
                "gates": np.ascontiguousarray(gates_nchw),
            }
        else:
            acc = full
        bias, scale = self._finish(acc, relu, level, per_channel=True)
        acc_nchw = acc.reshape(n, h_out, w_out, c_out).transpose(0, 3, 1, 2)
        y = requantize(acc_nchw, bias, scale, relu)
        self._record(name, "conv", [src], x, np.ascontiguousarray(y), **extra)
        self._flops(name)
        self.arrays[name] = {**self._engine_arrays(weights, x, bias, scale), **arrays_extra}

    def fc(self, name, src, c_out) -> None:
        x = self.out[src]
        weights = _int8_weights(self.rng_w, (c_out, x.shape[1]))
        acc = _exact(x.astype(np.float64) @ weights.astype(np.float64).T)  # [N, c_out]
        bias, scale = self._finish(acc, relu=False, level=FULL_LEVEL, per_channel=False)
        y = requantize(acc, bias, scale, relu=False)
        self._record(name, "fc", [src], x, y, relu=False, gated=False)
        self._flops(name)
        self.arrays[name] = self._engine_arrays(weights, x, bias, scale)

    def _flops(self, name: str) -> None:
        lm = self.meta[name]
        dense = layer_macs(lm)
        gated = round(gated_macs(lm, lm["gate_on_fraction"])) if lm["gated"] else dense
        lm["flops"] = {"dense": dense, "gated": gated}

    def maxpool(self, name, src, k, s, p) -> None:
        x = self.out[src]
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-128)
        win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
        h_out, w_out = _out_size(x.shape[2], k, s, p), _out_size(x.shape[3], k, s, p)
        y = win[:, :, :h_out, :w_out].max(axis=(4, 5))
        self._record(name, "maxpool", [src], x, np.ascontiguousarray(y), kernel=k, stride=s, padding=p)

    def add(self, name, a, b, relu=True) -> None:
        x, z = self.out[a], self.out[b]
        y = np.clip(x.astype(np.int16) + z.astype(np.int16), -128, 127)
        if relu:
            y = np.maximum(y, 0)
        self._record(name, "add", [a, b], x, y.astype(np.int8), relu=relu)

    def avgpool(self, name, src) -> None:
        x = self.out[src]
        k = x.shape[2]
        total = x.astype(np.int64).sum(axis=(2, 3), keepdims=True)
        y = np.rint(total.astype(np.float64) / (x.shape[2] * x.shape[3])).astype(np.int8)
        self._record(name, "avgpool", [src], x, y, kernel=k, stride=k, padding=0)

    def flatten(self, name, src) -> None:
        x = self.out[src]
        self._record(name, "flatten", [src], x, x.reshape(x.shape[0], -1))


def _check_args(samples, gate_rate, seed, width, resolution, num_classes) -> None:
    for key, value, lo in (
        ("samples", samples, 1),
        ("seed", seed, 0),
        ("width", width, GATE_GROUPS),
        ("resolution", resolution, 32),
        ("num_classes", num_classes, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lo:
            raise TraceError(f"resnet18_synthetic: {key} = {value!r}: expected an integer >= {lo}")
    if width % GATE_GROUPS:
        raise TraceError(
            f"resnet18_synthetic: width = {width}: not a multiple of gate_groups = {GATE_GROUPS}"
        )
    if not isinstance(gate_rate, (int, float)) or not 0.0 <= gate_rate <= 1.0:
        raise TraceError(f"resnet18_synthetic: gate_rate = {gate_rate!r}: expected a number in [0, 1]")


def command_line(out: str, **params) -> str:
    """The canonical regeneration command for ``params`` (non-default extras only)."""
    values = {**DEFAULTS, **params}
    parts = ["python -m sim.resnet18_synthetic", f"--out {shlex.quote(str(out))}"]
    parts += [f"--samples {values['samples']}", f"--gate-rate {float(values['gate_rate'])!r}"]
    parts.append(f"--seed {values['seed']}")
    for key in ("width", "resolution", "num_classes"):
        if values[key] != DEFAULTS[key]:
            parts.append(f"--{key.replace('_', '-')} {values[key]}")
    return " ".join(parts)


def build_resnet18(
    samples: int = 2,
    gate_rate: float = 0.3,
    seed: int = 0,
    width: int = 64,
    resolution: int = 224,
    num_classes: int = 1000,
    command: str | None = None,
    date: str | None = None,
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Build the synthetic ResNet-18 trace; returns ``(meta, arrays)`` for
    :func:`trace_format.save_trace`."""
    _check_args(samples, gate_rate, seed, width, resolution, num_classes)
    b = _Builder(samples, float(gate_rate), seed)
    b.out["input"] = synthetic_images(b.rng_img, samples, resolution)
    b.conv("conv1", "input", width, 7, 2, 3, gated=False, relu=True)
    b.maxpool("maxpool", "conv1", 3, 2, 1)
    prev = "maxpool"
    for stage, mult in enumerate(STAGE_CHANNELS, start=1):
        channels = width * mult
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            pre = f"layer{stage}.{block}"
            b.conv(f"{pre}.conv1", prev, channels, 3, stride, 1, gated=True, relu=True)
            b.conv(
                f"{pre}.conv2", f"{pre}.conv1", channels, 3, 1, 1, gated=True, relu=False, level=BRANCH_LEVEL
            )
            shortcut = prev
            if stride != 1 or b.out[prev].shape[1] != channels:
                shortcut = f"{pre}.downsample"
                b.conv(shortcut, prev, channels, 1, stride, 0, gated=False, relu=False, level=BRANCH_LEVEL)
            b.add(f"{pre}.add", f"{pre}.conv2", shortcut, relu=True)
            prev = f"{pre}.add"
    b.avgpool("avgpool", prev)
    b.flatten("flatten", "avgpool")
    b.fc("fc", "flatten", num_classes)

    full_size = width == DEFAULTS["width"] and resolution == DEFAULTS["resolution"]
    name = "resnet18-imagenet-synthetic" if full_size else f"resnet18-w{width}-r{resolution}-synthetic"
    params = {
        "samples": samples,
        "gate_rate": float(gate_rate),
        "seed": seed,
        "width": width,
        "resolution": resolution,
        "num_classes": num_classes,
    }
    meta = make_meta(
        name=name,
        dataset="imagenet-shapes" if resolution == DEFAULTS["resolution"] else "synthetic",
        synthetic=True,
        num_classes=num_classes,
        input_shape=(3, resolution, resolution),
        samples=samples,
        layer_order=b.order,
        layers=b.meta,
        command=command if command is not None else command_line(DEFAULT_OUT, **params),
        seed=seed,
        date=date,
        generator="traces/resnet18_synthetic.py",
        parameters=params,
    )
    return meta, b.arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.resnet18_synthetic",
        description="Write the synthetic channel-gated ResNet-18 trace (ImageNet shapes) in trace format 1.",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output .npz ({DEFAULT_OUT})")
    parser.add_argument(
        "--samples", type=int, default=DEFAULTS["samples"], help="images stored per layer (2)"
    )
    parser.add_argument(
        "--gate-rate", type=float, default=DEFAULTS["gate_rate"], help="gate-on rate of the thresholds (0.3)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="seed (0)")
    parser.add_argument("--width", type=int, default=DEFAULTS["width"], help="channels of stage 1 (64)")
    parser.add_argument("--resolution", type=int, default=DEFAULTS["resolution"], help="input size (224)")
    parser.add_argument("--num-classes", type=int, default=DEFAULTS["num_classes"], help="fc outputs (1000)")
    args = parser.parse_args(argv)
    params = {
        "samples": args.samples,
        "gate_rate": args.gate_rate,
        "seed": args.seed,
        "width": args.width,
        "resolution": args.resolution,
        "num_classes": args.num_classes,
    }
    start = time.perf_counter()
    try:
        meta, arrays = build_resnet18(**params, command=command_line(args.out, **params))
        built = time.perf_counter()
        trace = save_trace(args.out, meta, arrays)
    except (TraceError, OSError) as exc:
        print(f"resnet18_synthetic: error: {exc}", file=sys.stderr)
        return 2
    done = time.perf_counter()
    report(trace, Path(args.out), built - start, done - built)
    return 0


def report(trace: Trace, path: Path, build_s: float, save_s: float) -> None:
    gated = trace.gated_layers()
    fractions = [layer.meta.gate_on_fraction for layer in gated]
    flops = trace.meta.flops
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {trace.name}, {len(trace)} layers")
    print(f"  build {build_s:.1f} s, save {save_s:.1f} s")
    print(
        f"  {len(gated)} gated layers, gate-on fraction {min(fractions):.3f}-{max(fractions):.3f}; "
        f"MACs dense {flops.dense:,}, gated {flops.gated:,} "
        f"(reduction {flops.dense / flops.gated:.2f}x)"
    )
    engine = [layer for layer in trace if layer.meta.kind in ENGINE_KINDS]
    print(f"  {len(engine)} engine layers, {trace.meta.samples} samples")


if __name__ == "__main__":
    sys.exit(main())
