"""`landscape run CONFIG --out DIR` and `landscape demo [--quick] [--out DIR]`.

Registered through the `landscape.commands` entry-point group; each command's `func(args)`
returns (result, text) and raises LandscapeError for the user's mistakes (one line, exit 2).
"""
from __future__ import annotations

import argparse
import re
from typing import Any

from landscape.cli import command
from landscape.core import local_ranks
from landscape.core.errors import LandscapeError

from . import demo, demo_out, run_study, suite
from .config import SHIPPED, load_config
from .markdown import fmt_num, fmt_pct, pm
from .study import check_output


def _common(p: argparse.ArgumentParser, procs: str) -> None:
    p.add_argument("--procs", default=procs, metavar="N",
                   help="ranks on this machine (as torchrun starts them; the numbers stay those of one process): "
                   f"an integer, or auto = the CPU's cores up to 2, 1 with a GPU (default: {procs})")
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


def _ranks(args: argparse.Namespace) -> int:
    """How many local ranks to start for this command (1: run it in this process)."""
    if args.procs != local_ranks.AUTO and not (re.fullmatch(r"[0-9]{1,4}", str(args.procs)) and int(args.procs) >= 1):
        raise LandscapeError(f"--procs must be a positive integer or auto, got {args.procs!r}")
    return local_ranks.resolve(args.procs, args.device)


def _as_ranks(n: int, args: argparse.Namespace, command: list[str], config: str, out: str) -> tuple[int, None]:
    """The same command as n local ranks (each with --procs 1); rank 0 prints; their exit status.
    The config and the output folder are checked here first: a mistake is one line, from one process."""
    if suite.is_suite(config):
        suite.checked_suite(config, out, args.overrides)
    else:
        check_output(out, load_config(config, args.overrides))
    argv = [*command, "--procs", "1"] + (["--device", args.device] if args.device else [])
    argv += [a for o in args.overrides for a in ("--set", o)]
    argv += [flag for flag, on in (("--no-cache", args.no_cache), ("--quiet", args.quiet), ("--json", args.json))
             if on]
    return local_ranks.run(n, argv), None


def cmd_run(args: argparse.Namespace) -> tuple[dict, str]:
    n = _ranks(args)
    if n > 1:
        return _as_ranks(n, args, ["run", args.config, "--out", args.out], args.config, args.out)
    kw = dict(device=args.device, quiet=args.quiet, use_cache=not args.no_cache)
    if suite.is_suite(args.config):
        summary = suite.run_suite(args.config, args.out, overrides=args.overrides, **kw)
        return summary, suite_headline(summary, args.out)
    summary = run_study(args.config, args.out, overrides=args.overrides, **kw)
    return summary, headline(summary, args.out)


def suite_headline(summary: dict[str, Any], out: str) -> str:
    """A suite's or comparison's lines: each study's transfer, then each finding's verdicts."""
    if not summary:
        return ""
    labels = summary["side_by_side"]["labels"]
    lines = [f"{len(labels)} studies side by side -> {out}/report.md"]
    for label in labels:
        st = summary["studies"][label]
        tr = st["transfer"]
        src = f", checkpoints on the source task {fmt_pct(st['source_acc'])}" if st.get("source_acc") is not None else ""
        lines.append(f"{label}: fine-tuned {pm(tr['finetuned_acc'], fmt_pct)}, from scratch "
                     f"{pm(tr['scratch_acc'], fmt_pct)}{src}")
    verdicts = {}
    for label in labels:
        for fid, v in summary["studies"][label]["findings"].items():
            verdicts.setdefault(fid, {})[label] = v
    for fid, vs in verdicts.items():
        lines.append(f"{fid}: " + ", ".join(f"{label} {vs.get(label, '-')}" for label in labels))
    lines.append(f"same verdict in every study: {len(summary['same_verdict'])} of {len(summary['in_every_study'])}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> tuple[dict, str]:
    labels = args.labels.split(",") if args.labels else None
    summary = suite.compare_runs(args.runs, args.out, labels)
    return summary, suite_headline(summary, args.out)


def cmd_demo(args: argparse.Namespace) -> tuple[dict, str]:
    out = args.out or demo_out(args.quick)
    n = _ranks(args)
    if n > 1:
        return _as_ranks(n, args, ["demo", "--out", out] + (["--quick"] if args.quick else []),
                         "demo_quick" if args.quick else "demo", out)
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
    _common(p, "1")
    p.set_defaults(func=cmd_run)

    p = command(subparsers, "demo", "the embedded pre-train-basin study (no download; a few minutes on a CPU)",
                "landscape demo --out runs/demo",
                description="Run the embedded default study: a transfer problem generated from a seed, "
                "Local/Global DE, SSE and StarSSE at a small and a large cycle lr, FGE, SWA, soups, barriers "
                "and a plane, with a report.")
    p.add_argument("--quick", action="store_true", help="a smaller study (under a minute on a 2-core CPU)")
    p.add_argument("--out", default=None, help="output folder (default ./landscape-demo or ./landscape-demo-quick)")
    _common(p, local_ranks.AUTO)
    p.set_defaults(func=cmd_demo)

    p = command(subparsers, "compare", "finished studies' findings side by side in one report",
                "landscape compare runs/supervised runs/byol --out runs/kinds",
                description="Write DIR/report.md and DIR/summary.json: the transfer numbers, chosen cells and "
                "verdicts of two or more finished studies (folders of `landscape run`) in one table each.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="study output folders (each with summary.json)")
    p.add_argument("--out", required=True, help="output folder for report.md and summary.json")
    p.add_argument("--labels", default=None, help="comma-separated column labels (default: the folders' names)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_compare)


__all__ = ["register", "LandscapeError"]
