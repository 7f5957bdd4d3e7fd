"""Ensembles in the store: metrics of the ensembles of the first m members, m = 1..K.

The forward passes are the caller's (`start`: landscape.api builds them from checkpoints or kept
predictions); this module owns the result's life: the config a stored result must match, resume
or refusal through `Store.resume_or_refuse`, and the one write (with the members' predictions
streamed into the object being written when they are kept).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from landscape.core import distributed
from landscape.evaluate.ensembles import evaluate_ensemble
from landscape.store.store import Store

from .grids import check_same_inputs

KIND = "ensembles"


def ensemble(start: Callable[[], tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]],
             names: Sequence[str], n_samples: int, labels: Callable[[], torch.Tensor], *,
             config: Mapping[str, Any], attrs: Mapping[str, Any], store: Store | None, name: str,
             overwrite: bool = False, keep_predictions: bool = False, fp16: bool = False, orders: int = 0,
             seed: int = 0) -> dict[str, Any]:
    """The ensemble `name`: the stored one when it was computed with `config`, else computed from
    `start()` (the members' logits batch by batch, and the fitted temperatures or None) and stored.
    `labels()`: the evaluation labels, once the batches have been read. Under torchrun every rank
    runs its members' forward passes; rank 0 computes, stores, and shares the result."""
    res = finished_ensemble(store, name, config, overwrite)
    if res is None and not distributed.world().writer:
        batches, _ = start()
        for _ in batches:  # this rank's members' forward passes, sent to rank 0 batch by batch
            pass
    elif res is None:
        if store is not None and keep_predictions:
            with store.new_object("ensembles", name, attrs, overwrite=True) as obj:
                writer = _PredictionWriter(obj, len(names), n_samples, fp16)
                batches, temps = start()
                res = evaluate_ensemble(batches, names, temps, orders, seed, keep=writer.write)
                for key, value in ensemble_arrays(res, names).items():
                    obj.put(key, value)
                obj.put("labels", labels().cpu().numpy())
        else:
            batches, temps = start()
            res = evaluate_ensemble(batches, names, temps, orders, seed)
            if store is not None:
                store.write("ensembles", name, ensemble_arrays(res, names), attrs, overwrite=True)
    if distributed.active():  # rank 0's result on every rank
        res = distributed.on_rank0(lambda: res)
    return res


def finished_ensemble(store: Store | None, name: str, config: Mapping[str, Any],
                      overwrite: bool) -> dict[str, np.ndarray] | None:
    """The stored arrays of ensemble `name` if it was computed with `config` (nothing to do);
    None if it must be computed. Refuses a different config unless `overwrite`."""
    if distributed.active():  # rank 0 reads the store, once every rank has shown the same inputs
        def on_rank0(configs: list[str]) -> dict[str, np.ndarray] | None:
            check_same_inputs(configs, config)
            return _finished_ensemble(store, name, config, overwrite)
        return distributed.exchange(lambda: json.dumps(config, sort_keys=True, default=str), on_rank0)[1]
    return _finished_ensemble(store, name, config, overwrite)


def _finished_ensemble(store: Store | None, name: str, config: Mapping[str, Any],
                       overwrite: bool) -> dict[str, np.ndarray] | None:
    if store is None or not store.resume_or_refuse(KIND, name, config, overwrite):
        return None
    return store.read(KIND, name, skip=("predictions", "labels")).arrays


def ensemble_arrays(result: Mapping[str, Any], members: Sequence[str]) -> dict[str, np.ndarray]:
    """The datasets of a stored ensemble: every per-size array of `result`, and the member names."""
    arrays = {k: np.asarray(v) for k, v in result.items() if isinstance(v, (np.ndarray, list))}
    arrays["members"] = np.array(list(members), dtype="S")
    return arrays


class _PredictionWriter:
    """Member logits written batch by batch into a chunked dataset of the object being written."""

    def __init__(self, obj, m: int, n: int, fp16: bool) -> None:
        self.obj, self.m, self.n, self.fp16 = obj, m, n, fp16
        self.created = False

    def write(self, start: int, logits: torch.Tensor) -> None:
        if not self.created:
            c = logits.shape[-1]
            self.obj.create("predictions", (self.m, self.n, c), "f2" if self.fp16 else "f4",
                            chunks=(1, min(self.n, 1024), c))
            self.created = True
        self.obj.write("predictions", (slice(None), slice(start, start + logits.shape[1])),
                       logits.detach().cpu().numpy())
