"""The training loop, the optimizers and the learning-rate schedules of the study.

Recipes (a [finetune] or [pretrain] table, `Optim.from_recipe`): SGD (momentum, coupled weight
decay) or AdamW (betas, decoupled weight decay: torch.optim.AdamW's own), with an optional linear
warmup of the first warmup_epochs.

Schedules (all exact closed forms, applied through torch.optim.lr_scheduler):
- fine-tuning and pre-training: cosine decay per epoch, lr(t) = η·½(1 + cos(π·t/E)), t = 0..E−1;
  with W = round(warmup_epochs × iterations per epoch) > 0 warmup steps, per iteration instead:
  lr(i) = η·(i+1)/W for i < W, then η·½(1 + cos(π·(i−W)/(n−W))) over the other n − W steps;
- an SSE/StarSSE cycle: the same cosine within the cycle, η_c·½(1 + cos(π·t/C)), restarting at η_c
  (every cycle gets a fresh optimizer and scheduler: momentum is cleared at each snapshot; a
  cycle never warms up again: it continues a trained model, it does not start a recipe);
- FGE (Garipov et al. 2018): triangular per iteration between lr1 and lr2 with cycle c
  (iterations): t(i) = ((i mod c) + 1)/c, lr = (1−2t)·lr1 + 2t·lr2 for t ≤ ½ and
  (2−2t)·lr2 + (2t−1)·lr1 after; the minimum lr2 is reached at the middle of each cycle, where a
  snapshot is taken; one optimizer for the whole run (its state carried from segment to segment);
- SWA (Izmailov et al. 2018): torch.optim.swa_utils.SWALR anneals the lr from η to the SWA lr
  over A epochs (cosine, per epoch), lr(e) = swa_lr + (η − swa_lr)·½(1 + cos(π·e/A)) for e < A and
  swa_lr after; AveragedModel averages the weights at the end of epochs A..E−1; update_bn.
With AdamW these schedules set AdamW's lr; the cyclic FGE's momentum cycle sets its beta1.

All randomness of a run (data order, augmentation) comes from one torch.Generator seeded by the
run, so a run repeated from the same starting point gives the same weights bit for bit.

A run whose training loss stops being finite is stopped at once with TrainingDiverged (a
LandscapeError: one line, exit status 2), not carried on to crash in the analysis. The loss is
averaged on the device and read back only every CHECK_EVERY steps and at each epoch's end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from landscape.core.errors import LandscapeError

from .accel import amp_dtype, forward_backward, wants_channels_last
from .data import Task

# Steps between reads of the running loss: often enough to stop a diverged run within a few
# dozen steps, rare enough that the host seldom waits for the device (one sync per CHECK_EVERY steps).
CHECK_EVERY = 32


class TrainingDiverged(LandscapeError):
    """The training loss became nan or inf: the learning rate is too high for this recipe."""


# ----------------------------------------------------------------------------------------------
# schedules


def cosine_factor(t: float, period: float) -> float:
    """½(1 + cos(π·t/period)): 1 at t = 0, decaying towards 0 at t = period."""
    return 0.5 * (1.0 + math.cos(math.pi * t / period))


def fge_lr(iteration: int, lr1: float, lr2: float, cycle: int) -> float:
    """Garipov et al.'s triangular schedule at iteration `iteration` (0-based) of cycle length `cycle`."""
    t = ((iteration % cycle) + 1) / cycle
    if t <= 0.5:
        return (1 - 2 * t) * lr1 + 2 * t * lr2
    return (2 - 2 * t) * lr2 + (2 * t - 1) * lr1


def warmup_cosine_factor(i: int, warmup: int, total: int) -> float:
    """The lr factor at step i of `total`: (i+1)/warmup over the first `warmup` steps (linear from
    ~0 up to 1), then the cosine decay ½(1 + cos(π·(i−warmup)/(total−warmup))) over the rest."""
    if i < warmup:
        return (i + 1) / warmup
    return cosine_factor(i - warmup, total - warmup)


def warmup_iterations(warmup_epochs: float, iters_per_epoch: int, total: int) -> int:
    """Warmup steps: round(warmup_epochs × iterations per epoch), at least 1 when warmup_epochs > 0
    and at most total − 1 (one step of the decay is left)."""
    if warmup_epochs <= 0:
        return 0
    return max(1, min(round(warmup_epochs * iters_per_epoch), total - 1))


def fge_cycle_iterations(cycle_epochs: float, iters_per_epoch: int) -> int:
    """Iterations of one FGE cycle, rounded to an even number (the minimum sits at the middle)."""
    return max(2, 2 * round(cycle_epochs * iters_per_epoch / 2))


def iterations_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


# ----------------------------------------------------------------------------------------------
# hooks


@dataclass
class Hooks:
    """Callbacks into a study (tests use them to observe and to interrupt).

    unit_start(unit, model, optimizer): a training run starts (after its starting point is loaded).
    step(unit, iteration, lr, model, optimizer): before each optimizer step.
    unit_done(unit_name): a unit's snapshot and predictions are safely in the store.
    """

    unit_start: Callable[..., Any] | None = None
    step: Callable[..., Any] | None = None
    unit_done: Callable[..., Any] | None = None


@dataclass
class Optim:
    """A recipe's optimizer: SGD (momentum, weight decay added to the gradient) or AdamW (betas,
    decoupled weight decay), and its warmup (applied by the runs that start a recipe: pre-training,
    fine-tuning, the from-scratch baseline)."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 32
    nesterov: bool = False
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = 0.0

    @classmethod
    def from_recipe(cls, table: dict[str, Any], lr: float | None = None) -> Optim:
        """The optimizer of a validated [finetune] or [pretrain] table (experiments.config)."""
        kind = table.get("optimizer", "sgd")
        return cls(table["lr"] if lr is None else lr, table["momentum"] if kind == "sgd" else 0.0,
                   table["weight_decay"], table["batch_size"], optimizer=kind,
                   betas=tuple(table.get("betas") or (0.9, 0.999)), warmup_epochs=table.get("warmup_epochs", 0.0))

    @property
    def first_moment(self) -> float:
        """SGD's momentum, AdamW's beta1: what a momentum cycle (CyclicLR) varies."""
        return self.betas[0] if self.optimizer == "adamw" else self.momentum

    def make(self, model: nn.Module, lr: float | None = None, norm_decay: bool = True) -> torch.optim.Optimizer:
        """A fresh optimizer: no state carried from anything before. norm_decay=False leaves the
        parameters with fewer than 2 dimensions (biases, BatchNorm/LayerNorm scales and shifts) out
        of the weight decay, as BYOL's and SimCLR's optimizers do: under a scale-invariant loss the
        decay would otherwise shrink them towards zero, and with them the features."""
        lr = self.lr if lr is None else lr
        params: Any = model.parameters()
        if not norm_decay:
            ps = list(model.parameters())
            params = [{"params": [p for p in ps if p.ndim >= 2]},
                      {"params": [p for p in ps if p.ndim < 2], "weight_decay": 0.0}]
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=lr, betas=tuple(self.betas), weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.nesterov)


def optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as {"KEY/PARAM NAME": tensor} (SGD: momentum_buffer;
    AdamW: step, exp_avg, exp_avg_sq), detached CPU copies in the parameters' logical layout."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for p, st in optimizer.state.items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"{key}/{names[id(p)]}"] = v.detach().cpu().contiguous().clone()
    return out


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, state: dict[str, torch.Tensor],
                         what: str) -> None:
    """Put `optimizer_state`'s output back into a fresh optimizer over the same model, checking
    every tensor against its parameter (a damaged or foreign state is refused in one line)."""
    params = dict(model.named_parameters())
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for full, v in state.items():
        key, _, name = full.partition("/")
        p = params.get(name)
        if p is None or not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise LandscapeError(f"{what}: optimizer state {full!r} does not belong to this model")
        if key == "step":
            if v.numel() != 1:
                raise LandscapeError(f"{what}: optimizer state {full!r} is not one step count")
            by_param.setdefault(name, {})[key] = v.detach().reshape(()).clone()
            continue
        if tuple(v.shape) != tuple(p.shape):
            raise LandscapeError(f"{what}: optimizer state {full!r} has shape {list(v.shape)}, its parameter "
                                 f"{list(p.shape)}")
        by_param.setdefault(name, {})[key] = torch.empty_like(p).copy_(v)
    for name, st in by_param.items():
        optimizer.state[params[name]] = st


@dataclass
class RunInfo:
    """What a training run did: iterations, final running loss, and the lrs it used per iteration."""

    iterations: int = 0
    loss: float = float("nan")
    lrs: list[float] = field(default_factory=list)


def _batches(task: Task, batch_size: int, g: torch.Generator, device: torch.device) -> Iterator[tuple[int, Any]]:
    """An endless stream of (epoch, batch): epoch after epoch of shuffled, augmented batches."""
    epoch = 0
    while True:
        for batch in task.train_batches(batch_size, g, device):
            yield epoch, batch
        epoch += 1


def train(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, *, iterations: int, batch_size: int,
          generator: torch.Generator, device: torch.device, per_iteration: Callable[[int], float] | None = None,
          epoch_end: Callable[[int], None] | None = None, hooks: Hooks | None = None, unit: Any = None,
          scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
          bar: tqdm | None = None, iters_per_epoch: int | None = None, what: str | None = None,
          hint: str = "", amp: str = "off", micro_batch_size: int | None = None) -> RunInfo:
    """Run `iterations` SGD steps of cross-entropy on the task's training batches.

    per_iteration(i) -> lr factor: applied through a LambdaLR stepped after every iteration
    (base lr = the optimizer's lr); or `scheduler`, any torch scheduler stepped after every
    iteration (the cyclic FGE's CyclicLR). epoch_end(e): called after each complete epoch (SWA uses it).
    Raises TrainingDiverged("WHAT: training diverged at epoch E (loss nan); lower the learning
    rate HINT") within CHECK_EVERY steps of the loss becoming non-finite; `what` defaults to the
    unit's name.
    amp ("off" | "auto" | "bf16") and micro_batch_size: the study's [runtime] table (see
    experiments.accel): bf16 autocast of the forward passes with fp32 weights, and gradient
    accumulation over micro-batches of at most micro_batch_size samples. The defaults are the
    plain fp32 full-batch step.
    """

    dtype = amp_dtype(amp, device)
    info = RunInfo()
    if scheduler is None and per_iteration is not None:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, per_iteration)
    ipe = iters_per_epoch or iterations_per_epoch(task.train_size(), batch_size)
    model.train()
    running: torch.Tensor | None = None  # an exponential average of the loss, kept on the device
    value = float("nan")
    stream = _batches(task, batch_size, generator, device)
    channels_last = is_channels_last(model)
    for i in range(iterations):
        _, (x, y) = next(stream)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = optimizer.param_groups[0]["lr"]
        info.lrs.append(lr)
        if hooks is not None and hooks.step is not None:
            hooks.step(unit, i, lr, model, optimizer)
        if dtype is None and not (micro_batch_size and micro_batch_size < x.shape[0]):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            loss = forward_backward(model, x, y, optimizer, dtype, device, micro_batch_size)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        # nan and inf persist in the average, so a read every few steps sees any step that diverged.
        step_loss = loss.detach().float()
        running = step_loss.clone() if running is None else running.mul_(0.9).add_(step_loss, alpha=0.1)
        epoch_done = (i + 1) % ipe == 0
        if epoch_done or (i + 1) % CHECK_EVERY == 0 or i + 1 == iterations:
            value = float(running)
            if not math.isfinite(value):
                raise TrainingDiverged(f"{_describe(unit, what)}: training diverged at epoch {i // ipe + 1} "
                                       f"(loss {value}); lower the learning rate{hint and ' ' + hint}")
        if epoch_done:
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.3g}", refresh=False)
            if epoch_end is not None:
                epoch_end((i + 1) // ipe - 1)
    if bar is not None and iterations % ipe:
        bar.update(1)
    info.iterations = iterations
    info.loss = value
    return info


def _describe(unit: Any, what: str | None) -> str:
    if what:
        return what
    name = getattr(unit, "name", unit)
    return f"unit {name}" if name is not None else "training"


def is_channels_last(model: nn.Module) -> bool:
    w = next((m.weight for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return w is not None and w.ndim == 4 and w.is_contiguous(memory_format=torch.channels_last) \
        and not w.is_contiguous()


def to_fast_layout(model: nn.Module, device: torch.device, channels_last: bool | str = "auto") -> nn.Module:
    """channels_last for convolutional models (measured on the CPU: ~1.3-1.6x faster training;
    on CUDA it feeds cuDNN's NHWC tensor-core kernels). channels_last: "auto" (conv models on the
    CPU and CUDA), True (any conv model) or False (never): the study's runtime.channels_last."""

    if wants_channels_last(channels_last, model, device):
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(model: nn.Module, task: Task, device: torch.device, batch_size: int = 500,
            split: str = "test") -> torch.Tensor:
    """Logits [N, C] of a split ("test" or "val") in eval mode (the model's own BN buffers), fp32 on the CPU."""
    model.eval()
    cl = is_channels_last(model)
    out = [model(x.contiguous(memory_format=torch.channels_last) if cl and x.ndim == 4 else x).float().cpu()
           for x, _ in task.eval_batches(split, batch_size, device)]
    model.train()
    return torch.cat(out)


def logits_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"test_acc": float((logits.argmax(1) == labels).double().mean()),
            "test_loss": float(F.cross_entropy(logits.double(), labels))}
