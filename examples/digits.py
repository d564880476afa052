"""ODE-Net on scikit-learn's digits: accuracy, cost, and precision traded for speed.

Fits ``Pipeline(StandardScaler(), ODEClassifier())`` with default parameters on a
stratified 75/25 split of ``load_digits`` (``random_state=0``), prints the test accuracy,
the fit time and the function evaluations (NFE) per training batch and per test input,
then, without refitting, predicts again at looser and tighter tolerances (``set_params``)
and saves a figure of test accuracy and predict time against ``rtol``.

Run from the repository root::

    python examples/digits.py --backend jax
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import odeplug

RTOLS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="reference", choices=("reference", "torch", "jax"))
    parser.add_argument("--random-state", type=int, default=0, help="seed of the model")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="epochs (default: the estimator's default)")
    parser.add_argument("--output", default="digits_tolerance.png", help="figure path")
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0)

    clf = odeplug.ODEClassifier(backend=args.backend, random_state=args.random_state)
    if args.max_iter is not None:
        clf.set_params(max_iter=args.max_iter)
    model = make_pipeline(StandardScaler(), clf)
    start = time.perf_counter()
    model.fit(X_train, y_train)
    fit_time = time.perf_counter() - start
    fitted_rtol = clf.rtol

    print(f"engine: {clf.backend_}    epochs: {clf.n_iter_}    fit time: {fit_time:.1f} s")
    backward = clf.nfe_["backward"]
    print(f"training NFE per batch (last epoch): forward {clf.nfe_['forward']:.0f}, "
          f"backward {'n/a' if backward is None else f'{backward:.0f}'}")

    # The same fitted parameters, solved at other tolerances: rtol and atol are read at
    # predict time. inference_stats gives each input's cost without changing the model.
    rows = []
    for rtol in sorted({*RTOLS, fitted_rtol}, reverse=True):
        clf.set_params(rtol=rtol, atol=rtol / 10)
        model.predict(X_test)  # warm-up: jax compiles once per solver setting and size
        start = time.perf_counter()
        accuracy = model.score(X_test, y_test)
        predict_time = time.perf_counter() - start
        nfe = clf.inference_stats(model[0].transform(X_test))["nfe_forward"]
        rows.append((rtol, accuracy, predict_time, nfe.mean(), nfe.min(), nfe.max()))
    clf.set_params(rtol=fitted_rtol, atol=fitted_rtol / 10)

    print(f"\n{'rtol':>7} {'accuracy':>9} {'predict (s)':>12} {'NFE per input':>22}")
    for rtol, accuracy, predict_time, mean, low, high in rows:
        mark = "  <- as fitted" if rtol == fitted_rtol else ""
        print(f"{rtol:7.0e} {accuracy:9.4f} {predict_time:12.3f} "
              f"{mean:9.1f} [{low:.0f}, {high:.0f}]{mark}")
    test_accuracy = next(r[1] for r in rows if r[0] == fitted_rtol)
    print(f"\ntest accuracy: {test_accuracy:.4f}")

    _plot(rows, fitted_rtol, clf.backend_, args.output)
    print(f"figure: {args.output}")


def _plot(rows, fitted_rtol: float, engine: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rtol, accuracy, predict_time, nfe = (np.array([r[i] for r in rows]) for i in range(4))
    fig, (ax_acc, ax_time) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax_acc.semilogx(rtol, accuracy, "o-")
    ax_acc.set(xlabel="rtol at predict time (atol = rtol / 10)", ylabel="test accuracy")
    ax_time.loglog(rtol, predict_time, "o-", label="predict time (s)")
    ax_time.loglog(rtol, nfe / nfe.max() * predict_time.max(), "s--",
                   label="mean NFE per input (scaled)")
    ax_time.set(xlabel="rtol at predict time (atol = rtol / 10)",
                ylabel="predict time, 450 digits (s)")
    ax_time.legend()
    for ax in (ax_acc, ax_time):
        ax.axvline(fitted_rtol, color="grey", lw=0.8, ls=":")
        ax.invert_xaxis()  # precision grows to the right
    fig.suptitle(f"ODEClassifier on digits ({engine} engine): one fit, "
                 "tolerance chosen at predict time")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
