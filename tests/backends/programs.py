"""Shared checks of the engines' ODE-Net programs against the reference program."""

from __future__ import annotations

import numpy as np
import pytest

from odeplug._specs import Hyper, ODENetSpec


def make_batch(n=24, seed=1, dtype=np.float32):
    """A batch ``(X, y)`` of ``n`` rows, 5 features, 3 classes."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(dtype), rng.integers(0, 3, n)


def spec_and_hyper(solve, *, activation="tanh", field_activation="tanh", augment_dim=2,
                   field_hidden=(7,), dtype="float32", t1=1.0, learning_rate=1e-2,
                   alpha=0.5, **adam):
    """``(ODENetSpec, Hyper)`` of the tests' ODE-Net (5 features, 3 classes, embedding 6).

    The spec holds what fixes the shapes; the hyper, what the program takes at each call
    (``solve``, ``t1``, ``learning_rate``, ``alpha`` and, in ``adam``, ``beta1``,
    ``beta2``, ``epsilon``).
    """
    spec = ODENetSpec(n_features=5, n_outputs=3, embed_dim=6, field_hidden=field_hidden,
                      augment_dim=augment_dim, activation=activation,
                      field_activation=field_activation, dtype=dtype)
    return spec, Hyper(solve=solve, t1=t1, learning_rate=learning_rate, alpha=alpha, **adam)


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


def assert_evaluate_keeps_state(program, state, batch, hyper, snapshot, *, loss_rtol):
    """``evaluate`` reports the loss of the state's parameters and changes nothing.

    ``snapshot(state)`` is a dict of NumPy copies of everything the state holds
    (parameters, optimiser moments and counters). ``evaluate`` runs twice, then a
    ``step`` from the same state: its loss (that of the parameters it started from) is
    the one ``evaluate`` reported (torch's step then updates ``state`` in place).
    Returns the metrics of ``evaluate`` and of the step.
    """
    before = snapshot(state)
    metrics = program.evaluate(state, batch, hyper)
    assert isinstance(metrics["loss"], float) and np.isfinite(metrics["loss"])
    again = program.evaluate(state, batch, hyper)
    after = snapshot(state)
    assert set(after) == set(before)
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    assert again["loss"] == metrics["loss"]  # nothing moved between the two
    new_state, step_metrics = program.step(state, batch, hyper)
    assert metrics["loss"] == pytest.approx(step_metrics["loss"], rel=loss_rtol)
    # The snapshot can tell a change: the step's state differs from the one evaluated.
    stepped = snapshot(new_state)
    assert any(not np.array_equal(stepped[key], value) for key, value in before.items())
    return metrics, step_metrics
