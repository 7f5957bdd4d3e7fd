"""Snapshots (points in weight space) and loading state dicts: `.pt`/`.pth`/`.ckpt` files (torch.load
with weights_only=True only) and Hugging Face `.safetensors` files.

Checkpoints of other tools are read as they are saved, one mechanism for all of them:
- a state dict nested in a training checkpoint (`state_dict`, as PyTorch Lightning saves one,
  beside `epoch`, `optimizer_states`, `callbacks`, ...; or `model_state`, `model_state_dict`, `model`);
- a wrapper prefix on every key: `module.` (DistributedDataParallel / DataParallel), `_orig_mod.`
  (torch.compile's OptimizedModule), `model.` (a LightningModule holding the network as
  `self.model`), or a chain of them (`model._orig_mod.`). It is stripped when, and only when,
  stripping it makes the keys fit the model (`fit_state`, which `apply_state_dict` uses), and the
  prefix stripped is recorded in the KeyFilter the file was read with (`KeyFilter.stripped`),
  beside the keys skipped (`KeyFilter.skipped`).
A whole pickled model (`torch.save(model)`) is refused with the line that saves its weights instead.
"""
from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import pickle
import pickletools
import zipfile
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn

from .errors import LandscapeError
from .params import ParamLayout, get_buffers, parameters_to_vector, set_buffers, vector_to_model

# the keys under which a training checkpoint nests its state dict (Lightning: "state_dict")
_WRAPPER_KEYS = ("state_dict", "model_state", "model_state_dict", "model")

# the prefixes wrappers put on every key of a model's state dict
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class KeyFilter:
    """Checkpoint keys to skip (`prefixes`: e.g. a BYOL checkpoint's "projector.", "predictor."),
    and what was done to the keys, filled as files are read and loaded: `skipped`, {checkpoint
    path: [keys skipped]}, and `stripped`, {checkpoint path: the wrapper prefix stripped from its
    keys ("model.", "_orig_mod.", "module.", "model._orig_mod.", ...)}. It is passed to every
    reader of checkpoint files (read_state_dict, load_snapshot, head_classes), so a command can
    list what it skipped and stripped. No prefixes: nothing is skipped.

    A prefix to skip matches a key as the file holds it or with its wrapper prefix removed:
    "projector." skips a Lightning checkpoint's "model.projector.0.weight"."""

    prefixes: tuple[str, ...] = ()
    skipped: dict[str, list[str]] = field(default_factory=dict)
    stripped: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prefixes = tuple(self.prefixes)


class CheckpointState(OrderedDict):
    """A state dict as read from a checkpoint file (`read_state_dict`): its keys as the file holds
    them, the file's path (`source`) and the KeyFilter it was read with (`key_filter`), on which
    `apply_state_dict` records the wrapper prefix it strips."""

    def __init__(self, items: Mapping[str, torch.Tensor] | None = None, source: str = "",
                 key_filter: KeyFilter | None = None) -> None:
        super().__init__(items or {})
        self.source = source
        self.key_filter = key_filter


def _wrapper_chains(key: str) -> list[str]:
    """The wrapper prefixes `key` starts with, cumulated: ["model.", "model._orig_mod."] for
    "model._orig_mod.features.0.weight"."""
    chains, rest = [""], key
    while True:
        head = next((w for w in WRAPPER_PREFIXES if rest.startswith(w) and len(rest) > len(w)), None)
        if head is None:
            return chains[1:]
        chains.append(chains[-1] + head)
        rest = rest[len(head):]


def wrapper_prefix(key: str) -> str:
    """The chain of wrapper prefixes `key` starts with ("model._orig_mod." of
    "model._orig_mod.features.0.weight"; "" for none)."""
    chains = _wrapper_chains(key)
    return chains[-1] if chains else ""


def _unwrapped(key: str) -> str:
    return key[len(wrapper_prefix(key)):]


def split_ignored(state: Mapping[str, torch.Tensor], prefixes: Sequence[str]
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(`state` without the keys that start with any of `prefixes`, as they are or with their
    wrapper prefix removed, and those keys in order)."""
    prefixes = tuple(p for p in prefixes if p)
    if not prefixes:
        return dict(state), []
    drop = [k for k in state if k.startswith(prefixes) or _unwrapped(k).startswith(prefixes)]
    gone = set(drop)
    return OrderedDict((k, v) for k, v in state.items() if k not in gone), drop


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
    """`state` with `prefix` removed from the keys that start with it (others as they are); None
    when two keys would become one."""
    out: dict[str, torch.Tensor] = OrderedDict()
    for k, v in state.items():
        name = k[len(prefix):] if prefix and k.startswith(prefix) else k
        if name in out:
            return None
        out[name] = v
    return out


def match_wrapper_prefix(want: Sequence[str], state: Mapping[str, torch.Tensor], ignored: Sequence[str] = ()
                         ) -> tuple[str, dict[str, torch.Tensor]]:
    """(the wrapper prefix to strip, `state` with it stripped): "" and `state` itself when every
    key of `want` is in `state`; else the chain of wrapper prefixes (WRAPPER_PREFIXES, alone or
    combined) whose stripping leaves the fewest keys of `want` missing, if it leaves fewer than
    none does (then fewest unexpected keys, then the shortest). The caller's check decides whether
    the result fits: a prefix that leaves keys missing only names them in the error."""
    want_set, skip = set(want), set(ignored)

    def counts(s: Mapping[str, torch.Tensor]) -> tuple[int, int]:
        return (sum(k not in s for k in want), sum(k not in want_set and k not in skip for k in s))

    plain = counts(state)
    if plain[0] == 0:
        return "", dict(state)
    chains = {c for k in state for c in _wrapper_chains(k)}
    best: tuple[tuple[int, int, int], str, dict[str, torch.Tensor]] | None = None
    for p in sorted(chains):
        s = strip_prefix(state, p)
        if s is None:
            continue
        c = counts(s)
        if c[0] < plain[0] and (best is None or (*c, len(p)) < best[0]):
            best = ((*c, len(p)), p, s)
    return ("", dict(state)) if best is None else (best[1], best[2])


def _prefix_hint(want: Sequence[str], state: Mapping[str, torch.Tensor]) -> str:
    """'; ...' naming a prefix (not a wrapper's) that would make the keys match: one every key of
    `want` has in `state`, or one every key of `want` has beyond the keys of `state`; "" for none."""
    if not want:
        return ""
    heads: Counter[str] = Counter()
    for k in state:
        parts = k.split(".")
        for depth in range(1, min(4, len(parts))):
            heads[".".join(parts[:depth]) + "."] += 1
    keys = set(state)
    for p, _ in heads.most_common(64):
        if all(p + k in keys for k in want):
            return (f"; its keys match the model with the prefix {p!r} removed: save the state_dict() of "
                    "the module it names")
    first = want[0].split(".")
    for depth in range(1, min(4, len(first))):
        p = ".".join(first[:depth]) + "."
        if all(k.startswith(p) and k[len(p):] in keys for k in want):
            return (f"; the model's keys are its keys under the prefix {p!r}: the model wraps the "
                    "checkpoint's network (give the factory of the network itself)")
    return ""


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


def _head(path: str, size: int = 512) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


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


SAFETENSORS_HEADER_MAX = 100_000_000  # safetensors' own limit on the JSON header


def _is_safetensors(head: bytes) -> bool:
    """Whether the first bytes are a safetensors file's: a little-endian u64 header length, then a
    JSON object (the format has no magic number)."""
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= SAFETENSORS_HEADER_MAX and head[8:9] == b"{"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_safetensors(path: str, mmap: bool) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (safetensors.torch.load_file: mapped with `mmap`, read
    with pread(2) otherwise)."""
    try:
        from safetensors import torch as safetensors_torch
    except ImportError:
        raise LandscapeError(f"checkpoint {path!r} is a safetensors file: reading it needs the safetensors "
                             "package (pip install safetensors)") from None
    try:
        return safetensors_torch.load_file(path, device="cpu", backend="mmap" if mmap else "pread")
    except Exception as exc:  # a damaged or truncated file: the library's own reason
        raise LandscapeError(f"checkpoint {path!r} is not a readable safetensors file: {_first_line(exc)}") from None


def _pickle_bytes(path: str, limit: int = 64 << 20) -> bytes:
    """The pickle of a torch.save file (data.pkl of its zip archive; the file itself for the legacy
    format), at most `limit` bytes; b"" when there is none."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if name is None or z.getinfo(name).file_size > limit:
                    return b""
                return z.read(name)
        with open(path, "rb") as f:
            return f.read(limit)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return b""


def _pickled_module(path: str) -> str | None:
    """The class of a whole nn.Module pickled in the file (torch.save(model)), read from the
    pickle's opcodes without running any of it: the first class named before the module
    attributes `_parameters` and `_modules` appear; None for a file that holds no module."""
    data = _pickle_bytes(path)
    if not data:
        return None
    stream = io.BytesIO(data)
    strings: list[str] = []
    classes: list[str] = []
    seen: set[str] = set()
    try:
        for _ in range(8):  # the legacy format is several pickles in a row
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL" and isinstance(arg, str):
                    classes.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    classes.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
                    seen.add(arg)
                    if {"_parameters", "_modules"} <= seen:
                        return next((c for c in classes if not c.startswith(("collections.", "__builtin__.",
                                                                               "builtins.", "torch._utils."))),
                                    "nn.Module")
            if stream.tell() >= len(data):
                break
    except Exception:  # a damaged or unusual pickle: not a module we can name
        return None
    return None


def _load_torch(path: str, mmap: bool) -> object:
    try:
        if path.lower().endswith(".safetensors"):  # torch.load would hand the name to safetensors
            with open(path, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        cls = _pickled_module(path)
        if cls is not None:
            raise LandscapeError(f"checkpoint {path!r} is a whole pickled model ({cls}, saved with torch.save(model)), "
                                 "not a state dict, and loading it would run its code; refused: save its weights "
                                 "instead with torch.save(model.state_dict(), PATH)") from None
        raise LandscapeError(f"checkpoint {path!r} needs arbitrary code to load (not weights-only); "
                             "refused") from None
    except Exception as exc:
        not_torch = _not_a_checkpoint(path)
        if not_torch:
            raise LandscapeError(f"checkpoint {path!r} is not a PyTorch checkpoint ({not_torch})") from None
        raise LandscapeError(f"checkpoint {path!r} cannot be read: {_first_line(exc)}") from None


def read_state_dict(path: str, mmap: bool = False, keys: KeyFilter | None = None) -> CheckpointState:
    """A tensor state dict from a checkpoint file: torch.save's format loaded with weights_only=True
    only, or a safetensors file (told by its bytes, whatever its name); a state dict nested in a
    training checkpoint (Lightning's `state_dict`, ...) is taken out of it. The keys are those of
    the file: a wrapper prefix is stripped later, where the model is known (`fit_state`).
    `mmap`: map the tensors instead of reading them (for looking at shapes only).
    `keys`: the prefixes to skip; the keys skipped are recorded in it, and it goes with the state
    (CheckpointState.key_filter) so that the prefix stripped when it is loaded is recorded too."""
    if not os.path.isfile(path):
        raise LandscapeError(f"checkpoint {path!r} does not exist")
    head = _head(path)
    if _is_safetensors(head):
        obj: object = _read_safetensors(path, mmap)
    elif path.lower().endswith(".safetensors") and not head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x80")):
        why = _not_a_checkpoint(path) or "its header is not a safetensors header"
        raise LandscapeError(f"checkpoint {path!r} is not a safetensors file ({why})")
    else:
        obj = _load_torch(path, mmap)
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
    out: dict[str, torch.Tensor] = OrderedDict(obj)
    prefixes = keys.prefixes if keys is not None else ()
    if prefixes:
        out, skipped = split_ignored(out, prefixes)
        if skipped:
            keys.skipped[path] = skipped
        if not out:
            raise LandscapeError(f"checkpoint {path!r}: every key starts with an ignored prefix "
                                 f"({', '.join(prefixes)})")
    return CheckpointState(out, source=path, key_filter=keys)


def _more(keys: Sequence[str]) -> str:
    return f" and {len(keys) - 1} more" if len(keys) > 1 else ""


def _check_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                want: Sequence[str], ignored: set[str], ignore_option: str, prefix: str,
                original: Mapping[str, torch.Tensor]) -> None:
    note = f" (keys read with the wrapper prefix {prefix!r} stripped)" if prefix else ""
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want and k not in ignored]
    if missing:
        hint = "" if prefix else _prefix_hint(list(want), original)
        raise LandscapeError(f"checkpoint {source!r} does not fit the model: missing key {missing[0]!r}"
                             f"{_more(missing)}{note}{hint}")
    if unexpected:
        raise LandscapeError(f"checkpoint {source!r} does not fit the model: unexpected key {unexpected[0]!r}"
                             f"{_more(unexpected)}{note}"
                             + (ignore_hint(unexpected, ignore_option) if ignore_option else ""))
    for k in want:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise LandscapeError(f"checkpoint {source!r} does not fit the model: {k!r} has shape "
                                 f"{list(state[k].shape)}, the model needs {list(own[k].shape)}{note}")


def fit_state(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
              keys: Sequence[str] | None = None, ignore_option: str = "") -> tuple[dict[str, torch.Tensor], str]:
    """(`state` ready to load into a model whose state dict is `own`, the wrapper prefix stripped
    from its keys or ""). A wrapper prefix (`module.`, `_orig_mod.`, `model.`, or a chain of them)
    is stripped when, and only when, that makes the keys fit; otherwise one-line errors as
    `check_state_fits` gives them, in terms of the stripped keys where a prefix explains the rest.
    `keys`, `ignore_option`: as for check_state_fits."""
    want = list(own) if keys is None else list(keys)
    ignored = set(own) - set(want)
    prefix, fitted = match_wrapper_prefix(want, state, sorted(ignored))
    _check_fits(own, fitted, source, want, ignored, ignore_option, prefix, state)
    return fitted, prefix


def check_state_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str,
                     keys: list[str] | None = None, ignore_option: str = "") -> None:
    """One-line errors for missing, unexpected or misshapen keys of `state` against `own`, the
    keys taken as they are (a state that fits only once a wrapper prefix is stripped is refused,
    naming the prefix: `fit_state` strips it).

    `keys` restricts the check to part of the model (a backbone without its head): then keys of
    `state` outside `keys` but inside `own` are ignored. `ignore_option` (e.g. "--ignore-keys"):
    the refusal of unexpected keys suggests it, with the prefixes that would skip them.
    """
    want = list(own) if keys is None else list(keys)
    ignored = set(own) - set(want)
    prefix, fitted = match_wrapper_prefix(want, state, sorted(ignored))
    if prefix and all(k in fitted for k in want):
        missing = [k for k in want if k not in state]
        raise LandscapeError(f"checkpoint {source!r} does not fit the model: missing key {missing[0]!r}"
                             f"{_more(missing)}; its keys fit with the wrapper prefix {prefix!r} stripped, which "
                             "this reader does not do")
    _check_fits(own, state, source, want, ignored, ignore_option, "", state)


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                     keys: KeyFilter | None = None) -> str:
    """Load `state` into `model`, a wrapper prefix stripped where that makes the keys fit
    (`fit_state`), with one-line errors for missing, unexpected or misshapen keys (unexpected
    ones suggest --ignore-keys with their prefixes). Returns the prefix stripped ("" for none),
    and records it in `keys`, else in the KeyFilter `state` was read with (a CheckpointState),
    under the checkpoint's path."""
    fitted, prefix = fit_state(model.state_dict(), state, source, ignore_option="--ignore-keys")
    model.load_state_dict(fitted)
    read = state if isinstance(state, CheckpointState) else None
    record = keys if keys is not None else read.key_filter if read is not None else None
    if prefix and record is not None:
        record.stripped[read.source if read is not None and read.source else source] = prefix
    return prefix


def check_same_architecture(snapshots: list[Snapshot]) -> None:
    first = snapshots[0]
    for s in snapshots[1:]:
        first.layout.check_same(s.layout, f"snapshot {first.name!r}", f"snapshot {s.name!r}")
