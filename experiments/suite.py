"""Studies side by side: a suite config (`landscape run pretrain_kinds`) and `landscape compare`.

A suite config runs several studies into one folder and writes their findings side by side:

    [suite]
    name = "pretrain-kinds"
    [suite.studies.supervised]        # a label: the study's folder DIR/supervised
    config = "demo_byol"              # a shipped config or a TOML path (relative to this file)
    objective = "supervised"          # optional: pretrain.objective, the other objectives' keys dropped
    set = ["study.seeds=[0, 1]"]      # optional: overrides, as --set
    [suite.studies.byol]
    config = "demo_byol"

Each study is an ordinary study in DIR/LABEL (resumable, cached like any other); DIR/report.md and
DIR/summary.json put their transfer numbers (with the checkpoints' source accuracy: a linear
probe's for a self-supervised pre-training), chosen cells and verdicts in one table each.
`landscape compare RUN_DIR... --out DIR` writes the same report for finished studies.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Mapping, Sequence

from landscape.core.errors import LandscapeError

from .config import OBJECTIVES, SSL_KEYS, SSL_ONLY, apply_overrides, parse_config, read_config_file
from .files import write_json_atomically, write_text_atomically
from .markdown import OBJECTIVE_LABEL, fmt_pct, pm, source_accuracies, table

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
OWN_FILES = ("report.md", "summary.json")
MAX_STUDIES = 8


def is_suite(ref: str) -> bool:
    """Whether the config `ref` names is a suite (a [suite] table) rather than one study."""
    try:
        return "suite" in read_config_file(ref)[1]
    except LandscapeError:
        return False  # the study loader reports the problem with its own message


def with_objective(raw: dict[str, Any], objective: str) -> dict[str, Any]:
    """A study's raw config with pretrain.objective set, and the keys only other objectives take
    dropped (a supervised pre-training has none of SSL_KEYS), so one recipe serves both kinds."""
    if objective not in OBJECTIVES:
        raise LandscapeError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    pre = dict(raw.get("pretrain") or {})
    for k in list(pre):
        if k in SSL_KEYS and (objective == "supervised" or SSL_ONLY.get(k, objective) != objective):
            del pre[k]
    if objective == "supervised":
        pre.pop("objective", None)
    else:
        pre["objective"] = objective
    return {**raw, "pretrain": pre}


def suite_studies(ref: str, overrides: Sequence[str] = ()) -> tuple[str, list[tuple[str, Any]]]:
    """The suite's name and its (label, StudyConfig) pairs, validated (one-line errors)."""
    path, raw = read_config_file(ref)
    where = os.path.basename(path)
    if set(raw) != {"suite"}:
        raise LandscapeError(f"config {where}: a suite config holds only the [suite] table, "
                             f"not {', '.join(sorted(set(raw) - {'suite'}))}")
    s = raw["suite"]
    unknown = set(s) - {"name", "studies"}
    if unknown:
        raise LandscapeError(f"config {where}: unknown key suite.{sorted(unknown)[0]} (suite takes name and studies)")
    studies = s.get("studies")
    if not isinstance(studies, dict) or not 2 <= len(studies) <= MAX_STUDIES:
        raise LandscapeError(f"config {where}: suite.studies must be a table of 2 to {MAX_STUDIES} studies")
    out = []
    for label, entry in studies.items():
        w = f"config {where}: suite.studies.{label}"
        if not LABEL.match(label):
            raise LandscapeError(f"{w}: a label is 1-40 letters, digits, '_' or '-' (it names the study's folder)")
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
            raise LandscapeError(f"{w} needs config = \"NAME\" (a shipped config or a TOML path)")
        bad = set(entry) - {"config", "objective", "set"}
        if bad:
            raise LandscapeError(f"{w}: unknown key {sorted(bad)[0]} (config, objective, set)")
        sets = entry.get("set", [])
        if not isinstance(sets, list) or not all(isinstance(x, str) for x in sets):
            raise LandscapeError(f"{w}.set must be a list of \"SECTION.KEY=VALUE\" strings")
        sub = entry["config"]
        local = os.path.join(os.path.dirname(path), sub if sub.endswith(".toml") else sub + ".toml")
        sub_path, sub_raw = read_config_file(local if os.path.isfile(local) else sub)
        if "suite" in sub_raw:
            raise LandscapeError(f"{w}: {sub!r} is itself a suite")
        if "objective" in entry:
            sub_raw = with_objective(sub_raw, entry["objective"])
        source = os.path.basename(sub_path) + (f" (objective {entry['objective']})" if "objective" in entry else "")
        try:
            sub_raw = apply_overrides(sub_raw, [*sets, *overrides])
            cfg = parse_config(sub_raw, source)
        except LandscapeError as exc:
            raise LandscapeError(f"{w}: {exc}") from None
        out.append((label, cfg))
    return str(s.get("name") or os.path.basename(path).removesuffix(".toml")), out


def check_suite_output(out: str, labels: Sequence[str]) -> str:
    """DIR for a suite or comparison: new, empty, or one this command wrote (its own files only)."""
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise LandscapeError(f"output {out!r} exists and is not a folder")
    if os.path.isdir(out):
        foreign = sorted(set(os.listdir(out)) - set(labels) - set(OWN_FILES))
        if foreign:
            raise LandscapeError(f"output folder {out!r} holds {foreign[0]!r}, which a suite does not write; "
                                 "choose another --out")
        for label in labels:  # a study's folder: a real folder, never a link to somewhere else
            p = os.path.join(out, label)
            if os.path.lexists(p) and (os.path.islink(p) or not os.path.isdir(p)):
                raise LandscapeError(f"output {p!r} exists and is not a folder of its own; choose another --out")
        for name in OWN_FILES:
            p = os.path.join(out, name)
            if os.path.lexists(p) and (os.path.islink(p) or not os.path.isfile(p)):
                raise LandscapeError(f"output {p!r} exists and is not a regular file; choose another --out")
        summary = os.path.join(out, "summary.json")
        if os.path.isfile(summary):
            try:
                with open(summary) as f:
                    ours = "side_by_side" in json.load(f)
            except (OSError, ValueError):
                ours = False
            if not ours:
                raise LandscapeError(f"output folder {out!r} holds a summary.json that is not a comparison's; "
                                     "choose another --out")
    return out


def checked_suite(ref: str, out: str, overrides: Sequence[str] = ()) -> tuple[str, list[tuple[str, Any]], str]:
    """The suite's name, its studies and its output folder, every study's folder checked before
    the first study trains (one-line errors)."""
    from .study import check_output

    name, studies = suite_studies(ref, overrides)
    out = check_suite_output(out, [label for label, _ in studies])
    for label, cfg in studies:
        check_output(os.path.join(out, label), cfg)
    return name, studies, out


def run_suite(ref: str, out: str, overrides: Sequence[str] = (), **kwargs) -> dict[str, Any]:
    """Every study of the suite into out/LABEL, then the side-by-side report; its summary."""
    from .study import run_study

    name, studies, out = checked_suite(ref, out, overrides)
    runs = [(label, run_study(cfg, os.path.join(out, label), **kwargs)) for label, cfg in studies]
    if any(not s for _, s in runs):
        return {}  # a rank other than 0 under torchrun: rank 0 reports
    return write_side_by_side(name, runs, out)


def load_run(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "summary.json")
    try:
        with open(path) as f:
            s = json.load(f)
    except FileNotFoundError:
        raise LandscapeError(f"{run_dir!r} holds no finished study (no summary.json)") from None
    except (OSError, ValueError) as exc:
        raise LandscapeError(f"{path!r} cannot be read as a study summary: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if not isinstance(s, dict) or not {"study", "transfer", "findings"} <= set(s):
        raise LandscapeError(f"{path!r} is not a study's summary (no study, transfer and findings)")
    return s


def compare_runs(run_dirs: Sequence[str], out: str, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """`landscape compare`: finished studies' findings side by side into out/report.md and summary.json."""
    if len(run_dirs) < 2:
        raise LandscapeError("compare needs at least two study folders")
    labels = list(labels) if labels else [os.path.basename(os.path.abspath(d)) for d in run_dirs]
    if len(labels) != len(run_dirs) or len(set(labels)) != len(labels):
        raise LandscapeError(f"--labels must give {len(run_dirs)} distinct labels, one per folder")
    runs = [(label, load_run(d)) for label, d in zip(labels, run_dirs)]
    inside = [d for d in run_dirs if os.path.abspath(os.path.dirname(os.path.abspath(d))) == os.path.abspath(out)]
    out = check_suite_output(out, [os.path.basename(os.path.abspath(d)) for d in inside])
    return write_side_by_side("comparison", runs, out)


# ----------------------------------------------------------------------------------------------
# the report


def _source_acc(s: Mapping[str, Any]) -> float | None:
    accs = source_accuracies(s)
    return math.fsum(accs) / len(accs) if accs else None


def _objective(s: Mapping[str, Any]) -> str:
    obj = (s.get("study") or {}).get("pretrain_objective") or "supervised"
    return OBJECTIVE_LABEL.get(obj, obj)


def _effect(f: Mapping[str, Any]) -> str:
    """A finding's first comparison: its difference and interval, in points for accuracy."""
    cs = f.get("comparisons") or []
    if not cs or cs[0].get("diff") is None:
        return ""
    c = cs[0]
    scale, unit = (100.0, " pts") if c.get("measure") == "acc" else (1.0, "")
    nd = 1 if scale == 100.0 else 3

    def num(x: Any) -> str:
        return f"{scale * x:+.{nd}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"

    ci = f" [{num(c['lo'])}, {num(c['hi'])}]" if c.get("lo") is not None and c.get("hi") is not None else ""
    return f"{num(c['diff'])}{ci}{unit}"


def side_by_side(name: str, runs: Sequence[tuple[str, Mapping[str, Any]]]) -> tuple[dict[str, Any], str]:
    """The comparison's summary and report.md text."""
    labels = [label for label, _ in runs]
    rows = []
    for what, get in (
            ("pre-training", _objective),
            ("model", lambda s: str((s["study"].get("model") or {}).get("name", "n/a"))),
            ("seeds", lambda s: ", ".join(str(x) for x in s["study"].get("seeds", []))),
            ("K (members)", lambda s: str(s["study"].get("members", "n/a"))),
            ("checkpoints on the source task (linear probe if self-supervised)", lambda s: fmt_pct(_source_acc(s))),
            ("fine-tuned, target test accuracy", lambda s: pm(s["transfer"].get("finetuned_acc"), fmt_pct)),
            ("from scratch", lambda s: pm(s["transfer"].get("scratch_acc"), fmt_pct))):
        rows.append([what] + [get(s) for _, s in runs])
    methods: dict[str, list[str]] = {}
    for j, (_, s) in enumerate(runs):
        for key, sel in (s.get("selected") or {}).items():
            m = (s.get("methods") or {}).get(sel.get("cell"), {})
            cell = f"{m.get('label', sel.get('cell'))}: {pm((m.get('stats') or {}).get('acc'), fmt_pct)}"
            if m.get("basin"):
                cell += f" ({m['basin']})"
            methods.setdefault(key, [""] * len(runs))[j] = cell
    found: dict[str, dict[str, Any]] = {}
    for j, (_, s) in enumerate(runs):
        for f in s.get("findings") or []:
            e = found.setdefault(f["id"], {"claim": f.get("claim", f["id"]), "test": f.get("test", ""),
                                           "cells": [""] * len(runs), "verdicts": [None] * len(runs)})
            e["verdicts"][j] = f.get("verdict")
            effect = _effect(f)
            e["cells"][j] = f"**{f.get('verdict')}**" + (f" {effect}" if effect else "")
    agree = [fid for fid, e in found.items() if None not in e["verdicts"] and len(set(e["verdicts"])) == 1]
    both = [fid for fid, e in found.items() if None not in e["verdicts"]]
    lines = [f"# {name}: {len(runs)} studies side by side", "",
             "Each column is a whole study in its own folder (its report.md has the details); "
             "the numbers are means ± std over each study's seeds, the findings' differences their "
             "seed-paired mean with its interval (experiments/paired.py).", "",
             "## The studies", "", table(["", *labels], rows), "",
             "## The chosen cell of each method (ensemble test accuracy at size K, basin)", "",
             table(["method", *labels], [[k, *v] for k, v in methods.items()]), "",
             f"## Findings ({len(agree)} of {len(both)} with the same verdict in every study)", "",
             table(["finding", "test", *labels], [[e["claim"], e["test"], *e["cells"]] for e in found.values()]), ""]
    summary = {"side_by_side": {"name": name, "labels": labels},
               "studies": {label: {"study": s["study"], "transfer": s["transfer"], "source_acc": _source_acc(s),
                                   "selected": s.get("selected"),
                                   "findings": {f["id"]: f.get("verdict") for f in s.get("findings") or []}}
                           for label, s in runs},
               "same_verdict": agree, "in_every_study": both}
    return summary, "\n".join(lines)


def write_side_by_side(name: str, runs: Sequence[tuple[str, Mapping[str, Any]]], out: str) -> dict[str, Any]:
    summary, text = side_by_side(name, runs)
    os.makedirs(out, exist_ok=True)
    write_text_atomically(os.path.join(out, "report.md"), text)
    write_json_atomically(os.path.join(out, "summary.json"), summary)
    return summary
