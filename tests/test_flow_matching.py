"""Flow matching's core (odeplug/_flow_matching.py), engine-free: the OT pairing against
brute force, the conditional path in CNFDensity's time, the batches the training loop
makes, and the regression's minimiser on Gaussian data against its closed form."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from autograd import grad
from scipy import stats

import odeplug
from odeplug._flow_matching import (
    FlowMatching,
    conditional_path,
    gaussian_optimal_field,
    ot_pairing,
)

MEAN = np.array([1.5, -0.5])
COV = np.array([[2.0, 0.6], [0.6, 0.5]])


def transport_cost(x, e, perm):
    return float(np.sum((x - e[perm]) ** 2))


@pytest.mark.parametrize("seed", range(5))
def test_ot_pairing_is_the_permutation_of_least_cost_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    x, e = rng.normal(size=(7, 2)) + [2.0, 0.0], rng.normal(size=(7, 2))
    perm = ot_pairing(x, e)
    assert sorted(perm.tolist()) == list(range(7))
    costs = [transport_cost(x, e, np.array(p)) for p in itertools.permutations(range(7))]
    assert transport_cost(x, e, perm) == pytest.approx(min(costs), rel=1e-12, abs=1e-12)


def test_ot_pairing_of_a_batch_with_itself_is_the_identity():
    x = np.random.default_rng(0).normal(size=(20, 3))
    np.testing.assert_array_equal(ot_pairing(x, x), np.arange(20))


def test_the_path_runs_from_the_smoothed_data_at_0_to_the_base_at_t1():
    rng = np.random.default_rng(1)
    x, e = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    t1, sigma = 2.0, 0.1
    t, at_data, _ = conditional_path(x, e, np.zeros(5), sigma, t1)
    np.testing.assert_array_equal(t, np.zeros((5, 1)))
    np.testing.assert_allclose(at_data, x + sigma * e)
    t, at_base, _ = conditional_path(x, e, np.ones(5), sigma, t1)
    np.testing.assert_allclose(t, np.full((5, 1), t1))
    np.testing.assert_allclose(at_base, e)


def test_the_target_is_the_time_derivative_of_the_path():
    rng = np.random.default_rng(2)
    x, e, u = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), rng.uniform(0.1, 0.9, 5)
    t1, sigma, h = 1.7, 0.05, 1e-6
    _, _, target = conditional_path(x, e, u, sigma, t1)
    _, ahead, _ = conditional_path(x, e, u + h / t1, sigma, t1)
    _, behind, _ = conditional_path(x, e, u - h / t1, sigma, t1)
    np.testing.assert_allclose((ahead - behind) / (2 * h), target, rtol=1e-7, atol=1e-8)


def test_sigma_min_0_is_the_issues_straight_line_read_backwards():
    # x_s = (1 - s) x0 + s x1 with x0 the base draw, x1 the data, s = 1 - t / t1.
    rng = np.random.default_rng(3)
    x1, x0, s = rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), rng.uniform(size=4)
    t1 = 1.0
    _, x_t, target = conditional_path(x1, x0, 1.0 - s, 0.0, t1)
    np.testing.assert_allclose(x_t, (1 - s[:, None]) * x0 + s[:, None] * x1)
    np.testing.assert_allclose(target, -(x1 - x0))  # d/dt = -d/ds


def test_batches_are_drawn_from_the_generator_only():
    fm = FlowMatching(sigma_min=0.01, ot_pairing=True, t1=1.5, dtype="float32")
    X = np.random.default_rng(4).normal(size=(32, 3))
    one = fm.batch(np.random.RandomState(7), (X,))
    two = fm.batch(np.random.RandomState(7), (X,))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32
    t, x_t, target = one
    assert t.shape == (32, 1) and x_t.shape == target.shape == (32, 3)


def test_times_are_uniform_on_0_t1():
    fm = FlowMatching(sigma_min=0.0, ot_pairing=False, t1=3.0, dtype="float64")
    t, _, _ = fm.batch(np.random.RandomState(0), (np.zeros((4000, 1)),))
    assert t.min() >= 0.0 and t.max() <= 3.0
    assert stats.kstest(t[:, 0] / 3.0, "uniform").pvalue > 1e-3


def test_ot_pairing_pairs_the_same_draws_at_less_cost():
    X = np.random.default_rng(5).normal(size=(64, 2)) * 3.0 + 1.0
    kwargs = dict(sigma_min=0.0, t1=1.0, dtype="float64")
    base = {}
    for paired in (False, True):
        # With sigma_min 0 and t1 1 the target is e - x: it gives back the paired draws.
        _, _, target = FlowMatching(ot_pairing=paired, **kwargs).batch(
            np.random.RandomState(3), (X,))
        base[paired] = target + X
    # The same draws, another order, and a cheaper transport.
    np.testing.assert_allclose(np.sort(base[True], axis=0), np.sort(base[False], axis=0))
    assert np.sum((X - base[True]) ** 2) < np.sum((X - base[False]) ** 2)


# ----------------------------------------------------- Gaussian data: the optimal field


@pytest.mark.parametrize("u", [0.1, 0.5, 0.9])
def test_least_squares_field_converges_to_the_closed_form_optimal_field(u):
    """At a fixed time the regression's minimiser over all fields is the conditional mean
    E[target | x_t], affine in x_t for Gaussian data: an affine least-squares fit of many
    samples of (x_t, target) must converge to the closed form."""
    t1, sigma = 2.0, 0.05
    rng = np.random.default_rng(6)
    errors = []
    for n in (4_000, 400_000):
        x = rng.multivariate_normal(MEAN, COV, size=n)
        e = rng.standard_normal((n, 2))
        _, x_t, target = conditional_path(x, e, np.full(n, u), sigma, t1)
        design = np.column_stack([np.ones(n), x_t])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        probe = np.array([[0.0, 0.0], [1.0, -1.0], [2.5, 0.5], [-1.0, 1.0]])
        fitted = np.column_stack([np.ones(len(probe)), probe]) @ coef
        errors.append(np.max(np.abs(fitted - gaussian_optimal_field(
            u * t1, probe, MEAN, COV, sigma, t1))))
    assert errors[1] < 0.01
    assert errors[1] < errors[0]  # converging, at about 1/sqrt(n)


def test_the_optimal_field_carries_the_smoothed_data_to_the_base_on_cnf_time():
    """The flow of the closed-form field, solved by odeplug.odeint from t = 0 to t1 on
    the mean and covariance of a Gaussian (an affine field keeps it Gaussian:
    dm/dt = v(m), dC/dt = A C + C A^T), starts at N(MEAN, COV + sigma^2 I), the data end
    of CNFDensity's time, and must end at N(0, I) at t1."""
    t1, sigma, d = 1.5, 0.05, 2

    def moments_field(t, y, _):
        m, C = y[:d], y[d:].reshape(d, d)
        offset = gaussian_optimal_field(t, np.zeros((1, d)), MEAN, COV, sigma, t1)[0]
        A = gaussian_optimal_field(t, np.eye(d), MEAN, COV, sigma, t1) - offset
        A = A.T  # rows of the field at the unit vectors: columns of the linear map
        return np.concatenate([A @ m + offset, (A @ C + C @ A.T).ravel()])

    y0 = np.concatenate([MEAN, (COV + sigma**2 * np.eye(d)).ravel()])
    ys = odeplug.odeint(moments_field, y0, np.array([0.0, t1]), None, backend="reference",
                           rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ys[-1][:d], np.zeros(d), atol=1e-7)
    np.testing.assert_allclose(ys[-1][d:].reshape(d, d), np.eye(d), atol=1e-7)


# ---------------------------------------------- the reference engine's training program


def _reference():
    return odeplug.get_backend("reference").make_program


def test_reference_loss_is_the_regression_of_the_field_onto_the_target():
    from tests.backends.flow_matching import fm_batch, fm_hyper, fm_spec, numpy_loss

    spec = fm_spec()
    program = _reference()(spec)
    params = spec.init_params(0)
    batch = fm_batch(spec)
    metrics = program.evaluate(program.init(params), batch, fm_hyper())
    assert metrics["loss"] == pytest.approx(
        numpy_loss(params, batch, 0.5, spec.penalized_names()), rel=1e-12)
    assert metrics["mse"] == pytest.approx(numpy_loss(params, batch, 0.0, ()), rel=1e-12)
    # No solve: one field evaluation, backpropagated.
    assert metrics["nfe_forward"] == 1 and metrics["nfe_backward"] == 0


def test_reference_gradient_matches_finite_differences():
    from tests.backends.flow_matching import fm_batch, fm_hyper, fm_spec, numpy_loss

    spec = fm_spec()
    program = _reference()(spec)
    params = spec.init_params(1)
    batch = fm_batch(spec, seed=3)
    hyper = fm_hyper()
    gradient = grad(lambda p: program._loss(p, *program._batch(batch), hyper, {}))(params)
    h = 1e-6
    for name, value in params.items():
        for index in [(0,) * value.ndim, tuple(s - 1 for s in value.shape)]:
            up, down = dict(params), dict(params)
            up[name], down[name] = value.copy(), value.copy()
            up[name][index] += h
            down[name][index] -= h
            numeric = (numpy_loss(up, batch, 0.5, spec.penalized_names())
                       - numpy_loss(down, batch, 0.5, spec.penalized_names())) / (2 * h)
            assert gradient[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


def test_reference_step_is_adam_on_the_regression_and_shares_the_cnf_state():
    from odeplug.reference.programs import Adam
    from tests.backends.flow_matching import fm_batch, fm_hyper, fm_spec

    spec = fm_spec()
    program = _reference()(spec)
    cnf_program = _reference()(spec.cnf)
    params = spec.init_params(2)
    state = cnf_program.init(params)  # the CNF's own state trains under flow matching
    batch, hyper = fm_batch(spec), fm_hyper()
    state, metrics = program.step(state, batch, hyper)
    expected_grads = grad(lambda p: program._loss(p, *program._batch(batch), hyper, {}))(
        params)
    expected, _ = Adam.update(params, expected_grads, Adam.init(params), hyper)
    for name in params:
        np.testing.assert_allclose(state["params"][name], expected[name], rtol=1e-12)
    assert state["opt"]["count"] == 1
    # ... and the CNF's program scores the parameters flow matching trained.
    log_p, _ = cnf_program.log_density(cnf_program.get_params(state), batch[1][:3], hyper)
    assert log_p.shape == (3,) and np.all(np.isfinite(log_p))


def test_reference_step_refuses_a_batch_of_another_objective():
    from tests.backends.flow_matching import fm_hyper, fm_spec

    spec = fm_spec()
    program = _reference()(spec)
    with pytest.raises(ValueError, match=r"a flow-matching step takes a batch \(t, x_t, "):
        program.step(program.init(spec.init_params(0)), (np.zeros((4, 2)),), fm_hyper())
