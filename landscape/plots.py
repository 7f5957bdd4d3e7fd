"""matplotlib figures: curves with their barrier, planes (contour, filled, heatmap, 3D; a PCA
plane with its trajectory), barrier matrices, ensembles by size, Hessian spectra and connections.

Each figure has a builder that returns the matplotlib Figure (`curve_figure`, `plane_figure`,
`matrix_figure`, `by_size_figure`, `hessian_figure`, `connection_figure`) and, for the first four,
a `plot_*` function that checks the path first, builds it and writes it. `draw_result` builds the
figure of any stored result (found and checked by landscape.view), `plot_result` writes it: the
`landscape plot` command.

Every function masks non-finite values (diverged or not yet computed points) so they are drawn
as gaps and never set a colour scale or contour level; a figure with nothing finite to draw is
refused with a LandscapeError. Figures are written atomically by `save_figure`.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402

from landscape.core.errors import LandscapeError  # noqa: E402
from landscape.geometry.lines import barrier  # noqa: E402
from landscape.store.atomic import write_atomically  # noqa: E402
from landscape.store.outputs import check_output_file  # noqa: E402
from landscape.view import (  # noqa: E402
    Result,
    barrier_series,
    connection_series,
    curve_series,
    ensemble_series,
    hessian_series,
    load,
    singular,
    surface_series,
)

PLANE_STYLES = ("contour", "filled", "heatmap", "3d")
FIGURE_FORMATS = (".png", ".pdf", ".svg")


def check_figure_path(path: str | os.PathLike) -> str:
    """Refuse (LandscapeError) a figure path that cannot be a figure: an unknown extension, a
    folder that does not exist, a path that is a folder. Returns the extension ('.png', ...).

    Plot functions call it before drawing, so bad input fails before any work."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FIGURE_FORMATS:
        raise LandscapeError(f"figure {path!r}: unknown extension {ext or '(none)'!r}; "
                             f"supported: {', '.join(FIGURE_FORMATS)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise LandscapeError(f"output folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise LandscapeError(f"output folder {folder!r} is not a folder")
    if os.path.isdir(path):
        raise LandscapeError(f"figure {path!r} is a folder")
    return ext


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 150, bbox_inches: str | None = "tight",
                **savefig) -> str:
    """Write `fig` to `path` atomically and close it; returns `path`.

    The figure is rendered into a temporary file beside `path` and renamed over it
    (landscape.atomic): a failed write never leaves a half-written figure and never harms an
    existing one. Bad paths (see check_figure_path)
    raise LandscapeError; an unwritable folder or a failed write (OSError: permission, full
    disk, quota) raises LandscapeFault("cannot write PATH: REASON"). The figure is closed
    whatever happens. Other keyword arguments go to `fig.savefig` (the format always follows
    the extension)."""
    savefig.pop("format", None)
    try:
        path = os.fspath(path)
        ext = check_figure_path(path)
        write_atomically(path, lambda fh: fig.savefig(fh, format=ext[1:], dpi=dpi, bbox_inches=bbox_inches,
                                                      **savefig))
    finally:
        plt.close(fig)
    return path


def _nothing_to_draw(metric: str) -> LandscapeError:
    return LandscapeError(f"nothing to draw: every point of {metric} is non-finite or not computed")


def _as_floats(values, what: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LandscapeError(f"{what}: values must be numbers") from None


def _gaps(values: np.ndarray, log: bool = False) -> np.ndarray:
    """A copy with NaN wherever a value cannot be drawn (non-finite; not positive on a log scale)."""
    bad = ~np.isfinite(values)
    if log:
        with np.errstate(invalid="ignore"):
            bad |= values <= 0
    return np.where(bad, np.nan, values)


def plot_curve(alphas: Sequence[float], curve: Mapping[str, np.ndarray], out: str, title: str = "",
               log: bool = False) -> str:
    """Loss and error along a line, each split on its own axes, with the barrier marked.

    Non-finite points (and, with `log`, non-positive losses) are drawn as gaps; the barrier is
    marked only on a series that is finite everywhere."""
    check_figure_path(out)
    return save_figure(curve_figure(alphas, curve, title, log), out)


def curve_figure(alphas: Sequence[float], curve: Mapping[str, np.ndarray], title: str = "",
                 log: bool = False):
    """The Figure of `plot_curve`."""
    a = _as_floats(alphas, "curve alphas").reshape(-1)
    if not np.isfinite(a).all():
        raise LandscapeError("curve alphas must be finite")
    series: dict[str, list[tuple[str, str, np.ndarray]]] = {"loss": [], "error": []}
    names = []
    for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
        if f"{split}_loss" not in curve:
            continue
        for kind, key in (("loss", f"{split}_loss"), ("error", f"{split}_acc")):
            if key not in curve:
                continue
            v = _as_floats(curve[key], key).reshape(-1)
            if v.shape != a.shape:
                raise LandscapeError(f"curve {key} has {v.size} values for {a.size} alphas")
            if kind == "error":
                v = 1.0 - v
            names.append(key)
            series[kind].append((split, color, _gaps(v, log and kind == "loss")))
    if not names:
        raise LandscapeError("nothing to draw: the curve has no train_loss or test_loss")
    if not any(np.isfinite(v).any() for kind in series for _, _, v in series[kind]):
        raise _nothing_to_draw(", ".join(names))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("loss", "error")):
        for split, color, v in series[kind]:
            if not np.isfinite(v).any():
                continue
            label = f"{split} {kind}"
            if np.isfinite(v).all() and ((a >= 0) & (a <= 1)).any():
                h, peak = barrier(a, v)
                i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
                chord = (1 - peak) * v[i0] + peak * v[i1]
                ax.vlines(peak, chord, chord + h, color=color, linestyles="--")
                label += f" (barrier {h:.3g} at α={peak:.2f})"  # in the legend: labels on the plot collide
            ax.plot(a, v, "-o", ms=3, color=color, label=label)
        ax.set_xlabel("α"), ax.set_ylabel(kind)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        if log and kind == "loss" and ax.lines:
            ax.set_yscale("log")
    fig.suptitle(title)
    return fig


def plot_plane(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, out: str, style: str = "contour",
               log: bool = False, title: str = "", markers: Sequence[tuple] = (),
               label: str = "loss", unit: str = "", equal_aspect: bool | None = None) -> str:
    """A surface [len(xs), len(ys)]; NaN/inf points are masked.

    Markers are (label, x, y) or (label, x, y, distance from the plane). A snapshot far from the
    plane (distance above 5% of the plane's extent) is drawn hollow and named in the legend with
    its distance, not as if it lay on the plane; snapshots at the same point share one label.
    `equal_aspect` (default: when the axes' ranges are comparable) keeps the plane's geometry.
    Masked points are gaps in every style, and the colour scale and contour levels come from
    the finite values only (with `log`, from the positive finite values)."""
    if style not in PLANE_STYLES:
        raise LandscapeError(f"unknown plot style {style!r}: choose {', '.join(PLANE_STYLES)}")
    check_figure_path(out)
    return save_figure(plane_figure(xs, ys, values, style, log, title, markers, label, unit, equal_aspect), out)


def plane_figure(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, style: str = "contour", log: bool = False,
                 title: str = "", markers: Sequence[tuple] = (), label: str = "loss", unit: str = "",
                 equal_aspect: bool | None = None, path: Sequence[tuple] = (),
                 axis_labels: tuple[str, str] | None = None):
    """The Figure of `plot_plane`; `path`: the points (label, x, y[, distance]) of a trajectory,
    drawn joined in order and numbered from 0 (a PCA plane's snapshots); `axis_labels`: the x and
    y labels (default "x (UNIT)", "y (UNIT)"). Markers and the path share one legend below the
    axes, never over the surface."""
    if style not in PLANE_STYLES:
        raise LandscapeError(f"unknown plot style {style!r}: choose {', '.join(PLANE_STYLES)}")
    xs = _as_floats(xs, "plane x coordinates").reshape(-1)
    ys = _as_floats(ys, "plane y coordinates").reshape(-1)
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise LandscapeError("plane coordinates must be finite")
    v = _as_floats(values, label)
    if v.shape != (xs.size, ys.size):
        raise LandscapeError(f"{label} has shape {list(v.shape)}, the plane's grid is {xs.size}×{ys.size}")
    z = np.ma.masked_invalid(v.T)  # rows = y for matplotlib
    if z.count() == 0:
        raise _nothing_to_draw(label)
    if log:
        z = np.ma.masked_less_equal(z, 0)
        if z.count() == 0:
            raise LandscapeError(f"nothing to draw on a log scale: no finite point of {label} is positive")
    if style != "heatmap" and (xs.size < 2 or ys.size < 2):
        raise LandscapeError(f"plot style {style!r} needs a grid of at least 2×2 points, this one is "
                             f"{xs.size}×{ys.size}: use --style heatmap")
    zmin, zmax = float(z.min()), float(z.max())
    gx, gy = np.meshgrid(xs, ys)
    norm = colors.LogNorm(vmin=zmin, vmax=zmax) if log else colors.Normalize(vmin=zmin, vmax=zmax)
    if log and zmax > zmin:
        levels = np.geomspace(zmin, zmax, 21)  # LogNorm's default locator gives a level per decade
    else:
        levels = 20
    if style == "3d":
        fig = plt.figure(figsize=(7, 6))
        ax = fig.add_subplot(projection="3d")
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = np.ma.log10(z) if log else z
        lo, hi = float(zz.min()), float(zz.max())
        ax.plot_surface(gx, gy, zz.filled(np.nan), cmap="viridis", vmin=lo, vmax=hi, linewidth=0,
                        antialiased=True)
        if hi > lo:
            ax.set_zlim(lo, hi)
        ax.set_zlabel(f"log10 {label}" if log else label)
    else:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        if style == "heatmap":
            im = ax.pcolormesh(gx, gy, z, shading="auto", cmap="viridis", norm=norm)
        elif style == "filled":
            im = ax.contourf(gx, gy, z, levels=levels, cmap="viridis", norm=norm)
        else:
            im = ax.contour(gx, gy, z, levels=levels, cmap="viridis", norm=norm)
            if len(im.levels):
                ax.clabel(im, im.levels[::3], fontsize=6)  # every third level: all of them pile up
        if log and style != "heatmap" and not np.isscalar(levels):
            # Tick every 4th geometric level: the default log ticks label each level in full.
            fig.colorbar(im, ax=ax, label=label, ticks=levels[::4], format="%.3g")
        else:
            fig.colorbar(im, ax=ax, label=label)
        extent = max(np.ptp(xs), np.ptp(ys))
        _draw_path(ax, path, extent)
        _draw_markers(ax, markers, extent)
        if equal_aspect if equal_aspect is not None else _comparable(xs, ys):
            ax.set_aspect("equal", adjustable="box")
        handles, labels = ax.get_legend_handles_labels()
        if handles:  # below the axes: a legend inside would cover the surface
            ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1 if len(handles) < 3
                      else 2, fontsize=7, frameon=False)
    xl, yl = axis_labels or (f"x ({unit})" if unit else "x", f"y ({unit})" if unit else "y")
    ax.set_xlabel(xl), ax.set_ylabel(yl)
    ax.set_title(title)
    return fig


# projected snapshots listed one by one in the legend up to this many; beyond it, one entry
MAX_LISTED = 4


def _draw_path(ax, path: Sequence[tuple], extent: float) -> None:
    """A trajectory: its points joined in order and numbered; hollow where off the plane."""
    pts = [(str(p[0]), float(p[1]), float(p[2]), float(p[3]) if len(p) > 3 else 0.0) for p in path]
    pts = [p for p in pts if np.isfinite(p[1]) and np.isfinite(p[2])]
    if not pts:
        return
    px, py = [p[1] for p in pts], [p[2] for p in pts]
    off = [p[3] > 0.05 * max(extent, 1e-12) for p in pts]
    ax.plot(px, py, "-", color="white", lw=2.4, zorder=3)  # a halo: the path reads on any colour
    ax.plot(px, py, "-", color="crimson", lw=1.2, zorder=4,
            label=f"trajectory: {pts[0][0]} (0) → {pts[-1][0]} ({len(pts) - 1})")
    on = [i for i, o in enumerate(off) if not o]
    if on:
        ax.plot([px[i] for i in on], [py[i] for i in on], "o", color="crimson", mec="white", ms=5, zorder=5)
    hollow = [i for i, o in enumerate(off) if o]
    if hollow:
        ax.plot([px[i] for i in hollow], [py[i] for i in hollow], "o", mfc="white", mec="crimson", ms=5, zorder=5,
                label=f"trajectory points off the plane by more than {0.05 * extent:.2g}")
    for i, (x, y) in enumerate(zip(px, py)):
        note = f" ({path[i][4]})" if len(path[i]) > 4 and path[i][4] else ""
        ax.annotate(f"{i}{note}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color="black",
                    zorder=6)


def _draw_markers(ax, markers: Sequence[tuple], extent: float) -> None:
    """Snapshots on the plane: red dots named beside them; off the plane: hollow, named in the
    legend with their distance (up to MAX_LISTED of them; more share one entry)."""
    on_plane: dict[tuple[float, float], list[str]] = {}
    off = []
    for m in markers:
        name, mx, my = m[0], float(m[1]), float(m[2])
        dist = float(m[3]) if len(m) > 3 else 0.0
        if not (np.isfinite(mx) and np.isfinite(my)):
            continue
        if dist > 0.05 * max(extent, 1e-12):
            off.append((name, mx, my, dist))
        else:
            on_plane.setdefault((round(mx, 9), round(my, 9)), []).append(name)
    for (mx, my), names in on_plane.items():
        ax.plot(mx, my, "o", color="red", ms=6, mec="white")
        ax.annotate(", ".join(names), (mx, my), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if len(off) <= MAX_LISTED:
        for name, mx, my, dist in off:
            ax.plot(mx, my, "o", mfc="none", mec="grey", ms=6, label=f"{name}: off the plane by {dist:.3g}")
    else:
        d = [o[3] for o in off]
        ax.plot([o[1] for o in off], [o[2] for o in off], "o", mfc="none", mec="grey", ms=6,
                label=f"{len(off)} snapshots off the plane (by {min(d):.3g} to {max(d):.3g})")


def _comparable(xs: np.ndarray, ys: np.ndarray) -> bool:
    sx, sy = np.ptp(xs), np.ptp(ys)
    return sx > 0 and sy > 0 and 0.2 < sx / sy < 5


def plot_matrix(names: Sequence[str], matrix: np.ndarray, out: str, title: str = "", label: str = "barrier") -> str:
    """A square matrix (barriers between members) as an image; non-finite cells are gaps marked '–'."""
    check_figure_path(out)
    return save_figure(matrix_figure(names, matrix, title, label), out)


def matrix_figure(names: Sequence[str], matrix: np.ndarray, title: str = "", label: str = "barrier"):
    """The Figure of `plot_matrix`."""
    m = _as_floats(matrix, label)
    n = len(names)
    if m.shape != (n, n):
        raise LandscapeError(f"{label} has shape {list(m.shape)} for {n} names")
    z = np.ma.masked_invalid(m)
    if z.count() == 0:
        raise _nothing_to_draw(label)
    bad = np.ma.getmaskarray(z)
    norm = colors.Normalize(vmin=float(z.min()), vmax=float(z.max()))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1 + 0.6 * n))
    im = ax.imshow(z, cmap="magma", norm=norm)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if bad[i, j]:
                ax.text(j, i, "–", ha="center", va="center", fontsize=6, color="grey")
            else:
                r, g, b, _ = im.cmap(norm(m[i, j]))
                shade = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"  # readable on the cell
                ax.text(j, i, f"{m[i, j]:.2g}", ha="center", va="center", fontsize=6, color=shade)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    return fig


def plot_by_size(series: Mapping[str, Sequence[float]], out: str, ylabel: str, title: str = "") -> str:
    """Ensemble metric against ensemble size, one line per method; non-finite values are gaps."""
    check_figure_path(out)
    return save_figure(by_size_figure(series, ylabel, title), out)


def by_size_figure(series: Mapping[str, Sequence[float]], ylabel: str, title: str = ""):
    """The Figure of `plot_by_size`."""
    lines = {name: _gaps(_as_floats(values, f"{ylabel} of {name}").reshape(-1)) for name, values in series.items()}
    lines = {name: v for name, v in lines.items() if np.isfinite(v).any()}
    if not lines:
        raise _nothing_to_draw(ylabel)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, v in lines.items():
        ax.plot(np.arange(1, v.size + 1), v, "-o", ms=4, label=name)
    ax.set_xlabel("ensemble size"), ax.set_ylabel(ylabel), ax.legend(fontsize=8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # sizes are whole numbers
    ax.set_title(title)
    return fig


def _error_or_loss(metrics: Mapping[str, np.ndarray], split: str, kind: str) -> np.ndarray | None:
    v = metrics.get(f"{split}_loss" if kind == "loss" else f"{split}_acc")
    return None if v is None else (1.0 - v if kind == "error" else v)


def _barrier_label(b: Mapping[str, float] | None, sym: str) -> str:
    return "" if not b else f" (barrier {b['barrier']:+.3g} at {sym}={b['alpha']:.2f})"


def connection_figure(series: Mapping[str, Any], title: str = "", log: bool = False):
    """A connection (landscape.view.connection_series): train/test loss and error of the trained
    curve (solid) and of the straight line (dashed) against t, both barriers in the legend.

    On each axes the lines come in the order: train curve, train line, test curve, test line
    (those the connection holds)."""
    t = np.asarray(series["alphas"], dtype=np.float64)
    curve_kind = series.get("curve_kind") or "trained"
    drawn = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, kind in zip(axes, ("loss", "error")):
        bkey = "loss" if kind == "loss" else "error"
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            for path, style, marker, barriers, what in (
                    ("curve", "-", "o", series.get("barriers"), f"{curve_kind} curve"),
                    ("line", "--", "s", series.get("line_barriers"), "straight line")):
                v = _error_or_loss(series[path], split, kind)
                if v is None:
                    continue
                v = _gaps(v, log and kind == "loss")
                b = (barriers or {}).get(f"{split}_{bkey}")
                if b is None and np.isfinite(v).all():
                    h, peak = barrier(t, v)
                    b = {"barrier": h, "alpha": peak}
                ax.plot(t, v, style, marker=marker, ms=3 if marker == "o" else 4, color=color,
                        mfc=color if marker == "o" else "white",
                        label=f"{split} {kind}, {what}{_barrier_label(b, 't')}")
                drawn.append(np.isfinite(v).any())
        ax.set_xlabel("t"), ax.set_ylabel(kind)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
        if log and kind == "loss" and ax.lines:
            ax.set_yscale("log")
    if not any(drawn):
        plt.close(fig)
        raise _nothing_to_draw("the connection's losses and errors")
    a, b = series.get("a"), series.get("b")
    fig.suptitle(f"{title}: {a} → {b}" if a and b else title)
    return fig


def hessian_figure(series: Mapping[str, Any], title: str = "", log: bool = False):
    """A Hessian result (landscape.view.hessian_series).

    Snapshots: the top eigenvalues per snapshot (one line per rank: λ1, λ2, ... in ax.lines of the
    first axes), the trace with its standard error when computed, and the spectral density of each
    snapshot when stored (log scale). Along a line: the same against α, one density per point."""
    ev = np.asarray(series["eigenvalues"], dtype=np.float64)
    if not np.isfinite(ev).any():
        raise _nothing_to_draw("the eigenvalues")
    line = series["mode"] == "line"
    x = np.asarray(series["alphas"], dtype=np.float64) if line else np.arange(ev.shape[0], dtype=np.float64)
    trace = series.get("trace")
    has_trace = trace is not None and np.isfinite(trace).any()
    if line:
        curves = [] if series.get("density") is None else \
            [(f"α={a:.3g}", series["density_grid"], d) for a, d in zip(x, series["density"])]
    else:
        curves = [(lab, d[0], d[1]) for lab, d in zip(series["labels"], series.get("densities") or []) if d is not None]
    n_axes = 1 + has_trace + bool(curves)
    fig, axes = plt.subplots(1, n_axes, figsize=(4.6 * n_axes + 0.6, 4.2), squeeze=False)
    axes = list(axes[0])
    ax = axes[0]
    style = "-o" if line else "o"  # snapshots are not a sequence: no line between them
    for k in range(ev.shape[1]):
        ax.plot(x, _gaps(ev[:, k], log), style, ms=4 if line else 6, label=f"λ{k + 1}")
    ax.set_title("top eigenvalues", fontsize=10), ax.set_ylabel("eigenvalue")
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    nxt = 1
    if has_trace:
        tax = axes[nxt]
        nxt += 1
        err = series.get("trace_stderr")
        tax.errorbar(x, _gaps(np.asarray(trace, dtype=np.float64)),
                     yerr=None if err is None else np.where(np.isfinite(err), err, 0.0), fmt=style, ms=4, capsize=3,
                     color="tab:green", label="trace ± standard error")
        tax.set_title("trace (Hutchinson)", fontsize=10), tax.set_ylabel("trace")
    if curves:
        dax = axes[nxt]
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(curves)))
        top = 0.0
        for (label, grid, dens), c in zip(curves, colours):
            d = _gaps(np.asarray(dens, dtype=np.float64), log=True)
            if np.isfinite(d).any():
                top = max(top, float(np.nanmax(d)))
            dax.plot(np.asarray(grid, dtype=np.float64), d, "-", lw=1.2, color=c, label=label)
        dax.set_yscale("log")
        if top > 0:
            dax.set_ylim(top * 1e-6, top * 2)  # the tails of the Gaussian kernels go down to 1e-300
        dax.set_title("spectral density (SLQ)", fontsize=10), dax.set_xlabel("eigenvalue"), dax.set_ylabel("density")
        dax.legend(fontsize=7, ncol=1 if len(curves) <= 6 else 2)
    for a in axes[: 1 + has_trace]:
        if line:
            a.set_xlabel("α")
        else:
            a.set_xticks(x, series["labels"], rotation=30 if len(x) > 3 else 0, ha="right" if len(x) > 3 else "center",
                         fontsize=7)
            a.set_xlabel("snapshot")
            a.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(x))
            a.set_xlim(-0.5, len(x) - 0.5)
    a, b = series.get("a"), series.get("b")
    fig.suptitle(f"{title}: along {a} → {b}" if line and a and b else title)
    fig.tight_layout()
    return fig


def _title(r: Result) -> str:
    bn = r.attrs.get("bn_mode") or (r.parts[0].attrs.get("bn_mode") if r.parts else None)
    return f"{r.name} (BN {bn})" if bn else r.name


def _available(r: Result) -> list[str]:
    if r.kind == "ensembles":
        ends = ("acc", "nll", "ece", "brier", "kl", "disagreement", "member_acc")
    elif r.kind in ("hessians", "connections"):
        return []
    else:
        ends = ("_loss", "_acc", "_barrier")
    return sorted(k for k, v in r.arrays.items() if np.ndim(v) >= 1 and k.endswith(ends))


def draw_result(path: str, name: str, *, kind: str | None = None, metric: str | None = None,
                style: str = "contour", log: bool = False):
    """The Figure of the stored result `name` of the store folder `path` (not written; see
    `plot_result`): a curve, surface, barrier matrix, ensemble, Hessian or connection. `kind`
    picks among results of the same name in different kinds."""
    return result_figure(load(path, name, kind), metric=metric, style=style, log=log)


def result_figure(r: Result, *, metric: str | None = None, style: str = "contour", log: bool = False):
    """The Figure of a result read by landscape.view (`draw_result` of an object in hand)."""
    name = r.name
    title = _title(r)
    available = _available(r)
    if metric is not None and r.kind in ("curves", "hessians", "connections"):
        raise LandscapeError(f"a {singular(r.kind)} is drawn with all its metrics: leave out --metric")
    if metric is not None and metric not in available:
        raise LandscapeError(f"{singular(r.kind)} {name!r} has no metric {metric!r}: choose {', '.join(available)}")
    if r.kind != "surfaces" and style != "contour":
        raise LandscapeError(f"--style {style} is for surfaces; {name!r} is a {singular(r.kind)}")
    if r.kind == "curves":
        return curve_figure(curve_series(r)["alphas"], r.arrays, title, log=log)
    if r.kind == "surfaces":
        s = surface_series(r)
        metric = metric or next(m for m in ("test_loss", "train_loss") if m in s["metrics"] or m in r.arrays)
        values = s["metrics"].get(metric)
        values = r.arrays[metric] if values is None else values
        markers = [(os.path.basename(n), x, y, d) for n, x, y, d in s["projections"]]
        path_points = [[os.path.basename(n), x, y, d, ""] for n, x, y, d in s["path"]]
        extent = max(np.ptp(s["xs"]), np.ptp(s["ys"]), 1e-12)
        for i, m in reversed(list(enumerate(markers))):  # one of the trajectory (the centre, often): named on it
            hit = next((p for p in path_points if p[0] == m[0] and abs(p[1] - m[1]) + abs(p[2] - m[2]) < 1e-6 * extent),
                       None)
            if hit is not None:
                del markers[i]
                hit[4] = "centre" if i == 0 else ""
        labels = None
        if s["kind"] == "pca":
            unit = f" ({s['unit']})" if s["unit"] else ""
            ratio = s["explained_variance_ratio"]
            labels = tuple(f"PC{i + 1}: {100 * ratio[i]:.1f}% of the variance{unit}" if ratio else f"PC{i + 1}{unit}"
                           for i in range(2))
        return plane_figure(s["xs"], s["ys"], values, style, log, title, markers, metric, unit=s["unit"],
                            equal_aspect=s["coords"] != "relative", path=path_points, axis_labels=labels)
    if r.kind == "barriers":
        s = barrier_series(r)
        metric = metric or next((m for m in ("test_loss_barrier", "train_loss_barrier") if m in s["matrices"]),
                                next(iter(s["matrices"])))
        if metric not in s["matrices"]:
            raise LandscapeError(f"barrier matrix {name!r}: --metric {metric} is not a matrix; choose "
                                 f"{', '.join(s['matrices'])}")
        return matrix_figure([os.path.basename(n) for n in s["names"]], s["matrices"][metric], title, metric)
    if r.kind == "ensembles":
        s = ensemble_series(r)
        metric = metric or "nll"
        values = s["metrics"].get(metric)
        return by_size_figure({name: r.arrays[metric] if values is None else values}, metric, title)
    if r.kind == "hessians":
        return hessian_figure(hessian_series(r), title, log=log)
    return connection_figure(connection_series(r), title, log=log)


def plot_result(path: str, name: str, *, out: str | None = None, kind: str | None = None, metric: str | None = None,
                style: str = "contour", log: bool = False) -> dict[str, Any]:
    """Draw the stored result `name` (see `draw_result`) to `out` (.png, .pdf, .svg; default NAME.png
    beside the store folder, never inside it): the `landscape plot` command."""
    # beside the store folder, not inside it: the store holds only its own objects
    out = check_output_file(out or os.path.join(os.path.dirname(os.path.abspath(path)), f"{name}.png"), "--output")
    check_figure_path(out)
    r = load(path, name, kind)
    save_figure(result_figure(r, metric=metric, style=style, log=log), out)
    return {"kind": singular(r.kind), "name": name, "figure": out}
