"""The Python functions behind every `landscape` subcommand.

Each returns a JSON-able dict (what `--json` prints) and, given `out`, stores its result in an
HDF5 store under `name`, resumable: rerun with the same arguments, only missing points are computed.
`chunk` is the number of points saved at a time (default: the engine's choice).
"""
from __future__ import annotations

import hashlib
import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .checkpoints import Snapshot, check_same_architecture, load_snapshot
from .data import TensorData, load_data
from .directions import pca_directions, plane_through, project, random_direction
from .engine import Evaluator, LossFn, resolve_device
from .errors import LandscapeError
from .grid import MemoryGrid, line_alphas, parse_range
from .lines import compute_barrier_matrix, compute_line, curve_barriers
from .models import build_model
from .planes import compute_plane, project_snapshots
from .store import Store, read_attrs

@dataclass
class Setup:
    """Model template, data and evaluator shared by the analysis commands."""

    model: nn.Module
    model_spec: str
    train: TensorData | None
    test: TensorData | None
    evaluator: Evaluator

    def provenance(self) -> dict[str, Any]:
        return {"model_spec": self.model_spec,
                "data_spec": self.train.spec if self.train is not None else None,
                "test_data_spec": self.test.spec if self.test is not None else None,
                "bn_mode": self.evaluator.bn_mode, "dtype": str(next(self.model.parameters()).dtype)}


def setup(model: str | nn.Module, data: str | TensorData | None, test_data: str | TensorData | None = None, *,
          num_classes: int | None = None, bn: str = "keep", device: str = "auto", batch_size: int = 250,
          bn_samples: int = 2000, loss_fn: LossFn | None = None) -> Setup:
    train = load_data(data, "train") if isinstance(data, str) else data
    test = load_data(test_data, "test") if isinstance(test_data, str) else test_data
    if train is None and test is None:
        raise LandscapeError("give --data (training data), --test-data, or both")
    ref = train if train is not None else test
    if isinstance(model, nn.Module):
        module, spec = model, type(model).__name__
    else:
        module, spec = build_model(model, num_classes or ref.num_classes, ref.input_shape), model
    ev = Evaluator(module, train, test, bn_mode=bn, loss_fn=loss_fn, device=resolve_device(device),
                   batch_size=batch_size, bn_samples=bn_samples)
    return Setup(module, spec, train, test, ev)


def snapshot_fingerprint(s: Snapshot) -> str:
    h = hashlib.sha1(s.params.detach().cpu().numpy().tobytes())
    for k in sorted(s.buffers):
        h.update(s.buffers[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _snapshots(refs: Sequence[str | Snapshot], model: nn.Module) -> list[Snapshot]:
    snaps = [r if isinstance(r, Snapshot) else load_snapshot(r, model) for r in refs]
    check_same_architecture(snaps)
    return snaps


def _open_store(out: str | None):
    if out is None:
        return nullcontext(None)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise LandscapeError(f"output folder {parent!r} does not exist")
    return Store(out, mode="a")


def _grid(store: Store | None, kind: str, name: str, shape, metrics, arrays, config, attrs, overwrite):
    if store is None:
        return MemoryGrid(shape, metrics, arrays)
    return store.open_grid(kind, name, shape, metrics, arrays, config, attrs, overwrite)


def _jsonable(x: Any) -> Any:
    """Arrays and numpy scalars as plain lists and numbers; NaN/inf (points not computed) as None."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def interpolate(a: str | Snapshot, b: str | Snapshot, *, model: str | nn.Module, data=None, test_data=None,
                alphas: np.ndarray | None = None, num: int = 21, bn: str = "keep", out: str | None = None,
                name: str = "interpolate", overwrite: bool = False, device: str = "auto",
                num_classes: int | None = None, batch_size: int = 250, bn_samples: int = 2000,
                quiet: bool = True, loss_fn: LossFn | None = None, chunk: int | None = None) -> dict[str, Any]:
    """Metrics along θ(α) = (1−α)·θa + α·θb, and the loss and error barriers."""
    s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
              bn_samples=bn_samples, loss_fn=loss_fn)
    sa, sb = _snapshots([a, b], s.model)
    alphas = line_alphas(num) if alphas is None else np.asarray(alphas, dtype=np.float64)
    metrics = s.evaluator.metric_names
    config = {**s.provenance(), **s.evaluator.config, "a": snapshot_fingerprint(sa), "b": snapshot_fingerprint(sb),
              "alphas": alphas.tolist()}
    with _open_store(out) as store:
        grid = _grid(store, "curves", name, (len(alphas),), metrics, {"alphas": alphas}, config,
                     {**s.provenance(), "a": sa.name, "b": sb.name}, overwrite)
        curve = compute_line(s.evaluator, sa, sb, alphas, grid, chunk, quiet=quiet)
        barriers = curve_barriers(alphas, curve)
        grid.set_attrs({"barriers": barriers})
    return _jsonable({"kind": "curve", "name": name, "a": sa.name, "b": sb.name, "bn_mode": bn, "alphas": alphas,
                   **{m: curve[m] for m in metrics}, "barriers": barriers, "store": out})


def barriers(snapshots: Sequence[str | Snapshot], *, model: str | nn.Module, data=None, test_data=None,
             num: int = 11, bn: str = "keep", out: str | None = None, name: str = "barriers",
             overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
             batch_size: int = 250, bn_samples: int = 2000, quiet: bool = True,
             loss_fn: LossFn | None = None, chunk: int | None = None) -> dict[str, Any]:
    """Loss and error barriers between every pair of snapshots, as matrices."""
    if len(snapshots) < 2:
        raise LandscapeError("barriers needs at least two snapshots")
    s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
              bn_samples=bn_samples, loss_fn=loss_fn)
    snaps = _snapshots(snapshots, s.model)
    alphas = line_alphas(num)
    n = len(snaps)
    pairs = np.array([(i, j) for i in range(n) for j in range(i + 1, n)], dtype=np.int64)
    metrics = s.evaluator.metric_names
    names = [sn.name for sn in snaps]
    config = {**s.provenance(), **s.evaluator.config, "snapshots": [snapshot_fingerprint(x) for x in snaps],
              "alphas": alphas.tolist()}
    with _open_store(out) as store:
        grid = _grid(store, "barriers", name, (len(pairs), len(alphas)), metrics,
                     {"alphas": alphas, "pairs": pairs, "names": np.array(names, dtype="S")}, config,
                     s.provenance(), overwrite)
        result = compute_barrier_matrix(s.evaluator, snaps, alphas, grid, chunk, quiet=quiet)
    matrices = {k: v for k, v in result.items() if k.endswith("_barrier")}
    return _jsonable({"kind": "barriers", "name": name, "snapshots": names, "bn_mode": bn, **matrices, "store": out})


def plane(center: str | Snapshot, *, model: str | nn.Module, data=None, test_data=None,
          through: Sequence[str | Snapshot] | None = None, random: str | None = None,
          pca: Sequence[str | Snapshot] | None = None, seed: int = 0,
          ignore_bias_bn: bool = True, x: str | np.ndarray | None = None, y: str | np.ndarray | None = None,
          project_onto: Sequence[str | Snapshot] = (), bn: str = "keep", out: str | None = None,
          name: str = "plane", overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
          batch_size: int = 250, bn_samples: int = 2000, quiet: bool = True,
          loss_fn: LossFn | None = None, chunk: int | None = None) -> dict[str, Any]:
    """A 2D loss plane around `center`: through two more snapshots, on two random directions,
    or on the top two PCA directions of a trajectory of snapshots."""
    if sum(v is not None for v in (through, random, pca)) != 1:
        raise LandscapeError("give one of --through B C, --random filter|layer|none or --pca S1 S2 ...")
    if pca is not None and len(pca) < 3:
        raise LandscapeError("--pca needs at least three snapshots")
    if through is not None and len(through) != 2:
        raise LandscapeError("--through needs exactly two snapshots")
    s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
              bn_samples=bn_samples, loss_fn=loss_fn)
    snaps = _snapshots([center, *(through or []), *(pca or []), *project_onto], s.model)
    c = snaps[0]
    if through is not None:
        pl = plane_through(c.params, snaps[1].params, snaps[2].params)
        directions = pl.directions
        dir_attrs = {"kind": "plane", "points": [sn.name for sn in snaps[:3]]}
        xs, ys = _default_range(x, pl.coords[:, 0].numpy()), _default_range(y, pl.coords[:, 1].numpy())
    elif pca is not None:
        res = pca_directions([sn.params for sn in snaps[1:1 + len(pca)]], k=2, center="last")
        directions = res.directions
        dir_attrs = {"kind": "pca", "points": [sn.name for sn in snaps[1:1 + len(pca)]],
                     "explained_variance_ratio": res.explained_variance_ratio.tolist()}
        traj = np.array([project(sn.params, c.params, directions)[0].numpy() for sn in snaps[: 1 + len(pca)]])
        xs, ys = _default_range(x, traj[:, 0]), _default_range(y, traj[:, 1])
    else:
        layout = s.evaluator.layout
        directions = torch.stack([random_direction(layout, c.params, random, seed, ignore_bias_bn),
                                  random_direction(layout, c.params, random, seed + 1, ignore_bias_bn)])
        dir_attrs = {"kind": "random", "normalization": random, "seeds": [seed, seed + 1],
                     "ignore_bias_bn": ignore_bias_bn}
        xs = parse_range(x or "-1:1:11", "--x grid") if not isinstance(x, np.ndarray) else x
        ys = parse_range(y or "-1:1:11", "--y grid") if not isinstance(y, np.ndarray) else y
    names, coords, dists = project_snapshots(snaps, c.params, directions)
    metrics = s.evaluator.metric_names
    config = {**s.provenance(), **s.evaluator.config, **dir_attrs, "x": xs.tolist(), "y": ys.tolist(),
              "snapshots": [snapshot_fingerprint(sn) for sn in snaps[: 1 + len(through or pca or [])]]}
    with _open_store(out) as store:
        if store is not None:
            store.write_directions(name, directions, {**dir_attrs, "center": c.name}, overwrite=True)
        grid = _grid(store, "surfaces", name, (len(xs), len(ys)), metrics,
                     {"xcoordinates": xs, "ycoordinates": ys}, config,
                     {**s.provenance(), **dir_attrs, "center": c.name, "directions": name}, overwrite)
        surface = compute_plane(s.evaluator, c, directions, xs, ys, grid, chunk, quiet=quiet)
        grid.put("projection_names", np.array(names, dtype="S"))
        grid.put("projection_coords", coords)
        grid.put("projection_distances", dists)
    return _jsonable({"kind": "surface", "name": name, "center": c.name, "bn_mode": bn, **dir_attrs,
                   "xcoordinates": xs, "ycoordinates": ys, **{m: surface[m] for m in metrics},
                   "projections": [{"name": nm, "x": cc[0], "y": cc[1], "distance": d}
                                   for nm, cc, d in zip(names, coords, dists)], "store": out})


def _default_range(spec: str | np.ndarray | None, coords: np.ndarray, num: int = 11) -> np.ndarray:
    """A grid covering the projected points with a 25% margin, unless the user gave one."""
    if isinstance(spec, np.ndarray):
        return spec
    if spec:
        return parse_range(spec, "grid")
    lo, hi = float(coords.min()), float(coords.max())
    margin = 0.25 * max(hi - lo, 1e-3)
    return np.linspace(lo - margin, hi + margin, num)


def info(path: str) -> dict[str, Any]:
    """What a store holds: per kind and name, dataset shapes and key attributes."""
    with Store(path, mode="r") as store:
        return _jsonable(store.describe())


def plot(path: str, name: str, *, out: str | None = None, metric: str | None = None, style: str = "contour",
         log: bool = False) -> dict[str, Any]:
    """Draw a stored curve, surface, barrier matrix or ensemble to PNG/PDF."""
    from . import plots

    with Store(path, mode="r") as store:
        kind = next((k for k in ("surfaces", "curves", "barriers", "ensembles") if store.has(k, name)), None)
        if kind is None:
            raise LandscapeError(f"store {path!r} has no curve, surface, barrier matrix or ensemble named {name!r}")
        g = store.get(kind, name)
        data = {k: g[k][()] for k in g.keys() if hasattr(g[k], "shape") and k != "predictions"}
        attrs = read_attrs(g)
    out = out or os.path.join(os.path.dirname(os.path.abspath(path)), f"{name}.png")
    title = f"{name} (BN {attrs.get('bn_mode', '?')})"
    if kind == "curves":
        plots.plot_curve(data["alphas"], data, out, title, log=log)
    elif kind == "surfaces":
        metric = metric or next(m for m in ("test_loss", "train_loss") if m in data)
        if metric not in data:
            raise LandscapeError(f"surface {name!r} has no metric {metric!r}")
        markers = []
        if "projection_names" in data:
            markers = [(n.decode() if isinstance(n, bytes) else str(n), float(c[0]), float(c[1]))
                       for n, c in zip(data["projection_names"], data["projection_coords"])]
        plots.plot_plane(data["xcoordinates"], data["ycoordinates"], data[metric], out, style, log, title,
                         [(os.path.basename(m[0]), m[1], m[2]) for m in markers], metric)
    elif kind == "barriers":
        metric = metric or next(m for m in ("test_loss_barrier", "train_loss_barrier") if m in data)
        names = [os.path.basename(n.decode() if isinstance(n, bytes) else str(n)) for n in data["names"]]
        plots.plot_matrix(names, data[metric], out, title, metric)
    else:
        metric = metric or "nll"
        if metric not in data:
            raise LandscapeError(f"ensemble {name!r} has no metric {metric!r}")
        plots.plot_by_size({name: data[metric]}, out, metric, title)
    return {"kind": kind[:-1], "name": name, "figure": out}


def _stored_predictions(ref: str) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
    """`FILE.h5:NAME` naming an ensemble with kept predictions: (member names, logits, labels)."""
    from .checkpoints import is_store_ref

    if not is_store_ref(ref):
        return None
    path, _, name = ref.rpartition(":")
    with Store(path, mode="r") as store:
        if not store.has("ensembles", name) or "predictions" not in store.get("ensembles", name):
            return None
        g = store.get("ensembles", name)
        members = [m.decode() if isinstance(m, bytes) else str(m) for m in g["members"][()]]
        return members, torch.from_numpy(g["predictions"][()]).float(), torch.from_numpy(g["labels"][()])


def ensemble(members: Sequence[str | Snapshot], *, model: str | nn.Module | None = None, data=None,
             val_data=None, out: str | None = None, name: str = "ensemble", overwrite: bool = False,
             keep_predictions: bool = False, fp16: bool = False, orders: int = 0, seed: int = 0,
             device: str = "auto", num_classes: int | None = None, batch_size: int = 500,
             quiet: bool = True) -> dict[str, Any]:
    """Metrics of the ensembles of the first m members, m = 1..K, on `data` (the evaluation set).

    Members are `.pt` checkpoints, `FILE.h5:SNAPSHOT`, or `FILE.h5:ENSEMBLE` holding kept predictions.
    `val_data` enables temperature-scaled (calibrated) NLL; `orders` > 0 also averages over random orders.
    """
    from tqdm.auto import tqdm

    from .ensembles import MemberForward, evaluate_ensemble, fit_temperatures, table_rows

    if not members:
        raise LandscapeError("ensemble needs at least one member")
    dev = resolve_device(device)
    stored = [_stored_predictions(m) if isinstance(m, str) else None for m in members]
    names: list[str] = []
    if all(s is not None for s in stored):
        if val_data is not None:
            raise LandscapeError("--val-data needs members given as checkpoints or snapshots, not predictions")
        logits = torch.cat([s[1] for s in stored])
        labels = stored[0][2]
        for s in stored:
            if s[2].shape != labels.shape or not torch.equal(s[2], labels):
                raise LandscapeError("stored predictions of different data cannot form one ensemble")
            names += s[0]
        batches = iter([(logits[:, i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev))
                        for i in range(0, labels.shape[0], batch_size)])
        n_samples, spec, test = int(labels.shape[0]), "stored predictions", None
        temps = None
    else:
        if any(s is not None for s in stored):
            raise LandscapeError("mix of stored predictions and checkpoints: give one kind of member")
        if model is None or data is None:
            raise LandscapeError("ensemble of checkpoints needs --model and --data (the evaluation data)")
        test = load_data(data, "test") if isinstance(data, str) else data
        val = load_data(val_data, "test") if isinstance(val_data, str) else val_data
        module = model if isinstance(model, nn.Module) else build_model(model, num_classes or test.num_classes,
                                                                        test.input_shape)
        snaps = []
        for m in members:
            try:
                snaps.append(m if isinstance(m, Snapshot) else load_snapshot(m, module))
            except LandscapeError as exc:
                raise LandscapeError(f"member {m!r}: {exc}") from None
        names = [s.name for s in snaps]
        fwd = MemberForward(module, snaps, dev)
        temps = None
        if val is not None:
            val_logits, val_labels = zip(*fwd.batches(val.x, val.y, batch_size))
            temps = fit_temperatures(torch.cat(val_logits, 1).cpu(), torch.cat(val_labels).cpu())
        bar = tqdm(total=len(test), desc="ensemble", unit="img", disable=quiet, leave=False)

        def stream():
            for lg, yb in fwd.batches(test.x, test.y, batch_size):
                bar.update(yb.shape[0])
                yield lg, yb

        batches, n_samples, spec = stream(), len(test), test.spec
    with _open_store(out) as store:
        kept = None
        if store is not None:
            if store.has("ensembles", name) and not overwrite:
                raise LandscapeError(f"store {out!r} already has ensemble {name!r}; use --overwrite or another --name")
            if keep_predictions:
                kept = _PredictionWriter(store, name, len(names), n_samples, fp16)
        res = evaluate_ensemble(batches, names, temps, orders, seed, keep=kept.write if kept else None)
        if store is not None:
            arrays = {k: v for k, v in res.items()}
            attrs = {"members": names, "data_spec": spec, "orders": orders, "seed": seed,
                     "model_spec": model if isinstance(model, str) else None}
            if kept is not None:
                kept.finish(arrays, attrs, test.y if test is not None else None)
            else:
                store.delete("ensembles", name)
                store._write_atomically("ensembles", name, lambda g: _fill_ensemble(g, arrays, names, attrs))
    return _jsonable({"kind": "ensemble", "name": name, "members": names, "rows": table_rows(res),
                   "member_accuracies": res["member_accuracies"], "member_nlls": res["member_nlls"],
                   **({"orders_mean": {k[:-len("_orders_mean")]: v for k, v in res.items()
                                       if k.endswith("_orders_mean")}} if orders else {}),
                   "store": out})


def _fill_ensemble(g, arrays: dict, names: list[str], attrs: dict) -> None:
    from .store import provenance, write_attrs

    for k, v in arrays.items():
        if k in g:
            del g[k]
        g.create_dataset(k, data=np.asarray(v))
    if "members" not in g:
        g.create_dataset("members", data=np.array(names, dtype="S"))
    write_attrs(g, provenance(**attrs))


class _PredictionWriter:
    """Member logits written batch by batch into a chunked dataset under a temporary name."""

    def __init__(self, store: Store, name: str, m: int, n: int, fp16: bool) -> None:
        self.store, self.name = store, name
        grp = store.group("ensembles")
        self.tmp = f".tmp-{name}"
        if self.tmp in grp:
            del grp[self.tmp]
        self.group = grp.create_group(self.tmp)
        self.m, self.n, self.fp16 = m, n, fp16
        self.ds = None

    def write(self, start: int, logits: torch.Tensor) -> None:
        if self.ds is None:
            c = logits.shape[-1]
            self.ds = self.group.create_dataset("predictions", shape=(self.m, self.n, c),
                                                dtype="f2" if self.fp16 else "f4",
                                                chunks=(1, min(self.n, 1024), c))
        self.ds[:, start:start + logits.shape[1]] = logits.detach().cpu().numpy()

    def finish(self, arrays: dict, attrs: dict, labels: torch.Tensor | None) -> None:
        _fill_ensemble(self.group, arrays, attrs["members"], attrs)
        if labels is not None:
            self.group.create_dataset("labels", data=labels.numpy())
        self.store.delete("ensembles", self.name)
        self.store.group("ensembles").move(self.tmp, self.name)
        self.store.flush()
