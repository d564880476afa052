"""The torch engine's flow-matching program: the reference engine's regression on torch.

Same parameters, same batch, same hyperparameters: the loss, Adam's first moments and
the updated parameters agree with the reference program to the precision of the dtype,
over several steps too; ``evaluate`` reports the loss of a state and changes nothing;
the program trains the CNF program's own state.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import odeplug  # noqa: E402
from tests.backends.flow_matching import fm_batch, fm_hyper, fm_spec  # noqa: E402
from tests.backends.programs import (  # noqa: E402
    assert_evaluate_keeps_state,
    assert_first_step_matches,
)

make_program = odeplug.get_backend("torch").make_program
reference_program = odeplug.get_backend("reference").make_program


def _moments(state):
    return {k: state["opt"].state[p]["exp_avg"].numpy().copy()
            for k, p in state["params"].items()}


def _snapshot(state):
    out = {f"param:{k}": v.detach().numpy().copy() for k, v in state["params"].items()}
    for k, p in state["params"].items():
        for name, value in state["opt"].state.get(p, {}).items():
            out[f"{name}:{k}"] = torch.as_tensor(value).detach().numpy().copy()
    return out


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_step_matches_reference(dtype, rtol):
    spec = fm_spec(dtype=dtype, field_hidden=(8, 8), field_activation="softplus")
    params, batch, hyper = spec.init_params(0), fm_batch(spec), fm_hyper()
    out = {}
    for name, program in (("torch", make_program(spec)), ("reference", reference_program(spec))):
        state, metrics = program.step(program.init(params), batch, hyper)
        moments = _moments(state) if name == "torch" else state["opt"]["m"]
        out[name] = metrics, moments, program.get_params(state)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=rtol,
                              moment_rtol=10 * rtol, moment_atol=rtol,
                              param_rtol=rtol, param_atol=rtol)
    assert out["torch"][0]["nfe_forward"] == 1 and out["torch"][0]["nfe_backward"] == 0
    assert out["torch"][0]["mse"] == pytest.approx(out["reference"][0]["mse"], rel=rtol)


def test_several_steps_track_reference():
    spec = fm_spec(dtype="float32")
    params, hyper = spec.init_params(1), fm_hyper()
    got = {}
    for name, program in (("torch", make_program(spec)), ("reference", reference_program(spec))):
        state, losses = program.init(params), []
        for seed in range(20):
            state, metrics = program.step(state, fm_batch(spec, seed=seed), hyper)
            losses.append(metrics["loss"])
        got[name] = losses, program.get_params(state)
    np.testing.assert_allclose(got["torch"][0], got["reference"][0], rtol=1e-4)
    for key, value in got["reference"][1].items():
        np.testing.assert_allclose(got["torch"][1][key], value, rtol=1e-3, atol=1e-4)
    assert got["reference"][0][-1] < got["reference"][0][0]  # it learns


def test_evaluate_reports_the_loss_of_the_state_and_changes_nothing():
    spec = fm_spec(dtype="float32")
    program = make_program(spec)
    state, _ = program.step(program.init(spec.init_params(0)), fm_batch(spec), fm_hyper())
    metrics, _ = assert_evaluate_keeps_state(program, state, fm_batch(spec, seed=2),
                                             fm_hyper(), _snapshot, loss_rtol=1e-6)
    assert metrics["nfe_forward"] == 1


def test_trains_the_cnf_programs_own_state():
    spec = fm_spec(dtype="float32")
    cnf = make_program(spec.cnf)
    state = cnf.init(spec.init_params(0))
    state, _ = make_program(spec).step(state, fm_batch(spec), fm_hyper())
    assert state["opt"].state  # Adam's moments of the CNF's own optimiser
    log_p, _ = cnf.log_density(cnf.get_params(state), np.zeros((2, 2)), fm_hyper())
    assert np.all(np.isfinite(log_p))


def test_refuses_a_batch_of_another_objective():
    spec = fm_spec(dtype="float32")
    program = make_program(spec)
    with pytest.raises(ValueError, match=r"a flow-matching step takes a batch \(t, x_t, "):
        program.step(program.init(spec.init_params(0)), (np.zeros((4, 2)),), fm_hyper())
