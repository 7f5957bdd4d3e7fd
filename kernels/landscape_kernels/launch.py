"""Launch configurations and matmul precision shared by the interpolated-weight kernels.

Launch configurations
---------------------
On a GPU the GEMM-shaped kernels are autotuned over ``LINEAR_CONFIGS`` (interpolated linear) and
``CONV2D_CONFIGS`` (interpolated conv2d), the weight-interpolation kernel over
``POINTWISE_CONFIGS``, keyed on the shapes (``@triton.autotune``). The Triton interpreter cannot autotune (that needs a GPU), so it
runs one configuration, ``INTERPRETER_GEMM`` / ``INTERPRETER_POINTWISE``: tiles no larger than
the GPU's, so that a test on a shape a few tiles wide runs several programs on every grid axis
and several passes of every reduction loop, as the GPU does. Every launcher also takes an
explicit ``config=`` (tests force each GPU configuration's tiles through it; benchmarks compare
configurations). ``KERNELS_AUTOTUNE=0`` replaces autotuning on a GPU by each list's first
configuration (the GPU test run of benchmarks/gpu_check.py: compiling every configuration of
every test shape would take minutes).

GEMM programs are ordered in groups of ``group_m`` row tiles ("grouped ordering"): programs
that run together share weight tiles and input rows in L2.

Precision (the ``precision=`` argument of the ops)
--------------------------------------------------
Every product accumulates in fp32. Each weight tile W0 + Σ_j c_kj·D_j is formed in fp32 and then
cast to the operand dtype of ``tl.dot``:

===========  ==============================  ===========================================
precision    fp32 inputs                     fp16 / bf16 inputs
===========  ==============================  ===========================================
``exact``    fp32 operands, ``ieee``         fp32 operands (the weight tile is not rounded)
``tf32``     fp32 operands, TF32 tensor      operands in the input dtype (tensor cores; the
             cores                           weight tile rounded to it, as a model of that
                                             dtype holds its weights)
``bf16``     bf16 operands (tensor cores)    bf16 operands
===========  ==============================  ===========================================

``exact`` is the default. The torch (CPU) path rounds the same operands to the same dtype
(round to nearest even) and then computes in fp32 (fp64 for fp64 inputs), so CPU and GPU agree
to the accumulation order; TF32 has no CPU counterpart, so there ``tf32`` computes fp32 products
(strictly more accurate). ``precision_from_torch_flags()`` maps torch's own switch
(``torch.backends.cuda.matmul.allow_tf32``) to ``tf32`` or ``exact``.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from .dispatch import interpreting

__all__ = [
    "CONV2D_CONFIGS",
    "GEMM_CONFIGS",
    "INTERPRETER_GEMM",
    "LINEAR_CONFIGS",
    "INTERPRETER_POINTWISE",
    "POINTWISE_CONFIGS",
    "PRECISIONS",
    "GemmConfig",
    "PointwiseConfig",
    "autotune_enabled",
    "check_precision",
    "choose_launch",
    "dot_mode",
    "operand_dtype",
    "precision_from_torch_flags",
]

PRECISIONS = ("exact", "tf32", "bf16")
# Largest grid along axes 1 and 2 (CUDA); axis 0 takes 2**31 - 1.
MAX_GRID_YZ = 65535


@dataclass(frozen=True)
class GemmConfig:
    """Tiles of a GEMM-shaped kernel: rows (block_m) x output columns (block_n), reduction step
    block_k; group_m row tiles per program group; warps and software-pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16 (tl.dot), got {v}")
        if self.group_m < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"group_m, num_warps and num_stages must be >= 1: {self}")

    def meta(self) -> dict[str, int]:
        """The kernel's constexpr tile arguments."""
        return {"BLOCK_M": self.block_m, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k, "GROUP_M": self.group_m}

    def launch(self) -> dict[str, int]:
        """meta() plus num_warps and num_stages: keyword arguments of a kernel launch."""
        return {**self.meta(), "num_warps": self.num_warps, "num_stages": self.num_stages}

    def triton_config(self):
        import triton

        return triton.Config(self.meta(), num_warps=self.num_warps, num_stages=self.num_stages)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class PointwiseConfig:
    """Elements per program of the weight-interpolation kernel, and warps."""

    block_p: int
    num_warps: int = 4

    def __post_init__(self) -> None:
        if self.block_p < 16 or self.block_p & (self.block_p - 1):
            raise ValueError(f"block_p must be a power of two >= 16, got {self.block_p}")

    def meta(self) -> dict[str, int]:
        return {"BLOCK_P": self.block_p}

    def launch(self) -> dict[str, int]:
        return {**self.meta(), "num_warps": self.num_warps}

    def triton_config(self):
        import triton

        return triton.Config(self.meta(), num_warps=self.num_warps, num_stages=1)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# GPU autotuning sets: small enough that a new shape is tuned in well under a second per kernel.
# The ahead-of-time compile test (tests/test_kernel_aot.py) reports registers, spills and shared
# memory of each for sm_80 and sm_90: 128-wide tiles take 8 warps (with 4 they spill), and the
# convolution, whose implicit-GEMM addressing needs more registers, has no 128x128 tile (it
# spills 0.4-0.9 KB per thread on both architectures) and more warps per tile.
LINEAR_CONFIGS: tuple[GemmConfig, ...] = (
    GemmConfig(64, 64, 32, group_m=8, num_warps=4, num_stages=3),
    GemmConfig(128, 64, 32, group_m=8, num_warps=8, num_stages=3),
    GemmConfig(64, 128, 32, group_m=8, num_warps=8, num_stages=3),
    GemmConfig(128, 128, 32, group_m=8, num_warps=8, num_stages=3),
    GemmConfig(32, 32, 32, group_m=8, num_warps=2, num_stages=4),  # narrow layers, classifier heads
)
CONV2D_CONFIGS: tuple[GemmConfig, ...] = (
    GemmConfig(64, 64, 32, group_m=8, num_warps=4, num_stages=3),
    GemmConfig(64, 64, 32, group_m=8, num_warps=8, num_stages=3),
    GemmConfig(128, 64, 32, group_m=8, num_warps=8, num_stages=3),
    GemmConfig(64, 128, 32, group_m=8, num_warps=8, num_stages=3),
    GemmConfig(32, 32, 32, group_m=8, num_warps=4, num_stages=3),
)
GEMM_CONFIGS: tuple[GemmConfig, ...] = tuple(dict.fromkeys(LINEAR_CONFIGS + CONV2D_CONFIGS))  # all of them
POINTWISE_CONFIGS: tuple[PointwiseConfig, ...] = (
    PointwiseConfig(1024, num_warps=4),
    PointwiseConfig(4096, num_warps=8),
)
# The interpreter's single configuration: the smallest GPU tiles, so ordinary test shapes already
# span several programs and reduction steps.
INTERPRETER_GEMM = GemmConfig(32, 32, 32, group_m=8, num_warps=2, num_stages=4)
INTERPRETER_POINTWISE = PointwiseConfig(1024, num_warps=4)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def precision_from_torch_flags() -> str:
    """``"tf32"`` when torch lets CUDA matmuls use TF32 (torch.backends.cuda.matmul.allow_tf32),
    else ``"exact"``."""
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "exact"


def operand_dtype(precision: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype the matmul operands are rounded to for inputs of ``dtype``, or None when they
    are not rounded (fp32 products; TF32 on a GPU for ``tf32`` with fp32 inputs)."""
    check_precision(precision)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "tf32" and dtype in (torch.float16, torch.bfloat16):
        return dtype
    return None


def dot_mode(precision: str, dtype: torch.dtype, interpret: bool) -> str:
    """The kernels' DOT constexpr: "ieee", "tf32", "fp16", "bf16", or "bf16_rounded" (the
    interpreter's stand-in for bf16: its bf16 tl.dot returns garbage and its fp32->bf16 cast
    truncates, so operands are rounded to nearest bf16 by bit arithmetic and multiplied in fp32,
    which is exact for bf16 values)."""
    op = operand_dtype(precision, dtype)
    if op is None:
        return "tf32" if precision == "tf32" else "ieee"
    if op == torch.float16:
        return "fp16"
    return "bf16_rounded" if interpret else "bf16"


def autotune_enabled() -> bool:
    return os.environ.get("KERNELS_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


def choose_launch(config: GemmConfig | PointwiseConfig | None, configs: tuple, interpreter_default,
                  kernel: Any, autotuned: Callable[[], Any]) -> tuple[Any, dict[str, int]]:
    """(kernel object, launch keyword arguments): the forced `config`; else the interpreter's
    single configuration; else the autotuner (or `configs[0]` with KERNELS_AUTOTUNE=0)."""
    if config is not None:
        return kernel, config.launch()
    if interpreting():
        return kernel, interpreter_default.launch()
    if autotune_enabled():
        return autotuned(), {}
    return kernel, configs[0].launch()
