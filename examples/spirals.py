"""
Latent ODE on irregularly sampled spirals
=========================================

The experiment of Chen et al. (2018, Sec. 5.1, Fig. 8): spirals observed at 30
irregular times of the first half of a window, extrapolated over its second half.
:class:`odeplug.LatentODERegressor` encodes each series, integrates its latent state to
any time and decodes it: we plot its interpolation over the observation window and its
extrapolation after it, with a ±2σ band from posterior draws of ``z0`` and the fitted
observation noise, beside the noise-free trajectory and the extrapolation of an RNN that
takes the time gaps as inputs (the paper's baseline).

Run from the repository root (200 epochs on 800 spirals: one to three minutes on JAX)::

    python examples/spirals.py --backend jax

``--model FILE`` loads a fitted latent ODE (``odeplug.save``) instead of fitting one.
The documentation's gallery passes ``--quick --model
docs/gallery_models/spirals_latentode.odeplug``: the model of that full fit, made by
``python docs/gallery_models/make_gallery_models.py``. ``--quick`` (or
``ODEPLUG_EXAMPLES_QUICK=1``) alone fits 10 epochs on 160 spirals, an unconverged model,
and the figure's title says so; with ``--quick`` the RNN baseline (unconverged in the
steps a quick run affords) is left out.
"""

# %%
# Settings and data
# -----------------
# 1,000 spirals (800 to fit, 200 held out) of torchdiffeq's generator; 200 of them and 10
# epochs with ``--quick`` alone. The gallery loads the full fit (``--model``).

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import odeplug  # noqa: E402
from odeplug.datasets import make_spirals  # noqa: E402

parser = argparse.ArgumentParser(description="Latent ODE on irregularly sampled spirals")
parser.add_argument("--backend", default=None, help="default: jax if installed")
parser.add_argument("--quick", action="store_true")
parser.add_argument("--output", default="latent_spirals.png")
parser.add_argument("--model", default=None,
                    help="load this fitted LatentODERegressor (odeplug.save) instead of fitting")
args = parser.parse_args(sys.argv[1:] if __name__ == "__main__" else [])
QUICK = args.quick or os.environ.get("ODEPLUG_EXAMPLES_QUICK") == "1"
# A loaded model was fitted on the full data (docs/gallery_models/make_gallery_models.py):
# its held-out spirals are those of the full split.
N_SPIRALS, EPOCHS, RNN_ITERS = ((200, 10, 25) if QUICK and args.model is None
                                else (1000, 200, 150))
backends = odeplug.available_backends()
BACKEND = args.backend or ("jax" if backends["jax"].available else "reference")

data = make_spirals(N_SPIRALS, n_observed=30, random_state=0)
n_train = int(0.8 * N_SPIRALS)
X_train, X_test = data.X[:n_train], data.X[n_train:]
y_train = data.y[:n_train]

# %%
# The latent ODE
# --------------
# The paper's model: an RNN encoder run backwards over the observations, a 4-D latent
# ODE, an MLP decoder; trained on the observations and the targets (the ELBO, KL
# annealed over 10 epochs).

if args.model is None:
    model = odeplug.LatentODERegressor(
        backend=BACKEND, obs_times=data.obs_times, target_times=data.target_times,
        encoder="rnn", latent_dim=4, encoder_hidden_sizes=(25,), hidden_layer_sizes=(20,),
        decoder_hidden_sizes=(20,), batch_size=100, max_iter=EPOCHS, tol=0.0,
        n_iter_no_change=EPOCHS, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a fixed number of epochs
        model.fit(X_train, y_train)
    MODEL = (f"--quick: {model.n_iter_} epochs on {n_train} spirals, unconverged" if QUICK
             else f"{model.n_iter_} epochs on {n_train} spirals")
else:
    model = odeplug.load(args.model, backend=BACKEND, expected=odeplug.LatentODERegressor)
    MODEL = f"{model.n_iter_} epochs on {n_train} spirals, loaded from {Path(args.model).name}"
    print(f"loaded {Path(args.model).name}: fitted on {model.backend_} in {model.n_iter_} epochs")
rmse = np.sqrt(np.mean((model.predict(X_test) - data.y_true[n_train:]) ** 2))
print(f"latent ODE ({BACKEND}): extrapolation RMSE {rmse:.3f} on {len(X_test)} spirals")

# %%
# An RNN for comparison
# ---------------------
# A GRU reads the 100 slots of the observation window (value, mask, time since the last
# observation), then rolls the 100 targets out, feeding back its predictions. Fitted on
# the training spirals (full-batch Adam steps of a 100 + 100-step recurrence are
# slow on a CPU); ``tests/benchmarks/bench_spirals.py`` measures it on all of them. Left
# out with ``--quick`` (the gallery): the steps a quick run affords leave it unconverged.


def rnn_extrapolation(X_fit, y_fit, X_new):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    dt = float(data.obs_times[1] - data.obs_times[0])

    def inputs(X):
        mask = ~np.isnan(X)
        last = np.maximum.accumulate(np.where(mask.any(2), np.arange(X.shape[1]), -1), 1)
        previous = np.concatenate([np.full((len(X), 1), -1), last[:, :-1]], axis=1)
        since = np.where(previous < 0, 0.0, (np.arange(X.shape[1]) - previous) * dt)
        feats = np.concatenate([np.nan_to_num(X), mask, since[..., None]], axis=2)
        return torch.tensor(feats, dtype=torch.float32)

    encoder, decoder = torch.nn.GRU(5, 32, batch_first=True), torch.nn.GRUCell(2, 32)
    head = torch.nn.Linear(32, 2)
    parts = [*encoder.parameters(), *decoder.parameters(), *head.parameters()]

    def rollout(feats, n_steps):
        h = encoder(feats)[1][0]
        out, previous = [], head(h)
        for _ in range(n_steps):
            h = decoder(previous, h)
            previous = head(h)
            out.append(previous)
        return torch.stack(out, dim=1)

    optimiser = torch.optim.Adam(parts, lr=3e-3)
    feats, target = inputs(X_fit), torch.tensor(y_fit, dtype=torch.float32)
    for _ in range(RNN_ITERS):
        optimiser.zero_grad()
        torch.mean((rollout(feats, target.shape[1]) - target) ** 2).backward()
        optimiser.step()
    with torch.no_grad():
        return rollout(inputs(X_new), target.shape[1]).numpy()


shown = np.arange(3)
rnn = None if QUICK else rnn_extrapolation(X_train[:300], y_train[:300], X_test[shown])

# %%
# Interpolation and extrapolation
# -------------------------------
# For three held-out spirals: in the plane (left) and each coordinate against time
# (right, with the ±2σ band of ``predict_trajectory(return_std=True)``).

times = np.concatenate([data.obs_times, data.target_times])
truth = np.concatenate([data.X_true[n_train:], data.y_true[n_train:]], axis=1)
fig, axes = plt.subplots(len(shown), 2, figsize=(11, 3.4 * len(shown)),
                         gridspec_kw={"width_ratios": [1, 1.6]})
for row, i in enumerate(shown):
    observed = ~np.isnan(X_test[i, :, 0])
    t0 = data.obs_times[observed][0]
    eval_times = times[times >= t0]
    mean, std = model.predict_trajectory(X_test[i : i + 1], eval_times, return_std=True)
    mean, std = mean[0], std[0]
    inside = eval_times <= data.obs_times[-1]
    plane, series = axes[row]
    plane.plot(*truth[i].T, color="0.7", lw=3, label="true trajectory")
    plane.plot(*mean[inside].T, color="C0", label="latent ODE, interpolation")
    plane.plot(*mean[~inside].T, color="C0", ls="--", label="latent ODE, extrapolation")
    if rnn is not None:
        plane.plot(*rnn[row].T, color="C3", ls=":", label="RNN, extrapolation")
    plane.scatter(*X_test[i, observed].T, s=12, color="k", zorder=3, label="observations")
    plane.set(xlabel="x", ylabel="y", title=f"held-out spiral {i}: the plane")
    plane.set_aspect("equal", "datalim")
    for channel, color in ((0, "C0"), (1, "C2")):
        name = "xy"[channel]
        series.plot(times, truth[i, :, channel], color="0.7", lw=3)
        series.plot(eval_times, mean[:, channel], color=color, label=f"latent ODE, {name}")
        series.fill_between(eval_times, mean[:, channel] - 2 * std[:, channel],
                            mean[:, channel] + 2 * std[:, channel], color=color, alpha=0.2)
        if rnn is not None:
            series.plot(data.target_times, rnn[row, :, channel], color="C3", ls=":")
        series.scatter(data.obs_times[observed], X_test[i, observed, channel], s=10,
                       color="k", zorder=3)
    series.axvline(data.obs_times[-1], color="k", lw=0.8, ls="--")
    series.set(xlabel="time", ylabel="value",
               title="x and y against time, ±2σ (dashed line: end of the observations)")
    series.legend(loc="upper left", fontsize=8)
axes[0, 0].legend(loc="lower left", fontsize=7)
fig.suptitle(f"Latent ODE on spirals observed at 30 irregular times ({BACKEND}; "
             f"test extrapolation RMSE {rmse:.3f})\n{MODEL}")
fig.tight_layout()
fig.savefig(args.output, dpi=110)
print(f"saved {args.output}")
