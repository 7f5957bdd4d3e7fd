"""On a plane through three snapshots of a BatchNorm CNN, each snapshot's own point gives that
snapshot's own metrics, in every BN mode: `keep` moves the buffers with the weights (so the point
carries exactly the snapshot's statistics) and `recompute` re-estimates them as update_bn does.
References are independent fp64 forward passes (and torch's own swa_utils.update_bn)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import landscape
from landscape.core.data import TensorData


def make_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.Conv2d(5, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


@pytest.fixture(scope="module")
def setting():
    g = torch.Generator().manual_seed(0)
    train = TensorData(torch.randn(48, 2, 6, 6, generator=g), torch.randint(0, 3, (48,), generator=g), "train")
    test = TensorData(torch.randn(30, 2, 6, 6, generator=g), torch.randint(0, 3, (30,), generator=g), "test")
    snaps = []
    for i in range(3):
        torch.manual_seed(i)
        m = make_model()
        for mod in m.modules():  # buffers far apart, as trained models' are
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1), mod.running_var.uniform_(0.3, 3.0)
        snaps.append(landscape.Snapshot.from_model(m, f"s{i}"))
    return train, test, snaps


def own_metrics(snap, train, test, recompute: bool) -> dict[str, float]:
    m = make_model().double()
    snap.load_into(m)
    m = m.double()
    if recompute:  # torch's own update_bn on the same samples and batches the toolkit uses
        loader = [(train.x[i:i + 250].double(),) for i in range(0, len(train), 250)]
        update_bn(loader, m)
    m.eval()
    out = {}
    with torch.no_grad():
        for split, d in (("train", train), ("test", test)):
            logits = m(d.x.double())
            out[f"{split}_loss"] = float(nn.functional.cross_entropy(logits, d.y))
            out[f"{split}_acc"] = float((logits.argmax(1) == d.y).double().mean())
    return out


@pytest.mark.parametrize("bn", ["keep", "recompute", "auto"])
@pytest.mark.parametrize("coords", ["relative", "distance"])
def test_each_snapshot_point_is_exact(setting, bn, coords):
    train, test, snaps = setting
    probe = landscape.plane(snaps[0], through=snaps[1:], model=make_model(), data=train, test_data=test, bn=bn,
                            coords=coords, x=np.array([0.0, 1.0]), y=np.array([0.0, 1.0]), device="cpu")
    pts = {p.name: (p.x, p.y) for p in probe.projections}
    if coords == "relative":
        assert pts["s0"] == pytest.approx((0, 0), abs=1e-6) and pts["s1"] == pytest.approx((1, 0), abs=1e-6)
        assert pts["s2"][1] == pytest.approx(1, abs=1e-6)
    xs = np.unique([pts[n][0] for n in pts])
    ys = np.unique([pts[n][1] for n in pts])
    res = landscape.plane(snaps[0], through=snaps[1:], model=make_model(), data=train, test_data=test, bn=bn,
                          coords=coords, x=xs, y=ys, device="cpu")
    assert res.bn_mode == ("recompute" if bn == "auto" else bn)
    for snap in snaps:
        i = int(np.argmin(np.abs(xs - pts[snap.name][0])))
        j = int(np.argmin(np.abs(ys - pts[snap.name][1])))
        ref = own_metrics(snap, train, test, recompute=res.bn_mode == "recompute")
        for key, value in ref.items():
            assert res.metrics[key][i, j] == pytest.approx(value, rel=2e-5, abs=1e-6), (snap.name, key)


def test_default_grid_contains_the_three_snapshots(setting):
    train, test, snaps = setting
    res = landscape.plane(snaps[0], through=snaps[1:], model=make_model(), data=train, test_data=test,
                          device="cpu")
    assert res.direction_attrs["coords"] == "relative" and "relative" in res.direction_attrs["unit"]
    for p in res.projections:
        assert res.x.min() < p.x < res.x.max()
        assert res.y.min() < p.y < res.y.max()
