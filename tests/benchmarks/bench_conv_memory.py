"""Peak training memory of the paper's MNIST ODE-Net as the depth ``t1`` grows, on every
engine: the adjoint's should stay flat, backpropagation's grow with the steps (Chen et
al. 2018, Sec. 2 and Table 1: "constant memory cost as a function of depth").

Run from the repository root (threads pinned to one per process)::

    nice -n 5 python tests/benchmarks/bench_conv_memory.py          # writes docs/
    python tests/benchmarks/bench_conv_memory.py --quick             # smoke run
    python tests/benchmarks/bench_conv_memory.py --report-only       # docs/ from the json

The model is ``ODEClassifier(field="conv", input_shape=(1, 28, 28))``: the paper's
ODE-Net (a stem of a 3-wide convolution and two stride-2 convolutions, 28 -> 7, the
convolutional ODE block with GroupNorm and the time channel, pooled linear head), at a
small width so that every case runs in seconds. Data: generated 28 x 28 images of
blurred random strokes in 10 classes (:func:`make_strokes`; nothing is downloaded).
Fixed RK4 steps of ``h = 0.25``: the number of steps is ``4 t1``.

Each case (engine, gradient, ``t1``) runs in a fresh process, a few training steps on
minibatches of the images, and measures the peak memory the way that engine's memory is
seen:

* reference (NumPy + autograd): ``tracemalloc``'s peak. NumPy reports its buffers to
  it, so the peak is exact (every array and autograd's tape), after a warm-up step.
* torch (CPU): torch's CPU tensors live in glibc ``malloc``'d memory, which
  ``tracemalloc`` does not see. Measured twice, after a warm-up step on the same batch
  (torch makes its convolution primitives per shape): the bytes ``malloc`` has in use
  (``mallinfo2``) sampled at every evaluation of the vector field, forward and in the
  adjoint's backward solve, above the value before the steps (exact bytes of the live
  tensors, backprop's whole graph at the end of its forward solve included); and the
  kernel's peak resident size (``VmHWM``, reset through ``/proc/self/clear_refs`` just
  before the steps, after glibc's ``malloc_trim`` gave back the free memory it keeps)
  minus the resident size then: it sees everything, backprop's backward pass
  included, and also the allocator's slack. (``torch.profiler``'s memory events list
  allocations per operator, from which a peak would have to be rebuilt, and slow the
  steps; ``ru_maxrss`` cannot be reset, so it would count the imports' peak.)
* jax: XLA sizes every buffer when it compiles a step, so the step's memory is read from
  the compiled program: the temporary buffers of
  ``jax.jit(step).lower(...).compile().memory_analysis()`` (exact, deterministic), and
  the peak resident size of running the compiled step (as torch's, after a warm-up
  run: the first run of a compiled program sets up XLA's runtime). ``t1`` is a traced
  input of odeplug's compiled step (one compilation serves every ``t1``), so at a
  given ``max_num_steps`` the step's buffers cannot depend on ``t1``. Backprop there
  is diffrax's ``RecursiveCheckpointAdjoint``: it keeps about ``sqrt(2 max_num_steps)``
  checkpoints of the solver's state (equinox's online binomial checkpointing), set by
  the static step budget, and recomputes the steps between them. Backprop is therefore
  measured twice on jax: at the default budget, and with ``max_num_steps`` equal to
  the steps the grid takes (``4 t1``), the
  tightest budget a user of a fixed grid can give.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (pins threads before numpy, torch or jax are imported)
import numpy as np  # noqa: E402

RESULTS = _common.REPO / "docs" / "bench_conv_memory.json"
INPUT_SHAPE = (1, 28, 28)
T1S = (1.0, 2.0, 4.0, 8.0)
ENGINES = ("reference", "torch", "jax")
# The paper's architecture at a small width (it uses 64 channels; GroupNorm's groups are
# gcd(32, width)), fixed RK4 steps: t1 = 8 is 32 steps, 128 evaluations of the field.
MODEL = dict(latent_dim=8, hidden_layer_sizes=(8,), solver="rk4", step_size=0.25,
             learning_rate_init=1e-3, alpha=1e-4)
N_ROWS = 256       # generated images
BATCH = 16         # rows per step
STEPS = 1          # measured training steps per case, after the warm-up
# jax backprop with max_num_steps = the grid's steps compiles once per t1 (minutes on a
# shared machine): the smallest and largest t1 only.
GRID_BUDGET_T1S = (1.0, 8.0)


# --------------------------------------------------------------------------- data


def make_strokes(n: int, seed: int = 0, n_classes: int = 10, size: int = 28,
                 strokes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``size x size`` of blurred random strokes in ``n_classes`` classes.

    Each class is a template of ``strokes`` line segments with random end points; an
    image of the class draws them with its end points jittered (1.5 pixels), blurred by
    a Gaussian (``sigma`` 1), plus pixel noise, then standardised over the data set.
    Returns ``X`` ``(n, size * size)`` float64 and ``y`` ``(n,)`` int64.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    templates = rng.uniform(4, size - 4, (n_classes, strokes, 2, 2))
    y = rng.permutation(np.arange(n) % n_classes)
    images = np.zeros((n, size, size))
    ticks = np.linspace(0.0, 1.0, 2 * size)[:, None]
    for i in range(n):
        ends = templates[y[i]] + rng.normal(0.0, 1.5, templates[y[i]].shape)
        for start, end in ends:
            points = np.clip(np.rint(start + ticks * (end - start)), 0, size - 1).astype(int)
            images[i, points[:, 0], points[:, 1]] = 1.0
        images[i] = gaussian_filter(images[i], 1.0)
    images += 0.05 * rng.standard_normal(images.shape)
    X = images.reshape(n, -1)
    X = (X - X.mean()) / X.std()
    return X, y.astype(np.int64)


# ------------------------------------------------------------------------- a case


def _model(engine: str, t1: float, adjoint: bool, max_num_steps: int | None):
    import odeplug

    budget = {} if max_num_steps is None else {"max_num_steps": max_num_steps}
    return odeplug.ODEClassifier(backend=engine, field="conv", input_shape=INPUT_SHAPE,
                                 t1=t1, adjoint=adjoint, random_state=0, **MODEL, **budget)


def grid_steps(t1: float) -> int:
    """Steps of the fixed grid on ``[0, t1]``."""
    return math.ceil(t1 / MODEL["step_size"] - 1e-9)


def memory_case(engine: str, t1s: tuple[float, ...], adjoint: bool,
                max_num_steps: int | None = None, steps: int = STEPS,
                batch: int = BATCH) -> list[dict]:
    """Peak memory of ``steps`` training steps at each ``t1`` in this (fresh) process;
    see the module's docstring for each engine's measure. The reference and torch
    engines are given one ``t1`` per process; on jax the ``t1`` share one compiled
    step (``t1`` is traced), which costs seconds to minutes to compile, and its first
    run at each ``t1`` is measured."""
    import odeplug

    X, y = make_strokes(N_ROWS)
    backend = odeplug.backend.get_backend(engine)
    dtype = backend.default_dtype
    batches = [(X[k * batch:(k + 1) * batch].astype(dtype), y[k * batch:(k + 1) * batch])
               for k in range(steps)]
    clfs = [_model(engine, t1, adjoint, max_num_steps) for t1 in t1s]
    spec = clfs[0]._spec_of(X.shape[1], 10, dtype)
    params = spec.init_params(0)
    program = backend.make_program(spec)
    rows = [{"engine": engine, "adjoint": adjoint, "t1": t1, "grid_steps": grid_steps(t1),
             "max_num_steps": clf.max_num_steps,
             "n_params": int(sum(p.size for p in params.values()))}
            for t1, clf in zip(t1s, clfs, strict=True)]
    hypers = [clf._hyper() for clf in clfs]
    if engine == "jax":
        return [row | out for row, out in
                zip(rows, _jax_case(program, spec, hypers, params, batches), strict=True)]
    if len(t1s) != 1:
        raise ValueError(f"one t1 per process on the {engine} engine")
    (row,), (hyper,) = rows, hypers
    if engine == "torch":
        _common.setup_torch()
    # Warm-up: lazy initialisation (torch's convolution primitives are made per shape:
    # the same batch); on the reference engine two rows do (tracemalloc counts nothing
    # that happens before it starts) and save the time of a full step.
    warm = batches[0] if engine == "torch" else (batches[0][0][:2], batches[0][1][:2])
    program.step(program.init(params), warm, hyper)

    def run():
        current, metrics = program.init(params), []
        for batch_ in batches:
            current, m = program.step(current, batch_, hyper)
            metrics.append(m)
        return metrics

    if engine == "reference":
        measured = _common.peak_memory(engine, run, method="tracemalloc")
        row["peak_mib"] = {"tracemalloc": measured["peak_mib"]}
    else:
        sampler = _common.MallocSampler()
        field = program.field

        def sampled_field(*args):
            sampler.sample()
            return field(*args)

        program.field = sampled_field
        measured = _common.peak_memory(engine, run, method="malloc", sampler=sampler)
        row["peak_mib"] = {"malloc": measured["peak_mib"],
                           "rss": measured["rss_bytes"] / 2**20}
        row["malloc_samples"] = sampler.samples
    return [row | _counts(measured["result"])]


def _counts(metrics: list[dict]) -> dict:
    return {"nfe_forward": metrics[-1]["nfe_forward"],
            "nfe_backward": metrics[-1]["nfe_backward"],
            "loss": [float(m["loss"]) for m in metrics]}


def _jax_case(program, spec, hypers, params, batches) -> list[dict]:
    """XLA's temporary buffers of the compiled step (one for every hyper: they differ
    in traced values only), and the peak resident size of running it at each hyper."""
    import jax
    from odeplug_backends.jax import odenet
    from odeplug_backends.jax.programs import (
        run_step,
        solve_key,
        solve_values,
        traced_values,
    )

    dtype = np.dtype(spec.dtype)
    solve = hypers[0].solve
    tolerances = solve_values(solve, dtype)

    def arguments(state, batch, hyper):
        X, y = batch
        return (state["params"], state["opt"], np.asarray(X, dtype),
                np.asarray(y, np.int32), traced_values(hyper, dtype), tolerances)

    start = time.perf_counter()
    compiled = odenet._train_step(spec, solve_key(solve)).lower(
        *arguments(program.init(params), batches[0], hypers[0])).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    out = []
    for i, hyper in enumerate(hypers):
        if solve_key(hyper.solve) != solve_key(solve):
            raise ValueError("the hypers of one jax case must share their compiled step")

        def run(hyper=hyper):
            current, metrics = program.init(params), []
            for batch in batches:
                (p, opt), m = run_step(compiled, dtype, hyper.solve,
                                       *arguments(current, batch, hyper))
                current = {"params": p, "opt": opt}
                metrics.append(m)
            jax.block_until_ready(current)
            return metrics

        if i == 0:
            run()  # the first run of a compiled program sets up XLA's runtime (~15 MiB)
        measured = _common.peak_memory("jax", run, method="rss")
        out.append({"peak_mib": {"xla_temp": analysis.temp_size_in_bytes / 2**20,
                                 "rss": measured["peak_mib"]},
                    "xla_argument_mib": analysis.argument_size_in_bytes / 2**20,
                    "compile_s": compile_s} | _counts(measured["result"]))
    return out


# ------------------------------------------------------------------------- a table

# (engine, measure, budget): the rows of the table. "grid" budget: max_num_steps = the
# grid's steps (jax backprop only, see the module's docstring).
MEASURES = {"reference": ("tracemalloc",), "torch": ("malloc", "rss"),
            "jax": ("xla_temp", "rss")}
MEASURE_NAMES = {
    "tracemalloc": "tracemalloc peak",
    "malloc": "malloc in use (mallinfo2), peak at field evaluations",
    "rss": "peak RSS - RSS before",
    "xla_temp": "XLA temp buffers of the compiled step (memory_analysis)",
}


def cases(engines, t1s) -> list[tuple[str, bool, tuple[float, ...], int | None]]:
    """``(engine, adjoint, t1s, max_num_steps)`` of each process."""
    out = []
    for engine in engines:
        for adjoint in (True, False):
            if engine == "jax":  # one compilation serves every t1
                out.append((engine, adjoint, tuple(t1s), None))
            else:
                out += [(engine, adjoint, (t1,), None) for t1 in t1s]
        if engine == "jax":  # backprop with the grid's budget: a compilation per t1
            out += [(engine, False, (t1,), grid_steps(t1)) for t1 in GRID_BUDGET_T1S
                    if t1 in t1s]
    return out


def run_cases(engines, t1s, steps: int, batch: int) -> list[dict]:
    rows = []
    for engine, adjoint, case_t1s, budget in cases(engines, t1s):
        command = [sys.executable, __file__, "--case", engine,
                   ",".join(f"{t:g}" for t in case_t1s), str(int(adjoint)), str(budget or 0),
                   "--steps", str(steps), "--batch", str(batch)]
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"case {engine} t1={case_t1s} adjoint={adjoint} failed:\n"
                               f"{out.stderr[-3000:]}")
        wall = time.perf_counter() - start
        for row in json.loads(out.stdout.strip().splitlines()[-1]):
            row["budget"] = "grid" if budget else "default"
            row["process_s"] = wall
            rows.append(row)
            peaks = "  ".join(f"{k} {v:7.2f}" for k, v in row["peak_mib"].items())
            print(f"  {engine:9s} {'adjoint' if adjoint else 'backprop':8s} "
                  f"t1={row['t1']:g} max_num_steps={row['max_num_steps']:<5d} {peaks} MiB  "
                  f"NFE fwd {row['nfe_forward']}  (process {wall:.0f} s)", flush=True)
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """One line per (engine, gradient, budget, measure): peaks over t1 and ratios."""
    lines = []
    keys = []
    for row in rows:
        for measure in row["peak_mib"]:
            key = (row["engine"], row["adjoint"], row["budget"], measure)
            if key not in keys:
                keys.append(key)
    for engine, adjoint, budget, measure in keys:
        picked = [r for r in rows if (r["engine"], r["adjoint"], r["budget"])
                  == (engine, adjoint, budget)]
        peaks = {r["t1"]: r["peak_mib"][measure] for r in picked}
        t1s = sorted(peaks)
        lines.append({"engine": engine, "adjoint": adjoint, "budget": budget,
                      "measure": measure, "t1s": t1s, "peaks": [peaks[t] for t in t1s],
                      "ratio_4": peaks.get(4.0, math.nan) / peaks[t1s[0]],
                      "ratio_last": peaks[t1s[-1]] / peaks[t1s[0]]})
    return lines


def verdict(line: dict) -> str:
    if line["adjoint"]:
        return "flat" if line["ratio_last"] <= 1.3 else "**grows**"
    return "grows" if line["ratio_last"] >= 2.0 else "flat"


def report(results: dict) -> str:
    lines = results["summary"]
    t1s = results["settings"]["t1s"]
    headers = (["engine", "gradient", "max_num_steps", "measure"]
               + [f"t1={t:g} MiB" for t in t1s]
               + [f"t1={t1s[-1]:g} / t1={t1s[0]:g}", "verdict"])
    table = []
    for line in lines:
        gradient = "adjoint" if line["adjoint"] else "backprop"
        budget = "4096" if line["budget"] == "default" else "= grid steps"
        table.append([line["engine"], gradient, budget, MEASURE_NAMES[line["measure"]]]
                     + [f"{dict(zip(line['t1s'], line['peaks'], strict=True))[t]:.2f}"
                        if t in line["t1s"] else "-" for t in t1s]
                     + [f"{line['ratio_last']:.2f}", verdict(line)])
    nfe = []
    for row in results["rows"]:
        if row["budget"] == "default" and row["t1"] in (t1s[0], t1s[-1]):
            gradient = "adjoint" if row["adjoint"] else "backprop"
            nfe.append([row["engine"], gradient, f"{row['t1']:g}", row["grid_steps"],
                        int(row["nfe_forward"]), row["nfe_backward"]])
    settings = results["settings"]
    return "\n".join([
        "## Memory of the MNIST ODE-Net as t1 grows (`tests/benchmarks/bench_conv_memory.py`)",
        "",
        results["run"],
        "",
        "`nice -n 5 python tests/benchmarks/bench_conv_memory.py`. The paper's ODE-Net, "
        "`ODEClassifier(field=\"conv\", input_shape=(1, 28, 28), "
        f"**{json.dumps(settings['model'])})`, on {settings['n_rows']} generated 28 x 28 "
        f"images of blurred strokes (10 classes); {settings['steps']} training "
        f"step{'s' if settings['steps'] > 1 else ''} of {settings['batch']} rows per case, "
        "in a fresh process after a warm-up step; "
        "fixed RK4 steps of 0.25, so `t1` = 8 is 32 steps. Peak memory above what the "
        "process held before the steps. Measures: reference, `tracemalloc` (exact); "
        "torch, the bytes `malloc` has in use sampled at every field evaluation (exact "
        "bytes of live tensors) and the peak resident size (everything, with the "
        "allocator's slack); jax, XLA's temporary buffers of the compiled step (exact, "
        "fixed at compile time) and the peak resident size of running it. Verdict: "
        "adjoint flat if the last `t1` is within 1.3x of the first, backprop grows if "
        "more than 2x.",
        "",
        _common.markdown_table(headers, table),
        "",
        "Evaluations of the field per step (the forward count includes jax's one "
        "`f(t1, y1)` of the FSAL stage; the backward count is the adjoint's backward solve, "
        "or autograd's replay of backprop on the reference and torch engines; None where "
        "the engine does not count it):",
        "",
        _common.markdown_table(["engine", "gradient", "t1", "grid steps", "NFE forward",
                                "NFE backward"], nfe),
        "",
        results["conclusion"],
        "",
        f"Total run time: {results['total_s']:.0f} s.",
    ])


PRIMARY = ("tracemalloc", "malloc", "xla_temp")  # exact measures; "rss" is secondary


def conclusion(lines: list[dict]) -> str:
    """What the table shows, worded from the numbers."""

    def ratios(adjoint: bool, engines=ENGINES) -> str:
        return ", ".join(f"{line['engine']} {line['ratio_last']:.2f}x" for line in lines
                         if line["adjoint"] == adjoint and line["budget"] == "default"
                         and line["measure"] in PRIMARY and line["engine"] in engines)

    t1s = sorted({t for line in lines for t in line["t1s"]})
    span = f"t1={t1s[-1]:g} / t1={t1s[0]:g}"
    adjoint_ok = all(verdict(line) == "flat" for line in lines
                     if line["adjoint"] and line["measure"] in PRIMARY)
    text = [f"Adjoint flat in `t1` on every engine ({span}, exact measures: "
            f"{ratios(True)}): **{'met' if adjoint_ok else 'not met'}**."]
    eager = [line for line in lines if not line["adjoint"] and line["engine"] != "jax"
             and line["measure"] in PRIMARY]
    if eager:
        grows = all(verdict(line) == "grows" for line in eager)
        text.append(f"Backprop grows with the steps on the reference and torch engines "
                    f"({ratios(False, ('reference', 'torch'))}): "
                    f"**{'met' if grows else 'not met'}**.")
    grid = [line for line in lines if line["engine"] == "jax" and line["budget"] == "grid"
            and line["measure"] == "xla_temp"]
    temp = {line["adjoint"]: line["peaks"][0] for line in lines if line["engine"] == "jax"
            and line["budget"] == "default" and line["measure"] == "xla_temp"}
    if len(temp) == 2:
        text.append(
            "On jax backprop does **not** grow with `t1`: one compiled step serves every "
            "`t1` (a traced input), and diffrax's `RecursiveCheckpointAdjoint` keeps about "
            "`sqrt(2 max_num_steps)` checkpoints of the solver's state, set by the static "
            "step budget, recomputing the steps between them (memory bought with time); "
            f"at the default budget its buffers are {temp[False] / temp[True]:.2f}x the "
            "adjoint's.")
    if grid:
        g = grid[0]
        text.append(
            f"With `max_num_steps` equal to the grid's steps its temporary buffers go from "
            f"{g['peaks'][0]:.2f} MiB at t1={g['t1s'][0]:g} to {g['peaks'][-1]:.2f} MiB at "
            f"t1={g['t1s'][-1]:g} ({g['ratio_last']:.2f}x): the checkpoints are a small "
            "part of the step's memory.")
    return " ".join(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, writes nothing")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    parser.add_argument("--t1", type=float, nargs="+", default=list(T1S))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--report-only", action="store_true",
                        help=f"rewrite the section from {RESULTS.name}, measuring nothing")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--case", nargs=4, metavar=("ENGINE", "T1S", "ADJOINT", "BUDGET"),
                        help="one process's cases (internal): t1s comma-separated, "
                             "budget 0 for the default max_num_steps")
    args = parser.parse_args(argv)
    if args.case:
        engine, t1, adjoint, budget = args.case
        t1s = tuple(float(t) for t in t1.split(","))
        print(json.dumps(memory_case(engine, t1s, bool(int(adjoint)), int(budget) or None,
                                     args.steps, args.batch)))
        return
    if args.report_only:  # the section again from the saved results
        results = json.loads(RESULTS.read_text())
    else:
        t1s = (1.0, 2.0) if args.quick else tuple(args.t1)
        steps = 1 if args.quick else args.steps
        start = time.perf_counter()
        rows = run_cases(args.engines, t1s, steps, args.batch)
        lines = summary(rows)
        results = {"run": _common.environment(),
                   "settings": {"model": MODEL, "n_rows": N_ROWS, "batch": args.batch,
                                "steps": steps, "t1s": list(t1s)},
                   "rows": rows, "summary": lines, "conclusion": conclusion(lines),
                   "total_s": time.perf_counter() - start}
        if not args.quick:  # before the report: the measurements are kept
            RESULTS.write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if not args.quick:
        _common.write_section("bench-conv-memory", text)


if __name__ == "__main__":
    main()
