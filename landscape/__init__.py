"""Loss-landscape analysis for PyTorch: parameter vectors, directions, lines, barriers, planes, store."""
from .api import barriers, ensemble, export, info, interpolate, plane, plot, setup
from .checkpoints import Snapshot
from .data import TensorData, load_data
from .directions import pca_directions, plane_through, project, random_direction
from .engine import Evaluator
from .family import AffineFamily
from .errors import LandscapeError
from .lines import barrier, curve_barriers
from .models import build_model
from .params import ParamLayout, parameters_to_vector, vector_to_model
from .refs import load_snapshot
from .store import Store

__all__ = ["AffineFamily", "Evaluator", "LandscapeError", "ParamLayout", "Snapshot", "Store", "TensorData",
           "barrier", "barriers", "build_model", "ensemble", "export", "curve_barriers", "info", "interpolate", "load_data",
           "load_snapshot", "parameters_to_vector", "pca_directions", "plane", "plane_through", "plot", "project",
           "random_direction", "setup", "vector_to_model"]
