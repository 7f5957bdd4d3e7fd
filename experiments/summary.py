"""The study's summary: the analysis results (experiments.seed_analysis.analyze_study) condensed to
the numbers the verdicts, figures, report.md and summary.json use.

Values stay as computed: a diverged metric is a float nan. A value that was not computed in this
run (no from-scratch baseline, pairwise barriers switched off, a mean over no members) is None.
landscape.core.jsonable.to_jsonable keeps that difference in summary.json ("nan" against null).
"""
from __future__ import annotations

import math
from typing import Any

from .markdown import TYPE_LABEL


def method_label(name: str, m: dict[str, Any]) -> str:
    """A method's display name: its type's, with the cycle lr and length of an SSE/StarSSE/cyclic
    FGE method (η_c = X·η, C = Y·E or Z epochs), Garipov's FGE labelled as such, else the config name."""
    base = TYPE_LABEL.get(m["type"], m["type"])
    p = m["params"]
    if m["type"] == "fge":
        base = "FGE (cyclic)" if p.get("schedule") == "cyclic" else "FGE (Garipov)"
    if m["type"] in ("sse", "starsse") or p.get("schedule") == "cyclic":
        cyc = f"C={p['cycle_scale']:g}·E" if p.get("cycle_scale") is not None else f"C={p['cycle_epochs']:g} ep"
        return f"{base} ({p['lr_scale']:g}·η, {cyc})"
    group = m.get("group", name)
    return base if group in (m["type"], "fge", "fge_cyclic", "fge_garipov") else f"{base} [{name}]"


def cost_epochs(m: dict[str, Any], finetune_epochs: int, members: int) -> float:
    """Training epochs a method's K members cost in all, counting the shared fine-tuning once
    (pre-training not counted): K·E for the deep ensembles, E + (K−1)·C for a cycle method,
    E + K·epochs for K SWA runs."""
    p, E, K = m["params"], finetune_epochs, members
    if m["type"] in ("local_de", "global_de"):
        return float(K * E)
    if m["type"] in ("sse", "starsse"):
        return E + (K - 1) * p["cycle_epochs"]
    if m["type"] == "fge":
        c = p["cycle_epochs"]
        return E + (K - 1) * c if p.get("schedule") == "cyclic" else E + c / 2 + (K - 1) * c  # Garipov: K minima
    if m["type"] == "swa":
        return float(E + K * p["epochs"])
    return float("nan")


def mean_or_none(xs: list[Any]) -> float | None:
    """The mean of the values that exist (None skipped); None when there are none."""
    vals = [float(x) for x in xs if x is not None]
    return math.fsum(vals) / len(vals) if vals else None


def build_summary(prep: Any, results: dict[str, Any], plan: Any = None) -> dict[str, Any]:
    """The summary of one seed of a prepared study (`prep`: experiments.study.Prepared; `plan`: the
    seed's plan, default the first) and its analysis results.

    Keys: study, seed, transfer, methods, plane and curves (when computed) and timings.
    """
    cfg = prep.cfg
    plan = plan or prep.plan
    methods = {}
    for name, m in results["methods"].items():
        new = [i for i, n in enumerate(m["members"]) if n != plan.finetuned]
        barrier = m["member_barrier_to_finetuned"]
        val_acc, val_nll = m.get("val_ensemble_acc"), m.get("val_ensemble_nll")
        methods[name] = {
            "type": m["type"], "group": m.get("group", name), "label": method_label(name, m), "params": m["params"],
            "members": m["members"], "cycle_lr": m.get("cycle_lr"),
            "cost_epochs": cost_epochs(m, cfg["finetune"]["epochs"], len(m["members"])),
            "val_ensemble_acc": val_acc, "val_ensemble_nll": val_nll,
            "val_acc": val_acc[-1] if val_acc else None, "val_nll": val_nll[-1] if val_nll else None,
            "acc": m["ensemble_acc"][-1], "nll": m["ensemble_nll"][-1],
            "ensemble_acc": m["ensemble_acc"], "ensemble_nll": m["ensemble_nll"], "ensemble_ece": m["ensemble_ece"],
            "ensemble_brier": m["ensemble_brier"], "member_acc": m["member_acc"], "member_nll": m["member_nll"],
            "member_mean_acc": mean_or_none(m["member_acc"]),
            "soup_acc": m.get("soup_acc"), "soup_nll": m.get("soup_nll"),
            "greedy_soup_acc": m.get("greedy_soup_acc"), "greedy_soup_nll": m.get("greedy_soup_nll"),
            "greedy_soup_members": m.get("greedy_soup_members"),
            "ensemble_disagreement": m.get("ensemble_disagreement"), "ensemble_kl": m.get("ensemble_kl"),
            "disagreement": m["ensemble_disagreement"][-1] if m.get("ensemble_disagreement") else None,
            "kl": m["ensemble_kl"][-1] if m.get("ensemble_kl") else None,
            "barrier_to_finetuned": barrier,
            "dist_finetuned": m["member_dist_finetuned"], "dist_pretrained": m["member_dist_pretrained"],
            "mean_pairwise_barrier": m.get("mean_pairwise_barrier"),
            "pairwise_barrier": m.get("pairwise_barrier"),
            "mean_pairwise_barrier_aligned": m.get("mean_pairwise_barrier_aligned"),
            "pairwise_barrier_aligned": m.get("pairwise_barrier_aligned"), "align_method": m.get("align_method"),
            "mean_pairwise_barrier_aligned_repaired": m.get("mean_pairwise_barrier_aligned_repaired"),
            "aligned_barrier_to_finetuned": m.get("aligned_barrier_to_finetuned"),
            "last_member_barrier_to_finetuned": {k: v[-1] for k, v in barrier.items()},
            # means over the members that are not the fine-tuned model itself
            "new_member_mean_acc": mean_or_none([m["member_acc"][i] for i in new]),
            "new_member_mean_barrier_test_loss": mean_or_none([barrier["test_loss"][i] for i in new]),
            "new_member_mean_barrier_test_error": mean_or_none([barrier["test_error"][i] for i in new]),
            "new_member_mean_barrier_train_loss": mean_or_none([barrier["train_loss"][i] for i in new]),
            "new_member_mean_dist_finetuned": mean_or_none([m["member_dist_finetuned"][i] for i in new]),
            "new_member_mean_dist_pretrained": mean_or_none([m["member_dist_pretrained"][i] for i in new]),
            # sharpness of the first members (training loss, BN recomputed), when the study computed it
            "top_eigenvalue": m.get("top_eigenvalue"), "hessian_trace": m.get("hessian_trace"),
            "sharpness_members": m.get("sharpness_members"),
            "mean_top_eigenvalue": mean_or_none(m["top_eigenvalue"]) if m.get("top_eigenvalue") else None,
            "mean_hessian_trace": mean_or_none(m["hessian_trace"]) if m.get("hessian_trace") else None,
        }
    ft, sc = results["finetuned"], results.get("scratch")
    transfer = {"finetuned_acc": ft["test_acc"], "finetuned_nll": ft["test_nll"],
                "scratch_acc": sc["test_acc"] if sc else None, "scratch_nll": sc["test_nll"] if sc else None,
                "margin": ft["test_acc"] - sc["test_acc"] if sc else None,
                "pretrained_source_acc": {k: v.get("source_test_acc")
                                          for k, v in results.get("pretrained", {}).items()}}
    summary = {"study": {"name": cfg.name, "config": cfg.source, "fingerprint": cfg.fingerprint(),
                         "members": cfg.members, "data": cfg["data"], "model": cfg["model"],
                         "finetune": cfg["finetune"], "finetuned_model": plan.finetuned,
                         "pretrain_objective": cfg["pretrain"].get("objective", "supervised"),
                         "verdicts": cfg["verdicts"]},
               "seed": plan.seed, "transfer": transfer, "methods": methods}
    if "plane" in results:
        summary["plane"] = {"through": results["plane"]["through"], "projections": results["plane"]["projections"]}
    if "curves" in results:
        summary["curves"] = results["curves"]
    summary["timings"] = dict(results.get("timings", {}))
    return summary
