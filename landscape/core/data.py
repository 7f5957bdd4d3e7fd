"""Data specs, resolved to in-memory tensors or to a stream read from disk batch by batch.

Analyses evaluate the same data at hundreds of weight points, so data that fit in memory are
loaded once as tensors (and moved to the device once by the engine); data that do not are
streamed (`StreamData`): memory then does not depend on the data set's size.

Spec forms (never downloading):
- `tensors:PATH`: a torch file holding a dict with `x` (inputs) and `y` (integer labels).
- `cifar10:ROOT`, `cifar100:ROOT`: torchvision's CIFAR folders; the train split for `--data`,
  the test split for `--test-data`; append `:train` or `:test` to choose explicitly.
- `imagefolder:ROOT`: class-per-folder images (e.g. SUN-397), resized 256 and centre-cropped 224,
  decoded lazily by DataLoader workers (streamed).
- `dataset:package.module:factory[:split]`: your own map-style torch Dataset of (input, label)
  pairs (streamed).
- `synthetic` or `synthetic:key=value,...`: the built-in synthetic image set (keys: n, seed,
  split (train|test), size, classes, channels).

From Python (`as_data`), data may also be what PyTorch code holds: an `(x, y)` pair of tensors or
a `TensorDataset` of two tensors (in memory), any map-style `Dataset` of (input, label) pairs, or a
`DataLoader` (its dataset, streamed in order, in the loader's batch size unless one is given).
Their spec, stored with every result, fingerprints the content, so a resumed run must see the
same data.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import LandscapeError
from .loader import load_callable

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
    targets: str = "labels"  # or "values": regression targets (float, any trailing shape)

    def __post_init__(self) -> None:
        validate_tensors(self.x, self.y, self.spec, self.targets)
        if self.num_classes is None and self.targets == "labels":
            self.num_classes = int(self.y.max()) + 1

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int) -> "TensorData":
        return TensorData(self.x[:n], self.y[:n], self.spec, self.num_classes, dict(self.meta), self.targets)


class StreamData:
    """A data set read from disk batch by batch (a torch Dataset through a DataLoader), so memory
    does not grow with its size. Every batch is checked as it is read (finite inputs, integer
    labels), naming the sample; the first `n` samples can be held as TensorData (`head`) for
    BatchNorm recompute and for probing the model."""

    def __init__(self, dataset, spec: str, num_classes: int | None = None, num_workers: int = 0,
                 targets: str = "labels") -> None:
        self.dataset, self.spec, self.num_workers, self.targets = dataset, spec, int(num_workers), targets
        try:
            n = len(dataset)
        except TypeError:
            raise LandscapeError(f"data {spec!r}: the dataset has no length (a map-style Dataset is needed)") from None
        if n == 0:
            raise LandscapeError(f"data {spec!r} is empty")
        self._len = n
        self.num_classes = num_classes
        self.meta: dict = {}
        self.loader_batch_size: int | None = None  # the batch size of the DataLoader it came from
        self._input_shape = self.head(1).input_shape

    def __len__(self) -> int:
        return self._len

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    def batches(self, batch_size: int, device: torch.device | str = "cpu", limit: int | None = None):
        """(x, y) batches in order, on `device`; at most `limit` samples."""
        from torch.utils.data import DataLoader, Subset

        ds = self.dataset if limit is None or limit >= self._len else Subset(self.dataset, range(limit))
        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=self.num_workers,
                            pin_memory=torch.device(device).type == "cuda")
        start = 0
        for batch in loader:
            if not isinstance(batch, (list, tuple)) or len(batch) != 2:
                raise LandscapeError(f"data {self.spec!r}: each sample must be an (input, label) pair")
            x, y = batch
            x = x.float() if isinstance(x, torch.Tensor) and not x.is_floating_point() else x
            y = torch.as_tensor(y)
            try:
                validate_tensors(x, y, self.spec, self.targets)
            except LandscapeError as exc:  # name the sample in the whole data set, not in the batch
                raise LandscapeError(re.sub(r"sample (\d+)", lambda m: f"sample {start + int(m[1])}", str(exc))) \
                    from None
            if self.num_classes is not None and self.targets == "labels":
                check_label_range(y, self.num_classes, self.spec, start)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            start += int(y.shape[0])

    def head(self, n: int) -> TensorData:
        """The first `n` samples in memory."""
        xs, ys = zip(*(self.dataset[i] for i in range(min(n, self._len))))
        try:
            x = torch.stack([torch.as_tensor(v) for v in xs]).float()
            y = torch.as_tensor(ys)
        except (TypeError, RuntimeError) as exc:
            raise LandscapeError(f"data {self.spec!r}: samples must be (tensor, label) pairs of one shape: "
                                 f"{str(exc).splitlines()[0]}") from None
        return TensorData(x, y, self.spec, self.num_classes, targets=self.targets)


def validate_tensors(x: torch.Tensor, y: torch.Tensor, spec: str, targets: str = "labels") -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise LandscapeError(f"data {spec!r}: x and y must be tensors")
    if x.ndim == 0:
        raise LandscapeError(f"data {spec!r}: inputs must have a sample dimension, got a scalar")
    if targets == "values":  # regression: float targets of any trailing shape
        if y.ndim == 0 or y.shape[0] == 0 or x.shape[0] == 0:
            raise LandscapeError(f"data {spec!r} is empty")
        if x.shape[0] != y.shape[0]:
            raise LandscapeError(f"data {spec!r}: {x.shape[0]} inputs but {y.shape[0]} targets")
        if not x.is_floating_point():
            raise LandscapeError(f"data {spec!r}: inputs must be floating point, got {x.dtype}")
        check_finite(x, spec)
        if not y.is_floating_point():
            raise LandscapeError(f"data {spec!r}: regression targets must be floating point, got {y.dtype}")
        bad = ~torch.isfinite(y.reshape(y.shape[0], -1)).all(1)
        if bool(bad.any()):
            raise LandscapeError(f"data {spec!r}: the target of sample {int(bad.nonzero()[0, 0])} is not finite")
        return
    if y.ndim != 1 or y.numel() == 0 or x.shape[0] == 0:
        if y.numel() == 0 or x.shape[0] == 0:
            raise LandscapeError(f"data {spec!r} is empty")
        raise LandscapeError(f"data {spec!r}: labels must be a 1-D tensor, got shape {list(y.shape)} "
                             "(regression targets? use --loss mse)")
    if x.shape[0] != y.shape[0]:
        raise LandscapeError(f"data {spec!r}: {x.shape[0]} inputs but {y.shape[0]} labels")
    if y.is_floating_point() or y.is_complex():
        raise LandscapeError(f"data {spec!r}: labels must be integers, got {y.dtype} (regression targets? "
                             "use --loss mse)")
    if y.dtype == torch.bool:  # True/False would silently be classes 1/0
        raise LandscapeError(f"data {spec!r}: labels must be integer class indices, got {y.dtype} "
                             "(convert them, e.g. y.long())")
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


def check_labels(data: "TensorData | StreamData", num_classes: int) -> None:
    """Labels must index the model's outputs (a stream's are checked as its batches are read)."""
    if isinstance(data, StreamData):
        data.num_classes = num_classes
        return
    check_label_range(data.y, num_classes, data.spec)


def check_label_range(y: torch.Tensor, num_classes: int, spec: str, offset: int = 0) -> None:
    bad = (y >= num_classes).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise LandscapeError(f"data {spec!r}: label {int(y[i])} at sample {offset + i} is outside "
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


def _tensors(spec: str, path: str, targets: str = "labels") -> TensorData:
    if not os.path.isfile(path):
        raise LandscapeError(f"data file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise LandscapeError(f"data file {path!r} cannot be loaded safely: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict) or "x" not in obj or "y" not in obj:
        raise LandscapeError(f"data file {path!r} must hold a dict with 'x' and 'y' tensors")
    x, y = obj["x"], obj["y"]
    if isinstance(x, torch.Tensor) and not x.is_floating_point():
        x = x.float()
    num_classes = obj.get("num_classes")
    return TensorData(x, y, spec, int(num_classes) if num_classes is not None else None, targets=targets)


def _torchvision_split(spec: str, kind: str, root: str, split: str) -> "TensorData | StreamData":
    import torchvision
    from torchvision import transforms as T

    if not os.path.isdir(root):
        raise LandscapeError(f"data folder {root!r} does not exist")
    if kind in ("cifar10", "cifar100"):
        cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
        try:
            ds = cls(root, train=(split == "train"), download=False)
        except Exception as exc:
            raise LandscapeError(f"data {spec!r}: {str(exc).splitlines()[0]}") from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float().div_(255)
        mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return TensorData((x - mean) / std, torch.tensor(ds.targets), spec, len(ds.classes), {"split": split})
    tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    try:
        ds = torchvision.datasets.ImageFolder(root, transform=tf)
    except Exception as exc:
        raise LandscapeError(f"data {spec!r}: {str(exc).splitlines()[0]}") from None
    if len(ds) == 0:
        raise LandscapeError(f"data {spec!r} is empty")
    return StreamData(ds, spec, len(ds.classes), num_workers=min(4, os.cpu_count() or 1))


def _dataset_factory(spec: str, target: str, targets: str = "labels") -> StreamData:
    """`dataset:package.module:factory[:split]`: the factory returns a map-style torch Dataset of
    (input, label) pairs (called with split="train"/"test" when it takes a `split` argument)."""
    import inspect

    module_name, _, rest = target.partition(":")
    attr, _, split = rest.partition(":")
    factory = load_callable(f"{module_name}:{attr}", "data spec", shown=spec,
                            expected="dataset:package.module:factory[:split]")
    try:
        takes_split = "split" in inspect.signature(factory).parameters
        ds = factory(split=split) if takes_split and split else factory()
    except Exception as exc:  # user code
        raise LandscapeError(f"data spec {spec!r}: the factory failed: {str(exc).splitlines()[0]}") from None
    return StreamData(ds, spec, getattr(ds, "num_classes", None), targets=targets)


def load_data(spec: str, role: str = "train", targets: str = "labels") -> "TensorData | StreamData":
    """Resolve a data spec; `role` (train|test) picks the default split of split datasets;
    `targets="values"` reads regression targets (tensors: and dataset: specs)."""
    if not isinstance(spec, str) or not spec.strip():
        raise LandscapeError("empty data spec")
    spec = spec.strip()
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return _synthetic(spec, rest, role)
    if kind not in ("tensors", "dataset") and targets != "labels":
        raise LandscapeError(f"data {spec!r} holds class labels: regression targets come from tensors: or "
                             "dataset: specs")
    if kind == "tensors":
        if not rest:
            raise LandscapeError(f"malformed data spec {spec!r}: expected tensors:PATH")
        return _tensors(spec, rest, targets)
    if kind == "dataset":
        return _dataset_factory(spec, rest, targets)
    if kind in ("cifar10", "cifar100", "imagefolder"):
        root, split = rest, role
        if rest.endswith((":train", ":test")):
            root, _, split = rest.rpartition(":")
        if not root:
            raise LandscapeError(f"malformed data spec {spec!r}: expected {kind}:ROOT")
        return _torchvision_split(spec, kind, root, split)
    raise LandscapeError(f"malformed data spec {spec!r}: expected tensors:PATH, cifar10:ROOT, "
                         "cifar100:ROOT, imagefolder:ROOT, dataset:module:factory or synthetic[:key=value,...]")


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()[:16]


def as_data(data: Any, role: str = "train", targets: str = "labels") -> "TensorData | StreamData | None":
    """Data for an analysis: a spec string, TensorData/StreamData, an (x, y) pair of tensors, a
    TensorDataset of two tensors, a map-style Dataset or a DataLoader (see the module's docstring)."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if data is None or isinstance(data, (TensorData, StreamData)):
        return data
    if isinstance(data, str):
        return load_data(data, role, targets)
    if isinstance(data, DataLoader):
        inner = as_data(data.dataset, role, targets)
        if isinstance(inner, StreamData):
            inner.num_workers = int(data.num_workers)
        inner.loader_batch_size = data.batch_size  # type: ignore[union-attr]
        return inner
    if isinstance(data, TensorDataset):
        if len(data.tensors) != 2:
            raise LandscapeError(f"a TensorDataset of {len(data.tensors)} tensors: give two (inputs, labels)")
        data = tuple(data.tensors)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        x = x.float() if not x.is_floating_point() else x
        return TensorData(x, y, f"tensors:memory:{_digest(x, y)}", targets=targets)
    if isinstance(data, Dataset):
        try:
            n = len(data)  # type: ignore[arg-type]
        except TypeError:
            raise LandscapeError(f"data {type(data).__name__}: the dataset has no length (a map-style Dataset "
                                 "is needed)") from None
        kind = f"{type(data).__module__}.{type(data).__qualname__}"
        probe = StreamData(data, f"dataset:{kind}", targets=targets)
        head = probe.head(min(n, 8))
        probe.spec = f"dataset:{kind}:n={n}:{_digest(head.x, head.y)}"
        return probe
    raise LandscapeError(f"data of type {type(data).__name__}: give a data spec string, (x, y) tensors, a "
                         "TensorDataset, a Dataset or a DataLoader")
