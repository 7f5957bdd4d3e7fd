"""The Python functions behind every `landscape` subcommand.

They take what PyTorch code holds: endpoints and members as checkpoint paths, `STORE:NAME`,
Snapshots, `nn.Module`s or state dicts (`model=` may then be left out: the first module is the
template, copied, never changed), and data as spec strings, (x, y) tensors, Datasets or
DataLoaders (`landscape.core.data.as_data`). Each returns a typed result (`landscape.results`:
numpy arrays and the settings recorded; its `to_dict()` is what `--json` prints) and, given `out`
(a store folder), stores its result there under `name`, resumable:
rerun with the same arguments and only missing points are computed; rerun when everything is
finished and nothing is written. The computing and the
storing are the analysis layer's (`landscape.analyses`); this module turns arguments into its
inputs. Every argument is checked before the first forward pass.
`chunk` is the number of points saved at a time (default: the engine's choice).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from landscape.analyses import align as align_analysis
from landscape.analyses import connect as connect_analysis
from landscape.analyses import ensemble as ensemble_analysis
from landscape.analyses import grids as analyses
from landscape.analyses import hessian as hessian_analysis
from landscape.core import distributed
from landscape.core.checkpoints import KeyFilter, Snapshot, check_same_architecture
from landscape.core.data import StreamData, TensorData, as_data
from landscape.core.errors import LandscapeError
from landscape.core.jsonable import to_jsonable
from landscape.core.losses import LossFn, resolve_loss
from landscape.core.models import BUILTIN_MODELS, build_model
from landscape.core.validate import check_seed, check_writable_dir, positive_int
from landscape.evaluate.engine import Evaluator, resolve_device
from landscape.evaluate.ensembles import MemberForward, fit_temperatures, member_orders
from landscape.evaluate.hessian import check_spectrum_args
from landscape.geometry.curves import check_training_args
from landscape.geometry.directions import (
    NORMALIZATIONS,
    pca_directions,
    plane_through,
    project,
    random_direction,
    relative_frame,
)
from landscape.geometry.planes import project_snapshots, through_buffer_directions
from landscape.geometry.ranges import alpha_range, line_alphas, parse_range
from landscape.results import (
    AlignResult,
    BarrierMatrixResult,
    ConnectResult,
    EnsembleResult,
    HessianLineResult,
    HessianResult,
    HessiansResult,
    InfoResult,
    LineResult,
    PlaneResult,
    PlotResult,
)
from landscape.store.refs import SnapshotRef, head_classes, load_snapshot, stored_predictions
from landscape.store.store import Store

ALIGN_SAMPLES = 2000  # inputs activation matching correlates units on


@dataclass
class Setup:
    """Model template, data and evaluator shared by the analysis commands."""

    model: nn.Module
    model_spec: str
    train: TensorData | None
    test: TensorData | None
    evaluator: Evaluator
    keys: KeyFilter

    def snapshots(self, refs: Sequence[SnapshotRef]) -> list[Snapshot]:
        """Checkpoints, `STORE:NAME` snapshots, modules, state dicts or Snapshots as Snapshots of
        the model's architecture (a module or state dict is named by its position: `module0`, ...)."""
        snaps = [load_snapshot(r, self.model, self.keys, name=_positional_name(r, i)) for i, r in enumerate(refs)]
        check_same_architecture(snaps)
        return snaps

    def example_input(self) -> torch.Tensor:
        """One input sample, batched: what the permutation structure is traced with."""
        d = self.train if self.train is not None else self.test
        return (d.x[:1] if isinstance(d, TensorData) else d.head(1).x).to(self.evaluator.device)

    def align_batches(self, samples: int = ALIGN_SAMPLES) -> Iterator[torch.Tensor]:
        """The inputs activation matching correlates units on: the first `samples` of the data."""
        d = self.train if self.train is not None else self.test
        if isinstance(d, TensorData):
            for i in range(0, min(samples, len(d)), self.evaluator.batch_size):
                yield d.x[i:min(i + self.evaluator.batch_size, samples)].to(self.evaluator.device)
            return
        for x, _ in d.batches(self.evaluator.batch_size, self.evaluator.device, limit=samples):
            yield x

    def aligned(self, snaps: list[Snapshot], method: str | None) -> list[Snapshot]:
        """`snaps` with every one after the first aligned to the first (`--align METHOD`)."""
        if method is None:
            return snaps
        return align_analysis.align_all(self.evaluator.model, snaps, example=self.example_input(), method=method,
                                        batches=self.align_batches)

    def provenance(self) -> dict[str, Any]:
        return {"model_spec": self.model_spec,
                "data_spec": self.train.spec if self.train is not None else None,
                "test_data_spec": self.test.spec if self.test is not None else None,
                "bn_mode": self.evaluator.bn_mode, "dtype": str(next(self.model.parameters()).dtype)}


# What a through-plane's axes measure, stored with the surface and written on its figures.
# (relative: B at (1, 0), C at (x, 1), so the units of x and y differ)
COORD_UNITS = {"relative": "relative", "distance": "weight-space distance"}



def _positional_name(ref: Any, i: int) -> str | None:
    """The name of a module or state dict given as the i-th snapshot (they carry none)."""
    if isinstance(ref, nn.Module):
        return f"module{i}"
    return f"state_dict{i}" if isinstance(ref, Mapping) else None


def template_model(model: str | nn.Module | None, snapshots: Sequence[SnapshotRef]) -> str | nn.Module:
    """The model an analysis evaluates: `model`, else (PyTorch style) the first snapshot given as
    an nn.Module; a copy, so the caller's module is never changed."""
    if model is None:
        model = next((r for r in snapshots if isinstance(r, nn.Module)), None)
        if model is None:
            raise LandscapeError("give model= (a model spec or an nn.Module): no snapshot is an nn.Module")
    if isinstance(model, nn.Module):
        return copy.deepcopy(model)
    if not isinstance(model, str):
        raise LandscapeError(f"model of type {type(model).__name__}: give a model spec string or an nn.Module")
    return model


def setup(model: str | nn.Module | None, data: Any, test_data: Any = None, *,
          num_classes: int | None = None, bn: str = "auto", device: str = "auto", batch_size: int | None = None,
          bn_samples: int = 2000, loss_fn: LossFn | str | None = None,
          snapshots: Sequence[SnapshotRef] = (), precision: str = "exact",
          ignore_keys: Sequence[str] = ()) -> Setup:
    """Data, model and evaluator. A model built from a spec gets its number of classes from
    `num_classes`, else from the first snapshot's head, else from its own factory's default:
    never from the labels (a test set may lack a class); labels outside the model's classes
    are refused, naming the first such sample. `ignore_keys`: checkpoint key prefixes to skip
    (`Setup.keys.skipped` lists what was skipped). `model` may be None when a snapshot is an
    nn.Module; data may be a spec, tensors, a Dataset or a DataLoader (`core.data.as_data`), and
    `batch_size` defaults to a DataLoader's own, else 250."""
    keys = KeyFilter(tuple(ignore_keys))
    loss_fn, accuracy, targets = resolve_loss(loss_fn)
    train = as_data(data, "train", targets)
    test = as_data(test_data, "test", targets)
    if train is None and test is None:
        raise LandscapeError("give --data (training data), --test-data, or both")
    batch_size = _batch_size(batch_size, train, test)
    ref = train if train is not None else test
    model = template_model(model, snapshots)
    if isinstance(model, nn.Module):
        module, spec = model, type(model).__name__
    else:
        if num_classes is not None:
            num_classes = positive_int(num_classes, "--num-classes")
        else:
            num_classes, unreadable = _head_classes(snapshots, keys)
        if num_classes is None and model.partition(":")[0] in BUILTIN_MODELS:
            raise unreadable or LandscapeError(f"cannot tell how many classes the {model!r} model has: give "
                                               "--num-classes")
        module, spec = build_model(model, num_classes, ref.input_shape), model
    ev = Evaluator(module, train, test, bn_mode=bn, loss_fn=loss_fn, device=resolve_device(device),
                   batch_size=batch_size, bn_samples=bn_samples, accuracy=accuracy, precision=precision)
    return Setup(module, spec, train, test, ev, keys)


def _check_align(align: str | None) -> None:
    if align is not None and align not in align_analysis.METHODS:
        raise LandscapeError(f"unknown --align {align!r}: choose {' or '.join(align_analysis.METHODS)}")


def _with_align(provenance: dict[str, Any], align: str | None) -> dict[str, Any]:
    """The config of an aligned analysis says so (only then: results stored before still resume)."""
    return provenance if align is None else {**provenance, "align": align}


def _head_classes(refs: Sequence[SnapshotRef], keys: KeyFilter) -> tuple[int | None, LandscapeError | None]:
    """The class count of the first snapshot whose head tells it, and the first snapshot's error if
    one could not be read: raised only when the count is needed (a built-in model), so that a bad
    model spec is reported first and loading the snapshot reports the rest."""
    error = None
    for r in refs:
        try:
            n = head_classes(r, keys)
        except LandscapeError as exc:
            error = error or exc
            continue
        if n is not None:
            return n, error
    return None, error


def _batch_size(batch_size: int | None, *data: Any, default: int = 250) -> int:
    if batch_size is not None:
        return batch_size
    return next((d.loader_batch_size for d in data if getattr(d, "loader_batch_size", None)), default)


def _inputs(out: str | None, keys: KeyFilter) -> dict[str, Any]:
    """What every result says about its inputs: the store `out`, the `ignored_keys` ({checkpoint:
    [keys skipped]}) and the `stripped_prefixes` ({checkpoint: the Lightning, torch.compile or DDP
    prefix stripped from its keys})."""
    return {"store": out, "ignored_keys": dict(keys.skipped), "stripped_prefixes": dict(keys.stripped)}


def open_store(out: str | None) -> Store | nullcontext:
    """The store `out` for writing (nothing is created until the first write), after checking
    that a new one can be created; a null context without `out`. An existing store is not probed:
    a rerun with nothing to compute must not write, and a writer learns it cannot write when it
    takes the lock, before any point is evaluated."""
    if out is None or not distributed.world().writer:  # one writer: rank 0 alone opens the store
        return nullcontext(None)
    store = Store(out, mode="a")
    if not store.exists:
        check_writable_dir(os.path.dirname(store.path), "output folder")
    return _abortable(store) if distributed.active() else store


@contextmanager
def _abortable(store: Store) -> Iterator[Store]:
    """The store of rank 0 under torchrun: its lock is released even when a lost rank forces an abrupt exit."""
    with store, distributed.on_abort(store.close):
        yield store


def _alphas(alphas: np.ndarray | None, num: int, spec: str | None) -> np.ndarray:
    if alphas is not None:
        alphas = np.asarray(alphas, dtype=np.float64)
        if alphas.ndim != 1 or not np.isfinite(alphas).all() or not {0.0, 1.0} <= set(alphas.tolist()):
            raise LandscapeError("alphas must be a 1-D array of finite values holding 0 and 1")
        return alphas
    return alpha_range(spec) if spec else line_alphas(positive_int(num, "--num"))


@distributed.collective
def interpolate(a: SnapshotRef, b: SnapshotRef, *, model: str | nn.Module | None = None, data=None, test_data=None,
                alphas: np.ndarray | None = None, num: int = 21, alpha_range: str | None = None,
                bn: str = "auto", out: str | None = None,
                name: str = "interpolate", overwrite: bool = False, device: str = "auto",
                num_classes: int | None = None, batch_size: int | None = None, bn_samples: int = 2000,
                quiet: bool = True, loss_fn: LossFn | str | None = None, chunk: int | None = None,
                precision: str = "exact", ignore_keys: Sequence[str] = (),
                align: str | None = None) -> LineResult:
    """Metrics along θ(α) = (1−α)·θa + α·θb, and the loss and error barriers. `align`
    ("weight" or "activation"): B's hidden units permuted to match A's first (Git Re-Basin)."""
    _check_align(align)
    alphas = _alphas(alphas, num, alpha_range)
    with open_store(out) as store:
        s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                  bn_samples=bn_samples, loss_fn=loss_fn, precision=precision,
                  ignore_keys=ignore_keys, snapshots=[a, b])
        sa, sb = s.aligned(s.snapshots([a, b]), align)
        res = analyses.line(s.evaluator, sa, sb, alphas, store=store, name=name,
                            provenance=_with_align(s.provenance(), align), overwrite=overwrite, chunk=chunk,
                            quiet=quiet)
    return LineResult.from_analysis(res, align=align, **_inputs(out, s.keys))


@distributed.collective
def barriers(snapshots: Sequence[SnapshotRef], *, model: str | nn.Module | None = None, data=None, test_data=None,
             num: int = 11, alpha_range: str | None = None, bn: str = "auto", out: str | None = None,
             name: str = "barriers",
             overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
             batch_size: int | None = None, bn_samples: int = 2000, quiet: bool = True,
             loss_fn: LossFn | str | None = None, chunk: int | None = None,
             precision: str = "exact", ignore_keys: Sequence[str] = (),
             align: str | None = None) -> BarrierMatrixResult:
    """Loss and error barriers between every pair of snapshots, as matrices. `align`: every
    snapshot's hidden units permuted to match the first's before (weight or activation matching)."""
    _check_align(align)
    if len(snapshots) < 2:
        raise LandscapeError("barriers needs at least two snapshots")
    alphas = _alphas(None, num, alpha_range)
    with open_store(out) as store:
        s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                  bn_samples=bn_samples, loss_fn=loss_fn, precision=precision,
                  ignore_keys=ignore_keys, snapshots=snapshots)
        snaps = s.aligned(s.snapshots(snapshots), align)
        res = analyses.barrier_matrix(s.evaluator, snaps, alphas, store=store, name=name,
                                      provenance=_with_align(s.provenance(), align), overwrite=overwrite,
                                      chunk=chunk, quiet=quiet)
    return BarrierMatrixResult.from_analysis(res, align=align, **_inputs(out, s.keys))


@distributed.collective
def plane(center: SnapshotRef, *, model: str | nn.Module | None = None, data=None, test_data=None,
          through: Sequence[SnapshotRef] | None = None, random: str | None = None,
          pca: Sequence[SnapshotRef] | None = None, seed: int = 0,
          ignore_bias_bn: bool = True, x: str | np.ndarray | None = None, y: str | np.ndarray | None = None,
          project_onto: Sequence[SnapshotRef] = (), coords: str = "relative", bn: str = "auto",
          out: str | None = None,
          name: str = "plane", overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
          batch_size: int | None = None, bn_samples: int = 2000, quiet: bool = True,
          loss_fn: LossFn | str | None = None, chunk: int | None = None,
          precision: str = "exact", hessian_directions: bool = False,
          normalization: str = "filter", ignore_keys: Sequence[str] = (),
          align: str | None = None) -> PlaneResult:
    """A 2D loss plane around `center`: through two more snapshots, on two random directions,
    or on the top two PCA directions of a trajectory of snapshots. `align` (with `through`): the
    other snapshots' hidden units permuted to match the centre's first.

    Through-planes: `coords="relative"` puts the second snapshot at (1, 0) and the third at
    (x3, 1); `"distance"` uses weight-space distances. With BN mode `keep` the buffers move with
    the weights, so each snapshot's own point is exactly that snapshot."""
    _check_align(align)
    seed = check_seed(seed, "--seed", offset=1)  # the plane's second direction uses seed + 1
    if sum(v is not None and v is not False for v in (through, random, pca, hessian_directions)) != 1:
        raise LandscapeError("give one of --through B C, --random filter|layer|none, --pca S1 S2 ... or "
                             "--hessian-directions")
    if pca is not None and len(pca) < 3:
        raise LandscapeError("--pca needs at least three snapshots")
    if through is not None and len(through) != 2:
        raise LandscapeError("--through needs exactly two snapshots")
    if coords not in COORD_UNITS:
        raise LandscapeError(f"unknown --coords {coords!r}: choose relative or distance")
    if random is not None and random not in NORMALIZATIONS:
        raise LandscapeError(f"unknown normalisation {random!r}: choose filter, layer or none")
    # user-given grids are checked before anything is loaded
    xs = _user_range(x, "--x grid")
    ys = _user_range(y, "--y grid")
    with open_store(out) as store:
        s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                  bn_samples=bn_samples, loss_fn=loss_fn, precision=precision,
                  ignore_keys=ignore_keys, snapshots=[center])
        snaps = s.snapshots([center, *(through or []), *(pca or []), *project_onto])
        for sn in snaps:  # its directions are scaled to, spanned by or projected from these weights
            sn.require_finite("a plane cannot be laid around, through or onto it (interpolate reports such "
                              "points as diverged)")
        if align is not None:
            if through is None:
                raise LandscapeError("--align works with --through B C (a plane through aligned snapshots)")
            snaps = s.aligned(snaps, align)
        c = snaps[0]
        buffer_directions = None
        if through is not None:
            pl = plane_through(c.params, snaps[1].params, snaps[2].params)
            directions, points = (relative_frame(pl) if coords == "relative" else (pl.directions, pl.coords))
            buffer_directions = through_buffer_directions(c, snaps[1], snaps[2], points)
            dir_attrs = {"kind": "plane", "points": [sn.name for sn in snaps[:3]], "coords": coords,
                         "unit": COORD_UNITS[coords]}
            xs = xs if xs is not None else _default_range(points[:, 0].numpy())
            ys = ys if ys is not None else _default_range(points[:, 1].numpy())
        elif pca is not None:
            res = pca_directions([sn.params for sn in snaps[1:1 + len(pca)]], k=2, center="last")
            directions = res.directions
            dir_attrs = {"kind": "pca", "points": [sn.name for sn in snaps[1:1 + len(pca)]],
                         "explained_variance_ratio": res.explained_variance_ratio.tolist(),
                         "unit": COORD_UNITS["distance"]}
            traj = np.array([project(sn.params, c.params, directions)[0].numpy() for sn in snaps[: 1 + len(pca)]])
            xs = xs if xs is not None else _default_range(traj[:, 0])
            ys = ys if ys is not None else _default_range(traj[:, 1])
        elif hessian_directions:  # the top two eigenvectors of the Hessian at the centre
            directions, dir_attrs = hessian_analysis.plane_directions(
                s.evaluator, c, store=store, name=name, normalization=normalization, ignore_bias_bn=ignore_bias_bn,
                seed=seed, overwrite=overwrite, quiet=quiet)
            dir_attrs = {**dir_attrs, "unit": f"{normalization}-normalised eigenvector"}
            xs = xs if xs is not None else parse_range("-1:1:11")
            ys = ys if ys is not None else parse_range("-1:1:11")
        else:
            layout = s.evaluator.layout
            directions = torch.stack([random_direction(layout, c.params, random, seed, ignore_bias_bn),
                                      random_direction(layout, c.params, random, seed + 1, ignore_bias_bn)])
            dir_attrs = {"kind": "random", "normalization": random, "seeds": [seed, seed + 1],
                         "ignore_bias_bn": ignore_bias_bn, "unit": f"{random}-normalised direction"}
            xs = xs if xs is not None else parse_range("-1:1:11")
            ys = ys if ys is not None else parse_range("-1:1:11")
        dir_attrs["snapshots"] = [sn.fingerprint() for sn in snaps[: 1 + len(through or pca or [])]]
        projections = project_snapshots(snaps, c.params, directions)
        res = analyses.plane(s.evaluator, c, directions, xs, ys, store=store, name=name,
                             provenance=_with_align(s.provenance(), align),
                             direction_attrs=dir_attrs, projections=projections,
                             buffer_directions=buffer_directions, overwrite=overwrite, chunk=chunk, quiet=quiet,
                             vertices=points if through is not None else None)  # BN mode repair's endpoints
    return PlaneResult.from_analysis(res, dir_attrs, directions=directions, align=align, **_inputs(out, s.keys))


def _user_range(spec: str | np.ndarray | None, what: str) -> np.ndarray | None:
    if spec is None or (isinstance(spec, str) and not spec):
        return None
    if isinstance(spec, np.ndarray):
        if spec.ndim != 1 or not len(spec) or not np.isfinite(spec).all():
            raise LandscapeError(f"{what} must be a non-empty 1-D array of finite values")
        return spec.astype(np.float64)
    return parse_range(spec, what)


def _default_range(coords: np.ndarray, num: int = 11) -> np.ndarray:
    """A grid covering the projected points with a 25% margin."""
    coords = np.asarray(coords, dtype=np.float64)
    if not np.isfinite(coords).all():
        raise LandscapeError("the snapshots' plane coordinates are not finite (do the snapshots hold NaN or inf?)")
    lo, hi = float(coords.min()), float(coords.max())
    margin = 0.25 * max(hi - lo, 1e-3)
    return np.linspace(lo - margin, hi + margin, num)


def info(path: str) -> InfoResult:
    """What a store holds: per kind and name, dataset shapes, key attributes and `values`, what
    each finished result found (barriers, eigenvalues, ensemble accuracy by size, a plane's
    lowest and highest loss, a PCA's explained variance)."""
    from . import view

    with Store(path, mode="r") as store:
        listing = to_jsonable(store.describe())
    for kind, named in view.store_key_values(path, listing).items():
        for name, values in named.items():
            if values:
                listing[kind][name]["values"] = values
    for name, entry in (listing.get("directions") or {}).items():
        ratio = entry["attrs"].get("explained_variance_ratio")
        if isinstance(ratio, list):  # PCA directions
            entry["values"] = {"explained_variance_ratio": ratio}
    return InfoResult.from_listing(listing)


def plot(path: str, name: str, *, out: str | None = None, kind: str | None = None, metric: str | None = None,
         style: str = "contour", log: bool = False) -> PlotResult:
    """Draw a stored result (a curve, surface, barrier matrix, ensemble, Hessian or connection) to
    PNG/PDF/SVG; `kind` picks one where several kinds hold `name`."""
    from . import plots  # matplotlib only when drawing: it adds to every command's start-up

    return PlotResult(**plots.plot_result(path, name, out=out, kind=kind, metric=metric, style=style, log=log))


@distributed.collective
def ensemble(members: Sequence[SnapshotRef], *, model: str | nn.Module | None = None, data=None,
             val_data=None, out: str | None = None, name: str = "ensemble", overwrite: bool = False,
             keep_predictions: bool = False, fp16: bool = False, orders: int = 0, seed: int = 0,
             device: str = "auto", num_classes: int | None = None, batch_size: int | None = None,
             quiet: bool = True, ignore_keys: Sequence[str] = ()) -> EnsembleResult:
    """Metrics of the ensembles of the first m members, m = 1..K, on `data` (the evaluation set).

    Members are `.pt` checkpoints, `STORE:SNAPSHOT`, or `STORE:ENSEMBLE` holding kept predictions.
    `val_data` enables temperature-scaled (calibrated) NLL; `orders` > 0 also averages over random orders.
    Rerunning with the same arguments returns the stored result without computing or writing.
    """
    from tqdm.auto import tqdm

    seed = check_seed(seed, "--seed")
    if not members:
        raise LandscapeError("ensemble needs at least one member")
    keys = KeyFilter(tuple(ignore_keys))
    test, val = as_data(data, "test"), as_data(val_data, "test")
    batch_size = positive_int(_batch_size(batch_size, test, default=500), "--batch-size")
    if isinstance(orders, bool) or not isinstance(orders, int) or orders < 0:
        raise LandscapeError(f"--orders must be a non-negative integer, got {orders!r}")
    dev = resolve_device(device)
    stored = [stored_predictions(m) if isinstance(m, str) else None for m in members]
    names: list[str] = []
    if all(s is not None for s in stored):
        if val_data is not None:
            raise LandscapeError("--val-data needs members given as checkpoints or snapshots, not predictions")
        logits = stored[0][1] if len(stored) == 1 else torch.cat([s[1] for s in stored])
        labels = stored[0][2]
        for s in stored:
            if s[2].shape != labels.shape or not torch.equal(s[2], labels):
                raise LandscapeError("stored predictions of different data cannot form one ensemble")
            names += s[0]
        fingerprints = [analyses.tensor_fingerprint(logits), analyses.tensor_fingerprint(labels)]
        n_samples, spec, labels_out = int(labels.shape[0]), "stored predictions", labels

        def start() -> tuple[Any, torch.Tensor | None]:
            if not distributed.world().writer:  # no forward passes to share: rank 0 holds every member's logits
                return iter(()), None
            return iter([(logits[:, i:i + batch_size].to(dev), labels[i:i + batch_size].to(dev))
                         for i in range(0, labels.shape[0], batch_size)]), None
    else:
        if any(s is not None for s in stored):
            raise LandscapeError("mix of stored predictions and checkpoints: give one kind of member")
        if test is None:
            raise LandscapeError("ensemble of checkpoints needs --data (the evaluation data)")
        model = template_model(model, members)
        if not isinstance(model, nn.Module) and num_classes is None:
            num_classes, unreadable = _head_classes(members, keys)
            if num_classes is None and model.partition(":")[0] in BUILTIN_MODELS:
                raise unreadable or LandscapeError(f"cannot tell how many classes the {model!r} model has: give "
                                                   "--num-classes")
        module = model if isinstance(model, nn.Module) else build_model(model, num_classes, test.input_shape)
        snaps = []
        for i, m in enumerate(members):
            try:
                snaps.append(load_snapshot(m, module, keys, name=_positional_name(m, i)))
            except LandscapeError as exc:
                raise LandscapeError(f"member {m if isinstance(m, str) else i!r}: {exc}") from None
        names = [s.name for s in snaps]
        fingerprints = [s.fingerprint() for s in snaps]
        n_samples, spec = len(test), test.spec
        seen_labels: list[torch.Tensor] = []
        labels_out = test.y if isinstance(test, TensorData) else None  # a stream's are gathered as read

        def member_batches(fwd: MemberForward, d: TensorData | StreamData):
            if isinstance(d, TensorData):
                yield from fwd.batches(d.x, d.y, batch_size)
                return
            d.num_classes = d.num_classes or num_classes
            for xb, yb in d.batches(batch_size):  # streamed from disk: one batch in memory at a time
                yield from fwd.batches(xb, yb, batch_size)

        def start() -> tuple[Any, torch.Tensor | None]:
            """The member forward passes begin only here: nothing runs for a finished result.
            Under torchrun each rank runs its share of the members; rank 0 gets every batch's
            logits of all members (the other ranks' streams yield nothing)."""
            if distributed.active():  # before any work: the ranks' models must compute the same function
                def probe() -> torch.Tensor:
                    xb, yb = (test.x[:8], test.y[:8]) if isinstance(test, TensorData) else next(iter(test.batches(8)))
                    return next(MemberForward(module, snaps[:1], dev).batches(xb, yb, 8))[0]
                distributed.check_same_outputs(probe)
            fwd = MemberForward(module, [snaps[i] for i in distributed.share(len(snaps))], dev)
            temps = None
            if val is not None:
                val_batches = list(_all_members(member_batches(fwd, val), len(snaps)))
                if distributed.world().writer:
                    val_logits, val_labels = zip(*val_batches)
                    temps = fit_temperatures(torch.cat(val_logits, 1).cpu(), torch.cat(val_labels).cpu(),
                                             member_orders(len(snaps), orders, seed))

            def stream():
                with tqdm(total=len(test), desc="ensemble", unit="img", leave=False,
                          disable=quiet or not distributed.world().writer) as bar:
                    for lg, yb in _all_members(member_batches(fwd, test), len(snaps)):
                        bar.update(yb.shape[0])
                        if labels_out is None:
                            seen_labels.append(yb.cpu())
                        yield lg, yb
            return stream(), temps

    config = {"members": fingerprints, "names": names, "data_spec": spec,
              "val_data_spec": getattr(val_data, "spec", val_data), "orders": orders, "seed": seed,
              "keep_predictions": bool(keep_predictions), "fp16": bool(fp16)}
    attrs = {"members": names, "data_spec": spec, "orders": orders, "seed": seed, "config": config,
             "model_spec": model if isinstance(model, str) else None}
    with open_store(out) as store:
        res = ensemble_analysis.ensemble(start, names, n_samples, lambda: labels_out if labels_out is not None
                                         else torch.cat(seen_labels), config=config, attrs=attrs, store=store,
                                         name=name, overwrite=overwrite, keep_predictions=keep_predictions,
                                         fp16=fp16, orders=orders, seed=seed)
    warnings = []
    at_bound = [i + 1 for i, b in enumerate(np.asarray(res.get("temperature_at_bound", []), dtype=bool)) if b]
    if at_bound:  # the validation data cannot pin the temperature down (e.g. 100% validation accuracy)
        warnings.append(f"the temperature of ensemble sizes {at_bound} hit its search bound [e^-4, e^4]: "
                        "their calibrated NLL is not trustworthy (more or harder validation data would help)")
    return EnsembleResult.from_analysis(res, name=name, members=names, orders=orders, warnings=warnings,
                                        **_inputs(out, keys))


def _all_members(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], m: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Under torchrun: each batch's logits [M, B, C] of all members on rank 0, put together from
    every rank's share (rank r holds members r, r + N, ...); the other ranks yield nothing.
    In one process the batches pass through unchanged."""
    w = distributed.world()
    for logits, labels in batches:
        if not w.distributed:
            yield logits, labels
            continue
        parts = distributed.gather(lambda: logits.cpu())
        if parts is None:
            continue
        classes = {p.shape[-1] for p in parts if p.shape[0]}
        if len(classes) > 1:
            raise LandscapeError(f"the members do not have the same number of classes: {sorted(classes)}")
        full = torch.empty(m, labels.shape[0], classes.pop(), dtype=logits.dtype)
        for r, part in enumerate(parts):
            if part.shape[0]:
                full[r::w.size] = part
        yield full.to(logits.device), labels


# -- alignment -----------------------------------------------------------------------------
@distributed.collective
def align(a: SnapshotRef, b: SnapshotRef, *, model: str | nn.Module | None = None, data=None, test_data=None,
          method: str = "weight", samples: int = ALIGN_SAMPLES, seed: int = 0, max_iter: int = 100,
          out: str | None = None, name: str | None = None, overwrite: bool = False, device: str = "auto",
          num_classes: int | None = None, batch_size: int | None = None, quiet: bool = True,
          ignore_keys: Sequence[str] = ()) -> AlignResult:
    """B's hidden units permuted to match A's (Git Re-Basin): by weight matching (`method="weight"`,
    alternating linear assignments over the layers) or by the correlations of their activations on
    the data (`"activation"`, on its first `samples` inputs). The permutation structure is traced
    from the model. The aligned snapshot computes B's function; with `out` it is stored as `name`
    (default `B-to-A`) with the permutation and the matching's objective. JSON: the groups, the
    units moved, the objective (weight) or correlations (activation), and distances before/after;
    the result also holds the permutations and the aligned Snapshot (`AlignResult.aligned`)."""
    if method not in align_analysis.METHODS:
        raise LandscapeError(f"unknown --method {method!r}: choose {' or '.join(align_analysis.METHODS)}")
    seed = check_seed(seed, "--seed")
    samples, max_iter = positive_int(samples, "--samples"), positive_int(max_iter, "--max-iter")
    with open_store(out) as store:
        s = setup(model, data, test_data, num_classes=num_classes, bn="keep", device=device, batch_size=batch_size,
                  ignore_keys=ignore_keys, snapshots=[a, b])
        sa, sb = s.snapshots([a, b])
        name = name or f"{_short_name(sb.name)}-to-{_short_name(sa.name)}"
        prov = {k: v for k, v in s.provenance().items() if k != "bn_mode"}
        data_spec = (s.train or s.test).spec
        res = align_analysis.align(s.evaluator.model, sa, sb, example=s.example_input(), method=method,
                                   batches=lambda: s.align_batches(samples), data_spec=data_spec, seed=seed,
                                   max_iter=max_iter, store=store, name=name, overwrite=overwrite, provenance=prov)
    snap = res["snapshot"]
    return AlignResult.from_analysis(res, distance_before=float((sb.params.double() - sa.params.double()).norm()),
                                     distance_after=float((snap.params.double() - sa.params.double()).norm()),
                                     snapshot=f"{out}:{name}" if out is not None else None, **_inputs(out, s.keys))


def _short_name(ref: str) -> str:
    """A store-safe name from a reference (`runs/s:ft-0` -> `ft-0`, `ckpt/b.pt` -> `b`)."""
    base = os.path.basename(ref.rpartition(":")[2] if ":" in ref and not os.path.isfile(ref) else ref)
    return (base.rsplit(".", 1)[0] if base.endswith((".pt", ".pth", ".safetensors")) else base) or "snapshot"


# -- curvature and curves --------------------------------------------------------------
def hessian(snapshots: Sequence[SnapshotRef] = (), *, model: str | nn.Module | None = None, data=None, test_data=None,
            along: Sequence[str | Snapshot] | None = None, num: int = 5, top_k: int = 1, trace: bool = False,
            density: bool = False, probes: int = 100, iters: int = 100, tol: float = 1e-4, density_runs: int = 1,
            seed: int = 0, dtype: str | None = None, bn: str = "auto", out: str | None = None,
            name: str = "hessian", overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
            batch_size: int | None = None, bn_samples: int = 2000, quiet: bool = True,
            loss_fn: LossFn | str | None = None, precision: str = "exact", chunk: int | None = None,
            ignore_keys: Sequence[str] = ()) -> HessianResult | HessiansResult | HessianLineResult:
    """Hessian spectra (top-k eigenvalues, with `trace` the Hutchinson trace and its standard error,
    with `density` the SLQ spectral density) of the mean loss over the data (`data`, else
    `test_data`) at each snapshot, or with `along=(A, B)` at `num` points of the line from A to B.

    Stored (with `out`) as kind "hessians": one snapshot under `name`, several under NAME-0,
    NAME-1, ...; a line under `name` (its points under NAME-0, ...). Returns a HessianResult for
    one snapshot, a HessiansResult for several, a HessianLineResult along a line. JSON: eigenvalues
    (descending), trace, trace_stderr (null without `trace`), per snapshot or per point.
    `precision` is the products' matmul precision and `chunk` the probe vectors per batched
    Hessian-vector product; both are part of the stored result's config."""
    check_spectrum_args(top_k, probes, iters, tol, density_runs)
    seed = check_seed(seed, "--seed")
    snapshots = list(snapshots or [])
    if along is not None and len(along) != 2:
        raise LandscapeError("--along needs exactly two snapshots A B")
    if along is None and not snapshots:
        raise LandscapeError("give one or more snapshots, or --along A B")
    if along is not None and snapshots:
        raise LandscapeError("give snapshots or --along A B, not both")
    alphas = line_alphas(positive_int(num, "--num")) if along is not None else None
    settings = dict(top_k=top_k, trace=trace, density=density, probes=probes, iters=iters, tol=tol,
                    density_runs=density_runs, seed=seed, dtype=dtype,
                    probe_batch=None if chunk is None else positive_int(chunk, "--chunk"))
    with open_store(out) as store:
        s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                  bn_samples=bn_samples, loss_fn=loss_fn, precision=precision,
                  ignore_keys=ignore_keys, snapshots=list(along or snapshots))
        if along is not None:
            a, b = s.snapshots(list(along))
            res = hessian_analysis.hessian_line(s.evaluator, a, b, alphas, store=store, name=name,
                                                provenance=s.provenance(), overwrite=overwrite, quiet=quiet,
                                                **settings)
            return HessianLineResult.from_analysis(res, density=density, **_inputs(out, s.keys))
        snaps = s.snapshots(snapshots)
        names = [name] if len(snaps) == 1 else [f"{name}-{i}" for i in range(len(snaps))]
        results = [hessian_analysis.hessian(s.evaluator, sn, store=store, name=nm, provenance=s.provenance(),
                                            overwrite=overwrite, quiet=quiet, **settings)
                   for sn, nm in zip(snaps, names)]
    inputs = _inputs(out, s.keys)
    points = [HessianResult.from_analysis(r, bn_mode=s.evaluator.bn_mode, density=density, **inputs)
              for r in results]
    return points[0] if len(points) == 1 else HessiansResult(bn_mode=s.evaluator.bn_mode, results=points, **inputs)


def connect(a: SnapshotRef, b: SnapshotRef, *, model: str | nn.Module | None = None, data=None, test_data=None,
            curve: str = "bezier", epochs: int = 20, lr: float = 0.05, momentum: float = 0.9,
            weight_decay: float = 0.0, optimizer: str = "sgd", train_batch_size: int = 128, num: int = 21,
            seed: int = 0, bn: str = "auto", out: str | None = None, name: str = "connect",
            overwrite: bool = False, device: str = "auto", num_classes: int | None = None,
            batch_size: int | None = None, bn_samples: int = 2000, quiet: bool = True,
            loss_fn: LossFn | str | None = None, chunk: int | None = None, precision: str = "exact",
            ignore_keys: Sequence[str] = ()) -> ConnectResult:
    """Train a Bezier or polygonal-chain curve from A to B (Garipov et al.) and evaluate it and the
    straight line at `num` values of t with BN recomputed at each point; JSON with both barriers
    (`barriers` along the curve, `line_barriers` along the line) and both metric curves."""
    check_training_args(curve, epochs, lr, momentum, weight_decay, optimizer, train_batch_size)
    seed = check_seed(seed, "--seed")
    alphas = line_alphas(positive_int(num, "--num"))
    if data is None:
        raise LandscapeError("connect trains the curve on training data: give --data")
    with open_store(out) as store:
        s = setup(model, data, test_data, num_classes=num_classes, bn=bn, device=device, batch_size=batch_size,
                  bn_samples=bn_samples, loss_fn=loss_fn, precision=precision,
                  ignore_keys=ignore_keys, snapshots=[a, b])
        sa, sb = s.snapshots([a, b])
        res = connect_analysis.connect(s.evaluator, sa, sb, curve=curve, alphas=alphas, epochs=epochs, lr=lr,
                                       momentum=momentum, weight_decay=weight_decay, optimizer=optimizer,
                                       train_batch_size=train_batch_size, seed=seed, store=store, name=name,
                                       provenance=s.provenance(), overwrite=overwrite, chunk=chunk, quiet=quiet)
    bend = f"{out}:{res['bend']}" if out is not None and res.get("bend") else None
    return ConnectResult.from_analysis(res, bend=bend, **_inputs(out, s.keys))
