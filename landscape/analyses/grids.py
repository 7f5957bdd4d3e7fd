"""Lines, barrier matrices and planes: the grid results (kinds curves, barriers, surfaces).

Each function takes an evaluator, the snapshots or directions, an optional store and a name, and
owns the whole life of its result: the fingerprint a stored result must match (`config`), resume
(only missing points are computed), the computation, and the one write of the finished object.
Nothing is written before the store has agreed to the name (a refused command changes nothing),
and a result that is already finished with the same arguments is returned without a write.
One compute path (`_compute_missing`) serves one process and many torchrun ranks.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.core import distributed
from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.core.errors import LandscapeError
from landscape.core.family import AffineFamily
from landscape.core.jsonable import masked, to_jsonable
from landscape.core.validate import check_grid_size, positive_int
from landscape.evaluate.engine import Evaluator
from landscape.geometry.lines import barrier_matrices, curve_barriers, line_family
from landscape.geometry.planes import plane_coefficients, plane_family
from landscape.store.grid import Grid, MemoryGrid
from landscape.store.store import Store, config_differences

# Part of a grid: its points [offset, offset + len(coeffs)) lie on one affine family, whose
# endpoints (BN mode repair's, [d + 1, d] coefficients) are the last item: None where it has none.
Segment = tuple[Callable[[], AffineFamily], np.ndarray, int, np.ndarray | None]
LINE_ENDPOINTS = np.array([[0.0], [1.0]])


def tensor_fingerprint(t: torch.Tensor) -> str:
    # a view of the bytes, not a copy: stored predictions can be large
    return hashlib.sha1(memoryview(t.detach().cpu().contiguous().numpy().reshape(-1)).cast("B")).hexdigest()[:16]


def _open_grid(store: Store | None, kind: str, name: str, shape: Sequence[int], metrics: Sequence[str],
               arrays: Mapping[str, Any], config: Mapping[str, Any], attrs: Mapping[str, Any], overwrite: bool,
               n_coeffs: int, evaluator: Evaluator | None = None) -> Grid:
    check_grid_size(shape, f"{kind[:-1]} {name!r}", len(metrics), n_coeffs)
    if not distributed.active():
        if store is None:
            return MemoryGrid(shape, metrics, arrays)
        return store.open_grid(kind, name, shape, metrics, arrays, config, attrs, overwrite)
    # Under torchrun rank 0 alone opens (and, to compute, locks) the store, once every rank has
    # shown the same inputs; the others learn which points are missing.
    mine = json.dumps(config, sort_keys=True, default=str)
    opened: dict[str, Grid] = {}

    def open_on_rank0(configs: list[str]) -> dict[str, Any]:
        check_same_inputs(configs, config)
        grid = opened["grid"] = (MemoryGrid(shape, metrics, arrays) if store is None else
                                 store.open_grid(kind, name, shape, metrics, arrays, config, attrs, overwrite))
        return {"done": grid.data["done"], "finished": grid.finished,
                "points_per_pass": getattr(evaluator, "points_per_pass", None)}

    _, state = distributed.exchange(lambda: mine, open_on_rank0)
    if "grid" in opened:
        return opened["grid"]
    grid = MemoryGrid(shape, metrics, arrays)  # a worker's view: which points are done
    grid.data["done"] = np.array(state["done"], dtype=bool)
    grid.finished = bool(state["finished"])
    if evaluator is not None and evaluator.batched is not None and state["points_per_pass"] is not None:
        # K from free memory may differ by GPU: rank 0's K makes the same chunks and passes
        evaluator.points_per_pass = int(state["points_per_pass"])
    return grid


def check_same_inputs(configs: Sequence[str], config: Mapping[str, Any]) -> None:
    """Rank 0's check that every rank fingerprinted the same inputs (`configs` as JSON, by rank)."""
    mine = json.dumps(config, sort_keys=True, default=str)
    for rank, other in enumerate(configs):
        if other != mine:
            raise LandscapeError(f"rank {rank} does not see the inputs rank 0 sees "
                                 f"({config_differences(json.loads(other), config)}): every rank must read "
                                 "the same checkpoints and data at the same paths")


def _compute_missing(evaluator: Evaluator, grid: Grid, segments: Sequence[Segment], chunk: int | None, quiet: bool,
          desc: str) -> None:
    """The missing points of `grid`: the one compute path of lines, barrier matrices and planes.
    Chunks of `chunk` points are formed per segment, in order, and dealt round-robin to the ranks;
    rank 0 saves each round's chunks at once. One process is the one-rank case: a round is one
    chunk, saved as soon as it is computed."""
    size = chunk if chunk is not None else evaluator.default_chunk()
    todo = grid.missing()
    units: list[tuple[int, np.ndarray]] = []
    for s, (_, coeffs, offset, _) in enumerate(segments):
        mine = todo[(todo >= offset) & (todo < offset + len(coeffs))] - offset
        units += [(s, mine[i:i + size]) for i in range(0, len(mine), size)]
    w = distributed.world()
    if w.distributed and units:  # before any work: the ranks' models must compute the same function
        first = segments[0][0]()
        distributed.check_same_outputs(lambda: evaluator.probe_outputs(first.origin, first.buffer_origin))
    family: tuple[int, AffineFamily] | None = None
    with tqdm(total=len(todo), desc=desc, unit="pt", disable=quiet or not w.writer, leave=False) as bar:
        for start in range(0, len(units), w.size):
            own = None
            if start + w.rank < len(units):
                s, idx = units[start + w.rank]
                if family is None or family[0] != s:  # on the device once, not at every chunk
                    f, dev = segments[s][0](), evaluator.device
                    family = (s, AffineFamily(f.origin.to(dev), f.directions.to(dev),
                                              {k: v.to(dev) for k, v in f.buffer_origin.items()},
                                              {k: v.to(dev) for k, v in f.buffer_directions.items()}))
                _, coeffs, offset, vertices = segments[s]
                values = evaluator.run(family[1], coeffs, idx, len(idx), quiet=True, vertices=vertices)
                own = (idx + offset, values)
            try:
                parts = distributed.gather(lambda: own)
            except distributed.PeerLost:
                if w.writer and own is not None:  # what this rank finished is kept
                    with distributed.shielded():
                        grid.write(*own)
                raise
            if w.writer:
                parts = [p for p in parts or [] if p is not None]
                with distributed.shielded():  # one save per round, as one process saves per chunk
                    grid.write(np.concatenate([p[0] for p in parts]),
                               {m: np.concatenate([p[1][m] for p in parts]) for m in grid.metrics})
                bar.update(sum(len(p[0]) for p in parts))


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
                      {**prov, "bn_mode": evaluator.bn_mode, "a": a.name, "b": b.name}, overwrite, 1, evaluator)
    todo = len(grid.missing())
    _compute_missing(evaluator, grid, [(lambda: line_family(a, b), alphas.reshape(-1, 1), 0, LINE_ENDPOINTS)],
                     chunk, quiet, "line")

    def finish() -> dict[str, Any]:
        barriers = curve_barriers(alphas, grid.data)
        grid.finish(attrs={"barriers": barriers})
        return {"kind": "curve", "name": name, "a": a.name, "b": b.name, "bn_mode": evaluator.bn_mode,
                "alphas": alphas, **_metrics(grid), "barriers": barriers, **_summary(grid, todo)}
    return distributed.on_rank0(finish)


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
                      {**prov, "bn_mode": evaluator.bn_mode}, overwrite, 1, evaluator)
    todo = len(grid.missing())
    segments = [(lambda i=i, j=j: line_family(snaps[i], snaps[j]), alphas.reshape(-1, 1), p * len(alphas),
                 LINE_ENDPOINTS) for p, (i, j) in enumerate(pairs.tolist())]
    _compute_missing(evaluator, grid, segments, chunk, quiet, "barriers")

    def finish() -> dict[str, Any]:
        matrices = barrier_matrices(alphas, grid.data, [tuple(p) for p in pairs], n)
        grid.finish(derived=matrices)
        return {"kind": "barriers", "name": name, "snapshots": names, "bn_mode": evaluator.bn_mode,
                "alphas": alphas, **matrices, **_summary(grid, todo)}
    return distributed.on_rank0(finish)


def plane(evaluator: Evaluator, center: Snapshot, directions: torch.Tensor, xs: np.ndarray, ys: np.ndarray, *,
          store: Store | None = None, name: str = "plane", provenance: Mapping[str, Any] | None = None,
          direction_attrs: Mapping[str, Any] | None = None,
          projections: tuple[list[str], np.ndarray, np.ndarray] | None = None,
          buffer_directions: Mapping[str, torch.Tensor] | None = None, overwrite: bool = False,
          chunk: int | None = None, quiet: bool = True, vertices: np.ndarray | torch.Tensor | None = None
          ) -> dict[str, Any]:
    """The surface θ0 + x·d1 + y·d2 on the grid xs × ys (object `name`), with its directions
    (stored under the same name, once the surface is finished) and projected snapshots.
    `buffer_directions` moves the BN buffers with the weights (planes through snapshots);
    without them every point has the centre's buffers. `vertices` [3, 2]: the plane coordinates
    of the snapshots a plane runs through (centre first), whose statistics BN mode repair
    interpolates barycentrically; a plane without them is refused in that mode."""
    if directions.ndim != 2 or directions.shape[0] != 2:
        raise LandscapeError(f"a plane needs two directions, got shape {list(directions.shape)}")
    if evaluator.bn_mode == "repair" and vertices is None:
        raise LandscapeError("BN mode repair needs a plane through three snapshots (--through B C): its targets "
                             "interpolate the snapshots' statistics, and a random, PCA or Hessian plane has none")
    if vertices is not None:
        vertices = np.asarray(vertices, dtype=np.float64)
    chunk = None if chunk is None else positive_int(chunk, "--chunk")
    # every rank moves along rank 0's directions, even where its own arithmetic rounded differently
    directions, buffer_directions = distributed.same_as_rank0(
        (directions, buffer_directions), lambda d: tensor_fingerprint(d[0]) + "".join(
            f"{k}:{tensor_fingerprint(v)}" for k, v in sorted((d[1] or {}).items())))
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    prov, dir_attrs = dict(provenance or {}), dict(direction_attrs or {})
    dir_attrs["buffers"] = "interpolated" if buffer_directions else "centre"
    config = {**prov, **evaluator.config, **dir_attrs, "center": center.fingerprint(),
              "directions": tensor_fingerprint(directions), "x": xs.tolist(), "y": ys.tolist()}
    grid = _open_grid(store, "surfaces", name, (len(xs), len(ys)), evaluator.metric_names,
                      {"xcoordinates": xs, "ycoordinates": ys}, config,
                      {**prov, **dir_attrs, "bn_mode": evaluator.bn_mode, "center": center.name, "directions": name},
                      overwrite, 2, evaluator)
    todo = len(grid.missing())
    segment = (lambda: plane_family(center, directions, dict(buffer_directions or {})), plane_coefficients(xs, ys), 0,
               vertices)
    _compute_missing(evaluator, grid, [segment], chunk, quiet, "plane")

    def finish() -> dict[str, Any]:
        names, coords, dists = projections or ([], np.zeros((0, 2)), np.zeros(0))
        attrs = {**dir_attrs, "center": center.name, "surface": name}
        if store is not None and not grid.finished and not _same_directions(store, name, directions, attrs):
            # Directions first: if the surface's own write then fails, rerunning the command rewrites both
            # (unless they are already there, identical: a finished object is never rewritten).
            store.write_directions(name, directions, attrs, overwrite=True)
        grid.finish(derived={"projection_names": np.array(names, dtype="S"), "projection_coords": coords,
                             "projection_distances": dists})
        return {"kind": "surface", "name": name, "center": center.name, "bn_mode": evaluator.bn_mode, **dir_attrs,
                "xcoordinates": xs, "ycoordinates": ys, **_metrics(grid),
                "projections": [{"name": nm, "x": float(c[0]), "y": float(c[1]), "distance": float(d)}
                                for nm, c, d in zip(names, coords, dists)], **_summary(grid, todo)}
    return distributed.on_rank0(finish)


def _same_directions(store: Store, name: str, directions: torch.Tensor, attrs: Mapping[str, Any]) -> bool:
    """Whether the store holds these very directions under `name` (a run killed between writing
    them and finishing its surface)."""
    if not store.has("directions", name):
        return False
    stored, stored_attrs = store.read_directions(name)
    return bool(np.array_equal(stored.numpy(), directions.detach().cpu().numpy())) and all(
        to_jsonable(stored_attrs.get(k)) == to_jsonable(v) for k, v in attrs.items())
