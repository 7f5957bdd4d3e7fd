"""Affine families of weight points: θ(c) = θ0 + Σ_j c_j·D_j, buffers likewise.

Every analysis is one: a line has one direction, a plane two. Kept apart from the engine so
that the engine and the batched forward (which both consume families) do not import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch


@dataclass
class AffineFamily:
    """Points θ0 + c·D with buffers b0 + c·B (floating buffers only; integer ones stay b0's)."""

    origin: torch.Tensor  # [P]
    directions: torch.Tensor  # [d, P]
    buffer_origin: dict[str, torch.Tensor] = field(default_factory=dict)
    buffer_directions: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [d, *shape]

    @property
    def ndim(self) -> int:
        return int(self.directions.shape[0])

    def params_at(self, coeffs: torch.Tensor) -> torch.Tensor:
        c = coeffs.to(self.directions.dtype)
        return torch.addmv(self.origin, self.directions.T, c) if self.ndim else self.origin.clone()

    def buffers_at(self, coeffs: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, b0 in self.buffer_origin.items():
            bd = self.buffer_directions.get(name)
            if bd is not None and b0.is_floating_point():
                out[name] = b0 + torch.tensordot(coeffs.to(bd.dtype), bd, dims=1)
            else:
                out[name] = b0
        return out

    @classmethod
    def line(cls, a_params: torch.Tensor, b_params: torch.Tensor, a_buffers: Mapping[str, torch.Tensor],
             b_buffers: Mapping[str, torch.Tensor]) -> "AffineFamily":
        """θ(α) = θa + α(θb − θa): coefficient α on one direction; buffers interpolated alike."""
        bdirs = {k: (b_buffers[k] - v).unsqueeze(0) for k, v in a_buffers.items() if v.is_floating_point()}
        return cls(a_params, (b_params - a_params).unsqueeze(0), dict(a_buffers), bdirs)
