"""The JAX engine beyond the shared suite: transformations (jit, grad, vmap), float32,
agreement with the reference engine (steps, dense output, errors), the NFE formula."""

from __future__ import annotations

import numpy as np
import pytest

import odeplug
from odeplug import SolverError
from tests.problems import CUBIC, DECAY, OSCILLATOR

pytest.importorskip("diffrax")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]
FIXED = ["euler", "midpoint", "heun", "rk4"]


def jax_args(problem, dtype=np.float64):
    return {key: jnp.asarray(value, dtype) for key, value in problem.args.items()}


def solve(problem, t=None, dtype=np.float64, **kwargs):
    t = problem.t if t is None else t
    return odeplug.odeint(problem.func, jnp.asarray(problem.y0, dtype), jnp.asarray(t),
                          jax_args(problem, dtype), **kwargs)


def reference(problem, t=None, **kwargs):
    t = problem.t if t is None else t
    return odeplug.odeint(problem.func, problem.y0, t, problem.args, backend="reference",
                          **kwargs)


# ------------------------------------------------------------------ transformations


def test_inside_jit_same_solution_and_stats():
    kwargs = dict(solver="tsit5", rtol=1e-8, atol=1e-10)
    ys, stats = solve(OSCILLATOR, return_stats=True, **kwargs)

    @jax.jit
    def run(y0, args):
        ys, stats = odeplug.odeint(OSCILLATOR.func, y0, jnp.asarray(OSCILLATOR.t), args,
                                   return_stats=True, **kwargs)
        return ys, stats.nfe_forward, stats.n_steps, stats.n_rejected

    ys_jit, *counts = run(jnp.asarray(OSCILLATOR.y0), jax_args(OSCILLATOR))
    np.testing.assert_allclose(ys_jit, ys, rtol=1e-13, atol=1e-13)
    assert [int(c) for c in counts] == [stats.nfe_forward, stats.n_steps, stats.n_rejected]
    assert isinstance(stats.nfe_forward, int)


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_jitted_gradient_matches_reference_engine(adjoint):
    def loss(y0, args, t1):
        t = jnp.concatenate([jnp.array([0.0, 0.5]), t1[None]])
        return (odeplug.odeint(CUBIC.func, y0, t, args, adjoint=adjoint, rtol=1e-10,
                               atol=1e-12) ** 2).sum()

    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        jnp.asarray(CUBIC.y0), jax_args(CUBIC), jnp.asarray(1.0))

    import autograd
    import autograd.numpy as anp

    def reference_loss(inputs):
        y0, args, t1 = inputs
        t = anp.concatenate([np.array([0.0, 0.5]), anp.reshape(t1, (1,))])
        return (odeplug.odeint(CUBIC.func, y0, t, args, adjoint=adjoint, rtol=1e-10,
                               atol=1e-12) ** 2).sum()

    want = autograd.grad(reference_loss)((CUBIC.y0, CUBIC.args, 1.0))
    for key in ("A", "b"):
        np.testing.assert_allclose(got[1][key], want[1][key], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("solver, adjoint", [("dopri5", False), ("dopri5", True),
                                             ("rk4", True)])
def test_gradient_wrt_every_time_decreasing(solver, adjoint):
    """d/dt_i for every output time of a decreasing grid, against central differences
    (with the adjoint, diffrax gives none: odeint adds them)."""
    t = np.array([1.0, 0.7, 0.2, 0.0])
    y_end = jnp.asarray(OSCILLATOR.solution(t)[0])
    kwargs = dict(rtol=1e-10, atol=1e-12) if solver == "dopri5" else dict(step_size=0.01)

    @jax.jit
    def loss(t):
        ys = odeplug.odeint(OSCILLATOR.func, y_end, t, jax_args(OSCILLATOR),
                            solver=solver, adjoint=adjoint, **kwargs)
        return (ys[1:, 0] * jnp.arange(1.0, 4.0)).sum() + ys[-1, 1] ** 2

    got = jax.jit(jax.grad(loss))(jnp.asarray(t))
    h = 1e-6
    want = [(loss(jnp.asarray(t + h * e)) - loss(jnp.asarray(t - h * e))) / (2 * h)
            for e in np.eye(t.size)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_vmap_matches_separate_solves():
    y0s = jnp.asarray(np.stack([CUBIC.y0, -2 * CUBIC.y0, 0.5 * CUBIC.y0]))
    t, args = jnp.asarray(CUBIC.t), jax_args(CUBIC)
    batched = jax.vmap(lambda y0: odeplug.odeint(CUBIC.func, y0, t, args))(y0s)
    for y0, ys in zip(y0s, batched, strict=True):
        np.testing.assert_allclose(ys, odeplug.odeint(CUBIC.func, y0, t, args), rtol=1e-12)


def test_max_steps_under_jit_is_diffrax_runtime_error():
    run = jax.jit(lambda y0: solve(OSCILLATOR, rtol=1e-10, atol=1e-12, max_num_steps=5))
    with pytest.raises(Exception, match="max_num_steps=5 exceeded"):
        jax.block_until_ready(run(jnp.asarray(OSCILLATOR.y0)))


def test_field_checks_under_jit():
    y0 = jnp.asarray(DECAY.y0, jnp.float32)
    with pytest.raises(TypeError, match="mismatched dtypes"):
        jax.jit(lambda y0: odeplug.odeint(DECAY.func, y0, DECAY.t, jax_args(DECAY)))(y0)
    with pytest.raises(ValueError, match="shape"):
        jax.jit(lambda y0: odeplug.odeint(lambda t, y, a: y[:2], y0, DECAY.t))(y0)


# ------------------------------------------------------------------ float32, solvers


@pytest.mark.parametrize("solver, kwargs", [("tsit5", dict(rtol=1e-5, atol=1e-7)),
                                            ("rk4", dict(step_size=0.01))])
def test_float32_state_stays_float32(solver, kwargs):
    y0, args = jnp.asarray(OSCILLATOR.y0, jnp.float32), jax_args(OSCILLATOR, np.float32)
    ys = odeplug.odeint(OSCILLATOR.func, y0, OSCILLATOR.t, args, solver=solver, **kwargs)
    assert ys.dtype == jnp.float32
    np.testing.assert_allclose(ys, OSCILLATOR.solution(), atol=2e-3)


def test_float32_adjoint_gradient_stays_float32():
    y0, args = jnp.asarray(OSCILLATOR.y0, jnp.float32), jax_args(OSCILLATOR, np.float32)

    def loss(y0, t):
        return odeplug.odeint(OSCILLATOR.func, y0, t, args, solver="tsit5", rtol=1e-5,
                              atol=1e-7, adjoint=True).sum()

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(y0, jnp.asarray(OSCILLATOR.t, jnp.float32))
    assert [g.dtype for g in grads] == [jnp.float32, jnp.float32]
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_steps_match_reference_engine(solver):
    """Same controller (PI, order exponent, Hairer's first step): the same steps."""
    kwargs = dict(solver=solver, rtol=1e-6, atol=1e-8, return_stats=True)
    ys, stats = solve(OSCILLATOR, **kwargs)
    ys_ref, stats_ref = reference(OSCILLATOR, **kwargs)
    assert abs(stats.n_steps - stats_ref.n_steps) <= 1
    assert abs(stats.n_rejected - stats_ref.n_rejected) <= 1
    np.testing.assert_allclose(ys, ys_ref, atol=1e-10)


def test_rk4_is_fourth_order():
    t = np.array([0.0, 2.0])
    errors = [np.abs(np.asarray(solve(OSCILLATOR, t=t, solver="rk4", step_size=h))[-1]
                     - OSCILLATOR.solution(t)[-1]).max() for h in (0.04, 0.02)]
    assert 14 < errors[0] / errors[1] < 18


@pytest.mark.parametrize("solver", FIXED)
@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing", "decreasing"])
def test_fixed_step_grid_and_dense_output_match_reference(solver, decreasing):
    # Step 0.3 does not divide the interval, and the outputs fall inside steps.
    t = np.linspace(0.0, 2.0, 8)[:: -1 if decreasing else 1]
    ys, stats = solve(OSCILLATOR, t=t, solver=solver, step_size=0.3, return_stats=True)
    ys_ref, stats_ref = reference(OSCILLATOR, t=t, solver=solver, step_size=0.3,
                                  return_stats=True)
    np.testing.assert_allclose(ys, ys_ref, rtol=1e-12, atol=1e-12)
    assert stats.n_steps == stats_ref.n_steps == 7


# -------------------------------------------------------------------------- counters


@pytest.mark.parametrize("solver, kwargs", [
    *[(solver, dict(rtol=1e-7, atol=1e-9)) for solver in ADAPTIVE],
    *[(solver, dict(step_size=0.1)) for solver in FIXED],
    # A first step far too large: rejected first steps, and no Hairer step.
    ("dopri5", dict(rtol=1e-9, atol=1e-11, options={"first_step": 2.0})),
])
def test_nfe_formula_counts_every_evaluation(solver, kwargs):
    calls = []

    def field(t, y, args):
        jax.debug.callback(lambda: calls.append(None))
        return OSCILLATOR.func(t, y, args)

    _, stats = odeplug.odeint(field, jnp.asarray(OSCILLATOR.y0), jnp.asarray(OSCILLATOR.t),
                              jax_args(OSCILLATOR), solver=solver, return_stats=True,
                              **kwargs)
    jax.effects_barrier()
    assert stats.nfe_forward == len(calls)
    assert stats.nfe_backward is None
    if "first_step" in kwargs:
        assert stats.n_rejected > 0


# ---------------------------------------------------------------------------- errors


def test_blow_up_raises_solver_error_near_singularity():
    # dy/dt = y**2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1.
    with pytest.raises(SolverError, match="at t=1") as info:
        odeplug.odeint(lambda t, y, a: y**2, jnp.array([1.0]), jnp.linspace(0.0, 2.0, 5))
    error = info.value
    assert error.reason in ("step_size_underflow", "non_finite")
    assert abs(error.t - 1.0) < 1e-3
    np.testing.assert_allclose(error.ts, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(error.ys[:2, 0], [1.0, 2.0], rtol=1e-6)


def test_fixed_step_blow_up_is_non_finite_at_the_reference_time():
    def solve_blow_up(y0, t):
        return odeplug.odeint(lambda t, y, a: y**2, y0, t, solver="rk4", step_size=0.3)

    with pytest.raises(SolverError) as info:
        solve_blow_up(jnp.array([1.0]), jnp.linspace(0.0, 2.0, 5))
    with pytest.raises(SolverError) as info_ref, np.errstate(over="ignore"):
        solve_blow_up(np.array([1.0]), np.linspace(0.0, 2.0, 5))
    assert info.value.reason == info_ref.value.reason == "non_finite"
    assert info.value.t == pytest.approx(info_ref.value.t)
    np.testing.assert_allclose(info.value.ts, info_ref.value.ts)


def test_max_num_steps_error_keeps_solution_so_far():
    with pytest.raises(SolverError, match="max_num_steps=20 exceeded") as info:
        solve(OSCILLATOR, rtol=1e-10, atol=1e-12, max_num_steps=20)
    error = info.value
    assert error.reason == "max_num_steps" and 0.0 < error.t < OSCILLATOR.t[-1]
    assert len(error.ts) == len(error.ys) >= 1 and error.ts[-1] <= error.t
    np.testing.assert_allclose(error.ys, OSCILLATOR.solution(error.ts), atol=1e-8)
