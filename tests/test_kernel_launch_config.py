"""The interpolated-weight kernels in their GPU launch configurations.

Each test forces one launch configuration (every GPU autotuning configuration, the interpreter's
own, and smaller tiles with short program groups) on a shape sized from that configuration's
tiles, so that the launch spans several programs on EVERY grid axis and several passes of every
reduction loop (sizes not multiples of the tile), and checks it against an fp64 reference.
Outputs are pre-filled with NaN, so a tile no program writes cannot pass on stale memory.

A kernel that ignores a program id (row tile, column tile, conv group, point) or overwrites its
``tl.dot`` accumulator instead of adding to it fails these tests (tried by hand: see the closing
note of issue 9). `_spans` asserts the shapes really exercise all of that.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_kernel_interpolated import DEVICE, F64, TOL, assert_within, params, rand, reference, tolerance

from landscape_kernels import (
    dispatch,
    interp_conv2d,
    interp_linear,
    interp_weights,
    interpolate_weights,
    interpolated_conv2d,
    interpolated_linear,
    launch,
)
from landscape_kernels.launch import GemmConfig, PointwiseConfig

SMALL = GemmConfig(16, 16, 16, group_m=2, num_warps=1, num_stages=1)  # short groups, many programs


def _gemm_params(configs):
    out = [pytest.param(c, id=f"gpu{c.block_m}x{c.block_n}x{c.block_k}w{c.num_warps}") for c in configs]
    return out + [pytest.param(launch.INTERPRETER_GEMM, id="interpreter"), pytest.param(SMALL, id="small16g2")]


LINEAR = _gemm_params(launch.LINEAR_CONFIGS)
CONV2D = _gemm_params(launch.CONV2D_CONFIGS)
POINTWISE = [pytest.param(c, id=f"gpu{c.block_p}") for c in launch.POINTWISE_CONFIGS]
POINTWISE += [pytest.param(launch.INTERPRETER_POINTWISE, id="interpreter"),
              pytest.param(PointwiseConfig(64), id="small64")]


def _spans(extent: int, block: int) -> int:
    n = math.ceil(extent / block)
    assert n >= 2, f"extent {extent} spans a single block of {block}"
    return n


def _nan(*shape: int) -> torch.Tensor:
    return torch.full(shape, float("nan"), device=DEVICE)


def _dot(precision: str, dtype: torch.dtype = torch.float32) -> str:
    return launch.dot_mode(precision, dtype, dispatch.interpreting())


# ------------------------------------------------------------------ interpolate_weights


@pytest.mark.parametrize("cfg", POINTWISE)
def test_interpolate_kernel_in_launch_config(cfg: PointwiseConfig) -> None:
    K, d = 3, 2
    P = 2 * cfg.block_p + 37
    _spans(P, cfg.block_p)
    theta0, dirs = rand(P, scale=1e3), rand(d, P, scale=1e3)
    coeffs = torch.randn(K, d).to(DEVICE)
    out = _nan(K, P)
    interp_weights.triton_interpolate(theta0, coeffs, dirs, torch.float32, cfg, out=out)
    t0, dd, c = theta0.cpu().to(F64), dirs.cpu().to(F64), coeffs.cpu().to(F64)
    assert_within(out, t0 + c @ dd, t0.abs() + c.abs() @ dd.abs(), TOL[torch.float32])


# ------------------------------------------------------------------ interpolated_linear


@pytest.mark.parametrize("cfg", LINEAR)
@pytest.mark.parametrize("shared", [False, True])
def test_linear_kernel_in_launch_config(cfg: GemmConfig, shared: bool) -> None:
    """3 row tiles, 2 output tiles, 3 reduction steps, 3 points, 2 directions."""
    K, d = 3, 2
    N, fin, fout = 2 * cfg.block_m + 5, 2 * cfg.block_k + 3, cfg.block_n + 7
    _spans(N, cfg.block_m), _spans(fout, cfg.block_n), _spans(fin, cfg.block_k)
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K)
    x = rand(N, fin, scale=10.0) if shared else rand(K, N, fin, scale=10.0)  # shared: broadcast x
    y = _nan(K, N, fout)
    interp_linear.triton_linear(x, w0, dw, coeffs, b0, db, y, dot_mode=_dot("exact"), config=cfg)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert_within(y, ref, bound, 2 * TOL[torch.float32])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_linear_kernel_tensor_core_modes_in_launch_config(precision: str) -> None:
    K, d, cfg = 2, 2, SMALL
    N, fin, fout = 5 * cfg.block_m + 3, 3 * cfg.block_k + 1, 3 * cfg.block_n + 2
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K)
    x = rand(K, N, fin)
    y = _nan(K, N, fout)
    interp_linear.triton_linear(x, w0, dw, coeffs, b0, db, y, dot_mode=_dot(precision), config=cfg)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, False)
    assert_within(y, ref, bound, tolerance(torch.float32, precision))


@pytest.mark.parametrize("gm", [1, 2, 3, 8])
def test_linear_grouped_ordering_covers_every_tile(gm: int) -> None:
    """5 row tiles x 3 column tiles in groups of gm rows: full, partial and single groups."""
    cfg = GemmConfig(16, 16, 16, group_m=gm, num_warps=1, num_stages=1)
    K, d, N, fin, fout = 2, 1, 5 * 16 - 3, 20, 3 * 16 - 1
    w0, dw, coeffs, b0, db = params(d, (fout, fin), K)
    x = rand(K, N, fin)
    y = _nan(K, N, fout)
    interp_linear.triton_linear(x, w0, dw, coeffs, b0, db, y, dot_mode=_dot("exact"), config=cfg)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, False)
    assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("shared", [False, True])
def test_linear_op_takes_a_config(shared: bool) -> None:
    """The public op forwards config= (also to the d+1 products of the linearity path)."""
    K, d, cfg = 4, 2, SMALL
    w0, dw, coeffs, b0, db = params(d, (35, 40), K)
    x = rand(37, 40) if shared else rand(K, 37, 40)
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl="triton", config=cfg)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, shared)
    assert_within(y, ref, bound, TOL[torch.float32])


# ------------------------------------------------------------------ interpolated_conv2d


def _conv_case(cfg: GemmConfig, groups: int = 2):
    """Rows (images x output pixels) over 2-3 row tiles, output channels per group over 2 tiles,
    the reduction (in-channels x 3x3) over 3+ steps. Returns (images, H, W, I, O, groups) for a
    3x3 convolution with padding 1."""
    hw = (12, 11) if cfg.block_m >= 32 else (6, 7)
    rows = hw[0] * hw[1]
    cg = max(4, math.ceil((2 * cfg.block_k + 1) / 9))
    og = cfg.block_n + 3
    nb = math.ceil((cfg.block_m + 1) / rows)
    _spans(nb * rows, cfg.block_m), _spans(og, cfg.block_n), _spans(cg * 9, cfg.block_k)
    return nb, *hw, cg * groups, og * groups, groups


@pytest.mark.parametrize("cfg", CONV2D)
@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_kernel_in_launch_config(cfg: GemmConfig, shared: bool) -> None:
    K, d = 2, 2
    nb, H, W, I, O, groups = _conv_case(cfg)
    w0, dw, coeffs, b0, db = params(d, (O, I // groups, 3, 3), K)
    x = rand(nb, I, H, W, scale=10.0) if shared else rand(K, nb, I, H, W, scale=10.0)
    y = _nan(K, nb, O, H, W)
    interp_conv2d.triton_conv2d(x, w0.contiguous(), dw.contiguous(), coeffs, b0, db, y, (1, 1), (1, 1), (1, 1),
                                groups, dot_mode=_dot("exact"), config=cfg)
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, padding=1, groups=groups)
    assert_within(y, ref, bound, 2 * TOL[torch.float32])


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_conv2d_kernel_tensor_core_modes_in_launch_config(precision: str) -> None:
    K, d, cfg = 2, 2, SMALL
    nb, H, W, I, O, groups = _conv_case(cfg, groups=3)
    w0, dw, coeffs, b0, db = params(d, (O, I // groups, 3, 3), K)
    x = rand(K, nb, I, H, W)
    y = _nan(K, nb, O, H, W)
    interp_conv2d.triton_conv2d(x, w0, dw, coeffs, b0, db, y, (1, 1), (1, 1), (1, 1), groups,
                                dot_mode=_dot(precision), config=cfg)
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, False, padding=1, groups=groups)
    assert_within(y, ref, bound, tolerance(torch.float32, precision))


def test_conv2d_strided_dilated_in_launch_config() -> None:
    """Stride, dilation and asymmetric padding with several programs on every axis."""
    K, d, cfg = 2, 2, SMALL
    w0, dw, coeffs, b0, db = params(d, (2 * 19, 5, 3, 2), K)
    x = rand(K, 2, 10, 11, 9)
    kw = dict(stride=(2, 1), padding=(2, 1), dilation=(2, 3), groups=2)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, impl="triton", config=cfg, **kw)
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, False, **kw)
    assert_within(y, ref, bound, TOL[torch.float32])


@pytest.mark.parametrize("shared", [False, True])
def test_conv2d_op_takes_a_config(shared: bool) -> None:
    K, d, cfg = 4, 2, SMALL
    w0, dw, coeffs, b0, db = params(d, (20, 3, 3, 3), K)
    x = rand(2, 6, 7, 9) if shared else rand(K, 2, 6, 7, 9)
    y = interpolated_conv2d(x, w0, dw, coeffs, b0, db, padding=1, groups=2, impl="triton", config=cfg)
    ref, bound = reference(F.conv2d, x, w0, dw, coeffs, b0, db, shared, padding=1, groups=2)
    assert_within(y, ref, bound, TOL[torch.float32])


# ------------------------------------------------------------------ the configurations themselves


def test_configurations() -> None:
    """Interpreter tiles are no larger than the smallest GPU tiles; autotune keys name real
    arguments (the autotuner silently drops a key it cannot find)."""
    small = min(launch.GEMM_CONFIGS, key=lambda c: c.block_m * c.block_n * c.block_k)
    it = launch.INTERPRETER_GEMM
    assert (it.block_m, it.block_n, it.block_k) <= (small.block_m, small.block_n, small.block_k)
    assert it.block_m <= small.block_m and it.block_n <= small.block_n and it.block_k <= small.block_k
    assert launch.INTERPRETER_POINTWISE.block_p <= min(c.block_p for c in launch.POINTWISE_CONFIGS)
    for configs in (launch.LINEAR_CONFIGS, launch.CONV2D_CONFIGS, launch.POINTWISE_CONFIGS):
        assert len(set(configs)) == len(configs) >= 2
    with pytest.raises(ValueError):
        GemmConfig(8, 64, 32)  # tl.dot needs tiles of at least 16
    with pytest.raises(ValueError):
        PointwiseConfig(1000)
    for mod in (interp_linear, interp_conv2d, interp_weights):
        tuner = mod._autotuned()
        assert len(tuner.configs) > 1
        missing = [k for k in tuner.keys if k not in tuner.arg_names]
        assert not missing, f"{mod.__name__}: autotune keys {missing} are not kernel arguments"


def test_interpolate_op_takes_a_config() -> None:
    theta0, dirs, coeffs = rand(300), rand(2, 300), torch.randn(3, 2)
    out = interpolate_weights(theta0, coeffs, dirs, impl="triton", config=PointwiseConfig(32))
    t0, dd, c = theta0.cpu().to(F64), dirs.cpu().to(F64), coeffs.to(F64)
    assert_within(out, t0 + c @ dd, t0.abs() + c.abs() @ dd.abs(), TOL[torch.float32])


def test_rows_split_so_offsets_stay_int32(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets within one point are int32: launchers split the rows (images) when a point's
    input or output would span more. A small limit forces the split here."""
    from landscape_kernels import common

    monkeypatch.setattr(common, "INT32_SPAN", 2000)
    assert common.rows_per_launch(100, [(30, 29), (20, 19)]) == 66
    K, d = 3, 2
    w0, dw, coeffs, b0, db = params(d, (20, 30), K)
    x = rand(K, 100, 30)  # 3000 elements per point: two launches of rows
    y = interpolated_linear(x, w0, dw, coeffs, b0, db, impl="triton", config=SMALL)
    ref, bound = reference(F.linear, x, w0, dw, coeffs, b0, db, False)
    assert_within(y, ref, bound, TOL[torch.float32])
    cw0, cdw, cc, cb0, cdb = params(d, (5, 4, 3, 3), K)
    xc = rand(K, 13, 4, 9, 9)  # 324 elements per image: three launches of images
    yc = interpolated_conv2d(xc, cw0, cdw, cc, cb0, cdb, padding=1, impl="triton", config=SMALL)
    ref, bound = reference(F.conv2d, xc, cw0, cdw, cc, cb0, cdb, False, padding=1)
    assert_within(yc, ref, bound, TOL[torch.float32])
    with pytest.raises(ValueError):
        interpolated_linear(rand(K, 2, 3000), rand(1, 3000), rand(d, 1, 3000), coeffs, impl="triton")
