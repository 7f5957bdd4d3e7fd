"""Ensemble metrics for every size 1..K: accuracy, NLL, ECE, Brier, diversity, calibrated NLL.

Forward passes stream the data once: each batch goes through every member before the next
batch, so memory holds one batch of logits per member (unless predictions are kept). Every
metric, for every size and every member order (the given one and `orders` random ones), comes
from one call of the fused op `landscape_kernels.ensemble.ensemble_metrics_orders` per batch: accuracy,
NLL, ECE, Brier, pairwise disagreement, mean KL of the members from the ensemble, and the
temperature-scaled NLL (Ashukha et al. 2020) with temperatures fitted on validation data for
each order and size (`fit_temperatures`).
"""
from __future__ import annotations

import copy
import math
import re
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from landscape.core.bn import FoldedEval
from landscape.core.checkpoints import Snapshot
from landscape.core.errors import LandscapeError
from landscape_kernels.ensemble import EnsembleMetrics, ensemble_metrics_orders

ROW_KEYS = ("size", "acc", "nll", "ece", "brier", "conf", "member_acc", "disagreement", "kl", "cal_nll",
            "temperature")
# Temperatures are searched in [e^-4, e^4]; an optimum outside is reported (TemperatureFit.at_bound).
LOG_T_BOUNDS = (-4.0, 4.0)


def member_orders(m: int, orders: int = 0, seed: int = 0) -> torch.Tensor:
    """[1 + orders, m] int64: the given member order first, then `orders` random ones (seeded)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.arange(m)] + [torch.randperm(m, generator=g) for _ in range(orders)])


def _kernel_metrics(logits: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor,
                    temperatures: torch.Tensor | None, members: Sequence[str]) -> list[EnsembleMetrics]:
    try:
        return ensemble_metrics_orders(logits, labels, orders, temperatures=temperatures)
    except ValueError as exc:  # the op names members by index: add their source
        text = re.sub(r"member (\d+)", lambda m: f"member {m[1]} ({members[int(m[1])]})", str(exc), count=1)
        raise LandscapeError(text) from None


# --------------------------------------------------------------------------------------------
# temperature scaling


def _fit_one(z: torch.Tensor, y: torch.Tensor, b0: float = 1.0) -> tuple[float, bool, float]:
    """(T, at_bound, NLL at T) minimising mean_n -log softmax(z_n / T)_{y_n} over T in the bounds.

    The NLL is convex in b = 1/T (a logsumexp of functions linear in b, minus a linear term), so
    Newton's method on b, kept inside a shrinking bracket (bisection when a step leaves it),
    finds the minimum to machine precision in a few evaluations from a warm start b0. When a
    step leaves the search range it tries the bound: a slope there that still points outward
    puts the optimum beyond it (at_bound). An NLL of exactly 0 (every label certain, e.g. all
    samples right with a wide margin) keeps falling towards T -> 0: the lower bound too.
    """
    zy = z.gather(1, y.view(-1, 1)).squeeze(1)
    z2 = z * z

    def at(b: float) -> tuple[float, float, float]:
        e = torch.mul(z, b)
        mx = e.amax(1, keepdim=True)
        e.sub_(mx).exp_()
        s = e.sum(1)
        ez = torch.linalg.vecdot(e, z) / s  # E_q z, q = softmax(b z)
        var = (torch.linalg.vecdot(e, z2) / s - ez * ez).clamp_min_(0.0)
        f = float((mx.squeeze(1) + s.log() - b * zy).mean())
        return f, float((ez - zy).mean()), float(var.mean())  # NLL, dNLL/db, d2NLL/db2

    b_lo, b_hi = math.exp(-LOG_T_BOUNDS[1]), math.exp(-LOG_T_BOUNDS[0])
    lo, hi = b_lo, b_hi
    b = min(max(b0, b_lo), b_hi)
    for _ in range(100):
        f, g, h = at(b)
        if g == 0.0:
            if f == 0.0:  # the NLL reached 0: it only falls further as T -> 0
                return 1.0 / b_hi, True, f
            return 1.0 / b, False, f  # stationary (flat: any temperature does as well)
        if (b == b_hi and g < 0) or (b == b_lo and g > 0):
            return 1.0 / b, True, f
        if g > 0:
            hi = b
        else:
            lo = b
        nb = b - g / h if h > 0 else (math.inf if g < 0 else 0.0)
        if abs(nb - b) <= 1e-12 * b:  # converged (a step this small may not leave b at all)
            break
        if not lo < nb < hi:
            if nb >= hi and hi == b_hi and b != b_hi:
                nb = b_hi  # try the bound itself
            elif nb <= lo and lo == b_lo and b != b_lo:
                nb = b_lo
            else:
                nb = math.sqrt(lo * hi)
        b = nb
    return 1.0 / b, False, f


class TemperatureFit:
    """Temperatures fitted on validation data for each member order (row) and ensemble size (column).

    orders [P, M] int64; temperatures [P, M] float64; at_bound [P, M] bool: the validation NLL
    still falls at the edge of the search range [e^-4, e^4] (e.g. validation accuracy 100% drives
    T to its lower bound), so the temperature is the bound, not an optimum; val_nll [P, M] the
    validation NLL at the temperature. Fits for other orders come from `for_orders` (the
    validation data are kept for that; prefix sets shared by orders are fitted once).
    """

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor | None = None) -> None:
        if logits.dim() != 3 or labels.dim() != 1 or labels.shape[0] != logits.shape[1]:
            raise LandscapeError(f"validation logits [M, N, C] and labels [N] do not match: "
                                 f"{tuple(logits.shape)} and {tuple(labels.shape)}")
        if not bool(torch.isfinite(logits).all()):
            raise LandscapeError("validation logits must be finite")
        m, _, c = logits.shape
        if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < c):
            raise LandscapeError(f"validation labels must lie in [0, {c})")
        self._logits = logits.detach().cpu()
        self._labels = labels.detach().cpu().long()
        self._cache: dict[frozenset[int], tuple[float, bool, float]] = {}  # by prefix set
        self.orders = torch.arange(m).unsqueeze(0) if orders is None else torch.as_tensor(orders).long().cpu()
        self.temperatures, self.at_bound, self.val_nll = self._fit(self.orders)

    def _fit(self, orders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        P, M = orders.shape
        if M != self._logits.shape[0] or not all(torch.equal(o.sort().values, torch.arange(M)) for o in orders):
            raise LandscapeError(f"member orders must be permutations of the {self._logits.shape[0]} members")
        out = torch.empty(3, P, M, dtype=torch.float64)
        for k, order in enumerate(orders.tolist()):
            acc, b = None, 1.0
            for j, i in enumerate(order):
                key = frozenset(order[:j + 1])
                lsm = torch.log_softmax(self._logits[i].double(), -1)
                acc = lsm if acc is None else torch.logaddexp(acc, lsm)  # log sum_{prefix} p_i
                if key not in self._cache:  # warm start: the previous size's temperature
                    self._cache[key] = _fit_one(acc - math.log(j + 1), self._labels, b)
                out[:, k, j] = torch.tensor(self._cache[key], dtype=torch.float64)
                b = 1.0 / self._cache[key][0]
        return out[0], out[1].bool(), out[2]

    def for_orders(self, orders: torch.Tensor) -> TemperatureFit:
        """The fit for these member orders [P, M] (fitting the prefixes not fitted yet)."""
        orders = torch.as_tensor(orders).long().cpu()
        if torch.equal(orders, self.orders):
            return self
        fit = copy.copy(self)
        fit.orders = orders
        fit.temperatures, fit.at_bound, fit.val_nll = self._fit(orders)
        return fit

    def bound_sizes(self, order: int = 0) -> list[int]:
        """Ensemble sizes (1-based) whose temperature in orders[order] hit the bound."""
        return [j + 1 for j in range(self.at_bound.shape[1]) if bool(self.at_bound[order, j])]

    def __repr__(self) -> str:
        return (f"TemperatureFit(orders={self.orders.shape[0]}, temperatures={self.temperatures[0].tolist()}, "
                f"at_bound={self.at_bound.any(0).tolist()})")


def fit_temperatures(logits: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor | None = None) -> TemperatureFit:
    """For each member order and size m, the temperature T minimising the NLL of softmax(log p̄_m / T)
    on validation logits [M, N, C] and labels [N]. orders: [P, M] permutations (`member_orders`),
    None for the given order. See TemperatureFit for what it returns (`at_bound` flags temperatures
    that ran into the search bound)."""
    return TemperatureFit(logits, labels, orders)


def _temperatures_for(temperatures: TemperatureFit | torch.Tensor | None, perms: torch.Tensor
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """[P, M] temperatures for these orders, and at_bound [P, M] where known."""
    if temperatures is None:
        return None, None
    if isinstance(temperatures, TemperatureFit):
        fit = temperatures.for_orders(perms)
        return fit.temperatures, fit.at_bound
    t = torch.as_tensor(temperatures, dtype=torch.float64).cpu()
    if t.dim() == 1:  # one temperature per size, used for every order
        t = t.expand(perms.shape[0], -1)
    if t.shape != perms.shape:
        raise LandscapeError(f"temperatures must have shape [{perms.shape[1]}] or {list(perms.shape)}, "
                             f"got {list(t.shape)}")
    return t, None


class MemberForward:
    """One eval-mode (BN-folded) copy per member, fed batch by batch."""

    def __init__(self, template: nn.Module, members: Sequence[Snapshot], device: torch.device) -> None:
        self.names = [s.name for s in members]
        self.models = []
        for s in members:
            model = copy.deepcopy(template)
            s.load_into(model)
            model.to(device).eval()
            self.models.append(FoldedEval(model))
        self.device = device

    @torch.no_grad()
    def batches(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(self.device)
            outs = []
            for name, model in zip(self.names, self.models):
                out = model(xb)
                if outs and out.shape[1:] != outs[0].shape[1:]:
                    raise LandscapeError(f"member {name!r} has {out.shape[-1]} classes, "
                                         f"member {self.names[0]!r} has {outs[0].shape[-1]}")
                outs.append(out.float())
            # no members (a rank with none to run): an empty [0, B, 0] keeps the batches in step
            logits = torch.stack(outs) if outs else torch.empty(0, xb.shape[0], 0, device=self.device)
            yield logits, y[start:start + batch_size].to(self.device)


def evaluate_ensemble(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], members: Sequence[str],
                      temperatures: TemperatureFit | torch.Tensor | None = None, orders: int = 0, seed: int = 0,
                      keep=None) -> dict[str, np.ndarray]:
    """Per-size metrics over a stream of [M, B, C] member-logit batches: one fused-op call per batch.

    `orders` > 0 also averages every metric over that many random member orders (seeded; see
    `member_orders`), each with its own temperatures. `temperatures`: a TemperatureFit (fitted
    for these orders, or fitted here from its validation data), a [M] tensor (every order) or a
    [1 + orders, M] tensor. `keep(start, logits)` receives each batch (to store predictions).
    """
    m = len(members)
    perms = member_orders(m, orders, seed)
    temps, at_bound = _temperatures_for(temperatures, perms)
    parts: list[list[EnsembleMetrics]] = [[] for _ in range(perms.shape[0])]
    start = 0
    for logits, labels in batches:
        if keep is not None:
            keep(start, logits)
        start += logits.shape[1]
        for k, met in enumerate(_kernel_metrics(logits, labels, perms, temps, members)):
            parts[k].append(met)
    if start == 0:
        raise LandscapeError("the evaluation data are empty")
    sizes = torch.arange(1, m + 1, dtype=torch.float64)
    results = []
    for k in range(perms.shape[0]):
        met = EnsembleMetrics.merge(parts[k])
        res = {"size": np.arange(1, m + 1), "acc": met.acc.numpy(), "nll": met.nll.numpy(), "ece": met.ece.numpy(),
               "brier": met.brier.numpy(), "conf": met.conf.numpy(),
               "member_acc": (torch.cumsum(met.member_acc, 0) / sizes).numpy(),
               "disagreement": met.disagreement.numpy(), "kl": met.kl.numpy()}
        if temps is not None:
            res["cal_nll"] = met.cal_nll.numpy()
            res["temperature"] = temps[k].numpy()
        if k == 0:
            res["member_accuracies"] = met.member_acc.numpy()
            res["member_nlls"] = met.member_nll.numpy()
            if at_bound is not None:
                res["temperature_at_bound"] = at_bound[0].numpy()
        results.append(res)
    if orders:
        first = results[0]
        avg = {key: np.mean([r[key] for r in results[1:]], axis=0) for key in first
               if key not in ("size", "member_accuracies", "member_nlls", "temperature_at_bound")}
        first.update({f"{k}_orders_mean": v for k, v in avg.items()})
    return results[0]


def table_rows(res: dict[str, np.ndarray]) -> list[dict[str, float]]:
    keys = [k for k in ROW_KEYS if k in res]
    return [{k: (int(res[k][i]) if k == "size" else float(res[k][i])) for k in keys} for i in range(len(res["size"]))]
