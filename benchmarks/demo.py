"""Time `landscape demo --quick` and `landscape demo` from a cold start (fresh output folder, empty
pre-training cache, a new process each), as a user runs them. Targets on a 2-core CPU without a
GPU: quick <= 90 s, full <= 10 min.

    python benchmarks/demo.py              # both
    python benchmarks/demo.py --quick-only
    python benchmarks/demo.py --json timings.json

Prints the wall time of each run, its stage times (from summary.json) and its headline numbers
(the chosen cell of each method, means over the seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

TARGETS = {"quick": 90.0, "full": 600.0}


def run(kind: str, workdir: str) -> dict:
    out = os.path.join(workdir, f"demo-{kind}")
    env = {**os.environ, "LANDSCAPE_CACHE": os.path.join(workdir, f"cache-{kind}")}
    cmd = [sys.executable, "-m", "landscape.cli", "demo", "--out", out, "--quiet"] + (["--quick"] if kind == "quick" else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    t = summary["timings"]
    chosen = {v["cell"] for v in summary["selected"].values()}
    methods = {n: {k: (m["stats"].get(k) or {}).get("mean") for k in
                   ("acc", "nll", "new_member_mean_acc", "new_member_mean_dist_finetuned",
                    "new_member_mean_barrier_train_loss")} | {"basin": m.get("basin")}
               for n, m in summary["methods"].items() if n in chosen}
    return {"kind": kind, "wall_s": wall, "target_s": TARGETS[kind], "within_target": wall <= TARGETS[kind],
            "stages_s": {k: round(t.get(k, 0.0), 2) for k in ("prepare_s", "train_s", "analysis_s", "report_s",
                                                               "total_s")},
            "transfer": summary["transfer"], "methods": methods,
            "findings": {f["id"]: f["verdict"] for f in summary["findings"]}, "stdout": proc.stdout}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick-only", action="store_true")
    ap.add_argument("--json", default=None, help="also write the timings here")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for kind in ("quick",) if args.quick_only else ("quick", "full"):
            r = run(kind, workdir)
            results.append(r)
            flag = "OK" if r["within_target"] else "OVER TARGET"
            print(f"\n== landscape demo{' --quick' if kind == 'quick' else ''}: {r['wall_s']:.1f} s wall "
                  f"(target {r['target_s']:.0f} s: {flag}); stages {r['stages_s']}")
            print(r["stdout"].rstrip())
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "stdout"} for r in results], f, indent=1)


if __name__ == "__main__":
    main()
