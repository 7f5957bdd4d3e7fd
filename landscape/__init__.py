"""Loss-landscape analysis for PyTorch: lines and barriers, planes, ensembles, Hessian spectra and
curves between snapshots, in a store that cannot lose results.

Every subcommand is a function here (`landscape.interpolate`, ..., `landscape.hessian`,
`landscape.connect`, `landscape.export`), returning a typed result (`landscape.LineResult`, ...:
`landscape.results`, whose `to_dict()` is what `--json` prints); the pieces underneath live in one layer per folder
(core, geometry, evaluate, store, analyses: see each folder's docstring and README "Layout").

The names are imported on first use (PEP 562), so `python -m landscape` and the `landscape`
command start without importing torch before they can handle Ctrl-C (see `landscape.launch`)."""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "Snapshot": "landscape.core.checkpoints",
    "TensorData": "landscape.core.data", "load_data": "landscape.core.data",
    "LandscapeError": "landscape.core.errors",
    "AffineFamily": "landscape.core.family",
    "build_model": "landscape.core.models",
    "ParamLayout": "landscape.core.params", "parameters_to_vector": "landscape.core.params",
    "vector_to_model": "landscape.core.params",
    "Evaluator": "landscape.evaluate.engine",
    "pca_directions": "landscape.geometry.directions", "plane_through": "landscape.geometry.directions",
    "project": "landscape.geometry.directions", "random_direction": "landscape.geometry.directions",
    "barrier": "landscape.geometry.lines", "curve_barriers": "landscape.geometry.lines",
    "load_snapshot": "landscape.store.refs",
    "Store": "landscape.store.store",
    **{name: "landscape.api" for name in ("align", "barriers", "connect", "ensemble", "hessian", "info",
                                           "interpolate", "plane", "plot", "setup")},
    "export": "landscape.exports",
    **{name: "landscape.results" for name in ("AlignResult", "Barrier", "BarrierMatrixResult", "ConnectResult",
                                               "Density", "EnsembleResult", "HessianLineResult", "HessianResult",
                                               "HessiansResult", "InfoResult", "LineResult", "PlaneResult",
                                               "PlotResult", "Projection")},
    "Trajectory": "landscape.trajectory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
