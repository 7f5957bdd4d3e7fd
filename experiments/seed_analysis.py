"""The analysis at the end of a study, one function per stage, all through the landscape toolkit.

- `single_metrics`: each member's (and the from-scratch model's) test accuracy, NLL and ECE, from
  the stored per-snapshot predictions (landscape_kernels.ensemble_metrics);
- `ensembles_by_size`: accuracy, NLL, ECE and Brier score for every size 1..K of every method;
- `soups`: each method's uniform weight average with BN recomputed;
- `member_lines`: each member's distances to the fine-tuned model and (backbone only, the head is
  new) to its pre-trained checkpoint, and the barriers on the line to the fine-tuned model
  (landscape.analyses.grids.line, BN recomputed at every point);
- `pairwise_barriers`: each method's barrier matrix (landscape.analyses.grids.barrier_matrix);
- `study_plane`: a plane through the fine-tuned model and two members, every member projected
  onto it (landscape.analyses.grids.plane);
- `sharpness`: top Hessian eigenvalue and trace of each method's first members (landscape.evaluate.hessian);
- `study_curves`: trained Bezier curves against straight lines between two Global DE members and
  between the fine-tuned model and a large-cycle-lr member (landscape.analyses.connect).

Lines, matrices and the plane are the analysis layer's resumable results in the store: a
restarted analysis computes only missing points, and a finished one is read, not rewritten.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from landscape.analyses import grids as analyses
from landscape.analyses.align import align_all
from landscape.analyses.connect import connect as connect_curve
from landscape.analyses.ensemble import ensemble_arrays, finished_ensemble
from landscape.analyses.hessian import hessian as landscape_hessian
from landscape.core.bn import bn_modules, recompute_bn
from landscape.core.checkpoints import Snapshot
from landscape.core.params import set_buffers, vector_to_model
from landscape.evaluate.engine import Evaluator
from landscape.geometry.directions import plane_through
from landscape.geometry.planes import project_snapshots
from landscape.geometry.ranges import line_alphas
from landscape.store.store import Store
from landscape_kernels import ensemble_metrics

from .models import backbone_vector, load_backbone, seeded_build
from .records import read_logits
from .training import logits_metrics, predict

BARRIER_KEYS = ("test_loss", "test_error", "train_loss", "train_error")


@dataclass
class AnalysisContext:
    """What every stage needs: the prepared study, its stores, its snapshots, the evaluator.

    `store` receives the results; `records` holds the study's predictions and labels (the same
    store, except on a rank of a distributed study other than 0, which writes its results to a
    scratch store of its own and sends them to rank 0: experiments.parallel)."""

    prep: Any
    store: Store
    runner: Any
    quiet: bool
    plan: Any = None  # the seed's plan (experiments.samplers.Plan); default: the first seed's
    records: Store | None = None
    evaluator: Evaluator | None = None
    provenance: dict | None = None

    def __post_init__(self) -> None:
        self.plan = self.plan or self.prep.plan
        self.records = self.records or self.store

    @property
    def cfg(self):
        return self.prep.cfg

    @property
    def px(self) -> str:
        """The seed's prefix of every object name ('' for a single-seed study)."""
        return self.plan.prefix

    @property
    def an(self) -> dict:
        return self.prep.cfg["analysis"]

    def member_names(self) -> list[str]:
        return list(dict.fromkeys(n for names in self.plan.members.values() for n in names))


def analyze_study(prep, store: Store, runner, quiet: bool = True, plan=None, extras: bool = True,
                  records: Store | None = None) -> dict[str, Any]:
    """One seed's analysis (`plan`, default the first seed's). `extras`: the plane, the sharpness
    and the curves too (a multi-seed study computes them for its first seed only)."""
    out = analyze_core(prep, store, runner, quiet, plan, records)
    if extras:
        merge_extras(out, analyze_extras(prep, store, runner, quiet, plan, records))
    return out


def analyze_core(prep, store: Store, runner, quiet: bool = True, plan=None,
                 records: Store | None = None) -> dict[str, Any]:
    """Every number of one seed's summary: members, ensembles, soups, lines, pairwise barriers."""
    ctx = AnalysisContext(prep, store, runner, quiet, plan, records)
    out: dict[str, Any] = {"methods": {}, "members": {}}
    singles = single_metrics(ctx)
    out["finetuned"] = {"name": ctx.plan.finetuned, **singles[ctx.plan.finetuned]}
    if ctx.px + "scratch" in singles:
        out["scratch"] = {"name": ctx.px + "scratch", **singles[ctx.px + "scratch"]}
    out["seed"] = ctx.plan.seed
    out["pretrained"] = {u.name: {"source_test_acc": runner.snapshot(u.name).meta.get("source_test_acc")}
                         for u in ctx.plan.units if u.kind == "pretrain"}
    out["methods"] = ensembles_by_size(ctx)
    ctx.evaluator, ctx.provenance = landscape_evaluator(ctx)
    for name, soup in soups(ctx).items():
        out["methods"][name].update(soup)
    out["members"] = member_lines(ctx, singles)
    for m in ctx.cfg.methods:
        res, names = out["methods"][m.name], ctx.plan.members[m.name]
        res["member_barrier_to_finetuned"] = {k: [out["members"][n]["barrier_to_finetuned"][k] for n in names]
                                              for k in BARRIER_KEYS}
        res["member_dist_finetuned"] = [out["members"][n]["dist_finetuned"] for n in names]
        res["member_dist_pretrained"] = [out["members"][n]["dist_pretrained"] for n in names]
    if ctx.an["pairwise"]:
        for name, pw in pairwise_barriers(ctx).items():
            out["methods"][name].update(pw)
    if ctx.an["align"] != "none":
        for name, ab in aligned_exit_barriers(ctx).items():
            out["methods"][name].update(ab)
    store_ensembles(ctx, out["methods"])
    return out


EXTRAS = ("plane", "sharpness", "curves")


def analyze_extras(prep, store: Store, runner, quiet: bool = True, plan=None,
                   records: Store | None = None, parts: tuple[str, ...] = EXTRAS) -> dict[str, Any]:
    """The plane, the sharpness and the curved paths of one seed (those of `parts` the config asks for)."""
    ctx = AnalysisContext(prep, store, runner, quiet, plan, records)
    ctx.evaluator, ctx.provenance = landscape_evaluator(ctx)
    stage = {"plane": study_plane, "sharpness": sharpness, "curves": study_curves}
    return {part: stage[part](ctx) for part in parts if ctx.an[part]}


def merge_extras(out: dict[str, Any], extras: dict[str, Any]) -> None:
    """analyze_extras' results into analyze_core's."""
    for name, sharp in extras.get("sharpness", {}).items():
        out["methods"][name].update(sharp)
    out.update({k: v for k, v in extras.items() if k != "sharpness"})


def sharpness_methods(cfg) -> list:
    """Every single method, and of each grid only the smallest and the largest cycle lr at its
    longest cycle (Hessians of every cell would cost more than the rest of the analysis)."""
    out = []
    for group, ms in cfg.groups().items():
        if len(ms) == 1:
            out.extend(ms)
            continue
        longest = max(m.params["cycle_epochs"] for m in ms)
        at = [m for m in ms if m.params["cycle_epochs"] == longest]
        lo, hi = min(at, key=lambda m: m.params["lr_scale"]), max(at, key=lambda m: m.params["lr_scale"])
        out.extend([lo] if lo is hi else [lo, hi])
    return out


def sharpness(ctx: AnalysisContext) -> dict[str, dict[str, Any]]:
    """Top Hessian eigenvalue and trace (training loss, BN recomputed) of each method's first
    members other than the fine-tuned model: is a member that left the basin somewhere sharper?"""
    out = {}
    for m in sharpness_methods(ctx.cfg):
        members = ctx.plan.members[m.name]
        # the method's own members first: every cycle method's first member is the fine-tuned model
        names = ([n for n in members if n != ctx.plan.finetuned] or members)[: ctx.an["sharpness_members"]]
        res = [landscape_hessian(ctx.evaluator, ctx.runner.snapshot(n), top_k=1, trace=True,
                                 iters=ctx.an["hessian_iters"], probes=ctx.an["hessian_probes"], seed=ctx.plan.seed,
                                 keep_eigenvectors=False, store=ctx.store, name=f"sharpness-{n}",
                                 provenance=ctx.provenance, overwrite=True) for n in names]
        out[m.name] = {"sharpness_members": names,
                       "top_eigenvalue": [float(r["eigenvalues"][0]) for r in res],
                       "hessian_trace": [float(r["trace"]) for r in res],
                       "hessian_trace_stderr": [float(r["trace_stderr"]) for r in res]}
    return out


def curve_pairs(ctx: AnalysisContext) -> list[tuple[str, str, str, str | None]]:
    """(label, a, b, method): two Global DE members (a wall or a bend between checkpoints?), and
    for SSE and for StarSSE the fine-tuned model with the last member of the cell with the largest
    cycle learning rate (did it leave the basin? the exit verdict needs a barrier on this curve
    as well as on the line)."""
    pairs = []
    for m in ctx.cfg.methods:
        if m.type == "global_de" and len(ctx.plan.members[m.name]) >= 3:
            names = ctx.plan.members[m.name]
            pairs.append((f"{m.name} members", names[1], names[2], None))
            break
    for t in ("starsse", "sse"):
        cyc = [m for m in ctx.cfg.methods if m.type == t]
        if cyc:
            big = max(cyc, key=lambda m: (m.params["lr_scale"], m.params["cycle_epochs"]))
            pairs.append((f"fine-tuned to {big.name}", ctx.plan.finetuned, ctx.plan.members[big.name][-1], big.name))
    return pairs


def study_curves(ctx: AnalysisContext) -> list[dict[str, Any]]:
    """A trained Bezier curve against the straight line for each pair of `curve_pairs`."""
    out = []
    for label, a, b, method in curve_pairs(ctx):
        res = connect_curve(ctx.evaluator, ctx.runner.snapshot(a), ctx.runner.snapshot(b), curve="bezier",
                            num=ctx.an["curve_points"], epochs=ctx.an["curve_epochs"], seed=ctx.plan.seed,
                            store=ctx.store, name=f"curve-{a}-{b}", provenance=ctx.provenance, overwrite=True,
                            quiet=ctx.quiet)
        out.append({"label": label, "a": a, "b": b, "method": method,
                    "line_barrier": {k: v["barrier"] for k, v in res["line_barriers"].items()},
                    "curve_barrier": {k: v["barrier"] for k, v in res["barriers"].items()}})
    return out


def single_metrics(ctx: AnalysisContext) -> dict[str, dict[str, float]]:
    labels = ctx.prep.target.test_labels()
    scratch = ctx.px + "scratch"
    names = ctx.member_names() + ([scratch] if ctx.records.has("snapshots", scratch) else [])
    out = {}
    for n in names:
        r = ensemble_metrics(read_logits(ctx.records, n).float().unsqueeze(0), labels, ctx.an["ece_bins"])
        out[n] = {"test_acc": float(r.acc[0]), "test_nll": float(r.nll[0]), "ece": float(r.ece[0])}
    return out


def ensembles_by_size(ctx: AnalysisContext) -> dict[str, dict[str, Any]]:
    """Every method's ensemble metrics by size on test, and on validation when the task has it
    (the grid's cells are chosen on validation)."""
    target = ctx.prep.target
    splits = ["test"] + (["val"] if target.has_val else [])
    out = {}
    for m in ctx.cfg.methods:
        names = ctx.plan.members[m.name]
        res = {"type": m.type, "group": m.group, "members": names, "params": m.params}
        for split in splits:
            r = ensemble_metrics(torch.stack([read_logits(ctx.records, n, split) for n in names]).float(),
                                 target.labels(split), ctx.an["ece_bins"])
            pre = "" if split == "test" else "val_"
            res.update({f"{pre}ensemble_acc": r.acc.tolist(), f"{pre}ensemble_nll": r.nll.tolist(),
                        f"{pre}member_acc": r.member_acc.tolist(), f"{pre}member_nll": r.member_nll.tolist()})
            if split == "test":
                # diversity: mean pairwise disagreement of the members' predictions and mean KL of
                # each member's predictive distribution from the ensemble's
                res.update(ensemble_ece=r.ece.tolist(), ensemble_brier=r.brier.tolist(),
                           ensemble_disagreement=r.disagreement.tolist(), ensemble_kl=r.kl.tolist())
        if m.type in ("sse", "starsse") or m.params.get("schedule") == "cyclic":
            res["cycle_lr"] = ctx.cfg["finetune"]["lr"] * m.params["lr_scale"]
        out[m.name] = res
    return out


def landscape_evaluator(ctx: AnalysisContext, bn_mode: str = "auto") -> tuple[Evaluator, dict[str, Any]]:
    """The evaluator of every line, matrix and plane (BN recomputed at every point where the model
    has BN: "auto"), and the provenance that identifies its model and data in the results' fingerprints."""
    cfg, an, target = ctx.cfg, ctx.an, ctx.prep.target
    train_d = target.eval_data("train", an["train_samples"], seed=ctx.plan.seed)
    test_d = target.eval_data("test", an["test_samples"], seed=ctx.plan.seed)
    ev = Evaluator(ctx.prep.template, train_d, test_d, bn_mode=bn_mode, device=ctx.prep.device,
                   batch_size=min(cfg["study"]["eval_batch_size"], 500), bn_samples=an["bn_samples"])
    prov = {"model": cfg["model"], "data": cfg["data"], "train_samples": an["train_samples"],
            "test_samples": an["test_samples"]}
    return ev, prov


# The methods whose greedy soup is reported (Wortsman et al.'s recipe needs a held-out split).
GREEDY_SOUP_TYPES = ("local_de", "sse", "starsse")


def soups(ctx: AnalysisContext) -> dict[str, dict[str, float]]:
    """Each method's uniform weight average, BN recomputed, on the whole test split; and for Local
    DE, SSE and StarSSE the greedy soup of Wortsman et al. (2022) where the task has a validation
    split: members sorted by their own validation accuracy, each added to the soup only if the
    soup's validation accuracy does not fall."""
    prep, runner, an = ctx.prep, ctx.runner, ctx.an
    bs = ctx.cfg["study"]["eval_batch_size"]
    labels = prep.target.test_labels()
    model = copy.deepcopy(prep.template).to(prep.device)
    bn_x = ctx.evaluator.datasets["train"][0][: an["bn_samples"]].to(prep.device)

    def soup_of(names: list[str], split: str = "test") -> dict[str, float]:
        params = torch.zeros_like(runner.snapshot(names[0]).params, dtype=torch.float64)
        for n in names:  # a running sum: large models never need K copies in memory
            params += runner.snapshot(n).params.double()
        vector_to_model((params / len(names)).float().to(prep.device), model)
        set_buffers(model, {k: v.to(prep.device) for k, v in runner.snapshot(names[0]).buffers.items()})
        recompute_bn(model, bn_x.contiguous(), min(bs, 500))
        return logits_metrics(predict(model, prep.target, prep.device, bs, split),
                              labels if split == "test" else prep.target.labels(split))

    out = {}
    for m in ctx.cfg.methods:
        names = ctx.plan.members[m.name]
        vals = soup_of(names)
        out[m.name] = {"soup_acc": vals["test_acc"], "soup_nll": vals["test_loss"]}
        if m.type in GREEDY_SOUP_TYPES and prep.target.has_val:
            order = sorted(names, key=lambda n: -runner.snapshot(n).meta.get("val_acc", 0.0))
            chosen, best = [order[0]], soup_of([order[0]], "val")["test_acc"]
            for n in order[1:]:
                acc = soup_of(chosen + [n], "val")["test_acc"]
                if acc >= best:
                    chosen, best = chosen + [n], acc
            g = soup_of(chosen)
            out[m.name].update(greedy_soup_acc=g["test_acc"], greedy_soup_nll=g["test_loss"],
                               greedy_soup_members=chosen)
    return out


def _root_checkpoint(plan, name: str) -> int | None:
    """The index of the pre-trained checkpoint a snapshot descends from (None: trained from scratch)."""
    for _ in range(1000):
        if name is None:
            return None
        u = plan.unit(name)
        if u.kind == "finetune":
            return int(u.extra["checkpoint"])
        if u.kind in ("scratch", "pretrain"):
            return None
        name = u.parent
    return None


def member_lines(ctx: AnalysisContext, singles: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Each member's distances to the fine-tuned and pre-trained models and its line to the fine-tuned one."""
    cfg, plan, runner, target = ctx.cfg, ctx.plan, ctx.runner, ctx.prep.target
    ft_name = plan.finetuned
    ft = runner.snapshot(ft_name)
    alphas = line_alphas(ctx.an["line_points"])
    members = ctx.member_names()
    pre_vectors: dict[int, torch.Tensor] = {}

    def pre_vector(c: int) -> torch.Tensor:
        if c not in pre_vectors:
            mdl = seeded_build(cfg["model"]["name"], target.num_classes, target.input_shape, cfg["model"]["width"], 0)
            load_backbone(mdl, runner.pretrained(f"{plan.prefix}pretrain-{c}", c), f"checkpoint {c}")
            pre_vectors[c] = backbone_vector(mdl)
        return pre_vectors[c]

    def backbone_of(s: Snapshot) -> torch.Tensor:
        s.load_into(ctx.prep.template)
        return backbone_vector(ctx.prep.template).clone()

    out: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=len(members) - 1, desc="analysis: lines to the fine-tuned model", unit="line",
               disable=ctx.quiet, leave=False, dynamic_ncols=True)
    scratch = ctx.px + "scratch"
    for n in members + ([scratch] if scratch in singles else []):
        s = runner.snapshot(n)
        c = _root_checkpoint(plan, n)
        info = {**singles[n], "meta": {k: s.meta.get(k) for k in ("method", "member", "cycle", "lr", "seed",
                                                                   "parent", "kind")},
                "dist_finetuned": float((s.params.double() - ft.params.double()).norm()),
                "dist_pretrained": (float((backbone_of(s).double() - pre_vector(c).double()).norm())
                                    if c is not None else None),
                "checkpoint": c}
        if n == ft_name:
            info["barrier_to_finetuned"] = {k: 0.0 for k in BARRIER_KEYS}
        elif n in members:
            res = analyses.line(ctx.evaluator, ft, s, alphas, store=ctx.store, name=f"line-{ft_name}-{n}",
                                provenance=ctx.provenance, overwrite=True)
            info["barrier_to_finetuned"] = {k: v["barrier"] for k, v in res["barriers"].items()}
            # the curve itself, for the interpolation figure
            info["line"] = {"alphas": np.asarray(res["alphas"]).tolist(),
                            **{k: np.asarray(res[k]).tolist() for k in ctx.evaluator.metric_names if k in res}}
            bar.update(1)
        out[n] = info
    bar.close()
    return out


def pairwise_barriers(ctx: AnalysisContext) -> dict[str, dict[str, Any]]:
    """The barrier matrix among each method's members and its mean over pairs."""
    alphas = line_alphas(ctx.an["pairwise_points"])
    todo = [m for m in ctx.cfg.methods if m.pairwise and len(ctx.plan.members[m.name]) >= 2]
    out = {}
    for m in tqdm(todo, desc="analysis: pairwise barriers", unit="method", disable=ctx.quiet, leave=False,
                  dynamic_ncols=True):
        names = ctx.plan.members[m.name]
        res = analyses.barrier_matrix(ctx.evaluator, [ctx.runner.snapshot(n) for n in names], alphas,
                                      store=ctx.store, name=ctx.px + m.name,
                                      provenance={**ctx.provenance, "method": m.name},
                                      overwrite=True)
        iu = np.triu_indices(len(names), 1)
        matrices = {k[: -len("_barrier")]: np.asarray(res[k]) for k in res if k.endswith("_barrier")}
        out[m.name] = {"pairwise_barrier": {k: v.tolist() for k, v in matrices.items()},
                       "mean_pairwise_barrier": {k: float(np.mean(v[iu])) for k, v in matrices.items()}}
        if ctx.an["align"] != "none" and m.type in ALIGNED_TYPES:
            out[m.name].update(aligned_pairwise_barriers(ctx, m, names, alphas))
    return out


# Whose pairwise barriers are also computed after alignment: the two references of the basin question.
ALIGNED_TYPES = ("local_de", "global_de")


def aligned_pairwise_barriers(ctx: AnalysisContext, m, names: list[str], alphas: np.ndarray) -> dict[str, Any]:
    """The barrier matrix among a method's members after permuting every member's hidden units to
    match the first member's (Git Re-Basin: `landscape align`, analysis.align's method): do
    members of different checkpoints share a basin up to the order of their units? With
    analysis.repair and a network without BN, the same aligned matrix again with REPAIR (`--bn
    repair`: each hidden layer's output rescaled to the endpoints' interpolated statistics,
    Jordan et al. 2023)."""
    method = ctx.an["align"]
    snaps = _aligned(ctx, [ctx.runner.snapshot(n) for n in names])
    iu = np.triu_indices(len(names), 1)
    out: dict[str, Any] = {"align_method": method}
    # In a BN network REPAIR after the BN recompute is the identity up to the O(1/n) gap between
    # biased and unbiased variances (its targets are the interpolated γ and β the recomputed BN
    # already produces; barriers agreed to 1e-5 on the quick demo), so it runs without BN only.
    repair = ctx.an["repair"] and not bn_modules(ctx.prep.template)
    evaluators = [("", ctx.evaluator)] + ([("_repaired", repair_evaluator(ctx))] if repair else [])
    for suffix, ev in evaluators:
        res = analyses.barrier_matrix(ev, snaps, alphas, store=ctx.store,
                                      name=f"{ctx.px}{m.name}-aligned{suffix.replace('_', '-')}",
                                      provenance={**ctx.provenance, "method": m.name, "align": method},
                                      overwrite=True)
        matrices = {k[: -len("_barrier")]: np.asarray(res[k]) for k in res if k.endswith("_barrier")}
        out[f"pairwise_barrier_aligned{suffix}"] = {k: v.tolist() for k, v in matrices.items()}
        out[f"mean_pairwise_barrier_aligned{suffix}"] = {k: float(np.mean(v[iu])) for k, v in matrices.items()}
    return out


def _aligned(ctx: AnalysisContext, snaps: list[Snapshot]) -> list[Snapshot]:
    """Every snapshot's hidden units permuted to match the first's (analysis.align's method)."""
    data = ctx.evaluator.loss_data()
    x = data["x"] if data["x"] is not None else data["stream"].head(ctx.an["train_samples"]).x
    return align_all(ctx.evaluator.model, snaps, example=x[:1], method=ctx.an["align"],
                     batches=lambda: iter(x[i:i + 250] for i in range(0, len(x), 250)))


def repair_evaluator(ctx: AnalysisContext) -> Evaluator:
    """The study's evaluator with REPAIR in place of the plain BN recompute."""
    return landscape_evaluator(ctx, bn_mode="repair")[0]


def aligned_exit_barriers(ctx: AnalysisContext) -> dict[str, dict[str, Any]]:
    """For SSE and StarSSE, the line from the fine-tuned model to the last member of the cell with
    the largest cycle lr after aligning that member's hidden units to the fine-tuned model's: is a
    large-cycle-lr member's barrier a wall or a permutation?"""
    out = {}
    alphas = line_alphas(ctx.an["line_points"])
    for _, a, b, method in curve_pairs(ctx):
        if method is None:
            continue
        sa, sb = _aligned(ctx, [ctx.runner.snapshot(a), ctx.runner.snapshot(b)])
        res = analyses.line(ctx.evaluator, sa, sb, alphas, store=ctx.store, name=f"aligned-{a}-{b}",
                            provenance={**ctx.provenance, "align": ctx.an["align"]}, overwrite=True)
        out[method] = {"aligned_barrier_to_finetuned": {k: v["barrier"] for k, v in res["barriers"].items()}}
    return out


def store_ensembles(ctx: AnalysisContext, methods: dict[str, dict[str, Any]]) -> None:
    """Each method's metrics by size and soup metrics, stored once per set of members."""
    for m in ctx.cfg.methods:
        res = methods[m.name]
        config = {"members": [ctx.runner.snapshot(n).fingerprint() for n in res["members"]],
                  "ece_bins": ctx.an["ece_bins"]}
        if finished_ensemble(ctx.store, ctx.px + m.name, config, overwrite=True) is not None:
            continue
        arrays = {k.removeprefix("ensemble_"): res[k] for k in ("ensemble_acc", "ensemble_nll", "ensemble_ece",
                                                               "ensemble_brier", "member_acc", "member_nll")}
        arrays["size"] = np.arange(1, len(res["members"]) + 1)
        ctx.store.write("ensembles", ctx.px + m.name, ensemble_arrays(arrays, res["members"]),
                        {"method": m.name, "type": m.type, "soup_acc": res["soup_acc"], "soup_nll": res["soup_nll"],
                         "params": m.params, "config": config}, overwrite=True)


def default_plane_methods(cfg) -> list[str]:
    """The first Local DE method and the SSE/StarSSE method with the largest cycle lr (else the next method)."""
    names = [m.name for m in cfg.methods]
    first = next((m.name for m in cfg.methods if m.type == "local_de"), names[0])
    cyc = [m for m in cfg.methods if m.type in ("starsse", "sse")]
    second = max(cyc, key=lambda m: (m.params["lr_scale"], m.type == "starsse")).name if cyc else \
        next((n for n in names if n != first), first)
    return [first, second]


def plane_members(cfg, plan) -> list[str]:
    """The two members the study's plane passes through (besides the fine-tuned model)."""
    picked = []
    for ref in cfg["analysis"]["plane_through"] or default_plane_methods(cfg):
        method, _, idx = ref.partition(":")
        names = plan.members[method]
        picked.append(names[int(idx)] if idx else names[-1])
    return picked


def study_plane(ctx: AnalysisContext) -> dict[str, Any]:
    plan, runner = ctx.plan, ctx.runner
    picked = plane_members(ctx.cfg, plan)
    ft = runner.snapshot(plan.finetuned)
    b, c = runner.snapshot(picked[0]), runner.snapshot(picked[1])
    pl = plane_through(ft.params, b.params, c.params)
    members = ctx.member_names()
    # one snapshot at a time: large models do not fit in memory all together
    names, coords, dists = project_snapshots((runner.snapshot(n) for n in members), ft.params, pl.directions)
    # The grid covers the three defining points and every member close to the plane, with a margin.
    span = float(np.ptp(pl.coords.numpy(), axis=0).max())
    near = coords[dists <= 2.0 * span] if len(coords) else coords
    pts = np.concatenate([pl.coords.numpy(), near]) if len(near) else pl.coords.numpy()
    lo, hi = pts.min(0), pts.max(0)
    margin = 0.2 * np.maximum(hi - lo, 1e-3)
    n = ctx.an["plane_points"]
    xs = np.linspace(lo[0] - margin[0], hi[0] + margin[0], n)
    ys = np.linspace(lo[1] - margin[1], hi[1] + margin[1], n)
    if not ctx.quiet:
        print(f"analysis: plane {n}x{n} through {plan.finetuned}, {picked[0]}, {picked[1]}", flush=True)
    res = analyses.plane(ctx.evaluator, ft, pl.directions, xs, ys, store=ctx.store, name=ctx.px + "plane",
                         provenance=ctx.provenance, direction_attrs={"kind": "plane",
                                                                     "points": [plan.finetuned, *picked]},
                         projections=(names, coords, dists), overwrite=True, quiet=ctx.quiet)
    method_of: dict[str, str] = {}
    for m in ctx.cfg.methods:
        for name in plan.members[m.name]:
            method_of.setdefault(name, m.name)
    return {"through": [plan.finetuned, *picked], "xcoordinates": xs.tolist(), "ycoordinates": ys.tolist(),
            **{k: res[k] for k in ctx.evaluator.metric_names},
            "projections": [{"name": p["name"], "method": method_of.get(p["name"]), "x": p["x"], "y": p["y"],
                             "distance": p["distance"]} for p in res["projections"]]}
