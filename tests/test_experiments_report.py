"""The study report from synthetic analysis results: the stages (summary, verdicts, figures,
markdown), missing and non-finite values, and atomic writes that never lose a previous file."""
from __future__ import annotations

import errno
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

from experiments.aggregate import aggregate
from experiments.cli import headline
from experiments.config import load_config
from experiments.files import write_json_atomically, write_text_atomically
from experiments.markdown import fmt_num, fmt_pct, fmt_points, render_markdown
from experiments.report import write_report
from experiments.samplers import plan_study
from experiments.summary import build_summary
from experiments.verdicts import VERDICTS
from landscape.core.errors import LandscapeError, LandscapeFault
from landscape.plots import plt
from landscape.store import atomic

METRICS = ("test_loss", "test_error", "train_loss", "train_error")


def _prep(overrides: list[str] = (), seeds: int = 3, val: bool = True):
    """A prepared tiny study (configs only: nothing trained) with `seeds` seeds."""
    over = list(overrides) + ([f"study.seeds=[{', '.join(str(s) for s in range(seeds))}]"] if seeds > 1 else [])
    cfg = load_config("tiny", over)
    plans = [plan_study(cfg, s) for s in cfg.seeds]
    return SimpleNamespace(cfg=cfg, plans=plans, plan=plans[0], target=SimpleNamespace(has_val=val))


def _results(prep, plan=None, seed: int = 0, pairwise: bool = True, scratch: bool = True, plane: bool = True) -> dict:
    """What experiments.seed_analysis.analyze_study returns for one seed, with made-up but plausible numbers."""
    plan = plan or prep.plan
    rng = np.random.default_rng(seed)
    cfg = prep.cfg
    out = {"seed": plan.seed, "methods": {}, "members": {},
           "finetuned": {"name": plan.finetuned, "test_acc": 0.8, "test_nll": 0.6, "ece": 0.05},
           "pretrained": {u.name: {"source_test_acc": float(rng.uniform(0.5, 0.9))}
                          for u in plan.units if u.kind == "pretrain"}}
    if scratch:
        out["scratch"] = {"name": plan.prefix + "scratch", "test_acc": 0.6, "test_nll": 1.1, "ece": 0.1}
    for m in cfg.methods:
        names = plan.members[m.name]
        K = len(names)
        acc = sorted(rng.uniform(0.7, 0.9, K).tolist())
        res = {"type": m.type, "group": m.group, "members": names, "params": m.params, "ensemble_acc": acc,
               "ensemble_nll": sorted(rng.uniform(0.4, 0.8, K).tolist(), reverse=True),
               "val_ensemble_acc": sorted(rng.uniform(0.7, 0.9, K).tolist()),
               "val_ensemble_nll": sorted(rng.uniform(0.4, 0.8, K).tolist(), reverse=True),
               "ensemble_ece": rng.uniform(0, 0.1, K).tolist(), "ensemble_brier": rng.uniform(0.2, 0.4, K).tolist(),
               "member_acc": rng.uniform(0.7, 0.85, K).tolist(), "member_nll": rng.uniform(0.5, 0.9, K).tolist(),
               "soup_acc": float(rng.uniform(0.7, 0.9)), "soup_nll": float(rng.uniform(0.4, 0.8)),
               "member_barrier_to_finetuned": {k: [0.0 if n == plan.finetuned else float(rng.uniform(0, 0.5))
                                                   for n in names] for k in METRICS},
               "member_dist_finetuned": [0.0 if n == plan.finetuned else float(rng.uniform(1, 5)) for n in names],
               "member_dist_pretrained": rng.uniform(1, 5, K).tolist()}
        if m.type in ("sse", "starsse") or m.params.get("schedule") == "cyclic":
            res["cycle_lr"] = cfg["finetune"]["lr"] * m.params["lr_scale"]
        if pairwise:
            res["pairwise_barrier"] = {k: rng.uniform(0, 1, (K, K)).tolist() for k in METRICS}
            res["mean_pairwise_barrier"] = {k: float(rng.uniform(0, 1)) for k in METRICS}
        out["methods"][m.name] = res
        for n in names:
            if n != plan.finetuned:
                a = np.linspace(0, 1, 3)
                out["members"][n] = {"line": {"alphas": a.tolist(),
                                              **{k: rng.uniform(0, 1, 3).tolist() for k in
                                                 ("train_loss", "test_loss", "train_acc", "test_acc")}}}
    if plane:
        members = list(dict.fromkeys(n for names in plan.members.values() for n in names))
        xs, ys = np.linspace(-1, 2, 3), np.linspace(-1, 2, 3)
        method_of = {}
        for m in cfg.methods:
            for n in plan.members[m.name]:
                method_of.setdefault(n, m.name)
        out["plane"] = {"through": [plan.finetuned, plan.members["local_de"][-1], plan.members["sse_large"][-1]],
                        "xcoordinates": xs.tolist(), "ycoordinates": ys.tolist(),
                        **{k: rng.uniform(0, 1, (3, 3)).tolist() for k in ("train_loss", "train_acc", "test_loss",
                                                                          "test_acc")},
                        "projections": [{"name": n, "method": method_of[n], "x": float(rng.uniform(-1, 2)),
                                         "y": float(rng.uniform(-1, 2)), "distance": float(rng.uniform(0, 1))}
                                        for n in members]}
    return out


TIMINGS = {"prepare_s": 0.1, "train_s": 1.0, "analysis_s": 2.0, "trained_units": ["ft-0-0"],
           "unit_seconds": {"ft-0-0": 1.0}}


def _per_seed(prep, first_seed: int = 0, **kw) -> list:
    return [(plan, _results(prep, plan, seed=first_seed + i, plane=(i == 0) and kw.get("plane", True),
                            **{k: v for k, v in kw.items() if k != "plane"}))
            for i, plan in enumerate(prep.plans)]


def _report(prep, out, first_seed: int = 0, **kw) -> dict:
    return write_report(prep, _per_seed(prep, first_seed, **kw), str(out), TIMINGS)


def _no_temp_files(folder) -> None:
    left = [f for f in os.listdir(folder) if f.endswith(".tmp")]
    assert left == [], left


# ---------------------------------------------------------------------------------------------
# the stages


def test_write_report_from_synthetic_results(tmp_path):
    prep = _prep()
    summary = _report(prep, tmp_path)
    assert {"study", "transfer", "methods", "basin", "selected", "equal_compute", "selection_split", "seeds",
            "plane", "findings", "timings", "figures"} <= set(summary)
    assert summary["study"]["seeds"] == [0, 1, 2] and sorted(summary["seeds"]) == ["0", "1", "2"]
    assert summary["figures"] and all(f.startswith("figures/") for f in summary["figures"])
    for rel in summary["figures"]:
        assert (tmp_path / rel).stat().st_size > 1000
    json.dumps(summary, allow_nan=False)  # already strict JSON
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Pre-train basin study: tiny")
    for f in summary["findings"]:
        assert f["verdict"] in VERDICTS and f["verdict"] != "undecided"
        assert f["text"] in report and f["claim"] in report and f["measure"] in report
    ids = {f["id"] for f in summary["findings"]}
    assert {"transfer", "global_vs_local", "gap", "semi_vs_local", "starsse_vs_sse", "soups"} <= ids
    _no_temp_files(tmp_path)
    _no_temp_files(tmp_path / "figures")
    assert plt.get_fignums() == []  # every figure closed


def test_summary_numbers_follow_the_results():
    """Per seed, the summary's numbers are the results'; over seeds, mean and sample std of them."""
    prep = _prep()
    per_seed = _per_seed(prep)
    seeds = [build_summary(prep, r, plan) for plan, r in per_seed]
    s = seeds[0]
    r = per_seed[0][1]["methods"]["local_de"]
    m = s["methods"]["local_de"]
    # members 1..K-1: the fine-tuned model (member 0) is left out of the "new member" means
    assert m["new_member_mean_acc"] == pytest.approx(np.mean(r["member_acc"][1:]))
    assert m["member_mean_acc"] == pytest.approx(np.mean(r["member_acc"]))
    assert m["new_member_mean_barrier_train_loss"] == pytest.approx(
        np.mean(r["member_barrier_to_finetuned"]["train_loss"][1:]))
    assert m["val_acc"] == r["val_ensemble_acc"][-1] and m["acc"] == r["ensemble_acc"][-1]
    assert s["methods"]["swa"]["new_member_mean_acc"] == pytest.approx(np.mean(
        per_seed[0][1]["methods"]["swa"]["member_acc"]))  # no SWA member is the fine-tuned model
    assert s["methods"]["local_de"]["cycle_lr"] is None
    assert s["methods"]["sse_large"]["cycle_lr"] == pytest.approx(0.02 * 8)
    assert s["transfer"]["margin"] == pytest.approx(0.2)
    assert s["methods"]["sse_small"]["label"] == "SSE (0.5·η, C=2 ep)"
    assert s["methods"]["swa"]["label"] == "SWA (K independent runs)"
    assert s["methods"]["fge"]["label"] == "FGE (Garipov)"
    # cost in epochs: E = 3, K = 3, C = 2
    E, K = 3, 3
    assert s["methods"]["local_de"]["cost_epochs"] == K * E and s["methods"]["sse_small"]["cost_epochs"] == E + 2 * 2
    agg = aggregate(seeds, has_val=True)
    acc = [x["methods"]["sse_large"]["acc"] for x in seeds]
    st = agg["methods"]["sse_large"]["stats"]["acc"]
    assert st["values"] == acc and st["mean"] == pytest.approx(np.mean(acc))
    assert st["std"] == pytest.approx(np.std(acc, ddof=1))
    by_size = agg["methods"]["sse_large"]["stats"]["ensemble_acc"]
    assert [b["mean"] for b in by_size] == pytest.approx(
        np.mean([r["methods"]["sse_large"]["ensemble_acc"] for _, r in per_seed], axis=0))


def test_missing_values_are_null_and_diverged_ones_nan(tmp_path):
    """No scratch run and no pairwise barriers: null / n/a. A diverged number: "nan", and the
    verdicts that compare it are undecided rather than wrong."""
    prep = _prep(["scratch.enabled=false", "analysis.pairwise=false"])
    per_seed = _per_seed(prep, pairwise=False, scratch=False)
    per_seed[1][1]["methods"]["global_de"]["ensemble_nll"][-1] = float("nan")
    per_seed[0][1]["methods"]["sse_large"]["member_barrier_to_finetuned"]["train_loss"] = [0.0, float("inf"), 0.3]
    summary = write_report(prep, per_seed, str(tmp_path), TIMINGS)

    on_disk = json.loads(json.dumps(summary, allow_nan=False))
    tr = on_disk["transfer"]
    assert tr["scratch_acc"]["mean"] is None and tr["scratch_acc"]["values"] == [None] * 3
    assert "pairwise_train_loss" not in on_disk["methods"]["local_de"]["stats"]
    assert on_disk["methods"]["global_de"]["stats"]["nll"]["mean"] == "nan"
    assert on_disk["methods"]["global_de"]["stats"]["nll"]["values"][1] == "nan"
    assert on_disk["methods"]["sse_large"]["stats"]["new_member_mean_barrier_train_loss"]["mean"] == "inf"

    verdict = {f["id"]: f["verdict"] for f in summary["findings"]}
    assert "transfer" not in verdict and "basins" not in verdict  # not computed: not claimed
    assert verdict["global_vs_local"] == "undecided"

    report = (tmp_path / "report.md").read_text()
    assert "undecided" in report and "nan" in report
    text = headline(summary, str(tmp_path))
    assert "nan" in text and "from scratch" not in text


def test_formatters():
    assert fmt_pct(0.1234) == "12.3%" and fmt_pct(None) == "n/a" and fmt_pct("nan") == "nan"
    assert fmt_pct(float("nan")) == "nan" and fmt_pct(float("inf")) == "inf" and fmt_pct(np.float32(0.5)) == "50.0%"
    assert fmt_num(1.23456) == "1.235" and fmt_num(1.23456, 2) == "1.23" and fmt_num(None) == "n/a"
    assert fmt_num("-inf") == "-inf" and fmt_num(float("-inf")) == "-inf"
    assert fmt_points(0.031) == "+3.1 points" and fmt_points(-0.5) == "-50.0 points" and fmt_points(None) == "n/a"
    assert render_markdown.__module__ == "experiments.markdown"


def test_headline_numbers_are_formatted_like_the_report(tmp_path):
    """The command's headline (experiments.cli) shows each chosen method's numbers over seeds as
    'mean ± std', formatted exactly as report.md shows them, and the verdicts the report states."""
    summary = _report(_prep(), tmp_path)
    text = headline(summary, str(tmp_path))
    report = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    assert lines[0] == f"study 'tiny' -> {tmp_path} (3 seeds: mean ± std)"

    def pct(s):
        return f"{100 * s['mean']:.1f}% ± {100 * s['std']:.1f}"

    tr = summary["transfer"]
    assert lines[1] == f"fine-tuned {pct(tr['finetuned_acc'])}, from scratch {pct(tr['scratch_acc'])}"
    chosen = {v["cell"] for v in summary["selected"].values()}
    assert chosen
    for name in chosen:
        m = summary["methods"][name]
        acc, nll = pct(m["stats"]["acc"]), f"{m['stats']['nll']['mean']:.3f} ± {m['stats']['nll']['std']:.3f}"
        row = next(line for line in lines if line.startswith(m["label"] + " "))
        assert row.split()[len(m["label"].split()):][:6] == [*acc.split(), *nll.split()], row
        assert acc in report and nll in report
    for f in summary["findings"]:
        assert f"[{f['verdict']}] {f['claim']}" in lines and f["claim"] in report
    assert lines[-1].endswith(f"report: {tmp_path}/report.md")


# ---------------------------------------------------------------------------------------------
# atomic writes


class _FailingFile:
    """A file that takes the first half of what is written, then reports a full disk."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        data = bytes(data)
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Writes through experiments.files fail half-way with ENOSPC."""
    monkeypatch.setattr(atomic, "open", lambda *a, **k: _FailingFile(open(*a, **k)), raising=False)


def test_json_written_atomically(tmp_path):
    path = tmp_path / "summary.json"
    assert write_json_atomically(str(path), {"a": float("nan"), "b": None, "c": np.float32(0.5),
                                             "d": [np.int64(3)]}) == str(path)
    assert json.loads(path.read_text()) == {"a": "nan", "b": None, "c": 0.5, "d": [3]}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it
    write_json_atomically(str(path), {"a": 2})  # replaces
    assert json.loads(path.read_text()) == {"a": 2}
    _no_temp_files(tmp_path)


def test_a_full_disk_keeps_the_previous_json(tmp_path, full_disk):
    path = tmp_path / "summary.json"
    path.write_text('{"old": true}')
    with pytest.raises(LandscapeFault) as exc:
        write_json_atomically(str(path), {"new": list(range(1000))})
    assert str(exc.value) == f"cannot write {path}: No space left on device"
    assert exc.value.exit_code == 1 and isinstance(exc.value, LandscapeError)
    assert path.read_text() == '{"old": true}'
    _no_temp_files(tmp_path)


def test_a_failed_flush_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    path.write_text("old report")

    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(LandscapeFault, match=r"^cannot write .*report\.md: Input/output error$"):
        write_text_atomically(str(path), "new report")
    assert path.read_text() == "old report"
    _no_temp_files(tmp_path)


def test_an_unwritable_place_is_a_fault(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LandscapeFault, match=r"^cannot write .*afile/report\.md: "):
        write_text_atomically(str(tmp_path / "afile" / "report.md"), "text")


def test_a_full_disk_during_the_report_keeps_the_previous_report(tmp_path, monkeypatch):
    prep = _prep()
    _report(prep, tmp_path, 0)
    before = {p: p.read_bytes() for p in [tmp_path / "report.md", *(tmp_path / "figures").iterdir()]}

    real_open = open

    def fail_on_report(file, *a, **k):  # figures go through; report.md hits a full disk half-way
        f = real_open(file, *a, **k)
        return _FailingFile(f) if os.path.basename(file).startswith(".report.md.") else f

    monkeypatch.setattr(atomic, "open", fail_on_report, raising=False)
    with pytest.raises(LandscapeFault, match=r"cannot write .*report\.md: No space left on device"):
        _report(prep, tmp_path, 10)
    assert (tmp_path / "report.md").read_bytes() == before[tmp_path / "report.md"]
    _no_temp_files(tmp_path)
    _no_temp_files(tmp_path / "figures")
    assert plt.get_fignums() == []
    # the figures of the failed run were each replaced whole: all are complete PNGs
    for p in (tmp_path / "figures").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failing_figure_stops_the_report_before_report_md(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, fh, **kw):  # half a file, then the disk is full
        fh.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    (tmp_path / "report.md").write_text("old report")
    prep = _prep()
    with pytest.raises(LandscapeFault, match=r"cannot write .*ensemble_by_size\.png: No space left on device"):
        _report(prep, tmp_path)
    assert (tmp_path / "report.md").read_text() == "old report"
    assert plt.get_fignums() == []
    _no_temp_files(tmp_path / "figures")


def test_cli_exit_status_1_when_the_report_cannot_be_written(tmp_path, monkeypatch, capsys):
    """A full disk while writing report.md: one line naming the file, exit status 1; the rerun
    (nothing left to train) writes the report."""
    from landscape.cli import main

    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    real_open = open

    def full_for_report(file, *a, **k):
        f = real_open(file, *a, **k)
        return _FailingFile(f) if os.path.basename(file).startswith(".report.md.") else f

    out = tmp_path / "o"
    monkeypatch.setattr(atomic, "open", full_for_report, raising=False)
    rc = main(["run", "tiny", "--out", str(out), "--quiet", "--no-cache"])
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert err == f"landscape: error: cannot write {out / 'report.md'}: No space left on device"
    assert not (out / "report.md").exists() and not (out / "summary.json").exists()
    _no_temp_files(out)
    monkeypatch.undo()
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    assert main(["run", "tiny", "--out", str(out), "--quiet", "--no-cache"]) == 0
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
