"""Fused ensemble metrics for every prefix size m = 1..M in one pass over member logits.

Given member logits ``[M, N, C]`` and labels ``[N]``, ``ensemble_metrics`` returns, for each
ensemble of the first m members, the NLL of the averaged probabilities, accuracy, mean
confidence, Brier score and per-bin calibration sums (ECE), plus each member's own accuracy
and NLL.

Three implementations:

- ``ensemble_metrics_reference``: fp64, recomputes each size from scratch; the specification.
- ``_metrics_torch``: vectorised torch (the CPU path, also works on CUDA). Chunks of samples stay
  in cache; one softmax per member and a running sum of probabilities, so nothing is recomputed
  per size.
- ``_metrics_triton``: a Triton kernel (the CUDA path) that reads each logit once, keeps the
  running sum of probabilities in registers and reduces per-size sums and bins per program; a
  deterministic torch sum over programs finishes the job.

Averaging is stable: probabilities are summed in linear space (each lies in [0, 1], so nothing
overflows), and the label's log probability, the only quantity that can underflow, is taken as a
running logsumexp of member log-softmaxes (Triton) or recomputed that way for the few samples
whose label probability underflows (torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch

try:  # Triton is Linux-only; the torch paths work without it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None
    tl = None

__all__ = [
    "EnsembleMetrics",
    "ensemble_metrics",
    "ensemble_metrics_reference",
]

_IMPLS = ("reference", "torch", "triton")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Torch path: elements of one member's [rows, C] chunk. 4 MB in fp32: p and the running sum
# stay in L3. Smaller chunks were no faster on 2 idle cores and much slower on busy ones, where
# every parallel region waits for a descheduled thread.
_CHUNK_ELEMS = 1_000_000
# Triton path: widest class dimension kept in registers; wider inputs use the torch path.
_TRITON_MAX_C = 8192
# Elements of one [BLOCK_N, BLOCK_C] tile (at least one row of BLOCK_C).
_TILE_GPU = 1024
_TILE_INTERPRET = 1 << 16  # the interpreter pays per op, not per element: big tiles


@dataclass(frozen=True)
class EnsembleMetrics:
    """Metrics for ensembles of the first m members, m = 1..M (row m-1), as CPU float64 tensors.

    Bin statistics are sums (not means) so results on disjoint sample sets merge by addition.
    Accuracies are fractions in [0, 1].
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
    n_samples: int

    @property
    def ece(self) -> torch.Tensor:
        """[M] expected calibration error: sum_b |acc_b - conf_b| * count_b / N."""
        return (self.bin_correct - self.bin_conf_sum).abs().sum(-1) / self.n_samples

    @property
    def n_bins(self) -> int:
        return int(self.bin_count.shape[-1])

    @property
    def sizes(self) -> list[int]:
        return list(range(1, self.nll.shape[0] + 1))

    def to_rows(self) -> list[dict[str, float | int]]:
        """One JSON-ready dict per ensemble size."""
        ece = self.ece
        return [
            {
                "size": m,
                "acc": float(self.acc[m - 1]),
                "nll": float(self.nll[m - 1]),
                "ece": float(ece[m - 1]),
                "brier": float(self.brier[m - 1]),
                "conf": float(self.conf[m - 1]),
            }
            for m in self.sizes
        ]

    @classmethod
    def merge(cls, parts: Sequence[EnsembleMetrics]) -> EnsembleMetrics:
        """Combine metrics computed on disjoint sets of samples (same members and bins)."""
        if not parts:
            raise ValueError("merge needs at least one EnsembleMetrics")
        n = sum(p.n_samples for p in parts)
        out: dict[str, object] = {"n_samples": n}
        for f in fields(cls):
            if f.name == "n_samples":
                continue
            vals = [getattr(p, f.name) for p in parts]
            if f.name.startswith("bin_"):
                out[f.name] = torch.stack(vals).sum(0)
            else:  # means: weight by sample count
                out[f.name] = sum(v * p.n_samples for v, p in zip(vals, parts)) / n
        return cls(**out)  # type: ignore[arg-type]


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
    if not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    labels = labels.to(device=logits.device, dtype=torch.int64)
    bad = (labels < 0) | (labels >= C)
    if bool(bad.any()):
        i = int(bad.to(torch.uint8).argmax())
        raise ValueError(f"labels must lie in [0, {C}): sample {i} has label {int(labels[i])}")
    return labels


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


# --------------------------------------------------------------------------------------------
# reference (the specification)


def ensemble_metrics_reference(
    logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> EnsembleMetrics:
    """fp64 CPU reference: each size recomputed from scratch as logsumexp of log-softmaxes."""
    labels = _validate(logits, labels, n_bins)
    _raise_if_nonfinite(logits)
    x = logits.detach().to("cpu", torch.float64)
    y = labels.cpu()
    M, N, C = x.shape
    rows = torch.arange(N)
    onehot = torch.nn.functional.one_hot(y, C).double()
    lsm = torch.log_softmax(x, -1)  # [M, N, C] member log-probs

    per_size: dict[str, list[torch.Tensor]] = {k: [] for k in ("nll", "acc", "conf", "brier", "cnt", "cs", "cc")}
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
    s = {k: torch.stack(v) for k, v in per_size.items()}
    return EnsembleMetrics(
        nll=s["nll"],
        acc=s["acc"],
        conf=s["conf"],
        brier=s["brier"],
        bin_count=s["cnt"],
        bin_conf_sum=s["cs"],
        bin_correct=s["cc"],
        member_acc=(lsm.argmax(-1) == y).double().mean(1),
        member_nll=-lsm[:, rows, y].mean(1),
        n_samples=N,
    )


# --------------------------------------------------------------------------------------------
# vectorised torch path (CPU; device-agnostic)


def _resolve_ties(
    logits: torch.Tensor,
    labels: torch.Tensor,
    val: torch.Tensor,
    best: torch.Tensor,
    correct: torch.Tensor,
    cumulative: bool,
    step: int,
) -> None:
    """Apply torch's first-index argmax rule where the label ties the best other class.

    correct[k, n] was set to val > best (label prob vs best other class: 5x cheaper than argmax
    on the CPU). Where val == best the label wins only if no earlier class ties too. Ties are
    rare except for saturated or uniform predictions, so their rows are recomputed here exactly
    as the main loop computed them (same softmax, same fp32 summation order).
    """
    k, n = (val == best).nonzero(as_tuple=True)
    if k.numel() == 0:
        return
    M, _, C = logits.shape
    cols = torch.arange(C, device=logits.device)
    for u in torch.unique(n).split(max(1, step // M)):  # [M, |u|, C] stays one chunk's size
        p = torch.softmax(logits[:, u].to(val.dtype), -1)  # [M, |u|, C]
        p.scatter_(-1, labels[u].view(1, -1, 1).expand(M, -1, 1), 0.0)
        if cumulative:
            for j in range(1, M):
                p[j].add_(p[j - 1])
        sel = (n >= u[0]) & (n <= u[-1])
        kk, nn = k[sel], n[sel]
        rows = p[kk, torch.searchsorted(u, nn)]
        earlier = ((rows == val[kk, nn, None]) & (cols < labels[nn, None])).any(1)
        correct[kk, nn] = ~earlier


def _finalize(
    lp_ens: torch.Tensor,
    cor_ens: torch.Tensor,
    conf: torch.Tensor,
    brier: torch.Tensor,
    lp_mem: torch.Tensor,
    cor_mem: torch.Tensor,
    n_bins: int,
) -> EnsembleMetrics:
    """Reduce per-(size, sample) values [M, N] to per-size metrics and bin sums (fp64 sums)."""
    M, N = conf.shape
    f64 = torch.float64
    b = (conf * n_bins).long().clamp_(max=n_bins - 1)  # conf >= 0: truncation is floor
    flat = (b + torch.arange(M, device=b.device).unsqueeze(1) * n_bins).flatten()

    def mean(v: torch.Tensor) -> torch.Tensor:  # torch's float sums are cascaded: accurate
        return v.sum(1).to(f64) / N

    count = torch.bincount(flat, minlength=M * n_bins).view(M, n_bins).to(f64)
    correct = torch.bincount(flat[cor_ens.flatten()], minlength=M * n_bins).view(M, n_bins).to(f64)
    conf_sum = torch.bincount(flat, weights=conf.flatten().to(f64), minlength=M * n_bins).view(M, n_bins)
    out = EnsembleMetrics(
        nll=-mean(lp_ens),
        acc=mean(cor_ens),
        conf=mean(conf),
        brier=mean(brier),
        bin_count=count,
        bin_conf_sum=conf_sum,
        bin_correct=correct,
        member_acc=mean(cor_mem),
        member_nll=-mean(lp_mem),
        n_samples=N,
    )
    return _to_cpu(out)


def _to_cpu(r: EnsembleMetrics) -> EnsembleMetrics:
    kw = {f.name: getattr(r, f.name) for f in fields(r)}
    for k, v in kw.items():
        if isinstance(v, torch.Tensor):
            kw[k] = v.to("cpu", torch.float64)
    return EnsembleMetrics(**kw)  # type: ignore[arg-type]


def _metrics_torch(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> EnsembleMetrics:
    """One softmax per member and a running sum of probabilities, chunked over samples.

    Members are visited one at a time on contiguous [rows, C] slices (no copies), so a chunk's
    softmax, running sum and reductions stay in cache; seven ops per member and chunk, and all
    per-size arithmetic then runs on small [M, N] tensors.
    """
    M, N, C = logits.shape
    dev = logits.device
    cdt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    # One cheap pass (min and max propagate NaN, and do not overflow like a sum) guards the
    # full, slower search for the first bad logit.
    lo, hi = torch.aminmax(logits)
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        _raise_if_nonfinite(logits)

    def new() -> torch.Tensor:
        return torch.empty(M, N, dtype=cdt, device=dev)

    # Per-(member or size, sample) values; row m-1 of the running-sum ones belongs to size m.
    pl, po = new(), new()  # member: prob of the label, best other-class prob
    qo, qn = new(), new()  # running sum: best other class, L2 norm over the other classes

    step = max(1, _CHUNK_ELEMS // C)
    for n0 in range(0, N, step):
        sl = slice(n0, min(N, n0 + step))
        rows = sl.stop - n0
        # flat positions of the labels in a [rows, C] buffer: index_select/index_fill_ on them
        # are ~5x faster than gather/scatter_ on the CPU
        flat = torch.arange(rows, device=dev) * C + labels[sl]
        # Sum of member probabilities with the label column held at 0 (what the best-other-class
        # and Brier terms need); the label column is summed separately below in the same order.
        run = torch.zeros(rows, C, dtype=cdt, device=dev)
        for k in range(M):
            p = torch.softmax(logits[k, sl].to(cdt), -1)
            torch.index_select(p.view(-1), 0, flat, out=pl[k, sl])
            p.view(-1).index_fill_(0, flat, 0.0)
            torch.amax(p, 1, out=po[k, sl])
            run.add_(p)
            torch.amax(run, 1, out=qo[k, sl])
            torch.linalg.vector_norm(run, 2, 1, out=qn[k, sl])

    ql = pl.clone()  # running sum of the label prob, fp32 like `run`, so ties stay exact
    for k in range(1, M):
        ql[k].add_(ql[k - 1])
    cor_mem, cor_ens = pl > po, ql > qo
    _resolve_ties(logits, labels, pl, po, cor_mem, cumulative=False, step=step)
    _resolve_ties(logits, labels, ql, qo, cor_ens, cumulative=True, step=step)

    # Per-sample values in the compute dtype (fp32 relative error ~1e-7 each); sums are fp64.
    sizes = torch.arange(1, M + 1, dtype=cdt, device=dev).unsqueeze(1)  # [M, 1]
    conf = torch.maximum(ql, qo).div_(sizes)
    # Brier = sum_{c != y} p_c^2 + (1 - p_y)^2: no cancellation.
    brier = qn.div_(sizes).square_().add_((1.0 - ql / sizes).square_())
    lp_mem = pl.log()
    lp_ens = ql.log().sub_(sizes.log())

    # Samples whose label probability is subnormal or zero for some member: exact fp64
    # log-softmax and logcumsumexp over members, in chunks to bound memory.
    low = (pl < torch.finfo(cdt).tiny * 1e8).any(0).nonzero().squeeze(1)
    for j in low.split(max(1, step // M)):
        xb = logits[:, j].double()
        lpb = torch.log_softmax(xb, -1).gather(-1, labels[j].view(1, -1, 1).expand(M, -1, 1)).squeeze(-1)
        lp_mem[:, j] = lpb.to(cdt)
        lp_ens[:, j] = (torch.logcumsumexp(lpb, 0) - sizes.double().log()).to(cdt)
    return _finalize(lp_ens, cor_ens, conf, brier, lp_mem, cor_mem, n_bins)


# --------------------------------------------------------------------------------------------
# Triton path (CUDA; CPU under TRITON_INTERPRET=1)

# Columns of the per-(program, size) partial sums, then 3 x n_bins bin sums. The kernel writes
# them as literals (Triton only reads constexpr globals).
_P_LP, _P_COR, _P_CONF, _P_BRIER, _P_MLP, _P_MCOR, _P_BAD, _P_BINS = range(8)

if triton is not None:

    @triton.jit
    def _ensemble_metrics_kernel(
        x_ptr,
        lab_ptr,
        part_ptr,
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
    ):
        # One program per block of samples; loops over members, reading each logit once.
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.arange(0, BLOCK_C)
        bins = tl.arange(0, BLOCK_B)
        rmask = rows < N
        cmask = cols < C
        mask2 = rmask[:, None] & cmask[None, :]
        bmask = bins < n_bins
        lab = tl.load(lab_ptr + rows, mask=rmask, other=0).to(tl.int32)
        is_lab = cols[None, :] == lab[:, None]
        other = cmask[None, :] & (cols[None, :] != lab[:, None])
        earlier = cols[None, :] < lab[:, None]

        # int32 offsets within one member (the host checks they fit); the scalar base pointer
        # advances by a stride per member, so no m * stride product can overflow.
        offs = rows[:, None] * stride_n + cols[None, :] * stride_c
        lab_offs = rows * stride_n + lab * stride_c
        p_ptr = part_ptr + pid.to(tl.int64) * M * K

        S = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)  # running sum of member probs
        ql = tl.zeros([BLOCK_N], dtype=tl.float32)  # its label column, summed the same way
        L = tl.full([BLOCK_N], float("-inf"), tl.float32)  # running logsumexp of label log-probs
        size = 0.0
        # Prefetch by hand: the next member's tile is in flight while this one is reduced.
        x_nxt = tl.load(x_ptr + offs, mask=mask2, other=0.0)
        xl_nxt = tl.load(x_ptr + lab_offs, mask=rmask, other=0.0)  # label logits: cache hits
        for m in range(0, M):
            x = x_nxt.to(tl.float32)
            xl = xl_nxt.to(tl.float32)
            x_ptr += stride_m
            more = m + 1 < M
            x_nxt = tl.load(x_ptr + offs, mask=mask2 & more, other=0.0)
            xl_nxt = tl.load(x_ptr + lab_offs, mask=rmask & more, other=0.0)
            size += 1.0
            nonfinite = (x != x) | (x == float("inf")) | (x == float("-inf"))
            n_bad = tl.sum(tl.sum(tl.where(nonfinite & mask2, 1.0, 0.0), 1), 0)
            # Keep the arithmetic NaN-free (the host raises); padded classes get -inf -> p = 0.
            x = tl.where(nonfinite, 0.0, x)
            x = tl.where(cmask[None, :], x, float("-inf"))
            xl = tl.where((xl != xl) | (xl == float("inf")) | (xl == float("-inf")), 0.0, xl)
            mx = tl.max(x, 1)  # finite: every row has at least one real class
            e = tl.exp(x - mx[:, None])
            s = tl.sum(e, 1)
            rs = 1.0 / s
            p = e * rs[:, None]
            pl = tl.exp(xl - mx) * rs  # bitwise equal to p[label]: same operations
            lp = (xl - mx) - tl.log(s)

            # Prediction == label iff the label beats the best other class, or ties it with no
            # earlier class tying too (torch's first-index argmax). Ties are rare: check lazily.
            po = tl.max(tl.where(other, p, -1.0), 1)
            m_cor = pl > po
            if tl.max(tl.where(rmask & (pl == po), 1, 0), 0) > 0:
                p_tie = tl.max(tl.where(earlier & (p == pl[:, None]), 1, 0), 1)
                m_cor = m_cor | ((pl == po) & (p_tie == 0))

            S += p
            ql += pl
            hi = tl.maximum(L, lp)
            L = hi + tl.log(tl.exp(L - hi) + tl.exp(lp - hi))

            inv = 1.0 / size
            qo = tl.max(tl.where(other, S, -1.0), 1)
            cor = ql > qo
            if tl.max(tl.where(rmask & (ql == qo), 1, 0), 0) > 0:
                q_tie = tl.max(tl.where(earlier & (S == ql[:, None]), 1, 0), 1)
                cor = cor | ((ql == qo) & (q_tie == 0))
            conf = tl.maximum(ql, qo) * inv
            d = S * inv - tl.where(is_lab, 1.0, 0.0)  # padded classes: 0 - 0
            brier = tl.sum(d * d, 1)
            lpe = L - tl.log(size)

            # Per-(program, size) sums; columns as in _P_* on the host.
            corf = tl.where(rmask & cor, 1.0, 0.0)
            tl.store(p_ptr + 0, tl.sum(tl.where(rmask, lpe, 0.0), 0))
            tl.store(p_ptr + 1, tl.sum(corf, 0))
            tl.store(p_ptr + 2, tl.sum(tl.where(rmask, conf, 0.0), 0))
            tl.store(p_ptr + 3, tl.sum(tl.where(rmask, brier, 0.0), 0))
            tl.store(p_ptr + 4, tl.sum(tl.where(rmask, lp, 0.0), 0))
            tl.store(p_ptr + 5, tl.sum(tl.where(rmask & m_cor, 1.0, 0.0), 0))
            tl.store(p_ptr + 6, n_bad)

            # equal-width bins; conf >= 0 so truncation is floor; conf == 1.0 -> last bin
            b = tl.minimum((conf * n_bins).to(tl.int32), n_bins - 1)
            hit = (b[:, None] == bins[None, :]) & rmask[:, None]
            tl.store(p_ptr + 7 + bins, tl.sum(tl.where(hit, 1.0, 0.0), 0), mask=bmask)
            tl.store(
                p_ptr + 7 + n_bins + bins,
                tl.sum(tl.where(hit, conf[:, None], 0.0), 0),
                mask=bmask,
            )
            tl.store(
                p_ptr + 7 + 2 * n_bins + bins,
                tl.sum(tl.where(hit, corf[:, None], 0.0), 0),
                mask=bmask,
            )
            p_ptr += K


def _triton_available_for(t: torch.Tensor) -> bool:
    if triton is None:
        return False
    if t.is_cuda:
        return True
    # On the CPU the kernel only runs interpreted (TRITON_INTERPRET=1 before import).
    return type(_ensemble_metrics_kernel).__name__ == "InterpretedFunction"


def _triton_blocks(N: int, C: int, interpret: bool) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_C, num_warps).

    The interpreter pays per op, so it gets big tiles. On a GPU a 1024-element tile keeps
    registers below ~170/thread with no spills (checked with ptxas for sm_90), leaving room for
    several programs per SM to overlap their loads; wide C gets more warps instead of rows.
    """
    block_c = max(16, triton.next_power_of_2(C))
    budget = _TILE_INTERPRET if interpret else _TILE_GPU
    block_n = max(1, min(triton.next_power_of_2(N), budget // block_c))
    num_warps = max(4, min(16, block_n * block_c // 256))
    return block_n, block_c, num_warps


def _triton_fits(logits: torch.Tensor) -> bool:
    """Kernel limits: C fits one register tile and in-member offsets fit int32."""
    _, N, C = logits.shape
    span = (N - 1) * logits.stride(1) + (C - 1) * logits.stride(2)
    return C <= _TRITON_MAX_C and span < 2**31


def _metrics_triton(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> EnsembleMetrics:
    M, N, C = logits.shape
    interpret = not logits.is_cuda
    block_n, block_c, num_warps = _triton_blocks(N, C, interpret)
    grid = triton.cdiv(N, block_n)
    K = _P_BINS + 3 * n_bins
    part = torch.empty(grid, M, K, dtype=torch.float32, device=logits.device)
    _ensemble_metrics_kernel[(grid,)](
        logits,
        labels,
        part,
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
        num_warps=num_warps,
    )
    tot = part.double().sum(0).cpu()  # deterministic order, unlike atomics
    if tot[:, _P_BAD].sum() > 0:
        _raise_if_nonfinite(logits)
    bins = tot[:, _P_BINS:].view(M, 3, n_bins)
    return EnsembleMetrics(
        nll=-tot[:, _P_LP] / N,
        acc=tot[:, _P_COR] / N,
        conf=tot[:, _P_CONF] / N,
        brier=tot[:, _P_BRIER] / N,
        bin_count=bins[:, 0].clone(),
        bin_conf_sum=bins[:, 1].clone(),
        bin_correct=bins[:, 2].clone(),
        member_acc=tot[:, _P_MCOR] / N,
        member_nll=-tot[:, _P_MLP] / N,
        n_samples=N,
    )


# --------------------------------------------------------------------------------------------
# public entry point


def ensemble_metrics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    n_bins: int = 15,
    *,
    impl: str | None = None,
) -> EnsembleMetrics:
    """Metrics of the ensembles of the first m members, for every m = 1..M, in one pass.

    logits: [M, N, C] member logits (fp16, bf16, fp32 or fp64); labels: [N] integer class ids.
    impl: None picks by device (CUDA -> Triton kernel, CPU -> vectorised torch); "reference",
    "torch" or "triton" force a path ("triton" on CPU tensors needs TRITON_INTERPRET=1).
    Raises ValueError (one line) on mismatched shapes, out-of-range labels, non-finite logits.
    """
    if impl not in (None, *_IMPLS):
        raise ValueError(f"impl must be one of {_IMPLS} or None, got {impl!r}")
    if impl == "reference":
        return ensemble_metrics_reference(logits, labels, n_bins)
    labels = _validate(logits, labels, n_bins)
    logits = logits.detach()
    if impl is None:
        use_triton = logits.is_cuda and triton is not None and _triton_fits(logits)
    elif impl == "triton":
        if not _triton_available_for(logits):
            raise ValueError(
                "impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before importing kernels"
            )
        if not _triton_fits(logits):
            raise ValueError(
                f"impl='triton' supports C <= {_TRITON_MAX_C} and int32 offsets within a member, "
                f"got logits {tuple(logits.shape)}; use impl='torch'"
            )
        use_triton = True
    else:
        use_triton = False
    if use_triton:
        return _metrics_triton(logits, labels, n_bins)
    return _metrics_torch(logits, labels, n_bins)
