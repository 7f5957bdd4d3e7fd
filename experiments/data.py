"""Tasks for the study: the embedded transfer problem (no download) and real image folders.

(Real digits offline, MNIST -> scikit-learn's digits as TensorTasks: experiments.real_digits.)

The embedded problem
--------------------
Images are sums of a few small *parts* (random colour patterns of `part_size`² pixels) placed at
random positions on a noisy, smooth background. A class is a *combination* of `parts_per_image`
parts out of a shared dictionary of `parts`. The source task (pre-training) uses many
combinations and many samples; the target task uses *new* combinations of the *same* parts and
few samples per class. A network pre-trained on the source has learned detectors for every part,
so a target class is a linear read-out of features it already has: fine-tuning from the
pre-trained checkpoint beats training from scratch on the few target samples by a wide margin,
and moving far from the checkpoint (a large learning rate) forgets the detectors and loses the
benefit, which is what the study measures. Everything comes from one seed, on any machine.

Real data
---------
CIFAR-10/100 (torchvision folders, `download=False`) and ImageFolder trees (SUN-397), with the
paper's transforms: RandomResizedCrop(size) + horizontal flip for training, Resize(size·256/224)
+ CenterCrop(size) for testing, ImageNet normalisation.

Every task offers the same interface (`Task`): shuffled augmented training batches from a
seeded generator, the full test split for predictions, and fixed subsets in memory for the
landscape analyses (which evaluate the same data at hundreds of weight points).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import combinations
from typing import Iterator

import torch
import torch.nn.functional as F
import torch.utils.data

from landscape.core.data import IMAGENET_MEAN, IMAGENET_STD, TensorData
from landscape.core.errors import LandscapeError

from .loaders import FolderLoaders, LoaderOptions, SeededSamples

# ----------------------------------------------------------------------------------------------
# the embedded transfer problem


@dataclass(frozen=True)
class EmbeddedSpec:
    """Parameters of the embedded transfer problem (the `[data]` table of a `kind = "embedded"` study)."""

    seed: int = 0
    image_size: int = 16
    channels: int = 3
    parts: int = 10
    part_size: int = 5
    parts_per_image: int = 3
    source_classes: int = 30
    source_train: int = 4000
    source_test: int = 1000
    target_classes: int = 10
    target_train_per_class: int = 20
    target_test: int = 1000
    target_val: int = 0  # a validation split of the target task (0: none); selection uses it, reports use test
    noise: float = 0.6
    background: float = 0.5

    def check(self) -> None:
        if self.image_size < self.part_size or self.part_size < 1:
            raise LandscapeError(f"data: image_size {self.image_size} must be at least part_size {self.part_size}")
        if not 1 <= self.parts_per_image <= self.parts:
            raise LandscapeError(f"data: parts_per_image must be between 1 and parts ({self.parts})")
        available = math.comb(self.parts, self.parts_per_image)
        if self.source_classes + self.target_classes > available:
            raise LandscapeError(f"data: {self.source_classes} source + {self.target_classes} target classes need "
                                 f"that many combinations of {self.parts_per_image} out of {self.parts} parts, "
                                 f"only {available} exist")
        for name in ("source_classes", "target_classes", "channels"):
            if getattr(self, name) < (2 if name.endswith("classes") else 1):
                raise LandscapeError(f"data: {name} is too small")
        for name in ("source_train", "source_test", "target_train_per_class", "target_test"):
            if getattr(self, name) < 1:
                raise LandscapeError(f"data: {name} must be at least 1")
        if self.target_val < 0:
            raise LandscapeError("data: target_val must be non-negative")
        if self.noise < 0 or self.background < 0:
            raise LandscapeError("data: noise and background must be non-negative")


@dataclass
class TransferProblem:
    source_train: TensorData
    source_test: TensorData
    target_train: TensorData
    target_test: TensorData
    target_val: TensorData | None
    parts: torch.Tensor  # [P, C, s, s]
    source_combos: list[tuple[int, ...]]
    target_combos: list[tuple[int, ...]]


def _parts(spec: EmbeddedSpec, g: torch.Generator) -> torch.Tensor:
    """Random ±1 colour patterns, one per part, scaled to unit RMS then to a visible amplitude."""
    s, c = spec.part_size, spec.channels
    signs = torch.randint(0, 2, (spec.parts, c, s, s), generator=g).float() * 2 - 1
    mask = (torch.rand(spec.parts, 1, s, s, generator=g) < 0.7).float()  # a shape, not a full square
    p = signs * mask
    return 2.0 * p / p.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-6).view(-1, 1, 1, 1)


def _render(spec: EmbeddedSpec, parts: torch.Tensor, combos: list[tuple[int, ...]], y: torch.Tensor,
            g: torch.Generator) -> torch.Tensor:
    """Images of classes `y`: each class's parts at random positions, random amplitudes, on noise."""
    n, k, s = y.shape[0], spec.parts_per_image, spec.part_size
    span = spec.image_size - s + 1
    combo = torch.tensor(combos, dtype=torch.long)[y]  # [n, k]
    pos = torch.randint(0, span * span, (n, k), generator=g)
    amp = 0.7 + 0.6 * torch.rand(n, k, generator=g)
    presence = torch.zeros(n, spec.parts, span * span)
    presence[torch.arange(n).unsqueeze(1).expand(n, k), combo, pos] += amp
    x = F.conv_transpose2d(presence.view(n, spec.parts, span, span), parts)
    low = max(2, spec.image_size // 4)
    bg = torch.randn(n, spec.channels, low, low, generator=g)
    x += spec.background * F.interpolate(bg, size=(spec.image_size,) * 2, mode="bilinear", align_corners=False)
    x += spec.noise * torch.randn(x.shape, generator=g)
    return x.float()


def _balanced_labels(n: int, classes: int, g: torch.Generator) -> torch.Tensor:
    y = torch.arange(classes).repeat(n // classes + 1)[:n]
    return y[torch.randperm(n, generator=g)]


def make_transfer_problem(spec: EmbeddedSpec) -> TransferProblem:
    """The source and target tasks of the embedded problem, deterministic in `spec.seed`."""
    spec.check()
    g = torch.Generator().manual_seed(int(spec.seed))
    parts = _parts(spec, g)
    combos = list(combinations(range(spec.parts), spec.parts_per_image))
    order = torch.randperm(len(combos), generator=g).tolist()
    src = [combos[i] for i in order[: spec.source_classes]]
    tgt = [combos[i] for i in order[spec.source_classes: spec.source_classes + spec.target_classes]]
    tag = f"embedded:seed={spec.seed}"

    def split(combos_: list, n: int, offset: int, name: str) -> TensorData:
        gs = torch.Generator().manual_seed(int(spec.seed) * 1_000_003 + offset)
        y = _balanced_labels(n, len(combos_), gs)
        return TensorData(_render(spec, parts, combos_, y, gs), y, f"{tag}:{name}", len(combos_), {"split": name})

    return TransferProblem(
        source_train=split(src, spec.source_train, 1, "source-train"),
        source_test=split(src, spec.source_test, 2, "source-test"),
        target_train=split(tgt, spec.target_train_per_class * spec.target_classes, 3, "target-train"),
        target_test=split(tgt, spec.target_test, 4, "target-test"),
        target_val=split(tgt, spec.target_val, 5, "target-val") if spec.target_val else None,
        parts=parts, source_combos=src, target_combos=tgt)


# ----------------------------------------------------------------------------------------------
# augmentation on tensors


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero padding), and flip half of them if asked."""
    if max_shift <= 0 and not flip:
        return x
    n, _, h, w = x.shape
    if max_shift > 0:
        xp = F.pad(x, (max_shift,) * 4)
        oy = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
        ox = torch.randint(0, 2 * max_shift + 1, (n,), generator=g)
        rows = (oy.unsqueeze(1) + torch.arange(h)).to(x.device)  # [n, h]
        cols = (ox.unsqueeze(1) + torch.arange(w)).to(x.device)  # [n, w]
        b = torch.arange(n, device=x.device).view(n, 1, 1)
        x = xp.permute(0, 2, 3, 1)[b, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2).contiguous()
    if flip:
        sel = (torch.rand(n, generator=g) < 0.5).to(x.device)
        x = torch.where(sel.view(n, 1, 1, 1), x.flip(3), x)
    return x


# ----------------------------------------------------------------------------------------------
# tasks


class Task:
    """What training and analysis need from a dataset."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]

    def train_size(self) -> int:
        raise NotImplementedError

    def train_batches(self, batch_size: int, g: torch.Generator,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented batches, all randomness from `g`."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int,
                     device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The whole `split` ("test" or "val") in order, with evaluation transforms."""
        raise NotImplementedError

    def labels(self, split: str) -> torch.Tensor:
        raise NotImplementedError

    @property
    def has_val(self) -> bool:
        """Whether the task has a validation split (hyperparameters are then chosen on it, not on test)."""
        return False

    def test_batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.eval_batches("test", batch_size, device)

    def test_labels(self) -> torch.Tensor:
        return self.labels("test")

    def eval_data(self, split: str, limit: int | None, seed: int = 0) -> TensorData:
        """A fixed (seeded) subset of a split with evaluation transforms, in memory."""
        raise NotImplementedError

    def sample_input(self) -> torch.Tensor:
        """One evaluation-transformed input [1, *input_shape] (to check that a model fits)."""
        raise NotImplementedError


class TensorTask(Task):
    """A task held in memory: the embedded problem (or any TensorData pair)."""

    def __init__(self, name: str, train: TensorData, test: TensorData, num_classes: int, max_shift: int = 0,
                 flip: bool = False, val: TensorData | None = None) -> None:
        self.name, self.train, self.test, self.val = name, train, test, val
        self.num_classes = int(num_classes)
        self.input_shape = tuple(train.x.shape[1:])
        self.max_shift, self.flip = int(max_shift), bool(flip)
        self._device_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, split: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = f"{split}@{device}"
        if key not in self._device_cache:
            d = self._split(split)
            self._device_cache[key] = (d.x.to(device), d.y.to(device))
        return self._device_cache[key]

    def _split(self, split: str) -> TensorData:
        d = {"train": self.train, "test": self.test, "val": self.val}[split]
        if d is None:
            raise LandscapeError(f"{self.name} has no {split} split")
        return d

    @property
    def has_val(self) -> bool:
        return self.val is not None

    def train_size(self) -> int:
        return len(self.train)

    def train_batches(self, batch_size, g, device):
        x, y = self._on("train", device)
        n = x.shape[0]
        perm = torch.randperm(n, generator=g).to(device)
        xa = random_shift(x[perm], self.max_shift, g, self.flip)
        ya = y[perm]
        for start in range(0, n, batch_size):
            yield xa[start:start + batch_size], ya[start:start + batch_size]

    def eval_batches(self, split, batch_size, device):
        x, y = self._on(split, device)
        for start in range(0, x.shape[0], batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]

    def labels(self, split: str) -> torch.Tensor:
        return self._split(split).y

    def eval_data(self, split, limit, seed=0):
        d = self._split(split)
        if limit is None or limit >= len(d):
            return d
        idx = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
        return TensorData(d.x[idx], d.y[idx], d.spec, d.num_classes, dict(d.meta))

    def sample_input(self):
        return self.test.x[:1]


def embedded_tasks(spec: EmbeddedSpec, max_shift: int = 2) -> tuple[TensorTask, TensorTask]:
    """(source task, target task) of the embedded problem."""
    p = make_transfer_problem(spec)
    source = TensorTask("embedded-source", p.source_train, p.source_test, spec.source_classes, max_shift)
    target = TensorTask("embedded-target", p.target_train, p.target_test, spec.target_classes, max_shift,
                        val=p.target_val)
    return source, target


class FolderTask(Task):
    """CIFAR-10/100 or an ImageFolder tree with the paper's transforms, read through DataLoaders."""

    def __init__(self, kind: str, root: str, image_size: int = 224, num_workers: int = 4,
                 test_folder: str | None = None, val_fraction: float = 0.0) -> None:
        import torchvision
        from torchvision import transforms as T

        root = os.path.expanduser(root)
        if not os.path.isdir(root):
            raise LandscapeError(f"data folder {root!r} does not exist")
        resize = int(round(image_size * 256 / 224))
        norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
        self.eval_tf = T.Compose([T.Resize(resize), T.CenterCrop(image_size), T.ToTensor(), norm])
        self.kind, self.root, self.num_workers = kind, root, int(num_workers)
        self.loaders = FolderLoaders(self.num_workers)
        self.name = f"{kind}:{root}"
        try:
            if kind in ("cifar10", "cifar100"):
                cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
                make = lambda train, tf: cls(root, train=train, transform=tf, download=False)  # noqa: E731
                self._train, self._test = make(True, self.train_tf), make(False, self.eval_tf)
                self._train_eval = make(True, self.eval_tf)
            else:
                tr = os.path.join(root, "train")
                te = test_folder or next((os.path.join(root, d) for d in ("test", "val") if
                                          os.path.isdir(os.path.join(root, d))), None)
                if not os.path.isdir(tr) or te is None:
                    raise LandscapeError(f"image folder {root!r} must hold train/ and test/ (or val/) "
                                         "folders with one sub-folder per class")
                IF = torchvision.datasets.ImageFolder
                self._train, self._test = IF(tr, transform=self.train_tf), IF(te, transform=self.eval_tf)
                self._train_eval = IF(tr, transform=self.eval_tf)
                if self._train.classes != self._test.classes:
                    raise LandscapeError(f"image folder {root!r}: train and test hold different classes")
        except LandscapeError:
            raise
        except Exception as exc:  # torchvision's own message, on one line
            raise LandscapeError(f"data {kind}:{root}: {str(exc).splitlines()[0]}") from None
        if len(self._train) == 0 or len(self._test) == 0:
            raise LandscapeError(f"data {kind}:{root} is empty")
        self.num_classes = len(self._train.classes)
        self._val = None
        if val_fraction > 0:
            # A fixed hold-out of the training set (its own seed: the same split in every study),
            # evaluated with the evaluation transforms; training never sees it.
            from torch.utils.data import Subset

            n = len(self._train)
            k = int(round(val_fraction * n))
            if not 0 < k < n:
                raise LandscapeError(f"data.val_fraction = {val_fraction:g} leaves no training or no validation "
                                     f"images of {n}")
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(20231)).tolist()
            val_idx, train_idx = sorted(perm[:k]), sorted(perm[k:])
            targets = list(self._train.targets)
            self._val = Subset(self._train_eval, val_idx)
            self._val.targets = [targets[i] for i in val_idx]
            self._train = Subset(self._train, train_idx)
            self._train_eval = Subset(self._train_eval, train_idx)
        self.input_shape = (3, image_size, image_size)

    def _targets(self, ds) -> torch.Tensor:
        if not hasattr(ds, "targets"):  # a training-set Subset
            return torch.as_tensor(ds.dataset.targets, dtype=torch.long)[torch.as_tensor(ds.indices)]
        return torch.as_tensor(ds.targets, dtype=torch.long)

    def train_size(self) -> int:
        return len(self._train)

    def set_loader_options(self, options: LoaderOptions) -> None:
        """Pinned memory and persistent workers, from the study's [runtime] table (accel.configure_loaders)."""
        self.loaders.options = options

    def _loader(self, ds, batch_size, shuffle, g=None):
        own = any(ds is v for v in (self._train, self._train_eval, self._test, self._val))
        return self.loaders.loader(ds, batch_size, shuffle, g, own)

    def train_batches(self, batch_size, g, device):
        # The order and every sample's transform seed come from `g`, so an epoch is the same
        # whatever the number of workers.
        n = len(self._train)
        seeds = torch.randint(0, 2**62, (n,), generator=g)
        ds = SeededSamples(self._train, seeds)
        for x, y in self._loader(ds, batch_size, True, g):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    @property
    def has_val(self) -> bool:
        return self._val is not None

    def _eval_set(self, split: str):
        ds = {"test": self._test, "val": self._val}[split]
        if ds is None:
            raise LandscapeError(f"{self.name} has no validation split (set data.val_fraction)")
        return ds

    def eval_batches(self, split, batch_size, device):
        for x, y in self._loader(self._eval_set(split), batch_size, False):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def labels(self, split: str):
        return self._targets(self._eval_set(split))

    def eval_data(self, split, limit, seed=0):
        from torch.utils.data import Subset

        ds = self._train_eval if split == "train" else self._test
        n = len(ds)
        idx = list(range(n)) if limit is None or limit >= n else \
            torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
        xs, ys = [], []
        for x, y in self._loader(Subset(ds, idx), 256, False):
            xs.append(x), ys.append(y)
        return TensorData(torch.cat(xs), torch.cat(ys), f"{self.name}:{split}", self.num_classes)

    def sample_input(self):
        return self._test[0][0].unsqueeze(0)
