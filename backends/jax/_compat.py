"""The JAX engine's only touch of diffrax's private API, fenced here.

Everything else in :mod:`odeplug_backends.jax.solve` goes through diffrax's public
interfaces: ``AbstractERK`` with a ``ButcherTableau`` (diffrax's documented way to define
a Runge-Kutta method), ``AbstractLocalInterpolation``, ``AbstractStepSizeController``,
``diffeqsolve``'s ``solver_state`` argument, ``SaveAt``, ``Solution.stats`` and
``RESULTS`` (its items, ``==`` and ``RESULTS.where``, equinox's public ``Enumeration``
API). What remains private, each touch tested in ``tests/backends/test_jax_compat.py``
against the version below:

* the layout of the solver state of an FSAL Runge-Kutta method, ``(first_step, f0)``
  (``diffrax._solver.runge_kutta.AbstractRungeKutta.init``), which
  :func:`primed_fsal_state` fills in. Handing ``f(t0, y0)`` to the solver makes it
  evaluated once per solve, shared with Hairer's initial step: diffrax would evaluate it
  again on its first attempted step, and once more on each rejected retry of that step
  (a rejected step rolls the solver state back), which it does not report, so the
  number of evaluations could not be known exactly.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

__all__ = ["CHECKED_DIFFRAX_VERSION", "primed_fsal_state"]

# The diffrax version whose private layout this module was checked against (the tests
# say so when another version is installed).
CHECKED_DIFFRAX_VERSION = "0.7.2"


def primed_fsal_state(f0: Any) -> tuple[Any, Any]:
    """The solver state of an FSAL ``diffrax.AbstractERK`` whose first stage is known.

    Parameters
    ----------
    f0 : array
        The vector field at the start, ``f(t0, y0)``, in the field's own time (not
        multiplied by the direction of integration: diffrax's ``WrapTerm`` keeps the
        vector field and reverses the control).

    Returns
    -------
    state : tuple
        ``(first_step, f0)`` with ``first_step`` False: the solver's first step takes
        ``f0`` as its first stage rather than evaluating it.
    """
    return jnp.array(False), f0
