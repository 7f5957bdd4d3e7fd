"""Flat parameter vectors with a layout, and the buffers that travel beside them.

A model's trainable parameters are concatenated in `named_parameters()` order into one
1-D tensor. The layout (names, shapes, offsets) makes the vector meaningful again, and lets
two snapshots be checked for the same architecture before they are combined.
Buffers (BatchNorm running statistics) are kept apart: the BN mode decides their fate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from .errors import LandscapeError


@dataclass(frozen=True)
class ParamLayout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> "ParamLayout":
        named = [(n, p) for n, p in model.named_parameters()]
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.sizes:
            out.append(acc)
            acc += n
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def slices(self) -> Iterator[tuple[str, tuple[int, ...], slice]]:
        for name, shape, off, n in zip(self.names, self.shapes, self.offsets, self.sizes):
            yield name, shape, slice(off, off + n)

    def view(self, vector: torch.Tensor, name: str) -> torch.Tensor:
        """The part of `vector` that holds parameter `name`, shaped like it."""
        i = self.names.index(name)
        off, n = self.offsets[i], self.sizes[i]
        return vector[..., off:off + n].reshape(*vector.shape[:-1], *self.shapes[i])

    def to_json(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, data: Mapping) -> "ParamLayout":
        return cls(tuple(data["names"]), tuple(tuple(int(x) for x in s) for s in data["shapes"]))

    def check_same(self, other: "ParamLayout", what_self: str = "model", what_other: str = "snapshot") -> None:
        if self == other:
            return
        if len(self.names) != len(other.names):
            raise LandscapeError(
                f"different architectures: {what_self} has {len(self.names)} parameter tensors, "
                f"{what_other} has {len(other.names)}")
        for (n1, s1), (n2, s2) in zip(zip(self.names, self.shapes), zip(other.names, other.shapes)):
            if n1 != n2 or s1 != s2:
                raise LandscapeError(
                    f"different architectures: {what_self} has {n1} {list(s1)}, {what_other} has {n2} {list(s2)}")


def parameters_to_vector(model: nn.Module) -> torch.Tensor:
    """All trainable parameters as one detached fp32-or-native flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@torch.no_grad()
def vector_to_model(vector: torch.Tensor, model: nn.Module) -> None:
    """Copy a flat vector into the model's parameters in place."""
    offset = 0
    for p in model.parameters():
        n = p.numel()
        p.copy_(vector[offset:offset + n].view_as(p))
        offset += n
    if offset != vector.numel():
        raise LandscapeError(f"parameter vector has {vector.numel()} values, model needs {offset}")


def get_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers()}


@torch.no_grad()
def set_buffers(model: nn.Module, buffers: Mapping[str, torch.Tensor]) -> None:
    own = dict(model.named_buffers())
    for name, value in buffers.items():
        if name in own:
            own[name].copy_(value.to(own[name].dtype))

