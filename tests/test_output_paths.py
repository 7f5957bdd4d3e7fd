"""Outputs the user names (`export -o`, `plot -o`) go only to regular files outside every store:
a FIFO, a symbolic link, a folder and a store's own files are refused in one line (exit 2) and
left exactly as they were (never a real device: a FIFO stands in for one)."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch

from landscape import cli
from landscape.core.errors import LandscapeError
from landscape.store.atomic import write_atomically

USER_MODEL = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
              "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, num_classes))\n")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store holding a finished 3x3 surface named `plane`, made by the CLI."""
    folder = tmp_path_factory.mktemp("outputs")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        (folder / "outputs_user_mlp.py").write_text(USER_MODEL)
        g = torch.Generator().manual_seed(0)
        torch.save({"x": torch.randn(30, 6, generator=g), "y": torch.randint(0, 3, (30,), generator=g)}, "d.pt")
        torch.manual_seed(0)
        torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                       torch.nn.Linear(8, 3)).state_dict(), "m.pt")
        import sys
        sys.path.insert(0, str(folder))
        try:
            code = cli.main(["plane", "m.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3",
                             "--model", "outputs_user_mlp:make", "--data", "tensors:d.pt", "--out", "s", "--quiet"])
        finally:
            sys.path.remove(str(folder))
        assert code == 0
    finally:
        os.chdir(cwd)
    return folder / "s"


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _refused(argv, capsys, needle: str) -> None:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)


COMMANDS = [("export", ["--format", "csv"]), ("export", ["--format", "goldstein"]), ("plot", [])]


@pytest.mark.parametrize("command, extra", COMMANDS)
def test_a_fifo_is_refused_and_left_a_fifo(store, tmp_path, capsys, command, extra):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _refused([command, str(store), "plane", *extra, "-o", str(fifo)], capsys, "is a FIFO")
    assert os.path.exists(fifo) and not os.path.isfile(fifo) and os.stat(fifo).st_mode & 0o170000 == 0o010000


@pytest.mark.parametrize("command, extra", COMMANDS)
def test_a_symlink_is_refused_and_neither_it_nor_its_target_changes(store, tmp_path, capsys, command, extra):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "out.png"
    os.symlink(target, link)
    _refused([command, str(store), "plane", *extra, "-o", str(link)], capsys, "is a symbolic link")
    assert os.path.islink(link) and os.readlink(link) == str(target) and target.read_text() == "keep me"


@pytest.mark.parametrize("command, extra", COMMANDS)
def test_a_folder_is_refused(store, tmp_path, capsys, command, extra):
    _refused([command, str(store), "plane", *extra, "-o", str(tmp_path)], capsys, "is a folder")


@pytest.mark.parametrize("inside", ["surfaces/plane.h5", "store.json", "surfaces/new.h5", "elsewhere.csv"])
@pytest.mark.parametrize("command, extra", COMMANDS)
def test_nothing_is_written_inside_a_store(store, capsys, command, extra, inside):
    before = {p: _digest(os.path.join(d, p)) for d, _, fs in os.walk(store) for p in fs}
    listing = sorted(os.listdir(store))
    _refused([command, str(store), "plane", *extra, "-o", str(store / inside)], capsys, "lies inside the store")
    assert {p: _digest(os.path.join(d, p)) for d, _, fs in os.walk(store) for p in fs} == before
    assert sorted(os.listdir(store)) == listing


@pytest.mark.parametrize("command, extra, name", [("export", ["--format", "csv"], "plane.csv"),
                                                  ("export", ["--format", "vtp"], "plane.vtp"),
                                                  ("plot", [], "plane.png")])
def test_a_regular_file_outside_the_store_is_written_and_replaced(store, tmp_path, capsys, command, extra, name):
    out = tmp_path / name
    out.write_text("old")
    assert cli.main([command, str(store), "plane", *extra, "-o", str(out)]) == 0, capsys.readouterr()[1]
    assert os.path.isfile(out) and not os.path.islink(out) and out.read_bytes() != b"old"


def test_the_atomic_writer_never_replaces_a_special_file(tmp_path):
    """The last line of defence under every writer (store objects, figures, reports)."""
    fifo, link, target = tmp_path / "fifo", tmp_path / "link", tmp_path / "target"
    os.mkfifo(fifo)
    target.write_text("keep")
    os.symlink(target, link)
    for path in (fifo, link, tmp_path):
        with pytest.raises(LandscapeError, match="not a regular file"):
            write_atomically(str(path), lambda f: f.write(b"new"))
    assert target.read_text() == "keep" and os.path.islink(link) and not os.path.isfile(fifo)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "link", "target"]  # no temporary file left


PLANE = ["plane", "m.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", "--model", "outputs_user_mlp:make",
         "--data", "tensors:d.pt", "--quiet"]


def _plane(folder, out: str, name: str = "plane") -> tuple[int, str]:
    """The plane command in a process of its own (another writer than this test's process)."""
    import subprocess
    import sys
    argv = [sys.executable, "-m", "landscape", *PLANE, "--out", out, "--name", name]
    r = subprocess.run(argv, cwd=folder, env={**os.environ, "PYTHONPATH": str(folder)}, capture_output=True,
                       text=True, timeout=300)
    return r.returncode, r.stderr


def _plane_here(folder, out: str, name: str = "plane") -> tuple[int, str]:
    """The same command in this process (no interpreter start-up) where no other pid is needed."""
    import contextlib
    import io
    import sys
    err, cwd = io.StringIO(), os.getcwd()
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    try:
        with contextlib.redirect_stderr(err):
            code = cli.main([*PLANE, "--out", out, "--name", name])
    finally:
        sys.path.remove(str(folder))
        os.chdir(cwd)
    return code, err.getvalue()


def test_a_kind_folder_that_is_a_symlink_is_refused_and_what_it_points_to_untouched(store, tmp_path):
    folder = store.parent
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    precious = ".precious.h5.999999-0123456789ab.tmp"  # named as a dead writer's temporary file
    (elsewhere / precious).write_text("not the store's")
    os.makedirs(folder / "s2")
    assert _plane_here(folder, "s2", "first")[0] == 0  # a store of its own
    os.rename(folder / "s2" / "surfaces", tmp_path / "surfaces-aside")
    os.symlink(elsewhere, folder / "s2" / "surfaces")
    code, err = _plane_here(folder, "s2", "second")
    assert code == 2 and err.count("\n") == 1 and "'surfaces' is a symbolic link" in err, err
    assert sorted(os.listdir(elsewhere)) == [precious]


def test_clean_up_removes_only_a_dead_writers_temporary_files(store, tmp_path):
    folder = store.parent
    os.makedirs(folder / "s3")
    assert _plane_here(folder, "s3", "first")[0] == 0
    surfaces = folder / "s3" / "surfaces"
    dead = surfaces / ".x.h5.999999-0123456789ab.tmp"  # pid 999999: not a live process here
    alive = surfaces / f".y.h5.{os.getpid()}-0123456789ab.tmp"  # this test's process: still writing
    mine = surfaces / ".notes.tmp"  # hidden and .tmp, but not the atomic writer's name
    for f in (dead, alive, mine):
        f.write_text("x")
    assert _plane(folder, "s3", "second")[0] == 0  # a fresh process: this one is a live other writer
    assert not dead.exists() and alive.exists() and mine.exists()
