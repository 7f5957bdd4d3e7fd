"""Aligned snapshots in the store: B's hidden units permuted to match A's (kind "snapshots").

The permutation structure is traced from the model (`geometry.permutations`); the permutation is
found by weight matching (`geometry.matching`, Ainsworth et al.) or by activation matching on data
(`evaluate.activations`). The aligned snapshot computes B's function exactly (a permutation of its
units) and is stored with the permutation, the matching's objective and the config a rerun must
match; a rerun with the same arguments reads it back and computes nothing.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.core.errors import LandscapeError
from landscape.evaluate.activations import activation_matching
from landscape.geometry.matching import weight_matching
from landscape.geometry.permutations import PermutationSpec, apply_permutation, permutation_spec
from landscape.store.store import Store

KIND = "snapshots"
METHODS = ("weight", "activation")


def _state(model: nn.Module, snap: Snapshot) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model)
    snap.load_into(m)
    return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}


def align_snapshot(model: nn.Module, a: Snapshot, b: Snapshot, *, example: torch.Tensor, method: str = "weight",
                   batches: Callable[[], Iterable[torch.Tensor]] | None = None, seed: int = 0, max_iter: int = 100,
                   name: str | None = None, spec: PermutationSpec | None = None) -> tuple[Snapshot, dict[str, Any]]:
    """B with its units permuted to match A's: (the aligned snapshot, what the matching found)."""
    if method not in METHODS:
        raise LandscapeError(f"unknown alignment method {method!r}: choose {' or '.join(METHODS)}")
    check_same_architecture([a, b])
    template = copy.deepcopy(model).eval()
    spec = spec or permutation_spec(template, example)
    state_a, state_b = _state(template, a), _state(template, b)
    if method == "weight":
        perms, objective = weight_matching(spec, state_a, state_b, max_iter=max_iter, seed=seed)
        report: dict[str, Any] = {"objective": objective}
    else:
        if batches is None:
            raise LandscapeError("activation matching needs data (--data)")
        ma, mb = copy.deepcopy(template), copy.deepcopy(template)
        ma.load_state_dict(state_a)
        mb.load_state_dict(state_b)
        perms, report = activation_matching(spec, ma, mb, batches())
    aligned = copy.deepcopy(template)
    aligned.load_state_dict(apply_permutation(spec, state_b, perms))
    meta = {"method": "align", "align_method": method, "aligned_to": a.name, "source": b.name,
            "groups": [{"name": g.name, "size": g.size, "block": g.block} for g in spec.groups],
            "permutations": {g: [int(i) for i in p] for g, p in perms.items()},
            "moved_units": int(sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())), **report}
    snap = Snapshot.from_model(aligned, name=name or f"{b.name}-aligned", **meta)
    return snap, meta


def align(model: nn.Module, a: Snapshot, b: Snapshot, *, example: torch.Tensor, method: str = "weight",
          batches: Callable[[], Iterable[torch.Tensor]] | None = None, data_spec: str | None = None, seed: int = 0,
          max_iter: int = 100, store: Store | None = None, name: str = "aligned", overwrite: bool = False,
          provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Align B to A and store the aligned snapshot as `name` (resumable: a rerun with the same
    arguments reads it back)."""
    config = {**(provenance or {}), "a": a.fingerprint(), "b": b.fingerprint(), "align_method": method,
              "seed": int(seed), "max_iter": int(max_iter), "align_data": data_spec if method == "activation" else None}
    if store is not None and store.resume_or_refuse(KIND, name, config, overwrite):
        snap = store.read_snapshot(name)
        return {"kind": "alignment", "name": name, "computed_now": False, "snapshot": snap, **snap.meta}
    snap, found = align_snapshot(model, a, b, example=example, method=method, batches=batches, seed=seed,
                                 max_iter=max_iter, name=name)
    if store is not None:
        store.write_snapshot(snap, name, overwrite=overwrite and store.has(KIND, name), attrs={"config": config})
    return {"kind": "alignment", "name": name, "computed_now": True, "snapshot": snap, **found}


def align_all(model: nn.Module, snaps: list[Snapshot], *, example: torch.Tensor, method: str = "weight",
              batches: Callable[[], Iterable[torch.Tensor]] | None = None, seed: int = 0,
              max_iter: int = 100) -> list[Snapshot]:
    """Every snapshot after the first aligned to the first (`--align` of lines, barriers and planes);
    deterministic, so a resumed analysis sees the same aligned endpoints (their fingerprints are
    in its config)."""
    if len(snaps) < 2:
        return snaps
    spec = permutation_spec(copy.deepcopy(model).eval(), example)
    out = [snaps[0]]
    for s in snaps[1:]:
        aligned, _ = align_snapshot(model, snaps[0], s, example=example, method=method, batches=batches, seed=seed,
                                    max_iter=max_iter, name=s.name, spec=spec)
        out.append(aligned)
    return out
