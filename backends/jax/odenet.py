"""The ODE-Net on the JAX engine (diffrax + optax).

The same computation as the reference engine's program (``odeplug.reference.odenet``):
same parameters, same loss, same optimiser update, so that both give the same result up
to rounding. Compilation and errors: see :mod:`odeplug_backends.jax.programs`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from odeplug._protocols import INFERENCE_DTYPE, empty_row_stats
from odeplug._solver_options import ODESolveConfig
from odeplug._specs import Hyper, ODENetSpec

from .nn import ACTIVATIONS, dense, log_softmax, mlp_field
from .programs import (
    TRACE_COUNTS,
    adam_init,
    adam_update,
    as_arrays,
    precision,
    row_counts,
    rows_in_chunks,
    run_step,
    solve_key,
    traced_values,
)
from .solve import odeint_result

__all__ = ["ODENetProgram"]


class _ODENet:
    """The ODE-Net's functions of (JAX) parameters, for one spec."""

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.activation = ACTIVATIONS[spec.activation]
        self.field = mlp_field("field", spec.n_field_layers, spec.field_activation)

    def initial_state(self, params: dict, X: jax.Array) -> jax.Array:
        z0 = self.activation(dense(params, "embed", X))
        if self.spec.augment_dim:
            zeros = jnp.zeros((X.shape[0], self.spec.augment_dim), z0.dtype)
            z0 = jnp.concatenate([z0, zeros], axis=1)
        return z0

    def logits(self, params: dict, X: jax.Array, t1: jax.Array, solve: ODESolveConfig):
        """Logits, the solve's ODEStats and its diffrax result code."""
        field_params = {k: v for k, v in params.items() if k.startswith("field.")}
        z0 = self.initial_state(params, X)
        times = jnp.stack([jnp.zeros((), z0.dtype), t1.astype(z0.dtype)])
        zs, stats, code = odeint_result(self.field, z0, times, field_params, solve)
        return dense(params, "head", zs[-1]), stats, code


@functools.lru_cache(maxsize=32)
def _train_step(spec: ODENetSpec, solve: ODESolveConfig) -> Callable:
    """The compiled training step of an architecture and a solver: ``(params, opt_state,
    X, y, values) -> (params, opt_state, metrics)``, ``metrics = [loss, nfe_forward,
    result code]`` in one array (one transfer to the host). ``values`` are the traced
    hyperparameters: a new learning rate, ``alpha`` or ``t1`` reuses the compilation."""
    model = _ODENet(spec)
    penalized = spec.penalized_names()

    def loss_fn(params, X, y, values):
        logits, stats, code = model.logits(params, X, values["t1"], solve)
        picked = jnp.take_along_axis(log_softmax(logits), y[:, None], axis=1)
        penalty = sum(jnp.sum(params[k] ** 2) for k in penalized)
        loss = -jnp.mean(picked) + 0.5 * values["alpha"] * penalty / y.shape[0]
        return loss, (stats.nfe_forward, code)

    def step(params, opt_state, X, y, values):
        TRACE_COUNTS["step"] += 1
        (loss, (nfe, code)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, X, y, values)
        params, opt_state = adam_update(params, grads, opt_state, values)
        # Counts are exact in float32 up to 2**24 evaluations.
        metrics = jnp.stack([loss, nfe.astype(loss.dtype), code.astype(loss.dtype)])
        return params, opt_state, metrics

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def _predict_rows(spec: ODENetSpec, solve: ODESolveConfig) -> Callable:
    """The compiled inference of a model and a solver: ``(params, X, values) ->
    (log_proba, counts)`` (counts: :func:`~odeplug_backends.jax.programs.row_counts`).

    Each row is solved alone (``vmap`` of a one-row solve): under ``vmap`` diffrax's
    loop runs until every row is done, but each row keeps its own step size and
    controller state, so its result does not depend on the others.
    """
    model = _ODENet(spec)

    def one_row(params, x, values):
        logits, stats, code = model.logits(params, x[None], values["t1"], solve)
        return log_softmax(logits)[0], row_counts(stats, code, logits)

    def rows(params, X, values):
        TRACE_COUNTS["predict"] += 1
        return jax.vmap(one_row, in_axes=(None, 0, None))(params, X, values)

    return jax.jit(rows)


class ODENetProgram:
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``.

    The training state is ``{"params": dict of JAX arrays, "opt": optax's Adam state}``;
    ``step`` returns a new one (JAX arrays are immutable).
    """

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.np_dtype = np.dtype(spec.dtype)
        self.names = tuple(spec.param_shapes())

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        with precision(self.np_dtype):
            arrays = as_arrays(params, self.names, self.np_dtype, copy=True)
            return {"params": arrays, "opt": adam_init(arrays)}

    def step(self, state: dict[str, Any], batch: tuple[np.ndarray, np.ndarray], hyper: Hyper):
        X, y = batch
        compiled = _train_step(self.spec, solve_key(hyper.solve))
        (params, opt), (loss, nfe) = run_step(
            compiled, self.np_dtype, hyper.solve, state["params"], state["opt"],
            np.asarray(X, dtype=self.np_dtype), np.asarray(y, dtype=np.int32),
            traced_values(hyper, self.np_dtype))
        metrics = {"loss": float(loss), "nfe_forward": int(nfe), "nfe_backward": None}
        return {"params": params, "opt": opt}, metrics

    def evaluate(self, state: dict[str, Any], batch, hyper: Hyper) -> dict[str, float]:
        # The step's own compilation with a zero step size, its new state dropped: the
        # loss of the state's parameters costs no compilation of its own.
        _, metrics = self.step(state, batch, dataclasses.replace(hyper, learning_rate=0.0))
        return metrics

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        host = jax.device_get(state["params"])
        return {k: np.array(host[k]) for k in self.names}

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray, hyper: Hyper):
        """Log-probabilities (float64); each input is solved alone, with its own adaptive
        steps."""
        self.spec.check_params(params)
        X = np.asarray(X, dtype=INFERENCE_DTYPE)
        if X.shape[0] == 0:
            return np.zeros((0, self.spec.n_outputs), INFERENCE_DTYPE), empty_row_stats()
        # The solve's adjoint plays no part in inference: one compilation for both.
        solve = dataclasses.replace(hyper.solve, adjoint=None)
        with precision(INFERENCE_DTYPE):
            arrays = as_arrays(params, self.names, INFERENCE_DTYPE)
        log_proba, stats = rows_in_chunks(
            _predict_rows(self.spec, solve_key(solve)), arrays, X,
            traced_values(hyper, INFERENCE_DTYPE), solve, INFERENCE_DTYPE)
        return np.asarray(log_proba, dtype=INFERENCE_DTYPE), stats
