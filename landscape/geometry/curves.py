"""Curved paths between two snapshots (mode connectivity, Garipov et al. 2018).

Two curves with one free control point θ (the "bend") between endpoints A and B, as in
dnn-mode-connectivity (curves.Bezier and curves.PolyChain with three bends, the ends fixed):

- Bezier (quadratic):  φ_θ(t) = (1−t)²·A + 2t(1−t)·θ + t²·B
- polygonal chain:     φ_θ(t) = (1−2t)·A + 2t·θ            for t ≤ 1/2
                       φ_θ(t) = (2−2t)·θ + (2t−1)·B        for t ≥ 1/2

Training, as their train.py does for curves: θ starts at the midpoint (A+B)/2 (their
`init_linear`; the untrained Bezier curve is then the straight line); every mini-batch draws
t ~ U(0, 1) and takes a step on the loss at φ_θ(t), the model in train mode (BatchNorm on batch
statistics), with an optional L2 penalty ½·wd·‖φ_θ(t)‖² (their `l2_regularizer`). Gradients
reach θ through torch.func.functional_call on the interpolated parameters. Optimiser: SGD with
momentum 0.9 (theirs) or Adam; learning-rate schedule theirs: the base rate for the first half
of the epochs, then linear decay to 1% of it at 90% of the epochs, 1% after that.

Evaluating and storing a trained curve beside the straight line is landscape.analyses.connect's.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from landscape.core.bn import batch_statistics
from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.core.errors import LandscapeError
from landscape.core.params import ParamLayout
from landscape.core.validate import finite_positive, positive_int

CURVES = ("bezier", "polychain")
OPTIMIZERS = ("sgd", "adam")


def curve_weights(curve: str, t: float) -> tuple[float, float, float]:
    """The coefficients of (A, θ, B) in φ_θ(t)."""
    t = float(t)
    if curve == "bezier":
        return (1 - t) ** 2, 2 * t * (1 - t), t**2
    if curve == "polychain":
        return (1 - 2 * t, 2 * t, 0.0) if t <= 0.5 else (0.0, 2 - 2 * t, 2 * t - 1)
    raise LandscapeError(f"unknown curve {curve!r}: choose bezier or polychain")


def curve_point(curve: str, a: torch.Tensor, bend: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor
                ) -> torch.Tensor:
    """φ_θ(t) for flat vectors; t = 0 and t = 1 give A and B exactly. A tensor `t` keeps the
    result differentiable in `bend` (training); a float `t` is for evaluation."""
    if not isinstance(t, torch.Tensor):
        if t == 0.0:
            return a.clone()
        if t == 1.0:
            return b.clone()
        c0, c1, c2 = curve_weights(curve, t)
        return c0 * a + c1 * bend + c2 * b
    if curve == "bezier":
        return (1 - t) ** 2 * a + 2 * t * (1 - t) * bend + t**2 * b
    if curve == "polychain":
        return torch.where(t <= 0.5, (1 - 2 * t) * a + 2 * t * bend, (2 - 2 * t) * bend + (2 * t - 1) * b)
    raise LandscapeError(f"unknown curve {curve!r}: choose bezier or polychain")


def lr_factor(epoch: int, epochs: int) -> float:
    """dnn-mode-connectivity's schedule (epoch is 1-based): 1 up to half the epochs, linear decay
    to 0.01 at 90%, 0.01 after."""
    alpha = epoch / epochs
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01


def check_training_args(curve: str, epochs: Any, lr: Any, momentum: Any, weight_decay: Any, optimizer: str,
                        batch_size: Any) -> None:
    if curve not in CURVES:
        raise LandscapeError(f"unknown curve {curve!r}: choose bezier or polychain")
    if optimizer not in OPTIMIZERS:
        raise LandscapeError(f"unknown optimizer {optimizer!r}: choose sgd or adam")
    positive_int(epochs, "--epochs")
    finite_positive(lr, "--lr")
    positive_int(batch_size, "--train-batch-size")
    for value, what in ((momentum, "--momentum"), (weight_decay, "--wd")):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise LandscapeError(f"{what} must be a finite number >= 0, got {value!r}") from None
        if not math.isfinite(v) or v < 0:
            raise LandscapeError(f"{what} must be a finite number >= 0, got {value!r}")
    if float(momentum) >= 1:
        raise LandscapeError(f"--momentum must be below 1, got {momentum!r}")


def train_curve(model: nn.Module, a: Snapshot, b: Snapshot, x: torch.Tensor | None = None,
                y: torch.Tensor | None = None, *, stream=None, curve: str = "bezier", epochs: int = 20,
                lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0, optimizer: str = "sgd",
                batch_size: int = 128, seed: int = 0, device: str | torch.device = "cpu", loss_fn=None,
                init: torch.Tensor | None = None, quiet: bool = True, progress: Mapping[str, Any] | None = None,
                on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """Train the control point θ of the curve from A to B on (x, y), or on a streamed data set
    (`stream`, a landscape.core.data.StreamData, shuffled through a seeded DataLoader); returns θ (flat,
    on the CPU) and the mean training loss of each epoch (at the sampled t's).

    `on_epoch(state)` is called after every epoch with everything the next epochs depend on (the
    epoch, θ, the optimizer's state, the random generator's state, the BN buffers, the history);
    given back as `progress`, training goes on from there with the numbers of an uninterrupted run."""
    check_same_architecture([a, b])
    check_training_args(curve, epochs, lr, momentum, weight_decay, optimizer, batch_size)
    epochs, batch_size = int(epochs), int(batch_size)
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = torch.device(device)
    net = copy.deepcopy(model).to(device)
    a.load_into(net)
    net.train()
    layout = ParamLayout.of(net)
    dtype = a.params.dtype
    pa, pb = a.params.to(device), b.params.to(device)
    bend = ((pa + pb) / 2 if init is None else init.to(device, dtype)).clone().requires_grad_(True)
    # train-mode BN updates its running statistics in place: give it scratch copies
    buffers = {k: v.detach().clone() for k, v in net.named_buffers()}
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD([bend], lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam([bend], lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    if stream is None:
        x, y = x.to(device), y.to(device)
        n = x.shape[0]
    else:
        n = len(stream)

    def batches():
        if stream is None:
            order = torch.randperm(n, generator=g).to(device)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                yield x[idx], y[idx]
            return
        # the order of the in-memory path, drawn the same way, so streamed and in-memory data train
        # the same curve (a shuffling DataLoader would also draw its workers' seed from g)
        order = torch.randperm(n, generator=g).tolist()
        loader = DataLoader(stream.dataset, batch_size=batch_size, sampler=order, generator=torch.Generator(),
                            num_workers=getattr(stream, "num_workers", 0))
        for xb, yb in loader:
            xb = xb.float() if not xb.is_floating_point() else xb
            yield xb.to(device, dtype if dtype.is_floating_point else xb.dtype), torch.as_tensor(yb).to(device)

    history: list[float] = []
    first = 1
    if progress is not None:
        with torch.no_grad():
            bend.copy_(progress["bend"].to(device, dtype))
        opt.load_state_dict(progress["optimizer"])
        g.set_state(progress["generator"])
        for k, v in progress["buffers"].items():
            buffers[k].copy_(v.to(device))
        history, first = [float(h) for h in progress["history"]], int(progress["epoch"]) + 1
    for epoch in tqdm(range(first, epochs + 1), desc=f"{curve} curve", disable=quiet, leave=False,
                      initial=first - 1, total=epochs):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(epoch, epochs)
        total = 0.0
        for xb, yb in batches():
            t = torch.rand((), generator=g, dtype=torch.float64).to(device, dtype)
            w = curve_point(curve, pa, bend, pb, t)
            params = {name: w[sl].view(shape) for name, shape, sl in layout.slices()}
            with batch_statistics("training the curve", "give more training samples or a --batch-size that "
                                  "leaves no last batch of one sample"):
                loss = loss_fn(functional_call(net, (params, buffers), (xb,)), yb)
            objective = loss + 0.5 * weight_decay * (w * w).sum() if weight_decay else loss
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            total += float(loss.detach()) * yb.shape[0]
        history.append(total / n)
        if not math.isfinite(history[-1]):
            raise LandscapeError(f"curve training diverged (loss {history[-1]} in epoch {epoch}): lower --lr")
        if on_epoch is not None and epoch < epochs:
            on_epoch({"epoch": epoch, "bend": bend.detach().cpu().clone(), "optimizer": opt.state_dict(),
                      "generator": g.get_state(), "history": list(history),
                      "buffers": {k: v.detach().cpu().clone() for k, v in buffers.items()}})
    return bend.detach().cpu(), history
