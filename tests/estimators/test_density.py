"""CNFDensity on every installed engine: the density it computes (a closed form, a grid
integral, round trips, samples), the training loss's gradients and Hutchinson's estimate,
agreement between engines, bad input, and scikit-learn citizenship."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from scipy.integrate import quad_vec
from sklearn.base import clone
from sklearn.datasets import make_moons
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import odeplug
from odeplug import CNFDensity, TrainingDivergedError
from odeplug._solver_options import make_solve_config
from odeplug._specs import CNFHyper, CNFSpec, CNFTrainingSpec
from tests.estimators.test_classifier import installed_engines

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Moons in their own units (not standardised: the estimator does it).
X_MOONS = make_moons(240, noise=0.05, random_state=0)[0] * [2.0, 0.5] + [1.0, -3.0]
X_TEST = make_moons(120, noise=0.05, random_state=1)[0] * [2.0, 0.5] + [1.0, -3.0]
TIGHT = dict(rtol=1e-9, atol=1e-11)


def small(**kwargs) -> CNFDensity:
    """A model that fits the moons in a few seconds on any engine (one compilation of
    its step on JAX, shared by the tests that use this configuration)."""
    params = dict(hidden_layer_sizes=(16, 16), max_iter=15, learning_rate_init=0.02,
                  batch_size=80, random_state=0)
    params.update(kwargs)
    return CNFDensity(**params)


class _Fitted(dict):
    """One fitted model per engine, shared by read-only tests."""

    def __missing__(self, name):
        self[name] = small(backend=name).fit(X_MOONS)
        return self[name]


@pytest.fixture(scope="module")
def fitted() -> _Fitted:
    return _Fitted()


def _on(model, engine_name, **settings):
    """The fitted model, scored on another engine with other solver settings."""
    return pickle.loads(pickle.dumps(model)).set_params(backend=engine_name, **settings)


# ------------------------------------------------------------------ the density


@pytest.fixture(scope="module")
def linear():
    """A linear field ``f = z A + t w + b`` (no hidden layer), briefly fitted."""
    return CNFDensity(hidden_layer_sizes=(), max_iter=3, learning_rate_init=0.05,
                      batch_size=120, random_state=0, backend="reference").fit(X_MOONS)


def _closed_form_log_density(model, X):
    """``log p(x)`` of a linear field: ``z(t1) = e^{A t1} x + int_0^t1 e^{A (t1 - s)}
    (s w + b) ds`` and ``int tr = t1 tr(A)``, in the units of X."""
    W, b = model.params_["field.0.weight"], model.params_["field.0.bias"]
    d, t1 = X.shape[1], model.t1
    A, w = W[:d].T.astype(np.float64), W[d].astype(np.float64)
    shift = quad_vec(lambda s: scipy.linalg.expm(A * (t1 - s)) @ (s * w + b), 0.0, t1,
                     epsabs=1e-14, epsrel=1e-13)[0]
    z1 = ((X - model.mean_) / model.scale_) @ scipy.linalg.expm(A * t1).T + shift
    log_base = -0.5 * np.sum(z1**2, axis=1) - 0.5 * d * np.log(2 * np.pi)
    return log_base + t1 * np.trace(A) - np.sum(np.log(model.scale_))


def test_linear_field_matches_the_closed_form(engine, linear):
    model = _on(linear, engine.name, **TIGHT)
    np.testing.assert_allclose(model.score_samples(X_TEST),
                               _closed_form_log_density(linear, X_TEST), rtol=0, atol=1e-6)


def test_density_integrates_to_one_on_a_grid(fitted):
    # On torch (the fastest row solver for 10^4 rows); the other engines score the same
    # rows alike (test_same_parameters_same_scores_on_every_engine).
    need_torch = "torch" in installed_engines()
    model = _on(fitted["torch" if need_torch else "reference"],
                "torch" if need_torch else "reference", rtol=1e-6, atol=1e-8)
    lo, hi = X_MOONS.min(0) - 4 * X_MOONS.std(0), X_MOONS.max(0) + 4 * X_MOONS.std(0)
    xs, ys = (np.linspace(lo[i], hi[i], 100) for i in range(2))
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert np.sum(np.exp(model.score_samples(grid))) * cell == pytest.approx(1.0, abs=0.01)


def test_inverse_transform_undoes_transform(engine, fitted):
    model = _on(fitted[engine.name], engine.name, rtol=1e-8, atol=1e-10)
    Z = model.transform(X_TEST[:20])
    np.testing.assert_allclose(model.inverse_transform(Z), X_TEST[:20], rtol=0, atol=1e-6)


def test_transform_of_data_is_the_flow_that_scores_it(engine, fitted):
    # transform(X) of data (not of samples, which only round-trips base draws): the
    # change of variables log p(x) = log N(T(x)) + log |det dT/dx|, with the Jacobian
    # by central differences of transform alone, independent of the trace integral
    # behind score_samples.
    model = _on(fitted[engine.name], engine.name, rtol=1e-10, atol=1e-12)
    X, h = X_TEST[:8], 1e-4
    d = X.shape[1]
    steps = [X + h * e for e in np.eye(d)] + [X - h * e for e in np.eye(d)]
    Z, *moved = np.split(model.transform(np.concatenate([X, *steps])), 2 * d + 1)
    jacobian = np.stack([(moved[i] - moved[d + i]) / (2 * h) for i in range(d)], axis=2)
    log_det = np.linalg.slogdet(jacobian)[1]
    log_base = scipy.stats.multivariate_normal(np.zeros(d)).logpdf(Z)
    np.testing.assert_allclose(model.score_samples(X), log_base + log_det, rtol=0,
                               atol=1e-5)


def test_samples_follow_the_data(fitted):
    # A fitted flow's samples are where the data is: their mean log-density under the
    # model is that of held-out data, to sampling error.
    model = fitted["reference"]
    samples = model.sample(300, random_state=0)
    assert abs(model.score(samples) - model.score(X_TEST)) < 0.3


def test_same_parameters_same_scores_on_every_engine(fitted):
    engines = installed_engines()
    reference = _on(fitted["reference"], "reference", rtol=1e-7, atol=1e-9)
    expected = (reference.score_samples(X_TEST), reference.transform(X_TEST[:10]),
                reference.sample(10, random_state=0))
    for name in engines:
        model = _on(fitted["reference"], name, rtol=1e-7, atol=1e-9)
        got = (model.score_samples(X_TEST), model.transform(X_TEST[:10]),
               model.sample(10, random_state=0))
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-7, atol=1e-8, err_msg=name)


def test_learns_the_moons_better_than_a_gaussian(engine, fitted):
    model = fitted[engine.name]
    gaussian = scipy.stats.multivariate_normal(X_MOONS.mean(0), np.cov(X_MOONS.T))
    assert model.score(X_TEST) > np.mean(gaussian.logpdf(X_TEST)) + 0.2
    assert np.all(np.isfinite(model.score_samples(X_TEST)))
    assert model.loss_curve_[-1] < model.loss_curve_[0]


# ---------------------------------------------- Hutchinson and the loss's gradients


def _program(engine_name, spec):
    return odeplug.get_backend(engine_name).make_program(spec)


def test_hutchinson_estimate_is_unbiased(engine):
    # The integrated estimate int e^T (df/dz) e dt, e fixed along a solve: its mean over
    # probes is the exact log-density change (z's path does not depend on e).
    exact_spec = CNFSpec(n_features=3, field_hidden=(12,), field_activation="tanh",
                         dtype="float64")
    hutch_spec = CNFTrainingSpec(exact_spec, trace="hutchinson")
    params = exact_spec.init_params(4)
    params["field.0.weight"] *= 3.0  # a Jacobian far from diagonal
    hyper = CNFHyper(solve=make_solve_config(solver="rk4", step_size=0.1), alpha=0.0)
    x = np.array([[0.3, -1.0, 0.5]])
    exact = _program(engine.name, exact_spec)
    nll_exact = exact.evaluate(exact.init(params), (x,), hyper)["nll"]
    hutch = _program(engine.name, hutch_spec)
    state = hutch.init(params)
    rng = np.random.RandomState(0)
    rows, batches = 100, 30
    means = [hutch.evaluate(state, (np.repeat(x, rows, 0),
                                    (2 * rng.randint(0, 2, (rows, 3)) - 1).astype(float)),
                            hyper)["nll"] for _ in range(batches)]
    error = np.std(means, ddof=1) / np.sqrt(batches)
    assert error > 1e-3  # the estimate is noisy: the test can tell a bias
    assert abs(np.mean(means) - nll_exact) < 3 * error


def _first_moments(engine_name, state):
    """Adam's first moments after one step: ``(1 - beta1) * gradient``."""
    if engine_name == "reference":
        return state["opt"]["m"]
    if engine_name == "torch":
        return {k: state["opt"].state[p]["exp_avg"].numpy()
                for k, p in state["params"].items()}
    return {k: np.asarray(v) for k, v in state["opt"].mu.items()}


@pytest.mark.parametrize("trace, adjoint", [("exact", False), ("hutchinson", True)])
def test_loss_gradients_match_finite_differences(engine, trace, adjoint):
    # The loss with every part: the log-density channel, RNODE's two, the L2 penalty.
    spec = CNFTrainingSpec(CNFSpec(n_features=2, field_hidden=(5,),
                                   field_activation="softplus", dtype="float64"),
                           trace=trace, regularize=True)
    solve = make_solve_config(solver="rk4", step_size=0.05 if adjoint else 0.25,
                              adjoint=adjoint)
    hyper = CNFHyper(solve=solve, t1=0.8, alpha=0.3, kinetic_energy=0.2, jacobian_norm=0.5,
                     learning_rate=1e-3)
    rng = np.random.default_rng(2)
    batch = (rng.normal(size=(6, 2)),)
    if trace == "hutchinson":
        batch += ((2 * rng.integers(0, 2, (6, 2)) - 1).astype(float),)
    params = spec.init_params(1)
    program = _program(engine.name, spec)
    state, _ = program.step(program.init(params), batch, hyper)
    gradient = {k: v / (1 - hyper.beta1) for k, v in _first_moments(engine.name, state).items()}

    def loss(p):
        return program.evaluate(program.init(p), batch, hyper)["loss"]

    step = 1e-6
    for name in ("field.0.weight", "field.1.bias"):
        for index in [(0, 0), (2, 3)] if params[name].ndim == 2 else [(0,), (1,)]:
            up = {k: v.copy() for k, v in params.items()}
            down = {k: v.copy() for k, v in params.items()}
            up[name][index] += step
            down[name][index] -= step
            numeric = (loss(up) - loss(down)) / (2 * step)
            # Backpropagation differentiates the discrete solve exactly; the adjoint
            # solves backwards with its own (fine, fixed) steps.
            assert gradient[name][index] == pytest.approx(
                numeric, rel=1e-6 if not adjoint else 1e-4, abs=1e-8), (name, index)


# ------------------------------------------------------------- the estimator


def test_fitted_attributes(fitted):
    model = fitted["reference"]
    assert model.n_features_in_ == 2 and model.backend_ == "reference"
    np.testing.assert_allclose(model.mean_, X_MOONS.mean(0))
    np.testing.assert_allclose(model.scale_, X_MOONS.std(0))
    assert set(model.params_) == {f"field.{i}.{kind}" for i in range(3)
                                  for kind in ("weight", "bias")}
    assert model.n_iter_ == len(model.loss_curve_) == 15
    assert set(model.curves_) == {"loss", "nll", "nfe_forward", "nfe_backward",
                                  "kinetic_energy", "jacobian_norm",  # RNODE by default
                                  "learning_rate"}
    assert model.nfe_["nfe_forward"] > 0 and model.t_ == 15 * 240
    assert model.get_feature_names_out().tolist() == ["cnfdensity0", "cnfdensity1"]


def test_score_is_the_mean_log_likelihood(fitted):
    model = fitted["reference"]
    assert model.score(X_TEST) == pytest.approx(np.mean(model.score_samples(X_TEST)))


def test_units_standardisation_is_accounted_for():
    # The same data in other units: the density changes by the Jacobian of the map.
    scale = np.array([10.0, 0.1])
    a = small(max_iter=3).fit(X_MOONS)
    b = small(max_iter=3).fit(X_MOONS * scale)
    np.testing.assert_allclose(b.score_samples(X_TEST * scale),
                               a.score_samples(X_TEST) - np.sum(np.log(scale)), atol=1e-6)
    # A StandardScaler in front is neither needed nor harmful.
    piped = make_pipeline(StandardScaler(), small(max_iter=3)).fit(X_MOONS)
    inner = piped[-1].score_samples(StandardScaler().fit(X_MOONS).transform(X_TEST))
    np.testing.assert_allclose(inner, a.score_samples(X_TEST) + np.sum(np.log(a.scale_)),
                               atol=1e-6)


def test_regularisers_are_reported_and_shorten_the_flow(engine):
    # Both with the channels (one compilation on JAX); only one weighs them.
    barely = small(backend=engine.name, max_iter=4, kinetic_energy=1e-9,
                   jacobian_norm=1e-9).fit(X_MOONS)
    regularised = small(backend=engine.name, max_iter=4, kinetic_energy=1.0,
                        jacobian_norm=1.0).fit(X_MOONS)
    assert {"kinetic_energy", "jacobian_norm"} <= set(regularised.curves_)
    assert all(v > 0 for v in regularised.curves_["kinetic_energy"])
    # The weighted flow moves the data less, with a smoother field.
    for name in ("kinetic_energy", "jacobian_norm"):
        assert regularised.curves_[name][-1] < barely.curves_[name][-1], name


def test_looser_tolerance_at_inference_costs_fewer_evaluations(engine, fitted):
    model = _on(fitted[engine.name], engine.name)
    tight = model.set_params(rtol=1e-7, atol=1e-9).inference_stats(X_TEST)["nfe_forward"]
    loose = model.set_params(rtol=1e-2, atol=1e-3).inference_stats(X_TEST)["nfe_forward"]
    assert tight.shape == (len(X_TEST),) and np.all(loose <= tight) and loose.sum() < tight.sum()
    assert not np.array_equal(model.set_params(rtol=1e-2).score_samples(X_TEST[:5]),
                              model.set_params(rtol=1e-7).score_samples(X_TEST[:5]))


def test_rows_are_independent(engine, fitted):
    model = fitted[engine.name]
    whole = model.score_samples(X_TEST)
    np.testing.assert_allclose(model.score_samples(X_TEST[5:9]), whole[5:9], rtol=1e-12,
                               atol=1e-12)


def test_same_random_state_same_fit_with_hutchinson(engine):
    a = small(backend=engine.name, max_iter=2, trace_estimator="hutchinson").fit(X_MOONS)
    b = small(backend=engine.name, max_iter=2, trace_estimator="hutchinson").fit(X_MOONS)
    for key in a.params_:
        np.testing.assert_array_equal(a.params_[key], b.params_[key])
    c = small(backend=engine.name, max_iter=2, trace_estimator="hutchinson",
              random_state=1).fit(X_MOONS)
    assert not np.array_equal(a.params_["field.0.weight"], c.params_["field.0.weight"])


def test_trace_estimator_auto_switches_with_the_dimension():
    from odeplug.estimators._density import AUTO_EXACT_MAX_FEATURES

    model = small()

    def trace(n_features):
        return model._training_spec(model._spec_of(n_features, "float64")).trace

    assert trace(AUTO_EXACT_MAX_FEATURES) == "exact"
    assert trace(AUTO_EXACT_MAX_FEATURES + 1) == "hutchinson"


def test_warm_start_and_partial_fit_continue():
    model = small(max_iter=2, warm_start=True).fit(X_MOONS)
    mean = model.mean_.copy()
    model.fit(X_MOONS[:100] + 5.0)  # the standardisation of the first fit stays
    assert model.n_iter_ == 4
    np.testing.assert_array_equal(model.mean_, mean)
    partial = small().partial_fit(X_MOONS).partial_fit(X_MOONS)
    assert partial.n_iter_ == 2
    with pytest.raises(ValueError, match="early_stopping"):
        small(early_stopping=True).partial_fit(X_MOONS)


def test_early_stopping_is_judged_by_held_out_log_likelihood():
    model = small(max_iter=30, early_stopping=True, n_iter_no_change=2, tol=0.0)
    model.fit(X_MOONS)
    scores = model.validation_scores_
    assert len(scores) == model.n_iter_ and model.best_validation_score_ == max(scores)
    assert model.best_loss_ is None
    # The parameters kept are the best-scoring ones: scoring the validation split again
    # (the same split from the same random_state) gives the best score.
    from sklearn.model_selection import train_test_split
    from sklearn.utils import check_random_state

    rng = check_random_state(0)
    rng.randint(np.iinfo(np.int32).max)
    _, X_val = train_test_split(X_MOONS, test_size=0.1, random_state=rng)
    assert model.score(X_val) == pytest.approx(model.best_validation_score_, abs=1e-3)


# ------------------------------------------------------------------- bad input


def _assert_unfitted(model):
    assert not hasattr(model, "params_") and not hasattr(model, "n_features_in_")
    assert not hasattr(model, "mean_")


@pytest.mark.parametrize("X, message", [
    (np.where(np.arange(480).reshape(240, 2) == 7, np.nan, X_MOONS), "NaN"),
    (np.where(np.arange(480).reshape(240, 2) == 7, np.inf, X_MOONS), "infinity"),
    (X_MOONS[:1], "1 sample"),
    (np.zeros((0, 2)), "0 sample"),
    (np.zeros((10, 0)), "0 feature"),
    (np.zeros((10, 2, 2)), "3"),
])
def test_bad_training_data_leaves_nothing(X, message):
    model = small()
    with pytest.raises(ValueError, match=message):
        model.fit(X)
    _assert_unfitted(model)


def test_wrong_number_of_features_at_scoring(fitted):
    model = fitted["reference"]
    for method in (model.score_samples, model.score, model.transform,
                   model.inverse_transform):
        with pytest.raises(ValueError, match="features"):
            method(np.zeros((3, 5)))


@pytest.mark.parametrize("n", [0, -3, 2.5, "4", True, None])
def test_bad_n_samples(fitted, n):
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        fitted["reference"].sample(n)


def test_before_fit():
    for call in (lambda m: m.sample(2), lambda m: m.score(X_TEST),
                 lambda m: m.score_samples(X_TEST), lambda m: m.transform(X_TEST),
                 lambda m: m.inverse_transform(X_TEST)):
        with pytest.raises(NotFittedError):
            call(small())


@pytest.mark.parametrize("params, error", [
    (dict(trace_estimator="skilling"), ValueError),
    (dict(kinetic_energy=-1.0), ValueError),
    (dict(jacobian_norm="a lot"), TypeError),
    (dict(hidden_layer_sizes=(0,)), ValueError),
    (dict(activation="gelu"), ValueError),
    (dict(t1=0.0), ValueError),
])
def test_bad_parameters(params, error):
    model = small(**params)
    with pytest.raises(error):
        model.fit(X_MOONS)
    _assert_unfitted(model)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_diverging_fit_keeps_parameters_that_score(engine):
    model = small(backend=engine.name, max_iter=3, learning_rate_init=1e4)
    with pytest.raises(TrainingDivergedError, match="diverged at epoch") as info:
        model.fit(X_MOONS)
    assert "keeps the last parameters whose training loss was finite" in str(info.value)
    assert all(np.all(np.isfinite(v)) for v in model.params_.values())
    assert np.all(np.isfinite(model.score_samples(X_TEST[:5])))


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_diverged_warm_start_keeps_the_previous_fit(fitted):
    model = pickle.loads(pickle.dumps(fitted["reference"])).set_params(warm_start=True)
    before = model.score_samples(X_TEST)
    with pytest.raises(TrainingDivergedError, match="keeps its fit from before"):
        model.set_params(learning_rate_init=1e4).fit(X_MOONS)
    np.testing.assert_array_equal(model.score_samples(X_TEST), before)
    assert model.n_iter_ == 15


# ------------------------------------------------------ scikit-learn citizenship


def test_pipeline_cross_val_score_clone_and_pickle(fitted):
    scores = cross_val_score(make_pipeline(StandardScaler(), small(max_iter=3)), X_MOONS, cv=3)
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    model = fitted["reference"]
    fresh = clone(model)
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "params_")
    loaded = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(loaded.score_samples(X_TEST), model.score_samples(X_TEST))
    np.testing.assert_array_equal(loaded.sample(5, random_state=1),
                                  model.sample(5, random_state=1))


def test_grid_search_over_engines_sizes_and_kinetic_energy_in_parallel():
    # Fixed steps and one epoch. Both kinetic_energy values are positive: the same
    # architecture, so a JAX worker compiles once per hidden size (the weight is a traced
    # value; the two folds share a batch shape).
    grid = {"backend": installed_engines(), "hidden_layer_sizes": [(4,), (8,)],
            "kinetic_energy": [0.01, 0.5]}
    base = small(max_iter=1, solver="rk4", step_size=0.5)
    search = GridSearchCV(base, grid, cv=2, n_jobs=2).fit(X_MOONS)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert len(search.cv_results_["params"]) == 4 * len(installed_engines())
    best = search.best_estimator_
    assert best.backend_ == best.backend and np.isfinite(best.score(X_TEST))
