"""The permutation symmetry of a network's hidden units, found from the model, and applying it.

Permuting the hidden units of a layer (rows of the weights that make them, columns of the weights
that read them, and every per-unit parameter and buffer on the way) leaves the function unchanged.
`permutation_spec` finds which (state_dict key, axis) pairs each such permutation acts on by tracing
the model with torch.fx and propagating, node by node, which permutation group indexes each tensor's
channel/feature axis; residual additions tie groups together (union-find). `apply_permutation` moves
a state dict's units; `matching.weight_matching` chooses the permutation that aligns two models.

Conventions
- A group of `size` units of `block` entries each (block > 1: attention heads moved as wholes) acts on
  every axis in `axes`; an axis of length m·size·block holds m consecutive chunks permuted alike (the
  q, k and v rows of a packed attention projection).
- perms[name][i] = j means: unit i of the permuted model is unit j of the original (a gather).
- `within` > 0: a unit moves only inside its block of `within` consecutive units (GroupNorm groups).
- The network's input and output are never permuted: a group tied to either is no group.

Found through: Linear, Conv1d/2d/3d (groups=1, or depthwise; grouped ones only where their input stays
put), ConvTranspose (groups=1), BatchNorm/InstanceNorm/GroupNorm (GroupNorm: `within`), LayerNorm/RMSNorm,
MultiheadAttention (heads as blocks), Embedding, PReLU, elementwise ops and activations, dropout, pooling,
padding, residual adds (groups tied), reductions, and reshapes, permutes, expands and basic indexing that
keep the units' axis whole; the functional F.linear/F.conv*/F.layer_norm on parameters read directly;
parameters read in forward (class tokens, position embeddings, scales) join the units they meet.
Refused with one line naming the node: an op that mixes units that could otherwise move (cat along
channels, a reshape that merges or splits the units' axis, indexing that selects units, a grouped
convolution on moving units, any op or leaf module it does not know), and a model fx cannot trace.
"""
from __future__ import annotations

import math
import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..core.errors import LandscapeError

SUPPORTED = ("supported: Linear, Conv1d/2d/3d (groups=1 or depthwise), BatchNorm, LayerNorm, GroupNorm, "
             "InstanceNorm, MultiheadAttention, Embedding, per-channel activations/dropout/pooling, residual add, "
             "flatten after global pooling, reshapes/permutes/indexing that keep the channel axis whole")

SPEC_FORMAT = "landscape.permutation_spec"
SPEC_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------
# The spec


@dataclass(frozen=True)
class PermutationGroup:
    """One permutation of hidden units and every (state_dict key, axis) it moves."""

    name: str
    size: int
    block: int
    axes: tuple[tuple[str, int], ...]
    within: int = 0


@dataclass(frozen=True)
class PermutationSpec:
    """All the independent unit permutations of a model."""

    groups: tuple[PermutationGroup, ...]

    def __post_init__(self) -> None:
        # Checked here so that a spec read from JSON (untrusted) or built by hand is as sound as a found one.
        names: set[str] = set()
        seen: set[tuple[str, int]] = set()
        for g in self.groups:
            if not isinstance(g, PermutationGroup):
                raise LandscapeError(f"permutation spec: a group is {type(g).__name__}, not a PermutationGroup")
            if not isinstance(g.name, str) or not g.name or g.name in names:
                raise LandscapeError(f"permutation spec: group name {g.name!r} is empty or repeated")
            names.add(g.name)
            for field, low in (("size", 1), ("block", 1), ("within", 0)):
                value = getattr(g, field)
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise LandscapeError(f"permutation spec: group {g.name!r}: {field} {value!r} is not an "
                                         f"integer >= {low}")
            if g.within and g.size % g.within:
                raise LandscapeError(f"permutation spec: group {g.name!r}: within {g.within} does not divide "
                                     f"size {g.size}")
            for pair in g.axes:
                if (not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[0], str)
                        or isinstance(pair[1], bool) or not isinstance(pair[1], int) or pair[1] < 0):
                    raise LandscapeError(f"permutation spec: group {g.name!r}: axis entry {pair!r} is not "
                                         "(state_dict key, axis >= 0)")
                if pair in seen:
                    raise LandscapeError(f"permutation spec: {pair[0]!r} axis {pair[1]} is in two groups")
                seen.add(pair)

    def group(self, name: str) -> PermutationGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise LandscapeError(f"permutation spec has no group {name!r}")

    def state_keys(self) -> list[str]:
        """Every state_dict key some group moves, in first-seen order."""
        return list(dict.fromkeys(key for g in self.groups for key, _ in g.axes))

    def to_json(self) -> dict:
        return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
                "groups": [{"name": g.name, "size": g.size, "block": g.block, "within": g.within,
                            "axes": [[key, axis] for key, axis in g.axes]} for g in self.groups]}

    @classmethod
    def from_json(cls, data: Any) -> PermutationSpec:
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            raise LandscapeError(f"not a permutation spec (expected format {SPEC_FORMAT!r})")
        if data.get("version") != SPEC_VERSION:
            raise LandscapeError(f"permutation spec version {data.get('version')!r} is not {SPEC_VERSION}")
        groups = data.get("groups")
        if not isinstance(groups, list):
            raise LandscapeError("permutation spec: 'groups' is not a list")
        out = []
        for item in groups:
            if not isinstance(item, dict) or not isinstance(item.get("axes"), list):
                raise LandscapeError("permutation spec: a group is not an object with a list of axes")
            axes = []
            for pair in item["axes"]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise LandscapeError(f"permutation spec: axis entry {pair!r} is not [key, axis]")
                axes.append((pair[0], pair[1]))
            out.append(PermutationGroup(name=item.get("name"), size=item.get("size"), block=item.get("block"),
                                        axes=tuple(axes), within=item.get("within", 0)))
        return cls(tuple(out))


# ---------------------------------------------------------------------------------------------------------------
# Permutations


def check_permutation(p: Any, n: int) -> None:
    """LandscapeError unless `p` is a 1-D integer tensor holding a permutation of range(n)."""
    if not isinstance(p, Tensor):
        raise LandscapeError(f"a permutation must be a tensor, not {type(p).__name__}")
    if p.dtype.is_floating_point or p.dtype.is_complex or p.dtype == torch.bool:
        raise LandscapeError(f"a permutation must hold integers, not {p.dtype}")
    if p.dim() != 1 or p.numel() != n:
        raise LandscapeError(f"a permutation of {n} units must have shape ({n},), not {tuple(p.shape)}")
    if not torch.equal(torch.sort(p.detach().cpu().long()).values, torch.arange(n)):
        raise LandscapeError(f"not a permutation of range({n}): values repeat or fall outside it")


def _check_perms(spec: PermutationSpec, perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    names = {g.name for g in spec.groups}
    extra = sorted(set(perms) - names)
    missing = [g.name for g in spec.groups if g.name not in perms]
    if extra or missing:
        raise LandscapeError(f"permutations do not match the spec: missing {missing[:3]}, unknown {extra[:3]}")
    out = {}
    for g in spec.groups:
        p = perms[g.name]
        try:
            check_permutation(p, g.size)
        except LandscapeError as exc:
            raise LandscapeError(f"group {g.name!r}: {exc}") from None
        p = p.detach().cpu().long()
        if g.within:
            home = torch.arange(g.size) // g.within
            if not torch.equal(p // g.within, home):
                raise LandscapeError(f"group {g.name!r}: the permutation moves units across blocks of "
                                     f"{g.within} (GroupNorm groups), which changes the function")
        out[g.name] = p
    return out


def unit_index(perm: Tensor, group: PermutationGroup, length: int) -> Tensor:
    """The gather index along an axis of `length` entries that moves `group`'s units by `perm`."""
    span = group.size * group.block
    if length % span:
        raise LandscapeError(f"group {group.name!r}: an axis of length {length} is not a multiple of "
                             f"{group.size} units x {group.block}")
    inner = (perm.long()[:, None] * group.block + torch.arange(group.block)).reshape(-1)
    return (torch.arange(length // span)[:, None] * span + inner).reshape(-1)


def identity_perms(spec: PermutationSpec) -> dict[str, Tensor]:
    return {g.name: torch.arange(g.size) for g in spec.groups}


def random_perms(spec: PermutationSpec, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A uniformly random permutation per group, moving units only within blocks where `within` says so."""
    out = {}
    for g in spec.groups:
        if g.within:
            parts = [torch.randperm(g.within, generator=generator) + start for start in range(0, g.size, g.within)]
            out[g.name] = torch.cat(parts)
        else:
            out[g.name] = torch.randperm(g.size, generator=generator)
    return out


def _check_state(spec: PermutationSpec, state: Mapping[str, Tensor], what: str = "state") -> None:
    for g in spec.groups:
        for key, axis in g.axes:
            t = state.get(key)
            if not isinstance(t, Tensor):
                raise LandscapeError(f"{what} has no tensor {key!r} that permutation group {g.name!r} moves")
            if axis >= t.dim() or t.shape[axis] % (g.size * g.block):
                raise LandscapeError(f"{what}: {key!r} of shape {tuple(t.shape)} has no axis {axis} of "
                                     f"{g.size} units x {g.block} (group {g.name!r})")


def apply_permutation(spec: PermutationSpec, state: Mapping[str, Tensor],
                      perms: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A new state dict (same keys, order, dtypes and shapes) with every group's units moved by its
    permutation. Tensors no group touches are shared with `state`, not copied."""
    checked = _check_perms(spec, perms)
    _check_state(spec, state)
    out = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # module versions that load_state_dict hands to _load_from_state_dict
        out._metadata = metadata  # type: ignore[attr-defined]
    for g in spec.groups:
        for key, axis in g.axes:
            t = out[key]
            out[key] = t.index_select(axis, unit_index(checked[g.name], g, t.shape[axis]).to(t.device))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Finding the structure: abstract values propagated through the fx graph

_FIXED = 0  # the class of everything that keeps its value: the input, the output, whatever is tied to them


@dataclass(frozen=True)
class _T:
    """A tensor whose axis `axis` is indexed by group `g`. axis None: no axis of it is permuted, and g says
    whether its value stays as it is (_FIXED) or is the opaque result of an op we cannot see into."""

    g: int
    axis: int | None = None


@dataclass(frozen=True)
class _Part:
    """A parameter or buffer read in forward (get_attr). amap[j]: the parameter axis that axis j of the
    current tensor runs along (None: an axis made up on the way, e.g. by expand)."""

    key: str
    pshape: tuple[int, ...]
    amap: tuple[int | None, ...]


@dataclass(frozen=True)
class _P:
    """A tensor computed from parameters alone (one, or several combined elementwise), not yet tied to a
    group: it joins the group of the units it meets."""

    parts: tuple[_Part, ...]

    def remap(self, fn: Any) -> _P:
        return _P(tuple(_Part(p.key, p.pshape, tuple(fn(p.amap))) for p in self.parts))


class _Shape:
    """A tensor's shape as seen in the example forward (a plain tuple is a Python value, e.g. x.shape).
    Not a tuple, so that fx's map_aggregate treats it as a leaf."""

    __slots__ = ("dims",)

    def __init__(self, dims: Iterable[int]) -> None:
        self.dims = tuple(int(d) for d in dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __getitem__(self, i: Any) -> Any:
        return self.dims[i]

    def __iter__(self):
        return iter(self.dims)

    def __repr__(self) -> str:
        return f"_Shape{self.dims}"


class _Groups:
    """Union-find over permutation groups, with the (key, axis) claims and the checks left to the end.

    An op we cannot see into (or one that mixes units) makes an opaque class h: its result keeps its value
    exactly when all its inputs do, and must keep it when it feeds anything that does (the output). At the
    end every opaque class must have been fixed that way; otherwise the op stands in the way of aligning
    units that could move, and the spec is refused with that op's message."""

    def __init__(self, aliases: Mapping[str, str]) -> None:
        self.parent = [0]
        self.size: list[int | None] = [None]
        self.block = [1]
        self.within = [0]
        self.openers: list[list[str]] = [[]]
        self.claims: dict[tuple[str, int], int] = {}  # (canonical key, axis) -> group
        self.claimed_keys: dict[tuple[str, int], list[str]] = {}
        self.aliases = aliases
        self.edges: list[tuple[list[int], int]] = []  # (inputs, opaque result)
        self.deferred: list[tuple[int, str]] = []  # (group, message): refuse unless the group ends up fixed

    def new(self, size: int | None, opener: str | None, block: int = 1, within: int = 0) -> int:
        self.parent.append(len(self.parent))
        self.size.append(None if size is None else int(size))
        self.block.append(int(block))
        self.within.append(int(within))
        self.openers.append([opener] if opener else [])
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str = "") -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        root, other = min(ra, rb), max(ra, rb)  # the older group (and _FIXED) stays the root
        if root != _FIXED:
            if self.size[root] is None:  # an opaque class takes the units it is tied to
                self.size[root], self.block[root] = self.size[other], self.block[other]
            elif self.size[other] is not None and (self.size[root], self.block[root]) != (self.size[other],
                                                                                          self.block[other]):
                raise LandscapeError(f"cannot align: {where or 'the graph'} ties {self.size[root]} units to "
                                     f"{self.size[other]} units; {SUPPORTED}")
            self.within[root] = math.gcd(self.within[root], self.within[other])
            self.openers[root] += self.openers[other]
        self.parent[other] = root
        return root

    def live(self, v: Any) -> tuple[int, int] | None:
        """(group, axis) when `v` is a tensor with units that may move, else None."""
        if isinstance(v, _T) and v.axis is not None:
            g = self.find(v.g)
            if g != _FIXED:
                return g, v.axis
        return None

    def cls(self, v: Any) -> int:
        """The class a value's data belongs to (its group, an opaque class, or _FIXED)."""
        return self.find(v.g) if isinstance(v, _T) else _FIXED

    def claim(self, g: int, key: str, axis: int, where: str = "") -> None:
        """Group g moves `key` along `axis`; a pair claimed twice (a shared weight) ties the two groups."""
        pair = (self.aliases.get(key, key), axis)
        self.claimed_keys.setdefault(pair, [])
        if key not in self.claimed_keys[pair]:
            self.claimed_keys[pair].append(key)
        if pair in self.claims:
            self.union(self.claims[pair], g, where)
        else:
            self.claims[pair] = g

    def require_fixed(self, g: int, message: str) -> None:
        self.deferred.append((g, message))

    def opaque(self, inputs: Iterable[int], message: str) -> int:
        """The class of an op's result that depends on its inputs in a way we cannot permute."""
        roots = sorted({self.find(g) for g in inputs} - {_FIXED})
        if not roots:
            return _FIXED
        h = self.new(None, None)
        self.edges.append((roots, h))
        self.deferred.append((h, message))
        return h

    def settle(self) -> None:
        """Fix every group of one unit, then spread fixedness along the opaque ops until nothing changes."""
        for g in range(1, len(self.parent)):
            r = self.find(g)
            if r != _FIXED and self.size[r] is not None and (self.size[r] <= 1 or self.within[r] == 1):
                self.union(r, _FIXED)
        changed = True
        while changed:
            changed = False
            for inputs, h in self.edges:
                if self.find(h) == _FIXED:
                    for g in inputs:
                        if self.find(g) != _FIXED:
                            self.union(g, _FIXED)
                            changed = True
                elif all(self.find(g) == _FIXED for g in inputs):
                    self.union(h, _FIXED)
                    changed = True


def _mix(node: fx.Node, what: str) -> str:
    return f"cannot align: node '{node.name}' ({what}) mixes units; {SUPPORTED}"


# Names of elementwise operations (torch, torch.nn.functional, operator and Tensor methods): each output
# element depends on the same-position elements of the broadcast operands, so units stay where they are.
_ELEMENTWISE = {
    "add", "sub", "mul", "truediv", "div", "floordiv", "pow", "neg", "pos", "abs", "iadd", "isub", "imul",
    "itruediv", "rsub", "true_divide", "multiply", "subtract", "maximum", "minimum", "where", "eq", "ne", "lt",
    "le", "gt", "ge", "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "elu", "selu", "celu", "leaky_relu",
    "hardswish", "hardsigmoid", "hardtanh", "mish", "softplus", "softsign", "logsigmoid", "tanhshrink",
    "softshrink", "hardshrink", "threshold", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "square", "clamp", "clamp_min",
    "clamp_max", "clip", "sin", "cos", "erf", "sign", "reciprocal", "masked_fill", "nan_to_num", "lerp",
    "addcmul", "addcdiv", "floor", "ceil", "round", "trunc",
    # F.normalize divides by a norm: over the units' axis it is symmetric in them, over another per unit
    "normalize",
    # softmax over the channel axis is permutation-equivariant; over any other axis it is per-unit
    "softmax", "log_softmax", "softmin",
}
_ELEMENTWISE |= {name + "_" for name in _ELEMENTWISE}
_SELF_ONLY = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type", "type_as",
              "cpu", "cuda", "requires_grad_"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel"}
_AXES = {"permute", "transpose", "swapaxes", "swapdims", "t", "movedim", "moveaxis"}
_EXPAND = {"expand", "expand_as", "broadcast_to"}
_REDUCE = {"mean", "sum", "amax", "amin", "logsumexp", "std", "var", "nansum", "nanmean", "prod"}
_CAT = {"cat", "concat", "concatenate"}
_KINDS = [(_ELEMENTWISE, "elementwise"), (_SELF_ONLY, "self_only"), (_RESHAPE, "reshape"), (_AXES, "axes"),
          (_EXPAND, "expand"), (_REDUCE, "reduce"), (_CAT, "cat")]


def _function_kinds() -> dict[Any, str]:
    """call_function targets by identity (a user's wrapped function named `add` is not torch's add)."""
    out: dict[Any, str] = {}
    for names, kind in _KINDS:
        for name in names:
            for space in (torch, F, operator):
                fn = getattr(space, name, None)
                if callable(fn) and not isinstance(fn, type):
                    out.setdefault(fn, kind)
    out[operator.getitem] = "getitem"
    out[F.linear] = "linear"
    out[F.conv1d] = out[F.conv2d] = out[F.conv3d] = "conv"
    out[F.layer_norm] = "layer_norm"
    for fn, k in ((F.max_pool1d, 1), (F.avg_pool1d, 1), (F.adaptive_avg_pool1d, 1), (F.adaptive_max_pool1d, 1),
                  (F.max_pool2d, 2), (F.avg_pool2d, 2), (F.adaptive_avg_pool2d, 2), (F.adaptive_max_pool2d, 2),
                  (F.max_pool3d, 3), (F.avg_pool3d, 3), (F.adaptive_avg_pool3d, 3), (F.adaptive_max_pool3d, 3)):
        out[fn] = f"pool{k}"
    out[F.interpolate] = "spatial"
    return out


_FUNCTIONS = _function_kinds()
# functions of other libraries (fx-wrapped, so they stay one node), known by name: this layer imports only torch.
# torchvision's stochastic depth drops whole samples (or the whole batch) at random: the same for every unit.
_NAMED_FUNCTIONS = {"torchvision.ops.stochastic_depth.stochastic_depth": "self_only"}
# ops whose result is laid out after their first operand alone (others lend at most a shape or a dtype)
_PRIMARY = {"self_only", "reshape", "axes", "expand", "reduce", "spatial", "pool1", "pool2", "pool3"}
_METHODS = {name: kind for names, kind in _KINDS for name in names}

_PASS_MODULES = (nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                 nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign,
                 nn.Softshrink, nn.Hardshrink, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold, nn.Softmax,
                 nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout, nn.FeatureAlphaDropout)
_POOL_MODULES = {nn.MaxPool1d: 1, nn.AvgPool1d: 1, nn.AdaptiveAvgPool1d: 1, nn.AdaptiveMaxPool1d: 1, nn.LPPool1d: 1,
                 nn.MaxPool2d: 2, nn.AvgPool2d: 2, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveMaxPool2d: 2, nn.LPPool2d: 2,
                 nn.MaxPool3d: 3, nn.AvgPool3d: 3, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool3d: 3}
_PAD_MODULES = tuple(m for m in (getattr(nn, name, None) for name in (
    "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ReflectionPad1d",
    "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d", "ReplicationPad2d", "ReplicationPad3d",
    "CircularPad1d", "CircularPad2d", "CircularPad3d")) if m is not None)
_LAYER_NORMS = tuple(m for m in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if m is not None)
_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_TRANSPOSES = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _flat(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flat(item)]
    return [x]


def _track(in_shape: tuple[int, ...], out_shape: tuple[int, ...], axis: int) -> int | None:
    """Where axis `axis` of a row-major tensor lands after a reshape: the output axis with the same
    size and the same product of sizes before it, if there is one (else the reshape splits or merges it)."""
    size, before = in_shape[axis], math.prod(in_shape[:axis])
    prod = 1
    for k, s in enumerate(out_shape):
        if prod == before and s == size:
            return k
        prod *= s
    return None


def _index_map(index: Any, shape: tuple[int, ...]) -> tuple[list[int | None], list[bool]] | None:
    """For basic indexing (ints, slices, None, Ellipsis): each input axis's output axis (None: removed) and
    whether it is kept whole. None for advanced indexing."""
    items = list(index) if isinstance(index, tuple) else [index]
    consumed = sum(1 for it in items if it is not None and it is not Ellipsis)
    if consumed > len(shape) or sum(1 for it in items if it is Ellipsis) > 1:
        return None
    expanded: list[Any] = []
    for it in items:
        expanded += [slice(None)] * (len(shape) - consumed) if it is Ellipsis else [it]
    if Ellipsis not in items:
        expanded += [slice(None)] * (len(shape) - consumed)
    where: list[int | None] = [None] * len(shape)
    whole = [True] * len(shape)
    i_in = i_out = 0
    for it in expanded:
        if it is None:
            i_out += 1
        elif isinstance(it, slice):
            where[i_in] = i_out
            whole[i_in] = it.indices(shape[i_in]) == (0, shape[i_in], 1)
            i_in += 1
            i_out += 1
        elif isinstance(it, int) and not isinstance(it, bool):
            whole[i_in] = False
            i_in += 1
        else:
            return None
    return where, whole


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # MultiheadAttention stays one node even when subclassed outside torch.nn: its heads are handled whole
        return isinstance(m, nn.MultiheadAttention) or super().is_leaf_module(m, qualname)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once on the example input, keeping each node's shapes and Python values."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.infos: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        self.infos[n] = _describe(result)
        return result


def _describe(x: Any) -> Any:
    """Tensors as their shapes, containers as plain tuples and dicts, Python values as they are."""
    if isinstance(x, Tensor):
        return _Shape(x.shape)
    if isinstance(x, (list, tuple)) and not isinstance(x, torch.Size):
        return tuple(_describe(y) for y in x)
    if isinstance(x, dict):
        return {k: _describe(v) for k, v in x.items()}
    return x


class _Propagate:
    """Walks the graph once, giving every node an abstract value (_T, _P, a container of them, or None for
    Python values) and recording in `groups` which (key, axis) pairs each permutation moves."""

    def __init__(self, gm: fx.GraphModule, infos: Mapping[fx.Node, Any], groups: _Groups) -> None:
        self.gm = gm
        self.infos = infos
        self.g = groups
        self.vals: dict[fx.Node, Any] = {}

    # -- helpers -------------------------------------------------------------------------------------------------

    def val(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.vals[n]) if isinstance(a, (fx.Node, list, tuple, dict)) else None

    def info(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.infos.get(n)) if isinstance(a, (fx.Node, list, tuple, dict)) else a

    def inputs(self, node: fx.Node) -> list[Any]:
        return _flat(self.val((node.args, node.kwargs)))

    def like(self, node: fx.Node, g: int) -> Any:
        """The node's result, every tensor of it in class g with no moving axis."""
        return fx.node.map_aggregate(self.infos.get(node), lambda x: _T(g) if isinstance(x, _Shape) else None)

    def pin(self, v: Any, where: str) -> None:
        """A parameter used as it stands (by an op we do not look into): none of its axes may move."""
        if isinstance(v, _P):
            for p in v.parts:
                for axis, size in enumerate(p.pshape):
                    if size > 1:
                        self.g.claim(_FIXED, p.key, axis, where)

    def consume(self, v: _P, shape: Any, axis: int | None, g: int, where: str) -> None:
        """Parameters `v` (now of `shape`) meet units of group g on their axis `axis`: the parameter axis
        under it joins g, the other axes stay put."""
        for p in v.parts:
            mapped = None
            if axis is not None and 0 <= axis < len(shape) and shape[axis] > 1 and p.amap[axis] is not None:
                mapped = p.amap[axis]
                if p.pshape[mapped] > 1:
                    self.g.claim(g, p.key, mapped, where)
            for pa, size in enumerate(p.pshape):
                if size > 1 and pa != mapped:
                    self.g.claim(_FIXED, p.key, pa, where)

    def passive(self, node: fx.Node, inputs: list[Any]) -> Any:
        """An op none of whose inputs has moving units: its result keeps its value when they all do."""
        for v in inputs:
            self.pin(v, node.name)
        classes = {self.g.cls(v) for v in inputs if isinstance(v, _T)} - {_FIXED}
        g = _FIXED
        for c in classes:
            g = c if g == _FIXED else self.g.union(g, c)
        return self.like(node, g)

    def unknown(self, node: fx.Node, message: str, inputs: list[Any] | None = None) -> Any:
        """An op that may mix units: its result is opaque (refused unless its inputs keep their values)."""
        inputs = self.inputs(node) if inputs is None else inputs
        for v in inputs:
            self.pin(v, node.name)
        h = self.g.opaque([v.g for v in inputs if isinstance(v, _T)], message)
        return self.like(node, h)

    def keys_of(self, target: str, mod: nn.Module, names: Iterable[str]) -> list[str]:
        return [f"{target}.{name}" for name in names if isinstance(getattr(mod, name, None), Tensor)]

    def claim_input(self, x: Any, shape: Any, key: str, axis: int, feature_axis: int, node: fx.Node,
                    what: str) -> None:
        """Weight axis `axis` reads the units on the input's axis `feature_axis`."""
        if isinstance(x, _P):  # parameters fed to a layer (learned queries): their features are units too
            fa = feature_axis % len(shape)
            g = self.g.new(shape[fa], x.parts[0].key)
            self.g.claim(g, key, axis, node.name)
            self.consume(x, shape, fa, g, node.name)
            return
        live = self.g.live(x)
        if live is None:
            self.g.claim(self.g.cls(x), key, axis, node.name)
        elif live[1] == feature_axis % len(shape):
            self.g.claim(live[0], key, axis, node.name)
        else:
            self.g.require_fixed(live[0], _mix(node, f"{what} along an axis that is not its units' axis"))
            self.g.claim(_FIXED, key, axis, node.name)

    # -- the walk ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.vals[node] = self.visit(node)

    def visit(self, node: fx.Node) -> Any:
        info = self.infos.get(node)
        if node.op == "placeholder":
            return _T(_FIXED) if isinstance(info, _Shape) else None
        if node.op == "get_attr":
            obj = _fetch(self.gm, str(node.target))
            if isinstance(obj, Tensor):
                return _P((_Part(str(node.target), tuple(obj.shape), tuple(range(obj.dim()))),))
            return None
        if node.op == "output":
            for v in _flat(self.val(node.args[0])):
                if isinstance(v, _T):
                    self.g.union(v.g, _FIXED)  # the function's values must not change
                self.pin(v, node.name)
            return None
        if node.op == "call_module":
            return self.module(node, self.gm.get_submodule(str(node.target)))
        # call_function / call_method
        if not any(isinstance(x, _Shape) for x in _flat(info)):
            return None  # a Python value (x.shape, x.dim(), an assert)
        if node.op == "call_function":
            what = getattr(node.target, "__name__", str(node.target))
            kind = _FUNCTIONS.get(node.target) or _NAMED_FUNCTIONS.get(f"{getattr(node.target, '__module__', '')}"
                                                                      f".{what}")
        else:
            kind, what = _METHODS.get(str(node.target)), f".{node.target}()"
        inputs = self.inputs(node)
        if kind == "getitem" and isinstance(self.val(node.args[0]), (list, tuple)):
            return self.getitem(node)
        if not any(self.g.live(v) for v in inputs) and not any(isinstance(v, _P) for v in inputs):
            return self.passive(node, inputs)
        if kind is None or not isinstance(info, _Shape):
            return self.unknown(node, f"cannot align: node '{node.name}' ({what}) is not an operation this "
                                      f"alignment knows; {SUPPORTED}", inputs)
        if kind in _PRIMARY:
            first = self.val(node.args[0]) if node.args else None
            if not (self.g.live(first) or isinstance(first, _P)):
                return self.passive(node, [first])
        return getattr(self, kind if not kind.startswith("pool") else "pool")(node)

    # -- elementwise, broadcasting ---------------------------------------------------------------------------------

    def broadcast(self, node: fx.Node, operands: list[tuple[Any, Any]], what: str) -> Any:
        """Operands (value, shape) combined elementwise into the node's output: units on the same output
        axis are the same units (so a residual add ties the two groups)."""
        out = self.infos[node]
        nd = len(out)
        live = []
        for v, shp in operands:
            lv = self.g.live(v)
            if lv and shp[lv[1]] > 1:
                live.append((lv[1] + nd - len(shp), lv[0]))
        if not live:
            if operands and all(isinstance(v, _P) for v, _ in operands):
                # parameters combined among themselves (a scale's exp, a gated bias): still parameters
                return _P(tuple(_Part(p.key, p.pshape, (None,) * (nd - len(shp)) + p.amap)
                                for v, shp in operands for p in v.parts))
            return self.passive(node, [v for v, _ in operands])
        if len({oa for oa, _ in live}) > 1:
            return self.unknown(node, _mix(node, f"{what} of units lying on different axes"),
                                [v for v, _ in operands])
        g = live[0][1]
        for _, h in live[1:]:
            g = self.g.union(g, h, f"node '{node.name}' ({what})")
        oa = live[0][0]
        for v, shp in operands:
            la = oa - (nd - len(shp))
            if isinstance(v, _P):
                self.consume(v, shp, la, g, node.name)
            elif (isinstance(v, _T) and not (self.g.live(v) and v.axis == la)
                  and 0 <= la < len(shp) and shp[la] > 1):
                # values along the units' axis that do not move with them (or opaque ones): tie them
                g = self.g.union(g, self.g.cls(v) if v.axis is None else _FIXED, f"node '{node.name}'")
        return _T(g, oa)

    def elementwise(self, node: fx.Node) -> Any:
        operands = [(self.vals[a], self.infos[a]) for a in node.all_input_nodes
                    if isinstance(self.infos.get(a), _Shape)]
        return self.broadcast(node, operands, getattr(node.target, "__name__", str(node.target)))

    def self_only(self, node: fx.Node) -> Any:
        return self.val(node.args[0])

    # -- shapes and axes -------------------------------------------------------------------------------------------

    def reshape(self, node: fx.Node) -> Any:
        x, shp, out = self.val(node.args[0]), self.info(node.args[0]), self.infos[node]
        if isinstance(x, _P):
            parts = []
            for p in x.parts:
                amap: list[int | None] = [None] * len(out)
                for j, pa in enumerate(p.amap):
                    if pa is None or shp[j] == 1:
                        continue
                    k = _track(shp, out, j)
                    if k is None:  # merged or split: this parameter axis cannot move
                        self.g.claim(_FIXED, p.key, pa, node.name)
                    else:
                        amap[k] = pa
                parts.append(_Part(p.key, p.pshape, tuple(amap)))
            return _P(tuple(parts))
        live = self.g.live(x)
        if live is None:
            return self.passive(node, [x])
        k = _track(shp, out, live[1])
        if k is None:
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "reshape")
            return self.unknown(node, _mix(node, f"{name} of {tuple(shp)} to {tuple(out)}"), [x])
        return _T(live[0], k)

    def axes(self, node: fx.Node) -> Any:
        # Where each axis goes: replay the op on a meta tensor whose axis j has the distinct size j + 2.
        x, shp = self.val(node.args[0]), self.info(node.args[0])
        probe = torch.empty([j + 2 for j in range(len(shp))], device="meta")
        rest, kwargs = self.info(tuple(node.args[1:])), self.info(dict(node.kwargs))
        fn = node.target if node.op == "call_function" else getattr(Tensor, str(node.target))
        moved = [s - 2 for s in fn(probe, *rest, **kwargs).shape]
        if isinstance(x, _P):
            return x.remap(lambda amap: [amap[j] for j in moved])
        live = self.g.live(x)
        return _T(live[0], moved.index(live[1]))

    def expand(self, node: fx.Node) -> Any:
        x, shp, out = self.val(node.args[0]), self.info(node.args[0]), self.infos[node]
        shift = len(out) - len(shp)
        if isinstance(x, _P):
            return x.remap(lambda amap: (None,) * shift + amap)
        live = self.g.live(x)
        return _T(live[0], live[1] + shift)

    def reduce(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.info(node.args[0])
        if not isinstance(x, _T):
            return self.passive(node, [x])
        live = self.g.live(x)
        args, kwargs = self.info(tuple(node.args[1:])), self.info(dict(node.kwargs))
        dim = kwargs.get("dim", args[0] if args and not isinstance(args[0], bool) else None)
        keep = bool(kwargs.get("keepdim", args[1] if len(args) > 1 and isinstance(args[1], bool) else False))
        dims = range(len(shp)) if dim is None or dim == () or dim == [] else (
            [dim] if isinstance(dim, int) else list(dim))
        dims = {d % len(shp) for d in dims}
        if live[1] in dims:
            return _T(_FIXED)  # a sum, mean or max over the units does not depend on their order
        return _T(live[0], live[1] if keep else live[1] - sum(1 for d in dims if d < live[1]))

    def getitem(self, node: fx.Node) -> Any:
        base, index = self.val(node.args[0]), self.info(node.args[1])
        if isinstance(base, (list, tuple)):
            return base[index]
        shp = self.info(node.args[0])
        mapped = _index_map(index, shp)
        if isinstance(base, _P):
            if mapped is None:
                return self.passive(node, [base])
            where, whole = mapped
            parts = []
            for p in base.parts:
                amap: list[int | None] = [None] * len(self.infos[node])
                for j, pa in enumerate(p.amap):
                    if pa is None or shp[j] == 1:
                        continue
                    if whole[j] and where[j] is not None:
                        amap[where[j]] = pa
                    else:  # a slice of a parameter axis cannot move with whole units
                        self.g.claim(_FIXED, p.key, pa, node.name)
                parts.append(_Part(p.key, p.pshape, tuple(amap)))
            return _P(tuple(parts))
        live = self.g.live(base)
        if live is None:
            return self.passive(node, self.inputs(node))
        if mapped is None or not mapped[1][live[1]]:
            return self.unknown(node, _mix(node, "indexing that selects units"))
        return _T(live[0], mapped[0][live[1]])

    def cat(self, node: fx.Node) -> Any:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        dim = self.info(dim) % len(self.infos[node])
        operands = [(self.val(t), self.info(t)) for t in tensors]
        if any((lv := self.g.live(v)) and lv[1] == dim for v, _ in operands):
            return self.unknown(node, _mix(node, "torch.cat along channels"), [v for v, _ in operands])
        if not any(self.g.live(v) for v, _ in operands):
            return self.passive(node, [v for v, _ in operands])  # parameters joined end to end stay put
        return self.broadcast(node, operands, "torch.cat")

    def spatial(self, node: fx.Node) -> Any:
        x = self.val(node.args[0])
        if self.g.live(x)[1] != 1:
            return self.unknown(node, _mix(node, "resampling along the units' axis"))
        return x

    def pool(self, node: fx.Node) -> Any:
        return self.spatial_k(node, self.val(node.args[0]), self.info(node.args[0]),
                              int(_FUNCTIONS[node.target][4:]), "pooling")

    def spatial_k(self, node: fx.Node, x: Any, shp: Any, k: int, what: str) -> Any:
        """An op over the last k axes, unit by unit: fine unless the units lie among those axes."""
        live = self.g.live(x)
        if live is None:
            return self.passive(node, [x])
        if live[1] >= len(shp) - k:
            return self.unknown(node, _mix(node, f"{what} over the units' axis"), [x])
        return x

    # -- functional layers on parameters read directly ---------------------------------------------------------

    def _direct(self, a: Any) -> _Part | None:
        """The parameter itself, when `a` is one read as it stands."""
        v = self.val(a)
        if isinstance(v, _P) and len(v.parts) == 1 and v.parts[0].amap == tuple(range(len(v.parts[0].pshape))):
            return v.parts[0]
        return None

    def _weights(self, node: fx.Node) -> tuple[_Part | None, _Part | None, bool]:
        w = self._direct(node.args[1] if len(node.args) > 1 else node.kwargs.get("weight"))
        b_arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        b = self._direct(b_arg) if b_arg is not None else None
        return w, b, w is not None and (b_arg is None or b is not None)

    def linear(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.info(node.args[0])
        w, b, ok = self._weights(node)
        if not ok or len(w.pshape) != 2:
            return self.unknown(node, _mix(node, "F.linear with a computed weight"))
        self.claim_input(x, shp, w.key, 1, -1, node, "F.linear")
        out = self.g.new(w.pshape[0], w.key.rpartition(".")[0] or node.name)
        self.g.claim(out, w.key, 0, node.name)
        if b is not None:
            self.g.claim(out, b.key, 0, node.name)
        return _T(out, len(self.infos[node]) - 1)

    def conv(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.info(node.args[0])
        w, b, ok = self._weights(node)
        groups = self.info(node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1))
        if not ok or groups != 1:
            return self.unknown(node, _mix(node, "a functional convolution with a computed weight or groups > 1"))
        k = len(w.pshape) - 2
        self.claim_input(x, shp, w.key, 1, len(shp) - k - 1, node, "convolution")
        out = self.g.new(w.pshape[0], w.key.rpartition(".")[0] or node.name)
        self.g.claim(out, w.key, 0, node.name)
        if b is not None:
            self.g.claim(out, b.key, 0, node.name)
        return _T(out, len(self.infos[node]) - k - 1)

    def layer_norm(self, node: fx.Node) -> Any:
        x, shp = self.val(node.args[0]), self.info(node.args[0])
        ns = self.info(node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"])
        ps = [node.args[i] if len(node.args) > i else node.kwargs.get(n) for i, n in ((2, "weight"), (3, "bias"))]
        direct = [self._direct(p) if p is not None else None for p in ps]
        if any(p is not None and d is None for p, d in zip(ps, direct)):
            return self.unknown(node, _mix(node, "F.layer_norm with a computed weight"))
        k = len(ns) if isinstance(ns, (list, tuple)) else 1
        return self.norm_last(node, x, shp, k, [d.key for d in direct if d is not None])

    def norm_last(self, node: fx.Node, x: Any, shp: Any, k: int, keys: list[str]) -> Any:
        """A norm over the last k axes (statistics symmetric in the units) with per-entry parameters of
        those axes' shape: the parameter axis under the units joins their group."""
        live = self.g.live(x)
        pa_units = live[1] - (len(shp) - k) if live and live[1] >= len(shp) - k else None
        for key in keys:
            for pa in range(k):
                if pa == pa_units:
                    self.g.claim(live[0], key, pa, node.name)
                elif shp[len(shp) - k + pa] > 1:
                    self.g.claim(_FIXED, key, pa, node.name)
        return x if live else self.passive(node, [x])

    # -- modules -------------------------------------------------------------------------------------------------

    def module(self, node: fx.Node, mod: nn.Module) -> Any:
        target = str(node.target)
        x = self.val(node.args[0]) if node.args else None
        shp = self.info(node.args[0]) if node.args else None
        if isinstance(mod, nn.MultiheadAttention):
            return self.attention(node, mod, target)
        if not isinstance(shp, _Shape):
            return self.unknown_module(node, mod, target)
        if isinstance(mod, nn.Linear):
            self.claim_input(x, shp, f"{target}.weight", 1, -1, node, "Linear")
            out = self.g.new(mod.out_features, target)
            for key in self.keys_of(target, mod, ("weight", "bias")):
                self.g.claim(out, key, 0, node.name)
            return _T(out, len(self.infos[node]) - 1)
        if type(mod) in _CONVS:
            return self.conv_module(node, mod, target, x, shp, _CONVS[type(mod)])
        if type(mod) in _CONV_TRANSPOSES and mod.groups == 1:
            k = _CONV_TRANSPOSES[type(mod)]
            self.claim_input(x, shp, f"{target}.weight", 0, len(shp) - k - 1, node, type(mod).__name__)
            out = self.g.new(mod.out_channels, target)
            self.g.claim(out, f"{target}.weight", 1, node.name)
            for key in self.keys_of(target, mod, ("bias",)):
                self.g.claim(out, key, 0, node.name)
            return _T(out, len(self.infos[node]) - k - 1)
        if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)):
            return self.channel_norm(node, mod, target, x, shp)
        if isinstance(mod, _LAYER_NORMS):
            keys = self.keys_of(target, mod, ("weight", "bias"))
            return self.norm_last(node, x, shp, len(mod.normalized_shape), keys)
        if isinstance(mod, nn.Embedding):
            out = self.g.new(mod.embedding_dim, target)
            self.g.claim(out, f"{target}.weight", 1, node.name)
            self.g.claim(_FIXED, f"{target}.weight", 0, node.name)
            return _T(out, len(self.infos[node]) - 1)
        if isinstance(mod, nn.PReLU):
            if mod.num_parameters > 1:  # one slope per channel (axis 1)
                live = self.g.live(x)
                self.g.claim(live[0] if live and live[1] == 1 else _FIXED, f"{target}.weight", 0, node.name)
            return x if self.g.live(x) else self.passive(node, [x])
        if isinstance(mod, _PASS_MODULES):
            return x if self.g.live(x) else self.passive(node, [x])
        if type(mod) in _POOL_MODULES and not getattr(mod, "return_indices", False):
            return self.spatial_k(node, x, shp, _POOL_MODULES[type(mod)], type(mod).__name__)
        if isinstance(mod, _PAD_MODULES):
            return self.spatial_k(node, x, shp, len(mod.padding) // 2, type(mod).__name__)
        if isinstance(mod, nn.Upsample):
            return self.spatial_k(node, x, shp, len(shp) - 2, "Upsample")
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self.reshape(node)
        return self.unknown_module(node, mod, target)

    def unknown_module(self, node: fx.Node, mod: nn.Module, target: str) -> Any:
        for key, t in mod.state_dict().items():  # its own tensors stay as they are
            for axis, size in enumerate(t.shape):
                if size > 1:
                    self.g.claim(_FIXED, f"{target}.{key}", axis, node.name)
        what = f"{type(mod).__name__}{', with parameters' if mod.state_dict() else ''}"
        return self.unknown(node, f"cannot align: node '{node.name}': module '{target}' ({what}) is not a layer "
                                  f"this alignment knows how to permute; {SUPPORTED}")

    def conv_module(self, node: fx.Node, mod: nn.Module, target: str, x: Any, shp: Any, k: int) -> Any:
        ca = len(shp) - k - 1  # (N, C, *spatial) or unbatched (C, *spatial)
        w = f"{target}.weight"
        live = self.g.live(x)
        if mod.groups == 1:
            self.claim_input(x, shp, w, 1, ca, node, type(mod).__name__)
            out = self.g.new(mod.out_channels, target)
        elif mod.groups == mod.in_channels == mod.out_channels and (live is None or live[1] == ca):
            # depthwise: output channel c reads input channel c only, so both are one group
            out = live[0] if live else self.g.cls(x)
        else:
            # grouped: the input must stay put; output units move only within their convolution group
            if live:
                self.g.require_fixed(live[0], _mix(node, f"grouped {type(mod).__name__} (groups={mod.groups})"))
            out = self.g.new(mod.out_channels, target, within=mod.out_channels // mod.groups)
        if mod.groups != 1 and mod.weight.shape[1] > 1:
            self.g.claim(_FIXED, w, 1, node.name)
        self.g.claim(out, w, 0, node.name)
        for key in self.keys_of(target, mod, ("bias",)):
            self.g.claim(out, key, 0, node.name)
        return _T(out, len(self.infos[node]) - k - 1)

    def channel_norm(self, node: fx.Node, mod: nn.Module, target: str, x: Any, shp: Any) -> Any:
        # BatchNorm/InstanceNorm/GroupNorm normalise per channel (axis 1) with per-channel parameters; with
        # the units on another axis their statistics are symmetric in them and no parameter moves.
        keys = self.keys_of(target, mod, ("weight", "bias", "running_mean", "running_var"))
        live = self.g.live(x)
        unbatched = getattr(mod, "_get_no_batch_dim", lambda: -1)()  # InstanceNorm takes (C, *) too
        ca = 0 if len(shp) == unbatched or len(shp) == 1 else 1
        g = live[0] if live and live[1] == ca else _FIXED
        for key in keys:
            self.g.claim(g, key, 0, node.name)
        if g != _FIXED and isinstance(mod, nn.GroupNorm):
            # a unit may move only inside its normalisation group, whose statistics it shares
            root = self.g.find(g)
            self.g.within[root] = math.gcd(self.g.within[root], mod.num_channels // mod.num_groups)
        return x if live else self.passive(node, [x])

    def attention(self, node: fx.Node, mod: nn.MultiheadAttention, target: str) -> Any:
        names = ("query", "key", "value")
        args = [node.args[i] if len(node.args) > i else node.kwargs.get(n) for i, n in enumerate(names)]
        heads = self.g.new(mod.num_heads, f"{target}:heads", block=mod.head_dim)
        if mod._qkv_same_embed_dim:
            for a in args:
                self.claim_input(self.val(a), self.info(a), f"{target}.in_proj_weight", 1, -1, node,
                                 "MultiheadAttention")
            self.g.claim(heads, f"{target}.in_proj_weight", 0, node.name)
        else:
            for a, p in zip(args, ("q", "k", "v")):
                self.claim_input(self.val(a), self.info(a), f"{target}.{p}_proj_weight", 1, -1, node,
                                 "MultiheadAttention")
                self.g.claim(heads, f"{target}.{p}_proj_weight", 0, node.name)
        for key in self.keys_of(target, mod, ("in_proj_bias",)):
            self.g.claim(heads, key, 0, node.name)
        for key in self.keys_of(target, mod, ("bias_k", "bias_v")):
            self.g.claim(heads, key, 2, node.name)
        self.g.claim(heads, f"{target}.out_proj.weight", 1, node.name)
        out = self.g.new(mod.embed_dim, f"{target}.out_proj")
        self.g.claim(out, f"{target}.out_proj.weight", 0, node.name)
        if mod.out_proj.bias is not None:
            self.g.claim(out, f"{target}.out_proj.bias", 0, node.name)
        need = self.info(node.args[4] if len(node.args) > 4 else node.kwargs.get("need_weights", True))
        average = self.info(node.args[6] if len(node.args) > 6 else node.kwargs.get("average_attn_weights", True))
        if need and not average:
            self.g.require_fixed(heads, _mix(node, "per-head attention weights used"))
        info = self.infos[node]
        # attention weights averaged over heads do not depend on the order of heads or units
        weights = _T(_FIXED) if isinstance(info[1], _Shape) else None
        return (_T(out, len(info[0]) - 1), weights)


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def permutation_spec(model: nn.Module, example_input: Tensor) -> PermutationSpec:
    """The unit permutations of `model`, found by tracing it with torch.fx and running the trace once on
    `example_input` (for shapes). One-line LandscapeError for anything it cannot align exactly."""
    if not isinstance(model, nn.Module) or not isinstance(example_input, Tensor):
        raise LandscapeError("permutation_spec needs an nn.Module and an example input tensor")
    modes = {m: m.training for m in model.modules()}
    model.eval()  # the example forward must not move BatchNorm running statistics
    try:
        try:
            graph = _LeafTracer().trace(model)
        except Exception as exc:  # noqa: BLE001 - whatever fx raises on a user's model becomes one line
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise LandscapeError(f"cannot align: torch.fx cannot trace {type(model).__name__} "
                                 f"({type(exc).__name__}: {text})") from None
        gm = fx.GraphModule(model, graph)
        recorder = _Recorder(gm)
        try:
            with torch.no_grad():
                recorder.run(example_input.clone())
        except Exception as exc:  # noqa: BLE001 - whatever the model raises becomes one line
            text = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise LandscapeError(f"cannot align: the traced model failed on the example input "
                                 f"{tuple(example_input.shape)} ({type(exc).__name__}: {text})") from None
    finally:
        for m, mode in modes.items():
            m.train(mode)

    state = model.state_dict(keep_vars=True)
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for key, t in state.items():  # tied tensors (one tensor, two names) must move as one
        aliases[key] = first.setdefault(id(t), key)
    groups = _Groups(aliases)
    _Propagate(gm, recorder.infos, groups).run()
    return _build(groups, state, aliases)


def _build(groups: _Groups, state: Mapping[str, Tensor], aliases: Mapping[str, str]) -> PermutationSpec:
    groups.settle()
    for g, message in groups.deferred:
        if groups.find(g) != _FIXED:
            raise LandscapeError(message)
    by_root: dict[int, list[tuple[str, int]]] = {}
    names_of: dict[str, list[str]] = {}
    for key, canon in aliases.items():
        names_of.setdefault(canon, []).append(key)
    for pair, g in groups.claims.items():
        r = groups.find(g)
        if r == _FIXED:
            continue
        for key in groups.claimed_keys[pair]:
            by_root.setdefault(r, []).append((key, pair[1]))
        for key in names_of.get(pair[0], ()):  # tied names the graph never read move alike
            if key not in groups.claimed_keys[pair]:
                by_root[r].append((key, pair[1]))
    out: list[PermutationGroup] = []
    names: set[str] = set()
    for r in sorted(by_root):
        size, block = int(groups.size[r]), groups.block[r]
        for key, axis in by_root[r]:
            t = state.get(key)
            if t is None:
                raise LandscapeError(f"cannot align: tensor {key!r} is not in the state dict (a non-persistent "
                                     f"buffer or a constant) but would have to be permuted along axis {axis}")
            if axis >= t.dim() or t.shape[axis] % (size * block):
                raise LandscapeError(f"cannot align: {key!r} of shape {tuple(t.shape)} does not have {size} units "
                                     f"x {block} along axis {axis}; {SUPPORTED}")
        openers = groups.openers[r]
        if len(openers) == 1:
            name = openers[0]
        else:
            parts = [o.split(".") for o in openers]
            common = []
            for level in zip(*parts):
                if len(set(level)) > 1:
                    break
                common.append(level[0])
            name = "residual:" + (".".join(common) or openers[0])
        base, k = name, 1
        while name in names:
            k += 1
            name = f"{base}#{k}"
        names.add(name)
        within = groups.within[r]
        out.append(PermutationGroup(name=name, size=size, block=block, axes=tuple(by_root[r]),
                                    within=0 if within in (0, size) else within))
    return PermutationSpec(tuple(out))
