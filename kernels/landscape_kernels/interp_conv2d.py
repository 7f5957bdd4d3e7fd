"""interpolated_conv2d: y_k = conv2d(x_k, W0 + Σ_j c_kj·D_j, b0 + Σ_j c_kj·e_j), K points in one pass.

* ``naive``: the torch path (specification and CPU path): per-point inputs materialise the K
  weights and run one channels_last convolution per point into one output; a shared input (the
  first layer) needs only d+1 convolutions by linearity.
* ``_conv2d_kernel``: the Triton kernel (CUDA path): an implicit GEMM whose weight tile is formed
  in the load stage. Rows m = (image, oh, ow), columns = output channels of one conv group,
  reduction r = (in-channel within the group, kh, kw). Grid (row tiles x channel tiles in grouped
  order, conv groups, K points). Supports groups, stride, padding and dilation (int padding).
* ``interpolated_conv2d``: the public op; dispatches with ``kernels.dispatch.use_triton``.

Precision: ``precision=`` "exact" | "tf32" | "bf16" (kernels/launch.py); fp32 accumulation.

CPU formulations measured (2 cores, torch 2.14.1, fp32, K=9, d=2, N=250 images 32×32, conv
16→32 3×3 pad 1, best of 7): K channels_last convs into one output (this) 302 ms; grouped conv
with the points folded into groups 537 ms; stacked in-channels [X_k, c_k1·X_k, c_k2·X_k]
1182 ms. The shared-input path (3 convs + combine) 242 ms against 368 ms for K convs on the
broadcast input. benchmarks/interpolated_cpu.py keeps the alternatives and re-measures.

Forward-only: the Triton kernel has no backward, and the shared-input torch path combines with
``torch.add(..., out=)``, which autograd refuses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import (
    IntPair,
    check_bias,
    check_coeffs,
    check_int32,
    compute_dtype,
    interpolated_bias_torch,
    pair,
    rounded,
    rows_per_launch,
    span,
)
from .common import out_dtype as promoted
from .dispatch import HAS_TRITON, interpreting, use_triton
from .interp_weights import naive as interpolate_naive
from .interp_weights import triton_interpolate
from .launch import CONV2D_CONFIGS, INTERPRETER_GEMM, MAX_GRID_YZ, GemmConfig, check_precision, choose_launch, dot_mode

__all__ = ["conv_out_hw", "interpolated_conv2d", "naive"]

if HAS_TRITON:
    import triton
    import triton.language as tl

    from .tiles import dot, grouped_pids, interpolated_bias, interpolated_tile, operand

    @triton.jit
    def _conv2d_kernel(
        x_ptr, w0_ptr, dw_ptr, c_ptr, b0_ptr, db_ptr, y_ptr,
        NB, H, W, OH, OW, CG, OG, D,
        s_xk, s_xn, s_xc, s_xh, s_xw,
        s_dj,
        s_ck, s_cj,
        s_b, s_bj, s_bo,
        s_yk, s_yn, s_yc, s_yh, s_yw,
        KH: tl.constexpr, KW: tl.constexpr,
        SH: tl.constexpr, SW: tl.constexpr,
        PH: tl.constexpr, PW: tl.constexpr,
        DH: tl.constexpr, DW: tl.constexpr,
        HAS_B0: tl.constexpr, HAS_DB: tl.constexpr, DOT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # Weights are contiguous [O, CG, KH, KW], so r is also the flat offset inside a weight
        # row. s_xk == 0 broadcasts a shared input. Offsets within one point are int32 (the
        # launcher splits the images so they fit); the point's base pointer moves in 64 bits.
        M = NB * OH * OW
        pid_m, pid_o = grouped_pids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(OG, BLOCK_N), GROUP_M)
        grp = tl.program_id(1)
        k = tl.program_id(2).to(tl.int64)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_o = offs_o < OG
        n = offs_m // (OH * OW)
        rem = offs_m % (OH * OW)
        oh = rem // OW
        ow = rem % OW
        ih0 = oh * SH - PH
        iw0 = ow * SW - PW
        x_row = n * s_xn + ih0 * s_xh + iw0 * s_xw  # may be negative where padding: masked
        o_abs = grp * OG + offs_o
        RED = CG * KH * KW
        w_row = o_abs * RED
        x_base = x_ptr + k * s_xk + grp * CG * s_xc
        c_base = c_ptr + k * s_ck

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, RED, BLOCK_K):
            r = r0 + tl.arange(0, BLOCK_K)
            mask_r = r < RED
            ci = r // (KH * KW)
            rr = r % (KH * KW)
            dh = (rr // KW) * DH
            dw_ = (rr % KW) * DW
            ih = ih0[:, None] + dh[None, :]
            iw = iw0[:, None] + dw_[None, :]
            x_mask = (mask_m[:, None] & mask_r[None, :]
                      & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
            x_col = ci * s_xc + dh * s_xh + dw_ * s_xw
            xt = tl.load(x_base + (x_row[:, None] + x_col[None, :]), mask=x_mask, other=0.0)
            # Weight tile [BLOCK_K, BLOCK_N] = (W0 + Σ_j c_kj·D_j) in fp32 for these rows, never stored.
            w_mask = mask_r[:, None] & mask_o[None, :]
            w_off = w_row[None, :] + r[:, None]
            wt = interpolated_tile(w0_ptr, dw_ptr, w_off, w_off, w_mask, c_base, s_cj, s_dj, D)
            acc = dot(operand(xt, DOT), operand(wt, DOT), acc, DOT)

        acc += interpolated_bias(b0_ptr, db_ptr, o_abs, mask_o, c_base, s_b, s_bo, s_bj, s_cj, D,
                                 HAS_B0, HAS_DB, BLOCK_N)[None, :]

        y_off = (n * s_yn + oh * s_yh + ow * s_yw)[:, None] + o_abs[None, :] * s_yc
        tl.store(y_ptr + k * s_yk + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_o[None, :])

    _conv2d_autotuned = None

    def _autotuned():
        global _conv2d_autotuned
        if _conv2d_autotuned is None:
            _conv2d_autotuned = triton.autotune(
                [c.triton_config() for c in CONV2D_CONFIGS],
                key=["NB", "H", "W", "CG", "OG", "D", "KH", "KW", "SH", "SW", "DOT"],
            )(_conv2d_kernel)
        return _conv2d_autotuned


def conv_out_hw(h: int, w: int, kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
                dilation: tuple[int, int]) -> tuple[int, int]:
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


# ----------------------------------------------------------------------------- torch path


def _shared_torch(x, w0, dw, coeffs, b0, db, cdt, stride, padding, dilation, groups, precision, in_dt):
    """Shared input by linearity: d+1 convs (W0 with b0, D_j with e_j), then
    Y_k = Y0 + Σ_j c_kj·Y_j written point by point into one output.

    Returns [K, N, O, oh, ow] stored channels_last per point, like the per-point path. d+1
    separate convs rather than one conv with (d+1)·O outputs: the single wide conv measured
    ~2.5x slower, and separate channels_last outputs are already laid out as the per-point
    output rows, so the combine needs no transposing copy."""
    K = coeffs.shape[0]
    d, O = dw.shape[0], dw.shape[1]
    N = x.shape[0]
    xc = rounded(x, precision, in_dt, cdt).contiguous(memory_format=torch.channels_last)
    ys = []
    for j in range(d + 1):
        w_j = rounded(w0 if j == 0 else dw[j - 1], precision, in_dt, cdt)
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


def _per_point_torch(x, w0, dw, coeffs, b0, db, cdt, stride, padding, dilation, groups, precision, in_dt):
    """Per-point input: materialise W_k, then one channels_last conv per point, each copied into
    its slice of one output stored [K, N, oh, ow, O] in memory (a plain memcpy, and the next
    layer's x[k] is channels_last already)."""
    K = coeffs.shape[0]
    d, O = dw.shape[0], dw.shape[1]
    N, _, H, W = x.shape[1:]
    w = interpolate_naive(w0.reshape(-1), coeffs, dw.reshape(d, w0.numel()), cdt).view(K, *w0.shape)
    w = rounded(w, precision, in_dt, cdt)
    bias = interpolated_bias_torch(b0, db, coeffs, cdt)
    oh, ow = conv_out_hw(H, W, w0.shape[2], w0.shape[3], stride, padding, dilation)
    y = torch.empty(K, N, oh, ow, O, dtype=cdt, device=x.device).permute(0, 1, 4, 2, 3)
    for k in range(K):
        xk = rounded(x[k], precision, in_dt, cdt).contiguous(memory_format=torch.channels_last)
        yk = F.conv2d(xk, w[k], None if bias is None else bias[k], stride, padding, dilation, groups)
        y[k].copy_(yk)
    return y


def naive(x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
          b0: torch.Tensor | None = None, db: torch.Tensor | None = None,
          stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1, groups: int = 1, *,
          precision: str = "exact") -> torch.Tensor:
    """Torch path of :func:`interpolated_conv2d` (arguments already checked)."""
    st, pa, di = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    d = dw.shape[0]
    K = coeffs.shape[0]
    in_dt = promoted(x, w0, dw)
    cdt = compute_dtype(x, w0, dw, b0, db)
    coeffs = coeffs.to(x.device)
    if x.ndim == 4 and K > d + 1:
        y = _shared_torch(x, w0, dw, coeffs, b0, db, cdt, st, pa, di, groups, precision, in_dt)
    else:
        xx = x.unsqueeze(0).expand(K, *x.shape) if x.ndim == 4 else x
        y = _per_point_torch(xx, w0, dw, coeffs, b0, db, cdt, st, pa, di, groups, precision, in_dt)
    return y.to(in_dt)


# ----------------------------------------------------------------------------- Triton path


def triton_conv2d(x: torch.Tensor, w0: torch.Tensor, dw: torch.Tensor, coeffs: torch.Tensor,
                  b0: torch.Tensor | None, db: torch.Tensor | None, y: torch.Tensor,
                  stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int,
                  *, dot_mode: str, config: GemmConfig | None = None) -> None:
    """Launch the implicit-GEMM kernel into y [K', N, O, oh, ow]; x is [K', N, C, H, W] or
    [N, C, H, W] (broadcast). w0 and dw must be contiguous. config None: autotuned on a GPU,
    INTERPRETER_GEMM in the interpreter."""
    K = coeffs.shape[0]
    d, O, CG, KH, KW = dw.shape
    N, _, H, W = x.shape[-4:]
    OH, OW = y.shape[-2:]
    OG = O // groups
    if K == 0 or N * OH * OW == 0 or O == 0:
        return
    if groups > MAX_GRID_YZ:
        raise ValueError(f"the Triton conv takes at most {MAX_GRID_YZ} groups, got {groups}")
    if not (w0.is_contiguous() and dw.is_contiguous()):
        raise ValueError("the Triton conv takes contiguous weights (a weight row is its reduction axis)")
    kernel, meta = choose_launch(config, CONV2D_CONFIGS, INTERPRETER_GEMM, _conv2d_kernel, _autotuned)
    check_int32("the weights", w0, dw[0] if d > 0 else w0)
    per_x = x if x.ndim == 4 else x[0]
    rows = rows_per_launch(N, [(per_x.stride(0), span(per_x, 1)), (y.stride(1), span(y, 2))])
    sx = x.stride()
    for n0 in range(0, N, rows):  # images, so that offsets within a point fit int32
        nb = min(rows, N - n0)
        xn = x[n0:n0 + nb] if x.ndim == 4 else x[:, n0:n0 + nb]
        yn = y[:, n0:n0 + nb]
        m = nb * OH * OW
        for k0 in range(0, K, MAX_GRID_YZ):  # points on grid axis 2
            kk = min(MAX_GRID_YZ, K - k0)
            kernel[lambda cfg, m=m, kk=kk: (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(OG, cfg["BLOCK_N"]),
                                            groups, kk)](
                xn[k0:] if x.ndim == 5 else xn, w0, dw if d > 0 else w0, coeffs[k0:],
                b0 if b0 is not None else w0, db if db is not None else w0, yn[k0:],
                nb, H, W, OH, OW, CG, OG, d,
                sx[0] if x.ndim == 5 else 0, sx[-4], sx[-3], sx[-2], sx[-1],
                dw.stride(0) if d > 0 else 0,
                coeffs.stride(0), coeffs.stride(1),
                b0.stride(0) if b0 is not None else 0,
                db.stride(0) if db is not None else 0, db.stride(1) if db is not None else 0,
                y.stride(0), y.stride(1), y.stride(2), y.stride(3), y.stride(4),
                KH=KH, KW=KW, SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
                DH=dilation[0], DW=dilation[1],
                HAS_B0=b0 is not None, HAS_DB=db is not None and d > 0, DOT=dot_mode,
                **meta,
            )


# ----------------------------------------------------------------------------- public op


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
    precision: str = "exact",
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """y_k = conv2d(x_k, W0 + Σ_j c_kj·D_j, b0 + Σ_j c_kj·e_j) for k = 1..K.

    Args:
        x: per-point input [K, N, I, H, W], or a shared input [N, I, H, W] (the first layer).
        w0: base weight [O, I/groups, kh, kw]; dw: direction weights [d, O, I/groups, kh, kw].
        coeffs: [K, d]. b0: base bias [O] or None; db: direction biases [d, O] or None.
        stride, padding, dilation: ints or pairs of ints (as in F.conv2d; no padding strings).
        impl: None (auto: Triton for CUDA fp32/fp16/bf16, else torch; see kernels.dispatch),
            "torch" or "triton".
        precision: "exact" (fp32 products, the default), "tf32" or "bf16" (kernels/launch.py).
        config: force one GEMM launch configuration of the Triton kernel (tests, benchmarks).

    Returns y [K, N, O, oh, ow] in the promoted dtype of x, w0 and dw. On the torch path it is a
    view stored channels_last per point ([K, N, oh, ow, O] in memory), so
    ``y.reshape(K*N, O, oh, ow)`` and the next layer's ``y[k]`` need no copy; Triton returns a
    contiguous tensor. A shared input costs min(K, d+1) convolutions, not K.
    """
    check_precision(precision)
    if w0.ndim != 4 or dw.ndim != 5 or tuple(dw.shape[1:]) != tuple(w0.shape):
        raise ValueError(
            f"w0 must be [O, I/g, kh, kw] and dw [d, O, I/g, kh, kw]; got {tuple(w0.shape)}, {tuple(dw.shape)}"
        )
    d, O, CG, KH, KW = dw.shape
    check_coeffs(coeffs, d, "directions in dw")
    check_bias(b0, db, d, O)
    if groups < 1 or O % groups:
        raise ValueError(f"groups={groups} must divide the {O} output channels")
    K = coeffs.shape[0]
    if x.ndim == 5:
        if x.shape[0] != K:
            raise ValueError(f"per-point x must be [K={K}, N, I, H, W], got {tuple(x.shape)}")
    elif x.ndim != 4:
        raise ValueError(f"x must be [K, N, I, H, W] or [N, I, H, W], got {tuple(x.shape)}")
    if x.shape[-3] != CG * groups:
        raise ValueError(f"x has {x.shape[-3]} channels, weights expect {CG * groups}")
    st, pa, di = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    N, _, H, W = x.shape[-4:]
    oh, ow = conv_out_hw(H, W, KH, KW, st, pa, di)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"input {H}x{W} is smaller than the (dilated, padded) {KH}x{KW} kernel")
    if not use_triton(x, w0, dw, b0, db, impl=impl):
        return naive(x, w0, dw, coeffs, b0, db, st, pa, di, groups, precision=precision)

    in_dt = promoted(x, w0, dw)
    mode = dot_mode(precision, in_dt, interpreting())
    c = coeffs.to(x.device, torch.float32)
    w0c, dwc = w0.contiguous(), dw.contiguous()
    if x.ndim == 4 and K > d + 1:
        # d+1 plain convolutions (the kernel with d=0, biases folded in), then combine.
        y_all = torch.empty(d + 1, 1, N, O, oh, ow, dtype=torch.float32, device=x.device)
        one = torch.ones(1, 0, dtype=torch.float32, device=x.device)
        no_dirs = w0c.new_empty(0, *w0c.shape)
        for j in range(d + 1):
            w_j = w0c if j == 0 else dwc[j - 1]
            b_j = b0 if j == 0 else (db[j - 1] if db is not None else None)
            triton_conv2d(x, w_j, no_dirs, one, b_j, None, y_all[j], st, pa, di, groups,
                          dot_mode=mode, config=config)
        flat = y_all.view(d + 1, -1)
        return triton_interpolate(flat[0], c, flat[1:], in_dt).view(K, N, O, oh, ow)
    y = torch.empty(K, N, O, oh, ow, dtype=in_dt, device=x.device)
    triton_conv2d(x, w0c, dwc, c, b0, db, y, st, pa, di, groups, dot_mode=mode, config=config)
    return y
