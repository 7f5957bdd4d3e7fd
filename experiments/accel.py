"""The training runtime of a study on a GPU: the `[runtime]` table of a study config.

    [runtime]
    amp = "auto"                # "auto" | "bf16" | "off"
    channels_last = "auto"      # "auto" | true | false
    cudnn_benchmark = true
    micro_batch_size = 64       # absent: no gradient accumulation
    pin_memory = "auto"         # "auto" | true | false   (image-folder data only)
    persistent_workers = "auto" # "auto" | true | false   (image-folder data only)

- amp: mixed precision. "bf16" runs each training forward pass under
  torch.autocast(device_type, dtype=torch.bfloat16); the parameters, their gradients and the
  optimizer state stay fp32 (fp32 master weights), the loss is computed in fp32 from the logits,
  and backward runs outside the autocast block. bf16 has fp32's exponent range, so no GradScaler
  is needed. "auto" is bf16 on a CUDA device that supports it and off everywhere else (the CPU
  path is then exactly today's fp32 path). Only training uses it: predictions and the landscape
  analyses keep their own precision (`--precision`).
- channels_last: NHWC memory layout for models with convolutions (faster convolutions with cuDNN
  and tensor cores, ~1.3-1.6x on the CPU). "auto": on for conv models on the CPU and on CUDA.
- cudnn_benchmark: torch.backends.cudnn.benchmark, set at the start of a study on CUDA only (it
  picks the fastest convolution algorithms for the shapes it sees; the shapes of a study are fixed).
- micro_batch_size: gradient accumulation when a batch does not fit in memory. Each optimizer step
  still uses the recipe's batch (finetune.batch_size, pretrain.batch_size), split into
  micro-batches of at most this many samples whose gradients are summed with the loss of each
  micro-batch weighted by its share of the batch, so for a model without BatchNorm the step is
  the full-batch step (up to rounding). With BatchNorm the batch statistics, and the running
  statistics' updates (one per micro-batch), come from the micro-batches: the step is then that
  of a smaller BN batch, as in any gradient-accumulation setup.
- pin_memory, persistent_workers: the DataLoaders of image-folder data (cifar10, cifar100,
  imagefolder). "auto": pinned host memory when training on CUDA; persistent workers when training
  on CUDA with data.num_workers > 0 (the workers then stay alive from epoch to epoch and unit to
  unit instead of being started again for every epoch). Batches are identical either way: the
  order and every sample's augmentation seed are drawn from the run's generator as before.

Like study.device, the runtime table says how a study runs, not what it is: it is left out of the
study's fingerprint, so changing it reuses the finished units (which then ran another way).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from landscape.core.errors import LandscapeError

from .data import FolderTask
from .loaders import loader_options

AMP_CHOICES = ("auto", "bf16", "off")
AUTO = "auto"

# The defaults of the [runtime] table (experiments.config validates against these).
RUNTIME_DEFAULTS: dict[str, Any] = {"amp": "auto", "channels_last": "auto", "cudnn_benchmark": True,
                                    "micro_batch_size": None, "pin_memory": "auto", "persistent_workers": "auto"}
# Keys that only apply to image-folder data (DataLoaders).
LOADER_KEYS = ("pin_memory", "persistent_workers")


def check_runtime(table: dict[str, Any], where: str = "runtime.") -> None:
    """Value checks of a type-checked [runtime] table, one line naming the key (LandscapeError)."""
    if table.get("amp") not in AMP_CHOICES:
        raise LandscapeError(f"{where}amp must be one of {', '.join(repr(c) for c in AMP_CHOICES)} "
                             f"(bf16 autocast with fp32 weights, or none), got {table.get('amp')!r}")
    for key in ("channels_last", "pin_memory", "persistent_workers"):
        v = table.get(key, AUTO)
        if not (isinstance(v, bool) or v == AUTO):
            raise LandscapeError(f"{where}{key} must be true, false or \"auto\", got {v!r}")
    if not isinstance(table.get("cudnn_benchmark", True), bool):
        raise LandscapeError(f"{where}cudnn_benchmark must be true or false, got {table['cudnn_benchmark']!r}")
    mb = table.get("micro_batch_size")
    if mb is not None and (not isinstance(mb, int) or isinstance(mb, bool) or mb < 1):
        raise LandscapeError(f"{where}micro_batch_size must be a positive integer (samples per forward pass "
                             f"of a gradient-accumulated batch), got {mb!r}")


# ----------------------------------------------------------------------------------------------
# resolving "auto" on a device


def _device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 autocast runs on `device`: always on the CPU; on CUDA where the GPU has bf16
    (Ampere and later; emulation on older GPUs does not count)."""
    device = _device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # pragma: no cover - older torch without the keyword
            return bool(torch.cuda.is_bf16_supported())
    return False


def amp_dtype(amp: str | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of `amp` ("auto" | "bf16" | "off") on `device`; None: no autocast.

    "auto" is bf16 on CUDA devices that support it and off elsewhere; "bf16" on a device without
    bf16 is refused in one line.
    """
    device = _device(device)
    if amp in (None, "off", False):
        return None
    if amp == AUTO:
        return torch.bfloat16 if device.type == "cuda" and bf16_supported(device) else None
    if amp == "bf16":
        if not bf16_supported(device):
            raise LandscapeError(f"runtime.amp = \"bf16\": device {device} does not support bfloat16 "
                                 "(use amp = \"off\" or \"auto\")")
        return torch.bfloat16
    raise LandscapeError(f"runtime.amp must be one of {', '.join(repr(c) for c in AMP_CHOICES)}, got {amp!r}")


def autocast(dtype: torch.dtype | None, device: torch.device | str) -> contextlib.AbstractContextManager:
    """torch.autocast for `dtype` on the device's type, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(_device(device).type, dtype=dtype)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def wants_channels_last(channels_last: bool | str | None, model: nn.Module, device: torch.device | str) -> bool:
    """Whether `model` should be put in channels_last: "auto" for conv models on the CPU and CUDA;
    True for any model with convolutions; False never."""
    if channels_last is False or not has_conv(model):
        return False
    if channels_last is True:
        return True
    return _device(device).type in ("cpu", "cuda")


def configure_loaders(task: Any, runtime: Mapping[str, Any], device: torch.device | str) -> None:
    """Give a FolderTask its DataLoader options (tasks without DataLoaders are left alone)."""
    if isinstance(task, FolderTask):
        task.set_loader_options(loader_options(runtime, _device(device), task.num_workers))


@dataclass(frozen=True)
class Runtime:
    """A [runtime] table resolved on a device: what training will actually do."""

    device: str
    amp: str                     # as configured: "auto" | "bf16" | "off"
    dtype: torch.dtype | None    # the autocast dtype it resolves to (None: fp32)
    channels_last: bool | str
    cudnn_benchmark: bool
    micro_batch_size: int | None
    previous_benchmark: bool | None = None  # cudnn.benchmark before apply_runtime set it (CUDA only)

    def restore(self) -> None:
        """Put torch.backends.cudnn.benchmark back as it was before `apply_runtime` (call it when
        training ends: benchmark mode picks convolution algorithms per process, so analyses that
        must give the same numbers in every process should not run under it)."""
        if self.previous_benchmark is not None:
            torch.backends.cudnn.benchmark = self.previous_benchmark

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of experiments.training.train for this runtime."""
        return {"amp": self.amp, "micro_batch_size": self.micro_batch_size}

    def describe(self) -> str:
        """One line: e.g. 'cuda: bf16 autocast (fp32 weights), channels_last auto, cudnn.benchmark, micro-batches of 64'."""
        parts = [f"{'bf16 autocast (fp32 weights)' if self.dtype is not None else 'fp32'}",
                 f"channels_last {self.channels_last if isinstance(self.channels_last, str) else ('on' if self.channels_last else 'off')}"]
        if self.cudnn_benchmark and self.device.startswith("cuda"):
            parts.append("cudnn.benchmark")
        if self.micro_batch_size:
            parts.append(f"micro-batches of {self.micro_batch_size}")
        return f"{self.device}: " + ", ".join(parts)


def apply_runtime(runtime: Mapping[str, Any] | None, device: torch.device | str, *tasks: Any) -> Runtime:
    """Apply a study's [runtime] table at the start of a study; returns it resolved.

    Sets torch.backends.cudnn.benchmark on CUDA (only there; `Runtime.restore()` puts it back), gives every FolderTask among `tasks`
    its DataLoader options (pinned memory, persistent workers), and refuses amp = "bf16" on a
    device without bf16 in one line. `runtime` None (or {}) means the defaults.
    """
    rt = {**RUNTIME_DEFAULTS, **(runtime or {})}
    check_runtime(rt)
    device = _device(device)
    dtype = amp_dtype(rt["amp"], device)
    previous = None
    if device.type == "cuda":
        previous = bool(torch.backends.cudnn.benchmark)
        torch.backends.cudnn.benchmark = bool(rt["cudnn_benchmark"])
    for task in tasks:
        configure_loaders(task, rt, device)
    return Runtime(str(device), rt["amp"], dtype, rt["channels_last"], bool(rt["cudnn_benchmark"]),
                   rt["micro_batch_size"], previous)


# ----------------------------------------------------------------------------------------------
# one training step's forward and backward passes


def forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                     dtype: torch.dtype | None, device: torch.device | str,
                     micro_batch_size: int | None = None) -> torch.Tensor:
    """Zero the gradients, then accumulate the gradient of the batch's mean cross-entropy.

    The forward passes run under autocast(dtype) when dtype is given (the parameters and their
    gradients stay in their own dtype, fp32); the loss is computed in fp32 from the logits and
    backward runs outside autocast. With `micro_batch_size` smaller than the batch, the batch is
    split into micro-batches of that many samples (the last one smaller) and each contributes
    sum(cross-entropy) / batch size, so the accumulated gradient is that of the batch's mean
    loss. Returns the batch's mean loss (detached).
    """
    import torch.nn.functional as F

    optimizer.zero_grad(set_to_none=True)
    n = x.shape[0]
    size = micro_batch_size if micro_batch_size and micro_batch_size < n else n
    total: torch.Tensor | None = None
    for start in range(0, n, size):
        xb, yb = x[start:start + size], y[start:start + size]
        with autocast(dtype, device):
            out = model(xb)
        if out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # the loss in fp32 (fp64 logits stay fp64)
        if size == n:
            loss = F.cross_entropy(out, yb)
        else:
            loss = F.cross_entropy(out, yb, reduction="sum") / n
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total
