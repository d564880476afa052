"""
Convolutional ODE-Net on digits as 8x8 images
==============================================

The ODE-Net of Chen et al. (2018, Sec. 7; torchdiffeq's ``odenet_mnist.py``) is
convolutional: a stem convolution, an ODE block whose vector field is ``GroupNorm, tanh,
ConcatTime(Conv 3x3), GroupNorm, tanh, ConcatTime(Conv 3x3), GroupNorm`` (the time
enters as an extra channel), then ``GroupNorm, ReLU``, global average pooling and a
linear head. ``ODEClassifier(field="conv", input_shape=(1, 8, 8))`` builds it; ``X``
stays 2-D (one flattened image per row, as scikit-learn's own image examples).

This script fits it on scikit-learn's digits (stratified 75/25 split,
``random_state=0``; pixels scaled by one mean and one standard deviation of the
training images, as ``odenet_mnist.py`` normalises MNIST), prints the test accuracy,
shows the misclassified test digits, and, without refitting, the test accuracy and the
cost per input (function evaluations, NFE) when the trained ODE block is solved with
fewer or more midpoint steps, or with dopri5 at a tolerance.

Run from the repository root::

    python examples/plot_conv_digits.py --backend jax

``--model FILE`` loads a fitted classifier (``odeplug.save``) instead of fitting one:
the full fit of the settings below on JAX is made by::

    python docs/gallery_models/make_gallery_models.py --only conv_digits

(``docs/gallery_models/digits_conv_odeclassifier.odeplug``). The documentation build
passes ``--quick --model`` that file: the figure of the full fit. ``--quick`` alone fits
10 epochs on 500 digits, an unconverged model, as the figure's title then says. The
3-seed accuracy of these settings, against the MLP ODE-Net and ``SVC``, and the fit
time against a hand-written diffrax + equinox loop are in :doc:`/benchmarks`
(``tests/benchmarks/bench_conv.py``).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

import odeplug

# The settings of the benchmark (tests/benchmarks/bench_conv.py's CONV) and of the
# gallery's model file (docs/gallery_models/make_gallery_models.py).
SETTINGS = dict(latent_dim=16, hidden_layer_sizes=(16,), solver="midpoint", step_size=0.25,
                adjoint=False, learning_rate="adaptive", learning_rate_init=1e-2,
                n_iter_no_change=3, alpha=1e-3, batch_size=64, max_iter=40, tol=0.0)

parser = argparse.ArgumentParser(description="Convolutional ODE-Net on digits")
parser.add_argument("--backend", default="reference", choices=("reference", "torch", "jax"))
parser.add_argument("--random-state", type=int, default=0, help="seed of the model")
parser.add_argument("--output", default="conv_digits.png", help="figure path")
parser.add_argument("--quick", action="store_true",
                    help="10 epochs on 500 digits (the documentation build without --model)")
parser.add_argument("--model", default=None,
                    help="load this fitted ODEClassifier (odeplug.save) instead of fitting")
args = parser.parse_args()

# %%
# Data: 8x8 images, one scale for all pixels
# ------------------------------------------
# A convolution slides the same kernel over every position, so every pixel gets the
# same scaling (per-pixel standardisation, right for an MLP, would give each position
# its own units).
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0)
mean, std = X_train.mean(), X_train.std()
Z_train, Z_test = (X_train - mean) / std, (X_test - mean) / std

# %%
# Fit, or load the full fit
# -------------------------
if args.model is None:
    clf = odeplug.ODEClassifier(backend=args.backend, field="conv", input_shape=(1, 8, 8),
                                random_state=args.random_state, **SETTINGS)
    Z_fit, y_fit = Z_train, y_train
    if args.quick:
        clf.set_params(max_iter=10)
        Z_fit, y_fit = Z_train[:500], y_train[:500]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Z_fit, y_fit)
    print(f"fitted on {clf.backend_}: {clf.n_iter_} epochs in "
          f"{time.perf_counter() - start:.1f} s (compilation included)")
    origin = (f"--quick: {clf.n_iter_} epochs on {len(Z_fit)} digits (unconverged)"
              if args.quick else f"{clf.n_iter_} epochs on {clf.backend_}")
else:
    clf = odeplug.load(args.model, backend=args.backend, expected=odeplug.ODEClassifier)
    print(f"loaded {Path(args.model).name}: fitted on {clf.backend_} in {clf.n_iter_} "
          f"epochs, predicting on {args.backend}")
    origin = f"full fit ({clf.n_iter_} epochs on {clf.backend_}) from {Path(args.model).name}"
n_parameters = sum(w.size for w in clf.params_.values())
predicted = clf.predict(Z_test)
accuracy = float(np.mean(predicted == y_test))
print(f"parameters: {n_parameters:,}    test accuracy: {accuracy:.4f} "
      f"({int(np.sum(predicted != y_test))} of {len(y_test)} test digits wrong)")

# %%
# The ODE block solved otherwise, without refitting
# -------------------------------------------------
# The solver settings are read at predict time: the same parameters, solved with 1 to 8
# midpoint steps (trained with 4) and with dopri5 at two tolerances.
fitted = clf.get_params()
settings = {f"midpoint x{n}": dict(solver="midpoint", step_size=clf.t1 / n)
            for n in (1, 2, 4, 8)}
settings.update({f"dopri5 rtol={r:g}": dict(solver="dopri5", step_size=None, rtol=r,
                                             atol=r / 10)
                 for r in (1e-1, 1e-3)})
rows = []
for name, solver_params in settings.items():
    clf.set_params(**solver_params)
    score = clf.score(Z_test, y_test)
    nfe = clf.inference_stats(Z_test)["nfe_forward"]
    rows.append((name, score, float(np.mean(nfe))))
    print(f"  {name:18s} test accuracy {score:.4f}   NFE per input {np.mean(nfe):5.1f}")
clf.set_params(**{k: fitted[k] for k in ("solver", "step_size", "rtol", "atol")})

# %%
# Figure: misclassified digits, accuracy against cost
# ---------------------------------------------------
wrong = np.flatnonzero(predicted != y_test)[:12]
fig = plt.figure(figsize=(11, 4.6), constrained_layout=True)
left, right = fig.subfigures(1, 2, width_ratios=[1.1, 1])
cells = left.subplots(3, 4)
for ax in cells.ravel():
    ax.axis("off")
for ax, i in zip(cells.ravel(), wrong, strict=False):
    ax.imshow(X_test[i].reshape(8, 8), cmap="gray_r", interpolation="nearest")
    ax.set_title(f"true {y_test[i]}, predicted {predicted[i]}", fontsize=8)
left.suptitle(f"misclassified test digits: {len(np.flatnonzero(predicted != y_test))} "
              f"of {len(y_test)}", fontsize=10)
ax = right.subplots()
for (name, score, nfe), color in zip(rows, [f"C{i}" for i in range(len(rows))], strict=True):
    ax.plot(nfe, score, "o", color=color, label=name)
ax.set_xscale("log")
# Plain numbers at powers of two (log scale's minor labels crowd under a decade).
ax.set_xticks([2.0**k for k in range(1, 8)])
ax.xaxis.set_major_formatter(ScalarFormatter())
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel("function evaluations per input (NFE, log scale)")
ax.set_ylabel("test accuracy (450 digits)")
ax.set_title("the trained block solved otherwise (trained: midpoint x4)", fontsize=10)
ax.legend(fontsize=8)
fig.suptitle(f"Convolutional ODE-Net on 8x8 digits: test accuracy {accuracy:.4f}, "
             f"{n_parameters:,} parameters\n{origin}", fontsize=10)
fig.savefig(args.output, dpi=110)
print(f"figure: {args.output}")
