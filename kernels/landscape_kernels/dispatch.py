"""One rule for every op: run the Triton kernel (CUDA path) or the torch path (CPU path).

    from landscape_kernels.dispatch import use_triton
    if use_triton(x, w, impl=impl):          # impl: None | "auto" | "torch" | "triton"
        ...launch the kernel...
    else:
        ...torch path...

``use_triton(*tensors, impl=None, dtypes=TRITON_DTYPES) -> bool``

* ``impl=None`` (or ``"auto"``) follows the environment variable ``KERNELS_IMPL`` when it is set
  (``torch``, ``triton`` or ``auto``; for tests and benchmarks: ``KERNELS_IMPL=triton`` sends every
  op through its kernel, on CPU tensors too under ``TRITON_INTERPRET=1``), else picks Triton when
  Triton is installed, every tensor is on CUDA and every dtype is in ``dtypes``. From the
  environment, ``triton`` still leaves tensors of other dtypes (fp64) to the torch path.
* ``impl="torch"`` returns False.
* ``impl="triton"`` returns True, or raises when the kernel cannot run: ``TypeError`` for a dtype
  outside ``dtypes``, ``RuntimeError`` when Triton is missing or CPU tensors are given without the
  interpreter. A forced Triton run never falls back silently.
* Any other ``impl`` raises ``ValueError``.

Ops with extra limits (the ensemble kernel's class count, say) check those after this call.
"""
from __future__ import annotations

import os

import torch

try:  # Triton is Linux-only; every torch path works without it.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the platform
    HAS_TRITON = False

__all__ = ["ENV_IMPL", "HAS_TRITON", "TRITON_DTYPES", "interpreting", "use_triton"]

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ENV_IMPL = "KERNELS_IMPL"
_CHOICES = ("auto", "torch", "triton")


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def use_triton(*tensors: torch.Tensor | None, impl: str | None = None,
               dtypes: tuple[torch.dtype, ...] = TRITON_DTYPES) -> bool:
    """Whether an op on these tensors runs its Triton kernel (see the module docstring).

    ``None`` entries in ``tensors`` (absent optional inputs) are ignored.
    """
    ts = [t for t in tensors if t is not None]
    if impl is None or impl == "auto":
        env = os.environ.get(ENV_IMPL, "auto").strip().lower() or "auto"
        if env not in _CHOICES:
            raise ValueError(f"{ENV_IMPL} must be one of {_CHOICES}, got {env!r}")
        if env == "triton" and not all(t.dtype in dtypes for t in ts):
            return False
        impl = env
    if impl not in _CHOICES:
        raise ValueError(f"impl must be 'torch', 'triton', 'auto' or None, got {impl!r}")
    if impl == "torch":
        return False
    if impl == "auto":
        return HAS_TRITON and bool(ts) and all(t.is_cuda and t.dtype in dtypes for t in ts)
    if not HAS_TRITON:
        raise RuntimeError("impl='triton' requested but triton is not installed")
    bad = [t.dtype for t in ts if t.dtype not in dtypes]
    if bad:
        names = "/".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"the Triton path takes {names} tensors, got {bad[0]}")
    if not all(t.is_cuda for t in ts) and not interpreting():
        raise RuntimeError("impl='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
    return True
