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
    params = dict(hidden_layer_sizes=(16,), latent_dim=16, max_iter=60,
                  learning_rate_init=0.02,
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
    assert set(clf.params_) == set(clf._spec.param_shapes())
    assert clf.n_iter_ == len(clf.loss_curve_) and clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.nfe_["nfe_forward"] > 0
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
    # XLA and BLAS pick their kernels by the batch's shape, so float32 rows may round
    # differently in another batch: scikit-learn's subset-invariance check allows
    # 1e-7 absolute, and so does this test.
    np.testing.assert_allclose(clf.predict_proba(X_TEST[:7]), full[:7], rtol=1e-7, atol=1e-7)


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


def test_the_adaptive_schedule_divides_the_step_size_on_plateaus(engine):
    # tol=10: no epoch after the first counts as progress, so with n_iter_no_change=1
    # every third epoch ends a plateau, and the next ones step a fifth as far.
    settings = dict(backend=engine.name, max_iter=6, tol=10.0)
    adaptive = small(learning_rate="adaptive", n_iter_no_change=1, **settings).fit(
        X_TRAIN, Y_TRAIN)
    lr = adaptive.learning_rate_init
    np.testing.assert_allclose(adaptive.curves_["learning_rate"],
                               [lr, lr, lr, lr / 5, lr / 5, lr / 25], rtol=1e-12)
    assert adaptive.n_iter_ == 6
    # A constant step under the same draws: the same first three epochs, then other
    # losses, from the other step sizes the engine was given.
    constant = small(n_iter_no_change=10, **settings).fit(X_TRAIN, Y_TRAIN)
    assert constant.curves_["learning_rate"] == [lr] * 6
    assert adaptive.loss_curve_[:3] == constant.loss_curve_[:3]
    assert adaptive.loss_curve_[3] != constant.loss_curve_[3]
    # Under the constant schedule the same plateau stops the fit.
    assert small(n_iter_no_change=1, **settings).fit(X_TRAIN, Y_TRAIN).n_iter_ == 3


def test_early_stopping_keeps_best_validation_params(engine, monkeypatch):
    # The validation score is the accuracy of the program's predict on the held-out
    # split: record the parameters of every epoch it scores.
    cls = _program_class(engine)
    scored, held_out = [], []
    original = cls.predict

    def predict(self, params, X, hyper):
        scored.append({k: np.array(v) for k, v in params.items()})
        held_out.append(np.array(X))
        return original(self, params, X, hyper)

    monkeypatch.setattr(cls, "predict", predict)
    clf = small(backend=engine.name, early_stopping=True, max_iter=30, n_iter_no_change=3,
                learning_rate_init=0.05).fit(X_TRAIN, Y_TRAIN)
    monkeypatch.undo()
    assert len(clf.validation_scores_) == clf.n_iter_ == len(scored)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    best = int(np.argmax(clf.validation_scores_))
    assert best < clf.n_iter_ - 1  # stopped after epochs without progress
    for key, value in scored[best].items():
        np.testing.assert_array_equal(clf.params_[key], value)
    # The best score is what it claims, computed outside the training loop: the fitted
    # model's accuracy on the held-out rows (found in X_TRAIN, with their labels).
    rows = [int(np.argmin(np.abs(X_TRAIN - x).sum(axis=1))) for x in held_out[best]]
    assert len(set(rows)) == len(rows) == round(0.1 * len(X_TRAIN))
    np.testing.assert_allclose(X_TRAIN[rows], held_out[best], rtol=1e-6)
    accuracy = np.mean(clf.predict(X_TRAIN[rows]) == Y_TRAIN[rows])
    assert clf.best_validation_score_ == pytest.approx(accuracy, abs=1e-12)
    assert clf.best_validation_score_ > np.mean(Y_TRAIN[rows] == np.bincount(
        Y_TRAIN[rows]).argmax())  # better than the majority class: it did learn
    assert clf.best_loss_ is None


def test_partial_fit_refuses_early_stopping():
    clf = small(early_stopping=True)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clf.partial_fit(X_TRAIN, Y_TRAIN, classes=[0, 1])
    _assert_unfitted(clf)


def test_max_iter_reached_warns_at_the_callers_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small(max_iter=2).fit(X_TRAIN, Y_TRAIN)
    (warning,) = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert "Maximum iterations (2)" in str(warning.message)
    assert warning.filename == __file__  # not a line inside odeplug


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
    # As on a machine without jax: its distribution has no metadata.
    import importlib.metadata

    from odeplug.backend import _instances

    real_version = importlib.metadata.version

    def version(dist):
        if dist == "jax":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.delitem(_instances, "jax", raising=False)
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
    (dict(latent_dim=0), ValueError),
    (dict(activation="gelu"), ValueError),
    (dict(embedding_activation="gelu"), ValueError),
    (dict(solver="rk45"), ValueError),
    (dict(solver="rk4"), ValueError),  # fixed-step solver without step_size
    (dict(rtol=0.0), ValueError),
    (dict(max_iter=0), ValueError),
    (dict(batch_size=0), ValueError),
    (dict(adjoint="yes"), TypeError),
    (dict(backend=3), TypeError),
    (dict(verbose="loud"), TypeError),
    (dict(warm_start="yes"), TypeError),
    (dict(early_stopping=2), TypeError),
    (dict(augment_dim=-1), ValueError),
    (dict(validation_fraction=1.0), ValueError),
    (dict(t1=0.0), ValueError),
    (dict(step_size=-0.1), ValueError),
    (dict(random_state="seed"), TypeError),
])
def test_bad_parameters(params, error):
    clf = small(**params)
    with pytest.raises(error):
        clf.fit(X_TRAIN, Y_TRAIN)
    _assert_unfitted(clf)


def _diverging(engine, **kwargs):
    # 200 x 5 data and max_iter=3, as a new user tried it: one batch per epoch.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    return X, y, small(backend=engine.name, max_iter=3, **kwargs)


def test_diverged_warm_start_keeps_the_previous_fit(engine):
    X, y, clf = _diverging(engine, warm_start=True)
    clf.fit(X, y)
    before = clf.predict_proba(X)
    history = (clf.n_iter_, list(clf.loss_curve_), {k: list(v) for k, v in clf.curves_.items()})
    params = {k: v.copy() for k, v in clf.params_.items()}
    with pytest.raises(TrainingDivergedError, match="keeps its fit from before"):
        clf.set_params(learning_rate_init=1e6).fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    assert (clf.n_iter_, clf.loss_curve_, clf.curves_) == history  # no record of the failure
    for key, value in params.items():
        np.testing.assert_array_equal(clf.params_[key], value)
    # It continues from there.
    clf.set_params(learning_rate_init=1e-3).fit(X, y)
    assert clf.n_iter_ == 6


def test_diverged_fresh_fit_keeps_parameters_that_predict(engine):
    X, y, clf = _diverging(engine, learning_rate_init=1e6)
    with pytest.raises(TrainingDivergedError, match="diverged at epoch") as info:
        clf.fit(X, y)
    assert "keeps the last parameters whose training loss was finite" in str(info.value)
    assert all(np.all(np.isfinite(v)) and np.abs(v).max() < 10 for v in clf.params_.values())
    assert clf.predict(X).shape == (len(X),)  # no SolverError
    assert clf.n_iter_ == len(clf.loss_curve_) <= 3


def test_failed_partial_fit_keeps_the_previous_fit(engine):
    X, y, clf = _diverging(engine)
    clf.partial_fit(X, y, classes=[0, 1])
    before = clf.predict_proba(X)
    with pytest.raises(TrainingDivergedError):
        clf.set_params(learning_rate_init=1e6).partial_fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    assert clf.n_iter_ == 1


def _program_class(engine):
    return type(odeplug.get_backend(engine.name).make_program(small()._spec_of(2, 2, "float32")))


def _interrupt_at(monkeypatch, engine, call):
    cls = _program_class(engine)
    original = cls.step
    calls = {"n": 0}

    def step(self, state, batch, hyper):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(self, state, batch, hyper)

    monkeypatch.setattr(cls, "step", step)


def test_ctrl_c_in_the_first_epoch_restores_and_propagates(engine, monkeypatch):
    # Also during JAX's compilation, which happens in the first step.
    _interrupt_at(monkeypatch, engine, call=1)
    clf = small(backend=engine.name)
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X_TRAIN, Y_TRAIN)
    _assert_unfitted(clf)


def test_ctrl_c_in_the_first_epoch_of_a_warm_start_keeps_the_previous_fit(engine, fitted,
                                                                         monkeypatch):
    clf = pickle.loads(pickle.dumps(fitted[engine.name])).set_params(warm_start=True)
    before, n_iter = clf.predict_proba(X_TEST), clf.n_iter_
    _interrupt_at(monkeypatch, engine, call=2)
    with pytest.raises(KeyboardInterrupt):
        clf.fit(X_TRAIN, Y_TRAIN)
    assert clf.n_iter_ == n_iter
    np.testing.assert_array_equal(clf.predict_proba(X_TEST), before)


def test_ctrl_c_after_an_epoch_keeps_the_parameters_and_says_so(engine, monkeypatch):
    _interrupt_at(monkeypatch, engine, call=8)  # 3 batches per epoch: during epoch 3
    clf = small(backend=engine.name, max_iter=50)
    with pytest.warns(UserWarning, match="interrupted during epoch 3") as caught:
        clf.fit(X_TRAIN, Y_TRAIN)
    assert caught[0].filename == __file__
    assert clf.n_iter_ == 2 == len(clf.loss_curve_)
    assert clf.predict(X_TEST).shape == (len(X_TEST),)


def test_failed_validation_solve_is_divergence(engine, monkeypatch):
    cls = _program_class(engine)

    def predict(self, params, X, hyper):
        raise odeplug.SolverError("max_num_steps=3 exceeded at t=0.1", reason="max_num_steps",
                                  t=0.1)

    monkeypatch.setattr(cls, "predict", predict)
    clf = small(backend=engine.name, early_stopping=True, max_iter=5)
    with pytest.raises(TrainingDivergedError, match="validation split failed"):
        clf.fit(X_TRAIN, Y_TRAIN)


def test_grid_over_values_compiles_once_per_batch_shape():
    # Learning rates and tolerances are traced inputs of JAX's compiled step and
    # predict: a 3 x 3 grid compiles each once (per batch shape; one here: every fold
    # has 60 training rows, batches of 32). The architecture is this test's own, so no
    # other test compiled it before.
    pytest.importorskip("jax")
    from odeplug_backends.jax import programs

    X, y = make_moons(120, noise=0.15, random_state=1)
    before = dict(programs.TRACE_COUNTS)
    GridSearchCV(
        small(backend="jax", hidden_layer_sizes=(3,), latent_dim=5, max_iter=2,
              batch_size=32),
        {"learning_rate_init": [1e-3, 1e-2, 3e-2], "rtol": [1e-3, 1e-2, 1e-1]},
        cv=2, refit=False, error_score="raise").fit(X, y)
    compiled = {k: v - before.get(k, 0) for k, v in programs.TRACE_COUNTS.items()
                if v != before.get(k, 0)}  # other families' counters are in the table too
    assert compiled == {"step": 1, "predict": 1}
