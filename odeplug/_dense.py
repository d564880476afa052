"""Dense output inside a step, written once for every eager stepper (the reference
engine's, the torch engine's and the row solver): plain arithmetic, so it runs on
Python floats, NumPy arrays, torch tensors and autograd boxes alike.

``x`` in [0, 1] is the fraction of the step of size ``h`` from ``(y0, f0)`` to
``(y1, f1)``. The polynomial extensions of ``odeplug._tableaus`` (``b_dense``) weight the
stages by :func:`powers` of ``x``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["hermite", "hermite_basis", "linear", "powers"]


def linear(x: Any, y0: Any, y1: Any) -> Any:
    """The chord from ``y0`` to ``y1`` (Euler's dense output)."""
    return y0 + x * (y1 - y0)


def hermite_basis(x: Any) -> tuple[Any, Any, Any, Any]:
    """The cubic Hermite basis at ``x``: the weights of ``y0``, ``h f0``, ``y1``, ``h f1``."""
    x2 = x * x
    x3 = x2 * x
    return 2 * x3 - 3 * x2 + 1, x3 - 2 * x2 + x, 3 * x2 - 2 * x3, x3 - x2


def hermite(x: Any, h: Any, y0: Any, y1: Any, f0: Any, f1: Any) -> Any:
    """The cubic through ``y0``, ``y1`` with slopes ``f0``, ``f1``."""
    p0, q0, p1, q1 = hermite_basis(x)
    return p0 * y0 + q0 * h * f0 + p1 * y1 + q1 * h * f1


def powers(x: Any, degree: int) -> np.ndarray:
    """``x**1 .. x**degree`` (the last axis), for ``b_dense @ powers``."""
    return np.asarray(x)[..., None] ** np.arange(1, degree + 1)
