"""Training of the traced networks: dense baselines, CGNet gating, polarization pruning; run directories.

One call of :func:`train_run` (the ``accel train`` command) does one of:

* **plain training** of a dense (``dense=True``) or channel-gated network for ``epochs`` epochs;
* **gating-target search** (``gate_flop_target`` F*, a fraction of FLOPs removed): short trainings of
  ``search_epochs`` with different targets ``T`` (:func:`training.search.search_gate_target`,
  ``F`` measured on
  training images), then the full training with the ``T`` found;
* **polarization pruning** (``prune_target`` F*): Algorithm 1 (:func:`training.search.algorithm1`) over
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

from outfiles.folder import OutputFolder
from spec.errors import UserError
from training.data import Dataset, load_dataset
from training.flops import count_flops, flop_totals
from training.gating import LAMBDA_G, collect_gate_stats, gate_penalty, gate_rates, set_gate_target
from training.polarization import (
    channels_to_keep,
    clamp_gammas,
    flop_reduction,
    init_polarization,
    polarization_loss,
    prunable_bns,
    prune_resnet,
    pruning_threshold,
)
from training.resnet import CifarResNet, ModelSpec, build_model
from training.search import algorithm1, search_gate_target

__all__ = [
    "RUN_FILES",
    "RunError",
    "TrainOptions",
    "check_fits_data",
    "evaluate",
    "gated_flop_reduction",
    "load_run",
    "run_commands",
    "run_data_options",
    "train_epochs",
    "train_run",
]

FLOP_SUBSET = 256  # training images on which a search trial measures gate rates
MAX_SEED = 2**32 - 1
DATASETS = ("digits", "digits-32", "digits32", "cifar10")  # the names training.data.load_dataset takes


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
        for step, (x, y) in enumerate(bar):
            out = model(x)
            loss = F.cross_entropy(out, y) + gate_penalty(model, opts.lam_g)
            if polarize is not None:
                loss = loss + polarization_loss(model, *polarize)
            value = float(loss.detach())
            if not math.isfinite(value):
                _diverged(f"the loss became {value}", desc, epoch, epochs, step, lr)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
            clamp_gammas(model, polarized=polarize is not None)
            loss_sum += value * y.numel()
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
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            _diverged(f"{name} became non-finite", desc, epochs - 1, epochs, steps - 1, lr)
    model.eval()
    return history


def _diverged(what: str, desc: str, epoch: int, epochs: int, step: int, lr: float):
    raise RunError(
        f"training diverged: {what} in {desc} epoch {epoch + 1}/{epochs}, step {step + 1} (learning rate "
        f"{lr:g}); try a smaller --lr"
    )


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


# The files of a run directory (outfiles.folder.OutputFolder refuses a folder holding anything else).
RUN_FILES = ("model.pt", "config.json", "metrics.json")


def _save_run(out: Path, model: nn.Module, config: dict, metrics: dict) -> None:
    # Staged and swapped in whole: a run directory never mixes two runs or holds half a run. Strict JSON
    # (no NaN): what load_run reads back.
    texts = {
        name: json.dumps(d, indent=2, allow_nan=False) + "\n"
        for name, d in [("config.json", config), ("metrics.json", metrics)]
    }
    with OutputFolder(out, RUN_FILES, "accel train") as staging:
        try:  # a failure names the destination, not the staging folder (which is removed)
            torch.save(model.state_dict(), staging / "model.pt")
            for name, text in texts.items():
                (staging / name).write_text(text)
        except OSError as exc:
            raise RunError(f"{out}: cannot write the run ({exc.strerror or exc})") from None
        except RuntimeError as exc:  # torch's writer reports a failed write this way
            raise RunError(f"{out}: cannot write the run ({_first_line(exc, sentence=True)})") from None


def _non_finite(value, where: str = "") -> str | None:
    """The dotted path of the first NaN or infinity in a parsed JSON value, else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, v in items:
        sub = f"{where}{key}" if key.startswith("[") else (f"{where}.{key}" if where else key)
        found = _non_finite(v, sub)
        if found is not None:
            return found
    return None


def _read_json(path: Path) -> dict:
    """A run's JSON file: a JSON object of finite numbers, else a :class:`RunError` naming the file."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise RunError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text") from None
    except RecursionError:
        raise RunError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a JSON object, found {type(data).__name__}")
    bad = _non_finite(data)
    if bad is not None:
        raise RunError(f"{path}: {bad} is not a finite number (NaN or infinity is not valid JSON)")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_run_config(config: dict, path: Path) -> ModelSpec:
    """The model spec of a run's ``config.json`` (``path``), with the fields a run is read by checked."""
    if "spec" not in config:
        raise RunError(f"{path}: field 'spec' (the model) is missing")
    if not isinstance(config["spec"], dict):
        raise RunError(
            f"{path}: spec = {_short(config['spec'])}: expected a JSON object (the model's fields)"
        )
    try:
        spec = ModelSpec.from_dict(config["spec"])
    except ValueError as exc:
        raise RunError(f"{path}: spec.{exc}") from None
    opts = config.get("options", {})
    if not isinstance(opts, dict):
        raise RunError(f"{path}: options = {_short(opts)}: expected a JSON object")
    checks = {
        "dataset": (lambda v: v in DATASETS, f"one of {', '.join(DATASETS)}"),
        "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
        "split_seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]"),
        "data_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "null or a folder name"),
        "max_test": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    }
    for key, (ok, expected) in checks.items():
        if key in opts and not ok(opts[key]):
            raise RunError(f"{path}: options.{key} = {_short(opts[key])}: expected {expected}")
    if opts.get("dataset") == "cifar10" and not opts.get("data_dir"):
        raise RunError(f"{path}: options.data_dir is missing: a cifar10 run names its data folder")
    if "command" in config and not isinstance(config["command"], str):
        raise RunError(f"{path}: command = {_short(config['command'])}: expected a string")
    commands = config.get("commands", [])
    if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
        raise RunError(f"{path}: commands = {_short(commands)}: expected a list of strings")
    return spec


def _check_run_metrics(metrics: dict, path: Path) -> None:
    """The fields of a run's ``metrics.json`` that runs building on it and traces take over."""
    for key in ("accuracy", "dense_accuracy", "init_accuracy"):
        value = metrics.get(key)
        if value is not None and not (_is_number(value) and 0.0 <= value <= 1.0):
            raise RunError(f"{path}: {key} = {_short(value)}: expected null or a number in [0, 1]")
    value = metrics.get("unpruned_flops")
    if value is not None and not (_is_number(value) and value > 0):
        raise RunError(f"{path}: unpruned_flops = {_short(value)}: expected null or a positive number")


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_line(exc: BaseException, limit: int = 160, sentence: bool = False) -> str:
    """``Type: first line of the message`` (its first sentence with ``sentence``), at most ``limit`` long."""
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")
    if sentence:
        line = line.split(". ")[0].rstrip(".")
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _load_weights(model: nn.Module, path: Path, spec_file: Path) -> None:
    """Load a run's ``model.pt`` into ``model`` (built from ``spec_file``'s spec); every mismatch, damaged
    file or non-finite weight is a :class:`RunError` naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise RunError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - whatever torch.load gives up with, the file is not usable
        raise RunError(
            f"{path}: damaged, truncated or not a PyTorch state dict ({_first_line(exc, sentence=True)})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise RunError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    expected = model.state_dict()
    about = f"the network of {spec_file}'s spec"
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise RunError(f"{path}: does not fit {about}: {missing[0]!r}{more} missing")
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise RunError(f"{path}: does not fit {about}: unexpected {unexpected[0]!r}{more}")
    for key, want in expected.items():
        got = state[key]
        if (
            got.layout != torch.strided
            or got.is_complex()
            or got.is_floating_point() != want.is_floating_point()
        ):
            raise RunError(f"{path}: {key} is a {got.dtype} tensor, {about} has {want.dtype}")
        if tuple(got.shape) != tuple(want.shape):
            raise RunError(
                f"{path}: does not fit {about}: {key} has shape {list(got.shape)}, the network "
                f"{list(want.shape)} (model.pt and config.json come from different runs?)"
            )
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise RunError(f"{path}: {key} holds NaN or infinite values")
        if key.endswith("running_var") and bool((got < 0).any()):
            raise RunError(f"{path}: {key} holds negative variances")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{path}: does not fit {about} ({_first_line(exc)})") from None


def load_run(run_dir: str | Path) -> tuple[CifarResNet, dict, dict]:
    """``(model in eval mode, config, metrics)`` of a run directory written by :func:`train_run`.

    Whatever in the folder cannot be used (a missing or damaged file, a config.json field of the wrong type
    or out of range, NaN, weights that do not fit the spec) is a :class:`RunError` naming the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "does not exist" if not run_dir.exists() else "is not a folder"
        raise RunError(f"{run_dir}: not a run directory (it {what})")
    for name in ("config.json", "metrics.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise RunError(f"{run_dir}: not a run directory ({name} is missing)")
    config_file, metrics_file = run_dir / "config.json", run_dir / "metrics.json"
    config = _read_json(config_file)
    metrics = _read_json(metrics_file)
    spec = _check_run_config(config, config_file)
    _check_run_metrics(metrics, metrics_file)
    try:
        model = build_model(spec)
    except ValueError as exc:
        raise RunError(f"{config_file}: spec: {exc}") from None
    _load_weights(model, run_dir / "model.pt", config_file)
    model.eval()
    return model, config, metrics


def run_commands(config: dict) -> list[str]:
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


def _gated_from(pruned: CifarResNet, spec: ModelSpec, run_dir=None) -> CifarResNet:
    """A gated network with ``pruned``'s architecture, starting from its weights (gate BN and Δ fresh)."""
    spec.mid_channels = list(pruned.spec.mid_channels or pruned.spec.default_mid_channels())
    spec.pruned_channels = copy.deepcopy(pruned.spec.pruned_channels)
    gated = build_model(spec)
    missing, unexpected = gated.load_state_dict(pruned.state_dict(), strict=False)
    bad = [k for k in missing if "bn_gate" not in k and not k.endswith("threshold")]
    if bad or unexpected:
        where = f"{run_dir}: " if run_dir is not None else ""
        raise RunError(
            f"{where}cannot start the gated network from the run's weights: {(bad or unexpected)[0]}"
        )
    return gated


def _check_gating(spec: ModelSpec, log: Callable[[str], None]) -> None:
    """Refuse a grouping that leaves the network ungated, or has more groups than its narrowest gated
    layers have channels; say which block convolutions stay dense when only some do."""
    if spec.dense:
        return
    g = spec.gate_groups
    convs = spec.block_convs()
    _, widths, _ = spec.stages()
    counts = sorted({c for _, c_in, c_out in convs for c in (c_in, c_out)})
    common = math.gcd(*counts)
    hint = (
        f"G = 1 or a divisor of {common} gates every block convolution"
        if common > 1
        else "G = 1 gates every block convolution"
    ) + ", --dense trains the dense network"
    what = f"{spec.arch} at width {spec.width:g}" + (" (pruned)" if spec.mid_channels is not None else "")
    if g > min(widths):
        raise RunError(
            f"--gating-groups {g}: more groups than the {min(widths)} channels of the narrowest gated layers "
            f"of {what}; {hint}"
        )
    gated = [name for name, c_in, c_out in convs if spec.gates_conv(c_in, c_out)]
    if not gated:
        need = f"channel counts divisible by {g}" if g > 1 else "2 or more input channels"
        raise RunError(
            f"--gating-groups {g}: no block convolution of {what} has {need} (channels "
            f"{', '.join(map(str, counts))}): the network would be ungated; {hint}"
        )
    if len(gated) < len(convs):
        dense = [name for name, _, _ in convs if name not in set(gated)]
        log(
            f"note: {len(dense)} of {len(convs)} block convolutions stay dense (channel counts not divisible "
            f"by --gating-groups {g}): {', '.join(dense[:4])}{', ...' if len(dense) > 4 else ''}"
        )


def _check_init_run(opts: TrainOptions, init: ModelSpec) -> None:
    """A run started from another keeps its network: same model and width, dense only from dense."""
    if init.arch != opts.model or init.width != opts.width:
        raise RunError(
            f"{opts.init_from}: a {init.arch} run at width {init.width:g}, this run asks for --model "
            f"{opts.model} --width {opts.width:g}: pass the run's --model and --width"
        )
    if opts.dense and not init.dense:
        raise RunError(f"{opts.init_from}: a gated run cannot start a dense one")


def check_fits_data(spec: ModelSpec, data: Dataset, run_dir) -> None:
    """A run's network takes the data set's images and predicts its classes."""
    if spec.in_channels != data.input_shape[0] or spec.num_classes != data.num_classes:
        raise RunError(
            f"{run_dir}: the network takes {spec.in_channels} input channels and predicts "
            f"{spec.num_classes} classes; {data.name} has {data.input_shape[0]} channels and "
            f"{data.num_classes} classes"
        )


# ------------------------------------------------------------------------------------------------------
# The modes


def train_run(
    opts: TrainOptions, out: str | Path, command: str = "", log: Callable[[str], None] = print
) -> dict:
    """Train according to ``opts`` (module docstring), write the run directory ``out``; returns metrics."""
    torch.set_num_threads(max(1, opts.threads))
    out = Path(out)
    OutputFolder(out, RUN_FILES, "accel train").check()  # refuse the destination before training
    started = time.time()
    if opts.prune_target is not None and not opts.dense:
        raise RunError("--prune-target trains a dense network with the polarization regularizer: add --dense")
    if opts.gate_flop_target is not None and opts.dense:
        raise RunError("--gate-flop-target searches the gating target: it needs a gated network")
    parents: list[str] = []
    metrics: dict = {}

    if opts.baseline:
        _, bconfig, bmetrics = load_run(opts.baseline)
        _check_same_data(opts, bconfig, opts.baseline)
        parents += run_commands(bconfig)
        metrics["dense_accuracy"] = bmetrics.get("accuracy")
        metrics["baseline_run"] = str(opts.baseline)

    init_model = None
    if opts.init_from:
        init_model, iconfig, imetrics = load_run(opts.init_from)
        _check_same_data(opts, iconfig, opts.init_from)
        parents += [c for c in run_commands(iconfig) if c not in parents]
        metrics["init_from"] = str(opts.init_from)
        metrics["init_accuracy"] = imetrics.get("accuracy")
        if "dense_accuracy" not in metrics:
            if imetrics.get("dense_accuracy") is not None:
                metrics["dense_accuracy"] = imetrics["dense_accuracy"]
            elif init_model.spec.dense and not init_model.spec.pruned_channels:
                metrics["dense_accuracy"] = imetrics.get("accuracy")  # the init run is the dense baseline
        if imetrics.get("unpruned_flops") is not None:
            metrics["unpruned_flops"] = imetrics["unpruned_flops"]
        _check_init_run(opts, init_model.spec)

    spec = opts.spec(10)  # the grouping is checked before the data are loaded (num_classes plays no part)
    if init_model is not None and not spec.dense:
        spec.mid_channels = list(init_model.spec.mid_channels or init_model.spec.default_mid_channels())
    _check_gating(spec, log)

    data = _load_data(opts)
    if init_model is not None:
        check_fits_data(init_model.spec, data, opts.init_from)
    input_shape = data.input_shape
    flop_images = data.x_train[:FLOP_SUBSET]

    def fresh(target: float | None = None) -> CifarResNet:
        torch.manual_seed(opts.seed)
        spec = opts.spec(data.num_classes)
        if target is not None:
            spec.target = target
        if init_model is not None:
            if spec.dense:
                model = copy.deepcopy(init_model)
            else:
                model = _gated_from(init_model, spec, opts.init_from)
        else:
            model = build_model(spec)
        if target is not None:
            set_gate_target(model, target)
        return model

    if opts.prune_target is not None:
        model = _prune_mode(opts, data, fresh, metrics, log)
    elif opts.gate_flop_target is not None:
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
