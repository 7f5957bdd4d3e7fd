"""The Python API as PyTorch code calls it: modules and state dicts as endpoints and members,
tensors, Datasets and DataLoaders as data. Every function gives the numbers of the CLI on the
same checkpoints and data files, and never changes the caller's modules."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from tiny_problem import write_problem
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
    assert got["a"] == "module0" and got["bn_mode"] == want["bn_mode"] == "recompute"
    for key in ("train_loss", "test_loss", "test_acc"):
        close(got[key], want[key])
    # state dicts need the architecture: model= takes a module (copied, never trained or changed)
    got = landscape.interpolate(m1.state_dict(), m2.state_dict(), model=bn_mlp(), data=data, num=5)
    assert got["a"] == "state_dict0"
    close(got["train_loss"], want["train_loss"])

    want = cli_json("barriers", "m1.pt", "m2.pt", "m3.pt", "--num", "3", *opts)
    got = landscape.barriers([m1, m2, m3], data=data, test_data=test_data, num=3)
    close(got["train_loss_barrier"], want["train_loss_barrier"], rel=1e-5)

    want = cli_json("plane", "m1.pt", "--through", "m2.pt", "m3.pt", "--x", "-0.5:1.5:3", "--y", "-0.5:1.5:3",
                    *opts)
    got = landscape.plane(m1, through=[m2, m3], x="-0.5:1.5:3", y="-0.5:1.5:3", data=data, test_data=test_data)
    close(got["train_loss"], want["train_loss"], rel=1e-5)
    for m, state in zip((m1, m2, m3), before):
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())


def test_a_dataloader_brings_its_batch_size(problem):
    """BN statistics are recomputed in batches: a DataLoader's batch size is used unless given."""
    opts, (m1, m2, _), train, test = problem
    want = cli_json("interpolate", "m1.pt", "m2.pt", "--num", "3", "--batch-size", "7", *opts)
    got = landscape.interpolate(m1, m2, data=DataLoader(TensorDataset(*train), batch_size=7),
                                test_data=test, num=3)
    close(got["train_loss"], want["train_loss"])
    other = landscape.interpolate(m1, m2, data=DataLoader(TensorDataset(*train), batch_size=7), test_data=test,
                                  num=3, batch_size=250)
    close(other["train_loss"], cli_json("interpolate", "m1.pt", "m2.pt", "--num", "3", *opts)["train_loss"])


@pytest.mark.parametrize("form", ["TensorDataset", "Dataset"])
def test_ensembles_hessians_and_connections_take_modules(problem, form):
    opts, (m1, m2, m3), train, test = problem
    want = cli_json("ensemble", "m1.pt", "m2.pt", "m3.pt", "--model", "api_pytorch_bn:make",
                    "--data", "tensors:test.pt", "--quiet")
    got = landscape.ensemble([m1, m2, m3], data=as_forms(*test)[form])
    assert got["members"] == ["module0", "module1", "module2"]
    assert len(got["rows"]) == len(want["rows"]) == 3
    for key in ("acc", "nll", "ece", "disagreement"):
        close([r[key] for r in got["rows"]], [r[key] for r in want["rows"]], rel=1e-5, atol=1e-6)

    want = cli_json("hessian", "m1.pt", "--top-k", "2", "--iters", "30", *opts)
    got = landscape.hessian([m1], data=as_forms(*train)[form], test_data=test, top_k=2, iters=30)
    close(got["eigenvalues"], want["eigenvalues"], rel=1e-4)

    want = cli_json("connect", "m1.pt", "m2.pt", "--epochs", "2", "--num", "3", *opts)
    got = landscape.connect(m1, m2, data=as_forms(*train)[form], test_data=test, epochs=2, num=3)
    close(got["train_loss"], want["train_loss"], rel=1e-5)
    assert got["barriers"]["train_loss"]["barrier"] == pytest.approx(want["barriers"]["train_loss"]["barrier"],
                                                                     rel=1e-4, abs=1e-6)


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
    assert got["moved_units"] == want["moved_units"]
    assert got["distance_after"] == pytest.approx(want["distance_after"], rel=1e-9)
    assert got["objective"] == pytest.approx(want["objective"], rel=1e-9)
