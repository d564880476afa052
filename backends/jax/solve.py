"""odeint on JAX: diffrax's ``diffeqsolve`` loop with odeplug's numerics.

diffrax runs the loop (steps, dense output at the requested times, ``vmap`` and
backpropagation through the solver); the numbers are odeplug's, written once in the core
and handed to diffrax through its public interfaces:

* solvers: every tableau of ``odeplug._tableaus`` as a ``diffrax.AbstractERK`` (diffrax's
  documented way to define a Runge-Kutta method), with the reference engine's dense
  output (:class:`_DenseOutput`): the tableau's ``b_dense`` polynomials, the cubic
  Hermite through ``(y0, f0)`` and ``(y1, f1)``, or linear for euler. A method without
  a last stage ``f(t1, y1)`` (euler, midpoint, heun, rk4) gets one, first same as last:
  the Hermite needs ``f1``, and the stage is the next step's first, so it costs one
  evaluation per solve, not per step;
* step sizes: two controllers on diffrax's public ``AbstractStepSizeController``
  interface, made of ``odeplug._stepping``: :class:`_PIController` (error ratio, PI
  factor, the reference's step-size underflow and non-finite rules) and
  :class:`_FixedGrid` (``t0 + k h``, the last step shortened). Hairer's first step is
  computed here (``_stepping.initial_step``) and passed as ``dt0``;
* gradients: backpropagation through diffrax's loop (``adjoint=False``), or odeplug's
  own adjoint (Chen et al. 2018, Algorithm 1, as the reference engine's
  ``_adjoint_vjp_maker``), a ``jax.custom_vjp`` whose backward pass is one
  ``diffeqsolve`` of the augmented state ``[y, a, a_theta]`` per interval between output
  times, over the differentiated inputs only (:class:`odeplug.Constant` leaves, and
  inputs the caller does not differentiate, cost no adjoint channel).

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
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from odeplug._constant import Constant
from odeplug._solver_options import ODESolveConfig, ODEStats
from odeplug._stepping import (
    error_ratio,
    fixed_step_count,
    fixed_step_end,
    initial_step,
    rms_norm,
    step_factor,
    step_size_underflow,
)
from odeplug._tableaus import TABLEAUS, ButcherTableau
from odeplug._validation import check_field_output, check_initial_state, check_time_grid
from odeplug.exceptions import SolverError

from ._compat import primed_fsal_state

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
    "odeint_traced",
    "row_solver_error",
    "solver_error",
    "split_config",
]

# ---------------------------------------------------------------------- dense output


def _fraction(t0, t, t1):
    """``(t - t0) / (t1 - t0)``, 0 on an empty step (a finished row under ``vmap`` keeps
    stepping on ``[t1, t1]``; a NaN there would reach the gradients through
    ``jnp.where``)."""
    empty = t1 == t0
    return jnp.where(empty, 0.0, (t - t0) / jnp.where(empty, 1.0, t1 - t0))


class _DenseOutput(diffrax.AbstractLocalInterpolation):
    """The reference engine's interpolation inside one step ``[t0, t1]``.

    ``k`` holds the stages in diffrax's k-space, ``k_i = h f_i``, so ``k[0] = h f0`` and,
    with the FSAL last stage, ``k[-1] = h f1``. Each solver has its subclass, setting
    ``kind`` and ``b_dense`` from its tableau (``odeplug._tableaus``).
    """

    t0: Any
    t1: Any
    y0: Any
    y1: Any
    k: Any

    kind: ClassVar[str]  # "polynomial", "hermite" or "linear"
    b_dense: ClassVar[np.ndarray | None]  # (stages, P): weights of x**1 .. x**P

    def evaluate(self, t0, t1=None, left=True):
        del left  # continuous inside a step
        if t1 is not None:
            return self.evaluate(t1) - self.evaluate(t0)
        x = _fraction(self.t0, t0, self.t1).astype(self.y0.dtype)
        if self.kind == "linear":
            return self.y0 + x * (self.y1 - self.y0)
        if self.kind == "hermite":
            x2, x3 = x * x, x * x * x
            return ((2 * x3 - 3 * x2 + 1) * self.y0 + (x3 - 2 * x2 + x) * self.k[0]
                    + (3 * x2 - 2 * x3) * self.y1 + (x3 - x2) * self.k[-1])
        # y0 + h sum_i b_i(x) f_i, b_i(x) = sum_p b_dense[i, p] x**(p + 1).
        b_dense = jnp.asarray(self.b_dense, self.y0.dtype)
        # Integer powers (repeated products), as the reference's x ** (p + 1).
        powers = jnp.stack([x ** (p + 1) for p in range(b_dense.shape[1])])
        return self.y0 + jnp.tensordot(b_dense @ powers, self.k, axes=1)


# --------------------------------------------------------------------------- solvers


class _RungeKutta(diffrax.AbstractERK):
    """A method of ``odeplug._tableaus`` in diffrax; subclasses set the class variables."""

    method: ClassVar[ButcherTableau]
    tableau: ClassVar[diffrax.ButcherTableau]
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]]

    def order(self, terms):
        return self.method.order


def _diffrax_tableau(tab: ButcherTableau) -> diffrax.ButcherTableau:
    """diffrax's tableau of ``tab``; a method that is not first-same-as-last gets a last
    stage ``f(t1, y1)`` (its row is ``b``, its weight 0), which diffrax recognises as
    FSAL. diffrax's ``c`` and ``a_lower`` start at the second stage."""
    b = np.asarray(tab.b)
    rows = [np.asarray(row) for row in tab.a[1:]]
    if tab.fsal:
        c, b_sol = np.asarray(tab.c[1:]), b
    else:
        c, b_sol = np.asarray(tab.c[1:] + (1.0,)), np.append(b, 0.0)
        rows.append(b)
    # Fixed-step methods have no error estimate; their controller never reads it (and
    # XLA drops the unused products).
    b_error = np.zeros(b_sol.size) if tab.b_error is None else np.asarray(tab.b_error)
    return diffrax.ButcherTableau(c=c, b_sol=b_sol, b_error=b_error, a_lower=tuple(rows))


def _solver(tab: ButcherTableau) -> _RungeKutta:
    dense = type(f"_{tab.name.capitalize()}Dense", (_DenseOutput,), {
        "kind": tab.interpolation,
        "b_dense": None if tab.b_dense is None else np.asarray(tab.b_dense),
    })
    cls = type(f"_{tab.name.capitalize()}", (_RungeKutta,), {
        "method": tab, "tableau": _diffrax_tableau(tab), "interpolation_cls": dense,
    })
    return cls()


_SOLVERS: dict[str, _RungeKutta] = {name: _solver(tab) for name, tab in TABLEAUS.items()}


def _evaluations(static: SolveStatic) -> tuple[int, int]:
    """``(at start, per step)``: vector-field evaluations of a solve, steps counted
    accepted or rejected. At start: ``f(t0, y0)``, shared by the solver and Hairer's
    initial step, plus the initial step's own evaluation."""
    per_step = _SOLVERS[static.solver].tableau.num_stages - 1  # FSAL: k0 is known
    hairer = static.adaptive and not static.has_first_step
    return 1 + int(hairer), per_step


# ----------------------------------------------------------------------- controllers

def _underflow(h, t):
    """``h`` too small to advance from ``t`` (``_stepping.step_size_underflow``), in the
    precision of the times: a float32 solve cannot resolve steps of float64's epsilon,
    which the reference engine's float64 times can."""
    return step_size_underflow(jnp, t, h, jnp.finfo(jnp.result_type(t)).eps)


def _all_finite(y) -> jax.Array:
    return jnp.all(jnp.isfinite(y))


class _Norm(eqx.Module):
    """RMS norm of a state; of its first ``size`` entries (flattened) when given: the
    seminorm of the adjoint's augmented state ``[y, a, a_theta]`` leaves ``a_theta``
    out (Kidger, Chen & Lyons 2021). A module, not a closure, so that equal norms hash
    equal (jit caches)."""

    size: int | None = eqx.field(static=True, default=None)

    def __call__(self, x):
        return rms_norm(jnp, x if self.size is None else jnp.ravel(x)[: self.size])


class _PIController(diffrax.AbstractAdaptiveStepSizeController):
    """odeplug's PI controller (``odeplug._stepping``), with the reference engine's
    failures.

    A step is accepted when its error ratio is below 1; the next step is ``h *
    step_factor``. A non-finite candidate is a rejection with the largest shrink. The
    solve fails (diffrax's ``RESULTS``, mapped to odeplug's reasons by :func:`_code`)
    when an attempted step, or the step after a rejection, falls below the underflow
    threshold (:func:`_underflow`): ``nonfinite`` if the last candidate was not finite,
    ``dt_min_reached`` otherwise. The step sizes are not differentiated (as in diffrax's
    ``PIDController``, torchdiffeq and the reference engine).

    ``init`` starts from Hairer's step when ``dt0`` is None (a hand-written
    ``diffeqsolve``); :func:`odeint` computes it itself and passes it as ``dt0``, to
    share ``f(t0, y0)`` with the solver.
    """

    rtol: Any
    atol: Any
    norm: Callable
    order: int = eqx.field(static=True)
    safety: float = eqx.field(static=True, default=0.9)
    factormin: float = eqx.field(static=True, default=0.2)
    factormax: float = eqx.field(static=True, default=10.0)
    pcoeff: float = eqx.field(static=True, default=0.0)
    icoeff: float = eqx.field(static=True, default=1.0)

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            # dy/ds in diffeqsolve's time s (which increases): diffrax's WrapTerm keeps
            # the field and multiplies the control by the direction, which contr(0, 1) is.
            direction = terms.contr(jnp.zeros_like(t0), jnp.ones_like(t0))

            def slope(s, y):
                return terms.prod(func(terms, s, y, args), direction)

            dt0 = jax.lax.stop_gradient(initial_step(
                jnp, slope, t0, y0, slope(t0, y0), self.order, self.rtol, self.atol,
                self.norm))
        return t0 + dt0, (jnp.ones((), jnp.result_type(y0)), t1)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                        controller_state):
        del args, error_order  # the exponent is 1 / the method's order, as the reference
        previous_inverse, t_end = controller_state
        h = t1 - t0
        ratio = jax.lax.stop_gradient(
            error_ratio(jnp, y_error, y0, y1_candidate, self.rtol, self.atol, self.norm))
        finite = _all_finite(y1_candidate) & jnp.isfinite(ratio)
        ratio = jnp.where(finite, ratio, jnp.inf)
        accept, factor, previous_inverse = step_factor(jnp, ratio, previous_inverse,
                                                       self.order, self)
        h_next = h * jax.lax.stop_gradient(factor).astype(h.dtype)
        # Steps clipped to end on t_end may be short (diffrax clips within 100 ulps).
        underflow = (_underflow(h, t0) & (t1 != t_end)) | (~accept & _underflow(h_next, t0))
        keep = accept & ~underflow
        result = diffrax.RESULTS.where(
            underflow,
            diffrax.RESULTS.where(finite, diffrax.RESULTS.dt_min_reached,
                                  diffrax.RESULTS.nonfinite),
            diffrax.RESULTS.successful)
        next_t0 = jnp.where(keep, t1, t0)
        return keep, next_t0, next_t0 + h_next, False, (previous_inverse, t_end), result


class _FixedGrid(diffrax.AbstractStepSizeController):
    """Steps of ``dt0`` from ``t0``, the last one shortened to end on ``t1``
    (``odeplug._stepping.fixed_step_count``/``fixed_step_end``), as the reference engine.

    (diffrax 0.7's ``ConstantStepSize`` takes one step of ``dt0``, then splits the rest
    into ``ceil((t1 - t0) / dt0)`` equal steps.) A non-finite state stops the solve with
    ``RESULTS.nonfinite``; the step is not kept, so the outputs so far are those before
    it.
    """

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            raise ValueError("fixed-step solvers need a step size")
        n_steps = fixed_step_count(jnp, t0, t1, dt0)
        one = jnp.ones((), jnp.result_type(t0))
        return fixed_step_end(jnp, t0, t1, dt0, one, n_steps), (t0, t1, dt0, n_steps, one)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                        controller_state):
        start, end, h, n_steps, k = controller_state
        finite = _all_finite(y1_candidate)
        k = jnp.where(finite, k + 1, k)
        result = diffrax.RESULTS.where(finite, diffrax.RESULTS.successful,
                                       diffrax.RESULTS.nonfinite)
        t_next = jnp.where(finite, fixed_step_end(jnp, start, end, h, k, n_steps), t1)
        return (finite, jnp.where(finite, t1, t0), t_next, False,
                (start, end, h, n_steps, k), result)


# --------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SolveStatic:
    """What of an ``ODESolveConfig`` changes the computation: static under ``jit``.

    Hashable: the key of a compile cache (a program's compiled step, say, is one per
    ``SolveStatic`` and architecture, whatever the tolerances).

    Attributes
    ----------
    solver : str
    adaptive : bool
        Adaptive steps (else a fixed grid of ``SolveValues.step_size``).
    adjoint : bool
        Gradients by odeplug's adjoint (else backpropagation through the solver).
    seminorm : bool
        The adjoint's backward solves leave the parameter channels out of their error.
    max_num_steps : int
        Step budget of each solve (forward, and each backward interval). Static because
        diffrax's ``max_steps`` is: it sizes the buffers of the loop.
    has_first_step : bool
        The first step is ``SolveValues.first_step`` rather than Hairer's.
    safety, factormin, factormax, pcoeff, icoeff : float
        The PI controller's constants (``ODESolveConfig``).
    """

    solver: str
    adaptive: bool
    adjoint: bool
    seminorm: bool
    max_num_steps: int
    has_first_step: bool
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    pcoeff: float = 0.0
    icoeff: float = 1.0


class SolveValues(NamedTuple):
    """What of an ``ODESolveConfig`` only changes values: traced under ``jit``.

    Python floats or JAX scalars; cast to the state's dtype. An entry that the static
    part does not use (``step_size`` of an adaptive solve, ``first_step`` without
    ``has_first_step``) is NaN and ignored.
    """

    rtol: Any
    atol: Any
    adjoint_rtol: Any
    adjoint_atol: Any
    step_size: Any
    first_step: Any


def split_config(config: ODESolveConfig) -> tuple[SolveStatic, SolveValues]:
    """``(static, values)`` of a configuration; see :class:`SolveStatic`."""
    strategy = config.adjoint
    adjoint_rtol = config.rtol if strategy is None or strategy.rtol is None else strategy.rtol
    adjoint_atol = config.atol if strategy is None or strategy.atol is None else strategy.atol
    static = SolveStatic(
        solver=config.solver, adaptive=config.adaptive, adjoint=strategy is not None,
        seminorm=strategy is not None and strategy.seminorm,
        max_num_steps=config.max_num_steps, has_first_step=config.first_step is not None,
        safety=config.safety, factormin=config.factormin, factormax=config.factormax,
        pcoeff=config.pcoeff, icoeff=config.icoeff)
    nan = math.nan
    values = SolveValues(
        rtol=config.rtol, atol=config.atol, adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        step_size=nan if config.step_size is None else config.step_size,
        first_step=nan if config.first_step is None else config.first_step)
    return static, values


def _as_arrays(values: SolveValues, dtype) -> SolveValues:
    return SolveValues(*(jnp.asarray(v, dtype) for v in values))


def _controller(static: SolveStatic, rtol, atol, norm: _Norm):
    if not static.adaptive:
        return _FixedGrid()
    return _PIController(
        rtol=rtol, atol=atol, norm=norm, order=TABLEAUS[static.solver].order,
        safety=static.safety, factormin=static.factormin, factormax=static.factormax,
        pcoeff=static.pcoeff, icoeff=static.icoeff)


def diffeqsolve_arguments(config: ODESolveConfig) -> dict[str, Any]:
    """``solver``, ``stepsize_controller`` and ``max_steps`` of ``diffrax.diffeqsolve``
    for a configuration: a hand-written ``diffeqsolve`` with them (``dt0=None``) takes
    the steps of :func:`odeint` (benchmarks compare like with like). Its NFE is one more
    than odeint's: it does not share ``f(t0, y0)`` between Hairer's step and the solver.
    """
    static, values = split_config(config)
    return {
        "solver": _SOLVERS[config.solver],
        "stepsize_controller": _controller(static, values.rtol, values.atol, _Norm()),
        "max_steps": config.max_num_steps,
    }


# ------------------------------------------------------------------ results and info

# odeplug's result codes: index in REASONS (0: success). A diffrax failure that odeplug
# does not name (none occurs with these solvers and controllers) is "unknown".
REASONS = ("", "max_num_steps", "step_size_underflow", "non_finite", "unknown")
_WHAT = ("", "max_num_steps={} exceeded", "step size underflow", "non-finite state",
         "the solve failed")


def _code(result) -> jax.Array:
    """odeplug's code (int32) of a diffrax result, through ``==`` only."""
    R = diffrax.RESULTS
    named = [result == R.successful, result == R.max_steps_reached,
             result == R.dt_min_reached, result == R.nonfinite]
    return jnp.select(named, [0, 1, 2, 3], 4).astype(jnp.int32)


def failure_reason(code: int, static: SolveStatic) -> tuple[str, str]:
    """``(reason, message)`` of a result code (not 0), on the host; the message without
    the time, e.g. ``("max_num_steps", "max_num_steps=64 exceeded")``."""
    return REASONS[int(code)], _WHAT[int(code)].format(static.max_num_steps)


def _messages(static: SolveStatic, what: str = "") -> tuple[str, ...]:
    """Messages of the codes, for equinox's runtime error (no time: it is traced)."""
    return ("",) + tuple(f"{what}{w.format(static.max_num_steps)}" for w in _WHAT[1:])


class SolveInfo(NamedTuple):
    """Counters and outcome of a forward solve, as arrays (batched: one per row).

    Attributes
    ----------
    nfe_forward, n_steps, n_rejected : int32
        As ``ODEStats``.
    code : int32
        0 on success, else the index of the reason in :data:`REASONS`.
    t_reached : float
        The time the solve reached, as the reference engine reports it (the end of the
        step whose state became non-finite, for a fixed-step solve); ``t[-1]`` on
        success.
    n_outputs : int32
        How many of the output times were reached: the outputs after them are NaN.
    """

    nfe_forward: jax.Array
    n_steps: jax.Array
    n_rejected: jax.Array
    code: jax.Array
    t_reached: jax.Array
    n_outputs: jax.Array

    def stats(self) -> ODEStats:
        """The counters as ``ODEStats`` (``nfe_backward`` None: see :class:`BackwardInfo`)."""
        return ODEStats(nfe_forward=self.nfe_forward, nfe_backward=None,
                        n_steps=self.n_steps, n_rejected=self.n_rejected)


class BackwardInfo(NamedTuple):
    """Counters and outcome of the adjoint's backward solves, from a probe's cotangent.

    Attributes
    ----------
    nfe_backward : array
        Evaluations of the augmented field (one VJP of the vector field each), plus one
        of the field when the times are differentiated.
    code : array
        The first failure's code (:data:`REASONS`), 0 if none.
    t_reached : array
        Where the failed backward solve stopped; NaN if none failed.
    """

    nfe_backward: jax.Array
    code: jax.Array
    t_reached: jax.Array


# nfe, code, time: exact in float32 below 2**24 evaluations.
_PROBE_SIZE = 3


def backward_probe(dtype=jnp.float32) -> jax.Array:
    """A probe for :func:`odeint_traced`: differentiate the loss w.r.t. it, and read its
    gradient with :func:`backward_info`. One probe per solve (cotangents of a probe used
    twice add up)."""
    return jnp.zeros(_PROBE_SIZE, dtype)


def backward_info(probe_cotangent: jax.Array) -> BackwardInfo:
    """:class:`BackwardInfo` of a probe's gradient (zeros if no backward pass ran)."""
    return BackwardInfo(nfe_backward=probe_cotangent[0].astype(jnp.int32),
                        code=probe_cotangent[1].astype(jnp.int32),
                        t_reached=probe_cotangent[2])


# -------------------------------------------------------------------------- the args


_PARAM, _CONSTANT, _STATIC = 0, 1, 2


@dataclass(frozen=True)
class _Layout:
    """How a pytree of ``args`` was flattened (hashable: static under jit).

    Leaves in order, the value of each ``Constant`` flattened in its place. ``kinds``:
    ``_PARAM`` (an inexact array outside a ``Constant``: differentiated), ``_CONSTANT``
    (another array: no gradient, no adjoint channel) or ``_STATIC`` (not an array: a
    Python value, part of the function).
    """

    treedef: Any
    # Per node of treedef: (the Constant value's treedef,) or () for a plain leaf (not
    # None: a PyTreeDef cannot be compared with None, and jit compares layouts).
    inner: tuple[tuple, ...]
    kinds: tuple[int, ...]

    @classmethod
    def of(cls, args: Any) -> tuple[_Layout, list]:
        nodes, treedef = jax.tree.flatten(args, is_leaf=lambda x: isinstance(x, Constant))
        leaves, inner, kinds = [], [], []
        for node in nodes:
            if isinstance(node, Constant):
                values, value_def = jax.tree.flatten(node.value)
                leaves += values
                inner.append((value_def,))
                kinds += [_CONSTANT if eqx.is_array(v) else _STATIC for v in values]
            else:
                leaves.append(node)
                inner.append(())
                kinds.append(_PARAM if eqx.is_inexact_array(node)
                             else _CONSTANT if eqx.is_array(node) else _STATIC)
        return cls(treedef, tuple(inner), tuple(kinds)), leaves

    def unflatten(self, leaves: Sequence) -> Any:
        """The args the field receives: each ``Constant`` replaced by its value."""
        nodes, position = [], 0
        for constant in self.inner:
            if not constant:
                nodes.append(leaves[position])
                position += 1
            else:
                value_def, = constant
                size = value_def.num_leaves
                nodes.append(value_def.unflatten(leaves[position : position + size]))
                position += size
        return self.treedef.unflatten(nodes)

    def split(self, leaves: Sequence) -> tuple[list, list, list]:
        """``(params, constants, statics)`` of the leaves, each in order."""
        return tuple([x for x, k in zip(leaves, self.kinds, strict=True) if k == kind]
                     for kind in (_PARAM, _CONSTANT, _STATIC))

    def merge(self, params: Sequence, constants: Sequence, statics: Sequence) -> list:
        sources = (iter(params), iter(constants), iter(statics))
        return [next(sources[kind]) for kind in self.kinds]


class _CheckedField(eqx.Module):
    """The caller's vector field, checking the shape and dtype of what it returns.

    The check runs when the field is traced (once per compilation), so it costs nothing
    per call.
    """

    func: Callable

    def __call__(self, t, y, args):
        dy = self.func(t, y, args)
        check_field_output(jnp.shape(dy), jnp.result_type(dy), jnp.shape(y),
                           jnp.result_type(y))
        return dy


# ------------------------------------------------------------------- forward solve


def _first_step(slope, s0, y0, f0, order, static: SolveStatic, values: SolveValues,
                rtol, atol, norm):
    """The first step size (positive, in diffeqsolve's increasing time ``s``), for
    ``slope(s, y) = dy/ds`` and ``f0 = slope(s0, y0)``."""
    if not static.adaptive:
        return values.step_size
    if static.has_first_step:
        return values.first_step
    # Not differentiated (as the step sizes); f0's gradient flows through the solver.
    return jax.lax.stop_gradient(initial_step(jnp, slope, s0, y0, f0, order, rtol, atol,
                                              norm))


def _forward(vf: Callable, y0: jax.Array, t: jax.Array, args: Any, static: SolveStatic,
             values: SolveValues, *, padded: bool = False) -> tuple[jax.Array, SolveInfo]:
    """The forward solve: ``ys`` at every ``t`` (NaN where not reached) and its info.

    ``vf(t, y, args)``; ``t`` in the state's dtype, monotonic. ``padded``: ``t`` may end
    with NaNs (a row of per-row times), whose outputs are NaN; the solve ends at the
    last time that is not NaN.
    """
    if padded:
        valid = ~jnp.isnan(t)
        t1 = t[jnp.sum(valid) - 1]
        t_save = jnp.where(valid, t, t1)
    else:
        t1, t_save = t[-1], t
    t0 = t[0]
    direction = jnp.where(t1 >= t0, 1, -1).astype(y0.dtype)
    solver = _SOLVERS[static.solver]
    order = solver.method.order
    norm = _Norm()

    f0 = vf(t0, y0, args)
    h = _first_step(lambda s, y: direction * vf(direction * s, y, args), direction * t0,
                    y0, direction * f0, order, static, values, values.rtol, values.atol,
                    norm)
    # Outputs only at [t0, t1] (the ODE-Net's and the CNF's solves): the final state
    # is the output, so the loop needs no dense output at all. Its interpolation and
    # the inner loop that saves each requested time roughly double the compiled
    # program (and XLA's compile time) otherwise.
    endpoints = not padded and t.shape[0] == 2
    subs = [diffrax.SubSaveAt(t1=True)]
    if not endpoints:
        subs.insert(0, diffrax.SubSaveAt(ts=t_save))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), solver, t0=t0, t1=t1, dt0=direction * h, y0=y0, args=args,
        saveat=diffrax.SaveAt(subs=subs),
        stepsize_controller=_controller(static, values.rtol, values.atol, norm),
        max_steps=static.max_num_steps, throw=False, solver_state=primed_fsal_state(f0),
    )
    code = _code(sol.result)
    t_last = sol.ts[-1][0]  # the last accepted time (diffeqsolve's final state)
    reached = direction * t_save <= direction * t_last
    if padded:
        reached = reached & valid
    saved = jnp.concatenate([y0[None], sol.ys[-1]]) if endpoints else sol.ys[0]
    ys = jnp.where(reached.reshape((-1,) + (1,) * y0.ndim), saved, jnp.nan)
    t_reached = t_last
    if not static.adaptive:
        # A fixed step whose state is not finite is not kept; the reference reports
        # the end of that step.
        s0, s1 = direction * t0, direction * t1
        accepted = sol.stats["num_accepted_steps"].astype(y0.dtype)
        t_failed = direction * fixed_step_end(
            jnp, s0, s1, h, accepted + 1, fixed_step_count(jnp, s0, s1, h))
        t_reached = jnp.where(code == REASONS.index("non_finite"), t_failed, t_last)
    at_start, per_step = _evaluations(static)
    info = SolveInfo(
        nfe_forward=(at_start + per_step * sol.stats["num_steps"]).astype(jnp.int32),
        n_steps=sol.stats["num_accepted_steps"].astype(jnp.int32),
        n_rejected=sol.stats["num_rejected_steps"].astype(jnp.int32),
        code=code, t_reached=t_reached,
        n_outputs=jnp.sum(reached).astype(jnp.int32))
    return ys, info


# ------------------------------------------------------------------------ the adjoint


@dataclass(frozen=True, eq=False)
class _Problem:
    """What the adjoint's custom VJP takes as non-differentiable: the field on lists of
    ``(params, constants)`` (statics and closed-over values inside), the static
    configuration, and whether a failed backward solve raises (equinox's runtime
    error) rather than only reporting its code through the probe."""

    field: Callable  # field(t, y, params, constants) -> dy
    static: SolveStatic
    raise_errors: bool


def _vf(problem: _Problem) -> Callable:
    return lambda t, y, pc: problem.field(t, y, *pc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve_adjoint(problem, y0, t, params, constants, values, probe):
    del probe  # only its cotangent matters
    return _forward(_vf(problem), y0, t, (params, constants), problem.static, values)


def _solve_adjoint_fwd(problem, y0, t, params, constants, values, probe):
    # With symbolic zeros, each leaf comes with `perturbed`: whether the caller
    # differentiates it. Only those get adjoint channels.
    plain = jax.tree.map(lambda x: x.value, (y0, t, params, constants, values))
    wanted = _Wanted(t=t.perturbed, probe=probe.perturbed,
                     params=tuple(p.perturbed for p in params))
    ys, info = _forward(_vf(problem), plain[0], plain[1], (plain[2], plain[3]),
                        problem.static, plain[4])
    return (ys, info), (plain, ys, wanted)


class _Wanted(eqx.Module):
    """Which inputs the backward pass differentiates: static, in the residuals' treedef."""

    t: bool = eqx.field(static=True)
    probe: bool = eqx.field(static=True)
    params: tuple[bool, ...] = eqx.field(static=True)


def _solve_adjoint_bwd(problem, residuals, cotangents):
    """The adjoint method (Chen et al. 2018, Algorithm 1), interval by interval between
    output times, as the reference engine's ``_adjoint_vjp_maker``.

    From ``a = dL/dy(t[-1])``, each interval ``[t[i-1], t[i]]`` solves the augmented
    state ``z = [y, a, a_theta]`` (one flat vector: one error norm, as the reference,
    and few operations per stage) backwards from ``y = ys[i]``; ``a`` then takes the
    direct cotangent of ``ys[i-1]``. ``dL/dt_i = f(t_i, y_i) . g_i`` for ``i >= 1``
    (the augmented field's first block at the interval's start, free), ``dL/dt_0 =
    -f(t_0, y_0) . (a(t_0) - g_0)`` (one evaluation).
    """
    (y0, t, params, constants, values), ys, wanted = residuals
    static = problem.static
    g_ys = cotangents[0]
    if isinstance(g_ys, SymbolicZero):
        g_ys = jnp.zeros_like(ys)
    dtype, shape, n = y0.dtype, y0.shape, y0.size
    mask = wanted.params
    diff = [p for p, w in zip(params, mask, strict=True) if w]
    fixed = [p for p, w in zip(params, mask, strict=True) if not w]

    def field(s, y, diff):
        diff_iter, fixed_iter = iter(diff), iter(fixed)
        every = [next(diff_iter) if w else next(fixed_iter) for w in mask]
        return problem.field(s, y, every, constants)

    sizes = [p.size for p in diff]

    def augmented(s, z, diff):
        y, a = z[:n].reshape(shape), z[n : 2 * n].reshape(shape)
        dy, vjp = jax.vjp(lambda y, d: field(s, y, d), y, diff)
        a_y, a_diff = vjp(-a)  # da/dt = -a df/dy, da_theta/dt = -a df/dtheta
        return jnp.concatenate([dy.ravel(), a_y.ravel()]
                               + [x.ravel().astype(dtype) for x in a_diff])

    solver = _SOLVERS[static.solver]
    order = solver.method.order
    norm = _Norm(2 * n if static.seminorm else None)
    controller = _controller(static, values.adjoint_rtol, values.adjoint_atol, norm)
    at_start, per_step = _evaluations(static)
    term = diffrax.ODETerm(augmented)

    def interval(carry, inputs):
        a, a_diff, nfe, code, t_failed = carry
        t_start, t_end, y_start, g_end, g_start = inputs
        z = jnp.concatenate([y_start.ravel(), a, a_diff])
        f_z = augmented(t_start, z, diff)
        direction = jnp.where(t_end >= t_start, 1, -1).astype(dtype)
        h = _first_step(lambda s, z: direction * augmented(direction * s, z, diff),
                        direction * t_start, z, direction * f_z, order, static, values,
                        values.adjoint_rtol, values.adjoint_atol, norm)
        sol = diffrax.diffeqsolve(
            term, solver, t0=t_start, t1=t_end, dt0=direction * h, y0=z, args=diff,
            saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller,
            max_steps=static.max_num_steps, throw=False,
            solver_state=primed_fsal_state(f_z))
        z_end = sol.ys[0]
        new_code = _code(sol.result)
        first_failure = (code == 0) & (new_code != 0)
        carry = (z_end[n : 2 * n] + g_end.ravel(), z_end[2 * n :],
                 nfe + at_start + per_step * sol.stats["num_steps"],
                 jnp.where(code == 0, new_code, code),
                 jnp.where(first_failure, sol.ts[0], t_failed))
        # dL/dt_i of the interval's start t_i: f(t_i, y_i) is f_z's first block.
        return carry, jnp.vdot(f_z[:n], g_start.ravel())

    m = sum(sizes)
    carry = (g_ys[-1].ravel(), jnp.zeros(m, dtype), jnp.zeros((), jnp.int32),
             jnp.zeros((), jnp.int32), jnp.full((), jnp.nan, dtype))
    # Intervals from the last: (t_i, t_{i-1}, ys_i, g_{i-1}, g_i) for i = T-1 .. 1.
    inputs = (t[1:], t[:-1], ys[1:], g_ys[:-1], g_ys[1:])
    if t.shape[0] == 2:  # the common [t0, t1]: no loop around the one solve
        carry, dt_ends = interval(carry, jax.tree.map(lambda x: x[0], inputs))
        dt_ends = dt_ends[None]
    else:
        carry, dt_ends = jax.lax.scan(interval, carry, inputs, reverse=True)
    a, a_diff, nfe, code, t_failed = carry

    grad_t = None
    if wanted.t:
        # dL/dt0: moving t0 with y0 fixed moves the whole trajectory.
        dt_start = -jnp.vdot(field(t[0], y0, diff).ravel(), a - g_ys[0].ravel())
        grad_t = jnp.concatenate([dt_start[None], dt_ends]).astype(t.dtype)
        nfe = nfe + 1
    pieces = iter(jnp.split(a_diff, np.cumsum(sizes)[:-1]) if sizes else [])
    grad_params = [next(pieces).reshape(p.shape).astype(p.dtype) if w else None
                   for p, w in zip(params, mask, strict=True)]
    grad_probe = None
    if wanted.probe:
        grad_probe = jnp.stack([nfe.astype(dtype), code.astype(dtype), t_failed])
    grads = (a.reshape(shape).astype(dtype), grad_t, grad_params,
             [None] * len(constants), None, grad_probe)
    if problem.raise_errors:
        grads = eqx.branched_error_if(grads, code != 0, code,
                                      _messages(static, "the adjoint's backward solve: "))
    return grads


_solve_adjoint.defvjp(_solve_adjoint_fwd, _solve_adjoint_bwd, symbolic_zeros=True)


def _adjoint_problem(func: _CheckedField, layout: _Layout, leaves: list, y0, t0,
                     static: SolveStatic, raise_errors: bool):
    """``(problem, params, constants)`` for :func:`_solve_adjoint`.

    The field is closure-converted (``jax.closure_convert``): traced values it closes
    over (an outer ``jit``'s arrays, or those ``grad`` differentiates) become inputs of
    the custom VJP, differentiated if inexact, rather than leaking into its backward
    pass.
    """
    params, constants, statics = layout.split(leaves)

    def field(s, y, params, constants):
        return func(s, y, layout.unflatten(layout.merge(params, constants, statics)))

    converted, hoisted = jax.closure_convert(field, t0, y0, params, constants)
    hoisted_param = tuple(eqx.is_inexact_array(x) for x in hoisted)
    n_params, n_constants = len(params), len(constants)

    def flat_field(s, y, params, constants):
        extra_p, extra_c = iter(params[n_params:]), iter(constants[n_constants:])
        closed = [next(extra_p) if p else next(extra_c) for p in hoisted_param]
        return converted(s, y, params[:n_params], constants[:n_constants], *closed)

    params = params + [x for x, p in zip(hoisted, hoisted_param, strict=True) if p]
    constants = constants + [x for x, p in zip(hoisted, hoisted_param, strict=True) if not p]
    return _Problem(flat_field, static, raise_errors), params, constants


# ---------------------------------------------------------------- public entry points


def _stop_gradient_constants(layout: _Layout, leaves: list) -> list:
    return [jax.lax.stop_gradient(x) if kind == _CONSTANT else x
            for x, kind in zip(leaves, layout.kinds, strict=True)]


def _solve(func: Callable, y0, t, layout: _Layout, leaves: list, static: SolveStatic,
           values: SolveValues, probe, raise_errors: bool):
    """The solve of :func:`odeint_traced` on flattened args; ``raise_errors``: a
    failed backward solve raises (:func:`odeint`)."""
    field = _CheckedField(func)
    if not static.adjoint:
        args = layout.unflatten(_stop_gradient_constants(layout, leaves))
        return _forward(field, y0, t, args, static, values)
    problem, params, constants = _adjoint_problem(field, layout, leaves, y0, t[0],
                                                  static, raise_errors)
    if probe is None:
        probe = backward_probe(y0.dtype)
    return _solve_adjoint(problem, y0, t, params, constants, values, probe)


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
    layout, leaves = _Layout.of(args)
    return _solve(func, y0, t.astype(y0.dtype), layout, leaves, static,
                  _as_arrays(values, y0.dtype), probe, raise_errors=False)


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
    layout, leaves = _Layout.of(args)
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
        ys = eqx.branched_error_if(ys, code != 0, code, _messages(static))
        return ys, info.stats()
    host = jax.device_get(info)
    if int(host.code):
        raise solver_error(t_host, ys, host, static)
    return ys, ODEStats(nfe_forward=int(host.nfe_forward), nfe_backward=None,
                        n_steps=int(host.n_steps), n_rejected=int(host.n_rejected))


def odeint_rows(func: Callable, y0: Any, t: Any, args: Any, static: SolveStatic,
                values: SolveValues) -> tuple[jax.Array, SolveInfo]:
    """Solve each row of ``y0`` alone, for inference under ``jit``; nothing raises.

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
    layout, leaves = _Layout.of(args)
    args = layout.unflatten(leaves)
    field = _CheckedField(func)
    values = _as_arrays(values, y0.dtype)
    static = dataclasses.replace(static, adjoint=False, seminorm=False)
    padded = t.ndim == 2

    def one_row(row, t_row):
        ys, info = _forward(field, row[None], t_row, args, static, values, padded=padded)
        return ys[:, 0], info

    ys, info = jax.vmap(one_row, in_axes=(0, 0 if padded else None), out_axes=(1, 0))(y0, t)
    return ys, info


# ------------------------------------------------------------------ errors on the host


def solver_error(t: Any, ys: Any, info: SolveInfo, static: SolveStatic,
                 what: str = "") -> SolverError:
    """The ``SolverError`` of a failed solve, as the reference engine words it.

    Parameters
    ----------
    t : 1-D array
        The solve's output times (NaN-padded for a row of per-row times).
    ys : array
        Its outputs.
    info : SolveInfo
        Concrete (one solve), ``info.code`` not 0.
    static : SolveStatic
    what : str
        Prefix of the message (which solve).
    """
    t = np.asarray(t, dtype=np.float64)
    t = t[~np.isnan(t)]
    code, t_reached = int(info.code), float(info.t_reached)
    n_out = int(info.n_outputs)
    return SolverError(
        f"{what}{_WHAT[code].format(static.max_num_steps)} at t={t_reached:.6g} "
        f"(solving from {t[0]:.6g} to {t[-1]:.6g})",
        reason=REASONS[code], t=t_reached, ts=t[:n_out], ys=np.asarray(ys)[:n_out],
    )


def row_solver_error(t: Any, ys: Any, info: SolveInfo, row: int, static: SolveStatic,
                     what: str = "") -> SolverError:
    """The ``SolverError`` of row ``row`` of :func:`odeint_rows` (on the host): the
    reason, time reached and solution so far that :func:`odeint` gives on that row
    alone. Built from the row's own outputs, which are those of a solve of the row
    alone, so nothing is solved again."""
    t = np.asarray(t)
    t_row = t if t.ndim == 1 else t[row]
    ys_row = np.asarray(ys)[:, row][:, None]  # as odeint's ys of the (1, d) row
    info_row = SolveInfo(*(np.asarray(field)[row] for field in info))
    return solver_error(t_row, ys_row, info_row, static, what)


def backward_solver_error(info: BackwardInfo, static: SolveStatic,
                          what: str = "the adjoint's backward solve: ") -> SolverError:
    """The ``SolverError`` of a failed backward pass (:func:`backward_info`, concrete)."""
    code, t_reached = int(info.code), float(info.t_reached)
    return SolverError(f"{what}{_WHAT[code].format(static.max_num_steps)} at "
                       f"t={t_reached:.6g}", reason=REASONS[code], t=t_reached)
