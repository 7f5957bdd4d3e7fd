"""What the Python API returns: one frozen dataclass per kind of result.

Every function of `landscape.api` returns one of these. The fields hold numpy arrays (metric grids,
barriers, spectra and ensemble metrics in float64, as the analyses compute and store them; vectors
in weight space as tensors of the model's dtype), the names and settings the analysis recorded,
and what the JSON leaves out (the
`done`/`nonfinite` masks of a grid, an alignment's permutations and aligned Snapshot, a curve's
control point, Hessian eigenvectors). `to_dict()` is exactly what `landscape COMMAND --json` prints:
grids with null where a point was not computed and "nan"/"inf" where one diverged
(`landscape.core.jsonable`). The repr is short: shapes and the headline numbers.

Results are frozen (their fields cannot be rebound; the arrays in them are the caller's to use)
and compare by identity: arrays have no single truth value. `result["key"]` still reads the
`--json` dict's entry, as code written when the functions returned that dict does, with a
DeprecationWarning.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Mapping

import numpy as np
import torch

from landscape.core.checkpoints import Snapshot
from landscape.core.jsonable import masked, to_jsonable
from landscape.evaluate.ensembles import ROW_KEYS, table_rows

_RESULT = dict(frozen=True, eq=False, repr=False, kw_only=True)


def _array(x: Any, dtype: Any = None) -> np.ndarray | None:
    """`x` as a numpy array (None stays None); a tensor is detached and moved to the CPU."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _short(x: Any) -> str:
    """A field for the repr: shapes for arrays, a count for long lists, 4 significant digits."""
    if isinstance(x, np.ndarray) and x.ndim == 1 and x.size <= 4 and x.dtype.kind in "fiu":
        return "[" + ", ".join(format(float(v), ".4g") for v in x) + "]"  # a few headline numbers
    if isinstance(x, (np.ndarray, torch.Tensor)):
        kind = "array" if isinstance(x, np.ndarray) else "tensor"
        return f"{kind}{list(x.shape)}"
    if isinstance(x, Snapshot):
        return f"Snapshot({x.name!r})"
    if isinstance(x, (bool, np.bool_)) or x is None:
        return repr(x)
    if isinstance(x, (float, np.floating)):
        return format(float(x), ".4g")
    if isinstance(x, (list, tuple)):
        plain = all(isinstance(v, (int, float)) or (isinstance(v, str) and len(v) <= 40) for v in x)
        return repr(list(x)) if len(x) <= 4 and plain else f"[{len(x)} items]"
    if isinstance(x, dict):
        shapes = {np.shape(v) for v in x.values()}
        if len(x) > 2 and len(shapes) == 1 and all(isinstance(v, np.ndarray) for v in x.values()):
            return "{" + ", ".join(map(str, x)) + f"}}: array{list(shapes.pop())}"  # names once, then the shape
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in x.items()) + "}" if len(x) <= 6 \
            else f"{{{len(x)} entries}}"
    return repr(x)


def _json_item(result: Any, key: str) -> Any:
    """`result["key"]`, as code written when the functions returned `--json`'s dict reads it: that
    dict's entry, with a DeprecationWarning pointing at the fields."""
    warnings.warn(f"{type(result).__name__}[{key!r}] reads the --json dict: use the result's fields "
                  f"(or .to_dict()[{key!r}])", DeprecationWarning, stacklevel=3)
    return result.to_dict()[key]


@dataclass(**_RESULT)
class Barrier:
    """A path's barrier for one metric: the most the path rises above the chord between its ends
    (`landscape.geometry.lines.barrier`), and the α (or t) where it does."""

    barrier: float
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return {"barrier": self.barrier, "alpha": self.alpha}

    def __repr__(self) -> str:
        return f"{_short(self.barrier)} at α={_short(self.alpha)}"


def _barriers(found: Mapping[str, Mapping[str, float]]) -> dict[str, Barrier]:
    return {k: Barrier(barrier=v["barrier"], alpha=v["alpha"]) for k, v in found.items()}


@dataclass(**_RESULT)
class _Result:
    """What every result of an evaluation says about its inputs: the store it was written to
    (None: not stored) and what `ignore_keys` skipped / which wrapper prefix was stripped, per
    checkpoint (printed only when not empty)."""

    store: str | None = None
    ignored_keys: dict[str, list[str]] = field(default_factory=dict)
    stripped_prefixes: dict[str, str] = field(default_factory=dict)

    _shown: ClassVar[tuple[str, ...]] = ()  # the fields the repr shows

    def _inputs(self) -> dict[str, Any]:
        return {"store": self.store, **({"ignored_keys": self.ignored_keys} if self.ignored_keys else {}),
                **({"stripped_prefixes": dict(self.stripped_prefixes)} if self.stripped_prefixes else {})}

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return _json_item(self, key)

    def __repr__(self) -> str:
        shown = self._shown or tuple(f.name for f in fields(self))
        return f"{type(self).__name__}(" + ", ".join(f"{k}={_short(getattr(self, k))}" for k in shown) + ")"


class _Metrics:
    """Named access to a grid result's metric arrays (None where the result has no such metric:
    no test data, or a loss without accuracy)."""

    metrics: dict[str, np.ndarray]

    @property
    def train_loss(self) -> np.ndarray | None:
        return self.metrics.get("train_loss")

    @property
    def train_acc(self) -> np.ndarray | None:
        return self.metrics.get("train_acc")

    @property
    def test_loss(self) -> np.ndarray | None:
        return self.metrics.get("test_loss")

    @property
    def test_acc(self) -> np.ndarray | None:
        return self.metrics.get("test_acc")


class _Masked(list):
    """A metric grid already in JSON form (`masked`): `_json` leaves it as it is."""


def _masked(metrics: Mapping[str, np.ndarray], done: np.ndarray, prefix: str = "") -> dict[str, Any]:
    """Metric grids as JSON: null where a point was not computed."""
    return {f"{prefix}{k}": _Masked(masked(v, done)) for k, v in metrics.items()}


def _json(d: Mapping[str, Any]) -> dict[str, Any]:
    """`to_jsonable` of every entry but the masked grids (a second pass over a large grid costs)."""
    return {k: list(v) if isinstance(v, _Masked) else to_jsonable(v) for k, v in d.items()}


_SUMMARY = ("points", "computed_now", "diverged", "done", "nonfinite")


def _summary(res: Mapping[str, Any]) -> dict[str, Any]:
    """The grid fields every grid result has, from an analysis result."""
    return dict(points=int(res["points"]), computed_now=int(res["computed_now"]), diverged=int(res["diverged"]),
                done=_array(res["done"], bool), nonfinite=_array(res["nonfinite"], bool))


@dataclass(**_RESULT)
class LineResult(_Metrics, _Result):
    """Metrics along θ(α) = (1−α)·θa + α·θb (`landscape.interpolate`). `metrics`: train_loss,
    train_acc, test_loss, test_acc (as the data and loss give them), each [len(alphas)], float64;
    `barriers`: per metric (train_loss, train_error, test_loss, test_error) its Barrier.
    `done`/`nonfinite`: which points are computed / diverged; `align`: the Re-Basin method B was
    aligned to A with, or None."""

    kind: ClassVar[str] = "curve"
    name: str
    a: str
    b: str
    bn_mode: str
    alphas: np.ndarray
    metrics: dict[str, np.ndarray]
    barriers: dict[str, Barrier]
    points: int
    computed_now: int
    diverged: int
    done: np.ndarray
    nonfinite: np.ndarray
    align: str | None = None

    _shown = ("name", "a", "b", "bn_mode", "alphas", "metrics", "barriers", "diverged", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], **inputs: Any) -> LineResult:
        _held(res, cls, ("kind", "name", "a", "b", "bn_mode", "alphas", "barriers", *_SUMMARY), metrics=True)
        return cls(name=res["name"], a=res["a"], b=res["b"], bn_mode=res["bn_mode"], alphas=_array(res["alphas"]),
                   metrics={m: _array(v) for m, v in _metric_items(res)}, barriers=_barriers(res["barriers"]),
                   **_summary(res), **inputs)

    def barrier(self, metric: str = "test_loss") -> float:
        """The barrier height of `metric` (train_loss, train_error, test_loss, test_error)."""
        return _pick(self.barriers, metric, "barrier").barrier

    def to_dict(self) -> dict[str, Any]:
        return _json({"kind": self.kind, "name": self.name, "a": self.a, "b": self.b, "bn_mode": self.bn_mode,
                            "alphas": self.alphas, **_masked(self.metrics, self.done),
                            "barriers": {k: v.to_dict() for k, v in self.barriers.items()},
                            "points": self.points, "computed_now": self.computed_now, "diverged": self.diverged,
                            **self._inputs()})


def _metric_items(res: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """An analysis result's metric grids in their order (train_loss, train_acc, test_loss, ...)."""
    return [(k[len(prefix):], v) for k, v in res.items()
            if k.startswith(prefix) and k[len(prefix):].startswith(("train_", "test_"))
            and k.endswith(("_loss", "_acc"))]


def _held(res: Mapping[str, Any], cls: type, known: tuple[str, ...], metrics: bool = False) -> None:
    """Refuse an analysis result with an entry this class does not know: a key added to an
    analysis must be added here too, or `to_dict()` would silently drop it from `--json`."""
    extra = [k for k in res if k not in known and not (metrics and k.endswith(("_loss", "_acc")))]
    if extra:
        raise TypeError(f"{cls.__name__} does not hold the analysis result's {extra}: add them to landscape.results")


def _pick(found: Mapping[str, Any], key: str, what: str) -> Any:
    if key not in found:
        raise KeyError(f"no {what} for {key!r}: this result has {', '.join(found) or 'none'}")
    return found[key]


@dataclass(**_RESULT)
class BarrierMatrixResult(_Result):
    """Barriers between every pair of snapshots (`landscape.barriers`): `barriers[metric]` is the
    symmetric [n, n] matrix (zero diagonal) for train_loss, train_error, test_loss, test_error;
    `done`/`nonfinite` are [pairs, len(alphas)] (pairs i < j in order)."""

    kind: ClassVar[str] = "barriers"
    name: str
    snapshots: list[str]
    bn_mode: str
    alphas: np.ndarray
    barriers: dict[str, np.ndarray]
    points: int
    computed_now: int
    diverged: int
    done: np.ndarray
    nonfinite: np.ndarray
    align: str | None = None

    _shown = ("name", "snapshots", "bn_mode", "alphas", "barriers", "diverged", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], **inputs: Any) -> BarrierMatrixResult:
        _held({k: v for k, v in res.items() if not k.endswith("_barrier")}, cls,
              ("kind", "name", "snapshots", "bn_mode", "alphas", *_SUMMARY))
        return cls(name=res["name"], snapshots=list(res["snapshots"]), bn_mode=res["bn_mode"],
                   alphas=_array(res["alphas"]),
                   barriers={k[:-len("_barrier")]: _array(v) for k, v in res.items() if k.endswith("_barrier")},
                   **_summary(res), **inputs)

    def barrier(self, metric: str = "test_loss") -> np.ndarray:
        """The [n, n] barrier matrix of `metric`."""
        return _pick(self.barriers, metric, "barrier matrix")

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": self.kind, "name": self.name, "snapshots": self.snapshots,
                            "bn_mode": self.bn_mode, "alphas": self.alphas,
                            **{f"{k}_barrier": v for k, v in self.barriers.items()},
                            "points": self.points, "computed_now": self.computed_now, "diverged": self.diverged,
                            **self._inputs()})


@dataclass(**_RESULT)
class Projection:
    """A snapshot's place in a plane: its coordinates and its distance from the plane."""

    name: str
    x: float
    y: float
    distance: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "x": self.x, "y": self.y, "distance": self.distance}

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, x={self.x:.4g}, y={self.y:.4g}, distance={self.distance:.4g})"


@dataclass(**_RESULT)
class PlaneResult(_Metrics, _Result):
    """A 2-D surface θ0 + x·d1 + y·d2 (`landscape.plane`): `metrics[m]` is [len(x), len(y)],
    float64 (`metrics["test_loss"][i, j]` at x[i], y[j]; contour(x, y, m.T) draws it);
    `directions` the [2, P] direction vectors as this process computed them; `direction_attrs`
    how they were made (`kind`: plane, pca, random or hessian, and that kind's settings: the
    snapshots a plane goes through, a PCA's explained variance, ...); `projections` the
    snapshots' places in the plane (the centre first)."""

    name: str
    center: str
    bn_mode: str
    direction_attrs: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    metrics: dict[str, np.ndarray]
    projections: list[Projection]
    points: int
    computed_now: int
    diverged: int
    done: np.ndarray
    nonfinite: np.ndarray
    directions: torch.Tensor | None = None
    align: str | None = None

    _shown = ("kind", "name", "center", "bn_mode", "x", "y", "metrics", "projections", "diverged", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], direction_attrs: Mapping[str, Any], **inputs: Any) -> PlaneResult:
        """`direction_attrs`: the attributes the directions were handed to the analysis with
        (merged into the JSON between `bn_mode` and `xcoordinates`, as the analysis did)."""
        _held(res, cls, ("kind", "name", "center", "bn_mode", *direction_attrs, "buffers", "xcoordinates",
                         "ycoordinates", "projections", *_SUMMARY), metrics=True)
        attrs = {**direction_attrs, "buffers": res["buffers"]}
        return cls(name=res["name"], center=res["center"], bn_mode=res["bn_mode"], direction_attrs=attrs,
                   x=_array(res["xcoordinates"]), y=_array(res["ycoordinates"]),
                   metrics={m: _array(v) for m, v in _metric_items(res)},
                   projections=[Projection(**p) for p in res["projections"]], **_summary(res), **inputs)

    @property
    def kind(self) -> str:
        """How the directions were made: plane (through snapshots), pca, random or hessian."""
        return self.direction_attrs.get("kind", "surface")

    @property
    def projection_coords(self) -> np.ndarray:
        """The projected snapshots' (x, y), [len(projections), 2]."""
        return np.array([[p.x, p.y] for p in self.projections], dtype=np.float64).reshape(-1, 2)

    def to_dict(self) -> dict[str, Any]:
        # the direction attributes' `kind` and `points` keep their places with the values that
        # follow (the JSON's kind is the directions' kind; its points the grid's point count)
        return _json({"kind": "surface", "name": self.name, "center": self.center, "bn_mode": self.bn_mode,
                            **self.direction_attrs, "xcoordinates": self.x, "ycoordinates": self.y,
                            **_masked(self.metrics, self.done),
                            "projections": [p.to_dict() for p in self.projections],
                            "points": self.points, "computed_now": self.computed_now, "diverged": self.diverged,
                            **self._inputs()})


@dataclass(**_RESULT)
class EnsembleResult(_Result):
    """Ensembles of the first m members, m = 1..M (`landscape.ensemble`): `metrics[k][m - 1]`
    for k in acc, nll, ece, brier, conf, member_acc (mean member accuracy), disagreement, kl, and
    with validation data cal_nll and temperature; `member_accuracies`/`member_nlls` per member;
    with `orders` > 0, `orders_mean[k]` averaged over that many random member orders."""

    kind: ClassVar[str] = "ensemble"
    name: str
    members: list[str]
    size: np.ndarray
    metrics: dict[str, np.ndarray]
    member_accuracies: np.ndarray
    member_nlls: np.ndarray
    orders: int = 0
    orders_mean: dict[str, np.ndarray] = field(default_factory=dict)
    temperature_at_bound: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    _shown = ("name", "members", "size", "metrics", "warnings", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], *, name: str, members: list[str], orders: int,
                      warnings: list[str], **inputs: Any) -> EnsembleResult:
        _held({k: v for k, v in res.items() if not k.endswith("_orders_mean")}, cls,
              (*ROW_KEYS, "member_accuracies", "member_nlls", "temperature_at_bound", "members"))  # members: stored
        rows = {k: _array(res[k]) for k in ROW_KEYS if k in res and k != "size"}  # the table's order
        means = {k[:-len("_orders_mean")]: _array(v) for k, v in res.items() if k.endswith("_orders_mean")}
        return cls(name=name, members=list(members), size=_array(res["size"]), metrics=rows,
                   member_accuracies=_array(res["member_accuracies"]), member_nlls=_array(res["member_nlls"]),
                   orders=int(orders), orders_mean=means,
                   temperature_at_bound=_array(res.get("temperature_at_bound"), bool), warnings=list(warnings),
                   **inputs)

    def rows(self) -> list[dict[str, float]]:
        """One row per ensemble size: {size, acc, nll, ...} (what the CLI's table shows)."""
        return table_rows({"size": self.size, **self.metrics})

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": self.kind, "name": self.name, "members": self.members, "rows": self.rows(),
                            "warnings": self.warnings, "member_accuracies": self.member_accuracies,
                            "member_nlls": self.member_nlls,
                            **({"orders_mean": self.orders_mean} if self.orders else {}), **self._inputs()})


@dataclass(**_RESULT)
class AlignResult(_Result):
    """B's hidden units permuted to match A's (`landscape.align`): `permutations[group]` the
    index array of each group (B's unit perm[i] goes to place i), `aligned` the aligned Snapshot
    (B's function, A's unit order), `snapshot` its `STORE:NAME` when stored. Weight matching
    gives `objective` (Σ <A, permuted B> after each sweep, float64); activation matching
    `correlation_before`/`correlation_after` per group and `left_in_place`."""

    kind: ClassVar[str] = "alignment"
    name: str
    computed_now: bool
    align_method: str
    aligned_to: str
    source: str
    groups: list[dict[str, Any]]
    moved_units: int
    distance_before: float
    distance_after: float
    snapshot: str | None
    aligned: Snapshot
    permutations: dict[str, np.ndarray]
    objective: np.ndarray | None = None
    correlation_before: dict[str, float] | None = None
    correlation_after: dict[str, float] | None = None
    left_in_place: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # any other entry the alignment recorded
    _order: tuple[str, ...] = ()  # the JSON's order of the alignment's entries (a stored one's differ)

    _shown = ("name", "align_method", "aligned_to", "source", "moved_units", "distance_before", "distance_after",
              "snapshot")
    _TYPED: ClassVar[tuple[str, ...]] = ("align_method", "aligned_to", "source", "groups", "moved_units",
                                         "objective", "correlation_before", "correlation_after", "left_in_place")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], *, distance_before: float, distance_after: float,
                      snapshot: str | None, **inputs: Any) -> AlignResult:
        found = {k: v for k, v in res.items() if k not in ("kind", "name", "computed_now", "snapshot")}
        perms = found.pop("permutations", {}) or {}
        typed = {k: found[k] for k in cls._TYPED if k in found}
        if "objective" in typed:
            typed["objective"] = _array(typed["objective"], np.float64)
        return cls(name=res["name"], computed_now=res["computed_now"], distance_before=distance_before,
                   distance_after=distance_after, snapshot=snapshot, aligned=res["snapshot"],
                   permutations={g: _array(p, np.int64) for g, p in perms.items()}, **typed,
                   extra={k: v for k, v in found.items() if k not in cls._TYPED}, _order=tuple(found), **inputs)

    def to_dict(self) -> dict[str, Any]:
        values = {**self.extra, **{k: getattr(self, k) for k in self._TYPED}}
        return to_jsonable({"kind": self.kind, "name": self.name, "computed_now": self.computed_now,
                            **{k: values[k] for k in self._order},
                            "distance_before": self.distance_before, "distance_after": self.distance_after,
                            "snapshot": self.snapshot, **self._inputs()})


@dataclass(**_RESULT)
class Density:
    """An SLQ spectral density: `values` on `grid` (one row per point along a line), Gaussian
    width `sigma`."""

    grid: np.ndarray
    values: np.ndarray
    sigma: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid, "values": self.values, "sigma": self.sigma}

    def __repr__(self) -> str:
        return f"Density(grid={_short(self.grid)}, values={_short(self.values)}, sigma={_short(self.sigma)})"


def _density(res: Mapping[str, Any]) -> Density:
    return Density(grid=_array(res["density_grid"]), values=_array(res["density"]), sigma=res.get("density_sigma"))


# a spectrum's entries, in the JSON's order
_POINT_KEYS = ("name", "snapshot", "eigenvalues", "residuals", "iterations", "converged", "trace", "trace_stderr",
               "loss", "grad_norm", "parameters", "hvps", "seconds", "diverged", "computed_now")


@dataclass(**_RESULT)
class HessianResult(_Result):
    """The Hessian spectrum at one snapshot (`landscape.hessian`): `eigenvalues` [top_k] float64,
    descending, with their Ritz `residuals`; `eigenvectors` [top_k, P] (None when read back from
    a store that kept none); with `trace`, the Hutchinson `trace`, its `trace_stderr` and the
    probes' `trace_samples`; with `density`, the SLQ `density`. `diverged`: the loss was not
    finite there (every number NaN)."""

    kind: ClassVar[str] = "hessian"
    name: str
    snapshot: str
    bn_mode: str
    eigenvalues: np.ndarray
    residuals: np.ndarray | None
    iterations: int | None
    converged: bool | None
    trace: float | None
    trace_stderr: float | None
    loss: float | None
    grad_norm: float | None
    parameters: int | None
    hvps: int | None
    seconds: float | None
    diverged: bool | None
    computed_now: int
    density: Density | None = None
    eigenvectors: torch.Tensor | None = None
    trace_samples: np.ndarray | None = None

    _shown = ("name", "snapshot", "bn_mode", "eigenvalues", "trace", "loss", "converged", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], *, bn_mode: str, density: bool, **inputs: Any) -> HessianResult:
        _held(res, cls, ("kind", "bn_mode", *_POINT_KEYS, "eigenvectors", "trace_samples", "density_grid", "density",
                         "density_sigma", "slq_nodes", "slq_weights", "cached_batches", "batches"))
        vecs = res.get("eigenvectors")
        return cls(**{k: res.get(k) for k in _POINT_KEYS if k not in ("eigenvalues", "residuals")},
                   eigenvalues=_array(res.get("eigenvalues")), residuals=_array(res.get("residuals")),
                   bn_mode=bn_mode, density=_density(res) if density and "density" in res else None,
                   eigenvectors=None if vecs is None else torch.as_tensor(vecs),
                   trace_samples=_array(res.get("trace_samples")), **inputs)

    def _point(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _POINT_KEYS},
                **({"density": self.density.to_dict()} if self.density is not None else {})}

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": self.kind, "bn_mode": self.bn_mode, **self._point(), **self._inputs()})


@dataclass(**_RESULT)
class HessiansResult(_Result):
    """Hessian spectra at several snapshots (`landscape.hessian([s1, s2, ...])`): one
    HessianResult per snapshot in `results` (stored as NAME-0, NAME-1, ...)."""

    kind: ClassVar[str] = "hessians"
    bn_mode: str
    results: list[HessianResult]

    _shown = ("bn_mode", "snapshots", "eigenvalues", "store")

    @property
    def snapshots(self) -> list[str]:
        return [r.snapshot for r in self.results]

    @property
    def eigenvalues(self) -> np.ndarray:
        """[snapshots, top_k]: each snapshot's eigenvalues, descending."""
        return np.stack([r.eigenvalues for r in self.results])

    @property
    def trace(self) -> np.ndarray | None:
        """[snapshots]: the Hutchinson traces (None without `trace`)."""
        if all(r.trace is None for r in self.results):
            return None
        return np.array([np.nan if r.trace is None else r.trace for r in self.results], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        points = [r._point() for r in self.results]
        return to_jsonable({"kind": self.kind, "bn_mode": self.bn_mode, "snapshots": [p["snapshot"] for p in points],
                            "eigenvalues": [p["eigenvalues"] for p in points], "trace": [p["trace"] for p in points],
                            "trace_stderr": [p["trace_stderr"] for p in points], "results": points,
                            **self._inputs()})


@dataclass(**_RESULT)
class HessianLineResult(_Result):
    """Hessian spectra along the line from A to B (`landscape.hessian(along=(A, B))`): per point
    of `alphas`, `eigenvalues` [n, top_k], `loss`, `grad_norm`, `converged` [n]; `trace` and
    `trace_stderr` [n] (None without `trace`); `density` values [n, grid] (without it, None)."""

    kind: ClassVar[str] = "hessian_line"
    name: str
    a: str
    b: str
    bn_mode: str
    alphas: np.ndarray
    eigenvalues: np.ndarray
    trace: np.ndarray | None
    trace_stderr: np.ndarray | None
    loss: np.ndarray
    grad_norm: np.ndarray
    converged: np.ndarray
    computed_now: int
    density: Density | None = None

    _shown = ("name", "a", "b", "bn_mode", "alphas", "eigenvalues", "trace", "computed_now", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], *, density: bool, **inputs: Any) -> HessianLineResult:
        _held(res, cls, ("kind", "name", "a", "b", "bn_mode", "alphas", "eigenvalues", "trace", "trace_stderr", "loss",
                         "grad_norm", "converged", "computed_now", "density_grid", "density", "density_sigma"))
        arrays = {k: _array(res.get(k)) for k in ("alphas", "eigenvalues", "trace", "trace_stderr", "loss",
                                                  "grad_norm", "converged")}
        return cls(name=res.get("name"), a=res.get("a"), b=res.get("b"), bn_mode=res.get("bn_mode"), **arrays,
                   computed_now=res.get("computed_now"), density=_density(res) if density else None, **inputs)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"kind": self.kind, **{k: getattr(self, k) for k in (
            "name", "a", "b", "bn_mode", "alphas", "eigenvalues", "trace", "trace_stderr", "loss", "grad_norm",
            "converged", "computed_now")}, **({"density": self.density.to_dict()} if self.density is not None else {}),
            **self._inputs()})


@dataclass(**_RESULT)
class ConnectResult(_Metrics, _Result):
    """A trained curve from A to B (`landscape.connect`) and the straight line beside it, both at
    `alphas` (t): `metrics` along the curve and `line_metrics` along the line (train_loss, ...,
    each [len(alphas)]), their `barriers` and `line_barriers`; `history` the training loss per
    epoch; `control_point` the trained bend (a Snapshot; None when a finished result is read back
    after its bend was removed), `bend` its `STORE:NAME` when stored; `warnings`: a curve that
    did not beat the line after few epochs, say."""

    kind: ClassVar[str] = "connection"
    name: str
    curve: str
    a: str
    b: str
    bn_mode: str
    alphas: np.ndarray
    metrics: dict[str, np.ndarray]
    line_metrics: dict[str, np.ndarray]
    barriers: dict[str, Barrier]
    line_barriers: dict[str, Barrier]
    history: np.ndarray
    bend: str | None
    points: int
    computed_now: int
    epochs_trained_now: int
    diverged: int
    done: np.ndarray
    nonfinite: np.ndarray
    control_point: Snapshot | None = None
    warnings: list[str] = field(default_factory=list)

    _shown = ("name", "curve", "a", "b", "bn_mode", "alphas", "barriers", "line_barriers", "bend", "store")

    @classmethod
    def from_analysis(cls, res: Mapping[str, Any], *, bend: str | None, **inputs: Any) -> ConnectResult:
        _held(res, cls, ("kind", "warnings", "name", "curve", "a", "b", "bn_mode", "alphas", "barriers",
                         "line_barriers", "history", "bend", "control_point", "epochs_trained_now", *_SUMMARY),
              metrics=True)
        return cls(name=res["name"], curve=res["curve"], a=res["a"], b=res["b"], bn_mode=res["bn_mode"],
                   alphas=_array(res["alphas"]), metrics={m: _array(v) for m, v in _metric_items(res)},
                   line_metrics={m: _array(v) for m, v in _metric_items(res, "line_")},
                   barriers=_barriers(res["barriers"]), line_barriers=_barriers(res["line_barriers"]),
                   history=_array(res["history"], np.float64), bend=bend, control_point=res.get("control_point"),
                   epochs_trained_now=int(res["epochs_trained_now"]), warnings=list(res.get("warnings", [])),
                   **_summary(res), **inputs)

    def barrier(self, metric: str = "test_loss", line: bool = False) -> float:
        """The barrier height of `metric` along the curve (`line`: along the straight line)."""
        return _pick(self.line_barriers if line else self.barriers, metric, "barrier").barrier

    def to_dict(self) -> dict[str, Any]:
        return _json({"kind": self.kind, "warnings": self.warnings, "name": self.name, "curve": self.curve,
                            "a": self.a, "b": self.b, "bn_mode": self.bn_mode, "alphas": self.alphas,
                            **_masked(self.metrics, self.done), **_masked(self.line_metrics, self.done, "line_"),
                            "barriers": {k: v.to_dict() for k, v in self.barriers.items()},
                            "line_barriers": {k: v.to_dict() for k, v in self.line_barriers.items()},
                            "history": self.history, "bend": self.bend, "points": self.points,
                            "computed_now": self.computed_now, "epochs_trained_now": self.epochs_trained_now,
                            "diverged": self.diverged, **self._inputs()})


@dataclass(**_RESULT)
class InfoResult:
    """What a store holds (`landscape.info`): `contents[kind][name]` with its `datasets`
    (shapes), `attrs`, `values` (what the result found: barriers, eigenvalues, ...) and `damaged`
    (why it could not be read) where it applies."""

    path: str
    schema_version: int
    attrs: dict[str, Any]
    contents: dict[str, dict[str, dict[str, Any]]]

    @classmethod
    def from_listing(cls, listing: Mapping[str, Any]) -> InfoResult:
        rest = {k: v for k, v in listing.items() if k not in ("path", "schema_version", "attrs")}
        return cls(path=listing["path"], schema_version=listing["schema_version"], attrs=listing["attrs"],
                   contents=rest)

    def names(self, kind: str) -> list[str]:
        """The names the store holds of `kind` (snapshots, curves, surfaces, ...)."""
        return list(self.contents.get(kind, {}))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "schema_version": self.schema_version, "attrs": self.attrs, **self.contents}

    def __getitem__(self, key: str) -> Any:
        return _json_item(self, key)

    def __repr__(self) -> str:
        held = ", ".join(f"{kind}: {len(named)}" for kind, named in self.contents.items())
        return f"InfoResult({self.path!r}, schema {self.schema_version}, {held or 'empty'})"


@dataclass(**_RESULT)
class PlotResult:
    """A stored result drawn to a file (`landscape.plot`): its kind and name, and the figure's path."""

    kind: str
    name: str
    figure: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "figure": self.figure}

    def __getitem__(self, key: str) -> Any:
        return _json_item(self, key)

    def __repr__(self) -> str:
        return f"PlotResult({self.kind} {self.name!r} -> {self.figure!r})"


__all__ = ["AlignResult", "Barrier", "BarrierMatrixResult", "ConnectResult", "Density", "EnsembleResult",
           "HessianLineResult", "HessianResult", "HessiansResult", "InfoResult", "LineResult", "PlaneResult",
           "PlotResult", "Projection"]
