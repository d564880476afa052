"""``LatentODERegressor(field=...)``: the MLP default is today's model; any layer of
``odeplug.layers`` mapping the latent vector to itself trains and predicts the same on
every engine, and is a scikit-learn parameter (clone, grids, warm starts) and a model
file's; the user's own torch or equinox module runs on its engine and is refused on the
others before anything changes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import odeplug
from odeplug import LatentODERegressor, UserField
from odeplug import layers as L
from odeplug._specs import glorot_factor, mlp_params
from tests.backends import latent_programs as checks
from tests.conftest import Engine
from tests.estimators.test_latent import X_SMALL, Y_SMALL, small

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# FFJORD's time conditioning on a 2-D latent state (small()'s latent_dim).
SQUASH = L.Sequential([L.ConcatSquash(L.Dense(8, activation="tanh")), L.Dense(2)])


# -------------------------------------------------------------------- the default


@pytest.mark.parametrize("activation", ["tanh", "logistic"])
@pytest.mark.parametrize("hidden", [(), (20, 20)])
def test_the_mlp_default_keeps_todays_parameter_table_and_draws(activation, hidden):
    """Model files written before fields existed hold this table (tests/golden too)."""
    model = LatentODERegressor(hidden_layer_sizes=hidden, activation=activation,
                               latent_dim=3)
    spec = model._spec_of(2, "float64")
    assert spec.field_layer is None
    todays = mlp_params("field", (3, *hidden, 3), factor=glorot_factor(activation))
    assert {k: p for k, p in spec.param_table().items() if k.startswith("field.")} == todays
    assert list(spec.param_table()).index("field.0.weight") > list(
        spec.param_table()).index("encoder.head.bias")  # the same order, the same draws


# --------------------------------------------------- the same numbers on every engine


# One compiled step on JAX (each costs ~30 s on a loaded 2-core machine).
@pytest.mark.parametrize("engine_name, encoder", [("torch", "rnn"), ("torch", "ode_rnn"),
                                                  ("jax", "rnn")])
def test_a_layer_field_step_and_inference_equal_the_reference(engine_name, encoder,
                                                               jax_x64):
    """float64 (JAX through the jax_x64 fixture): one training step (loss, gradient,
    update) and inference (encode, per-series trajectories, decode) of the reference."""
    engine = Engine(engine_name)
    field = L.Sequential([L.ConcatSquash(L.Dense(6, activation="softplus")),
                          L.ConcatTime(L.Dense(3))])
    spec = checks.spec(encoder, field_layer=field)
    assert "field.0.gate_weight" in spec.param_shapes()
    program = odeplug.get_backend(engine.name).make_program(spec)
    if engine.name == "torch":
        def first_moments(state):
            return {k: state["opt"].state[p]["exp_avg"].numpy().copy()
                    for k, p in state["params"].items()}
    else:
        def first_moments(state):
            return {k: np.asarray(v) for k, v in state["opt"].mu.items()}
    checks.assert_step_matches_reference(program, first_moments, spec, checks.hyper(),
                                         rtol=1e-6, atol=1e-8)
    checks.assert_inference_matches_reference(program, spec, rtol=1e-7, atol=1e-8,
                                              same_counts=engine.name == "torch")


@pytest.fixture(scope="module")
def fitted_squash():
    return small(field=SQUASH, max_iter=3).fit(X_SMALL, Y_SMALL)


def test_a_layer_field_predicts_the_same_on_every_engine(engine, fitted_squash):
    model = fitted_squash
    assert sorted(k for k in model.params_ if k.startswith("field.")) == [
        "field.0.bias", "field.0.gate_bias", "field.0.gate_weight", "field.0.time_weight",
        "field.0.weight", "field.1.bias", "field.1.weight"]
    assert model.backend_ == "reference"
    expected, expected_std = model.predict(X_SMALL, return_std=True)
    try:
        mean, std = model.set_params(backend=engine.name).predict(X_SMALL, return_std=True)
    finally:
        model.set_params(backend=None)
    np.testing.assert_allclose(mean, expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(std, expected_std, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("engine_name", ["torch", "jax"])
def test_a_layer_field_trains_on_every_engine(engine_name):
    info = odeplug.available_backends().get(engine_name)
    if info is None or not info.available:
        pytest.skip(f"backend {engine_name!r} not installed")
    model = small(backend=engine_name, field=SQUASH, max_iter=4,
                  learning_rate_init=0.03).fit(X_SMALL, Y_SMALL)
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert np.all(np.isfinite(model.predict(X_SMALL)))


# ---------------------------------------------------------- scikit-learn parameters


def test_clone_grid_and_warm_start(fitted_squash):
    copy = clone(fitted_squash)
    assert copy.get_params()["field"] == SQUASH and not hasattr(copy, "params_")
    search = GridSearchCV(small(max_iter=1), {"field": ["mlp", SQUASH]}, cv=2,
                          error_score="raise").fit(X_SMALL, Y_SMALL)
    assert [p["field"] for p in search.cv_results_["params"]] == ["mlp", SQUASH]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    # A warm start continues the same architecture and refuses another field.
    model = small(max_iter=1, warm_start=True).fit(X_SMALL, Y_SMALL)
    before = {k: v.copy() for k, v in model.params_.items()}
    with pytest.raises(ValueError, match="the architecture parameters changed"):
        model.set_params(field=SQUASH).fit(X_SMALL, Y_SMALL)
    assert model.params_.keys() == before.keys()
    assert all(np.array_equal(model.params_[k], before[k]) for k in before)
    model.set_params(field="mlp").fit(X_SMALL, Y_SMALL)
    assert model.n_iter_ == 2


@pytest.mark.parametrize("field, match", [
    (L.Sequential([L.Dense(3)]), r"the field maps latent states of shape \(2,\) to \(3,\)"),
    (L.Sequential([L.Conv(2, kernel_size=3)]), r"a 1-D Conv takes rows of shape \(C, L\)"),
    ("conv", "'field' parameter of LatentODERegressor must be"),
    (object(), "'field' parameter of LatentODERegressor must be"),
])
def test_bad_fields_are_refused_before_anything_changes(field, match):
    model = small(max_iter=1).fit(X_SMALL, Y_SMALL)
    before = {k: v.copy() for k, v in model.params_.items()}
    with pytest.raises(ValueError, match=match):
        model.set_params(field=field).fit(X_SMALL, Y_SMALL)
    assert all(np.array_equal(model.params_[k], before[k]) for k in before)
    assert model._spec.field_layer is None


@pytest.mark.parametrize("load_engine", ["reference", "torch", "jax"])
def test_model_file_round_trip(fitted_squash, load_engine):
    info = odeplug.available_backends().get(load_engine)
    if info is None or not info.available:
        pytest.skip(f"backend {load_engine!r} not installed")
    file = io.BytesIO()
    odeplug.save(fitted_squash, file)
    back = odeplug.load(io.BytesIO(file.getvalue()), load_engine)
    assert back.field == SQUASH and back._spec == fitted_squash._spec
    np.testing.assert_allclose(back.predict(X_SMALL), fitted_squash.predict(X_SMALL),
                               rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------- user modules

torch = pytest.importorskip("torch")
eqx = pytest.importorskip("equinox")
jax = pytest.importorskip("jax")


class TorchLatentField(torch.nn.Module):
    """torchdiffeq's convention, ``forward(t, y)`` on a batch of latent states."""

    def __init__(self, width, hidden=8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, width))

    def forward(self, t, y):
        return self.net(y)


class EquinoxLatentField(eqx.Module):
    """diffrax's convention, ``__call__(t, y, args)`` on one latent state."""

    mlp: eqx.nn.MLP

    def __init__(self, width, hidden=8, *, key):
        self.mlp = eqx.nn.MLP(width, width, hidden, 1, activation=jax.nn.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(y)


MODULES = {"torch": TorchLatentField, "jax": EquinoxLatentField}


@pytest.mark.parametrize("home", ["torch", "jax"])
def test_a_user_module_field_fits_predicts_and_round_trips(home):
    field = UserField(MODULES[home], width=2)
    model = small(backend=home, field=field, max_iter=3,
                  learning_rate_init=0.03).fit(X_SMALL, Y_SMALL)
    names = sorted(k for k in model.params_ if k.startswith("field."))
    assert names and all(k.startswith(("field.net.", "field.mlp.")) for k in names)
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    mean, std = model.predict(X_SMALL, return_std=True)
    assert np.all(np.isfinite(mean)) and np.all(std > 0)
    file = io.BytesIO()
    odeplug.save(model, file)
    with pytest.raises(odeplug.ModelFileError, match="give it back"):
        odeplug.load(io.BytesIO(file.getvalue()))
    back = odeplug.load(io.BytesIO(file.getvalue()), field=field)
    np.testing.assert_array_equal(back.predict(X_SMALL), model.predict(X_SMALL))
    # The module runs on its engine only: another refuses it, at predict and at fit,
    # before anything changes.
    other = "reference"
    with pytest.raises(ValueError, match=f"runs on the '{home}' engine only, not on "
                                         f"'{other}'"):
        model.set_params(backend=other).predict(X_SMALL)
    before = {k: v.copy() for k, v in model.params_.items()}
    with pytest.raises(ValueError, match=f"runs on the '{home}' engine only"):
        model.fit(X_SMALL, Y_SMALL)
    assert all(np.array_equal(model.params_[k], before[k]) for k in before)
    assert model.backend_ == home


def test_a_user_module_of_the_wrong_width_is_refused_at_fit():
    with pytest.raises(ValueError, match=r"fails on the ODE state of shape \(2,\)"):
        small(backend="torch", field=UserField(TorchLatentField, width=3)).fit(
            X_SMALL, Y_SMALL)
