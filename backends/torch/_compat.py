"""Every touch of torchdiffeq's private API, in one module (checked with torchdiffeq 0.2.5).

The rest of the torch engine uses torchdiffeq's public surface only: ``odeint``,
``odeint_adjoint``, their documented options (``step_t``, ``grid_constructor``, ``interp``,
``norm``, ``first_step``, ``safety``, ``ifactor``, ``dfactor``) and step callbacks. What
needs its internals, each covered by a test in ``tests/backends/test_torch_solve.py``
that names the version it was checked against:

* :class:`ClassicalRK4`: the classical RK4 tableau on torchdiffeq's fixed grid (its own
  ``"rk4"`` is Kutta's 3/8 rule): subclasses ``FixedGridODESolver``, steps with
  ``rk_common.rk4_step_func`` and ``misc.Perturb``.
* :class:`HermiteBosh3`: bosh3 with a cubic Hermite dense output: overrides
  ``Bosh3Solver._interp_fit``.
* :class:`KeepsOutputs`: adaptive solvers that keep the outputs computed so far, so that a
  :class:`~odeplug.SolverError` raised mid-solve by a step callback carries the solution
  so far: wraps ``AdaptiveStepsizeODESolver._before_integrate`` and ``_advance`` (the one
  output per call that ``integrate`` stores, which torchdiffeq keeps in a local).
* :func:`register`: torchdiffeq looks methods up by name in ``odeint.SOLVERS``, in the
  forward and in the adjoint's backward solve, so odeplug's solvers join that dict under
  names of their own (no name of torchdiffeq's changes meaning).
"""

from __future__ import annotations

from typing import Any

import torch
from torchdiffeq._impl.bosh3 import Bosh3Solver
from torchdiffeq._impl.dopri5 import Dopri5Solver
from torchdiffeq._impl.dopri8 import Dopri8Solver
from torchdiffeq._impl.misc import Perturb
from torchdiffeq._impl.odeint import SOLVERS as _TORCHDIFFEQ_SOLVERS
from torchdiffeq._impl.rk_common import rk4_step_func
from torchdiffeq._impl.solvers import FixedGridODESolver

from odeplug.exceptions import SolverError

__all__ = ["CHECKED_VERSION", "ClassicalRK4", "HermiteBosh3", "KeepsOutputs", "METHODS",
           "register"]

CHECKED_VERSION = "0.2.5"


class ClassicalRK4(FixedGridODESolver):
    """The classical RK4 tableau (torchdiffeq's own ``"rk4"`` is Kutta's 3/8 rule)."""

    order = 4

    def _step_func(self, func, t0, dt, t1, y0):
        f0 = func(t0, y0, perturb=Perturb.NEXT if self.perturb else Perturb.NONE)
        return rk4_step_func(func, t0, dt, t1, y0, f0=f0, perturb=self.perturb), f0


class KeepsOutputs:
    """Mixin of an adaptive solver: keeps the outputs it has computed, and gives them as
    ``ys`` to a :class:`~odeplug.SolverError` of the forward solve raised inside a step
    (whose ``ts`` says which times they are; a backward solve's error has ``ts=None``)."""

    def _before_integrate(self, t):
        super()._before_integrate(t)
        self._outputs = [self.y0]

    def _advance(self, next_t):
        try:
            y = super()._advance(next_t)
        except SolverError as error:
            if error.ts is not None and error.ys is None:
                error.ys = torch.stack(self._outputs).detach()
            raise
        self._outputs.append(y)
        return y


class HermiteBosh3(KeepsOutputs, Bosh3Solver):
    """bosh3 with the reference engine's dense output, the cubic Hermite through y0, y1
    with slopes f0, f1. torchdiffeq's quartic goes through ``y0 + h/2 k2``, an estimate
    of ``y(t0 + h/2)`` with an O(h^2) error, which spoils the outputs between steps."""

    def _interp_fit(self, y0, y1, k, dt):
        dt = dt.type_as(y0)
        f0, f1 = k[..., 0], k[..., -1]
        # Coefficients of x**0 .. x**3 (x in [0, 1]), as torchdiffeq's _interp_evaluate takes.
        return [y0, dt * f0, 3 * (y1 - y0) - dt * (2 * f0 + f1), 2 * (y0 - y1) + dt * (f0 + f1)]


class _Dopri5(KeepsOutputs, Dopri5Solver):
    """torchdiffeq's dopri5, keeping its outputs."""


class _Dopri8(KeepsOutputs, Dopri8Solver):
    """torchdiffeq's dopri8, keeping its outputs."""


# odeplug's name -> the name the solver has in torchdiffeq's registry. No tsit5 there.
METHODS: dict[str, str] = {
    "euler": "euler",
    "midpoint": "midpoint",
    "heun": "heun2",  # the explicit trapezoidal rule
    "rk4": "odeplug_rk4",
    "bosh3": "odeplug_bosh3",
    "dopri5": "odeplug_dopri5",
    "dopri8": "odeplug_dopri8",
}

_OURS: dict[str, Any] = {
    "odeplug_rk4": ClassicalRK4,
    "odeplug_bosh3": HermiteBosh3,
    "odeplug_dopri5": _Dopri5,
    "odeplug_dopri8": _Dopri8,
}


def register() -> None:
    """Add odeplug's solvers to torchdiffeq's registry (idempotent)."""
    for name, solver in _OURS.items():
        _TORCHDIFFEQ_SOLVERS.setdefault(name, solver)
