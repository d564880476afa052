"""torchdiffeq's test problems (upstream ``tests/problems.py``), for every engine.

Upstream's problems are ``torch.nn.Module`` fields ``f(t, y)``; here each is a field
``f(t, y, args)`` (odeplug's convention) with its parameters in ``args`` and its
elementary functions taken from the engine's namespace (:func:`namespace`), and an exact
solution in NumPy (float64). :func:`construct_problem` is upstream's: times
``linspace(1, 8, npts)`` in float64, ``y0`` the exact solution at the first time,
optionally reversed.

One difference: upstream draws ``LinearODE``'s matrix with ``torch.randn`` under
``torch.manual_seed(0)``; here NumPy's ``default_rng(0)`` draws it (the same
distribution and construction, an antisymmetric ``A = 2U - (U + U^T)``), so that the
reference engine's cases need no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg

# Upstream's method lists, in odeplug's names (``heun2`` is odeplug's ``heun``; odeplug's
# ``rk4`` is the classical tableau where torchdiffeq's is the 3/8 rule, of the same
# order). torchdiffeq's other methods have no odeplug counterpart (the suite's
# docstring lists them).
FIXED_METHODS = ("euler", "midpoint", "heun", "rk4")
ADAPTIVE_METHODS = ("bosh3", "tsit5", "dopri5", "dopri8")
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
DTYPES = (np.float32, np.float64)


def namespace(engine):
    """The array functions (``sin``, ``exp``, ``tanh``, ...) of an engine's arrays,
    autograd's NumPy on the reference engine (so that its gradients trace them)."""
    if engine.name == "torch":
        return engine.torch
    if engine.name == "jax":
        return engine.jax.numpy
    import autograd.numpy as anp

    return anp


@dataclass(frozen=True)
class Problem:
    """An upstream problem: ``field(xp)`` is ``f(t, y, args)`` over namespace ``xp``."""

    name: str
    field: Callable
    args: dict
    exact: Callable  # exact(t: float64 ndarray) -> ndarray (len(t),) + shape


def _constant_field(xp):
    def f(t, y, args):
        a, b = args["a"], args["b"]
        return a + (y - (a * t + b)) ** 5

    return f


def _sine_field(xp):
    def f(t, y, args):
        return 2 * y / t + t**4 * xp.sin(2 * t) - t**2 + 4 * t**3

    return f


def _sine_exact(t):
    return (-0.5 * t**4 * np.cos(2 * t) + 0.5 * t**3 * np.sin(2 * t)
            + 0.25 * t**2 * np.cos(2 * t) - t**3 + 2 * t**4 + (math.pi - 0.25) * t**2)


def _linear_field(xp):
    def f(t, y, args):
        return args["A"] @ y

    return f


def _linear_matrix(dim: int = 10) -> np.ndarray:
    u = np.random.default_rng(0).standard_normal((dim, dim)) * 0.1
    return 2 * u - (u + u.T)


def _linear_exact(t):
    a = _linear_matrix()
    return np.stack([scipy.linalg.expm(a * t_i) @ np.ones(a.shape[0]) for t_i in t])


def _exp_field(xp):
    def f(t, y, args):
        return -0.1 * xp.exp(-0.1 * t)  # upstream's: it does not read y

    return f


PROBLEMS = {
    "constant": Problem("constant", _constant_field, {"a": 0.2, "b": 3.0},
                        lambda t: 0.2 * t + 3.0),
    "linear": Problem("linear", _linear_field, {"A": _linear_matrix()}, _linear_exact),
    "sine": Problem("sine", _sine_field, {}, _sine_exact),
    "exp": Problem("exp", _exp_field, {}, lambda t: np.exp(-0.1 * t)),
}


@dataclass
class Case:
    """``construct_problem``'s result in an engine's arrays: the field, its args, ``y0``,
    the times and the exact solution (NumPy, in ``dtype``)."""

    func: Callable
    args: dict
    y0: object
    t: object
    sol: np.ndarray


def construct_problem(engine, npts: int = 10, ode: str = "constant", reverse: bool = False,
                      dtype=np.float64) -> Case:
    """Upstream's ``construct_problem``: times ``linspace(1, 8, npts)`` (float64), ``y0``
    the exact solution at the first one, the state and parameters in ``dtype``."""
    problem = PROBLEMS[ode]
    t = np.linspace(1.0, 8.0, npts)
    sol = problem.exact(t).astype(dtype)
    if reverse:
        t, sol = t[::-1].copy(), sol[::-1].copy()
    return Case(
        func=problem.field(namespace(engine)),
        args={key: engine.asarray(value, dtype) for key, value in problem.args.items()},
        y0=engine.asarray(sol[0], dtype),
        t=engine.asarray(t),
        sol=sol,
    )


def rel_error(true: np.ndarray, estimate: np.ndarray) -> float:
    """Upstream's ``rel_error``: the largest relative error."""
    return float(np.abs((true - estimate) / true).max())


def fixed_step(t: np.ndarray) -> float:
    """The step of upstream's fixed-step solves: torchdiffeq's fixed-grid solvers step on
    the output times when no ``step_size`` is given; odeplug's take a step size, here
    the spacing of the (uniform) grid, so that the steps end on the output times."""
    t = np.asarray(t, dtype=np.float64)
    return abs(float(t[1] - t[0]))
