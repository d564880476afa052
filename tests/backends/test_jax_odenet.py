"""The JAX engine's ODE-Net program: the reference engine's computation on JAX.

Same initial parameters, same batch, same hyperparameters: the loss, the gradients
(Adam's first moments) and the updated parameters agree with the reference program to
the precision of the dtype; predict agrees, solves each row alone, and reports its cost
per row. A failed solve is a SolverError. The values of the ``Hyper`` (learning rate,
alpha, t1, Adam's constants) are inputs of the compiled step and predict: new values
reuse the compilation and change the results. ``evaluate`` reports the loss of a state
and changes nothing. Every distinct spec and solver (and batch size) costs an XLA
compilation of 10 to 30 s on a small CPU, so the tests share two specs and few shapes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")
pytest.importorskip("optax")

from odeplug_backends.jax import programs  # noqa: E402
from odeplug_backends.jax.nn import ACTIVATIONS  # noqa: E402

import odeplug  # noqa: E402
from odeplug import SolverError  # noqa: E402
from odeplug._solver_options import make_solve_config  # noqa: E402
from odeplug.reference.nn import activations  # noqa: E402
from tests.backends.programs import (  # noqa: E402
    assert_evaluate_keeps_state,
    assert_first_step_matches,
    make_batch,
    spec_and_hyper,
)

make_program = odeplug.get_backend("jax").make_program
reference_program = odeplug.get_backend("reference").make_program

RK4 = dict(solver="rk4", step_size=0.25)
DOPRI5 = dict(solver="dopri5", rtol=1e-5, atol=1e-7)


# The specs of the tests, with their hyperparameters (learning rate 1e-2, alpha 0.5);
# each spec and solver compiles its training step (some 15 s here) once per batch size,
# so there are two:
# fixed steps, backpropagation through the solver, float64, less common activations;
SPEC_RK4, HYPER_RK4 = spec_and_hyper(make_solve_config(**RK4), activation="softplus",
                                     field_activation="logistic", dtype="float64")
# adaptive steps, the adjoint, float32, a step budget that stiff parameters exceed.
SPEC_DOPRI5, HYPER_DOPRI5 = spec_and_hyper(
    make_solve_config(**DOPRI5, adjoint=True, max_num_steps=64), augment_dim=0,
    field_hidden=(8, 8))
HYPER = {SPEC_RK4: HYPER_RK4, SPEC_DOPRI5: HYPER_DOPRI5}


def _stiff(params, factor=30.0):
    """Parameters whose field needs far more than 64 steps."""
    return {k: v * factor if k.startswith("field.") else v for k, v in params.items()}


def _jax_snapshot(state):
    """Copies of everything a JAX training state holds: parameters, Adam's moments and
    step count."""
    opt = state["opt"]
    out = {f"param:{k}": np.array(v) for k, v in state["params"].items()}
    out.update({f"mu:{k}": np.array(v) for k, v in opt.mu.items()})
    out.update({f"nu:{k}": np.array(v) for k, v in opt.nu.items()})
    out["count"] = np.array(opt.count)
    return out


def _one_step(spec, hyper, seed=0):
    """(metrics, first moments, updated params) of one step on each engine."""
    params = spec.init_params(seed)
    batch = make_batch(dtype=spec.dtype)
    out = {}
    for name, program in (("jax", make_program(spec)), ("reference", reference_program(spec))):
        state = program.init(params)
        state, metrics = program.step(state, batch, hyper)
        if name == "jax":
            moments = {k: np.asarray(v) for k, v in state["opt"].mu.items()}
        else:
            moments = state["opt"]["m"]
        out[name] = metrics, moments, program.get_params(state)
    return out


def _assert_step_matches(spec, loss_rtol, moment_rtol, param_rtol, param_atol):
    out = _one_step(spec, HYPER[spec])
    assert_first_step_matches(out["jax"], out["reference"], spec, loss_rtol=loss_rtol,
                              moment_rtol=moment_rtol, moment_atol=0.1 * moment_rtol,
                              param_rtol=param_rtol, param_atol=param_atol)
    metrics, ref_metrics = out["jax"][0], out["reference"][0]
    # The reference's count; one more for the fixed-step solvers (their last step's
    # f(t1, y1), the stage that gives them the reference's Hermite dense output).
    fixed = HYPER[spec].solve.solver in ("euler", "midpoint", "heun", "rk4")
    assert isinstance(metrics["nfe_forward"], int)
    assert metrics["nfe_forward"] == ref_metrics["nfe_forward"] + fixed
    if HYPER[spec].solve.adjoint is None:
        assert metrics["nfe_backward"] is None  # backprop: JAX does not count its VJPs
    else:
        # odeplug's adjoint on JAX: the backward solve's count, the reference's.
        assert metrics["nfe_backward"] == ref_metrics["nfe_backward"]


# ------------------------------------------------------------- one training step


def test_step_matches_reference_rk4_float64():
    # Fixed steps on the same grid: the same arithmetic up to rounding.
    _assert_step_matches(SPEC_RK4, 1e-12, 1e-8, 1e-12, 1e-14)


def test_step_matches_reference_dopri5_adjoint_float32():
    _assert_step_matches(SPEC_DOPRI5, 1e-5, 1e-3, 1e-4, 1e-5)


def test_metrics_and_state():
    spec, hyper = SPEC_DOPRI5, HYPER_DOPRI5
    program = make_program(spec)
    params = spec.init_params(0)
    state = program.init(params)
    assert all(p.dtype == np.float32 for p in state["params"].values())
    params["embed.weight"][:] = 7.0  # init copied the caller's arrays
    assert not np.any(np.asarray(state["params"]["embed.weight"]) == 7.0)
    losses = []
    for _ in range(2):
        state, metrics = program.step(state, make_batch(), hyper)
        assert set(metrics) == {"loss", "nfe_forward", "nfe_backward"}
        losses.append(metrics["loss"])
    assert losses[1] < losses[0]
    got = program.get_params(state)
    assert list(got) == list(spec.param_shapes())
    got["head.bias"][:] = 1e3  # a copy
    assert not np.any(np.asarray(state["params"]["head.bias"]) == 1e3)


def test_compiled_functions_are_shared_by_equal_specs():
    # The estimator builds a new program per fit and per prediction: the compilations
    # live at module level, keyed by the spec, so an equal spec (a refit, a clone in a
    # grid search) traces nothing anew.
    X, y = make_batch()

    def fit_and_predict(spec, hyper, seed):
        program = make_program(spec)
        state, _ = program.step(program.init(spec.init_params(seed)), (X, y), hyper)
        program.predict(program.get_params(state), X[:16], hyper)

    fit_and_predict(SPEC_DOPRI5, HYPER_DOPRI5, 0)
    traces = dict(programs.TRACE_COUNTS)
    equal = dataclasses.replace(SPEC_DOPRI5)
    equal_hyper = dataclasses.replace(
        HYPER_DOPRI5, solve=make_solve_config(**DOPRI5, adjoint=True, max_num_steps=64))
    assert equal == SPEC_DOPRI5 and equal is not SPEC_DOPRI5
    assert equal_hyper == HYPER_DOPRI5 and equal_hyper.solve is not HYPER_DOPRI5.solve
    fit_and_predict(equal, equal_hyper, 1)
    fit_and_predict(equal, equal_hyper, 2)
    assert dict(programs.TRACE_COUNTS) == traces


def test_evaluate_reports_the_loss_of_the_state_and_changes_nothing():
    spec, hyper = SPEC_DOPRI5, HYPER_DOPRI5
    program = make_program(spec)
    # A state one step in: Adam's moments and count are not their initial values.
    state, _ = program.step(program.init(spec.init_params(0)), make_batch(), hyper)
    batch = make_batch(seed=2)  # the shape of the other tests: no new compilation
    params = program.get_params(state)
    metrics, _ = assert_evaluate_keeps_state(program, state, batch, hyper, _jax_snapshot,
                                             loss_rtol=1e-6)
    assert metrics["nfe_forward"] > 0
    reference = reference_program(spec)
    ref_metrics = reference.evaluate(reference.init(params), batch, hyper)
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5)
    # evaluate reads alpha and t1 of the hyper: the L2 penalty is
    # 0.5 * alpha * sum(W**2) / batch_size, on the weights only.
    no_penalty = program.evaluate(state, batch, dataclasses.replace(hyper, alpha=0.0))
    penalty = sum(np.sum(params[k].astype(np.float64) ** 2) for k in spec.penalized_names())
    assert metrics["loss"] - no_penalty["loss"] == pytest.approx(
        0.5 * hyper.alpha * penalty / len(batch[1]), rel=1e-4)
    shorter = program.evaluate(state, batch, dataclasses.replace(hyper, t1=0.5))
    assert abs(shorter["loss"] - metrics["loss"]) > 1e-4


HYPER_CHANGES = ({"learning_rate": 3e-2}, {"alpha": 5.0}, {"t1": 0.5}, {"beta1": 0.5},
                 {"beta2": 0.9}, {"epsilon": 1e-2})


def test_hyper_values_are_inputs_of_the_compiled_step():
    # A grid over the learning rate, alpha, t1 or Adam's constants shares one
    # compilation; and each value is used, as the reference uses it, not a constant
    # left from the first trace. Two steps: beta1 and beta2 change nothing in the first.
    spec = SPEC_RK4
    params = spec.init_params(0)
    batches = [make_batch(dtype=np.float64), make_batch(seed=2, dtype=np.float64)]

    def two_steps(program, hyper):
        state, losses = program.init(params), []
        for batch in batches:
            state, metrics = program.step(state, batch, hyper)
            losses.append(metrics["loss"])
        return losses, program.get_params(state)

    program, reference = make_program(spec), reference_program(spec)
    base_losses, base = two_steps(program, HYPER_RK4)  # compiles, if no test did before
    traces = dict(programs.TRACE_COUNTS)
    for change in HYPER_CHANGES:
        hyper = dataclasses.replace(HYPER_RK4, **change)
        losses, got = two_steps(program, hyper)
        ref_losses, ref = two_steps(reference, hyper)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-10, err_msg=str(change))
        for key in base:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{change} {key}")
        assert any(not np.allclose(got[k], base[k], rtol=1e-6, atol=1e-9) for k in base), change
        if "alpha" in change or "t1" in change:  # the loss of the first step too
            assert losses[0] != pytest.approx(base_losses[0], rel=1e-6), change
    assert dict(programs.TRACE_COUNTS) == traces


def test_hyper_values_are_inputs_of_the_compiled_predict():
    spec = SPEC_RK4
    params = spec.init_params(2)
    X, _ = make_batch(16, seed=4, dtype=spec.dtype)
    program = make_program(spec)
    base, _ = program.predict(params, X, HYPER_RK4)  # compiles, if no test did before
    traces = dict(programs.TRACE_COUNTS)
    # t1 is an input: half the interval, two steps of 0.25, as on the reference.
    shorter = dataclasses.replace(HYPER_RK4, t1=0.5)
    log_proba, stats = program.predict(params, X, shorter)
    reference, _ = reference_program(spec).predict(params, X, shorter)
    np.testing.assert_allclose(log_proba, reference, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(stats["n_steps"], 2)
    assert not np.allclose(log_proba, base, rtol=1e-6, atol=1e-6)
    # The values of training and the adjoint play no part in inference.
    training = dataclasses.replace(HYPER_RK4, learning_rate=0.5, alpha=3.0, beta1=0.1,
                                   beta2=0.5, epsilon=1e-1,
                                   solve=make_solve_config(**RK4, adjoint=True))
    np.testing.assert_array_equal(program.predict(params, X, training)[0], base)
    assert dict(programs.TRACE_COUNTS) == traces


def test_float32_model_stays_float32_under_global_x64():
    # A user's jax_enable_x64 (the engine fixture of tests/conftest.py sets it too) must
    # not turn a float32 model into float64: the hyper values are float64 NumPy scalars,
    # and they must not promote the parameters or Adam's moments. The state keeps its
    # dtypes, so the second step reuses the first one's compilation (of 64-bit JAX).
    spec, hyper = SPEC_DOPRI5, HYPER_DOPRI5
    program = make_program(spec)
    with jax.enable_x64(True):
        state = program.init(spec.init_params(0))
        traces = []
        for seed in (1, 2):
            state, metrics = program.step(state, make_batch(seed=seed), hyper)
            assert isinstance(metrics["loss"], float)
            traces.append(programs.TRACE_COUNTS["step"])
        dtypes = {k: v.dtype for k, v in _jax_snapshot(state).items() if k != "count"}
        assert dtypes == dict.fromkeys(dtypes, np.dtype(np.float32))
        assert all(v.dtype == np.float32 for v in program.get_params(state).values())
        assert traces[1] == traces[0]


def test_failed_solve_in_step_raises_solver_error():
    # The training loop turns SolverError into TrainingDivergedError. With the adjoint,
    # diffrax's backward solve raises (an XLA error under jit) after the forward one
    # failed.
    program = make_program(SPEC_DOPRI5)
    with pytest.raises(SolverError, match="max_num_steps=64 exceeded") as info:
        program.step(program.init(_stiff(SPEC_DOPRI5.init_params(0))), make_batch(),
                     HYPER_DOPRI5)
    assert info.value.reason == "max_num_steps"


def test_odeint_traced_returns_the_failure_under_jit():
    # Backpropagation through the solver: the step reads the forward solve's result
    # code, which odeint_traced returns rather than raising.
    from odeplug_backends.jax.solve import failure_reason, odeint_traced, split_config

    config = make_solve_config("dopri5", rtol=1e-6, atol=1e-8, max_num_steps=8)
    static, values = split_config(config)

    @jax.jit
    def solve(y0, k):
        _, info = odeint_traced(lambda t, y, k: -k * y, y0, np.array([0.0, 1.0]), k,
                                static, values)
        return info.nfe_forward, info.code

    assert int(solve(np.ones(2, np.float32), np.float32(1.0))[1]) == 0
    nfe, code = solve(np.ones(2, np.float32), np.float32(1e4))
    assert failure_reason(int(code), static)[0] == "max_num_steps"
    assert int(nfe) == 2 + 6 * 8


def test_non_finite_parameters_give_a_non_finite_state():
    # Fixed steps: a NaN state stops the solve at the end of its first step, as the
    # reference engine's fixed-step solve (the training loop turns the SolverError into
    # TrainingDivergedError).
    program = make_program(SPEC_RK4)
    params = SPEC_RK4.init_params(0)
    params["embed.bias"][0] = np.nan
    with pytest.raises(SolverError, match="non-finite state at t=0.25") as info:
        program.step(program.init(params), make_batch(dtype=np.float64), HYPER_RK4)
    assert info.value.reason == "non_finite" and info.value.t == 0.25


def test_init_checks_shapes_and_other_specs_are_refused():
    params = SPEC_DOPRI5.init_params(0)
    params["head.weight"] = params["head.weight"][:, :2]
    with pytest.raises(ValueError, match="shapes"):
        make_program(SPEC_DOPRI5).init(params)
    with pytest.raises(NotImplementedError, match="no program for"):
        make_program(object())
    with pytest.raises(NotImplementedError):
        odeplug.get_backend("jax").make_program(object())


def test_float64_runs_in_float64_without_global_x64():
    # A model fitted on the reference engine (float64) predicts and trains on JAX in
    # float64, whatever the user's jax_enable_x64 (the program enables it per call).
    params = SPEC_RK4.init_params(0)
    X, y = make_batch(dtype=np.float64)  # the shapes of the other tests: no new compilation
    with jax.enable_x64(False):
        program = make_program(SPEC_RK4)
        state, _ = program.step(program.init(params), (X, y), HYPER_RK4)
        assert all(v.dtype == np.float64 for v in program.get_params(state).values())
        X = X[:16]
        log_proba, _ = program.predict(params, X, HYPER_RK4)
        assert jax.numpy.zeros(1).dtype == np.float32  # the user's setting is kept
    assert log_proba.dtype == np.float64
    reference, _ = reference_program(SPEC_RK4).predict(params, X, HYPER_RK4)
    np.testing.assert_allclose(log_proba, reference, rtol=1e-12, atol=1e-12)


def test_activations_match_reference():
    x = np.linspace(-30, 30, 61)
    reference = activations(np)
    with jax.enable_x64(True):
        for name, act in ACTIVATIONS.items():
            np.testing.assert_allclose(act(jax.numpy.asarray(x)), reference[name](x),
                                       rtol=1e-14, atol=1e-14, err_msg=name)


# ------------------------------------------------------------------------ predict


@pytest.mark.parametrize("spec", [SPEC_RK4, SPEC_DOPRI5], ids=["rk4-float64", "dopri5"])
def test_predict_matches_reference(spec):
    params, hyper = spec.init_params(2), HYPER[spec]
    X, _ = make_batch(16, seed=4, dtype=spec.dtype)
    log_proba, stats = make_program(spec).predict(params, X, hyper)
    ref_log_proba, ref_stats = reference_program(spec).predict(params, X, hyper)
    # Inference is in float64 on every engine (INFERENCE_DTYPE), a float32 model too.
    assert log_proba.dtype == np.float64 and log_proba.shape == (16, 3)
    tol = 1e-12
    np.testing.assert_allclose(log_proba, ref_log_proba, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.exp(log_proba).sum(axis=1), 1.0, rtol=tol)
    assert set(stats) == {"nfe_forward", "n_steps", "n_rejected"}
    for key, values in stats.items():
        assert values.shape == (16,) and values.dtype == np.int64, key
    steps = stats["n_steps"] + stats["n_rejected"]
    if spec is SPEC_RK4:
        assert np.all(stats["n_steps"] == 4) and np.all(stats["n_rejected"] == 0)
        np.testing.assert_array_equal(stats["nfe_forward"], 1 + 4 * steps)
    else:
        # f(t0, y0) and Hairer's initial step (2), then 6 stages a step.
        np.testing.assert_array_equal(stats["nfe_forward"], 2 + 6 * steps)
        # The same controller in the same precision: the same steps.
        np.testing.assert_array_equal(stats["n_steps"], ref_stats["n_steps"])


def test_predict_rows_are_independent():
    spec, hyper = SPEC_DOPRI5, HYPER_DOPRI5
    # A stronger field: rows need different numbers of steps, which must not leak into
    # each other, in chunks padded to 16 rows and to 8.
    params = _stiff(spec.init_params(0), 3.0)
    X, _ = make_batch(16, seed=7)
    program = make_program(spec)
    full, stats = program.predict(params, X, hyper)
    assert len(set(stats["nfe_forward"].tolist())) > 2
    for rows in ([0], [3], [2, 3, 4], list(range(15, 0, -2))):
        part, part_stats = program.predict(params, X[rows], hyper)
        # XLA may pick its kernels by shape (on a GPU it does): float64 rounding.
        np.testing.assert_allclose(part, full[rows], rtol=1e-12, atol=1e-12)
        for key in stats:
            np.testing.assert_array_equal(part_stats[key], stats[key][rows])


def test_predict_reads_the_solve_config_and_fails_with_solver_error():
    spec, hyper = SPEC_DOPRI5, HYPER_DOPRI5
    # float64 parameters (of a float64 fit, say); inference is float64 anyway.
    params = {k: v.astype(np.float64) for k, v in spec.init_params(0).items()}
    X = make_batch(16)[0]
    program = make_program(spec)
    log_proba, _ = program.predict(params, X, hyper)
    assert log_proba.dtype == np.float64
    empty, empty_stats = program.predict(params, X[:0], hyper)
    assert empty.shape == (0, 3) and empty_stats["nfe_forward"].shape == (0,)
    # Four steps of 0.25 do not fit in a budget of 2: every row fails.
    with pytest.raises(SolverError, match=r"^row 0: max_num_steps=2 exceeded at "
                                          r"t=0.5 \(solving from 0 to 1\)$") as info:
        program.predict(params, X[:3], dataclasses.replace(
            hyper, solve=make_solve_config(**RK4, max_num_steps=2)))
    assert info.value.reason == "max_num_steps"
