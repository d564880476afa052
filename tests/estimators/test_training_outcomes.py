"""What a fit leaves behind when it stops early, is interrupted or diverges, on every
engine (issue #21): parameters, curves, counts and the cached training state of one
moment; a warm start that continues from ``params_``; messages that say what happened;
training-only choices outside the fitted spec; data of huge magnitude."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning

import odeplug
from odeplug import CNFDensity, TrainingDivergedError

X, _ = make_moons(60, noise=0.05, random_state=0)


def small(engine, **kwargs) -> CNFDensity:
    """A flow cheap on every engine: a fixed-step solver, 3 batches of 20 per epoch."""
    params = dict(backend=engine.name, hidden_layer_sizes=(6,), solver="rk4",
                  step_size=0.25, batch_size=20, learning_rate_init=0.02,
                  learning_rate="constant", n_iter_no_change=50, random_state=0)
    params.update(kwargs)
    return CNFDensity(**params)


def fit_quietly(model, data=X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(data)


def program_class(engine):
    return type(odeplug.get_backend(engine.name).make_program(
        small(engine)._spec_of(2, "float64")))


def assert_params_equal(a, b, **tolerance):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], **tolerance)


def warm_step_from(model, data=X):
    """The parameters after one more warm epoch at a negligible step size: where the
    warm start started."""
    model.set_params(warm_start=True, max_iter=1, learning_rate_init=1e-30,
                     early_stopping=False)
    fit_quietly(model, data)
    return model.params_


@pytest.fixture
def steps(engine, monkeypatch):
    """Record the parameters after each training step; ``interrupt_at`` (a call number,
    from 1) raises KeyboardInterrupt there instead of stepping."""
    cls = program_class(engine)
    original = cls.step
    record = {"after": [], "interrupt_at": None}

    def step(self, state, batch, hyper):
        if len(record["after"]) + 1 == record["interrupt_at"]:
            record["interrupt_at"] = None
            raise KeyboardInterrupt
        state, metrics = original(self, state, batch, hyper)
        if hyper.learning_rate:  # not JAX's evaluate, a step of step size 0
            record["after"].append(self.get_params(state))
        return state, metrics

    monkeypatch.setattr(cls, "step", step)
    return record


# ------------------------------------------------------- item 7: one moment


@pytest.mark.parametrize("call", [9, 7])
def test_ctrl_c_keeps_params_curves_and_counts_of_the_last_completed_epoch(engine, steps,
                                                                         call):
    # Three steps per epoch: call 9 is the last step of epoch 3 (two steps of it done),
    # call 7 its first (nothing has computed the loss of epoch 2's parameters yet).
    steps["interrupt_at"] = call
    model = small(engine, max_iter=10)
    with pytest.warns(UserWarning, match="interrupted during epoch 3; keeping the "
                                         "parameters at the end of epoch 2"):
        model.fit(X)
    end_of_epoch_2 = steps["after"][5]  # after step 6
    assert_params_equal(model.params_, end_of_epoch_2, rtol=0, atol=0)
    assert model.n_iter_ == 2 == len(model.loss_curve_) == len(model.curves_["nll"])
    assert model.t_ == 2 * len(X)
    # A warm start continues from params_, not from the interrupted training state.
    assert_params_equal(warm_step_from(model), end_of_epoch_2, rtol=1e-6, atol=1e-9)


def test_ctrl_c_leaves_a_classifier_at_one_moment_too(engine, monkeypatch):
    # The loop is shared: the same on another family (3 batches of 20 per epoch).
    from odeplug import ODEClassifier

    Xc, yc = make_moons(60, noise=0.1, random_state=1)
    model = ODEClassifier(backend=engine.name, hidden_layer_sizes=(), latent_dim=4, batch_size=20,
                          max_iter=10, learning_rate_init=0.05, random_state=0)
    cls = type(odeplug.get_backend(engine.name).make_program(model._spec_of(2, 2,
                                                                            "float32")))
    original, after = cls.step, []

    def step(self, state, batch, hyper):
        if len(after) == 8:
            raise KeyboardInterrupt  # call 9: the last step of epoch 3
        state, metrics = original(self, state, batch, hyper)
        if hyper.learning_rate:
            after.append(self.get_params(state))
        return state, metrics

    monkeypatch.setattr(cls, "step", step)
    with pytest.warns(UserWarning, match="keeping the parameters at the end of epoch 2"):
        model.fit(Xc, yc)
    monkeypatch.undo()
    assert_params_equal(model.params_, after[5], rtol=0, atol=0)
    assert model.n_iter_ == 2 == len(model.loss_curve_)
    model.set_params(warm_start=True, max_iter=1, learning_rate_init=1e-30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Xc, yc)
    assert_params_equal(model.params_, after[5], rtol=1e-6, atol=1e-9)


def test_warm_start_after_early_stopping_continues_from_the_best_parameters(engine,
                                                                          monkeypatch):
    # Validation scores that peak at epoch 2 of 4: the best parameters are not the last.
    scores = iter([-3.0, -1.0, -2.0, -2.5])
    cls = program_class(engine)

    def log_density(self, params, X_val, hyper):
        return np.full(len(X_val), next(scores)), {}

    monkeypatch.setattr(cls, "log_density", log_density)
    model = fit_quietly(small(engine, max_iter=4, early_stopping=True,
                              validation_fraction=0.25))
    assert model.n_iter_ == 4 and np.argmax(model.validation_scores_) == 1
    best = {k: v.copy() for k, v in model.params_.items()}
    monkeypatch.undo()
    assert_params_equal(warm_step_from(model), best, rtol=1e-6, atol=1e-9)


def test_warm_start_after_a_plain_fit_keeps_the_optimiser_state(engine):
    # Where the kept parameters are the state's, the state (Adam's moments) is kept.
    model = fit_quietly(small(engine, max_iter=2))
    assert model._train_state is not None


# ------------------------------------------ item 8: training choices outside the spec


@pytest.mark.parametrize("change", [dict(trace_estimator="hutchinson"),
                                    dict(kinetic_energy=0.0, jacobian_norm=0.0),
                                    dict(objective="flow_matching")])
def test_warm_start_may_change_the_training_choices(engine, change):
    model = fit_quietly(small(engine, max_iter=1, trace_estimator="exact",
                              kinetic_energy=0.1))
    spec = model._spec
    fit_quietly(model.set_params(warm_start=True, **change))
    assert model.n_iter_ == 2 and model._spec == spec
    assert np.all(np.isfinite(model.score_samples(X[:3])))


def test_the_fitted_spec_holds_the_architecture_only(engine):
    model = fit_quietly(small(engine, max_iter=1, trace_estimator="hutchinson"))
    other = fit_quietly(small(engine, max_iter=1, trace_estimator="exact",
                              kinetic_energy=0.0, jacobian_norm=0.0))
    assert model._spec == other._spec
    assert {f for f in vars(model._spec)} == {"n_features", "field_hidden",
                                              "field_activation", "dtype",
                                              "input_shape", "field_layer"}


def test_jax_inference_compiles_once_whatever_the_training_choices():
    pytest.importorskip("jax")
    from odeplug_backends.jax.programs import TRACE_COUNTS

    class Jax:
        name = "jax"

    # An architecture of its own, so that no other test compiled it before.
    fits = [fit_quietly(small(Jax, hidden_layer_sizes=(5, 3), max_iter=1, **choice))
            for choice in (dict(trace_estimator="exact", kinetic_energy=0.1),
                           dict(trace_estimator="hutchinson", kinetic_energy=0.0,
                                jacobian_norm=0.0))]
    fits[0].score_samples(X[:3])
    fits[0].sample(2, random_state=0)
    before = dict(TRACE_COUNTS)
    fits[1].score_samples(X[:3])
    fits[1].sample(2, random_state=0)
    assert TRACE_COUNTS["cnf_log_density"] == before["cnf_log_density"]
    assert TRACE_COUNTS["cnf_flow"] == before["cnf_flow"]


def test_a_file_whose_spec_holds_the_training_choices_loads(engine):
    # Files written before the split hold trace and regularize in the CNFSpec's fields.
    import json

    import safetensors.numpy

    from odeplug._persistence import FORMAT_VERSION, _compact, _digest

    model = fit_quietly(small(engine, max_iter=1))
    buffer = io.BytesIO()
    odeplug.save(model, buffer)
    data = buffer.getvalue()
    size = int.from_bytes(data[:8], "little")
    entry = json.loads(json.loads(data[8:8 + size])["__metadata__"]["odeplug"])
    found = []

    def add_old_fields(node):
        if isinstance(node, dict):
            body = node.get("$dataclass")
            if isinstance(body, dict) and body.get("name") == "odeplug.CNFSpec":
                body["fields"].update(trace="exact", regularize=True)
                found.append(body)
            for value in node.values():
                add_old_fields(value)
        elif isinstance(node, list):
            for value in node:
                add_old_fields(value)

    add_old_fields(entry["model"])
    assert found
    tensors = dict(safetensors.numpy.load(data))
    entry["integrity"] = _digest(FORMAT_VERSION, _compact(entry["model"]), tensors, None)
    old = safetensors.numpy.save(tensors, metadata={"odeplug": json.dumps(entry)})
    loaded = odeplug.load(io.BytesIO(old))
    assert loaded._spec == model._spec
    np.testing.assert_allclose(loaded.score_samples(X[:4]), model.score_samples(X[:4]),
                               rtol=1e-12)
    fit_quietly(loaded.set_params(warm_start=True, trace_estimator="hutchinson"))
    assert loaded.n_iter_ == 2


# ----------------------------------------------------- item 9: what happened, said


def _without_times(message: str) -> str:
    return re.sub(r"t=-?\d[\d.e+-]*(?<!\.)", "t=T", message)


@pytest.mark.parametrize("fitted", [False, True])
def test_a_failed_first_solve_says_what_is_kept_and_the_same_on_every_engine(engine,
                                                                            fitted):
    model = small(engine, solver="dopri5", step_size=None, max_iter=2)
    if fitted:
        fit_quietly(model)
        before = {k: v.copy() for k, v in model.params_.items()}
    with pytest.raises(TrainingDivergedError) as info:
        model.set_params(max_num_steps=2).fit(X)
    kept = ("it keeps its fit from before this call" if fitted
            else "it stays unfitted")
    assert _without_times(str(info.value)) == (
        "training diverged at epoch 1: the ODE solve of a training step failed: the step "
        "budget max_num_steps=2 was exhausted at t=T. Raise max_num_steps, or loosen "
        "rtol/atol; nothing was updated yet, so check the scale of the data too. No step "
        f"was sane: {kept}.")
    if fitted:
        assert_params_equal(model.params_, before, rtol=0, atol=0)
    else:
        assert not hasattr(model, "params_")


def test_the_convergence_warning_names_the_estimator(engine):
    with pytest.warns(ConvergenceWarning) as caught:
        small(engine, max_iter=1).fit(X)
    message = str(caught[0].message)
    assert message == ("CNFDensity: Maximum iterations (1) reached and the optimization "
                       "hasn't converged yet.")
    assert caught[0].filename == __file__


# ------------------------------------------------------ item 3: huge finite data


def test_data_of_huge_magnitude_is_standardised_without_overflow(engine):
    unit = fit_quietly(small(engine, max_iter=2))
    huge = fit_quietly(small(engine, max_iter=2), X * 1e200)
    np.testing.assert_allclose(huge.scale_, unit.scale_ * 1e200, rtol=1e-12)
    np.testing.assert_allclose(huge.mean_, unit.mean_ * 1e200, rtol=1e-12)
    # The same standardised data, so the same model: densities differ by the Jacobian
    # of the change of units, samples by the units.
    np.testing.assert_allclose(huge.score_samples(X[:5] * 1e200),
                               unit.score_samples(X[:5]) - 2 * np.log(1e200), rtol=1e-9)
    np.testing.assert_allclose(huge.sample(3, random_state=0) / 1e200,
                               unit.sample(3, random_state=0), rtol=1e-9)


def test_data_that_cannot_be_standardised_is_refused_and_changes_nothing(engine):
    # Finite values whose distance to their mean overflows float64.
    top = np.finfo(np.float64).max / 1.2
    data = np.column_stack([[top, top, -top, top], [0.0, 1.0, 2.0, 3.0]])
    model = small(engine)
    with pytest.raises(ValueError, match="cannot be standardised in float.*rescale X"):
        model.fit(data)
    assert not hasattr(model, "params_")
