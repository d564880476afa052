"""One suite for ``odeplug.odeint`` on every engine: accuracy against exact solutions,
agreement of step counts, gradients against finite differences and backprop, errors."""

from __future__ import annotations

import numpy as np
import pytest

import odeplug
from odeplug import SolverError
from odeplug._solver_options import make_solve_config
from tests.problems import ACCURACY_PROBLEMS, CUBIC, DECAY, OSCILLATOR

ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]


def solve(engine, problem, *, dtype=np.float64, t=None, **kwargs):
    t = problem.t if t is None else t
    return odeplug.odeint(
        problem.func, engine.asarray(problem.y0, dtype), engine.asarray(t),
        engine.tree(problem.args, dtype), **kwargs,
    )


def skip_if_lacking(engine, solver):
    if engine.name == "torch" and solver == "tsit5":
        with pytest.raises(ValueError, match="dopri5"):
            solve(engine, DECAY, solver=solver)
        pytest.skip("torchdiffeq has no tsit5 (the error names the solvers it has)")


@pytest.mark.parametrize("solver", ADAPTIVE)
@pytest.mark.parametrize("problem", ACCURACY_PROBLEMS, ids=lambda p: p.name)
def test_adaptive_solution_within_tolerance(engine, problem, solver):
    skip_if_lacking(engine, solver)
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


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun", "rk4"])
def test_fixed_step_matches_reference_engine(engine, solver):
    """Same tableau, same grid: every engine computes the same numbers."""
    t = np.linspace(0.0, 2.0, 5)  # outputs on the grid of step 0.05
    ref = odeplug.odeint(OSCILLATOR.func, OSCILLATOR.y0, t, OSCILLATOR.args, solver=solver,
                         step_size=0.05, backend="reference")
    ys = engine.numpy(solve(engine, OSCILLATOR, t=t, solver=solver, step_size=0.05))
    np.testing.assert_allclose(ys, ref, rtol=1e-12, atol=1e-12)


def test_fixed_step_last_step_ends_on_t1(engine):
    # 1.0 / 0.3 is not an integer: the last step is shortened to end exactly at t1.
    t = np.array([0.0, 1.0])
    ys, stats = solve(engine, DECAY, t=t, solver="rk4", step_size=0.3, return_stats=True)
    assert int(stats.n_steps) == 4
    np.testing.assert_allclose(engine.numpy(ys)[-1], DECAY.solution(t)[-1], rtol=1e-4)


def test_dopri5_step_counts_agree_across_engines(engine):
    kwargs = dict(solver="dopri5", rtol=1e-6, atol=1e-8)
    ref_stats = solve(engine.__class__("reference"), OSCILLATOR, return_stats=True,
                      **kwargs)[1]
    _, stats = solve(engine, OSCILLATOR, return_stats=True, **kwargs)
    assert abs(int(stats.n_steps) - ref_stats.n_steps) <= 0.1 * ref_stats.n_steps
    assert int(stats.nfe_forward) > 0


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
    (np.array([0.0]), "at least two"),
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


def test_step_budget_exceeded_says_time_reached(engine):
    with pytest.raises(SolverError, match="max_num_steps=5 exceeded at t=") as info:
        solve(engine, OSCILLATOR, rtol=1e-10, atol=1e-12, max_num_steps=5)
    assert info.value.reason == "max_num_steps"
    assert 0.0 < info.value.t < OSCILLATOR.t[-1]


def test_unknown_backend():
    with pytest.raises(ValueError, match="registered backends: .*reference"):
        odeplug.odeint(DECAY.func, DECAY.y0, DECAY.t, DECAY.args, backend="nope")


def test_dispatch_by_array_type(engine):
    ys = solve(engine, DECAY)
    assert type(ys).__module__.split(".")[0] == type(engine.asarray(DECAY.y0)).__module__.split(
        ".")[0]
