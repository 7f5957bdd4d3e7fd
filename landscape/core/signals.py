"""Stop signals that must reach the command, wherever they land.

A signal handler raises in the main thread at whatever bytecode it interrupts. When that is a
finaliser (`__del__`, a weakref callback: torch's WeakKeyDictionary fires them all the time),
Python prints "Exception ignored in ..." and carries on, so a SIGTERM from torchrun or Ctrl-C
would be swallowed and the command would go on until it is killed, with no line at all.
`resend_swallowed_stops` hands such a swallowed stop back to its handler a millisecond later,
through SIGALRM: by then the finaliser (and the unraisable hook, where raising would be lost
too) has returned. Landing in a finaliser again just repeats the round.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

# Set on an exception that a stop signal raised: the signal to deliver again if it is swallowed.
STOP_SIGNAL_ATTR = "stop_signum"

_pending: list[tuple[int, Any]] = []  # (stop signal, the SIGALRM handler to put back)


def mark_stop(exc: BaseException, signum: int) -> BaseException:
    """Tag `exc` as raised by stop signal `signum` (so a swallowed one is delivered again)."""
    setattr(exc, STOP_SIGNAL_ATTR, int(signum))
    return exc


def _deliver_again(_alarm: int, frame: Any) -> None:
    signum, previous_alarm = _pending.pop()
    signal.signal(signal.SIGALRM, previous_alarm)
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, frame)  # raises in the code the alarm interrupted
    else:  # the command's handler is gone: the signal's own default action
        signal.raise_signal(signum)


def _hook(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        signum = getattr(exc, STOP_SIGNAL_ATTR, None)
        if signum is None and isinstance(exc, KeyboardInterrupt):
            signum = signal.SIGINT
        if signum is None or threading.current_thread() is not threading.main_thread() or _pending:
            previous(unraisable)
            return
        _pending.append((signum, signal.signal(signal.SIGALRM, _deliver_again)))
        signal.setitimer(signal.ITIMER_REAL, 0.001)

    hook.previous = previous  # type: ignore[attr-defined]
    return hook


def resend_swallowed_stops() -> None:
    """Install the hook once per process (idempotent)."""
    if not hasattr(sys.unraisablehook, "previous"):
        sys.unraisablehook = _hook(sys.unraisablehook)
