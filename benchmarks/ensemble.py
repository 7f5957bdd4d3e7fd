"""Benchmark the fused ensemble-metrics op against a plain per-size torch loop and a floor.

    python benchmarks/ensemble.py [--device cpu|cuda] [--repeats R] [--M 20 --N 10000 --C 100]

(a) fused: ``kernels.ensemble_metrics`` for all sizes 1..M;
(b) plain: for each m, re-average the softmax probabilities of the first m members and compute
    the metrics;
(c) floor: one ``torch.logsumexp(logits, -1)`` pass over the same logits.
Reports medians after a warm-up, the ratios plain/fused (target >= 2.5) and fused/floor
(target <= 1.5), and on CUDA the achieved bandwidth against a measured device copy.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels.ensemble import ensemble_metrics  # noqa: E402


def plain_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[dict[str, float]]:
    """The obvious version: softmax once, then re-average and re-measure for every size."""
    M, N, C = logits.shape
    probs = torch.softmax(logits.float(), -1)
    onehot = torch.nn.functional.one_hot(labels, C).float()
    rows = torch.arange(N, device=logits.device)
    out = []
    for m in range(1, M + 1):
        p = probs[:m].mean(0)
        conf, pred = p.max(-1)
        correct = (pred == labels).float()
        b = (conf * n_bins).long().clamp(max=n_bins - 1)
        cnt = torch.bincount(b, minlength=n_bins).float()
        cs = torch.zeros(n_bins, device=p.device).index_add_(0, b, conf)
        cc = torch.zeros(n_bins, device=p.device).index_add_(0, b, correct)
        out.append(
            {
                "nll": float(-p[rows, labels].clamp_min(1e-30).log().mean()),
                "acc": float(correct.mean()),
                "conf": float(conf.mean()),
                "brier": float(((p - onehot) ** 2).sum(-1).mean()),
                "ece": float((cc - cs).abs().sum() / N),
                "count": float(cnt.sum()),
            }
        )
    return out


def bench(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2
) -> dict[str, float]:
    """Median wall time in seconds of each function, timed in interleaved rounds so that
    changing load on a shared machine affects all of them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def copy_bandwidth(nbytes: int, device: torch.device, repeats: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = bench({"copy": lambda: dst.copy_(src)}, device, repeats)["copy"]
    return 2 * nbytes / t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--M", type=int, default=20)
    ap.add_argument("--N", type=int, default=10000)
    ap.add_argument("--C", type=int, default=100)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.M, args.N, args.C, generator=g) * 3).to(device)
    labels = torch.randint(0, args.C, (args.N,), generator=g).to(device)

    # the fused result agrees with the plain loop before we time anything
    fused = ensemble_metrics(logits, labels).to_rows()
    plain = plain_metrics(logits, labels)
    worst = max(abs(a[k] - b[k]) for a, b in zip(fused, plain) for k in ("nll", "acc", "conf", "brier", "ece"))
    assert worst < 1e-4, f"fused and plain disagree by {worst}"

    t = bench(
        {
            "fused": lambda: ensemble_metrics(logits, labels),
            "plain": lambda: plain_metrics(logits, labels),
            "floor": lambda: torch.logsumexp(logits, -1),
        },
        device,
        args.repeats,
    )
    t_fused, t_plain, t_floor = t["fused"], t["plain"], t["floor"]

    print(f"device={device} threads={torch.get_num_threads()} M={args.M} N={args.N} C={args.C} fp32")
    print(f"fused (all {args.M} sizes) {t_fused * 1e3:9.2f} ms")
    print(f"plain per-size loop        {t_plain * 1e3:9.2f} ms")
    print(f"floor logsumexp pass       {t_floor * 1e3:9.2f} ms")
    print(f"plain / fused = {t_plain / t_fused:5.2f}  (target >= 2.5)")
    print(f"fused / floor = {t_fused / t_floor:5.2f}  (target <= 1.5)")
    if device.type == "cuda":
        nbytes = logits.numel() * logits.element_size()
        bw = nbytes / t_fused
        peak = copy_bandwidth(nbytes, device, args.repeats)
        print(f"fused bandwidth {bw / 1e9:8.1f} GB/s = {bw / peak:5.1%} of copy {peak / 1e9:.1f} GB/s (target 80%)")


if __name__ == "__main__":
    main()
