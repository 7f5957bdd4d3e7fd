"""The one exception type that reaches the user as a one-line message."""
from __future__ import annotations


class LandscapeError(Exception):
    """A problem with the user's input: printed as one line by the CLI, never as a traceback."""

    def __init__(self, message: str) -> None:
        # Keep messages to one line whatever the underlying library said.
        super().__init__(" ".join(str(message).split()))
