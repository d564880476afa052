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
from odeplug._specs import Hyper, ODENetSpec
from odeplug.layers import as_field

from .nn import LAYER_OPS, log_softmax
from .programs import (
    TRACE_COUNTS,
    ParamsProgram,
    adam_update,
    as_arrays,
    precision,
    probe,
    rows_in_chunks,
    run_step,
    solve_key,
    solve_values,
    step_status,
    traced_values,
)
from .solve import SolveStatic, SolveValues, odeint_rows_traced, odeint_traced

__all__ = ["ODENetProgram"]


class _ODENet:
    """The ODE-Net's functions of (JAX) parameters, for one spec."""

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.embed, field, self.head = spec.layers()
        self.field = as_field(field, "field", spec.state_shape, LAYER_OPS)

    def initial_state(self, params: dict, X: jax.Array) -> jax.Array:
        spec, n = self.spec, X.shape[0]
        z0 = self.embed.apply(LAYER_OPS, params, "embed", 0.0,
                              jnp.reshape(X, (n, *spec.row_shape)))
        if spec.augment_dim:
            zeros = jnp.zeros((n, spec.augment_dim, *z0.shape[2:]), z0.dtype)
            z0 = jnp.concatenate([z0, zeros], axis=1)
        return jnp.reshape(z0, (n, spec.state_dim))

    def head_logits(self, params: dict, z: jax.Array, t1: jax.Array) -> jax.Array:
        z = jnp.reshape(z, (z.shape[0], *self.spec.state_shape))
        return self.head.apply(LAYER_OPS, params, "head", t1, z)

    @staticmethod
    def times(t1: jax.Array, dtype) -> jax.Array:
        return jnp.stack([jnp.zeros((), dtype), t1.astype(dtype)])

    @staticmethod
    def field_params(params: dict) -> dict:
        return {k: v for k, v in params.items() if k.startswith("field.")}

    def logits(self, params: dict, X: jax.Array, t1: jax.Array, static: SolveStatic,
               values: SolveValues, probe=None):
        """Logits of a batch (one solve) and the solve's ``SolveInfo``."""
        z0 = self.initial_state(params, X)
        zs, info = odeint_traced(self.field, z0, self.times(t1, z0.dtype),
                                 self.field_params(params), static, values, probe=probe)
        return self.head_logits(params, zs[-1], t1), info


@functools.lru_cache(maxsize=32)
def _train_step(spec: ODENetSpec, static: SolveStatic) -> Callable:
    """The compiled training step of an architecture and a solver: ``(params, opt_state,
    X, y, values, solve_values) -> (params, opt_state, metrics, status)``. ``values``
    (the hyperparameters) and ``solve_values`` (the tolerances) are traced: a new
    learning rate, ``alpha``, ``t1`` or ``rtol`` reuses the compilation."""
    model = _ODENet(spec)
    penalized = spec.penalized_names()

    def loss_fn(params, probe_in, X, y, values, tolerances):
        logits, info = model.logits(params, X, values["t1"], static, tolerances, probe_in)
        picked = jnp.take_along_axis(log_softmax(logits), y[:, None], axis=1)
        penalty = sum(jnp.sum(params[k] ** 2) for k in penalized)
        loss = -jnp.mean(picked) + 0.5 * values["alpha"] * penalty / y.shape[0]
        return loss, info

    def step(params, opt_state, X, y, values, tolerances):
        TRACE_COUNTS["step"] += 1
        (loss, info), (grads, probe_grad) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(params, probe(X.dtype), X, y, values,
                                                   tolerances)
        params, opt_state = adam_update(params, grads, opt_state, values)
        metrics = {"loss": loss, "nfe_forward": info.nfe_forward}
        return params, opt_state, metrics, step_status(info, probe_grad)

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def _predict_rows(spec: ODENetSpec, static: SolveStatic) -> Callable:
    """The compiled inference of a model and a solver: ``(params, X, values,
    solve_values) -> (log_proba, ys, info)``, each row solved alone
    (``odeint_rows_traced``: its own steps, so its result does not depend on the
    others)."""
    model = _ODENet(spec)

    def rows(params, X, values, tolerances):
        TRACE_COUNTS["predict"] += 1
        z0 = model.initial_state(params, X)
        zs, info = odeint_rows_traced(model.field, z0, model.times(values["t1"], z0.dtype),
                                      model.field_params(params), static, tolerances)
        return log_softmax(model.head_logits(params, zs[-1], values["t1"])), zs, info

    return jax.jit(rows)


class ODENetProgram(ParamsProgram):
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``.

    The training state is ``{"params": dict of JAX arrays, "opt": optax's Adam state}``;
    ``step`` returns a new one (JAX arrays are immutable).
    """

    def step(self, state: dict[str, Any], batch: tuple[np.ndarray, np.ndarray], hyper: Hyper):
        X, y = batch
        compiled = _train_step(self.spec, solve_key(hyper.solve))
        (params, opt), metrics = run_step(
            compiled, self.np_dtype, hyper.solve, state["params"], state["opt"],
            np.asarray(X, dtype=self.np_dtype), np.asarray(y, dtype=np.int32),
            traced_values(hyper, self.np_dtype), solve_values(hyper.solve, self.np_dtype))
        metrics["nfe_forward"] = int(metrics["nfe_forward"])
        return {"params": params, "opt": opt}, metrics

    def evaluate(self, state: dict[str, Any], batch, hyper: Hyper) -> dict[str, float]:
        # The step's own compilation with a zero step size, its new state dropped: the
        # loss of the state's parameters costs no compilation of its own.
        _, metrics = self.step(state, batch, dataclasses.replace(hyper, learning_rate=0.0))
        return metrics

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
            _predict_rows(self.spec, solve_key(solve)), arrays, (X,),
            (traced_values(hyper, INFERENCE_DTYPE), solve_values(solve, INFERENCE_DTYPE)),
            solve, np.array([0.0, hyper.t1]))
        return np.asarray(log_proba, dtype=INFERENCE_DTYPE), stats
