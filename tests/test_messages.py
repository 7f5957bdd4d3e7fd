"""Messages that name the real cause: an unfinished grid is unfinished (not missing), a NaN loss
is not a Lanczos short of steps, and an `--out` that is a FIFO or a dangling link is not a store
folder (not "File exists")."""
from __future__ import annotations

import json
import os

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
