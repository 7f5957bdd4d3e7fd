"""Wall time of a command on several ranks (torchrun) against one rank, measured in the same run.

    python benchmarks/distributed.py                      # --what plane
    python benchmarks/distributed.py --what all --json timings.json
    python benchmarks/distributed.py --grid 31 --device cuda   # a GPU machine: ranks = GPUs

plane: `landscape plane` of a small CNN with BatchNorm (the built-in small_cnn, 95k parameters)
on 1,000 synthetic 32x32 images, on a random filter-normalised plane of GRID x GRID points, as
whole processes (start-up included), as a user runs them:
  1 rank x THREADS threads     `OMP_NUM_THREADS=THREADS python -m landscape plane ...`
  N ranks x THREADS threads    `OMP_NUM_THREADS=THREADS torchrun --standalone --nproc-per-node=N -m landscape plane ...`
  1 rank x N*THREADS threads   (for comparison: what the same cores give one process)
and checks that the stored surfaces are identical. On the CPU the target is N ranks x 1 thread at
least 1.7x faster than 1 rank x 1 thread on a 2-core machine.

demo: `landscape demo --quick` (2 seeds, K = 3) on N ranks against one rank, each from a cold
pre-training cache, and checks that both stores hold the same numbers; target on a 2-core CPU:
2 ranks at least 1.5x faster. On CUDA each rank takes one GPU
(N = the GPUs), the baseline one GPU, and the chunk is set so that every rank gets several.

Each measurement is a function taking the parsed arguments and returning a dict (printed, and
written with --json); MEASUREMENTS maps --what to them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_timed(cmd: list[str], cwd: str, threads: int) -> float:
    """Wall time of a whole process (start-up included); fails loudly if the command fails."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": ROOT + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]


def same_surface(a: str, b: str) -> bool:
    from landscape.store.store import Store

    with Store(a, "r") as sa, Store(b, "r") as sb:
        x, y = sa.read("surfaces", "plane").arrays, sb.read("surfaces", "plane").arrays
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x)


def plane(args: argparse.Namespace) -> dict[str, Any]:
    """`landscape plane` on N ranks against one rank (see the module docstring)."""
    import torch

    from landscape.core.data import load_data
    from landscape.core.models import build_model

    cuda = args.device.startswith("cuda")
    ranks = args.ranks or (torch.cuda.device_count() if cuda else 2)
    points = args.grid * args.grid
    # on CUDA the default chunk is one pass of up to 256 points: cut the grid so every rank gets several
    chunk = args.chunk or (max(1, points // (4 * ranks)) if cuda else None)
    data = f"synthetic:n={args.samples},size=32,split=test"
    with tempfile.TemporaryDirectory() as work:
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, load_data(data, "test").input_shape)
        torch.save(model.state_dict(), os.path.join(work, "center.pt"))
        base = ["-m", "landscape", "plane", "center.pt", "--random", "filter", "--x", f"-1:1:{args.grid}",
                "--y", f"-1:1:{args.grid}", "--model", "small_cnn", "--num-classes", "10", "--test-data", data,
                "--device", args.device, "--quiet", *(["--chunk", str(chunk)] if chunk else [])]
        runs = [("1 rank", 1, args.threads, [sys.executable, *base, "--out", "one"]),
                (f"{ranks} ranks", ranks, args.threads, [*torchrun(ranks), *base, "--out", "many"])]
        if not cuda and not args.no_threads_run:
            runs.append((f"1 rank, {ranks * args.threads} threads", 1, ranks * args.threads,
                         [sys.executable, *base, "--out", "threads"]))
        times = {}
        for label, _, threads, cmd in runs:
            times[label] = run_timed(cmd, work, threads)
            print(f"  {label:<22} x {threads} thread(s): {times[label]:7.2f} s", flush=True)
        identical = same_surface(os.path.join(work, "one"), os.path.join(work, "many"))
    one, many = times["1 rank"], times[f"{ranks} ranks"]
    return {"what": "plane", "device": args.device, "grid": f"{args.grid}x{args.grid}", "points": points,
            "samples": args.samples, "ranks": ranks, "threads_per_rank": args.threads, "chunk": chunk,
            "seconds": {k: round(v, 2) for k, v in times.items()}, "speedup": round(one / many, 3),
            "target": args.target if not cuda else None,
            "meets_target": (one / many >= args.target) if not cuda else None,
            "identical_surfaces": identical}


def same_store(a: str, b: str) -> bool:
    """Every array of every object of two stores equal (the numbers of a study)."""
    from landscape.store.store import KINDS, Store

    with Store(a, "r") as sa, Store(b, "r") as sb:
        for kind in KINDS:
            if sa.names(kind) != sb.names(kind):
                return False
            for name in sa.names(kind):
                x, y = sa.read(kind, name).arrays, sb.read(kind, name).arrays
                if x.keys() != y.keys() or not all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f")
                                                   for k in x):
                    return False
    return True


def demo(args: argparse.Namespace) -> dict[str, Any]:
    """`landscape demo --quick` (2 seeds) on N ranks against one, each from a cold pre-training
    cache, as whole processes; checks that the two stores hold the same numbers."""
    ranks = args.ranks or 2
    with tempfile.TemporaryDirectory() as work:
        times = {}
        for label, cmd in (("1 rank", [sys.executable, "-m", "landscape"]),
                           (f"{ranks} ranks", [*torchrun(ranks), "-m", "landscape"])):
            out = "one" if label == "1 rank" else "many"
            os.environ["LANDSCAPE_CACHE"] = os.path.join(work, f"cache-{out}")
            times[label] = run_timed([*cmd, "demo", "--quick", "--out", out, "--quiet"], work, args.threads)
            print(f"  {label:<22} x {args.threads} thread(s): {times[label]:7.2f} s", flush=True)
        identical = same_store(os.path.join(work, "one", "results"), os.path.join(work, "many", "results"))
    one, many = times["1 rank"], times[f"{ranks} ranks"]
    return {"what": "demo --quick", "ranks": ranks, "threads_per_rank": args.threads,
            "seconds": {k: round(v, 2) for k, v in times.items()}, "speedup": round(one / many, 3),
            "target": args.demo_target, "meets_target": one / many >= args.demo_target,
            "identical_stores": identical}


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"plane": plane, "demo": demo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=("plane", "demo", "all"), default="plane")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (ranks = GPUs)")
    ap.add_argument("--ranks", type=int, default=None, help="ranks of the many-rank run (default 2; GPUs on cuda)")
    ap.add_argument("--threads", type=int, default=1, help="threads per rank (OMP_NUM_THREADS)")
    ap.add_argument("--grid", type=int, default=16, help="plane: points per axis")
    ap.add_argument("--samples", type=int, default=1000, help="plane: evaluation images")
    ap.add_argument("--chunk", type=int, default=None, help="plane: --chunk (default: the engine's on the CPU)")
    ap.add_argument("--target", type=float, default=1.7, help="plane: speed-up the CPU run should reach")
    ap.add_argument("--no-threads-run", action="store_true", help="plane: skip the 1 rank x N threads run")
    ap.add_argument("--demo-target", type=float, default=1.5, help="demo: speed-up the CPU run should reach")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, CUDA devices {torch.cuda.device_count()}")
    names = list(MEASUREMENTS) if args.what == "all" else [args.what]
    missing = [n for n in names if n not in MEASUREMENTS]
    if missing:
        raise SystemExit(f"--what {missing[0]}: not measured by this script yet (add it to MEASUREMENTS)")
    results = []
    for name in names:
        print(f"{name}:", flush=True)
        res = MEASUREMENTS[name](args)
        results.append(res)
        print(json.dumps(res, indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
