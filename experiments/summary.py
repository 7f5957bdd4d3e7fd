"""The study's summary: the analysis results (experiments.analysis.analyze_study) condensed to
the numbers the verdicts, figures, report.md and summary.json use.

Values stay as computed: a diverged metric is a float nan. A value that was not computed in this
run (no from-scratch baseline, pairwise barriers switched off, a mean over no members) is None.
landscape.jsonable.to_jsonable keeps that difference in summary.json ("nan" against null).
"""
from __future__ import annotations

import math
from typing import Any

from .markdown import TYPE_LABEL


def method_label(name: str, m: dict[str, Any]) -> str:
    """A method's display name: its type's, with the cycle lr for SSE/StarSSE or the config name."""
    base = TYPE_LABEL.get(m["type"], m["type"])
    if m["type"] in ("sse", "starsse"):
        return f"{base} ({m['params']['lr_scale']:g}·η)"
    return base if name == m["type"] else f"{base} [{name}]"


def mean_or_none(xs: list[Any]) -> float | None:
    """The mean of the values that exist (None skipped); None when there are none."""
    vals = [float(x) for x in xs if x is not None]
    return math.fsum(vals) / len(vals) if vals else None


def build_summary(prep: Any, results: dict[str, Any]) -> dict[str, Any]:
    """The summary of a prepared study (`prep`: experiments.study.Prepared) and its analysis results.

    Keys: study, transfer, methods, plane (when computed) and timings; the report adds findings
    and figures.
    """
    cfg = prep.cfg
    methods = {}
    for name, m in results["methods"].items():
        new = [i for i, n in enumerate(m["members"]) if n != prep.plan.finetuned]
        barrier = m["member_barrier_to_finetuned"]
        methods[name] = {
            "type": m["type"], "label": method_label(name, m), "params": m["params"], "members": m["members"],
            "cycle_lr": m.get("cycle_lr"),
            "ensemble_acc": m["ensemble_acc"], "ensemble_nll": m["ensemble_nll"], "ensemble_ece": m["ensemble_ece"],
            "ensemble_brier": m["ensemble_brier"], "member_acc": m["member_acc"], "member_nll": m["member_nll"],
            "member_mean_acc": mean_or_none(m["member_acc"]),
            "soup_acc": m.get("soup_acc"), "soup_nll": m.get("soup_nll"),
            "barrier_to_finetuned": barrier,
            "dist_finetuned": m["member_dist_finetuned"], "dist_pretrained": m["member_dist_pretrained"],
            "mean_pairwise_barrier": m.get("mean_pairwise_barrier"),
            "pairwise_barrier": m.get("pairwise_barrier"),
            # means over the members that are not the fine-tuned model itself
            "new_member_mean_acc": mean_or_none([m["member_acc"][i] for i in new]),
            "new_member_mean_barrier_test_loss": mean_or_none([barrier["test_loss"][i] for i in new]),
            "new_member_mean_barrier_test_error": mean_or_none([barrier["test_error"][i] for i in new]),
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
                         "finetune": cfg["finetune"], "finetuned_model": prep.plan.finetuned},
               "transfer": transfer, "methods": methods}
    if "plane" in results:
        summary["plane"] = {"through": results["plane"]["through"], "projections": results["plane"]["projections"]}
    if "curves" in results:
        summary["curves"] = results["curves"]
    summary["timings"] = dict(results.get("timings", {}))
    return summary
