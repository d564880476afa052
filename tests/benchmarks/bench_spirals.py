"""The latent ODE on the paper's spirals (Chen et al. 2018, Sec. 5.1, Table 2).

Data: :func:`odeplug.datasets.make_spirals` (torchdiffeq's generator: 1,000 spirals,
800 to train, 200 to test; N of the first 100 points of each window observed, the next
100 extrapolated). Error: the RMSE of the extrapolation against the noise-free
trajectory, per coordinate. Models, on the same split:

* ``latent``: ``LatentODERegressor`` (one fit, timed with JAX's compilation), its
  ±2σ coverage of the noisy held-out targets (``predict(return_std=True)``);
* ``rnn``, ``gru``: autoregressive baselines written here in torch (the paper's RNN
  takes the time gap since the last observation as an input): the network reads the
  100 slots of the observation window (value, mask, time since the last observation),
  then predicts the 100 targets one after the other, feeding its predictions back;
* ``hgb``: ``HistGradientBoostingRegressor`` (which handles NaN) on the flattened
  observations, one model per target coordinate.

Every model also on series with 30% and 60% of their observed values hidden by NaN
(``--hidden``). Results: ``docs/latent.md`` (the table between markers) and
``docs/bench_spirals.json``.

    python tests/benchmarks/bench_spirals.py                     # everything
    python tests/benchmarks/bench_spirals.py --quick             # small, minutes
    python tests/benchmarks/bench_spirals.py --only latent,hgb --n-observed 30 --hidden 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (pins threads before numpy, torch or jax are imported)
import numpy as np  # noqa: E402

from odeplug import LatentODERegressor  # noqa: E402
from odeplug.datasets import make_spirals  # noqa: E402

REPO = _common.REPO
MODELS = ("latent", "rnn", "gru", "hgb")
PAPER = {30: (0.164, 0.394), 50: (0.150, 0.320), 100: (0.135, 0.181)}


def hide(X, fraction, rng):
    """X with ``fraction`` of its observed values hidden by NaN (per value)."""
    X = X.copy()
    observed = np.argwhere(~np.isnan(X))
    chosen = rng.choice(len(observed), size=int(round(fraction * len(observed))),
                        replace=False)
    X[tuple(observed[chosen].T)] = np.nan
    # A series keeps one value at least.
    for i in np.flatnonzero(np.isnan(X).all(axis=(1, 2))):
        X[i, 0, 0] = 0.0 if np.isnan(X[i, 0, 0]) else X[i, 0, 0]
    return X


def latent_model(data, args):
    return LatentODERegressor(
        backend=args.backend, obs_times=data.obs_times, target_times=data.target_times,
        encoder=args.encoder, latent_dim=4, encoder_hidden_sizes=(25,),
        hidden_layer_sizes=(20,), decoder_hidden_sizes=(20,), kl_annealing=10,
        learning_rate=args.schedule, learning_rate_init=args.lr, batch_size=args.batch_size,
        max_iter=args.epochs, tol=0.0, n_iter_no_change=args.patience or args.epochs,
        random_state=0)


def fit_latent(data, X_train, y_train, X_test, args):
    model = latent_model(data, args)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X_train, y_train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    mean, std = model.predict(X_test, return_std=True)
    return mean, std, fit_s, time.perf_counter() - start, {
        "epochs": model.n_iter_, "final_loss": model.loss_curve_[-1],
        "noise_std": model.noise_std_.tolist(), "nfe_forward": model.nfe_["nfe_forward"]}


def fit_recurrent(kind, data, X_train, y_train, X_test, args):
    """The autoregressive RNN/GRU baseline (torch): fit with Adam, full batch."""
    torch = _common.setup_torch()
    torch.manual_seed(0)
    dt = float(data.obs_times[1] - data.obs_times[0])

    def inputs(X):
        mask = ~np.isnan(X)
        values = np.nan_to_num(X)
        since = np.zeros(X.shape[:2])
        last = np.full(X.shape[0], -1.0)
        for j in range(X.shape[1]):
            since[:, j] = np.where(last < 0, 0.0, (j - last) * dt)
            seen = mask[:, j].any(axis=1)
            last = np.where(seen, j, last)
        feats = np.concatenate([values, mask, since[..., None]], axis=2)
        return torch.tensor(feats, dtype=torch.float32)

    cell = torch.nn.GRU if kind == "gru" else torch.nn.RNN
    hidden = 64

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = cell(5, hidden, batch_first=True)
            step = torch.nn.GRUCell if kind == "gru" else torch.nn.RNNCell
            self.decoder = step(2, hidden)
            self.head = torch.nn.Linear(hidden, 2)

        def forward(self, feats, n_steps, targets=None):
            _, h = self.encoder(feats)
            h = h[0]
            # The last observed value of each series starts the rollout.
            previous = self.head(h)
            out = []
            for _ in range(n_steps):
                h = self.decoder(previous, h)
                previous = self.head(h)
                out.append(previous)
            return torch.stack(out, dim=1)

    model = Model()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_feats, target = inputs(X_train), torch.tensor(y_train, dtype=torch.float32)
    start = time.perf_counter()
    for _ in range(args.rnn_iters):
        optimiser.zero_grad()
        loss = torch.mean((model(train_feats, target.shape[1]) - target) ** 2)
        loss.backward()
        optimiser.step()
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        predicted = model(inputs(X_test), target.shape[1]).numpy()
    return predicted, None, fit_s, time.perf_counter() - start, {
        "iterations": args.rnn_iters, "final_mse": float(loss.detach())}


def fit_hgb(data, X_train, y_train, X_test, args):
    from sklearn.ensemble import HistGradientBoostingRegressor

    flat_train, flat_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    targets = y_train.reshape(len(y_train), -1)
    columns = range(0, targets.shape[1], args.hgb_every)
    predicted = np.full((len(X_test), targets.shape[1]), np.nan)
    start = time.perf_counter()
    for j in columns:
        model = HistGradientBoostingRegressor(max_iter=100, random_state=0)
        predicted[:, j] = model.fit(flat_train, targets[:, j]).predict(flat_test)
    fit_s = time.perf_counter() - start
    return predicted.reshape(X_test.shape[0], -1, 2), None, fit_s, 0.0, {
        "targets_fitted": len(columns), "of": targets.shape[1]}


def run(args):
    results = []
    for n_observed in args.n_observed:
        data = make_spirals(args.n_spirals, n_observed=n_observed, random_state=0)
        n_train = int(0.8 * args.n_spirals)
        for fraction in args.hidden:
            X = hide(data.X, fraction, np.random.default_rng(1)) if fraction else data.X
            X_train, X_test = X[:n_train], X[n_train:]
            y_train, y_test = data.y[:n_train], data.y[n_train:]
            truth = data.y_true[n_train:]
            for name in args.only:
                if name == "latent":
                    out = fit_latent(data, X_train, y_train, X_test, args)
                elif name in ("rnn", "gru"):
                    out = fit_recurrent(name, data, X_train, y_train, X_test, args)
                else:
                    out = fit_hgb(data, X_train, y_train, X_test, args)
                mean, std, fit_s, predict_s, info = out
                scored = ~np.isnan(mean)
                rmse = float(np.sqrt(np.mean((mean[scored] - truth[scored]) ** 2)))
                row = dict(model=name, n_observed=n_observed, hidden=fraction, rmse=rmse,
                           fit_s=fit_s, predict_s=predict_s, **info)
                if std is not None:
                    row["coverage_2sigma"] = float(np.mean(np.abs(y_test - mean) <= 2 * std))
                    row["mean_std"] = float(np.mean(std))
                print(json.dumps(row), flush=True)
                results.append(row)
    return results


def table(results, args) -> str:
    lines = ["| model | N | hidden | RMSE | ±2σ coverage | fit (s) | predict (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        coverage = f"{r['coverage_2sigma']:.3f}" if "coverage_2sigma" in r else "–"
        lines.append(f"| {r['model']} | {r['n_observed']} | {r['hidden']:.0%} | "
                     f"{r['rmse']:.3f} | {coverage} | {r['fit_s']:.1f} | "
                     f"{r['predict_s']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="200 spirals, 20 epochs, N=30 only, no hidden values")
    parser.add_argument("--only", default=",".join(MODELS),
                        help=f"comma-separated models among {MODELS}")
    parser.add_argument("--n-observed", default="30,50,100")
    parser.add_argument("--hidden", default="0,0.3,0.6")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--encoder", default="rnn")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--schedule", choices=("constant", "adaptive"), default="constant",
                        help="the latent model's learning_rate")
    parser.add_argument("--patience", type=int, default=None,
                        help="its n_iter_no_change (default: --epochs, which never fires)")
    parser.add_argument("--rnn-iters", type=int, default=500)
    parser.add_argument("--hgb-every", type=int, default=1,
                        help="fit every k-th target coordinate only (HGB is one model each)")
    parser.add_argument("--n-spirals", type=int, default=1000)
    parser.add_argument("--output", default=str(REPO / "docs" / "bench_spirals.json"))
    args = parser.parse_args()
    args.only = [m for m in args.only.split(",") if m]
    args.n_observed = [int(n) for n in args.n_observed.split(",")]
    args.hidden = [float(h) for h in args.hidden.split(",")]
    if args.quick:
        args.n_spirals, args.epochs, args.rnn_iters, args.hgb_every = 200, 20, 100, 20
        args.n_observed, args.hidden = [30], [0.0]
    results = run(args)
    print(table(results, args))
    with open(args.output, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results}, f,
                  indent=1)


if __name__ == "__main__":
    main()
