"""Writing the study's output files so that a failed write never loses the previous file.

Each file is written under a temporary name in its own folder, flushed to disk, then renamed
over the old one with os.replace (atomic on POSIX and Windows): a full disk, a quota or a kill
part-way leaves the previous file whole. An OSError becomes a LandscapeFault (exit status 1)
whose one line names the file and the OS error.
"""
from __future__ import annotations

import json
import os
from typing import Any, BinaryIO, Callable

from landscape.core.errors import LandscapeFault
from landscape.core.jsonable import to_jsonable
from landscape.store import atomic


def write_atomically(path: str, write: Callable[[BinaryIO], None]) -> str:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path`; returns `path`.

    On any failure the temporary file is removed and `path` is left as it was. The folder is
    created if needed.
    """
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as exc:
        raise LandscapeFault(f"cannot write {path}: {exc.strerror or exc}") from None
    return atomic.write_atomically(path, write)


def write_text_atomically(path: str, text: str) -> str:
    """`text` (UTF-8) into `path`, atomically."""
    data = text.encode("utf-8")
    return write_atomically(path, lambda f: f.write(data))


def write_json_atomically(path: str, obj: Any) -> str:
    """`obj` as JSON into `path`, atomically.

    Encoded by landscape.core.jsonable.to_jsonable: a computed nan/inf becomes the string "nan"/"inf",
    None stays null ("not available"), so the file is always strict JSON.
    """
    text = json.dumps(to_jsonable(obj), indent=1, allow_nan=False)
    return write_text_atomically(path, text + "\n")
