"""The grid of points an analysis fills: values and a `done` mask in memory, saved whole after
every chunk through the callback the store gives it (`Store.open_grid`), so grids never import
the store."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from landscape.core.errors import LandscapeError


@dataclass
class Grid:
    """A grid of points being computed: values and the `done` mask live in memory; with a store
    they are saved whole after every chunk through `save(grid, final)` (Store.open_grid), and `finish`
    stores the finished object. Without one (`MemoryGrid`) it is the analysis's in-memory result."""

    save: "Callable[[Grid, bool], None] | None"
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

    def load_partial(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Take a saved grid's points; False (nothing taken: start afresh) unless its `done` is a boolean
        mask and every metric a real array, all of the grid's shape."""
        done = np.asarray(arrays.get("done", np.zeros(self.shape, bool)))
        if done.dtype.kind != "b" or done.shape != self.shape:
            return False  # not the grid we expect (bytes, numbers, another shape): start afresh
        values = [np.asarray(arrays.get(m)) for m in self.metrics]
        if any(v.shape != self.shape or v.dtype.kind not in "fiu" for v in values):
            return False
        self.data["done"] = done.copy()
        for m, v in zip(self.metrics, values):
            self.data[m] = v.astype(np.float64)
        return True

    def load_finished(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        if not self.load_partial(arrays):
            raise LandscapeError(f"{self.kind[:-1]} {self.name!r} is damaged: its done mask or metrics are not "
                                 f"arrays of shape {list(self.shape)} (done a boolean mask)")
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
        if self.save is not None:
            self.save(self, False)

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
        if self.save is not None:
            self.save(self, True)
        self.finished = True


def MemoryGrid(shape: Sequence[int], metrics: Sequence[str], arrays: Mapping[str, np.ndarray]) -> Grid:
    """A grid kept in memory only (analyses run without a store)."""
    return Grid(None, "surfaces", "memory", tuple(int(s) for s in shape), list(metrics), dict(arrays), "", {})
