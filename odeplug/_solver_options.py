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
