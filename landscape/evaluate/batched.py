"""K weight points per forward pass: the model's graph run on a batch of points at once.

The model is traced with torch.fx. Activations of K points travel merged along the batch
dimension ([K·N, ...]); every Conv2d and Linear runs through the interpolated-weight kernels
(`landscape_kernels.interpolated_conv2d` / `interpolated_linear`: on CUDA the weight tiles
W0 + Σ c_kj·D_j are formed in the matmul's load stage, never stored), and the first such layer,
whose input is the same at every point, costs d+1 products whatever K is. BatchNorm applies each
point's own scale and shift; in `recompute` mode the statistics of each point are re-estimated
exactly as `swa_utils.update_bn` would, all K points in the same pass.

Parameter-free modules and functions (activations, pooling, flatten, residual adds) act on the
merged batch unchanged. Models with other parametrised modules, or that use parameters outside
modules, are not supported here: `BatchedForward.supports` says so and the engine falls back to
its per-point path.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from landscape.core.family import AffineFamily
from landscape.core.params import ParamLayout
from landscape_kernels import interpolated_conv2d, interpolated_linear
from landscape_kernels.launch import check_precision

_BN = nn.modules.batchnorm._BatchNorm
_SUPPORTED = (nn.Conv2d, nn.Linear, _BN)


def _trace_supported(model: nn.Module) -> tuple[torch.fx.GraphModule | None, str | None]:
    """The traced graph, or None and the reason this path cannot run the model."""
    for name, mod in model.named_modules():
        own = list(mod.parameters(recurse=False))
        if own and not isinstance(mod, _SUPPORTED):
            return None, f"module {name!r} ({type(mod).__name__}) has parameters"
        if isinstance(mod, nn.Conv2d) and (mod.padding_mode != "zeros" or isinstance(mod.padding, str)):
            return None, f"conv {name!r} uses padding {mod.padding!r}/{mod.padding_mode}"
        if isinstance(mod, _BN) and not mod.track_running_stats:
            return None, f"BatchNorm {name!r} does not track running statistics"
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:
        return None, f"torch.fx cannot trace the model ({type(exc).__name__})"
    if any(n.op == "get_attr" for n in gm.graph.nodes):
        return None, "the model uses parameters outside modules"
    return gm, None


class BatchedForward:
    """Runs a traced model at K points of an AffineFamily in one pass.

    `precision` ("exact" | "tf32" | "bf16") is the matmul precision of every Conv2d and Linear
    (landscape_kernels/launch.py: exact fp32 products by default; tf32 and bf16 use tensor cores on a GPU,
    and the CPU path rounds the same operands the same way).
    """

    def __init__(self, model: nn.Module, precision: str = "exact") -> None:
        self.gm, self.reason = _trace_supported(model)
        self.model = model
        self.layout = ParamLayout.of(model)
        self.precision = check_precision(precision)

    @property
    def supports(self) -> bool:
        return self.reason is None

    def bind(self, family: AffineFamily, coeffs: torch.Tensor) -> None:
        """Fix the points: per-layer base/direction views and the [K, d] coefficients."""
        self.family, self.coeffs = family, coeffs.to(family.directions.dtype)
        self.k = int(coeffs.shape[0])
        self.bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> per-point (mean, var)

    def _param(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        if name not in self.layout.names:
            return None, None
        return self.layout.view(self.family.origin, name), self.layout.view(self.family.directions, name)

    def _per_point(self, name: str) -> torch.Tensor | None:
        base, dirs = self._param(name)
        if base is None:
            return None
        return base.unsqueeze(0) + torch.tensordot(self.coeffs, dirs, dims=1)

    def _buffer(self, name: str) -> torch.Tensor:
        b0 = self.family.buffer_origin[name]
        bd = self.family.buffer_directions.get(name)
        if bd is None:
            return b0.unsqueeze(0).expand(self.k, *b0.shape)
        return b0.unsqueeze(0) + torch.tensordot(self.coeffs.to(bd.dtype), bd, dims=1)

    def forward(self, x: torch.Tensor, train_bn: bool = False) -> torch.Tensor:
        """Logits [K, N, C] for a shared input batch x [N, ...].

        `train_bn`: BatchNorm normalises with each point's batch statistics and accumulates
        them (cumulative average over calls, as update_bn); else it uses `bn_stats` if
        recomputed, or the family's buffers.
        """
        runner = _Runner(self, train_bn)
        out = runner.run(x)
        n = x.shape[0]
        if out.shape[0] == n and not runner.is_per_point(out):
            out = out.unsqueeze(0).expand(self.k, *out.shape)  # a model that ignores its parameters
        return out.reshape(self.k, n, *out.shape[1:])

    def finish_recompute(self, counts: int) -> None:
        """Turn accumulated batch statistics into running statistics (means over batches)."""
        self.bn_stats = {k: (m / counts, v / counts) for k, (m, v) in self._acc.items()}

    def start_recompute(self) -> None:
        self._acc: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.bn_stats = {}


class _Runner(torch.fx.Interpreter):
    def __init__(self, owner: BatchedForward, train_bn: bool) -> None:
        super().__init__(owner.gm)
        self.owner, self.train_bn = owner, train_bn
        self.per_point: set[str] = set()
        self._ids: set[int] = set()

    def is_per_point(self, t: Any) -> bool:
        return id(t) in self._ids

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op in ("placeholder", "output"):
            return super().run_node(n)
        inputs = n.all_input_nodes
        any_pp = any(a.name in self.per_point for a in inputs)
        if any_pp:  # mixed shared and per-point operands: repeat the shared ones K times
            for a in inputs:
                v = self.env[a]
                if a.name not in self.per_point and isinstance(v, torch.Tensor) and v.ndim > 0:
                    self.env[a] = v.repeat(self.owner.k, *([1] * (v.ndim - 1)))
                    self.per_point.add(a.name)
        if n.op == "call_module" and isinstance(self.owner.gm.get_submodule(n.target), _SUPPORTED):
            x = self.env[inputs[0]]
            out = self._param_layer(str(n.target), self.owner.gm.get_submodule(n.target), x, any_pp)
            self.per_point.add(n.name)
        else:
            out = super().run_node(n)
            if any_pp:
                self.per_point.add(n.name)
        if n.name in self.per_point and isinstance(out, torch.Tensor):
            self._ids.add(id(out))
        return out

    def _param_layer(self, name: str, mod: nn.Module, x: torch.Tensor, per_point: bool) -> torch.Tensor:
        o, k = self.owner, self.owner.k
        if isinstance(mod, _BN):
            return self._batchnorm(name, mod, x if per_point else x.repeat(k, *([1] * (x.ndim - 1))))
        w0, dw = o._param(f"{name}.weight")
        b0, db = o._param(f"{name}.bias")
        if isinstance(mod, nn.Conv2d):
            xin = x.view(k, -1, *x.shape[1:]) if per_point else x
            y = interpolated_conv2d(xin, w0, dw, o.coeffs, b0, db, mod.stride, mod.padding, mod.dilation, mod.groups,
                                    precision=o.precision)
            return y.reshape(-1, *y.shape[2:])
        lead = x.shape[:-1]
        xin = x.reshape(k, -1, x.shape[-1]) if per_point else x.reshape(-1, x.shape[-1])
        y = interpolated_linear(xin, w0, dw, o.coeffs, b0, db, precision=o.precision)
        n = lead[0] // k if per_point else lead[0]
        return y.reshape(k * n, *lead[1:], y.shape[-1])

    def _batchnorm(self, name: str, mod: _BN, x: torch.Tensor) -> torch.Tensor:
        o, k = self.owner, self.owner.k
        xv = x.view(k, -1, *x.shape[1:])  # [K, N, C, ...]
        c = xv.shape[2]
        shape = (k, 1, c) + (1,) * (xv.ndim - 3)
        reduce = (1,) + tuple(range(3, xv.ndim))
        if self.train_bn:
            mean = xv.mean(reduce)
            var = xv.var(reduce, unbiased=False)
            count = xv.numel() // (k * c)
            unbiased = var * count / max(count - 1, 1)
            m_acc, v_acc = o._acc.get(name, (0.0, 0.0))
            o._acc[name] = (m_acc + mean.detach(), v_acc + unbiased.detach())
        elif name in o.bn_stats:
            mean, var = o.bn_stats[name]
        else:
            mean, var = o._buffer(f"{name}.running_mean"), o._buffer(f"{name}.running_var")
        weight = o._per_point(f"{name}.weight") if mod.affine else None
        bias = o._per_point(f"{name}.bias") if mod.affine else None
        scale = torch.rsqrt(var + mod.eps)
        if weight is not None:
            scale = scale * weight
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias
        return (xv * scale.view(shape) + shift.view(shape)).view_as(x)


def batched_metrics(fwd: BatchedForward, x: torch.Tensor, y: torch.Tensor, batch: int,
                    loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy [K] of the bound points over (x, y), `batch` samples per pass."""
    k = fwd.k
    loss = torch.zeros(k, dtype=torch.float64, device=x.device)
    correct = torch.zeros(k, dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], batch):
        logits = fwd.forward(x[start:start + batch])
        yb = y[start:start + batch]
        if loss_fn is None:
            flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(k), reduction="none")
            loss += flat.view(k, -1).double().sum(1)
        else:
            loss += torch.stack([loss_fn(logits[i], yb).double() * yb.shape[0] for i in range(k)])
        correct += (logits.argmax(-1) == yb).sum(1)
    return loss / x.shape[0], correct.double() / x.shape[0]
