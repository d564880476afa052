"""torchdiffeq's ``tests/gradient_tests.py``, through ``odeplug.odeint`` on every engine.

``torch.autograd.gradcheck`` is itself on torch and the same check on the other engines
(:func:`~tests.torchdiffeq_suite._checks.gradcheck`); upstream's ``odeint_adjoint`` is
``odeint(..., adjoint=True)``, and the parameters of upstream's modules are ``args``.
Fixed-step methods step on the output times, as torchdiffeq's do without
``step_size`` (:func:`~tests.torchdiffeq_suite.problems.fixed_step`).

Not ported: the ``scipy_solver`` method (odeplug has none) and torchdiffeq's methods
without an odeplug counterpart (``tests/torchdiffeq_suite/test_odeint_tests.py`` lists
them). Upstream's unseeded ``torch.rand_like`` cotangents are drawn from NumPy's
``default_rng(0)``.
"""

from __future__ import annotations

import numpy as np
import pytest

import odeplug
from tests.torchdiffeq_suite._checks import gradcheck, grads
from tests.torchdiffeq_suite.problems import (
    FIXED_METHODS,
    METHODS,
    PROBLEMS,
    construct_problem,
    fixed_step,
)

pytestmark = pytest.mark.usefixtures("jax_x64")


def _method_kwargs(method: str, t) -> dict:
    if method in FIXED_METHODS:
        return dict(solver=method, step_size=fixed_step(t))
    return dict(solver=method)


@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "adjoint"])
@pytest.mark.parametrize("method", METHODS)
def test_gradient(engine, method, adjoint):
    """Upstream: ``gradient_tests.py::TestGradient::test_odeint`` (``adjoint=False``)
    and ``::test_adjoint`` (``adjoint=True``): gradcheck w.r.t. ``y0`` and the times."""
    p = construct_problem(engine)
    t_host = engine.numpy(p.t)
    kwargs = _method_kwargs(method, t_host)

    def func(y0, t_points):
        return odeplug.odeint(p.func, y0, t_points, p.args, adjoint=adjoint, **kwargs)

    gradcheck(engine, func, (engine.numpy(p.y0), t_host))


@pytest.mark.parametrize("t_grad", [True, False], ids=["t_grad", "no_t_grad"])
@pytest.mark.parametrize("ode", list(PROBLEMS))
def test_adjoint_against_odeint(engine, ode, t_grad):
    """Upstream: ``gradient_tests.py::TestGradient::test_adjoint_against_odeint``: the
    adjoint's gradients (``y0``, times, parameters) against backpropagation's, dopri5 at
    ``rtol=1e-9, atol=1e-12``."""
    eps = {"constant": 1e-12, "linear": 1e-5, "sine": 5e-3, "exp": 1e-2}[ode]
    p = construct_problem(engine, ode=ode)
    y0, t_host = engine.numpy(p.y0), engine.numpy(p.t)
    args = {key: engine.numpy(value) for key, value in p.args.items()}
    gradys = np.random.default_rng(0).random((len(t_host),) + y0.shape)

    def gradients(adjoint):
        def loss(y0, args, *t):
            t_points = t[0] if t_grad else engine.asarray(t_host)
            ys = odeplug.odeint(p.func, y0, t_points, args, adjoint=adjoint, rtol=1e-9,
                                atol=1e-12)
            return (ys * engine.asarray(gradys)).sum()

        return grads(engine, loss, (y0, args) + ((t_host,) if t_grad else ()))

    reg, adj = gradients(False), gradients(True)
    assert np.abs(reg[0] - adj[0]).max() < eps
    if t_grad:
        assert np.abs(reg[2] - adj[2]).max() < eps
    for key in args:
        assert np.abs(reg[1][key] - adj[1][key]).max() < eps


def _cubic_field(t, y, args):
    """Upstream's ``TestCompareAdjointGradient`` field ``mm(y**3, A)``; the unused
    module's parameters are in ``args`` and unused."""
    return (y**3) @ args["A"]


@pytest.mark.parametrize("t_grad", [True, False], ids=["t_grad", "no_t_grad"])
def test_compare_adjoint_gradient_against_dopri5(engine, t_grad, request):
    """Upstream: ``gradient_tests.py::TestCompareAdjointGradient::test_against_dopri5``
    (method ``dopri5``; ``scipy_solver`` not ported): float32, default tolerances, the
    adjoint's gradients against backpropagation's; parameters the field does not use
    get zero gradients."""
    if engine.name == "jax":
        # Found by this port, not fixed yet: JAX's backpropagation through dopri5 in
        # float32 at rtol=1e-7 gives wrong gradients w.r.t. y0 and the parameters (the
        # times' are right; tsit5, float64 and the adjoint are right; at rtol=1e-5 it
        # is right). Strict: the test says when it is fixed.
        request.applymarker(pytest.mark.xfail(
            strict=True, reason="JAX backprop through dopri5, float32, rtol=1e-7: wrong "
                                "gradients w.r.t. y0 and args (open)"))
    eps = (3e-4, 1e-4, 2e-3)
    dtype = np.float32  # upstream's default dtype
    rng = np.random.default_rng(0)
    y0 = np.array([[2.0, 0.0]])
    t_points = np.linspace(0.0, 25.0, 10)
    args = {"A": np.array([[-0.1, 2.0], [-2.0, -0.1]]),
            # torch.nn.Linear(2, 5)'s initialisation: U(-1/sqrt(2), 1/sqrt(2)).
            "unused_weight": rng.uniform(-2**-0.5, 2**-0.5, (5, 2)),
            "unused_bias": rng.uniform(-2**-0.5, 2**-0.5, 5)}
    gradys = rng.random((10, 1, 2)) * 0.1

    def gradients(adjoint):
        def loss(y0, args, *t):
            t = t[0] if t_grad else engine.asarray(t_points, dtype)
            ys = odeplug.odeint(_cubic_field, y0, t, args, adjoint=adjoint)
            return (ys * engine.asarray(gradys, dtype)).sum()

        return grads(engine, loss, (y0, args) + ((t_points,) if t_grad else ()), dtype)

    adj = gradients(True)
    assert np.abs(adj[1]["unused_weight"]).max() == 0
    assert np.abs(adj[1]["unused_bias"]).max() == 0
    reg = gradients(False)
    assert np.abs(reg[0] - adj[0]).max() < eps[0]
    if t_grad:
        assert np.abs(reg[2] - adj[2]).max() < eps[1]
    assert np.abs(reg[1]["A"] - adj[1]["A"]).max() < eps[2]
