"""Lines between snapshots, their barriers, and barrier matrices."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.evaluate.engine import Evaluator
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


def compute_line(evaluator: Evaluator, a: Snapshot, b: Snapshot, alphas: np.ndarray, grid,
                 chunk_size: int | None = None, quiet: bool = True) -> dict[str, np.ndarray]:
    """Fill the missing points of a curve grid (shape [len(alphas)]) and return all its arrays."""
    family = line_family(a, b)
    todo = grid.missing()
    if len(todo):
        evaluator.run(family, alphas.reshape(-1, 1), todo, chunk_size,
                      on_chunk=lambda idx, vals: grid.write(idx, vals), quiet=quiet, desc="line")
    return grid.read()


def compute_barrier_matrix(evaluator: Evaluator, snaps: Sequence[Snapshot], alphas: np.ndarray, grid,
                           chunk_size: int | None = None, quiet: bool = True) -> dict[str, np.ndarray]:
    """Curves for every pair i<j (grid shape [n_pairs, len(alphas)]) and the barrier matrices."""
    check_same_architecture(list(snaps))
    n, na = len(snaps), len(alphas)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    todo = grid.missing()
    for p, (i, j) in enumerate(pairs):
        mine = todo[(todo >= p * na) & (todo < (p + 1) * na)]
        if not len(mine):
            continue
        family = line_family(snaps[i], snaps[j])
        evaluator.run(family, alphas.reshape(-1, 1), mine - p * na, chunk_size,
                      on_chunk=lambda idx, vals, off=p * na: grid.write(idx + off, vals), quiet=quiet,
                      desc=f"pair {i}-{j}")
    data = grid.read()
    data.update(barrier_matrices(alphas, data, pairs, n))
    return data


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
