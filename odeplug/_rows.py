"""Many independent initial value problems, one per row, solved in one loop.

Row ``i`` of ``y0`` (shape ``(n, d)``) is its own problem ``dy/dt = f(t, y)`` on its own
time grid, with its own first step (Hairer's), adaptive step size, controller state,
accept/reject decisions, step budget, counters and dense output: what a solve of that row
alone does, step for step. What the rows share is the evaluation: each iteration calls the
vector field once per stage on every row still running, so ``n`` problems cost about as
many field calls as the longest of them, each at the price of a batch (the adaptive cost
per input of Chen et al. 2018, at batch speed). A row that finishes or fails leaves the
batch and stops counting.

The per-row control (times, step sizes, controller state, counters) lives on the host in
float64 NumPy whatever the states' namespace: a few numbers per row, decided with
``odeplug._stepping`` at the cost of one transfer of the error ratios per iteration rather
than a device synchronisation per decision. States, stages and outputs stay in the
namespace, dtype and device of ``y0`` (NumPy, or an engine's arrays through its
:class:`RowArrays` adapter: torch's; JAX maps a one-problem solve over
rows with ``vmap`` instead).

The field sees the times of its rows: ``fun(t, y)`` gets ``t`` of shape ``(m, 1)``, a
column of ``y``'s dtype (on its device) holding the time of each of the ``m`` rows of
``y``. A column broadcasts against ``y`` where a shared scalar time would (``t * y``,
``np.full((m, 1), t)``, ``t.expand(m, 1)``), so a field written for one time per call
works unchanged.

Numbers: the formulas of the reference engine's one-problem stepper
(``odeplug.reference.solve``: the same steps and evaluation counts, the same values to
rounding). The solver's own arithmetic is elementwise (stage combinations are sums of
products in stage order, no BLAS product), so a row's numbers depend on the batch only
through the field's: a field of elementwise operations gives each row exactly its solve
alone; an MLP's matrix products round a row of a large product differently from the
row alone (about 1e-16 relative in float64, 1e-7 in float32), which the flow amplifies
and which, in float32, can move a step decision near its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._dense import hermite_basis, linear, powers
from ._solver_options import ODESolveConfig
from ._stepping import (
    SNAP_ULPS,
    error_ratio,
    fixed_step_count,
    fixed_step_end,
    initial_step,
    rms_norm,
    step_factor,
    step_size_underflow,
)
from ._tableaus import TABLEAUS
from ._validation import check_field_output, check_row_time_grids
from .exceptions import SolverError

__all__ = ["RowSolution", "solve_rows", "solve_single"]


COUNTERS = ("nfe_forward", "n_steps", "n_rejected")


@dataclass(frozen=True)
class RowSolution:
    """What :func:`solve_rows` returns.

    Attributes
    ----------
    ys : array of shape ``(T, n, d)``
        ``ys[j, i]`` is row ``i`` at its ``j``-th time (NaN where that time is NaN), in
        the namespace, dtype and device of ``y0``.
    nfe_forward, n_steps, n_rejected : numpy.ndarray of shape ``(n,)``, int64
        Each row's vector-field evaluations, accepted and rejected steps.
    """

    ys: Any
    nfe_forward: np.ndarray
    n_steps: np.ndarray
    n_rejected: np.ndarray

    def counters(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in COUNTERS}


def solve_rows(xp, fun: Callable, y0: Any, t: Any, config: ODESolveConfig, *,
               batched: bool = True) -> RowSolution:
    """Solve ``dy/dt = fun(t, y)`` for every row of ``y0`` as its own problem.

    Parameters
    ----------
    xp : module or adapter
        ``numpy``, or an engine's adapter for the arrays of ``y0`` (an object with
        ``row_arrays(y0)`` returning a :class:`RowArrays`: the torch engine's
        ``odeplug_backends.torch._row_arrays.TORCH``).
    fun : callable
        ``fun(t, y) -> dy/dt`` on a batch of rows: ``y`` of shape ``(m, d)``, ``t`` of
        shape ``(m, 1)`` (each row's time, ``y``'s dtype and device); returns ``(m, d)``
        of ``y``'s dtype. Rows must not interact (row ``i`` of the output depends on row
        ``i`` of the input only).
    y0 : array of shape ``(n, d)``
        Initial states, finite.
    t : array_like of shape ``(T,)`` or ``(n, T)``
        Output times, ``t[..., 0]`` that of ``y0``: one grid for every row, or one per
        row. Each row's grid is strictly increasing or strictly decreasing (rows may run
        different ways) and may end with NaN padding (its solve ends at its last time;
        its outputs at NaN times are NaN). Read on the host, in float64.
    config : ODESolveConfig
        Solver (``TABLEAUS`` name), tolerances or ``step_size``, controller options,
        ``first_step`` and ``max_num_steps`` (per row, accepted and rejected steps);
        ``adjoint`` is ignored (nothing is differentiated).
    batched : bool, default=True
        False: one row at a time, so that every evaluation of the field sees one row
        and a row's numbers do not depend on the other rows down to the last bit (at
        the price of a loop over rows); the steps and counts are those of the batched
        solve up to the rounding of the field's batched arithmetic.

    Returns
    -------
    RowSolution

    Raises
    ------
    SolverError
        For the failed row of lowest index (the one a loop over rows would meet first),
        with the reason, time reached and solution so far (``ts``, ``ys`` of shape
        ``(k, d)``) that solving that row alone gives; rows of higher index stop when a
        row fails.
    ValueError, TypeError
        Bad time grids, or a field output of another shape or dtype.
    """
    ops = RowArrays.of(xp, y0)
    if y0.ndim != 2:
        raise ValueError(f"solve_rows needs states of shape (n, d), got {tuple(y0.shape)}")
    n, dim = y0.shape
    grid, lengths, directions = check_row_time_grids(t, n)
    ys = ops.full_nan((grid.shape[1], n, dim))
    ys[0] = y0
    counters = {name: np.zeros(n, dtype=np.int64) for name in COUNTERS}
    groups = [np.arange(n)] if batched else [np.array([i]) for i in range(n)]
    for rows in groups:
        rows = rows[lengths[rows] > 1]  # a row of one time has nothing to solve
        if not len(rows):
            continue
        solver = _RowSolver(ops, fun, ops.take(y0, rows), grid[rows], lengths[rows],
                            directions[rows], config)
        solver.run()
        ops.put_rows(ys, rows, solver.ys)
        for name in COUNTERS:
            counters[name][rows] = solver.counters[name]
        solver.raise_first_failure(rows)
    return RowSolution(ys, **counters)


def solve_single(xp, fun: Callable, y0: Any, t: Any, config: ODESolveConfig) -> RowSolution:
    """One problem of any shape, solved as one row of :func:`solve_rows`.

    ``fun(t, y)`` gets a 0-d time (``y0``'s dtype and device) and ``y`` of ``y0``'s shape;
    ``t`` is 1-D. Returns ``ys`` of shape ``(T,) + y0.shape`` and counters of shape
    ``(1,)``; a :class:`~odeplug.SolverError` reads as that of the reference engine's
    solve of the same problem (no row in its message, ``ys`` of shape ``(k,) +
    y0.shape``).
    """
    ops = RowArrays.of(xp, y0)
    shape = tuple(y0.shape)

    def fun_row(t_rows, y):
        return fun(t_rows.reshape(()), y.reshape(shape)).reshape(1, -1)

    grid, lengths, directions = check_row_time_grids(t, 1)
    solver = _RowSolver(ops, fun_row, y0.reshape(1, -1), grid, lengths, directions, config)
    solver.run()
    solver.raise_first_failure(None, shape)
    return RowSolution(solver.ys.reshape((grid.shape[1],) + shape), **solver.counters)


class _RowSolver:
    """The state of a row-wise solve; :meth:`run` is the loop.

    Arrays named ``*_all`` are indexed by row; the others by position in the batch of
    running rows (``self.rows`` maps positions to rows), compacted when rows leave.
    Times are in ``s = direction * t`` (each row solved forwards), like the reference
    engine's decreasing grids.
    """

    def __init__(self, ops, fun, y0, grid, lengths, directions, config):
        tableau = TABLEAUS[config.solver]
        self.ops, self.fun, self.config = ops, fun, config
        n = len(lengths)
        self.ys = ops.full_nan((grid.shape[1],) + tuple(y0.shape))
        self.ys[0] = y0
        self.tableau = tableau
        self.n_stages = tableau.n_stages
        self.adaptive = config.adaptive
        self.counters = counters = {name: np.zeros(n, dtype=np.int64) for name in COUNTERS}
        self.nfe_all, self.steps_all = counters["nfe_forward"], counters["n_steps"]
        self.rejected_all = counters["n_rejected"]
        self.lengths_all = lengths
        self.grid_s_all = grid * directions[:, None]  # NaN padding stays NaN
        self.t_all = grid
        self.next_out_all = np.ones(len(lengths), dtype=np.int64)
        self.failures: dict[int, tuple[str, str, float]] = {}
        # A stage combination is a sum of products, elementwise in stage order
        # (ops.combine), so that every entry is rounded the same way in a batch of any
        # size. A BLAS product ``a @ stages`` is not: its kernels round the entries of a
        # long vector differently from a short one's, and early steps, whose error
        # estimates lie near rounding, would then step differently from the row alone.
        a = tableau.matrix(np.float64)
        self.stage_rows = [ops.coefficients(a[i, :i]) for i in range(self.n_stages)]
        self.b = ops.coefficients(np.asarray(tableau.b))
        self.b_error = None if tableau.b_error is None else ops.coefficients(
            np.asarray(tableau.b_error))
        self.b_dense = None if tableau.b_dense is None else np.asarray(tableau.b_dense)

        rows = np.arange(n)
        self.rows = rows
        s0 = self.grid_s_all[rows, 0]
        self.s = s0.copy()
        self.s_start = s0
        self.s_end = self.grid_s_all[rows, lengths[rows] - 1]
        self.snap = SNAP_ULPS * np.maximum(1.0, np.maximum(abs(s0), abs(self.s_end)))
        self.direction = directions[rows]
        self._set_sign()
        self.y = y0
        self.f0 = self.evaluate(self.s, self.y)
        check_field_output(self.f0.shape, self.f0.dtype, self.y.shape, self.y.dtype)
        self.nfe_all[rows] += 1
        self.attempts = np.zeros(len(rows), dtype=np.int64)
        self.previous_inverse = np.ones(len(rows))
        self.rejected_non_finite = np.zeros(len(rows), dtype=bool)
        if self.adaptive:
            if config.first_step is None:
                self.h = initial_step(np, self.evaluate, self.s, self.y, self.f0,
                                      tableau.order, config.rtol, config.atol,
                                      self.row_norm, to_state=ops.column)
                self.nfe_all[rows] += 1
            else:
                self.h = np.full(len(rows), float(config.first_step))
        else:
            self.n_fixed = fixed_step_count(np, self.s_start, self.s_end,
                                            config.step_size).astype(np.int64)
            self.h = np.zeros(len(rows))
        self.stages = ops.empty((self.n_stages,) + tuple(self.y.shape))

    # ------------------------------------------------------------------ helpers

    def _set_sign(self) -> None:
        """How ``f(t, y)`` becomes ``d y / d s``: as is, negated (every row runs
        backwards), or times a column of signs (rows run both ways). Negation and a sign
        of -1 are exact, so a row gets the numbers of its solve alone either way."""
        self.negate = bool((self.direction < 0).all())
        mixed = not self.negate and bool((self.direction < 0).any())
        self.sign_column = self.ops.column(self.direction) if mixed else None

    def _signed(self, dy: Any, positions: np.ndarray | None = None) -> Any:
        if self.negate:
            return -dy
        if self.sign_column is None:
            return dy
        sign = self.sign_column if positions is None else self.ops.take(self.sign_column,
                                                                         positions)
        return dy * sign

    def evaluate(self, s: np.ndarray, y: Any) -> Any:
        """``d y / d s`` of the running rows at their times ``s`` (host, float64)."""
        return self._signed(self.fun(self.ops.column(self.direction * s), y))

    def row_norm(self, x: Any) -> np.ndarray:
        """The RMS norm of each row, on the host (float64)."""
        return self.ops.to_host(rms_norm(self.ops.xp, x, axis=1))[:, 0]

    # -------------------------------------------------------------- the loop

    def run(self) -> None:
        ops, config, tableau = self.ops, self.config, self.tableau
        while len(self.rows):
            # The step each row attempts; a row fails before an attempt it cannot take.
            if self.adaptive:
                s1 = self.s + self.h
                s1 = np.where(s1 >= self.s_end - self.snap, self.s_end, s1)
            else:
                s1 = fixed_step_end(np, self.s_start, self.s_end, config.step_size,
                                    self.steps_all[self.rows] + 1, self.n_fixed)
            h = s1 - self.s
            underflow = step_size_underflow(np, self.s, h)
            over_budget = self.attempts >= config.max_num_steps
            if underflow.any() or over_budget.any():
                self._fail_before_attempt(underflow, over_budget, h)
                keep = ~(underflow | over_budget) & (self.rows < min(self.failures))
                self._compact(keep)
                if not len(self.rows):
                    break
                s1, h = s1[keep], h[keep]
            self.attempts += 1
            y1, error = self._step(h)
            self.nfe_all[self.rows] += self.n_stages - 1

            finite = ops.row_finite(y1)
            if self.adaptive:
                ratio = error_ratio(ops.xp, error, self.y, y1, config.rtol, config.atol,
                                    self.row_norm)
                # A non-finite candidate is a rejection with the largest shrink.
                ratio = np.where(finite, ratio, math.inf)
                accept, factor, self.previous_inverse = step_factor(
                    np, ratio, self.previous_inverse, tableau.order, config)
                self.rejected_all[self.rows[~accept]] += 1
                self.rejected_non_finite = np.where(accept, self.rejected_non_finite,
                                                    ~np.isfinite(ratio))
                self.h = h * factor
            else:
                accept = finite
                if not finite.all():
                    for position in np.flatnonzero(~finite):
                        self._record_failure(position, "non_finite", "non-finite state",
                                             s1[position])
            self._accept(accept, s1, h, y1)

    def _step(self, h: np.ndarray):
        """One explicit RK step of every running row, stages in ``self.stages``."""
        ops, tableau, stages = self.ops, self.tableau, self.stages
        y = self.y
        h_col = ops.column(h)
        stages[0] = self.f0
        flat = stages.reshape(self.n_stages, -1)
        yi = y
        for i in range(1, self.n_stages):
            increment = ops.combine(self.stage_rows[i], flat).reshape(y.shape)
            yi = y + h_col * increment
            stages[i] = self.evaluate(self.s + tableau.c[i] * h, yi)
        if tableau.fsal:
            y1 = yi  # the last stage is evaluated at y1
        else:
            y1 = y + h_col * ops.combine(self.b, flat).reshape(y.shape)
        error = None
        if self.adaptive:
            error = h_col * ops.combine(self.b_error, flat).reshape(y.shape)
        return y1, error

    def _accept(self, accept: np.ndarray, s1: np.ndarray, h: np.ndarray, y1: Any) -> None:
        """Advance the accepted rows: slopes at their ends, dense output, new state."""
        ops, tableau = self.ops, self.tableau
        failed = np.zeros(len(self.rows), dtype=bool)
        if self.failures:
            failed[np.isin(self.rows, list(self.failures))] = True
            accept = accept & ~failed
        rows = self.rows
        self.steps_all[rows[accept]] += 1
        last = accept & (s1 == self.s_end)
        # The slope at each accepted step's end: the FSAL stage, or one evaluation where
        # the next step needs it or a cubic Hermite output inside this step does.
        if tableau.fsal:
            f_end = self.stages[-1]
        else:
            needs = accept & ~last
            if tableau.interpolation == "hermite":
                needs |= accept & self._has_output_inside(s1)
            f_end = self.f0
            if needs.any():
                at = np.flatnonzero(needs)
                s_end = np.where(last[at], self.s_end[at], self.s[at] + h[at])
                slopes = self._evaluate_at(at, s_end, ops.take(y1, at))
                self.nfe_all[rows[at]] += 1
                f_end = slopes if len(at) == len(rows) else ops.put(self.f0, at, slopes)
        if accept.any():
            self._dense_output(np.flatnonzero(accept), s1, h, y1, f_end)
        # The new state of the accepted rows (rejected ones retry from where they were).
        if accept.all():
            self.y = y1
            self.f0 = ops.copy(f_end) if tableau.fsal else f_end
        else:
            mask = ops.mask_column(accept)
            self.y = ops.where(mask, y1, self.y)
            self.f0 = ops.where(mask, f_end, self.f0)
        self.s = np.where(accept, s1, self.s)
        done = last | failed
        if self.failures:
            # Rows after the first failure cannot change which error is raised: stop them.
            done |= rows > min(self.failures)
        if done.any():
            self._compact(~done)

    def _evaluate_at(self, positions: np.ndarray, s: np.ndarray, y: Any) -> Any:
        """``d y / d s`` of the rows at ``positions`` only."""
        dy = self.fun(self.ops.column(self.direction[positions] * s), y)
        return self._signed(dy, positions)

    def _has_output_inside(self, s1: np.ndarray) -> np.ndarray:
        """Whether each running row has an output time strictly inside its step."""
        rows = self.rows
        j = self.next_out_all[rows]
        pending = j < self.lengths_all[rows]
        inside = np.zeros(len(rows), dtype=bool)
        t_next = self.grid_s_all[rows[pending], j[pending]]
        inside[pending] = t_next < s1[pending]
        return inside

    def _dense_output(self, positions, s1, h, y1, f_end) -> None:
        """Outputs of the rows at ``positions`` at their times in ``(s, s1]``."""
        ops = self.ops
        while len(positions):
            rows = self.rows[positions]
            j = self.next_out_all[rows]
            pending = j < self.lengths_all[rows]
            positions, rows, j = positions[pending], rows[pending], j[pending]
            t_out = self.grid_s_all[rows, j]
            due = t_out <= s1[positions]
            positions, rows, j, t_out = positions[due], rows[due], j[due], t_out[due]
            if not len(positions):
                return
            ends = ops.take(y1, positions)
            inside = t_out != s1[positions]  # an output on the step's end is y1 itself
            if inside.any():
                values = self._interpolate(positions, t_out, h, y1, f_end)
                ends = ops.where(ops.mask_column(inside), values, ends)
            ops.put_outputs(self.ys, j, rows, ends)
            self.next_out_all[rows] += 1

    def _interpolate(self, positions, t_out, h, y1, f_end):
        """The step's continuous extension at ``t_out`` (the reference engine's)."""
        ops, kind = self.ops, self.tableau.interpolation
        h = h[positions]
        x = (t_out - self.s[positions]) / h
        y0 = ops.take(self.y, positions)
        if kind == "linear":
            return linear(ops.column(x), y0, ops.take(y1, positions))
        if kind == "hermite":
            # The basis on the host, one value per row; then the reference's sum.
            p0, q0, p1, q1 = hermite_basis(x)
            f0 = ops.take(self.stages[0], positions)
            f1 = ops.take(f_end, positions)
            return (ops.column(p0) * y0 + ops.column(q0 * h) * f0
                    + ops.column(p1) * ops.take(y1, positions) + ops.column(q1 * h) * f1)
        # y0 + h sum_i b_i(x) k_i, with b_i(x) = sum_p b_dense[i, p] x**(p + 1).
        # Elementwise products and sums on the host (not a BLAS product), as above.
        weights = (powers(x, self.b_dense.shape[1])[:, None, :] * self.b_dense).sum(axis=2)
        stages = ops.take(self.stages, positions, axis=1)
        return y0 + ops.column(h) * ops.combine_rows(weights, stages)

    # -------------------------------------------------------- failures, batch

    def _fail_before_attempt(self, underflow, over_budget, h) -> None:
        for position in np.flatnonzero(underflow | over_budget):
            if underflow[position]:
                # After non-finite candidates, or a NaN step size (from a non-finite
                # slope), the cause is the state, not the step size.
                if self.rejected_non_finite[position] or not np.isfinite(h[position]):
                    reason, what = "non_finite", "non-finite state"
                else:
                    reason, what = "step_size_underflow", "step size underflow"
                message = f"{what} (h={h[position]:.3g})"
            else:
                reason = "max_num_steps"
                message = f"max_num_steps={self.config.max_num_steps} exceeded"
            self._record_failure(position, reason, message, self.s[position])

    def _record_failure(self, position: int, reason: str, message: str, s: float) -> None:
        row = int(self.rows[position])
        self.failures[row] = (reason, message, float(self.direction[position] * s))

    def raise_first_failure(self, labels: np.ndarray | None, shape=None) -> None:
        """Raise the SolverError of the failed row of lowest index, if any. ``labels``:
        the rows' indices in the caller's batch (None: one problem, of state ``shape``)."""
        if not self.failures:
            return
        row = min(self.failures)
        reason, message, t_reached = self.failures[row]
        times = self.t_all[row]
        reached = int(self.next_out_all[row])
        t0, t1 = times[0], times[self.lengths_all[row] - 1]
        where = "" if labels is None else f"row {labels[row]}: "
        ys = self.ys[:reached, row]
        if shape is not None:
            ys = ys.reshape((reached,) + tuple(shape))
        raise SolverError(
            f"{where}{message} at t={t_reached:.6g} (solving from {t0:.6g} to {t1:.6g})",
            reason=reason, t=t_reached, ts=times[:reached].copy(), ys=self.ops.copy(ys),
        )

    def _compact(self, keep: np.ndarray) -> None:
        """Drop the rows that left (finished or failed) from the running batch."""
        if keep.all():
            return
        ops = self.ops
        for name in ("rows", "s", "s_start", "s_end", "snap", "direction", "h", "attempts",
                     "previous_inverse", "rejected_non_finite"):
            setattr(self, name, getattr(self, name)[keep])
        if not self.adaptive:
            self.n_fixed = self.n_fixed[keep]
        positions = np.flatnonzero(keep)
        self.y = ops.take(self.y, positions)
        self.f0 = ops.take(self.f0, positions)
        self._set_sign()
        self.stages = ops.empty((self.n_stages,) + tuple(self.y.shape))


# ------------------------------------------------------------------ namespaces


class RowArrays:
    """What :func:`solve_rows` needs of an array namespace beyond operators, for one
    dtype and device: host values in, host values out, gathers and scatters.

    NumPy's is here; an engine brings its own (the torch engine's:
    ``odeplug_backends.torch._row_arrays``) as an object whose ``row_arrays(y0)`` returns
    one, passed to :func:`solve_rows` in place of ``numpy``: the core names no engine.
    """

    @staticmethod
    def of(xp, y0) -> RowArrays:
        if xp is np:
            return _NumpyArrays(np.asarray(y0).dtype)
        if hasattr(xp, "row_arrays"):
            return xp.row_arrays(y0)
        raise TypeError(f"solve_rows runs on numpy, or on an engine's adapter with "
                        f"row_arrays(y0), not {xp!r}")


class _NumpyArrays(RowArrays):
    xp = np

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def coefficients(self, values):
        return np.asarray(values, dtype=self.dtype)[:, None]

    def combine(self, coefficients, stages):
        """``sum_j c_j stages[j]``, in order of j: NumPy reduces axis 0 one slice at a
        time, so each entry's sum is sequential, whatever the length of a slice."""
        return (coefficients * stages[: len(coefficients)]).sum(axis=0)

    def combine_rows(self, weights, stages):
        """``sum_j weights[r, j] stages[j, r]`` for every row ``r``, in order of j."""
        return (weights.T[:, :, None].astype(self.dtype) * stages).sum(axis=0)

    def column(self, values):
        return np.asarray(values).astype(self.dtype)[:, None]

    def mask_column(self, mask):
        return mask[:, None]

    def to_host(self, x):
        return np.asarray(x, dtype=np.float64)

    def row_finite(self, x):
        return np.isfinite(x).all(axis=1)

    def empty(self, shape):
        return np.empty(shape, dtype=self.dtype)

    def full_nan(self, shape):
        return np.full(shape, np.nan, dtype=self.dtype)

    def take(self, x, positions, axis=0):
        return x[positions] if axis == 0 else x[:, positions]

    def put(self, x, positions, values):
        out = x.copy()
        out[positions] = values
        return out

    def put_outputs(self, ys, j, rows, values):
        ys[j, rows] = values

    def put_rows(self, ys, rows, values):
        ys[:, rows] = values

    def copy(self, x):
        return x.copy()

    where = staticmethod(np.where)
