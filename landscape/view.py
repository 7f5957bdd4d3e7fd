"""Stored results as a person looks at them: found by name, read and checked, summarised in key
values (`landscape info`), drawn as figures (`landscape plot`, landscape.plots) and put together
into one self-contained interactive HTML page (`landscape view`, this module's `view`).

- Finding (`find`): a name is looked up among the kinds that hold results (surfaces, curves,
  barrier matrices, ensembles, Hessians, connections); a name held by several kinds is refused in
  one line listing them (choose with `--kind`, or `KIND/NAME`: a name never holds '/'); the
  Hessians of several snapshots stored as NAME-0, NAME-1, ... are found together as NAME.
- Reading (`read_result`, the `*_series` functions): every stored object is untrusted input: its
  datasets are checked for dtype and shape against each other, values of points not computed
  become NaN (gaps), and a malformed object is refused in one line naming the dataset.
- Key values (`key_values`, `key_values_text`): barriers of lines, barrier matrices and
  connections, top eigenvalues and trace of Hessians, ensemble accuracy and NLL by size, a plane's
  least and greatest loss, a PCA plane's explained variance.
- The page (`view`): plotly figures (its JavaScript inlined: the page opens offline), a 3D surface
  and a contour per plane with a menu to switch the metric, lines and barrier matrices with their
  barriers, ensembles by size, Hessian spectra and connections; written like every output file
  (landscape.store.outputs: a regular file outside every store; replaced whole).

Layer: interface (beside api, plots, exports); imports landscape.core and landscape.store only.
plotly is imported when a page is built, so `info` and `plot` start without it.
"""
from __future__ import annotations

import html
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from landscape.core.errors import LandscapeError
from landscape.core.jsonable import to_jsonable
from landscape.store.atomic import write_atomically
from landscape.store.outputs import check_output_file
from landscape.store.store import Store

# the kinds that hold results one can look at (snapshots, directions, predictions are inputs)
RESULT_KINDS = ("surfaces", "curves", "barriers", "ensembles", "hessians", "connections")
_WHAT = {"surfaces": "surface", "curves": "curve", "barriers": "barrier matrix", "ensembles": "ensemble",
         "hessians": "hessian", "connections": "connection"}
SKIPPED = ("predictions", "labels", "eigenvectors")  # large, and never drawn
VIEW_FORMATS = (".html", ".htm")
SURFACE_METRICS = ("train_loss", "test_loss", "train_err", "test_err", "train_acc", "test_acc")
ENSEMBLE_METRICS = ("acc", "nll", "cal_nll", "ece", "brier", "member_acc", "disagreement", "kl")


def singular(kind: str) -> str:
    """'hessians' -> 'hessian' (as the store's messages name a kind)."""
    return kind[:-1] if kind.endswith("s") else kind


def parse_kind(kind: str) -> str:
    """A kind as the user may write it ('hessian' or 'hessians'); refused, listing the kinds, when unknown."""
    k = str(kind).strip().lower()
    for full in RESULT_KINDS:
        if k in (full, singular(full)):
            return full
    raise LandscapeError(f"unknown kind {kind!r}: choose {', '.join(RESULT_KINDS)}")


@dataclass
class Result:
    """A stored result read whole (but for SKIPPED datasets); `parts`: the objects of a group
    (the Hessians NAME-0, NAME-1, ... of several snapshots), each a Result."""

    kind: str
    name: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    parts: list["Result"] = field(default_factory=list)

    @property
    def what(self) -> str:
        return f"{_WHAT.get(self.kind, singular(self.kind))} {self.name!r}"


# -- finding --------------------------------------------------------------------------------
def hessian_group(store: Store, name: str) -> list[str]:
    """NAME-0, NAME-1, ...: the Hessians `landscape hessian S1 S2 ... --name NAME` stores (none: [])."""
    names = []
    while store.has("hessians", f"{name}-{len(names)}"):
        names.append(f"{name}-{len(names)}")
    return names


def _listing(store: Store, kinds: Sequence[str], shown: int = 6) -> str:
    parts = []
    for k in kinds:
        names = store.names(k)
        if names:
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{k}: {', '.join(names[:shown])}{more}")
    return "; ".join(parts) or "no results"


def find(store: Store, name: str, kind: str | None = None, choose: str = "--kind {kind}") -> tuple[str, list[str]]:
    """The kind of the result `name` and the objects that make it ([name], or a Hessian group).

    `kind` narrows the search; a name held by several kinds is refused in one line listing them
    (`choose`: how the command lets the user pick one, formatted with `kind` and `name`); an
    unfinished grid says so."""
    kinds = RESULT_KINDS if kind is None else (parse_kind(kind),)
    found = [k for k in kinds if store.has(k, name)]
    if len(found) > 1:
        raise LandscapeError(f"store {store.path!r} holds {len(found)} results named {name!r} "
                             f"({', '.join(_WHAT[k] for k in found)}): choose one with "
                             + " or ".join(choose.format(kind=k, name=name) for k in found))
    if found:
        return found[0], [name]
    if "hessians" in kinds:
        group = hessian_group(store, name)
        if group:
            return "hessians", group
    unfinished = next((k for k in kinds if name in store.unfinished(k)), None)
    if unfinished is not None:
        raise LandscapeError(f"{singular(unfinished)} {name!r} in store {store.path!r} is not finished: rerun the "
                             "command that computes it (it resumes) first")
    if kind is not None:
        elsewhere = [k for k in RESULT_KINDS if k not in kinds and store.has(k, name)]
        also = f"; {name!r} is a {' and a '.join(_WHAT[k] for k in elsewhere)}" if elsewhere else ""
        raise LandscapeError(f"store {store.path!r} has no {_WHAT[kinds[0]]} named {name!r} "
                             f"({_listing(store, kinds)}){also}")
    raise LandscapeError(f"store {store.path!r} has no curve, surface, barrier matrix, ensemble, hessian or "
                         f"connection named {name!r} ({_listing(store, RESULT_KINDS)})")


def read_result(store: Store, kind: str, name: str, names: Sequence[str] | None = None) -> Result:
    """The result `name` of `kind` made of the objects `names` (default: [name])."""
    names = list(names or [name])
    if names != [name]:
        return Result(kind, name, {}, {}, [read_result(store, kind, n) for n in names])
    obj = store.read(kind, name, skip=SKIPPED)
    return Result(kind, name, dict(obj.arrays), dict(obj.attrs))


def load(path: str, name: str, kind: str | None = None, choose: str = "--kind {kind}") -> Result:
    """Find and read one result of the store folder `path` (see `find`)."""
    with Store(path, "r") as store:
        kind, names = find(store, name, kind, choose)
        return read_result(store, kind, name, names)


# -- checked series -------------------------------------------------------------------------
def _numbers(arrays: Mapping[str, Any], key: str, what: str, shape: Sequence[int] | None = None,
             optional: bool = False) -> np.ndarray | None:
    """A dataset as float64, checked: numbers, of `shape` when given."""
    if key not in arrays:
        if optional:
            return None
        raise LandscapeError(f"{what} is malformed: it has no {key}")
    v = np.asarray(arrays[key])
    if v.dtype.kind not in "fiub":
        raise LandscapeError(f"{what} is malformed: {key} is of dtype {v.dtype}, not numbers")
    v = v.astype(np.float64)
    if shape is not None and v.shape != tuple(shape):
        raise LandscapeError(f"{what} is malformed: {key} has shape {list(v.shape)}, expected {list(shape)}")
    return v


def _axis(arrays: Mapping[str, Any], key: str, what: str) -> np.ndarray:
    v = _numbers(arrays, key, what)
    if v.ndim != 1 or v.size == 0:
        raise LandscapeError(f"{what} is malformed: {key} is not a non-empty vector (shape {list(v.shape)})")
    if not np.isfinite(v).all():
        raise LandscapeError(f"{what} is malformed: {key} holds non-finite values")
    return v


def _done(arrays: Mapping[str, Any], what: str, shape: Sequence[int]) -> np.ndarray:
    if "done" not in arrays:
        return np.ones(tuple(shape), dtype=bool)
    d = np.asarray(arrays["done"])
    if d.shape != tuple(shape) or d.dtype.kind not in "biu":
        raise LandscapeError(f"{what} is malformed: done has shape {list(d.shape)} and dtype {d.dtype}, "
                             f"expected booleans of shape {list(shape)}")
    return d.astype(bool)


def _metrics(arrays: Mapping[str, Any], what: str, shape: Sequence[int], prefix: str = "") -> dict[str, np.ndarray]:
    """<prefix><split>_<loss|acc> of `shape`, NaN where a point was not computed."""
    done = _done(arrays, what, shape)
    out = {}
    for split in ("train", "test"):
        for m in ("loss", "acc"):
            key = f"{prefix}{split}_{m}"
            v = _numbers(arrays, key, what, shape, optional=True)
            if v is not None:
                out[f"{split}_{m}"] = np.where(done, v, np.nan)
    if not out:
        raise LandscapeError(f"{what} is malformed: it holds none of {prefix}train_loss, {prefix}test_loss")
    return out


def _name(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _names(arrays: Mapping[str, Any], key: str, what: str, n: int | None = None) -> list[str]:
    v = np.asarray(arrays.get(key, np.zeros(0, dtype="S1")))
    if v.ndim != 1 or v.dtype.kind not in "SUO" and v.size:
        raise LandscapeError(f"{what} is malformed: {key} is not a list of names")
    out = [_name(x) for x in v.tolist()]
    if n is not None and len(out) != n:
        raise LandscapeError(f"{what} is malformed: {key} has {len(out)} names, expected {n}")
    return out


def _scalar(attrs: Mapping[str, Any], key: str, what: str) -> float | None:
    v = attrs.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise LandscapeError(f"{what} is malformed: its {key} attribute {str(v)[:40]!r} is not a number")
    return float(v)


def _barrier_attr(attrs: Mapping[str, Any], key: str, what: str) -> dict[str, dict[str, float]] | None:
    v = attrs.get(key)
    if v is None:
        return None
    if not isinstance(v, Mapping) or not all(isinstance(b, Mapping) for b in v.values()):
        raise LandscapeError(f"{what} is malformed: its {key} attribute is not a mapping of barriers")
    out = {}
    for metric, b in v.items():
        h, a = b.get("barrier"), b.get("alpha")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (h, a)):
            raise LandscapeError(f"{what} is malformed: barrier {metric!r} is not a pair of numbers")
        out[str(metric)] = {"barrier": float(h), "alpha": float(a)}
    return out


def curve_series(r: Result) -> dict[str, Any]:
    """A line: alphas, its metrics (NaN where not computed) and its stored barriers."""
    alphas = _axis(r.arrays, "alphas", r.what)
    return {"alphas": alphas, "metrics": _metrics(r.arrays, r.what, alphas.shape),
            "barriers": _barrier_attr(r.attrs, "barriers", r.what)}


def connection_series(r: Result) -> dict[str, Any]:
    """A connection: t, the trained curve's metrics and the straight line's, both barriers."""
    alphas = _axis(r.arrays, "alphas", r.what)
    curve = _metrics(r.arrays, r.what, alphas.shape)
    line = _metrics(r.arrays, r.what, alphas.shape, prefix="line_")
    return {"alphas": alphas, "curve": curve, "line": line, "curve_kind": str(r.attrs.get("curve", "trained")),
            "barriers": _barrier_attr(r.attrs, "barriers", r.what),
            "line_barriers": _barrier_attr(r.attrs, "line_barriers", r.what),
            "a": r.attrs.get("a"), "b": r.attrs.get("b")}


def surface_series(r: Result) -> dict[str, Any]:
    """A plane: coordinates, metrics [len(x), len(y)] (NaN where not computed), projected
    snapshots, and for a PCA plane its trajectory (in order) and explained variance ratios."""
    xs, ys = _axis(r.arrays, "xcoordinates", r.what), _axis(r.arrays, "ycoordinates", r.what)
    metrics = _metrics(r.arrays, r.what, (xs.size, ys.size))
    names = _names(r.arrays, "projection_names", r.what)
    coords = _numbers(r.arrays, "projection_coords", r.what, (len(names), 2), optional=True)
    dists = _numbers(r.arrays, "projection_distances", r.what, (len(names),), optional=True)
    if names and (coords is None or dists is None):
        raise LandscapeError(f"{r.what} is malformed: it names projected snapshots without their coordinates")
    projections = [(n, float(c[0]), float(c[1]), float(d)) for n, c, d in
                   zip(names, coords if coords is not None else [], dists if dists is not None else [])]
    path: list[tuple[str, float, float, float]] = []
    ratio = None
    if r.attrs.get("kind") == "pca":
        points = r.attrs.get("points")
        points = [str(p) for p in points] if isinstance(points, list) else []
        # the projections are the centre, the trajectory in order, then --project's snapshots
        if [p[0] for p in projections[1:1 + len(points)]] == points:
            path = projections[1:1 + len(points)]
            projections = projections[:1] + projections[1 + len(points):]
        evr = r.attrs.get("explained_variance_ratio")
        if isinstance(evr, list) and len(evr) >= 2 and all(isinstance(v, (int, float)) for v in evr[:2]):
            ratio = [float(v) for v in evr[:2]]
    return {"xs": xs, "ys": ys, "metrics": metrics, "projections": projections, "path": path,
            "explained_variance_ratio": ratio, "unit": str(r.attrs.get("unit", "") or ""),
            "kind": r.attrs.get("kind"), "coords": r.attrs.get("coords"), "center": r.attrs.get("center")}


def barrier_series(r: Result) -> dict[str, Any]:
    """A barrier matrix: snapshot names and the [n, n] matrices <metric>_barrier."""
    names = _names(r.arrays, "names", r.what)
    n = len(names)
    mats = {k: _numbers(r.arrays, k, r.what, (n, n)) for k in sorted(r.arrays) if k.endswith("_barrier")}
    if not mats:
        raise LandscapeError(f"{r.what} is malformed: it holds no <metric>_barrier matrix")
    return {"names": names, "matrices": mats}


def ensemble_series(r: Result) -> dict[str, Any]:
    """An ensemble: sizes 1..K and each metric by size."""
    size = _axis(r.arrays, "size", r.what)
    metrics = {k: _numbers(r.arrays, k, r.what, size.shape) for k in ENSEMBLE_METRICS if k in r.arrays}
    if not metrics:
        raise LandscapeError(f"{r.what} is malformed: it holds none of {', '.join(ENSEMBLE_METRICS)}")
    return {"size": size, "metrics": metrics, "members": _names(r.arrays, "members", r.what)}


def hessian_series(r: Result) -> dict[str, Any]:
    """A Hessian result in one of two shapes.

    mode "points" (a snapshot, or the snapshots of a group): labels, eigenvalues [n, k] (NaN
    where a point has fewer), trace and trace_stderr [n] (None when not computed), loss [n],
    densities [(grid, density) or None per point].
    mode "line" (`hessian --along A B`): alphas [n], eigenvalues [n, k], trace, trace_stderr,
    loss [n] (or None), density_grid [G] and density [n, G] (or None), a, b."""
    if "alphas" in r.arrays and not r.parts:
        what = r.what
        alphas = _axis(r.arrays, "alphas", what)
        n = alphas.size
        ev = _numbers(r.arrays, "eigenvalues", what)
        ev = ev.reshape(n, -1) if ev.ndim == 1 and ev.size == n else ev
        if ev.ndim != 2 or ev.shape[0] != n:
            raise LandscapeError(f"{what} is malformed: eigenvalues has shape {list(ev.shape)} for {n} points")
        trace = _numbers(r.arrays, "trace", what, (n,), optional=True)
        stderr = _numbers(r.arrays, "trace_stderr", what, (n,), optional=True)
        grid = _numbers(r.arrays, "density_grid", what, optional=True)
        density = None
        if grid is not None:
            if grid.ndim != 1:
                raise LandscapeError(f"{what} is malformed: density_grid is not a vector")
            density = _numbers(r.arrays, "density", what, (n, grid.size))
        return {"mode": "line", "alphas": alphas, "eigenvalues": ev, "trace": trace, "trace_stderr": stderr,
                "loss": _numbers(r.arrays, "loss", what, (n,), optional=True), "density_grid": grid,
                "density": density, "a": r.attrs.get("a"), "b": r.attrs.get("b")}
    parts = r.parts or [r]
    labels, evs, traces, stderrs, losses, densities = [], [], [], [], [], []
    for p in parts:
        ev = _numbers(p.arrays, "eigenvalues", p.what).reshape(-1)
        labels.append(os.path.basename(str(p.attrs.get("snapshot", p.name))))
        evs.append(ev)
        traces.append(_scalar(p.attrs, "trace", p.what))
        stderrs.append(_scalar(p.attrs, "trace_stderr", p.what))
        losses.append(_scalar(p.attrs, "loss", p.what))
        grid = _numbers(p.arrays, "density_grid", p.what, optional=True)
        if grid is not None:
            if grid.ndim != 1:
                raise LandscapeError(f"{p.what} is malformed: density_grid is not a vector")
            densities.append((grid, _numbers(p.arrays, "density", p.what, grid.shape)))
        else:
            densities.append(None)
    k = max(e.size for e in evs)
    ev = np.full((len(evs), k), np.nan)
    for i, e in enumerate(evs):
        ev[i, :e.size] = e
    as_array = lambda vs: None if all(v is None for v in vs) else np.array(  # noqa: E731
        [np.nan if v is None else v for v in vs])
    return {"mode": "points", "labels": labels, "names": [p.name for p in parts], "eigenvalues": ev,
            "trace": as_array(traces), "trace_stderr": as_array(stderrs), "loss": as_array(losses),
            "densities": densities if any(d is not None for d in densities) else None}


# -- key values -----------------------------------------------------------------------------
def _finite(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v[np.isfinite(v)]


def key_values(r: Result) -> dict[str, Any]:
    """The numbers that say what a result found (JSON-able; see the module docstring)."""
    if r.kind == "curves":
        s = curve_series(r)
        return {"barriers": s["barriers"]}
    if r.kind == "connections":
        s = connection_series(r)
        return {"barriers": s["barriers"], "line_barriers": s["line_barriers"]}
    if r.kind == "barriers":
        s = barrier_series(r)
        out: dict[str, Any] = {"names": s["names"]}
        n = len(s["names"])
        for key, m in s["matrices"].items():
            off = ~np.eye(n, dtype=bool) & np.isfinite(m)
            if not off.any():
                out[key] = {"max": None, "mean": None, "pair": None}
                continue
            i, j = np.unravel_index(int(np.argmax(np.where(off, m, -np.inf))), m.shape)
            out[key] = {"max": float(m[i, j]), "mean": float(m[off].mean()),
                        "pair": [s["names"][min(i, j)], s["names"][max(i, j)]], "matrix": m}
        return to_jsonable(out)
    if r.kind == "ensembles":
        s = ensemble_series(r)
        return to_jsonable({"size": s["size"].astype(int), **{k: s["metrics"][k] for k in ("acc", "nll")
                                                                 if k in s["metrics"]}})
    if r.kind == "surfaces":
        s = surface_series(r)
        out = {}
        for key in ("train_loss", "test_loss"):
            v = s["metrics"].get(key)
            if v is None or not np.isfinite(v).any():
                continue
            i, j = np.unravel_index(int(np.nanargmin(np.where(np.isfinite(v), v, np.nan))), v.shape)
            out[key] = {"min": float(v[i, j]), "min_at": [float(s["xs"][i]), float(s["ys"][j])],
                        "max": float(np.nanmax(np.where(np.isfinite(v), v, np.nan)))}
        if s["explained_variance_ratio"] is not None:
            out["explained_variance_ratio"] = s["explained_variance_ratio"]
        return to_jsonable(out)
    if r.kind == "hessians":
        s = hessian_series(r)
        if s["mode"] == "line":
            return to_jsonable({"alphas": s["alphas"], "eigenvalues": s["eigenvalues"], "trace": s["trace"],
                                "trace_stderr": s["trace_stderr"]})
        rows = [{"snapshot": lab, "eigenvalues": _finite(s["eigenvalues"][i]),
                 "trace": None if s["trace"] is None else s["trace"][i],
                 "trace_stderr": None if s["trace_stderr"] is None else s["trace_stderr"][i],
                 "loss": None if s["loss"] is None else s["loss"][i]} for i, lab in enumerate(s["labels"])]
        if not r.parts:
            return to_jsonable({k: v for k, v in rows[0].items()})
        return to_jsonable({"snapshots": rows})
    return {}


def _g(v: Any, fmt: str = ".4g") -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    return format(float(v), fmt) if math.isfinite(float(v)) else str(float(v))


_ORDER = ("train_loss", "train_error", "test_loss", "test_error")


def _ordered(keys) -> list[str]:
    """Barrier names train first, loss before error (the stored attributes are sorted by name)."""
    return sorted(keys, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))


def _barrier_text(barriers: Mapping[str, Any] | None, sym: str = "α") -> list[str]:
    if not barriers:
        return []
    return [f"{k} {_g(barriers[k]['barrier'], '+.4f')} at {sym}={_g(barriers[k]['alpha'], '.2f')}"
            for k in _ordered(barriers)]


def _seq(values: Sequence[Any], fmt: str = ".4g", most: int = 8) -> str:
    vals = [_g(v, fmt) for v in values]
    return " ".join(vals) if len(vals) <= most else f"{' '.join(vals[:3])} … {' '.join(vals[-3:])}"


def key_values_text(kind: str, values: Mapping[str, Any]) -> str:
    """`key_values` as one line for `landscape info` (empty when there is nothing to say)."""
    if not values:
        return ""
    if "error" in values:
        return f"values unreadable: {values['error']}"
    if kind == "curves":
        return "barriers: " + ", ".join(_barrier_text(values.get("barriers"))) if values.get("barriers") else ""
    if kind == "connections":
        curve, line = values.get("barriers") or {}, values.get("line_barriers") or {}
        parts = [f"{k} {_g(curve[k]['barrier'], '+.4f')} (line {_g(line[k]['barrier'], '+.4f')})" if k in line
                 else f"{k} {_g(curve[k]['barrier'], '+.4f')}" for k in _ordered(curve)]
        return "curve barriers: " + ", ".join(parts) if parts else ""
    if kind == "barriers":
        mats = [k for k, v in values.items() if k.endswith("_barrier") and isinstance(v, Mapping) and v.get("pair")]
        by_name = {k[:-len("_barrier")]: k for k in mats}
        parts = [f"{by_name[m]} max {_g(values[by_name[m]]['max'], '.4f')} ({' – '.join(values[by_name[m]]['pair'])}), "
                 f"mean {_g(values[by_name[m]]['mean'], '.4f')}" for m in _ordered(by_name)]
        return "barriers: " + "; ".join(parts) if parts else ""
    if kind == "ensembles":
        sizes = values.get("size", [])
        span = f"{sizes[0]}..{sizes[-1]}" if sizes else "–"
        return f"by size {span}: " + "; ".join(f"{k} {_seq(values[k])}" for k in ("acc", "nll") if k in values)
    if kind == "surfaces":
        parts = [f"{k} min {_g(v['min'])} at ({_g(v['min_at'][0], '.3g')}, {_g(v['min_at'][1], '.3g')}), "
                 f"max {_g(v['max'])}" for k, v in values.items() if k.endswith("_loss")]
        if values.get("explained_variance_ratio"):
            parts.append("explained variance " + ", ".join(f"{100 * v:.1f}%"
                                                           for v in values["explained_variance_ratio"]))
        return "; ".join(parts)
    if kind == "hessians":
        if "alphas" in values:
            parts = []
            for i, a in enumerate(values["alphas"]):
                tr = "" if not values.get("trace") else f", trace {_g(values['trace'][i])}"
                parts.append(f"α={_g(a, '.3g')}: λ {', '.join(_g(v) for v in values['eigenvalues'][i])}{tr}")
            return "; ".join(parts) if len(parts) <= 6 else "; ".join(parts[:2] + ["…"] + parts[-2:])
        rows = values.get("snapshots") or [values]
        out = []
        for row in rows:
            tr = "" if row.get("trace") is None else \
                f", trace {_g(row['trace'])} ± {_g(row.get('trace_stderr'), '.2g')}"
            who = f"{row['snapshot']}: " if "snapshots" in values else ""
            out.append(f"{who}λ {', '.join(_g(v) for v in row.get('eigenvalues', []))}{tr}")
        return "; ".join(out)
    return ""


def store_key_values(path: str, listing: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{kind: {name: key values}} for the finished results a store listing (Store.describe)
    names; an object that cannot be read gives {"error": reason} instead of stopping the rest.
    Only the datasets the values need are read (never snapshots, kept predictions or eigenvectors)."""
    out: dict[str, dict[str, Any]] = {}
    with Store(path, "r") as store:
        for kind in RESULT_KINDS:
            for name, entry in (listing.get(kind) or {}).items():
                if entry.get("damaged") or not entry.get("datasets"):
                    continue
                try:
                    if kind in ("curves", "connections"):
                        needed = ("alphas", "done", "train_loss", "test_loss", "train_acc", "test_acc")
                        needed = needed + tuple(f"line_{k}" for k in needed[2:]) if kind == "connections" else needed
                    elif kind == "hessians":
                        needed = ("alphas", "eigenvalues", "trace", "trace_stderr", "loss")
                    elif kind == "ensembles":
                        needed = ("size", "acc", "nll")
                    elif kind == "barriers":
                        needed = tuple(k for k in entry["datasets"] if k == "names" or k.endswith("_barrier"))
                    else:
                        needed = ("xcoordinates", "ycoordinates", "done", "train_loss", "test_loss",
                                  "projection_names", "projection_coords", "projection_distances")
                    obj = store.read(kind, name, skip=[k for k in entry["datasets"] if k not in needed])
                    values = key_values(Result(kind, name, dict(obj.arrays), dict(obj.attrs)))
                except LandscapeError as exc:
                    values = {"error": str(exc)}
                if values:
                    out.setdefault(kind, {})[name] = values
    return out


# -- the interactive page -------------------------------------------------------------------
def _everything(store: Store) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """(kind, name, objects) of every finished result, in the order of RESULT_KINDS; the points of a
    Hessian line are part of the line, a multi-snapshot Hessian's NAME-i are one group NAME.
    Also the notes on objects left out (damaged)."""
    out, notes = [], []
    for kind in RESULT_KINDS:
        names = store.names(kind)
        if kind != "hessians":
            out += [(kind, n, [n]) for n in names]
            continue
        taken: set[str] = set()
        for n in names:
            try:
                points = store.read_attrs(kind, n).get("points")
            except LandscapeError as exc:
                notes.append(str(exc))
                taken.add(n)
                continue
            if isinstance(points, list):
                taken.update(str(p) for p in points)
        groups: dict[str, list[str]] = {}
        for n in names:
            m = re.fullmatch(r"(.+)-(\d+)", n)
            if n not in taken and m and m.group(1) not in names:
                groups.setdefault(m.group(1), []).append(n)
        for base in list(groups):
            if set(groups[base]) != set(hessian_group(store, base)):
                del groups[base]  # not NAME-0..NAME-(n-1): each stands alone
        grouped = {n for g in groups.values() for n in g}
        for n in names:
            if n in taken or n in grouped:
                continue
            out.append((kind, n, [n]))
        out += [(kind, base, hessian_group(store, base)) for base in sorted(groups)]
    return out, notes


def view(store: str, names: Sequence[str] | None = None, out: str | None = None) -> str:
    """Write one self-contained HTML page of the results `names` of the store folder `store`
    (default: every finished result) to `out` (default: STORE.html beside the store folder);
    returns its path. A name may be KIND/NAME where several kinds hold it."""
    return view_page(store, names, out)["file"]


def view_page(store: str, names: Sequence[str] | None = None, out: str | None = None) -> dict[str, Any]:
    """`view`, returning what was written: {"file", "results": [{"kind", "name"}], "skipped": [...]}."""
    folder = os.path.abspath(os.path.expanduser(str(store)))
    out = check_output_file(out or f"{folder.rstrip(os.sep)}.html", "--output")
    if os.path.splitext(out)[1].lower() not in VIEW_FORMATS:
        raise LandscapeError(f"--output {out!r}: a view is an HTML page: give a name ending in .html")
    results: list[Result] = []
    skipped: list[str] = []
    with Store(store, "r") as st:
        if names:
            for n in names:
                kind, _, bare = n.rpartition("/") if "/" in n else (None, "", n)
                k, objects = find(st, bare, kind or None, choose="{kind}/{name}")
                results.append(read_result(st, k, bare, objects))
        else:
            found, skipped = _everything(st)
            for kind, name, objects in found:
                try:
                    results.append(read_result(st, kind, name, objects))
                except LandscapeError as exc:
                    skipped.append(str(exc))
        if not results:
            raise LandscapeError(f"nothing to view: store {st.path!r} holds no finished result "
                                 f"({', '.join(RESULT_KINDS)})")
        title = f"landscape view: {st.path}"
    sections, shown = [], []
    for r in results:
        try:
            fig = _figure(r)
            values = key_values_text(r.kind, key_values(r))
        except LandscapeError as exc:
            if names:
                raise
            skipped.append(str(exc))
            continue
        sections.append((r, fig, values))
        shown.append({"kind": singular(r.kind), "name": r.name})
    if not sections:
        raise LandscapeError(f"nothing to view: every result of store {store!r} is malformed ({skipped[0]})")
    page = _page(title, sections, skipped)
    write_atomically(out, lambda f: f.write(page.encode("utf-8")))
    return {"file": out, "results": shown, "skipped": skipped}


# Script errors of the page are written into #view-errors (empty when the page drew cleanly):
# a reader sees them, and the tests check it in a real browser.
_ERRORS = """<script>
(function () {
  function show(text) {
    var e = document.getElementById("view-errors");
    if (!e) { document.documentElement.setAttribute("data-view-errors", text); return; }
    e.hidden = false; e.textContent += text + "\\n";
  }
  window.onerror = function (msg, src, line, col) { show("error: " + msg + " (line " + line + ":" + col + ")"); };
  window.addEventListener("unhandledrejection", function (ev) {
    show("error: " + (ev.reason && ev.reason.message || ev.reason));
  });
})();
</script>"""

_STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 1em 2em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-bottom: 0.2em; }
nav a { margin-right: 1em; font-size: 0.9em; }
.values { font-family: monospace; font-size: 12px; white-space: pre-wrap; color: #444; margin: 0.2em 0; }
#view-errors { color: #b00; } .skipped { color: #a60; font-size: 0.9em; }
section { margin-bottom: 2em; border-top: 1px solid #ddd; padding-top: 0.5em; }
</style>"""


def _page(title: str, sections: list[tuple[Result, Any, str]], skipped: Sequence[str]) -> str:
    body, nav = [], []
    for i, (r, fig, values) in enumerate(sections):
        anchor = f"result-{i}"
        head = html.escape(f"{_WHAT[r.kind]} {r.name}")
        nav.append(f'<a href="#{anchor}">{head}</a>')
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"plot-{i}",
                          config={"displaylogo": False, "responsive": True})
        body.append(f'<section id="{anchor}" data-kind="{r.kind}"><h2>{head}</h2>'
                    f'<p class="values">{html.escape(values)}</p>{div}</section>')
    notes = "".join(f'<p class="skipped">left out: {html.escape(s)}</p>' for s in skipped)
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title>{_STYLE}{_ERRORS}</head><body>"
            f"<h1>{html.escape(title)}</h1><pre id=\"view-errors\" hidden></pre>"
            f"<nav>{' '.join(nav)}</nav>{notes}{''.join(body)}</body></html>\n")


def _plotly():
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:
        raise LandscapeError("landscape view needs plotly: pip install plotly") from None
    return go, make_subplots


def _figure(r: Result):
    return {"surfaces": _surface_figure, "curves": _curve_figure, "barriers": _barrier_figure,
            "ensembles": _ensemble_figure, "hessians": _hessian_figure,
            "connections": _connection_figure}[r.kind](r)


def _nan_to_none(v: np.ndarray) -> list:
    """Plotly draws None as a gap (NaN and inf too, but only None survives every JSON path)."""
    a = np.asarray(v, dtype=np.float64)
    return np.where(np.isfinite(a), a, None).tolist()


def _menu(fig, labels: Sequence[str], groups: Sequence[Sequence[int]], always: Sequence[int], n: int,
          x: float = 0.0, y: float = 1.18) -> None:
    """A dropdown showing trace group i (and the traces `always`) for choice labels[i]."""
    buttons = []
    for label, group in zip(labels, groups):
        visible = [False] * n
        for t in (*group, *always):
            visible[t] = True
        buttons.append({"label": label, "method": "restyle", "args": [{"visible": visible}]})
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": x, "y": y, "xanchor": "left", "yanchor": "top",
                                    "direction": "down", "showactive": True}])


def _title(r: Result) -> str:
    bn = r.attrs.get("bn_mode") or (r.parts[0].attrs.get("bn_mode") if r.parts else None)
    return f"{r.name} (BN {bn})" if bn else r.name


def _metric_values(metrics: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    if key.endswith("_err"):
        acc = metrics.get(key[:-4] + "_acc")
        return None if acc is None else 1.0 - acc
    return metrics.get(key)


def _surface_figure(r: Result):
    go, make_subplots = _plotly()
    s = surface_series(r)
    xs, ys = s["xs"], s["ys"]
    metrics = [m for m in SURFACE_METRICS if _metric_values(s["metrics"], m) is not None]
    if not any(np.isfinite(_metric_values(s["metrics"], m)).any() for m in metrics):
        raise LandscapeError(f"nothing to draw: every point of {r.what} is non-finite or not computed")
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]], column_widths=[0.5, 0.5],
                        subplot_titles=("surface (drag to rotate)", "contour"), horizontal_spacing=0.08)
    groups = []
    unit = f" ({s['unit']})" if s["unit"] else ""
    ratio = s["explained_variance_ratio"]
    xl = f"PC1: {100 * ratio[0]:.1f}% of variance{unit}" if ratio else f"x{unit}"
    yl = f"PC2: {100 * ratio[1]:.1f}% of variance{unit}" if ratio else f"y{unit}"
    for i, m in enumerate(metrics):
        z = _nan_to_none(_metric_values(s["metrics"], m).T)  # rows = y
        hover = f"x=%{{x:.4g}}<br>y=%{{y:.4g}}<br>{m}=%{{z:.5g}}<extra></extra>"
        first = len(fig.data)
        fig.add_trace(go.Surface(x=xs, y=ys, z=z, colorscale="Viridis", showscale=False, visible=i == 0,
                                 name=m, hovertemplate=hover), 1, 1)
        fig.add_trace(go.Contour(x=xs, y=ys, z=z, colorscale="Viridis", visible=i == 0, name=m,
                                 colorbar={"title": {"text": m}, "len": 0.9}, hovertemplate=hover,
                                 contours={"showlabels": True, "labelfont": {"size": 9, "color": "white"}}), 1, 2)
        groups.append([first, first + 1])
    always = []
    if s["path"]:
        always.append(len(fig.data))
        fig.add_trace(go.Scatter(x=[p[1] for p in s["path"]], y=[p[2] for p in s["path"]], mode="lines+markers+text",
                                 text=[str(i) for i in range(len(s["path"]))], textposition="top center",
                                 textfont={"color": "white", "size": 12},
                                 customdata=[[p[0], p[3]] for p in s["path"]], line={"color": "white", "width": 2},
                                 marker={"color": "red", "size": 7, "line": {"color": "white", "width": 1}},
                                 name="trajectory (in order)",
                                 hovertemplate="%{text}: %{customdata[0]}<br>(%{x:.4g}, %{y:.4g}), "
                                 "%{customdata[1]:.3g} off the plane<extra></extra>"), 1, 2)
    if s["projections"]:
        always.append(len(fig.data))
        fig.add_trace(go.Scatter(x=[p[1] for p in s["projections"]], y=[p[2] for p in s["projections"]],
                                 mode="markers+text", text=[os.path.basename(p[0]) for p in s["projections"]],
                                 textposition="bottom right", customdata=[[p[3]] for p in s["projections"]],
                                 textfont={"color": "white", "size": 11},
                                 marker={"symbol": "star", "color": "red", "size": 10,
                                         "line": {"color": "white", "width": 1}},
                                 name="snapshots", hovertemplate="%{text}<br>(%{x:.4g}, %{y:.4g}), "
                                 "%{customdata[0]:.3g} off the plane<extra></extra>"), 1, 2)
    _menu(fig, metrics, groups, always, len(fig.data))
    fig.update_xaxes(title_text=xl, row=1, col=2)
    fig.update_yaxes(title_text=yl, row=1, col=2)
    fig.update_layout(title={"text": _title(r), "x": 0.5}, height=560, margin={"t": 90, "l": 20, "r": 20},
                      scene={"xaxis_title": "x", "yaxis_title": "y", "zaxis_title": "value"},
                      legend={"orientation": "h", "y": -0.12}, template="plotly_white")
    return fig


_COLORS = {"train": "#1f77b4", "test": "#ff7f0e"}


def _line_traces(go, fig, alphas, metrics, barriers, *, dash=None, what="", sym="α") -> None:
    for split in ("train", "test"):
        for col, (m, key, bkey) in enumerate((("loss", f"{split}_loss", f"{split}_loss"),
                                              ("error", f"{split}_acc", f"{split}_error")), start=1):
            v = metrics.get(key)
            if v is None:
                continue
            v = 1.0 - v if m == "error" else v
            b = (barriers or {}).get(bkey)
            label = f"{split} {m}{what}" + (f" (barrier {b['barrier']:+.3g} at {sym}={b['alpha']:.2f})" if b else "")
            fig.add_trace(go.Scatter(x=alphas, y=_nan_to_none(v), mode="lines+markers", name=label,
                                     line={"color": _COLORS[split], "dash": dash}, marker={"size": 5},
                                     hovertemplate=f"{sym}=%{{x:.3g}}<br>{split} {m}=%{{y:.5g}}<extra>{label}</extra>"),
                          1, col)


def _curve_figure(r: Result):
    go, make_subplots = _plotly()
    s = curve_series(r)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "error"))
    _line_traces(go, fig, s["alphas"], s["metrics"], s["barriers"])
    fig.update_xaxes(title_text="α")
    fig.update_layout(title={"text": _title(r), "x": 0.5}, height=430, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2})
    return fig


def _connection_figure(r: Result):
    go, make_subplots = _plotly()
    s = connection_series(r)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "error"))
    _line_traces(go, fig, s["alphas"], s["curve"], s["barriers"], what=f", {s['curve_kind']} curve", sym="t")
    _line_traces(go, fig, s["alphas"], s["line"], s["line_barriers"], dash="dash", what=", straight line", sym="t")
    fig.update_xaxes(title_text="t")
    fig.update_layout(title={"text": f"{_title(r)}: {s['a']} → {s['b']}", "x": 0.5}, height=470,
                      template="plotly_white", legend={"orientation": "h", "y": -0.2})
    return fig


def _barrier_figure(r: Result):
    go, _ = _plotly()
    s = barrier_series(r)
    names = [os.path.basename(n) for n in s["names"]]
    fig = go.Figure()
    keys = list(s["matrices"])
    order = sorted(keys, key=lambda k: (k != "test_loss_barrier", k != "train_loss_barrier", k))
    for i, k in enumerate(order):
        m = s["matrices"][k]
        fig.add_trace(go.Heatmap(z=_nan_to_none(m), x=names, y=names, colorscale="Magma", visible=i == 0, name=k,
                                 texttemplate="%{z:.3g}", colorbar={"title": {"text": k}},
                                 hovertemplate="%{y} – %{x}<br>" + k + "=%{z:.5g}<extra></extra>"))
    _menu(fig, order, [[i] for i in range(len(order))], [], len(order))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title={"text": _title(r), "x": 0.5}, height=max(380, 120 + 40 * len(names)),
                      template="plotly_white", margin={"t": 90})
    return fig


def _ensemble_figure(r: Result):
    go, _ = _plotly()
    s = ensemble_series(r)
    keys = list(s["metrics"])
    fig = go.Figure()
    for i, k in enumerate(keys):
        fig.add_trace(go.Scatter(x=s["size"], y=_nan_to_none(s["metrics"][k]), mode="lines+markers", name=k,
                                 visible=i == 0, hovertemplate="size %{x}<br>" + k + "=%{y:.5g}<extra></extra>"))
    _menu(fig, keys, [[i] for i in range(len(keys))], [], len(keys))
    fig.update_xaxes(title_text="ensemble size", dtick=1)
    fig.update_layout(title={"text": _title(r), "x": 0.5}, height=420, template="plotly_white", margin={"t": 90},
                      showlegend=False)
    return fig


def _density_traces(go, fig, col: int, curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
    top = 0.0
    for label, grid, dens in curves:
        d = np.where(dens > 0, dens, np.nan)
        top = max(top, float(_finite(d).max(initial=0.0)))
        fig.add_trace(go.Scatter(x=grid, y=_nan_to_none(d), mode="lines", name=label,
                                 hovertemplate="λ=%{x:.4g}<br>density %{y:.3g}<extra>" + label + "</extra>"), 1, col)
    # six decades below the peak: the tails of the Gaussian kernels go down to 1e-300
    span = {"range": [math.log10(top) - 6, math.log10(top) + 0.3]} if top > 0 else {}
    fig.update_yaxes(type="log", title_text="density", row=1, col=col, **span)
    fig.update_xaxes(title_text="eigenvalue", row=1, col=col)


def _hessian_figure(r: Result):
    go, make_subplots = _plotly()
    s = hessian_series(r)
    ev = s["eigenvalues"]
    has_trace = s["trace"] is not None and np.isfinite(s["trace"]).any()
    if s["mode"] == "line":
        curves = [] if s["density"] is None else [(f"α={a:.3g}", s["density_grid"], s["density"][i])
                                                  for i, a in enumerate(s["alphas"])]
        x, xl = s["alphas"], "α"
    else:
        curves = [(lab, d[0], d[1]) for lab, d in zip(s["labels"], s["densities"] or []) if d is not None]
        x, xl = list(range(len(s["labels"]))), "snapshot"
    titles = ["top eigenvalues"] + (["trace (± standard error)"] if has_trace else []) + \
        (["spectral density"] if curves else [])
    fig = make_subplots(rows=1, cols=len(titles), subplot_titles=titles)
    mode = "lines+markers" if s["mode"] == "line" else "markers"  # snapshots are not a sequence
    for k in range(ev.shape[1]):
        fig.add_trace(go.Scatter(x=x, y=_nan_to_none(ev[:, k]), mode=mode, name=f"λ{k + 1}", marker={"size": 9},
                                 hovertemplate=f"{xl} %{{x}}<br>λ{k + 1}=%{{y:.5g}}<extra></extra>"), 1, 1)
    if has_trace:
        err = None if s["trace_stderr"] is None else _nan_to_none(s["trace_stderr"])
        fig.add_trace(go.Scatter(x=x, y=_nan_to_none(s["trace"]), mode=mode, name="trace",
                                 error_y={"type": "data", "array": err, "visible": err is not None},
                                 hovertemplate=f"{xl} %{{x}}<br>trace %{{y:.5g}}<extra></extra>"), 1, 2)
    if curves:
        _density_traces(go, fig, len(titles), curves)
    if s["mode"] == "points":
        fig.update_xaxes(tickvals=x, ticktext=s["labels"], title_text=xl, row=1, col=1)
        if has_trace:
            fig.update_xaxes(tickvals=x, ticktext=s["labels"], title_text=xl, row=1, col=2)
        head = _title(r)
    else:
        fig.update_xaxes(title_text="α", row=1, col=1)
        if has_trace:
            fig.update_xaxes(title_text="α", row=1, col=2)
        head = f"{_title(r)}: along {s['a']} → {s['b']}"
    fig.update_layout(title={"text": head, "x": 0.5}, height=430, template="plotly_white",
                      legend={"orientation": "h", "y": -0.2})
    return fig
