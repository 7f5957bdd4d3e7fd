"""Coefficient grids and the in-memory twin of the store's resumable grid."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .errors import LandscapeError


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
    return np.linspace(lo, hi, num)


def line_alphas(num: int = 21, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """A grid of α over [lo, hi] that always contains 0 and 1 exactly (barriers need both ends)."""
    if num < 2:
        raise LandscapeError("a line needs at least 2 points")
    if lo > 0 or hi < 1:
        raise LandscapeError("the line's α range must include 0 and 1")
    alphas = np.union1d(np.linspace(0.0, 1.0, num), [lo, hi])
    if lo < 0 or hi > 1:
        step = 1.0 / (num - 1)
        alphas = np.union1d(alphas, np.arange(0.0, lo - 1e-12, -step))
        alphas = np.union1d(alphas, np.arange(1.0, hi + 1e-12, step))
        alphas = alphas[(alphas >= lo - 1e-12) & (alphas <= hi + 1e-12)]
    return np.round(alphas, 12)


class MemoryGrid:
    """Same interface as store.GridWriter for analyses run without an output file."""

    def __init__(self, shape: Sequence[int], metrics: Sequence[str], arrays: Mapping[str, np.ndarray]) -> None:
        self.shape = tuple(shape)
        self.metrics = list(metrics)
        self.data = {k: np.asarray(v) for k, v in arrays.items()}
        for m in self.metrics:
            self.data[m] = np.full(self.shape, np.nan)
        self.data["done"] = np.zeros(self.shape, dtype=bool)
        self.attrs: dict = {}

    def missing(self) -> np.ndarray:
        return np.flatnonzero(~self.data["done"].reshape(-1))

    def write(self, flat_indices: Sequence[int], values: Mapping[str, Sequence[float]]) -> None:
        idx = np.unravel_index(np.asarray(flat_indices, dtype=np.int64), self.shape)
        for m in self.metrics:
            if m in values:
                self.data[m][idx] = values[m]
        self.data["done"][idx] = True

    def read(self) -> dict[str, np.ndarray]:
        return dict(self.data)

    def set_attrs(self, attrs: Mapping) -> None:
        self.attrs.update(attrs)

    def put(self, key: str, value: np.ndarray) -> None:
        self.data[key] = np.asarray(value)
