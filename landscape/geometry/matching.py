"""Weight matching: the unit permutation of model B that brings its weights closest to model A's.

Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries" (ICLR 2023),
the weight-matching algorithm: maximise Σ_keys <A_key, π(B)_key> by coordinate ascent, one permutation
group at a time, each step a linear assignment problem given the other groups' current permutations.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..core.errors import LandscapeError
from .permutations import PermutationGroup, PermutationSpec, _check_state, unit_index


def _units(t: Tensor, axis: int, g: PermutationGroup) -> Tensor:
    """`t` as (units, everything else): axis moved first, its m chunks and a head's `block` rows folded
    into each unit's row (so the assignment is over whole heads, the same for q, k and v)."""
    n, b = g.size, g.block
    moved = t.movedim(axis, 0)
    return moved.reshape(-1, n, b, moved[0].numel()).transpose(0, 1).reshape(n, -1)


def _assign(c: Tensor, within: int) -> Tensor:
    """The permutation maximising Σ_i c[i, perm[i]]; with `within`, one assignment per diagonal block."""
    n = c.shape[0]
    arr = c.numpy()
    if not within or within >= n:
        return torch.from_numpy(linear_sum_assignment(arr, maximize=True)[1].astype(np.int64))
    parts = [linear_sum_assignment(arr[s:s + within, s:s + within], maximize=True)[1] + s
             for s in range(0, n, within)]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def weight_matching(spec: PermutationSpec, state_a: Mapping[str, Tensor], state_b: Mapping[str, Tensor], *,
                    max_iter: int = 100, seed: int = 0) -> tuple[dict[str, Tensor], list[float]]:
    """Permutations of B's units (group name -> LongTensor, as `apply_permutation` takes them) that
    maximise Σ over the spec's keys of <A_key, permuted B_key>, and that objective after each sweep
    (monotone non-decreasing). Float64 on the CPU; sweeps visit the groups in a random order drawn
    from `seed` and stop when a whole sweep improves nothing, or after `max_iter` sweeps."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise LandscapeError(f"weight matching: max_iter must be an integer >= 1, not {max_iter!r}")
    _check_state(spec, state_a, "model A")
    _check_state(spec, state_b, "model B")
    keys = spec.state_keys()
    for key in keys:
        if tuple(state_a[key].shape) != tuple(state_b[key].shape):
            raise LandscapeError(f"weight matching: {key!r} has shape {tuple(state_a[key].shape)} in model A "
                                 f"but {tuple(state_b[key].shape)} in model B")
        if not (state_a[key].is_floating_point() and state_b[key].is_floating_point()):
            raise LandscapeError(f"weight matching: {key!r} is not a floating-point tensor")
    with torch.no_grad():
        a = {k: state_a[k].detach().to("cpu", torch.float64) for k in keys}
        b = {k: state_b[k].detach().to("cpu", torch.float64, copy=True) for k in keys}  # B as currently permuted
        norms = {k: (float(a[k].norm()), float(b[k].norm())) for k in keys}
        for k, (na, nb) in norms.items():  # a norm of float64 copies is finite exactly when every entry is
            if not (np.isfinite(na) and np.isfinite(nb)):
                raise LandscapeError(f"weight matching: {k!r} holds non-finite values")
        groups = spec.groups
        touching: dict[str, list[int]] = {}
        for gi, g in enumerate(groups):
            for key, _ in g.axes:
                touching.setdefault(key, []).append(gi)
        # A never changes: its (units, rest) matrices are made once, gathered by the other groups each key
        # also belongs to. A part of a group's similarity matrix (kept in B's original unit order) stays
        # valid until one of those groups moves, so only stale parts are recomputed. A key read twice by the
        # same group (a square weight inside a residual stream) makes the step quadratic: its part is always
        # recomputed, and such a step is kept only if the exact objective rises.
        parts: list[dict[tuple[int, ...] | None, list[tuple[str, int, Tensor]]]] = []
        coupled = []
        for gi, g in enumerate(groups):
            by_sig: dict[tuple[int, ...] | None, list[tuple[str, int, Tensor]]] = {}
            for key, axis in g.axes:
                others = touching[key]
                sig = None if others.count(gi) > 1 else tuple(sorted(set(others) - {gi}))
                by_sig.setdefault(sig, []).append((key, axis, _units(a[key], axis, g).contiguous()))
            parts.append(by_sig)
            coupled.append(None in by_sig)
        # a group's best assignment changes only after a group sharing one of its keys moved
        neighbours = [set().union(*(touching[key] for key, _ in g.axes)) - ({gi} if not coupled[gi] else set())
                      for gi, g in enumerate(groups)]
        dirty = set(range(len(groups)))
        version = [0] * len(groups)
        cache: list[dict[tuple[int, ...], tuple[tuple[int, ...], Tensor]]] = [{} for _ in groups]
        tol = 1e-12 * max(sum(na * nb for na, nb in norms.values()), 1e-300)  # below this: rounding, not progress
        perms = [torch.arange(g.size) for g in groups]
        generator = torch.Generator().manual_seed(int(seed))
        objective: list[float] = []
        for _ in range(max_iter):
            improved = False
            for gi in torch.randperm(len(groups), generator=generator).tolist():
                if gi not in dirty:
                    continue
                dirty.discard(gi)
                g, old = groups[gi], perms[gi]
                c = torch.zeros(g.size, g.size, dtype=torch.float64)
                for sig, items in parts[gi].items():
                    stamp = None if sig is None else tuple(version[o] for o in sig)
                    hit = cache[gi].get(sig) if sig is not None else None
                    if hit is not None and hit[0] == stamp:
                        c += hit[1]
                        continue
                    c_cur = torch.zeros(g.size, g.size, dtype=torch.float64)
                    for key, axis, au in items:
                        c_cur += au @ _units(b[key], axis, g).T
                    # b holds B already moved by `old`; part[i, j]: A's unit i against B's original unit j
                    part = torch.empty_like(c_cur)
                    part[:, old] = c_cur
                    if sig is not None:
                        cache[gi][sig] = (stamp, part)
                    c += part
                new = _assign(c, g.within)
                rows = torch.arange(g.size)
                gain = float(c[rows, new].sum() - c[rows, old].sum())
                rel = torch.argsort(old)[new]  # from the current order to the new one
                if coupled[gi] and gain > tol:
                    own = {key for key, _ in g.axes}
                    trial = _moved(b, g, rel)
                    gain = sum(_dot(a[k], trial[k]) - _dot(a[k], b[k]) for k in own)
                if gain > tol:
                    b.update(_moved(b, g, rel))
                    perms[gi] = new
                    version[gi] += 1
                    improved = True
                    dirty |= neighbours[gi]
            objective.append(float(sum(_dot(a[k], b[k]) for k in keys)))
            if not improved:
                break
    return {g.name: p for g, p in zip(groups, perms)}, objective


def _dot(x: Tensor, y: Tensor) -> float:
    return float(torch.dot(x.reshape(-1), y.reshape(-1)))


def _moved(b: Mapping[str, Tensor], g: PermutationGroup, rel: Tensor) -> dict[str, Tensor]:
    """Group g's keys of `b` with g's units moved by `rel` (every other group's order untouched)."""
    out: dict[str, Tensor] = {}
    for key, axis in g.axes:
        t = out.get(key, b[key])
        out[key] = t.index_select(axis, unit_index(rel, g, t.shape[axis]))
    return out
