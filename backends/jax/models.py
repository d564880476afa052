"""Programs of the model families on the JAX engine (diffrax + optax).

The same computation as the reference engine's programs (``odeplug.reference.models``):
same parameters, same loss, same optimiser update, so that both give the same result up
to rounding. The ODE solves go through :mod:`odeplug_backends.jax.solve`.

Compilation. A training step (forward solve, gradient, Adam update) is one ``jax.jit``
function, and so is inference. The estimator builds a new program for every fit and
prediction, so the compiled functions are not kept on the program but cached here, at
module level, keyed by the (frozen, hashable) spec and solve configuration: a refit, a
clone in a grid search or a second estimator with the same settings reuses them. A
training step compiles once per batch size (a fit has two: its batches and the last,
shorter one; padding it would change the adaptive steps, whose error norm is taken over
the whole batch); inference pads its rows to a few sizes.

Errors. A failed solve raises ``SolverError``, as on the other engines: the compiled
step returns the forward solve's result code and time reached
(:func:`~odeplug_backends.jax.solve.odeint_traced`) and, with the adjoint, those of the
backward solves (the gradient of a probe, :func:`~odeplug_backends.jax.solve.backward_info`);
nothing raises inside ``jit``. Prediction does not say where a row's solve stopped
(``t`` is NaN).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from odeplug._solver_options import ODESolveConfig
from odeplug._specs import ODENetSpec, OptimizerSpec
from odeplug.exceptions import SolverError

from .nn import ACTIVATIONS, dense, log_softmax, mlp_field
from .solve import (
    backward_info,
    backward_probe,
    failure_reason,
    odeint_traced,
    split_config,
)

__all__ = ["make_program", "ODENetProgram"]

# How often each kind of compiled function was traced (tracing precedes every
# compilation): the tests read it to check that equal specs share compilations.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

# Inference pads the rows to one of a few sizes (powers of two from _MIN_ROWS), so that
# calls with many different numbers of rows (scikit-learn's) compile a few functions, not
# one per size; more rows than _MAX_ROWS go in chunks of _MAX_ROWS. Under vmap, every row
# of a chunk computes until its slowest row is done, which bounds the chunks.
_MIN_ROWS = 8
_MAX_ROWS = 512


def make_program(spec: Any):
    if isinstance(spec, ODENetSpec):
        return ODENetProgram(spec)
    raise NotImplementedError(f"the jax engine has no program for {type(spec).__name__}")


# ------------------------------------------------------------------------ the model


class _ODENet:
    """The ODE-Net's functions of (JAX) parameters, for one spec."""

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.activation = ACTIVATIONS[spec.activation]
        self.field = mlp_field("field", spec.n_field_layers, spec.field_activation)
        # Times in the state's dtype: the engine's odeint casts them so anyway.
        self.times = np.array([0.0, spec.t1], dtype=spec.dtype)

    def initial_state(self, params: dict, X: jax.Array) -> jax.Array:
        z0 = self.activation(dense(params, "embed", X))
        if self.spec.augment_dim:
            zeros = jnp.zeros((X.shape[0], self.spec.augment_dim), z0.dtype)
            z0 = jnp.concatenate([z0, zeros], axis=1)
        return z0

    def logits(self, params: dict, X: jax.Array, solve: ODESolveConfig, probe=None):
        """Logits and the solve's ``SolveInfo`` (counts, result code, time reached)."""
        field_params = {k: v for k, v in params.items() if k.startswith("field.")}
        zs, info = odeint_traced(self.field, self.initial_state(params, X), self.times,
                                 field_params, *split_config(solve), probe=probe)
        return dense(params, "head", zs[-1]), info


@functools.lru_cache(maxsize=16)
def _adam(spec: OptimizerSpec) -> optax.GradientTransformation:
    # optax's eps is torch's and the reference's: added to sqrt(v_hat). The L2 penalty
    # is in the loss (divided by the batch size, sparing the biases), not weight decay.
    return optax.adam(spec.learning_rate, b1=spec.beta1, b2=spec.beta2, eps=spec.epsilon)


@functools.lru_cache(maxsize=32)
def _train_step(spec: ODENetSpec) -> Callable:
    """The compiled training step of a spec: ``(params, opt_state, X, y) -> (params,
    opt_state, metrics)``, ``metrics = [loss, nfe_forward, result code, time reached,
    nfe_backward, backward code, backward time reached]`` in one array (one transfer
    to the host)."""
    model = _ODENet(spec)
    optimizer = _adam(spec.optimizer)
    weight_names = spec.weight_names()
    alpha = spec.optimizer.alpha

    def loss_fn(params, probe, X, y):
        logits, info = model.logits(params, X, spec.solve, probe)
        picked = jnp.take_along_axis(log_softmax(logits), y[:, None], axis=1)
        penalty = sum(jnp.sum(params[k] ** 2) for k in weight_names)
        loss = -jnp.mean(picked) + 0.5 * alpha * penalty / y.shape[0]
        return loss, info

    def step(params, opt_state, X, y):
        TRACE_COUNTS["step"] += 1
        (loss, info), (grads, probe_grad) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(params, backward_probe(X.dtype), X, y)
        backward = backward_info(probe_grad)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # Counts are exact in float32 up to 2**24 evaluations.
        metrics = jnp.stack([loss, info.nfe_forward.astype(loss.dtype),
                             info.code.astype(loss.dtype), info.t_reached.astype(loss.dtype),
                             backward.nfe_backward.astype(loss.dtype),
                             backward.code.astype(loss.dtype),
                             backward.t_reached.astype(loss.dtype)])
        return params, opt_state, metrics

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def _predict_rows(model_spec: ODENetSpec, solve: ODESolveConfig) -> Callable:
    """The compiled inference of a model and a solve configuration: ``(params, X) ->
    (log_proba, counts)``, ``counts[i] = [nfe_forward, n_steps, n_rejected, result
    code, finite]`` of row ``i``.

    Each row is solved alone (``vmap`` of a one-row solve): under ``vmap`` diffrax's
    loop runs until every row is done, but each row keeps its own step size and
    controller state, so its result does not depend on the others.
    """
    model = _ODENet(model_spec)

    def one_row(params, x):
        logits, info = model.logits(params, x[None], solve)
        counts = jnp.stack([info.nfe_forward, info.n_steps, info.n_rejected, info.code,
                            jnp.all(jnp.isfinite(logits))]).astype(jnp.int32)
        return log_softmax(logits)[0], counts

    def rows(params, X):
        TRACE_COUNTS["predict"] += 1
        return jax.vmap(one_row, in_axes=(None, 0))(params, X)

    return jax.jit(rows)


def _bucket(n: int) -> int:
    """The padded number of rows of a chunk of ``n <= _MAX_ROWS`` rows."""
    return max(_MIN_ROWS, 1 << (n - 1).bit_length())


# ---------------------------------------------------------------------- the program


class ODENetProgram:
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``.

    The training state is ``{"params": dict of JAX arrays, "opt": optax's Adam state}``;
    ``step`` returns a new one (JAX arrays are immutable).
    """

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.np_dtype = np.dtype(spec.dtype)
        self.names = tuple(spec.param_shapes())

    def _precision(self) -> contextlib.AbstractContextManager:
        """64-bit JAX for a float64 model, in this thread and for this call only.

        JAX computes in float32 unless ``jax_enable_x64`` is set, which the program
        leaves to the user; a float64 model (one fitted on the reference engine, say)
        still runs in float64, and its compilations are those of 64-bit JAX.
        """
        if self.np_dtype == np.float64:
            return jax.enable_x64(True)
        return contextlib.nullcontext()

    def _arrays(self, params: dict[str, Any], copy: bool = False) -> dict[str, jax.Array]:
        # On CPU, jnp.asarray may share the NumPy array's memory; a training state must
        # not see later changes of the caller's arrays (copy).
        convert = jnp.array if copy else jnp.asarray
        return {k: convert(np.asarray(params[k], dtype=self.np_dtype)) for k in self.names}

    # --------------------------------------------------------------- training

    def init(self, params: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
        self.spec.check_params(params)
        with self._precision():
            arrays = self._arrays(params, copy=True)
            return {"params": arrays, "opt": _adam(self.spec.optimizer).init(arrays)}

    def step(self, state: dict[str, Any], batch: tuple[np.ndarray, np.ndarray]):
        X, y = batch
        X = np.asarray(X, dtype=self.np_dtype)
        y = np.asarray(y, dtype=np.int32)
        with self._precision():
            params, opt, metrics = _train_step(self.spec)(state["params"], state["opt"],
                                                          X, y)
            loss, nfe, code, t, nfe_bwd, code_bwd, t_bwd = np.asarray(metrics).tolist()
        if code:
            raise _solver_error(int(code), self.spec.solve, "the training solve", t=t)
        if code_bwd:
            raise _solver_error(int(code_bwd), self.spec.solve,
                                "the adjoint's backward solve", t=t_bwd)
        adjoint = self.spec.solve.adjoint is not None
        metrics = {"loss": float(loss), "nfe_forward": int(nfe),
                   "nfe_backward": int(nfe_bwd) if adjoint else None}
        return {"params": params, "opt": opt}, metrics

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        host = jax.device_get(state["params"])
        return {k: np.array(host[k]) for k in self.names}

    # -------------------------------------------------------------- inference

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray, solve: ODESolveConfig):
        """Log-probabilities; each input is solved alone, with its own adaptive steps.

        Rows go in chunks padded to a few sizes (with copies of their first row, whose
        results are dropped), so that predicting on many batch sizes compiles a few
        functions; a row's result does not depend on the other rows of its chunk.
        """
        self.spec.check_params(params)
        X = np.asarray(X, dtype=self.np_dtype)
        n = X.shape[0]
        if n == 0:
            empty = {k: np.zeros(0, dtype=np.int64)
                     for k in ("nfe_forward", "n_steps", "n_rejected")}
            return np.zeros((0, self.spec.n_outputs), dtype=self.np_dtype), empty
        # The solve's adjoint plays no part in inference: one compilation for both.
        model_spec = dataclasses.replace(self.spec, solve=None, optimizer=None)
        rows = _predict_rows(model_spec, dataclasses.replace(solve, adjoint=None))
        sizes, pending = [], []
        with self._precision():
            arrays = self._arrays(params)
            for start in range(0, n, _MAX_ROWS):
                chunk = X[start : start + _MAX_ROWS]
                pad = np.repeat(chunk[:1], _bucket(len(chunk)) - len(chunk), axis=0)
                sizes.append(len(chunk))
                pending.append(rows(arrays, np.concatenate([chunk, pad])))
            host = jax.device_get(pending)  # one wait for every chunk
        log_proba = np.concatenate([out[:m] for m, (out, _) in zip(sizes, host, strict=True)])
        counts = np.concatenate([c[:m] for m, (_, c) in zip(sizes, host, strict=True)])
        counts = counts.astype(np.int64)
        failed = np.flatnonzero((counts[:, 3] != 0) | (counts[:, 4] == 0))
        if failed.size:
            i = failed[0]
            code = int(counts[i, 3])
            also = f" ({failed.size} of {n} rows failed)" if failed.size > 1 else ""
            if code:
                raise _solver_error(code, solve, f"the solve of row {i}", also)
            raise SolverError(f"the solve of row {i} gave a non-finite state{also}",
                              reason="non_finite", t=float("nan"))
        stats = {"nfe_forward": counts[:, 0], "n_steps": counts[:, 1],
                 "n_rejected": counts[:, 2]}
        return np.array(log_proba, dtype=self.np_dtype), stats


def _solver_error(code: int, solve: ODESolveConfig, what: str, also: str = "",
                  t: float = float("nan")) -> SolverError:
    """``SolverError`` of a result code of the engine's solve (not 0)."""
    reason, message = failure_reason(code, split_config(solve)[0])
    where = "" if np.isnan(t) else f" at t={t:.6g}"
    return SolverError(f"{what} failed: {message}{where}{also}", reason=reason, t=t)
