"""odeplug: Neural ODEs as scikit-learn estimators, on NumPy, PyTorch or JAX.

The public API is re-exported here from private modules.
"""

from . import layers
from ._config import config_context, get_config, set_config
from ._constant import Constant
from ._odeint import odeint, odeint_rows
from ._persistence import ModelFileError, load, save
from ._solver_options import (
    ADAPTIVE_SOLVERS,
    FIXED_STEP_SOLVERS,
    SOLVERS,
    BacksolveAdjoint,
    ODESolveConfig,
    ODEStats,
    make_solve_config,
)
from ._user_field import UserField
from .backend import Backend, BackendInfo, available_backends, get_backend, register_backend
from .estimators import CNFDensity, LatentODERegressor, ODEClassifier
from .exceptions import (
    BackendNotAvailableError,
    DeviceNotAvailableError,
    SolverError,
    TrainingDivergedError,
)

__version__ = "0.1.0"

__all__ = [
    "ADAPTIVE_SOLVERS",
    "FIXED_STEP_SOLVERS",
    "SOLVERS",
    "Backend",
    "BackendInfo",
    "BackendNotAvailableError",
    "BacksolveAdjoint",
    "CNFDensity",
    "Constant",
    "DeviceNotAvailableError",
    "LatentODERegressor",
    "ModelFileError",
    "ODEClassifier",
    "ODESolveConfig",
    "ODEStats",
    "SolverError",
    "TrainingDivergedError",
    "UserField",
    "available_backends",
    "config_context",
    "get_backend",
    "get_config",
    "layers",
    "load",
    "make_solve_config",
    "odeint",
    "odeint_rows",
    "register_backend",
    "save",
    "set_config",
]
