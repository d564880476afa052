"""
Solver cost of an ODE-Net (Fig. 3 of the paper)
===============================================

Chen et al. (2018), Fig. 3, measure four things on a trained ODE-Net: (a) the number of
function evaluations (NFE) of a forward solve against its numerical error, (b) NFE
against wall time, (c) backward NFE (the adjoint solve) against forward NFE and (d) NFE
over training. This script measures the same four on ``ODEClassifier`` fitted to
scikit-learn's digits (8x8 images, 10 classes; a stratified 75/25 split), with
:func:`odeplug.plot.measure_nfe` and draws them with :func:`odeplug.plot.plot_nfe`.

- (a), (b): one fit; the test set is predicted again at ``rtol`` from 1 to 1e-7
  (``atol = rtol / 10``; the solver settings are read at predict time, no refit). The
  numerical error is the largest absolute difference of the predicted log-probabilities
  from a solve at ``rtol = 1e-8``; the time is the median wall time of one
  ``predict_log_proba`` on the whole test set.
- (c): copies of the fitted model are trained one more epoch (``partial_fit``) at each
  training tolerance; each gives the mean forward and backward NFE per minibatch.
- (d): the mean forward and backward NFE per minibatch of each epoch of the fit
  (``curves_``).

Run from the repository root (``--backend torch`` or ``jax`` for the other engines)::

    python examples/plot_nfe_fig3.py

``--quick`` (what the documentation build passes) fits 15 epochs and times each
prediction once.
"""

# %%
# Settings
# --------
import argparse
import copy
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import odeplug
from odeplug.plot import measure_nfe, plot_nfe

parser = argparse.ArgumentParser(description="Solver cost of an ODE-Net (Fig. 3)")
parser.add_argument("--backend", default="reference", choices=("reference", "torch", "jax"))
parser.add_argument("--max-iter", type=int, default=None,
                    help="epochs (default 100; 15 with --quick)")
parser.add_argument("--output", default="nfe_fig3.png", help="figure path")
parser.add_argument("--quick", action="store_true",
                    help="15 epochs, one timing per tolerance (the documentation build)")
args = parser.parse_args()
max_iter = args.max_iter or (15 if args.quick else 100)
repeats = 1 if args.quick else 5
predict_rtols = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
training_rtols = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)

# %%
# Fit
# ---
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0)
scaler = StandardScaler().fit(X_train)
Z_train, Z_test = scaler.transform(X_train), scaler.transform(X_test)

clf = odeplug.ODEClassifier(backend=args.backend, max_iter=max_iter, random_state=0)
start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    clf.fit(Z_train, y_train)
print(f"{clf.backend_} engine: {clf.n_iter_} epochs in {time.perf_counter() - start:.1f} s, "
      f"test accuracy {clf.score(Z_test, y_test):.4f} at rtol {clf.rtol:g}")

# %%
# (a), (b): precision and time at predict time
# --------------------------------------------
measured = measure_nfe(clf, Z_test, rtols=predict_rtols, repeats=repeats)
print(f"{'rtol':>8} {'NFE per input':>14} {'max |log p error|':>18} {'predict s':>10}")
for rtol, nfe, error, seconds in zip(measured["rtol"], measured["nfe"], measured["error"],
                                     measured["time"], strict=True):
    print(f"{rtol:8.0e} {nfe:14.1f} {error:18.2e} {seconds:10.3f}")

# %%
# (c): backward against forward NFE, at several training tolerances
# -----------------------------------------------------------------
# One more epoch of a copy of the fitted model at each tolerance: the adjoint solve
# runs at the same tolerance as the forward one.
forward, backward = [], []
for rtol in training_rtols:
    model = copy.deepcopy(clf).set_params(rtol=rtol, atol=rtol / 10)
    model.partial_fit(Z_train, y_train)
    forward.append(model.curves_["nfe_forward"][-1])
    backward.append(model.curves_["nfe_backward"][-1])
    print(f"training at rtol {rtol:.0e}: forward NFE {forward[-1]:.1f}, "
          f"backward NFE {backward[-1]:.1f} per minibatch")

# %%
# The four panels
# ---------------
fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
(ax_error, ax_time), (ax_backward, ax_training) = axes
plot_nfe(measured, "error", ax=ax_error,
         title="(a) NFE against numerical error (predict, test set)")
# The rtol of each point, once per distinct NFE (loose tolerances all take the
# minimum of two steps).
labelled = set()
for rtol, error, nfe in zip(measured["rtol"], measured["error"], measured["nfe"],
                            strict=True):
    if round(nfe, 1) not in labelled:
        labelled.add(round(nfe, 1))
        ax_error.annotate(f"rtol {rtol:.0e}", (max(error, np.finfo(float).eps), nfe),
                          fontsize=7, textcoords="offset points", xytext=(4, 4))
ax_error.set_xlabel("numerical error: max |log p - log p at rtol 1e-8| (nats)")
ax_error.margins(x=0.12, y=0.1)  # room for the labels of the end points
plot_nfe(measured, "time", ax=ax_time,
         title=f"(b) predict time of {len(Z_test)} digits against NFE")
if clf.curves_["nfe_backward"][0] is not None:  # every engine reports it in training
    plot_nfe({"nfe_forward": forward, "nfe_backward": backward}, "backward",
             ax=ax_backward, label="one epoch at rtol 1e-1 to 1e-5",
             title="(c) backward (adjoint) against forward NFE")
    plot_nfe(clf, "backward", ax=ax_backward, label="each epoch of the fit, rtol 1e-3",
             marker="x", title="(c) backward (adjoint) against forward NFE")
plot_nfe(clf, "training", ax=ax_training, title="(d) NFE over training, rtol 1e-3")
quick = f", --quick: {clf.n_iter_} epochs" if args.quick else ""
fig.suptitle(f"ODEClassifier on digits ({clf.backend_} engine, dopri5, adjoint{quick}): "
             f"cost of the solves")
fig.savefig(args.output, dpi=110)
print(f"figure: {args.output}")
