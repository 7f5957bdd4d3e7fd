"""Interpolated-weight kernels: run K weight points θ_k = θ0 + Σ_j c_kj·D_j in one pass.

A loss plane or line evaluates one network at many weight points that share a base
θ0 and d directions D_j. These ops take (θ0, D, C) instead of K weight copies:

* :func:`interpolate_weights` — θ0 + C·D, i.e. the K points themselves ([K, P]).
* :func:`interpolated_linear` — y_k = x_k·W_kᵀ + b_k with W_k = W0 + Σ_j c_kj·D_j.
* :func:`interpolated_conv2d` — the same for a 2-D convolution.

Each op has a torch reference (the specification, and the CPU path), a Triton kernel
(the CUDA path) and one public function that dispatches on the device; ``impl="torch"``
or ``impl="triton"`` forces a path (the tests force Triton on CPU tensors under
``TRITON_INTERPRET=1``).

Why the formulations differ between CPU and GPU:

* Triton kernels form the weight tile W0 + Σ_j c_kj·D_j in the matmul's load stage, so
  the K weight copies never exist in memory (linear: tiled GEMM; conv: implicit GEMM).
* The torch (CPU) path for per-point inputs materialises the K weights (op 1): they are
  small next to the activations, and one batched sgemm (linear) / one channels_last conv
  per point (conv) was the fastest CPU formulation measured. The "stacked" formulation
  that avoids the copies costs (d+1)× the arithmetic and was 3-5× slower; a grouped conv
  over all points was ~1.7× slower. Timings are in the docstrings of
  ``_linear_per_point_materialise_torch`` and ``_conv2d_per_point_loop_torch``; the
  alternatives stay (tested) for re-measuring on other machines.
* A shared input (the first layer) needs only min(K, d+1) products by linearity:
  Y_k = X·W0ᵀ + Σ_j c_kj·X·D_jᵀ (+ the same combination of the biases). This is exact up
  to rounding; with huge coefficients that make W_k much smaller than W0 and c·D the
  combination loses relative accuracy exactly as the weights themselves would.

Numerics: every path accumulates in fp32 (fp64 when an input is fp64 on the torch
path). Triton loads fp16/bf16 and converts to fp32 before any arithmetic (bf16
arithmetic is broken in the interpreter) and uses ``tl.dot(..., input_precision="ieee")``
so GPU results match fp32 references (no TF32). Triton accepts fp32/fp16/bf16 tensors;
fp64 always takes the torch path. Conv2d's Triton kernel (implicit GEMM) supports
groups, stride, padding and dilation; padding must be ints (no "same"/"valid").

These are evaluation (forward-only) ops: the Triton kernels have no backward, and the
shared-input conv path combines with ``torch.add(..., out=)``, which autograd refuses.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

try:  # Triton is Linux-only; the torch path must work without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "interpolate_weights",
    "interpolated_linear",
    "interpolated_conv2d",
]

_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# fp32 products on the GPU, not TF32: the kernels must match fp32 references.
_INPUT_PRECISION = "ieee"

IntPair = int | Sequence[int]


# ----------------------------------------------------------------------------- helpers


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _choose_impl(impl: str | None, tensors: Sequence[torch.Tensor]) -> str:
    """Pick "torch" or "triton"; check that a forced Triton run can actually run."""
    if impl is None:
        on_cuda = all(t.is_cuda for t in tensors)
        ok_dtype = all(t.dtype in _TRITON_DTYPES for t in tensors)
        return "triton" if HAS_TRITON and on_cuda and ok_dtype else "torch"
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be 'torch', 'triton' or None, got {impl!r}")
    if impl == "triton":
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' requested but triton is not installed")
        bad = [t.dtype for t in tensors if t.dtype not in _TRITON_DTYPES]
        if bad:
            raise TypeError(f"the Triton path takes fp32/fp16/bf16 tensors, got {bad[0]}")
        if not all(t.is_cuda for t in tensors) and not _interpreting():
            raise RuntimeError(
                "impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
    return impl


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp64 if any input is fp64, else fp32: half-precision inputs accumulate in fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _out_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dt = tensors[0].dtype
    for t in tensors[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, str):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def _pow2_clamp(n: int, lo: int, hi: int) -> int:
    p = 1 << max(0, int(n) - 1).bit_length()
    return max(lo, min(hi, p))


def _check_coeffs(coeffs: torch.Tensor, d: int, what: str) -> None:
    if coeffs.ndim != 2 or coeffs.shape[1] != d:
        raise ValueError(f"coeffs must be [K, d] with d={d} ({what}), got {tuple(coeffs.shape)}")


def _check_bias(b0: torch.Tensor | None, db: torch.Tensor | None, d: int, out: int) -> None:
    if b0 is not None and tuple(b0.shape) != (out,):
        raise ValueError(f"b0 must be [{out}], got {tuple(b0.shape)}")
    if db is not None and tuple(db.shape) != (d, out):
        raise ValueError(f"db must be [{d}, {out}], got {tuple(db.shape)}")


def _augmented(coeffs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[1, c_k1, ..., c_kd] per row: Y_k = A_k · [Y0; Y1; ...; Yd] in one matmul."""
    ones = torch.ones(coeffs.shape[0], 1, dtype=dtype, device=coeffs.device)
    return torch.cat([ones, coeffs.to(dtype)], dim=1)


def _interpolated_bias_torch(
    b0: torch.Tensor | None, db: torch.Tensor | None, coeffs: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor | None:
    """b_k = b0 + Σ_j c_kj·e_j as [K, out], or None when there is no bias at all."""
    if b0 is None and db is None:
        return None
    c = coeffs.to(dtype)
    if db is None:
        return b0.to(dtype).expand(c.shape[0], -1)  # type: ignore[union-attr]
    base = b0.to(dtype) if b0 is not None else torch.zeros(db.shape[1], dtype=dtype, device=db.device)
    return torch.addmm(base.unsqueeze(0), c, db.to(dtype))


# ---------------------------------------------------------------------- Triton kernels

if HAS_TRITON:

    @triton.jit
    def _interpolated_tile(w0_ptr, dw_ptr, w_off, d_off, mask, c_base, s_cj, s_dj, D):
        """(W0 + Σ_j c_kj·D_j) at the given offsets, in fp32: formed in registers, never stored."""
        wt = tl.load(w0_ptr + w_off, mask=mask, other=0.0).to(tl.float32)
        c_j = c_base
        d_j = dw_ptr + d_off
        for j in range(0, D):
            wt += tl.load(c_j).to(tl.float32) * tl.load(d_j, mask=mask, other=0.0).to(tl.float32)
            c_j += s_cj
            d_j += s_dj
        return wt

    @triton.jit
    def _interpolated_bias(b0_ptr, db_ptr, offs, mask, c_base, s_b, s_bo, s_bj, s_cj, D,
                           HAS_B0: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_N: tl.constexpr):
        """b0 + Σ_j c_kj·e_j for one tile of outputs (zeros where there is no bias)."""
        if HAS_B0:
            bias = tl.load(b0_ptr + offs * s_b, mask=mask, other=0.0).to(tl.float32)
        else:
            bias = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if HAS_DB:
            c_j = c_base
            e_j = db_ptr + offs * s_bo
            for j in range(0, D):
                bias += tl.load(c_j).to(tl.float32) * tl.load(e_j, mask=mask, other=0.0).to(tl.float32)
                c_j += s_cj
                e_j += s_bj
        return bias

    @triton.jit
    def _interpolate_kernel(
        theta_ptr, c_ptr, d_ptr, out_ptr,
        P, D,
        s_t, s_ck, s_cj, s_dj, s_dp, s_ok, s_op,
        BLOCK_P: tl.constexpr,
    ):
        # Grid (P-blocks, K): P-blocks on axis 0 (the only axis allowed > 65535 programs).
        pid_p = tl.program_id(0)
        k = tl.program_id(1).to(tl.int64)  # K·P can pass 2**31
        offs = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = offs < P
        acc = tl.load(theta_ptr + offs * s_t, mask=mask, other=0.0).to(tl.float32)
        # Pointers advance per direction: 64-bit pointer arithmetic, no i32 j·stride product.
        c_j = c_ptr + k * s_ck
        d_j = d_ptr + offs * s_dp
        for j in range(0, D):
            acc += tl.load(c_j).to(tl.float32) * tl.load(d_j, mask=mask, other=0.0).to(tl.float32)
            c_j += s_cj
            d_j += s_dj
        tl.store(out_ptr + k * s_ok + offs * s_op, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _interp_linear_kernel(
        x_ptr, w0_ptr, dw_ptr, c_ptr, b0_ptr, db_ptr, y_ptr,
        N, IN, OUT, D,
        s_xk, s_xn, s_xi,
        s_wo, s_wi,
        s_dj, s_do, s_di,
        s_ck, s_cj,
        s_b, s_bj, s_bo,
        s_yk, s_yn, s_yo,
        HAS_B0: tl.constexpr, HAS_DB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        # Grid (N-tiles, out-tiles, K). s_xk == 0 broadcasts a shared input.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        k = tl.program_id(2).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_i = tl.arange(0, BLOCK_K)
        mask_m = offs_m < N
        mask_n = offs_n < OUT
        x_base = x_ptr + k * s_xk
        c_base = c_ptr + k * s_ck

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for i0 in range(0, IN, BLOCK_K):
            ii = i0 + offs_i
            mask_i = ii < IN
            xt = tl.load(
                x_base + offs_m[:, None] * s_xn + ii[None, :] * s_xi,
                mask=mask_m[:, None] & mask_i[None, :], other=0.0,
            ).to(tl.float32)
            # Weight tile [BLOCK_K, BLOCK_N] = (W0 + Σ_j c_kj·D_j)ᵀ, formed here, never stored.
            w_mask = mask_i[:, None] & mask_n[None, :]
            w_off = offs_n[None, :] * s_wo + ii[:, None] * s_wi
            d_off = offs_n[None, :] * s_do + ii[:, None] * s_di
            wt = _interpolated_tile(w0_ptr, dw_ptr, w_off, d_off, w_mask, c_base, s_cj, s_dj, D)
            acc = tl.dot(xt, wt, acc, input_precision=INPUT_PRECISION)

        acc += _interpolated_bias(b0_ptr, db_ptr, offs_n, mask_n, c_base, s_b, s_bo, s_bj, s_cj, D,
                                  HAS_B0, HAS_DB, BLOCK_N)[None, :]

        y_ptrs = y_ptr + k * s_yk + offs_m[:, None] * s_yn + offs_n[None, :] * s_yo
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _interp_conv2d_kernel(
        x_ptr, w0_ptr, dw_ptr, c_ptr, b0_ptr, db_ptr, y_ptr,
        NB, H, W, OH, OW, CG, OG, D, N_O_TILES,
        s_xk, s_xn, s_xc, s_xh, s_xw,
        s_dj,
        s_ck, s_cj,
        s_b, s_bj, s_bo,
        s_yk, s_yn, s_yc, s_yh, s_yw,
        KH: tl.constexpr, KW: tl.constexpr,
        SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        DH: tl.constexpr, DW: tl.constexpr,
        HAS_B0: tl.constexpr, HAS_DB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        # Implicit GEMM: rows m = (image, oh, ow), columns = output channels of one group,
        # reduction r = (in-channel within group, kh, kw). Weights are contiguous
        # [O, CG, KH, KW] so r is also the flat offset inside a weight row.
        # Grid (M-tiles, groups·out-tiles, K). s_xk == 0 broadcasts a shared input.
        pid_m = tl.program_id(0)
        pid_go = tl.program_id(1)
        k = tl.program_id(2).to(tl.int64)
        grp = pid_go // N_O_TILES
        pid_o = pid_go % N_O_TILES

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < NB * OH * OW
        mask_o = offs_o < OG
        n = offs_m // (OH * OW)
        rem = offs_m % (OH * OW)
        oh = rem // OW
        ow = rem % OW
        ih0 = oh * SH - PH
        iw0 = ow * SW - PW
        o_abs = grp * OG + offs_o
        RED = CG * KH * KW
        w_row = o_abs.to(tl.int64) * RED
        x_base = x_ptr + k * s_xk + (grp * CG).to(tl.int64) * s_xc
        x_row = n.to(tl.int64) * s_xn
        c_base = c_ptr + k * s_ck

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, RED, BLOCK_K):
            r = r0 + tl.arange(0, BLOCK_K)
            mask_r = r < RED
            ci = r // (KH * KW)
            rr = r % (KH * KW)
            ih = ih0[:, None] + (rr // KW)[None, :] * DH
            iw = iw0[:, None] + (rr % KW)[None, :] * DW
            x_mask = (mask_m[:, None] & mask_r[None, :]
                      & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            xt = tl.load(
                x_base + x_row[:, None] + ci[None, :] * s_xc + ih * s_xh + iw * s_xw,
                mask=x_mask, other=0.0,
            ).to(tl.float32)
            # Weight tile [BLOCK_K, BLOCK_N] = (W0 + Σ_j c_kj·D_j) for these rows, never stored.
            w_mask = mask_r[:, None] & mask_o[None, :]
            w_off = w_row[None, :] + r[:, None]
            wt = _interpolated_tile(w0_ptr, dw_ptr, w_off, w_off, w_mask, c_base, s_cj, s_dj, D)
            acc = tl.dot(xt, wt, acc, input_precision=INPUT_PRECISION)

        acc += _interpolated_bias(b0_ptr, db_ptr, o_abs, mask_o, c_base, s_b, s_bo, s_bj, s_cj, D,
                                  HAS_B0, HAS_DB, BLOCK_N)[None, :]

        y_ptrs = (y_ptr + k * s_yk + (n.to(tl.int64) * s_yn + oh * s_yh + ow * s_yw)[:, None]
                  + o_abs[None, :] * s_yc)
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_o[None, :])


def _gemm_blocks(m: int, n: int, red: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps). The interpreter pays ~1 ms per op per
    program, so it gets the largest blocks (tiny grids); a GPU gets a standard tile."""
    if _interpreting():
        return _pow2_clamp(m, 16, 128), _pow2_clamp(n, 16, 64), _pow2_clamp(red, 16, 64), 4
    return 64, 64, 32, 4


# ------------------------------------------------------------------ interpolate_weights


def _interpolate_weights_torch(
    theta0: torch.Tensor, coeffs: torch.Tensor, directions: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    cdt = _compute_dtype(theta0, directions)
    # One addmm: a single pass over the [K, P] output (memory-bound), fp32/fp64 accumulate.
    out = torch.addmm(theta0.to(cdt).unsqueeze(0), coeffs.to(cdt), directions.to(cdt))
    return out.to(out_dtype)


def _interpolate_weights_triton(
    theta0: torch.Tensor, coeffs: torch.Tensor, directions: torch.Tensor, out_dtype: torch.dtype
) -> torch.Tensor:
    K, D = coeffs.shape
    P = theta0.shape[0]
    c = coeffs.to(device=theta0.device, dtype=torch.float32)
    out = torch.empty(K, P, dtype=out_dtype, device=theta0.device)
    if K == 0 or P == 0:
        return out
    d_arg = directions if D > 0 else theta0  # any valid pointer; never read when D == 0
    s_dj, s_dp = (directions.stride(0), directions.stride(1)) if D > 0 else (0, 0)
    block = _pow2_clamp(P, 16, 8192) if _interpreting() else 1024
    grid = (triton.cdiv(P, block), K)
    _interpolate_kernel[grid](
        theta0, c, d_arg, out,
        P, D,
        theta0.stride(0), c.stride(0), c.stride(1), s_dj, s_dp, out.stride(0), out.stride(1),
        BLOCK_P=block, num_warps=4,
    )
    return out


def interpolate_weights(
    theta0: torch.Tensor,
    coeffs: torch.Tensor,
    directions: torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    impl: str | None = None,
) -> torch.Tensor:
    """θ_k = θ0 + Σ_j coeffs[k, j]·directions[j] for every k, as one [K, P] tensor.

    Args:
        theta0: base vector [P].
        coeffs: coefficients [K, d] (any float dtype; moved to theta0's device).
        directions: directions [d, P].
        out_dtype: dtype of the result; default: promotion of theta0 and directions.
        impl: "torch", "triton" or None (Triton for CUDA fp32/fp16/bf16, else torch).

    Accumulates in fp32 (fp64 on the torch path when an input is fp64).
    """
    if theta0.ndim != 1 or directions.ndim != 2 or directions.shape[1] != theta0.shape[0]:
        raise ValueError(
            f"theta0 must be [P] and directions [d, P]; got {tuple(theta0.shape)} and {tuple(directions.shape)}"
        )
    _check_coeffs(coeffs, directions.shape[0], "rows of directions")
    out_dtype = out_dtype or _out_dtype(theta0, directions)
    coeffs = coeffs.to(theta0.device)
    if _choose_impl(impl, (theta0, directions)) == "triton":
        return _interpolate_weights_triton(theta0, coeffs, directions, out_dtype)
    return _interpolate_weights_torch(theta0, coeffs, directions, out_dtype)


# ------------------------------------------------------------------ interpolated_linear


def _linear_shared_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
) -> torch.Tensor:
    """Shared input by linearity: one matmul against [W0; D_1; ...; D_d], then combine."""
    d, out, inp = dw.shape
    N = x.shape[0]
    w_all = torch.cat([w0.unsqueeze(0), dw], 0).to(cdt).reshape((d + 1) * out, inp)
    y_all = x.to(cdt) @ w_all.t()  # [N, (d+1)·out]: d+1 products whatever K is
    y_all = y_all.view(N, d + 1, out).transpose(0, 1).reshape(d + 1, N * out)
    y = (_augmented(coeffs, cdt) @ y_all).view(-1, N, out)
    bias = _interpolated_bias_torch(b0, db, coeffs, cdt)
    if bias is not None:
        y += bias.unsqueeze(1)
    return y


def _linear_per_point_materialise_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
) -> torch.Tensor:
    """Per-point input: materialise W_k (op 1), then one batched matmul.

    CPU, 2 cores, torch 2.14.1, fp32, K=9, d=2, N=1000, 512→256 (best of 7, shared box):
      materialise W_k + bmm (this)                        18.8 ms
      stacked [X_k, c_k1·X_k, c_k2·X_k] @ [W0 D1 D2]ᵀ    101.7 ms
      (for scale: K plain F.linear calls, W_k given)      20.2 ms
    Materialising costs K·out·in writes, small next to the K·N·out·in products.
    """
    K = coeffs.shape[0]
    d, out, inp = dw.shape
    w = _interpolate_weights_torch(w0.reshape(-1), coeffs, dw.reshape(d, w0.numel()), cdt).view(K, out, inp)
    y = torch.bmm(x.to(cdt), w.transpose(1, 2))
    bias = _interpolated_bias_torch(b0, db, coeffs, cdt)
    if bias is not None:
        y += bias.unsqueeze(1)  # in place: baddbmm measured slower than bmm + add_
    return y


def _linear_per_point_stacked_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
) -> torch.Tensor:
    """Per-point input, no weight copies: [X_k, c_k1·X_k, ..., c_kd·X_k] ([K, N, (d+1)·in])
    against [W0, D_1, ..., D_d] concatenated along the input dim, as one matmul
    ((d+1)× the arithmetic). Kept as the measured alternative."""
    K, N, _ = x.shape
    d, out, _ = dw.shape
    c = coeffs.to(cdt)
    xc = x.to(cdt)
    xs = torch.cat([xc] + [c[:, j, None, None] * xc for j in range(d)], 2)
    w_cat = torch.cat([w0.to(cdt)] + [dw[j].to(cdt) for j in range(d)], 1)
    y = (xs.view(K * N, -1) @ w_cat.t()).view(K, N, out)
    bias = _interpolated_bias_torch(b0, db, coeffs, cdt)
    if bias is not None:
        y += bias.unsqueeze(1)
    return y


_linear_per_point_torch = _linear_per_point_materialise_torch


def _linear_triton(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, y: torch.Tensor,
) -> None:
    """Launch the fused kernel into y [K', N, out]; x is [K', N, in] or [N, in] (broadcast)."""
    K = coeffs.shape[0]
    d, out, inp = dw.shape
    N = x.shape[-2]
    if K == 0 or N == 0 or out == 0:
        return
    s_xk = x.stride(0) if x.ndim == 3 else 0
    bm, bn, bk, warps = _gemm_blocks(N, out, inp)
    grid = (triton.cdiv(N, bm), triton.cdiv(out, bn), K)
    dw_arg = dw if d > 0 else w0  # any valid pointer when there are no directions
    s_d = dw.stride() if d > 0 else (0, 0, 0)
    _interp_linear_kernel[grid](
        x, w0, dw_arg, coeffs, b0 if b0 is not None else w0, db if db is not None else w0, y,
        N, inp, out, d,
        s_xk, x.stride(-2), x.stride(-1),
        w0.stride(0), w0.stride(1),
        s_d[0], s_d[1], s_d[2],
        coeffs.stride(0), coeffs.stride(1),
        b0.stride(0) if b0 is not None else 0,
        db.stride(0) if db is not None else 0, db.stride(1) if db is not None else 0,
        y.stride(0), y.stride(1), y.stride(2),
        HAS_B0=b0 is not None, HAS_DB=db is not None and d > 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INPUT_PRECISION=_INPUT_PRECISION,
        num_warps=warps,
    )


def _linear_shared_triton(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, out_dtype: torch.dtype,
) -> torch.Tensor:
    """Shared input by linearity: d+1 plain GEMMs (the kernel with d=0, biases folded in),
    then the K combinations with the interpolation kernel."""
    d, out, _ = dw.shape
    N = x.shape[0]
    y_all = torch.empty(d + 1, 1, N, out, dtype=torch.float32, device=x.device)
    one = torch.ones(1, 0, dtype=torch.float32, device=x.device)  # K'=1, no directions
    no_dirs = w0.new_empty(0, *w0.shape)
    for j in range(d + 1):
        w_j = w0 if j == 0 else dw[j - 1]
        b_j = b0 if j == 0 else (db[j - 1] if db is not None else None)
        _linear_triton(x, w_j, no_dirs, one, b_j, None, y_all[j])
    flat = y_all.view(d + 1, N * out)
    return _interpolate_weights_triton(flat[0], coeffs, flat[1:], out_dtype).view(-1, N, out)


def interpolated_linear(
    x: torch.Tensor,
    w0: torch.Tensor,
    dw: torch.Tensor,
    coeffs: torch.Tensor,
    b0: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """y_k = x_k·(W0 + Σ_j c_kj·D_j)ᵀ + (b0 + Σ_j c_kj·e_j) for k = 1..K.

    Args:
        x: per-point input [K, N, in], or a shared input [N, in] (the first layer).
        w0: base weight [out, in]; dw: direction weights [d, out, in].
        coeffs: [K, d]. b0: base bias [out] or None; db: direction biases [d, out] or None.
        impl: "torch", "triton" or None (Triton for CUDA fp32/fp16/bf16, else torch).

    Returns y [K, N, out] in the promoted dtype of x, w0 and dw. A shared input costs
    min(K, d+1) products (linearity), not K.
    """
    if w0.ndim != 2 or dw.ndim != 3 or tuple(dw.shape[1:]) != tuple(w0.shape):
        raise ValueError(f"w0 must be [out, in] and dw [d, out, in]; got {tuple(w0.shape)}, {tuple(dw.shape)}")
    d, out, inp = dw.shape
    _check_coeffs(coeffs, d, "directions in dw")
    _check_bias(b0, db, d, out)
    K = coeffs.shape[0]
    if x.ndim == 3:
        if x.shape[0] != K or x.shape[2] != inp:
            raise ValueError(f"per-point x must be [K={K}, N, in={inp}], got {tuple(x.shape)}")
        shared = False
    elif x.ndim == 2:
        if x.shape[1] != inp:
            raise ValueError(f"shared x must be [N, in={inp}], got {tuple(x.shape)}")
        shared = True
    else:
        raise ValueError(f"x must be [K, N, in] or [N, in], got {tuple(x.shape)}")
    out_dtype = _out_dtype(x, w0, dw)
    coeffs = coeffs.to(x.device)
    tensors = [t for t in (x, w0, dw, b0, db) if t is not None]
    # Linearity pays off only when there are more points than products it needs.
    by_linearity = shared and K > d + 1

    if _choose_impl(impl, tensors) == "triton":
        c = coeffs.to(torch.float32)
        if by_linearity:
            return _linear_shared_triton(x, w0, dw, c, b0, db, out_dtype)
        y = torch.empty(K, x.shape[-2], out, dtype=out_dtype, device=x.device)
        _linear_triton(x, w0, dw, c, b0, db, y)
        return y

    cdt = _compute_dtype(*tensors)
    if by_linearity:
        y = _linear_shared_torch(x, w0, dw, coeffs, b0, db, cdt)
    else:
        xx = x.unsqueeze(0).expand(K, -1, -1) if shared else x
        y = _linear_per_point_torch(xx, w0, dw, coeffs, b0, db, cdt)
    return y.to(out_dtype)


# ------------------------------------------------------------------ interpolated_conv2d


def _conv_out_hw(
    h: int, w: int, kh: int, kw: int,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
) -> tuple[int, int]:
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _conv2d_shared_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> torch.Tensor:
    """Shared input by linearity: d+1 convs (W0 with b0, D_j with e_j), then
    Y_k = Y0 + Σ_j c_kj·Y_j written point by point into one output.

    Returns [K, N, O, oh, ow] stored channels_last per point, like the per-point path.
    d+1 separate convs rather than one conv with (d+1)·O outputs: the single wide conv
    measured ~2.5x slower (111 ms vs 3 x 15 ms at N=250, 16->32, 32x32), and separate
    channels_last outputs are already laid out as the per-point output rows, so the
    combine needs no transposing copy. Same setup as the per-point timings: this 242 ms,
    the K-conv per-point path on the broadcast input 368 ms."""
    K = coeffs.shape[0]
    d, O = dw.shape[0], dw.shape[1]
    N = x.shape[0]
    xc = x.to(dtype=cdt, memory_format=torch.channels_last)
    ys = []
    for j in range(d + 1):
        w_j = (w0 if j == 0 else dw[j - 1]).to(cdt)
        b_j = b0 if j == 0 else (db[j - 1] if db is not None else None)
        y_j = F.conv2d(xc, w_j, None if b_j is None else b_j.to(cdt), stride, padding, dilation, groups)
        ys.append(y_j.permute(0, 2, 3, 1))  # [N, oh, ow, O]; a free view when channels_last
    oh, ow = ys[0].shape[1:3]
    out = torch.empty(K, N, oh, ow, O, dtype=cdt, device=x.device)
    c = coeffs.to(cdt).tolist()  # CPU path: python scalars for the fused add kernels
    for k in range(K):
        if d == 0:
            out[k].copy_(ys[0])
            continue
        torch.add(ys[0], ys[1], alpha=c[k][0], out=out[k])
        for j in range(1, d):
            out[k].add_(ys[j + 1], alpha=c[k][j])
    return out.permute(0, 1, 4, 2, 3)


def _conv2d_per_point_loop_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> torch.Tensor:
    """Per-point input: materialise W_k (op 1), then one channels_last conv per point,
    each copied into its slice of one output stored [K, N, oh, ow, O] in memory.

    The channels_last storage makes that copy a plain memcpy and makes the next layer's
    x[k] channels_last already (no conversion).

    CPU, 2 cores, torch 2.14.1, fp32, K=9, d=2, N=250 images 32×32, conv 16→32 3×3 pad 1
    (best of 7, shared box):
      K channels_last convs into one output (this)      302 ms (NCHW x) / 342 ms (CL x)
      grouped conv, points folded into groups=K         537 ms
      stacked in-channels [X_k, c_k1·X_k, c_k2·X_k]    1182 ms
      (for scale: K plain NCHW F.conv2d, list output)   316 ms
      (for scale: allocating + filling the fresh 295 MB output alone: 117 ms; fresh
       allocations this large are page-fault bound on this machine)
    """
    K = coeffs.shape[0]
    d, O = dw.shape[0], dw.shape[1]
    N, _, H, W = x.shape[1:]
    w = _interpolate_weights_torch(w0.reshape(-1), coeffs, dw.reshape(d, w0.numel()), cdt).view(K, *w0.shape)
    bias = _interpolated_bias_torch(b0, db, coeffs, cdt)
    oh, ow = _conv_out_hw(H, W, w0.shape[2], w0.shape[3], stride, padding, dilation)
    y = torch.empty(K, N, oh, ow, O, dtype=cdt, device=x.device).permute(0, 1, 4, 2, 3)
    for k in range(K):
        xk = x[k].to(dtype=cdt, memory_format=torch.channels_last)
        yk = F.conv2d(xk, w[k], None if bias is None else bias[k], stride, padding, dilation, groups)
        y[k].copy_(yk)
    return y


def _conv2d_per_point_grouped_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> torch.Tensor:
    """Per-point input: materialise W_k and run all points as one grouped conv
    (points folded into the channel dim: input [N, K·I, H, W], weight [K·O, I/g, kh, kw],
    groups=K·g). Returns a [K, N, O, oh, ow] view of an [N, K·O, oh, ow] tensor."""
    K = coeffs.shape[0]
    d, O = dw.shape[0], dw.shape[1]
    N, C, H, W = x.shape[1:]
    w = _interpolate_weights_torch(w0.reshape(-1), coeffs, dw.reshape(d, w0.numel()), cdt)
    bias = _interpolated_bias_torch(b0, db, coeffs, cdt)
    xi = x.to(cdt).transpose(0, 1).reshape(N, K * C, H, W)
    y = F.conv2d(
        xi, w.view(K * O, *w0.shape[1:]), None if bias is None else bias.reshape(-1),
        stride, padding, dilation, K * groups,
    )
    return y.view(N, K, O, *y.shape[-2:]).transpose(0, 1)


def _conv2d_per_point_stacked_torch(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, cdt: torch.dtype,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> torch.Tensor:
    """Per-point input, no weight copies: input channels [X_k, c_k1·X_k, ..., c_kd·X_k]
    against [W0, D_1, ..., D_d] concatenated along input channels ((d+1)× the work).
    Kept as a measured alternative; groups == 1 only."""
    if groups != 1:
        raise ValueError("the stacked formulation is implemented for groups=1 only")
    K, N = x.shape[:2]
    d = dw.shape[0]
    c = coeffs.to(cdt)
    xc = x.to(cdt)
    xs = torch.cat([xc] + [c[:, j, None, None, None, None] * xc for j in range(d)], 2)
    w_cat = torch.cat([w0.to(cdt)] + [dw[j].to(cdt) for j in range(d)], 1)
    y = F.conv2d(xs.flatten(0, 1), w_cat, None, stride, padding, dilation, 1)
    y = y.view(K, N, *y.shape[1:])
    bias = _interpolated_bias_torch(b0, db, coeffs, cdt)
    if bias is not None:
        y = y + bias[:, None, :, None, None]
    return y


_conv2d_per_point_torch = _conv2d_per_point_loop_torch


def _conv2d_triton(
    x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
    b0: torch.Tensor | None, db: torch.Tensor | None, y: torch.Tensor,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
) -> None:
    """Launch the implicit-GEMM kernel into y [K', N, O, oh, ow]; x is [K', N, C, H, W]
    or [N, C, H, W] (broadcast). w0 and dw must be contiguous."""
    K = coeffs.shape[0]
    d, O, CG, KH, KW = dw.shape
    N, _, H, W = x.shape[-4:]
    OH, OW = y.shape[-2:]
    OG = O // groups
    M = N * OH * OW
    if K == 0 or M == 0 or O == 0:
        return
    bm, bn, bk, warps = _gemm_blocks(M, OG, CG * KH * KW)
    n_o_tiles = triton.cdiv(OG, bn)
    grid = (triton.cdiv(M, bm), groups * n_o_tiles, K)
    sx = x.stride()
    s_xk = sx[0] if x.ndim == 5 else 0
    _interp_conv2d_kernel[grid](
        x, w0, dw if d > 0 else w0, coeffs,
        b0 if b0 is not None else w0, db if db is not None else w0, y,
        N, H, W, OH, OW, CG, OG, d, n_o_tiles,
        s_xk, sx[-4], sx[-3], sx[-2], sx[-1],
        dw.stride(0) if d > 0 else 0,
        coeffs.stride(0), coeffs.stride(1),
        b0.stride(0) if b0 is not None else 0,
        db.stride(0) if db is not None else 0, db.stride(1) if db is not None else 0,
        y.stride(0), y.stride(1), y.stride(2), y.stride(3), y.stride(4),
        KH=KH, KW=KW, SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
        DH=dilation[0], DW=dilation[1],
        HAS_B0=b0 is not None, HAS_DB=db is not None and d > 0,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, INPUT_PRECISION=_INPUT_PRECISION,
        num_warps=warps,
    )


def interpolated_conv2d(
    x: torch.Tensor,
    w0: torch.Tensor,
    dw: torch.Tensor,
    coeffs: torch.Tensor,
    b0: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    impl: str | None = None,
) -> torch.Tensor:
    """y_k = conv2d(x_k, W0 + Σ_j c_kj·D_j, b0 + Σ_j c_kj·e_j) for k = 1..K.

    Args:
        x: per-point input [K, N, I, H, W], or a shared input [N, I, H, W] (the first layer).
        w0: base weight [O, I/groups, kh, kw]; dw: direction weights [d, O, I/groups, kh, kw].
        coeffs: [K, d]. b0: base bias [O] or None; db: direction biases [d, O] or None.
        stride, padding, dilation: ints or pairs of ints (as in F.conv2d; no padding strings).
        impl: "torch", "triton" or None (Triton for CUDA fp32/fp16/bf16, else torch).

    Returns y [K, N, O, oh, ow] in the promoted dtype of x, w0 and dw. On the torch path
    it is a view stored channels_last per point ([K, N, oh, ow, O] in memory), so
    ``y.reshape(K*N, O, oh, ow)`` and the next layer's ``y[k]`` need no copy; Triton
    returns a contiguous tensor. A shared input costs min(K, d+1) convolutions, not K.
    """
    if w0.ndim != 4 or dw.ndim != 5 or tuple(dw.shape[1:]) != tuple(w0.shape):
        raise ValueError(
            f"w0 must be [O, I/g, kh, kw] and dw [d, O, I/g, kh, kw]; got {tuple(w0.shape)}, {tuple(dw.shape)}"
        )
    d, O, CG, KH, KW = dw.shape
    _check_coeffs(coeffs, d, "directions in dw")
    _check_bias(b0, db, d, O)
    if groups < 1 or O % groups:
        raise ValueError(f"groups={groups} must divide the {O} output channels")
    K = coeffs.shape[0]
    if x.ndim == 5:
        if x.shape[0] != K:
            raise ValueError(f"per-point x must be [K={K}, N, I, H, W], got {tuple(x.shape)}")
        shared = False
    elif x.ndim == 4:
        shared = True
    else:
        raise ValueError(f"x must be [K, N, I, H, W] or [N, I, H, W], got {tuple(x.shape)}")
    if x.shape[-3] != CG * groups:
        raise ValueError(f"x has {x.shape[-3]} channels, weights expect {CG * groups}")
    st, pa, di = _pair(stride, "stride"), _pair(padding, "padding"), _pair(dilation, "dilation")
    N, _, H, W = x.shape[-4:]
    oh, ow = _conv_out_hw(H, W, KH, KW, st, pa, di)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"input {H}x{W} is smaller than the (dilated, padded) {KH}x{KW} kernel")
    out_dtype = _out_dtype(x, w0, dw)
    coeffs = coeffs.to(x.device)
    tensors = [t for t in (x, w0, dw, b0, db) if t is not None]
    by_linearity = shared and K > d + 1

    if _choose_impl(impl, tensors) == "triton":
        c = coeffs.to(torch.float32)
        w0c, dwc = w0.contiguous(), dw.contiguous()
        if by_linearity:
            # d+1 plain convolutions (the kernel with d=0, biases folded in), then combine.
            y_all = torch.empty(d + 1, 1, N, O, oh, ow, dtype=torch.float32, device=x.device)
            one = torch.ones(1, 0, dtype=torch.float32, device=x.device)
            no_dirs = w0c.new_empty(0, *w0c.shape)
            for j in range(d + 1):
                w_j = w0c if j == 0 else dwc[j - 1]
                b_j = b0 if j == 0 else (db[j - 1] if db is not None else None)
                _conv2d_triton(x, w_j, no_dirs, one, b_j, None, y_all[j], st, pa, di, groups)
            flat = y_all.view(d + 1, -1)
            return _interpolate_weights_triton(flat[0], c, flat[1:], out_dtype).view(K, N, O, oh, ow)
        y = torch.empty(K, N, O, oh, ow, dtype=out_dtype, device=x.device)
        _conv2d_triton(x, w0c, dwc, c, b0, db, y, st, pa, di, groups)
        return y

    cdt = _compute_dtype(*tensors)
    if by_linearity:
        y = _conv2d_shared_torch(x, w0, dw, coeffs, b0, db, cdt, st, pa, di, groups)
    else:
        xx = x.unsqueeze(0).expand(K, *x.shape) if shared else x
        y = _conv2d_per_point_torch(xx, w0, dw, coeffs, b0, db, cdt, st, pa, di, groups)
    return y.to(out_dtype)
