"""Many processes and machines: `torchrun ... -m landscape COMMAND` (docs/design.md, "Scale-out").

There is no launch flag: a command started by torchrun (or with the same environment: WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) joins the process group the environment describes
(Gloo on the CPU; NCCL beside Gloo with one GPU per rank, from LOCAL_RANK, on CUDA) and splits the
pending work across the ranks. Everything else stays as in one process:

- One writer. Only rank 0 opens the store (lock, partial progress, finished objects); the other
  ranks read the inputs (checkpoints, data) and send rank 0 what they computed.
- Lock-step exchanges. Every collective this module makes is one *exchange*: each rank sends rank
  0 a payload (its finished unit, its view of the inputs, or its error), then rank 0 sends every
  rank one verdict (go on, a shared value, or the error that ends the command). All ranks run the
  same sequence of exchanges, so:
  * an error inside an exchange reaches every rank as the same one-line error;
  * a rank that fails between exchanges joins the others' next exchange with its error
    (`collective` does this for the API functions), so a bad input on any rank gives every rank
    the message and a non-zero exit, never a hang.
- Units are what one process computes and saves at a time (a chunk of grid points, the members'
  forward passes of one data batch), formed exactly as one process forms them, so every point is
  evaluated the same way: the numbers are those of a one-process run with the same number of
  threads per process. Rank k takes units k, k + N, k + 2N, ...; rank 0 saves after every round.
- Failure. A rank that dies closes its connections: the others' next collective fails at once and
  they end with a one-line LandscapeFault (exit 1), rank 0 having saved every finished round (and
  its own unit of the failed round). A rank that is alive but silent (a frozen process, a lost
  connection without a reset) is caught by a heartbeat through the launcher's TCP store: a rank
  waiting in an exchange while a peer has shown no sign of life for LANDSCAPE_HEARTBEAT_S seconds
  (default 30) reports it and exits. SIGTERM (torchrun stops the other ranks this way when one
  fails) ends a rank with the same one-line error, after rank 0 has finished the save in progress.
"""
from __future__ import annotations

import atexit
import functools
import os
import select
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

from .errors import LandscapeError, LandscapeFault
from .signals import mark_stop, resend_swallowed_stops

T = TypeVar("T")
R = TypeVar("R")

ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RESUME = "the chunks finished before are saved: rerun the same command to resume"


class PeerLost(LandscapeFault):
    """Contact with another rank was lost (it died, froze or its connection broke)."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """The one rank that touches the store and prints."""
        return self.rank == 0


def launched() -> World | None:
    """The ranks torchrun (or the same environment variables) describes; None for one process."""
    size = os.environ.get("WORLD_SIZE")
    if size is None:
        return None
    try:
        size_i = int(size)
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise LandscapeError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers: "
                             "launch with torchrun, or set all of " + ", ".join(ENV_VARS)) from None
    if size_i <= 1:
        return None
    if not 0 <= rank < size_i:
        raise LandscapeError(f"RANK={rank} is outside WORLD_SIZE={size_i}")
    return World(rank, size_i, local)


class _State:
    world = World()
    owns_group = False  # we initialised the process group (so we destroy it at exit)
    waiting = 0  # >0 while the main thread waits in an exchange (the heartbeat's watch)
    shielded = 0  # >0 while rank 0 saves: a SIGTERM then waits for the save to end
    running = 0  # >0 while a command runs (a SIGTERM ends it with a one-line error)
    pending_signal: int | None = None
    heartbeat: "_Heartbeat | None" = None
    on_abort: list[Callable[[], None]] = []


def world() -> World:
    """The ranks of the running command (rank 0 of 1 until a launched command has joined them)."""
    return _State.world


def active() -> bool:
    return _State.world.distributed


def _wants_cuda(device: str | torch.device | None) -> bool:
    text = str(device if device is not None else "auto").strip()
    return torch.cuda.is_available() if text == "auto" else text.startswith("cuda")


def init_from_env(device: str | torch.device | None = "auto") -> World:
    """Join the process group the environment describes (once per process; nothing for one
    process). On CUDA each rank takes GPU LOCAL_RANK as its current device, so `cuda` and `auto`
    mean that GPU; an explicit `cuda:N` is used as given."""
    if _State.world.distributed:
        return _State.world
    w = launched()
    if w is None:
        return _State.world
    import torch.distributed as dist

    if not dist.is_available():
        raise LandscapeError("this PyTorch build has no torch.distributed: run without torchrun")
    cuda = _wants_cuda(device)
    if cuda:
        count = torch.cuda.device_count()
        if count == 0:
            raise LandscapeError(f"device {str(device)!r}: CUDA is not available on this machine")
        if str(device).strip() in ("auto", "cuda"):
            if w.local_rank >= count:
                raise LandscapeError(f"local rank {w.local_rank} has no GPU: this machine has {count}; "
                                     f"start at most {count} processes per machine (--nproc-per-node)")
            torch.cuda.set_device(w.local_rank)
    if dist.is_initialized():  # the caller's own process group (a script that set one up)
        if dist.get_world_size() != w.size or dist.get_rank() != w.rank:
            raise LandscapeError("the process group does not match WORLD_SIZE/RANK")
    else:
        timeout = _env_seconds("LANDSCAPE_DIST_TIMEOUT", 1800.0)
        try:
            # Object collectives run on the CPU through Gloo; NCCL serves CUDA tensors.
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout))
        except Exception as exc:  # a rendezvous failure, whatever its type
            raise LandscapeFault(f"cannot join the other ranks at {os.environ.get('MASTER_ADDR')}:"
                                 f"{os.environ.get('MASTER_PORT')}: {_short(exc)}") from None
        _State.owns_group = True
    _State.world = w
    _State.heartbeat = _Heartbeat.start(w)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        resend_swallowed_stops()
    atexit.register(shutdown)
    return w


def shutdown() -> None:
    """Leave the ranks (at exit): stop the heartbeat and destroy the process group we made."""
    hb, _State.heartbeat = _State.heartbeat, None
    if hb is not None:
        hb.stop()
    if _State.owns_group:
        import torch.distributed as dist

        _State.owns_group = False
        try:
            dist.destroy_process_group()
        except Exception:  # peers may be gone already
            pass
    _State.world = World()


def _env_seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        raise LandscapeError(f"{name} must be a number of seconds") from None
    if not value > 0:
        raise LandscapeError(f"{name} must be positive")
    return value


def _short(exc: BaseException) -> str:
    """One line out of a collective's error: Gloo prefixes a source location and appends advice."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". This is typically")[0].rstrip(".")


# ------------------------------------------------------------------------------------------
# exchanges


_OK, _ERR = "ok", "err"


def _error_payload(exc: BaseException) -> tuple:
    if isinstance(exc, LandscapeError):
        kind, text = ("fault" if exc.exit_code == 1 else "error"), str(exc)
    elif isinstance(exc, (OSError, MemoryError)):
        kind, text = "fault", " ".join(str(exc).split()) or type(exc).__name__
    else:  # a bug or a library's error: the others learn its type and first line
        kind, text = "fault", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return (_ERR, kind, text, _State.world.rank)


def _agreed(exc: BaseException) -> BaseException:
    exc.__landscape_agreed__ = True  # type: ignore[attr-defined]
    return exc


def _raise_verdict(verdict: tuple, own: BaseException | None) -> None:
    _, kind, text, rank = verdict
    if own is not None:  # this rank failed too: its own error, as one process would give it
        raise _agreed(own)
    cls = LandscapeError if kind == "error" else LandscapeFault
    raise _agreed(cls(text if text.startswith("rank ") else f"rank {rank}: {text}"))


def _collective(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    _State.waiting += 1
    try:
        return fn(*args, **kwargs)
    except LandscapeError:  # SIGTERM while waiting
        raise
    except Exception as exc:  # Gloo/NCCL errors are RuntimeErrors of several kinds
        raise _agreed(PeerLost(f"lost contact with another rank ({_short(exc)}); {RESUME}")) from None
    finally:
        _State.waiting -= 1


def exchange(local: Callable[[], T] | None = None,
             at_rank0: Callable[[list[T]], R] | None = None) -> tuple[list[T] | None, R | None]:
    """One lock-step exchange. Every rank runs `local` and sends its value to rank 0; if no rank
    failed, rank 0 runs `at_rank0` on the values (in rank order) and its result reaches every rank.
    Returns (the values: on rank 0 only, else None; the shared result). An error in `local` on
    any rank, or in `at_rank0`, is raised on every rank (its own error on a rank that failed, else
    LandscapeError/LandscapeFault naming the rank): `at_rank0` does not run after another rank's
    error. A lost rank raises PeerLost. In one process: ([local()], at_rank0([local()]))."""
    w = _State.world
    if not w.distributed:
        values = [local() if local is not None else None]
        return values, (at_rank0(values) if at_rank0 is not None else None)
    import torch.distributed as dist

    own: BaseException | None = None
    try:
        payload: tuple = (_OK, local() if local is not None else None)
    except Exception as exc:  # every error goes to rank 0, then to every rank
        own, payload = exc, _error_payload(exc)
    received: list[tuple] | None = [None] * w.size if w.writer else None  # type: ignore[list-item]
    _collective(dist.gather_object, payload, received, dst=0)
    verdict: list[Any] = [None]
    if w.writer:
        assert received is not None
        errors = [p for p in received if p[0] == _ERR]
        if errors:
            verdict[0] = errors[0]
        else:
            try:
                verdict[0] = (_OK, at_rank0([p[1] for p in received]) if at_rank0 is not None else None)
            except Exception as exc:
                own, verdict[0] = exc, _error_payload(exc)
    _collective(dist.broadcast_object_list, verdict, src=0)
    if verdict[0][0] == _ERR:
        _raise_verdict(verdict[0], own)
    values = [p[1] for p in received] if received is not None else None
    return values, verdict[0][1]


def gather(local: Callable[[], T]) -> list[T] | None:
    """Every rank's value of `local` on rank 0 (None elsewhere); errors as in `exchange`."""
    return exchange(local)[0]


def on_rank0(fn: Callable[[], R]) -> R:
    """`fn` run on rank 0 alone (the store's writer); its result, or its error, on every rank."""
    return exchange(None, lambda _: fn())[1]  # type: ignore[return-value]


def same_as_rank0(value: T, fingerprint: Callable[[T], str]) -> T:
    """Rank 0's `value` on every rank: sent only where a rank's own copy differs (directions that
    another machine's arithmetic rounded differently, say)."""
    if not _State.world.distributed:
        return value
    shared = exchange(lambda: fingerprint(value),
                      lambda prints: value if len(set(prints)) > 1 else None)[1]
    return value if shared is None else shared


def join(exc: BaseException) -> None:
    """A rank that failed between exchanges: take part in the others' next exchange with the error,
    so that every rank ends with it (raises the agreed error)."""
    if not _State.world.distributed or getattr(exc, "__landscape_agreed__", False):
        return

    def fail() -> None:
        raise exc
    exchange(fail)


def collective(fn: Callable[..., R]) -> Callable[..., R]:
    """For a command every rank runs: joins the ranks the environment describes (its `device`
    argument picks NCCL and the GPU), and makes an error on any rank every rank's error."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        if launched() is None:
            return fn(*args, **kwargs)
        init_from_env(kwargs.get("device", "auto"))
        _State.running += 1
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            join(exc)
            raise
        finally:
            _State.running -= 1
    return wrapper


@contextmanager
def alone() -> Iterator[None]:
    """This rank computes without its peers (no collectives): inside, everything sees one process
    (a distributed study's rank analysing the items dealt to it, experiments.parallel)."""
    saved = _State.world
    _State.world = World(0, 1, saved.local_rank)
    try:
        yield
    finally:
        _State.world = saved


def share(n: int) -> list[int]:
    """The indices of n units that this rank takes: k, k + N, k + 2N, ..."""
    w = _State.world
    return list(range(w.rank, n, w.size))


def check_same_outputs(local: Callable[[], torch.Tensor], what: str = "model") -> None:
    """Before work: every rank's outputs of its `what` on the same probe batch at the same weights
    must be rank 0's. The inputs' fingerprints cannot see a forward pass that depends on the rank
    (one that reads RANK, LOCAL_RANK or a per-process random state): its ranks would mix numbers."""
    if not _State.world.distributed:
        return

    def at_rank0(outputs: list[torch.Tensor]) -> None:
        ref = outputs[0]
        for rank, out in enumerate(outputs[1:], 1):
            if out.shape != ref.shape:
                raise LandscapeError(f"rank {rank}'s {what} gives outputs of shape {list(out.shape)} where rank 0's "
                                     f"gives {list(ref.shape)} on the same probe batch: its forward pass must not "
                                     "depend on the rank")
            scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
            gap = float((out - ref).abs().max()) if ref.numel() else 0.0
            if not gap <= 1e-4 * scale:  # NaN fails too
                raise LandscapeError(f"rank {rank}'s {what} computes other outputs than rank 0's on the same "
                                     f"weights and probe batch (largest difference {gap:.3g}): its forward pass "
                                     "must not depend on the rank (RANK, LOCAL_RANK, a per-process random state)")

    exchange(lambda: local().detach().cpu().double(), at_rank0)


# ------------------------------------------------------------------------------------------
# signals and aborts


@contextmanager
def shielded() -> Iterator[None]:
    """A save that a SIGTERM must not cut short: the signal takes effect when it ends."""
    _State.shielded += 1
    try:
        yield
    finally:
        _State.shielded -= 1
        if not _State.shielded and _State.pending_signal is not None:
            _State.pending_signal = None
            _terminated()


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _State.running:  # the command has ended (its message printed or being printed): let it exit
        return
    if _State.shielded:
        _State.pending_signal = signum
        return
    _terminated()


def _terminated() -> None:
    raise mark_stop(_agreed(LandscapeFault(f"stopped by SIGTERM (torchrun stops every rank when one fails, or "
                                           f"the job was cancelled); {RESUME}")), signal.SIGTERM)


@contextmanager
def on_abort(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run `cleanup` (release the store's lock) if the heartbeat must end this process abruptly."""
    _State.on_abort.append(cleanup)
    try:
        yield
    finally:
        _State.on_abort.remove(cleanup)


class _Heartbeat:
    """Each rank bumps a counter in the launcher's TCP store every second. A rank that waits in an
    exchange while a peer's counter has not moved for `limit` seconds (or the store cannot be
    reached for that long) ends: a frozen peer or a lost connection would otherwise hold it in
    Gloo until the collective timeout.

    A store operation on a broken connection (the store's host died) makes c10d print a
    multi-line C++ warning with a stack, which would follow the one-line error. File descriptor 2
    is the whole process's (silencing it would lose the main thread's messages), so instead the
    thread looks at its connection's socket before each operation (`conn`: its descriptor, when it
    can be told apart) and does not use a connection that the host has closed or reset (only a
    host that dies during one of its operations can still make c10d print)."""

    def __init__(self, w: World, store: Any, limit: float, conn: int | None = None) -> None:
        self.world, self.store, self.limit, self.conn = w, store, limit, conn
        run = os.environ.get("TORCHELASTIC_RUN_ID", os.environ.get("MASTER_PORT", ""))
        self.prefix = f"landscape/heartbeat/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="landscape-heartbeat", daemon=True)
        self.interval = min(1.0, limit / 5)
        now = time.monotonic()
        self.reached = now
        self.seen = {r: (0, now) for r in range(w.size) if r != w.rank}

    @classmethod
    def start(cls, w: World) -> "_Heartbeat | None":
        import torch.distributed as dist

        limit = _env_seconds("LANDSCAPE_HEARTBEAT_S", 30.0)
        before = _sockets()
        try:
            port = int(os.environ["MASTER_PORT"])
            store = dist.TCPStore(os.environ["MASTER_ADDR"], port, is_master=False,
                                  timeout=timedelta(seconds=max(1.0, min(10.0, limit / 3))))
        except Exception:  # no store to reach: the collectives' own errors still end a run
            return None
        hb = cls(w, store, limit, _connection_to(port, before))
        try:  # the first beat before any work: a rank frozen from its first round on is judged too
            hb._ops([])
        except Exception:
            return None
        hb.thread.start()
        return hb

    def _key(self, rank: int) -> str:
        return f"{self.prefix}{rank}"

    def _ops(self, peers: Sequence[int]) -> list[int]:
        if self.conn is not None and _closed(self.conn):
            raise ConnectionError("the store's host closed the connection")
        self.store.add(self._key(self.world.rank), 1)
        return [self.store.add(self._key(r), 0) for r in peers]

    def _beat(self) -> None:
        """Bump this rank's counter and read the peers' (a store operation may block for long when
        the store's host is frozen: the judging runs in its own thread)."""
        peers = [r for r in range(self.world.size) if r != self.world.rank]
        while not self.stop_event.wait(self.interval):
            try:
                counts = self._ops(peers)
            except Exception:  # judged by how long it lasts
                continue
            now = time.monotonic()
            for r, count in zip(peers, counts):
                if count != self.seen[r][0]:
                    self.seen[r] = (count, now)
            self.reached = now

    def _run(self) -> None:
        threading.Thread(target=self._beat, name="landscape-heartbeat-beat", daemon=True).start()
        while not self.stop_event.wait(self.interval):
            now = time.monotonic()
            if not _State.waiting:
                continue
            if now - self.reached > self.limit:
                self._abort(f"cannot reach the launcher's store at {os.environ.get('MASTER_ADDR')}:"
                            f"{os.environ.get('MASTER_PORT')} for {self.limit:.0f} s (rank 0 or the launcher "
                            "is frozen or gone, or the connection was lost)")
            # a peer that never beat has no heartbeat (its store client failed): not judged
            silent = [r for r, (count, at) in self.seen.items() if count > 0 and now - at > self.limit]
            if silent:
                self._abort(f"rank {silent[0]} has shown no sign of life for {self.limit:.0f} s "
                            "(a frozen process or a lost connection)")

    def _abort(self, why: str) -> None:
        # The main thread is blocked in a collective: no save is in progress, and only ending the
        # process frees it. Release the store's lock first, as the normal exit path would.
        print(f"landscape: error: lost contact with another rank: {why}; {RESUME}", file=sys.stderr, flush=True)
        for cleanup in list(_State.on_abort):
            try:
                cleanup()
            except Exception:
                pass
        os._exit(1)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=2.0)


def _sockets() -> set[int]:
    """This process's socket descriptors (empty where /proc/self/fd cannot tell)."""
    out = set()
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                out.add(int(name))
        except (OSError, ValueError):
            pass
    return out


def _connection_to(port: int, before: set[int]) -> int | None:
    """The one socket opened since `before` whose peer is `port` (a store client's connection);
    None when there is not exactly one or it cannot be looked at without side effects."""
    if socket.getdefaulttimeout() is not None or not hasattr(select, "poll"):
        return None  # socket(fileno=) would make the shared descriptor non-blocking
    found = []
    for fd in _sockets() - before:
        try:
            dup = os.dup(fd)
        except OSError:
            continue
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            continue
        with sock:
            try:
                peer = sock.getpeername()
            except OSError:
                continue
        if isinstance(peer, tuple) and len(peer) >= 2 and peer[1] == port:
            found.append(fd)
    return found[0] if len(found) == 1 else None


def _closed(fd: int) -> bool:
    """Whether the peer of connection `fd` has closed or reset it (a look that reads nothing)."""
    poll = select.poll()
    poll.register(fd, select.POLLIN | getattr(select, "POLLRDHUP", 0))
    try:
        events = poll.poll(0)
    except OSError:
        return False
    gone = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
    return any(ev & gone for _, ev in events)
