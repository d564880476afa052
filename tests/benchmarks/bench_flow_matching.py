"""CNFDensity trained by flow matching against maximum likelihood (issue #12), in one run.

For each data set (moons, FFJORD's 8 Gaussians, two spirals: 2,000 train / 1,000 test
points, standardised; scikit-learn's digits reduced by PCA to 16 dimensions and
standardised), on the JAX engine:

* ``GaussianMixture`` with ``n_components`` chosen by BIC;
* ``CNFDensity`` trained by maximum likelihood (``ML_PARAMS``: the estimator's defaults
  when this benchmark was first run);
* ``CNFDensity(objective="flow_matching")`` with independent pairing and with minibatch
  OT pairing (``ot_pairing=True``), trained at a constant step size and then at two
  smaller ones (warm starts: the stochastic regression's loss stops falling at a noise
  floor set by the step size); and with independent pairing for 4 times the epochs.

Reported: held-out log-likelihood (nats per sample, scored with ``rtol=1e-5``,
``atol=1e-5``), fit time (compilation and the checkpoints' scoring excluded), and the
NFE to sample 1,000 points at the estimator's default tolerances. Every model is also
scored at checkpoints along its training, for the figure of log-likelihood against fit
time (``examples/flow_matching_density.py`` draws it from the JSON this writes).

Run (about half an hour on a loaded 2-core machine)::

    python tests/benchmarks/bench_flow_matching.py            # every data set
    python tests/benchmarks/bench_flow_matching.py --quick    # moons, short fits
    python tests/benchmarks/bench_flow_matching.py --only moons,digits

Writes the ``flow-matching`` section of ``docs/density.md`` and
``docs/bench_flow_matching.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (pins threads before numpy, torch or jax are imported)
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits, make_moons  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from odeplug import CNFDensity  # noqa: E402

DOCS = _common.REPO / "docs" / "density.md"
JSON = _common.REPO / "docs" / "bench_flow_matching.json"
SEED = 0
SCORE_TOL = dict(rtol=1e-5, atol=1e-5)

# The field of both objectives, and maximum likelihood's settings: CNFDensity's defaults
# when this benchmark was first run (they have changed since: 64-64-64, the adaptive
# schedule, RNODE 0.01; docs/density.md's CNFDensity benchmark).
FIELD = dict(hidden_layer_sizes=(64, 64))
ML_PARAMS = dict(learning_rate="constant", learning_rate_init=5e-3, n_iter_no_change=10,
                 kinetic_energy=0.0, jacobian_norm=0.0)
# Maximum likelihood is scored after these epochs (cumulative).
ML_CHECKPOINTS = (10, 30, 60, 100)
# Flow matching: (step size, epochs) phases, scored after each.
FM_PHASES = ((1e-2, 100), (1e-2, 200), (1e-2, 300), (2e-3, 120), (4e-4, 80))
# And 4 times as long (independent pairing): how far more training takes it.
FM_LONG_PHASES = tuple((lr, 4 * epochs) for lr, epochs in FM_PHASES)
# The step-size phases are explicit: the adaptive schedule reads the regression's noisy
# training loss and divides the step too early (docs/density.md).
FM_PARAMS = dict(objective="flow_matching", batch_size=256, tol=0.0, learning_rate="constant")


# ------------------------------------------------------------------------- data


def eight_gaussians(n, rng):
    """FFJORD's: std 0.5 around 8 centres on a circle of radius 4, divided by 1.414."""
    angles = np.arange(8) * np.pi / 4
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return (centers[rng.integers(0, 8, n)] + 0.5 * rng.normal(size=(n, 2))) / 1.414


def two_spirals(n, rng):
    """FFJORD's "2spirals"."""
    m = np.sqrt(rng.uniform(size=(n // 2, 1))) * 540 * (2 * np.pi) / 360
    x = -np.cos(m) * m + rng.uniform(size=(n // 2, 1)) * 0.5
    y = np.sin(m) * m + rng.uniform(size=(n // 2, 1)) * 0.5
    half = np.hstack([x, y])
    return np.vstack([half, -half]) / 3 + 0.1 * rng.normal(size=(2 * (n // 2), 2))


def dataset(name):
    rng = np.random.default_rng(SEED)
    if name == "moons":
        X = make_moons(3000, noise=0.05, random_state=SEED)[0]
    elif name == "8gaussians":
        X = eight_gaussians(3000, rng)
    elif name == "2spirals":
        X = two_spirals(3000, rng)
    elif name == "digits":
        X = PCA(16, random_state=SEED).fit_transform(load_digits().data)
        X = X[rng.permutation(len(X))]
        X = StandardScaler().fit_transform(X)
        return X[:1297], X[1297:]  # digits has 1,797 images: 1,297 / 500
    else:
        raise ValueError(name)
    X = StandardScaler().fit_transform(X[rng.permutation(len(X))])
    return X[:2000], X[2000:]


# ------------------------------------------------------------------------ models


def gmm_bic(X_train, X_test, max_components):
    fits = [GaussianMixture(k, n_init=2, random_state=SEED).fit(X_train)
            for k in range(1, max_components + 1)]
    best = min(fits, key=lambda m: m.bic(X_train))
    return {"ll": best.score(X_test), "n_components": best.n_components}


def score(model, X_test):
    scoring = _copy_with(model, **SCORE_TOL)
    return float(np.mean(scoring.score_samples(X_test)))


def _copy_with(model, **params):
    return copy.deepcopy(model).set_params(**params)


def sample_nfe(model, n=1000):
    """NFE of each of ``n`` samples' reverse solves at the model's own tolerances."""
    Z = np.random.default_rng(SEED + 1).standard_normal((n, model.n_features_in_))
    _, stats = model._infer("inverse_transform", Z)  # the stats that sample() drops
    return float(np.mean(stats["nfe_forward"]))


WARM_UP = True  # --with-compilation: off


def train_with_checkpoints(model, X_train, X_test, phases):
    """Fit in phases ``(params, epochs)``, each a warm start of the last; returns the
    model and the (fit seconds, held-out log-likelihood, epochs) after each phase.

    A one-epoch fit of a copy compiles the training step first: JAX compiles once per
    architecture and batch shape, and the data sets share shapes, so timings with the
    compilation would charge it to whichever model and data set came first."""
    if WARM_UP:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            copy.deepcopy(model).set_params(max_iter=1, **phases[0][0]).fit(X_train)
    curve, elapsed = [], 0.0
    for i, (params, epochs) in enumerate(phases):
        model.set_params(warm_start=i > 0, max_iter=epochs, **params)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X_train)
        elapsed += time.perf_counter() - start
        curve.append((elapsed, score(model, X_test), model.n_iter_))
        print(f"    {model.n_iter_:5d} epochs {elapsed:7.1f} s  LL {curve[-1][1]:.4f}",
              flush=True)
    return model, curve


def maximum_likelihood(X_train, X_test, quick):
    checkpoints = (5, 10) if quick else ML_CHECKPOINTS
    phases = [({}, b - a) for a, b in zip((0, *checkpoints[:-1]), checkpoints, strict=True)]
    model = CNFDensity(backend="jax", random_state=SEED, **FIELD, **ML_PARAMS)
    return train_with_checkpoints(model, X_train, X_test, phases)


def flow_matching(X_train, X_test, ot_pairing, quick, phases=FM_PHASES):
    phases = phases[:1] + phases[-1:] if quick else phases
    model = CNFDensity(backend="jax", ot_pairing=ot_pairing, random_state=SEED,
                       n_iter_no_change=10**6, **FIELD, **FM_PARAMS)
    return train_with_checkpoints(
        model, X_train, X_test, [({"learning_rate_init": lr}, e) for lr, e in phases])


# ------------------------------------------------------------------------ report

MODELS = {"maximum_likelihood": "CNF, maximum likelihood",
          "flow_matching": "CNF, flow matching",
          "flow_matching_ot": "CNF, flow matching + OT pairing",
          "flow_matching_long": "CNF, flow matching, 4 times the epochs"}


def run(names, quick):
    results = {}
    for name in names:
        X_train, X_test = dataset(name)
        print(f"{name}: {X_train.shape[0]} train, {X_test.shape[0]} test, "
              f"{X_train.shape[1]} features", flush=True)
        row = {"gmm": gmm_bic(X_train, X_test, 20 if X_train.shape[1] == 2 else 10)}
        print(f"  GMM(BIC) {row['gmm']}", flush=True)
        for label in MODELS:
            print(f"  {label}", flush=True)
            if label == "maximum_likelihood":
                model, curve = maximum_likelihood(X_train, X_test, quick)
            else:
                model, curve = flow_matching(
                    X_train, X_test, label.endswith("_ot"), quick,
                    FM_LONG_PHASES if label.endswith("_long") else FM_PHASES)
            row[label] = {"ll": curve[-1][1], "fit_s": curve[-1][0], "epochs": model.n_iter_,
                          "sample_nfe": sample_nfe(model), "curve": curve}
            print(f"    sample NFE {row[label]['sample_nfe']:.1f}", flush=True)
        results[name] = row
    return results


def table(results):
    lines = [
        "| data | model | held-out LL (nats) | vs ML | fit (s) | fit / ML's | epochs | "
        "NFE per sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        ml = row["maximum_likelihood"]
        lines.append(f"| {name} | GaussianMixture (BIC, {row['gmm']['n_components']} "
                     f"components) | {row['gmm']['ll']:.3f} | {row['gmm']['ll'] - ml['ll']:+.3f}"
                     " | | | | |")
        for label, title in MODELS.items():
            if label not in row:
                continue
            r = row[label]
            lines.append(
                f"| {name} | {title} | {r['ll']:.3f} | {r['ll'] - ml['ll']:+.3f} | "
                f"{r['fit_s']:.1f} | {r['fit_s'] / ml['fit_s']:.2f} | {r['epochs']} | "
                f"{r['sample_nfe']:.1f} |")
    return "\n".join(lines)


def adaptive_schedule(patiences=(20, 50, 100, 200), max_iter=3200):
    """Flow matching (independent pairing) on moons under ``learning_rate="adaptive"``,
    one fit per ``n_iter_no_change``: where the schedule divides the step and what it
    reaches (printed; docs/density.md quotes it)."""
    X_train, X_test = dataset("moons")
    settings = dict(backend="jax", ot_pairing=False, random_state=SEED, **FIELD,
                    **{**FM_PARAMS, "learning_rate": "adaptive"}, learning_rate_init=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        CNFDensity(**settings, max_iter=1).fit(X_train)  # compiles the step
        for patience in patiences:
            model = CNFDensity(**settings, n_iter_no_change=patience, max_iter=max_iter)
            start = time.perf_counter()
            model.fit(X_train)
            elapsed = time.perf_counter() - start
            rates = model.curves_["learning_rate"]
            divided = [i + 1 for i in range(1, len(rates)) if rates[i] != rates[i - 1]]
            print(f"n_iter_no_change={patience}: {model.n_iter_} epochs, {elapsed:.1f} s, "
                  f"held-out LL {score(model, X_test):.3f}, step divided at epochs "
                  f"{divided}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="moons only, short fits")
    parser.add_argument("--only", default="moons,8gaussians,2spirals,digits")
    parser.add_argument("--with-compilation", action="store_true",
                        help="no warm-up: each model's first fit compiles (the first data "
                             "set pays for every later one of the same shapes); writes "
                             "only the JSON, bench_flow_matching_with_compilation.json")
    parser.add_argument("--adaptive", action="store_true",
                        help="only flow matching under the adaptive step-size schedule, "
                             "on moons (prints; writes nothing)")
    args = parser.parse_args()
    if args.adaptive:
        adaptive_schedule()
        return
    global WARM_UP
    WARM_UP = not args.with_compilation
    names = ["moons"] if args.quick else args.only.split(",")
    results = run(names, args.quick)
    if args.quick:
        print(table(results))
        return
    output = JSON.with_name(JSON.stem + "_with_compilation.json") if args.with_compilation \
        else JSON
    output.write_text(json.dumps({"machine": _common.environment(), "results": results},
                                 indent=1))
    if args.with_compilation:
        print(table(results))
        return
    command = "python tests/benchmarks/bench_flow_matching.py" + (
        "" if args.only == parser.get_default("only") else f" --only {args.only}")
    body = "\n".join([
        "### Flow matching against maximum likelihood, measured",
        "",
        f"Measured by `{command}` ({_common.environment()}), one seed, on the JAX engine. "
        "Held-out log-likelihood in nats per sample of the standardised data, "
        f"scored with rtol={SCORE_TOL['rtol']}, atol={SCORE_TOL['atol']}; fit time "
        "without compilation (a one-epoch warm-up fit compiles each model first); NFE "
        "per sample: the reverse solve of 1,000 base draws at the estimator's default "
        "tolerances. The machine was shared with other jobs (load average 8 to 14 on "
        "2 cores): times are inflated and noisy, ratios less so.",
        "",
        table(results),
    ])
    _common.write_section("flow-matching", body, DOCS)
    print(table(results))


if __name__ == "__main__":
    main()
