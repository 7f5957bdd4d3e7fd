"""The `landscape` command on a user's own model (`module:factory`), `.pt` checkpoints and
`tensors:PATH` data: numbers against plain forward passes, resume after a kill, bad input."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.cli import main

USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    def make(num_classes=3):
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))

    def make_wide(num_classes=3):
        return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, num_classes))
""")


WORK_FILES = {"user_model.py": USER_MODULE}


def make_work(tmp_path):
    """The `work` fixture's problem (tests/conftest.py): train/test data, three checkpoints (one
    wrapped the way DataParallel saves it) and a wider model's."""
    import user_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 2, 6, 6, generator=g)
    y = torch.randint(0, 3, (90,), generator=g)
    torch.save({"x": x[:60], "y": y[:60]}, tmp_path / "train.pt")
    torch.save({"x": x[60:], "y": y[60:]}, tmp_path / "test.pt")
    for i in range(3):
        torch.manual_seed(10 + i)
        m = user_model.make()
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5), mod.running_var.uniform_(0.5, 1.5)
        torch.save(m.state_dict() if i != 2 else {"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}},
                   tmp_path / f"m{i}.pt")
    torch.manual_seed(20)
    torch.save(user_model.make_wide().state_dict(), tmp_path / "wide.pt")


COMMON = ["--model", "user_model:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt", "--quiet"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def plain_metrics(state: dict, split: str) -> tuple[float, float]:
    """An independent forward pass in fp64 of the user's model loaded with `state`."""
    import user_model

    m = user_model.make().double()
    m.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    m.eval()
    d = torch.load(f"{split}.pt")
    with torch.no_grad():
        out = m(d["x"].double())
    return float(nn.functional.cross_entropy(out, d["y"])), float((out.argmax(1) == d["y"]).double().mean())


def load_state(path):
    s = torch.load(path)
    return {k.removeprefix("module."): v for k, v in s.get("state_dict", s).items()}


def test_interpolate_matches_plain_forward(work, capsys):
    res = run_json(capsys, "interpolate", "m0.pt", "m2.pt", "--num", "5", "--out", "s", "--bn", "keep", *COMMON)
    assert res["bn_mode"] == "keep"
    sa, sb = load_state("m0.pt"), load_state("m2.pt")
    for i, alpha in enumerate(res["alphas"]):
        mix = {k: (1 - alpha) * sa[k] + alpha * sb[k] if sa[k].is_floating_point() else sa[k] for k in sa}
        for split in ("train", "test"):
            loss, acc = plain_metrics(mix, split)
            assert res[f"{split}_loss"][i] == pytest.approx(loss, rel=1e-5)
            assert res[f"{split}_acc"][i] == pytest.approx(acc)
    chord = np.linspace(res["test_loss"][0], res["test_loss"][-1], 5)
    assert res["barriers"]["test_loss"]["barrier"] == pytest.approx(max(np.asarray(res["test_loss"]) - chord))
    with h5py.File("s/curves/interpolate.h5", "r") as f:  # each object is a self-contained HDF5 file
        assert f.attrs["schema_version"] == 2
        np.testing.assert_allclose(f["test_loss"][()], res["test_loss"])
        assert f.attrs["bn_mode"] == "keep"
    code, out, _ = run_cli(capsys, "interpolate", "m0.pt", "m2.pt", "--num", "5", *COMMON)
    assert code == 0 and "test_loss" in out and "barrier" in out


def test_barriers_plane_plot_info(work, capsys):
    res = run_json(capsys, "barriers", "m0.pt", "m1.pt", "m2.pt", "--num", "5", "--out", "s", *COMMON)
    assert res["bn_mode"] == "recompute"  # auto: the model has BatchNorm and --data is given
    mat = np.asarray(res["test_loss_barrier"])
    assert mat.shape == (3, 3) and np.allclose(mat, mat.T) and np.all(np.diag(mat) == 0)
    line = run_json(capsys, "interpolate", "m1.pt", "m2.pt", "--num", "5", *COMMON)
    assert mat[1, 2] == pytest.approx(line["barriers"]["test_loss"]["barrier"], rel=1e-6)

    res = run_json(capsys, "plane", "m0.pt", "--through", "m1.pt", "m2.pt", "--x", "-0.2:1.2:4",
                   "--y", "-0.2:1.2:3", "--out", "s", "--bn", "keep", "--coords", "distance", *COMMON)
    assert np.asarray(res["test_loss"]).shape == (4, 3)
    # the corner point, by an independent forward pass: weights and BN buffers are the same affine
    # combination v0 + α(v1 − v0) + β(v2 − v0) of the three snapshots
    s0, s1, s2 = (load_state(f"m{i}.pt") for i in range(3))
    names = [k for k, v in s0.items() if k in dict(__import__("user_model").make().named_parameters())]
    v0, v1, v2 = (torch.cat([s[k].reshape(-1).double() for k in names]) for s in (s0, s1, s2))
    u = (v1 - v0) / (v1 - v0).norm()
    w = (v2 - v0) - ((v2 - v0) @ u) * u
    w /= w.norm()
    proj = {p["name"]: (p["x"], p["y"]) for p in res["projections"]}
    assert proj["m1.pt"] == pytest.approx(((v1 - v0).norm().item(), 0.0), abs=1e-4)
    assert proj["m2.pt"] == pytest.approx((((v2 - v0) @ u).item(), ((v2 - v0) @ w).item()), abs=1e-4)
    pt = v0 + res["xcoordinates"][3] * u + res["ycoordinates"][2] * w
    ab = torch.linalg.lstsq(torch.stack([v1 - v0, v2 - v0], 1), (pt - v0).unsqueeze(1)).solution.squeeze(1)
    state = {k: (s0[k].double() + ab[0] * (s1[k].double() - s0[k].double()) + ab[1] * (s2[k].double() - s0[k].double()))
             if s0[k].is_floating_point() else s0[k] for k in s0}
    loss, acc = plain_metrics(state, "test")
    assert res["test_loss"][3][2] == pytest.approx(loss, rel=1e-4)
    assert res["test_acc"][3][2] == pytest.approx(acc)

    res = run_json(capsys, "plane", "m0.pt", "--random", "filter", "--seed", "3", "--x", "-1:1:3", "--y", "-1:1:2",
                   "--name", "rnd", "--out", "s", "--bn", "recompute", *COMMON)
    assert np.asarray(res["train_loss"]).shape == (3, 2)

    # PCA of a three-point trajectory ending at the centre spans exactly its plane
    res = run_json(capsys, "plane", "m0.pt", "--pca", "m1.pt", "m2.pt", "m0.pt", "--name", "pca", "--out", "s",
                   *COMMON)
    assert res["kind"] == "pca" and sum(res["explained_variance_ratio"]) == pytest.approx(1.0)
    assert all(p["distance"] < 1e-4 for p in res["projections"])
    assert np.isfinite(np.asarray(res["test_loss"], dtype=float)).all()

    info = run_json(capsys, "info", "s")
    assert set(info["surfaces"]) == {"plane", "rnd", "pca"} and "barriers" in info["barriers"]
    assert info["surfaces"]["plane"]["datasets"]["test_loss"] == [4, 3]
    for name in ("plane", "rnd", "barriers", "interpolate"):
        code, out, err = run_cli(capsys, "plot", "s", name, "-o", f"{name}.png") if name != "interpolate" else (0, "", "")
        assert code == 0, err
    for style in ("filled", "heatmap", "3d"):
        assert run_cli(capsys, "plot", "s", "plane", "--style", style, "--log", "-o", f"p_{style}.pdf")[0] == 0
    assert (work / "plane.png").stat().st_size > 1000


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.getcwd())
    from landscape.store import store
    from landscape.cli import main
    calls = {"n": 0}
    original = store.Store._write_grid
    def dying_write(self, grid, final):
        # die while the third chunk's progress is being saved: the worst moment for a writer
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, grid, final)
    store.Store._write_grid = dying_write
    main(sys.argv[1:])
""")


def test_resume_after_kill_gives_identical_numbers(work, capsys, monkeypatch):
    args = ["plane", "m0.pt", "--random", "layer", "--x", "-1:1:5", "--y", "-1:1:4", "--bn", "recompute",
            "--chunk", "4", *COMMON]
    (work / "kill.py").write_text(KILL_SCRIPT)
    proc = subprocess.run([sys.executable, "kill.py", *args, "--out", "killed"], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    with h5py.File("killed/surfaces/.partial-plane.h5", "r") as f:  # the progress saved before the kill
        done = f["done"][()]
        assert 0 < done.sum() < done.size
    assert not os.path.exists("killed/surfaces/plane.h5")
    resumed = run_json(capsys, *args, "--out", "killed")
    assert resumed["computed_now"] == done.size - done.sum()  # only what was missing
    fresh = run_json(capsys, *args, "--out", "fresh")
    for m in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert resumed[m] == fresh[m]
    with h5py.File("killed/surfaces/plane.h5", "r") as f:
        assert f["done"][()].all()
    # a finished result is not recomputed
    from landscape.evaluate.engine import Evaluator

    def no_evaluation(*a, **k):
        raise AssertionError("a finished point was evaluated again")

    monkeypatch.setattr(Evaluator, "evaluate", no_evaluation)
    again = run_json(capsys, *args, "--out", "killed")
    assert again["test_loss"] == fresh["test_loss"]


def digest(path):
    """A file's bytes, or a folder's whole tree (names and bytes); None if absent."""
    if os.path.isdir(path):
        h = hashlib.sha1()
        for root, dirs, files in sorted(os.walk(path)):
            for name in sorted(files):
                full = os.path.join(root, name)
                h.update(os.path.relpath(full, path).encode() + open(full, "rb").read())
        return h.hexdigest()
    return hashlib.sha1(open(path, "rb").read()).hexdigest() if os.path.exists(path) else None


def assert_one_line_error(capsys, argv, needle, protect=()):
    before = {p: digest(p) for p in protect}
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landscape: error:"), err
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), lines[0]
    for p, d in before.items():
        assert digest(p) == d, f"{p} changed"


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bad_inputs(work, capsys):
    assert run_cli(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "3", "--out", "keep", *COMMON)[0] == 0
    (work / "notes.txt").write_text("not hdf5")
    import shutil
    shutil.copytree("keep", "trunc")
    raw = open("keep/curves/interpolate.h5", "rb").read()
    (work / "trunc/curves/interpolate.h5").write_bytes(raw[: len(raw) // 3])
    torch.save({"w": Evil()}, work / "evil.pt")
    torch.save({"x": torch.zeros(0, 2, 6, 6), "y": torch.zeros(0, dtype=torch.long)}, work / "empty.pt")
    torch.save({"x": torch.zeros(4, 2, 6, 6), "y": torch.tensor([0, 1, 7, 2])}, work / "badlabels.pt")
    with h5py.File("other.h5", "w") as f:
        f.create_dataset("junk", data=[1])
    (work / "somefolder").mkdir()
    (work / "somefolder" / "data.csv").write_text("1,2")
    keep = ["keep", "notes.txt", "trunc", "other.h5", "somefolder"]
    e = lambda argv, needle: assert_one_line_error(capsys, argv, needle, keep)  # noqa: E731

    e(["info", "missing"], "does not exist")
    e(["info", "notes.txt"], "not a store folder")
    e(["plot", "trunc", "interpolate"], "truncated or corrupted")
    e(["info", "other.h5"], "single HDF5 file")
    e(["info", "somefolder"], "not a landscape store")
    e(["interpolate", "m0.pt", "m1.pt", "--out", "notes.txt", *COMMON], "not a store folder")
    e(["interpolate", "m0.pt", "m1.pt", "--num", "3", "--out", "trunc", *COMMON], "truncated or corrupted")
    e(["interpolate", "m0.pt", "m1.pt", "--out", "somefolder", *COMMON], "not a landscape store")
    # info lists a damaged object instead of failing on it
    code, out, err = run_cli(capsys, "info", "trunc")
    assert code == 0 and "DAMAGED" in out
    e(["interpolate", "m0.pt", "evil.pt", *COMMON], "arbitrary code")
    assert not (work / "pwned").exists()
    e(["interpolate", "m0.pt", "wide.pt", *COMMON], "does not fit the model")
    e(["interpolate", "m0.pt", "nope.pt", *COMMON], "does not exist")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "user_model:make", "--data", "tensors:empty.pt"], "empty")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "user_model:make", "--data", "tensors:badlabels.pt",
       "--num-classes", "3"],
      "label 7 at sample 2")
    e(["plane", "m0.pt", "--random", "filter", "--x", "1:0:3", *COMMON], "malformed")
    e(["plane", "m0.pt", "--random", "filter", "--y", "abc", *COMMON], "malformed")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "no_colon_here", "--data", "tensors:train.pt"], "malformed model spec")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "nosuchmodule:make", "--data", "tensors:train.pt"], "cannot import")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "user_model:make", "--data", "csv:train.csv"], "malformed data spec")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "user_model:make", "--data", "tensors:"], "malformed data spec")
    e(["interpolate", "m0.pt", "m1.pt", "--model", "mlp", "--data", "tensors:train.pt"], "does not fit")
    # different arguments on an existing name are refused, the stored curve kept
    e(["interpolate", "m0.pt", "m2.pt", "--num", "3", "--out", "keep", *COMMON], "different arguments")

    # snapshots of different architectures on one line (store snapshots carry their layout)
    import user_model

    from landscape.core.checkpoints import Snapshot
    from landscape.store.store import Store

    with Store("snaps", "a") as st:
        st.write_snapshot(Snapshot.from_model(user_model.make(), "narrow"))
        st.write_snapshot(Snapshot.from_model(user_model.make_wide(), "wide"))
    e(["interpolate", "snaps:narrow", "snaps:wide", *COMMON], "different architectures")
    e(["interpolate", "snaps:narrow", "nostore:x", *COMMON], "neither a checkpoint file nor STORE:NAME")

    # a store another process is writing (HDF5's own locking plays no part: the store's lock file does)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from landscape.store.store import Store; "
                               "s = Store('keep', 'a'); s.lock(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        e(["interpolate", "m0.pt", "m2.pt", "--num", "3", "--name", "new", "--out", "keep", *COMMON],
          f"being written by another process (pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    # the earlier result is intact, and the dead holder's lock is taken over
    assert run_json(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "3", "--out", "keep", *COMMON)["computed_now"] == 0
    assert run_cli(capsys, "interpolate", "m0.pt", "m2.pt", "--num", "3", "--name", "new", "--out", "keep",
                   *COMMON)[0] == 0


def test_store_snapshot_roundtrip_and_overwrite_flag(work, capsys):
    import user_model

    from landscape.core.checkpoints import Snapshot
    from landscape.store.store import Store

    m = user_model.make()
    with Store("st", "a") as st:
        st.write_snapshot(Snapshot.from_model(m, "s0", method="local_de", member=0, seed=7))
    with Store("st", "r") as st:
        s = st.read_snapshot("s0")
    assert s.meta == {"method": "local_de", "member": 0, "seed": 7}
    m2 = user_model.make()
    s.load_into(m2)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    # a snapshot from a store is usable on the command line
    res = run_json(capsys, "interpolate", "st:s0", "m1.pt", "--num", "3", *COMMON)
    assert res["a"] == "st:s0"
    assert run_cli(capsys, "interpolate", "m0.pt", "m1.pt", "--num", "3", "--out", "st", *COMMON)[0] == 0
    assert run_cli(capsys, "interpolate", "m0.pt", "m2.pt", "--num", "3", "--out", "st", "--overwrite",
                   *COMMON)[0] == 0


def test_exit_status_by_kind_of_failure(work, capsys, monkeypatch):
    """2 for bad input, 1 for a fault of the machine, 130 for Ctrl-C: always one line."""
    from landscape import api

    for exc, status in ((KeyboardInterrupt(), 130), (OSError(28, "No space left on device"), 1),
                        (MemoryError(), 1)):
        def fail(*a, _exc=exc, **k):
            raise _exc
        monkeypatch.setattr(api, "interpolate", fail)
        code, out, err = run_cli(capsys, "interpolate", "m0.pt", "m1.pt", *COMMON)
        assert code == status and len(err.strip().splitlines()) == 1 and "Traceback" not in err
