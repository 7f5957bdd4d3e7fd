"""What a new user meets first: help with defaults and an example for every command, --version,
`python -m landscape`, --alpha-range, and errors that name the argument and list the choices."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from landscape.cli import build_parser, main
from landscape.core.models import build_model


def make_work(folder):
    """The `work` fixture's problem (tests/conftest.py): data d.pt and two tiny_cnn checkpoints."""
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(40, 3, 8, 8, generator=g), "y": torch.randint(0, 4, (40,), generator=g)}, "d.pt")
    for i in range(2):
        torch.manual_seed(i)
        torch.save(build_model("tiny_cnn", 4, (3, 8, 8)).state_dict(), f"m{i}.pt")


COMMON = ["--model", "tiny_cnn", "--num-classes", "4", "--data", "tensors:d.pt", "--quiet"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_every_command_has_help_defaults_and_an_example(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        assert "example:" in text and f"landscape {name}" in text, name
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    assert "(default: 21)" in sub.choices["interpolate"].format_help()
    assert "(default: auto)" in sub.choices["plane"].format_help()


def test_version_and_module_entry():
    proc = subprocess.run([sys.executable, "-m", "landscape", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("landscape ")


def test_alpha_range_beyond_the_endpoints(work, capsys):
    code, out, err = run(capsys, "interpolate", "m0.pt", "m1.pt", "--alpha-range", "-0.5:1.5:9", "--json", *COMMON)
    assert code == 0, err
    res = json.loads(out)
    assert res["alphas"][0] == -0.5 and res["alphas"][-1] == 1.5 and 0.0 in res["alphas"] and 1.0 in res["alphas"]
    assert len(res["test_loss"] if "test_loss" in res else res["train_loss"]) == len(res["alphas"])
    code, _, err = run(capsys, "interpolate", "m0.pt", "m1.pt", "--alpha-range", "0.2:1:5", *COMMON)
    assert code == 2 and "must span [0, 1]" in err


def test_errors_name_the_argument_and_list_choices(work, capsys):
    assert run(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "5", "--out", "st", *COMMON)[0] == 0
    code, _, err = run(capsys, "plot", "st", "interpolate", "--style", "3d", "-o", "c.png")
    assert code == 2 and "--style 3d is for surfaces" in err
    assert run(capsys, "plane", "m0.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", "--out", "st",
               *COMMON)[0] == 0
    code, _, err = run(capsys, "plot", "st", "plane", "--metric", "test_los", "-o", "p.png")
    assert code == 2 and "choose" in err and "train_loss" in err
    with pytest.raises(SystemExit):  # argparse lists the choices itself
        main(["plane", "m0.pt", "--random", "gaussian", *COMMON])
    assert "choose from" in capsys.readouterr().err
    code, _, err = run(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "6", "--out", "st", *COMMON)
    assert code == 2 and "differs in alphas" in err


def test_ensemble_rerun_is_a_noop(work, capsys):
    args = ["ensemble", "m0.pt", "m1.pt", "--model", "tiny_cnn", "--num-classes", "4", "--data", "tensors:d.pt",
            "--out", "st", "--json", "--quiet"]
    code, first, err = run(capsys, *args, "--orders", "2")
    assert code == 0, err
    res = json.loads(first)
    assert res["members"] == ["m0.pt", "m1.pt"] and len(res["member_accuracies"]) == len(res["member_nlls"]) == 2
    assert set(res["orders_mean"]) >= {"acc", "nll"} and [r["size"] for r in res["rows"]] == [1, 2]
    code, text, _ = run(capsys, *[a for a in args if a != "--json"], "--orders", "2")
    assert "[1] m1.pt: acc" in text and "averaged over 2 random member orders" in text
    args = [*args, "--orders", "2"]
    import os
    stamp = os.stat("st/ensembles/ensemble.h5").st_mtime_ns
    code, again, err = run(capsys, *args)
    assert code == 0 and json.loads(again) == json.loads(first)
    assert os.stat("st/ensembles/ensemble.h5").st_mtime_ns == stamp


def test_classes_come_from_the_model_not_the_labels(work, capsys):
    # a test set without the last class: the model (from its checkpoint's head) still has 4
    torch.save({"x": torch.randn(10, 3, 8, 8), "y": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])}, "no3.pt")
    common = ["--model", "tiny_cnn", "--data", "tensors:no3.pt", "--quiet"]
    code, out, err = run(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "3", "--json", *common)
    assert code == 0, err
    torch.save({"x": torch.randn(5, 3, 8, 8), "y": torch.tensor([0, 1, 9, 2, 1])}, "bad.pt")
    code, _, err = run(capsys, "interpolate", "m0.pt", "m1.pt", "--model", "tiny_cnn", "--data", "tensors:bad.pt")
    assert code == 2 and "label 9 at sample 2" in err and "4 classes" in err
    code, _, err = run(capsys, "ensemble", "m0.pt", "m1.pt", "--model", "tiny_cnn", "--data", "tensors:no3.pt",
                       "--quiet")
    assert code == 0, err


def test_temperature_at_its_bound_is_reported(work, capsys):
    # a validation set the members get all right: the temperature runs into its bound
    from landscape.core.models import build_model

    m = build_model("tiny_cnn", 4, (3, 8, 8))
    m.load_state_dict(torch.load("m0.pt"))
    m.eval()
    x = torch.load("d.pt")["x"]
    with torch.no_grad():
        y = m(x).argmax(1)
    torch.save({"x": x, "y": y}, "val.pt")
    code, out, err = run(capsys, "ensemble", "m0.pt", "--model", "tiny_cnn", "--num-classes", "4", "--data",
                         "tensors:d.pt", "--val-data", "tensors:val.pt", "--json", "--quiet")
    assert code == 0, err
    res = json.loads(out)
    assert res["warnings"] and "hit its search bound" in res["warnings"][0]


def test_precision_is_recorded_and_bounded(work, capsys):
    base = ["interpolate", "m0.pt", "m1.pt", "--num", "3", "--json", *COMMON]
    exact = json.loads(run(capsys, *base, "--out", "st")[1])
    tf32 = json.loads(run(capsys, *base, "--precision", "tf32")[1])
    bf16 = json.loads(run(capsys, *base, "--precision", "bf16", "--out", "st", "--name", "bf16")[1])
    assert tf32["train_loss"] == exact["train_loss"]  # no TF32 on a CPU: exact
    np.testing.assert_allclose(bf16["train_loss"], exact["train_loss"], rtol=3e-2)
    assert bf16["train_loss"] != exact["train_loss"]
    from landscape.store.store import Store

    with Store("st") as st:
        assert st.read_attrs("curves", "bf16")["config"]["precision"] == "bf16"
        assert st.read_attrs("curves", "interpolate")["config"]["precision"] == "exact"
