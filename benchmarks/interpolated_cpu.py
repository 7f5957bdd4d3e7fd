"""CPU formulations of the interpolated-weight ops that production does not use, timed against
the ones it does (landscape_kernels.interp_linear.naive / kernels.interp_conv2d.naive).

    python benchmarks/interpolated_cpu.py [--repeats 7]

Per-point inputs (x_k differs per point), fp32:
  linear  materialise W_k + bmm (production)  vs  stacked [X_k, c_k1·X_k, ...] @ [W0 D1 ...]ᵀ
  conv2d  K channels_last convs (production)  vs  one grouped conv (points folded into groups)
                                              vs  stacked in-channels [X_k, c_k1·X_k, ...]
Each alternative is checked against production before it is timed.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import timeit  # noqa: E402

from landscape_kernels import interp_conv2d, interp_linear  # noqa: E402
from landscape_kernels.common import interpolated_bias_torch  # noqa: E402
from landscape_kernels.interp_weights import naive as interpolate_naive  # noqa: E402


def linear_stacked(x, w0, dw, coeffs, b0, db):
    """No weight copies: [X_k, c_k1·X_k, ..., c_kd·X_k] ([K, N, (d+1)·in]) against
    [W0, D_1, ..., D_d] concatenated along the input dim, as one matmul ((d+1)× the arithmetic)."""
    K, N, _ = x.shape
    d, out, _ = dw.shape
    xs = torch.cat([x] + [coeffs[:, j, None, None] * x for j in range(d)], 2)
    w_cat = torch.cat([w0] + [dw[j] for j in range(d)], 1)
    y = (xs.view(K * N, -1) @ w_cat.t()).view(K, N, out)
    bias = interpolated_bias_torch(b0, db, coeffs, x.dtype)
    if bias is not None:
        y += bias.unsqueeze(1)
    return y


def conv2d_grouped(x, w0, dw, coeffs, b0, db, stride, padding, dilation, groups):
    """Materialise W_k and run all points as one grouped conv (input [N, K·I, H, W], weight
    [K·O, I/g, kh, kw], groups=K·g)."""
    K = coeffs.shape[0]
    d, O = dw.shape[0], dw.shape[1]
    N, C, H, W = x.shape[1:]
    w = interpolate_naive(w0.reshape(-1), coeffs, dw.reshape(d, w0.numel()))
    bias = interpolated_bias_torch(b0, db, coeffs, x.dtype)
    xi = x.transpose(0, 1).reshape(N, K * C, H, W)
    y = F.conv2d(xi, w.view(K * O, *w0.shape[1:]), None if bias is None else bias.reshape(-1),
                 stride, padding, dilation, K * groups)
    return y.view(N, K, O, *y.shape[-2:]).transpose(0, 1)


def conv2d_stacked(x, w0, dw, coeffs, b0, db, stride, padding, dilation, groups):
    """No weight copies: input channels [X_k, c_k1·X_k, ...] against [W0, D_1, ...] concatenated
    along input channels ((d+1)× the work); groups == 1 only."""
    assert groups == 1
    K, N = x.shape[:2]
    d = dw.shape[0]
    xs = torch.cat([x] + [coeffs[:, j, None, None, None, None] * x for j in range(d)], 2)
    w_cat = torch.cat([w0] + [dw[j] for j in range(d)], 1)
    y = F.conv2d(xs.flatten(0, 1), w_cat, None, stride, padding, dilation, 1)
    y = y.view(K, N, *y.shape[1:])
    bias = interpolated_bias_torch(b0, db, coeffs, x.dtype)
    if bias is not None:
        y = y + bias[:, None, :, None, None]
    return y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the shapes (e.g. 0.1 for a smoke run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    K, d = 9, 2
    coeffs = torch.randn(K, d)

    n = max(1, int(1000 * args.scale))
    x = torch.randn(K, n, 512)
    w0, dw, b0, db = torch.randn(256, 512) / 23, torch.randn(d, 256, 512) / 23, torch.randn(256), torch.randn(d, 256)
    ref = interp_linear.naive(x, w0, dw, coeffs, b0, db)
    rows = [("linear", "materialise + bmm (production)", lambda: interp_linear.naive(x, w0, dw, coeffs, b0, db))]
    torch.testing.assert_close(linear_stacked(x, w0, dw, coeffs, b0, db), ref, rtol=1e-4, atol=1e-4)
    rows.append(("linear", "stacked inputs", lambda: linear_stacked(x, w0, dw, coeffs, b0, db)))

    n = max(1, int(250 * args.scale))
    xc = torch.randn(K, n, 16, 32, 32)
    cw0, cdw = torch.randn(32, 16, 3, 3) / 12, torch.randn(d, 32, 16, 3, 3) / 12
    cb0, cdb = torch.randn(32), torch.randn(d, 32)
    conv_args = ((1, 1), (1, 1), (1, 1), 1)
    ref = interp_conv2d.naive(xc, cw0, cdw, coeffs, cb0, cdb, *conv_args)
    rows.append(("conv2d", "K channels_last convs (production)",
                 lambda: interp_conv2d.naive(xc, cw0, cdw, coeffs, cb0, cdb, *conv_args)))
    for name, fn in (("grouped conv", conv2d_grouped), ("stacked in-channels", conv2d_stacked)):
        torch.testing.assert_close(fn(xc, cw0, cdw, coeffs, cb0, cdb, *conv_args), ref, rtol=1e-4, atol=1e-4)
        rows.append(("conv2d", name, lambda fn=fn: fn(xc, cw0, cdw, coeffs, cb0, cdb, *conv_args)))

    print(f"{torch.get_num_threads()} threads, K={K}, d={d}")
    for op, name, fn in rows:
        print(f"{op:<8}{name:<38}{timeit(fn, repeats=args.repeats) * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
