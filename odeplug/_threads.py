"""Thread limits inside odeplug's computations.

Small ODE models run fastest single-threaded: thread pools spend more on hand-offs than on
arithmetic (measured: an ODE-Net ran ~9x slower with torch's default thread count on a
2-core machine), and one thread per process never oversubscribes under joblib's n_jobs.
``odeplug.set_config(num_threads=None)`` leaves the libraries' own settings alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ._config import get_config

__all__ = ["limit_threads"]

_controller = None


def _threadpool_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def limit_threads(backend: Any) -> Iterator[None]:
    """Limit BLAS/OpenMP pools, and the backend's own pools, to ``num_threads``."""
    n = get_config()["num_threads"]
    if n is None:
        yield
        return
    with _threadpool_controller().limit(limits=n), backend.limit_threads(n):
        yield
