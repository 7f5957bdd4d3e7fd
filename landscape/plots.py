"""matplotlib figures: curves with their barrier, planes (contour, filled, heatmap, 3D), sizes."""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors  # noqa: E402

from .errors import LandscapeError  # noqa: E402
from .lines import barrier  # noqa: E402

PLANE_STYLES = ("contour", "filled", "heatmap", "3d")


def _save(fig, out: str) -> str:
    ext = os.path.splitext(out)[1].lower()
    if ext not in (".png", ".pdf", ".svg"):
        raise LandscapeError(f"figure {out!r}: use a .png, .pdf or .svg file name")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_curve(alphas: Sequence[float], curve: Mapping[str, np.ndarray], out: str, title: str = "",
               log: bool = False) -> str:
    """Loss and error along a line, each split on its own axes, with the barrier marked."""
    a = np.asarray(alphas)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, kind in zip(axes, ("loss", "error")):
        for split, color in (("train", "tab:blue"), ("test", "tab:orange")):
            if f"{split}_loss" not in curve:
                continue
            v = np.asarray(curve[f"{split}_loss"]) if kind == "loss" else 1.0 - np.asarray(curve[f"{split}_acc"])
            ax.plot(a, v, "-o", ms=3, color=color, label=f"{split} {kind}")
            if np.isfinite(v).all():
                h, peak = barrier(a, v)
                i0, i1 = int(np.argmin(np.abs(a))), int(np.argmin(np.abs(a - 1)))
                chord = (1 - peak) * v[i0] + peak * v[i1]
                ax.vlines(peak, chord, chord + h, color=color, linestyles="--")
                ax.annotate(f"barrier {h:.3g}", (peak, chord + h), textcoords="offset points",
                            xytext=(4, 4), color=color, fontsize=8)
        ax.set_xlabel("α"), ax.set_ylabel(kind), ax.legend()
        if log and kind == "loss":
            ax.set_yscale("log")
    fig.suptitle(title)
    return _save(fig, out)


def plot_plane(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, out: str, style: str = "contour",
               log: bool = False, title: str = "", markers: Sequence[tuple[str, float, float]] = (),
               label: str = "loss") -> str:
    """A surface [len(xs), len(ys)]; NaN/inf points are masked; markers are (label, x, y)."""
    if style not in PLANE_STYLES:
        raise LandscapeError(f"unknown plot style {style!r}: choose {', '.join(PLANE_STYLES)}")
    z = np.ma.masked_invalid(np.asarray(values, dtype=np.float64).T)  # rows = y for matplotlib
    if log:
        z = np.ma.masked_less_equal(z, 0)
    if z.count() == 0:
        raise LandscapeError("nothing to plot: the surface has no finite values yet")
    gx, gy = np.meshgrid(xs, ys)
    norm = colors.LogNorm(vmin=z.min(), vmax=z.max()) if log and z.min() > 0 else None
    if style == "3d":
        fig = plt.figure(figsize=(7, 6))
        ax = fig.add_subplot(projection="3d")
        zz = np.log10(z) if log else z
        ax.plot_surface(gx, gy, zz.filled(np.nan), cmap="viridis", linewidth=0, antialiased=True)
        ax.set_zlabel(f"log10 {label}" if log else label)
    else:
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        if style == "heatmap":
            im = ax.pcolormesh(gx, gy, z, shading="auto", cmap="viridis", norm=norm)
        elif style == "filled":
            im = ax.contourf(gx, gy, z, levels=20, cmap="viridis", norm=norm)
        else:
            im = ax.contour(gx, gy, z, levels=20, cmap="viridis", norm=norm)
            ax.clabel(im, fontsize=6)
        fig.colorbar(im, ax=ax, label=label)
        for name, mx, my in markers:
            ax.plot(mx, my, "o", color="red", ms=6, mec="white")
            ax.annotate(name, (mx, my), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_aspect("equal", adjustable="box") if _comparable(xs, ys) else None
    ax.set_xlabel("x"), ax.set_ylabel("y")
    ax.set_title(title)
    return _save(fig, out)


def _comparable(xs: np.ndarray, ys: np.ndarray) -> bool:
    sx, sy = np.ptp(xs), np.ptp(ys)
    return sx > 0 and sy > 0 and 0.2 < sx / sy < 5


def plot_matrix(names: Sequence[str], matrix: np.ndarray, out: str, title: str = "", label: str = "barrier") -> str:
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(names), 1 + 0.6 * len(names)))
    im = ax.imshow(matrix, cmap="magma")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2g}", ha="center", va="center", fontsize=6, color="white")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    return _save(fig, out)


def plot_by_size(series: Mapping[str, Sequence[float]], out: str, ylabel: str, title: str = "") -> str:
    """Ensemble metric against ensemble size, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, values in series.items():
        ax.plot(np.arange(1, len(values) + 1), values, "-o", ms=4, label=name)
    ax.set_xlabel("ensemble size"), ax.set_ylabel(ylabel), ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, out)
