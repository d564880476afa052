"""
Flow matching against maximum likelihood: log-likelihood for fit time
=====================================================================

``CNFDensity`` trains its field by maximum likelihood (an ODE solve with the trace at
every step) or by flow matching (``objective="flow_matching"``: a regression of the field
onto straight paths between data and base draws, no solve in training). Both give the
same kind of model, scored by the same exact log-densities. This example fits both on
the two moons, scores the held-out half after each stage of training, and draws the
held-out log-likelihood against the fit time; flow matching is shown with independent
and with minibatch optimal-transport pairing (``ot_pairing``).

With ``--from-json docs/bench_flow_matching.json`` it draws, instead, the curves that
``tests/benchmarks/bench_flow_matching.py`` measured on every data set (the figure of
``docs/density.md``).

Run from the repository root::

    python examples/flow_matching_density.py --backend jax
    python examples/flow_matching_density.py --from-json docs/bench_flow_matching.json \\
        --output docs/flow_matching_ll_vs_time.png
"""

# %%
# Settings and data
# -----------------
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
from sklearn.datasets import make_moons
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler

from odeplug import CNFDensity

LABELS = {"maximum_likelihood": "maximum likelihood",
          "flow_matching": "flow matching (independent pairing)",
          "flow_matching_ot": "flow matching (OT pairing)",
          "flow_matching_long": "flow matching (independent, 4x the epochs)"}
STYLES = {"maximum_likelihood": "o-", "flow_matching": "s-", "flow_matching_ot": "^-",
          "flow_matching_long": "s:"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="flow matching vs maximum likelihood")
    parser.add_argument("--backend", default="jax", choices=("reference", "torch", "jax"))
    parser.add_argument("--quick", action="store_true", help="small data, short fits")
    parser.add_argument("--from-json", default=None,
                        help="draw the benchmark's curves from this JSON instead")
    parser.add_argument("--output", default="flow_matching_ll_vs_time.png")
    return parser.parse_args(argv)


def moons(quick):
    n = 600 if quick else 3000
    X = make_moons(n, noise=0.05, random_state=0)[0]
    X = StandardScaler().fit_transform(X)
    return X[: 2 * n // 3], X[2 * n // 3 :]


# %%
# Training in stages, scored after each
# -------------------------------------
# A warm start continues a fit; the time of scoring is left out of the fit time.
# Flow matching's loss is a noisy stochastic regression: its stages lower the step size
# at the end, and ``n_iter_no_change`` is large so that the training loss's noise does
# not stop it.


def curve(model, X_train, X_test, stages):
    points, elapsed = [], 0.0
    for i, (params, epochs) in enumerate(stages):
        model.set_params(warm_start=i > 0, max_iter=epochs, **params)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X_train)
        elapsed += time.perf_counter() - start
        scoring = copy.deepcopy(model).set_params(rtol=1e-5, atol=1e-5)
        points.append((elapsed, scoring.score(X_test)))
        print(f"{model.objective:>20} {model.n_iter_:5d} epochs {elapsed:6.1f} s  "
              f"held-out LL {points[-1][1]:.3f}", flush=True)
    return points


def measure(backend, quick):
    X_train, X_test = moons(quick)
    scale = 0.1 if quick else 1.0
    ml_stages = [({}, max(1, round(e * scale))) for e in (10, 20, 30, 40)]
    fm_stages = [({"learning_rate_init": lr}, max(1, round(e * scale)))
                 for lr, e in ((1e-2, 100), (1e-2, 200), (1e-2, 300), (2e-3, 120), (4e-4, 80))]
    curves = {"maximum_likelihood": curve(
        CNFDensity(backend=backend, random_state=0), X_train, X_test, ml_stages)}
    for label, ot in (("flow_matching", False), ("flow_matching_ot", True)):
        model = CNFDensity(backend=backend, objective="flow_matching", ot_pairing=ot,
                           batch_size=256, tol=0.0, n_iter_no_change=10**6, random_state=0)
        curves[label] = curve(model, X_train, X_test, fm_stages)
    return {"moons": curves}


# %%
# The figure
# ----------


def draw(curves_by_data, output, references=None, timing="compilation excluded",
         note=None):
    """The held-out log-likelihood against the fit time, one panel per data set; returns
    the figure (its title, legend and tick labels are kept inside it and apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(curves_by_data)
    columns = min(2, len(names))
    rows = -(-len(names) // columns)
    # One panel gets the width of the legend's two columns and of the two-line title.
    width = 5.5 * columns if columns > 1 else 7.5
    fig, axes = plt.subplots(rows, columns, figsize=(width, 4.2 * rows + 1.2),
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes.flat, names, strict=False):
        for label, points in curves_by_data[name].items():
            t, ll = np.asarray(points)[:, 0], np.asarray(points)[:, 1]
            ax.plot(t, ll, STYLES[label], label=LABELS[label], markersize=4)
        if references and name in references:
            ax.axhline(references[name], color="gray", linestyle="--",
                       label="GaussianMixture (BIC)")
        ax.set_xscale("log")
        # Plain numbers at 1, 2, 5 x 10^k and no minor labels: log scale's default minor
        # labels (2x10^0, 3x10^0, ...) overlap on a range under a decade.
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(f"fit time (s, {timing}, log scale)")
        ax.set_ylabel("held-out log-likelihood (nats/sample)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center",
               ncol=min(3 if columns > 1 else 2, len(labels)), fontsize=9)
    fig.suptitle("CNFDensity: held-out log-likelihood against fit time,\nby training "
                 "objective (each point a checkpoint)" + (f"\n{note}" if note else ""))
    fig.savefig(output, dpi=120)
    print(f"saved {output}")
    return fig


def from_json(path):
    results = json.loads(open(path).read())["results"]
    curves = {name: {label: [p[:2] for p in row[label]["curve"]] for label in LABELS
                     if label in row}
              for name, row in results.items()}
    return curves, {name: row["gmm"]["ll"] for name, row in results.items()}


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        curves, references = from_json(args.from_json)
        draw(curves, args.output, references)
    else:
        note = ("--quick: 600 points, a tenth of the epochs, unconverged" if args.quick
                else None)
        draw(measure(args.backend, args.quick), args.output,
             timing="the first point includes compilation", note=note)


if __name__ == "__main__":
    main()
