"""Bezier and polygonal-chain curves between snapshots (Garipov et al.): the formulas, exact
endpoints, training that finds a lower path than the straight line, storage and resume, and
the `connect` command."""
from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from landscape.analyses.connect import connect
from landscape.core.checkpoints import Snapshot
from landscape.core.data import TensorData
from landscape.core.errors import LandscapeError
from landscape.evaluate.engine import Evaluator
from landscape.geometry.curves import curve_point, curve_weights, lr_factor, train_curve


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_curve_formulas_and_exact_endpoints():
    g = torch.Generator().manual_seed(0)
    a, theta, b = (torch.randn(50, generator=g) for _ in range(3))
    for t in (0.0, 0.1, 0.25, 0.5, 0.6, 0.9, 1.0):
        bez = (1 - t) ** 2 * a + 2 * t * (1 - t) * theta + t**2 * b
        poly = (1 - 2 * t) * a + 2 * t * theta if t <= 0.5 else (2 - 2 * t) * theta + (2 * t - 1) * b
        for curve, want in (("bezier", bez), ("polychain", poly)):
            torch.testing.assert_close(curve_point(curve, a, theta, b, t), want, rtol=1e-6, atol=1e-6)
            tt = torch.tensor(t)
            torch.testing.assert_close(curve_point(curve, a, theta, b, tt), want, rtol=1e-6, atol=1e-6)
            assert sum(curve_weights(curve, t)) == pytest.approx(1.0)
    for curve in ("bezier", "polychain"):
        assert torch.equal(curve_point(curve, a, theta, b, 0.0), a)
        assert torch.equal(curve_point(curve, a, theta, b, 1.0), b)
    assert torch.equal(curve_point("polychain", a, theta, b, 0.5), theta)
    # the midpoint control point makes the Bezier curve the straight line
    mid = (a + b) / 2
    for t in (0.2, 0.5, 0.7):
        torch.testing.assert_close(curve_point("bezier", a, mid, b, t), (1 - t) * a + t * b)
    # dnn-mode-connectivity's learning-rate schedule
    assert [lr_factor(e, 10) for e in (1, 5, 7, 9, 10)] == pytest.approx([1, 1, 1 - 0.2 / 0.4 * 0.99, 0.01 + 0.0, 0.01])
    with pytest.raises(LandscapeError, match="unknown curve"):
        curve_weights("spline", 0.5)


# -- a synthetic task whose independently trained solutions have a high linear barrier ------
def _task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rings crossed with quadrants: a checkerboard in polar coordinates."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g) * 1.5
    ring = torch.floor(x.norm(dim=1) * 1.5)
    quadrant = torch.floor(torch.atan2(x[:, 1], x[:, 0]) / (np.pi / 2) + 2)
    return x, ((ring + quadrant) % 2).long()


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))


@pytest.fixture(scope="module")
def two_solutions():
    x, y = _task(600, 0)
    xt, yt = _task(400, 1)
    snaps = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = _mlp()
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(400):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        snaps.append(Snapshot.from_model(m, f"seed{seed}"))
    return x, y, xt, yt, snaps[0], snaps[1]


def _evaluator(x, y, xt=None, yt=None, model=None, bn_mode="keep"):
    test = TensorData(xt, yt, "test", 2) if xt is not None else None
    return Evaluator(model or _mlp(), TensorData(x, y, "train", 2), test, bn_mode=bn_mode)


@pytest.mark.parametrize("curve", ["bezier", "polychain"])
def test_trained_curve_has_a_lower_barrier_than_the_line(two_solutions, curve):
    x, y, xt, yt, a, b = two_solutions
    ev = _evaluator(x, y, xt, yt)
    res = connect(ev, a, b, curve=curve, num=11, epochs=30, lr=0.05, train_batch_size=64, seed=0)
    line, bent = res["line_barriers"]["train_loss"]["barrier"], res["barriers"]["train_loss"]["barrier"]
    assert line > 1.0, line  # independently trained: a real wall on the straight line
    assert bent < 0.4 * line, (bent, line)
    assert res["barriers"]["test_loss"]["barrier"] < res["line_barriers"]["test_loss"]["barrier"]
    # the ends of both paths are the snapshots themselves
    for key in ("train_loss", "test_loss", "train_acc"):
        assert res[key][0] == res[f"line_{key}"][0] and res[key][-1] == res[f"line_{key}"][-1]
    assert res["train_loss"][0] == pytest.approx(ev.evaluate(a.params)["train_loss"], rel=1e-12)
    # the path's points are φ_θ(t) of the trained control point
    theta = res["control_point"].params
    t = res["alphas"][3]
    assert res["train_loss"][3] == pytest.approx(
        ev.evaluate(curve_point(curve, a.params, theta, b.params, float(t)))["train_loss"], rel=1e-12)
    assert len(res["history"]) == 30 and res["history"][-1] < res["history"][0]
    assert res["warnings"] == []  # trained: its barrier is below the line's


def test_an_undertrained_curve_is_said_to_be_so(two_solutions):
    """A Bezier curve starts as the straight line (its control point at the midpoint): with a
    learning rate too small to move it, its barrier equals the line's, and the result says so."""
    x, y, xt, yt, a, b = two_solutions
    res = connect(_evaluator(x, y, xt, yt), a, b, curve="bezier", num=5, epochs=1, lr=1e-9, train_batch_size=64)
    assert len(res["warnings"]) == 1 and "raise --epochs" in res["warnings"][0]


def test_training_is_deterministic_and_moves_the_control_point(two_solutions):
    x, y, _, _, a, b = two_solutions
    t1, h1 = train_curve(_mlp(), a, b, x, y, epochs=2, lr=0.05, seed=3)
    t2, h2 = train_curve(_mlp(), a, b, x, y, epochs=2, lr=0.05, seed=3)
    assert torch.equal(t1, t2) and h1 == h2
    assert not torch.allclose(t1, (a.params + b.params) / 2)
    t3, _ = train_curve(_mlp(), a, b, x, y, epochs=2, lr=0.01, seed=3, optimizer="adam")
    assert not torch.equal(t1, t3)


def test_connect_stores_resumes_and_reruns_as_a_no_op(two_solutions, tmp_path, monkeypatch):
    from landscape.analyses import connect as connections
    from landscape.store.store import Store

    x, y, xt, yt, a, b = two_solutions
    ev = _evaluator(x, y, xt, yt)
    kwargs = dict(curve="bezier", num=7, epochs=3, lr=0.05, seed=0, chunk=2)
    whole = connect(ev, a, b, **kwargs)
    # a run cut short during the evaluation: the control point and the finished chunks are kept
    real = ev.evaluate
    calls = []

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) > 6:  # three points of curve and line: one chunk of 2 saved, the second cut
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(ev, "evaluate", dying)
    with Store(tmp_path / "s", "a") as st, pytest.raises(KeyboardInterrupt):
        connect(ev, a, b, store=st, name="c", **kwargs)
    monkeypatch.setattr(ev, "evaluate", real)
    monkeypatch.setattr(connections, "train_curve", lambda *a_, **k_: pytest.fail("retrained"))
    with Store(tmp_path / "s", "a") as st:
        assert st.has("snapshots", "c-bend") and st.unfinished("connections") == ["c"]
        res = connect(ev, a, b, store=st, name="c", **kwargs)
    assert res["computed_now"] == 5 and res["bend"] == "c-bend"
    for key in ("train_loss", "line_train_loss", "test_acc"):
        np.testing.assert_array_equal(res[key], whole[key])
    assert res["barriers"] == whole["barriers"] and res["line_barriers"] == whole["line_barriers"]
    with Store(tmp_path / "s", "a") as st:
        again = connect(ev, a, b, store=st, name="c", **kwargs)
        assert not st.wrote and again["computed_now"] == 0
        with pytest.raises(LandscapeError, match="different arguments"):
            connect(ev, a, b, store=st, name="c", **{**kwargs, "epochs": 4})
        obj = st.read("connections", "c")
        assert obj.attrs["curve"] == "bezier" and "line_barriers" in obj.attrs
        np.testing.assert_array_equal(obj["alphas"], res["alphas"])
        bend = st.read_snapshot("c-bend")
    assert torch.equal(bend.params, whole["control_point"].params)
    assert bend.meta["method"] == "curve_bend" and len(bend.meta["history"]) == 3


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_connect_killed_mid_training_resumes_with_the_uninterrupted_numbers(two_solutions, tmp_path, monkeypatch,
                                                                             optimizer):
    from landscape.analyses import connect as connections
    from landscape.store.store import Store

    x, y, xt, yt, a, b = two_solutions
    kwargs = dict(curve="bezier", num=5, epochs=5, lr=0.05, seed=3, optimizer=optimizer, train_batch_size=64)
    with Store(tmp_path / "whole", "a") as st:
        whole = connect(_evaluator(x, y, xt, yt), a, b, store=st, name="c", **kwargs)
    real, epochs_seen = connections.train_curve, []

    def killed_after_epoch_2(*args, on_epoch=None, progress=None, **kw):
        assert progress is None  # the first run starts from nothing

        def save_then_die(state):
            on_epoch(state)
            epochs_seen.append(state["epoch"])
            if state["epoch"] == 2:
                raise KeyboardInterrupt
        return real(*args, on_epoch=save_then_die, progress=progress, **kw)

    monkeypatch.setattr(connections, "train_curve", killed_after_epoch_2)
    with Store(tmp_path / "s", "a") as st, pytest.raises(KeyboardInterrupt):
        connect(_evaluator(x, y, xt, yt), a, b, store=st, name="c", **kwargs)
    assert epochs_seen == [1, 2] and Store(tmp_path / "s").unfinished("snapshots") == ["c-bend"]
    resumed_from = []

    def resumes(*args, progress=None, **kw):
        resumed_from.append(None if progress is None else progress["epoch"])
        return real(*args, progress=progress, **kw)

    monkeypatch.setattr(connections, "train_curve", resumes)
    with Store(tmp_path / "s", "a") as st:
        res = connect(_evaluator(x, y, xt, yt), a, b, store=st, name="c", **kwargs)
    assert resumed_from == [2]  # epochs 3 to 5 only
    assert torch.equal(res["control_point"].params, whole["control_point"].params)
    assert res["history"] == whole["history"]
    for key in ("train_loss", "test_loss", "line_train_loss"):
        np.testing.assert_array_equal(res[key], whole[key])
    assert Store(tmp_path / "s").unfinished("snapshots") == []  # the progress goes once the bend is stored


class _BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.body(x)


def test_batchnorm_model_recomputes_statistics_along_the_curve(two_solutions, tmp_path):
    from torch.optim.swa_utils import update_bn
    from torch.utils.data import DataLoader, TensorDataset

    from landscape.store.store import Store

    x, y, xt, yt, *_ = two_solutions
    snaps = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        snaps.append(Snapshot.from_model(_BNNet(), f"bn{seed}"))
    with pytest.raises(LandscapeError, match="--bn recompute"):
        connect(_evaluator(x, y, model=_BNNet(), bn_mode="keep"), *snaps, epochs=1)
    ev = _evaluator(x, y, xt, yt, model=_BNNet(), bn_mode="recompute")
    with Store(tmp_path / "s", "a") as st:
        res = connect(ev, *snaps, curve="polychain", num=5, epochs=2, store=st, name="bn")
        bend = st.read_snapshot("bn-bend")
    ref = _BNNet()
    Snapshot("b", bend.params, bend.layout, bend.buffers).load_into(ref)
    update_bn(DataLoader(TensorDataset(x[:2000]), batch_size=ev.batch_size), ref)
    for k, v in ref.named_buffers():
        torch.testing.assert_close(bend.buffers[k], v)
    # at t = 1/2 the polychain is the bend itself, evaluated with statistics recomputed there
    assert res["train_loss"][2] == pytest.approx(ev.evaluate(bend.params, bend.buffers)["train_loss"], rel=1e-9)


def test_bad_training_settings_are_one_line_errors(two_solutions):
    x, y, _, _, a, b = two_solutions
    ev = _evaluator(x, y)
    for kwargs, needle in (({"epochs": 0}, "--epochs"), ({"lr": -1.0}, "--lr"), ({"lr": float("nan")}, "--lr"),
                           ({"curve": "spline"}, "unknown curve"), ({"optimizer": "lbfgs"}, "unknown optimizer"),
                           ({"momentum": 1.5}, "--momentum"), ({"weight_decay": -1}, "--wd"),
                           ({"train_batch_size": 0}, "--train-batch-size"), ({"num": 1}, "at least 2 points")):
        with pytest.raises(LandscapeError, match=needle) as exc:
            connect(ev, a, b, **kwargs)
        assert "\n" not in str(exc.value)
    with pytest.raises(LandscapeError, match="give --data"):
        connect(Evaluator(_mlp(), None, TensorData(x, y, "test", 2)), a, b)


# -- the command ----------------------------------------------------------------------------
USER_MODULE = textwrap.dedent("""
    from torch import nn

    def make(num_classes=2):
        return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, num_classes))
""")


@pytest.fixture()
def cli_main():
    """The `landscape` command (hessian and connect are registered by the CLI itself)."""
    from landscape.cli import main

    return main


def test_cli_connect(two_solutions, tmp_path, monkeypatch, cli_main, capsys):
    x, y, xt, yt, a, b = two_solutions
    (tmp_path / "curve_user_mlp.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("curve_user_mlp", None)
    torch.save({"x": x, "y": y}, "train.pt")
    torch.save({"x": xt, "y": yt}, "test.pt")
    for s in (a, b):
        m = _mlp()
        s.load_into(m)
        torch.save(m.state_dict(), f"{s.name}.pt")
    common = ["--model", "curve_user_mlp:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt",
              "--quiet"]
    code = cli_main(["connect", "seed1.pt", "seed2.pt", "--num", "5", "--epochs", "10", "--out", "s", "--json",
                     *common])
    out, err = capsys.readouterr()
    assert code == 0, err
    res = json.loads(out)
    assert res["barriers"]["train_loss"]["barrier"] < res["line_barriers"]["train_loss"]["barrier"]
    assert res["bend"] == "s:connect-bend" and len(res["line_test_loss"]) == 5 and res["curve"] == "bezier"
    code = cli_main(["connect", "seed1.pt", "seed2.pt", "--num", "5", "--epochs", "10", "--out", "s", *common])
    out, _ = capsys.readouterr()
    assert code == 0 and "curve" in out and "line" in out and "s:connect-bend" in out
    # the control point is a snapshot like any other
    code = cli_main(["interpolate", "seed1.pt", "s:connect-bend", "--num", "3", "--json", *common])
    assert code == 0 and len(json.loads(capsys.readouterr()[0])["alphas"]) == 3
    for argv, needle in ((["--epochs", "0"], "--epochs"), (["--lr", "nan"], "--lr"), (["--num", "1"], "2 points")):
        code = cli_main(["connect", "seed1.pt", "seed2.pt", *argv, *common])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)
    with pytest.raises(SystemExit):
        cli_main(["connect", "seed1.pt", "seed2.pt", "--curve", "spline", *common])
