"""odeplug's extension contract: what a third party needs to add an engine or an
estimator, in one public module.

Everything here is re-exported from odeplug's private modules (the code lives once,
where odeplug's own engines and estimators use it); this module is the supported way to
reach it, and its names stay stable. Importing it imports no engine (no torch, no jax).

An engine
    A :class:`Backend` subclass with a ``name`` and ``odeint(func, y0, t, args,
    config)`` on its own arrays, returning ``(ys, ODEStats)`` and raising
    :class:`SolverError` with the shared ``reason`` on a failed solve; and, for each
    model family, a program built from a spec by :meth:`Backend.make_program`, which
    implements the family's protocol (:class:`ClassifierProgram`,
    :class:`DensityProgram`, :class:`LatentProgram`, :class:`FlowMatchingProgram`; all
    of them a :class:`TrainingProgram`). Parameters cross the contract as
    ``dict[str, numpy.ndarray]`` of the spec's canonical names and shapes
    (:meth:`ModelSpec.param_table`), data as NumPy arrays, the values of a step or an
    inference as a :class:`Hyper`; inference returns per-row counters
    (:data:`ROW_COUNTERS`) and computes in :data:`INFERENCE_DTYPE`. Register it under
    the entry-point group ``odeplug.backends`` (or :func:`register_backend`), and run
    :mod:`odeplug.testing`'s conformance kit in its tests.

An estimator
    A subclass of :class:`ODEEstimatorBase` (with scikit-learn's mixins) that declares
    its ``_parameter_constraints`` (:data:`COMMON_CONSTRAINTS`, and
    :data:`FIELD_CONSTRAINTS` for the vector field's ``hidden_layer_sizes`` and
    ``activation``: the names every odeplug estimator gives them, docs/architecture.md
    "One vocabulary"), builds its spec (a frozen :class:`ModelSpec` dataclass with a
    ``family``, the ``program`` module and class every engine's floor plan holds, and a
    ``param_table``), and calls the base: ``_fit_transaction(body, ...)`` around a fit,
    ``_start`` and ``_run_training`` inside it (the shared training loop: epochs,
    minibatches, early stopping, divergence), ``_infer(entry, *inputs)`` to call an
    inference entry point with the fitted parameters and the current solver settings.
    Model files save it with no code of its own; ``RENAMED_PARAMS`` and
    ``_upgrade_saved`` read files written before a parameter was renamed.

Examples
--------
A spec's canonical parameters, the same on every engine:

>>> from odeplug.extend import CNFSpec, ModelSpec, Param
>>> spec = CNFSpec(n_features=2, field_hidden=(8,), field_activation="tanh")
>>> isinstance(spec, ModelSpec), spec.param_shapes()["field.0.weight"]
(True, (3, 8))
>>> isinstance(spec.param_table()["field.0.weight"], Param)
True

A program honours its family's protocol on every engine:

>>> import odeplug
>>> from odeplug.extend import DensityProgram
>>> isinstance(odeplug.get_backend("reference").make_program(spec), DensityProgram)
True
"""

from ._flow_matching import FlowMatchingSpec
from ._protocols import (
    INFERENCE_DTYPE,
    ROW_COUNTERS,
    ClassifierProgram,
    DensityProgram,
    FlowMatchingProgram,
    LatentProgram,
    Params,
    RowStats,
    TrainingProgram,
    empty_row_stats,
)
from ._solver_options import ODESolveConfig, ODEStats, make_solve_config
from ._specs import (
    ACTIVATIONS,
    TRACE_ESTIMATORS,
    CNFHyper,
    CNFSpec,
    CNFTrainingSpec,
    Fill,
    GlorotUniform,
    Hyper,
    LatentHyper,
    LatentODESpec,
    ModelSpec,
    Normal,
    ODENetSpec,
    Orthogonal,
    Param,
    Zeros,
    dense_params,
    glorot_factor,
    mlp_params,
)
from .backend import (
    DEVICES,
    Backend,
    BackendInfo,
    available_backends,
    get_backend,
    register_backend,
)
from .estimators._base import COMMON_CONSTRAINTS, FIELD_CONSTRAINTS, ODEEstimatorBase
from .exceptions import (
    BackendNotAvailableError,
    DeviceNotAvailableError,
    SolverError,
    TrainingDivergedError,
)

__all__ = [
    # specs and their parameter tables
    "ACTIVATIONS",
    "TRACE_ESTIMATORS",
    "CNFHyper",
    "CNFSpec",
    "CNFTrainingSpec",
    "FlowMatchingSpec",
    "Fill",
    "GlorotUniform",
    "Hyper",
    "LatentHyper",
    "LatentODESpec",
    "ModelSpec",
    "Normal",
    "ODENetSpec",
    "Orthogonal",
    "Param",
    "Zeros",
    "dense_params",
    "glorot_factor",
    "mlp_params",
    # the program contract
    "INFERENCE_DTYPE",
    "ROW_COUNTERS",
    "ClassifierProgram",
    "DensityProgram",
    "FlowMatchingProgram",
    "LatentProgram",
    "Params",
    "RowStats",
    "TrainingProgram",
    "empty_row_stats",
    # the Backend contract
    "DEVICES",
    "Backend",
    "BackendInfo",
    "ODESolveConfig",
    "ODEStats",
    "available_backends",
    "get_backend",
    "make_solve_config",
    "register_backend",
    # the estimator base
    "COMMON_CONSTRAINTS",
    "FIELD_CONSTRAINTS",
    "ODEEstimatorBase",
    # errors of the contract
    "BackendNotAvailableError",
    "DeviceNotAvailableError",
    "SolverError",
    "TrainingDivergedError",
]
