"""The store: a folder holding one HDF5 file per finished object.

Layout (schema 2)
    STORE/store.json                 schema_version, creation provenance, and the store's own attributes
    STORE/.lock                      present while a writer holds the store: host, pid, command, since
    STORE/snapshots/NAME.h5          params [P], buffers/<name>; attrs: layout, dtype, meta, provenance
    STORE/directions/NAME.h5         directions [d, P]; attrs: kind, normalization, seeds, ...
    STORE/curves/NAME.h5             alphas, train_loss, train_acc, test_loss, test_acc, done, nonfinite
    STORE/surfaces/NAME.h5           xcoordinates, ycoordinates, <metric> [len(x), len(y)], done, nonfinite,
                                     projection_names / projection_coords / projection_distances
    STORE/barriers/NAME.h5           names, pairs, alphas, <metric> [pairs, len(alphas)], <metric>_barrier [n, n]
    STORE/ensembles/NAME.h5          per-size metrics, members (and kept predictions, labels)
    STORE/predictions/NAME.h5        a study unit's test logits with its metrics as attributes
    STORE/labels/NAME.h5             the labels those predictions refer to
    STORE/hessians/NAME.h5           Hessian eigenvalues (and eigenvectors), trace, spectral density
    STORE/connections/NAME.h5        a trained Bezier/polychain curve's metrics beside the straight line's
    STORE/KIND/.partial-NAME.h5      an unfinished grid: the points computed so far (resume state)

Every object file is self-contained: its datasets sit at the file's root and its root attributes
hold `schema_version`, `kind`, `name`, the provenance (package versions, creation time) and, for
grids, the `config` a resumed run must match. Accuracies are fractions in [0, 1]; surfaces are
indexed [x, y] (Goldstein's scripts use meshgrid(x, y) order and percent: an export format).

Guarantees
- A finished object is never written again. It is written whole under a temporary name, synced,
  and renamed into place; replacing it (`overwrite`) is the same rename, so the old object stays
  intact until its replacement is complete. No kill, crash or failed write (disk full, quota,
  file-size limit) can make a finished object unreadable or change it: at most the object being
  written is lost, and rerunning the command completes it.
- A grid in progress is its `.partial-` file, rewritten whole (temporary name + rename) after
  every chunk, so it always holds a consistent set of finished points: a resumed run computes
  only what is missing and ends with the numbers of an uninterrupted one.
- One writer at a time, by a lock file created atomically with link(2) (works on NFS; does not
  rely on HDF5's file locking, which is switched off). The lock names its holder. A lock left by a
  dead process on this host is taken over; one from another host must be removed by hand.
- The lock is taken only when something is written, so a rerun with nothing to compute writes
  nothing, and readers (info, plot, snapshot references) never lock.
- Replaced objects free their space (whole files are replaced; nothing is edited in place).

Not guaranteed: durability of the last object across a power loss or kernel crash beyond what
fsync gives; exclusion of a writer that ignores the lock; a consistent view across several objects
for a reader while a writer runs (each object read is complete, but the store may move on).
"""
from __future__ import annotations

import errno
import json
import os
import platform
import re
import socket
import stat
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np
import torch

from landscape.core.checkpoints import Snapshot
from landscape.core.errors import LandscapeError, LandscapeFault
from landscape.core.params import ParamLayout
from landscape.core.validate import check_name_bytes

from .atomic import fsync_dir, temp_path, temp_writer, write_atomically
from .grid import Grid

SCHEMA_VERSION = 2
KINDS = ("snapshots", "directions", "curves", "surfaces", "barriers", "ensembles", "predictions", "labels",
         "hessians", "connections")
MARKER = "store.json"
LOCK = ".lock"
PARTIAL = ".partial-"


def package_versions() -> dict[str, str]:
    import matplotlib
    import scipy

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "scipy": scipy.__version__, "matplotlib": matplotlib.__version__,
            "landscape": _own_version()}


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version("landscape-toolkit")
    except Exception:  # running from a source tree
        return "dev"


def provenance(**extra: Any) -> dict[str, Any]:
    """Attributes every stored object carries: creation time, package versions, and `extra`."""
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": package_versions(), **extra}


def _encode(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str, sort_keys=True)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _reason(exc: BaseException) -> str:
    """The OS's words for a failed write, out of h5py's long messages."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    m = re.search(r"error message = '([^']+)'", text)
    if m:
        return m.group(1)
    return text.splitlines()[0] if text else type(exc).__name__


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def check_name(name: str) -> str:
    if (not isinstance(name, str) or not name or "/" in name or "\0" in name or name.startswith(".")
            or name.strip() != name or len(name) > 200):
        raise LandscapeError(f"invalid name {name!r}: use a non-empty name without '/' or a leading '.'")
    return check_name_bytes(name)  # a file name of at most 255 bytes, with room for the partial/temp names


def _open_h5(path: str, mode: str) -> h5py.File:
    # A FIFO or device where an object file should be would block HDF5's open (a hang) or read
    # from it: only regular files are opened.
    if os.path.lexists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", path)
    # The store's own lock file excludes other writers; HDF5's locks fail on many network file systems.
    return h5py.File(path, mode, locking=False)


@dataclass
class StoredObject:
    """A finished object read back whole: its datasets and its root attributes."""

    kind: str
    name: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays


def _read_file(path: str, what: str, skip: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with _open_h5(path, "r") as f:
            def visit(key: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and key not in skip:
                    arrays[key] = obj[()]
            f.visititems(visit)
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise LandscapeError(f"{what} is unreadable (truncated or corrupted): {_reason(exc)}") from None
    return arrays, attrs


def _write_object(f: h5py.File, arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    for key, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind == "U":  # h5py stores fixed-width bytes, not numpy unicode
            value = value.astype("S")
        f.create_dataset(key, data=value)
    for k, v in attrs.items():
        if v is not None:
            f.attrs[k] = _encode(v)


def hdf5_image(arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> bytes:
    """The bytes of an HDF5 file holding `arrays` at its root with `attrs`, built in memory."""
    with h5py.File(f"{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False, locking=False) as f:
        _write_object(f, arrays, attrs)
        f.flush()
        return f.id.get_file_image()


def write_hdf5_file(path: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> str:
    """A standalone HDF5 file (an export), replaced whole (landscape.atomic)."""
    image = hdf5_image(arrays, attrs)
    return write_atomically(path, lambda f: f.write(image))


class ObjectWriter:
    """A new object written piece by piece (large kept predictions); see Store.new_object."""

    def __init__(self, file: h5py.File) -> None:
        self._file = file

    def create(self, key: str, shape: Sequence[int], dtype: str, chunks: Sequence[int] | None = None) -> None:
        self._file.create_dataset(key, shape=tuple(shape), dtype=dtype, chunks=tuple(chunks) if chunks else None)

    def write(self, key: str, index: Any, values: np.ndarray) -> None:
        self._file[key][index] = values

    def put(self, key: str, value: Any) -> None:
        _write_object(self._file, {key: value}, {})

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        _write_object(self._file, {}, attrs)


class Store:
    """A folder of finished objects (see the module docstring for the layout and the guarantees).

    mode "r": read only. mode "a": a writer; nothing is created or locked until the first write,
    so opening an existing store to find nothing to do leaves it untouched. Use as a context manager.
    """

    def __init__(self, path: str, mode: str = "r") -> None:
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self.mode = mode
        self._locked = False
        self.wrote = False  # whether this session took the lock (so may have changed the store)
        self._meta: dict[str, Any] | None = None
        if os.path.isfile(self.path):
            if h5py.is_hdf5(self.path):
                raise LandscapeError(f"{self.path!r} is a single HDF5 file, not a store folder (stores are folders "
                                     "since schema 2): choose another path")
            raise LandscapeError(f"{self.path!r} is a file, not a store folder")
        if os.path.lexists(self.path) and not os.path.isdir(self.path):  # a device, FIFO, socket, dangling link
            raise LandscapeError(f"{self.path!r} is not a store folder (nor a regular file): give a folder, new or "
                                 "existing")
        if os.path.isdir(self.path):
            self._meta = self._read_marker()
        elif mode == "r":
            raise LandscapeError(f"store {self.path!r} does not exist")
        else:
            parent = os.path.dirname(self.path)
            if not os.path.isdir(parent):
                raise LandscapeError(f"output folder {parent!r} does not exist")

    # -- opening -------------------------------------------------------------------------
    def _read_marker(self) -> dict[str, Any] | None:
        marker = os.path.join(self.path, MARKER)
        if not os.path.isfile(marker):
            # A folder holding only our own hidden files is a store whose creation was cut short.
            if all(n.startswith(".") or (n in KINDS and self._only_hidden(n)) for n in os.listdir(self.path)):
                return None
            raise LandscapeError(f"{self.path!r} is a folder but not a landscape store (no {MARKER})")
        try:
            with open(marker) as f:
                meta = json.load(f)
            version = meta["schema_version"]
            if type(version) is not int:
                raise ValueError(f"schema_version {str(version)[:40]} is not a whole number")
            if not isinstance(meta.get("attrs", {}), dict):
                raise ValueError("attrs is not a mapping")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            why = f"no {exc}" if isinstance(exc, KeyError) else _reason(exc)
            raise LandscapeError(f"store {self.path!r} is unreadable: {MARKER} is damaged ({why})") from None
        if version < SCHEMA_VERSION:
            if version < 1:
                raise LandscapeError(f"store {self.path!r} is unreadable: {MARKER} is damaged (schema_version "
                                     f"{version})")
            raise LandscapeError(f"store {self.path!r} has schema {version}, from an older version of this toolkit "
                                 f"(this one reads schema {SCHEMA_VERSION} only): recompute with this version")
        if version > SCHEMA_VERSION:
            raise LandscapeError(f"store {self.path!r} has schema version {version}, newer than this toolkit's "
                                 f"{SCHEMA_VERSION}")
        return meta

    def _only_hidden(self, kind: str) -> bool:
        return all(n.startswith(".") for n in os.listdir(os.path.join(self.path, kind)))

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._unlock()

    @property
    def exists(self) -> bool:
        return self._meta is not None

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's own attributes (a study's fingerprint and config, for example)."""
        return dict((self._meta or {}).get("attrs", {}))

    @property
    def schema_version(self) -> int:
        return int((self._meta or {}).get("schema_version", SCHEMA_VERSION))

    # -- the writer's lock ---------------------------------------------------------------
    def lock(self) -> None:
        """Become the store's one writer (created if new); idempotent. Refused if another holds it."""
        if self._locked:
            return
        if self.mode != "a":
            raise LandscapeError(f"store {self.path!r} was opened read-only")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise LandscapeFault(f"cannot create store {self.path!r}: {_reason(exc)}") from None
        lock = os.path.join(self.path, LOCK)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:500]}
        tmp = temp_path(lock)
        try:
            with open(tmp, "w") as f:
                json.dump(holder, f)
            for _ in range(3):
                try:
                    os.link(tmp, lock)  # atomic, and fails if the lock exists, on NFS too
                    break
                except FileExistsError:
                    if not self._break_stale_lock(lock):
                        raise LandscapeFault(self._busy_message(lock)) from None
            else:
                raise LandscapeFault(self._busy_message(lock))
        except OSError as exc:
            raise LandscapeFault(f"cannot lock store {self.path!r}: {_reason(exc)}") from None
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        self._locked = True
        self.wrote = True
        try:
            self._remove_leftovers()
            self._meta = self._read_marker() if self._meta is None else self._meta
            if self._meta is None:
                self._write_marker({"schema_version": SCHEMA_VERSION, **provenance(), "attrs": {}})
        except BaseException:
            self._unlock()
            raise

    def _holder(self, lock: str) -> dict[str, Any] | None:
        """The lock's holder; None when the lock is gone. A lock is written whole before it is linked
        into place, so one that does not name a holder is damaged: refused in one line."""
        try:
            with open(lock) as f:
                text = f.read()
        except OSError:
            return None
        try:
            h = json.loads(text)
        except ValueError:
            h = None
        why = None
        if not isinstance(h, dict):
            why = "it does not name a holder"
        elif not isinstance(h.get("host"), str):
            why = "its host is missing or not a name"
        elif type(h.get("pid")) is not int or not 0 < h["pid"] < 2 ** 31:
            why = f"its pid {str(h.get('pid'))[:40]!r} is not a process id"
        if why:
            raise LandscapeError(f"store {self.path!r} has a damaged lock file {lock!r} ({why}); remove it if no "
                                 "writer runs")
        return h

    def _busy_message(self, lock: str) -> str:
        h = self._holder(lock) or {}
        return (f"store {self.path!r} is being written by another process (pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')} since {h.get('since', '?')}: {h.get('command', '?')}); wait for it to end, "
                f"or remove {lock!r} if that process is gone")

    def _break_stale_lock(self, lock: str) -> bool:
        """Take over a lock whose holder is a dead process on this host."""
        h = self._holder(lock)
        if h is None:
            return True  # released meanwhile: try again
        if h.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(h["pid"]), 0)
            return False  # alive (or not ours to signal): a real holder
        except ProcessLookupError:
            pass
        except (PermissionError, ValueError, KeyError, TypeError, OverflowError):
            return False
        stale = temp_path(lock)
        try:
            os.rename(lock, stale)
        except FileNotFoundError:
            return True  # another process broke it first: try again
        if self._holder(stale) != h:  # a new holder slipped in between: give its lock back
            try:
                os.link(stale, lock)
            except OSError:
                pass
            os.unlink(stale)
            return False
        os.unlink(stale)
        return True

    def _unlock(self) -> None:
        if self._locked:
            self._locked = False
            try:
                os.unlink(os.path.join(self.path, LOCK))
            except OSError:
                pass

    def _remove_leftovers(self) -> None:
        """Temporary files of writers that died (we hold the lock, so none is being written): only
        regular files named as the atomic writer names them, whose writer is not alive, in the
        store's own folders (a kind folder that is a symbolic link is never looked into)."""
        for folder in [self.path] + [os.path.join(self.path, k) for k in KINDS]:
            if os.path.islink(folder) or not os.path.isdir(folder):
                continue
            for n in os.listdir(folder):
                path = os.path.join(folder, n)
                pid = temp_writer(n)
                if pid is None or pid == os.getpid() or _alive(pid) or os.path.islink(path) \
                        or not os.path.isfile(path):
                    continue
                try:
                    os.unlink(path)
                except OSError:
                    pass

    # -- atomic files ------------------------------------------------------------------------
    def _ensure_folder(self, folder: str) -> None:
        """The kind's folder inside the store; never the store itself, so that a store removed
        during a run is reported instead of silently created again without its objects."""
        if not os.path.isdir(self.path):
            raise LandscapeFault(f"store {self.path!r} was removed during the run; nothing more was written")
        if folder != self.path:
            try:
                os.mkdir(folder)
            except FileExistsError:
                pass
            if os.path.islink(folder) or not os.path.isdir(folder):
                raise LandscapeError(f"store {self.path!r}: {os.path.basename(folder)!r} is "
                                     f"{'a symbolic link' if os.path.islink(folder) else 'not a folder'}, where "
                                     "the store keeps its own objects: nothing was written (move it away)")

    def _write_marker(self, meta: dict[str, Any]) -> None:
        data = json.dumps(meta, indent=1, default=str).encode()
        self._replace(self.path, MARKER, lambda f: f.write(data), MARKER)
        self._meta = meta

    def _replace(self, folder: str, filename: str, write, what: str) -> None:
        """Write a file of the store whole (landscape.atomic), as its one writer."""
        self.lock()
        self._ensure_folder(folder)
        try:
            write_atomically(os.path.join(folder, filename), write, f"{what} to store {self.path!r}")
        except LandscapeFault as exc:
            gone = "" if os.path.isdir(self.path) else " (the store folder was removed)"
            raise LandscapeFault(f"{exc}{gone}") from None

    def _write_h5(self, kind: str, filename: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any],
                  what: str) -> None:
        # The HDF5 file is built in memory and written with plain file I/O: a failed write then
        # reports the OS's reason (ENOSPC, EDQUOT, EFBIG) and never leaves HDF5 half-flushed.
        image = hdf5_image(arrays, attrs)
        self._replace(os.path.join(self.path, kind), filename, lambda out: out.write(image), what)

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge `attrs` into the store's own attributes (store.json, replaced atomically)."""
        self.lock()
        meta = dict(self._meta or {})
        meta["attrs"] = {**meta.get("attrs", {}), **attrs}
        self._write_marker(meta)

    # -- objects -------------------------------------------------------------------------
    def _file(self, kind: str, name: str) -> str:
        assert kind in KINDS, kind
        return os.path.join(self.path, kind, f"{check_name(name)}.h5")

    def _partial_file(self, kind: str, name: str) -> str:
        return os.path.join(self.path, kind, f"{PARTIAL}{check_name(name)}.h5")

    def names(self, kind: str) -> list[str]:
        folder = os.path.join(self.path, kind)
        if not os.path.isdir(folder):
            return []
        return sorted(n[:-3] for n in os.listdir(folder) if n.endswith(".h5") and not n.startswith("."))

    def unfinished(self, kind: str) -> list[str]:
        folder = os.path.join(self.path, kind)
        if not os.path.isdir(folder):
            return []
        return sorted(n[len(PARTIAL):-3] for n in os.listdir(folder) if n.startswith(PARTIAL) and n.endswith(".h5"))

    def has(self, kind: str, name: str) -> bool:
        path = self._file(kind, name)
        if os.path.isfile(path):
            return True
        if os.path.lexists(path):  # a folder, a dangling link, a FIFO where the object's file should be
            what = "a folder" if os.path.isdir(path) else "not a regular file"
            raise LandscapeError(f"{self._what(kind, name)} in store {self.path!r} is damaged: {path!r} is {what}, "
                                 "not an object file")
        return False

    def _what(self, kind: str, name: str) -> str:
        return f"{kind[:-1]} {name!r}"

    def _missing(self, kind: str, name: str) -> LandscapeError:
        available = ", ".join(self.names(kind)) or "none"
        return LandscapeError(f"store {self.path!r} has no {kind[:-1]} {name!r} (available: {available})")

    def read(self, kind: str, name: str, skip: Sequence[str] = ()) -> StoredObject:
        """A finished object's datasets (except `skip`) and attributes."""
        if not self.has(kind, name):
            raise self._missing(kind, name)
        arrays, attrs = _read_file(self._file(kind, name), f"{self._what(kind, name)} in store {self.path!r}", skip)
        return StoredObject(kind, name, arrays, attrs)

    def read_attrs(self, kind: str, name: str) -> dict[str, Any]:
        if not self.has(kind, name):
            raise self._missing(kind, name)
        try:
            with _open_h5(self._file(kind, name), "r") as f:
                return {k: _decode(v) for k, v in f.attrs.items()}
        except (OSError, RuntimeError, KeyError) as exc:
            raise LandscapeError(f"{self._what(kind, name)} in store {self.path!r} is unreadable "
                                 f"(truncated or corrupted): {_reason(exc)}") from None

    def datasets(self, kind: str, name: str) -> dict[str, list[int]]:
        """Shapes of an object's datasets, without reading them."""
        shapes: dict[str, list[int]] = {}
        try:
            with _open_h5(self._file(kind, name), "r") as f:
                f.visititems(lambda k, v: shapes.__setitem__(k, list(v.shape)) if isinstance(v, h5py.Dataset) else None)
        except (OSError, RuntimeError, KeyError) as exc:
            raise LandscapeError(f"{self._what(kind, name)} in store {self.path!r} is unreadable "
                                 f"(truncated or corrupted): {_reason(exc)}") from None
        return shapes

    def write(self, kind: str, name: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any],
              overwrite: bool = False) -> None:
        """A whole finished object: datasets and attributes, renamed into place when complete."""
        if self.has(kind, name) and not overwrite:
            raise LandscapeError(f"store {self.path!r} already has {self._what(kind, name)}")
        root = {"schema_version": SCHEMA_VERSION, "object": kind[:-1], "name": name, **provenance(), **attrs}
        self._write_h5(kind, f"{check_name(name)}.h5", arrays, root, self._what(kind, name))

    def object_image(self, kind: str, name: str) -> bytes:
        """A finished object's file as bytes (to move it to another store unchanged)."""
        with open(self._file(kind, name), "rb") as f:
            return f.read()

    def write_image(self, kind: str, name: str, image: bytes) -> None:
        """A finished object from another store's `object_image`, renamed into place whole
        (replacing one of that name: rank 0 of a distributed study files its ranks' results)."""
        self._replace(os.path.join(self.path, kind), f"{check_name(name)}.h5", lambda out: out.write(image),
                      self._what(kind, name))

    @contextmanager
    def new_object(self, kind: str, name: str, attrs: Mapping[str, Any], overwrite: bool = False
                   ) -> Iterator[ObjectWriter]:
        """An object written piece by piece; it appears (or replaces the old one) only if the block ends
        without an exception."""
        if self.has(kind, name) and not overwrite:
            raise LandscapeError(f"store {self.path!r} already has {self._what(kind, name)}")
        root = {"schema_version": SCHEMA_VERSION, "object": kind[:-1], "name": name, **provenance(), **attrs}
        self.lock()
        folder = os.path.join(self.path, kind)
        self._ensure_folder(folder)
        # Too large to build in memory (kept predictions): HDF5 writes the temporary file itself.
        tmp = temp_path(self._file(kind, name))
        try:
            with _open_h5(tmp, "w") as f:
                _write_object(f, {}, root)
                yield ObjectWriter(f)
                f.flush()
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, self._file(kind, name))
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, (OSError, RuntimeError, ValueError)) and not isinstance(exc, LandscapeError):
                raise LandscapeFault(f"cannot write {self._what(kind, name)} to store {self.path!r}: "
                                     f"{_reason(exc)}") from None
            raise
        fsync_dir(folder)

    def delete(self, kind: str, name: str) -> None:
        self.lock()
        for path in (self._file(kind, name), self._partial_file(kind, name)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- snapshots -----------------------------------------------------------------------
    def write_snapshot(self, snap: Snapshot, name: str | None = None, overwrite: bool = False,
                       attrs: Mapping[str, Any] | None = None) -> None:
        name = name or snap.name
        arrays = {"params": snap.params.detach().cpu().numpy(),
                  **{f"buffers/{k}": v.detach().cpu().numpy() for k, v in snap.buffers.items()}}
        self.write("snapshots", name, arrays, {"layout": snap.layout.to_json(), "dtype": str(snap.params.dtype),
                                               "meta": snap.meta, **(attrs or {})}, overwrite=overwrite)

    def read_snapshot_layout(self, name: str) -> ParamLayout:
        """A stored snapshot's layout (names and shapes), read from its attributes alone."""
        return _snapshot_layout(self.read_attrs("snapshots", name), f"snapshot {name!r} in store {self.path!r}")

    def read_snapshot(self, name: str) -> Snapshot:
        obj = self.read("snapshots", name)
        what = f"snapshot {name!r} in store {self.path!r} is damaged"
        for key, value in obj.arrays.items():
            if (key == "params" or key.startswith("buffers/")) and np.asarray(value).dtype.kind not in "fiub":
                raise LandscapeError(f"{what}: {key} is of dtype {np.asarray(value).dtype}, not "
                                     f"{'floating point' if key == 'params' else 'numbers'}")
        layout = _snapshot_layout(obj.attrs, f"snapshot {name!r} in store {self.path!r}")
        meta = obj.attrs.get("meta", {})
        if meta is not None and not isinstance(meta, Mapping):
            raise LandscapeError(f"{what}: its meta attribute is a {type(meta).__name__}, not a mapping")
        try:
            params = torch.from_numpy(obj["params"])
            buffers = {k[len("buffers/"):]: torch.from_numpy(np.asarray(v)) for k, v in obj.arrays.items()
                       if k.startswith("buffers/")}
        except KeyError as exc:
            raise LandscapeError(f"{what}: dataset {exc} is missing") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise LandscapeError(f"{what}: unreadable arrays ({_reason(exc)})") from None
        raw = obj["params"]
        if raw.dtype.kind != "f":
            raise LandscapeError(f"{what}: params are of dtype {raw.dtype}, not floating point")
        if raw.ndim != 1:
            raise LandscapeError(f"{what}: params have shape {list(raw.shape)}, not one vector")
        if raw.shape[0] != layout.numel:
            raise LandscapeError(f"{what}: params hold {raw.shape[0]} values, its layout says {layout.numel}")
        for key, value in buffers.items():
            owner, _, leaf = key.rpartition(".")
            weight = f"{owner}.weight" if owner else "weight"
            if leaf in ("running_mean", "running_var") and weight in layout.names:  # a norm layer's statistics
                shape = layout.shapes[layout.names.index(weight)]
                if tuple(value.shape) != tuple(shape):
                    raise LandscapeError(f"{what}: buffer {key!r} has shape {list(value.shape)}, its layer's weight "
                                         f"{list(shape)}")
        return Snapshot(name, params, layout, buffers, dict(meta or {}))

    # -- directions ----------------------------------------------------------------------
    def write_directions(self, name: str, directions: torch.Tensor, attrs: Mapping[str, Any],
                         overwrite: bool = False) -> None:
        self.write("directions", name, {"directions": directions.detach().cpu().numpy()}, attrs, overwrite)

    def read_directions(self, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        obj = self.read("directions", name)
        return torch.from_numpy(obj["directions"]), obj.attrs

    # -- resume, or refuse -----------------------------------------------------------------
    def resume_or_refuse(self, kind: str, name: str, config: Mapping[str, Any], overwrite: bool) -> bool:
        """True when `name` of `kind` is stored, finished, with `config` (nothing to compute); False
        when it must be computed (absent, or `overwrite` given); a one-line refusal, naming the
        arguments that differ, when it was computed with others. Every kind of result decides here."""
        if not self.has(kind, name):
            return False
        old = self.read_attrs(kind, name).get("config")
        if same_config(old, config):
            return True
        if not overwrite:
            raise LandscapeError(f"{self._what(kind, name)} in store {self.path!r} was computed with different "
                                 f"arguments ({config_differences(old, config)}); use --overwrite to replace it or "
                                 "choose another --name")
        return False

    # -- progress of an object being made (a grid's points, a curve's training) ------------
    def write_progress(self, kind: str, name: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        """Save the progress of object `name` as its `.partial-` file, replaced whole (the writer's lock first)."""
        check_name(name)
        self.lock()
        root = {"schema_version": SCHEMA_VERSION, "object": kind[:-1], "name": name, **provenance(), **attrs}
        self._write_h5(kind, f"{PARTIAL}{name}.h5", arrays, root, self._what(kind, name))

    def read_progress(self, kind: str, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The saved progress of `name` (arrays, attributes); None when there is none or it was cut
        short mid-write (then only that progress is lost)."""
        path = self._partial_file(kind, name)
        if not os.path.isfile(path) or os.path.islink(path):
            return None
        try:
            return _read_file(path, "partial")
        except LandscapeError:
            return None

    def drop_progress(self, kind: str, name: str) -> None:
        """Remove the progress of `name` once the object itself is stored."""
        try:
            os.unlink(self._partial_file(kind, name))
        except FileNotFoundError:
            pass

    # -- resumable grids -----------------------------------------------------------------
    def open_grid(self, kind: str, name: str, shape: Sequence[int], metrics: Sequence[str],
                  arrays: Mapping[str, np.ndarray], config: Mapping[str, Any],
                  attrs: Mapping[str, Any] | None = None, overwrite: bool = False) -> Grid:
        """A result grid under `name`: the finished one if `config` matches (nothing to compute),
        else the unfinished one to resume, else a new one. Refuses, changing nothing, when a grid of
        that name was computed with a different config, unless `overwrite`; even then the old one
        stays until the new one is finished."""
        check_name(name)
        config_json = json.dumps(config, sort_keys=True, default=str)
        grid = Grid(self._write_grid, kind, name, tuple(int(s) for s in shape), list(metrics), dict(arrays),
                    config_json, dict(attrs or {}))
        if self.resume_or_refuse(kind, name, config, overwrite):
            obj = self.read(kind, name)
            grid.load_finished(obj.arrays, obj.attrs)
            return grid
        self.lock()  # we will compute: become the writer before any work, then look again
        saved = self.read_progress(kind, name)  # None also when cut short mid-write: only it is lost
        if saved is not None and same_config(saved[1].get("config"), config):
            grid.load_partial(saved[0])
        elif saved is not None and not overwrite:
            raise LandscapeError(f"an unfinished {self._what(kind, name)} in store {self.path!r} was started "
                                 f"with different arguments ({config_differences(saved[1].get('config'), config)}); "
                                 "rerun that command to finish it, or use --overwrite to replace it")
        return grid

    def _write_grid(self, grid: Grid, final: bool) -> None:
        attrs = {**grid.attrs, "config": grid.config_json}
        if not final:  # a grid's points so far are its progress
            self.write_progress(grid.kind, grid.name, grid.arrays(), attrs)
            return
        root = {"schema_version": SCHEMA_VERSION, "object": grid.kind[:-1], "name": grid.name, **provenance(),
                **attrs}
        self._write_h5(grid.kind, f"{grid.name}.h5", grid.arrays(), root, self._what(grid.kind, grid.name))
        self.drop_progress(grid.kind, grid.name)

    # -- overview ------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Everything the store holds: per kind, per name, dataset shapes and key attributes.
        A damaged object is listed with the reason instead of stopping the listing."""
        out: dict[str, Any] = {"path": self.path, "schema_version": self.schema_version, "attrs": {
            k: v for k, v in self.attrs.items() if k not in ("study_config",)}}
        for kind in KINDS:
            entries: dict[str, Any] = {}
            for name in self.names(kind):
                try:
                    shapes = self.datasets(kind, name)
                    attrs = {k: v for k, v in self.read_attrs(kind, name).items()
                             if k not in ("versions", "layout", "config", "schema_version", "object", "name")}
                except LandscapeError as exc:
                    entries[name] = {"datasets": {}, "attrs": {}, "damaged": str(exc)}
                    continue
                if "done" in shapes:
                    done = self.read(kind, name, skip=[k for k in shapes if k != "done"])["done"]
                    attrs["complete"] = f"{int(done.sum())}/{done.size}"
                entries[name] = {"datasets": shapes, "attrs": attrs}
            for name in self.unfinished(kind):
                if name not in entries:
                    entries[name] = {"datasets": {}, "attrs": {"complete": "unfinished"}}
            if entries:
                out[kind] = entries
        return out


def same_config(stored: Any, config: Mapping[str, Any]) -> bool:
    """Whether a stored config (decoded, or its JSON text) is the one asked for."""
    if isinstance(stored, str):
        try:
            stored = json.loads(stored)
        except json.JSONDecodeError:
            return False
    canon = lambda c: json.dumps(c, sort_keys=True, default=str)  # noqa: E731
    return canon(stored) == canon(json.loads(canon(config)))


def config_differences(old: Any, new: Mapping[str, Any]) -> str:
    """Which keys of a stored config differ from the one asked for."""
    if isinstance(old, str):
        try:
            old = json.loads(old)
        except json.JSONDecodeError:
            old = None
    if not isinstance(old, Mapping):
        return "unknown stored arguments"
    new = json.loads(json.dumps(new, sort_keys=True, default=str))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in " + ", ".join(keys) if keys else "same arguments, different encoding"


def _snapshot_layout(attrs: Mapping[str, Any], what: str) -> ParamLayout:
    """The `layout` attribute of a snapshot, checked: names (strings) and shapes (lists of sizes)."""
    layout = attrs.get("layout")
    if layout is None:
        raise LandscapeError(f"{what} is damaged: its layout attribute is missing")
    if not isinstance(layout, Mapping):
        raise LandscapeError(f"{what} is damaged: its layout attribute is a {type(layout).__name__}, not a mapping")
    try:
        names, shapes = layout["names"], layout["shapes"]
        if not (isinstance(names, list) and isinstance(shapes, list) and len(names) == len(shapes)
                and all(isinstance(n, str) for n in names)
                and all(isinstance(sh, list) and all(isinstance(d, int) and d >= 0 for d in sh) for sh in shapes)):
            raise ValueError("names and shapes must be lists of equal length: strings, and lists of sizes")
        return ParamLayout.from_json(layout)
    except (KeyError, TypeError, ValueError) as exc:
        raise LandscapeError(f"{what} is damaged: unreadable layout attribute ({_reason(exc)})") from None
