"""The torch engine's own stepper against torchdiffeq, the field alone and JAX (a script).

Run from the repository root, in one process, threads pinned to one::

    python tests/benchmarks/bench_torch_stepper.py            # writes docs/benchmarks.md
    python tests/benchmarks/bench_torch_stepper.py --quick    # smoke run, prints only
    python tests/benchmarks/bench_torch_stepper.py --estimator  # + ODEClassifier on digits
    python tests/benchmarks/bench_torch_stepper.py --compile  # + torch.compile of a step

The problem of issue #20: the MLP field ``W2 tanh(W1 y + b1) + b2`` (hidden 64, the
weights of ``_common.mlp_params``), float32, dopri5, ``rtol=1e-6``, ``atol=1e-8``,
``t = [0, 2.5]``, at ``(D, B) = (32, 256)`` and ``(2, 1)``:

* forward (no gradients): odeplug torch (own stepper), odeplug torch through torchdiffeq
  (``implementation="torchdiffeq"``), torchdiffeq called directly, odeplug jax
  (``jax.jit``), and ``NFE x`` one call of the field in torch;
* forward + backward of ``sum(y(t1)**2)`` w.r.t. the field's parameters, adjoint and
  backprop: odeplug torch against torchdiffeq called directly (torchode is not measured:
  it needs ``torchtyping``, which the project does not install);
* ``--estimator``: ``ODEClassifier()`` (default parameters) fitted on digits on torch
  and on jax in this process, end to end (compilation included), and per epoch;
* ``--compile``: one dopri5 step compiled by ``torch.compile`` against the eager step:
  compile time and time per step.

Medians of interleaved repeats of CPU time (``_common.measure``). Results: the
``torch_stepper`` section of ``docs/benchmarks.md`` and ``docs/bench_torch_stepper.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402, I001  (pins threads before numpy, torch or jax)
import numpy as np  # noqa: E402

SECTION = "torch_stepper"
CONFIGS = ((32, 256), (2, 1))
T_END = 2.5
JSON = C.REPO / "docs" / "bench_torch_stepper.json"


def torch_fields(p: dict[str, np.ndarray]):
    """The float32 field as modules: ``forward(t, y, args)`` for odeplug and
    ``forward(t, y)`` for torchdiffeq, each with its own copy of the weights."""
    torch = C.setup_torch()
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            hidden, dim = p["W1"].shape
            self.lin1, self.lin2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
            with torch.no_grad():
                for layer, w, b in ((self.lin1, "W1", "b1"), (self.lin2, "W2", "b2")):
                    layer.weight.copy_(torch.as_tensor(p[w], dtype=torch.float32))
                    layer.bias.copy_(torch.as_tensor(p[b], dtype=torch.float32))

        def field(self, y):
            return self.lin2(torch.tanh(self.lin1(y)))

    class Plug(MLP):
        def forward(self, t, y, args):
            return self.field(y)

    class Direct(MLP):
        def forward(self, t, y):
            return self.field(y)

    return Plug(), Direct()


def bench_case(dim: int, batch: int, settings) -> dict:
    torch = C.setup_torch()
    jax = C.setup_jax()
    import jax.numpy as jnp
    import torchdiffeq
    from odeplug_backends.torch.solve import odeint as torch_odeint

    import odeplug

    kw = {"rtol": C.RTOL, "atol": C.ATOL}
    config = odeplug.make_solve_config("dopri5", **kw)
    p = C.mlp_params(dim)
    plug, direct = torch_fields(p)
    y0 = torch.as_tensor(C.initial_state(batch, dim), dtype=torch.float32)
    t = torch.tensor([0.0, T_END], dtype=torch.float32)

    def clear():
        for module in (plug, direct):
            for q in module.parameters():
                q.grad = None

    def own(mode):
        clear()
        with torch.no_grad() if mode == "forward" else contextlib.nullcontext():
            ys = odeplug.odeint(plug, y0, t, adjoint=mode == "adjoint", **kw)
        if mode != "forward":
            ys[-1].pow(2).sum().backward()

    def via_torchdiffeq(mode):
        with torch.no_grad():
            torch_odeint(plug, y0, t, None, config, implementation="torchdiffeq",
                         count_backward=False)

    def td(mode):
        clear()
        if mode == "forward":
            with torch.no_grad():
                return torchdiffeq.odeint(direct, y0, t, method="dopri5", **kw)
        solve = torchdiffeq.odeint_adjoint if mode == "adjoint" else torchdiffeq.odeint
        ys = solve(direct, y0, t, method="dopri5", **kw)
        ys[-1].pow(2).sum().backward()

    def field_call():
        with torch.no_grad():
            plug(t[0], y0, None)

    # JAX, float32 arrays (x64 enabled for the other benchmarks: the dtype follows y0).
    pj = {k: jnp.asarray(v, dtype=jnp.float32) for k, v in p.items()}
    y0j, tj = jnp.asarray(np.asarray(y0)), jnp.asarray([0.0, T_END], dtype=jnp.float32)

    def jax_field(t, y, q):
        return jnp.tanh(y @ q["W1"].T + q["b1"]) @ q["W2"].T + q["b2"]

    jitted = jax.jit(lambda y, s, q: odeplug.odeint(jax_field, y, s, q, **kw))
    start = time.perf_counter()
    jax.block_until_ready(jitted(y0j, tj, pj))
    jax_compile = time.perf_counter() - start

    stats = {}
    for mode in ("forward", "backprop", "adjoint"):
        _, s = odeplug.odeint(plug, y0, t, adjoint=mode == "adjoint", return_stats=True, **kw)
        if mode != "forward":
            _[-1].pow(2).sum().backward()
        stats[mode] = {"nfe": s.nfe_forward, "nfe_backward": s.nfe_backward,
                       "steps": s.n_steps, "rejected": s.n_rejected}
    _, jstats = odeplug.odeint(jax_field, y0j, tj, pj, return_stats=True, **kw)
    _, tdstats = torch_odeint(plug, y0, t, None, config, implementation="torchdiffeq")
    nfe = stats["forward"]["nfe"]

    forward = C.measure({
        "odeplug_torch": lambda: own("forward"),
        "odeplug_torch_torchdiffeq": lambda: via_torchdiffeq("forward"),
        "torchdiffeq": lambda: td("forward"),
        "odeplug_jax": lambda: jax.block_until_ready(jitted(y0j, tj, pj)),
        "field": field_call,
    }, repeats=settings.repeats, min_time=settings.min_time)
    field_total = [nfe * x for x in forward.samples["field"]]
    row = {
        "D": dim, "B": batch, "stats": stats, "nfe_jax": jstats.nfe_forward,
        "nfe_torchdiffeq": tdstats.nfe_forward, "jax_compile_s": jax_compile,
        "forward_s": {name: forward[name] for name in forward.samples},
        "forward_vs_nfe_field": C.paired_ratio(forward.samples["odeplug_torch"],
                                               field_total),
        "forward_vs_jax": forward.ratio("odeplug_torch", "odeplug_jax"),
        "forward_vs_torchdiffeq": forward.ratio("odeplug_torch", "torchdiffeq"),
        "torchdiffeq_vs_nfe_field": C.paired_ratio(forward.samples["torchdiffeq"],
                                                   field_total),
    }
    for mode in ("adjoint", "backprop"):
        times = C.measure({"odeplug_torch": lambda m=mode: own(m),
                           "torchdiffeq": lambda m=mode: td(m)},
                          repeats=settings.repeats, min_time=settings.min_time)
        row[f"{mode}_s"] = {name: times[name] for name in times.samples}
        row[f"{mode}_vs_torchdiffeq"] = times.ratio("odeplug_torch", "torchdiffeq")
    print(json.dumps(row, indent=1, default=float), flush=True)
    return row


def bench_compile(settings) -> dict:
    """One dopri5 step (the six stages, candidate and error) compiled against eager."""
    torch = C.setup_torch()
    from odeplug._tableaus import DOPRI5

    plug, _ = torch_fields(C.mlp_params(32))
    y = torch.as_tensor(C.initial_state(256, 32), dtype=torch.float32)
    a = [torch.tensor(row, dtype=torch.float32) for row in DOPRI5.a]
    b_error = torch.tensor(DOPRI5.b_error, dtype=torch.float32)

    def step(y, f0, h):
        ks = [f0]
        for i in range(1, 7):
            yi = y + h * torch.einsum("s,s...->...", a[i], torch.stack(ks))
            ks.append(plug.field(yi))
        return yi, h * torch.einsum("s,s...->...", b_error, torch.stack(ks)), ks[-1]

    h = torch.tensor(0.01)
    with torch.no_grad():
        f0 = plug.field(y)
        start = time.perf_counter()
        compiled = torch.compile(step, dynamic=False)
        compiled(y, f0, h)
        compile_s = time.perf_counter() - start
        times = C.measure({"eager": lambda: step(y, f0, h),
                           "compiled": lambda: compiled(y, f0, h)},
                          repeats=settings.repeats, min_time=settings.min_time)
    row = {"compile_s": compile_s, "eager_s": times["eager"],
           "compiled_s": times["compiled"],
           "compiled_vs_eager": times.ratio("compiled", "eager")}
    print(row, flush=True)
    return row


def bench_estimator(settings) -> dict:
    """ODEClassifier() on digits in this process, compilation included (CPU time of the
    process, fair on a shared machine; imports warmed up first): torch on the own
    stepper, torch through torchdiffeq (the engine before issue #20), then jax; a second
    fit of torch and jax (compiled, cached)."""
    C.setup_torch()
    C.setup_jax()
    import functools

    import odeplug_backends.torch.odenet as torch_odenet
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    import odeplug
    from odeplug import ODEClassifier

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    own_odeint = torch_odenet.odeint
    # The process's one-time imports, outside every timing: a tiny solve on each path.
    import jax.numpy as jnp
    import torch

    for implementation in ("odeplug", "torchdiffeq"):
        own_odeint(lambda t, z, a: -z, torch.ones(2), torch.tensor([0.0, 1.0]), None,
                   odeplug.make_solve_config(), implementation=implementation)
    odeplug.odeint(lambda t, z, a: -z, jnp.ones(2), jnp.array([0.0, 1.0]))
    cases = {
        "torch": ("torch", own_odeint),
        "torch_torchdiffeq": ("torch", functools.partial(own_odeint,
                                                         implementation="torchdiffeq")),
        "jax": ("jax", None),
    }
    out = {}
    for name, (engine, odeint) in cases.items():
        if odeint is not None:
            torch_odenet.odeint = odeint
        try:
            model = ODEClassifier(backend=engine, random_state=0)
            if settings.quick:
                model.set_params(max_iter=2)
            fits = []
            for _ in range(1 if name == "torch_torchdiffeq" else 2):
                start = C.CLOCK()
                model.fit(X, y)
                fits.append(C.CLOCK() - start)
        finally:
            torch_odenet.odeint = own_odeint
        out[name] = {"first_fit_s": fits[0], "second_fit_s": fits[-1] if len(fits) > 1
                     else None, "n_iter": int(model.n_iter_),
                     "train_accuracy": model.score(X, y)}
        print(name, out[name], flush=True)
    out["first_fit_ratio"] = out["torch"]["first_fit_s"] / out["jax"]["first_fit_s"]
    out["second_fit_ratio"] = out["torch"]["second_fit_s"] / out["jax"]["second_fit_s"]
    out["own_vs_torchdiffeq_first_fit"] = (out["torch"]["first_fit_s"]
                                           / out["torch_torchdiffeq"]["first_fit_s"])
    return out


def report(result: dict) -> str:
    lines = [
        "## The torch engine's own stepper (issue #20)",
        "",
        "`python tests/benchmarks/bench_torch_stepper.py` (one process). "
        + result.get("environment", ""),
        "",
        "MLP field (hidden 64), float32, dopri5, rtol 1e-6, atol 1e-8, t = [0, 2.5]; "
        "milliseconds (medians of CPU time); ratios are medians of paired samples.",
        "",
    ]
    rows = []
    for r in result["cases"]:
        f = r["forward_s"]
        rows.append([
            f"{r['D']} x {r['B']}", r["stats"]["forward"]["nfe"], r["nfe_torchdiffeq"],
            r["nfe_jax"], C.fmt_ms(f["odeplug_torch"]), C.fmt_ms(f["torchdiffeq"]),
            C.fmt_ms(f["odeplug_torch_torchdiffeq"]), C.fmt_ms(f["odeplug_jax"]),
            f"{r['forward_vs_nfe_field']:.2f}", f"{r['torchdiffeq_vs_nfe_field']:.2f}",
            f"{r['forward_vs_jax']:.2f}", f"{r['forward_vs_torchdiffeq']:.2f}",
        ])
    lines.append("Forward solve (no gradients); targets: own / (NFE x field) <= 1.5, "
                 "own / jax <= 2.")
    lines.append("")
    met = [r for r in result["cases"]
           if r["forward_vs_nfe_field"] <= 1.5 and r["forward_vs_jax"] <= 2.0]
    verdict = ("met" if len(met) == len(result["cases"]) else
               f"not met ({len(result['cases']) - len(met)} of {len(result['cases'])} cases)")
    lines.append(C.markdown_table(
        ["D x B", "NFE", "NFE torchdiffeq", "NFE jax", "own ms", "torchdiffeq ms",
         "odeplug via torchdiffeq ms", "jax ms", "own / (NFE x field)",
         "torchdiffeq / (NFE x field)", "own / jax", "own / torchdiffeq"], rows))
    lines += ["", f"Forward targets {verdict}. The own stepper takes the reference "
              "engine's steps (the NFE column equals the reference engine's on the same "
              "problem: `tests/backends/test_torch_stepper.py`) at 0.4x torchdiffeq's time; "
              "what remains above the field's own cost is eager Python per stage (about "
              "one `addmv`, one time tensor and one copy), which dominates at D=2, B=1, "
              "where one field call costs tens of microseconds and JAX's compiled loop "
              "none of that.",
              "", "Forward + backward of `sum(y(t1)**2)` w.r.t. the field's parameters "
              "(torchode not measured: it needs `torchtyping`, not installed).", ""]
    rows = []
    for r in result["cases"]:
        for mode in ("adjoint", "backprop"):
            s = r["stats"][mode]
            rows.append([f"{r['D']} x {r['B']}", mode, s["nfe"], s["nfe_backward"],
                         C.fmt_ms(r[f"{mode}_s"]["odeplug_torch"]),
                         C.fmt_ms(r[f"{mode}_s"]["torchdiffeq"]),
                         f"{r[f'{mode}_vs_torchdiffeq']:.2f}"])
    lines.append(C.markdown_table(["D x B", "gradient", "NFE forward", "NFE backward",
                                   "own ms", "torchdiffeq ms", "own / torchdiffeq"], rows))
    if "compile" in result:
        c = result["compile"]
        lines += ["", f"`torch.compile` of one dopri5 step (D=32, B=256): compiling took "
                  f"{c['compile_s']:.1f} s; a step costs {C.fmt_ms(c['compiled_s'])} ms "
                  f"compiled against {C.fmt_ms(c['eager_s'])} ms eager (ratio "
                  f"{c['compiled_vs_eager']:.2f}). The stepper stays eager."]
    if "estimator" in result:
        e = result["estimator"]
        lines += ["", "`ODEClassifier()` on digits (default parameters), in one process, "
                  "CPU seconds of the process (threads pinned to one)"
                  + (f" ({result['estimator_environment']})"
                     if "estimator_environment" in result else "") + ":", "",
                  C.markdown_table(
                      ["engine", "first fit (compilation included)", "second fit",
                       "iterations"],
                      [[k, f"{e[k]['first_fit_s']:.1f}",
                        "-" if e[k].get("second_fit_s") is None
                        else f"{e[k]['second_fit_s']:.1f}", e[k]["n_iter"]]
                       for k in ("torch", "torch_torchdiffeq", "jax") if k in e]),
                  "", f"torch / jax: {e['first_fit_ratio']:.2f} first fit, "
                  f"{e['second_fit_ratio']:.2f} second fit (target <= 1.5)."]
        if "own_vs_torchdiffeq_first_fit" in e:
            lines.append(f"The own stepper's first fit takes "
                         f"{e['own_vs_torchdiffeq_first_fit']:.2f}x that of torch through "
                         "torchdiffeq (the engine before issue #20).")
    return "\n".join(lines)


def _loads() -> str:
    return ("load average (1, 5, 15 min) after the fits: "
            + ", ".join(f"{v:.1f}" for v in os.getloadavg()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--estimator", action="store_true")
    parser.add_argument("--estimator-only", action="store_true",
                        help="only the estimator, merged into the existing JSON")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--from-json", action="store_true",
                        help="rewrite the section from docs/bench_torch_stepper.json")
    settings = parser.parse_args()
    settings.repeats, settings.min_time = (3, 0.01) if settings.quick else (9, 0.2)
    if settings.from_json:
        print(report(json.loads(JSON.read_text())))
        C.write_section(SECTION, report(json.loads(JSON.read_text())))
        return
    if settings.estimator_only:
        result = json.loads(JSON.read_text())
        result["estimator"] = bench_estimator(settings)
        result["estimator_environment"] = _loads()
        text = report(result)
        print(text)
        if not settings.quick:
            C.write_section(SECTION, text)
            JSON.write_text(json.dumps(result, indent=1, default=float) + "\n")
        return
    result = {"cases": [bench_case(dim, batch, settings) for dim, batch in CONFIGS]}
    result["environment"] = (C.environment() + " Load average (1, 5, 15 min) at the end: "
                             + ", ".join(f"{v:.1f}" for v in os.getloadavg())
                             + " (a machine shared with other work: wall times of the "
                             "estimator fits are inflated alike on both engines).")
    if settings.compile:
        result["compile"] = bench_compile(settings)
    if settings.estimator:
        result["estimator"] = bench_estimator(settings)
    text = report(result)
    print(text)
    if not settings.quick:
        C.write_section(SECTION, text)
        JSON.write_text(json.dumps(result, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
