"""ODEClassifier benchmarks on scikit-learn's digits: accuracy, fit time against the loop
a user would write by hand, and memory of a training step as ``t1`` grows.

Run from the repository root (threads pinned to one per process; about 15 minutes)::

    python tests/benchmarks/bench_classifier.py           # full run, writes docs/benchmarks.md
    python tests/benchmarks/bench_classifier.py --quick   # smoke run, writes nothing

Tables:

1. Test accuracy of ``ODEClassifier()`` with default parameters, mean of 3 seeds, on each
   engine, next to scikit-learn baselines (target: >= 0.98).
2. Fit time of ``ODEClassifier`` against hand-written training loops with the same
   architecture, initial parameters, minibatches, solver, tolerances and epochs:
   torchdiffeq + ``torch.optim.Adam`` (eager) and diffrax + equinox + optax (the whole
   step under ``jax.jit``). Interleaved repeats, medians; compilation excluded from both
   sides and reported apart (target: ratio <= 1.05 on torch and on jax).
3. Memory of one training step with ``adjoint=True`` (and, for contrast, backprop) as
   ``t1`` grows, each case in a fresh process (target: flat with the adjoint).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (pins threads before numpy, torch or jax are imported)
import numpy as np  # noqa: E402

ENGINES = ("reference", "torch", "jax")
SEEDS = (0, 1, 2)
RESULTS = _common.REPO / "docs" / "bench_classifier.json"


def digits_split():
    """The example's split: stratified 75/25, ``random_state=0``, standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


# ------------------------------------------------------------------------ accuracy


def accuracy_table(seeds) -> list[dict]:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.svm import SVC

    import odeplug

    X_train, X_test, y_train, y_test = digits_split()
    rows = []
    candidates = [(f"ODEClassifier(backend={e!r})",
                   lambda s, e=e: odeplug.ODEClassifier(backend=e, random_state=s))
                  for e in ENGINES]
    candidates += [
        ("MLPClassifier((64,))", lambda s: MLPClassifier((64,), random_state=s, max_iter=500)),
        ("MLPClassifier((256,))", lambda s: MLPClassifier((256,), random_state=s, max_iter=500)),
        ("LogisticRegression", lambda s: LogisticRegression(max_iter=2000)),
        ("SVC", lambda s: SVC()),
    ]
    for name, make in candidates:
        scores, times = [], []
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                start = time.perf_counter()
                model = make(seed).fit(X_train, y_train)
                times.append(time.perf_counter() - start)
            scores.append(model.score(X_test, y_test))
        rows.append({"model": name, "scores": scores, "mean": float(np.mean(scores)),
                     "fit_s": float(np.median(times))})
        print(f"  {name:32s} mean {np.mean(scores):.4f}  {scores}  fit {np.median(times):.1f} s",
              flush=True)
    return rows


# ----------------------------------------------------------------- hand-written loops


def _hand_torch(params0, X, y, *, epochs, batch_size, alpha, lr, rtol, atol, order):
    """The loop a torchdiffeq user writes: nn.Modules, odeint_adjoint, torch.optim.Adam."""
    import torch
    from torch import nn
    from torchdiffeq import odeint_adjoint

    def linear(prefix):
        layer = nn.Linear(*params0[f"{prefix}.weight"].shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(params0[f"{prefix}.weight"].T))
            layer.bias.copy_(torch.from_numpy(params0[f"{prefix}.bias"]))
        return layer

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.out = linear("field.0"), linear("field.1")
            self.nfe = 0

        def forward(self, t, z):
            self.nfe += 1
            tz = torch.cat([z, t.expand(z.shape[0], 1)], dim=1)
            return self.out(torch.tanh(self.hidden(tz)))

    embed, field, head = linear("embed"), Field(), linear("head")
    modules = nn.ModuleList([embed, field, head])
    weights = [m.weight for m in (embed, field.hidden, field.out, head)]
    opt = torch.optim.Adam(modules.parameters(), lr=lr)
    X, y = torch.from_numpy(X), torch.from_numpy(y)
    times = torch.tensor([0.0, 1.0])
    nfe = []
    for epoch in range(epochs):
        for idx in order[epoch]:
            idx = torch.from_numpy(idx)
            field.nfe = 0
            z1 = odeint_adjoint(field, torch.relu(embed(X[idx])), times, rtol=rtol, atol=atol,
                                method="dopri5")[-1]
            loss = nn.functional.cross_entropy(head(z1), y[idx])
            loss = loss + 0.5 * alpha * sum((w**2).sum() for w in weights) / len(idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
            nfe.append(field.nfe)
    return float(np.mean(nfe))


@functools.lru_cache
def _hand_jax_loop(alpha, lr, rtol, atol):
    """The model and the jitted step a diffrax user writes (equinox modules, optax.adam),
    built once per script as a user's would be, so repeats reuse the compilation."""
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    class Linear(eqx.Module):
        weight: jax.Array
        bias: jax.Array

        def __call__(self, x):
            return x @ self.weight + self.bias

    class ODENet(eqx.Module):
        embed: Linear
        hidden: Linear
        out: Linear
        head: Linear

        def field(self, t, z, args):
            tz = jnp.concatenate([z, jnp.full((z.shape[0], 1), t, z.dtype)], axis=1)
            return self.out(jnp.tanh(self.hidden(tz)))

        def __call__(self, x):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(self.field), diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=None,
                y0=jax.nn.relu(self.embed(x)),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                adjoint=diffrax.BacksolveAdjoint())
            return self.head(sol.ys[-1]), sol.stats["num_steps"]

    optimizer = optax.adam(lr)

    def loss_fn(model, xb, yb):
        logits, n_steps = model(xb)
        data = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        weights = (model.embed.weight, model.hidden.weight, model.out.weight,
                   model.head.weight)
        return data + 0.5 * alpha * sum(jnp.sum(w**2) for w in weights) / len(yb), n_steps

    def raw_step(model, opt_state, xb, yb):
        (loss, n_steps), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            model, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, loss, n_steps

    step = eqx.filter_jit(raw_step)

    def build(params0):
        def linear(prefix):
            return Linear(jnp.asarray(params0[f"{prefix}.weight"]),
                          jnp.asarray(params0[f"{prefix}.bias"]))

        model = ODENet(linear("embed"), linear("field.0"), linear("field.1"), linear("head"))
        return model, optimizer.init(eqx.filter(model, eqx.is_array))

    return build, step, raw_step


def _hand_jax(params0, X, y, *, epochs, batch_size, alpha, lr, rtol, atol, order):
    """The training loop of a diffrax user."""
    import jax.numpy as jnp

    build, step, _ = _hand_jax_loop(alpha, lr, rtol, atol)
    model, opt_state = build(params0)
    X, y = jnp.asarray(X), jnp.asarray(y)
    n_steps = []
    for epoch in range(epochs):
        for idx in order[epoch]:
            model, opt_state, loss, steps = step(model, opt_state, X[idx], y[idx])
            n_steps.append(steps)
    loss.block_until_ready()
    # dopri5 in diffrax: 6 evaluations per step, plus the first (FSAL) and the 2 of
    # the initial step selection.
    return float(np.mean([6 * int(s) + 3 for s in n_steps]))


def _odeplug_fit(engine, X, y, *, epochs, seed):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    import odeplug

    clf = odeplug.ODEClassifier(backend=engine, max_iter=epochs, tol=0.0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return clf.nfe_["nfe_forward"]


def _hand_setup(X, y, epochs, seed):
    """The estimator's initial parameters and minibatches, for the hand loops."""
    import odeplug
    from odeplug._training import epoch_batches

    clf = odeplug.ODEClassifier(max_iter=epochs, random_state=seed)
    # The estimator's draws from random_state: the parameters' seed, then each epoch's
    # batches (all of one size: the last one filled up from the start of the epoch).
    rng = np.random.RandomState(seed)
    model_seed = int(rng.randint(np.iinfo(np.int32).max))
    spec = clf._spec_of(X.shape[1], 10, "float32")
    params0 = spec.init_params(model_seed)
    batch = min(200, len(X))
    order = [epoch_batches(len(X), batch, rng) for _ in range(epochs)]
    settings = dict(epochs=epochs, batch_size=batch, alpha=clf.alpha,
                    lr=clf.learning_rate_init, rtol=clf.rtol, atol=clf.atol, order=order)
    return params0, settings


def fit_time_table(epochs: int, repeats: int, seed: int = 0) -> list[dict]:
    X_train, _, y_train, _ = digits_split()
    X = X_train.astype(np.float32)
    y = y_train.astype(np.int64)
    params0, settings = _hand_setup(X, y, epochs, seed)

    cases = {
        "odeplug torch": lambda: _odeplug_fit("torch", X, y, epochs=epochs, seed=seed),
        "hand torchdiffeq": lambda: _hand_torch(params0, X, y, **settings),
        "odeplug jax": lambda: _odeplug_fit("jax", X, y, epochs=epochs, seed=seed),
        "hand diffrax": lambda: _hand_jax(params0, X, y, **settings),
    }
    # Compilation (both batch sizes) and first-call costs, apart: one epoch of each.
    warm = {}
    short = dict(settings, epochs=1)
    warmups = {
        "odeplug torch": lambda: _odeplug_fit("torch", X, y, epochs=1, seed=seed),
        "hand torchdiffeq": lambda: _hand_torch(params0, X, y, **short),
        "odeplug jax": lambda: _odeplug_fit("jax", X, y, epochs=1, seed=seed),
        "hand diffrax": lambda: _hand_jax(params0, X, y, **short),
    }
    for name, run in warmups.items():
        start = _common.CLOCK()
        run()
        warm[name] = _common.CLOCK() - start
    times = {name: [] for name in cases}
    nfe = {}
    for _ in range(repeats):  # interleaved, so that noise hits every side alike
        for name, run in cases.items():
            start = _common.CLOCK()
            nfe[name] = run()
            times[name].append(_common.CLOCK() - start)
    rows = []
    for name in cases:
        rows.append({"loop": name, "median_s": float(np.median(times[name])),
                     "times": times[name], "first_call_s": warm[name], "nfe": nfe[name]})
        print(f"  {name:18s} median {np.median(times[name]):7.2f} s  "
              f"{np.round(times[name], 2).tolist()}  first epoch {warm[name]:.1f} s  "
              f"NFE/batch {nfe[name]:.1f}", flush=True)
    return rows


# ------------------------------------------------------------------- end to end

# What a user waits for: a whole process (interpreter, imports, data, compilation, fit),
# each case in a fresh process, its JAX compilation cache folder either new (cold) or
# filled by an identical earlier process (warm).
E2E_EPOCHS = 30
GRID = {"learning_rate_init": (1e-3, 3e-3, 1e-2), "rtol": (1e-3, 1e-2, 1e-1)}
GRID_EPOCHS = 10

_E2E_CODE = """
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, {bench!r})
import _common  # pins threads
import bench_classifier as b
out = b.e2e_case({case!r}, {epochs})
out["process_s"] = time.perf_counter() - start
print("E2E " + json.dumps(out))
"""


def e2e_case(case: str, epochs: int) -> dict:
    """One end-to-end case, in this (fresh) process: ``odeplug`` or ``hand`` (a fit),
    ``odeplug-grid`` or ``hand-grid`` (3 x 3 learning rates and tolerances, one
    validation split, each point fitted and scored)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    X_train, X_val, y_train, y_val = digits_split()
    X, y = X_train.astype(np.float32), y_train.astype(np.int64)
    start = time.perf_counter()
    if case == "odeplug":
        import odeplug

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            odeplug.ODEClassifier(backend="jax", max_iter=epochs, tol=0.0,
                                  random_state=0).fit(X, y)
    elif case == "hand":
        params0, settings = _hand_setup(X, y, epochs, 0)
        _hand_jax(params0, X, y, **settings)
    elif case == "odeplug-grid":
        from odeplug_backends.jax import programs
        from sklearn.model_selection import GridSearchCV, PredefinedSplit

        import odeplug

        Xs = np.concatenate([X, X_val.astype(np.float32)])
        ys = np.concatenate([y, y_val])
        split = PredefinedSplit(np.r_[np.full(len(X), -1), np.zeros(len(X_val))])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            GridSearchCV(odeplug.ODEClassifier(backend="jax", max_iter=epochs, tol=0.0,
                                               random_state=0),
                         {k: list(v) for k, v in GRID.items()}, cv=split,
                         refit=False).fit(Xs, ys)
        return {"fit_s": time.perf_counter() - start,
                "traces": dict(programs.TRACE_COUNTS)}
    elif case == "hand-grid":
        params0, settings = _hand_setup(X, y, epochs, 0)
        for lr in GRID["learning_rate_init"]:
            for rtol in GRID["rtol"]:
                # A user's loop closes over its settings: each point is a new function.
                _hand_jax(params0, X, y, **dict(settings, lr=lr, rtol=rtol, atol=rtol / 10))
    elif case in ("odeplug-compile", "hand-compile"):
        return _compile_breakdown(case.split("-")[0], X, y)
    else:
        raise ValueError(case)
    return {"fit_s": time.perf_counter() - start}


def _compile_breakdown(side: str, X, y) -> dict:
    """Seconds of tracing, lowering and XLA compilation of one training step on a batch
    of 200 digits (``jax.jit(...).trace(...).lower().compile()``), in a fresh process."""
    import jax

    params0, settings = _hand_setup(X, y, 1, 0)
    xb, yb = X[settings["order"][0][0]], y[settings["order"][0][0]]
    if side == "odeplug":
        from odeplug_backends.jax import odenet, programs

        from odeplug import ODEClassifier

        clf = ODEClassifier(backend="jax", random_state=0)
        spec = clf._spec_of(X.shape[1], 10, "float32")
        hyper = clf._hyper()
        program = odenet.ODENetProgram(spec)
        state = program.init(params0)
        fn = odenet._train_step(spec, programs.solve_key(hyper.solve))
        args = (state["params"], state["opt"], xb, yb.astype(np.int32),
                programs.traced_values(hyper, np.float32),
                programs.solve_values(hyper.solve, np.float32))
    else:
        import equinox as eqx

        build, _, raw_step = _hand_jax_loop(settings["alpha"], settings["lr"],
                                            settings["rtol"], settings["atol"])
        model, opt_state = build(params0)
        # What eqx.filter_jit compiles, as a jax.jit: trace, lower and compile apart.
        params, static = eqx.partition(model, eqx.is_array)
        fn = jax.jit(lambda p, o, a, b: raw_step(eqx.combine(p, static), o, a, b))
        args = (params, opt_state, xb, yb)
    times = {}
    start = time.perf_counter()
    traced = fn.trace(*args)
    times["trace_s"] = time.perf_counter() - start
    start = time.perf_counter()
    lowered = traced.lower()
    times["lower_s"] = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    times["compile_s"] = time.perf_counter() - start
    return {"fit_s": sum(times.values()), **times}


def _e2e_run(case: str, epochs: int, cache: str | None) -> dict:
    import os

    env = dict(os.environ)
    env["ODEPLUG_JAX_CACHE_DIR"] = cache or ""
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache  # the hand loop's user turns it on too
    else:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    code = _E2E_CODE.format(bench=str(Path(__file__).resolve().parent), case=case,
                            epochs=epochs)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=_common.REPO, check=True)
    wall = time.perf_counter() - start
    line = next(x for x in out.stdout.splitlines() if x.startswith("E2E "))
    return {**json.loads(line[4:]), "wall_s": wall}


def e2e_table(repeats: int, epochs: int = E2E_EPOCHS, grid_epochs: int = GRID_EPOCHS
              ) -> list[dict]:
    """Fresh processes, interleaved odeplug / hand; cold (a new cache folder each run),
    then warm (a folder filled by the cold run of the same case)."""
    import tempfile

    rows = []
    for pair in (("odeplug-compile", "hand-compile"),):
        parts = {case: [_e2e_run(case, 1, None) for _ in range(repeats)] for case in pair}
        row = {"what": "one step: trace / lower / XLA compile", "cache": "cold"}
        for case, runs in parts.items():
            side = case.split("-")[0]
            for key in ("trace_s", "lower_s", "compile_s"):
                row[f"{side}_{key}"] = float(np.median([r[key] for r in runs]))
        rows.append(row)
        print(f"  compile breakdown: {row}", flush=True)
    for label, pair, n_epochs in (("first fit, 30 epochs", ("odeplug", "hand"), epochs),
                                  ("3 x 3 grid, 10 epochs", ("odeplug-grid", "hand-grid"),
                                   grid_epochs)):
        for warm in (False, True):
            samples = {case: [] for case in pair}
            details = {}
            for _ in range(repeats):
                for case in pair:
                    with tempfile.TemporaryDirectory() as cache:
                        if warm:
                            _e2e_run(case, n_epochs, cache)
                        result = _e2e_run(case, n_epochs, cache)
                    samples[case].append(result["wall_s"])
                    details[case] = result
            row = {"what": label, "cache": "warm" if warm else "cold",
                   "odeplug_s": samples[pair[0]], "hand_s": samples[pair[1]],
                   "ratio": _common.paired_ratio(samples[pair[0]], samples[pair[1]]),
                   "odeplug_fit_s": details[pair[0]]["fit_s"],
                   "hand_fit_s": details[pair[1]]["fit_s"],
                   "traces": details[pair[0]].get("traces")}
            rows.append(row)
            print(f"  {label:22s} {row['cache']}: odeplug {np.median(row['odeplug_s']):6.1f} s"
                  f"  hand {np.median(row['hand_s']):6.1f} s  ratio {row['ratio']:.3f}"
                  f"  traces {row['traces']}", flush=True)
    return rows


# ------------------------------------------------------------------------- memory


def memory_case(engine: str, t1: float, adjoint: bool) -> dict:
    """Peak memory of one training step of the default architecture on 200 digits, in
    this (fresh) process, after a warm-up step (compilation, lazy initialisation).

    reference: tracemalloc (NumPy reports its buffers). torch: bytes in use by malloc,
    sampled at every evaluation of the vector field, forward and backward. jax: XLA's
    temporary buffers of the compiled step (``memory_analysis``), fixed at compile time.
    """
    import odeplug

    X_train, _, y_train, _ = digits_split()
    clf = odeplug.ODEClassifier(backend=engine, t1=t1, adjoint=adjoint, random_state=0)
    backend = odeplug.backend.get_backend(engine)
    X = X_train[:200].astype(backend.default_dtype)
    y = y_train[:200].astype(np.int64)
    spec = clf._spec(X.shape[1], 10, backend.default_dtype)
    params = spec.init_params(0)

    def fresh_step():
        program = backend.make_program(spec)
        state = program.init(params, 0)
        return program, lambda: program.step(state, (X, y))

    program, step = fresh_step()
    step()  # warm-up
    program, step = fresh_step()
    if engine == "reference":
        measured = _common.peak_memory(engine, step, method="tracemalloc")
    elif engine == "torch":
        sampler = _common.MallocSampler()
        field = program.field

        def sampled_field(t, z, field_params):
            sampler.sample()
            return field(t, z, field_params)

        program.field = sampled_field
        measured = _common.peak_memory(engine, step, method="malloc", sampler=sampler)
    else:
        from odeplug_backends.jax import programs as models

        state = program.init(params, 0)
        compiled = models._train_step(spec).lower(
            state["params"], state["opt"], X.astype(spec.dtype), y.astype(np.int32)).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        measured = {"result": step(), "peak_mib": temp / 2**20,
                    "method": "XLA temp buffers of the compiled step"}
    _, metrics = measured["result"]
    return {"engine": engine, "t1": t1, "adjoint": adjoint, "peak_mib": measured["peak_mib"],
            "method": measured["method"], "nfe_forward": metrics["nfe_forward"],
            "nfe_backward": metrics["nfe_backward"]}


def memory_table(t1s, engines) -> list[dict]:
    rows = []
    for engine in engines:
        for adjoint in (True, False):
            for t1 in t1s:
                out = subprocess.run(
                    [sys.executable, __file__, "--memory-case", engine, str(t1),
                     str(int(adjoint))], capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"  {engine:9s} adjoint={adjoint!s:5s} t1={t1:4g}  "
                      f"peak {row['peak_mib']:8.2f} MiB ({row['method']})  "
                      f"NFE fwd {row['nfe_forward']}", flush=True)
    return rows


# ------------------------------------------------------------------------- report


def report(parts: dict) -> str:
    """The markdown section; ``parts`` maps "accuracy", "fits", "memory" to the
    ``{"run": environment line, "rows": [...]}`` of the run that measured each."""
    lines = ["## ODEClassifier on digits", "",
             "`python tests/benchmarks/bench_classifier.py`: stratified 75/25 split of "
             "`load_digits` (`random_state=0`), standardised; one thread per process. "
             "Each part below says when it was run (`--only` reruns one part).", ""]
    accuracy, fits, memory, e2e = (parts.get(k, {}).get("rows") for k in
                                   ("accuracy", "fits", "memory", "e2e"))
    if accuracy:
        lines += ["### Test accuracy, default parameters, mean of seeds "
                  f"{', '.join(map(str, SEEDS))}", "", parts["accuracy"]["run"], "",
                  "| model | mean accuracy | per seed | fit time (median, wall clock) |",
                  "|---|---|---|---|"]
        for row in accuracy:
            lines.append(f"| {row['model']} | {row['mean']:.4f} | "
                         f"{', '.join(f'{s:.4f}' for s in row['scores'])} | "
                         f"{row['fit_s']:.1f} s |")
        odes = [r for r in accuracy if r["model"].startswith("ODEClassifier")]
        met = all(r["mean"] >= 0.98 for r in odes)
        lines += ["", f"Target >= 0.98 on every engine: **{'met' if met else 'not met'}**.", ""]
    if e2e:
        lines += ["### End to end: what a user waits for (JAX engine)", "",
                  parts["e2e"]["run"], "",
                  "Each case is a whole fresh process (`python -c`: interpreter, imports, "
                  "data, tracing, compilation, fit), wall clock, median of repeats, "
                  "odeplug and the hand-written diffrax + equinox + optax loop "
                  "(`BacksolveAdjoint`, the same architecture, initial parameters and "
                  "minibatches) interleaved; ratio: the median of paired ratios. *cold*: a "
                  "new, empty JAX compilation cache folder; *warm*: the folder an identical "
                  "earlier process filled (odeplug turns its cache on by default; the hand "
                  "loop's user is given `JAX_COMPILATION_CACHE_DIR` too). The grid is 3 "
                  "learning rates x 3 `rtol` (atol = rtol / 10), each point fitted once on "
                  "the training split: `GridSearchCV` with one predefined validation split "
                  "and `refit=False` against the hand loop run 9 times (which recompiles "
                  "for every point, its settings being constants of its jitted step; its "
                  "scoring is left out, odeplug's is included).", "",
                  "| what | cache | odeplug (s) | hand loop (s) | ratio | target | "
                  "odeplug's compilations |", "|---|---|---|---|---|---|---|"]
        breakdown = [r for r in e2e if "odeplug_trace_s" in r]
        for row in (r for r in e2e if "odeplug_trace_s" not in r):
            traces = row["traces"] or {}
            lines.append(f"| {row['what']} | {row['cache']} | "
                         f"{np.median(row['odeplug_s']):.1f} | {np.median(row['hand_s']):.1f} "
                         f"| **{row['ratio']:.3f}** | <= 1.0 | "
                         f"{', '.join(f'{k} {v}' for k, v in sorted(traces.items())) or '-'} |")
        lines.append("")
        for row in breakdown:
            lines += ["Where a first training step's time goes (one batch of 200 digits, "
                      "a fresh process each, median of repeats): "
                      "`jax.jit(step).trace(...)`, `.lower()`, `.compile()` (XLA).", "",
                      "| loop | tracing (s) | lowering (s) | XLA compilation (s) |",
                      "|---|---|---|---|"]
            for side in ("odeplug", "hand"):
                lines.append(f"| {side} | {row[side + '_trace_s']:.2f} | "
                             f"{row[side + '_lower_s']:.2f} | {row[side + '_compile_s']:.2f} |")
            lines.append("")
    if fits:
        by = {r["loop"]: r for r in fits}
        lines += ["### Fit time against hand-written loops", "", parts["fits"]["run"], "",
                  "Same architecture, initial parameters, minibatches, dopri5 with the "
                  "estimator's tolerances, adjoint, Adam, same epochs (10); CPU time "
                  "(process_time: the machine is shared), median of interleaved repeats, "
                  "first epoch (compilation) apart. Ratios: the median over repeats of the "
                  "ratio within a repeat (paired samples see the same drift of the "
                  "machine's speed).", "",
                  "| loop | median fit | first epoch | NFE per batch |", "|---|---|---|---|"]
        for row in fits:
            lines.append(f"| {row['loop']} | {row['median_s']:.2f} s | "
                         f"{row['first_call_s']:.1f} s | {row['nfe']:.1f} |")
        ratios = [("odeplug torch / hand torchdiffeq", "odeplug torch", "hand torchdiffeq"),
                  ("odeplug jax / hand diffrax", "odeplug jax", "hand diffrax"),
                  ("odeplug jax / hand torchdiffeq", "odeplug jax", "hand torchdiffeq")]
        lines += ["", "NFE per batch: odeplug's forward count (its backward count is in "
                  "`nfe_`); the hand torchdiffeq loop counts every call of its module, "
                  "forward and the adjoint's backward solve; the hand diffrax loop uses "
                  "diffrax's stock `PIDController` (its own initial step and exponent), "
                  "so it takes slightly different steps than odeplug's controller, "
                  "which follows the reference engine's.", "",
                  "| ratio | value | target |", "|---|---|---|"]
        for label, a, b in ratios:
            value = _common.paired_ratio(by[a]["times"], by[b]["times"])
            target = "<= 1.05" if "jax / hand torchdiffeq" not in label else "(context)"
            lines.append(f"| {label} | {value:.3f} | {target} |")
        lines.append("")
    if memory:
        lines += ["### Memory of one training step as t1 grows", "", parts["memory"]["run"],
                  "",
                  "Batch of 200 digits, default architecture, each case in a fresh process "
                  "after a warm-up step. reference: `tracemalloc` (NumPy reports its "
                  "buffers); torch: bytes in use by `malloc` (`mallinfo2`) sampled at every "
                  "evaluation of the vector field, forward and backward; jax: XLA's "
                  "temporary buffers of the compiled step (`memory_analysis`), which XLA "
                  "sizes at compile time: flat in t1 by construction, for backprop too "
                  "(diffrax's `RecursiveCheckpointAdjoint` checkpoints a number of steps set "
                  "by `max_num_steps` and recomputes the rest).", "",
                  "| engine | gradient | t1 | peak MiB | NFE forward | NFE backward | method |",
                  "|---|---|---|---|---|---|---|"]
        for row in memory:
            lines.append(f"| {row['engine']} | {'adjoint' if row['adjoint'] else 'backprop'} "
                         f"| {row['t1']:g} | {row['peak_mib']:.2f} | {row['nfe_forward']} | "
                         f"{row['nfe_backward']} | {row['method']} |")
        lines.append("")
        for engine in sorted({r["engine"] for r in memory}):
            adj = {r["t1"]: r["peak_mib"] for r in memory
                   if r["engine"] == engine and r["adjoint"]}
            lo, hi = adj[min(adj)], adj[max(adj)]
            flat = hi <= 1.10 * lo
            lines.append(f"- {engine}: adjoint t1={max(adj):g} / t1={min(adj):g} = "
                         f"{hi / lo:.2f} ({'flat' if flat else 'NOT flat'})")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--only", choices=("accuracy", "fit", "e2e", "memory", "none"),
                        help="run one part (the others keep their saved results); "
                             "'none' only rewrites the report from them")
    parser.add_argument("--memory-case", nargs=3, metavar=("ENGINE", "T1", "ADJOINT"))
    args = parser.parse_args()
    if args.memory_case:
        engine, t1, adjoint = args.memory_case
        print(json.dumps(memory_case(engine, float(t1), bool(int(adjoint)))))
        return

    quick = args.quick
    accuracy = fits = memory = e2e = None
    if args.only in (None, "accuracy"):
        print("accuracy:")
        accuracy = accuracy_table(SEEDS[:1] if quick else SEEDS)
    if args.only in (None, "fit"):
        print("fit time:")
        fits = fit_time_table(epochs=2 if quick else 10, repeats=1 if quick else 5)
    if args.only in (None, "e2e"):
        print("end to end:")
        e2e = e2e_table(repeats=1 if quick else 3, epochs=2 if quick else E2E_EPOCHS,
                        grid_epochs=1 if quick else GRID_EPOCHS)
    if args.only in (None, "memory"):
        print("memory:")
        memory = memory_table((1.0, 10.0) if quick else (1.0, 10.0, 50.0), ENGINES)
    run = _common.environment()
    parts = {key: {"run": run, "rows": rows}
             for key, rows in (("accuracy", accuracy), ("fits", fits), ("memory", memory),
                               ("e2e", e2e))
             if rows is not None}
    if not quick:
        # Each part's last results and run, so that --only reruns one and keeps the others.
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        parts = {**saved, **parts}
        RESULTS.write_text(json.dumps(parts, indent=1))
    text = report(parts)
    print(text)
    if not quick:
        _common.write_section("classifier", text)


if __name__ == "__main__":
    main()
