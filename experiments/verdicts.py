"""The paper's findings, each checked against this run's numbers (experiments.summary).

A finding is {"id", "claim", "verdict", "text"}. The verdict is "holds", "does not hold",
"mixed" (accuracy and NLL disagree) or "undecided" (a number it compares is nan or inf, e.g. a
diverged member). The thresholds are stated in the claims; nothing is hard-coded but them.
A finding whose numbers were not computed in this run (no from-scratch baseline, no pairwise
barriers, a single SSE cycle lr) is left out.
"""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable

from .markdown import TYPE_LABEL, fmt_num, fmt_pct, fmt_points

VERDICTS = ("holds", "does not hold", "mixed", "undecided")


def _finite(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _cmp(a: Any, op: Callable[[float, float], bool], b: Any) -> bool | None:
    """a op b, or None when either side is not a finite number."""
    return bool(op(a, b)) if _finite(a) and _finite(b) else None


def _holds(cond: bool | None) -> str:
    return "undecided" if cond is None else "holds" if cond else "does not hold"


def _verdict(better_acc: bool | None, better_nll: bool | None) -> str:
    if better_acc is None or better_nll is None:
        return "undecided"
    return "holds" if better_acc and better_nll else "does not hold" if not better_acc and not better_nll else "mixed"


def _of_type(summary: dict, t: str) -> list[tuple[str, dict]]:
    return [(n, m) for n, m in summary["methods"].items() if m["type"] == t]


def _best(items: list[dict], key: Callable[[dict], Any], highest: bool) -> dict | None:
    """The item with the highest (lowest) finite key; None when no key is finite."""
    ok = [m for m in items if _finite(key(m))]
    if not ok:
        return None
    return (max if highest else min)(ok, key=key)


def findings(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, each with this run's numbers and a verdict."""
    out = []
    tr = summary["transfer"]
    K = summary["study"]["members"]
    if tr["scratch_acc"] is not None:
        out.append({"id": "transfer", "claim": "Fine-tuning from the pre-trained checkpoint beats training from "
                    "scratch on the target task (by 3 points or more).",
                    "verdict": _holds(_cmp(tr["margin"], operator.ge, 0.03)),
                    "text": f"fine-tuned {fmt_pct(tr['finetuned_acc'])} vs from scratch {fmt_pct(tr['scratch_acc'])} "
                            f"test accuracy: transfer is worth {fmt_points(tr['margin'])}."})
    loc, glo = _of_type(summary, "local_de"), _of_type(summary, "global_de")
    if loc and glo and loc[0][1]["mean_pairwise_barrier"] and glo[0][1]["mean_pairwise_barrier"]:
        lb, gb = loc[0][1]["mean_pairwise_barrier"], glo[0][1]["mean_pairwise_barrier"]
        lo = lb["test_loss"]
        holds = _cmp(gb["test_loss"], operator.gt, max(2 * lo, lo + 0.05)) if _finite(lo) else None
        out.append({"id": "basins", "claim": "Members fine-tuned from one checkpoint share a basin; members "
                    "fine-tuned from different checkpoints do not (mean pairwise test-loss barrier at least twice "
                    "as high and 0.05 higher).", "verdict": _holds(holds),
                    "text": f"mean pairwise test-loss barrier {fmt_num(lb['test_loss'])} among Local DE members vs "
                            f"{fmt_num(gb['test_loss'])} among Global DE members (test-error barrier "
                            f"{fmt_pct(lb['test_error'])} vs {fmt_pct(gb['test_error'])})."})
    if loc and glo:
        la, ga = loc[0][1]["ensemble_acc"][-1], glo[0][1]["ensemble_acc"][-1]
        ln, gn = loc[0][1]["ensemble_nll"][-1], glo[0][1]["ensemble_nll"][-1]
        out.append({"id": "global_better", "claim": f"Global DE ensembles beat Local DE ensembles (accuracy and NLL at "
                    f"size {K}).", "verdict": _verdict(_cmp(ga, operator.gt, la), _cmp(gn, operator.lt, ln)),
                    "text": f"Global DE {fmt_pct(ga)} accuracy / NLL {fmt_num(gn)} vs Local DE {fmt_pct(la)} / "
                            f"{fmt_num(ln)}."})
    semi = [m for m in summary["methods"].values() if m["type"] in ("sse", "starsse", "fge", "swa")]
    if loc and glo and semi:
        ga, gn = glo[0][1]["ensemble_acc"][-1], glo[0][1]["ensemble_nll"][-1]
        la, ln = loc[0][1]["ensemble_acc"][-1], loc[0][1]["ensemble_nll"][-1]
        best_acc = _best(semi, lambda m: m["ensemble_acc"][-1], highest=True)
        best_nll = _best(semi, lambda m: m["ensemble_nll"][-1], highest=False)
        acc_below = _cmp(best_acc["ensemble_acc"][-1], operator.lt, ga) if best_acc else None
        nll_above = _cmp(best_nll["ensemble_nll"][-1], operator.gt, gn) if best_nll else None
        acc_text = f"{fmt_pct(best_acc['ensemble_acc'][-1])} ({best_acc['label']})" if best_acc else "nan"
        nll_text = f"{fmt_num(best_nll['ensemble_nll'][-1])} ({best_nll['label']})" if best_nll else "nan"
        out.append({"id": "gap", "claim": "Local and semi-local methods (SSE, StarSSE, FGE, SWA) do not close the "
                    f"gap to Global DE (none reaches its accuracy or NLL at size {K}).",
                    "verdict": _verdict(acc_below, nll_above),
                    "text": f"best accuracy {acc_text}, best NLL {nll_text}, vs Global DE {fmt_pct(ga)} / "
                            f"{fmt_num(gn)}."})
        acc_ok = [m["label"] for m in semi if _cmp(m["ensemble_acc"][-1], operator.ge, la)]
        nll_ok = [m["label"] for m in semi if _cmp(m["ensemble_nll"][-1], operator.le, ln)]
        out.append({"id": "semi_vs_local", "claim": "With a well-chosen cycle, semi-local methods match or beat "
                    f"Local DE (accuracy and NLL at size {K}).",
                    "verdict": _verdict(bool(acc_ok) if _finite(la) else None, bool(nll_ok) if _finite(ln) else None),
                    "text": f"Local DE {fmt_pct(la)} / NLL {fmt_num(ln)}; at least as accurate: "
                            f"{', '.join(acc_ok) or 'none'}; NLL at least as low: {', '.join(nll_ok) or 'none'}."})
    for t in ("sse", "starsse"):
        ms = sorted(_of_type(summary, t), key=lambda nm: nm[1]["params"]["lr_scale"])
        if len(ms) < 2:
            continue
        s, l = ms[0][1], ms[-1][1]
        lo, hi = f"{s['params']['lr_scale']:g}·η", f"{l['params']['lr_scale']:g}·η"
        sb, lb = s["new_member_mean_barrier_test_loss"], l["new_member_mean_barrier_test_loss"]
        se, le = s["new_member_mean_barrier_test_error"], l["new_member_mean_barrier_test_error"]
        out.append({"id": f"{t}_barrier", "claim": f"{TYPE_LABEL[t]} members trained with a large cycle lr leave the "
                    "pre-train basin: a higher barrier on the line to the fine-tuned model (test loss, by 0.02 or more).",
                    "verdict": _holds(_cmp(lb, operator.ge, sb + 0.02) if _finite(sb) else None),
                    "text": f"mean test-loss barrier {fmt_num(sb)} at {lo} vs {fmt_num(lb)} at {hi} (test-error "
                            f"barrier {fmt_pct(se)} vs {fmt_pct(le)}); backbone distance to the pre-trained "
                            f"checkpoint {fmt_num(s['new_member_mean_dist_pretrained'], 2)} vs "
                            f"{fmt_num(l['new_member_mean_dist_pretrained'], 2)}."})
        sa, la_ = s["new_member_mean_acc"], l["new_member_mean_acc"]
        text = (f"mean member accuracy {fmt_pct(sa)} at {lo} vs {fmt_pct(la_)} at {hi}; fine-tuned model "
                f"{fmt_pct(tr['finetuned_acc'])}" + (f", from scratch {fmt_pct(tr['scratch_acc'])}"
                                                     if tr["scratch_acc"] is not None else "") + ".")
        out.append({"id": f"{t}_members", "claim": f"Leaving the basin loses the benefit of transfer: {TYPE_LABEL[t]} "
                    "members at the large cycle lr are worse (by 2 points or more) than at the small one.",
                    "verdict": _holds(_cmp(la_, operator.le, sa - 0.02) if _finite(sa) else None), "text": text})
        out.append({"id": f"{t}_ensemble_lr", "claim": f"Staying in the basin gives the better {TYPE_LABEL[t]} "
                    f"ensemble (accuracy and NLL at size {K}).",
                    "verdict": _verdict(_cmp(s["ensemble_acc"][-1], operator.ge, l["ensemble_acc"][-1]),
                                        _cmp(s["ensemble_nll"][-1], operator.le, l["ensemble_nll"][-1])),
                    "text": f"{lo}: {fmt_pct(s['ensemble_acc'][-1])} / NLL {fmt_num(s['ensemble_nll'][-1])}; {hi}: "
                            f"{fmt_pct(l['ensemble_acc'][-1])} / NLL {fmt_num(l['ensemble_nll'][-1])}."})
    sse, star = _of_type(summary, "sse"), _of_type(summary, "starsse")
    pairs = [(a, b) for a in sse for b in star if a[1]["params"]["lr_scale"] == b[1]["params"]["lr_scale"]]
    for (_, a), (_, b) in pairs:
        out.append({"id": f"starsse_vs_sse_{a['params']['lr_scale']:g}", "claim": "StarSSE ensembles are at least "
                    f"as good as SSE ensembles at the same cycle lr ({a['params']['lr_scale']:g}·η; accuracy and NLL "
                    f"at size {K}).",
                    "verdict": _verdict(_cmp(b["ensemble_acc"][-1], operator.ge, a["ensemble_acc"][-1]),
                                        _cmp(b["ensemble_nll"][-1], operator.le, a["ensemble_nll"][-1])),
                    "text": f"StarSSE {fmt_pct(b['ensemble_acc'][-1])} / NLL {fmt_num(b['ensemble_nll'][-1])} vs SSE "
                            f"{fmt_pct(a['ensemble_acc'][-1])} / {fmt_num(a['ensemble_nll'][-1])}."})
    return out
