"""The shared solver vocabulary: solver names, their options, the adjoint strategy and
the solve statistics. Every backend reads a validated :class:`ODESolveConfig`, so the
meaning of ``rtol``, ``atol``, ``step_size`` and the controller is defined once, here."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIXED_STEP_SOLVERS",
    "ADAPTIVE_SOLVERS",
    "SOLVERS",
    "BacksolveAdjoint",
    "ODESolveConfig",
    "ODEStats",
    "make_solve_config",
]

FIXED_STEP_SOLVERS = ("euler", "midpoint", "heun", "rk4")
ADAPTIVE_SOLVERS = ("bosh3", "dopri5", "tsit5", "dopri8")
SOLVERS = FIXED_STEP_SOLVERS + ADAPTIVE_SOLVERS

DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_NUM_STEPS = 4096


@dataclass(frozen=True)
class BacksolveAdjoint:
    """Gradients by the adjoint method (Chen et al. 2018, Algorithm 1).

    The augmented system ``[y, a, dL/dtheta]`` is solved backwards in time, interval by
    interval between output times, so memory does not grow with the number of steps.
    ``odeint(..., adjoint=True)`` means ``BacksolveAdjoint()``.

    Parameters
    ----------
    rtol, atol : float, optional
        Tolerances of the backward solve; default: those of the forward solve.
    seminorm : bool, default=False
        Leave the parameter-gradient channels out of the error estimate of the backward
        solve (Kidger, Chen & Lyons 2021, "Hey, that's not an ODE"): fewer steps, same
        accuracy of ``y`` and ``a``.

    Examples
    --------
    The gradient of ``y(1)**2`` for ``dy/dt = -k y``, ``y(0) = 1``, is
    ``-2 exp(-2k)``:

    >>> import autograd
    >>> import numpy as np
    >>> import odeplug
    >>> def loss(k):
    ...     ys = odeplug.odeint(lambda t, y, k: -k * y, np.ones(1), np.array([0.0, 1.0]),
    ...                         args=k, rtol=1e-10, atol=1e-12,
    ...                         adjoint=odeplug.BacksolveAdjoint(seminorm=True))
    ...     return (ys[-1] ** 2).sum()
    >>> bool(np.isclose(autograd.grad(loss)(0.5), -2 * np.exp(-1.0), rtol=1e-6))
    True
    """

    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = False

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None:
                _check_tolerance(f"BacksolveAdjoint.{name}", value)
        if not isinstance(self.seminorm, bool):
            raise TypeError(f"BacksolveAdjoint.seminorm must be a bool, got {self.seminorm!r}")


@dataclass
class ODEStats:
    """Counters of one solve, the same on every backend.

    Attributes
    ----------
    nfe_forward : int
        Vector-field evaluations of the forward solve.
    nfe_backward : int or None
        Evaluations during the backward pass (vector-field VJPs); ``0`` until a backward
        pass has run, ``None`` where the engine does not report it.
    n_steps : int
        Accepted steps of the forward solve.
    n_rejected : int
        Rejected steps of the forward solve (always 0 for fixed-step solvers).

    Examples
    --------
    >>> import numpy as np
    >>> import odeplug
    >>> _, stats = odeplug.odeint(lambda t, y, a: -y, np.ones(2), np.array([0.0, 1.0]),
    ...                           solver="rk4", step_size=0.25, return_stats=True)
    >>> stats.nfe_forward, stats.n_steps, stats.n_rejected  # 4 steps of 4 stages
    (16, 4, 0)
    """

    nfe_forward: int = 0
    nfe_backward: int | None = 0
    n_steps: int = 0
    n_rejected: int = 0


@dataclass(frozen=True)
class ODESolveConfig:
    """A validated description of how to solve: built by :func:`make_solve_config`.

    The step-size controller is the PI controller of diffrax's ``PIDController`` (with
    torchdiffeq's and diffrax's defaults, an integral controller): the error is the RMS
    norm of ``err / (atol + rtol * max(|y0|, |y1|))``, a step is accepted when it is
    below 1, and the next step is ``h * clip(safety * r_n**-(icoeff+pcoeff)/k *
    r_{n-1}**(pcoeff/k), factormin, factormax)`` with ``k`` the solver's order.

    Examples
    --------
    >>> import odeplug
    >>> config = odeplug.make_solve_config(solver="dopri5", rtol=1e-6, adjoint=True)
    >>> config.adaptive, config.atol, config.adjoint
    (True, 1e-09, BacksolveAdjoint(rtol=None, atol=None, seminorm=False))
    >>> config.safety, config.factormin, config.factormax
    (0.9, 0.2, 10.0)
    """

    solver: str = "dopri5"
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    step_size: float | None = None
    adjoint: BacksolveAdjoint | None = None
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    first_step: float | None = None
    safety: float = 0.9
    factormin: float = 0.2
    factormax: float = 10.0
    pcoeff: float = 0.0
    icoeff: float = 1.0

    @property
    def adaptive(self) -> bool:
        # Steps are controlled unless a step size is given (the public API gives one
        # exactly for the fixed-step solvers; tests also run adaptive tableaus on a
        # fixed grid to measure their order).
        return self.step_size is None


# Options every backend understands, beyond the named arguments of ``odeint``.
CONTROLLER_OPTIONS = ("first_step", "safety", "factormin", "factormax", "pcoeff", "icoeff")


def _check_tolerance(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive float, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return value


def make_solve_config(
    solver: str = "dopri5",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    step_size: float | None = None,
    adjoint: bool | BacksolveAdjoint = False,
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    options: Mapping[str, Any] | None = None,
) -> ODESolveConfig:
    """Validate solver arguments into an :class:`ODESolveConfig`.

    Raises ``ValueError`` for an unknown solver or option, a fixed-step solver without
    ``step_size`` or an adaptive one with it, and bad tolerances or step budgets.
    The arguments are those of :func:`odeint`; ``options`` takes the controller's
    ``first_step``, ``safety``, ``factormin``, ``factormax``, ``pcoeff``, ``icoeff``.

    Examples
    --------
    >>> import odeplug
    >>> odeplug.make_solve_config(solver="rk4", step_size=0.1).adaptive
    False
    >>> odeplug.make_solve_config(solver="rk4")
    Traceback (most recent call last):
    ...
    ValueError: 'rk4' is a fixed-step solver: pass step_size (adaptive solvers: [...])
    >>> odeplug.make_solve_config(options={"pcoeff": 0.3, "icoeff": 0.4}).pcoeff
    0.3
    """
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; odeplug's solvers are {list(SOLVERS)}")
    rtol = _check_tolerance("rtol", rtol)
    atol = _check_tolerance("atol", atol)
    if solver in FIXED_STEP_SOLVERS:
        if step_size is None:
            raise ValueError(
                f"{solver!r} is a fixed-step solver: pass step_size (adaptive solvers: "
                f"{list(ADAPTIVE_SOLVERS)})"
            )
        step_size = _check_tolerance("step_size", step_size)
    elif step_size is not None:
        raise ValueError(
            f"{solver!r} is adaptive and takes rtol/atol, not step_size (fixed-step "
            f"solvers: {list(FIXED_STEP_SOLVERS)})"
        )
    if isinstance(adjoint, bool):
        adjoint = BacksolveAdjoint() if adjoint else None
    elif not isinstance(adjoint, BacksolveAdjoint):
        raise TypeError(f"adjoint must be a bool or a BacksolveAdjoint, got {adjoint!r}")
    if isinstance(max_num_steps, bool) or not isinstance(max_num_steps, numbers.Integral):
        raise TypeError(f"max_num_steps must be a positive int, got {max_num_steps!r}")
    if max_num_steps < 1:
        raise ValueError(f"max_num_steps must be a positive int, got {max_num_steps!r}")

    options = dict(options or {})
    unknown = sorted(set(options) - set(CONTROLLER_OPTIONS))
    if unknown:
        raise ValueError(f"unknown solver options {unknown}; known: {list(CONTROLLER_OPTIONS)}")
    controller = {}
    for name, value in options.items():
        if name == "first_step" and value is None:
            continue
        if name in ("pcoeff",):
            if not isinstance(value, numbers.Real) or value < 0:
                raise ValueError(f"{name} must be a non-negative float, got {value!r}")
            controller[name] = float(value)
        else:
            controller[name] = _check_tolerance(name, value)
    if controller and solver not in ADAPTIVE_SOLVERS:
        raise ValueError(f"controller options {sorted(controller)} need an adaptive solver")
    return ODESolveConfig(
        solver=solver,
        rtol=rtol,
        atol=atol,
        step_size=step_size,
        adjoint=adjoint,
        max_num_steps=int(max_num_steps),
        **controller,
    )
