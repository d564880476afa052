"""The reference solver on its own: order of every tableau, dense output, counters,
failures with the time reached."""

from __future__ import annotations

import autograd
import numpy as np
import pytest

import odeplug
from odeplug import ODESolveConfig, ODEStats, SolverError
from odeplug._tableaus import TABLEAUS
from odeplug.reference.solve import _integrate
from tests.problems import OSCILLATOR

# Oscillator on flat states: y = [x, v], exact solution known.
A = OSCILLATOR.args["A"]


def field(t, y):
    return y @ A


def exact(t):
    return OSCILLATOR.exact(np.atleast_1d(t))[0]


def solve_fixed(name, h, ts):
    config = ODESolveConfig(solver=name, step_size=h)
    return _integrate(field, OSCILLATOR.y0.copy(), np.asarray(ts), config, ODEStats(),
                      traced=False)


# Step sizes that keep each method's error between roundoff and its asymptotic range.
STEPS = {name: [0.2 / 2**k for k in range(6)] for name in TABLEAUS}
STEPS["dopri8"] = [0.2 / 2**k for k in range(4)]


def _lotka_volterra_error(name, h):
    # dopri8 meets the order conditions of linear problems to order 9, so on the
    # oscillator its error falls like h**9; Lotka-Volterra shows its order 8. Reference:
    # dopri8 itself with h = 0.005 (agrees with scipy's DOP853 at 1e-13 to 2e-13).
    from tests.problems import LOTKA_VOLTERRA as lv

    def lv_field(t, y):
        return lv.func(t, y, lv.args)

    def run(step):
        return _integrate(lv_field, lv.y0.copy(), np.array([0.0, 2.0]),
                          ODESolveConfig(solver=name, step_size=step), ODEStats(),
                          traced=False)[-1]

    return np.abs(run(h) - run(0.005)).max()


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_empirical_convergence_order(name):
    """Log-log fit of the error at t = 2 against the step size."""
    hs = np.array(STEPS[name])
    if name == "dopri8":
        errors = [_lotka_volterra_error(name, h) for h in hs]
    else:
        errors = [np.abs(solve_fixed(name, h, [0.0, 2.0])[-1] - exact(2.0)).max() for h in hs]
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - TABLEAUS[name].order) <= 0.3, (slope, errors)


@pytest.mark.parametrize("name, order", [("dopri5", 4), ("tsit5", 4), ("dopri8", 6),
                                         ("rk4", 3), ("bosh3", 3)])
def test_dense_output_order(name, order):
    """Outputs inside a step (x = 0.37) converge at least at the interpolant's order."""
    hs = np.array(STEPS[name])
    errors = []
    for h in hs:
        t_mid = 1.0 + 0.37 * h  # 1.0 is on every grid
        errors.append(np.abs(solve_fixed(name, h, [0.0, t_mid, 2.0])[1] - exact(t_mid)).max())
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert slope >= order - 0.3, (slope, errors)


def test_batched_state_is_solved_independently():
    y0 = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, -0.2]])
    t = np.linspace(0.0, 1.0, 4)
    batched = odeplug.odeint(OSCILLATOR.func, y0, t, OSCILLATOR.args, rtol=1e-10, atol=1e-12)
    for i in range(3):
        single = odeplug.odeint(OSCILLATOR.func, y0[i], t, OSCILLATOR.args, rtol=1e-10,
                                atol=1e-12)
        np.testing.assert_allclose(batched[:, i], single, atol=1e-9)


def _counted(func):
    calls = {"n": 0}

    def wrapped(t, y, args):
        calls["n"] += 1
        return func(t, y, args)

    return wrapped, calls


@pytest.mark.parametrize("kwargs", [dict(solver="dopri5"), dict(solver="dopri8"),
                                    dict(solver="rk4", step_size=0.1)])
def test_nfe_counts_every_evaluation(kwargs):
    func, calls = _counted(OSCILLATOR.func)
    _, stats = odeplug.odeint(func, OSCILLATOR.y0, OSCILLATOR.t, OSCILLATOR.args,
                              return_stats=True, **kwargs)
    # One extra call: odeint checks the field's output shape and dtype once.
    assert stats.nfe_forward == calls["n"] - 1
    if "step_size" in kwargs:
        assert stats.n_steps == 50 and stats.n_rejected == 0
        assert stats.nfe_forward == 4 * stats.n_steps


def test_tighter_tolerance_costs_more_evaluations():
    nfe = [odeplug.odeint(OSCILLATOR.func, OSCILLATOR.y0, OSCILLATOR.t, OSCILLATOR.args,
                          rtol=rtol, atol=rtol * 1e-2, return_stats=True)[1].nfe_forward
           for rtol in (1e-3, 1e-6, 1e-9)]
    assert nfe[0] < nfe[1] < nfe[2]


def test_pi_controller_option_changes_steps_not_accuracy():
    """A PI controller (pcoeff > 0) takes other steps than the default integral one (it
    damps the step-size changes of the Lotka-Volterra cycles), and its solution is as
    accurate: the error is set by the tolerance, not by the controller."""
    from tests.problems import LOTKA_VOLTERRA as lv

    rtol, atol = 1e-8, 1e-10
    exact = lv.solution()
    results = {}
    for name, options in [("integral", None), ("pi", {"pcoeff": 0.4, "icoeff": 0.3})]:
        ys, stats = odeplug.odeint(lv.func, lv.y0, lv.t, lv.args, rtol=rtol, atol=atol,
                                   options=options, return_stats=True)
        scale = atol + rtol * np.abs(exact).max()
        assert np.abs(ys - exact).max() <= 100 * scale, name
        results[name] = (stats.n_steps, stats.n_rejected)
    (steps, rejected), (pi_steps, pi_rejected) = results["integral"], results["pi"]
    assert pi_steps != steps
    assert pi_rejected < rejected  # the PI controller's purpose: fewer rejected steps


def _blow_up(t, y, args):
    return y * y  # y = 1 / (1 - t): infinite at t = 1


def test_blow_up_raises_with_time_reached_and_solution_so_far():
    t = np.array([0.0, 0.5, 0.9, 2.0])
    with pytest.raises(SolverError) as info, np.errstate(over="ignore", invalid="ignore"):
        odeplug.odeint(_blow_up, np.array([1.0]), t)
    error = info.value
    # The numerical solution stays finite while the steps shrink towards the singularity
    # just past t = 1, until they cannot move t: a step size underflow.
    assert error.reason == "step_size_underflow"
    assert 1.0 < error.t < 1.0 + 1e-6
    assert f"{error.t:.4g}"[:3] in str(error)
    np.testing.assert_allclose(error.ts, t[:3])
    np.testing.assert_allclose(error.ys[:, 0], 1.0 / (1.0 - t[:3]), rtol=1e-5)


def test_non_finite_slope_at_t0_is_non_finite():
    # Hairer's first step from a NaN slope is NaN: a non-finite state, not a step budget
    # spent on NaN steps.
    with pytest.raises(SolverError, match="non-finite state") as info:
        odeplug.odeint(lambda t, y, a: y * np.nan, np.ones(2), np.array([0.0, 1.0]))
    assert info.value.reason == "non_finite" and info.value.t == 0.0
    np.testing.assert_array_equal(info.value.ys, [[1.0, 1.0]])


def test_constant_args_have_no_adjoint_channel(monkeypatch):
    """The adjoint's backward solve integrates [y, a, a_theta]: a_theta has one channel per
    entry of the differentiated args, none for ``Constant`` leaves."""
    from odeplug.reference import solve as reference_solve

    sizes = []
    original = reference_solve._integrate

    def spy(fun, y0, ts, config, stats, **kwargs):
        sizes.append(np.size(y0))
        return original(fun, y0, ts, config, stats, **kwargs)

    monkeypatch.setattr(reference_solve, "_integrate", spy)
    noise = np.linspace(-1.0, 1.0, 50)

    def gradient(wrap):
        def loss(k):
            args = {"k": k, "noise": odeplug.Constant(noise) if wrap else noise}
            ys = odeplug.odeint(lambda t, y, a: -a["k"] * y + 1e-3 * a["noise"][:2],
                                np.ones(2), np.array([0.0, 0.5, 1.0]), args, adjoint=True,
                                rtol=1e-10, atol=1e-12)
            return ys.sum()

        sizes.clear()
        grad = autograd.grad(loss)(np.array(0.7))
        return grad, sorted(set(sizes))

    grad_wrapped, wrapped = gradient(True)
    grad_plain, plain = gradient(False)
    # Forward state: 2; backward: 2 + 2 + 1 (k), and 50 more when noise is differentiated.
    assert wrapped == [2, 5] and plain == [2, 55]
    # The same gradient, to the backward solves' tolerance (their norms differ: the noise
    # channels are among the RMS's entries when noise is differentiated).
    np.testing.assert_allclose(grad_wrapped, grad_plain, rtol=1e-9)


def test_fixed_step_non_finite_state():
    with pytest.raises(SolverError, match="non-finite state") as info:
        with np.errstate(over="ignore"):
            odeplug.odeint(_blow_up, np.array([1.0]), np.array([0.0, 20.0]), solver="euler",
                           step_size=0.5)
    assert info.value.reason == "non_finite"


def test_closure_over_traced_values_is_refused():
    def loss(k):
        return odeplug.odeint(lambda t, y, args: -k * y, np.array([1.0]), np.array([0.0, 1.0]),
                              adjoint=True)[-1, 0]

    with pytest.raises(ValueError, match="pass them through `args`"):
        autograd.grad(loss)(1.0)


def test_integer_state_refused():
    with pytest.raises(TypeError, match="floating"):
        odeplug.odeint(OSCILLATOR.func, np.array([1, 0]), OSCILLATOR.t, OSCILLATOR.args)


@pytest.mark.parametrize("adjoint", [True, False])
def test_gradient_through_intermediate_output_times(adjoint):
    """dL/dt_i = g_i . f(t_i, y_i) for an intermediate output time."""
    args = {"k": np.array(0.7)}

    def loss(t):
        return odeplug.odeint(lambda s, y, a: -a["k"] * y, np.array([2.0]), t, args,
                              adjoint=adjoint, rtol=1e-10, atol=1e-12).sum()

    t = np.array([0.0, 0.4, 1.0])
    grad = autograd.grad(loss)(t)
    y = 2.0 * np.exp(-0.7 * t)
    want = np.array([0.7 * (y[1] + y[2]), -0.7 * y[1], -0.7 * y[2]])
    np.testing.assert_allclose(grad, want, rtol=1e-7)
