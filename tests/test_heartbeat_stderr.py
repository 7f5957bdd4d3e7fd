"""The heartbeat thread (landscape.core.distributed._Heartbeat) must not take stderr from the main
thread: while its store operations run, what the main thread writes to stderr (through
sys.stderr, or straight to file descriptor 2 as C code does) still arrives. Each check runs in a
fresh process whose stderr is captured, as a rank's is under torchrun."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_main_thread_stderr_arrives_while_the_heartbeat_is_in_a_store_operation():
    """The heartbeat's own thread is held inside a store operation (a store whose `add` waits)
    while the main thread writes markers both ways: every marker reaches the captured stderr."""
    proc = run("""
        import os, sys, threading
        from landscape.core.distributed import World, _Heartbeat

        class HeldStore:
            def __init__(self):
                self.inside, self.release = threading.Event(), threading.Event()
            def add(self, key, amount):
                self.inside.set()
                self.release.wait(30)
                return 1

        store = HeldStore()
        hb = _Heartbeat(World(1, 2, 1), store, 0.5)  # beats every 0.1 s
        hb.thread.start()
        assert store.inside.wait(30), "the heartbeat made no store operation"
        assert not store.release.is_set()
        for i in range(3):
            sys.stderr.write(f"python-marker-{i}\\n")
            sys.stderr.flush()
            os.write(2, f"fd2-marker-{i}\\n".encode())
        print("wrote", flush=True)
        store.release.set()
        hb.stop()
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "wrote"
    for i in range(3):
        assert f"python-marker-{i}" in proc.stderr, proc.stderr[-3000:]
        assert f"fd2-marker-{i}" in proc.stderr, proc.stderr[-3000:]


def test_a_store_host_gone_stays_quiet_and_stderr_is_kept():
    """What the silencing was for: once the store's host has closed the connection, the
    heartbeat's next operation fails without c10d's multi-line C++ warning, and the main
    thread's stderr still arrives."""
    proc = run("""
        import gc, os, socket, sys, time
        from datetime import timedelta
        import torch.distributed as dist
        from landscape.core.distributed import World, _Heartbeat

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LANDSCAPE_HEARTBEAT_S="30")
        host = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))
        hb = _Heartbeat.start(World(1, 2, 1))
        assert hb is not None
        assert hb._ops([0]) == [0]
        del host  # the store's host goes away: its connections close
        gc.collect()
        time.sleep(0.5)
        try:
            hb._ops([0])
        except Exception as exc:
            print("failed:", type(exc).__name__, flush=True)
        else:
            print("no failure", flush=True)
        sys.stderr.write("python-marker\\n")
        sys.stderr.flush()
        os.write(2, b"fd2-marker\\n")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("failed:"), proc.stdout + proc.stderr[-3000:]
    assert "python-marker" in proc.stderr and "fd2-marker" in proc.stderr, proc.stderr[-3000:]
    assert "[c10d]" not in proc.stderr and "frame #" not in proc.stderr, proc.stderr[-3000:]
