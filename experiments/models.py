"""Models of the study: a small BatchNorm CNN (the CPU default) and torchvision ResNet-18/50.

A pre-trained checkpoint carries the source task's head; fine-tuning keeps its backbone and puts
a new linear head, initialised from the member's seed, in place of the old one. Pre-trained
weights only ever come from local files (`torch.load(weights_only=True)`).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from landscape.core.checkpoints import fit_state, read_state_dict, split_ignored
from landscape.core.errors import LandscapeError
from landscape.core.models import build_model


def build(name: str, num_classes: int, input_shape: Sequence[int], width: int | None = None) -> nn.Module:
    """A fresh model (random initialisation from the global RNG: seed it with `seeded_build`).

    The study's names are landscape model specs, with `resnet18`/`resnet50` short for torchvision's.
    """
    if name in ("resnet18", "resnet50"):
        name = f"torchvision:{name}"
    return build_model(name, num_classes, input_shape, width=width)


def seeded_build(name: str, num_classes: int, input_shape: Sequence[int], width: int | None, seed: int) -> nn.Module:
    """`build` under a fixed seed, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build(name, num_classes, input_shape, width)


def head_name(model: nn.Module) -> str:
    """The qualified name of the classification head: the last nn.Linear of the model."""
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    if name is None:
        raise LandscapeError(f"model {type(model).__name__} has no linear head to replace")
    return name


def _set_module(model: nn.Module, qualified: str, module: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def new_head(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """Put a fresh nn.Linear(in_features, num_classes) head in place, initialised from `seed`
    exactly as nn.Linear.reset_parameters does (with its own generator)."""
    name = head_name(model)
    old = model.get_submodule(name)
    head = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
    g = torch.Generator(device=old.weight.device).manual_seed(int(seed))
    with torch.no_grad():
        nn.init.kaiming_uniform_(head.weight, a=math.sqrt(5), generator=g)
        if head.bias is not None:
            bound = 1 / math.sqrt(old.in_features) if old.in_features > 0 else 0
            nn.init.uniform_(head.bias, -bound, bound, generator=g)
    _set_module(model, name, head)
    return model


def backbone_keys(state: Mapping[str, torch.Tensor], head: str) -> list[str]:
    return [k for k in state if not (k == head or k.startswith(head + "."))]


def load_backbone(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                  ignore_keys: Sequence[str] = ()) -> list[str]:
    """Load every non-head tensor of `state` into `model`; the head is left as it is.

    `ignore_keys`: key prefixes of `state` to skip (pretrain.ignore_keys: a BYOL checkpoint's
    "projector.", "predictor."). Returns the keys skipped. One-line errors for a checkpoint that
    does not fit (missing, unexpected or misshapen keys; unexpected ones suggest
    pretrain.ignore_keys with the prefixes that would skip them).
    """
    state, skipped = split_ignored(state, ignore_keys)
    head = head_name(model)
    own = model.state_dict()
    want = backbone_keys(own, head)
    # the checkpoint's own head (another task's classes) is not loaded; a wrapper prefix (DDP's
    # `module.`, torch.compile's `_orig_mod.`, Lightning's `model.`) is stripped when that fits
    fitted, _ = fit_state(own, state, source, want, ignore_option="pretrain.ignore_keys")
    model.load_state_dict({**own, **{k: fitted[k] for k in want}})
    return skipped


def load_checkpoint_file(path: str) -> dict[str, torch.Tensor]:
    """A pre-trained state dict from a local file (weights only; anything else is refused)."""
    return read_state_dict(path)


def backbone_vector(model: nn.Module) -> torch.Tensor:
    """The flat vector of the model's parameters outside the head (comparable across heads)."""
    head = head_name(model)
    return torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters()
                      if not (n == head or n.startswith(head + "."))])


def check_fits(model: nn.Module, sample: torch.Tensor, num_classes: int, what: str) -> None:
    """A forward pass on one input: the model must accept the data and return [1, num_classes]."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample)
    except Exception as exc:  # the model does not fit the data
        raise LandscapeError(f"{what} does not fit the data (input {list(sample.shape[1:])}): "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LandscapeError(f"{what} does not fit the data: it returns {shape}, the task needs "
                             f"[batch, {num_classes}] logits")
