"""ODEClassifier as a scikit-learn citizen, on every installed engine."""

from __future__ import annotations

import pickle
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import odeplug
from odeplug import BackendNotAvailableError, ODEClassifier, TrainingDivergedError
from tests.conftest import ENGINES

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X_MOONS, Y_MOONS = make_moons(240, noise=0.15, random_state=0)
X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = train_test_split(X_MOONS, Y_MOONS, test_size=0.25,
                                                    random_state=0, stratify=Y_MOONS)


def small(**kwargs) -> ODEClassifier:
    """A model that fits the moons in about a second on any engine."""
    params = dict(hidden_layer_sizes=(16, 16), max_iter=60, learning_rate_init=0.02,
                  alpha=1e-4, batch_size=64, random_state=0)
    params.update(kwargs)
    return ODEClassifier(**params)


def installed_engines() -> list[str]:
    info = odeplug.available_backends()
    return [name for name in ENGINES if info[name].available]


class _FittedModels(dict):
    """One fitted model per engine, fitted on first use, shared by read-only tests."""

    def __missing__(self, name: str) -> ODEClassifier:
        self[name] = small(backend=name).fit(X_TRAIN, Y_TRAIN)
        return self[name]

    def all(self) -> dict[str, ODEClassifier]:
        return {name: self[name] for name in installed_engines()}


@pytest.fixture(scope="module")
def fitted() -> _FittedModels:
    return _FittedModels()


def test_fits_and_predicts(engine, fitted):
    clf = fitted[engine.name]
    assert clf.score(X_TEST, Y_TEST) > 0.9
    assert clf.backend_ == engine.name
    proba = clf.predict_proba(X_TEST)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(clf.predict(X_TEST), clf.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X_TEST), np.log(proba), atol=1e-6)
    assert set(clf.params_) == set(clf._fitted_spec().param_shapes())
    assert clf.n_iter_ == len(clf.loss_curve_) and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.nfe_["forward"] > 0
    assert clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None


def test_fitted_on_one_engine_predicts_on_every_other(fitted):
    models = fitted.all()
    for source, clf in models.items():
        labels = clf.predict(X_TEST)
        for target in models:
            moved = pickle.loads(pickle.dumps(clf)).set_params(backend=target)
            agreement = np.mean(moved.predict(X_TEST) == labels)
            assert agreement >= 0.99, (source, target, agreement)


def test_looser_tolerance_at_predict_costs_fewer_evaluations(engine, fitted):
    clf = pickle.loads(pickle.dumps(fitted[engine.name]))
    tight = clf.set_params(rtol=1e-6, atol=1e-7).inference_stats(X_TEST)["nfe_forward"]
    loose = clf.set_params(rtol=1e-1, atol=1e-2).inference_stats(X_TEST)["nfe_forward"]
    assert tight.shape == (len(X_TEST),)
    assert loose.mean() < tight.mean()
    # Predicting records nothing on the estimator.
    before = dict(clf.__dict__)
    clf.predict(X_TEST)
    assert clf.__dict__.keys() == before.keys()


def test_same_random_state_same_predictions(engine):
    a = small(backend=engine.name, max_iter=10).fit(X_TRAIN, Y_TRAIN)
    b = small(backend=engine.name, max_iter=10).fit(X_TRAIN, Y_TRAIN)
    np.testing.assert_array_equal(a.predict_proba(X_TEST), b.predict_proba(X_TEST))


def test_predict_row_independent(engine, fitted):
    clf = fitted[engine.name]
    full = clf.predict_proba(X_TEST)
    # On a GPU, JAX picks its matrix kernels by the batch's shape: float32 rounding differs.
    atol = 1e-6 if engine.name == "jax" and engine.jax.default_backend() != "cpu" else 1e-9
    np.testing.assert_allclose(clf.predict_proba(X_TEST[:7]), full[:7], rtol=1e-7, atol=atol)


def test_pickle_and_joblib_round_trip(engine, fitted, tmp_path):
    clf = fitted[engine.name]
    expected = clf.predict_proba(X_TEST)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X_TEST), expected)
    path = tmp_path / "model.joblib"
    joblib.dump(clf, path)
    np.testing.assert_array_equal(joblib.load(path).predict_proba(X_TEST), expected)


def test_pipeline_and_cross_val_score(engine):
    pipe = make_pipeline(StandardScaler(), small(backend=engine.name, max_iter=30))
    scores = cross_val_score(pipe, X_MOONS, Y_MOONS, cv=3)
    assert scores.mean() > 0.85


def test_grid_search_over_engines_and_tolerance_in_parallel():
    grid = GridSearchCV(
        small(max_iter=20),
        {"backend": installed_engines(), "rtol": [1e-3, 1e-1]},
        cv=2, n_jobs=2, error_score="raise",
    ).fit(X_MOONS, Y_MOONS)
    assert len(grid.cv_results_["params"]) == 2 * len(installed_engines())
    assert grid.best_score_ > 0.8
    assert grid.best_estimator_.backend_ == grid.best_params_["backend"]


def test_clone_keeps_params_drops_fit(fitted):
    clf = fitted["reference"]
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    assert not hasattr(copy, "params_")


def test_string_and_object_labels(engine):
    labels = np.array(["left", "right"])[Y_TRAIN]
    clf = small(backend=engine.name, max_iter=20).fit(X_TRAIN, labels.astype(object))
    assert set(clf.predict(X_TEST)) <= {"left", "right"}
    assert list(clf.classes_) == ["left", "right"]


def test_config_context_chooses_engine(engine):
    with odeplug.config_context(backend=engine.name):
        clf = small(max_iter=2).fit(X_TRAIN, Y_TRAIN)
    assert clf.backend_ == engine.name


def test_warm_start_and_partial_fit_continue(engine):
    clf = small(backend=engine.name, max_iter=5, warm_start=True).fit(X_TRAIN, Y_TRAIN)
    clf.fit(X_TRAIN, Y_TRAIN)
    assert clf.n_iter_ == 10
    inc = small(backend=engine.name)
    for _ in range(3):
        inc.partial_fit(X_TRAIN, Y_TRAIN, classes=[0, 1])
    assert inc.n_iter_ == 3 and len(inc.loss_curve_) == 3
    assert inc.loss_curve_[-1] < inc.loss_curve_[0]


def test_early_stopping_keeps_best_validation_params(engine):
    clf = small(backend=engine.name, early_stopping=True, max_iter=30,
                n_iter_no_change=3).fit(X_TRAIN, Y_TRAIN)
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None


def test_max_iter_reached_warns():
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        warnings.simplefilter("always")
        small(max_iter=2).fit(X_TRAIN, Y_TRAIN)


# ------------------------------------------------------------------- bad input

def _assert_unfitted(clf):
    assert not hasattr(clf, "params_") and not hasattr(clf, "classes_")
    assert not hasattr(clf, "n_features_in_")


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (np.inf, "infinity")])
def test_nan_inf_in_X(bad, message):
    X = X_TRAIN.copy()
    X[3, 1] = bad
    clf = small()
    with pytest.raises(ValueError, match=message):
        clf.fit(X, Y_TRAIN)
    _assert_unfitted(clf)


@pytest.mark.parametrize("X, message", [
    (np.zeros((0, 2)), "0 sample"),
    (np.zeros((10, 2, 2)), "3"),
])
def test_empty_and_3d_X(X, message):
    clf = small()
    with pytest.raises(ValueError, match=message):
        clf.fit(X, np.arange(len(X)) % 2)
    _assert_unfitted(clf)


def test_single_class():
    clf = small()
    with pytest.raises(ValueError, match="only one class"):
        clf.fit(X_TRAIN, np.zeros(len(X_TRAIN)))
    _assert_unfitted(clf)


def test_wrong_number_of_features_at_predict(fitted):
    clf = fitted["reference"]
    with pytest.raises(ValueError, match="features"):
        clf.predict(np.zeros((3, 5)))


def test_predict_before_fit():
    with pytest.raises(NotFittedError):
        small().predict(X_TEST)


def test_unknown_backend_leaves_nothing():
    clf = small(backend="tpu")
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        clf.fit(X_TRAIN, Y_TRAIN)
    _assert_unfitted(clf)


def test_missing_engine_names_extra(monkeypatch):
    from odeplug.backend import _classes, _instances

    cls = odeplug.backend._backend_class("jax")
    monkeypatch.setattr(cls, "requires", ("odeplug-no-such-distribution",))
    monkeypatch.delitem(_instances, "jax", raising=False)
    assert "jax" in _classes
    clf = small(backend="jax")
    with pytest.raises(BackendNotAvailableError, match=r'pip install "odeplug\[jax\]"'):
        clf.fit(X_TRAIN, Y_TRAIN)
    _assert_unfitted(clf)


def test_failed_refit_keeps_previous_fit(fitted):
    clf = pickle.loads(pickle.dumps(fitted["reference"]))
    params = {k: v.copy() for k, v in clf.params_.items()}
    with pytest.raises(ValueError):
        clf.fit(X_TRAIN[:, :1] * np.nan, Y_TRAIN)
    for key, value in params.items():
        np.testing.assert_array_equal(clf.params_[key], value)
    assert clf.n_features_in_ == 2


@pytest.mark.parametrize("params, error", [
    (dict(hidden_layer_sizes=(0,)), ValueError),
    (dict(activation="gelu"), ValueError),
    (dict(solver="rk45"), ValueError),
    (dict(solver="rk4"), ValueError),  # fixed-step solver without step_size
    (dict(rtol=0.0), ValueError),
    (dict(max_iter=0), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(adjoint="yes"), TypeError),
])
def test_bad_parameters(params, error):
    clf = small(**params)
    with pytest.raises(error):
        clf.fit(X_TRAIN, Y_TRAIN)
    _assert_unfitted(clf)


def test_divergence_keeps_best_parameters(engine):
    clf = small(backend=engine.name, learning_rate_init=1e6, alpha=0.0, max_iter=50)
    with pytest.raises(TrainingDivergedError, match="diverged at epoch") as info:
        clf.fit(X_TRAIN, Y_TRAIN)
    assert info.value.epoch >= 1
    # The estimator is usable, with finite parameters.
    assert all(np.all(np.isfinite(v)) for v in clf.params_.values())
    assert clf.predict(X_TEST).shape == (len(X_TEST),)


def test_keyboard_interrupt_keeps_best_parameters(monkeypatch):
    from odeplug.reference.models import ODENetProgram

    original = ODENetProgram.step
    calls = {"n": 0}

    def interrupted(self, state, batch):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return original(self, state, batch)

    monkeypatch.setattr(ODENetProgram, "step", interrupted)
    clf = small(max_iter=50)
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(X_TRAIN, Y_TRAIN)
    assert 1 <= clf.n_iter_ < 50
    assert clf.predict(X_TEST).shape == (len(X_TEST),)
