"""The paper's findings, each checked against the study's numbers over its seeds (experiments.aggregate).

A comparison of A with B is paired by seed: d_s = A_s − B_s, signed so that d > 0 means A is
better. Its interval is the two-sided `confidence` (default 90%) Student-t interval of the mean
difference, [lo, hi] = mean(d) ∓ t((1+confidence)/2, n−1)·sd(d)/√n. Each claim names its test:

    superiority      "A beats B"          holds: lo > 0;  does not hold: hi < 0;  else inconclusive
                     (a one-sided test at level (1−confidence)/2, 5% by default)
    non-inferiority  "A matches or beats B" (the paper's wording)
                                          holds: lo > −margin;  does not hold: hi < −margin;
                                          else inconclusive (TOST's lower half: A is not worse
                                          than B by more than the margin)
    equivalence      "A matches B"        TOST: holds when [lo, hi] lies inside ±margin; does not
                                          hold when it lies outside (lo ≥ margin or hi ≤ −margin);
                                          straddling: inconclusive
    exceeds          "X is above m"       a one-sample version against a constant: holds when
                                          lo > m, does not hold when hi < m (the basin exit)

The margins (accuracy, NLL, barrier) are declared in the study config's [verdicts] table before
the run, with the confidence. Fewer than two seeds give no interval: every test is inconclusive.
A claim on two measures (accuracy and NLL) holds when both hold, does not hold when neither does,
is mixed when one holds and the other does not, and is inconclusive otherwise. A comparison with
a non-finite number (a diverged member) is undecided. A finding whose numbers were not computed
(no from-scratch baseline, no SSE grid, no pairwise barriers) is left out.

Every comparison also carries the smallest true difference its seeds would detect with 80%
power, (t(1−α, n−1) + t(0.8, n−1))·sd/√n, so a reader sees whether "inconclusive" means "no
effect" or "too few seeds". The headline counts each comparison once, by test kind.

A finding is {"id", "claim", "test", "measure", "verdict", "text", "comparisons"} (and
"same_as" when it repeats another finding's comparison, which the headline then skips).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from .aggregate import SEMI_LOCAL, basin_position
from .markdown import TYPE_LABEL, fmt_num, fmt_pct, pm
from .paired import DEFAULTS, cmp_text, combine, compare, equivalence, exceeds, non_inferiority, superiority

VERDICTS = ("holds", "does not hold", "mixed", "inconclusive", "undecided")
TESTS = ("superiority", "non-inferiority", "equivalence", "exceeds")


def settings(summary: dict) -> dict:
    """The study's verdict settings (its config's [verdicts] table), defaults where absent."""
    return {**DEFAULTS, **(summary.get("study", {}).get("verdicts") or {})}


def _vals(m: dict, key: str) -> list[float | None] | None:
    s = m["stats"].get(key)
    return None if s is None else s["values"]


def _mean(m: dict | None, key: str) -> Any:
    if m is None:
        return None
    s = m["stats"].get(key)
    return None if s is None else s["mean"]


def _pm(m: dict, key: str, fmt=fmt_pct) -> str:
    """mean ± std of a method's statistic (markdown.pm)."""
    return pm(m["stats"].get(key), fmt)


def _acc_nll(a: dict, b: dict, claim: str, cfg: dict, akey: str = "acc", nkey: str = "nll"
             ) -> tuple[str, list[dict]]:
    """Verdict of "A beats B" (superiority) or "A matches or beats B" (non-inferiority) on accuracy and NLL."""
    conf = cfg["confidence"]
    ca = compare(_vals(a, akey), _vals(b, akey), confidence=conf)
    cn = compare(_vals(a, nkey), _vals(b, nkey), higher_is_better=False, confidence=conf)
    if claim == "beats":
        va, vn = superiority(ca), superiority(cn)
    else:
        va, vn = non_inferiority(ca, cfg["acc_margin"]), non_inferiority(cn, cfg["nll_margin"])
    ca["measure"], cn["measure"] = akey, nkey
    ca["verdict"], cn["verdict"] = va, vn
    return combine(va, vn), [ca, cn]


def _two(cs: list[dict]) -> str:
    return f"accuracy {cmp_text(cs[0], True)}; NLL {cmp_text(cs[1], False)}"


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


def _finding(fid: str, claim: str, test: str, measure: str, verdict: str, text: str, comparisons: list[dict],
             **extra: Any) -> dict:
    return {"id": fid, "claim": claim, "test": test, "measure": measure, "verdict": verdict, "text": text,
            "comparisons": comparisons, **extra}


def findings(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims, each with the study's numbers, its test, its interval and a verdict."""
    cfg = settings(summary)
    conf = cfg["confidence"]
    out = []
    K = summary["study"]["members"]
    n_seeds = len(summary["study"]["seeds"])
    tr = summary["transfer"]
    on = "validation" if summary.get("selection_split") == "val" else "test (no validation split)"

    if tr["scratch_acc"]["n"]:
        c = compare(tr["finetuned_acc"]["values"], tr["scratch_acc"]["values"], confidence=conf)
        c["measure"] = "acc"
        v = superiority(c)
        out.append(_finding(
            "transfer", "Fine-tuning from the pre-trained checkpoint beats training from scratch on the target task.",
            "superiority", "test accuracy of the fine-tuned model against the from-scratch model", v,
            f"fine-tuned {fmt_pct(tr['finetuned_acc']['mean'])} vs from scratch {fmt_pct(tr['scratch_acc']['mean'])}; "
            + cmp_text(c, True) + ".", [c]))

    loc, glo = _by_type(summary, "local_de"), _by_type(summary, "global_de")
    loc_m, glo_m = (loc[0][1] if loc else None), (glo[0][1] if glo else None)
    if loc_m and glo_m and "pairwise_train_loss" in loc_m["stats"] and "pairwise_train_loss" in glo_m["stats"]:
        cl = compare(_vals(glo_m, "pairwise_train_loss"), _vals(loc_m, "pairwise_train_loss"), confidence=conf)
        ce = compare(_vals(glo_m, "pairwise_test_error"), _vals(loc_m, "pairwise_test_error"), confidence=conf)
        cl["measure"], ce["measure"] = "pairwise train-loss barrier", "pairwise test-error barrier"
        out.append(_finding(
            "basins", "Members fine-tuned from one checkpoint share a basin; members fine-tuned from different "
            "checkpoints do not.", "superiority", "mean pairwise barrier among a method's members, train loss and "
            "test error (Global DE's higher than Local DE's)", combine(superiority(cl), superiority(ce)),
            f"train-loss barrier {_pm(loc_m, 'pairwise_train_loss', fmt_num)} among Local DE members vs "
            f"{_pm(glo_m, 'pairwise_train_loss', fmt_num)} among Global DE members ({cmp_text(cl, False)}); "
            f"test-error barrier {_pm(loc_m, 'pairwise_test_error')} vs {_pm(glo_m, 'pairwise_test_error')} "
            f"({cmp_text(ce, True)}).", [cl, ce]))

    if loc_m and glo_m and "pairwise_aligned_train_loss" in glo_m["stats"] \
            and "pairwise_aligned_train_loss" in loc_m["stats"]:
        out.append(_modulo_permutation(loc_m, glo_m, cfg))

    if loc_m and glo_m:
        v, cs = _acc_nll(glo_m, loc_m, "beats", cfg)
        out.append(_finding(
            "global_vs_local", "Global DE ensembles beat Local DE ensembles.", "superiority",
            f"test accuracy and NLL of the size-{K} ensembles", v,
            f"Global DE {_pm(glo_m, 'acc')} / NLL {_pm(glo_m, 'nll', fmt_num)} vs Local DE {_pm(loc_m, 'acc')} / "
            f"{_pm(loc_m, 'nll', fmt_num)}; {_two(cs)}.", cs))

    semi = _selected(summary, SEMI_LOCAL)
    best_semi = _best_on_selection(summary, semi)
    if loc_m and best_semi:
        name, m = best_semi
        v, cs = _acc_nll(m, loc_m, "at_least", cfg)
        swa = _selected(summary, "swa")
        swa_text = ""
        if swa:
            sv, scs = _acc_nll(swa[0][1], loc_m, "at_least", cfg)
            swa_text = (f" {swa[0][1]['label']} (a local method, apart): {_pm(swa[0][1], 'acc')} / "
                        f"{_pm(swa[0][1], 'nll', fmt_num)}, {sv} against Local DE ({_two(scs)}).")
        out.append(_finding(
            "semi_vs_local", "With well-chosen cycle hyperparameters, a semi-local method (SSE, StarSSE, FGE) matches "
            "or beats Local DE.", "non-inferiority", f"test accuracy and NLL of the size-{K} ensembles; each "
            f"method's cell chosen on {on}, then the best of those", v,
            f"selected {m['label']}: {_pm(m, 'acc')} / NLL {_pm(m, 'nll', fmt_num)} vs Local DE {_pm(loc_m, 'acc')} / "
            f"{_pm(loc_m, 'nll', fmt_num)}; {_two(cs)}." + swa_text, cs))

    others = [(n, m) for n, m in _selected(summary, (*SEMI_LOCAL, "swa", "local_de"))]
    best_other = _best_on_selection(summary, others)
    if glo_m and best_other:
        name, m = best_other
        v, cs = _acc_nll(glo_m, m, "beats", cfg)
        same = {"same_as": "global_vs_local"} if m["type"] == "local_de" else {}
        out.append(_finding(
            "gap", "Local and semi-local methods do not reach Global DE.", "superiority",
            f"test accuracy and NLL of the size-{K} ensembles: Global DE against the best other method chosen on {on}",
            v, f"Global DE {_pm(glo_m, 'acc')} / NLL {_pm(glo_m, 'nll', fmt_num)} vs the best other, {m['label']}, "
               f"{_pm(m, 'acc')} / {_pm(m, 'nll', fmt_num)}; {_two(cs)}."
               + (" The best other is Local DE: the same comparison as Global DE against Local DE, counted once."
                  if same else ""), cs, **same))

    for t in ("sse", "starsse"):
        cells = [(n, m) for n, m in _by_type(summary, t) if m.get("params", {}).get("lr_scale") is not None]
        if len({m["params"]["lr_scale"] for _, m in cells}) < 2:
            continue
        out.extend(_lr_findings(summary, t, TYPE_LABEL[t], cells, K, on, cfg))

    if tr["scratch_acc"]["n"]:
        out.extend(_leaving_costs(summary, cfg))

    sse_sel, star_sel = _selected(summary, "sse"), _selected(summary, "starsse")
    if sse_sel and star_sel:
        (_, sm), (_, tm) = _best_on_selection(summary, sse_sel), _best_on_selection(summary, star_sel)
        v, cs = _acc_nll(tm, sm, "at_least", cfg)
        out.append(_finding(
            "starsse_vs_sse", "StarSSE at its best cell is at least as good as SSE at its best.", "non-inferiority",
            f"test accuracy and NLL of the size-{K} ensembles, each cell chosen on {on}", v,
            f"{tm['label']}: {_pm(tm, 'acc')} / NLL {_pm(tm, 'nll', fmt_num)} vs {sm['label']}: {_pm(sm, 'acc')} / "
            f"{_pm(sm, 'nll', fmt_num)}; {_two(cs)}.", cs))
    out.extend(_soup_findings(summary, star_sel, sse_sel, loc_m, on, cfg))
    for f in out:
        f["seeds"] = n_seeds
    return out


def _soup_findings(summary: dict, star_sel: list, sse_sel: list, loc_m: dict | None, on: str, cfg: dict) -> list:
    """The abstract's soup claims: a StarSSE soup against a Local DE soup, an SSE soup and the
    single fine-tuned model (each cell chosen on the selection split)."""
    if not star_sel or "soup_acc" not in star_sel[0][1]["stats"]:
        return []
    tn, tm = _best_on_selection(summary, star_sel)
    out = []
    what = ("test accuracy and NLL of the uniform weight average of the K members, BN recomputed (StarSSE's cell "
            f"chosen on {on}")
    if loc_m and "soup_acc" in loc_m["stats"]:
        v, cs = _acc_nll(tm, loc_m, "at_least", cfg, "soup_acc", "soup_nll")
        out.append(_finding(
            "soups", "A uniform soup of StarSSE members is at least as good as a soup of Local DE members.",
            "non-inferiority", what + ")", v,
            f"{tm['label']} soup {_pm(tm, 'soup_acc')} / NLL {_pm(tm, 'soup_nll', fmt_num)} vs Local DE soup "
            f"{_pm(loc_m, 'soup_acc')} / {_pm(loc_m, 'soup_nll', fmt_num)}; {_two(cs)}.", cs))
    if sse_sel and "soup_acc" in sse_sel[0][1]["stats"]:
        sn, sm = _best_on_selection(summary, sse_sel)
        v, cs = _acc_nll(tm, sm, "beats", cfg, "soup_acc", "soup_nll")
        out.append(_finding(
            "starsse_soup_vs_sse_soup", "A uniform soup of StarSSE members beats a soup of SSE members.",
            "superiority", what + "; SSE's too)", v,
            f"{tm['label']} soup {_pm(tm, 'soup_acc')} / NLL {_pm(tm, 'soup_nll', fmt_num)} vs {sm['label']} soup "
            f"{_pm(sm, 'soup_acc')} / {_pm(sm, 'soup_nll', fmt_num)}; {_two(cs)}.", cs))
    ft = summary["transfer"]
    if ft.get("finetuned_acc", {}).get("n") and ft.get("finetuned_nll"):
        single = {"stats": {"soup_acc": ft["finetuned_acc"], "soup_nll": ft["finetuned_nll"]}}
        v, cs = _acc_nll(tm, single, "beats", cfg, "soup_acc", "soup_nll")
        out.append(_finding(
            "starsse_soup_vs_finetuned", "A uniform soup of StarSSE members beats the single fine-tuned model.",
            "superiority", what + "; the fine-tuned model alone)", v,
            f"{tm['label']} soup {_pm(tm, 'soup_acc')} / NLL {_pm(tm, 'soup_nll', fmt_num)} vs the fine-tuned model "
            f"{fmt_pct(ft['finetuned_acc']['mean'])} / {fmt_num(ft['finetuned_nll']['mean'])}; {_two(cs)}.", cs))
    return out


def _modulo_permutation(loc_m: dict, glo_m: dict, cfg: dict) -> dict:
    """Are members of different checkpoints one basin once their hidden units are aligned?
    Three tests of the pairwise train-loss barrier: Global DE's exceeds the barrier margin before
    alignment (there is a wall to remove), alignment lowers it (superiority), and aligned Global
    DE's matches aligned Local DE's within the margin (equivalence). Holds when all three hold;
    does not hold when a wall is left (aligned Global DE's higher than aligned Local DE's beyond
    the margin) or alignment does not lower it; otherwise inconclusive (no wall to begin with
    shows nothing either way)."""
    conf, margin = cfg["confidence"], cfg["barrier_margin"]
    vw, wall = exceeds(_vals(glo_m, "pairwise_train_loss"), margin, conf)
    lowered = compare(_vals(glo_m, "pairwise_aligned_train_loss"), _vals(glo_m, "pairwise_train_loss"),
                      higher_is_better=False, confidence=conf)
    level = compare(_vals(glo_m, "pairwise_aligned_train_loss"), _vals(loc_m, "pairwise_aligned_train_loss"),
                    higher_is_better=False, confidence=conf)
    wall["measure"] = "Global DE pairwise train-loss barrier before alignment, against the margin"
    lowered["measure"] = "Global DE pairwise train-loss barrier, aligned against not aligned"
    level["measure"] = "aligned pairwise train-loss barrier, Global DE against Local DE"
    vl, ve = superiority(lowered), equivalence(level, margin)
    method = glo_m.get("align_method") or "weight"
    return _finding(
        "one_basin_modulo_permutation", "Members fine-tuned from different checkpoints are one basin up to a "
        "permutation of their hidden units: aligning them removes the barrier between them.",
        "exceeds, superiority and equivalence",
        f"mean pairwise train-loss barrier after aligning every member's units to the first member's ({method} "
        "matching, `landscape align`)", _one_basin_verdict(vw, vl, ve, level),
        f"Global DE {_pm(glo_m, 'pairwise_train_loss', fmt_num)} before alignment ({cmp_text(wall, False)}), "
        f"{_pm(glo_m, 'pairwise_aligned_train_loss', fmt_num)} after ({cmp_text(lowered, False)}); Local DE "
        f"{_pm(loc_m, 'pairwise_train_loss', fmt_num)} before, {_pm(loc_m, 'pairwise_aligned_train_loss', fmt_num)} "
        f"after; aligned Global DE against aligned Local DE: {cmp_text(level, False)}; test-error barrier "
        f"{_pm(glo_m, 'pairwise_test_error')} → {_pm(glo_m, 'pairwise_aligned_test_error')} (Global DE).",
        [wall, lowered, level])


def _one_basin_verdict(wall: str, lowered: str, level: str, level_cmp: dict) -> str:
    if "undecided" in (wall, lowered, level):
        return "undecided"
    if wall == "holds" and lowered == "holds" and level == "holds":
        return "holds"
    wall_left = level == "does not hold" and level_cmp["diff"] < 0  # aligned Global DE's barrier is higher
    if wall_left or (wall == "holds" and lowered == "does not hold"):
        return "does not hold"
    return "inconclusive"


# ----------------------------------------------------------------------------------------------
# where members are: the basin exit rests on barriers (experiments.aggregate.basin_position)


def _position_text(m: dict, p: dict) -> str:
    curve = p["curve_barrier_train_loss"]
    return (f"{m['label']}: line train-loss barrier {cmp_text(p['line'], False)}; trained-curve barrier "
            f"{fmt_num(curve) if curve is not None else 'not trained'}; distance to the fine-tuned model "
            f"{fmt_num(p['distance'])} (a description, not a test) → {p['basin']}")


def _lr_findings(summary: dict, t: str, label: str, cells: list, K: int, on: str, cfg: dict) -> list[dict]:
    out = []
    pos = {n: m.get("position") or basin_position(m, cfg) for n, m in cells}
    by_lr = sorted(cells, key=lambda nm: (nm[1]["params"]["lr_scale"], nm[1]["params"].get("cycle_epochs") or 0))
    top_n, top = by_lr[-1]
    p = pos[top_n]
    exit_v = {"out": "holds", "in": "does not hold"}.get(p["basin"], "inconclusive")
    if p["line_verdict"] == "undecided":
        exit_v = "undecided"
    out.append(_finding(
        f"{t}_exit", f"{label} members trained with the largest cycle lr leave the pre-train basin.", "exceeds",
        f"train-loss barrier between each member and the fine-tuned model, on the straight line (over seeds) and on a "
        f"trained Bezier curve (first seed), against the barrier margin {fmt_num(cfg['barrier_margin'])}; out when "
        "both exceed it", exit_v, _position_text(top, p) + ".", [p["line"]]))
    inside = [(n, m) for n, m in cells if pos[n]["basin"] == "in"]
    outside = [(n, m) for n, m in cells if pos[n]["basin"] == "out"]
    fid, claim = f"{t}_lr_curve", (f"{label} ensembles improve with the cycle lr while members stay in the basin and "
                                   "get worse once they leave it.")
    measure = (f"test accuracy and NLL of the size-{K} ensembles: the largest in-basin lr against the smallest at the "
               f"same cycle length (non-inferiority), and the best in-basin cell against the best out-of-basin cell "
               f"(chosen on {on}; superiority)")
    if not inside or not outside:
        n_out = len(outside)
        out.append(_finding(fid, claim, "non-inferiority and superiority", measure, "inconclusive",
                            f"{len(inside)} cell(s) in the basin and {n_out} out of it by the barrier test (the others "
                            "unclear): " + ("no cell left the basin, so the fall cannot be tested at this scale"
                                            if not n_out else "no cell stayed in the basin") + ".", []))
        return out
    key = "val_acc" if summary.get("selection_split") == "val" else "acc"
    best_in = max(inside, key=lambda nm: _mean(nm[1], key) if _mean(nm[1], key) is not None else -math.inf)
    best_out = max(outside, key=lambda nm: _mean(nm[1], key) if _mean(nm[1], key) is not None else -math.inf)
    C = best_in[1]["params"]["cycle_epochs"]
    same_c = [nm for nm in inside if nm[1]["params"]["cycle_epochs"] == C]
    low = min(same_c, key=lambda nm: nm[1]["params"]["lr_scale"])
    top_in = max(same_c, key=lambda nm: nm[1]["params"]["lr_scale"])
    fall_v, fall = _acc_nll(best_in[1], best_out[1], "beats", cfg)
    if top_in[0] != low[0]:
        rise_v, rise = _acc_nll(top_in[1], low[1], "at_least", cfg)
        verdict = combine(rise_v, fall_v)
        rise_text = (f"in the basin: {low[1]['label']} {_pm(low[1], 'acc')} / {_pm(low[1], 'nll', fmt_num)} → "
                     f"{top_in[1]['label']} {_pm(top_in[1], 'acc')} / {_pm(top_in[1], 'nll', fmt_num)} ({rise_v}: "
                     f"{_two(rise)}); ")
    else:  # one cycle lr in the basin at that cycle length: nothing to rise along
        rise, verdict = [], fall_v
        rise_text = f"one cycle lr in the basin at C = {C:g} epochs ({low[1]['label']}), so only the fall is tested; "
    out.append(_finding(
        fid, claim, "non-inferiority and superiority", measure, verdict,
        rise_text + f"best in the basin {best_in[1]['label']} vs best outside {best_out[1]['label']} "
        f"{_pm(best_out[1], 'acc')} / {_pm(best_out[1], 'nll', fmt_num)} ({fall_v}: {_two(fall)}).", rise + fall))
    return out


def _seed_mean(ms: list[dict], key: str) -> list[float | None]:
    """Per seed, the mean of a statistic over several methods."""
    cols = list(zip(*[m["stats"][key]["values"] for m in ms if key in m["stats"]]))
    return [None if any(v is None for v in col) else math.fsum(col) / len(col) for col in cols]


def _leaving_costs(summary: dict, cfg: dict) -> list[dict]:
    cyc = [m for m in summary["methods"].values() if m["type"] in ("sse", "starsse") and m.get("basin")]
    inside, outside = [m for m in cyc if m["basin"] == "in"], [m for m in cyc if m["basin"] == "out"]
    claim = "Leaving the basin costs individual accuracy, towards the from-scratch level."
    measure = "mean test accuracy of SSE/StarSSE members (the fine-tuned model excluded) in the basin against out of it"
    if not cyc:
        return []
    if not inside or not outside:
        return [_finding("leaving_costs_transfer", claim, "superiority", measure, "inconclusive",
                         f"{len(inside)} SSE/StarSSE cell(s) in the basin and {len(outside)} out of it by the barrier "
                         "test: nothing to compare at this scale.", [])]
    tr = summary["transfer"]
    a, b = _seed_mean(inside, "new_member_mean_acc"), _seed_mean(outside, "new_member_mean_acc")
    c = compare(a, b, confidence=cfg["confidence"])
    c["measure"] = "member accuracy"
    ai, ao = statistics.fmean([x for x in a if x is not None]), statistics.fmean([x for x in b if x is not None])
    margin = tr["margin"]["mean"]
    lost = (ai - ao) / margin if margin else float("nan")
    return [_finding(
        "leaving_costs_transfer", claim, "superiority", measure, superiority(c),
        f"members in the basin {fmt_pct(ai)}, out of it {fmt_pct(ao)} ({cmp_text(c, True)}); the fine-tuned "
        f"model {fmt_pct(tr['finetuned_acc']['mean'])}, from scratch {fmt_pct(tr['scratch_acc']['mean'])}: leaving "
        f"loses {fmt_pct(lost)} of the benefit of transfer.", [c])]
