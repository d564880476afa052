"""What the model families' programs share on the JAX engine.

Compilation. A training step (forward solve, gradient, Adam update) is one ``jax.jit``
function per family, and so is each inference entry point. The estimator builds a new
program for every fit and prediction, so the compiled functions are not kept on the
program but cached at module level (``functools.lru_cache`` of each family's builder),
keyed by the architecture (the frozen spec) and the static part of the solver
(:func:`solve_key`). Everything else of a :class:`~odeplug._specs.Hyper` (learning
rate, ``alpha``, ``t1``, tolerances, regulariser weights) is a traced input
(:func:`traced_values`): a refit, a clone in a grid search or a second estimator with
other values reuses the compilation. The training loop gives every batch of a fit one
size, so a fit compiles its step once; inference solves rows in chunks of
:data:`CHUNK_ROWS`, so it compiles once whatever the number of rows.

Errors. A failed solve raises :class:`~odeplug.SolverError`, as on the other engines:
compiled functions return diffrax's result codes, which :func:`run_step` and
:func:`rows_in_chunks` turn into errors on the host.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from odeplug._protocols import ROW_COUNTERS
from odeplug._solver_options import ODESolveConfig
from odeplug._specs import Hyper, ODENetSpec
from odeplug.exceptions import SolverError

from .solve import failure_reason

__all__ = [
    "CHUNK_ROWS",
    "TRACE_COUNTS",
    "adam_init",
    "adam_update",
    "as_arrays",
    "make_program",
    "precision",
    "row_counts",
    "rows_in_chunks",
    "run_step",
    "solve_key",
    "traced_values",
]

# How often each kind of compiled function was traced (tracing precedes every
# compilation): the tests read it to check that compilations are shared.
TRACE_COUNTS: collections.Counter[str] = collections.Counter()

# Inference solves rows in chunks of this size, padded with copies of a row whose results
# are dropped: one compilation serves every number of rows (scikit-learn predicts on many
# sizes, and each compilation costs seconds), and under vmap every row of a chunk
# computes until its slowest row is done, which bounds the chunk.
CHUNK_ROWS = 64


def make_program(spec: Any):
    """The JAX engine's program of a model spec."""
    if isinstance(spec, ODENetSpec):
        from .odenet import ODENetProgram

        return ODENetProgram(spec)
    raise NotImplementedError(f"the jax engine has no program for {type(spec).__name__}")


def solve_key(solve: ODESolveConfig) -> ODESolveConfig:
    """The part of a solve configuration that changes the compiled computation."""
    return solve


def traced_values(hyper: Hyper, dtype) -> dict[str, np.ndarray]:
    """Every value of ``hyper`` as a 0-d array of the model's dtype: inputs of the
    compiled functions. (A float64 array would promote a float32 model to float64 under
    ``jax_enable_x64``, where Python floats, weakly typed, would not.)"""
    return {name: np.asarray(value, dtype=dtype) for name, value in hyper.values().items()}


def precision(dtype: np.dtype) -> contextlib.AbstractContextManager:
    """64-bit JAX for a float64 model, in this thread and for this call only.

    JAX computes in float32 unless ``jax_enable_x64`` is set, which the programs leave
    to the user; a float64 model (one fitted on the reference engine, say) still runs in
    float64, and its compilations are those of 64-bit JAX.
    """
    if np.dtype(dtype) == np.float64:
        return jax.enable_x64(True)
    return contextlib.nullcontext()


def as_arrays(params: dict[str, Any], names, dtype, copy: bool = False) -> dict[str, jax.Array]:
    """JAX arrays of canonical parameters. On CPU, ``jnp.asarray`` may share the NumPy
    array's memory: a training state must not see later changes of the caller's arrays
    (``copy``)."""
    convert = jnp.array if copy else jnp.asarray
    return {k: convert(np.asarray(params[k], dtype=dtype)) for k in names}


def adam_init(params: dict[str, jax.Array]):
    return optax.scale_by_adam().init(params)


def adam_update(params, grads, opt_state, values):
    """One Adam step with traced settings: ``optax.adam`` is ``scale_by_adam`` then a
    scale by ``-learning_rate``; written so, the step size and Adam's constants are
    traced values, not compiled constants."""
    adam = optax.scale_by_adam(b1=values["beta1"], b2=values["beta2"], eps=values["epsilon"])
    updates, opt_state = adam.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - values["learning_rate"].astype(p.dtype) * u,
                          params, updates)
    return params, opt_state


def run_step(compiled: Callable, dtype, solve: ODESolveConfig, *args):
    """Call a compiled training step whose last output is a metrics vector ending with a
    diffrax result code; returns ``(outputs, metrics as floats)`` or raises
    ``SolverError``."""
    try:
        with precision(dtype), _quiet_callback_errors():
            *outputs, metrics = compiled(*args)
            metrics = np.asarray(metrics).tolist()  # waits for the step
    except (jax.errors.JaxRuntimeError, ValueError) as error:
        # With the adjoint, diffrax's backward solve raises under jit (throw=True);
        # after a failed forward solve, it fails too, and raises first.
        solver_error = _runtime_solver_error(error, solve)
        if solver_error is None:
            raise
        raise solver_error from error
    code = int(metrics[-1])
    if code:
        raise solver_error_of(code, solve, "the training solve")
    return outputs, metrics[:-1]


def row_counts(stats, code, *finite) -> jax.Array:
    """The per-row vector :func:`rows_in_chunks` reads: ``[nfe_forward, n_steps,
    n_rejected, result code, all outputs finite]``."""
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in finite]))
    return jnp.stack([stats.nfe_forward, stats.n_steps, stats.n_rejected, code, ok]
                     ).astype(jnp.int32)


def rows_in_chunks(compiled: Callable, params: dict[str, jax.Array], rows: np.ndarray,
                   values: dict, solve: ODESolveConfig, dtype):
    """Run a compiled row-wise inference ``compiled(params, rows, values) -> (outputs,
    counts)`` on chunks of :data:`CHUNK_ROWS` rows; returns the outputs (NumPy, a pytree
    like the compiled function's) and the per-row counters, or raises ``SolverError``
    for the first failed row.

    The last chunk is padded with copies of its first row, whose results are dropped;
    a row's result does not depend on the other rows of its chunk.
    """
    n = rows.shape[0]
    pending = []
    with precision(dtype):
        for start in range(0, n, CHUNK_ROWS):
            chunk = rows[start : start + CHUNK_ROWS]
            pad = np.repeat(chunk[:1], CHUNK_ROWS - len(chunk), axis=0)
            pending.append(compiled(params, np.concatenate([chunk, pad]), values))
        host = jax.device_get(pending)  # one wait for every chunk
    outputs = jax.tree.map(lambda *parts: np.concatenate(parts)[:n],
                           *[out for out, _ in host])
    counts = np.concatenate([c for _, c in host])[:n].astype(np.int64)
    failed = np.flatnonzero((counts[:, 3] != 0) | (counts[:, 4] == 0))
    if failed.size:
        i = failed[0]
        code = int(counts[i, 3])
        also = f" ({failed.size} of {n} rows failed)" if failed.size > 1 else ""
        if code:
            raise solver_error_of(code, solve, f"the solve of row {i}", also)
        raise SolverError(f"the solve of row {i} gave a non-finite state{also}",
                          reason="non_finite", t=float("nan"))
    return outputs, {name: counts[:, j] for j, name in enumerate(ROW_COUNTERS)}


def solver_error_of(code: int, solve: ODESolveConfig, what: str, also: str = "") -> SolverError:
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
    return solver_error_of(code, solve, "the training solve (forward or adjoint)")
