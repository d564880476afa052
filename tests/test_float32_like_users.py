"""What users run: JAX in float32 (its default, x64 off) with XLA optimising as it does
by default. One fit and the predictions of each family there, against the reference
engine (float64), to float32's precision."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
from sklearn.datasets import make_moons

import odeplug
from tests.estimators.test_latent import X_SMALL, Y_SMALL
from tests.estimators.test_latent import small as small_latent

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X, Y = make_moons(64, noise=0.1, random_state=0)
COMMON = dict(max_iter=3, random_state=0)

# family: (model on an engine, training data, inference outputs)
FAMILIES = {
    "classifier": (
        lambda engine: odeplug.ODEClassifier((8,), latent_dim=8, batch_size=32,
                                             learning_rate_init=0.02, backend=engine,
                                             **COMMON),
        (X, Y), lambda m: {"predict_proba": m.predict_proba(X)}),
    "density": (
        lambda engine: odeplug.CNFDensity(hidden_layer_sizes=(8,), batch_size=32,
                                          learning_rate_init=0.02, backend=engine, **COMMON),
        (X,), lambda m: {"score_samples": m.score_samples(X), "transform": m.transform(X)}),
    "latent": (
        lambda engine: small_latent(backend=engine, **COMMON),
        (X_SMALL, Y_SMALL),
        lambda m: _latent_outputs(m)),
}


def _latent_outputs(model) -> dict[str, np.ndarray]:
    mean, std = model.predict(X_SMALL, return_std=True)
    return {"predict": mean, "predict_std": std, "transform": model.transform(X_SMALL)}


@pytest.fixture(scope="module")
def jax_as_users_run():
    jax = pytest.importorskip("jax")
    info = odeplug.available_backends().get("jax")
    if info is None or not info.available:
        pytest.skip("backend 'jax' not installed")
    # Nothing of the test set-up changes what users get.
    assert not jax.config.jax_enable_x64
    flags = os.environ.get("XLA_FLAGS", "")
    assert "optimization_level" not in flags and "disable_expensive_passes" not in flags
    return jax


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_jax_float32_fit_and_predictions_match_the_reference(family, jax_as_users_run):
    make, data, outputs = FAMILIES[family]
    reference = make("reference").fit(*data)
    fitted = make("jax").fit(*data)
    assert fitted._spec.dtype == "float32" and reference._spec.dtype == "float64"
    # The fit: the same initial parameters and minibatches, float32 steps.
    np.testing.assert_allclose(fitted.loss_curve_, reference.loss_curve_, rtol=FIT_RTOL)
    for name, value in reference.params_.items():
        assert fitted.params_[name].dtype == np.float32
        np.testing.assert_allclose(fitted.params_[name], value, rtol=FIT_RTOL,
                                   atol=FIT_RTOL, err_msg=name)
    # The predictions: the jax fit's float32 parameters, predicted on jax (optimised
    # XLA) and on the reference engine.
    on_reference = copy.deepcopy(fitted).set_params(backend="reference")
    expected = outputs(on_reference)
    for what, got in outputs(fitted).items():
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected[what], rtol=PREDICT_RTOL,
                                   atol=PREDICT_RTOL, err_msg=what)


# Measured on CPU (jax 0.10.2, optimised XLA): training curves and parameters within
# 3e-6 of the float64 fit after 3 epochs (float32 steps), predictions within 4e-15 (the
# engines infer in float64 from the float32 parameters). The bounds: float32's rounding
# accumulated over the steps, with a margin of 30; for predictions, float32's precision
# (so that a float32 inference would pass, and a wrong one would not).
FIT_RTOL = 1e-4
PREDICT_RTOL = 1e-6
