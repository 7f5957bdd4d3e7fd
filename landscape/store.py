"""The HDF5 store: one file per study or analysis (schema in DESIGN.md).

Layout
    /                       attrs: schema_version, created, versions
    /snapshots/NAME         params [P], buffers/<name>, attrs: layout, meta (method, member, ...)
    /directions/NAME        directions [d, P], attrs: kind, normalization, seed, ...
    /curves/NAME            alphas, train_loss, train_acc, test_loss, test_acc, done
    /surfaces/NAME          xcoordinates, ycoordinates, <metric> [len(x), len(y)], done,
                            projections/ (names, coords, distances)
    /barriers/NAME          names, alphas, curve_<metric> [n, n, len(alphas)], <metric>_barrier [n, n], done
    /ensembles/NAME         per-size metric arrays (and kept member predictions)
    /predictions/NAME       a study's per-snapshot test logits (fp16) with metrics as attributes
    /labels/NAME            the labels those predictions refer to

Crash safety: grids are pre-allocated contiguous datasets; each finished chunk writes its
values, then its `done` flags, then flushes, so a kill leaves a readable file whose `done`
mask tells a restart what is missing. New snapshots are written under a temporary name and
renamed when complete.
"""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np
import torch

from .checkpoints import Snapshot
from .errors import LandscapeError
from .params import ParamLayout

SCHEMA_VERSION = 1
KINDS = ("snapshots", "directions", "curves", "surfaces", "barriers", "ensembles", "predictions", "labels")


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
    except Exception:  # noqa: BLE001 - running from a source tree
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


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    return {k: _decode(v) for k, v in obj.attrs.items()}


def write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        if v is not None:
            obj.attrs[k] = _encode(v)


def _describe_open_error(path: str, exc: Exception) -> str:
    text = str(exc)
    if "unable to lock file" in text.lower():
        return f"store {path!r} is open for writing by another process"
    if "signature" in text.lower():
        return f"{path!r} is not an HDF5 file"
    return f"store {path!r} is unreadable (truncated or corrupted): {text.splitlines()[0] if text else type(exc).__name__}"


class Store:
    """An HDF5 file of snapshots, directions and results. Use as a context manager."""

    def __init__(self, path: str, mode: str = "r") -> None:
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        self.path = str(path)
        if mode == "r" and not os.path.isfile(self.path):
            raise LandscapeError(f"store {self.path!r} does not exist")
        if os.path.exists(self.path) and not os.path.isfile(self.path):
            raise LandscapeError(f"store {self.path!r} is not a file")
        if os.path.isfile(self.path) and not h5py.is_hdf5(self.path):
            raise LandscapeError(f"{self.path!r} is not an HDF5 file")
        try:
            self.file = h5py.File(self.path, mode)
        except (OSError, BlockingIOError) as exc:
            raise LandscapeError(_describe_open_error(self.path, exc)) from None
        try:
            if mode == "a" and "schema_version" not in self.file.attrs:
                if len(self.file.keys()):
                    raise LandscapeError(f"{self.path!r} is an HDF5 file but not a landscape store")
                write_attrs(self.file, {"schema_version": SCHEMA_VERSION, **provenance()})
                self.file.flush()
            version = self.file.attrs.get("schema_version")
            if version is None:
                raise LandscapeError(f"{self.path!r} is an HDF5 file but not a landscape store")
            if int(version) > SCHEMA_VERSION:
                raise LandscapeError(f"store {self.path!r} has schema version {int(version)}, "
                                     f"newer than this toolkit's {SCHEMA_VERSION}")
        except LandscapeError:
            self.file.close()
            raise
        except (OSError, KeyError, RuntimeError) as exc:
            self.file.close()
            raise LandscapeError(_describe_open_error(self.path, exc)) from None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def flush(self) -> None:
        self.file.flush()

    # -- generic -----------------------------------------------------------------------
    def group(self, kind: str) -> h5py.Group:
        assert kind in KINDS, kind
        return self.file.require_group(kind)

    def names(self, kind: str) -> list[str]:
        grp = self.file.get(kind)
        return sorted(k for k in grp.keys() if not k.startswith(".tmp")) if grp is not None else []

    def has(self, kind: str, name: str) -> bool:
        return f"{kind}/{name}" in self.file

    def get(self, kind: str, name: str) -> h5py.Group:
        if not self.has(kind, name):
            available = ", ".join(self.names(kind)) or "none"
            raise LandscapeError(f"store {self.path!r} has no {kind[:-1]} {name!r} (available: {available})")
        return self.file[f"{kind}/{name}"]

    def delete(self, kind: str, name: str) -> None:
        if self.has(kind, name):
            del self.file[f"{kind}/{name}"]

    def _write_atomically(self, kind: str, name: str, fill) -> h5py.Group:
        """Build a new object under a temporary name, then rename it into place."""
        _check_name(name)
        grp = self.group(kind)
        tmp = f".tmp-{name}-{os.getpid()}"
        if tmp in grp:
            del grp[tmp]
        obj = grp.create_group(tmp)
        fill(obj)
        self.file.flush()
        if name in grp:
            del grp[name]
        grp.move(tmp, name)
        self.file.flush()
        return grp[name]

    def write_group(self, kind: str, name: str, arrays: Mapping[str, Any], attrs: Mapping[str, Any],
                    overwrite: bool = True) -> None:
        """A whole new object of datasets and attributes, written atomically (temporary name + rename)."""
        if self.has(kind, name) and not overwrite:
            raise LandscapeError(f"store {self.path!r} already has {kind[:-1]} {name!r}")

        def fill(g: h5py.Group) -> None:
            for key, value in arrays.items():
                g.create_dataset(key, data=np.asarray(value))
            write_attrs(g, attrs)

        self._write_atomically(kind, name, fill)

    # -- snapshots ---------------------------------------------------------------------
    def write_snapshot(self, snap: Snapshot, name: str | None = None, overwrite: bool = False,
                       attrs: Mapping[str, Any] | None = None) -> None:
        name = name or snap.name
        if self.has("snapshots", name) and not overwrite:
            raise LandscapeError(f"store {self.path!r} already has snapshot {name!r}")

        def fill(g: h5py.Group) -> None:
            g.create_dataset("params", data=snap.params.detach().cpu().numpy())
            bg = g.create_group("buffers")
            for bname, value in snap.buffers.items():
                bg.create_dataset(bname, data=value.detach().cpu().numpy())
            write_attrs(g, provenance(layout=snap.layout.to_json(), dtype=str(snap.params.dtype),
                                      meta=snap.meta, **(attrs or {})))

        self._write_atomically("snapshots", name, fill)

    def read_snapshot(self, name: str) -> Snapshot:
        g = self.get("snapshots", name)
        attrs = read_attrs(g)
        try:
            params = torch.from_numpy(g["params"][()])
            buffers = {k: torch.from_numpy(np.asarray(v[()])) for k, v in g["buffers"].items()}
            layout = ParamLayout.from_json(attrs["layout"])
        except (KeyError, OSError, TypeError) as exc:
            raise LandscapeError(f"snapshot {name!r} in {self.path!r} is damaged: {exc}") from None
        return Snapshot(name, params, layout, buffers, attrs.get("meta", {}) or {})

    # -- directions --------------------------------------------------------------------
    def write_directions(self, name: str, directions: torch.Tensor, attrs: Mapping[str, Any],
                         overwrite: bool = True) -> None:
        if self.has("directions", name) and not overwrite:
            raise LandscapeError(f"store {self.path!r} already has directions {name!r}")

        def fill(g: h5py.Group) -> None:
            g.create_dataset("directions", data=directions.detach().cpu().numpy())
            write_attrs(g, provenance(**attrs))

        self._write_atomically("directions", name, fill)

    def read_directions(self, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
        g = self.get("directions", name)
        return torch.from_numpy(g["directions"][()]), read_attrs(g)

    # -- resumable grids ---------------------------------------------------------------
    def open_grid(self, kind: str, name: str, shape: Sequence[int], metrics: Iterable[str],
                  arrays: Mapping[str, np.ndarray], config: Mapping[str, Any],
                  attrs: Mapping[str, Any] | None = None, overwrite: bool = False) -> "GridWriter":
        """A pre-allocated result grid; reopened for resume when `config` matches."""
        _check_name(name)
        config_json = json.dumps(config, sort_keys=True, default=str)
        if self.has(kind, name):
            g = self.file[f"{kind}/{name}"]
            old = g.attrs.get("config")
            old = old.decode() if isinstance(old, bytes) else old
            if old == config_json and "done" in g:
                return GridWriter(self, g, tuple(shape), list(metrics))
            if not overwrite:
                raise LandscapeError(f"{kind[:-1]} {name!r} in {self.path!r} was computed with different "
                                     "arguments; use --overwrite to replace it or choose another --name")
            del self.file[f"{kind}/{name}"]

        def fill(g: h5py.Group) -> None:
            for key, value in arrays.items():
                g.create_dataset(key, data=np.asarray(value))
            for m in metrics:
                g.create_dataset(m, shape=tuple(shape), dtype="f8", fillvalue=np.nan)
            g.create_dataset("done", shape=tuple(shape), dtype="bool", fillvalue=False)
            write_attrs(g, provenance(config=config_json, **(attrs or {})))
            g.attrs["config"] = config_json  # stored verbatim: it is compared byte for byte on resume

        g = self._write_atomically(kind, name, fill)
        return GridWriter(self, g, tuple(shape), list(metrics))

    # -- overview ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Everything the store holds: per kind, per name, its datasets' shapes and key attributes."""
        out: dict[str, Any] = {"path": self.path, "schema_version": int(self.file.attrs["schema_version"])}
        for kind in KINDS:
            entries = {}
            for name in self.names(kind):
                g = self.file[f"{kind}/{name}"]
                if isinstance(g, h5py.Dataset):
                    entries[name] = {"datasets": {"": list(g.shape)}, "attrs": {}}
                    continue
                datasets = {}
                g.visititems(lambda k, v: datasets.__setitem__(k, list(v.shape))
                             if isinstance(v, h5py.Dataset) else None)
                attrs = {k: v for k, v in read_attrs(g).items() if k not in ("versions", "layout", "config")}
                if "done" in g:
                    done = g["done"][()]
                    attrs["complete"] = f"{int(done.sum())}/{done.size}"
                entries[name] = {"datasets": datasets, "attrs": attrs}
            if entries:
                out[kind] = entries
        return out


@dataclass
class GridWriter:
    store: Store
    group: h5py.Group
    shape: tuple[int, ...]
    metrics: list[str]

    def done_mask(self) -> np.ndarray:
        return self.group["done"][()]

    def missing(self) -> np.ndarray:
        """Flat indices (C order) of the points not yet computed."""
        return np.flatnonzero(~self.done_mask().reshape(-1))

    def write(self, flat_indices: Sequence[int], values: Mapping[str, Sequence[float]]) -> None:
        """Write a finished chunk: values first, then its done flags, then flush."""
        idx = np.unravel_index(np.asarray(flat_indices, dtype=np.int64), self.shape)
        for m in self.metrics:
            if m in values:
                self._set(m, idx, np.asarray(values[m], dtype=np.float64))
        self._set("done", idx, np.ones(len(flat_indices), dtype=bool))
        self.store.flush()

    def _set(self, key: str, idx: tuple[np.ndarray, ...], vals: np.ndarray) -> None:
        ds = self.group[key]
        data = ds[()]
        data[idx] = vals
        ds[...] = data  # whole-array write: small grids, and no fancy-index ordering rules to meet

    def read(self) -> dict[str, np.ndarray]:
        return {k: self.group[k][()] for k in self.group.keys() if isinstance(self.group[k], h5py.Dataset)}

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        write_attrs(self.group, attrs)
        self.store.flush()

    def put(self, key: str, value: np.ndarray) -> None:
        """A derived dataset (barrier matrices, projections), replaced whole."""
        if key in self.group:
            del self.group[key]
        self.group.create_dataset(key, data=np.asarray(value))
        self.store.flush()


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or name.strip() != name:
        raise LandscapeError(f"invalid name {name!r}: use a non-empty name without '/' or leading '.'")
