"""The JAX engine: jax + diffrax + equinox + optax."""

from __future__ import annotations

from typing import ClassVar

from odeplug._config import resolve_jax_cache_dir
from odeplug.backend import Backend

__all__ = ["JaxBackend", "use_compilation_cache"]


class JaxBackend(Backend):
    """JAX (diffrax's ``diffeqsolve``)."""

    name: ClassVar[str] = "jax"
    requires: ClassVar[tuple[str, ...]] = ("jax", "diffrax", "equinox", "optax")
    install: ClassVar[str] = 'pip install "odeplug[jax]"'
    array_modules: ClassVar[tuple[str, ...]] = ("jax", "jaxlib")
    programs_package: ClassVar[str] = "odeplug_backends.jax"

    def __init__(self) -> None:
        # Once per process: the registry makes one instance of each engine.
        use_compilation_cache(resolve_jax_cache_dir())

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        from .solve import odeint

        return odeint(func, y0, t, args, config, count_backward=count_backward)

    def odeint_rows(self, func, y0, t, args, config):
        from .solve import odeint_rows

        return odeint_rows(func, y0, t, args, config)

    def concatenate(self, arrays):
        import jax.numpy as jnp

        return jnp.concatenate(arrays)

    def gpu_missing(self) -> str | None:
        from .programs import platform_devices

        if platform_devices("gpu"):
            return None
        import jax

        return (f"jax {jax.__version__} has no GPU platform (platforms: "
                f"{', '.join(sorted({d.platform for d in jax.devices()}))}; install "
                "jax with CUDA: pip install -U \"jax[cuda12]\")")

    def device_scope(self, device: str):
        """Every array and computation of the programs on ``device`` inside the block
        (``jax.default_device``), and training steps data parallel over all of that
        platform's devices when there are several (``run_step``; off with
        ``odeplug.set_config(data_parallel=False)``)."""
        if device != "cpu":
            missing = self.gpu_missing()
            if missing is not None:
                from odeplug.exceptions import DeviceNotAvailableError

                raise DeviceNotAvailableError(self.name, device, missing)
        from .programs import placed_on

        return placed_on("gpu" if device == "cuda" else "cpu")


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
