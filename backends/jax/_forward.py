"""The JAX engine's forward solve: one ``diffrax.diffeqsolve`` with odeplug's solver,
controller and first step, outputs at the requested times and odeplug's counts and
result code (:class:`._results.SolveInfo`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from odeplug._stepping import fixed_step_count, fixed_step_end
from odeplug._validation import check_field_output

from ._compat import primed_fsal_state
from ._controller import Norm, controller, first_step
from ._layout import SolveStatic, SolveValues
from ._results import REASONS, SolveInfo, result_code
from ._solver import SOLVERS, evaluations

__all__ = ["CheckedField", "forward"]


class CheckedField(eqx.Module):
    """The caller's vector field, checking the shape and dtype of what it returns.

    The check runs when the field is traced (once per compilation), so it costs nothing
    per call.
    """

    func: Callable

    def __call__(self, t, y, args):
        dy = self.func(t, y, args)
        check_field_output(jnp.shape(dy), jnp.result_type(dy), jnp.shape(y),
                           jnp.result_type(y))
        return dy


def forward(vf: Callable, y0: jax.Array, t: jax.Array, args: Any, static: SolveStatic,
            values: SolveValues, *, padded: bool = False) -> tuple[jax.Array, SolveInfo]:
    """The forward solve: ``ys`` at every ``t`` (NaN where not reached) and its info.

    ``vf(t, y, args)``; ``t`` in the state's dtype, monotonic. ``padded``: ``t`` may end
    with NaNs (a row of per-row times), whose outputs are NaN; the solve ends at the
    last time that is not NaN.
    """
    if padded:
        valid = ~jnp.isnan(t)
        t1 = t[jnp.sum(valid) - 1]
        t_save = jnp.where(valid, t, t1)
    else:
        t1, t_save = t[-1], t
    t0 = t[0]
    direction = jnp.where(t1 >= t0, 1, -1).astype(y0.dtype)
    solver = SOLVERS[static.solver]
    order = solver.method.order
    norm = Norm()

    f0 = vf(t0, y0, args)
    h = first_step(lambda s, y: direction * vf(direction * s, y, args), direction * t0,
                   y0, direction * f0, order, static, values, values.rtol, values.atol,
                   norm)
    # Outputs only at [t0, t1] (the ODE-Net's and the CNF's solves): the final state
    # is the output, so the loop needs no dense output at all. Its interpolation and
    # the inner loop that saves each requested time roughly double the compiled
    # program (and XLA's compile time) otherwise.
    endpoints = not padded and t.shape[0] == 2
    subs = [diffrax.SubSaveAt(t1=True)]
    if not endpoints:
        subs.insert(0, diffrax.SubSaveAt(ts=t_save))
    # dt0=None: the controller starts with h (a traced dt0 costs a host callback).
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), solver, t0=t0, t1=t1, dt0=None, y0=y0, args=args,
        saveat=diffrax.SaveAt(subs=subs),
        stepsize_controller=controller(static, values.rtol, values.atol, norm, first=h),
        max_steps=static.max_num_steps, throw=False, solver_state=primed_fsal_state(f0),
    )
    code = result_code(sol.result)
    t_last = sol.ts[-1][0]  # the last accepted time (diffeqsolve's final state)
    reached = direction * t_save <= direction * t_last
    if padded:
        reached = reached & valid
    saved = jnp.concatenate([y0[None], sol.ys[-1]]) if endpoints else sol.ys[0]
    ys = jnp.where(reached.reshape((-1,) + (1,) * y0.ndim), saved, jnp.nan)
    t_reached = t_last
    if not static.adaptive:
        # A fixed step whose state is not finite is not kept; the reference reports
        # the end of that step.
        s0, s1 = direction * t0, direction * t1
        accepted = sol.stats["num_accepted_steps"].astype(y0.dtype)
        t_failed = direction * fixed_step_end(
            jnp, s0, s1, h, accepted + 1, fixed_step_count(jnp, s0, s1, h))
        t_reached = jnp.where(code == REASONS.index("non_finite"), t_failed, t_last)
    at_start, per_step = evaluations(static)
    info = SolveInfo(
        nfe_forward=(at_start + per_step * sol.stats["num_steps"]).astype(jnp.int32),
        n_steps=sol.stats["num_accepted_steps"].astype(jnp.int32),
        n_rejected=sol.stats["num_rejected_steps"].astype(jnp.int32),
        code=code, t_reached=t_reached,
        n_outputs=jnp.sum(reached).astype(jnp.int32))
    return ys, info

