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
    kwargs = dict(rtol=1e-8, atol=1e-10, return_stats=True)
    ys, stats = odeplug.odeint(OSCILLATOR.func, OSCILLATOR.y0, OSCILLATOR.t, OSCILLATOR.args,
                               options={"pcoeff": 0.4, "icoeff": 0.3}, **kwargs)
    np.testing.assert_allclose(ys, OSCILLATOR.solution(), atol=1e-6)
    assert stats.n_steps > 0


def _blow_up(t, y, args):
    return y * y  # y = 1 / (1 - t): infinite at t = 1


def test_blow_up_raises_with_time_reached_and_solution_so_far():
    t = np.array([0.0, 0.5, 0.9, 2.0])
    with pytest.raises(SolverError) as info, np.errstate(over="ignore", invalid="ignore"):
        odeplug.odeint(_blow_up, np.array([1.0]), t)
    error = info.value
    assert error.reason in ("non_finite", "step_size_underflow", "max_num_steps")
    assert 0.9 < error.t < 1.01  # the numerical solution blows up just past t = 1
    assert f"{error.t:.4g}"[:3] in str(error)
    np.testing.assert_allclose(error.ts, t[:3])
    np.testing.assert_allclose(error.ys[:, 0], 1.0 / (1.0 - t[:3]), rtol=1e-5)


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
