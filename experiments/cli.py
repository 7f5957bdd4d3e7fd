"""`landscape run CONFIG --out DIR` and `landscape demo [--quick] [--out DIR]`.

Registered through the `landscape.commands` entry-point group; each command's `func(args)`
returns (result, text) and raises LandscapeError for the user's mistakes (one line, exit 2).
"""
from __future__ import annotations

import argparse
from typing import Any

from landscape.cli import command
from landscape.core.errors import LandscapeError

from . import demo, demo_out, run_study
from .config import SHIPPED
from .markdown import fmt_num, fmt_pct, pm


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: the config's study.device)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set data.root=/data/cifar100; repeatable")
    p.add_argument("--no-cache", action="store_true",
                   help="do not reuse (or save) pre-trained checkpoints from the cache (~/.cache/landscape)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def headline(summary: dict[str, Any], out: str) -> str:
    """A few lines: transfer, each chosen method at size K (mean ± std over seeds), the verdicts,
    where the outputs are.

    Takes the summary as write_report returns it: None (not computed) prints as n/a, a computed
    non-finite value as nan or inf.
    """
    if not summary:  # a rank other than 0 of a distributed study: rank 0 reports
        return ""
    K = summary["study"]["members"]
    seeds = summary["study"]["seeds"]
    tr = summary["transfer"]
    lines = [f"study {summary['study']['name']!r} -> {out} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: "
             f"mean ± std)"]
    line = f"fine-tuned {pm(tr['finetuned_acc'], fmt_pct)}"
    if tr["scratch_acc"]["n"]:
        line += f", from scratch {pm(tr['scratch_acc'], fmt_pct)}"
    lines.append(line)
    lines.append(f"{'method (chosen cell)':<36} {'ens acc':>13} {'ens NLL':>13} {'member':>13} {'dist ft':>7} "
                 f"{'basin':>5}  (K={K})")
    chosen = {v["cell"] for v in summary["selected"].values()}
    for name, m in summary["methods"].items():
        if name not in chosen:
            continue
        s = m["stats"]
        dist = s.get("new_member_mean_dist_finetuned")
        lines.append(f"{m['label']:<36} {pm(s.get('acc'), fmt_pct):>13} {pm(s.get('nll')):>13} "
                     f"{pm(s.get('new_member_mean_acc') or s.get('member_mean_acc'), fmt_pct):>13} "
                     f"{fmt_num(dist['mean'] if dist else None, 1):>7} {str(m.get('basin') or 'n/a'):>5}")
    for f in summary["findings"]:
        lines.append(f"[{f['verdict']}] {f['claim']}")
    t = summary.get("timings") or {}
    if t:
        lines.append(f"time {t.get('total_s', 0):.1f} s (train {t.get('train_s', 0):.1f} s, analysis "
                     f"{t.get('analysis_s', 0):.1f} s); report: {out}/report.md")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> tuple[dict, str]:
    summary = run_study(args.config, args.out, device=args.device, quiet=args.quiet, overrides=args.overrides,
                        use_cache=not args.no_cache)
    return summary, headline(summary, args.out)


def cmd_demo(args: argparse.Namespace) -> tuple[dict, str]:
    out = args.out or demo_out(args.quick)
    summary = demo(args.quick, out, device=args.device, quiet=args.quiet, overrides=args.overrides,
                   use_cache=not args.no_cache)
    return summary, headline(summary, out)


def register(subparsers: Any) -> None:
    p = command(subparsers, "run", "run (or resume) a pre-train-basin study from a TOML config",
                "landscape run cifar100_resnet50 --set data.root=/data/cifar100 --out runs/c100",
                description="Run a study: pre-training, fine-tuning, the ensemble samplers, the landscape "
                "analysis and the report, all into DIR (resumable: rerun the same command after an "
                "interruption).")
    p.add_argument("config", help=f"a TOML file, or a shipped config: {', '.join(SHIPPED)}")
    p.add_argument("--out", required=True, help="output folder (the store DIR/results, DIR/report.md, DIR/summary.json, "
                   "DIR/figures)")
    _common(p)
    p.set_defaults(func=cmd_run)

    p = command(subparsers, "demo", "the embedded pre-train-basin study (no download; a few minutes on a CPU)",
                "landscape demo --out runs/demo",
                description="Run the embedded default study: a transfer problem generated from a seed, "
                "Local/Global DE, SSE and StarSSE at a small and a large cycle lr, FGE, SWA, soups, barriers "
                "and a plane, with a report.")
    p.add_argument("--quick", action="store_true", help="a smaller study (under a minute on a 2-core CPU)")
    p.add_argument("--out", default=None, help="output folder (default ./landscape-demo or ./landscape-demo-quick)")
    _common(p)
    p.set_defaults(func=cmd_demo)


__all__ = ["register", "LandscapeError"]
