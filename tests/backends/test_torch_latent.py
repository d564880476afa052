"""The torch engine's latent ODE program: the reference engine's computation on torch.

One step from the same parameters gives the reference's loss, gradient and update (both
encoders, with and without the adjoint, fitted or fixed noise); ``evaluate`` changes
nothing; inference (encode, per-series trajectories, decode) agrees in float64, with
the same per-row step counts, and fails as the reference does.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import odeplug  # noqa: E402
from tests.backends import latent_programs as checks  # noqa: E402
from tests.backends.programs import assert_evaluate_keeps_state  # noqa: E402

make_program = odeplug.get_backend("torch").make_program


def _first_moments(state):
    return {k: state["opt"].state[p]["exp_avg"].numpy().copy()
            for k, p in state["params"].items()}


def _snapshot(state):
    out = {f"param:{k}": v.detach().numpy().copy() for k, v in state["params"].items()}
    for k, p in state["params"].items():
        for name, value in state["opt"].state.get(p, {}).items():
            out[f"{name}:{k}"] = np.array(value.detach().numpy() if torch.is_tensor(value)
                                          else value)
    return out


@pytest.mark.parametrize("encoder, adjoint, fit_noise", [
    ("ode_rnn", False, True), ("ode_rnn", True, False), ("rnn", False, False),
    ("rnn", True, True)])
def test_step_matches_reference(encoder, adjoint, fit_noise):
    spec = checks.spec(encoder, fit_noise=fit_noise)
    checks.assert_step_matches_reference(make_program(spec), _first_moments, spec,
                                         checks.hyper(adjoint=adjoint), rtol=1e-5, atol=1e-7)


def test_float32_step_matches_reference():
    spec = checks.spec("ode_rnn", dtype="float32")
    checks.assert_step_matches_reference(make_program(spec), _first_moments, spec,
                                         checks.hyper(), rtol=1e-3, atol=1e-4)


def test_evaluate_reports_the_loss_of_the_state_and_changes_nothing():
    spec = checks.spec("ode_rnn")
    program = make_program(spec)
    state, _ = program.step(program.init(spec.init_params(0)), checks.batch(), checks.hyper())
    assert_evaluate_keeps_state(program, state, checks.batch(seed=1), checks.hyper(),
                                _snapshot, loss_rtol=1e-9)


@pytest.mark.parametrize("encoder", ["ode_rnn", "rnn"])
def test_inference_matches_reference(encoder):
    spec = checks.spec(encoder)
    checks.assert_inference_matches_reference(make_program(spec), spec)


def test_failures_read_as_the_reference():
    spec = checks.spec("rnn")
    checks.assert_failures_read_as_the_reference(make_program(spec), spec)
