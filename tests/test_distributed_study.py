"""A study on two Gloo ranks (the environment torchrun sets) against one process: every stored
number equal, and a rank killed mid-study ends the other within a bounded time; the rerun
completes only what is missing and ends with the same numbers."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.parallel import deal
from landscape.store.store import KINDS, Store

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Gloo ranks as local processes")

COMMAND = ["run", "tiny", "--quiet", "--no-cache"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path, rank: int | None, size: int, port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", LANDSCAPE_CACHE=str(tmp_path / "cache"))
    if rank is not None:
        env.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
    return env


def _launch(tmp_path, out, size: int) -> list[subprocess.Popen]:
    port = _port()
    return [subprocess.Popen([sys.executable, "-m", "landscape", *COMMAND, "--out", str(out)],
                             env=_env(tmp_path, r if size > 1 else None, size, port), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for r in range(size)]


def _wait(procs, timeout=300) -> list[tuple[int, str, str]]:
    return [(p.wait(timeout=timeout), p.stdout.read(), p.stderr.read()) for p in procs]


def _arrays(path) -> dict:
    out = {}
    with Store(str(path), "r") as st:
        for kind in KINDS:
            for name in st.names(kind):
                for key, value in st.read(kind, name).arrays.items():
                    out[(kind, name, key)] = value
    return out


def _same_numbers(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), key


def _summary(out) -> dict:
    s = json.loads((out / "summary.json").read_text())
    s.pop("timings")
    return s


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    out = tmp / "study"
    (rc, _, err), = _wait(_launch(tmp, out, 1))
    assert rc == 0, err[-2000:]
    return out


def test_two_ranks_store_the_numbers_of_one_process(one_process, tmp_path):
    out = tmp_path / "study"
    results = _wait(_launch(tmp_path, out, 2))
    assert [rc for rc, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    assert results[1][1] == ""  # rank 1 prints nothing; rank 0 the headline
    assert "report:" in results[0][1]
    _same_numbers(_arrays(one_process / "results"), _arrays(out / "results"))
    assert _summary(out) == _summary(one_process)
    # rank 1 never wrote into the study's folder: no scratch left behind, one lock holder
    assert sorted(os.listdir(out)) == sorted(os.listdir(one_process))


def test_a_killed_rank_ends_the_study_and_the_rerun_completes(one_process, tmp_path):
    out = tmp_path / "study"
    procs = _launch(tmp_path, out, 2)
    snapshots = out / "results" / "snapshots"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # some units stored, training still going
        if snapshots.is_dir() and len([f for f in os.listdir(snapshots) if f.endswith(".h5")]) >= 8:
            break
        if procs[0].poll() is not None:
            pytest.fail("the study finished before a rank could be killed")
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    rc, _, err = _wait(procs[:1], timeout=120)[0]
    assert time.monotonic() - t0 < 60
    assert rc == 1, err[-2000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("landscape: error: "), err[-2000:]
    procs[1].wait()
    kept = {f[:-3] for f in os.listdir(snapshots) if f.endswith(".h5")}
    assert len(kept) >= 8
    results = _wait(_launch(tmp_path, out, 2))
    assert [r[0] for r in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    trained = set(json.loads((out / "summary.json").read_text())["timings"]["trained_units"])
    assert trained and not trained & kept  # the rerun trained only what was missing
    _same_numbers(_arrays(one_process / "results"), _arrays(out / "results"))
    assert _summary(out) == _summary(one_process)


def test_deal_balances_the_work():
    # a:5 -> r0, b:4 -> r1, c:3 -> r1 (4 < 5), d:3 -> r0 (5 < 7), e:1 -> r1 (7 < 8)
    assert deal([("a", 5), ("b", 4), ("c", 3), ("d", 3), ("e", 1)], 2) == [["a", "d"], ["b", "c", "e"]]
    assert deal([("a", 1)], 3) == [["a"], [], []]
    assert deal([], 2) == [[], []]
    keys = [(f"u{i}", float(i % 4 + 1)) for i in range(20)]
    loads = [sum(dict(keys)[k] for k in part) for part in deal(keys, 3)]
    assert max(loads) - min(loads) <= 4  # within the largest item
