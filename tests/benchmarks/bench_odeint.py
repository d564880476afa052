"""Benchmarks of ``odeplug.odeint`` on its three engines (a script, not a timed test).

Run from the repository root (threads pinned to one per process; about 10 minutes)::

    python tests/benchmarks/bench_odeint.py           # full run, writes docs/benchmarks.md
    python tests/benchmarks/bench_odeint.py --quick   # smoke run, prints only

One problem for every table: the MLP vector field ``W2 tanh(W1 y + b1) + b2`` (hidden 64,
float64, weights from one seed, see ``_common.mlp_params``: a Hamiltonian flow, so every
trajectory keeps oscillating and the number of steps grows in proportion to ``t1``),
states of shape ``(batch, D)`` with ``D`` in {2, 32} and ``batch`` in {1, 256}, dopri5,
``rtol=1e-6``, ``atol=1e-8``.

1. The reference engine against ``scipy.integrate.solve_ivp(method="RK45")`` on
   ``t = [0, 2.5]``: time per vector-field evaluation (target: ratio <= 1.0) and overall.
2. ``odeint`` on torch and on JAX against torchdiffeq and diffrax called directly, the
   way a user would write them (target: ratio <= 1.05).
3. Peak memory of ``grad sum(y(t1)**2)`` w.r.t. the parameters for ``t1`` in {1, 10, 50},
   each engine, adjoint and backprop, each case in a fresh process (target: adjoint flat,
   ``t1=50`` within 10% of ``t1=1``; backprop growing).

Timings are medians of interleaved repeats (A B, B A, ...) of CPU time of the process (see
``_common.CLOCK``; ``--wall`` for wall time), compilation and warm-up excluded; ratios are
medians of the ratios of paired samples (one round each).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402, I001  (pins threads before numpy, torch or jax)
import numpy as np  # noqa: E402

SECTION = "odeint"
DIMS = (2, 32)
BATCHES = (1, 256)
T_END = 2.5  # timing tables: t = [0, 2.5], 23 to 47 steps
MEMORY_T1 = (1.0, 10.0, 50.0)
MEMORY_DIM = 32
MEMORY_BATCH = 64  # backprop at t1=50 (~2,000 steps) stays near a gigabyte on torch
MEMORY_MAX_STEPS = 16_384  # the same budget for every t1 (JAX sizes its buffers by it)
ENGINES = ("reference", "torch", "jax")
MODES = ("adjoint", "backprop")


# ------------------------------------------------------------------- the fields


def anp_field(t, y, p):
    """The field in autograd.numpy: what a reference-engine user writes to get gradients."""
    import autograd.numpy as anp

    return anp.tanh(y @ p["W1"].T + p["b1"]) @ p["W2"].T + p["b2"]


def jax_field(t, y, p):
    import jax.numpy as jnp

    return jnp.tanh(y @ p["W1"].T + p["b1"]) @ p["W2"].T + p["b2"]


def torch_modules(p: dict[str, np.ndarray]):
    """The field as ``nn.Module``s: ``forward(t, y, args)`` for odeplug and
    ``forward(t, y)`` for torchdiffeq, each with its own copy of the same weights."""
    torch = C.setup_torch()
    from torch import nn

    class MLPField(nn.Module):
        def __init__(self):
            super().__init__()
            dim, hidden = p["W1"].shape[1], p["W1"].shape[0]
            self.lin1 = nn.Linear(dim, hidden, dtype=torch.float64)
            self.lin2 = nn.Linear(hidden, dim, dtype=torch.float64)
            with torch.no_grad():
                for layer, w, b in ((self.lin1, "W1", "b1"), (self.lin2, "W2", "b2")):
                    layer.weight.copy_(torch.as_tensor(p[w]))
                    layer.bias.copy_(torch.as_tensor(p[b]))

        def field(self, y):
            return self.lin2(torch.tanh(self.lin1(y)))

    class PlugField(MLPField):
        def forward(self, t, y, args):
            return self.field(y)

    class DirectField(MLPField):
        def forward(self, t, y):
            return self.field(y)

    return PlugField(), DirectField()


# --------------------------------------------------- 1. reference vs scipy RK45


def bench_reference(settings) -> dict:
    from scipy.integrate import solve_ivp

    import odeplug

    t = np.array([0.0, T_END])
    rows = []
    for dim in DIMS:
        for batch in BATCHES:
            p = C.mlp_params(dim)
            y0 = C.initial_state(batch, dim)

            def scipy_fun(s, y, p=p, shape=y0.shape):
                return C.numpy_field(s, y.reshape(shape), p).ravel()

            def plug(field=C.numpy_field, p=p, y0=y0):
                return odeplug.odeint(field, y0, t, p, rtol=C.RTOL, atol=C.ATOL)

            def scipy(y0=y0, scipy_fun=scipy_fun):
                return solve_ivp(scipy_fun, (0.0, T_END), y0.ravel(), method="RK45",
                                 rtol=C.RTOL, atol=C.ATOL)

            ys, stats = odeplug.odeint(C.numpy_field, y0, t, p, rtol=C.RTOL, atol=C.ATOL,
                                       return_stats=True)
            sol = scipy()
            assert sol.success, sol.message
            times = C.measure(
                {"odeplug": plug, "scipy": scipy,
                 "odeplug_anp": lambda plug=plug: plug(anp_field)},
                repeats=settings.repeats, min_time=settings.min_time)
            nfe, nfe_scipy = stats.nfe_forward, sol.nfev
            per_nfe = times.ratio("odeplug", "scipy") * nfe_scipy / nfe
            per_nfe_anp = times.ratio("odeplug_anp", "scipy") * nfe_scipy / nfe
            rows.append({
                "D": dim, "batch": batch, "nfe": nfe, "nfe_scipy": nfe_scipy,
                "steps": stats.n_steps, "rejected": stats.n_rejected,
                "t_odeplug": times["odeplug"], "t_scipy": times["scipy"],
                "t_odeplug_anp": times["odeplug_anp"],
                "ratio": times.ratio("odeplug", "scipy"), "ratio_per_nfe": per_nfe,
                "ratio_per_nfe_anp": per_nfe_anp,
                "diff": float(np.max(np.abs(ys[-1].ravel() - sol.y[:, -1]))),
            })
            print(f"  reference D={dim} batch={batch}: per-NFE ratio {per_nfe:.3f} "
                  f"(autograd.numpy field {per_nfe_anp:.3f}), overall "
                  f"{rows[-1]['ratio']:.3f}", flush=True)
    return {"rows": rows}


def _verdict(name: str, ratios: list[float], target: float) -> str:
    worst = max(ratios)
    met = "met" if worst <= target else "not met"
    return f"Target: {name} <= {target}. Worst case {worst:.3f}: **{met}**."


def table_reference(result: dict) -> str:
    rows = result["rows"]
    table = C.markdown_table(
        ["D", "batch", "NFE odeplug", "NFE scipy", "odeplug ms", "scipy ms",
         "ratio per NFE", "ratio overall", "ratio per NFE, `anp` field", "max abs diff"],
        [[r["D"], r["batch"], r["nfe"], r["nfe_scipy"], C.fmt_ms(r["t_odeplug"]),
          C.fmt_ms(r["t_scipy"]), f"**{r['ratio_per_nfe']:.3f}**", f"{r['ratio']:.3f}",
          f"{r['ratio_per_nfe_anp']:.3f}", f"{r['diff']:.1e}"] for r in rows])
    return (
        "### Reference engine vs `scipy.integrate.solve_ivp(RK45)`\n\n"
        f"`odeplug.odeint` on NumPy arrays (the plain-NumPy path of the reference engine: "
        f"no autograd tracing) against `solve_ivp(method=\"RK45\")` on `t = [0, {T_END:g}]`, "
        "both given the same plain-NumPy field (scipy solves the flattened `batch * D` "
        "vector, odeplug the `(batch, D)` array). Both are Dormand-Prince 5(4) with the "
        "same error norm, but their step-size controllers differ slightly (scipy's "
        "exponent is -1/5 and it starts from its own initial step), so the number of "
        "evaluations differs by a few percent: the comparison at equal NFE is the time "
        "per vector-field evaluation (**ratio per NFE**, odeplug / scipy); the overall "
        "time ratio is shown too. The `anp` column is odeplug with the same field written "
        "in `autograd.numpy` (what a user writes to get gradients), against the same "
        "scipy time. Max abs diff: `y(t1)` of odeplug vs scipy.\n\n"
        f"{table}\n\n"
        + _verdict("ratio per NFE", [r["ratio_per_nfe"] for r in rows], 1.0) + "\n"
    )


# ---------------------------------------------- 2a. torch: odeint vs torchdiffeq


def bench_torch(settings) -> dict:
    torch = C.setup_torch()
    import torchdiffeq

    import odeplug

    kw = {"rtol": C.RTOL, "atol": C.ATOL}
    rows = []
    for dim, batch in settings.configs:
        p = C.mlp_params(dim)
        plug_field, direct_field = torch_modules(p)
        y0 = torch.as_tensor(C.initial_state(batch, dim))
        t = torch.tensor([0.0, T_END], dtype=torch.float64)

        def clear(module):
            for q in module.parameters():
                q.grad = None

        def plug(mode, plug_field=plug_field, y0=y0, t=t, return_stats=False):
            # Timed without return_stats, as torchdiffeq counts nothing: odeplug then
            # skips counting backprop's VJPs (a hook per evaluation).
            clear(plug_field)
            with torch.no_grad() if mode == "forward" else contextlib.nullcontext():
                out = odeplug.odeint(plug_field, y0, t, adjoint=mode == "adjoint",
                                     return_stats=return_stats, **kw)
            ys, stats = out if return_stats else (out, None)
            if mode != "forward":
                ys[-1].pow(2).sum().backward()
            return stats

        def direct(mode, direct_field=direct_field, y0=y0, t=t):
            clear(direct_field)
            if mode == "forward":
                with torch.no_grad():
                    return torchdiffeq.odeint(direct_field, y0, t, method="dopri5", **kw)
            solve = torchdiffeq.odeint_adjoint if mode == "adjoint" else torchdiffeq.odeint
            ys = solve(direct_field, y0, t, method="dopri5", **kw)
            ys[-1].pow(2).sum().backward()

        for mode in ("forward", "backprop", "adjoint"):
            # Evaluations: odeplug's counters; torchdiffeq's by a counting copy (untimed).
            stats = plug(mode, return_stats=True)
            counter = _count_torch_calls(direct_field, lambda m=mode: direct(m))
            # One call per sample (each takes tens of milliseconds or more): many samples.
            times = C.measure({"odeplug": lambda m=mode: plug(m),
                               "direct": lambda m=mode: direct(m)},
                              repeats=settings.torch_repeats, min_time=0.0,
                              budget=settings.budget)
            ratio = times.ratio("odeplug", "direct")
            adjoint = mode == "adjoint"  # backprop: one VJP per forward evaluation
            rows.append({
                "D": dim, "batch": batch, "mode": mode,
                "nfe": stats.nfe_forward,
                "nfe_bwd": stats.nfe_backward if adjoint else None,
                "nfe_direct": counter["forward"],
                "nfe_bwd_direct": counter["backward"] if adjoint else None,
                "t_odeplug": times["odeplug"], "t_direct": times["direct"], "ratio": ratio,
            })
            print(f"  torch D={dim} batch={batch} {mode}: ratio {ratio:.3f}", flush=True)
    return {"rows": rows}


def _count_torch_calls(module, run) -> dict:
    """Vector-field evaluations of ``run()`` before and during the backward pass.

    For backprop the backward count is that of the forward (one VJP per evaluation);
    for the adjoint, evaluations made after the forward solve returned."""
    import torch

    calls = {"n": 0}
    hook = module.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    marks = []
    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        marks.append(calls["n"])
        return original(self, *args, **kwargs)

    torch.Tensor.backward = backward
    try:
        run()
    finally:
        torch.Tensor.backward = original
        hook.remove()
    forward = marks[0] if marks else calls["n"]
    return {"forward": forward, "backward": calls["n"] - forward if marks else None}


# ------------------------------------------------- 2b. jax: odeint vs diffrax


def bench_jax(settings) -> dict:
    jax = C.setup_jax()
    import diffrax
    import jax.numpy as jnp
    from odeplug_backends.jax.solve import diffeqsolve_arguments

    import odeplug
    from odeplug._solver_options import make_solve_config

    arguments = diffeqsolve_arguments(make_solve_config(solver="dopri5", rtol=C.RTOL,
                                                        atol=C.ATOL))
    kw = {"rtol": C.RTOL, "atol": C.ATOL}

    def solvers(field):
        def plug_solve(y0, t, p):
            return odeplug.odeint(field, y0, t, p, **kw)

        def direct_solve(y0, t, p):
            # diffeqsolve with the solver, controller, adjoint and max_steps odeplug uses.
            sol = diffrax.diffeqsolve(diffrax.ODETerm(field), t0=t[0], t1=t[-1], dt0=None,
                                      y0=y0, args=p, saveat=diffrax.SaveAt(ts=t),
                                      **arguments)
            return sol.ys, sol.stats["num_steps"]

        def stock_solve(y0, t, p):
            # diffrax's own Dopri5 and PIDController, as in diffrax's documentation.
            sol = diffrax.diffeqsolve(diffrax.ODETerm(field), diffrax.Dopri5(), t0=t[0],
                                      t1=t[-1], dt0=None, y0=y0, args=p,
                                      saveat=diffrax.SaveAt(ts=t),
                                      stepsize_controller=diffrax.PIDController(**kw),
                                      max_steps=4096)
            return sol.ys, sol.stats["num_steps"]

        return {"plug": plug_solve, "direct": direct_solve, "stock": stock_solve}

    solve = solvers(jax_field)
    rows = []
    for dim, batch in settings.configs:
        p = {k: jnp.asarray(v) for k, v in C.mlp_params(dim).items()}
        y0 = jnp.asarray(C.initial_state(batch, dim))
        t = jnp.asarray([0.0, T_END])
        fns = {
            "plug_jit": jax.jit(solve["plug"]),
            "direct_jit": jax.jit(solve["direct"]),
            "stock_jit": jax.jit(solve["stock"]),
            "plug_eager": solve["plug"],
        }
        compile_s = {}
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(y0, t, p))
            compile_s[name] = time.perf_counter() - start
        # Evaluations: odeplug's counters; diffrax's from its step count (primed FSAL:
        # 3 + 6 per step, as odeplug; stock Dopri5: 1 + 6 per step), in untimed calls.
        steps = {name: int(fns[name + "_jit"](y0, t, p)[1]) for name in ("direct", "stock")}
        nfe = {"direct": 3 + 6 * steps["direct"], "stock": 1 + 6 * steps["stock"]}
        _, stats = odeplug.odeint(jax_field, y0, t, p, return_stats=True, **kw)
        nfe["plug"] = stats.nfe_forward
        times = C.measure({name: (lambda fn=fn, y0=y0, t=t, p=p:
                                  jax.block_until_ready(fn(y0, t, p)))
                           for name, fn in fns.items()},
                          repeats=settings.repeats, min_time=settings.min_time)
        row = {"D": dim, "batch": batch, "nfe": nfe, "steps": stats.n_steps,
               "rejected": stats.n_rejected, "times": times, "compile_s": compile_s,
               "ratio": times.ratio("plug_jit", "direct_jit"),
               "ratio_stock": times.ratio("plug_jit", "stock_jit"),
               "ratio_eager": times.ratio("plug_eager", "direct_jit")}
        rows.append(row)
        print(f"  jax D={dim} batch={batch}: jit ratio {row['ratio']:.3f} (stock "
              f"{row['ratio_stock']:.3f}, eager {row['ratio_eager']:.3f})", flush=True)
    return {"rows": rows}


def table_torch(result: dict) -> str:
    rows = result["rows"]

    def nfe(r, key, bwd):
        return str(r[key]) if r[bwd] is None else f"{r[key]} + {r[bwd]}"

    names = {"forward": "forward (`no_grad`)", "backprop": "forward + backward, backprop",
             "adjoint": "forward + backward, adjoint"}
    table = C.markdown_table(
        ["D", "batch", "mode", "NFE odeplug", "NFE torchdiffeq", "odeplug ms",
         "torchdiffeq ms", "ratio"],
        [[r["D"], r["batch"], names[r["mode"]], nfe(r, "nfe", "nfe_bwd"),
          nfe(r, "nfe_direct", "nfe_bwd_direct"), C.fmt_ms(r["t_odeplug"]),
          C.fmt_ms(r["t_direct"]), f"**{r['ratio']:.3f}**"] for r in rows])
    return (
        "### torch: `odeplug.odeint` vs `torchdiffeq`\n\n"
        "`odeplug.odeint(module, y0, t, rtol, atol)` (engine inferred from the tensor; the "
        "field an `nn.Module` with `forward(t, y, args)`) against "
        "`torchdiffeq.odeint(module, y0, t, rtol, atol, method=\"dopri5\")` (the same "
        "weights in a module with `forward(t, y)`), for the forward solve under "
        "`torch.no_grad()` and for forward + backward of `sum(y(t1)**2)` by backprop "
        "(`adjoint=False` vs `torchdiffeq.odeint`) and by the adjoint (`adjoint=True` vs "
        "`torchdiffeq.odeint_adjoint`). NFE: forward evaluations, plus the backward "
        "solve's for the adjoint (odeplug's counters; torchdiffeq's counted by a forward "
        "hook).\n\n"
        f"{table}\n\n"
        + _verdict("ratio", [r["ratio"] for r in rows], 1.05) + " "
        "What odeplug adds: a fixed cost per call (its checks of the inputs and of the "
        "field, one evaluation through `torch.func.functional_call`: about 0.2 ms), and "
        "per step and per evaluation a little Python (a plain wrapper that counts the "
        "evaluations, callbacks that check each step size as floats, the `step_t=[t1]` "
        "option that makes torchdiffeq land exactly on `t1`). Timed without "
        "`return_stats`: with it, backprop also counts its VJPs by a tensor hook per "
        "evaluation, about 6% at D=2, batch 1. Single torch cases move by a few percent "
        "between runs on this shared machine.\n"
    )


def table_jax(result: dict) -> str:
    rows = result["rows"]
    table = C.markdown_table(
        ["D", "batch", "NFE odeplug / diffrax / stock", "odeplug jit ms",
         "diffeqsolve jit ms", "stock jit ms", "odeplug eager ms", "ratio jit",
         "ratio vs stock", "ratio eager / jit"],
        [[r["D"], r["batch"],
          f"{r['nfe']['plug']} / {r['nfe']['direct']} / {r['nfe']['stock']}",
          C.fmt_ms(r["times"]["plug_jit"]), C.fmt_ms(r["times"]["direct_jit"]),
          C.fmt_ms(r["times"]["stock_jit"]), C.fmt_ms(r["times"]["plug_eager"]),
          f"**{r['ratio']:.3f}**", f"{r['ratio_stock']:.3f}", f"{r['ratio_eager']:.3f}"]
         for r in rows])
    return (
        "### JAX: `odeplug.odeint` vs `diffrax.diffeqsolve`\n\n"
        "The forward solve, each side wrapped in `jax.jit` by the user (compilation "
        "excluded): `odeplug.odeint(field, y0, t, args, rtol, atol)` against "
        "`diffrax.diffeqsolve(ODETerm(field), t0, t1, dt0=None, y0, args, "
        "saveat=SaveAt(ts=t), **diffeqsolve_arguments(config))`, i.e. the same solver, "
        "step-size controller (with Hairer's initial step) and `max_steps` "
        "(**ratio jit**, the target). For context, against diffrax's stock `Dopri5()` + "
        "`PIDController(rtol, atol)` (diffrax starts at `dt0 = 0.01` and its controller "
        "exponent differs, so it takes other steps; ratio vs stock), and the eager call "
        "`odeint(...)` without the user's `jax.jit` (diffrax compiles the solve once "
        "and reuses it; odeplug adds its input checks, the counters and the host "
        "transfer of the success flag) against jitted `diffeqsolve` (ratio eager / jit). "
        "NFE: odeplug's counters; diffrax's from its number of steps (accepted and "
        "rejected): 3 + 6 per step with odeplug's solver (Hairer's initial step, f(t0, "
        "y0) once), 1 + 6 per step for the stock Dopri5. The diffrax sides also return "
        "that step count (a scalar) with the solution.\n\n"
        f"{table}\n\n"
        + _verdict("ratio jit", [r["ratio"] for r in rows], 1.05) + "\n"
    )


# ----------------------------------------------------- 3. memory of the gradient


def memory_case(engine: str, mode: str, t1: float, batch: int) -> dict:
    """One case, in this (fresh) process: peak memory of the gradient of
    ``sum(y(t1)**2)`` w.r.t. the field's parameters."""
    import odeplug

    p_np = C.mlp_params(MEMORY_DIM)
    y0_np = C.initial_state(batch, MEMORY_DIM)
    kw = {"rtol": C.RTOL, "atol": C.ATOL, "adjoint": mode == "adjoint",
          "max_num_steps": MEMORY_MAX_STEPS}
    warm_t1 = 0.01  # imports, caches, lazy initialisation: a few steps

    if engine == "reference":
        import autograd
        import autograd.numpy as anp

        def gradient(t_end):
            holder = {}

            def loss(p):
                ys, holder["stats"] = odeplug.odeint(anp_field, y0_np, np.array([0.0, t_end]),
                                                     p, return_stats=True, **kw)
                return anp.sum(ys[-1] ** 2)

            grad = autograd.grad(loss)(p_np)
            return grad, holder["stats"]

        gradient(warm_t1)
        measured = C.peak_memory(engine, lambda: gradient(t1), method="tracemalloc")
        stats = measured["result"][1]
        # No resident size: tracemalloc's own bookkeeping would be in it.
        return {"peak_bytes": measured["peak_bytes"], "method": measured["method"],
                "rss_bytes": None, "nfe": stats.nfe_forward, "nfe_bwd": stats.nfe_backward}

    if engine == "torch":
        torch = C.setup_torch()
        field, _ = torch_modules(p_np)
        y0 = torch.as_tensor(y0_np)

        def gradient(t_end):
            for q in field.parameters():
                q.grad = None
            t = torch.tensor([0.0, t_end], dtype=torch.float64)
            ys, stats = odeplug.odeint(field, y0, t, return_stats=True, **kw)
            ys[-1].pow(2).sum().backward()
            return stats

        gradient(warm_t1)
        # Sampled at every evaluation of the field: the peak of backprop is at the end of
        # the forward solve, that of the adjoint inside its backward solve.
        sampler = C.MallocSampler()
        field.register_forward_hook(sampler.sample)
        measured = C.peak_memory(engine, lambda: gradient(t1), method="malloc",
                                 sampler=sampler)
        stats = measured["result"]
        return {"peak_bytes": measured["peak_bytes"], "method": measured["method"],
                "rss_bytes": measured["rss_bytes"], "nfe": stats.nfe_forward,
                "nfe_bwd": stats.nfe_backward}

    jax = C.setup_jax()
    import jax.numpy as jnp

    p = {k: jnp.asarray(v) for k, v in p_np.items()}
    y0 = jnp.asarray(y0_np)

    def loss(p, t):
        return jnp.sum(odeplug.odeint(jax_field, y0, t, p, **kw)[-1] ** 2)

    t = jnp.asarray([0.0, t1])
    compiled = jax.jit(jax.grad(loss)).lower(p, t).compile()
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else analysis.temp_size_in_bytes
    # Warm-up on the compiled function itself would leave its buffers to the allocator;
    # the first call after compilation is measured.
    measured = C.peak_memory(engine, lambda: jax.block_until_ready(compiled(p, t)),
                             method="rss")
    _, stats = odeplug.odeint(jax_field, y0, t, p, return_stats=True, **kw)
    return {"peak_bytes": temp, "method": "XLA temp buffers (`memory_analysis`)",
            "rss_bytes": measured["peak_bytes"], "nfe": int(stats.nfe_forward),
            "nfe_bwd": None}


def bench_memory(settings) -> dict:
    cases = []
    for engine in settings.memory_engines:
        for mode in MODES:
            for t1 in settings.memory_t1:
                command = [sys.executable, str(Path(__file__).resolve()), "--memory-case",
                           engine, mode, repr(t1), str(settings.memory_batch)]
                start = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                lines = [line for line in done.stdout.splitlines()
                         if line.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    raise RuntimeError(f"memory case {engine} {mode} t1={t1} failed:\n"
                                       f"{done.stdout}\n{done.stderr}")
                case = json.loads(lines[-1][len("RESULT "):])
                case.update(engine=engine, mode=mode, t1=t1,
                            wall_s=time.perf_counter() - start)
                cases.append(case)
                print(f"  memory {engine} {mode} t1={t1:g}: "
                      f"{C.fmt_mb(case['peak_bytes'])} MiB ({case['method']}), "
                      f"RSS {C.fmt_mb(case['rss_bytes'])} MiB, NFE {case['nfe']}, "
                      f"{case['wall_s']:.1f} s", flush=True)
    return {"cases": cases, "t1": list(settings.memory_t1), "batch": settings.memory_batch,
            "engines": list(settings.memory_engines)}


def table_memory(result: dict) -> str:
    t1s = result["t1"]
    first, last = t1s[0], t1s[-1]
    by_key = {(c["engine"], c["mode"], c["t1"]): c for c in result["cases"]}
    rows, verdicts = [], []
    for engine in result["engines"]:
        for mode in MODES:
            cases = [by_key[(engine, mode, t1)] for t1 in t1s]
            for measure in ("peak_bytes", "rss_bytes"):
                values = [c[measure] for c in cases]
                if None in values:
                    continue
                growth = values[-1] / values[0] if values[0] else None
                label = cases[0]["method"] if measure == "peak_bytes" else "peak RSS - before"
                if measure == "peak_bytes":
                    flat = growth is not None and growth <= 1.10
                    if mode == "adjoint":
                        verdicts.append((engine, flat))
                    verdict = ("flat" if flat else "grows") + (
                        " (target: flat)" if mode == "adjoint" else "")
                else:
                    verdict = "(secondary)"
                rows.append([engine, mode, label] + [C.fmt_mb(v) for v in values]
                            + ["n/a" if growth is None else f"{growth:.2f}", verdict])
    nfe_rows = []
    for engine in result["engines"]:
        for mode in MODES:
            cases = [by_key[(engine, mode, t1)] for t1 in t1s]
            nfe_rows.append([engine, mode] + [
                str(c["nfe"]) if c["nfe_bwd"] is None else f"{c['nfe']} + {c['nfe_bwd']}"
                for c in cases])
    headers = (["engine", "gradient", "measure"] + [f"t1={t:g} MiB" for t in t1s]
               + [f"t1={last:g} / t1={first:g}", "verdict"])
    table = C.markdown_table(headers, rows)
    nfe_table = C.markdown_table(["engine", "gradient"] + [f"NFE t1={t:g}" for t in t1s],
                                 nfe_rows)
    adjoint_ok = all(flat for _, flat in verdicts)
    failed = [engine for engine, flat in verdicts if not flat]
    summary = ("met on every engine" if adjoint_ok
               else f"not met on {', '.join(failed)}")
    return (
        "### Memory of the gradient as `t1` grows\n\n"
        f"Peak memory of `grad sum(y(t1)**2)` w.r.t. the field's parameters, D = "
        f"{MEMORY_DIM}, batch = {result['batch']} (batch 256 would put torch's backprop "
        f"at t1=50 over 4 GB), `max_num_steps={MEMORY_MAX_STEPS}` for every `t1`, each "
        "case in a fresh process after a warm-up gradient at `t1 = 0.01` (reference, "
        "torch) or after compilation (JAX). Measures: reference, `tracemalloc` (NumPy "
        "reports its buffers to it: exact); torch, the bytes in use by `malloc` (glibc "
        "`mallinfo2`, where torch's CPU tensors live: exact, free of the pages and free "
        "lists the allocator keeps) sampled at every evaluation of the field, forward "
        "and in the adjoint's backward solve, above the value before the call, and for "
        "comparison the peak resident size (kernel `VmHWM`, reset just before) minus the "
        "resident size before, which also counts the allocator's fragmentation; JAX, "
        "the temporary buffers XLA allocates for the compiled gradient "
        "(`jit(grad(f)).lower(...).compile().memory_analysis().temp_size_in_bytes`: "
        "exact and deterministic; XLA sizes every buffer at compile time, so it cannot "
        "depend on `t1`), and the peak RSS of its first call.\n\n"
        f"{table}\n\n"
        "Evaluations (forward + backward where the engine reports them; JAX forward "
        "only):\n\n"
        f"{nfe_table}\n\n"
        f"Target: the adjoint flat (t1={last:g} within 10% of t1={first:g}) on every "
        f"engine: **{summary}**. Backprop grows with the number of steps on the reference "
        "and torch engines (it stores every step's operations). On JAX, backprop is "
        "diffrax's `RecursiveCheckpointAdjoint`: binomial checkpointing with a number "
        "of checkpoints fixed by `max_num_steps`, so its memory is set at compile time "
        "by the step budget, not by `t1` (it pays in recomputation instead).\n"
    )


# ---------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: few repeats, small cases; prints, writes nothing")
    parser.add_argument("--wall", action="store_true", help="time wall clock, not CPU time")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown file to write (default {C.DOCS}; none with --quick)")
    parser.add_argument("--only", nargs="+", choices=("reference", "torch", "jax", "memory"),
                        default=("reference", "torch", "jax", "memory"))
    parser.add_argument("--memory-case", nargs=4, metavar=("ENGINE", "MODE", "T1", "BATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_case:
        engine, mode, t1, batch = args.memory_case
        result = memory_case(engine, mode, float(t1), int(batch))
        print("RESULT " + json.dumps(result), flush=True)
        return

    if args.wall:
        C.use_wall_clock()
    settings = argparse.Namespace(
        repeats=3 if args.quick else 15,
        min_time=0.005 if args.quick else 0.05,
        torch_repeats=3 if args.quick else 21,
        budget=2.0 if args.quick else 25.0,  # seconds of samples per torch comparison
        # The reference table is cheap: always every (D, batch).
        configs=[(2, 1)] if args.quick else [(d, b) for d in DIMS for b in BATCHES],
        # JAX compiles each gradient for half a minute: not in the smoke run.
        memory_engines=("reference", "torch") if args.quick else ENGINES,
        memory_t1=(0.5, 1.0) if args.quick else MEMORY_T1,
        memory_batch=8 if args.quick else MEMORY_BATCH,
    )
    output = args.output if args.output is not None else (None if args.quick else C.DOCS)

    start = time.perf_counter()
    sections = []
    runners = {"reference": (bench_reference, table_reference),
               "torch": (bench_torch, table_torch), "jax": (bench_jax, table_jax),
               "memory": (bench_memory, table_memory)}
    for name in ("reference", "torch", "jax", "memory"):
        if name in args.only:
            print(f"[{name}]", flush=True)
            bench, table = runners[name]
            sections.append(table(bench(settings)))
    clock = "wall" if args.wall else "CPU (process_time)"
    text = (
        "## `odeplug.odeint`\n\n"
        "Written by `python tests/benchmarks/bench_odeint.py`"
        + (" (quick mode)" if args.quick else "") + ". "
        "One problem throughout: the MLP field `W2 tanh(W1 y + b1) + b2`, hidden 64, "
        "float64, the same weights (one seed) on every engine, built as a Hamiltonian "
        f"flow that keeps oscillating (about {C.OMEGA:g} rad per unit time) so that the "
        "number of steps grows with `t1`; `y0 ~ N(0, 1)` of shape `(batch, D)`; dopri5, "
        f"rtol {C.RTOL:g}, atol {C.ATOL:g}. Times: {clock} time, warm-up and compilation "
        f"excluded, medians of interleaved rounds ({settings.repeats} rounds, each timing "
        "every side once; fewer, at least 5, for the slowest torch cases). Ratios: the "
        "median over rounds of the ratio within a round. The machine is shared with other "
        "work and its speed drifts by 10-20% over seconds; the two sides of a round see "
        "the same drift, so paired ratios are far steadier than a ratio of medians.\n\n"
        + C.environment() + "\n\n" + "\n".join(sections)
        + f"\nTotal run time: {time.perf_counter() - start:.0f} s.\n"
    )
    print()
    print(text)
    if output is not None:
        C.write_section(SECTION, text, output)
        print(f"written to {output}")


if __name__ == "__main__":
    main()
