"""Time `landscape demo --quick` and `landscape demo` from a cold start (fresh output folder, empty
pre-training cache, a new process each), as a user runs them. Targets on a 2-core CPU without a
GPU: quick <= 90 s, full <= 10 min.

    python benchmarks/demo.py              # both
    python benchmarks/demo.py --quick-only
    python benchmarks/demo.py --json timings.json
    python benchmarks/demo.py --full-only --other-seeds 5,6,7,8,9   # the full demo on the default
                                           # seeds and on another seed set: the verdicts side by side

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


def run(kind: str, workdir: str, seeds: str | None = None) -> dict:
    tag = kind + (f"-seeds-{seeds.replace(',', '-')}" if seeds else "")
    out = os.path.join(workdir, f"demo-{tag}")
    env = {**os.environ, "LANDSCAPE_CACHE": os.path.join(workdir, f"cache-{tag}")}
    cmd = [sys.executable, "-m", "landscape.cli", "demo", "--out", out, "--quiet"] + (["--quick"] if kind == "quick" else [])
    if seeds:
        cmd += ["--set", f"study.seeds=[{seeds}]"]
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
    return {"kind": kind, "seeds": summary["study"]["seeds"], "wall_s": wall, "target_s": TARGETS[kind], "within_target": wall <= TARGETS[kind],
            "stages_s": {k: round(t.get(k, 0.0), 2) for k in ("prepare_s", "train_s", "analysis_s", "report_s",
                                                               "total_s")},
            "transfer": summary["transfer"], "methods": methods,
            "findings": {f["id"]: f["verdict"] for f in summary["findings"]},
            "tests": {f["id"]: f.get("test") for f in summary["findings"]}, "stdout": proc.stdout}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick-only", action="store_true")
    ap.add_argument("--full-only", action="store_true")
    ap.add_argument("--other-seeds", default=None, help="also run the full demo on these seeds (comma-separated) and "
                                                          "compare its verdicts with the default seeds'")
    ap.add_argument("--json", default=None, help="also write the timings here")
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, threads {torch.get_num_threads()}, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        kinds = [("quick", None)] if args.quick_only else [("full", None)] if args.full_only else [
            ("quick", None), ("full", None)]
        if args.other_seeds:
            kinds.append(("full", args.other_seeds))
        for kind, seeds in kinds:
            r = run(kind, workdir, seeds)
            results.append(r)
            flag = "OK" if r["within_target"] else "OVER TARGET"
            print(f"\n== landscape demo{' --quick' if kind == 'quick' else ''} (seeds {r['seeds']}): "
                  f"{r['wall_s']:.1f} s wall (target {r['target_s']:.0f} s: {flag}); stages {r['stages_s']}")
            print(r["stdout"].rstrip())
        full = [r for r in results if r["kind"] == "full"]
        if len(full) == 2:
            a, b = full
            print(f"\n== verdicts: seeds {a['seeds']} | seeds {b['seeds']}")
            for fid in dict.fromkeys([*a["findings"], *b["findings"]]):
                va, vb = a["findings"].get(fid, "-"), b["findings"].get(fid, "-")
                print(f"{fid:32s} {str(a['tests'].get(fid) or b['tests'].get(fid)):36s} {va:14s} | {vb:14s}"
                      f"{'' if va == vb else '   differs'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{k: v for k, v in r.items() if k != "stdout"} for r in results], f, indent=1)


if __name__ == "__main__":
    main()
