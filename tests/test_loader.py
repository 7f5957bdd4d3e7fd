"""One loader for every `module:callable` on the command line (`--model`, `--loss`,
`--data dataset:...`): the real `landscape` console script imports a user's module from the
working directory with no PYTHONPATH, and every failure is one line that names the module and why."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.core.loader import load_callable
from landscape.core.models import build_model

LANDSCAPE = os.path.join(os.path.dirname(sys.executable), "landscape")
FEATURES, CLASSES = 4, 3


def _net() -> nn.Module:  # the architecture of mymodel.make, built here for the checkpoints
    return nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, CLASSES))


USER_FILES = {
    "mymodel.py": """
        from torch import nn

        def make():
            return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    """,
    # a loss that is recognisably this one: every value is above 100
    "myloss.py": """
        import torch

        def fn(outputs, targets):
            return torch.nn.functional.cross_entropy(outputs, targets) + 100.0
    """,
    # imports a sibling module of the working directory at import time
    "mydata.py": """
        import torch
        from torch.utils.data import Dataset
        from mydata_helpers import N

        class Points(Dataset):
            def __init__(self, n):
                g = torch.Generator().manual_seed(3)
                self.x, self.y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
            def __len__(self):
                return len(self.y)
            def __getitem__(self, i):
                return self.x[i], int(self.y[i])

        def factory():
            return Points(N)
    """,
    "mydata_helpers.py": "N = 24\n",
    "brokenloss.py": """
        def fn(outputs, targets):
            return outputs.sum()

        1 / 0
    """,
}


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """A working directory holding the user's modules, two checkpoints and tensor data; it is
    never put on this process's sys.path."""
    work = tmp_path_factory.mktemp("userwork")
    for name, text in USER_FILES.items():
        (work / name).write_text(textwrap.dedent(text))
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(24, FEATURES, generator=g), "y": torch.randint(0, CLASSES, (24,), generator=g)},
               work / "d.pt")
    for i in range(2):
        torch.manual_seed(i)
        torch.save(_net().state_dict(), work / f"A{i}.pt")
        torch.save(build_model("mlp", CLASSES, (FEATURES,)).state_dict(), work / f"M{i}.pt")
    return work


def _landscape(cwd, *argv):
    if not os.path.exists(LANDSCAPE):
        pytest.skip(f"no console script at {LANDSCAPE}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([LANDSCAPE, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# --loss and --data on the built-in mlp, so that no import of a user model comes first
CASES = {
    "model": ["--model", "mymodel:make", "--data", "tensors:d.pt"],
    "loss": ["--model", "mlp", "--data", "tensors:d.pt", "--loss", "myloss:fn"],
    "data": ["--model", "mlp", "--data", "dataset:mydata:factory"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_console_script_imports_from_the_working_directory(cwd, case):
    """Each spec form on its own; on the old code --loss and --data failed here with
    "No module named 'myloss'" / "No module named 'mydata'"."""
    a, b = ("A0.pt", "A1.pt") if case == "model" else ("M0.pt", "M1.pt")
    proc = _landscape(cwd, "interpolate", a, b, *CASES[case], "--alpha-range", "0:1:3", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert len(res["alphas"]) == 3 and len(res["train_loss"]) == 3
    if case == "loss":
        assert all(v > 100 for v in res["train_loss"])  # the user's loss was the one evaluated
    else:
        assert all(0 < v < 100 for v in res["train_loss"])


def test_console_script_all_three_together(cwd):
    proc = _landscape(cwd, "interpolate", "A0.pt", "A1.pt", "--model", "mymodel:make", "--data",
                      "dataset:mydata:factory", "--test-data", "tensors:d.pt", "--loss", "myloss:fn",
                      "--alpha-range", "0:1:3", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert all(v > 100 for v in res["train_loss"] + res["test_loss"])


def test_console_script_error_inside_the_module(cwd):
    proc = _landscape(cwd, "interpolate", "A0.pt", "A1.pt", "--model", "mymodel:make", "--data", "tensors:d.pt",
                      "--loss", "brokenloss:fn", "--alpha-range", "0:1:3", "--quiet")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "'brokenloss'" in err[0] and "ZeroDivisionError" in err[0] and "No module named" not in err[0]


# --- the loader itself -------------------------------------------------------------------------

@pytest.fixture()
def here(tmp_path, monkeypatch):
    """tmp_path as the working directory, and not on sys.path (not even as "" or ".")."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    added = []

    def write(name, text):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
        added.append(name)
    yield write
    for name in added:
        sys.modules.pop(name, None)


def _error(spec, what="--loss", **kw) -> str:
    with pytest.raises(LandscapeError) as info:
        load_callable(spec, what, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_loads_from_the_working_directory_and_restores_sys_path(here):
    here("ld_ok", """
        class Holder:
            @staticmethod
            def make():
                return 42

        def fn():
            return 7
    """)
    before = list(sys.path)
    assert load_callable("ld_ok:fn", "--loss")() == 7
    assert load_callable("ld_ok:Holder.make", "--loss")() == 42  # dotted attribute
    assert sys.path == before  # the directory was importable for the import only


@pytest.mark.parametrize("spec", ["nocolon", ":fn", "mod:", ".relative:fn", "mod:a..b", "pkg..mod:fn", ""])
def test_malformed_spec(spec):
    assert _error(spec) == f"malformed --loss {spec!r}: expected package.module:callable"
    assert _error(spec, "model spec", expected="NAME or package.module:factory").startswith(
        f"malformed model spec {spec!r}: expected NAME or package.module:factory")


def test_missing_module(here):
    message = _error("ld_nosuchmodule:fn", "model spec")
    assert message.startswith("model spec 'ld_nosuchmodule:fn': cannot import module 'ld_nosuchmodule': "
                              "No module named 'ld_nosuchmodule'")
    # a missing submodule of a package that exists is "not found" too
    assert "cannot import module 'json.nosuch': No module named 'json.nosuch'" in _error("json.nosuch:fn")


def test_shown_spec(here):
    message = _error("ld_nosuchmodule:make", "data spec", shown="dataset:ld_nosuchmodule:make:train")
    assert message.startswith("data spec 'dataset:ld_nosuchmodule:make:train': cannot import module "
                              "'ld_nosuchmodule'")


def test_missing_or_uncallable_attribute(here):
    here("ld_attrs", """
        VALUE = 3

        class Outer:
            pass
    """)
    assert _error("ld_attrs:nope") == "--loss 'ld_attrs:nope': module 'ld_attrs' has no attribute 'nope'"
    assert _error("ld_attrs:Outer.nope") == "--loss 'ld_attrs:Outer.nope': 'Outer' has no attribute 'nope'"
    assert _error("ld_attrs:VALUE") == "--loss 'ld_attrs:VALUE': 'VALUE' in module 'ld_attrs' is not callable (it is a int)"


def test_error_inside_the_module_is_reported_not_swallowed(here):
    here("ld_boom", """
        raise ValueError("bad config\\nsecond line")
    """)
    here("ld_needs_dep", """
        import ld_nosuch_dependency
        def fn():
            pass
    """)
    here("ld_syntax", """
        def fn(:
            pass
    """)
    assert _error("ld_boom:fn") == ("--loss 'ld_boom:fn': cannot import module 'ld_boom': it raised ValueError: "
                                    "bad config second line")
    message = _error("ld_needs_dep:fn")  # a missing dependency is the module's error, named as such
    assert message == ("--loss 'ld_needs_dep:fn': cannot import module 'ld_needs_dep': it raised "
                       "ModuleNotFoundError: No module named 'ld_nosuch_dependency'")
    assert "cannot import module 'ld_syntax': it raised SyntaxError" in _error("ld_syntax:fn")


def test_cli_messages_kept(here, capsys):
    from landscape.cli import main

    for argv, needle in (
        (["--model", "no_colon_here", "--data", "synthetic"], "malformed model spec"),
        (["--model", "ld_nosuchmodule:make", "--data", "synthetic"], "cannot import"),
        (["--model", "tiny_cnn", "--data", "synthetic", "--loss", "hinge"], "choose ce, mse"),
        (["--model", "tiny_cnn", "--data", "dataset:ld_only_module"], "malformed data spec"),
        (["--model", "tiny_cnn", "--data", "dataset:ld_nosuchmodule:make"],
         "data spec 'dataset:ld_nosuchmodule:make': cannot import module 'ld_nosuchmodule'"),
    ):
        code = main(["interpolate", "a.pt", "b.pt", *argv, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and needle in err, (argv, err)
