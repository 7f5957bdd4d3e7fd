"""Paper-scale training on a GPU, tested on the CPU: the [runtime] table (bf16 autocast with fp32
master weights, channels_last, cudnn.benchmark, gradient accumulation, pinned memory and
persistent DataLoader workers), the runtime estimate, and checkpoints with extra keys
(pretrain.ignore_keys, --ignore-keys)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments import accel
from experiments.accel import apply_runtime
from experiments.config import load_config
from experiments.data import FolderTask, TensorTask
from experiments.estimate import (
    TrainingEstimate,
    estimate_training,
    format_minutes,
    iterations_for,
    measure_seconds_per_iteration,
)
from experiments.loaders import LoaderOptions, loader_options
from experiments.models import backbone_vector, build, head_name, load_backbone
from experiments.training import is_channels_last, to_fast_layout, train
from landscape.cli import main
from landscape.core.data import TensorData
from landscape.core.errors import LandscapeError
from landscape.core.models import build_model

CPU = torch.device("cpu")


def _task(n: int = 24, classes: int = 4, shape=(3, 8, 8), dtype=torch.float32, seed: int = 0) -> TensorTask:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).to(dtype)
    y = torch.arange(n) % classes
    d = TensorData(x, y, "t", classes)
    return TensorTask("t", d, d, classes)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------
# the [runtime] table


@pytest.mark.parametrize("override,fragment", [
    ("runtime.amp='fp16'", "runtime.amp must be one of 'auto', 'bf16', 'off'"),
    ("runtime.amp=true", "runtime.amp must be a string"),
    ("runtime.channels_last='yes'", 'runtime.channels_last must be a boolean or "auto"'),
    ("runtime.channels_last=1", 'runtime.channels_last must be a boolean or "auto"'),
    ("runtime.cudnn_benchmark='auto'", "runtime.cudnn_benchmark must be a boolean"),
    ("runtime.micro_batch_size=0", "runtime.micro_batch_size must be a positive integer"),
    ("runtime.micro_batch_size=-4", "runtime.micro_batch_size must be a positive integer"),
    ("runtime.micro_batch_size=2.5", "runtime.micro_batch_size must be an integer"),
    ("runtime.micro_batch_size=true", "runtime.micro_batch_size must be an integer"),
    ("runtime.pin_memory='always'", 'runtime.pin_memory must be a boolean or "auto"'),
    ("runtime.persistent_workers=2", 'runtime.persistent_workers must be a boolean or "auto"'),
    ("runtime.compile=true", "unknown key runtime.'compile'"),
    ("runtime.micro_batch=8", "did you mean 'micro_batch_size'"),
])
def test_runtime_values_are_refused_in_one_line_naming_the_key(override, fragment):
    with pytest.raises(LandscapeError) as exc:
        load_config("cifar100_resnet50", [override], check_paths=False)
    assert fragment in _one_line(exc)


def test_runtime_defaults_loader_keys_and_the_fingerprint():
    cfg = load_config("tiny")
    assert cfg["runtime"] == {"amp": "auto", "channels_last": "auto", "cudnn_benchmark": True,
                              "micro_batch_size": None, "pin_memory": "auto", "persistent_workers": "auto"}
    # DataLoader keys do not apply to the embedded data (no DataLoader): refused, not ignored
    for key in ("pin_memory", "persistent_workers"):
        with pytest.raises(LandscapeError) as exc:
            load_config("tiny", [f"runtime.{key}=true"])
        assert f"runtime.{key} only applies to image-folder data" in _one_line(exc)
    # how a study runs is not what it is: the runtime table and ignore_keys leave the fingerprint alone
    tuned = load_config("tiny", ["runtime.amp='bf16'", "runtime.micro_batch_size=8", "runtime.channels_last=false",
                                 "runtime.cudnn_benchmark=false"])
    assert tuned["runtime"]["micro_batch_size"] == 8 and tuned.fingerprint() == cfg.fingerprint()
    sup = load_config("cifar100_resnet50", check_paths=False)
    assert sup["pretrain"]["ignore_keys"] == []
    assert load_config("cifar100_resnet50", ['pretrain.ignore_keys=["projector."]', "runtime.pin_memory=false"],
                       check_paths=False).fingerprint() == sup.fingerprint()


def test_byol_config_follows_the_official_recipe():
    sup = load_config("cifar100_resnet50", check_paths=False)
    byol = load_config("cifar100_resnet50_byol", check_paths=False)
    ft = byol["finetune"]
    assert (ft["lr"], ft["weight_decay"], ft["epochs"], ft["momentum"]) == (0.05, 1e-4, 25, 0.9)
    assert ft["batch_size"] == sup["finetune"]["batch_size"] == 256
    assert byol["pretrain"]["ignore_keys"] == ["projector.", "predictor."]
    assert len(byol["pretrain"]["checkpoints"]) == 5 and byol["model"]["name"] == "resnet50"
    assert (byol["data"]["kind"], byol["data"]["image_size"]) == ("cifar100", 224)
    # the same SSE/StarSSE/FGE/SWA grid, relative to this recipe's lr
    grid = lambda cfg: sorted((m.name, m.type, json.dumps(m.params, sort_keys=True)) for m in cfg.methods)  # noqa: E731
    assert grid(byol) == grid(sup)
    lrs = sorted(ft["lr"] * m.params["lr_scale"] for m in byol.methods if m.type == "starsse")
    assert lrs == pytest.approx([0.0125, 0.025, 0.05, 0.1, 0.2])
    assert byol.fingerprint() != sup.fingerprint()


@pytest.mark.parametrize("override,fragment", [
    ("pretrain.ignore_keys='projector.'", "pretrain.ignore_keys must be a list of strings"),
    ("pretrain.ignore_keys=[1]", "pretrain.ignore_keys must be a list of strings"),
    ("pretrain.ignore_keys=['projector.', ' ']", "pretrain.ignore_keys holds an empty prefix"),
])
def test_ignore_keys_config_is_validated(override, fragment):
    with pytest.raises(LandscapeError) as exc:
        load_config("cifar100_resnet50_byol", [override], check_paths=False)
    assert fragment in _one_line(exc)
    with pytest.raises(LandscapeError) as exc:
        load_config("tiny", ["pretrain.ignore_keys=['projector.']"])
    assert "pretrain.ignore_keys only applies to checkpoint files" in _one_line(exc)


def test_amp_resolution_and_apply_runtime(monkeypatch):
    assert accel.amp_dtype("auto", CPU) is None and accel.amp_dtype("off", CPU) is None
    assert accel.amp_dtype("bf16", CPU) is torch.bfloat16
    cuda = torch.device("cuda")
    monkeypatch.setattr(accel, "bf16_supported", lambda device: True)
    assert accel.amp_dtype("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(accel, "bf16_supported", lambda device: torch.device(device).type == "cpu")
    assert accel.amp_dtype("auto", cuda) is None  # a GPU without bf16: fp32, not fp16 without a scaler
    with pytest.raises(LandscapeError) as exc:
        accel.amp_dtype("bf16", cuda)
    assert "does not support bfloat16" in _one_line(exc)
    monkeypatch.setattr(accel, "bf16_supported", lambda device: True)
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        rt = apply_runtime(None, CPU)  # on the CPU: cudnn untouched, fp32
        assert not torch.backends.cudnn.benchmark and rt.dtype is None
        assert rt.train_kwargs() == {"amp": "auto", "micro_batch_size": None}
        rt = apply_runtime({"micro_batch_size": 16}, cuda)
        assert torch.backends.cudnn.benchmark and rt.dtype is torch.bfloat16
        assert rt.train_kwargs() == {"amp": "auto", "micro_batch_size": 16}
        assert "bf16 autocast" in rt.describe() and "cudnn.benchmark" in rt.describe()
        apply_runtime({"cudnn_benchmark": False}, cuda)
        assert not torch.backends.cudnn.benchmark
        rt = apply_runtime({}, cuda)
        assert torch.backends.cudnn.benchmark
        rt.restore()  # when training ends, before analyses that must match across processes
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = before


# ----------------------------------------------------------------------------------------------
# bf16 autocast with fp32 master weights


def test_bf16_autocast_trains_with_fp32_weights():
    torch.manual_seed(0)
    model = build("tiny_cnn", 4, (3, 8, 8))
    task = _task()
    seen: list[torch.dtype] = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    first = train(model, task, opt, iterations=1, batch_size=8, generator=torch.Generator().manual_seed(0),
                  device=CPU, amp="bf16")
    info = train(model, task, opt, iterations=60, batch_size=8, generator=torch.Generator().manual_seed(1),
                 device=CPU, amp="bf16")
    assert set(seen) == {torch.bfloat16}  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(s["momentum_buffer"].dtype == torch.float32 for s in opt.state.values())
    assert np.isfinite(info.loss) and info.loss < first.loss  # it trains


def test_amp_auto_on_the_cpu_is_todays_fp32_path_bit_for_bit():
    runs = []
    for kwargs in ({}, {"amp": "auto"}, {"amp": "off", "micro_batch_size": None}, {"micro_batch_size": 8}):
        torch.manual_seed(0)
        model = to_fast_layout(build("tiny_cnn", 4, (3, 8, 8)), CPU)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        train(model, _task(), opt, iterations=6, batch_size=8, generator=torch.Generator().manual_seed(0),
              device=CPU, **kwargs)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    for r in runs[1:]:  # micro-batches as large as the batch: the plain step too
        assert torch.equal(r, runs[0])


# ----------------------------------------------------------------------------------------------
# gradient accumulation


class _NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.max_pool2d(torch.tanh(self.conv(x)), 2).flatten(1))


def test_micro_batches_give_the_full_batch_step_without_bn():
    torch.manual_seed(0)
    start = _NoBN().double()
    task = _task(n=20, dtype=torch.float64)
    batch, micro, steps = 10, 3, 4  # micro-batches 3, 3, 3, 1: uneven on purpose

    # the reference: plain torch, full batches drawn from the same generator
    ref = _NoBN().double()
    ref.load_state_dict(start.state_dict())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    g = torch.Generator().manual_seed(7)
    batches = []
    while len(batches) < steps:
        batches += list(task.train_batches(batch, g, CPU))
    for x, y in batches[:steps]:
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()

    model = _NoBN().double()
    model.load_state_dict(start.state_dict())
    sizes: list[int] = []
    model.conv.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    train(model, task, opt, iterations=steps, batch_size=batch, generator=torch.Generator().manual_seed(7),
          device=CPU, micro_batch_size=micro)
    assert sizes == [3, 3, 3, 1] * steps  # it did accumulate
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-13, msg=name)
    assert not torch.equal(model.fc.weight, start.fc.weight)


# ----------------------------------------------------------------------------------------------
# channels_last


def test_channels_last_layout_on_cpu_and_cuda_and_inputs_follow():
    cnn = build("tiny_cnn", 4, (3, 8, 8))
    assert is_channels_last(to_fast_layout(cnn, CPU))
    assert is_channels_last(to_fast_layout(build("tiny_cnn", 4, (3, 8, 8)), torch.device("cuda")))  # auto: CUDA too
    assert not is_channels_last(to_fast_layout(build("tiny_cnn", 4, (3, 8, 8)), CPU, channels_last=False))
    assert is_channels_last(to_fast_layout(build("tiny_cnn", 4, (3, 8, 8)), torch.device("mps"), channels_last=True))
    assert not is_channels_last(to_fast_layout(build("tiny_cnn", 4, (3, 8, 8)), torch.device("mps")))
    mlp = build_model("mlp", 4, (3, 8, 8))
    assert all(p.is_contiguous() for p in to_fast_layout(mlp, CPU, channels_last=True).parameters())
    inputs: list[bool] = []
    conv = next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: inputs.append(
        i[0].is_contiguous(memory_format=torch.channels_last) and not i[0].is_contiguous()))
    opt = torch.optim.SGD(cnn.parameters(), lr=0.01)
    train(cnn, _task(), opt, iterations=2, batch_size=8, generator=torch.Generator().manual_seed(0), device=CPU,
          amp="bf16", micro_batch_size=3)
    assert inputs and all(inputs)


# ----------------------------------------------------------------------------------------------
# DataLoaders of image folders: pinned memory, persistent workers


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 7), ("test", 3)):
        for c in ("a", "b"):
            os.makedirs(root / split / c)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return str(root)


def test_loader_options_resolve_auto():
    assert loader_options({"pin_memory": "auto", "persistent_workers": "auto"}, CPU, 4) == LoaderOptions(False, False)
    assert loader_options({}, torch.device("cuda"), 4) == LoaderOptions(True, True)
    assert loader_options({}, torch.device("cuda"), 0) == LoaderOptions(True, False)  # no workers to keep
    assert loader_options({"pin_memory": False, "persistent_workers": True}, CPU, 2) == LoaderOptions(False, True)


def test_persistent_workers_give_the_same_batches_and_generator(image_folder):
    def epochs(task, seed, k, stop=None):
        g, out = torch.Generator().manual_seed(seed), []
        for e in range(k):
            for j, (x, y) in enumerate(task.train_batches(4, g, CPU)):
                out.append((x, y))
                if stop is not None and j == stop:
                    return out, g
        return out, g

    plain = FolderTask("imagefolder", image_folder, image_size=8, num_workers=2)
    kept = FolderTask("imagefolder", image_folder, image_size=8, num_workers=2)
    apply_runtime({"persistent_workers": True, "pin_memory": False}, CPU, kept, None)
    assert kept.loaders.options == LoaderOptions(False, True)
    ref, g_ref = epochs(plain, 1, 3)
    epochs(kept, 5, 1, stop=0)  # an epoch left half-way (as a timing run leaves it)
    got, g_got = epochs(kept, 1, 3)
    assert len(got) == len(ref) == 12
    for (x0, y0), (x1, y1) in zip(ref, got):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert torch.equal(g_ref.get_state(), g_got.get_state())
    loaders = [entry[1] for entry in kept.loaders._persistent.values()]
    assert len(loaders) == 1 and loaders[0].loader.persistent_workers  # one loader, reused epoch after epoch
    # test batches: the same, and the global RNG moves as it did
    for task in (plain, kept):
        torch.manual_seed(3)
        batches = [x for _ in range(2) for x, _ in task.test_batches(4, CPU)]
        task.rng = torch.get_rng_state()
        task.seen = batches
    assert all(torch.equal(a, b) for a, b in zip(plain.seen, kept.seen)) and torch.equal(plain.rng, kept.rng)


# ----------------------------------------------------------------------------------------------
# the runtime estimate


def test_estimate_arithmetic_and_format():
    est = estimate_training([100, 200, 50], 0.15, "cuda:0 (NVIDIA H100 80GB HBM3)")
    assert (est.units, est.iterations) == (3, 350) and est.seconds == pytest.approx(52.5)
    assert str(est) == ("estimated training time: ~0.9 min for 3 units (350 iterations at 150 ms/iteration, "
                        "measured on cuda:0 (NVIDIA H100 80GB HBM3))")
    big = estimate_training([196 * 25] * 50, 0.1471, "cuda:0 (H100)")
    assert big.seconds == pytest.approx(196 * 25 * 50 * 0.1471)
    assert str(big) == ("estimated training time: ~601 min (~10.0 h) for 50 units (245,000 iterations at "
                        "147 ms/iteration, measured on cuda:0 (H100))")
    scaled = estimate_training([10, 10], 0.02, "cpu (2 threads)", batch_sizes=[64, 32], measured_batch_size=64)
    assert scaled.seconds == pytest.approx(10 * 0.02 + 10 * 0.01)
    assert "20 ms/iteration of batch 64, scaled to each unit's batch size" in str(scaled)
    assert str(estimate_training([], 0.1, "cpu")) == "estimated training time: nothing left to train"
    assert format_minutes(30) == "~0.5 min" and format_minutes(37 * 60) == "~37 min"
    assert iterations_for(2.5, 10) == 25 and iterations_for(25, 196) == 4900 and iterations_for(0.5, 3) == 2
    for bad in (dict(iterations=[-1], seconds_per_iteration=0.1), dict(iterations=[1], seconds_per_iteration=float("nan")),
                dict(iterations=[1], seconds_per_iteration=0.1, batch_sizes=[1])):
        with pytest.raises(LandscapeError):
            estimate_training(device="cpu", **bad)
    assert isinstance(est, TrainingEstimate)


def test_measured_seconds_per_iteration_leave_the_model_and_rng_alone():
    torch.manual_seed(0)
    model = nn.Sequential(to_fast_layout(build("tiny_cnn", 4, (3, 8, 8)), CPU), nn.Dropout(0.2))  # draws from the RNG
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # buffers a training step would move
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    secs = measure_seconds_per_iteration(model, _task(), batch_size=8, device=CPU, warmup=2, timed=4,
                                         amp="bf16", micro_batch_size=4)
    assert 0 < secs < 5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())


# ----------------------------------------------------------------------------------------------
# checkpoints with extra keys


def _byol_like(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {**state, "projector.0.weight": torch.randn(8, 4, generator=g), "projector.1.running_mean": torch.zeros(8),
            "predictor.0.weight": torch.randn(4, 8, generator=g)}


def test_pretrain_ignore_keys_loads_the_same_backbone():
    torch.manual_seed(1)
    pre = build("tiny_cnn", 6, (3, 8, 8))  # another task's head: not loaded either way
    clean = pre.state_dict()
    extra = _byol_like(clean)
    fresh = lambda: build("tiny_cnn", 4, (3, 8, 8))  # noqa: E731
    with pytest.raises(LandscapeError) as exc:
        load_backbone(fresh(), extra, "seed0.pt")
    text = _one_line(exc)
    assert "unexpected key 'projector.0.weight' and 2 more" in text
    assert 'pretrain.ignore_keys = ["projector.", "predictor."]' in text
    with pytest.raises(LandscapeError) as exc:  # a prefix that does not cover every extra key
        load_backbone(fresh(), extra, "seed0.pt", ignore_keys=["projector."])
    assert "unexpected key 'predictor.0.weight'" in _one_line(exc)
    a, b = fresh(), fresh()
    assert load_backbone(a, clean, "clean.pt") == []
    skipped = load_backbone(b, extra, "seed0.pt", ignore_keys=["projector.", "predictor."])
    assert skipped == ["projector.0.weight", "projector.1.running_mean", "predictor.0.weight"]
    assert torch.equal(backbone_vector(a), backbone_vector(b))
    assert torch.equal(backbone_vector(a), backbone_vector(pre))
    head = head_name(a)
    for k, v in a.state_dict().items():  # BN buffers too
        assert k.startswith(head) or torch.equal(v, b.state_dict()[k]), k


@pytest.fixture()
def ckpts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.randn(40, 3, 8, 8, generator=g), "y": torch.randint(0, 4, (40,), generator=g)}, "d.pt")
    for i in range(2):
        torch.manual_seed(i)
        state = build_model("tiny_cnn", 4, (3, 8, 8)).state_dict()
        torch.save(state, f"m{i}.pt")
        torch.save({"state_dict": _byol_like(state)}, f"byol{i}.pt")
    return tmp_path


COMMON = ["--model", "tiny_cnn", "--num-classes", "4", "--data", "tensors:d.pt", "--quiet"]


def test_cli_ignore_keys_refuses_then_loads_and_lists(ckpts, capsys):
    code = main(["interpolate", "byol0.pt", "byol1.pt", *COMMON, "--num", "3"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "unexpected key 'projector.0.weight' and 2 more" in err
    assert "--ignore-keys projector.,predictor." in err
    code = main(["interpolate", "byol0.pt", "byol1.pt", *COMMON, "--num", "3", "--ignore-keys", "projector.",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "unexpected key 'predictor.0.weight'" in err and "--ignore-keys predictor." in err

    assert main(["interpolate", "m0.pt", "m1.pt", *COMMON, "--num", "3", "--json"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert "ignored_keys" not in clean
    assert main(["interpolate", "byol0.pt", "byol1.pt", *COMMON, "--num", "3", "--json",
                 "--ignore-keys", "projector.,predictor."]) == 0
    got = json.loads(capsys.readouterr().out)
    keys = ["projector.0.weight", "projector.1.running_mean", "predictor.0.weight"]
    assert got["ignored_keys"] == {"byol0.pt": keys, "byol1.pt": keys}
    for metric in ("train_loss", "train_acc"):
        assert got[metric] == clean[metric]
    # the text lists them too; repeated options add up; the ensemble command takes it as well
    assert main(["ensemble", "byol0.pt", "byol1.pt", "--model", "tiny_cnn", "--num-classes", "4", "--data",
                 "tensors:d.pt", "--quiet", "--ignore-keys", "projector.", "--ignore-keys", "predictor."]) == 0
    text = capsys.readouterr().out
    assert re.search(r"ignored 3 keys of byol0\.pt \(--ignore-keys\): projector\.0\.weight, "
                     r"projector\.1\.running_mean, predictor\.0\.weight", text)
    with pytest.raises(SystemExit):
        main(["interpolate", "byol0.pt", "byol1.pt", *COMMON, "--ignore-keys", "projector.,,predictor."])
    assert "empty prefix" in capsys.readouterr().err
