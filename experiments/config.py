"""Study configs: TOML files (tomllib) validated on load, with one-line errors.

A config has these tables (see experiments/configs/demo.toml for a commented example):

    [study]     name, seed or seeds (a list: one independent replicate each), members (K), device,
                eval_batch_size, threads
    [data]      kind = "embedded" | "digits" | "cifar10" | "cifar100" | "imagefolder", and either the
                embedded problem's parameters (target_val: a validation split), the digits data's
                (experiments.real_digits: seed, image_size, source_train, source_test,
                target_train_per_class, target_val) or root (a local folder), image_size, num_workers,
                val_fraction (a validation hold-out of the training set)
    [model]     name (small_cnn | tiny_cnn | resnet18 | resnet50 | torchvision:NAME | module:factory), width
    [pretrain]  embedded and digits: checkpoints (how many to train), epochs, lr, momentum,
                weight_decay, batch_size, cache, objective = "supervised" | "byol" | "simclr" (and its
                keys: experiments.ssl, SSL_KEYS); real data: checkpoints = [local .pt files]
    [finetune]  epochs, lr, momentum, weight_decay, batch_size (the recipe every method builds on),
                optimizer = "sgd" | "adamw" (betas), warmup_epochs (also in [pretrain]: RECIPE_KEYS)
    [scratch]   enabled, epochs, lr (the from-scratch baseline that measures the benefit of transfer)
    [methods.NAME]  type = local_de | global_de | sse | starsse | fge | swa, and its hyperparameters;
                a list in lr_scale, cycle_scale or cycle_epochs makes the table a grid (one method
                per cell, TABLE-lrX-cY); fge takes schedule = "garipov" | "cyclic"
    [analysis]  line_points, pairwise_points, plane, plane_through, plane_points, train_samples,
                test_samples, bn_samples, align = "weight" | "activation" | "none" (Local and Global DE's
                pairwise barriers also after aligning the members' units to the first member's),
                report_html (report.html: the interactive view of the results store, `landscape view`)
    [runtime]   how training runs on the device (experiments/accel.py): amp = "auto" | "bf16" | "off",
                channels_last = "auto" | true | false, cudnn_benchmark, micro_batch_size (gradient
                accumulation), pin_memory and persistent_workers = "auto" | true | false (image-folder
                data only); left out of the study's fingerprint, like study.device

pretrain.ignore_keys (real data only) lists key prefixes of the checkpoint files to skip, e.g.
["projector.", "predictor."] for BYOL checkpoints; other keys that are not in the model are refused.

Errors name the file and the key: an unknown key (with the closest known one), a wrong type, a
missing data folder or checkpoint file, a method without its required hyperparameters, and any
value that could only fail later (a learning rate that is not a finite positive number, a
momentum outside [0, 1), a count that is not a positive integer, a grid too large for memory, a
plane through a member that does not exist), so a bad study is refused before any training.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from landscape.core.errors import LandscapeError
from landscape.core.validate import check_grid_size, finite_positive, positive_int

from .accel import LOADER_KEYS, RUNTIME_DEFAULTS, check_runtime
from .data import EmbeddedSpec
from .paired import DEFAULTS as VERDICT_DEFAULTS
from .real_digits import DigitsSpec

# The shipped configs: every TOML file in experiments/configs (one source: the folder itself).
SHIPPED = tuple(sorted(f.name[:-len(".toml")] for f in resources.files("experiments").joinpath("configs").iterdir()
                       if f.name.endswith(".toml")))
DATA_KINDS = ("embedded", "digits", "cifar10", "cifar100", "imagefolder")
# The kinds whose study pre-trains its own checkpoints on a source task (the others fine-tune files).
SELF_PRETRAINED = ("embedded", "digits")
METHOD_TYPES = ("local_de", "global_de", "sse", "starsse", "fge", "swa")

INT, FLOAT, BOOL, STR = "integer", "number", "boolean", "string"
STR_LIST, INT_OR_STR_LIST = "list of strings", "integer or list of strings"
BOOL_OR_AUTO = 'boolean or "auto"'
INT_LIST, FLOAT_OR_LIST = "list of integers", "number or list of numbers"

# key -> (type, default); a default of REQUIRED must be given.
REQUIRED = object()

_EMBEDDED = {k: (FLOAT if isinstance(v, float) else INT, v) for k, v in asdict(EmbeddedSpec()).items()}

# pretrain.objective's hyperparameters (experiments.ssl): key -> (type, default); ema for BYOL only,
# temperature for SimCLR only. A supervised study has none of them, nor the objective key itself (its
# fingerprint and pre-training cache keys stay what they were before self-supervised pre-training).
OBJECTIVES = ("supervised", "byol", "simclr")
SSL_KEYS: dict[str, tuple[str, Any]] = {
    "ema": (FLOAT, 0.99), "temperature": (FLOAT, 0.5), "projector_dim": (INT, 64), "hidden_dim": (INT, 256),
    "augment_crop": (FLOAT, 1.0), "augment_shift": (INT, 2), "augment_flip": (BOOL, False),
    "augment_brightness": (FLOAT, 0.4), "augment_contrast": (FLOAT, 0.4), "augment_noise": (FLOAT, 0.3),
    "probe_weight_decay": (FLOAT, 1e-4), "norm_decay": (BOOL, False)}
SSL_ONLY = {"ema": "byol", "temperature": "simclr"}

# A recipe's optimizer (experiments.training.Optim), in [finetune] and [pretrain]: "sgd" (momentum,
# weight decay added to the gradient; defaults 0.9 and 5e-4) or "adamw" (betas and decoupled weight
# decay, torch.optim.AdamW's own defaults [0.9, 0.999] and 0.01), and a linear warmup over the first
# warmup_epochs (per iteration). Keys at their defaults are dropped from the table (`_optimizer`), so
# an SGD study without warmup keeps the fingerprint and pre-training cache keys it had before them.
OPTIMIZERS = ("sgd", "adamw")
RECIPE_KEYS: dict[str, tuple[str, Any]] = {"optimizer": (STR, "sgd"), "betas": (FLOAT_OR_LIST, None),
                                           "warmup_epochs": (FLOAT, 0.0)}
RECIPE_DEFAULTS = {"sgd": {"momentum": 0.9, "weight_decay": 5e-4}, "adamw": {"betas": [0.9, 0.999],
                                                                           "weight_decay": 0.01}}

SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "study": {"name": (STR, "study"), "seed": (INT, 0), "seeds": (INT_LIST, None), "members": (INT, 5),
              "device": (STR, "auto"),
              "eval_batch_size": (INT, 500), "threads": (INT, 0)},
    "data": {"kind": (STR, "embedded"), "augment_shift": (INT, 2), "root": (STR, None),
             "image_size": (INT, None), "num_workers": (INT, 4), "val_fraction": (FLOAT, 0.0),
             **{f"{k}": v for k, v in _EMBEDDED.items() if k != "image_size"}},
    "model": {"name": (STR, "small_cnn"), "width": (INT, None)},
    "pretrain": {"checkpoints": (INT_OR_STR_LIST, None), "epochs": (INT, 8), "lr": (FLOAT, 0.05),
                 "momentum": (FLOAT, None), "weight_decay": (FLOAT, None), "batch_size": (INT, 64),
                 "cache": (BOOL, True), "ignore_keys": (STR_LIST, None), **RECIPE_KEYS,
                 # self-supervised pre-training (experiments.ssl); dropped for "supervised"
                 "objective": (STR, "supervised"), **SSL_KEYS},
    "finetune": {"epochs": (INT, 20), "lr": (FLOAT, 0.02), "momentum": (FLOAT, None),
                 "weight_decay": (FLOAT, None), "batch_size": (INT, 32), **RECIPE_KEYS},
    "scratch": {"enabled": (BOOL, True), "epochs": (INT, None), "lr": (FLOAT, None)},
    "analysis": {"line_points": (INT, 11), "pairwise_points": (INT, 7), "pairwise": (BOOL, True),
                 "plane": (BOOL, True), "plane_through": (STR_LIST, None), "plane_points": (INT, 11),
                 "train_samples": (INT, 1000), "test_samples": (INT, 1000), "bn_samples": (INT, 1000),
                 "ece_bins": (INT, 15), "sharpness": (BOOL, True), "sharpness_members": (INT, 2),
                 "hessian_iters": (INT, 20), "hessian_probes": (INT, 20), "curves": (BOOL, True),
                 "curve_epochs": (INT, 10), "curve_points": (INT, 11), "align": (STR, "weight"), "repair": (BOOL, True),
                 "report_html": (BOOL, True)},
    # how the findings are tested: defaults and their reasons in experiments.paired.DEFAULTS
    "verdicts": {k: (FLOAT, v) for k, v in VERDICT_DEFAULTS.items()},
    # types here, defaults from the one table of them (experiments.accel)
    "runtime": {k: (t, RUNTIME_DEFAULTS[k]) for k, t in (
        ("amp", STR), ("channels_last", BOOL_OR_AUTO), ("cudnn_benchmark", BOOL), ("micro_batch_size", INT),
        ("pin_memory", BOOL_OR_AUTO), ("persistent_workers", BOOL_OR_AUTO))},
}
EMBEDDED_ONLY = set(_EMBEDDED) - {"image_size"}
# kind = "digits" (MNIST -> scikit-learn's digits, experiments.real_digits): its own keys, all of
# them also keys of the embedded problem (same names, same meaning), with its own defaults.
DIGITS_KEYS = tuple(asdict(DigitsSpec()))
assert set(DIGITS_KEYS) <= set(_EMBEDDED), DIGITS_KEYS
ALIGN_CHOICES = ("weight", "activation", "none")
REAL_ONLY = {"root", "num_workers", "val_fraction"}

METHOD_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "local_de": {},
    "global_de": {},
    # A list value makes the table a grid: one method (a "cell") per combination, named
    # TABLE-lrX-cY (cycle_scale) or TABLE-lrX-eY (cycle_epochs). A cycle is C = cycle_scale × finetune.epochs
    # or cycle_epochs epochs, run as round(C × iterations per epoch) iterations: fractions are fine.
    "sse": {"lr_scale": (FLOAT_OR_LIST, REQUIRED), "cycle_scale": (FLOAT_OR_LIST, None),
            "cycle_epochs": (FLOAT_OR_LIST, None)},
    "starsse": {"lr_scale": (FLOAT_OR_LIST, REQUIRED), "cycle_scale": (FLOAT_OR_LIST, None),
                "cycle_epochs": (FLOAT_OR_LIST, None)},
    # FGE in two parametrisations: "garipov" (Garipov et al. 2018: triangular between lr1 and lr2,
    # snapshots at the minima) and "cyclic" (Sadrtdinov et al.'s code: torch's CyclicLR from
    # 0.01·η_c up to η_c = lr_scale·η and back over each cycle, momentum cycled 0.9 → 0.8 → 0.9,
    # a snapshot at the end of every cycle).
    "fge": {"schedule": (STR, "garipov"), "lr1_scale": (FLOAT, 1.0), "lr2_scale": (FLOAT, 0.01),
            "lr_scale": (FLOAT_OR_LIST, None), "cycle_scale": (FLOAT_OR_LIST, None),
            "cycle_epochs": (FLOAT_OR_LIST, None)},
    # SWA: `epochs` in all, the first anneal_epochs (A) annealing the lr from finetune.lr to
    # lr_scale × finetune.lr, the weights averaged at the end of each later epoch. Default A: a
    # quarter of the epochs (at least 1, leaving at least one averaged): the iterates settle at the
    # SWA lr for some epochs before the first one is averaged (an average of weights still moving
    # from the η regime is biased towards it), and three quarters of the run are averaged.
    "swa": {"lr_scale": (FLOAT, 0.5), "epochs": (INT, None), "anneal_epochs": (INT, None)},
}
METHOD_COMMON = {"type": (STR, None), "members": (INT, None), "pairwise": (BOOL, None)}
GRID_KEYS = ("lr_scale", "cycle_scale", "cycle_epochs")
FGE_SCHEDULES = ("garipov", "cyclic")


@dataclass
class MethodConfig:
    """One method, or one cell of a grid table (`group` is then the table's name)."""

    name: str
    type: str
    members: int
    pairwise: bool
    params: dict[str, Any]
    group: str = ""

    def __post_init__(self) -> None:
        self.group = self.group or self.name

    @property
    def is_cell(self) -> bool:
        return self.group != self.name

    @property
    def cycle_epochs(self) -> float | None:
        return self.params.get("cycle_epochs")


@dataclass
class StudyConfig:
    """A validated study. `sections` holds every table with its defaults filled in."""

    source: str
    sections: dict[str, dict[str, Any]]
    methods: list[MethodConfig] = field(default_factory=list)

    # convenient views
    @property
    def name(self) -> str:
        return self.sections["study"]["name"]

    @property
    def seed(self) -> int:
        """The first study seed (a single-seed study's only one)."""
        return self.seeds[0]

    @property
    def seeds(self) -> list[int]:
        """The study seeds: each one is a whole independent replicate (pre-trainings, fine-tunings,
        data orders); tables report mean ± std over them."""
        st = self.sections["study"]
        return list(st["seeds"]) if st.get("seeds") else [st["seed"]]

    @property
    def members(self) -> int:
        return self.sections["study"]["members"]

    def __getitem__(self, section: str) -> dict[str, Any]:
        return self.sections[section]

    @property
    def embedded(self) -> EmbeddedSpec | None:
        d = self.sections["data"]
        if d["kind"] != "embedded":
            return None
        return EmbeddedSpec(**{k: d[k] for k in asdict(EmbeddedSpec()) if k != "image_size"},
                            image_size=d["image_size"])

    @property
    def digits(self) -> DigitsSpec | None:
        d = self.sections["data"]
        if d["kind"] != "digits":
            return None
        return DigitsSpec(**{k: d[k] for k in DIGITS_KEYS})

    @property
    def num_checkpoints(self) -> int:
        ck = self.sections["pretrain"]["checkpoints"]
        return len(ck) if isinstance(ck, list) else int(ck)

    def method(self, name: str) -> MethodConfig:
        return next(m for m in self.methods if m.name == name)

    def groups(self) -> dict[str, list[MethodConfig]]:
        """Methods by config table: a grid table's cells together, a single method alone."""
        out: dict[str, list[MethodConfig]] = {}
        for m in self.methods:
            out.setdefault(m.group, []).append(m)
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.sections, "methods": {m.name: {"type": m.type, "members": m.members,
                                                       "pairwise": m.pairwise, **m.params,
                                                       **({"group": m.group} if m.is_cell else {})}
                                             for m in self.methods}}

    def fingerprint(self) -> str:
        """What makes two studies the same study: everything that affects the trained snapshots.

        The analysis settings and the device are left out: changing them reuses every snapshot.
        """
        d = self.to_json()
        d.pop("analysis")
        d.pop("verdicts", None)  # how the numbers are judged, not how they are made
        d["study"] = {k: v for k, v in d["study"].items() if k not in ("device", "eval_batch_size", "threads")}
        d["pretrain"] = {k: v for k, v in d["pretrain"].items() if k not in ("cache", "ignore_keys")}
        d.pop("runtime", None)  # how training runs (precision, layout, accumulation), like the device
        d["data"] = {k: v for k, v in d["data"].items() if k != "num_workers"}  # seeds are per sample
        for m in d["methods"].values():
            m.pop("pairwise", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------------------
# loading


def _type_ok(kind: str, value: Any) -> bool:
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    if kind == STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == INT_OR_STR_LIST:
        return _type_ok(INT, value) or _type_ok(STR_LIST, value)
    if kind == BOOL_OR_AUTO:
        return isinstance(value, bool) or value == "auto"
    if kind == INT_LIST:
        return isinstance(value, list) and bool(value) and all(_type_ok(INT, v) for v in value)
    if kind == FLOAT_OR_LIST:
        return _type_ok(FLOAT, value) or (isinstance(value, list) and bool(value)
                                           and all(_type_ok(FLOAT, v) for v in value))
    raise AssertionError(kind)


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{value!r} ({names.get(type(value), type(value).__name__)})"


def _unknown(where: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
    return f"unknown key {where}{key!r}{hint}"


def _with_defaults(table: Mapping[str, Any], schema: Mapping[str, tuple[str, Any]], where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise LandscapeError(f"{where.rstrip('.')} must be a table, got {_describe(table)}")
    out = {}
    for key, value in table.items():
        if key not in schema:
            raise LandscapeError(_unknown(where, key, list(schema)))
        kind, _ = schema[key]
        if not _type_ok(kind, value):
            raise LandscapeError(f"{where}{key} must be {'an' if kind[0] in 'ai' else 'a'} {kind}, "
                                 f"got {_describe(value)}")
        out[key] = float(value) if kind == FLOAT else \
            ([float(v) for v in value] if isinstance(value, list) else float(value)) if kind == FLOAT_OR_LIST else value
    for key, (kind, default) in schema.items():
        if key not in out:
            if default is REQUIRED:
                raise LandscapeError(f"{where}{key} is required")
            out[key] = default
    return out


# ----------------------------------------------------------------------------------------------
# value checks: each names its key and says what it wants, in one line

SEED_LIMIT = 2**32
# The embedded problem is generated in memory: refuse one that could not be.
MAX_EMBEDDED_BYTES = 8 << 30
# Counts that set how long a study trains or how big it is: a typo (1e11 epochs) must not run until killed.
MAX_EPOCHS = 100_000
MAX_MEMBERS = 1_000
MAX_WIDTH = 4_096
# The config file itself: read whole and parsed recursively (tomllib), so its size and nesting are bounded.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 100


def _count(table: dict, where: str, key: str, minimum: int = 1, maximum: int | None = None) -> None:
    """An integer >= minimum (1: a positive integer, 0: a non-negative one) and <= maximum when given;
    None means 'default'."""
    v = table.get(key)
    if v is None:
        return
    if minimum == 1:
        table[key] = v = positive_int(v, f"{where}{key}")
    elif not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}"
        raise LandscapeError(f"{where}{key} must be {kind}, got {v!r}")
    if maximum is not None and v > maximum:
        raise LandscapeError(f"{where}{key} must be at most {maximum:,}, got {v!r}")


def _rate(table: dict, where: str, key: str) -> None:
    """A learning rate or lr scale: finite and > 0 (anything else would only fail after training)."""
    if table.get(key) is not None:
        table[key] = finite_positive(table[key], f"{where}{key}")


def _decay(table: dict, where: str, key: str) -> None:
    v = table.get(key)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise LandscapeError(f"{where}{key} must be a finite non-negative number, got {v!r}")


def _momentum(table: dict, where: str, key: str) -> None:
    v = table.get(key)
    if v is not None and not (math.isfinite(v) and 0 <= v < 1):
        raise LandscapeError(f"{where}{key} must be a finite number in [0, 1), got {v!r}")


def _seed(table: dict, where: str, key: str) -> None:
    v = table.get(key)
    if v is not None and not 0 <= v < SEED_LIMIT:
        raise LandscapeError(f"{where}{key} must be an integer in [0, 2**32), got {v!r}")


def _recipe(table: dict, where: str) -> None:
    """An SGD recipe: epochs, lr, momentum, weight decay, batch size (whichever the table has)."""
    for k in ("epochs", "batch_size", "checkpoints"):
        if k in table and not isinstance(table[k], list):
            _count(table, where, k, maximum={"epochs": MAX_EPOCHS, "checkpoints": MAX_MEMBERS}.get(k))
    _rate(table, where, "lr")
    _momentum(table, where, "momentum")
    _decay(table, where, "weight_decay")


def _optimizer(table: dict, given: set[str], where: str) -> None:
    """A recipe's optimizer keys (RECIPE_KEYS), after `_recipe`: the optimizer's own defaults filled
    in, the other optimizer's keys refused, keys at their defaults dropped (see RECIPE_KEYS)."""
    kind = table["optimizer"]
    if kind not in OPTIMIZERS:
        raise LandscapeError(f"{where}optimizer must be one of {', '.join(OPTIMIZERS)}, got {_describe(kind)}")
    if kind == "sgd" and "betas" in given:
        raise LandscapeError(f"{where}betas applies to optimizer = \"adamw\" (SGD takes momentum)")
    if kind == "adamw" and "momentum" in given:
        raise LandscapeError(f"{where}momentum does not apply to optimizer = \"adamw\" (its first moment's decay is "
                             f"{where}betas[0])")
    for k, v in RECIPE_DEFAULTS[kind].items():
        if table.get(k) is None:
            table[k] = v
    if kind == "adamw":
        b = table["betas"]
        if not (isinstance(b, list) and len(b) == 2 and all(math.isfinite(x) and 0 <= x < 1 for x in b)):
            raise LandscapeError(f"{where}betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {b!r}")
        table["betas"] = [float(x) for x in b]
    else:
        table.pop("optimizer"), table.pop("betas")
    w = table["warmup_epochs"]
    if not (math.isfinite(w) and 0 <= w < table["epochs"]):
        raise LandscapeError(f"{where}warmup_epochs must be a number in [0, {where}epochs = {table['epochs']}), "
                             f"got {w!r}")
    if w == 0:
        table.pop("warmup_epochs")


def _study_name(name: str) -> None:
    """study.name is a plain name (it is shown and stored with the study): no path, no control characters."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name
            or (os.altsep and os.altsep in name) or not name.isprintable()
            or len(name) > 200):
        raise LandscapeError(f"study.name must be a plain name (printable, at most 200 characters, no path "
                             f"separators, not '.' or '..'), got {name!r}")


def _derived_lr(value: float, what: str) -> None:
    """A product of two valid numbers (lr × scale) can still overflow to inf or underflow to 0."""
    if not (math.isfinite(value) and value > 0):
        raise LandscapeError(f"{what} must be a finite positive number, got {value!r}")


def _check_embedded(data: dict) -> None:
    where = "data."
    _seed(data, where, "seed")
    for k in ("image_size", "channels", "parts", "part_size", "parts_per_image", "source_classes", "source_train",
              "source_test", "target_classes", "target_train_per_class", "target_test"):
        _count(data, where, k)
    _count(data, where, "target_val", minimum=0)
    for k in ("noise", "background"):
        _decay(data, where, k)
    images = data["source_train"] + data["source_test"] + data["target_classes"] * data["target_train_per_class"] \
        + data["target_test"] + data["target_val"]
    need = 4 * data["channels"] * (images * data["image_size"] ** 2 + data["parts"] * data["part_size"] ** 2)
    if need > MAX_EMBEDDED_BYTES:
        raise LandscapeError(f"data: the embedded problem's {images:,} images (data.source_train + source_test + "
                             f"target_classes × target_train_per_class + target_test) of {data['channels']}x"
                             f"{data['image_size']}x{data['image_size']} need {need / 2**30:.1f} GiB; the limit is "
                             f"{MAX_EMBEDDED_BYTES / 2**30:.0f} GiB: use fewer samples or a smaller data.image_size")


def _digits_data(data: dict, given: set[str]) -> dict:
    """The [data] table of a kind = "digits" study: its own keys with DigitsSpec's defaults (not the
    embedded problem's), each checked; a key of another kind is refused in one line."""
    bad = sorted(given & REAL_ONLY)
    if bad:
        raise LandscapeError(f"data.{bad[0]} does not apply to the digits data (kind = \"digits\": MNIST and "
                             "scikit-learn's digits, read from the installed packages)")
    bad = sorted(given & (EMBEDDED_ONLY - set(DIGITS_KEYS)))
    if bad:
        raise LandscapeError(f"data.{bad[0]} only applies to the embedded data, not kind = \"digits\" (its keys: "
                             f"{', '.join(DIGITS_KEYS)}, augment_shift)")
    defaults = asdict(DigitsSpec())
    out = {"kind": "digits", "augment_shift": data["augment_shift"],
           **{k: data[k] if k in given else defaults[k] for k in DIGITS_KEYS}}
    where = "data."
    _seed(out, where, "seed")
    for k in ("image_size", "source_train", "source_test", "target_train_per_class"):
        _count(out, where, k)
    _count(out, where, "target_val", minimum=0)
    DigitsSpec(**{k: out[k] for k in DIGITS_KEYS}).check()
    return out


def _check_plane_through(refs: list[str], methods: list[MethodConfig]) -> None:
    """Two distinct members, neither the fine-tuned model (the plane's centre)."""
    if len(refs) != 2:
        raise LandscapeError("analysis.plane_through must name two methods (their last members span the "
                             "plane with the fine-tuned model), e.g. [\"local_de\", \"starsse_large\"]")
    by_name = {m.name: m for m in methods}
    picked = []
    for ref in refs:
        name, colon, idx = ref.partition(":")
        if name not in by_name:
            raise LandscapeError(f"analysis.plane_through names {ref!r}, which is not a method "
                                 f"(methods: {', '.join(by_name)})")
        m = by_name[name]
        if colon:
            if not (idx.isascii() and idx.isdigit()) or int(idx) >= m.members:
                raise LandscapeError(f"analysis.plane_through names {ref!r}: the member index must be an integer "
                                     f"from 0 to {m.members - 1} ({name} has {m.members} members)")
            i = int(idx)
        else:
            i = m.members - 1
        # Member 0 of every method but SWA and Garipov's FGE is the fine-tuned model (samplers.plan_study).
        if i == 0 and m.type != "swa" and not (m.type == "fge" and m.params.get("schedule") == "garipov"):
            raise LandscapeError(f"analysis.plane_through names {ref!r}, which is the fine-tuned model, the plane's "
                                 "centre: name another member")
        picked.append((name, i))
    if picked[0] == picked[1]:
        raise LandscapeError(f"analysis.plane_through names the same member twice ({refs[0]!r}, {refs[1]!r}): "
                             "a plane needs two different members")


def _check_verdicts(v: dict) -> None:
    if not 0.5 <= v["confidence"] < 1:
        raise LandscapeError(f"verdicts.confidence = {v['confidence']!r}: give a two-sided confidence level in "
                             "[0.5, 1), e.g. 0.9")
    for k in ("acc_margin", "nll_margin", "barrier_margin"):
        if not (math.isfinite(v[k]) and v[k] > 0):
            raise LandscapeError(f"verdicts.{k} = {v[k]!r}: a margin is a positive number")


def _check_analysis(an: dict, methods: list[MethodConfig]) -> None:
    where = "analysis."
    for k in ("train_samples", "test_samples", "bn_samples", "ece_bins", "sharpness_members", "hessian_iters",
              "hessian_probes", "curve_epochs"):
        _count(an, where, k)
    _count(an, where, "curve_points", minimum=3)
    for k in ("line_points", "pairwise_points", "plane_points"):
        _count(an, where, k, minimum=3)
    # Refuse a grid whose arrays cannot be allocated now, not after every member has trained.
    n = an["line_points"]
    check_grid_size((n,), f"analysis.line_points = {n}: each line")
    n = an["pairwise_points"]
    check_grid_size((n,), f"analysis.pairwise_points = {n}: each line")
    if an["pairwise"]:
        for m in methods:
            if m.pairwise and m.members >= 2:
                pairs = m.members * (m.members - 1) // 2
                check_grid_size((pairs, n), f"analysis.pairwise_points = {n}: methods.{m.name}'s barrier grid")
    if an["align"] not in ALIGN_CHOICES:
        raise LandscapeError(f"{where}align = {an['align']!r}: choose {', '.join(ALIGN_CHOICES)} (the pairwise "
                             "barriers of Local and Global DE members are also computed after aligning their units)")
    n = an["plane_points"]
    check_grid_size((n, n), f"analysis.plane_points = {n}: the plane")
    if an["plane_through"] is not None:
        _check_plane_through(an["plane_through"], methods)


def _seeds(st: dict) -> None:
    seeds = st.get("seeds")
    if seeds is None:
        return
    for v in seeds:
        _seed({"seeds": v}, "study.", "seeds")
    if len(set(seeds)) != len(seeds):
        raise LandscapeError(f"study.seeds must not repeat a seed, got {seeds}")


def _cell_name(table: str, cell: dict[str, float]) -> str:
    """TABLE-lrX-cY: the grid coordinates that vary, in a file-name-safe form."""
    tag = {"lr_scale": "lr", "cycle_scale": "c", "cycle_epochs": "e"}
    return "-".join([table] + [f"{tag[k]}{v:g}" for k, v in cell.items()])


def _parse_method(name: str, table: Any, st: dict, ft: dict) -> list[MethodConfig]:
    """A [methods.NAME] table: one method, or one per cell when a grid key holds a list."""
    where = f"methods.{name}."
    if not isinstance(table, Mapping):
        raise LandscapeError(f"methods.{name} must be a table, got {_describe(table)}")
    mtype = table.get("type", name if name in METHOD_TYPES else None)
    if mtype is None:
        raise LandscapeError(f"{where}type is required (one of {', '.join(METHOD_TYPES)})")
    if mtype not in METHOD_TYPES:
        raise LandscapeError(f"{where}type must be one of {', '.join(METHOD_TYPES)}, got {_describe(mtype)}")
    filled = _with_defaults(table, {**METHOD_COMMON, **METHOD_SCHEMA[mtype]}, where)
    filled.pop("type")
    _count(filled, where, "members", minimum=1 if mtype == "swa" else 2, maximum=MAX_MEMBERS)
    members = filled.pop("members") or st["members"]
    pairwise = filled.pop("pairwise")
    if mtype == "fge":
        sched = filled["schedule"]
        if sched not in FGE_SCHEDULES:
            raise LandscapeError(f"{where}schedule must be one of {', '.join(FGE_SCHEDULES)}, got {sched!r}")
        if sched == "cyclic":
            if filled["lr_scale"] is None:
                raise LandscapeError(f"{where}lr_scale is required for schedule = \"cyclic\" "
                                     "(η_c = lr_scale × finetune.lr)")
            bad = sorted(k for k in ("lr1_scale", "lr2_scale") if k in table)
            if bad:
                raise LandscapeError(f"{where}{bad[0]} applies to schedule = \"garipov\" only")
            filled.pop("lr1_scale"), filled.pop("lr2_scale")
        else:
            if "lr_scale" in table:
                raise LandscapeError(f"{where}lr_scale applies to schedule = \"cyclic\"; Garipov's schedule takes "
                                     "lr1_scale and lr2_scale")
            filled.pop("lr_scale")
            if filled["lr2_scale"] > filled["lr1_scale"]:
                raise LandscapeError(f"{where}lr2_scale must not exceed lr1_scale (lr2 is the minimum)")
    if mtype in ("sse", "starsse", "fge"):
        if filled["cycle_scale"] is not None and filled["cycle_epochs"] is not None:
            raise LandscapeError(f"{where}cycle_scale and cycle_epochs both set the cycle length: give one")
        if filled["cycle_scale"] is None and filled["cycle_epochs"] is None:
            if mtype == "fge" and filled["schedule"] == "garipov":
                filled["cycle_epochs"] = 2.0
            else:
                filled["cycle_scale"] = 1.0
    grid = {k: filled[k] for k in GRID_KEYS if isinstance(filled.get(k), list)}
    for k, values in grid.items():
        if len(set(values)) != len(values):
            raise LandscapeError(f"{where}{k} repeats a value: {values}")
    cells = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else [{}]
    out = []
    for cell in cells:
        params = {**filled, **cell}
        cell_name = _cell_name(name, cell) if grid else name
        cw = f"{where}" if not grid else f"{where}(cell {cell_name}) "
        for k in ("lr_scale", "lr1_scale", "lr2_scale", "cycle_scale", "cycle_epochs"):
            _rate(params, cw, k)
        for k in ("lr_scale", "lr1_scale", "lr2_scale"):
            if params.get(k) is not None:
                _derived_lr(ft["lr"] * params[k], f"finetune.lr × {cw}{k}")
        if params.get("cycle_scale") is not None:
            params["cycle_epochs"] = params["cycle_scale"] * ft["epochs"]
        if params.get("cycle_epochs") is not None and params["cycle_epochs"] > MAX_EPOCHS:
            raise LandscapeError(f"{cw}cycle_epochs must be at most {MAX_EPOCHS:,} (cycle_scale × finetune.epochs "
                                 f"for cycle_scale), got {params['cycle_epochs']!r}")
        _count(params, where, "epochs", maximum=MAX_EPOCHS)
        _count(params, where, "anneal_epochs", minimum=0, maximum=MAX_EPOCHS)
        if mtype == "swa":
            params["epochs"] = params["epochs"] or max(1, ft["epochs"] // 2)
            if params["anneal_epochs"] is None:
                params["anneal_epochs"] = min(max(1, params["epochs"] // 4), params["epochs"] - 1)
            if params["anneal_epochs"] >= params["epochs"]:
                raise LandscapeError(f"{where}anneal_epochs ({params['anneal_epochs']}) must be less than "
                                     f"{where}epochs ({params['epochs']}): SWA averages the epochs after the anneal, at least one")
        # Pairwise barrier matrices are K² lines: on by default for single methods, off for grid cells.
        pw = (not grid) if pairwise is None else pairwise
        out.append(MethodConfig(cell_name, mtype, members, pw, params, name))
    return out


def _check_objective(pre: dict, given: set[str], data: dict) -> None:
    """pretrain.objective and its hyperparameters (experiments.ssl); a supervised study keeps none of
    them, a self-supervised one only its own objective's."""
    obj = pre["objective"]
    if obj not in OBJECTIVES:
        raise LandscapeError(f"pretrain.objective must be one of {', '.join(OBJECTIVES)}, got {_describe(obj)}")
    wrong = sorted(k for k in given if k in SSL_KEYS and (obj == "supervised" or SSL_ONLY.get(k, obj) != obj))
    if wrong:
        k = wrong[0]
        raise LandscapeError(f"pretrain.{k} only applies to pretrain.objective = "
                             f"{SSL_ONLY.get(k, 'byol or simclr')!r}, not {obj!r}")
    if obj == "supervised":
        for k in ("objective", *SSL_KEYS):
            pre.pop(k)
        return
    for k in [k for k, o in SSL_ONLY.items() if o != obj]:
        pre.pop(k)
    w = "pretrain."
    if obj == "byol" and not (math.isfinite(pre["ema"]) and 0 <= pre["ema"] < 1):
        raise LandscapeError(f"{w}ema (BYOL's base target decay τ) must be a number in [0, 1), got {pre['ema']!r}")
    _rate(pre, w, "temperature")
    for k in ("projector_dim", "hidden_dim"):
        _count(pre, w, k, maximum=MAX_WIDTH * 16)
    if pre["batch_size"] < 2:
        raise LandscapeError(f"{w}batch_size must be at least 2 for pretrain.objective = {obj!r} (a batch's views "
                             f"are compared with each other, and BatchNorm needs two samples), got {pre['batch_size']}")
    c = pre["augment_crop"]
    if not (math.isfinite(c) and 0 < c <= 1):
        raise LandscapeError(f"{w}augment_crop (the smallest crop's area fraction) must be in (0, 1], got {c!r}")
    _count(pre, w, "augment_shift", minimum=0)
    if pre["augment_shift"] >= data["image_size"]:
        raise LandscapeError(f"{w}augment_shift must be less than the image size ({data['image_size']}), "
                             f"got {pre['augment_shift']}")
    for k in ("augment_brightness", "augment_noise", "probe_weight_decay"):
        _decay(pre, w, k)
    if not (math.isfinite(pre["augment_contrast"]) and 0 <= pre["augment_contrast"] < 1):
        raise LandscapeError(f"{w}augment_contrast must be a number in [0, 1) (contrast factors 1 ± it), "
                             f"got {pre['augment_contrast']!r}")


def _check_runtime(sections: dict, raw: Mapping[str, Any]) -> None:
    """[runtime] (experiments.accel) and pretrain.ignore_keys: values, and keys that do not apply."""
    rt, pre, kind = sections["runtime"], sections["pretrain"], sections["data"]["kind"]
    _count(rt, "runtime.", "micro_batch_size")
    check_runtime(rt, "runtime.")
    given = raw.get("runtime", {})
    if kind in SELF_PRETRAINED:
        bad = [k for k in LOADER_KEYS if k in given]
        if bad:
            raise LandscapeError(f"runtime.{bad[0]} only applies to image-folder data (DataLoaders), not kind = "
                                 f"\"{kind}\"")
        if "ignore_keys" in raw.get("pretrain", {}):
            raise LandscapeError(f"pretrain.ignore_keys only applies to checkpoint files (real data); the {kind} "
                                 "study pre-trains its own checkpoints")
        pre.pop("ignore_keys", None)
        return
    keys = pre.get("ignore_keys") or []
    for p in keys:
        if not p.strip():
            raise LandscapeError("pretrain.ignore_keys holds an empty prefix, which would skip every key; list "
                                 "prefixes such as \"projector.\"")
    pre["ignore_keys"] = list(keys)


def parse_config(raw: Mapping[str, Any], source: str = "<config>", check_paths: bool = True) -> StudyConfig:
    """Validate a parsed TOML document; raise LandscapeError('config SOURCE: ...') on the first problem."""
    try:
        return _parse(raw, check_paths)._replace_source(source)
    except LandscapeError as exc:
        raise LandscapeError(f"config {source}: {exc}") from None


def _parse(raw: Mapping[str, Any], check_paths: bool) -> _Parsed:
    known = [*SCHEMA, "methods"]
    for key in raw:
        if key not in known:
            raise LandscapeError(_unknown("", key, known))
    sections = {name: _with_defaults(raw.get(name, {}), schema, f"{name}.") for name, schema in SCHEMA.items()}
    st, data, model, pre, ft, sc, an = (sections[k] for k in ("study", "data", "model", "pretrain", "finetune",
                                                              "scratch", "analysis"))
    _seed(st, "study.", "seed")
    _count(st, "study.", "members", minimum=2, maximum=MAX_MEMBERS)
    _study_name(st["name"])
    _count(st, "study.", "eval_batch_size")
    _count(st, "study.", "threads", minimum=0)
    _check_verdicts(sections["verdicts"])

    # data
    if data["kind"] not in DATA_KINDS:
        raise LandscapeError(f"data.kind must be one of {', '.join(DATA_KINDS)}, got {data['kind']!r}")
    given = set(raw.get("data", {}))
    _count(data, "data.", "augment_shift", minimum=0)
    if data["kind"] == "embedded":
        bad = sorted(given & REAL_ONLY)
        if bad:
            raise LandscapeError(f"data.{bad[0]} does not apply to the embedded data (kind = \"embedded\")")
        _count(data, "data.", "image_size")  # before the default: 0 is not "unset"
        data["image_size"] = data["image_size"] or EmbeddedSpec.image_size
        for k in list(data):
            if k in REAL_ONLY:
                data.pop(k)
        _check_embedded(data)
        EmbeddedSpec(**{k: data[k] for k in asdict(EmbeddedSpec())}).check()
    elif data["kind"] == "digits":
        data = sections["data"] = _digits_data(data, given)
    else:
        bad = sorted(given & EMBEDDED_ONLY)
        if bad:
            raise LandscapeError(f"data.{bad[0]} only applies to the embedded data, not kind = {data['kind']!r}")
        for k in list(data):
            if k in EMBEDDED_ONLY:
                data.pop(k)
        if not data.get("root"):
            raise LandscapeError(f"data.root (the local {data['kind']} folder) is required")
        data["root"] = os.path.expanduser(data["root"])
        _count(data, "data.", "image_size")
        _count(data, "data.", "num_workers", minimum=0)
        vf = data["val_fraction"]
        if not (math.isfinite(vf) and 0 <= vf < 1):
            raise LandscapeError(f"data.val_fraction must be a number in [0, 1), got {vf!r}")
        data["image_size"] = data["image_size"] or 224
        if check_paths and not os.path.isdir(data["root"]):
            raise LandscapeError(f"data folder {data['root']!r} does not exist (data.root)")
    if data["augment_shift"] >= data["image_size"]:
        raise LandscapeError(f"data.augment_shift must be less than the image size ({data['image_size']}), "
                             f"got {data['augment_shift']}")

    # model
    if model["width"] is not None and model["name"] not in ("small_cnn", "tiny_cnn"):
        raise LandscapeError(f"model.width only applies to small_cnn and tiny_cnn, not {model['name']!r}")
    _count(model, "model.", "width", maximum=MAX_WIDTH)

    # recipes (scratch's defaults come from the fine-tuning recipe, checked first)
    _recipe(ft, "finetune.")
    _optimizer(ft, set(raw.get("finetune", {})), "finetune.")
    _recipe(sc, "scratch.")
    sc["epochs"] = sc["epochs"] or 2 * ft["epochs"]
    sc["lr"] = sc["lr"] or ft["lr"]
    if ft.get("warmup_epochs", 0) >= sc["epochs"]:  # the baseline trains with the fine-tuning recipe
        raise LandscapeError(f"finetune.warmup_epochs ({ft['warmup_epochs']:g}) must be less than scratch.epochs "
                             f"({sc['epochs']}): the from-scratch baseline warms up as the fine-tuning does")

    # methods
    methods = []
    raw_methods = raw.get("methods", {})
    if not isinstance(raw_methods, Mapping) or not raw_methods:
        raise LandscapeError("no [methods.NAME] tables: a study needs at least one method")
    for name, table in raw_methods.items():
        methods.extend(_parse_method(name, table, st, ft))
    names = [m.name for m in methods]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise LandscapeError(f"two methods are named {dup!r} (a grid cell's name is TABLE-lrX-cY): rename a table")
    _seeds(st)

    # pre-training / checkpoints
    need = max([m.members for m in methods if m.type == "global_de"], default=1)
    given_pre = set(raw.get("pretrain", {}))
    if data["kind"] in SELF_PRETRAINED:
        if isinstance(pre["checkpoints"], list):
            raise LandscapeError(f"pretrain.checkpoints must be an integer for the {data['kind']} data "
                                 "(how many checkpoints to pre-train on the source task)")
        _recipe(pre, "pretrain.")
        _optimizer(pre, given_pre, "pretrain.")
        pre["checkpoints"] = pre["checkpoints"] or need
        _check_objective(pre, given_pre, data)
        odd = [k for k in ("optimizer", "warmup_epochs") if k in pre]
        if odd and pre.get("objective", "supervised") != "supervised":
            raise LandscapeError(f"pretrain.{odd[0]} applies to supervised pre-training only (experiments.ssl "
                                 f"trains {pre['objective']} with its own SGD recipe)")
    else:
        ck = pre["checkpoints"]
        if not isinstance(ck, list) or not ck:
            raise LandscapeError("pretrain.checkpoints must list the local pre-trained checkpoint files "
                                 f"for {data['kind']} (pre-training on a source task is for kind = \"embedded\" "
                                 "or \"digits\")")
        bad = sorted(given_pre - {"checkpoints", "ignore_keys"})
        if bad:
            raise LandscapeError(f"pretrain.{bad[0]} only applies to the embedded and digits data (pre-training "
                                 "there)")
        pre["checkpoints"] = [os.path.expanduser(p) for p in ck]
        if check_paths:
            for p in pre["checkpoints"]:
                if not os.path.isfile(p):
                    raise LandscapeError(f"checkpoint file {p!r} does not exist (pretrain.checkpoints)")
        for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size", "cache", "objective", *SSL_KEYS):
            pre.pop(k)
        for k in RECIPE_KEYS:
            pre.pop(k, None)
    have = pre["checkpoints"] if isinstance(pre["checkpoints"], int) else len(pre["checkpoints"])
    if need > have:
        raise LandscapeError(f"global_de with {need} members needs {need} pre-trained checkpoints, "
                             f"pretrain.checkpoints gives {have}")

    _check_runtime(sections, raw)
    _check_analysis(an, methods)
    return _Parsed(sections, methods)


@dataclass
class _Parsed:
    sections: dict
    methods: list

    def _replace_source(self, source: str) -> StudyConfig:
        return StudyConfig(source, self.sections, self.methods)


def shipped_path(name: str) -> str:
    return str(resources.files("experiments").joinpath("configs", f"{name}.toml"))


def resolve_config_path(ref: str) -> str:
    """A config file path, or the name of a shipped config (demo, demo_quick, cifar10_resnet50, ...)."""
    if os.path.isfile(ref):
        return ref
    stem = ref.removesuffix(".toml")
    if os.sep not in ref and stem in SHIPPED:
        return shipped_path(stem)
    if os.path.exists(ref):
        raise LandscapeError(f"config {ref!r} is not a file")
    raise LandscapeError(f"config {ref!r} not found (give a TOML file or a shipped config: {', '.join(SHIPPED)})")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` (value in TOML syntax; bare words are strings)."""
    key, sep, value = text.partition("=")
    path = [p.strip() for p in key.strip().split(".")]
    if not sep or len(path) < 2 or not all(path):
        raise LandscapeError(f"malformed --set {text!r}: expected SECTION.KEY=VALUE, e.g. data.root=/data/cifar100")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    except RecursionError:
        raise LandscapeError(f"--set {text!r}: the value is nested too deeply") from None
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for p in path[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise LandscapeError(f"--set {text!r}: {p!r} is not a table")
        node[path[-1]] = value
    return raw


def _toml_depth(text: str) -> int:
    """The nesting of `text`'s arrays and inline tables, scanned before tomllib (which recurses): brackets
    and braces outside strings and comments (a close approximation; tomllib still has the last word)."""
    depth = deepest = 0
    quote, escaped, comment = None, False, False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _parse_toml(data: bytes, source: str) -> dict[str, Any]:
    """A config file's bytes as a TOML document, or one line saying why not (size, text, nesting, syntax)."""
    if len(data) > MAX_CONFIG_BYTES:
        raise LandscapeError(f"config {source} is larger than {MAX_CONFIG_BYTES:,} bytes: not a study config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:
        raise LandscapeError(f"config {source} is not a text file (a study config is UTF-8 TOML)")
    if _toml_depth(text) > MAX_CONFIG_DEPTH:
        raise LandscapeError(f"config {source} is not valid TOML: arrays or tables nested too deeply "
                             f"(more than {MAX_CONFIG_DEPTH} levels)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LandscapeError(f"config {source} is not valid TOML: {exc}") from None
    except RecursionError:
        raise LandscapeError(f"config {source} is not valid TOML: arrays or tables nested too deeply") from None


def read_config_file(ref: str) -> tuple[str, dict[str, Any]]:
    """The path a config reference names and its TOML document, unvalidated (one-line errors)."""
    path = resolve_config_path(ref)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise LandscapeError(f"config {path!r} cannot be read: {exc.strerror}") from None
    return path, _parse_toml(data, os.path.basename(path))


def load_config(ref: str | Mapping[str, Any], overrides: list[str] = (), check_paths: bool = True) -> StudyConfig:
    """Load and validate a study config: a TOML path, a shipped config name, or an already-parsed dict."""
    if isinstance(ref, Mapping):
        try:
            raw, source = json.loads(json.dumps(ref)), "<dict>"
        except RecursionError:
            raise LandscapeError("config <dict>: nested too deeply") from None
    else:
        path, raw = read_config_file(str(ref))
        source = os.path.basename(path)
        if "suite" in raw:  # several studies (experiments.suite): not one study's config
            raise LandscapeError(f"config {source} is a suite of studies ([suite]): `landscape run {ref}` runs "
                                 "them; experiments.suite.suite_studies reads their configs")
    try:
        raw = apply_overrides(raw, list(overrides))
    except LandscapeError as exc:
        raise LandscapeError(f"config {source}: {exc}") from None
    return parse_config(raw, source, check_paths)
