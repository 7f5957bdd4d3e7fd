"""The Python API as PyTorch code calls it: modules and state dicts as endpoints and members,
tensors, Datasets and DataLoaders as data. Every function gives the numbers of the CLI on the
same checkpoints and data files, and never changes the caller's modules."""
from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from tiny_problem import mlp, write_problem
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import landscape
from landscape import cli
from landscape.core.errors import LandscapeError

BN_SOURCE = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
             "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(),\n"
             "                         nn.Linear(8, num_classes))\n")


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))


class PairDataset(Dataset):
    """A user's own map-style Dataset (not a TensorDataset): streamed by the toolkit."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture()
def problem(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    opts = write_problem("api_pytorch_bn", BN_SOURCE)
    for seed in (1, 2, 3):  # the BN model's checkpoints, with BN statistics that are not the defaults
        torch.manual_seed(seed)
        model = bn_mlp()
        model.train()
        model(torch.randn(64, 6))
        torch.save(model.state_dict(), f"m{seed}.pt")
    modules = []
    for seed in (1, 2, 3):
        m = bn_mlp()
        m.load_state_dict(torch.load(f"m{seed}.pt", weights_only=True))
        modules.append(m)
    train, test = torch.load("train.pt"), torch.load("test.pt")
    return opts, modules, (train["x"], train["y"]), (test["x"], test["y"])


def cli_json(*argv) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main([*argv, "--json"]) == 0
    return json.loads(out.getvalue())


def close(got, want, rel=1e-6, atol=1e-7):
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=rel, atol=atol)


def as_forms(x, y):
    """The same data as PyTorch code holds it."""
    return {"tensors": (x, y), "TensorDataset": TensorDataset(x, y), "Dataset": PairDataset(x, y),
            "DataLoader": DataLoader(TensorDataset(x, y), batch_size=250)}


# (x, y) tensors, a TensorDataset and a DataLoader over one all become tensors in memory; a Dataset
# of the user's own class is streamed: one of each path, and the loader's own batch size apart
@pytest.mark.parametrize("form", ["tensors", "Dataset", "DataLoader"])
def test_lines_barriers_and_planes_take_modules_state_dicts_and_any_data_form(problem, form):
    opts, (m1, m2, m3), train, test = problem
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (m1, m2, m3)]
    data, test_data = as_forms(*train)[form], as_forms(*test)[form]

    want = cli_json("interpolate", "m1.pt", "m2.pt", "--num", "5", *opts)
    got = landscape.interpolate(m1, m2, data=data, test_data=test_data, num=5)
    assert got.a == "module0" and got.bn_mode == want["bn_mode"] == "recompute"
    for key in ("train_loss", "test_loss", "test_acc"):
        close(got.metrics[key], want[key])
    # state dicts need the architecture: model= takes a module (copied, never trained or changed)
    got = landscape.interpolate(m1.state_dict(), m2.state_dict(), model=bn_mlp(), data=data, num=5)
    assert got.a == "state_dict0"
    close(got.train_loss, want["train_loss"])

    want = cli_json("barriers", "m1.pt", "m2.pt", "m3.pt", "--num", "3", *opts)
    got = landscape.barriers([m1, m2, m3], data=data, test_data=test_data, num=3)
    close(got.barrier("train_loss"), want["train_loss_barrier"], rel=1e-5)

    want = cli_json("plane", "m1.pt", "--through", "m2.pt", "m3.pt", "--x", "-0.5:1.5:3", "--y", "-0.5:1.5:3",
                    *opts)
    got = landscape.plane(m1, through=[m2, m3], x="-0.5:1.5:3", y="-0.5:1.5:3", data=data, test_data=test_data)
    close(got.train_loss, want["train_loss"], rel=1e-5)
    for m, state in zip((m1, m2, m3), before):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_a_dataloader_brings_its_batch_size(problem):
    """BN statistics are recomputed in batches: a DataLoader's batch size is used unless given."""
    opts, (m1, m2, _), train, test = problem
    want = cli_json("interpolate", "m1.pt", "m2.pt", "--num", "3", "--batch-size", "7", *opts)
    got = landscape.interpolate(m1, m2, data=DataLoader(TensorDataset(*train), batch_size=7),
                                test_data=test, num=3)
    close(got.train_loss, want["train_loss"])
    other = landscape.interpolate(m1, m2, data=DataLoader(TensorDataset(*train), batch_size=7), test_data=test,
                                  num=3, batch_size=250)
    close(other.train_loss, cli_json("interpolate", "m1.pt", "m2.pt", "--num", "3", *opts)["train_loss"])


@pytest.mark.parametrize("form", ["TensorDataset", "Dataset"])
def test_ensembles_hessians_and_connections_take_modules(problem, form):
    opts, (m1, m2, m3), train, test = problem
    want = cli_json("ensemble", "m1.pt", "m2.pt", "m3.pt", "--model", "api_pytorch_bn:make",
                    "--data", "tensors:test.pt", "--quiet")
    got = landscape.ensemble([m1, m2, m3], data=as_forms(*test)[form])
    assert got.members == ["module0", "module1", "module2"]
    assert len(got.size) == len(want["rows"]) == 3
    for key in ("acc", "nll", "ece", "disagreement"):
        close(got.metrics[key], [r[key] for r in want["rows"]], rel=1e-5, atol=1e-6)

    want = cli_json("hessian", "m1.pt", "--top-k", "2", "--iters", "30", *opts)
    got = landscape.hessian([m1], data=as_forms(*train)[form], test_data=test, top_k=2, iters=30)
    close(got.eigenvalues, want["eigenvalues"], rel=1e-4)

    want = cli_json("connect", "m1.pt", "m2.pt", "--epochs", "2", "--num", "3", *opts)
    got = landscape.connect(m1, m2, data=as_forms(*train)[form], test_data=test, epochs=2, num=3)
    close(got.train_loss, want["train_loss"], rel=1e-5)
    assert got.barrier("train_loss") == pytest.approx(want["barriers"]["train_loss"]["barrier"], rel=1e-4, abs=1e-6)


def test_wrong_python_inputs_are_one_line_errors(problem):
    _, (m1, m2, _), train, _ = problem
    with pytest.raises(LandscapeError, match="give model="):
        landscape.interpolate(m1.state_dict(), m2.state_dict(), data=train)
    with pytest.raises(LandscapeError, match="data of type int"):
        landscape.interpolate(m1, m2, data=3)
    with pytest.raises(LandscapeError, match="TensorDataset of 3 tensors"):
        landscape.interpolate(m1, m2, data=TensorDataset(*train, train[1]))
    with pytest.raises(LandscapeError, match="snapshot of type float"):
        landscape.interpolate(m1, 2.0, data=train)
    small = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    with pytest.raises(LandscapeError, match="does not fit the model"):
        landscape.interpolate(m1, small, data=train)


def test_align_takes_modules_and_gives_the_cli_s_permutation(problem):
    opts, (m1, m2, _), train, _ = problem
    want = cli_json("align", "m1.pt", "m2.pt", "--model", "api_pytorch_bn:make", "--data", "tensors:train.pt",
                    "--quiet")
    got = landscape.align(m1, m2, data=train)
    assert got.moved_units == want["moved_units"]
    assert got.distance_after == pytest.approx(want["distance_after"], rel=1e-9)
    assert got.objective == pytest.approx(want["objective"], rel=1e-9)


# -- typed results ---------------------------------------------------------------------------------
M = "api_pytorch_bn:make"
FILES = dict(model=M, data="tensors:train.pt", test_data="tensors:test.pt")
OPTS = ["--model", M, "--data", "tensors:train.pt", "--test-data", "tensors:test.pt", "--quiet"]


def cli_text(*argv) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main([*argv, "--json"]) == 0
    return out.getvalue()


def _timeless(text: str) -> str:
    return re.sub(r'"seconds": [^,\n]+', '"seconds": 0', text)  # a spectrum's wall time differs by run


# (CLI arguments, the same call in Python, the result's class, the JSON's keys in the order `--json`
# printed them before the results were typed)
SAME_CALLS = [
    (["interpolate", "m1.pt", "m2.pt", "--num", "4", *OPTS],
     lambda: landscape.interpolate("m1.pt", "m2.pt", num=4, **FILES), landscape.LineResult,
     "kind name a b bn_mode alphas train_loss train_acc test_loss test_acc barriers points computed_now "
     "diverged store"),
    (["barriers", "m1.pt", "m2.pt", "m3.pt", "--num", "3", "--bn", "keep", *OPTS],
     lambda: landscape.barriers(["m1.pt", "m2.pt", "m3.pt"], num=3, bn="keep", **FILES), landscape.BarrierMatrixResult,
     "kind name snapshots bn_mode alphas train_loss_barrier train_error_barrier test_loss_barrier "
     "test_error_barrier points computed_now diverged store"),
    (["plane", "m1.pt", "--through", "m2.pt", "m3.pt", "--x", "-0.5:1.5:3", "--y", "0:1:2", *OPTS],
     lambda: landscape.plane("m1.pt", through=["m2.pt", "m3.pt"], x="-0.5:1.5:3", y="0:1:2", **FILES),
     landscape.PlaneResult,
     "kind name center bn_mode points coords unit snapshots buffers xcoordinates ycoordinates train_loss "
     "train_acc test_loss test_acc projections computed_now diverged store"),
    (["plane", "m1.pt", "--random", "filter", "--x", "-1:1:2", "--y", "-1:1:3", "--project", "m2.pt", *OPTS],
     lambda: landscape.plane("m1.pt", random="filter", x="-1:1:2", y="-1:1:3", project_onto=["m2.pt"], **FILES),
     landscape.PlaneResult,
     "kind name center bn_mode normalization seeds ignore_bias_bn unit snapshots buffers xcoordinates "
     "ycoordinates train_loss train_acc test_loss test_acc projections points computed_now diverged store"),
    (["ensemble", "m1.pt", "m2.pt", "m3.pt", "--model", M, "--data", "tensors:test.pt", "--val-data",
      "tensors:train.pt", "--orders", "2", "--quiet"],
     lambda: landscape.ensemble(["m1.pt", "m2.pt", "m3.pt"], model=M, data="tensors:test.pt",
                                val_data="tensors:train.pt", orders=2), landscape.EnsembleResult,
     "kind name members rows warnings member_accuracies member_nlls orders_mean store"),
    (["align", "m1.pt", "m2.pt", "--model", M, "--data", "tensors:train.pt", "--method", "activation", "--quiet"],
     lambda: landscape.align("m1.pt", "m2.pt", model=M, data="tensors:train.pt", method="activation"),
     landscape.AlignResult,
     "kind name computed_now method align_method aligned_to source groups moved_units correlation_before "
     "correlation_after left_in_place distance_before distance_after snapshot store"),
    (["hessian", "m1.pt", "--top-k", "2", "--iters", "6", "--trace", "--probes", "2", "--density", *OPTS],
     lambda: landscape.hessian(["m1.pt"], top_k=2, iters=6, trace=True, probes=2, density=True, **FILES),
     landscape.HessianResult,
     "kind bn_mode name snapshot eigenvalues residuals iterations converged trace trace_stderr loss "
     "grad_norm parameters hvps seconds diverged computed_now density store"),
    (["hessian", "m1.pt", "m2.pt", "--iters", "4", *OPTS],
     lambda: landscape.hessian(["m1.pt", "m2.pt"], iters=4, **FILES), landscape.HessiansResult,
     "kind bn_mode snapshots eigenvalues trace trace_stderr results store"),
    (["hessian", "--along", "m1.pt", "m2.pt", "--num", "2", "--iters", "4", "--density", *OPTS],
     lambda: landscape.hessian(along=["m1.pt", "m2.pt"], num=2, iters=4, density=True, **FILES),
     landscape.HessianLineResult,
     "kind name a b bn_mode alphas eigenvalues trace trace_stderr loss grad_norm converged computed_now "
     "density store"),
    (["connect", "m1.pt", "m2.pt", "--epochs", "1", "--num", "3", *OPTS],
     lambda: landscape.connect("m1.pt", "m2.pt", epochs=1, num=3, **FILES), landscape.ConnectResult,
     "kind warnings name curve a b bn_mode alphas train_loss train_acc test_loss test_acc line_train_loss "
     "line_train_acc line_test_loss line_test_acc barriers line_barriers history bend points computed_now "
     "epochs_trained_now diverged store"),
]


def test_every_function_returns_its_result_whose_to_dict_is_the_cli_json(problem):
    """The JSON text itself, key order included: `--json` prints `to_dict()` of the same call."""
    for argv, call, cls, keys in SAME_CALLS:
        res = call()
        assert type(res) is cls, argv[0]
        assert list(res.to_dict()) == keys.split(), argv[0]
        assert _timeless(json.dumps(res.to_dict(), indent=1) + "\n") == _timeless(cli_text(*argv)), argv
        assert len(repr(res)) < 600 and type(res).__name__ in repr(res)  # shapes, not a wall of numbers
    landscape.interpolate("m1.pt", "m2.pt", num=3, out="st", **FILES)  # a store for info and plot
    info = landscape.info("st")
    assert isinstance(info, landscape.InfoResult) and info.names("curves") == ["interpolate"]
    assert json.dumps(info.to_dict(), indent=1) + "\n" == cli_text("info", "st")
    fig = landscape.plot("st", "interpolate", out="line.png")
    assert isinstance(fig, landscape.PlotResult) and os.path.getsize(fig.figure) > 0
    assert fig.to_dict() == json.loads(cli_text("plot", "st", "interpolate", "-o", "line.png"))


def _losses(state: dict, d: tuple, make=bn_mlp) -> tuple[float, float]:
    """fp64 eval-mode loss and accuracy of the model `make()` with `state` (weights and buffers)."""
    m = make().double()
    m.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    with torch.no_grad():
        logits = m.eval()(d[0].double())
    return float(nn.functional.cross_entropy(logits, d[1])), float((logits.argmax(1) == d[1]).double().mean())


def _mix(a: dict, b: dict, t: float) -> dict:
    return {k: (1 - t) * v + t * b[k] if v.is_floating_point() else v for k, v in a.items()}


def _barrier(alphas, values):
    """The closed form: the largest rise of the curve above the chord between its ends."""
    alphas, values = np.asarray(alphas), np.asarray(values)
    excess = values - ((1 - alphas) * values[0] + alphas * values[-1])
    return excess.max(), alphas[excess.argmax()]


def test_line_barrier_and_plane_fields_hold_the_reference_numbers(problem):
    _, (m1, m2, m3), train, test = problem
    sd = [m.state_dict() for m in (m1, m2, m3)]
    line = landscape.interpolate(m1, m2, data=train, test_data=test, num=5, bn="keep")
    np.testing.assert_array_equal(line.alphas, np.linspace(0, 1, 5))
    assert set(line.metrics) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    assert all(v.dtype == np.float64 and v.shape == (5,) for v in line.metrics.values())
    assert line.done.all() and not line.nonfinite.any() and line.points == line.computed_now == 5
    want = np.array([_losses(_mix(sd[0], sd[1], t), train) for t in line.alphas])  # buffers move with the weights
    close(line.train_loss, want[:, 0], rel=1e-5)
    close(line.train_acc, want[:, 1])
    h, at = _barrier(line.alphas, want[:, 0])
    assert line.barrier("train_loss") == pytest.approx(h, rel=1e-4, abs=1e-6)
    assert line.barriers["train_loss"].alpha == at
    assert line.barrier("test_error") == pytest.approx(_barrier(line.alphas, 1 - line.test_acc)[0], abs=1e-12)
    with pytest.raises(KeyError, match="train_loss, train_error"):
        line.barrier("val_loss")

    mat = landscape.barriers([m1, m2, m3], data=train, num=5, bn="keep")
    assert mat.snapshots == ["module0", "module1", "module2"] and set(mat.barriers) == {"train_loss", "train_error"}
    b = mat.barrier("train_loss")
    assert b.shape == (3, 3) and b.dtype == np.float64 and np.array_equal(b, b.T) and not np.diag(b).any()
    for i, j in ((0, 1), (1, 2)):
        ref = [_losses(_mix(sd[i], sd[j], t), train)[0] for t in mat.alphas]
        assert b[i, j] == pytest.approx(_barrier(mat.alphas, ref)[0], rel=1e-4, abs=1e-6)
    assert mat.done.shape == (3, 5)

    plane = landscape.plane(m1, through=[m2, m3], data=train, test_data=test, x="0:1:2", y="0:1:3", bn="keep")
    assert plane.kind == "plane" and plane.direction_attrs["coords"] == "relative"
    np.testing.assert_array_equal(plane.x, [0.0, 1.0])
    np.testing.assert_array_equal(plane.y, [0.0, 0.5, 1.0])
    assert plane.test_loss.shape == (2, 3) and plane.test_loss.dtype == np.float64
    assert plane.directions.shape == (2, sum(p.numel() for p in m1.parameters()))
    # [i, j] is (x[i], y[j]): m1 at (0, 0), m2 at (1, 0) of the relative frame
    for (i, j), state in (((0, 0), sd[0]), ((1, 0), sd[1])):
        assert plane.train_loss[i, j] == pytest.approx(_losses(state, train)[0], rel=1e-5)
        assert plane.test_acc[i, j] == pytest.approx(_losses(state, test)[1])
    assert [p.name for p in plane.projections] == ["module0", "module1", "module2"]
    close(plane.projection_coords[:2], [[0, 0], [1, 0]], atol=1e-6)
    assert plane.projections[2].y == pytest.approx(1, abs=1e-6)


def test_ensemble_and_align_fields_hold_the_reference_numbers(problem):
    _, (m1, m2, m3), train, test = problem
    ens = landscape.ensemble([m1, m2, m3], data=test)
    np.testing.assert_array_equal(ens.size, [1, 2, 3])
    with torch.no_grad():
        probs = torch.stack([torch.softmax(m.eval()(test[0]).double(), 1) for m in (m1, m2, m3)])
    for m in (1, 2, 3):  # the ensemble of the first m members averages their probabilities
        p = probs[:m].mean(0)
        assert ens.metrics["acc"][m - 1] == pytest.approx(float((p.argmax(1) == test[1]).double().mean()))
        assert ens.metrics["nll"][m - 1] == pytest.approx(float(-p[torch.arange(len(p)), test[1]].log().mean()),
                                                          rel=1e-5)
    close(ens.member_accuracies, (probs.argmax(2) == test[1]).double().mean(1), atol=1e-12)
    assert ens.orders_mean == {} and ens.temperature_at_bound is None
    assert ens.rows()[2]["size"] == 3 and ens.rows()[2]["acc"] == ens.metrics["acc"][2]

    res = landscape.align(m1, m2, data=train)
    p = res.permutations["1"]
    assert p.dtype == np.int64 and sorted(p.tolist()) == list(range(8))
    assert res.moved_units == int((p != np.arange(8)).sum())
    # B's unit p[i] goes to place i: rows of the first layer and its BN, columns of the last layer
    b, got = m2.state_dict(), res.aligned.load_into(bn_mlp()).state_dict()
    for key in ("1.weight", "1.bias", "2.weight", "2.bias", "2.running_mean", "2.running_var"):
        assert torch.equal(got[key], b[key][p]), key
    assert torch.equal(got["4.weight"], b["4.weight"][:, p]) and torch.equal(got["4.bias"], b["4.bias"])
    flat = [torch.cat([q.detach().double().flatten() for q in m.parameters()]) for m in (m1, m2)]
    assert res.distance_before == pytest.approx(float((flat[1] - flat[0]).norm()), rel=1e-12)
    after = torch.cat([got[k].double().flatten() for k, _ in m1.named_parameters()])
    assert res.distance_after == pytest.approx(float((after - flat[0]).norm()), rel=1e-9)
    assert res.objective.dtype == np.float64 and np.all(np.diff(res.objective) >= 0)
    assert res.snapshot is None and res.computed_now is True


def _hessian_fp64(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full Hessian of the mean cross-entropy in the parameters (eval mode), by torch.autograd."""
    model = model.double().eval()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(v):
        parts = torch.split(v, [s.numel() for s in shapes])
        params = {n: t.view(s) for n, t, s in zip(names, parts, shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (x.double(),)), y)
    return torch.autograd.functional.hessian(loss, flat)


def test_hessian_and_connect_fields_hold_the_reference_numbers(problem):
    _, (m1, m2, _), train, test = problem
    spec = landscape.hessian([m1], data=train, top_k=2, iters=24, trace=True, probes=4, bn="keep")
    h = _hessian_fp64(_copy(m1), *train)
    lam = torch.linalg.eigvalsh(h).flip(0)[:2].numpy()
    assert spec.eigenvalues.dtype == np.float64 and spec.eigenvalues.shape == (2,)
    close(spec.eigenvalues, lam, rel=1e-4, atol=1e-6)
    vecs = spec.eigenvectors.double()
    assert vecs.shape == (2, h.shape[0])
    for lam_i, v in zip(spec.eigenvalues, vecs):  # H v = λ v for the unit eigenvectors
        assert float((h @ v - lam_i * v).norm()) < 1e-3 * abs(lam_i) and float(v.norm()) == pytest.approx(1, abs=1e-5)
    assert spec.trace_samples.shape == (4,) and spec.trace == pytest.approx(spec.trace_samples.mean())
    assert spec.density is None and spec.diverged is False and spec.parameters == h.shape[0]

    # few Lanczos steps (each product costs): the shapes, and the top eigenvalue, which converges first
    both = landscape.hessian([m1, m2], data=train, top_k=2, iters=6, bn="keep")
    assert both.snapshots == ["module0", "module1"] and both.eigenvalues.shape == (2, 2) and both.trace is None
    along = landscape.hessian(along=[m1, m2], data=train, num=2, top_k=2, iters=6, density=True, bn="keep")
    np.testing.assert_array_equal(along.alphas, [0, 1])
    assert along.eigenvalues.shape == (2, 2) and along.trace is None and along.converged.dtype == bool
    assert both.eigenvalues[0, 0] == along.eigenvalues[0, 0] == pytest.approx(lam[0], rel=1e-2)
    assert along.density.values.shape == (2, along.density.grid.shape[0])

    p1, p2 = mlp(), mlp()  # connect recomputes BN statistics: a model without BN has none to recompute
    curve = landscape.connect(p1, p2, data=train, test_data=test, epochs=2, num=3)
    np.testing.assert_array_equal(curve.alphas, [0, 0.5, 1])
    assert curve.history.shape == (2,) and curve.history.dtype == np.float64
    assert curve.control_point.params.shape == (sum(q.numel() for q in p1.parameters()),) and curve.bend is None
    for t, state in ((0, p1.state_dict()), (2, p2.state_dict())):  # both paths end at the endpoints
        assert curve.line_metrics["train_loss"][t] == pytest.approx(_losses(state, train, mlp)[0], rel=1e-5)
        assert curve.test_loss[t] == pytest.approx(_losses(state, test, mlp)[0], rel=1e-5)
    ref = [_losses(_mix(p1.state_dict(), p2.state_dict(), t), train, mlp)[0] for t in curve.alphas]
    close(curve.line_metrics["train_loss"], ref, rel=1e-5)
    # the curve's midpoint is the Bezier point (A + 2·bend + B) / 4 of the stored control point
    ends, bend = (p1.state_dict(), p2.state_dict()), curve.control_point.load_into(mlp()).state_dict()
    mid = {k: (ends[0][k] + 2 * bend[k] + ends[1][k]) / 4 for k in bend}
    assert curve.train_loss[1] == pytest.approx(_losses(mid, train, mlp)[0], rel=1e-5)
    assert abs(curve.train_loss[1] - ref[1]) > 1e-4 * ref[1]  # trained: off the line
    assert curve.barrier("train_loss", line=True) == pytest.approx(_barrier(curve.alphas, ref)[0], rel=1e-4, abs=1e-6)


def _copy(m: nn.Module) -> nn.Module:
    out = bn_mlp()
    out.load_state_dict(m.state_dict())
    return out


def test_indexing_a_result_reads_the_json_with_a_deprecation_warning(problem):
    _, (m1, m2, _), train, _ = problem
    line = landscape.interpolate(m1, m2, data=train, num=3)
    with pytest.warns(DeprecationWarning, match=r"LineResult\['barriers'\].*fields"):
        assert line["barriers"] == line.to_dict()["barriers"]


def test_an_analysis_entry_the_result_does_not_hold_is_refused(problem, monkeypatch):
    """A key added to an analysis' result must reach the typed result, or --json would lose it."""
    from landscape.analyses import grids

    _, (m1, m2, _), train, _ = problem
    real = grids.line
    monkeypatch.setattr(grids, "line", lambda *a, **k: {**real(*a, **k), "new_entry": 1})
    with pytest.raises(TypeError, match="LineResult does not hold .*'new_entry'"):
        landscape.interpolate(m1, m2, data=train, num=3)


# The README's example of the Python API ("## Python API"), run as written.
README_EXAMPLE = '''
import torch
from torch import nn
import landscape

torch.manual_seed(0)
x, y = torch.randn(256, 10), torch.randint(0, 3, (256,))
def net():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
a, b, c = net(), net(), net()     # your trained models

line = landscape.interpolate(a, b, data=(x, y), num=11)
print(line)                       # LineResult(name='interpolate', a='module0', b='module1', ...)
line.alphas, line.train_loss      # numpy arrays of shape (11,)
line.barrier("train_loss")        # the loss barrier's height; line.barriers["train_loss"].alpha: where it peaks
line.to_dict()                    # exactly what `landscape interpolate ... --json` prints

plane = landscape.plane(a, through=[b, c], data=(x, y), x="-0.5:1.5:5", y="-0.5:1.5:5")
plane.train_loss.shape            # (5, 5): plane.train_loss[i, j] is at (plane.x[i], plane.y[j])
[(p.name, p.x, p.y) for p in plane.projections]      # where a, b and c lie in the plane

spectrum = landscape.hessian([a], data=(x, y), top_k=2)
spectrum.eigenvalues, spectrum.eigenvectors.shape     # float64 (2,), a (2, P) tensor
ens = landscape.ensemble([a, b, c], data=(x, y))
ens.metrics["acc"], ens.metrics["nll"]                # of the ensembles of the first 1, 2, 3 members
aligned = landscape.align(a, b, data=(x, y))          # Git Re-Basin
aligned.permutations["0"], aligned.aligned            # b's unit order per layer; b permuted, as a Snapshot
'''


def test_the_readme_example_runs(capsys):
    namespace: dict = {}
    exec(compile(README_EXAMPLE, "README example", "exec"), namespace)
    line, plane = namespace["line"], namespace["plane"]
    assert capsys.readouterr().out.startswith("LineResult(name='interpolate', a='module0', b='module1'")
    assert line.alphas.shape == line.train_loss.shape == (11,) and line.train_loss.dtype == np.float64
    assert line.barrier("train_loss") == _barrier(line.alphas, line.train_loss)[0]
    assert json.loads(json.dumps(line.to_dict()))["alphas"] == line.alphas.tolist()
    assert plane.train_loss.shape == (5, 5) and [p.name for p in plane.projections] == ["module0", "module1",
                                                                                          "module2"]
    assert namespace["spectrum"].eigenvectors.shape == (2, 10 * 32 + 32 + 32 * 3 + 3)
    assert namespace["ens"].metrics["acc"].shape == (3,)
    assert sorted(namespace["aligned"].permutations["0"].tolist()) == list(range(32))
