"""report.md from a study summary, and the number formats the report, verdicts and CLI share.

The formatters take a summary's values in either form: as computed (floats, nan included) or as
encoded in summary.json (a non-finite number as the string "nan", "inf" or "-inf"). None means
"not computed / not available" and prints as "n/a"; a computed non-finite number prints as
"nan" / "inf", so a diverged value is never mistaken for a missing one.
"""
from __future__ import annotations

import math
import os
from typing import Any

TYPE_LABEL = {"local_de": "Local DE", "global_de": "Global DE", "sse": "SSE", "starsse": "StarSSE",
              "fge": "FGE", "swa": "SWA"}


def _special(x: Any) -> str | None:
    """The text for a value that is not an ordinary number, else None."""
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x  # "nan", "inf", "-inf" as summary.json encodes them
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return None


def fmt_pct(x: float | str | None) -> str:
    """A fraction as a percentage with one decimal: 0.1234 -> '12.3%'."""
    return _special(x) or f"{100 * x:.1f}%"


def fmt_num(x: float | str | None, nd: int = 3) -> str:
    """A number with `nd` decimals."""
    return _special(x) or f"{x:.{nd}f}"


def fmt_points(x: float | str | None) -> str:
    """A difference of fractions in signed percentage points: 0.031 -> '+3.1 points'."""
    return _special(x) or f"{100 * x:+.1f} points"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(summary: dict[str, Any], figures: dict[str, str]) -> str:
    """report.md: the findings with their verdicts, then the tables behind them and the figures
    (`figures`: title -> path; linked as figures/NAME)."""
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
          "test-set fractions shown in %; n/a marks a value not computed in this run.", ""]
    L += ["## Findings", ""]
    verdicts = [f["verdict"] for f in summary["findings"]]
    if verdicts:
        undecided = verdicts.count("undecided")
        L += [f"Of the paper's {len(verdicts)} claims checked here, {verdicts.count('holds')} hold at this scale, "
              f"{verdicts.count('mixed')} are mixed (accuracy and NLL disagree) and {verdicts.count('does not hold')} "
              "do not hold" + (f"; {undecided} could not be decided (a number they compare is not finite)"
                               if undecided else "") +
              ". Each verdict below comes from this run's numbers and the threshold in its claim.", ""]
    for f in summary["findings"]:
        L.append(f"- {f['claim']} — **{f['verdict']}** at this scale: {f['text']}")
    L.append("")
    L += ["## Transfer", "",
          table(["model", "test accuracy", "test NLL"],
                [["fine-tuned from checkpoint 0 (`" + st["finetuned_model"] + "`)", fmt_pct(tr["finetuned_acc"]),
                  fmt_num(tr["finetuned_nll"])]]
                + ([["trained from scratch on the target", fmt_pct(tr["scratch_acc"]), fmt_num(tr["scratch_nll"])]]
                   if tr["scratch_acc"] is not None else [])), ""]
    if tr["pretrained_source_acc"]:
        accs = ", ".join(fmt_pct(v) for v in tr["pretrained_source_acc"].values())
        L += [f"Pre-trained checkpoints' accuracy on the source task: {accs}.", ""]
    L += ["## Methods at ensemble size K", ""]
    rows = []
    for mm in summary["methods"].values():
        mp = mm.get("mean_pairwise_barrier") or {}
        rows.append([mm["label"], fmt_pct(mm["ensemble_acc"][-1]), fmt_num(mm["ensemble_nll"][-1]),
                     fmt_num(mm["ensemble_ece"][-1]), fmt_pct(mm["member_mean_acc"]),
                     fmt_pct(mm["soup_acc"]), fmt_num(mm["new_member_mean_barrier_test_loss"]),
                     fmt_pct(mm["new_member_mean_barrier_test_error"]), fmt_num(mp.get("test_loss")),
                     fmt_pct(mp.get("test_error")), fmt_num(mm["new_member_mean_dist_pretrained"], 2)])
    L += [table(["method", f"ens. acc (K={K})", "ens. NLL", "ens. ECE", "mean member acc", "soup acc",
                 "barrier to ft (loss)", "barrier to ft (error)", "mean pairwise barrier (loss)",
                 "mean pairwise barrier (error)", "backbone dist. to checkpoint"], rows), "",
          "Barriers to the fine-tuned model and distances are means over each method's members other than "
          "the fine-tuned model itself; the soup is the uniform weight average of the members with BN recomputed.",
          ""]
    sizes = [str(k) for k in range(1, K + 1)]
    L += ["## Ensemble quality by size", "", "Test accuracy:", ""]
    L += [table(["method"] + sizes,
                [[mm["label"]] + [fmt_pct(a) for a in mm["ensemble_acc"]] for mm in summary["methods"].values()]), ""]
    L += ["Test NLL:", ""]
    L += [table(["method"] + sizes,
                [[mm["label"]] + [fmt_num(a) for a in mm["ensemble_nll"]] for mm in summary["methods"].values()]), ""]
    cyc = [mm for mm in summary["methods"].values() if mm["type"] in ("sse", "starsse")]
    if cyc:
        L += ["## Small against large cycle learning rate", ""]
        rows = []
        for mm in sorted(cyc, key=lambda q: (q["type"], q["cycle_lr"])):
            rows.append([TYPE_LABEL[mm["type"]], f"{mm['params']['lr_scale']:g}·η = {mm['cycle_lr']:.4g}",
                         str(mm["params"]["cycle_epochs"]), fmt_pct(mm["new_member_mean_acc"]),
                         fmt_num(mm["new_member_mean_barrier_test_loss"]),
                         fmt_pct(mm["new_member_mean_barrier_test_error"]),
                         fmt_num(mm["new_member_mean_dist_pretrained"], 2), fmt_pct(mm["ensemble_acc"][-1]),
                         fmt_num(mm["ensemble_nll"][-1])])
        L += [table(["method", "cycle lr", "cycle epochs", "member acc (cycles)", "barrier to ft (loss)",
                     "barrier to ft (error)", "backbone dist. to checkpoint", f"ens. acc (K={K})", "ens. NLL"], rows),
              ""]
    if summary.get("plane"):
        pl = summary["plane"]
        L += ["## The plane", "", f"Through {', '.join('`' + p + '`' for p in pl['through'])}; every member "
              "projected (coordinates in weight-space units, distance = how far the member is from the plane):", ""]
        L += [table(["member", "method", "x", "y", "distance from plane"],
                    [[p["name"], str(p["method"]), fmt_num(p["x"], 2), fmt_num(p["y"], 2), fmt_num(p["distance"], 2)]
                     for p in pl["projections"]]), ""]
    sharp = [(n, mm) for n, mm in summary["methods"].items() if mm.get("top_eigenvalue")]
    if sharp:
        L += ["## Sharpness", "", "Top Hessian eigenvalue and Hessian trace (Hutchinson) of the training loss at "
              "each method's first members other than the fine-tuned model, BN statistics recomputed at the point "
              "(`landscape hessian`):", ""]
        L += [table(["method", "members", "top eigenvalue", "trace"],
                    [[mm["label"], ", ".join(mm["sharpness_members"]),
                      " / ".join(fmt_num(v, 3) for v in mm["top_eigenvalue"]),
                      " / ".join(fmt_num(v, 1) for v in mm["hessian_trace"])] for _, mm in sharp]), ""]
    if summary.get("curves"):
        L += ["## Curved paths", "", "A quadratic Bezier curve trained between two snapshots (Garipov et al., "
              "`landscape connect`) against the straight line, BN recomputed along both:", ""]
        L += [table(["pair", "line barrier (test loss)", "curve barrier (test loss)", "line barrier (train loss)",
                     "curve barrier (train loss)"],
                    [[f"{c['label']}: `{c['a']}` – `{c['b']}`", fmt_num(c["line_barrier"].get("test_loss")),
                      fmt_num(c["curve_barrier"].get("test_loss")), fmt_num(c["line_barrier"].get("train_loss")),
                      fmt_num(c["curve_barrier"].get("train_loss"))] for c in summary["curves"]]), ""]
    if figures:
        L += ["## Figures", ""]
        for title, path in figures.items():
            L += [f"![{title}](figures/{os.path.basename(path)})", ""]
    t = summary.get("timings") or {}
    if t:
        L += ["## Run", "", f"Prepared in {t.get('prepare_s', 0):.1f} s, trained {len(t.get('trained_units', []))} "
              f"runs in {t.get('train_s', 0):.1f} s, analysis in {t.get('analysis_s', 0):.1f} s "
              "(a resumed study counts only what it did itself).", ""]
    return "\n".join(L)
