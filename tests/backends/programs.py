"""Shared checks of the engines' ODE-Net programs against the reference program."""

from __future__ import annotations

import numpy as np
import pytest


def make_batch(n=24, seed=1, dtype=np.float32):
    """A batch ``(X, y)`` of ``n`` rows, 5 features, 3 classes."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(dtype), rng.integers(0, 3, n)


def assert_first_step_matches(got, ref, spec, *, loss_rtol, moment_rtol, moment_atol,
                              param_rtol, param_atol):
    """One training step of an engine against the reference's, from the same parameters.

    ``got`` and ``ref`` are ``(metrics, Adam's first moments, updated params)``;
    ``moment_atol`` is relative to the largest reference moment of each parameter.
    """
    (metrics, moments, params), (ref_metrics, ref_moments, ref_params) = got, ref
    assert isinstance(metrics["loss"], float)
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=loss_rtol)
    for key in spec.param_shapes():
        # Adam's first moment after one step is (1 - beta1) * gradient.
        scale = np.abs(ref_moments[key]).max() + 1e-6
        np.testing.assert_allclose(moments[key], ref_moments[key], rtol=moment_rtol,
                                   atol=moment_atol * scale, err_msg=key)
        np.testing.assert_allclose(params[key], ref_params[key], rtol=param_rtol,
                                   atol=param_atol, err_msg=key)
        assert params[key].dtype == np.dtype(spec.dtype)
