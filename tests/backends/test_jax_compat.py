"""The JAX engine's touches of diffrax's private API (``odeplug_backends.jax._compat``),
each checked against diffrax 0.7.2: when diffrax changes, these tests say which touch
to revisit."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffrax")
import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from odeplug_backends.jax import _compat  # noqa: E402
from odeplug_backends.jax._controller import Norm, controller  # noqa: E402
from odeplug_backends.jax._layout import split_config  # noqa: E402
from odeplug_backends.jax._solver import SOLVERS  # noqa: E402

from odeplug._solver_options import make_solve_config  # noqa: E402

# float64 comparisons with the reference engine: x64 for this module's tests only.
pytestmark = pytest.mark.usefixtures("jax_x64")


def test_checked_against_the_installed_diffrax():
    # A new diffrax: re-run this file, re-read diffrax's AbstractRungeKutta.init, then
    # update CHECKED_DIFFRAX_VERSION.
    assert _compat.CHECKED_DIFFRAX_VERSION == "0.7.2"
    assert diffrax.__version__ == _compat.CHECKED_DIFFRAX_VERSION


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_fsal_solver_state_is_first_step_flag_and_f0(solver):
    """diffrax 0.7.2: an FSAL Runge-Kutta solver's state is ``(first_step, f0)``, a bool
    scalar and a pytree like ``y0``; ``primed_fsal_state`` builds the same structure."""
    method = SOLVERS[solver]
    assert method.tableau.fsal  # every odeplug solver is FSAL in diffrax (see solve.py)
    term = diffrax.ODETerm(lambda t, y, args: -y)
    y0 = jnp.ones((2, 3))
    state = eqx.filter_eval_shape(method.init, term, 0.0, 1.0, y0, None)
    primed = jax.eval_shape(_compat.primed_fsal_state, y0)
    assert jax.tree.structure(state) == jax.tree.structure(primed)
    flag, f0 = state
    assert flag.shape == () and flag.dtype == jnp.bool_
    assert f0.shape == y0.shape and f0.dtype == y0.dtype


def _count_solve(solver_state, **kwargs):
    """``(ys, number of accepted and rejected steps, evaluations)`` of a diffeqsolve of
    dy/dt = -y with odeplug's dopri5 and controller, from a first step far too large."""
    calls = []

    def field(t, y, args):
        jax.debug.callback(lambda: calls.append(None))
        return -y

    static, values = split_config(make_solve_config(rtol=1e-9, atol=1e-11))
    y0 = jnp.array([1.0, 2.0])
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), SOLVERS["dopri5"], t0=0.0, t1=1.0, dt0=1.0, y0=y0,
        saveat=diffrax.SaveAt(ts=jnp.linspace(0.0, 1.0, 5)),
        stepsize_controller=controller(static, values.rtol, values.atol, Norm()),
        solver_state=solver_state(field, y0), **kwargs)
    jax.effects_barrier()
    return sol.ys, int(sol.stats["num_steps"]), int(sol.stats["num_rejected_steps"]), len(calls)


def test_primed_state_spares_the_first_stage_of_every_first_attempt():
    """diffrax 0.7.2 evaluates ``f(t0, y0)`` on the first attempted step and again on
    every retry of it (a rejected step rolls the solver state back); primed, never: the
    same steps and solution, and exactly ``6`` evaluations per attempted step."""
    ys, steps, rejected, calls = _count_solve(
        lambda field, y0: _compat.primed_fsal_state(field(0.0, y0, None)))
    ys_plain, steps_plain, rejected_plain, calls_plain = _count_solve(lambda field, y0: None)
    np.testing.assert_array_equal(ys, ys_plain)
    assert (steps, rejected) == (steps_plain, rejected_plain) and rejected > 0
    assert calls == 1 + 6 * steps
    # Unprimed: one more evaluation per attempt until the first acceptance (all of the
    # rejections here happen there: the first step is 1.0 on [0, 1]).
    assert calls_plain == 6 * steps + 1 + rejected
