"""BN mode `repair` (REPAIR, Jordan et al. 2023): line and plane values against a plain fp64
REPAIR written here (forward hooks measuring per-channel mean/std, the affine correction applied
explicitly; BN re-estimated by torch's own `swa_utils.update_bn`) for an MLP without BN and a
conv-BN net; the identity at the endpoints; the interpolated network's statistics after repair;
a lower mid-point loss for two trained digits MLPs; the CLI, the store and bad input."""
from __future__ import annotations

import copy
import json
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import swa_utils

from landscape.analyses.align import align_all
from landscape.analyses.grids import line, plane
from landscape.cli import main
from landscape.core.checkpoints import Snapshot
from landscape.core.data import TensorData
from landscape.evaluate.engine import Evaluator
from landscape.geometry.directions import plane_through, relative_frame
from landscape.geometry.planes import through_buffer_directions

F = nn.functional


def make_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def make_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5),
                         nn.ReLU(), nn.Flatten(), nn.Linear(45, 3))


MLP_LAYERS = ("0", "2")  # the paper's choice written out: each hidden Linear, before its ReLU
BN_LAYERS = ("1", "4")  # each BatchNorm's output


def _models(make, seeds):
    out = []
    for s in seeds:
        torch.manual_seed(s)
        m = make()
        for mod in m.modules():  # γ of both signs: REPAIR after BN differs from recompute
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.data.mul_(3)  # logits far from uniform: the interpolation's collapse shows
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.data.normal_()
                mod.bias.data.normal_()
        out.append(m.eval())
    return out


def _data(shape, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def _channel_stats(out: torch.Tensor, linear: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance (channels: last dim of a Linear, dim 1 otherwise)."""
    dim = out.ndim - 1 if linear else 1
    dims = tuple(d for d in range(out.ndim) if d != dim)
    return out.mean(dims), out.var(dims, unbiased=True)


def _bcast(t: torch.Tensor, out: torch.Tensor, linear: bool) -> torch.Tensor:
    shape = [1] * out.ndim
    shape[out.ndim - 1 if linear else 1] = -1
    return t.view(shape)


def reference_repair(make, states, lam, x, y, batch, layers, bn):
    """REPAIR in fp64, spelled out: per batch, each chosen layer's output of the mixed network is
    mapped to the λ-mix of the endpoints' statistics on that batch (later layers see it); the
    correction kept maps the mixed network's batch-averaged mean/std to the λ-mix of the
    endpoints' (std = sqrt of the batch-averaged unbiased variance), applied as an explicit
    affine hook after each layer in eval mode. BN networks: statistics re-estimated in the same
    passes by torch.optim.swa_utils.update_bn."""
    xs = x.double()
    batches = list(xs.split(batch))

    def fresh(state):
        m = make().double()
        m.load_state_dict(state)
        return m

    def run_pass(model, hook):
        mods = dict(model.named_modules())
        handles = [mods[n].register_forward_hook(hook(n, isinstance(mods[n], nn.Linear))) for n in layers]
        with torch.no_grad():
            if bn:
                swa_utils.update_bn(batches, model)
            else:
                model.eval()
                for b in batches:
                    model(b)
        for h in handles:
            h.remove()

    ends = []
    for st in states:
        rec = {n: [] for n in layers}

        def measure(n, linear, rec=rec):
            def h(mod, inp, out):
                rec[n].append(_channel_stats(out, linear))
            return h
        run_pass(fresh(st), measure)
        ends.append(rec)
    mixed = {k: sum(float(w) * s[k].double() for w, s in zip(lam, states)) if states[0][k].is_floating_point()
             else states[0][k] for k in states[0]}
    point = fresh(mixed)
    own = {n: [] for n in layers}

    def correct(n, linear):
        def h(mod, inp, out):
            b = len(own[n])
            m, v = _channel_stats(out, linear)
            own[n].append((m, v))
            mu = sum(w * e[n][b][0] for w, e in zip(lam, ends))
            sd = sum(w * e[n][b][1].sqrt() for w, e in zip(lam, ends)).clamp(min=0)
            return (out - _bcast(m, out, linear)) / _bcast(v.sqrt(), out, linear) * _bcast(sd, out, linear) \
                + _bcast(mu, out, linear)
        return h
    run_pass(point, correct)
    mods = dict(point.named_modules())
    for n in layers:
        m = torch.stack([s[0] for s in own[n]]).mean(0)
        sd_now = torch.stack([s[1] for s in own[n]]).mean(0).sqrt()
        mu = sum(w * torch.stack([s[0] for s in e[n]]).mean(0) for w, e in zip(lam, ends))
        sd = sum(w * torch.stack([s[1] for s in e[n]]).mean(0).sqrt() for w, e in zip(lam, ends)).clamp(min=0)
        linear = isinstance(mods[n], nn.Linear)
        mods[n].register_forward_hook(
            lambda mod, inp, out, m=m, s=sd_now, mu=mu, sd=sd, lin=linear:
            (out - _bcast(m, out, lin)) / _bcast(s, out, lin) * _bcast(sd, out, lin) + _bcast(mu, out, lin))
    point.eval()
    with torch.no_grad():
        logits = point(xs)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).double().mean())


def _plain(make, state, x, y, bn, batch):
    """An endpoint's own metrics in fp64 (BN networks: statistics re-estimated by update_bn)."""
    m = make().double()
    m.load_state_dict(state)
    if bn:
        swa_utils.update_bn(list(x.double().split(batch)), m)
    m.eval()
    with torch.no_grad():
        logits = m(x.double())
    return float(F.cross_entropy(logits, y))


CASES = {"mlp": (make_mlp, (5,), 45, 20, MLP_LAYERS, False), "bn": (make_bn, (2, 7, 7), 36, 16, BN_LAYERS, True)}


@pytest.mark.parametrize("case", sorted(CASES))
def test_line_values_match_a_plain_fp64_repair(case):
    make, shape, n, batch, layers, bn = CASES[case]
    a, b = _models(make, (1, 2))
    x, y = _data(shape, n)
    sa, sb = Snapshot.from_model(a, "a"), Snapshot.from_model(b, "b")
    alphas = np.array([-0.2, 0.0, 0.25, 0.5, 0.8, 1.0, 1.3])  # and extrapolated: λ outside [0, 1]
    ev = Evaluator(make(), TensorData(x, y), bn_mode="repair", batch_size=batch)  # batches of 20, 20, 5 (16, 16, 4)
    res = line(ev, sa, sb, alphas)
    assert res["bn_mode"] == "repair"
    other = line(Evaluator(make(), TensorData(x, y), bn_mode="recompute" if bn else "keep", batch_size=batch,
                           batched=False), sa, sb, alphas)
    states = [a.state_dict(), b.state_dict()]
    for i, al in enumerate(alphas):
        loss, acc = reference_repair(make, states, [1 - al, al], x, y, batch, layers, bn)
        assert res["train_loss"][i] == pytest.approx(loss, abs=1e-5), (case, al)
        assert res["train_acc"][i] == pytest.approx(acc)
        if 0 < al < 1:  # not vacuous: REPAIR changes the interpolated networks
            assert abs(other["train_loss"][i] - loss) > 1e-3
    # the identity at the endpoints: each endpoint's own metrics (BN: with its statistics re-estimated)
    i0, i1 = list(alphas).index(0.0), list(alphas).index(1.0)
    assert res["train_loss"][i0] == pytest.approx(_plain(make, states[0], x, y, bn, batch), abs=1e-5)
    assert res["train_loss"][i1] == pytest.approx(_plain(make, states[1], x, y, bn, batch), abs=1e-5)
    # exactly the network keep (no BN) or recompute (BN: REPAIR's special case) evaluates there
    assert res["train_loss"][i0] == other["train_loss"][i0] and res["train_loss"][i1] == other["train_loss"][i1]


def test_plane_through_three_snapshots_interpolates_their_statistics_barycentrically():
    make, shape, n, batch, layers, bn = CASES["mlp"]
    models = _models(make, (1, 2, 3))
    x, y = _data(shape, n)
    snaps = [Snapshot.from_model(m, f"s{i}") for i, m in enumerate(models)]
    directions, points = relative_frame(plane_through(*(s.params for s in snaps)))
    ev = Evaluator(make(), TensorData(x, y), bn_mode="repair", batch_size=batch)
    xs, ys = np.array([0.0, 0.4, 1.0]), np.array([0.0, 0.3])
    res = plane(ev, snaps[0], directions, xs, ys, vertices=points,
                buffer_directions=through_buffer_directions(*snaps, points))
    pa, pb, pc = (s.params.double() for s in snaps)
    x3 = float(torch.dot(pc - pa, pb - pa) / torch.dot(pb - pa, pb - pa))  # C at (x3, 1), B at (1, 0)
    states = [m.state_dict() for m in models]
    for i, gx in enumerate(xs):
        for j, gy in enumerate(ys):
            lam = [1 - (gx - x3 * gy) - gy, gx - x3 * gy, gy]
            loss, _ = reference_repair(make, states, lam, x, y, batch, layers, bn)
            assert res["train_loss"][i, j] == pytest.approx(loss, abs=1e-5), (gx, gy)
    assert res["train_loss"][0, 0] == pytest.approx(_plain(make, states[0], x, y, False, batch), abs=1e-5)
    assert res["train_loss"][2, 0] == pytest.approx(_plain(make, states[1], x, y, False, batch), abs=1e-5)


def _hooked_stats(model, names, x):
    """Per-channel mean and unbiased std of the named layers' outputs, eval mode, one pass."""
    mods = dict(model.named_modules())
    got = {}
    handles = [mods[n].register_forward_hook(
        lambda mod, inp, out, n=n: got.__setitem__(n, _channel_stats(out.double(), isinstance(mod, nn.Linear))))
        for n in names]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {n: (m, v.sqrt()) for n, (m, v) in got.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_after_repair_the_interpolated_statistics_are_the_endpoints_interpolated(case):
    make, shape, n, _, layers, bn = CASES[case]
    a, b = _models(make, (1, 2))
    x, y = _data(shape, n)
    sa, sb = Snapshot.from_model(a, "a"), Snapshot.from_model(b, "b")
    alpha = 0.4
    ends = []
    for m in (copy.deepcopy(a), copy.deepcopy(b)):  # the endpoint as this mode evaluates it (BN: re-estimated)
        if bn:
            swa_utils.update_bn([x], m)
        ends.append(_hooked_stats(m, layers, x))
    measured = {}
    for mode in ("repair", "recompute" if bn else "keep"):
        ev = Evaluator(make(), TensorData(x, y), bn_mode=mode, batch_size=n, batched=False)  # one batch
        line(ev, sa, sb, np.array([alpha]))  # the point stays loaded in ev.model
        measured[mode] = _hooked_stats(ev.model, layers, ev._to_device(x))
    # with one batch the targets are met up to rounding; BN: train-mode BN normalises by the biased
    # variance, its running variance is unbiased, so eval-mode outputs differ by O(1/n), n = 36·25
    tol = 2e-3 if bn else 1e-5
    for name in layers:
        mu = (1 - alpha) * ends[0][name][0] + alpha * ends[1][name][0]
        sd = (1 - alpha) * ends[0][name][1] + alpha * ends[1][name][1]
        got_mu, got_sd = measured["repair"][name]
        torch.testing.assert_close(got_mu, mu, rtol=tol, atol=tol * float(sd.mean()))
        torch.testing.assert_close(got_sd, sd, rtol=tol, atol=tol * float(sd.mean()))
        _, plain_sd = measured["recompute" if bn else "keep"][name]
        assert float((plain_sd - sd).abs().max()) > 20 * tol * float(sd.max())  # what REPAIR corrected


def _digits_mlp(x, y, seed: int, width: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                      nn.Linear(width, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(10):
        for idx in torch.randperm(len(y), generator=g).split(50):
            loss = F.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def test_repair_lowers_the_midpoint_loss_of_two_weight_matched_digits_mlps():
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is a test extra: pip install -e .[test]")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data[:300], dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target[:300], dtype=torch.int64)
    a, b = _digits_mlp(x, y, 1), _digits_mlp(x, y, 2)
    sa, sb = align_all(a, [Snapshot.from_model(a, "a"), Snapshot.from_model(b, "b")], example=x[:2],
                       method="weight")
    mid = {}
    for mode in ("keep", "repair"):
        res = line(Evaluator(a, TensorData(x, y), bn_mode=mode), sa, sb, np.array([0.0, 0.5, 1.0]))
        mid[mode] = float(res["train_loss"][1])
        ends = res["train_loss"][[0, 2]]
    print(f"digits MLP 32 wide, weight-matched: mid-point train loss {mid['keep']:.3f} plain, "
          f"{mid['repair']:.3f} with REPAIR (endpoints {ends[0]:.3f}, {ends[1]:.3f})")
    assert mid["repair"] < mid["keep"] - 0.05  # measured 0.947 -> 0.819 (see the report)


USER_MODULE = textwrap.dedent("""
    from torch import nn

    def make(num_classes=3):
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, num_classes))

    def make_linear(num_classes=3):
        return nn.Sequential(nn.Flatten(), nn.Linear(6, num_classes))
""")
WORK_FILES = {"repair_model.py": USER_MODULE}


def make_work(tmp_path):
    import repair_model

    x, y = _data((6,), 40)
    torch.save({"x": x, "y": y}, tmp_path / "train.pt")
    for i in range(2):
        torch.manual_seed(i)
        torch.save(repair_model.make().state_dict(), tmp_path / f"m{i}.pt")
        torch.save(repair_model.make_linear().state_dict(), tmp_path / f"lin{i}.pt")


def _cli(capsys, *argv):
    code = main([*argv, "--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


COMMON = ["--model", "repair_model:make", "--data", "tensors:train.pt"]


def _refused(capsys, argv, needle):
    code, out, err = _cli(capsys, *argv)
    assert code == 2, (argv, out, err)
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_cli_records_repair_and_refuses_a_resume_with_another_mode(work, capsys):
    code, out, err = _cli(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "3", "--bn", "repair", "--out", "s",
                          "--json", *COMMON)
    assert code == 0, err
    res = json.loads(out)
    assert res["bn_mode"] == "repair"
    with h5py.File("s/curves/interpolate.h5", "r") as f:
        assert f.attrs["bn_mode"] == "repair"
    _refused(capsys, ["interpolate", "m0.pt", "m1.pt", "--num", "3", "--bn", "keep", "--out", "s", *COMMON],
             "bn_mode")
    # the same arguments resume: nothing is computed again
    code, out, _ = _cli(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "3", "--bn", "repair", "--out", "s",
                        "--json", *COMMON)
    assert code == 0 and json.loads(out)["computed_now"] == 0
    with pytest.raises(SystemExit):
        main(["interpolate", "--help"])
    assert "REPAIR's special case" in " ".join(capsys.readouterr().out.split())


def test_repair_bad_input_is_one_line(work, capsys):
    _refused(capsys, ["interpolate", "lin0.pt", "lin1.pt", "--bn", "repair", "--model", "repair_model:make_linear",
                      "--data", "tensors:train.pt"], "no layer REPAIR can correct")
    _refused(capsys, ["plane", "m0.pt", "--random", "filter", "--bn", "repair", *COMMON],
             "needs a plane through three snapshots")
    _refused(capsys, ["hessian", "m0.pt", "--bn", "repair", *COMMON], "this analysis takes --bn keep or recompute")
    _refused(capsys, ["interpolate", "m0.pt", "m1.pt", "--bn", "repair", "--model", "repair_model:make",
                      "--test-data", "tensors:train.pt"], "needs training data")
