"""The JAX engine's flow-matching program: the reference engine's regression, one small
jitted step. Same parameters, batch and hyperparameters: the loss, Adam's first moments
and the updated parameters agree with the reference program to the precision of the
dtype; the values of the ``Hyper`` are traced inputs (a new learning rate or ``alpha``
reuses the compilation, and is used); ``evaluate`` changes nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")
pytest.importorskip("optax")

from odeplug_backends.jax import programs  # noqa: E402

import odeplug  # noqa: E402
from tests.backends.flow_matching import fm_batch, fm_hyper, fm_spec  # noqa: E402
from tests.backends.programs import (  # noqa: E402
    assert_evaluate_keeps_state,
    assert_first_step_matches,
)

make_program = odeplug.get_backend("jax").make_program
reference_program = odeplug.get_backend("reference").make_program

# Two specs, one batch size: each compiles its step once for the module.
SPEC32 = fm_spec(dtype="float32", field_hidden=(8, 8), field_activation="softplus")
SPEC64 = fm_spec(dtype="float64")


def _snapshot(state):
    opt = state["opt"]
    out = {f"param:{k}": np.array(v) for k, v in state["params"].items()}
    out.update({f"mu:{k}": np.array(v) for k, v in opt.mu.items()})
    out.update({f"nu:{k}": np.array(v) for k, v in opt.nu.items()})
    out["count"] = np.array(opt.count)
    return out


@pytest.mark.parametrize("spec, rtol", [(SPEC32, 2e-5), (SPEC64, 1e-12)])
def test_step_matches_reference(spec, rtol):
    params, batch, hyper = spec.init_params(0), fm_batch(spec), fm_hyper()
    out = {}
    for name, program in (("jax", make_program(spec)), ("reference", reference_program(spec))):
        state, metrics = program.step(program.init(params), batch, hyper)
        moments = ({k: np.asarray(v) for k, v in state["opt"].mu.items()} if name == "jax"
                   else state["opt"]["m"])
        out[name] = metrics, moments, program.get_params(state)
    assert_first_step_matches(out["jax"], out["reference"], spec, loss_rtol=rtol,
                              moment_rtol=10 * rtol, moment_atol=rtol,
                              param_rtol=rtol, param_atol=rtol)
    assert out["jax"][0]["nfe_forward"] == 1 and out["jax"][0]["nfe_backward"] == 0
    assert out["jax"][0]["mse"] == pytest.approx(out["reference"][0]["mse"], rel=rtol)


def test_hyper_values_are_inputs_of_the_compiled_step():
    spec = SPEC64
    params, batches = spec.init_params(3), [fm_batch(spec, seed=s) for s in (0, 1)]

    def two_steps(program, hyper):
        state, losses = program.init(params), []
        for batch in batches:
            state, metrics = program.step(state, batch, hyper)
            losses.append(metrics["loss"])
        return losses, program.get_params(state)

    program, reference = make_program(spec), reference_program(spec)
    _, base = two_steps(program, fm_hyper())  # compiles, if no test did before
    traces = dict(programs.TRACE_COUNTS)
    for change in ({"learning_rate": 3e-2}, {"alpha": 5.0}, {"beta1": 0.5},
                   {"epsilon": 1e-2}):
        hyper = fm_hyper(**change)
        losses, got = two_steps(program, hyper)
        ref_losses, ref = two_steps(reference, hyper)
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-10, err_msg=str(change))
        for key in base:
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-10, atol=1e-12)
        assert any(not np.allclose(got[k], base[k], rtol=1e-6) for k in base), change
    assert dict(programs.TRACE_COUNTS) == traces


def test_evaluate_reports_the_loss_of_the_state_and_changes_nothing():
    spec = SPEC32
    program = make_program(spec)
    state, _ = program.step(program.init(spec.init_params(0)), fm_batch(spec), fm_hyper())
    metrics, _ = assert_evaluate_keeps_state(program, state, fm_batch(spec, seed=2),
                                             fm_hyper(), _snapshot, loss_rtol=1e-6)
    assert metrics["nfe_forward"] == 1


def test_float32_stays_float32_under_global_x64():
    spec = SPEC32
    program = make_program(spec)
    with jax.enable_x64(True):
        state, _ = program.step(program.init(spec.init_params(0)), fm_batch(spec),
                                fm_hyper())
    assert all(v.dtype == np.float32 for v in program.get_params(state).values())


def test_refuses_a_batch_of_another_objective():
    program = make_program(SPEC32)
    with pytest.raises(ValueError, match=r"a flow-matching step takes a batch \(t, x_t, "):
        program.step(program.init(SPEC32.init_params(0)), (np.zeros((4, 2)),), fm_hyper())


def test_compiles_once_per_spec_and_batch_shape():
    # A new program of an equal spec (the estimator builds one per fit) with other
    # values reuses the compilation.
    program = make_program(SPEC32)
    program.step(program.init(SPEC32.init_params(5)), fm_batch(SPEC32), fm_hyper())
    traces = dict(programs.TRACE_COUNTS)
    program = make_program(dataclasses.replace(SPEC32))
    state = program.init(SPEC32.init_params(6))
    for seed in range(3):
        state, _ = program.step(state, fm_batch(SPEC32, seed=seed),
                                fm_hyper(learning_rate=0.1 * (seed + 1), alpha=seed))
    assert dict(programs.TRACE_COUNTS) == traces
