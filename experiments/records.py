"""A study's records in its store: each unit's test (and validation) predictions and the labels they refer to.

A unit is finished when its predictions and its snapshot are both stored (written in that
order, each as one finished object), so `unit_done` is the resume rule of the whole study.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from landscape.core.errors import LandscapeError
from landscape.store.store import Store

from .samplers import Unit


def unit_done(store: Store, unit: Unit) -> bool:
    if not store.has("snapshots", unit.name):
        return False
    return unit.kind == "pretrain" or store.has("predictions", unit.name)


def write_predictions(store: Store, name: str, logits: torch.Tensor, metrics: Mapping[str, float],
                      val_logits: torch.Tensor | None = None) -> None:
    """A unit's test logits (fp32: fp16 overflows for confident members), its validation logits
    when the task has a validation split, and its test metrics: one object, written once."""
    arrays = {"logits": logits.float().cpu().numpy()}
    if val_logits is not None:
        arrays["val_logits"] = val_logits.float().cpu().numpy()
    store.write("predictions", name, arrays, dict(metrics), overwrite=True)


def read_logits(store: Store, name: str, split: str = "test") -> torch.Tensor:
    return torch.from_numpy(store.read("predictions", name)["logits" if split == "test" else "val_logits"])


def write_labels(store: Store, labels: torch.Tensor, split: str = "test") -> None:
    """The labels of a split, once; a store whose labels differ belongs to other data."""
    if store.has("labels", split):
        if not np.array_equal(store.read("labels", split)["labels"], labels.numpy()):
            raise LandscapeError(f"store {store.path!r}: the {split} labels changed since the study started")
        return
    store.write("labels", split, {"labels": labels.numpy()}, {})
