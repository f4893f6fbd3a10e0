"""``accel train`` and ``accel trace export``: the PyTorch side of the command line.

Kept apart from :mod:`accel.cli`, which only registers these parsers: nothing here imports PyTorch until a
command runs, so ``accel`` works without it and says how to get it when one of these commands needs it.
Every error a user can cause ends as a :class:`~accel.config.ConfigError` (one ``accel: error:`` line).
"""

from __future__ import annotations

import argparse
import shlex

from accel.cli import number_arg
from accel.config import ConfigError, path_arg
from accel.errors import UserError
from accel.outdir import check_out_path

__all__ = ["add_trace_export_parser", "add_train_parser", "train_command"]

MODELS = ("resnet8", "resnet20", "resnet56", "resnet18")
TORCH_HINT = (
    "needs PyTorch: pip install '.[train]' (it pins torch==2.13.0, the CPU build kept on these machines; "
    "elsewhere install a CPU build of torch 2.13.0 first)"
)


_positive_int = number_arg(int, "count", lambda v: v >= 1, "an integer >= 1")
_count = number_arg(int, "count", lambda v: v >= 0, "an integer >= 0")
_fraction = number_arg(float, "fraction", lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
_positive = number_arg(float, "value", lambda v: v > 0, "a positive number")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


# (dest, flags, kwargs) of ``accel train``; the defaults are TrainOptions' own.
_TRAIN_ARGS: list[tuple[str, tuple[str, ...], dict]] = [
    ("model", ("--model",), {"choices": MODELS, "default": "resnet20", "help": "network (resnet20)"}),
    (
        "width",
        ("--width",),
        {"type": _positive, "default": 1.0, "metavar": "X", "help": "channel multiplier"},
    ),
    (
        "dataset",
        ("--dataset",),
        {"choices": ("digits", "cifar10"), "default": "digits", "help": "data (digits)"},
    ),
    (
        "data_dir",
        ("--data-dir",),
        {"type": str, "default": None, "metavar": "DIR", "help": "CIFAR-10 python batches (cifar10 only)"},
    ),
    ("dense", ("--dense",), {"action": "store_true", "help": "plain dense convolutions (the baseline)"}),
    (
        "gate_groups",
        ("--gating-groups",),
        {"type": _positive_int, "default": 2, "metavar": "G", "help": "CGNet channel groups G (2)"},
    ),
    (
        "base_fraction",
        ("--base-fraction",),
        {"type": _fraction, "default": 0.5, "metavar": "F", "help": "base-path share of inputs when G = 1"},
    ),
    (
        "target",
        ("--target",),
        {"type": _number, "default": 1.0, "metavar": "T", "help": "gating target T (1.0)"},
    ),
    (
        "no_shuffle",
        ("--no-shuffle",),
        {"action": "store_true", "help": "no channel shuffle after gated convs"},
    ),
    ("epochs", ("--epochs",), {"type": _positive_int, "default": 15, "metavar": "N", "help": "epochs (15)"}),
    (
        "batch_size",
        ("--batch-size",),
        {"type": _positive_int, "default": 128, "metavar": "N", "help": "(128)"},
    ),
    ("lr", ("--lr",), {"type": _positive, "default": 0.1, "metavar": "X", "help": "learning rate (0.1)"}),
    ("weight_decay", ("--weight-decay",), {"type": float, "default": 5e-4, "metavar": "X", "help": "(5e-4)"}),
    ("seed", ("--seed",), {"type": _count, "default": 0, "metavar": "N", "help": "training seed (0)"}),
    (
        "split_seed",
        ("--split-seed",),
        {"type": _count, "default": 0, "metavar": "N", "help": "seed of the digits train/test split (0)"},
    ),
    (
        "threads",
        ("--threads",),
        {"type": _positive_int, "default": 2, "metavar": "N", "help": "torch threads"},
    ),
    (
        "max_batches",
        ("--max-batches",),
        {"type": _count, "default": 0, "metavar": "N", "help": "batches per epoch, 0 = all (quick runs)"},
    ),
    (
        "max_test",
        ("--max-test",),
        {"type": _count, "default": 0, "metavar": "N", "help": "test images used, 0 = all (quick runs)"},
    ),
    (
        "gate_flop_target",
        ("--gate-flop-target",),
        {
            "type": _fraction,
            "default": None,
            "metavar": "F",
            "help": "search T for this fraction of FLOPs removed (0.7 = 3.3x) before training",
        },
    ),
    (
        "prune_target",
        ("--prune-target",),
        {
            "type": _fraction,
            "default": None,
            "metavar": "F",
            "help": "polarization pruning: Algorithm 1 for this FLOP reduction, then fine-tune "
            "(implies --dense)",
        },
    ),
    (
        "prune_delta",
        ("--prune-delta",),
        {"type": _fraction, "default": 0.05, "metavar": "D", "help": "(0.05)"},
    ),
    (
        "prune_t0",
        ("--prune-t0",),
        {"type": _positive, "default": 1.2, "metavar": "T", "help": "initial t (1.2)"},
    ),
    (
        "prune_lam0",
        ("--prune-lam0",),
        {"type": _positive, "default": 5e-3, "metavar": "L", "help": "initial lambda (5e-3)"},
    ),
    (
        "prune_multiple_of",
        ("--prune-multiple-of",),
        {"type": _positive_int, "default": 1, "metavar": "M", "help": "keep channel counts multiples of M"},
    ),
    (
        "search_epochs",
        ("--search-epochs",),
        {"type": _positive_int, "default": 4, "metavar": "N", "help": "epochs per search trial (4)"},
    ),
    (
        "search_delta",
        ("--search-delta",),
        {"type": _fraction, "default": 0.05, "metavar": "D", "help": "(0.05)"},
    ),
    ("max_trials", ("--max-trials",), {"type": _positive_int, "default": 10, "metavar": "N", "help": "(10)"}),
    (
        "finetune_epochs",
        ("--finetune-epochs",),
        {"type": _count, "default": 5, "metavar": "N", "help": "fine-tuning epochs after pruning (5)"},
    ),
    (
        "init_from",
        ("--init-from",),
        {"type": str, "default": None, "metavar": "RUN_DIR", "help": "start from a run's (pruned) weights"},
    ),
    (
        "baseline",
        ("--baseline",),
        {"type": str, "default": None, "metavar": "RUN_DIR", "help": "dense baseline run (its accuracy)"},
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
        type=check_out_path,
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
    p.add_argument("--out", required=True, type=check_out_path, metavar="FILE", help="trace file (.npz)")
    p.add_argument("--samples", type=_positive_int, default=4, metavar="N", help="sample images stored (4)")
    p.add_argument("--name", default=None, help="network name in the trace (default: from the run)")
    p.add_argument(
        "--calibration", type=_positive_int, default=256, metavar="N", help="calibration images (256)"
    )
    p.add_argument(
        "--percentile", type=_positive, default=99.99, metavar="P", help="activation scale percentile (99.99)"
    )
    p.add_argument("--threads", type=_positive_int, default=2, metavar="N", help="torch threads (2)")
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
    from traces.train import TrainOptions, train_run

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
    from traces.export import export_run

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
