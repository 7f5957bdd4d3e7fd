"""A bad study is refused before any work: every numeric config value is checked on load, and a
training run that diverges stops at once. Each refusal is one line naming the key."""
from __future__ import annotations

import os
import time
import tomllib

import pytest
import torch

from experiments.config import load_config, parse_config, shipped_path
from experiments.data import TensorTask
from experiments.study import run_study
from experiments.training import CHECK_EVERY, Hooks, TrainingDiverged, train
from landscape.cli import main
from landscape.core.data import TensorData
from landscape.core.errors import LandscapeError
from landscape.core.models import SmallCNN


def _refused(ref: str, overrides: list[str], *fragments: str, check_paths: bool = True) -> str:
    with pytest.raises(LandscapeError) as exc:
        load_config(ref, overrides, check_paths=check_paths)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"config {ref}.toml: "), msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# ---------------------------------------------------------------------------------------------
# every numeric key: (override, what the message must say)

BAD_RATES = [
    ("finetune.lr=nan", "finetune.lr must be a finite positive number, got nan"),
    ("finetune.lr=inf", "finetune.lr must be a finite positive number, got inf"),
    ("finetune.lr=-inf", "finetune.lr must be a finite positive number, got -inf"),
    ("finetune.lr=0", "finetune.lr must be a finite positive number, got 0.0"),
    ("finetune.lr=-0.1", "finetune.lr must be a finite positive number, got -0.1"),
    ("pretrain.lr=nan", "pretrain.lr must be a finite positive number, got nan"),
    ("scratch.lr=inf", "scratch.lr must be a finite positive number, got inf"),
    ("methods.sse_large.lr_scale=nan", "methods.sse_large.lr_scale must be a finite positive number, got nan"),
    ("methods.starsse_small.lr_scale=-1", "methods.starsse_small.lr_scale must be a finite positive number"),
    ("methods.fge.lr1_scale=inf", "methods.fge.lr1_scale must be a finite positive number, got inf"),
    ("methods.fge.lr2_scale=0", "methods.fge.lr2_scale must be a finite positive number, got 0.0"),
    ("methods.swa.lr_scale=nan", "methods.swa.lr_scale must be a finite positive number, got nan"),
    ("finetune.weight_decay=nan", "finetune.weight_decay must be a finite non-negative number, got nan"),
    ("finetune.weight_decay=-1e-4", "finetune.weight_decay must be a finite non-negative number, got -0.0001"),
    ("pretrain.weight_decay=inf", "pretrain.weight_decay must be a finite non-negative number, got inf"),
    ("finetune.momentum=1.0", "finetune.momentum must be a finite number in [0, 1), got 1.0"),
    ("finetune.momentum=-0.5", "finetune.momentum must be a finite number in [0, 1), got -0.5"),
    ("pretrain.momentum=nan", "pretrain.momentum must be a finite number in [0, 1), got nan"),
    ("data.noise=nan", "data.noise must be a finite non-negative number, got nan"),
    ("data.background=-1.0", "data.background must be a finite non-negative number, got -1.0"),
    ("methods.fge.cycle_epochs=nan", "methods.fge.cycle_epochs must be a finite positive number, got nan"),
    ("methods.fge.cycle_epochs=0", "methods.fge.cycle_epochs must be a finite positive number, got 0.0"),
]

BAD_COUNTS = [
    ("finetune.epochs=0", "finetune.epochs must be a positive integer, got 0"),
    ("finetune.batch_size=-8", "finetune.batch_size must be a positive integer, got -8"),
    ("pretrain.epochs=0", "pretrain.epochs must be a positive integer, got 0"),
    ("pretrain.batch_size=0", "pretrain.batch_size must be a positive integer, got 0"),
    ("pretrain.checkpoints=0", "pretrain.checkpoints must be a positive integer, got 0"),
    ("scratch.epochs=0", "scratch.epochs must be a positive integer, got 0"),
    ("study.members=1", "study.members must be an integer of at least 2, got 1"),
    ("study.eval_batch_size=0", "study.eval_batch_size must be a positive integer, got 0"),
    ("study.threads=-1", "study.threads must be a non-negative integer, got -1"),
    ("study.seed=-1", "study.seed must be an integer in [0, 2**32), got -1"),
    ("data.seed=4294967296", "data.seed must be an integer in [0, 2**32), got 4294967296"),
    ("data.image_size=0", "data.image_size must be a positive integer, got 0"),
    ("data.channels=0", "data.channels must be a positive integer, got 0"),
    ("data.parts=-1", "data.parts must be a positive integer, got -1"),
    ("data.part_size=0", "data.part_size must be a positive integer, got 0"),
    ("data.source_train=0", "data.source_train must be a positive integer, got 0"),
    ("data.target_test=-5", "data.target_test must be a positive integer, got -5"),
    ("data.target_train_per_class=0", "data.target_train_per_class must be a positive integer, got 0"),
    ("data.augment_shift=-1", "data.augment_shift must be a non-negative integer, got -1"),
    ("data.augment_shift=8", "data.augment_shift must be less than the image size (8), got 8"),
    ("data.source_train=100000000", "images (data.source_train + source_test"),
    ("model.width=0", "model.width must be a positive integer, got 0"),
    ("methods.sse_small.cycle_epochs=0", "methods.sse_small.cycle_epochs must be a finite positive number, got 0.0"),
    ("methods.sse_small.cycle_epochs=[1, 0]", "methods.sse_small.(cell sse_small-e0) cycle_epochs must be a finite "
                                              "positive number, got 0.0"),
    ("methods.sse_small.lr_scale=[0.5, 0.5]", "methods.sse_small.lr_scale repeats a value: [0.5, 0.5]"),
    ("methods.fge.schedule='steps'", "methods.fge.schedule must be one of garipov, cyclic, got 'steps'"),
    ("methods.fge.lr_scale=2.0", "methods.fge.lr_scale applies to schedule = \"cyclic\""),
    ("methods.fge_cyclic.lr1_scale=2.0", "methods.fge_cyclic.lr1_scale applies to schedule = \"garipov\" only"),
    ("methods.starsse_small.cycle_scale=1.0", "methods.starsse_small.cycle_scale and cycle_epochs both set the "
                                              "cycle length: give one"),
    ("study.seeds=[1, 1]", "study.seeds must not repeat a seed, got [1, 1]"),
    ("study.seeds=[]", "study.seeds must be a list of integers, got [] (list)"),
    ("study.seeds=[-1]", "study.seeds must be an integer in [0, 2**32), got -1"),
    ("data.target_val=-5", "data.target_val must be a non-negative integer, got -5"),
    ("methods.swa.epochs=0", "methods.swa.epochs must be a positive integer, got 0"),
    ("methods.swa.anneal_epochs=-1", "methods.swa.anneal_epochs must be a non-negative integer, got -1"),
    ("methods.swa.members=0", "methods.swa.members must be a positive integer, got 0"),
    ("methods.local_de.members=1", "methods.local_de.members must be an integer of at least 2, got 1"),
    ("analysis.train_samples=0", "analysis.train_samples must be a positive integer, got 0"),
    ("analysis.test_samples=-1", "analysis.test_samples must be a positive integer, got -1"),
    ("analysis.bn_samples=0", "analysis.bn_samples must be a positive integer, got 0"),
    ("analysis.ece_bins=0", "analysis.ece_bins must be a positive integer, got 0"),
    ("analysis.line_points=2", "analysis.line_points must be an integer of at least 3, got 2"),
    ("analysis.pairwise_points=-3", "analysis.pairwise_points must be an integer of at least 3, got -3"),
    ("analysis.plane_points=1", "analysis.plane_points must be an integer of at least 3, got 1"),
]

BAD_GRIDS = [
    ("analysis.plane_points=1000000000", "analysis.plane_points = 1000000000: the plane of 1000000000 x 1000000000 "
     "points needs"),
    ("analysis.line_points=100000000", "analysis.line_points = 100000000: each line of 100000000 points needs"),
    # one line of 10M points fits; the 3 pairs of a K = 3 method do not
    ("analysis.pairwise_points=10000000", "analysis.pairwise_points = 10000000: methods.local_de's barrier grid of "
     "3 x 10000000 points needs"),
]

BAD_PLANES = [
    ("analysis.plane_through=['local_de', 'nope']", "analysis.plane_through names 'nope', which is not a method"),
    ("analysis.plane_through=['local_de:3', 'fge']", "analysis.plane_through names 'local_de:3': the member index "
     "must be an integer from 0 to 2"),
    ("analysis.plane_through=['local_de:x', 'fge']", "analysis.plane_through names 'local_de:x'"),
    ("analysis.plane_through=['local_de:-1', 'fge']", "analysis.plane_through names 'local_de:-1'"),
    ("analysis.plane_through=['local_de:0', 'fge']", "'local_de:0', which is the fine-tuned model"),
    ("analysis.plane_through=['fge:2', 'fge']", "analysis.plane_through names the same member twice"),
    ("analysis.plane_through=['fge']", "analysis.plane_through must name two methods"),
]


@pytest.mark.parametrize("override,fragment", BAD_RATES, ids=[o for o, _ in BAD_RATES])
def test_bad_rates_are_refused(override, fragment):
    _refused("tiny", [override], fragment)


@pytest.mark.parametrize("override,fragment", BAD_COUNTS, ids=[o for o, _ in BAD_COUNTS])
def test_bad_counts_are_refused(override, fragment):
    _refused("tiny", [override], fragment)


@pytest.mark.parametrize("override,fragment", BAD_GRIDS, ids=[o for o, _ in BAD_GRIDS])
def test_grids_too_large_for_memory_are_refused(override, fragment):
    msg = _refused("tiny", [override], fragment, "the limit is 1 GiB")
    assert "use fewer points" in msg


@pytest.mark.parametrize("override,fragment", BAD_PLANES, ids=[o for o, _ in BAD_PLANES])
def test_bad_plane_members_are_refused(override, fragment):
    _refused("tiny", [override], fragment)


def test_a_cycle_lr_that_overflows_is_refused():
    # both values are valid alone; their product (the cycle lr) is inf
    _refused("tiny", ["finetune.lr=1e300", "methods.sse_large.lr_scale=1e10"],
             "finetune.lr × methods.sse_large.lr_scale must be a finite positive number, got inf")


@pytest.mark.parametrize("override,fragment", [
    ("data.image_size=0", "data.image_size must be a positive integer, got 0"),
    ("data.num_workers=-1", "data.num_workers must be a non-negative integer, got -1"),
    ("finetune.lr=nan", "finetune.lr must be a finite positive number, got nan"),
    ("methods.starsse_x2.lr_scale=inf", "methods.starsse_x2.lr_scale must be a finite positive number, got inf"),
])
def test_real_data_configs_are_checked_too(override, fragment):
    _refused("cifar100_resnet50", [override], fragment, check_paths=False)


def test_parse_config_refuses_a_parsed_document():
    with open(shipped_path("tiny"), "rb") as f:
        raw = tomllib.load(f)
    raw["finetune"]["lr"] = float("nan")
    with pytest.raises(LandscapeError, match=r"^config mine\.toml: finetune\.lr must be a finite positive number, "
                                             r"got nan$"):
        parse_config(raw, "mine.toml")
    raw["finetune"]["lr"] = 0.02
    raw["analysis"]["plane_points"] = 10**9
    with pytest.raises(LandscapeError, match=r"^config mine\.toml: analysis\.plane_points = 1000000000: the plane"):
        parse_config(raw, "mine.toml")


def test_edge_values_that_make_sense_are_accepted():
    cfg = load_config("tiny", ["finetune.momentum=0.0", "finetune.weight_decay=0.0", "pretrain.momentum=0.99",
                               "data.augment_shift=0", "study.threads=0", "methods.swa.anneal_epochs=0",
                               "methods.fge.cycle_epochs=0.5", "study.seed=4294967295",
                               # SWA's member 0 is an SWA run, not the fine-tuned model
                               "analysis.plane_through=['local_de:1', 'swa:0']"])
    assert cfg["finetune"]["momentum"] == 0.0 and cfg["analysis"]["plane_through"] == ["local_de:1", "swa:0"]
    for name in ("demo", "demo_quick", "tiny"):
        load_config(name)
    for name in ("cifar10_resnet50", "cifar100_resnet50"):
        load_config(name, check_paths=False)


def test_a_refused_config_starts_no_work(tmp_path):
    started = []
    with pytest.raises(LandscapeError, match="finetune.lr must be a finite positive number, got nan"):
        run_study("tiny", str(tmp_path / "o"), quiet=True, overrides=["finetune.lr=nan"],
                  hooks=Hooks(unit_start=lambda u, *a: started.append(u.name)))
    assert started == [] and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# through the CLI: exit status 2, one line on stderr, nothing in the output folder


def _cli_refuses(capsys, argv: list[str], *fragments: str) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.count("\n") == 0, f"not one line: {err!r}"
    assert err.startswith("landscape: error: ")
    for frag in fragments:
        assert frag in err, (frag, err)
    return err


@pytest.mark.parametrize("override,fragment", [
    ("finetune.lr=nan", "config demo_quick.toml: finetune.lr must be a finite positive number, got nan"),
    ("analysis.plane_points=1000000000", "config demo_quick.toml: analysis.plane_points = 1000000000: the plane"),
    ("finetune.momentum=1.5", "config demo_quick.toml: finetune.momentum must be a finite number in [0, 1), got 1.5"),
    ("methods.sse.lr_scale=inf", "methods.sse.lr_scale must be a finite positive number, got inf"),
    ("methods.sse.lr_scale=[0.5, inf]", "methods.sse.(cell sse-lrinf) lr_scale must be a finite positive number, got inf"),
])
def test_cli_refuses_before_writing_anything(capsys, tmp_path, override, fragment):
    out = tmp_path / "o"
    _cli_refuses(capsys, ["run", "demo_quick", "--out", str(out), "--set", override], fragment)
    assert not out.exists()
    # an existing empty folder stays empty
    out.mkdir()
    _cli_refuses(capsys, ["run", "demo_quick", "--out", str(out), "--set", override], fragment)
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------
# divergence during training


def _toy_task(n: int = 48) -> TensorTask:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 8, 8, generator=g)
    y = torch.arange(n) % 4
    return TensorTask("toy", TensorData(x, y, "toy", 4), TensorData(x[:16], y[:16], "toy", 4), 4)


def test_divergence_stops_within_a_few_steps():
    """A weight poisoned at step 40 is noticed within CHECK_EVERY steps, not after 600 steps."""
    task, model = _toy_task(), SmallCNN(4, 3, width=4)
    steps = []

    def step(unit, i, lr, model, opt):
        steps.append(i)
        if i == 40:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(TrainingDiverged) as exc:
        train(model, task, opt, iterations=600, batch_size=8, generator=torch.Generator().manual_seed(0),
              device=torch.device("cpu"), hooks=Hooks(step=step), unit="toy-run", iters_per_epoch=6)
    assert 40 <= steps[-1] < 40 + CHECK_EVERY
    # step 40 is in epoch 7 (6 steps per epoch); the check that notices it is at that epoch's end
    assert str(exc.value) == "unit toy-run: training diverged at epoch 7 (loss nan); lower the learning rate"
    assert isinstance(exc.value, LandscapeError) and exc.value.exit_code == 2


def test_divergence_is_noticed_between_epoch_ends():
    """With long epochs the loss is still read every CHECK_EVERY steps."""
    task, model = _toy_task(), SmallCNN(4, 3, width=4)
    steps = []

    def step(unit, i, lr, model, opt):
        steps.append(i)
        if i == 3:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(TrainingDiverged, match=r"^my run: training diverged at epoch 1 \(loss nan\); lower the "
                                               r"learning rate \(try 0\.001\)$"):
        train(model, task, opt, iterations=1000, batch_size=8, generator=torch.Generator().manual_seed(0),
              device=torch.device("cpu"), hooks=Hooks(step=step), iters_per_epoch=500, what="my run",
              hint="(try 0.001)")
    assert steps[-1] == CHECK_EVERY - 1


def test_a_healthy_run_reports_its_loss():
    task, model = _toy_task(), SmallCNN(4, 3, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    info = train(model, task, opt, iterations=20, batch_size=8, generator=torch.Generator().manual_seed(0),
                 device=torch.device("cpu"))
    assert info.iterations == 20 and 0 < info.loss < 10


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("overrides,fragment", [
    (["pretrain.lr=1e6"], "config tiny.toml, unit pretrain-0: training diverged at epoch 1 (loss nan); lower the "
                          "learning rate (pretrain.lr; this run's lr 1e+06)"),
    (["finetune.lr=1e6", "scratch.enabled=false"], "config tiny.toml, unit ft-0-0: training diverged at epoch "),
    (["finetune.lr=1e6"], "lower the learning rate (scratch.lr, which defaults to finetune.lr; this run's lr 1e+06)"),
])
def test_cli_stops_a_diverged_study_at_once(capsys, tmp_path, private_cache, overrides, fragment):
    out = tmp_path / "o"
    started = time.perf_counter()
    sets = [a for o in overrides for a in ("--set", o)]
    err = _cli_refuses(capsys, ["run", "tiny", "--out", str(out), "--quiet", "--no-cache", *sets], fragment)
    assert "(loss nan)" in err or "(loss inf)" in err
    assert time.perf_counter() - started < 60
    # the units finished before the divergence are kept for a rerun; no report was made
    assert not (out / "summary.json").exists() and not (out / "report.md").exists()
