"""odeplug's own ODE solver and adjoint, in NumPy with autograd (HIPS).

One Runge-Kutta stepper runs every tableau of ``odeplug._tableaus``. Adaptive solves use
an embedded error estimate, the RMS norm, a PI controller and Hairer's initial step;
outputs at the requested times come from dense output, without forcing steps onto them.

Gradients:

* ``adjoint=False``: autograd traces the solver's own operations (discretise, then
  optimise); memory grows with the number of steps.
* ``adjoint=True``: ``odeint`` is an autograd primitive whose VJP is the adjoint method
  (Chen et al. 2018, Algorithm 1): the augmented system ``[y, a, a_theta]`` is solved
  backwards between consecutive output times; memory is independent of the number of
  steps. Derivatives of the vector field come from autograd.

Parameters reach the vector field through ``args`` (a dict, list or tuple of arrays,
diffrax style: ``func(t, y, args)``), so that the adjoint can differentiate them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import make_vjp
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.tracer import getval, isbox

from .._adjoint import augmented_dynamics, backsolve
from .._constant import Constant
from .._dense import hermite, linear, powers
from .._rows import solve_rows
from .._solver_options import ODESolveConfig, ODEStats
from .._stepping import (
    SCALARS,
    SNAP_ULPS,
    error_ratio,
    fixed_step_count,
    fixed_step_end,
    initial_step,
    rms_norm,
    step_factor,
    step_size_underflow,
)
from .._tableaus import TABLEAUS, ButcherTableau
from .._validation import check_field_output, check_initial_state, check_time_grid
from ..exceptions import SolverError

__all__ = ["odeint", "odeint_rows", "flatten_args"]


# --------------------------------------------------------------------------- args


def flatten_args(args: Any) -> tuple[Any, Callable[[Any], Any]]:
    """Flatten a pytree of arrays (dicts, lists, tuples, None) into one 1-D vector.

    Differentiable under autograd in both directions. Returns ``(flat, unflatten)``.
    Leaves wrapped in :class:`odeplug.Constant` stay out of ``flat``: ``unflatten`` puts
    their values back (as plain values, so no gradient reaches them), and the adjoint
    integrates no channel for them.
    """
    leaves: list[Any] = []
    offsets: list[tuple[int, int, tuple[int, ...]]] = []
    position = 0

    def build(node: Any) -> Any:
        nonlocal position
        value = getval(node)  # containers may be autograd boxes (DictBox, SequenceBox)
        if value is None:
            return None
        if isinstance(value, Constant):
            return ("constant", _unbox_tree(value.value))
        if isinstance(value, dict):
            return ("dict", [(key, build(node[key])) for key in value])
        if isinstance(value, (list, tuple)):
            return (type(value), [build(node[i]) for i in range(len(value))])
        shape = tuple(np.shape(value))
        size = math.prod(shape)
        leaves.append(anp.ravel(node) if isbox(node) else np.ravel(value))
        offsets.append((position, position + size, shape))
        position += size
        return ("leaf", len(offsets) - 1)

    structure = build(args)
    if not leaves:
        flat = np.zeros(0)
    elif any(isbox(leaf) for leaf in leaves):
        flat = anp.concatenate(leaves)
    else:
        flat = np.concatenate(leaves)

    def unflatten(vector: Any) -> Any:
        return _rebuild(structure, vector, offsets, isbox(vector))

    return flat, unflatten


def _unbox_tree(tree: Any) -> Any:
    """The values of a pytree whose leaves or containers may be autograd boxes."""
    tree = getval(tree)
    if isinstance(tree, dict):
        return {key: _unbox_tree(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_unbox_tree(value) for value in tree)
    return tree


def _rebuild(node: Any, vector: Any, offsets: list, boxed: bool) -> Any:
    """The pytree of ``flatten_args``'s structure ``node`` from the flat ``vector``.

    A module-level function: a recursive closure would be a reference cycle, and every
    call would leave garbage (holding ``vector`` and, under autograd, its graph) for the
    cyclic collector.
    """
    if node is None:
        return None
    kind, content = node
    if kind == "constant":
        return content
    if kind == "dict":
        return {key: _rebuild(value, vector, offsets, boxed) for key, value in content}
    if kind == "leaf":
        start, stop, shape = offsets[content]
        piece = vector[start:stop]
        return anp.reshape(piece, shape) if boxed else piece.reshape(shape)
    return kind(_rebuild(value, vector, offsets, boxed) for value in content)


# ------------------------------------------------------------------- the stepper


def _rms(x: np.ndarray) -> float:
    return rms_norm(SCALARS, x)


@dataclass(frozen=True)
class _Method:
    """A tableau as arrays of one dtype (so float32 states stay float32)."""

    tableau: ButcherTableau
    a: np.ndarray  # (S, S)
    b: np.ndarray
    b_error: np.ndarray | None
    b_dense: np.ndarray | None  # (S, P): stage weights of x**1 .. x**P
    c: tuple[float, ...]
    rows: tuple[np.ndarray, ...]  # rows[i] = a[i, :i], the weights of stage i
    fsal: bool

    @classmethod
    def of(cls, name: str, dtype: np.dtype) -> _Method:
        key = (name, np.dtype(dtype).str)
        if key not in _METHOD_CACHE:
            tab = TABLEAUS[name]
            as_array = lambda v: None if v is None else np.asarray(v, dtype=dtype)  # noqa: E731
            a = tab.matrix(dtype)
            _METHOD_CACHE[key] = cls(
                tab, a, as_array(tab.b), as_array(tab.b_error), as_array(tab.b_dense),
                tab.c, tuple(a[i, :i] for i in range(len(tab.c))), tab.fsal,
            )
        return _METHOD_CACHE[key]


_METHOD_CACHE: dict[tuple[str, str], _Method] = {}


def _rk_step_numpy(fun, t, y, f0, h, method, stages, need_error):
    """One explicit RK step on plain arrays, stages stacked in ``stages`` (S, n).

    ``np.dot`` rather than ``@``: the same BLAS call with less dispatch, which counts on
    small states (a tenth of a microsecond per stage)."""
    stages[0] = f0
    rows, c, dot = method.rows, method.c, np.dot
    for i in range(1, len(c)):
        yi = y + h * dot(rows[i], stages[:i])
        stages[i] = fun(t + c[i] * h, yi)
    if method.fsal:
        y1 = yi  # the last stage is evaluated at y1
    else:
        y1 = y + h * dot(method.b, stages)
    error = h * dot(method.b_error, stages) if need_error else None
    return y1, error, stages


def _rk_step_traced(fun, t, y, f0, h, method, need_error):
    """The same step with autograd boxes (lists instead of in-place stage writes)."""
    tab = method.tableau
    ks = [f0]
    for i in range(1, tab.n_stages):
        increment = None
        for j, coefficient in enumerate(tab.a[i]):
            if coefficient != 0.0:
                term = coefficient * ks[j]
                increment = term if increment is None else increment + term
        yi = y + h * increment
        ks.append(fun(t + tab.c[i] * h, yi))
    if tab.fsal:
        y1 = yi
    else:
        y1 = y + h * sum(coefficient * k
                         for coefficient, k in zip(tab.b, ks, strict=False) if coefficient != 0.0)
    error = None
    if need_error:
        values = np.stack([getval(k) for k in ks])
        error = getval(h) * (method.b_error @ values)
    return y1, error, ks


def _dense_weights(b_dense, x, ks, traced):
    """``sum_i b_i(x) k_i`` of a polynomial continuous extension."""
    if not traced:
        return (b_dense @ powers(x, b_dense.shape[1]).astype(b_dense.dtype)) @ ks
    x_powers = [x ** (p + 1) for p in range(b_dense.shape[1])]
    total = None
    for row, k in zip(b_dense, ks, strict=False):
        if np.any(row != 0.0):
            term = sum(float(c) * xp for c, xp in zip(row, x_powers, strict=True)
                       if c != 0.0) * k
            total = term if total is None else total + term
    return total


def _interpolate(kind, x, h, y0, y1, f0, f1, weighted_stages):
    """Dense output at ``x`` in [0, 1] of a step of size ``h``; ``weighted_stages`` is
    ``sum_i b_i(x) k_i`` for a polynomial extension."""
    if kind == "linear":
        return linear(x, y0, y1)
    if kind == "hermite":
        return hermite(x, h, y0, y1, f0, f1)
    return y0 + h * weighted_stages


def _integrate(fun, y0, ts, config: ODESolveConfig, stats: ODEStats, *, traced: bool,
               norm_size: int | None = None, rtol=None, atol=None, direction: int = 1):
    """Solve on an increasing grid ``ts`` for a flat state ``y0``; return the list of
    states at ``ts``. ``fun(t, y)`` works on flat states. With ``traced``, arrays may be
    autograd boxes and every operation is recorded; step-size decisions use values.
    ``norm_size``: only the first entries enter the error norm (the adjoint's seminorm).
    ``direction`` only serves error messages (times reported in the caller's frame).

    The step-size decisions are ``odeplug._stepping``'s, on Python floats (``SCALARS``):
    one problem, so NumPy's 0-d arrays would cost more than the arithmetic.
    """
    method = _Method.of(config.solver, getval(y0).dtype)
    tab = method.tableau
    rtol = config.rtol if rtol is None else rtol
    atol = config.atol if atol is None else atol
    if norm_size is None:
        norm = _rms
    else:
        norm = lambda x: _rms(x[:norm_size])  # noqa: E731
    ts_val = np.asarray(getval(ts), dtype=np.float64)
    n_out = ts_val.shape[0]
    t_start, t_end = float(ts_val[0]), float(ts_val[-1])
    ts_box = ts if isbox(ts) else None
    t_start_b = ts_box[0] if ts_box is not None else t_start
    t_end_b = ts_box[-1] if ts_box is not None else t_end
    # A step ending within a few ulps of t_end ends on it (no sliver of a last step).
    eps_t = SNAP_ULPS * max(1.0, abs(t_start), abs(t_end))

    outputs = [y0]
    next_out = 1
    t, y = t_start, y0
    f0 = fun(t_start_b, y0)
    stats.nfe_forward += 1
    stages = None if traced else np.empty((tab.n_stages, getval(y0).size), getval(y0).dtype)

    def fail(reason: str, message: str, t_reached: float):
        ys = np.stack([np.asarray(getval(o)) for o in outputs])
        raise SolverError(
            f"{message} at t={direction * t_reached:.6g} (solving from "
            f"{direction * t_start:.6g} to {direction * t_end:.6g})",
            reason=reason, t=direction * t_reached,
            ts=direction * ts_val[: len(outputs)], ys=ys,
        )

    if config.adaptive:
        if config.first_step is None:
            def values(s, z):
                return getval(fun(s, z))

            h = initial_step(SCALARS, values, t_start, getval(y0), getval(f0), tab.order,
                             rtol, atol, norm)
            stats.nfe_forward += 1
        else:
            h = config.first_step
    else:
        n_fixed = fixed_step_count(SCALARS, t_start, t_end, config.step_size)

    previous_inverse = 1.0
    rejected_non_finite = False  # why the last attempt was rejected, for an underflow
    attempts = accepted = 0
    while t < t_end:
        if config.adaptive:
            t1 = t + h
            if t1 >= t_end - eps_t:
                t1 = t_end
        else:
            t1 = fixed_step_end(SCALARS, t_start, t_end, config.step_size, accepted + 1,
                                n_fixed)
        h = t1 - t
        if step_size_underflow(SCALARS, t, h):
            # After non-finite candidates, or a NaN step size (from a non-finite slope),
            # the cause is the state, not the step size.
            if rejected_non_finite or not math.isfinite(h):
                fail("non_finite", f"non-finite state (h={h:.3g})", t)
            fail("step_size_underflow", f"step size underflow (h={h:.3g})", t)
        if attempts >= config.max_num_steps:
            fail("max_num_steps", f"max_num_steps={config.max_num_steps} exceeded", t)
        attempts += 1
        last = t1 == t_end
        # Times as seen by the vector field: boxed when the caller differentiates t.
        if ts_box is not None:
            t_b = t_start_b + (t - t_start)
            h_b = (t_end_b - t_b) if last else h
        else:
            t_b, h_b = t, h
        if traced:
            y1, error, ks = _rk_step_traced(fun, t_b, y, f0, h_b, method, config.adaptive)
        else:
            y1, error, ks = _rk_step_numpy(fun, t_b, y, f0, h_b, method, stages,
                                           config.adaptive)
        stats.nfe_forward += tab.n_stages - 1
        finite = bool(np.isfinite(getval(y1)).all())

        if config.adaptive:
            # A non-finite candidate is a rejection with the largest shrink (step_factor
            # takes inf as such): the field may be undefined only beyond some time.
            ratio = error_ratio(np, error, getval(y), getval(y1), rtol, atol, norm) \
                if finite else math.inf
            accept, factor, previous_inverse = step_factor(SCALARS, ratio, previous_inverse,
                                                           tab.order, config)
            h = h * factor
            if not accept:
                stats.n_rejected += 1
                rejected_non_finite = not math.isfinite(ratio)
                continue
        elif not finite:
            fail("non_finite", "non-finite state", t1)

        # Accepted: slope at t1 (FSAL: already computed), then dense output.
        stats.n_steps += 1
        accepted += 1
        f1 = ks[-1] if method.fsal else None
        while next_out < n_out and ts_val[next_out] <= t1:
            if ts_val[next_out] == t1 and (ts_box is None or last):
                outputs.append(y1)
            elif ts_val[next_out] == t1:
                # An output on the end of a step (not the last, whose end moves with
                # t[-1]): y1, moving as the solution does with the output time and with
                # the step's end (t[0] + k h). The slope is the next step's first stage,
                # so it costs no evaluation; the offset is 0 in value, so y1 is exact.
                if f1 is None:
                    f1 = fun(t_b + h_b, y1)
                    stats.nfe_forward += 1
                offset = ts_box[next_out] - (t_b + h_b)
                outputs.append(y1 + (offset - getval(offset)) * f1)
            else:
                if f1 is None and tab.interpolation != "linear":
                    f1 = fun(t_end_b if last else t_b + h_b, y1)
                    stats.nfe_forward += 1
                t_out = ts_box[next_out] if ts_box is not None else float(ts_val[next_out])
                x = (t_out - t_b) / h_b
                weights = None
                if tab.interpolation == "polynomial":
                    weights = _dense_weights(method.b_dense, x, ks, traced)
                outputs.append(_interpolate(tab.interpolation, x, h_b, y, y1, f0, f1, weights))
            next_out += 1
        if last:
            break
        if f1 is None:
            f1 = fun(t_b + h_b, y1)
            stats.nfe_forward += 1
        elif not traced:
            f1 = f1.copy()  # the stage buffer is reused by the next step
        t, y, f0 = t1, y1, f1
    return outputs


# --------------------------------------------------------------- the public solve


def _as_flat_field(func, shape, unflatten, dtype, theta=None, args=None):
    """A vector field on flat states, with times passed in the state's dtype.

    ``theta`` and ``args``: a plain parameter vector and its pytree, already unflattened.
    """

    # The pytree of the last plain theta: unflattened once per solve.
    last = {} if theta is None else {"theta": theta, "args": args}

    def fun(t, y_flat, theta):
        if isbox(theta):
            args = unflatten(theta)
        else:
            if last.get("theta") is not theta:
                last["theta"], last["args"] = theta, unflatten(theta)
            args = last["args"]
            if not (isbox(y_flat) or isbox(t)):
                # The plain-NumPy solve: no autograd wrappers on the way.
                dy = func(dtype.type(t), y_flat.reshape(shape), args)
                return dy.reshape(-1) if type(dy) is np.ndarray else np.reshape(dy, -1)
        t_arg = t if isbox(t) else dtype.type(t)
        return anp.reshape(func(t_arg, anp.reshape(y_flat, shape), args), (-1,))

    return fun


def _plain_flat_field(func, shape, args, dtype, direction):
    """``f(s, y_flat)`` on plain arrays, in ``s = direction * t`` (solved forwards)."""

    def forwards(s, y_flat):
        dy = func(dtype.type(s), y_flat.reshape(shape), args)
        return dy.reshape(-1) if type(dy) is np.ndarray else np.reshape(dy, -1)

    def backwards(s, y_flat):
        return -forwards(-s, y_flat)

    return forwards if direction > 0 else backwards


def odeint(func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig, *,
           count_backward: bool = True):
    """Solve ``dy/dt = func(t, y, args)`` with NumPy; see :func:`odeplug.odeint`.

    Differentiable with ``autograd`` w.r.t. ``y0``, ``t`` and ``args`` (by the adjoint
    method if ``config.adjoint`` is set, else through the solver's operations).
    ``count_backward=False`` skips counting the VJPs of backpropagation (an autograd
    primitive per evaluation); the adjoint's backward solve is always counted.
    """
    y0_val = np.asarray(getval(y0))
    if not isbox(y0):
        y0 = y0_val
    check_initial_state(y0_val)
    t_val = np.asarray(getval(t))
    direction = check_time_grid(t_val)
    if t_val.shape[0] == 1:
        # Nothing to solve: y0 itself (a copy), as torchdiffeq returns it.
        return anp.reshape(y0, (1,) + y0_val.shape) * 1, ODEStats()
    if not isbox(t):
        t = t_val.astype(np.float64)
    shape, dtype = y0_val.shape, y0_val.dtype
    theta, unflatten = flatten_args(args)
    stats = ODEStats()

    # Check the field once on values: output shape and dtype, no hidden boxes.
    theta_val = getval(theta)
    args_val = unflatten(theta_val)
    dy0 = func(dtype.type(t_val[0]), y0_val, args_val)
    if isbox(dy0):
        raise ValueError(
            "the vector field closes over values that autograd is differentiating; "
            "pass them through `args` so that odeint can differentiate them"
        )
    dy0 = np.asarray(dy0)
    check_field_output(dy0.shape, dy0.dtype, shape, dtype)

    traced = isbox(y0) or isbox(t) or isbox(theta)
    if not traced:
        # Nothing to differentiate: the plain-NumPy solve, without autograd's wrappers
        # (a dedicated field: checks for boxes cost a tenth of a small field's evaluation).
        outputs = _integrate(_plain_flat_field(func, shape, args_val, dtype, direction),
                             y0.reshape(-1), direction * t, config, stats, traced=False,
                             direction=direction)
        return np.stack(outputs).reshape((t_val.shape[0],) + shape), stats
    field = _as_flat_field(func, shape, unflatten, dtype, theta_val, args_val)
    if direction < 0:
        # Solve forwards in s = -t: dy/ds = -f(-s, y).
        base_field = field
        field = lambda s, y, th: -base_field(-s, y, th)  # noqa: E731
        t = -t
    problem = _Problem(field, config, stats, direction)
    y0_flat = anp.reshape(y0, (-1,))
    if config.adjoint is None:
        if count_backward:
            traced_field = lambda s, y: _count_backward(field(s, y, theta), stats)  # noqa: E731
        else:
            traced_field = lambda s, y: field(s, y, theta)  # noqa: E731
        outputs = _integrate(traced_field, y0_flat, t, config, stats, traced=True,
                             direction=direction)
        ys = anp.stack(outputs)
    else:
        ys = _odeint_with_adjoint(y0_flat, t, theta, problem)
    return anp.reshape(ys, (t_val.shape[0],) + shape), stats


@dataclass(frozen=True)
class _Problem:
    """What the adjoint primitive needs besides its differentiable inputs."""

    field: Callable  # field(t, y_flat, theta) -> dy_flat, on an increasing time axis
    config: ODESolveConfig
    stats: ODEStats
    direction: int


@primitive
def _odeint_with_adjoint(y0, ts, theta, problem: _Problem):
    outputs = _integrate(lambda s, y: problem.field(s, y, theta), y0, ts, problem.config,
                         problem.stats, traced=False, direction=problem.direction)
    return np.stack(outputs)


def _adjoint_vjp_maker(argnums, ys, args, kwargs):
    """VJP of the solve by the adjoint method (Chen et al. 2018, Algorithm 1): the
    backward integration of :func:`odeplug._adjoint.backsolve`, shared with the torch
    engine, on this engine's solver and autograd's VJP of the field."""
    _, ts, theta, problem = args
    ts = np.asarray(ts, dtype=np.float64)
    config, stats = problem.config, problem.stats
    strategy = config.adjoint
    n_state, n_theta = ys.shape[1], theta.shape[0]

    def field_vjp(s, y, a):
        vjp, dy = make_vjp(lambda y_theta: problem.field(s, y_theta[0], y_theta[1]))(
            (y, theta))
        a_y, a_theta = vjp(a)
        return dy, a_y, a_theta

    augmented = augmented_dynamics(field_vjp, n_state, np.concatenate)

    def vjp(g):
        g = np.asarray(g)
        backward_stats = ODEStats()
        want_ts = 1 in argnums

        def solve_interval(z, r0, r1):
            return _integrate(
                augmented, z, np.array([r0, r1]), config, backward_stats,
                traced=False, norm_size=2 * n_state if strategy.seminorm else None,
                rtol=strategy.rtol, atol=strategy.atol, direction=-problem.direction,
            )[-1]

        a, a_theta, grad_ts = backsolve(
            ts, ys, g, np.zeros(n_theta, dtype=np.result_type(theta.dtype, ys.dtype)),
            n_state=n_state, solve_interval=solve_interval, concat=np.concatenate,
            field=(lambda s, y: problem.field(s, y, theta)) if want_ts else None,
            dot=np.dot,
        )
        grad_ts = np.array(grad_ts, dtype=np.float64) if want_ts else np.zeros_like(ts)
        stats.nfe_backward += backward_stats.nfe_forward + (len(ts) if want_ts else 0)
        grads = {0: a.astype(ys.dtype), 1: grad_ts, 2: a_theta.astype(theta.dtype)}
        return tuple(grads[i] for i in argnums)

    return vjp


defvjp_argnums(_odeint_with_adjoint, _adjoint_vjp_maker)


@primitive
def _count_backward(dy, stats: ODEStats):
    """Identity that counts, during backprop, the VJPs through the vector field."""
    return dy


def _count_backward_vjp(ans, dy, stats):
    def vjp(g):
        stats.nfe_backward += 1
        return g

    return vjp


defvjp(_count_backward, _count_backward_vjp)


def odeint_rows(func: Callable, y0: np.ndarray, t: np.ndarray, args: Any,
                config: ODESolveConfig, *, batched: bool = True,
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Solve each row of ``y0`` (shape ``(n, d)``) as its own problem, no gradients.

    Every row gets its own adaptive steps, so its result and cost do not depend on the
    other rows (the adaptive cost per input of Chen et al.); the rows are solved together
    by :func:`odeplug._rows.solve_rows`, one evaluation of the field per stage for all
    rows still running.

    Parameters
    ----------
    func : callable
        ``func(t, y, args)`` on a batch of rows: ``y`` of shape ``(m, d)`` and ``t`` of
        shape ``(m, 1)``, the time of each row, in ``y``'s dtype.
    y0 : ndarray of shape ``(n, d)``
    t : ndarray of shape ``(T,)`` or ``(n, T)``
        One grid for every row or one per row (NaN-padded at the end; see
        :func:`~odeplug._rows.solve_rows`).
    args : pytree
        Passed to ``func`` (``odeplug.Constant`` leaves unwrapped).
    config : ODESolveConfig
        ``config.adjoint`` is ignored (nothing is differentiated).
    batched : bool, default=True
        False: one row at a time (bit-for-bit independent of the other rows, slower).

    Returns
    -------
    ys : ndarray of shape ``(T, n, d)``
    counters : dict of str to ndarray of shape ``(n,)``
        ``nfe_forward``, ``n_steps`` and ``n_rejected`` of each row.
    """
    y0 = np.asarray(getval(y0))
    check_initial_state(y0)
    if y0.ndim != 2:
        raise ValueError(f"odeint_rows needs states of shape (n, d), got {tuple(y0.shape)}")
    theta, unflatten = flatten_args(args)
    args_val = unflatten(getval(theta))

    def fun(t_rows, y):
        return func(t_rows, y, args_val)

    solution = solve_rows(np, fun, y0, np.asarray(getval(t)), config, batched=batched)
    return solution.ys, solution.counters()
