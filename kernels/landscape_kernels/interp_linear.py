"""interpolated_linear: y_k = x_k·W_kᵀ + b_k with W_k = W0 + Σ_j c_kj·D_j, K points in one pass.

* ``naive``: the torch path (specification and CPU path), vectorised: per-point inputs
  materialise the K weights and run one batched matmul; a shared input (the first layer) needs
  only d+1 products by linearity, Y_k = X·W0ᵀ + Σ_j c_kj·X·D_jᵀ.
* ``_linear_kernel``: the Triton kernel (CUDA path): a tiled GEMM whose weight tile is formed in
  the load stage, so the K weight copies never exist in memory. Grid (row tiles x output tiles
  in grouped order, K points); one reduction loop over the input features.
* ``interpolated_linear``: the public op; dispatches with ``kernels.dispatch.use_triton``.

Precision: ``precision=`` "exact" | "tf32" | "bf16" (kernels/launch.py). Every path accumulates
in fp32 (fp64 when an input is fp64, torch path only).

CPU formulations measured (CPU, 2 cores, torch 2.14.1, fp32, K=9, d=2, N=1000, 512→256, best of
7): materialise W_k + bmm (this) 18.8 ms; stacked [X_k, c_k1·X_k, c_k2·X_k] @ [W0 D1 D2]ᵀ
101.7 ms; K plain F.linear calls given W_k 20.2 ms. benchmarks/interpolated_cpu.py re-measures.
"""
from __future__ import annotations

import torch

from .common import (
    augmented,
    check_bias,
    check_coeffs,
    check_int32,
    compute_dtype,
    interpolated_bias_torch,
    rounded,
    rows_per_launch,
)
from .common import out_dtype as promoted
from .dispatch import HAS_TRITON, interpreting, use_triton
from .interp_weights import naive as interpolate_naive
from .interp_weights import triton_interpolate
from .launch import INTERPRETER_GEMM, LINEAR_CONFIGS, MAX_GRID_YZ, GemmConfig, check_precision, choose_launch, dot_mode

__all__ = ["interpolated_linear", "naive"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .tiles import dot, grouped_pids, interpolated_bias, interpolated_tile, operand

    @triton.jit
    def _linear_kernel(
        x_ptr, w0_ptr, dw_ptr, c_ptr, b0_ptr, db_ptr, y_ptr,
        N, IN, OUT, D,
        s_xk, s_xn, s_xi,
        s_wo, s_wi,
        s_dj, s_do, s_di,
        s_ck, s_cj,
        s_b, s_bj, s_bo,
        s_yk, s_yn, s_yo,
        HAS_B0: tl.constexpr, HAS_DB: tl.constexpr, DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Grid (row tiles x output tiles, grouped; K points). s_xk == 0 broadcasts a shared input.
        # Offsets within one point are int32 (the launcher splits the rows so they fit); the
        # point's base pointer moves in 64 bits.
        pid_m, pid_n = grouped_pids(tl.program_id(0), tl.cdiv(N, BLOCK_M), tl.cdiv(OUT, BLOCK_N), GROUP_M)
        k = tl.program_id(1).to(tl.int64)
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
            )
            # Weight tile [BLOCK_K, BLOCK_N] = (W0 + Σ_j c_kj·D_j)ᵀ in fp32, formed here, never stored.
            w_mask = mask_i[:, None] & mask_n[None, :]
            w_off = offs_n[None, :] * s_wo + ii[:, None] * s_wi
            d_off = offs_n[None, :] * s_do + ii[:, None] * s_di
            wt = interpolated_tile(w0_ptr, dw_ptr, w_off, d_off, w_mask, c_base, s_cj, s_dj, D)
            acc = dot(operand(xt, DOT), operand(wt, DOT), acc, DOT)

        acc += interpolated_bias(b0_ptr, db_ptr, offs_n, mask_n, c_base, s_b, s_bo, s_bj, s_cj, D,
                                 HAS_B0, HAS_DB, BLOCK_N)[None, :]

        y_ptrs = y_ptr + k * s_yk + offs_m[:, None] * s_yn + offs_n[None, :] * s_yo
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])

    _linear_autotuned = None

    def _autotuned():
        global _linear_autotuned
        if _linear_autotuned is None:
            _linear_autotuned = triton.autotune(
                [c.triton_config() for c in LINEAR_CONFIGS], key=["N", "IN", "OUT", "D", "DOT"]
            )(_linear_kernel)
        return _linear_autotuned


# ----------------------------------------------------------------------------- torch path


def _shared_torch(x, w0, dw, coeffs, b0, db, cdt, precision, in_dt):
    """Shared input by linearity: one matmul against [W0; D_1; ...; D_d], then combine."""
    d, out, inp = dw.shape
    N = x.shape[0]
    w_all = rounded(torch.cat([w0.unsqueeze(0), dw], 0), precision, in_dt, cdt).reshape((d + 1) * out, inp)
    y_all = rounded(x, precision, in_dt, cdt) @ w_all.t()  # [N, (d+1)·out]: d+1 products whatever K is
    y_all = y_all.view(N, d + 1, out).transpose(0, 1).reshape(d + 1, N * out)
    y = (augmented(coeffs, cdt) @ y_all).view(-1, N, out)
    bias = interpolated_bias_torch(b0, db, coeffs, cdt)
    if bias is not None:
        y += bias.unsqueeze(1)
    return y


def _per_point_torch(x, w0, dw, coeffs, b0, db, cdt, precision, in_dt):
    """Per-point input: materialise W_k, then one batched matmul (K·out·in writes, small next to
    the K·N·out·in products)."""
    K = coeffs.shape[0]
    d, out, inp = dw.shape
    w = interpolate_naive(w0.reshape(-1), coeffs, dw.reshape(d, w0.numel()), cdt).view(K, out, inp)
    y = torch.bmm(rounded(x, precision, in_dt, cdt), rounded(w, precision, in_dt, cdt).transpose(1, 2))
    bias = interpolated_bias_torch(b0, db, coeffs, cdt)
    if bias is not None:
        y += bias.unsqueeze(1)  # in place: baddbmm measured slower than bmm + add_
    return y


def naive(x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
          b0: torch.Tensor | None = None, db: torch.Tensor | None = None, *,
          precision: str = "exact") -> torch.Tensor:
    """Torch path of :func:`interpolated_linear` (arguments already checked)."""
    d = dw.shape[0]
    K = coeffs.shape[0]
    in_dt = promoted(x, w0, dw)
    cdt = compute_dtype(x, w0, dw, b0, db)
    coeffs = coeffs.to(x.device)
    if x.ndim == 2 and K > d + 1:  # linearity pays off only with more points than products
        y = _shared_torch(x, w0, dw, coeffs, b0, db, cdt, precision, in_dt)
    else:
        xx = x.unsqueeze(0).expand(K, -1, -1) if x.ndim == 2 else x
        y = _per_point_torch(xx, w0, dw, coeffs, b0, db, cdt, precision, in_dt)
    return y.to(in_dt)


# ----------------------------------------------------------------------------- Triton path


def triton_linear(x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
                  b0: torch.Tensor | None, db: torch.Tensor | None, y: torch.Tensor, *,
                  dot_mode: str, config: GemmConfig | None = None) -> None:
    """Launch the fused kernel into y [K', N, out]; x is [K', N, in] or [N, in] (broadcast).
    config None: autotuned on a GPU, INTERPRETER_GEMM in the interpreter."""
    K = coeffs.shape[0]
    d, out, inp = dw.shape
    N = x.shape[-2]
    if K == 0 or N == 0 or out == 0:
        return
    kernel, meta = choose_launch(config, LINEAR_CONFIGS, INTERPRETER_GEMM, _linear_kernel, _autotuned)
    dw_arg = dw if d > 0 else w0  # any valid pointer when there are no directions
    s_d = dw.stride() if d > 0 else (0, 0, 0)
    check_int32("the weights", w0, dw[0] if d > 0 else w0)
    rows = rows_per_launch(N, [(x.stride(-2), (inp - 1) * x.stride(-1)), (y.stride(1), (out - 1) * y.stride(2))])
    for n0 in range(0, N, rows):  # rows, so that offsets within a point fit int32
        nr = min(rows, N - n0)
        xn, yn = x[..., n0:n0 + nr, :], y[:, n0:n0 + nr]
        for k0 in range(0, K, MAX_GRID_YZ):  # points on grid axis 1
            kk = min(MAX_GRID_YZ, K - k0)
            kernel[lambda cfg, nr=nr, kk=kk: (triton.cdiv(nr, cfg["BLOCK_M"]) * triton.cdiv(out, cfg["BLOCK_N"]), kk)](
                xn[k0:] if x.ndim == 3 else xn, w0, dw_arg, coeffs[k0:],
                b0 if b0 is not None else w0, db if db is not None else w0, yn[k0:],
                nr, inp, out, d,
                x.stride(0) if x.ndim == 3 else 0, x.stride(-2), x.stride(-1),
                w0.stride(0), w0.stride(1),
                s_d[0], s_d[1], s_d[2],
                coeffs.stride(0), coeffs.stride(1),
                b0.stride(0) if b0 is not None else 0,
                db.stride(0) if db is not None else 0, db.stride(1) if db is not None else 0,
                y.stride(0), y.stride(1), y.stride(2),
                HAS_B0=b0 is not None, HAS_DB=db is not None and d > 0, DOT=dot_mode,
                **meta,
            )


def _shared_triton(x, w0, dw, coeffs, b0, db, out_dtype, dot_mode, config):
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
        triton_linear(x, w_j, no_dirs, one, b_j, None, y_all[j], dot_mode=dot_mode, config=config)
    flat = y_all.view(d + 1, N * out)
    return triton_interpolate(flat[0], coeffs, flat[1:], out_dtype).view(-1, N, out)


# ----------------------------------------------------------------------------- public op


def interpolated_linear(
    x: torch.Tensor,
    w0: torch.Tensor,
    dw: torch.Tensor,
    coeffs: torch.Tensor,
    b0: torch.Tensor | None = None,
    db: torch.Tensor | None = None,
    *,
    impl: str | None = None,
    precision: str = "exact",
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """y_k = x_k·(W0 + Σ_j c_kj·D_j)ᵀ + (b0 + Σ_j c_kj·e_j) for k = 1..K.

    Args:
        x: per-point input [K, N, in], or a shared input [N, in] (the first layer).
        w0: base weight [out, in]; dw: direction weights [d, out, in].
        coeffs: [K, d]. b0: base bias [out] or None; db: direction biases [d, out] or None.
        impl: None (auto: Triton for CUDA fp32/fp16/bf16, else torch; see kernels.dispatch),
            "torch" or "triton".
        precision: "exact" (fp32 products, the default), "tf32" or "bf16" (kernels/launch.py).
        config: force one GEMM launch configuration of the Triton kernel (tests, benchmarks).

    Returns y [K, N, out] in the promoted dtype of x, w0 and dw. A shared input costs
    min(K, d+1) products (linearity), not K.
    """
    check_precision(precision)
    if w0.ndim != 2 or dw.ndim != 3 or tuple(dw.shape[1:]) != tuple(w0.shape):
        raise ValueError(f"w0 must be [out, in] and dw [d, out, in]; got {tuple(w0.shape)}, {tuple(dw.shape)}")
    d, out, inp = dw.shape
    check_coeffs(coeffs, d, "directions in dw")
    check_bias(b0, db, d, out)
    K = coeffs.shape[0]
    if x.ndim == 3:
        if x.shape[0] != K or x.shape[2] != inp:
            raise ValueError(f"per-point x must be [K={K}, N, in={inp}], got {tuple(x.shape)}")
    elif x.ndim == 2:
        if x.shape[1] != inp:
            raise ValueError(f"shared x must be [N, in={inp}], got {tuple(x.shape)}")
    else:
        raise ValueError(f"x must be [K, N, in] or [N, in], got {tuple(x.shape)}")
    if not use_triton(x, w0, dw, b0, db, impl=impl):
        return naive(x, w0, dw, coeffs, b0, db, precision=precision)

    in_dt = promoted(x, w0, dw)
    mode = dot_mode(precision, in_dt, interpreting())
    c = coeffs.to(x.device, torch.float32)
    if x.ndim == 2 and K > d + 1:
        return _shared_triton(x, w0, dw, c, b0, db, in_dt, mode, config)
    y = torch.empty(K, x.shape[-2], out, dtype=in_dt, device=x.device)
    triton_linear(x, w0, dw, c, b0, db, y, dot_mode=mode, config=config)
    return y
