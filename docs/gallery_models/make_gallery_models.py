"""Fit the models that the documentation's gallery shows, at full settings, and save them.

The gallery runs during every documentation build, where a full fit of each model would
cost minutes; its scripts load these files instead (``--model``), so that its figures
show converged models. Rerun this script whenever a model or the file format changes
(one to a few minutes on the JAX engine, two CPU cores)::

    python docs/gallery_models/make_gallery_models.py

It writes, next to itself, ``digits_odeclassifier.odeplug``,
``digits_conv_odeclassifier.odeplug``, ``moons_cnfdensity.odeplug`` and
``spirals_latentode.odeplug`` (``odeplug.save``: no pickle), and prints each fit's time
and the score it reaches. ``--only NAME`` refits one of ``digits``, ``conv_digits``,
``moons``, ``spirals``. The settings are those of the examples run by hand
(``examples/digits.py``, ``examples/plot_conv_digits.py``, ``examples/cnf_density.py``,
``examples/spirals.py``), so that a figure of the gallery is the one a user gets from the
same command without ``--quick``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import odeplug

HERE = Path(__file__).resolve().parent
BACKEND = "jax"  # the fastest fit of the three engines; the files load on any engine
# examples/plot_conv_digits.py's SETTINGS (tests/benchmarks/bench_conv.py's CONV).
CONV_DIGITS = dict(latent_dim=16, hidden_layer_sizes=(16,), solver="midpoint", step_size=0.25,
                   adjoint=False, learning_rate="adaptive", learning_rate_init=1e-2,
                   n_iter_no_change=3, alpha=1e-3, batch_size=64, max_iter=40, tol=0.0)


def fit_digits():
    """ODEClassifier with default parameters on the stratified 75/25 split of digits,
    standardised (the file holds the classifier; the examples standardise alike)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(X_train)
    clf = odeplug.ODEClassifier(backend=BACKEND, random_state=0)
    clf.fit(scaler.transform(X_train), y_train)
    return clf, f"test accuracy {clf.score(scaler.transform(X_test), y_test):.4f}"


def fit_conv_digits():
    """The convolutional ODE-Net (``field="conv"``) on the same split, pixels scaled by
    the training images' one mean and standard deviation, with the settings of
    ``examples/plot_conv_digits.py`` and ``tests/benchmarks/bench_conv.py`` (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0)
    mean, std = X_train.mean(), X_train.std()
    clf = odeplug.ODEClassifier(backend=BACKEND, field="conv", input_shape=(1, 8, 8),
                                random_state=0, **CONV_DIGITS)
    clf.fit((X_train - mean) / std, y_train)
    return clf, f"test accuracy {clf.score((X_test - mean) / std, y_test):.4f}"


def fit_moons():
    """CNFDensity with default parameters (batch 100) on 2,000 points of two moons."""
    from sklearn.datasets import make_moons

    X, _ = make_moons(2000, noise=0.05, random_state=0)
    X_test, _ = make_moons(1000, noise=0.05, random_state=1)
    cnf = odeplug.CNFDensity(backend=BACKEND, batch_size=100, random_state=0).fit(X)
    return cnf, f"held-out mean log-likelihood {cnf.score(X_test):.3f} nats per sample"


def fit_spirals():
    """LatentODERegressor with the paper's architecture on 800 of 1,000 spirals, 200
    epochs (examples/spirals.py's full settings)."""
    from odeplug.datasets import make_spirals

    data = make_spirals(1000, n_observed=30, random_state=0)
    n_train = 800
    model = odeplug.LatentODERegressor(
        backend=BACKEND, obs_times=data.obs_times, target_times=data.target_times,
        encoder="rnn", latent_dim=4, encoder_hidden_sizes=(25,), hidden_layer_sizes=(20,),
        decoder_hidden_sizes=(20,), batch_size=100, max_iter=200, tol=0.0,
        n_iter_no_change=200, random_state=0)
    model.fit(data.X[:n_train], data.y[:n_train])
    rmse = np.sqrt(np.mean((model.predict(data.X[n_train:]) - data.y_true[n_train:]) ** 2))
    return model, f"test extrapolation RMSE {rmse:.3f}"


MODELS = {"digits": ("digits_odeclassifier.odeplug", fit_digits),
          "conv_digits": ("digits_conv_odeclassifier.odeplug", fit_conv_digits),
          "moons": ("moons_cnfdensity.odeplug", fit_moons),
          "spirals": ("spirals_latentode.odeplug", fit_spirals)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=tuple(MODELS), action="append",
                        help="refit only this model (repeatable)")
    args = parser.parse_args()
    for name in args.only or MODELS:
        filename, fit = MODELS[name]
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning of a fixed epoch count
            model, score = fit()
        seconds = time.perf_counter() - start
        odeplug.save(model, HERE / filename)
        print(f"{name}: {score}; {model.n_iter_} epochs in {seconds:.0f} s "
              f"(compilation included) -> {filename}", flush=True)


if __name__ == "__main__":
    main()
