"""The `landscape` command's entry point, kept free of heavy imports.

Importing the toolkit (torch, h5py, matplotlib) takes a second or two; a Ctrl-C in that time
would otherwise print a traceback from deep inside some library, and not always a
KeyboardInterrupt one (matplotlib turns it into a ValueError; importlib's weakref callbacks
swallow it). Here it is one line and exit status 130, like a Ctrl-C during a command."""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Sequence

_INTERRUPTED = "landscape: interrupted while starting"


def main(argv: Sequence[str] | None = None) -> int:
    interrupted: list[int] = []

    def on_sigint(signum: int, frame: Any) -> None:
        # Raising here would land inside whatever library is importing (its finalisers, its
        # `except Exception`): note it and stop once the imports are done; a second Ctrl-C at once.
        if interrupted:
            print(_INTERRUPTED, file=sys.stderr, flush=True)
            os._exit(130)
        interrupted.append(signum)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        from landscape.cli import main as cli_main
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
