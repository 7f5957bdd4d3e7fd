"""Interpolated-weight ops vs an independent fp64 reference that materialises every W_k.

On the CPU the Triton kernels run in the interpreter (conftest sets TRITON_INTERPRET=1) with the
interpreter's single launch configuration (kernels.launch.INTERPRETER_GEMM: 32x32x32 tiles, the
smallest GPU tiles); tests/test_kernel_launch_config.py forces every GPU configuration. With
KERNELS_TEST_DEVICE=cuda and TRITON_INTERPRET=0 (benchmarks/gpu_check.py) the same tests run the
compiled kernels on a GPU, autotuning included.

Errors are judged against |x|·(|W0| + Σ|c||D_j|) + |b0| + Σ|c||e_j| per output, a bound that
holds for the materialised and the linearity (shared-input) formulations alike, times a
tolerance scaled to the dtypes: fp32 accumulation, the operand rounding of the precision mode,
one rounding to fp16/bf16 on output.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import landscape_kernels as kernels
from landscape_kernels import (
    dispatch,
    interp_conv2d,
    interp_linear,
    interpolate_weights,
    interpolated_conv2d,
    interpolated_linear,
    launch,
)

DEVICE = torch.device(os.environ.get("KERNELS_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
if ON_GPU:  # the torch path on CUDA must be exact fp32 too (cuDNN convs default to TF32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

IMPLS = ["torch", "triton"]
F64 = torch.float64
# Relative-to-bound tolerances: fp32 accumulation, and one rounding to fp16/bf16 on output.
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.2e-2, F64: 1e-13}
# Added by the operand rounding of a precision mode: two operands, each rounded once (unit
# roundoff 2^-8 for bf16, 2^-11 for fp16; TF32 may truncate on a GPU: 2^-10 per operand).
OPERAND_TOL = {"bf16": 8e-3, "fp16": 1e-3, "tf32": 2.1e-3}


def tolerance(dtype: torch.dtype, precision: str = "exact") -> float:
    op = launch.operand_dtype(precision, dtype)
    extra = 0.0
    if op == torch.bfloat16:
        extra = OPERAND_TOL["bf16"]
    elif op == torch.float16:
        extra = OPERAND_TOL["fp16"]
    elif precision == "tf32" and ON_GPU:
        extra = OPERAND_TOL["tf32"]
    return TOL[dtype] + extra


def rand(*shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, dtype=F64) * scale).to(dtype).to(DEVICE)


def params(
    d: int, wshape: tuple[int, ...], K: int, *, bias: str = "both", scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    w0 = rand(*wshape, scale=scale, dtype=dtype)
    dw = rand(d, *wshape, scale=scale, dtype=dtype)
    coeffs = (torch.randn(K, d) * 1.5).to(DEVICE)
    out = wshape[0]
    b0 = rand(out, scale=scale, dtype=dtype) if bias in ("both", "b0") else None
    db = rand(d, out, scale=scale, dtype=dtype) if bias in ("both", "db") else None
    return w0, dw, coeffs, b0, db


def reference(op, x, w0, dw, coeffs, b0, db, shared: bool, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 on the CPU, one explicit W_k per point, torch.nn.functional op.
    Returns (y, error bound scale)."""
    cpu = lambda t: None if t is None else t.detach().cpu().to(F64)  # noqa: E731
    x, w0, dw, c, b0, db = cpu(x), cpu(w0), cpu(dw), cpu(coeffs), cpu(b0), cpu(db)
    ys, bounds = [], []
    for k in range(c.shape[0]):
        w = w0.clone()
        wabs = w0.abs()
        for j in range(dw.shape[0]):
            w = w + c[k, j] * dw[j]
            wabs = wabs + c[k, j].abs() * dw[j].abs()
        b = babs = None
        if b0 is not None or db is not None:
            b = b0.clone() if b0 is not None else torch.zeros(w0.shape[0], dtype=F64)
            babs = b.abs()
            for j in range(dw.shape[0] if db is not None else 0):
                b = b + c[k, j] * db[j]
                babs = babs + c[k, j].abs() * db[j].abs()
        xk = x if shared else x[k]
        ys.append(op(xk, w, b, **kw))
        bounds.append(op(xk.abs(), wabs, babs, **kw))
    return torch.stack(ys), torch.stack(bounds)


def assert_within(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, tol: float) -> None:
    assert y.shape == ref.shape, (y.shape, ref.shape)
    y = y.detach().cpu()
    assert torch.isfinite(y).all(), f"{(~torch.isfinite(y)).sum().item()} non-finite outputs"
    err = (y.to(F64) - ref.cpu()).abs()
    allowed = tol * bound.cpu() + 1e-30
    worst = (err / allowed).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error {worst:.2f}x over tolerance (max abs err {err.max().item():.3g})"


# ------------------------------------------------------------------ dispatch and precision API


def test_use_triton_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_IMPL, raising=False)
    t = rand(3)
    assert dispatch.use_triton(t, impl="torch") is False
    assert dispatch.use_triton(t, None) is ON_GPU  # None entries (absent biases) are ignored
    assert dispatch.use_triton(t, impl="triton") is True
    with pytest.raises(TypeError):
        dispatch.use_triton(t.double(), impl="triton")
    with pytest.raises(ValueError):
        dispatch.use_triton(t, impl="cuda")
    monkeypatch.setenv(dispatch.ENV_IMPL, "triton")
    assert dispatch.use_triton(t) is True
    assert dispatch.use_triton(t.double()) is False  # from the environment: fp64 keeps the torch path
    assert dispatch.use_triton(t, impl="torch") is False  # an explicit impl wins
    monkeypatch.setenv(dispatch.ENV_IMPL, "torch")
    assert dispatch.use_triton(t) is False
    monkeypatch.setenv(dispatch.ENV_IMPL, "gpu")
    with pytest.raises(ValueError):
        dispatch.use_triton(t)


def test_precision_api() -> None:
    # torch's backend flags are properties of a module object: monkeypatch cannot undo a setattr
    # there under current pytest, so the flag is set and restored by hand
    matmul = torch.backends.cuda.matmul
    old = matmul.allow_tf32
    try:
        matmul.allow_tf32 = True
        assert kernels.precision_from_torch_flags() == "tf32"
        matmul.allow_tf32 = False
        assert kernels.precision_from_torch_flags() == "exact"
    finally:
        matmul.allow_tf32 = old
    assert kernels.PRECISIONS == ("exact", "tf32", "bf16")
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    assert [launch.dot_mode(p, f32, False) for p in kernels.PRECISIONS] == ["ieee", "tf32", "bf16"]
    assert [launch.dot_mode(p, f16, False) for p in kernels.PRECISIONS] == ["ieee", "fp16", "bf16"]
    assert [launch.dot_mode(p, bf16, False) for p in kernels.PRECISIONS] == ["ieee", "bf16", "bf16"]
    assert launch.dot_mode("bf16", f32, True) == "bf16_rounded"
    w0, dw, c, _, _ = params(1, (3, 4), 2)
    with pytest.raises(ValueError):
        interpolated_linear(rand(5, 4), w0, dw, c, precision="fp8")
    cw0, cdw, cc, _, _ = params(1, (4, 3, 3, 3), 2)
    with pytest.raises(ValueError):
        interpolated_conv2d(rand(1, 3, 5, 5), cw0, cdw, cc, precision="half")


# ------------------------------------------------------------------ interpolate_weights


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,P", [(1, 1, 1), (3, 2, 997), (2, 1, 2500), (3, 2, 5), (2, 0, 7)])
def test_interpolate_weights_matches_fp64(impl: str, K: int, d: int, P: int) -> None:
    theta0, dirs = rand(P, scale=1e3), rand(d, P, scale=1e3)
    coeffs = torch.randn(K, d, dtype=F64)  # fp64 coefficients are accepted with fp32 weights
    out = interpolate_weights(theta0, coeffs, dirs, impl=impl)
    t0, dd = theta0.cpu().to(F64), dirs.cpu().to(F64)
    assert out.dtype == torch.float32
    assert_within(out, t0 + coeffs @ dd, t0.abs() + coeffs.abs() @ dd.abs(), TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpolate_weights_half_inputs(impl: str, dtype: torch.dtype) -> None:
    theta0, dirs = rand(333, dtype=dtype), rand(2, 333, dtype=dtype)
    coeffs = torch.randn(3, 2)
    out = interpolate_weights(theta0, coeffs, dirs, impl=impl)
    assert out.dtype == dtype
    t0, dd, c = theta0.cpu().to(F64), dirs.cpu().to(F64), coeffs.to(F64)
    ref, bound = t0 + c @ dd, t0.abs() + c.abs() @ dd.abs()  # on the rounded inputs
    assert_within(out, ref, bound, TOL[dtype])
    # fp32 output from half inputs: only fp32 rounding left.
    out32 = interpolate_weights(theta0, coeffs, dirs, out_dtype=torch.float32, impl=impl)
    assert_within(out32, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
def test_interpolate_weights_strided_inputs(impl: str) -> None:
    base = rand(40, 3)  # directions as a transposed (non-contiguous) view
    theta0 = rand(80)[::2]
    coeffs = torch.randn(6, 3)[::2]
    out = interpolate_weights(theta0, coeffs, base.t(), impl=impl)
    t0, dd, c = theta0.cpu().to(F64), base.t().cpu().to(F64), coeffs.to(F64)
    assert_within(out, t0 + c @ dd, t0.abs() + c.abs() @ dd.abs(), TOL[torch.float32])


def test_fp64_stays_fp64_on_torch_path_and_is_refused_by_triton() -> None:
    theta0, dirs, coeffs = rand(50, dtype=F64), rand(2, 50, dtype=F64), torch.randn(3, 2, dtype=F64).to(DEVICE)
    out = interpolate_weights(theta0, coeffs, dirs)
    assert out.dtype == F64
    assert_within(out, theta0 + coeffs @ dirs, theta0.abs() + coeffs.abs() @ dirs.abs(), TOL[F64])
    with pytest.raises(TypeError):
        interpolate_weights(theta0, coeffs, dirs, impl="triton")


def test_dispatch_and_argument_errors() -> None:
    theta0, dirs, coeffs = rand(10), rand(2, 10), torch.randn(3, 2)
    torch.testing.assert_close(
        interpolate_weights(theta0, coeffs, dirs),
        interpolate_weights(theta0, coeffs, dirs, impl="triton" if ON_GPU else "torch"), rtol=0, atol=0,
    )
    with pytest.raises(ValueError):
        interpolate_weights(theta0, coeffs, dirs, impl="cuda")
    with pytest.raises(ValueError):
        interpolate_weights(theta0, torch.randn(3, 1), dirs)
    with pytest.raises(ValueError):
        interpolate_weights(theta0, coeffs, rand(2, 11))
    w0, dw, c, b0, db = params(2, (4, 5), 3)
    with pytest.raises(ValueError):
        interpolated_linear(rand(2, 6, 5), w0, dw, c)  # K mismatch
    with pytest.raises(ValueError):
        interpolated_linear(rand(6, 4), w0, dw, c)  # in mismatch
    with pytest.raises(ValueError):
        interpolated_linear(rand(6, 5), w0, dw, c, b0, db[:1])
    cw0, cdw, cc, _, _ = params(2, (4, 3, 3, 3), 3)
    with pytest.raises(ValueError):
        interpolated_conv2d(rand(2, 5, 5, 5), cw0, cdw, cc)  # channel mismatch
    with pytest.raises(ValueError):
        interpolated_conv2d(rand(2, 3, 5, 5), cw0, cdw, cc, padding="same")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        interpolated_conv2d(rand(2, 3, 5, 5), cw0, cdw, cc, groups=3)


# ------------------------------------------------------------------ interpolated_linear

LINEAR_CASES = [
    # K, d, N, in, out, bias, weight scale
    (1, 1, 1, 1, 1, "both", 1.0),
    (3, 2, 20, 37, 29, "both", 1.0),
    (2, 1, 5, 70, 3, "b0", 1e3),
    (3, 2, 1, 17, 40, "db", 1.0),
    (3, 1, 13, 9, 33, "none", 1e3),
    (2, 3, 40, 67, 35, "both", 1e12),  # large magnitudes; several tiles and reduction steps
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,N,fin,fout,bias,scale", LINEAR_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_linear_matches_fp64(
    impl: str, K: int, d: int, N: int, fin: int, fout: int, bias: str, scale: float, shared: bool
) -> None:
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K, bias=bias, scale=scale)
    xscale = scale if scale > 1e6 else 10.0
    x = rand(N, fin, scale=xscale) if shared else rand(K, N, fin, scale=xscale)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert y.dtype == torch.float32
    assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("precision", ["exact", "tf32", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shared", [False, True])
def test_linear_precision_modes(impl: str, precision: str, dtype: torch.dtype, shared: bool) -> None:
    """Every precision on every input dtype, within its dtype-scaled tolerance of fp64."""
    K, d, N, fin, fout = 4, 2, 37, 45, 35  # K > d+1: the shared case goes by linearity
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K, dtype=dtype)
    x = rand(N, fin, dtype=dtype) if shared else rand(K, N, fin, dtype=dtype)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl, precision=precision)
    assert y.dtype == dtype
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert_within(y, ref, bound, tolerance(dtype, precision))


@pytest.mark.parametrize("precision", ["exact", "tf32", "bf16"])
@pytest.mark.parametrize("shared", [False, True])
def test_linear_torch_path_rounds_like_the_kernel(precision: str, shared: bool) -> None:
    """The torch path emulates the kernel's operand rounding: both agree to fp32 accumulation
    (TF32 on a GPU has no torch counterpart on the CPU)."""
    if precision == "tf32" and ON_GPU:
        pytest.skip("TF32 products differ from the torch path's fp32 products on a GPU")
    K, d, N, fin, fout = 4, 2, 37, 45, 35
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K)
    x = rand(N, fin) if shared else rand(K, N, fin)
    yt = interpolated_linear(x, w0, dw, coeffs, b0, db, impl="triton", precision=precision)
    yr = interpolated_linear(x, w0, dw, coeffs, b0, db, impl="torch", precision=precision)
    _, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert_within(yt, yr.cpu().to(F64), bound, 2 * TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d", [(3, 1), (3, 2), (1, 2)])  # linearity, and broadcast (K <= d+1)
def test_linear_shared_equals_per_point(impl: str, K: int, d: int) -> None:
    w0, dw, coeffs, b0, db = params(d, (21, 30), K)
    x = rand(17, 30)
    y_shared = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    y_point = interpolated_linear(x.expand(K, -1, -1), w0, dw, coeffs, b0, db, impl=impl)
    _, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, True)
    assert_within(y_shared, y_point.cpu().to(F64), bound, 2 * TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_non_contiguous_inputs(impl: str) -> None:
    K, d, N, fin, fout = 3, 2, 37, 40, 35
    x = rand(N, K, fin).transpose(0, 1)  # [K, N, in] view with K not outermost in memory
    w0 = rand(fin, fout).t()  # transposed base weight
    dw = rand(fout, d, fin).transpose(0, 1)  # directions interleaved in memory
    coeffs = (torch.randn(2 * K, d) * 1.5).to(DEVICE)[::2]
    b0 = rand(fout, 2)[:, 1]
    db = rand(fout, d).t()
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, False)
    assert_within(y, ref, bound, TOL[torch.float32])
    xs = rand(fin, N).t()  # shared input, transposed
    y = interpolated_linear(xs, w0, dw, coeffs, b0, db, impl=impl)
    ref, bound = reference(F.linear, xs, w0, dw, coeffs, b0, db, True)
    assert_within(y, ref, bound, TOL[torch.float32])


def test_linear_fp64_torch_path() -> None:
    w0, dw, coeffs, b0, db = params(2, (9, 8), 4, dtype=F64)
    for x, shared in ((rand(5, 8, dtype=F64), True), (rand(4, 5, 8, dtype=F64), False)):
        y = interpolated_linear(x, w0, dw, coeffs, b0, db)
        assert y.dtype == F64
        ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
        assert_within(y, ref, bound, TOL[F64])


# ------------------------------------------------------------------ interpolated_conv2d

CONV_CASES = [
    # K, d, N, I, O, H, W, kernel, stride, padding, dilation, groups, bias, scale
    (1, 1, 1, 1, 1, 1, 1, (1, 1), 1, 0, 1, 1, "both", 1.0),
    (3, 2, 2, 3, 5, 7, 9, (3, 3), 1, 1, 1, 1, "both", 1.0),
    (2, 1, 3, 4, 6, 6, 5, (3, 2), (2, 1), (1, 0), 1, 2, "b0", 1e3),
    (3, 2, 1, 6, 3, 9, 8, (3, 3), 2, 2, 2, 3, "db", 1.0),
    (3, 1, 2, 5, 7, 5, 5, (1, 1), 1, 0, 1, 1, "none", 1.0),
    (2, 2, 2, 10, 36, 6, 7, (3, 3), 1, 1, 1, 2, "both", 1e12),  # large; 2 channel tiles, 2 steps
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,N,I,O,H,W,kernel,stride,padding,dilation,groups,bias,scale", CONV_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_matches_fp64(
    impl, K, d, N, I, O, H, W, kernel, stride, padding, dilation, groups, bias, scale, shared
) -> None:
    w0, dw, coeffs, b0, db = params(d, (O, I // groups, *kernel), K, bias=bias, scale=scale)
    xscale = scale if scale > 1e6 else 10.0
    x = rand(N, I, H, W, scale=xscale) if shared else rand(K, N, I, H, W, scale=xscale)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, impl=impl, **kw)
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, **kw)
    assert y.dtype == torch.float32
    assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("precision", ["exact", "tf32", "bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_precision_modes(impl: str, precision: str, dtype: torch.dtype, shared: bool) -> None:
    K, d, N, I, O = 4, 2, 2, 6, 10
    w0, dw, coeffs, b0, db = params(d, (O, I // 2, 3, 3), K, dtype=dtype)
    x = rand(N, I, 6, 7, dtype=dtype) if shared else rand(K, N, I, 6, 7, dtype=dtype)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, padding=1, groups=2, impl=impl, precision=precision)
    assert y.dtype == dtype
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, padding=1, groups=2)
    assert_within(y, ref, bound, tolerance(dtype, precision))


@pytest.mark.parametrize("precision", ["exact", "bf16"])
@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_torch_path_rounds_like_the_kernel(precision: str, shared: bool) -> None:
    K, d = 4, 2
    w0, dw, coeffs, b0, db = params(d, (7, 5, 3, 3), K)
    x = rand(3, 5, 6, 7) if shared else rand(K, 3, 5, 6, 7)
    yt = interpolated_conv2d(x, w0, dw, coeffs, b0, db, padding=1, impl="triton", precision=precision)
    yr = interpolated_conv2d(x, w0, dw, coeffs, b0, db, padding=1, impl="torch", precision=precision)
    _, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, padding=1)
    assert_within(yt, yr.cpu().to(F64), bound, 2 * TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,groups", [(3, 1, 1), (3, 1, 2), (2, 2, 1)])
def test_conv2d_shared_equals_per_point(impl: str, K: int, d: int, groups: int) -> None:
    w0, dw, coeffs, b0, db = params(d, (6, 4 // groups, 3, 3), K)
    x = rand(2, 4, 7, 6)
    kw = dict(stride=1, padding=1, dilation=1, groups=groups)
    y_shared = interpolated_conv2d(x, w0, dw, coeffs, b0, db, impl=impl, **kw)
    y_point = interpolated_conv2d(x.expand(K, *x.shape), w0, dw, coeffs, b0, db, impl=impl, **kw)
    _, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, True, **kw)
    assert_within(y_shared, y_point.cpu().to(F64), bound, 2 * TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_non_contiguous_inputs(impl: str) -> None:
    K, d = 2, 2
    w0, _, coeffs, _, _ = params(d, (5, 3, 3, 3), K)
    dw = rand(5, d, 3, 3, 3).transpose(0, 1)  # non-contiguous directions
    b0, db = rand(5, 3)[:, 0], rand(5, d).t()
    x = rand(K * 2, 3, 6, 6).contiguous(memory_format=torch.channels_last).view(K, 2, 3, 6, 6)
    y = interpolated_conv2d(x, w0.transpose(2, 3), dw, coeffs, b0, db, padding=1, impl=impl)
    ref, bound = reference(F.conv2d, x, w0.transpose(2, 3), dw, coeffs, b0, db, False, padding=1)
    assert_within(y, ref, bound, TOL[torch.float32])
    xs = rand(2, 3, 12, 7)[:, :, ::2]  # shared input, strided rows
    y = interpolated_conv2d(xs, w0, dw, coeffs, b0, db, padding=1, impl=impl)
    ref, bound = reference(F.conv2d, xs, w0, dw, coeffs, b0, db, True, padding=1)
    assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shared", [False, True])
def test_no_directions_is_the_base_network(impl: str, shared: bool) -> None:
    """d = 0: every point is θ0 (exercises the empty direction loops and the d=0 combine)."""
    K = 3
    w0, dw, coeffs, b0, db = params(0, (7, 6), K)
    x = rand(5, 6) if shared else rand(K, 5, 6)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert_within(y, ref, bound, TOL[torch.float32])
    cw0, cdw, cc, cb0, cdb = params(0, (4, 3, 3, 3), K)
    xc = rand(2, 3, 5, 6) if shared else rand(K, 2, 3, 5, 6)
    yc = interpolated_conv2d(xc, cw0, cdw, cc, cb0, cdb, padding=1, impl=impl)
    ref, bound = reference(F.conv2d, xc, cw0, cdw, cc, cb0, cdb, shared, padding=1)
    assert_within(yc, ref, bound, TOL[torch.float32])


# The torch paths called directly, as benchmarks/interpolated_cpu.py calls them, in each of their
# branches: a shared input by linearity (K > d+1), a shared input broadcast (K <= d+1), per-point
# inputs; fp32 inputs (exact and bf16 operands) and fp64 inputs (fp64 accumulation, TOL[F64]).
NAIVE_MODES = [(torch.float32, "exact"), (torch.float32, "bf16"), (F64, "exact")]
NAIVE_LINEAR_CASES = [
    # K, d, N, in, out, bias, shared
    (5, 2, 7, 13, 11, "both", True),  # linearity
    (2, 3, 1, 1, 17, "db", True),  # broadcast; one row, one input feature
    (3, 1, 9, 31, 1, "b0", False),  # one output feature
    (4, 0, 3, 6, 5, "none", True),  # no directions
    (1, 4, 19, 23, 29, "both", False),
]
NAIVE_CONV_CASES = [
    # K, d, N, I, O, H, W, kernel, stride, padding, dilation, groups, bias, shared
    (5, 2, 2, 6, 9, 7, 5, (3, 2), (2, 1), (1, 2), (1, 2), 3, "both", True),  # linearity
    (2, 2, 1, 4, 6, 9, 11, (1, 3), 3, 0, 1, 2, "db", True),  # broadcast
    (3, 1, 3, 3, 5, 8, 6, (3, 3), 1, 1, 2, 1, "b0", False),
    (1, 3, 2, 2, 1, 5, 5, (5, 5), 1, 2, 1, 1, "none", False),  # kernel as large as the input
]


@pytest.mark.parametrize("dtype,precision", NAIVE_MODES)
@pytest.mark.parametrize("K,d,N,fin,fout,bias,shared", NAIVE_LINEAR_CASES)
def test_linear_naive_matches_fp64(dtype, precision, K, d, N, fin, fout, bias, shared) -> None:
    """interp_linear.naive against W_k = W0 + Σ_j c_kj·D_j materialised in fp64 and F.linear in fp64."""
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K, bias=bias, dtype=dtype)
    x = rand(N, fin, dtype=dtype) if shared else rand(K, N, fin, dtype=dtype)
    y = interp_linear.naive(x, w0, dw, coeffs, b0, db, precision=precision)
    assert y.dtype == dtype
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert_within(y, ref, bound, tolerance(dtype, precision))


@pytest.mark.parametrize("dtype,precision", NAIVE_MODES)
@pytest.mark.parametrize("K,d,N,I,O,H,W,kernel,stride,padding,dilation,groups,bias,shared", NAIVE_CONV_CASES)
def test_conv2d_naive_matches_fp64(
    dtype, precision, K, d, N, I, O, H, W, kernel, stride, padding, dilation, groups, bias, shared
) -> None:
    """interp_conv2d.naive (positional stride, padding, dilation, groups) against W_k materialised
    in fp64 and F.conv2d in fp64."""
    w0, dw, coeffs, b0, db = params(d, (O, I // groups, *kernel), K, bias=bias, dtype=dtype)
    x = rand(N, I, H, W, dtype=dtype) if shared else rand(K, N, I, H, W, dtype=dtype)
    y = interp_conv2d.naive(x, w0, dw, coeffs, b0, db, stride, padding, dilation, groups, precision=precision)
    assert y.dtype == dtype
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, stride=stride, padding=padding,
                           dilation=dilation, groups=groups)
    assert_within(y, ref, bound, tolerance(dtype, precision))


@pytest.mark.parametrize("precision", ["exact", "bf16"])
def test_batched_forward_through_the_kernels(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    """The engine's K-points path (landscape.evaluate.batched) with every layer on the Triton kernels
    (KERNELS_IMPL=triton: the path CUDA takes) against per-point forwards of materialised models."""
    from torch import nn
    from torch.func import functional_call

    from landscape.core.family import AffineFamily
    from landscape.core.params import ParamLayout, get_buffers
    from landscape.evaluate.batched import BatchedForward

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 5, 3, stride=2),
                          nn.ReLU(), nn.Flatten(), nn.Linear(5 * 3 * 3, 7)).eval().to(DEVICE)
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2.0)
    layout = ParamLayout.of(model)
    origin = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    dirs = rand(2, origin.numel(), scale=0.1)
    coeffs = (torch.randn(4, 2)).to(DEVICE)  # K=4 > d+1: the first layer goes by linearity
    x = rand(5, 3, 8, 8)
    fam = AffineFamily(origin, dirs, get_buffers(model), {})
    monkeypatch.setenv(dispatch.ENV_IMPL, "triton")
    fwd = BatchedForward(model, precision=precision)
    assert fwd.supports
    fwd.bind(fam, coeffs)
    got = fwd.forward(x).detach().cpu().to(F64)
    monkeypatch.setenv(dispatch.ENV_IMPL, "torch")
    torch_path = fwd.forward(x).detach().cpu().to(F64)
    want = []
    for k in range(coeffs.shape[0]):
        theta = origin + coeffs[k] @ dirs
        params = {n: layout.view(theta, n) for n, _ in model.named_parameters()}
        want.append(functional_call(model, (params, dict(model.named_buffers())), (x,)).detach().cpu().to(F64))
    want = torch.stack(want)
    scale = want.abs().max().item()
    tol = 2e-5 if precision == "exact" else 5e-2
    assert (got - want).abs().max().item() <= tol * scale
    assert (got - torch_path).abs().max().item() <= 2e-5 * scale  # the same rounding on both paths
