"""Fused kernels for loss-landscape work: a leaf package that works on tensors only.

Each op has a torch reference (its specification and CPU path) and a Triton kernel (CUDA path)
behind one public function that dispatches by device.
"""
from .ensemble import EnsembleMetrics, ensemble_metrics, ensemble_metrics_reference
from .interpolated import interpolate_weights, interpolated_conv2d, interpolated_linear

__all__ = ["EnsembleMetrics", "ensemble_metrics", "ensemble_metrics_reference", "interpolate_weights",
           "interpolated_conv2d", "interpolated_linear"]
