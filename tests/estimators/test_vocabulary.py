"""One vocabulary across the estimators (docs/architecture.md, "One vocabulary"): the
same names mean the same things, parameters are keyword-only after the first, the
counters have one set of names, and every estimator reports its inference cost."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.datasets import make_moons

from odeplug import CNFDensity, LatentODERegressor, ODEClassifier
from odeplug.extend import ROW_COUNTERS

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ESTIMATORS = (ODEClassifier, CNFDensity, LatentODERegressor)
FIRST = {ODEClassifier: "hidden_layer_sizes", CNFDensity: "hidden_layer_sizes",
         LatentODERegressor: "latent_dim"}


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_keyword_only_after_the_main_size(cls):
    parameters = list(inspect.signature(cls).parameters.values())
    assert parameters[0].name == FIRST[cls]
    assert parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[1:])
    with pytest.raises(TypeError):
        cls(2, "tanh")


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_the_field_has_the_same_names_everywhere(cls):
    params = cls().get_params()
    assert {"hidden_layer_sizes", "activation"} <= set(params)
    assert not {"field_activation", "field_hidden_sizes"} & set(params)


def test_the_names_reach_the_same_part_of_every_spec():
    X, y = make_moons(30, noise=0.1, random_state=0)
    clf = ODEClassifier((5, 3), latent_dim=4, activation="softplus",
                        embedding_activation="tanh")
    spec = clf._spec_of(2, 2, "float64")
    assert (spec.field_hidden, spec.field_activation, spec.embed_dim,
            spec.embed_activation) == ((5, 3), "softplus", 4, "tanh")
    cnf = CNFDensity((5, 3), activation="softplus")._spec_of(2, "float64")
    assert (cnf.field_hidden, cnf.field_activation) == ((5, 3), "softplus")
    latent = LatentODERegressor(3, hidden_layer_sizes=(5, 3), activation="softplus",
                                encoder_activation="relu", decoder_activation="logistic")
    spec = latent._spec_of(1, "float64")
    assert (spec.latent_dim, spec.field_hidden, spec.field_activation,
            spec.encoder_activation, spec.decoder_activation) == \
        (3, (5, 3), "softplus", "relu", "logistic")
    # Each part draws with scikit-learn's Glorot factor of its own activation.
    table = spec.param_table()
    assert table["decoder.0.weight"].init.factor == 2.0  # logistic
    assert table["field.0.weight"].init.factor == 6.0


def _series(n=12, seed=0):
    t = np.linspace(0, 3, 6)
    X = np.sin(t + np.random.default_rng(seed).uniform(0, 3, n)[:, None])
    return t, X


@pytest.mark.parametrize("encoder", ["ode_rnn", "rnn"])
def test_latent_inference_stats_are_the_cost_of_predict_per_series(encoder):
    t, X = _series()
    model = LatentODERegressor(2, obs_times=t, target_times=[3.5], encoder=encoder,
                               encoder_hidden_sizes=(4, 4), hidden_layer_sizes=(4,),
                               decoder_hidden_sizes=(), max_iter=2, random_state=0)
    model.fit(X, X[:, -1])
    stats = model.inference_stats(X)
    assert set(stats) == set(ROW_COUNTERS)
    assert all(v.shape == (len(X),) and v.dtype.kind == "i" for v in stats.values())
    assert np.all(stats["nfe_forward"] > 0) and np.all(stats["n_steps"] > 0)
    # Per series: the same whatever the other series of X.
    for key, value in model.inference_stats(X[3:5]).items():
        np.testing.assert_array_equal(value, stats[key][3:5])
    # The solver settings of now: a tighter tolerance costs more, a later target too.
    tight = model.set_params(rtol=1e-7, atol=1e-9).inference_stats(X)
    assert np.all(tight["nfe_forward"] > stats["nfe_forward"])
    model.set_params(rtol=1e-3, atol=1e-4)
    later = model.inference_stats(X, target_times=[30.0])
    assert np.all(later["n_steps"] >= stats["n_steps"])
    assert np.any(later["n_steps"] > stats["n_steps"])
    # The encoder's solves ("ode_rnn": an ODE between observations) are added in.
    series = model._check_X(X, None, reset=False)
    with model._running() as engine:
        program = engine.make_program(model._spec)
        *_, encoded = program.encode(model.params_, *series.encoder_inputs(np.float64),
                                     model._inference_hyper())
    if encoder == "ode_rnn":
        assert np.all(encoded["nfe_forward"] > 0)
        assert np.all(stats["nfe_forward"] > encoded["nfe_forward"])
    else:
        assert not np.any(encoded["nfe_forward"])


def test_sample_trajectories_takes_n_samples_as_sample_does():
    t, X = _series()
    model = LatentODERegressor(2, obs_times=t, target_times=[3.5], encoder="rnn",
                               max_iter=1, random_state=0).fit(X, X[:, -1])
    assert model.sample_trajectories(X[:3], [0.5, 1.0]).shape == (3, 1, 2, 1)
    assert model.sample_trajectories(X[:3], [0.5], n_samples=5, random_state=0).shape \
        == (3, 5, 1, 1)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        model.sample_trajectories(X[:3], [0.5], n_samples=0)
    assert "n_samples" in inspect.signature(CNFDensity.sample).parameters


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_nfe_has_the_counters_names(cls):
    if cls is LatentODERegressor:
        t, X = _series()
        model = cls(2, obs_times=t, target_times=[3.5], encoder="rnn", max_iter=1,
                    random_state=0).fit(X, X[:, -1])
    else:
        X, y = make_moons(40, noise=0.1, random_state=0)
        model = cls((4,), max_iter=1, random_state=0)
        model.fit(X, y) if cls is ODEClassifier else model.fit(X)
    assert set(model.nfe_) == {"nfe_forward", "nfe_backward"}
    assert model.nfe_["nfe_forward"] == model.curves_["nfe_forward"][-1]


def test_format_1_files_read_in_todays_names():
    """tests/golden/*.v1.odeplug were written with the old names (make_golden.py):
    ``hidden_layer_sizes=(4, 4)`` was the classifier's state width then its field."""
    import os

    import odeplug

    golden = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "golden")
    clf = odeplug.load(os.path.join(golden, "classifier.v1.odeplug"))
    assert (clf.latent_dim, clf.hidden_layer_sizes, clf.activation,
            clf.embedding_activation) == (4, (4,), "tanh", "relu")
    assert clf._spec.embed_dim == 4 and clf._spec.field_hidden == (4,)
    cnf = odeplug.load(os.path.join(golden, "density.v1.odeplug"))
    assert cnf.activation == "tanh" and not hasattr(cnf, "field_activation")
    latent = odeplug.load(os.path.join(golden, "latent.v1.odeplug"))
    assert latent.hidden_layer_sizes == (4,)
    assert {latent.activation, latent.encoder_activation, latent.decoder_activation} \
        == {"tanh"}
    for model in (clf, cnf, latent):
        assert set(model.nfe_) == {"nfe_forward", "nfe_backward"}
        # Saved again, in today's names, it reads back the same.
        again = odeplug.load(_saved(model)).get_params()
        for key, value in model.get_params().items():
            assert np.array_equal(again[key], value) if isinstance(value, np.ndarray) \
                else again[key] == value, key


def _saved(model):
    import io

    import odeplug

    buffer = io.BytesIO()
    odeplug.save(model, buffer)
    return io.BytesIO(buffer.getvalue())
