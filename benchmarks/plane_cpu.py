"""Time a 2D loss plane: the toolkit's engine against a plain per-point loop, in one run.

    python benchmarks/plane_cpu.py [--grid 5] [--samples 1000] [--model small_cnn]

The plain loop is what most scripts do: `vector_to_parameters` into the model, then an
eval-mode forward over the data for every grid point. Both evaluate the same points on the
same data; the script checks that they agree and prints the speed-up and the engine's share of
the machine's measured fp32 matmul rate.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=5, help="points per axis")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--size", type=int, default=32, help="image side")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    torch.manual_seed(0)
    data = load_data(f"synthetic:n={args.samples},size={args.size},split=test", "test")
    model = build_model(args.model, 10, data.input_shape).eval()
    # non-trivial BN statistics, as in a trained network
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
    center = Snapshot.from_model(model, "center")
    layout = ParamLayout.of(model)
    dirs = torch.stack([random_direction(layout, center.params, "filter", s) for s in (0, 1)])
    xs = ys = np.linspace(-1, 1, args.grid)
    coeffs = torch.as_tensor(plane_coefficients(xs, ys), dtype=torch.float32)
    n_points = len(coeffs)

    evaluator = Evaluator(model, test=data, batch_size=250)
    result = {}

    def toolkit() -> None:
        result["toolkit"] = plane(evaluator, center, dirs, xs, ys)["test_loss"]

    plain_model = build_model(args.model, 10, data.input_shape)
    plain_model.load_state_dict(model.state_dict())
    plain_model.eval()

    def plain_loop() -> None:
        losses = []
        with torch.no_grad():
            for c in coeffs:
                vector_to_parameters(center.params + c[0] * dirs[0] + c[1] * dirs[1], plain_model.parameters())
                out = plain_model(data.x)
                losses.append(torch.nn.functional.cross_entropy(out, data.y).item())
        result["plain"] = np.asarray(losses).reshape(len(xs), len(ys))

    t_toolkit = timeit(toolkit, repeats=args.repeats, warmup=0)
    t_plain = timeit(plain_loop, repeats=args.repeats, warmup=0)
    agree = np.max(np.abs(result["toolkit"] - result["plain"]) / np.abs(result["plain"]))
    flops = forward_flops(plain_model, data.x[: args.samples]) * n_points
    rate = matmul_rate()

    print(f"plane {args.grid}x{args.grid} = {n_points} points, model {args.model} "
          f"({layout.numel:,} parameters), {args.samples} images {args.size}x{args.size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'variant':<28}{'seconds':>10}{'s/point':>10}{'GFLOP/s':>10}{'share of matmul':>18}")
    for name, t in (("toolkit engine", t_toolkit), ("plain per-point loop", t_plain)):
        print(f"{name:<28}{t:>10.2f}{t / n_points:>10.3f}{flops / t / 1e9:>10.1f}{flops / t / rate:>17.0%}")
    print(f"measured fp32 matmul rate: {rate / 1e9:.1f} GFLOP/s; forward FLOPs per point {flops / n_points / 1e9:.2f} G")
    print(f"speed-up over the plain loop: {t_plain / t_toolkit:.2f}x; max relative difference of losses {agree:.1e}")


if __name__ == "__main__":
    main()
