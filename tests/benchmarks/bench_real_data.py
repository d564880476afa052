"""Real-data suite (issue #22): CNFDensity and LatentODERegressor with their defaults
against scikit-learn's baselines, fitted in the same process, several seeds, medians.

    python tests/benchmarks/bench_real_data.py                 # both parts, writes docs/
    python tests/benchmarks/bench_real_data.py --quick         # smoke run, writes nothing
    python tests/benchmarks/bench_real_data.py --only density  # one part, keeps the other
    python tests/benchmarks/bench_real_data.py --only density --cnf '{"early_stopping": true}' \
        --output /tmp/variant.json                             # a variant of the defaults

Densities: scikit-learn's bundled real data (digits after PCA to 8, 16 and 32
dimensions, wine, iris, breast cancer), a 75 / 25 train / test split per seed, PCA and
StandardScaler fitted on the training split; held-out log-likelihood in nats per row of
the standardised data. ``GaussianMixture``: components 1-8 and covariance type (full,
diag) by BIC on the training split; ``KernelDensity``: Gaussian kernel,
bandwidth by 5-fold cross-validation on 30 values of ``logspace(-1.5, 0.5)``.
``CNFDensity``: its defaults on the jax engine (the fastest on CPU; the estimator's
default engine is ``reference``, measured by ``--only engine``).

Series: data sets shipped inside aeon's wheel (``pip install odeplug[benchmark]``; read
from the installed files, never from the network): JapaneseVowels (640 series of 7-29
steps, 12 channels, unequal lengths), ArrowHead (211 series of 251 steps, one channel,
every 4th step kept: 63 steps) and ItalyPowerDemand (1,096 daily series of 24 hourly
steps). At most ``--max-series`` series per data set (a seeded subset), 70 / 30 split per
seed. The last quarter of each series (rounded up) is forecast from the rest, in which
0 %, 30 % or 60 % of the values are hidden at random (per value and channel; the first
step of each series is kept, so none is empty). ``LatentODERegressor``: its defaults on
jax. ``Ridge`` (alpha by RidgeCV's efficient leave-one-out over ``logspace(-3, 3, 13)``,
after mean imputation and standardisation) and ``HistGradientBoostingRegressor``
(defaults, NaN-native), one model per forecast step and channel, given the same
information: the observed window right-aligned (the last observed step next to the
forecast), flattened over channels, and the series' length. RMSE over every held-out
target value, in the data's units; ±2σ coverage: the fraction of held-out targets
within ``mean ± 2 std`` of ``predict(return_std=True)``.

Fit times are wall clock and include JAX's compilation; the machine is shared (2 cores,
other jobs), so compare times within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (pins threads before numpy, torch or jax are imported)
import numpy as np  # noqa: E402
from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: E402
from sklearn.impute import SimpleImputer  # noqa: E402
from sklearn.linear_model import RidgeCV  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from odeplug import CNFDensity, LatentODERegressor  # noqa: E402
from odeplug.exceptions import TrainingDivergedError  # noqa: E402

DOCS = _common.REPO / "docs" / "real_data.md"
RESULTS = _common.REPO / "docs" / "bench_real_data.json"
SEEDS = (0, 1, 2)
HIDDEN = (0.0, 0.3, 0.6)
# What the CNF is scored with: tolerances tight enough that the solve's error is far
# below the differences measured (the fit keeps its own).
SCORING = dict(rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------ density data


def _digits(k):
    def load():
        return load_digits().data, k
    return load


# Cheapest first: a run cut short has the small data sets of every seed.
DENSITY_DATA = {
    "iris": lambda: (load_iris().data, None),
    "wine": lambda: (load_wine().data, None),
    "breast cancer": lambda: (load_breast_cancer().data, None),
    "digits PCA-8": _digits(8),
    "digits PCA-16": _digits(16),
    "digits PCA-32": _digits(32),
}


def density_split(name, seed):
    X, n_components = DENSITY_DATA[name]()
    X_train, X_test = train_test_split(X, test_size=0.25, random_state=seed)
    if n_components is not None:
        pca = PCA(n_components, random_state=0).fit(X_train)
        X_train, X_test = pca.transform(X_train), pca.transform(X_test)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test)


def gmm_bic(X_train, X_test):
    start = time.perf_counter()
    best = None
    for cov in ("full", "diag"):
        for k in range(1, 9):
            gmm = GaussianMixture(k, covariance_type=cov, n_init=1, reg_covar=1e-4,
                                  random_state=0).fit(X_train)
            bic = gmm.bic(X_train)
            if best is None or bic < best[0]:
                best = (bic, gmm)
    gmm = best[1]
    return {"ll": float(gmm.score(X_test)), "fit_s": time.perf_counter() - start,
            "k": gmm.n_components, "cov": gmm.covariance_type}


def kde_cv(X_train, X_test):
    start = time.perf_counter()
    search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.5, 0.5, 30)}, cv=5)
    search.fit(X_train)
    return {"ll": float(np.mean(search.best_estimator_.score_samples(X_test))),
            "fit_s": time.perf_counter() - start,
            "bandwidth": float(search.best_params_["bandwidth"])}


def fit_cnf(X_train, X_test, seed, params):
    params = {"backend": "jax", **params}
    start = time.perf_counter()
    row = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CNFDensity(random_state=seed, **params)
        try:
            model.fit(X_train)
        except TrainingDivergedError as error:
            row["diverged"] = f"epoch {error.epoch}: {str(error)[:200]}"
            if not hasattr(model, "params_"):
                return {**row, "ll": None, "fit_s": time.perf_counter() - start}
    row["fit_s"] = time.perf_counter() - start
    row["epochs"] = model.n_iter_
    try:
        row["ll"] = float(model.set_params(**SCORING).score(X_test))
    except Exception as error:  # a failed solve at scoring: reported, not hidden
        row["ll"], row["score_error"] = None, str(error)[:200]
    return row


def density_part(names, seeds, cnf_params, rows, save, baselines=True):
    """Seed by seed over every data set (a run cut short still covers every data set),
    saving after each row. ``baselines=False``: the CNF only (a variant, compared with
    the defaults' rows of the same seeds)."""
    none = {"ll": math.nan, "fit_s": math.nan, "k": None, "cov": None}
    for seed in seeds:
        for name in names:
            X_train, X_test = density_split(name, seed)
            gmm, kde = ((gmm_bic(X_train, X_test), kde_cv(X_train, X_test)) if baselines
                        else (none, none))
            cnf = fit_cnf(X_train, X_test, seed, cnf_params)
            rows.append({"data": name, "seed": seed, "shape": list(X_train.shape),
                         "gmm": gmm, "kde": kde, "cnf": cnf})
            print(f"  {name} seed {seed} {X_train.shape}: GMM({gmm['k']}, {gmm['cov']}) "
                  f"{gmm['ll']:.3f} [{gmm['fit_s']:.1f} s], KDE {kde['ll']:.3f} "
                  f"[{kde['fit_s']:.1f} s], CNF {_fmt(cnf['ll'])} [{cnf['fit_s']:.1f} s, "
                  f"{cnf.get('epochs')} epochs]{' DIVERGED' if 'diverged' in cnf else ''}",
                  flush=True)
            save()
    return rows


# ------------------------------------------------------------------- series data


def _aeon_file(name, split):
    """A data file of the installed aeon wheel, found without importing aeon (which
    pulls numba); the benchmark extra installs it."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("aeon is not installed: pip install 'odeplug[benchmark]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "datasets" / "data" / name / f"{name}_{split}.ts"


def load_ts(name):
    """Every series of a .ts data set (train and test files): a list of (length,
    channels) arrays."""
    series = []
    for split in ("TRAIN", "TEST"):
        in_data = False
        for line in _aeon_file(name, split).read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                in_data = line.lower() == "@data"
                continue
            channels = line.split(":")[:-1]  # the last field is the class label
            series.append(np.array([[float(v) for v in c.split(",")] for c in channels]).T)
    return series


# Cheapest first.
SERIES_DATA = {
    "ItalyPowerDemand": lambda: load_ts("ItalyPowerDemand"),
    "ArrowHead (every 4th step)": lambda: [s[::4] for s in load_ts("ArrowHead")],
    "JapaneseVowels": lambda: load_ts("JapaneseVowels"),
}


class SeriesTask:
    """One data set, one seed, one hidden fraction: the estimator's and the baselines'
    arrays of the same series."""

    def __init__(self, series, hidden, seed, max_series):
        rng = np.random.RandomState(seed)
        if len(series) > max_series:
            series = [series[i] for i in np.sort(rng.choice(len(series), max_series,
                                                            replace=False))]
        n, c = len(series), series[0].shape[1]
        lengths = np.array([len(s) for s in series])
        n_fore = np.ceil(lengths / 4).astype(int)
        n_obs = lengths - n_fore
        T, K = int(n_obs.max()), int(n_fore.max())
        self.equal = bool(np.all(lengths == lengths[0]))
        X = np.full((n, T, c), np.nan)
        y = np.full((n, K, c), np.nan)
        times = np.full((n, T), np.nan)
        target_times = np.full((n, K), np.nan)
        for i, s in enumerate(series):
            obs = s[: n_obs[i]].copy()
            hide = rng.rand(*obs.shape) < hidden
            hide[0] = False  # the first step stays: no series is empty
            obs[hide] = np.nan
            X[i, : n_obs[i]] = obs
            y[i, : n_fore[i]] = s[n_obs[i]:]
            times[i, : n_obs[i]] = np.arange(n_obs[i])
            target_times[i, : n_fore[i]] = np.arange(n_obs[i], lengths[i])
        self.X, self.y, self.times, self.target_times = X, y, times, target_times
        self.n_obs = n_obs
        self.train, self.test = train_test_split(np.arange(n), test_size=0.3,
                                                 random_state=seed)

    def latent_kwargs(self, rows):
        """The estimator's keywords: per-series times only where lengths differ."""
        if self.equal:
            return {}
        return {"times": self.times[rows], "target_times": self.target_times[rows]}

    def features(self, rows):
        """The baselines' inputs: the observed window right-aligned, flattened, and the
        window's length."""
        n, T, c = self.X[rows].shape
        out = np.full((n, T, c), np.nan)
        for j, i in enumerate(rows):
            out[j, T - self.n_obs[i]:] = self.X[i, : self.n_obs[i]]
        return np.concatenate([out.reshape(n, -1), self.n_obs[rows, None]], axis=1)


def fit_baselines(task):
    F_train, F_test = task.features(task.train), task.features(task.test)
    y_train, y_test = task.y[task.train], task.y[task.test]
    K, C = y_train.shape[1:]
    out = {}
    makers = {
        "ridge": lambda: make_pipeline(SimpleImputer(strategy="mean", keep_empty_features=True),
                                       StandardScaler(),
                                       RidgeCV(alphas=np.logspace(-3, 3, 13))),
        "hgb": lambda: HistGradientBoostingRegressor(random_state=0),
    }
    for name, make in makers.items():
        start = time.perf_counter()
        pred = np.full(y_test.shape, np.nan)
        for k in range(K):
            for ch in range(C):
                ok = ~np.isnan(y_train[:, k, ch])
                if ok.sum() < 2:
                    continue
                # Columns with fewer than two distinct observed values in these rows
                # (the left padding of the longest windows) carry nothing, and break
                # HGB's binning in scikit-learn 1.9.
                F = F_train[ok]
                cols = [j for j in range(F.shape[1])
                        if np.unique(F[~np.isnan(F[:, j]), j]).size > 1]
                model = make().fit(F[:, cols], y_train[ok, k, ch])
                pred[:, k, ch] = model.predict(F_test[:, cols])
        fit_s = time.perf_counter() - start
        out[name] = {"rmse": _rmse(pred, y_test), "fit_s": fit_s}
    return out


def fit_latent(task, seed, params):
    params = {"backend": "jax", **params}
    tr, te = task.train, task.test
    start = time.perf_counter()
    row = {}
    model = LatentODERegressor(random_state=seed, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(task.X[tr], task.y[tr], **task.latent_kwargs(tr))
        except TrainingDivergedError as error:
            row["diverged"] = f"epoch {error.epoch}: {str(error)[:300]}"
            if not hasattr(model, "params_"):
                return {**row, "rmse": None, "coverage": None,
                        "fit_s": time.perf_counter() - start}
    row["fit_s"] = time.perf_counter() - start
    row["epochs"] = model.n_iter_
    try:
        mean, std = model.predict(task.X[te], return_std=True, **task.latent_kwargs(te))
        mean, std = mean.reshape(task.y[te].shape), std.reshape(task.y[te].shape)
        y = task.y[te]
        ok = ~np.isnan(y)
        row["rmse"] = _rmse(mean, y)
        row["coverage"] = float(np.mean(np.abs(mean[ok] - y[ok]) <= 2 * std[ok]))
    except Exception as error:  # a failed solve at prediction: reported, not hidden
        row["rmse"] = row["coverage"] = None
        row["predict_error"] = str(error)[:300]
    return row


def _rmse(pred, y):
    ok = ~np.isnan(y)
    return float(np.sqrt(np.mean((pred[ok] - y[ok]) ** 2)))


def series_part(names, seeds, hidden, latent_params, max_series, rows, save):
    """Seed by seed, as :func:`density_part`."""
    loaded = {name: SERIES_DATA[name]() for name in names}
    for seed in seeds:
        for name in names:
            series = loaded[name]
            for h in hidden:
                task = SeriesTask(series, h, seed, max_series)
                base = fit_baselines(task)
                latent = fit_latent(task, seed, latent_params)
                rows.append({"data": name, "hidden": h, "seed": seed,
                             "n_series": int(len(task.X)), "channels": int(task.X.shape[2]),
                             "ridge": base["ridge"], "hgb": base["hgb"], "latent": latent})
                print(f"  {name} hidden {h:.0%} seed {seed}: Ridge {base['ridge']['rmse']:.3f} "
                      f"[{base['ridge']['fit_s']:.1f} s], HGB {base['hgb']['rmse']:.3f} "
                      f"[{base['hgb']['fit_s']:.1f} s], latent ODE {_fmt(latent['rmse'])} "
                      f"(coverage {_fmt(latent['coverage'], 2)}) [{latent['fit_s']:.1f} s, "
                      f"{latent.get('epochs')} epochs]"
                      f"{' DIVERGED ' + latent['diverged'][:80] if 'diverged' in latent else ''}",
                      flush=True)
                save()
    return rows


# ------------------------------------------------------------------- engines


ENGINE_EPOCHS = 20


def engine_part(seed=0):
    """The default engine (``reference``) against jax: one CNF fit on iris, the
    defaults but ``max_iter=ENGINE_EPOCHS`` (the same epochs on both engines)."""
    X_train, X_test = density_split("iris", seed)
    rows = {}
    for backend in ("jax", "reference"):
        row = fit_cnf(X_train, X_test, seed, {"backend": backend,
                                              "max_iter": ENGINE_EPOCHS})
        rows[backend] = row
        print(f"  iris CNF on {backend}: {row['fit_s']:.1f} s, {_fmt(row['ll'])}", flush=True)
    return rows


# ----------------------------------------------------------- model selection

GRID = {"hidden_layer_sizes": [(32, 32), (64, 64, 64)], "alpha": [1e-4, 1e-2]}


def gridsearch_part(seed=0):
    """The recipe of docs/real_data.md: GridSearchCV over CNFDensity's size and L2
    penalty, scored by held-out log-likelihood (``CNFDensity.score``), on wine."""
    X_train, X_test = density_split("wine", seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(CNFDensity(backend="jax", random_state=seed), GRID, cv=3)
        search.fit(X_train)
    fit_s = time.perf_counter() - start
    ll = float(search.best_estimator_.set_params(**SCORING).score(X_test))
    row = {"data": "wine", "grid": {k: [list(v) if isinstance(v, tuple) else v for v in vs]
                                    for k, vs in GRID.items()},
           "best_params": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in search.best_params_.items()},
           "cv_scores": [float(v) for v in search.cv_results_["mean_test_score"]],
           "fit_s": fit_s, "n_fits": 3 * len(search.cv_results_["params"]) + 1,
           "held_out_ll": ll}
    print(f"  GridSearchCV on wine: {row}", flush=True)
    return row


# ------------------------------------------------------------------- report


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def density_table(rows):
    lines = ["| data (train rows × dims) | seeds | GMM (BIC) | KDE (CV) | CNFDensity | "
             "CNF − best | GMM fit s | KDE fit s | CNF fit s (with compilation) | "
             "CNF epochs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["data"] for r in rows):
        rs = [r for r in rows if r["data"] == name]
        g, k, c = (_median([r[m]["ll"] for r in rs]) for m in ("gmm", "kde", "cnf"))
        gap = None if c is None else c - max(g, k)
        diverged = sum("diverged" in r["cnf"] for r in rs)
        shape = "×".join(str(s) for s in rs[0]["shape"])
        lines.append(
            f"| {name} ({shape}) | {len(rs)} | {_fmt(g)} | {_fmt(k)} | {_fmt(c)}"
            f"{f' ({diverged} diverged)' if diverged else ''} | {_fmt(gap)} | "
            f"{_fmt(_median([r['gmm']['fit_s'] for r in rs]), 1)} | "
            f"{_fmt(_median([r['kde']['fit_s'] for r in rs]), 1)} | "
            f"{_fmt(_median([r['cnf']['fit_s'] for r in rs]), 1)} | "
            f"{_fmt(_median([r['cnf'].get('epochs') for r in rs]), 0)} |")
    return "\n".join(lines)


def series_table(rows):
    lines = ["| data | hidden | seeds | Ridge | HGB | LatentODE | LatentODE − best | "
             "±2σ coverage | Ridge fit s | HGB fit s | LatentODE fit s (with compilation) | "
             "LatentODE epochs | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["data"] for r in rows):
        for h in dict.fromkeys(r["hidden"] for r in rows if r["data"] == name):
            rs = [r for r in rows if r["data"] == name and r["hidden"] == h]
            ri, hg, la = (_median([r[m]["rmse"] for r in rs]) for m in ("ridge", "hgb",
                                                                        "latent"))
            gap = None if la is None else la - min(ri, hg)
            diverged = sum("diverged" in r["latent"] for r in rs)
            lines.append(
                f"| {name} ({rs[0]['n_series']}×{rs[0]['channels']}ch) | {h:.0%} | {len(rs)} | "
                f"{_fmt(ri)} | "
                f"{_fmt(hg)} | {_fmt(la)} | {_fmt(gap)} | "
                f"{_fmt(_median([r['latent']['coverage'] for r in rs]), 2)} | "
                f"{_fmt(_median([r['ridge']['fit_s'] for r in rs]), 1)} | "
                f"{_fmt(_median([r['hgb']['fit_s'] for r in rs]), 1)} | "
                f"{_fmt(_median([r['latent']['fit_s'] for r in rs]), 1)} | "
                f"{_fmt(_median([r['latent'].get('epochs') for r in rs]), 0)} | "
                f"{diverged}/{len(rs)} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, two small data sets each, few epochs; writes nothing")
    parser.add_argument("--only", choices=("density", "series", "engine", "gridsearch"),
                        action="append")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--data", default=None, help="comma-separated data set names")
    parser.add_argument("--hidden", default=",".join(map(str, HIDDEN)))
    parser.add_argument("--max-series", type=int, default=300)
    parser.add_argument("--cnf", default="{}", help="JSON: CNFDensity parameters (a variant)")
    parser.add_argument("--latent", default="{}",
                        help="JSON: LatentODERegressor parameters (a variant)")
    parser.add_argument("--cnf-only", action="store_true",
                        help="density part without the baselines (for a variant)")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite docs/real_data.md's tables from the results file")
    parser.add_argument("--output", default=None,
                        help="JSON file for the results (default docs/bench_real_data.json, "
                             "which also rewrites docs/real_data.md's tables)")
    args = parser.parse_args()
    if args.report:
        return write_docs(json.loads(RESULTS.read_text()))
    # The jax engine, float32 (the estimators' default); _common pinned its threads.
    parts = args.only or ["density", "series"]
    seeds = [int(s) for s in args.seeds.split(",")]
    hidden = [float(h) for h in args.hidden.split(",")]
    cnf_params, latent_params = json.loads(args.cnf), json.loads(args.latent)
    wanted = None if args.data is None else args.data.split(",")
    if args.quick:
        seeds, hidden = seeds[:1], hidden[:2]
        cnf_params = {"max_iter": 5, **cnf_params}
        latent_params = {"max_iter": 5, **latent_params}
    output = Path(args.output) if args.output else RESULTS
    run = _common.environment()
    command = " ".join(["python tests/benchmarks/bench_real_data.py"] + sys.argv[1:])
    results = {}

    def save():
        """Merge this run's parts into the results file (another process may have
        written another part meanwhile): a run cut short keeps its rows."""
        if args.quick:
            return
        merged = json.loads(output.read_text()) if output.exists() else {}
        merged.update(results)
        output.write_text(json.dumps(merged, indent=1, default=float) + "\n")

    if "density" in parts:
        names = wanted or (["iris", "wine"] if args.quick else list(DENSITY_DATA))
        names = [n for n in names if n in DENSITY_DATA]
        results["density"] = {"run": run, "command": command, "params": cnf_params,
                              "rows": []}
        density_part(names, seeds, cnf_params, results["density"]["rows"], save,
                     baselines=not args.cnf_only)
        print(density_table(results["density"]["rows"]), flush=True)
    if "series" in parts:
        names = wanted or (["ItalyPowerDemand", "JapaneseVowels"] if args.quick
                           else list(SERIES_DATA))
        names = [n for n in names if n in SERIES_DATA]
        max_series = 60 if args.quick else args.max_series
        results["series"] = {"run": run, "command": command, "params": latent_params,
                             "max_series": max_series, "rows": []}
        series_part(names, seeds, hidden, latent_params, max_series,
                    results["series"]["rows"], save)
        print(series_table(results["series"]["rows"]), flush=True)
    if "engine" in parts:
        results["engine"] = {"run": run, "rows": engine_part()}
        save()
    if "gridsearch" in parts:
        results["gridsearch"] = {"run": run, "row": gridsearch_part()}
        save()
    if not args.quick and output == RESULTS:
        write_docs(json.loads(output.read_text()))


def write_docs(results):
    """The tables of docs/real_data.md, from the results file."""
    tables = []
    if "density" in results:
        tables += ["### Densities: held-out nats per row (medians over seeds)", "",
                   results["density"]["run"], "", f"`{results['density']['command']}`",
                   "", density_table(results["density"]["rows"]), ""]
    if "series" in results:
        tables += ["### Series: forecast RMSE (medians over seeds)", "",
                   results["series"]["run"], "", f"`{results['series']['command']}`", "",
                   series_table(results["series"]["rows"]), ""]
    if "engine" in results:
        e = results["engine"]["rows"]
        tables += ["### Default engine: one CNF fit on iris", "", results["engine"]["run"],
                   "", f"`CNFDensity(max_iter={ENGINE_EPOCHS})` otherwise the defaults, "
                   "seed 0, fit time with compilation.", "",
                   "| engine | fit s | held-out nats |", "|---|---|---|"]
        tables += [f"| {k} | {v['fit_s']:.1f} | {_fmt(v['ll'])} |" for k, v in e.items()]
        tables.append("")
    if "gridsearch" in results:
        g = results["gridsearch"]["row"]
        tables += ["### GridSearchCV recipe, timed", "", results["gridsearch"]["run"], "",
                   f"Wine, grid {g['grid']}, 3-fold: {g['n_fits']} fits in "
                   f"{g['fit_s']:.0f} s on jax (compilation included); best "
                   f"{g['best_params']}, held-out {g['held_out_ll']:.3f} nats per row; "
                   f"mean CV scores {[round(v, 3) for v in g['cv_scores']]}.", ""]
    _common.write_section("real-data-tables", "\n".join(tables), DOCS)
    print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
