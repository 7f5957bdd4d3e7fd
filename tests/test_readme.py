"""The README's command-line and Python examples run as written (after `landscape demo --quick`),
and the grids they draw contain the snapshots they name."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from landscape.store.store import Store

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def blocks(lang: str, after: str) -> list[str]:
    text = open(README).read()
    text = text[text.index(after):]
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "LANDSCAPE_CACHE": str(work / "cache")}
    script = blocks("bash", "## Command line")[0]
    proc = subprocess.run(["bash", "-euc", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the alignment examples, with the variables the first block set
    variables = "\n".join(ln for ln in script.splitlines() if re.match(r"^[A-Z]+=", ln))
    align = variables + "\n" + blocks("bash", "### Aligning hidden units")[0]
    proc = subprocess.run(["bash", "-euc", align], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_command_line_examples(ran):
    with Store(str(ran / "runs/analysis"), "r") as st:
        plane = st.read("surfaces", "plane")
        xs, ys = plane["xcoordinates"], plane["ycoordinates"]
        for (x, y), d in zip(plane["projection_coords"], plane["projection_distances"]):
            if d < 1e-3:  # the three snapshots the plane passes through
                assert xs.min() < x < xs.max() and ys.min() < y < ys.max()
        line = st.read("curves", "interpolate")
        assert line["alphas"].min() == -0.5 and line["alphas"].max() == 1.5
        assert st.read_attrs("curves", "interpolate")["bn_mode"] == "recompute"
    for f in ("runs/plane.png", "runs/hessian.png", "runs/connect.png", "runs/view.html", "runs/plane_goldstein.h5",
              "runs/plane.vtp"):
        assert (ran / f).stat().st_size > 0
    report = (ran / "runs/quick/report.md").read_text()  # the study's barriers after alignment, and the finding
    assert "## Basins up to permutation" in report and "one basin up to a permutation" in report
    page = (ran / "runs/quick/report.html").read_text()  # the study's interactive view, beside report.md
    assert "plotly" in page.lower() and "<script src=\"http" not in page
    with Store(str(ran / "runs/analysis"), "r") as st:  # the alignment examples
        assert st.read_snapshot("ft1-to-ft0").meta["align_method"] == "weight"
        assert st.read_attrs("barriers", "aligned")["config"]["align"] == "weight"


def test_python_examples(ran, monkeypatch):
    monkeypatch.chdir(ran)
    code = blocks("python", "## Python API")[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # our own README
    assert namespace["line"].bn_mode == "recompute"
    assert len(namespace["rows"]) == 2
    assert namespace["plane"].test_loss.shape == (5, 5)
    assert namespace["top"].shape == (2,)
