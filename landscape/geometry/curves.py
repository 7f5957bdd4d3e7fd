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

Evaluation, as theirs: at each t, BatchNorm statistics recomputed on training data at φ_θ(t)
(update_bn semantics, landscape.bn.recompute_bn, through the Evaluator's BN mode `recompute`),
then train/test loss and accuracy. The straight line A→B is evaluated at the same t with the
same evaluator, and both barriers (landscape.lines.curve_barriers) are reported side by side.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from landscape.core.bn import recompute_bn
from landscape.core.checkpoints import Snapshot, check_same_architecture
from landscape.core.errors import LandscapeError
from landscape.store.grid import MemoryGrid, line_alphas
from landscape.evaluate.hessian import bn_inputs, evaluator_data, line_snapshot
from .lines import curve_barriers
from landscape.core.params import ParamLayout
from landscape.core.validate import finite_positive, positive_int

CURVES = ("bezier", "polychain")
OPTIMIZERS = ("sgd", "adam")
KIND = "connections"


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
                y: torch.Tensor | None = None, *, stream=None, curve: str = "bezier", epochs: int = 20, lr: float = 0.05, momentum: float = 0.9,
                weight_decay: float = 0.0, optimizer: str = "sgd", batch_size: int = 128, seed: int = 0,
                device: str | torch.device = "cpu", loss_fn=None, init: torch.Tensor | None = None,
                quiet: bool = True) -> tuple[torch.Tensor, list[float]]:
    """Train the control point θ of the curve from A to B on (x, y), or on a streamed data set
    (`stream`, a landscape.data.StreamData, shuffled through a seeded DataLoader); returns θ (flat,
    on the CPU) and the mean training loss of each epoch (at the sampled t's)."""
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
        from torch.utils.data import DataLoader

        loader = DataLoader(stream.dataset, batch_size=batch_size, shuffle=True, generator=g,
                            num_workers=getattr(stream, "num_workers", 0))
        for xb, yb in loader:
            xb = xb.float() if not xb.is_floating_point() else xb
            yield xb.to(device, dtype if dtype.is_floating_point else xb.dtype), torch.as_tensor(yb).to(device)

    history: list[float] = []
    for epoch in tqdm(range(1, epochs + 1), desc=f"{curve} curve", disable=quiet, leave=False):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(epoch, epochs)
        total = 0.0
        for xb, yb in batches():
            t = torch.rand((), generator=g, dtype=torch.float64).to(device, dtype)
            w = curve_point(curve, pa, bend, pb, t)
            params = {name: w[sl].view(shape) for name, shape, sl in layout.slices()}
            loss = loss_fn(functional_call(net, (params, buffers), (xb,)), yb)
            objective = loss + 0.5 * weight_decay * (w * w).sum() if weight_decay else loss
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
            total += float(loss.detach()) * yb.shape[0]
        history.append(total / n)
        if not math.isfinite(history[-1]):
            raise LandscapeError(f"curve training diverged (loss {history[-1]} in epoch {epoch}): lower --lr")
    return bend.detach().cpu(), history


def bend_snapshot(evaluator, a: Snapshot, bend: torch.Tensor, name: str, meta: Mapping[str, Any]) -> Snapshot:
    """The control point as a snapshot; its BN statistics are recomputed at θ itself on the
    evaluator's training data (the bend has no statistics of its own)."""
    buffers = {k: v.clone() for k, v in a.buffers.items()}
    x = bn_inputs(evaluator)
    if x is not None:
        model = copy.deepcopy(evaluator.model)
        Snapshot(name, bend.to(a.params.dtype), a.layout, buffers).load_into(model)
        recompute_bn(model, x, evaluator.batch_size)
        buffers = {k: v.detach().cpu().clone() for k, v in model.named_buffers()}
    return Snapshot(name, bend.to(a.params.dtype), a.layout, buffers, dict(meta))


def connect(evaluator, a: Snapshot, b: Snapshot, *, curve: str = "bezier", alphas: np.ndarray | None = None,
            num: int = 21, epochs: int = 20, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
            optimizer: str = "sgd", train_batch_size: int = 128, seed: int = 0, store=None,
            name: str = "connect", provenance: Mapping[str, Any] | None = None, overwrite: bool = False,
            chunk: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Train a curve from `a` to `b` on the evaluator's training data, then evaluate it and the
    straight line at the same t's (BN recomputed at every point): stored as the connection `name`
    (kind "connections": alphas, <split>_<loss|acc> for the curve, line_<split>_<loss|acc> for
    the line, done, nonfinite; attributes barriers and line_barriers) and the control point as
    the snapshot `NAME-bend` (kept even if the evaluation is cut short, so a rerun skips the
    training and evaluates only the missing points). A finished connection with the same
    arguments is returned without computing or writing."""
    from landscape.store.store import config_differences, same_config

    check_same_architecture([a, b])
    check_training_args(curve, epochs, lr, momentum, weight_decay, optimizer, train_batch_size)
    chunk = 4 if chunk is None else positive_int(chunk, "--chunk")
    data = evaluator_data(evaluator)
    if data["split"] != "train":
        raise LandscapeError("connect trains the curve on training data: give --data")
    if evaluator.has_bn and evaluator.bn_mode != "recompute":
        raise LandscapeError("connect evaluates curves with BatchNorm statistics recomputed at each point: "
                             "use --bn recompute")
    ts = line_alphas(positive_int(num, "--num")) if alphas is None else np.asarray(alphas, dtype=np.float64)
    prov = dict(provenance or {})
    training = {"curve": curve, "epochs": int(epochs), "lr": float(lr), "momentum": float(momentum),
                "weight_decay": float(weight_decay), "optimizer": optimizer, "train_batch_size": int(train_batch_size),
                "seed": int(seed), "init": "midpoint", "schedule": "garipov"}
    config = {**prov, **evaluator.config, **training, "a": a.fingerprint(), "b": b.fingerprint(),
              "train_samples": data["samples"], "alphas": ts.tolist()}
    bend_name = f"{name}-bend"
    if store is not None and store.has("snapshots", bend_name):
        old = store.read_attrs("snapshots", bend_name).get("config")
        if not same_config(old, config) and not overwrite:
            raise LandscapeError(f"snapshot {bend_name!r} in store {store.path!r} was trained with different "
                                 f"arguments ({config_differences(old, config)}); use --overwrite to replace it "
                                 "or choose another --name")
    metrics = evaluator.metric_names
    attrs = {**prov, "bn_mode": evaluator.bn_mode, "a": a.name, "b": b.name, "curve": curve,
             "bend": bend_name if store is not None else None}
    if store is None:
        grid = MemoryGrid((len(ts),), metrics + [f"line_{m}" for m in metrics], {"alphas": ts})
    else:
        grid = store.open_grid(KIND, name, (len(ts),), metrics + [f"line_{m}" for m in metrics], {"alphas": ts},
                               config, attrs, overwrite)
    todo = grid.missing()
    bend: Snapshot | None = None
    if store is not None and store.has("snapshots", bend_name) \
            and same_config(store.read_attrs("snapshots", bend_name).get("config"), config):
        bend = store.read_snapshot(bend_name)
    if bend is None and grid.finished:  # finished, its control point since removed: nothing to train
        history = [float(v) for v in np.asarray(grid.fixed.get("history", []))]
    elif bend is None:
        theta, history = train_curve(evaluator.model, a, b, data["x"], data["y"], stream=data["stream"],
                                     curve=curve, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, optimizer=optimizer,
                                     batch_size=train_batch_size, seed=seed, device=evaluator.device,
                                     loss_fn=evaluator.loss_fn, quiet=quiet)
        meta = {"method": "curve_bend", "curve": curve, "a": a.name, "b": b.name, "history": history,
                **{k: v for k, v in training.items() if k != "curve"}}
        bend = bend_snapshot(evaluator, a, theta, bend_name, meta)
        if store is not None:
            store.write_snapshot(bend, bend_name, overwrite=store.has("snapshots", bend_name),
                                 attrs={"config": config})
    if bend is not None:
        history = [float(v) for v in bend.meta.get("history", [])]
        theta = bend.params
    bar = tqdm(total=len(todo), desc="curve and line", disable=quiet, unit="t", leave=False)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        values: dict[str, list[float]] = {m: [] for m in grid.metrics}
        for i in part:
            t = float(ts[i])
            on_curve = evaluator.evaluate(curve_point(curve, a.params, theta, b.params, t), a.buffers)
            line = line_snapshot(a, b, t)
            on_line = evaluator.evaluate(line.params, line.buffers)
            for m in metrics:
                values[m].append(on_curve[m])
                values[f"line_{m}"].append(on_line[m])
            bar.update(1)
        grid.write(part, _flag_nonfinite(values))
    bar.close()
    data = grid.read()
    barriers = curve_barriers(ts, {m: data[m] for m in metrics})
    line_barriers = curve_barriers(ts, {m: data[f"line_{m}"] for m in metrics})
    grid.finish(derived={"history": np.asarray(history, dtype=np.float64)},
                attrs={"barriers": barriers, "line_barriers": line_barriers})
    done, nonfinite = grid.done_mask(), grid.nonfinite()
    return {"kind": "connection", "name": name, "curve": curve, "a": a.name, "b": b.name,
            "bn_mode": evaluator.bn_mode, "alphas": ts, **{m: data[m].copy() for m in grid.metrics},
            "barriers": barriers, "line_barriers": line_barriers, "history": history,
            "bend": bend_name if store is not None else None, "control_point": bend,
            "points": int(done.size), "computed_now": int(len(todo)), "diverged": int(nonfinite.sum()),
            "done": done, "nonfinite": nonfinite}


def _flag_nonfinite(values: Mapping[str, list[float]]) -> dict[str, np.ndarray]:
    from landscape.evaluate.engine import flag_nonfinite

    return flag_nonfinite({k: np.asarray(v, dtype=np.float64) for k, v in values.items()})
