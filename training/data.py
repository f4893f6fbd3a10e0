"""Image data sets for training the traced networks; nothing here downloads anything.

Two sources, both returned as a :class:`Dataset` of float32 ``[N, 3, 32, 32]`` images (normalized) and
int64 labels:

* :func:`load_digits32` (the default): the real 8×8 handwritten digits set that scikit-learn carries in
  its wheel (1,797 images, 10 classes, ``sklearn.datasets.load_digits``), made CIFAR-shaped:

  1. the 0..16 pixel values are divided by 16 (range [0, 1]);
  2. each 8×8 image is upsampled to 32×32 by **bilinear interpolation** with half-pixel centres
     (``align_corners=False``, the convention of ``torch.nn.functional.interpolate``; edge pixels are
     replicated beyond the border), computed with two fixed 32×8 interpolation matrices in numpy;
  3. the single channel is replicated to 3 channels;
  4. the images are normalized with the **training split's** mean and standard deviation (one scalar
     each, the same for the 3 channels), which are stored in :attr:`Dataset.mean` / :attr:`Dataset.std`.

  The train/test split is seeded and stratified: for every class, a permutation drawn from
  ``numpy.random.default_rng(seed)`` puts ``round(test_fraction · n_class)`` of its images in the test set.

* :func:`load_cifar10`: CIFAR-10 from the standard *python version* batch files in a local directory
  (``data_batch_1`` … ``data_batch_5`` and ``test_batch``: pickled dicts with ``b'data'``, uint8
  ``[N, 3072]`` in channel-major RGB order, and ``b'labels'``), normalized with the training split's
  per-channel mean and standard deviation.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spec.errors import UserError

__all__ = [
    "Dataset",
    "DataError",
    "bilinear_matrix",
    "load_cifar10",
    "load_dataset",
    "load_digits32",
    "upsample_bilinear",
]

DIGITS_TEST_FRACTION = 0.25
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"


class DataError(UserError):
    """A data set cannot be read (missing file, wrong content); the message names the file."""


@dataclass
class Dataset:
    """A normalized image classification data set.

    ``x_*`` float32 ``[N, 3, H, W]``; ``y_*`` int64 ``[N]``; ``mean``/``std`` the per-channel
    normalization applied (real pixel = ``x * std + mean``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_train.shape[1:])


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` bilinear interpolation matrix with half-pixel centres (``align_corners=False``).

    Output pixel ``i`` samples the input at ``(i + 0.5) · n_in / n_out − 0.5``, clamped to ``[0, n_in − 1]``
    (so border pixels are replicated), and weights its two neighbours linearly. Every row sums to 1.
    """
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = min(max((i + 0.5) * scale - 0.5, 0.0), n_in - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1.0 - frac
        m[i, hi] += frac
    return m


def upsample_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinearly upsample ``[N, h, w]`` images to ``[N, size, size]`` (see :func:`bilinear_matrix`)."""
    _, h, w = images.shape
    mh, mw = bilinear_matrix(h, size), bilinear_matrix(w, size)
    return np.einsum("ih,nhw,jw->nij", mh, images.astype(np.float64), mw)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(idx.size)]
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx = np.concatenate(train)
    test_idx = np.concatenate(test)
    return train_idx[rng.permutation(train_idx.size)], test_idx[rng.permutation(test_idx.size)]


def load_digits32(seed: int = 0, test_fraction: float = DIGITS_TEST_FRACTION, size: int = 32) -> Dataset:
    """scikit-learn's 8×8 digits upsampled to ``size``×``size``, 3 channels, normalized (module doc)."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction = {test_fraction}: must lie in (0, 1)")
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "the digits data set needs scikit-learn (pip install '.[train]' or pip install scikit-learn)"
        ) from exc
    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0  # [1797, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int64)
    up = upsample_bilinear(images, size)  # [N, size, size]
    train_idx, test_idx = _stratified_split(labels, test_fraction, seed)
    mean = float(up[train_idx].mean())
    std = float(up[train_idx].std())
    x = ((up - mean) / std).astype(np.float32)
    x = np.repeat(x[:, None], 3, axis=1)
    return Dataset(
        name=f"digits-{size}",
        x_train=np.ascontiguousarray(x[train_idx]),
        y_train=labels[train_idx],
        x_test=np.ascontiguousarray(x[test_idx]),
        y_test=labels[test_idx],
        num_classes=10,
        mean=(mean,) * 3,
        std=(std,) * 3,
        description=(
            f"sklearn digits 8x8 /16, bilinear (half-pixel centres) to {size}x{size}, replicated to 3 "
            f"channels, normalized with the training split's mean {mean:.4f} and std {std:.4f}; "
            f"stratified split, test fraction {test_fraction}, seed {seed}"
        ),
    )


def _first_line(exc: BaseException, limit: int = 160) -> str:
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")
    line = line if len(line) <= limit else line[: limit - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        what = "is not a file" if path.exists() else "not found"
        raise DataError(f"{path}: CIFAR-10 batch file {what}")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh, encoding="bytes")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DataError(f"{path}: not a CIFAR-10 python batch file ({_first_line(exc)})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    for key in (b"data", b"labels"):
        if key not in batch:
            raise DataError(f"{path}: missing key {key!r}")
    try:
        data = np.asarray(batch[b"data"])
    except Exception as exc:  # noqa: BLE001 - a ragged or odd object is a bad file
        raise DataError(f"{path}: b'data' is not an array ({_first_line(exc)})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: b'data' must be uint8 [N, 3072], found {data.dtype} {list(data.shape)}")
    raw = batch[b"labels"]
    try:
        labels = np.asarray(raw)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: b'labels' is not a list of integers ({_first_line(exc)})") from None
    if labels.ndim != 1 or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
        raise DataError(
            f"{path}: b'labels' must be a list of integers, found {labels.dtype} {list(labels.shape)}"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: b'labels' has {labels.size} entries for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        bad = labels[(labels < 0) | (labels > 9)][0]
        raise DataError(f"{path}: b'labels' holds {bad}, outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | Path) -> Dataset:
    """CIFAR-10 from the python-version batch files in ``root`` (never downloaded)."""
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise DataError(f"{root}: CIFAR-10 directory {what} (expected data_batch_1..5 and test_batch)")
    parts = [_read_cifar_batch(root / name) for name in CIFAR_TRAIN_FILES]
    x_train = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y_train = np.concatenate([p[1] for p in parts])
    x_test_u8, y_test = _read_cifar_batch(root / CIFAR_TEST_FILE)
    if x_train.shape[0] < 2:
        raise DataError(
            f"{root}: the training batches ({', '.join(CIFAR_TRAIN_FILES)}) hold {x_train.shape[0]} images; "
            "training needs at least 2"
        )
    if x_test_u8.shape[0] == 0:
        raise DataError(f"{root / CIFAR_TEST_FILE}: holds no images (the test split is empty)")
    x_test = x_test_u8.astype(np.float32) / 255.0
    mean = x_train.mean(axis=(0, 2, 3))
    std = x_train.std(axis=(0, 2, 3))
    std = np.where(std > 0, std, 1.0)

    def norm(x: np.ndarray) -> np.ndarray:
        return ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)

    return Dataset(
        name="cifar10",
        x_train=norm(x_train),
        y_train=y_train,
        x_test=norm(x_test),
        y_test=y_test,
        num_classes=10,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        description=f"CIFAR-10 python batches from {root}, /255, per-channel normalized (training split)",
    )


def load_dataset(name: str, seed: int = 0, data_dir: str | Path | None = None) -> Dataset:
    """``"digits"`` (default; split seeded by ``seed``) or ``"cifar10"`` (from ``data_dir``)."""
    if name in ("digits", "digits-32", "digits32"):
        return load_digits32(seed=seed)
    if name == "cifar10":
        if data_dir is None:
            raise DataError("cifar10 needs --data-dir: a directory with data_batch_1..5 and test_batch")
        return load_cifar10(data_dir)
    raise DataError(f"unknown data set {name!r}: expected 'digits' or 'cifar10'")
