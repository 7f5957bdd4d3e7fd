"""Ensemble metrics for every size 1..K: accuracy, NLL, ECE, Brier, diversity, calibrated NLL.

Forward passes stream the data once: each batch goes through every member before the next
batch, so memory holds one batch of logits per member (unless predictions are kept). The
per-size accuracy/NLL/ECE/Brier come from the fused op `kernels.ensemble_metrics`; diversity
(pairwise disagreement, mean KL of the members from the ensemble) and temperature-scaled NLL
(Ashukha et al. 2020) are computed here on the same batches.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from kernels import EnsembleMetrics, ensemble_metrics

from .bn import FoldedEval
from .checkpoints import Snapshot
from .errors import LandscapeError

ROW_KEYS = ("size", "acc", "nll", "ece", "brier", "conf", "member_acc", "disagreement", "kl", "cal_nll",
            "temperature")


def _kernel_metrics(logits: torch.Tensor, labels: torch.Tensor, members: Sequence[str]) -> EnsembleMetrics:
    try:
        return ensemble_metrics(logits, labels)
    except ValueError as exc:  # the op names members by index: add their source
        text = re.sub(r"member (\d+)", lambda m: f"member {m[1]} ({members[int(m[1])]})", str(exc), count=1)
        raise LandscapeError(text) from None


@dataclass
class _Accumulator:
    """Running sums over batches for everything the kernel does not give."""

    m: int
    n: int = 0
    disagree: torch.Tensor = field(init=False)  # [M, M] counts of differing argmax
    kl: torch.Tensor = field(init=False)  # [M] sum over samples of mean_i KL(p_i || p̄_m)
    cal_nll: torch.Tensor = field(init=False)  # [M] sum of temperature-scaled NLL

    def __post_init__(self) -> None:
        self.disagree = torch.zeros(self.m, self.m, dtype=torch.float64)
        self.kl = torch.zeros(self.m, dtype=torch.float64)
        self.cal_nll = torch.zeros(self.m, dtype=torch.float64)

    def add(self, logp: torch.Tensor, labels: torch.Tensor, temperatures: torch.Tensor | None) -> None:
        """One batch of member log-probabilities [M, B, C] (fp64)."""
        pred = logp.argmax(-1)
        self.disagree += (pred.unsqueeze(0) != pred.unsqueeze(1)).sum(-1).double().cpu()
        ens = _prefix_log_mean(logp)  # [M, B, C]: log p̄_m
        neg_ent_members = (logp.exp() * logp).sum(-1).cumsum(0) / torch.arange(1, self.m + 1,
                                                                              device=logp.device).view(-1, 1)
        ent_ens = -(ens.exp() * ens).sum(-1)
        # mean_i KL(p_i || p̄_m) = H(p̄_m) − mean_i H(p_i)
        self.kl += (ent_ens + neg_ent_members).sum(-1).cpu()
        if temperatures is not None:
            scaled = torch.log_softmax(ens / temperatures.to(ens).view(-1, 1, 1), dim=-1)
            self.cal_nll -= scaled.gather(-1, labels.view(1, -1, 1).expand(self.m, -1, 1)).sum((1, 2)).cpu()
        self.n += logp.shape[1]

    def rows(self) -> dict[str, np.ndarray]:
        sizes = torch.arange(1, self.m + 1)
        upper = torch.triu(self.disagree, diagonal=1)
        pair_sums = upper.sum(0).cumsum(0)  # pairs (i<j) with j < m
        pairs = sizes * (sizes - 1) / 2
        disagreement = torch.where(pairs > 0, pair_sums / pairs.clamp_min(1) / self.n, torch.zeros(()))
        return {"disagreement": disagreement.numpy(), "kl": (self.kl / self.n).numpy(),
                "cal_nll": (self.cal_nll / self.n).numpy()}


def _prefix_log_mean(logp: torch.Tensor) -> torch.Tensor:
    """log of the mean probability of the first m members, for every m: logcumsumexp − log m."""
    m = torch.arange(1, logp.shape[0] + 1, device=logp.device, dtype=logp.dtype).view(-1, 1, 1)
    return torch.logcumsumexp(logp, dim=0) - m.log()


def fit_temperatures(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """For each size m, the temperature T minimising the NLL of softmax(log p̄_m / T) (validation data)."""
    ens = _prefix_log_mean(torch.log_softmax(logits.double(), dim=-1))
    temps = []
    for m in range(ens.shape[0]):
        lp, y = ens[m], labels.long()

        def nll(log_t: float) -> float:
            return float(-torch.log_softmax(lp / math.exp(log_t), -1).gather(1, y.view(-1, 1)).mean())

        temps.append(math.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))
    return torch.tensor(temps, dtype=torch.float64)


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
            yield torch.stack(outs), y[start:start + batch_size].to(self.device)


def evaluate_ensemble(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], members: Sequence[str],
                      temperatures: torch.Tensor | None = None, orders: int = 0, seed: int = 0,
                      keep=None) -> dict[str, np.ndarray]:
    """Per-size metrics over a stream of [M, B, C] member-logit batches.

    `orders` > 0 also averages every metric over that many random member orders (seeded).
    `keep(start, logits)` receives each batch (to store predictions).
    """
    m = len(members)
    perms = [torch.arange(m)]
    g = torch.Generator().manual_seed(seed)
    perms += [torch.randperm(m, generator=g) for _ in range(orders)]
    parts: list[list[EnsembleMetrics]] = [[] for _ in perms]
    accs = [_Accumulator(m) for _ in perms]
    start = 0
    for logits, labels in batches:
        if keep is not None:
            keep(start, logits)
        start += logits.shape[1]
        logp = torch.log_softmax(logits.double(), dim=-1)  # once per batch, whatever the orders
        for k, perm in enumerate(perms):
            p = perm.to(logits.device)
            parts[k].append(_kernel_metrics(logits[p], labels, [members[int(i)] for i in perm]))
            accs[k].add(logp[p], labels, temperatures)
    if start == 0:
        raise LandscapeError("the evaluation data are empty")
    results = []
    for k in range(len(perms)):
        met = EnsembleMetrics.merge(parts[k])
        extra = accs[k].rows()
        member_acc = torch.cumsum(met.member_acc, 0) / torch.arange(1, m + 1)
        res = {"size": np.arange(1, m + 1), "acc": met.acc.numpy(), "nll": met.nll.numpy(), "ece": met.ece.numpy(),
               "brier": met.brier.numpy(), "conf": met.conf.numpy(), "member_acc": member_acc.numpy(), **extra}
        if temperatures is None:
            res.pop("cal_nll")
        else:
            res["temperature"] = temperatures.numpy()
        if k == 0:
            res["member_accuracies"] = met.member_acc.numpy()
            res["member_nlls"] = met.member_nll.numpy()
        results.append(res)
    if orders:
        first = results[0]
        avg = {key: np.mean([r[key] for r in results[1:]], axis=0) for key in first
               if key not in ("size", "member_accuracies", "member_nlls", "temperature")}
        first.update({f"{k}_orders_mean": v for k, v in avg.items()})
    return results[0]


def table_rows(res: dict[str, np.ndarray]) -> list[dict[str, float]]:
    keys = [k for k in ROW_KEYS if k in res]
    return [{k: (int(res[k][i]) if k == "size" else float(res[k][i])) for k in keys} for i in range(len(res["size"]))]
