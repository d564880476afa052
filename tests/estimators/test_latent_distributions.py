"""LatentODERegressor's distributions: the posterior draws behind
``sample_trajectories`` against ``predict_trajectory(..., return_std=True)`` and the
decoder, and the KL weight's annealing over ``kl_annealing`` epochs, on every engine."""

from __future__ import annotations

import numpy as np
import pytest

import odeplug
from tests.estimators.test_latent import X_SMALL, Y_SMALL, small

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Every series observed at its first time (0.0), so that eval time 0 is each one's z0.
X_DRAWS = X_SMALL[:6].copy()
X_DRAWS[:, 0] = Y_SMALL[:6, 0]
EVAL = np.array([0.0, 1.5, 3.0, 4.0])
N_DRAWS = 4000


@pytest.fixture(scope="module")
def linear_models():
    """small() is linear in z0 (no hidden layer in the field or the decoder): the mean of
    decoded draws is the decoded mean, and z0 is the decoder's input at time 0."""
    return {}


def test_sampled_trajectories_have_the_posterior_spread(engine, linear_models):
    if engine.name not in linear_models:
        linear_models[engine.name] = small(backend=engine.name, max_iter=3).fit(
            X_SMALL, Y_SMALL)
    model = linear_models[engine.name]
    samples = model.sample_trajectories(X_DRAWS, EVAL, N_DRAWS, random_state=0)
    assert samples.shape == (6, N_DRAWS, len(EVAL), 2)
    mean, std = model.predict_trajectory(X_DRAWS, EVAL, return_std=True)
    spread = samples.std(axis=1)
    assert np.all(spread > 1e-3)  # the draws do spread (a posterior, not its mean)
    # Mean: the decoded posterior mean, to the draws' standard error.
    error = np.abs(samples.mean(axis=1) - mean) / (spread / np.sqrt(N_DRAWS))
    assert error.max() < 5.0, error.max()
    # Spread: predict's std is that of 64 fixed draws, plus the observation noise that
    # sample_trajectories leaves out (its variance estimate has a relative error of
    # sqrt(2/63) = 18%: 60% is over three of those, and far from a spread of the wrong
    # scale: log_var read as a std, noise counted, one draw for all rows).
    without_noise = np.sqrt(np.maximum(std**2 - model.noise_std_**2, 0.0))
    ratio = spread / without_noise
    assert 0.6 < np.median(ratio) < 1.4 and np.all((ratio > 0.4) & (ratio < 2.0)), ratio
    # z0 itself: at time 0 a draw decodes to z0 @ W + b; mapped back through the
    # decoder, the draws' mean is transform(X) (the posterior mean), up to the same
    # standard error, and each series' draws are its own.
    W = model.params_["decoder.0.weight"].astype(np.float64)
    b = model.params_["decoder.0.bias"].astype(np.float64)
    z0 = (samples[:, :, 0] - b) @ np.linalg.inv(W)
    z_error = np.abs(z0.mean(axis=1) - model.transform(X_DRAWS)) / (
        z0.std(axis=1) / np.sqrt(N_DRAWS))
    assert z_error.max() < 5.0, z_error.max()
    # Draws of one series are independent of the others': uncorrelated across series.
    corr = np.corrcoef(z0[0, :, 0], z0[1, :, 0])[0, 1]
    assert abs(corr) < 5 / np.sqrt(N_DRAWS)
    # random_state seeds the draws, locally.
    again = model.sample_trajectories(X_DRAWS, EVAL, 8, random_state=0)
    np.testing.assert_array_equal(
        model.sample_trajectories(X_DRAWS, EVAL, 8, random_state=np.random.RandomState(0)),
        again)
    other = model.sample_trajectories(X_DRAWS, EVAL, 8, random_state=1)
    assert not np.allclose(other, again)


def _record_kl_weights(monkeypatch, engine_name) -> list[float]:
    """The KL weight of every optimiser step, as the program receives it."""
    program = odeplug.get_backend(engine_name).make_program(
        small()._spec_of(2, odeplug.get_backend(engine_name).default_dtype))
    cls, weights = type(program), []
    original = cls.step

    def step(self, state, batch, hyper):
        if hyper.learning_rate > 0:  # not an evaluation through the step (JAX's)
            weights.append(float(hyper.kl_weight))
        return original(self, state, batch, hyper)

    monkeypatch.setattr(cls, "step", step)
    return weights


def test_kl_weight_rises_over_kl_annealing_epochs_and_changes_the_fit(engine, monkeypatch):
    weights = _record_kl_weights(monkeypatch, engine.name)
    annealed = small(backend=engine.name, max_iter=6, kl_annealing=4).fit(X_SMALL, Y_SMALL)
    steps_per_epoch = len(weights) // 6
    assert steps_per_epoch == 2 and len(weights) == 12  # 24 series, batches of 16
    per_epoch = np.array(weights).reshape(6, steps_per_epoch)
    assert np.all(per_epoch == per_epoch[:, :1])  # constant within an epoch
    np.testing.assert_allclose(per_epoch[:, 0], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    weights.clear()
    plain = small(backend=engine.name, max_iter=6, kl_annealing=0).fit(X_SMALL, Y_SMALL)
    np.testing.assert_array_equal(weights, 1.0)
    # The same seed and data, another KL weight: another fit, and a lower loss while the
    # weight is below 1 (the KL term is non-negative).
    assert any(not np.allclose(annealed.params_[k], plain.params_[k]) for k in plain.params_)
    assert annealed.loss_curve_[0] < plain.loss_curve_[0]
