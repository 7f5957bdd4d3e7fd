"""Messages that name the real cause: an unfinished grid is unfinished (not missing), a NaN loss
is not a Lanczos short of steps, an `--out` that is a FIFO or a dangling link is not a store
folder (not "File exists"), a plane around NaN weights names them (not a LAPACK assertion), and a
BatchNorm batch of one value per channel says what to change (not torch's ValueError)."""
from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from test_command_options import problem  # noqa: F401 - the fixture: a user model, data, two checkpoints

from landscape import cli


def test_plot_of_an_unfinished_grid_says_it_is_unfinished(problem, capsys):  # noqa: F811
    assert cli.main(["plane", "m1.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s",
                     *problem]) == 0
    os.rename("s/surfaces/plane.h5", "s/surfaces/.partial-plane.h5")  # as a run cut short leaves it
    capsys.readouterr()
    code = cli.main(["plot", "s", "plane", "-o", "p.png"])
    err = capsys.readouterr()[1]
    assert code == 2 and err.count("\n") == 1 and "not finished" in err and "rerun" in err, err
    assert not os.path.exists("p.png")


def test_a_nan_loss_is_reported_as_such_not_as_too_few_steps(problem, capsys):  # noqa: F811
    state = torch.load("m1.pt", weights_only=True)
    torch.save({k: torch.full_like(v, float("nan")) for k, v in state.items()}, "nan.pt")
    code = cli.main(["hessian", "nan.pt", *problem])
    out = capsys.readouterr()[0]
    assert code == 0 and "not finite" in out and "NOT converged" not in out, out
    code = cli.main(["hessian", "nan.pt", "--json", *problem])
    assert code == 0 and json.loads(capsys.readouterr()[0])["diverged"] is True


def test_an_out_that_is_a_special_file_is_not_a_store_folder(problem, capsys):  # noqa: F811
    os.mkfifo("pipe")  # standing in for a device such as /dev/null
    os.symlink("nowhere", "dangling")
    for out in ("pipe", "dangling"):
        code = cli.main(["interpolate", "m1.pt", "m2.pt", "--alpha-range", "0:1:3", "--out", out, *problem])
        err = capsys.readouterr()[1]
        assert code == 2 and err.count("\n") == 1 and "not a store folder" in err, err
    assert not os.path.isfile("pipe") and os.path.islink("dangling") and not os.path.exists("nowhere")


def _one_line(code, err, *needles):
    assert code == 2 and err.count("\n") == 1 and err.startswith("landscape: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_a_plane_around_or_through_non_finite_weights_names_the_snapshot(problem, capsys):  # noqa: F811
    state = torch.load("m1.pt", weights_only=True)
    first = next(iter(state))
    state[first].view(-1)[1] = float("nan")
    torch.save(state, "nan.pt")
    for argv in (["plane", "nan.pt", "--random", "filter"], ["plane", "m1.pt", "--through", "nan.pt", "m2.pt"],
                 ["plane", "m1.pt", "--random", "filter", "--project", "nan.pt"]):
        code = cli.main([*argv, "--x", "-1:1:3", "--y", "-1:1:3", *problem])
        _one_line(code, capsys.readouterr()[1], "'nan.pt' has 1 non-finite parameters", first)


BN1D = """from torch import nn

def make(num_classes=3, **_):
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, num_classes))
"""


def test_a_batchnorm_batch_of_one_sample_is_one_line_in_hessian_and_connect(tmp_path, monkeypatch, capsys):
    (tmp_path / "messages_bn1d.py").write_text(BN1D)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("messages_bn1d", None)
    import messages_bn1d

    for i in (1, 2):
        torch.manual_seed(i)
        torch.save(messages_bn1d.make().state_dict(), f"b{i}.pt")
    torch.save({"x": torch.randn(1, 6), "y": torch.tensor([1])}, "one.pt")
    opts = ["--model", "messages_bn1d:make", "--data", "tensors:one.pt", "--quiet"]
    code = cli.main(["hessian", "b1.pt", "--iters", "3", "--bn", "recompute", *opts])
    _one_line(code, capsys.readouterr()[1], "recomputing BN statistics", "one value per channel", "--bn keep")
    code = cli.main(["connect", "b1.pt", "b2.pt", "--epochs", "1", *opts])
    _one_line(code, capsys.readouterr()[1], "training the curve", "one value per channel", "--batch-size")


def test_options_are_never_abbreviated(problem, capsys):  # noqa: F811
    """`--alpha 0.5` is not `--alpha-range` (argparse's prefix matching is off everywhere)."""
    with pytest.raises(SystemExit) as stop:  # argparse's own usage error
        cli.main(["interpolate", "m1.pt", "m2.pt", "--alpha", "0.5", *problem])
    err = capsys.readouterr()[1]
    assert stop.value.code == 2 and "unrecognized arguments: --alpha 0.5" in err, err
