"""The store's guarantees (landscape/store/store.py, README "What the store guarantees"), each shown by
breaking things the way the world does: kills at every write step and at random moments, write
failures through RLIMIT_FSIZE (what a full disk or a quota does to a write), two writers with
HDF5's file locking off, refused and overwriting commands, and removing the store mid-run."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import resource
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.core.jsonable import masked
from landscape.store.store import Store

USER_MODULE = textwrap.dedent("""
    from torch import nn

    def make(num_classes=3):
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))
""")

# Runs the CLI with a hook: SIGKILL just before (or just after) the N-th rename or link the
# process makes, the two operations through which every store change becomes visible.
KILL_AT = textwrap.dedent("""
    import os, signal, sys
    n, when = int(os.environ["KILL_AT"]), os.environ["KILL_WHEN"]
    calls = {"n": 0}
    def wrap(fn):
        def inner(*a, **k):
            calls["n"] += 1
            if calls["n"] == n and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = fn(*a, **k)
            if calls["n"] == n and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return inner
    os.replace, os.link = wrap(os.replace), wrap(os.link)
    from landscape.cli import main
    sys.exit(main(sys.argv[1:]))
""")

# Slows every saved chunk down, and can remove the store after the second one.
SLOW = textwrap.dedent("""
    import os, shutil, sys, time
    from landscape.store import store
    original = store.Store._write_grid
    calls = {"n": 0}
    def slow(self, grid, final):
        calls["n"] += 1
        if os.environ.get("REMOVE_STORE") and calls["n"] == 2:
            shutil.rmtree(self.path)
        time.sleep(float(os.environ.get("SLEEP", "0")))
        return original(self, grid, final)
    store.Store._write_grid = slow
    from landscape.cli import main
    sys.exit(main(sys.argv[1:]))
""")


WORK_FILES = {"user_model.py": USER_MODULE, "kill_at.py": KILL_AT, "slow.py": SLOW}


def make_work(tmp_path):
    """The `work` fixture's problem (tests/conftest.py): train/test data and three checkpoints."""
    import user_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, 6, 6, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    torch.save({"x": x[:24], "y": y[:24]}, tmp_path / "train.pt")
    torch.save({"x": x[24:], "y": y[24:]}, tmp_path / "test.pt")
    for i in range(3):
        torch.manual_seed(10 + i)
        torch.save(user_model.make().state_dict(), tmp_path / f"m{i}.pt")


COMMON = ["--model", "user_model:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt", "--quiet"]
PLANE = ["plane", "m0.pt", "--random", "filter", "--x", "-1:1:4", "--y", "-1:1:3", "--chunk", "3", *COMMON]


def cli(*argv, env=None, fsize=None, script=None, timeout=240):
    """The command's (exit status, stdout, stderr): in this process, or in a fresh one when it
    needs a file-size limit, an environment or a hook script (or is to be killed)."""
    if env is None and fsize is None and script is None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    cmd = [sys.executable, script, *argv] if script else [sys.executable, "-m", "landscape", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd(),
                                                                     **(env or {})},
                          preexec_fn=limit, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def tree(path) -> dict[str, str]:
    """Every file under `path` with a digest of its bytes."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = hashlib.sha1(open(full, "rb").read()).hexdigest()
    return out


def finished(path) -> dict[str, str]:
    """The finished objects of a store (what must never change or become unreadable)."""
    return {k: v for k, v in tree(path).items() if k.endswith(".h5") and not os.path.basename(k).startswith(".")}


def read_all(path) -> dict[str, dict[str, np.ndarray]]:
    with Store(str(path), "r") as st:
        return {f"{kind}/{name}": st.read(kind, name).arrays for kind in ("curves", "surfaces", "directions")
                for name in st.names(kind)}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landscape: error:") and "Traceback" not in err, err
    return lines[0]


def make_store(name="st"):
    rc, out, err = cli("interpolate", "m0.pt", "m1.pt", "--num", "4", "--out", name, *COMMON)
    assert rc == 0, err
    rc, out, err = cli(*PLANE, "--name", "first", "--out", name)
    assert rc == 0, err


def test_write_failure_keeps_finished_results_and_rerun_completes(work):
    """A write that fails (EFBIG from RLIMIT_FSIZE, as ENOSPC/EDQUOT from a full disk or quota)
    while adding a plane: the finished objects read back identical, the command says so in one
    line with exit 1, and the rerun finishes the plane with the numbers of an undisturbed run."""
    make_store()
    rc, ref_json, err = cli(*PLANE, "--name", "second", "--out", "ref", "--json")
    assert rc == 0, err
    ref = json.loads(ref_json)
    final_size = os.path.getsize("ref/surfaces/second.h5")
    before, values = finished("st"), read_all("st")

    # 1) the very first write fails: the store does not change at all
    untouched = tree("st")
    rc, _, err = cli(*PLANE, "--name", "second", "--out", "st", fsize=1)
    assert rc == 1 and "File too large" in one_line(err)
    assert tree("st") == untouched

    # 2) only the final object's write fails: progress is kept, nothing finished is touched
    rc, _, err = cli(*PLANE, "--name", "second", "--out", "st", fsize=final_size - 1)
    assert rc == 1 and "File too large" in one_line(err), err
    after = finished("st")
    assert {k: after.get(k) for k in before} == before and not os.path.exists("st/surfaces/second.h5")
    now = read_all("st")
    for key, arrays in values.items():
        for k, v in arrays.items():
            np.testing.assert_array_equal(now[key][k], v)

    rc, out, err = cli(*PLANE, "--name", "second", "--out", "st", "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["computed_now"] == 0  # every point had been saved before the failure
    for m in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert res[m] == ref[m]
    assert {k: v for k, v in finished("st").items() if "second" not in k} == before


def folder_times(path) -> dict[str, int]:
    """Modification times of a folder and its subfolders: a file created and removed again in
    one (a probe, a temporary) changes them even though the tree's files look the same."""
    return {root: os.stat(root).st_mtime_ns for root, _, _ in os.walk(path)}


def test_noop_rerun_on_a_full_disk_writes_nothing(work):
    make_store()
    before, times = tree("st"), folder_times("st")
    time.sleep(0.05)  # so that a change within the same clock tick would still show
    for argv in (["interpolate", "m0.pt", "m1.pt", "--num", "4", *COMMON], [*PLANE, "--name", "first"]):
        rc, out, err = cli(*argv, "--out", "st", "--json", fsize=1)  # any write at all would fail
        assert rc == 0, err
        assert json.loads(out)["computed_now"] == 0
    assert tree("st") == before and folder_times("st") == times


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_at_every_write_step(work, when):
    """SIGKILL around each rename/link of a new store's life (creation in its first milliseconds,
    the lock, every chunk's progress, the directions, the finished plane): the store stays
    usable, finished objects never change, and the rerun ends with an undisturbed run's numbers."""
    rc, ref, err = cli(*PLANE, "--out", "ref", "--json")
    assert rc == 0, err
    ref = json.loads(ref)
    steps = 0
    for k in range(1, 40):
        rc, _, err = cli(*PLANE, "--out", f"k{k}", env={"KILL_AT": str(k), "KILL_WHEN": when}, script="kill_at.py")
        if rc == 0:
            steps = k - 1
            break
        assert rc == -9, err
        if os.path.exists(f"k{k}"):  # never "corrupted": a half-made store is a new store
            assert cli("info", f"k{k}")[0] == 0
        kept = finished(f"k{k}")
        rc, out, err = cli(*PLANE, "--out", f"k{k}", "--json")
        assert rc == 0, err
        res = json.loads(out)
        for m in ("train_loss", "test_loss", "train_acc", "test_acc"):
            assert res[m] == ref[m]
        assert {p: d for p, d in finished(f"k{k}").items() if p in kept} == kept
    assert steps >= 6  # store.json, lock, four chunks' progress, directions, surface


def test_directions_written_before_a_kill_are_not_rewritten(work):
    """Killed after the directions were stored and before the surface was: the rerun finishes the
    surface and leaves the finished directions byte for byte (their provenance time included)."""
    rc, _, err = cli(*PLANE, "--out", "st")
    assert rc == 0, err
    os.remove("st/surfaces/plane.h5")  # the state a kill right after the directions' rename leaves
    before = finished("st")
    time.sleep(1.1)  # a rewrite would carry another creation time
    rc, out, err = cli(*PLANE, "--out", "st", "--json")
    assert rc == 0, err
    assert finished("st")["directions/plane.h5"] == before["directions/plane.h5"]
    assert json.loads(out)["computed_now"] == 12


def test_kills_at_random_moments(work):
    rc, ref, err = cli(*PLANE, "--out", "ref", "--json")
    ref = json.loads(ref)
    rng = random.Random(0)
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "slow.py", *PLANE, "--out", "r"], env={**os.environ, "SLEEP": "0.3"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 6.0))
        proc.kill()
        proc.wait()
    rc, out, err = cli(*PLANE, "--out", "r", "--json")
    assert rc == 0, err
    res = json.loads(out)
    for m in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert res[m] == ref[m]


def test_two_writers_without_hdf5_locking(work):
    """With HDF5_USE_FILE_LOCKING=FALSE (NFS, Lustre) the second writer is refused by the store's
    own lock, naming the holder; the first finishes; the store ends consistent."""
    make_store()
    env = {"HDF5_USE_FILE_LOCKING": "FALSE", "SLEEP": "1.0"}
    first = subprocess.Popen([sys.executable, "slow.py", *PLANE, "--name", "a", "--out", "st"],
                             env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if os.path.exists("st/.lock"):
            break
        time.sleep(0.05)
    rc, _, err = cli(*PLANE, "--name", "b", "--seed", "1", "--out", "st", env=env)
    assert rc == 1 and f"being written by another process (pid {first.pid}" in one_line(err)
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert not os.path.exists("st/.lock")
    with Store("st", "r") as st:
        assert st.read("surfaces", "a")["done"].all() and not st.has("surfaces", "b")
    rc, _, err = cli(*PLANE, "--name", "b", "--seed", "1", "--out", "st", env=env)
    assert rc == 0, err


def test_refused_command_changes_nothing_and_overwrite_replaces_only_when_complete(work):
    make_store()
    before = tree("st")
    rc, _, err = cli(*PLANE, "--name", "first", "--seed", "5", "--out", "st")
    line = one_line(err)
    assert rc == 2 and "different arguments" in line and "directions" in line
    assert tree("st") == before  # the directions were not replaced either

    # an --overwrite run killed half way: the old plane and its directions are still there, whole
    old = finished("st")
    rc, _, _ = cli(*PLANE, "--name", "first", "--seed", "5", "--overwrite", "--out", "st",
                   env={"KILL_AT": "3", "KILL_WHEN": "before"}, script="kill_at.py")
    assert rc == -9
    assert finished("st") == old
    rc, out, err = cli(*PLANE, "--name", "first", "--seed", "5", "--overwrite", "--out", "st", "--json")
    assert rc == 0, err
    rc, fresh, err = cli(*PLANE, "--name", "first", "--seed", "5", "--out", "fresh", "--json")
    assert json.loads(out)["test_loss"] == json.loads(fresh)["test_loss"]
    with Store("st", "r") as st:
        assert st.read_attrs("surfaces", "first")["seeds"] == [5, 6]
        assert st.read_attrs("directions", "first")["seeds"] == [5, 6]


def test_space_is_reused(work):
    make_store()
    size = lambda: sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk("st") for f in fs)  # noqa: E731
    first = size()
    for seed in (1, 2, 3):
        rc, _, err = cli(*PLANE, "--name", "first", "--seed", str(seed), "--overwrite", "--out", "st")
        assert rc == 0, err
    assert size() <= first * 1.05
    assert not [n for n in tree("st") if os.path.basename(n).startswith(".")]  # no leftovers


def test_store_removed_during_a_run_is_a_failure(work):
    make_store()
    rc, out, err = cli(*PLANE, "--name", "gone", "--out", "st", env={"REMOVE_STORE": "1"}, script="slow.py")
    assert rc == 1 and "removed" in one_line(err) and "plane gone" not in out
    assert not os.path.exists("st")


def test_bad_values_are_refused_before_work_and_change_nothing(work):
    make_store()
    x = torch.load("train.pt")
    x["x"][7, 1, 2, 3] = float("nan")
    torch.save(x, "nan.pt")
    before = tree("st")
    cases = [
        (["interpolate", "m0.pt", "m1.pt", "--batch-size", "-5", *COMMON], "--batch-size must be a positive integer"),
        (["interpolate", "m0.pt", "m1.pt", "--batch-size", "0", *COMMON], "--batch-size must be a positive integer"),
        (["interpolate", "m0.pt", "m1.pt", "--bn", "recompute", "--bn-samples", "0", *COMMON],
         "--bn-samples must be a positive integer"),
        ([*PLANE[:-len(COMMON)], "--chunk", "0", *COMMON], "--chunk must be a positive integer"),
        (["interpolate", "m0.pt", "m1.pt", "--num", "0", *COMMON], "--num must be a positive integer"),
        (["interpolate", "m0.pt", "m1.pt", "--device", "meta", *COMMON], "device"),
        (["interpolate", "m0.pt", "m1.pt", "--model", "user_model:make", "--data", "tensors:nan.pt"], "sample 7"),
        (["plane", "m0.pt", "--through", "m1.pt", "m2.pt", "--model", "user_model:make", "--data", "tensors:nan.pt"],
         "sample 7"),
        (["plane", "m0.pt", "--random", "filter", "--x", "-1:1:100000", "--y", "-1:1:10000", *COMMON], "GiB"),
        (["plane", "m0.pt", "--random", "filter", "--x", "-1:1:1000000000", *COMMON], "GiB"),
        (["interpolate", "m0.pt", "m1.pt", "--num", "1000000000", *COMMON], "GiB"),
    ]
    for argv, needle in cases:
        t0 = time.perf_counter()
        rc, _, err = cli(*argv, "--out", "st")
        assert rc == 2 and needle in one_line(err), (argv, err)
        assert time.perf_counter() - t0 < 60
    assert tree("st") == before
    rc, _, err = cli("interpolate", "m0.pt", "m1.pt", "--out", "/proc/no-store-here", *COMMON)
    assert rc == 2 and "not writable" in one_line(err)


def test_nonfinite_points_are_stored_flagged_and_reported(work):
    """A line to a model whose head overflows: its losses are stored as computed (NaN/inf), flagged,
    their accuracies made NaN, counted in the summary line, and shown in --json as strings that
    cannot be mistaken for null ("not computed")."""
    import user_model

    torch.manual_seed(1)
    m = user_model.make()
    with torch.no_grad():
        m[-1].weight.fill_(3e38)
    torch.save(m.state_dict(), "huge.pt")
    rc, out, err = cli("interpolate", "m0.pt", "huge.pt", "--num", "5", "--out", "st", *COMMON)
    assert rc == 0, err
    assert "points diverged" in out.splitlines()[0]
    rc, out, err = cli("interpolate", "m0.pt", "huge.pt", "--num", "5", "--out", "st", "--json", *COMMON)
    res = json.loads(out)
    assert res["test_loss"][0] == pytest.approx(res["test_loss"][0]) and isinstance(res["test_loss"][0], float)
    assert res["test_loss"][-1] in ("nan", "inf") and res["test_acc"][-1] == "nan"
    assert None not in res["test_loss"]
    with h5py.File("st/curves/interpolate.h5", "r") as f:
        assert f["nonfinite"][-1] and not f["nonfinite"][0]
        assert not np.isfinite(f["test_loss"][-1]) and np.isnan(f["test_acc"][-1])
    # null is "not computed", distinct from a computed NaN
    assert masked(np.array([np.nan, np.nan, 1.0]), np.array([False, True, True])) == [None, "nan", 1.0]
