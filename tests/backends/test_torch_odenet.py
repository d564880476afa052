"""The torch engine's ODE-Net program: the reference engine's computation on torch.

Same initial parameters, same batch, same hyperparameters: the loss, the gradients
(Adam's first moments) and the updated parameters agree with the reference program to
float32 precision; the step size and Adam's constants are those of the ``Hyper`` of the
call; ``evaluate`` reports the loss of a state and changes nothing; predict agrees,
solves each row alone, and reports its cost per row. Also here, as it concerns every
engine: the ODE-Net's parameter table and initial values.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from sklearn.datasets import make_moons  # noqa: E402

import odeplug  # noqa: E402
from odeplug import ODEClassifier, SolverError  # noqa: E402
from odeplug._solver_options import make_solve_config  # noqa: E402
from odeplug._specs import GlorotUniform  # noqa: E402
from tests.backends.programs import (  # noqa: E402
    assert_evaluate_keeps_state,
    assert_first_step_matches,
    make_batch,
    spec_and_hyper,
)

make_program = odeplug.get_backend("torch").make_program
reference_program = odeplug.get_backend("reference").make_program

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

RK4 = dict(solver="rk4", step_size=0.25)
DOPRI5 = dict(solver="dopri5", rtol=1e-5, atol=1e-7)


def _spec(solve=None, **kwargs):
    """``(spec, hyper)``: by default fixed steps with the adjoint, learning rate 1e-2,
    alpha 0.5."""
    return spec_and_hyper(solve or make_solve_config(**RK4, adjoint=True), **kwargs)


def _torch_moments(state, which="exp_avg"):
    """Adam's first (``exp_avg``) or second (``exp_avg_sq``) moments of a torch state."""
    return {k: state["opt"].state[p][which].numpy().copy() for k, p in state["params"].items()}


def _torch_snapshot(state):
    """Copies of everything a torch training state holds: parameters, Adam's moments
    and step counts."""
    out = {f"param:{k}": v.detach().numpy().copy() for k, v in state["params"].items()}
    for k, p in state["params"].items():
        for name, value in state["opt"].state.get(p, {}).items():
            out[f"{name}:{k}"] = np.array(value.detach().numpy() if torch.is_tensor(value)
                                          else value)
    return out


def _reference_snapshot(state):
    out = {f"param:{k}": v.copy() for k, v in state["params"].items()}
    for moment in ("m", "v"):
        out.update({f"{moment}:{k}": v.copy() for k, v in state["opt"][moment].items()})
    out["count"] = np.array(state["opt"]["count"])
    return out


def _one_step(spec, hyper, seed=0, batch=None):
    """(loss, first moments, updated params) of one step on each engine, and each
    engine's state after it."""
    params = spec.init_params(seed)
    batch = make_batch() if batch is None else batch
    out, states = {}, {}
    for name, program in (("torch", make_program(spec)), ("reference", reference_program(spec))):
        state = program.init(params)
        state, metrics = program.step(state, batch, hyper)
        if name == "torch":
            moments = _torch_moments(state)
        else:
            moments = state["opt"]["m"]
        out[name] = metrics, moments, program.get_params(state)
        states[name] = state
    return out, states


# ------------------------------------------------------------- one training step


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
@pytest.mark.parametrize("activation, field_activation", [
    ("tanh", "tanh"), ("relu", "softplus"), ("logistic", "identity"), ("softplus", "logistic"),
])
def test_step_matches_reference_rk4(adjoint, activation, field_activation):
    # Fixed steps on the same grid: the same arithmetic up to float32 rounding.
    spec, hyper = _spec(make_solve_config(**RK4, adjoint=adjoint), activation=activation,
                        field_activation=field_activation)
    out, _ = _one_step(spec, hyper)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-6,
                              moment_rtol=1e-4, moment_atol=1e-5, param_rtol=1e-5,
                              param_atol=1e-6)


@pytest.mark.parametrize("field_hidden", [(), (5, 4)], ids=["linear-field", "two-hidden"])
def test_step_matches_reference_field_depths(field_hidden):
    spec, hyper = _spec(make_solve_config(**RK4, adjoint=True), field_hidden=field_hidden)
    out, _ = _one_step(spec, hyper)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-6,
                              moment_rtol=1e-4, moment_atol=1e-5, param_rtol=1e-5,
                              param_atol=1e-6)


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_step_matches_reference_dopri5(adjoint):
    spec, hyper = _spec(make_solve_config(**DOPRI5, adjoint=adjoint), augment_dim=0,
                        field_hidden=(8, 8))
    out, _ = _one_step(spec, hyper)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-5,
                              moment_rtol=1e-3, moment_atol=1e-3, param_rtol=1e-4,
                              param_atol=1e-5)
    metrics = out["torch"][0]
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0


def test_several_steps_track_reference():
    spec, hyper = _spec(make_solve_config(**DOPRI5, adjoint=True), learning_rate=1e-3)
    params = spec.init_params(3)
    X, y = make_batch(40, seed=5)
    programs = [make_program(spec), reference_program(spec)]
    states = [p.init(params) for p in programs]
    for i in range(5):
        batch = (X[8 * i: 8 * i + 8], y[8 * i: 8 * i + 8])
        results = [p.step(s, batch, hyper) for p, s in zip(programs, states, strict=True)]
        states = [state for state, _ in results]
        losses = [metrics["loss"] for _, metrics in results]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    final = [p.get_params(s) for p, s in zip(programs, states, strict=True)]
    for key in final[1]:
        np.testing.assert_allclose(final[0][key], final[1][key], rtol=1e-3, atol=1e-5)


def test_metrics_and_state():
    spec, hyper = _spec(make_solve_config("dopri5", rtol=1e-3, atol=1e-4, adjoint=True))
    program = make_program(spec)
    params = spec.init_params(0)
    state = program.init(params)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in state["params"].values())
    assert isinstance(state["opt"], torch.optim.Adam)
    assert state["opt"].defaults["weight_decay"] == 0  # the L2 penalty is in the loss
    params["embed.weight"][:] = 7.0  # init copied the caller's arrays
    assert not torch.any(state["params"]["embed.weight"] == 7.0)
    for _ in range(2):  # the first solve is checked, the next is not: same counters
        state, metrics = program.step(state, make_batch(), hyper)
        assert set(metrics) == {"loss", "nfe_forward", "nfe_backward"}
        assert all(isinstance(metrics[k], int) and metrics[k] > 0
                   for k in ("nfe_forward", "nfe_backward"))
    got = program.get_params(state)
    assert set(got) == set(spec.param_shapes())
    got["head.bias"][:] = 1e3  # a copy
    assert not torch.any(state["params"]["head.bias"] == 1e3)


def test_non_finite_parameters_raise_solver_error():
    # Diverged parameters give a non-finite state: SolverError (the training loop turns
    # it into TrainingDivergedError), also on the unchecked solves after the first.
    for solver in (dict(DOPRI5), dict(RK4)):
        spec, hyper = _spec(make_solve_config(**solver, adjoint=True))
        program = make_program(spec)
        state = program.init(spec.init_params(0))
        state, _ = program.step(state, make_batch(), hyper)
        with torch.no_grad():
            state["params"]["embed.bias"][0] = float("nan")
        with pytest.raises(SolverError):
            program.step(state, make_batch(), hyper)


def test_init_checks_shapes_and_other_specs_are_refused():
    spec, _ = _spec()
    params = spec.init_params(0)
    params["head.weight"] = params["head.weight"][:, :2]
    with pytest.raises(ValueError, match="shapes"):
        make_program(spec).init(params)
    with pytest.raises(NotImplementedError, match="no program for"):
        make_program(object())
    with pytest.raises(NotImplementedError):
        odeplug.get_backend("torch").make_program(object())


# ------------------------------------------------- evaluate, values of the hyper


@pytest.mark.parametrize("solver", [RK4, DOPRI5], ids=["rk4", "dopri5"])
@pytest.mark.parametrize("engine", ["torch", "reference"])
def test_evaluate_reports_the_loss_of_the_state_and_changes_nothing(engine, solver):
    spec, hyper = _spec(make_solve_config(**solver, adjoint=True))
    program = make_program(spec) if engine == "torch" else reference_program(spec)
    snapshot = _torch_snapshot if engine == "torch" else _reference_snapshot
    # A state one step in: Adam's moments and step count are not their initial values.
    state, _ = program.step(program.init(spec.init_params(0)), make_batch(), hyper)
    batch = make_batch(seed=2)
    params = program.get_params(state)
    metrics, step_metrics = assert_evaluate_keeps_state(program, state, batch, hyper, snapshot,
                                                        loss_rtol=1e-6)
    assert metrics["nfe_forward"] > 0
    # The same loss on the other engine, from the same parameters.
    other = reference_program(spec) if engine == "torch" else make_program(spec)
    other_metrics = other.evaluate(other.init(params), batch, hyper)
    assert metrics["loss"] == pytest.approx(other_metrics["loss"], rel=1e-5)
    # evaluate reads alpha and t1 of the hyper: the L2 penalty is
    # 0.5 * alpha * sum(W**2) / batch_size, on the weights only.
    state = program.init(params)
    no_penalty = program.evaluate(state, batch, dataclasses.replace(hyper, alpha=0.0))
    penalty = sum(np.sum(params[k].astype(np.float64) ** 2) for k in spec.penalized_names())
    assert metrics["loss"] - no_penalty["loss"] == pytest.approx(
        0.5 * hyper.alpha * penalty / len(batch[1]), rel=1e-4)
    shorter = program.evaluate(state, batch, dataclasses.replace(hyper, t1=0.5))
    assert abs(shorter["loss"] - metrics["loss"]) > 1e-4


def test_step_uses_the_learning_rate_of_the_hyper():
    spec, hyper = _spec()
    params = spec.init_params(0)
    program = make_program(spec)
    batch = make_batch()
    updates = {}
    for lr in (0.0, 1e-2, 1e-3):
        state, _ = program.step(program.init(params), batch,
                                dataclasses.replace(hyper, learning_rate=lr))
        assert state["opt"].param_groups[0]["lr"] == lr
        got = program.get_params(state)
        updates[lr] = {k: got[k].astype(np.float64) - params[k] for k in params}
    for key in params:
        np.testing.assert_array_equal(updates[0.0][key], 0.0, err_msg=key)
        big, small = updates[1e-2][key], updates[1e-3][key]
        moved = big != 0
        assert moved.mean() > 0.9, key
        # Adam's first step is lr * g / (|g| + eps): the learning rates' ratio, and a
        # step of the learning rate where the gradient is far above eps.
        np.testing.assert_allclose(small[moved] / big[moved], 0.1, rtol=1e-3, err_msg=key)
        assert np.mean(np.isclose(np.abs(big), 1e-2, rtol=1e-3)) > 0.9, key
    # Read at every step, not at init: a later step with learning rate 0 moves nothing.
    state, _ = program.step(program.init(params), batch, hyper)
    before = program.get_params(state)
    state, _ = program.step(state, make_batch(seed=2), dataclasses.replace(hyper,
                                                                           learning_rate=0.0))
    for key, value in program.get_params(state).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_step_uses_the_adam_constants_of_the_hyper():
    # Constants far from the defaults (0.9, 0.999, 1e-8): a large epsilon changes the
    # first step itself, beta1 and beta2 the moments and every later step.
    spec, hyper = _spec(beta1=0.5, beta2=0.9, epsilon=1e-3)
    b1, b2, eps, lr = hyper.beta1, hyper.beta2, hyper.epsilon, hyper.learning_rate
    params = spec.init_params(0)
    out, states = _one_step(spec, hyper)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-6,
                              moment_rtol=1e-4, moment_atol=1e-5, param_rtol=1e-5,
                              param_atol=1e-6)
    group = states["torch"]["opt"].param_groups[0]
    assert group["betas"] == (b1, b2) and group["eps"] == eps
    m, v = _torch_moments(states["torch"]), _torch_moments(states["torch"], "exp_avg_sq")
    updated = out["torch"][2]
    for key in params:
        # After one step m = (1 - beta1) g and v = (1 - beta2) g**2 ...
        grad = m[key].astype(np.float64) / (1 - b1)
        np.testing.assert_allclose(v[key], (1 - b2) * grad**2, rtol=1e-5, atol=1e-12,
                                   err_msg=key)
        np.testing.assert_allclose(states["reference"]["opt"]["v"][key], v[key], rtol=1e-4,
                                   atol=1e-5 * np.abs(v[key]).max(), err_msg=key)
        # ... and the update lr * g / (|g| + eps).
        np.testing.assert_allclose(updated[key] - params[key],
                                   -lr * grad / (np.abs(grad) + eps), rtol=1e-3, atol=1e-6,
                                   err_msg=key)
    # The large epsilon did shrink steps: with 1e-8 they would all be lr.
    assert np.mean(np.concatenate([np.abs(updated[k] - params[k]).ravel() < 0.9 * lr
                                   for k in params])) > 0.05
    # A second step, where beta1 and beta2 weigh the two gradients: as the reference's,
    # and away from where the default constants lead.
    batch = make_batch(seed=2)
    final = {}
    for name, program in (("torch", make_program(spec)), ("reference", reference_program(spec))):
        state, _ = program.step(states[name], batch, hyper)
        final[name] = program.get_params(state)
    program = make_program(spec)
    state = program.init(params)
    defaults = dataclasses.replace(hyper, beta1=0.9, beta2=0.999, epsilon=1e-8)
    for each in (make_batch(), batch):
        state, _ = program.step(state, each, defaults)
    final["defaults"] = program.get_params(state)
    for key in params:
        np.testing.assert_allclose(final["torch"][key], final["reference"][key], rtol=1e-5,
                                   atol=1e-6, err_msg=key)
        assert not np.allclose(final["torch"][key], final["defaults"][key], rtol=1e-3,
                               atol=1e-4), key


# ------------------------------------------------------------------------ predict


@pytest.mark.parametrize("solver", [RK4, DOPRI5], ids=["rk4", "dopri5"])
def test_predict_matches_reference(solver):
    spec, hyper = _spec(make_solve_config(**solver, adjoint=True))
    params = spec.init_params(2)
    X, _ = make_batch(30, seed=4)
    log_proba, stats = make_program(spec).predict(params, X, hyper)
    ref_log_proba, ref_stats = reference_program(spec).predict(params, X, hyper)
    # Inference is in float64 on every engine (INFERENCE_DTYPE), a float32 model too.
    assert log_proba.dtype == np.float64 and log_proba.shape == (30, 3)
    np.testing.assert_allclose(log_proba, ref_log_proba, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.exp(log_proba).sum(axis=1), 1.0, rtol=1e-5)
    assert set(stats) == {"nfe_forward", "n_steps", "n_rejected"}
    for key, values in stats.items():
        assert values.shape == (30,) and values.dtype.kind == "i", key
    assert np.all(stats["nfe_forward"] > 0) and np.all(stats["n_steps"] > 0)
    if solver is RK4:
        assert np.all(stats["n_steps"] == 4) and np.all(stats["n_rejected"] == 0)
    else:
        # The same controller in the same precision: the same steps.
        np.testing.assert_array_equal(stats["n_steps"], ref_stats["n_steps"])


def test_predict_rows_are_independent():
    spec, hyper = _spec(make_solve_config("dopri5", rtol=1e-3, atol=1e-4))
    # A stronger field: rows need different numbers of steps (32 to 50 evaluations),
    # which must not leak into each other.
    params = {k: v * 3 if k.startswith("field.") else v
              for k, v in spec.init_params(0).items()}
    X, _ = make_batch(25, seed=7)
    program = make_program(spec)
    full, stats = program.predict(params, X, hyper)
    assert len(set(stats["nfe_forward"].tolist())) > 2
    for rows in ([0], [3], [2, 3, 4], list(range(24, -1, -2))):
        part, part_stats = program.predict(params, X[rows], hyper)
        # All rows go through one batched field: BLAS may round a row of a larger
        # product differently, at float64 rounding.
        np.testing.assert_allclose(part, full[rows], rtol=1e-12, atol=1e-12)
        for key in stats:
            np.testing.assert_array_equal(part_stats[key], stats[key][rows])


def test_odeint_rows_solves_each_row_alone():
    from odeplug_backends.torch.solve import odeint, odeint_rows

    def field(t, y, args):
        return -args["k"] * y * (1 + t) + torch.sin(3 * y)

    config = make_solve_config("dopri5", rtol=1e-6, atol=1e-8, adjoint=True)
    y0 = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for t in ([0.0, 0.5, 1.0], [1.0, 0.2]):  # increasing and decreasing grids
        ys, counters = odeint_rows(field, y0, t, {"k": k}, config)
        assert ys.shape == (len(t), 3, 2) and not ys.requires_grad
        for i in range(3):
            alone, stats = odeint(field, y0[i : i + 1], t, {"k": k.detach()}, config)
            # The core row solver against torchdiffeq's own solve of the row: the same
            # method and controller, other code (rounding apart).
            torch.testing.assert_close(ys[:, i : i + 1], alone, rtol=1e-12, atol=1e-13)
            assert counters["nfe_forward"][i] == stats.nfe_forward
            assert counters["n_steps"][i] == stats.n_steps
            assert counters["n_rejected"][i] == stats.n_rejected
    assert len(set(counters["nfe_forward"].tolist())) > 1  # adaptive per row


def test_predict_reads_the_solver_settings_and_accepts_float64_params():
    spec, hyper = _spec(make_solve_config("dopri5", rtol=1e-3, atol=1e-4, adjoint=True))
    params = {k: v.astype(np.float64) for k, v in spec.init_params(0).items()}
    X = make_batch(10)[0] * 5
    program = make_program(spec)

    def with_solve(*args, **kwargs):
        return dataclasses.replace(hyper, solve=make_solve_config(*args, **kwargs))

    loose = program.predict(params, X, with_solve("dopri5", rtol=1e-1, atol=1e-1))
    tight = program.predict(params, X, with_solve("dopri5", rtol=1e-7, atol=1e-8))
    assert tight[1]["nfe_forward"].sum() > loose[1]["nfe_forward"].sum()
    assert tight[0].dtype == np.float64
    empty, empty_stats = program.predict(params, X[:0], hyper)
    assert empty.shape == (0, 3) and empty_stats["nfe_forward"].shape == (0,)
    # tsit5 too: the torch engine steps with odeplug's own tableaus.
    tsit5 = program.predict(params, X, with_solve("tsit5", rtol=1e-7, atol=1e-8))
    np.testing.assert_allclose(tsit5[0], tight[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- parameter table
# Of the spec, so the same on every engine; here, with the other checks of the ODE-Net.

# The layers of the tests' ODE-Net in table order, (name, fan_in, fan_out): 5 features,
# a state of embed_dim 6 + augment_dim 2, a field of [z, t] with one hidden layer of 7.
LAYERS = (("embed", 5, 6), ("field.0", 9, 7), ("field.1", 7, 8), ("head", 8, 3))


@pytest.mark.parametrize("activation, field_activation, factor", [
    ("tanh", "tanh", 6.0), ("relu", "logistic", 6.0), ("logistic", "tanh", 2.0),
])
def test_param_table_is_sklearn_glorot(activation, field_activation, factor):
    # scikit-learn's MLP: weights and biases U(-b, b), b = sqrt(factor / (fan_in +
    # fan_out)), factor 2 for the logistic activation (of the network, the embedding's
    # here), else 6; the L2 penalty on the weights only.
    spec, _ = _spec(activation=activation, field_activation=field_activation)
    table = spec.param_table()
    assert list(table) == [f"{name}.{kind}" for name, _, _ in LAYERS
                           for kind in ("weight", "bias")]
    for name, fan_in, fan_out in LAYERS:
        weight, bias = table[f"{name}.weight"], table[f"{name}.bias"]
        assert weight.shape == (fan_in, fan_out) and bias.shape == (fan_out,)
        assert weight.penalized and not bias.penalized, name
        assert weight.init == bias.init == GlorotUniform(fan_in, fan_out, factor), name
    assert spec.penalized_names() == tuple(f"{name}.weight" for name, _, _ in LAYERS)
    assert spec.param_shapes() == {k: p.shape for k, p in table.items()}


def test_glorot_uniform_bound():
    rng = np.random.default_rng(0)
    for factor in (6.0, 2.0):
        bound = math.sqrt(factor / (300 + 100))
        draw = GlorotUniform(300, 100, factor)(rng, (300, 100), "float64")
        assert draw.shape == (300, 100) and draw.dtype == np.float64
        assert np.abs(draw).max() <= bound
        assert draw.min() < -0.99 * bound and draw.max() > 0.99 * bound
        assert np.mean(draw) == pytest.approx(0.0, abs=0.01 * bound)


@pytest.mark.parametrize("activation, dtype", [("tanh", "float32"), ("logistic", "float64")])
def test_init_params_are_the_old_glorot_draws(activation, dtype):
    # What glorot_uniform gave before the parameter table: one generator of the seed,
    # each layer's weight then its bias, layers in table order.
    spec, _ = _spec(activation=activation, dtype=dtype)
    factor = 2.0 if activation == "logistic" else 6.0
    params = spec.init_params(7)
    assert list(params) == list(spec.param_table())
    rng = np.random.default_rng(7)
    for name, fan_in, fan_out in LAYERS:
        bound = math.sqrt(factor / (fan_in + fan_out))
        weight = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
        bias = rng.uniform(-bound, bound, fan_out).astype(dtype)
        for key, expected in ((f"{name}.weight", weight), (f"{name}.bias", bias)):
            assert params[key].dtype == np.dtype(dtype), key
            np.testing.assert_array_equal(params[key], expected, err_msg=key)
            assert np.abs(params[key]).max() <= bound, key
    # One value by hand: the generator's first number, scaled to [-b, b).
    bound = math.sqrt(factor / (5 + 6))
    first = -bound + 2 * bound * np.random.default_rng(7).random()
    assert params["embed.weight"][0, 0] == np.asarray(first).astype(dtype)
    # The same seed, the same parameters; another seed, others.
    again, other = spec.init_params(7), spec.init_params(8)
    for key, value in params.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)
        assert not np.any(other[key] == value), key


# --------------------------------------------------------------------- estimator


def _moons_classifier(**kwargs):
    return ODEClassifier(backend="torch", hidden_layer_sizes=(16,), latent_dim=8, max_iter=100,
                         learning_rate_init=0.01, random_state=0, **kwargs)


def test_classifier_fits_moons():
    X, y = make_moons(100, noise=0.1, random_state=0)
    clf = _moons_classifier().fit(X, y)
    assert clf.backend_ == "torch"
    assert clf.score(X, y) > 0.9
    assert clf.nfe_["nfe_forward"] > 0 and clf.nfe_["nfe_backward"] > 0
    assert all(v.dtype == np.float32 for v in clf.params_.values())
    stats = clf.inference_stats(X[:5])
    assert stats["nfe_forward"].shape == (5,) and np.all(stats["nfe_forward"] > 0)
    # A model fitted on torch predicts on the reference engine.
    reference = np.exp(clf.set_params(backend="reference").predict_log_proba(X))
    np.testing.assert_allclose(reference, clf.set_params(backend="torch").predict_proba(X),
                               atol=1e-4)


def test_same_random_state_same_model():
    X, y = make_moons(60, noise=0.2, random_state=1)
    first = ODEClassifier(backend="torch", hidden_layer_sizes=(8,), latent_dim=4, max_iter=5,
                          random_state=3).fit(X, y)
    proba = first.predict_proba(X)
    params = {k: v.copy() for k, v in first.params_.items()}
    first.fit(X, y)  # refit
    second = ODEClassifier(backend="torch", hidden_layer_sizes=(8,), latent_dim=4, max_iter=5,
                           random_state=3).fit(X, y)
    for clf in (first, second):
        np.testing.assert_array_equal(clf.predict_proba(X), proba)
        for key, value in params.items():
            np.testing.assert_array_equal(clf.params_[key], value)


def test_sklearn_subset_invariance():
    from sklearn.utils.estimator_checks import check_methods_subset_invariance

    check_methods_subset_invariance(
        "ODEClassifier", ODEClassifier((8,), latent_dim=4, backend="torch", max_iter=3,
                                       random_state=0))


# ------------------------------------------------------------------------ threads


def test_limit_threads_restores_torch_threads():
    engine = odeplug.get_backend("torch")
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        with engine.limit_threads(other):
            assert torch.get_num_threads() == other
        assert torch.get_num_threads() == before
        with pytest.raises(RuntimeError, match="inside"):
            with engine.limit_threads(other):
                raise RuntimeError("inside")
        assert torch.get_num_threads() == before
        with engine.limit_threads(before):
            assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_backend_import_does_not_import_torch():
    code = ("import sys, odeplug, odeplug_backends.torch as b; b.TorchBackend(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
