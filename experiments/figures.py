"""The study's figures (matplotlib, through landscape.plots' Agg backend), each written atomically.

- ensemble_by_size.png: ensemble accuracy and NLL against ensemble size, every method;
- barrier_vs_cycle_lr.png: SSE/StarSSE barrier, member and ensemble accuracy against cycle lr;
- plane.png: test error on the plane through the fine-tuned model and two members, every
  member projected onto it.

Values that are missing (None) or not finite are drawn as gaps, never as a crash.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import matplotlib
import matplotlib.ticker
import numpy as np

from landscape.errors import LandscapeFault
from landscape.plots import plt, save_figure  # the toolkit's matplotlib, already on the Agg backend

from .markdown import TYPE_LABEL

COLORS = {"local_de": "tab:blue", "global_de": "tab:red", "sse": "tab:orange", "starsse": "tab:green",
          "fge": "tab:purple", "swa": "tab:pink"}


def method_color(summary: dict[str, Any], name: str) -> Any:
    """One colour per method type; SSE/StarSSE shaded light (small cycle lr) to dark (large)."""
    m = summary["methods"][name]
    if m["type"] not in ("sse", "starsse"):
        return COLORS.get(m["type"], "gray")
    same = sorted({q["params"]["lr_scale"] for q in summary["methods"].values() if q["type"] == m["type"]})
    frac = 0.55 if len(same) == 1 else 0.35 + 0.6 * same.index(m["params"]["lr_scale"]) / (len(same) - 1)
    return matplotlib.colormaps["Oranges" if m["type"] == "sse" else "Greens"](frac)


def _arr(xs: Iterable[Any], scale: float = 1.0) -> np.ndarray:
    """Values as floats, None as nan (a gap in the plot)."""
    return scale * np.array([np.nan if x is None else float(x) for x in xs], dtype=float)


def _val(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _save(fig: Any, path: str) -> str:
    return save_figure(fig, path, dpi=110)  # atomically, and closes the figure


def _largest_lr(summary: dict, t: str) -> dict | None:
    ms = [m for m in summary["methods"].values() if m["type"] == t]
    return max(ms, key=lambda m: m["params"]["lr_scale"]) if len(ms) > 1 else None


def fig_ensembles(summary: dict[str, Any], out: str) -> str:
    """Ensemble accuracy and NLL by size; returns the file written."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, m in summary["methods"].items():
        sizes = np.arange(1, len(m["ensemble_acc"]) + 1)
        style = "--" if m["type"] in ("sse", "starsse") and m is _largest_lr(summary, m["type"]) else "-"
        kw = dict(color=method_color(summary, name), ls=style, marker="o", ms=4, label=m["label"])
        axes[0].plot(sizes, _arr(m["ensemble_acc"], 100), **kw)
        axes[1].plot(sizes, _arr(m["ensemble_nll"]), **kw)
    tr = summary["transfer"]
    for ax, key, scale in ((axes[0], "acc", 100), (axes[1], "nll", 1)):
        if tr.get(f"scratch_{key}") is not None:
            ax.axhline(scale * _val(tr[f"scratch_{key}"]), color="gray", ls=":", label="from scratch")
        ax.set_xlabel("ensemble size")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("test accuracy (%)"), axes[1].set_ylabel("test NLL")
    axes[0].set_title("ensemble accuracy by size"), axes[1].set_title("ensemble NLL by size")
    axes[1].legend(fontsize=7, loc="upper right")
    return _save(fig, out)


def fig_barrier_vs_lr(summary: dict[str, Any], out: str) -> str | None:
    """Barrier, member and ensemble accuracy against the cycle lr; None without SSE/StarSSE."""
    cyc = [m for m in summary["methods"].values() if m["type"] in ("sse", "starsse")]
    if not cyc:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for t in ("sse", "starsse"):
        ms = sorted((m for m in cyc if m["type"] == t), key=lambda m: m["cycle_lr"])
        if not ms:
            continue
        x = [m["cycle_lr"] for m in ms]
        kw = dict(color=COLORS[t], marker="o", label=TYPE_LABEL[t])
        axes[0].plot(x, _arr(m["new_member_mean_barrier_test_loss"] for m in ms), **kw)
        axes[1].plot(x, _arr((m["new_member_mean_acc"] for m in ms), 100), **kw)
        axes[2].plot(x, _arr((m["ensemble_acc"][-1] for m in ms), 100), **kw)
    tr = summary["transfer"]
    for m in summary["methods"].values():
        if m["type"] in ("local_de", "global_de") and m.get("mean_pairwise_barrier"):
            axes[0].axhline(_val(m["mean_pairwise_barrier"]["test_loss"]), color=COLORS[m["type"]], ls=":",
                            label=f"{m['label']} mean pairwise")
            axes[2].axhline(100 * _val(m["ensemble_acc"][-1]), color=COLORS[m["type"]], ls=":", label=m["label"])
    axes[1].axhline(100 * _val(tr["finetuned_acc"]), color="black", ls=":", label="fine-tuned model")
    if tr["scratch_acc"] is not None:
        axes[1].axhline(100 * _val(tr["scratch_acc"]), color="gray", ls="--", label="from scratch")
    titles = ("test-loss barrier to the fine-tuned model", "individual member accuracy (%)",
              f"ensemble accuracy, size {summary['study']['members']} (%)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log"), ax.set_xlabel("cycle learning rate η_c"), ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, out)


def fig_plane(summary: dict[str, Any], results: dict[str, Any], out: str) -> str | None:
    """Test error on the plane (BN recomputed); None when no plane was computed or no point is finite."""
    plane = results.get("plane")
    if not plane:
        return None
    xs, ys = np.asarray(plane["xcoordinates"], dtype=float), np.asarray(plane["ycoordinates"], dtype=float)
    err = 1.0 - _arr(np.ravel(np.asarray(plane["test_acc"], dtype=object))).reshape(len(xs), len(ys))
    if not np.isfinite(err).any():
        return None
    lo, hi = float(np.nanmin(err)), min(1.0, float(np.nanmax(err)))
    if not hi > lo:  # a flat surface: contourf needs increasing levels
        hi = lo + 1e-3
    fig, ax = plt.subplots(figsize=(7.5, 6))
    gx, gy = np.meshgrid(xs, ys)
    cs = ax.contourf(gx, gy, 100 * err.T, levels=100 * np.linspace(lo, hi, 21), cmap="viridis_r")
    fig.colorbar(cs, ax=ax, label="test error (%), BN recomputed", format="%.0f")
    labels = {n: m["label"] for n, m in summary["methods"].items()}
    shown = set()
    for p in plane["projections"]:
        if not (xs.min() <= p["x"] <= xs.max() and ys.min() <= p["y"] <= ys.max()):
            continue
        lab = labels.get(p["method"]) if p["method"] not in shown else None
        shown.add(p["method"])
        ax.scatter(p["x"], p["y"], color=method_color(summary, p["method"]), edgecolor="white", s=45, zorder=3,
                   label=lab)
    ax.scatter([0], [0], marker="*", s=220, color="white", edgecolor="black", zorder=4, label="fine-tuned")
    for name in plane["through"][1:]:
        p = next(q for q in plane["projections"] if q["name"] == name)
        ax.annotate(name, (p["x"], p["y"]), textcoords="offset points", xytext=(6, 6), fontsize=8, color="black")
    ax.set_title(f"plane through {', '.join(plane['through'])}", fontsize=10)
    ax.set_xlabel("u (weight-space distance)"), ax.set_ylabel("v")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def write_figures(summary: dict[str, Any], results: dict[str, Any], figdir: str) -> dict[str, str]:
    """Every figure that applies to this study, into `figdir`: {title: path}."""
    try:
        os.makedirs(figdir, exist_ok=True)
    except OSError as exc:
        raise LandscapeFault(f"cannot create {figdir}: {exc.strerror or exc}") from None
    figures = {"ensemble accuracy and NLL by size": fig_ensembles(summary, os.path.join(figdir, "ensemble_by_size.png"))}
    p = fig_barrier_vs_lr(summary, os.path.join(figdir, "barrier_vs_cycle_lr.png"))
    if p:
        figures["barrier and accuracy against cycle learning rate"] = p
    p = fig_plane(summary, results, os.path.join(figdir, "plane.png"))
    if p:
        figures["plane through the fine-tuned model and two members"] = p
    return figures
