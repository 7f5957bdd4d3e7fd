"""Study configs: TOML files (tomllib) validated on load, with one-line errors.

A config has these tables (see experiments/configs/demo.toml for a commented example):

    [study]     name, seed, members (K), device, eval_batch_size
    [data]      kind = "embedded" | "cifar10" | "cifar100" | "imagefolder", and either the embedded
                problem's parameters or root (a local folder), image_size, num_workers
    [model]     name (small_cnn | tiny_cnn | resnet18 | resnet50 | torchvision:NAME | module:factory), width
    [pretrain]  embedded: checkpoints (how many to train), epochs, lr, momentum, weight_decay,
                batch_size, cache; real data: checkpoints = [local .pt files]
    [finetune]  epochs, lr, momentum, weight_decay, batch_size (the recipe every method builds on)
    [scratch]   enabled, epochs, lr (the from-scratch baseline that measures the benefit of transfer)
    [methods.NAME]  type = local_de | global_de | sse | starsse | fge | swa, and its hyperparameters
    [analysis]  line_points, pairwise_points, plane, plane_through, plane_points, train_samples,
                test_samples, bn_samples

Errors name the file and the key: an unknown key (with the closest known one), a wrong type, a
missing data folder or checkpoint file, a method without its required hyperparameters, and any
value that could only fail later (a learning rate that is not a finite positive number, a
momentum outside [0, 1), a count that is not a positive integer, a grid too large for memory, a
plane through a member that does not exist), so a bad study is refused before any training.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Mapping

from landscape.errors import LandscapeError
from landscape.validate import check_grid_size, finite_positive, positive_int

from .data import EmbeddedSpec

SHIPPED = ("demo", "demo_quick", "tiny", "cifar10_resnet50", "cifar100_resnet50")
DATA_KINDS = ("embedded", "cifar10", "cifar100", "imagefolder")
METHOD_TYPES = ("local_de", "global_de", "sse", "starsse", "fge", "swa")

INT, FLOAT, BOOL, STR = "integer", "number", "boolean", "string"
STR_LIST, INT_OR_STR_LIST = "list of strings", "integer or list of strings"

# key -> (type, default); a default of REQUIRED must be given.
REQUIRED = object()

_EMBEDDED = {k: (FLOAT if isinstance(v, float) else INT, v) for k, v in asdict(EmbeddedSpec()).items()}

SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "study": {"name": (STR, "study"), "seed": (INT, 0), "members": (INT, 5), "device": (STR, "auto"),
              "eval_batch_size": (INT, 500), "threads": (INT, 0)},
    "data": {"kind": (STR, "embedded"), "augment_shift": (INT, 2), "root": (STR, None),
             "image_size": (INT, None), "num_workers": (INT, 4), **{f"{k}": v for k, v in _EMBEDDED.items()
                                                                   if k != "image_size"}},
    "model": {"name": (STR, "small_cnn"), "width": (INT, None)},
    "pretrain": {"checkpoints": (INT_OR_STR_LIST, None), "epochs": (INT, 8), "lr": (FLOAT, 0.05),
                 "momentum": (FLOAT, 0.9), "weight_decay": (FLOAT, 5e-4), "batch_size": (INT, 64),
                 "cache": (BOOL, True)},
    "finetune": {"epochs": (INT, 20), "lr": (FLOAT, 0.02), "momentum": (FLOAT, 0.9),
                 "weight_decay": (FLOAT, 5e-4), "batch_size": (INT, 32)},
    "scratch": {"enabled": (BOOL, True), "epochs": (INT, None), "lr": (FLOAT, None)},
    "analysis": {"line_points": (INT, 11), "pairwise_points": (INT, 7), "pairwise": (BOOL, True),
                 "plane": (BOOL, True), "plane_through": (STR_LIST, None), "plane_points": (INT, 11),
                 "train_samples": (INT, 1000), "test_samples": (INT, 1000), "bn_samples": (INT, 1000),
                 "ece_bins": (INT, 15), "sharpness": (BOOL, True), "sharpness_members": (INT, 2),
                 "hessian_iters": (INT, 20), "hessian_probes": (INT, 20), "curves": (BOOL, True),
                 "curve_epochs": (INT, 10), "curve_points": (INT, 11)},
}
EMBEDDED_ONLY = set(_EMBEDDED) - {"image_size"}
REAL_ONLY = {"root", "num_workers"}

METHOD_SCHEMA: dict[str, dict[str, tuple[str, Any]]] = {
    "local_de": {},
    "global_de": {},
    "sse": {"lr_scale": (FLOAT, REQUIRED), "cycle_epochs": (INT, None)},
    "starsse": {"lr_scale": (FLOAT, REQUIRED), "cycle_epochs": (INT, None)},
    "fge": {"lr1_scale": (FLOAT, 1.0), "lr2_scale": (FLOAT, 0.01), "cycle_epochs": (FLOAT, 2.0)},
    "swa": {"lr_scale": (FLOAT, 0.5), "epochs": (INT, None), "anneal_epochs": (INT, 1)},
}
METHOD_COMMON = {"type": (STR, None), "members": (INT, None), "pairwise": (BOOL, True)}


@dataclass
class MethodConfig:
    name: str
    type: str
    members: int
    pairwise: bool
    params: dict[str, Any]


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
        return self.sections["study"]["seed"]

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
    def num_checkpoints(self) -> int:
        ck = self.sections["pretrain"]["checkpoints"]
        return len(ck) if isinstance(ck, list) else int(ck)

    def method(self, name: str) -> MethodConfig:
        return next(m for m in self.methods if m.name == name)

    def to_json(self) -> dict[str, Any]:
        return {**self.sections, "methods": {m.name: {"type": m.type, "members": m.members,
                                                       "pairwise": m.pairwise, **m.params}
                                             for m in self.methods}}

    def fingerprint(self) -> str:
        """What makes two studies the same study: everything that affects the trained snapshots.

        The analysis settings and the device are left out: changing them reuses every snapshot.
        """
        d = self.to_json()
        d.pop("analysis")
        d["study"] = {k: v for k, v in d["study"].items() if k not in ("device", "eval_batch_size", "threads")}
        d["pretrain"] = {k: v for k, v in d["pretrain"].items() if k != "cache"}
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
    raise AssertionError(kind)


def _describe(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{value!r} ({names.get(type(value), type(value).__name__)})"


def _unknown(where: str, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(known))})"
    return f"unknown key {where}{key!r}{hint}"


def _fill(table: Mapping[str, Any], schema: Mapping[str, tuple[str, Any]], where: str) -> dict[str, Any]:
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
        out[key] = float(value) if kind == FLOAT else value
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


def _count(table: dict, where: str, key: str, minimum: int = 1) -> None:
    """An integer >= minimum (1: a positive integer, 0: a non-negative one); None means 'default'."""
    v = table.get(key)
    if v is None:
        return
    if minimum == 1:
        table[key] = positive_int(v, f"{where}{key}")
    elif not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer of at least {minimum}"
        raise LandscapeError(f"{where}{key} must be {kind}, got {v!r}")


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
            _count(table, where, k)
    _rate(table, where, "lr")
    _momentum(table, where, "momentum")
    _decay(table, where, "weight_decay")


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
    for k in ("noise", "background"):
        _decay(data, where, k)
    images = data["source_train"] + data["source_test"] + data["target_classes"] * data["target_train_per_class"] \
        + data["target_test"]
    need = 4 * data["channels"] * (images * data["image_size"] ** 2 + data["parts"] * data["part_size"] ** 2)
    if need > MAX_EMBEDDED_BYTES:
        raise LandscapeError(f"data: the embedded problem's {images:,} images (data.source_train + source_test + "
                             f"target_classes × target_train_per_class + target_test) of {data['channels']}x"
                             f"{data['image_size']}x{data['image_size']} need {need / 2**30:.1f} GiB; the limit is "
                             f"{MAX_EMBEDDED_BYTES / 2**30:.0f} GiB: use fewer samples or a smaller data.image_size")


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
        # Member 0 of every method but SWA is the fine-tuned model (see samplers.plan_study).
        if i == 0 and m.type != "swa":
            raise LandscapeError(f"analysis.plane_through names {ref!r}, which is the fine-tuned model, the plane's "
                                 "centre: name another member")
        picked.append((name, i))
    if picked[0] == picked[1]:
        raise LandscapeError(f"analysis.plane_through names the same member twice ({refs[0]!r}, {refs[1]!r}): "
                             "a plane needs two different members")


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
    n = an["plane_points"]
    check_grid_size((n, n), f"analysis.plane_points = {n}: the plane")
    if an["plane_through"] is not None:
        _check_plane_through(an["plane_through"], methods)


def parse_config(raw: Mapping[str, Any], source: str = "<config>", check_paths: bool = True) -> StudyConfig:
    """Validate a parsed TOML document; raise LandscapeError('config SOURCE: ...') on the first problem."""
    try:
        return _parse(raw, check_paths)._replace_source(source)
    except LandscapeError as exc:
        raise LandscapeError(f"config {source}: {exc}") from None


def _parse(raw: Mapping[str, Any], check_paths: bool) -> "_Parsed":
    known = [*SCHEMA, "methods"]
    for key in raw:
        if key not in known:
            raise LandscapeError(_unknown("", key, known))
    sections = {name: _fill(raw.get(name, {}), schema, f"{name}.") for name, schema in SCHEMA.items()}
    st, data, model, pre, ft, sc, an = (sections[k] for k in ("study", "data", "model", "pretrain", "finetune",
                                                              "scratch", "analysis"))
    _seed(st, "study.", "seed")
    _count(st, "study.", "members", minimum=2)
    _count(st, "study.", "eval_batch_size")
    _count(st, "study.", "threads", minimum=0)

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
        data["image_size"] = data["image_size"] or 224
        if check_paths and not os.path.isdir(data["root"]):
            raise LandscapeError(f"data folder {data['root']!r} does not exist (data.root)")
    if data["augment_shift"] >= data["image_size"]:
        raise LandscapeError(f"data.augment_shift must be less than the image size ({data['image_size']}), "
                             f"got {data['augment_shift']}")

    # model
    if model["width"] is not None and model["name"] not in ("small_cnn", "tiny_cnn"):
        raise LandscapeError(f"model.width only applies to small_cnn and tiny_cnn, not {model['name']!r}")
    _count(model, "model.", "width")

    # recipes (scratch's defaults come from the fine-tuning recipe, checked first)
    _recipe(ft, "finetune.")
    _recipe(sc, "scratch.")
    sc["epochs"] = sc["epochs"] or 2 * ft["epochs"]
    sc["lr"] = sc["lr"] or ft["lr"]

    # methods
    methods = []
    raw_methods = raw.get("methods", {})
    if not isinstance(raw_methods, Mapping) or not raw_methods:
        raise LandscapeError("no [methods.NAME] tables: a study needs at least one method")
    for name, table in raw_methods.items():
        where = f"methods.{name}."
        if not isinstance(table, Mapping):
            raise LandscapeError(f"methods.{name} must be a table, got {_describe(table)}")
        mtype = table.get("type", name if name in METHOD_TYPES else None)
        if mtype is None:
            raise LandscapeError(f"{where}type is required (one of {', '.join(METHOD_TYPES)})")
        if mtype not in METHOD_TYPES:
            raise LandscapeError(f"{where}type must be one of {', '.join(METHOD_TYPES)}, got {_describe(mtype)}")
        filled = _fill(table, {**METHOD_COMMON, **METHOD_SCHEMA[mtype]}, where)
        filled.pop("type")
        _count(filled, where, "members", minimum=1 if mtype == "swa" else 2)
        members = filled.pop("members") or st["members"]
        pairwise = filled.pop("pairwise")
        for k in ("lr_scale", "lr1_scale", "lr2_scale"):
            _rate(filled, where, k)
            if k in filled:
                _derived_lr(ft["lr"] * filled[k], f"finetune.lr × {where}{k}")
        if mtype == "fge":
            _rate(filled, where, "cycle_epochs")  # a float: FGE cycles may be fractions of an epoch
        else:
            _count(filled, where, "cycle_epochs")
        _count(filled, where, "epochs")
        _count(filled, where, "anneal_epochs", minimum=0)
        if mtype in ("sse", "starsse"):
            filled["cycle_epochs"] = filled["cycle_epochs"] or ft["epochs"]
        if mtype == "swa":
            filled["epochs"] = filled["epochs"] or max(1, ft["epochs"] // 2)
            if filled["anneal_epochs"] > filled["epochs"]:
                raise LandscapeError(f"{where}anneal_epochs ({filled['anneal_epochs']}) exceeds epochs "
                                     f"({filled['epochs']})")
        if mtype == "fge" and filled["lr2_scale"] > filled["lr1_scale"]:
            raise LandscapeError(f"{where}lr2_scale must not exceed lr1_scale (lr2 is the minimum)")
        methods.append(MethodConfig(name, mtype, members, pairwise, filled))

    # pre-training / checkpoints
    need = max([m.members for m in methods if m.type == "global_de"], default=1)
    given_pre = set(raw.get("pretrain", {}))
    if data["kind"] == "embedded":
        if isinstance(pre["checkpoints"], list):
            raise LandscapeError("pretrain.checkpoints must be an integer for the embedded data "
                                 "(how many checkpoints to pre-train on the source task)")
        _recipe(pre, "pretrain.")
        pre["checkpoints"] = pre["checkpoints"] or need
    else:
        ck = pre["checkpoints"]
        if not isinstance(ck, list) or not ck:
            raise LandscapeError("pretrain.checkpoints must list the local pre-trained checkpoint files "
                                 f"for {data['kind']} (pre-training on the source task is embedded-only)")
        bad = sorted(given_pre - {"checkpoints"})
        if bad:
            raise LandscapeError(f"pretrain.{bad[0]} only applies to the embedded data (pre-training there)")
        pre["checkpoints"] = [os.path.expanduser(p) for p in ck]
        if check_paths:
            for p in pre["checkpoints"]:
                if not os.path.isfile(p):
                    raise LandscapeError(f"checkpoint file {p!r} does not exist (pretrain.checkpoints)")
        for k in ("epochs", "lr", "momentum", "weight_decay", "batch_size", "cache"):
            pre.pop(k)
    if need > (pre["checkpoints"] if isinstance(pre["checkpoints"], int) else len(pre["checkpoints"])):
        raise LandscapeError(f"global_de with {need} members needs {need} pre-trained checkpoints, "
                             f"pretrain.checkpoints gives {pre['checkpoints'] if isinstance(pre['checkpoints'], int) else len(pre['checkpoints'])}")

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
    stem = ref[:-5] if ref.endswith(".toml") else ref
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


def load_config(ref: str | Mapping[str, Any], overrides: list[str] = (), check_paths: bool = True) -> StudyConfig:
    """Load and validate a study config: a TOML path, a shipped config name, or an already-parsed dict."""
    if isinstance(ref, Mapping):
        raw, source = json.loads(json.dumps(ref)), "<dict>"
    else:
        path = resolve_config_path(str(ref))
        source = os.path.basename(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise LandscapeError(f"config {source} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise LandscapeError(f"config {path!r} cannot be read: {exc.strerror}") from None
    try:
        raw = apply_overrides(raw, list(overrides))
    except LandscapeError as exc:
        raise LandscapeError(f"config {source}: {exc}") from None
    return parse_config(raw, source, check_paths)
