"""Coefficient grids, and the grid of points an analysis fills (resumable when it has a store)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from landscape.core.errors import LandscapeError
from landscape.core.validate import check_grid_size

if TYPE_CHECKING:  # the store saves grids; grids only hold a reference to it
    from .store import Store


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
    return np.linspace(lo, hi, num)


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


@dataclass
class Grid:
    """A grid of points being computed: values and the `done` mask live in memory; with a store
    they are saved whole after every chunk (Store.open_grid), and `finish` stores the finished
    object. Without one (`MemoryGrid`) it is the analysis's in-memory result."""

    store: "Store | None"
    kind: str
    name: str
    shape: tuple[int, ...]
    metrics: list[str]
    fixed: dict[str, np.ndarray]
    config_json: str
    attrs: dict[str, Any]
    data: dict[str, np.ndarray] = field(default_factory=dict)
    finished: bool = False

    def __post_init__(self) -> None:
        for m in self.metrics:
            self.data[m] = np.full(self.shape, np.nan)
        self.data["done"] = np.zeros(self.shape, dtype=bool)

    def load_partial(self, arrays: Mapping[str, np.ndarray]) -> None:
        done = np.asarray(arrays.get("done", np.zeros(self.shape, bool)), dtype=bool)
        if done.shape != self.shape or any(np.shape(arrays.get(m)) != self.shape for m in self.metrics):
            return  # not the grid we expect: start afresh
        self.data["done"] = done
        for m in self.metrics:
            self.data[m] = np.asarray(arrays[m], dtype=np.float64)

    def load_finished(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        self.load_partial(arrays)
        self.fixed.update({k: v for k, v in arrays.items() if k not in self.data and k != "nonfinite"})
        self.attrs.update({k: v for k, v in attrs.items() if k != "config"})
        self.finished = bool(self.data["done"].all())

    def done_mask(self) -> np.ndarray:
        return self.data["done"]

    def missing(self) -> np.ndarray:
        """Flat indices (C order) of the points not yet computed."""
        return np.flatnonzero(~self.data["done"].reshape(-1))

    def write(self, flat_indices: Sequence[int], values: Mapping[str, Sequence[float]]) -> None:
        """Record a finished chunk and save the grid's progress."""
        idx = np.unravel_index(np.asarray(flat_indices, dtype=np.int64), self.shape)
        for m in self.metrics:
            if m in values:
                self.data[m][idx] = np.asarray(values[m], dtype=np.float64)
        self.data["done"][idx] = True
        if self.store is not None:
            self.store._write_grid(self, final=False)

    def nonfinite(self) -> np.ndarray:
        """Points computed whose loss (on any split) is NaN or inf."""
        bad = np.zeros(self.shape, dtype=bool)
        for m in self.metrics:
            if m.endswith("_loss"):
                bad |= self.data["done"] & ~np.isfinite(self.data[m])
        return bad

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.fixed, **self.data, "nonfinite": self.nonfinite()}

    def read(self) -> dict[str, np.ndarray]:
        return self.arrays()

    def finish(self, derived: Mapping[str, Any] | None = None, attrs: Mapping[str, Any] | None = None) -> None:
        """Store the finished grid with its derived arrays (barrier matrices, projections) and
        attributes. Nothing is written when it was finished already."""
        if self.finished:
            return
        if not self.data["done"].all():
            raise LandscapeError(f"{self.kind[:-1]} {self.name!r} is not finished: "
                                 f"{len(self.missing())} points missing")
        self.fixed.update({k: np.asarray(v) for k, v in (derived or {}).items()})
        self.attrs.update(attrs or {})
        if self.store is not None:
            self.store._write_grid(self, final=True)
        self.finished = True


def MemoryGrid(shape: Sequence[int], metrics: Sequence[str], arrays: Mapping[str, np.ndarray]) -> Grid:  # noqa: N802
    """A grid kept in memory only (analyses run without a store)."""
    return Grid(None, "surfaces", "memory", tuple(int(s) for s in shape), list(metrics), dict(arrays), "", {})
