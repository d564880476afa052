"""The JAX engine: jax + diffrax + equinox + optax."""

from __future__ import annotations

from typing import Any, ClassVar

from odeplug._config import resolve_jax_cache_dir
from odeplug.backend import Backend

__all__ = ["JaxBackend", "use_compilation_cache"]


class JaxBackend(Backend):
    """JAX (diffrax's ``diffeqsolve``)."""

    name: ClassVar[str] = "jax"
    requires: ClassVar[tuple[str, ...]] = ("jax", "diffrax", "equinox", "optax")
    install: ClassVar[str] = 'pip install "odeplug[jax]"'
    array_modules: ClassVar[tuple[str, ...]] = ("jax", "jaxlib")

    def __init__(self) -> None:
        # Once per process: the registry makes one instance of each engine.
        use_compilation_cache(resolve_jax_cache_dir())

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        from .solve import odeint

        return odeint(func, y0, t, args, config, count_backward=count_backward)

    def make_program(self, spec: Any) -> Any:
        from .programs import make_program

        return make_program(spec)


def use_compilation_cache(path: str | None) -> str | None:
    """Turn on JAX's persistent compilation cache in ``path`` (None: leave it off).

    Tracing still happens in every process, but XLA's compilation, most of the cost of
    a first fit that is not tracing, is read back from disk by later processes (joblib
    workers, reruns). A folder the user set with JAX's own ``jax_compilation_cache_dir``
    (or ``JAX_COMPILATION_CACHE_DIR``) wins. Returns the folder in use.
    """
    import jax  # here: importing the backend must not import jax

    current = jax.config.jax_compilation_cache_dir
    if current is not None or path is None:
        return current
    jax.config.update("jax_compilation_cache_dir", path)
    return path
