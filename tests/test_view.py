"""`landscape view`: one self-contained HTML page of stored results that opens offline.

The page is loaded in a real headless Chromium (skipped, saying so, when none is installed): plotly
must have drawn every figure (SVG layers; WebGL canvases for the 3D surfaces), no script error may
have happened (the page writes any into #view-errors: an injected error shows there, so the check
can see one), and a screenshot is not blank. The output path follows the rules of every output
file: a FIFO, a symbolic link, a folder or a path inside a store is refused in one line, exit 2."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from landscape import cli
from landscape.view import view

USER_MODEL = ("from torch import nn\n\ndef make(num_classes=3, **_):\n"
              "    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, num_classes))\n")
OPTS = ["--model", "view_user_mlp:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt",
        "--out", "s", "--quiet"]
# kind, name: what the store below holds, in the page's order
RESULTS = [("surfaces", "plane"), ("curves", "interpolate"), ("barriers", "barriers"), ("ensembles", "ensemble"),
           ("hessians", "hessian"), ("connections", "connect")]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium): the "
                                    "page is not loaded in a browser")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    cwd = os.getcwd()
    os.chdir(folder)
    sys.path.insert(0, str(folder))
    try:
        (folder / "view_user_mlp.py").write_text(USER_MODEL)
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(90, 6, generator=g), torch.randint(0, 3, (90,), generator=g)
        torch.save({"x": x[:60], "y": y[:60]}, "train.pt")
        torch.save({"x": x[60:], "y": y[60:]}, "test.pt")
        import view_user_mlp

        for i in range(3):
            torch.manual_seed(i)
            torch.save(view_user_mlp.make().state_dict(), f"m{i}.pt")
        for argv in (["plane", "m0.pt", "--random", "filter", "--x", "-1:1:6", "--y", "-1:1:5", "--project", "m1.pt"],
                     ["interpolate", "m0.pt", "m1.pt", "--num", "5"],
                     ["barriers", "m0.pt", "m1.pt", "m2.pt", "--num", "3"],
                     ["hessian", "m0.pt", "--top-k", "2", "--iters", "15", "--density", "--trace", "--probes", "4"],
                     ["connect", "m0.pt", "m1.pt", "--epochs", "2", "--num", "5", "--train-batch-size", "20"]):
            assert cli.main([*argv, *OPTS]) == 0, argv
        assert cli.main(["ensemble", "m0.pt", "m1.pt", "m2.pt", "--model", "view_user_mlp:make", "--data",
                         "tensors:test.pt", "--out", "s", "--quiet"]) == 0
        yield folder
    finally:
        sys.path.remove(str(folder))
        os.chdir(cwd)


@pytest.fixture(autouse=True)
def _in_work(work, monkeypatch):
    monkeypatch.chdir(work)


@pytest.fixture(scope="module")
def page(work):
    """The page of everything in the store, written once by the CLI."""
    os.chdir(work)
    assert cli.main(["view", "s", "-o", "all.html"]) == 0
    return work / "all.html"


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sections(text: str) -> list[tuple[str, str]]:
    return re.findall(r'<section id="result-\d+" data-kind="(\w+)"><h2>[^<]* ([^<]*)</h2>', text)


def test_the_page_holds_every_result_and_needs_no_network(page, capsys):
    text = page.read_text()
    assert sections(text) == RESULTS
    tags = re.findall(r"<script\b[^>]*>", text)
    assert tags and not [t for t in tags if "src" in t]  # plotly.js is inlined: no script is fetched
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", text, flags=re.S)  # the page without its scripts
    assert not re.search(r"<(link|img|iframe|object|embed)\b|\bsrc\s*=|url\(", markup)  # nor anything else
    assert "Plotly.newPlot" in text and text.count('class="plotly-graph-div"') == len(RESULTS)
    assert len(text) > 1_000_000  # the inlined library


def test_the_python_function_and_chosen_names(capsys):
    out = view("s", ["plane", "hessians/hessian"], out="two.html")
    assert out == os.path.abspath("two.html")
    assert sections(open(out).read()) == [("surfaces", "plane"), ("hessians", "hessian")]
    code, text, err = run(capsys, "view", "s", "connect", "-o", "one.html")
    assert code == 0 and text.strip() == f"wrote {os.path.abspath('one.html')} (1 results)", err


def test_bad_names_and_paths_are_refused_in_one_line(work, capsys, tmp_path):
    def refused(argv, needle):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and needle in err, (argv, err)

    refused(["view", "s", "nothing", "-o", str(tmp_path / "x.html")], "no curve, surface")
    refused(["view", "s", "curves/hessian", "-o", str(tmp_path / "x.html")], "no curve named 'hessian'")
    refused(["view", "s", "-o", str(tmp_path / "x.png")], "give a name ending in .html")
    refused(["view", "nostore", "-o", str(tmp_path / "x.html")], "does not exist")
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    refused(["view", "s", "-o", str(fifo)], "is a FIFO")
    assert os.stat(fifo).st_mode & 0o170000 == 0o010000
    target = tmp_path / "precious.html"
    target.write_text("keep me")
    os.symlink(target, tmp_path / "link.html")
    refused(["view", "s", "-o", str(tmp_path / "link.html")], "is a symbolic link")
    assert target.read_text() == "keep me"
    refused(["view", "s", "-o", str(tmp_path)], "is a folder")
    before = {p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest()
              for d, _, fs in os.walk("s") for p in fs}
    for inside in ("store.json", "surfaces/plane.h5", "new.html"):
        refused(["view", "s", "-o", f"s/{inside}"], "lies inside the store")
    assert {p: hashlib.sha256(open(os.path.join(d, p), "rb").read()).hexdigest()
            for d, _, fs in os.walk("s") for p in fs} == before
    assert sorted(os.listdir(tmp_path)) == ["link.html", "pipe.html", "precious.html"]  # nothing else written
    os.makedirs("empty/surfaces")
    (work / "empty" / "store.json").write_text('{"schema_version": 2}')
    refused(["view", "empty", "-o", str(tmp_path / "x.html")], "nothing to view")


def chromium(url: str, tmp_path, *args: str) -> str:
    proc = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args, url],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def errors_shown(dom: str) -> str:
    m = re.search(r'<pre id="view-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert m is not None, "the page's error box is missing"
    return m.group(1) + " ".join(re.findall(r'data-view-errors="([^"]*)"', dom))


@needs_chromium
def test_chromium_draws_every_figure_without_a_script_error(page, tmp_path):
    dom = chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert errors_shown(dom).strip() == ""
    plots = re.split(r'<div id="plot-\d+" class="plotly-graph-div js-plotly-plot"', dom)[1:]
    assert len(plots) == len(RESULTS)  # js-plotly-plot: Plotly.newPlot ran on each div
    for (kind, name), html in zip(RESULTS, plots):
        assert html.count('class="main-svg"') >= 2, (kind, name)  # the plot's SVG and its info layer
        assert re.search(r'class="(scatterlayer|heatmaplayer|contourlayer|imagelayer)', html), (kind, name)
    surface = plots[0]
    assert '<div class="gl-container">' in surface and "<canvas" in surface  # the rotatable 3D surface (WebGL)
    assert 'class="updatemenu-container"' in surface  # the metric menu
    assert "train_loss" in surface and "test_err" in surface


@needs_chromium
def test_a_script_error_would_be_seen(page, tmp_path):
    """The check above can fail: the same page with one broken script shows the error."""
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</body>", "<script>no_such_function();</script></body>"))
    dom = chromium(broken.as_uri(), tmp_path, "--dump-dom")
    assert "no_such_function" in errors_shown(dom)


@needs_chromium
def test_a_screenshot_is_not_blank(page, tmp_path):
    shot = tmp_path / "view.png"
    chromium(page.as_uri(), tmp_path, "--window-size=1280,1400", f"--screenshot={shot}")
    img = matplotlib.image.imread(str(shot))[..., :3]
    assert img.shape[:2] == (1400, 1280)
    assert (img.min(axis=2) < 0.8).mean() > 0.02  # drawn, not a white page
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert colours > 200  # a colour scale and a 3D surface, not a page of text
