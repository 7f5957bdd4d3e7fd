"""Bad input refused before any work, and figures that survive bad values and failed writes:
non-finite data (named by its first bad sample), unsupported devices, NaN/inf holes in every
plot, and atomic figure writes (a failed write leaves an existing figure byte-identical)."""
from __future__ import annotations

import math
import os

import matplotlib.figure
import numpy as np
import pytest
import torch
from PIL import Image

import landscape.core.data as data_mod
from landscape import plots
from landscape.cli import main
from landscape.core.data import TensorData, load_data
from landscape.core.errors import LandscapeError, LandscapeFault
from landscape.core.models import build_model
from landscape.evaluate.engine import resolve_device

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NONFINITE = [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "-inf")]


def _assert_png(path) -> None:
    with open(path, "rb") as fh:
        assert fh.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()  # a truncated or half-written PNG fails here
    with Image.open(path) as im:
        assert im.size[0] > 50 and im.size[1] > 50


def _leftovers(folder) -> list[str]:
    return [f for f in os.listdir(folder) if ".tmp-" in f]


# ---------------------------------------------------------------------------------------------
# Non-finite data


def _save_tensors(path, x, y=None):
    y = torch.arange(x.shape[0]) % 3 if y is None else y
    torch.save({"x": x, "y": y}, path)
    return f"tensors:{path}"


@pytest.mark.parametrize("value,word", NONFINITE)
@pytest.mark.parametrize("index", [0, 17, 39])
def test_tensors_file_with_nonfinite_sample_is_refused_naming_it(tmp_path, value, word, index):
    x = torch.randn(40, 3, 4, 4)
    x[index, 2, 1, 3] = value
    x[-1, 0, 0, 0] = -value if index != 39 else value  # a later bad sample must not be named
    spec = _save_tensors(tmp_path / "train.pt", x)
    with pytest.raises(LandscapeError) as info:
        load_data(spec)
    assert str(info.value) == f"data {spec!r}: sample {index} holds {word}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nonfinite_found_in_every_float_dtype_and_layout(tmp_path, dtype):
    x = torch.randn(12, 4, 5, 3, dtype=dtype).permute(0, 3, 1, 2)  # non-contiguous
    x[7, 1, 3, 4] = math.inf
    with pytest.raises(LandscapeError, match=r"sample 7 holds inf$"):
        TensorData(x, torch.zeros(12, dtype=torch.long), "mine")
    v = torch.randn(12, dtype=dtype)  # one value per sample
    v[5] = math.nan
    with pytest.raises(LandscapeError, match=r"sample 5 holds NaN$"):
        TensorData(v, torch.zeros(12, dtype=torch.long), "mine")


def test_finite_data_still_loads(tmp_path):
    x = torch.randn(10, 2, 3, 3) * 1e30  # huge but finite
    spec = _save_tensors(tmp_path / "ok.pt", x)
    d = load_data(spec)
    assert torch.equal(d.x, x) and len(d) == 10


def test_synthetic_loader_checks_too(monkeypatch):
    real = data_mod.make_synthetic_images

    def poisoned(*args, **kwargs):
        x, y = real(*args, **kwargs)
        x[4, 0, 2, 2] = -math.inf
        return x, y

    monkeypatch.setattr(data_mod, "make_synthetic_images", poisoned)
    with pytest.raises(LandscapeError, match=r"data 'synthetic:n=20': sample 4 holds -inf$"):
        load_data("synthetic:n=20")


def _mlp_snapshots(tmp_path):
    for name, seed in (("a.pt", 1), ("b.pt", 2)):
        torch.manual_seed(seed)
        torch.save(build_model("mlp", 3, (2, 4, 4)).state_dict(), tmp_path / name)


def test_cli_refuses_nan_data_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _mlp_snapshots(tmp_path)
    x = torch.randn(30, 2, 4, 4)
    x[11, 1, 0, 0] = math.nan
    _save_tensors(tmp_path / "bad.pt", x)
    code = main(["interpolate", "a.pt", "b.pt", "--model", "mlp", "--data", "tensors:bad.pt", "--num", "3",
                 "--out", "s.h5", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["landscape: error: data 'tensors:bad.pt': sample 11 holds NaN"]
    assert not (tmp_path / "s.h5").exists()


# ---------------------------------------------------------------------------------------------
# Devices

BAD_DEVICES = ["meta", "xla", "cuda:7", "cpu:zz", "mps", "cpu:1", "cuda:-1", "", "gpu", torch.device("meta")]


@pytest.mark.parametrize("device", BAD_DEVICES, ids=str)
def test_unsupported_devices_refused_with_accepted_list(device):
    with pytest.raises(LandscapeError) as info:
        resolve_device(device)
    msg = str(info.value)
    assert "\n" not in msg and "auto, cpu" in msg
    if not torch.cuda.is_available() and str(device).startswith("cuda:7"):
        assert "CUDA is not available" in msg
    elif str(device).startswith(("cuda", "meta", "xla", "cpu:zz", "mps")):
        assert "auto, cpu, cuda, cuda:N" in msg


def test_gpu_index_beyond_the_machine_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(LandscapeError, match=r"'cuda:7': no such GPU.*cuda:0 to cuda:1.*auto, cpu, cuda, cuda:N"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto").type == "cuda"


@pytest.mark.parametrize("device", ["cpu", " cpu ", "cpu:0", None, torch.device("cpu")], ids=str)
def test_cpu_forms_accepted(device):
    assert resolve_device(device) == torch.device("cpu")


def test_auto_without_cuda_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_cli_refuses_meta_device(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _mlp_snapshots(tmp_path)
    _save_tensors(tmp_path / "ok.pt", torch.randn(30, 2, 4, 4))
    code = main(["interpolate", "a.pt", "b.pt", "--model", "mlp", "--data", "tensors:ok.pt", "--num", "3",
                 "--out", "s.h5", "--device", "meta", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'meta'" in err[0] and "cuda:N" in err[0]
    assert not (tmp_path / "s.h5").exists()


# ---------------------------------------------------------------------------------------------
# Plots: non-finite values are gaps


def _surface_with_holes():
    xs, ys = np.linspace(-1, 1, 9), np.linspace(-0.5, 1.5, 7)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    v = 0.2 + gx ** 2 + (gy - 0.5) ** 2
    v[2, 3] = np.nan
    v[5, 1] = np.inf  # a diverged point
    v[0, 6] = -np.inf
    v[8, :] = np.nan  # a row not computed yet
    finite = v[np.isfinite(v)]
    return xs, ys, v, float(finite.min()), float(finite.max())


@pytest.fixture()
def captured(monkeypatch):
    """The figures the plot functions hand to save_figure, kept open for inspection."""
    figs = []
    real = plots.save_figure

    def spy(fig, path, **kwargs):
        figs.append(fig)  # closing only detaches it from pyplot: its artists stay readable
        return real(fig, path, **kwargs)

    monkeypatch.setattr(plots, "save_figure", spy)
    return figs


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("style", plots.PLANE_STYLES)
def test_plane_with_holes_draws_and_scales_on_finite_values(tmp_path, captured, style, log):
    xs, ys, v, lo, hi = _surface_with_holes()
    out = tmp_path / f"plane_{style}.png"
    assert plots.plot_plane(xs, ys, v, str(out), style, log, markers=[("m", 0.0, 0.5), ("lost", np.nan, 0.0)],
                            label="test_loss") == str(out)
    _assert_png(out)
    assert _leftovers(tmp_path) == []
    fig = captured[0]
    if style == "3d":
        (surf,) = fig.axes[0].collections
        vlo, vhi = (math.log10(lo), math.log10(hi)) if log else (lo, hi)
        assert surf.norm.vmin == pytest.approx(vlo) and surf.norm.vmax == pytest.approx(vhi)
        return
    mappable = fig.axes[0].collections[0]
    assert mappable.norm.vmin == pytest.approx(lo) and mappable.norm.vmax == pytest.approx(hi)
    if style in ("contour", "filled"):
        levels = np.asarray(mappable.levels)
        # Enough finite levels spread over the finite values (a log scale's default locator
        # gives one level per decade: too few to read a landscape).
        assert np.isfinite(levels).all() and len(levels) >= 10
        if log:
            assert levels.min() == pytest.approx(lo) and levels.max() == pytest.approx(hi)
        else:
            step = levels[1] - levels[0]
            assert lo - step <= levels.min() <= lo + step and hi - step <= levels.max() <= hi + step


def test_curve_matrix_and_sizes_with_holes(tmp_path, captured):
    a = np.linspace(-0.5, 1.5, 9)
    curve = {"train_loss": np.array([1, 2, np.nan, np.inf, 3, 1, 2, 1, 0.5]),
             "train_acc": np.array([.1, .2, np.nan, .3, .4, .5, .6, .7, .8]),
             "test_loss": np.arange(9.0) + 1, "test_acc": np.full(9, 0.5)}
    for log in (False, True):
        out = tmp_path / f"curve_{log}.png"
        plots.plot_curve(a, curve, str(out), log=log)
        _assert_png(out)
        loss_ax = captured[-1].axes[0]
        for line in loss_ax.lines:
            y = np.asarray(line.get_ydata(), dtype=float)
            assert not np.isinf(y).any()  # inf became a gap
        assert np.isfinite(loss_ax.get_ylim()).all()

    m = np.array([[0, 1, np.nan], [1, 0, np.inf], [np.nan, np.inf, 0.0]])
    out = tmp_path / "matrix.png"
    plots.plot_matrix(["a", "b", "c"], m, str(out), label="test_loss_barrier")
    _assert_png(out)
    im = captured[-1].axes[0].images[0]
    assert (im.norm.vmin, im.norm.vmax) == (0.0, 1.0)

    out = tmp_path / "sizes.png"
    plots.plot_by_size({"de": [1.0, np.nan, 2.0, np.inf, 1.5], "empty": [np.nan] * 3}, str(out), "nll")
    _assert_png(out)
    ax = captured[-1].axes[0]
    assert np.isfinite(ax.get_ylim()).all() and ax.get_ylim()[1] < 10
    assert [line.get_label() for line in ax.lines] == ["de"]  # the all-NaN series is left out
    assert not np.isinf(np.asarray(ax.lines[0].get_ydata(), dtype=float)).any()
    assert _leftovers(tmp_path) == []


ALL_NAN_CALLS = {
    "plane": lambda out: plots.plot_plane(np.arange(3.0), np.arange(4.0), np.full((3, 4), np.nan), out,
                                          label="test_loss"),
    "plane_inf": lambda out: plots.plot_plane(np.arange(3.0), np.arange(4.0), np.full((3, 4), np.inf), out,
                                              "heatmap", label="test_loss"),
    "curve": lambda out: plots.plot_curve(np.linspace(0, 1, 4), {"test_loss": np.full(4, np.nan),
                                                                 "test_acc": np.full(4, np.nan)}, out),
    "matrix": lambda out: plots.plot_matrix(["a", "b"], np.full((2, 2), np.nan), out, label="test_loss"),
    "sizes": lambda out: plots.plot_by_size({"de": [np.nan, np.inf]}, out, "test_loss"),
}


@pytest.mark.parametrize("kind", ALL_NAN_CALLS)
def test_all_nan_refused_clearly(tmp_path, kind):
    out = tmp_path / "x.png"
    with pytest.raises(LandscapeError) as info:
        ALL_NAN_CALLS[kind](str(out))
    assert not isinstance(info.value, LandscapeFault)
    assert str(info.value).startswith("nothing to draw: every point of ")
    assert "test_loss" in str(info.value) and str(info.value).endswith("is non-finite or not computed")
    assert os.listdir(tmp_path) == []


def test_log_plane_with_no_positive_value_refused(tmp_path):
    with pytest.raises(LandscapeError, match="nothing to draw on a log scale"):
        plots.plot_plane(np.arange(3.0), np.arange(3.0), -np.ones((3, 3)), str(tmp_path / "x.png"), log=True)


# ---------------------------------------------------------------------------------------------
# Plots: output paths and atomic writes


def _simple_plot(out):
    return plots.plot_by_size({"de": [3.0, 2.0, 1.5]}, str(out), "nll")


def test_missing_output_folder_refused(tmp_path):
    out = tmp_path / "no" / "such" / "fig.png"
    with pytest.raises(LandscapeError) as info:
        _simple_plot(out)
    assert not isinstance(info.value, LandscapeFault)
    assert str(tmp_path / "no" / "such") in str(info.value) and "does not exist" in str(info.value)
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("name", ["fig.gif", "fig", "fig.png.bak"])
def test_unknown_extension_refused_listing_supported(tmp_path, name):
    with pytest.raises(LandscapeError) as info:
        _simple_plot(tmp_path / name)
    assert ".png, .pdf, .svg" in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("ext", [".png", ".PNG", ".pdf", ".svg"])
def test_save_figure_formats_and_mode(tmp_path, ext):
    fig = plots.plt.figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    out = tmp_path / f"fig{ext}"
    assert plots.save_figure(fig, out) == str(out)
    head = out.read_bytes()[:8]
    assert {".png": head == PNG_MAGIC, ".pdf": head.startswith(b"%PDF"),
            ".svg": b"<?xml" in head or b"<svg" in head}[ext.lower()]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert not plots.plt.fignum_exists(fig.number)
    assert _leftovers(tmp_path) == []


def _failing_savefig(error):
    def savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG half a figure")  # a partial write before the failure
        raise error
    return savefig


@pytest.mark.parametrize("error,reason", [(OSError(28, "No space left on device"), "No space left on device"),
                                          (PermissionError(13, "Permission denied"), "Permission denied")])
def test_failed_write_is_a_fault_and_keeps_the_old_figure(tmp_path, monkeypatch, error, reason):
    out = tmp_path / "plane.png"
    _simple_plot(out)
    before = out.read_bytes()
    _assert_png(out)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _failing_savefig(error))
    with pytest.raises(LandscapeFault) as info:
        plots.plot_plane(np.arange(3.0), np.arange(3.0), np.ones((3, 3)), str(out), "heatmap")
    assert str(info.value) == f"cannot write {out}: {reason}"
    assert info.value.exit_code == 1
    assert out.read_bytes() == before
    assert os.listdir(tmp_path) == ["plane.png"]  # no temporary file left behind
    assert plots.plt.get_fignums() == []


def test_failed_write_without_existing_figure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _failing_savefig(OSError(122, "Disk quota exceeded")))
    with pytest.raises(LandscapeFault, match="Disk quota exceeded"):
        _simple_plot(tmp_path / "fig.png")
    assert os.listdir(tmp_path) == []


def test_other_errors_during_save_leave_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _failing_savefig(ValueError("renderer broke")))
    with pytest.raises(ValueError):
        _simple_plot(tmp_path / "fig.png")
    assert os.listdir(tmp_path) == []
    assert plots.plt.get_fignums() == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_folder_is_a_fault(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    out = folder / "plane.png"
    _simple_plot(out)
    before = out.read_bytes()
    folder.chmod(0o500)
    try:
        with pytest.raises(LandscapeFault) as info:
            _simple_plot(out)
        assert str(info.value) == f"cannot write {out.resolve()}: Permission denied"
        assert out.read_bytes() == before
    finally:
        folder.chmod(0o700)


def test_cli_plot_into_missing_folder_and_failed_write(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _mlp_snapshots(tmp_path)
    _save_tensors(tmp_path / "ok.pt", torch.randn(30, 2, 4, 4))
    assert main(["interpolate", "a.pt", "b.pt", "--model", "mlp", "--data", "tensors:ok.pt", "--num", "3",
                 "--out", "s.h5", "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["plot", "s.h5", "interpolate", "-o", "nowhere/c.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0] and "does not exist" in err[0]
    assert main(["plot", "s.h5", "interpolate", "-o", "c.png"]) == 0
    before = (tmp_path / "c.png").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _failing_savefig(OSError(28, "No space left on device")))
    assert main(["plot", "s.h5", "interpolate", "-o", "c.png"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"landscape: error: cannot write {tmp_path / 'c.png'}: No space left on device"]
    assert (tmp_path / "c.png").read_bytes() == before
