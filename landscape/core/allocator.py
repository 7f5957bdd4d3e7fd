"""Process-wide settings that make evaluation fast as users run it.

glibc's allocator hands large blocks (activations of a batch) back to the OS as soon as they
are freed and maps them again for the next batch, so every batch of every point pays page
faults: a 5×5 plane of a small CNN on 1,000 images made ~126,000 minor faults. Keeping freed
memory for reuse (mmap threshold and trim threshold raised, 256 MiB of top padding) cut that to
~46,000, the same as glibc's own GLIBC_TUNABLES gives. The cost is that up to ~1 GiB freed by
the process may stay reserved until it exits. Set LANDSCAPE_MALLOC=0 to leave the allocator alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def tune_allocator() -> bool:
    """Apply the settings once per process (Linux with glibc only); True if applied."""
    global _done
    if _done or not sys.platform.startswith("linux") or os.environ.get("LANDSCAPE_MALLOC", "1") == "0":
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20)))
    except (OSError, AttributeError):  # not glibc (musl, for example)
        return False
    _done = ok
    return ok
