"""Shared benchmark helpers: timing, the machine's fp32 matmul rate, and forward FLOP counts."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def timeit(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn` in seconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(n: int = 1024, device: str = "cpu") -> float:
    """The machine's measured fp32 matmul rate in FLOP/s (best of several n×n products)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = min(timeit(lambda: a @ b, repeats=5) for _ in range(2))
    return 2 * n**3 / t


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass (matmuls and convolutions, as torch's FlopCounterMode counts them)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())
