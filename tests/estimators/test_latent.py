"""LatentODERegressor on every installed engine: a known latent ODE, hidden values that
never reach the loss, per-series times, the same predictions everywhere, every refused
input, and scikit-learn citizenship (Pipeline, GridSearchCV, clone, pickle)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

import odeplug
from odeplug import LatentODERegressor
from odeplug._series import encoder_gaps, row_grids, union_grid
from odeplug._solver_options import make_solve_config
from odeplug._specs import LatentHyper
from odeplug.datasets import make_spirals
from tests.backends import latent_programs as checks
from tests.estimators.test_classifier import installed_engines

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# A rotation seen through a linear map: z(t) = r (cos(w t + a), sin(w t + a)),
# x = z @ MIXING + noise of std SIGMA. The model class holds it exactly (a linear
# field and a linear decoder).
SIGMA, OMEGA = 0.1, 1.2
MIXING = np.array([[1.0, 0.4], [-0.5, 0.8]])
OBS_TIMES = np.linspace(0.0, 3.0, 10)
TARGET_TIMES = np.array([3.5, 4.0, 4.5])


def rotations(n, seed):
    """``(X, y, y_true)``: noisy series at OBS_TIMES, noisy and noise-free targets."""
    rng = np.random.default_rng(seed)
    radius = rng.uniform(0.6, 1.4, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    times = np.concatenate([OBS_TIMES, TARGET_TIMES])
    phase = OMEGA * times[None, :] + angle[:, None]
    z = radius[:, None, None] * np.stack([np.cos(phase), np.sin(phase)], axis=2)
    clean = z @ MIXING
    noisy = clean + SIGMA * rng.standard_normal(clean.shape)
    k = len(OBS_TIMES)
    return noisy[:, :k], noisy[:, k:], clean[:, k:]


def small(**kwargs) -> LatentODERegressor:
    params = dict(obs_times=OBS_TIMES, target_times=TARGET_TIMES, encoder="rnn",
                  latent_dim=2, encoder_hidden_sizes=(8,), hidden_layer_sizes=(),
                  decoder_hidden_sizes=(), max_iter=2, batch_size=16, rtol=1e-4, atol=1e-6,
                  random_state=0)
    params.update(kwargs)
    return LatentODERegressor(**params)


X_SMALL, Y_SMALL, _ = rotations(24, seed=1)
X_SMALL[np.random.default_rng(2).random(X_SMALL.shape) < 0.2] = np.nan


class _Fitted(dict):
    """One small model per engine (and the reference one), fitted on first use."""

    def __missing__(self, name):
        self[name] = small(backend=name, max_iter=3).fit(X_SMALL, Y_SMALL)
        return self[name]


@pytest.fixture(scope="module")
def fitted():
    return _Fitted()


# ------------------------------------------------------------------- helpers


def test_union_grid_holds_every_time_and_has_a_power_of_two_length():
    times = np.array([[0.0, 0.5, 2.0], [0.0, 0.25, 0.5]])
    for dtype in (np.float32, np.float64):
        grid, index = union_grid(times, dtype)
        assert len(grid) == 4 and grid.dtype == dtype and np.all(np.diff(grid) > 0)
        np.testing.assert_array_equal(grid[index], times.astype(dtype))
    grid, index = union_grid(np.zeros((3, 2)), np.float32)  # nothing but t0
    assert len(grid) == 2 and grid[0] == 0 and np.all(index == 0)
    grid, _ = union_grid(np.arange(5.0)[None], np.float64)  # 5 -> 8 points
    assert len(grid) == 8 and np.all(np.diff(grid) > 0) and grid[-1] == 4.0


def test_row_grids_and_encoder_gaps():
    grids, index = row_grids(np.array([[2.0, 0.5, 2.0], [np.nan, 1.0, np.nan]]))
    np.testing.assert_array_equal(grids[0], [0.0, 0.5, 2.0, np.nan])
    np.testing.assert_array_equal(grids[1, :2], [0.0, 1.0])
    np.testing.assert_array_equal(index, [[2, 1, 2], [0, 1, 0]])
    gaps = encoder_gaps(np.array([[3.0, 1.0, 0.5], [2.0, np.nan, np.nan]]))
    np.testing.assert_array_equal(gaps, [[2.0, 0.5, 0.0], [0.0, 0.0, 0.0]])


# ---------------------------------------------------------------- correctness


def test_known_linear_latent_ode_extrapolates_to_the_noise_level(engine):
    # 120 series, 150 steps: RMSE 1.22 sigma on every engine (noisy held-out targets:
    # sigma is the floor).
    X, y, _ = rotations(120, seed=0)
    X_test, y_test, _ = rotations(100, seed=1)
    model = small(backend=engine.name, max_iter=50, batch_size=40, learning_rate_init=0.03,
                  kl_annealing=10, solver="rk4", step_size=0.5).fit(X, y)
    rmse = np.sqrt(np.mean((model.predict(X_test) - y_test) ** 2))
    assert rmse < 1.3 * SIGMA, f"extrapolation RMSE {rmse:.4f} vs noise {SIGMA}"
    # The predictive deviation covers the held-out targets (noise and posterior).
    mean, std = model.predict(X_test, return_std=True)
    coverage = np.mean(np.abs(y_test - mean) <= 2 * std)
    assert 0.85 <= coverage <= 1.0
    assert np.all((0.7 * SIGMA < model.noise_std_) & (model.noise_std_ < 1.5 * SIGMA))


def training_batch(X, y, dtype="float64", seed=0, **kwargs):
    """``(spec, batch)``: a program's training batch of X and y, as a fit builds it."""
    model = small(**kwargs)
    series = model._check_X(X, None, reset=True)
    offsets = model._targets_for(y, series, None)
    arrays = model._training_arrays(series, model._check_y(y, series, offsets), offsets,
                                    dtype)
    spec = model._spec_of(series.n_channels, dtype)
    eps = np.random.default_rng(seed).standard_normal((len(X), spec.latent_dim))
    return spec, arrays + (eps.astype(dtype),)


def program_of(name, spec):
    return odeplug.get_backend(name).make_program(spec)


def test_hidden_values_never_reach_the_loss_or_its_gradient(engine):
    # The number under a zero mask is not seen: any other number there (NaN, 1e6)
    # gives the same loss and the same step, bit for bit. (The spec and batch of the
    # engines' program tests: on JAX, their compilation.)
    spec = checks.spec("ode_rnn")
    batch = checks.batch()
    enc_values, enc_mask, enc_times, dec_times, dec_values, dec_mask, eps = batch
    assert not enc_mask.all() and not dec_mask.all()
    altered = list(batch)
    altered[0] = np.where(enc_mask, enc_values, 1e6)
    altered[4] = np.where(dec_mask, dec_values, np.nan)
    program = program_of(engine.name, spec)
    params = spec.init_params(0)
    results = []
    for b in (batch, tuple(altered)):
        state, metrics = program.step(program.init(params), b, checks.hyper(adjoint=True))
        results.append((metrics, program.get_params(state)))
    assert results[0][0] == results[1][0]
    for key, value in results[0][1].items():
        np.testing.assert_array_equal(results[1][1][key], value, err_msg=key)


def _hyper(**kwargs):
    values = dict(solve=make_solve_config("dopri5", rtol=1e-8, atol=1e-10, adjoint=False),
                  learning_rate=1e-2, kl_weight=0.7)
    values.update(kwargs)
    return LatentHyper(**values)


def test_elbo_gradient_matches_finite_differences():
    # The reference engine's gradient of the negative ELBO (fixed noise draw) against
    # central differences; the other engines' gradients are checked against it
    # (tests/backends/test_*_latent.py).
    for encoder, noise in (("ode_rnn", "auto"), ("rnn", 0.3)):
        spec, batch = training_batch(X_SMALL[:6], Y_SMALL[:6], encoder=encoder,
                                     encoder_hidden_sizes=(4, 3), noise_std=noise,
                                     decoder_hidden_sizes=(3,), hidden_layer_sizes=(3,))
        program = program_of("reference", spec)
        params = spec.init_params(3)
        for adjoint in (False, True):
            hyper = _hyper(solve=make_solve_config("dopri5", rtol=1e-8, atol=1e-10,
                                                   adjoint=adjoint), noise_std=0.3,
                           alpha=0.1)
            grads = program.gradient(params, batch, hyper)
            rng = np.random.default_rng(0)
            for key in rng.choice(sorted(params), size=6, replace=False):
                index = tuple(rng.integers(0, s) for s in params[key].shape)
                h = 1e-5
                up = {k: v.copy() for k, v in params.items()}
                down = {k: v.copy() for k, v in params.items()}
                up[key][index] += h
                down[key][index] -= h
                numeric = (program.loss(up, batch, hyper) - program.loss(down, batch, hyper)
                           ) / (2 * h)
                assert grads[key][index] == pytest.approx(numeric, rel=1e-4, abs=1e-6), (
                    encoder, adjoint, key)


@pytest.fixture(params=["reference", "torch"])
def eager_engine(request):
    """The engines whose fits cost no compilation (on JAX each fit of a new shape
    compiles a step: its programs compute what these do, tests/backends/)."""
    from tests.conftest import Engine

    return Engine(request.param)


def test_per_series_times_are_the_shared_grid_with_nan(eager_engine):
    # Series observed at some times of the shared grid (NaN elsewhere) are the same
    # series given with their own times (those columns only, NaN-padded): the programs
    # get the same arrays (so every engine computes the same), and fit and predict the
    # same.
    engine = eager_engine
    X = X_SMALL.copy()
    X[:, 4] = np.nan  # a time nobody observed
    observed = ~np.isnan(X).all(axis=2)
    width = observed.sum(axis=1).max()
    own = np.full((len(X), width, 2), np.nan)
    own_times = np.full((len(X), width), np.nan)
    for i in range(len(X)):
        cols = np.flatnonzero(observed[i])
        own[i, : len(cols)] = X[i, cols]
        own_times[i, : len(cols)] = OBS_TIMES[cols]
    model = small()
    arrays = []
    for values, times in ((X, None), (own, own_times)):
        series = model._check_X(values, times, reset=True)
        offsets = model._targets_for(Y_SMALL, series, None)
        arrays.append(model._training_arrays(series, model._check_y(Y_SMALL, series, offsets),
                                             offsets, "float32"))
    for a, b in zip(*arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    shared = small(backend=engine.name).fit(X, Y_SMALL)
    per_series = small(backend=engine.name).fit(own, Y_SMALL, times=own_times)
    for key, value in shared.params_.items():
        np.testing.assert_array_equal(per_series.params_[key], value, err_msg=key)
    np.testing.assert_array_equal(per_series.predict(own, times=own_times),
                                  shared.predict(X))
    # target_times per series: the same times in every row.
    np.testing.assert_array_equal(
        shared.predict(X, target_times=np.tile(TARGET_TIMES, (len(X), 1))), shared.predict(X))


def test_same_parameters_give_the_same_predictions_on_every_engine(engine, fitted):
    reference = fitted["reference"]
    other = clone(reference).set_params(backend=engine.name)
    other.__dict__.update({k: v for k, v in reference.__dict__.items() if k.endswith("_")
                           or k.startswith("_")})
    mean, std = reference.predict(X_SMALL, return_std=True)
    got_mean, got_std = other.predict(X_SMALL, return_std=True)
    np.testing.assert_allclose(got_mean, mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got_std, std, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(other.transform(X_SMALL), reference.transform(X_SMALL),
                               rtol=1e-6, atol=1e-8)
    eval_times = np.linspace(3.0, 5.0, 5)  # after every first observation
    np.testing.assert_allclose(other.predict_trajectory(X_SMALL, eval_times),
                               reference.predict_trajectory(X_SMALL, eval_times),
                               rtol=1e-6, atol=1e-8)


def test_ode_rnn_encoder_on_every_engine(eager_engine):
    # The ODE-RNN encoder trains and gives the reference's predictions (on JAX:
    # tests/backends/test_jax_latent.py, against the reference program).
    engine = eager_engine
    model = small(backend=engine.name, encoder="ode_rnn", encoder_hidden_sizes=(6, 5),
                  max_iter=1).fit(X_SMALL, Y_SMALL)
    reference = small(backend="reference", encoder="ode_rnn", encoder_hidden_sizes=(6, 5),
                      max_iter=1)
    assert np.isfinite(model.loss_curve_[0])
    reference.__dict__.update({k: v for k, v in model.__dict__.items()
                               if k.endswith("_") or k.startswith("_")})
    np.testing.assert_allclose(model.predict(X_SMALL), reference.predict(X_SMALL),
                               rtol=1e-6, atol=1e-8)
    assert set(model.curves_) >= {"loss", "kl", "reconstruction", "nfe_forward"}


def test_predictions_of_a_series_do_not_depend_on_the_others(fitted):
    model = fitted["reference"]
    full = model.predict(X_SMALL, return_std=True)
    for i in (0, 5):
        alone = model.predict(X_SMALL[i : i + 1], return_std=True)
        np.testing.assert_allclose(alone[0][0], full[0][i], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(alone[1][0], full[1][i], rtol=1e-12, atol=1e-12)


def test_outputs_are_shaped_like_y():
    X = X_SMALL[:, :, :1]
    y1 = Y_SMALL[:, 0, 0]
    model = small(target_times=[3.5], max_iter=1).fit(X[:, :, 0], y1)
    assert model.predict(X[:, :, 0]).shape == (24,)
    assert model.predict(X[:, :, 0], target_times=[3.5, 4.0]).shape == (24, 2)
    model = small(max_iter=1).fit(X, Y_SMALL[:, :, :1])
    assert model.predict(X).shape == (24, 3, 1)
    model = small(target_times=None, max_iter=1).fit(X[:, :, 0], Y_SMALL[:, :, 0])
    assert model.n_targets_ == 3 and model.predict(X[:, :, 0]).shape == (24, 3)
    samples = model.sample_trajectories(X[:3, :, 0], [0.0, 1.0], 4, random_state=0)
    assert samples.shape == (3, 4, 2, 1)
    assert model.transform(X[:3, :, 0]).shape == (3, 2)
    assert np.isfinite(model.score(X[:, :, 0], Y_SMALL[:, :, 0]))


def test_nan_targets_are_left_out():
    # A NaN target is as if it were not asked for: the fit equals the fit without that
    # target time (the middle one, so the solves span the same times), and differs from
    # the fit that sees its values.
    y = Y_SMALL.copy()
    y[:, 1] = np.nan
    model = small(max_iter=1).fit(X_SMALL, y)
    without = small(max_iter=1, target_times=TARGET_TIMES[[0, 2]]).fit(
        X_SMALL, Y_SMALL[:, [0, 2]])
    seen = small(max_iter=1).fit(X_SMALL, Y_SMALL)
    for key, value in model.params_.items():
        np.testing.assert_allclose(without.params_[key], value, rtol=1e-9, atol=1e-12,
                                   err_msg=key)
    assert max(np.max(np.abs(seen.params_[k] - v)) for k, v in model.params_.items()) > 1e-4
    assert np.isfinite(model.score(X_SMALL, y))


# -------------------------------------------------------------------- bad input


def _bad_fits():
    X, y = X_SMALL, Y_SMALL
    empty = X.copy()
    empty[3] = np.nan
    infinite = X.copy()
    infinite[0, 0, 0] = np.inf
    times = np.tile(OBS_TIMES, (24, 1))
    decreasing = times.copy()
    decreasing[2, 5] = decreasing[2, 4]
    nan_inside = times.copy()
    nan_inside[1, 3] = np.nan
    return {
        "4-D X": ((X[..., None], y), {}, "X must have shape"),
        "a series with nothing observed": ((empty, y), {}, "series 3 .*no observed value"),
        "inf": ((infinite, y), {}, "infinity"),
        "times that do not increase": ((X, y), {"times": decreasing},
                                       "series 2 do not increase"),
        "NaN inside the observed part": ((X, y), {"times": nan_inside},
                                         "series 1 contain NaN"),
        "times of the wrong shape": ((X, y), {"times": times[:, :5]}, "times has shape"),
        "target_times of the wrong shape": ((X, y), {"target_times": np.ones((3, 3))},
                                            "target_times has shape"),
        "y that does not match target_times": ((X, y[:, :2]), {}, "y has shape"),
        "y of other channels": ((X, y[:, :, :1]), {}, "y has shape"),
        "a target before the first observation": ((X, y), {"target_times": np.full(
            (24, 3), -1.0)}, "precedes its first observation"),
    }


@pytest.mark.parametrize("case", sorted(_bad_fits()))
def test_bad_input_is_refused_and_loses_nothing(case, fitted):
    args, kwargs, message = _bad_fits()[case]
    with pytest.raises(ValueError, match=message):
        small().fit(*args, **kwargs)
    model = fitted["reference"]
    before = {k: v for k, v in model.__dict__.items()}
    params = {k: v.copy() for k, v in model.params_.items()}
    with pytest.raises(ValueError, match=message):
        model.fit(*args, **kwargs)
    assert set(model.__dict__) == set(before)
    for key, value in params.items():
        np.testing.assert_array_equal(model.params_[key], value)


def test_the_same_refusal_reads_the_same_on_every_engine(engine):
    X = X_SMALL.copy()
    X[3] = np.nan
    with pytest.raises(ValueError) as reference:
        small(backend="reference").fit(X, Y_SMALL)
    with pytest.raises(ValueError) as other:
        small(backend=engine.name).fit(X, Y_SMALL)
    assert str(other.value) == str(reference.value)


def test_predicting_with_other_channels_or_times_is_refused(fitted):
    model = fitted["reference"]
    with pytest.raises(ValueError, match="channel"):
        model.predict(X_SMALL[:, :, :1])
    with pytest.raises(ValueError, match="10 features"):
        model.predict(X_SMALL[:, :6])
    # With their own times, series of any length.
    assert model.predict(X_SMALL[:, :6], times=np.tile(OBS_TIMES[:6], (24, 1))).shape == (
        24, 3, 2)
    with pytest.raises(ValueError, match="eval_times"):
        model.predict_trajectory(X_SMALL, [[0.0, 1.0]])
    with pytest.raises(NotFittedError):
        small().predict(X_SMALL)


# ------------------------------------------------------------ scikit-learn


def test_pipeline_clone_pickle(fitted):
    model = fitted["reference"]
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(again.predict(X_SMALL), model.predict(X_SMALL))
    cloned = clone(model)
    assert not hasattr(cloned, "params_")
    assert repr(cloned.get_params()) == repr(model.get_params())
    # transform: a fixed-length embedding of irregular series, for any estimator.
    X, y = X_SMALL[:, :, 0], Y_SMALL[:, 0, 0]
    pipe = make_pipeline(small(target_times=[3.5], max_iter=2), LinearRegression())
    assert pipe.fit(X, y).predict(X).shape == (24,)
    assert np.isfinite(pipe.score(X, y))


def test_grid_search_over_backend_and_latent_dim():
    engines = [name for name in installed_engines() if name != "jax"]
    search = GridSearchCV(small(max_iter=1), {"backend": engines, "latent_dim": [1, 2]},
                          cv=2, n_jobs=2, error_score="raise")
    search.fit(X_SMALL, Y_SMALL)
    assert set(search.cv_results_["param_backend"]) == set(engines)
    assert search.best_estimator_.predict(X_SMALL).shape == Y_SMALL.shape


def test_spirals_generator():
    data = make_spirals(20, n_observed=30, random_state=0)
    assert data.X.shape == (20, 100, 2) and data.y.shape == (20, 100, 2)
    assert np.all((~np.isnan(data.X[..., 0])).sum(axis=1) == 30)
    step = data.obs_times[1] - data.obs_times[0]
    assert step == pytest.approx(6 * np.pi / 999)
    np.testing.assert_allclose(data.target_times[0], data.obs_times[-1] + step)
    noise = np.nanstd(data.X - data.X_true)
    assert 0.25 < noise < 0.35
    with pytest.raises(ValueError, match="n_observed"):
        make_spirals(2, n_observed=101)
    assert odeplug.LatentODERegressor is LatentODERegressor


def test_union_grid_merges_times_rounding_apart():
    t = 2.0 / 3.0
    times = np.array([[t, 2.0], [np.nextafter(t, 1.0), 2.0 + 4e-16]])
    grid, index = union_grid(times, np.float64)
    assert np.all(np.diff(grid) > 1e-10)
    np.testing.assert_allclose(grid[index], times, rtol=1e-14)
    assert index[0, 0] == index[1, 0] and index[0, 1] == index[1, 1]


def test_partial_fit_warm_start_and_early_stopping():
    model = small()
    model.partial_fit(X_SMALL, Y_SMALL).partial_fit(X_SMALL, Y_SMALL)
    assert model.n_iter_ == 2 and model.loss_curve_[1] < model.loss_curve_[0]
    warm = small(warm_start=True, max_iter=1).fit(X_SMALL, Y_SMALL).fit(X_SMALL, Y_SMALL)
    assert warm.n_iter_ == 2
    stopped = small(early_stopping=True, max_iter=3, validation_fraction=0.25).fit(
        X_SMALL, Y_SMALL)
    assert len(stopped.validation_scores_) == 3
    assert stopped.best_validation_score_ == max(stopped.validation_scores_)
    with pytest.raises(ValueError, match="early_stopping"):
        small(early_stopping=True).partial_fit(X_SMALL, Y_SMALL)


def test_long_time_spans_are_rescaled_inside_the_model():
    """Times spanning more than 4 are divided by ``time_scale_`` (the median span over
    4) before the programs see them: a fit on times ``T`` is the fit on ``T / 4`` bit
    for bit, and answers in the data's units."""
    assert small().fit(X_SMALL, Y_SMALL).time_scale_ == 1.0  # OBS_TIMES span 3
    obs, targets = OBS_TIMES * (16 / 3), TARGET_TIMES * (16 / 3)  # span 16
    slow = small(obs_times=obs, target_times=targets, solver="rk4",
                 step_size=1.0).fit(X_SMALL, Y_SMALL)
    fast = small(obs_times=obs / 4.0, target_times=targets / 4.0, solver="rk4",
                 step_size=0.25).fit(X_SMALL, Y_SMALL)
    assert slow.time_scale_ == 4.0 and fast.time_scale_ == 1.0
    np.testing.assert_array_equal(slow.predict(X_SMALL), fast.predict(X_SMALL))
    np.testing.assert_array_equal(
        slow.predict_trajectory(X_SMALL[:3], eval_times=[4.0, 20.0]),
        fast.predict_trajectory(X_SMALL[:3], eval_times=[1.0, 5.0]))
    spirals = make_spirals(4, n_observed=30, random_state=0)
    assert small(obs_times=spirals.obs_times, target_times=spirals.target_times).fit(
        spirals.X, spirals.y).time_scale_ == 1.0  # the paper's benchmark: unchanged
