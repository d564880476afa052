"""odeplug's configuration in joblib workers: carried by the estimator that is sent there.

scikit-learn forwards its own configuration to joblib workers in
``sklearn.utils.parallel``: its ``Parallel.__call__`` captures ``sklearn.get_config()`` in
the caller's thread, and its ``delayed`` wrapper restores it around the task in the
worker. ``GridSearchCV``, ``cross_validate`` and the other meta-estimators use them. That
dictionary cannot carry odeplug's settings (the worker calls
``sklearn.config_context(**config)``, which refuses unknown keys), and patching
scikit-learn or joblib is not a contract. What does reach every worker, on every joblib
backend (loky, threading, Dask, Ray), is the estimator itself. So the estimator carries
the settings:

* **Taken at clone.** Every scikit-learn meta-estimator clones the estimator before it
  hands it to a worker, and its first clone (``clone(self.estimator)`` at the start of
  ``GridSearchCV.fit``, ``cross_validate``, ...) runs in the caller's thread, inside the
  caller's ``config_context``. ``ODEEstimatorBase.__sklearn_clone__`` attaches to the
  clone a :class:`CarriedConfig`: the settings the caller *chose*
  (:func:`odeplug._config.chosen_config`: ``set_config``/``config_context`` of that
  thread, the environment variables; not the defaults) and where they were taken (process
  and thread). A clone of a clone made away from that thread (joblib dispatches later
  tasks from its own threads, and clones inside workers) inherits the carried settings:
  the settings of the thread that started the search, not those of a dispatch thread.
* **Applied away from home.** Inside the estimator's own computations (fit, partial_fit,
  every inference call) in *another* process or thread, the carried settings apply for the
  keys that thread has not set itself (:func:`odeplug._config.fallback_context`). In the
  thread that took them they never apply: there the estimator reads the configuration of
  the moment, as every scikit-learn estimator does, so ``best_estimator_`` predicts with
  the settings of the moment after the search, not those of the search.
* **Never in a model.** A *fitted* estimator is pickled without them (what comes back
  from a worker, what a user pickles or dumps with joblib), and ``odeplug.save`` never
  writes them: a fitted model never brings a configuration into another process.

Alternatives weighed: environment variables reach a loky worker only when it is spawned
(loky reuses workers across calls, and a Dask or Ray worker is started apart from the
caller), so a ``config_context`` around one search would not reach them; a Dask worker
plugin or a loky initializer is per cluster or per pool, not per call, and needs code in
the caller; wrapping ``sklearn.utils.parallel`` would patch scikit-learn's private code.
Carrying the settings at pickle time instead of clone time fails too: joblib pickles tasks
in its feeder threads and Dask in its event loop, where the caller's thread-local
configuration is not visible.

Limits (documented in ``docs/files_and_scaleout.md``): settings travel with clones, so a
function that sends a fitted estimator to workers without cloning it (for instance
``permutation_importance(n_jobs=...)``) runs it there with the worker's own settings: give
the estimator ``backend=`` for a fixed engine. JAX's compilation cache folder is set once
per process, by the first JAX computation there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._config import chosen_config, fallback_context

__all__ = ["CARRIED_ATTRIBUTE", "CarriedConfig", "applied", "carried_for_clone"]

# The estimator attribute that holds it (private and without a trailing underscore:
# neither a parameter nor a fitted attribute for scikit-learn's checks).
CARRIED_ATTRIBUTE = "_carried_config"

# Tells processes apart even where two of them share a pid (hosts of a Dask cluster), and
# a forked child from its parent (same token, another pid).
_PROCESS_TOKEN = uuid.uuid4().hex


def _here() -> tuple[str, int, int]:
    return (_PROCESS_TOKEN, os.getpid(), threading.get_ident())


@dataclass(frozen=True)
class CarriedConfig:
    """Settings a caller chose, and the process and thread where they were taken."""

    config: tuple[tuple[str, Any], ...]
    origin: tuple[str, int, int]

    @property
    def at_home(self) -> bool:
        """True in the thread that took them."""
        return self.origin == _here()


def carried_for_clone(source: CarriedConfig | None) -> CarriedConfig:
    """What a clone carries: the source's carried settings away from their home thread
    (a clone in a dispatch thread or a worker), else the settings of this thread."""
    if source is not None and not source.at_home:
        return source
    return CarriedConfig(tuple(chosen_config().items()), _here())


@contextlib.contextmanager
def applied(carried: CarriedConfig | None) -> Iterator[None]:
    """The carried settings, away from their home thread, for the keys this thread has
    not set itself; nothing at home or without any."""
    if carried is None or carried.at_home or not carried.config:
        yield
        return
    with fallback_context(dict(carried.config)):
        yield
