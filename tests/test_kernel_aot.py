"""Ahead-of-time compile of every Triton kernel for CUDA sm_80 and sm_90, with no GPU.

The interpreter runs kernels as numpy and accepts code the compiler rejects (dtype mismatches in
tl.dot, shared memory a configuration cannot have, unsupported ops); this test compiles each
kernel down to a cubin with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``
for every autotuning configuration and operand mode, and the ensemble kernel for the launches its
public op makes (recorded in the interpreter, so this test follows that kernel's signature as it
changes), and fails on any compile error, on shared memory beyond the architecture's limit, or on
a kernel in kernels/landscape_kernels/ that no job compiles. Register use and
spills (from Triton's bundled ``ptxas -v``) are printed: ``pytest -s tests/test_kernel_aot.py``.

Compilation runs in a subprocess without TRITON_INTERPRET: with the interpreter on (conftest sets
it), ``triton.jit`` returns InterpretedFunction objects that cannot be compiled. The subprocess is
this file run as a script (``python tests/test_kernel_aot.py [--arch 80 90] [--quick]``).
Compiled kernels land in Triton's cache (~/.triton/cache), so reruns take seconds.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = (80, 90)
# Largest shared memory one block may opt into (bytes): A100 (sm_80) 163 KiB, H100 (sm_90) 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


# ----------------------------------------------------------------------------- the jobs


def _jobs(archs: tuple[int, ...], quick: bool, recorded: list[dict]) -> list[dict]:
    """One dict per (kernel, configuration, operand mode, arch): picklable, no triton objects.
    `values` holds constexpr values (and, for recorded launches, the scalar arguments too)."""
    from landscape_kernels import launch

    def with_interpreter(configs):  # the interpreter's tiles may also be a GPU configuration
        return list(dict.fromkeys(list(configs) + [launch.INTERPRETER_GEMM]))

    linear, conv = with_interpreter(launch.LINEAR_CONFIGS), with_interpreter(launch.CONV2D_CONFIGS)
    pointwise = list(dict.fromkeys(list(launch.POINTWISE_CONFIGS) + [launch.INTERPRETER_POINTWISE]))
    if quick:
        linear, conv, pointwise = linear[:1], conv[:1], pointwise[:1]
    # (DOT mode, dtype of the float tensors): every mode the launchers can pick on a GPU.
    modes = [("ieee", "fp32"), ("tf32", "fp32"), ("bf16", "fp32"), ("fp16", "fp16"), ("bf16", "bf16"),
             ("ieee", "bf16"), ("bf16", "fp16")]
    jobs: list[dict] = []

    def add(module, kernel, label, ptr, default_ptr, values, num_warps, num_stages, **extra):
        for arch in archs:
            jobs.append(dict(module=module, kernel=kernel, label=label, ptr=ptr, default_ptr=default_ptr,
                             values=values, num_warps=num_warps, num_stages=num_stages, arch=arch, **extra))

    def tiles(cfg):
        return f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} g{cfg.group_m} w{cfg.num_warps} s{cfg.num_stages}"

    for cfg in pointwise:
        for dt in ("fp32", "bf16"):
            add("landscape_kernels.interp_weights", "_interpolate_kernel", f"P{cfg.block_p} w{cfg.num_warps} {dt}",
                {"c_ptr": "*fp32"}, f"*{dt}", cfg.meta(), cfg.num_warps, 1)
    for cfg in linear:
        for dot, dt in modes:
            add("landscape_kernels.interp_linear", "_linear_kernel", f"{tiles(cfg)} {dot}/{dt}", {"c_ptr": "*fp32"}, f"*{dt}",
                dict(HAS_B0=True, HAS_DB=True, DOT=dot, **cfg.meta()), cfg.num_warps, cfg.num_stages)
    geometries = [dict(KH=3, KW=3, SH=1, SW=1, PH=1, PW=1, DH=1, DW=1)]
    extra_geometries = [dict(KH=1, KW=1, SH=2, SW=2, PH=0, PW=0, DH=1, DW=1),  # ResNet downsample
                        dict(KH=7, KW=7, SH=2, SW=2, PH=3, PW=3, DH=1, DW=1)]  # ResNet stem
    for cfg in conv:
        for dot, dt in modes:
            for geo in geometries + (extra_geometries if dot == "ieee" and not quick else []):
                add("landscape_kernels.interp_conv2d", "_conv2d_kernel", f"{tiles(cfg)} {dot}/{dt} k{geo['KH']}s{geo['SH']}",
                    {"c_ptr": "*fp32"}, f"*{dt}", dict(HAS_B0=True, HAS_DB=True, DOT=dot, **cfg.meta(), **geo),
                    cfg.num_warps, cfg.num_stages)
    for rec in recorded:  # launches recorded in the interpreter (the ensemble kernel)
        add(rec["module"], rec["kernel"], rec["label"], rec["ptr"], "*fp32", rec["values"],
            rec["num_warps"], rec["num_stages"], label_constexprs=True)
    return jobs


def _compile(job: dict) -> dict:
    """Compile one job; return its figures or its error (never raises)."""
    import contextlib
    import importlib
    import io
    import tempfile

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    out = {k: job[k] for k in ("kernel", "label", "arch")}
    try:
        fn = getattr(importlib.import_module(job["module"]), job["kernel"])
        sig, attrs, constexprs = {}, {}, {}
        values = job["values"]
        for i, name in enumerate(fn.arg_names):
            v = values.get(name)
            if i in fn.constexprs:
                sig[name] = "constexpr"
                if name not in values:
                    raise TypeError(f"no value for constexpr {name} of {job['kernel']}")
                constexprs[name] = v
            elif name in job["ptr"] or name.endswith("_ptr"):
                sig[name] = job["ptr"].get(name, job["default_ptr"])
                attrs[(i,)] = [["tt.divisibility", 16]]  # what a launch with aligned tensors gets
            elif isinstance(v, float):
                sig[name] = "fp32"
            else:
                sig[name] = "i64" if isinstance(v, int) and not -2**31 <= v < 2**31 else "i32"
        if job.get("label_constexprs"):
            out["label"] += " " + " ".join(f"{n}={v}" for n, v in constexprs.items()) + f" w{job['num_warps']}"
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
        # n_regs/n_spills are only filled in when a driver loads the cubin: read the `ptxas -v` log
        # of the compile itself (Triton prints it with this knob), so ptxas runs once per job.
        knobs.nvidia.dump_ptxas_log = True
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            k = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32),
                               options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
        out["shared"] = int(k.metadata.shared)
        log = printed.getvalue()
        if "registers" not in log:  # a cache hit ran no ptxas: ask it
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            try:
                log = subprocess.run([get_ptxas(job["arch"]).path, "-v",
                                      f"--gpu-name={sm_arch_from_capability(job['arch'])}", f.name, "-o", os.devnull],
                                     capture_output=True, text=True, check=True).stderr
            finally:
                os.unlink(f.name)
        regs = re.search(r"Used (\d+) registers", log)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
        out["n_regs"] = int(regs.group(1)) if regs else None
        out["n_spills"] = int(spills.group(1)) + int(spills.group(2)) if spills else None
        out["ok"] = True
    except Exception as exc:  # reported per job
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {str(exc).strip()[:2000]}"
    return out


def compile_all(archs: tuple[int, ...] = ARCHS, quick: bool = False, workers: int | None = None,
                recorded: list[dict] | None = None) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor

    jobs = _jobs(archs, quick, recorded or [])
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    if workers == 1:
        return [_compile(j) for j in jobs]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(_compile, jobs))


def table(results: list[dict]) -> str:
    lines = [f"{'kernel':<26}{'configuration':<44}{'sm':>4}{'regs':>6}{'spills':>8}{'smem KiB':>10}"]
    for r in results:
        if r["ok"]:
            lines.append(f"{r['kernel']:<26}{r['label']:<44}{r['arch']:>4}{r['n_regs'] or '?':>6}"
                         f"{r['n_spills'] if r['n_spills'] is not None else '?':>8}{r['shared'] / 1024:>10.1f}")
        else:
            lines.append(f"{r['kernel']:<26}{r['label']:<44}{r['arch']:>4}  FAILED: {r['error'].splitlines()[0]}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- recorded launches

_PTR = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16", "float64": "*fp64", "int64": "*i64",
        "int32": "*i32", "int16": "*i16", "int8": "*i8", "uint8": "*u8", "bool": "*i1"}
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


def record_ensemble_launches(quick: bool = False) -> list[dict]:
    """Launches of kernels/landscape_kernels/ensemble.py's kernel as its public op makes them, recorded in the
    interpreter without running the kernel: tensor dtypes, scalars, constexprs, warps. Recording
    (rather than restating the kernel's signature here) keeps this test right while that kernel
    changes. Needs TRITON_INTERPRET=1."""
    import torch

    from landscape_kernels import ensemble as em

    kernel = em._ensemble_metrics_kernel
    seen: dict[str, dict] = {}
    case: dict = {}

    def run(*args, grid, warmup, **kwargs):  # stands in for InterpretedFunction.run
        vals = dict(zip(kernel.arg_names, args), **kwargs)
        ptr = {n: _PTR[str(v.dtype).replace("torch.", "")] for n, v in vals.items() if isinstance(v, torch.Tensor)}
        values = {n: v for n, v in vals.items() if not isinstance(v, torch.Tensor) and n not in _LAUNCH_OPTIONS}
        for n, v in values.items():
            if not isinstance(v, (bool, int, float, str)):
                raise TypeError(f"cannot record argument {n}={v!r}")
        rec = dict(module="landscape_kernels.ensemble", kernel=kernel.__name__,
                   label=f"C={case['C']} {case['dtype']}", ptr=ptr, values=values,
                   num_warps=kwargs.get("num_warps", 4), num_stages=kwargs.get("num_stages", 3))
        seen.setdefault(json.dumps([ptr, {n: v for n, v in values.items() if n.isupper()},
                                    rec["num_warps"]], sort_keys=True), rec)

    kernel.run = run  # instance attribute: shadows the class's run for this kernel only
    try:
        for C in ((10,) if quick else (10, 100, 1000, 8192)):
            for dtype in ((torch.float32,) if quick else (torch.float32, torch.bfloat16)):
                case.update(C=C, dtype=str(dtype).replace("torch.", ""))
                n = 1024 if C <= 1000 else 64
                logits = torch.randn(3, n, C).to(dtype)
                labels = torch.randint(0, C, (n,))
                calls = [lambda: em.ensemble_metrics(logits, labels, impl="triton")]
                if hasattr(em, "ensemble_metrics_orders"):  # several orders, with temperatures
                    calls.append(lambda: em.ensemble_metrics_orders(
                        logits, labels, [[0, 1, 2], [2, 0, 1]], temperatures=torch.ones(3), impl="triton"))
                for call in calls:
                    try:
                        call()
                    except Exception:  # the kernel did not run: its outputs are garbage
                        pass
    finally:
        del kernel.run
    return list(seen.values())


# ----------------------------------------------------------------------------- the test


def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path) -> None:
    import pytest

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "yes", "on"):
        pytest.skip("records the ensemble kernel's launches in the interpreter (TRITON_INTERPRET=1)")
    recorded = record_ensemble_launches()
    assert recorded, "the ensemble op launched no kernel"
    (tmp_path / "recorded.json").write_text(json.dumps(recorded))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--json", "--recorded", str(tmp_path / "recorded.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode in (0, 1), f"compile worker failed:\n{r.stderr[-4000:]}"
    results = json.loads(r.stdout.strip().splitlines()[-1])
    print("\n" + table(results))
    failed = [r for r in results if not r["ok"]]
    assert not failed, "\n".join(f"{f['kernel']} [{f['label']}] sm_{f['arch']}: {f['error']}" for f in failed)
    over = [r for r in results if r["shared"] > SHARED_LIMIT[r["arch"]]]
    assert not over, "shared memory over the limit: " + ", ".join(
        f"{r['kernel']} [{r['label']}] sm_{r['arch']}: {r['shared']} B" for r in over)
    assert {r["kernel"] for r in results} == discover_kernels(), "a kernel in kernels/landscape_kernels/ is not compiled here"
    assert {r["arch"] for r in results} == set(ARCHS)


def discover_kernels() -> set[str]:
    """Names of the Triton kernels (jit functions that read a program id) in kernels/landscape_kernels/*.py."""
    import importlib
    import inspect
    import pkgutil

    import landscape_kernels as kernels

    found = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        mod = importlib.import_module(f"landscape_kernels.{info.name}")
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            if (type(obj).__name__ in ("JITFunction", "InterpretedFunction") and inspect.isfunction(fn)
                    and fn.__module__ == mod.__name__ and "program_id" in inspect.getsource(fn)):
                found.add(name)
    return found


def test_every_kernel_is_covered() -> None:
    """A new kernel in kernels/landscape_kernels/ must be added to the compile jobs above."""
    import pytest

    pytest.importorskip("triton")
    covered = {"_interpolate_kernel", "_linear_kernel", "_conv2d_kernel", "_ensemble_metrics_kernel"}
    assert discover_kernels() == covered


def _interpreted_kernels_cannot_compile() -> bool:
    """Why the subprocess: under TRITON_INTERPRET=1 the kernels are not JITFunctions."""
    from landscape_kernels import interp_linear

    return type(interp_linear._linear_kernel).__name__ == "InterpretedFunction"


def test_interpreter_objects_are_not_compilable() -> None:
    """Documents the reason for the subprocess (conftest turns the interpreter on)."""
    import pytest

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "yes", "on"):
        pytest.skip("interpreter is off in this process")
    assert _interpreted_kernels_cannot_compile()


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, ROOT)
    ap = argparse.ArgumentParser(description="AOT-compile every Triton kernel for CUDA targets (no GPU needed).")
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--quick", action="store_true", help="one configuration per kernel")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON line")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--recorded", help="JSON file of recorded ensemble launches (default: record them now)")
    ap.add_argument("--record", action="store_true", help="(internal) print recorded launches; needs the interpreter")
    a = ap.parse_args()
    interp = os.environ.get("TRITON_INTERPRET", "0") in ("1", "true", "yes", "on")
    if a.record:
        if not interp:
            sys.exit("--record needs TRITON_INTERPRET=1")
        print(json.dumps(record_ensemble_launches(a.quick)))
        sys.exit(0)
    if interp:
        sys.exit("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    if a.recorded:
        with open(a.recorded) as f:
            recorded = json.load(f)
    else:
        env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, os.path.abspath(__file__), "--record"] + (["--quick"] if a.quick else [])
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        recorded = json.loads(r.stdout.strip().splitlines()[-1])
    res = compile_all(tuple(a.arch), a.quick, a.workers, recorded)
    print(json.dumps(res) if a.json else table(res))
    sys.exit(0 if all(r["ok"] for r in res) else 1)
