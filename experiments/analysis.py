"""The analysis at the end of a study, all through the landscape toolkit and the ensemble kernel.

- ensembles: test accuracy, NLL, ECE and Brier score for every size 1..K of every method, from the
  stored per-snapshot predictions (kernels.ensemble_metrics);
- soups: each method's uniform weight average with BN recomputed;
- members: test accuracy, L2 distance to the fine-tuned model and (backbone only, the head is
  new) to the pre-trained checkpoint it descends from, and the loss and error barriers on the
  line to the fine-tuned model (landscape.lines, BN recomputed at every point);
- the mean pairwise barrier among each method's members (landscape.lines barrier matrices);
- a plane through the fine-tuned model and two members, every member projected onto it
  (landscape.directions.plane_through / project, landscape.planes.compute_plane).

Lines, matrices and the plane are resumable grids in the store: a restarted analysis computes
only missing points.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from kernels import ensemble_metrics
from landscape.api import snapshot_fingerprint
from landscape.bn import recompute_bn
from landscape.checkpoints import Snapshot
from landscape.directions import plane_through
from landscape.engine import Evaluator
from landscape.grid import line_alphas
from landscape.lines import compute_barrier_matrix, compute_line, curve_barriers
from landscape.planes import compute_plane, project_snapshots
from landscape.params import set_buffers, vector_to_model
from landscape.store import Store

from .models import backbone_vector, load_backbone, seeded_build
from .study import read_logits
from .training import logits_metrics, predict


def _root_checkpoint(runner, name: str) -> int | None:
    """The index of the pre-trained checkpoint a snapshot descends from (None: trained from scratch)."""
    plan = runner.prep.plan
    seen = 0
    while name is not None and seen < 1000:
        u = plan.unit(name)
        if u.kind == "finetune":
            return int(u.extra["checkpoint"])
        if u.kind in ("scratch", "pretrain"):
            return None
        name, seen = u.parent, seen + 1
    return None


def analyze_study(prep, store: Store, runner, quiet: bool = True) -> dict[str, Any]:
    cfg, plan, an = prep.cfg, prep.plan, prep.cfg["analysis"]
    target = prep.target
    labels = target.test_labels()
    bs = cfg["study"]["eval_batch_size"]
    out: dict[str, Any] = {"methods": {}, "members": {}}

    # --- reference points ---------------------------------------------------------------------
    ft_name = plan.finetuned
    ft = runner.snapshot(ft_name)
    member_names = list(dict.fromkeys(n for names in plan.members.values() for n in names))
    singles = member_names + (["scratch"] if store.has("snapshots", "scratch") else [])
    single_metrics = {}
    for n in singles:
        lg = read_logits(store, n).float()
        r = ensemble_metrics(lg.unsqueeze(0), labels, an["ece_bins"])
        single_metrics[n] = {"test_acc": float(r.acc[0]), "test_nll": float(r.nll[0]), "ece": float(r.ece[0])}
    out["finetuned"] = {"name": ft_name, **single_metrics[ft_name]}
    if "scratch" in single_metrics:
        out["scratch"] = {"name": "scratch", **single_metrics["scratch"]}
    out["pretrained"] = {}
    for u in plan.units:
        if u.kind == "pretrain":
            out["pretrained"][u.name] = {"source_test_acc": runner.snapshot(u.name).meta.get("source_test_acc")}

    # --- ensembles by size ----------------------------------------------------------------------
    for m in cfg.methods:
        names = plan.members[m.name]
        lg = torch.stack([read_logits(store, n) for n in names]).float()
        r = ensemble_metrics(lg, labels, an["ece_bins"])
        res = {"type": m.type, "members": names, "params": m.params,
               "ensemble_acc": r.acc.tolist(), "ensemble_nll": r.nll.tolist(), "ensemble_ece": r.ece.tolist(),
               "ensemble_brier": r.brier.tolist(), "member_acc": r.member_acc.tolist(),
               "member_nll": r.member_nll.tolist()}
        if m.type in ("sse", "starsse"):
            res["cycle_lr"] = cfg["finetune"]["lr"] * m.params["lr_scale"]
        out["methods"][m.name] = res

    # --- the landscape evaluator (BN recomputed at every point) --------------------------------
    train_d = target.eval_data("train", an["train_samples"], seed=cfg.seed)
    test_d = target.eval_data("test", an["test_samples"], seed=cfg.seed)
    ev = Evaluator(prep.template, train_d, test_d, bn_mode="recompute", device=prep.device,
                   batch_size=min(bs, 500), bn_samples=an["bn_samples"])
    base_config = {"model": cfg["model"], "data": cfg["data"], "train_samples": an["train_samples"],
                   "test_samples": an["test_samples"], **ev.config}
    metrics = ev.metric_names

    # --- soups: uniform weight averages, BN recomputed, evaluated on the whole test split ----------
    soup_model = copy.deepcopy(prep.template).to(prep.device)
    bn_x = train_d.x[: an["bn_samples"]].to(prep.device)
    for m in cfg.methods:
        names = plan.members[m.name]
        params = torch.zeros_like(runner.snapshot(names[0]).params, dtype=torch.float64)
        for n in names:  # a running sum: large models never need K copies in memory
            params += runner.snapshot(n).params.double()
        vector_to_model((params / len(names)).float().to(prep.device), soup_model)
        set_buffers(soup_model, {k: v.to(prep.device) for k, v in runner.snapshot(names[0]).buffers.items()})
        recompute_bn(soup_model, bn_x, min(bs, 500))
        vals = logits_metrics(predict(soup_model, target, prep.device, bs), labels)
        out["methods"][m.name]["soup_acc"] = vals["test_acc"]
        out["methods"][m.name]["soup_nll"] = vals["test_loss"]
    del soup_model, bn_x

    # --- members: distances and barriers to the fine-tuned model -------------------------------
    alphas = line_alphas(an["line_points"])
    m_template = prep.template
    pre_vectors: dict[int, torch.Tensor] = {}

    def pre_vector(c: int) -> torch.Tensor:
        if c not in pre_vectors:
            mdl = seeded_build(cfg["model"]["name"], target.num_classes, target.input_shape, cfg["model"]["width"], 0)
            load_backbone(mdl, runner.pretrained(c), f"checkpoint {c}")
            pre_vectors[c] = backbone_vector(mdl)
        return pre_vectors[c]

    def backbone_of(s: Snapshot) -> torch.Tensor:
        s.load_into(m_template)
        return backbone_vector(m_template).clone()

    lines_todo = [n for n in member_names if n != ft_name]
    bar = tqdm(total=len(lines_todo), desc="analysis: lines to the fine-tuned model", unit="line",
               disable=quiet, leave=False, dynamic_ncols=True)
    for n in member_names + (["scratch"] if "scratch" in single_metrics else []):
        s = runner.snapshot(n)
        c = _root_checkpoint(runner, n)
        info = {**single_metrics[n], "meta": {k: s.meta.get(k) for k in ("method", "member", "cycle", "lr", "seed",
                                                                          "parent", "kind")},
                "dist_finetuned": float((s.params.double() - ft.params.double()).norm()),
                "dist_pretrained": float((backbone_of(s).double() - pre_vector(c).double()).norm()) if c is not None else None,
                "checkpoint": c}
        if n != ft_name and n in member_names:
            config = {**base_config, "a": snapshot_fingerprint(ft), "b": snapshot_fingerprint(s),
                      "alphas": alphas.tolist()}
            grid = store.open_grid("curves", f"line-{ft_name}-{n}", (len(alphas),), metrics, {"alphas": alphas},
                                   config, {"a": ft_name, "b": n, "bn_mode": "recompute"}, overwrite=True)
            curve = compute_line(ev, ft, s, alphas, grid)
            b = curve_barriers(alphas, curve)
            grid.set_attrs({"barriers": b})
            info["barrier_to_finetuned"] = {k: v["barrier"] for k, v in b.items()}
            bar.update(1)
        elif n == ft_name:
            info["barrier_to_finetuned"] = {k: 0.0 for k in ("train_loss", "train_error", "test_loss", "test_error")}
        out["members"][n] = info
    bar.close()

    for m in cfg.methods:
        res = out["methods"][m.name]
        names = plan.members[m.name]
        res["member_barrier_to_finetuned"] = {k: [out["members"][n]["barrier_to_finetuned"][k] for n in names]
                                              for k in ("test_loss", "test_error", "train_loss", "train_error")}
        res["member_dist_finetuned"] = [out["members"][n]["dist_finetuned"] for n in names]
        res["member_dist_pretrained"] = [out["members"][n]["dist_pretrained"] for n in names]

    # --- pairwise barriers within each method --------------------------------------------------
    if an["pairwise"]:
        pw_alphas = line_alphas(an["pairwise_points"])
        todo = [m for m in cfg.methods if m.pairwise and len(plan.members[m.name]) >= 2]
        bar = tqdm(total=len(todo), desc="analysis: pairwise barriers", unit="method", disable=quiet, leave=False,
                   dynamic_ncols=True)
        for m in todo:
            names = plan.members[m.name]
            snaps = [runner.snapshot(n) for n in names]
            pairs = np.array([(i, j) for i in range(len(names)) for j in range(i + 1, len(names))], dtype=np.int64)
            config = {**base_config, "snapshots": [snapshot_fingerprint(s) for s in snaps],
                      "alphas": pw_alphas.tolist()}
            grid = store.open_grid("barriers", m.name, (len(pairs), len(pw_alphas)), metrics,
                                   {"alphas": pw_alphas, "pairs": pairs, "names": np.array(names, dtype="S")},
                                   config, {"bn_mode": "recompute", "method": m.name}, overwrite=True)
            data = compute_barrier_matrix(ev, snaps, pw_alphas, grid)
            iu = np.triu_indices(len(names), 1)
            res = out["methods"][m.name]
            res["pairwise_barrier"] = {k[: -len("_barrier")]: data[k].tolist() for k in data if k.endswith("_barrier")}
            res["mean_pairwise_barrier"] = {k[: -len("_barrier")]: float(np.mean(data[k][iu]))
                                            for k in data if k.endswith("_barrier")}
            bar.update(1)
        bar.close()

    # --- ensembles into the store ------------------------------------------------------------------
    for m in cfg.methods:
        res = out["methods"][m.name]
        arrays = {k: res[k] for k in ("ensemble_acc", "ensemble_nll", "ensemble_ece", "ensemble_brier",
                                     "member_acc", "member_nll")}
        arrays = {k.removeprefix("ensemble_"): v for k, v in arrays.items()}  # acc, nll, ece, brier by size
        arrays["members"] = np.array(res["members"], dtype="S")
        store.write_group("ensembles", m.name, arrays,
                     {"method": m.name, "type": m.type, "soup_acc": res["soup_acc"], "soup_nll": res["soup_nll"],
                      "params": m.params})

    # --- the plane -----------------------------------------------------------------------------------
    if an["plane"]:
        out["plane"] = _plane(prep, store, runner, ev, base_config, out, member_names, quiet)
    store.flush()
    return out


def default_plane_methods(cfg) -> list[str]:
    """The first Local DE method and the SSE/StarSSE method with the largest cycle lr (else the next method)."""
    names = [m.name for m in cfg.methods]
    first = next((m.name for m in cfg.methods if m.type == "local_de"), names[0])
    cyc = [m for m in cfg.methods if m.type in ("starsse", "sse")]
    second = max(cyc, key=lambda m: (m.params["lr_scale"], m.type == "starsse")).name if cyc else \
        next((n for n in names if n != first), first)
    return [first, second]


def _plane(prep, store: Store, runner, ev: Evaluator, base_config: dict, out: dict, member_names: list[str],
           quiet: bool) -> dict[str, Any]:
    cfg, plan, an = prep.cfg, prep.plan, prep.cfg["analysis"]
    refs = an["plane_through"] or default_plane_methods(cfg)
    picked = []
    for ref in refs:
        method, _, idx = ref.partition(":")
        names = plan.members[method]
        picked.append(names[int(idx)] if idx else names[-1])
    ft = runner.snapshot(plan.finetuned)
    b, c = runner.snapshot(picked[0]), runner.snapshot(picked[1])
    pl = plane_through(ft.params, b.params, c.params)
    directions = pl.directions
    # one snapshot at a time: large models do not fit in memory all together
    _, coords, dists = project_snapshots((runner.snapshot(n) for n in member_names), ft.params, directions)
    names = member_names
    # The grid covers the three defining points and every member close to the plane, with a margin.
    span = float(np.ptp(pl.coords.numpy(), axis=0).max())
    near = coords[dists <= 2.0 * span] if len(coords) else coords
    pts = np.concatenate([pl.coords.numpy(), near]) if len(near) else pl.coords.numpy()
    lo, hi = pts.min(0), pts.max(0)
    margin = 0.2 * np.maximum(hi - lo, 1e-3)
    xs = np.linspace(lo[0] - margin[0], hi[0] + margin[0], an["plane_points"])
    ys = np.linspace(lo[1] - margin[1], hi[1] + margin[1], an["plane_points"])
    config = {**base_config, "points": [snapshot_fingerprint(s) for s in (ft, b, c)], "x": xs.tolist(),
              "y": ys.tolist()}
    attrs = {"kind": "plane", "points": [plan.finetuned, *picked], "center": plan.finetuned, "bn_mode": "recompute"}
    store.write_directions("plane", directions, attrs, overwrite=True)
    grid = store.open_grid("surfaces", "plane", (len(xs), len(ys)), ev.metric_names,
                           {"xcoordinates": xs, "ycoordinates": ys}, config, {**attrs, "directions": "plane"},
                           overwrite=True)
    todo = len(grid.missing())
    if todo and not quiet:
        print(f"analysis: plane {len(xs)}x{len(ys)} through {plan.finetuned}, {picked[0]}, {picked[1]} "
              f"({todo} points to evaluate)", flush=True)
    surface = compute_plane(ev, ft, directions, xs, ys, grid, quiet=quiet)
    grid.put("projection_names", np.array(names, dtype="S"))
    grid.put("projection_coords", coords)
    grid.put("projection_distances", dists)
    method_of = {}
    for m in cfg.methods:
        for n in plan.members[m.name]:
            method_of.setdefault(n, m.name)
    return {"through": [plan.finetuned, *picked], "xcoordinates": xs.tolist(), "ycoordinates": ys.tolist(),
            **{k: surface[k].tolist() for k in ev.metric_names},
            "projections": [{"name": n, "method": method_of.get(n), "x": float(p[0]), "y": float(p[1]),
                             "distance": float(d)} for n, p, d in zip(names, coords, dists)]}
