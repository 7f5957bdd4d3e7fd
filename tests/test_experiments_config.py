"""Study configs: the shipped ones validate; bad input gives one line, exit 2, nothing written."""
from __future__ import annotations

import hashlib
import os
import tomllib

import pytest

from experiments.config import SHIPPED, load_config, parse_override, shipped_path
from experiments.study import RESULTS
from landscape.cli import main
from landscape.core.errors import LandscapeError
from landscape.store.store import Store


def _tiny_text() -> str:
    with open(shipped_path("tiny")) as f:
        return f.read()


def _write(tmp_path, text: str, name: str = "study.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _fails(capsys, argv, *fragments) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.count("\n") == 0, f"not one line: {err!r}"
    assert err.startswith("landscape: error: ")
    for frag in fragments:
        assert frag in err, (frag, err)
    return err


# ---------------------------------------------------------------------------------------------
# shipped configs


def test_shipped_configs_validate():
    for name in ("demo", "demo_quick", "tiny"):
        cfg = load_config(name)
        assert cfg["data"]["kind"] == "embedded"
        types = {m.type for m in cfg.methods}
        assert types == {"local_de", "global_de", "sse", "starsse", "fge", "swa"}
        for t in ("sse", "starsse"):  # a small and a large cycle lr
            scales = sorted(m.params["lr_scale"] for m in cfg.methods if m.type == t)
            assert scales[0] <= 1.0 and scales[-1] >= 4.0, (name, t, scales)
    assert load_config("demo").members == 5


@pytest.mark.parametrize("name,classes", [("cifar10_resnet50", 10), ("cifar100_resnet50", 100)])
def test_paper_configs_follow_the_recipe(name, classes):
    cfg = load_config(name, check_paths=False)
    ft = cfg["finetune"]
    assert (ft["momentum"], ft["weight_decay"], ft["epochs"], ft["batch_size"]) == (0.9, 5e-4, 25, 256)
    assert ft["lr"] == 0.005
    assert cfg.members == 5 and cfg["model"]["name"] == "resnet50" and cfg["data"]["image_size"] == 224
    assert cfg["data"]["kind"] == name.split("_")[0] and len(cfg["pretrain"]["checkpoints"]) == 5
    scales = {m.params["lr_scale"] for m in cfg.methods if m.type == "starsse"}
    assert scales == {0.25, 0.5, 1.0, 2.0, 4.0}  # the paper's grid of cycle lrs


@pytest.mark.parametrize("name", ["cifar10_resnet50", "cifar100_resnet50"])
def test_paper_configs_without_the_data_folder(name, capsys, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, ["run", name, "--out", str(out), "--set", f"data.root={tmp_path / 'nowhere'}"],
           "data folder", "does not exist", "data.root")
    assert not out.exists()
    with pytest.raises(LandscapeError, match="data folder .* does not exist"):
        load_config(name, [f"data.root={tmp_path / 'nowhere'}"])


def test_paper_config_with_a_missing_checkpoint(capsys, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, ["run", "cifar100_resnet50", "--out", str(out), "--set", f"data.root={tmp_path}",
                    "--set", f'pretrain.checkpoints=["{tmp_path}/a.pt", "{tmp_path}/b.pt", "{tmp_path}/c.pt", '
                             f'"{tmp_path}/d.pt", "{tmp_path}/e.pt"]'],
           "checkpoint file", "a.pt", "does not exist")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


def test_unknown_key(capsys, tmp_path):
    path = _write(tmp_path, _tiny_text().replace("noise = 0.8", "nois = 0.8"))
    out = tmp_path / "out"
    _fails(capsys, ["run", path, "--out", str(out)], "unknown key data.'nois'", "did you mean 'noise'")
    assert not out.exists()
    path = _write(tmp_path, _tiny_text() + "\n[extras]\nx = 1\n", "b.toml")
    _fails(capsys, ["run", path, "--out", str(out)], "unknown key 'extras'")
    path = _write(tmp_path, _tiny_text().replace("cycle_epochs = 2\n", "cycle_epoch = 2\n", 1), "c.toml")
    _fails(capsys, ["run", path, "--out", str(out)], "unknown key methods.sse_small.'cycle_epoch'")
    assert not out.exists()


def test_wrong_type(capsys, tmp_path):
    out = tmp_path / "out"
    path = _write(tmp_path, _tiny_text().replace("members = 3", 'members = "three"'))
    _fails(capsys, ["run", path, "--out", str(out)], "study.members must be an integer", "'three' (string)")
    path = _write(tmp_path, _tiny_text().replace("lr = 0.02", "lr = true"), "b.toml")
    _fails(capsys, ["run", path, "--out", str(out)], "finetune.lr must be a number", "True (boolean)")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "model.width=wide"], "model.width must be an integer")
    assert not out.exists()


def test_other_bad_values(capsys, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "data.kind=mnist"], "data.kind must be one of")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "methods.sse_small.type=snapshot"],
           "methods.sse_small.type must be one of")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "methods.x.type=sse"], "methods.x.lr_scale is required")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "finetune.lr=-1"],
           "finetune.lr must be a finite positive number, got -1.0")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "pretrain.checkpoints=2"],
           "global_de with 3 members needs 3 pre-trained checkpoints")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "data.root=/x"], "data.root does not apply")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "analysis.plane_through=['nope', 'fge']"],
           "plane_through names 'nope'")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "novalue"], "malformed --set")
    path = _write(tmp_path, "[study\nname = 1")
    _fails(capsys, ["run", path, "--out", str(out)], "is not valid TOML")
    _fails(capsys, ["run", str(tmp_path / "missing.toml"), "--out", str(out)], "not found")
    assert not out.exists()


def test_model_that_does_not_fit_the_data(capsys, tmp_path):
    out = tmp_path / "out"
    # ResNet-18's first convolution wants 3 channels; the embedded images here have 1
    path = _write(tmp_path, _tiny_text().replace('name = "small_cnn"\nwidth = 4', 'name = "resnet18"'))
    _fails(capsys, ["run", path, "--out", str(out), "--set", "data.channels=1"],
           "model 'resnet18' does not fit the data", "channels")
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "model.name=resnet18", "--set", "model.width=8"],
           "model.width only applies")
    path = _write(tmp_path, _tiny_text().replace('name = "small_cnn"\nwidth = 4', 'name = "nosuchmodule:factory"'),
                  "b.toml")
    _fails(capsys, ["run", path, "--out", str(out)], "cannot import")
    assert not out.exists()


def _digest(folder) -> str:
    """Every file under `folder`, names and contents."""
    h = hashlib.sha256()
    for root, dirs, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_output_folder_of_a_different_study(capsys, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    with Store(str(out / RESULTS), "a") as store:
        store.set_attrs({"study_fingerprint": "0123456789abcdef", "study_name": "someone-else",
                         "study_source": "theirs.toml"})
    before = _digest(out)
    _fails(capsys, ["run", "tiny", "--out", str(out)], "holds a different study", "someone-else")
    assert _digest(out) == before and os.listdir(out) == [RESULTS]
    # a changed recipe is a different study too
    cfg = load_config("tiny")
    with Store(str(out / RESULTS), "a") as store:
        store.set_attrs({"study_fingerprint": cfg.fingerprint()})
    _fails(capsys, ["run", "tiny", "--out", str(out), "--set", "finetune.epochs=4"], "holds a different study")
    # a folder with other files and no study
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _fails(capsys, ["run", "tiny", "--out", str(busy)], "is not empty and holds no study")
    assert os.listdir(busy) == ["notes.txt"]
    # a file where the folder should be
    _fails(capsys, ["demo", "--quick", "--out", str(busy / "notes.txt")], "is not a folder")


def test_fingerprint_ignores_the_analysis_and_device():
    a = load_config("tiny")
    b = load_config("tiny", ["analysis.line_points=5", "study.device=cpu", "study.threads=2"])
    c = load_config("tiny", ["methods.sse_large.lr_scale=4.0"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_overrides_and_help(capsys):
    assert parse_override("data.root=/data/cifar") == (["data", "root"], "/data/cifar")
    assert parse_override("finetune.lr=0.01") == (["finetune", "lr"], 0.01)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    for cmd in ("run", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "--quiet" in text and "--json" in text and "--out" in text
    assert set(SHIPPED) >= {"demo", "demo_quick", "cifar10_resnet50", "cifar100_resnet50"}
    for name in SHIPPED:
        with open(shipped_path(name), "rb") as f:
            tomllib.load(f)
