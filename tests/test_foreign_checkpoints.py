"""Checkpoints saved by other tools load as they are, with exactly the numbers of the plain state
dict: a PyTorch Lightning checkpoint (the network as the LightningModule's `self.model`, nested
under `state_dict` beside the trainer's state), a torch.compile'd model's state dict (`_orig_mod.`),
DataParallel/DDP's `module.`, chains of them, and Hugging Face safetensors files. A whole pickled
model, a file that is not a checkpoint and keys that fit under no prefix are one-line refusals."""
from __future__ import annotations

import copy
import json
import textwrap

import pytest
import torch
from torch import nn

from landscape import api
from landscape.cli import main
from landscape.core.checkpoints import KeyFilter, apply_state_dict, check_state_fits, read_state_dict

USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=3, width=4):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(2, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                          nn.AdaptiveAvgPool2d(2))
            self.classifier = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x).flatten(1))


    class Wrapper(nn.Module):  # a user's own model whose keys really start with "model."
        def __init__(self, num_classes=3):
            super().__init__()
            self.model = Net(num_classes)

        def forward(self, x):
            return self.model(x)


    def make(num_classes=3, **_):
        return Net(num_classes)


    def wrapped(num_classes=3, **_):
        return Wrapper(num_classes)
""")

MODULE = "foreign_ckpt_user_model"
WORK_FILES = {f"{MODULE}.py": USER_MODULE}


class LitClassifier(nn.Module):
    """What a LightningModule holding the network as `self.model` puts in a checkpoint's
    `state_dict` (LightningModule.state_dict is nn.Module's): the network's keys under "model.".
    `extra`: more modules beside it (an EMA copy, a projector) whose keys come along."""

    def __init__(self, net: nn.Module, **extra: nn.Module) -> None:
        super().__init__()
        self.model = net
        self.criterion = nn.CrossEntropyLoss()  # holds no state, as in most LightningModules
        for name, module in extra.items():
            self.add_module(name, module)


def lightning_checkpoint(module: nn.Module) -> dict:
    """A checkpoint dict laid out as Lightning's Trainer.save_checkpoint saves one
    (lightning.pytorch.trainer.connectors.checkpoint_connector.dump_checkpoint): epoch, global
    step, version, the module's state_dict, the loops' progress, the callbacks' state, the
    optimizers' and schedulers' state dicts and the hyper-parameters."""
    opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    for p in module.parameters():  # a step that leaves the weights as they are, with momentum buffers
        p.grad = torch.zeros_like(p)
    opt.step()
    sched.step()
    progress = {"total": {"ready": 6, "completed": 6, "started": 6, "processed": 6},
                "current": {"ready": 2, "completed": 2, "started": 2, "processed": 2}}
    return {
        "epoch": 2,
        "global_step": 6,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": module.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 6},
                               "epoch_loop.batch_progress": {**progress, "is_last_batch": True},
                               "epoch_progress": progress},
                  "validate_loop": {"state_dict": {}, "batch_progress": progress},
                  "test_loop": {"state_dict": {}}, "predict_loop": {"state_dict": {}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
                      "'every_n_epochs': 1, 'train_time_interval': None}":
                      {"monitor": "val_loss", "best_model_score": torch.tensor(0.52), "best_model_path":
                       "/runs/epoch=2-step=6.ckpt", "current_score": torch.tensor(0.52), "dirpath": "/runs",
                       "best_k_models": {"/runs/epoch=2-step=6.ckpt": torch.tensor(0.52)},
                       "kth_best_model_path": "/runs/epoch=2-step=6.ckpt", "kth_value": torch.tensor(0.52),
                       "last_model_path": ""}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [sched.state_dict()],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.1, "num_classes": 3},
    }


def make_work(tmp_path):
    """Train/test tensors and two checkpoints of the user's Net (a.pt, b.pt, BN buffers set), then
    b saved by each of the other tools."""
    import foreign_ckpt_user_model as user
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 2, 6, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    torch.save({"x": x[:30], "y": y[:30]}, tmp_path / "train.pt")
    torch.save({"x": x[30:], "y": y[30:]}, tmp_path / "test.pt")
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = user.make()
        bn = net.features[1]
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 1.5), bn.num_batches_tracked.fill_(7)
        nets.append(net)
    a, b = nets
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    torch.save(lightning_checkpoint(LitClassifier(b)), tmp_path / "lightning.ckpt")
    torch.save(torch.compile(b).state_dict(), tmp_path / "compiled.pt")  # wraps; compiles only when called
    torch.save(nn.DataParallel(b).state_dict(), tmp_path / "dataparallel.pt")
    torch.save({f"module.{k}": v for k, v in b.state_dict().items()}, tmp_path / "ddp.pt")
    torch.save(lightning_checkpoint(LitClassifier(torch.compile(b))), tmp_path / "lightning_compiled.ckpt")
    save_file(b.state_dict(), str(tmp_path / "b.safetensors"))
    save_file(LitClassifier(b).state_dict(), str(tmp_path / "lightning.safetensors"))
    torch.manual_seed(5)
    ema = user.make()
    torch.save(lightning_checkpoint(LitClassifier(b, ema=ema)), tmp_path / "lightning_ema.ckpt")
    torch.save(lightning_checkpoint(LitClassifier(b, projector=nn.Linear(16, 8))), tmp_path / "lightning_proj.ckpt")
    torch.save(lightning_checkpoint(LitClassifier(user.Net(3, width=6))), tmp_path / "lightning_wide.ckpt")
    byol = copy.deepcopy(b)  # a network with a projector beside the classifier, compiled
    byol.add_module("projector", nn.Linear(16, 8))
    torch.save(torch.compile(byol).state_dict(), tmp_path / "compiled_proj.pt")


COMMON = ["--model", f"{MODULE}:make", "--data", "tensors:train.pt", "--test-data", "tensors:test.pt",
          "--num", "5", "--quiet"]
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def numbers(capsys, b: str, *extra: str) -> dict:
    code, out, err = run(capsys, "interpolate", "a.pt", b, *COMMON, *extra, "--json")
    assert code == 0, err
    res = json.loads(out)
    return {**{m: res[m] for m in METRICS}, "barriers": res["barriers"], "alphas": res["alphas"]}


def refused(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("landscape: error:"), (code, err)
    return lines[0]


@pytest.mark.parametrize("ckpt", ["lightning.ckpt", "compiled.pt", "dataparallel.pt", "ddp.pt",
                                  "lightning_compiled.ckpt", "b.safetensors", "lightning.safetensors"])
def test_foreign_checkpoint_gives_the_numbers_of_the_plain_state_dict(work, capsys, ckpt):
    assert numbers(capsys, ckpt) == numbers(capsys, "b.pt")


def test_the_files_are_what_the_tools_write(work):
    lit = torch.load("lightning.ckpt", weights_only=True)
    assert {"epoch", "global_step", "state_dict", "optimizer_states", "callbacks", "loops"} <= set(lit)
    assert next(iter(lit["state_dict"])) == "model.features.0.weight"
    assert next(iter(torch.load("compiled.pt", weights_only=True))) == "_orig_mod.features.0.weight"
    assert next(iter(torch.load("dataparallel.pt", weights_only=True))) == "module.features.0.weight"
    assert next(iter(torch.load("lightning_compiled.ckpt", weights_only=True)["state_dict"])) == \
        "model._orig_mod.features.0.weight"


def test_the_stripped_prefix_is_recorded(work):
    s = api.setup(f"{MODULE}:make", "tensors:train.pt", snapshots=["lightning.ckpt"])
    snaps = s.snapshots(["a.pt", "lightning.ckpt", "compiled.pt", "ddp.pt", "lightning_compiled.ckpt",
                         "b.safetensors"])
    assert s.keys.stripped == {"lightning.ckpt": "model.", "compiled.pt": "_orig_mod.", "ddp.pt": "module.",
                               "lightning_compiled.ckpt": "model._orig_mod."}
    assert s.keys.skipped == {}
    assert len({sn.fingerprint() for sn in snaps[1:]}) == 1  # b, however it was saved
    # the state as read keeps the file's keys; loading it strips and records, returning the prefix
    keys = KeyFilter()
    state = read_state_dict("lightning.ckpt", keys=keys)
    assert next(iter(state)) == "model.features.0.weight"
    import foreign_ckpt_user_model as user
    assert apply_state_dict(user.make(), state, "lightning.ckpt") == "model."
    assert keys.stripped == {"lightning.ckpt": "model."}
    assert apply_state_dict(user.make(), read_state_dict("b.pt", keys=keys), "b.pt") == ""
    assert keys.stripped == {"lightning.ckpt": "model."}


def test_a_prefix_is_stripped_only_when_that_makes_the_keys_fit(work, capsys):
    import foreign_ckpt_user_model as user
    # a user's model whose keys really start with "model.": its own state dict loads as it is
    wrapper = user.wrapped()
    torch.save(wrapper.state_dict(), "wrapper.pt")
    keys = KeyFilter()
    into = user.wrapped()
    assert apply_state_dict(into, read_state_dict("wrapper.pt", keys=keys), "wrapper.pt") == ""
    assert keys.stripped == {}
    assert all(torch.equal(v, into.state_dict()[k]) for k, v in wrapper.state_dict().items())
    # and a Lightning checkpoint of that model ("model.model.") loses one "model." only
    torch.save(lightning_checkpoint(LitClassifier(wrapper)), "lit_wrapper.ckpt")
    assert apply_state_dict(user.wrapped(), read_state_dict("lit_wrapper.ckpt", keys=keys), "x") == "model."
    # a plain checkpoint into the wrapper model: the error says the model wraps the network
    line = refused(capsys, "interpolate", "a.pt", "b.pt", *COMMON[2:], "--model", f"{MODULE}:wrapped")
    assert "missing key 'model.features.0.weight' and 8 more" in line and "under the prefix 'model.'" in line


def test_keys_that_fit_under_no_prefix_keep_the_old_message(work, capsys):
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3)).state_dict()
    torch.save(other, "other.pt")
    torch.save({f"module.{k}": v for k, v in other.items()}, "other_ddp.pt")
    torch.save(lightning_checkpoint(LitClassifier(nn.Sequential(nn.Linear(3, 4)))), "other_lit.ckpt")
    for ckpt in ("other.pt", "other_ddp.pt", "other_lit.ckpt"):
        line = refused(capsys, "interpolate", "a.pt", ckpt, *COMMON)
        assert line == (f"landscape: error: checkpoint {ckpt!r} does not fit the model: "
                        "missing key 'features.0.weight' and 8 more")


def test_an_unknown_prefix_that_would_fit_is_named(work, capsys):
    torch.save({f"net.{k}": v for k, v in torch.load("b.pt").items()}, "net.pt")
    line = refused(capsys, "interpolate", "a.pt", "net.pt", *COMMON)
    assert "missing key 'features.0.weight' and 8 more" in line and "prefix 'net.' removed" in line


def test_extra_keys_after_stripping_name_the_prefix_and_the_option(work, capsys):
    line = refused(capsys, "interpolate", "a.pt", "lightning_ema.ckpt", *COMMON)
    assert "unexpected key 'ema.features.0.weight' and 8 more" in line
    assert "wrapper prefix 'model.' stripped" in line and "--ignore-keys ema." in line
    assert numbers(capsys, "lightning_ema.ckpt", "--ignore-keys", "ema.") == numbers(capsys, "b.pt")
    # keys beside the network inside the wrapper: the option names them without the prefix
    line = refused(capsys, "interpolate", "a.pt", "lightning_proj.ckpt", *COMMON)
    assert "unexpected key 'projector.weight' and 1 more" in line and "--ignore-keys projector." in line
    code, out, err = run(capsys, "interpolate", "a.pt", "lightning_proj.ckpt", *COMMON, "--ignore-keys",
                         "projector.", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["ignored_keys"] == {"lightning_proj.ckpt": ["projector.weight", "projector.bias"]}
    assert {m: res[m] for m in METRICS} == {m: v for m, v in numbers(capsys, "b.pt").items() if m in METRICS}
    # keys under the wrapper prefix: skipped by the prefix the hint names, listed as the file has them
    line = refused(capsys, "interpolate", "a.pt", "compiled_proj.pt", *COMMON)
    assert "unexpected key 'projector.weight' and 1 more" in line and "'_orig_mod.' stripped" in line
    assert "--ignore-keys projector." in line
    code, out, err = run(capsys, "interpolate", "a.pt", "compiled_proj.pt", *COMMON, "--ignore-keys",
                         "projector.", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["ignored_keys"] == {"compiled_proj.pt": ["_orig_mod.projector.weight", "_orig_mod.projector.bias"]}
    assert {m: res[m] for m in METRICS} == {m: v for m, v in numbers(capsys, "b.pt").items() if m in METRICS}
    # names that fit after stripping, shapes that do not
    line = refused(capsys, "interpolate", "a.pt", "lightning_wide.ckpt", *COMMON)
    assert "'features.0.weight' has shape [6, 2, 3, 3], the model needs [4, 2, 3, 3]" in line
    assert "'model.' stripped" in line


def test_check_state_fits_is_exact_and_names_the_prefix():
    net = nn.Sequential(nn.Linear(2, 3))
    own = net.state_dict()
    check_state_fits(own, own, "plain")
    with pytest.raises(Exception, match=r"missing key '0.weight' and 1 more; its keys fit with the wrapper "
                                        r"prefix 'module.' stripped"):
        check_state_fits(own, {f"module.{k}": v for k, v in own.items()}, "ddp")


def test_whole_pickled_model_is_refused_with_the_fix(work, capsys):
    import foreign_ckpt_user_model as user
    torch.save(user.make(), "whole.pt")
    torch.save(nn.Sequential(nn.Linear(2, 3)), "whole_seq.pt")
    torch.save({"model": user.make(), "epoch": 3}, "whole_in_dict.pt")
    torch.save(user.make(), "whole_legacy.pt", _use_new_zipfile_serialization=False)
    for ckpt, cls in (("whole.pt", f"{MODULE}.Net"), ("whole_seq.pt", "torch.nn.modules.container.Sequential"),
                      ("whole_in_dict.pt", f"{MODULE}.Net"), ("whole_legacy.pt", f"{MODULE}.Net")):
        line = refused(capsys, "interpolate", "a.pt", ckpt, *COMMON)
        assert "whole pickled model" in line and cls in line, line
        assert "torch.save(model.state_dict(), PATH)" in line
    # a pickle that runs code, not a model: the old refusal
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"w": Evil()}, "evil.pt")
    line = refused(capsys, "interpolate", "a.pt", "evil.pt", *COMMON)
    assert "arbitrary code" in line and "whole pickled model" not in line


def test_files_that_are_not_safetensors_checkpoints_are_one_line(work, capsys):
    with open("notes.safetensors", "w") as f:
        f.write("these are not weights\n")
    assert "not a safetensors file (a text file?)" in refused(capsys, "interpolate", "a.pt", "notes.safetensors",
                                                             *COMMON)
    data = open("b.safetensors", "rb").read()
    with open("cut.safetensors", "wb") as f:  # a valid header, the tensors cut short
        f.write(data[: len(data) - 40])
    assert "not a readable safetensors file" in refused(capsys, "interpolate", "a.pt", "cut.safetensors", *COMMON)
    with open("empty.safetensors", "wb"):
        pass
    assert "'empty.safetensors' is not a safetensors file (an empty file)" in \
        refused(capsys, "interpolate", "a.pt", "empty.safetensors", *COMMON)
    # a safetensors file under another name is read by its bytes; a torch file named .safetensors too
    with open("b_safetensors.pt", "wb") as f:
        f.write(data)
    torch.save(torch.load("b.pt"), "torch.safetensors")
    assert numbers(capsys, "b_safetensors.pt") == numbers(capsys, "torch.safetensors") == numbers(capsys, "b.pt")


def test_safetensors_read_mapped_or_not_gives_the_same_tensors(work):
    mapped, read = read_state_dict("b.safetensors", mmap=True), read_state_dict("b.safetensors")
    plain = torch.load("b.pt")
    assert set(mapped) == set(read) == set(plain)  # safetensors keeps its own order of the keys
    assert all(torch.equal(mapped[k], plain[k]) and torch.equal(read[k], plain[k]) for k in plain)
