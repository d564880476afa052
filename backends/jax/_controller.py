"""The JAX engine's step-size controllers, on diffrax's public
``AbstractStepSizeController`` interface, made of ``odeplug._stepping``.

* :class:`PIController`: error ratio, PI factor, the reference engine's step-size
  underflow and non-finite rules, its constants read from ``ODESolveConfig`` (through
  ``SolveStatic``);
* :class:`FixedGrid`: ``t0 + k h``, the last step shortened;
* :func:`first_step`: Hairer's first step (``_stepping.initial_step``), computed by the
  solve itself, so that ``f(t0, y0)`` is shared with the solver.

The solves hand the first step to the controller (its ``first`` field), which
``init`` returns, and call ``diffeqsolve`` with ``dt0=None``: diffrax checks the sign
of a ``dt0`` it is given with ``equinox.error_if``, a host callback when ``dt0`` is
traced, and XLA programs with host callbacks are never written to JAX's persistent
compilation cache (every process would recompile each training step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from odeplug._stepping import (
    error_ratio,
    fixed_step_count,
    fixed_step_end,
    initial_step,
    rms_norm,
    step_factor,
    step_size_underflow,
)
from odeplug._tableaus import TABLEAUS

if TYPE_CHECKING:
    from ._layout import SolveStatic, SolveValues

__all__ = ["FixedGrid", "Norm", "PIController", "all_finite", "controller", "first_step"]


def _underflow(h, t):
    """``h`` too small to advance from ``t`` (``_stepping.step_size_underflow``), in the
    precision of the times: a float32 solve cannot resolve steps of float64's epsilon,
    which the reference engine's float64 times can."""
    return step_size_underflow(jnp, t, h, jnp.finfo(jnp.result_type(t)).eps)


def all_finite(y) -> jax.Array:
    """Whether every entry of ``y`` is finite (a scalar)."""
    return jnp.all(jnp.isfinite(y))


class Norm(eqx.Module):
    """RMS norm of a state; of its first ``size`` entries (flattened) when given: the
    seminorm of the adjoint's augmented state ``[y, a, a_theta]`` leaves ``a_theta``
    out (Kidger, Chen & Lyons 2021). A module, not a closure, so that equal norms hash
    equal (jit caches)."""

    size: int | None = eqx.field(static=True, default=None)

    def __call__(self, x):
        return rms_norm(jnp, x if self.size is None else jnp.ravel(x)[: self.size])


class PIController(diffrax.AbstractAdaptiveStepSizeController):
    """odeplug's PI controller (``odeplug._stepping``), with the reference engine's
    failures.

    A step is accepted when its error ratio is below 1; the next step is ``h *
    step_factor``. A non-finite candidate is a rejection with the largest shrink. The
    solve fails (diffrax's ``RESULTS``, mapped to odeplug's reasons by
    :func:`._results.result_code`) when an attempted step, or the step after a
    rejection, falls below the underflow threshold (:func:`_underflow`): ``nonfinite``
    if the last candidate was not finite, ``dt_min_reached`` otherwise. The step sizes
    are not differentiated (as in diffrax's ``PIDController``, torchdiffeq and the
    reference engine).

    The first step: ``dt0``, else ``first`` (positive, in diffeqsolve's increasing
    time), else Hairer's step (a hand-written ``diffeqsolve`` with ``dt0=None``).
    :func:`odeint` computes it itself, to share ``f(t0, y0)`` with the solver, and
    passes it as ``first`` (see the module's docstring).
    """

    rtol: Any
    atol: Any
    norm: Callable
    order: int = eqx.field(static=True)
    # No defaults: the constants are ODESolveConfig's, passed by controller().
    safety: float = eqx.field(static=True)
    factormin: float = eqx.field(static=True)
    factormax: float = eqx.field(static=True)
    pcoeff: float = eqx.field(static=True)
    icoeff: float = eqx.field(static=True)
    first: Any = None

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            dt0 = self.first
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
        finite = all_finite(y1_candidate) & jnp.isfinite(ratio)
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


class FixedGrid(diffrax.AbstractStepSizeController):
    """Steps of ``dt0`` from ``t0``, the last one shortened to end on ``t1``
    (``odeplug._stepping.fixed_step_count``/``fixed_step_end``), as the reference engine.

    (diffrax 0.7's ``ConstantStepSize`` takes one step of ``dt0``, then splits the rest
    into ``ceil((t1 - t0) / dt0)`` equal steps.) A non-finite state stops the solve with
    ``RESULTS.nonfinite``; the step is not kept, so the outputs so far are those before
    it. The step: ``dt0``, else ``first`` (positive, as :class:`PIController`'s).
    """

    first: Any = None

    def wrap(self, direction):
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            dt0 = self.first
        if dt0 is None:
            raise ValueError("fixed-step solvers need a step size")
        n_steps = fixed_step_count(jnp, t0, t1, dt0)
        one = jnp.ones((), jnp.result_type(t0))
        return fixed_step_end(jnp, t0, t1, dt0, one, n_steps), (t0, t1, dt0, n_steps, one)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order,
                        controller_state):
        start, end, h, n_steps, k = controller_state
        finite = all_finite(y1_candidate)
        k = jnp.where(finite, k + 1, k)
        result = diffrax.RESULTS.where(finite, diffrax.RESULTS.successful,
                                       diffrax.RESULTS.nonfinite)
        t_next = jnp.where(finite, fixed_step_end(jnp, start, end, h, k, n_steps), t1)
        return (finite, jnp.where(finite, t1, t0), t_next, False,
                (start, end, h, n_steps, k), result)


def controller(static: SolveStatic, rtol, atol, norm: Norm, first=None):
    """The step-size controller of a solve: :class:`FixedGrid`, or :class:`PIController`
    with ``ODESolveConfig``'s constants (``static``) and the tolerances ``rtol``,
    ``atol``; ``first``: the first step (:func:`first_step`), or None."""
    if not static.adaptive:
        return FixedGrid(first=first)
    return PIController(
        rtol=rtol, atol=atol, norm=norm, order=TABLEAUS[static.solver].order,
        safety=static.safety, factormin=static.factormin, factormax=static.factormax,
        pcoeff=static.pcoeff, icoeff=static.icoeff, first=first)


def first_step(slope, s0, y0, f0, order, static: SolveStatic, values: SolveValues,
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
