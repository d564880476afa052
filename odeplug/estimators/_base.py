"""What every odeplug estimator shares: parameter checks, the engine and solver read at
call time, thread limits, and a fit that leaves nothing half-done."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from .._config import resolve_backend_name
from .._solver_options import BacksolveAdjoint, ODESolveConfig, make_solve_config
from .._specs import ACTIVATIONS, OptimizerSpec
from .._threads import limit_threads
from .._training import TrainingHistory, train
from ..backend import Backend, get_backend
from ..exceptions import TrainingDivergedError

__all__ = ["ODEEstimatorBase"]


def _check_number(name: str, value: Any, *, low=None, high=None, integer=False,
                  inclusive_low=True, inclusive_high=True) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an int' if integer else 'a float'}, got {value!r}")
    if low is not None and (value < low or (value == low and not inclusive_low)):
        raise ValueError(f"{name} must be {'>=' if inclusive_low else '>'} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not inclusive_high)):
        raise ValueError(f"{name} must be {'<=' if inclusive_high else '<'} {high}, got {value!r}")


class ODEEstimatorBase(BaseEstimator):
    """Shared machinery; subclasses define the model spec and the targets."""

    # ------------------------------------------------------------- parameters

    def _check_common_params(self) -> None:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes,)
        if len(tuple(sizes)) == 0 or any(
                isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
                for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive ints, got {sizes!r}")
        for name in ("activation", "field_activation"):
            if getattr(self, name) not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {ACTIVATIONS}, got "
                                 f"{getattr(self, name)!r}")
        _check_number("t1", self.t1, low=0, inclusive_low=False)
        _check_number("alpha", self.alpha, low=0)
        _check_number("learning_rate_init", self.learning_rate_init, low=0,
                      inclusive_low=False)
        _check_number("max_iter", self.max_iter, low=1, integer=True)
        _check_number("tol", self.tol, low=0)
        _check_number("n_iter_no_change", self.n_iter_no_change, low=1, integer=True)
        _check_number("validation_fraction", self.validation_fraction, low=0, high=1,
                      inclusive_low=False, inclusive_high=False)
        if not (self.batch_size == "auto" or (
                isinstance(self.batch_size, numbers.Integral) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or a positive int, got "
                             f"{self.batch_size!r}")
        if not isinstance(self.adjoint, (bool, BacksolveAdjoint)):
            raise TypeError(f"adjoint must be a bool or a BacksolveAdjoint, got {self.adjoint!r}")
        self._solve_config()  # solver, tolerances, step budget

    def _hidden_sizes(self) -> tuple[int, ...]:
        sizes = self.hidden_layer_sizes
        return (int(sizes),) if isinstance(sizes, numbers.Integral) else tuple(map(int, sizes))

    def _solve_config(self) -> ODESolveConfig:
        """Solver settings, read anew at every call (so set_params(rtol=...) after fit
        changes prediction)."""
        return make_solve_config(
            solver=self.solver, rtol=self.rtol, atol=self.atol, step_size=self.step_size,
            adjoint=self.adjoint, max_num_steps=self.max_num_steps)

    def _optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(learning_rate=float(self.learning_rate_init),
                             alpha=float(self.alpha))

    def _engine(self) -> Backend:
        """The engine named by ``backend``, else the configuration, read at call time."""
        return get_backend(resolve_backend_name(self.backend))

    def _batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        return min(int(self.batch_size), n_samples)

    # --------------------------------------------------------------- fitting

    def _fit_transaction(self, fit_body, *args, **kwargs):
        """Run ``fit_body``; on error restore the estimator as it was (nothing
        half-fitted), except after divergence, where the best parameters are kept."""
        before = dict(self.__dict__)
        try:
            return fit_body(*args, **kwargs)
        except TrainingDivergedError:
            raise
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            if before.get("_train_state") is not None:
                # Updated in place by the failed run: it no longer matches the
                # restored parameters.
                self._train_state = None
            raise

    def _train(self, engine: Backend, spec: Any, params: dict[str, np.ndarray],
               arrays: tuple[np.ndarray, ...], *, seed: int, rng, max_iter: int,
               history: TrainingHistory, validation_score=None, incremental=False):
        """Build or reuse the engine's training state, run the loop, store the result.

        The engine state (optimiser moments) is kept in ``_train_state`` so that
        ``partial_fit`` and ``warm_start`` continue where they stopped.
        """
        program = engine.make_program(spec)
        cached = getattr(self, "_train_state", None)
        if cached is not None and cached[0] == (engine.name, spec):
            state = cached[1]
        else:
            state = program.init(params, seed)
        n = arrays[0].shape[0]
        try:
            with limit_threads(engine):
                state, final = train(
                    program, state, arrays, history, max_iter=max_iter,
                    batch_size=self._batch_size(n), rng=rng, tol=float(self.tol),
                    n_iter_no_change=int(self.n_iter_no_change),
                    validation_score=validation_score, verbose=int(self.verbose),
                    desc=type(self).__name__, warn_not_converged=not incremental)
        except TrainingDivergedError:
            self._store_fit(engine, history, history.best_params)
            self._train_state = None
            raise
        self._train_state = ((engine.name, spec), state)
        self._store_fit(engine, history, final)

    def _store_fit(self, engine: Backend, history: TrainingHistory,
                   params: dict[str, np.ndarray]) -> None:
        self.backend_ = engine.name
        self.params_ = {k: np.array(v) for k, v in params.items()}
        self._history = history
        self.loss_curve_ = list(history.loss_curve)
        self.n_iter_ = history.n_iter
        self.t_ = history.t_
        self.nfe_ = dict(history.nfe)
        if self.early_stopping:
            self.validation_scores_ = list(history.validation_scores)
            self.best_validation_score_ = history.best_validation_score
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = history.best_loss

    def _predict_with(self, spec: Any, X: np.ndarray):
        """Run the engine's inference program with the current solver settings."""
        engine = self._engine()
        program = engine.make_program(spec)
        with limit_threads(engine):
            return program.predict(self.params_, X, self._solve_config())

    def __getstate__(self):
        state = dict(super().__getstate__())
        # Engine objects (tensors, compiled functions) stay out of pickles: the fitted
        # model is params_ (NumPy); partial_fit after loading restarts Adam's moments.
        state.pop("_train_state", None)
        return state
