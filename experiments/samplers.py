"""The ensemble samplers: Local DE, Global DE, SSE, StarSSE, FGE, SWA (and soups, in analysis).

A study is planned as *units*: training runs that each end in one snapshot. Units are shared
between methods (the fine-tuned model `ft-0-0` is Local DE's first member, SSE's, StarSSE's and
the cyclic FGE's, and every FGE's and SWA's starting point), run in dependency order, and each is
a pure function of its starting snapshot (with the optimizer state stored beside it, for FGE)
and its seed, so an interrupted study resumes unit by unit with identical results.

Members by method (K = members):
- local_de:  ft-0-m, m = 0..K−1: fine-tunings of checkpoint 0 with different seeds (new head
  initialisation, data order, augmentation).
- global_de: ft-c-0, c = 0..K−1: one fine-tuning from each independently pre-trained checkpoint.
- sse:       ft-0-0, then NAME-1..K−1: cycle k starts where cycle k−1 ended.
- starsse:   ft-0-0, then NAME-1..K−1: every cycle starts from ft-0-0 (weights and BN buffers).
- fge (garipov, Garipov et al. 2018 and their fge.py): NAME-1..K, the snapshots at the K minima of
  one triangular run from ft-0-0 (segment 1 is half a cycle, then whole cycles minimum to
  minimum); ft-0-0 is the start, not a member. The run keeps one optimizer: each segment's SGD
  momentum (AdamW: its moments and step) is stored with its snapshot (`UnitSnapshot`, datasets
  optimizer/KEY/PARAM of the snapshot file) and loaded at the start of the next segment. The first
  segment starts with a fresh optimizer: the fine-tuning's optimizer state is not stored.
- fge (cyclic, Sadrtdinov et al.'s code): ft-0-0, then NAME-1..K−1: one CyclicLR cycle each, from
  the previous snapshot, a fresh optimizer per cycle (as that code).
- swa:       NAME-0..K−1: K independent SWA runs from ft-0-0 (Izmailov et al. 2018, torch's
  swa_utils recipe), one seed each: the lr anneals from the fine-tuning lr η to the SWA lr over
  anneal_epochs = A (SWALR, cosine), then the weights are averaged at the end of every epoch from
  epoch A on (AveragedModel), BN statistics by update_bn. One averaged model per run: the method's
  ensemble is an ensemble of K SWA models.
Momentum is cleared at every other snapshot (each of those units has a fresh optimizer).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from landscape.core.checkpoints import Snapshot
from landscape.core.errors import LandscapeError

from . import ssl
from .config import StudyConfig
from .data import Task
from .models import load_backbone, new_head, seeded_build
from .training import (
    Hooks,
    Optim,
    cosine_factor,
    fge_cycle_iterations,
    fge_lr,
    iterations_per_epoch,
    load_optimizer_state,
    optimizer_state,
    to_fast_layout,
    train,
    warmup_cosine_factor,
    warmup_iterations,
)


def derive_seed(study_seed: int, name: str) -> int:
    """A stable 31-bit seed for a unit, from the study seed and the unit's name only."""
    return int(hashlib.sha256(f"{study_seed}:{name}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass
class Unit:
    """One training run that ends in one snapshot."""

    name: str
    kind: str  # pretrain | scratch | finetune | sse | starsse | fge | swa
    method: str
    member: int
    cycle: int | None
    parent: str | None  # the snapshot it starts from ('pretrain-c' for a fine-tuning, None: random init)
    lr: float
    seed: int
    epochs: float
    extra: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.pop("name")  # the snapshot's own name
        return {**d, **extra}


@dataclass
class Plan:
    """One seed's replicate of a study: its units and each method's members."""

    units: list[Unit]
    members: dict[str, list[str]]  # method name -> its member snapshots, in order
    finetuned: str = "ft-0-0"
    seed: int = 0
    prefix: str = ""  # of every unit name ('' for a single-seed study)

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)


def seed_prefix(cfg: StudyConfig, seed: int) -> str:
    """Unit names of a multi-seed study start with `sSEED-`; a single-seed study's have no prefix."""
    return f"s{seed}-" if len(cfg.seeds) > 1 else ""


def cycle_iterations(cycle_epochs: float, iters_per_epoch: int) -> int:
    """A cycle of C epochs as optimizer steps (C may be a fraction: a sub-epoch cycle)."""
    return max(1, round(cycle_epochs * iters_per_epoch))


def plan_study(cfg: StudyConfig, seed: int | None = None) -> Plan:
    """Every unit of one seed's replicate of the study, in an order that respects the dependencies."""
    seed = cfg.seed if seed is None else seed
    px = seed_prefix(cfg, seed)
    ft = cfg["finetune"]
    units: dict[str, Unit] = {}

    def add(u: Unit) -> str:
        # The unit's seed comes from the study seed and its name without the prefix: a seed's
        # replicate trains the same whatever other seeds run beside it (and as a one-seed study).
        u.seed = derive_seed(seed, u.name)
        u.name = px + u.name
        u.parent = px + u.parent if u.parent else None
        units.setdefault(u.name, u)
        return u.name

    pre = cfg["pretrain"]
    if isinstance(pre["checkpoints"], int):
        for c in range(pre["checkpoints"]):
            add(Unit(f"pretrain-{c}", "pretrain", "pretrain", c, None, None, pre["lr"], 0, pre["epochs"]))
    if cfg["scratch"]["enabled"]:
        sc = cfg["scratch"]
        add(Unit("scratch", "scratch", "scratch", 0, None, None, sc["lr"], 0, sc["epochs"]))

    def finetune(c: int, s: int, method: str, member: int) -> str:
        name = f"{px}ft-{c}-{s}"
        if name in units:
            return name
        return add(Unit(f"ft-{c}-{s}", "finetune", method, member, None, f"pretrain-{c}", ft["lr"], 0,
                        ft["epochs"], {"checkpoint": c}))

    base = finetune(0, 0, "finetune", 0)
    members: dict[str, list[str]] = {}
    for m in cfg.methods:
        K, p = m.members, m.params
        if m.type == "local_de":
            members[m.name] = [finetune(0, s, m.name, s) for s in range(K)]
        elif m.type == "global_de":
            members[m.name] = [finetune(c, 0, m.name, c) for c in range(K)]
        elif m.type in ("sse", "starsse"):
            lr_c = ft["lr"] * p["lr_scale"]
            names = [base]
            for k in range(1, K):
                parent = names[-1] if m.type == "sse" else base
                names.append(add(Unit(f"{m.name}-{k}", m.type, m.name, k, k, parent.removeprefix(px), lr_c, 0,
                                      p["cycle_epochs"], {"lr_scale": p["lr_scale"],
                                                          "cycle_epochs": p["cycle_epochs"], "group": m.group})))
            members[m.name] = names
        elif m.type == "fge" and p["schedule"] == "cyclic":
            lr_c = ft["lr"] * p["lr_scale"]
            names = [base]
            for k in range(1, K):
                names.append(add(Unit(f"{m.name}-{k}", "fge", m.name, k, k, names[-1].removeprefix(px), lr_c, 0,
                                      p["cycle_epochs"], {"schedule": "cyclic", "lr_scale": p["lr_scale"],
                                                          "cycle_epochs": p["cycle_epochs"], "group": m.group})))
            members[m.name] = names
        elif m.type == "fge":
            # Garipov: K segments of one run, segment k from segment k−1's minimum (and optimizer state)
            names, parent = [], base
            for k in range(1, K + 1):
                parent = add(Unit(f"{m.name}-{k}", "fge", m.name, k - 1, k, parent.removeprefix(px),
                                  ft["lr"] * p["lr1_scale"], 0, p["cycle_epochs"] * (0.5 if k == 1 else 1),
                                  {"schedule": "garipov", "lr1": ft["lr"] * p["lr1_scale"],
                                   "lr2": ft["lr"] * p["lr2_scale"], "cycle_epochs": p["cycle_epochs"],
                                   "segment": k, "carry_optimizer": k < K}))
                names.append(parent)
            members[m.name] = names
        elif m.type == "swa":
            swa_lr = ft["lr"] * p["lr_scale"]
            members[m.name] = [add(Unit(f"{m.name}-{k}", "swa", m.name, k, None, base.removeprefix(px), swa_lr, 0,
                                        p["epochs"], {"lr_scale": p["lr_scale"], "anneal_epochs": p["anneal_epochs"],
                                                      "start_lr": ft["lr"]}))
                               for k in range(K)]
        else:  # pragma: no cover - validated in config
            raise AssertionError(m.type)
    order = {"pretrain": 0, "scratch": 1, "finetune": 2}
    ordered = sorted(units.values(), key=lambda u: order.get(u.kind, 3))  # stable: methods keep config order
    return Plan(ordered, members, base, seed, px)


# ----------------------------------------------------------------------------------------------
# running one unit


@dataclass
class TrainingContext:
    """What a unit needs to run: tasks, model factory, recipes, device, and how to find snapshots."""

    cfg: StudyConfig
    source: Task | None
    target: Task
    device: torch.device
    get_snapshot: Callable[[str], Snapshot]
    get_pretrained: Callable[[str, int], dict[str, torch.Tensor]]  # (unit name, checkpoint index)
    hooks: Hooks
    quiet: bool = True

    def runtime(self) -> dict[str, Any]:
        """The study's [runtime] table (experiments.accel): how units train on this device."""
        return self.cfg["runtime"]

    def train_kwargs(self) -> dict[str, Any]:
        """train()'s mixed precision and gradient accumulation settings."""
        rt = self.runtime()
        return {"amp": rt["amp"], "micro_batch_size": rt["micro_batch_size"]}

    def build(self, num_classes: int, seed: int) -> nn.Module:
        m = self.cfg["model"]
        return seeded_build(m["name"], num_classes, self.target.input_shape, m["width"], seed)


@dataclass
class UnitSnapshot(Snapshot):
    """A unit's snapshot, with the optimizer state the next unit carries on with
    (experiments.training.optimizer_state's {"KEY/PARAM": tensor}; None for every unit but a
    Garipov FGE segment that has a successor). Analyses read it as the plain Snapshot it is."""

    optimizer_state: dict[str, torch.Tensor] | None = None


@dataclass
class Trained:
    """What a unit's run leaves: the trained model and, for a unit that passes it on, its optimizer state."""

    model: nn.Module
    optimizer_state: dict[str, torch.Tensor] | None = None


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


# The config key that sets each kind of unit's learning rate: named when a unit diverges.
LR_KEY = {"pretrain": "pretrain.lr", "scratch": "scratch.lr, which defaults to finetune.lr", "finetune": "finetune.lr",
          "sse": "methods.{}.lr_scale", "starsse": "methods.{}.lr_scale", "fge": "methods.{}.lr1_scale", "fge_cyclic": "methods.{}.lr_scale",
          "swa": "methods.{}.lr_scale"}


def _diverged_text(ctx: TrainingContext, unit: Unit) -> dict[str, str]:
    """train()'s `what` and `hint`: which study and unit diverged, and the key that sets its lr."""
    key = LR_KEY["fge_cyclic" if unit.extra.get("schedule") == "cyclic" else unit.kind].format(unit.extra.get("group", unit.method))
    return {"what": f"config {ctx.cfg.source}, unit {unit.name}", "hint": f"({key}; this run's lr {unit.lr:g})"}


def _bar(ctx: TrainingContext, unit: Unit, total: int) -> tqdm:
    return tqdm(total=total, desc=f"  {unit.name} epochs", unit="ep", leave=False, disable=ctx.quiet,
                dynamic_ncols=True)


def start_model(ctx: TrainingContext, unit: Unit) -> nn.Module:
    """The unit's starting point, on the device, in train mode."""
    if unit.kind == "pretrain":
        model = ctx.build(ctx.source.num_classes, unit.seed)
    elif unit.kind == "scratch":
        model = ctx.build(ctx.target.num_classes, unit.seed)
    elif unit.kind == "finetune":
        model = ctx.build(ctx.target.num_classes, unit.seed)
        load_backbone(model, ctx.get_pretrained(unit.parent, unit.extra["checkpoint"]), f"pretrained checkpoint {unit.parent}",
                      ignore_keys=ctx.cfg["pretrain"].get("ignore_keys") or ())
        new_head(model, ctx.target.num_classes, unit.seed)
    else:
        model = ctx.build(ctx.target.num_classes, unit.seed)
        ctx.get_snapshot(unit.parent).load_into(model)  # weights AND BN buffers of the parent
    return to_fast_layout(model.to(ctx.device), ctx.device, channels_last=ctx.runtime()["channels_last"]).train()


def run_unit(ctx: TrainingContext, unit: Unit) -> nn.Module:
    """Train one unit from its starting point; returns the trained model (SWA: the averaged one)."""
    model = start_model(ctx, unit)
    g = _generator(unit.seed)
    ft = ctx.cfg["finetune"]
    if unit.kind == "pretrain":
        pre = ctx.cfg["pretrain"]
        if pre.get("objective", "supervised") != "supervised":  # BYOL, SimCLR + linear probe
            return ssl.pretrain(ctx, unit, model, g)
        opt = Optim.from_recipe(pre)
        return _cosine_run(ctx, unit, model, ctx.source, opt, unit.epochs, g)
    recipe = Optim.from_recipe(ft, lr=unit.lr)
    if unit.kind in ("scratch", "finetune", "sse", "starsse"):
        return _cosine_run(ctx, unit, model, ctx.target, recipe, unit.epochs, g)
    if unit.kind == "fge" and unit.extra.get("schedule") == "cyclic":
        return _cyclic_fge_run(ctx, unit, model, recipe, g)
    if unit.kind == "fge":
        return _fge_run(ctx, unit, model, recipe, g).model
    if unit.kind == "swa":
        return _swa_run(ctx, unit, model, recipe, g)
    raise AssertionError(unit.kind)


def run_unit_with_state(ctx: TrainingContext, unit: Unit) -> Trained:
    """run_unit, with the optimizer state a Garipov FGE segment passes to the next one."""
    if unit.kind == "fge" and unit.extra.get("schedule") == "garipov":
        return _fge_run(ctx, unit, start_model(ctx, unit), Optim.from_recipe(ctx.cfg["finetune"], lr=unit.lr),
                        _generator(unit.seed))
    return Trained(run_unit(ctx, unit))


# The kinds of unit that start a recipe (and so warm up); a cycle continues one and does not.
WARMUP_KINDS = ("pretrain", "scratch", "finetune")


def _cosine_run(ctx: TrainingContext, unit: Unit, model: nn.Module, task: Task, optim: Optim, epochs: float,
                g: torch.Generator) -> nn.Module:
    """A cosine decay from the unit's lr: a fine-tuning, a pre-training or one SSE/StarSSE cycle.

    Over a whole number of epochs E the lr steps once per epoch, lr(t) = lr·½(1 + cos(π·t/E)) (the
    recipe of the paper's code); a cycle of a fractional number of epochs (C = 0.5·E with E odd, a
    sub-epoch cycle) decays per iteration over its round(C × iterations per epoch) steps instead.
    A recipe with warmup_epochs > 0 (pre-training, fine-tuning, from scratch; never a cycle)
    rises linearly per iteration over its W warmup steps, then decays per iteration over the rest
    (training.warmup_cosine_factor).
    """
    ipe = iterations_per_epoch(task.train_size(), optim.batch_size)
    n = cycle_iterations(epochs, ipe)
    w = warmup_iterations(optim.warmup_epochs, ipe, n) if unit.kind in WARMUP_KINDS else 0
    if w:
        factor = lambda i: warmup_cosine_factor(i, w, n)  # noqa: E731
    elif float(epochs).is_integer():
        e = int(epochs)
        factor = lambda i: cosine_factor(i // ipe, e)  # noqa: E731
    else:
        factor = lambda i: cosine_factor(i, n)  # noqa: E731
    opt = optim.make(model)
    if ctx.hooks.unit_start:
        ctx.hooks.unit_start(unit, model, opt)
    with _bar(ctx, unit, math.ceil(n / ipe)) as bar:
        train(model, task, opt, iterations=n, batch_size=optim.batch_size, **ctx.train_kwargs(), generator=g,
              device=ctx.device, per_iteration=factor, hooks=ctx.hooks,
              unit=unit, bar=bar, iters_per_epoch=ipe, **_diverged_text(ctx, unit))
    return model


def _fge_run(ctx: TrainingContext, unit: Unit, model: nn.Module, optim: Optim, g: torch.Generator) -> Trained:
    """One segment of Garipov's FGE run: from the previous minimum (or the fine-tuned model) to the
    next minimum, with the previous segment's optimizer state (segment 1: a fresh optimizer)."""
    ipe = iterations_per_epoch(ctx.target.train_size(), optim.batch_size)
    c = fge_cycle_iterations(unit.extra["cycle_epochs"], ipe)
    lr1, lr2 = unit.extra["lr1"], unit.extra["lr2"]
    # Global iteration index of the segment's first step: the first segment starts the schedule,
    # later ones start right after a minimum (iteration c/2 − 1 of a cycle).
    offset = 0 if unit.extra["segment"] == 1 else c // 2
    n = c // 2 if unit.extra["segment"] == 1 else c
    opt = optim.make(model, lr=lr1)
    if unit.extra["segment"] > 1:
        state = getattr(ctx.get_snapshot(unit.parent), "optimizer_state", None)
        if state is None:
            raise LandscapeError(f"config {ctx.cfg.source}, unit {unit.name}: its parent snapshot {unit.parent!r} "
                                 "holds no optimizer state to carry on with (stored before FGE kept one optimizer across "
                                 "its segments?): delete the FGE snapshots from the store, or run into a new --out")
        load_optimizer_state(opt, model, state, f"snapshot {unit.parent!r}")
    if ctx.hooks.unit_start:
        ctx.hooks.unit_start(unit, model, opt)
    with _bar(ctx, unit, math.ceil(n / ipe)) as bar:
        train(model, ctx.target, opt, iterations=n, batch_size=optim.batch_size, **ctx.train_kwargs(), generator=g, device=ctx.device,
              per_iteration=lambda i: fge_lr(offset + i, lr1, lr2, c) / lr1, hooks=ctx.hooks, unit=unit, bar=bar,
              iters_per_epoch=ipe, **_diverged_text(ctx, unit))
    return Trained(model, optimizer_state(opt, model) if unit.extra.get("carry_optimizer") else None)


# The cyclic FGE of Sadrtdinov et al.'s code: torch's CyclicLR with its default momentum cycle.
CYCLIC_FLOOR, CYCLIC_MOMENTUM = 0.01, (0.8, 0.9)


def _cyclic_fge_run(ctx: TrainingContext, unit: Unit, model: nn.Module, optim: Optim, g: torch.Generator) -> nn.Module:
    """One cycle of the authors' FGE schedule from the previous snapshot (or the fine-tuned model):
    torch.optim.lr_scheduler.CyclicLR rises per iteration from 0.01·η_c to η_c over the first half
    of the cycle and falls back over the second, while the momentum (AdamW: beta1, which CyclicLR
    cycles itself) falls from 0.9 to 0.8 and rises back; the snapshot is taken at the cycle's end,
    at the lowest lr."""
    ipe = iterations_per_epoch(ctx.target.train_size(), optim.batch_size)
    n = max(2, cycle_iterations(unit.extra["cycle_epochs"], ipe))
    opt = optim.make(model, lr=unit.lr)
    lo, hi = CYCLIC_MOMENTUM
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=CYCLIC_FLOOR * unit.lr, max_lr=unit.lr,
                                              step_size_up=n // 2, step_size_down=n - n // 2,
                                              cycle_momentum=optim.first_moment > 0, base_momentum=lo, max_momentum=hi)
    if ctx.hooks.unit_start:
        ctx.hooks.unit_start(unit, model, opt)
    with _bar(ctx, unit, math.ceil(n / ipe)) as bar:
        train(model, ctx.target, opt, iterations=n, batch_size=optim.batch_size, **ctx.train_kwargs(), generator=g, device=ctx.device,
              scheduler=sched, hooks=ctx.hooks, unit=unit, bar=bar, iters_per_epoch=ipe,
              **_diverged_text(ctx, unit))
    return model


def _swa_run(ctx: TrainingContext, unit: Unit, model: nn.Module, optim: Optim, g: torch.Generator) -> nn.Module:
    """One SWA run from the fine-tuned model with torch.optim.swa_utils (Izmailov et al. 2018):
    the optimizer starts at the fine-tuning lr η; SWALR, stepped once per epoch, anneals it to the
    SWA lr over A = anneal_epochs epochs (cosine); the weights are averaged (AveragedModel) at the
    end of each epoch e ≥ A, all at the SWA lr; then update_bn. `epochs` counts both phases."""
    from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

    ipe = iterations_per_epoch(ctx.target.train_size(), optim.batch_size)
    epochs, anneal = int(unit.epochs), int(unit.extra["anneal_epochs"])
    opt = optim.make(model, lr=unit.extra["start_lr"])
    swa_model = AveragedModel(model)
    sched = SWALR(opt, swa_lr=unit.lr, anneal_epochs=anneal, anneal_strategy="cos")
    if ctx.hooks.unit_start:
        ctx.hooks.unit_start(unit, model, opt)

    def epoch_end(epoch: int) -> None:
        if epoch >= anneal:  # the lr of this epoch was the SWA lr
            swa_model.update_parameters(model)
        sched.step()

    with _bar(ctx, unit, epochs) as bar:
        train(model, ctx.target, opt, iterations=epochs * ipe, batch_size=optim.batch_size, **ctx.train_kwargs(), generator=g,
              device=ctx.device, epoch_end=epoch_end, hooks=ctx.hooks, unit=unit, bar=bar, iters_per_epoch=ipe,
              **_diverged_text(ctx, unit))
    # BN statistics of the averaged weights: one more pass over the (augmented) training data, as
    # in the SWA paper and torch's recipe; the pass draws its order from the same generator.
    update_bn(swa_bn_loader(ctx.target, optim.batch_size, g, ctx.device), swa_model, ctx.device)
    return swa_model.module


def swa_bn_loader(task: Task, batch_size: int, g: torch.Generator, device: torch.device):
    """The batches update_bn sees: one epoch of training batches (a generator: nothing held in memory)."""
    return task.train_batches(batch_size, g, device)
