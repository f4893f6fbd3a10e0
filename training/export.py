"""Export a trained run as a layer trace (docs/trace-format.md), with the int8 evaluation in its metadata.

:func:`export_run` loads a run directory (:func:`training.train.load_run`), quantizes the network to int8
(:func:`training.quantize.quantize_network`, calibrated on training images), and then

* evaluates the float model on the test split (accuracy, per-layer gate-on fractions → FLOPs);
* simulates the integer network on the test split (:class:`training.quantize.IntNetwork`): int8 accuracy,
  and how often its gates agree with the float model's (``gate_agreement``: over every gated activation of
  every test image, integer gate == float gate);
* repeats the integer simulation with dynamic output-channel pruning at each threshold (0, 0.05, 0.1, 0.2
  by default): int8 accuracy, executed MACs per image and the fraction of (image, channel) conditional
  paths skipped (whose conditional-path weights need not be fetched);
* records, for the first ``samples`` test images, every engine layer's int8 inputs (from the integer
  simulation) and every gated layer's float gate decisions, and writes the trace with
  :func:`trace_format.save_trace`.

Layers come from forward hooks in forward order, including the layers the engine does not run (residual
add, ReLU after it, pooling, flatten) as metadata-only layers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from spec.errors import UserError
from training.quantize import IntNetwork, QLayer, quantize_network
from training.train import (
    RUN_FILES,
    RunError,
    check_fits_data,
    evaluate,
    load_run,
    run_commands,
    run_data_options,
)

__all__ = ["CHANNEL_THRESHOLDS", "export_run"]

CHANNEL_THRESHOLDS = (0.0, 0.05, 0.1, 0.2)
CALIBRATION_IMAGES = 256


def _float_gates(model, x: torch.Tensor) -> dict[int, torch.Tensor]:
    """Float-model gate decisions (engine channel order) of every gated layer, keyed by module id."""
    from training.gating import gated_layers

    layers = gated_layers(model)
    for _, m in layers:
        m.record_gates = True
    try:
        with torch.no_grad():
            model(x)
        return {id(m): m.last_gates.clone() for _, m in layers}
    finally:
        for _, m in layers:
            m.record_gates = False
            m.last_gates = None


def _evaluate_int(
    model, net: IntNetwork, x: np.ndarray, y: np.ndarray, thresholds, batch_size: int, progress: bool
) -> dict:
    """int8 accuracy, gate agreement and the channel-pruning sweep over images ``x``."""
    n = x.shape[0]
    gated = [q for q in net.layers if q.gated]
    agree = {q.name: [0, 0] for q in gated}
    correct = 0
    macs = 0.0
    int_on = {q.name: [0, 0] for q in gated}
    sweep = {t: {"correct": 0, "macs": 0.0, "skipped": [0, 0]} for t in thresholds}
    batches = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="int8 simulation", unit="batch", leave=False, disable=None)
    for i in batches:
        xb = torch.from_numpy(x[i : i + batch_size])
        yb = torch.from_numpy(y[i : i + batch_size])
        fg = _float_gates(model, xb) if gated else {}
        res = net.run(xb, record_gates=True)
        correct += int((res.logits.argmax(1) == yb).sum())
        macs += res.macs
        for q in gated:
            g_int, g_float = res.gates[q.name], fg[id(q.module)]
            agree[q.name][0] += int((g_int == g_float).sum())
            agree[q.name][1] += g_int.numel()
            int_on[q.name][0] += res.gated_on[q.name][0]
            int_on[q.name][1] += res.gated_on[q.name][1]
        for t in thresholds:
            r = net.run(xb, channel_threshold=t)
            sweep[t]["correct"] += int((r.logits.argmax(1) == yb).sum())
            sweep[t]["macs"] += r.macs
            sweep[t]["skipped"][0] += r.skipped[0]
            sweep[t]["skipped"][1] += r.skipped[1]
    total_agree = sum(a for a, _ in agree.values())
    total = sum(b for _, b in agree.values())
    return {
        "accuracy": correct / n,
        "macs_per_image": macs / n,
        "gate_agreement": total_agree / total if total else 1.0,
        "gate_agreement_per_layer": {k: a / b for k, (a, b) in agree.items() if b},
        "int_gate_rates": {k: a / b for k, (a, b) in int_on.items() if b},
        "sweep": {
            t: {
                "accuracy": s["correct"] / n,
                "macs_per_image": s["macs"] / n,
                "skipped": s["skipped"][0] / s["skipped"][1] if s["skipped"][1] else 0.0,
            }
            for t, s in sweep.items()
        },
    }


def _layer_meta(q: QLayer, rates: dict, sample_rates: dict, spec) -> dict:
    c_in = q.in_shape[0]
    h, w = (q.in_shape[1], q.in_shape[2]) if len(q.in_shape) == 3 else (1, 1)
    c_out = q.out_shape[0] if q.kind != "flatten" else int(np.prod(q.out_shape))
    h_out, w_out = (q.out_shape[1], q.out_shape[2]) if len(q.out_shape) == 3 else (1, 1)
    if q.kind == "flatten":
        c_in, h, w = q.in_shape
    lm: dict = {"kind": q.kind, "inputs": list(q.inputs), "c_in": c_in, "c_out": c_out, "h": h, "w": w}
    if q.kind in ("conv", "avgpool", "maxpool"):
        lm.update({"kernel": q.kernel, "stride": q.stride, "padding": q.padding})
    if q.kind == "conv":
        lm["groups"] = 1
    lm.update({"h_out": h_out, "w_out": w_out})
    if q.is_engine:
        lm["relu"] = bool(q.relu)
        lm["gated"] = bool(q.gated)
        dense = q.dense_macs()
        if q.gated:
            lm["gate_groups"] = q.gate_groups
            lm["base"] = "groups" if q.gate_groups > 1 else {"first": int(q.base_channels)}
            lm["shuffle"] = bool(q.shuffle)
            lm["gate_on_fraction"] = float(sample_rates[q.name])
            lm["gate_on_fraction_test"] = float(rates[q.name])
            base = dense * q.base_fraction()
            gated_macs = base + rates[q.name] * (dense - base)
        else:
            gated_macs = dense
        lm["flops"] = {"dense": dense, "gated": float(gated_macs)}
        if q.degenerate_channels:
            lm["degenerate_channels"] = q.degenerate_channels
        block = q.name.rsplit(".", 1)[0]
        pruned = (spec.pruned_channels or {}).get(block)
        if pruned is not None and q.name.endswith(".conv1"):
            lm["pruned_channels"] = [int(c) for c in pruned]
        elif pruned is not None and q.name.endswith(".conv2"):
            lm["pruned_input_channels"] = [int(c) for c in pruned]
    else:
        lm["output_scale"] = float(q.output_scale)
    return lm


def _check_not_a_run_file(out: Path, run_dir: Path) -> None:
    """Refuse to write the trace over one of the run's own files."""
    if out.name in RUN_FILES and run_dir.is_dir() and out.parent.is_dir():
        with contextlib.suppress(OSError):
            if os.path.samefile(out.parent, run_dir):
                raise RunError(f"{out}: is a file of the run folder {run_dir}; name a trace file elsewhere")


def _save(out: Path, meta: dict, arrays: dict, save_trace):
    """Write the trace to ``out`` (:class:`outfiles.folder.OutputFile`: staged beside it, the parent folders
    made first; an error or a stop signal leaves neither a partial file nor the folders made for it, and
    errors name ``out``, not a temporary file)."""
    from outfiles.folder import OutputFile

    with OutputFile(out, "trace", create_parents=True) as tmp:
        try:
            trace = save_trace(tmp, meta, arrays)
        except UserError as exc:  # a refusal of the trace's checks: name the destination
            raise type(exc)(str(exc).replace(str(tmp), str(out))) from None
    return dataclasses.replace(trace, path=str(out))


def export_run(
    run_dir: str | Path,
    out: str | Path,
    samples: int = 4,
    command: str = "",
    name: str | None = None,
    calibration: int = CALIBRATION_IMAGES,
    percentile: float = 99.99,
    thresholds=CHANNEL_THRESHOLDS,
    threads: int = 2,
    batch_size: int = 128,
    progress: bool = True,
    log: Callable[[str], None] = print,
):
    """Write the trace of run ``run_dir`` to ``out`` (module docstring); returns the saved :class:`Trace`."""
    from outfiles.folder import check_out_file
    from trace_format import make_meta, save_trace

    check_out_file(Path(out), create_parents=True)  # refuse the destination before the work
    _check_not_a_run_file(Path(out), Path(run_dir))
    from training.data import load_dataset

    torch.set_num_threads(max(1, threads))
    started = time.time()
    model, config, metrics = load_run(run_dir)
    opts = config.get("options", {})
    seed = int(opts.get("seed", 0))
    dataset, split_seed, data_dir = run_data_options(config)
    data = load_dataset(dataset, seed=split_seed, data_dir=data_dir)
    check_fits_data(model.spec, data, run_dir)
    if opts.get("max_test"):
        data.x_test, data.y_test = data.x_test[: opts["max_test"]], data.y_test[: opts["max_test"]]
    if not 1 <= samples <= data.x_test.shape[0]:
        raise RunError(
            f"--samples {samples}: the test split of {run_dir} has {data.x_test.shape[0]} images; "
            f"expected 1 to {data.x_test.shape[0]}"
        )
    spec = model.spec

    net = quantize_network(model, torch.from_numpy(data.x_train[:calibration]), percentile=percentile)
    float_acc, rates = evaluate(model, data.x_test, data.y_test)
    ev = _evaluate_int(model, net, data.x_test, data.y_test, thresholds, batch_size, progress)

    x_s = torch.from_numpy(data.x_test[:samples])
    sample_res = net.run(x_s, record_inputs=True)
    fg = _float_gates(model, x_s)
    sample_rates = {q.name: float(fg[id(q.module)].float().mean()) for q in net.layers if q.gated}

    layers_meta, arrays = {}, {}
    for q in net.layers:
        layers_meta[q.name] = _layer_meta(q, rates, sample_rates, spec)
        if not q.is_engine:
            continue
        a = {
            "weights": q.weights.astype(np.int8),
            "weight_scale": q.weight_scale.astype(np.float32),
            "inputs": sample_res.inputs[q.name].numpy().astype(np.int8),
            "input_scale": np.array(q.input_scale, dtype=np.float32),
            "bias": q.bias.astype(np.int32),
            "requant_scale": q.requant_scale.astype(np.float32),
            "output_scale": np.array(q.output_scale, dtype=np.float32),
        }
        if q.gated:
            a["thresholds"] = q.thresholds.astype(np.int32)
            a["gates"] = fg[id(q.module)].numpy().astype(bool)
        arrays[q.name] = a

    gated_any = any(q.gated for q in net.layers)
    dense_flops = sum(lm["flops"]["dense"] for lm in layers_meta.values() if "flops" in lm)
    gated_flops = sum(lm["flops"]["gated"] for lm in layers_meta.values() if "flops" in lm)
    flops = {"dense": dense_flops, "gated": gated_flops, "int8_gated": ev["macs_per_image"]}
    if metrics.get("unpruned_flops"):
        flops["unpruned_dense"] = metrics["unpruned_flops"]
    dense_acc = metrics.get("dense_accuracy")
    if dense_acc is None and spec.dense and not spec.pruned_channels:
        dense_acc = float_acc
    accuracy = {"float": float_acc, "int8": ev["accuracy"], "dense_float": dense_acc}
    pruning = None
    if gated_any:
        pruning = [
            {
                "threshold": float(t),
                "int8_accuracy": s["accuracy"],
                "macs_per_image": s["macs_per_image"],
                "skipped_conditional_channels": s["skipped"],
            }
            for t, s in ev["sweep"].items()
        ]
    commands = run_commands(config)
    if command:
        commands = commands + [command]
    kind = ("cgnet-" if gated_any else "") + ("pruned-" if spec.pruned_channels else "")
    trace_name = name or f"{kind}{spec.arch}-{data.name}"
    meta = make_meta(
        name=trace_name,
        dataset=data.name,
        synthetic=False,
        num_classes=data.num_classes,
        input_shape=list(data.input_shape),
        samples=samples,
        layer_order=[q.name for q in net.layers],
        layers=layers_meta,
        command=" && ".join(c for c in commands if c),
        seed=seed,
        accuracy=accuracy,
        gate_agreement=ev["gate_agreement"],
        channel_pruning=pruning,
        flops=flops,
        run_dir=str(run_dir),
    )
    meta["gate_agreement_per_layer"] = ev["gate_agreement_per_layer"]
    meta["test_images"] = int(data.x_test.shape[0])
    meta["model"] = spec.to_dict()
    meta["data"] = data.description
    meta["quantization"] = {
        "weights": "int8, per output channel, symmetric (max |w| / 127)",
        "activations": (
            f"int8, per tensor, symmetric, zero point 0; scale = {percentile}th percentile of |a| / 127 "
            f"over {min(calibration, data.x_train.shape[0])} training images"
        ),
        "input_scale": float(net.input_scale),
        "gate": "tau = floor((mu_g + delta * sqrt(var_g + eps)) / (s_x * s_w[c])), gate = p > tau",
        "activation_scales": "shared across residual adds (the add is a plain int8 sum); relu, flatten "
        "and pooling keep their input's scale",
        "runner": "traces/quantize.py IntNetwork, docs/trace-format.md 'Integer semantics'; a channel "
        "shuffle (shuffle: true) permutes the requantized outputs",
    }
    meta["training"] = {
        k: metrics[k]
        for k in (
            "accuracy",
            "dense_accuracy",
            "flop_reduction",
            "total_flop_reduction",
            "speedup",
            "mid_channels",
            "train_seconds",
            "polarization",
            "pruning_threshold",
            "prune_flop_reduction",
            "polarized_accuracy",
            "pruned_accuracy_before_finetune",
            "init_accuracy",
        )
        if k in metrics
    }
    for key in ("prune_search", "gate_search"):
        if key in metrics:
            meta["training"][key] = metrics[key]
    json.dumps(meta, allow_nan=False)  # fail early on NaN
    out = Path(out)
    trace = _save(out, meta, arrays, save_trace)
    speed = dense_flops / gated_flops if gated_flops else math.inf
    log(
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, {time.time() - started:.0f} s): accuracy float "
        f"{float_acc:.4f}, int8 {ev['accuracy']:.4f}; FLOPs {dense_flops} -> {gated_flops:.0f} "
        f"({speed:.2f}x); "
        f"gate agreement {ev['gate_agreement']:.4f}"
    )
    return trace
