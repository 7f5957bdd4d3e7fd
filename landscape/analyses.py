"""The analysis layer: one function per kind of result, used by the API, the CLI and the study.

Each takes an evaluator, the snapshots or directions, an optional store and a name, and owns
the whole life of its result: the fingerprint a stored result must match (`config`), resume
(only missing points are computed), the computation, and the one write of the finished object.
Nothing is written before the store has agreed to the name (a refused command changes nothing),
and a result that is already finished with the same arguments is returned without a write.
"""
from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .checkpoints import Snapshot, check_same_architecture
from .engine import Evaluator
from .errors import LandscapeError
from .grid import Grid, MemoryGrid
from .jsonable import masked, to_jsonable
from .lines import barrier_matrices, compute_barrier_matrix, compute_line, curve_barriers
from .planes import compute_plane
from .store import Store, config_differences, same_config
from .validate import check_grid_size, positive_int


def tensor_fingerprint(t: torch.Tensor) -> str:
    # a view of the bytes, not a copy: stored predictions can be large
    return hashlib.sha1(memoryview(t.detach().cpu().contiguous().numpy().reshape(-1)).cast("B")).hexdigest()[:16]


def _open_grid(store: Store | None, kind: str, name: str, shape: Sequence[int], metrics: Sequence[str],
               arrays: Mapping[str, Any], config: Mapping[str, Any], attrs: Mapping[str, Any], overwrite: bool,
               n_coeffs: int) -> Grid:
    check_grid_size(shape, f"{kind[:-1]} {name!r}", len(metrics), n_coeffs)
    if store is None:
        return MemoryGrid(shape, metrics, arrays)
    return store.open_grid(kind, name, shape, metrics, arrays, config, attrs, overwrite)


def _summary(grid: Grid, computed: int) -> dict[str, Any]:
    """What every result reports: points computed now, points that diverged, and the masks."""
    done, nonfinite = grid.done_mask(), grid.nonfinite()
    return {"points": int(done.size), "computed_now": int(computed), "diverged": int(nonfinite.sum()),
            "done": done, "nonfinite": nonfinite}


def _metrics(grid: Grid) -> dict[str, np.ndarray]:
    return {m: grid.data[m].copy() for m in grid.metrics}


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result as JSON: metric grids with `null` where a point was not computed and "nan"/"inf"
    where it was computed and diverged (the masks themselves are left out)."""
    done = result.get("done")
    out = {}
    for key, value in result.items():
        if key in ("done", "nonfinite"):
            continue
        if done is not None and isinstance(value, np.ndarray) and value.shape == np.shape(done) \
                and key.endswith(("_loss", "_acc")):
            out[key] = masked(value, done)
        else:
            out[key] = to_jsonable(value)
    return out


def line(evaluator: Evaluator, a: Snapshot, b: Snapshot, alphas: np.ndarray, *, store: Store | None = None,
         name: str = "interpolate", provenance: Mapping[str, Any] | None = None, overwrite: bool = False,
         chunk: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Metrics along θ(α) = (1−α)·θa + α·θb and the loss and error barriers (curve `name`)."""
    check_same_architecture([a, b])
    chunk = None if chunk is None else positive_int(chunk, "--chunk")
    alphas = np.asarray(alphas, dtype=np.float64)
    prov = dict(provenance or {})
    config = {**prov, **evaluator.config, "a": a.fingerprint(), "b": b.fingerprint(), "alphas": alphas.tolist()}
    grid = _open_grid(store, "curves", name, (len(alphas),), evaluator.metric_names, {"alphas": alphas}, config,
                      {**prov, "bn_mode": evaluator.bn_mode, "a": a.name, "b": b.name}, overwrite, 1)
    todo = len(grid.missing())
    compute_line(evaluator, a, b, alphas, grid, chunk, quiet=quiet)
    barriers = curve_barriers(alphas, grid.data)
    grid.finish(attrs={"barriers": barriers})
    return {"kind": "curve", "name": name, "a": a.name, "b": b.name, "bn_mode": evaluator.bn_mode,
            "alphas": alphas, **_metrics(grid), "barriers": barriers, **_summary(grid, todo)}


def barrier_matrix(evaluator: Evaluator, snapshots: Sequence[Snapshot], alphas: np.ndarray, *,
                   store: Store | None = None, name: str = "barriers", provenance: Mapping[str, Any] | None = None,
                   overwrite: bool = False, chunk: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Curves between every pair i < j and the loss and error barrier matrices (object `name`)."""
    snaps = list(snapshots)
    if len(snaps) < 2:
        raise LandscapeError("barriers needs at least two snapshots")
    check_same_architecture(snaps)
    chunk = None if chunk is None else positive_int(chunk, "--chunk")
    alphas = np.asarray(alphas, dtype=np.float64)
    n = len(snaps)
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=np.int64)
    names = [s.name for s in snaps]
    prov = dict(provenance or {})
    config = {**prov, **evaluator.config, "snapshots": [s.fingerprint() for s in snaps], "alphas": alphas.tolist()}
    grid = _open_grid(store, "barriers", name, (len(pairs), len(alphas)), evaluator.metric_names,
                      {"alphas": alphas, "pairs": pairs, "names": np.array(names, dtype="S")}, config,
                      {**prov, "bn_mode": evaluator.bn_mode}, overwrite, 1)
    todo = len(grid.missing())
    compute_barrier_matrix(evaluator, snaps, alphas, grid, chunk, quiet=quiet)
    matrices = barrier_matrices(alphas, grid.data, [tuple(p) for p in pairs], n)
    grid.finish(derived=matrices)
    return {"kind": "barriers", "name": name, "snapshots": names, "bn_mode": evaluator.bn_mode, "alphas": alphas,
            **matrices, **_summary(grid, todo)}


def plane(evaluator: Evaluator, center: Snapshot, directions: torch.Tensor, xs: np.ndarray, ys: np.ndarray, *,
          store: Store | None = None, name: str = "plane", provenance: Mapping[str, Any] | None = None,
          direction_attrs: Mapping[str, Any] | None = None,
          projections: tuple[list[str], np.ndarray, np.ndarray] | None = None,
          buffer_directions: Mapping[str, torch.Tensor] | None = None, overwrite: bool = False,
          chunk: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """The surface θ0 + x·d1 + y·d2 on the grid xs × ys (object `name`), with its directions
    (stored under the same name, once the surface is finished) and projected snapshots.
    `buffer_directions` moves the BN buffers with the weights (planes through snapshots);
    without them every point has the centre's buffers."""
    if directions.ndim != 2 or directions.shape[0] != 2:
        raise LandscapeError(f"a plane needs two directions, got shape {list(directions.shape)}")
    chunk = None if chunk is None else positive_int(chunk, "--chunk")
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    prov, dir_attrs = dict(provenance or {}), dict(direction_attrs or {})
    dir_attrs["buffers"] = "interpolated" if buffer_directions else "centre"
    config = {**prov, **evaluator.config, **dir_attrs, "center": center.fingerprint(),
              "directions": tensor_fingerprint(directions), "x": xs.tolist(), "y": ys.tolist()}
    grid = _open_grid(store, "surfaces", name, (len(xs), len(ys)), evaluator.metric_names,
                      {"xcoordinates": xs, "ycoordinates": ys}, config,
                      {**prov, **dir_attrs, "bn_mode": evaluator.bn_mode, "center": center.name, "directions": name},
                      overwrite, 2)
    todo = len(grid.missing())
    compute_plane(evaluator, center, directions, xs, ys, grid, chunk, quiet=quiet,
                  buffer_directions=dict(buffer_directions or {}))
    names, coords, dists = projections or ([], np.zeros((0, 2)), np.zeros(0))
    if store is not None and not grid.finished:
        # Directions first: if the surface's own write then fails, rerunning the command rewrites both.
        store.write_directions(name, directions, {**dir_attrs, "center": center.name, "surface": name},
                               overwrite=True)
    grid.finish(derived={"projection_names": np.array(names, dtype="S"), "projection_coords": coords,
                         "projection_distances": dists})
    return {"kind": "surface", "name": name, "center": center.name, "bn_mode": evaluator.bn_mode, **dir_attrs,
            "xcoordinates": xs, "ycoordinates": ys, **_metrics(grid),
            "projections": [{"name": nm, "x": float(c[0]), "y": float(c[1]), "distance": float(d)}
                            for nm, c, d in zip(names, coords, dists)], **_summary(grid, todo)}


def finished_ensemble(store: Store | None, name: str, config: Mapping[str, Any],
                      overwrite: bool) -> dict[str, np.ndarray] | None:
    """The stored arrays of ensemble `name` if it was computed with `config` (nothing to do);
    None if it must be computed. Refuses a different config unless `overwrite`."""
    if store is None or not store.has("ensembles", name):
        return None
    attrs = store.read_attrs("ensembles", name)
    stored = attrs.get("config")
    if same_config(stored, config):
        return store.read("ensembles", name, skip=("predictions", "labels")).arrays
    if not overwrite:
        raise LandscapeError(f"ensemble {name!r} in store {store.path!r} was computed with different arguments "
                             f"({config_differences(stored, config)}); use --overwrite to replace it or choose another --name")
    return None


def ensemble_arrays(result: Mapping[str, Any], members: Sequence[str]) -> dict[str, np.ndarray]:
    """The datasets of a stored ensemble: every per-size array of `result`, and the member names."""
    arrays = {k: np.asarray(v) for k, v in result.items() if isinstance(v, (np.ndarray, list))}
    arrays["members"] = np.array(list(members), dtype="S")
    return arrays
