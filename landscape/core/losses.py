"""Losses: the type of a loss function, the default one, and the one reading of `--loss`."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .errors import LandscapeError
from .loader import load_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class labels, the batch mean."""
    return F.cross_entropy(logits, target)


def resolve_loss(loss: str | LossFn | None) -> tuple[LossFn | None, bool, str]:
    """(loss function, whether accuracy means something, the kind of targets) for `--loss`:
    `ce` (cross-entropy on class labels; accuracy reported), `mse` (regression on float targets;
    loss only) or `module:callable` (your loss(outputs, targets) -> mean over the batch, on class
    labels; accuracy reported)."""
    if loss is None or loss == "ce":
        return None, True, "labels"
    if callable(loss):
        return loss, True, "labels"
    if loss == "mse":
        def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.mse_loss(outputs.reshape(targets.shape).to(targets.dtype), targets)
        return mse, False, "values"
    if ":" not in str(loss):  # a name, not a module:callable spec
        raise LandscapeError(f"unknown --loss {loss!r}: choose ce, mse or package.module:callable")
    return load_callable(str(loss), "--loss", expected="ce, mse or package.module:callable"), True, "labels"
