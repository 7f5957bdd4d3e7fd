"""Weight matching of two ResNet-18s: landscape's against the `rebasin` package (PyPI) on the same
pair, or, where `rebasin` is not installed, against a plain reimplementation of the authors' loop.

    python benchmarks/align.py [--repeats 3] [--threads N] [--model resnet18]

Two independently initialised torchvision models (seeds 1 and 2, BN statistics randomised), CPU,
interleaved, median of --repeats wall times:
- ours: `permutation_spec` (torch.fx trace) + `weight_matching` (float64), from a state dict;
- rebasin: `PermutationCoordinateDescent(model_a, model_b, x).rebasin()` (its own trace and loop);
- the authors' loop (always measured): Ainsworth et al.'s `weight_matching` (their JAX
  `weight_matching.py`) in torch on our spec: every step re-permutes B's whole state and
  recomputes the group's similarity from scratch, without our caching.
Each run's final weight-matching objective Σ <A, π(B)> is printed too: the three must reach
comparable optima (the same algorithm; the random order of the layers differs).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from landscape.geometry.matching import weight_matching  # noqa: E402
from landscape.geometry.permutations import apply_permutation, permutation_spec  # noqa: E402


def models(name: str):
    import torchvision

    out = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
        out.append(m)
    return out


def objective(spec, a, b) -> float:
    return float(sum((a[k].double() * b[k].double()).sum() for k in spec.state_keys()))


def ours(a, b, x):
    spec = permutation_spec(a, x)
    sa, sb = a.state_dict(), b.state_dict()
    perms, _ = weight_matching(spec, sa, sb)
    return objective(spec, sa, apply_permutation(spec, sb, perms))


def authors_loop(a, b, x, max_iter=100, seed=0):
    """Ainsworth et al.'s loop, as their weight_matching.py writes it: for each group in a random
    order, the similarity of A with B (all other permutations applied to the whole state) summed
    over the group's axes, one linear assignment; stop when a sweep improves nothing."""
    spec = permutation_spec(a, x)
    sa = {k: v.double() for k, v in a.state_dict().items()}
    sb = {k: v.double() for k, v in b.state_dict().items()}
    perms = {g.name: torch.arange(g.size) for g in spec.groups}
    g = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        progress = False
        for i in torch.randperm(len(spec.groups), generator=g).tolist():
            grp = spec.groups[i]
            others = dict(perms)
            others[grp.name] = torch.arange(grp.size)
            pb = apply_permutation(spec, sb, others)
            c = torch.zeros(grp.size, grp.size, dtype=torch.float64)
            for key, axis in grp.axes:
                wa = sa[key].movedim(axis, 0)
                wb = pb[key].movedim(axis, 0)
                n = grp.size
                wa = wa.reshape(-1, n, grp.block, wa[0].numel()).transpose(0, 1).reshape(n, -1)
                wb = wb.reshape(-1, n, grp.block, wb[0].numel()).transpose(0, 1).reshape(n, -1)
                c += wa @ wb.T
            old = float(c[torch.arange(grp.size), perms[grp.name]].sum())
            new_perm = torch.from_numpy(linear_sum_assignment(c.numpy(), maximize=True)[1])
            if float(c[torch.arange(grp.size), new_perm].sum()) > old + 1e-12:
                perms[grp.name], progress = new_perm, True
        if not progress:
            break
    return objective(spec, a.state_dict(), apply_permutation(spec, b.state_dict(), perms))


def rebasin_run(a, b, x):
    from rebasin import PermutationCoordinateDescent

    b = copy.deepcopy(b)
    PermutationCoordinateDescent(a, b, x).rebasin()
    spec = permutation_spec(a, x)
    return objective(spec, a.state_dict(), b.state_dict())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", default="resnet18")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    a, b = models(args.model)
    x = torch.randn(1, 3, 32, 32)
    try:
        import rebasin  # noqa: F401

        contenders = {"landscape": ours, "rebasin": rebasin_run, "authors' loop": authors_loop}
    except ImportError:
        print("rebasin is not installed (pip install rebasin): comparing with the authors' loop only")
        contenders = {"landscape": ours, "authors' loop": authors_loop}
    times = {k: [] for k in contenders}
    found = {}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            t = time.perf_counter()
            found[name] = fn(a, b, x)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["landscape"])
    print(f"weight matching of two {args.model}s ({sum(p.numel() for p in a.parameters()):,} parameters), "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'':16}{'seconds':>10}{'vs landscape':>14}{'objective':>16}")
    for name in contenders:
        t = statistics.median(times[name])
        print(f"{name:16}{t:10.2f}{t / base:13.2f}x{found[name]:16.2f}")


if __name__ == "__main__":
    main()
