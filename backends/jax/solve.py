"""odeint on JAX, over diffrax's ``diffeqsolve``.

The shared solver vocabulary (``ODESolveConfig``) is translated once per configuration
into diffrax objects (:func:`diffeqsolve_arguments`); the solve itself is one call to
``diffrax.diffeqsolve``, so ``odeint`` costs what diffrax costs, works inside the
caller's ``jax.jit``, ``jax.grad`` and ``jax.vmap``, and adds no compilation of its own.

Where diffrax and odeplug's reference engine differ, this engine follows the reference:

* midpoint, heun and rk4 (which diffrax lacks) are built from ``odeplug._tableaus``
  plus a last stage ``f(t1, y1)`` (first same as last): their dense output is the
  reference's cubic Hermite, and the extra stage is the next step's first, so it costs
  one evaluation per solve, not per step.
* Fixed steps follow the reference's grid (steps of ``step_size`` from ``t[0]``, the
  last one shortened), which diffrax 0.7's ``ConstantStepSize`` does not
  (:class:`_FixedGrid`).
* The PI controller uses the solver's order as exponent (diffrax's default is the
  order plus one) and starts from Hairer's initial step, which diffrax 0.7 skips (it
  starts every solve at ``dt0 = 0.01``; see :class:`_PIDController`).
* Times are cast to the state's dtype: diffrax promotes the state to the dtype of the
  times, and a float32 state must stay float32.

Errors. On concrete inputs the solve runs with ``throw=False`` and a failure becomes a
``SolverError`` (reason, time reached, solution so far), found by a second, diagnostic
solve (error path only). Under tracing (``jit``, ``grad``, ``vmap``) no Python exception
can depend on the result: the failure is diffrax's runtime error, as with
``throw=True``; a fixed-step solve whose state becomes non-finite then returns NaN/inf.
Compiled callers that want a ``SolverError`` instead use :func:`odeint_result`, which
returns diffrax's result code for them to check on the host.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NoReturn

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from odeplug._solver_options import ODESolveConfig, ODEStats
from odeplug._tableaus import HEUN, MIDPOINT, RK4, TABLEAUS, ButcherTableau
from odeplug._validation import check_field_output, check_initial_state, check_time_grid
from odeplug.exceptions import SolverError

__all__ = ["odeint", "odeint_result", "failure_reason", "diffeqsolve_arguments"]


# ------------------------------------------------------------------------- solvers


def _fsal_extension(tableau: ButcherTableau) -> diffrax.ButcherTableau:
    """diffrax's tableau of a fixed-step method, plus a last stage ``f(t1, y1)`` (its row
    is ``b``) that diffrax recognises as first-same-as-last."""
    b = np.asarray(tableau.b)
    return diffrax.ButcherTableau(
        c=np.asarray(tableau.c[1:] + (1.0,)),
        b_sol=np.append(b, 0.0),
        b_error=np.zeros(b.size + 1),  # no embedded method: fixed steps only
        a_lower=tuple(np.asarray(row) for row in tableau.a[1:]) + (b,),
    )


class _PrimedFSAL(diffrax.AbstractERK):
    """An FSAL solver that evaluates ``f(t0, y0)`` in ``init`` rather than in its first
    step.

    diffrax evaluates it on the first attempted step, and again on each retry until a
    step is accepted (a rejected step rolls the solver state back); diffrax does not
    report how many first steps were rejected, so the number of evaluations could not be
    known. Evaluated once here, it is exactly ``1 + (stages - 1) * steps``.
    """

    def init(self, terms, t0, t1, y0, args):
        state = super().init(terms, t0, t1, y0, args)
        if state is None:  # FSAL switched off (the adjoint's augmented term)
            return None
        return jnp.array(False), self.func(terms, t0, y0, args)


def _fixed_step_solver(tableau: ButcherTableau) -> diffrax.AbstractERK:
    """A fixed-step method of odeplug's tableaus, first-same-as-last by its extra stage.

    Its dense output is the reference engine's: the cubic Hermite through ``(y0, f0)``
    and ``(y1, f1)``, with ``f1`` the extra stage. (diffrax's own Midpoint and Heun take
    the slope of their last stage, which is not ``f1``, and so interpolate otherwise.)
    """
    cls = type(tableau.name, (_PrimedFSAL,), {
        "tableau": _fsal_extension(tableau),
        "interpolation_cls": diffrax.ThirdOrderHermitePolynomialInterpolation.from_k,
        "order": lambda self, terms: tableau.order,
    })
    return cls()


def _primed(cls: type) -> diffrax.AbstractERK:
    return type(cls.__name__, (_PrimedFSAL, cls), {})()


_SOLVERS: dict[str, diffrax.AbstractSolver] = {
    "euler": diffrax.Euler(),  # linear dense output, as the reference's
    "midpoint": _fixed_step_solver(MIDPOINT),
    "heun": _fixed_step_solver(HEUN),
    "rk4": _fixed_step_solver(RK4),
    "bosh3": _primed(diffrax.Bosh3),
    "dopri5": _primed(diffrax.Dopri5),
    "tsit5": _primed(diffrax.Tsit5),
    "dopri8": _primed(diffrax.Dopri8),
}


def _evaluations(solver: diffrax.AbstractSolver) -> tuple[int, int]:
    """``(at start, per step)`` vector-field evaluations of a solver, steps counted
    accepted or rejected."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:  # Euler
        return 0, 1
    if tableau.fsal:  # the last stage of a step is the first of the next (primed)
        return 1, tableau.num_stages - 1
    return 0, tableau.num_stages


# ---------------------------------------------------------------------- controller


class _FixedGrid(diffrax.AbstractStepSizeController):
    """Steps of ``dt0`` from ``t0``, the last one shortened to end on ``t1``: the
    reference engine's grid, in the same floating-point operations.

    (diffrax 0.7's ``ConstantStepSize`` takes one step of ``dt0``, then splits the rest
    of ``[t0, t1]`` evenly into ``ceil((t1 - t0) / dt0)`` steps.)
    """

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            raise ValueError("fixed-step solvers need a step size")
        # A last step shorter than 1e-9 steps is merged into the one before, as in the
        # reference engine.
        n_steps = jnp.maximum(jnp.ceil((t1 - t0) / dt0 - 1e-9), 1).astype(jnp.int32)
        return self._next(t0, dt0, n_steps, t1, jnp.asarray(1, jnp.int32))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                        controller_state):
        start, dt, n_steps, end, done, scheduled = controller_state
        # BacksolveAdjoint solves interval after interval, passing each the state of the
        # last: a step that is not the one scheduled starts a new grid at its start
        # (whose end diffeqsolve clips).
        new = t1 != scheduled
        start = jnp.where(new, t0, start)
        n_steps = jnp.where(new, jnp.iinfo(jnp.int32).max, n_steps)
        done = jnp.where(new, 1, done)
        t_next, state = self._next(start, dt, n_steps, end, done + 1)
        return True, t1, t_next, False, state, diffrax.RESULTS.successful

    @staticmethod
    def _next(start, dt, n_steps, end, done):
        """The end of step number ``done`` (from 1), and the state that expects it."""
        t_next = jnp.where(done >= n_steps, end, start + dt * done.astype(dt.dtype))
        return t_next, (start, dt, n_steps, end, done, t_next)


class _PIDController(diffrax.PIDController):
    """diffrax's PI controller, starting from Hairer's initial step.

    diffrax 0.7 means to select the first step by Hairer's algorithm, but tests
    ``isinstance(terms, ODETerm)`` on the ``WrapTerm`` that ``diffeqsolve`` passes, so it
    always starts at 0.01, whatever the time scale. Costs two evaluations per solve.
    """

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            # Like diffrax and torchdiffeq, the step sizes are not differentiated.
            dt0 = jax.lax.stop_gradient(self._initial_step(terms, t0, y0, args))
        return super().init(terms, t0, t1, y0, dt0, args, func, error_order)

    def _initial_step(self, terms, t0, y0, args):
        """Hairer, Norsett & Wanner, Solving ODEs I, Sec. II.4, as the reference engine."""

        def field(t, y):
            # dy/dt in diffeqsolve's time, which always increases; any single term (also
            # the adjoint's augmented one) and any pytree state.
            return terms.vf_prod(t, y, args, terms.contr(t, t + 1))

        scale = jax.tree.map(lambda y: self.atol + self.rtol * jnp.abs(y), y0)

        def scaled_norm(x):
            return self.norm(jax.tree.map(jnp.divide, x, scale))

        f0 = field(t0, y0)
        d0, d1 = scaled_norm(y0), scaled_norm(f0)
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
        f1 = field(t0 + h0, jax.tree.map(lambda y, f: y + h0 * f, y0, f0))
        d2 = scaled_norm(jax.tree.map(jnp.subtract, f1, f0)) / h0
        d_max = jnp.maximum(d1, d2)
        flat = d_max <= 1e-15
        h1 = jnp.where(flat, jnp.maximum(1e-6, h0 * 1e-3),
                       (0.01 / jnp.where(flat, 1.0, d_max)) ** (1.0 / self.error_order))
        return jnp.minimum(100 * h0, h1)


@functools.lru_cache(maxsize=128)
def diffeqsolve_arguments(config: ODESolveConfig) -> dict[str, Any]:
    """The diffrax objects of a configuration: ``solver``, ``stepsize_controller``,
    ``adjoint`` and ``max_steps`` arguments of ``diffrax.diffeqsolve``.

    Cached: building them costs nothing per call, and equal objects let
    ``diffeqsolve``'s own compilation cache hit. Benchmarks pass the same arguments to
    ``diffeqsolve`` to compare like with like.
    """
    solver = _SOLVERS[config.solver]

    def controller(rtol: float, atol: float, norm: Callable | None = None):
        if not config.adaptive:
            return _FixedGrid()
        return _PIDController(
            rtol=rtol, atol=atol, pcoeff=config.pcoeff, icoeff=config.icoeff,
            safety=config.safety, factormin=config.factormin, factormax=config.factormax,
            error_order=TABLEAUS[config.solver].order,
            **({} if norm is None else {"norm": norm}),
        )

    strategy = config.adjoint
    if strategy is None:
        adjoint = diffrax.RecursiveCheckpointAdjoint()
    else:
        backward = controller(
            config.rtol if strategy.rtol is None else strategy.rtol,
            config.atol if strategy.atol is None else strategy.atol,
            diffrax.adjoint_rms_seminorm if strategy.seminorm else None,
        )
        # throw: the backward pass runs under tracing, where only diffrax can raise.
        adjoint = diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=backward,
                                           throw=True)
    return {
        "solver": solver,
        "stepsize_controller": controller(config.rtol, config.atol),
        "adjoint": adjoint,
        "max_steps": config.max_num_steps,
    }


# ----------------------------------------------------------------------- the solve


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


class _CheckedField(eqx.Module):
    """The caller's vector field, checking the shape and dtype of what it returns.

    diffeqsolve traces the field when it compiles (once per function and input types)
    and reuses the compilation afterwards, so the check costs nothing per call, where an
    ``eval_shape`` before each call would trace the field every time.
    """

    func: Callable

    def __call__(self, t, y, args):
        dy = self.func(t, y, args)
        check_field_output(jnp.shape(dy), jnp.result_type(dy), jnp.shape(y),
                           jnp.result_type(y))
        return dy


@jax.custom_jvp
def _moving_times(y: jax.Array, t: jax.Array, f: jax.Array) -> jax.Array:
    """The identity on ``y``, the state at times ``t`` where ``dy/dt = f``: moving
    ``t`` by ``dt`` moves ``y`` by ``f dt``."""
    return y


@_moving_times.defjvp
def _moving_times_jvp(primals, tangents):
    y, t, f = primals
    dy, dt, _ = tangents
    return y, dy + f * dt.reshape(dt.shape + (1,) * (y.ndim - dt.ndim))


@jax.jit
def _summary(result, ys, num_steps, num_accepted, num_rejected):
    # One compiled call and one transfer, rather than a few eager operations.
    # Fixed steps are never rejected, so a non-finite state is returned as such; an
    # adaptive step may also be accepted when its state overflows (its error is scaled
    # by that state).
    ok = diffrax.is_okay(result) & jnp.all(jnp.isfinite(ys[-1]))
    return jnp.stack([ok.astype(num_steps.dtype), num_steps, num_accepted, num_rejected])


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
        Parameters passed to ``func``.
    config : ODESolveConfig
    count_backward : bool
        Ignored: nothing of the backward pass is counted on JAX (see ``stats``).

    Returns
    -------
    ys : jax.Array of shape ``(len(t),) + y0.shape``, in the dtype of ``y0``.
    stats : ODEStats
        Python ints on concrete inputs, JAX scalars under tracing. ``nfe_forward`` is
        ``2`` (Hairer's initial step, adaptive solvers without ``first_step``) ``+ 1``
        (``f(t0, y0)``, FSAL solvers) ``+ stages_per_step * (n_steps + n_rejected)``,
        with ``stages_per_step`` the number of stages, less one for FSAL solvers: 1
        euler, 2 midpoint and heun, 3 bosh3, 4 rk4, 6 dopri5 and tsit5, 13 dopri8.
        ``nfe_backward`` is ``None``: diffrax does not report the statistics of the
        backward solves.

    Raises
    ------
    ValueError, TypeError
        Bad time grid or initial state (on tracers: what shapes and dtypes show; diffrax
        checks the rest at run time), field output of another shape or dtype.
    SolverError
        On concrete inputs only (see the module docstring).

    Notes
    -----
    Gradients w.r.t. ``y0``, ``args`` and ``t`` (also ``t[0]`` and ``t[-1]``). Without
    adjoint, JAX differentiates through the solver's operations
    (``RecursiveCheckpointAdjoint``). With ``config.adjoint``, diffrax's
    ``BacksolveAdjoint`` gives those w.r.t. ``y0`` and ``args`` but none w.r.t. times;
    so the times reach diffrax without gradient, and their derivatives are added
    exactly: ``dy_i/dt_i = f(t_i, y_i)`` for ``i >= 1``, and moving ``t_0`` with ``y0``
    fixed is moving ``y0`` by ``-f(t_0, y0) dt_0``.
    """
    ys, sol, (y0, t, dt0, arguments) = _solve(func, y0, t, args, config)
    summary = _summary(sol.result, ys, sol.stats["num_steps"],
                       sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])
    if any(map(_is_traced, jax.tree.leaves((summary, y0, t, args)))):
        # Under a transformation (also an un-jitted grad, whose values are known), or
        # with a field closing over traced values: diffrax's runtime error, as with
        # throw=True.
        ys = sol.result.error_if(ys, jnp.invert(diffrax.is_okay(sol.result)))
        return ys, _stats(config, *summary[1:])
    ok, *counts = np.asarray(summary).tolist()
    if not ok:
        _raise_solver_error(func, y0, t, args, dt0, arguments, config)
    return ys, _stats(config, *counts)


def odeint_result(func: Callable, y0: Any, t: Any, args: Any,
                  config: ODESolveConfig) -> tuple[jax.Array, ODEStats, jax.Array]:
    """:func:`odeint` for callers under ``jit`` that handle a failed solve themselves.

    The same solve, but a failure raises nothing (no ``error_if``): the caller gets
    diffrax's result code (0: success) and turns it into a ``SolverError`` on the host
    (:func:`failure_reason`). Used by the engine's programs, whose whole training step is
    one compiled function.

    Returns
    -------
    ys : jax.Array
        As :func:`odeint`; not meaningful where the code is not 0.
    stats : ODEStats
        JAX scalars under tracing; ``nfe_backward`` None.
    code : jax.Array
        diffrax's ``RESULTS`` code, an int32 scalar.
    """
    ys, sol, _ = _solve(func, y0, t, args, config)
    stats = _stats(config, sol.stats["num_steps"], sol.stats["num_accepted_steps"],
                   sol.stats["num_rejected_steps"])
    return ys, stats, sol.result._value


# diffrax's result codes and SolverError's reasons.
_REASONS = {int(item._value): name
            for name, item in diffrax.RESULTS._name_to_item.items()}
_REASONS.update({int(diffrax.RESULTS.max_steps_reached._value): "max_num_steps",
                 int(diffrax.RESULTS.dt_min_reached._value): "step_size_underflow",
                 int(diffrax.RESULTS.nonfinite._value): "non_finite"})


def failure_reason(code: int) -> tuple[str, str]:
    """``(reason, message)`` of a result code of :func:`odeint_result` (not 0)."""
    return _REASONS.get(int(code), "unknown"), diffrax.RESULTS._index_to_message[int(code)]


def _solve(func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig):
    """The solve of :func:`odeint`, without its error handling.

    Returns ``ys``, diffrax's ``Solution`` and what the diagnostic solve needs: ``(y0,
    t, dt0, arguments)`` as prepared here.
    """
    if not isinstance(y0, jax.Array):
        y0 = jnp.asarray(y0)
    if _is_traced(y0):
        check_initial_state(np.broadcast_to(np.zeros((), y0.dtype), y0.shape))
    else:
        check_initial_state(np.asarray(y0))
    if _is_traced(t):
        # A stand-in of the same shape and dtype; diffrax checks monotonicity at run time.
        check_time_grid(np.arange(t.size).astype(t.dtype).reshape(t.shape))
        t = t.astype(y0.dtype)
        t0, t1 = t[0], t[-1]
        direction = jnp.where(t1 > t0, 1, -1)
    else:
        t_host = np.asarray(t)
        direction = check_time_grid(t_host)
        t_host = t_host.astype(y0.dtype, copy=False)
        # Ends from the host copy: slicing a device array costs an eager dispatch each.
        t0, t1 = t_host[0], t_host[-1]
        if not isinstance(t, jax.Array) or t.dtype != y0.dtype:
            t = t_host
    arguments = diffeqsolve_arguments(config)
    if not config.adaptive:
        dt0 = direction * config.step_size
    elif config.first_step is not None:
        dt0 = direction * config.first_step
    else:
        dt0 = None

    field = _CheckedField(func)
    y_start, t_save = y0, t
    moving = config.adjoint is not None and _is_traced(t)
    if moving:
        t0, t1, t_save = jax.lax.stop_gradient((t0, t1, t))
        y_start = _moving_times(y0, t[0], -field(t[0], y0, args))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), t0=t0, t1=t1, dt0=dt0, y0=y_start, args=args,
        saveat=diffrax.SaveAt(ts=t_save), throw=False, **arguments,
    )
    ys = sol.ys
    if moving:
        f_out = jax.vmap(lambda s, y: field(s, y, args))(t[1:], ys[1:])
        ys = jnp.concatenate([y0[None], _moving_times(ys[1:], t[1:], f_out)])

    return ys, sol, (y0, t, dt0, arguments)


def _stats(config: ODESolveConfig, num_steps, num_accepted, num_rejected) -> ODEStats:
    at_start, per_step = _evaluations(_SOLVERS[config.solver])
    if config.adaptive and config.first_step is None:
        at_start += 2  # Hairer's initial step
    return ODEStats(nfe_forward=at_start + per_step * num_steps, nfe_backward=None,
                    n_steps=num_accepted, n_rejected=num_rejected)


def _not_finite(t, y, args, **kwargs) -> jax.Array:
    return jnp.any(~jnp.isfinite(y))


def _raise_solver_error(func, y0, t, args, dt0, arguments, config) -> NoReturn:
    """Solve again to find where and why the solve stopped; raise ``SolverError``.

    The same steps are taken, but this solve also stops at a step-size underflow (rather
    than spinning until ``max_num_steps``) and at a non-finite state, and saves the
    state reached. Runs on concrete values only.
    """
    controller = arguments["stepsize_controller"]
    if isinstance(controller, diffrax.PIDController):
        tiny = 4 * np.finfo(t.dtype).eps * max(1.0, abs(float(t[0])), abs(float(t[-1])))
        controller = dataclasses.replace(controller, dtmin=tiny, force_dtmin=False)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(func), arguments["solver"], t0=t[0], t1=t[-1], dt0=dt0, y0=y0,
        args=args, saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=t),
                                               diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=controller, event=diffrax.Event(_not_finite),
        max_steps=config.max_num_steps, throw=False,
    )
    if bool(sol.result == diffrax.RESULTS.dt_min_reached):
        reason, what = "step_size_underflow", "step size underflow"
    elif bool(sol.result == diffrax.RESULTS.max_steps_reached):
        reason, what = "max_num_steps", f"max_num_steps={config.max_num_steps} exceeded"
    else:
        reason, what = "non_finite", "non-finite state"
    ts, ys = np.asarray(sol.ts[0]), np.asarray(sol.ys[0])
    reached = np.isfinite(ts)
    t_reached = float(sol.ts[1][0])
    raise SolverError(
        f"{what} at t={t_reached:.6g} (solving from {float(t[0]):.6g} to "
        f"{float(t[-1]):.6g})",
        reason=reason, t=t_reached, ts=ts[reached], ys=ys[reached],
    )
