"""``ODEClassifier(field=odeplug.UserField(cls, **kwargs))``: the user's own torch module
(torch engine) or equinox module (jax engine) as the vector field. It trains and
predicts on its engine, is a scikit-learn parameter (clone, grids, partial_fit), goes
through model files as arrays (the module given back at load), and every other engine
refuses it before anything changes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_moons
from sklearn.model_selection import GridSearchCV

import odeplug
from odeplug import ODEClassifier, UserField

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

torch = pytest.importorskip("torch")
eqx = pytest.importorskip("equinox")
jax = pytest.importorskip("jax")

ENGINES = ("reference", "torch", "jax")
FIXED = dict(solver="rk4", step_size=0.5)  # two steps per solve: fast and deterministic


class TorchField(torch.nn.Module):
    """torchdiffeq's convention: ``forward(t, y)`` on a batch; ``t`` broadcast."""

    def __init__(self, width, hidden=8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(width + 1, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, width))

    def forward(self, t, y):
        return self.net(torch.cat([y, t * torch.ones_like(y[:, :1])], dim=1))


class EquinoxField(eqx.Module):
    """diffrax's convention: ``__call__(t, y, args)`` on one row."""

    mlp: eqx.nn.MLP

    def __init__(self, width, hidden=8, *, key):
        self.mlp = eqx.nn.MLP(width + 1, width, hidden, 1, activation=jax.nn.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(jax.numpy.concatenate([y, t[None]]))


class TorchWrongWidth(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.linear = torch.nn.Linear(width, width + 1)

    def forward(self, t, y):
        return self.linear(y)


MODULES = {"torch": TorchField, "jax": EquinoxField}
# The module's own parameter names, under "field."
FIELD_NAMES = {"torch": ["field.net.0.bias", "field.net.0.weight", "field.net.2.bias",
                         "field.net.2.weight"],
               "jax": ["field.mlp.layers.0.bias", "field.mlp.layers.0.weight",
                       "field.mlp.layers.1.bias", "field.mlp.layers.1.weight"]}


@pytest.fixture(params=["torch", "jax"])
def home(request) -> str:
    """The engine of the module's framework."""
    return request.param


def _data(n=40):
    X, y = make_moons(n, noise=0.1, random_state=0)
    return X, y


def _clf(home, width=4, hidden=8, **kwargs):
    params = dict(backend=home, hidden_layer_sizes=(), latent_dim=width, max_iter=3,
                  learning_rate_init=0.05, random_state=0,
                  field=UserField(MODULES[home], width=width, hidden=hidden), **FIXED)
    params.update(kwargs)
    return ODEClassifier(**params)


# ------------------------------------------------------------------ fit, predict


def test_fit_predict_trains_the_module_parameters(home):
    X, y = _data()
    clf = _clf(home, max_iter=15).fit(X, y)
    assert sorted(k for k in clf.params_ if k.startswith("field.")) == FIELD_NAMES[home]
    assert clf.params_["embed.weight"].shape == (2, 4)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(X, y) > 0.75
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2) and np.allclose(proba.sum(axis=1), 1)
    assert set(clf.predict(X)) <= {0, 1}
    assert clf.inference_stats(X[:3])["nfe_forward"].shape == (3,)


def test_augmented_state_is_the_module_width(home):
    """The module sees ``latent_dim + augment_dim`` channels."""
    X, y = _data()
    clf = _clf(home, width=5, latent_dim=3, augment_dim=2).fit(X, y)
    assert clf._spec.state_shape == (5,)
    assert clf.predict(X).shape == (len(X),)


def test_initial_parameters_are_the_module_own_seeded_by_random_state(home):
    spec = _clf(home)._spec_of(2, 2, "float64")
    first, again, other = spec.init_params(1), spec.init_params(1), spec.init_params(2)
    for name in FIELD_NAMES[home]:
        assert np.array_equal(first[name], again[name])
        assert not np.array_equal(first[name], other[name])
    # The module's own initialisation: torch's Linear draws U(-1/sqrt(fan_in), ...);
    # equinox's Linear the same. The first layer's fan-in is the state's 4 + time.
    name = FIELD_NAMES[home][1]
    bound = 1 / np.sqrt(5)
    assert np.abs(first[name]).max() <= bound
    assert np.abs(first[name]).max() > 0.5 * bound
    # The embedding and head draw as with any field: the same seed, the same arrays.
    mlp = ODEClassifier((), latent_dim=4)._spec_of(2, 2, "float64").init_params(1)
    assert np.array_equal(mlp["embed.weight"], first["embed.weight"])


def test_fit_leaves_the_global_generators_alone(home):
    X, y = _data()
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global one)
    a = _clf(home, max_iter=1).fit(X, y)
    assert torch.equal(torch_state, torch.random.get_rng_state())
    assert np.array_equal(numpy_state, np.random.get_state()[1])  # noqa: NPY002
    torch.manual_seed(123)  # a global seed changes nothing of a seeded fit
    b = _clf(home, max_iter=1).fit(X, y)
    for name in a.params_:
        np.testing.assert_array_equal(a.params_[name], b.params_[name])


def test_module_of_the_wrong_output_shape_is_refused_at_fit():
    X, y = _data()
    clf = ODEClassifier(backend="torch", hidden_layer_sizes=(), latent_dim=4, max_iter=1,
                        field=UserField(TorchWrongWidth, width=4))
    with pytest.raises(ValueError, match=r"maps states of shape \(4,\) to \(5,\)"):
        clf.fit(X, y)
    assert not hasattr(clf, "params_")
    with pytest.raises(ValueError, match=r"fails on the ODE state of shape \(3,\)"):
        clf.set_params(latent_dim=3, field=UserField(TorchField, width=4)).fit(X, y)


# --------------------------------------------------------------------- refusals


@pytest.mark.parametrize("other", ENGINES)
def test_every_other_engine_refuses_before_anything_changes(home, other):
    if other == home:
        pytest.skip("the module's own engine")
    X, y = _data()
    framework = "torch" if home == "torch" else "equinox"
    message = (rf"is an? {framework} module: it runs on the '{home}' engine only, not on "
               rf"'{other}'")
    fresh = _clf(home, backend=other)
    with pytest.raises(ValueError, match=message):
        fresh.fit(X, y)
    assert not hasattr(fresh, "params_")

    clf = _clf(home, max_iter=1).fit(X, y)
    before = {k: v.copy() for k, v in clf.params_.items()}
    proba = clf.predict_proba(X)
    clf.set_params(backend=other)
    for method in (clf.predict, clf.predict_proba, clf.inference_stats):
        with pytest.raises(ValueError, match=message):
            method(X)
    for call in (lambda: clf.fit(X, y), lambda: clf.partial_fit(X, y),
                 lambda: clf.set_params(warm_start=True).fit(X, y)):
        with pytest.raises(ValueError, match=message):
            call()
    clf.set_params(backend=home, warm_start=False)
    assert all(np.array_equal(before[k], clf.params_[k]) for k in before)
    np.testing.assert_array_equal(clf.predict_proba(X), proba)


def test_user_field_takes_a_class_and_hashable_keywords():
    with pytest.raises(TypeError, match="not an instance"):
        UserField(TorchField(4))
    with pytest.raises(TypeError, match="subclass of torch.nn.Module or equinox.Module"):
        UserField(dict)
    with pytest.raises(TypeError, match="hashable"):
        UserField(TorchField, width=[4])
    # A module instance is no estimator parameter: the constraint names UserField.
    with pytest.raises(ValueError, match="'field' parameter.*UserField"):
        ODEClassifier(field=TorchField(4)).fit(*_data())


# ----------------------------------------------------- a scikit-learn parameter


def test_clone_keeps_the_description_and_no_weights(home):
    X, y = _data()
    clf = _clf(home, max_iter=2).fit(X, y)
    copy = clone(clf)
    assert copy.field == clf.field and hash(copy.field) == hash(clf.field)
    assert not hasattr(copy, "params_")
    refit = copy.fit(X, y)  # a fresh module: the same fit from the same seed
    for name in clf.params_:
        np.testing.assert_array_equal(refit.params_[name], clf.params_[name])


def test_grid_over_modules(home):
    X, y = _data()
    grid = GridSearchCV(
        _clf(home, max_iter=2),
        {"field": [UserField(MODULES[home], width=4, hidden=4),
                   UserField(MODULES[home], width=4, hidden=8)],
         "learning_rate_init": [0.01, 0.05]}, cv=2).fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    best = grid.best_estimator_
    hidden = best.field.kwargs["hidden"]
    assert best.params_[FIELD_NAMES[home][0]].shape == (hidden,)
    assert best.predict(X).shape == (len(X),)


def test_partial_fit_continues(home):
    X, y = _data()
    clf = _clf(home)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    clf.partial_fit(X, y, classes=[0, 1])
    first = {k: v.copy() for k, v in clf.params_.items()}
    clf.partial_fit(X, y)
    assert clf.t_ == 2 * len(X) and clf.n_iter_ == 2
    assert any(not np.array_equal(first[k], clf.params_[k]) for k in FIELD_NAMES[home])


# ------------------------------------------------------------------ model files


def _saved(clf) -> bytes:
    file = io.BytesIO()
    odeplug.save(clf, file)
    return file.getvalue()


def test_model_file_round_trip_with_the_module_given_back(home):
    X, y = _data()
    clf = _clf(home).fit(X, y)
    data = _saved(clf)
    import safetensors.numpy

    stored = safetensors.numpy.load(data)
    for name in FIELD_NAMES[home]:  # plain arrays under the module's own names
        np.testing.assert_array_equal(stored[name], clf.params_[name])
    loaded = odeplug.load(io.BytesIO(data), field=UserField(MODULES[home], width=4, hidden=8))
    assert loaded.field == clf.field and loaded._spec == clf._spec
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    loaded.partial_fit(X, y)  # continues from the loaded parameters
    assert loaded.n_iter_ == clf.n_iter_ + 1


def test_load_refuses_a_missing_or_mismatched_module(home):
    X, y = _data()
    data = _saved(_clf(home, max_iter=1).fit(X, y))
    framework = "torch" if home == "torch" else "equinox"

    def refused(match, **kwargs):
        with pytest.raises(odeplug.ModelFileError, match=match) as info:
            odeplug.load(io.BytesIO(data), **kwargs)
        assert info.value.reason == "field"

    refused(rf"the user's {framework} module .*{MODULES[home].__name__}\(hidden=8, "
            r"width=4\): give it back")
    with pytest.warns(UserWarning, match="saved with field"):
        refused(rf"shapes differ: {FIELD_NAMES[home][1]}",
                field=UserField(MODULES[home], width=4, hidden=5))
    with pytest.warns(UserWarning, match="saved with field"):
        refused(r"fails on the ODE state of shape \(4,\)",
                field=UserField(MODULES[home], width=6, hidden=8))
    other = "jax" if home == "torch" else "torch"
    refused(r"is an? (torch|equinox) module",
            field=UserField(MODULES[other], width=4, hidden=8))
    plain = _saved(ODEClassifier((), latent_dim=4, max_iter=1, **FIXED).fit(X, y))
    with pytest.raises(odeplug.ModelFileError, match="not a user module") as info:
        odeplug.load(io.BytesIO(plain), field=UserField(MODULES[home], width=4))
    assert info.value.reason == "field"


def test_pickle_round_trip(home):
    """joblib workers and pickles get the description (the class by reference)."""
    import pickle

    X, y = _data()
    clf = _clf(home, max_iter=1).fit(X, y)
    back = pickle.loads(pickle.dumps(clf))
    assert back.field == clf.field
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))


class TorchConvField(torch.nn.Module):
    """A field on image states ``(n, C, H, W)``."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, t, y):
        return torch.tanh(self.conv(y))


def test_image_rows_give_the_module_the_stem_channels():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 16))
    y = (X[:, :8].sum(axis=1) > 0).astype(int)
    clf = ODEClassifier(backend="torch", hidden_layer_sizes=(), latent_dim=4, augment_dim=2,
                        input_shape=(1, 4, 4), max_iter=2, random_state=0,
                        field=UserField(TorchConvField, channels=6), **FIXED).fit(X, y)
    assert clf._spec.state_shape == (6, 4, 4)
    assert clf.params_["field.conv.weight"].shape == (6, 6, 3, 3)
    assert clf.predict_proba(X).shape == (30, 2)
