"""The torch engine's CNF program: the reference engine's computation on torch.

Same initial parameters, batch and hyperparameters (RNODE's weights included): the loss,
its parts, the gradients (Adam's first moments) and the updated parameters agree with the
reference program, for the exact trace and for Hutchinson's; ``evaluate`` changes
nothing; inference (log-density, both flows) agrees row by row.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import odeplug  # noqa: E402
from odeplug._solver_options import make_solve_config  # noqa: E402
from tests.backends.programs import (  # noqa: E402
    assert_cnf_inference_matches,
    assert_evaluate_keeps_state,
    assert_first_step_matches,
    cnf_batch,
    cnf_spec_and_hyper,
)
from tests.backends.test_torch_odenet import _torch_moments, _torch_snapshot  # noqa: E402

make_program = odeplug.get_backend("torch").make_program
reference_program = odeplug.get_backend("reference").make_program

RK4 = dict(solver="rk4", step_size=0.25)


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
@pytest.mark.parametrize("trace, regularize", [("exact", True), ("hutchinson", True),
                                               ("exact", False)])
def test_step_matches_reference(trace, regularize, adjoint):
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**RK4, adjoint=adjoint), trace=trace,
                                     regularize=regularize, field_activation="softplus")
    batch = cnf_batch(hutchinson=trace == "hutchinson")
    params = spec.init_params(0)
    out = {}
    for name, program in (("torch", make_program(spec)), ("reference", reference_program(spec))):
        state, metrics = program.step(program.init(params), batch, hyper)
        moments = _torch_moments(state) if name == "torch" else state["opt"]["m"]
        out[name] = metrics, moments, program.get_params(state)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-6,
                              moment_rtol=1e-4, moment_atol=1e-5, param_rtol=1e-5,
                              param_atol=1e-6)
    metrics, ref_metrics = out["torch"][0], out["reference"][0]
    parts = {"nll"} | ({"kinetic_energy", "jacobian_norm"} if regularize else set())
    assert parts <= set(metrics) and parts <= set(ref_metrics)
    for part in parts:
        assert metrics[part] == pytest.approx(ref_metrics[part], rel=1e-5), part


def test_evaluate_keeps_state_and_matches_reference():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(solver="dopri5", rtol=1e-5,
                                                       atol=1e-7, adjoint=True),
                                     trace="hutchinson")
    program = make_program(spec)
    batch = cnf_batch(hutchinson=True)
    state, _ = program.step(program.init(spec.init_params(0)), batch, hyper)
    params = program.get_params(state)
    metrics, _ = assert_evaluate_keeps_state(program, state, batch, hyper, _torch_snapshot,
                                             loss_rtol=1e-6)
    reference = reference_program(spec)
    assert metrics["loss"] == pytest.approx(
        reference.evaluate(reference.init(params), batch, hyper)["loss"], rel=1e-4)


def test_hutchinson_step_needs_its_noise():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**RK4), trace="hutchinson")
    program = make_program(spec)
    with pytest.raises(ValueError, match="batch \\(X, noise\\)"):
        program.step(program.init(spec.init_params(0)), cnf_batch(), hyper)


@pytest.mark.parametrize("solver", [dict(solver="dopri5", rtol=1e-6, atol=1e-8), RK4])
def test_inference_matches_reference(solver):
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**solver), field_hidden=(6, 5))
    assert_cnf_inference_matches(make_program(spec), reference_program(spec), spec, hyper,
                                 rtol=1e-10)


def test_velocity_is_the_field():
    spec, _ = cnf_spec_and_hyper(make_solve_config(**RK4))
    params = spec.init_params(0)
    z = np.random.default_rng(0).normal(size=(4, 3))
    program, reference = make_program(spec), reference_program(spec)
    tensors = {k: torch.from_numpy(v.astype(np.float64)) for k, v in params.items()}
    got = program.velocity(tensors, torch.tensor(0.3, dtype=torch.float64),
                           torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, reference.velocity(
        {k: v.astype(np.float64) for k, v in params.items()}, 0.3, z), rtol=1e-12)
