"""Loss-landscape analysis for PyTorch: lines and barriers, planes, ensembles, Hessian spectra and
curves between snapshots, in a store that cannot lose results.

Every subcommand is a function here (`landscape.interpolate`, ..., `landscape.hessian`,
`landscape.connect`, `landscape.export`); the pieces underneath live in one layer per folder
(core, geometry, evaluate, store, analyses: see each folder's docstring and README "Layout")."""
from landscape.core.checkpoints import Snapshot
from landscape.core.data import TensorData, load_data
from landscape.core.errors import LandscapeError
from landscape.core.family import AffineFamily
from landscape.core.models import build_model
from landscape.core.params import ParamLayout, parameters_to_vector, vector_to_model
from landscape.evaluate.engine import Evaluator
from landscape.geometry.directions import pca_directions, plane_through, project, random_direction
from landscape.geometry.lines import barrier, curve_barriers
from landscape.store.refs import load_snapshot
from landscape.store.store import Store

from .api import barriers, connect, ensemble, hessian, info, interpolate, plane, plot, setup
from .exports import export

__all__ = ["AffineFamily", "Evaluator", "LandscapeError", "ParamLayout", "Snapshot", "Store", "TensorData",
           "barrier", "barriers", "build_model", "connect", "curve_barriers", "ensemble", "export", "hessian", "info",
           "interpolate", "load_data", "load_snapshot", "parameters_to_vector", "pca_directions", "plane",
           "plane_through", "plot", "project", "random_direction", "setup", "vector_to_model"]
