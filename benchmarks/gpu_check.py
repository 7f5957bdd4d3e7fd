"""One command that proves on a GPU what the CPU-only CI cannot: correctness and speed of the kernels.

    python benchmarks/gpu_check.py [--out gpu_check.json] [--skip SECTION ...]
    python benchmarks/gpu_check.py --dry-run          # the same plumbing on the CPU, tiny shapes

Budget: at most 8 minutes on one H100, no downloads. Sections (each recorded in one JSON file,
then printed as a table):

1. tests   the kernel test files on CUDA, compiled (TRITON_INTERPRET=0, KERNELS_TEST_DEVICE=cuda,
           KERNELS_AUTOTUNE=0: each launcher's first configuration; every configuration is forced
           explicitly by tests/test_kernel_launch_config.py), against fp64 references.
2. ops     each interpolated op (autotuned Triton) against torch on materialised weights
           (cuBLAS / cuDNN), over a few shapes, in exact (fp32/ieee), tf32 and bf16 precision;
           every Triton result is checked against an fp64 reference.
3. ensemble the fused ensemble op against a plain device copy of its input (share of achievable
           bandwidth) and the whole ensemble pipeline (landscape.evaluate.ensembles.evaluate_ensemble,
           4 random member orders) against the time of the fused-op calls it makes.
4. planes  a 33x33 plane of the built-in small_cnn (10,000 synthetic samples) and of torchvision
           ResNet-18 at 32x32 (2,000 samples): the toolkit's batched CUDA path (K points per
           pass), its per-point path, a plain per-point loop (vector_to_parameters + forward)
           and loss-landscapes if installed; slow baselines time a subset of points and scale.
           Batched losses are checked against the plain loop's at common points.

Exits non-zero if any correctness check fails or a section breaks. ``--dry-run`` runs every
section on the CPU (Triton in its interpreter, torch timings instead of do_bench) on tiny shapes,
to check the plumbing in about a minute.
"""
from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "kernels"))  # the package landscape_kernels, for a checkout that is not installed
sys.path.insert(0, str(ROOT / "benchmarks"))

SECTIONS = ("tests", "ops", "ensemble", "planes")
T_START = time.perf_counter()


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, interpreter, tiny shapes: check the plumbing")
    ap.add_argument("--out", default=None, help="JSON file (default: gpu_check.json, or gpu_check_dry.json)")
    ap.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    ap.add_argument("--test-timeout", type=int, default=210, help="seconds for the kernel tests")
    ap.add_argument("--plane-cap", type=float, default=20.0,
                    help="seconds one plane variant may run before it is timed on a subset and scaled")
    ap.add_argument("--budget", type=float, default=450.0,
                    help="seconds for the whole run: plane variants that would start later are skipped")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.dry_run:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import timeit  # noqa: E402

# ----------------------------------------------------------------------------- bookkeeping


class Report:
    def __init__(self, dry: bool) -> None:
        self.data: dict = {"dry_run": dry, "checks": [], "errors": [], "sections": {}}
        self.dry = dry

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.data["checks"].append({"name": name, "ok": bool(ok), "detail": detail})
        if not ok:
            print(f"  CHECK FAILED: {name}: {detail}", flush=True)
        return bool(ok)

    def error(self, section: str, exc: BaseException) -> None:
        tb = traceback.format_exc()
        self.data["errors"].append({"section": section, "error": f"{type(exc).__name__}: {exc}", "traceback": tb})
        print(f"  SECTION {section} BROKE: {type(exc).__name__}: {exc}\n{tb}", flush=True)

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.data["checks"]) and not self.data["errors"]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_ms(fn, dry: bool) -> float:
    """Median milliseconds of fn: triton.testing.do_bench on a GPU (L2 flushed between calls),
    benchmarks/common.timeit on the CPU."""
    if not dry and torch.cuda.is_available():
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100))
    return timeit(fn, repeats=3, warmup=1) * 1e3


def within(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, tol: float) -> tuple[bool, float]:
    """Worst error as a multiple of the allowed tol·bound (<= 1 passes)."""
    err = (y.double() - ref).abs()
    worst = float((err / (tol * bound + 1e-30)).max()) if err.numel() else 0.0
    return bool(torch.isfinite(y).all()) and worst <= 1.0, worst


# ----------------------------------------------------------------------------- 1. tests


def section_tests(rep: Report, args) -> None:
    files = ["tests/test_kernel_interpolated.py", "tests/test_kernel_launch_config.py"]
    ens = ROOT / "tests/test_kernel_ensemble_metrics.py"
    if ens.exists() and "KERNELS_TEST_DEVICE" in ens.read_text():
        files.append(str(ens.relative_to(ROOT)))
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    if rep.dry:
        env["TRITON_INTERPRET"] = "1"
        env.pop("KERNELS_TEST_DEVICE", None)
        cmd += ["-k", "in_launch_config and (small16g2 or gpu64x64x32w4)"]  # plumbing only
    else:
        env.update(TRITON_INTERPRET="0", KERNELS_TEST_DEVICE="cuda", KERNELS_AUTOTUNE="0")
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        t0 = time.perf_counter()
        try:
            r = subprocess.run(cmd + ["--junitxml", xml] + files, cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=args.test_timeout)
            rc, tail = r.returncode, (r.stdout + r.stderr)[-3000:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = "timeout", str(exc)
        seconds = time.perf_counter() - t0
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        failed: list[str] = []
        if os.path.exists(xml):
            root = ET.parse(xml).getroot()
            for suite in root.iter("testsuite"):
                for k in counts:
                    counts[k] += int(suite.get(k, 0))
            for case in root.iter("testcase"):
                if case.find("failure") is not None or case.find("error") is not None:
                    failed.append(f"{case.get('classname')}::{case.get('name')}")
    rep.data["sections"]["tests"] = {"files": files, "seconds": seconds, "returncode": rc, **counts,
                                     "failed": failed, "output_tail": tail if rc else ""}
    print(f"  {counts['tests']} tests, {counts['failures']} failures, {counts['errors']} errors, "
          f"{counts['skipped']} skipped in {seconds:.0f} s", flush=True)
    for f in failed[:20]:
        print(f"    FAILED {f}")
    rep.check("kernel tests on the device", rc == 0 and counts["tests"] > 0, f"rc={rc}, failed={failed[:10]}")


# ----------------------------------------------------------------------------- 2. ops


def _fp64_linear(x, w0, dw, c, b0, db):
    """Reference and error bound, fp64, per point (x shared or per point)."""
    f = torch.float64
    w = w0.to(f) + torch.einsum("kd,doi->koi", c.to(f), dw.to(f))
    wa = w0.to(f).abs() + torch.einsum("kd,doi->koi", c.to(f).abs(), dw.to(f).abs())
    b = b0.to(f) + c.to(f) @ db.to(f)
    ba = b0.to(f).abs() + c.to(f).abs() @ db.to(f).abs()
    xs = x.to(f) if x.ndim == 3 else x.to(f).expand(c.shape[0], *x.shape)
    y = torch.baddbmm(b[:, None], xs, w.transpose(1, 2))
    bound = torch.baddbmm(ba[:, None], xs.abs(), wa.transpose(1, 2))
    return y, bound


def _fp64_conv(x, w0, dw, c, b0, db, padding):
    import torch.nn.functional as F

    f = torch.float64
    ys, bs = [], []
    for k in range(c.shape[0]):
        w = w0.to(f) + torch.einsum("d,d...->...", c[k].to(f), dw.to(f))
        wa = w0.to(f).abs() + torch.einsum("d,d...->...", c[k].to(f).abs(), dw.to(f).abs())
        b = b0.to(f) + c[k].to(f) @ db.to(f)
        ba = b0.to(f).abs() + c[k].to(f).abs() @ db.to(f).abs()
        xk = (x if x.ndim == 4 else x[k]).to(f)
        ys.append(F.conv2d(xk, w, b, padding=padding))
        bs.append(F.conv2d(xk.abs(), wa, ba, padding=padding))
    return torch.stack(ys), torch.stack(bs)


def _torch_flags(precision: str) -> None:
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


OP_TOL = {"exact": 2e-5, "tf32": 4e-3, "bf16": 2e-2}  # relative to the bound; fp32 output


def section_ops(rep: Report, args) -> None:
    import torch.nn.functional as F

    from landscape_kernels import interpolate_weights, interpolated_conv2d, interpolated_linear

    dev = torch.device("cpu" if rep.dry else "cuda")
    impl = "triton"
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dev)

    rows: list[dict] = []
    if rep.dry:
        lin_cases = [("linear per-point", 3, 2, 20, 24, 18, False), ("linear shared", 5, 2, 20, 24, 18, True)]
        conv_cases = [("conv per-point", 3, 2, 2, 4, 6, 6, False), ("conv shared", 5, 2, 2, 3, 6, 6, True)]
        interp_case = (3, 2, 3000)
    else:
        lin_cases = [("linear per-point 512x512", 16, 2, 1024, 512, 512, False),
                     ("linear per-point 1024x1024", 16, 2, 1024, 1024, 1024, False),
                     ("linear shared 3072->512", 64, 2, 1024, 3072, 512, True)]
        conv_cases = [("conv per-point 64->64 32x32", 8, 2, 128, 64, 64, 32, False),
                      ("conv per-point 128->128 16x16", 8, 2, 128, 128, 128, 16, False),
                      ("conv shared 3->64 32x32", 64, 2, 256, 3, 64, 32, True)]
        interp_case = (16, 2, 11_689_512)  # ResNet-18's parameter count
    precisions = ("exact", "tf32", "bf16")

    def record(name, prec, flops, t_tr, t_ref, t_ref_mm, ok, worst):
        rows.append({"op": name, "precision": prec, "triton_ms": t_tr, "torch_ms": t_ref,
                     "torch_matmul_only_ms": t_ref_mm, "speedup": t_ref / t_tr,
                     "triton_tflops": flops / t_tr / 1e9, "torch_tflops": flops / t_ref / 1e9,
                     "check_ok": ok, "worst_error_vs_tolerance": worst})
        print(f"  {name:<32}{prec:<7} triton {t_tr:8.3f} ms  torch {t_ref:8.3f} ms ({t_ref_mm:8.3f} matmul only)"
              f"  x{t_ref / t_tr:5.2f}  err/tol {worst:.2f}", flush=True)

    for name, K, d, N, fin, fout, shared in lin_cases:
        w0, dw = rnd(fout, fin, scale=fin ** -0.5), rnd(d, fout, fin, scale=fin ** -0.5)
        b0, db, c = rnd(fout), rnd(d, fout), rnd(K, d)
        x = rnd(N, fin) if shared else rnd(K, N, fin)
        ref, bound = _fp64_linear(x, w0, dw, c, b0, db)
        flops = 2.0 * K * N * fin * fout
        for prec in precisions:
            _torch_flags(prec)
            y = interpolated_linear(x, w0, dw, c, b0, db, impl=impl, precision=prec)
            ok, worst = within(y, ref, bound, OP_TOL[prec])
            rep.check(f"{name} {prec} vs fp64", ok, f"worst {worst:.2f}x tolerance")
            t_tr = bench_ms(lambda: interpolated_linear(x, w0, dw, c, b0, db, impl=impl, precision=prec), rep.dry)
            cast = torch.bfloat16 if prec == "bf16" else torch.float32
            xs = (x if x.ndim == 3 else x.expand(K, *x.shape)).to(cast)
            b = b0 + c @ db

            def materialised():
                w = (w0 + torch.einsum("kd,doi->koi", c, dw)).to(cast)
                return torch.baddbmm(b[:, None].to(cast), xs, w.transpose(1, 2))

            wk = (w0 + torch.einsum("kd,doi->koi", c, dw)).to(cast)
            t_ref = bench_ms(materialised, rep.dry)
            t_mm = bench_ms(lambda: torch.baddbmm(b[:, None].to(cast), xs, wk.transpose(1, 2)), rep.dry)
            record(name, prec, flops, t_tr, t_ref, t_mm, ok, worst)

    for name, K, d, N, cin, cout, hw, shared in conv_cases:
        w0, dw = rnd(cout, cin, 3, 3, scale=(9 * cin) ** -0.5), rnd(d, cout, cin, 3, 3, scale=(9 * cin) ** -0.5)
        b0, db, c = rnd(cout), rnd(d, cout), rnd(K, d)
        x = rnd(N, cin, hw, hw) if shared else rnd(K, N, cin, hw, hw)
        ref, bound = _fp64_conv(x, w0, dw, c, b0, db, 1)
        flops = 2.0 * K * N * hw * hw * cout * cin * 9
        for prec in precisions:
            _torch_flags(prec)
            y = interpolated_conv2d(x, w0, dw, c, b0, db, padding=1, impl=impl, precision=prec)
            ok, worst = within(y, ref, bound, OP_TOL[prec])
            rep.check(f"{name} {prec} vs fp64", ok, f"worst {worst:.2f}x tolerance")
            t_tr = bench_ms(lambda: interpolated_conv2d(x, w0, dw, c, b0, db, padding=1, impl=impl,
                                                        precision=prec), rep.dry)
            cast = torch.bfloat16 if prec == "bf16" else torch.float32
            fmt = torch.channels_last if not rep.dry else torch.contiguous_format
            xs = [(x if x.ndim == 4 else x[k]).to(cast).contiguous(memory_format=fmt) for k in range(K)]
            b = b0 + c @ db

            def materialised():
                w = (w0 + torch.einsum("kd,d...->k...", c, dw)).to(cast)
                return [F.conv2d(xs[k], w[k], b[k].to(cast), padding=1) for k in range(K)]

            wk = (w0 + torch.einsum("kd,d...->k...", c, dw)).to(cast)
            t_ref = bench_ms(materialised, rep.dry)
            t_mm = bench_ms(lambda: [F.conv2d(xs[k], wk[k], b[k].to(cast), padding=1) for k in range(K)], rep.dry)
            record(name, prec, flops, t_tr, t_ref, t_mm, ok, worst)
    _torch_flags("exact")

    K, d, P = interp_case
    theta, dirs, c = rnd(P), rnd(d, P), rnd(K, d)
    out = interpolate_weights(theta, c, dirs, impl=impl)
    ref = theta.double() + c.double() @ dirs.double()
    bound = theta.double().abs() + c.double().abs() @ dirs.double().abs()
    ok, worst = within(out, ref, bound, 2e-6)
    rep.check("interpolate_weights vs fp64", ok, f"worst {worst:.2f}x tolerance")
    t_tr = bench_ms(lambda: interpolate_weights(theta, c, dirs, impl=impl), rep.dry)
    t_ref = bench_ms(lambda: torch.addmm(theta[None], c, dirs), rep.dry)
    buf = torch.empty(K * P, device=dev)
    src = torch.empty(K * P, device=dev)
    t_copy = bench_ms(lambda: buf.copy_(src), rep.dry)
    nbytes = 4.0 * (K * P + (d + 1) * P)
    rows.append({"op": f"interpolate_weights K={K} d={d} P={P}", "precision": "fp32", "triton_ms": t_tr,
                 "torch_ms": t_ref, "speedup": t_ref / t_tr, "triton_gbs": nbytes / t_tr / 1e6,
                 "copy_gbs": 8.0 * K * P / t_copy / 1e6, "check_ok": ok, "worst_error_vs_tolerance": worst})
    print(f"  interpolate_weights K={K} P={P}: triton {t_tr:.3f} ms, torch addmm {t_ref:.3f} ms, "
          f"{nbytes / t_tr / 1e6:.0f} GB/s vs copy {8.0 * K * P / t_copy / 1e6:.0f} GB/s", flush=True)
    rep.data["sections"]["ops"] = rows


# ----------------------------------------------------------------------------- 3. ensemble


def section_ensemble(rep: Report, args) -> None:
    import landscape_kernels as kernels
    from landscape_kernels import ensemble_metrics, ensemble_metrics_reference

    dev = torch.device("cpu" if rep.dry else "cuda")
    M, N, C = (3, 300, 10) if rep.dry else (10, 50_000, 100)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(M, N, C, generator=g) * 3).to(dev)
    labels = torch.randint(0, C, (N,), generator=g).to(dev)
    n_chk = min(N, 5000)
    got = ensemble_metrics(logits[:, :n_chk], labels[:n_chk])
    want = ensemble_metrics_reference(logits[:, :n_chk].cpu(), labels[:n_chk].cpu())
    ok = all(torch.allclose(getattr(got, f).cpu().double(), getattr(want, f), rtol=1e-4, atol=1e-5)
             for f in ("nll", "acc", "brier", "conf"))
    rep.check("ensemble_metrics vs fp64 reference", ok)
    t_op = bench_ms(lambda: ensemble_metrics(logits, labels), rep.dry)
    dst = torch.empty_like(logits)
    t_copy = bench_ms(lambda: dst.copy_(logits), rep.dry)
    nbytes = logits.numel() * logits.element_size()
    out = {"M": M, "N": N, "C": C, "op_ms": t_op, "copy_ms": t_copy,
           "op_read_gbs": nbytes / t_op / 1e6, "copy_gbs": 2 * nbytes / t_copy / 1e6,
           "bandwidth_share": (nbytes / t_op) / (2 * nbytes / t_copy)}
    print(f"  ensemble_metrics [{M}, {N}, {C}]: {t_op:.3f} ms, reads {out['op_read_gbs']:.0f} GB/s = "
          f"{out['bandwidth_share']:.0%} of a device copy ({out['copy_gbs']:.0f} GB/s)", flush=True)

    # The whole pipeline on stored-style predictions: batches already on the device, 4 random
    # member orders; the fused-op calls it makes are timed by wrapping the op.
    from landscape.evaluate import ensembles as le

    batch = 500 if rep.dry else 5000
    names = [f"m{i}" for i in range(M)]
    op_name = next((n for n in ("ensemble_metrics_orders", "ensemble_metrics") if hasattr(le, n)), None)
    op_time = [0.0]
    if op_name is not None:
        real = getattr(le, op_name)

        def timed(*a, **kw):
            sync()
            t = time.perf_counter()
            r = real(*a, **kw)
            sync()
            op_time[0] += time.perf_counter() - t
            return r

    def pipeline():
        batches = ((logits[:, i:i + batch], labels[i:i + batch]) for i in range(0, N, batch))
        return le.evaluate_ensemble(batches, names, orders=4)

    pipeline()  # warm-up (compiles)
    if op_name is not None:
        setattr(le, op_name, timed)
    try:
        sync()
        t0 = time.perf_counter()
        res = pipeline()
        sync()
        t_pipe = time.perf_counter() - t0
    finally:
        if op_name is not None:
            setattr(le, op_name, real)
    full = ensemble_metrics(logits, labels)  # the pipeline merges per-batch results of the same op
    ok = bool(np.allclose(res["acc"], full.acc.numpy(), rtol=0, atol=1e-9)
              and np.allclose(res["nll"], full.nll.numpy(), rtol=1e-5, atol=1e-7))
    out.update(pipeline_s=t_pipe, pipeline_op_s=op_time[0] if op_name else None, pipeline_orders=4,
               pipeline_over_op=(t_pipe / op_time[0]) if op_name and op_time[0] else None,
               kernels_version_ops=[n for n in dir(kernels) if n.startswith("ensemble")])
    rep.check("ensemble pipeline matches one fused call on all samples", ok and len(res["acc"]) == M)
    print(f"  evaluate_ensemble (4 orders, batches of {batch}): {t_pipe * 1e3:.1f} ms, of which fused-op calls "
          f"{op_time[0] * 1e3:.1f} ms ({out['pipeline_over_op'] or float('nan'):.2f}x)", flush=True)
    rep.data["sections"]["ensemble"] = out


# ----------------------------------------------------------------------------- 4. planes


def _plain_loop(model, center, dirs, coeffs, x, y, batch):
    """vector_to_parameters + forward, point by point: losses [n] (float64, CPU)."""
    from torch.nn.utils import vector_to_parameters

    m = copy.deepcopy(model).eval()
    out = []
    with torch.no_grad():
        for c in coeffs:
            vector_to_parameters(center + c[0] * dirs[0] + c[1] * dirs[1], m.parameters())
            tot = torch.zeros((), dtype=torch.float64, device=x.device)
            for s in range(0, x.shape[0], batch):
                tot += torch.nn.functional.cross_entropy(m(x[s:s + batch]), y[s:s + batch], reduction="sum").double()
            out.append(tot / x.shape[0])
    return torch.stack(out).cpu().numpy()


def _timed_points(run, n_total: int, first: int, cap_s: float) -> tuple[float, int, np.ndarray]:
    """Seconds for all n_total points of run(indices) -> losses: all of them if a first chunk
    projects under cap_s, else as many chunks as fit in cap_s, scaled. Returns (projected
    seconds, points timed, losses of the timed points)."""
    idx = np.arange(n_total)
    sync()
    t0 = time.perf_counter()
    losses = [run(idx[:first])]
    sync()
    t_first = time.perf_counter() - t0
    done = first
    if t_first * n_total / first <= cap_s:
        if first < n_total:
            losses.append(run(idx[first:]))
        done = n_total
    else:
        step = first
        while done < n_total and time.perf_counter() - t0 + t_first * (step / first) <= cap_s:
            losses.append(run(idx[done:done + step]))
            done += min(step, n_total - done)
    sync()
    elapsed = time.perf_counter() - t0
    return elapsed * n_total / done, done, np.concatenate(losses)


def section_planes(rep: Report, args) -> None:
    from common import forward_flops

    from landscape.core.checkpoints import Snapshot
    from landscape.core.data import load_data
    from landscape.core.models import build_model
    from landscape.core.params import ParamLayout
    from landscape.evaluate.engine import Evaluator
    from landscape.geometry.directions import random_direction
    from landscape.geometry.planes import plane_coefficients, plane_family

    dev = torch.device("cpu" if rep.dry else "cuda")
    workloads = [("small_cnn", "small_cnn", 64 if rep.dry else 10_000, 3 if rep.dry else 33),
                 ("resnet18", "torchvision:resnet18", 16 if rep.dry else 2_000, 2 if rep.dry else 33)]
    ev_params = inspect.signature(Evaluator).parameters
    # Tensor-core precisions, if the engine takes them, only after every exact variant has run.
    extra_precisions = ["tf32", "bf16"] if "precision" in ev_params else []
    batch = 250
    setups, rows = [], []
    for label, spec, n, grid in workloads:
        torch.manual_seed(0)
        data = load_data(f"synthetic:n={n},size=32,split=test", "test")
        model = build_model(spec, 10, data.input_shape)
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.running_var.uniform_(0.5, 2.0)
                    mod.running_mean.normal_(0, 0.1)
        model = model.eval().to(dev)
        center = Snapshot.from_model(model, "center")
        layout = ParamLayout.of(model)
        dirs = torch.stack([random_direction(layout, center.params.cpu(), "filter", s) for s in (0, 1)])
        xs = np.linspace(-1, 1, grid)
        coeffs = plane_coefficients(xs, xs)
        probe = min(batch, n)
        flops = forward_flops(model, data.x[:probe].to(dev)) * n / probe
        res = {"model": label, "samples": n, "points": len(coeffs), "parameters": layout.numel,
               "gflop_per_point": flops / 1e9, "variants": {}}
        print(f"  {label}: {grid}x{grid} plane, {n} samples, {layout.numel:,} parameters, "
              f"{flops / 1e9:.2f} GFLOP per point", flush=True)
        setups.append(dict(label=label, grid=grid, data=data, model=model, center=center, dirs=dirs, coeffs=coeffs,
                           family=plane_family(center, dirs.to(center.params.device)), flops=flops, res=res))
        rows.append(res)
    rep.data["sections"]["planes"] = rows

    def left() -> float:
        return args.budget - (time.perf_counter() - T_START)

    def evaluator(st, batched, precision=None):
        kw = {"precision": precision} if precision is not None else {}
        return Evaluator(st["model"], test=st["data"], batch_size=batch, device=dev, batched=batched, **kw)

    def run_batched(st, precision=None):
        ev = evaluator(st, True, precision)
        n_pts, k = len(st["coeffs"]), min(len(st["coeffs"]), ev.points_per_pass)
        t0 = time.perf_counter()
        ev.run(st["family"], st["coeffs"], indices=np.arange(k))  # compile + autotune
        sync()
        warm = time.perf_counter() - t0
        t, done, losses = _timed_points(lambda idx: ev.run(st["family"], st["coeffs"], indices=idx)["test_loss"],
                                        n_pts, k, min(args.plane_cap, max(left() - 10, 1)))
        return {"seconds": t, "points_timed": done, "warmup_s": warm, "points_per_pass": ev.points_per_pass}, losses

    def run_per_point(st):
        ev = evaluator(st, False)
        ev.run(st["family"], st["coeffs"], indices=np.arange(1))
        first = min(len(st["coeffs"]), 4 if rep.dry else 8)
        t, done, _ = _timed_points(lambda idx: ev.run(st["family"], st["coeffs"], indices=idx)["test_loss"],
                                   len(st["coeffs"]), first, min(args.plane_cap, max(left() - 10, 1)))
        return {"seconds": t, "points_timed": done}, None

    def run_plain(st):
        x, y = st["data"].x.to(dev), st["data"].y.to(dev)
        c_t = torch.as_tensor(st["coeffs"], dtype=torch.float32, device=dev)
        p0, d0 = st["center"].params.to(dev), st["dirs"].to(dev)
        _plain_loop(st["model"], p0, d0, c_t[:1], x, y, batch)
        first = min(len(c_t), 4 if rep.dry else 8)
        t, done, losses = _timed_points(lambda idx: _plain_loop(st["model"], p0, d0, c_t[idx], x, y, batch),
                                        len(c_t), first, min(args.plane_cap, max(left() - 10, 1)))
        return {"seconds": t, "points_timed": done}, losses

    def run_loss_landscapes(st):
        import loss_landscapes
        from loss_landscapes.metrics import Loss

        x, y = st["data"].x.to(dev), st["data"].y.to(dev)
        p0, d0 = st["center"].params.to(dev), st["dirs"].to(dev)
        steps = st["grid"] if rep.dry else 8
        ends = []
        for j in range(2):
            m = copy.deepcopy(st["model"])
            torch.nn.utils.vector_to_parameters(p0 + d0[j], m.parameters())
            ends.append(m)
        metric = Loss(torch.nn.functional.cross_entropy, x, y)
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            loss_landscapes.planar_interpolation(copy.deepcopy(st["model"]), ends[0], ends[1], metric, steps=steps)
        sync()
        return {"seconds": (time.perf_counter() - t0) * len(st["coeffs"]) / steps ** 2,
                "points_timed": steps ** 2}, None

    plans = []
    for st in setups:
        plans += [(st, "toolkit batched (exact)", lambda st=st: run_batched(st)),
                  (st, "toolkit per-point", lambda st=st: run_per_point(st)),
                  (st, "plain per-point loop", lambda st=st: run_plain(st)),
                  (st, "loss-landscapes", lambda st=st: run_loss_landscapes(st))]
    for prec in extra_precisions:
        for st in setups:
            plans.append((st, f"toolkit batched ({prec})", lambda st=st, prec=prec: run_batched(st, prec)))
    losses: dict = {}
    for st, name, fn in plans:
        v = st["res"]["variants"]
        if left() < 20:
            v[name] = {"seconds": None, "note": "skipped: time budget"}
            print(f"    {st['label']}: {name:<28}skipped (time budget)", flush=True)
            continue
        got = None
        try:
            v[name], got = fn()
        except ImportError:
            v[name] = {"seconds": None, "note": "not installed"}
        except Exception as exc:  # reported; the other variants still run
            v[name] = {"seconds": None, "note": f"error: {type(exc).__name__}: {exc}"}
            rep.error(f"planes: {st['label']}: {name}", exc)
        if got is not None:
            losses[(st["label"], name)] = got
        desc = f"{v[name]['seconds']:9.2f} s ({v[name].get('points_timed', 0)} points timed)" \
            if v[name].get("seconds") else v[name].get("note", "")
        print(f"    {st['label']}: {name:<28}{desc}", flush=True)

    for st in setups:
        res, label = st["res"], st["label"]
        plain = losses.get((label, "plain per-point loop"))
        batched = losses.get((label, "toolkit batched (exact)"))
        if plain is not None and batched is not None:
            k = min(len(plain), len(batched))
            rel = float(np.max(np.abs(batched[:k] - plain[:k]) / np.maximum(np.abs(plain[:k]), 1e-12)))
            res["batched_vs_plain_max_rel_diff"] = rel
            rep.check(f"{label}: batched plane losses match the plain loop", rel <= 1e-3, f"max rel diff {rel:.2e}")
        else:
            rep.check(f"{label}: batched plane losses match the plain loop", False, "a variant did not run")
        base = (res["variants"].get("plain per-point loop") or {}).get("seconds")
        for v in res["variants"].values():
            if v.get("seconds"):
                v["points_per_s"] = res["points"] / v["seconds"]
                v["vs_plain_loop"] = base / v["seconds"] if base else None
                v["tflops"] = st["flops"] * res["points"] / v["seconds"] / 1e12


# ----------------------------------------------------------------------------- main


def main() -> int:
    args = ARGS or parse_args()
    rep = Report(args.dry_run)
    out = Path(args.out or ("gpu_check_dry.json" if args.dry_run else "gpu_check.json"))
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the plumbing on the CPU", file=sys.stderr)
        return 2
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu",
            "interpreter": os.environ.get("TRITON_INTERPRET", "0")}
    rep.data["environment"] = info
    print(f"gpu_check: {info}", flush=True)
    t_all = T_START
    for name, fn in (("tests", section_tests), ("ops", section_ops), ("ensemble", section_ensemble),
                     ("planes", section_planes)):
        if name in args.skip:
            continue
        print(f"\n== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            fn(rep, args)
        except Exception as exc:  # a broken section is reported, the rest still run
            rep.error(name, exc)
        rep.data.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
    rep.data["total_seconds"] = time.perf_counter() - t_all
    rep.data["ok"] = rep.ok
    out.write_text(json.dumps(rep.data, indent=1, default=str))
    try:
        print(summary_table(rep.data))
    except Exception as exc:  # the JSON file has everything
        print(f"(summary table failed: {type(exc).__name__}: {exc})")
    print(f"\nwritten {out} ({rep.data['total_seconds']:.0f} s); "
          f"{'all checks passed' if rep.ok else 'SOME CHECKS FAILED'}")
    return 0 if rep.ok else 1


def summary_table(d: dict) -> str:
    lines = ["", f"{'check':<60}{'result':>8}"]
    for c in d["checks"]:
        lines.append(f"{c['name'][:60]:<60}{'ok' if c['ok'] else 'FAILED':>8}")
    for e in d["errors"]:
        lines.append(f"{'section ' + e['section'] + ' broke':<60}{'ERROR':>8}")
    ops = d["sections"].get("ops") or []
    if ops:
        lines += ["", f"{'op':<34}{'prec':<7}{'triton ms':>11}{'torch ms':>10}{'speed-up':>10}{'TFLOP/s':>9}"]
        for r in ops:
            tf = f"{r['triton_tflops']:9.1f}" if "triton_tflops" in r else f"{r.get('triton_gbs', 0):6.0f}GB/s"
            lines.append(f"{r['op'][:34]:<34}{r['precision']:<7}{r['triton_ms']:11.3f}{r['torch_ms']:10.3f}"
                         f"{r['speedup']:10.2f}{tf}")
    ens = d["sections"].get("ensemble")
    if ens:
        lines += ["", f"ensemble [{ens['M']}, {ens['N']}, {ens['C']}]: op {ens['op_ms']:.3f} ms = "
                      f"{ens['bandwidth_share']:.0%} of copy bandwidth; pipeline {ens['pipeline_s'] * 1e3:.1f} ms "
                      f"= {ens['pipeline_over_op'] or float('nan'):.2f}x its op calls"]
    for p in d["sections"].get("planes") or []:
        lines += ["", f"{p['model']} plane, {p['points']} points, {p['samples']} samples, "
                      f"{p['gflop_per_point']:.2f} GFLOP per point (batched vs plain max rel diff "
                      f"{p.get('batched_vs_plain_max_rel_diff', float('nan')):.1e})",
                  f"  {'variant':<28}{'seconds':>10}{'vs plain':>10}{'TFLOP/s':>9}{'timed pts':>11}"]
        for name, v in p["variants"].items():
            if v.get("seconds"):
                vs = f"{v['vs_plain_loop']:10.2f}" if v.get("vs_plain_loop") else f"{'-':>10}"
                tf = f"{v['tflops']:9.2f}" if "tflops" in v else f"{'-':>9}"
                lines.append(f"  {name:<28}{v['seconds']:10.2f}{vs}{tf}{v.get('points_timed', 0):11d}")
            else:
                lines.append(f"  {name:<28}{'-':>10}  {v.get('note', '')}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
