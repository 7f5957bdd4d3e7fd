"""A study over several seeds: per-seed summaries (experiments.summary) condensed to mean ± std,
the basin each method's members are in, and each grid's cell chosen on validation.

Every number of the report is a statistic over the study's seeds (each seed an independent
replicate: its own pre-trainings, fine-tunings and data orders), kept with its per-seed values
so that a verdict can compare two methods seed by seed (experiments.verdicts).

The basin. A method's members left the pre-train basin when a loss barrier separates them from
the fine-tuned model: their train-loss barrier on the straight line to it exceeds the declared
barrier margin over seeds (experiments.paired.exceeds), and so does the barrier on a trained
Bezier curve where the study trained one (first seed); a curve that finds a low path puts the
members back in the basin. Distance to the fine-tuned model, and the same measures for Local DE
(one checkpoint) and Global DE (different checkpoints) as references, are descriptions reported
beside it, never the test (distance alone cannot tell a far point of one basin from another basin).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from typing import Any

from .paired import DEFAULTS, exceeds

# Per-method statistics over seeds: the summary key of each.
METHOD_STATS = ("acc", "nll", "val_acc", "val_nll", "member_mean_acc", "new_member_mean_acc", "soup_acc",
                "soup_nll", "greedy_soup_acc", "greedy_soup_nll", "disagreement", "kl", "new_member_mean_barrier_train_loss", "new_member_mean_barrier_test_error",
                "new_member_mean_barrier_test_loss", "new_member_mean_dist_finetuned",
                "new_member_mean_dist_pretrained", "mean_top_eigenvalue", "mean_hessian_trace")
PAIRWISE_KEYS = ("train_loss", "test_error", "test_loss")
TRANSFER_STATS = ("finetuned_acc", "finetuned_nll", "scratch_acc", "scratch_nll", "margin")

# Candidate basin measures: (summary key, label, unit).
BASIN_MEASURES = (("new_member_mean_barrier_train_loss", "train-loss barrier to the fine-tuned model", ""),
                  ("new_member_mean_barrier_test_error", "test-error barrier to the fine-tuned model", "%"),
                  ("new_member_mean_dist_finetuned", "distance to the fine-tuned model", ""))
SEMI_LOCAL = ("sse", "starsse", "fge")  # SWA is a local method: reported apart


def _num(x: Any) -> float | None:
    """A finite or non-finite float; None for 'not computed'."""
    # float() also reads summary.json's "nan" / "inf"
    return None if x is None or isinstance(x, bool) else float(x)


def stat(values: Iterable[Any]) -> dict[str, Any]:
    """{"mean", "std", "n", "values"} over seeds; std is the sample std (ddof 1), None for one seed.
    A value that was not computed (None) is kept in `values` and left out of mean and std; a
    non-finite one makes them non-finite (a diverged seed is never averaged away)."""
    vals = [_num(v) for v in values]
    ok = [v for v in vals if v is not None]
    mean = math.fsum(ok) / len(ok) if ok else None
    std = statistics.stdev(ok) if len(ok) >= 2 and all(math.isfinite(v) for v in ok) else (
        float("nan") if len(ok) >= 2 else None)
    return {"mean": mean, "std": std, "n": len(ok), "values": vals}


def _seed_values(per_seed: list[dict], *path: str) -> list[Any]:
    out = []
    for s in per_seed:
        node: Any = s
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        out.append(node)
    return out


def _mean(s: dict) -> float | None:
    return s["mean"] if s["mean"] is not None and math.isfinite(s["mean"]) else None


def method_stats(per_seed: list[dict]) -> dict[str, dict[str, Any]]:
    """Each method's description (from the first seed) and its statistics over seeds."""
    first = per_seed[0]["methods"]
    out = {}
    for name, m in first.items():
        d = {k: m[k] for k in ("type", "group", "label", "params", "cycle_lr", "cost_epochs")}
        d["align_method"] = m.get("align_method")
        d["size"] = len(m["members"])
        st = {k: stat(_seed_values(per_seed, "methods", name, k)) for k in METHOD_STATS}
        for k in PAIRWISE_KEYS:
            st[f"pairwise_{k}"] = stat(_seed_values(per_seed, "methods", name, "mean_pairwise_barrier", k))
            st[f"pairwise_aligned_{k}"] = stat(_seed_values(per_seed, "methods", name,
                                                            "mean_pairwise_barrier_aligned", k))
            st[f"pairwise_repaired_{k}"] = stat(_seed_values(per_seed, "methods", name,
                                                             "mean_pairwise_barrier_aligned_repaired", k))
            st[f"aligned_barrier_to_finetuned_{k}"] = stat(_seed_values(per_seed, "methods", name,
                                                                        "aligned_barrier_to_finetuned", k))
            st[f"last_member_barrier_to_finetuned_{k}"] = stat(_seed_values(per_seed, "methods", name,
                                                                            "last_member_barrier_to_finetuned", k))
        # ensemble accuracy / NLL by size: mean and std per size
        for k in ("ensemble_acc", "ensemble_nll"):
            by_size = list(zip(*[s["methods"][name][k] for s in per_seed]))
            st[k] = [stat(v) for v in by_size]
        d["stats"] = {k: v for k, v in st.items() if isinstance(v, list) or v["n"] > 0}
        out[name] = d
    return out


def basin_reference(methods: dict[str, dict]) -> dict[str, Any]:
    """Local DE's and Global DE's means of each basin measure: the references beside each method's
    own, and whether the measure tells the two apart on every seed (a description)."""
    loc = next((m for m in methods.values() if m["type"] == "local_de"), None)
    glo = next((m for m in methods.values() if m["type"] == "global_de"), None)
    out: dict[str, Any] = {"measures": [], "rule": "out of the basin when a train-loss barrier above the margin "
                                                   "separates the members from the fine-tuned model, on the line and "
                                                   "on a trained curve"}
    if loc is None or glo is None:
        out["note"] = "needs Local DE and Global DE"
        return out
    for key, label, unit in BASIN_MEASURES:
        ls, gs = loc["stats"].get(key), glo["stats"].get(key)
        if not ls or not gs:
            continue
        pairs = [(a, b) for a, b in zip(ls["values"], gs["values"]) if a is not None and b is not None]
        separates = bool(pairs) and all(math.isfinite(a) and math.isfinite(b) and b > a for a, b in pairs)
        out["measures"].append({"key": key, "label": label, "unit": unit, "local": _mean(ls), "global": _mean(gs),
                                "separates": separates})
    return out


def basin_position(m: dict, cfg: dict) -> dict:
    """Whether a method's members (other than the fine-tuned model) left the pre-train basin:
    a train-loss barrier on the straight line to the fine-tuned model above the barrier margin
    (`exceeds`, over seeds), and on the trained curve where the study trained one (first seed).
    "out" when the line's barrier exceeds the margin and the curve's does too; "in" when the
    line's stays below it, or the curve finds a path below it (the line's bump is a bend, not a
    wall); "unclear" otherwise. Distance is reported beside it as a description only."""
    margin = cfg["barrier_margin"]
    v, c = exceeds((m["stats"].get("new_member_mean_barrier_train_loss") or {}).get("values"), margin, cfg["confidence"])
    curve = m.get("curve_barrier_train_loss")
    if v == "undecided":
        where = "unclear"
    elif v == "does not hold":
        where = "in"
    elif v == "holds" and curve is not None:
        where = "out" if curve > margin else "in"
    else:
        where = "unclear"
    return {"basin": where, "line": c, "line_verdict": v, "curve_barrier_train_loss": curve,
            "distance": (m["stats"].get("new_member_mean_dist_finetuned") or {}).get("mean")}



def classify(methods: dict[str, dict], cfg: dict, curves: list[dict] | None = None) -> None:
    """Each method's position (basin_position) and m["basin"]: "in", "out" or "unclear". The
    first seed's trained curves from the fine-tuned model to a method's member give that method
    its curve barrier."""
    for c in curves or []:
        if c.get("method") in methods and c.get("a") and c["curve_barrier"].get("train_loss") is not None:
            methods[c["method"]]["curve_barrier_train_loss"] = c["curve_barrier"]["train_loss"]
    for m in methods.values():
        if "new_member_mean_barrier_train_loss" not in m["stats"]:
            m["basin"] = None
            continue
        m["position"] = basin_position(m, cfg)
        m["basin"] = m["position"]["basin"]


def select_cells(methods: dict[str, dict], on: str) -> dict[str, dict[str, Any]]:
    """Each config table's best method or cell: the highest mean ensemble accuracy on `on`
    ("val", or "test" when the task has no validation split), ties to the lower NLL."""
    acc_key, nll_key = ("val_acc", "val_nll") if on == "val" else ("acc", "nll")
    groups: dict[str, list[str]] = {}
    for name, m in methods.items():
        groups.setdefault(m["group"], []).append(name)
    out = {}
    for group, names in groups.items():
        def key(n: str) -> tuple[float, float]:
            st = methods[n]["stats"]
            a, b = _mean(st.get(acc_key, {"mean": None})), _mean(st.get(nll_key, {"mean": None}))
            return (a if a is not None else -math.inf, -(b if b is not None else math.inf))
        best = max(names, key=key)
        st = methods[best]["stats"]
        out[group] = {"cell": best, "type": methods[best]["type"], "on": on, "cells": len(names),
                      "acc": st.get(acc_key), "nll": st.get(nll_key)}
    return out


def equal_compute(methods: dict[str, dict], selected: dict[str, dict], on: str, budget: float) -> dict[str, Any]:
    """Per grid table, the best cell (chosen the same way) among those costing no more than Local
    DE's K·E epochs."""
    cheap = {n: m for n, m in methods.items() if m["cost_epochs"] <= budget + 1e-9}
    sel = select_cells(cheap, on)
    return {g: v for g, v in sel.items() if g in selected and selected[g]["cells"] > 1}


def aggregate(per_seed: list[dict[str, Any]], has_val: bool) -> dict[str, Any]:
    """The study's summary over its seeds (`per_seed`: experiments.summary.build_summary's, one per seed)."""
    first = per_seed[0]
    methods = method_stats(per_seed)
    cfg = {**DEFAULTS, **(first["study"].get("verdicts") or {})}
    basin = basin_reference(methods)
    classify(methods, cfg, first.get("curves"))
    on = "val" if has_val else "test"
    selected = select_cells(methods, on)
    K = first["study"]["members"]
    budget = K * first["study"]["finetune"]["epochs"]
    transfer = {k: stat(_seed_values(per_seed, "transfer", k)) for k in TRANSFER_STATS}
    summary = {"study": {**first["study"], "seeds": [s["seed"] for s in per_seed]},
               "transfer": transfer, "methods": methods, "basin": basin, "selected": selected,
               "equal_compute": equal_compute(methods, selected, on, budget), "selection_split": on,
               "seeds": {str(s["seed"]): s for s in per_seed}}
    if "plane" in first:
        summary["plane"] = first["plane"]
    if "curves" in first:
        summary["curves"] = first["curves"]
    return summary
