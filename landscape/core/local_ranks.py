"""`--procs N`: one machine's cores as N ranks, without typing torchrun.

The command starts N processes of `python -m landscape ARGV` with the environment torchrun gives
its ranks (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on 127.0.0.1), and waits for
them. It is a launcher only: it joins no process group itself, so the ranks are exactly the ones
`torchrun --standalone --nproc-per-node=N -m landscape ARGV` starts (landscape.core.distributed),
and their numbers are those of one process with the same threads per process. Rank 0 prints the
command's output and errors (the other ranks' go nowhere: an error on any rank
reaches rank 0 as the same line); the launcher exits with the first non-zero status of its ranks.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Sequence

import torch

from .distributed import ENV_VARS

AUTO = "auto"


def resolve(procs: str | int | None, device: str | None) -> int:
    """The ranks to start: an integer as given; "auto" the CPU's cores up to 2 (one per core
    pays for the ranks' extra memory and start-up only on small machines' studies), or 1 on a
    CUDA machine (one GPU is not shared between ranks); 1 under torchrun (already ranks)."""
    if os.environ.get("WORLD_SIZE"):
        return 1
    if procs in (None, AUTO):
        if (device or "auto") != "cpu" and torch.cuda.is_available():
            return 1
        return max(1, min(2, os.cpu_count() or 1))
    return int(procs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(n: int, argv: Sequence[str]) -> int:
    """Run `python -m landscape ARGV` as n local ranks; their exit status (the first non-zero one)."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    # torchrun's default: one thread per rank unless the user chose (the study's threads also apply)
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    procs = []
    try:
        for r in range(n):
            env = {**base, "WORLD_SIZE": str(n), "RANK": str(r), "LOCAL_RANK": str(r),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            # rank 0 prints; an error on any rank reaches rank 0 as the same line (distributed)
            quiet = subprocess.DEVNULL if r else None
            procs.append(subprocess.Popen([sys.executable, "-m", "landscape", *argv], env=env, stdout=quiet,
                                          stderr=quiet))
        codes = [p.wait() for p in procs]
    except BaseException:
        # Ctrl-C reaches every rank through the terminal; a SIGTERM to the launcher is passed on
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    # a rank ended by a signal: the shell's 128 + its number
    return next((c if c > 0 else 128 - c for c in codes if c != 0), 0)
