"""Schedules, the samplers' starting points, the optimizer reset (and Garipov FGE's carried
optimizer), and SWA, on the tiny study.

One tiny study (experiments/configs/tiny.toml, training only) is run once for the module with
hooks that record every unit's starting point, optimizer and learning rates.
"""
from __future__ import annotations

import copy
import math
import tomllib

import pytest
import torch

from experiments.config import load_config, shipped_path
from experiments.records import read_unit_snapshot
from experiments.samplers import TrainingContext, plan_study, run_unit, start_model
from experiments.study import RESULTS, prepare, run_study
from experiments.training import Hooks, cosine_factor, fge_cycle_iterations, fge_lr, iterations_per_epoch
from landscape.core.params import get_buffers, parameters_to_vector
from landscape.store.store import Store


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny study trained once, with a record of what every unit started from and did."""
    out = tmp_path_factory.mktemp("tiny-samplers")
    rec = {"start": {}, "first_step": {}, "second_step": {}, "lrs": {}, "optimizers": {}, "models": {},
           "start_momentum": {}}

    def unit_start(unit, model, optimizer):
        rec["start"][unit.name] = (parameters_to_vector(model).clone(), get_buffers(model))
        rec["optimizers"][unit.name] = optimizer  # kept alive: identities stay unique
        rec["models"][unit.name] = model
        rec["start_momentum"][unit.name] = _momentum_buffers(model, optimizer)
        rec["lrs"][unit.name] = []

    def step(unit, i, lr, model, optimizer):
        rec["lrs"][unit.name].append(lr)
        rec.setdefault("momenta", {}).setdefault(unit.name, []).append(optimizer.param_groups[0]["momentum"])
        if i == 0:
            rec["first_step"][unit.name] = len(optimizer.state)
        if i == 1:
            rec["second_step"][unit.name] = sum("momentum_buffer" in s for s in optimizer.state.values())

    cfg = load_config("tiny")
    run_study(cfg, str(out), quiet=True, hooks=Hooks(unit_start=unit_start, step=step), use_cache=False,
              analyze=False)
    store = Store(str(out / RESULTS), "r")
    yield cfg, plan_study(cfg), store, rec
    store.close()


def _momentum_buffers(model, optimizer) -> dict[str, torch.Tensor]:
    """SGD's momentum buffers by parameter name, read from the optimizer itself (copies)."""
    return {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()
            if "momentum_buffer" in optimizer.state.get(p, {})}


# ---------------------------------------------------------------------------------------------
# pure schedule functions


def test_cosine_schedule_values():
    """cosine_factor(t, E) = ½(1 + cos(π·t/E)), the factor of every cosine decay (lr = η·factor)."""
    assert [cosine_factor(t, 4) for t in range(4)] == [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                                       0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert cosine_factor(0, 7) == 1.0 and cosine_factor(7, 7) == 0.0
    assert cosine_factor(2, 3) + cosine_factor(1, 3) == pytest.approx(1.0)  # symmetric about t = E/2


def test_fge_schedule_values():
    lr1, lr2, c = 0.05, 0.0005, 8
    # t(i) = ((i mod c) + 1)/c; lr1 -> lr2 over the first half of a cycle, back over the second
    assert fge_lr(3, lr1, lr2, c) == pytest.approx(lr2, abs=1e-15)  # t = 1/2: the minimum
    assert fge_lr(7, lr1, lr2, c) == pytest.approx(lr1, abs=1e-15)  # t = 1: back at the maximum
    assert fge_lr(0, lr1, lr2, c) == pytest.approx((1 - 2 / 8) * lr1 + (2 / 8) * lr2, abs=1e-15)
    assert fge_lr(5, lr1, lr2, c) == pytest.approx((2 - 1.5) * lr2 + (1.5 - 1) * lr1, abs=1e-15)
    assert fge_lr(11, lr1, lr2, c) == fge_lr(3, lr1, lr2, c)
    assert fge_cycle_iterations(2.0, 3) == 6 and fge_cycle_iterations(1.5, 3) == 4  # even, minimum in the middle


# ---------------------------------------------------------------------------------------------
# schedules as run


def _ipe(cfg, n_train):
    return iterations_per_epoch(n_train, cfg["finetune"]["batch_size"])


def test_finetune_and_cycle_lrs_exact(tiny):
    cfg, plan, store, rec = tiny
    n = cfg["data"]["target_classes"] * cfg["data"]["target_train_per_class"]
    ipe = _ipe(cfg, n)
    eta, E = cfg["finetune"]["lr"], cfg["finetune"]["epochs"]
    lrs = rec["lrs"]["ft-0-0"]
    assert lrs == [eta * 0.5 * (1 + math.cos(math.pi * (i // ipe) / E)) for i in range(E * ipe)]
    for m in cfg.methods:
        if m.type not in ("sse", "starsse"):
            continue
        eta_c, C = eta * m.params["lr_scale"], m.params["cycle_epochs"]
        n = round(C * ipe)
        for name in plan.members[m.name][1:]:
            if float(C).is_integer():  # per epoch, as the paper's code
                want = [eta_c * 0.5 * (1 + math.cos(math.pi * (i // ipe) / C)) for i in range(n)]
            else:  # a fractional cycle: per iteration over its round(C·ipe) steps
                want = [eta_c * 0.5 * (1 + math.cos(math.pi * i / n)) for i in range(n)]
            assert rec["lrs"][name] == pytest.approx(want, rel=1e-12, abs=1e-15), name
            assert rec["lrs"][name][0] == eta_c  # restarts abruptly at eta_c every cycle
    assert any(not float(m.params["cycle_epochs"]).is_integer() for m in cfg.methods if m.type == "starsse")


def test_cyclic_fge_lrs_and_momenta_as_run(tiny):
    """The paper's code's FGE: a triangle from 0.01·η_c up to η_c over the first half of each cycle
    and back, the momentum mirrored between 0.9 and 0.8 (torch's CyclicLR defaults), closed forms."""
    cfg, plan, store, rec = tiny
    n_train = cfg["data"]["target_classes"] * cfg["data"]["target_train_per_class"]
    ipe = _ipe(cfg, n_train)
    m = cfg.method("fge_cyclic")
    hi = cfg["finetune"]["lr"] * m.params["lr_scale"]
    lo = 0.01 * hi
    n = round(m.params["cycle_epochs"] * ipe)
    up = n // 2
    scale = [i / up if i <= up else (n - i) / (n - up) for i in range(n)]
    names = plan.members["fge_cyclic"]
    assert names[0] == plan.finetuned and len(names) == cfg.members
    for prev, name in zip(names, names[1:]):
        assert rec["lrs"][name] == pytest.approx([lo + (hi - lo) * s for s in scale], rel=1e-12), name
        assert rec["momenta"][name] == pytest.approx([0.9 - 0.1 * s for s in scale], rel=1e-12), name
        params, _ = rec["start"][name]  # each cycle starts where the previous one ended
        assert torch.equal(params, store.read_snapshot(prev).params)


def test_fge_lrs_as_run(tiny):
    """Garipov's FGE: K segments of one triangular run from the fine-tuned model, which is not a
    member; the lr of every iteration is fge_lr of the global iteration, and every member is the
    snapshot right after a step at the minimum lr2."""
    cfg, plan, store, rec = tiny
    n = cfg["data"]["target_classes"] * cfg["data"]["target_train_per_class"]
    ipe = _ipe(cfg, n)
    m = cfg.method("fge")
    assert m.params["schedule"] == "garipov"
    c = fge_cycle_iterations(m.params["cycle_epochs"], ipe)
    lr1, lr2 = cfg["finetune"]["lr"] * m.params["lr1_scale"], cfg["finetune"]["lr"] * m.params["lr2_scale"]
    names = plan.members["fge"]
    assert len(names) == cfg.members and plan.finetuned not in names
    assert plan.unit(names[0]).parent == plan.finetuned
    assert [plan.unit(b).parent for b in names[1:]] == names[:-1]
    got = [lr for name in names for lr in rec["lrs"][name]]
    assert got == pytest.approx([fge_lr(i, lr1, lr2, c) for i in range(len(got))], rel=1e-12, abs=1e-15)
    for name in names:  # every FGE snapshot is taken right after the step at the minimum lr2
        assert rec["lrs"][name][-1] == pytest.approx(lr2, rel=1e-12)
    assert len(rec["lrs"][names[0]]) == c // 2 and all(len(rec["lrs"][x]) == c for x in names[1:])


def test_plane_through_accepts_garipov_fge_member_zero():
    """Garipov FGE's member 0 is its first minimum, not the fine-tuned model (the cyclic FGE's is)."""
    from landscape.core.errors import LandscapeError

    cfg = load_config("tiny", ["analysis.plane_through=['fge:0', 'local_de']"])
    assert cfg["analysis"]["plane_through"] == ["fge:0", "local_de"]
    with pytest.raises(LandscapeError, match="'fge_cyclic:0', which is the fine-tuned model"):
        load_config("tiny", ["analysis.plane_through=['fge_cyclic:0', 'local_de']"])


def test_fge_cost_counts_every_segment():
    """The report's cost of Garipov's FGE: the fine-tuning plus the epochs of its K segments as planned."""
    from experiments.summary import cost_epochs

    cfg = load_config("tiny")
    plan, m = plan_study(cfg), cfg.method("fge")
    want = cfg["finetune"]["epochs"] + sum(plan.unit(n).epochs for n in plan.members["fge"])
    assert cost_epochs({"type": "fge", "params": m.params}, cfg["finetune"]["epochs"], m.members) == want


def test_fge_carries_its_momentum_across_segments(tiny):
    """One optimizer for the whole FGE run: segment k+1 starts with segment k's final momentum
    buffers (as the optimizer left them), which are stored with segment k's snapshot; the first
    segment starts with none (the fine-tuning's optimizer state is not kept)."""
    cfg, plan, store, rec = tiny
    names = plan.members["fge"]
    assert rec["start_momentum"][names[0]] == {} and rec["first_step"][names[0]] == 0
    n_params = len(list(rec["models"][names[0]].parameters()))
    for prev, name in zip(names, names[1:]):
        end = _momentum_buffers(rec["models"][prev], rec["optimizers"][prev])
        start = rec["start_momentum"][name]
        assert len(end) == n_params and set(start) == set(end), name
        for k in end:
            assert torch.equal(start[k], end[k]), (name, k)
        stored = read_unit_snapshot(store, prev).optimizer_state
        assert set(stored) == {f"momentum_buffer/{k}" for k in end}
        assert all(torch.equal(stored[f"momentum_buffer/{k}"], end[k]) for k in end)
        # ...and the weights analyses read are the plain snapshot
        assert torch.equal(store.read_snapshot(prev).params, parameters_to_vector(rec["models"][prev]))
    assert read_unit_snapshot(store, names[-1]).optimizer_state is None  # nothing follows the last minimum


def test_fge_segments_are_one_optimizer_run(tiny, study_threads):
    """Garipov's fge.py written out: ONE torch SGD optimizer from the fine-tuned model through every
    segment (each segment's batches from its own seed), the lr set per iteration to fge_lr of the
    global iteration; its weights at each segment's end are the stored members."""
    cfg, plan, store, rec = tiny
    prep = prepare(cfg, "cpu")
    ctx = TrainingContext(cfg, prep.source, prep.target, prep.device, store.read_snapshot, lambda c: None, Hooks(), True)
    ft, m = cfg["finetune"], cfg.method("fge")
    ipe = iterations_per_epoch(prep.target.train_size(), ft["batch_size"])
    c = fge_cycle_iterations(m.params["cycle_epochs"], ipe)
    lr1, lr2 = ft["lr"] * m.params["lr1_scale"], ft["lr"] * m.params["lr2_scale"]
    names = plan.members["fge"]
    model = start_model(ctx, plan.unit(names[0]))  # the fine-tuned model
    opt = torch.optim.SGD(model.parameters(), lr=lr1, momentum=ft["momentum"], weight_decay=ft["weight_decay"])
    i = 0
    for k, name in enumerate(names):
        g = torch.Generator().manual_seed(plan.unit(name).seed)

        def stream(g=g):
            while True:
                yield from prep.target.train_batches(ft["batch_size"], g, prep.device)

        batches = stream()
        for _ in range(c // 2 if k == 0 else c):
            for group in opt.param_groups:
                group["lr"] = fge_lr(i, lr1, lr2, c)
            x, y = next(batches)
            loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            i += 1
        torch.testing.assert_close(parameters_to_vector(model), store.read_snapshot(name).params, rtol=1e-5,
                                   atol=1e-7, msg=name)


def _fge_only_config():
    """tiny.toml with only its Garipov FGE (and no from-scratch baseline): its units are the same
    units as the whole tiny study's (a unit's seed comes from its name), so they train the same."""
    with open(shipped_path("tiny"), "rb") as f:
        raw = tomllib.load(f)
    raw["methods"] = {"fge": raw["methods"]["fge"]}
    raw["scratch"] = {"enabled": False}
    return load_config(raw)


def test_fge_resumed_between_segments_equals_uninterrupted(tiny, tmp_path):
    """A study stopped right after the first FGE segment resumes (momentum read back from the store,
    not from memory) and ends bit for bit as the uninterrupted study."""
    cfg, plan, store, rec = tiny

    class Interrupt(Exception):
        pass

    def stop(name):
        if name == "fge-1":
            raise Interrupt

    out = tmp_path / "fge"
    with pytest.raises(Interrupt):
        run_study(_fge_only_config(), str(out), quiet=True, hooks=Hooks(unit_done=stop), use_cache=False,
                  analyze=False)
    started = []
    run_study(_fge_only_config(), str(out), quiet=True, hooks=Hooks(unit_start=lambda u, *a: started.append(u.name)),
              use_cache=False, analyze=False)
    assert started == ["fge-2", "fge-3"]
    with Store(str(out / RESULTS), "r") as resumed:
        for name in plan.members["fge"]:
            a, b = read_unit_snapshot(resumed, name), read_unit_snapshot(store, name)
            assert torch.equal(a.params, b.params), name
            assert all(torch.equal(a.buffers[k], b.buffers[k]) for k in b.buffers), name
            assert (a.optimizer_state is None) == (b.optimizer_state is None), name
            if b.optimizer_state is not None:
                assert a.optimizer_state.keys() == b.optimizer_state.keys()
                assert all(torch.equal(a.optimizer_state[k], v) for k, v in b.optimizer_state.items()), name


# ---------------------------------------------------------------------------------------------
# starting points and the optimizer reset


def test_starsse_cycles_start_from_finetuned_weights_and_buffers(tiny):
    cfg, plan, store, rec = tiny
    ft = store.read_snapshot(plan.finetuned)
    for m in cfg.methods:
        if m.type != "starsse":
            continue
        for name in plan.members[m.name][1:]:
            params, buffers = rec["start"][name]
            assert torch.equal(params, ft.params), name
            assert set(buffers) == set(ft.buffers)
            for k, v in buffers.items():
                assert torch.equal(v, ft.buffers[k]), (name, k)
        # ...and they are genuinely different members afterwards
        ends = [store.read_snapshot(n).params for n in plan.members[m.name][1:]]
        assert not torch.equal(ends[0], ends[1])


def test_sse_cycles_start_where_the_previous_ended(tiny):
    cfg, plan, store, rec = tiny
    for m in cfg.methods:
        if m.type != "sse":
            continue
        names = plan.members[m.name]
        for prev, name in zip(names, names[1:]):
            before = store.read_snapshot(prev)
            params, buffers = rec["start"][name]
            assert torch.equal(params, before.params)
            assert all(torch.equal(buffers[k], before.buffers[k]) for k in buffers)


def test_optimizer_state_cleared_at_every_snapshot(tiny):
    """Every unit but a later segment of Garipov's FGE (test_fge_carries_its_momentum_across_segments)
    starts with no momentum."""
    cfg, plan, store, rec = tiny
    trained = [u.name for u in plan.units if u.name in rec["start"]]
    assert len(trained) == len(plan.units)
    carried = set(plan.members["fge"][1:])
    for name in trained:
        if name in carried:
            assert rec["first_step"][name] > 0, f"{name} did not carry the previous segment's momentum"
        else:
            assert rec["first_step"][name] == 0, f"{name} started with momentum state"
        assert rec["second_step"][name] > 0, f"{name} never used momentum"
    assert len({id(o) for o in rec["optimizers"].values()}) == len(trained)  # a fresh optimizer for every unit


def test_snapshot_metadata(tiny):
    cfg, plan, store, rec = tiny
    for u in plan.units:
        meta = store.read_snapshot(u.name).meta
        for key in ("method", "member", "cycle", "lr", "seed", "parent", "kind"):
            assert key in meta, (u.name, key)
        assert meta["seed"] == u.seed and meta["parent"] == u.parent and meta["lr"] == u.lr
    star = store.read_snapshot("starsse_large-2").meta
    assert star["method"] == "starsse_large" and star["member"] == 2 and star["cycle"] == 2
    assert star["parent"] == "ft-0-0" and star["lr"] == pytest.approx(8 * cfg["finetune"]["lr"])
    assert store.read_snapshot("sse_large-2").meta["parent"] == "sse_large-1"
    assert store.read_snapshot("ft-2-0").meta["parent"] == "pretrain-2"
    seeds = [store.read_snapshot(n).meta["seed"] for n in plan.members["local_de"]]
    assert len(set(seeds)) == len(seeds)


# ---------------------------------------------------------------------------------------------
# SWA against torch.optim.swa_utils


@pytest.fixture
def study_threads(tiny):
    """Reruns use the study's thread count (CPU results depend on it at the last bit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(tiny[0]["study"]["threads"] or before)
    yield
    torch.set_num_threads(before)


def test_swa_matches_swa_utils(tiny, study_threads):
    """The recipe of torch.optim.swa_utils written out: the optimizer at the fine-tuning lr, SWALR
    to the SWA lr over A epochs, the average from epoch A on, update_bn."""
    from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

    cfg, plan, store, rec = tiny
    prep = prepare(cfg, "cpu")
    ctx = TrainingContext(cfg, prep.source, prep.target, prep.device, store.read_snapshot, lambda c: None, Hooks(), True)
    unit = plan.unit("swa-1")
    A = unit.extra["anneal_epochs"]
    assert A == cfg.method("swa").params["anneal_epochs"] == 1 and unit.epochs == 2
    ours = run_unit(ctx, unit)

    # The reference: the loop written out with swa_utils, on the same batches (same seed).
    ft = cfg["finetune"]
    model = start_model(ctx, unit)
    g = torch.Generator().manual_seed(unit.seed)
    opt = torch.optim.SGD(model.parameters(), lr=ft["lr"], momentum=ft["momentum"], weight_decay=ft["weight_decay"])
    swa = AveragedModel(model)
    sched = SWALR(opt, swa_lr=ft["lr"] * cfg.method("swa").params["lr_scale"], anneal_epochs=A, anneal_strategy="cos")
    per_epoch = []
    for epoch in range(int(unit.epochs)):
        for x, y in prep.target.train_batches(ft["batch_size"], g, prep.device):
            x = x.contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch >= A:
            swa.update_parameters(model)
            per_epoch.append(parameters_to_vector(model).clone())
        sched.step()
    update_bn(prep.target.train_batches(ft["batch_size"], g, prep.device), swa)

    got, want = parameters_to_vector(ours), parameters_to_vector(swa.module)
    assert torch.equal(got, want)
    torch.testing.assert_close(got, torch.stack(per_epoch).mean(0), rtol=1e-6, atol=1e-7)
    ours_b, want_b = get_buffers(ours), get_buffers(swa.module)
    for k in want_b:
        assert torch.equal(ours_b[k], want_b[k]), k
    # update_bn really ran: the averaged model's statistics are not the fine-tuned model's
    ft_snap = store.read_snapshot(plan.finetuned)
    bn_mean = next(k for k in want_b if k.endswith("running_mean"))
    assert not torch.equal(ours_b[bn_mean], ft_snap.buffers[bn_mean])
    # and the stored member is this model
    assert torch.equal(store.read_snapshot("swa-1").params, got)


@pytest.mark.parametrize("E, A", [(4, 2), (2, 0)])
def test_swa_lrs_averaged_epochs_and_mean_closed_form(tiny, study_threads, monkeypatch, E, A):
    """SWA over E epochs annealing over A: the lr of every iteration is
    lr(e) = swa_lr + (η − swa_lr)·½(1 + cos(π·e/A)) for e < A and swa_lr after; weights are averaged
    at the end of epochs A..E−1 only, and the member is their plain mean with BN recomputed."""
    from torch.optim.swa_utils import AveragedModel, update_bn

    _, _, store, _ = tiny
    cfg = load_config("tiny", [f"methods.swa.epochs={E}", f"methods.swa.anneal_epochs={A}"])
    plan = plan_study(cfg)
    unit = plan.unit("swa-0")
    prep = prepare(cfg, "cpu")
    ft = cfg["finetune"]
    ipe = iterations_per_epoch(prep.target.train_size(), ft["batch_size"])
    eta, swa_lr = ft["lr"], ft["lr"] * cfg.method("swa").params["lr_scale"]
    lrs, ends, seen, averaged_after = [], {}, {}, []

    def step(u, i, lr, model, optimizer):
        lrs.append(lr)
        if i and i % ipe == 0:  # the weights at the end of epoch i/ipe − 1
            ends[i // ipe - 1] = parameters_to_vector(model).clone()

    def unit_start(u, model, optimizer):
        seen["model"] = model

    real_update = AveragedModel.update_parameters

    def update(self, model):  # which epoch's weights go into the average: steps taken so far / ipe
        averaged_after.append(len(lrs) / ipe - 1)
        return real_update(self, model)

    monkeypatch.setattr(AveragedModel, "update_parameters", update)
    ctx = TrainingContext(cfg, prep.source, prep.target, prep.device, store.read_snapshot, lambda c: None,
                          Hooks(unit_start=unit_start, step=step), True)
    ours = run_unit(ctx, unit)
    ends[E - 1] = parameters_to_vector(seen["model"]).clone()  # the run's last weights

    def closed(e):
        return swa_lr + (eta - swa_lr) * 0.5 * (1 + math.cos(math.pi * e / A)) if e < A else swa_lr

    assert len(lrs) == E * ipe
    assert lrs == pytest.approx([closed(i // ipe) for i in range(E * ipe)], rel=1e-12)
    assert lrs[0] == (eta if A else swa_lr) and lrs[-1] == pytest.approx(swa_lr, rel=1e-12)
    assert averaged_after == list(range(A, E))
    mean = torch.stack([ends[e] for e in range(A, E)]).mean(0)
    torch.testing.assert_close(parameters_to_vector(ours), mean, rtol=1e-6, atol=1e-7)
    if A:  # the annealing epochs are left out of the average
        assert not torch.allclose(parameters_to_vector(ours), torch.stack(list(ends.values())).mean(0), atol=1e-5)
    # BN: recomputed for the mean weights on a replay of the batches update_bn saw
    ref = start_model(ctx, unit)
    from landscape.core.params import vector_to_model
    vector_to_model(mean, ref)
    g = torch.Generator().manual_seed(unit.seed)
    for _ in range(E):
        for _ in prep.target.train_batches(ft["batch_size"], g, prep.device):
            pass
    update_bn(prep.target.train_batches(ft["batch_size"], g, prep.device), ref)
    ours_b, ref_b = get_buffers(ours), get_buffers(ref)
    for k, v in ref_b.items():
        if v.is_floating_point():
            torch.testing.assert_close(ours_b[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_runs_are_deterministic_from_their_start(tiny, study_threads):
    """The basis of exact resume: a unit rerun from its stored parent gives the same weights."""
    cfg, plan, store, rec = tiny
    prep = prepare(cfg, "cpu")
    ctx = TrainingContext(cfg, prep.source, prep.target, prep.device, store.read_snapshot, lambda c: None, Hooks(), True)
    model = run_unit(ctx, copy.deepcopy(plan.unit("starsse_small-1")))
    assert torch.equal(parameters_to_vector(model), store.read_snapshot("starsse_small-1").params)
