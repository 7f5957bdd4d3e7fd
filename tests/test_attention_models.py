"""Attention models through the curvature commands: `landscape hessian` (top-k eigenvalues, trace)
and `landscape connect` on a tiny torchvision VisionTransformer and an nn.TransformerEncoder
classifier. Hessian-vector products differentiate twice, which the fused scaled-dot-product-
attention kernels cannot; the products run on the MATH backend, recorded in the stored config
of attention models only.

References, independent of the toolkit's operator and Lanczos, in fp64 under the MATH backend:
the dense Hessian (torch.autograd.functional.hessian, eigvalsh) of the encoder classifier, and
power iteration with torch.autograd.functional.hvp on the ViT at a trained point (top eigenvalue
about twice the next, the most negative one 20 times smaller: 60 steps converge far below the
tolerance). The CLI's products are fp32: its top eigenvalues agree within 1e-4 relative (the
Lanczos tolerance; measured 2e-8 for the encoder, 6e-6 for the ViT); its trace lies within 4
reported standard errors of the exact one.
"""
from __future__ import annotations

import contextlib
import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import landscape.evaluate.hessian as hessian_module
from landscape.cli import main
from landscape.core.checkpoints import Snapshot
from landscape.store.store import Store

MODULE = "attention_models_user"
USER_MODULE = textwrap.dedent("""
    import torchvision
    from torch import nn


    def vit(num_classes=3, **_):
        return torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2,
                                                    hidden_dim=16, mlp_dim=32, num_classes=num_classes)


    class EncoderClassifier(nn.Module):
        \"\"\"Sequences of 4 tokens of 3 features: embedding, one encoder layer, mean over tokens.\"\"\"

        def __init__(self, num_classes=3):
            super().__init__()
            self.embed = nn.Linear(3, 8)
            layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))


    def encoder(num_classes=3, **_):
        return EncoderClassifier(num_classes)


    def mlp(num_classes=3, **_):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, num_classes))
""")
WORK_FILES = {f"{MODULE}.py": USER_MODULE}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is faster (and steadier on a shared machine) than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_work(tmp_path):
    """Images for the ViT (24 of 3×8×8), token sequences for the encoder (24 of 4×3), each with two
    checkpoints; the ViT's first trained 60 Adam steps (a point with a clear top eigenvalue)."""
    import attention_models_user as user

    g = torch.Generator().manual_seed(0)
    for name, shape in (("images", (3, 8, 8)), ("tokens", (4, 3))):
        torch.save({"x": torch.randn(24, *shape, generator=g), "y": torch.randint(0, 3, (24,), generator=g)},
                   tmp_path / f"{name}.pt")
    images = torch.load(tmp_path / "images.pt")
    for factory in ("vit", "encoder", "mlp"):
        for seed in (1, 2):
            torch.manual_seed(seed)
            model = getattr(user, factory)()
            if factory == "vit" and seed == 1:
                opt = torch.optim.Adam(model.parameters(), lr=1e-2)
                for _ in range(60):
                    opt.zero_grad()
                    nn.functional.cross_entropy(model(images["x"]), images["y"]).backward()
                    opt.step()
            torch.save(model.state_dict(), tmp_path / f"{factory}{seed}.pt")


ARGS = {"vit": ["--model", f"{MODULE}:vit", "--data", "tensors:images.pt", "--quiet"],
        "encoder": ["--model", f"{MODULE}:encoder", "--data", "tensors:tokens.pt", "--quiet"],
        "mlp": ["--model", f"{MODULE}:mlp", "--data", "tensors:tokens.pt", "--quiet"]}


def cli_json(capsys, *argv: str) -> dict:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The mean cross-entropy over (x, y) as a function of the flat fp64 parameter vector."""
    model = model.double().eval()
    names = [(n, p.shape) for n, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(v: torch.Tensor) -> torch.Tensor:
        parts, i = {}, 0
        for n, shape in names:
            parts[n] = v[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return nn.functional.cross_entropy(functional_call(model, parts, (x.double(),)), y)
    return loss, flat


def reference_model(factory: str, ckpt: str) -> nn.Module:
    import attention_models_user as user

    model = getattr(user, factory)()
    model.load_state_dict(torch.load(ckpt))
    return model


def dense_hessian(factory: str, ckpt: str, data: str) -> torch.Tensor:
    d = torch.load(data)
    loss, flat = _flat_loss(reference_model(factory, ckpt), d["x"], d["y"])
    with sdpa_kernel(SDPBackend.MATH):
        h = torch.autograd.functional.hessian(loss, flat, vectorize=True)
    return (h + h.T) / 2


def power_iteration(factory: str, ckpt: str, data: str, steps: int = 60) -> float:
    d = torch.load(data)
    loss, flat = _flat_loss(reference_model(factory, ckpt), d["x"], d["y"])
    v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    lam = 0.0
    with sdpa_kernel(SDPBackend.MATH):
        for _ in range(steps):
            v = v / v.norm()
            hv = torch.autograd.functional.hvp(loss, flat, v)[1]
            lam, v = float(v @ hv), hv
    return lam


def test_hessian_of_the_encoder_classifier_matches_the_dense_hessian(work, capsys):
    res = cli_json(capsys, "hessian", "encoder1.pt", "--top-k", "2", "--trace", "--probes", "60", "--out", "s",
                   *ARGS["encoder"])
    h = dense_hessian("encoder", "encoder1.pt", "tokens.pt")
    exact = torch.linalg.eigvalsh(h).flip(0)[:2].numpy()
    assert np.allclose(res["eigenvalues"], exact, rtol=1e-4, atol=1e-4 * abs(exact[0])), (res["eigenvalues"], exact)
    assert abs(res["trace"] - float(h.trace())) <= 4 * res["trace_stderr"]
    with Store("s", mode="r") as store:
        assert store.read_attrs("hessians", "hessian")["config"]["sdpa_backend"] == "math"
    again = cli_json(capsys, "hessian", "encoder1.pt", "--top-k", "2", "--trace", "--probes", "60", "--out", "s",
                     *ARGS["encoder"])
    assert again["computed_now"] == 0 and again["eigenvalues"] == res["eigenvalues"]


def test_hessian_of_the_vision_transformer_matches_power_iteration(work, capsys):
    res = cli_json(capsys, "hessian", "vit1.pt", "--top-k", "2", "--trace", "--probes", "30", "--out", "s",
                   *ARGS["vit"])
    assert res["converged"] and res["eigenvalues"][0] > res["eigenvalues"][1]
    assert res["trace"] is not None and np.isfinite(res["trace"])
    reference = power_iteration("vit", "vit1.pt", "images.pt")
    assert res["eigenvalues"][0] == pytest.approx(reference, rel=1e-4)
    with Store("s", mode="r") as store:
        assert store.read_attrs("hessians", "hessian")["config"]["sdpa_backend"] == "math"
    code = main(["hessian", "vit2.pt", "--top-k", "1", *ARGS["vit"]])  # the human-readable output
    assert code == 0 and "λ" in capsys.readouterr().out


def test_the_products_fail_without_the_math_backend(work, monkeypatch):
    """What the MATH backend is for: without it the fused kernel has no double backward."""
    import attention_models_user as user

    model = user.vit()
    d = torch.load("images.pt")
    monkeypatch.setattr(hessian_module, "double_backward_scope", contextlib.nullcontext)
    op = hessian_module.HessianOperator(model, Snapshot.from_model(model), d["x"], d["y"])
    with pytest.raises(RuntimeError, match="derivative for .*scaled_dot_product.* is not implemented"):
        op.matvec(torch.ones(op.numel))


def test_models_without_attention_are_unchanged_and_unrecorded(work, capsys, monkeypatch):
    """The backend changes no product of a model without attention (bit for bit), and its stored
    config has no backend key: results stored before the key existed still resume."""
    import attention_models_user as user

    model = user.mlp()
    d = torch.load("tokens.pt")
    v = torch.randn(sum(p.numel() for p in model.parameters()))
    with_math = hessian_module.HessianOperator(model, Snapshot.from_model(model), d["x"], d["y"], batch_size=10)
    hv = with_math.matvec(v)
    with monkeypatch.context() as patch:
        patch.setattr(hessian_module, "double_backward_scope", contextlib.nullcontext)
        plain = hessian_module.HessianOperator(model, Snapshot.from_model(model), d["x"], d["y"], batch_size=10)
        assert torch.equal(plain.matvec(v), hv)
    assert not hessian_module.holds_attention(model) and hessian_module.holds_attention(user.vit())
    cli_json(capsys, "hessian", "mlp1.pt", "--out", "s", *ARGS["mlp"])
    with Store("s", mode="r") as store:
        assert "sdpa_backend" not in store.read_attrs("hessians", "hessian")["config"]


@pytest.mark.parametrize("factory, data", [("vit", "images"), ("encoder", "tokens")])
def test_connect_trains_a_curve_on_attention_models(work, capsys, factory, data):
    res = cli_json(capsys, "connect", f"{factory}1.pt", f"{factory}2.pt", "--epochs", "2", "--num", "3",
                   "--train-batch-size", "8", "--out", "s", *ARGS[factory])
    assert len(res["alphas"]) == 3 and np.all(np.isfinite(res["train_loss"]))
    assert len(res["history"]) == 2 and all(np.isfinite(res["history"]))
    again = cli_json(capsys, "connect", f"{factory}1.pt", f"{factory}2.pt", "--epochs", "2", "--num", "3",
                     "--train-batch-size", "8", "--out", "s", *ARGS[factory])
    assert again["computed_now"] == 0 and again["train_loss"] == res["train_loss"]


def test_hessian_plane_directions_on_an_attention_model(work, capsys):
    res = cli_json(capsys, "plane", "encoder1.pt", "--hessian-directions", "--x", "-1:1:3", "--y", "-1:1:3",
                   "--out", "s", *ARGS["encoder"])
    assert np.asarray(res["train_loss"]).shape == (3, 3) and np.all(np.isfinite(res["train_loss"]))
    with Store("s", mode="r") as store:
        assert store.read_attrs("directions", "plane-hessian")["config"]["sdpa_backend"] == "math"
