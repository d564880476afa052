"""The JAX engine's solvers: every tableau of ``odeplug._tableaus`` as a diffrax solver.

Each method is a ``diffrax.AbstractERK`` (diffrax's documented way to define a
Runge-Kutta method) with the reference engine's dense output (:class:`DenseOutput`): the
tableau's ``b_dense`` polynomials, the cubic Hermite through ``(y0, f0)`` and ``(y1,
f1)``, or linear for euler (``odeplug._dense``'s formulas). A method without a last
stage ``f(t1, y1)`` (euler, midpoint, heun, rk4) gets one, first same as last: the
Hermite needs ``f1``, and the stage is the next step's first, so it costs one evaluation
per solve, not per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import diffrax
import jax.numpy as jnp
import numpy as np

from odeplug._dense import hermite_basis, linear
from odeplug._tableaus import TABLEAUS, ButcherTableau

if TYPE_CHECKING:
    from ._layout import SolveStatic

__all__ = ["SOLVERS", "DenseOutput", "RungeKutta", "evaluations"]

# ---------------------------------------------------------------------- dense output


def _fraction(t0, t, t1):
    """``(t - t0) / (t1 - t0)``, 0 on an empty step (a finished row under ``vmap`` keeps
    stepping on ``[t1, t1]``; a NaN there would reach the gradients through
    ``jnp.where``)."""
    empty = t1 == t0
    return jnp.where(empty, 0.0, (t - t0) / jnp.where(empty, 1.0, t1 - t0))


class DenseOutput(diffrax.AbstractLocalInterpolation):
    """The reference engine's interpolation inside one step ``[t0, t1]``.

    ``k`` holds the stages in diffrax's k-space, ``k_i = h f_i``, so ``k[0] = h f0`` and,
    with the FSAL last stage, ``k[-1] = h f1``. Each solver has its subclass, setting
    ``kind`` and ``b_dense`` from its tableau (``odeplug._tableaus``).
    """

    t0: Any
    t1: Any
    y0: Any
    y1: Any
    k: Any

    kind: ClassVar[str]  # "polynomial", "hermite" or "linear"
    b_dense: ClassVar[np.ndarray | None]  # (stages, P): weights of x**1 .. x**P

    def evaluate(self, t0, t1=None, left=True):
        del left  # continuous inside a step
        if t1 is not None:
            return self.evaluate(t1) - self.evaluate(t0)
        x = _fraction(self.t0, t0, self.t1).astype(self.y0.dtype)
        if self.kind == "linear":
            return linear(x, self.y0, self.y1)
        if self.kind == "hermite":
            # k holds h f: the Hermite of odeplug._dense with the slopes' h folded in.
            p0, q0, p1, q1 = hermite_basis(x)
            return p0 * self.y0 + q0 * self.k[0] + p1 * self.y1 + q1 * self.k[-1]
        # y0 + h sum_i b_i(x) f_i, b_i(x) = sum_p b_dense[i, p] x**(p + 1).
        b_dense = jnp.asarray(self.b_dense, self.y0.dtype)
        # Integer powers (repeated products), as the reference's x ** (p + 1).
        powers = jnp.stack([x ** (p + 1) for p in range(b_dense.shape[1])])
        return self.y0 + jnp.tensordot(b_dense @ powers, self.k, axes=1)


# --------------------------------------------------------------------------- solvers


class RungeKutta(diffrax.AbstractERK):
    """A method of ``odeplug._tableaus`` in diffrax; subclasses set the class variables."""

    method: ClassVar[ButcherTableau]
    tableau: ClassVar[diffrax.ButcherTableau]
    interpolation_cls: ClassVar[Callable[..., diffrax.AbstractLocalInterpolation]]

    def order(self, terms):
        return self.method.order


def _diffrax_tableau(tab: ButcherTableau) -> diffrax.ButcherTableau:
    """diffrax's tableau of ``tab``; a method that is not first-same-as-last gets a last
    stage ``f(t1, y1)`` (its row is ``b``, its weight 0), which diffrax recognises as
    FSAL. diffrax's ``c`` and ``a_lower`` start at the second stage."""
    b = np.asarray(tab.b)
    rows = [np.asarray(row) for row in tab.a[1:]]
    if tab.fsal:
        c, b_sol = np.asarray(tab.c[1:]), b
    else:
        c, b_sol = np.asarray(tab.c[1:] + (1.0,)), np.append(b, 0.0)
        rows.append(b)
    # Fixed-step methods have no error estimate; their controller never reads it (and
    # XLA drops the unused products).
    b_error = np.zeros(b_sol.size) if tab.b_error is None else np.asarray(tab.b_error)
    return diffrax.ButcherTableau(c=c, b_sol=b_sol, b_error=b_error, a_lower=tuple(rows))


def _solver(tab: ButcherTableau) -> RungeKutta:
    dense = type(f"_{tab.name.capitalize()}Dense", (DenseOutput,), {
        "kind": tab.interpolation,
        "b_dense": None if tab.b_dense is None else np.asarray(tab.b_dense),
    })
    cls = type(f"_{tab.name.capitalize()}", (RungeKutta,), {
        "method": tab, "tableau": _diffrax_tableau(tab), "interpolation_cls": dense,
    })
    return cls()


SOLVERS: dict[str, RungeKutta] = {name: _solver(tab) for name, tab in TABLEAUS.items()}


def evaluations(static: SolveStatic) -> tuple[int, int]:
    """``(at start, per step)``: vector-field evaluations of a solve, steps counted
    accepted or rejected. At start: ``f(t0, y0)``, shared by the solver and Hairer's
    initial step, plus the initial step's own evaluation."""
    per_step = SOLVERS[static.solver].tableau.num_stages - 1  # FSAL: k0 is known
    hairer = static.adaptive and not static.has_first_step
    return 1 + int(hairer), per_step

