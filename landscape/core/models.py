"""Model specs: built-in small models, torchvision models, or a user's `module:factory`.

Spec forms
- `small_cnn`, `tiny_cnn`, `mlp`: built-in models (BatchNorm CNNs and a 3-layer MLP) sized from the data.
- `vit` or `vit:patch=4,dim=64,depth=2,heads=2[,mlp=128][,pool=cls|mean]`: a small Vision
  Transformer (patch embedding, pre-norm blocks of multi-head attention and MLP, LayerNorm only).
- `torchvision:NAME`: a torchvision model built without weights (weights come from checkpoints).
- `package.module:factory`: an importable callable returning an `nn.Module`.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import sys
from typing import Sequence

import torch
from torch import nn

from .errors import LandscapeError
from .loader import load_callable
from .validate import bounded_int

# A built-in CNN's width (base channels): 4096 already makes a ~1e9-parameter model.
MAX_WIDTH = 4096


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages and a linear head: ~95k parameters at width 32.

    The default model of the toolkit: it trains in seconds per epoch on a CPU and has
    BatchNorm, so every BN mode is exercised.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w), nn.MaxPool2d(2),
            *_conv_bn(w, 2 * w), nn.MaxPool2d(2),
            *_conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """A 3-layer perceptron on flattened inputs (no BatchNorm)."""

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ViTBlock(nn.Module):
    """A pre-norm Transformer block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer (Dosovitskiy et al.) for small images: non-overlapping patches
    embedded by a strided convolution, a class token (or mean pooling) and learned position
    embeddings, `depth` pre-norm blocks, a final LayerNorm and a linear head. Its layers are
    Linear and LayerNorm (no BatchNorm: `--bn auto` keeps the buffers, there are none)."""

    def __init__(self, image_size: int, in_channels: int = 3, num_classes: int = 10, patch: int = 4, dim: int = 64,
                 depth: int = 2, heads: int = 2, mlp: int | None = None, pool: str = "cls") -> None:
        super().__init__()
        if image_size % patch:
            raise LandscapeError(f"vit: the image size {image_size} is not a multiple of patch={patch}")
        if dim % heads:
            raise LandscapeError(f"vit: dim={dim} is not a multiple of heads={heads}")
        if pool not in ("cls", "mean"):
            raise LandscapeError(f"vit: pool must be cls or mean, got {pool!r}")
        self.pool = pool
        tokens = (image_size // patch) ** 2 + (pool == "cls")
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp or 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, patches, dim]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        return self.head(x[:, 0] if self.cls_token is not None else x.mean(1))


_VIT_KEYS = {"patch": 4, "dim": 64, "depth": 2, "heads": 2, "mlp": None, "pool": "cls"}


def _vit(spec: str, options: str, num_classes: int, input_shape: Sequence[int]) -> nn.Module:
    kw: dict = {}
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if key not in _VIT_KEYS or not eq or not value:
            raise LandscapeError(f"malformed model spec {spec!r}: vit takes {', '.join(_VIT_KEYS)} as key=value "
                                 "(e.g. vit:patch=4,dim=64,depth=2,heads=2)")
        kw[key] = value if key == "pool" else bounded_int(value, f"model spec {spec!r}: {key}", 1, MAX_WIDTH)
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise LandscapeError(f"model spec {spec!r}: a ViT takes square images [C, H, H], the data has "
                             f"{list(input_shape)}")
    return ViT(int(input_shape[1]), int(input_shape[0]), num_classes, **{**_VIT_KEYS, **kw})


def _builtin(name: str, num_classes: int, input_shape: Sequence[int], width: int | None) -> nn.Module:
    if name in ("small_cnn", "tiny_cnn"):
        return SmallCNN(num_classes, in_channels=int(input_shape[0]), width=int(width or _WIDTHS[name]))
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes)
    raise KeyError(name)


BUILTIN_MODELS = ("small_cnn", "tiny_cnn", "mlp", "vit")
_WIDTHS = {"small_cnn": 32, "tiny_cnn": 8}


def build_model(spec: str, num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                width: int | None = None) -> nn.Module:
    """Build a fresh model from a spec. `input_shape` (C, H, W) sizes the built-in models;
    `width` overrides the built-in CNNs' base channel count."""
    if not isinstance(spec, str) or not spec.strip():
        raise LandscapeError("empty model spec")
    spec = spec.strip()
    base, _, options = spec.partition(":")
    if base == "vit":
        if input_shape is None:
            raise LandscapeError(f"built-in model {spec!r} needs data to know its input shape")
        return _vit(spec, options, num_classes or 10, input_shape)
    if base in BUILTIN_MODELS:  # `small_cnn` or `small_cnn:width=12`
        if input_shape is None:
            raise LandscapeError(f"built-in model {spec!r} needs data to know its input shape")
        if options:
            key, eq, value = options.partition("=")
            if key != "width" or not eq or not value.isdigit() or int(value) < 1:
                raise LandscapeError(f"malformed model spec {spec!r}: a built-in model takes only width=N "
                                     f"(e.g. {base}:width=12)")
            width = bounded_int(value, f"model spec {base!r}: width", 1, MAX_WIDTH)
        if width is not None:
            width = bounded_int(width, f"model spec {base!r}: width", 1, MAX_WIDTH)
        return _builtin(base, num_classes or 10, input_shape, width)
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        import torchvision

        try:
            kwargs = {"weights": None}
            if num_classes is not None:
                kwargs["num_classes"] = num_classes
            return torchvision.models.get_model(name, **kwargs)
        except Exception as exc:
            raise LandscapeError(f"model spec {spec!r}: {exc}") from None
    factory = load_callable(spec, "model spec", expected=f"a built-in name ({', '.join(BUILTIN_MODELS)}), "
                                                          "torchvision:NAME or package.module:factory")
    kwargs = {}
    if num_classes is not None:
        try:
            if "num_classes" in inspect.signature(factory).parameters:
                kwargs["num_classes"] = num_classes
        except (TypeError, ValueError):
            pass
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a chatty factory must not break --json's stdout
            model = factory(**kwargs)
    except SystemExit as exc:  # sys.exit() inside the factory: not the end of the command
        raise LandscapeError(f"model spec {spec!r}: the factory exited (SystemExit({exc.code!r})) "
                             "instead of returning a model") from None
    except Exception as exc:  # Ctrl-C and SIGTERM (BaseExceptions) end the command as they should
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise LandscapeError(f"model spec {spec!r}: the factory failed: {text}") from None
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"model spec {spec!r}: the factory returned {type(model).__name__}, not an nn.Module")
    return model

