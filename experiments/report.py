"""The study's outputs: DIR/summary.json, DIR/report.md and DIR/figures/*.png.

The report states the paper's findings one by one and says, with the numbers of this run,
whether each holds at this scale. Verdicts are computed, never hard-coded.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from landscape.plots import plt  # the toolkit's matplotlib, already on the Agg backend

TYPE_LABEL = {"local_de": "Local DE", "global_de": "Global DE", "sse": "SSE", "starsse": "StarSSE",
              "fge": "FGE", "swa": "SWA"}
COLORS = {"local_de": "tab:blue", "global_de": "tab:red", "sse": "tab:orange", "starsse": "tab:green",
          "fge": "tab:purple", "swa": "tab:pink"}


def method_color(summary: dict, name: str):
    """One colour per method type; SSE/StarSSE shaded light (small cycle lr) to dark (large)."""
    import matplotlib

    m = summary["methods"][name]
    if m["type"] not in ("sse", "starsse"):
        return COLORS.get(m["type"], "gray")
    same = sorted({q["params"]["lr_scale"] for q in summary["methods"].values() if q["type"] == m["type"]})
    frac = 0.55 if len(same) == 1 else 0.35 + 0.6 * same.index(m["params"]["lr_scale"]) / (len(same) - 1)
    return matplotlib.colormaps["Oranges" if m["type"] == "sse" else "Greens"](frac)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def _f(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def _label(name: str, m: dict) -> str:
    base = TYPE_LABEL.get(m["type"], m["type"])
    if m["type"] in ("sse", "starsse"):
        return f"{base} ({m['params']['lr_scale']:g}·η)"
    return base if name == m["type"] else f"{base} [{name}]"


# ----------------------------------------------------------------------------------------------
# summary


def build_summary(prep, results: dict[str, Any]) -> dict[str, Any]:
    cfg = prep.cfg
    K = cfg.members
    methods = {}
    for name, m in results["methods"].items():
        new = [i for i, n in enumerate(m["members"]) if n != prep.plan.finetuned]
        methods[name] = {
            "type": m["type"], "label": _label(name, m), "params": m["params"], "members": m["members"],
            "cycle_lr": m.get("cycle_lr"),
            "ensemble_acc": m["ensemble_acc"], "ensemble_nll": m["ensemble_nll"], "ensemble_ece": m["ensemble_ece"],
            "ensemble_brier": m["ensemble_brier"], "member_acc": m["member_acc"], "member_nll": m["member_nll"],
            "soup_acc": m["soup_acc"], "soup_nll": m["soup_nll"],
            "barrier_to_finetuned": m["member_barrier_to_finetuned"],
            "dist_finetuned": m["member_dist_finetuned"], "dist_pretrained": m["member_dist_pretrained"],
            "mean_pairwise_barrier": m.get("mean_pairwise_barrier"),
            "pairwise_barrier": m.get("pairwise_barrier"),
            # means over the members that are not the fine-tuned model itself
            "new_member_mean_acc": _mean([m["member_acc"][i] for i in new]),
            "new_member_mean_barrier_test_loss": _mean([m["member_barrier_to_finetuned"]["test_loss"][i] for i in new]),
            "new_member_mean_barrier_test_error": _mean([m["member_barrier_to_finetuned"]["test_error"][i] for i in new]),
            "new_member_mean_dist_pretrained": _mean([m["member_dist_pretrained"][i] for i in new]),
        }
    ft, sc = results["finetuned"], results.get("scratch")
    transfer = {"finetuned_acc": ft["test_acc"], "finetuned_nll": ft["test_nll"],
                "scratch_acc": sc["test_acc"] if sc else None, "scratch_nll": sc["test_nll"] if sc else None,
                "margin": ft["test_acc"] - sc["test_acc"] if sc else None,
                "pretrained_source_acc": {k: v["source_test_acc"] for k, v in results["pretrained"].items()}}
    summary = {"study": {"name": cfg.name, "config": cfg.source, "fingerprint": cfg.fingerprint(), "members": K,
                         "data": cfg["data"], "model": cfg["model"], "finetune": cfg["finetune"],
                         "finetuned_model": prep.plan.finetuned},
               "transfer": transfer, "methods": methods}
    if "plane" in results:
        summary["plane"] = {"through": results["plane"]["through"], "projections": results["plane"]["projections"]}
    summary["findings"] = findings(summary)
    summary["timings"] = results.get("timings", {})
    return _clean(summary)


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ----------------------------------------------------------------------------------------------
# findings


def _of_type(summary: dict, t: str) -> list[tuple[str, dict]]:
    return [(n, m) for n, m in summary["methods"].items() if m["type"] == t]


def _verdict(better_acc: bool, better_nll: bool) -> str:
    return "holds" if better_acc and better_nll else "does not hold" if not better_acc and not better_nll else "mixed"


def findings(summary: dict) -> list[dict[str, Any]]:
    """The paper's claims, each with this run's numbers and a verdict: holds, does not hold, or mixed
    (accuracy and NLL disagree). The thresholds are stated in the claims' texts."""
    out = []
    tr = summary["transfer"]
    K = summary["study"]["members"]
    if tr["scratch_acc"] is not None:
        margin = tr["margin"]
        out.append({"id": "transfer", "claim": "Fine-tuning from the pre-trained checkpoint beats training from "
                    "scratch on the target task (by 3 points or more).",
                    "verdict": "holds" if margin >= 0.03 else "does not hold",
                    "text": f"fine-tuned {_pct(tr['finetuned_acc'])} vs from scratch {_pct(tr['scratch_acc'])} test "
                            f"accuracy: transfer is worth {100 * margin:+.1f} points."})
    loc, glo = _of_type(summary, "local_de"), _of_type(summary, "global_de")
    if loc and glo and loc[0][1]["mean_pairwise_barrier"] and glo[0][1]["mean_pairwise_barrier"]:
        lb, gb = loc[0][1]["mean_pairwise_barrier"], glo[0][1]["mean_pairwise_barrier"]
        holds = gb["test_loss"] > max(2 * lb["test_loss"], lb["test_loss"] + 0.05)
        out.append({"id": "basins", "claim": "Members fine-tuned from one checkpoint share a basin; members "
                    "fine-tuned from different checkpoints do not (mean pairwise test-loss barrier at least twice "
                    "as high and 0.05 higher).", "verdict": "holds" if holds else "does not hold",
                    "text": f"mean pairwise test-loss barrier {_f(lb['test_loss'])} among Local DE members vs "
                            f"{_f(gb['test_loss'])} among Global DE members (test-error barrier "
                            f"{_pct(lb['test_error'])} vs {_pct(gb['test_error'])})."})
    if loc and glo:
        la, ga = loc[0][1]["ensemble_acc"][-1], glo[0][1]["ensemble_acc"][-1]
        ln, gn = loc[0][1]["ensemble_nll"][-1], glo[0][1]["ensemble_nll"][-1]
        out.append({"id": "global_better", "claim": f"Global DE ensembles beat Local DE ensembles (accuracy and NLL at "
                    f"size {K}).", "verdict": _verdict(ga > la, gn < ln),
                    "text": f"Global DE {_pct(ga)} accuracy / NLL {_f(gn)} vs Local DE {_pct(la)} / {_f(ln)}."})
    semi = [(n, m) for n, m in summary["methods"].items() if m["type"] in ("sse", "starsse", "fge", "swa")]
    if loc and glo and semi:
        ga, gn = glo[0][1]["ensemble_acc"][-1], glo[0][1]["ensemble_nll"][-1]
        la, ln = loc[0][1]["ensemble_acc"][-1], loc[0][1]["ensemble_nll"][-1]
        best_acc = max(semi, key=lambda nm: nm[1]["ensemble_acc"][-1])[1]
        best_nll = min(semi, key=lambda nm: nm[1]["ensemble_nll"][-1])[1]
        out.append({"id": "gap", "claim": "Local and semi-local methods (SSE, StarSSE, FGE, SWA) do not close the "
                    f"gap to Global DE (none reaches its accuracy or NLL at size {K}).",
                    "verdict": _verdict(best_acc["ensemble_acc"][-1] < ga, best_nll["ensemble_nll"][-1] > gn),
                    "text": f"best accuracy {_pct(best_acc['ensemble_acc'][-1])} ({best_acc['label']}), best NLL "
                            f"{_f(best_nll['ensemble_nll'][-1])} ({best_nll['label']}), vs Global DE {_pct(ga)} / "
                            f"{_f(gn)}."})
        acc_ok = [m["label"] for _, m in semi if m["ensemble_acc"][-1] >= la]
        nll_ok = [m["label"] for _, m in semi if m["ensemble_nll"][-1] <= ln]
        out.append({"id": "semi_vs_local", "claim": "With a well-chosen cycle, semi-local methods match or beat "
                    f"Local DE (accuracy and NLL at size {K}).", "verdict": _verdict(bool(acc_ok), bool(nll_ok)),
                    "text": f"Local DE {_pct(la)} / NLL {_f(ln)}; at least as accurate: "
                            f"{', '.join(acc_ok) or 'none'}; NLL at least as low: {', '.join(nll_ok) or 'none'}."})
    for t in ("sse", "starsse"):
        ms = sorted(_of_type(summary, t), key=lambda nm: nm[1]["params"]["lr_scale"])
        if len(ms) < 2:
            continue
        s, l = ms[0][1], ms[-1][1]
        lo, hi = f"{s['params']['lr_scale']:g}·η", f"{l['params']['lr_scale']:g}·η"
        sb, lb = s["new_member_mean_barrier_test_loss"], l["new_member_mean_barrier_test_loss"]
        se, le = s["new_member_mean_barrier_test_error"], l["new_member_mean_barrier_test_error"]
        out.append({"id": f"{t}_barrier", "claim": f"{TYPE_LABEL[t]} members trained with a large cycle lr leave the "
                    "pre-train basin: a higher barrier on the line to the fine-tuned model (test loss, by 0.02 or more).",
                    "verdict": "holds" if lb >= sb + 0.02 else "does not hold",
                    "text": f"mean test-loss barrier {_f(sb)} at {lo} vs {_f(lb)} at {hi} (test-error barrier "
                            f"{_pct(se)} vs {_pct(le)}); backbone distance to the pre-trained checkpoint "
                            f"{_f(s['new_member_mean_dist_pretrained'], 2)} vs {_f(l['new_member_mean_dist_pretrained'], 2)}."})
        sa, la_ = s["new_member_mean_acc"], l["new_member_mean_acc"]
        text = (f"mean member accuracy {_pct(sa)} at {lo} vs {_pct(la_)} at {hi}; fine-tuned model "
                f"{_pct(tr['finetuned_acc'])}" + (f", from scratch {_pct(tr['scratch_acc'])}"
                                                  if tr["scratch_acc"] is not None else "") + ".")
        out.append({"id": f"{t}_members", "claim": f"Leaving the basin loses the benefit of transfer: {TYPE_LABEL[t]} "
                    "members at the large cycle lr are worse (by 2 points or more) than at the small one.",
                    "verdict": "holds" if la_ <= sa - 0.02 else "does not hold", "text": text})
        out.append({"id": f"{t}_ensemble_lr", "claim": f"Staying in the basin gives the better {TYPE_LABEL[t]} "
                    f"ensemble (accuracy and NLL at size {K}).",
                    "verdict": _verdict(s["ensemble_acc"][-1] >= l["ensemble_acc"][-1],
                                        s["ensemble_nll"][-1] <= l["ensemble_nll"][-1]),
                    "text": f"{lo}: {_pct(s['ensemble_acc'][-1])} / NLL {_f(s['ensemble_nll'][-1])}; {hi}: "
                            f"{_pct(l['ensemble_acc'][-1])} / NLL {_f(l['ensemble_nll'][-1])}."})
    sse, star = _of_type(summary, "sse"), _of_type(summary, "starsse")
    pairs = [(a, b) for a in sse for b in star if a[1]["params"]["lr_scale"] == b[1]["params"]["lr_scale"]]
    for (_, a), (_, b) in pairs:
        out.append({"id": f"starsse_vs_sse_{a['params']['lr_scale']:g}", "claim": "StarSSE ensembles are at least "
                    f"as good as SSE ensembles at the same cycle lr ({a['params']['lr_scale']:g}·η; accuracy and NLL "
                    f"at size {K}).",
                    "verdict": _verdict(b["ensemble_acc"][-1] >= a["ensemble_acc"][-1],
                                        b["ensemble_nll"][-1] <= a["ensemble_nll"][-1]),
                    "text": f"StarSSE {_pct(b['ensemble_acc'][-1])} / NLL {_f(b['ensemble_nll'][-1])} vs SSE "
                            f"{_pct(a['ensemble_acc'][-1])} / {_f(a['ensemble_nll'][-1])}."})
    return out


# ----------------------------------------------------------------------------------------------
# figures


def fig_ensembles(summary: dict, out: str) -> str:
    import matplotlib.ticker  # noqa: F401

    import matplotlib
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, m in summary["methods"].items():
        sizes = np.arange(1, len(m["ensemble_acc"]) + 1)
        style = "--" if m["type"] in ("sse", "starsse") and m is _largest_lr(summary, m["type"]) else "-"
        kw = dict(color=method_color(summary, name), ls=style, marker="o", ms=4, label=m["label"])
        axes[0].plot(sizes, 100 * np.asarray(m["ensemble_acc"]), **kw)
        axes[1].plot(sizes, m["ensemble_nll"], **kw)
    tr = summary["transfer"]
    for ax, key, scale in ((axes[0], "acc", 100), (axes[1], "nll", 1)):
        if tr.get(f"scratch_{key}") is not None:
            ax.axhline(scale * tr[f"scratch_{key}"], color="gray", ls=":", label="from scratch")
        ax.set_xlabel("ensemble size")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[0].set_ylabel("test accuracy (%)"), axes[1].set_ylabel("test NLL")
    axes[0].set_title("ensemble accuracy by size"), axes[1].set_title("ensemble NLL by size")
    axes[1].legend(fontsize=7, loc="upper right")
    return _save(fig, out)


def _largest_lr(summary: dict, t: str):
    ms = [m for m in summary["methods"].values() if m["type"] == t]
    return max(ms, key=lambda m: m["params"]["lr_scale"]) if len(ms) > 1 else None


def fig_barrier_vs_lr(summary: dict, out: str) -> str | None:
    cyc = [m for m in summary["methods"].values() if m["type"] in ("sse", "starsse")]
    if not cyc:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for t in ("sse", "starsse"):
        ms = sorted((m for m in cyc if m["type"] == t), key=lambda m: m["cycle_lr"])
        if not ms:
            continue
        x = [m["cycle_lr"] for m in ms]
        kw = dict(color=COLORS[t], marker="o", label=TYPE_LABEL[t])
        axes[0].plot(x, [m["new_member_mean_barrier_test_loss"] for m in ms], **kw)
        axes[1].plot(x, [100 * m["new_member_mean_acc"] for m in ms], **kw)
        axes[2].plot(x, [100 * m["ensemble_acc"][-1] for m in ms], **kw)
    tr = summary["transfer"]
    for n, m in summary["methods"].items():
        if m["type"] in ("local_de", "global_de") and m.get("mean_pairwise_barrier"):
            axes[0].axhline(m["mean_pairwise_barrier"]["test_loss"], color=COLORS[m["type"]], ls=":",
                            label=f"{m['label']} mean pairwise")
            axes[2].axhline(100 * m["ensemble_acc"][-1], color=COLORS[m["type"]], ls=":", label=m["label"])
    axes[1].axhline(100 * tr["finetuned_acc"], color="black", ls=":", label="fine-tuned model")
    if tr["scratch_acc"] is not None:
        axes[1].axhline(100 * tr["scratch_acc"], color="gray", ls="--", label="from scratch")
    titles = ("test-loss barrier to the fine-tuned model", "individual member accuracy (%)",
              f"ensemble accuracy, size {summary['study']['members']} (%)")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log"), ax.set_xlabel("cycle learning rate η_c"), ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    return _save(fig, out)


def fig_plane(summary: dict, results: dict, out: str) -> str | None:
    plane = results.get("plane")
    if not plane:
        return None
    xs, ys = np.asarray(plane["xcoordinates"]), np.asarray(plane["ycoordinates"])
    err = 1.0 - np.asarray(plane["test_acc"], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    gx, gy = np.meshgrid(xs, ys)
    levels = np.linspace(np.nanmin(err), min(1.0, np.nanmax(err)), 21)
    cs = ax.contourf(gx, gy, 100 * err.T, levels=100 * levels, cmap="viridis_r")
    fig.colorbar(cs, ax=ax, label="test error (%), BN recomputed", format="%.0f")
    labels = {n: m["label"] for n, m in summary["methods"].items()}
    shown = set()
    for p in plane["projections"]:
        if not (xs.min() <= p["x"] <= xs.max() and ys.min() <= p["y"] <= ys.max()):
            continue
        lab = labels.get(p["method"]) if p["method"] not in shown else None
        shown.add(p["method"])
        ax.scatter(p["x"], p["y"], color=method_color(summary, p["method"]), edgecolor="white", s=45, zorder=3,
                   label=lab)
    ax.scatter([0], [0], marker="*", s=220, color="white", edgecolor="black", zorder=4, label="fine-tuned")
    for name in plane["through"][1:]:
        p = next(q for q in plane["projections"] if q["name"] == name)
        ax.annotate(name, (p["x"], p["y"]), textcoords="offset points", xytext=(6, 6), fontsize=8, color="black")
    ax.set_title(f"plane through {', '.join(plane['through'])}", fontsize=10)
    ax.set_xlabel("u (weight-space distance)"), ax.set_ylabel("v")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out)


def _save(fig, out: str) -> str:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------------------------
# report.md


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: dict, figures: dict[str, str]) -> str:
    st, tr = summary["study"], summary["transfer"]
    K = st["members"]
    d, m, ft = st["data"], st["model"], st["finetune"]
    L = [f"# Pre-train basin study: {st['name']}", ""]
    if d["kind"] == "embedded":
        data_desc = (f"the embedded transfer problem (seed {d['seed']}): {d['image_size']}×{d['image_size']} images "
                     f"made of {d['parts_per_image']} of {d['parts']} shared parts; source task "
                     f"{d['source_classes']} classes × {d['source_train']} samples, target task "
                     f"{d['target_classes']} new part combinations × {d['target_train_per_class']} samples per "
                     f"class, {d['target_test']} test samples")
    else:
        data_desc = f"{d['kind']} from {d['root']} at {d['image_size']}px"
    L += [f"Config `{st['config']}` (fingerprint `{st['fingerprint']}`). Data: {data_desc}. Model: "
          f"{m['name']}" + (f" (width {m['width']})" if m.get("width") else "") +
          f". Fine-tuning recipe: SGD momentum {ft['momentum']}, η = {ft['lr']}, weight decay {ft['weight_decay']}, "
          f"{ft['epochs']} epochs, batch {ft['batch_size']}, cosine decay. K = {K} members per method. Barriers are "
          "measured on straight lines with BatchNorm statistics recomputed at every point; accuracies are "
          "test-set fractions shown in %.", ""]
    L += ["## Findings", ""]
    verdicts = [f["verdict"] for f in summary["findings"]]
    if verdicts:
        L += [f"Of the paper's {len(verdicts)} claims checked here, {verdicts.count('holds')} hold at this scale, "
              f"{verdicts.count('mixed')} are mixed (accuracy and NLL disagree) and {verdicts.count('does not hold')} "
              "do not hold. Each verdict below comes from this run's numbers and the threshold in its claim.", ""]
    for f in summary["findings"]:
        L.append(f"- {f['claim']} — **{f['verdict']}** at this scale: {f['text']}")
    L.append("")
    L += ["## Transfer", "",
          _table(["model", "test accuracy", "test NLL"],
                 [["fine-tuned from checkpoint 0 (`" + st["finetuned_model"] + "`)", _pct(tr["finetuned_acc"]),
                   _f(tr["finetuned_nll"])]]
                 + ([["trained from scratch on the target", _pct(tr["scratch_acc"]), _f(tr["scratch_nll"])]]
                    if tr["scratch_acc"] is not None else [])), ""]
    if tr["pretrained_source_acc"]:
        accs = ", ".join(f"{_pct(v)}" for v in tr["pretrained_source_acc"].values())
        L += [f"Pre-trained checkpoints' accuracy on the source task: {accs}.", ""]
    L += ["## Methods at ensemble size K", ""]
    rows = []
    for n, mm in summary["methods"].items():
        mp = mm.get("mean_pairwise_barrier") or {}
        rows.append([mm["label"], _pct(mm["ensemble_acc"][-1]), _f(mm["ensemble_nll"][-1]),
                     _f(mm["ensemble_ece"][-1]), _pct(_mean(mm["member_acc"])),
                     _pct(mm["soup_acc"]), _f(mm["new_member_mean_barrier_test_loss"]),
                     _pct(mm["new_member_mean_barrier_test_error"]), _f(mp.get("test_loss")),
                     _pct(mp.get("test_error")), _f(mm["new_member_mean_dist_pretrained"], 2)])
    L += [_table(["method", f"ens. acc (K={K})", "ens. NLL", "ens. ECE", "mean member acc", "soup acc",
                  "barrier to ft (loss)", "barrier to ft (error)", "mean pairwise barrier (loss)",
                  "mean pairwise barrier (error)", "backbone dist. to checkpoint"], rows), "",
          "Barriers to the fine-tuned model and distances are means over each method's members other than "
          "the fine-tuned model itself; the soup is the uniform weight average of the members with BN recomputed.",
          ""]
    L += ["## Ensemble quality by size", "", "Test accuracy:", ""]
    L += [_table(["method"] + [str(k) for k in range(1, K + 1)],
                 [[mm["label"]] + [_pct(a) for a in mm["ensemble_acc"]] for mm in summary["methods"].values()]), ""]
    L += ["Test NLL:", ""]
    L += [_table(["method"] + [str(k) for k in range(1, K + 1)],
                 [[mm["label"]] + [_f(a) for a in mm["ensemble_nll"]] for mm in summary["methods"].values()]), ""]
    cyc = [mm for mm in summary["methods"].values() if mm["type"] in ("sse", "starsse")]
    if cyc:
        L += ["## Small against large cycle learning rate", ""]
        rows = []
        for mm in sorted(cyc, key=lambda q: (q["type"], q["cycle_lr"])):
            rows.append([TYPE_LABEL[mm["type"]], f"{mm['params']['lr_scale']:g}·η = {mm['cycle_lr']:.4g}",
                         str(mm["params"]["cycle_epochs"]), _pct(mm["new_member_mean_acc"]),
                         _f(mm["new_member_mean_barrier_test_loss"]), _pct(mm["new_member_mean_barrier_test_error"]),
                         _f(mm["new_member_mean_dist_pretrained"], 2), _pct(mm["ensemble_acc"][-1]),
                         _f(mm["ensemble_nll"][-1])])
        L += [_table(["method", "cycle lr", "cycle epochs", "member acc (cycles)", "barrier to ft (loss)",
                      "barrier to ft (error)", "backbone dist. to checkpoint", f"ens. acc (K={K})", "ens. NLL"], rows),
              ""]
    if summary.get("plane"):
        pl = summary["plane"]
        L += ["## The plane", "", f"Through {', '.join('`' + p + '`' for p in pl['through'])}; every member "
              "projected (coordinates in weight-space units, distance = how far the member is from the plane):", ""]
        L += [_table(["member", "method", "x", "y", "distance from plane"],
                     [[p["name"], str(p["method"]), _f(p["x"], 2), _f(p["y"], 2), _f(p["distance"], 2)]
                      for p in pl["projections"]]), ""]
    if figures:
        L += ["## Figures", ""]
        for title, path in figures.items():
            L += [f"![{title}](figures/{os.path.basename(path)})", ""]
    t = summary.get("timings", {})
    if t:
        L += ["## Run", "", f"Prepared in {t.get('prepare_s', 0):.1f} s, trained {len(t.get('trained_units', []))} "
              f"runs in {t.get('train_s', 0):.1f} s, analysis in {t.get('analysis_s', 0):.1f} s "
              "(a resumed study counts only what it did itself).", ""]
    return "\n".join(L)


def write_report(prep, results: dict[str, Any], out_dir: str) -> dict[str, Any]:
    summary = build_summary(prep, results)
    figdir = os.path.join(out_dir, "figures")
    figures = {}
    figures["ensemble accuracy and NLL by size"] = fig_ensembles(summary, os.path.join(figdir, "ensemble_by_size.png"))
    p = fig_barrier_vs_lr(summary, os.path.join(figdir, "barrier_vs_cycle_lr.png"))
    if p:
        figures["barrier and accuracy against cycle learning rate"] = p
    p = fig_plane(summary, results, os.path.join(figdir, "plane.png"))
    if p:
        figures["plane through the fine-tuned model and two members"] = p
    summary["figures"] = [os.path.relpath(v, out_dir) for v in figures.values()]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_markdown(summary, figures))
    return summary
