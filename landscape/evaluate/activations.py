"""Activation matching: the unit permutation of model B whose activations correlate best with A's.

Ainsworth et al. (2023, "activation matching") and Jordan et al. (2023, REPAIR) align two networks by
the correlations of their hidden units on data: for each permutation group, the units' outputs of A
and of B are collected on the same inputs, their Pearson correlation matrix C[i, j] = corr(a_i, b_j)
is formed, and `linear_sum_assignment(C, maximize=True)` gives the permutation. Unlike weight
matching, each group is solved on its own (the activations already carry the layers before it).

A group's units are observed at the outputs of the Linear and Conv layers that produce them (their
`weight`'s axis 0 is the group's). A residual stream tied over several layers sums their correlations.
A group no such layer produces (attention heads, made inside nn.MultiheadAttention) is left in place
and listed as such.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from landscape.core.errors import LandscapeError
from landscape.geometry.permutations import PermutationSpec, identity_perms

_PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _producers(spec: PermutationSpec, model: nn.Module) -> dict[str, list[str]]:
    """For each group with unit-sized blocks, the modules whose outputs are its units."""
    modules = dict(model.named_modules())
    out: dict[str, list[str]] = {}
    for g in spec.groups:
        if g.block != 1:
            continue
        for key, axis in g.axes:
            owner, _, leaf = key.rpartition(".")
            mod = modules.get(owner)
            if axis == 0 and leaf == "weight" and isinstance(mod, _PRODUCERS) and mod.weight.shape[0] == g.size:
                out.setdefault(g.name, []).append(owner)
    return out


class _Moments:
    """Running sums for the correlations of two sets of n units over many samples (fp64)."""

    def __init__(self, n: int) -> None:
        self.count = 0
        self.sa = torch.zeros(n, dtype=torch.float64)
        self.sb = torch.zeros(n, dtype=torch.float64)
        self.saa = torch.zeros(n, dtype=torch.float64)
        self.sbb = torch.zeros(n, dtype=torch.float64)
        self.sab = torch.zeros(n, n, dtype=torch.float64)

    def add(self, a: Tensor, b: Tensor) -> None:  # [samples, n] each
        a, b = a.double(), b.double()
        self.count += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def correlation(self) -> Tensor:
        n = max(self.count, 1)
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - torch.outer(ma, mb)
        sa = (self.saa / n - ma * ma).clamp_min(0).sqrt()
        sb = (self.sbb / n - mb * mb).clamp_min(0).sqrt()
        return cov / (torch.outer(sa, sb) + 1e-12)  # a dead unit correlates with nothing


def _units_last(t: Tensor, module: nn.Module) -> Tensor:
    """A layer's output as [samples·positions, units]: channels are axis 1 of a conv's output and
    the last axis of a Linear's."""
    if isinstance(module, nn.Linear):
        return t.reshape(-1, t.shape[-1])
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _assign(c: np.ndarray, within: int) -> np.ndarray:
    n = c.shape[0]
    if not within or within >= n:
        return linear_sum_assignment(c, maximize=True)[1]
    return np.concatenate([linear_sum_assignment(c[s:s + within, s:s + within], maximize=True)[1] + s
                           for s in range(0, n, within)])


@torch.no_grad()
def activation_matching(spec: PermutationSpec, model_a: nn.Module, model_b: nn.Module,
                        batches: Iterable[Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The permutation of B's units (group name -> perm, perm[i] = the unit of B put at i) that
    maximises each group's summed correlation with A's units, from the inputs in `batches`; and a
    report: the mean matched correlation per group before and after, and the groups left in place."""
    producers = _producers(spec, model_a)
    if not producers:  # checked again after the passes: a producer must also run
        raise LandscapeError("activation matching found no Linear or Conv layer producing the units of any "
                             "group: use weight matching (--method weight)")
    mods_a, mods_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    moments = {(g, m): _Moments(spec.group(g).size) for g, ms in producers.items() for m in ms}
    seen: dict[str, dict[str, Tensor]] = {"a": {}, "b": {}}
    hooks = []
    for which, mods in (("a", mods_a), ("b", mods_b)):
        for name in {m for ms in producers.values() for m in ms}:
            module = mods[name]
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, which=which, name=name: seen[which].__setitem__(name, _units_last(out, mod))))
    was = model_a.training, model_b.training
    model_a.eval()
    model_b.eval()
    try:
        for x in batches:
            seen["a"].clear()
            seen["b"].clear()
            model_a(x)
            model_b(x)
            for (g, m), mom in moments.items():
                if m in seen["a"]:  # a layer whose weights are read inside another module never runs itself
                    mom.add(seen["a"][m].cpu(), seen["b"][m].cpu())
    finally:
        for h in hooks:
            h.remove()
        model_a.train(was[0])
        model_b.train(was[1])
    perms = identity_perms(spec)
    before, after = {}, {}
    for g, ms in producers.items():
        ms = [m for m in ms if moments[(g, m)].count]
        if not ms:
            continue
        corr = sum(moments[(g, m)].correlation() for m in ms) / len(ms)
        c = corr.numpy()
        p = _assign(c, spec.group(g).within)
        perms[g] = torch.from_numpy(p.astype(np.int64))
        before[g] = float(np.mean(np.diag(c)))
        after[g] = float(np.mean(c[np.arange(len(p)), p]))
    left = [g.name for g in spec.groups if g.name not in after]
    return perms, {"correlation_before": before, "correlation_after": after, "left_in_place": left}
