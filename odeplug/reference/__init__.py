"""odeplug's reference engine: NumPy, autograd, odeplug's own solvers and adjoint."""

from __future__ import annotations

from typing import ClassVar

from ..backend import Backend

__all__ = ["ReferenceBackend"]


class ReferenceBackend(Backend):
    """NumPy + autograd (HIPS); always installed."""

    name: ClassVar[str] = "reference"
    requires: ClassVar[tuple[str, ...]] = ("numpy", "autograd")
    install: ClassVar[str] = "pip install odeplug"
    array_modules: ClassVar[tuple[str, ...]] = ("numpy", "autograd")
    programs_package: ClassVar[str] = "odeplug.reference"
    # NumPy is as fast in float64 as in float32 at these sizes, and float64 keeps
    # predictions independent of how inputs are grouped.
    default_dtype: ClassVar[str] = "float64"

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        from .solve import odeint

        return odeint(func, y0, t, args, config, count_backward=count_backward)

    def odeint_rows(self, func, y0, t, args, config):
        from .solve import odeint_rows

        return odeint_rows(func, y0, t, args, config)
