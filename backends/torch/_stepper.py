"""odeplug's own Runge-Kutta stepper on torch tensors.

The reference engine's loop (``odeplug.reference.solve._integrate``) over torch: the same
tableaus (``odeplug._tableaus``), the same controller, first step, fixed grid and
failure thresholds (``odeplug._stepping``, on Python floats), the same dense output and
the same evaluation count, so that a torch solve takes the reference engine's steps.

States are flat here (the caller reshapes for the field). Two ways to combine stages:

* without autograd (inference, the adjoint's forward and backward solves) the stages
  live in one ``(S, N)`` buffer and each stage's state is one ``addmv``;
* under autograd (backpropagation through the solver) the stages stay a list, stacked
  for each combination, so that the graph holds every stage exactly once.

Step-size decisions are made on the host: one synchronisation per adaptive step (the
error ratio, read as a float), none per stage. A fixed-step solve never synchronises;
its outputs are checked once at the end by the caller.

Why not ``torch.compile``, measured on the project's 2-core CPU (torch 2.13,
``tests/benchmarks/bench_torch_stepper.py --compile``, ``docs/benchmarks.md``): one
dopri5 step of the benchmark's MLP field (D=32, B=256) took 77 s to compile and then
ran in 0.64x the eager step's time (0.57 ms against 0.90 ms). A default
``ODEClassifier`` fit takes about 900 training steps of some 50 RK steps each: at best
some 15 s saved against more than a minute of compilation per shape and solver (and the
backward graphs would compile on top), so the first fit would be slower than eager.
The stepper stays eager, with one or two tensor operations per stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from odeplug._dense import hermite, linear, powers
from odeplug._solver_options import ODESolveConfig, ODEStats
from odeplug._stepping import (
    SCALARS,
    SNAP_ULPS,
    fixed_step_count,
    fixed_step_end,
    initial_step,
    step_factor,
    step_size_underflow,
)
from odeplug._tableaus import TABLEAUS, ButcherTableau
from odeplug.exceptions import SolverError

__all__ = ["integrate"]


@dataclass(frozen=True)
class _Method:
    """A tableau as tensors of one dtype and device."""

    tableau: ButcherTableau
    rows: tuple[torch.Tensor, ...]  # rows[i] = a[i, :i]
    b: torch.Tensor
    b_error: torch.Tensor | None
    b_dense: torch.Tensor | None  # (S, P)
    b_dense_host: np.ndarray | None

    @classmethod
    def of(cls, name: str, dtype: torch.dtype, device: torch.device) -> _Method:
        key = (name, dtype, device)
        method = _METHODS.get(key)
        if method is None:
            tab = TABLEAUS[name]

            def as_tensor(values):
                return None if values is None else torch.tensor(values, dtype=dtype,
                                                                device=device)

            a = tab.matrix(np.float64)
            method = cls(
                tab, tuple(as_tensor(a[i, :i]) for i in range(tab.n_stages)),
                as_tensor(tab.b), as_tensor(tab.b_error), as_tensor(tab.b_dense),
                None if tab.b_dense is None else np.asarray(tab.b_dense),
            )
            _METHODS[key] = method
        return method


_METHODS: dict[tuple, _Method] = {}


def _combine(y, h, weights, stages, buffer, count):
    """``y + h * sum_j weights[j] stages[j]`` over the first ``count`` stages."""
    if buffer is not None and not isinstance(h, torch.Tensor):
        return torch.addmv(y, buffer[:count].T, weights, alpha=h)
    return y + h * (torch.stack(stages[:count], dim=1) @ weights)


def _error(h, weights, stages, buffer):
    """The local error estimate ``h * sum_j weights[j] stages[j]``, outside autograd."""
    with torch.no_grad():
        if buffer is not None:
            return torch.mv(buffer.T, weights) * h
        return (torch.stack([k.detach() for k in stages], dim=1) @ weights) * h


def integrate(fun: Callable, y0: torch.Tensor, ts_host: np.ndarray, config: ODESolveConfig,
              stats: ODEStats, *, ts: torch.Tensor | None = None, rtol: float | None = None,
              atol: float | None = None, norm_size: int | None = None,
              fail: Callable | None = None) -> list[torch.Tensor]:
    """Solve ``dy/ds = fun(s, y)`` on the increasing grid ``ts_host``; the flat states at
    those times, as a list.

    Parameters
    ----------
    fun : callable
        ``fun(s, y)`` on flat states; ``s`` a 0-d tensor of the state's dtype.
    y0 : torch.Tensor of shape ``(N,)``
    ts_host : ndarray of float64
        The output times (increasing).
    config : ODESolveConfig
    stats : ODEStats
        ``nfe_forward``, ``n_steps`` and ``n_rejected`` grow as the solve runs.
    ts : torch.Tensor, optional
        The same times as a tensor that requires grad: the field then sees times that
        depend on it (the reference engine's construction), so gradients reach them.
    rtol, atol : float, optional
        Default: ``config``'s.
    norm_size : int, optional
        Only the first entries enter the error norm (the adjoint's seminorm).
    fail : callable, optional
        ``fail(reason, message, s_reached, outputs)`` raises the caller's
        :class:`~odeplug.SolverError`; default: a plain one in the solve's own times.
    """
    dtype, device = y0.dtype, y0.device
    method = _Method.of(config.solver, dtype, device)
    tab = method.tableau
    n_stages = tab.n_stages
    rtol = config.rtol if rtol is None else rtol
    atol = config.atol if atol is None else atol
    grad = torch.is_grad_enabled()
    size = y0.shape[0] if norm_size is None else norm_size
    root_size = math.sqrt(max(size, 1))
    fail = fail or _plain_fail(ts_host)

    def norm(x):  # the RMS norm of the first ``size`` entries, as a 0-d tensor
        part = x if norm_size is None else x[:norm_size]
        return torch.linalg.vector_norm(part) / root_size

    n_out = len(ts_host)
    t_start, t_end = float(ts_host[0]), float(ts_host[-1])
    eps_t = SNAP_ULPS * max(1.0, abs(t_start), abs(t_end))
    traced_times = ts is not None and ts.requires_grad
    t_start_b = ts[0] if traced_times else t_start
    t_end_b = ts[-1] if traced_times else t_end

    def at(s):  # a time as the field sees it
        if isinstance(s, torch.Tensor):
            return s.to(dtype)
        return torch.tensor(s, dtype=dtype, device=device)

    outputs = [y0]
    next_out = 1
    t, y = t_start, y0
    f0 = fun(at(t_start_b), y0)
    stats.nfe_forward += 1
    buffer = None if grad else torch.empty((n_stages, y0.shape[0]), dtype=dtype, device=device)

    if config.adaptive:
        if config.first_step is None:
            with torch.no_grad():
                h = initial_step(SCALARS, lambda s, z: fun(at(s), z), t_start, y0.detach(),
                                 f0.detach(), tab.order, rtol, atol,
                                 lambda x: float(norm(x)))
            stats.nfe_forward += 1
        else:
            h = config.first_step
        inf = torch.tensor(math.inf, dtype=dtype, device=device)
    else:
        n_fixed = fixed_step_count(SCALARS, t_start, t_end, config.step_size)

    previous_inverse = 1.0
    rejected_non_finite = False
    attempts = accepted = 0
    while t < t_end:
        if config.adaptive:
            t1 = t + h
            if t1 >= t_end - eps_t:
                t1 = t_end
        else:
            t1 = fixed_step_end(SCALARS, t_start, t_end, config.step_size, accepted + 1,
                                n_fixed)
        h = t1 - t
        if step_size_underflow(SCALARS, t, h):
            if rejected_non_finite or not math.isfinite(h):
                fail("non_finite", f"non-finite state (h={h:.3g})", t, outputs)
            fail("step_size_underflow", f"step size underflow (h={h:.3g})", t, outputs)
        if attempts >= config.max_num_steps:
            fail("max_num_steps", f"max_num_steps={config.max_num_steps} exceeded", t,
                 outputs)
        attempts += 1
        last = t1 == t_end
        if traced_times:
            t_b = t_start_b + (t - t_start)
            h_b = (t_end_b - t_b) if last else h
        else:
            t_b, h_b = t, h

        # One step: the stages, the candidate and its error estimate.
        stages = [f0]
        if buffer is not None:
            buffer[0].copy_(f0)
        for i in range(1, n_stages):
            yi = _combine(y, h_b, method.rows[i], stages, buffer, i)
            k = fun(at(t_b + tab.c[i] * h_b), yi)
            stages.append(k)
            if buffer is not None:
                buffer[i].copy_(k)
        y1 = yi if tab.fsal else _combine(y, h_b, method.b, stages, buffer, n_stages)
        stats.nfe_forward += n_stages - 1

        if config.adaptive:
            error = _error(h, method.b_error, stages, buffer)
            scale = atol + rtol * torch.maximum(y.detach().abs(), y1.detach().abs())
            ratio = norm(error / scale)
            # A non-finite candidate is a rejection with the largest shrink, as on the
            # reference engine (a finite error over an infinite scale would read 0).
            ratio = torch.where(torch.isfinite(y1.detach()).all(), ratio, inf)
            ratio = float(ratio)  # the one synchronisation of a step
            accept, factor, previous_inverse = step_factor(SCALARS, ratio, previous_inverse,
                                                           tab.order, config)
            h = h * factor
            if not accept:
                stats.n_rejected += 1
                rejected_non_finite = not math.isfinite(ratio)
                continue

        stats.n_steps += 1
        accepted += 1
        f1 = stages[-1] if tab.fsal else None
        while next_out < n_out and ts_host[next_out] <= t1:
            if ts_host[next_out] == t1 and (not traced_times or last):
                outputs.append(y1)
            elif ts_host[next_out] == t1:
                # An output on the end of a step (not the last, whose end moves with
                # t[-1]): y1, moving as the solution does with the output time and with
                # the step's end (the reference engine's rule). The slope is the next
                # step's first stage: no extra evaluation; the offset is 0 in value.
                if f1 is None:
                    f1 = fun(at(t_b + h_b), y1)
                    stats.nfe_forward += 1
                offset = ts[next_out] - (t_b + h_b)
                outputs.append(y1 + (offset - offset.detach()).to(dtype) * f1)
            else:
                if f1 is None and tab.interpolation != "linear":
                    f1 = fun(at(t_end_b if last else t_b + h_b), y1)
                    stats.nfe_forward += 1
                t_out = ts[next_out] if traced_times else float(ts_host[next_out])
                x = (t_out - t_b) / h_b
                outputs.append(_dense(tab, method, x, h_b, y, y1, f0, f1, stages, buffer))
            next_out += 1
        if last:
            break
        if f1 is None:
            f1 = fun(at(t_b + h_b), y1)
            stats.nfe_forward += 1
        t, y, f0 = t1, y1, f1
    return outputs


def _dense(tab, method, x, h, y0, y1, f0, f1, stages, buffer):
    """Dense output at ``x`` in [0, 1] of a step: the tableau's interpolation."""
    kind = tab.interpolation
    if kind == "linear":
        return linear(x, y0, y1)
    if kind == "hermite":
        return hermite(x, h, y0, y1, f0, f1)
    if isinstance(x, torch.Tensor):
        exponents = torch.arange(1, method.b_dense.shape[1] + 1, device=y0.device,
                                 dtype=y0.dtype)
        weights = method.b_dense @ x.to(y0.dtype) ** exponents
    else:
        host = method.b_dense_host @ powers(x, method.b_dense_host.shape[1])
        weights = torch.as_tensor(host, dtype=y0.dtype).to(y0.device)
    return _combine(y0, h, weights, stages, buffer, len(stages))


def _plain_fail(ts_host: np.ndarray) -> Callable:
    def fail(reason: str, message: str, t_reached: float, outputs: list) -> Any:
        raise SolverError(
            f"{message} at t={t_reached:.6g} (solving from {ts_host[0]:.6g} to "
            f"{ts_host[-1]:.6g})", reason=reason, t=t_reached,
            ts=ts_host[: len(outputs)], ys=torch.stack(outputs).detach(),
        )

    return fail
