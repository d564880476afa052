"""odeint on JAX: diffrax's ``diffeqsolve`` loop with odeplug's numerics.

diffrax runs the loop (steps, dense output at the requested times, ``vmap`` and
backpropagation through the solver); the numbers are odeplug's, written once in the core
and handed to diffrax through its public interfaces. This module is the engine's entry
point (:func:`odeint`, :func:`odeint_traced`, :func:`odeint_rows`, and what the
engine's programs import); the parts live along diffrax's own lines:

* :mod:`._solver`: every tableau of ``odeplug._tableaus`` as a ``diffrax.AbstractERK``,
  with the reference engine's dense output;
* :mod:`._controller`: the PI controller and the fixed grid on diffrax's
  ``AbstractStepSizeController`` interface, made of ``odeplug._stepping``, and Hairer's
  first step, computed here and handed to the controller (``diffeqsolve(dt0=None)``:
  a traced ``dt0`` would cost a host callback, see :mod:`._controller`);
* :mod:`._results`: odeplug's result codes, :class:`SolveInfo`, :class:`BackwardInfo`,
  the probe, and the ``SolverError`` of a failed solve;
* :mod:`._layout`: :class:`SolveStatic` / :class:`SolveValues` (:func:`split_config`)
  and the flattening of ``args`` into parameters, constants and statics;
* :mod:`._forward`: the forward solve;
* :mod:`._adjoint`: odeplug's own adjoint (Chen et al. 2018, Algorithm 1) as a
  ``jax.custom_vjp``; without it, backpropagation through diffrax's loop.

Failures never raise inside a compiled function: every solve runs with ``throw=False``
and reports odeplug's result code (:data:`REASONS`), the time reached and the number of
outputs reached (:class:`SolveInfo`); the backward solves report theirs as the cotangent
of a *probe* input (:func:`backward_probe`, :class:`BackwardInfo`). :func:`odeint` turns
them into a ``SolverError`` on concrete inputs, and into equinox's runtime error under a
transformation.

Compilation. What changes the computation is static (:class:`SolveStatic`: solver,
adjoint, seminorm, ``max_num_steps``, controller constants; diffrax needs ``max_steps``
static, it sizes the loop's buffers); tolerances, the fixed step size and the first
step are traced values (:class:`SolveValues`), so a jitted caller compiles once per
architecture, whatever the tolerances (:func:`split_config`, :func:`odeint_traced`).

The only private touch of diffrax is in :mod:`._compat` (the solver state that hands
``f(t0, y0)`` to an FSAL method, so that evaluations are counted exactly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from odeplug._protocols import ROW_COUNTERS
from odeplug._solver_options import ODESolveConfig, ODEStats
from odeplug._validation import check_initial_state, check_row_time_grids, check_time_grid

from ._adjoint import adjoint_problem, solve_adjoint
from ._controller import Norm, controller
from ._forward import CheckedField, forward
from ._layout import (
    Layout,
    SolveStatic,
    SolveValues,
    as_arrays,
    split_config,
    stop_gradient_constants,
)
from ._results import (
    REASONS,
    BackwardInfo,
    SolveInfo,
    backward_info,
    backward_probe,
    backward_solver_error,
    failure_reason,
    messages,
    row_solver_error,
    solver_error,
)
from ._solver import SOLVERS

__all__ = [
    "REASONS",
    "BackwardInfo",
    "SolveInfo",
    "SolveStatic",
    "SolveValues",
    "backward_info",
    "backward_probe",
    "backward_solver_error",
    "diffeqsolve_arguments",
    "failure_reason",
    "odeint",
    "odeint_rows",
    "odeint_rows_traced",
    "odeint_traced",
    "row_solver_error",
    "solver_error",
    "split_config",
]


def diffeqsolve_arguments(config: ODESolveConfig) -> dict[str, Any]:
    """``solver``, ``stepsize_controller`` and ``max_steps`` of ``diffrax.diffeqsolve``
    for a configuration: a hand-written ``diffeqsolve`` with them (``dt0=None``) takes
    the steps of :func:`odeint` (benchmarks compare like with like). Its NFE is one more
    than odeint's: it does not share ``f(t0, y0)`` between Hairer's step and the solver.
    """
    static, values = split_config(config)
    return {
        "solver": SOLVERS[config.solver],
        "stepsize_controller": controller(static, values.rtol, values.atol, Norm()),
        "max_steps": config.max_num_steps,
    }


def _solve(func: Callable, y0, t, layout: Layout, leaves: list, static: SolveStatic,
           values: SolveValues, probe, raise_errors: bool):
    """The solve of :func:`odeint_traced` on flattened args; ``raise_errors``: a
    failed backward solve raises (:func:`odeint`)."""
    field = CheckedField(func)
    if not static.adjoint:
        args = layout.unflatten(stop_gradient_constants(layout, leaves))
        return forward(field, y0, t, args, static, values)
    problem, params, constants = adjoint_problem(field, layout, leaves, y0, t[0], static,
                                                 raise_errors)
    if probe is None:
        probe = backward_probe(y0.dtype)
    return solve_adjoint(problem, y0, t, params, constants, values, probe)


def _check_traced_inputs(y0, t) -> None:
    """What shapes and dtypes show of the inputs (stand-ins of traced values)."""
    check_initial_state(np.broadcast_to(np.zeros((), y0.dtype), y0.shape))
    check_time_grid(np.arange(t.size).astype(t.dtype).reshape(t.shape))


def odeint_traced(func: Callable, y0: Any, t: Any, args: Any, static: SolveStatic,
                  values: SolveValues, *, probe: jax.Array | None = None
                  ) -> tuple[jax.Array, SolveInfo]:
    """:func:`odeint` for compiled callers: nothing raises, failures come as codes.

    Call it inside ``jax.jit`` with ``static`` closed over (or a static argument) and
    ``values`` traced: changing tolerances or the step size then neither retraces nor
    recompiles.

    Parameters
    ----------
    func : callable
        ``func(t, y, args) -> dy/dt`` in JAX operations.
    y0 : array
        Initial state, floating.
    t : 1-D array
        Output times, strictly monotonic (checked by shape only), cast to ``y0``'s dtype.
    args : pytree
        Parameters of ``func``; leaves wrapped in ``odeplug.Constant`` are not
        differentiated (the field receives their value).
    static, values : SolveStatic, SolveValues
        From :func:`split_config`.
    probe : array of shape (3,), optional
        With ``static.adjoint``: an input (:func:`backward_probe`) whose gradient,
        read by :func:`backward_info`, holds the backward solves' NFE, failure code and
        time reached. Without it, a failed backward solve goes unreported (its
        gradients are NaN or inf).

    Returns
    -------
    ys : jax.Array of shape ``(len(t),) + y0.shape``
        NaN at the times not reached (where ``info.code`` is not 0).
    info : SolveInfo
        Scalars (arrays) of the forward solve.

    Examples
    --------
    A training step compiled once for any tolerances, reading the forward and backward
    counts and codes as arrays:

    >>> import jax, jax.numpy as jnp
    >>> from odeplug._solver_options import make_solve_config
    >>> static, values = split_config(make_solve_config(rtol=1e-6, atol=1e-8, adjoint=True))
    >>> def field(t, y, w):
    ...     return jnp.tanh(w @ y)
    >>> @jax.jit
    ... def step(w, y0, values):
    ...     def loss(w, probe):
    ...         ys, info = odeint_traced(field, y0, jnp.array([0.0, 1.0]), w, static,
    ...                                  values, probe=probe)
    ...         return jnp.sum(ys[-1] ** 2), info
    ...     (_, info), (grad, probe_grad) = jax.value_and_grad(
    ...         loss, argnums=(0, 1), has_aux=True)(w, backward_probe())
    ...     return grad, info, backward_info(probe_grad)
    >>> grad, info, backward = step(jnp.eye(2), jnp.ones(2), values)
    >>> int(info.code), int(backward.code), int(backward.nfe_backward) > 0
    (0, 0, True)
    >>> looser = split_config(make_solve_config(rtol=1e-3, atol=1e-5, adjoint=True))[1]
    >>> _ = step(jnp.eye(2), jnp.ones(2), looser)  # the same compilation
    """
    y0 = jnp.asarray(y0)
    t = jnp.asarray(t)
    _check_traced_inputs(y0, t)
    layout, leaves = Layout.of(args)
    return _solve(func, y0, t.astype(y0.dtype), layout, leaves, static,
                  as_arrays(values, y0.dtype), probe, raise_errors=False)


def _odeint_impl(func, y0, t, layout, leaves, static, packed_values):
    return _solve(func, y0, t.astype(y0.dtype), layout, leaves, static,
                  SolveValues(*packed_values), None, raise_errors=True)


# One compilation per field, static configuration and shapes; tolerances are traced.
_odeint_jit = eqx.filter_jit(_odeint_impl)


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def odeint(func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig, *,
           count_backward: bool = True) -> tuple[jax.Array, ODEStats]:
    """Solve ``dy/dt = func(t, y, args)`` with diffrax; see :func:`odeplug.odeint`.

    Parameters
    ----------
    func : callable
        ``func(t, y, args) -> dy/dt`` in JAX operations (diffrax's convention).
    y0 : array
        Initial state (JAX or NumPy), floating.
    t : 1-D array
        Output times, strictly monotonic, cast to the state's dtype.
    args : pytree
        Parameters passed to ``func``; ``odeplug.Constant`` leaves are not differentiated
        and cost the adjoint no channel.
    config : ODESolveConfig
    count_backward : bool
        Ignored: the backward pass of a functional gradient happens after ``odeint``
        returns, so its counts cannot reach these stats (:func:`odeint_traced` reports
        them through a probe).

    Returns
    -------
    ys : jax.Array of shape ``(len(t),) + y0.shape``, in the dtype of ``y0``.
    stats : ODEStats
        Python ints on concrete inputs, JAX scalars under tracing. ``nfe_forward`` is
        ``1`` (``f(t0, y0)``) ``+ 1`` (Hairer's initial step: adaptive solvers without
        ``first_step``) ``+ stages_per_step * (n_steps + n_rejected)``, with 1 euler,
        2 midpoint and heun, 3 bosh3, 4 rk4, 6 dopri5 and tsit5, 13 dopri8: the
        reference engine's count, one more for the fixed-step solvers (their last
        step's ``f(t1, y1)``). ``nfe_backward`` is None.

    Raises
    ------
    ValueError, TypeError
        Bad time grid or initial state (on tracers: what shapes and dtypes show), field
        output of another shape or dtype.
    SolverError
        On concrete inputs: the reason, the time reached and the solution so far, as on
        the reference engine. Under ``jit``, ``grad`` or ``vmap`` no Python exception
        can depend on the result: a failed solve (forward, or the adjoint's backward
        one) is equinox's runtime error, with odeplug's message.

    Notes
    -----
    Gradients w.r.t. ``y0``, ``args`` and every time of ``t``. Without adjoint, JAX
    differentiates through the solver's operations (diffrax's
    ``RecursiveCheckpointAdjoint``). With ``config.adjoint``, odeplug's adjoint method
    gives them exactly for the times too.
    """
    del count_backward
    static, values = split_config(config)
    y0 = y0 if isinstance(y0, jax.Array) else jnp.asarray(y0)
    layout, leaves = Layout.of(args)
    if _is_traced(y0):
        check_initial_state(np.broadcast_to(np.zeros((), y0.dtype), y0.shape))
    else:
        check_initial_state(np.asarray(y0))
    if _is_traced(t):
        check_time_grid(np.arange(t.size).astype(t.dtype).reshape(t.shape))
        t_host = None
    else:
        t_host = np.asarray(t)  # the caller's times: those a SolverError reports
        check_time_grid(t_host)
        if not isinstance(t, jax.Array) or t.dtype != y0.dtype:
            t = t_host.astype(y0.dtype, copy=False)
    if t.shape[0] == 1:
        # Nothing to solve: y0 itself, nothing counted (the reference engine's rule).
        return y0[None], ODEStats()
    # One host array for the values: one transfer, traced (not hashed) by the jit.
    packed = np.asarray(values, dtype=y0.dtype)
    ys, info = _odeint_jit(func, y0, t, layout, leaves, static, packed)
    if _is_traced(info.code):
        # Under a transformation (or a field closing over traced values) no Python
        # exception can depend on the result: equinox's runtime error instead, on a
        # code cut from differentiation (equinox's error has no derivative rule, and an
        # integer output of a custom VJP carries an instantiated zero tangent).
        code = jax.lax.stop_gradient(info.code.astype(y0.dtype)).astype(jnp.int32)
        ys = eqx.branched_error_if(ys, code != 0, code, messages(static))
        return ys, info.stats()
    host = jax.device_get(info)
    if int(host.code):
        raise solver_error(t_host, ys, host, static)
    return ys, ODEStats(nfe_forward=int(host.nfe_forward), nfe_backward=None,
                        n_steps=int(host.n_steps), n_rejected=int(host.n_rejected))


def odeint_rows_traced(func: Callable, y0: Any, t: Any, args: Any, static: SolveStatic,
                       values: SolveValues) -> tuple[jax.Array, SolveInfo]:
    """:func:`odeint_rows` for compiled callers (inference under ``jit``): nothing
    raises, failures come as codes, and ``func`` takes each row's time as a scalar.

    Each row gets its own steps (``vmap`` of one-row solves: diffrax's loop runs until
    the slowest row is done, every row keeping its own step size), so its result and
    counts do not depend on the other rows: the adaptive cost per input of Chen et al.

    Parameters
    ----------
    func : callable
        ``func(t, y, args)``; ``y`` of shape ``(1, d)`` (a batch of one row).
    y0 : array of shape ``(n, d)``
    t : array of shape ``(T,)`` or ``(n, T)``
        A grid shared by the rows, or one per row: strictly monotonic on its first times
        and NaN after them (outputs at NaN times are NaN). Checked by shape only.
    args : pytree
        Shared by the rows (not differentiated: ``static.adjoint`` is ignored).
    static, values : SolveStatic, SolveValues

    Returns
    -------
    ys : jax.Array of shape ``(T, n, d)``
    info : SolveInfo
        Each field of shape ``(n,)``. :func:`row_solver_error` turns a failed row's into
        the ``SolverError`` of :func:`odeint` on that row alone.
    """
    y0 = jnp.asarray(y0)
    t = jnp.asarray(t).astype(y0.dtype)
    if y0.ndim != 2 or t.ndim not in (1, 2) or (t.ndim == 2 and t.shape[0] != y0.shape[0]):
        raise ValueError(f"odeint_rows takes y0 of shape (n, d) and t of shape (T,) or "
                         f"(n, T); got {y0.shape} and {t.shape}")
    check_initial_state(np.broadcast_to(np.zeros((), y0.dtype), y0.shape))
    layout, leaves = Layout.of(args)
    args = layout.unflatten(leaves)
    field = CheckedField(func)
    values = as_arrays(values, y0.dtype)
    static = dataclasses.replace(static, adjoint=False, seminorm=False)
    padded = t.ndim == 2

    def one_row(row, t_row):
        ys, info = forward(field, row[None], t_row, args, static, values, padded=padded)
        return ys[:, 0], info

    ys, info = jax.vmap(one_row, in_axes=(0, 0 if padded else None), out_axes=(1, 0))(y0, t)
    return ys, info



class _RowTime(eqx.Module):
    """``func`` of :func:`odeint_rows`, called with each row's time as a ``(1, 1)``
    column as on the other engines (a row is a batch of one under ``vmap``). A module,
    not a closure, so that equal fields hash equal (jit caches)."""

    func: Callable

    def __call__(self, t, y, args):
        return self.func(jnp.reshape(t, (1, 1)), y, args)


def _odeint_rows_impl(func, y0, t, layout, leaves, static, packed_values):
    ys, info = odeint_rows_traced(_RowTime(func), y0, t, layout.unflatten(leaves), static,
                                  SolveValues(*packed_values))
    if t.ndim == 2:
        # A row of one time has nothing to solve: no evaluation, as on the other engines
        # (its vmapped solve of the empty span still evaluates f(t0, y0) and Hairer's).
        alone = jnp.sum(~jnp.isnan(t), axis=1) == 1
        info = info._replace(nfe_forward=jnp.where(alone, 0, info.nfe_forward))
    return ys, info


# One compilation per field, static configuration and shapes; tolerances are traced.
_odeint_rows_jit = eqx.filter_jit(_odeint_rows_impl)


def odeint_rows(func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig
                ) -> tuple[jax.Array, dict[str, Any]]:
    """Solve each row of ``y0`` (shape ``(n, d)``) as its own problem, no gradients;
    see :func:`odeplug.odeint_rows`.

    Each row gets its own adaptive steps (``vmap`` of one-row solves, compiled once per
    field, static configuration and shapes), so its result and counts are those of
    :func:`odeint` on that row alone.

    Parameters
    ----------
    func : callable
        ``func(t, y, args)`` in JAX operations on a batch of rows: ``y`` of shape
        ``(m, d)``, ``t`` of shape ``(m, 1)`` (each row's time, ``y``'s dtype); here
        ``m`` is 1.
    y0 : array of shape ``(n, d)``
    t : array of shape ``(T,)`` or ``(n, T)``
        One grid for every row or one per row (NaN-padded at the end).
    args : pytree
        Passed to ``func`` (``odeplug.Constant`` leaves unwrapped).
    config : ODESolveConfig
        ``config.adjoint`` is ignored (nothing is differentiated).

    Returns
    -------
    ys : jax.Array of shape ``(T, n, d)``
        NaN at a row's padded times.
    counters : dict of str to numpy.ndarray of shape ``(n,)``
        ``nfe_forward``, ``n_steps`` and ``n_rejected`` of each row (JAX arrays when
        called under a transformation).

    Raises
    ------
    SolverError
        For the failed row of lowest index, with the reason, time reached and solution
        so far of :func:`odeint` on that row alone (under a transformation: equinox's
        runtime error, with the reason).
    """
    static, values = split_config(config)
    y0 = y0 if isinstance(y0, jax.Array) else jnp.asarray(y0)
    if _is_traced(y0):
        check_initial_state(np.broadcast_to(np.zeros((), y0.dtype), y0.shape))
    else:
        check_initial_state(np.asarray(y0))
    if y0.ndim != 2:
        raise ValueError(f"odeint_rows needs states of shape (n, d), got {tuple(y0.shape)}")
    t_host = None
    if not _is_traced(t):
        t_host = np.asarray(t)
        check_row_time_grids(t_host, y0.shape[0])
        t = t_host.astype(y0.dtype)
    layout, leaves = Layout.of(args)
    packed = np.asarray(values, dtype=y0.dtype)
    ys, info = _odeint_rows_jit(func, y0, t, layout, leaves, static, packed)
    if _is_traced(info.code):
        # The code of the failed row of lowest index, as the host path reports.
        code = info.code[jnp.argmax(info.code != 0)]
        ys = eqx.branched_error_if(ys, code != 0, code, messages(static, "a row: "))
        return ys, {name: getattr(info, name) for name in ROW_COUNTERS}
    host = jax.device_get(info)
    failed = np.flatnonzero(np.asarray(host.code))
    if failed.size:
        row = int(failed[0])
        error = row_solver_error(t_host, ys, host, row, static, f"row {row}: ")
        error.ys = error.ys[:, 0]  # the row's states, (k, d), as on the other engines
        raise error
    return ys, {name: np.asarray(getattr(host, name), np.int64) for name in ROW_COUNTERS}
