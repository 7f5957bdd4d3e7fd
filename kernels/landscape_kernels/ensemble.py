"""Fused ensemble metrics for every prefix size m = 1..M and every member order, in one pass.

Given member logits ``[M, N, C]``, labels ``[N]`` and P member orders (permutations of the
members), ``ensemble_metrics_orders`` returns, for each order and each ensemble of the first m
members of that order: the NLL of the averaged probabilities, accuracy, mean confidence, Brier
score, per-bin calibration sums (ECE), the mean KL divergence of the members from the ensemble,
and, given a temperature per order and size, the temperature-scaled NLL; plus each member's own
accuracy and NLL and the pairwise disagreement counts of the members' predictions.
``ensemble_metrics`` is the same for the given member order only.

Three implementations:

- ``ensemble_metrics_reference``: fp64, recomputes each size from scratch (one order); the
  specification.
- ``_metrics_torch``: vectorised torch (the CPU path; also CUDA, and fp64 everywhere). Chunks of
  samples stay in cache: one log-softmax per member for all orders, then per member position a
  running sum of probabilities for all orders at once, so nothing is recomputed per size.
- ``_metrics_triton``: a Triton kernel (the CUDA path for fp16/bf16/fp32) with one program per
  (block of samples, order); it reads each logit once per order, keeps the running sum of
  probabilities in registers and reduces per-size sums and bins per program; a deterministic
  torch sum over programs finishes the job.

Averaging is stable: probabilities are summed in linear space (each lies in [0, 1], so nothing
overflows), and the label's log probability, the only quantity that can underflow, is taken as a
running logsumexp of member log-softmaxes (Triton) or recomputed that way for the few samples
whose label probability underflows (torch). The scaled NLL with a large temperature also needs
the classes whose probabilities underflow (T flattens log p̄): for T above ~2.5 the samples
where that can happen (``_cal_hard``) are computed exactly in fp64 on both paths.

fp64 logits stay fp64 (torch path, also on CUDA); fp16/bf16/fp32 compute in fp32 with fp64 sums.

Per-sample formulas (p_i: member i's probabilities, S_m = sum_{i<=m} p_i, p̄_m = S_m / m):

- mean_{i<=m} KL(p_i || p̄_m) = H(p̄_m) - mean_{i<=m} H(p_i), with
  H(p̄_m) = log m - (1/m) sum_c S_c log S_c (sum_c S_c = m) and H(p_i) = -sum_c p_ic log p_ic;
- temperature-scaled NLL, -log softmax(log p̄_m / T)_y with b = 1/T and S* = max_c S_c:
  log sum_c (S_c / S*)^b - b (log S_y - log S*)  (log m cancels; every power lies in [0, 1]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from .dispatch import use_triton

try:  # Triton is Linux-only; the torch paths work without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None
    tl = None

__all__ = [
    "EnsembleMetrics",
    "ensemble_metrics",
    "ensemble_metrics_orders",
    "ensemble_metrics_reference",
]

_IMPLS = ("auto", "reference", "torch", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Torch path: elements of one chunk's working set, (M + 3P) x rows x C (member probabilities and
# per-order running sums and scratch). 2M elements = 8 MB in fp32: it stays in L3 while every
# op still gets enough elements to use all threads.
_CHUNK_ELEMS = 2_000_000
# Triton path: widest class dimension kept in registers; wider inputs use the torch path.
_TRITON_MAX_C = 8192
# Elements of one [BLOCK_N, BLOCK_C] tile (at least one row of BLOCK_C). The interpreter runs
# the GPU's own tiles, so tests see the same number of programs as a GPU launch. ptxas (sm_80 and
# sm_90, via tests/test_kernel_aot.py): 512-element tiles need 112-152 registers per thread and
# no spills for C <= 1024; 1024-element tiles need 230-255 (half the resident warps per SM).
_TILE_GPU = 512


@dataclass(frozen=True)
class EnsembleMetrics:
    """Metrics for ensembles of the first m members of one order, m = 1..M (row m-1), as CPU
    float64 tensors. Member quantities are indexed by position in that order.

    Bin statistics and disagreement counts are sums (not means) so results on disjoint sample
    sets merge by addition. Accuracies are fractions in [0, 1].
    """

    nll: torch.Tensor  # [M] mean over samples of -log(mean member prob of the label)
    acc: torch.Tensor  # [M] fraction whose averaged-prob argmax (first on ties) is the label
    conf: torch.Tensor  # [M] mean of the max averaged probability
    brier: torch.Tensor  # [M] mean over samples of sum_c (p_c - onehot_c)^2
    bin_count: torch.Tensor  # [M, n_bins] samples per equal-width confidence bin on [0, 1]
    bin_conf_sum: torch.Tensor  # [M, n_bins] sum of confidences per bin
    bin_correct: torch.Tensor  # [M, n_bins] number of correct predictions per bin
    member_acc: torch.Tensor  # [M] each member's own accuracy
    member_nll: torch.Tensor  # [M] each member's own NLL
    kl: torch.Tensor  # [M] mean over samples of mean_{i<=m} KL(p_i || p̄_m)
    pair_disagree: torch.Tensor  # [M, M] samples where the members at positions i, j predict differently
    n_samples: int
    cal_nll: torch.Tensor | None = None  # [M] mean NLL of softmax(log p̄_m / T_m), if temperatures given

    @property
    def ece(self) -> torch.Tensor:
        """[M] expected calibration error: sum_b |acc_b - conf_b| * count_b / N."""
        return (self.bin_correct - self.bin_conf_sum).abs().sum(-1) / self.n_samples

    @property
    def disagreement(self) -> torch.Tensor:
        """[M] mean over member pairs i < j <= m of the fraction of samples they predict differently
        (0 for m = 1)."""
        M = self.pair_disagree.shape[0]
        upper = torch.triu(self.pair_disagree, diagonal=1)
        pair_sums = upper.sum(0).cumsum(0)  # pairs (i < j) with j < m
        sizes = torch.arange(1, M + 1, dtype=torch.float64)
        pairs = sizes * (sizes - 1) / 2
        zero = torch.zeros((), dtype=torch.float64)
        return torch.where(pairs > 0, pair_sums / pairs.clamp_min(1) / self.n_samples, zero)

    @property
    def n_bins(self) -> int:
        return int(self.bin_count.shape[-1])

    @property
    def sizes(self) -> list[int]:
        return list(range(1, self.nll.shape[0] + 1))

    def to_rows(self) -> list[dict[str, float | int]]:
        """One JSON-ready dict per ensemble size."""
        ece, dis = self.ece, self.disagreement
        rows = []
        for m in self.sizes:
            row: dict[str, float | int] = {
                "size": m,
                "acc": float(self.acc[m - 1]),
                "nll": float(self.nll[m - 1]),
                "ece": float(ece[m - 1]),
                "brier": float(self.brier[m - 1]),
                "conf": float(self.conf[m - 1]),
                "disagreement": float(dis[m - 1]),
                "kl": float(self.kl[m - 1]),
            }
            if self.cal_nll is not None:
                row["cal_nll"] = float(self.cal_nll[m - 1])
            rows.append(row)
        return rows

    @classmethod
    def merge(cls, parts: Sequence[EnsembleMetrics]) -> EnsembleMetrics:
        """Combine metrics computed on disjoint sets of samples (same members, order and bins)."""
        if not parts:
            raise ValueError("merge needs at least one EnsembleMetrics")
        n = sum(p.n_samples for p in parts)
        out: dict[str, object] = {"n_samples": n}
        for f in fields(cls):
            if f.name == "n_samples":
                continue
            vals = [getattr(p, f.name) for p in parts]
            if any(v is None for v in vals):
                if not all(v is None for v in vals):
                    raise ValueError(f"merge: {f.name} is missing from some parts")
                out[f.name] = None
            elif f.name in _SUM_FIELDS:
                out[f.name] = torch.stack(vals).sum(0)
            else:  # means: weight by sample count
                out[f.name] = sum(v * p.n_samples for v, p in zip(vals, parts)) / n
        return cls(**out)  # type: ignore[arg-type]


_SUM_FIELDS = ("bin_count", "bin_conf_sum", "bin_correct", "pair_disagree")


# --------------------------------------------------------------------------------------------
# validation


def _validate(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Check shapes, dtypes and label range; return labels as int64 on the logits' device."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError("logits and labels must be torch tensors")
    if logits.dim() != 3:
        raise ValueError(
            f"logits must have shape [M, N, C] (members, samples, classes), got {tuple(logits.shape)}"
        )
    M, N, C = logits.shape
    if M == 0 or N == 0 or C == 0:
        raise ValueError(f"logits needs M, N, C >= 1 (members, samples, classes), got {tuple(logits.shape)}")
    if logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if labels.dim() != 1 or labels.shape[0] != N:
        raise ValueError(
            f"labels must have shape [N] = [{N}] to match logits [M, N, C] = [{M}, {N}, {C}], "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    labels = labels.to(device=logits.device, dtype=torch.int64)
    bad = (labels < 0) | (labels >= C)
    if bool(bad.any()):
        i = int(bad.to(torch.uint8).argmax())
        raise ValueError(f"labels must lie in [0, {C}): sample {i} has label {int(labels[i])}")
    return labels


def _validate_orders(orders: object, M: int) -> torch.Tensor:
    """[P, M] int64 CPU tensor, each row a permutation of 0..M-1 (None: the identity order)."""
    if orders is None:
        return torch.arange(M).unsqueeze(0)
    try:
        o = torch.as_tensor(orders)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"orders must be a [P, M] integer tensor, got {type(orders).__name__}") from None
    if o.dim() == 1:
        o = o.unsqueeze(0)
    if o.dim() != 2 or o.shape[1] != M or o.shape[0] == 0:
        raise ValueError(f"orders must have shape [P, M] with M = {M} members and P >= 1, got {tuple(o.shape)}")
    if o.dtype.is_floating_point or o.dtype.is_complex or o.dtype == torch.bool:
        raise ValueError(f"orders must be an integer tensor, got {o.dtype}")
    o = o.to("cpu", torch.int64)
    want = torch.arange(M)
    for k in range(o.shape[0]):
        if not torch.equal(o[k].sort().values, want):
            raise ValueError(f"orders[{k}] must be a permutation of 0..{M - 1}, got {o[k].tolist()}")
    return o


def _validate_temperatures(temperatures: object, P: int, M: int) -> torch.Tensor | None:
    """[P, M] float64 CPU tensor of positive finite temperatures ([M] applies to every order)."""
    if temperatures is None:
        return None
    try:
        t = torch.as_tensor(temperatures).detach().to("cpu", torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"temperatures must be a [M] or [P, M] float tensor, got {type(temperatures).__name__}"
        ) from None
    if t.dim() == 1 and t.shape[0] == M:
        t = t.expand(P, M)
    if t.shape != (P, M):
        raise ValueError(f"temperatures must have shape [M] = [{M}] or [P, M] = [{P}, {M}], got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"temperatures must be positive and finite, got {t.flatten().tolist()}")
    return t.contiguous()


def _raise_if_nonfinite(logits: torch.Tensor) -> None:
    """Full check (a pass over the logits): raise naming the first bad member/sample/class."""
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        flat = int(bad.flatten().to(torch.uint8).argmax())
        _, N, C = logits.shape
        m, n, c = flat // (N * C), (flat // C) % N, flat % C
        raise ValueError(
            f"logits must be finite: member {m}, sample {n}, class {c} is {float(logits[m, n, c])}"
        )


def _pair_disagreement(pred: torch.Tensor) -> torch.Tensor:
    """[M, M] float64 counts of samples where members i and j predict different classes."""
    M, N = pred.shape
    out = torch.zeros(M, M, dtype=torch.float64, device=pred.device)
    for i in range(M - 1):  # [M - i - 1, N] comparisons at a time: memory stays O(M N)
        d = (pred[i + 1:] != pred[i]).sum(-1).double()
        out[i, i + 1:] = d
        out[i + 1:, i] = d
    return out.cpu()


# --------------------------------------------------------------------------------------------
# reference (the specification)


def ensemble_metrics_reference(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    order: Sequence[int] | torch.Tensor | None = None,
    temperatures: torch.Tensor | Sequence[float] | None = None,
) -> EnsembleMetrics:
    """fp64 CPU reference for one member order: each size recomputed from scratch as logsumexp
    of log-softmaxes; KL and the scaled NLL straight from their definitions."""
    labels = _validate(logits, labels, n_bins)
    perm = _validate_orders(order, logits.shape[0])[0]
    temps = _validate_temperatures(temperatures, 1, logits.shape[0])
    _raise_if_nonfinite(logits)
    x = logits.detach().to("cpu", torch.float64)[perm]
    y = labels.cpu()
    M, N, C = x.shape
    rows = torch.arange(N)
    onehot = torch.nn.functional.one_hot(y, C).double()
    lsm = torch.log_softmax(x, -1)  # [M, N, C] member log-probs
    probs = lsm.exp()

    keys = ("nll", "acc", "conf", "brier", "cnt", "cs", "cc", "kl", "cal")
    per_size: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for m in range(1, M + 1):
        logp = torch.logsumexp(lsm[:m], 0) - math.log(m)  # log of the averaged probabilities
        p = logp.exp()
        conf = p.amax(-1)
        correct = (p.argmax(-1) == y).double()  # argmax takes the first index on ties
        b = (conf * n_bins).floor().long().clamp(0, n_bins - 1)  # conf == 1.0 -> last bin
        per_size["nll"].append(-logp[rows, y].mean())
        per_size["acc"].append(correct.mean())
        per_size["conf"].append(conf.mean())
        per_size["brier"].append(((p - onehot) ** 2).sum(-1).mean())
        per_size["cnt"].append(torch.bincount(b, minlength=n_bins).double())
        per_size["cs"].append(torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, conf))
        per_size["cc"].append(torch.zeros(n_bins, dtype=torch.float64).index_add_(0, b, correct))
        # KL(p_i || p̄_m) = sum_c p_ic (log p_ic - log p̄_mc), averaged over members and samples
        per_size["kl"].append((probs[:m] * (lsm[:m] - logp)).sum(-1).mean())
        if temps is not None:
            scaled = torch.log_softmax(logp / temps[0, m - 1], -1)
            per_size["cal"].append(-scaled[rows, y].mean())
    s = {k: torch.stack(v) if v else None for k, v in per_size.items()}
    pred = lsm.argmax(-1)  # [M, N]
    return EnsembleMetrics(
        nll=s["nll"],
        acc=s["acc"],
        conf=s["conf"],
        brier=s["brier"],
        bin_count=s["cnt"],
        bin_conf_sum=s["cs"],
        bin_correct=s["cc"],
        member_acc=(pred == y).double().mean(1),
        member_nll=-lsm[:, rows, y].mean(1),
        kl=s["kl"],
        pair_disagree=(pred.unsqueeze(0) != pred.unsqueeze(1)).double().sum(-1),
        n_samples=N,
        cal_nll=s["cal"],
    )


# --------------------------------------------------------------------------------------------
# vectorised torch path (CPU; device-agnostic; the fp64 path everywhere)


def _finalize(
    orders: torch.Tensor,
    lp_ens: torch.Tensor,
    cor_ens: torch.Tensor,
    conf: torch.Tensor,
    brier: torch.Tensor,
    kl: torch.Tensor,
    cal_nll: torch.Tensor | None,
    mem_acc: torch.Tensor,
    mem_nll: torch.Tensor,
    disagree: torch.Tensor,
    n_bins: int,
) -> list[EnsembleMetrics]:
    """Reduce per-(size, order, sample) values [M, P, N] to per-order, per-size metrics and bin
    sums (fp64 sums); member values [M] (by member) are permuted into each order."""
    M, P, N = conf.shape
    f64 = torch.float64
    b = (conf * n_bins).long().clamp_(max=n_bins - 1)  # conf >= 0: truncation is floor
    # flat bin index over (order, size, bin)
    base = (torch.arange(P, device=b.device).view(1, P, 1) * M + torch.arange(M, device=b.device).view(M, 1, 1))
    flat = (b + base * n_bins).flatten()
    L = P * M * n_bins

    def mean(v: torch.Tensor) -> torch.Tensor:  # [M, P, N] -> [P, M]; float sums are cascaded
        return (v.sum(-1).to(f64) / N).T.cpu()

    count = torch.bincount(flat, minlength=L).to(f64).view(P, M, n_bins).cpu()
    correct = torch.bincount(flat[cor_ens.flatten()], minlength=L).to(f64).view(P, M, n_bins).cpu()
    conf_sum = torch.bincount(flat, weights=conf.flatten().to(f64), minlength=L).view(P, M, n_bins).cpu()
    nll, acc, cf, br, kl_m = -mean(lp_ens), mean(cor_ens), mean(conf), mean(brier), mean(kl)
    cal_m = mean(cal_nll) if cal_nll is not None else None
    out = []
    for k in range(P):
        o = orders[k]
        out.append(
            EnsembleMetrics(
                nll=nll[k],
                acc=acc[k],
                conf=cf[k],
                brier=br[k],
                bin_count=count[k],
                bin_conf_sum=conf_sum[k],
                bin_correct=correct[k],
                member_acc=mem_acc[o],
                member_nll=mem_nll[o],
                kl=kl_m[k],
                pair_disagree=disagree[o][:, o].contiguous(),
                n_samples=N,
                cal_nll=cal_m[k] if cal_m is not None else None,
            )
        )
    return out


def _cal_hard(logits: torch.Tensor, temps: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """[N] bool: samples whose temperature-scaled NLL the linear-space formula may get wrong.

    log sum_c (S_c/S*)^b sums probabilities; a class whose probability underflows (S_c < thr,
    thr = tiny * 1e8) drops a term of at most (thr C)^b each, C (thr C)^b in all, which stays
    below eps = 1e-9 when b >= log(C / eps) / log(1 / (thr C)) (T <= ~2.5 for fp32, C = 100).
    Beyond that, samples where some member's logits spread over more than log(1 / (thr C)) (so
    a probability can fall below thr) take the exact fp64 path.
    """
    M, N, C = logits.shape
    thr = torch.finfo(cdt).tiny * 1e8
    gap = math.log(1.0 / (thr * C))
    if gap <= 0 or float(temps.max()) <= gap / math.log(C / 1e-9):
        return torch.zeros(N, dtype=torch.bool, device=logits.device)
    lo, hi = torch.aminmax(logits, dim=-1)  # [M, N]
    return ((hi.to(torch.float64) - lo.to(torch.float64)) > gap).any(0)


def _exact_lp_cal(
    logits: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor, temps: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp64 log p̄_y and scaled NLL [M, P, n] for a few samples: log-softmax, then logcumsumexp
    over the members of each order (what the reference does)."""
    M, n, _ = logits.shape
    P = orders.shape[0]
    f64 = torch.float64
    dev = logits.device
    log_sz = torch.arange(1, M + 1, dtype=f64, device=dev).log()
    lsm = torch.log_softmax(logits.to(f64), -1)  # [M, n, C]
    idx = labels.view(1, -1, 1).expand(M, -1, 1)
    lp = torch.empty(M, P, n, dtype=f64, device=dev)
    cal = torch.empty(M, P, n, dtype=f64, device=dev) if temps is not None else None
    for k in range(P):
        lsk = lsm[orders[k].to(dev)]
        if cal is None:
            lp[:, k] = torch.logcumsumexp(lsk.gather(-1, idx).squeeze(-1), 0) - log_sz.view(M, 1)
            continue
        z = torch.logcumsumexp(lsk, 0) - log_sz.view(M, 1, 1)  # [M, n, C]: log p̄
        lp[:, k] = z.gather(-1, idx).squeeze(-1)
        scaled = torch.log_softmax(z * (1.0 / temps[k].to(dev, f64)).view(M, 1, 1), -1)
        cal[:, k] = -scaled.gather(-1, idx).squeeze(-1)
    return lp, cal


# CPU elementwise helpers. numpy's SIMD loops (AVX-512 here) measured 2.7x faster than torch's
# for fp32 log, 1.8x for exp and 5x for argmax over the class dimension (torch 2.14.1, numpy 2.4,
# one thread, [5, 500, 100] fp32); elsewhere (CUDA, fp16/bf16) torch does the work.
_NP_DTYPES = (torch.float32, torch.float64)


def _on_numpy(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.dtype in _NP_DTYPES


def _log_(t: torch.Tensor) -> torch.Tensor:
    if _on_numpy(t) and t.is_contiguous():
        a = t.numpy()
        np.log(a, out=a)
        return t
    return t.log_()


def _exp(t: torch.Tensor) -> torch.Tensor:
    if _on_numpy(t):
        return torch.from_numpy(np.exp(t.numpy()))
    return torch.exp(t)


def _argmax_last(t: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum over the last dimension (torch.argmax's rule)."""
    if _on_numpy(t):
        return torch.from_numpy(np.argmax(t.numpy(), -1))
    return torch.argmax(t, -1)


def _metrics_torch(
    logits: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    temps: torch.Tensor | None,
    n_bins: int,
) -> list[EnsembleMetrics]:
    """One log-softmax per member and chunk, then per member position one running sum of
    probabilities per order (all orders in each op), chunked over samples.

    Per chunk: four ops over all members' [M, rows, C] (log-softmax, exp, entropy, argmax), then
    per position seven ops over the orders' [P, rows, C] (gather, add, max, norm, clamp, log,
    dot), three more with temperatures; all per-size arithmetic then runs on small [M, P, N]
    tensors. KL needs no log at size 1 (it is 0) and one for all orders at size M (every order's
    full ensemble is the same set of members).
    """
    M, N, C = logits.shape
    P = orders.shape[0]
    dev = logits.device
    f64 = torch.float64
    cdt = f64 if logits.dtype == f64 else torch.float32
    tiny = torch.finfo(cdt).tiny
    # One cheap pass (min and max propagate NaN, and do not overflow like a sum) guards the
    # full, slower search for the first bad logit.
    lo, hi = torch.aminmax(logits)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        _raise_if_nonfinite(logits)

    ol = orders.tolist()
    ord_dev = orders.to(dev)
    betas = None if temps is None else (1.0 / temps).to(dev, cdt)  # [P, M]

    def new(*shape: int, dtype: torch.dtype = cdt) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device=dev)

    # per (member, sample)
    pl, lp_mem, ent = new(M, N), new(M, N), new(M, N)  # label prob, label log-prob, entropy
    pred = new(M, N, dtype=torch.int64)
    # per (position, order, sample); row j belongs to size j + 1
    ql, qo, qn, slogs = new(M, P, N), new(M, P, N), new(M, P, N), new(M, P, N)
    cor = new(M, P, N, dtype=torch.bool)
    cal = new(M, P, N) if betas is not None else None
    slogs[0] = 0.0  # size 1: KL = 0, nothing to compute

    step = max(1, _CHUNK_ELEMS // ((M + 3 * P) * C))
    cols = torch.arange(C, device=dev)
    for n0 in range(0, N, step):
        sl = slice(n0, min(N, n0 + step))
        r = sl.stop - n0
        lab = labels[sl]
        x = logits[:, sl]  # [M, r, C] view
        # flat positions of the labels in an [M, r, C] buffer: index_select/index_fill_ on them
        # are ~5x faster than gather/scatter_ on the CPU
        flat = (torch.arange(M, device=dev).view(M, 1) * (r * C) + torch.arange(r, device=dev) * C + lab).view(-1)
        lsm = torch.log_softmax(x.to(cdt), -1)
        lp_mem[:, sl] = torch.index_select(lsm.view(-1), 0, flat).view(M, r)
        p = _exp(lsm)
        ent[:, sl] = torch.linalg.vecdot(p, lsm).neg_()
        del lsm
        pred[:, sl] = _argmax_last(x)
        plc = torch.index_select(p.view(-1), 0, flat).view(M, r)
        pl[:, sl] = plc
        # The label column is held at 0 in the running sums (what the best-other-class and Brier
        # terms need); it is summed separately in the same order, so ties compare exactly.
        p.view(-1).index_fill_(0, flat, 0.0)

        run = new(P, r, C)
        tmp = new(P, r, C)
        gat = new(P, r, C) if P > 1 else None
        qlc = new(P, r)
        c_ql, c_qo, c_qn, c_sl = new(M, P, r), new(M, P, r), new(M, P, r), new(M, P, r)
        c_cor = new(M, P, r, dtype=torch.bool)
        c_cal = new(M, P, r) if betas is not None else None
        for j in range(M):
            if P == 1:
                i = ol[0][j]
                if j == 0:
                    run[0].copy_(p[i])
                    qlc[0].copy_(plc[i])
                else:
                    run[0].add_(p[i])
                    qlc[0].add_(plc[i])
            else:
                idx = ord_dev[:, j]
                if j == 0:
                    torch.index_select(p, 0, idx, out=run)
                    torch.index_select(plc, 0, idx, out=qlc)
                else:
                    torch.index_select(p, 0, idx, out=gat)
                    run.add_(gat)
                    qlc.add_(plc.index_select(0, idx))
            c_ql[j] = qlc
            torch.amax(run, -1, out=c_qo[j])
            torch.linalg.vector_norm(run, 2, -1, out=c_qn[j])
            # sum_{c != y} S_c log S_c; zeros (the label column, underflowed classes) give 0
            if 0 < j < M - 1 or (j == M - 1 and P == 1):
                _log_(torch.clamp_min(run, tiny, out=tmp))
                torch.linalg.vecdot(run, tmp, out=c_sl[j])
            elif j == M - 1 and j > 0:  # the same members in every order: compute it once
                _log_(torch.clamp_min(run[:1], tiny, out=tmp[:1]))
                c_sl[j] = torch.linalg.vecdot(run[:1], tmp[:1])
            # prediction == label iff the label beats the best other class, or ties it with no
            # earlier class tying too (torch's first-index argmax); ties are rare
            torch.gt(qlc, c_qo[j], out=c_cor[j])
            tie = qlc == c_qo[j]
            if bool(tie.any()):
                kk, nn = tie.nonzero(as_tuple=True)
                earlier = ((run[kk, nn] == qlc[kk, nn].unsqueeze(1)) & (cols < lab[nn].unsqueeze(1))).any(1)
                c_cor[j][kk, nn] = ~earlier
            if betas is not None:
                # log sum_c (S_c/S*)^b - b log(S_y/S*): every power in [0, 1], zeros stay 0
                smax = torch.maximum(qlc, c_qo[j])
                b = betas[:, j].view(P, 1)
                torch.div(run, smax.unsqueeze(-1), out=tmp)
                tmp.pow_(b.unsqueeze(-1))
                s = tmp.sum(-1).add_((qlc / smax).pow_(b))
                c_cal[j] = s.log_().sub_((qlc / smax).log_().mul_(b))
        ql[:, :, sl] = c_ql
        qo[:, :, sl] = c_qo
        qn[:, :, sl] = c_qn
        slogs[1:, :, sl] = c_sl[1:]
        cor[:, :, sl] = c_cor
        if cal is not None:
            cal[:, :, sl] = c_cal
        del p, run, tmp, gat

    # Per-sample values in the compute dtype (fp32 relative error ~1e-7 each); sums are fp64.
    sizes = torch.arange(1, M + 1, dtype=cdt, device=dev).view(M, 1, 1)
    log_sizes = sizes.log()
    conf = torch.maximum(ql, qo).div_(sizes)
    # Brier = sum_{c != y} p_c^2 + (1 - p_y)^2: no cancellation.
    brier = qn.div_(sizes).square_().add_((1.0 - ql / sizes).square_())
    lp_ens = ql.log().sub_(log_sizes)
    # KL = H(p̄) - mean H(p_i) = log m - (sum_c S log S) / m - (sum_{i<=m} H(p_i)) / m
    ent_cum = ent[ord_dev.T].cumsum(0)  # [M, P, N]: entropies summed in each order
    slogs.add_(torch.special.xlogy(ql, ql))
    kl = slogs.add_(ent_cum).div_(sizes).neg_().add_(log_sizes)
    kl[0] = 0.0

    # Samples whose label probability is subnormal or zero for some member, and with large
    # temperatures samples whose probabilities underflow somewhere (_cal_hard): exact fp64
    # log-softmax and logcumsumexp over the members of each order, in chunks to bound memory.
    hard = (pl < tiny * 1e8).any(0)
    if temps is not None:
        hard |= _cal_hard(logits, temps, cdt)
    low = hard.nonzero().squeeze(1)
    for u in low.split(max(1, step // max(1, P))):
        e_lp, e_cal = _exact_lp_cal(logits[:, u], labels[u], ord_dev, temps)
        lp_ens[:, :, u] = e_lp.to(cdt)
        if cal is not None:
            cal[:, :, u] = e_cal.to(cdt)
    return _finalize(
        orders,
        lp_ens,
        cor,
        conf,
        brier,
        kl,
        cal,
        (pred == labels).double().mean(1).cpu(),
        (-lp_mem.to(f64).mean(1)).cpu(),
        _pair_disagreement(pred),
        n_bins,
    )


# --------------------------------------------------------------------------------------------
# Triton path (CUDA; CPU under TRITON_INTERPRET=1)

# Columns of the per-(program, order, size) partial sums, then 3 x n_bins bin sums. The kernel
# writes them as literals (Triton only reads constexpr globals).
_P_LP, _P_COR, _P_CONF, _P_BRIER, _P_MLP, _P_MCOR, _P_BAD, _P_KL, _P_CAL, _P_BINS = range(10)

if triton is not None:

    @triton.jit
    def _ensemble_metrics_kernel(
        x_ptr,
        lab_ptr,
        ord_ptr,
        beta_ptr,
        hard_ptr,
        part_ptr,
        pred_ptr,
        M,
        N,
        C,
        stride_m,
        stride_n,
        stride_c,
        n_bins,
        K,
        BLOCK_N: tl.constexpr,
        BLOCK_C: tl.constexpr,
        BLOCK_B: tl.constexpr,
        HAS_TEMP: tl.constexpr,
    ):
        # One program per (block of samples, member order); loops over the order's members,
        # reading each logit once.
        pid = tl.program_id(0)
        k = tl.program_id(1)
        P = tl.num_programs(1)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        bins = tl.arange(0, BLOCK_B)
        rmask = rows < N
        cmask = cols < C
        mask2 = rmask[:, None] & cmask[None, :]
        bmask = bins < n_bins
        lab = tl.load(lab_ptr + rows, mask=rmask, other=0).to(tl.int32)
        other = cmask[None, :] & (cols[None, :] != lab[:, None])
        earlier = cols[None, :] < lab[:, None]
        is_lab = cols[None, :] == lab[:, None]

        # int32 offsets within one member (the host checks they fit); member bases are int64.
        offs = rows[:, None] * stride_n + cols[None, :] * stride_c
        lab_offs = rows * stride_n + lab * stride_c
        ord_row = ord_ptr + k * M
        p_ptr = part_ptr + (pid.to(tl.int64) * P + k) * M * K

        S = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)  # running sum of member probs
        ql = tl.zeros([BLOCK_N], dtype=tl.float32)  # its label column, summed the same way
        L = tl.full([BLOCK_N], float("-inf"), tl.float32)  # running logsumexp of label log-probs
        Hs = tl.zeros([BLOCK_N], dtype=tl.float32)  # running sum of member entropies
        size = 0.0
        # Prefetch by hand: the next member's tile is in flight while this one is reduced.
        i_nxt = tl.load(ord_row).to(tl.int64)
        base = x_ptr + i_nxt * stride_m
        x_nxt = tl.load(base + offs, mask=mask2, other=0.0)
        xl_nxt = tl.load(base + lab_offs, mask=rmask, other=0.0)  # label logits: cache hits
        for m in range(0, M):
            x = x_nxt.to(tl.float32)
            xl = xl_nxt.to(tl.float32)
            i = i_nxt
            more = m + 1 < M
            i_nxt = tl.load(ord_row + m + 1, mask=more, other=0).to(tl.int64)
            base = x_ptr + i_nxt * stride_m
            x_nxt = tl.load(base + offs, mask=mask2 & more, other=0.0)
            xl_nxt = tl.load(base + lab_offs, mask=rmask & more, other=0.0)
            size += 1.0
            nonfinite = (x != x) | (x == float("inf")) | (x == float("-inf"))
            n_bad = tl.sum(tl.sum(tl.where(nonfinite & mask2, 1.0, 0.0), 1), 0)
            # Keep the arithmetic NaN-free (the host raises); padded classes get -inf -> p = 0.
            x = tl.where(nonfinite, 0.0, x)
            x = tl.where(cmask[None, :], x, float("-inf"))
            xl = tl.where((xl != xl) | (xl == float("inf")) | (xl == float("-inf")), 0.0, xl)
            mx = tl.max(x, 1)  # finite: every row has at least one real class
            xs = x - mx[:, None]
            e = tl.exp(xs)
            s = tl.sum(e, 1)
            rs = 1.0 / s
            p = e * rs[:, None]
            logs = tl.log(s)
            pl = tl.exp(xl - mx) * rs  # bitwise equal to p[label]: same operations
            lp = (xl - mx) - logs
            ent = logs - tl.sum(p * tl.where(cmask[None, :], xs, 0.0), 1)  # -sum p log p

            # The member's prediction (first index on ties) is stored once, by order 0.
            pred = tl.argmax(x, 1)
            m_cor = pred == lab
            tl.store(pred_ptr + i * N + rows, pred, mask=rmask & (k == 0))

            S += p
            ql += pl
            hi = tl.maximum(L, lp)
            L = hi + tl.log(tl.exp(L - hi) + tl.exp(lp - hi))
            Hs += ent

            # Ensemble prediction == label iff the label beats the best other class, or ties it
            # with no earlier class tying too (torch's first-index argmax). Ties are rare.
            inv = 1.0 / size
            qo = tl.max(tl.where(other, S, -1.0), 1)
            cor = ql > qo
            if tl.max(tl.where(rmask & (ql == qo), 1, 0), 0) > 0:
                q_tie = tl.max(tl.where(earlier & (S == ql[:, None]), 1, 0), 1)
                cor = cor | ((ql == qo) & (q_tie == 0))
            smax = tl.maximum(ql, qo)
            conf = smax * inv
            d = S * inv - tl.where(is_lab, 1.0, 0.0)  # padded classes: 0 - 0
            brier = tl.sum(d * d, 1)
            lpe = L - tl.log(size)
            logS = tl.log(tl.where(S > 0.0, S, 1.0))  # 0 where S == 0 (and padded classes)
            kl = tl.log(size) - (tl.sum(S * logS, 1) + Hs) * inv
            kl = tl.where(m > 0, kl, 0.0)  # KL(p || p) = 0: no rounding residue at size 1

            # Per-(program, order, size) sums; columns as in _P_* on the host.
            corf = tl.where(rmask & cor, 1.0, 0.0)
            tl.store(p_ptr + 0, tl.sum(tl.where(rmask, lpe, 0.0), 0))
            tl.store(p_ptr + 1, tl.sum(corf, 0))
            tl.store(p_ptr + 2, tl.sum(tl.where(rmask, conf, 0.0), 0))
            tl.store(p_ptr + 3, tl.sum(tl.where(rmask, brier, 0.0), 0))
            tl.store(p_ptr + 4, tl.sum(tl.where(rmask, lp, 0.0), 0))
            tl.store(p_ptr + 5, tl.sum(tl.where(rmask & m_cor, 1.0, 0.0), 0))
            tl.store(p_ptr + 6, n_bad)
            tl.store(p_ptr + 7, tl.sum(tl.where(rmask, kl, 0.0), 0))
            if HAS_TEMP:
                # log sum_c (S_c/S*)^b - b (log S_y - log S*), log S_y = L exactly
                beta = tl.load(beta_ptr + k * M + m)
                lsmax = tl.log(smax)
                t = tl.exp(tl.where(S > 0.0, beta * (logS - lsmax[:, None]), float("-inf")))
                cal = tl.log(tl.sum(t, 1)) - beta * (L - lsmax)
                # samples flagged by the host (_cal_hard) are summed exactly there
                easy = tl.load(hard_ptr + rows, mask=rmask, other=1) == 0
                tl.store(p_ptr + 8, tl.sum(tl.where(rmask & easy, cal, 0.0), 0))

            # equal-width bins; conf >= 0 so truncation is floor; conf == 1.0 -> last bin
            b = tl.minimum((conf * n_bins).to(tl.int32), n_bins - 1)
            hit = (b[:, None] == bins[None, :]) & rmask[:, None]
            tl.store(p_ptr + 9 + bins, tl.sum(tl.where(hit, 1.0, 0.0), 0), mask=bmask)
            tl.store(
                p_ptr + 9 + n_bins + bins,
                tl.sum(tl.where(hit, conf[:, None], 0.0), 0),
                mask=bmask,
            )
            tl.store(
                p_ptr + 9 + 2 * n_bins + bins,
                tl.sum(tl.where(hit, corf[:, None], 0.0), 0),
                mask=bmask,
            )
            p_ptr += K


def _triton_blocks(N: int, C: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps): the same on a GPU and in the interpreter.

    A 512-element tile keeps registers at ~128/thread with no spills (ptxas, sm_80/sm_90), leaving
    room for several programs per SM to overlap their loads; wide C gets more warps instead of
    rows, up to 16 (32 warps cap registers at 64 and spill more: 144-160 B against 64-104 B at
    C = 8192). Not yet timed on a GPU.
    """
    block_c = max(16, triton.next_power_of_2(C))
    block_n = max(1, min(triton.next_power_of_2(N), _TILE_GPU // block_c))
    num_warps = max(4, min(16, block_n * block_c // 256))
    return block_n, block_c, num_warps


def _triton_fits(logits: torch.Tensor) -> bool:
    """Kernel limits: C fits one register tile and in-member offsets fit int32."""
    _, N, C = logits.shape
    span = (N - 1) * logits.stride(1) + (C - 1) * logits.stride(2)
    return C <= _TRITON_MAX_C and span < 2**31


def _metrics_triton(
    logits: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor,
    temps: torch.Tensor | None,
    n_bins: int,
) -> list[EnsembleMetrics]:
    M, N, C = logits.shape
    P = orders.shape[0]
    dev = logits.device
    block_n, block_c, num_warps = _triton_blocks(N, C)
    grid_n = triton.cdiv(N, block_n)
    K = _P_BINS + 3 * n_bins
    part = torch.empty(grid_n, P, M, K, dtype=torch.float32, device=dev)
    pred = torch.empty(M, N, dtype=torch.int32, device=dev)
    ord_dev = orders.to(device=dev, dtype=torch.int32).contiguous()
    beta = (1.0 / temps).to(device=dev, dtype=torch.float32).contiguous() if temps is not None else part
    hard = _cal_hard(logits, temps, torch.float32) if temps is not None else None
    _ensemble_metrics_kernel[(grid_n, P)](
        logits,
        labels,
        ord_dev,
        beta,
        hard.to(torch.int8) if hard is not None else pred,
        part,
        pred,
        M,
        N,
        C,
        logits.stride(0),
        logits.stride(1),
        logits.stride(2),
        n_bins,
        K,
        BLOCK_N=block_n,
        BLOCK_C=block_c,
        BLOCK_B=max(2, triton.next_power_of_2(n_bins)),
        HAS_TEMP=temps is not None,
        num_warps=num_warps,
    )
    tot = part.double().sum(0).cpu()  # [P, M, K]; deterministic order, unlike atomics
    if tot[..., _P_BAD].sum() > 0:
        _raise_if_nonfinite(logits)
    if hard is not None:
        low = hard.nonzero().squeeze(1)
        for u in low.split(max(1, _CHUNK_ELEMS // max(1, M * P * C))):
            _, e_cal = _exact_lp_cal(logits[:, u], labels[u], orders, temps)
            tot[:, :, _P_CAL] += e_cal.sum(-1).T.cpu()
    disagree = _pair_disagreement(pred)
    bins = tot[..., _P_BINS:].view(P, M, 3, n_bins)
    return [
        EnsembleMetrics(
            nll=-tot[k, :, _P_LP] / N,
            acc=tot[k, :, _P_COR] / N,
            conf=tot[k, :, _P_CONF] / N,
            brier=tot[k, :, _P_BRIER] / N,
            bin_count=bins[k, :, 0].clone(),
            bin_conf_sum=bins[k, :, 1].clone(),
            bin_correct=bins[k, :, 2].clone(),
            member_acc=tot[k, :, _P_MCOR] / N,
            member_nll=-tot[k, :, _P_MLP] / N,
            kl=tot[k, :, _P_KL] / N,
            pair_disagree=disagree[orders[k]][:, orders[k]].contiguous(),
            n_samples=N,
            cal_nll=tot[k, :, _P_CAL] / N if temps is not None else None,
        )
        for k in range(P)
    ]


# --------------------------------------------------------------------------------------------
# public entry points


def _use_triton(logits: torch.Tensor, impl: str | None) -> bool:
    """Device dispatch (landscape_kernels.dispatch.use_triton): CUDA fp16/bf16/fp32 -> Triton kernel; CPU,
    and fp64 anywhere (kept exact) -> torch. A forced Triton run that the kernel cannot take
    raises instead of falling back."""
    if not use_triton(logits, impl=impl):
        return False
    if _triton_fits(logits):
        return True
    if impl == "triton":
        raise ValueError(
            f"impl='triton' supports C <= {_TRITON_MAX_C} and int32 offsets within a member, "
            f"got logits {tuple(logits.shape)}; use impl='torch'"
        )
    return False


def ensemble_metrics_orders(
    logits: torch.Tensor,
    labels: torch.Tensor,
    orders: torch.Tensor | Sequence[Sequence[int]] | None = None,
    n_bins: int = 15,
    *,
    temperatures: torch.Tensor | Sequence | None = None,
    impl: str | None = None,
) -> list[EnsembleMetrics]:
    """Metrics of the ensembles of the first m members, for every m = 1..M and every member
    order, in one pass over the logits.

    logits: [M, N, C] member logits (fp16, bf16, fp32 or fp64); labels: [N] integer class ids.
    orders: [P, M] integers, each row a permutation of the members (None: the given order);
    result k belongs to orders[k], its member quantities indexed by position in that order.
    temperatures: None, or positive [P, M] (order k, size m) or [M] (every order) temperatures:
    then each result's ``cal_nll`` is the NLL of softmax(log p̄_m / T).
    impl: None or "auto" picks by device through ``landscape_kernels.dispatch.use_triton`` (CUDA
    fp16/bf16/fp32 -> Triton kernel; CPU, and fp64 anywhere -> vectorised torch in the input's
    precision; the KERNELS_IMPL environment variable overrides); "reference", "torch" or
    "triton" force a path ("triton" on CPU tensors needs TRITON_INTERPRET=1, and raises
    TypeError for fp64 logits).
    Raises ValueError (one line) on mismatched shapes, out-of-range labels, non-finite logits,
    orders that are not permutations, temperatures that are not positive.
    """
    if impl not in (None, *_IMPLS):
        raise ValueError(f"impl must be one of {_IMPLS} or None, got {impl!r}")
    labels = _validate(logits, labels, n_bins)
    M = logits.shape[0]
    o = _validate_orders(orders, M)
    temps = _validate_temperatures(temperatures, o.shape[0], M)
    if impl == "reference":
        return [
            ensemble_metrics_reference(
                logits, labels, n_bins, order=o[k], temperatures=None if temps is None else temps[k]
            )
            for k in range(o.shape[0])
        ]
    logits = logits.detach()
    if _use_triton(logits, impl):
        return _metrics_triton(logits, labels, o, temps, n_bins)
    return _metrics_torch(logits, labels, o, temps, n_bins)


def ensemble_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    temperatures: torch.Tensor | Sequence[float] | None = None,
    impl: str | None = None,
) -> EnsembleMetrics:
    """Metrics of the ensembles of the first m members, for every m = 1..M, in one pass
    (``ensemble_metrics_orders`` for the given member order; temperatures: [M])."""
    return ensemble_metrics_orders(logits, labels, None, n_bins, temperatures=temperatures, impl=impl)[0]
