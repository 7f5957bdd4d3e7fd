"""Figures and key values of every stored result: `landscape plot` draws Hessians (a snapshot, a
group of snapshots, a line) and connections, a PCA plane with its trajectory and a legend that
stays off the surface; `landscape info` prints each result's key values; a name held by several
kinds is refused in one line naming them, and `--kind` picks one.

The figures are checked against the store's own datasets, read with h5py: the Figure's line data
(landscape.plots.draw_result builds the very figure `plot` writes) and the PNG written."""
from __future__ import annotations

import json
import os
import sys

import h5py
import matplotlib.image
import matplotlib.text
import numpy as np
import pytest
import torch

from landscape import cli, plots

USER_MODEL = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
              "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, num_classes))\n")
OPTS = ["--model", "figures_user_mlp:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt",
        "--out", "s", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A store holding one of every result, made by the CLI (a few seconds on 2 cores); the
    current folder during each test."""
    folder = tmp_path_factory.mktemp("figures")
    cwd = os.getcwd()
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    try:
        (folder / "figures_user_mlp.py").write_text(USER_MODEL)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(90, 6, generator=g), torch.randint(0, 3, (90,), generator=g)
        torch.save({"x": x[:60], "y": y[:60]}, "train.pt")
        torch.save({"x": x[60:], "y": y[60:]}, "test.pt")
        import figures_user_mlp

        for i in range(7):
            torch.manual_seed(i)
            torch.save(figures_user_mlp.make().state_dict(), f"m{i}.pt")
        runs = [
            ["hessian", "m0.pt", "--top-k", "3", "--trace", "--probes", "8", "--density", "--iters", "20",
             "--name", "h"],
            ["hessian", "--along", "m0.pt", "m1.pt", "--num", "3", "--top-k", "2", "--iters", "20", "--density",
             "--trace", "--probes", "4", "--name", "hl"],
            ["hessian", "m0.pt", "m1.pt", "m2.pt", "--top-k", "2", "--iters", "20", "--name", "hm"],
            ["connect", "m0.pt", "m1.pt", "--epochs", "4", "--num", "5", "--train-batch-size", "16", "--name", "c"],
            ["interpolate", "m0.pt", "m1.pt", "--num", "5", "--name", "h"],  # a curve named like the Hessian
            ["barriers", "m0.pt", "m1.pt", "m2.pt", "--num", "3"],
            ["plane", "m3.pt", "--pca", "m0.pt", "m1.pt", "m2.pt", "m3.pt", "--x", "-3:1:5", "--y", "-2:2:5",
             "--name", "pca"],
            ["plane", "m0.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", "--project", "m1.pt",
             "m2.pt", "m3.pt", "m4.pt", "m5.pt", "m6.pt", "--name", "crowd"],
        ]
        for argv in runs:
            assert cli.main([*argv, *OPTS]) == 0, argv
        assert cli.main(["ensemble", "m0.pt", "m1.pt", "m2.pt", "--model", "figures_user_mlp:make", "--data",
                         "tensors:test.pt", "--out", "s", "--quiet"]) == 0
        yield folder
    finally:
        sys.path.remove(str(folder))
        os.chdir(cwd)


@pytest.fixture(autouse=True)
def _in_work(work, monkeypatch):
    monkeypatch.chdir(work)
    yield
    plots.plt.close("all")  # the figures draw_result built for inspection (other tests count open figures)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def stored(kind: str, name: str) -> tuple[dict, dict]:
    """A stored object's datasets and attributes, read with h5py (not through the toolkit)."""
    with h5py.File(f"s/{kind}/{name}.h5", "r") as f:
        arrays = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    for k, v in list(attrs.items()):
        if isinstance(v, str) and v[:1] in "[{":
            attrs[k] = json.loads(v)
    return arrays, attrs


def assert_drawn_png(path) -> None:
    """A real PNG with something drawn on it (not blank, not one colour)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    rgb = img[..., :3]
    ink = (rgb.min(axis=2) < 0.8).mean()  # pixels that are not (nearly) white
    assert 0.01 < ink < 0.9, ink
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 20  # lines, text, colours


def ydata(line) -> np.ndarray:
    return np.asarray(line.get_ydata(), dtype=np.float64)


def xdata(line) -> np.ndarray:
    return np.asarray(line.get_xdata(), dtype=np.float64)


def _positive(v: np.ndarray) -> np.ndarray:
    """How a log-scale density is drawn: values that are not positive are gaps."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v > 0, v, np.nan)


def test_a_hessian_is_drawn_from_its_stored_numbers(capsys):
    code, out, err = run(capsys, "plot", "s", "h", "--kind", "hessians", "-o", "h.png")
    assert code == 0 and out.strip() == f"wrote {os.path.abspath('h.png')}", err
    assert_drawn_png("h.png")
    arrays, attrs = stored("hessians", "h")
    fig = plots.draw_result("s", "h", kind="hessians")
    eig_ax, trace_ax, dens_ax = fig.axes
    assert [ln.get_label() for ln in eig_ax.lines] == ["λ1", "λ2", "λ3"]
    for k, line in enumerate(eig_ax.lines):
        np.testing.assert_allclose(ydata(line), [arrays["eigenvalues"][k]], rtol=0, atol=0)
    data_line = trace_ax.containers[0].lines[0]
    np.testing.assert_allclose(ydata(data_line), [attrs["trace"]])
    (density,) = dens_ax.lines
    np.testing.assert_allclose(xdata(density), arrays["density_grid"])
    np.testing.assert_allclose(ydata(density), _positive(arrays["density"]))
    assert dens_ax.get_yscale() == "log"


def test_a_hessian_line_is_drawn_against_alpha(capsys):
    assert run(capsys, "plot", "s", "hl", "-o", "hl.png")[0] == 0
    assert_drawn_png("hl.png")
    arrays, _ = stored("hessians", "hl")
    eig_ax, trace_ax, dens_ax = plots.draw_result("s", "hl").axes
    assert len(eig_ax.lines) == arrays["eigenvalues"].shape[1] == 2
    for k, line in enumerate(eig_ax.lines):
        np.testing.assert_allclose(xdata(line), arrays["alphas"])
        np.testing.assert_allclose(ydata(line), arrays["eigenvalues"][:, k])
    trace = trace_ax.containers[0]
    np.testing.assert_allclose(ydata(trace.lines[0]), arrays["trace"])
    segments = trace.lines[2][0].get_segments()  # the error bars: trace ± its standard error
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], 2 * arrays["trace_stderr"], rtol=1e-12)
    assert [ln.get_label() for ln in dens_ax.lines] == ["α=0", "α=0.5", "α=1"]
    for i, line in enumerate(dens_ax.lines):
        np.testing.assert_allclose(xdata(line), arrays["density_grid"])
        np.testing.assert_allclose(ydata(line), _positive(arrays["density"][i]))


def test_the_hessians_of_several_snapshots_are_drawn_together(capsys):
    assert run(capsys, "plot", "s", "hm", "-o", "hm.png")[0] == 0  # stored as hm-0, hm-1, hm-2
    assert_drawn_png("hm.png")
    (eig_ax,) = plots.draw_result("s", "hm").axes  # no trace, no density: one axes
    for k, line in enumerate(eig_ax.lines):
        np.testing.assert_allclose(ydata(line), [stored("hessians", f"hm-{i}")[0]["eigenvalues"][k] for i in range(3)])
    assert [t.get_text() for t in eig_ax.get_xticklabels()] == ["m0.pt", "m1.pt", "m2.pt"]


def test_a_connection_shows_curve_and_line_with_both_barriers(capsys):
    assert run(capsys, "plot", "s", "c", "-o", "c.png")[0] == 0
    assert_drawn_png("c.png")
    arrays, attrs = stored("connections", "c")
    loss_ax, err_ax = plots.draw_result("s", "c").axes
    for ax, kind in ((loss_ax, "loss"), (err_ax, "error")):
        expected = []
        for split in ("train", "test"):
            for prefix in ("", "line_"):
                v = arrays[f"{prefix}{split}_loss"] if kind == "loss" else 1 - arrays[f"{prefix}{split}_acc"]
                expected.append(v)
        assert len(ax.lines) == 4
        for line, v in zip(ax.lines, expected):
            np.testing.assert_allclose(xdata(line), arrays["alphas"])
            np.testing.assert_allclose(ydata(line), v)
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        for split, (curve_label, line_label) in zip(("train", "test"), (labels[:2], labels[2:])):
            key = f"{split}_{kind}"
            c, ln = attrs["barriers"][key], attrs["line_barriers"][key]
            assert curve_label == f"{split} {kind}, bezier curve (barrier {c['barrier']:+.3g} at t={c['alpha']:.2f})"
            assert line_label == f"{split} {kind}, straight line (barrier {ln['barrier']:+.3g} at t={ln['alpha']:.2f})"
    assert np.abs(arrays["train_loss"] - arrays["line_train_loss"]).max() > 0  # the curve was trained


def test_a_name_in_two_kinds_is_refused_in_one_line_and_kind_picks_one(capsys):
    code, out, err = run(capsys, "plot", "s", "h", "-o", "amb.png")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "curve" in err and "hessian" in err and "--kind curves" in err and "--kind hessians" in err
    assert not os.path.exists("amb.png")
    assert run(capsys, "plot", "s", "h", "--kind", "curves", "-o", "h_curve.png")[0] == 0
    assert_drawn_png("h_curve.png")
    curve = plots.draw_result("s", "h", kind="curves")
    np.testing.assert_allclose(ydata(curve.axes[0].lines[0]), stored("curves", "h")[0]["train_loss"])
    code, _, err = run(capsys, "plot", "s", "h", "--kind", "connections", "-o", "x.png")
    assert code == 2 and err.count("\n") == 1 and "no connection named 'h'" in err and "connections: c" in err
    code, _, err = run(capsys, "plot", "s", "nothing", "-o", "x.png")
    assert code == 2 and err.count("\n") == 1 and "hessians: h, hl" in err, err
    code, _, err = run(capsys, "plot", "s", "c", "--metric", "train_loss", "-o", "x.png")
    assert code == 2 and "leave out --metric" in err
    assert not os.path.exists("x.png")


def assert_same_barriers(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, b in want.items():
        assert got[k]["barrier"] == pytest.approx(b["barrier"]) and got[k]["alpha"] == pytest.approx(b["alpha"]), k


def test_info_prints_each_results_key_values(capsys):
    code, text, err = run(capsys, "info", "s")
    assert code == 0, err
    info = json.loads(run(capsys, "info", "s", "--json")[1])

    arrays, attrs = stored("hessians", "h")
    v = info["hessians"]["h"]["values"]
    np.testing.assert_allclose(v["eigenvalues"], arrays["eigenvalues"])
    assert v["trace"] == pytest.approx(attrs["trace"]) and v["trace_stderr"] == pytest.approx(attrs["trace_stderr"])
    assert f"λ {', '.join(format(e, '.4g') for e in arrays['eigenvalues'])}, trace {attrs['trace']:.4g}" in text

    arrays, _ = stored("hessians", "hl")
    np.testing.assert_allclose(info["hessians"]["hl"]["values"]["eigenvalues"], arrays["eigenvalues"])
    np.testing.assert_allclose(info["hessians"]["hl"]["values"]["trace"], arrays["trace"])
    assert f"α=0.5: λ {', '.join(format(e, '.4g') for e in arrays['eigenvalues'][1])}" in text

    _, attrs = stored("curves", "h")
    assert_same_barriers(info["curves"]["h"]["values"]["barriers"], attrs["barriers"])
    b = attrs["barriers"]["train_loss"]
    assert f"train_loss {b['barrier']:+.4f} at α={b['alpha']:.2f}" in text

    _, attrs = stored("connections", "c")
    v = info["connections"]["c"]["values"]
    assert_same_barriers(v["barriers"], attrs["barriers"])
    assert_same_barriers(v["line_barriers"], attrs["line_barriers"])
    c, ln = attrs["barriers"]["train_loss"], attrs["line_barriers"]["train_loss"]
    assert f"train_loss {c['barrier']:+.4f} (line {ln['barrier']:+.4f})" in text

    arrays, _ = stored("barriers", "barriers")
    m = arrays["train_error_barrier"]
    v = info["barriers"]["barriers"]["values"]["train_error_barrier"]
    assert v["max"] == pytest.approx(m.max()) and v["mean"] == pytest.approx(m[~np.eye(3, dtype=bool)].mean())
    assert f"train_error_barrier max {m.max():.4f}" in text

    arrays, _ = stored("ensembles", "ensemble")
    v = info["ensembles"]["ensemble"]["values"]
    assert v["size"] == [1, 2, 3] and v["acc"] == pytest.approx(arrays["acc"]) and v["nll"] == pytest.approx(
        arrays["nll"])
    assert "by size 1..3: acc " + " ".join(format(a, ".4g") for a in arrays["acc"]) in text

    arrays, attrs = stored("surfaces", "pca")
    v = info["surfaces"]["pca"]["values"]
    assert v["train_loss"]["min"] == pytest.approx(arrays["train_loss"].min())
    assert v["test_loss"]["max"] == pytest.approx(arrays["test_loss"].max())
    i, j = np.unravel_index(np.argmin(arrays["train_loss"]), arrays["train_loss"].shape)
    assert v["train_loss"]["min_at"] == pytest.approx([arrays["xcoordinates"][i], arrays["ycoordinates"][j]])
    assert v["explained_variance_ratio"] == pytest.approx(attrs["explained_variance_ratio"][:2])
    assert f"train_loss min {arrays['train_loss'].min():.4g}" in text
    assert "explained variance " + ", ".join(f"{100 * r:.1f}%" for r in attrs["explained_variance_ratio"]) in text
    assert "surface    pca: done[5, 5]" in text  # the shapes are still there


def test_a_pca_plane_shows_its_trajectory_and_explained_variance(capsys):
    assert run(capsys, "plot", "s", "pca", "-o", "pca.png")[0] == 0
    assert_drawn_png("pca.png")
    arrays, attrs = stored("surfaces", "pca")
    fig = plots.draw_result("s", "pca")
    ax = fig.axes[0]
    (path,) = [ln for ln in ax.lines if ln.get_label().startswith("trajectory:")]
    traj = arrays["projection_coords"][1:5]  # the centre, then the trajectory in order
    np.testing.assert_allclose(np.c_[xdata(path), ydata(path)], traj)
    notes = [a.get_text() for a in ax.texts if isinstance(a, matplotlib.text.Annotation)]  # not contour labels
    assert notes == ["0", "1", "2", "3 (centre)"]  # m3.pt ends it and is the centre
    assert path.get_label() == "trajectory: m0.pt (0) → m3.pt (3)"
    evr = attrs["explained_variance_ratio"]
    assert f"PC1: {100 * evr[0]:.1f}% of the variance" in ax.get_xlabel()
    assert f"PC2: {100 * evr[1]:.1f}% of the variance" in ax.get_ylabel()
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend is not None
    assert legend.get_window_extent().y1 <= ax.get_window_extent().y0  # below the axes, not over the surface


def test_many_projected_snapshots_share_one_legend_entry(capsys):
    assert run(capsys, "plot", "s", "crowd", "-o", "crowd.png")[0] == 0
    assert_drawn_png("crowd.png")
    arrays, _ = stored("surfaces", "crowd")
    ax = plots.draw_result("s", "crowd").axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    off = arrays["projection_distances"] > 0.05 * 2  # the grid spans 2 on both axes
    assert off.sum() > plots.MAX_LISTED and labels == [f"{off.sum()} snapshots off the plane (by "
                                                       f"{arrays['projection_distances'][off].min():.3g} to "
                                                       f"{arrays['projection_distances'][off].max():.3g})"]
    fig = ax.figure
    fig.canvas.draw()
    assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0
