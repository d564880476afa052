"""The Backend contract and the registry of engines.

A backend is an object with a ``name`` that provides

1. ``odeint(func, y0, t, args, config)`` on its own arrays, returning the states at
   every time of ``t`` and an :class:`~odeplug.ODEStats`, and ``odeint_rows(func, y0, t,
   args, config)``, each row of ``y0`` its own problem, returning the states and per-row
   counters (optional for a third party's engine);
2. ``make_program(spec)``: for a model spec (a frozen dataclass of the core, see
   ``odeplug._specs``), a program with ``init``, ``step`` and the family's inference
   (:mod:`odeplug._protocols`). An engine with odeplug's floor plan names its package
   (``programs_package``) and the default finds the program where the spec says
   (``spec.program``: module and class);
3. optionally, devices: ``resolve_device(name)`` turns an estimator's ``device``
   (:data:`DEVICES`) into ``"cpu"`` or ``"cuda"`` (or raises
   :class:`~odeplug.DeviceNotAvailableError`), and ``device_scope(device)`` is the block
   in which the estimators run every program call, so that programs place their arrays
   there without device code of their own. By default an engine computes on the CPU
   only.

Backends are registered under the entry-point group ``odeplug.backends`` and loaded
lazily: importing odeplug imports no engine. A backend's class must be importable
without its engine (import torch or jax inside methods), so that
:func:`available_backends` can describe it when the engine is missing.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import importlib.metadata
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ._config import resolve_backend_name
from .exceptions import BackendNotAvailableError, DeviceNotAvailableError

__all__ = [
    "DEVICES",
    "Backend",
    "BackendInfo",
    "available_backends",
    "get_backend",
    "register_backend",
    "backend_for_array",
]

ENTRY_POINT_GROUP = "odeplug.backends"

# Values of the estimators' ``device``: "auto" is a GPU where the engine sees one.
DEVICES = ("cpu", "cuda", "auto")


class Backend(abc.ABC):
    """Base class of odeplug's engines (reference, torch, jax, or a third party's).

    Attributes
    ----------
    name : str
        Registry name, the value of ``backend=``.
    requires : tuple of str
        Distributions (pip names) the engine needs; a backend is available when all
        are installed.
    install : str
        The command that installs them, shown in errors.
    array_modules : tuple of str
        Top-level modules whose array types this backend owns: ``odeint`` dispatches
        an array of such a type here when no ``backend=`` is given.
    default_dtype : str
        Floating dtype of the estimators' parameters on this engine.
    programs_package : str or None
        The package holding the engine's model programs in odeplug's floor plan
        (``odenet``, ``cnf``, ``flow_matching``, ``latent`` modules); None: the engine
        has none, or overrides :meth:`make_program`.

    See Also
    --------
    register_backend, get_backend

    Examples
    --------
    >>> import odeplug
    >>> engine = odeplug.get_backend("reference")
    >>> isinstance(engine, odeplug.Backend), engine.name, engine.default_dtype
    (True, 'reference', 'float64')
    """

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    install: ClassVar[str] = ""
    array_modules: ClassVar[tuple[str, ...]] = ()
    default_dtype: ClassVar[str] = "float32"
    programs_package: ClassVar[str | None] = None

    @abc.abstractmethod
    def odeint(self, func: Callable, y0: Any, t: Any, args: Any, config: Any, *,
               count_backward: bool = True) -> tuple[Any, Any]:
        """Solve ``dy/dt = func(t, y, args)`` from ``y0`` at the times ``t``.

        ``config`` is a validated :class:`odeplug.ODESolveConfig`. Returns ``(ys,
        stats)`` with ``ys[i]`` the state at ``t[i]`` and ``stats`` an ``ODEStats``.
        ``count_backward=False``: the caller will not read the backward pass's counts,
        so an engine may skip counting the VJPs of backpropagation (a hook per
        evaluation, several percent of a small field's cost).
        """

    def odeint_rows(self, func: Callable, y0: Any, t: Any, args: Any,
                    config: Any) -> tuple[Any, dict[str, Any]]:
        """Solve each row of ``y0`` (shape ``(n, d)``) as its own problem, no gradients.

        Every row gets its own adaptive steps, so its states and counters are those of
        :meth:`odeint` on that row alone. ``func(t, y, args)`` takes a batch of rows,
        ``y`` of shape ``(m, d)`` and ``t`` of shape ``(m, 1)`` (each row's time); ``t``
        is one grid ``(T,)`` or one per row ``(n, T)``, NaN-padded at the end;
        ``config.adjoint`` is ignored. Returns ``(ys, counters)``: ``ys`` of shape
        ``(T, n, d)`` in the engine's arrays, ``counters`` a dict of ``nfe_forward``,
        ``n_steps`` and ``n_rejected``, NumPy arrays of shape ``(n,)``. A failed row
        raises the ``SolverError`` of that row alone, prefixed ``"row i: "`` (the lowest
        failed row). See :func:`odeplug.odeint_rows`.

        By default the engine has none (a third party's engine may add it).
        """
        raise NotImplementedError(f"the {self.name} engine has no odeint_rows")

    def concatenate(self, arrays: list) -> Any:
        """The 1-D arrays ``arrays``, of this engine's type, joined end to end
        (differentiably): how ``odeint`` flattens a tuple state. The default is
        autograd's NumPy (NumPy arrays and autograd's boxes)."""
        import autograd.numpy as anp

        return anp.concatenate(arrays)

    def make_program(self, spec: Any) -> Any:
        """The program of a model spec: the class ``spec.program`` names, from its
        module in :attr:`programs_package`.

        Examples
        --------
        >>> import odeplug
        >>> from odeplug._specs import ODENetSpec
        >>> spec = ODENetSpec(n_features=2, n_outputs=2, embed_dim=4, field_hidden=(4,),
        ...                   augment_dim=0, embed_activation="relu",
        ...                   field_activation="tanh")
        >>> type(odeplug.get_backend("reference").make_program(spec)).__name__
        'ODENetProgram'
        """
        location = getattr(spec, "program", None)
        if self.programs_package is None or location is None:
            raise NotImplementedError(
                f"the {self.name} engine has no program for {type(spec).__name__}")
        module, attr = location
        return getattr(importlib.import_module(f"{self.programs_package}.{module}"), attr)(spec)

    def limit_threads(self, n: int) -> contextlib.AbstractContextManager:
        """Limit the engine's own thread pools to ``n`` (BLAS is handled by the core)."""
        return contextlib.nullcontext()

    def gpu_missing(self) -> str | None:
        """None where the engine sees a GPU, else what is missing (said in the error of
        ``device="cuda"``). The default: an engine that computes on the CPU only."""
        return "it computes on the CPU only (backend='torch' and backend='jax' run on GPUs)"

    def resolve_device(self, device: str) -> str:
        """The device an estimator's ``device`` means on this engine: ``"cpu"`` or
        ``"cuda"`` (``"auto"``: ``"cuda"`` where :meth:`gpu_missing` finds nothing
        missing).

        Raises
        ------
        DeviceNotAvailableError
            ``device="cuda"`` and the engine sees no GPU; the message says what is
            missing.
        ValueError
            ``device`` is none of :data:`DEVICES`.

        Examples
        --------
        >>> import odeplug
        >>> odeplug.get_backend("reference").resolve_device("auto")
        'cpu'
        """
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if device == "cpu":
            return "cpu"
        missing = self.gpu_missing()
        if missing is None:
            return "cuda"
        if device == "cuda":
            raise DeviceNotAvailableError(self.name, device, missing)
        return "cpu"

    def device_scope(self, device: str) -> contextlib.AbstractContextManager:
        """The block in which programs place their arrays on ``device`` (a value of
        :meth:`resolve_device`). Parameters still cross the program contract as NumPy
        arrays, so a model fitted on one device predicts on any other."""
        if device != "cpu":
            raise DeviceNotAvailableError(self.name, device, self.gpu_missing() or "")
        return contextlib.nullcontext()

    @classmethod
    def missing_requirements(cls) -> list[str]:
        missing = []
        for dist in cls.requires:
            try:
                importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                missing.append(dist)
        return missing

    @classmethod
    def versions(cls) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for dist in cls.requires:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = None
        return out

    def __repr__(self) -> str:
        return f"<odeplug backend {self.name!r}>"


@dataclass(frozen=True)
class BackendInfo:
    """What :func:`available_backends` reports for one registered engine.

    Attributes
    ----------
    name : str
        Registry name.
    available : bool
        Whether every distribution the engine needs is installed.
    versions : dict of str to str or None
        Installed version of each (None: missing).
    install : str
        The pip command that installs the engine.
    target : str
        Where the engine's class lives (``"module:Class"``).

    Examples
    --------
    >>> import odeplug
    >>> info = odeplug.available_backends()["reference"]
    >>> info.available, info.install, sorted(info.versions)
    (True, 'pip install odeplug', ['autograd', 'numpy'])
    """

    name: str
    available: bool
    versions: dict[str, str | None]
    install: str
    target: str


# name -> "module:attribute" or a Backend subclass; filled in code and from entry points.
_targets: dict[str, str | type[Backend]] = {"reference": "odeplug.reference:ReferenceBackend"}
_instances: dict[str, Backend] = {}
_classes: dict[str, type[Backend]] = {}
_lock = threading.RLock()
_entry_points_loaded = False


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Register an engine under ``name``: a ``"module:Class"`` path or a Backend class.

    Third parties normally register through the entry-point group
    ``odeplug.backends`` instead; this is for code that is not installed.

    Parameters
    ----------
    name : str
        The value of ``backend=`` that selects the engine.
    target : str or Backend subclass
        ``"module:Class"`` (imported on first use) or the class itself.

    Examples
    --------
    An engine that reuses the reference one under another name:

    >>> import odeplug
    >>> from odeplug.reference import ReferenceBackend
    >>> class Mine(ReferenceBackend):
    ...     name = "mine"
    >>> odeplug.register_backend("mine", Mine)
    >>> odeplug.get_backend("mine").name
    'mine'
    >>> odeplug.available_backends()["mine"].available
    True
    """
    with _lock:
        _targets[name] = target
        _instances.pop(name, None)
        _classes.pop(name, None)


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            # Names registered in code win; duplicates (several installs) count once.
            _targets.setdefault(ep.name, ep.value)
        _entry_points_loaded = True


def registered_backends() -> list[str]:
    _load_entry_points()
    return sorted(_targets)


def _backend_class(name: str) -> type[Backend]:
    _load_entry_points()
    with _lock:
        if name in _classes:
            return _classes[name]
        if name not in _targets:
            raise ValueError(
                f"unknown backend {name!r}; registered backends: {registered_backends()}"
            )
        target = _targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module_name), attr)
        else:
            cls = target
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"backend {name!r} ({target}) is not an odeplug.Backend subclass")
        _classes[name] = cls
        return cls


def get_backend(name: str | Backend | None = None) -> Backend:
    """The engine called ``name`` (None: the configured one).

    Raises
    ------
    ValueError
        ``name`` is not registered; the message lists the registered ones.
    BackendNotAvailableError
        It is registered but its engine is not installed; the message says which pip
        extra installs it.

    Examples
    --------
    >>> import odeplug
    >>> odeplug.get_backend("reference")
    <odeplug backend 'reference'>
    >>> with odeplug.config_context(backend="reference"):
    ...     odeplug.get_backend().name
    'reference'
    >>> odeplug.get_backend("numba")
    Traceback (most recent call last):
    ...
    ValueError: unknown backend 'numba'; registered backends: [...]
    """
    if isinstance(name, Backend):
        return name
    name = resolve_backend_name(name)
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {name!r}")
    with _lock:
        if name in _instances:
            return _instances[name]
        cls = _backend_class(name)
        missing = cls.missing_requirements()
        if missing:
            raise BackendNotAvailableError(name, cls.install, f"missing {', '.join(missing)}")
        _instances[name] = instance = cls()
        return instance


def available_backends() -> dict[str, BackendInfo]:
    """Every registered engine, installed or not.

    Returns
    -------
    dict of str to BackendInfo
        For each name: whether it is installed, the versions of what it needs, and
        the command that installs it.

    Examples
    --------
    >>> import odeplug
    >>> odeplug.available_backends()["reference"].available
    True
    """
    out = {}
    for name in registered_backends():
        cls = _backend_class(name)
        target = _targets[name]
        out[name] = BackendInfo(
            name=name,
            available=not cls.missing_requirements(),
            versions=cls.versions(),
            install=cls.install,
            target=target if isinstance(target, str) else f"{cls.__module__}:{cls.__name__}",
        )
    return out


def backend_for_array(x: Any) -> str | None:
    """The registered backend owning the array type of ``x``, if any (no engine import)."""
    module = type(x).__module__.split(".")[0]
    for name in registered_backends():
        try:
            cls = _backend_class(name)
        except Exception:  # a broken third-party plugin must not break dispatch
            continue
        if module in cls.array_modules:
            return name
    return None
