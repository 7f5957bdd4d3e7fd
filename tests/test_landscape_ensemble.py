"""`landscape ensemble` against an independent fp64 computation from plain forward passes."""
from __future__ import annotations

import itertools
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

from landscape.cli import main

USER_MODULE = textwrap.dedent("""
    from torch import nn

    def make(num_classes=5):
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 4 * 4, num_classes))

    def make_other(num_classes=5):
        return nn.Sequential(nn.Flatten(), nn.Linear(36, num_classes))
""")


@pytest.fixture()
def work(tmp_path, monkeypatch):
    (tmp_path / "ens_model.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("ens_model", None)
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
    return tmp_path


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
    from landscape.checkpoints import Snapshot
    from landscape.store import Store

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
    assert [r["acc"] for r in res["rows"]] == pytest.approx([r["acc"] for r in rows])
    probs, y = reference_probs(["m0.pt", "m1.pt", "m2.pt"])
    # over random orders, size 3 is the full ensemble whatever the order; size 1 is a mean of
    # single members, so it lies between the best and the worst member
    singles = [reference_metrics(probs[[i]], y)[0]["nll"] for i in range(3)]
    assert res["orders_mean"]["nll"][2] == pytest.approx(res["rows"][2]["nll"], rel=1e-6)
    assert min(singles) - 1e-9 <= res["orders_mean"]["nll"][0] <= max(singles) + 1e-9


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
