"""CNFDensity benchmark (issue #10): held-out log-likelihood against GaussianMixture,
KernelDensity and a hand-written torchdiffeq FFJORD loop; RNODE's regularisers; the cost
of the exact trace and of Hutchinson's as the dimension grows; digits in PCA-16.

    python tests/benchmarks/bench_density.py            # every part, writes docs/density.md
    python tests/benchmarks/bench_density.py --quick    # smoke run, writes nothing
    python tests/benchmarks/bench_density.py --only quality   # one part, keeps the others

Data are standardised with a StandardScaler fitted on the training split (2,000 train /
1,000 test points). Log-likelihoods are nats per sample of the standardised data; the
"true" row is the generator's own density on the same test points (the best achievable,
in expectation), computed by quadrature of the generator.
"""

from __future__ import annotations

import argparse
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
from scipy.special import logsumexp  # noqa: E402
from sklearn.datasets import load_digits, make_moons  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.model_selection import GridSearchCV, train_test_split  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from odeplug import CNFDensity  # noqa: E402

DOCS = _common.REPO / "docs" / "density.md"
RESULTS = _common.REPO / "docs" / "bench_density.json"
N_TRAIN, N_TEST = 2000, 1000
# What the estimator is scored with: tolerances tight enough that the log-density's
# solve error is far below the differences measured (the fit keeps its own).
SCORING = dict(rtol=1e-6, atol=1e-8)
# The CNF of every table: the estimator's defaults (field 64-64-64 tanh, learning rate
# 5e-3 divided by 5 on each plateau, up to 200 epochs, n_iter_no_change 20, RNODE weights
# 0.01), minibatches of 100.
CNF_SETTINGS = dict(batch_size=100)
CNF_DEFAULTS = ("hidden_layer_sizes=(64, 64, 64), learning_rate='adaptive', "
                "learning_rate_init=5e-3, max_iter=200, "
                "n_iter_no_change=20, kinetic_energy=0.01, jacobian_norm=0.01")


# ------------------------------------------------------------------------ data


def moons(n, seed):
    return make_moons(n, noise=0.05, random_state=seed)[0]


def moons_log_density(X, noise=0.05, n_t=4000):
    """make_moons' density: half the points on each arc (t evenly spaced on [0, pi]),
    plus N(0, noise^2 I); the arcs by quadrature."""
    t = (np.arange(n_t) + 0.5) * math.pi / n_t
    centres = np.concatenate([np.stack([np.cos(t), np.sin(t)], 1),
                              np.stack([1 - np.cos(t), 1 - np.sin(t) - 0.5], 1)])
    sq = ((X[:, None, :] - centres[None]) ** 2).sum(-1)
    return (logsumexp(-0.5 * sq / noise**2, axis=1) - math.log(len(centres))
            - math.log(2 * math.pi * noise**2))


def eight_gaussians(n, seed):
    """FFJORD's 8 Gaussians: std 0.5 around 8 points of a circle of radius 4, / 1.414."""
    rng = np.random.RandomState(seed)
    centres = _eight_centres()
    points = rng.randn(n, 2) * 0.5 + centres[rng.randint(8, size=n)] * 4.0
    return points / 1.414


def _eight_centres():
    s = 1 / math.sqrt(2)
    return np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])


def eight_gaussians_log_density(X):
    centres, std = _eight_centres() * 4.0 / 1.414, 0.5 / 1.414
    sq = ((X[:, None, :] - centres[None]) ** 2).sum(-1)
    return logsumexp(-0.5 * sq / std**2, axis=1) - math.log(8) - math.log(2 * math.pi * std**2)


def two_spirals(n, seed):
    """FFJORD's two spirals."""
    rng = np.random.RandomState(seed)
    m = np.sqrt(rng.rand(n // 2, 1)) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(m) * m + rng.rand(n // 2, 1) * 0.5
    d1y = np.sin(m) * m + rng.rand(n // 2, 1) * 0.5
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y)))) / 3
    return x + rng.randn(*x.shape) * 0.1


DATASETS = {
    "moons": (moons, moons_log_density),
    "8 Gaussians": (eight_gaussians, eight_gaussians_log_density),
    "two spirals": (two_spirals, None),  # uniform noise inside a Gaussian: no closed form
}


def split(name, seed):
    make, true = DATASETS[name]
    X_train, X_test = make(N_TRAIN, seed), make(N_TEST, seed + 1000)
    scaler = StandardScaler().fit(X_train)
    true_ll = None
    if true is not None:  # the density of the standardised data
        true_ll = float(np.mean(true(X_test)) + np.sum(np.log(scaler.scale_)))
    return scaler.transform(X_train), scaler.transform(X_test), true_ll


# -------------------------------------------------------------------- baselines


def gmm_bic(X_train, X_test, max_components=20):
    best = min((GaussianMixture(k, n_init=2, random_state=0).fit(X_train)
                for k in range(1, max_components + 1)), key=lambda g: g.bic(X_train))
    return float(best.score(X_test)), best.n_components


def kde_cv(X_train, X_test):
    search = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.7, 0, 24)}, cv=5)
    search.fit(X_train)
    return float(np.mean(search.best_estimator_.score_samples(X_test))), \
        float(search.best_params_["bandwidth"])


def fit_cnf(X_train, X_test, seed, **settings):
    params = {**CNF_SETTINGS, **settings}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = CNFDensity(backend=params.pop("backend", "jax"), random_state=seed,
                           **params).fit(X_train)
    fit_s = time.perf_counter() - start
    nfe = [f + (b or 0) for f, b in zip(model.curves_["nfe_forward"],
                                        model.curves_["nfe_backward"], strict=True)]
    ll = model.set_params(**SCORING).score(X_test)
    return {"ll": ll, "fit_s": fit_s, "nfe_per_step": statistics.mean(nfe),
            "nfe_forward": statistics.mean(model.curves_["nfe_forward"]),
            "epochs": model.n_iter_, "model": model}


# ----------------------------------------------------- hand-written torchdiffeq FFJORD


def hand_ffjord(X_train, X_test, seed, seconds, hidden=(64, 64), lr=5e-3, batch=100):
    """FFJORD's toy loop by hand: an MLP of [z, t], exact divergence by autograd,
    ``torchdiffeq.odeint_adjoint`` (dopri5, rtol 1e-3, atol 1e-5), Adam, minibatches of
    ``batch``; trained for ``seconds`` of wall clock, scored in float64 at the
    estimator's scoring tolerances."""
    import torch
    import torchdiffeq

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    d = X_train.shape[1]

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            sizes = (d + 1, *hidden, d)
            self.layers = torch.nn.ModuleList(
                torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True))

        def velocity(self, t, z):
            h = torch.cat([z, t.expand(z.shape[0], 1).to(z)], 1)
            for i, layer in enumerate(self.layers):
                h = layer(h)
                if i < len(self.layers) - 1:
                    h = torch.tanh(h)
            return h

        def forward(self, t, state):
            z, _ = state
            with torch.enable_grad():
                z = z.requires_grad_(True)
                f = self.velocity(t, z)
                div = sum(torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0][:, i]
                          for i in range(d))
            return f, div

    field = Field()
    opt = torch.optim.Adam(field.parameters(), lr=lr)
    data = torch.tensor(X_train, dtype=torch.float32)
    rng = np.random.RandomState(seed)
    times = torch.tensor([0.0, 1.0])

    def log_p(x, rtol, atol):
        z1, div = torchdiffeq.odeint_adjoint(field, (x, torch.zeros(len(x), dtype=x.dtype)),
                                             times.to(x.dtype), rtol=rtol, atol=atol,
                                             method="dopri5")
        z1, div = z1[-1], div[-1]
        return -0.5 * (z1**2).sum(1) - 0.5 * d * math.log(2 * math.pi) + div

    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        for idx in np.array_split(rng.permutation(len(data)), len(data) // batch):
            opt.zero_grad()
            loss = -log_p(data[idx], 1e-3, 1e-5).mean()
            loss.backward()
            opt.step()
            steps += 1
    fit_s = time.perf_counter() - start
    field.double()
    x = torch.tensor(X_test, dtype=torch.float64)
    ll = float(log_p(x, SCORING["rtol"], SCORING["atol"]).mean().detach())
    return {"ll": ll, "fit_s": fit_s, "steps": steps}


# ------------------------------------------------------------------------ parts


def quality(seeds, hand_seconds):
    rows = []
    for name in DATASETS:
        for seed in seeds:
            X_train, X_test, true_ll = split(name, seed)
            gmm, k = gmm_bic(X_train, X_test)
            kde, bandwidth = kde_cv(X_train, X_test)
            cnf = fit_cnf(X_train, X_test, seed)
            hand = hand_ffjord(X_train, X_test, seed, hand_seconds)
            row = {"data": name, "seed": seed, "true": true_ll, "gmm": gmm, "gmm_k": k,
                   "kde": kde, "kde_bandwidth": bandwidth, "cnf": cnf["ll"],
                   "cnf_fit_s": cnf["fit_s"], "cnf_epochs": cnf["epochs"],
                   "hand": hand["ll"], "hand_fit_s": hand["fit_s"], "hand_steps": hand["steps"]}
            rows.append(row)
            print(f"  {name:12s} seed {seed}: true {true_ll}, GMM({k}) {gmm:.3f}, "
                  f"KDE({bandwidth:.3f}) {kde:.3f}, CNF {cnf['ll']:.3f} in "
                  f"{cnf['fit_s']:.0f} s, hand {hand['ll']:.3f} in {hand['fit_s']:.0f} s",
                  flush=True)
    return rows


# The step-size schedules compared (part "schedule"): the defaults before the adaptive
# schedule (2e-3, constant), the schedule alone, the defaults, and twice the epochs.
SCHEDULES = (("constant, 2e-3 (the earlier defaults)",
              dict(learning_rate="constant", learning_rate_init=2e-3)),
             ("adaptive, 2e-3", dict(learning_rate_init=2e-3)),
             ("adaptive, 5e-3 (the defaults)", {}),
             ("adaptive, 5e-3, max_iter=400", dict(max_iter=400)))


def schedule(seeds):
    """Each schedule of :data:`SCHEDULES` on every data set, GMM and KDE on the same
    split in the same run."""
    rows = []
    for name in DATASETS:
        for seed in seeds:
            X_train, X_test, true_ll = split(name, seed)
            gmm, _ = gmm_bic(X_train, X_test)
            kde, _ = kde_cv(X_train, X_test)
            for label, settings in SCHEDULES:
                cnf = fit_cnf(X_train, X_test, seed, **settings)
                rows.append({"data": name, "seed": seed, "schedule": label, "ll": cnf["ll"],
                             "fit_s": cnf["fit_s"], "epochs": cnf["epochs"],
                             "gmm": gmm, "kde": kde, "true": true_ll})
                print(f"  {name:12s} seed {seed} {label}: {cnf['ll']:.3f} in "
                      f"{cnf['fit_s']:.0f} s, {cnf['epochs']} epochs (GMM {gmm:.3f}, KDE "
                      f"{kde:.3f})", flush=True)
    return rows


def rnode(seeds):
    rows = []
    for seed in seeds:
        X_train, X_test, true_ll = split("moons", seed)
        for label, weights in (("off", dict(kinetic_energy=0.0, jacobian_norm=0.0)),
                               ("on (0.01, 0.01)", dict(kinetic_energy=0.01,
                                                        jacobian_norm=0.01))):
            cnf = fit_cnf(X_train, X_test, seed, **weights)
            score_nfe = float(np.mean(cnf["model"].set_params(rtol=1e-3, atol=1e-5)
                                      .inference_stats(X_test)["nfe_forward"]))
            rows.append({"rnode": label, "seed": seed, "ll": cnf["ll"],
                         "fit_s": cnf["fit_s"], "nfe_per_step": cnf["nfe_per_step"],
                         "nfe_forward": cnf["nfe_forward"], "score_nfe": score_nfe,
                         "true": true_ll})
            print(f"  RNODE {label}: ll {cnf['ll']:.3f}, fit {cnf['fit_s']:.0f} s, NFE per "
                  f"step {cnf['nfe_per_step']:.1f}, scoring NFE {score_nfe:.1f}", flush=True)
    return rows


def dimension(dims, engines, repeats):
    """Seconds per training step (batch 200, dopri5 at the defaults, adjoint) of the
    exact trace and of Hutchinson's, from the same parameters; the NFE of each."""
    from odeplug import get_backend
    from odeplug._solver_options import make_solve_config
    from odeplug._specs import CNFHyper, CNFSpec, CNFTrainingSpec

    rows = []
    hyper = CNFHyper(solve=make_solve_config(rtol=1e-3, atol=1e-5, adjoint=True),
                     learning_rate=0.0)  # the same parameters at every repeat
    for engine in engines:
        backend = get_backend(engine)
        for d in dims:
            rng = np.random.RandomState(d)
            X = (rng.randn(200, d) @ rng.randn(d, d) / math.sqrt(d)).astype(np.float32)
            noise = (2 * rng.randint(0, 2, (200, d)) - 1).astype(np.float32)
            row = {"engine": engine, "d": d}
            for trace in ("exact", "hutchinson"):
                spec = CNFTrainingSpec(
                    CNFSpec(n_features=d, field_hidden=(64, 64), field_activation="tanh",
                            dtype=backend.default_dtype), trace=trace)
                program = backend.make_program(spec)
                state = program.init(spec.init_params(0))
                batch = (X,) if trace == "exact" else (X, noise)
                with backend.limit_threads(1):
                    state, metrics = program.step(state, batch, hyper)  # compiles on JAX
                    times = []
                    for _ in range(repeats):
                        start = time.perf_counter()
                        state, metrics = program.step(state, batch, hyper)
                        times.append(time.perf_counter() - start)
                row[trace] = statistics.median(times)
                row[trace + "_nfe"] = metrics["nfe_forward"] + (metrics["nfe_backward"] or 0)
            rows.append(row)
            print(f"  {engine} d={d}: exact {row['exact'] * 1e3:.0f} ms ({row['exact_nfe']} "
                  f"NFE), hutchinson {row['hutchinson'] * 1e3:.0f} ms "
                  f"({row['hutchinson_nfe']} NFE)", flush=True)
    return rows


def digits(seeds, max_iter):
    rows = []
    X = load_digits().data
    for seed in seeds:
        X_train, X_test = train_test_split(X, test_size=0.25, random_state=seed)
        pca = PCA(16, random_state=0).fit(X_train)
        scaler = StandardScaler().fit(pca.transform(X_train))
        X_train, X_test = (scaler.transform(pca.transform(a)) for a in (X_train, X_test))
        gmm, k = gmm_bic(X_train, X_test, max_components=12)
        kde, bandwidth = kde_cv(X_train, X_test)
        cnf = fit_cnf(X_train, X_test, seed, max_iter=max_iter)
        rows.append({"seed": seed, "gmm": gmm, "gmm_k": k, "kde": kde,
                     "kde_bandwidth": bandwidth, "cnf": cnf["ll"], "cnf_fit_s": cnf["fit_s"],
                     "cnf_epochs": cnf["epochs"]})
        print(f"  digits PCA-16 seed {seed}: GMM({k}) {gmm:.3f}, KDE {kde:.3f}, CNF "
              f"{cnf['ll']:.3f} in {cnf['fit_s']:.0f} s", flush=True)
    return rows


# ----------------------------------------------------------------------- report


def _median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(x, digits=3):
    return "-" if x is None else f"{x:.{digits}f}"


def report(parts: dict) -> str:
    lines = ["## CNFDensity", "",
             "`python tests/benchmarks/bench_density.py` (`--only PART` reruns one part). "
             "Each part says when it ran. The machine was shared with other jobs while it "
             "ran: times are wall clock under load.", ""]
    settings = ", ".join(f"{k}={v!r}" for k, v in CNF_SETTINGS.items())
    if "quality" in parts:
        rows = parts["quality"]["rows"]
        seeds = sorted({r["seed"] for r in rows})
        lines += ["### Held-out log-likelihood (nats per sample, standardised data)", "",
                  parts["quality"]["run"], "",
                  f"2,000 train / 1,000 test points, medians over seeds {seeds}. CNF: "
                  f"`CNFDensity(backend='jax', {settings})` (the defaults: {CNF_DEFAULTS}), "
                  f"scored with {SCORING}; "
                  "hand torchdiffeq: FFJORD's toy loop written by hand (exact divergence by "
                  "autograd, `odeint_adjoint`, dopri5 at 1e-3 / 1e-5, an MLP 64-64 tanh of "
                  "[z, t], Adam 5e-3, batch 100: the settings of the issue's ~150 s "
                  "reference run, not tuned further), trained for the wall-clock time "
                  "given, scored as the CNF. In brackets: the "
                  "distance from the true density's log-likelihood on the same points.", "",
                  "| model | " + " | ".join(DATASETS) + " |",
                  "|---|" + "---|" * len(DATASETS)]
        by = {name: [r for r in rows if r["data"] == name] for name in DATASETS}

        def cell(name, key):
            value, true = _median(by[name], key), _median(by[name], "true")
            if value is None:
                return "-"
            return _fmt(value) + ("" if true is None or key == "true"
                                  else f" ({value - true:+.3f})")

        for label, key in (("true density of the generator", "true"),
                           ("GaussianMixture (BIC)", "gmm"), ("KernelDensity (CV)", "kde"),
                           ("hand-written torchdiffeq CNF", "hand"),
                           ("**CNFDensity (jax)**", "cnf")):
            lines.append(f"| {label} | " + " | ".join(cell(n, key) for n in DATASETS) + " |")
        lines.append("| CNFDensity fit time (s, compilation included) | " + " | ".join(
            _fmt(_median(by[n], "cnf_fit_s"), 1) for n in DATASETS) + " |")
        lines.append("| hand loop training time (s) | " + " | ".join(
            _fmt(_median(by[n], "hand_fit_s"), 1) for n in DATASETS) + " |")
        lines.append("| GMM components chosen by BIC | " + " | ".join(
            str(_median(by[n], "gmm_k")) for n in DATASETS) + " |")
        lines += ["", "Targets:", ""]
        for name in ("moons", "two spirals"):
            c, g, k = (_median(by[name], key) for key in ("cnf", "gmm", "kde"))
            if c is not None:
                met = c > g and c > k
                lines.append(f"- beat GMM and KDE on {name}: CNF {c:.3f} vs GMM {g:.3f}, "
                             f"KDE {k:.3f}: **{'met' if met else 'not met'}**")
        c, g = _median(by["8 Gaussians"], "cnf"), _median(by["8 Gaussians"], "gmm")
        if c is not None:
            lines.append(f"- within 0.03 of GMM on 8 Gaussians: {c - g:+.3f}: "
                         f"**{'met' if c >= g - 0.03 else 'not met'}**")
        fits = [r["cnf_fit_s"] for r in rows]
        lines.append(f"- fit <= 60 s on jax, compilation included: longest {max(fits):.1f} "
                     f"s: **{'met' if max(fits) <= 60 else 'not met'}**")
        lines.append("")
    if "schedule" in parts:
        rows = parts["schedule"]["rows"]
        seeds = sorted({r["seed"] for r in rows})
        lines += ["### Step-size schedules", "", parts["schedule"]["run"], "",
                  f"The CNF above under each schedule, seeds {seeds} (medians), GMM and KDE "
                  "refitted on the same splits in the same run. Fit time includes the "
                  "compilation for the first fit of the process only.", "",
                  "| schedule | " + " | ".join(DATASETS) + " | fit (s) | epochs |",
                  "|---|" + "---|" * (len(DATASETS) + 2)]
        for label, _ in SCHEDULES:
            sub = [r for r in rows if r["schedule"] == label]
            cells = [_fmt(_median([r for r in sub if r["data"] == n], "ll")) for n in DATASETS]
            fits = "/".join(_fmt(_median([r for r in sub if r["data"] == n], "fit_s"), 0)
                            for n in DATASETS)
            epochs = "/".join(str(_median([r for r in sub if r["data"] == n], "epochs"))
                              for n in DATASETS)
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {fits} | {epochs} |")
        for label, key in (("GaussianMixture (BIC)", "gmm"), ("KernelDensity (CV)", "kde")):
            lines.append(f"| {label} | " + " | ".join(
                _fmt(_median([r for r in rows if r["data"] == n], key)) for n in DATASETS)
                + " | | |")
        lines.append("")
    if "rnode" in parts:
        rows = parts["rnode"]["rows"]
        lines += ["### RNODE's regularisers on moons (jax)", "", parts["rnode"]["run"], "",
                  "The CNF above with `kinetic_energy` and `jacobian_norm` both 0 (plain "
                  "FFJORD) and both 0.01 (RNODE), the same epochs. NFE per training step: "
                  "forward + backward (adjoint) evaluations per minibatch, mean over "
                  "epochs; scoring NFE: per test point at the training tolerances.", "",
                  "| regularisers | held-out LL | fit time (s) | NFE per step | "
                  "forward NFE per step | scoring NFE per point |", "|---|---|---|---|---|---|"]
        for label in dict.fromkeys(r["rnode"] for r in rows):
            sub = [r for r in rows if r["rnode"] == label]
            lines.append(f"| {label} | {_fmt(_median(sub, 'll'))} | "
                         f"{_fmt(_median(sub, 'fit_s'), 1)} | "
                         f"{_fmt(_median(sub, 'nfe_per_step'), 1)} | "
                         f"{_fmt(_median(sub, 'nfe_forward'), 1)} | "
                         f"{_fmt(_median(sub, 'score_nfe'), 1)} |")
        lines.append("")
    if "dimension" in parts:
        rows = parts["dimension"]["rows"]
        lines += ["### Training step time as the dimension grows", "",
                  parts["dimension"]["run"], "",
                  "One training step (batch 200, field 64-64 tanh, dopri5 at 1e-3 / 1e-5, "
                  "adjoint), median of repeats after a warm-up (compilation) step, the same "
                  "parameters each time (learning rate 0). An epoch of n samples is "
                  "n / 200 such steps. NFE: forward + backward evaluations of the step.", "",
                  "| engine | d | exact (ms) | Hutchinson (ms) | exact / Hutchinson | "
                  "NFE exact | NFE Hutchinson |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['engine']} | {r['d']} | {r['exact'] * 1e3:.0f} | "
                         f"{r['hutchinson'] * 1e3:.0f} | {r['exact'] / r['hutchinson']:.2f} | "
                         f"{r['exact_nfe']} | {r['hutchinson_nfe']} |")
        lines.append("")
    if "digits" in parts:
        rows = parts["digits"]["rows"]
        lines += ["### Digits in PCA-16", "", parts["digits"]["run"], "",
                  "`load_digits`, 75/25 split, PCA to 16 dimensions and standardised (fitted "
                  "on the training split). CNF as above (16 features: Hutchinson's trace "
                  "by `trace_estimator='auto'`), scored with the exact trace.", "",
                  "| model | held-out LL |", "|---|---|"]
        lines.append(f"| GaussianMixture (BIC, <= 12 components) | {_fmt(_median(rows, 'gmm'))} |")
        lines.append(f"| KernelDensity (CV) | {_fmt(_median(rows, 'kde'))} |")
        lines.append(f"| CNFDensity (jax) | {_fmt(_median(rows, 'cnf'))} "
                     f"(fit {_fmt(_median(rows, 'cnf_fit_s'), 0)} s) |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--only", choices=("quality", "schedule", "rnode", "dimension",
                                           "digits", "none"),
                        help="run one part (the others keep their saved results); 'none' "
                             "only rewrites the report")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per data set")
    parser.add_argument("--hand-seconds", type=float, default=150.0,
                        help="training time of the hand-written torchdiffeq loop")
    args = parser.parse_args()
    quick = args.quick
    if quick:
        CNF_SETTINGS.update(max_iter=1)
    seeds = list(range(args.seeds))
    parts = {}
    if args.only in (None, "quality"):
        print("quality:")
        parts["quality"] = quality(seeds, 5.0 if quick else args.hand_seconds)
    if args.only in (None, "schedule"):
        print("schedules:")
        parts["schedule"] = schedule(seeds)
    if args.only in (None, "rnode"):
        print("RNODE:")
        parts["rnode"] = rnode(seeds)
    if args.only in (None, "dimension"):
        print("dimension:")
        parts["dimension"] = dimension((2, 8) if quick else (2, 4, 8, 16, 32, 64),
                                       ("jax",) if quick else ("jax", "torch"),
                                       1 if quick else 5)
    if args.only in (None, "digits"):
        print("digits:")
        parts["digits"] = digits(seeds, 1 if quick else 100)
    run = _common.environment()
    parts = {key: {"run": run, "rows": rows} for key, rows in parts.items()}
    if not quick:
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        parts = {**saved, **parts}
        RESULTS.write_text(json.dumps(parts, indent=1))
    text = report(parts)
    print(text)
    if not quick:
        _common.write_section("density", text, path=DOCS)


if __name__ == "__main__":
    main()
