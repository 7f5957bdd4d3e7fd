"""Studies side by side (experiments/suite.py): a suite config runs each study into its own folder
exactly as `landscape run` would, and its report and `landscape compare` carry each study's own
verdicts and numbers; `--procs 2` (local ranks) gives the one-process numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments.config import load_config
from experiments.suite import with_objective
from landscape.cli import main

# the tiny study without its costliest extras (plane, curves, sharpness, pairwise barriers): what is
# tested here is how studies are run and reported, not the analyses
TINY = ["--quiet", "--no-cache", "--set", "analysis.plane=false", "--set", "analysis.curves=false",
        "--set", "analysis.sharpness=false", "--set", "analysis.pairwise=false"]


def _without(x, key):
    """x with every `key` entry of its dicts taken out (the config's name is the one difference)."""
    if isinstance(x, dict):
        return {k: _without(v, key) for k, v in x.items() if k != key}
    return [_without(v, key) for v in x] if isinstance(x, list) else x


def _suite(tmp_path, body: str) -> str:
    p = tmp_path / "kinds.toml"
    p.write_text(body)
    return str(p)


SUITE = """
[suite]
name = "kinds"
[suite.studies.supervised]
config = "tiny"
[suite.studies.byol]
config = "tiny"
objective = "byol"
set = ["pretrain.epochs=3"]
"""


def test_with_objective_keeps_only_the_objectives_keys():
    raw = {"pretrain": {"objective": "byol", "ema": 0.99, "augment_noise": 0.3, "epochs": 4}, "model": {}}
    assert with_objective(raw, "supervised")["pretrain"] == {"epochs": 4}
    assert with_objective(raw, "simclr")["pretrain"] == {"objective": "simclr", "augment_noise": 0.3, "epochs": 4}
    assert raw["pretrain"]["ema"] == 0.99  # the caller's dict is not changed
    # the supervised version is the study without the objective: the same fingerprint
    byol = {"pretrain": {"objective": "byol", "ema": 0.9, "epochs": 2, "lr": 0.05, "batch_size": 64}}
    import tomllib

    from experiments.config import resolve_config_path
    with open(resolve_config_path("tiny"), "rb") as f:
        tiny = tomllib.load(f)
    tiny["pretrain"].update(byol["pretrain"])
    assert load_config(with_objective(tiny, "supervised")).fingerprint() == load_config("tiny").fingerprint()


def test_a_suite_runs_each_study_as_run_would_and_reports_them_side_by_side(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kinds"
    assert main(["run", _suite(tmp_path, SUITE), "--out", str(out), *TINY]) == 0
    text = capsys.readouterr().out
    # the byol column is the study `landscape run tiny --set ...` gives on its own
    alone = tmp_path / "alone"
    assert main(["run", "tiny", "--out", str(alone), *TINY, "--set", 'pretrain.objective="byol"',
                 "--set", "pretrain.epochs=3"]) == 0
    capsys.readouterr()
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out / "byol", alone))
    for s in (a, b):
        s.pop("timings")
        s.pop("figures")
    assert a["study"]["config"] == "tiny.toml (objective byol)" and b["study"]["config"] == "tiny.toml"
    assert _without(a, "config") == _without(b, "config")
    sup = json.loads((out / "supervised" / "summary.json").read_text())
    assert sup["study"]["pretrain_objective"] == "supervised" and a["study"]["pretrain_objective"] == "byol"
    both = json.loads((out / "summary.json").read_text())
    assert both["side_by_side"]["labels"] == ["supervised", "byol"]
    for label, s in (("supervised", sup), ("byol", a)):
        assert both["studies"][label]["findings"] == {f["id"]: f["verdict"] for f in s["findings"]}
    probe = [v for seed in a["seeds"].values() for v in seed["transfer"]["pretrained_source_acc"].values()]
    assert both["studies"]["byol"]["source_acc"] == pytest.approx(sum(probe) / len(probe))
    report = (out / "report.md").read_text()
    assert "| pre-training | supervised | BYOL |" in report
    for f in sup["findings"]:
        assert f["claim"] in report
    assert "supervised: fine-tuned" in text and "byol: fine-tuned" in text
    # rerun: nothing to train, the same comparison
    before = (out / "summary.json").read_text()
    assert main(["run", _suite(tmp_path, SUITE), "--out", str(out), *TINY]) == 0
    assert (out / "summary.json").read_text() == before
    capsys.readouterr()

    # landscape compare: the same table from the finished folders
    cmp_out = tmp_path / "cmp"
    assert main(["compare", str(out / "supervised"), str(out / "byol"), "--out", str(cmp_out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["studies"] == both["studies"] and got["same_verdict"] == both["same_verdict"]


@pytest.mark.parametrize("body, msg", [
    ("[suite]\nstudies = {}\n", "suite.studies must be a table of 2 to 8 studies"),
    ("[suite]\n[suite.studies.a]\nconfig='tiny'\n[suite.studies.b]\nconfig='tiny'\n[model]\n",
     "a suite config holds only the [suite] table"),
    ("[suite]\n[suite.studies.a]\nconfig='tiny'\n[suite.studies.b]\nconfig='nope'\n", "config 'nope' not found"),
    ("[suite]\n[suite.studies.a]\nconfig='tiny'\n[suite.studies.'b/c']\nconfig='tiny'\n", "a label is 1-40 letters"),
    ("[suite]\n[suite.studies.a]\nconfig='tiny'\n[suite.studies.b]\nconfig='tiny'\nobjective='moco'\n",
     "objective must be one of supervised, byol, simclr"),
    ("[suite]\n[suite.studies.a]\nconfig='tiny'\n[suite.studies.b]\nconfig='tiny'\nset=['model.width=-1']\n",
     "suite.studies.b: "),
])
def test_a_bad_suite_is_one_line(tmp_path, capsys, body, msg):
    out = tmp_path / "o"
    assert main(["run", _suite(tmp_path, body), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_suite_never_writes_over_what_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["run", _suite(tmp_path, SUITE), "--out", str(out), *TINY]) == 2
    assert "holds 'notes.txt'" in capsys.readouterr().err
    os.remove(out / "notes.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "byol")  # a label's folder that is a link: never written through
    assert main(["run", _suite(tmp_path, SUITE), "--out", str(out), *TINY]) == 2
    assert "is not a folder of its own" in capsys.readouterr().err
    assert os.listdir(elsewhere) == [] and sorted(os.listdir(out)) == ["byol"]
    os.remove(out / "byol")
    (out / "summary.json").write_text('{"mine": 1}')
    assert main(["run", _suite(tmp_path, SUITE), "--out", str(out), *TINY]) == 2
    assert "not a comparison's" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == '{"mine": 1}'
    assert main(["compare", str(out), "--out", str(tmp_path / "c")]) == 2
    assert "at least two study folders" in capsys.readouterr().err
    assert main(["compare", str(out), str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "is not a study's summary" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), str(out), "--out", str(tmp_path / "c")]) == 2
    assert "holds no finished study" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="Gloo ranks as local processes")
def test_procs_2_gives_the_one_process_study(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    assert main(["run", "tiny", "--out", str(tmp_path / "p1"), *TINY]) == 0  # one process, this one
    capsys.readouterr()
    r = subprocess.run([sys.executable, "-m", "landscape", "run", "tiny", "--out", str(tmp_path / "p2"), *TINY,
                        "--procs", "2"], env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("study 'tiny'") == 1  # rank 0 alone prints
    runs = {}
    for procs in ("1", "2"):
        s = json.loads((tmp_path / f"p{procs}" / "summary.json").read_text())
        runs[procs] = (s.pop("timings"), s)
    assert runs["2"][0]["ranks"] == 2 and runs["1"][0]["ranks"] == 1
    assert runs["1"][1] == runs["2"][1]
    for procs in ("0", "²", "two"):  # refused before any rank starts
        assert main(["run", "tiny", "--out", str(tmp_path / "x"), "--procs", procs]) == 2
        err = capsys.readouterr().err
        assert "--procs must be a positive integer or auto" in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()
