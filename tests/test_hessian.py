"""Hessian spectra against the explicit Hessian (torch.autograd.functional.hessian, fp64).

Tolerances: in fp64, Lanczos eigenvalues within 1e-9·λmax of the explicit ones and Hutchinson's
per-probe vᵀHv within 1e-9 relative; in fp32, eigenvalues within 1e-4·λmax. Hutchinson's mean is
within 3 of its own reported standard errors of the exact trace (fixed seeds); the SLQ density
integrates to 1 within 1e-3; each run's quadrature mean is its probe's quadratic form / P to 1e-9
(the broadened density's mean on its grid to 1e-5), within 3 standard errors of trace / P.
"""
from __future__ import annotations

import json
import os
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from landscape.analyses.hessian import hessian, hessian_line
from landscape.core.checkpoints import Snapshot
from landscape.core.data import TensorData
from landscape.core.errors import LandscapeError
from landscape.evaluate.engine import Evaluator
from landscape.evaluate.hessian import HessianOperator, _rademacher, hessian_directions, hessian_spectrum
from landscape.geometry.lines import line_snapshot


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster (and steadier on a shared machine) than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AdaptiveAvgPool2d(2),
                      nn.Flatten(), nn.Linear(12, 3))
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 1.5)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.2, 0.2)
    return m


def _data(n: int = 70, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 5, 5, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g)


def explicit_hessian(model: nn.Module, snap: Snapshot, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fp64 Hessian of the mean cross-entropy over all of (x, y), eval mode, snap's buffers."""
    m = _model().double()
    snap.load_into(m)
    m.eval()
    layout = snap.layout
    buffers = {k: v.double() for k, v in m.named_buffers()}

    def loss(theta):
        params = {name: theta[sl].view(shape) for name, shape, sl in layout.slices()}
        return nn.functional.cross_entropy(functional_call(m, (params, buffers), (x.double(),)), y)

    return torch.autograd.functional.hessian(loss, snap.params.double())


@pytest.fixture(scope="module")
def problem():
    m = _model().double()
    snap = Snapshot.from_model(m, "m")
    x, y = _data()
    h = explicit_hessian(m, snap, x, y)
    evals, evecs = torch.linalg.eigh(h)
    return m, snap, x, y, h, evals.flip(0), evecs.flip(1)


def test_eigenpairs_match_explicit_hessian_fp64(problem):
    m, snap, x, y, h, evals, evecs = problem
    p = snap.params.numel()
    res = hessian_spectrum(m, snap, x, y, top_k=3, iters=p, tol=1e-10, batch_size=16)  # 5 batches, the last short
    scale = float(evals.abs().max())
    np.testing.assert_allclose(res["eigenvalues"], evals[:3].numpy(), rtol=0, atol=1e-9 * scale)
    assert list(res["eigenvalues"]) == sorted(res["eigenvalues"], reverse=True) and res["converged"]
    for i in range(3):
        v = res["eigenvectors"][i]
        assert float((h @ v - res["eigenvalues"][i] * v).norm()) < 1e-8 * scale
        assert abs(float(v @ evecs[:, i])) == pytest.approx(1.0, abs=1e-8)
    # the default tolerance stops early, still accurate
    quick = hessian_spectrum(m, snap, x, y, top_k=2, batch_size=16)
    assert quick["iterations"] < p
    np.testing.assert_allclose(quick["eigenvalues"], evals[:2].numpy(), rtol=1e-6)
    with torch.no_grad():
        assert quick["loss"] == pytest.approx(float(nn.functional.cross_entropy(m.eval()(x), y)), rel=1e-12)


def test_products_are_the_same_cached_partly_cached_and_recomputed(problem):
    m, snap, x, y, h, *_ = problem
    v = torch.randn(snap.params.numel(), dtype=torch.float64)
    want = h @ v
    for kwargs in ({"cache": True}, {"cache": False}, {"cache": "auto", "cache_bytes": 1}, {"batch_size": 70}):
        op = HessianOperator(m, snap, x, y, **{"batch_size": 16, **kwargs})
        np.testing.assert_allclose(op.matvec(v).numpy(), want.numpy(), rtol=0, atol=1e-12 * float(want.abs().max()))
    op = HessianOperator(m, snap, x, y, batch_size=16, cache_bytes=1)
    op.prepare()
    assert op.cached_batches == 0 and op.bytes_per_batch > 0
    # batched over vectors (vmap through is_grads_batched) gives the same products
    vs = torch.randn(3, snap.params.numel(), dtype=torch.float64)
    op = HessianOperator(m, snap, x, y, batch_size=16, probe_batch=3)
    np.testing.assert_allclose(op.matmat(vs).numpy(), (vs @ h).numpy(), rtol=0, atol=1e-11)


def test_streamed_data_gives_the_same_products(problem):
    from torch.utils.data import TensorDataset

    from landscape.core.data import StreamData

    m, snap, x, y, h, *_ = problem
    stream = StreamData(TensorDataset(x, y), "stream", num_classes=3)
    v = torch.randn(snap.params.numel(), dtype=torch.float64)
    for cache_bytes in (None, 1):  # all graphs kept, or none (every batch read again)
        op = HessianOperator(m, snap, stream=stream, batch_size=16, cache_bytes=cache_bytes)
        np.testing.assert_allclose(op.matvec(v).numpy(), (h @ v).numpy(), rtol=0, atol=1e-12)


def test_fp32_eigenvalues_within_1e_4(problem):
    _, snap, x, y, _, evals, _ = problem
    m32 = _model().float()
    snap32 = Snapshot(snap.name, snap.params.float(), snap.layout, {k: v.float() if v.is_floating_point() else v
                                                                    for k, v in snap.buffers.items()})
    res = hessian_spectrum(m32, snap32, x.float(), y, top_k=2, iters=60, tol=1e-6, batch_size=16)
    np.testing.assert_allclose(res["eigenvalues"], evals[:2].numpy(), rtol=0, atol=1e-4 * float(evals.abs().max()))


def test_hutchinson_trace_exact_per_probe_and_within_its_error(problem):
    m, snap, x, y, h, *_ = problem
    p = snap.params.numel()
    exact = float(h.trace())
    res = hessian_spectrum(m, snap, x, y, top_k=1, trace=True, probes=300, seed=0, batch_size=35)
    vs = _rademacher(300, p, 0 + 1_000_003, torch.float64, torch.device("cpu"))
    quad = ((vs @ h) * vs).sum(1).numpy()
    np.testing.assert_allclose(res["trace_samples"], quad, rtol=1e-9, atol=1e-12)
    assert res["trace_stderr"] == pytest.approx(quad.std(ddof=1) / np.sqrt(300))
    for seed in (0, 1, 2):
        r = hessian_spectrum(m, snap, x, y, trace=True, probes=300, seed=seed, batch_size=35)
        assert abs(r["trace"] - exact) <= 3 * r["trace_stderr"], (seed, r["trace"], exact, r["trace_stderr"])


def test_slq_density_integrates_to_one_and_its_mean_is_trace_over_p(problem):
    m, snap, x, y, h, evals, _ = problem
    p = snap.params.numel()
    runs = 24
    res = hessian_spectrum(m, snap, x, y, density=True, density_runs=runs, iters=30, seed=3, batch_size=35,
                           probe_batch=4)
    grid, dens = res["density_grid"], res["density"]
    assert abs(np.trapezoid(dens, grid) - 1) < 1e-3
    assert np.all(dens >= 0) and res["slq_weights"].sum(1) == pytest.approx(np.ones(runs))
    starts = _rademacher(runs, p, 3 + 2_000_003, torch.float64, torch.device("cpu"))
    per_run = (((starts @ h) * starts).sum(1) / p).numpy()
    quadrature = (res["slq_nodes"] * res["slq_weights"]).sum(1)  # e1ᵀ T e1 = qᵀHq of each run's start
    np.testing.assert_allclose(quadrature, per_run, rtol=1e-9)
    mean = np.trapezoid(dens * grid, grid)  # the broadened density on its grid
    assert mean == pytest.approx(per_run.mean(), rel=1e-5)
    assert abs(mean - float(h.trace()) / p) <= 3 * per_run.std(ddof=1) / np.sqrt(runs)
    # Lanczos quadrature finds the extreme eigenvalues
    assert res["slq_nodes"].max() == pytest.approx(float(evals[0]), rel=1e-6)
    assert res["slq_nodes"].min() == pytest.approx(float(evals[-1]), rel=1e-3, abs=1e-6 * float(evals[0]))
    # batched and one-at-a-time runs agree
    seq = hessian_spectrum(m, snap, x, y, density=True, density_runs=runs, iters=30, seed=3, batch_size=35,
                           probe_batch=1)
    np.testing.assert_allclose(seq["slq_nodes"], res["slq_nodes"], rtol=0, atol=1e-9 * float(evals[0]))


def _other(seed: int = 1) -> Snapshot:
    return Snapshot.from_model(_model(seed).double(), f"m{seed}")


def test_hessian_line_points(problem):
    m, a, x, y, *_ = problem
    b = _other()
    res = hessian_line(_evaluator(m, x, y), a, b, np.array([0.0, 0.5, 1.0]), top_k=2, trace=True, density=True,
                       probes=20, iters=40)
    assert res["eigenvalues"].shape == (3, 2) and res["trace"].shape == (3,) and res["density"].shape == (3, 1000)
    for i, snap in enumerate((a, line_snapshot(a, b, 0.5), b)):
        one = hessian_spectrum(m, snap, x, y, top_k=2, trace=True, density=True, probes=20, iters=40, batch_size=35)
        np.testing.assert_allclose(res["eigenvalues"][i], one["eigenvalues"], rtol=1e-10)
        assert res["trace"][i] == pytest.approx(one["trace"], rel=1e-10)
    assert torch.equal(line_snapshot(a, b, 1.0).params, b.params) and torch.equal(line_snapshot(a, b, 0.0).params, a.params)
    h_mid = explicit_hessian(m, line_snapshot(a, b, 0.5), x, y)
    assert res["eigenvalues"][1, 0] == pytest.approx(float(torch.linalg.eigvalsh(h_mid)[-1]), rel=1e-6)


def test_diverged_point_is_nan_not_an_error(problem):
    m, snap, x, y, *_ = problem
    bad = Snapshot("bad", torch.full_like(snap.params, float("inf")), snap.layout, snap.buffers)
    res = hessian_spectrum(m, bad, x, y, top_k=2, trace=True, probes=3)
    assert res["diverged"] and np.isnan(res["eigenvalues"]).all() and np.isnan(res["trace"])


def test_bad_settings_are_one_line_errors(problem):
    m, snap, x, y, *_ = problem
    for kwargs, needle in (({"top_k": 0}, "--top-k must be a positive integer"),
                           ({"probes": 0, "trace": True}, "--probes"), ({"iters": 0}, "--iters"),
                           ({"top_k": 5, "iters": 3}, "must be at least --top-k"),
                           ({"top_k": 500, "iters": 600}, "exceeds the model's"),
                           ({"tol": float("nan")}, "--tol"), ({"density_runs": -1}, "--density-runs")):
        with pytest.raises(LandscapeError, match=needle) as exc:
            hessian_spectrum(m, snap, x, y, **kwargs)
        assert "\n" not in str(exc.value)


# -- the analysis layer ---------------------------------------------------------------------
def _evaluator(m, x, y, bn_mode="keep"):
    return Evaluator(m, TensorData(x, y, "train", 3), None, bn_mode=bn_mode, batch_size=35)


def test_analysis_stores_once_and_refuses_other_arguments(problem, tmp_path):
    from landscape.store.store import Store

    m, snap, x, y, *_ = problem
    ev = _evaluator(m, x, y)
    with Store(tmp_path / "s", "a") as st:
        res = hessian(ev, snap, top_k=2, trace=True, probes=10, store=st, name="h", provenance={"model_spec": "t"})
    assert res["computed_now"] == 1
    path = tmp_path / "s" / "hessians" / "h.h5"
    before = os.stat(path).st_mtime_ns
    with Store(tmp_path / "s", "a") as st:
        again = hessian(ev, snap, top_k=2, trace=True, probes=10, store=st, name="h", provenance={"model_spec": "t"})
        assert not st.wrote  # nothing written, not even the lock
        np.testing.assert_array_equal(again["eigenvalues"], res["eigenvalues"])
        assert again["trace"] == res["trace"] and again["computed_now"] == 0
        assert again["eigenvectors"].shape == (2, snap.params.numel())
        with pytest.raises(LandscapeError, match="different arguments .*top_k"):
            hessian(ev, snap, top_k=3, store=st, name="h", provenance={"model_spec": "t"})
    assert os.stat(path).st_mtime_ns == before
    with Store(tmp_path / "s", "a") as st:
        res3 = hessian(ev, snap, top_k=3, store=st, name="h", overwrite=True, provenance={"model_spec": "t"})
        assert res3["computed_now"] == 1 and len(res3["eigenvalues"]) == 3 and res3["trace"] is None
        attrs = st.read_attrs("hessians", "h")
        assert attrs["bn_mode"] == "keep" and attrs["model_spec"] == "t" and "versions" in attrs
        assert attrs["snapshot"] == "m" and attrs["config"]["snapshot"] == snap.fingerprint()


def test_line_analysis_resumes_by_point(problem, tmp_path, monkeypatch):
    from landscape.analyses import hessian as hmod
    from landscape.store.store import Store

    m, a, x, y, *_ = problem
    b = _other()
    ev = _evaluator(m, x, y)
    alphas = np.array([0.0, 0.5, 1.0])
    calls = []
    real = hmod.hessian_spectrum

    def failing(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hmod, "hessian_spectrum", failing)
    with Store(tmp_path / "s", "a") as st, pytest.raises(KeyboardInterrupt):
        hessian_line(ev, a, b, alphas, store=st, name="L", trace=True, probes=10)
    monkeypatch.setattr(hmod, "hessian_spectrum", real)
    with Store(tmp_path / "s", "a") as st:
        assert st.names("hessians") == ["L-0", "L-1"]
        res = hessian_line(ev, a, b, alphas, store=st, name="L", trace=True, probes=10)
        assert res["computed_now"] == 1
        again = hessian_line(ev, a, b, alphas, store=st, name="L", trace=True, probes=10)
    assert again["computed_now"] == 0
    np.testing.assert_array_equal(again["eigenvalues"], res["eigenvalues"])
    whole = hessian_line(ev, a, b, alphas, trace=True, probes=10)
    np.testing.assert_allclose(whole["eigenvalues"], res["eigenvalues"], rtol=1e-12)
    np.testing.assert_allclose(whole["trace"], res["trace"], rtol=1e-12)


def test_bn_recompute_mode_uses_update_bn_statistics(problem):
    m, snap, x, y, *_ = problem
    ev = _evaluator(m, x, y, bn_mode="recompute")
    res = hessian(ev, snap, top_k=1, iters=40, tol=1e-10)
    ref = _model().double()
    snap.load_into(ref)
    update_bn(DataLoader(TensorDataset(x), batch_size=35), ref)
    want = explicit_hessian(m, Snapshot.from_model(ref), x, y)
    assert res["eigenvalues"][0] == pytest.approx(float(torch.linalg.eigvalsh(want)[-1]), rel=1e-9)
    assert res["bn_mode"] == "recompute"


def test_hessian_directions_normalised_like_random_planes(problem):
    from landscape.geometry.directions import random_direction

    m, snap, x, y, h, evals, evecs = problem
    ev = _evaluator(m, x, y)
    raw, attrs = hessian_directions(ev, snap, normalization="none", ignore_bias_bn=False, tol=1e-10)
    assert raw.shape == (2, snap.params.numel()) and attrs["kind"] == "hessian"
    for i in range(2):
        assert abs(float(raw[i] @ evecs[:, i])) == pytest.approx(1.0, abs=1e-8)
    d, attrs = hessian_directions(ev, snap, normalization="filter", tol=1e-10)
    assert attrs["normalization"] == "filter" and attrs["eigenvalues"][0] == pytest.approx(float(evals[0]))
    rnd = random_direction(snap.layout, snap.params, "filter", 0, True)
    for _, shape, sl in snap.layout.slices():
        if len(shape) <= 1:
            assert torch.all(d[0, sl] == 0) and torch.all(rnd[sl] == 0)
        else:
            want = snap.params[sl].view(shape[0], -1).norm(dim=1)
            torch.testing.assert_close(d[0, sl].view(shape[0], -1).norm(dim=1), want)
            torch.testing.assert_close(rnd[sl].view(shape[0], -1).norm(dim=1), want)


# -- the command ----------------------------------------------------------------------------
USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    def make(num_classes=3):
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))
""")


@pytest.fixture()
def work(tmp_path, monkeypatch):
    (tmp_path / "curv_user_model.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("curv_user_model", None)
    import curv_user_model

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 2, 6, 6, generator=g), torch.randint(0, 3, (90,), generator=g)
    torch.save({"x": x[:60], "y": y[:60]}, tmp_path / "train.pt")
    torch.save({"x": x[60:], "y": y[60:]}, tmp_path / "test.pt")
    for i in range(2):
        torch.manual_seed(10 + i)
        torch.save(curv_user_model.make().state_dict(), tmp_path / f"m{i}.pt")
    return tmp_path


@pytest.fixture()
def cli_main():
    """The `landscape` command (hessian and connect come through the landscape.commands entry point)."""
    from landscape.cli import main

    return main


COMMON = ["--model", "curv_user_model:make", "--data", "tensors:train.pt", "--quiet"]


def _run(main, capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_hessian_json_text_and_store(work, cli_main, capsys):
    code, out, err = _run(cli_main, capsys, "hessian", "m0.pt", "--top-k", "3", "--trace", "--probes", "20",
                          "--out", "s", "--json", *COMMON)
    assert code == 0, err
    res = json.loads(out)
    assert res["eigenvalues"] == sorted(res["eigenvalues"], reverse=True) and len(res["eigenvalues"]) == 3
    assert isinstance(res["trace"], float) and res["trace_stderr"] > 0 and res["computed_now"] == 1
    assert res["bn_mode"] == "recompute"  # auto: the model has BatchNorm and --data is given
    code, out, _ = _run(cli_main, capsys, "hessian", "m0.pt", "--top-k", "3", "--trace", "--probes", "20",
                        "--out", "s", "--json", *COMMON)
    assert json.loads(out)["computed_now"] == 0 and json.loads(out)["eigenvalues"] == res["eigenvalues"]
    code, out, _ = _run(cli_main, capsys, "hessian", "m0.pt", "m1.pt", "--bn", "keep", *COMMON)
    assert code == 0 and "m0.pt" in out and "m1.pt" in out and "λ" in out
    code, out, _ = _run(cli_main, capsys, "hessian", "--along", "m0.pt", "m1.pt", "--num", "3", "--density",
                        "--iters", "20", "--json", *COMMON)
    line = json.loads(out)
    assert code == 0 and len(line["eigenvalues"]) == 3 and line["trace"] is None
    assert len(line["density"]["values"]) == 3 and line["alphas"] == [0.0, 0.5, 1.0]


def test_cli_hessian_bad_input_one_line(work, cli_main, capsys):
    for argv, needle in ((["m0.pt", "--top-k", "0"], "--top-k must be a positive integer"),
                         (["m0.pt", "--probes", "0", "--trace"], "--probes"),
                         (["m0.pt", "--top-k", "4", "--iters", "2"], "at least --top-k"),
                         (["m0.pt", "--top-k", "10000", "--iters", "10000"], "exceeds the model's"),
                         ([], "give one or more snapshots, or --along"),
                         (["m0.pt", "--along", "m0.pt", "m1.pt"], "not both"),
                         (["nope.pt"], "does not exist"),
                         (["m0.pt", "--tol", "-1"], "--tol")):
        code, out, err = _run(cli_main, capsys, "hessian", *argv, *COMMON)
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)
