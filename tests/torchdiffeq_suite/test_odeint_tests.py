"""torchdiffeq's ``tests/odeint_tests.py``, through ``odeplug.odeint`` on every engine.

Each test names the upstream test it ports; problems, tolerances and loops are
upstream's (``reverse``, ``dtype`` and the method in the test's parameters, the rest as
upstream loops). Upstream's ``torchdiffeq.odeint_adjoint`` is ``odeint(...,
adjoint=True)``; fixed-step methods, which torchdiffeq steps on the output times when no
``step_size`` is given, take the grid's spacing as ``step_size``
(:func:`~tests.torchdiffeq_suite.problems.fixed_step`).

Not ported, having no meaning in odeplug:

* ``TestScipySolvers.test_odeint`` and the ``scipy_solver`` method everywhere: odeplug
  has no SciPy solver.
* torchdiffeq's methods without an odeplug counterpart: ``heun3``, ``explicit_adams``,
  ``implicit_adams``, ``adaptive_heun``, ``fehlberg2`` and the implicit ones
  (``implicit_euler``, ``implicit_midpoint``, ``trapezoid``, ``radauIIA3``, ``gl4``,
  ``radauIIA5``, ``gl6``, ``sdirk2``, ``trbdf2``).
* ``TestDiscontinuities.test_odeint_jump_t`` and ``test_odeint_perturb``: the
  ``jump_t`` and ``perturb`` options (torchdiffeq's; odeplug's options are the step-size
  controller's).
* ``TestGridConstructor.test_grid_constructor``: the ``grid_constructor`` option.
* ``TestMinMaxStep.test_min_max_step``: the ``min_step``/``max_step`` options (and
  SciPy's LSODA).
* ``TestCallbacks``: the ``callback_step``/``callback_accept_step``/
  ``callback_reject_step`` attributes of the field (odeplug counts steps and
  evaluations in ``ODEStats`` instead).
"""

from __future__ import annotations

import numpy as np
import pytest

import odeplug
from tests.torchdiffeq_suite.problems import (
    ADAPTIVE_METHODS,
    DTYPES,
    FIXED_METHODS,
    METHODS,
    PROBLEMS,
    construct_problem,
    fixed_step,
    rel_error,
)

# Upstream runs float64 (and float32): JAX in x64 for this module's tests only.
pytestmark = pytest.mark.usefixtures("jax_x64")

DTYPE_IDS = ["float32", "float64"]


def _solver_kwargs(method: str, dtype, t) -> dict:
    """Upstream's ``kwargs`` of a method, and the step of a fixed-step one."""
    if method in FIXED_METHODS:
        return dict(solver=method, step_size=fixed_step(t))
    # Upstream: "Have to increase tolerance for dopri8."
    if method == "dopri8" and dtype == np.float64:
        return dict(solver=method, rtol=1e-12, atol=1e-14)
    if method == "dopri8" and dtype == np.float32:
        return dict(solver=method, rtol=1e-7, atol=1e-7)
    return dict(solver=method)


def _solver_error_cases():
    for method in METHODS:
        problems = PROBLEMS if method in ADAPTIVE_METHODS else ("constant",)
        for ode in problems:
            yield method, ode


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("method, ode", list(_solver_error_cases()))
def test_solver_error_odeint(engine, method, ode, reverse, dtype):
    """Upstream: ``odeint_tests.py::TestSolverError::test_odeint``."""
    if method in ("adaptive_heun", "bosh3"):
        eps = 4e-3
    elif ode == "linear":
        eps = 2e-3
    elif ode == "exp":
        eps = 5e-2
    else:
        eps = 3e-4
    p = construct_problem(engine, ode=ode, reverse=reverse, dtype=dtype)
    t_host = engine.numpy(p.t)
    y = odeplug.odeint(p.func, p.y0, p.t, p.args, **_solver_kwargs(method, dtype, t_host))
    assert rel_error(p.sol, engine.numpy(y)) < eps


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("ode", list(PROBLEMS))
def test_solver_error_adjoint(engine, ode, reverse, dtype):
    """Upstream: ``odeint_tests.py::TestSolverError::test_adjoint`` (the forward pass of
    ``odeint_adjoint``, dopri5)."""
    eps = 2e-3 if ode == "linear" else 1e-4
    p = construct_problem(engine, ode=ode, reverse=reverse, dtype=dtype)
    y = odeplug.odeint(p.func, p.y0, p.t, p.args, adjoint=True)
    assert rel_error(p.sol, engine.numpy(y)) < eps


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ode", list(PROBLEMS))
def test_no_integration_odeint(engine, method, ode):
    """Upstream: ``odeint_tests.py::TestNoIntegration::test_odeint``: a grid of one time
    returns ``y0`` (upstream's loops over ``reverse`` and ``dtype`` inside)."""
    for reverse in (False, True):
        for dtype in DTYPES:
            p = construct_problem(engine, ode=ode, reverse=reverse, dtype=dtype)
            t_host = engine.numpy(p.t)
            kwargs = _solver_kwargs(method, dtype, t_host)
            y, stats = odeplug.odeint(p.func, p.y0, p.t[0:1], p.args, return_stats=True,
                                      **kwargs)
            y = engine.numpy(y)
            assert y.shape == (1,) + p.sol[0].shape and y.dtype == dtype
            assert np.abs(p.sol[0] - y).max() < 1e-12
            # Nothing was solved: no evaluation, no step.
            assert (stats.nfe_forward, stats.n_steps, stats.n_rejected) == (0, 0, 0)
