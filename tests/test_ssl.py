"""Self-supervised pre-training (experiments.ssl): BYOL's target and loss, SimCLR's NT-Xent, the
views, the linear probe, the stored checkpoint, the config keys and a BYOL study end to end."""
from __future__ import annotations

import copy
import math
import tomllib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments import ssl
from experiments.config import load_config, shipped_path
from experiments.data import EmbeddedSpec, embedded_tasks
from experiments.models import seeded_build
from experiments.samplers import plan_study
from experiments.study import _cache_paths, run_study
from experiments.training import Hooks, logits_metrics, predict
from landscape.core.errors import LandscapeError
from landscape.store.store import Store

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _private_cache_one_thread(tmp_path, monkeypatch):
    """A cache of the test's own; one thread (these tiny models run fastest so on a shared CPU)."""
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# BYOL: the target's moving average, the loss, no gradient to the target


def test_ema_tau_follows_the_cosine_schedule():
    # τ_k = 1 − (1 − τ_base)(cos(πk/K) + 1)/2, by hand: τ_base at k = 0, halfway at K/2, 1 at K
    assert ssl.ema_tau(0, 10, 0.99) == pytest.approx(0.99, abs=1e-15)
    assert ssl.ema_tau(5, 10, 0.99) == pytest.approx(0.995, abs=1e-15)
    assert ssl.ema_tau(10, 10, 0.99) == pytest.approx(1.0, abs=1e-15)
    assert ssl.ema_tau(1, 4, 0.9) == pytest.approx(1 - 0.1 * (math.sqrt(0.5) + 1) / 2, abs=1e-15)


def test_ema_update_against_the_closed_form():
    torch.manual_seed(3)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    target = copy.deepcopy(online)
    for p in target.parameters():  # the two apart, as after some training
        p.data.normal_()
    before_t = [p.detach().clone() for p in target.parameters()]
    before_o = [p.detach().clone() for p in online.parameters()]
    buffers = [b.clone() for b in target.buffers()]
    K, base = 7, 0.9
    for k in range(3):
        tau = ssl.ema_tau(k, K, base)
        ssl.ema_update(target, online, tau)
        t_closed = 1 - (1 - base) * (math.cos(math.pi * k / K) + 1) / 2
        before_t = [t_closed * t + (1 - t_closed) * o for t, o in zip(before_t, before_o)]
    for p, want in zip(target.parameters(), before_t):
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-14)
    for p, o in zip(online.parameters(), before_o):  # the online network is only read
        assert torch.equal(p.detach(), o)
    for b, o in zip(target.buffers(), buffers):  # the target keeps its own BN statistics
        assert torch.equal(b, o)


def test_byol_loss_is_two_minus_two_cosine():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]], dtype=torch.float64)
    z = torch.tensor([[0.0, 5.0], [2.0, 2.0], [-3.0, -4.0]], dtype=torch.float64)
    # cosines 0, 1, −1 -> losses 2, 0, 4 -> mean 2
    assert float(ssl.byol_loss(p, z)) == pytest.approx(2.0, abs=1e-14)
    q = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    assert float(ssl.byol_loss(q, w)) == pytest.approx(2 - 2 * 4 / 5, abs=1e-14)
    # = ‖p/‖p‖ − z/‖z‖‖², the paper's form
    assert float(ssl.byol_loss(q, w)) == pytest.approx(float((F.normalize(q) - F.normalize(w)).pow(2).sum()),
                                                       abs=1e-14)


def test_the_target_gets_no_gradient():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
    online = ssl.Online(backbone, ssl.mlp(6, 8, 4), ssl.mlp(4, 8, 4)).double()
    target = ssl.make_target(online)
    v1, v2 = torch.randn(5, 3, 2, 2, dtype=torch.float64), torch.randn(5, 3, 2, 2, dtype=torch.float64)
    loss = ssl.byol_loss(online(v1), target(v2)) + ssl.byol_loss(online(v2), target(v1))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert all(p.grad is not None for p in online.parameters())
    # the stop-gradient is in the loss itself: a z that would carry a gradient gets none
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    p = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    ssl.byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None


# ----------------------------------------------------------------------------------------------
# SimCLR


def _nt_xent_loops(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """NT-Xent by its definition, pair by pair in fp64."""
    z = [v.double() for v in torch.cat([z1, z2])]
    n2, n = len(z), len(z1)

    def sim(a, b):
        return float(a @ b) / (float(a.norm()) * float(b.norm()))

    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        den = sum(math.exp(sim(z[i], z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(sim(z[i], z[j]) / t) / den)
    return total / n2


@pytest.mark.parametrize("n, d, t", [(1, 3, 0.5), (5, 7, 0.3), (6, 2, 1.7)])
def test_nt_xent_against_a_double_loop(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1 = 3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=g, dtype=torch.float64)
    assert float(ssl.nt_xent(z1, z2, t)) == pytest.approx(_nt_xent_loops(z1, z2, t), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------------------------
# views

AUG = {"shift": 2, "flip": False, "crop": 0.6, "brightness": 0.4, "contrast": 0.4, "noise": 0.3}


def test_views_are_reproducible_from_the_generator_alone():
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = ssl.augment(x, torch.Generator().manual_seed(7), **AUG)
    torch.manual_seed(2)  # the global RNG is not used
    b = ssl.augment(x, torch.Generator().manual_seed(7), **AUG)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(7)
    v1, v2 = ssl.augment(x, g, **AUG), ssl.augment(x, g, **AUG)
    assert torch.equal(v1, a) and not torch.equal(v1, v2)
    assert all(not torch.equal(v1[i], v2[i]) for i in range(len(x)))  # each image's two views differ
    assert not torch.equal(v1, x)


def test_each_augmentation_on_its_own():
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    none = {"shift": 0, "flip": False, "crop": 1.0, "brightness": 0.0, "contrast": 0.0, "noise": 0.0}
    assert torch.equal(ssl.augment(x, torch.Generator(), **none), x)
    # contrast and brightness: an affine map of each image, its own mean kept up to the brightness offset
    y = ssl.augment(x, torch.Generator().manual_seed(1), **{**none, "contrast": 0.5})
    for i in range(4):
        c = (y[i] - y[i].mean()).flatten() @ (x[i] - x[i].mean()).flatten() / (x[i] - x[i].mean()).pow(2).sum()
        torch.testing.assert_close(y[i], x[i].mean() + c * (x[i] - x[i].mean()), rtol=1e-5, atol=1e-5)
        assert 0.5 <= float(c) <= 1.5
    # a shift moves pixels (zero padding): every image's values are its own shifted
    s = ssl.augment(x, torch.Generator().manual_seed(2), **{**none, "shift": 1})
    for i in range(4):
        xp = F.pad(x[i:i + 1], (1, 1, 1, 1))
        assert any(torch.equal(s[i], xp[0, :, dy:dy + 8, dx:dx + 8]) for dy in range(3) for dx in range(3))
    # digits: no flips unless asked
    f = ssl.augment(x, torch.Generator().manual_seed(3), **{**none, "flip": True})
    assert all(torch.equal(f[i], x[i]) or torch.equal(f[i], x[i].flip(-1)) for i in range(4))
    assert any(torch.equal(f[i], x[i].flip(-1)) for i in range(4))


# ----------------------------------------------------------------------------------------------
# the linear probe and the stored checkpoint


def test_fit_probe_matches_scikit_learns_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    n, d, c, lam = 120, 5, 3, 1e-2
    f = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1, 2.0, 1.0]) + 3
    y = (f[:, :2] @ torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.3, -0.4]], dtype=torch.float64)
         + torch.randn(n, c, generator=g, dtype=torch.float64)).argmax(1)
    w, b = ssl.fit_probe(f, y, c, weight_decay=lam)
    mu, sd = f.mean(0), f.std(0)
    # ours: mean CE + λ/2‖W‖² on standardised features = sklearn's C·ΣCE + ½‖W‖² with C = 1/(λn)
    ref = LogisticRegression(C=1 / (lam * n), tol=1e-12, max_iter=10_000).fit(((f - mu) / sd).numpy(), y.numpy())
    ours = torch.softmax(f @ w.t() + b, 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(((f - mu) / sd).numpy()), atol=2e-5)


def _tiny_source():
    # one part per class: a problem a few hundred steps of BYOL or SimCLR learn on 8×8 images
    spec = EmbeddedSpec(seed=0, image_size=8, channels=3, parts=8, part_size=3, parts_per_image=1, source_classes=6,
                        source_train=384, source_test=300, target_classes=2, target_train_per_class=2,
                        target_test=10, noise=0.6)
    return embedded_tasks(spec, 1)[0]


def _ctx(src, **pretrain):
    cfg = load_config("tiny", [f"pretrain.{k}={v!r}".replace("'", '"') for k, v in pretrain.items()])
    return SimpleNamespace(cfg=cfg, source=src, device=CPU, hooks=Hooks(), quiet=True,
                           runtime=lambda: cfg["runtime"])


@pytest.mark.parametrize("objective", ["byol", "simclr"])
def test_the_checkpoint_is_the_model_with_a_linear_probe_head(objective):
    src = _tiny_source()
    ctx = _ctx(src, objective=objective, epochs=12, batch_size=64, lr=0.2)
    fresh = seeded_build("small_cnn", src.num_classes, src.input_shape, 4, 11)
    unit = SimpleNamespace(seed=11, epochs=12, name="pretrain-0")
    seen = {}
    ctx.hooks = Hooks(unit_start=lambda u, m, opt: seen.update(opt=opt))
    model = ssl.pretrain(ctx, unit, copy.deepcopy(fresh).train(), torch.Generator().manual_seed(11))
    sd, want = model.state_dict(), fresh.state_dict()
    assert list(sd) == list(want) and all(sd[k].shape == want[k].shape for k in want)
    assert not any(k.startswith(("projector", "predictor", "target")) for k in sd)
    # the optimizer trained the backbone (and the heads), never the head the probe replaces
    trained = {id(p) for grp in seen["opt"].param_groups for p in grp["params"]}
    assert all(id(p) in trained for n, p in model.named_parameters() if not n.startswith("head."))
    assert not torch.equal(sd["features.0.weight"], want["features.0.weight"])

    def probe_acc(m):
        return logits_metrics(predict(m, src, CPU), src.test_labels())["test_acc"]

    # the head is the probe: refitting it on the frozen features changes nothing
    refit = ssl.linear_probe(copy.deepcopy(model), src, CPU, weight_decay=ctx.cfg["pretrain"]["probe_weight_decay"])
    torch.testing.assert_close(refit.head.weight, model.head.weight, rtol=0, atol=1e-6)
    # and pre-training taught the backbone something: its probe beats a random backbone's
    rand = ssl.linear_probe(copy.deepcopy(fresh), src, CPU)
    assert probe_acc(model) > probe_acc(rand) + 0.1


def test_a_pretraining_run_is_reproducible_bit_for_bit():
    src = _tiny_source()
    ctx = _ctx(src, objective="byol", epochs=2, batch_size=64)
    unit = SimpleNamespace(seed=5, epochs=2, name="pretrain-0")
    runs = []
    for s in (1, 2):
        torch.manual_seed(s)
        m = seeded_build("small_cnn", src.num_classes, src.input_shape, 4, 5).train()
        runs.append(ssl.pretrain(ctx, unit, m, torch.Generator().manual_seed(5)).state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


# ----------------------------------------------------------------------------------------------
# the config keys and the cache


def test_objective_keys_are_validated_in_one_line():
    for bad, msg in [('pretrain.objective="moco"', "pretrain.objective must be one of supervised, byol, simclr"),
                     ("pretrain.ema=0.9", "pretrain.ema only applies to pretrain.objective = 'byol'"),
                     ("pretrain.augment_noise=0.1", "only applies to pretrain.objective = 'byol or simclr'")]:
        with pytest.raises(LandscapeError, match=msg.replace("(", r"\(")) as e:
            load_config("tiny", [bad])
        assert "\n" not in str(e.value)
    for sets, msg in [(["pretrain.ema=1.0"], "ema"), (["pretrain.temperature=0.1"], "temperature only applies"),
                      (["pretrain.batch_size=1"], "batch_size must be at least 2"),
                      (["pretrain.augment_crop=0"], "augment_crop"), (["pretrain.augment_contrast=1.0"], "contrast"),
                      (["pretrain.augment_shift=8"], "augment_shift")]:
        with pytest.raises(LandscapeError, match=msg):
            load_config("tiny", ['pretrain.objective="byol"', *sets])
    with pytest.raises(LandscapeError, match="temperature"):
        load_config("tiny", ['pretrain.objective="simclr"', "pretrain.temperature=-1"])
    sup, byol = load_config("tiny"), load_config("tiny", ['pretrain.objective="byol"'])
    assert "objective" not in sup["pretrain"] and "ema" not in sup["pretrain"]  # supervised: as before
    assert byol["pretrain"]["objective"] == "byol" and "temperature" not in byol["pretrain"]
    assert load_config("tiny", ['pretrain.objective="supervised"']).fingerprint() == sup.fingerprint()
    assert byol.fingerprint() != sup.fingerprint()


def test_the_cache_keys_on_the_objective_and_its_hyperparameters():
    sup = load_config("tiny")
    unit = plan_study(sup).unit("pretrain-0")
    keys = {_cache_paths(load_config("tiny", sets), unit)[0] for sets in
            ([], ['pretrain.objective="byol"'], ['pretrain.objective="byol"', "pretrain.ema=0.9"],
             ['pretrain.objective="simclr"'], ['pretrain.objective="simclr"', "pretrain.temperature=0.2"],
             ['pretrain.objective="byol"', "pretrain.augment_noise=0.0"])}
    assert len(keys) == 6


# ----------------------------------------------------------------------------------------------
# a BYOL study end to end


def test_a_byol_study_end_to_end(tmp_path):
    with open(shipped_path("tiny"), "rb") as f:
        raw = tomllib.load(f)
    raw["pretrain"].update(objective="byol", epochs=4)
    raw["methods"] = {"local_de": {}, "global_de": {}}
    raw["analysis"].update(plane=False, curves=False, sharpness=False, pairwise=False)
    summary = run_study(raw, str(tmp_path / "study"), quiet=True, use_cache=False)
    cfg = load_config(raw)
    source = embedded_tasks(cfg.embedded, cfg["data"]["augment_shift"])[0]
    accs = summary["seeds"]["0"]["transfer"]["pretrained_source_acc"]
    assert set(accs) == {"pretrain-0", "pretrain-1", "pretrain-2"}
    assert summary["study"]["pretrain_objective"] == "byol"
    with Store(str(tmp_path / "study" / "results"), "r") as st:
        for name, acc in accs.items():
            snap = st.read_snapshot(name)
            assert snap.meta["objective"] == "byol" and snap.meta["linear_probe_acc"] == acc == snap.meta[
                "source_test_acc"]
            # exactly the source model's parameters and buffers: no projector, predictor or target
            model = seeded_build("small_cnn", 8, (3, 8, 8), 4, 0)
            assert list(snap.layout.names) == [n for n, _ in model.named_parameters()]
            assert set(snap.buffers) == {n for n, _ in model.named_buffers()}
            # pre-trained (not its initialisation), and its head the linear probe of that backbone
            init = seeded_build("small_cnn", 8, (3, 8, 8), 4, plan_study(cfg).unit(name).seed)
            snap.load_into(model)
            assert not torch.equal(model.features[0].weight, init.features[0].weight)
            refit = ssl.linear_probe(copy.deepcopy(model), source, CPU,
                                     weight_decay=cfg["pretrain"]["probe_weight_decay"])
            torch.testing.assert_close(refit.head.weight, model.head.weight, rtol=0, atol=1e-5)
    report = (tmp_path / "study" / "report.md").read_text()
    assert "linear-probe accuracy" in report and "BYOL" in report
    mean = sum(accs.values()) / len(accs)
    assert f"{100 * mean:.1f}%" in report


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_self_supervised_weight_decay_spares_norms_and_biases(optimizer):
    """norm_decay = false (the SSL default): one step with zero gradients shrinks only the weights of
    2 or more dimensions, by the closed form of each optimizer's decay; biases and BN stay put."""
    from experiments.training import Optim

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-1, 1)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    lr, wd = 0.1, 0.01
    recipe = Optim.from_recipe({"optimizer": optimizer, "lr": lr, "weight_decay": wd, "momentum": 0.9,
                                "betas": [0.9, 0.999], "batch_size": 8})
    opt = recipe.make(net, norm_decay=False)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        # SGD adds wd·w to the gradient: w - lr·wd·w; AdamW decouples it: w·(1 - lr·wd) (zero Adam step)
        want = before[n] * (1 - lr * wd) if p.ndim >= 2 else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-7)
    assert load_config("tiny", ['pretrain.objective="byol"'])["pretrain"]["norm_decay"] is False
