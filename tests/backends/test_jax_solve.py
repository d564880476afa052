"""The JAX engine beyond the shared suite: transformations (jit, grad, vmap), float32,
agreement with the reference engine (tableaus, steps, dense output, NFE forward and
backward, errors), the NFE formula, traced tolerances (one trace for any values),
counts and codes under jit (the adjoint's through a probe), Constant and the adjoint's
channels, failed backward solves, row-wise solves with per-row times."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import odeplug
from odeplug import SolverError
from tests.problems import CUBIC, DECAY, OSCILLATOR

pytest.importorskip("diffrax")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

# float64 comparisons with the reference engine: x64 for this module's tests only.
pytestmark = pytest.mark.usefixtures("jax_x64")

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


def test_max_steps_under_jit_is_a_runtime_error():
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


# ------------------------------------------------------------- solvers and dense output


@pytest.mark.parametrize("solver", ADAPTIVE + FIXED)
def test_solvers_are_odeplugs_tableaus_in_diffrax(solver):
    """Each solver is a diffrax.AbstractERK whose tableau is odeplug's (plus, when the
    method lacks one, the first-same-as-last stage f(t1, y1))."""
    import diffrax
    from odeplug_backends.jax._solver import SOLVERS

    from odeplug._tableaus import TABLEAUS

    method, tab = SOLVERS[solver], TABLEAUS[solver]
    assert isinstance(method, diffrax.AbstractERK) and method.tableau.fsal
    extra = 0 if tab.fsal else 1
    assert method.tableau.num_stages == tab.n_stages + extra
    np.testing.assert_array_equal(method.tableau.b_sol[: tab.n_stages], tab.b)
    np.testing.assert_array_equal(method.tableau.c, (tab.c + (1.0,) * extra)[1:])
    for row, want in zip(method.tableau.a_lower, tab.a[1:], strict=False):
        np.testing.assert_array_equal(row, want)
    assert method.order(None) == tab.order


@pytest.mark.parametrize("solver, atol", [("bosh3", 1e-13), ("dopri5", 1e-13),
                                          ("tsit5", 1e-13), ("dopri8", 1e-11)])
def test_dense_output_is_the_reference_engines(solver, atol):
    """57 outputs inside 12 to 420 steps: with the same steps, the same polynomials.
    (dopri8's extension has coefficients near 100 that cancel: its rounding grows.)"""
    t = np.linspace(0.0, 5.0, 57)
    kwargs = dict(solver=solver, rtol=1e-6, atol=1e-8, return_stats=True)
    ys, stats = solve(OSCILLATOR, t=t, **kwargs)
    ys_ref, stats_ref = reference(OSCILLATOR, t=t, **kwargs)
    assert (stats.n_steps, stats.n_rejected) == (stats_ref.n_steps, stats_ref.n_rejected)
    np.testing.assert_allclose(ys, ys_ref, rtol=0, atol=atol)


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_nfe_is_the_reference_engines(solver):
    # f(t0, y0) once (shared by Hairer's step and the solver's first stage), then the
    # stages of each step: the reference's count exactly.
    kwargs = dict(solver=solver, rtol=1e-6, atol=1e-8, return_stats=True)
    stats, stats_ref = solve(OSCILLATOR, **kwargs)[1], reference(OSCILLATOR, **kwargs)[1]
    assert stats.nfe_forward == stats_ref.nfe_forward


def test_hand_written_diffeqsolve_takes_odeints_steps():
    """diffeqsolve_arguments: diffrax with odeplug's solver and controller (dt0=None:
    the controller starts from Hairer's step) takes the same steps; one evaluation more
    (f(t0, y0) is not shared between the initial step and the solver)."""
    import diffrax
    from odeplug_backends.jax.solve import diffeqsolve_arguments

    from odeplug._solver_options import make_solve_config

    config = make_solve_config("tsit5", rtol=1e-7, atol=1e-9)
    ys, stats = solve(OSCILLATOR, solver="tsit5", rtol=1e-7, atol=1e-9, return_stats=True)
    t = jnp.asarray(OSCILLATOR.t)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(OSCILLATOR.func), t0=t[0], t1=t[-1], dt0=None,
        y0=jnp.asarray(OSCILLATOR.y0), args=jax_args(OSCILLATOR),
        saveat=diffrax.SaveAt(ts=t), **diffeqsolve_arguments(config))
    assert int(sol.stats["num_accepted_steps"]) == stats.n_steps
    assert int(sol.stats["num_rejected_steps"]) == stats.n_rejected
    np.testing.assert_allclose(sol.ys, ys, rtol=0, atol=1e-14)


# ----------------------------------------------------------------- traced tolerances


def _traced_solver(problem, config, counter):
    from odeplug_backends.jax.solve import odeint_traced, split_config

    static, _ = split_config(config)

    @jax.jit
    def run(y0, args, values):
        counter.append(None)  # runs once per trace
        ys, info = odeint_traced(problem.func, y0, jnp.asarray(problem.t), args, static,
                                 values)
        return ys, info

    return run


@pytest.mark.parametrize("configs", [
    [dict(solver="dopri5", rtol=1e-5, atol=1e-7), dict(solver="dopri5", rtol=1e-9,
                                                       atol=1e-11)],
    [dict(solver="rk4", step_size=0.1), dict(solver="rk4", step_size=0.01)],
], ids=["tolerances", "step_size"])
def test_changing_values_does_not_retrace(configs):
    from odeplug_backends.jax.solve import split_config

    from odeplug._solver_options import make_solve_config

    configs = [make_solve_config(**c) for c in configs]
    assert split_config(configs[0])[0] == split_config(configs[1])[0]
    traces = []
    run = _traced_solver(OSCILLATOR, configs[0], traces)
    results = []
    for config in configs:
        values = split_config(config)[1]
        ys, info = run(jnp.asarray(OSCILLATOR.y0), jax_args(OSCILLATOR), values)
        ys_ref, stats_ref = reference(OSCILLATOR, **_config_kwargs(config),
                                      return_stats=True)
        np.testing.assert_allclose(ys, ys_ref, atol=1e-9)
        assert int(info.n_steps) == stats_ref.n_steps
        results.append(int(info.n_steps))
    assert len(traces) == 1  # one trace, hence one compilation, for both
    assert results[0] != results[1]


def _config_kwargs(config):
    if config.adaptive:
        return dict(solver=config.solver, rtol=config.rtol, atol=config.atol)
    return dict(solver=config.solver, step_size=config.step_size)


def test_static_part_is_a_hashable_key_of_what_changes_the_computation():
    from odeplug_backends.jax.solve import split_config

    from odeplug._solver_options import make_solve_config

    def key(**kwargs):
        return split_config(make_solve_config(**kwargs))[0]

    assert key(rtol=1e-3) == key(rtol=1e-6) and hash(key(rtol=1e-3)) == hash(key())
    assert key(adjoint=odeplug.BacksolveAdjoint(rtol=1e-3)) == key(adjoint=True)
    different = [key(), key(solver="tsit5"), key(adjoint=True),
                 key(adjoint=odeplug.BacksolveAdjoint(seminorm=True)), key(max_num_steps=9),
                 key(options={"first_step": 0.1}), key(options={"safety": 0.8}),
                 key(solver="rk4", step_size=0.1)]
    assert len(set(different)) == len(different)
    static, values = split_config(make_solve_config(
        rtol=1e-4, atol=1e-6, adjoint=odeplug.BacksolveAdjoint(rtol=1e-2)))
    assert (values.rtol, values.atol, values.adjoint_rtol, values.adjoint_atol) == (
        1e-4, 1e-6, 1e-2, 1e-6)
    assert np.isnan(values.step_size) and np.isnan(values.first_step)


def test_controller_constants_come_from_the_config_alone():
    """The PI controller's constants have one home, ``ODESolveConfig``: the engine's
    static part and its controller take them from there and hold no defaults."""
    from odeplug_backends.jax._controller import Norm, PIController, controller
    from odeplug_backends.jax.solve import SolveStatic, split_config

    from odeplug._solver_options import ODESolveConfig, make_solve_config

    names = ("safety", "factormin", "factormax", "pcoeff", "icoeff")
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(SolveStatic))
    with pytest.raises(TypeError):
        PIController(rtol=1e-6, atol=1e-8, norm=Norm(), order=5)
    defaults = ODESolveConfig()
    made = controller(split_config(make_solve_config())[0], 1e-6, 1e-8, Norm())
    assert [getattr(made, n) for n in names] == [getattr(defaults, n) for n in names]
    options = {"safety": 0.8, "factormin": 0.3, "factormax": 5.0, "pcoeff": 0.2,
               "icoeff": 0.5}
    made = controller(split_config(make_solve_config(options=options))[0], 1e-6, 1e-8,
                      Norm())
    assert {n: getattr(made, n) for n in names} == options


def _training_step(problem, config, t=None, argnums=(0, 1)):
    """A jitted ``(args, y0, t, values) -> (loss, info, grads, backward info)``."""
    from odeplug_backends.jax.solve import (
        backward_info,
        backward_probe,
        odeint_traced,
        split_config,
    )

    static, _ = split_config(config)

    @jax.jit
    def step(args, y0, t, values):
        def loss(args, probe, y0, t):
            ys, info = odeint_traced(problem.func, y0, t, args, static, values,
                                     probe=probe)
            return jnp.sum(ys[1:] ** 2), info

        (value, info), grads = jax.value_and_grad(loss, argnums=argnums, has_aux=True)(
            args, backward_probe(y0.dtype), y0, t)
        return value, info, grads, backward_info(grads[1])

    return step


def test_training_step_reads_forward_and_backward_counts_and_codes_under_jit():
    from odeplug_backends.jax.solve import split_config

    from odeplug._solver_options import make_solve_config

    config = make_solve_config(rtol=1e-8, atol=1e-10, adjoint=True)
    step = _training_step(CUBIC, config)
    value, info, grads, backward = step(jax_args(CUBIC), jnp.asarray(CUBIC.y0),
                                        jnp.asarray(CUBIC.t), split_config(config)[1])
    _, stats = solve(CUBIC, rtol=1e-8, atol=1e-10, return_stats=True)
    assert [int(x) for x in (info.nfe_forward, info.n_steps, info.n_rejected, info.code)] \
        == [stats.nfe_forward, stats.n_steps, stats.n_rejected, 0]
    assert int(backward.code) == 0 and np.isnan(backward.t_reached)

    # The reference engine's count of the backward pass (d/dargs only: no time gradient).
    import autograd

    holder = {}

    def reference_loss(args):
        ys, holder["stats"] = odeplug.odeint(CUBIC.func, CUBIC.y0, CUBIC.t, args,
                                             rtol=1e-8, atol=1e-10, adjoint=True,
                                             return_stats=True)
        return (ys[1:] ** 2).sum()

    want = autograd.grad(reference_loss)(CUBIC.args)
    assert int(backward.nfe_backward) == holder["stats"].nfe_backward
    for key in want:
        np.testing.assert_allclose(grads[0][key], want[key], rtol=1e-7)


def test_backward_nfe_counts_every_evaluation():
    """Every evaluation of the field after the forward solve is in nfe_backward: one
    VJP per augmented evaluation, and one evaluation more for d/dt0 (the other times'
    derivatives use the augmented field's first block)."""
    from odeplug_backends.jax.solve import split_config

    from odeplug._solver_options import make_solve_config

    calls = []

    def field(t, y, args):
        jax.debug.callback(lambda: calls.append(None))
        return CUBIC.func(t, y, args)

    problem = dataclasses.replace(CUBIC, func=field)
    config = make_solve_config(solver="bosh3", rtol=1e-7, atol=1e-9, adjoint=True)
    counts = {}
    for argnums in [(0, 1), (0, 1, 3)]:
        calls.clear()
        _, info, grads, backward = _training_step(problem, config, argnums=argnums)(
            jax_args(CUBIC), jnp.asarray(CUBIC.y0), jnp.asarray(CUBIC.t),
            split_config(config)[1])
        jax.effects_barrier()
        assert len(calls) == int(info.nfe_forward) + int(backward.nfe_backward) > 0
        counts[argnums] = int(backward.nfe_backward)
    assert np.all(np.asarray(grads[2]) != 0)  # d/dt, every time
    assert counts[(0, 1, 3)] == counts[(0, 1)] + 1


def test_seminorm_leaves_the_parameter_channels_out_of_the_error():
    # The reference engine's backward counts, full norm and seminorm (fewer steps).
    import autograd
    from odeplug_backends.jax.solve import split_config

    from odeplug._solver_options import make_solve_config

    counts = {}
    for seminorm in (False, True):
        strategy = odeplug.BacksolveAdjoint(seminorm=seminorm)
        config = make_solve_config(rtol=1e-8, atol=1e-10, adjoint=strategy)
        _, _, _, backward = _training_step(CUBIC, config)(
            jax_args(CUBIC), jnp.asarray(CUBIC.y0), jnp.asarray(CUBIC.t),
            split_config(config)[1])
        holder = {}

        def reference_loss(args, strategy=strategy, holder=holder):
            ys, holder["stats"] = odeplug.odeint(CUBIC.func, CUBIC.y0, CUBIC.t, args,
                                                 rtol=1e-8, atol=1e-10, adjoint=strategy,
                                                 return_stats=True)
            return (ys[1:] ** 2).sum()

        autograd.grad(reference_loss)(CUBIC.args)
        counts[seminorm] = int(backward.nfe_backward)
        assert counts[seminorm] == holder["stats"].nfe_backward
    assert counts[True] < counts[False]


# ------------------------------------------------------------------ Constant, channels


def _shapes(jaxpr) -> set:
    """Shapes of every value computed in a jaxpr, nested jaxprs included."""
    found = set()
    for eqn in jaxpr.eqns:
        found.update(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    found |= _shapes(sub)
    return found


def _noisy_field(t, y, args):
    return jnp.tanh(args["W"] @ y) + args["noise"]


def _noisy_loss(adjoint, wrap=True):
    def loss(W, noise, y0):
        noise = odeplug.Constant(noise) if wrap else noise
        ys = odeplug.odeint(_noisy_field, y0, jnp.array([0.0, 0.5, 1.0]),
                            {"W": W, "noise": noise}, adjoint=adjoint, rtol=1e-10,
                            atol=1e-12)
        return jnp.sum(ys[1:] ** 2)

    return loss


def _noisy():
    """W, noise, y0 in float64: made in the test, where x64 is on."""
    return (jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)) / 2),
            jnp.asarray(np.random.default_rng(1).normal(size=(4, 7)) / 4),
            jnp.asarray(np.random.default_rng(2).normal(size=(4, 7))))


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_constant_gets_no_gradient_and_the_field_gets_its_value(adjoint):
    W, noise, y0 = _noisy()
    grads = jax.jit(jax.grad(_noisy_loss(adjoint), argnums=(0, 1)))(W, noise, y0)
    plain = jax.jit(jax.grad(_noisy_loss(adjoint, wrap=False), argnums=(0, 1)))(W, noise, y0)
    np.testing.assert_array_equal(grads[1], 0.0)
    assert np.all(np.asarray(plain[1]) != 0)  # the noise does matter
    np.testing.assert_allclose(grads[0], plain[0], rtol=1e-8)  # the field saw its value


def test_constants_and_inputs_not_differentiated_cost_no_adjoint_channel():
    """The backward solve's state is [y, a, a_theta] over the differentiated inputs
    only: 28 + 28 + 16 entries for d/dW, 28 + 28 for d/dy0; 28 more if the noise,
    or W when not differentiated, were integrated."""
    W, noise, y0 = _noisy()
    n = y0.size  # 28
    for argnums, size, absent in [(0, 2 * n + W.size, 2 * n + W.size + noise.size),
                                  (2, 2 * n, 2 * n + W.size)]:
        jaxpr = jax.make_jaxpr(jax.grad(_noisy_loss(True), argnums=argnums))(W, noise, y0)
        shapes = _shapes(jaxpr.jaxpr)
        assert (size,) in shapes and (absent,) not in shapes, argnums
    plain = jax.make_jaxpr(jax.grad(_noisy_loss(True, wrap=False), argnums=(0, 1)))(
        W, noise, y0)
    assert (2 * n + W.size + noise.size,) in _shapes(plain.jaxpr)  # what Constant spares


def test_adjoint_gradient_of_a_field_closing_over_a_traced_value():
    # The field closes over W (a tracer of grad): the adjoint differentiates it too.
    W, noise, y0 = _noisy()

    def loss(W, adjoint):
        field = lambda t, y, args: jnp.tanh(W @ y) + args  # noqa: E731
        ys = odeplug.odeint(field, y0, jnp.array([0.0, 1.0]), noise, adjoint=adjoint,
                            rtol=1e-10, atol=1e-12)
        return jnp.sum(ys[-1] ** 2)

    got = jax.grad(loss)(W, True)
    np.testing.assert_allclose(got, jax.grad(loss)(W, False), rtol=1e-7)


# ---------------------------------------------------------------- backward failures


def test_failed_backward_solve_is_reported_not_raised_under_jit():
    from odeplug_backends.jax.solve import backward_solver_error, split_config

    from odeplug._solver_options import make_solve_config

    # A loose forward solve, a backward one far too tight for the step budget.
    config = make_solve_config(rtol=1e-4, atol=1e-6, max_num_steps=40,
                               adjoint=odeplug.BacksolveAdjoint(rtol=1e-12, atol=1e-14))
    static, values = split_config(config)
    _, info, _, backward = _training_step(OSCILLATOR, config)(
        jax_args(OSCILLATOR), jnp.asarray(OSCILLATOR.y0), jnp.asarray(OSCILLATOR.t), values)
    assert int(info.code) == 0
    assert int(backward.code) == 1  # max_num_steps
    t_failed = float(backward.t_reached)
    assert OSCILLATOR.t[-2] < t_failed < OSCILLATOR.t[-1]  # in the first interval
    error = backward_solver_error(jax.device_get(backward), static)
    assert error.reason == "max_num_steps" and error.t == t_failed
    assert "max_num_steps=40 exceeded at t=" in str(error)


def test_failed_backward_solve_raises_from_odeint_under_grad():
    def loss(args):
        ys = odeplug.odeint(OSCILLATOR.func, jnp.asarray(OSCILLATOR.y0),
                            jnp.asarray(OSCILLATOR.t), args, rtol=1e-4, atol=1e-6,
                            max_num_steps=40,
                            adjoint=odeplug.BacksolveAdjoint(rtol=1e-12, atol=1e-14))
        return jnp.sum(ys**2)

    with pytest.raises(Exception, match="backward solve: max_num_steps=40 exceeded"):
        jax.block_until_ready(jax.jit(jax.grad(loss))(jax_args(OSCILLATOR)))


def test_non_finite_vector_jacobian_product_is_a_non_finite_backward_solve():
    from odeplug_backends.jax.solve import split_config

    from odeplug._solver_options import make_solve_config

    @jax.custom_jvp
    def poisoned(y):
        return y

    @poisoned.defjvp
    def _(primals, tangents):
        return primals[0], tangents[0] * jnp.nan

    problem = dataclasses.replace(DECAY, func=lambda t, y, args: -args["k"] * poisoned(y))
    config = make_solve_config(rtol=1e-6, atol=1e-8, adjoint=True)
    _, info, _, backward = _training_step(problem, config)(
        jax_args(DECAY), jnp.asarray(DECAY.y0), jnp.asarray(DECAY.t),
        split_config(config)[1])
    assert int(info.code) == 0 and int(backward.code) == 3  # non_finite
    assert float(backward.t_reached) == DECAY.t[-1]  # no step taken


# ------------------------------------------------------------------------- row solves


def _rows(y0s, t, config, func=CUBIC.func, args=None):
    from odeplug_backends.jax.solve import odeint_rows_traced, split_config

    static, values = split_config(config)
    args = jax_args(CUBIC) if args is None else args
    return jax.jit(lambda y0s, t: odeint_rows_traced(func, y0s, t, args, static, values))(
        jnp.asarray(y0s), jnp.asarray(t))


ROWS = np.array([[1.0, -0.5], [3.0, 2.0], [-0.2, 0.1], [2.5, -2.5]])


def test_rows_are_solved_alone():
    from odeplug._solver_options import make_solve_config

    config = make_solve_config(rtol=1e-8, atol=1e-10)
    ys, info = _rows(ROWS, CUBIC.t, config)
    assert ys.shape == (len(CUBIC.t),) + ROWS.shape and info.code.shape == (4,)
    np.testing.assert_array_equal(info.code, 0)
    for i, row in enumerate(ROWS):
        alone, stats = odeplug.odeint(CUBIC.func, jnp.asarray(row[None]),
                                      jnp.asarray(CUBIC.t), jax_args(CUBIC), rtol=1e-8,
                                      atol=1e-10, return_stats=True)
        np.testing.assert_allclose(ys[:, i], alone[:, 0], rtol=1e-13, atol=1e-13)
        assert int(info.nfe_forward[i]) == stats.nfe_forward
        assert int(info.n_steps[i]) == stats.n_steps
    assert len(set(np.asarray(info.n_steps).tolist())) > 1


def test_rows_with_their_own_nan_padded_times():
    from odeplug._solver_options import make_solve_config

    config = make_solve_config(rtol=1e-8, atol=1e-10)
    nan = np.nan
    t = np.array([[0.0, 0.3, 1.0, 2.0], [0.0, 0.5, nan, nan], [0.2, 0.4, 0.6, nan],
                  [-1.0, 1.5, 1.7, 1.9]])
    ys, info = _rows(ROWS, t, config)
    np.testing.assert_array_equal(info.code, 0)
    for i, row in enumerate(ROWS):
        valid = ~np.isnan(t[i])
        alone, stats = odeplug.odeint(
            CUBIC.func, jnp.asarray(row[None]), jnp.asarray(t[i][valid]), jax_args(CUBIC),
            rtol=1e-8, atol=1e-10, return_stats=True)
        np.testing.assert_allclose(ys[valid, i], alone[:, 0], rtol=1e-13, atol=1e-13)
        assert np.all(np.isnan(ys[~valid, i]))
        assert int(info.n_steps[i]) == stats.n_steps
        assert int(info.n_outputs[i]) == valid.sum()


def test_failed_row_raises_odeints_error_on_that_row_alone():
    from odeplug_backends.jax.solve import row_solver_error, split_config

    from odeplug._solver_options import make_solve_config

    # dy/dt = y**2 blows up at t = 1 / y0: the row starting at 1 fails near t = 1.
    config = make_solve_config(rtol=1e-6, atol=1e-8)
    t = np.array([0.0, 0.5, 0.9, 2.0])
    y0s = np.array([[0.1], [1.0], [0.2]])
    square = lambda t, y, args: y**2  # noqa: E731
    ys, info = _rows(y0s, t, config, func=square, args=())
    assert np.asarray(info.code).tolist() == [0, 2, 0]
    error = row_solver_error(t, ys, jax.device_get(info), 1, split_config(config)[0],
                             "row 1: ")
    with pytest.raises(SolverError) as alone:
        odeplug.odeint(square, jnp.array([[1.0]]), jnp.asarray(t), rtol=1e-6, atol=1e-8)
    assert str(error) == "row 1: " + str(alone.value)
    assert error.reason == alone.value.reason == "step_size_underflow"
    assert error.t == alone.value.t and abs(error.t - 1.0) < 1e-3
    np.testing.assert_array_equal(error.ts, alone.value.ts)
    # The row's program and the single solve's are compiled apart: optimised XLA may
    # contract them differently (an FMA), by an ulp of the state.
    np.testing.assert_allclose(error.ys, alone.value.ys, rtol=4 * np.finfo(float).eps,
                               atol=0)


# -------------------------------------------------------- failures read the same


def _reference_error(func, y0, t, **kwargs):
    with pytest.raises(SolverError) as info, np.errstate(all="ignore"):
        odeplug.odeint(func, np.asarray(y0), np.asarray(t), backend="reference", **kwargs)
    return info.value


def _jax_error(func, y0, t, **kwargs):
    with pytest.raises(SolverError) as info:
        odeplug.odeint(func, jnp.asarray(y0), jnp.asarray(t), **kwargs)
    return info.value


@pytest.mark.parametrize("kwargs", [dict(), dict(solver="rk4", step_size=0.1)],
                         ids=["dopri5", "rk4"])
def test_nan_field_is_non_finite_at_the_reference_time(kwargs):
    t = np.array([0.0, 0.5, 0.9, 2.0])
    error = _jax_error(lambda t, y, a: jnp.where(t > 0.7, jnp.nan, -y), [1.0], t, **kwargs)
    want = _reference_error(lambda t, y, a: np.where(t > 0.7, np.nan, -y), [1.0], t,
                            **kwargs)
    assert error.reason == want.reason == "non_finite"
    assert error.t == pytest.approx(want.t, abs=1e-12)
    np.testing.assert_array_equal(error.ts, want.ts)
    np.testing.assert_allclose(error.ys, want.ys, rtol=1e-12)
    assert str(error).startswith("non-finite state at t=0.7 (solving from 0 to 2)")


def test_nan_field_from_the_start_is_non_finite():
    # (The reference engine spends its step budget there: its first step is NaN.)
    error = _jax_error(lambda t, y, a: y * jnp.nan, [1.0], [0.0, 1.0])
    assert error.reason == "non_finite" and error.t == 0.0
    assert str(error) == "non-finite state at t=0 (solving from 0 to 1)"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blow_up_is_the_reference_engines_step_size_underflow(dtype):
    t = np.array([0.0, 0.5, 0.9, 2.0])
    y0 = np.array([1.0], dtype)
    error = _jax_error(lambda t, y, a: y**2, y0, t)
    want = _reference_error(lambda t, y, a: y**2, y0, t)
    assert error.reason == want.reason == "step_size_underflow"
    # float32 times resolve steps down to float32's epsilon only: they stop earlier.
    assert abs(error.t - want.t) < (1e-7 if dtype == np.float64 else 1e-5)
    t_text = "1" if dtype == np.float64 else f"{error.t:.6g}"
    assert str(error) == f"step size underflow at t={t_text} (solving from 0 to 2)"
    np.testing.assert_array_equal(error.ts, [0.0, 0.5, 0.9])
    np.testing.assert_allclose(error.ys, want.ys, rtol=1e-6 if dtype == np.float64 else 1e-5)


def test_step_budget_reads_as_on_the_reference_engine():
    kwargs = dict(rtol=1e-10, atol=1e-12, max_num_steps=20)
    error = _jax_error(OSCILLATOR.func, OSCILLATOR.y0, OSCILLATOR.t,
                       args=jax_args(OSCILLATOR), **kwargs)
    want = _reference_error(OSCILLATOR.func, OSCILLATOR.y0, OSCILLATOR.t,
                            args=OSCILLATOR.args, **kwargs)
    assert error.reason == want.reason == "max_num_steps"
    # The same steps, up to rounding: the first step's error estimate is at the
    # rounding level of y (1e-16), so its rounding moves the next steps by 1e-6.
    assert error.t == pytest.approx(want.t, rel=1e-5)
    assert str(error) == f"max_num_steps=20 exceeded at t={error.t:.6g} (solving from 0 to 5)"
    assert str(want) == f"max_num_steps=20 exceeded at t={want.t:.6g} (solving from 0 to 5)"
    np.testing.assert_array_equal(error.ts, want.ts)
    np.testing.assert_allclose(error.ys, want.ys, rtol=1e-9, atol=1e-12)
