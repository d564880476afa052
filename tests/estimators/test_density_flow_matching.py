"""CNFDensity trained by flow matching (issue #12): a proper density, samples like the
data, the optimal field on Gaussian data, the same results on every engine, the
objective's parameters validated, and its curves and early stopping.

Training is solver-free, so the fits are cheap; what costs is scoring (a solve with the
exact trace per row): the tests score few rows, and fit on the reference engine except
where the engines are compared.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from scipy import stats

import odeplug
from odeplug import CNFDensity
from odeplug._flow_matching import gaussian_optimal_field

reference_program = odeplug.get_backend("reference").make_program

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

MEAN = np.array([1.0, -2.0])
COV = np.array([[1.0, 0.8], [0.8, 1.0]])


def gaussian(n, seed=0):
    return np.random.default_rng(seed).multivariate_normal(MEAN, COV, size=n)


def two_blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-2.0, 0.0], [2.0, 1.0]])
    return centers[rng.integers(0, 2, n)] + rng.normal(scale=[0.6, 0.4], size=(n, 2))


def fm(**params):
    values = dict(objective="flow_matching", hidden_layer_sizes=(32, 32),
                  learning_rate_init=1e-2, batch_size=128, max_iter=60, random_state=0)
    return CNFDensity(**{**values, **params})


@pytest.fixture(scope="module")
def blobs_model():
    X = two_blobs(512)
    return X, fm(backend="reference", max_iter=150).fit(X)


def test_density_integrates_to_one_on_a_grid(blobs_model):
    _, model = blobs_model
    model = copy.deepcopy(model).set_params(rtol=1e-6, atol=1e-8)  # scoring only
    xs, ys = np.linspace(-6.0, 6.0, 61), np.linspace(-4.0, 5.0, 46)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    density = np.exp(model.score_samples(grid))
    mass = density.sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert mass == pytest.approx(1.0, abs=0.01)


def test_samples_match_the_data(blobs_model):
    X, model = blobs_model
    samples = model.sample(1000, random_state=1)
    np.testing.assert_allclose(samples.mean(axis=0), X.mean(axis=0), atol=0.15)
    np.testing.assert_allclose(np.cov(samples.T), np.cov(X.T), rtol=0.15, atol=0.05)
    # The two blobs come back in their proportions, each where it belongs.
    left = samples[:, 0] < 0
    assert np.mean(left) == pytest.approx(np.mean(X[:, 0] < 0), abs=0.06)
    for mask, data in ((left, X[X[:, 0] < 0]), (~left, X[X[:, 0] >= 0])):
        assert stats.ks_2samp(samples[mask, 1], data[:, 1]).pvalue > 1e-3


def test_the_field_converges_to_the_optimal_field_of_gaussian_data():
    # The regression's minimiser for N(mean, cov) data and independent pairing is known
    # in closed form (odeplug._flow_matching.gaussian_optimal_field); the estimator
    # standardises X, so the field sees N(0, corr) data. Adam at a constant step size
    # stops at a noise floor of the stochastic regression: the step size is lowered
    # twice (warm starts), and the field must come closer each time.
    X = gaussian(1000)
    sigma = 0.01
    model = fm(backend="reference", ot_pairing=False, sigma_min=sigma, max_iter=300,
               batch_size=1000, hidden_layer_sizes=(16, 16), tol=0.0,
               n_iter_no_change=1000)
    corr = np.corrcoef(X.T)
    program = reference_program(model._spec_of(2, "float64"))
    probe = np.random.default_rng(1).multivariate_normal(np.zeros(2), corr, size=200)
    base = np.random.default_rng(2).normal(size=probe.shape)

    def error(params):
        errs, norms = [], []
        for u in (0.2, 0.4, 0.6, 0.8):
            z = (1 - u) * probe + u * base  # where x_t has its mass at this time
            want = gaussian_optimal_field(u * model.t1, z, np.zeros(2), corr, sigma,
                                          model.t1)
            got = program.velocity(params, np.full((len(z), 1), u * model.t1), z)
            errs.append(np.mean((got - want) ** 2))
            norms.append(np.mean(want**2))
        return np.sqrt(np.sum(errs) / np.sum(norms))

    errors = [error(program.spec.init_params(0))]
    model.fit(X)
    errors.append(error(model.params_))
    model.set_params(warm_start=True, learning_rate_init=2e-3, max_iter=150).fit(X)
    errors.append(error(model.params_))
    assert errors[0] > 0.5 and errors[1] < 0.25 and errors[2] < 0.13
    assert errors[2] < errors[1] < errors[0]
    # ... and the flow of that field is the Gaussian: log-densities in X's units.
    true = stats.multivariate_normal(MEAN, COV).logpdf(X[:100])
    assert np.mean(np.abs(model.score_samples(X[:100]) - true)) < 0.1


def test_same_parameters_same_results_on_every_engine(engine):
    # Fitted on each engine from the same seed: the same training (float32 on torch and
    # jax, float64 on the reference), then the same log-densities and samples.
    X = two_blobs(256, seed=3)
    # The field of tests/estimators/test_density.py's models: on JAX, a process that ran
    # those has compiled the inference of this spec already.
    params = dict(hidden_layer_sizes=(16, 16), max_iter=5, batch_size=64)
    ref = fm(backend="reference", **params).fit(X)
    got = fm(backend=engine.name, **params).fit(X)
    for key, value in ref.params_.items():
        np.testing.assert_allclose(got.params_[key], value, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got.loss_curve_, ref.loss_curve_, rtol=1e-4)
    rows = X[:8]
    np.testing.assert_allclose(got.score_samples(rows), ref.score_samples(rows), atol=1e-3)
    # The reference's own parameters on this engine: inference agrees to float64 rounding.
    moved = copy.deepcopy(ref).set_params(backend=engine.name)
    np.testing.assert_allclose(moved.score_samples(rows), ref.score_samples(rows),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(moved.sample(4, random_state=0), ref.sample(4, random_state=0),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("params, message", [
    ({"objective": "score_matching"}, "'objective' parameter of CNFDensity must be a str "
                                      "among"),
    ({"sigma_min": 1.0}, "'sigma_min' parameter of CNFDensity must be a float in the range "
                         r"\[0.0, 1.0\)"),
    ({"sigma_min": -0.1}, "'sigma_min' parameter"),
    ({"ot_pairing": "yes"}, "'ot_pairing' parameter of CNFDensity must be an instance of "
                            "'bool'"),
])
def test_objective_parameters_are_validated(params, message):
    model = CNFDensity(**params)
    with pytest.raises(ValueError, match=message):
        model.fit(two_blobs(20))
    assert not hasattr(model, "params_")


@pytest.mark.parametrize("weight", ["kinetic_energy", "jacobian_norm"])
def test_rnode_weights_are_ignored_by_flow_matching(weight):
    # They weigh integrals along solved trajectories; flow matching solves none, so the
    # fit is the same with any weight (as scikit-learn ignores another solver's
    # parameters), and the defaults (0.01 each) serve both objectives.
    X = two_blobs(100, seed=9)
    kwargs = dict(backend="reference", max_iter=3, hidden_layer_sizes=(4,),
                  kinetic_energy=0.0, jacobian_norm=0.0)
    plain = fm(**kwargs).fit(X)
    weighted = fm(**{**kwargs, weight: 10.0}).fit(X)
    for key, value in plain.params_.items():
        np.testing.assert_array_equal(weighted.params_[key], value)
    assert weighted.loss_curve_ == plain.loss_curve_


def test_loss_curve_is_the_regression_loss(blobs_model):
    _, model = blobs_model
    assert set(model.curves_) == {"loss", "mse", "nfe_forward", "nfe_backward",
                                  "learning_rate"}
    assert model.loss_curve_ == model.curves_["loss"]
    # loss = mse + the L2 penalty, which is small but positive.
    gaps = np.subtract(model.curves_["loss"], model.curves_["mse"])
    assert np.all(gaps > 0) and np.all(gaps < 1e-2)
    assert np.mean(model.loss_curve_[-10:]) < 0.8 * np.mean(model.loss_curve_[:3])
    assert model.nfe_ == {"nfe_forward": 1, "nfe_backward": 0}  # no solve in training


def test_early_stopping_reports_the_held_out_log_likelihood():
    X = two_blobs(400, seed=4)
    model = fm(backend="reference", early_stopping=True, n_iter_no_change=3, tol=0.0,
               max_iter=200, hidden_layer_sizes=(8,)).fit(X)
    assert model.n_iter_ < 200
    scores = model.validation_scores_
    assert len(scores) == model.n_iter_ and model.best_validation_score_ == max(scores)
    # Log-likelihoods of held-out data in X's units, near that of the training data.
    assert abs(model.best_validation_score_ - model.score(X)) < 0.3
    assert model.best_loss_ is None


def test_same_random_state_same_fit_and_ot_pairing_changes_it():
    X = two_blobs(200, seed=5)
    kwargs = dict(backend="reference", max_iter=3, hidden_layer_sizes=(8,))
    one, two = fm(**kwargs).fit(X), fm(**kwargs).fit(X)
    independent = fm(ot_pairing=False, **kwargs).fit(X)
    for key in one.params_:
        np.testing.assert_array_equal(one.params_[key], two.params_[key])
    assert any(not np.allclose(one.params_[k], independent.params_[k]) for k in one.params_)
    # OT pairs each point with a near base draw: lower regression targets, lower loss.
    assert one.loss_curve_[0] < independent.loss_curve_[0]


def test_warm_start_changes_objective_flow_matching_then_maximum_likelihood():
    # Pre-training by regression, then fine-tuning by likelihood: one model, one
    # history (metrics missing from an epoch are None).
    X = two_blobs(200, seed=6)
    model = fm(backend="reference", max_iter=3, hidden_layer_sizes=(8,), rtol=1e-2).fit(X)
    model.set_params(objective="maximum_likelihood", warm_start=True, max_iter=1).fit(X)
    assert model.n_iter_ == 4
    assert model.curves_["mse"][3] is None and model.curves_["nll"][:3] == [None] * 3
    assert model.curves_["nfe_forward"][3] > 1  # a solve now


def test_a_flow_matching_model_saves_and_loads():
    X = two_blobs(100, seed=7)
    model = fm(backend="reference", max_iter=2, hidden_layer_sizes=(4,)).fit(X)
    buffer = io.BytesIO()
    odeplug.save(model, buffer)
    loaded = odeplug.load(io.BytesIO(buffer.getvalue()))
    assert loaded.get_params()["objective"] == "flow_matching"
    np.testing.assert_array_equal(loaded.score_samples(X[:3]), model.score_samples(X[:3]))


def test_partial_fit_trains_one_epoch_by_flow_matching():
    X = two_blobs(100, seed=8)
    model = fm(backend="reference", hidden_layer_sizes=(4,), batch_size=50)
    model.partial_fit(X).partial_fit(X)
    assert model.n_iter_ == 2 and model.t_ == 200
    assert model.curves_["nfe_forward"] == [1, 1]
