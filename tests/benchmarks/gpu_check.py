"""GPU check: fit every odeplug estimator on a GPU with torch and jax, compare with the
same fit on the CPU, and time both.

Run from the repository root on a machine with an NVIDIA GPU (a few minutes)::

    python tests/benchmarks/gpu_check.py            # writes docs/gpu_check.json and the
                                                    # "gpu-check" section of docs/gpus.md
    python tests/benchmarks/gpu_check.py --quick    # smaller fits, writes nothing
    python tests/benchmarks/gpu_check.py --overhead # any machine: the cost of the CPU
                                                    # device scope on a training step,
                                                    # writes the "device-overhead" section
    python tests/benchmarks/gpu_check.py --quick --simulate   # the script's own check
                                                    # where there is no GPU: "cuda" fits
                                                    # replaced by device="auto" (the CPU)

For each estimator that this odeplug has (``ODEClassifier``; ``CNFDensity`` and
``LatentODERegressor`` where they exist) and each of the torch and jax engines that
sees a GPU, the same estimator (same ``random_state``) is fitted with ``device="cpu"`` and
with ``device="cuda"``. Reported: fit and predict wall times of each (the first fit on
each engine and device includes JAX's compilation and CUDA's start-up, so each fit is run
twice and the second is timed), the largest difference of the loss curves and of the
predictions between the two, and the predictions of the GPU-fitted model computed on the
CPU (what a CPU-only machine does with it). Where jax sees several GPUs, one more row
compares a data-parallel fit with a fit on one GPU (``data_parallel=False``); with
``--simulate`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, the same over
two CPU devices.

An engine without a GPU, or an estimator that fails, gives a row saying why; nothing is
estimated. Threads are pinned to one per process (``_common``), as in every benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Each JAX process would otherwise reserve 75% of the GPU's memory up front, leaving
# little for torch in the same process.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import _common  # noqa: E402  (pins threads before numpy, torch or jax are imported)
import numpy as np  # noqa: E402

ENGINES = ("torch", "jax")
RESULTS = _common.REPO / "docs" / "gpu_check.json"
DOC = _common.REPO / "docs" / "gpus.md"


# ------------------------------------------------------------------- the problems


def classifier_problem(quick: bool):
    """Digits, standardised: the documented benchmark problem, smaller."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    n = 300 if quick else 1000
    params = dict(hidden_layer_sizes=(32,), latent_dim=32, max_iter=3 if quick else 10,
                  batch_size=100, learning_rate_init=0.01, random_state=0)

    def fit(estimator):
        return estimator.fit(X[:n], y[:n])

    def output(estimator):
        return estimator.predict_proba(X[n : n + 300])

    return params, fit, output


def density_problem(quick: bool):
    from sklearn.datasets import make_moons

    X, _ = make_moons(400 if quick else 1000, noise=0.05, random_state=0)
    params = dict(max_iter=3 if quick else 10, batch_size=100, random_state=0)

    def fit(estimator):
        return estimator.fit(X)

    def output(estimator):
        return estimator.score_samples(X[:200])

    return params, fit, output


def latent_problem(quick: bool):
    t = np.linspace(0, 3, 12)
    phase = np.random.default_rng(0).uniform(0, 3, 200 if quick else 600)
    X = np.sin(t + phase[:, None])
    y = np.sin(3.5 + phase)
    params = dict(obs_times=t, target_times=[3.5], latent_dim=4, max_iter=3 if quick else 10,
                  batch_size=100, random_state=0)

    def fit(estimator):
        return estimator.fit(X, y)

    def output(estimator):
        return estimator.predict(X[:200])

    return params, fit, output


PROBLEMS = {
    "ODEClassifier": classifier_problem,
    "CNFDensity": density_problem,
    "LatentODERegressor": latent_problem,
}


# ----------------------------------------------------------------------- checking


def timed(fn):
    start = time.perf_counter()
    result = fn()  # results come back as NumPy: the GPU's work is done when it returns
    return result, time.perf_counter() - start


def fit_on(cls, params, fit, output, engine: str, device: str, **config):
    import odeplug

    with odeplug.config_context(**config):
        output(fit(cls(backend=engine, device=device, **params)))  # compilation, CUDA
        estimator, fit_s = timed(lambda: fit(cls(backend=engine, device=device, **params)))
        out, predict_s = timed(lambda: output(estimator))
    return estimator, np.asarray(out, dtype=np.float64), fit_s, predict_s


def max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check(name: str, engine: str, quick: bool, simulate: bool = False) -> list[dict]:
    import warnings

    import odeplug

    row = {"estimator": name, "engine": engine}
    cls = getattr(odeplug, name)
    info = odeplug.available_backends().get(engine)
    if info is None or not info.available:
        return [{**row, "status": f"skipped: the {engine} engine is not installed"}]
    missing = odeplug.get_backend(engine).gpu_missing()
    if missing is not None and not simulate:
        return [{**row, "status": f"skipped: no GPU ({missing})"}]
    gpu_device = "auto" if simulate else "cuda"
    params, fit, output = PROBLEMS[name](quick)
    rows = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cpu, cpu_out, cpu_fit, cpu_predict = fit_on(cls, params, fit, output, engine, "cpu")
            gpu, gpu_out, gpu_fit, gpu_predict = fit_on(cls, params, fit, output, engine,
                                                        gpu_device)
            gpu.set_params(device="cpu")
            moved = np.asarray(output(gpu), dtype=np.float64)
        rows.append({
            **row, "status": "ok", "epochs": len(cpu.loss_curve_),
            "cpu_fit_s": cpu_fit, "gpu_fit_s": gpu_fit,
            "cpu_predict_s": cpu_predict, "gpu_predict_s": gpu_predict,
            "loss_diff": max_diff(cpu.loss_curve_, gpu.loss_curve_),
            "output_diff": max_diff(cpu_out, gpu_out),
            "gpu_fit_on_cpu_diff": max_diff(moved, gpu_out),
            "params_numpy": all(type(v) is np.ndarray for v in gpu.params_.values()),
        })
        if engine == "jax":
            import jax

            platform = "cpu" if simulate else "gpu"
            n_devices = len(jax.devices(platform))
            if n_devices > 1:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    one, one_out, one_fit, _ = fit_on(cls, params, fit, output, engine,
                                                      gpu_device, data_parallel=False)
                rows.append({
                    **row, "engine": f"jax, {n_devices} {platform} devices data parallel "
                                     "(GPU columns) vs 1 (CPU columns)",
                    "status": "ok", "epochs": len(one.loss_curve_),
                    "cpu_fit_s": one_fit, "gpu_fit_s": gpu_fit,
                    "loss_diff": max_diff(one.loss_curve_, gpu.loss_curve_),
                    "output_diff": max_diff(one_out, gpu_out),
                })
    except Exception as error:  # a row that says what failed, and the run goes on
        traceback.print_exc()
        rows.append({**row, "status": f"failed: {type(error).__name__}: {error}"[:300]})
    return rows


# ----------------------------------------------------- the CPU scope's overhead


def overhead_rows() -> list[list[str]]:
    """Median time of one ODE-Net training step (program.step) on each engine, with and
    without the engine's CPU device scope around it, interleaved; the paired ratio."""
    import odeplug
    from odeplug._solver_options import make_solve_config
    from odeplug._specs import Hyper, ODENetSpec

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 64))
    y = rng.integers(0, 10, 200)
    spec = ODENetSpec(n_features=64, n_outputs=10, embed_dim=64, field_hidden=(64,),
                      augment_dim=0, embed_activation="relu", field_activation="tanh")
    hyper = Hyper(solve=make_solve_config(rtol=1e-3, atol=1e-4, adjoint=True), t1=1.0,
                  learning_rate=0.0, alpha=1.0)  # no update: every step the same work
    rows = []
    for name in ENGINES:
        info = odeplug.available_backends().get(name)
        if info is None or not info.available:
            rows.append([name, "not installed", "", ""])
            continue
        engine = odeplug.get_backend(name)
        program = engine.make_program(spec)
        state = program.init(spec.init_params(0))
        batch = (X.astype(np.float32), y)

        def bare(program=program, state=state, batch=batch):
            program.step(state, batch, hyper)

        def scoped(program=program, state=state, batch=batch, engine=engine):
            with engine.device_scope("cpu"):
                program.step(state, batch, hyper)

        timings = _common.measure({"bare": bare, "scoped": scoped}, repeats=15,
                                  min_time=0.2)
        rows.append([name, _common.fmt_ms(timings["bare"]), _common.fmt_ms(timings["scoped"]),
                     f"{timings.ratio('scoped', 'bare'):.3f}"])
    return rows


def overhead() -> None:
    rows = overhead_rows()
    body = (f"{_common.environment()}\n\nCommand: `python tests/benchmarks/gpu_check.py "
            f"--overhead`. One ODE-Net training step (`program.step`: 200 rows, 64 "
            "features, state 64, field 64 tanh, dopri5 rtol 1e-3 with the adjoint, "
            "learning rate 0 so that every step does the same work), with and without "
            "`device_scope(\"cpu\")` around it; medians of 15 interleaved rounds, CPU time "
            "of this process; ratio: median of paired ratios.\n\n"
            + _common.markdown_table(["engine", "step (ms)", "step in the CPU scope (ms)",
                                      "ratio"], rows))
    print(body)
    _common.write_section("device-overhead", body, path=DOC)
    print(f"wrote {DOC}")


# ---------------------------------------------------------------------- reporting


def fmt(value, digits=3):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 or abs(value) > 1e3 \
            else f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict]) -> str:
    headers = ["estimator", "engine", "status", "epochs", "fit CPU (s)", "fit GPU (s)",
               "predict CPU (s)", "predict GPU (s)", "loss curves: max abs diff",
               "outputs: max abs diff", "GPU fit predicted on CPU: max abs diff",
               "params NumPy"]
    keys = ["estimator", "engine", "status", "epochs", "cpu_fit_s", "gpu_fit_s",
            "cpu_predict_s", "gpu_predict_s", "loss_diff", "output_diff",
            "gpu_fit_on_cpu_diff", "params_numpy"]
    return _common.markdown_table(headers, [[fmt(r.get(k)) for k in keys] for r in rows])


def gpu_names() -> str:
    names = []
    try:
        import torch

        if torch.cuda.is_available():
            names.append(f"torch sees {torch.cuda.get_device_name(0)} "
                         f"(CUDA {torch.version.cuda}) x{torch.cuda.device_count()}")
    except ImportError:
        pass
    try:
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            names.append(f"jax sees {gpus[0].device_kind} x{len(gpus)}")
    except (ImportError, RuntimeError):
        pass
    return "; ".join(names) or "no GPU seen by torch or jax"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller fits, write nothing")
    parser.add_argument("--simulate", action="store_true",
                        help="no GPU needed: device='auto' for the GPU side; writes nothing")
    parser.add_argument("--overhead", action="store_true",
                        help="only the CPU device scope's cost on a training step")
    parser.add_argument("--estimators", nargs="*", default=list(PROBLEMS))
    args = parser.parse_args()
    if args.overhead:
        overhead()
        return
    rows = []
    for name in args.estimators:
        for engine in ENGINES:
            rows.extend(check(name, engine, args.quick, args.simulate))
    body = (f"{_common.environment()} {gpu_names()}.\n\n"
            f"Command: `python tests/benchmarks/gpu_check.py"
            f"{' --quick' if args.quick else ''}{' --simulate' if args.simulate else ''}`"
            f". Wall times of the second of two identical fits and predictions (the first "
            f"compiles); "
            f"outputs: `predict_proba`, `score_samples`, `predict` of held-out rows.\n\n"
            f"{table(rows)}")
    print(body)
    if not (args.quick or args.simulate):
        RESULTS.write_text(json.dumps({"environment": _common.environment(),
                                       "gpus": gpu_names(), "rows": rows}, indent=1) + "\n")
        _common.write_section("gpu-check", body, path=DOC)
        print(f"wrote {RESULTS} and {DOC}")


if __name__ == "__main__":
    main()
