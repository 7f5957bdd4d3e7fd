"""Permutation alignment (landscape.geometry.permutations and .matching), checked against facts that do not
come from the code under test: the network's outputs, a permutation we planted ourselves, the known layer
structure of the models, and permutations checked by sorting."""
from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from landscape.core.errors import LandscapeError
from landscape.core.models import build_model
from landscape.geometry.matching import weight_matching
from landscape.geometry.permutations import (
    PermutationGroup,
    PermutationSpec,
    apply_permutation,
    check_permutation,
    identity_perms,
    permutation_spec,
    random_perms,
)

# ----------------------------------------------------------------------------------------------------------------
# models


def mlp_seq() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 5))


def cnn_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(12, 10))


class NormCNN(nn.Module):
    """GroupNorm, LayerNorm over (C, H, W) and over features, dropout, torch.flatten, and a parameter
    read directly in forward (a per-feature scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gn, self.drop = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Dropout(0.2)
        self.c2, self.ln = nn.Conv2d(8, 6, 3, padding=1), nn.LayerNorm([6, 8, 8])
        self.pool, self.fc, self.ln2 = nn.AdaptiveAvgPool2d(1), nn.Linear(6, 16), nn.LayerNorm(16)
        self.drop2, self.head = nn.Dropout(0.1), nn.Linear(16, 10)
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.relu(self.gn(self.c1(x))))
        x = F.gelu(self.ln(self.c2(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.drop2(self.ln2(self.fc(x)) * self.scale))


class ResMLP(nn.Module):
    """Residual adds, one of them around a square Linear whose two axes are the same units."""

    def __init__(self) -> None:
        super().__init__()
        self.i, self.sq, self.h1, self.h2, self.o = (nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 24),
                                                     nn.Linear(24, 16), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.i(x)
        x = x + self.h2(F.relu(self.h1(x)))
        x = x + self.sq(x)
        return self.o(F.relu(x))


def vit() -> nn.Module:
    return torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=10)


# factory, example input shape, the floating tensors no permutation may touch (the last layer's bias)
MODELS = {
    "mlp_seq": (mlp_seq, (4, 3, 2, 2), {"5.bias"}),
    "cnn_bn": (cnn_bn, (2, 3, 8, 8), {"9.bias"}),
    "norm_cnn": (NormCNN, (2, 3, 8, 8), {"head.bias"}),
    "res_mlp": (ResMLP, (4, 12), {"o.bias"}),
    "small_cnn": (lambda: build_model("small_cnn", 10, (3, 8, 8)), (2, 3, 8, 8), {"head.bias"}),
    "tiny_cnn": (lambda: build_model("tiny_cnn", 10, (3, 8, 8)), (2, 3, 8, 8), {"head.bias"}),
    "mlp": (lambda: build_model("mlp", 10, (3, 8, 8)), (2, 3, 8, 8), {"net.5.bias"}),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32), {"fc.bias"}),
    "vit": (vit, (2, 3, 8, 8), {"heads.head.bias"}),
}


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values everywhere (BN running stats, norm affines, zero-initialised heads and tokens),
    so that a tensor left unpermuted shows in the outputs. Eval mode: BN uses its running stats."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.dim() >= 2:
                t.copy_(torch.randn(t.shape, generator=g) / (t[0].numel() ** 0.5))
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if key.endswith("weight") else 0.0))
    return model.eval()


def is_perm(p: torch.Tensor, n: int) -> bool:
    return p.shape == (n,) and torch.equal(torch.sort(p).values, torch.arange(n))


def nontrivial_perms(spec: PermutationSpec, seed: int = 1) -> dict[str, torch.Tensor]:
    """random_perms, redrawn per group until no group's permutation is the identity."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for group in spec.groups:
        one = PermutationSpec((group,))
        for _ in range(1000):
            p = random_perms(one, g)[group.name]
            if not torch.equal(p, torch.arange(group.size)):
                break
        out[group.name] = p
    return out


def outputs(model: nn.Module, state: dict, x: torch.Tensor) -> torch.Tensor:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    with torch.no_grad():
        return other.eval()(x)


@pytest.fixture(scope="module")
def built() -> dict:
    """Each model built, randomised and traced once for the whole module."""
    out = {}
    for name, (factory, shape, _) in MODELS.items():
        torch.manual_seed(0)
        model = randomize(factory())
        x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        out[name] = (model, x, permutation_spec(model, x))
    return out


def covered(spec: PermutationSpec) -> set[tuple[str, int]]:
    return {pair for g in spec.groups for pair in g.axes}


def group_of(spec: PermutationSpec, key: str, axis: int) -> str:
    (name,) = [g.name for g in spec.groups if (key, axis) in g.axes]
    return name


# ----------------------------------------------------------------------------------------------------------------
# function preserved, structure as known


@pytest.mark.parametrize("name", list(MODELS))
def test_random_permutation_preserves_the_function(built, name) -> None:
    model, x, spec = built[name]
    state = model.state_dict()
    perms = nontrivial_perms(spec)
    for g in spec.groups:
        assert is_perm(perms[g.name], g.size)
        if g.within:
            assert torch.equal(perms[g.name] // g.within, torch.arange(g.size) // g.within)
    new = apply_permutation(spec, state, perms)
    assert list(new) == list(state)
    assert all(new[k].dtype == state[k].dtype and new[k].shape == state[k].shape for k in state)
    for key, _ in covered(spec):  # every moved tensor really moved
        assert not torch.equal(new[key], state[key]), key
    # every floating tensor is moved along some axis, except the last layer's bias
    untouched = {k for k, t in state.items() if t.is_floating_point()} - set(spec.state_keys())
    assert untouched == MODELS[name][2]
    with torch.no_grad():
        want = model(x)
    got = outputs(model, new, x)
    scale = float(want.abs().max())
    assert scale > 0
    torch.testing.assert_close(got, want, atol=1e-5 * scale, rtol=1e-5)


def test_a_missed_tensor_changes_the_function(built) -> None:
    """The check above can fail: permute the MLP's hidden units but leave the next layer's columns."""
    model, x, spec = built["mlp_seq"]
    g = spec.group("1")
    broken = PermutationSpec((PermutationGroup(g.name, g.size, g.block, tuple(a for a in g.axes if a[0] != "3.weight")),)
                             + tuple(h for h in spec.groups if h.name != g.name))
    new = apply_permutation(broken, model.state_dict(), nontrivial_perms(broken))
    with torch.no_grad():
        want = model(x)
    assert (outputs(model, new, x) - want).abs().max() > 1e-3 * want.abs().max()


def test_mlp_structure(built) -> None:
    spec = built["mlp_seq"][2]
    assert {g.name: (g.size, g.block, g.within, set(g.axes)) for g in spec.groups} == {
        "1": (16, 1, 0, {("1.weight", 0), ("1.bias", 0), ("3.weight", 1)}),
        "3": (16, 1, 0, {("3.weight", 0), ("3.bias", 0), ("5.weight", 1)}),
    }


def test_cnn_structure(built) -> None:
    spec = built["cnn_bn"][2]
    assert sorted(g.size for g in spec.groups) == [8, 12]
    assert covered(spec) == {("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0), ("1.running_mean", 0),
                             ("1.running_var", 0), ("4.weight", 1), ("4.weight", 0), ("4.bias", 0), ("5.weight", 0),
                             ("5.bias", 0), ("5.running_mean", 0), ("5.running_var", 0), ("9.weight", 1)}
    for name, sizes in (("small_cnn", [32, 64, 128]), ("tiny_cnn", [8, 16, 32]), ("mlp", [256, 256])):
        assert sorted(g.size for g in built[name][2].groups) == sizes


def test_groupnorm_units_stay_in_their_group(built) -> None:
    spec = built["norm_cnn"][2]
    gn = spec.group(group_of(spec, "gn.weight", 0))
    assert gn.within == 4  # GroupNorm(2, 8): 4 channels share statistics
    assert ("scale", 0) in spec.group(group_of(spec, "fc.weight", 0)).axes
    assert ("ln.weight", 0) in spec.group(group_of(spec, "c2.weight", 0)).axes


def test_resnet18_residual_units_are_tied(built) -> None:
    spec = built["resnet18"][2]
    # 4 residual streams (stem + layer1, layer2, layer3, layer4) and one inner group per basic block
    assert sorted(g.size for g in spec.groups) == [64] * 3 + [128] * 3 + [256] * 3 + [512] * 3
    stream = {group_of(spec, k, a) for k, a in [("layer2.0.conv2.weight", 0), ("layer2.0.downsample.0.weight", 0),
                                                ("layer2.1.conv2.weight", 0), ("layer2.1.bn2.running_var", 0),
                                                ("layer3.0.conv1.weight", 1), ("layer3.0.downsample.0.weight", 1)]}
    assert len(stream) == 1
    assert group_of(spec, "conv1.weight", 0) == group_of(spec, "layer1.1.conv2.weight", 0)
    assert group_of(spec, "layer4.1.conv2.weight", 0) == group_of(spec, "fc.weight", 1)
    assert ("conv1.weight", 1) not in covered(spec) and ("fc.weight", 0) not in covered(spec)


def test_vit_heads_move_whole(built) -> None:
    spec = built["vit"][2]
    attn = "encoder.layers.encoder_layer_0.self_attention"
    heads = spec.group(group_of(spec, f"{attn}.in_proj_weight", 0))
    assert (heads.size, heads.block) == (2, 8)
    assert (f"{attn}.out_proj.weight", 1) in heads.axes and (f"{attn}.in_proj_bias", 0) in heads.axes
    stream = spec.group(group_of(spec, "class_token", 2))
    assert stream.size == 16
    for pair in [("encoder.pos_embedding", 2), (f"{attn}.in_proj_weight", 1), (f"{attn}.out_proj.weight", 0),
                 ("conv_proj.weight", 0), ("encoder.ln.weight", 0), ("heads.head.weight", 1)]:
        assert pair in stream.axes
    assert sorted((g.size, g.block) for g in spec.groups) == [(2, 8), (2, 8), (16, 1), (32, 1), (32, 1)]


# ----------------------------------------------------------------------------------------------------------------
# weight matching


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "resnet18", "vit", "res_mlp"])
def test_matching_recovers_a_planted_permutation(built, name) -> None:
    model, _, spec = built[name]
    a = model.state_dict()
    b = apply_permutation(spec, a, nontrivial_perms(spec, seed=7))
    perms, objective = weight_matching(spec, a, b)
    for g in spec.groups:
        assert is_perm(perms[g.name], g.size)
    back = apply_permutation(spec, b, perms)
    assert all(torch.equal(back[k], a[k]) for k in a)
    norm2 = sum(float((a[k].double() ** 2).sum()) for k in spec.state_keys())
    assert objective[-1] == pytest.approx(norm2, rel=1e-9)
    assert all(y >= x for x, y in itertools.pairwise(objective))


@pytest.mark.parametrize("name", ["norm_cnn", "res_mlp", "cnn_bn"])
def test_matching_two_independent_models(built, name) -> None:
    model, _, spec = built[name]
    a = model.state_dict()
    torch.manual_seed(3)
    b = randomize(MODELS[name][0](), seed=5).state_dict()
    perms, objective = weight_matching(spec, a, b, seed=4)
    for g in spec.groups:
        assert is_perm(perms[g.name], g.size)
        if g.within:
            assert torch.equal(perms[g.name] // g.within, torch.arange(g.size) // g.within)
    assert all(y >= x for x, y in itertools.pairwise(objective))
    moved = apply_permutation(spec, b, perms)
    inner = sum(float((a[k].double() * moved[k].double()).sum()) for k in spec.state_keys())
    assert objective[-1] == pytest.approx(inner, rel=1e-9)
    start = sum(float((a[k].double() * b[k].double()).sum()) for k in spec.state_keys())
    assert objective[-1] >= start


def test_matching_refuses_mismatched_states(built) -> None:
    model, _, spec = built["mlp_seq"]
    a = model.state_dict()
    with pytest.raises(LandscapeError, match="no tensor"):
        weight_matching(spec, a, {k: v for k, v in a.items() if k != "3.weight"})
    bad = dict(a)
    bad["1.bias"] = torch.full_like(a["1.bias"], float("nan"))
    with pytest.raises(LandscapeError, match="non-finite"):
        weight_matching(spec, a, bad)


# ----------------------------------------------------------------------------------------------------------------
# refusals


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


class ReshapeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.fc(y.reshape(y.shape[0], 4, -1)).mean(1)  # channels split across two axes


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else x


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.r, self.b = nn.Linear(3, 4), nn.LSTM(4, 4, batch_first=True), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.r(self.a(x))[0])


class ResidualUnknown(nn.Module):
    """An op we cannot see into on the residual stream: it, not the input or output, stops alignment."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h + torch.cumsum(h, dim=-1))


@pytest.mark.parametrize("model, shape, words", [
    (CatNet(), (2, 3, 4, 4), ["node 'cat'", "torch.cat along channels"]),
    (ReshapeNet(), (2, 3, 2, 2), ["node 'reshape'", "mixes units"]),
    (Branchy(), (2, 3), ["cannot trace"]),
    (Recurrent(), (2, 5, 3), ["module 'r'", "LSTM"]),
    (ResidualUnknown(), (2, 3), ["node 'cumsum'"]),
])
def test_unsupported_graphs_are_refused_in_one_line(model, shape, words) -> None:
    with pytest.raises(LandscapeError) as info:
        permutation_spec(model, torch.randn(shape))
    text = str(info.value)
    assert "\n" not in text and text.startswith("cannot align")
    for word in words:
        assert word in text


def test_concatenated_output_heads_are_not_refused() -> None:
    """A cat of the output logits mixes nothing that could move: the hidden layer still aligns."""
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.h1, self.h2 = nn.Linear(5, 8), nn.Linear(8, 3), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = F.relu(self.a(x))
            return torch.cat([self.h1(z), self.h2(z)], 1)

    spec = permutation_spec(TwoHeads(), torch.randn(2, 5))
    assert [set(g.axes) for g in spec.groups] == [{("a.weight", 0), ("a.bias", 0), ("h1.weight", 1),
                                                   ("h2.weight", 1)}]


# ----------------------------------------------------------------------------------------------------------------
# permutations and the spec as data


def test_check_permutation() -> None:
    check_permutation(torch.tensor([2, 0, 1]), 3)
    for bad, n in [(torch.tensor([0, 0, 2]), 3), (torch.tensor([0, 1]), 3), (torch.tensor([0.0, 1.0]), 2),
                   (torch.tensor([0, 3, 1]), 3), ([0, 1], 2), (torch.tensor([[0, 1]]), 2)]:
        with pytest.raises(LandscapeError):
            check_permutation(bad, n)


def test_apply_permutation_refuses_bad_perms(built) -> None:
    model, _, spec = built["norm_cnn"]
    state = model.state_dict()
    perms = identity_perms(spec)
    assert all(torch.equal(v, state[k]) for k, v in apply_permutation(spec, state, perms).items())
    gn = group_of(spec, "gn.weight", 0)
    for change in [{gn: torch.tensor([4, 1, 2, 3, 0, 5, 6, 7])},  # crosses a GroupNorm group
                   {gn: torch.zeros(8, dtype=torch.long)}, {"nonexistent": torch.arange(3)}]:
        with pytest.raises(LandscapeError):
            apply_permutation(spec, state, {**perms, **change})
    with pytest.raises(LandscapeError):
        apply_permutation(spec, state, {k: v for k, v in perms.items() if k != gn})


def test_spec_json_round_trip(built) -> None:
    spec = built["vit"][2]
    text = json.dumps(spec.to_json())
    assert PermutationSpec.from_json(json.loads(text)) == spec
    data = json.loads(text)
    data["groups"][1]["axes"].append(list(data["groups"][0]["axes"][0]))  # one (key, axis) in two groups
    for bad in [data, {"format": "other"}, {**spec.to_json(), "groups": [{"name": "x", "size": -1, "block": 1,
                                                                          "axes": []}]}]:
        with pytest.raises(LandscapeError):
            PermutationSpec.from_json(bad)
