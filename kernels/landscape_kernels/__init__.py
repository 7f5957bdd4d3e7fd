"""Fused kernels for loss-landscape work: a leaf package that works on tensors only.

Each op has a torch reference (its specification and CPU path) and a Triton kernel (CUDA path)
behind one public function that dispatches by device (``landscape_kernels.dispatch.use_triton``):

* ``interpolate_weights`` (landscape_kernels/interp_weights.py): θ0 + C·D, the K weight points.
* ``interpolated_linear`` (landscape_kernels/interp_linear.py) and ``interpolated_conv2d``
  (landscape_kernels/interp_conv2d.py): a layer at K weight points W0 + Σ_j c_kj·D_j without
  materialising the K weights; ``precision=`` "exact" | "tf32" | "bf16" (landscape_kernels/launch.py).
* ``ensemble_metrics`` (landscape_kernels/ensemble.py): metrics of every ensemble size in one pass.
"""
from .dispatch import use_triton
from .ensemble import EnsembleMetrics, ensemble_metrics, ensemble_metrics_reference
from .interp_conv2d import interpolated_conv2d
from .interp_linear import interpolated_linear
from .interp_weights import interpolate_weights
from .launch import PRECISIONS, GemmConfig, PointwiseConfig, precision_from_torch_flags

__all__ = ["PRECISIONS", "EnsembleMetrics", "GemmConfig", "PointwiseConfig", "ensemble_metrics",
           "ensemble_metrics_reference", "interpolate_weights", "interpolated_conv2d", "interpolated_linear",
           "precision_from_torch_flags", "use_triton"]
