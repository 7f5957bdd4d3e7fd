"""interpolate_weights: θ_k = θ0 + Σ_j c_kj·D_j for K points at once, as one [K, P] tensor.

* ``naive``: the torch path (specification and CPU path): one addmm, fp32 accumulation (fp64
  when an input is fp64).
* ``_interpolate_kernel``: the Triton kernel (CUDA path): grid (P-blocks, K), fp32 accumulation.
* ``interpolate_weights``: the public op; dispatches with ``kernels.dispatch.use_triton``.

The interpolated linear/conv ops use the kernel to combine the d+1 products of a shared input.
"""
from __future__ import annotations

import torch

from .common import check_coeffs, compute_dtype
from .common import out_dtype as promoted
from .dispatch import HAS_TRITON, use_triton
from .launch import INTERPRETER_POINTWISE, MAX_GRID_YZ, POINTWISE_CONFIGS, PointwiseConfig, choose_launch

__all__ = ["interpolate_weights", "naive"]

if HAS_TRITON:
    import triton
    import triton.language as tl

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
        offs = pid_p.to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask = offs < P
        acc = tl.load(theta_ptr + offs * s_t, mask=mask, other=0.0).to(tl.float32)
        # Pointers advance per direction: 64-bit pointer arithmetic, no i32 j·stride product.
        c_j = c_ptr + k * s_ck
        d_j = d_ptr
        d_off = offs * s_dp
        for j in range(0, D):
            acc += tl.load(c_j).to(tl.float32) * tl.load(d_j + d_off, mask=mask, other=0.0).to(tl.float32)
            c_j += s_cj
            d_j += s_dj
        tl.store(out_ptr + k * s_ok + offs * s_op, acc.to(out_ptr.dtype.element_ty), mask=mask)

    _interpolate_autotuned = None

    def _autotuned():
        global _interpolate_autotuned
        if _interpolate_autotuned is None:
            _interpolate_autotuned = triton.autotune(
                [c.triton_config() for c in POINTWISE_CONFIGS], key=["P", "D"]
            )(_interpolate_kernel)
        return _interpolate_autotuned


def naive(theta0: torch.Tensor, coeffs: torch.Tensor, directions: torch.Tensor,
          out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Torch path: one addmm, a single pass over the [K, P] output (memory-bound)."""
    out_dtype = out_dtype or promoted(theta0, directions)
    cdt = compute_dtype(theta0, directions)
    out = torch.addmm(theta0.to(cdt).unsqueeze(0), coeffs.to(theta0.device, cdt), directions.to(cdt))
    return out.to(out_dtype)


def triton_interpolate(theta0: torch.Tensor, coeffs: torch.Tensor, directions: torch.Tensor,
                       out_dtype: torch.dtype, config: PointwiseConfig | None = None,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """Launch the kernel into `out` ([K, P], any strides; new if None). config None: autotuned on
    a GPU, INTERPRETER_POINTWISE in the interpreter."""
    K, D = coeffs.shape
    P = theta0.shape[0]
    c = coeffs.to(device=theta0.device, dtype=torch.float32)
    if out is None:
        out = torch.empty(K, P, dtype=out_dtype, device=theta0.device)
    if K == 0 or P == 0:
        return out
    d_arg = directions if D > 0 else theta0  # any valid pointer; never read when D == 0
    s_dj, s_dp = (directions.stride(0), directions.stride(1)) if D > 0 else (0, 0)
    kernel, meta = choose_launch(config, POINTWISE_CONFIGS, INTERPRETER_POINTWISE, _interpolate_kernel, _autotuned)
    for k0 in range(0, K, MAX_GRID_YZ):  # points on grid axis 1
        kk = min(MAX_GRID_YZ, K - k0)
        kernel[lambda m, kk=kk: (triton.cdiv(P, m["BLOCK_P"]), kk)](
            theta0, c[k0:], d_arg, out[k0:],
            P, D,
            theta0.stride(0), c.stride(0), c.stride(1), s_dj, s_dp, out.stride(0), out.stride(1),
            **meta,
        )
    return out


def interpolate_weights(
    theta0: torch.Tensor,
    coeffs: torch.Tensor,
    directions: torch.Tensor,
    *,
    out_dtype: torch.dtype | None = None,
    impl: str | None = None,
    config: PointwiseConfig | None = None,
) -> torch.Tensor:
    """θ_k = θ0 + Σ_j coeffs[k, j]·directions[j] for every k, as one [K, P] tensor.

    Args:
        theta0: base vector [P].
        coeffs: coefficients [K, d] (any float dtype; moved to theta0's device).
        directions: directions [d, P].
        out_dtype: dtype of the result; default: promotion of theta0 and directions.
        impl: None (auto; see kernels.dispatch), "torch" or "triton".
        config: force one launch configuration of the Triton kernel (tests, benchmarks).

    Accumulates in fp32 (fp64 on the torch path when an input is fp64).
    """
    if theta0.ndim != 1 or directions.ndim != 2 or directions.shape[1] != theta0.shape[0]:
        raise ValueError(
            f"theta0 must be [P] and directions [d, P]; got {tuple(theta0.shape)} and {tuple(directions.shape)}"
        )
    check_coeffs(coeffs, directions.shape[0], "rows of directions")
    out_dtype = out_dtype or promoted(theta0, directions)
    coeffs = coeffs.to(theta0.device)
    if use_triton(theta0, directions, impl=impl):
        return triton_interpolate(theta0, coeffs, directions, out_dtype, config)
    return naive(theta0, coeffs, directions, out_dtype)
