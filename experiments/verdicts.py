"""The paper's findings, each checked against the study's numbers over its seeds (experiments.aggregate).

A comparison of A with B is paired by seed: d_s = A_s − B_s, signed so that d > 0 means A is
better. Its tolerance is the half-width of the 95% confidence interval of the mean difference,
h = t(0.975, n−1) · sd(d) / √n (Student t), never below a floor that stands for a negligible
difference of that measure (FLOORS; a single seed has the floor alone). Outcomes:

    better  mean(d) > h          A is better than B beyond the seeds' spread
    worse   mean(d) < −h         B is better
    tie     |mean(d)| ≤ h        within the tolerance

A claim "A beats B" holds when better, does not hold when worse, and is inconclusive on a tie; a
claim "A matches or beats B" holds when better or tied and does not hold when worse. A claim on
two measures (accuracy and NLL) holds when both hold, does not hold when neither does, is mixed
when one holds and the other does not, and is inconclusive otherwise. A comparison with a
non-finite number (a diverged member) is undecided. A finding whose numbers were not computed
(no from-scratch baseline, no SSE grid, no pairwise barriers) is left out.

A finding is {"id", "claim", "measure", "verdict", "text", "comparisons"}; each comparison
carries its mean difference, its tolerance and its outcome, so the report can show them.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats as sps

from .aggregate import SEMI_LOCAL
from .markdown import TYPE_LABEL, fmt_num, fmt_pct, pm

VERDICTS = ("holds", "does not hold", "mixed", "inconclusive", "undecided")

# A difference below these is negligible whatever the seeds say (accuracy as a fraction).
FLOORS = {"acc": 0.002, "nll": 0.002, "barrier": 0.01, "error": 0.002, "distance": 0.05}


def _vals(m: dict, key: str) -> list[float | None] | None:
    s = m["stats"].get(key)
    return None if s is None else s["values"]


def compare(a: list[Any] | None, b: list[Any] | float | None, floor: float, higher_is_better: bool = True) -> dict:
    """Seed-paired comparison of A with B (B may be a constant: a threshold). See the module doc."""
    if a is None or b is None:
        return {"outcome": "missing"}
    bs = list(b) if isinstance(b, (list, tuple)) else [b] * len(a)
    pairs = [(x, y) for x, y in zip(a, bs) if x is not None and y is not None]
    if not pairs:
        return {"outcome": "missing"}
    sign = 1.0 if higher_is_better else -1.0
    d = [sign * (float(x) - float(y)) for x, y in pairs]
    n = len(d)
    if not all(math.isfinite(v) for v in d):
        return {"outcome": "undecided", "n": n, "diff": float("nan"), "tol": float("nan")}
    mean = math.fsum(d) / n
    spread = float(sps.t.ppf(0.975, n - 1)) * statistics.stdev(d) / math.sqrt(n) if n >= 2 else 0.0
    tol = max(spread, floor)
    outcome = "better" if mean > tol else "worse" if mean < -tol else "tie"
    return {"outcome": outcome, "n": n, "diff": mean, "tol": tol, "floor": floor}


def beats(c: dict) -> str:
    return {"better": "holds", "worse": "does not hold", "tie": "inconclusive"}.get(c["outcome"], "undecided")


def at_least(c: dict) -> str:
    return {"better": "holds", "tie": "holds", "worse": "does not hold"}.get(c["outcome"], "undecided")


def combine(*verdicts: str) -> str:
    """Several measures' verdicts on one claim (see the module doc)."""
    if any(v == "undecided" for v in verdicts):
        return "undecided"
    if all(v == "holds" for v in verdicts):
        return "holds"
    if all(v == "does not hold" for v in verdicts):
        return "does not hold"
    if "holds" in verdicts and "does not hold" in verdicts:
        return "mixed"
    return "inconclusive"


def _mean(m: dict | None, key: str) -> Any:
    if m is None:
        return None
    s = m["stats"].get(key)
    return None if s is None else s["mean"]


def _pm(m: dict, key: str, fmt=fmt_pct) -> str:
    """mean ± std of a method's statistic (markdown.pm)."""
    return pm(m["stats"].get(key), fmt)


def _cmp_text(c: dict, pct: bool) -> str:
    if c["outcome"] in ("missing", "undecided"):
        return c["outcome"]
    f = (lambda x: f"{100 * x:+.2f} points") if pct else (lambda x: f"{x:+.3f}")
    g = (lambda x: f"{100 * x:.2f}") if pct else (lambda x: f"{x:.3f}")
    return f"difference {f(c['diff'])}, tolerance ±{g(c['tol'])} ({c['outcome']})"


def _acc_nll(a: dict, b: dict, claim: str, akey: str = "acc", nkey: str = "nll") -> tuple[str, list[dict]]:
    """Verdict of "A beats B" or "A matches or beats B" on accuracy and NLL."""
    ca = compare(_vals(a, akey), _vals(b, akey), FLOORS["acc"])
    cn = compare(_vals(a, nkey), _vals(b, nkey), FLOORS["nll"], higher_is_better=False)
    rule = beats if claim == "beats" else at_least
    ca["measure"], cn["measure"] = akey, nkey
    return combine(rule(ca), rule(cn)), [ca, cn]


def _by_type(summary: dict, t: str) -> list[tuple[str, dict]]:
    return [(n, m) for n, m in summary["methods"].items() if m["type"] == t]


def _selected(summary: dict, group_type: str | tuple[str, ...]) -> list[tuple[str, dict]]:
    """The selected cells of the config tables of these method types."""
    types = (group_type,) if isinstance(group_type, str) else group_type
    out = []
    for g, sel in summary["selected"].items():
        if sel["type"] in types:
            out.append((sel["cell"], summary["methods"][sel["cell"]]))
    return out


def _best_on_selection(summary: dict, cands: list[tuple[str, dict]]) -> tuple[str, dict] | None:
    """Of several methods, the one with the best mean ensemble accuracy on the selection split."""
    key = "val_acc" if summary.get("selection_split") == "val" else "acc"
    ok = [(n, m) for n, m in cands if _mean(m, key) is not None and math.isfinite(_mean(m, key))]
    return max(ok, key=lambda nm: _mean(nm[1], key)) if ok else None


def _finding(fid: str, claim: str, measure: str, verdict: str, text: str, comparisons: list[dict]) -> dict:
    return {"id": fid, "claim": claim, "measure": measure, "verdict": verdict, "text": text,
            "comparisons": comparisons}


def findings(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, each with the study's numbers, its tolerance and a verdict."""
    out = []
    K = summary["study"]["members"]
    n_seeds = len(summary["study"]["seeds"])
    tr = summary["transfer"]
    on = "validation" if summary.get("selection_split") == "val" else "test (no validation split)"

    if tr["scratch_acc"]["n"]:
        c = compare(tr["finetuned_acc"]["values"], tr["scratch_acc"]["values"], FLOORS["acc"])
        c["measure"] = "acc"
        out.append(_finding(
            "transfer", "Fine-tuning from the pre-trained checkpoint beats training from scratch on the target task.",
            "test accuracy of the fine-tuned model against the from-scratch model", beats(c),
            f"fine-tuned {fmt_pct(tr['finetuned_acc']['mean'])} vs from scratch {fmt_pct(tr['scratch_acc']['mean'])}; "
            + _cmp_text(c, True) + ".", [c]))

    loc, glo = _by_type(summary, "local_de"), _by_type(summary, "global_de")
    loc_m, glo_m = (loc[0][1] if loc else None), (glo[0][1] if glo else None)
    if loc_m and glo_m and "pairwise_train_loss" in loc_m["stats"] and "pairwise_train_loss" in glo_m["stats"]:
        cl = compare(_vals(glo_m, "pairwise_train_loss"), _vals(loc_m, "pairwise_train_loss"), FLOORS["barrier"])
        ce = compare(_vals(glo_m, "pairwise_test_error"), _vals(loc_m, "pairwise_test_error"), FLOORS["error"])
        cl["measure"], ce["measure"] = "pairwise train-loss barrier", "pairwise test-error barrier"
        out.append(_finding(
            "basins", "Members fine-tuned from one checkpoint share a basin; members fine-tuned from different "
            "checkpoints do not.", "mean pairwise barrier among a method's members, train loss and test error "
            "(Global DE's higher than Local DE's)", combine(beats(cl), beats(ce)),
            f"train-loss barrier {_pm(loc_m, 'pairwise_train_loss', fmt_num)} among Local DE members vs "
            f"{_pm(glo_m, 'pairwise_train_loss', fmt_num)} among Global DE members ({_cmp_text(cl, False)}); "
            f"test-error barrier {_pm(loc_m, 'pairwise_test_error')} vs {_pm(glo_m, 'pairwise_test_error')}.",
            [cl, ce]))

    if loc_m and glo_m and "pairwise_aligned_train_loss" in glo_m["stats"] \
            and "pairwise_aligned_train_loss" in loc_m["stats"]:
        out.append(_modulo_permutation(loc_m, glo_m))

    if loc_m and glo_m:
        v, cs = _acc_nll(glo_m, loc_m, "beats")
        out.append(_finding(
            "global_vs_local", "Global DE ensembles beat Local DE ensembles.",
            f"test accuracy and NLL of the size-{K} ensembles", v,
            f"Global DE {_pm(glo_m, 'acc')} / NLL {_pm(glo_m, 'nll', fmt_num)} vs Local DE {_pm(loc_m, 'acc')} / "
            f"{_pm(loc_m, 'nll', fmt_num)}; accuracy {_cmp_text(cs[0], True)}; NLL {_cmp_text(cs[1], False)}.", cs))

    semi = _selected(summary, SEMI_LOCAL)
    best_semi = _best_on_selection(summary, semi)
    if loc_m and best_semi:
        name, m = best_semi
        v, cs = _acc_nll(m, loc_m, "at_least")
        swa = _selected(summary, "swa")
        swa_text = ""
        if swa:
            sv, scs = _acc_nll(swa[0][1], loc_m, "at_least")
            swa_text = (f" SWA (a local method, apart): {_pm(swa[0][1], 'acc')} / {_pm(swa[0][1], 'nll', fmt_num)}, "
                        f"{sv} against Local DE.")
        out.append(_finding(
            "semi_vs_local", "With well-chosen cycle hyperparameters, a semi-local method (SSE, StarSSE, FGE) matches "
            "or beats Local DE.", f"test accuracy and NLL of the size-{K} ensembles; each method's cell chosen on {on}, "
            "then the best of those", v,
            f"selected {m['label']}: {_pm(m, 'acc')} / NLL {_pm(m, 'nll', fmt_num)} vs Local DE {_pm(loc_m, 'acc')} / "
            f"{_pm(loc_m, 'nll', fmt_num)}; accuracy {_cmp_text(cs[0], True)}; NLL {_cmp_text(cs[1], False)}."
            + swa_text, cs))

    others = [(n, m) for n, m in _selected(summary, (*SEMI_LOCAL, "swa", "local_de"))]
    best_other = _best_on_selection(summary, others)
    if glo_m and best_other:
        name, m = best_other
        v, cs = _acc_nll(glo_m, m, "beats")
        out.append(_finding(
            "gap", "Local and semi-local methods do not reach Global DE.",
            f"test accuracy and NLL of the size-{K} ensembles: Global DE against the best other method chosen on {on}",
            v, f"Global DE {_pm(glo_m, 'acc')} / NLL {_pm(glo_m, 'nll', fmt_num)} vs the best other, {m['label']}, "
               f"{_pm(m, 'acc')} / {_pm(m, 'nll', fmt_num)}; accuracy {_cmp_text(cs[0], True)}; "
               f"NLL {_cmp_text(cs[1], False)}.", cs))

    basin_measures = [b for b in summary["basin"]["measures"] if b["separates"]]
    for t in ("sse", "starsse"):
        cells = [(n, m) for n, m in _by_type(summary, t) if m.get("basin") in ("in", "out")]
        if len({m["params"]["lr_scale"] for _, m in cells}) < 2:
            continue
        label = TYPE_LABEL[t]
        inside = [(n, m) for n, m in cells if m["basin"] == "in"]
        outside = [(n, m) for n, m in cells if m["basin"] == "out"]
        out.extend(_lr_findings(summary, t, label, inside, outside, basin_measures, K, on))

    if tr["scratch_acc"]["n"]:
        out.extend(_leaving_costs(summary))

    sse_sel, star_sel = _selected(summary, "sse"), _selected(summary, "starsse")
    if sse_sel and star_sel:
        (_, sm), (_, tm) = _best_on_selection(summary, sse_sel), _best_on_selection(summary, star_sel)
        v, cs = _acc_nll(tm, sm, "at_least")
        out.append(_finding(
            "starsse_vs_sse", "StarSSE at its best cell is at least as good as SSE at its best.",
            f"test accuracy and NLL of the size-{K} ensembles, each cell chosen on {on}", v,
            f"{tm['label']}: {_pm(tm, 'acc')} / NLL {_pm(tm, 'nll', fmt_num)} vs {sm['label']}: {_pm(sm, 'acc')} / "
            f"{_pm(sm, 'nll', fmt_num)}; accuracy {_cmp_text(cs[0], True)}; NLL {_cmp_text(cs[1], False)}.", cs))
    if star_sel and loc_m and "soup_acc" in loc_m["stats"] and "soup_acc" in star_sel[0][1]["stats"]:
        tn, tm = _best_on_selection(summary, star_sel)
        v, cs = _acc_nll(tm, loc_m, "at_least", "soup_acc", "soup_nll")
        out.append(_finding(
            "soups", "A uniform soup of StarSSE members is at least as good as a soup of Local DE members.",
            "test accuracy and NLL of the weight average of the K members, BN recomputed (StarSSE's cell chosen "
            f"on {on})", v,
            f"{tm['label']} soup {_pm(tm, 'soup_acc')} / NLL {_pm(tm, 'soup_nll', fmt_num)} vs Local DE soup "
            f"{_pm(loc_m, 'soup_acc')} / {_pm(loc_m, 'soup_nll', fmt_num)}; accuracy {_cmp_text(cs[0], True)}; "
            f"NLL {_cmp_text(cs[1], False)}.", cs))
    for f in out:
        f["seeds"] = n_seeds
    return out


def _modulo_permutation(loc_m: dict, glo_m: dict) -> dict:
    """Are members of different checkpoints one basin once their hidden units are aligned?
    Two paired comparisons of the train-loss barrier: alignment lowers Global DE's, and aligned
    Global DE's is no higher than aligned Local DE's. Holds when the first is beyond the
    tolerance and the second is not worse; does not hold when aligned Global DE's barrier exceeds
    aligned Local DE's beyond the tolerance (a wall is left: not one basin); otherwise
    inconclusive. "No higher" within the tolerance is weak evidence with few seeds: the text
    shows the tolerance."""
    lowered = compare(_vals(glo_m, "pairwise_aligned_train_loss"), _vals(glo_m, "pairwise_train_loss"),
                      FLOORS["barrier"], higher_is_better=False)
    level = compare(_vals(glo_m, "pairwise_aligned_train_loss"), _vals(loc_m, "pairwise_aligned_train_loss"),
                    FLOORS["barrier"], higher_is_better=False)
    lowered["measure"] = "Global DE pairwise train-loss barrier, aligned against not aligned"
    level["measure"] = "aligned pairwise train-loss barrier, Global DE against Local DE"
    method = glo_m.get("align_method") or "weight"
    return _finding(
        "one_basin_modulo_permutation", "Members fine-tuned from different checkpoints are one basin up to a "
        "permutation of their hidden units: aligning them removes the barrier between them.",
        f"mean pairwise train-loss barrier after aligning every member's units to the first member's ({method} "
        "matching, `landscape align`)", _one_basin_verdict(lowered, level),
        f"Global DE {_pm(glo_m, 'pairwise_train_loss', fmt_num)} before alignment, "
        f"{_pm(glo_m, 'pairwise_aligned_train_loss', fmt_num)} after ({_cmp_text(lowered, False)}); Local DE "
        f"{_pm(loc_m, 'pairwise_train_loss', fmt_num)} before, {_pm(loc_m, 'pairwise_aligned_train_loss', fmt_num)} "
        f"after; aligned Global DE against aligned Local DE: {_cmp_text(level, False)}; test-error barrier "
        f"{_pm(glo_m, 'pairwise_test_error')} → {_pm(glo_m, 'pairwise_aligned_test_error')} (Global DE).",
        [lowered, level])


def _one_basin_verdict(lowered: dict, level: dict) -> str:
    outcomes = {lowered["outcome"], level["outcome"]}
    if outcomes & {"missing", "undecided"}:
        return "undecided"
    if level["outcome"] == "worse":
        return "does not hold"
    return "holds" if lowered["outcome"] == "better" else "inconclusive"


def _lr_findings(summary: dict, t: str, label: str, inside: list, outside: list, measures: list[dict], K: int,
                 on: str) -> list[dict]:
    out = []
    by_lr = sorted(inside + outside, key=lambda nm: nm[1]["params"]["lr_scale"])
    top = by_lr[-1]
    # the largest cycle lr leaves the basin: beyond the threshold of a separating measure
    comps, verdicts = [], []
    for meas in measures:
        floor = FLOORS["distance"] if "dist" in meas["key"] else FLOORS["barrier"]
        c = compare(_vals(top[1], meas["key"]), meas["threshold"], floor)
        c["measure"] = meas["label"]
        comps.append(c)
        verdicts.append(beats(c))
    v = "holds" if "holds" in verdicts else "does not hold" if verdicts and all(
        x == "does not hold" for x in verdicts) else ("inconclusive" if verdicts else "undecided")
    thr = "; ".join(f"{c['measure']} {fmt_num(_mean(top[1], m['key']))} vs threshold {fmt_num(m['threshold'])} "
                    f"({c['outcome']}, tolerance ±{fmt_num(c.get('tol'))})" for c, m in zip(comps, measures))
    out.append(_finding(
        f"{t}_exit", f"{label} members trained with the largest cycle lr leave the pre-train basin.",
        "each separating basin measure of the members against its threshold (midway between Local DE and Global DE); "
        "out when beyond any", v, f"{top[1]['label']}: {thr}.", comps))
    if not inside or not outside:
        return out
    # quality against the cycle lr: rises (or stays) inside the basin, falls once members leave
    key = "val_acc" if summary.get("selection_split") == "val" else "acc"
    best_in = max(inside, key=lambda nm: _mean(nm[1], key) if _mean(nm[1], key) is not None else -math.inf)
    best_out = max(outside, key=lambda nm: _mean(nm[1], key) if _mean(nm[1], key) is not None else -math.inf)
    C = best_in[1]["params"]["cycle_epochs"]
    same_c = [nm for nm in inside if nm[1]["params"]["cycle_epochs"] == C]
    low = min(same_c, key=lambda nm: nm[1]["params"]["lr_scale"])
    top_in = max(same_c, key=lambda nm: nm[1]["params"]["lr_scale"])
    fall_v, fall = _acc_nll(best_in[1], best_out[1], "beats")
    if top_in[0] != low[0]:
        rise_v, rise = _acc_nll(top_in[1], low[1], "at_least")
        verdict = combine(rise_v, fall_v)
        rise_text = (f"in the basin: {low[1]['label']} {_pm(low[1], 'acc')} / {_pm(low[1], 'nll', fmt_num)} → "
                     f"{top_in[1]['label']} {_pm(top_in[1], 'acc')} / {_pm(top_in[1], 'nll', fmt_num)} ({rise_v}); ")
    else:  # one cycle lr in the basin at that cycle length: nothing to rise along
        rise, verdict = [], fall_v
        rise_text = f"one cycle lr in the basin at C = {C:g} epochs ({low[1]['label']}), so only the fall is tested; "
    out.append(_finding(
        f"{t}_lr_curve", f"{label} ensembles improve with the cycle lr while members stay in the basin and get worse "
        "once they leave it.", f"test accuracy and NLL of the size-{K} ensembles: the largest in-basin lr against the "
        f"smallest at the same cycle length (rises or stays), and the best in-basin cell against the best out-of-basin "
        f"cell (chosen on {on}; falls)", verdict,
        rise_text + f"best in the basin "
        f"{best_in[1]['label']} vs best outside {best_out[1]['label']} {_pm(best_out[1], 'acc')} / "
        f"{_pm(best_out[1], 'nll', fmt_num)} ({fall_v}: accuracy {_cmp_text(fall[0], True)}; NLL "
        f"{_cmp_text(fall[1], False)}).", rise + fall))
    return out


def _seed_mean(ms: list[dict], key: str) -> list[float | None]:
    """Per seed, the mean of a statistic over several methods."""
    cols = list(zip(*[m["stats"][key]["values"] for m in ms if key in m["stats"]]))
    return [None if any(v is None for v in col) else math.fsum(col) / len(col) for col in cols]


def _leaving_costs(summary: dict) -> list[dict]:
    cyc = [m for m in summary["methods"].values() if m["type"] in ("sse", "starsse") and m.get("basin")]
    inside, outside = [m for m in cyc if m["basin"] == "in"], [m for m in cyc if m["basin"] == "out"]
    if not inside or not outside:
        return []
    tr = summary["transfer"]
    a, b = _seed_mean(inside, "new_member_mean_acc"), _seed_mean(outside, "new_member_mean_acc")
    c = compare(a, b, FLOORS["acc"])
    c["measure"] = "member accuracy"
    ai, ao = statistics.fmean([x for x in a if x is not None]), statistics.fmean([x for x in b if x is not None])
    margin = tr["margin"]["mean"]
    lost = (ai - ao) / margin if margin else float("nan")
    return [_finding(
        "leaving_costs_transfer", "Leaving the basin costs individual accuracy, towards the from-scratch level.",
        "mean test accuracy of SSE/StarSSE members (the fine-tuned model excluded) in the basin against out of it",
        beats(c), f"members in the basin {fmt_pct(ai)}, out of it {fmt_pct(ao)} ({_cmp_text(c, True)}); the fine-tuned "
        f"model {fmt_pct(tr['finetuned_acc']['mean'])}, from scratch {fmt_pct(tr['scratch_acc']['mean'])}: leaving "
        f"loses {fmt_pct(lost)} of the benefit of transfer.", [c])]
