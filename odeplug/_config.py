"""Global and thread-local configuration, as in ``sklearn.set_config``."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["get_config", "set_config", "config_context", "chosen_config", "fallback_context",
           "resolve_backend_name", "resolve_jax_cache_dir"]

ENV_BACKEND = "ODEPLUG_BACKEND"
ENV_JAX_CACHE_DIR = "ODEPLUG_JAX_CACHE_DIR"
DEFAULT_BACKEND = "reference"
# Values of ODEPLUG_JAX_CACHE_DIR that turn the persistent compilation cache off.
_OFF = ("", "0", "off", "none", "false")

_global_config: dict[str, Any] = {
    # None: the environment variable ODEPLUG_BACKEND, then "reference".
    "backend": None,
    # Threads that torch and NumPy's BLAS may use inside odeplug's own computations.
    # Small ODE models run fastest on one thread (measured: torch's default thread
    # count ran an ODE-Net ~9x slower on a 2-core machine), and one thread per
    # process never oversubscribes under joblib's n_jobs. None leaves them alone.
    "num_threads": 1,
    # JAX's persistent compilation cache: None means the environment variable
    # ODEPLUG_JAX_CACHE_DIR, then a folder in the user's cache directory; "" turns it off.
    "jax_cache_dir": None,
    # JAX: shard each training step's batch over all devices of the estimator's
    # platform when it has several (the result is one device's up to rounding).
    "data_parallel": True,
}
_local = threading.local()


def _thread_config() -> dict[str, Any]:
    if not hasattr(_local, "config"):
        _local.config = dict(_global_config)
    return _local.config


def _chosen_keys() -> set[str]:
    """Keys this thread set with set_config / config_context (not the defaults): what a
    user chose, which is what travels to joblib workers (:func:`chosen_config`)."""
    if not hasattr(_local, "chosen"):
        _local.chosen = set()
    return _local.chosen


def get_config() -> dict[str, Any]:
    """Return a copy of odeplug's configuration for the current thread.

    Returns
    -------
    config : dict
        ``backend``: the engine used when none is given (None means the environment
        variable ``ODEPLUG_BACKEND``, then ``"reference"``); ``num_threads``: threads
        that torch and BLAS may use inside odeplug (None: leave them as they are);
        ``jax_cache_dir``: the folder of JAX's persistent compilation cache (None: the
        environment variable ``ODEPLUG_JAX_CACHE_DIR``, then
        ``~/.cache/odeplug/jax``; ``""``: off); ``data_parallel``: on the jax engine,
        training steps sharded over all devices of the estimator's ``device`` platform
        when it has several.

    Examples
    --------
    >>> import odeplug
    >>> {"backend", "num_threads", "jax_cache_dir"} <= set(odeplug.get_config())
    True
    >>> with odeplug.config_context(backend="reference"):
    ...     odeplug.get_config()["backend"]
    'reference'
    """
    return dict(_thread_config())


def set_config(backend: str | None = None, num_threads: int | None | str = "unchanged",
               jax_cache_dir: str | None = "unchanged",
               data_parallel: bool | None = None) -> None:
    """Set odeplug's configuration for the current thread.

    Parameters
    ----------
    backend : str, optional
        Engine to use where none is given: ``"reference"``, ``"torch"``, ``"jax"`` or
        any registered backend. ``None`` leaves it unchanged.
    num_threads : int or None, optional
        Threads for torch and BLAS inside odeplug; ``None`` leaves the libraries'
        own settings alone. Not given: unchanged.
    jax_cache_dir : str or None, optional
        Folder of JAX's persistent compilation cache, which the JAX engine turns on when
        it is first used in a process (a second process, a joblib worker or a rerun of a
        script then skips XLA's compilations): ``None`` for the default
        (``ODEPLUG_JAX_CACHE_DIR``, else ``~/.cache/odeplug/jax``), ``""`` to turn it
        off. A folder set with JAX's own ``jax_compilation_cache_dir`` is left alone.
        Not given: unchanged.
    data_parallel : bool, optional
        On the jax engine, shard each training step's batch over all devices of the
        estimator's ``device`` platform when it has several (several GPUs; CPU devices
        made with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``): the same fit
        up to floating-point rounding. Default True; ``None`` leaves it unchanged.

    Examples
    --------
    >>> import odeplug
    >>> odeplug.set_config(backend="reference")
    >>> odeplug.get_config()["backend"]
    'reference'
    """
    config = _thread_config()
    chosen = _chosen_keys()
    if backend is not None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a string, got {type(backend).__name__}")
        config["backend"] = backend
        chosen.add("backend")
    if num_threads != "unchanged":
        if num_threads is not None and (isinstance(num_threads, bool)
                                        or not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        config["num_threads"] = num_threads
        chosen.add("num_threads")
    if jax_cache_dir != "unchanged":
        if jax_cache_dir is not None and not isinstance(jax_cache_dir, (str, os.PathLike)):
            raise TypeError(f"jax_cache_dir must be a path, '' or None, got {jax_cache_dir!r}")
        config["jax_cache_dir"] = None if jax_cache_dir is None else os.fspath(jax_cache_dir)
        chosen.add("jax_cache_dir")
    if data_parallel is not None:
        if not isinstance(data_parallel, bool):
            raise TypeError(f"data_parallel must be True or False, got {data_parallel!r}")
        config["data_parallel"] = data_parallel
        chosen.add("data_parallel")


@contextmanager
def config_context(**new_config: Any) -> Iterator[None]:
    """Temporarily change the configuration, restored on exit (also on error).

    Examples
    --------
    >>> import odeplug
    >>> with odeplug.config_context(backend="reference"):
    ...     odeplug.get_config()["backend"]
    'reference'
    """
    old, old_chosen = get_config(), set(_chosen_keys())
    set_config(**new_config)
    try:
        yield
    finally:
        _restore(old, old_chosen)


def _restore(config: dict[str, Any], chosen: set[str]) -> None:
    _thread_config().clear()
    _thread_config().update(config)
    _chosen_keys().clear()
    _chosen_keys().update(chosen)


def chosen_config() -> dict[str, Any]:
    """The settings this thread's user chose, without the defaults.

    What ``set_config``/``config_context`` set in this thread, and what the environment
    variables ``ODEPLUG_BACKEND`` and ``ODEPLUG_JAX_CACHE_DIR`` give for the keys left
    unset. This, not the whole configuration, is what travels with an estimator to a
    joblib worker (:mod:`odeplug._parallel`): a worker keeps its own defaults for what
    the caller did not choose, so a default never overrides a worker's environment.
    """
    config, chosen = _thread_config(), _chosen_keys()
    out = {key: config[key] for key in sorted(chosen)}
    if "backend" not in out and os.environ.get(ENV_BACKEND):
        out["backend"] = os.environ[ENV_BACKEND]
    if "jax_cache_dir" not in out and ENV_JAX_CACHE_DIR in os.environ:
        out["jax_cache_dir"] = os.environ[ENV_JAX_CACHE_DIR]
    return out


@contextmanager
def fallback_context(config: dict[str, Any]) -> Iterator[None]:
    """Use ``config`` for the keys this thread has not set itself; restored on exit.

    How a configuration carried from another thread or process applies: below what the
    receiving thread chose (``set_config``/``config_context`` there win), above its
    defaults and environment. Unknown keys (from a newer odeplug) are ignored.
    """
    old, old_chosen = get_config(), set(_chosen_keys())
    current = _thread_config()
    for key, value in config.items():
        if key in current and key not in old_chosen:
            current[key] = value
    try:
        yield
    finally:
        _restore(old, old_chosen)


def resolve_jax_cache_dir() -> str | None:
    """The folder of JAX's persistent compilation cache, or None for no cache: the
    configuration, else ``ODEPLUG_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/odeplug/jax``
    (``~/.cache/odeplug/jax``)."""
    configured = _thread_config()["jax_cache_dir"]
    if configured is None:
        configured = os.environ.get(ENV_JAX_CACHE_DIR)
    if configured is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                 ".cache")
        return os.path.join(base, "odeplug", "jax")
    return None if configured.strip().lower() in _OFF else configured


def resolve_backend_name(backend: str | None = None) -> str:
    """The engine name to use: ``backend``, else the configuration, else the
    environment variable ``ODEPLUG_BACKEND``, else ``"reference"``."""
    if backend is not None:
        return backend
    configured = _thread_config()["backend"]
    if configured is not None:
        return configured
    return os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND
