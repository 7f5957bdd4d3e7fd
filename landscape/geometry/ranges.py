"""Coordinate ranges: `MIN:MAX:NUM` grids for planes, and the α grids of lines (0 and 1 always in)."""
from __future__ import annotations

import numpy as np

from landscape.core.errors import LandscapeError
from landscape.core.validate import check_grid_size


def parse_range(text: str, what: str = "grid") -> np.ndarray:
    """`MIN:MAX:NUM` → NUM evenly spaced values from MIN to MAX inclusive."""
    parts = str(text).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        lo, hi, num = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise LandscapeError(f"malformed {what} {text!r}: expected MIN:MAX:NUM, e.g. -1:1:21") from None
    if num < 1 or not np.isfinite(lo) or not np.isfinite(hi) or (num > 1 and hi <= lo):
        raise LandscapeError(f"malformed {what} {text!r}: need MAX > MIN and NUM >= 1")
    check_grid_size((num,), what)  # before the axis itself is allocated
    with np.errstate(over="ignore", invalid="ignore"):
        span, grid = hi - lo, np.linspace(lo, hi, num)
    if not np.isfinite(span) or not np.isfinite(grid).all():  # e.g. -1e308:1e308: MAX-MIN overflows
        raise LandscapeError(f"malformed {what} {text!r}: MAX - MIN ({lo:g} to {hi:g}) is too large to be "
                             "spaced in floating point; use smaller bounds")
    return grid


def line_alphas(num: int = 21, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A grid of α over [lo, hi] that always contains 0 and 1 exactly (barriers need both ends)."""
    if num < 2:
        raise LandscapeError("a line needs at least 2 points")
    check_grid_size((num,), "line", n_coeffs=1)
    if lo > 0 or hi < 1:
        raise LandscapeError("the line's α range must include 0 and 1")
    alphas = np.union1d(np.linspace(0.0, 1.0, num), [lo, hi])
    if lo < 0 or hi > 1:
        step = 1.0 / (num - 1)
        alphas = np.union1d(alphas, np.arange(0.0, lo - 1e-12, -step))
        alphas = np.union1d(alphas, np.arange(1.0, hi + 1e-12, step))
        alphas = alphas[(alphas >= lo - 1e-12) & (alphas <= hi + 1e-12)]
    return np.round(alphas, 12)


def alpha_range(text: str) -> np.ndarray:
    """`MIN:MAX:NUM` for a line: NUM evenly spaced α from MIN <= 0 to MAX >= 1, with 0 and 1
    exactly (a barrier needs both ends; values within 1e-9 of them are snapped)."""
    alphas = parse_range(text, "--alpha-range")
    if alphas[0] > 0 or alphas[-1] < 1 or len(alphas) < 2:
        raise LandscapeError(f"--alpha-range {text!r} must span [0, 1]: MIN <= 0, MAX >= 1, NUM >= 2")
    for end in (0.0, 1.0):
        near = np.abs(alphas - end) < 1e-9
        alphas = np.where(near, end, alphas) if near.any() else np.union1d(alphas, [end])
    return alphas
