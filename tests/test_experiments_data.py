"""The embedded transfer problem, augmentation, models with head replacement, and real image folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.data import EmbeddedSpec, FolderTask, make_transfer_problem, random_shift
from experiments.models import backbone_vector, build, check_fits, head_name, load_backbone, new_head, seeded_build
from experiments.study import run_study
from landscape.cli import main
from landscape.core.errors import LandscapeError

SMALL = EmbeddedSpec(image_size=8, parts=6, part_size=3, parts_per_image=2, source_classes=8, source_train=64,
                     source_test=16, target_classes=4, target_train_per_class=3, target_test=20)


def test_embedded_problem_is_deterministic_and_well_formed():
    a, b = make_transfer_problem(SMALL), make_transfer_problem(SMALL)
    for split in ("source_train", "source_test", "target_train", "target_test"):
        da, db = getattr(a, split), getattr(b, split)
        assert torch.equal(da.x, db.x) and torch.equal(da.y, db.y)
        assert da.x.shape[1:] == (3, 8, 8) and da.x.dtype == torch.float32
    assert len(a.target_train) == 12 and a.target_train.y.bincount().tolist() == [3, 3, 3, 3]
    assert int(a.source_train.y.max()) < 8 and int(a.target_test.y.max()) < 4
    assert not set(a.source_combos) & set(a.target_combos)  # new combinations of the same parts
    assert {p for c in a.target_combos for p in c} <= set(range(6))
    c = make_transfer_problem(EmbeddedSpec(**{**SMALL.__dict__, "seed": 1}))
    assert not torch.equal(a.target_train.x, c.target_train.x)


def test_embedded_spec_checks():
    with pytest.raises(LandscapeError, match="combinations"):
        EmbeddedSpec(parts=4, parts_per_image=2, source_classes=5, target_classes=2).check()
    with pytest.raises(LandscapeError, match="part_size"):
        EmbeddedSpec(image_size=4, part_size=5).check()


def test_random_shift():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    assert random_shift(x, 0, torch.Generator().manual_seed(0)) is x
    y1 = random_shift(x, 1, torch.Generator().manual_seed(0))
    y2 = random_shift(x, 1, torch.Generator().manual_seed(0))
    assert torch.equal(y1, y2) and y1.shape == x.shape
    # every output is the input translated by at most one pixel, zero-filled
    for i in range(2):
        found = False
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = torch.zeros_like(x[i])
                src = x[i][:, max(0, -dy):5 - max(0, dy), max(0, -dx):5 - max(0, dx)]
                shifted[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
                found |= torch.equal(shifted, y1[i])
        assert found


def test_models_heads_and_backbones():
    m = seeded_build("small_cnn", 5, (3, 8, 8), 4, seed=3)
    assert head_name(m) == "head" and head_name(build("resnet18", 7, (3, 32, 32))) == "fc"
    assert torch.equal(backbone_vector(m), backbone_vector(seeded_build("small_cnn", 5, (3, 8, 8), 4, seed=3)))
    src = seeded_build("small_cnn", 9, (3, 8, 8), 4, seed=1)
    load_backbone(m, src.state_dict(), "src")  # a 9-class head does not matter
    assert torch.equal(backbone_vector(m), backbone_vector(src))
    h1 = new_head(m, 5, seed=11).head.weight.clone()
    h2 = new_head(m, 5, seed=11).head.weight.clone()
    assert torch.equal(h1, h2) and not torch.equal(h1, new_head(m, 5, seed=12).head.weight)
    assert m.head.out_features == 5
    with pytest.raises(LandscapeError, match="does not fit the model"):
        load_backbone(m, seeded_build("small_cnn", 9, (3, 8, 8), 8, seed=1).state_dict(), "wide")
    with pytest.raises(LandscapeError, match="does not fit the data"):
        check_fits(m, torch.zeros(1, 1, 8, 8), 5, "model 'small_cnn'")


# ---------------------------------------------------------------------------------------------
# real data: an ImageFolder tree with the paper's transforms, and pre-trained checkpoint files


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("sun")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("beach", "forest"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    ckpts = []
    for c in range(2):  # "ImageNet" checkpoints: a different head (7 classes), weights-only files
        m = seeded_build("resnet18", 7, (3, 32, 32), None, seed=c)
        path = root / f"r18_{c}.pt"
        torch.save(m.state_dict(), path)
        ckpts.append(str(path))
    return root, ckpts


def test_folder_task(image_folder):
    root, _ = image_folder
    task = FolderTask("imagefolder", str(root), image_size=32, num_workers=0)
    assert task.num_classes == 2 and task.input_shape == (3, 32, 32) and task.train_size() == 8
    batches = list(task.train_batches(3, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert [b[0].shape[0] for b in batches] == [3, 3, 2] and batches[0][0].shape[1:] == (3, 32, 32)
    again = list(task.train_batches(3, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # seeded crops and flips
    workers = FolderTask("imagefolder", str(root), image_size=32, num_workers=2)
    par = list(workers.train_batches(3, torch.Generator().manual_seed(0), torch.device("cpu")))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, par))
    ev = task.eval_data("train", 5, seed=0)
    assert len(ev) == 5 and torch.equal(ev.x, task.eval_data("train", 5, seed=0).x)
    assert task.test_labels().tolist() == [0, 0, 1, 1]
    assert not task.has_val
    with pytest.raises(LandscapeError, match="no validation split"):
        task.labels("val")


def test_folder_validation_split_is_held_out_of_training(image_folder):
    """data.val_fraction: a fixed part of train/ becomes the validation split; training never sees it."""
    root, _ = image_folder
    task = FolderTask("imagefolder", str(root), image_size=32, num_workers=0, val_fraction=0.25)
    full = FolderTask("imagefolder", str(root), image_size=32, num_workers=0)
    assert task.has_val and task.train_size() == 6
    val_x = torch.cat([x for x, _ in task.eval_batches("val", 8, torch.device("cpu"))])
    train_x = task.eval_data("train", None).x
    every = full.eval_data("train", None).x  # the 8 training images, evaluation transforms
    assert val_x.shape[0] == 2 and len(task.labels("val")) == 2
    rows = lambda t: {tuple(r.flatten().tolist()) for r in t}  # noqa: E731
    assert rows(val_x) | rows(train_x) == rows(every) and not rows(val_x) & rows(train_x)
    again = FolderTask("imagefolder", str(root), image_size=32, num_workers=0, val_fraction=0.25)
    assert torch.equal(torch.cat([x for x, _ in again.eval_batches("val", 8, torch.device("cpu"))]), val_x)
    with pytest.raises(LandscapeError, match="leaves no training or no validation"):
        FolderTask("imagefolder", str(root), image_size=32, num_workers=0, val_fraction=0.01)
    with pytest.raises(LandscapeError, match="does not exist"):
        FolderTask("imagefolder", str(root / "missing"))
    with pytest.raises(LandscapeError, match="train/ and test/"):
        FolderTask("imagefolder", str(root / "train"))


def _folder_config(root, ckpts) -> dict:
    return {"study": {"name": "folder", "members": 2, "threads": 1, "eval_batch_size": 4},
            "data": {"kind": "imagefolder", "root": str(root), "image_size": 32, "num_workers": 0,
                     "val_fraction": 0.5},  # 4 training images: one batch (a batch of 2 through BN diverges)
            "model": {"name": "resnet18"}, "pretrain": {"checkpoints": ckpts},
            "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 4}, "scratch": {"enabled": False},
            "methods": {"local_de": {}, "global_de": {}, "starsse": {"lr_scale": 2.0, "cycle_epochs": 1}},
            "analysis": {"line_points": 3, "pairwise_points": 3, "plane": False, "train_samples": 8,
                         "test_samples": 4, "bn_samples": 8,
                         # the tiny study covers sharpness and curves; ResNet-sized inputs make them slow
                         "sharpness": False, "curves": False}}


def test_image_folder_study_with_checkpoint_files(image_folder, tmp_path):
    root, ckpts = image_folder
    summary = run_study(_folder_config(root, ckpts), str(tmp_path / "out"), quiet=True)
    assert set(summary["methods"]) == {"local_de", "global_de", "starsse"}
    per_seed = summary["seeds"]["0"]["methods"]
    for m in per_seed.values():
        assert len(m["ensemble_acc"]) == 2 and len(m["val_ensemble_acc"]) == 2
    assert summary["selection_split"] == "val"  # data.val_fraction holds out part of train/
    assert summary["transfer"]["scratch_acc"]["mean"] is None
    assert (tmp_path / "out" / "report.md").exists()
    # members start from the checkpoint's backbone: the distance to it is small next to its norm
    ck = seeded_build("resnet18", 2, (3, 32, 32), None, 0)
    load_backbone(ck, torch.load(ckpts[0], weights_only=True), "ck")
    assert per_seed["local_de"]["dist_pretrained"][0] < 0.2 * float(backbone_vector(ck).norm())


def test_checkpoint_needing_pickle_is_refused(image_folder, tmp_path, capsys):
    root, ckpts = image_folder
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": seeded_build("resnet18", 7, (3, 32, 32), None, 0).state_dict(),
                "extra": object.__new__(_Opaque)}, bad)
    cfg = _folder_config(root, [str(bad), ckpts[1]])
    path = tmp_path / "study.toml"
    path.write_text(_toml(cfg))
    rc = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "refused" in err and "bad.pt" in err
    assert not (tmp_path / "out").exists()


class _Opaque:
    pass


def _toml(d: dict) -> str:
    lines = []
    for section, table in d.items():
        if section == "methods":
            for name, t in table.items():
                lines.append(f"[methods.{name}]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in t.items()]
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines).replace("= false", "= false").replace("= true", "= true") + "\n"
