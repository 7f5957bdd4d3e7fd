"""The evaluation engine: metrics of a model at a batch of weight points.

Every analysis (a line, a plane, a barrier matrix) hands the engine an affine family of points
θ(c) = θ0 + Σ_j c_j·D_j (buffers likewise: b0 + Σ_j c_j·B_j) and a list of coefficient rows.
The engine cuts the rows into chunks, the unit of progress and of resume, and calls back with
each finished chunk.

CPU path, chosen by measurement (docs/design.md): data moved to the device once and cut into
slices (no DataLoader), loss and correct counts accumulated on the device with one host sync
per point, BatchNorm folded into the convolutions in eval mode, channels_last for 4-D inputs,
exact fp32.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from landscape.core.allocator import tune_allocator
from landscape.core.bn import BN_MODES, FoldedEval, bn_modules, recompute_bn
from landscape.core.checkpoints import Snapshot
from landscape.core.data import StreamData, TensorData, check_labels
from landscape.core.errors import LandscapeError
from landscape.core.family import AffineFamily
from landscape.core.losses import LossFn, default_loss
from landscape.core.params import ParamLayout, set_buffers, vector_to_model
from landscape.core.validate import positive_int
from landscape_kernels import PRECISIONS, precision_from_torch_flags

from .batched import BatchedForward, batched_metrics
from .repair import EndpointStats, barycentric, check_vertices, measure, repair, repair_layers


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N` as a torch.device.

    Only CPU and CUDA devices are supported; anything else (meta, xla, mps, a GPU index that
    does not exist, a malformed string) is refused with a one-line LandscapeError."""
    accepted = "accepted: auto, cpu, cuda, cuda:N"
    if device is None or (isinstance(device, str) and device.strip() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise LandscapeError(f"unknown device {device!r}: {accepted}")
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError):
        raise LandscapeError(f"unknown device {str(device)!r}: {accepted}") from None
    if dev.type == "cpu":
        if dev.index not in (None, 0):
            raise LandscapeError(f"unknown device {str(device)!r}: {accepted}")
        return torch.device("cpu")
    if dev.type != "cuda":
        raise LandscapeError(f"unsupported device {str(device)!r}: only CPU and CUDA devices are "
                             f"supported; {accepted}")
    if not torch.cuda.is_available():
        raise LandscapeError(f"device {str(device)!r} was asked for but CUDA is not available; "
                             "accepted here: auto, cpu")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise LandscapeError(f"device {str(device)!r}: no such GPU, this machine has {count} "
                             f"(cuda:0 to cuda:{count - 1}); {accepted}")
    return dev


@contextlib.contextmanager
def _tf32(allow: bool):
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


class Evaluator:
    """Evaluates a model's loss and accuracy at weight points, on train and/or test data.

    bn_mode `keep` uses each point's buffers; `recompute` re-estimates BN statistics at each
    point on the first `bn_samples` training samples in batches of `batch_size` (as update_bn);
    `repair` does that and rescales each BN output (without BN: each hidden Conv/Linear output)
    to the endpoints' interpolated statistics on the same samples (REPAIR, `evaluate.repair`;
    only `run` with the family's endpoints, on the per-point path);
    `auto` is `recompute` for a model with BatchNorm given training data, else `keep`
    (`self.bn_mode` holds the mode chosen).
    `loss_fn(logits, y)` must return the mean loss over the batch (as torch's losses do).
    """

    def __init__(self, model: nn.Module, train: TensorData | None = None, test: TensorData | None = None, *,
                 bn_mode: str = "keep", loss_fn: LossFn | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 250, bn_samples: int = 2000, batched: bool | None = None,
                 accuracy: bool = True, precision: str = "exact") -> None:
        if bn_mode == "auto":  # the exact choice where it exists: statistics of each point's own weights
            bn_mode = "recompute" if bn_modules(model) and train is not None else "keep"
        if bn_mode not in BN_MODES:
            raise LandscapeError(f"unknown BN mode {bn_mode!r}: choose auto, keep, recompute or repair")
        if train is None and test is None:
            raise LandscapeError("nothing to evaluate on: give training data, test data or both")
        if bn_mode == "recompute" and train is None and bn_modules(model):
            raise LandscapeError("BN mode 'recompute' needs training data")
        if bn_mode == "repair" and train is None:
            raise LandscapeError("BN mode 'repair' needs training data (--data): REPAIR measures the endpoints' "
                                 "statistics on it")
        self.device = resolve_device(device)
        tune_allocator()  # once per process: batches reuse freed memory instead of faulting it in again
        self.bn_mode = bn_mode
        self.loss_fn = loss_fn or default_loss
        self.accuracy = bool(accuracy)  # classification: argmax accuracy; regression: loss only
        if precision == "auto":  # torch's own flag decides, as it does for the user's other matmuls
            precision = precision_from_torch_flags()
        if precision not in PRECISIONS:
            raise LandscapeError(f"unknown precision {precision!r}: choose exact, tf32 or bf16")
        self.precision = precision
        self.batch_size = positive_int(batch_size, "--batch-size")
        self.bn_samples = positive_int(bn_samples, "--bn-samples")
        self.model = copy.deepcopy(model).to(self.device)
        self.layout = ParamLayout.of(self.model)
        self.has_bn = bool(bn_modules(self.model))
        # channels_last helps convolutions on the CPU; for a model that flattens its input first
        # it would only add a copy per batch
        self.channels_last = self.device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in self.model.modules())
        # In-memory splits are moved to the device once; streamed ones are read batch by batch.
        self.datasets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.streams: dict[str, StreamData] = {}
        self.splits: list[str] = []
        for split, data in (("train", train), ("test", test)):
            if data is None:
                continue
            self.splits.append(split)
            if isinstance(data, StreamData):
                self.streams[split] = data
                continue
            self.datasets[split] = (self._to_device(data.x), data.y.to(self.device))
        self._bn_x = None  # the samples BN statistics are recomputed on: a bounded head of the data
        self._repair_x = None  # the samples REPAIR measures statistics on (the same head)
        if self.bn_mode == "recompute" and self.has_bn or self.bn_mode == "repair":
            x = (self.datasets["train"][0][: self.bn_samples] if "train" in self.datasets
                 else self._to_device(self.streams["train"].head(self.bn_samples).x))
            # repair re-estimates BN inside its own pass: `load` and `bn_inputs` leave it alone
            self._bn_x, self._repair_x = (None, x) if self.bn_mode == "repair" else (x, None)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self._check_data(train, test)
        self.repair_layers = repair_layers(self.model, self._probe) if self.bn_mode == "repair" else []
        self._repair_cache: tuple[list[torch.Tensor], list[int], np.ndarray, EndpointStats] | None = None
        self.folded = FoldedEval(self.model)
        self.batched = self._choose_batched(batched)

    def _precision(self):
        """The per-point path's matmul precision: exact fp32, TF32 tensor cores (CUDA only; the CPU
        has none, so it stays exact there) or bf16 autocast."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.precision == "tf32" and self.device.type == "cuda":
            return _tf32(True)
        return _tf32(False) if self.device.type == "cuda" else contextlib.nullcontext()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and self.channels_last else x

    def _batches(self, split: str):
        """(x, y) batches of a split on the device."""
        if split in self.streams:
            for x, y in self.streams[split].batches(self.batch_size, self.device):
                yield self._to_device(x), y
            return
        x, y = self.datasets[split]
        for start in range(0, x.shape[0], self.batch_size):
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]

    def _choose_batched(self, batched: bool | None) -> BatchedForward | None:
        """K points per pass: the default on CUDA. On the CPU the per-point path with BN folding
        measured faster for convolutional networks, while networks whose first layer carries
        most of the arithmetic (MLPs) gain from computing it once for all points
        (benchmarks/surface.py). The rule is deterministic, so a resumed run takes the same path."""
        if batched is False:
            return None
        if self.bn_mode == "repair":  # REPAIR's pass and fold run on the per-point path
            if batched:
                raise LandscapeError("batched evaluation does not support BN mode repair: leave --batched off")
            return None
        if self.streams or not self.accuracy:  # K points per pass: in-memory classification data only
            if batched:
                raise LandscapeError("batched evaluation needs in-memory classification data")
            return None
        fwd = BatchedForward(self.model, precision=self.precision)
        if not fwd.supports:
            if batched:
                raise LandscapeError(f"batched evaluation is not available for this model: {fwd.reason}")
            return None
        if batched is None and self.device.type != "cuda" and first_layer_flop_share(self.model, self._probe) < 0.5:
            return None
        self.points_per_pass = self._points_per_pass()
        return fwd

    def _points_per_pass(self, cap: int = 256) -> int:
        """K from memory: how many points' activations for one data batch fit the budget
        (2 GiB on the CPU, half the free memory on CUDA)."""
        sizes: list[int] = []
        leaves = [m for m in self.model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(lambda mod, inp, out: sizes.append(out.numel())
                                         if isinstance(out, torch.Tensor) else None) for m in leaves]
        try:
            with torch.no_grad():
                self.model(self._probe)
        finally:
            for h in hooks:
                h.remove()
        rows = min(self.batch_size, max(x.shape[0] for x, _ in self.datasets.values()))
        # x3: BatchNorm runs unfused on this path and keeps a temporary or two per layer
        per_point = 3 * 4 * rows * max(1, sum(sizes))
        budget = torch.cuda.mem_get_info(self.device)[0] // 2 if self.device.type == "cuda" else 2 << 30
        return int(max(1, min(cap, budget // per_point)))

    def _check_data(self, train: TensorData | None, test: TensorData | None) -> None:
        first = self.splits[0]
        x = self._probe = (self.datasets[first][0][:1] if first in self.datasets
                           else self._to_device(self.streams[first].head(1).x))
        try:
            with torch.no_grad():
                out = self.model(x)
        except Exception as exc:  # the model does not fit the data
            raise LandscapeError(f"the model does not accept the data: {str(exc).splitlines()[0]}") from None
        if not self.accuracy:  # regression: the loss function decides what outputs mean
            self.num_classes = None
            return
        if out.ndim != 2:
            raise LandscapeError(f"the model must return logits [batch, classes], got shape {list(out.shape)}")
        self.num_classes = int(out.shape[1])
        for data in (train, test):
            if data is not None:
                check_labels(data, self.num_classes)

    @property
    def metric_names(self) -> list[str]:
        return [f"{split}_{m}" for split in self.splits for m in (("loss", "acc") if self.accuracy else ("loss",))]

    @property
    def config(self) -> dict:
        return {"bn_mode": self.bn_mode, "batch_size": self.batch_size,
                "bn_samples": self.bn_samples if self.bn_mode in ("recompute", "repair") else None,
                "loss": getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__), "precision": self.precision}

    # -- what gradient-based analyses (Hessian, curves) take from the evaluator ----------
    def loss_data(self) -> dict[str, Any]:
        """The data a loss is taken over: the training split if given, else the test split, in
        memory (x, y) or streamed; with its split name and size."""
        self._refuse_repair()
        split = "train" if "train" in self.splits else "test"
        if split in self.streams:
            return {"x": None, "y": None, "stream": self.streams[split], "split": split,
                    "samples": len(self.streams[split])}
        x, y = self.datasets[split]
        return {"x": x, "y": y, "stream": None, "split": split, "samples": int(x.shape[0])}

    def _refuse_repair(self) -> None:
        if self.bn_mode == "repair":
            raise LandscapeError("BN mode repair corrects networks interpolated between snapshots (interpolate, "
                                 "barriers, plane --through); this analysis takes --bn keep or recompute")

    def bn_inputs(self) -> torch.Tensor | None:
        """The samples BN statistics are recomputed on (None: BN mode keep, or no BN)."""
        return self._bn_x

    def with_point_buffers(self, snap: Snapshot) -> Snapshot:
        """`snap` with its BN statistics recomputed on the evaluator's BN inputs when its BN mode is
        `recompute` (as update_bn, on the first bn_samples samples); otherwise `snap` itself."""
        if self._bn_x is None:
            return snap
        model = copy.deepcopy(self.model)
        snap.load_into(model)
        recompute_bn(model, self._bn_x, self.batch_size)
        return Snapshot(snap.name, snap.params, snap.layout,
                        {k: v.detach().cpu().clone() for k, v in model.named_buffers()}, dict(snap.meta))

    def precision_scope(self):
        """The matmul precision of the evaluator's own passes (exact fp32, TF32 on CUDA, bf16
        autocast), as a context for other computations on its model (Hessian-vector products)."""
        return self._precision()

    # -- one point ---------------------------------------------------------------------
    @torch.no_grad()
    def load(self, params: torch.Tensor, buffers: Mapping[str, torch.Tensor] | None = None) -> None:
        """Put a weight point (and its buffers) into the model, recomputing BN if asked."""
        vector_to_model(params.to(self.device), self.model)
        if buffers:
            set_buffers(self.model, {k: v.to(self.device) for k, v in buffers.items()})
        if self._bn_x is not None:
            recompute_bn(self.model, self._bn_x, self.batch_size)
        self.model.eval()
        self.folded.refresh()

    @torch.no_grad()
    def metrics_of_loaded(self) -> dict[str, float]:
        """Loss and accuracy of the currently loaded point, one host sync for all splits."""
        sums = []
        for split in self.splits:
            loss = torch.zeros((), dtype=torch.float64, device=self.device)
            correct = torch.zeros((), dtype=torch.int64, device=self.device)
            n = 0
            for xb, yb in self._batches(split):
                with self._precision():
                    logits = self.folded(xb)
                if self.precision == "bf16":
                    logits = logits.float()  # the loss in fp32, whatever autocast gave
                loss += self.loss_fn(logits, yb).double() * yb.shape[0]
                if self.accuracy:
                    correct += (logits.argmax(1) == yb).sum()
                n += yb.shape[0]
            sums += [loss / n, correct.double() / n] if self.accuracy else [loss / n]
        values = torch.stack(sums).tolist()
        return dict(zip(self.metric_names, values))

    @torch.no_grad()
    def probe_outputs(self, params: torch.Tensor, buffers: Mapping[str, torch.Tensor] | None = None,
                      n: int = 8) -> torch.Tensor:
        """The model's outputs at a weight point on the first `n` samples it is evaluated on (the
        probe batch under torchrun: every rank must compute rank 0's)."""
        self.load(params, buffers)
        xb = next(iter(self._batches(self.splits[0])))[0][:n]
        with self._precision():
            return self.folded(xb).float()

    def evaluate(self, params: torch.Tensor, buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        self._refuse_repair()  # a lone point has no endpoints to take statistics from
        self.load(params, buffers)
        return self.metrics_of_loaded()

    # -- REPAIR ------------------------------------------------------------------------
    def _endpoint_stats(self, family: AffineFamily, vertices: np.ndarray) -> EndpointStats:
        """The endpoints' statistics, measured once per family (the same tensors, unchanged, and
        the same endpoints give the cached ones: a grid's chunks of one segment share them)."""
        tensors = [family.origin, family.directions, *family.buffer_origin.values(),
                   *family.buffer_directions.values()]
        versions = [t._version for t in tensors]
        cached = self._repair_cache
        if (cached is not None and len(cached[0]) == len(tensors) and all(a is b for a, b in zip(cached[0], tensors))
                and cached[1] == versions and np.array_equal(cached[2], vertices)):
            return cached[3]
        per_endpoint = []
        for v in vertices:
            c = torch.as_tensor(v, dtype=torch.float64, device=self.device)
            with torch.no_grad():
                vector_to_model(family.params_at(c), self.model)
                set_buffers(self.model, family.buffers_at(c))
            per_endpoint.append(measure(self.model, self.repair_layers, self._repair_x, self.batch_size))
        stats = EndpointStats.of(per_endpoint)
        self._repair_cache = (tensors, versions, vertices.copy(), stats)
        return stats

    @torch.no_grad()
    def _load_repaired(self, family: AffineFamily, c: torch.Tensor, vertices: np.ndarray) -> None:
        """The point θ(c) with REPAIR applied: BN re-estimated and the chosen layers rescaled."""
        stats = self._endpoint_stats(family, vertices)
        vector_to_model(family.params_at(c), self.model)
        set_buffers(self.model, family.buffers_at(c))
        repair(self.model, self.repair_layers, self._repair_x, self.batch_size, stats, barycentric(vertices, c))
        self.model.eval()
        self.folded.refresh()

    # -- many points -------------------------------------------------------------------
    def default_chunk(self) -> int:
        """Points per chunk when none is asked for: one pass on the batched path, else 8."""
        return self.points_per_pass if self.batched is not None else 8

    def run(self, family: AffineFamily, coeffs: np.ndarray | torch.Tensor, indices: Sequence[int] | None = None,
            chunk_size: int | None = None, on_chunk: Callable[[np.ndarray, dict[str, np.ndarray]], None] | None = None,
            quiet: bool = True, desc: str = "points", vertices: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Evaluate the rows `coeffs[indices]` of the family; `on_chunk(indices, metrics)` after each chunk.

        Returns the metrics of the evaluated rows, in the order of `indices`. The default chunk is
        8 points on the per-point path and one pass of K points (K from memory) on the batched one.
        `vertices` [d + 1, d]: the coefficients of the endpoints (a line: [[0], [1]]; a plane
        through three snapshots: their coordinates), which BN mode repair needs.
        """
        chunk_size = positive_int(self.default_chunk() if chunk_size is None else chunk_size, "--chunk")
        coeffs = torch.as_tensor(np.asarray(coeffs, dtype=np.float64)).reshape(len(coeffs), -1)
        if coeffs.shape[1] != family.ndim:
            raise LandscapeError(f"{coeffs.shape[1]} coefficients per point for {family.ndim} directions")
        indices = np.arange(len(coeffs)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.bn_mode == "repair":
            if vertices is None:
                raise LandscapeError("BN mode repair needs the endpoints of a line or of a plane through three "
                                     "snapshots: their statistics are its targets")
            vertices = check_vertices(vertices, family.ndim)
        family = AffineFamily(family.origin.to(self.device), family.directions.to(self.device),
                              {k: v.to(self.device) for k, v in family.buffer_origin.items()},
                              {k: v.to(self.device) for k, v in family.buffer_directions.items()})
        results: dict[str, list[float]] = {m: [] for m in self.metric_names}
        bar = tqdm(total=len(indices), desc=desc, disable=quiet, unit="pt", leave=False)
        for chunk in _chunks(indices, chunk_size):
            if self.batched is not None:
                passes = [self._run_batched(family, coeffs[part].to(self.device))
                          for part in _chunks(chunk, self.points_per_pass)]
                arrays = {m: np.concatenate([p[m] for p in passes]) for m in self.metric_names}
                bar.update(len(chunk))
            else:
                chunk_metrics: dict[str, list[float]] = {m: [] for m in self.metric_names}
                for i in chunk:
                    c = coeffs[i].to(self.device)
                    if vertices is not None and self.bn_mode == "repair":
                        self._load_repaired(family, c, vertices)
                    else:
                        self.load(family.params_at(c), family.buffers_at(c))
                    values = self.metrics_of_loaded()
                    for m, v in values.items():
                        chunk_metrics[m].append(v)
                    bar.update(1)
                arrays = {m: np.asarray(v) for m, v in chunk_metrics.items()}
            arrays = flag_nonfinite(arrays)
            if on_chunk is not None:
                on_chunk(chunk, arrays)
            for m, v in arrays.items():
                results[m] += list(v)
        bar.close()
        return {m: np.asarray(v) for m, v in results.items()}

    @torch.no_grad()
    def _run_batched(self, family: AffineFamily, coeffs: torch.Tensor) -> dict[str, np.ndarray]:
        """All points of a chunk in one pass per data batch (BN recompute batched too)."""
        fwd = self.batched
        fwd.bind(family, coeffs)
        if self._bn_x is not None:
            fwd.start_recompute()
            x = self._bn_x
            starts = range(0, x.shape[0], self.batch_size)
            for start in starts:
                fwd.forward(x[start:start + self.batch_size], train_bn=True)
            fwd.finish_recompute(len(starts))
        loss_fn = None if self.loss_fn is default_loss else self.loss_fn
        out: dict[str, np.ndarray] = {}
        for split, (x, y) in self.datasets.items():
            loss, acc = batched_metrics(fwd, x, y, self.batch_size, loss_fn)
            out[f"{split}_loss"], out[f"{split}_acc"] = loss.cpu().numpy(), acc.cpu().numpy()
        return out


def flag_nonfinite(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A point whose loss is NaN or inf has no meaningful accuracy (argmax of NaN logits is 0):
    its accuracy on that split becomes NaN too, so it is never stored as an ordinary number."""
    out = dict(arrays)
    for key, loss in arrays.items():
        if key.endswith("_loss"):
            acc_key = key[: -len("_loss")] + "_acc"
            if acc_key in out:
                out[acc_key] = np.where(np.isfinite(loss), out[acc_key], np.nan)
    return out


def first_layer_flop_share(model: nn.Module, x: torch.Tensor) -> float:
    """Share of a forward pass's matmul FLOPs spent in the first Conv2d/Linear (by execution order).

    Counted from the layers' shapes in forward hooks (2·outputs·inputs-per-output for each
    Conv2d and Linear), the same numbers torch's FlopCounterMode gives for these layers, without
    its 1.5 s of imports and tracing on every command's start-up."""
    flops: list[int] = []

    def count(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            per_output = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            per_output = mod.in_features
        flops.append(2 * out.numel() * per_output)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    total = sum(flops)
    return flops[0] / total if total else 0.0


def _chunks(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), max(1, size)):
        yield indices[start:start + size]
