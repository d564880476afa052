"""LatentODERegressor's failure paths, on every engine: a diverged fit that keeps a model
which predicts, divergence inside a step read as divergence, times no engine can train
on refused alike, ``score`` validating ``y`` as ``fit`` does, and time arrays of strings
refused naming their argument (``odeplug.odeint``'s ``y0`` too)."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest

import odeplug
from odeplug import LatentODERegressor, SolverError, TrainingDivergedError
from tests.estimators.test_latent import OBS_TIMES, TARGET_TIMES, X_SMALL, Y_SMALL, small

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X, Y = X_SMALL[:8], Y_SMALL[:8]
# Adam's first step moves every parameter by about this: the encoder's log-variance
# then overflows exp, so the next step's initial latent state is not finite.
BLOWING_UP = dict(learning_rate_init=1e4)


def tiny(**kwargs) -> LatentODERegressor:
    """Two minibatches of 4 series an epoch, in every fit of this module (JAX compiles
    one training step for them)."""
    return small(**{"max_iter": 2, "batch_size": 4, **kwargs})


class _Fitted(dict):
    """A small fitted model per engine, made on first use."""

    def __missing__(self, name):
        self[name] = tiny(backend=name).fit(X, Y)
        return self[name]


@pytest.fixture(scope="module")
def fitted():
    return _Fitted()


def _solver_cause(error: BaseException) -> SolverError | None:
    while error is not None and not isinstance(error, SolverError):
        error = error.__cause__
    return error


def _state(model: LatentODERegressor) -> dict:
    return {"params": {k: v.copy() for k, v in model.params_.items()},
            "noise_std": model.noise_std_.copy(), "n_iter": model.n_iter_,
            "loss_curve": list(model.loss_curve_)}


def _assert_unchanged(model: LatentODERegressor, before: dict) -> None:
    for key, value in before["params"].items():
        np.testing.assert_array_equal(model.params_[key], value)
    np.testing.assert_array_equal(model.noise_std_, before["noise_std"])
    assert model.n_iter_ == before["n_iter"]
    assert model.loss_curve_ == before["loss_curve"]


# ------------------------------------------- 1. a diverged fresh fit keeps a model


@pytest.mark.parametrize("refit", [False, True], ids=["unfitted", "refit"])
def test_a_diverged_fresh_fit_keeps_a_model_that_predicts(engine, refit, tmp_path):
    model = tiny(backend=engine.name)
    if refit:  # a fitted model's noise_std_ differs from the initial parameters'
        model.fit(X, Y)
    model.set_params(**BLOWING_UP)
    with pytest.raises(TrainingDivergedError, match="keeps the last parameters"):
        model.fit(X, Y)
    # noise_std_ belongs to the kept parameters (the initial ones here), not a former fit.
    np.testing.assert_allclose(model.noise_std_,
                               np.exp(model.params_["likelihood.log_std"]), rtol=1e-6)
    np.testing.assert_allclose(model.noise_std_, 1.0)
    prediction = model.predict(X)
    assert prediction.shape == Y.shape and np.all(np.isfinite(prediction))
    assert model.transform(X).shape == (len(X), 2)
    assert np.isfinite(model.score(X, Y))
    path = tmp_path / "kept.odeplug"
    odeplug.save(model, path)
    loaded = odeplug.load(path)
    np.testing.assert_allclose(loaded.predict(X), prediction, rtol=1e-12)
    np.testing.assert_array_equal(loaded.noise_std_, model.noise_std_)


# ---------------------------- 2. warm start and partial_fit: divergence, one outcome


@pytest.mark.parametrize("how", ["partial_fit", "warm_start"])
def test_divergence_inside_a_step_reads_as_divergence(engine, how):
    model = tiny(backend=engine.name).fit(X, Y)
    before = _state(model)
    model.set_params(**BLOWING_UP)
    with pytest.raises(TrainingDivergedError, match="keeps its fit from before") as error:
        if how == "partial_fit":
            model.partial_fit(X, Y)
        else:
            model.set_params(warm_start=True).fit(X, Y)
    # The same cause on every engine: the latent state that starts a solve is not finite.
    cause = _solver_cause(error.value)
    assert cause is not None and cause.reason == "non_finite" and cause.t == 0.0
    _assert_unchanged(model, before)  # restored as it was, as the loop's contract says
    assert np.all(np.isfinite(model.predict(X)))


def test_a_non_finite_encoder_state_in_a_step_is_divergence(engine):
    short = X[:, :3]  # three encoder steps: a quick compilation on JAX
    model = tiny(backend=engine.name, max_iter=1, encoder="ode_rnn",
                 encoder_hidden_sizes=(8, 8), obs_times=OBS_TIMES[:3]).fit(short, Y)
    model = pickle.loads(pickle.dumps(model))  # as loaded: training starts from params_
    model.params_["encoder.gru.bias_ih"][:] = np.nan
    before = _state(model)
    with pytest.raises(TrainingDivergedError, match="keeps its fit from before") as error:
        model.partial_fit(short, Y)
    cause = _solver_cause(error.value)  # the encoder's ODE, over s in [0, 1]
    assert cause is not None and cause.reason == "non_finite" and cause.t == 0.0
    for key, value in before["params"].items():
        np.testing.assert_array_equal(model.params_[key], value)
    assert model.n_iter_ == before["n_iter"]


def test_a_non_finite_draw_at_inference_fails_alike(engine, fitted):
    def failure(name):
        model = copy.deepcopy(fitted[name])
        model.params_["encoder.head.bias"][2:] = 1500.0  # exp(750): the draws overflow
        with pytest.raises(SolverError) as error:
            model.predict(X, return_std=True)
        return error.value

    reference, other = failure("reference"), failure(engine.name)
    assert other.reason == "non_finite" and other.t == 0.0
    assert str(other) == str(reference)


def test_huge_times_fit_in_the_model_units_or_are_refused_alike(engine, fitted):
    # A fresh fit measures time in units of its series' median span / 4 (time_scale_):
    # times of 1e300 train as those of a span of 4, on every engine.
    huge = dict(obs_times=OBS_TIMES * 1e300, target_times=TARGET_TIMES * 1e300)
    scaled = 4.0 / np.ptp(OBS_TIMES)  # the same series in a span of 4
    plain = dict(obs_times=OBS_TIMES * scaled, target_times=TARGET_TIMES * scaled)
    model = tiny(backend=engine.name, **huge).fit(X, Y)
    same = tiny(backend=engine.name, **plain).fit(X, Y)
    assert model.time_scale_ > 1e299 and same.time_scale_ == 1.0
    np.testing.assert_allclose(model.predict(X), same.predict(X), rtol=1e-4, atol=1e-5)

    # A fitted model keeps its units: times its training never spanned are refused.

    model = fitted[engine.name]
    before = _state(model)
    per_series = dict(times=np.tile(OBS_TIMES * 1e300, (len(X), 1)),
                      target_times=np.tile(TARGET_TIMES * 1e300, (len(X), 1)))
    for call in (model.partial_fit, model.set_params(warm_start=True).fit):
        with pytest.raises(ValueError, match="times span 3e.300"):
            call(X, Y, **per_series)
    model.set_params(warm_start=False)
    _assert_unchanged(model, before)
    with pytest.raises(ValueError, match="target_times span 1e.300"):
        model.predict(X, target_times=[1e300])
    with pytest.raises(ValueError, match="eval_times span 1e.300"):
        model.predict_trajectory(X, [0.0, 1e300])


# ----------------------------------------------------- 4. score validates y


def test_score_validates_y_as_fit_does(engine, fitted):
    model = fitted[engine.name]
    with pytest.raises(ValueError, match="y has shape"):
        model.score(X, Y[:5])
    with pytest.raises(ValueError, match="y has shape"):
        model.score(X, Y[:, :2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning of a mean of nothing
        with pytest.raises(ValueError, match="NaN only: there is no target to score"):
            model.score(X, np.full_like(Y, np.nan))
        one = np.full_like(Y, np.nan)
        one[0, 0, 0] = 1.0
        with pytest.raises(ValueError, match="R² is undefined"):
            model.score(X, one)
        assert np.isfinite(model.score(X, Y))


# ------------------------------------------------ 6. time arrays of strings


def _string_times(model):
    n = len(X)
    return {
        "obs_times": lambda: small(obs_times=OBS_TIMES.astype(str)).fit(X, Y),
        "times": lambda: model.predict(X, times=np.full((n, 10), "x")),
        "target_times": lambda: model.predict(X, target_times=["3.5"]),
        "target_times ": lambda: small(target_times=["a", "b", "c"]).fit(X, Y),
        "eval_times": lambda: model.predict_trajectory(X, ["0", "1"]),
        "eval_times ": lambda: model.sample_trajectories(X, ["0"], 2),
    }


def test_string_times_are_refused_naming_the_argument(engine, fitted):
    model = fitted[engine.name]
    for name, call in _string_times(model).items():
        with pytest.raises(ValueError, match=rf"^{name.strip()} must hold real numbers"):
            call()
    with pytest.raises(ValueError, match="^times must hold real numbers"):
        small(backend=engine.name).fit(X, Y, times=np.full((len(X), 10), "x"))


@pytest.mark.parametrize("y0", [np.array(["a", "b"]), ["1.0"], "1.0"])
def test_odeint_refuses_a_string_y0_alike(engine, y0):
    def field(t, y, args):
        return -y

    t = np.array([0.0, 1.0])
    with pytest.raises(TypeError) as reference:
        odeplug.odeint(field, y0, t, backend="reference")
    assert str(reference.value).startswith("y0 must be a floating-point array")
    with pytest.raises(TypeError) as other:
        odeplug.odeint(field, y0, t, backend=engine.name)
    assert str(other.value) == str(reference.value)
    with pytest.raises(TypeError, match="^t must be a real array of times"):
        odeplug.odeint(field, np.ones(2), ["0", "1"], backend=engine.name)
