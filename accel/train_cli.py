"""``accel train`` and ``accel trace export``: the PyTorch side of the command line.

Kept apart from :mod:`accel.cli`, which only registers these parsers: nothing here imports PyTorch until a
command runs, so ``accel`` works without it and says how to get it when one of these commands needs it.
Every error a user can cause ends as a :class:`~spec.config_file.ConfigError` (one ``accel: error:`` line).
"""

from __future__ import annotations

import argparse
import shlex

from accel.arguments import float_in, int_in, nonempty_arg, out_path_arg, path_arg
from spec.config import ConfigError
from spec.errors import UserError

__all__ = ["add_trace_export_parser", "add_train_parser", "train_command"]

MODELS = ("resnet8", "resnet20", "resnet56", "resnet18")
TORCH_HINT = (
    "needs PyTorch: pip install '.[train]' (it pins torch==2.13.0, the CPU build kept on these machines; "
    "elsewhere install a CPU build of torch 2.13.0 first)"
)


# Ranges of the numeric options: every float finite, every count bounded (a seed must fit the 32 bits numpy
# and torch seed with; a width above MAX_WIDTH, training.resnet's bound, would allocate terabytes).
MAX_SEED = 2**32 - 1
MAX_WIDTH = 8.0
MAX_GROUPS = 4096  # the widest layer of any model at MAX_WIDTH (resnet18: 512 x 8)
MAX_EPOCHS = 1000
MAX_BATCH = 4096
MAX_THREADS = 256
MAX_COUNT = 2**31 - 1
MAX_SAMPLES = 10_000  # a CIFAR-10 test split
MAX_CALIBRATION = 50_000  # a CIFAR-10 training split


_seed = int_in("seed", 0, MAX_SEED)
_epochs = int_in("epoch count", 1, MAX_EPOCHS)
_threads = int_in("thread count", 1, MAX_THREADS)
_fraction = float_in("fraction", 0, 1, lo_open=True, hi_open=True)


# (dest, flags, kwargs) of ``accel train``; the defaults are TrainOptions' own.
_TRAIN_ARGS: list[tuple[str, tuple[str, ...], dict]] = [
    ("model", ("--model",), {"choices": MODELS, "default": "resnet20", "help": "network (resnet20)"}),
    (
        "width",
        ("--width",),
        {
            "type": float_in("width", 0, MAX_WIDTH, lo_open=True),
            "default": 1.0,
            "metavar": "X",
            "help": f"channel multiplier, (0, {MAX_WIDTH:g}] (1)",
        },
    ),
    (
        "dataset",
        ("--dataset",),
        {"choices": ("digits", "cifar10"), "default": "digits", "help": "data (digits)"},
    ),
    (
        "data_dir",
        ("--data-dir",),
        {
            "type": nonempty_arg("folder name"),
            "default": None,
            "metavar": "DIR",
            "help": "CIFAR-10 python batches (cifar10 only)",
        },
    ),
    ("dense", ("--dense",), {"action": "store_true", "help": "plain dense convolutions (the baseline)"}),
    (
        "gate_groups",
        ("--gating-groups",),
        {
            "type": int_in("group count", 1, MAX_GROUPS),
            "default": 2,
            "metavar": "G",
            "help": "CGNet channel groups G (2); at most the channels of the narrowest gated layers, and "
            "dividing the channel counts of the convolutions it gates",
        },
    ),
    (
        "base_fraction",
        ("--base-fraction",),
        {
            "type": _fraction,
            "default": 0.5,
            "metavar": "F",
            "help": "base-path share of inputs when G = 1, (0, 1) (0.5)",
        },
    ),
    (
        "target",
        ("--target",),
        {
            "type": float_in("gating target", -10, 10),
            "default": 1.0,
            "metavar": "T",
            "help": "gating target T, [-10, 10] (1.0)",
        },
    ),
    (
        "no_shuffle",
        ("--no-shuffle",),
        {"action": "store_true", "help": "no channel shuffle after gated convs"},
    ),
    (
        "epochs",
        ("--epochs",),
        {"type": _epochs, "default": 15, "metavar": "N", "help": f"epochs, 1..{MAX_EPOCHS} (15)"},
    ),
    (
        "batch_size",
        ("--batch-size",),
        {
            "type": int_in("batch size", 1, MAX_BATCH),
            "default": 128,
            "metavar": "N",
            "help": f"1..{MAX_BATCH} (128)",
        },
    ),
    (
        "lr",
        ("--lr",),
        {
            "type": float_in("learning rate", 0, 10, lo_open=True),
            "default": 0.1,
            "metavar": "X",
            "help": "learning rate, (0, 10] (0.1)",
        },
    ),
    (
        "weight_decay",
        ("--weight-decay",),
        {
            "type": float_in("weight decay", 0, 1),
            "default": 5e-4,
            "metavar": "X",
            "help": "[0, 1] (5e-4)",
        },
    ),
    (
        "seed",
        ("--seed",),
        {"type": _seed, "default": 0, "metavar": "N", "help": f"training seed, 0..{MAX_SEED} (0)"},
    ),
    (
        "split_seed",
        ("--split-seed",),
        {
            "type": _seed,
            "default": 0,
            "metavar": "N",
            "help": f"seed of the digits train/test split, 0..{MAX_SEED} (0)",
        },
    ),
    (
        "threads",
        ("--threads",),
        {"type": _threads, "default": 2, "metavar": "N", "help": f"torch threads, 1..{MAX_THREADS} (2)"},
    ),
    (
        "max_batches",
        ("--max-batches",),
        {
            "type": int_in("batch count", 0, MAX_COUNT),
            "default": 0,
            "metavar": "N",
            "help": "batches per epoch, 0 = all (quick runs)",
        },
    ),
    (
        "max_test",
        ("--max-test",),
        {
            "type": int_in("image count", 0, MAX_COUNT),
            "default": 0,
            "metavar": "N",
            "help": "test images used, 0 = all (quick runs)",
        },
    ),
    (
        "gate_flop_target",
        ("--gate-flop-target",),
        {
            "type": _fraction,
            "default": None,
            "metavar": "F",
            "help": "search T for this fraction of FLOPs removed, (0, 1) (0.7 = 3.3x) before training",
        },
    ),
    (
        "prune_target",
        ("--prune-target",),
        {
            "type": _fraction,
            "default": None,
            "metavar": "F",
            "help": "polarization pruning: Algorithm 1 for this FLOP reduction, (0, 1), then fine-tune "
            "(implies --dense)",
        },
    ),
    (
        "prune_delta",
        ("--prune-delta",),
        {"type": _fraction, "default": 0.05, "metavar": "D", "help": "(0, 1) (0.05)"},
    ),
    (
        "prune_t0",
        ("--prune-t0",),
        {
            "type": float_in("polarization t", 0, 10, lo_open=True),
            "default": 1.2,
            "metavar": "T",
            "help": "initial t, (0, 10] (1.2)",
        },
    ),
    (
        "prune_lam0",
        ("--prune-lam0",),
        {
            "type": float_in("polarization lambda", 0, 1, lo_open=True),
            "default": 5e-3,
            "metavar": "L",
            "help": "initial lambda, (0, 1] (5e-3)",
        },
    ),
    (
        "prune_multiple_of",
        ("--prune-multiple-of",),
        {
            "type": int_in("channel multiple", 1, MAX_GROUPS),
            "default": 1,
            "metavar": "M",
            "help": f"keep channel counts multiples of M, 1..{MAX_GROUPS} (1)",
        },
    ),
    (
        "search_epochs",
        ("--search-epochs",),
        {
            "type": _epochs,
            "default": 4,
            "metavar": "N",
            "help": f"epochs per search trial, 1..{MAX_EPOCHS} (4)",
        },
    ),
    (
        "search_delta",
        ("--search-delta",),
        {"type": _fraction, "default": 0.05, "metavar": "D", "help": "(0, 1) (0.05)"},
    ),
    (
        "max_trials",
        ("--max-trials",),
        {"type": int_in("trial count", 1, 100), "default": 10, "metavar": "N", "help": "1..100 (10)"},
    ),
    (
        "finetune_epochs",
        ("--finetune-epochs",),
        {
            "type": int_in("epoch count", 0, MAX_EPOCHS),
            "default": 5,
            "metavar": "N",
            "help": f"fine-tuning epochs after pruning, 0..{MAX_EPOCHS} (5)",
        },
    ),
    (
        "init_from",
        ("--init-from",),
        {
            "type": nonempty_arg("run folder name"),
            "default": None,
            "metavar": "RUN_DIR",
            "help": "start from a run's (pruned) weights (same --model and --width)",
        },
    ),
    (
        "baseline",
        ("--baseline",),
        {
            "type": nonempty_arg("run folder name"),
            "default": None,
            "metavar": "RUN_DIR",
            "help": "dense baseline run (its accuracy)",
        },
    ),
]


def add_train_parser(sub) -> None:
    """Register ``accel train`` on the top-level subparsers."""
    p = sub.add_parser(
        "train",
        help="train a dense, channel-gated or polarization-pruned ResNet (needs PyTorch)",
        description=(
            "Train a CIFAR-style ResNet on the digits set (upsampled to 32x32) or CIFAR-10 and write a run "
            "directory (config.json, model.pt, metrics.json) for 'accel trace export'. Modes: plain training "
            "(dense with --dense, else channel-gated); --gate-flop-target searches the gating target T "
            "first; "
            "--prune-target runs Algorithm 1 of the polarization paper, prunes and fine-tunes; --init-from "
            "starts from another run (a pruned run, then gated: pruned and gated)."
        ),
    )
    for dest, flags, kwargs in _TRAIN_ARGS:
        p.add_argument(*flags, dest=dest, **kwargs)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--out",
        required=True,
        type=out_path_arg,
        metavar="RUN_DIR",
        help="run directory (created or replaced)",
    )
    p.set_defaults(func=_cmd_train)


def add_trace_export_parser(trace_sub) -> None:
    """Register ``accel trace export`` on the ``accel trace`` subparsers."""
    p = trace_sub.add_parser(
        "export",
        help="quantize a trained run to int8 and write its layer trace (needs PyTorch)",
        description=(
            "Quantize the network of a run directory to int8 (calibrated on training images), simulate it "
            "in integers on the test images (accuracy, gate agreement with the float model, dynamic "
            "output-channel pruning at thresholds 0, 0.05, 0.1, 0.2) and write the trace with the int8 "
            "inputs of the first N test images."
        ),
    )
    p.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="directory written by 'accel train'")
    p.add_argument("--out", required=True, type=out_path_arg, metavar="FILE", help="trace file (.npz)")
    p.add_argument(
        "--samples",
        type=int_in("sample count", 1, MAX_SAMPLES),
        default=4,
        metavar="N",
        help="sample images stored, 1..the run's test images (4)",
    )
    p.add_argument(
        "--name",
        type=nonempty_arg("name"),
        default=None,
        help="network name in the trace (default: from the run)",
    )
    p.add_argument(
        "--calibration",
        type=int_in("calibration image count", 1, MAX_CALIBRATION),
        default=256,
        metavar="N",
        help=f"calibration images, 1..{MAX_CALIBRATION} (at most the training split) (256)",
    )
    p.add_argument(
        "--percentile",
        type=float_in("percentile", 0, 100, lo_open=True),
        default=99.99,
        metavar="P",
        help="activation scale percentile, (0, 100] (99.99)",
    )
    p.add_argument(
        "--threads", type=_threads, default=2, metavar="N", help=f"torch threads, 1..{MAX_THREADS} (2)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_trace_export)


def train_command(args: argparse.Namespace) -> str:
    """The canonical ``accel train`` command line of parsed ``args`` (options that differ from their
    defaults, plus model, epochs, seed and output), as recorded in the run and the trace."""
    parts = ["accel", "train"]
    always = {"model", "epochs", "seed"}
    for dest, flags, kwargs in _TRAIN_ARGS:
        value = getattr(args, dest)
        if kwargs.get("action") == "store_true":
            if value:
                parts.append(flags[0])
            continue
        if value is None or (dest not in always and value == kwargs.get("default")):
            continue
        parts += [flags[0], f"{value:g}" if isinstance(value, float) else str(value)]
    parts += ["--out", str(args.out)]
    return shlex.join(parts)


def _torch_or_fail(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError(f"{what} {TORCH_HINT}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    _torch_or_fail("accel train")
    from training.train import TrainOptions, train_run

    if args.prune_target is not None:
        args.dense = True
    if args.data_dir is not None and args.dataset != "cifar10":
        raise ConfigError("--data-dir is for --dataset cifar10")
    opts = TrainOptions(
        **{dest: getattr(args, dest) for dest, _, _ in _TRAIN_ARGS if dest != "no_shuffle"},
        shuffle=not args.no_shuffle,
        progress=not args.no_progress,
    )
    try:
        train_run(opts, args.out, command=train_command(args))
    except UserError:
        raise
    except ValueError as exc:  # bad model options
        raise ConfigError(str(exc)) from None
    return 0


def _cmd_trace_export(args: argparse.Namespace) -> int:
    _torch_or_fail("accel trace export")
    from training.export import export_run

    command = shlex.join(
        [
            "accel",
            "trace",
            "export",
            str(args.run_dir),
            "--out",
            str(args.out),
            "--samples",
            str(args.samples),
        ]
        + (["--name", args.name] if args.name else [])
        + (["--calibration", str(args.calibration)] if args.calibration != 256 else [])
        + ([f"--percentile={args.percentile:g}"] if args.percentile != 99.99 else [])
    )
    try:
        export_run(
            args.run_dir,
            args.out,
            samples=args.samples,
            command=command,
            name=args.name,
            calibration=args.calibration,
            percentile=args.percentile,
            threads=args.threads,
            progress=not args.no_progress,
        )
    except UserError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0
