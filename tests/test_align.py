"""`landscape align` and `--align`: the aligned snapshot computes B's function on every sample, for an
MLP, a BatchNorm CNN, torchvision's ResNet-18 and the built-in ViT; a planted permutation is found
exactly (barrier 0 after alignment); aligning two independently trained wide MLPs on real digits
(scikit-learn's) lowers their loss barrier by a stated factor; `--align` results resume."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from torch import nn

from landscape import cli
from landscape.core.models import build_model
from landscape.geometry.permutations import apply_permutation, permutation_spec, random_perms
from landscape.store.store import Store

WIDE = 512
MODELS = {  # module name in the working folder -> (source, input shape, classes)
    "align_mlp": ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
                  "    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),\n"
                  "                         nn.Linear(16, num_classes))\n", (12,), 3),
    "align_resnet": ("import torchvision\n\ndef make(num_classes=3, **_):\n"
                     "    return torchvision.models.resnet18(num_classes=num_classes)\n", (3, 32, 32), 3),
}
BUILTIN = {"small_cnn:width=4": ((3, 8, 8), 3), "vit:patch=4,dim=16,depth=2,heads=2": ((3, 8, 8), 3)}


def run(*argv) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main([*argv, "--json", "--quiet"])
    assert code == 0
    return json.loads(out.getvalue())


def _randomised(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights, and BN statistics that are not the defaults (so the buffers' alignment matters)."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model.eval()


def _setup(folder, spec: str, shape, classes, n=24):
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(n, *shape, generator=g), "y": torch.randint(0, classes, (n,), generator=g)}, "d.pt")
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save(_randomised(build_model(spec, classes, shape), seed).state_dict(), f"m{seed}.pt")


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, (source, _, _) in MODELS.items():
        (tmp_path / f"{name}.py").write_text(source)
    return tmp_path


def _outputs(spec, shape, classes, state) -> torch.Tensor:
    m = build_model(spec, classes, shape).eval()
    m.load_state_dict(state)
    with torch.no_grad():
        return m(torch.load("d.pt")["x"]).double()


# every architecture by weight matching; activation matching on one without and one with BatchNorm
CASES = [*[(f"{m}:make", "weight") for m in MODELS], *[(b, "weight") for b in BUILTIN],
         ("align_mlp:make", "activation"), ("small_cnn:width=4", "activation")]


@pytest.mark.parametrize("spec, method", CASES)
def test_the_aligned_snapshot_computes_b_s_function(folder, spec, method):
    shape, classes = (MODELS[spec.split(":")[0]][1:] if spec.endswith(":make") else BUILTIN[spec])
    _setup(folder, spec, shape, classes)
    res = run("align", "m1.pt", "m2.pt", "--method", method, "--model", spec, "--data", "tensors:d.pt",
              "--out", "s", "--name", "b-to-a")
    assert res["moved_units"] > 0 and res["snapshot"] == "s:b-to-a"
    with Store("s") as st:
        snap = st.read_snapshot("b-to-a")
    for name, perm in snap.meta["permutations"].items():  # each group's permutation is one
        assert sorted(perm) == list(range(len(perm))), name
    template = build_model(spec, classes, shape)
    snap.load_into(template)
    want = _outputs(spec, shape, classes, torch.load("m2.pt", weights_only=True))
    got = _outputs(spec, shape, classes, template.state_dict())
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, scale)
    assert not torch.equal(snap.params, torch.cat([v.reshape(-1) for k, v in torch.load(
        "m2.pt", weights_only=True).items() if k in dict(template.named_parameters())]))
    if method == "weight":  # the matching can only bring B closer to A
        assert res["distance_after"] < res["distance_before"]


def test_a_planted_permutation_is_found_exactly_and_its_barrier_vanishes(folder):
    spec, shape = "align_mlp:make", (12,)
    _setup(folder, spec, shape, 3)
    model = build_model(spec, 3, shape)
    data = torch.load("d.pt")
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(300):  # fitted, so a random permutation of it sits behind a barrier
        loss = nn.functional.cross_entropy(model(data["x"]), data["y"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    torch.save(state, "m1.pt")
    pspec = permutation_spec(model.eval(), torch.zeros(1, *shape))
    planted = apply_permutation(pspec, state, random_perms(pspec, torch.Generator().manual_seed(5)))
    torch.save(planted, "planted.pt")
    before = run("interpolate", "m1.pt", "planted.pt", "--num", "5", "--model", spec, "--data", "tensors:d.pt")
    after = run("interpolate", "m1.pt", "planted.pt", "--num", "5", "--align", "weight", "--model", spec,
                "--data", "tensors:d.pt")
    assert before["barriers"]["train_loss"]["barrier"] > 0.01
    np.testing.assert_allclose(after["train_loss"], [after["train_loss"][0]] * 5, rtol=1e-6)
    assert after["barriers"]["train_loss"]["barrier"] == pytest.approx(0.0, abs=1e-6)


def test_align_results_resume_and_are_told_apart(folder):
    spec, shape = "align_mlp:make", (12,)
    _setup(folder, spec, shape, 3)
    common = ["--model", spec, "--data", "tensors:d.pt", "--out", "s"]
    first = run("barriers", "m1.pt", "m2.pt", "--num", "3", "--align", "weight", *common)
    again = run("barriers", "m1.pt", "m2.pt", "--num", "3", "--align", "weight", *common)
    assert first["computed_now"] == 3 and again["computed_now"] == 0
    with Store("s") as st:
        assert st.read_attrs("barriers", "barriers")["config"]["align"] == "weight"
    out = io.StringIO()
    with redirect_stdout(out):  # the same name without --align: other arguments, refused
        assert cli.main(["barriers", "m1.pt", "m2.pt", "--num", "3", *common, "--quiet"]) == 2
    assert run("align", "m1.pt", "m2.pt", *common)["computed_now"] is True
    assert run("align", "m1.pt", "m2.pt", *common)["computed_now"] is False


def _train_digits_mlp(x, y, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, WIDE), nn.ReLU(), nn.Linear(WIDE, WIDE), nn.ReLU(),
                      nn.Linear(WIDE, 10))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(15):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = nn.functional.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m


WIDE_MLP = ("from torch import nn\n\ndef make(num_classes=10, **_):\n"
            f"    return nn.Sequential(nn.Flatten(), nn.Linear(64, {WIDE}), nn.ReLU(), nn.Linear({WIDE}, {WIDE}), "
            f"nn.ReLU(),\n                         nn.Linear({WIDE}, num_classes))\n")


def test_alignment_lowers_the_barrier_of_two_independently_trained_mlps_on_real_digits(folder):
    datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn is a test extra: pip install -e .[test]")
    digits = datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    torch.save({"x": x, "y": y}, "digits.pt")
    (folder / "align_wide.py").write_text(WIDE_MLP)
    for seed in (1, 2):
        torch.save(_train_digits_mlp(x, y, seed).state_dict(), f"w{seed}.pt")
    common = ["--num", "11", "--model", "align_wide:make", "--data", "tensors:digits.pt"]
    plain = run("interpolate", "w1.pt", "w2.pt", *common)["barriers"]["train_loss"]["barrier"]
    weight = run("interpolate", "w1.pt", "w2.pt", "--align", "weight", *common)["barriers"]["train_loss"]["barrier"]
    act = run("interpolate", "w1.pt", "w2.pt", "--align", "activation", *common)["barriers"]["train_loss"]["barrier"]
    print(f"digits MLP {WIDE} wide: train-loss barrier {plain:.3f}, weight-aligned {weight:.3f}, "
          f"activation-aligned {act:.3f}")
    assert plain > 0.1
    assert weight < plain / 3 and act < plain / 3  # measured: see the README's alignment section
