"""Hostile or damaged store files: every command ends in one line on stderr with exit status 2 (or
the usual 1 of a store held by a writer), never a traceback, never a silently wrong result, and
never a change to any file of the store (a rerun that resumes a partial recomputes what is missing)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch

from landscape import cli
from landscape.core.checkpoints import Snapshot
from landscape.store.store import Store

USER_MODEL = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
              "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(),\n"
              "                         nn.Linear(8, num_classes))\n")
OPTS = ["--model", "hostile_user_mlp:make", "--data", "tensors:d.pt", "--quiet"]
PLANE = ["plane", "m.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", "--out", "s", *OPTS]


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A folder with a user model, data, a checkpoint and a store `s` holding surface `plane` and
    snapshot `snap` (written through the API), made once."""
    folder = tmp_path_factory.mktemp("hostile")
    cwd = os.getcwd()
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    try:
        (folder / "hostile_user_mlp.py").write_text(USER_MODEL)
        g = torch.Generator().manual_seed(0)
        torch.save({"x": torch.randn(30, 6, generator=g), "y": torch.randint(0, 3, (30,), generator=g)}, "d.pt")
        import hostile_user_mlp

        torch.manual_seed(0)
        model = hostile_user_mlp.make()
        torch.save(model.state_dict(), "m.pt")
        assert cli.main(PLANE) == 0
        with Store("s", "a") as store:
            store.write_snapshot(Snapshot.from_model(model, name="snap"))
    finally:
        sys.path.remove(str(folder))
        os.chdir(cwd)
    return folder


@pytest.fixture()
def work(origin, tmp_path, monkeypatch):
    """A private copy of the origin folder, as the working folder."""
    dest = tmp_path / "w"
    shutil.copytree(origin, dest)
    monkeypatch.chdir(dest)
    monkeypatch.syspath_prepend(str(dest))
    return dest


def _digests(folder) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for n in files + [d for d in dirs]:
            p = os.path.join(root, n)
            out[os.path.relpath(p, folder)] = "dir" if os.path.isdir(p) else \
                hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _refused(argv, capsys, *needles, code=2) -> str:
    before = _digests("s")
    got = cli.main(argv)
    out, err = capsys.readouterr()
    assert got == code and err.count("\n") == 1 and err.startswith("landscape: error: "), (argv, got, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    assert _digests("s") == before, "the refused command changed the store"
    return err


def _rewrite_h5(path, change) -> None:
    """Rewrite an HDF5 file with `change(arrays, attrs)` applied (datasets at the root, and groups)."""
    arrays, attrs = {}, {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: arrays.__setitem__(k, v[()]) if isinstance(v, h5py.Dataset) else None)
        attrs = dict(f.attrs)
    change(arrays, attrs)
    os.unlink(path)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        f.attrs.update(attrs)


# -- 1. the lock -------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["[1, 2, 3]", '"str"', "garbage{",
                                     json.dumps({"host": "h", "pid": 12345678901234567890, "since": "t"})])
def test_a_damaged_lock_is_refused_in_one_line(work, capsys, content):
    (work / "s" / ".lock").write_text(content)
    _refused([*PLANE, "--name", "other"], capsys, "damaged lock file", "remove it if no writer runs")


def test_a_lock_with_a_huge_pid_on_this_host_is_damaged_not_taken_over(work, capsys):
    import socket

    (work / "s" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 10 ** 19, "since": "t",
                                                  "command": "x"}))
    _refused([*PLANE, "--name", "other"], capsys, "damaged lock file", "not a process id")


# -- 2, 3. store.json ---------------------------------------------------------------------------
def _marker(work, **change) -> None:
    path = work / "s" / "store.json"
    meta = json.loads(path.read_text())
    meta.update(change)
    path.write_text(json.dumps(meta))  # json writes Infinity for float("inf")


@pytest.mark.parametrize("change", [{"schema_version": float("inf")}, {"attrs": [1, 2, 3]},
                                    {"schema_version": "2"}, {"schema_version": 2.5}])
@pytest.mark.parametrize("how", ["info", "ref"])
def test_a_damaged_store_json_is_named(work, capsys, change, how):
    _marker(work, **change)
    argv = ["info", "s"] if how == "info" else ["interpolate", "s:snap", "m.pt", "--num", "3", *OPTS]
    _refused(argv, capsys, "store.json is damaged")


def test_a_schema_1_store_folder_is_refused(work, capsys):
    _marker(work, schema_version=1)
    _refused(["info", "s"], capsys, "schema 1", "recompute with this version")
    _refused(["export", "s", "plane", "--format", "csv", "-o", str(work / "p.csv")], capsys, "schema 1")
    assert not (work / "p.csv").exists()


# -- 4. a partial whose done mask is not a boolean mask ------------------------------------------
@pytest.mark.parametrize("done", ["bytes", "int", "shape"])
def test_a_partial_with_a_non_boolean_done_is_started_afresh(work, capsys, done):
    surface = work / "s" / "surfaces" / "plane.h5"
    with h5py.File(surface, "r") as f:
        want = f["train_loss"][()]
    partial = work / "s" / "surfaces" / ".partial-plane.h5"
    os.rename(surface, partial)

    def damage(arrays, attrs):
        n = arrays["done"].shape
        arrays["train_loss"] = np.where(np.arange(want.size).reshape(n) % 2 == 0, want, np.nan)
        arrays["done"] = {"bytes": np.array([[b"1", b"0", b"1"]] * n[0], dtype="S1"),
                          "int": np.ones(n, dtype=np.int8) * 2,
                          "shape": np.ones((n[0] * n[1],), dtype=bool)}[done]
    _rewrite_h5(partial, damage)
    code = cli.main(PLANE)
    err = capsys.readouterr()[1]
    assert code == 0, err
    with h5py.File(surface, "r") as f:
        got_done, got = f["done"][()], f["train_loss"][()]
    assert got_done.dtype == bool and got_done.all()
    assert np.isfinite(got).all() and np.allclose(got, want)
    assert not partial.exists()


# -- 5. damaged snapshots ---------------------------------------------------------------------------
@pytest.mark.parametrize("damage, needle", [
    (lambda a: a.__setitem__("params", a["params"][:-3]), "layout says"),
    (lambda a: a.__setitem__("params", a["params"].reshape(1, -1)), "not one vector"),
    (lambda a: a.__setitem__("params", a["params"].astype("S8")), "not floating point"),
    (lambda a: a.__setitem__("buffers/2.running_mean", np.zeros(5, np.float32)), "running_mean"),
])
def test_a_damaged_snapshot_is_named(work, capsys, damage, needle):
    _rewrite_h5(work / "s" / "snapshots" / "snap.h5", lambda arrays, attrs: damage(arrays))
    err = _refused(["interpolate", "s:snap", "m.pt", "--num", "3", *OPTS], capsys, "snap", needle)
    assert "damaged" in err


def _builtin_snapshot(work) -> None:
    """Snapshot `builtin` of the built-in `mlp` in store `s`: its class count comes from the store."""
    from landscape.core.models import build_model

    with Store("s", "a") as store:
        store.write_snapshot(Snapshot.from_model(build_model("mlp", 3, (6,)), name="builtin"))


BUILTIN = ["interpolate", "s:builtin", "s:builtin", "--num", "3", "--model", "mlp", "--data", "tensors:d.pt",
           "--quiet"]


@pytest.mark.parametrize("attr, value, needle", [
    ("layout", "junk", "layout attribute is a str"),
    ("layout", json.dumps({"names": "x", "shapes": 3}), "unreadable layout attribute"),
    ("meta", "abc", "meta attribute is a str"),
    ("meta", json.dumps([1, 2]), "meta attribute is a list"),
])
def test_damaged_snapshot_attributes_are_named_not_blamed_on_the_command_line(work, capsys, attr, value, needle):
    """The class count of a built-in model is read from the snapshot's layout: a damaged one is
    named as damaged, never "cannot tell how many classes"."""
    _builtin_snapshot(work)
    assert cli.main(BUILTIN) == 0
    capsys.readouterr()
    with h5py.File(work / "s" / "snapshots" / "builtin.h5", "a") as f:
        f.attrs[attr] = value
    err = _refused(BUILTIN, capsys, "snapshot 'builtin'", "damaged", needle)
    assert "classes" not in err


def test_a_damaged_store_json_behind_a_built_in_model_is_named(work, capsys):
    _builtin_snapshot(work)
    _marker(work, attrs=[1, 2, 3])
    err = _refused(BUILTIN, capsys, "store.json is damaged")
    assert "classes" not in err


# -- 6. a folder where an object file should be -----------------------------------------------------
def test_a_folder_in_place_of_an_object_is_damaged_not_missing(work, capsys):
    os.unlink(work / "s" / "snapshots" / "snap.h5")
    os.mkdir(work / "s" / "snapshots" / "snap.h5")
    err = _refused(["interpolate", "s:snap", "m.pt", "--num", "3", *OPTS], capsys, "damaged", "folder")
    assert "available" not in err
    os.unlink(work / "s" / "surfaces" / "plane.h5")
    os.mkdir(work / "s" / "surfaces" / "plane.h5")
    _refused(["export", "s", "plane", "--format", "csv", "-o", str(work / "p.csv")], capsys, "damaged", "folder")


def test_a_fifo_in_place_of_an_object_is_listed_as_damaged_not_waited_on(work):
    """`info` opens every object: a FIFO would block the open forever (run with a timeout)."""
    import subprocess

    os.unlink(work / "s" / "surfaces" / "plane.h5")
    os.mkfifo(work / "s" / "surfaces" / "plane.h5")
    proc = subprocess.run([sys.executable, "-m", "landscape", "info", "s"], cwd=work, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "plane" in proc.stdout and "DAMAGED" in proc.stdout and "not a regular file" in proc.stdout


# -- 7. exports of a malformed surface ---------------------------------------------------------------
@pytest.mark.parametrize("damage, needle", [
    (lambda a: a.__setitem__("xcoordinates", a["xcoordinates"][:1]), "train_loss has shape"),
    (lambda a: a.__setitem__("xcoordinates", a["xcoordinates"][::-1].copy()), "not strictly increasing"),
    (lambda a: a.__setitem__("ycoordinates", np.array([0.0, np.nan, 1.0])), "non-finite"),
    (lambda a: a.__setitem__("train_loss", a["train_loss"][:2, :2]), "train_loss has shape"),
])
@pytest.mark.parametrize("fmt", ["goldstein", "vtp", "csv"])
def test_a_malformed_surface_is_not_exported(work, capsys, damage, needle, fmt):
    _rewrite_h5(work / "s" / "surfaces" / "plane.h5", lambda arrays, attrs: damage(arrays))
    out = work / f"p.{fmt}"
    _refused(["export", "s", "plane", "--format", fmt, "-o", str(out)], capsys, "surface 'plane'", "malformed",
             needle)
    assert not out.exists()
