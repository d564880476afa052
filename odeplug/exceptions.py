"""Errors raised by odeplug, shared by every backend."""

from __future__ import annotations

from typing import Any

__all__ = ["BackendNotAvailableError", "DeviceNotAvailableError", "SolverError",
           "TrainingDivergedError"]


class BackendNotAvailableError(ImportError):
    """A registered backend whose engine is not installed.

    The message names the pip extra that installs it, for example
    ``pip install "odeplug[jax]"``. A subclass of ``ImportError``.

    Attributes
    ----------
    name : str
        The engine's registry name.
    install : str
        The pip command that installs it.

    Examples
    --------
    >>> import odeplug
    >>> error = odeplug.BackendNotAvailableError("jax", 'pip install "odeplug[jax]"')
    >>> print(error)  # doctest: +ELLIPSIS
    odeplug backend 'jax' is registered but ...; install it with: pip install "odeplug[jax]"
    """

    def __init__(self, name: str, install: str, reason: str = ""):
        self.name = name
        self.install = install
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"odeplug backend {name!r} is registered but its engine is not installed"
            f"{detail}; install it with: {install}"
        )


class DeviceNotAvailableError(RuntimeError):
    """``device="cuda"`` on an engine that sees no GPU.

    The message names the engine and what is missing (a CUDA build of torch, a GPU
    platform of jax, a driver, or an engine that computes on the CPU only), worded the
    same on every engine. Nothing has been computed or changed when it is raised.

    Examples
    --------
    >>> import numpy as np
    >>> import odeplug
    >>> clf = odeplug.ODEClassifier(backend="reference", device="cuda")
    >>> try:
    ...     clf.fit(np.zeros((4, 2)), [0, 1, 0, 1])
    ... except odeplug.DeviceNotAvailableError as error:
    ...     print(error.engine, error.device)
    reference cuda
    >>> hasattr(clf, "params_")  # nothing was fitted
    False
    """

    def __init__(self, engine: str, device: str, missing: str):
        self.engine = engine
        self.device = device
        self.missing = missing
        super().__init__(
            f"device={device!r} asks for a GPU, and the {engine} engine sees none: "
            f"{missing}. Use device='cpu', or device='auto' (a GPU where the engine "
            "sees one, else the CPU)")


class SolverError(RuntimeError):
    """An ODE solve that could not reach the end of its time grid.

    Attributes
    ----------
    reason : {"max_num_steps", "step_size_underflow", "non_finite"}
        Why the solve stopped.
    t : float
        The time the solver had reached.
    ts : ndarray or None
        The requested output times reached before the failure.
    ys : ndarray or None
        The solution at ``ts`` (the solution so far).

    Examples
    --------
    ``dy/dt = y**2`` from ``y(0) = 1`` blows up at ``t = 1``:

    >>> import numpy as np
    >>> import odeplug
    >>> try:
    ...     odeplug.odeint(lambda t, y, a: y**2, np.ones(1), np.array([0.0, 0.5, 2.0]))
    ... except odeplug.SolverError as error:
    ...     print(error.reason, round(error.t, 3), error.ts, error.ys.round(6))
    step_size_underflow 1.0 [0.  0.5] [[1.]
     [2.]]
    """

    def __init__(self, message: str, *, reason: str, t: float, ts: Any = None, ys: Any = None):
        self.reason = reason
        self.t = float(t)
        self.ts = ts
        self.ys = ys
        super().__init__(message)


class TrainingDivergedError(RuntimeError):
    """Training stopped: a non-finite or exploding loss, or a failed solve.

    The estimator is left able to predict: a fresh fit keeps the last parameters whose
    training loss was finite and sane (if there were none, the estimator is restored as
    it was: unfitted, or with its previous fit), a ``warm_start`` fit or ``partial_fit``
    restores the estimator as it was before the call. The message says which, words the
    cause the same on every engine, and gives the advice that fits it.

    Attributes
    ----------
    epoch : int or None
        The epoch (counted over the whole history) in which training diverged.
    params : dict of str to ndarray or None
        The last verified parameters of the failed run (None if no step was sane).

    Examples
    --------
    A learning rate that blows the parameters up:

    >>> from sklearn.datasets import make_moons
    >>> from odeplug import ODEClassifier, TrainingDivergedError
    >>> X, y = make_moons(60, random_state=0)
    >>> clf = ODEClassifier((), latent_dim=4, learning_rate_init=1e8, max_iter=5,
    ...                     random_state=0)
    >>> try:
    ...     clf.fit(X, y)
    ... except TrainingDivergedError as error:
    ...     print(error.epoch, sorted(error.params) == sorted(clf.params_))
    2 True
    >>> clf.predict(X[:2]).shape  # the last sane parameters predict
    (2,)
    """

    def __init__(self, message: str, *, epoch: int | None = None, params: Any = None):
        self.epoch = epoch
        self.params = params
        super().__init__(message)
