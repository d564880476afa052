"""
Continuous normalizing flow on two moons
=========================================

A :class:`odeplug.CNFDensity` learns the density of scikit-learn's two moons by maximum
likelihood, in the spirit of Figs. 4-6 of Chen et al. (2018): the learned density, samples
drawn by solving the flow backwards, and the base distribution ``N(0, I)`` flowing into
the data as ``t`` goes from ``t1`` back to 0.

The script saves three PNGs (``cnf_density.png``, ``cnf_samples.png``, ``cnf_flow.png``)
in the folder given by ``--out`` (the current folder by default). Run by hand, it fits
the estimator's defaults (200 epochs; a few minutes on JAX)::

    python examples/cnf_density.py --backend jax

``--model FILE`` loads a fitted flow (``odeplug.save``) instead. The documentation's
gallery passes ``--quick --model docs/gallery_models/moons_cnfdensity.odeplug``: the model
of that full fit, made by ``python docs/gallery_models/make_gallery_models.py``.
``--quick`` alone fits a small model for a few epochs, an unconverged density (a blob
rather than two moons), and the figures' titles say so.
"""

# %%
# Settings
# --------
# The gallery loads the full fit (``--model``); by hand, the estimator's defaults (the
# figures of ``docs/density.md``), or a small model with ``--quick`` alone.

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402

import odeplug  # noqa: E402
from odeplug import CNFDensity  # noqa: E402

parser = argparse.ArgumentParser(description="Continuous normalizing flow on two moons")
parser.add_argument("--quick", action="store_true", help="a small model, a few epochs")
parser.add_argument("--backend", default="torch", help="reference, torch or jax")
parser.add_argument("--out", type=Path, default=Path("."), help="folder of the PNGs")
parser.add_argument("--model", type=Path, default=None,
                    help="load this fitted CNFDensity (odeplug.save) instead of fitting")
args, _ = parser.parse_known_args()

# The settings of docs/gallery_models/make_gallery_models.py: the estimator's defaults.
QUICK_FIT = args.quick and args.model is None
N_TRAIN = 500 if QUICK_FIT else 2000
SETTINGS = (dict(hidden_layer_sizes=(16, 16), max_iter=5, learning_rate_init=2e-2)
            if QUICK_FIT else dict(batch_size=100))
GRID = 60 if args.quick else 150

# %%
# Fit the flow
# ------------
# Data at ``t = 0`` is carried by ``dz/dt = f(t, z)`` to ``N(0, I)`` at ``t1``; the
# estimator standardises the data itself, and ``score_samples`` is the log-density in
# the data's own units.

X, _ = make_moons(N_TRAIN, noise=0.05, random_state=0)
if args.model is None:
    cnf = CNFDensity(backend=args.backend, random_state=0, **SETTINGS).fit(X)
    MODEL = (f"--quick: {cnf.n_iter_} epochs of a small model, unconverged" if QUICK_FIT
             else f"{cnf.n_iter_} epochs")
else:
    cnf = odeplug.load(args.model, backend=args.backend, expected=CNFDensity)
    MODEL = f"{cnf.n_iter_} epochs, loaded from {args.model.name}"
    print(f"loaded {args.model.name}: fitted on {cnf.backend_} in {cnf.n_iter_} epochs")
X_test, _ = make_moons(1000, noise=0.05, random_state=1)
print(f"held-out mean log-likelihood: {cnf.score(X_test):.3f} nats per sample")

# %%
# The learned density
# -------------------
# ``score_samples`` on a grid (each point solved with its own adaptive steps), next to
# the training data.

lo, hi = X.min(0) - 0.5, X.max(0) + 0.5
xs, ys = np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID)
grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
density = np.exp(cnf.score_samples(grid)).reshape(GRID, GRID)

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True)
left.scatter(X[:, 0], X[:, 1], s=2, alpha=0.5)
left.set_title(f"training data ({N_TRAIN} points)")
image = right.pcolormesh(xs, ys, density, shading="auto", cmap="viridis")
fig.colorbar(image, ax=right, label="p(x)")
right.set_title(f"density learned by CNFDensity\n({MODEL})")
for ax in (left, right):
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
fig.tight_layout()
fig.savefig(args.out / "cnf_density.png", dpi=110)

# %%
# Samples
# -------
# ``sample`` draws from ``N(0, I)`` and solves the flow from ``t1`` back to 0.

samples = cnf.sample(1000, random_state=0)
fig, ax = plt.subplots(figsize=(5, 4))
ax.scatter(X_test[:, 0], X_test[:, 1], s=2, alpha=0.4, label="held-out data")
ax.scatter(samples[:, 0], samples[:, 1], s=2, alpha=0.6, label="samples of the flow")
ax.set_xlabel("$x_1$")
ax.set_ylabel("$x_2$")
ax.set_title(f"samples: base draws carried back to t = 0\n({MODEL})")
ax.legend(markerscale=5, loc="upper right")
fig.tight_layout()
fig.savefig(args.out / "cnf_samples.png", dpi=110)

# %%
# The base distribution flowing into the data
# -------------------------------------------
# Base draws solved from ``t1`` back to 0 with :func:`odeplug.odeint` on the learned
# field, with outputs at intermediate times. The field is rebuilt from the canonical
# parameters ``params_`` (an MLP of ``[z, t]``, weights applied as ``x @ W + b``); the
# states are shown in the data's units (the estimator's standardisation undone).

from odeplug import odeint  # noqa: E402

params = {k: v.astype(np.float64) for k, v in cnf.params_.items()}
layers = len(params) // 2


def field(t, z, p):
    """The learned vector field f(t, z), as the estimator evaluates it."""
    h = np.concatenate([z, np.full((len(z), 1), t)], axis=1)
    for i in range(layers):
        h = h @ p[f"field.{i}.weight"] + p[f"field.{i}.bias"]
        if i < layers - 1:
            h = np.tanh(h)
    return h


base = np.random.default_rng(0).standard_normal((1000, 2))
times = np.linspace(cnf.t1, 0.0, 5)
path = odeint(field, base, times, params, backend="reference", rtol=1e-5, atol=1e-7)
fig, axes = plt.subplots(1, len(times), figsize=(3 * len(times), 3), sharex=True, sharey=True)
for ax, t, z in zip(axes, times, path, strict=True):
    x = z * cnf.scale_ + cnf.mean_  # back to the data's units
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
    ax.set_title(f"t = {t:.2f}")
    ax.set_xlabel("$x_1$")
axes[0].set_ylabel("$x_2$")
fig.suptitle(f"N(0, I) at t1 flowing into the moons at t = 0 ({MODEL})")
fig.tight_layout()
fig.savefig(args.out / "cnf_flow.png", dpi=110)
print(f"saved cnf_density.png, cnf_samples.png, cnf_flow.png in {args.out.resolve()}")
