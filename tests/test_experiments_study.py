"""The tiny study end to end through the CLI, and resume after an interruption."""
from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from experiments.config import load_config
from experiments.samplers import plan_study
from experiments.study import RESULTS, run_study
from experiments.training import Hooks
from landscape.cli import main
from landscape.store.store import Store


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """Pre-trained checkpoints are cached per user: the tests use a cache of their own."""
    old = os.environ.get("LANDSCAPE_CACHE")
    os.environ["LANDSCAPE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LANDSCAPE_CACHE", None)
    else:
        os.environ["LANDSCAPE_CACHE"] = old


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """`landscape run tiny --out DIR --quiet --json`, uninterrupted: (exit code, stdout, stderr, DIR)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("e2e") / "study"
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        rc = main(["run", "tiny", "--out", str(out), "--quiet", "--json", "--no-cache"])
    return rc, buf.getvalue(), err.getvalue(), out


def _numbers(summary: dict) -> dict:
    """Everything in a summary but the timings."""
    return {k: v for k, v in summary.items() if k != "timings"}


def test_end_to_end_outputs(e2e):
    rc, stdout, stderr, out = e2e
    assert rc == 0, stderr
    summary = json.loads(stdout)
    cfg = load_config("tiny")
    K = cfg.members
    assert (out / RESULTS / "store.json").is_file()
    for name in ("report.md", "summary.json"):
        assert (out / name).is_file()
    assert summary["figures"] and all((out / f).stat().st_size > 1000 for f in summary["figures"])
    assert json.loads((out / "summary.json").read_text())["methods"].keys() == summary["methods"].keys()
    assert set(summary["methods"]) == {m.name for m in cfg.methods}
    assert summary["study"]["seeds"] == [0] and list(summary["seeds"]) == ["0"]
    per_seed = summary["seeds"]["0"]["methods"]
    for name, m in per_seed.items():
        assert len(m["ensemble_acc"]) == len(m["ensemble_nll"]) == len(m["member_acc"]) == K
        assert all(0 <= a <= 1 for a in m["ensemble_acc"] + m["member_acc"])
        assert len(m["barrier_to_finetuned"]["train_loss"]) == K
        assert m["mean_pairwise_barrier"]["train_loss"] >= 0
        assert 0 <= m["soup_acc"] <= 1 and 0 <= m["val_acc"] <= 1
        st = summary["methods"][name]["stats"]
        assert st["acc"]["values"] == [m["ensemble_acc"][-1]] and st["acc"]["std"] is None  # one seed
    # the ensemble of size 1 is the first member; members' own accuracy agrees with the stored predictions
    with Store(str(out / RESULTS), "r") as st:
        y = st.read("labels", "test")["labels"]
        yv = st.read("labels", "val")["labels"]
        for name, m in per_seed.items():
            pred = st.read("predictions", m["members"][0])
            assert m["ensemble_acc"][0] == pytest.approx(float((pred["logits"].argmax(1) == y).mean()))
            assert m["val_ensemble_acc"][0] == pytest.approx(float((pred["val_logits"].argmax(1) == yv).mean()))
        assert st.attrs["study_fingerprint"] == cfg.fingerprint()
        assert st.read("surfaces", "plane")["done"].all()
        assert set(st.names("ensembles")) == set(summary["methods"])
    assert per_seed["local_de"]["barrier_to_finetuned"]["test_loss"][0] == 0.0
    # diversity at size K against fp64 numpy on the stored predictions: mean pairwise disagreement
    # of the argmax predictions, mean KL(p_i || p̄) of the members from the ensemble
    with Store(str(out / RESULTS), "r") as st:
        for name in ("local_de", "starsse_large"):
            m = per_seed[name]
            logits = np.stack([st.read("predictions", n)["logits"] for n in m["members"]]).astype(np.float64)
            logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - logits.max(-1, keepdims=True)
            p, pred = np.exp(logp), logits.argmax(-1)
            pairs = [(i, j) for i in range(K) for j in range(i + 1, K)]
            assert m["disagreement"] == pytest.approx(np.mean([(pred[i] != pred[j]).mean() for i, j in pairs]))
            pbar = p.mean(0)
            assert m["kl"] == pytest.approx((p * (logp - np.log(pbar))).sum(-1).mean(), rel=1e-4, abs=1e-6)
            # the greedy soup starts from the member with the best validation accuracy
            val_acc = [float((st.read("predictions", n)["val_logits"].argmax(1) == yv).mean()) for n in m["members"]]
            assert m["greedy_soup_members"][0] == m["members"][int(np.argmax(val_acc))]
            assert set(m["greedy_soup_members"]) <= set(m["members"]) and 0 <= m["greedy_soup_acc"] <= 1
    # curvature and curved paths (issue 13): sharpness for every method; between two Global DE
    # members of the embedded task the trained curve lowers the straight line's barrier
    assert all(m["mean_top_eigenvalue"] > 0 and m["mean_hessian_trace"] > 0 for m in per_seed.values())
    gde = next(c for c in summary["curves"] if c["label"].startswith("global_de"))
    assert gde["line_barrier"]["train_loss"] > 0.02
    assert gde["curve_barrier"]["train_loss"] < gde["line_barrier"]["train_loss"]
    assert summary["transfer"]["scratch_acc"]["n"] == 1
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "%" in report
    for f in summary["findings"]:
        assert f["verdict"] in ("holds", "does not hold", "mixed", "inconclusive")
        assert f["text"] in report
    assert any(f["id"] == "basins" for f in summary["findings"])
    assert len(summary["plane"]["projections"]) == len({n for m in per_seed.values() for n in m["members"]})


def test_a_seed_trains_the_same_beside_other_seeds(e2e, tmp_path):
    """Seeds [0, 1]: every unit is named sSEED-..., and seed 0's replicate is bit for bit the
    one-seed study's (unit seeds come from the study seed and the unprefixed name)."""
    _, _, _, single = e2e
    cfg = load_config("tiny", ["study.seeds=[0, 1]"])
    out = tmp_path / "two"
    run_study(cfg, str(out), quiet=True, use_cache=False, analyze=False)
    plan0, plan1 = plan_study(cfg, 0), plan_study(cfg, 1)
    assert all(u.name.startswith("s0-") for u in plan0.units) and all(u.name.startswith("s1-") for u in plan1.units)
    with Store(str(out / RESULTS), "r") as two, Store(str(single / RESULTS), "r") as one:
        units = [u.name for u in plan_study(load_config("tiny")).units]
        assert sorted(two.names("snapshots")) == sorted(f"s{k}-{n}" for k in (0, 1) for n in units)
        for name in units:
            a, b = one.read_snapshot(name), two.read_snapshot("s0-" + name)
            assert np.array_equal(a.params.numpy(), b.params.numpy()), name
            if not name.startswith("pretrain"):
                assert np.array_equal(one.read("predictions", name)["logits"],
                                      two.read("predictions", "s0-" + name)["logits"])
        # the other seed is another replicate
        assert not np.array_equal(two.read_snapshot("s1-ft-0-0").params.numpy(),
                                  two.read_snapshot("s0-ft-0-0").params.numpy())


def test_rerun_of_a_finished_study_trains_nothing(e2e):
    rc, stdout, _, out = e2e
    started = []
    summary = run_study("tiny", str(out), quiet=True, hooks=Hooks(unit_start=lambda u, *a: started.append(u.name)),
                        use_cache=False)
    assert started == [] and summary["timings"]["trained_units"] == []
    assert _numbers(summary) == _numbers(json.loads(stdout))


def test_resume_after_interruption_redoes_no_finished_member(e2e, tmp_path):
    rc, stdout, _, _ = e2e
    out = tmp_path / "interrupted"
    plan = plan_study(load_config("tiny"))
    all_units = [u.name for u in plan.units]
    done_first: list[str] = []

    class Interrupt(Exception):
        pass

    def stop_after(n):
        def hook(name):
            done_first.append(name)
            if len(done_first) == n:
                raise Interrupt
        return hook

    n = 9  # in the middle of the fine-tunings: pre-training, scratch, and some members finished
    with pytest.raises(Interrupt):
        run_study("tiny", str(out), quiet=True, hooks=Hooks(unit_done=stop_after(n)), use_cache=False)
    assert len(done_first) == n
    assert not (out / "summary.json").exists()

    started, finished = [], []
    summary = run_study("tiny", str(out), quiet=True, use_cache=False,
                        hooks=Hooks(unit_start=lambda u, *a: started.append(u.name), unit_done=finished.append))
    assert not set(started) & set(done_first), "a finished unit was trained again"
    assert sorted(finished) == sorted(set(all_units) - set(done_first))
    assert sorted(done_first + finished) == sorted(all_units)
    # ...and the study ends with the numbers of an uninterrupted run
    assert _numbers(summary) == _numbers(json.loads(stdout))


def test_interrupted_analysis_resumes(e2e, tmp_path):
    """A kill during the analysis: rerunning fills the missing grid points only, same numbers."""
    rc, stdout, _, src = e2e
    out = tmp_path / "analysis"
    out.mkdir()
    shutil.copytree(src / RESULTS, out / RESULTS)
    # forget half of one barrier grid (now an unfinished grid) and the whole plane, as if killed mid-analysis
    finished, partial = out / RESULTS / "barriers" / "local_de.h5", out / RESULTS / "barriers" / ".partial-local_de.h5"
    finished.rename(partial)
    with h5py.File(partial, "a") as f:
        d = f["done"][()]
        d.reshape(-1)[::2] = False
        f["done"][...] = d
    (out / RESULTS / "surfaces" / "plane.h5").unlink()
    summary = run_study("tiny", str(out), quiet=True, use_cache=False)
    assert summary["timings"]["trained_units"] == []
    assert _numbers(summary) == _numbers(json.loads(stdout))


def test_rerun_of_a_finished_study_on_a_full_disk_changes_nothing(e2e):
    """Nothing to do: no byte is written (RLIMIT_FSIZE=1 makes any write fail), exit 0."""
    import hashlib
    import resource
    import subprocess
    import sys

    _, _, _, out = e2e

    def tree():
        return {os.path.relpath(os.path.join(r, f), out): hashlib.sha1(open(os.path.join(r, f), "rb").read()).hexdigest()
                for r, _, fs in os.walk(out) for f in fs}

    def folder_times():  # a probe file created and removed again still changes its folder's time
        return {root: os.stat(root).st_mtime_ns for root, _, _ in os.walk(out)}

    before, times = tree(), folder_times()
    proc = subprocess.run([sys.executable, "-m", "landscape", "run", "tiny", "--out", str(out), "--quiet",
                           "--no-cache"], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1)))
    assert proc.returncode == 0, proc.stderr
    assert tree() == before and folder_times() == times


def test_output_folder_removed_during_a_study_is_a_failure(tmp_path):
    from landscape.core.errors import LandscapeFault

    out = tmp_path / "removed"

    def remove(name):
        if name == "scratch":
            shutil.rmtree(out)

    with pytest.raises(LandscapeFault, match="removed during the run"):
        run_study("tiny", str(out), quiet=True, hooks=Hooks(unit_done=remove), use_cache=False)


def test_unwritable_output_folder_is_refused_before_work(capsys):
    code = main(["demo", "--quick", "--out", "/proc/landscape-demo", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not writable" in err[0]
