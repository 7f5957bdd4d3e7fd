"""K points per pass (kernels + fx) against the per-point path: lines, planes, barrier matrices."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape.analyses import grids
from landscape.core.checkpoints import Snapshot
from landscape.core.data import TensorData, make_synthetic_images
from landscape.core.models import MLP, SmallCNN
from landscape.core.params import ParamLayout
from landscape.evaluate.engine import Evaluator
from landscape.geometry.directions import random_direction
from landscape.geometry.ranges import line_alphas


class ResidualNet(nn.Module):
    """A skip connection and a bias-free BN-less path: mixed shared/per-point operands."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.head(torch.flatten(torch.relu(self.bn(self.conv(x))) + x, 1))


def _data(n, seed, classes=4):
    x, y = make_synthetic_images(n, classes, 8, 3, seed=seed)
    return TensorData(x, y, f"s{seed}", classes)


def _models(factory, n, seed=0):
    out = []
    for i in range(n):
        torch.manual_seed(seed + i)
        m = factory()
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.3, 0.3), mod.running_var.uniform_(0.5, 1.5)
        out.append(Snapshot.from_model(m, f"m{i}"))
    return m, out


def _pair(model, bn, **kw):
    train, test = _data(70, 1), _data(45, 2)
    per_point = Evaluator(model, train, test, bn_mode=bn, batched=False, batch_size=32, bn_samples=60, **kw)
    batched = Evaluator(model, train, test, bn_mode=bn, batched=True, batch_size=32, bn_samples=60, **kw)
    assert batched.batched is not None and per_point.batched is None
    return per_point, batched


def _close(a, b):
    for k in ("train_loss", "test_loss"):
        np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6)
    for k in ("train_acc", "test_acc"):  # an argmax may flip on a near-tie; allow one sample
        assert np.max(np.abs(a[k] - b[k])) <= 1 / 45 + 1e-12


@pytest.mark.parametrize("bn", ["keep", "recompute"])
@pytest.mark.parametrize("factory", [lambda: SmallCNN(4, 3, 4), ResidualNet, lambda: MLP(192, 4, 16)],
                         ids=["cnn", "residual", "mlp"])
def test_line_and_plane_agree(bn, factory):
    model, (a, b) = _models(factory, 2)
    per_point, batched = _pair(model, bn)
    alphas = line_alphas(5, -0.25, 1.25)
    _close(grids.line(per_point, a, b, alphas, chunk=3),
           grids.line(batched, a, b, alphas, chunk=3))
    layout = ParamLayout.of(model)
    dirs = torch.stack([random_direction(layout, a.params, "filter", s, ignore_bias_bn=False) for s in (0, 1)])
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-0.5, 0.5, 3)
    _close(grids.plane(per_point, a, dirs, xs, ys, chunk=5),
           grids.plane(batched, a, dirs, xs, ys, chunk=5))


@pytest.mark.parametrize("bn", ["keep", "recompute"])
def test_barrier_matrix_agrees(bn):
    model, snaps = _models(lambda: SmallCNN(4, 3, 4), 3, seed=7)
    per_point, batched = _pair(model, bn)
    alphas = line_alphas(4)
    r1 = grids.barrier_matrix(per_point, snaps, alphas, chunk=4)
    r2 = grids.barrier_matrix(batched, snaps, alphas, chunk=4)
    for key in [k for k in r1 if k.endswith("_barrier")]:
        np.testing.assert_allclose(r1[key], r2[key], rtol=1e-4, atol=1e-6)


def test_unsupported_model_falls_back():
    class WithEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.fc = nn.Linear(192, 4)

        def forward(self, x):
            return self.fc(x.flatten(1)) * self.scale

    ev = Evaluator(WithEmbedding(), test=_data(10, 3), batched=None)
    assert ev.batched is None
    with pytest.raises(Exception, match="not available"):
        Evaluator(WithEmbedding(), test=_data(10, 3), batched=True)


def test_cpu_default_path_and_passes_within_a_chunk():
    # the CPU default: K points per pass only where the first layer dominates the arithmetic (MLPs)
    data = _data(30, 4)
    assert Evaluator(MLP(192, 4, 16), test=data).batched is not None
    assert Evaluator(SmallCNN(4, 3, 4), test=data).batched is None
    # a chunk larger than K runs as several passes, with the per-point path's numbers
    model, (a, b) = _models(lambda: MLP(192, 4, 16), 2)
    per_point, batched = _pair(model, "keep")
    batched.points_per_pass = 2
    alphas = line_alphas(7)
    _close(grids.line(per_point, a, b, alphas, chunk=5), grids.line(batched, a, b, alphas, chunk=5))
