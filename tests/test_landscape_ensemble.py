"""`landscape ensemble` against an independent fp64 computation from plain forward passes."""
from __future__ import annotations

import itertools
import json
import math
import textwrap

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from landscape.cli import main
from landscape.core.errors import LandscapeError

USER_MODULE = textwrap.dedent("""
    from torch import nn

    def make(num_classes=5):
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, num_classes))

    def make_other(num_classes=5):
        return nn.Sequential(nn.Flatten(), nn.Linear(36, num_classes))
""")


WORK_FILES = {"ens_model.py": USER_MODULE}


def make_work(folder):
    """The `work` fixture's problem (tests/conftest.py): test/val data, four members, a member of
    another architecture, one with 7 classes and one holding a NaN."""
    import ens_model

    g = torch.Generator().manual_seed(1)
    x = torch.randn(130, 1, 6, 6, generator=g)
    y = torch.randint(0, 5, (130,), generator=g)
    torch.save({"x": x[:83], "y": y[:83]}, "test.pt")
    torch.save({"x": x[83:], "y": y[83:]}, "val.pt")
    for i in range(4):
        torch.manual_seed(i)
        m = ens_model.make()
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(3.0)  # confident, diverse members
            m[1].running_mean.uniform_(-0.3, 0.3)
        torch.save(m.state_dict(), f"m{i}.pt")
    torch.save(ens_model.make_other().state_dict(), "other.pt")
    torch.save(ens_model.make(num_classes=7).state_dict(), "seven.pt")
    nan = torch.load("m0.pt")
    nan["4.bias"][2] = float("nan")
    torch.save(nan, "nan.pt")


def reference_probs(paths, split="test"):
    import ens_model

    d = torch.load(f"{split}.pt")
    probs = []
    for p in paths:
        m = ens_model.make().double()
        m.load_state_dict(torch.load(p))
        m.eval()
        with torch.no_grad():
            probs.append(torch.softmax(m(d["x"].double()), -1).numpy())
    return np.stack(probs), d["y"].numpy()


def reference_metrics(probs, y, n_bins=15):
    rows = []
    for m in range(1, len(probs) + 1):
        p = probs[:m].mean(0)
        conf, pred = p.max(1), p.argmax(1)
        correct = pred == y
        bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
        ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(n_bins)) / len(y)
        onehot = np.eye(p.shape[1])[y]
        preds = probs[:m].argmax(-1)
        pairs = list(itertools.combinations(range(m), 2))
        dis = np.mean([(preds[i] != preds[j]).mean() for i, j in pairs]) if pairs else 0.0
        kl = np.mean([(probs[i] * (np.log(probs[i]) - np.log(p))).sum(1).mean() for i in range(m)])
        rows.append({"acc": correct.mean(), "nll": -np.log(p[np.arange(len(y)), y]).mean(), "ece": ece,
                     "brier": ((p - onehot) ** 2).sum(1).mean(), "disagreement": dis, "kl": kl,
                     "member_acc": np.mean([(probs[i].argmax(1) == y).mean() for i in range(m)])})
    return rows


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ensemble_matches_fp64_reference(work, capsys):
    members = [f"m{i}.pt" for i in range(4)]
    code, out, err = run(capsys, "ensemble", *members, "--model", "ens_model:make", "--data", "tensors:test.pt",
                         "--batch-size", "20", "--json", "--quiet", "--out", "e_store", "--keep-predictions")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    probs, y = reference_probs(members)
    for got, ref in zip(rows, reference_metrics(probs, y)):
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), (got["size"], k)
    assert [r["size"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["acc"] > 0 and rows[-1]["disagreement"] > 0

    # the kept predictions give the same table without the model
    code, out, err = run(capsys, "ensemble", "e_store:ensemble", "--json")
    assert code == 0, err
    again = json.loads(out)["rows"]
    for a, b in zip(rows, again):
        for k in ("acc", "nll", "ece", "brier"):
            assert a[k] == pytest.approx(b[k], rel=1e-6)
    code, out, err = run(capsys, "plot", "e_store", "ensemble", "-o", "ens.png")
    assert code == 0 and (work / "ens.png").exists()


def test_calibrated_nll_uses_the_best_temperature(work, capsys):
    members = [f"m{i}.pt" for i in range(3)]
    code, out, err = run(capsys, "ensemble", *members, "--model", "ens_model:make", "--data", "tensors:test.pt",
                         "--val-data", "tensors:val.pt", "--json", "--quiet")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    vprobs, vy = reference_probs(members, "val")
    tprobs, ty = reference_probs(members, "test")
    for m, row in enumerate(rows, start=1):
        def nll(t, probs, yy):
            z = np.log(probs[:m].mean(0)) / t
            z = z - z.max(1, keepdims=True)
            return -(z[np.arange(len(yy)), yy] - np.log(np.exp(z).sum(1))).mean()

        grid = np.exp(np.linspace(-4, 4, 801))
        assert nll(row["temperature"], vprobs, vy) <= min(nll(t, vprobs, vy) for t in grid) + 1e-7
        assert row["cal_nll"] == pytest.approx(nll(row["temperature"], tprobs, ty), rel=1e-5)


def test_random_orders_and_store_snapshots(work, capsys):
    import ens_model

    from landscape.core.checkpoints import Snapshot
    from landscape.store.store import Store

    with Store("snaps.h5", "a") as st:
        for i in range(3):
            m = ens_model.make()
            m.load_state_dict(torch.load(f"m{i}.pt"))
            st.write_snapshot(Snapshot.from_model(m, f"s{i}"))
    code, out, err = run(capsys, "ensemble", "snaps.h5:s0", "snaps.h5:s1", "snaps.h5:s2", "--model",
                         "ens_model:make", "--data", "tensors:test.pt", "--orders", "6", "--json", "--quiet")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    from landscape import ensemble

    res = ensemble(["m0.pt", "m1.pt", "m2.pt"], model="ens_model:make", data="tensors:test.pt", orders=6)
    assert list(res.metrics["acc"]) == pytest.approx([r["acc"] for r in rows])
    probs, y = reference_probs(["m0.pt", "m1.pt", "m2.pt"])
    # over random orders, size 3 is the full ensemble whatever the order; size 1 is a mean of
    # single members, so it lies between the best and the worst member
    singles = [reference_metrics(probs[[i]], y)[0]["nll"] for i in range(3)]
    assert res.orders_mean["nll"][2] == pytest.approx(res.metrics["nll"][2], rel=1e-6)
    assert min(singles) - 1e-9 <= res.orders_mean["nll"][0] <= max(singles) + 1e-9


def test_ensemble_bad_inputs(work, capsys):
    base = ["--model", "ens_model:make", "--data", "tensors:test.pt", "--quiet"]
    for argv, needle in [
        (["m0.pt", "other.pt"], "member 'other.pt'"),
        (["m0.pt", "seven.pt"], "member 'seven.pt'"),
        (["m0.pt", "nan.pt"], "member 1 (nan.pt)"),
    ]:
        code, out, err = run(capsys, "ensemble", *argv, *base)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert needle in err, err
    torch.save({"x": torch.randn(3, 1, 6, 6), "y": torch.tensor([0, 9, 1])}, "bad.pt")
    code, out, err = run(capsys, "ensemble", "m0.pt", "m1.pt", "--model", "ens_model:make", "--num-classes", "5",
                         "--data", "tensors:bad.pt", "--quiet")
    assert code == 2 and "sample 1" in err and len(err.strip().splitlines()) == 1, err


# --------------------------------------------------------------------------------------------
# every member order, temperatures per order, one fused call per batch (landscape.evaluate.ensembles)


def numpy_metrics(probs, y, order, temps=None, n_bins=15):
    """Per-size metrics of the members taken in `order`, from fp64 probabilities [M, N, C]."""
    probs = probs[np.asarray(order)]
    rows = reference_metrics(probs, y, n_bins)
    out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    if temps is not None:
        out["cal_nll"] = np.array([
            -log_softmax(np.log(probs[:m].mean(0)) / temps[m - 1], axis=1)[np.arange(len(y)), y].mean()
            for m in range(1, len(probs) + 1)])
    return out


def val_nll(probs, y, m, t):
    z = np.log(probs[:m].mean(0)) / t
    return -(log_softmax(z, axis=1)[np.arange(len(y)), y]).mean()


def synthetic(M=4, N=150, C=6, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=g)
    signal = torch.nn.functional.one_hot(y, C).double() * 1.5
    logits = (torch.randn(M, N, C, generator=g, dtype=torch.float64) * scale + signal).float()
    return logits, y


def batches_of(logits, labels, size):
    return iter([(logits[:, i:i + size], labels[i:i + size]) for i in range(0, labels.shape[0], size)])


def test_temperatures_fitted_for_every_order():
    from landscape.evaluate.ensembles import evaluate_ensemble, fit_temperatures, member_orders

    M, orders, seed = 4, 3, 5
    val, yv = synthetic(M, 160, seed=1)
    test, yt = synthetic(M, 97, seed=2)
    perms = member_orders(M, orders, seed)
    fit = fit_temperatures(val, yv, perms)
    assert fit.temperatures.shape == (orders + 1, M) and not fit.at_bound.any()
    vp = torch.softmax(val.double(), -1).numpy()
    grid = np.exp(np.linspace(-4, 4, 1601))
    for k, order in enumerate(perms.numpy()):
        for m in range(1, M + 1):
            t = float(fit.temperatures[k, m - 1])
            best = min(val_nll(vp[order], yv.numpy(), m, g) for g in grid)  # brute force
            assert val_nll(vp[order], yv.numpy(), m, t) <= best + 1e-9, (k, m)
            assert fit.val_nll[k, m - 1] == pytest.approx(val_nll(vp[order], yv.numpy(), m, t), rel=1e-9)
    # the full ensemble is one set of members: one temperature for every order
    assert torch.allclose(fit.temperatures[:, -1], fit.temperatures[0, -1])

    names = [f"m{i}" for i in range(M)]
    res = evaluate_ensemble(batches_of(test, yt, 40), names, fit, orders, seed)
    tp = torch.softmax(test.double(), -1).numpy()
    want = [numpy_metrics(tp, yt.numpy(), o, fit.temperatures[k].numpy()) for k, o in enumerate(perms.numpy())]
    keys = ("acc", "nll", "ece", "brier", "disagreement", "kl", "member_acc", "cal_nll")
    for key in keys:
        np.testing.assert_allclose(res[key], want[0][key], rtol=1e-5, atol=1e-6, err_msg=key)
        mean = np.mean([w[key] for w in want[1:]], axis=0)
        np.testing.assert_allclose(res[f"{key}_orders_mean"], mean, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(res["temperature"], fit.temperatures[0].numpy())
    np.testing.assert_allclose(res["temperature_orders_mean"], fit.temperatures[1:].mean(0).numpy())
    assert res["temperature_at_bound"].dtype == bool and not res["temperature_at_bound"].any()

    # a fit for the given order only (what `fit_temperatures(val, labels)` gives) is completed
    # for the random orders from its validation data: same result
    again = evaluate_ensemble(batches_of(test, yt, 40), names, fit_temperatures(val, yv), orders, seed)
    for key in res:
        np.testing.assert_allclose(again[key], res[key], rtol=1e-12, err_msg=key)
    # plain per-size temperatures (one set for every order) still work
    plain = evaluate_ensemble(batches_of(test, yt, 40), names, fit.temperatures[0], orders, seed)
    np.testing.assert_allclose(plain["cal_nll"], res["cal_nll"], rtol=1e-12)
    with pytest.raises(LandscapeError, match="temperatures"):
        evaluate_ensemble(batches_of(test, yt, 40), names, torch.ones(M + 1), orders, seed)


def test_temperature_bounds_are_reported():
    from landscape.evaluate.ensembles import LOG_T_BOUNDS, evaluate_ensemble, fit_temperatures

    M, C = 3, 5
    y = torch.arange(60) % C
    right = torch.nn.functional.one_hot(y, C).float() * 6.0 + torch.randn(M, 60, C) * 0.3
    fit = fit_temperatures(right, y)  # validation accuracy 100%: the NLL falls all the way to T -> 0
    assert fit.at_bound.all() and fit.bound_sizes() == [1, 2, 3]
    torch.testing.assert_close(fit.temperatures, torch.full((1, M), math.exp(LOG_T_BOUNDS[0]), dtype=torch.float64))
    wrong = -right  # worse than uniform: the best temperature is as large as allowed
    fit = fit_temperatures(wrong, y)
    assert fit.bound_sizes() == [1, 2, 3]
    torch.testing.assert_close(fit.temperatures, torch.full((1, M), math.exp(LOG_T_BOUNDS[1]), dtype=torch.float64))
    # member 0 alone is perfect, and so is any pair with it (its average keeps p_y >= 1/2)
    mixed = torch.cat([right[:1], synthetic(2, 60, C, seed=3)[0]])
    fit = fit_temperatures(mixed, y, torch.tensor([[0, 1, 2], [1, 0, 2]]))
    assert fit.bound_sizes(0) == [1, 2] and fit.bound_sizes(1) == [2]
    assert fit.temperatures[1, 0] > 0.1 and fit.temperatures[0, 2] > 0.1
    res = evaluate_ensemble(batches_of(mixed, y, 25), ["a", "b", "c"], fit)
    assert res["temperature_at_bound"].tolist() == [True, True, False]


def test_one_fused_call_per_batch(monkeypatch):
    import landscape.evaluate.ensembles as ens

    calls = []
    real = ens.ensemble_metrics_orders

    def counting(logits, labels, orders, *args, **kwargs):
        calls.append((tuple(logits.shape), tuple(orders.shape), kwargs.get("temperatures") is not None))
        return real(logits, labels, orders, *args, **kwargs)

    monkeypatch.setattr(ens, "ensemble_metrics_orders", counting)
    logits, y = synthetic(5, 103)
    fit = ens.fit_temperatures(*synthetic(5, 50, seed=4), ens.member_orders(5, 4, 0))
    ens.evaluate_ensemble(batches_of(logits, y, 25), list("abcde"), fit, orders=4)
    assert calls == [((5, n, 6), (5, 5), True) for n in (25, 25, 25, 25, 3)]


def test_stored_predictions_every_order_matches_numpy(work, capsys):
    from landscape import ensemble
    from landscape.evaluate.ensembles import member_orders

    members = [f"m{i}.pt" for i in range(4)]
    ensemble(members, model="ens_model:make", data="tensors:test.pt", out="kept.h5", keep_predictions=True)
    code, out, err = run(capsys, "ensemble", "kept.h5:ensemble", "--orders", "3", "--seed", "7", "--json",
                         "--batch-size", "30")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    res = ensemble(["kept.h5:ensemble"], orders=3, seed=7, batch_size=30)
    assert list(res.metrics["kl"]) == pytest.approx([r["kl"] for r in rows])
    probs, y = reference_probs(members)
    perms = member_orders(4, 3, 7).numpy()
    want = [numpy_metrics(probs, y, o) for o in perms]
    for key in ("acc", "nll", "ece", "brier", "disagreement", "kl", "member_acc"):
        np.testing.assert_allclose(res.metrics[key], want[0][key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(res.orders_mean[key], np.mean([w[key] for w in want[1:]], axis=0),
                                   rtol=1e-5, atol=1e-6, err_msg=key)
