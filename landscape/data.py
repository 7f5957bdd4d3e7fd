"""Data specs resolved to in-memory tensors.

Analyses evaluate the same data at hundreds of weight points, so data are loaded once as
tensors (and moved to the device once by the engine).

Spec forms (never downloading):
- `tensors:PATH`: a torch file holding a dict with `x` (inputs) and `y` (integer labels).
- `cifar10:ROOT`, `cifar100:ROOT`: torchvision's CIFAR folders; the train split for `--data`,
  the test split for `--test-data`; append `:train` or `:test` to choose explicitly.
- `imagefolder:ROOT`: class-per-folder images (e.g. SUN-397), resized 256 and centre-cropped 224.
- `synthetic` or `synthetic:key=value,...`: the built-in synthetic image set (keys: n, seed,
  split (train|test), size, classes, channels).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from .errors import LandscapeError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TensorData:
    """Inputs and labels held in memory, with the spec that produced them."""

    x: torch.Tensor
    y: torch.Tensor
    spec: str = "tensors"
    num_classes: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_tensors(self.x, self.y, self.spec)
        if self.num_classes is None:
            self.num_classes = int(self.y.max()) + 1

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int) -> "TensorData":
        return TensorData(self.x[:n], self.y[:n], self.spec, self.num_classes, dict(self.meta))


def validate_tensors(x: torch.Tensor, y: torch.Tensor, spec: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise LandscapeError(f"data {spec!r}: x and y must be tensors")
    if x.ndim == 0:
        raise LandscapeError(f"data {spec!r}: inputs must have a sample dimension, got a scalar")
    if y.ndim != 1 or y.numel() == 0 or x.shape[0] == 0:
        if y.numel() == 0 or x.shape[0] == 0:
            raise LandscapeError(f"data {spec!r} is empty")
        raise LandscapeError(f"data {spec!r}: labels must be a 1-D tensor, got shape {list(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise LandscapeError(f"data {spec!r}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if y.is_floating_point() or y.is_complex():
        raise LandscapeError(f"data {spec!r}: labels must be integers, got {y.dtype}")
    if int(y.min()) < 0:
        raise LandscapeError(f"data {spec!r}: label {int(y.min())} at sample {int(y.argmin())} is negative")
    if not x.is_floating_point():
        raise LandscapeError(f"data {spec!r}: inputs must be floating point, got {x.dtype}")
    check_finite(x, spec)


def check_finite(x: torch.Tensor, spec: str) -> None:
    """Refuse inputs holding NaN, inf or -inf, naming the first bad sample (by index).

    One vectorised pass: the per-sample max and min propagate NaN and show ±inf, so a sample
    is finite exactly when both are. This is ~10× cheaper than `isfinite(x).all(1)` on the
    CPU and allocates only two values per sample (no sample-sized mask, no copy of a
    non-contiguous `x`). Only the first bad sample is then looked at element by element.
    """
    if x.shape[0] == 0 or x.numel() == 0:
        return
    if x.ndim == 1:
        ok = torch.isfinite(x)
    else:
        dims = tuple(range(1, x.ndim))
        ok = torch.isfinite(x.amax(dim=dims)) & torch.isfinite(x.amin(dim=dims))
    if bool(ok.all()):
        return
    i = int((~ok).nonzero()[0, 0])
    row = x[i].reshape(-1)
    bad = row[~torch.isfinite(row)][0]
    what = "NaN" if bool(torch.isnan(bad)) else ("inf" if float(bad) > 0 else "-inf")
    raise LandscapeError(f"data {spec!r}: sample {i} holds {what}")


def check_labels(data: TensorData, num_classes: int) -> None:
    """Labels must index the model's outputs."""
    bad = (data.y >= num_classes).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise LandscapeError(f"data {data.spec!r}: label {int(data.y[i])} at sample {i} is outside "
                             f"the model's {num_classes} classes")


def make_synthetic_images(n: int, num_classes: int = 10, size: int = 16, channels: int = 3,
                          seed: int = 0, prototype_seed: int = 1234, noise: float = 0.6,
                          prototypes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images drawn around smooth random class prototypes, with random shifts and pixel noise.

    The prototypes come from `prototype_seed` (so train and test splits share them) and the
    samples from `seed`. Deterministic on every machine.
    """
    if prototypes is None:
        prototypes = synthetic_prototypes(num_classes, size, channels, prototype_seed)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, prototypes.shape[0], (n,), generator=g)
    x = prototypes[y].clone()
    # Random circular shifts: classes must be recognised by shape, not by pixel position.
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            if sel.any():
                x[sel] = torch.roll(x[sel], shifts=(dy, dx), dims=(2, 3))
    x += noise * torch.randn(x.shape, generator=g)
    return x.float(), y.long()


def synthetic_prototypes(num_classes: int, size: int, channels: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(num_classes, channels, max(2, size // 4), max(2, size // 4), generator=g)
    protos = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return protos / protos.flatten(1).std(dim=1).view(-1, 1, 1, 1)


def _parse_kv(spec: str, text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LandscapeError(f"malformed data spec {spec!r}: expected key=value pairs after 'synthetic:'")
        out[key.strip()] = value.strip()
    return out


def _synthetic(spec: str, rest: str, role: str) -> TensorData:
    kv = _parse_kv(spec, rest)
    allowed = {"n", "seed", "split", "size", "classes", "channels"}
    unknown = set(kv) - allowed
    if unknown:
        raise LandscapeError(f"malformed data spec {spec!r}: unknown key {sorted(unknown)[0]!r}")
    try:
        split = kv.get("split", "test" if role == "test" else "train")
        n = int(kv.get("n", 1000 if split == "test" else 2000))
        seed = int(kv.get("seed", 0)) + (1_000_003 if split == "test" else 0)
        size, classes, channels = int(kv.get("size", 16)), int(kv.get("classes", 10)), int(kv.get("channels", 3))
    except ValueError as exc:
        raise LandscapeError(f"malformed data spec {spec!r}: {exc}") from None
    if split not in ("train", "test") or n < 0 or size < 4 or classes < 2 or channels < 1:
        raise LandscapeError(f"malformed data spec {spec!r}: need split train|test, n>=0, size>=4, classes>=2")
    x, y = make_synthetic_images(n, classes, size, channels, seed=seed)
    if n == 0:
        raise LandscapeError(f"data {spec!r} is empty")
    return TensorData(x, y, spec, classes, {"split": split})


def _tensors(spec: str, path: str) -> TensorData:
    if not os.path.isfile(path):
        raise LandscapeError(f"data file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise LandscapeError(f"data file {path!r} cannot be loaded safely: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict) or "x" not in obj or "y" not in obj:
        raise LandscapeError(f"data file {path!r} must hold a dict with 'x' and 'y' tensors")
    x, y = obj["x"], obj["y"]
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        x = x.float()
    num_classes = obj.get("num_classes")
    return TensorData(x, y, spec, int(num_classes) if num_classes is not None else None)


def _torchvision_split(spec: str, kind: str, root: str, split: str) -> TensorData:
    import torchvision
    from torchvision import transforms as T

    if not os.path.isdir(root):
        raise LandscapeError(f"data folder {root!r} does not exist")
    if kind in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
        try:
            ds = cls(root, train=(split == "train"), download=False)
        except Exception as exc:  # noqa: BLE001
            raise LandscapeError(f"data {spec!r}: {str(exc).splitlines()[0]}") from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return TensorData((x - mean) / std, torch.tensor(ds.targets), spec, len(ds.classes), {"split": split})
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        ds = torchvision.datasets.ImageFolder(root, transform=tf)
    except Exception as exc:  # noqa: BLE001
        raise LandscapeError(f"data {spec!r}: {str(exc).splitlines()[0]}") from None
    if len(ds) == 0:
        raise LandscapeError(f"data {spec!r} is empty")
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorData(torch.stack(xs), torch.tensor(ys), spec, len(ds.classes))


def load_data(spec: str, role: str = "train") -> TensorData:
    """Resolve a data spec; `role` (train|test) picks the default split of split datasets."""
    if not isinstance(spec, str) or not spec.strip():
        raise LandscapeError("empty data spec")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return _synthetic(spec, rest, role)
    if kind == "tensors":
        if not rest:
            raise LandscapeError(f"malformed data spec {spec!r}: expected tensors:PATH")
        return _tensors(spec, rest)
    if kind in ("cifar10", "cifar100", "imagefolder"):
        root, split = rest, role
        if rest.endswith((":train", ":test")):
            root, _, split = rest.rpartition(":")
        if not root:
            raise LandscapeError(f"malformed data spec {spec!r}: expected {kind}:ROOT")
        return _torchvision_split(spec, kind, root, split)
    raise LandscapeError(f"malformed data spec {spec!r}: expected tensors:PATH, cifar10:ROOT, "
                         "cifar100:ROOT, imagefolder:ROOT or synthetic[:key=value,...]")
