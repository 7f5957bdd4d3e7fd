"""Files replaced whole: written under a temporary name beside the target, synced, renamed.

The one implementation behind the store's objects, figures and the study's report files. A
rename is atomic on POSIX file systems (NFS included), so a reader, a kill or a failed write
(disk full, quota, file-size limit) never sees or leaves a half-written file: the previous
file stays whole until its replacement is complete.
"""
from __future__ import annotations

import os
import re
import secrets
from typing import BinaryIO, Callable

from landscape.core.errors import LandscapeError, LandscapeFault

TMP_SUFFIX = ".tmp"


def temp_path(path: str) -> str:
    """A fresh temporary name beside `path` (hidden, ending in TMP_SUFFIX)."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}.{os.getpid()}-{secrets.token_hex(6)}{TMP_SUFFIX}")


_TEMP = re.compile(r"^\..+\.(\d{1,10})-[0-9a-f]{12}" + re.escape(TMP_SUFFIX) + "$")


def temp_writer(name: str) -> int | None:
    """The pid of the process that made temporary file `name` (as `temp_path` names them), else None."""
    m = _TEMP.match(name)
    return int(m.group(1)) if m else None


def fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable where the platform allows it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def write_atomically(path: str, write: Callable[[BinaryIO], None], what: str | None = None) -> str:
    """Call `write(f)` on a new temporary file beside `path`, then rename it to `path`.

    On any failure the temporary file is removed and `path` is left as it was; an OSError
    becomes LandscapeFault("cannot write WHAT: REASON") (WHAT defaults to the path). A `path`
    that exists as anything but a regular file (a symbolic link, a folder, a device, a FIFO) is
    refused (LandscapeError) before anything is written.
    The folder must exist. The file gets the permissions a plain write would (the umask's).
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.lexists(path) and not (os.path.isfile(path) and not os.path.islink(path)):
        # the rename would replace the link, folder, device or FIFO itself: never
        raise LandscapeError(f"cannot write {what or path}: {path!r} is not a regular file (a symbolic link, "
                             "folder, device or FIFO is never replaced); give another path")
    tmp = temp_path(path)
    created = False
    try:
        with open(tmp, "xb") as f:  # "x": a new file, never someone else's
            created = True
            write(f)
            f.flush()
            os.fsync(f.fileno())  # a disk that is full only at flush time fails here, before the rename
        os.replace(tmp, path)
        created = False
    except OSError as exc:
        raise LandscapeFault(f"cannot write {what or path}: {reason(exc)}") from None
    finally:
        if created:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    fsync_dir(os.path.dirname(path))
    return path
