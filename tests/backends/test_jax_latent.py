"""The JAX engine's latent ODE program: the reference engine's computation on JAX.

One step from the same parameters gives the reference's loss, gradient and update (both
encoders, with and without the adjoint, fitted or fixed noise); ``evaluate`` changes
nothing; the values of a step (learning rate, KL weight, fixed noise, tolerances) are
inputs of one compilation; inference (encode, per-series trajectories, decode) agrees
in float64 and fails as the reference does.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")

from odeplug_backends.jax import programs  # noqa: E402

import odeplug  # noqa: E402
from odeplug._solver_options import make_solve_config  # noqa: E402
from odeplug.reference.latent import LatentProgram as ReferenceProgram  # noqa: E402
from tests.backends import latent_programs as checks  # noqa: E402
from tests.backends.programs import assert_evaluate_keeps_state  # noqa: E402

make_program = odeplug.get_backend("jax").make_program


def _first_moments(state):
    return {k: np.asarray(v) for k, v in state["opt"].mu.items()}


def _snapshot(state):
    out = {f"param:{k}": np.array(v) for k, v in state["params"].items()}
    adam = state["opt"]
    out.update({f"mu:{k}": np.array(v) for k, v in adam.mu.items()})
    out.update({f"nu:{k}": np.array(v) for k, v in adam.nu.items()})
    out["count"] = np.array(adam.count)
    return out


# Each spec and solver compiles a step (~15-40 s on a loaded 2-core machine): the
# tests share two, and the estimator tests' program checks reuse the first
# (tests/estimators/test_latent.py).
STEPS = [("ode_rnn", True, True), ("rnn", False, False)]


@pytest.mark.parametrize("encoder, adjoint, fit_noise", STEPS)
def test_step_matches_reference(encoder, adjoint, fit_noise):
    spec = checks.spec(encoder, fit_noise=fit_noise)
    metrics, _ = checks.assert_step_matches_reference(
        make_program(spec), _first_moments, spec, checks.hyper(adjoint=adjoint),
        rtol=1e-5, atol=1e-7)
    # Backward counts come from the adjoint's probe (None without the adjoint).
    assert (metrics["nfe_backward"] is not None and metrics["nfe_backward"] > 0) == adjoint


def test_evaluate_reports_the_loss_of_the_state_and_changes_nothing():
    spec = checks.spec("ode_rnn")
    program = make_program(spec)
    hyper = checks.hyper(adjoint=True)
    state, _ = program.step(program.init(spec.init_params(0)), checks.batch(), hyper)
    assert_evaluate_keeps_state(program, state, checks.batch(seed=1), hyper, _snapshot,
                                loss_rtol=1e-9)


def test_step_values_are_inputs_of_one_compilation():
    # A grid over the learning rate, the KL weight, the fixed noise or the tolerances
    # shares one compilation, and each value is used as the reference uses it.
    spec = checks.spec("rnn", fit_noise=False)
    params = spec.init_params(0)
    data = checks.batch()
    program, reference = make_program(spec), ReferenceProgram(spec)
    program.step(program.init(params), data, checks.hyper())
    traces = dict(programs.TRACE_COUNTS)
    for change in ({"learning_rate": 0.1}, {"kl_weight": 0.1}, {"noise_std": 2.0},
                   {"solve": make_solve_config("dopri5", rtol=1e-5, atol=1e-7)}):
        h = checks.hyper(**change)
        _, metrics = program.step(program.init(params), data, h)
        _, ref_metrics = reference.step(reference.init(params), data, h)
        assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-6), change
    assert dict(programs.TRACE_COUNTS) == traces


def test_inference_matches_reference():
    spec = checks.spec("ode_rnn")
    # diffrax's loop counts a step less or more than the reference's at times: the
    # numbers agree to the tolerance, the counts are not compared.
    checks.assert_inference_matches_reference(make_program(spec), spec, rtol=1e-7,
                                              atol=1e-8, same_counts=False)
    program = make_program(spec)
    traces = dict(programs.TRACE_COUNTS)
    params = spec.init_params(1)
    enc_values, enc_mask, enc_times, *_ = checks.batch(n=70, seed=3)  # two chunks
    program.encode(params, enc_values, enc_mask, enc_times, checks.hyper(
        solve=make_solve_config("dopri5", rtol=1e-6, atol=1e-8)))
    assert dict(programs.TRACE_COUNTS) == traces  # chunks of one size: no new compilation


def test_failures_read_as_the_reference():
    spec = checks.spec("ode_rnn")
    checks.assert_failures_read_as_the_reference(make_program(spec), spec)
