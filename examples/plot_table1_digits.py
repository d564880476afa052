"""
MLP, ResNet, RK-Net and ODE-Net on digits (Table 1 of the paper, in spirit)
===========================================================================

Chen et al. (2018), Table 1, compare on MNIST a one-hidden-layer MLP, a ResNet, an
RK-Net (the ODE-Net's architecture with gradients backpropagated through a Runge-Kutta
solver) and the ODE-Net (adaptive solver, gradients by the adjoint method) by test error,
parameters and memory. This script makes the same comparison on scikit-learn's digits
(8x8 images, 10 classes, stratified 75/25 split, standardised), with the same
``max_iter`` for every model (each stops earlier when its training loss stops improving
by ``tol`` for ``n_iter_no_change`` epochs, the scikit-learn way; the epochs run are
printed and drawn):

- **MLP**: scikit-learn's ``MLPClassifier`` with one hidden layer of 128 units.
- **ResNet**: ``ODEClassifier(solver="euler", step_size=1/6, adjoint=False)``: six
  Euler steps ``z <- z + h f(z, t)`` are six residual blocks that share their weights
  (the block also sees ``t``), trained by backpropagation: memory grows with the depth.
- **RK-Net**: ``ODEClassifier(solver="rk4", step_size=1/4, adjoint=False)``:
  backpropagation through 4 steps of RK4 (16 evaluations of the field).
- **ODE-Net**: ``ODEClassifier()``: dopri5 at ``rtol=1e-3`` with the adjoint method.

The three ODE models have the same layers (an embedding of width 128, a field with one
hidden layer of 64, a linear head). Measured: test error; parameters; **peak memory**
of one training epoch (tracemalloc's peak of the Python heap, which holds NumPy's
arrays and autograd's tape, on the reference engine whichever ``--backend`` fits); fit
wall time on the chosen engine. A second figure shows the paper's memory claim: peak
memory of one epoch as the integration time ``t1`` (the depth) grows, constant for the
adjoint, growing with the number of steps for backpropagation.

Run from the repository root::

    python examples/plot_table1_digits.py --backend jax

``--quick`` (what the documentation build passes) fits 10 epochs and measures memory at
two depths on 300 training digits.
"""

# %%
# Settings and models
# -------------------
import argparse
import time
import tracemalloc
import warnings

import matplotlib.pyplot as plt
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

import odeplug

parser = argparse.ArgumentParser(description="MLP, ResNet, RK-Net and ODE-Net on digits")
parser.add_argument("--backend", default="reference", choices=("reference", "torch", "jax"))
parser.add_argument("--max-iter", type=int, default=None,
                    help="epochs of every model (default 100; 10 with --quick)")
parser.add_argument("--output", default="table1_digits.png", help="figure path")
parser.add_argument("--quick", action="store_true",
                    help="10 epochs, memory at two depths (the documentation build)")
args = parser.parse_args()
max_iter = args.max_iter or (10 if args.quick else 100)
depths = (1.0, 4.0) if args.quick else (1.0, 2.0, 4.0, 8.0)

common = {"hidden_layer_sizes": (64,), "latent_dim": 128, "max_iter": max_iter, "random_state": 0}
models = {
    "MLP": MLPClassifier(hidden_layer_sizes=(128,), max_iter=max_iter, random_state=0),
    "ResNet": odeplug.ODEClassifier(backend=args.backend, solver="euler", step_size=1 / 6,
                                    adjoint=False, **common),
    "RK-Net": odeplug.ODEClassifier(backend=args.backend, solver="rk4", step_size=1 / 4,
                                    adjoint=False, **common),
    "ODE-Net": odeplug.ODEClassifier(backend=args.backend, **common),
}

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0)
scaler = StandardScaler().fit(X_train)
Z_train, Z_test = scaler.transform(X_train), scaler.transform(X_test)


def n_parameters(model) -> int:
    if isinstance(model, MLPClassifier):
        return sum(w.size for w in model.coefs_ + model.intercepts_)
    return sum(w.size for w in model.params_.values())


def peak_memory_of_one_epoch(model, X, y) -> float:
    """Peak of the Python heap (MiB) above what it held before, over one epoch."""
    model = clone(model).set_params(max_iter=1)
    if not isinstance(model, MLPClassifier):
        model.set_params(backend="reference")  # tracemalloc sees NumPy, not torch or XLA
    with warnings.catch_warnings():
        # Untraced warm-up on a few rows: the first use of an engine allocates its lazy
        # imports and caches once, which is not the training's memory.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clone(model).fit(X[:50], y[:50])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - before) / 2**20


# %%
# Fit, score and measure
# ----------------------
rows = []
for name, model in models.items():
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(Z_train, y_train)
    fit_time = time.perf_counter() - start
    rows.append({"model": name, "error": 100 * (1 - model.score(Z_test, y_test)),
                 "params": n_parameters(model), "time": fit_time, "epochs": model.n_iter_,
                 "memory": peak_memory_of_one_epoch(model, Z_train, y_train)})

print(f"{'model':>8} {'test error %':>13} {'parameters':>11} {'peak memory MiB':>16} "
      f"{'fit s':>7} {'epochs':>7}")
for row in rows:
    print(f"{row['model']:>8} {row['error']:13.2f} {row['params']:11d} "
          f"{row['memory']:16.1f} {row['time']:7.1f} {row['epochs']:7d}")

# %%
# The table as bars
# -----------------
names = [row["model"] for row in rows]
colors = ["C7", "C1", "C2", "C0"]
fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
panels = (("error", "test error (%, 450 digits)", "{:.2f}"),
          ("params", "parameters (count)", "{:,}"),
          ("memory", "peak memory of one epoch (MiB)", "{:.1f}"),
          ("time", "fit time (s, wall clock)", "{:.1f}"))
for ax, (key, label, fmt) in zip(axes.ravel(), panels, strict=True):
    values = [row[key] for row in rows]
    bars = ax.bar(names, values, color=colors)
    texts = [fmt.format(v) for v in values]
    if key == "time":  # the loss can stop improving before max_iter (tol)
        texts = [f"{t}\n{row['epochs']} epochs" for t, row in zip(texts, rows, strict=True)]
    ax.bar_label(bars, texts, fontsize=8)
    ax.set_ylabel(label)
    ax.set_xlabel("model")
    ax.set_title(label.split(" (")[0])
    ax.margins(y=0.15)
quick = ", --quick" if args.quick else ""
fig.suptitle(f"Digits, at most {max_iter} epochs each ({args.backend} engine{quick})\nmemory: "
             f"tracemalloc peak of one epoch on the reference engine, batch 200")
fig.savefig(args.output, dpi=110)
print(f"figure: {args.output}")

# %%
# Memory against depth
# --------------------
# One epoch on the first training digits at each integration time ``t1``: the
# fixed-step models take proportionally more steps, and backpropagation keeps every
# step's intermediates; the adjoint keeps one step's.
n_rows = 300 if args.quick else len(Z_train)
memory = {name: [peak_memory_of_one_epoch(clone(models[name]).set_params(t1=t1),
                                          Z_train[:n_rows], y_train[:n_rows])
                 for t1 in depths]
          for name in ("ResNet", "RK-Net", "ODE-Net")}
fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
for name, color in zip(memory, colors[1:], strict=True):
    ax.plot(depths, memory[name], "o-", color=color, label=name)
    print(f"{name:>8}: peak MiB at t1 = {depths}: "
          f"{', '.join(f'{m:.1f}' for m in memory[name])}")
ax.set_xlabel("integration time t1 (depth; dimensionless)")
ax.set_ylabel("peak memory of one epoch (MiB)")
ax.set_title(f"training memory against depth ({n_rows} digits, batch 200{quick})")
ax.set_xticks(depths)
ax.set_ylim(bottom=0)
ax.legend()
fig.savefig(args.output.replace(".png", "_memory.png"), dpi=110)
print(f"figure: {args.output.replace('.png', '_memory.png')}")
# sphinx_gallery_thumbnail_number = 1
