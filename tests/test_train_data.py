"""Data sets for training (traces/data.py): the upsampled digits and the CIFAR-10 batch-file loader."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from training.data import DataError, bilinear_matrix, load_cifar10, load_digits32, upsample_bilinear


def test_bilinear_matrix_rows_and_constant_images():
    m = bilinear_matrix(8, 32)
    assert m.shape == (32, 8)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    img = np.full((1, 8, 8), 0.7)
    np.testing.assert_allclose(upsample_bilinear(img, 32), 0.7)


def test_bilinear_matches_torch_interpolate():
    torch = pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install '.[train]')")
    rng = np.random.default_rng(0)
    img = rng.random((3, 8, 8))
    ours = upsample_bilinear(img, 32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(img)[:, None], size=(32, 32), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_digits_shapes_split_and_normalization():
    pytest.importorskip("sklearn", reason="the digits set comes with scikit-learn (the train extra)")
    a = load_digits32(seed=0)
    b = load_digits32(seed=0)
    c = load_digits32(seed=1)
    assert a.x_train.shape[1:] == (3, 32, 32) and a.x_train.dtype == np.float32
    assert a.x_train.shape[0] + a.x_test.shape[0] == 1797
    assert abs(a.x_test.shape[0] - 0.25 * 1797) < 10
    np.testing.assert_array_equal(a.x_train, b.x_train)  # seeded
    assert not np.array_equal(a.y_test, c.y_test)
    # stratified: every class in both splits
    assert set(np.unique(a.y_test)) == set(range(10)) == set(np.unique(a.y_train))
    # normalized with the training split's statistics; channels are replicas
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1.0) < 1e-3
    np.testing.assert_array_equal(a.x_train[:, 0], a.x_train[:, 2])


def _write_batch(path, images, labels):
    with open(path, "wb") as fh:
        pickle.dump({b"data": images, b"labels": list(labels), b"batch_label": b"test"}, fh)


def _cifar_dir(tmp_path, n=4):
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        _write_batch(
            tmp_path / f"data_batch_{i}", rng.integers(0, 256, (n, 3072), dtype=np.uint8), [i % 10] * n
        )
    test_images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    _write_batch(tmp_path / "test_batch", test_images, range(n))
    return test_images


def test_cifar10_loader_on_tiny_files(tmp_path):
    test_images = _cifar_dir(tmp_path)
    data = load_cifar10(tmp_path)
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    assert data.y_train.tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4
    assert data.y_test.tolist() == [0, 1, 2, 3]
    # channel-major layout: the first 1024 bytes are the red plane of image 0
    raw = test_images[0, :1024].reshape(32, 32) / 255.0
    np.testing.assert_allclose(data.x_test[0, 0] * data.std[0] + data.mean[0], raw, atol=1e-5)
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)


def test_cifar10_loader_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_cifar10(tmp_path / "missing")
    _cifar_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3.*not found"):
        load_cifar10(tmp_path)
    _write_batch(tmp_path / "data_batch_3", np.zeros((2, 100), dtype=np.uint8), [0, 0])
    with pytest.raises(DataError, match=r"data_batch_3.*uint8 \[N, 3072\]"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch file"):
        load_cifar10(tmp_path)


def test_cli_without_torch(tmp_path):
    """``accel`` works without PyTorch; ``accel train`` then says how to get it, in one line."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from accel.cli import main\n"
        f"rc = main(['train', '--out', {str(tmp_path / 'run')!r}])\n"
        "assert 'torch' in sys.modules and sys.modules['torch'] is None\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("accel: error: accel train needs PyTorch")
    assert "Traceback" not in proc.stderr and "torch==2.13.0" in proc.stderr
