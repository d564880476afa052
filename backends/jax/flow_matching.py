"""Flow matching on the JAX engine: a CNF's field regressed onto the conditional path's
targets (``odeplug._flow_matching``), one small jitted step (the field, its gradient,
Adam), no ODE solve. The same computation as ``odeplug.reference.flow_matching``.

One compilation per architecture and batch shape: the step is cached by the spec, and
every float of the ``Hyper`` (learning rate, ``alpha``, Adam's constants) is a traced
input (:func:`~odeplug_backends.jax.programs.traced_values`). Nothing in it can fail as
a solve can, so it returns no status; a non-finite loss is caught by the training loop.
The training state and the parameters are the CNF program's (``cnf.CNFProgram``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from odeplug._flow_matching import FlowMatchingSpec

from .cnf import CNFProgram
from .programs import TRACE_COUNTS, adam_update, precision, traced_values

__all__ = ["FlowMatchingProgram"]


@functools.lru_cache(maxsize=32)
def _train_step(spec: FlowMatchingSpec) -> Callable:
    """``(params, opt_state, t, x_t, target, values) -> (params, opt_state, metrics)``."""
    velocity = CNFProgram(spec.cnf).velocity
    penalized = spec.penalized_names()

    def loss_fn(params, t, x_t, target, values):
        residual = velocity(params, t, x_t) - target
        mse = jnp.mean(jnp.sum(residual * residual, axis=1))
        penalty = sum(jnp.sum(params[k] ** 2) for k in penalized)
        return mse + 0.5 * values["alpha"] * penalty / x_t.shape[0], mse

    def step(params, opt_state, t, x_t, target, values):
        TRACE_COUNTS["flow_matching_step"] += 1
        (loss, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, t, x_t, target, values)
        params, opt_state = adam_update(params, grads, opt_state, values)
        return params, opt_state, {"loss": loss, "mse": mse}

    return jax.jit(step)


class FlowMatchingProgram:
    """``mean ||f(t, x_t) - target||^2`` + L2, Adam; see ``FlowMatchingSpec``.

    Batch: ``(t, x_t, target)`` with ``t`` a column ``(m, 1)``: each row at its own time.
    """

    def __init__(self, spec: FlowMatchingSpec):
        self.spec = spec
        self.cnf = CNFProgram(spec.cnf)
        self.np_dtype = np.dtype(spec.dtype)

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return self.cnf.init(params)

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.cnf.get_params(state)

    def step(self, state: dict[str, Any], batch, hyper):
        if len(batch) != 3:
            raise ValueError("a flow-matching step takes a batch (t, x_t, target)")
        arrays = [np.asarray(a, dtype=self.np_dtype) for a in batch]
        with precision(self.np_dtype):
            params, opt, metrics = _train_step(self.spec)(
                state["params"], state["opt"], *arrays, traced_values(hyper, self.np_dtype))
            metrics = jax.device_get(metrics)  # waits for the step
        # One field evaluation and its backpropagation: no solve, no adjoint.
        metrics = {"loss": float(metrics["loss"]), "nfe_forward": 1, "nfe_backward": 0,
                   "mse": float(metrics["mse"])}
        return {**state, "params": params, "opt": opt}, metrics

    def evaluate(self, state: dict[str, Any], batch, hyper) -> dict[str, float]:
        # The step's own compilation with a zero step size, its new state dropped.
        _, metrics = self.step(state, batch, dataclasses.replace(hyper, learning_rate=0.0))
        return metrics
