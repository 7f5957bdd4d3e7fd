"""matplotlib figures: curves with their barrier, planes (contour, filled, heatmap, 3D), sizes.

Every function masks non-finite values (diverged or not yet computed points) so they are drawn
as gaps and never set a colour scale or contour level; a figure with nothing finite to draw is
refused with a LandscapeError. Figures are written atomically by `save_figure`.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402

from landscape.core.errors import LandscapeError  # noqa: E402
from landscape.geometry.lines import barrier  # noqa: E402
from landscape.store.atomic import write_atomically  # noqa: E402

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
    return save_figure(fig, out)


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
        _draw_markers(ax, markers, max(np.ptp(xs), np.ptp(ys)))
        if equal_aspect if equal_aspect is not None else _comparable(xs, ys):
            ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"x ({unit})" if unit else "x"), ax.set_ylabel(f"y ({unit})" if unit else "y")
    ax.set_title(title)
    return save_figure(fig, out)


def _draw_markers(ax, markers: Sequence[tuple], extent: float) -> None:
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
    for name, mx, my, dist in off:
        ax.plot(mx, my, "o", mfc="none", mec="grey", ms=6, label=f"{name}: off the plane by {dist:.3g}")
    if off:
        ax.legend(fontsize=6, loc="upper right", title="projected (not on the plane)", title_fontsize=6)


def _comparable(xs: np.ndarray, ys: np.ndarray) -> bool:
    sx, sy = np.ptp(xs), np.ptp(ys)
    return sx > 0 and sy > 0 and 0.2 < sx / sy < 5


def plot_matrix(names: Sequence[str], matrix: np.ndarray, out: str, title: str = "", label: str = "barrier") -> str:
    """A square matrix (barriers between members) as an image; non-finite cells are gaps marked '–'."""
    check_figure_path(out)
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
    return save_figure(fig, out)


def plot_by_size(series: Mapping[str, Sequence[float]], out: str, ylabel: str, title: str = "") -> str:
    """Ensemble metric against ensemble size, one line per method; non-finite values are gaps."""
    check_figure_path(out)
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
    return save_figure(fig, out)
