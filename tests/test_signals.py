"""SIGTERM and SIGHUP end a command as Ctrl-C does: one line, the store's lock released, the
finished chunks kept, and the same command resumes (exit status 128 + the signal's number)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

USER_MODEL = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
              "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, num_classes))\n")


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "signals_user_mlp.py").write_text(USER_MODEL)
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(4000, 6, generator=g), "y": torch.randint(0, 3, (4000,), generator=g)}, tmp_path / "d.pt")
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 64), torch.nn.Tanh(),
                                   torch.nn.Linear(64, 3)).state_dict(), tmp_path / "m.pt")
    return tmp_path


ARGV = [sys.executable, "-m", "landscape", "plane", "m.pt", "--random", "filter", "--x", "-1:1:40", "--y",
        "-1:1:40", "--chunk", "8", "--model", "signals_user_mlp:make", "--data", "tensors:d.pt", "--out", "s",
        "--quiet", "--json"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_stop_signal_is_one_line_releases_the_lock_and_the_rerun_resumes(folder, sig):
    env = {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(ARGV, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = folder / "s" / "surfaces" / ".partial-plane.h5"
    deadline = time.time() + 120
    while not partial.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the plane finished before it could be stopped: make the grid larger"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert out == "" and err.count("\n") == 1 and f"stopped by {signal.Signals(sig).name}" in err, err
    assert not (folder / "s" / ".lock").exists()
    assert not [f for f in os.listdir(folder / "s" / "surfaces") if f.endswith(".tmp")]
    rerun = subprocess.run(ARGV, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    res = json.loads(rerun.stdout)
    assert 0 < res["computed_now"] < res["points"] == 1600  # the chunks finished before were kept


# A factory whose object's finaliser is running when SIGTERM arrives: the handler's exception is
# raised inside `__del__`, where Python only prints "Exception ignored" and carries on.
FINALISER_MODEL = USER_MODEL + """
import os, signal


class _Dies:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        total = 0
        for i in range(100000):  # bytecodes for the handler to run on, still inside __del__
            total += i


def make_and_finalise(num_classes=3, **kw):
    _Dies()  # dropped at once: its __del__ runs here
    return make(num_classes, **kw)
"""


def test_a_stop_signal_raised_inside_a_finaliser_still_ends_the_command_in_one_line(folder):
    """torchrun's SIGTERM often lands in one of torch's weakref callbacks; it must not be lost."""
    (folder / "signals_user_mlp.py").write_text(FINALISER_MODEL)
    env = {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "landscape", "interpolate", "m.pt", "m.pt", "--num", "3", "--model",
            "signals_user_mlp:make_and_finalise", "--data", "tensors:d.pt", "--out", "s", "--quiet"]
    proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stderr.count("\n") == 1 and "stopped by SIGTERM" in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr


def test_the_ranks_sigterm_raised_inside_a_finaliser_reaches_the_command(tmp_path):
    """The same under torchrun: the ranks' own SIGTERM handler (core.distributed)."""
    script = """
import os, signal
from landscape.core import distributed
from landscape.core.errors import LandscapeFault
from landscape.core.signals import resend_swallowed_stops

class Dies:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for i in range(100000):
            pass

signal.signal(signal.SIGTERM, distributed._on_sigterm)
resend_swallowed_stops()
distributed._State.running = 1
try:
    Dies()
    for i in range(10 ** 7):  # the re-delivered signal lands here
        pass
    print("went on")
except LandscapeFault as exc:
    print("stopped:", exc)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("stopped: stopped by SIGTERM"), (proc.stdout, proc.stderr)
    assert "Exception ignored" not in proc.stderr


@pytest.mark.parametrize("delay", [0.2, 0.6])
def test_ctrl_c_while_the_toolkit_is_still_importing_is_one_line(folder, delay):
    """SIGINT in the first second or so (torch being imported) is exit 130 and one line."""
    env = {**os.environ, "PYTHONPATH": str(folder)}
    proc = subprocess.Popen([sys.executable, "-m", "landscape", "info", "nothing-here"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err, err


def test_a_sigkilled_connect_resumes_mid_training_with_the_uninterrupted_numbers(folder):
    """SIGKILL (no handler runs) once a few epochs are saved: the rerun trains only the remaining
    epochs and stores the numbers of a run that was never interrupted."""
    import h5py

    from landscape.store.store import Store

    torch.manual_seed(1)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 64), torch.nn.Tanh(),
                                   torch.nn.Linear(64, 3)).state_dict(), folder / "m2.pt")
    env = {**os.environ, "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}

    def argv(out):
        return [sys.executable, "-m", "landscape", "connect", "m.pt", "m2.pt", "--epochs", "20", "--num", "5",
                "--train-batch-size", "32", "--name", "c", "--model", "signals_user_mlp:make", "--data",
                "tensors:d.pt", "--out", out, "--quiet", "--json"]
    whole = subprocess.run(argv("whole"), cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(argv("s"), cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    progress = folder / "s" / "snapshots" / ".partial-c-bend.h5"

    def saved_epoch() -> int:
        try:
            with h5py.File(progress, "r", locking=False) as f:
                return int(f.attrs["epoch"])
        except (OSError, KeyError):
            return 0
    deadline = time.time() + 120
    while saved_epoch() < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the training ended before it could be killed: give it more epochs"
    proc.kill()
    proc.communicate(timeout=60)
    killed_at = saved_epoch()
    assert 3 <= killed_at < 20
    rerun = subprocess.run(argv("s"), cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    a, b = json.loads(whole.stdout), json.loads(rerun.stdout)
    assert a["epochs_trained_now"] == 20 and b["epochs_trained_now"] == 20 - killed_at  # resumed, not restarted
    for key in ("train_loss", "line_train_loss", "barriers", "history"):
        assert a[key] == b[key], key
    with Store(str(folder / "whole")) as st_a, Store(str(folder / "s")) as st_b:
        bend_a, bend_b = st_a.read_snapshot("c-bend"), st_b.read_snapshot("c-bend")
        assert torch.equal(bend_a.params, bend_b.params)
        assert st_b.unfinished("snapshots") == []
