"""REPAIR (Jordan et al., 2023): interpolated networks rescaled to the endpoints' interpolated statistics.

For a point with barycentric weights λ over the endpoints (a line: (1−α, α); a plane through
three snapshots: the point's barycentric coordinates in the triangle of the three), each chosen
layer's per-channel mean and std are set to μ = Σ λ_i μ_i and σ = max(Σ λ_i σ_i, 0), where
(μ_i, σ_i) are endpoint i's, measured on the same samples. Chosen layers: every BatchNorm of a
network with BN (its output, after the affine); in a network without BN, every Conv/Linear
layer but the last to run (the output layer).

How the statistics are taken, as `recompute` re-estimates BN (update_bn) and as Jordan et al.'s
reset layers are estimated: one pass over the BN samples in batches, BN layers in train mode
(their running statistics reset and re-estimated in the same pass), every other module in eval
mode. Per batch b and channel: the mean m_b and unbiased variance v_b; a layer's
statistics are the means over batches (μ = mean m_b, σ = sqrt(mean v_b), as update_bn's
running statistics). In a point's pass each batch of a chosen layer is mapped to the
interpolation of the endpoints' statistics on that same batch, so later layers see corrected
inputs; the correction kept is the affine map from the point's batch-averaged statistics to the
target, folded into the layer's weight and bias (BN: its γ and β). At an endpoint every
map is exactly the identity, so REPAIR there changes nothing; with one batch the folded
network's statistics on the samples equal the targets up to rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import nn

from landscape.core.bn import statistics_pass
from landscape.core.errors import LandscapeError

_BN = nn.modules.batchnorm._BatchNorm
_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _hooked_pass(model: nn.Module, layers: "list[RepairLayer]", hook, x: torch.Tensor, batch_size: int) -> None:
    """One statistics pass (BN re-estimated as update_bn) with hook(i) on each chosen layer."""
    hooks = [layer.module.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        statistics_pass(model, x, batch_size, bn_only_train=True)
    finally:
        for h in hooks:
            h.remove()


@dataclass
class RepairLayer:
    name: str
    module: nn.Module

    @property
    def channel_dim(self) -> int:
        return -1 if isinstance(self.module, nn.Linear) else 1


def repair_layers(model: nn.Module, probe: torch.Tensor) -> list[RepairLayer]:
    """The layers REPAIR corrects, in the order they run on `probe` (one eval-mode forward).
    A model with none, a chosen layer that runs twice per forward (shared weights) or one with no
    parameters to carry the correction is refused with one line."""
    names = {m: n for n, m in model.named_modules()}
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: order.append(mod))
             for m in model.modules() if isinstance(m, (_BN, *_AFFINE))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if any(isinstance(m, _BN) for m in order):
        chosen = [m for m in order if isinstance(m, _BN)]
    else:
        chosen = [m for m in order if isinstance(m, _AFFINE)][:-1]  # the output layer feeds no nonlinearity
    if not chosen:
        raise LandscapeError("BN mode repair: the model has no layer REPAIR can correct (it rescales BatchNorm "
                             "outputs, or without BatchNorm the Conv/Linear layers before the output layer); "
                             "use --bn keep")
    seen: set[int] = set()
    for m in chosen:
        if id(m) in seen:
            raise LandscapeError(f"BN mode repair: layer {names[m]!r} runs more than once per forward pass, so "
                                 "one correction cannot fit each use; use --bn keep or recompute")
        seen.add(id(m))
        if isinstance(m, _BN) and not m.affine:
            raise LandscapeError(f"BN mode repair: BatchNorm {names[m]!r} has no affine parameters to carry the "
                                 "correction; use --bn recompute")
        if isinstance(m, _AFFINE) and m.bias is None:
            raise LandscapeError(f"BN mode repair: layer {names[m]!r} has no bias to carry the correction's "
                                 "shift; use --bn keep")
    return [RepairLayer(names[m], m) for m in chosen]


def _stats(out: torch.Tensor, layer: RepairLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased variance of one batch of a layer's output (fp32 reductions,
    as accurate as fp64 ones here and 2-3x faster on the CPU; kept in fp64 afterwards)."""
    dim = layer.channel_dim % out.ndim
    dims = tuple(d for d in range(out.ndim) if d != dim)
    if out.numel() // out.shape[dim] < 2:
        raise LandscapeError(f"BN mode repair: layer {layer.name!r} got a batch with one value per channel, which "
                             "has no variance; give more samples (--bn-samples) or a --batch-size that leaves no "
                             "last batch of one sample")
    var, mean = torch.var_mean(out.detach().float(), dim=dims, correction=1)
    return mean.double(), var.double()


def _scale(target_std: torch.Tensor, var: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """σ_target / σ. A channel whose spread is at rounding level (or none) is constant: it cannot
    be rescaled and becomes its target mean."""
    std = var.sqrt()
    varies = std > 1e-6 * mean.abs()
    return torch.where(varies, target_std / torch.where(varies, std, 1.0), 0.0)


@dataclass
class LayerStats:
    """Per-batch statistics of one layer: means and variances [batches, channels], fp64."""
    means: list[torch.Tensor] = field(default_factory=list)
    variances: list[torch.Tensor] = field(default_factory=list)

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.means), torch.stack(self.variances)


def measure(model: nn.Module, layers: Sequence[RepairLayer], x: torch.Tensor, batch_size: int) -> list[LayerStats]:
    """One statistics pass (BN re-estimated as update_bn) recording each layer's per-batch
    statistics without changing anything: an endpoint's statistics."""
    stats = [LayerStats() for _ in layers]

    def hook(i: int):
        def record(mod, inp, out):
            m, v = _stats(out, layers[i])
            stats[i].means.append(m)
            stats[i].variances.append(v)
        return record

    _hooked_pass(model, layers, hook, x, batch_size)
    return stats


@dataclass
class EndpointStats:
    """The endpoints' statistics: per layer, means and stds [endpoints, batches, channels] per
    batch and [endpoints, channels] over batches (σ = sqrt of the batch-averaged variance)."""
    batch_means: list[torch.Tensor]
    batch_stds: list[torch.Tensor]
    means: list[torch.Tensor]
    stds: list[torch.Tensor]

    @classmethod
    def of(cls, per_endpoint: Sequence[list[LayerStats]]) -> "EndpointStats":
        bm, bs, mm, ss = [], [], [], []
        for i in range(len(per_endpoint[0])):
            pairs = [e[i].stacked() for e in per_endpoint]
            means = torch.stack([m for m, _ in pairs])
            variances = torch.stack([v for _, v in pairs])
            bm.append(means)
            bs.append(variances.sqrt())
            mm.append(means.mean(1))
            ss.append(variances.mean(1).sqrt())
        return cls(bm, bs, mm, ss)


def _combine(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Σ_i λ_i·values[i] over the first axis (an endpoint's own weights e_i give values[i] exactly)."""
    return torch.tensordot(weights.to(values.dtype), values, dims=1)


@torch.no_grad()
def repair(model: nn.Module, layers: Sequence[RepairLayer], x: torch.Tensor, batch_size: int,
           endpoints: EndpointStats, weights: torch.Tensor) -> None:
    """Rescale the loaded model in place: the point with barycentric `weights` over the endpoints
    gets each chosen layer's interpolated statistics (BN statistics re-estimated in the same pass)."""
    lam = weights.to(torch.float64)
    targets = [(_combine(lam, endpoints.batch_means[i]), _combine(lam, endpoints.batch_stds[i]).clamp(min=0))
               for i in range(len(layers))]
    own = [LayerStats() for _ in layers]

    def hook(i: int):
        layer = layers[i]

        def correct(mod, inp, out):
            b = len(own[i].means)  # the batch: the same samples as the endpoints' batch b
            m, v = _stats(out, layer)
            own[i].means.append(m)
            own[i].variances.append(v)
            a = _scale(targets[i][1][b], v, m)
            c = targets[i][0][b] - a * m  # c + out·a: exactly `out` where a = 1 and c = 0
            shape = [1] * out.ndim
            shape[layer.channel_dim] = -1
            return torch.addcmul(c.to(out.dtype).view(shape), out, a.to(out.dtype).view(shape))
        return correct

    _hooked_pass(model, layers, hook, x, batch_size)
    for i, layer in enumerate(layers):
        means, variances = own[i].stacked()
        target_mean = _combine(lam, endpoints.means[i])
        target_std = _combine(lam, endpoints.stds[i]).clamp(min=0)
        a = _scale(target_std, variances.mean(0), means.mean(0))
        c = target_mean - a * means.mean(0)
        _fold(layer.module, a, c)


def _fold(mod: nn.Module, a: torch.Tensor, c: torch.Tensor) -> None:
    """The layer's output y becomes a·y + c per channel: weight·a, bias·a + c (BN: γ and β)."""
    w, b = mod.weight, mod.bias
    w.copy_((w.double() * a.view(-1, *([1] * (w.ndim - 1)))).to(w.dtype))
    b.copy_((b.double() * a + c).to(b.dtype))


def barycentric(vertices: np.ndarray, coeffs: torch.Tensor) -> torch.Tensor:
    """Weights λ (summing to 1) with Σ λ_i·vertices[i] = coeffs; exactly e_i at vertex i."""
    v = torch.as_tensor(vertices, dtype=torch.float64)
    c = coeffs.detach().to("cpu", torch.float64).reshape(-1)
    hit = torch.nonzero((v == c).all(1)).reshape(-1)
    if len(hit):
        out = torch.zeros(v.shape[0], dtype=torch.float64)
        out[int(hit[0])] = 1.0
        return out
    m = (v[1:] - v[0]).T  # coeffs − v0 = m @ λ[1:]
    rest = torch.linalg.solve(m, c - v[0])
    return torch.cat([(1 - rest.sum()).reshape(1), rest])


def check_vertices(vertices: np.ndarray | Sequence, ndim: int) -> np.ndarray:
    """The endpoints' coefficients [ndim + 1, ndim], finite and affinely independent."""
    v = np.asarray(vertices, dtype=np.float64)
    if v.shape != (ndim + 1, ndim) or not np.isfinite(v).all():
        raise LandscapeError(f"BN mode repair needs {ndim + 1} endpoints with {ndim} finite coefficients each, "
                             f"got shape {list(v.shape)}")
    if ndim and abs(np.linalg.det((v[1:] - v[0]).T)) < 1e-12 * max(1.0, float(np.abs(v).max())) ** ndim:
        raise LandscapeError("BN mode repair: the endpoints are not affinely independent (collinear snapshots)")
    return v
