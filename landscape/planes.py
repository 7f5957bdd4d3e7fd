"""2D loss planes: a grid of coefficients on two directions around a centre."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .checkpoints import Snapshot
from .directions import project
from .engine import Evaluator
from .family import AffineFamily


def plane_coefficients(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Rows (x_i, y_j) in C order, matching surfaces of shape len(x) × len(y)."""
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)


def plane_family(center: Snapshot, directions: torch.Tensor) -> AffineFamily:
    # On a plane, BN mode `keep` uses the centre's buffers at every point.
    return AffineFamily(center.params, directions.to(center.params.dtype), dict(center.buffers), {})


def compute_plane(evaluator: Evaluator, center: Snapshot, directions: torch.Tensor, xs: np.ndarray,
                  ys: np.ndarray, grid, chunk_size: int | None = None, quiet: bool = True) -> dict[str, np.ndarray]:
    """Fill the missing points of a surface grid [len(xs), len(ys)] and return its arrays."""
    todo = grid.missing()
    if len(todo):
        evaluator.run(plane_family(center, directions), plane_coefficients(xs, ys), todo, chunk_size,
                      on_chunk=lambda idx, vals: grid.write(idx, vals), quiet=quiet, desc="plane")
    return grid.read()


def project_snapshots(snaps: Iterable[Snapshot], origin: torch.Tensor,
                      directions: torch.Tensor) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, plane coordinates [n, 2] and distances from the plane of each snapshot.

    `snaps` may be a generator, so large models need not all be in memory at once."""
    names, coords, dists = [], [], []
    for s in snaps:
        c, d = project(s.params, origin, directions)
        names.append(s.name)
        coords.append(c.numpy())
        dists.append(d)
    return names, np.asarray(coords).reshape(-1, 2), np.asarray(dists)
