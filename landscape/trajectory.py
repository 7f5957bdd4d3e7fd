"""Recording a training run's path through weight space from one's own training loop.

    traj = landscape.Trajectory("runs/store", "sgd", every=100)
    for step, (x, y) in enumerate(loader):
        ...; opt.step()
        traj(model, step=step, epoch=epoch)        # stored when step % every == 0
    traj(model, step=step, epoch=epoch, force=True)   # the end point, whatever the step
    landscape.plane(traj.refs()[-1], pca=traj.refs(), model=model, data=...)   # the PCA plane of the path

Each recorded point is a snapshot `NAME-STEP` (zero-padded, so names sort by step) whose metadata
holds the trajectory's name, the step, the epoch and its index on the path; `Trajectory.refs`
gives them in order as `STORE:NAME` references. Every snapshot is written whole under a temporary
name and renamed into place like every stored object, so a killed run keeps the points recorded
before. The callbacks for PyTorch Lightning and the Hugging Face Trainer are in
`landscape.callbacks`.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from landscape.core.checkpoints import Snapshot
from landscape.core.errors import LandscapeError
from landscape.core.validate import positive_int
from landscape.store.store import Store, check_name

KIND = "snapshots"


class Trajectory:
    """A recorder of snapshots along a training run, into the store folder `store`."""

    def __init__(self, store: str, name: str = "trajectory", every: int = 1, overwrite: bool = False) -> None:
        check_name(name)
        self.store, self.name = str(store), name
        self.every = positive_int(every, "every")
        self.overwrite = bool(overwrite)
        self._index = len(self.points())  # a resumed training run appends to its path

    def snapshot_name(self, step: int) -> str:
        return f"{self.name}-{int(step):09d}"

    def __call__(self, model: nn.Module, step: int, epoch: int | float | None = None,
                 force: bool = False) -> str | None:
        """Record `model` at `step` when `step` is a multiple of `every` (or `force`); the stored
        snapshot's name, or None when this step is not recorded."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise LandscapeError(f"step must be a non-negative integer, got {step!r}")
        if not force and step % self.every:
            return None
        name = self.snapshot_name(step)
        meta = {"trajectory": self.name, "step": int(step), "index": self._index,
                "epoch": None if epoch is None else float(epoch)}
        with torch.no_grad():
            snap = Snapshot.from_model(model, name=name, **meta)
        with Store(self.store, "a") as st:
            if st.has(KIND, name) and not self.overwrite:
                raise LandscapeError(f"trajectory {self.name!r} already holds step {step} in store {self.store!r}: "
                                     "record under another name, or pass overwrite=True to record it again")
            st.write_snapshot(snap, name, overwrite=self.overwrite and st.has(KIND, name))
        self._index += 1
        return name

    def points(self) -> list[dict]:
        """The recorded points in order of step: {name, step, epoch, index}."""
        if not os.path.lexists(self.store):
            return []  # nothing recorded yet
        with Store(self.store, "r") as st:
            out = []
            for name in st.names(KIND):
                meta = st.read_attrs(KIND, name).get("meta") or {}
                if isinstance(meta, dict) and meta.get("trajectory") == self.name:
                    out.append({"name": name, "step": int(meta["step"]), "epoch": meta.get("epoch"),
                                "index": int(meta.get("index", 0))})
        return sorted(out, key=lambda p: p["step"])

    def refs(self) -> list[str]:
        """`STORE:NAME` of every recorded point, in order of step: endpoints for any analysis."""
        return [f"{self.store}:{p['name']}" for p in self.points()]
