"""The built-in Vision Transformer (`vit:patch=...,dim=...,depth=...,heads=...`): its spec, its
shape and parameter count against the architecture's arithmetic, and every analysis command on it
(no BatchNorm: `--bn auto` keeps the buffers)."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest
import torch
from torch import nn

from landscape import cli
from landscape.core.errors import LandscapeError
from landscape.core.models import ViT, build_model

SPEC = "vit:patch=4,dim=16,depth=1,heads=2"


def test_the_spec_builds_the_architecture_it_names():
    m = build_model("vit:patch=4,dim=16,depth=2,heads=4,mlp=24", 5, (3, 8, 8))
    assert isinstance(m, ViT) and len(m.blocks) == 2 and m.blocks[0].attn.num_heads == 4
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 5)
    # parameters by hand: patch conv, class token, 4+1 positions, per block 2 LayerNorms + attention
    # (in_proj 3·d·d + 3d, out_proj d·d + d) + MLP (d·24 + 24 + 24·d + d), final LayerNorm, head
    d = 16
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * 24 + 24 + 24 * d + d)
    want = (3 * 16 * d + d) + d + 5 * d + 2 * block + 2 * d + (d * 5 + 5)
    assert sum(p.numel() for p in m.parameters()) == want
    mean = build_model("vit:pool=mean,dim=8,heads=2", 3, (1, 8, 8))
    assert mean.cls_token is None and mean(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    assert not [b for b in m.buffers()]  # nothing for a BN mode to recompute


@pytest.mark.parametrize("spec, needle", [
    ("vit:patch=3", "not a multiple of patch=3"),
    ("vit:dim=10,heads=4", "not a multiple of heads=4"),
    ("vit:depth=0", "depth"),
    ("vit:size=4", "vit takes"),
    ("vit:pool=max", "pool must be cls or mean"),
])
def test_bad_vit_specs_are_one_line(spec, needle):
    with pytest.raises(LandscapeError, match=needle):
        build_model(spec, 3, (3, 8, 8))
    with pytest.raises(LandscapeError, match="square images"):
        build_model("vit", 3, (3, 8, 6))


@pytest.fixture()
def images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(40, 1, 8, 8, generator=g), "y": torch.randint(0, 3, (40,), generator=g)}, "d.pt")
    for i in (1, 2, 3):
        torch.manual_seed(i)
        torch.save(build_model(SPEC, 3, (1, 8, 8)).state_dict(), f"v{i}.pt")
    return ["--model", SPEC, "--data", "tensors:d.pt", "--quiet", "--json"]


def run(*argv) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(list(argv)) == 0
    return json.loads(out.getvalue())


def test_every_analysis_runs_on_the_vit(images):
    line = run("interpolate", "v1.pt", "v2.pt", "--num", "3", *images)
    assert line["bn_mode"] == "keep" and len(line["train_loss"]) == 3
    # the endpoints' own losses, computed here with plain torch
    m = build_model(SPEC, 3, (1, 8, 8)).eval()
    data = torch.load("d.pt")
    for alpha, path in ((0, "v1.pt"), (2, "v2.pt")):
        m.load_state_dict(torch.load(path, weights_only=True))
        with torch.no_grad():
            want = nn.functional.cross_entropy(m(data["x"]).double(), data["y"]).item()
        assert line["train_loss"][alpha] == pytest.approx(want, rel=1e-5)
    assert len(run("barriers", "v1.pt", "v2.pt", "v3.pt", "--num", "3", *images)["train_loss_barrier"]) == 3
    plane = run("plane", "v1.pt", "--random", "filter", "--x", "-1:1:3", "--y", "-1:1:3", *images)
    assert len(plane["train_loss"]) == 3
    assert len(run("ensemble", "v1.pt", "v2.pt", "--model", SPEC, "--data", "tensors:d.pt", "--quiet",
                   "--json")["rows"]) == 2
    assert len(run("hessian", "v1.pt", "--iters", "5", *images)["eigenvalues"]) == 1
    assert len(run("connect", "v1.pt", "v2.pt", "--epochs", "1", "--num", "3", *images)["train_loss"]) == 3
