"""Hessian spectra of the mean loss at a snapshot: top-k eigenpairs, trace, spectral density.

Everything rests on exact Hessian-vector products (HVPs) of the mean loss over the WHOLE given
data set, L(θ) = Σ_b (n_b / N)·loss_b(θ), in eval mode, so H·v = Σ_b (n_b / N)·H_b·v. BatchNorm
uses the buffers of the snapshot it is given: the analyses (landscape.analyses.hessian) pass the
snapshot's own buffers under BN mode keep and statistics recomputed at the point under recompute
(`Evaluator.with_point_buffers`), as the surface commands evaluate.

How an HVP is computed (measured on the CPU, 2 cores, torch 2.14.1; minimum of 7 interleaved
runs, 1,000 samples in batches of 250; see benchmarks/hessian.py):

    per HVP                          SmallCNN (95k params, BN)   MLP (265k params)
    forward+backward (reference)          0.13 s                    0.04 s
    torch.func jvp(grad) (fwd-over-rev)   0.41 s                    0.34 s
    double backward, recomputed           0.39 s                    0.11 s
    double backward, cached graphs        0.25 s                    0.08 s
    vmap over 4 vectors, per vector       0.35-0.41 s               0.10-0.15 s

Reverse-over-reverse (double backward) beat forward-over-reverse on the CPU for both models,
and keeping each batch's first-order graph (the gradient built with create_graph=True) saves
the forward and first backward of every later HVP, so each HVP is one second backward per
batch. Graphs are kept for as many batches as fit a memory budget (measured on the first batch
through saved-tensor hooks: 2 GiB on the CPU, half the free memory on CUDA); the other batches
are recomputed per HVP. Batching probe vectors (vmap, through `is_grads_batched`) was no faster
per vector on the CPU, so there the probes run one at a time; on CUDA independent probes
(Hutchinson, SLQ runs) go through in batches that fit the same budget.

Attention: the fused scaled-dot-product-attention kernels (flash, memory-efficient, cuDNN, and
the CPU's flash kernel) have no double backward, so every forward pass an HVP rests on runs
under the MATH backend (`torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`: attention as plain
matmuls and a softmax, twice differentiable). For a model without attention this changes
nothing: no op consults the backend (measured: the same products bit for bit, and the same
time within noise, on an MLP and a BatchNorm CNN). `holds_attention` tells which models have
attention modules; the analyses record the backend with their results for those.

Algorithms
- top-k eigenvalues: Lanczos with full reorthogonalisation (classical Gram–Schmidt twice),
  stopped when the Ritz residuals |β_j·s_ji| of the top k are below `tol` times the largest
  |Ritz value|; the largest algebraic eigenvalues, descending.
- trace: Hutchinson's estimator with Rademacher probes; standard error = sample std / √probes.
- spectral density: stochastic Lanczos quadrature (Ghorbani et al. 2019, as PyHessian), Gaussian
  broadened on a grid; each run's weights sum to one, so the density integrates to one and its
  mean is the Hutchinson estimate of the same (normalised Rademacher) probes divided by P.
All random draws come from CPU generators seeded from `seed`: same numbers on every device.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from landscape.core.checkpoints import Snapshot
from landscape.core.errors import LandscapeError
from landscape.core.losses import LossFn, default_loss
from landscape.core.params import ParamLayout
from landscape.core.validate import finite_positive, positive_int
from landscape.geometry.directions import normalize_direction


def _resolve_dtype(dtype: str | torch.dtype | None, fallback: torch.dtype) -> torch.dtype:
    if dtype is None:
        return fallback
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64}
    if dtype not in table:
        raise LandscapeError(f"unknown dtype {dtype!r}: choose float32 or float64")
    return table[dtype]


# the scaled-dot-product-attention backend of every forward pass a Hessian-vector product
# differentiates twice: the only one with a double backward
SDPA_BACKEND = "math"


def holds_attention(model: nn.Module) -> bool:
    """Whether `model` has attention modules (nn.MultiheadAttention: inside nn.Transformer*
    layers and torchvision's VisionTransformer too), whose Hessian-vector products need the MATH
    backend of scaled dot-product attention. (A model calling
    F.scaled_dot_product_attention itself gets the same backend; it is not detected here.)"""
    return any(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def double_backward_scope() -> contextlib.AbstractContextManager:
    """The context of a forward pass that is differentiated twice: scaled dot-product attention
    under its MATH backend (SDPA_BACKEND), the fused kernels having no double backward."""
    return sdpa_kernel(SDPBackend.MATH)


class HessianOperator:
    """v ↦ H·v for the mean loss over a data set at a snapshot, in eval mode.

    `model` is a template (left untouched). The data are tensors (x, y), or with `stream` a
    streamed data set (landscape.core.data.StreamData: `batches(batch_size, device)` and `len()`),
    read batch by batch for every product except the batches whose graphs are kept.
    `cache`: keep the first-order graphs of the batches
    (True, False, or "auto": as many as fit `cache_bytes`, default 2 GiB on the CPU and half the
    free memory on CUDA). `probe_batch`: vectors per batched HVP in `matmat` (None: 1 on the CPU,
    as many as fit the budget on CUDA). The forward passes run with scaled dot-product attention
    on its MATH backend (`double_backward_scope`), so that attention models have an HVP.
    """

    def __init__(self, model: nn.Module, snapshot: Snapshot, x: torch.Tensor | None = None,
                 y: torch.Tensor | None = None, *, stream=None, batch_size: int = 250,
                 device: str | torch.device = "cpu", loss_fn: LossFn | None = None,
                 dtype: str | torch.dtype | None = None, cache: bool | str = "auto", cache_bytes: int | None = None,
                 probe_batch: int | None = None, scope: Callable[[], Any] | None = None) -> None:
        # the forward passes run inside `scope()` (the evaluator's matmul precision: bf16 autocast,
        # TF32); the vectors, the accumulation and Lanczos stay in the operator's dtype
        self.scope = scope or contextlib.nullcontext
        self.batch_size = positive_int(batch_size, "--batch-size")
        self.stream = stream
        if stream is None and (not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor)
                               or x.shape[0] != y.shape[0] or x.shape[0] == 0):
            raise LandscapeError("the Hessian needs a non-empty data set (as many inputs as labels)")
        self.device = torch.device(device)
        self.dtype = _resolve_dtype(dtype, snapshot.params.dtype)
        self.loss_fn = loss_fn or default_loss
        self.model = copy.deepcopy(model)
        snapshot.load_into(self.model)
        # channels_last (the evaluator's choice for forward passes) measured 1.6x slower for the
        # second backward on the CPU: products run in the default memory format
        self.model.to(device=self.device, dtype=self.dtype, memory_format=torch.contiguous_format).eval()
        self.layout = ParamLayout.of(self.model)
        self.params = [p for p in self.model.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.numel = self.layout.numel
        if stream is None:
            self.x = x.to(self.device, self.dtype if x.is_floating_point() else x.dtype).contiguous()
            self.y = y.to(self.device)
            self.n = int(x.shape[0])
        else:
            self.n = len(stream)
        self.starts = list(range(0, self.n, self.batch_size))
        self.cache_mode = cache
        self.cache_bytes = cache_bytes
        self.probe_batch = probe_batch
        self._cache: list[tuple[tuple[torch.Tensor, ...], float]] | None = None
        self.loss: float | None = None
        self.grad_norm: float | None = None
        self.hvps = 0
        self.bytes_per_batch = 0
        self.bar = None

    # -- the first-order graphs --------------------------------------------------------
    def _batches(self, skip: int = 0):
        """(x, y) batches after the first `skip` (a stream reads and drops those)."""
        if self.stream is None:
            for start in self.starts[skip:]:
                yield self.x[start:start + self.batch_size], self.y[start:start + self.batch_size]
            return
        for i, (xb, yb) in enumerate(self.stream.batches(self.batch_size, self.device)):
            if i >= skip:
                yield (xb.to(self.dtype).contiguous() if xb.is_floating_point() else xb), yb

    def _graph(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], float, torch.Tensor]:
        w = xb.shape[0] / self.n
        # the graph is differentiated twice: attention's ops are recorded under the MATH backend
        with torch.enable_grad(), self.scope(), double_backward_scope():
            loss = self.loss_fn(self.model(xb).to(self.dtype), yb)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params))
        return grads, w, loss.detach()

    def _budget(self) -> int:
        if self.cache_bytes is not None:
            return int(self.cache_bytes)
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0] // 2)
        return 2 << 30

    def prepare(self) -> None:
        """Build (and keep, as the budget allows) each batch's first-order graph; the mean loss and
        the gradient norm at the point come out of the same pass."""
        if self._cache is not None:
            return
        own = {p.untyped_storage().data_ptr() for p in self.params}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in own:
                saved[s.data_ptr()] = s.nbytes()
            return t

        batches = self._batches()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            first = self._graph(*next(batches))
        grad_bytes = sum(p.numel() for p in self.params) * torch.finfo(self.dtype).bits // 8
        self.bytes_per_batch = int(1.15 * (sum(saved.values()) + grad_bytes))
        if self.cache_mode is True:
            keep = len(self.starts)
        elif self.cache_mode is False:
            keep = 0
        else:
            keep = min(len(self.starts), self._budget() // max(1, self.bytes_per_batch))
        self._cache = []
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        grad = torch.zeros(self.numel, dtype=torch.float64, device=self.device)
        for i in range(len(self.starts)):
            grads, w, lb = first if i == 0 else self._graph(*next(batches))
            loss += lb.double() * w
            grad += torch.cat([g.detach().reshape(-1) for g in grads]).double() * w
            if i < keep:
                self._cache.append((grads, w))
        self.loss = float(loss)
        self.grad_norm = float(grad.norm())

    @property
    def cached_batches(self) -> int:
        return len(self._cache or [])

    # -- products ----------------------------------------------------------------------
    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        lead = v.shape[:-1]
        return [t.reshape(*lead, *shape) for t, (_, shape, _) in zip(v.split(self.layout.sizes, dim=-1),
                                                                        self.layout.slices())]

    def _flat(self, parts: Sequence[torch.Tensor | None], lead: tuple[int, ...]) -> torch.Tensor:
        return torch.cat([(torch.zeros(*lead, p.numel(), dtype=self.dtype, device=self.device) if h is None
                           else h.reshape(*lead, -1)) for h, p in zip(parts, self.params)], dim=-1)

    def _hvp_parts(self, grads: tuple[torch.Tensor, ...], vs: list[torch.Tensor], retain: bool,
                   batched: bool) -> torch.Tensor:
        lead = tuple(vs[0].shape[:1]) if batched else ()
        # a gradient that does not depend on the parameters (a parameter the loss ignores, or
        # enters linearly) contributes nothing: H·v is the derivative of Σ_i g_i·v_i
        live = [i for i, g in enumerate(grads) if g.requires_grad]
        if not live:
            return torch.zeros(*lead, self.numel, dtype=self.dtype, device=self.device)
        hv = torch.autograd.grad([grads[i] for i in live], self.params, grad_outputs=[vs[i] for i in live],
                                 retain_graph=retain, allow_unused=True, is_grads_batched=batched)
        return self._flat(hv, lead).to(self.dtype)

    def _apply(self, v: torch.Tensor, batched: bool) -> torch.Tensor:
        self.prepare()
        v = v.to(self.device, self.dtype)
        vs = self._split(v)
        out = torch.zeros_like(v)
        with torch.enable_grad():
            for grads, w in self._cache:
                out.add_(self._hvp_parts(grads, vs, True, batched), alpha=w)
            for xb, yb in self._batches(len(self._cache)):
                grads, w, _ = self._graph(xb, yb)
                out.add_(self._hvp_parts(grads, vs, False, batched), alpha=w)
        count = v.shape[0] if batched else 1
        self.hvps += count
        if self.bar is not None:
            self.bar.update(count)
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H·v for a flat vector v [P]."""
        return self._apply(v, batched=False)

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """H·v for each row of `vectors` [B, P], in batches of `probe_batch` (see the class doc)."""
        if vectors.ndim != 2:
            raise ValueError("matmat needs a [B, P] tensor")
        size = self.batch_for(vectors.shape[0])
        if size <= 1:
            return torch.stack([self.matvec(v) for v in vectors])
        out = []
        for i in range(0, vectors.shape[0], size):
            part = vectors[i:i + size]
            try:
                out.append(self._apply(part, batched=True))
            except RuntimeError:  # an op without a batching rule: one vector at a time from now on
                self.probe_batch = 1
                out.append(torch.stack([self.matvec(v) for v in part]))
        return torch.cat(out)

    def batch_for(self, wanted: int) -> int:
        if self.probe_batch is not None:
            return max(1, min(int(self.probe_batch), wanted))
        if self.device.type != "cuda":
            return 1  # measured: batching over vectors is no faster per vector on the CPU
        self.prepare()
        per_vector = max(1, self.bytes_per_batch)
        free = torch.cuda.mem_get_info(self.device)[0] // 2
        return int(max(1, min(wanted, 64, free // per_vector)))


# -- Lanczos ----------------------------------------------------------------------------
@dataclass
class LanczosRun:
    alphas: np.ndarray  # [R, m]
    betas: np.ndarray  # [R, m]: betas[r, j] links q_j and q_{j+1}
    lengths: np.ndarray  # [R]: steps each run completed before breaking down (or m)
    basis: torch.Tensor  # [R, m, P]

    def tridiagonal(self, r: int, m: int | None = None) -> np.ndarray:
        m = int(self.lengths[r]) if m is None else m
        t = np.diag(self.alphas[r, :m])
        if m > 1:
            off = self.betas[r, : m - 1]
            t += np.diag(off, 1) + np.diag(off, -1)
        return t


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() * b.double()).sum(-1)


def lanczos(matmat: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, steps: int,
            on_step: Callable[[int, LanczosRun], bool] | None = None) -> LanczosRun:
    """R Lanczos runs in lockstep from the rows of `start` [R, P], with full reorthogonalisation
    (classical Gram–Schmidt, twice). A run whose next vector vanishes (an invariant subspace)
    stops there. `on_step(j, run)` after step j (1-based); returning True stops all runs."""
    r_count, p = start.shape
    steps = min(int(steps), p)
    q = start / start.double().norm(dim=1, keepdim=True).to(start.dtype)
    basis = torch.zeros(r_count, steps, p, dtype=start.dtype, device=start.device)
    alphas, betas = np.zeros((r_count, steps)), np.zeros((r_count, steps))
    lengths = np.full(r_count, steps)
    alive = np.ones(r_count, dtype=bool)
    run = LanczosRun(alphas, betas, lengths, basis)
    for j in range(steps):
        basis[:, j] = q
        w = matmat(q)
        a = _dot(q, w)
        alphas[:, j] = np.where(alive, a.cpu().numpy(), 0.0)
        w = w - a.to(w.dtype).unsqueeze(1) * q
        if j > 0:
            w = w - torch.as_tensor(betas[:, j - 1], dtype=w.dtype, device=w.device).unsqueeze(1) * basis[:, j - 1]
        qs = basis[:, : j + 1]
        for _ in range(2):
            w = w - torch.bmm(torch.bmm(w.unsqueeze(1), qs.transpose(1, 2)), qs).squeeze(1)
        b = w.double().norm(dim=1)
        scale = np.maximum(np.abs(alphas[:, : j + 1]).max(axis=1), betas[:, :j].max(axis=1, initial=0.0))
        bn = b.cpu().numpy()
        for i in range(r_count):
            if alive[i] and (not np.isfinite(bn[i]) or bn[i] <= 1e-10 * max(scale[i], 1e-30)):
                alive[i] = False
                lengths[i] = j + 1
        betas[:, j] = np.where(alive, bn, 0.0)
        done = (on_step is not None and on_step(j + 1, run)) or not alive.any() or j + 1 == steps
        if done:
            lengths[:] = np.minimum(lengths, j + 1)
            return run
        q = torch.where(torch.as_tensor(alive, device=w.device).unsqueeze(1),
                        w / b.clamp_min(1e-300).to(w.dtype).unsqueeze(1), torch.zeros_like(w))
    return run


def _rademacher(n: int, p: int, seed: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, (n, p), generator=g, dtype=torch.int8).to(dtype) * 2 - 1).to(device)


def top_eigenpairs(op: HessianOperator, k: int = 1, iters: int = 100, tol: float = 1e-4,
                   seed: int = 0) -> dict[str, Any]:
    """The k largest (algebraic) eigenvalues, descending, and unit eigenvectors [k, P], by Lanczos.

    Stops when every top-k Ritz residual ‖H·y − θ·y‖ = |β_j·s_ji| is at most tol·max|θ|, or
    after `iters` steps (`converged` says which)."""
    k = positive_int(k, "--top-k")
    iters = positive_int(iters, "--iters")
    if k > op.numel:
        raise LandscapeError(f"--top-k {k} exceeds the model's {op.numel} parameters")
    if iters < k:
        raise LandscapeError(f"--iters {iters} must be at least --top-k {k}")
    g = torch.Generator().manual_seed(int(seed))
    start = torch.randn(1, op.numel, generator=g, dtype=torch.float64).to(op.device, op.dtype)
    state: dict[str, Any] = {"converged": False}

    def check(j: int, run: LanczosRun) -> bool:
        if j < k:
            return False
        theta, s = np.linalg.eigh(run.tridiagonal(0, j))
        res = np.abs(run.betas[0, j - 1] * s[-1, ::-1][:k])
        scale = max(float(np.abs(theta).max()), 1e-30)
        state["converged"] = bool(np.all(res <= tol * scale))
        return state["converged"]

    run = lanczos(op.matmat, start, iters, check)
    m = int(run.lengths[0])
    theta, s = np.linalg.eigh(run.tridiagonal(0, m))
    order = np.argsort(theta)[::-1][:k]
    if len(order) < k:  # an invariant subspace smaller than k (only for tiny or degenerate models)
        raise LandscapeError(f"Lanczos found only {len(order)} eigenvalues (an invariant subspace): lower --top-k")
    coef = torch.as_tensor(s[:, order].T.copy(), dtype=run.basis.dtype, device=run.basis.device)
    vecs = coef @ run.basis[0, :m]
    vecs = vecs / vecs.double().norm(dim=1, keepdim=True).to(vecs.dtype)
    # a deterministic sign: the largest-magnitude component is positive
    sign = torch.sign(vecs.gather(1, vecs.abs().argmax(dim=1, keepdim=True)))
    vecs = vecs * torch.where(sign == 0, torch.ones_like(sign), sign)
    beta = run.betas[0, m - 1] if m < op.numel else 0.0
    residuals = np.abs(beta * s[-1, order])
    converged = state["converged"] or m == op.numel or int(run.lengths[0]) < min(iters, op.numel)
    return {"eigenvalues": theta[order].astype(np.float64), "eigenvectors": vecs.detach().cpu(),
            "residuals": residuals, "iterations": m, "converged": bool(converged)}


def hutchinson_trace(op: HessianOperator, probes: int = 100, seed: int = 0) -> dict[str, Any]:
    """tr(H) ≈ mean of vᵀHv over Rademacher v, with its standard error (std / √probes)."""
    probes = positive_int(probes, "--probes")
    samples = []
    chunk = max(1, op.batch_for(probes))
    g_seed = int(seed) + 1_000_003
    vs = _rademacher(probes, op.numel, g_seed, op.dtype, torch.device("cpu"))
    for i in range(0, probes, chunk):
        v = vs[i:i + chunk].to(op.device)
        samples.append(_dot(v, op.matmat(v)).cpu().numpy())
    s = np.concatenate(samples)
    stderr = float(s.std(ddof=1) / math.sqrt(len(s))) if len(s) > 1 else float("nan")
    return {"trace": float(s.mean()), "trace_stderr": stderr, "trace_samples": s}


def slq(op: HessianOperator, runs: int = 1, iters: int = 100, seed: int = 0) -> dict[str, Any]:
    """Stochastic Lanczos quadrature: per run, the Ritz values (nodes) and the squared first
    components of the Ritz vectors (weights, summing to one). Runs start from normalised
    Rademacher vectors; a run that stops early (invariant subspace) pads with weight 0."""
    runs = positive_int(runs, "--density-runs")
    iters = positive_int(iters, "--iters")
    m = min(iters, op.numel)
    nodes, weights = np.zeros((runs, m)), np.zeros((runs, m))
    chunk = max(1, op.batch_for(runs))
    starts = _rademacher(runs, op.numel, int(seed) + 2_000_003, op.dtype, torch.device("cpu"))
    for i in range(0, runs, chunk):
        run = lanczos(op.matmat, starts[i:i + chunk].to(op.device), m)
        for r in range(run.alphas.shape[0]):
            theta, s = np.linalg.eigh(run.tridiagonal(r))
            nodes[i + r, : len(theta)] = theta
            weights[i + r, : len(theta)] = s[0] ** 2
    return {"slq_nodes": nodes, "slq_weights": weights}


def density_grid(nodes: np.ndarray, weights: np.ndarray, points: int = 1000, sigma: float = 0.01
                 ) -> tuple[np.ndarray, float]:
    """A grid covering every node with weight, with margins of 5σ; σ = `sigma` × spectral range."""
    used = nodes[weights > 0] if np.any(weights > 0) else nodes.reshape(-1)
    used = used[np.isfinite(used)]
    if not used.size:
        return np.linspace(-1.0, 1.0, points), float(sigma)
    lo, hi = float(used.min()), float(used.max())
    width = float(sigma) * max(hi - lo, abs(hi), abs(lo), 1e-12)
    return np.linspace(lo - 5 * width, hi + 5 * width, int(points)), width


def density_on(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, width: float) -> np.ndarray:
    """(1/R) Σ_r Σ_j w_rj · N(t; θ_rj, width²) on `grid`."""
    d = (grid[:, None] - nodes.reshape(-1)[None, :]) / width
    g = np.exp(-0.5 * d**2) / (width * math.sqrt(2 * math.pi))
    return (g * weights.reshape(-1)[None, :]).sum(1) / nodes.shape[0]


# -- one point, one line ----------------------------------------------------------------
def hessian_spectrum(model: nn.Module, snapshot: Snapshot, x: torch.Tensor | None = None,
                     y: torch.Tensor | None = None, *, stream=None, top_k: int = 1,
                     trace: bool = False, density: bool = False, probes: int = 100, iters: int = 100,
                     tol: float = 1e-4, density_runs: int = 1, density_points: int = 1000, sigma: float = 0.01,
                     seed: int = 0, batch_size: int = 250, device: str | torch.device = "cpu",
                     loss_fn: LossFn | None = None, dtype: str | torch.dtype | None = None,
                     cache: bool | str = "auto", probe_batch: int | None = None, quiet: bool = True,
                     scope: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Top-k eigenpairs (always), Hutchinson trace (`trace`) and SLQ density (`density`) of the
    Hessian of the mean loss over (x, y) (or the streamed data set `stream`) at `snapshot` (eval
    mode, the snapshot's buffers).

    Returns a dict: eigenvalues [k] (descending), eigenvectors [k, P] (CPU tensor), residuals,
    iterations, converged, loss, grad_norm, hvps, seconds; with `trace`: trace, trace_stderr,
    trace_samples; with `density`: density_grid, density, density_sigma, slq_nodes, slq_weights.
    A point whose loss is not finite gets NaN everywhere (`diverged` True) instead of an error.
    """
    check_spectrum_args(top_k, probes, iters, tol, density_runs, density_points, sigma)
    t0 = time.perf_counter()
    op = HessianOperator(model, snapshot, x, y, stream=stream, batch_size=batch_size, device=device, loss_fn=loss_fn,
                         dtype=dtype, cache=cache, probe_batch=probe_batch, scope=scope)
    total = iters + (probes if trace else 0) + (density_runs * min(iters, op.numel) if density else 0)
    with tqdm(total=total, desc="Hessian-vector products", disable=quiet, unit="hvp", leave=False) as bar:
        op.bar = bar
        op.prepare()
        out: dict[str, Any] = {"loss": op.loss, "grad_norm": op.grad_norm, "parameters": op.numel,
                               "diverged": not math.isfinite(op.loss)}
        if out["diverged"]:
            out.update(_nan_result(top_k, op.numel, trace, density, probes, density_runs, density_points))
        else:
            out.update(top_eigenpairs(op, top_k, iters, tol, seed))
            if trace:
                out.update(hutchinson_trace(op, probes, seed))
            if density:
                out.update(slq(op, density_runs, iters, seed))
                grid, width = density_grid(out["slq_nodes"], out["slq_weights"], density_points, sigma)
                out.update(density_grid=grid, density=density_on(grid, out["slq_nodes"], out["slq_weights"], width),
                           density_sigma=width)
        op.bar = None
    out.update(hvps=op.hvps, cached_batches=op.cached_batches, batches=len(op.starts),
               seconds=time.perf_counter() - t0)
    if not trace:
        out.update(trace=None, trace_stderr=None)
    return out


def _nan_result(k: int, p: int, trace: bool, density: bool, probes: int, runs: int, points: int) -> dict[str, Any]:
    out: dict[str, Any] = {"eigenvalues": np.full(k, np.nan), "eigenvectors": torch.full((k, p), float("nan")),
                           "residuals": np.full(k, np.nan), "iterations": 0, "converged": False}
    if trace:
        out.update(trace=float("nan"), trace_stderr=float("nan"), trace_samples=np.full(probes, np.nan))
    if density:
        out.update(slq_nodes=np.full((runs, 1), np.nan), slq_weights=np.zeros((runs, 1)),
                   density_grid=np.full(points, np.nan), density=np.full(points, np.nan), density_sigma=float("nan"))
    return out


def check_spectrum_args(top_k: Any, probes: Any, iters: Any, tol: Any, density_runs: Any = 1,
                        density_points: Any = 1000, sigma: Any = 0.01) -> None:
    """One-line errors for bad settings, before anything is loaded or computed."""
    k = positive_int(top_k, "--top-k")
    positive_int(probes, "--probes")
    it = positive_int(iters, "--iters")
    finite_positive(tol, "--tol")
    positive_int(density_runs, "--density-runs")
    if positive_int(density_points, "density grid points") < 2:
        raise LandscapeError("the density grid needs at least 2 points")
    finite_positive(sigma, "density sigma")
    if it < k:
        raise LandscapeError(f"--iters {it} must be at least --top-k {k}")


def stack_points(alphas: np.ndarray, points: Sequence[Mapping[str, Any]], density_points: int = 1000,
                 sigma: float = 0.01) -> dict[str, Any]:
    out: dict[str, Any] = {"alphas": np.asarray(alphas, dtype=np.float64),
                           "eigenvalues": np.stack([np.asarray(p["eigenvalues"]) for p in points]),
                           "loss": np.array([p["loss"] for p in points]),
                           "grad_norm": np.array([p["grad_norm"] for p in points]),
                           "converged": np.array([bool(p["converged"]) for p in points])}
    if points[0].get("trace") is not None:
        out["trace"] = np.array([p["trace"] for p in points], dtype=np.float64)
        out["trace_stderr"] = np.array([p["trace_stderr"] for p in points], dtype=np.float64)
    else:
        out["trace"] = out["trace_stderr"] = None
    if "slq_nodes" in points[0]:
        nodes = np.concatenate([np.asarray(p["slq_nodes"]).reshape(-1) for p in points])
        weights = np.concatenate([np.asarray(p["slq_weights"]).reshape(-1) for p in points])
        grid, width = density_grid(nodes[np.isfinite(nodes)].reshape(1, -1),
                                   weights[np.isfinite(nodes)].reshape(1, -1), density_points, sigma)
        out["density_grid"], out["density_sigma"] = grid, width
        out["density"] = np.stack([density_on(grid, np.asarray(p["slq_nodes"]), np.asarray(p["slq_weights"]), width)
                                   for p in points])
    out["points"] = list(points)
    return out


# -- Hessian directions for planes --------------------------------------------------------
def hessian_directions(evaluator, center: Snapshot, *, normalization: str = "filter", ignore_bias_bn: bool = True,
                       iters: int = 100, tol: float = 1e-4, seed: int = 0, quiet: bool = True
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """The top two Hessian eigenvectors at `center` as a [2, P] direction tensor, normalised as
    random planes are (`normalize_direction`), and the direction attributes for analyses.plane.

    The Hessian is that of the evaluator's data (training split if present) and loss, computed
    on its device; BN as the analyses evaluate it (the snapshot's buffers under BN mode keep,
    statistics recomputed at `center` under recompute); the products at the evaluator's precision."""
    d = evaluator.loss_data()
    split = d["split"]
    snap = evaluator.with_point_buffers(center)
    res = hessian_spectrum(evaluator.model, snap, d["x"], d["y"], stream=d["stream"], top_k=2, iters=iters, tol=tol,
                           seed=seed,
                           batch_size=evaluator.batch_size, device=evaluator.device, loss_fn=evaluator.loss_fn,
                           quiet=quiet, scope=evaluator.precision_scope)
    if res["diverged"]:
        raise LandscapeError(f"the loss at {center.name!r} is not finite: no Hessian directions")
    vecs = res["eigenvectors"]
    dirs = torch.stack([normalize_direction(evaluator.layout, vecs[i], center.params, normalization, ignore_bias_bn)
                        for i in range(2)])
    attrs = {"kind": "hessian", "normalization": normalization, "ignore_bias_bn": ignore_bias_bn,
             "eigenvalues": [float(v) for v in res["eigenvalues"]], "seed": seed, "iters": iters, "tol": tol,
             "converged": res["converged"], "split": split}
    return dirs.to(center.params.dtype), attrs
