"""A study's records in its store: each unit's test (and validation) predictions and the labels they
refer to, and the units' snapshots with the optimizer state a following unit carries on with.

A unit is finished when its predictions and its snapshot are both stored (written in that
order, each as one finished object), so `unit_done` is the resume rule of the whole study. The
optimizer state of a Garipov FGE segment is part of its snapshot's file (datasets
optimizer/KEY/PARAM beside params and buffers/), so it is stored, resumed and shipped to ranks
with the snapshot, and a reader of the weights (Store.read_snapshot) never sees it.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from landscape.core.errors import LandscapeError
from landscape.store.store import Store

from .samplers import Unit, UnitSnapshot

OPTIMIZER = "optimizer/"  # the prefix of a snapshot file's optimizer-state datasets


def unit_done(store: Store, unit: Unit) -> bool:
    if not store.has("snapshots", unit.name):
        return False
    return unit.kind == "pretrain" or store.has("predictions", unit.name)


def write_unit_snapshot(store: Store, snap: UnitSnapshot, name: str, attrs: dict) -> None:
    """A unit's snapshot, as Store.write_snapshot writes one, plus its optimizer state when it has one."""
    state = getattr(snap, "optimizer_state", None)
    if not state:
        store.write_snapshot(snap, name, overwrite=True, attrs=attrs)
        return
    arrays = {"params": snap.params.detach().cpu().numpy(),
              **{f"buffers/{k}": v.detach().cpu().numpy() for k, v in snap.buffers.items()},
              **{OPTIMIZER + k: v.detach().cpu().numpy() for k, v in state.items()}}
    store.write("snapshots", name, arrays, {"layout": snap.layout.to_json(), "dtype": str(snap.params.dtype),
                                            "meta": snap.meta, **attrs}, overwrite=True)


def read_unit_snapshot(store: Store, name: str) -> UnitSnapshot:
    """A stored snapshot (Store.read_snapshot's checks) with its optimizer state, if it has one."""
    snap = store.read_snapshot(name)
    keys = [k for k in store.datasets("snapshots", name) if k.startswith(OPTIMIZER)]
    state = None
    if keys:
        arrays = store.read("snapshots", name, skip=[k for k in store.datasets("snapshots", name)
                                                     if not k.startswith(OPTIMIZER)]).arrays
        state = {}
        for k in keys:
            a = np.asarray(arrays[k])
            if a.dtype.kind != "f":
                raise LandscapeError(f"snapshot {name!r} in store {store.path!r} is damaged: {k} is of dtype "
                                     f"{a.dtype}, not floating point")
            state[k[len(OPTIMIZER):]] = torch.from_numpy(a)
    return UnitSnapshot(snap.name, snap.params, snap.layout, snap.buffers, snap.meta, state)


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
