"""The adjoint method's backward integration (Chen et al. 2018, Algorithm 1), written
once for the eager engines (the reference engine on NumPy, torch).

An engine supplies what depends on its arrays: the vector field, its VJP, the
concatenation of flat vectors, a dot product and its own solver for one interval.
JAX keeps its traced adjoint (diffrax's ``BacksolveAdjoint``).

Conventions: states are flat; times ``ts`` are increasing (an engine solving a
decreasing grid passes its forward variable ``s = -t``); the backward solve runs on the
reversed axis ``r = -s``, forwards in ``r``, one output interval at a time, on the
augmented state ``z = [y, a, a_theta]``::

    dy/dr = -f(s, y),   da/dr = a^T df/dy,   da_theta/dr = a^T df/dtheta   (s = -r).

Between intervals the output's cotangent ``g[i - 1]`` is added to ``a``. With the
seminorm (Kidger, Chen & Lyons 2021) the engine's error norm covers ``[y, a]`` only:
``norm_size`` below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["augmented_dynamics", "backsolve"]


def augmented_dynamics(vjp: Callable, n_state: int, concat: Callable) -> Callable:
    """The augmented field ``dz/dr`` on the reversed axis.

    Parameters
    ----------
    vjp : callable
        ``vjp(s, y, a) -> (f(s, y), a^T df/dy, a^T df/dtheta)`` on flat vectors, ``s``
        the forward time.
    n_state : int
        Size of the flat state ``y``.
    concat : callable
        Concatenation of a sequence of flat vectors of the engine.
    """

    def augmented(r: Any, z: Any) -> Any:
        y, a = z[:n_state], z[n_state : 2 * n_state]
        dy, a_y, a_theta = vjp(-r, y, a)
        return concat([-dy, a_y, a_theta])

    return augmented


def backsolve(ts: Any, ys: Any, g: Any, a_theta: Any, *, n_state: int,
              solve_interval: Callable, concat: Callable, field: Callable | None = None,
              dot: Callable | None = None) -> tuple[Any, Any, list | None]:
    """Cotangents of ``y0``, ``theta`` and (with ``field``) of the times.

    Parameters
    ----------
    ts : sequence of float
        The increasing output times of the forward solve.
    ys : sequence of flat vectors
        The forward solution at ``ts``.
    g : sequence of flat vectors
        The cotangents of ``ys``.
    a_theta : flat vector
        Zeros of the parameters' size (and of the accumulation's dtype).
    n_state : int
        Size of a flat state.
    solve_interval : callable
        ``solve_interval(z, r0, r1) -> z_end``: the engine's solve of the augmented
        system (:func:`augmented_dynamics`) from ``r0 = -ts[i]`` to ``r1 = -ts[i - 1]``.
    concat : callable
        Concatenation of flat vectors.
    field, dot : callable, optional
        ``field(s, y)`` and a dot product, for the cotangents of the times: moving
        ``ts[i]`` moves ``ys[i]`` by ``f``, and moving ``ts[0]`` with ``y0`` fixed moves
        the whole trajectory. None: no time cotangents.

    Returns
    -------
    a : flat vector
        Cotangent of ``y0``.
    a_theta : flat vector
        Cotangent of the parameters.
    grad_ts : list of scalars or None
    """
    n = len(ts)
    want_ts = field is not None
    grad_ts = [0.0] * n if want_ts else None
    a = g[n - 1]
    for i in range(n - 1, 0, -1):
        if want_ts:
            grad_ts[i] = dot(field(ts[i], ys[i]), g[i])
        z_end = solve_interval(concat([ys[i], a, a_theta]), -ts[i], -ts[i - 1])
        a = z_end[n_state : 2 * n_state] + g[i - 1]
        a_theta = z_end[2 * n_state :]
    if want_ts:
        grad_ts[0] = -dot(field(ts[0], ys[0]), a - g[0])
    return a, a_theta, grad_ts
