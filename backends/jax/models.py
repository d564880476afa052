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

Errors. A failed solve raises ``SolverError``, as on the other engines: the step reads
the forward solve's diffrax result code (:func:`~odeplug_backends.jax.solve.odeint_result`),
and turns the runtime error of the adjoint's backward solve, which diffrax raises under
``jit``, into one. Neither says where the solve stopped (``t`` is NaN).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from odeplug._protocols import empty_row_stats
from odeplug._solver_options import ODESolveConfig
from odeplug._specs import Hyper, ODENetSpec
from odeplug.exceptions import SolverError

from .nn import ACTIVATIONS, dense, log_softmax, mlp_field
from .solve import failure_reason, odeint_result

__all__ = ["make_program", "ODENetProgram"]

# How often each kind of compiled function was traced (tracing precedes every
# compilation): the tests read it to check that equal specs share compilations.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

# Inference solves rows in chunks of a fixed size, padded with copies of a row whose
# results are dropped: one compilation serves every number of rows (scikit-learn predicts
# on many sizes; each compilation costs seconds), and under vmap every row of a chunk
# computes until its slowest row is done, which bounds the chunk.
_CHUNK_ROWS = 64


def make_program(spec: Any):
    if isinstance(spec, ODENetSpec):
        return ODENetProgram(spec)
    raise NotImplementedError(f"the jax engine has no program for {type(spec).__name__}")


def solve_key(solve: ODESolveConfig) -> ODESolveConfig:
    """The part of a solve configuration that changes the compiled computation."""
    return solve


def _traced_values(hyper: Hyper) -> dict[str, np.ndarray]:
    """Every value of ``hyper`` as a 0-d array of the compiled function's inputs."""
    return {name: np.asarray(value) for name, value in hyper.values().items()}


# ------------------------------------------------------------------------ the model


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
    hyperparameters (``Hyper.values()``): a new learning rate, ``alpha`` or ``t1`` reuses
    the compilation."""
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
        # optax.adam is scale_by_adam then a scale by -learning_rate; written so, the
        # step size and Adam's constants are traced values, not compiled constants.
        adam = optax.scale_by_adam(b1=values["beta1"], b2=values["beta2"],
                                   eps=values["epsilon"])
        updates, opt_state = adam.update(grads, opt_state, params)
        params = jax.tree.map(lambda p, u: p - values["learning_rate"].astype(p.dtype) * u,
                              params, updates)
        # Counts are exact in float32 up to 2**24 evaluations.
        metrics = jnp.stack([loss, nfe.astype(loss.dtype), code.astype(loss.dtype)])
        return params, opt_state, metrics

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def _predict_rows(spec: ODENetSpec, solve: ODESolveConfig) -> Callable:
    """The compiled inference of a model and a solver: ``(params, X, values) ->
    (log_proba, counts)``, ``counts[i] = [nfe_forward, n_steps, n_rejected, result
    code, finite]`` of row ``i``.

    Each row is solved alone (``vmap`` of a one-row solve): under ``vmap`` diffrax's
    loop runs until every row is done, but each row keeps its own step size and
    controller state, so its result does not depend on the others.
    """
    model = _ODENet(spec)

    def one_row(params, x, values):
        logits, stats, code = model.logits(params, x[None], values["t1"], solve)
        counts = jnp.stack([stats.nfe_forward, stats.n_steps, stats.n_rejected, code,
                            jnp.all(jnp.isfinite(logits))]).astype(jnp.int32)
        return log_softmax(logits)[0], counts

    def rows(params, X, values):
        TRACE_COUNTS["predict"] += 1
        return jax.vmap(one_row, in_axes=(None, 0, None))(params, X, values)

    return jax.jit(rows)


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

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        with self._precision():
            arrays = self._arrays(params, copy=True)
            return {"params": arrays, "opt": optax.scale_by_adam().init(arrays)}

    def _run_step(self, state, batch, hyper: Hyper):
        X, y = batch
        X = np.asarray(X, dtype=self.np_dtype)
        y = np.asarray(y, dtype=np.int32)
        step = _train_step(self.spec, solve_key(hyper.solve))
        try:
            with self._precision(), _quiet_callback_errors():
                params, opt, metrics = step(state["params"], state["opt"], X, y,
                                            _traced_values(hyper))
                loss, nfe, code = np.asarray(metrics).tolist()  # waits for the step
        except (jax.errors.JaxRuntimeError, ValueError) as error:
            # With the adjoint, diffrax's backward solve raises under jit (throw=True);
            # after a failed forward solve, it fails too, and raises first.
            solver_error = _runtime_solver_error(error, hyper.solve)
            if solver_error is None:
                raise
            raise solver_error from error
        if code:
            raise _solver_error(int(code), hyper.solve, "the training solve")
        metrics = {"loss": float(loss), "nfe_forward": int(nfe), "nfe_backward": None}
        return {"params": params, "opt": opt}, metrics

    def step(self, state: dict[str, Any], batch: tuple[np.ndarray, np.ndarray], hyper: Hyper):
        return self._run_step(state, batch, hyper)

    def evaluate(self, state: dict[str, Any], batch, hyper: Hyper) -> dict[str, float]:
        # The step's own compilation with a zero step size, its new state dropped: the
        # loss of the state's parameters costs no compilation of its own.
        _, metrics = self._run_step(state, batch, dataclasses.replace(hyper, learning_rate=0.0))
        return metrics

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        host = jax.device_get(state["params"])
        return {k: np.array(host[k]) for k in self.names}

    # -------------------------------------------------------------- inference

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray, hyper: Hyper):
        """Log-probabilities; each input is solved alone, with its own adaptive steps.

        Rows go in chunks of a fixed size, the last one padded with copies of its first
        row, whose results are dropped; a row's result does not depend on the other rows
        of its chunk.
        """
        self.spec.check_params(params)
        X = np.asarray(X, dtype=self.np_dtype)
        n = X.shape[0]
        if n == 0:
            return np.zeros((0, self.spec.n_outputs), dtype=self.np_dtype), empty_row_stats()
        # The solve's adjoint plays no part in inference: one compilation for both.
        solve = dataclasses.replace(hyper.solve, adjoint=None)
        rows = _predict_rows(self.spec, solve_key(solve))
        values = _traced_values(hyper)
        pending = []
        with self._precision():
            arrays = self._arrays(params)
            for start in range(0, n, _CHUNK_ROWS):
                chunk = X[start : start + _CHUNK_ROWS]
                pad = np.repeat(chunk[:1], _CHUNK_ROWS - len(chunk), axis=0)
                pending.append(rows(arrays, np.concatenate([chunk, pad]), values))
            host = jax.device_get(pending)  # one wait for every chunk
        log_proba = np.concatenate([out for out, _ in host])[:n]
        counts = np.concatenate([c for _, c in host])[:n].astype(np.int64)
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


def _solver_error(code: int, solve: ODESolveConfig, what: str, also: str = "") -> SolverError:
    """``SolverError`` of a diffrax result code (not 0)."""
    reason, message = failure_reason(code)
    if reason == "max_num_steps":
        message = f"max_num_steps={solve.max_num_steps} exceeded"
    # diffrax does not say where a failed solve stopped: t is NaN.
    return SolverError(f"{what} failed: {message}{also}", reason=reason, t=float("nan"))


class _DropEquinoxErrors(logging.Filter):
    """Drops JAX's log of a failed callback when it is equinox's runtime error (which
    the program turns into a ``SolverError``), as ``equinox.filter_jit`` does."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "_EquinoxRuntimeError"


@contextlib.contextmanager
def _quiet_callback_errors():
    logger = logging.getLogger("jax._src.callback")
    drop = _DropEquinoxErrors()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _runtime_solver_error(error: Exception, solve: ODESolveConfig) -> SolverError | None:
    """A ``SolverError`` for diffrax's runtime error under ``jax.jit`` (an XLA error
    that carries equinox's message), else None."""
    marker = "_EquinoxRuntimeError: "
    text = str(error)
    if marker not in text:
        return None
    message = text.split(marker, 1)[1].strip().splitlines()[0]
    code = next((i for i, known in enumerate(diffrax.RESULTS._index_to_message)
                 if i and known.splitlines()[0] == message), None)
    if code is None:
        return SolverError(f"the training solve failed: {message}", reason="unknown",
                           t=float("nan"))
    return _solver_error(code, solve, "the training solve (forward or adjoint)")
