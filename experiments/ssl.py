"""Self-supervised pre-training of the study's backbone (BYOL, SimCLR), then a linear probe.

`pretrain.objective = "byol" | "simclr"` (embedded and digits data) pre-trains each checkpoint
without labels; `"supervised"` (the default) is the cross-entropy run of experiments.samplers.

- The backbone is the study's model with its linear head (models.head_name: the last nn.Linear)
  replaced by nn.Identity: its output is the head's input, `head.in_features` wide.
- BYOL (Grill et al. 2020): online = backbone + projector + predictor, target = backbone +
  projector, an exponential moving average of the online ones, τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2
  over the run's K steps (τ_base = pretrain.ema). Loss: 2 − 2·cos(q(v1), sg(z'(v2))), symmetrised
  (the sum over both orders of the views); the optimizer sees only the online network.
- SimCLR (Chen et al. 2020): backbone + projector, the NT-Xent loss of the 2N views at
  temperature pretrain.temperature.
- Projector and predictor: Linear → BatchNorm1d → ReLU → Linear, as in the BYOL paper
  (hidden pretrain.hidden_dim, output pretrain.projector_dim).
- Views: augment() on batched tensors, every random draw from the unit's torch.Generator (so a
  run is reproducible bit for bit): a random resized crop (area ≥ augment_crop), a shift of up to
  augment_shift pixels with zero padding, a horizontal flip if augment_flip (off by default: no
  flips for digits), brightness and contrast jitter and Gaussian noise, both relative to each
  image's own std (the embedded images are not in [0, 1], the digits are).
- Optimizer: the [pretrain] recipe's (training.Optim.from_recipe: SGD or AdamW, lr, weight decay,
  warmup) with the study's per-epoch cosine decay (per step after a warmup), its weight decay on
  the weights of 2 or more dimensions only (biases and norm layers spared, as BYOL's and SimCLR's
  optimizers do; pretrain.norm_decay = true decays them too); an epoch is
  ⌊N / batch_size⌋ full batches (BatchNorm and the contrastive loss need whole batches:
  runtime.micro_batch_size does not apply here).

The checkpoint is the model itself: the backbone, with projector, predictor and target dropped,
and as its head a linear probe: a linear classifier fit by L-BFGS (fp64, full batch, from zero:
deterministic) to the frozen backbone's eval-mode features of the source training set, standardised
for conditioning and folded back into the head's weights. The checkpoint's source test accuracy
(experiments.study) is then its linear-probe accuracy.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from landscape.core.errors import LandscapeError

from .accel import amp_dtype
from .data import Task, random_shift
from .models import _set_module, head_name
from .training import (
    CHECK_EVERY,
    Optim,
    TrainingDiverged,
    cosine_factor,
    is_channels_last,
    warmup_cosine_factor,
    warmup_iterations,
)

OBJECTIVES = ("supervised", "byol", "simclr")


# ----------------------------------------------------------------------------------------------
# augmentations


def augment(x: torch.Tensor, g: torch.Generator, *, shift: int = 2, flip: bool = False, crop: float = 1.0,
            brightness: float = 0.0, contrast: float = 0.0, noise: float = 0.0) -> torch.Tensor:
    """One random view of each image of the batch x [N, C, H, W]; all randomness from `g` (a CPU
    generator: the draws are made on the CPU and moved to x's device, so a view is the same on any device).

    crop < 1: a random resized crop of area fraction in [crop, 1] and aspect ratio in [3/4, 4/3],
    resampled bilinearly to H×W; shift: a translation of up to `shift` pixels (zero padding);
    flip: a horizontal flip of half the images; brightness b and contrast c: x ← m + (1 + U(−c, c))·(x − m)
    + U(−b, b)·s, the brightness offset drawn per channel; noise: + noise·s·N(0, 1), with m and s
    each image's mean and std (over all its channels and pixels).
    """
    n, dev = x.shape[0], x.device
    if crop < 1.0:
        area = crop + (1 - crop) * torch.rand(n, generator=g)
        ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(n, generator=g))
        sw, sh = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        # the crop's centre, in [-1, 1] coordinates, so that the crop stays inside the image
        tx, ty = (1 - sw) * (2 * torch.rand(n, generator=g) - 1), (1 - sh) * (2 * torch.rand(n, generator=g) - 1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, tx, sh, ty
        grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = random_shift(x, shift, g, flip)
    if brightness > 0 or contrast > 0 or noise > 0:
        flat = x.flatten(1)
        m = flat.mean(1).view(n, 1, 1, 1)
        s = flat.std(1).clamp_min(1e-6).view(n, 1, 1, 1)
        c = (1 + contrast * (2 * torch.rand(n, generator=g) - 1)).to(dev, x.dtype).view(n, 1, 1, 1)
        # per channel (colour jitter): a view's mean colour must not identify its image (SimCLR's point)
        b = (brightness * (2 * torch.rand(n, x.shape[1], generator=g) - 1)).to(dev, x.dtype).view(n, -1, 1, 1)
        x = m + c * (x - m) + b * s
        if noise > 0:
            x = x + noise * s * torch.randn(x.shape, generator=g).to(dev, x.dtype)
    return x.contiguous()


def augment_options(pre: dict[str, Any]) -> dict[str, Any]:
    """augment()'s keyword arguments from the [pretrain] table."""
    return {"shift": pre["augment_shift"], "flip": pre["augment_flip"], "crop": pre["augment_crop"],
            "brightness": pre["augment_brightness"], "contrast": pre["augment_contrast"],
            "noise": pre["augment_noise"]}


# ----------------------------------------------------------------------------------------------
# networks and losses


def mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """BYOL's projector / predictor: Linear → BatchNorm1d → ReLU → Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def strip_head(model: nn.Module) -> tuple[nn.Module, str, int]:
    """Replace the model's linear head by nn.Identity (in place): (backbone, head name, feature width)."""
    name = head_name(model)
    head = model.get_submodule(name)
    _set_module(model, name, nn.Identity())
    return model, name, head.in_features


class Online(nn.Module):
    """The online network: backbone, projector, and (BYOL only) the predictor."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None) -> None:
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.project(x)
        return self.predictor(z) if self.predictor is not None else z


def make_target(online: Online) -> nn.Module:
    """BYOL's target network: a copy of the online backbone and projector, outside autograd."""
    target = nn.Sequential(copy.deepcopy(online.backbone), copy.deepcopy(online.projector))
    for p in target.parameters():
        p.requires_grad_(False)
    return target


def ema_tau(step: int, total: int, base: float) -> float:
    """BYOL's target decay at step k of K: τ = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2 (τ_base at k = 0, 1 at k = K)."""
    return 1 - (1 - base) * (math.cos(math.pi * step / total) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ_target ← τ·θ_target + (1 − τ)·θ_online, parameter by parameter (the two share an architecture).
    The target keeps its own BatchNorm buffers (it runs in train mode: batch statistics)."""
    for pt, po in zip(target.parameters(), online.parameters(), strict=True):
        pt.mul_(tau).add_(po.detach(), alpha=1 - tau)


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """2 − 2·cos(p, z), averaged over the batch; z is the target's projection (no gradient)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2N views: for each view, −log softmax of its positive (the other view of
    the same image) among the 2N − 1 others, cosine similarities over `temperature`; mean over 2N."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positive)


# ----------------------------------------------------------------------------------------------
# the linear probe


@torch.no_grad()
def features(backbone: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 500) -> torch.Tensor:
    """Eval-mode backbone features of x, fp64 on the CPU."""
    was = backbone.training
    backbone.eval()
    cl = is_channels_last(backbone)
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size].to(device)
        if cl and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        out.append(backbone(xb).double().cpu())
    backbone.train(was)
    return torch.cat(out)


def fit_probe(f: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float = 1e-4,
              max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """A multinomial logistic regression on features f [N, D]: (W [C, D], b [C]) minimising the mean
    cross-entropy + weight_decay/2·‖W‖², by full-batch L-BFGS in fp64 from zero (deterministic).
    The features are standardised for the fit and the result folded back: W·(f − μ)/σ + b."""
    f = f.double()
    mu = f.mean(0)
    sd = f.std(0).clamp_min(1e-8) if f.shape[0] > 1 else torch.ones(f.shape[1], dtype=f.dtype)
    fs = (f - mu) / sd
    w = torch.zeros(num_classes, f.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(fs @ w.t() + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = (w.detach() / sd)
    return w_raw, b.detach() - w_raw @ mu


def put_probe(model: nn.Module, name: str, in_features: int, num_classes: int, w: torch.Tensor,
              b: torch.Tensor, device: torch.device) -> nn.Module:
    """The model's linear head back in place, holding the probe (W, b)."""
    head = nn.Linear(in_features, num_classes).to(device)
    with torch.no_grad():
        head.weight.copy_(w.to(head.weight.dtype))
        head.bias.copy_(b.to(head.bias.dtype))
    _set_module(model, name, head)
    return model


def linear_probe(model: nn.Module, task: Task, device: torch.device, weight_decay: float = 1e-4,
                 batch_size: int = 500) -> nn.Module:
    """Fit the model's head as a linear probe on its frozen features of the task's training set (in
    place: every other weight and buffer untouched); returns the model."""
    backbone, name, dim = strip_head(model)
    train = task.eval_data("train", None)
    f = features(backbone, train.x, device, batch_size)
    w, b = fit_probe(f, train.y.long().cpu(), task.num_classes, weight_decay)
    return put_probe(backbone, name, dim, task.num_classes, w, b, device)


# ----------------------------------------------------------------------------------------------
# the pre-training run


def _epoch_batches(x: torch.Tensor, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled full batches (the last partial batch dropped; one batch of all when
    fewer samples than batch_size)."""
    n = x.shape[0]
    bs = min(batch_size, n)
    perm = torch.randperm(n, generator=g)
    for s in range(0, n - bs + 1, bs):
        yield x[perm[s:s + bs].to(x.device)]


def pretrain(ctx: Any, unit: Any, model: nn.Module, g: torch.Generator) -> nn.Module:
    """Pre-train `model` (the unit's starting point: built with the source task's classes, on the
    device, in train mode) with the study's self-supervised objective, then fit its head as a
    linear probe; returns the model (exactly its own keys: no projector, predictor or target)."""
    pre, task, device = ctx.cfg["pretrain"], ctx.source, ctx.device
    objective = pre["objective"]
    if objective not in ("byol", "simclr"):
        raise AssertionError(objective)  # validated in experiments.config
    x_all = task.eval_data("train", None).x.to(device)  # unaugmented: the views are made here
    if x_all.shape[0] < 2:
        raise LandscapeError(f"config {ctx.cfg.source}: pretrain.objective = {objective!r} needs at least 2 source "
                             "training images (the views of a batch are compared with each other)")
    backbone, name, dim = strip_head(model)
    # the heads' initialisation, like the model's, from the unit's seed (without touching the global RNG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(unit.seed) + 1)
        projector = mlp(dim, pre["hidden_dim"], pre["projector_dim"]).to(device)
        predictor = mlp(pre["projector_dim"], pre["hidden_dim"], pre["projector_dim"]).to(device) \
            if objective == "byol" else None
    online = Online(backbone, projector, predictor).train()
    target = make_target(online).train() if objective == "byol" else None
    recipe = Optim.from_recipe(pre)  # the [pretrain] recipe's optimizer (SGD or AdamW) and warmup
    opt = recipe.make(online, norm_decay=pre["norm_decay"])
    bs = min(pre["batch_size"], x_all.shape[0])
    ipe = x_all.shape[0] // bs
    epochs = int(unit.epochs)
    total = epochs * ipe
    warm = warmup_iterations(recipe.warmup_epochs, ipe, total)
    factor = (lambda i: warmup_cosine_factor(i, warm, total)) if warm else (lambda i: cosine_factor(i // ipe, epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    aug = augment_options(pre)
    dtype = amp_dtype(ctx.runtime()["amp"], device)
    cast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext
    cl = is_channels_last(backbone)
    hooks = ctx.hooks
    if hooks.unit_start:
        hooks.unit_start(unit, model, opt)
    running: torch.Tensor | None = None
    step = 0
    with tqdm(total=epochs, desc=f"  {unit.name} {objective} epochs", unit="ep", leave=False, disable=ctx.quiet,
              dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            for xb in _epoch_batches(x_all, bs, g):
                v1, v2 = augment(xb, g, **aug), augment(xb, g, **aug)
                if cl:
                    v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
                lr = opt.param_groups[0]["lr"]
                if hooks.step is not None:
                    hooks.step(unit, step, lr, model, opt)
                with cast():
                    if target is not None:
                        p1, p2 = online(v1).float(), online(v2).float()
                        with torch.no_grad():
                            z1, z2 = target(v1).float(), target(v2).float()
                        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
                    else:
                        loss = nt_xent(online.project(v1).float(), online.project(v2).float(), pre["temperature"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if target is not None:
                    ema_update(target, nn.Sequential(online.backbone, online.projector),
                               ema_tau(step, total, pre["ema"]))
                step += 1
                value = loss.detach().float()
                running = value.clone() if running is None else running.mul_(0.9).add_(value, alpha=0.1)
                if step % CHECK_EVERY == 0 or step % ipe == 0:
                    r = float(running)
                    if not math.isfinite(r):
                        raise TrainingDiverged(f"config {ctx.cfg.source}, unit {unit.name}: {objective} pre-training "
                                               f"diverged at epoch {epoch + 1} (loss {r}); lower the learning rate "
                                               f"(pretrain.lr; this run's lr {pre['lr']:g})")
            bar.update(1)
            bar.set_postfix(loss=f"{float(running):.3f}", lr=f"{lr:.3g}", refresh=False)
    # only the backbone goes on: projector, predictor and target are dropped here
    w, b = fit_probe(features(backbone, x_all, device, ctx.cfg["study"]["eval_batch_size"]),
                     task.eval_data("train", None).y.long().cpu(), task.num_classes, pre["probe_weight_decay"])
    return put_probe(backbone, name, dim, task.num_classes, w, b, device).train()
