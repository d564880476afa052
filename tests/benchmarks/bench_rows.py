"""Benchmark of the row solver (``odeplug._rows``): many independent problems at batch speed.

Run from the repository root (threads pinned to one; a few minutes)::

    python tests/benchmarks/bench_rows.py           # writes its section of docs/benchmarks.md
    python tests/benchmarks/bench_rows.py --quick   # smoke run, prints only

A prediction-like solve: ``n = 1000`` rows, each its own initial value problem of the
ODE-Net field ``MLP([z, t])`` (``mlp_field`` of each engine: hidden 64, tanh, D = 16, the
weights of ``_common.mlp_params``, a Hamiltonian flow, with a zero weight on the time
column), ``t = [0, 2.5]``, dopri5, ``rtol=1e-3``, ``atol=1e-6``, no gradients. Compared:

* ``odeint_rows`` (the batched row solver: each row its own steps, one field call per
  stage for every row still running);
* the row loop it replaces: each row solved alone, one after the other (torch: the torch
  engine's ``odeint`` on ``y0[i:i+1]``, which is torchdiffeq; reference: the reference
  engine's one-problem stepper), and ``odeint_rows(batched=False)`` (the row solver, one
  row at a time);
* torch only: one joint ``torchdiffeq.odeint`` of all rows as one state (shared steps,
  chosen by the RMS error over every row: not the per-row solves, but the floor of what a
  batch costs).

Targets: the batched solver >= 10x faster than the torch row loop, and <= 2x the joint
torchdiffeq solve. Times are CPU time (``_common.CLOCK``) of one thread, medians of
interleaved rounds; ratios of paired rounds where both sides are timed in one call of
``_common.measure``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402, I001  (pins threads before numpy or torch)
import numpy as np  # noqa: E402

SECTION = "rows"
N_ROWS, DIM, HIDDEN, T_END = 1000, 16, 64, 2.5
RTOL, ATOL = 1e-3, 1e-6


def field_params(dtype) -> dict[str, np.ndarray]:
    """``_common.mlp_params`` as the canonical parameters of ``mlp_field("field", 2)``."""
    p = C.mlp_params(DIM, HIDDEN)
    first = np.vstack([p["W1"].T, np.zeros((1, HIDDEN))])  # no weight on the time column
    return {"field.0.weight": first.astype(dtype), "field.0.bias": p["b1"].astype(dtype),
            "field.1.weight": p["W2"].T.astype(dtype), "field.1.bias": p["b2"].astype(dtype)}


def bench_torch(settings, dtype) -> dict:
    torch = C.setup_torch()
    import torchdiffeq
    from odeplug_backends.torch.nn import mlp_field
    from odeplug_backends.torch.solve import odeint, odeint_rows

    from odeplug._solver_options import make_solve_config

    config = make_solve_config("dopri5", rtol=RTOL, atol=ATOL)
    field = mlp_field("field", 2, "tanh")
    params = {k: torch.as_tensor(v) for k, v in field_params(dtype).items()}
    y0 = torch.as_tensor(C.initial_state(settings.n_rows, DIM).astype(dtype))
    t = torch.tensor([0.0, T_END], dtype=torch.float64)

    def batched():
        return odeint_rows(field, y0, t, params, config)

    def joint(counter=None):
        def fun(s, y):
            if counter is not None:
                counter["nfe"] += 1
            return field(s, y, params)

        with torch.inference_mode():
            return torchdiffeq.odeint(fun, y0, t, rtol=RTOL, atol=ATOL, method="dopri5")

    def loop():
        # The previous odeint_rows: each row through the torch engine's odeint alone.
        with torch.inference_mode():
            return torch.cat([odeint(field, y0[i : i + 1], t, params, config, check=False)[0]
                              for i in range(y0.shape[0])], dim=1)

    def one_at_a_time():
        return odeint_rows(field, y0, t, params, config, batched=False)

    ys, counters = batched()
    counter = {"nfe": 0}
    ys_joint = joint(counter)
    ys_loop = loop()
    fast = C.measure({"batched": batched, "joint": joint}, repeats=settings.repeats,
                     min_time=settings.min_time)
    slow = C.measure({"loop": loop, "one_at_a_time": one_at_a_time},
                     repeats=settings.slow_repeats, min_time=0.0, warmup=0)
    result = {
        "dtype": np.dtype(dtype).name, "n": settings.n_rows,
        "t_batched": fast["batched"], "t_joint": fast["joint"],
        "t_loop": slow["loop"], "t_one_at_a_time": slow["one_at_a_time"],
        "batched_vs_joint": fast.ratio("batched", "joint"),
        "loop_vs_batched": slow["loop"] / fast["batched"],
        "one_at_a_time_vs_batched": slow["one_at_a_time"] / fast["batched"],
        "nfe_mean": float(counters["nfe_forward"].mean()),
        "nfe_max": int(counters["nfe_forward"].max()),
        "nfe_joint": counter["nfe"],
        "diff_loop": float((ys - ys_loop).abs().max()),
        "diff_joint": float((ys - ys_joint).abs().max()),
    }
    print(f"  torch {result['dtype']}: batched {C.fmt_ms(result['t_batched'])} ms, "
          f"loop x{result['loop_vs_batched']:.1f}, batched / joint "
          f"{result['batched_vs_joint']:.2f}", flush=True)
    return result


def bench_reference(settings) -> dict:
    from odeplug import ODEStats
    from odeplug._solver_options import make_solve_config
    from odeplug.reference.nn import mlp_field
    from odeplug.reference.solve import _integrate, odeint_rows

    config = make_solve_config("dopri5", rtol=RTOL, atol=ATOL)
    field = mlp_field("field", 2, "tanh", xp=np)
    params = field_params(np.float64)
    y0 = C.initial_state(settings.n_rows, DIM)
    t = np.array([0.0, T_END])

    def batched():
        return odeint_rows(field, y0, t, params, config)

    def loop():
        # The previous odeint_rows: each row through the one-problem stepper alone.
        ys = np.empty((len(t),) + y0.shape)
        for i in range(y0.shape[0]):
            def fun(s, y):
                return field(np.float64(s), y.reshape(1, -1), params).reshape(-1)

            ys[:, i] = np.stack(_integrate(fun, y0[i].copy(), t, config, ODEStats(),
                                           traced=False))
        return ys

    ys, counters = batched()
    ys_loop = loop()
    times = C.measure({"batched": batched, "loop": loop}, repeats=settings.slow_repeats,
                      min_time=0.0)
    result = {
        "n": settings.n_rows, "t_batched": times["batched"], "t_loop": times["loop"],
        "loop_vs_batched": times.ratio("loop", "batched"),
        "nfe_mean": float(counters["nfe_forward"].mean()),
        "nfe_max": int(counters["nfe_forward"].max()),
        "diff_loop": float(np.abs(ys - ys_loop).max()),
    }
    print(f"  reference: batched {C.fmt_ms(result['t_batched'])} ms, loop "
          f"x{result['loop_vs_batched']:.1f}", flush=True)
    return result


def table(torch_rows: list[dict], reference: dict) -> str:
    rows = [[f"torch {r['dtype']}", r["n"], f"{r['nfe_mean']:.1f} / {r['nfe_max']}",
             r["nfe_joint"], C.fmt_ms(r["t_batched"]), C.fmt_ms(r["t_joint"]),
             C.fmt_ms(r["t_loop"]), C.fmt_ms(r["t_one_at_a_time"]),
             f"**{r['loop_vs_batched']:.1f}**", f"**{r['batched_vs_joint']:.2f}**",
             f"{r['diff_loop']:.1e}"] for r in torch_rows]
    r = reference
    rows.append(["reference float64", r["n"], f"{r['nfe_mean']:.1f} / {r['nfe_max']}", "",
                 C.fmt_ms(r["t_batched"]), "", C.fmt_ms(r["t_loop"]), "",
                 f"**{r['loop_vs_batched']:.1f}**", "", f"{r['diff_loop']:.1e}"])
    body = C.markdown_table(
        ["engine", "rows", "NFE per row mean / max", "NFE joint", "batched ms", "joint ms",
         "row loop ms", "batched=False ms", "loop / batched", "batched / joint",
         "max abs diff batched vs loop"], rows)
    worst_speedup = min(r["loop_vs_batched"] for r in torch_rows)
    worst_joint = max(r["batched_vs_joint"] for r in torch_rows)
    return (
        "### Row solver: many independent problems at batch speed\n\n"
        f"{N_ROWS} rows of the ODE-Net field (`mlp_field`, hidden {HIDDEN}, tanh, "
        f"D = {DIM}), `t = [0, {T_END:g}]`, dopri5, rtol {RTOL:g}, atol {ATOL:g}, no "
        "gradients (a prediction). **batched**: `odeint_rows`, each row its own adaptive "
        "steps, one field call per stage for all rows still running. **row loop**: each "
        "row solved alone (torch: the engine's `odeint` on one row, torchdiffeq; "
        "reference: its one-problem stepper), the previous `odeint_rows`. "
        "**batched=False**: the row solver one row at a time (bit-for-bit row "
        "independent). **joint**: one `torchdiffeq.odeint` of all rows as one state "
        "(shared steps: not a per-row solve; the floor of what a batch costs). NFE per "
        "row: the row solver's counters; NFE joint: evaluations of the whole batch. Max "
        "abs diff: the batched outputs against the row loop's (rounding of the batched "
        "products, amplified by the flow; float32 rows take a few other steps).\n\n"
        f"{body}\n\n"
        f"Targets: loop / batched >= 10 (worst {worst_speedup:.1f}: "
        f"**{'met' if worst_speedup >= 10 else 'not met'}**), batched / joint <= 2 (worst "
        f"{worst_joint:.2f}: **{'met' if worst_joint <= 2 else 'not met'}**).\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: prints only")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown file to write (default {C.DOCS}; none with --quick)")
    args = parser.parse_args()
    settings = argparse.Namespace(
        n_rows=100 if args.quick else N_ROWS,
        repeats=3 if args.quick else 15,
        slow_repeats=1 if args.quick else 3,
        min_time=0.0 if args.quick else 0.2,
    )
    start = time.perf_counter()
    print("[torch]", flush=True)
    torch_rows = [bench_torch(settings, dtype) for dtype in (np.float32, np.float64)]
    print("[reference]", flush=True)
    reference = bench_reference(settings)
    text = (
        "## Row solver\n\nWritten by `python tests/benchmarks/bench_rows.py`"
        + (" (quick mode)" if args.quick else "") + ". " + C.environment() + "\n\n"
        + table(torch_rows, reference)
        + f"\nTotal run time: {time.perf_counter() - start:.0f} s.\n"
    )
    print()
    print(text)
    output = args.output if args.output is not None else (None if args.quick else C.DOCS)
    if output is not None:
        C.write_section(SECTION, text, output)
        print(f"written to {output}")


if __name__ == "__main__":
    main()
