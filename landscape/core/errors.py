"""The exceptions that reach the user as a one-line message and an exit status."""
from __future__ import annotations


class LandscapeError(Exception):
    """A problem with the user's input: one line, exit status 2, never a traceback."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep messages to one line whatever the underlying library said.
        super().__init__(" ".join(str(message).split()))


class LandscapeFault(LandscapeError):
    """A run-time fault that is not the input's fault (a full disk, a store held by another
    writer, an output folder removed during the run): one line, exit status 1."""

    exit_code = 1
