"""BatchNorm handling: the explicit BN modes, recomputation, and folding BN into convolutions.

Modes (recorded with every result):
- `keep`: use the buffers as they are (interpolated between endpoints on a line, the centre's on a plane);
- `recompute`: reset running statistics and re-estimate them on training data at each point,
  exactly as `torch.optim.swa_utils.update_bn` does (cumulative average over batches);
- `repair`: REPAIR (Jordan et al., 2023) on lines and planes through snapshots: `recompute`, then
  each BN output (without BN: each hidden Conv/Linear output) rescaled per channel to the
  interpolated endpoints' mean and std (`landscape.evaluate.repair`). `recompute` is REPAIR's
  special case for BN networks: it corrects the statistics before BN's affine, not after.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.fx
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .errors import LandscapeError

BN_MODES = ("keep", "recompute", "repair")
_BN = nn.modules.batchnorm._BatchNorm


def bn_modules(model: nn.Module) -> list[_BN]:
    return [m for m in model.modules() if isinstance(m, _BN)]


@contextmanager
def batch_statistics(doing: str, remedy: str) -> Iterator[None]:
    """Train-mode forward passes: a BatchNorm layer that sees one value per channel in a batch
    (one sample into a BatchNorm1d, or a last batch of one) has no batch statistics, and torch
    raises a ValueError from deep inside; here it is one line saying what to change."""
    try:
        yield
    except ValueError as exc:
        if "Expected more than 1 value per channel when training" not in str(exc):
            raise
        shape = str(exc).rpartition("input size ")[2].replace("torch.Size(", "").rstrip(")")
        raise LandscapeError(f"{doing}: a BatchNorm layer got a batch with one value per channel (input of "
                             f"shape {shape}), which has no batch statistics; {remedy}") from None


@torch.no_grad()
def recompute_bn(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Re-estimate BN running statistics on `x` in batches, as swa_utils.update_bn does.

    update_bn resets the statistics, sets momentum=None (a cumulative average over batches)
    and runs train-mode forwards; the result depends on how `x` is cut into batches, so the
    same `batch_size` gives the same statistics as update_bn over a DataLoader of that size.
    """
    if bn_modules(model):
        statistics_pass(model, x, batch_size)


@torch.no_grad()
def statistics_pass(model: nn.Module, x: torch.Tensor, batch_size: int, bn_only_train: bool = False) -> None:
    """Forward passes over `x` in batches with BN statistics reset and re-estimated (as
    update_bn: momentum None, train mode). The passes run even without BN, so forward hooks can
    measure the batches (REPAIR). `bn_only_train`: only BN layers in train mode, every other
    module in eval mode (dropout off: the statistics are those of the network as evaluated)."""
    bns = bn_modules(model)
    momenta = {}
    for m in bns:
        m.reset_running_stats()
        momenta[m] = m.momentum
        m.momentum = None
    was_training = model.training
    if bn_only_train:
        model.eval()
        for m in bns:
            m.train()
    else:
        model.train()
    try:
        with batch_statistics("recomputing BN statistics", "give more samples (--bn-samples), a --batch-size "
                              "that leaves no last batch of one sample, or --bn keep"):
            for start in range(0, x.shape[0], batch_size):
                model(x[start:start + batch_size])
    finally:
        for m in bns:
            m.momentum = momenta[m]
        model.train(was_training)


@dataclass
class _FoldedPair:
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    fused: nn.Conv2d


class FoldedEval:
    """An eval-mode twin of a model with every Conv2d→BatchNorm2d pair folded into one conv.

    The twin shares all other modules with the model, so after the model's weights or buffers
    change, `refresh()` recomputes only the folded convolutions. Folding halves the memory
    traffic of BN layers in eval mode and is exact up to fp32 rounding. Models that torch.fx
    cannot trace run unfolded.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.pairs: list[_FoldedPair] = []
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception:  # dynamic control flow: evaluate the model as is
            self.module: nn.Module = model
            return
        modules = dict(gm.named_modules())
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
                continue
            prev = node.args[0]
            bn = modules[node.target]
            if (not isinstance(prev, torch.fx.Node) or prev.op != "call_module"
                    or not isinstance(modules.get(prev.target), nn.Conv2d) or len(prev.users) != 1
                    or not bn.track_running_stats or bn.running_mean is None):
                continue
            conv = modules[prev.target]
            fused = copy.deepcopy(conv)
            if fused.bias is None:
                fused.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype,
                                                      device=conv.weight.device))
            name = f"_folded_{len(self.pairs)}"
            gm.add_submodule(name, fused)
            prev.target = name
            node.replace_all_uses_with(prev)
            gm.graph.erase_node(node)
            self.pairs.append(_FoldedPair(conv, bn, fused))
        gm.graph.lint()
        gm.recompile()
        self.module = gm
        self.module.eval()
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        for p in self.pairs:
            w, b = fuse_conv_bn_weights(p.conv.weight, p.conv.bias, p.bn.running_mean, p.bn.running_var,
                                        p.bn.eps, p.bn.weight, p.bn.bias)
            p.fused.weight.copy_(w)
            p.fused.bias.copy_(b)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)
