"""Options every command honours: hessian/connect take --precision and --chunk into their stored
config, plane --hessian-directions finds its eigenvectors in the store on a rerun, and the CLI's
own commands exist whatever the plugins do (a broken plugin is reported, never swallowed)."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_problem import write_problem

from landscape import cli
from landscape.store.store import Store


@pytest.fixture()
def problem(tmp_path, monkeypatch):
    """Two checkpoints of a user model, train and test tensors, in the working folder."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return write_problem("opts_user_mlp")


def _run(argv, capsys) -> dict:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out) if "--json" in argv else {}


def test_hessian_stores_precision_and_chunk(problem, capsys):
    _run(["hessian", "m1.pt", "--precision", "bf16", "--chunk", "3", "--trace", "--probes", "6", "--out", "s",
          "--json", *problem], capsys)
    config = Store("s").read_attrs("hessians", "hessian")["config"]
    assert config["precision"] == "bf16" and config["probe_batch"] == 3
    # other arguments on the same name are refused, naming what differs
    code = cli.main(["hessian", "m1.pt", "--precision", "exact", "--chunk", "3", "--trace", "--probes", "6",
                     "--out", "s", *problem])
    assert code == 2 and "precision" in capsys.readouterr()[1]


def test_hessian_chunk_batches_the_probes_with_the_same_numbers(problem, capsys):
    one = _run(["hessian", "m1.pt", "--trace", "--probes", "6", "--chunk", "1", "--json", *problem], capsys)
    three = _run(["hessian", "m1.pt", "--trace", "--probes", "6", "--chunk", "3", "--json", *problem], capsys)
    assert three["trace"] == pytest.approx(one["trace"], rel=1e-5)
    assert np.allclose(three["eigenvalues"], one["eigenvalues"], rtol=1e-4)


def test_connect_stores_precision(problem, capsys):
    _run(["connect", "m1.pt", "m2.pt", "--num", "3", "--epochs", "1", "--precision", "bf16", "--chunk", "2",
          "--out", "s", "--json", *problem], capsys)
    attrs = Store("s").read_attrs("connections", "connect")
    assert attrs["config"]["precision"] == "bf16" and attrs["chunk"] == 2


def test_hessian_directions_are_found_in_the_store_on_a_rerun(problem, capsys, monkeypatch):
    from landscape.evaluate import hessian as spectra

    argv = ["plane", "m1.pt", "--hessian-directions", "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s", "--json",
            *problem]
    first = _run(argv, capsys)
    stored, attrs = Store("s").read_directions("plane-hessian")
    assert stored.shape[0] == 2 and attrs["kind"] == "hessian" and attrs["config"]["normalization"] == "filter"

    def no_lanczos(*args, **kwargs):
        raise AssertionError("the rerun ran Lanczos again")

    monkeypatch.setattr(spectra, "hessian_spectrum", no_lanczos)
    again = _run(argv, capsys)
    assert again["computed_now"] == 0 and again["test_loss"] == first["test_loss"]
    # a killed run (surface unfinished) resumes along the stored directions, not fresh ones
    os.unlink(Store("s")._file("surfaces", "plane"))
    resumed = _run(argv, capsys)
    assert resumed["computed_now"] == 9 and resumed["test_loss"] == first["test_loss"]


def test_builtin_commands_do_not_depend_on_plugins(monkeypatch, capsys):
    monkeypatch.setattr(cli, "entry_points", lambda group: [])
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)  # not even a checkout
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"interpolate", "barriers", "plane", "ensemble", "hessian", "connect", "plot", "export",
            "info"} <= set(commands)
    assert "run" not in commands and capsys.readouterr()[1] == ""


def test_experiments_commands_come_from_a_checkout_too(monkeypatch):
    monkeypatch.setattr(cli, "entry_points", lambda group: [])  # not pip-installed
    assert {"run", "demo"} <= set(cli.build_parser()._subparsers._group_actions[0].choices)


def test_a_broken_plugin_is_reported_in_one_line(monkeypatch, capsys):
    broken = SimpleNamespace(name="broken", value="no_such_module_for_landscape:register")
    monkeypatch.setattr(cli, "entry_points", lambda group: [broken])
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    err = capsys.readouterr()[1]
    assert "hessian" in commands and err.count("\n") == 1
    assert "plugin 'broken'" in err and "no_such_module_for_landscape" in err


def test_ignore_keys_is_a_parameter_of_the_api(problem):
    import landscape
    from landscape.core.errors import LandscapeError

    state = torch.load("m1.pt", weights_only=True)
    torch.save({**state, "projector.weight": torch.zeros(4, 8)}, "byol.pt")
    data = dict(model="opts_user_mlp:make", data="tensors:train.pt", alpha_range="0:1:3")
    with pytest.raises(LandscapeError, match="projector"):
        landscape.interpolate("byol.pt", "m2.pt", **data)
    res = landscape.interpolate("byol.pt", "m2.pt", ignore_keys=["projector."], **data)
    assert res.ignored_keys == {"byol.pt": ["projector.weight"]}
    assert res.to_dict()["ignored_keys"] == {"byol.pt": ["projector.weight"]}
    clean = landscape.interpolate("m1.pt", "m2.pt", ignore_keys=["projector."], **data)
    assert clean.ignored_keys == {} and "ignored_keys" not in clean.to_dict()
