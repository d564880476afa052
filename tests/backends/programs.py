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
                      augment_dim=augment_dim, embed_activation=activation,
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


# ------------------------------------------------------------------------ the CNF


def cnf_batch(n=12, seed=1, dtype=np.float32, hutchinson=False):
    """A CNF batch ``(X,)`` of ``n`` rows, 3 features, or ``(X, noise)`` (Rademacher)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(dtype)
    if not hutchinson:
        return (X,)
    return X, (2 * rng.integers(0, 2, (n, 3)) - 1).astype(dtype)


def cnf_spec_and_hyper(solve, *, trace="exact", regularize=True, field_hidden=(7,),
                       field_activation="tanh", dtype="float32", **values):
    """``(CNFTrainingSpec, CNFHyper)`` of the tests' flow (3 features); ``values``
    override the hyper's (by default ``t1`` 0.7, learning rate 1e-2, ``alpha`` 0.5,
    RNODE's weights 0.1 and 0.2)."""
    from odeplug._specs import CNFHyper, CNFSpec, CNFTrainingSpec

    spec = CNFTrainingSpec(
        CNFSpec(n_features=3, field_hidden=field_hidden, field_activation=field_activation,
                dtype=dtype), trace=trace, regularize=regularize)
    hyper = dict(t1=0.7, learning_rate=1e-2, alpha=0.5, kinetic_energy=0.1, jacobian_norm=0.2)
    hyper.update(values)
    return spec, CNFHyper(solve=solve, **hyper)


def assert_cnf_inference_matches(program, reference, spec, hyper, *, rtol):
    """log_density, transform and inverse_transform of an engine against the
    reference's, from the same float parameters; per-row counters of the right shape."""
    params = spec.init_params(3)
    X = cnf_batch(n=7, seed=4, dtype=np.float64)[0]
    for entry in ("log_density", "transform", "inverse_transform"):
        got, stats = getattr(program, entry)(params, X, hyper)
        expected, ref_stats = getattr(reference, entry)(params, X, hyper)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol, err_msg=entry)
        assert stats["nfe_forward"].shape == (7,) and np.all(stats["nfe_forward"] > 0)
        np.testing.assert_array_equal(stats["n_steps"], ref_stats["n_steps"], err_msg=entry)
        empty, empty_stats = getattr(program, entry)(params, X[:0], hyper)
        assert empty.shape[0] == 0 and empty_stats["nfe_forward"].shape == (0,)
