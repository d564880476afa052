"""The continuous normalizing flow on the JAX engine (diffrax + optax).

The same computation as the reference engine's program (``odeplug.reference.cnf``): same
parameters, same augmented state ``[z, int tr, (kinetic, jacobian)]``, same forward-mode
traces, same loss and update. One compiled training step per training spec (sizes,
trace estimator, regularised or not) and static solver; the regulariser weights,
``t1``, the learning rate and the tolerances are traced. Inference compiles one
log-density and one flow per architecture and static solver: the flow's direction
(``transform`` forwards, ``inverse_transform`` backwards) is a traced time grid.
Compilation and errors: see :mod:`odeplug_backends.jax.programs`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from odeplug._constant import Constant
from odeplug._protocols import INFERENCE_DTYPE, empty_row_stats
from odeplug._specs import CNFHyper, CNFSpec, CNFTrainingSpec, cnf_training

from .nn import LAYER_OPS, mlp_field, mlp_field_jvp
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
from .solve import SolveStatic, odeint_rows_traced, odeint_traced

__all__ = ["CNFProgram", "augmented_field", "log_normal"]


def augmented_field(field_jvp, n_features: int, regularize: bool):
    """``dynamics(t, y, args)`` of ``[z, trace, (kinetic, jacobian)]``; see
    ``odeplug.reference.cnf.augmented_field``."""
    d = n_features

    def dynamics(t, y, args):
        z = y[:, :d]
        noise = args.get("noise")
        f, jvp = field_jvp(t, z, None if noise is None else noise[:, None, :], args["field"])
        if noise is None:
            trace = jnp.trace(jvp, axis1=1, axis2=2)
        else:
            trace = jnp.sum(noise * jvp[:, 0], axis=1)
        columns = [f, trace[:, None]]
        if regularize:
            columns += [jnp.sum(f * f, axis=1)[:, None], jnp.sum(jvp * jvp, axis=(1, 2))[:, None]]
        return jnp.concatenate(columns, axis=1)

    return dynamics


def log_normal(z: jax.Array) -> jax.Array:
    """``log N(z; 0, I)`` per row."""
    return -0.5 * jnp.sum(z * z, axis=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


class _CNF:
    """The CNF's functions of (JAX) parameters, for one architecture (``regularize``:
    the training dynamics integrate RNODE's channels)."""

    def __init__(self, spec: CNFSpec, regularize: bool = False):
        self.spec = spec
        d = spec.n_features
        # The vector field f(t, z, params) itself (flow matching regresses it).
        self.field, field_jvp = spec.field_functions(LAYER_OPS, mlp_field, mlp_field_jvp)
        self.dynamics = augmented_field(field_jvp, d, regularize)
        self.inference_dynamics = augmented_field(field_jvp, d, False)

    @staticmethod
    def times(t1: jax.Array, dtype) -> jax.Array:
        return jnp.stack([jnp.zeros((), dtype), t1.astype(dtype)])


@functools.lru_cache(maxsize=32)
def _train_step(training: CNFTrainingSpec, static: SolveStatic) -> Callable:
    """The compiled training step: ``(params, opt_state, X, noise, values,
    solve_values) -> (params, opt_state, metrics, status)``; ``noise`` is None with the
    exact trace. Every float of ``values`` (``t1``, ``alpha``, the learning rate, RNODE's
    weights) and the tolerances are traced."""
    spec = training.cnf
    model = _CNF(spec, training.regularize)
    penalized = spec.penalized_names()
    d = spec.n_features

    def loss_fn(params, probe_in, X, noise, values, tolerances):
        y0 = jnp.concatenate([X, jnp.zeros((X.shape[0], training.n_channels), X.dtype)],
                             axis=1)
        args = {"field": params}
        if noise is not None:
            args["noise"] = Constant(noise)
        ys, info = odeint_traced(model.dynamics, y0, model.times(values["t1"], X.dtype), args,
                                 static, tolerances, probe=probe_in)
        y1 = ys[-1]
        nll = -jnp.mean(log_normal(y1[:, :d]) + y1[:, d])
        penalty = sum(jnp.sum(params[k] ** 2) for k in penalized)
        loss = nll + 0.5 * values["alpha"] * penalty / X.shape[0]
        parts = {"nll": nll}
        if training.regularize:
            parts["kinetic_energy"] = jnp.mean(y1[:, d + 1])
            parts["jacobian_norm"] = jnp.mean(y1[:, d + 2])
            loss = (loss + values["kinetic_energy"] * parts["kinetic_energy"]
                    + values["jacobian_norm"] * parts["jacobian_norm"])
        return loss, (info, parts)

    def step(params, opt_state, X, noise, values, tolerances):
        TRACE_COUNTS["cnf_step"] += 1
        (loss, (info, parts)), (grads, probe_grad) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(params, probe(X.dtype), X, noise, values,
                                                   tolerances)
        params, opt_state = adam_update(params, grads, opt_state, values)
        metrics = {"loss": loss, "nfe_forward": info.nfe_forward, **parts}
        return params, opt_state, metrics, step_status(info, probe_grad)

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def _log_density_rows(spec: CNFSpec, static: SolveStatic) -> Callable:
    """Compiled ``(params, X, values, solve_values) -> (log_p, ys, info)``, each row
    solved alone with the exact trace."""
    model = _CNF(spec)
    d = spec.n_features

    def rows(params, X, values, tolerances):
        TRACE_COUNTS["cnf_log_density"] += 1
        y0 = jnp.concatenate([X, jnp.zeros((X.shape[0], 1), X.dtype)], axis=1)
        ys, info = odeint_rows_traced(model.inference_dynamics, y0,
                                      model.times(values["t1"], X.dtype), {"field": params},
                                      static, tolerances)
        return log_normal(ys[-1][:, :d]) + ys[-1][:, d], ys, info

    return jax.jit(rows)


@functools.lru_cache(maxsize=32)
def _flow_rows(spec: CNFSpec, static: SolveStatic) -> Callable:
    """Compiled ``(params, Z, times, solve_values) -> (z_end, ys, info)``: the flow from
    ``times[0]`` to ``times[1]`` (either way), each row alone."""
    model = _CNF(spec)

    def rows(params, Z, times, tolerances):
        TRACE_COUNTS["cnf_flow"] += 1
        ys, info = odeint_rows_traced(model.field, Z, times.astype(Z.dtype), params, static,
                                      tolerances)
        return ys[-1], ys, info

    return jax.jit(rows)


class CNFProgram(ParamsProgram):
    """CNF density: negative log-likelihood (+ RNODE's terms, + L2), Adam; see
    ``odeplug._specs.CNFSpec``. Batch: ``(X,)``, or ``(X, noise)`` with Hutchinson.

    The training state is ``{"params": dict of JAX arrays, "opt": optax's Adam state}``.
    Built from a ``CNFTrainingSpec`` (or a bare ``CNFSpec``); ``spec`` is the model's
    ``CNFSpec``, ``training`` the training spec. The training step is compiled per
    training spec, inference per ``CNFSpec``: the training choices do not multiply the
    inference compilations.
    """

    def __init__(self, spec: CNFSpec | CNFTrainingSpec):
        self.training = cnf_training(spec)
        super().__init__(self.training.cnf)

    def velocity(self, params: dict, t, z):
        """``f(t, z)``: the vector field on states ``z`` ``(m, d)`` at a time ``t``
        (JAX arrays; traceable)."""
        return _CNF(self.spec).field(t, z, params)

    # --------------------------------------------------------------- training

    def step(self, state: dict[str, Any], batch, hyper: CNFHyper):
        X = np.asarray(batch[0], dtype=self.np_dtype)
        noise = None
        if self.training.trace == "hutchinson":
            if len(batch) != 2:
                raise ValueError("a Hutchinson CNF step takes a batch (X, noise)")
            noise = np.asarray(batch[1], dtype=self.np_dtype)
        compiled = _train_step(self.training, solve_key(hyper.solve))
        (params, opt), metrics = run_step(
            compiled, self.np_dtype, hyper.solve, state["params"], state["opt"], X, noise,
            traced_values(hyper, self.np_dtype), solve_values(hyper.solve, self.np_dtype))
        metrics["nfe_forward"] = int(metrics["nfe_forward"])
        return {"params": params, "opt": opt}, metrics

    def evaluate(self, state: dict[str, Any], batch, hyper: CNFHyper) -> dict[str, float]:
        # The step's own compilation with a zero step size, its new state dropped.
        _, metrics = self.step(state, batch, dataclasses.replace(hyper, learning_rate=0.0))
        return metrics

    # -------------------------------------------------------------- inference

    def _inference(self, params, hyper: CNFHyper):
        self.spec.check_params(params)
        # The solve's adjoint plays no part in inference: one compilation for both.
        solve = dataclasses.replace(hyper.solve, adjoint=None)
        with precision(INFERENCE_DTYPE):
            arrays = as_arrays(params, self.names, INFERENCE_DTYPE)
        return arrays, solve

    def log_density(self, params: dict[str, np.ndarray], X: np.ndarray, hyper: CNFHyper):
        """``log p(x)`` (float64, exact trace); each row solved with its own steps."""
        X = np.asarray(X, dtype=INFERENCE_DTYPE)
        arrays, solve = self._inference(params, hyper)
        if X.shape[0] == 0:
            return np.zeros(0, INFERENCE_DTYPE), empty_row_stats()
        out, stats = rows_in_chunks(
            _log_density_rows(self.spec, solve_key(solve)), arrays, (X,),
            (traced_values(hyper, INFERENCE_DTYPE), solve_values(solve, INFERENCE_DTYPE)),
            solve, np.array([0.0, hyper.t1]))
        return np.asarray(out, dtype=INFERENCE_DTYPE), stats

    def _flow(self, params, Z, times: np.ndarray, hyper: CNFHyper):
        Z = np.asarray(Z, dtype=INFERENCE_DTYPE)
        arrays, solve = self._inference(params, hyper)
        if Z.shape[0] == 0:
            return np.zeros((0, self.spec.n_features), INFERENCE_DTYPE), empty_row_stats()
        out, stats = rows_in_chunks(
            _flow_rows(self.spec, solve_key(solve)), arrays, (Z,),
            (np.asarray(times, INFERENCE_DTYPE), solve_values(solve, INFERENCE_DTYPE)),
            solve, times)
        return np.asarray(out, dtype=INFERENCE_DTYPE), stats

    def transform(self, params, X, hyper: CNFHyper):
        """``z(t1)`` of data at time 0 (float64)."""
        return self._flow(params, X, np.array([0.0, hyper.t1]), hyper)

    def inverse_transform(self, params, Z, hyper: CNFHyper):
        """``z(0)`` of base points at ``t1``: the reverse solve (float64)."""
        return self._flow(params, Z, np.array([hyper.t1, 0.0]), hyper)
