"""The training-time estimate a study prints before it starts.

It is plain arithmetic on plain numbers, independent of how the study plans and runs its units:

    secs = measure_seconds_per_iteration(model, task, batch_size=256, device=device, amp="auto")
    est = estimate_training([iterations_for(u.epochs, ipe) for u in todo], secs, device_name(device))
    print(est)   # estimated training time: ~612 min (~10.2 h) for 57 units (245,000 iterations at
                 # 150 ms/iteration, measured on cuda:0 (NVIDIA H100 80GB HBM3))

The measurement times a few training iterations of a throwaway copy of a model (its first
iterations are a warm-up: cuDNN's algorithm search, DataLoader workers starting, caches): the
model, its BN buffers and the caller's RNG states are left as they were. The estimate covers the
training iterations only: predictions, SWA's BN pass and the analyses come on top.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from landscape.core.errors import LandscapeError


def iterations_for(epochs: float, iters_per_epoch: int) -> int:
    """The iterations of a run of `epochs` epochs (fractions allowed: round(epochs × iterations per epoch))."""
    return max(0, int(round(float(epochs) * int(iters_per_epoch))))


@dataclass(frozen=True)
class TrainingEstimate:
    """An estimate of the training time of `units` runs of `iterations` iterations in all."""

    units: int
    iterations: int
    seconds_per_iteration: float  # as measured (at measured_batch_size when given)
    device: str
    seconds: float
    measured_batch_size: int | None = None  # set when the time was scaled to each unit's batch size

    @property
    def minutes(self) -> float:
        return self.seconds / 60.0

    def __str__(self) -> str:
        if self.units == 0:
            return "estimated training time: nothing left to train"
        ms = 1000.0 * self.seconds_per_iteration
        rate = f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"
        at = f"{rate} ms/iteration"
        if self.measured_batch_size is not None:
            at += f" of batch {self.measured_batch_size}, scaled to each unit's batch size"
        return (f"estimated training time: {format_minutes(self.seconds)} for {self.units} "
                f"unit{'s' if self.units != 1 else ''} ({self.iterations:,} iterations at {at}, "
                f"measured on {self.device})")


def format_minutes(seconds: float) -> str:
    """'~0.4 min', '~4.2 min', '~37 min', '~612 min (~10.2 h)'."""
    m = seconds / 60.0
    if m < 10:
        text = f"~{m:.1f} min"
    else:
        text = f"~{m:.0f} min"
    if m >= 120:
        text += f" (~{m / 60:.1f} h)"
    return text


def estimate_training(iterations: Sequence[int], seconds_per_iteration: float, device: str, *,
                      batch_sizes: Sequence[int] | None = None,
                      measured_batch_size: int | None = None) -> TrainingEstimate:
    """The time of training runs of `iterations` (one entry per unit) at `seconds_per_iteration`.

    With `batch_sizes` (one per unit) and `measured_batch_size` (the batch the time was measured
    at), each unit's iterations cost seconds_per_iteration × its batch size / the measured one
    (the cost of an iteration grows about linearly with the batch once the device is busy).
    """
    its = [int(n) for n in iterations]
    if any(n < 0 for n in its):
        raise LandscapeError(f"estimate: negative iteration count in {its}")
    if not (math.isfinite(seconds_per_iteration) and seconds_per_iteration >= 0):
        raise LandscapeError(f"estimate: seconds per iteration must be a finite non-negative number, "
                             f"got {seconds_per_iteration!r}")
    if (batch_sizes is None) != (measured_batch_size is None):
        raise LandscapeError("estimate: give batch_sizes and measured_batch_size together")
    if batch_sizes is not None:
        if len(batch_sizes) != len(its):
            raise LandscapeError(f"estimate: {len(batch_sizes)} batch sizes for {len(its)} units")
        if measured_batch_size <= 0 or any(b <= 0 for b in batch_sizes):
            raise LandscapeError("estimate: batch sizes must be positive")
        seconds = sum(n * seconds_per_iteration * b / measured_batch_size for n, b in zip(its, batch_sizes))
    else:
        seconds = sum(its) * seconds_per_iteration
    return TrainingEstimate(len(its), sum(its), float(seconds_per_iteration), str(device), float(seconds),
                            measured_batch_size)


def device_name(device: torch.device | str) -> str:
    """'cuda:0 (NVIDIA H100 80GB HBM3)', 'cpu (2 threads)'."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_seconds_per_iteration(model: nn.Module, task: Any, *, batch_size: int, device: torch.device | str,
                                  warmup: int = 3, timed: int = 10, amp: str = "off",
                                  micro_batch_size: int | None = None, momentum: float = 0.9,
                                  weight_decay: float = 5e-4) -> float:
    """Seconds per training iteration of `model` on `task`'s training batches, from `timed`
    iterations after `warmup` ones, on a throwaway copy of the model (SGD with lr 0: the same work
    as a real step). `amp` and `micro_batch_size` as experiments.training.train takes them (the
    study's runtime table), so the estimate measures the runtime the study will use.
    """
    from .training import Hooks, train

    if warmup < 0 or timed < 1:
        raise LandscapeError(f"estimate: warmup must be >= 0 and timed >= 1, got {warmup} and {timed}")
    device = torch.device(device)
    marks: dict[str, float] = {}

    def step(unit, i, lr, m, opt) -> None:
        if i == warmup:
            _sync(device)
            marks["start"] = time.perf_counter()

    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        probe = copy.deepcopy(model).to(device)
        opt = torch.optim.SGD(probe.parameters(), lr=0.0, momentum=momentum, weight_decay=weight_decay)
        train(probe, task, opt, iterations=warmup + timed, batch_size=batch_size,
              generator=torch.Generator().manual_seed(0), device=device, hooks=Hooks(step=step),
              what="runtime estimate", amp=amp, micro_batch_size=micro_batch_size)
        _sync(device)
        end = time.perf_counter()
    model.train(was_training)
    del probe, opt
    return (end - marks["start"]) / timed
