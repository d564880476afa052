"""One suite for ``odeplug.odeint`` on every engine: accuracy against exact solutions,
steps against an independent implementation, convergence orders, gradients against
finite differences, the cost of the backward pass, failures, constants.

Every comparison is with something outside the engine under test (exact solutions,
hand-written steps, a controller written here with scipy's coefficients, finite
differences), the reference engine included, so that each parametrisation can fail.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from scipy.integrate import RK23, RK45

import odeplug
from odeplug import SolverError
from odeplug._solver_options import make_solve_config
from tests.problems import (
    ACCURACY_PROBLEMS,
    CUBIC,
    DECAY,
    LOTKA_VOLTERRA,
    OSCILLATOR,
    ROTATION,
)

# The engines' float64 numerics against exact solutions and each other: JAX in x64 for
# this module's tests only (users, and the estimator tests, run it in float32).
pytestmark = pytest.mark.usefixtures("jax_x64")

ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]
FIXED = ["euler", "midpoint", "heun", "rk4"]
ORDER = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "bosh3": 3, "dopri5": 5,
         "tsit5": 5, "dopri8": 8}


def xp(engine):
    """The array namespace of an engine, for the few tests whose fields need ``where``."""
    if engine.name == "torch":
        return engine.torch
    if engine.name == "jax":
        return engine.jax.numpy
    return np


def solve(engine, problem, *, dtype=np.float64, t=None, **kwargs):
    t = problem.t if t is None else t
    return odeplug.odeint(
        problem.func, engine.asarray(problem.y0, dtype), engine.asarray(t),
        engine.tree(problem.args, dtype), **kwargs,
    )


@pytest.mark.parametrize("solver", ADAPTIVE)
@pytest.mark.parametrize("problem", ACCURACY_PROBLEMS, ids=lambda p: p.name)
def test_adaptive_solution_within_tolerance(engine, problem, solver):
    rtol, atol = 1e-8, 1e-10
    ys = engine.numpy(solve(engine, problem, solver=solver, rtol=rtol, atol=atol))
    exact = problem.solution()
    assert ys.shape == exact.shape and ys.dtype == np.float64
    np.testing.assert_allclose(ys[0], problem.y0, rtol=0, atol=0)
    # Global error: a small multiple of the local tolerance (dense output included).
    scale = atol + rtol * np.abs(exact).max()
    assert np.abs(ys - exact).max() <= 30 * scale


@pytest.mark.parametrize("problem", [DECAY, OSCILLATOR], ids=lambda p: p.name)
def test_decreasing_time(engine, problem):
    t = problem.t[::-1]
    y_end = problem.solution()[-1]
    ys = engine.numpy(odeplug.odeint(
        problem.func, engine.asarray(y_end), engine.asarray(t), engine.tree(problem.args),
        rtol=1e-9, atol=1e-11))
    np.testing.assert_allclose(ys[::-1], problem.solution(), atol=1e-7)


def test_float32_state_stays_float32(engine):
    ys = solve(engine, OSCILLATOR, dtype=np.float32, rtol=1e-5, atol=1e-7)
    ys_np = engine.numpy(ys)
    assert ys_np.dtype == np.float32
    np.testing.assert_allclose(ys_np, OSCILLATOR.solution(), atol=1e-3)


def hand_written_step(solver, f, t, y, h):
    """One step of each fixed-step method, written out (not from odeplug's tableaus)."""
    if solver == "euler":
        return y + h * f(t, y)
    if solver == "midpoint":
        return y + h * f(t + h / 2, y + h / 2 * f(t, y))
    if solver == "heun":
        k1 = f(t, y)
        return y + h / 2 * (k1 + f(t + h, y + h * k1))
    k1 = f(t, y)
    k2 = f(t + h / 2, y + h / 2 * k1)
    k3 = f(t + h / 2, y + h / 2 * k2)
    k4 = f(t + h, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("problem", [OSCILLATOR, CUBIC], ids=lambda p: p.name)
def test_fixed_step_matches_hand_written_steps(engine, solver, problem):
    """Same method, same grid ``t0 + k h``: every engine computes the numbers of the
    method written out by hand, at output times on the grid."""
    h, n = 0.05, 40
    t = np.linspace(0.0, 2.0, 5)  # every 10th grid point
    ys = engine.numpy(solve(engine, problem, t=t, solver=solver, step_size=h))

    def f(s, y):
        return problem.func(s, y, problem.args)

    expected = [problem.y0]
    y = problem.y0
    for k in range(n):
        y = hand_written_step(solver, f, k * h, y, h)
        if (k + 1) % 10 == 0:
            expected.append(y)
    np.testing.assert_allclose(ys, np.stack(expected), rtol=1e-12, atol=1e-12)


def test_fixed_step_last_step_ends_on_t1(engine):
    # 1.0 / 0.3 is not an integer: the last step is shortened to end exactly at t1.
    t = np.array([0.0, 1.0])
    ys, stats = solve(engine, DECAY, t=t, solver="rk4", step_size=0.3, return_stats=True)
    assert int(stats.n_steps) == 4
    np.testing.assert_allclose(engine.numpy(ys)[-1], DECAY.solution(t)[-1], rtol=1e-4)


# The embedded 4th-order solution of dopri5 that torchdiffeq and diffrax use (Shampine
# 1986), not scipy's (Dormand & Prince 1980): the error estimate is b - b_hat.
DOPRI5_EMBEDDED = np.array([1951 / 21600, 0, 22642 / 50085, 451 / 720, -12231 / 42400,
                            649 / 6300, 1 / 60])


def independent_adaptive_solve(method, f, y0, t0, t1, rtol, atol):
    """The shared controller written out, on scipy's coefficients of the same methods
    (``RK45``: Dormand-Prince 5; ``RK23``: Bogacki-Shampine 3(2)), independent of
    odeplug's tableaus and ``_stepping``: Hairer's first step, RMS error norm of
    ``err / (atol + rtol max(|y|, |y_new|))``, accept below 1, integral control
    ``0.9 r**(-1/order)`` clipped to [1, 10] after an accepted step, [0.2, 0.9] after a
    rejected one, the last step cut to end on ``t1``. Returns the evaluations (f(t0), the
    first step's, then per attempt all stages but the FSAL one), steps and rejections."""
    a, b, c, e, order = method.A, method.B, method.C, method.E, method.order
    if method is RK45:
        e = np.append(b, 0.0) - DOPRI5_EMBEDDED

    def rms(x):
        return math.sqrt(float(np.mean(x * x)))

    f0 = f(t0, y0)
    scale = atol + rtol * np.abs(y0)
    d0, d1 = rms(y0 / scale), rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = rms((f(t0 + h0, y0 + h0 * f0) - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / order)
    h = min(100 * h0, h1)
    t, y, nfe, steps, rejected = t0, y0, 2, 0, 0
    while t < t1:
        h = min(h, t1 - t)
        k = [f0]
        for i in range(1, len(c)):
            k.append(f(t + c[i] * h, y + h * sum(a[i, j] * k[j] for j in range(i))))
        y_new = y + h * sum(b[i] * k[i] for i in range(len(b)))
        k.append(f(t + h, y_new))
        nfe += len(c)
        error = h * sum(e[i] * k[i] for i in range(len(e)))
        ratio = rms(error / (atol + rtol * np.maximum(np.abs(y), np.abs(y_new))))
        factor = 0.9 * ratio ** (-1 / order) if ratio > 0 else 10.0
        if ratio < 1:
            t, y, f0, steps = t + h, y_new, k[-1], steps + 1
            h *= min(10.0, max(1.0, factor))
        else:
            rejected += 1
            h *= min(0.9, max(0.2, factor))
    return y, nfe, steps, rejected


@pytest.mark.parametrize("solver, method", [("dopri5", RK45), ("bosh3", RK23)],
                         ids=["dopri5", "bosh3"])
@pytest.mark.parametrize("problem", [OSCILLATOR, LOTKA_VOLTERRA], ids=lambda p: p.name)
def test_steps_match_an_independent_controller(engine, solver, method, problem):
    rtol, atol = 1e-6, 1e-8
    t = problem.t[[0, -1]]
    ys, stats = solve(engine, problem, t=t, solver=solver, rtol=rtol, atol=atol,
                      return_stats=True)

    def f(s, y):
        return problem.func(s, y, problem.args)

    y1, nfe, steps, rejected = independent_adaptive_solve(method, f, problem.y0, t[0], t[1],
                                                          rtol, atol)
    assert (int(stats.n_steps), int(stats.n_rejected)) == (steps, rejected)
    assert int(stats.nfe_forward) == nfe
    assert rejected > 0  # the controller's rejection branch is exercised
    np.testing.assert_allclose(engine.numpy(ys)[-1], y1, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- convergence


@pytest.mark.parametrize("solver", FIXED + ADAPTIVE)
def test_convergence_order(engine, solver):
    """The error at t1 falls like ``h**order`` on a nonlinear problem with an exact
    solution. Adaptive methods run on a fixed grid through the public controller options:
    ``first_step=h``, growth and shrink factors of 1 and tolerances that accept every
    step, so their propagated solution's order shows (not the embedded pair's)."""
    if solver == "dopri8":
        steps = 2.0 / np.array([10, 12, 16, 20])  # errors 1e-11 to 5e-14: above roundoff
    elif solver in ("dopri5", "tsit5"):
        steps = 0.2 / 2.0 ** np.arange(5)
    else:
        steps = 0.1 / 2.0 ** np.arange(5)
    t = np.array([0.0, 2.0])
    errors = []
    for h in steps:
        if solver in FIXED:
            kwargs = dict(step_size=h)
        else:
            kwargs = dict(rtol=1e6, atol=1e6,
                          options={"first_step": h, "factormin": 1.0, "factormax": 1.0})
        ys, stats = solve(engine, ROTATION, t=t, solver=solver, return_stats=True, **kwargs)
        # The grid h, 2h, ..., ending on t1 on every engine.
        assert int(stats.n_steps) == round(2.0 / h)
        assert int(stats.n_rejected) == 0
        errors.append(np.abs(engine.numpy(ys)[-1] - ROTATION.solution(t)[-1]).max())
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(slope - ORDER[solver]) <= 0.3, (slope, errors)


# ------------------------------------------------------------------------ gradients

GRAD_KW = dict(solver="dopri5", rtol=1e-11, atol=1e-12)


def _cubic_loss(engine, adjoint, solve=odeplug.odeint, **kwargs):
    """A loss of the solution at three times, the last one ``t1``; ``solve`` takes
    ``odeplug.odeint``'s arguments."""
    weights = engine.asarray(np.array([[1.0, 0.5], [0.3, -2.0], [1.5, 1.0]]))

    def loss(y0, args, t1):
        if engine.name == "reference":
            import autograd.numpy as anp

            t = anp.concatenate([np.array([0.0, 0.5]), anp.reshape(t1, (1,))])
        elif engine.name == "torch":
            t = engine.torch.cat([engine.torch.tensor([0.0, 0.5], dtype=t1.dtype),
                                  t1.reshape(1)])
        else:
            t = engine.jax.numpy.concatenate([engine.jax.numpy.array([0.0, 0.5]),
                                              t1.reshape(1)])
        ys = solve(CUBIC.func, y0, t, args, adjoint=adjoint, **{**GRAD_KW, **kwargs})
        return ((ys * ys) * weights).sum()

    return loss


def _finite_differences(engine, h=1e-5):
    loss = _cubic_loss(engine, adjoint=False)

    def value(y0, args, t1):
        return float(engine.numpy(loss(engine.asarray(y0), engine.tree(args),
                                       engine.asarray(t1))))

    y0, args, t1 = CUBIC.y0, CUBIC.args, np.array(1.0)
    grads = [np.zeros_like(y0), {k: np.zeros_like(v) for k, v in args.items()}, 0.0]
    for i in range(y0.size):
        e = np.zeros_like(y0)
        e.flat[i] = h
        grads[0].flat[i] = (value(y0 + e, args, t1) - value(y0 - e, args, t1)) / (2 * h)
    for key, v in args.items():
        for i in range(v.size):
            e = np.zeros_like(v)
            e.flat[i] = h
            plus, minus = dict(args), dict(args)
            plus[key], minus[key] = v + e, v - e
            grads[1][key].flat[i] = (value(y0, plus, t1) - value(y0, minus, t1)) / (2 * h)
    grads[2] = (value(y0, args, t1 + h) - value(y0, args, t1 - h)) / (2 * h)
    return grads


def _flat(grads):
    y0, args, t1 = grads
    return np.concatenate([np.ravel(y0)] + [np.ravel(args[k]) for k in sorted(args)]
                          + [np.ravel(t1)])


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_gradients_match_finite_differences(engine, adjoint):
    grads = engine.grad(_cubic_loss(engine, adjoint), CUBIC.y0, CUBIC.args, np.array(1.0))
    fd = _finite_differences(engine)
    got, want = _flat(grads), _flat(fd)
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


# Step sizes of the fixed-step solvers in the gradient matrix, and the end time: off the
# grids (t1 / h is not an integer), so that +-1e-5 moves no step boundary and finite
# differences see the same discrete scheme as backpropagation.
MATRIX_STEPS = {"euler": 1e-3, "midpoint": 1e-2, "heun": 1e-2, "rk4": 1e-2}
MATRIX_T1 = 0.9973


def _matrix_kwargs(solver):
    if solver in MATRIX_STEPS:
        return dict(solver=solver, step_size=MATRIX_STEPS[solver])
    return dict(solver=solver, rtol=1e-10, atol=1e-12)


@cache
def _matrix_finite_differences(solver, delta=1e-5):
    """Central differences on the reference engine of the loss of ``_cubic_loss``.

    Fixed steps: of the same discrete scheme (every engine computes its numbers to
    1e-12). Adaptive: of dopri8 at rtol = atol = 1e-13, the exact gradient to ~1e-8.
    """
    kwargs = _matrix_kwargs(solver) if solver in MATRIX_STEPS else dict(
        solver="dopri8", rtol=1e-13, atol=1e-13)
    weights = np.array([[1.0, 0.5], [0.3, -2.0], [1.5, 1.0]])

    def value(x):
        args = {"A": x[2:6].reshape(2, 2), "b": x[6:8]}
        ys = odeplug.odeint(CUBIC.func, x[:2], np.array([0.0, 0.5, x[8]]), args,
                            backend="reference", **kwargs)
        return float(((ys * ys) * weights).sum())

    x0 = _flat((CUBIC.y0, CUBIC.args, np.array(MATRIX_T1)))
    grad = np.zeros_like(x0)
    for i in range(x0.size):
        step = np.zeros_like(x0)
        step[i] = delta
        grad[i] = (value(x0 + step) - value(x0 - step)) / (2 * delta)
    return grad


@pytest.mark.parametrize("mode", ["adjoint", "backprop"])
@pytest.mark.parametrize("solver", FIXED + ADAPTIVE)
def test_gradient_matrix(engine, solver, mode):
    """Every solver, both gradient methods, against central differences, w.r.t. y0, the
    parameters and t1. Backprop through fixed steps differentiates the discrete scheme
    (equal to its finite differences up to their own error, 1e-10); the adjoint solves
    the continuous adjoint with the same steps, off by the backward solve's
    discretisation error, below ``h**order`` here; adaptive solves at rtol 1e-10 agree
    with the exact gradient to the finite differences' 1e-8."""
    loss = _cubic_loss(engine, mode == "adjoint", **_matrix_kwargs(solver))
    got = _flat(engine.grad(loss, CUBIC.y0, CUBIC.args, np.array(MATRIX_T1)))
    want = _matrix_finite_differences(solver)
    if solver not in MATRIX_STEPS:
        tolerance = 1e-7
    elif mode == "backprop":
        tolerance = 1e-9
    else:
        tolerance = MATRIX_STEPS[solver] ** ORDER[solver]
    assert np.linalg.norm(got - want) <= tolerance * np.linalg.norm(want)


def test_adjoint_matches_backprop(engine):
    inputs = (CUBIC.y0, CUBIC.args, np.array(1.0))
    adjoint = _flat(engine.grad(_cubic_loss(engine, True), *inputs))
    backprop = _flat(engine.grad(_cubic_loss(engine, False), *inputs))
    np.testing.assert_allclose(adjoint, backprop, rtol=1e-6, atol=1e-8)


def test_seminorm_adjoint_same_gradient(engine):
    inputs = (CUBIC.y0, CUBIC.args, np.array(1.0))
    full = _flat(engine.grad(_cubic_loss(engine, True), *inputs))
    semi = _flat(engine.grad(
        _cubic_loss(engine, odeplug.BacksolveAdjoint(seminorm=True)), *inputs))
    np.testing.assert_allclose(semi, full, rtol=1e-6, atol=1e-8)


def _backward_cost(engine, adjoint, problem=CUBIC, rtol=1e-9, atol=1e-11):
    """``nfe_backward`` of the adjoint's gradient of ``sum(y**2)`` w.r.t. the parameters."""
    t = problem.t
    if engine.name == "reference":
        import autograd

        holder = {}

        def loss(args):
            ys, holder["stats"] = odeplug.odeint(problem.func, problem.y0, t, args,
                                                 adjoint=adjoint, rtol=rtol, atol=atol,
                                                 return_stats=True)
            return (ys * ys).sum()

        autograd.grad(loss)(problem.args)
        return holder["stats"].nfe_backward
    if engine.name == "torch":
        args = {k: engine.torch.tensor(v, requires_grad=True) for k, v in problem.args.items()}
        ys, stats = odeplug.odeint(problem.func, engine.asarray(problem.y0), engine.asarray(t),
                                   args, adjoint=adjoint, rtol=rtol, atol=atol,
                                   return_stats=True)
        (ys * ys).sum().backward()
        return stats.nfe_backward
    jax = engine.jax
    holder = {}

    def loss(args):
        ys, holder["stats"] = odeplug.odeint(problem.func, engine.asarray(problem.y0),
                                             engine.asarray(t), args, adjoint=adjoint,
                                             rtol=rtol, atol=atol, return_stats=True)
        return (ys * ys).sum()

    jax.grad(loss)(engine.tree(problem.args))
    cost = holder["stats"].nfe_backward
    return None if cost is None else int(cost)


def test_seminorm_lowers_the_backward_cost(engine):
    """Kidger, Chen & Lyons (2021): without the parameter channels in the backward
    solve's error norm, it takes fewer steps, on every engine the same number."""
    full = _backward_cost(engine, True)
    if full is None:
        pytest.skip(f"the {engine.name} engine does not report nfe_backward (None)")
    semi = _backward_cost(engine, odeplug.BacksolveAdjoint(seminorm=True))
    assert semi < full
    reference = engine.__class__("reference")
    assert (full, semi) == (_backward_cost(reference, True),
                            _backward_cost(reference, odeplug.BacksolveAdjoint(seminorm=True)))


def test_stats_count_the_backward_pass(engine):
    if engine.name == "jax":
        pytest.skip("JAX is functional: backward counts are not reported (see docs)")
    y0 = engine.asarray(CUBIC.y0)
    args = engine.tree(CUBIC.args)
    if engine.name == "torch":
        for v in args.values():
            v.requires_grad_(True)
        ys, stats = odeplug.odeint(CUBIC.func, y0, engine.asarray(CUBIC.t), args, adjoint=True,
                                   return_stats=True)
        assert stats.nfe_backward == 0
        ys.sum().backward()
    else:
        import autograd

        holder = {}

        def loss(a):
            ys, holder["stats"] = odeplug.odeint(CUBIC.func, y0, CUBIC.t, a, adjoint=True,
                                                 return_stats=True)
            return ys.sum()

        autograd.grad(loss)(args)
        stats = holder["stats"]
    assert stats.nfe_forward > 0 and stats.n_steps > 0
    assert stats.nfe_backward > stats.n_steps


@pytest.mark.parametrize("count_backward", [True, False])
def test_backprop_vjps_counted_only_when_asked(engine, count_backward):
    # odeplug.odeint asks for the counts with return_stats=True only: counting backprop's
    # VJPs costs a hook per evaluation, and the gradient must not depend on it.
    if engine.name == "jax":
        pytest.skip("JAX is functional: backward counts are not reported (see docs)")
    backend = odeplug.get_backend(engine.name)
    holder = {}

    def solve(func, y0, t, args, **kwargs):
        ys, holder["stats"] = backend.odeint(func, y0, t, args, make_solve_config(**kwargs),
                                             count_backward=count_backward)
        return ys

    inputs = (CUBIC.y0, CUBIC.args, np.array(1.0))
    grads = _flat(engine.grad(_cubic_loss(engine, False, solve=solve), *inputs))
    expected = _flat(engine.grad(_cubic_loss(engine, False), *inputs))
    np.testing.assert_array_equal(grads, expected)
    stats = holder["stats"]
    if count_backward:
        assert stats.nfe_backward >= stats.nfe_forward - 2  # one VJP per evaluation used
    else:
        assert stats.nfe_backward == 0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("t, message", [
    (np.array([0.0, 1.0, 1.0]), "strictly"),
    (np.array([0.0, 1.0, 0.5]), "strictly"),
    (np.array([]), "at least one"),
    (np.array([[0.0, 1.0]]), "1-D"),
    (np.array([0.0, np.nan]), "NaN"),
])
def test_bad_time_grid(engine, t, message):
    with pytest.raises(ValueError, match=message):
        solve(engine, DECAY, t=t)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_initial_state(engine, bad):
    y0 = DECAY.y0.copy()
    y0[1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        odeplug.odeint(DECAY.func, engine.asarray(y0), engine.asarray(DECAY.t),
                       engine.tree(DECAY.args))


def test_mismatched_dtypes(engine):
    # float32 state, float64 parameters: the field would silently upcast.
    with pytest.raises(TypeError, match="mismatched dtypes"):
        odeplug.odeint(DECAY.func, engine.asarray(DECAY.y0, np.float32),
                       engine.asarray(DECAY.t), engine.tree(DECAY.args, np.float64))


def test_wrong_field_shape(engine):
    with pytest.raises(ValueError, match="shape"):
        odeplug.odeint(lambda t, y, a: y[:2], engine.asarray(DECAY.y0), engine.asarray(DECAY.t))


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="rk45"), "unknown solver"),
    (dict(options={"max_step": 1.0}), "unknown solver options"),
    (dict(solver="rk4"), "step_size"),
    (dict(step_size=0.1), "adaptive"),
    (dict(rtol=-1.0), "rtol"),
])
def test_bad_solver_arguments(engine, kwargs, message):
    with pytest.raises(ValueError, match=message):
        solve(engine, DECAY, **kwargs)


def test_tuple_state_on_the_engine_of_its_arrays(engine):
    """A tuple ``y0`` (torchdiffeq's tuple state) is solved on the engine of its arrays
    (not NumPy's for torch tensors), with the single array's solution and counts."""
    y0 = engine.asarray(DECAY.y0)
    args = engine.tree(DECAY.args)
    ys, stats = odeplug.odeint(lambda t, y, a: (DECAY.func(t, y[0], a), 2 * y[1]),
                               (y0, y0[:2]), engine.asarray(DECAY.t), args,
                               return_stats=True)
    single = odeplug.odeint(DECAY.func, y0, engine.asarray(DECAY.t), args)
    assert isinstance(ys, tuple) and len(ys) == 2
    assert all(type(y) is type(single) for y in ys)
    assert ys[0].shape == single.shape and ys[1].shape == (len(DECAY.t), 2)
    np.testing.assert_allclose(engine.numpy(ys[0]), DECAY.solution(), rtol=1e-5)
    np.testing.assert_allclose(engine.numpy(ys[1]),
                               np.exp(2 * DECAY.t)[:, None] * DECAY.y0[:2], rtol=1e-5)
    assert stats.n_steps > 0


def test_tuple_state_errors(engine):
    y0, t = engine.asarray(DECAY.y0), engine.asarray(DECAY.t)
    with pytest.raises(TypeError, match="share one dtype"):
        odeplug.odeint(lambda t, y, a: y, (y0, engine.asarray(DECAY.y0, np.float32)), t)
    if engine.name != "reference":  # an engine's array with a NumPy one
        with pytest.raises(TypeError, match="of one type"):
            odeplug.odeint(lambda t, y, a: y, (y0, DECAY.y0.copy()), t)
    with pytest.raises(ValueError, match="must return a tuple of 2 arrays"):
        odeplug.odeint(lambda t, y, a: y[0], (y0, y0), t)


def _assert_solution_so_far(error, problem, t, rtol=1e-6):
    """``ts`` are the output times before the failure, ``ys`` the solution there."""
    k = len(error.ts)
    np.testing.assert_array_equal(error.ts, t[:k])
    assert error.t >= t[k - 1] and (k == len(t) or error.t < t[k])
    ys = np.asarray(error.ys)
    assert ys.shape == (k,) + problem.y0.shape
    np.testing.assert_allclose(ys, problem.solution(t)[:k], rtol=rtol, atol=rtol)


def test_step_budget_exceeded_says_time_reached(engine):
    with pytest.raises(SolverError, match="max_num_steps=50 exceeded at t=") as info:
        solve(engine, OSCILLATOR, rtol=1e-10, atol=1e-12, max_num_steps=50)
    assert info.value.reason == "max_num_steps"
    assert 0.5 < info.value.t < OSCILLATOR.t[-1]
    _assert_solution_so_far(info.value, OSCILLATOR, OSCILLATOR.t)


def test_fixed_step_budget_exceeded(engine):
    # rk4 with h = 0.1 over [0, 5]: the 16th step would start at t = 1.5.
    with pytest.raises(SolverError, match="max_num_steps=15 exceeded at t=1.5 ") as info:
        solve(engine, OSCILLATOR, solver="rk4", step_size=0.1, max_num_steps=15)
    assert info.value.reason == "max_num_steps" and info.value.t == pytest.approx(1.5)
    _assert_solution_so_far(info.value, OSCILLATOR, OSCILLATOR.t, rtol=1e-4)
    assert len(info.value.ts) == 4  # 0, 0.5, 1.0, 1.5 reached


def _blow_up(t, y, args):
    return y * y  # y = 1 / (1 - t): infinite at t = 1


def test_blow_up_is_a_step_size_underflow(engine):
    """``dy/dt = y**2``, ``y(0) = 1``: the numerical solution stays finite (about 5e8)
    while the steps shrink towards the singularity at t = 1, until they cannot move t:
    a step size underflow, on every engine (not a non-finite state: nothing overflows)."""
    t = np.array([0.0, 0.5, 0.9, 2.0])
    with pytest.raises(SolverError, match="step size underflow") as info, \
            np.errstate(over="ignore", invalid="ignore"):
        odeplug.odeint(_blow_up, engine.asarray([1.0]), engine.asarray(t))
    error = info.value
    assert error.reason == "step_size_underflow"
    assert 1.0 < error.t < 1.0 + 1e-6
    np.testing.assert_array_equal(error.ts, t[:3])
    np.testing.assert_allclose(np.asarray(error.ys)[:, 0], 1.0 / (1.0 - t[:3]), rtol=1e-5)


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_field_returning_nan_is_non_finite(engine, solver):
    """A field that is NaN from t = 0.5 on: adaptive solvers reject the non-finite steps
    and shrink towards 0.5 until the step underflows; fixed steps fail on the step that
    ends at 0.5. Either way: ``non_finite``, at 0.5, with the outputs before it."""
    ns = xp(engine)

    def field(t, y, args):
        return ns.where(t < 0.5, -y, y * math.nan)

    t = np.array([0.0, 0.25, 1.0])
    kwargs = dict(step_size=0.1) if solver == "rk4" else {}
    with pytest.raises(SolverError, match="non-finite state") as info:
        odeplug.odeint(field, engine.asarray([1.0, 2.0]), engine.asarray(t), solver=solver,
                       **kwargs)
    error = info.value
    assert error.reason == "non_finite"
    if solver == "rk4":
        assert error.t == pytest.approx(0.5)
    else:
        assert 0.5 - 1e-9 < error.t <= 0.5
    np.testing.assert_array_equal(error.ts, t[:2])
    np.testing.assert_allclose(np.asarray(error.ys), np.exp(-t[:2])[:, None] * [1.0, 2.0],
                               rtol=1e-5)


# ------------------------------------------------------------------- constants


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_constant_args(engine, adjoint):
    """Leaves wrapped in ``odeplug.Constant`` reach the field unwrapped; the solution and
    the gradient w.r.t. the other args are those of the unwrapped problem."""
    mask = engine.asarray([1.0, 0.0, -0.5])

    def field(t, y, args):
        assert not isinstance(args["mask"], odeplug.Constant)
        return -args["k"] * y + t * args["mask"]

    def loss(wrap):
        def value(k):
            args = {"k": k, "mask": odeplug.Constant(mask) if wrap else mask}
            ys = odeplug.odeint(field, engine.asarray(DECAY.y0), engine.asarray(DECAY.t), args,
                                rtol=1e-10, atol=1e-12, adjoint=adjoint)
            return (ys * ys).sum()

        return value

    k = np.array(0.7)
    wrapped, plain = loss(True), loss(False)
    assert float(engine.numpy(wrapped(engine.asarray(k)))) == pytest.approx(
        float(engine.numpy(plain(engine.asarray(k)))), rel=1e-12)
    np.testing.assert_allclose(engine.grad(wrapped, k)[0], engine.grad(plain, k)[0],
                               rtol=1e-10)


def test_unknown_backend():
    with pytest.raises(ValueError, match="registered backends: .*reference"):
        odeplug.odeint(DECAY.func, DECAY.y0, DECAY.t, DECAY.args, backend="nope")


def test_dispatch_by_array_type(engine):
    ys = solve(engine, DECAY)
    assert type(ys).__module__.split(".")[0] == type(engine.asarray(DECAY.y0)).__module__.split(
        ".")[0]
