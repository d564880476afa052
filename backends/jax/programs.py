"""What the model families' programs share on the JAX engine.

Compilation. A training step (forward solve, gradient, Adam update) is one ``jax.jit``
function per family, and so is each inference entry point. The estimator builds a new
program for every fit and prediction, so the compiled functions are not kept on the
program but cached at module level (``functools.lru_cache`` of each family's builder),
keyed by the architecture (the frozen spec) and the static part of the solver
(:func:`solve_key`: solver, adjoint, step budget). Everything else is a traced input:
the floats of a :class:`~odeplug._specs.Hyper` (learning rate, ``alpha``, ``t1``,
regulariser weights: :func:`traced_values`) and the tolerances (:func:`solve_values`),
so a refit, a clone in a grid search or a second estimator with other values reuses the
compilation. The training loop gives every batch of a fit one size, so a fit compiles
its step once; inference solves rows in chunks of :data:`CHUNK_ROWS`, so it compiles
once whatever the number of rows.

Devices. The estimators run every program call inside the engine's
``device_scope(device)`` (:func:`placed_on`): ``jax.default_device`` puts the arrays and
computations of the programs on the first device of the platform, with no device code in
the families. Data parallel: there, :func:`run_step` shards a training step's batch over
all of the platform's devices when it has several (a 1-D mesh, axis ``"batch"``;
parameters, optimiser state and values replicated), and XLA partitions the compiled step
(the solver's error norm and the gradients become sums over devices), so the result is
that of one device up to the order of floating-point sums. A batch whose rows do not
divide by the device count runs on the largest number of devices that divides it
(padding would change the loss's mean; a warning says so, once).
``odeplug.set_config(data_parallel=False)`` keeps steps on one device. Inference stays
on one device: its per-row solves loop until the slowest row of a chunk is done, which
sharding would turn into a synchronisation of every device per step.

Errors. Nothing raises inside a compiled function: solves report odeplug's result codes
and the time reached (forward: ``SolveInfo``; the adjoint's backward solves: the gradient
of a probe, ``BackwardInfo``), which :func:`run_step` and :func:`rows_in_chunks` turn
into :class:`~odeplug.SolverError` on the host, worded as on the other engines.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from odeplug._protocols import ROW_COUNTERS
from odeplug._solver_options import ODESolveConfig
from odeplug._specs import Hyper
from odeplug.exceptions import SolverError

from .solve import (
    BackwardInfo,
    SolveInfo,
    SolveStatic,
    SolveValues,
    backward_info,
    backward_probe,
    backward_solver_error,
    failure_reason,
    row_solver_error,
    split_config,
)

__all__ = [
    "CHUNK_ROWS",
    "ParamsProgram",
    "TRACE_COUNTS",
    "adam_init",
    "adam_update",
    "as_arrays",
    "batch_positions",
    "placed_on",
    "platform_devices",
    "precision",
    "rows_in_chunks",
    "run_step",
    "shard_batch",
    "solve_key",
    "solve_values",
    "step_devices",
    "step_status",
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


_placement = threading.local()  # the devices of this thread's scope
_warned_uneven: set[tuple[int, int]] = set()


@functools.cache
def platform_devices(platform: str) -> tuple:
    """The devices of a JAX platform (``"cpu"``, ``"gpu"``); empty where it has none."""
    try:
        return tuple(jax.devices(platform))
    except RuntimeError:  # jax's "Unknown backend" for a platform it was not built with
        return ()


@contextlib.contextmanager
def placed_on(platform: str) -> Iterator[Any]:
    """Inside the block, the programs' arrays and computations are on the first device of
    ``platform`` (``jax.default_device``) and training steps are data parallel over all
    its devices (:func:`step_devices`), unless ``data_parallel`` is off in odeplug's
    configuration."""
    from odeplug import get_config

    devices = platform_devices(platform)
    if not devices:
        raise RuntimeError(f"jax has no {platform!r} platform")
    previous = step_devices()
    _placement.devices = devices if get_config()["data_parallel"] else devices[:1]
    try:
        with jax.default_device(devices[0]):
            yield devices[0]
    finally:
        _placement.devices = previous


def step_devices() -> tuple:
    """The devices a training step of this thread is sharded over (:func:`placed_on`);
    empty outside any scope (one device, JAX's default)."""
    return getattr(_placement, "devices", ())


def batch_positions(args: tuple) -> tuple[int, ...]:
    """Which arguments of a training step are its batch: the NumPy arrays (the programs
    pass the batch as it came from the training loop) of at least one axis whose first
    axis has the length of the first of them. Parameters and optimiser state are JAX
    arrays and values are 0-d or in containers: replicated."""
    rows = None
    found = []
    for i, arg in enumerate(args):
        if isinstance(arg, np.ndarray) and arg.ndim >= 1:
            if rows is None:
                rows = arg.shape[0]
            if arg.shape[0] == rows:
                found.append(i)
    return tuple(found)


@functools.lru_cache(maxsize=16)
def _shardings(devices: tuple) -> tuple[NamedSharding, NamedSharding]:
    mesh = Mesh(np.array(devices), ("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())


def shard_batch(args: tuple, batch: tuple[int, ...] | None = None) -> tuple:
    """The arguments of a training step placed for data parallelism over
    :func:`step_devices`: the arguments at ``batch`` (default :func:`batch_positions`)
    split along their first axis, the others replicated. Unchanged with fewer than two
    devices. Rows that do not divide by the device count go to the largest number of
    devices that divides them (a warning, once per rows and devices)."""
    devices = step_devices()
    if len(devices) < 2:
        return args
    batch = batch_positions(args) if batch is None else tuple(batch)
    if not batch:
        return args
    rows = int(np.shape(args[batch[0]])[0])
    used = max(k for k in range(1, len(devices) + 1) if rows % k == 0)
    if used < len(devices) and (rows, len(devices)) not in _warned_uneven:
        _warned_uneven.add((rows, len(devices)))
        warnings.warn(
            f"data parallel training: a batch of {rows} rows does not divide over "
            f"{len(devices)} devices; its steps run on {used} of them. Choose a batch_size "
            f"that is a multiple of {len(devices)} to use them all.", UserWarning,
            stacklevel=2)
    if used == 1:
        return args
    split, whole = _shardings(devices[:used])
    return tuple(jax.device_put(arg, split if i in batch else whole)
                 for i, arg in enumerate(args))


class ParamsProgram:
    """What every family's program shares: the training state ``{"params": dict of JAX
    arrays, "opt": optax's Adam state}`` made from canonical parameters, and canonical
    NumPy parameters read back from it. A family adds ``step``, ``evaluate`` and its
    inference entry points."""

    def __init__(self, spec: Any):
        self.spec = spec
        self.np_dtype = np.dtype(spec.dtype)
        self.names = tuple(spec.param_shapes())

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        with precision(self.np_dtype):
            arrays = as_arrays(params, self.names, self.np_dtype, copy=True)
            return {"params": arrays, "opt": adam_init(arrays)}

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        host = jax.device_get(state["params"])
        return {k: np.array(host[k]) for k in self.names}


def solve_key(solve: ODESolveConfig) -> SolveStatic:
    """The part of a solve configuration that changes the compiled computation (the rest
    is :func:`solve_values`)."""
    return split_config(solve)[0]


def solve_values(solve: ODESolveConfig, dtype) -> SolveValues:
    """Tolerances, fixed step size and first step: traced inputs, in the model's dtype."""
    return SolveValues(*(np.asarray(v, dtype=dtype) for v in split_config(solve)[1]))


def traced_values(hyper: Hyper, dtype) -> dict[str, np.ndarray]:
    """Every float of ``hyper`` as a 0-d array of the model's dtype: inputs of the
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


def probe(dtype) -> jax.Array:
    """The adjoint's probe of a training step (see ``solve.backward_probe``)."""
    return backward_probe(dtype)


def step_status(info: SolveInfo, probe_gradient: jax.Array | None = None) -> jax.Array:
    """``[code, t_reached, nfe_backward, backward code, backward t_reached]`` of a
    training step's solve, what :func:`run_step` reads (backward zeros without the
    adjoint)."""
    backward = backward_info(probe_gradient if probe_gradient is not None
                             else jnp.zeros(3, info.t_reached.dtype))
    return jnp.stack([info.code.astype(info.t_reached.dtype), info.t_reached,
                      backward.nfe_backward.astype(info.t_reached.dtype),
                      backward.code.astype(info.t_reached.dtype), backward.t_reached])


def run_step(compiled: Callable, dtype, solve: ODESolveConfig, *args,
             batch: tuple[int, ...] | None = None):
    """Call a compiled training step returning ``(*outputs, metrics, status)``:
    ``metrics`` a dict of scalars, ``status`` from :func:`step_status`. Returns
    ``(outputs, metrics as Python floats)`` with ``nfe_backward`` set (None without the
    adjoint), or raises ``SolverError`` for a failed forward, then backward, solve.

    Data parallel where the scope has several devices (:func:`shard_batch`): ``batch``
    names the positions of the batch's arguments (default: :func:`batch_positions`)."""
    with precision(dtype):
        args = shard_batch(args, batch)
        *outputs, metrics, status = compiled(*args)
        metrics, status = jax.device_get((metrics, status))  # waits for the step
    static = solve_key(solve)
    code, t_reached, nfe_backward, backward_code, backward_t = np.asarray(status).tolist()
    if code:
        reason, message = failure_reason(int(code), static)
        raise SolverError(f"the training solve failed: {message} at t={t_reached:.6g}",
                          reason=reason, t=t_reached)
    if backward_code:
        raise backward_solver_error(
            BackwardInfo(nfe_backward, int(backward_code), backward_t), static)
    metrics = {name: float(value) for name, value in metrics.items()}
    metrics["nfe_backward"] = int(nfe_backward) if static.adjoint else None
    return outputs, metrics


def rows_in_chunks(compiled: Callable, params: dict[str, jax.Array], rows: tuple,
                   values: tuple, solve: ODESolveConfig, times: np.ndarray):
    """Run a compiled row-wise inference ``compiled(params, *rows, *values) -> (outputs,
    ys, info)`` (``ys`` the states at ``times``, ``info`` a per-row ``SolveInfo``) on
    chunks of :data:`CHUNK_ROWS` rows, in :data:`~odeplug._protocols.INFERENCE_DTYPE`.

    ``rows`` are arrays with one entry per row; ``times`` the solve's times, shared
    ``(T,)`` or per row ``(n, T)`` (for the error message only). Returns the outputs
    (NumPy, a pytree like the compiled function's) and the per-row counters, or raises
    the ``SolverError`` of the first failed row (``"row i: ..."``): its reason, time
    reached and solution so far, as ``odeint`` on that row alone. The last chunk is
    padded with copies of its first row, whose results are dropped.
    """
    n = rows[0].shape[0]
    pending = []
    with precision(np.float64):
        for start in range(0, n, CHUNK_ROWS):
            chunk = [r[start : start + CHUNK_ROWS] for r in rows]
            fill = CHUNK_ROWS - len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[:1], fill, axis=0)]) for c in chunk]
            pending.append(compiled(params, *chunk, *values))
        host = jax.device_get(pending)  # one wait for every chunk
    outputs = jax.tree.map(lambda *parts: np.concatenate(parts)[:n],
                           *[out for out, _, _ in host])
    info = SolveInfo(*(np.concatenate(parts)[:n] for parts in
                       zip(*[i for _, _, i in host], strict=True)))
    failed = np.flatnonzero(info.code != 0)
    if failed.size:
        row = int(failed[0])
        chunk, offset = divmod(row, CHUNK_ROWS)
        ys = host[chunk][1]
        chunk_info = host[chunk][2]
        times = np.asarray(times)
        t = times if times.ndim == 1 else times[chunk * CHUNK_ROWS :][:CHUNK_ROWS]
        # As the reference and torch engines word it: the first failed row.
        raise row_solver_error(t, ys, chunk_info, offset, solve_key(solve), f"row {row}: ")
    return outputs, {name: np.asarray(getattr(info, name), dtype=np.int64)
                     for name in ROW_COUNTERS}
