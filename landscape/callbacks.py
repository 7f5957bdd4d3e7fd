"""Trajectory recording from other tools' training loops: PyTorch Lightning and the Hugging Face
Trainer. Each class is built on first use, so neither library is imported unless asked for.

    from landscape.callbacks import LightningTrajectory
    trainer = lightning.Trainer(callbacks=[LightningTrajectory("runs/store", "run1", attr="model")])

    from landscape.callbacks import HFTrajectory
    trainer = transformers.Trainer(..., callbacks=[HFTrajectory("runs/store", "run1")])

Both record at the end of every `every`-th epoch (`per="epoch"`, the default) or every `every`-th
optimizer step (`per="step"`), with the trainer's global step and epoch, through
`landscape.Trajectory`. `attr` names the submodule to record (a LightningModule usually wraps the
network as `self.model`; record that, and analyses take the network's own `model=`).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from landscape.core.errors import LandscapeError

from .trajectory import Trajectory

_PER = ("epoch", "step")


class _Recorder:
    """What both callbacks share: when to record, and which module."""

    def _setup(self, store: str, name: str, every: int, per: str, attr: str | None) -> None:
        if per not in _PER:
            raise LandscapeError(f"per must be one of {', '.join(_PER)}, got {per!r}")
        self.trajectory = Trajectory(store, name, every=1)
        self.every, self.per, self.attr = int(every), per, attr
        if self.every < 1:
            raise LandscapeError(f"every must be a positive integer, got {every!r}")

    def _module(self, model: nn.Module) -> nn.Module:
        if self.attr is None:
            return model
        sub = getattr(model, self.attr, None)
        if not isinstance(sub, nn.Module):
            raise LandscapeError(f"the trained module has no submodule {self.attr!r} to record")
        return sub

    def _record(self, model: nn.Module, count: int, step: int, epoch: float | None) -> None:
        if count % self.every == 0:
            self.trajectory(self._module(model), step=int(step), epoch=epoch, force=True)


def _lightning_class() -> type:
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback  # the older package name
        except ImportError:
            raise LandscapeError("LightningTrajectory needs PyTorch Lightning: pip install lightning") from None

    class LightningTrajectory(Callback, _Recorder):
        """Records the trained module (or its submodule `attr`) into a `Trajectory`."""

        def __init__(self, store: str, name: str = "trajectory", every: int = 1, per: str = "epoch",
                     attr: str | None = None) -> None:
            super().__init__()
            self._setup(store, name, every, per, attr)

        def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
            if self.per == "epoch":
                self._record(pl_module, trainer.current_epoch + 1, trainer.global_step, trainer.current_epoch)

        def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if self.per == "step":
                self._record(pl_module, trainer.global_step, trainer.global_step, trainer.current_epoch)

    return LightningTrajectory


def _hf_class() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise LandscapeError("HFTrajectory needs Hugging Face transformers: pip install transformers") from None

    class HFTrajectory(TrainerCallback, _Recorder):
        """Records the Trainer's model (or its submodule `attr`) into a `Trajectory`."""

        def __init__(self, store: str, name: str = "trajectory", every: int = 1, per: str = "epoch",
                     attr: str | None = None) -> None:
            self._setup(store, name, every, per, attr)

        def on_epoch_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                         **kwargs: Any) -> None:
            if self.per == "epoch" and model is not None:
                self._record(model, round(state.epoch or 0), state.global_step, state.epoch)

        def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                        **kwargs: Any) -> None:
            if self.per == "step" and model is not None:
                self._record(model, state.global_step, state.global_step, state.epoch)

    return HFTrajectory


_BUILDERS = {"LightningTrajectory": _lightning_class, "HFTrajectory": _hf_class}
_BUILT: dict[str, type] = {}


def __getattr__(name: str) -> type:
    if name not in _BUILDERS:
        raise AttributeError(f"module 'landscape.callbacks' has no attribute {name!r}")
    if name not in _BUILT:
        _BUILT[name] = _BUILDERS[name]()
    return _BUILT[name]
