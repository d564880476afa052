"""``odeint`` on PyTorch: odeplug's own stepper and adjoint, or torchdiffeq.

By default (``implementation="odeplug"``) a solve runs on odeplug's own Runge-Kutta loop
(:mod:`._stepper`): the shared tableaus (``tsit5`` included), the shared controller (PI
included), first step, fixed grid, dense output and failure thresholds, so that it takes
the reference engine's steps and counts the same evaluations. Gradients flow by
backpropagation through the stepper, or by odeplug's adjoint (:class:`_AdjointSolve`, a
``torch.autograd.Function`` over the backward integration shared with the reference
engine, :mod:`odeplug._adjoint`).

``implementation="torchdiffeq"`` keeps the torchdiffeq path, to compare: the shared
vocabulary (:class:`odeplug.ODESolveConfig`) translated into torchdiffeq's methods and
options, with what odeplug adds to torchdiffeq:

* classical RK4 (torchdiffeq's ``"rk4"`` is the 3/8 rule) and a fixed-step grid identical
  to the reference engine's, so that fixed-step results agree across engines;
* ends exactly on ``t[-1]`` (torchdiffeq would step past it and interpolate);
* a step budget, and :class:`~odeplug.SolverError` instead of torchdiffeq's assertions,
  with the reference engine's reason, time reached and solution so far: a non-finite
  candidate step is a rejection with the largest shrink (the error norm reads NaN as
  inf), and only a step size that underflows after such rejections is ``non_finite``;
* live counters, the backward pass included.

Every touch of torchdiffeq's private API is in :mod:`._compat`. Either way:

* the vector field ``func(t, y, args)`` (diffrax style), with ``args`` a pytree of tensors
  that gradients reach, by backpropagation or by the adjoint method;
* :class:`odeplug.Constant` leaves of ``args``: passed to the field unwrapped and
  detached, never among the adjoint's parameters;
* ``odeint_rows``: many independent problems at batch speed, by the core's row solver.

Decreasing time grids are solved forwards in ``s = -t``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchdiffeq
from torch import nn

from odeplug._adjoint import augmented_dynamics, backsolve
from odeplug._constant import Constant
from odeplug._rows import solve_rows, solve_single
from odeplug._solver_options import (
    ADAPTIVE_SOLVERS,
    FIXED_STEP_SOLVERS,
    ODESolveConfig,
    ODEStats,
)
from odeplug._stepping import SCALARS, fixed_step_count, fixed_step_end, step_size_underflow
from odeplug._validation import check_field_output, check_initial_state, check_time_grid
from odeplug.exceptions import SolverError

from . import _compat, _row_arrays, _stepper

__all__ = ["odeint", "odeint_rows", "SOLVERS"]

_compat.register()

# odeplug's name -> torchdiffeq's method (odeplug's variants where they differ).
SOLVERS: dict[str, str] = _compat.METHODS


def odeint(
    func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig, *, check: bool = True,
    count_backward: bool = True, implementation: str = "odeplug",
) -> tuple[torch.Tensor, ODEStats]:
    """Solve ``dy/dt = func(t, y, args)`` on torch; see :func:`odeplug.odeint`.

    Parameters
    ----------
    func : callable or torch.nn.Module
        Vector field ``func(t, y, args)``; a module's parameters get gradients too.
    y0 : tensor or array_like
        Initial state, of any shape.
    t : tensor or array_like
        1-D strictly monotonic output times; gradients w.r.t. ``t`` flow if it requires
        grad.
    args : pytree of tensors or None
        Passed to ``func``; tensors that require grad get gradients, except those wrapped
        in :class:`odeplug.Constant` (passed unwrapped and detached).
    config : ODESolveConfig
        Validated solver settings.
    check : bool, default=True
        Check the settings, the inputs and the field (one extra evaluation). A model
        program that solves with the same field and settings at every training step, on
        tensors it made itself, checks its first solve and passes False after it: then
        ``y0`` and ``t`` must be tensors of one device, ``args`` a pytree of tensors of
        ``y0``'s dtype. A non-finite state still raises :class:`~odeplug.SolverError`.
    count_backward : bool, default=True
        Count the VJPs of backpropagation (``adjoint=False``) in ``stats.nfe_backward``,
        by a tensor hook per evaluation; False skips the hooks (``nfe_backward`` stays
        0). The adjoint's backward solve is always counted (its cost is nil).
    implementation : {"odeplug", "torchdiffeq"}, default="odeplug"
        ``"odeplug"``: odeplug's own stepper (:mod:`._stepper`, the reference engine's
        steps, every solver, the PI controller) and its own adjoint
        (:class:`_AdjointSolve`). ``"torchdiffeq"``: torchdiffeq's ``odeint`` and
        ``odeint_adjoint`` (no ``tsit5``, integral controller only), kept to compare.

    Returns
    -------
    ys : torch.Tensor of shape ``(len(t),) + y0.shape``
        Of ``y0``'s dtype and device.
    stats : ODEStats
        Filled in as the solve runs; ``nfe_backward`` grows during a backward pass.

    Raises
    ------
    SolverError
        As the reference engine's: reason, time reached, ``ts`` and ``ys`` (the outputs
        reached, detached) of the forward solve; ``ts`` and ``ys`` None for a failure of
        the adjoint's backward solve.
    """

    if implementation == "torchdiffeq":
        return _odeint_torchdiffeq(func, y0, t, args, config, check=check,
                                   count_backward=count_backward)
    if implementation != "odeplug":
        raise ValueError(f"implementation must be 'odeplug' or 'torchdiffeq', got "
                         f"{implementation!r}")
    if check:
        _check_config(config, implementation)
        y0, t, args, direction = _prepare(y0, t, args)
        if len(t) == 1:
            return _no_integration(y0)
        _check_field(func, y0, t, args, adjoint=config.adjoint is not None)
    else:
        direction = 1 if t[-1] > t[0] else -1
    field_args = _tree_map(_unwrap_constant, args)
    stats = ODEStats()
    s = t if direction > 0 else -t
    s_host = s.detach().cpu().numpy().astype(np.float64)
    if not config.adaptive:
        n_fixed = fixed_step_count(SCALARS, float(s_host[0]), float(s_host[-1]),
                                   config.step_size)
        if n_fixed > config.max_num_steps:
            _raise_fixed_step_failure(func, y0, t, field_args, config)
    problem = _Problem(func, field_args, tuple(y0.shape), direction, config, stats, s_host)
    if config.adjoint is None:
        fun = problem.flat_field(count_vjps=count_backward)
        outputs = _stepper.integrate(fun, y0.reshape(-1), s_host, config, stats,
                                     ts=s if s.requires_grad else None, fail=problem.fail)
        ys = torch.stack(outputs).reshape((len(s_host),) + problem.shape)
    else:
        params = _adjoint_params(func, args)
        ys = _AdjointSolve.apply(problem, y0, s, *params)
    if not config.adaptive and not bool(torch.isfinite(ys.detach()).all()):
        # Fixed steps are not checked one by one (that would synchronise a GPU each
        # step): the failure is found again, step by step, on the core's solver.
        _raise_fixed_step_failure(func, y0, t, field_args, config)
        problem.fail_on_outputs(ys)
    return ys, stats


def _odeint_torchdiffeq(func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig,
                        *, check: bool, count_backward: bool) -> tuple[torch.Tensor, ODEStats]:
    """``odeint`` through torchdiffeq (``implementation="torchdiffeq"``)."""
    if check:
        _check_config(config, "torchdiffeq")
        y0, t, args, direction = _prepare(y0, t, args)
        if len(t) == 1:
            return _no_integration(y0)
        _check_field(func, y0, t, args, adjoint=config.adjoint is not None)
    else:
        direction = 1 if t[-1] > t[0] else -1
    field_args = _tree_map(_unwrap_constant, args)

    stats = ODEStats()
    s = t if direction > 0 else -t  # torchdiffeq always solves forwards in time
    s_grid = s.detach().cpu().numpy()
    if not config.adaptive:
        n_fixed = fixed_step_count(SCALARS, float(s_grid[0]), float(s_grid[-1]),
                                   config.step_size)
        if n_fixed > config.max_num_steps:
            _raise_fixed_step_failure(func, y0, t, field_args, config)
    field = _Field(func, field_args, direction, stats, config, s_grid,
                   count_vjps=count_backward and config.adjoint is None)
    method = SOLVERS[config.solver]
    if config.adjoint is None:
        options = _solver_options(config, s, field, backward=False)
        ys = torchdiffeq.odeint(field, y0, s, rtol=config.rtol, atol=config.atol,
                                method=method, options=options)
    else:
        strategy = config.adjoint
        options = _solver_options(config, s.detach(), field, backward=False)
        adjoint_options = _solver_options(config, s.detach(), field, backward=True)
        ys = torchdiffeq.odeint_adjoint(
            field, y0, s, rtol=config.rtol, atol=config.atol, method=method, options=options,
            adjoint_rtol=config.rtol if strategy.rtol is None else strategy.rtol,
            adjoint_atol=config.atol if strategy.atol is None else strategy.atol,
            adjoint_method=method, adjoint_options=adjoint_options,
            adjoint_params=_adjoint_params(func, args),
        )
    field.forward_done = True
    if not config.adaptive and not bool(torch.isfinite(ys.detach()).all()):
        # Fixed steps are not checked one by one (that would synchronise a GPU each
        # step): the failure is found again, step by step, on the core's solver.
        _raise_fixed_step_failure(func, y0, t, field_args, config)
        _check_finite_outputs(ys, field)
    return ys, stats


def odeint_rows(
    func: Callable, y0: Any, t: Any, args: Any, config: ODESolveConfig, *,
    batched: bool = True,
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Solve each row of ``y0`` (shape ``(n, d)``) as its own problem, no gradients.

    Like ``odeplug.reference.solve.odeint_rows``, by the same row solver
    (:func:`odeplug._rows.solve_rows`, on torch tensors under ``torch.inference_mode``):
    every row gets its own adaptive steps, so its result and cost do not depend on the
    other rows (the adaptive cost per input of Chen et al.), and each iteration evaluates
    the field once per stage for every row still running. The steps are the reference
    engine's (its dense output too, for dopri8 as well), so a row agrees with that
    engine's solve of it to rounding, with the same counts. ``config.adjoint`` is
    ignored (nothing is differentiated).

    Parameters
    ----------
    func : callable
        ``func(t, y, args)`` on a batch of rows: ``y`` of shape ``(m, d)``, ``t`` of shape
        ``(m, 1)`` (the time of each row, ``y``'s dtype and device).
    y0 : tensor or array_like of shape ``(n, d)``
    t : tensor or array_like of shape ``(T,)`` or ``(n, T)``
        One grid for every row or one per row (NaN-padded at the end).
    args : pytree of tensors or None
        ``odeplug.Constant`` leaves are unwrapped.
    config : ODESolveConfig
    batched : bool, default=True
        False: one row at a time (bit-for-bit independent of the other rows, slower).

    Returns
    -------
    ys : torch.Tensor of shape ``(T, n, d)``
    counters : dict of str to numpy.ndarray of shape ``(n,)``
        ``nfe_forward``, ``n_steps`` and ``n_rejected`` of each row.
    """
    _check_config(config, "odeplug")
    # Inference mode: about 15% less per-operation overhead than no_grad, on a loop of
    # small operations.
    with torch.inference_mode():
        y0 = y0 if isinstance(y0, torch.Tensor) else _from_numpy(y0)
        check_initial_state(y0.detach().cpu().numpy())
        if y0.dim() != 2:
            raise ValueError(f"odeint_rows needs states of shape (n, d), got {tuple(y0.shape)}")
        t_host = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        args = _tree_map(lambda leaf: _as_tensor_on(leaf, y0.device), args)
        _check_args_dtypes(args, y0.dtype)
        field_args = _tree_map(_unwrap_constant, args)

        def fun(t_rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return func(t_rows, y, field_args)

        solution = solve_rows(_row_arrays.TORCH, fun, y0, t_host, config, batched=batched)
    return solution.ys, solution.counters()


def _raise_fixed_step_failure(func: Callable, y0: torch.Tensor, t: torch.Tensor, args: Any,
                              config: ODESolveConfig) -> None:
    """Raise the SolverError of a failed fixed-step solve, found by the core's solver.

    The same grid and tableau as the torch solve (its numbers agree to rounding), checked
    step by step: the reason, the time reached and the outputs so far are the reference
    engine's. Returns only if that solve succeeds (rounding), for the caller to report.
    """
    shape = tuple(y0.shape)

    def fun(t_value: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return func(t_value, y, args)

    with torch.inference_mode():
        solve_single(_row_arrays.TORCH, fun, y0.detach().reshape(shape), t.detach().cpu().numpy(),
                     config)


def _check_config(config: ODESolveConfig, implementation: str) -> None:
    """What of the shared vocabulary the implementation cannot do."""
    if config.solver in ADAPTIVE_SOLVERS and not config.adaptive:
        # Only a hand-built ODESolveConfig gets here (make_solve_config refuses it).
        raise ValueError(
            f"the torch engine runs {config.solver!r} with adaptive steps only; for a fixed "
            f"step_size use one of {list(FIXED_STEP_SOLVERS)}"
        )
    if implementation == "odeplug":
        return
    if config.solver not in SOLVERS:
        raise ValueError(
            f"the torch engine (torchdiffeq) has no solver {config.solver!r}; "
            f"it has {list(SOLVERS)}"
        )
    if config.adaptive and (config.pcoeff != 0.0 or config.icoeff != 1.0):
        raise ValueError(
            "the torch engine's step-size controller (torchdiffeq's) is integral only: "
            f"it needs pcoeff=0 and icoeff=1, got pcoeff={config.pcoeff}, "
            f"icoeff={config.icoeff}"
        )


def _no_integration(y0: torch.Tensor) -> tuple[torch.Tensor, ODEStats]:
    """The solve on a grid of one time: ``y0`` (a copy, differentiable), nothing
    counted, as on the reference engine (and torchdiffeq)."""
    return y0.unsqueeze(0).clone(), ODEStats()


def _prepare(y0: Any, t: Any, args: Any) -> tuple[torch.Tensor, torch.Tensor, Any, int]:
    """Checked tensors: the state, the time grid on its device, ``args``; the direction."""
    y0 = y0 if isinstance(y0, torch.Tensor) else _from_numpy(y0)
    check_initial_state(y0.detach().cpu().numpy())
    if not isinstance(t, torch.Tensor):
        t = _from_numpy(t)
    direction = check_time_grid(t.detach().cpu().numpy())
    if not t.is_floating_point():
        t = t.to(torch.float64)
    t = t.to(y0.device)
    args = _tree_map(lambda leaf: _as_tensor_on(leaf, y0.device), args)
    return y0, t, args, direction


# ------------------------------------------------------------ odeplug's own stepping


class _Problem:
    """One solve on the own stepper: the field on flat states in ``s = direction * t``,
    its VJP for the adjoint, and the failures in the caller's times."""

    def __init__(self, func: Callable, args: Any, shape: tuple, direction: int,
                 config: ODESolveConfig, stats: ODEStats, s_host: np.ndarray):
        self.func, self.args, self.shape, self.direction = func, args, shape, direction
        self.config, self.stats, self.s_host = config, stats, s_host

    def flat_field(self, count_vjps: bool = False) -> Callable:
        func, args, shape, stats = self.func, self.args, self.shape, self.stats

        def count(grad: torch.Tensor) -> None:
            stats.nfe_backward += 1

        def fun(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if self.direction > 0:
                dy = func(s, y.view(shape), args)
            else:
                dy = -func(-s, y.view(shape), args)
            if count_vjps and dy.requires_grad:
                # Backpropagation passes through dy once per VJP of the field.
                dy.register_hook(count)
            return dy.reshape(-1)

        return fun

    def fail(self, reason: str, message: str, s_reached: float, outputs: list,
             backward: bool = False) -> None:
        t_reached = self.direction * float(s_reached)
        t0, t1 = self.direction * self.s_host[0], self.direction * self.s_host[-1]
        if backward:
            span, ts, ys = f"in the adjoint's backward solve from {t1:.6g} to {t0:.6g}", \
                None, None
        else:
            span = f"solving from {t0:.6g} to {t1:.6g}"
            ts = self.direction * self.s_host[: len(outputs)]
            ys = torch.stack(outputs).detach().reshape((len(outputs),) + self.shape)
        raise SolverError(f"{message} at t={t_reached:.6g} ({span})", reason=reason,
                          t=t_reached, ts=ts, ys=ys)

    def fail_on_outputs(self, ys: torch.Tensor) -> None:
        """The error of a fixed-step solve whose outputs are not all finite."""
        finite = torch.isfinite(ys.detach()).reshape(len(ys), -1).all(dim=1)
        first = int(torch.argmin(finite.to(torch.int8)))
        outputs = list(ys[:first].detach().reshape(first, -1))
        self.fail("non_finite", "non-finite state", self.s_host[first], outputs)


class _AdjointSolve(torch.autograd.Function):
    """The own stepper's solve, differentiated by the adjoint method (Chen et al. 2018,
    Algorithm 1; :func:`odeplug._adjoint.backsolve`, shared with the reference engine).

    The forward solve records no graph: memory holds the outputs only, whatever the
    number of steps. The backward solve integrates ``[y, a, a_theta]`` interval by
    interval, each evaluation one VJP of the field by ``torch.autograd.grad``.
    """

    @staticmethod
    def forward(ctx, problem: _Problem, y0: torch.Tensor, s: torch.Tensor,
                *params: torch.Tensor) -> torch.Tensor:
        fun = problem.flat_field()
        outputs = _stepper.integrate(fun, y0.reshape(-1), problem.s_host, problem.config,
                                     problem.stats, fail=problem.fail)
        ys = torch.stack(outputs)
        ctx.problem, ctx.params, ctx.s_dtype = problem, params, s.dtype
        ctx.save_for_backward(ys)
        return ys.reshape((len(outputs),) + problem.shape)

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        problem, params = ctx.problem, ctx.params
        (ys,) = ctx.saved_tensors
        config, strategy = problem.config, problem.config.adjoint
        n_state = ys.shape[1]
        fun = problem.flat_field()
        dtype = ys.dtype if not params else torch.promote_types(ys.dtype, params[0].dtype)
        sizes = [p.numel() for p in params]

        def vjp(s, y, a):
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                dy = fun(s, y)
                if dy.requires_grad:
                    grads = torch.autograd.grad(dy, (y, *params), a, allow_unused=True)
                else:  # a field that reads neither y nor the parameters (f(t) only)
                    grads = (None,) * (1 + len(params))
            a_theta = [torch.zeros(n, dtype=dtype, device=ys.device) if grad is None
                       else grad.reshape(-1).to(dtype)
                       for grad, n in zip(grads[1:], sizes, strict=True)]
            a_y = torch.zeros_like(y) if grads[0] is None else grads[0]
            return dy.detach(), a_y, torch.cat(a_theta) if a_theta else a_y[:0]

        augmented = augmented_dynamics(vjp, n_state, torch.cat)
        backward_stats = ODEStats()

        def fail(reason, message, r_reached, outputs):
            problem.fail(reason, message, -r_reached, outputs, backward=True)

        def solve_interval(z, r0, r1):
            return _stepper.integrate(
                augmented, z, np.array([r0, r1]), config, backward_stats,
                rtol=strategy.rtol, atol=strategy.atol,
                norm_size=2 * n_state if strategy.seminorm else None, fail=fail,
            )[-1]

        want_ts = ctx.needs_input_grad[2]
        g = grad_ys.reshape(len(ys), -1)
        s_host = problem.s_host
        a_theta = torch.zeros(sum(sizes), dtype=dtype, device=ys.device)
        with torch.no_grad():
            a, a_theta, grad_ts = backsolve(
                s_host.tolist(), ys, g, a_theta, n_state=n_state,
                solve_interval=solve_interval, concat=torch.cat,
                field=(lambda s, y: fun(torch.tensor(s, dtype=ys.dtype, device=ys.device), y))
                if want_ts else None,
                dot=torch.dot,
            )
        problem.stats.nfe_backward += backward_stats.nfe_forward + (len(ys) if want_ts else 0)
        grad_s = torch.stack(grad_ts).to(ctx.s_dtype) if want_ts else None
        grad_params = []
        for p, piece in zip(params, torch.split(a_theta, sizes), strict=True):
            grad_params.append(piece.reshape(p.shape).to(p.dtype))
        return (None, a.reshape(problem.shape), grad_s, *grad_params)


# ------------------------------------------------------------------------ the field


class _Field:
    """``func(t, y, args)`` as torchdiffeq's ``f(s, y)``, with counters and checks.

    ``s = direction * t``. torchdiffeq calls the ``callback_*`` methods once per step;
    they count steps, enforce the step budget and turn torchdiffeq's assertions (step
    size underflow, non-finite state) into :class:`SolverError` before they fire, with
    the reference engine's thresholds (``odeplug._stepping``). :meth:`norm` is the error
    norm of the forward solve.

    A plain callable, not an ``nn.Module``: the adjoint is given its parameters
    explicitly, and a module's ``__call__`` and attribute lookup would cost about a tenth
    of a small field's evaluation.
    """

    def __init__(self, func: Callable, args: Any, direction: int, stats: ODEStats,
                 config: ODESolveConfig, s_grid: np.ndarray, count_vjps: bool = False):
        self.func = func
        self.count_vjps = count_vjps
        self.args = args
        self.direction = direction
        self.stats = stats
        self.config = config
        self.s_grid = s_grid
        self.s_list = s_grid.tolist()
        # Evaluations after the forward solve belong to the adjoint's backward solve.
        self.forward_done = False
        self.attempts = 0
        self.backward_interval = -1
        self.backward_attempts = 0
        # The error ratio of the last step decided, and that of the last rejected one
        # (tensors: read only if the solve fails, no synchronisation per step).
        self.last_ratio: torch.Tensor | None = None
        self.last_rejected_ratio: torch.Tensor | None = None
        if config.adaptive:
            # Only adaptive solvers accept these (fixed-step ones warn about them).
            self.callback_accept_step = self._accept_step
            self.callback_reject_step = self._reject_step

    def __call__(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.direction > 0:
            dy = self.func(s, y, self.args)
        else:
            dy = -self.func(-s, y, self.args)
        if self.forward_done:
            self.stats.nfe_backward += 1  # one evaluation of the augmented dynamics
            return dy
        self.stats.nfe_forward += 1
        if self.count_vjps and dy.requires_grad:
            # Backpropagation passes through dy once per VJP of the field: count them
            # (a hook costs a fifth of an autograd.Function per evaluation).
            dy.register_hook(self._count_vjp)
        return dy

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """torchdiffeq's RMS norm, with NaN read as inf: a step whose candidate is not
        finite is then rejected with the largest shrink (``dfactor``), as on the
        reference engine, where torchdiffeq would make its step size NaN and stop."""
        ratio = torch.nan_to_num(x.abs().pow(2).mean().sqrt(), nan=math.inf)
        self.last_ratio = ratio
        return ratio

    def _count_vjp(self, grad: torch.Tensor) -> None:
        self.stats.nfe_backward += 1

    # torchdiffeq's callbacks: (t0, y0, dt) of the step about to be taken / just decided.
    def callback_step(self, s0: torch.Tensor, y0: Any, ds: torch.Tensor) -> None:
        self.attempts += 1
        if not self.config.adaptive:
            self.stats.n_steps += 1
        self._check_step(s0, ds, self.attempts, backward=False)

    def _accept_step(self, s0: torch.Tensor, y0: Any, ds: torch.Tensor) -> None:
        self.stats.n_steps += 1

    def _reject_step(self, s0: torch.Tensor, y0: Any, ds: torch.Tensor) -> None:
        self.stats.n_rejected += 1
        if not self.forward_done:
            self.last_rejected_ratio = self.last_ratio

    def callback_step_adjoint(self, s0: torch.Tensor, y0: Any, ds: torch.Tensor) -> None:
        # The backward solve runs interval by interval (t[i] to t[i-1]); like the
        # reference engine's, each interval has its own budget.
        interval = bisect.bisect_left(self.s_list, _float(s0))
        if interval != self.backward_interval:
            self.backward_interval, self.backward_attempts = interval, 0
        self.backward_attempts += 1
        self._check_step(s0, ds, self.backward_attempts, backward=True)

    def _check_step(self, s0: torch.Tensor, ds: torch.Tensor, attempts: int, backward: bool):
        # The reference engine's order: a step too small to take, then the budget.
        if self.config.adaptive:
            # Python floats: cheaper than tensor comparisons, and torchdiffeq's times are
            # float64 already.
            s, h = _float(s0), _float(ds)
            if not h > 0:
                # torchdiffeq makes a non-finite step size its min_step, 0: a non-finite
                # error ratio got past the norm (the adjoint's own norm of the
                # parameter channels, which odeplug does not replace).
                self._fail("non_finite", "non-finite state", s, backward)
            if step_size_underflow(SCALARS, s, h):
                rejected = self.last_rejected_ratio
                if not backward and rejected is not None and bool(torch.isinf(rejected)):
                    self._fail("non_finite", f"non-finite state (h={h:.3g})", s)
                self._fail("step_size_underflow", f"step size underflow (h={h:.3g})", s,
                           backward)
        if attempts > self.config.max_num_steps:
            self._fail("max_num_steps", f"max_num_steps={self.config.max_num_steps} exceeded",
                       s0, backward)

    def _fail(self, reason: str, message: str, s_reached: Any, backward: bool = False,
              ys: torch.Tensor | None = None):
        s_reached = _float(s_reached)
        t_reached = self.direction * s_reached
        t0, t1 = self.direction * self.s_grid[0], self.direction * self.s_grid[-1]
        span = f"solving from {t0:.6g} to {t1:.6g}"
        if backward:
            span = f"in the adjoint's backward solve from {t1:.6g} to {t0:.6g}"
        if ys is not None:
            ts = self.direction * self.s_grid[: len(ys)]
        elif not backward:
            # The outputs at the times reached: the solver adds them (_compat.KeepsOutputs).
            ts = self.direction * self.s_grid[self.s_grid <= s_reached]
        else:
            ts = None
        raise SolverError(f"{message} at t={t_reached:.6g} ({span})", reason=reason,
                          t=t_reached, ts=ts, ys=ys)


def _check_finite_outputs(ys: torch.Tensor, field: _Field) -> None:
    finite = torch.isfinite(ys.detach()).reshape(len(ys), -1).all(dim=1)
    if not bool(finite.all()):
        first = int(torch.argmin(finite.to(torch.int8)))
        field._fail("non_finite", "non-finite state", field.s_grid[first], ys=ys[:first].detach())


# -------------------------------------------------------------------------- options


def _solver_options(config: ODESolveConfig, s: torch.Tensor, field: _Field,
                    backward: bool) -> dict:
    """torchdiffeq's options for the forward solve or for the adjoint's backward solve.

    ``s`` is the increasing time grid (detached for the adjoint).
    """
    if config.solver in FIXED_STEP_SOLVERS:
        return {
            "grid_constructor": _fixed_grid(config.step_size),
            # The reference engine's dense output: linear for Euler, else cubic Hermite.
            "interp": "linear" if config.solver == "euler" else "cubic",
        }
    options: dict[str, Any] = {
        "safety": config.safety,
        "ifactor": config.factormax,
        "dfactor": config.factormin,
        # Land exactly on t[-1] rather than step past it and interpolate back. The
        # backward solve runs one output interval at a time, so it must land on every
        # output time; so must dopri8, whose dense output in torchdiffeq is only a
        # quartic, far less accurate than its steps.
        "step_t": s if backward or config.solver == "dopri8" else s[-1:],
    }
    if backward:
        seminorm = config.adjoint is not None and config.adjoint.seminorm
        options["norm"] = _augmented_norm(seminorm)
    else:
        options["norm"] = field.norm
    if config.first_step is not None:
        options["first_step"] = config.first_step
    return options


def _augmented_norm(seminorm: bool) -> Callable:
    """The reference engine's error norm of the adjoint's backward solve: the RMS of the
    augmented state ``[y, a, a_theta]`` (seminorm: of ``[y, a]`` only), NaN read as inf.

    torchdiffeq gives a norm of the backward solve the state as ``(a_t, y, a, *a_theta)``
    (public: its ``adjoint_options["norm"]``); its default, the largest of separate norms
    and of ``|a_t|``, would take other steps than the reference engine. ``a_t``, the
    gradient w.r.t. time, is not in the reference's augmented state either.
    """

    def norm(state: tuple) -> torch.Tensor:
        _, y, adjoint, *adjoint_params = state
        parts = (y, adjoint) if seminorm else (y, adjoint, *adjoint_params)
        squares = sum(part.pow(2).sum() for part in parts)
        count = sum(part.numel() for part in parts)
        return torch.nan_to_num((squares / count).sqrt(), nan=math.inf)

    return norm


def _fixed_grid(step_size: float) -> Callable:
    """The reference engine's grid (``odeplug._stepping``): ``t0 + k h``, the last step
    shortened to end on ``t1``."""

    def grid(func: Any, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        start, end = t[0], t[-1]
        span = _float(end) - _float(start)
        # torchdiffeq calls this with a decreasing ``t`` in the adjoint's backward solve.
        n = fixed_step_count(SCALARS, 0.0, span, step_size)
        k = torch.arange(1, n + 1, dtype=t.dtype, device=t.device)
        ends = fixed_step_end(torch, start, end, math.copysign(step_size, span), k, n)
        return torch.cat([start.reshape(1), ends])

    return grid


# ------------------------------------------------------------------ args and checks


def _tree_map(fn: Callable, tree: Any) -> Any:
    if tree is None:
        return None
    if isinstance(tree, dict):
        return {key: _tree_map(fn, value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_tree_map(fn, value) for value in tree)
    return fn(tree)


def _tree_leaves(tree: Any) -> list:
    leaves: list = []
    _tree_map(leaves.append, tree)
    return leaves


def _float(x: Any) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _from_numpy(x: Any) -> torch.Tensor:
    # Through NumPy, so that a list of floats stays float64; torch refuses negative
    # strides (``t[::-1]``), hence C order.
    return torch.as_tensor(np.require(x, requirements="C"))


def _as_tensor_on(leaf: Any, device: torch.device) -> Any:
    if isinstance(leaf, np.ndarray):
        return _from_numpy(leaf).to(device)
    if isinstance(leaf, Constant):
        return Constant(_tree_map(lambda value: _as_tensor_on(value, device), leaf.value))
    return leaf


def _unwrap_constant(leaf: Any) -> Any:
    """A Constant's value, detached: no gradient reaches it, by backprop or adjoint."""
    if isinstance(leaf, Constant):
        return _tree_map(_detach, leaf.value)
    return leaf


def _adjoint_params(func: Callable, args: Any) -> tuple[torch.Tensor, ...]:
    """What the adjoint differentiates: the module's parameters and the tensors of
    ``args`` that require grad, each once (a duplicate would get its gradient twice).
    ``Constant`` leaves are not tensors here: they never are."""
    candidates = list(func.parameters()) if isinstance(func, nn.Module) else []
    candidates += [leaf for leaf in _tree_leaves(args) if isinstance(leaf, torch.Tensor)]
    unique = {id(p): p for p in candidates if p.requires_grad}
    return tuple(unique.values())


def _check_args_dtypes(args: Any, dtype: torch.dtype) -> None:
    """torch does not promote a float32 state by a 0-d float64 tensor, so floating tensors
    of ``args`` (constants included) must have the state's dtype (the other engines
    would upcast)."""
    leaves = _tree_leaves(_tree_map(_unwrap_constant, args))
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dtype != dtype:
            raise TypeError(
                f"mismatched dtypes: args holds a {leaf.dtype} tensor for a {dtype} "
                "state; give the parameters the state's dtype"
            )


def _check_field(func: Callable, y0: torch.Tensor, t: torch.Tensor, args: Any,
                 adjoint: bool) -> None:
    """Check, once, that the field keeps the state's shape and dtype.

    For the adjoint, the field must not close over tensors that require grad: the adjoint
    only differentiates ``args`` and the module's parameters, so their gradients would be
    lost.
    """
    _check_args_dtypes(args, y0.dtype)
    # On detached inputs: an output that still requires grad depends on hidden tensors.
    inputs = (t[0].detach().to(y0.dtype), y0.detach(),
              _tree_map(_detach, _tree_map(_unwrap_constant, args)))
    with torch.set_grad_enabled(adjoint):
        if isinstance(func, nn.Module):
            params = {name: p.detach() for name, p in func.named_parameters()}
            dy = torch.func.functional_call(func, params, inputs)
        else:
            dy = func(*inputs)
    if not isinstance(dy, torch.Tensor):
        raise TypeError(f"the vector field must return a torch.Tensor, got {type(dy).__name__}")
    check_field_output(dy.shape, dy.dtype, y0.shape, y0.dtype)
    if dy.requires_grad:
        raise ValueError(
            "the vector field closes over tensors that require grad, which the adjoint "
            "cannot differentiate; pass them through `args` (or make func an nn.Module "
            "that owns them as parameters)"
        )


def _detach(leaf: Any) -> Any:
    return leaf.detach() if isinstance(leaf, torch.Tensor) else leaf
