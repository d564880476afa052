"""The JAX engine's CNF program: the reference engine's computation, compiled once.

A training step agrees with the reference (exact trace and Hutchinson's, RNODE's terms);
every float of the hyper (RNODE's weights, ``t1``, the learning rate, the tolerances) is
an input of the compiled step, and both flows share one compilation; failures come back
as odeplug's ``SolverError``; inference agrees row by row.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")

from odeplug_backends.jax import programs  # noqa: E402

import odeplug  # noqa: E402
from odeplug import SolverError  # noqa: E402
from odeplug._solver_options import make_solve_config  # noqa: E402
from tests.backends.programs import (  # noqa: E402
    assert_cnf_inference_matches,
    assert_first_step_matches,
    cnf_batch,
    cnf_spec_and_hyper,
)

make_program = odeplug.get_backend("jax").make_program
reference_program = odeplug.get_backend("reference").make_program

DOPRI5 = dict(solver="dopri5", rtol=1e-5, atol=1e-7)


def _step_both(spec, hyper, batch):
    params = spec.init_params(0)
    out = {}
    for name, program in (("jax", make_program(spec)), ("reference", reference_program(spec))):
        state, metrics = program.step(program.init(params), batch, hyper)
        moments = ({k: np.asarray(v) for k, v in state["opt"].mu.items()}
                   if name == "jax" else state["opt"]["m"])
        out[name] = metrics, moments, program.get_params(state)
    return out


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_step_matches_reference_float64(trace):
    spec, hyper = cnf_spec_and_hyper(make_solve_config(solver="rk4", step_size=0.25,
                                                       adjoint=True),
                                     trace=trace, dtype="float64")
    out = _step_both(spec, hyper, cnf_batch(dtype=np.float64, hutchinson=trace != "exact"))
    assert_first_step_matches(out["jax"], out["reference"], spec, loss_rtol=1e-12,
                              moment_rtol=1e-8, moment_atol=1e-9, param_rtol=1e-12,
                              param_atol=1e-14)
    metrics, ref_metrics = out["jax"][0], out["reference"][0]
    for part in ("nll", "kinetic_energy", "jacobian_norm"):
        assert metrics[part] == pytest.approx(ref_metrics[part], rel=1e-12), part
    # Fixed steps: JAX evaluates each solve's last f(t1, y1) too (the reference's
    # Hermite dense output), forward and in the adjoint's backward solve.
    assert metrics["nfe_forward"] == ref_metrics["nfe_forward"] + 1
    assert metrics["nfe_backward"] == ref_metrics["nfe_backward"] + 1


def test_step_matches_reference_dopri5_float32():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**DOPRI5, adjoint=True))
    out = _step_both(spec, hyper, cnf_batch())
    assert_first_step_matches(out["jax"], out["reference"], spec, loss_rtol=1e-5,
                              moment_rtol=1e-3, moment_atol=1e-4, param_rtol=1e-4,
                              param_atol=1e-5)


def test_hyper_values_and_tolerances_are_inputs_of_the_compiled_step():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**DOPRI5, adjoint=True))
    program = make_program(spec)
    batch = cnf_batch()
    state = program.init(spec.init_params(0))
    _, base = program.step(state, batch, hyper)
    traces = programs.TRACE_COUNTS["cnf_step"]
    for change in ({"kinetic_energy": 1.0}, {"jacobian_norm": 0.0}, {"t1": 0.3},
                   {"learning_rate": 0.1}, {"alpha": 0.0},
                   {"solve": make_solve_config(rtol=1e-3, atol=1e-5, adjoint=True)}):
        _, metrics = program.step(program.init(spec.init_params(0)), batch,
                                  dataclasses.replace(hyper, **change))
        if set(change) & {"kinetic_energy", "jacobian_norm", "t1", "alpha"}:
            assert metrics["loss"] != base["loss"], change  # the value was read
    assert programs.TRACE_COUNTS["cnf_step"] == traces


def test_both_flows_and_every_tolerance_share_one_compilation():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**DOPRI5), field_hidden=(6, 5))
    program = make_program(spec)
    params = spec.init_params(1)
    X = cnf_batch(n=5, dtype=np.float64)[0]
    Z, _ = program.transform(params, X, hyper)
    program.log_density(params, X, hyper)
    traces = dict(programs.TRACE_COUNTS)
    back, _ = program.inverse_transform(params, Z, hyper)
    np.testing.assert_allclose(back, X, atol=1e-5)
    looser = dataclasses.replace(hyper, solve=make_solve_config(rtol=1e-2, atol=1e-3), t1=0.4)
    program.transform(params, X, looser)
    program.log_density(params, X, looser)
    assert programs.TRACE_COUNTS["cnf_flow"] == traces["cnf_flow"]
    assert programs.TRACE_COUNTS["cnf_log_density"] == traces["cnf_log_density"]


def test_inference_matches_reference():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(solver="dopri5", rtol=1e-6, atol=1e-8),
                                     field_hidden=(6, 5))
    assert_cnf_inference_matches(make_program(spec), reference_program(spec), spec, hyper,
                                 rtol=1e-10)


def test_failed_solves_are_solver_errors():
    spec, hyper = cnf_spec_and_hyper(make_solve_config(**DOPRI5, adjoint=True,
                                                       max_num_steps=3))
    program = make_program(spec)
    with pytest.raises(SolverError, match="max_num_steps=3 exceeded") as info:
        program.step(program.init(spec.init_params(0)), cnf_batch(), hyper)
    assert info.value.reason == "max_num_steps"
    # Inference: the first failed row, worded as on the reference engine.
    X = cnf_batch(dtype=np.float64)[0]
    with pytest.raises(SolverError) as ref_info:
        reference_program(spec).log_density(spec.init_params(0), X, hyper)
    with pytest.raises(SolverError, match=r"row \d+: max_num_steps=3 exceeded") as info:
        program.log_density(spec.init_params(0), X, hyper)
    assert str(info.value) == str(ref_info.value)
