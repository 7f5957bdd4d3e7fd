"""`torchrun ... -m landscape COMMAND` (landscape/core/distributed.py): two Gloo ranks on the CPU give
every stored number of a one-process run, bit for bit; a bad input ends every rank with one line;
a killed or frozen rank ends every rank (and torchrun) within 60 s, rank 0 having saved what was
finished, and the rerun completes only what is missing with the uninterrupted run's numbers.

Ranks are started as torchrun starts them: `python -m torch.distributed.run --standalone
--nproc-per-node=2 -m landscape ...`, or as two processes with torchrun's environment variables
(so that each rank's output and exit status can be read, and a rank's death is not cleaned up by
torchrun). Each rank runs with one thread (torchrun's default: OMP_NUM_THREADS=1), and the
one-process run in the same way: the CPU convolutions round differently with another number of
threads (about 1e-7 relative), as they do in one process.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.store.store import Store

MODELS = textwrap.dedent("""
    import os, time, torch
    from torch import nn

    def make(num_classes=3):  # small enough that the engine evaluates several points per pass
        return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))

    class Slow(nn.Module):
        # a parameter outside Conv/Linear/BN: the engine's per-point path; SLOW_S per forward pass
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            time.sleep(float(os.environ.get("SLOW_S", "0")))
            return x * self.scale

    def slow(num_classes=3):
        return nn.Sequential(*make(num_classes), Slow())

    class RankShift(nn.Module):
        # a forward pass that depends on the rank: no input fingerprint can see it
        def forward(self, x):
            return x + 0.1 * int(os.environ.get("RANK", "0"))

    def by_rank(num_classes=3):
        return nn.Sequential(*make(num_classes), RankShift())
""")

DATA = ["--data", "tensors:train.pt", "--test-data", "tensors:test.pt", "--quiet"]
COMMON = ["--model", "models:make", *DATA]
SLOW = ["--model", "models:slow", *DATA]
PLANE = ["plane", "m0.pt", "--random", "filter", "--x", "-1:1:5", "--y", "-1:1:4", "--chunk", "3", *COMMON]
SLOW_PLANE = ["plane", "s0.pt", "--random", "filter", "--x", "-1:1:6", "--y", "-1:1:6", "--chunk", "3", *SLOW]
LIMIT = 60.0  # seconds within which every rank must end after a failure


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist")
    (path / "models.py").write_text(MODELS)
    sys.path.insert(0, str(path))
    sys.modules.pop("models", None)
    import models

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 2, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.save({"x": x[:24], "y": y[:24]}, path / "train.pt")
    torch.save({"x": x[24:], "y": y[24:]}, path / "test.pt")
    for i in range(4):
        torch.manual_seed(10 + i)
        torch.save(models.make().state_dict(), path / f"m{i}.pt")
    torch.manual_seed(20)
    torch.save(models.slow().state_dict(), path / "s0.pt")
    # what rank 1 sees in the input-check test: a folder where one checkpoint is missing
    (path / "other").mkdir()
    for name in ("models.py", "train.pt", "test.pt", "m0.pt", "m1.pt"):
        (path / "other" / name).write_bytes((path / name).read_bytes())
    # a rank whose m1.pt is not rank 0's
    (path / "differs").mkdir()
    for name in ("models.py", "train.pt", "test.pt", "m0.pt"):
        (path / "differs" / name).write_bytes((path / name).read_bytes())
    (path / "differs" / "m1.pt").write_bytes((path / "m2.pt").read_bytes())
    # a second machine: the same inputs at the same (relative) paths, and no store folder
    (path / "node1").mkdir()
    for name in ("models.py", "train.pt", "test.pt", "m0.pt", "m1.pt", "m2.pt", "m3.pt"):
        (path / "node1" / name).write_bytes((path / name).read_bytes())
    yield path
    sys.path.remove(str(path))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_of(work, **extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(work), "OMP_NUM_THREADS": "1", **extra}


def start_ranks(work, argv, n=2, cwd=None, **extra) -> list[subprocess.Popen]:
    """n ranks of `python -m landscape ARGV` with torchrun's environment variables."""
    port = free_port()
    procs = []
    for rank in range(n):
        env = env_of(work, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), RANK=str(rank),
                     LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(n), **extra)
        procs.append(subprocess.Popen([sys.executable, "-m", "landscape", *argv], cwd=(cwd or {}).get(rank, work),
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout=120.0) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        o, e = p.communicate(timeout=timeout)
        out.append((p.returncode, o, e))
    return out


def ranks(work, *argv, **kw) -> list[tuple[int, str, str]]:
    return finish(start_ranks(work, argv, **kw))


def single(work, *argv) -> tuple[int, str, str]:
    """The same command in one process (this one), with one thread as each rank has."""
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    torch.set_num_threads(1)
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return rc, out.getvalue(), err.getvalue()


def stored(path) -> dict[str, dict[str, np.ndarray]]:
    """Every dataset of every finished object, and the arguments each was computed with."""
    out = {}
    with Store(str(path), "r") as st:
        for kind in ("curves", "surfaces", "barriers", "ensembles", "directions"):
            for name in st.names(kind):
                obj = st.read(kind, name)
                out[f"{kind}/{name}"] = {**obj.arrays, "config": np.array(str(obj.attrs.get("config")))}
    return out


def assert_same_store(a, b) -> None:
    sa, sb = stored(a), stored(b)
    assert sa.keys() == sb.keys() and sa
    for key in sa:
        assert sa[key].keys() == sb[key].keys(), key
        for k, v in sa[key].items():
            assert v.dtype == sb[key][k].dtype and np.array_equal(v, sb[key][k], equal_nan=v.dtype.kind == "f"), \
                f"{key}: {k} differs"


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("landscape: error:") and "Traceback" not in err, err
    return lines[0]


def test_plane_under_torchrun_gives_the_one_process_numbers(work):
    """torchrun with 2 ranks: the stored surface and directions equal a one-process run's bit for
    bit, on the engine's path (K points per pass) whose numbers depend on how many points share a
    pass (so the ranks must form exactly the chunks one process forms); rank 0 alone prints."""
    from landscape.api import setup

    assert setup("models:make", "tensors:" + str(work / "train.pt"), snapshots=[str(work / "m0.pt")]
                 ).evaluator.batched is not None
    rc, out, err = single(work, *PLANE, "--out", "one")
    assert rc == 0, err
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "landscape", *PLANE, "--out", "two", "--json"], cwd=work, env=env_of(work),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_store(work / "one", work / "two")
    res = json.loads(proc.stdout)  # one JSON document: rank 1 printed nothing
    assert res["computed_now"] == 20 and res["diverged"] == 0
    # a rerun on 2 ranks has nothing to compute and writes nothing
    before = sorted((p, os.stat(p).st_mtime_ns) for p in glob.glob(str(work / "two" / "**"), recursive=True))
    (rc0, out0, err0), (rc1, out1, err1) = ranks(work, *PLANE, "--out", "two", "--json")
    assert rc0 == rc1 == 0, err0 + err1
    assert json.loads(out0)["computed_now"] == 0 and out1 == ""
    assert sorted((p, os.stat(p).st_mtime_ns) for p in glob.glob(str(work / "two" / "**"), recursive=True)) == before


@pytest.mark.parametrize("argv", [
    ["barriers", "m0.pt", "m1.pt", "m2.pt", "--num", "5", "--chunk", "2", *COMMON],
    ["interpolate", "m0.pt", "m3.pt", "--alpha-range", "-0.5:1.5:9", "--chunk", "2", *COMMON],
    ["ensemble", "m0.pt", "m1.pt", "m2.pt", "--model", "models:make", "--data", "tensors:test.pt",
     "--val-data", "tensors:train.pt", "--orders", "2", "--keep-predictions", "--batch-size", "7", "--quiet"],
], ids=["barriers", "interpolate", "ensemble"])
def test_two_ranks_give_the_one_process_numbers(work, argv):
    """barriers (chunks of several pairs in one round), a line, and an ensemble whose members run
    on both ranks (rank 0 puts each batch's logits together): every stored number, kept
    predictions included, equals the one-process run's."""
    name = argv[0]
    rc, out, err = single(work, *argv, "--out", f"one-{name}")
    assert rc == 0, err
    # rank 1 in another folder holding the inputs: it never creates or needs the store
    (rc0, out0, err0), (rc1, out1, err1) = ranks(work, *argv, "--out", f"two-{name}", cwd={1: work / "node1"})
    assert rc0 == rc1 == 0, err0 + err1
    assert out0 == out and out1 == "" and err1 == ""
    assert_same_store(work / f"one-{name}", work / f"two-{name}")
    assert not (work / "node1" / f"two-{name}").exists()


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_two_torchrun_agents_stand_in_for_two_machines(work, rendezvous):
    """The README's multi-node commands, with two torchrun agents on this machine standing in for
    two machines (one rank each, each in its own folder): node 1 needs the inputs at the same
    paths and no store folder; the numbers are the one-process run's."""
    port = str(free_port())
    nodes = {"static": lambda r: ["--nnodes=2", f"--node-rank={r}", "--nproc-per-node=1", "--master-addr=127.0.0.1",
                                  f"--master-port={port}"],
             "c10d": lambda r: ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test-{port}"]}[rendezvous]
    store = f"nodes-{rendezvous}"
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *nodes(r), "-m", "landscape", *PLANE,
                               "--out", store], cwd=work / ("node1" if r else ""), env=env_of(work),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    (rc0, out0, err0), (rc1, out1, err1) = finish(procs, timeout=180)
    assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
    assert "plane plane: 5 x 4 points" in out0 and out1 == ""
    if not (work / "one").exists():
        assert single(work, *PLANE, "--out", "one")[0] == 0
    assert_same_store(work / "one", work / store)
    assert not (work / "node1" / store).exists()


def test_a_bad_input_ends_every_rank_with_one_line(work):
    """A checkpoint that only rank 1 cannot read, a checkpoint that differs on rank 1, and a store
    that another writer holds (only rank 0 opens it): every rank exits with the error in one line
    and its exit status, nothing hangs, nothing is written."""
    argv = ["barriers", "m0.pt", "m1.pt", "m2.pt", "--num", "3", *COMMON, "--out", "refused"]
    t0 = time.monotonic()
    (rc0, _, err0), (rc1, _, err1) = ranks(work, *argv, cwd={1: work / "other"})
    assert rc0 == rc1 == 2
    assert one_line(err1) == "landscape: error: checkpoint 'm2.pt' does not exist"
    assert one_line(err0) == "landscape: error: rank 1: checkpoint 'm2.pt' does not exist"
    assert not (work / "refused").exists()

    # rank 1's m1.pt is another file: rank 0 refuses, naming the argument whose fingerprint differs
    (rc0, _, err0), (rc1, _, err1) = ranks(work, "interpolate", "m0.pt", "m1.pt", "--num", "3", *COMMON,
                                           "--out", "refused", cwd={1: work / "differs"})
    assert rc0 == rc1 == 2
    assert one_line(err0) == one_line(err1) == (
        "landscape: error: rank 1 does not see the inputs rank 0 sees (differs in b): every rank must read the "
        "same checkpoints and data at the same paths")
    assert not (work / "refused").exists()

    (work / "held").mkdir()
    (work / "held" / "store.json").write_text(json.dumps({"schema_version": 2, "attrs": {}}))
    (work / "held" / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                       "since": "now", "command": "pytest"}))
    (rc0, _, err0), (rc1, _, err1) = ranks(work, *PLANE, "--out", "held")
    assert rc0 == rc1 == 1
    assert "is being written by another process" in one_line(err0)
    assert "rank 0: store" in one_line(err1)
    assert sorted(os.listdir(work / "held")) == [".lock", "store.json"]
    assert time.monotonic() - t0 < 2 * LIMIT


def partial_done(store) -> int:
    path = os.path.join(store, "surfaces", ".partial-plane.h5")
    try:
        import h5py

        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


def wait_for_progress(store, points, procs, timeout=60.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = partial_done(store)
        if done >= points:
            return done
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    raise AssertionError(f"no progress saved in {timeout} s")


@pytest.fixture(scope="module")
def slow_reference(work):
    """The slow plane, uninterrupted, in one process (SLOW_S is 0 here: the sleep changes no number)."""
    rc, out, err = single(work, *SLOW_PLANE, "--out", "slow-ref", "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_ends_every_rank_and_the_rerun_completes(work, slow_reference, victim):
    """SIGKILL of a rank mid-run (without torchrun's help): the other rank ends within 60 s with a
    one-line error and exit status 1, the rounds saved before the kill are kept (and the lock
    released), and a rerun computes only what is missing and ends with the numbers of an
    uninterrupted run."""
    store = f"killed{victim}"
    procs = start_ranks(work, [*SLOW_PLANE, "--out", store], SLOW_S="0.04")
    saved = wait_for_progress(work / store, 12, procs)  # two rounds of two chunks of three points
    os.kill(procs[victim].pid, signal.SIGKILL)
    t0 = time.monotonic()
    results = finish(procs, timeout=LIMIT)
    assert time.monotonic() - t0 < LIMIT
    survivor = 1 - victim
    rc, _, err = results[survivor]
    assert results[victim][0] == -signal.SIGKILL and rc == 1
    assert "lost contact with another rank" in one_line(err) and "rerun the same command to resume" in err
    left = partial_done(work / store)
    assert left >= saved and left % 3 == 0  # nothing saved is lost; only whole chunks are saved
    if victim == 1:  # rounds of two chunks, and rank 0's own chunk of the round that failed
        assert left % 6 == 3 and not (work / store / ".lock").exists()
    if victim == 1:  # the rerun on 2 ranks
        (rc0, out0, err0), (rc1, _, err1) = ranks(work, *SLOW_PLANE, "--out", store, "--json")
        assert rc0 == rc1 == 0, err0 + err1
    else:  # the rerun in one process
        rc0, out0, err0 = single(work, *SLOW_PLANE, "--out", store, "--json")
        assert rc0 == 0, err0
    res = json.loads(out0)
    assert res["computed_now"] == 36 - left
    for m in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert res[m] == slow_reference[m]
    assert_same_store(work / "slow-ref", work / store)


def test_a_frozen_rank_is_found_by_the_heartbeat(work):
    """A rank that stops answering without closing its connections (SIGSTOP: what a lost network
    link looks like to the others): rank 0, waiting for it, ends within the heartbeat limit with
    one line, releasing the store; the frozen rank, once resumed, ends with one line too."""
    procs = start_ranks(work, [*SLOW_PLANE, "--out", "frozen"], SLOW_S="0.04", LANDSCAPE_HEARTBEAT_S="3")
    wait_for_progress(work / "frozen", 6, procs)
    os.kill(procs[1].pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        rc0, _, err0 = finish(procs[:1], timeout=LIMIT)[0]
    finally:
        os.kill(procs[1].pid, signal.SIGCONT)
    assert time.monotonic() - t0 < LIMIT
    assert rc0 == 1 and "rank 1 has shown no sign of life for 3 s" in one_line(err0)
    assert not (work / "frozen" / ".lock").exists()
    rc1, _, err1 = finish(procs[1:], timeout=LIMIT)[0]
    assert rc1 == 1 and "lost contact with another rank" in one_line(err1)


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_a_killed_rank_under_torchrun(work, slow_reference):
    """torchrun itself: after SIGKILL of rank 1, torchrun and rank 0 end within 60 s, rank 0 with
    a one-line error (its own output, from torchrun's per-rank logs); the rerun under torchrun
    completes with the uninterrupted run's numbers."""
    logs = work / "torchrun-logs"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = ["-m", "landscape", *SLOW_PLANE, "--out", "under-torchrun"]
    proc = subprocess.Popen([*torchrun, "--redirects", "3", "--log-dir", str(logs), *command], cwd=work,
                            env=env_of(work, SLOW_S="0.04"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    wait_for_progress(work / "under-torchrun", 6, [proc])
    workers = children(proc.pid)
    assert len(workers) == 2
    victim = next(p for p in workers if b"\0RANK=1\0" in b"\0" + open(f"/proc/{p}/environ", "rb").read())
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=LIMIT)
    assert time.monotonic() - t0 < LIMIT and proc.returncode != 0
    assert "exitcode  : -9" in err  # torchrun's report names the killed rank
    rank0 = glob.glob(str(logs / "*" / "attempt_0" / "0" / "stderr.log"))
    assert len(rank0) == 1
    line = one_line(open(rank0[0]).read())
    assert "rerun the same command to resume" in line
    rerun = subprocess.run([*torchrun, *command], cwd=work, env=env_of(work), capture_output=True, text=True,
                           timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_same_store(work / "slow-ref", work / "under-torchrun")


@pytest.mark.parametrize("argv", [
    ["plane", "m0.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", *DATA],
    ["ensemble", "m0.pt", "m1.pt", "m2.pt", "--data", "tensors:test.pt", "--quiet"],
], ids=["plane", "ensemble"])
def test_a_model_whose_forward_depends_on_the_rank_is_refused_before_work(work, argv):
    """Every rank computes a probe batch at the same weights before work: rank 1 differs, so every
    rank stops with one line naming it, and nothing is stored."""
    out = work / f"by-rank-{argv[0]}"
    (rc0, _, err0), (rc1, _, err1) = ranks(work, *argv, "--model", "models:by_rank", "--out", str(out))
    assert rc0 == rc1 == 2, (err0, err1)
    assert one_line(err0) == one_line(err1)
    assert "rank 1's model computes other outputs than rank 0's" in err0 and "depend on the rank" in err0
    for kind in ("surfaces", "ensembles"):
        assert not [f for f in os.listdir(out / kind) if not f.startswith(".")] if (out / kind).exists() else True
