"""Training of the traced networks: dense baselines, CGNet gating, polarization pruning; run directories.

One call of :func:`train_run` (the ``accel train`` command) does one of:

* **plain training** of a dense (``dense=True``) or channel-gated network for ``epochs`` epochs;
* **gating-target search** (``gate_flop_target`` F*, a fraction of FLOPs removed): short trainings of
  ``search_epochs`` with different targets ``T`` (:func:`traces.search.search_gate_target`, ``F`` measured on
  training images), then the full training with the ``T`` found;
* **polarization pruning** (``prune_target`` F*): Algorithm 1 (:func:`traces.search.algorithm1`) over
  ``(t, λ)``, each trial a ``search_epochs`` training of the dense network with the regularizer, pruned by
  the histogram rule; then the full training with the ``(t, λ)`` found, pruning, and ``finetune_epochs`` of
  fine-tuning of the pruned network (no regularizer);
* with ``init_from`` a run directory, training starts from that run's (possibly pruned) weights; a gated
  spec then gates the pruned network (pruned, then gated).

Optimizer: SGD with momentum 0.9, Nesterov, cosine learning-rate decay per step, weight decay on
convolution/linear weights only; loss = cross-entropy + ``λ_g·Σ(Δ − T)²`` + ``λ·R(γ)`` (when polarizing);
after every step BN scales are projected to ``≥ 0`` (prunable ones into ``[0, 1]`` when polarizing).
Augmentation: random translations of up to 2 pixels (zero padding) for digits; 4 pixels and horizontal
flips for CIFAR-10. All training randomness is seeded by ``seed``; the digits train/test split by
``split_seed`` (0 by default), which a run started from another (``init_from``, ``baseline``) must share.

A run directory holds ``config.json`` (options, model spec, data set, the command and those of the runs it
builds on), ``model.pt`` (the state dict) and ``metrics.json`` (accuracy, FLOPs, gate rates, searches,
timings).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from accel.errors import UserError
from accel.outdir import OutputFolder
from traces.data import Dataset, load_dataset
from traces.flops import count_flops, flop_totals
from traces.gating import LAMBDA_G, collect_gate_stats, gate_penalty, gate_rates, set_gate_target
from traces.polarization import (
    channels_to_keep,
    clamp_gammas,
    flop_reduction,
    init_polarization,
    polarization_loss,
    prunable_bns,
    prune_resnet,
    pruning_threshold,
)
from traces.resnet import CifarResNet, ModelSpec, build_model
from traces.search import algorithm1, search_gate_target

__all__ = [
    "TrainOptions",
    "evaluate",
    "gated_flop_reduction",
    "load_run",
    "train_epochs",
    "train_run",
]

FLOP_SUBSET = 256  # training images on which a search trial measures gate rates


class RunError(UserError):
    """A run directory or option that cannot be used; the message says which."""


@dataclass
class TrainOptions:
    model: str = "resnet20"
    width: float = 1.0
    dataset: str = "digits"
    data_dir: str | None = None
    dense: bool = False
    gate_groups: int = 2
    base_fraction: float = 0.5
    target: float = 1.0
    shuffle: bool = True
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    lam_g: float = LAMBDA_G
    seed: int = 0
    split_seed: int = 0
    threads: int = 2
    max_batches: int = 0  # per epoch, 0 = all (tests)
    max_test: int = 0  # evaluate on the first N test images, 0 = all (tests)
    gate_flop_target: float | None = None
    prune_target: float | None = None
    prune_delta: float = 0.05
    prune_t0: float = 1.2
    prune_lam0: float = 5e-3
    prune_multiple_of: int = 1
    search_epochs: int = 4
    search_delta: float = 0.05
    max_trials: int = 10
    finetune_epochs: int = 5
    init_from: str | None = None
    baseline: str | None = None
    progress: bool = True

    def spec(self, num_classes: int) -> ModelSpec:
        return ModelSpec(
            arch=self.model,
            num_classes=num_classes,
            width=self.width,
            gate_groups=0 if self.dense else self.gate_groups,
            base_fraction=self.base_fraction,
            target=self.target,
            shuffle=self.shuffle,
        )


# ------------------------------------------------------------------------------------------------------
# Batches


def _augment(x: torch.Tensor, rng: np.random.Generator, pad: int, flip: bool) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = rng.integers(0, 2 * pad + 1, size=n)
    dx = rng.integers(0, 2 * pad + 1, size=n)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.from_numpy(rng.random(n) < 0.5)
        out[mask] = out[mask].flip(3)
    return out


def _batches(data: Dataset, batch_size: int, rng: np.random.Generator, max_batches: int):
    n = data.x_train.shape[0]
    order = rng.permutation(n)
    steps = max(1, n // batch_size)  # drop the last partial batch (BN statistics)
    if max_batches:
        steps = min(steps, max_batches)
    pad, flip = (4, True) if data.name == "cifar10" else (2, False)
    for s in range(steps):
        idx = order[s * batch_size : (s + 1) * batch_size]
        x = torch.from_numpy(data.x_train[idx])
        yield _augment(x, rng, pad, flip), torch.from_numpy(data.y_train[idx])


def _steps_per_epoch(data: Dataset, opts: TrainOptions) -> int:
    steps = max(1, data.x_train.shape[0] // opts.batch_size)
    return min(steps, opts.max_batches) if opts.max_batches else steps


# ------------------------------------------------------------------------------------------------------
# Training and evaluation


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, disable=None)


def train_epochs(
    model: nn.Module,
    data: Dataset,
    opts: TrainOptions,
    epochs: int,
    *,
    seed: int,
    polarize: tuple[float, float] | None = None,
    lr: float | None = None,
    desc: str = "train",
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place; returns per-epoch ``{"loss", "train_accuracy", "seconds"}``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim > 1 else no_decay).append(p)
    lr = opts.lr if lr is None else lr
    optim = torch.optim.SGD(
        [{"params": decay, "weight_decay": opts.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    steps = _steps_per_epoch(data, opts)
    total = max(1, epochs * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
    )
    history = []
    for epoch in range(epochs):
        model.train()
        t0 = time.time()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = _progress(
            _batches(data, opts.batch_size, rng, opts.max_batches),
            steps,
            f"{desc} {epoch + 1}/{epochs}",
            opts.progress,
        )
        for x, y in bar:
            out = model(x)
            loss = F.cross_entropy(out, y) + gate_penalty(model, opts.lam_g)
            if polarize is not None:
                loss = loss + polarization_loss(model, *polarize)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            clamp_gammas(model, polarized=polarize is not None)
            loss_sum += float(loss.detach()) * y.numel()
            correct += int((out.argmax(1) == y).sum())
            seen += y.numel()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        history.append(
            {
                "loss": loss_sum / max(seen, 1),
                "train_accuracy": correct / max(seen, 1),
                "seconds": time.time() - t0,
            }
        )
        if log is not None:
            h = history[-1]
            log(
                f"  {desc} epoch {epoch + 1}/{epochs}: loss {h['loss']:.4f}, train accuracy "
                f"{h['train_accuracy']:.4f}, {h['seconds']:.0f} s"
            )
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, dict]:
    """Test accuracy and per-gated-layer gate-on fractions (eval mode)."""
    model.eval()
    correct = 0
    with collect_gate_stats(model):
        for i in range(0, x.shape[0], batch_size):
            out = model(torch.from_numpy(x[i : i + batch_size]))
            correct += int((out.argmax(1) == torch.from_numpy(y[i : i + batch_size])).sum())
    return correct / max(x.shape[0], 1), gate_rates(model)


def gated_flop_reduction(model: nn.Module, x: np.ndarray, input_shape) -> tuple[float, int, float, dict]:
    """``(F, dense, gated, rates)``: ``F = 1 − gated/dense`` with gate rates measured on images ``x``."""
    _, rates = evaluate(model, x, np.zeros(x.shape[0], dtype=np.int64))
    dense, gated = flop_totals(count_flops(model, input_shape, rates))
    return 1.0 - gated / dense, dense, gated, rates


# ------------------------------------------------------------------------------------------------------
# Run directories


# The files of a run directory (accel.outdir.OutputFolder refuses a folder holding anything else).
RUN_FILES = ("model.pt", "config.json", "metrics.json")


def _save_run(out: Path, model: nn.Module, config: dict, metrics: dict) -> None:
    # Staged and swapped in whole: a run directory never mixes two runs or holds half a run.
    with OutputFolder(out, RUN_FILES, "training run") as staging:
        torch.save(model.state_dict(), staging / "model.pt")
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def load_run(run_dir: str | Path) -> tuple[CifarResNet, dict, dict]:
    """``(model in eval mode, config, metrics)`` of a run directory written by :func:`train_run`."""
    run_dir = Path(run_dir)
    for name in ("config.json", "metrics.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir}: not a run directory ({name} is missing)")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{run_dir}: unreadable config.json or metrics.json ({exc})") from None
    spec = ModelSpec.from_dict(config["spec"])
    model = build_model(spec)
    state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, config, metrics


def _commands(config: dict) -> list[str]:
    """The commands that made a run, its ancestors' first."""
    return list(config.get("commands", [config.get("command", "")]))


def run_data_options(config: dict) -> tuple[str, int, str | None]:
    """``(dataset, split seed, data_dir)`` a run was trained on (older runs: the split seed was ``seed``)."""
    opts = config.get("options", {})
    split = opts.get("split_seed", opts.get("seed", 0))
    return opts.get("dataset", "digits"), int(split), opts.get("data_dir")


def _check_same_data(opts: TrainOptions, config: dict, run_dir) -> None:
    dataset, split, _ = run_data_options(config)
    if dataset != opts.dataset or (dataset == "digits" and split != opts.split_seed):
        raise RunError(
            f"{run_dir}: trained on {dataset} with split seed {split}, this run uses {opts.dataset} with "
            f"split seed {opts.split_seed}: a different train/test split would leak test images"
        )


def _load_data(opts: TrainOptions) -> Dataset:
    data = load_dataset(opts.dataset, seed=opts.split_seed, data_dir=opts.data_dir)
    if opts.max_test:
        data.x_test, data.y_test = data.x_test[: opts.max_test], data.y_test[: opts.max_test]
    return data


def _gated_from(pruned: CifarResNet, spec: ModelSpec) -> CifarResNet:
    """A gated network with ``pruned``'s architecture, starting from its weights (gate BN and Δ fresh)."""
    spec.mid_channels = list(pruned.spec.mid_channels or pruned.spec.default_mid_channels())
    spec.pruned_channels = copy.deepcopy(pruned.spec.pruned_channels)
    gated = build_model(spec)
    missing, unexpected = gated.load_state_dict(pruned.state_dict(), strict=False)
    bad = [k for k in missing if "bn_gate" not in k and not k.endswith("threshold")]
    if bad or unexpected:
        raise RunError(f"cannot start the gated network from the run's weights: {bad or unexpected}")
    return gated


# ------------------------------------------------------------------------------------------------------
# The modes


def train_run(
    opts: TrainOptions, out: str | Path, command: str = "", log: Callable[[str], None] = print
) -> dict:
    """Train according to ``opts`` (module docstring), write the run directory ``out``; returns metrics."""
    torch.set_num_threads(max(1, opts.threads))
    out = Path(out)
    OutputFolder(out, RUN_FILES, "training run").check()  # refuse the destination before training
    started = time.time()
    data = _load_data(opts)
    input_shape = data.input_shape
    flop_images = data.x_train[:FLOP_SUBSET]
    parents: list[str] = []
    metrics: dict = {}

    if opts.baseline:
        _, bconfig, bmetrics = load_run(opts.baseline)
        _check_same_data(opts, bconfig, opts.baseline)
        parents += _commands(bconfig)
        metrics["dense_accuracy"] = bmetrics.get("accuracy")
        metrics["baseline_run"] = str(opts.baseline)

    init_model = None
    if opts.init_from:
        init_model, iconfig, imetrics = load_run(opts.init_from)
        _check_same_data(opts, iconfig, opts.init_from)
        parents += [c for c in _commands(iconfig) if c not in parents]
        metrics["init_from"] = str(opts.init_from)
        metrics["init_accuracy"] = imetrics.get("accuracy")
        if "dense_accuracy" not in metrics:
            if imetrics.get("dense_accuracy") is not None:
                metrics["dense_accuracy"] = imetrics["dense_accuracy"]
            elif init_model.spec.dense and not init_model.spec.pruned_channels:
                metrics["dense_accuracy"] = imetrics.get("accuracy")  # the init run is the dense baseline
        if imetrics.get("unpruned_flops") is not None:
            metrics["unpruned_flops"] = imetrics["unpruned_flops"]

    def fresh(target: float | None = None) -> CifarResNet:
        torch.manual_seed(opts.seed)
        spec = opts.spec(data.num_classes)
        if target is not None:
            spec.target = target
        if init_model is not None:
            if spec.dense:
                if not init_model.spec.dense:
                    raise RunError(f"{opts.init_from}: a gated run cannot start a dense one")
                model = copy.deepcopy(init_model)
            else:
                model = _gated_from(init_model, spec)
        else:
            model = build_model(spec)
        if target is not None:
            set_gate_target(model, target)
        return model

    if opts.prune_target is not None:
        if not opts.dense:
            raise RunError(
                "--prune-target trains a dense network with the polarization regularizer: add --dense"
            )
        model = _prune_mode(opts, data, fresh, metrics, log)
    elif opts.gate_flop_target is not None:
        if opts.dense:
            raise RunError("--gate-flop-target searches the gating target: it needs a gated network")
        model = _gate_search_mode(opts, data, fresh, metrics, flop_images, log)
    else:
        model = fresh()
        metrics["history"] = train_epochs(
            model, data, opts, opts.epochs, seed=opts.seed, desc="train", log=log
        )

    acc, rates = evaluate(model, data.x_test, data.y_test)
    dense, gated = flop_totals(count_flops(model, input_shape, rates))
    metrics.update(
        {
            "accuracy": acc,
            "gate_rates": rates,
            "flops": {"dense": dense, "gated": gated},
            "flop_reduction": 1.0 - gated / dense,
            "speedup": dense / gated,
            "mid_channels": list(model.spec.mid_channels or model.spec.default_mid_channels()),
            "train_seconds": time.time() - started,
        }
    )
    if metrics.get("unpruned_flops"):
        metrics["total_flop_reduction"] = 1.0 - gated / metrics["unpruned_flops"]
    config = {
        "options": dataclasses.asdict(opts),
        "spec": model.spec.to_dict(),
        "dataset": {"name": data.name, "description": data.description, "input_shape": list(input_shape)},
        "command": command,
        "commands": parents + [command],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _save_run(out, model, config, metrics)
    log(
        f"accuracy {acc:.4f}, FLOPs dense {dense} gated {gated:.0f} ({dense / gated:.2f}x), "
        f"{metrics['train_seconds']:.0f} s; wrote {out}"
    )
    return metrics


def _gate_search_mode(opts, data, fresh, metrics, flop_images, log) -> CifarResNet:
    cache: dict[float, CifarResNet] = {}

    def trial(target: float) -> float:
        model = fresh(target)
        train_epochs(model, data, opts, opts.search_epochs, seed=opts.seed, desc=f"search T={target:g}")
        f, _, _, _ = gated_flop_reduction(model, flop_images, data.input_shape)
        log(f"  gating target T = {target:g}: FLOP reduction {f:.3f} ({1 / max(1 - f, 1e-9):.2f}x)")
        cache[target] = model
        return f

    result = search_gate_target(
        trial, opts.gate_flop_target, delta=opts.search_delta, t0=opts.target, max_trials=opts.max_trials
    )
    metrics["gate_search"] = result.to_dict()
    target = result.params["T"]
    log(f"gating target T = {target:g} ({result.n_trials} trials, converged: {result.converged})")
    if opts.epochs == opts.search_epochs and target in cache:
        return cache[target]
    model = fresh(target)
    metrics["history"] = train_epochs(model, data, opts, opts.epochs, seed=opts.seed, desc="train", log=log)
    return model


def _prune_mode(opts, data, fresh, metrics, log) -> CifarResNet:
    shape = data.input_shape
    cache: dict[tuple[float, float], CifarResNet] = {}

    def polarized(t: float, lam: float, epochs: int, desc: str, log_epochs=None) -> CifarResNet:
        model = fresh()
        init_polarization(model)
        train_epochs(model, data, opts, epochs, seed=opts.seed, polarize=(t, lam), desc=desc, log=log_epochs)
        return model

    def prune(model: CifarResNet) -> tuple[CifarResNet, float, float]:
        gammas = torch.cat([bn.weight.detach() for _, bn in prunable_bns(model)]).numpy()
        thr = pruning_threshold(gammas)
        keep = channels_to_keep(model, thr, opts.prune_multiple_of)
        pruned = prune_resnet(model, keep)
        return pruned, thr, flop_reduction(model, pruned, shape)

    def trial(t: float, lam: float) -> float:
        model = polarized(t, lam, opts.search_epochs, f"search t={t:g} lam={lam:g}")
        _, thr, f = prune(model)
        log(f"  t = {t:g}, lambda = {lam:g}: threshold {thr:.2f}, FLOP reduction {f:.3f}")
        cache[(t, lam)] = model
        return f

    result = algorithm1(
        trial,
        opts.prune_target,
        delta=opts.prune_delta,
        t0=opts.prune_t0,
        lam0=opts.prune_lam0,
        max_trials=opts.max_trials,
    )
    metrics["prune_search"] = result.to_dict()
    t, lam = result.params["t"], result.params["lam"]
    log(f"Algorithm 1: t = {t:g}, lambda = {lam:g} ({result.n_trials} trials, converged: {result.converged})")
    if opts.epochs == opts.search_epochs and (t, lam) in cache:
        model = cache[(t, lam)]
    else:
        model = polarized(t, lam, opts.epochs, "train (polarized)", log)
    unpruned_acc, _ = evaluate(model, data.x_test, data.y_test)
    gammas = torch.cat([bn.weight.detach() for _, bn in prunable_bns(model)]).numpy()
    pruned, thr, f = prune(model)
    pruned_acc, _ = evaluate(pruned, data.x_test, data.y_test)
    hist = np.bincount(np.minimum((np.clip(gammas, 0, 1) / 0.01).astype(int), 99), minlength=100)
    metrics.update(
        {
            "polarization": {"t": t, "lam": lam},
            "pruning_threshold": thr,
            "gamma_histogram": hist.tolist(),
            "polarized_accuracy": unpruned_acc,
            "pruned_accuracy_before_finetune": pruned_acc,
            "prune_flop_reduction": f,
            "unpruned_flops": flop_totals(count_flops(model, shape))[0],
        }
    )
    log(
        f"pruned at threshold {thr:.2f}: FLOP reduction {f:.3f}, "
        f"accuracy {unpruned_acc:.4f} -> {pruned_acc:.4f}"
    )
    if opts.finetune_epochs:
        metrics["finetune_history"] = train_epochs(
            pruned,
            data,
            opts,
            opts.finetune_epochs,
            seed=opts.seed + 1,
            lr=opts.lr * 0.1,
            desc="fine-tune",
            log=log,
        )
    return pruned
