"""The JAX engine: jax + diffrax + equinox + optax."""

from __future__ import annotations

from typing import Any, ClassVar

from odeplug.backend import Backend

__all__ = ["JaxBackend"]


class JaxBackend(Backend):
    """JAX (diffrax's ``diffeqsolve``)."""

    name: ClassVar[str] = "jax"
    requires: ClassVar[tuple[str, ...]] = ("jax", "diffrax", "equinox", "optax")
    install: ClassVar[str] = 'pip install "odeplug[jax]"'
    array_modules: ClassVar[tuple[str, ...]] = ("jax", "jaxlib")

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        from .solve import odeint

        return odeint(func, y0, t, args, config, count_backward=count_backward)

    def make_program(self, spec: Any) -> Any:
        from .models import make_program

        return make_program(spec)
