"""Directions in weight space: random (filter/layer normalised), plane through three points, PCA.

All directions live in the flat parameter space of a ParamLayout; buffers are never moved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from landscape.core.errors import LandscapeError
from landscape.core.params import ParamLayout

NORMALIZATIONS = ("filter", "layer", "none")


def random_direction(layout: ParamLayout, weights: torch.Tensor, normalization: str = "filter",
                     seed: int = 0, ignore_bias_bn: bool = True) -> torch.Tensor:
    """A Gaussian direction scaled like `weights` (Li et al. 2018, "Visualizing the Loss Landscape"):
    see `normalize_direction` for what each normalisation does."""
    if normalization not in NORMALIZATIONS:
        raise LandscapeError(f"unknown normalization {normalization!r}: choose filter, layer or none")
    g = torch.Generator().manual_seed(int(seed))
    d = torch.randn(layout.numel, generator=g, dtype=torch.float32).to(weights.dtype)
    return normalize_direction(layout, d, weights, normalization, ignore_bias_bn)


def normalize_direction(layout: ParamLayout, direction: torch.Tensor, weights: torch.Tensor,
                        normalization: str = "filter", ignore_bias_bn: bool = True) -> torch.Tensor:
    """`direction` scaled like `weights` (a copy):

    - filter: each filter (slice along dim 0) gets the norm of the matching filter of the weights;
    - layer: each parameter tensor gets the norm of the matching weight tensor;
    - none: unchanged.
    1-D tensors (biases, BatchNorm affine) are zeroed when `ignore_bias_bn`, otherwise scaled
    like a layer. All-zero filters give zero directions, never NaN.
    """
    if normalization not in NORMALIZATIONS:
        raise LandscapeError(f"unknown normalization {normalization!r}: choose filter, layer or none")
    d = direction.detach().cpu().clone().to(weights.dtype)
    w = weights.detach().cpu()
    for _, shape, sl in layout.slices():
        dv, wv = d[sl], w[sl]
        if len(shape) <= 1:
            if ignore_bias_bn:
                dv.zero_()
            elif normalization != "none":
                dv.mul_(_safe_ratio(wv.norm(), dv.norm()))
            continue
        if normalization == "filter":
            dm, wm = dv.view(shape[0], -1), wv.reshape(shape[0], -1)
            dm.mul_(_safe_ratio(wm.norm(dim=1, keepdim=True), dm.norm(dim=1, keepdim=True)))
        elif normalization == "layer":
            dv.mul_(_safe_ratio(wv.norm(), dv.norm()))
    return d


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(num))


@dataclass
class Plane:
    """Orthonormal u, v through three points a, b, c with a at the origin."""

    origin: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    coords: torch.Tensor  # [3, 2]: the coordinates of a, b, c

    @property
    def directions(self) -> torch.Tensor:
        return torch.stack([self.u, self.v])


def plane_through(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> Plane:
    """Gram–Schmidt in fp64: u along b−a, v along the part of c−a orthogonal to u."""
    a64, b64, c64 = (t.detach().double() for t in (a, b, c))
    ab, ac = b64 - a64, c64 - a64
    nab = ab.norm()
    if nab == 0:
        raise LandscapeError("cannot span a plane: the first two points are identical")
    u = ab / nab
    ac_u = torch.dot(ac, u)
    perp = ac - ac_u * u
    nperp = perp.norm()
    if nperp <= 1e-12 * max(float(nab), float(ac.norm())):
        raise LandscapeError("cannot span a plane: the three points are collinear")
    v = perp / nperp
    coords = torch.tensor([[0.0, 0.0], [float(nab), 0.0], [float(ac_u), float(nperp)]], dtype=torch.float64)
    return Plane(a.detach().clone(), u.to(a.dtype), v.to(a.dtype), coords)


def relative_frame(plane: Plane) -> tuple[torch.Tensor, torch.Tensor]:
    """The plane's directions scaled so that the second point sits at (1, 0) and the third at
    (x3, 1): coordinates a reader can compare across planes. Returns (directions [2, P], the
    three points' coordinates [3, 2])."""
    sx, sy = float(plane.coords[1, 0]), float(plane.coords[2, 1])
    scale = torch.tensor([sx, sy], dtype=torch.float64)
    return (plane.directions.double() * scale.unsqueeze(1)).to(plane.u.dtype), plane.coords / scale


@dataclass
class PCAResult:
    directions: torch.Tensor  # [k, P], orthonormal
    explained_variance: torch.Tensor  # [k]
    explained_variance_ratio: torch.Tensor  # [k]
    center: torch.Tensor


def pca_directions(points: list[torch.Tensor] | torch.Tensor, k: int = 2, center: str = "last") -> PCAResult:
    """Principal directions of a trajectory of snapshots.

    `center="last"` measures displacements from the final point (as Li et al. do for trajectories);
    `center="mean"` is classical PCA.
    """
    x = torch.stack(list(points)) if not isinstance(points, torch.Tensor) else points
    x = x.double()
    if x.shape[0] < 2:
        raise LandscapeError("PCA needs at least two snapshots")
    if center not in ("last", "mean"):
        raise LandscapeError("PCA center must be 'last' or 'mean'")
    c = x[-1] if center == "last" else x.mean(0)
    m = x - c
    _, s, vh = torch.linalg.svd(m, full_matrices=False)
    k = min(k, vh.shape[0])
    var = s**2 / max(x.shape[0] - 1, 1)
    total = var.sum()
    ratio = var / total if total > 0 else torch.zeros_like(var)
    return PCAResult(vh[:k].to(points[0].dtype if not isinstance(points, torch.Tensor) else points.dtype),
                     var[:k], ratio[:k], c)


def project(point: torch.Tensor, origin: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Coordinates of `point` in the affine span origin + coords·directions, and its distance from it.

    Least squares in fp64, so the directions need not be orthogonal (random directions are not).
    """
    d = directions.double().T  # [P, k]
    r = (point.double() - origin.double()).unsqueeze(1)
    coords = torch.linalg.lstsq(d, r).solution.squeeze(1)
    dist = (r.squeeze(1) - d @ coords).norm()
    return coords, float(dist)
