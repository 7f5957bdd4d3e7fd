"""Core analysis checked against independent references: closed forms, update_bn, fp64 math."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

from landscape.analyses import grids
from landscape.core.bn import FoldedEval
from landscape.core.checkpoints import Snapshot
from landscape.core.data import TensorData, make_synthetic_images
from landscape.core.models import SmallCNN
from landscape.core.params import ParamLayout, parameters_to_vector, vector_to_model
from landscape.evaluate.engine import AffineFamily, Evaluator
from landscape.geometry.directions import pca_directions, plane_through, project, random_direction
from landscape.geometry.lines import barrier, curve_barriers
from landscape.geometry.ranges import line_alphas, parse_range


class BiasOnly(nn.Module):
    """logits = b, whatever the input: the loss along a line has a closed form."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b.expand(x.shape[0], -1)


def _image_data(n: int, seed: int, size: int = 8, classes: int = 4) -> TensorData:
    x, y = make_synthetic_images(n, classes, size, 3, seed=seed)
    return TensorData(x, y, f"synthetic-{seed}", classes)


def _plain_metrics(model: nn.Module, data: TensorData) -> tuple[float, float]:
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        out = model(data.x.double())
    return (float(nn.functional.cross_entropy(out, data.y)), float((out.argmax(1) == data.y).double().mean()))


def test_layout_roundtrip_and_views():
    m = SmallCNN(5, 3, 4)
    layout = ParamLayout.of(m)
    v = parameters_to_vector(m)
    assert layout.numel == v.numel() == sum(p.numel() for p in m.parameters())
    for name, p in m.named_parameters():
        assert torch.equal(layout.view(v, name), p.detach())
    m2 = SmallCNN(5, 3, 4)
    vector_to_model(v, m2)
    assert torch.equal(parameters_to_vector(m2), v)
    assert ParamLayout.from_json(layout.to_json()) == layout


def test_analytic_line_loss_and_barrier():
    """Bias-only model: loss(α) = mean_i logsumexp(b(α)) − b(α)[y_i], b(α) = (1−α)·ba + α·bb."""
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    data = TensorData(torch.zeros(len(y), 1), y, "analytic", 3)
    model = BiasOnly(3)
    # class 0 wins at α=0, class 1 at α=1 and the rare class 2 in between
    ba, bb = torch.tensor([4.0, -1.0, 2.5]), torch.tensor([-1.0, 4.0, 2.5])
    a = Snapshot("a", ba.clone(), ParamLayout.of(model), {})
    b = Snapshot("b", bb.clone(), ParamLayout.of(model), {})
    alphas = line_alphas(41)
    ev = Evaluator(model, train=data)
    curve = grids.line(ev, a, b, alphas)

    counts = np.bincount(y.numpy(), minlength=3) / len(y)
    expected_loss, expected_acc = [], []
    for al in alphas:
        bal = (1 - al) * ba.double().numpy() + al * bb.double().numpy()
        lse = math.log(np.exp(bal - bal.max()).sum()) + bal.max()
        expected_loss.append(lse - float(counts @ bal))
        expected_acc.append(counts[int(np.argmax(bal))])
    np.testing.assert_allclose(curve["train_loss"], expected_loss, rtol=1e-6)
    np.testing.assert_allclose(curve["train_acc"], expected_acc)
    chord = (1 - alphas) * expected_loss[0] + alphas * expected_loss[-1]
    h, at = barrier(alphas, curve["train_loss"])
    assert h == pytest.approx(np.max(np.asarray(expected_loss) - chord), rel=1e-6)
    assert at == pytest.approx(alphas[np.argmax(np.asarray(expected_loss) - chord)])
    assert h == pytest.approx(0.0, abs=1e-6)  # cross-entropy is convex in b: no loss barrier
    err_h, err_at = barrier(alphas, 1 - curve["train_acc"])
    # error 4/7 at both ends, 6/7 where class 2 wins: 2.5 > max(4 − 5α, 5α − 1), i.e. 0.3 < α < 0.7
    assert err_h == pytest.approx(2 / 7) and 0.3 < err_at < 0.7


def test_barrier_of_convex_and_bump_shapes():
    al = np.linspace(0, 1, 11)
    assert barrier(al, al**2)[0] == pytest.approx(0.0, abs=1e-12)  # convex: never above the chord
    h, at = barrier(al, 1 + 4 * al * (1 - al))  # bump of height 1 at α = 0.5
    assert (h, at) == (pytest.approx(1.0), pytest.approx(0.5))
    res = curve_barriers(al, {"test_loss": al * 0, "test_acc": 1 - 0.2 * np.sin(np.pi * al)})
    assert res["test_error"]["barrier"] == pytest.approx(0.2)


def test_extended_alphas_include_endpoints():
    al = line_alphas(11, -0.5, 1.5)
    assert 0.0 in al and 1.0 in al and al.min() == pytest.approx(-0.5) and al.max() == pytest.approx(1.5)
    al = np.linspace(-1, 2, 31)
    v = (al - 0.5) ** 2  # outside [0, 1] the values do not count
    assert barrier(al, -v)[0] == pytest.approx(0.25, abs=1e-9)


def test_bn_recompute_equals_update_bn():
    torch.manual_seed(1)
    model = SmallCNN(4, 3, 4)
    train, test = _image_data(130, 1), _image_data(50, 2)
    point = parameters_to_vector(model) + 0.05 * torch.randn(ParamLayout.of(model).numel)
    ev = Evaluator(model, train, test, bn_mode="recompute", batch_size=32, bn_samples=100)
    got = ev.evaluate(point, None)

    ref = copy.deepcopy(model)
    vector_to_model(point, ref)
    update_bn(DataLoader(TensorDataset(train.x[:100]), batch_size=32), ref)
    for (name, b_ref), b_got in zip(ref.named_buffers(), ev.model.buffers()):
        torch.testing.assert_close(b_got.float(), b_ref.float(), rtol=1e-5, atol=1e-6, msg=name)
    loss, acc = _plain_metrics(ref, test)
    assert got["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert got["test_acc"] == pytest.approx(acc)


def test_folded_bn_matches_plain_eval_forward():
    torch.manual_seed(2)
    model = SmallCNN(4, 3, 6)
    for m in model.modules():  # non-trivial statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    folded = FoldedEval(model)
    assert len(folded.pairs) == 3
    x = torch.randn(7, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_filter_normalisation():
    model = SmallCNN(4, 3, 4)
    with torch.no_grad():
        model.features[0].weight[1].zero_()  # an all-zero filter
    layout, w = ParamLayout.of(model), parameters_to_vector(model)
    d = random_direction(layout, w, "filter", seed=3, ignore_bias_bn=True)
    assert torch.isfinite(d).all()
    for name, shape, sl in layout.slices():
        dv, wv = d[sl].view(shape), w[sl].view(shape)
        if len(shape) <= 1:
            assert torch.all(dv == 0), name
            continue
        torch.testing.assert_close(dv.flatten(1).norm(dim=1), wv.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-7)
    assert torch.all(layout.view(d, "features.0.weight")[1] == 0)
    # layer normalisation: each tensor as a whole; biases kept (scaled) when not ignored
    d = random_direction(layout, w, "layer", seed=3, ignore_bias_bn=False)
    for name, shape, sl in layout.slices():
        assert d[sl].norm().item() == pytest.approx(w[sl].norm().item(), rel=1e-5), name
    assert torch.equal(random_direction(layout, w, "filter", seed=3), random_direction(layout, w, "filter", seed=3))


def test_normalisation_of_tiny_and_zero_tensors():
    layout = ParamLayout(("one", "zeros", "w"), ((1,), (2, 3), (1, 1)))
    w = torch.tensor([0.5, 0, 0, 0, 0, 0, 0, 2.0])
    for norm in ("filter", "layer", "none"):
        d = random_direction(layout, w, norm, seed=0, ignore_bias_bn=False)
        assert torch.isfinite(d).all()
    d = random_direction(layout, w, "filter", seed=0, ignore_bias_bn=False)
    assert d[0].abs().item() == pytest.approx(0.5) and torch.all(d[1:7] == 0) and d[7].abs().item() == pytest.approx(2.0)


def test_plane_through_three_points_coordinates():
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(57, generator=g, dtype=torch.float64) for _ in range(3))
    pl = plane_through(a, b, c)
    assert float(pl.u @ pl.v) == pytest.approx(0.0, abs=1e-12)
    assert float(pl.u.norm()) == pytest.approx(1.0) and float(pl.v.norm()) == pytest.approx(1.0)
    coords = pl.coords.numpy()
    # independent: law of cosines in the triangle
    ab, ac, bc = (b - a).norm().item(), (c - a).norm().item(), (c - b).norm().item()
    cx = (ab**2 + ac**2 - bc**2) / (2 * ab)
    np.testing.assert_allclose(coords, [[0, 0], [ab, 0], [cx, math.sqrt(ac**2 - cx**2)]], atol=1e-9)
    for p, xy in zip((a, b, c), coords):
        got, dist = project(p, a, pl.directions)
        np.testing.assert_allclose(got.numpy(), xy, atol=1e-9)
        assert dist < 1e-9
    off = torch.randn(57, generator=g, dtype=torch.float64)
    off -= (off @ pl.u) * pl.u + (off @ pl.v) * pl.v
    assert project(a + off, a, pl.directions)[1] == pytest.approx(off.norm().item())


def test_pca_recovers_a_line():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(40, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    points = [3 * t * direction + 1e-6 * torch.randn(40, generator=g, dtype=torch.float64) for t in range(6)]
    res = pca_directions(points, k=2)
    assert abs(float(res.directions[0] @ direction)) == pytest.approx(1.0, abs=1e-6)
    assert res.explained_variance_ratio[0] > 0.999


def test_plane_non_square_grid_matches_direct_forward():
    torch.manual_seed(4)
    model = SmallCNN(4, 3, 4)
    test = _image_data(60, 5)
    center = Snapshot.from_model(model, "c")
    layout = ParamLayout.of(model)
    dirs = torch.stack([random_direction(layout, center.params, "filter", s) for s in (0, 1)])
    xs, ys = np.linspace(-1, 1, 5), np.array([-0.5, 0.25, 1.0])
    ev = Evaluator(model, test=test, batch_size=17)
    surf = grids.plane(ev, center, dirs, xs, ys)
    assert surf["test_loss"].shape == (5, 3) and surf["done"].all()
    for i, j in [(0, 0), (4, 2), (2, 1), (3, 0)]:
        ref = copy.deepcopy(model)
        vector_to_model(center.params + xs[i] * dirs[0] + ys[j] * dirs[1], ref)
        loss, acc = _plain_metrics(ref, test)
        assert surf["test_loss"][i, j] == pytest.approx(loss, rel=1e-4)
        assert surf["test_acc"][i, j] == pytest.approx(acc)


def test_line_keep_interpolates_buffers():
    torch.manual_seed(5)
    ma, mb = SmallCNN(4, 3, 4), SmallCNN(4, 3, 4)
    for m in (*ma.modules(), *mb.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    test = _image_data(40, 6)
    a, b = Snapshot.from_model(ma, "a"), Snapshot.from_model(mb, "b")
    ev = Evaluator(ma, test=test)
    fam = AffineFamily.line(a.params, b.params, a.buffers, b.buffers)
    out = ev.run(fam, np.array([[0.3]]))
    mid = copy.deepcopy(ma)
    sa, sb = ma.state_dict(), mb.state_dict()
    mid.load_state_dict({k: (0.7 * sa[k] + 0.3 * sb[k]) if sa[k].is_floating_point() else sa[k] for k in sa})
    loss, _ = _plain_metrics(mid, test)
    assert out["test_loss"][0] == pytest.approx(loss, rel=1e-4)


def test_parse_range():
    np.testing.assert_allclose(parse_range("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    for bad in ("1:2", "a:1:3", "1:0:5", "0:1:0"):
        with pytest.raises(Exception, match="malformed"):
            parse_range(bad)
