"""
ODE-Net on digits: precision traded for speed at predict time
=============================================================

Fits ``Pipeline(StandardScaler(), ODEClassifier())`` with default parameters on a
stratified 75/25 split of ``load_digits`` (``random_state=0``), with a progress bar,
prints the test accuracy, the fit time and the function evaluations (NFE) per training
batch and per test input. Then, without refitting, it predicts the test set again at
looser and tighter tolerances (``set_params(rtol=...)``: the solver settings are read at
predict time), from ``rtol = 10`` (the solver barely controls its error) to ``1e-6``, and
also with Euler and RK4 of 1 to 8 fixed steps, and saves a figure of test accuracy
against the cost per input (NFE), and of the NFE, the numerical error of the predicted
log-probabilities and the predict time against ``rtol``.

Run from the repository root::

    python examples/digits.py --backend jax
    python examples/digits.py --backend torch --device cuda   # on a GPU (docs/gpus.md)

``--model FILE`` loads a fitted classifier (``odeplug.save``) instead of fitting one.
The documentation build passes ``--quick --model
docs/gallery_models/digits_odeclassifier.odeplug``: the model of the default fit (100
epochs on JAX), made by ``python docs/gallery_models/make_gallery_models.py``, each
prediction timed once. ``--quick`` alone fits 10 epochs: the accuracies are then those
of an unconverged model, and the figure's title says so. The figure of the full run is
in :doc:`/benchmarks`.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import odeplug

# From a tolerance the error control barely constrains (accuracy falls) to a tight one
# (accuracy flat, cost growing); atol = rtol / 10 throughout.
RTOLS = (10.0, 3.0, 1.0, 3e-1, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# Fixed-step solvers with this many steps over [0, t1]: the cheap end, where accuracy
# falls.
FIXED_STEPS = (1, 2, 4, 8)


def _measure(clf, Z, y, reference, **solver_params) -> dict:
    """Accuracy, error of the log-probabilities against a tight solve, NFE per input and
    predict time (median of REPEATS, after a warm-up) at one solver setting."""
    clf.set_params(**solver_params)
    log_proba = clf.predict_log_proba(Z)  # also the warm-up: jax compiles once per solver
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        clf.predict(Z)
        times.append(time.perf_counter() - start)
    nfe = clf.inference_stats(Z)["nfe_forward"]
    return {"solver": clf.solver, "rtol": clf.rtol, "step_size": clf.step_size,
            "accuracy": float(np.mean(clf.classes_[log_proba.argmax(axis=1)] == y)),
            "error": float(np.abs(log_proba - reference).max()),
            "nfe": nfe.mean(), "nfe10": np.percentile(nfe, 10), "nfe90": np.percentile(nfe, 90),
            "time": np.median(times), "time_min": min(times), "time_max": max(times)}


def _plot(rows, fixed, fitted_rtol: float, engine: str, n_test: int, path: str,
          settings: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    def column(table, key):
        return np.array([r[key] for r in table])

    rtol = column(rows, "rtol")
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax_acc, ax_nfe, ax_err, ax_time = axes.ravel()

    ax_acc.semilogx(column(rows, "nfe"), column(rows, "accuracy"), "o-",
                    label="dopri5, rtol 1e1 to 1e-6")
    for solver, marker in (("euler", "s--"), ("rk4", "^--")):
        table = [r for r in fixed if r["solver"] == solver]
        ax_acc.semilogx(column(table, "nfe"), column(table, "accuracy"), marker,
                        label=f"{solver}, {', '.join(str(n) for n in FIXED_STEPS)} steps")
    ax_acc.set(xlabel="mean function evaluations (NFE) per input",
               ylabel=f"test accuracy ({n_test} digits)",
               title="test accuracy against the cost per input")
    ax_acc.legend(fontsize=8)
    # Plain numbers at a few NFE values: the default minor labels (3x10^0, ...) overlap.
    ax_acc.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax_acc.set_xticks([2, 5, 10, 20, 50], labels=["2", "5", "10", "20", "50"])

    ax_nfe.semilogx(rtol, column(rows, "nfe"), "o-", label="mean")
    ax_nfe.fill_between(rtol, column(rows, "nfe10"), column(rows, "nfe90"), alpha=0.3,
                        label="10th to 90th percentile of the inputs")
    ax_nfe.set(ylabel="NFE per input (dopri5)", title="cost per input")
    ax_nfe.legend(fontsize=8)

    ax_err.loglog(rtol, column(rows, "error"), "o-")
    ax_err.set(ylabel="max |log p - log p(rtol 1e-8)| over the test set (nats)",
               title="numerical error of the predicted log-probabilities")

    median = column(rows, "time")
    ax_time.errorbar(rtol, median, yerr=[median - column(rows, "time_min"),
                                         column(rows, "time_max") - median],
                     fmt="o-", capsize=3)
    ax_time.set(xscale="log", ylabel=f"predict time for {n_test} digits (s)",
                title=(f"wall time: median, min to max of {REPEATS} predictions" if REPEATS > 1
                       else "wall time of one prediction"))
    for ax in (ax_nfe, ax_err, ax_time):
        ax.set_xlabel("rtol at predict time (atol = rtol / 10)")
        ax.axvline(fitted_rtol, color="grey", lw=0.8, ls=":")
        ax.invert_xaxis()  # precision grows to the right
    fig.suptitle(f"ODEClassifier on digits ({engine} engine): one fit at rtol = "
                 f"{fitted_rtol:g} (dotted line), solver settings chosen at predict time"
                 f"\n{settings}")
    fig.savefig(path, dpi=120)


# %%
# Settings
# --------
# The command line of a run by hand; ``--quick`` is what the documentation build
# passes.
parser = argparse.ArgumentParser(
    description="ODE-Net on digits: precision traded for speed at predict time")
parser.add_argument("--backend", default="reference", choices=("reference", "torch", "jax"))
parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"),
                    help="where torch and jax compute (docs/gpus.md)")
parser.add_argument("--random-state", type=int, default=0, help="seed of the model")
parser.add_argument("--max-iter", type=int, default=None,
                    help="epochs (default: the estimator's default)")
parser.add_argument("--output", default="digits_tolerance.png", help="figure path")
parser.add_argument("--quiet", action="store_true", help="no progress bar")
parser.add_argument("--quick", action="store_true",
                    help="10 epochs, one timing per setting (the documentation build)")
parser.add_argument("--model", default=None,
                    help="load this fitted ODEClassifier (odeplug.save) instead of fitting")
args = parser.parse_args()
if args.quick:
    args.quiet = True
    args.max_iter = args.max_iter or 10
REPEATS = 1 if args.quick else 5  # predict timings per setting: median and range

# %%
# Fit
# ---
# One fit at the default tolerance (``rtol=1e-3``), with a progress bar unless quiet;
# with ``--model``, the saved fit instead (what the gallery shows).
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0)

if args.model is None:
    clf = odeplug.ODEClassifier(backend=args.backend, device=args.device,
                                random_state=args.random_state,
                                verbose=0 if args.quiet else 1)
    if args.max_iter is not None:
        clf.set_params(max_iter=args.max_iter)
    model = make_pipeline(StandardScaler(), clf)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    stopped = ("max_iter reached, loss still improving"
               if any(issubclass(w.category, ConvergenceWarning) for w in caught)
               else "converged")
    print(f"engine: {clf.backend_}    epochs: {clf.n_iter_} ({stopped})    "
          f"fit time: {fit_time:.1f} s (compilation included)")
    settings = (f"--quick: {clf.n_iter_} epochs (unconverged), one timing per setting"
                if args.quick else f"{clf.n_iter_} epochs, {REPEATS} timings per setting")
else:
    # The scaler is refitted on the same split: the saved classifier was fitted on it.
    clf = odeplug.load(args.model, backend=args.backend, expected=odeplug.ODEClassifier)
    clf.set_params(device=args.device)
    model = make_pipeline(StandardScaler().fit(X_train), clf)
    print(f"loaded {Path(args.model).name}: fitted on {clf.backend_} in {clf.n_iter_} epochs, "
          f"predicting on {args.backend}")
    settings = (f"model of the full fit ({clf.n_iter_} epochs on {clf.backend_}) loaded from "
                f"{Path(args.model).name}; "
                f"{'one timing' if REPEATS == 1 else f'{REPEATS} timings'} per setting")
fitted_rtol = clf.rtol
backward = clf.nfe_["nfe_backward"]
print(f"training NFE per batch (last epoch): forward {clf.nfe_['nfe_forward']:.0f}, "
      f"backward {'n/a' if backward is None else f'{backward:.0f}'}")

# %%
# Predict at other tolerances, without refitting
# ----------------------------------------------
# The same fitted parameters, solved at other tolerances and with cheap fixed-step
# solvers: the solver settings are read at predict time. ``inference_stats`` gives each
# input's cost without changing the model. The numerical error is measured against a
# solve at ``rtol = 1e-8``.
Z_test = model[0].transform(X_test)
reference = clf.set_params(rtol=1e-8, atol=1e-9).predict_log_proba(Z_test)
sweep = ([{"rtol": rtol, "atol": rtol / 10} for rtol in sorted({*RTOLS, fitted_rtol},
                                                              reverse=True)]
         + [{"solver": solver, "step_size": 1 / n_steps}
            for solver in ("euler", "rk4") for n_steps in FIXED_STEPS])
measured = []
for i, solver_params in enumerate(sweep, 1):
    # One line per setting as it is measured: the sweep takes seconds to minutes.
    described = ", ".join(f"{key} {value:.3g}" if isinstance(value, float) else
                          f"{key} {value}" for key, value in solver_params.items())
    print(f"predicting the test set {i}/{len(sweep)}: {described}", flush=True)
    measured.append(_measure(clf, Z_test, y_test, reference, **solver_params))
rows, fixed = measured[:-2 * len(FIXED_STEPS)], measured[-2 * len(FIXED_STEPS):]
clf.set_params(solver="dopri5", step_size=None, rtol=fitted_rtol, atol=fitted_rtol / 10)

print(f"{'solver':>8} {'setting':>12} {'accuracy':>9} {'max |log p error|':>18} "
      f"{'NFE per input: mean [p10, p90]':>31} {'predict s: median [min, max]':>29}")
for row in rows + fixed:
    mark = "  <- as fitted" if row["rtol"] == fitted_rtol else ""
    setting = (f"rtol {row['rtol']:.0e}" if row["solver"] == "dopri5"
               else f"{round(1 / row['step_size'])} steps")
    print(f"{row['solver']:>8} {setting:>12} {row['accuracy']:9.4f} {row['error']:18.2e} "
          f"{row['nfe']:14.1f} [{row['nfe10']:.0f}, {row['nfe90']:.0f}]"
          f"{row['time']:17.3f} [{row['time_min']:.3f}, {row['time_max']:.3f}]{mark}")
test_accuracy = next(r["accuracy"] for r in rows if r["rtol"] == fitted_rtol)
print(f"\ntest accuracy: {test_accuracy:.4f}")

# %%
# The figure
# ----------
# Top left: test accuracy against the mean NFE per input, for dopri5 at every tolerance
# and for Euler and RK4 of 1 to 8 steps. The other panels against ``rtol``: NFE per
# input (mean and 10th to 90th percentile), the numerical error of the
# log-probabilities, and the wall time of one ``predict`` on the test set.
_plot(rows, fixed, fitted_rtol, args.backend, len(X_test), args.output, settings)
print(f"figure: {args.output}")
