"""2D loss planes: a grid of coefficients on two directions around a centre."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from landscape.core.checkpoints import Snapshot
from landscape.core.family import AffineFamily

from .directions import project


def plane_coefficients(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Rows (x_i, y_j) in C order, matching surfaces of shape len(x) × len(y)."""
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    return np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)


def plane_family(center: Snapshot, directions: torch.Tensor,
                 buffer_directions: dict[str, torch.Tensor] | None = None) -> AffineFamily:
    """Points center + x·d1 + y·d2. Buffers: the centre's at every point, unless
    `buffer_directions` moves them with the same coefficients (planes through snapshots)."""
    return AffineFamily(center.params, directions.to(center.params.dtype), dict(center.buffers),
                        dict(buffer_directions or {}))


def through_buffer_directions(center: Snapshot, b: Snapshot, c: Snapshot,
                              coords: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
    """Buffer directions [2, *shape] for a plane through three snapshots whose plane coordinates
    are `coords` [3, 2] (centre first): the buffers at (x, y) are the affine combination of the
    three snapshots' buffers with the same weights as the parameters, so each snapshot's own
    point carries exactly its own BatchNorm statistics (as lines do)."""
    xy = torch.as_tensor(np.asarray(coords, dtype=np.float64))
    m = torch.stack([xy[1] - xy[0], xy[2] - xy[0]], dim=1)  # (x, y) = m @ (α, β)
    m_inv = torch.linalg.inv(m)
    out = {}
    for name, b0 in center.buffers.items():
        if not b0.is_floating_point():
            continue
        db, dc = (b.buffers[name].double() - b0.double()), (c.buffers[name].double() - b0.double())
        out[name] = torch.stack([m_inv[0, k] * db + m_inv[1, k] * dc for k in range(2)]).to(b0.dtype)
    return out


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
