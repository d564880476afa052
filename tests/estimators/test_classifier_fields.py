"""``ODEClassifier(field=..., input_shape=...)``: the MLP default is today's model, the
convolutional ODE-Net and any ``layers.Sequential`` train the same on every engine, and
they work as scikit-learn parameters (clone, grids) and in model files."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

import odeplug
from odeplug import ODEClassifier, make_solve_config
from odeplug import layers as L
from odeplug._architectures import conv_odenet
from odeplug._specs import Hyper, ODENetSpec, dense_params, glorot_factor, mlp_params

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

FIXED = dict(solver="rk4", step_size=0.5)


def _images(n=60, seed=0):
    """Two classes of 1 x 6 x 6 images: a bright bar across (0) or down (1), noisy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    images = 0.3 * rng.standard_normal((n, 1, 6, 6))
    position = rng.integers(1, 5, n)
    for i in range(n):
        if y[i]:
            images[i, 0, :, position[i]] += 1.5
        else:
            images[i, 0, position[i], :] += 1.5
    return images.reshape(n, -1), y


# -------------------------------------------------------------------- the default


@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_the_mlp_default_keeps_todays_parameter_table_and_draws(activation):
    """Model files of the MLP ODE-Net written before layers existed hold this table."""
    spec = ODENetSpec(n_features=5, n_outputs=3, embed_dim=6, field_hidden=(7, 4),
                      augment_dim=2, embed_activation=activation, field_activation="tanh")
    factor = glorot_factor(activation)
    todays = dense_params("embed", 5, 6, factor=factor)
    todays.update(mlp_params("field", (9, 7, 4, 8), factor=factor))
    todays.update(dense_params("head", 8, 3, factor=factor))
    assert spec.param_table() == todays
    clf = ODEClassifier((7, 4), latent_dim=6, augment_dim=2,
                        embedding_activation=activation)
    assert clf._spec_of(5, 3, "float32") == spec  # "mlp" is this spec, nothing added


# --------------------------------------------------- the same training on every engine


def _conv_spec(dtype="float64"):
    embed, field, head = conv_odenet(
        (1, 6, 6), 4, (4,), 1, 2, "relu", "tanh")
    return ODENetSpec(n_features=36, n_outputs=2, embed_dim=4, field_hidden=(4,),
                      augment_dim=1, embed_activation="relu", field_activation="tanh",
                      dtype=dtype, input_shape=(1, 6, 6), embed_layer=embed,
                      field_layer=field, head_layer=head)


def _squash_spec(dtype="float64"):
    field = L.Sequential([L.ConcatSquash(L.Dense(5, activation="softplus")),
                          L.ConcatSquash(L.Dense(4))])
    return ODENetSpec(n_features=3, n_outputs=3, embed_dim=4, field_hidden=(),
                      augment_dim=0, embed_activation="tanh", field_activation="tanh",
                      dtype=dtype, field_layer=field)


@pytest.mark.parametrize("make_spec", [_conv_spec, _squash_spec], ids=["conv", "squash"])
@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_a_training_step_and_prediction_equal_the_reference(engine, make_spec, adjoint):
    spec = make_spec()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, spec.n_features))
    y = rng.integers(0, spec.n_outputs, 8)
    hyper = Hyper(solve=make_solve_config("rk4", step_size=0.25, adjoint=adjoint),
                  learning_rate=1e-2, alpha=0.1)
    params = spec.init_params(3)

    def one_step(name):
        program = odeplug.get_backend(name).make_program(spec)
        state, metrics = program.step(program.init(params), (X, y), hyper)
        return metrics["loss"], program.get_params(state), program.predict(params, X, hyper)

    loss, after, (log_proba, _) = one_step(engine.name)
    ref_loss, ref_after, (ref_log_proba, _) = one_step("reference")
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    for name in ref_after:
        np.testing.assert_allclose(after[name], ref_after[name], rtol=1e-8, atol=1e-10,
                                   err_msg=name)
    np.testing.assert_allclose(log_proba, ref_log_proba, rtol=1e-8, atol=1e-10)


def test_the_conv_odenet_learns_images(engine):
    X, y = _images(80)
    clf = ODEClassifier(backend=engine.name, field="conv", input_shape=(1, 6, 6),
                        hidden_layer_sizes=(), latent_dim=8, learning_rate_init=0.02, alpha=1e-4,
                        max_iter=15, batch_size=20, random_state=0, **FIXED).fit(X[:60], y[:60])
    assert clf.loss_curve_[-1] < 0.5 * clf.loss_curve_[0]
    assert clf.score(X[60:], y[60:]) >= 0.9
    assert clf.params_["embed.0.weight"].shape == (8, 1, 3, 3)


def test_a_one_dimensional_signal_field():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2 * 16))  # rows of 2 channels x 16 positions
    y = np.arange(20) % 3
    clf = ODEClassifier(field="conv", input_shape=(2, 16), hidden_layer_sizes=(), latent_dim=4,
                        max_iter=1, random_state=0, **FIXED).fit(X, y)
    # 16 > 12: one stride-2 convolution in the stem; a 1-D state of 8 positions.
    assert clf._spec.state_shape == (4, 8)
    assert clf.params_["embed.3.weight"].shape == (4, 4, 4)
    assert clf.predict_proba(X).shape == (20, 3)


def test_the_mnist_stem_downsamples_twice():
    embed, field, head = conv_odenet(
        (1, 28, 28), 64, (64,), 0, 10, "relu", "relu")
    assert embed.output_shape((1, 28, 28)) == (64, 7, 7)
    assert field.output_shape((64, 7, 7)) == (64, 7, 7)
    spec = ODENetSpec(n_features=784, n_outputs=10, embed_dim=64, field_hidden=(64,),
                      augment_dim=0, embed_activation="relu", field_activation="relu",
                      input_shape=(1, 28, 28), embed_layer=embed, field_layer=field,
                      head_layer=head)
    # The paper's ODE-Net has 0.22 M parameters.
    assert 0.2e6 < sum(np.prod(s) for s in spec.param_shapes().values()) < 0.23e6


# ---------------------------------------------------------- scikit-learn parameters


def test_fields_clone_and_search_as_parameters():
    field = L.Sequential([L.ConcatTime(L.Dense(6, activation="tanh")), L.Dense(4)])
    clf = ODEClassifier((), latent_dim=4, field=field, max_iter=2)
    copy = clone(clf)
    assert copy.get_params()["field"] == field
    X, y = _images(40)
    image_field = L.Sequential([L.GroupNorm(2), L.ConcatSquash(L.Conv(4, (3, 3), padding=1))])
    search = GridSearchCV(
        ODEClassifier(input_shape=(1, 6, 6), hidden_layer_sizes=(), latent_dim=4, max_iter=2,
                      random_state=0, **FIXED),
        {"field": ["mlp", "conv", image_field]}, cv=2).fit(X, y)
    assert [p["field"] for p in search.cv_results_["params"]] == ["mlp", "conv",
                                                                  image_field]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(field="conv"), r'field="conv" needs input_shape=\(C, L\) or \(C, H, W\)'),
    (dict(field="conv", input_shape=(36,)), r'field="conv" needs input_shape'),
    (dict(field="conv", input_shape=(1, 6, 5)), "has 30 entries, but X has 36 features"),
    (dict(field=L.Sequential([L.ConcatTime(L.Dense(3))])),
     r"the field maps states of shape \(4,\) to \(3,\)"),
    (dict(field="cnn"), "'field' parameter of ODEClassifier must be"),
    (dict(input_shape=(1, 0, 36)), "input_shape must be positive ints"),
])
def test_bad_fields_are_refused_before_anything_changes(kwargs, match):
    X, y = _images(20)
    clf = ODEClassifier((), latent_dim=4, max_iter=1, random_state=0, **FIXED)
    clf.fit(X, y)
    before = {k: v.copy() for k, v in clf.params_.items()}
    with pytest.raises(ValueError, match=match):
        clf.set_params(**kwargs).fit(X, y)
    assert all(np.array_equal(clf.params_[k], before[k]) for k in before)


# ------------------------------------------------------------------------ model files


@pytest.mark.parametrize("load_engine", ["reference", "torch", "jax"])
def test_conv_and_sequential_models_round_trip_between_engines(load_engine, tmp_path):
    X, y = _images(30)
    field = L.Sequential([L.GroupNorm(2), L.ConcatSquash(L.Conv(4, (3, 3), padding=1))])
    for i, kwargs in enumerate([dict(field="conv"), dict(field=field)]):
        clf = ODEClassifier(input_shape=(1, 6, 6), hidden_layer_sizes=(), latent_dim=4, max_iter=1,
                            random_state=0, **FIXED, **kwargs).fit(X, y)
        path = tmp_path / f"model{i}.odeplug"
        odeplug.save(clf, path)
        back = odeplug.load(path)
        assert back.get_params()["field"] == clf.field
        back.set_params(backend=load_engine)
        np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), rtol=1e-9,
                                   atol=1e-12)
