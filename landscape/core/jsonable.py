"""Results as JSON: the one encoder behind `--json`, summary.json and the study report.

Numbers a computation produced stay numbers; a computed value that is not finite (a diverged
point's loss) becomes the string "nan", "inf" or "-inf", so that it can never be mistaken for
`null`, which means "not computed" (use `masked` for grids with a `done` mask).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def _number(x: float) -> float | str:
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def to_jsonable(x: Any) -> Any:
    """Dicts, sequences, arrays and numpy scalars as plain JSON values (non-finite as strings)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return _number(float(x))
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, bytes):
        return x.decode()
    return x


def masked(values: np.ndarray, done: np.ndarray) -> list:
    """A grid as nested lists: `None` where the point was not computed, else its value."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(values.shape, dtype=object)
    done = np.broadcast_to(np.asarray(done, dtype=bool), values.shape)
    for idx in np.ndindex(values.shape):
        out[idx] = _number(float(values[idx])) if done[idx] else None
    return out.tolist()
