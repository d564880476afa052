"""The program contract between the estimators and the engines.

``Backend.make_program(spec)`` returns, for a model spec (:mod:`odeplug._specs`), a
program: a training part, the same for every family, and the family's inference entry
points. Parameters cross the contract as ``dict[str, numpy.ndarray]`` with the spec's
canonical names; data cross it as NumPy arrays; ``hyper`` (:class:`~odeplug._specs.Hyper`
or a family's subclass) carries every value that does not change a shape.

Randomness never lives in a program: the training loop draws what a step needs (the
Hutchinson probe vectors of a CNF, the reparameterisation noise of a VAE) from the
estimator's ``random_state`` and passes it in the batch, so the same seed gives the same
fit on every engine and a program is a deterministic function of its inputs.

Inference (in :data:`INFERENCE_DTYPE`) returns, beside its outputs, per-row counters
(:data:`RowStats`): each row is solved alone, with its own adaptive steps, so its result
and cost do not depend on the other rows (the paper's adaptive cost per input).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
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
]

# Inference computes in float64 on every engine, whatever the dtype the model was trained
# in: a row's result then depends on the other rows of a batch only at float64 rounding
# (a BLAS product rounds a row of a large product differently from the same row alone;
# in float32 the flow and the step decisions amplify that to ~1e-5), far below
# scikit-learn's subset-invariance tolerance (1e-7), and log-densities and trajectories
# are as accurate as the tolerances ask. Training keeps the engine's dtype.
INFERENCE_DTYPE = np.dtype(np.float64)

Params = dict[str, np.ndarray]
# Per-row counters of an inference solve: "nfe_forward", "n_steps", "n_rejected", each an
# int array of shape (n_rows,).
RowStats = dict[str, np.ndarray]

ROW_COUNTERS = ("nfe_forward", "n_steps", "n_rejected")


def empty_row_stats() -> RowStats:
    """The counters of an inference on zero rows."""
    return {name: np.zeros(0, dtype=np.int64) for name in ROW_COUNTERS}


@runtime_checkable
class TrainingProgram(Protocol):
    """What the training loop (:func:`odeplug._training.train`) calls.

    ``step`` metrics are floats keyed by name; every family returns ``loss``,
    ``nfe_forward`` and ``nfe_backward`` (None where the engine cannot tell), and may add
    its own (``kl``, ``reconstruction``, ``kinetic_energy``...). The loop records each
    one per epoch. A failed solve raises :class:`~odeplug.SolverError`.
    """

    def init(self, params: Params) -> Any:
        """The engine's training state (parameters as tensors, optimiser moments)."""

    def step(self, state: Any, batch: tuple[np.ndarray, ...], hyper: Any
             ) -> tuple[Any, dict[str, float | None]]:
        """One optimiser step on a minibatch; returns the new state and the metrics of
        the parameters the step started from."""

    def evaluate(self, state: Any, batch: tuple[np.ndarray, ...], hyper: Any
                 ) -> dict[str, float | None]:
        """The metrics of ``step`` for the state's parameters, without a step (the
        training loop checks the parameters it keeps; the latent ODE's early stopping
        scores held-out series). ``state`` is unchanged."""

    def get_params(self, state: Any) -> Params:
        """Canonical parameters of a state (copies: later steps do not change them)."""


@runtime_checkable
class ClassifierProgram(TrainingProgram, Protocol):
    """The ODE-Net (``ODENetSpec``). Batch: ``(X, y_index)``."""

    def predict(self, params: Params, X: np.ndarray, hyper: Any
                ) -> tuple[np.ndarray, RowStats]:
        """Log-probabilities ``(n, n_classes)``."""


@runtime_checkable
class DensityProgram(TrainingProgram, Protocol):
    """A continuous normalizing flow (``CNFSpec``, or ``CNFTrainingSpec`` for training):
    data at time 0 is carried to the base distribution at ``t1``. Sampling is
    :meth:`inverse_transform` of base draws. Batch: ``(X,)``, or ``(X, probes)`` with
    Hutchinson's trace."""

    def velocity(self, params: Any, t: Any, z: Any) -> Any:
        """``f(t, z)``, the vector field, on the engine's arrays: ``params`` as the
        engine's training state holds them, ``z`` of shape ``(m, n_features)`` at one
        time ``t`` (the engine's flow matching program regresses it)."""

    def log_density(self, params: Params, X: np.ndarray, hyper: Any
                    ) -> tuple[np.ndarray, RowStats]:
        """``log p(x)`` per row (exact trace), shape ``(n,)``."""

    def transform(self, params: Params, X: np.ndarray, hyper: Any
                  ) -> tuple[np.ndarray, RowStats]:
        """``z(t1)``: data carried to the base distribution."""

    def inverse_transform(self, params: Params, Z: np.ndarray, hyper: Any
                          ) -> tuple[np.ndarray, RowStats]:
        """``z(0)`` from base points at ``t1`` (the reverse solve)."""


@runtime_checkable
class FlowMatchingProgram(TrainingProgram, Protocol):
    """A CNF's field trained by flow matching (``FlowMatchingSpec``): a training program
    only, on the CNF's parameters; inference is the CNF's own program. Batch: ``(t,
    x_t, target)`` (odeplug._flow_matching draws it)."""


@runtime_checkable
class LatentProgram(TrainingProgram, Protocol):
    """A latent ODE for irregularly sampled series."""

    def encode(self, params: Params, values: np.ndarray, mask: np.ndarray,
               times: np.ndarray, hyper: Any) -> tuple[np.ndarray, np.ndarray, RowStats]:
        """Mean and log-variance of ``q(z0)`` per series."""

    def decode(self, params: Params, z: np.ndarray, hyper: Any) -> np.ndarray:
        """Observations of latent states (any leading shape)."""

    def trajectory(self, params: Params, z0: np.ndarray, times: np.ndarray, hyper: Any
                   ) -> tuple[np.ndarray, RowStats]:
        """Latent states at per-series times ``(n, T)`` (from 0, strictly increasing or
        strictly decreasing, NaN-padded), each series solved with its own steps: shape
        ``(n, T, latent_dim)``."""
