"""Host-side helpers shared by the interpolated-weight ops: argument checks, dtypes, and the
torch path's emulation of the kernels' operand rounding."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .launch import operand_dtype

IntPair = int | Sequence[int]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp64 if any input is fp64, else fp32: half-precision inputs accumulate in fp32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def out_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dt = tensors[0].dtype
    for t in tensors[1:]:
        dt = torch.promote_types(dt, t.dtype)
    return dt


def pair(v: IntPair, name: str) -> tuple[int, int]:
    if isinstance(v, str):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def check_coeffs(coeffs: torch.Tensor, d: int, what: str) -> None:
    if coeffs.ndim != 2 or coeffs.shape[1] != d:
        raise ValueError(f"coeffs must be [K, d] with d={d} ({what}), got {tuple(coeffs.shape)}")


def check_bias(b0: torch.Tensor | None, db: torch.Tensor | None, d: int, out: int) -> None:
    if b0 is not None and tuple(b0.shape) != (out,):
        raise ValueError(f"b0 must be [{out}], got {tuple(b0.shape)}")
    if db is not None and tuple(db.shape) != (d, out):
        raise ValueError(f"db must be [{d}, {out}], got {tuple(db.shape)}")


def rounded(t: torch.Tensor, precision: str, in_dtype: torch.dtype, cdt: torch.dtype) -> torch.Tensor:
    """`t` in the compute dtype after the rounding the kernels apply to matmul operands
    (landscape_kernels/launch.py): round to nearest in the operand dtype, then back to `cdt`."""
    op = operand_dtype(precision, in_dtype)
    if op is not None:
        t = t.to(op)
    return t.to(cdt)


def interpolated_bias_torch(
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


def augmented(coeffs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[1, c_k1, ..., c_kd] per row: Y_k = A_k · [Y0; Y1; ...; Yd] in one matmul."""
    ones = torch.ones(coeffs.shape[0], 1, dtype=dtype, device=coeffs.device)
    return torch.cat([ones, coeffs.to(dtype)], dim=1)


# In-point offsets in the GEMM kernels are int32 (64-bit pointer tiles cost registers); only the
# per-point base pointer moves in 64-bit arithmetic. Launchers split the rows so that every
# tensor's span within one point fits.
INT32_SPAN = 2**31 - 1


def span(t: torch.Tensor, skip: int = 0) -> int:
    """Largest element offset in `t` from its start, over dims `skip`.. (strides are >= 0)."""
    return sum((n - 1) * s for n, s in zip(t.shape[skip:], t.stride()[skip:]) if n > 0)


def rows_per_launch(n: int, parts: Sequence[tuple[int, int]]) -> int:
    """Most rows (<= n) one launch may take so that, for each (row stride, span of one row),
    (rows - 1)·stride + span fits in int32."""
    best = max(n, 1)
    for stride, inner in parts:
        if inner > INT32_SPAN:
            raise ValueError(f"one row spans {inner} elements: more than the kernels' int32 offsets allow")
        if stride > 0:
            best = min(best, (INT32_SPAN - inner) // stride + 1)
    return best


def check_int32(what: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if span(t) > INT32_SPAN:
            raise ValueError(f"{what} spans {span(t)} elements: more than the kernels' int32 offsets allow")
