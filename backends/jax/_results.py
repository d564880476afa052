"""Results and errors of the JAX engine's solves.

Failures never raise inside a compiled function: every solve runs with ``throw=False``
and reports odeplug's result code (:data:`REASONS`, :func:`result_code` of diffrax's
``RESULTS``), the time reached and the number of outputs reached (:class:`SolveInfo`);
the adjoint's backward solves report theirs as the cotangent of a *probe* input
(:func:`backward_probe`, :class:`BackwardInfo`). On the host, :func:`solver_error`,
:func:`row_solver_error` and :func:`backward_solver_error` build the ``SolverError``
the reference engine raises for the same failure; under a transformation,
:func:`messages` words equinox's runtime error the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from odeplug._solver_options import ODEStats
from odeplug.exceptions import SolverError

if TYPE_CHECKING:
    from ._layout import SolveStatic

__all__ = [
    "REASONS",
    "BackwardInfo",
    "SolveInfo",
    "backward_info",
    "backward_probe",
    "backward_solver_error",
    "failure_reason",
    "messages",
    "result_code",
    "row_solver_error",
    "solver_error",
]

# odeplug's result codes: index in REASONS (0: success). A diffrax failure that odeplug
# does not name (none occurs with these solvers and controllers) is "unknown".
REASONS = ("", "max_num_steps", "step_size_underflow", "non_finite", "unknown")
_WHAT = ("", "max_num_steps={} exceeded", "step size underflow", "non-finite state",
         "the solve failed")


def result_code(result) -> jax.Array:
    """odeplug's code (int32) of a diffrax result, through ``==`` only."""
    R = diffrax.RESULTS
    named = [result == R.successful, result == R.max_steps_reached,
             result == R.dt_min_reached, result == R.nonfinite]
    return jnp.select(named, [0, 1, 2, 3], 4).astype(jnp.int32)


def failure_reason(code: int, static: SolveStatic) -> tuple[str, str]:
    """``(reason, message)`` of a result code (not 0), on the host; the message without
    the time, e.g. ``("max_num_steps", "max_num_steps=64 exceeded")``."""
    return REASONS[int(code)], _WHAT[int(code)].format(static.max_num_steps)


def messages(static: SolveStatic, what: str = "") -> tuple[str, ...]:
    """Messages of the codes, for equinox's runtime error (no time: it is traced)."""
    return ("",) + tuple(f"{what}{w.format(static.max_num_steps)}" for w in _WHAT[1:])


class SolveInfo(NamedTuple):
    """Counters and outcome of a forward solve, as arrays (batched: one per row).

    Attributes
    ----------
    nfe_forward, n_steps, n_rejected : int32
        As ``ODEStats``.
    code : int32
        0 on success, else the index of the reason in :data:`REASONS`.
    t_reached : float
        The time the solve reached, as the reference engine reports it (the end of the
        step whose state became non-finite, for a fixed-step solve); ``t[-1]`` on
        success.
    n_outputs : int32
        How many of the output times were reached: the outputs after them are NaN.
    """

    nfe_forward: jax.Array
    n_steps: jax.Array
    n_rejected: jax.Array
    code: jax.Array
    t_reached: jax.Array
    n_outputs: jax.Array

    def stats(self) -> ODEStats:
        """The counters as ``ODEStats`` (``nfe_backward`` None: see :class:`BackwardInfo`)."""
        return ODEStats(nfe_forward=self.nfe_forward, nfe_backward=None,
                        n_steps=self.n_steps, n_rejected=self.n_rejected)


class BackwardInfo(NamedTuple):
    """Counters and outcome of the adjoint's backward solves, from a probe's cotangent.

    Attributes
    ----------
    nfe_backward : array
        Evaluations of the augmented field (one VJP of the vector field each), plus one
        of the field when the times are differentiated.
    code : array
        The first failure's code (:data:`REASONS`), 0 if none.
    t_reached : array
        Where the failed backward solve stopped; NaN if none failed.
    """

    nfe_backward: jax.Array
    code: jax.Array
    t_reached: jax.Array


# nfe, code, time: exact in float32 below 2**24 evaluations.
_PROBE_SIZE = 3


def backward_probe(dtype=jnp.float32) -> jax.Array:
    """A probe for :func:`odeint_traced`: differentiate the loss w.r.t. it, and read its
    gradient with :func:`backward_info`. One probe per solve (cotangents of a probe used
    twice add up)."""
    return jnp.zeros(_PROBE_SIZE, dtype)


def backward_info(probe_cotangent: jax.Array) -> BackwardInfo:
    """:class:`BackwardInfo` of a probe's gradient (zeros if no backward pass ran)."""
    return BackwardInfo(nfe_backward=probe_cotangent[0].astype(jnp.int32),
                        code=probe_cotangent[1].astype(jnp.int32),
                        t_reached=probe_cotangent[2])



def solver_error(t: Any, ys: Any, info: SolveInfo, static: SolveStatic,
                 what: str = "") -> SolverError:
    """The ``SolverError`` of a failed solve, as the reference engine words it.

    Parameters
    ----------
    t : 1-D array
        The solve's output times (NaN-padded for a row of per-row times).
    ys : array
        Its outputs.
    info : SolveInfo
        Concrete (one solve), ``info.code`` not 0.
    static : SolveStatic
    what : str
        Prefix of the message (which solve).
    """
    t = np.asarray(t, dtype=np.float64)
    t = t[~np.isnan(t)]
    code, t_reached = int(info.code), float(info.t_reached)
    n_out = int(info.n_outputs)
    return SolverError(
        f"{what}{_WHAT[code].format(static.max_num_steps)} at t={t_reached:.6g} "
        f"(solving from {t[0]:.6g} to {t[-1]:.6g})",
        reason=REASONS[code], t=t_reached, ts=t[:n_out], ys=np.asarray(ys)[:n_out],
    )


def row_solver_error(t: Any, ys: Any, info: SolveInfo, row: int, static: SolveStatic,
                     what: str = "") -> SolverError:
    """The ``SolverError`` of row ``row`` of :func:`odeint_rows` (on the host): the
    reason, time reached and solution so far that :func:`odeint` gives on that row
    alone. Built from the row's own outputs, which are those of a solve of the row
    alone, so nothing is solved again."""
    t = np.asarray(t)
    t_row = t if t.ndim == 1 else t[row]
    ys_row = np.asarray(ys)[:, row][:, None]  # as odeint's ys of the (1, d) row
    info_row = SolveInfo(*(np.asarray(field)[row] for field in info))
    return solver_error(t_row, ys_row, info_row, static, what)


def backward_solver_error(info: BackwardInfo, static: SolveStatic,
                          what: str = "the adjoint's backward solve: ") -> SolverError:
    """The ``SolverError`` of a failed backward pass (:func:`backward_info`, concrete)."""
    code, t_reached = int(info.code), float(info.t_reached)
    return SolverError(f"{what}{_WHAT[code].format(static.max_num_steps)} at "
                       f"t={t_reached:.6g}", reason=REASONS[code], t=t_reached)
