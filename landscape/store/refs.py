"""What a snapshot or prediction argument names: a `.pt`/`.pth` file, or `STORE:NAME` in a store.

The one place references are resolved, for the CLI, the API and the study alike.
"""
from __future__ import annotations

import copy
import os
from typing import Mapping, Union

import torch
from torch import nn

from landscape.core.checkpoints import KeyFilter, Snapshot, apply_state_dict, read_state_dict
from landscape.core.errors import LandscapeError
from landscape.core.params import ParamLayout

from .store import Store


def split_store_ref(ref: str) -> tuple[str, str] | None:
    """(store folder, object name) for `STORE:NAME`; None for a checkpoint file path."""
    if os.path.isfile(ref):
        return None
    path, sep, name = ref.rpartition(":")
    if not sep or not path or not name:
        return None
    if os.path.isdir(path) or not os.path.isfile(ref):
        return path, name
    return None


# What an endpoint or member may be: a checkpoint path, `STORE:NAME`, a Snapshot, an nn.Module
# or a state dict.
SnapshotRef = Union[str, Snapshot, nn.Module, Mapping[str, torch.Tensor]]


def load_snapshot(ref: SnapshotRef, model: nn.Module, keys: KeyFilter | None = None,
                  name: str | None = None) -> Snapshot:
    """A `.pt` checkpoint, `STORE:NAME` snapshot, nn.Module or state dict as a Snapshot for
    `model`'s architecture (a Snapshot is returned as it is).

    `model` is used as the template (its own weights are left untouched); `keys`: checkpoint keys
    to skip (and record as skipped); `name`: the name of a module or state dict (they carry none).
    """
    if isinstance(ref, Snapshot):
        return ref
    if isinstance(ref, (nn.Module, Mapping)):
        what = name or ("module" if isinstance(ref, nn.Module) else "state dict")
        state = ref.state_dict() if isinstance(ref, nn.Module) else dict(ref)
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise LandscapeError(f"{what}: a state dict maps parameter names to tensors")
        clone = copy.deepcopy(model)
        apply_state_dict(clone, {k: v.detach().cpu() for k, v in state.items()}, what)
        return Snapshot.from_model(clone, name=what)
    if not isinstance(ref, str):
        raise LandscapeError(f"a snapshot of type {type(ref).__name__}: give a checkpoint path, STORE:NAME, an "
                             "nn.Module, a state dict or a Snapshot")
    store_ref = split_store_ref(ref)
    if store_ref is not None and os.path.isdir(store_ref[0]):
        path, name = store_ref
        with Store(path, mode="r") as store:
            snap = store.read_snapshot(name)
        ParamLayout.of(model).check_same(snap.layout, "model", f"snapshot {ref!r}")
        model_buffers = dict(model.named_buffers())
        if set(snap.buffers) != set(model_buffers):
            raise LandscapeError(f"snapshot {ref!r} does not fit the model: its buffers differ")
        for key, value in snap.buffers.items():
            if tuple(value.shape) != tuple(model_buffers[key].shape):
                raise LandscapeError(f"snapshot {ref!r} is damaged or does not fit the model: buffer {key!r} has "
                                     f"shape {list(value.shape)}, the model's {list(model_buffers[key].shape)}")
        snap.name = ref
        return snap
    if store_ref is not None and not os.path.exists(ref):
        raise LandscapeError(f"{ref!r} is neither a checkpoint file nor STORE:NAME of an existing store")
    state = read_state_dict(ref, keys=keys)
    clone = copy.deepcopy(model)
    apply_state_dict(clone, state, ref)
    return Snapshot.from_model(clone, name=ref, source=os.path.abspath(ref))


def stored_predictions(ref: str) -> tuple[list[str], torch.Tensor, torch.Tensor] | None:
    """`STORE:ENSEMBLE` naming an ensemble with kept predictions: (member names, logits, labels)."""
    store_ref = split_store_ref(ref)
    if store_ref is None or not os.path.isdir(store_ref[0]):
        return None
    path, name = store_ref
    with Store(path, mode="r") as store:
        if not store.has("ensembles", name) or "predictions" not in store.datasets("ensembles", name):
            return None
        obj = store.read("ensembles", name)
    members = [m.decode() if isinstance(m, bytes) else str(m) for m in obj["members"]]
    return members, torch.from_numpy(obj["predictions"]).float(), torch.from_numpy(obj["labels"])


MAX_CLASSES = 10**6  # more rows than this in a head is no classifier's


def head_classes(ref: SnapshotRef, keys: KeyFilter | None = None) -> int | None:
    """The number of classes of a snapshot's head: the rows of its last 2-D weight (a Linear
    layer's [classes, features]); None when it cannot be told (then the model's own default)."""
    # A snapshot that cannot be read raises here with the reason (a damaged store, a missing
    # file): "cannot tell how many classes" would blame the command line for it.
    if isinstance(ref, Snapshot):
        shapes = [shape for _, shape, _ in ref.layout.slices()]
    elif isinstance(ref, (nn.Module, Mapping)):
        state = ref.state_dict() if isinstance(ref, nn.Module) else ref
        shapes = [tuple(v.shape) for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    else:
        store_ref = split_store_ref(ref)
        if store_ref is not None and os.path.isdir(store_ref[0]):
            with Store(store_ref[0], mode="r") as store:
                layout = store.read_snapshot_layout(store_ref[1])
            shapes = [shape for _, shape, _ in layout.slices()]
        else:
            # mapped, not read: the snapshot itself is loaded once, later (read_state_dict
            # refuses expanded stride-0 views, whose shapes no storage holds)
            shapes = [tuple(v.shape) for v in read_state_dict(ref, mmap=True, keys=keys).values()
                      if v.is_floating_point()]
    heads = [s for s in shapes if len(s) == 2]
    if heads and int(heads[-1][0]) > MAX_CLASSES:
        what = (f"snapshot {ref.name!r}" if isinstance(ref, Snapshot) else f"checkpoint {ref!r}" if isinstance(ref, str)
                else "the state dict")
        raise LandscapeError(f"{what}: its last 2-D weight has {int(heads[-1][0]):,} rows, taken for the number "
                             f"of classes; the limit is {MAX_CLASSES:,} (not a classifier's head?)")
    return int(heads[-1][0]) if heads else None

