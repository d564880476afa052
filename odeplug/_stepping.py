"""Step-size selection, written once for every engine, over an array namespace.

Each function takes ``xp``, the namespace of the quantities it decides on (step sizes,
error ratios, times): :data:`SCALARS` for Python floats (the reference engine's
one-problem loop, where NumPy's 0-d arrays would cost more than the arithmetic),
``numpy`` for one value per row (``odeplug._rows``, also for torch states: its control
lives on the host) or ``jax.numpy``, so that JAX can trace them. States are only combined
with operators, so they may be arrays of another namespace than ``xp`` (torch tensors on
a GPU, reduced to host values by the ``norm`` given); :func:`error_ratio` alone takes the
states' namespace. Nothing here branches on a value: decisions are ``xp.where``, so the
same lines run under ``jax.jit``.

The definitions are those of diffrax's ``PIDController`` and torchdiffeq's adaptive
solvers, so that every engine takes the same steps:

* error norm: the RMS norm of ``err / (atol + rtol * max(|y0|, |y1|))``; a step is
  accepted when it is below 1;
* next step: ``h * clip(safety * r**(-(icoeff + pcoeff) / k) * r_prev**(pcoeff / k), lo,
  hi)`` with ``r`` the error ratio, ``r_prev`` that of the last accepted step and ``k``
  the order of the method; ``[lo, hi] = [1, factormax]`` after an accepted step (never
  shrink a step that passed) and ``[factormin, safety]`` after a rejected one (always
  shrink);
* first step: Hairer, Norsett & Wanner, *Solving ODEs I*, Sec. II.4 (as torchdiffeq and
  diffrax mean to);
* fixed steps: ``t0 + k h``, the last step shortened to end exactly on ``t1``;
* failure: a step size below :func:`step_size_underflow`'s threshold ends the solve.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "SCALARS",
    "SNAP_ULPS",
    "error_ratio",
    "fixed_step_count",
    "fixed_step_end",
    "initial_step",
    "rms_norm",
    "step_factor",
    "step_size_underflow",
]

# An error ratio of 0 (an exact step) asks for the largest growth: 1 / _TINY_RATIO,
# raised to 1 / order, is far above any factormax, in float32 too (1e-30 ** -1 < 3e38).
_TINY_RATIO = 1e-30

# A last fixed step shorter than this fraction of step_size is merged into the step
# before: t1 - t0 = n * h up to rounding must give n steps, not n + 1.
_FIXED_GRID_SLACK = 1e-9

# A step that would end within this many float64 ulps of max(1, |t0|, |t1|) before the
# end of the span ends on it: no sliver of a last step. One constant for every engine's
# stepper (the reference's, the torch engine's and the row solver).
SNAP_ULPS = 64 * 2.0**-52

# A step below 4 ulps of the time cannot move t by more than rounding: the solve is
# stuck. Relative to max(1, |t|), so that near t = 0 the threshold does not vanish with
# the ulp.
_UNDERFLOW_ULPS = 4
_FLOAT64_EPS = 2.0**-52


class _Scalars:
    """The few array operations this module uses, on Python floats and bools."""

    @staticmethod
    def where(condition: bool, a: Any, b: Any) -> Any:
        return a if condition else b

    minimum = staticmethod(min)
    maximum = staticmethod(max)
    sqrt = staticmethod(math.sqrt)
    ceil = staticmethod(math.ceil)


SCALARS = _Scalars()


def rms_norm(xp, x, axis=None):
    """Root mean square of ``x``; with ``axis``, one per row (kept as a column).

    ``xp`` is the namespace of ``x``'s arrays (NumPy, torch, jax.numpy). For
    :data:`SCALARS`, ``x`` is a NumPy array and the result a Python float.
    """
    if xp is SCALARS:
        # One BLAS dot: the cheapest sum of squares of a flat NumPy state.
        return math.sqrt(float(np.vdot(x, x)) / x.size) if x.size else 0.0
    if axis is None:
        return xp.sqrt(xp.mean(x * x))
    return xp.sqrt(xp.mean(x * x, axis=axis, keepdims=True))


def error_ratio(xp, error, y0, y1, rtol, atol, norm):
    """``norm(error / (atol + rtol * max(|y0|, |y1|)))``: below 1, the step is accepted.

    Here ``xp`` is the namespace of the states (``numpy``, ``torch``, ``jax.numpy``):
    ``xp.maximum`` is exact, as torchdiffeq's and diffrax's scales are (an operator form
    such as ``a + (b - a) * (b > a)`` rounds where ``a < b / 2``).
    """
    scale = atol + rtol * xp.maximum(abs(y0), abs(y1))
    return norm(error / scale)


def step_factor(xp, ratio, previous_inverse, order, config):
    """The PI controller's decision on a step of error ratio ``ratio``.

    Parameters
    ----------
    xp : namespace
    ratio : float or array
        The error ratio (:func:`error_ratio`); NaN or inf (a non-finite candidate) is a
        rejection with the largest shrink, ``factormin``.
    previous_inverse : float or array
        ``1 / ratio`` of the last accepted step (1 before the first).
    order : int
        Order of the method (the exponent is ``1 / order``, as diffrax and torchdiffeq).
    config : ODESolveConfig
        ``safety``, ``factormin``, ``factormax``, ``pcoeff``, ``icoeff``.

    Returns
    -------
    accept : bool or array
    factor : float or array
        The next step is ``h * factor`` (whether or not this step was accepted).
    previous_inverse : float or array
        To pass to the next call: ``1 / ratio`` after an accepted step (1 after an exact
        one, ``ratio == 0``, as diffrax), unchanged after a rejection.
    """
    # NaN compares False: it becomes inf, rejected like an overflow.
    ratio = xp.where(ratio == ratio, ratio, math.inf)
    accept = ratio < 1.0
    inverse = 1.0 / xp.maximum(ratio, _TINY_RATIO)
    factor = config.safety * inverse ** ((config.icoeff + config.pcoeff) / order)
    if config.pcoeff:
        factor = factor * previous_inverse ** (-config.pcoeff / order)
    low = xp.where(accept, 1.0, config.factormin)
    high = xp.where(accept, config.factormax, config.safety)
    factor = xp.minimum(xp.maximum(factor, low), high)
    # diffrax's guard: an exactly accepted step (ratio 0) leaves a memory of 1, not
    # 1 / _TINY_RATIO, which would crush the next step's factor through ``pcoeff``.
    memory = xp.where(ratio > 0.0, inverse, 1.0)
    return accept, factor, xp.where(accept, memory, previous_inverse)


def initial_step(xp, fun, t0, y0, f0, order, rtol, atol, norm, to_state=None):
    """Hairer's first step for ``dy/dt = fun(t, y)`` from ``(t0, y0)``, ``f0 = fun(t0, y0)``.

    Costs one evaluation of ``fun``. ``norm`` reduces a state to one value of ``xp`` per
    problem (per row for a row-wise solve, whose result is one step size per row).
    ``to_state(h)`` makes a step size of ``xp`` a factor of the state (for a row-wise
    solve: a column of the state's dtype and device); by default ``h`` itself.
    """
    scale = atol + abs(y0) * rtol
    d0, d1 = norm(y0 / scale), norm(f0 / scale)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = xp.where(small, 1e-6, 0.01 * d0 / xp.where(small, 1.0, d1))
    f1 = fun(t0 + h0, y0 + (h0 if to_state is None else to_state(h0)) * f0)
    d2 = norm((f1 - f0) / scale) / h0
    d_max = xp.maximum(d1, d2)
    flat = d_max <= 1e-15
    h1 = xp.where(flat, xp.maximum(h0 * 1e-3, 1e-6),
                  (0.01 / xp.where(flat, 1.0, d_max)) ** (1.0 / order))
    return xp.minimum(100 * h0, h1)


def fixed_step_count(xp, t0, t1, step_size):
    """Number of fixed steps of ``step_size`` that cover ``[t0, t1]`` (at least 1)."""
    return xp.maximum(xp.ceil(abs(t1 - t0) / step_size - _FIXED_GRID_SLACK), 1)


def fixed_step_end(xp, t0, t1, step_size, k, n_steps):
    """End of fixed step number ``k`` (from 1) of ``n_steps``: ``t0 + k h``, or ``t1``
    for the last one. ``step_size`` carries the direction of time."""
    return xp.where(k >= n_steps, t1, t0 + step_size * k)


def step_size_underflow(xp, t, h, eps=_FLOAT64_EPS):
    """Whether a step ``h`` from time ``t`` is too small to move ``t``: below 4 ulps of
    ``max(1, |t|)`` (``abs(h) < 4 eps max(1, |t|)``, ``eps`` the machine epsilon of the
    times: float64 on the reference and torch engines, the state's dtype on JAX), or NaN
    (a first step from a non-finite slope), which no comparison would stop."""
    return xp.where(abs(h) >= _UNDERFLOW_ULPS * eps * xp.maximum(1.0, abs(t)), False, True)
