"""Hessian spectra: landscape.evaluate.hessian against PyHessian on the same model, data and work.

    python benchmarks/hessian.py [--n 512] [--size 16] [--width 32] [--batch-size 128]
                                 [--probes 100] [--repeats 3] [--threads N]

Model: the toolkit's SmallCNN (BatchNorm, eval mode) briefly trained on the built-in synthetic
images, so the Hessian is taken at a point with structure. Data: the whole set, in batches of
--batch-size, for both libraries (PyHessian's `dataloader` mode, which averages over batches
as we do). Measured, interleaved, median of --repeats:

- one Hessian-vector product (HVP) over the whole data set: PyHessian's dataloader_hv_product
  (forward + backward with create_graph + second backward per batch, every time) against ours
  (second backward only, on first-order graphs kept from the first pass; and ours without
  the kept graphs, which is PyHessian's arithmetic);
- top eigenvalue: PyHessian's power iteration (maxIter 100, tol 1e-3, its defaults) against
  our Lanczos (a) with exactly as many HVPs as the power iteration used and (b) stopped by our
  own criterion (relative Ritz residual 1e-3); each compared with a tightly converged reference;
- trace: Hutchinson with the same number of Rademacher probes in both (PyHessian's early stop
  switched off with tol < 0).

PyHessian: `pip install pyhessian` (0.1, PyPI). Its `density` calls torch.eig, removed from
torch 2.x, so the spectral density is not compared.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from landscape.core.checkpoints import Snapshot  # noqa: E402
from landscape.core.data import make_synthetic_images  # noqa: E402
from landscape.core.models import SmallCNN  # noqa: E402
from landscape.evaluate.hessian import HessianOperator, hutchinson_trace, top_eigenpairs  # noqa: E402


def trained_model(n: int, size: int, width: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x, y = make_synthetic_images(n, 10, size, 3, seed=seed)
    model = SmallCNN(10, 3, width)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        for i in range(0, n, 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval(), x, y


def pyhessian_module():
    try:
        from pyhessian import hessian as pyh
    except ImportError:
        sys.exit("PyHessian is not installed: pip install pyhessian")
    return pyh


class Counted:
    """PyHessian's hessian with a count of its HVPs (each dataloader_hv_product is one)."""

    def __init__(self, pyh, model, loader):
        self.h = pyh(model, nn.functional.cross_entropy, dataloader=loader, cuda=False)
        self.count = 0
        real = self.h.dataloader_hv_product

        def counted(v):
            self.count += 1
            return real(v)

        self.h.dataloader_hv_product = counted


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--probes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pyh = pyhessian_module()
    model, x, y = trained_model(args.n, args.size, args.width)
    snap = Snapshot.from_model(model)
    p = snap.params.numel()
    loader = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, args.n, args.batch_size)]
    print(f"SmallCNN width {args.width}: {p:,} parameters, BatchNorm in eval mode; {args.n} synthetic "
          f"{args.size}x{args.size} images in {len(loader)} batches of {args.batch_size}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def ours(cache="auto"):
        return HessianOperator(model, snap, x, y, batch_size=args.batch_size, cache=cache)

    # reference top eigenvalue: Lanczos to a relative residual of 1e-8
    ref = top_eigenpairs(ours(), 1, iters=300, tol=1e-8, seed=123)["eigenvalues"][0]
    print(f"reference top eigenvalue (Lanczos, residual 1e-8): {ref:.6f}")

    rows: dict[str, list[float]] = {}

    def add(key, value):
        rows.setdefault(key, []).append(value)

    g = torch.Generator().manual_seed(0)
    v = torch.randn(p, generator=g)
    v_list = [t.reshape(s) for t, (_, s, _) in zip(v.split(snap.layout.sizes), snap.layout.slices())]
    for rep in range(args.repeats):
        # -- one HVP -----------------------------------------------------------------------
        c = Counted(pyh, model, loader)
        add("hvp pyhessian", timed(lambda: c.h.dataloader_hv_product(v_list))[0])
        op = ours()
        add("prepare ours (first-order graphs, loss, gradient)", timed(op.prepare)[0])
        add("hvp ours (kept graphs)", statistics.median(timed(lambda: op.matvec(v))[0] for _ in range(3)))
        op_nc = ours(cache=False)
        op_nc.prepare()
        add("hvp ours (graphs rebuilt per product)", timed(lambda: op_nc.matvec(v))[0])

        # -- top eigenvalue ----------------------------------------------------------------
        torch.manual_seed(rep)
        c = Counted(pyh, model, loader)
        t, (vals, _) = timed(lambda: c.h.eigenvalues(maxIter=100, tol=1e-3, top_n=1))
        add("top-1 pyhessian power iteration: seconds", t)
        add("top-1 pyhessian power iteration: HVPs", c.count)
        add("top-1 pyhessian power iteration: relative error", abs(vals[0] - ref) / abs(ref))
        same = c.count
        op = ours()
        t, res = timed(lambda: top_eigenpairs(op, 1, iters=same, tol=1e-30, seed=rep))
        add("top-1 ours Lanczos, same HVPs: seconds (incl. graphs)", t)
        add("top-1 ours Lanczos, same HVPs: relative error", abs(res["eigenvalues"][0] - ref) / abs(ref))
        op = ours()
        t, res = timed(lambda: top_eigenpairs(op, 1, iters=100, tol=1e-3, seed=rep))
        add("top-1 ours Lanczos to residual 1e-3: seconds (incl. graphs)", t)
        add("top-1 ours Lanczos to residual 1e-3: HVPs", op.hvps)
        add("top-1 ours Lanczos to residual 1e-3: relative error", abs(res["eigenvalues"][0] - ref) / abs(ref))

        # -- trace -------------------------------------------------------------------------
        torch.manual_seed(rep)
        c = Counted(pyh, model, loader)
        t, samples = timed(lambda: c.h.trace(maxIter=args.probes, tol=-1.0))
        add(f"trace pyhessian ({args.probes} probes): seconds", t)
        add("trace pyhessian: value", float(np.mean(samples)))
        op = ours()
        t, res = timed(lambda: hutchinson_trace(op, args.probes, seed=rep))
        add(f"trace ours ({args.probes} probes): seconds (incl. graphs)", t)
        add("trace ours: value", res["trace"])
        add("trace ours: standard error", res["trace_stderr"])
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)

    print(f"\nmedians over {args.repeats} repeats (interleaved):")
    for key, vals in rows.items():
        print(f"  {key:<62} {statistics.median(vals):>12.5g}")
    med = {k: statistics.median(v) for k, v in rows.items()}
    print("\nratios (PyHessian / ours, > 1: ours faster):")
    print(f"  one HVP:                       {med['hvp pyhessian'] / med['hvp ours (kept graphs)']:.2f}x")
    print(f"  top-1, same number of HVPs:    "
          f"{med['top-1 pyhessian power iteration: seconds'] / med['top-1 ours Lanczos, same HVPs: seconds (incl. graphs)']:.2f}x")
    print(f"  top-1, each to its own stop:   "
          f"{med['top-1 pyhessian power iteration: seconds'] / med['top-1 ours Lanczos to residual 1e-3: seconds (incl. graphs)']:.2f}x")
    print(f"  trace, same probes:            "
          f"{med[f'trace pyhessian ({args.probes} probes): seconds'] / med[f'trace ours ({args.probes} probes): seconds (incl. graphs)']:.2f}x")


if __name__ == "__main__":
    main()
