"""What every odeplug estimator shares: declarative parameter checks, the engine and the
solver read at call time, thread limits, one training path and one inference path, and
fits that never lose a model.

A family's estimator defines the spec of its data (``_spec``), the values of its steps
(``_hyper``), the arrays of a fit, and its public methods; the base does the rest:

* ``_fit_transaction(body, ...)`` runs a fit so that a failure leaves the estimator as it
  was (bad input, Ctrl-C before any epoch completed, an error of the engine), or, after
  divergence, with parameters that predict;
* ``_run_training(...)`` builds or reuses the engine's training state, runs the shared
  loop (:func:`odeplug._training.train`) and stores the fitted attributes;
* ``_infer(entry, *inputs)`` calls one inference entry point of the engine's program
  with the fitted parameters and the current solver settings;
* ``__sklearn_clone__`` and ``__getstate__`` carry the caller's odeplug settings to the
  joblib workers that meta-estimators send clones to, and keep them out of fitted models
  (:mod:`odeplug._parallel`); fits (``_fit_transaction``) and inference (``_infer``, or
  ``with self._running() as engine:`` for a block of program calls) run under them.

Model files (:mod:`odeplug._persistence`) save ``get_params()`` and what ``__getstate__``
returns, so a family's fitted attributes need no code of their own to be saved, only
values of the file format's allow-list.

Devices. Every estimator declares the parameter ``device`` (validated by the common
constraints) and has no device code of its own: training
(:meth:`_run_training`) and inference (:meth:`_infer`, :meth:`_running`) run every
program call inside the engine's ``device_scope``; parameters cross the program contract
as NumPy arrays, so a model fitted on a GPU predicts on a CPU-only machine, and model
files hold no device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import warnings
from collections.abc import Iterator
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from .._config import resolve_backend_name
from .._parallel import CARRIED_ATTRIBUTE, applied, carried_for_clone
from .._solver_options import SOLVERS, BacksolveAdjoint, ODESolveConfig, make_solve_config
from .._specs import ACTIVATIONS, Hyper, ModelSpec
from .._threads import limit_threads
from .._training import LEARNING_RATE_SCHEDULES, TrainingHistory, train
from ..backend import DEVICES, Backend, get_backend
from ..exceptions import TrainingDivergedError
from ._sklearn_compat import Interval, StrOptions, validate_params

__all__ = ["COMMON_CONSTRAINTS", "DEFAULT_DEVICE", "FIELD_CONSTRAINTS", "ODEEstimatorBase"]

# The CPU unless asked: the same fit on every machine for a given random_state (GPU
# kernels round differently), joblib workers of a grid search do not share one GPU behind
# the user's back, and the small fields these estimators default to gain little from a
# GPU (docs/gpus.md).
DEFAULT_DEVICE = "cpu"

# Parameters every estimator has (the engine, the solver, the training), with
# scikit-learn's constraints; each family adds those of its model.
COMMON_CONSTRAINTS: dict[str, list] = {
    "backend": [None, str],
    "device": [StrOptions(set(DEVICES))],
    "t1": [Interval(Real, 0, None, closed="neither")],
    "solver": [StrOptions(set(SOLVERS))],
    "rtol": [Interval(Real, 0, None, closed="neither")],
    "atol": [Interval(Real, 0, None, closed="neither")],
    "step_size": [None, Interval(Real, 0, None, closed="neither")],
    "adjoint": ["boolean", BacksolveAdjoint],
    "max_num_steps": [Interval(Integral, 1, None, closed="left")],
    "alpha": [Interval(Real, 0, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "learning_rate": [StrOptions(set(LEARNING_RATE_SCHEDULES))],
    "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "tol": [Interval(Real, 0, None, closed="left")],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
}


# The vector field's parameters, the same names in every estimator (docs/architecture.md,
# "One vocabulary"): unprefixed names are the field's, a part's prefix names another part
# (embedding_activation, encoder_hidden_sizes, ...).
FIELD_CONSTRAINTS: dict[str, list] = {
    "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    "activation": [StrOptions(set(ACTIVATIONS))],
}


class ODEEstimatorBase(BaseEstimator):
    """Shared machinery; subclasses define the spec, the hyperparameters and the data."""

    _parameter_constraints: dict = COMMON_CONSTRAINTS

    # ------------------------------------------------------------- parameters

    @staticmethod
    def _positive_sizes(name: str, sizes) -> tuple[int, ...]:
        """Layer widths from an int or a sequence of positive ints (``ValueError``
        naming ``name`` otherwise)."""
        given = sizes
        sizes = (sizes,) if isinstance(sizes, numbers.Integral) else tuple(sizes)
        if not sizes or any(isinstance(s, bool) or not isinstance(s, numbers.Integral)
                            or s < 1 for s in sizes):
            raise ValueError(f"{name} must be positive ints, got {given!r}")
        return tuple(int(s) for s in sizes)

    def _input_shape(self, n_features: int) -> tuple[int, ...] | None:
        """``input_shape`` checked against the rows of ``X`` (None: flat rows)."""
        if self.input_shape is None:
            return None
        shape = self._positive_sizes("input_shape", self.input_shape)
        if int(np.prod(shape)) != n_features:
            raise ValueError(f"input_shape {shape} has {int(np.prod(shape))} entries, but "
                             f"X has {n_features} features")
        return shape
    @classmethod
    def _hidden_sizes(cls, sizes, name: str = "hidden_layer_sizes") -> tuple[int, ...]:
        """Hidden layer widths: as :meth:`_positive_sizes`, and an empty sequence (no
        hidden layer: a linear map) too."""
        if isinstance(sizes, (tuple, list)) and len(sizes) == 0:
            return ()
        return cls._positive_sizes(name, sizes)

    def _solve_config(self) -> ODESolveConfig:
        """Solver settings, read anew at every call (so set_params(rtol=...) after fit
        changes inference)."""
        return make_solve_config(
            solver=self.solver, rtol=self.rtol, atol=self.atol, step_size=self.step_size,
            adjoint=self.adjoint, max_num_steps=self.max_num_steps)

    def _hyper(self, **values) -> Hyper:
        """The values of a training step. Subclasses with more (regulariser weights)
        override it; ``values`` overrides fields (inference passes the fitted ones)."""
        hyper = Hyper(solve=self._solve_config(), t1=float(self.t1),
                      learning_rate=float(self.learning_rate_init), alpha=float(self.alpha))
        return dataclasses.replace(hyper, **values)

    def _engine(self) -> Backend:
        """The engine named by ``backend``, else the configuration, read at call time
        (in a worker, under the settings carried there: every path that asks for the
        engine gets the caller's, and a JAX engine made here gets the caller's cache).
        Its ``device`` is checked here, before anything is built: ``device="cuda"``
        where the engine sees no GPU raises ``DeviceNotAvailableError``."""
        with applied(getattr(self, CARRIED_ATTRIBUTE, None)):
            engine = get_backend(resolve_backend_name(self.backend))
        engine.resolve_device(self.device)
        return engine

    def _device_scope(self, engine: Backend) -> contextlib.AbstractContextManager:
        """The engine's device scope of ``device`` (read at call time)."""
        return engine.device_scope(engine.resolve_device(self.device))

    def _batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        return min(int(self.batch_size), n_samples)

    # --------------------------------------------------------------- fitting

    def _fit_transaction(self, body, *args, **kwargs):
        """Run a fit so that nothing is lost.

        ``body`` validates the data and ends with :meth:`_run_training`. On any error,
        the estimator is restored as it was before the call, except when a fresh fit
        diverged after verified steps: then it keeps those parameters (the error says
        so). Warnings about the outcome (not converged, interrupted) point to the
        caller of ``fit``.
        """
        validate_params(self)
        before = dict(self.__dict__)
        if isinstance(before.get("_history"), TrainingHistory):
            before["_history"] = before["_history"].copy()
        try:
            with applied(getattr(self, CARRIED_ATTRIBUTE, None)):
                outcome = body(*args, **kwargs)
        except BaseException as error:
            if getattr(error, "keeps_fit", False):
                raise
            self.__dict__.clear()
            self.__dict__.update(before)
            if before.get("_train_state") is not None:
                # Updated in place by the failed run: it no longer matches the
                # restored parameters.
                self._train_state = None
            raise
        if outcome.interrupted:
            warnings.warn(outcome.interrupted, UserWarning, stacklevel=3)
        elif not outcome.converged and not kwargs.get("incremental", False):
            warnings.warn(
                f"{type(self).__name__}: Maximum iterations ({self.max_iter}) reached and "
                "the optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        return self

    def _start(self, engine: Backend, spec: ModelSpec, *, first_call: bool, seed: int):
        """Initial parameters and history of a fit: fresh ones on a first call, the
        fitted ones to continue (``warm_start``, ``partial_fit``)."""
        if first_call:
            self._train_state = None
            return spec.init_params(seed), TrainingHistory()
        if self._spec != spec:
            raise ValueError(
                "the architecture parameters changed since the model was fitted; refit it "
                "(warm_start=False) or restore them")
        if self.backend_ != engine.name:
            self._train_state = None  # optimiser moments of another engine
        params = {k: np.asarray(v, dtype=spec.dtype) for k, v in self.params_.items()}
        return params, self._history

    def _run_training(self, engine: Backend, spec: ModelSpec, params: dict[str, np.ndarray],
                      arrays: tuple[np.ndarray, ...], *, rng, history: TrainingHistory,
                      continuing: bool, max_iter: int, validation_score=None,
                      draw_noise=None, hyper=None, prepare_batch=None, program=None,
                      warmup_epochs=0):
        """Build or reuse the engine's training state, run the loop, store the result.

        The engine state (optimiser moments) is kept in ``_train_state`` so that
        ``partial_fit`` and ``warm_start`` continue where they stopped. ``program``: the
        training program, when it is not ``spec``'s own (flow matching trains a CNF's
        parameters, in the CNF's training state, by another objective); the fitted model
        is ``spec``'s either way.
        """
        program = engine.make_program(spec) if program is None else program
        device = engine.resolve_device(self.device)
        cached = getattr(self, "_train_state", None)
        key = (engine.name, device, spec)
        try:
            with limit_threads(engine), engine.device_scope(device):
                # A state of another device (set_params(device=...) between calls to
                # partial_fit) starts afresh from the parameters, as after loading.
                state = cached[1] if cached is not None and cached[0] == key \
                    else program.init(params)
                outcome = train(
                    program, state, arrays, history, hyper or self._hyper(),
                    max_iter=max_iter, batch_size=self._batch_size(arrays[0].shape[0]),
                    rng=rng, tol=float(self.tol), n_iter_no_change=int(self.n_iter_no_change),
                    learning_rate=self.learning_rate,
                    validation_score=validation_score, draw_noise=draw_noise,
                    prepare_batch=prepare_batch, verbose=int(self.verbose),
                    desc=type(self).__name__, warmup_epochs=warmup_epochs)
        except TrainingDivergedError as error:
            if continuing:
                raise TrainingDivergedError(
                    f"{error} The estimator keeps its fit from before this call.",
                    epoch=error.epoch, params=error.params) from error
            if error.params is None:
                # _fit_transaction restores the estimator as it was: say what that is.
                outcome = ("it keeps its fit from before this call"
                           if hasattr(self, "params_") else "it stays unfitted")
                raise TrainingDivergedError(
                    f"{error} No step was sane: {outcome}.", epoch=error.epoch) from error
            self._store_fit(engine, spec, history, error.params)
            self._train_state = None
            kept = TrainingDivergedError(
                f"{error} The estimator keeps the last parameters whose training loss was "
                f"finite ({history.n_iter} completed epoch(s)).", epoch=error.epoch,
                params=error.params)
            kept.keeps_fit = True
            raise kept from error
        # A state that has moved on from the parameters kept (early stopping's best
        # epoch, Ctrl-C) is dropped: the next warm start continues from params_.
        self._train_state = (key, outcome.state) if outcome.resumable else None
        self._store_fit(engine, spec, history, outcome.params)
        return outcome

    def _store_fit(self, engine: Backend, spec: ModelSpec, history: TrainingHistory,
                   params: dict[str, np.ndarray]) -> None:
        self.backend_ = engine.name
        self._spec = spec
        # A family without an integration interval of its own (the latent ODE) has no t1.
        self._fitted_t1 = float(self.t1) if hasattr(self, "t1") else None
        self.params_ = {k: np.array(v) for k, v in params.items()}
        self._history = history
        self.loss_curve_ = history.loss_curve
        self.curves_ = {name: list(values) for name, values in history.curves.items()}
        self.n_iter_ = history.n_iter
        self.t_ = history.t_
        # The counters' names of the whole library (curves_, inference_stats).
        self.nfe_ = {"nfe_forward": history.last("nfe_forward"),
                     "nfe_backward": history.last("nfe_backward")}
        if self.early_stopping:
            self.validation_scores_ = list(history.validation_scores)
            self.best_validation_score_ = history.best_validation_score
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = history.best_loss

    def _check_partial_fit_params(self) -> None:
        if self.early_stopping:
            raise ValueError(
                "partial_fit does not support early_stopping=True (as scikit-learn's MLP): "
                "use fit, or set early_stopping=False")

    # ------------------------------------------------------------ model files

    # Names of parameters in model files written before they were renamed (format 1,
    # before issue 19's one vocabulary): old name -> new name. A family with a change
    # that is not a rename overrides :meth:`_upgrade_saved` as well.
    RENAMED_PARAMS: dict[str, str] = {}

    @classmethod
    def _upgrade_saved(cls, params: dict[str, Any], fitted: dict[str, Any]
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The parameters and fitted attributes of a model file, in today's names
        (:func:`odeplug.load` calls it; a file of today's names comes back as it is)."""
        params = dict(params)
        for old, new in cls.RENAMED_PARAMS.items():
            if old in params and new not in params:
                params[new] = params.pop(old)
        nfe = fitted.get("nfe_")
        if isinstance(nfe, dict) and set(nfe) == {"forward", "backward"}:
            fitted = {**fitted, "nfe_": {f"nfe_{k}": v for k, v in nfe.items()}}
        return params, fitted

    # -------------------------------------------------------------- inference

    def _inference_hyper(self) -> Hyper:
        """The fitted model's values with the solver settings of now."""
        return self._hyper(t1=self._fitted_t1)

    def _infer(self, entry: str, *inputs: Any):
        """``program.<entry>(params_, *inputs, hyper)`` on the engine of now, with the
        fitted parameters and the current solver settings; returns what it returns."""
        check_is_fitted(self, "params_")
        with self._running() as engine:
            program = engine.make_program(self._spec)
            return getattr(program, entry)(self.params_, *inputs, self._inference_hyper())

    @contextlib.contextmanager
    def _running(self) -> Iterator[Backend]:
        """The engine of now, inside the settings carried to a worker and the thread
        limits: what an inference path that does not go through :meth:`_infer` (several
        program calls in one block) runs under. Fits run under the carried settings
        through :meth:`_fit_transaction`."""
        with applied(getattr(self, CARRIED_ATTRIBUTE, None)):
            engine = self._engine()
            with limit_threads(engine), self._device_scope(engine):
                yield engine

    # ------------------------------------------------- beyond one process

    def __sklearn_clone__(self):
        """scikit-learn's clone, carrying the caller's odeplug settings to the workers
        that meta-estimators send clones to (:mod:`odeplug._parallel`)."""
        clone = super().__sklearn_clone__()
        setattr(clone, CARRIED_ATTRIBUTE,
                carried_for_clone(getattr(self, CARRIED_ATTRIBUTE, None)))
        return clone

    def __getstate__(self):
        state = dict(super().__getstate__())
        # Engine objects (tensors, compiled functions) stay out of pickles: the fitted
        # model is params_ (NumPy); partial_fit after loading restarts Adam's moments.
        state.pop("_train_state", None)
        # Settings carried to a worker travel with unfitted clones only: a fitted model
        # (back from a worker, pickled by a user) brings no configuration anywhere.
        if "params_" in state:
            state.pop(CARRIED_ATTRIBUTE, None)
        return state
