"""ODEs with exact (or high-accuracy reference) solutions, shared by every test.

The vector fields use only arithmetic operators and ``@``, so the same function runs on
NumPy, torch and JAX arrays; their parameters come through ``args``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.integrate import solve_ivp


@dataclass(frozen=True)
class Problem:
    name: str
    func: Callable  # func(t, y, args), operators only
    y0: np.ndarray
    t: np.ndarray
    args: dict = field(default_factory=dict)
    exact: Callable | None = None  # exact(t) -> array of shape (len(t),) + y0.shape

    def solution(self, t: np.ndarray | None = None) -> np.ndarray:
        """Exact solution, else scipy's DOP853 at rtol = atol = 1e-13."""
        t = self.t if t is None else np.asarray(t)
        if self.exact is not None:
            return self.exact(t)
        shape = self.y0.shape
        sol = solve_ivp(
            lambda s, y: np.asarray(self.func(s, y.reshape(shape), self.args)).ravel(),
            (t[0], t[-1]), self.y0.ravel(), method="DOP853", t_eval=t, rtol=1e-13, atol=1e-13,
        )
        assert sol.success, sol.message
        return sol.y.T.reshape((len(t),) + shape)


def _decay(t, y, args):
    return -args["k"] * y


def _oscillator(t, y, args):
    return y @ args["A"]


def _time_dependent(t, y, args):
    return -2.0 * t * y


def _lotka_volterra(t, y, args):
    return y * (args["alpha"] + y @ args["B"])


def _cubic(t, y, args):
    # Nonlinear, time dependent, with parameters: the gradient test problem.
    return -(y * y * y) + y @ args["A"] + t * args["b"]


OMEGA = 2.0

DECAY = Problem(
    "decay", _decay, np.array([1.0, -2.0, 0.5]), np.linspace(0.0, 2.0, 6),
    {"k": np.array(0.7)},
    exact=lambda t: np.exp(-0.7 * t)[:, None] * np.array([1.0, -2.0, 0.5]),
)

OSCILLATOR = Problem(
    "oscillator", _oscillator, np.array([1.0, 0.0]), np.linspace(0.0, 5.0, 11),
    # y = [x, v]; dx/dt = v, dv/dt = -omega^2 x, written as y @ A.
    {"A": np.array([[0.0, -OMEGA**2], [1.0, 0.0]])},
    exact=lambda t: np.stack([np.cos(OMEGA * t), -OMEGA * np.sin(OMEGA * t)], axis=-1),
)

TIME_DEPENDENT = Problem(
    "time_dependent", _time_dependent, np.array([[1.0, 2.0], [0.5, -1.0]]),
    np.linspace(0.0, 1.5, 4), {},
    exact=lambda t: np.exp(-(t**2))[:, None, None] * np.array([[1.0, 2.0], [0.5, -1.0]]),
)

LOTKA_VOLTERRA = Problem(
    "lotka_volterra", _lotka_volterra, np.array([1.0, 0.5]), np.linspace(0.0, 10.0, 21),
    {"alpha": np.array([1.5, -3.0]), "B": np.array([[0.0, 1.0], [-1.0, 0.0]])},
)

CUBIC = Problem(
    "cubic", _cubic, np.array([0.8, -0.4]), np.array([0.0, 0.5, 1.0]),
    {"A": np.array([[-0.5, 1.0], [-1.0, -0.3]]), "b": np.array([0.2, -0.1])},
)

def _rotation(t, y, args):
    # A rotation at a speed set by the (conserved) radius: (1 + |y|^2) [-y2, y1].
    return (y @ args["J"]) * (1 + (y * y) @ args["ones"])


_ROTATION_Y0 = np.array([0.6, 0.3])


def _rotation_exact(t):
    y0 = _ROTATION_Y0
    angle = (1 + (y0 * y0).sum()) * np.asarray(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * y0[0] - s * y0[1], s * y0[0] + c * y0[1]], axis=-1)


# Nonlinear, with an exact solution: the convergence-order problem.
ROTATION = Problem(
    "rotation", _rotation, _ROTATION_Y0, np.linspace(0.0, 2.0, 5),
    {"J": np.array([[0.0, 1.0], [-1.0, 0.0]]), "ones": np.ones((2, 2))},
    exact=_rotation_exact,
)

ACCURACY_PROBLEMS = [DECAY, OSCILLATOR, TIME_DEPENDENT, LOTKA_VOLTERRA]
