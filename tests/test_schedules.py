"""The AdamW + linear warmup recipe against closed forms and torch.optim.AdamW.

One small study (tiny.toml with an AdamW fine-tuning recipe that warms up, a warming-up SGD
pre-training, and one method of each cycle kind) is trained once for the module, with hooks that
record every unit's learning rates, first moments and optimizer.
"""
from __future__ import annotations

import copy
import math
import tomllib

import pytest
import torch

from experiments.config import load_config, shipped_path
from experiments.records import read_unit_snapshot
from experiments.samplers import plan_study
from experiments.study import RESULTS, run_study
from experiments.training import Hooks, fge_cycle_iterations, fge_lr, iterations_per_epoch
from landscape.core.errors import LandscapeError
from landscape.store.store import Store

BETAS, WD, WARMUP = [0.8, 0.95], 0.05, 1.0


def _raw(**finetune):
    with open(shipped_path("tiny"), "rb") as f:
        raw = tomllib.load(f)
    raw["pretrain"].update(warmup_epochs=1)  # SGD, warming up over its first epoch
    raw["finetune"].update({"optimizer": "adamw", "betas": BETAS, "weight_decay": WD, "warmup_epochs": WARMUP,
                            "lr": 0.005, **finetune})
    raw["scratch"] = {"enabled": False}
    raw["study"]["members"] = 3
    raw["methods"] = {"sse": {"lr_scale": 2.0, "cycle_epochs": 2}, "fge": raw["methods"]["fge"],
                      "fge_cyclic": raw["methods"]["fge_cyclic"], "swa": {"epochs": 2}}
    return raw


@pytest.fixture(scope="module")
def adamw(tmp_path_factory):
    out = tmp_path_factory.mktemp("adamw") / "study"
    rec = {"lrs": {}, "beta1": {}, "opt": {}, "start_state": {}, "adamw_step": {}}

    def unit_start(unit, model, optimizer):
        rec["lrs"][unit.name], rec["beta1"][unit.name], rec["opt"][unit.name] = [], [], optimizer
        rec["start_state"][unit.name] = {n: {k: v.clone() for k, v in optimizer.state[p].items()}
                                         for n, p in model.named_parameters() if p in optimizer.state}
        rec["model_" + unit.name] = model

    def step(unit, i, lr, model, optimizer):
        rec["lrs"][unit.name].append(lr)
        g = optimizer.param_groups[0]
        rec["beta1"][unit.name].append(g["betas"][0] if "betas" in g else g["momentum"])
        if unit.name == "ft-0-0" and i in (1, 2):  # the weights, state and lr before step 1, then its gradients
            rec["adamw_step"][i] = {
                "params": [p.detach().clone() for p in model.parameters()],
                "grads": [p.grad.detach().clone() for p in model.parameters()],
                "state": [{k: v.clone() for k, v in optimizer.state[p].items()} for p in model.parameters()],
                "lr": lr}

    cfg = load_config(_raw())
    run_study(cfg, str(out), quiet=True, hooks=Hooks(unit_start=unit_start, step=step), use_cache=False,
              analyze=False)
    store = Store(str(out / RESULTS), "r")
    yield cfg, plan_study(cfg), store, rec
    store.close()


def _ipe(cfg, task="target"):
    if task == "source":
        return iterations_per_epoch(cfg["data"]["source_train"], cfg["pretrain"]["batch_size"])
    return iterations_per_epoch(cfg["data"]["target_classes"] * cfg["data"]["target_train_per_class"],
                                cfg["finetune"]["batch_size"])


def test_warmup_then_cosine_per_iteration(adamw):
    """lr(i) = η·(i+1)/W over the W = warmup_epochs × ipe warmup steps, then η·½(1 + cos(π·(i−W)/(n−W)));
    for the AdamW fine-tuning and for the SGD pre-training alike."""
    cfg, plan, store, rec = adamw
    for unit, table, ipe in (("ft-0-0", cfg["finetune"], _ipe(cfg)), ("pretrain-0", cfg["pretrain"], _ipe(cfg, "source"))):
        eta, n = table["lr"], table["epochs"] * ipe
        W = round(table["warmup_epochs"] * ipe)
        assert 1 < W < n
        want = [eta * (i + 1) / W if i < W else eta * 0.5 * (1 + math.cos(math.pi * (i - W) / (n - W)))
                for i in range(n)]
        assert rec["lrs"][unit] == pytest.approx(want, rel=1e-12, abs=1e-18), unit
        assert rec["lrs"][unit][W - 1] == pytest.approx(eta) and rec["lrs"][unit][0] == pytest.approx(eta / W)
    assert isinstance(rec["opt"]["pretrain-0"], torch.optim.SGD)


def test_the_recipe_builds_adamw_and_steps_as_torch_adamw(adamw):
    """Every target-task unit's optimizer is torch.optim.AdamW with the configured betas and decoupled
    weight decay; one step of the fine-tuning (weights, moments, lr and gradients recorded through the
    hooks) is torch.optim.AdamW's own step."""
    cfg, plan, store, rec = adamw
    for name in [u.name for u in plan.units if u.kind != "pretrain"]:
        opt = rec["opt"][name]
        assert type(opt) is torch.optim.AdamW, name
        d = opt.defaults
        assert d["weight_decay"] == WD and not d["amsgrad"] and d["eps"] == 1e-8, name
        assert list(d["betas"]) == BETAS, name  # (CyclicLR cycles beta1 in the groups, not here)
    before, after = rec["adamw_step"][1], rec["adamw_step"][2]
    params = [p.clone().requires_grad_(True) for p in before["params"]]
    ref = torch.optim.AdamW(params, lr=before["lr"], betas=tuple(BETAS), weight_decay=WD)
    for p, g, st in zip(params, after["grads"], before["state"]):
        p.grad = g
        ref.state[p] = {k: v.clone() for k, v in st.items()}
    assert all(float(st["step"]) == 1.0 for st in before["state"])  # a state with one step behind it
    ref.step()
    for p, q in zip(params, after["params"]):
        assert torch.equal(p.detach(), q)
    # (and torch's Adam, whose weight decay is added to the gradient, is another step)
    coupled = [p.clone().requires_grad_(True) for p in before["params"]]
    adam = torch.optim.Adam(coupled, lr=before["lr"], betas=tuple(BETAS), weight_decay=WD)
    for p, g, st in zip(coupled, after["grads"], before["state"]):
        p.grad = g
        adam.state[p] = {k: v.clone() for k, v in st.items()}
    adam.step()
    assert not all(torch.equal(p.detach(), q) for p, q in zip(coupled, after["params"]))


def test_cycles_set_adamw_lr_without_warmup(adamw):
    """An SSE cycle: η_c·½(1 + cos(π·t/C)) per epoch from its first step (no warmup); Garipov's FGE:
    fge_lr of the global iteration; the cyclic FGE: CyclicLR's triangle, beta1 mirrored 0.9 → 0.8."""
    cfg, plan, store, rec = adamw
    ipe, eta = _ipe(cfg), cfg["finetune"]["lr"]
    sse = cfg.method("sse")
    eta_c, C = eta * sse.params["lr_scale"], int(sse.params["cycle_epochs"])
    for name in plan.members["sse"][1:]:
        assert rec["lrs"][name] == pytest.approx([eta_c * 0.5 * (1 + math.cos(math.pi * (i // ipe) / C))
                                                  for i in range(C * ipe)], rel=1e-12)
    fge = cfg.method("fge")
    c = fge_cycle_iterations(fge.params["cycle_epochs"], ipe)
    lr1, lr2 = eta * fge.params["lr1_scale"], eta * fge.params["lr2_scale"]
    got = [lr for name in plan.members["fge"] for lr in rec["lrs"][name]]
    assert got == pytest.approx([fge_lr(i, lr1, lr2, c) for i in range(len(got))], rel=1e-12)
    cyc = cfg.method("fge_cyclic")
    hi = eta * cyc.params["lr_scale"]
    n = round(cyc.params["cycle_epochs"] * ipe)
    up = n // 2
    scale = [i / up if i <= up else (n - i) / (n - up) for i in range(n)]
    for name in plan.members["fge_cyclic"][1:]:
        assert rec["lrs"][name] == pytest.approx([0.01 * hi + 0.99 * hi * s for s in scale], rel=1e-12), name
        assert rec["beta1"][name] == pytest.approx([0.9 - 0.1 * s for s in scale], rel=1e-12), name


def test_fge_carries_adamw_state_across_segments(adamw):
    """With AdamW, Garipov's FGE carries the moments and the step count: segment k+1 starts with
    segment k's final state (step counts continue)."""
    cfg, plan, store, rec = adamw
    names = plan.members["fge"]
    assert rec["start_state"][names[0]] == {}
    for k, (prev, name) in enumerate(zip(names, names[1:])):
        opt, model = rec["opt"][prev], rec["model_" + prev]
        end = {n: opt.state[p] for n, p in model.named_parameters()}
        start = rec["start_state"][name]
        steps = sum(len(rec["lrs"][x]) for x in names[:k + 1])  # every step of the run so far
        assert set(start) == set(end)
        for n in end:
            assert set(start[n]) == {"step", "exp_avg", "exp_avg_sq"} and float(start[n]["step"]) == steps
            for key in start[n]:
                assert torch.equal(start[n][key], end[n][key]), (name, n, key)
        stored = read_unit_snapshot(store, prev).optimizer_state
        assert set(stored) == {f"{k}/{n}" for n in end for k in ("step", "exp_avg", "exp_avg_sq")}


@pytest.mark.parametrize("override, message", [
    ({"momentum": 0.9}, "finetune.momentum does not apply to optimizer = \"adamw\""),
    ({"betas": [0.9]}, "finetune.betas must be two numbers in [0, 1)"),
    ({"betas": [0.9, 1.0]}, "finetune.betas must be two numbers in [0, 1)"),
    ({"optimizer": "adam"}, "finetune.optimizer must be one of sgd, adamw"),
    ({"warmup_epochs": 3}, "finetune.warmup_epochs must be a number in [0, finetune.epochs = 3)"),
    ({"warmup_epochs": -1}, "finetune.warmup_epochs must be a number in [0, finetune.epochs = 3)"),
])
def test_recipe_errors_are_one_line(override, message):
    with pytest.raises(LandscapeError) as e:
        load_config(_raw(**override))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_recipe_defaults_and_sgd_keys():
    raw = _raw()
    raw["finetune"] = {"epochs": 3, "lr": 0.02, "batch_size": 8, "optimizer": "adamw"}
    ft = load_config(raw)["finetune"]
    assert ft["betas"] == [0.9, 0.999] and ft["weight_decay"] == 0.01 and "warmup_epochs" not in ft
    raw["finetune"] = {"epochs": 3, "lr": 0.02, "batch_size": 8, "betas": [0.9, 0.99]}
    with pytest.raises(LandscapeError, match="finetune.betas applies to optimizer = \"adamw\""):
        load_config(raw)
    # an SGD recipe without warmup is the table it always was (fingerprints and caches unchanged)
    sgd = load_config("tiny")["finetune"]
    assert sgd == {"epochs": 3, "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 8}
    raw = copy.deepcopy(_raw())
    raw["finetune"]["warmup_epochs"] = 2.5  # scratch.epochs = 2 < 2.5: the baseline could not warm up
    raw["scratch"] = {"enabled": True, "epochs": 2}
    with pytest.raises(LandscapeError, match="must be less than scratch.epochs"):
        load_config(raw)
