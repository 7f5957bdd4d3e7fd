"""The verdicts and the aggregation over seeds, on summaries built by hand.

The tolerance of a seed-paired comparison is checked against scipy's paired t-test confidence
interval (an independent implementation); every finding is shown a case that holds, one that
does not and one within its tolerance.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments.aggregate import basin_reference, classify, select_cells, stat
from experiments.verdicts import at_least, beats, combine, compare, findings

SEEDS = [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# the comparison


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_tolerance_is_the_paired_t_confidence_interval(n):
    rng = np.random.default_rng(n)
    for trial in range(40):
        a = rng.normal(0.8, 0.02, n)
        b = a - rng.normal(rng.choice([-0.03, 0.0, 0.03]), 0.02, n)
        c = compare(a.tolist(), b.tolist(), floor=0.0)
        ci = sps.ttest_rel(a, b).confidence_interval(0.95)
        assert c["diff"] == pytest.approx(np.mean(a - b), rel=1e-12)
        assert c["tol"] == pytest.approx((ci.high - ci.low) / 2, rel=1e-9)
        want = "better" if ci.low > 0 else "worse" if ci.high < 0 else "tie"
        assert c["outcome"] == want, (a, b)
        lower = compare(a.tolist(), b.tolist(), floor=0.0, higher_is_better=False)  # NLL-like: lower wins
        assert lower["outcome"] == {"better": "worse", "worse": "better", "tie": "tie"}[want]


def test_floor_single_seed_constant_and_non_finite():
    assert compare([0.9], [0.8], floor=0.002) == {"outcome": "better", "n": 1, "diff": pytest.approx(0.1),
                                                  "tol": 0.002, "floor": 0.002}
    assert compare([0.801, 0.801], [0.8, 0.8], floor=0.002)["outcome"] == "tie"  # no spread, below the floor
    assert compare([5.0, 6.0, 7.0], 1.0, floor=0.05)["outcome"] == "better"  # against a threshold
    assert compare([0.9, float("nan")], [0.8, 0.8], floor=0.002)["outcome"] == "undecided"
    assert compare(None, [0.8], floor=0.002)["outcome"] == "missing"
    assert compare([None, None], [0.8, 0.8], floor=0.002)["outcome"] == "missing"


def test_claim_rules():
    better, worse, tie = ({"outcome": o} for o in ("better", "worse", "tie"))
    assert [beats(c) for c in (better, worse, tie)] == ["holds", "does not hold", "inconclusive"]
    assert [at_least(c) for c in (better, worse, tie)] == ["holds", "does not hold", "holds"]
    assert beats({"outcome": "undecided"}) == "undecided"
    assert combine("holds", "holds") == "holds"
    assert combine("does not hold", "does not hold") == "does not hold"
    assert combine("holds", "does not hold") == "mixed"
    assert combine("holds", "inconclusive") == "inconclusive"
    assert combine("holds", "undecided") == "undecided"


# ---------------------------------------------------------------------------------------------
# summaries built by hand


def _m(mtype, name=None, group=None, basin=None, lr=None, C=None, cost=9.0, **values):
    """A method of an aggregate summary; `values`: statistic -> its per-seed values."""
    params = {} if lr is None else {"lr_scale": lr, "cycle_epochs": C, "cycle_scale": None}
    return {"type": mtype, "group": group or name or mtype, "label": name or mtype, "params": params,
            "cycle_lr": lr, "cost_epochs": cost, "size": 5, "basin": basin,
            "stats": {k: stat(v) for k, v in values.items()}}


def _summary(methods: dict, transfer: dict | None = None, measures: list | None = None,
             selected: dict | None = None) -> dict:
    tr = {k: stat(v) for k, v in (transfer or {"finetuned_acc": [None] * 3, "scratch_acc": [None] * 3,
                                               "margin": [None] * 3}).items()}
    if selected is None:
        selected = {m["group"]: {"cell": n, "type": m["type"], "cells": 1} for n, m in methods.items()}
    return {"study": {"members": 5, "seeds": SEEDS}, "transfer": tr, "methods": methods,
            "basin": {"measures": measures or []}, "selected": selected, "selection_split": "val"}


def _verdict(summary: dict, fid: str) -> str:
    return next(f["verdict"] for f in findings(summary) if f["id"] == fid)


LOCAL = dict(acc=[0.90, 0.91, 0.92], nll=[0.30, 0.29, 0.28], val_acc=[0.90, 0.91, 0.92])


def test_global_vs_local():
    def s(acc, nll):
        return _summary({"local_de": _m("local_de", **LOCAL), "global_de": _m("global_de", acc=acc, nll=nll)})
    assert _verdict(s([0.95, 0.96, 0.97], [0.25, 0.24, 0.23]), "global_vs_local") == "holds"
    assert _verdict(s([0.85, 0.86, 0.87], [0.35, 0.34, 0.33]), "global_vs_local") == "does not hold"
    assert _verdict(s([0.95, 0.96, 0.97], [0.35, 0.34, 0.33]), "global_vs_local") == "mixed"
    # within the seeds' spread: +3, −2, +2 points is no evidence either way
    assert _verdict(s([0.93, 0.89, 0.94], [0.25, 0.34, 0.25]), "global_vs_local") == "inconclusive"


def test_semi_local_matches_or_beats_local():
    def s(acc, nll):
        return _summary({"local_de": _m("local_de", **LOCAL),
                         "starsse": _m("starsse", acc=acc, nll=nll, val_acc=acc)})
    assert _verdict(s([0.93, 0.94, 0.95], [0.25, 0.24, 0.23]), "semi_vs_local") == "holds"
    assert _verdict(s([0.899, 0.911, 0.918], [0.301, 0.289, 0.281]), "semi_vs_local") == "holds"  # a match
    assert _verdict(s([0.85, 0.86, 0.87], [0.35, 0.34, 0.33]), "semi_vs_local") == "does not hold"
    # SWA is local: never chosen as the semi-local method even when it is the best
    sw = _summary({"local_de": _m("local_de", **LOCAL), "starsse": _m("starsse", acc=[0.8] * 3, nll=[0.5] * 3,
                                                                      val_acc=[0.8] * 3),
                   "swa": _m("swa", acc=[0.99] * 3, nll=[0.1] * 3, val_acc=[0.99] * 3)})
    f = next(f for f in findings(sw) if f["id"] == "semi_vs_local")
    assert f["verdict"] == "does not hold" and "selected starsse" in f["text"] and "SWA (a local method" in f["text"]


def test_gap_to_global():
    def s(acc):
        return _summary({"local_de": _m("local_de", **LOCAL),
                         "global_de": _m("global_de", acc=[0.96, 0.97, 0.98], nll=[0.2, 0.19, 0.18]),
                         "sse": _m("sse", acc=acc, nll=[0.3, 0.29, 0.28], val_acc=acc)})
    assert _verdict(s([0.91, 0.92, 0.93]), "gap") == "holds"
    assert _verdict(s([0.99, 0.995, 0.999]), "gap") == "mixed"  # more accurate, worse NLL
    assert _verdict(s([0.96, 0.97, 0.981]), "gap") == "inconclusive"  # accuracy reached, within tolerance


def test_basins_and_transfer():
    def s(glo_barrier, ft, sc, glo_error=(0.4, 0.5, 0.45)):
        return _summary({"local_de": _m("local_de", pairwise_train_loss=[0.0, 0.01, 0.0],
                                        pairwise_test_error=[0.0, 0.0, 0.01], **LOCAL),
                         "global_de": _m("global_de", pairwise_train_loss=glo_barrier,
                                         pairwise_test_error=list(glo_error), acc=[0.9] * 3, nll=[0.3] * 3)},
                        transfer={"finetuned_acc": ft, "scratch_acc": sc,
                                  "margin": [a - b for a, b in zip(ft, sc)]})
    holds = s([1.2, 1.3, 1.4], [0.88, 0.89, 0.9], [0.7, 0.72, 0.71])
    assert _verdict(holds, "basins") == "holds" and _verdict(holds, "transfer") == "holds"
    # no train-loss barrier among Global DE members: within the floor of Local DE's, the claim is open
    assert _verdict(s([0.0, 0.0, 0.0], [0.7, 0.72, 0.71], [0.88, 0.89, 0.9]), "basins") == "inconclusive"
    flat = s([0.0, 0.0, 0.0], [0.7, 0.72, 0.71], [0.88, 0.89, 0.9], glo_error=(0.0, 0.0, 0.0))
    assert _verdict(flat, "basins") == "inconclusive"
    # Global DE's members connected (no error barrier) while Local DE's are not: a contradiction
    loc_walls = _summary({"local_de": _m("local_de", pairwise_train_loss=[1.0, 1.1, 1.2],
                                         pairwise_test_error=[0.3, 0.35, 0.4], **LOCAL),
                          "global_de": _m("global_de", pairwise_train_loss=[0.0] * 3, pairwise_test_error=[0.0] * 3,
                                          acc=[0.9] * 3, nll=[0.3] * 3)})
    assert _verdict(loc_walls, "basins") == "does not hold"
    assert _verdict(s([0.0, 0.0, 0.0], [0.7, 0.72, 0.71], [0.88, 0.89, 0.9]), "transfer") == "does not hold"
    assert _verdict(s([1.2, 1.3, 1.4], [0.88, 0.70, 0.9], [0.7, 0.85, 0.71]), "transfer") == "inconclusive"


MEASURES = [{"key": "new_member_mean_dist_finetuned", "label": "distance to the fine-tuned model", "local": 5.0,
             "global": 15.0, "separates": True, "threshold": 10.0}]


def test_one_basin_up_to_permutation():
    """Alignment must lower Global DE's barrier beyond the seeds' spread, and leave it no higher
    than aligned Local DE's (within the tolerance)."""
    def s(glo_plain, glo_aligned, loc_aligned=(0.0, 0.01, 0.0)):
        return _summary({"local_de": _m("local_de", pairwise_train_loss=[0.0, 0.01, 0.0],
                                        pairwise_aligned_train_loss=list(loc_aligned), **LOCAL),
                         "global_de": _m("global_de", pairwise_train_loss=glo_plain,
                                         pairwise_aligned_train_loss=glo_aligned, acc=[0.9] * 3, nll=[0.3] * 3)})
    fid = "one_basin_modulo_permutation"
    assert _verdict(s([1.2, 1.3, 1.4], [0.01, 0.0, 0.02]), fid) == "holds"
    # lowered, but a wall is left that Local DE's members do not have: not one basin
    assert _verdict(s([1.2, 1.3, 1.4], [0.5, 0.55, 0.6]), fid) == "does not hold"
    assert _verdict(s([1.2, 1.3, 1.4], [1.3, 1.2, 1.4]), fid) == "does not hold"  # alignment changed nothing
    # no wall left after alignment, but Global DE had none before either: nothing shown by aligning
    assert _verdict(s([0.01, 0.0, 0.01], [0.0, 0.0, 0.01]), fid) == "inconclusive"
    # lowered on average, but one seed says otherwise: no evidence that alignment helps
    assert _verdict(s([1.2, 1.3, 1.4], [0.1, 1.35, 0.1]), fid) == "inconclusive"
    # not computed (analysis.align = "none"): no finding
    plain = _summary({"local_de": _m("local_de", pairwise_train_loss=[0.0] * 3, **LOCAL),
                      "global_de": _m("global_de", pairwise_train_loss=[1.0] * 3, acc=[0.9] * 3, nll=[0.3] * 3)})
    assert fid not in [f["id"] for f in findings(plain)]


def _cycle_summary(out_acc, out_nll, top_dist=(25.0, 26.0, 27.0), in_member=(0.88, 0.87, 0.89),
                   out_member=(0.75, 0.74, 0.76)):
    """StarSSE cells at 0.5·η and 2·η in the basin, 8·η out of it, one cycle length."""
    cells = {
        "starsse-lr0.5": _m("starsse", "starsse-lr0.5", "starsse", "in", 0.5, 30.0, acc=[0.90, 0.91, 0.92],
                            nll=[0.30, 0.29, 0.28], val_acc=[0.90, 0.91, 0.92], new_member_mean_acc=list(in_member),
                            new_member_mean_dist_finetuned=[1.0, 1.1, 1.2]),
        "starsse-lr2": _m("starsse", "starsse-lr2", "starsse", "in", 2.0, 30.0, acc=[0.92, 0.93, 0.94],
                          nll=[0.28, 0.27, 0.26], val_acc=[0.92, 0.93, 0.94], new_member_mean_acc=list(in_member),
                          new_member_mean_dist_finetuned=[6.0, 6.5, 7.0]),
        "starsse-lr8": _m("starsse", "starsse-lr8", "starsse", "out", 8.0, 30.0, acc=out_acc, nll=out_nll,
                          val_acc=out_acc, new_member_mean_acc=list(out_member),
                          new_member_mean_dist_finetuned=list(top_dist)),
    }
    methods = {"local_de": _m("local_de", basin="in", **LOCAL), **cells}
    sel = {"local_de": {"cell": "local_de", "type": "local_de", "cells": 1},
           "starsse": {"cell": "starsse-lr2", "type": "starsse", "cells": 3}}
    return _summary(methods, transfer={"finetuned_acc": [0.88, 0.89, 0.9], "scratch_acc": [0.7, 0.72, 0.71],
                                       "margin": [0.18, 0.17, 0.19]}, measures=MEASURES, selected=sel)


def test_cycle_lr_curve_and_basin_exit():
    holds = _cycle_summary([0.88, 0.89, 0.90], [0.40, 0.41, 0.42])
    assert _verdict(holds, "starsse_lr_curve") == "holds"
    assert _verdict(holds, "starsse_exit") == "holds"
    # leaving the basin gave the better ensemble: the curve rises but does not fall
    assert _verdict(_cycle_summary([0.96, 0.97, 0.98], [0.20, 0.19, 0.18]), "starsse_lr_curve") == "mixed"
    # outside within the tolerance of the best inside
    assert _verdict(_cycle_summary([0.93, 0.90, 0.95], [0.27, 0.30, 0.25]), "starsse_lr_curve") == "inconclusive"
    # the largest lr's members sit short of the threshold: they did not leave
    assert _verdict(_cycle_summary([0.88] * 3, [0.4] * 3, top_dist=(3.0, 3.5, 4.0)), "starsse_exit") == "does not hold"
    assert _verdict(_cycle_summary([0.88] * 3, [0.4] * 3, top_dist=(5.0, 20.0, 9.0)), "starsse_exit") == "inconclusive"


def test_leaving_the_basin_costs_accuracy():
    base = dict(out_acc=[0.88] * 3, out_nll=[0.4] * 3)
    f = next(f for f in findings(_cycle_summary(**base)) if f["id"] == "leaving_costs_transfer")
    assert f["verdict"] == "holds"
    # in 0.88 / out 0.75 of a margin of 0.18 (0.89 vs 0.71)
    assert "loses 72.2% of the benefit of transfer" in f["text"]
    same = _cycle_summary(**base, out_member=(0.88, 0.87, 0.89))
    assert _verdict(same, "leaving_costs_transfer") == "inconclusive"
    better = _cycle_summary(**base, out_member=(0.95, 0.94, 0.96))
    assert _verdict(better, "leaving_costs_transfer") == "does not hold"


def test_starsse_against_sse_and_soups():
    def s(star_acc, star_soup, soup_nll=(0.3, 0.29, 0.28)):
        methods = {"local_de": _m("local_de", soup_acc=[0.90, 0.91, 0.92], soup_nll=[0.3, 0.29, 0.28], **LOCAL),
                   "sse": _m("sse", acc=[0.90, 0.91, 0.92], nll=[0.3, 0.29, 0.28], val_acc=[0.9] * 3),
                   "starsse": _m("starsse", acc=star_acc, nll=[0.3, 0.29, 0.28], val_acc=[0.9] * 3,
                                 soup_acc=star_soup, soup_nll=list(soup_nll))}
        return _summary(methods)
    assert _verdict(s([0.93, 0.94, 0.95], [0.93, 0.94, 0.95]), "starsse_vs_sse") == "holds"
    assert _verdict(s([0.905, 0.909, 0.921], [0.90, 0.91, 0.92]), "starsse_vs_sse") == "holds"  # a match
    assert _verdict(s([0.85, 0.86, 0.87], [0.85, 0.86, 0.87]), "starsse_vs_sse") == "mixed"  # less accurate, same NLL
    assert _verdict(s([0.93, 0.94, 0.95], [0.93, 0.94, 0.95]), "soups") == "holds"
    assert _verdict(s([0.93, 0.94, 0.95], [0.80, 0.81, 0.82], (0.5, 0.51, 0.52)), "soups") == "does not hold"
    assert _verdict(s([0.93, 0.94, 0.95], [0.80, 0.81, 0.82]), "soups") == "mixed"  # less accurate, same NLL


def test_findings_state_measure_and_tolerance():
    for f in findings(_cycle_summary([0.88, 0.89, 0.90], [0.40, 0.41, 0.42])):
        assert f["measure"] and f["seeds"] == 3
        for c in f["comparisons"]:
            assert c["outcome"] in ("better", "worse", "tie") and c["tol"] >= c["floor"] > 0
            assert "tolerance" in f["text"] or f["id"].endswith("_exit")


# ---------------------------------------------------------------------------------------------
# aggregation: statistics, basins, selection


def test_stat_keeps_seeds_and_never_averages_a_divergence_away():
    s = stat([0.9, 0.8, 0.7])
    assert s["mean"] == pytest.approx(0.8) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert stat([0.9])["std"] is None
    assert math.isnan(stat([0.9, float("nan")])["mean"]) and math.isnan(stat([0.9, float("nan")])["std"])
    assert stat([0.9, None, 0.7]) == {"mean": pytest.approx(0.8), "std": pytest.approx(math.sqrt(0.02)), "n": 2,
                                      "values": [0.9, None, 0.7]}


def test_basin_reference_and_classification():
    methods = {"local_de": _m("local_de", new_member_mean_dist_finetuned=[5.0, 5.5, 4.5],
                              new_member_mean_barrier_train_loss=[0.0, 0.0, 0.3]),
               "global_de": _m("global_de", new_member_mean_dist_finetuned=[15.0, 16.0, 14.0],
                               new_member_mean_barrier_train_loss=[1.0, 1.2, 0.2]),
               "far": _m("starsse", new_member_mean_dist_finetuned=[12.0, 11.0, 13.0],
                         new_member_mean_barrier_train_loss=[0.0, 0.0, 0.0]),
               "near": _m("starsse", new_member_mean_dist_finetuned=[2.0, 2.5, 3.0],
                          new_member_mean_barrier_train_loss=[0.0, 0.0, 0.0])}
    ref = basin_reference(methods)
    by_key = {m["key"]: m for m in ref["measures"]}
    dist = by_key["new_member_mean_dist_finetuned"]
    assert dist["separates"] and dist["threshold"] == pytest.approx((5.0 + 15.0) / 2)
    barrier = by_key["new_member_mean_barrier_train_loss"]
    assert not barrier["separates"] and barrier["threshold"] is None  # seed 2: 0.3 (local) > 0.2 (global)
    classify(methods, ref)
    assert methods["far"]["basin"] == "out" and methods["near"]["basin"] == "in"
    assert methods["far"]["basin_beyond"] == ["new_member_mean_dist_finetuned"]


def test_cells_are_chosen_on_validation_not_on_test():
    methods = {"s-a": _m("starsse", "s-a", "starsse", val_acc=[0.9, 0.9, 0.9], acc=[0.99] * 3, val_nll=[0.3] * 3),
               "s-b": _m("starsse", "s-b", "starsse", val_acc=[0.95] * 3, acc=[0.80] * 3, val_nll=[0.3] * 3),
               "s-c": _m("starsse", "s-c", "starsse", val_acc=[0.95] * 3, acc=[0.70] * 3, val_nll=[0.2] * 3)}
    sel = select_cells(methods, "val")
    assert sel["starsse"]["cell"] == "s-c" and sel["starsse"]["cells"] == 3  # tie on accuracy: lower NLL
    assert select_cells(methods, "test")["starsse"]["cell"] == "s-a"
