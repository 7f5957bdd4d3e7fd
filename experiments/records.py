"""A study's records in its store: each unit's test predictions and the labels they refer to.

A unit is finished when its predictions and its snapshot are both stored (written in that
order, each as one finished object), so `unit_done` is the resume rule of the whole study.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from landscape.errors import LandscapeError
from landscape.store import Store

from .samplers import Unit


def unit_done(store: Store, unit: Unit) -> bool:
    if not store.has("snapshots", unit.name):
        return False
    return unit.kind == "pretrain" or store.has("predictions", unit.name)


def write_predictions(store: Store, name: str, logits: torch.Tensor, metrics: Mapping[str, float]) -> None:
    """A unit's test logits (fp32: fp16 overflows for confident members) and metrics."""
    store.write("predictions", name, {"logits": logits.float().cpu().numpy()}, dict(metrics), overwrite=True)


def read_logits(store: Store, name: str) -> torch.Tensor:
    return torch.from_numpy(store.read("predictions", name)["logits"])


def write_labels(store: Store, labels: torch.Tensor) -> None:
    """The test labels, once; a store whose labels differ belongs to other data."""
    if store.has("labels", "test"):
        if not np.array_equal(store.read("labels", "test")["labels"], labels.numpy()):
            raise LandscapeError(f"store {store.path!r}: the test labels changed since the study started")
        return
    store.write("labels", "test", {"labels": labels.numpy()}, {})
