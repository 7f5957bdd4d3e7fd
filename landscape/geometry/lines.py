"""Lines between snapshots, their barriers, and barrier matrices."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.core.family import AffineFamily


def barrier(alphas: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """max over α∈[0,1] of m(α) − [(1−α)·m(0) + α·m(1)], and the α where it peaks.

    Positive: the path rises above the straight chord between the endpoints' values.
    """
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
    inside = (a >= -1e-12) & (a <= 1 + 1e-12)
    excess = v - ((1 - a) * v[i0] + a * v[i1])
    excess = np.where(inside, excess, -np.inf)
    k = int(np.nanargmax(np.where(np.isnan(excess), -np.inf, excess)))
    return float(excess[k]), float(a[k])


def curve_barriers(alphas: Sequence[float], curve: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Loss and error (1 − accuracy) barriers for each split a curve holds."""
    out = {}
    for split in ("train", "test"):
        if f"{split}_loss" not in curve:
            continue
        h, a = barrier(alphas, curve[f"{split}_loss"])
        out[f"{split}_loss"] = {"barrier": h, "alpha": a}
        if f"{split}_acc" in curve:  # classification only
            h, a = barrier(alphas, 1.0 - np.asarray(curve[f"{split}_acc"]))
            out[f"{split}_error"] = {"barrier": h, "alpha": a}
    return out


def line_family(a: Snapshot, b: Snapshot) -> AffineFamily:
    check_same_architecture([a, b])
    return AffineFamily.line(a.params, b.params, a.buffers, b.buffers)


def barrier_matrices(alphas: np.ndarray, data: Mapping[str, np.ndarray], pairs: Sequence[tuple[int, int]],
                     n: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for p, (i, j) in enumerate(pairs):
        curve = {k: np.asarray(v)[p] for k, v in data.items()
                 if k.endswith(("_loss", "_acc")) and np.ndim(v) == 2}
        for key, res in curve_barriers(alphas, curve).items():
            mat = out.setdefault(f"{key}_barrier", np.zeros((n, n)))
            mat[i, j] = mat[j, i] = res["barrier"]
    return out


def line_snapshot(a: Snapshot, b: Snapshot, alpha: float) -> Snapshot:
    """The point (1−α)·a + α·b with floating buffers interpolated alike (as lines do with BN keep);
    α = 0 and α = 1 give the endpoints' own vectors exactly."""
    if alpha == 0.0:
        params, buffers = a.params.clone(), {k: v.clone() for k, v in a.buffers.items()}
    elif alpha == 1.0:
        params, buffers = b.params.clone(), {k: v.clone() for k, v in b.buffers.items()}
    else:
        params = a.params + alpha * (b.params - a.params)
        buffers = {k: (v + alpha * (b.buffers[k] - v)).to(v.dtype) if v.is_floating_point() else v.clone()
                   for k, v in a.buffers.items()}
    return Snapshot(f"{a.name}->{b.name}@{alpha:g}", params, a.layout, buffers, {"alpha": float(alpha)})
