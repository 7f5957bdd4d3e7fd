"""Model specs: built-in small models, torchvision models, or a user's `module:factory`.

Spec forms
- `small_cnn`, `tiny_cnn`, `mlp`: built-in models (BatchNorm CNNs and a 3-layer MLP) sized from the data.
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


def _builtin(name: str, num_classes: int, input_shape: Sequence[int], width: int | None) -> nn.Module:
    if name in ("small_cnn", "tiny_cnn"):
        return SmallCNN(num_classes, in_channels=int(input_shape[0]), width=int(width or _WIDTHS[name]))
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes)
    raise KeyError(name)


BUILTIN_MODELS = ("small_cnn", "tiny_cnn", "mlp")
_WIDTHS = {"small_cnn": 32, "tiny_cnn": 8}


def build_model(spec: str, num_classes: int | None = None, input_shape: Sequence[int] | None = None,
                width: int | None = None) -> nn.Module:
    """Build a fresh model from a spec. `input_shape` (C, H, W) sizes the built-in models;
    `width` overrides the built-in CNNs' base channel count."""
    if not isinstance(spec, str) or not spec.strip():
        raise LandscapeError("empty model spec")
    spec = spec.strip()
    base, _, options = spec.partition(":")
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

