"""`--loss`: regression with MSE (loss only, no accuracy) and a user's own loss, against plain
fp64 forward passes."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from landscape.cli import main

USER = textwrap.dedent("""
    import torch
    from torch import nn

    def regressor():
        return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))

    def smooth_ce(logits, y):
        return torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
""")


WORK_FILES = {"user_losses.py": USER}


def make_work(folder):
    """The `work` fixture's problem (tests/conftest.py): regression data and two regressors."""
    import user_losses

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    torch.save({"x": x, "y": x.sum(1, keepdim=True).sin()}, "reg.pt")
    for i in range(2):
        torch.manual_seed(i)
        torch.save(user_losses.regressor().state_dict(), f"r{i}.pt")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_mse_regression_against_fp64(work, capsys):
    import user_losses

    res = run(capsys, "interpolate", "r0.pt", "r1.pt", "--num", "3", "--model", "user_losses:regressor", "--data",
              "tensors:reg.pt", "--loss", "mse", "--json", "--quiet", "--out", "st")
    assert "train_acc" not in res and set(res["barriers"]) == {"train_loss"}
    d = torch.load("reg.pt")
    sa, sb = torch.load("r0.pt"), torch.load("r1.pt")
    for i, a in enumerate(res["alphas"]):
        m = user_losses.regressor().double()
        m.load_state_dict({k: (1 - a) * sa[k].double() + a * sb[k].double() for k in sa})
        with torch.no_grad():
            ref = float(((m(d["x"].double()) - d["y"].double()) ** 2).mean())
        assert res["train_loss"][i] == pytest.approx(ref, rel=1e-5)
    assert main(["plot", "st", "interpolate", "-o", "c.png"]) == 0
    code = main(["interpolate", "r0.pt", "r1.pt", "--model", "user_losses:regressor", "--data", "tensors:reg.pt",
                 "--quiet"])  # cross-entropy on float targets: refused in one line
    assert code == 2 and "use --loss mse" in capsys.readouterr().err


def test_user_loss(work, capsys):
    g = torch.Generator().manual_seed(1)
    torch.save({"x": torch.randn(40, 3, 8, 8, generator=g), "y": torch.randint(0, 4, (40,), generator=g)}, "c.pt")
    from landscape.core.models import build_model

    for i in range(2):
        torch.manual_seed(i)
        torch.save(build_model("tiny_cnn", 4, (3, 8, 8)).state_dict(), f"c{i}.pt")
    res = run(capsys, "interpolate", "c0.pt", "c1.pt", "--num", "3", "--model", "tiny_cnn", "--data", "tensors:c.pt",
              "--loss", "user_losses:smooth_ce", "--bn", "keep", "--json", "--quiet")
    plain = run(capsys, "interpolate", "c0.pt", "c1.pt", "--num", "3", "--model", "tiny_cnn", "--data",
                "tensors:c.pt", "--bn", "keep", "--json", "--quiet")
    assert res["train_acc"] == plain["train_acc"]
    d = torch.load("c.pt")
    for i, name in ((0, "c0.pt"), (2, "c1.pt")):  # the endpoints, by a plain forward pass in fp64
        m = build_model("tiny_cnn", 4, (3, 8, 8)).double()
        m.load_state_dict(torch.load(name))
        m.eval()
        with torch.no_grad():
            ref = float(nn.functional.cross_entropy(m(d["x"].double()), d["y"], label_smoothing=0.1))
        assert res["train_loss"][i] == pytest.approx(ref, rel=1e-5) and res["train_loss"][i] != plain["train_loss"][i]
    code = main(["interpolate", "c0.pt", "c1.pt", "--model", "tiny_cnn", "--data", "tensors:c.pt", "--loss", "hinge"])
    assert code == 2 and "choose ce, mse" in capsys.readouterr().err
