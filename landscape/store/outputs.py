"""Files the user names for the toolkit to write (figures, exports): where they may go.

Only a regular file, or a new name, in an existing folder outside every store: never through or
over a symbolic link, a folder, a device, a FIFO or a socket (an atomic rename would replace the
special file itself, /dev/null included, when run as root), and never inside a store folder, whose
files are the store's own objects (an export over a finished surface, or over store.json, would
replace them). Refused before any work, in one line (exit status 2).
"""
from __future__ import annotations

import os
import stat

from landscape.core.errors import LandscapeError

from .store import MARKER


def special_file(path: str) -> str | None:
    """What `path` is when it is anything but a regular file or absent ("a symbolic link", ...)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LandscapeError(f"cannot look at {path!r}: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def enclosing_store(folder: str) -> str | None:
    """The store folder that holds `folder` (itself included), or None: a folder with a store.json."""
    here = os.path.realpath(folder)
    while True:
        if os.path.isfile(os.path.join(here, MARKER)):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def check_output_file(path: str, what: str = "output file") -> str:
    """The absolute path of `path`, once it is a file the toolkit may write (see the module
    docstring); a one-line LandscapeError naming what is wrong and what to do otherwise."""
    full = os.path.abspath(os.path.expanduser(path))
    kind = special_file(full)
    if kind is not None:
        raise LandscapeError(f"{what} {path!r} is {kind}: give the path of a regular file (it is never "
                             "written through or replaced)")
    folder = os.path.dirname(full)
    if not os.path.isdir(folder):
        raise LandscapeError(f"output folder {folder!r} does not exist")
    store = enclosing_store(folder)
    if store is not None:
        raise LandscapeError(f"{what} {path!r} lies inside the store {store!r}, whose files are its own "
                             "objects: write it outside the store folder")
    return full
