"""Checks run before any work starts: a bad value is refused in one line, not after hours."""
from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Sequence

from .errors import LandscapeError

# A grid's arrays (coefficients, one float64 per metric, masks) must fit in this much memory.
# 1 GiB holds ~20 million points: far more than any surface anyone evaluates point by point.
MAX_GRID_BYTES = 1 << 30


def positive_int(value: Any, what: str) -> int:
    """`value` as an int >= 1, or a one-line error naming `what` (an option or config key)."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (isinstance(value, float) and value.is_integer()):
        raise LandscapeError(f"{what} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise LandscapeError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def finite_positive(value: Any, what: str) -> float:
    """`value` as a finite float > 0, or a one-line error naming `what`."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise LandscapeError(f"{what} must be a finite positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise LandscapeError(f"{what} must be a finite positive number, got {value!r}")
    return v


def grid_bytes(shape: Sequence[int], n_metrics: int = 6, n_coeffs: int = 2) -> int:
    """Memory a grid of this shape needs: float64 metrics and coefficients, two bool masks."""
    points = math.prod(int(s) for s in shape)
    return points * (8 * (n_metrics + n_coeffs) + 2)


def check_grid_size(shape: Sequence[int], what: str = "grid", n_metrics: int = 6, n_coeffs: int = 2) -> None:
    """Refuse a grid whose arrays would not fit in MAX_GRID_BYTES, before anything is allocated."""
    need = grid_bytes(shape, n_metrics, n_coeffs)
    if need > MAX_GRID_BYTES:
        dims = " x ".join(str(int(s)) for s in shape)
        raise LandscapeError(f"{what} of {dims} points needs {need / 2**30:.1f} GiB for its arrays; the limit is "
                             f"{MAX_GRID_BYTES / 2**30:.0f} GiB ({MAX_GRID_BYTES // grid_bytes([1], n_metrics, n_coeffs):,} "
                             "points): use fewer points")


def check_writable_dir(path: str, what: str = "output folder") -> str:
    """An existing folder this process can create files in (tested by creating one)."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise LandscapeError(f"{what} {path!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".landscape-write-test-"):
            pass
    except OSError as exc:
        raise LandscapeError(f"{what} {path!r} is not writable: {exc.strerror or exc}") from None
    return path


# torch.manual_seed takes a seed in [0, 2**63) (a negative one wraps; a larger one overflows).
MAX_SEED = 2**63


def check_seed(value: Any, what: str = "--seed", offset: int = 0) -> int:
    """`value` as an int seed that torch.manual_seed accepts (0 <= seed < 2**63), or a one-line
    error naming `what`. `offset`: the largest amount added to it (random directions use seed + 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LandscapeError(f"{what} must be an integer, got {value!r}")
    if not 0 <= value < MAX_SEED - offset:
        raise LandscapeError(f"{what} must be between 0 and {MAX_SEED - offset - 1} (2**63 - {offset + 1}), "
                             f"got {value}")
    return int(value)


def bounded_int(value: Any, what: str, lo: int = 1, hi: int = 4096) -> int:
    """`value` (an int or a string of digits) as an int in [lo, hi], or a one-line error naming
    `what` and the bounds (e.g. a model's width: a huge one would try to allocate terabytes)."""
    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or text.lstrip("+-").isdigit()):
        raise LandscapeError(f"{what} must be an integer from {lo} to {hi}, got {value!r}")
    n = int(text) if not isinstance(value, int) else value
    if not lo <= n <= hi:
        raise LandscapeError(f"{what} must be an integer from {lo} to {hi}, got {text if len(text) <= 30 else text[:27] + '...'}")
    return n


# A store object NAME becomes the file `.partial-NAME.h5`, written through the temporary name
# `..partial-NAME.h5.PID-XXXXXXXXXXXX.tmp`: 38 bytes of decoration (a 7-digit pid) around NAME, and
# most file systems allow 255 bytes per file name. 200 leaves room.
MAX_NAME_BYTES = 200


def check_name_bytes(name: str, what: str = "name") -> str:
    """Refuse a name that cannot be a file name: not encodable as UTF-8 (a surrogate left by an
    undecodable command-line byte) or longer than MAX_NAME_BYTES bytes once encoded."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise LandscapeError(f"invalid {what} {ascii(name)}: it is not valid UTF-8 text") from None
    if size > MAX_NAME_BYTES:
        raise LandscapeError(f"invalid {what} {name[:20]!r}...: {size} bytes in UTF-8, the limit is "
                             f"{MAX_NAME_BYTES} bytes (a file name holds 255 with its decoration)")
    return name
