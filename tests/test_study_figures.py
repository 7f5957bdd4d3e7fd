"""The study's figures (experiments.figures) from constructed summaries and results: every figure
that applies is written as a valid PNG, those that do not apply are skipped, missing (None) and
diverged (nan, or "nan" as summary.json encodes it) values never crash, and the series the grid
figures draw are the constructed numbers."""
from __future__ import annotations

import json
import math

import matplotlib.image
import numpy as np
import pytest
from matplotlib.collections import PathCollection

import experiments.figures as F
from landscape.core.jsonable import to_jsonable
from landscape.plots import plt

PNG = b"\x89PNG\r\n\x1a\n"
ALL = ("ensemble_by_size.png", "grid_vs_cycle_lr.png", "members_vs_cycle_lr.png", "plane.png", "interpolation.png")
NAN = float("nan")


def st(mean, std=0.01, n=3):
    """An aggregate statistic as experiments.aggregate writes it (values are not used by the figures)."""
    return {"mean": mean, "std": std, "n": n, "values": [mean] * n}


# Each cell's numbers, by (lr_scale, cycle_scale): ensemble acc, ensemble nll, member acc, train-loss
# barrier, test-error barrier, distance, basin. Chosen so that no two cells share a number.
SSE = {(0.5, 0.5): (0.81, 0.50, 0.78, 0.00, 0.00, 2.0, "in"),
       (4.0, 0.5): (0.77, 0.61, 0.70, 0.30, 0.12, 14.0, "out"),
       (0.5, 1.0): (0.82, 0.48, 0.79, 0.01, 0.01, 3.0, "in"),
       (4.0, 1.0): (0.74, NAN, 0.66, 0.40, 0.15, 18.0, "out")}  # a diverged seed: NLL nan
STARSSE = {(0.5, 0.5): (None, 0.47, 0.80, 0.00, 0.00, 1.5, None),  # accuracy not computed; basin unknown
           (4.0, 0.5): (0.83, 0.45, 0.75, 0.05, 0.02, 9.0, "in"),
           (0.5, 1.0): (0.84, 0.44, 0.81, 0.00, 0.00, 2.5, "in"),
           (4.0, 1.0): (0.79, 0.52, 0.72, 0.20, 0.08, 12.0, "out")}
KEYS = ("acc", "nll", "new_member_mean_acc", "new_member_mean_barrier_train_loss",
        "new_member_mean_barrier_test_error", "new_member_mean_dist_finetuned")


def _method(t, label, group, params, cycle_lr, numbers, std=0.01, K=3):
    stats = {}
    for k, v in zip(KEYS, numbers[:6]):
        if v is not None:  # aggregate leaves out a statistic no seed computed
            diverged = std is not None and isinstance(v, float) and math.isnan(v)
            stats[k] = st(v, NAN if diverged else std)
    acc, nll = numbers[0] if numbers[0] is not None else 0.8, numbers[1]
    stats["ensemble_acc"] = [st(acc - 0.01 * (K - 1 - i), std) for i in range(K)]
    stats["ensemble_nll"] = [st(nll + 0.02 * (K - 1 - i), std) for i in range(K)]
    return {"type": t, "group": group, "label": label, "params": params, "cycle_lr": cycle_lr,
            "cost_epochs": 30.0, "basin": numbers[6], "size": K, "stats": stats}


def make_summary(std=0.01, seeds=(0, 1, 2), grid=True):
    eta, E = 0.1, 10
    methods = {"local_de": _method("local_de", "Local DE", "local_de", {}, None,
                                   (0.85, 0.40, 0.80, 0.00, 0.00, 5.0, "in"), std),
               "global_de": _method("global_de", "Global DE", "global_de", {}, None,
                                    (0.90, 0.30, 0.80, 1.00, 0.40, 20.0, "out"), std)}
    if grid:
        for t, table in (("sse", SSE), ("starsse", STARSSE)):
            for (lr, c), nums in table.items():
                methods[f"{t}-lr{lr:g}-c{c:g}"] = _method(
                    t, f"{t} ({lr:g}·η, C={c:g}·E)", t, {"lr_scale": lr, "cycle_scale": c, "cycle_epochs": c * E},
                    lr * eta, nums, std)
    methods["fge_garipov"] = _method("fge", "FGE (Garipov)", "fge_garipov",
                                     {"schedule": "garipov", "lr1_scale": 1.0, "lr2_scale": 0.05, "cycle_epochs": 4.0,
                                      "cycle_scale": None}, None, (0.80, 0.5, 0.79, 0, 0, 1.0, "in"), std)
    methods["fge_cyclic"] = _method("fge", "FGE (cyclic)", "fge_cyclic",
                                    {"schedule": "cyclic", "lr_scale": 2.0, "cycle_scale": 0.5, "cycle_epochs": 5.0},
                                    0.2, (0.79, 0.5, 0.78, 0, 0, 1.0, "in"), std)
    methods["swa"] = _method("swa", "SWA", "swa", {"lr_scale": 0.5}, None, (0.81, 0.45, 0.80, 0, 0, 1.0, "in"), std)
    selected = {m["group"]: {"cell": n, "cells": 1} for n, m in methods.items()}
    if grid:
        selected["sse"] = {"cell": "sse-lr0.5-c1", "cells": 4}
        selected["starsse"] = {"cell": "starsse-lr4-c0.5", "cells": 4}
    return {"study": {"members": 3, "finetune": {"lr": eta, "epochs": E}, "seeds": list(seeds),
                      "verdicts": {"barrier_margin": 0.1}},
            "transfer": {"finetuned_acc": st(0.79, std), "scratch_acc": st(0.55, std), "scratch_nll": st(1.4, std),
                         "finetuned_nll": st(0.5, std)},
            "methods": methods,
            "basin": {"measures": [
                {"key": "new_member_mean_barrier_train_loss", "label": "train-loss barrier", "unit": "",
                 "local": 0.0, "global": 1.0, "separates": True, "threshold": 0.5},
                {"key": "new_member_mean_barrier_test_error", "label": "test-error barrier", "unit": "%",
                 "local": 0.0, "global": 0.4, "separates": False, "threshold": None},
                {"key": "new_member_mean_dist_finetuned", "label": "distance", "unit": "",
                 "local": 5.0, "global": 20.0, "separates": True, "threshold": 12.5}]},
            "selected": selected, "selection_split": "val"}


def _line(end_err, bump=0.0):
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    return {"alphas": alphas, "train_loss": [0.02 + bump * math.sin(math.pi * a) for a in alphas],
            "test_loss": [0.3] * 5, "train_acc": [1.0] * 5,
            "test_acc": [1 - (0.1 + (end_err - 0.1) * a) for a in alphas]}


def make_results(summary, plane=True):
    """The first seed's results: every method has 3 members, the first being the fine-tuned model
    (no line to itself) except for Global DE; one member has no line (None)."""
    methods, members = {}, {}
    for name, m in summary["methods"].items():
        snaps = ["s0-ft-0-0"] + [f"s0-{name}-{i}" for i in (1, 2)]
        if m["type"] == "global_de":
            snaps = ["s0-ft-0-0", "s0-ft-1-0", "s0-ft-2-0"]
        methods[name] = {"members": snaps}
        for i, snap in enumerate(snaps[1:], 1):
            err = 0.1 + 0.05 * i + (0.2 if "lr4" in name else 0.0)
            members[snap] = {"dist_finetuned": 3.0 * i, "line": _line(err, 1.0 if m["type"] == "global_de" else 0.0)}
    members["s0-local_de-2"]["line"]["test_acc"][2] = None  # a point not computed
    if "s0-sse-lr4-c1-2" in members:
        members["s0-sse-lr4-c1-2"]["line"]["train_loss"][3] = NAN  # a diverged point
    members["s0-swa-2"]["line"] = None  # no line at all
    res = {"seed": 0, "methods": methods, "members": members}
    if plane:
        xs, ys = [-1.0, 0.0, 1.0, 2.0], [-1.0, 0.0, 1.0]
        tl = [[0.1 + x * x + y * y for y in ys] for x in xs]
        tl[0][0] = NAN
        ta = [[max(0.1, 0.9 - 0.1 * (x * x + y * y)) for y in ys] for x in xs]
        ta[3][2] = None
        res["plane"] = {"through": ["s0-ft-0-0", "s0-local_de-2", "s0-sse-lr4-c1-2"], "xcoordinates": xs,
                        "ycoordinates": ys, "train_loss": tl, "test_loss": tl, "train_acc": ta, "test_acc": ta,
                        "projections": [
                            {"name": "s0-ft-0-0", "method": "local_de", "x": 0.0, "y": 0.0, "distance": 0.0},
                            {"name": "s0-local_de-2", "method": "local_de", "x": 1.5, "y": 0.0, "distance": 0.0},
                            {"name": "s0-sse-lr4-c1-2", "method": "sse-lr4-c1", "x": 0.2, "y": 0.9, "distance": 0.0},
                            {"name": "s0-ft-1-0", "method": "global_de", "x": 0.5, "y": -0.5, "distance": 3.0},
                            {"name": "s0-far", "method": "swa", "x": 50.0, "y": 50.0, "distance": NAN}]}
    return res


def _valid_png(path):
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG, path
    img = matplotlib.image.imread(path)  # decodes the whole file
    assert img.shape[0] > 100 and img.shape[1] > 100


@pytest.fixture
def kept(monkeypatch):
    """The figures handed to save_figure, kept for inspection instead of written (the tests above
    write them): a list of (path, figure)."""
    got = []

    def spy(fig, path, **kw):
        got.append((path, fig))
        fig.canvas.draw()  # lay out as savefig would, without the PNG
        plt.close(fig)
        return path

    monkeypatch.setattr(F, "save_figure", spy)
    return got


@pytest.fixture
def low_dpi(monkeypatch):
    """Figures written as usual (atomically, through save_figure) at a lower resolution: faster."""
    monkeypatch.setattr(F, "_save", lambda fig, path: F.save_figure(fig, path, dpi=45))


def _fig(kept, name):
    return next(fig for path, fig in kept if path.endswith(name))


# ----------------------------------------------------------------------------- files

def test_every_figure_written_as_a_valid_png(tmp_path):
    s = make_summary()
    figs = F.write_figures(s, make_results(s), str(tmp_path / "figures"))
    assert [p.rsplit("/", 1)[1] for p in figs.values()] == list(ALL)
    for p in figs.values():
        _valid_png(p)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(ALL)  # no temporary files left
    assert plt.get_fignums() == []


def test_figures_that_do_not_apply_are_skipped(tmp_path, low_dpi):
    s = make_summary(grid=False)  # no SSE/StarSSE, one cyclic FGE cell: no grid
    figs = F.write_figures(s, {"seed": 0}, str(tmp_path))  # no plane, no lines
    assert [p.rsplit("/", 1)[1] for p in figs.values()] == ["ensemble_by_size.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble_by_size.png"]
    # a plane with nothing finite on it is skipped too; results may be missing altogether
    res = make_results(s)
    for k in ("train_loss", "test_acc"):
        res["plane"][k] = [[NAN] * 3 for _ in range(4)]
    figs = F.write_figures(s, res, str(tmp_path / "b"))
    assert [p.rsplit("/", 1)[1] for p in figs.values()] == ["ensemble_by_size.png", "interpolation.png"]
    only = F.write_figures(s, None, str(tmp_path / "c"))
    assert list(only.values()) == [str(tmp_path / "c" / "ensemble_by_size.png")]
    assert plt.get_fignums() == []


def test_cyclic_fge_with_several_cells_gets_its_own_column(kept, tmp_path):
    s = make_summary()
    s["methods"]["fge_cyclic_b"] = {**s["methods"]["fge_cyclic"], "group": "fge_cyclic",
                                    "params": {"schedule": "cyclic", "lr_scale": 0.5, "cycle_scale": 0.5}}
    fams = F.cell_series(s, ("acc",))
    assert [f["family"] for f in fams] == ["sse", "starsse", "fge_cyclic"]
    assert fams[2]["lines"][0]["names"] == ["fge_cyclic_b", "fge_cyclic"]
    F.fig_grid(s, str(tmp_path / "g.png"))
    assert len(_fig(kept, "g.png").axes) == 6  # 2 rows x 3 families


def test_one_seed_draws_without_spread(tmp_path, low_dpi):
    s = make_summary(std=None, seeds=(0,))  # one seed: no std anywhere (the plane and lines have none)
    for fig in (F.fig_ensembles, F.fig_grid, F.fig_members):
        _valid_png(fig(s, str(tmp_path / f"{fig.__name__}.png")))
    line = F.cell_series(s, ("acc",))[0]["lines"][0]
    assert np.isnan(line["acc"]["std"]).all() and not np.isnan(line["acc"]["mean"]).any()


def test_the_encoded_summary(tmp_path, low_dpi):
    """summary.json's encoding ("nan" strings) read back from JSON, the results too."""
    r = make_results(make_summary())
    enc = json.loads(json.dumps(to_jsonable(make_summary())))
    assert enc["methods"]["sse-lr4-c1"]["stats"]["nll"]["mean"] == "nan"
    figs = F.write_figures(enc, json.loads(json.dumps(to_jsonable(r))), str(tmp_path / "enc"))
    assert len(figs) == 5
    for p in figs.values():
        _valid_png(p)
    line = next(ln for ln in F.cell_series(enc, ("nll",))[0]["lines"] if ln["cycle"] == "C = 1·E")
    assert math.isnan(line["nll"]["mean"][1]) and line["nll"]["mean"][0] == pytest.approx(0.48)


# ----------------------------------------------------------------------------- the data plotted

def _constructed(table, c, k):
    """The constructed (x, mean) of one cycle length's line, by increasing lr."""
    i = KEYS.index(k)
    rows = sorted((lr, nums[i]) for (lr, cc), nums in table.items() if cc == c)
    return [lr for lr, _ in rows], [NAN if v is None else v for _, v in rows]


def test_grid_series_are_the_constructed_numbers():
    s = make_summary()
    fams = F.cell_series(s, KEYS)
    assert [(f["family"], f["label"]) for f in fams] == [("sse", "SSE"), ("starsse", "StarSSE")]
    for fam, table in zip(fams, (SSE, STARSSE)):
        assert [ln["cycle"] for ln in fam["lines"]] == ["C = 0.5·E", "C = 1·E"]
        for ln, c in zip(fam["lines"], (0.5, 1.0)):
            for k in KEYS:
                xs, means = _constructed(table, c, k)
                np.testing.assert_array_equal(ln["x"], xs)
                np.testing.assert_allclose(ln[k]["mean"], means, equal_nan=True)
                np.testing.assert_allclose(ln[k]["std"], [NAN if math.isnan(v) else 0.01 for v in means],
                                           equal_nan=True)
            assert ln["basin"] == [table[(lr, c)][6] for lr in xs]
    assert fams[0]["chosen"] == ["sse-lr0.5-c1"] and fams[1]["chosen"] == ["starsse-lr4-c0.5"]


def test_grid_figure_draws_the_constructed_numbers(kept, tmp_path):
    s = make_summary()
    assert F.fig_grid(s, str(tmp_path / "grid.png"))
    fig = _fig(kept, "grid.png")
    # row-major: [SSE acc, StarSSE acc, SSE nll, StarSSE nll]
    for ax, table, key, scale in zip(fig.axes[:4], (SSE, STARSSE, SSE, STARSSE), ("acc", "acc", "nll", "nll"),
                                     (100, 100, 1, 1)):
        assert ax.get_xscale() == "log"
        for c, lab in ((0.5, "C = 0.5·E"), (1.0, "C = 1·E")):
            line = next(c_ for c_ in ax.containers if c_.get_label() == lab).lines[0]
            xs, means = _constructed(table, c, key)
            np.testing.assert_allclose(line.get_ydata(), scale * np.array(means), equal_nan=True)
            np.testing.assert_allclose(line.get_xdata(), xs, rtol=0.06)  # spread a little per C
        refs = {ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines() if "band" in ln.get_label()}
        loc, glo = (0.85, 0.90) if key == "acc" else (0.40, 0.30)
        assert refs == {"Local DE (band: ± std)": pytest.approx(scale * loc),
                        "Global DE (band: ± std)": pytest.approx(scale * glo)}
    # filled markers in the basin, hollow out of it: SSE's C = 0.5·E row has one of each
    ax = fig.axes[0]
    dots = [(c.get_offsets()[0], c.get_facecolors()[0]) for c in ax.collections
            if isinstance(c, PathCollection) and c.get_sizes()[0] == 46]
    faces = {round(float(o[1]), 6): tuple(fc) for o, fc in dots}
    assert faces[round(100 * SSE[(4.0, 0.5)][0], 6)] == (1.0, 1.0, 1.0, 1.0)  # out: hollow (white)
    assert faces[round(100 * SSE[(0.5, 0.5)][0], 6)] != (1.0, 1.0, 1.0, 1.0)  # in: filled


def test_member_figure_reference_lines(kept, tmp_path):
    s = make_summary()
    assert F.fig_members(s, str(tmp_path / "members.png"))
    fig = _fig(kept, "members.png")
    assert len(fig.axes) == 8  # 4 quantities x 2 families

    def refs(ax):
        return {ln.get_label(): ln.get_ydata()[0] for ln in ax.get_lines() if not ln.get_label().startswith("_")}

    acc, barrier, err, dist = (refs(fig.axes[2 * i]) for i in range(4))
    assert acc["fine-tuned model (band: ± std)"] == pytest.approx(79)
    assert acc["trained from scratch (band: ± std)"] == pytest.approx(55)
    margin = "barrier margin (out of the basin above it, on the line and on a trained curve)"
    assert barrier[margin] == pytest.approx(0.1)
    assert margin not in err and margin not in dist  # only the barrier decides; distance has no threshold
    assert dist["Global DE (band: ± std)"] == pytest.approx(20.0)
    line = next(c for c in fig.axes[6].containers if c.get_label() == "C = 1·E").lines[0]
    np.testing.assert_allclose(line.get_ydata(), [3.0, 18.0])  # SSE's distances at C = 1·E


def test_ensemble_series_are_the_chosen_cells():
    s = make_summary()
    series = F.ensemble_series(s)
    assert [x["name"] for x in series] == ["local_de", "global_de", "sse-lr0.5-c1", "starsse-lr4-c0.5",
                                          "fge_garipov", "fge_cyclic", "swa"]
    sse = series[2]
    np.testing.assert_array_equal(sse["sizes"], [1, 2, 3])
    np.testing.assert_allclose(sse["acc"]["mean"], [0.80, 0.81, 0.82])
    np.testing.assert_allclose(sse["nll"]["mean"], [0.52, 0.50, 0.48])


def test_ensembles_against_cost_in_epochs(kept, tmp_path):
    """The third panel puts each chosen cell's k-member ensemble at the k members' training cost:
    k·E for the deep ensembles, E + (k−1)·C for a cycle method (E = 10, C = 0.5·E here)."""
    s = make_summary()
    assert F.fig_ensembles(s, str(tmp_path / "e.png"))
    fig = _fig(kept, "e.png")
    cost_ax = fig.axes[2]
    by_label = {c.get_label(): c.lines[0] for c in cost_ax.containers}
    np.testing.assert_allclose(by_label["Local DE"].get_xdata(), [10, 20, 30])
    sse = next(v for k, v in by_label.items() if k.startswith("sse (0.5"))
    np.testing.assert_allclose(sse.get_xdata(), [10, 20, 30])  # C = 1·E for the chosen SSE cell
    star = next(v for k, v in by_label.items() if k.startswith("starsse (4"))
    np.testing.assert_allclose(star.get_xdata(), [10, 15, 20])
    np.testing.assert_allclose(star.get_ydata(), 100 * np.asarray(F.ensemble_series(s)[3]["acc"]["mean"]))


def test_interpolation_series_pick_the_members(kept, tmp_path):
    s = make_summary()
    r = make_results(s)
    series = F.interpolation_series(s, r)
    # Local DE, Global DE, then per family the smallest and largest lr at the longest C (C = 1·E)
    assert [(x["method"], x["member"], x["role"]) for x in series] == [
        ("local_de", "s0-local_de-2", None), ("global_de", "s0-ft-2-0", None),
        ("sse-lr0.5-c1", "s0-sse-lr0.5-c1-2", "small"), ("sse-lr4-c1", "s0-sse-lr4-c1-2", "large"),
        ("starsse-lr0.5-c1", "s0-starsse-lr0.5-c1-2", "small"), ("starsse-lr4-c1", "s0-starsse-lr4-c1-2", "large")]
    big = series[3]
    np.testing.assert_allclose(big["test_error"], [0.1, 0.175, 0.25, 0.325, 0.4])
    assert math.isnan(big["train_loss"][3]) and big["distance"] == 6.0
    assert math.isnan(series[0]["test_error"][2])  # the point not computed is a gap
    assert F.fig_interpolation(s, r, str(tmp_path / "i.png"))
    fig = _fig(kept, "i.png")
    np.testing.assert_allclose(fig.axes[1].get_lines()[3].get_ydata(), 100 * big["test_error"])
    # a member without a line falls back to the previous one
    r["members"]["s0-local_de-2"]["line"] = None
    assert F.interpolation_series(s, r)[0]["member"] == "s0-local_de-1"


def test_plane_has_both_panels(kept, tmp_path):
    s = make_summary()
    assert F.fig_plane(s, make_results(s), str(tmp_path / "p.png"))
    fig = _fig(kept, "p.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["train loss on the plane, BN recomputed", "test error on the plane, BN recomputed"]
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    # one unit of weight space is as long on u as on v (issue 21: x spanned 8 units, y 36, at one size)
    assert all(ax.get_aspect() == 1.0 for ax in fig.axes if ax.get_title())
    assert texts.count("fine-tuned model\ns0-ft-0-0") == 2 and texts.count("sse (4·η, C=1·E)\ns0-sse-lr4-c1-2") == 2
