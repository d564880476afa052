"""CNFDensity with any architecture as the flow's field (issue #19): ``field="conv"``,
any ``odeplug.layers.Layer``, ``input_shape``; the user's module refused.

Engines agree on the log-density of the same canonical parameters with a
convolutional field; its exact trace (identity tangents through the per-layer JVPs) is
the Jacobian's and Hutchinson's estimate agrees with it in expectation; the density
integrates to 1; model files, clones, grids and warm starts treat the field as the
architecture.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import odeplug
from odeplug import CNFDensity
from odeplug import layers as L
from odeplug._architectures import conv_cnf_field
from odeplug._solver_options import make_solve_config
from odeplug._specs import CNFHyper, CNFSpec
from odeplug.reference.cnf import field_functions
from tests.estimators.test_classifier import installed_engines

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _conv_spec(shape=(2, 3), hidden=(3,), dtype="float64") -> CNFSpec:
    return CNFSpec(n_features=math.prod(shape), field_hidden=hidden, field_activation="tanh",
                   dtype=dtype, input_shape=shape,
                   field_layer=conv_cnf_field(shape, hidden, "tanh"))


def _scaled_params(spec: CNFSpec, seed: int = 0, scale: float = 1.0):
    # Glorot draws give a gentle field; a larger one makes the test see the layers.
    return {k: scale * v for k, v in spec.init_params(seed).items()}


def test_conv_preset_is_ffjords_field():
    field = conv_cnf_field((1, 8, 8), (16, 16), "softplus")
    assert field.output_shape((1, 8, 8)) == (1, 8, 8)
    kinds = [type(layer).__name__ for layer in field.layers]
    assert kinds == ["ConcatSquash", "Activation", "ConcatSquash", "Activation",
                     "ConcatSquash"]
    shapes = CNFSpec(64, (16, 16), "softplus", input_shape=(1, 8, 8),
                     field_layer=field).param_shapes()
    assert shapes["field.0.weight"] == (16, 1, 3, 3)
    assert shapes["field.4.weight"] == (1, 16, 3, 3)
    signal = conv_cnf_field((2, 5), (4,), "tanh")
    assert signal.output_shape((2, 5)) == (2, 5)
    with pytest.raises(ValueError, match=r'field="conv" needs input_shape'):
        conv_cnf_field((4,), (4,), "tanh")


def test_exact_trace_is_the_jacobians_and_hutchinson_agrees_in_expectation():
    spec = _conv_spec()
    params = _scaled_params(spec, scale=2.0)
    field, field_jvp = field_functions(spec, inference=True)
    rng = np.random.default_rng(1)
    z, t, d = rng.normal(size=(3, spec.n_features)), 0.3, spec.n_features
    f, jac = field_jvp(t, z, None, params)
    np.testing.assert_allclose(f, field(t, z, params), rtol=1e-12, atol=1e-14)
    # Central differences of the field: column j of the Jacobian is jac[:, j].
    h = 1e-6
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        column = (field(t, z + e, params) - field(t, z - e, params)) / (2 * h)
        np.testing.assert_allclose(jac[:, j], column, rtol=1e-6, atol=1e-8)
    exact = np.trace(jac, axis1=1, axis2=2)
    assert np.all(np.abs(exact) > 0.05)  # a trace worth estimating
    # Hutchinson: e^T J e over Rademacher probes, unbiased; 4,000 probes per row.
    probes = (2 * rng.integers(0, 2, size=(4000, d)) - 1).astype(float)
    for row in range(3):
        zs = np.repeat(z[row:row + 1], len(probes), axis=0)
        _, jvp = field_jvp(t, zs, probes[:, None, :], params)
        estimates = np.sum(probes * jvp[:, 0], axis=1)
        stderr = estimates.std() / math.sqrt(len(probes))
        assert abs(estimates.mean() - exact[row]) < 4 * stderr + 1e-12


@pytest.mark.usefixtures("jax_x64")
def test_engines_agree_on_the_log_density_of_a_conv_field():
    spec = _conv_spec()
    params = _scaled_params(spec, scale=1.5)
    X = np.random.default_rng(2).normal(size=(5, spec.n_features))
    hyper = CNFHyper(solve=make_solve_config(solver="dopri5", rtol=1e-8, atol=1e-10))
    out = {}
    for name in installed_engines():
        program = odeplug.get_backend(name).make_program(spec)
        log_p, _ = program.log_density(params, X, hyper)
        Z, _ = program.transform(params, X, hyper)
        back, _ = program.inverse_transform(params, Z, hyper)
        np.testing.assert_allclose(back, X, atol=1e-6)
        out[name] = np.asarray(log_p), np.asarray(Z)
    ref_log_p, ref_Z = out["reference"]
    assert np.all(np.abs(ref_log_p + 0.5 * np.sum(X ** 2, 1)) > 1e-3)  # the flow moved
    for name, (log_p, Z) in out.items():
        np.testing.assert_allclose(log_p, ref_log_p, rtol=1e-7, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(Z, ref_Z, rtol=1e-7, atol=1e-7, err_msg=name)


def test_conv_field_density_integrates_to_one():
    # A 1-D conv field on rows (1, 2): a density on the plane, integrated on a grid.
    spec = _conv_spec(shape=(1, 2), hidden=(4,))
    params = _scaled_params(spec, seed=3, scale=2.0)
    program = odeplug.get_backend("reference").make_program(spec)
    edges = np.linspace(-6.0, 6.0, 49)
    centres = 0.5 * (edges[1:] + edges[:-1])
    grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    hyper = CNFHyper(solve=make_solve_config(solver="dopri5", rtol=1e-6, atol=1e-8))
    log_p, _ = program.log_density(params, grid, hyper)
    base = -0.5 * np.sum(grid ** 2, 1) - math.log(2 * math.pi)
    assert np.max(np.abs(log_p - base)) > 0.05  # not the base density itself
    mass = np.sum(np.exp(log_p)) * (edges[1] - edges[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.01)


def _images(n=40, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8))


def test_fit_score_sample_transform_with_conv_and_layer_fields():
    X = _images()
    small = dict(backend="reference", hidden_layer_sizes=(3,), max_iter=2, random_state=0,
                 solver="rk4", step_size=0.5)
    conv = CNFDensity(field="conv", input_shape=(2, 4), **small).fit(X)
    assert conv._spec.field_layer == conv_cnf_field((2, 4), (3,), "tanh")
    assert conv._spec.input_shape == (2, 4)
    assert "field.0.gate_weight" in conv.params_
    assert conv._trace_of(8) == "hutchinson"
    assert conv.score_samples(X[:3]).shape == (3,)
    assert conv.sample(2, random_state=0).shape == (2, 8)
    assert conv.transform(X[:2]).shape == (2, 8)
    assert conv.inverse_transform(conv.transform(X[:2])).shape == (2, 8)
    # Any layer on the flat state, and on the shaped one.
    flat = L.Sequential([L.ConcatSquash(L.Dense(5, activation="tanh")),
                         L.ConcatSquash(L.Dense(8))])
    model = CNFDensity(field=flat, **small).fit(X)
    assert model._spec.field_layer == flat and model._spec.state_shape == (8,)
    assert np.all(np.isfinite(model.score_samples(X[:3])))
    wrong = L.Sequential([L.ConcatTime(L.Dense(5))])
    with pytest.raises(ValueError, match=r"maps states of shape \(8,\) to \(5,\)"):
        CNFDensity(field=wrong, **small).fit(X)
    with pytest.raises(ValueError, match=r'field="conv" needs input_shape'):
        CNFDensity(field="conv", **small).fit(X)
    with pytest.raises(ValueError, match=r"input_shape \(3, 4\) has 12 entries"):
        CNFDensity(field="conv", input_shape=(3, 4), **small).fit(X)


def test_mlp_field_is_todays_model():
    X = _images()
    kwargs = dict(backend="reference", hidden_layer_sizes=(4,), max_iter=1, random_state=0,
                  solver="rk4", step_size=0.5)
    default = CNFDensity(**kwargs).fit(X)
    # input_shape does not shape the MLP: the same spec, parameters and fit.
    shaped = CNFDensity(field="mlp", input_shape=(2, 4), **kwargs).fit(X)
    assert default._spec == shaped._spec == CNFSpec(8, (4,), "tanh", dtype="float64")
    for k, v in default.params_.items():
        np.testing.assert_array_equal(v, shaped.params_[k])


def test_save_load_round_trip_of_a_conv_field():
    X = _images()
    model = CNFDensity(backend="reference", field="conv", input_shape=(2, 4),
                       hidden_layer_sizes=(3,), max_iter=2, random_state=0, solver="rk4",
                       step_size=0.5).fit(X)
    buffer = io.BytesIO()
    odeplug.save(model, buffer)
    buffer.seek(0)
    loaded = odeplug.load(buffer)
    assert loaded._spec == model._spec and loaded.field == "conv"
    assert loaded.input_shape == (2, 4)
    np.testing.assert_array_equal(loaded.score_samples(X[:4]), model.score_samples(X[:4]))
    # A layer given as the field is saved as a description too.
    layer = L.Sequential([L.ConcatSquash(L.Conv(2, (3,), padding=1))])
    model = CNFDensity(backend="reference", field=layer, input_shape=(2, 4), max_iter=1,
                       random_state=0, solver="rk4", step_size=0.5).fit(X)
    buffer = io.BytesIO()
    odeplug.save(model, buffer)
    buffer.seek(0)
    loaded = odeplug.load(buffer)
    assert loaded.field == layer and loaded._spec == model._spec
    np.testing.assert_array_equal(loaded.score_samples(X[:4]), model.score_samples(X[:4]))


def test_clone_and_grid_over_fields():
    X = _images(60)
    est = CNFDensity(backend="reference", input_shape=(2, 4), hidden_layer_sizes=(3,),
                     max_iter=2, random_state=0, solver="rk4", step_size=0.5)
    grid = GridSearchCV(est, {"field": ["mlp", "conv"]}, cv=2).fit(X)
    assert [p["field"] for p in grid.cv_results_["params"]] == ["mlp", "conv"]
    assert np.all(np.isfinite(grid.cv_results_["mean_test_score"]))
    layer = conv_cnf_field((2, 4), (3,), "tanh")
    copy = clone(est.set_params(field=layer))
    assert copy.get_params()["field"] == layer
    assert hash(copy.field) == hash(layer)


def test_warm_start_refuses_an_architecture_change():
    X = _images()
    model = CNFDensity(backend="reference", input_shape=(2, 4), hidden_layer_sizes=(3,),
                       max_iter=1, random_state=0, solver="rk4", step_size=0.5).fit(X)
    before = {k: v.copy() for k, v in model.params_.items()}
    model.set_params(warm_start=True, field="conv")
    with pytest.raises(ValueError, match="architecture parameters changed"):
        model.fit(X)
    assert model._spec.field_layer is None
    for k, v in before.items():
        np.testing.assert_array_equal(model.params_[k], v)
    # The same conv field continues.
    model = CNFDensity(backend="reference", field="conv", input_shape=(2, 4),
                       hidden_layer_sizes=(3,), max_iter=1, random_state=0, solver="rk4",
                       step_size=0.5).fit(X)
    model.set_params(warm_start=True).fit(X)
    assert model.n_iter_ == 2
    model.set_params(input_shape=(4, 2))
    with pytest.raises(ValueError, match="architecture parameters changed"):
        model.fit(X)


def test_user_module_is_refused_at_fit_before_anything_changes():
    torch = pytest.importorskip("torch")

    class Field(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.linear = torch.nn.Linear(width, width)

        def forward(self, t, y):
            return self.linear(y)

    X = _images()
    model = CNFDensity(backend="torch", hidden_layer_sizes=(3,), max_iter=1, random_state=0,
                       solver="rk4", step_size=0.5).fit(X)
    before = {k: v.copy() for k, v in model.params_.items()}
    for warm in (False, True):
        model.set_params(field=odeplug.UserField(Field, width=8), warm_start=warm)
        with pytest.raises(ValueError, match="does not take a user module as its field"):
            model.fit(X)
        assert model._spec.field_layer is None
        for k, v in before.items():
            np.testing.assert_array_equal(model.params_[k], v)
    fresh = CNFDensity(backend="torch", field=odeplug.UserField(Field, width=8))
    with pytest.raises(ValueError, match=r"per-layer Jacobian-vector products"):
        fresh.fit(X)
    assert not hasattr(fresh, "params_")
