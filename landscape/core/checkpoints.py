"""Snapshots (points in weight space) and loading `.pt`/`.pth` state dicts (weights_only only)."""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from .errors import LandscapeError
from .params import ParamLayout, get_buffers, parameters_to_vector, set_buffers, vector_to_model

_WRAPPER_KEYS = ("state_dict", "model_state", "model_state_dict", "model")

@dataclass
class KeyFilter:
    """Checkpoint keys to skip (`prefixes`: e.g. a BYOL checkpoint's "projector.", "predictor."),
    and what was skipped: {checkpoint path: [keys]}, filled as files are read. It is passed to
    every reader of checkpoint files (read_state_dict, load_snapshot, head_classes), so a command
    can list what it skipped. No prefixes: nothing is skipped."""

    prefixes: tuple[str, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefixes = tuple(self.prefixes)


def split_ignored(state: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(`state` without the keys that start with any of `prefixes`, those keys in order)."""
    prefixes = tuple(p for p in prefixes if p)
    if not prefixes:
        return dict(state), []
    kept = OrderedDict((k, v) for k, v in state.items() if not k.startswith(prefixes))
    return kept, [k for k in state if k.startswith(prefixes)]


def suggest_prefixes(keys: Sequence[str]) -> list[str]:
    """The prefixes that would skip `keys`: each key's first component with its dot ("projector.")."""
    out: list[str] = []
    for k in keys:
        head, dot, _ = k.partition(".")
        p = head + dot
        if p not in out:
            out.append(p)
    return out


def ignore_hint(keys: Sequence[str], option: str) -> str:
    """'; to skip keys that are not part of the model, OPTION ...' for a refusal naming `keys`.
    `option`: "--ignore-keys" (the CLI) or a config key such as "pretrain.ignore_keys"."""
    prefixes = suggest_prefixes(keys)
    if option.startswith("--"):
        return f"; to skip keys that are not part of the model, pass {option} {','.join(prefixes)}"
    return f"; to skip keys that are not part of the model, set {option} = {json.dumps(prefixes)}"


@dataclass
class Snapshot:
    """A point in weight space: the flat parameter vector, its layout, the buffers and metadata."""

    name: str
    params: torch.Tensor
    layout: ParamLayout
    buffers: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_model(cls, model: nn.Module, name: str = "model", **meta) -> "Snapshot":
        return cls(name, parameters_to_vector(model).clone(), ParamLayout.of(model), get_buffers(model), dict(meta))

    def load_into(self, model: nn.Module) -> nn.Module:
        ParamLayout.of(model).check_same(self.layout, "model", f"snapshot {self.name!r}")
        vector_to_model(self.params, model)
        set_buffers(model, self.buffers)
        return model

    def require_finite(self, why: str) -> None:
        """Refuse a snapshot with NaN or infinite parameters where `why` needs finite ones."""
        bad = ~torch.isfinite(self.params)
        if bool(bad.any()):
            first = int(bad.nonzero()[0])
            where = next(n for n, _, sl in self.layout.slices() if sl.start <= first < sl.stop)
            raise LandscapeError(f"snapshot {self.name!r} has {int(bad.sum()):,} non-finite parameters (the first in "
                                 f"{where}): {why}")

    def fingerprint(self) -> str:
        """A short hash of the weights and buffers: what a stored result was computed from."""
        h = hashlib.sha1(self.params.detach().cpu().numpy().tobytes())
        for k in sorted(self.buffers):
            h.update(self.buffers[k].detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def storage_short(t: torch.Tensor) -> bool:
    """Whether `t`'s storage is smaller than its shape claims (a stride-0, expanded view: a
    real checkpoint's tensors never are; such a shape would size a model of terabytes)."""
    try:
        return t.untyped_storage().nbytes() < t.numel() * t.element_size()
    except (RuntimeError, NotImplementedError):  # a tensor without a plain storage (sparse, meta...)
        return False


def _not_a_checkpoint(path: str) -> str:
    """Why the file at `path` is not a PyTorch checkpoint by its first bytes ('' when it may be
    one: a zip archive, torch.save's format, or a pickle, torch's legacy format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return ""
    if not head:
        return "an empty file"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x80")):
        return ""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut last character is fine
    except UnicodeDecodeError:
        return "neither a zip archive nor a pickle"
    return "a text file?" if b"\0" not in head else "neither a zip archive nor a pickle"


def read_state_dict(path: str, mmap: bool = False, keys: KeyFilter | None = None) -> dict[str, torch.Tensor]:
    """A tensor state dict from a checkpoint file, loaded with weights_only=True only.
    `mmap`: map the tensors instead of reading them (for looking at shapes only).
    `keys`: the prefixes to skip; the keys skipped are recorded in it."""
    if not os.path.isfile(path):
        raise LandscapeError(f"checkpoint {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise LandscapeError(f"checkpoint {path!r} needs arbitrary code to load (not weights-only); "
                             "refused") from None
    except Exception as exc:
        not_torch = _not_a_checkpoint(path)
        if not_torch:
            raise LandscapeError(f"checkpoint {path!r} is not a PyTorch checkpoint ({not_torch})") from None
        raise LandscapeError(f"checkpoint {path!r} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LandscapeError(f"checkpoint {path!r} does not hold a state_dict of tensors")
    bad_key = next((k for k in obj if not isinstance(k, str)), None)
    if bad_key is not None:
        raise LandscapeError(f"checkpoint {path!r} does not hold a state_dict: keys must be strings, got "
                             f"{type(bad_key).__name__} key {bad_key!r}")
    for k, v in obj.items():  # an expanded (stride-0) view claims more elements than it stores
        if storage_short(v):
            raise LandscapeError(f"checkpoint {path!r}: tensor {k!r} of shape {list(v.shape)} claims more "
                                 "elements than its storage holds (an expanded view); refused")
    out = OrderedDict()
    for k, v in obj.items():
        out[k[len("module."):] if k.startswith("module.") else k] = v
    prefixes = keys.prefixes if keys is not None else ()
    if prefixes:
        out, skipped = split_ignored(out, prefixes)
        if skipped:
            keys.skipped[path] = skipped
        if not out:
            raise LandscapeError(f"checkpoint {path!r}: every key starts with an ignored prefix "
                                 f"({', '.join(prefixes)})")
    return out


def check_state_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                     keys: list[str] | None = None, ignore_option: str = "") -> None:
    """One-line errors for missing, unexpected or misshapen keys of `state` against `own`.

    `keys` restricts the check to part of the model (a backbone without its head): then keys of
    `state` outside `keys` but inside `own` are ignored. `ignore_option` (e.g. "--ignore-keys"):
    the refusal of unexpected keys suggests it, with the prefixes that would skip them.
    """
    want = list(own) if keys is None else keys
    ignored = set(own) - set(want)
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want and k not in ignored]
    if missing:
        raise LandscapeError(f"checkpoint {source!r} does not fit the model: missing key {missing[0]!r}"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if unexpected:
        raise LandscapeError(f"checkpoint {source!r} does not fit the model: unexpected key {unexpected[0]!r}"
                             + (f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
                             + (ignore_hint(unexpected, ignore_option) if ignore_option else ""))
    for k in want:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise LandscapeError(f"checkpoint {source!r} does not fit the model: {k!r} has shape "
                                 f"{list(state[k].shape)}, the model needs {list(own[k].shape)}")


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`, with one-line errors for missing, unexpected or misshapen keys
    (unexpected ones suggest --ignore-keys with their prefixes)."""
    check_state_fits(model.state_dict(), state, source, ignore_option="--ignore-keys")
    model.load_state_dict(state)


def check_same_architecture(snapshots: list[Snapshot]) -> None:
    first = snapshots[0]
    for s in snapshots[1:]:
        first.layout.check_same(s.layout, f"snapshot {first.name!r}", f"snapshot {s.name!r}")
