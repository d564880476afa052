"""Shared checks of the engines' latent ODE programs against the reference program.

Each engine's test module gives its program factory and a function reading Adam's first
moments (``(1 - beta1) * gradient`` after one step) out of its training state.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from odeplug import SolverError
from odeplug._solver_options import make_solve_config
from odeplug._specs import LatentHyper, LatentODESpec
from odeplug.reference.latent import LatentProgram as ReferenceProgram


def spec(encoder="ode_rnn", dtype="float64", fit_noise=True, **kwargs) -> LatentODESpec:
    values = dict(n_channels=2, latent_dim=3, encoder=encoder, encoder_hidden=5,
                  encoder_field_hidden=(4,) if encoder == "ode_rnn" else (),
                  field_hidden=(6,), decoder_hidden=(4,), encoder_activation="tanh",
                  field_activation="tanh", decoder_activation="tanh", fit_noise=fit_noise,
                  dtype=dtype)
    values.update(kwargs)
    return LatentODESpec(**values)


def hyper(adjoint=False, **kwargs) -> LatentHyper:
    values = dict(solve=make_solve_config("dopri5", rtol=1e-7, atol=1e-9, adjoint=adjoint),
                  learning_rate=1e-2, alpha=0.3, kl_weight=0.6, noise_std=0.4)
    values.update(kwargs)
    return LatentHyper(**values)


def batch(n=6, n_obs=5, n_targets=2, seed=0, dtype="float64", latent_dim=3):
    """A training batch of irregular 2-channel series (see odeplug.reference.latent)."""
    rng = np.random.default_rng(seed)
    obs = np.sort(rng.uniform(0.0, 3.0, (n, n_obs)), axis=1)
    lengths = rng.integers(2, n_obs + 1, n)
    enc_times = np.full((n, n_obs), np.nan)
    enc_values = np.zeros((n, n_obs, 2))
    enc_mask = np.zeros((n, n_obs, 2), bool)
    for i, k in enumerate(lengths):
        enc_times[i, :k] = obs[i, :k][::-1]
        enc_values[i, :k] = rng.normal(size=(k, 2))
        enc_mask[i, :k] = rng.random((k, 2)) < 0.8
        enc_mask[i, :k, 0] |= ~enc_mask[i, :k].any(axis=1)  # one channel at least
    t0 = np.nanmin(enc_times, axis=1)
    dec_times = np.concatenate([np.nan_to_num(enc_times[:, ::-1] - t0[:, None]),
                                3.0 + rng.uniform(0.0, 1.0, (n, n_targets))], axis=1)
    dec_values = rng.normal(size=(n, n_obs + n_targets, 2))
    dec_mask = np.concatenate([enc_mask[:, ::-1], rng.random((n, n_targets, 2)) < 0.9], 1)
    eps = rng.normal(size=(n, latent_dim))
    return (enc_values.astype(dtype), enc_mask, enc_times, dec_times,
            dec_values.astype(dtype), dec_mask, eps.astype(dtype))


def assert_step_matches_reference(program, first_moments, spec_, hyper_, *, rtol, atol):
    """One step from the same parameters: the loss, the gradient (Adam's first moment)
    and the updated parameters of the reference program."""
    params = spec_.init_params(0)
    data = batch(dtype=spec_.dtype, latent_dim=spec_.latent_dim)
    reference = ReferenceProgram(spec_)
    ref_state, ref_metrics = reference.step(reference.init(params), data, hyper_)
    state, metrics = program.step(program.init(params), data, hyper_)
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=rtol)
    for name in ("kl", "reconstruction"):
        assert metrics[name] == pytest.approx(ref_metrics[name], rel=rtol, abs=atol)
    moments = first_moments(state)
    gradient = reference.gradient(params, data, hyper_)
    for key, value in gradient.items():
        scale = np.abs(value).max() + 1e-8
        np.testing.assert_allclose(moments[key], (1 - hyper_.beta1) * value, rtol=rtol,
                                   atol=atol * scale, err_msg=key)
    new = program.get_params(state)
    for key, value in reference.get_params(ref_state).items():
        np.testing.assert_allclose(new[key], value, rtol=rtol, atol=atol, err_msg=key)
        assert new[key].dtype == np.dtype(spec_.dtype)
    assert metrics["nfe_forward"] > 0
    return metrics, ref_metrics


def assert_inference_matches_reference(program, spec_, *, rtol=1e-9, atol=1e-10,
                                       same_counts=True):
    """encode, trajectory and decode of the reference program, in float64, per row."""
    params = spec_.init_params(1)
    enc_values, enc_mask, enc_times, dec_times, *_ = batch(n=7, seed=3)
    reference = ReferenceProgram(spec_)
    h = hyper(solve=make_solve_config("dopri5", rtol=1e-6, atol=1e-8))
    mean, log_var, stats = program.encode(params, enc_values, enc_mask, enc_times, h)
    ref_mean, ref_log_var, ref_stats = reference.encode(params, enc_values, enc_mask,
                                                        enc_times, h)
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, ref_mean, rtol=rtol, atol=atol)
    np.testing.assert_allclose(log_var, ref_log_var, rtol=rtol, atol=atol)
    if same_counts:
        for key, value in ref_stats.items():
            np.testing.assert_array_equal(stats[key], value, err_msg=key)
    grids = np.array([[0.0, 0.5, 2.0, np.nan], [0.0, 1.0, 1.5, 3.0]] * 3 + [[0.0] + [
        np.nan] * 3])
    zs, counters = program.trajectory(params, mean, grids, h)
    ref_zs, ref_counters = reference.trajectory(params, ref_mean, grids, h)
    assert zs.shape == (7, 4, spec_.latent_dim)
    np.testing.assert_allclose(zs, ref_zs, rtol=rtol, atol=atol)
    assert np.isnan(zs[0, 3]).all() and np.isnan(zs[6, 1:]).all()
    if same_counts:
        for key, value in ref_counters.items():
            np.testing.assert_array_equal(counters[key], value, err_msg=key)
    # Each series alone: the same numbers as in the batch.
    alone, _ = program.trajectory(params, mean[1:2], grids[1:2], h)
    np.testing.assert_allclose(alone[0], zs[1], rtol=1e-12, atol=1e-12)
    decoded = program.decode(params, ref_zs[:, :3], h)
    np.testing.assert_allclose(decoded, reference.decode(params, ref_zs[:, :3], h),
                               rtol=rtol, atol=atol)
    assert decoded.shape == (7, 3, 2)


def assert_failures_read_as_the_reference(program, spec_):
    """A step budget too small for the latent solve fails as on the reference engine."""
    params = spec_.init_params(1)
    enc_values, enc_mask, enc_times, *_ = batch(n=3, seed=3)
    h = hyper(solve=make_solve_config("dopri5", rtol=1e-10, atol=1e-12, max_num_steps=2))
    mean = np.ones((3, spec_.latent_dim))
    grids = np.array([[0.0, 50.0]] * 3)
    messages = []
    for p in (program, ReferenceProgram(spec_)):
        with pytest.raises(SolverError) as error:
            p.trajectory(params, mean, grids, h)
        messages.append((str(error.value), error.value.reason))
    assert messages[0] == messages[1]
    assert "row 0" in messages[0][0]


def with_dtype(spec_, dtype):
    return dataclasses.replace(spec_, dtype=dtype)
