"""Interpolated-weight ops vs an independent fp64 reference that materialises every W_k.

The Triton kernels run in the interpreter (conftest sets TRITON_INTERPRET=1), so the
Triton shapes stay small (K<=3, N<=20, channels<=40). Errors are judged against
|x|·(|W0| + Σ|c||D_j|) + |b0| + Σ|c||e_j| per output, a bound that holds for both the
materialised and the linearity (shared-input) formulations.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import interpolated as ki
from kernels.interpolated import interpolate_weights, interpolated_conv2d, interpolated_linear

IMPLS = ["torch", "triton"]
F64 = torch.float64
# Relative-to-bound tolerances: fp32 accumulation, and one rounding to fp16/bf16 on output.
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.2e-2, torch.float64: 1e-13}


def _rand(*shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(*shape, dtype=F64) * scale).to(dtype)


def _params(
    d: int, wshape: tuple[int, ...], K: int, *, bias: str = "both", scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    w0 = _rand(*wshape, scale=scale, dtype=dtype)
    dw = _rand(d, *wshape, scale=scale, dtype=dtype)
    coeffs = torch.randn(K, d) * 1.5
    out = wshape[0]
    b0 = _rand(out, scale=scale, dtype=dtype) if bias in ("both", "b0") else None
    db = _rand(d, out, scale=scale, dtype=dtype) if bias in ("both", "db") else None
    return w0, dw, coeffs, b0, db


def _reference(op, x, w0, dw, coeffs, b0, db, shared: bool, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64, one explicit W_k per point, torch.nn.functional op. Returns (y, error bound scale)."""
    x, w0, dw, c = x.to(F64), w0.to(F64), dw.to(F64), coeffs.to(F64)
    b0 = None if b0 is None else b0.to(F64)
    db = None if db is None else db.to(F64)
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


def _assert_within(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, tol: float) -> None:
    assert y.shape == ref.shape, (y.shape, ref.shape)
    assert torch.isfinite(y).all()
    err = (y.to(F64) - ref).abs()
    allowed = tol * bound + 1e-30
    worst = (err / allowed).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error {worst:.2f}x over tolerance (max abs err {err.max().item():.3g})"


# ------------------------------------------------------------------ interpolate_weights


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,P", [(1, 1, 1), (3, 2, 997), (2, 1, 1000), (3, 2, 5), (2, 0, 7)])
def test_interpolate_weights_matches_fp64(impl: str, K: int, d: int, P: int) -> None:
    theta0, dirs = _rand(P, scale=1e3), _rand(d, P, scale=1e3)
    coeffs = torch.randn(K, d, dtype=F64)  # fp64 coefficients are accepted with fp32 weights
    out = interpolate_weights(theta0, coeffs, dirs, impl=impl)
    ref = theta0.to(F64) + coeffs @ dirs.to(F64)
    bound = theta0.to(F64).abs() + coeffs.abs() @ dirs.to(F64).abs()
    assert out.dtype == torch.float32
    _assert_within(out, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_interpolate_weights_half_inputs(impl: str, dtype: torch.dtype) -> None:
    theta0, dirs = _rand(333, dtype=dtype), _rand(2, 333, dtype=dtype)
    coeffs = torch.randn(3, 2)
    out = interpolate_weights(theta0, coeffs, dirs, impl=impl)
    assert out.dtype == dtype
    ref = theta0.to(F64) + coeffs.to(F64) @ dirs.to(F64)  # on the rounded inputs
    bound = theta0.to(F64).abs() + coeffs.to(F64).abs() @ dirs.to(F64).abs()
    _assert_within(out, ref, bound, TOL[dtype])
    # fp32 output from half inputs: only fp32 rounding left.
    out32 = interpolate_weights(theta0, coeffs, dirs, out_dtype=torch.float32, impl=impl)
    _assert_within(out32, ref, bound, TOL[torch.float32])


def test_interpolate_weights_strided_inputs_triton() -> None:
    base = _rand(40, 3)  # directions as a transposed (non-contiguous) view
    theta0 = _rand(80)[::2]
    coeffs = torch.randn(6, 3)[::2]
    out = interpolate_weights(theta0, coeffs, base.t(), impl="triton")
    ref = theta0.to(F64) + coeffs.to(F64) @ base.t().to(F64)
    bound = theta0.to(F64).abs() + coeffs.to(F64).abs() @ base.t().to(F64).abs()
    _assert_within(out, ref, bound, TOL[torch.float32])


def test_fp64_stays_fp64_on_torch_path_and_is_refused_by_triton() -> None:
    theta0, dirs, coeffs = _rand(50, dtype=F64), _rand(2, 50, dtype=F64), torch.randn(3, 2, dtype=F64)
    out = interpolate_weights(theta0, coeffs, dirs)
    assert out.dtype == F64
    _assert_within(out, theta0 + coeffs @ dirs, theta0.abs() + coeffs.abs() @ dirs.abs(), TOL[F64])
    with pytest.raises(TypeError):
        interpolate_weights(theta0, coeffs, dirs, impl="triton")


def test_dispatch_and_argument_errors() -> None:
    theta0, dirs, coeffs = _rand(10), _rand(2, 10), torch.randn(3, 2)
    torch.testing.assert_close(
        interpolate_weights(theta0, coeffs, dirs), interpolate_weights(theta0, coeffs, dirs, impl="torch"),
        rtol=0, atol=0,
    )
    with pytest.raises(ValueError):
        interpolate_weights(theta0, coeffs, dirs, impl="cuda")
    with pytest.raises(ValueError):
        interpolate_weights(theta0, torch.randn(3, 1), dirs)
    with pytest.raises(ValueError):
        interpolate_weights(theta0, coeffs, _rand(2, 11))
    w0, dw, c, b0, db = _params(2, (4, 5), 3)
    with pytest.raises(ValueError):
        interpolated_linear(_rand(2, 6, 5), w0, dw, c)  # K mismatch
    with pytest.raises(ValueError):
        interpolated_linear(_rand(6, 4), w0, dw, c)  # in mismatch
    with pytest.raises(ValueError):
        interpolated_linear(_rand(6, 5), w0, dw, c, b0, db[:1])
    cw0, cdw, cc, _, _ = _params(2, (4, 3, 3, 3), 3)
    with pytest.raises(ValueError):
        interpolated_conv2d(_rand(2, 5, 5, 5), cw0, cdw, cc)  # channel mismatch
    with pytest.raises(ValueError):
        interpolated_conv2d(_rand(2, 3, 5, 5), cw0, cdw, cc, padding="same")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        interpolated_conv2d(_rand(2, 3, 5, 5), cw0, cdw, cc, groups=3)


# ------------------------------------------------------------------ interpolated_linear

LINEAR_CASES = [
    # K, d, N, in, out, bias, weight scale
    (1, 1, 1, 1, 1, "both", 1.0),
    (3, 2, 20, 37, 29, "both", 1.0),
    (2, 1, 5, 40, 3, "b0", 1e3),
    (3, 2, 1, 17, 40, "db", 1.0),
    (3, 1, 13, 9, 33, "none", 1e3),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,N,fin,fout,bias,scale", LINEAR_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_linear_matches_fp64(
    impl: str, K: int, d: int, N: int, fin: int, fout: int, bias: str, scale: float, shared: bool
) -> None:
    w0, dw, coeffs, b0, db = _params(d, (fout, fin), K, bias=bias, scale=scale)
    x = _rand(N, fin, scale=10.0) if shared else _rand(K, N, fin, scale=10.0)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    ref, bound = _reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert y.dtype == torch.float32
    _assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shared", [False, True])
def test_linear_half_inputs(impl: str, dtype: torch.dtype, shared: bool) -> None:
    K, d, N, fin, fout = 3, 1, 11, 19, 23  # K > d+1: the shared case goes by linearity
    w0, dw, coeffs, b0, db = _params(d, (fout, fin), K, dtype=dtype)
    x = _rand(N, fin, dtype=dtype) if shared else _rand(K, N, fin, dtype=dtype)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    assert y.dtype == dtype
    ref, bound = _reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    _assert_within(y, ref, bound, TOL[dtype])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d", [(3, 1), (3, 2), (1, 2)])  # linearity, and broadcast (K <= d+1)
def test_linear_shared_equals_per_point(impl: str, K: int, d: int) -> None:
    w0, dw, coeffs, b0, db = _params(d, (21, 30), K)
    x = _rand(17, 30)
    y_shared = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    y_point = interpolated_linear(x.expand(K, -1, -1), w0, dw, coeffs, b0, db, impl=impl)
    _, bound = _reference(F.linear, x, w0, dw, coeffs, b0, db, True)
    _assert_within(y_shared, y_point.to(F64), bound, 2 * TOL[torch.float32])


def test_linear_strided_input_triton() -> None:
    K, d = 3, 2
    w0, dw, coeffs, b0, db = _params(d, (12, 10), K)
    x = _rand(7, K, 10).transpose(0, 1)  # [K, N, in] view with K not outermost in memory
    w0t = _rand(10, 12).t()  # non-contiguous base weight
    y = interpolated_linear(x, w0t, dw, coeffs, b0, db, impl="triton")
    ref, bound = _reference(F.linear, x, w0t, dw, coeffs, b0, db, False)
    _assert_within(y, ref, bound, TOL[torch.float32])


def test_linear_fp64_torch_path() -> None:
    w0, dw, coeffs, b0, db = _params(2, (9, 8), 4, dtype=F64)
    for x, shared in ((_rand(5, 8, dtype=F64), True), (_rand(4, 5, 8, dtype=F64), False)):
        y = interpolated_linear(x, w0, dw, coeffs, b0, db)
        assert y.dtype == F64
        ref, bound = _reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
        _assert_within(y, ref, bound, TOL[F64])


# ------------------------------------------------------------------ interpolated_conv2d

CONV_CASES = [
    # K, d, N, I, O, H, W, kernel, stride, padding, dilation, groups, bias, scale
    (1, 1, 1, 1, 1, 1, 1, (1, 1), 1, 0, 1, 1, "both", 1.0),
    (3, 2, 2, 3, 5, 7, 9, (3, 3), 1, 1, 1, 1, "both", 1.0),
    (2, 1, 3, 4, 6, 6, 5, (3, 2), (2, 1), (1, 0), 1, 2, "b0", 1e3),
    (3, 2, 1, 6, 3, 9, 8, (3, 3), 2, 2, 2, 3, "db", 1.0),
    (3, 1, 2, 5, 7, 5, 5, (1, 1), 1, 0, 1, 1, "none", 1.0),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,N,I,O,H,W,kernel,stride,padding,dilation,groups,bias,scale", CONV_CASES)
@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_matches_fp64(
    impl, K, d, N, I, O, H, W, kernel, stride, padding, dilation, groups, bias, scale, shared
) -> None:
    w0, dw, coeffs, b0, db = _params(d, (O, I // groups, *kernel), K, bias=bias, scale=scale)
    x = _rand(N, I, H, W, scale=10.0) if shared else _rand(K, N, I, H, W, scale=10.0)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, impl=impl, **kw)
    ref, bound = _reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, **kw)
    assert y.dtype == torch.float32
    _assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_half_inputs(impl: str, dtype: torch.dtype, shared: bool) -> None:
    K, d, N, I, O = 3, 1, 2, 3, 5
    w0, dw, coeffs, b0, db = _params(d, (O, I, 3, 3), K, dtype=dtype)
    x = _rand(N, I, 6, 7, dtype=dtype) if shared else _rand(K, N, I, 6, 7, dtype=dtype)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, padding=1, impl=impl)
    assert y.dtype == dtype
    ref, bound = _reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, padding=1)
    _assert_within(y, ref, bound, TOL[dtype])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("K,d,groups", [(3, 1, 1), (3, 1, 2), (2, 2, 1)])
def test_conv2d_shared_equals_per_point(impl: str, K: int, d: int, groups: int) -> None:
    w0, dw, coeffs, b0, db = _params(d, (6, 4 // groups, 3, 3), K)
    x = _rand(2, 4, 7, 6)
    kw = dict(stride=1, padding=1, dilation=1, groups=groups)
    y_shared = interpolated_conv2d(x, w0, dw, coeffs, b0, db, impl=impl, **kw)
    y_point = interpolated_conv2d(x.expand(K, *x.shape), w0, dw, coeffs, b0, db, impl=impl, **kw)
    _, bound = _reference(F.conv2d, x, w0, dw, coeffs, b0, db, True, **kw)
    _assert_within(y_shared, y_point.to(F64), bound, 2 * TOL[torch.float32])


def test_conv2d_channels_last_input_triton() -> None:
    K, d = 2, 2
    w0, dw, coeffs, b0, db = _params(d, (5, 3, 3, 3), K)
    x = _rand(K * 2, 3, 6, 6).contiguous(memory_format=torch.channels_last).view(K, 2, 3, 6, 6)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, padding=1, impl="triton")
    ref, bound = _reference(F.conv2d, x, w0, dw, coeffs, b0, db, False, padding=1)
    _assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize(
    "formulation",
    [ki._conv2d_per_point_loop_torch, ki._conv2d_per_point_grouped_torch, ki._conv2d_per_point_stacked_torch],
)
@pytest.mark.parametrize("bias", ["both", "none"])
def test_conv2d_per_point_torch_formulations(formulation, bias: str) -> None:
    """Every measured CPU formulation is correct, not only the default."""
    K, d = 3, 2
    w0, dw, coeffs, b0, db = _params(d, (8, 5, 3, 3), K, bias=bias)
    x = _rand(K, 4, 5, 9, 7)
    pair = ((2, 1), (1, 1), (1, 1))
    y = formulation(x, w0, dw, coeffs, b0, db, torch.float32, *pair, 1)
    ref, bound = _reference(F.conv2d, x, w0, dw, coeffs, b0, db, False, stride=(2, 1), padding=1)
    _assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize(
    "formulation", [ki._linear_per_point_materialise_torch, ki._linear_per_point_stacked_torch]
)
def test_linear_per_point_torch_formulations(formulation) -> None:
    K, d = 3, 2
    w0, dw, coeffs, b0, db = _params(d, (13, 11), K)
    x = _rand(K, 6, 11)
    y = formulation(x, w0, dw, coeffs, b0, db, torch.float32)
    ref, bound = _reference(F.linear, x, w0, dw, coeffs, b0, db, False)
    _assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shared", [False, True])
def test_no_directions_is_the_base_network(impl: str, shared: bool) -> None:
    """d = 0: every point is θ0 (exercises the empty direction loops and the d=0 combine)."""
    K = 3
    w0, dw, coeffs, b0, db = _params(0, (7, 6), K)
    x = _rand(5, 6) if shared else _rand(K, 5, 6)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl=impl)
    ref, bound = _reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    _assert_within(y, ref, bound, TOL[torch.float32])
    cw0, cdw, cc, cb0, cdb = _params(0, (4, 3, 3, 3), K)
    xc = _rand(2, 3, 5, 6) if shared else _rand(K, 2, 3, 5, 6)
    yc = interpolated_conv2d(xc, cw0, cdw, cc, cb0, cdb, padding=1, impl=impl)
    ref, bound = _reference(F.conv2d, xc, cw0, cdw, cc, cb0, cdb, shared, padding=1)
    _assert_within(yc, ref, bound, TOL[torch.float32])
