"""Time one 2D loss plane five ways on the same model, data and grid, in one run.

    python benchmarks/surface.py [--grid 9] [--samples 1000] [--workload cnn|mlp|both] [--device cpu|cuda]

Variants: the toolkit engine (its default path for the device, and each of its two paths:
per-point with BN folding, and K points per pass through the interpolated-weight kernels), a
plain per-point loop (`vector_to_parameters` + forward), the `loss-landscapes` package's
`planar_interpolation` (if installed: `pip install loss-landscapes`), and torch.func `vmap`
over the grid points. It prints seconds, the speed-up over the plain loop, and the achieved
share of the machine's fp32 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn.utils import vector_to_parameters

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import forward_flops, matmul_rate, timeit  # noqa: E402

from landscape.analyses.grids import plane  # noqa: E402
from landscape.core.checkpoints import Snapshot  # noqa: E402
from landscape.core.data import load_data  # noqa: E402
from landscape.core.models import build_model  # noqa: E402
from landscape.core.params import ParamLayout  # noqa: E402
from landscape.evaluate.engine import Evaluator  # noqa: E402
from landscape.geometry.directions import random_direction  # noqa: E402
from landscape.geometry.planes import plane_coefficients  # noqa: E402


def workload(name: str, samples: int, device: str):
    if name == "cnn":
        data = load_data(f"synthetic:n={samples},size=32,split=test", "test")
        model = build_model("small_cnn", 10, data.input_shape)
    else:
        data = load_data(f"synthetic:n={samples},size=32,split=test", "test")
        model = build_model("mlp", 10, data.input_shape)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    return model.eval().to(device), data


def bench(name: str, args, rate: float) -> None:
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model, data = workload(name, args.samples, args.device)
    center = Snapshot.from_model(model, "center")
    layout = ParamLayout.of(model)
    dirs = torch.stack([random_direction(layout, center.params.cpu(), "filter", s) for s in (0, 1)]).to(dev)
    xs = ys = np.linspace(-1, 1, args.grid)
    coeffs = torch.as_tensor(plane_coefficients(xs, ys), dtype=torch.float32, device=dev)
    n_points = len(coeffs)
    x, y = data.x.to(dev), data.y.to(dev)
    results, times = {}, {}

    def toolkit(batched):
        ev = Evaluator(model, test=data, batch_size=250, device=dev, batched=batched)

        def run():
            results[f"toolkit-{batched}"] = plane(ev, center, dirs, xs, ys, chunk=args.chunk)["test_loss"]
        return run

    plain = copy.deepcopy(model).eval()

    def plain_loop():
        out = []
        with torch.no_grad():
            for c in coeffs:
                vector_to_parameters(center.params + c[0] * dirs[0] + c[1] * dirs[1], plain.parameters())
                out.append(torch.nn.functional.cross_entropy(plain(x), y).item())
        results["plain"] = np.asarray(out).reshape(len(xs), len(ys))

    def vmapped():
        names = [n for n, _ in model.named_parameters()]
        buffers = dict(model.named_buffers())

        def loss_at(flat):
            params = {n: layout.view(flat, n) for n in names}
            return torch.nn.functional.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

        out = []
        with torch.no_grad():
            for start in range(0, n_points, args.k):
                c = coeffs[start:start + args.k]
                pts = center.params.unsqueeze(0) + c @ dirs
                out.append(vmap(loss_at)(pts))
        results["vmap"] = torch.cat(out).cpu().numpy().reshape(len(xs), len(ys))

    variants = [("toolkit (default path)", toolkit(None)), ("toolkit per-point path", toolkit(False)),
                ("toolkit K points per pass", toolkit(True)), ("plain per-point loop", plain_loop),
                ("torch.func vmap", vmapped)]
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Loss

        ends = []
        for j in range(2):  # planar_interpolation spans start + i/steps·(end1−start) + j/steps·(end2−start)
            m = copy.deepcopy(model)
            vector_to_parameters(center.params + dirs[j], m.parameters())
            ends.append(m)

        def ll():
            start = copy.deepcopy(model).eval()
            metric = Loss(torch.nn.functional.cross_entropy, x, y)
            with torch.no_grad():
                results["loss-landscapes"] = loss_landscapes.planar_interpolation(start, ends[0], ends[1], metric,
                                                                                  steps=args.grid)
        variants.append(("loss-landscapes planar", ll))
    except ImportError:
        print("(loss-landscapes not installed: pip install loss-landscapes)")

    for label, fn in variants:
        times[label] = timeit(fn, repeats=args.repeats, warmup=0)
    flops = forward_flops(plain, x) * n_points
    base = times["plain per-point loop"]
    print(f"\n{name}: plane {args.grid}x{args.grid} = {n_points} points, {layout.numel:,} parameters, "
          f"{args.samples} samples, {flops / n_points / 1e9:.2f} GFLOP per point, device {dev}, vmap K={args.k}")
    print(f"{'variant':<28}{'seconds':>9}{'vs plain loop':>15}{'GFLOP/s':>10}{'share of matmul':>17}")
    for label, t in times.items():
        print(f"{label:<28}{t:>9.2f}{base / t:>14.2f}x{flops / t / 1e9:>10.1f}{flops / t / rate:>16.0%}")
    print("  (GFLOP/s counts the FLOPs of one full forward pass per point; the K-points path computes the\n"
          "   first layer once per direction instead of once per point, so its rate can exceed the matmul rate)")
    if args.process and dev.type == "cpu":
        whole_process(name, model, data, args, flops, rate)
    ref = results["plain"]
    for key in ("toolkit-None", "toolkit-False", "toolkit-True", "vmap"):
        err = np.max(np.abs(results[key] - ref) / np.abs(ref))
        print(f"  max relative difference {key} vs plain loop: {err:.1e}")


PLAIN_SCRIPT = """
import sys, torch
from torch.nn.utils import vector_to_parameters
from landscape.core.models import build_model
model = build_model(sys.argv[1], 10, (3, 32, 32))
model.load_state_dict(torch.load("m.pt"))
model.eval()
d = torch.load("d.pt")
center = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
g = torch.Generator().manual_seed(0)
dirs = torch.randn(2, center.numel(), generator=g)
n = int(sys.argv[2])
with torch.no_grad():
    for i in range(n):
        for j in range(n):
            vector_to_parameters(center + (i / n) * dirs[0] + (j / n) * dirs[1], model.parameters())
            torch.nn.functional.cross_entropy(model(d["x"]), d["y"]).item()
"""


def whole_process(name: str, model, data, args, flops: float, rate: float) -> None:
    """`landscape plane` as users run it (a fresh process, default allocator settings of the
    environment, start-up included) against a plain loop script in a fresh process."""
    import subprocess
    import tempfile
    import time

    spec = "small_cnn" if name == "cnn" else "mlp"
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(model.cpu().state_dict(), os.path.join(tmp, "m.pt"))
        torch.save({"x": data.x, "y": data.y}, os.path.join(tmp, "d.pt"))
        with open(os.path.join(tmp, "plain.py"), "w") as f:
            f.write(PLAIN_SCRIPT)
        g = f"-1:1:{args.grid}"
        commands = {
            "landscape plane (process)": [sys.executable, "-m", "landscape", "plane", "m.pt", "--random", "filter",
                                          "--x", g, "--y", g, "--model", spec, "--num-classes", "10",
                                          "--test-data", "tensors:d.pt", "--bn", "keep", "--quiet"],
            "plain loop (process)": [sys.executable, "plain.py", spec, str(args.grid)],
        }
        times = {}
        for label, cmd in commands.items():
            t = time.perf_counter()
            subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
            times[label] = time.perf_counter() - t
    base = times["plain loop (process)"]
    for label, t in times.items():
        print(f"{label:<28}{t:>9.2f}{base / t:>14.2f}x{flops / t / 1e9:>10.1f}{flops / t / rate:>16.0%}")
    print("  (whole processes: start-up and loading included, as a user runs them)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=9)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--workload", choices=("cnn", "mlp", "both"), default="both")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--k", type=int, default=9, help="points per vmap call")
    ap.add_argument("--chunk", type=int, default=None, help="toolkit chunk (default: the engine's choice)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--no-process", dest="process", action="store_false",
                    help="skip timing `landscape plane` and the plain loop as whole processes")
    args = ap.parse_args()
    rate = matmul_rate(2048 if args.device == "cuda" else 1024, args.device)
    print(f"measured fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    for name in (("cnn", "mlp") if args.workload == "both" else (args.workload,)):
        bench(name, args, rate)


if __name__ == "__main__":
    main()
