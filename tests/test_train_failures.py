"""Failure paths of ``accel train`` and ``accel trace export``: a damaged run folder, absurd option values, a
grouping that leaves the network ungated, bad CIFAR-10 files, an unwritable destination, a diverging run.

Every one ends in one ``accel: error:`` line (or an argparse usage error naming the option) with exit
status 2, no traceback, and nothing left behind.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_run import leftovers as _leftovers
from cli_run import one_line_error as _one_line_error
from cli_run import run as _run
from cli_run import usage_error as _usage_error

torch = pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install '.[train]')")


TINY = ["--model", "resnet8", "--width", "0.5", "--epochs", "1", "--max-batches", "2", "--batch-size", "16"]
TINY += ["--max-test", "24", "--no-progress", "--seed", "3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    code, _, err = _run("train", *TINY, "--out", run)
    assert code == 0, err
    return run


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------------------------------------
# 1. A damaged run folder: trace export, --init-from and --baseline


def _edit_json(name: str, edit):
    def damage(run: Path) -> None:
        data = json.loads((run / name).read_text())
        edit(data)
        (run / name).write_text(json.dumps(data))  # NaN is written as NaN (what json.loads accepts)

    return damage


def _edit_state(edit):
    def damage(run: Path) -> None:
        state = torch.load(run / "model.pt", weights_only=True)
        state = edit(state)
        torch.save(state, run / "model.pt")

    return damage


def _set(key: str, value):
    def edit(data: dict) -> None:
        target = data
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value

    return edit


def _nan_weight(state):
    state["fc.weight"][0, 0] = float("nan")
    return state


def _truncate(run: Path) -> None:
    (run / "model.pt").write_bytes((run / "model.pt").read_bytes()[:1000])


def _not_a_folder(run: Path) -> None:
    shutil.rmtree(run)
    run.write_text("a file\n")


DAMAGE = {
    "model-garbage": (lambda run: (run / "model.pt").write_bytes(b"garbage\n"), ["model.pt", "damaged"]),
    "model-truncated": (_truncate, ["model.pt", "truncated"]),
    "model-not-a-dict": (_edit_state(lambda state: [1, 2]), ["model.pt", "state dict"]),
    "model-nan-weight": (_edit_state(_nan_weight), ["model.pt", "fc.weight", "NaN"]),
    "model-extra-tensor": (_edit_state(lambda s: {**s, "extra": torch.zeros(1)}), ["model.pt", "'extra'"]),
    "model-missing-tensor": (
        _edit_state(lambda s: {k: v for k, v in s.items() if k != "fc.bias"}),
        ["model.pt", "'fc.bias'", "missing"],
    ),
    "spec-missing": (_edit_json("config.json", lambda c: c.pop("spec")), ["config.json", "'spec'"]),
    "spec-string": (_edit_json("config.json", _set("spec", "x")), ["config.json", "spec = 'x'"]),
    "spec-width-edited": (_edit_json("config.json", _set("spec.width", 1.0)), ["model.pt", "config.json"]),
    "spec-classes-edited": (_edit_json("config.json", _set("spec.num_classes", 5)), ["model.pt", "fc."]),
    "spec-alpha-nan": (
        _edit_json("config.json", _set("spec.alpha", float("nan"))),
        ["config.json", "spec.alpha"],
    ),
    "spec-huge-width": (_edit_json("config.json", _set("spec.width", 1e9)), ["config.json", "spec.width"]),
    "spec-arch": (_edit_json("config.json", _set("spec.arch", "resnet99")), ["config.json", "spec.arch"]),
    "spec-mid-channels": (
        _edit_json("config.json", _set("spec.mid_channels", [1, 2])),
        ["config.json", "spec.mid_channels"],
    ),
    "spec-groups-text": (_edit_json("config.json", _set("spec.gate_groups", "2")), ["spec.gate_groups"]),
    "config-not-json": (lambda run: (run / "config.json").write_text("{"), ["config.json", "not valid JSON"]),
    "config-a-list": (lambda run: (run / "config.json").write_text("[]"), ["config.json", "JSON object"]),
    "config-not-utf8": (
        lambda run: (run / "config.json").write_bytes(b"\xff\xfe{}"),
        ["config.json", "UTF-8"],
    ),
    "config-nested-deep": (lambda run: (run / "config.json").write_text("[" * 100_000), ["config.json"]),
    "options-seed": (_edit_json("config.json", _set("options.seed", -1)), ["config.json", "options.seed"]),
    "options-dataset": (_edit_json("config.json", _set("options.dataset", "mnist")), ["options.dataset"]),
    "commands-text": (_edit_json("config.json", _set("commands", "abc")), ["config.json", "commands"]),
    "metrics-accuracy": (_edit_json("metrics.json", _set("accuracy", "high")), ["metrics.json", "accuracy"]),
    "metrics-nan": (
        _edit_json("metrics.json", lambda m: m["history"][0].update(loss=float("nan"))),
        ["metrics.json", "history[0].loss"],
    ),
    "metrics-missing": (lambda run: (run / "metrics.json").unlink(), ["metrics.json", "missing"]),
    "not-a-folder": (_not_a_folder, ["not a run directory"]),
}


@pytest.mark.parametrize("command", ["export", "init-from", "baseline"])
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_run_folder_is_one_line(tiny_run, tmp_path, kind, command):
    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run)
    damage, pieces = DAMAGE[kind]
    damage(run)
    if command == "export":
        out = tmp_path / "t.npz"
        code, _, err = _run("trace", "export", run, "--out", out, "--no-progress")
    else:
        out = tmp_path / "new-run"
        code, _, err = _run("train", *TINY, f"--{command}", run, "--out", out)
    _one_line_error(code, err, str(run), *pieces)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_init_from_another_model_is_refused(tiny_run, tmp_path):
    out = tmp_path / "new-run"
    code, _, err = _run("train", "--init-from", tiny_run, "--no-progress", "--out", out)
    _one_line_error(code, err, str(tiny_run), "resnet8", "--model resnet20")
    assert not out.exists()


def test_a_gated_run_cannot_start_a_dense_one(tiny_run, tmp_path):
    out = tmp_path / "new-run"
    code, _, err = _run("train", *TINY, "--dense", "--init-from", tiny_run, "--out", out)
    _one_line_error(code, err, str(tiny_run), "gated run cannot start a dense one")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------
# 2. Option values: every float finite and in range, every count bounded (argparse usage errors)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--lr", "1e300"),
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--lr", "0"),
        ("--width", "1e9"),
        ("--width", "0"),
        ("--width", "nan"),
        ("--target", "nan"),
        ("--target", "-inf"),
        ("--target", "1e6"),
        ("--weight-decay", "nan"),
        ("--weight-decay", "-1"),
        ("--base-fraction", "nan"),
        ("--seed", "99999999999999999999999"),
        ("--seed", "-1"),
        ("--seed", "1.5"),
        ("--split-seed", str(2**32)),
        ("--epochs", "0"),
        ("--epochs", "100000"),
        ("--batch-size", "0"),
        ("--batch-size", "1000000"),
        ("--threads", "0"),
        ("--threads", "100000"),
        ("--gating-groups", "0"),
        ("--gating-groups", "100000"),
        ("--max-batches", "-1"),
        ("--max-test", "1" + "0" * 30),
        ("--gate-flop-target", "nan"),
        ("--prune-target", "1"),
        ("--prune-delta", "inf"),
        ("--prune-t0", "inf"),
        ("--prune-lam0", "nan"),
        ("--prune-lam0", "100"),
        ("--prune-multiple-of", "0"),
        ("--search-epochs", "0"),
        ("--search-delta", "nan"),
        ("--max-trials", "0"),
        ("--max-trials", "1000"),
        ("--finetune-epochs", "-1"),
        ("--init-from", ""),
        ("--baseline", " "),
        ("--data-dir", ""),
    ],
)
def test_train_option_out_of_range_is_a_usage_error(tmp_path, option, value):
    out = tmp_path / "run"
    code, _, err = _run("train", *TINY, f"{option}={value}", "--out", out)
    _usage_error(code, err, "train", option)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--percentile", "101"),
        ("--percentile", "0"),
        ("--percentile", "nan"),
        ("--percentile", "-5"),
        ("--samples", "0"),
        ("--samples", "1000000"),
        ("--calibration", "0"),
        ("--calibration", "1e3"),
        ("--threads", "0"),
        ("--threads", "100000"),
        ("--name", ""),
    ],
)
def test_export_option_out_of_range_is_a_usage_error(tiny_run, tmp_path, option, value):
    out = tmp_path / "t.npz"
    code, _, err = _run("trace", "export", tiny_run, "--out", out, f"{option}={value}")
    _usage_error(code, err, "trace export", option)
    assert not out.exists()


def test_export_samples_beyond_the_test_split(tiny_run, tmp_path):
    out = tmp_path / "t.npz"
    code, _, err = _run("trace", "export", tiny_run, "--out", out, "--samples", "25", "--no-progress")
    _one_line_error(code, err, "--samples 25", "24 images")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------
# 3. A grouping that leaves the network ungated


@pytest.mark.parametrize(
    ("groups", "pieces"),
    [
        ("1000", ["--gating-groups 1000", "8 channels", "divisor of 8"]),
        ("16", ["--gating-groups 16", "8 channels"]),
        ("3", ["--gating-groups 3", "would be ungated", "8, 16, 32"]),
    ],
)
def test_gating_groups_that_gate_nothing_are_refused(tmp_path, groups, pieces):
    out = tmp_path / "run"
    code, _, err = _run("train", *TINY, "--gating-groups", groups, "--out", out)
    _one_line_error(code, err, *pieces)
    assert not out.exists()


def test_gating_check_agrees_with_the_built_model():
    from training.gating import gated_layers
    from training.resnet import ModelSpec, build_model
    from training.train import _check_gating

    for width, groups in ((0.5, 2), (0.5, 8), (0.75, 8), (1.0, 4), (0.75, 1)):
        spec = ModelSpec(arch="resnet8", width=width, gate_groups=groups)
        expected = {name for name, c_in, c_out in spec.block_convs() if spec.gates_conv(c_in, c_out)}
        assert {name for name, _ in gated_layers(build_model(spec))} == expected
        notes: list[str] = []
        _check_gating(spec, notes.append)
        assert bool(notes) == (len(expected) < len(spec.block_convs()))
    # widths 12, 24, 48 with G = 8: the first stage stays dense, and the user is told so
    notes = []
    _check_gating(ModelSpec(arch="resnet8", width=0.75, gate_groups=8), notes.append)
    assert len(notes) == 1 and "layer1.0.conv1" in notes[0] and "--gating-groups 8" in notes[0]


# --------------------------------------------------------------------------------------------------------
# 4. The destination of the trace, and of the run


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_export_into_proc_names_the_destination(tiny_run):
    code, _, err = _run(
        "trace", "export", tiny_run, "--out", "/proc/x.npz", "--samples", "1", "--no-progress"
    )
    line = _one_line_error(code, err, "/proc/x.npz", "cannot write the trace")
    assert ".tmp" not in line and ".accel-" not in line


def test_failed_trace_write_names_the_destination_and_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import trace_format

    def full_disk(path, meta, arrays):
        tmp = Path(path).parent / f".{Path(path).name}.abc.tmp"
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(tmp))

    monkeypatch.setattr(trace_format, "save_trace", full_disk)
    out = tmp_path / "new" / "deeper" / "t.npz"
    code, _, err = _run("trace", "export", tiny_run, "--out", out, "--samples", "1", "--no-progress")
    line = _one_line_error(code, err, str(out), "No space left on device")
    assert ".tmp" not in line and ".accel-" not in line
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []


def test_export_will_not_overwrite_the_runs_own_files(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = (run / "model.pt").read_bytes()
    code, _, err = _run("trace", "export", run, "--out", run / "model.pt", "--no-progress")
    _one_line_error(code, err, "model.pt", "is a file of the run folder")
    assert (run / "model.pt").read_bytes() == before


def test_failed_run_write_names_the_destination(tmp_path, monkeypatch):
    import training.train

    def full_disk(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(training.train.torch, "save", full_disk)
    out = tmp_path / "run"
    code, _, err = _run("train", *TINY, "--out", out)
    line = _one_line_error(code, err, str(out), "No space left on device")
    assert ".accel-" not in line
    assert not out.exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------------
# 5. Training that diverges


def test_diverging_training_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    import training.train

    monkeypatch.setattr(training.train, "gate_penalty", lambda model, lam: torch.tensor(float("nan")))
    out = tmp_path / "run"
    code, _, err = _run("train", *TINY, "--out", out)
    _one_line_error(code, err, "training diverged", "loss became nan", "--lr")
    assert not out.exists() and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------------
# 6. Bad CIFAR-10 files in --data-dir


def _write_batch(path: Path, images, labels) -> None:
    with open(path, "wb") as fh:
        pickle.dump({b"data": images, b"labels": labels}, fh)


def _cifar_dir(root: Path, n: int = 4) -> Path:
    root.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _write_batch(root / name, rng.integers(0, 256, (n, 3072), dtype=np.uint8), [i % 10 for i in range(n)])
    return root


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


CIFAR_DAMAGE = {
    "truncated": ("data_batch_2", _truncated, ["data_batch_2", "not a CIFAR-10 python batch file"]),
    "wrong-shape": (
        "data_batch_1",
        lambda p: _write_batch(p, np.zeros((2, 100), dtype=np.uint8), [0, 0]),
        ["data_batch_1", "uint8 [N, 3072]"],
    ),
    "text-labels": (
        "test_batch",
        lambda p: _write_batch(p, np.zeros((2, 3072), dtype=np.uint8), ["cat", "dog"]),
        ["test_batch", "b'labels'"],
    ),
    "ragged-labels": (
        "data_batch_3",
        lambda p: _write_batch(p, np.zeros((2, 3072), dtype=np.uint8), [[0], [1, 2]]),
        ["data_batch_3", "b'labels'"],
    ),
    "label-range": (
        "data_batch_4",
        lambda p: _write_batch(p, np.zeros((2, 3072), dtype=np.uint8), [0, 12]),
        ["data_batch_4", "12", "0..9"],
    ),
    "empty-test": (
        "test_batch",
        lambda p: _write_batch(p, np.zeros((0, 3072), dtype=np.uint8), []),
        ["test_batch", "no images"],
    ),
    "a-folder": ("data_batch_5", lambda p: (p.unlink(), p.mkdir()), ["data_batch_5", "not a file"]),
    "not-a-dict": ("data_batch_1", lambda p: p.write_bytes(pickle.dumps([1, 2])), ["data_batch_1", "dict"]),
}


@pytest.mark.parametrize("kind", sorted(CIFAR_DAMAGE))
def test_bad_cifar_files_are_one_line(tmp_path, kind):
    root = _cifar_dir(tmp_path / "cifar")
    name, damage, pieces = CIFAR_DAMAGE[kind]
    damage(root / name)
    out = tmp_path / "run"
    code, _, err = _run("train", *TINY, "--dataset", "cifar10", "--data-dir", root, "--out", out)
    _one_line_error(code, err, *pieces)
    assert not out.exists()


def test_cifar_data_dir_that_is_a_file(tmp_path):
    path = tmp_path / "cifar"
    path.write_text("")
    code, _, err = _run("train", *TINY, "--dataset", "cifar10", "--data-dir", path, "--out", tmp_path / "run")
    _one_line_error(code, err, str(path), "not a folder")


def test_tiny_cifar_run_trains(tmp_path):
    """The checks leave a small but valid CIFAR-10 folder alone."""
    root = _cifar_dir(tmp_path / "cifar")
    code, _, err = _run("train", *TINY, "--dataset", "cifar10", "--data-dir", root, "--out", tmp_path / "run")
    assert code == 0, err
