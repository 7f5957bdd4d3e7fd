"""Benchmark ensemble evaluation: the fused op, and the whole `landscape ensemble` pipeline.

    python benchmarks/ensemble.py [--device cpu|cuda] [--repeats R] [--M 10 --N 5000 --C 100]
                                  [--orders 4] [--batch-size 500] [--threads T] [--skip-op-only]

(1) Pipeline: `landscape ensemble STORE:ens --orders 4` on stored predictions (a store with kept
    predictions [M, N, C] fp32 is written to a temporary folder first), in-process through
    ``landscape.api.ensemble`` (process start-up excluded). While it runs, the fused-op calls it
    makes (``landscape_kernels.ensemble.ensemble_metrics_orders``, one per batch, all member orders at
    once) are timed from inside, so ``pipeline / op`` compares the two within one run; target
    <= 1.5 on the CPU with M=10, N=5,000, C=100 and 4 orders. The same op calls are also timed
    on their own, in interleaved rounds.
(2) Op alone (unless --skip-op-only), one order, M=20, N=10,000, C=100 by default for the op's
    own figures: fused (all sizes) against a plain per-size torch loop and a floor (one
    ``torch.logsumexp`` pass over the logits); on CUDA also the share of the copy bandwidth.

Medians over --repeats rounds; on a shared machine look at the spread of the per-round ratios too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import landscape.evaluate.ensembles as lens  # noqa: E402
import landscape_kernels.ensemble as kens  # noqa: E402
from landscape_kernels.ensemble import ensemble_metrics, ensemble_metrics_orders  # noqa: E402


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times in seconds of each function per round, timed in interleaved rounds so that
    changing load on a shared machine affects all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def copy_bandwidth(nbytes: int, device: torch.device, repeats: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = statistics.median(bench({"copy": lambda: dst.copy_(src)}, device, repeats)["copy"])
    return 2 * nbytes / t


class OpTimer:
    """Wraps the fused op where the pipeline calls it: counts calls and the time spent inside."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.calls, self.seconds = device, 0, 0.0
        self._real = lens.ensemble_metrics_orders

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self._real(*args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out

    def __enter__(self) -> OpTimer:
        lens.ensemble_metrics_orders = self
        return self

    def __exit__(self, *exc) -> None:
        lens.ensemble_metrics_orders = self._real


def pipeline_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    from landscape import api
    from landscape.store.store import Store

    M, N, C = args.M, args.N, args.C
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(M, N, C, generator=g) * 3
    labels = torch.randint(0, C, (N,), generator=g)
    names = [f"member{i}" for i in range(M)]
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/store"
        with Store(store, "a") as st:
            st.write("ensembles", "ens", {"members": np.array(names, dtype="S"), "predictions": logits.numpy(),
                                          "labels": labels.numpy(), "size": np.arange(1, M + 1)},
                     {"members": names})
        ref = f"{store}:ens"
        run_kw = dict(orders=args.orders, batch_size=args.batch_size, device=args.device)

        # the op calls the pipeline makes, on their own: same batches, same member orders
        perms = lens.member_orders(M, args.orders, 0)
        dev_logits, dev_labels = logits.to(device), labels.to(device)

        def op_calls() -> None:
            for i in range(0, N, args.batch_size):
                ensemble_metrics_orders(dev_logits[:, i:i + args.batch_size], dev_labels[i:i + args.batch_size], perms)

        def pipeline() -> None:
            api.ensemble([ref], **run_kw)

        # warm-up, and the pipeline's numbers against the op's
        res = api.ensemble([ref], **run_kw)
        direct = kens.ensemble_metrics(logits, labels)
        worst = max(abs(r[k] - d[k]) for r, d in zip(res.rows(), direct.to_rows()) for k in ("nll", "acc", "kl"))
        assert worst < 1e-5, f"pipeline and op disagree by {worst}"

        pipe_t, inside_t, op_t = [], [], []
        for _ in range(2):
            op_calls()
        for _ in range(args.repeats):
            with OpTimer(device) as timer:
                t0 = time.perf_counter()
                pipeline()
                pipe_t.append(time.perf_counter() - t0)
            inside_t.append(timer.seconds)
            calls = timer.calls
            t0 = time.perf_counter()
            op_calls()
            _sync(device)
            op_t.append(time.perf_counter() - t0)

    med = statistics.median
    in_ratios = [p / i for p, i in zip(pipe_t, inside_t)]
    sep_ratios = [p / o for p, o in zip(pipe_t, op_t)]
    print(f"pipeline: landscape ensemble STORE:ens --orders {args.orders} on stored predictions, device={device} "
          f"threads={torch.get_num_threads()} M={M} N={N} C={C} batch {args.batch_size}, "
          f"{calls} fused-op calls ({args.orders + 1} member orders each)")
    print(f"  whole pipeline (in-process)          {med(pipe_t) * 1e3:9.1f} ms")
    print(f"  fused-op calls inside it             {med(inside_t) * 1e3:9.1f} ms")
    print(f"  the same op calls on their own       {med(op_t) * 1e3:9.1f} ms")
    print(f"  pipeline / op inside  = {med(in_ratios):5.2f}  (per round: {', '.join(f'{r:.2f}' for r in in_ratios)}; "
          "target <= 1.5)")
    print(f"  pipeline / op alone   = {med(sep_ratios):5.2f}  (per round: {', '.join(f'{r:.2f}' for r in sep_ratios)})")


def op_benchmark(args: argparse.Namespace, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    M, N, C = args.op_M, args.op_N, args.C
    logits = (torch.randn(M, N, C, generator=g) * 3).to(device)
    labels = torch.randint(0, C, (N,), generator=g).to(device)

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
    t_fused, t_plain, t_floor = (statistics.median(t[k]) for k in ("fused", "plain", "floor"))
    print(f"op alone: device={device} threads={torch.get_num_threads()} M={M} N={N} C={C} fp32, one order")
    print(f"  fused (all {M} sizes, every metric) {t_fused * 1e3:9.2f} ms")
    print(f"  plain per-size loop (acc/NLL/ECE/Brier only) {t_plain * 1e3:9.2f} ms")
    print(f"  floor logsumexp pass                {t_floor * 1e3:9.2f} ms")
    print(f"  plain / fused = {t_plain / t_fused:5.2f}")
    print(f"  fused / floor = {t_fused / t_floor:5.2f}")
    if device.type == "cuda":
        nbytes = logits.numel() * logits.element_size()
        bw = nbytes / t_fused
        peak = copy_bandwidth(nbytes, device, args.repeats)
        print(f"  fused bandwidth {bw / 1e9:8.1f} GB/s = {bw / peak:5.1%} of copy {peak / 1e9:.1f} GB/s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--M", type=int, default=10, help="members (pipeline)")
    ap.add_argument("--N", type=int, default=5000, help="samples (pipeline)")
    ap.add_argument("--C", type=int, default=100, help="classes")
    ap.add_argument("--orders", type=int, default=4, help="random member orders (pipeline)")
    ap.add_argument("--batch-size", type=int, default=500, help="`landscape ensemble --batch-size` (its default)")
    ap.add_argument("--op-M", type=int, default=20, help="members (op alone)")
    ap.add_argument("--op-N", type=int, default=10000, help="samples (op alone)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--skip-op-only", action="store_true", help="time the pipeline only")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pipeline_benchmark(args, device)
    if not args.skip_op_only:
        op_benchmark(args, device)


if __name__ == "__main__":
    main()
