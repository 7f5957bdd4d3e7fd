"""DataLoaders of image folders: per-sample transform seeds, pinned memory and persistent workers.

`SeededSamples` makes an epoch's samples independent of the number of workers; `FolderLoaders`
builds a FolderTask's loaders under the `LoaderOptions` a study's [runtime] table gives
(experiments.accel), keeping persistent workers without changing a single batch.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader


class SeededSamples(torch.utils.data.Dataset):
    """A dataset whose i-th sample is transformed under its own seed (the global RNG is restored)."""

    def __init__(self, ds, seeds: torch.Tensor) -> None:
        self.ds, self.seeds = ds, seeds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        state = torch.get_rng_state()
        torch.manual_seed(int(self.seeds[i]))
        try:
            return self.ds[i]
        finally:
            torch.set_rng_state(state)


def seed_worker(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


@dataclass(frozen=True)
class LoaderOptions:
    """How FolderTask builds its DataLoaders (given to a task by accel.configure_loaders)."""

    pin_memory: bool
    persistent_workers: bool


def loader_options(runtime: Mapping[str, Any], device: torch.device | str, num_workers: int) -> LoaderOptions:
    device = device if isinstance(device, torch.device) else torch.device(device)
    pin = runtime.get("pin_memory", "auto")  # auto: on CUDA (with workers to keep, for persistence)
    pers = runtime.get("persistent_workers", "auto")
    pin = device.type == "cuda" if pin == "auto" else bool(pin)
    pers = (device.type == "cuda" and num_workers > 0) if pers == "auto" else bool(pers) and num_workers > 0
    return LoaderOptions(pin, pers)


class _Indexed(torch.utils.data.Dataset):
    """Samples addressed as (index, seed): sample `index` transformed under its own seed, the
    global RNG restored afterwards (exactly what SeededSamples does for its i-th sample)."""

    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        i, seed = key
        state = torch.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            return self.ds[i]
        finally:
            torch.set_rng_state(state)


class _EpochOrder(torch.utils.data.Sampler):
    """A sampler that yields whatever order it was last given (one epoch's (index, seed) pairs)."""

    def __init__(self, n: int) -> None:
        self.n, self.order = n, []

    def __len__(self) -> int:
        return len(self.order) or self.n

    def __iter__(self) -> Iterator:
        return iter(self.order)


class _Reused:
    """One persistent DataLoader reused epoch after epoch; a second iteration while one is still
    running (never the case in a study) gets a fresh, non-persistent loader over the same order."""

    def __init__(self, loader, sampler: _EpochOrder | None, fresh) -> None:
        self.loader, self.sampler, self.fresh = loader, sampler, fresh
        self.busy = False
        self.started = False
        self.order: list | None = None

    def epoch(self, order: list | None) -> "_Reused":
        self.order = order
        return self

    def __iter__(self):
        order = self.order
        if self.busy:
            yield from self.fresh(order)
            return
        if self.sampler is None and self.started:
            # A non-persistent unshuffled loader draws its (unused) base seed from the global RNG
            # every epoch; the persistent one draws it once: draw it here so the RNG moves the same.
            torch.empty((), dtype=torch.int64).random_()
        self.started = True
        self.busy = True
        try:
            if self.sampler is not None:
                self.sampler.order = order
            yield from self.loader
        finally:
            self.busy = False


class FolderLoaders:
    """The DataLoaders of one FolderTask: `num_workers` workers, and with `options` (the study's
    runtime table) pinned memory and persistent workers; without options, the loaders of before."""

    def __init__(self, num_workers: int) -> None:
        self.num_workers = int(num_workers)
        self.options: LoaderOptions | None = None
        self._persistent: dict[tuple, tuple[Any, _Reused]] = {}  # (kind, dataset id, batch size) -> loader

    def loader(self, ds, batch_size: int, shuffle: bool, g: torch.Generator | None, own: bool):
        """A DataLoader of `ds`; `own`: `ds` is one of the task's own datasets (its eval loaders may
        be kept), not a one-off subset that would keep workers alive.

        Without persistent workers: a fresh DataLoader. With them: one loader per (dataset, batch
        size) kept and reused; for the shuffled training data the epoch's order is drawn from `g`
        exactly as a fresh DataLoader(shuffle=True, generator=g) draws it (its base seed, then
        torch.randperm, then the randperm a RandomSampler draws when it runs out), so batches and
        the generator's state after each epoch are identical either way."""
        nw, opts = self.num_workers, self.options
        if opts is None:
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=nw,
                              pin_memory=torch.cuda.is_available(), drop_last=False,
                              worker_init_fn=seed_worker if shuffle else None, persistent_workers=False)
        common = dict(num_workers=nw, pin_memory=opts.pin_memory, drop_last=False)
        if not (opts.persistent_workers and nw > 0):
            return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                              worker_init_fn=seed_worker if shuffle else None, persistent_workers=False, **common)
        cache = self._persistent
        if shuffle:
            if not isinstance(ds, SeededSamples) or g is None:
                return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, worker_init_fn=seed_worker,
                                  persistent_workers=False, **common)
            base, seeds = ds.ds, ds.seeds
            n = len(base)
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader iterator's base seed
            perm = torch.randperm(n, generator=g)
            torch.randperm(n, generator=g)  # RandomSampler's trailing randperm(n)[:0] at the end of the epoch
            order = list(zip(perm.tolist(), seeds[perm].tolist()))
            key = ("train", id(base), batch_size)
            if key not in cache:
                indexed = _Indexed(base)
                sampler = _EpochOrder(n)

                def fresh(order_, indexed=indexed):
                    return DataLoader(indexed, batch_size=batch_size, sampler=order_, worker_init_fn=seed_worker,
                                      generator=torch.Generator().manual_seed(0), persistent_workers=False, **common)

                loader = DataLoader(indexed, batch_size=batch_size, sampler=sampler, worker_init_fn=seed_worker,
                                    generator=torch.Generator().manual_seed(0), persistent_workers=True, **common)
                cache[key] = (base, _Reused(loader, sampler, fresh))
            return cache[key][1].epoch(order)
        # Unshuffled: persistent only for the task's own datasets (test, val, train with evaluation
        # transforms), not for one-off subsets that would each keep workers alive.
        if not own:
            return DataLoader(ds, batch_size=batch_size, shuffle=False, persistent_workers=False, **common)
        key = ("eval", id(ds), batch_size)
        if key not in cache:
            def fresh(_order, ds=ds):
                return DataLoader(ds, batch_size=batch_size, shuffle=False, persistent_workers=False, **common)

            loader = DataLoader(ds, batch_size=batch_size, shuffle=False, persistent_workers=True, **common)
            cache[key] = (ds, _Reused(loader, None, fresh))
        return cache[key][1].epoch(None)
