"""The study's figures (matplotlib, through landscape.plots' Agg backend), each written atomically.

From the aggregate over seeds (experiments.aggregate: every number a mean with its std over
seeds) and the first seed's analysis results (experiments.seed_analysis):

- ensemble_by_size.png: ensemble test accuracy and NLL against ensemble size, and accuracy
  against the members' training cost in epochs, for the cell chosen in each config table, mean
  with ±std error bars over seeds; the from-scratch model as reference;
- grid_vs_cycle_lr.png: each grid family's (SSE, StarSSE; cyclic FGE with several cells)
  ensemble accuracy and NLL against the cycle lr η_c, one line per cycle length C, error bars =
  std over seeds, markers filled when the cell's members are in the pre-train basin and hollow
  when out, the chosen cell ringed, Local DE and Global DE as reference lines with std bands;
- members_vs_cycle_lr.png: the same grid's individual members: accuracy (fine-tuned model and
  training from scratch as references), train-loss and test-error barriers to the fine-tuned
  model, distance to it; Local DE, Global DE and the barrier margin as references;
- plane.png: the first seed's plane, train loss beside test error (BN recomputed), every member
  projected onto it, the three points that define it marked;
- interpolation.png: the first seed's curves from the fine-tuned model (α = 0) to one member
  (α = 1) of Local DE, Global DE and, per SSE/StarSSE family, its smallest and largest cycle lr
  at the longest cycle length: train loss and test error along α.

The series each grid figure draws come from functions that return them (`ensemble_series`,
`cell_series`, `interpolation_series`), so tests compare the plotted data with their own numbers.
Values that are missing (None) or not finite (a diverged seed; "nan"/"inf" as summary.json
encodes them) are drawn as gaps, never as a crash. A figure that does not apply is skipped.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import matplotlib
import matplotlib.lines
import matplotlib.ticker
import numpy as np
from matplotlib import colors as mcolors

from landscape.core.errors import LandscapeFault
from landscape.plots import plt, save_figure  # the toolkit's matplotlib, already on the Agg backend

from .markdown import TYPE_LABEL
from .summary import cost_epochs

# One colour family per method type: a base colour, and a colormap for the cells of a grid.
COLORS = {"local_de": "tab:blue", "global_de": "tab:red", "sse": "tab:orange", "starsse": "tab:green",
          "fge": "tab:purple", "swa": "tab:pink"}
CMAPS = {"local_de": "Blues", "global_de": "Reds", "sse": "Oranges", "starsse": "Greens", "fge": "Purples",
         "swa": "RdPu"}
GRID_TYPES = ("sse", "starsse")  # always drawn against η_c; other cycle methods only with several cells
REFERENCE_TYPES = ("local_de", "global_de")
LINESTYLES = ("-", "--", "-.", ":")


# ----------------------------------------------------------------------------- values

def _num(x: Any) -> float:
    """A plottable float: None (not computed), "nan"/"inf" strings and anything unreadable as nan/inf."""
    if x is None or isinstance(x, bool):
        return math.nan
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _arr(xs: Iterable[Any], scale: float = 1.0) -> np.ndarray:
    """Values as floats, None as nan (a gap in the plot)."""
    return scale * np.array([_num(x) for x in xs], dtype=float)


def _ms(st: Any) -> tuple[float, float]:
    """(mean, std) of an aggregate statistic {"mean", "std", ...}; nan where missing (one seed: std nan)."""
    if isinstance(st, dict):
        return _num(st.get("mean")), _num(st.get("std"))
    return _num(st), math.nan


def _stat(m: dict[str, Any], key: str) -> tuple[float, float]:
    return _ms((m.get("stats") or {}).get(key))


def _finite(x: float) -> bool:
    return x is not None and math.isfinite(x)


def _save(fig: Any, path: str) -> str:
    return save_figure(fig, path, dpi=110)  # atomically, and closes the figure


def _n_seeds(summary: dict[str, Any]) -> int:
    return len((summary.get("study") or {}).get("seeds") or [None])


def _over_seeds(summary: dict[str, Any]) -> str:
    n = _n_seeds(summary)
    return f"mean ± std over {n} seeds" if n > 1 else "1 seed: no spread"


def _shade(t: str, i: int, n: int) -> Any:
    """The i-th of n shades of type t's colour family, light to dark."""
    frac = 0.65 if n <= 1 else 0.4 + 0.55 * i / (n - 1)
    return matplotlib.colormaps[CMAPS.get(t, "Greys")](frac)


# ----------------------------------------------------------------------------- the grid

def _lr_multiple(summary: dict[str, Any], m: dict[str, Any]) -> float:
    """A cell's cycle lr in multiples of the fine-tuning lr η (params' lr_scale, else cycle_lr / η)."""
    p = m.get("params") or {}
    if p.get("lr_scale") is not None:
        return _num(p["lr_scale"])
    eta = _num(((summary.get("study") or {}).get("finetune") or {}).get("lr"))
    return _num(m.get("cycle_lr")) / eta if _finite(eta) and eta > 0 else math.nan


def _cycle(summary: dict[str, Any], m: dict[str, Any]) -> tuple[float, str]:
    """(length in epochs for ordering, legend label) of a cell's cycle."""
    p = m.get("params") or {}
    E = _num(((summary.get("study") or {}).get("finetune") or {}).get("epochs"))
    if p.get("cycle_scale") is not None:
        c = _num(p["cycle_scale"])
        return (c * E if _finite(E) else c), f"C = {c:g}·E"
    if p.get("cycle_epochs") is not None:
        c = _num(p["cycle_epochs"])
        return c, f"C = {c:g} epochs"
    return math.nan, "C = ?"


def _family(m: dict[str, Any]) -> str:
    if m["type"] == "fge":
        return f"fge_{(m.get('params') or {}).get('schedule', 'garipov')}"
    return m["type"]


def _family_label(key: str, t: str) -> str:
    if key.startswith("fge_"):
        return f"FGE ({key[4:]})"
    return TYPE_LABEL.get(t, key)


def grid_families(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The families drawn against η_c: every SSE/StarSSE cell (any config table of that type), and
    any other cycle family (cyclic FGE) with at least two cells. Each: family, type, label, and
    its cells' method names."""
    fams: dict[str, dict[str, Any]] = {}
    for name, m in summary.get("methods", {}).items():
        if m.get("type") not in ("sse", "starsse", "fge") or not _finite(_lr_multiple(summary, m)):
            continue
        key = _family(m)
        fams.setdefault(key, {"family": key, "type": m["type"], "label": _family_label(key, m["type"]),
                              "names": []})["names"].append(name)
    order = {"sse": 0, "starsse": 1}
    keep = [f for f in fams.values() if f["type"] in GRID_TYPES or len(f["names"]) >= 2]
    return sorted(keep, key=lambda f: (order.get(f["family"], 2), f["family"]))


def _chosen(summary: dict[str, Any], names: Sequence[str]) -> list[str]:
    """The cells of `names` chosen on validation in a config table that had a choice (more than one cell)."""
    out = []
    for sel in (summary.get("selected") or {}).values():
        if sel.get("cell") in names and (sel.get("cells") or 1) > 1:
            out.append(sel["cell"])
    return out


def cell_series(summary: dict[str, Any], keys: Sequence[str]) -> list[dict[str, Any]]:
    """What the grid figures plot, per family (grid_families) and cycle length:
    {"family", "type", "label", "chosen": [cell names], "lines": [{"cycle": label, "cycle_epochs",
    "names", "x": η_c / η, "basin": ["in"/"out"/None], key: {"mean": array, "std": array} for each
    key}]} — lines by increasing cycle length, cells by increasing η_c, values in the summary's
    units (fractions, not percent)."""
    out = []
    for fam in grid_families(summary):
        by_c: dict[str, list[str]] = {}
        length: dict[str, float] = {}
        for name in fam["names"]:
            c, lab = _cycle(summary, summary["methods"][name])
            by_c.setdefault(lab, []).append(name)
            length[lab] = c
        lines = []
        for lab in sorted(by_c, key=lambda k: (not _finite(length[k]), length[k] if _finite(length[k]) else 0, k)):
            names = sorted(by_c[lab], key=lambda n: _lr_multiple(summary, summary["methods"][n]))
            ms = [summary["methods"][n] for n in names]
            line: dict[str, Any] = {"cycle": lab, "cycle_epochs": length[lab], "names": names,
                                    "x": np.array([_lr_multiple(summary, m) for m in ms], dtype=float),
                                    "basin": [m.get("basin") for m in ms]}
            for k in keys:
                st = [_stat(m, k) for m in ms]
                line[k] = {"mean": np.array([s[0] for s in st], dtype=float),
                           "std": np.array([s[1] for s in st], dtype=float)}
            lines.append(line)
        out.append({**{k: fam[k] for k in ("family", "type", "label")}, "chosen": _chosen(summary, fam["names"]),
                    "lines": lines})
    return out


def _references(summary: dict[str, Any], types: Sequence[str] = REFERENCE_TYPES) -> list[tuple[str, str]]:
    """(name, type) of the reference methods (Local DE, Global DE) in the summary."""
    return [(n, m["type"]) for n, m in summary.get("methods", {}).items() if m.get("type") in types]


def _hline(ax: Any, mean: float, std: float, color: Any, ls: str, label: str, scale: float = 1.0) -> Any:
    """A reference line with its ±std band; nothing when the mean is not finite. Returns the line."""
    if not _finite(mean):
        return None
    line = ax.axhline(scale * mean, color=color, ls=ls, lw=1.2, label=label, zorder=1)
    if _finite(std) and std > 0:
        ax.axhspan(scale * (mean - std), scale * (mean + std), color=color, alpha=0.1, lw=0, zorder=0)
    return line


def _reference_in_range(ax: Any, mean: float, std: float, color: Any, ls: str, label: str, scale: float,
                        unit: str) -> None:
    """A reference line, or, when it lies far outside the data drawn so far (it would squash them),
    a note at the edge of the axes saying where it is."""
    if not _finite(mean):
        return
    lo, hi = ax.get_ylim()
    pad = 0.3 * (hi - lo)
    v = scale * mean
    if lo - pad <= v <= hi + pad:
        _hline(ax, mean, std, color, ls, label, scale)
        return
    sd = f" ± {scale * std:.3g}" if _finite(std) else ""
    below = v < lo
    ax.annotate(f"{'▼' if below else '▲'} {label}: {v:.3g}{sd}{unit} (off the axis)",
                xy=(0.98, 0.03 if below else 0.97),
                xycoords="axes fraction", ha="right", va="bottom" if below else "top", fontsize=8, color="dimgray")


def _draw_cells(ax: Any, summary: dict[str, Any], fam: dict[str, Any], key: str, scale: float) -> list[Any]:
    """One line per cycle length with error bars, markers filled in the basin and hollow out of it,
    the chosen cell ringed. Cells of different C are spread a little along x so that error bars do
    not hide each other. Returns the legend handles of the lines."""
    handles = []
    n = len(fam["lines"])
    for i, line in enumerate(fam["lines"]):
        color = _shade(fam["type"], i, n)
        x = line["x"] * 1.05 ** (i - (n - 1) / 2)
        y, s = scale * line[key]["mean"], scale * line[key]["std"]
        h = ax.errorbar(x, y, yerr=np.where(np.isfinite(s), s, np.nan), color=color, lw=1.6, capsize=3,
                        label=line["cycle"], zorder=2)
        handles.append(h)
        for xi, yi, b, name in zip(x, y, line["basin"], line["names"]):
            if not np.isfinite(yi):
                continue
            if b == "out":
                ax.scatter([xi], [yi], s=46, marker="o", facecolors="white", edgecolors=[color], linewidths=1.8,
                           zorder=3)
            elif b == "in":
                ax.scatter([xi], [yi], s=46, marker="o", color=[color], edgecolors="black", linewidths=0.5, zorder=3)
            else:
                ax.scatter([xi], [yi], s=46, marker="x", color=[color], zorder=3)
            if name in fam["chosen"]:
                ax.scatter([xi], [yi], s=230, marker="o", facecolors="none", edgecolors="black", linewidths=1.4,
                           zorder=4)
    return handles


def _lr_axis(ax: Any, fam: dict[str, Any], summary: dict[str, Any], label: bool) -> None:
    xs = sorted({float(x) for line in fam["lines"] for x in line["x"] if np.isfinite(x) and x > 0})
    ax.set_xscale("log", base=2)
    if xs:
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}·η" for x in xs])
        ax.set_xlim(xs[0] / 1.5, xs[-1] * 1.5)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    if label:
        eta = _num(((summary.get("study") or {}).get("finetune") or {}).get("lr"))
        ax.set_xlabel("cycle learning rate η_c" + (f" (η = fine-tuning lr = {eta:g})" if _finite(eta) else ""))
    ax.grid(alpha=0.25)


def _marker_handles(summary: dict[str, Any], fams: list[dict[str, Any]]) -> list[Any]:
    """Legend proxies for what the markers mean."""
    L = matplotlib.lines.Line2D
    hs = [L([], [], ls="", marker="o", color="gray", markeredgecolor="black", markeredgewidth=0.5,
            label="members in the pre-train basin"),
          L([], [], ls="", marker="o", markerfacecolor="white", markeredgecolor="gray", markeredgewidth=1.8,
            label="members out of the basin")]
    if any(b not in ("in", "out") for f in fams for line in f["lines"] for b in line["basin"]):
        hs.append(L([], [], ls="", marker="x", color="gray", label="basin not determined"))
    if any(f["chosen"] for f in fams):
        on = {"val": "validation", "test": "test"}.get(summary.get("selection_split"), "validation")
        hs.append(L([], [], ls="", marker="o", markersize=14, markerfacecolor="none", markeredgecolor="black",
                    label=f"cell chosen on {on}"))
    hs.append(L([], [], color="gray", marker="|", markersize=10, label="error bars: std over seeds"))
    return hs


def _grid_figure(summary: dict[str, Any], fams: list[dict[str, Any]], rows: Sequence[tuple],
                 title: str, extra_refs: Any = None) -> Any:
    """The shared layout of the grid figures: a row per quantity, a column per family."""
    ncol = len(fams)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(4.9 * ncol + 0.5, 3.3 * len(rows) + 0.8), squeeze=False)
    ref_handles: dict[str, Any] = {}
    for j, fam in enumerate(fams):
        col_handles = []
        for i, (key, ylabel, scale) in enumerate(rows):
            ax = axes[i][j]
            for name, t in _references(summary):
                mean, std = _stat(summary["methods"][name], key)
                lab = f"{summary['methods'][name]['label']} (band: ± std)"
                h = _hline(ax, mean, std, COLORS[t], "--", lab, scale)
                if h is not None:
                    ref_handles.setdefault(lab, h)
            if extra_refs:
                for lab, h in extra_refs(ax, key, scale):
                    ref_handles.setdefault(lab, h)
            hs = _draw_cells(ax, summary, fam, key, scale)
            col_handles = col_handles or hs
            _lr_axis(ax, fam, summary, label=i == len(rows) - 1)
            ax.set_ylabel(ylabel, fontsize=9)
            if i == 0:
                ax.set_title(fam["label"], fontsize=11, fontweight="bold")
        if col_handles:
            axes[-1][j].legend(handles=col_handles, title=f"{fam['label']}: cycle length (E = fine-tuning epochs)",
                               title_fontsize=8, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22),
                               ncol=min(3, len(col_handles)), frameon=False)
    fig.legend(handles=list(ref_handles.values()) + _marker_handles(summary, fams), loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.suptitle(f"{title} ({_over_seeds(summary)})", fontsize=12, y=1.0 + 0.12 / fig.get_figheight(),
                 va="bottom")
    return fig


def fig_grid(summary: dict[str, Any], out: str) -> str | None:
    """Ensemble accuracy and NLL against η_c per family and cycle length; None without a grid."""
    fams = cell_series(summary, ("acc", "nll"))
    if not fams:
        return None
    K = (summary.get("study") or {}).get("members")
    size = f" of {K} members" if K else ""
    rows = (("acc", f"test accuracy (%) of the\nensemble{size}", 100.0),
            ("nll", f"test NLL (nats) of the\nensemble{size}", 1.0))
    fig = _grid_figure(summary, fams, rows, "Ensemble quality against the cycle learning rate")
    return _save(fig, out)


MEMBER_ROWS = (("new_member_mean_acc", "member test accuracy (%)", 100.0),
               ("new_member_mean_barrier_train_loss", "train-loss barrier to\nthe fine-tuned model (nats)", 1.0),
               ("new_member_mean_barrier_test_error", "test-error barrier to\nthe fine-tuned model (% points)", 100.0),
               ("new_member_mean_dist_finetuned", "distance to the fine-tuned\nmodel (L2, weight space)", 1.0))


def fig_members(summary: dict[str, Any], out: str) -> str | None:
    """Individual members against η_c: accuracy, barriers and distance to the fine-tuned model;
    None without a grid."""
    fams = cell_series(summary, [k for k, _, _ in MEMBER_ROWS])
    if not fams:
        return None
    margin = ((summary.get("study") or {}).get("verdicts") or {}).get("barrier_margin")
    tr = summary.get("transfer") or {}

    def extra(ax: Any, key: str, scale: float) -> list[tuple[str, Any]]:
        got = []
        if key == "new_member_mean_acc":
            for k, lab, color, ls in (("finetuned_acc", "fine-tuned model", "black", ":"),
                                      ("scratch_acc", "trained from scratch", "gray", "-.")):
                mean, std = _ms(tr.get(k))
                h = _hline(ax, mean, std, color, ls, f"{lab} (band: ± std)", scale)
                if h is not None:
                    got.append((f"{lab} (band: ± std)", h))
        if key == "new_member_mean_barrier_train_loss" and margin is not None:
            lab = "barrier margin (out of the basin above it, on the line and on a trained curve)"
            got.append((lab, ax.axhline(scale * margin, color="black", ls="-", lw=0.9, alpha=0.7, label=lab,
                                        zorder=1)))
        return got

    fig = _grid_figure(summary, fams, MEMBER_ROWS, "Individual members against the cycle learning rate "
                       "(members other than the fine-tuned model)", extra)
    return _save(fig, out)


# ----------------------------------------------------------------------------- ensembles by size

def ensemble_series(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """What ensemble_by_size.png plots: the cell chosen in each config table (every method when the
    summary has no selection), in the summary's method order: {"name", "label", "type", "sizes",
    "acc": {"mean", "std"}, "nll": {"mean", "std"}} (fractions, not percent)."""
    methods = summary.get("methods", {})
    chosen = {sel.get("cell") for sel in (summary.get("selected") or {}).values()}
    names = [n for n in methods if n in chosen] if summary.get("selected") else list(methods)
    out = []
    for name in names:
        m = methods[name]
        row: dict[str, Any] = {"name": name, "label": m.get("label", name), "type": m.get("type")}
        for k in ("acc", "nll"):
            st = (m.get("stats") or {}).get(f"ensemble_{k}") or []
            ms = [_ms(s) for s in st]
            row[k] = {"mean": np.array([a for a, _ in ms], dtype=float),
                      "std": np.array([b for _, b in ms], dtype=float)}
        row["sizes"] = np.arange(1, len(row["acc"]["mean"]) + 1)
        out.append(row)
    return out


def _cost_by_size(summary: dict[str, Any], name: str, sizes: np.ndarray) -> np.ndarray:
    """The training epochs of a method's first k members, for each k (summary.cost_epochs)."""
    m = summary["methods"][name]
    E = ((summary.get("study") or {}).get("finetune") or {}).get("epochs")
    try:
        return np.array([cost_epochs(m, E, int(k)) for k in sizes], dtype=float)
    except (KeyError, TypeError):  # a summary without the method's schedule: no cost to draw
        return np.full(len(sizes), np.nan)


def fig_ensembles(summary: dict[str, Any], out: str) -> str | None:
    """Ensemble accuracy and NLL by size, and accuracy by training cost, for the chosen cells;
    None when there is nothing to draw. Each method's ± std is an error bar, its points shifted a
    little sideways from the others' so that the bars stay apart."""
    series = [s for s in ensemble_series(summary) if len(s["sizes"])]
    if not series:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    seen: dict[str, int] = {}
    width = 0.3  # of one size step, shared by all the methods' sideways shifts
    for i, s in enumerate(series):
        k = seen[s["type"]] = seen.get(s["type"], -1) + 1
        color, ls = COLORS.get(s["type"], "gray"), LINESTYLES[k % len(LINESTYLES)]
        shift = (i - (len(series) - 1) / 2) * width / max(1, len(series) - 1)
        cost = _cost_by_size(summary, s["name"], s["sizes"])
        for ax, key, scale, x in ((axes[0], "acc", 100.0, s["sizes"] + shift), (axes[1], "nll", 1.0,
                                                                                   s["sizes"] + shift),
                                  (axes[2], "acc", 100.0, cost)):
            y, sd = scale * s[key]["mean"], scale * s[key]["std"]
            ax.errorbar(x, y, yerr=np.where(np.isfinite(sd), sd, 0.0), color=color, ls=ls, marker="o", ms=4,
                        capsize=2, elinewidth=0.8, label=s["label"], zorder=2)
    tr = summary.get("transfer") or {}
    for ax, key, scale, unit in ((axes[0], "acc", 100.0, "%"), (axes[1], "nll", 1.0, " nats"),
                                 (axes[2], "acc", 100.0, "%")):
        mean, std = _ms(tr.get(f"scratch_{key}"))
        _reference_in_range(ax, mean, std, "gray", ":", "one model trained from scratch", scale, unit)
        ax.grid(alpha=0.25)
    for ax in axes[:2]:
        ax.set_xlabel("ensemble size (members)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[2].set_xlabel("training cost of the members (epochs; the shared fine-tuning counted once)")
    axes[0].set_ylabel("ensemble test accuracy (%)"), axes[1].set_ylabel("ensemble test NLL (nats)")
    axes[2].set_ylabel("ensemble test accuracy (%)")
    axes[0].set_title("test accuracy by ensemble size"), axes[1].set_title("test NLL by ensemble size")
    axes[2].set_title("test accuracy by training cost")
    fig.suptitle(f"Ensembles of each table's chosen cell ({_over_seeds(summary)}; bars: ± std)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, out)


# ----------------------------------------------------------------------------- the plane

def _grid2d(plane: dict[str, Any], key: str, nx: int, ny: int) -> np.ndarray | None:
    v = plane.get(key)
    if v is None:
        return None
    a = _arr(np.ravel(np.asarray(v, dtype=object)))
    return a.reshape(nx, ny) if a.size == nx * ny else None


def _member_label(summary: dict[str, Any], proj: dict[str, Any], first: bool) -> str:
    if first:
        return f"fine-tuned model\n{proj['name']}"
    m = summary.get("methods", {}).get(proj.get("method"))
    return f"{m['label'] if m else proj.get('method')}\n{proj['name']}"


def fig_plane(summary: dict[str, Any], results: dict[str, Any], out: str) -> str | None:
    """Train loss beside test error on the plane (BN recomputed); None when no plane was computed
    or nothing on it is finite."""
    plane = (results or {}).get("plane")
    if not plane:
        return None
    xs, ys = _arr(plane.get("xcoordinates") or []), _arr(plane.get("ycoordinates") or [])
    if len(xs) < 2 or len(ys) < 2:
        return None
    loss = _grid2d(plane, "train_loss", len(xs), len(ys))
    acc = _grid2d(plane, "test_acc", len(xs), len(ys))
    err = None if acc is None else 1.0 - acc
    panels = [(z, lab) for z, lab in ((loss, "train loss (nats)"), (err, "test error (%)"))
              if z is not None and np.isfinite(z).any()]
    if not panels:
        return None
    # Both axes are weight-space L2 units: drawn at one scale (equal aspect), the figure shaped to fit.
    ratio = float((ys.max() - ys.min()) / max(xs.max() - xs.min(), 1e-12))
    height = min(max(4.6 * ratio, 2.4), 9.0) + 1.2
    fig, axes = plt.subplots(1, len(panels), figsize=(6.6 * len(panels), height), squeeze=False, sharey=True)
    axes = axes[0]
    gx, gy = np.meshgrid(xs, ys)
    projs = [p for p in plane.get("projections", []) if _finite(_num(p.get("x"))) and _finite(_num(p.get("y")))]
    through = list(plane.get("through") or [])
    pts = [next((p for p in projs if p["name"] == n), None) for n in through]
    span = max([math.hypot(_num(p["x"]), _num(p["y"])) for p in pts if p] + [1e-9])
    near = 0.25 * span
    types_shown: dict[str, None] = {}
    for ax, (z, lab) in zip(axes, panels):
        zm = np.ma.masked_invalid(z.T if lab.startswith("train") else 100 * z.T)
        lo, hi = float(zm.min()), float(zm.max())
        if lab.startswith("train") and lo > 0 and hi > lo * 1.5:
            levels = np.geomspace(lo, hi, 21)
            cs = ax.contourf(gx, gy, zm, levels=levels, norm=mcolors.LogNorm(lo, hi), cmap="viridis")
            fig.colorbar(cs, ax=ax, label=lab + ", log scale", format="%.3g")
        else:
            if not hi > lo:  # a flat surface: contourf needs increasing levels
                hi = lo + 1e-3
            cs = ax.contourf(gx, gy, zm, levels=np.linspace(lo, hi, 21), cmap="viridis")
            fig.colorbar(cs, ax=ax, label=lab, format="%.3g")
        for p in projs:
            x, y = _num(p["x"]), _num(p["y"])
            if not (xs.min() <= x <= xs.max() and ys.min() <= y <= ys.max()) or p["name"] in through:
                continue
            t = (summary.get("methods", {}).get(p.get("method")) or {}).get("type", "other")
            off = _num(p.get("distance"))
            types_shown.setdefault(t, None)
            ax.scatter([x], [y], color=COLORS.get(t, "gray"), edgecolor="white", s=32, zorder=3,
                       alpha=1.0 if _finite(off) and off <= near else 0.35)
        for i, (p, marker, size) in enumerate(zip(pts, ("*", "D", "P"), (260, 80, 130))):
            if p is None:
                continue
            ax.scatter([p["x"]], [p["y"]], marker=marker, s=size, color="white", edgecolor="black", zorder=5)
            top = p["y"] > ys.max() - 0.15 * (ys.max() - ys.min())  # near the top: label below the point
            ax.annotate(_member_label(summary, p, i == 0), (p["x"], p["y"]), textcoords="offset points",
                        xytext=(7, -24 if top else 5),
                        fontsize=7.5, color="black", zorder=6,
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.75))
        ax.set_title(f"{lab.split(' (')[0]} on the plane, BN recomputed", fontsize=10)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("u: towards the second point (weight-space L2 units)")
    axes[0].set_ylabel("v: orthogonal, towards the third point (L2 units)")
    seed = (results or {}).get("seed")
    fig.suptitle(f"The plane through {', '.join(through)}" + (f" (seed {seed})" if seed is not None else "")
                 + f"; members projected onto it, faint when more than {near:.3g} off the plane", fontsize=10)
    L = matplotlib.lines.Line2D
    handles = [L([], [], ls="", marker="o", color=COLORS.get(t, "gray"), markeredgecolor="white")
               for t in types_shown]
    labels = [f"{TYPE_LABEL.get(t, t)} members" for t in types_shown]
    for p, (mk, sz, lab) in zip(pts, (("*", 14, "fine-tuned model (origin)"), ("D", 8, "second point"),
                                      ("P", 10, "third point"))):
        if p is not None:
            handles.append(L([], [], ls="", marker=mk, markersize=sz, markerfacecolor="white", markeredgecolor="black"))
            labels.append(lab)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, out)


# ----------------------------------------------------------------------------- interpolation curves

def _last_with_line(results: dict[str, Any], method: str) -> str | None:
    members = ((results.get("methods") or {}).get(method) or {}).get("members") or []
    for snap in reversed(members):
        if ((results.get("members") or {}).get(snap) or {}).get("line"):
            return snap
    return None


def interpolation_series(summary: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    """What interpolation.png plots (first seed): one member each of Local DE and Global DE, and per
    SSE/StarSSE family its smallest and largest cycle lr cells at the longest cycle length (the last
    member with a line of each). Each: {"method", "member", "label", "type", "role" ("small"/"large"/
    None), "distance", "alphas", "train_loss", "test_error"} (fractions)."""
    if not results or not results.get("members"):
        return []
    picks: list[tuple[str, str | None]] = []
    for t in REFERENCE_TYPES:
        name = next((n for n, m in summary.get("methods", {}).items() if m.get("type") == t), None)
        if name:
            picks.append((name, None))
    for fam in cell_series(summary, ()):
        if fam["type"] not in GRID_TYPES or not fam["lines"]:
            continue
        longest = fam["lines"][-1]  # lines are by increasing cycle length
        ok = [(x, n) for x, n in zip(longest["x"], longest["names"]) if np.isfinite(x)]
        if not ok:
            continue
        lo, hi = min(ok)[1], max(ok)[1]
        picks.append((lo, "small"))
        if hi != lo:
            picks.append((hi, "large"))
    out = []
    for name, role in picks:
        snap = _last_with_line(results, name)
        if snap is None:
            continue
        rec = results["members"][snap]
        line = rec["line"]
        m = summary["methods"][name]
        out.append({"method": name, "member": snap, "label": m.get("label", name), "type": m.get("type"),
                    "role": role, "distance": _num(rec.get("dist_finetuned")),
                    "alphas": _arr(line.get("alphas") or []), "train_loss": _arr(line.get("train_loss") or []),
                    "test_error": 1.0 - _arr(line.get("test_acc") or [])})
    return out


def fig_interpolation(summary: dict[str, Any], results: dict[str, Any], out: str) -> str | None:
    """Train loss and test error along the line from the fine-tuned model to a member; None
    without any line."""
    series = [s for s in interpolation_series(summary, results) if len(s["alphas"])]
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    log_loss = all((s["train_loss"][np.isfinite(s["train_loss"])] > 0).all() for s in series)
    for s in series:
        if s["role"] is None:
            color, ls = COLORS.get(s["type"], "gray"), "-"
        else:
            color = matplotlib.colormaps[CMAPS.get(s["type"], "Greys")](0.45 if s["role"] == "small" else 0.9)
            ls = "-" if s["role"] == "small" else "--"
        d = f", distance {s['distance']:.3g}" if _finite(s["distance"]) else ""
        lab = f"{s['label']}: {s['member']}{d}"
        n = min(len(s["alphas"]), len(s["train_loss"]), len(s["test_error"]))
        axes[0].plot(s["alphas"][:n], s["train_loss"][:n], color=color, ls=ls, marker="o", ms=3, label=lab)
        axes[1].plot(s["alphas"][:n], 100 * s["test_error"][:n], color=color, ls=ls, marker="o", ms=3, label=lab)
    if log_loss:
        axes[0].set_yscale("log")
    axes[0].set_ylabel("train loss (nats" + (", log scale)" if log_loss else ")"))
    axes[1].set_ylabel("test error (%)")
    axes[0].set_title("train loss along the line", fontsize=10)
    axes[1].set_title("test error along the line", fontsize=10)
    for ax in axes:
        ax.set_xlabel("α (0: fine-tuned model, 1: member)")
        ax.set_xlim(-0.02, 1.02)
        ax.grid(alpha=0.25)
    seed = results.get("seed")
    fig.suptitle("Interpolation from the fine-tuned model to one member of each method, BN recomputed"
                 + (f" (seed {seed})" if seed is not None else "")
                 + "\nSSE/StarSSE: smallest (solid) and largest (dashed) cycle lr at the longest cycle length",
                 fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False,
               title="member (L2 distance to the fine-tuned model)", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


# ----------------------------------------------------------------------------- all of them

def write_figures(summary: dict[str, Any], results: dict[str, Any], figdir: str) -> dict[str, str]:
    """Every figure that applies to this study, into `figdir`: {title: path}."""
    try:
        os.makedirs(figdir, exist_ok=True)
    except OSError as exc:
        raise LandscapeFault(f"cannot create {figdir}: {exc.strerror or exc}") from None
    results = results or {}
    todo = (
        ("ensemble accuracy and NLL by size (each table's chosen cell)",
         lambda p: fig_ensembles(summary, p), "ensemble_by_size.png"),
        ("ensemble quality against the cycle learning rate", lambda p: fig_grid(summary, p), "grid_vs_cycle_lr.png"),
        ("members against the cycle learning rate: accuracy, barriers, distance to the fine-tuned model",
         lambda p: fig_members(summary, p), "members_vs_cycle_lr.png"),
        ("train loss and test error on the plane through the fine-tuned model and two members",
         lambda p: fig_plane(summary, results, p), "plane.png"),
        ("interpolation from the fine-tuned model to members", lambda p: fig_interpolation(summary, results, p),
         "interpolation.png"),
    )
    figures = {}
    for title, draw, fname in todo:
        path = draw(os.path.join(figdir, fname))
        if path:
            figures[title] = path
    return figures
