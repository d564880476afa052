"""The one solve entry point, dispatching to an engine at run time."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._config import resolve_backend_name
from ._solver_options import (
    DEFAULT_ATOL,
    DEFAULT_MAX_NUM_STEPS,
    DEFAULT_RTOL,
    BacksolveAdjoint,
    make_solve_config,
)
from ._validation import check_initial_state, check_time_grid
from .backend import backend_for_array, get_backend

__all__ = ["odeint", "odeint_rows"]


def odeint(
    func: Callable,
    y0: Any,
    t: Any,
    args: Any = None,
    *,
    solver: str = "dopri5",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    step_size: float | None = None,
    adjoint: bool | BacksolveAdjoint = False,
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    options: Mapping[str, Any] | None = None,
    backend: str | None = None,
    return_stats: bool = False,
):
    """Solve ``dy/dt = func(t, y, args)`` from ``y(t[0]) = y0``; return ``y`` at every ``t``.

    The same call runs on odeplug's NumPy engine, on PyTorch (odeplug's own stepper;
    torchdiffeq as an option) or on JAX (diffrax); ``func`` is written with the chosen
    engine's operations.

    Parameters
    ----------
    func : callable
        Vector field ``func(t, y, args) -> dy/dt``, same shape and dtype as ``y``.
    y0 : array or tuple of arrays
        Initial state, of any shape (a batch of states is one array). NumPy array, torch
        tensor or JAX array. A tuple of arrays of one type and dtype (torchdiffeq's tuple
        state) is solved as one state: ``func`` receives and returns tuples, and ``ys``
        is a tuple; the error norm is the RMS norm over all their entries.
    t : 1-D array
        Output times, strictly increasing or strictly decreasing; ``t[0]`` is the time of
        ``y0``. The solver does not step onto intermediate times (dense output) and ends
        exactly on ``t[-1]``. A grid of one time returns ``y0`` (nothing is evaluated).
    args : pytree, optional
        Parameters passed to ``func`` (dicts, lists, tuples of arrays). Gradients w.r.t.
        them flow through ``odeint`` on every engine (autograd, torch autograd, JAX). On
        torch, ``func`` may also be an ``nn.Module`` whose parameters are used. Leaves
        wrapped in :class:`odeplug.Constant` reach ``func`` unwrapped and are not
        differentiated (the adjoint integrates no channel for them).
    solver : {"euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "tsit5", "dopri8"}
        Fixed-step solvers take ``step_size``; adaptive ones take ``rtol``/``atol``. An
        engine lacking one names those it has.
    rtol, atol : float
        Relative and absolute tolerance: a step is accepted when the RMS norm of
        ``err / (atol + rtol * max(|y0|, |y1|))`` is below 1.
    step_size : float, optional
        Step of the fixed-step solvers; the last step ends exactly on ``t[-1]``.
    adjoint : bool or BacksolveAdjoint, default=False
        True: gradients by the adjoint method (memory independent of the number of
        steps). False: backpropagation through the solver's operations.
    max_num_steps : int, default=4096
        Budget of steps (accepted and rejected); exceeding it raises ``SolverError``
        with the time reached.
    options : dict, optional
        Step-size controller settings: ``first_step``, ``safety`` (0.9), ``factormin``
        (0.2), ``factormax`` (10), ``pcoeff`` (0), ``icoeff`` (1). Unknown keys are errors.
    backend : str, optional
        ``"reference"``, ``"torch"``, ``"jax"`` or another registered engine. Default:
        from the type of ``y0``, else the configuration (``odeplug.set_config``).
    return_stats : bool, default=False
        Also return an ``ODEStats`` (``nfe_forward``, ``nfe_backward``, ``n_steps``,
        ``n_rejected``); ``nfe_backward`` is filled in after a backward pass on the
        reference and torch engines, and stays ``None`` on JAX (a JAX function cannot
        update an object after it returned; ``odeplug_backends.jax.solve.odeint_traced``
        reports it through a probe's gradient). Under ``jax.jit`` the counts are JAX
        scalars.

    Returns
    -------
    ys : array of shape ``(len(t),) + y0.shape``
        In the engine's own array type; for a tuple ``y0``, a tuple of such arrays.
    stats : ODEStats
        Only with ``return_stats=True``.

    Raises
    ------
    ValueError, TypeError
        Bad time grid, NaN/inf or non-floating ``y0``, field output of another shape or
        dtype, unknown solver, option or backend.
    BackendNotAvailableError
        The engine is registered but not installed (the message names the pip extra).
    SolverError
        Step budget exceeded, step size underflow or non-finite state, with the time
        reached and the solution so far, the same on every engine. On JAX only for
        concrete inputs: under ``jit``, ``grad`` or ``vmap`` a failed solve is equinox's
        runtime error with the same message (no Python exception can depend on a traced
        value).

    Examples
    --------
    >>> import numpy as np
    >>> import odeplug
    >>> ys = odeplug.odeint(lambda t, y, k: -k * y, np.array([1.0]), np.array([0.0, 1.0]),
    ...                     args=0.5, rtol=1e-10, atol=1e-12)
    >>> bool(abs(ys[-1, 0] - np.exp(-0.5)) < 1e-9)
    True
    """
    config = make_solve_config(
        solver=solver,
        rtol=rtol,
        atol=atol,
        step_size=step_size,
        adjoint=adjoint,
        max_num_steps=max_num_steps,
        options=options,
    )
    if isinstance(y0, tuple):
        ys, stats = _odeint_tuple(func, y0, t, args, config, backend, return_stats)
    else:
        ys, stats = _odeint_array(func, y0, t, args, config, backend, return_stats)
    return (ys, stats) if return_stats else ys


def _odeint_array(func, y0, t, args, config, backend, count_backward):
    """``odeint`` of one array ``y0``: ``(ys, stats)``."""
    # Host inputs (NumPy arrays, lists, strings) are checked here, once for every
    # engine: torch and jax would refuse strings in their own words on conversion.
    # Engine arrays (which may be traced) are the engines' to check.
    if _on_host(y0):
        check_initial_state(np.asarray(y0))
    if _on_host(t):
        check_time_grid(np.asarray(t))
    if backend is None:
        backend = backend_for_array(y0) or resolve_backend_name(None)
    return get_backend(backend).odeint(func, y0, t, args, config,
                                       count_backward=count_backward)


def odeint_rows(
    func: Callable,
    y0: Any,
    t: Any,
    args: Any = None,
    *,
    solver: str = "dopri5",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    step_size: float | None = None,
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS,
    options: Mapping[str, Any] | None = None,
    backend: str | None = None,
):
    """Solve every row of ``y0`` as its own problem ``dy/dt = func(t, y, args)``.

    Row ``i`` of ``y0`` (shape ``(n, d)``) gets its own time grid, first step, adaptive
    step sizes, step budget and counters: its states and counts are those of
    :func:`odeint` on that row alone (the adaptive cost per input of Chen et al. 2018),
    whatever the other rows. The rows are solved together, one evaluation of ``func``
    per stage for every row still running (reference and torch engines), or as a
    ``vmap`` of one-row solves (JAX). Nothing is differentiated: this is for
    inference.

    Parameters
    ----------
    func : callable
        Vector field on a batch of rows, ``func(t, y, args) -> dy/dt``: ``y`` of shape
        ``(m, d)`` (some of the rows), ``t`` of shape ``(m, 1)``, each row's time, in
        ``y``'s dtype. Row ``j`` of the output depends on row ``j`` of ``y`` only. A
        field written for one shared time (``t * y``) works unchanged.
    y0 : array of shape ``(n, d)``
        Initial states. NumPy array, torch tensor or JAX array.
    t : array of shape ``(T,)`` or ``(n, T)``
        One grid for every row, or one per row: each strictly increasing or strictly
        decreasing (rows may run different ways) and NaN-padded at the end (the row's
        solve ends at its last time; its outputs at NaN times are NaN).
    args : pytree, optional
        Parameters passed to ``func`` (:class:`odeplug.Constant` leaves unwrapped).
    solver, rtol, atol, step_size, max_num_steps, options
        As :func:`odeint`, for each row (``max_num_steps`` per row).
    backend : str, optional
        As :func:`odeint`: from the type of ``y0`` when not given.

    Returns
    -------
    ys : array of shape ``(T, n, d)``
        ``ys[j, i]``: row ``i`` at its ``j``-th time, in the engine's own array type.
    counters : dict of str to numpy.ndarray of shape ``(n,)``
        ``nfe_forward``, ``n_steps`` and ``n_rejected`` of each row, as
        :func:`odeint`'s ``ODEStats`` of that row alone.

    Raises
    ------
    ValueError, TypeError
        ``y0`` not of shape ``(n, d)``, not finite or not floating; bad time grids; a
        field output of another shape or dtype; unknown solver, option or backend.
    SolverError
        For the failed row of lowest index: ``"row i: "`` then the message, reason,
        time reached and solution so far of :func:`odeint` on that row alone.

    See Also
    --------
    odeint : one problem (a batch of states is one problem there: one step size).

    Examples
    --------
    Logistic growth from three starts, each row with its own steps and counts:

    >>> import numpy as np
    >>> import odeplug
    >>> y0 = np.array([[0.001], [0.5], [0.999]])
    >>> ys, counters = odeplug.odeint_rows(lambda t, y, k: k * y * (1 - y), y0,
    ...                                    np.array([0.0, 2.0]), args=3.0, rtol=1e-8,
    ...                                    atol=1e-10)
    >>> exact = 1 / (1 + (1 / y0 - 1) * np.exp(-3.0 * 2.0))
    >>> bool(np.allclose(ys[-1], exact, rtol=1e-6))
    True
    >>> row, stats = odeplug.odeint(lambda t, y, k: k * y * (1 - y), y0[:1],
    ...                             np.array([0.0, 2.0]), args=3.0, rtol=1e-8, atol=1e-10,
    ...                             return_stats=True)
    >>> int(counters["nfe_forward"][0]) == stats.nfe_forward  # row 0 as if alone
    True
    >>> len(set(counters["n_steps"].tolist())) > 1  # the rows took different steps
    True
    """
    config = make_solve_config(solver=solver, rtol=rtol, atol=atol, step_size=step_size,
                               max_num_steps=max_num_steps, options=options)
    if _on_host(y0):
        check_initial_state(np.asarray(y0))
    if backend is None:
        backend = backend_for_array(y0) or resolve_backend_name(None)
    return get_backend(backend).odeint_rows(func, y0, t, args, config)


def _on_host(x: Any) -> bool:
    """NumPy arrays and scalars, and plain Python values (lists, numbers, strings)."""
    return isinstance(x, (np.ndarray, np.generic, list, tuple, str, bytes, int, float,
                          complex))


def _odeint_tuple(func, y0: tuple, t, args, config, backend, count_backward):
    """``odeint`` of a tuple state (torchdiffeq's): its arrays joined into one flat state
    on the engine of their type, solved as one, and split again."""
    if not y0:
        raise ValueError("y0 is an empty tuple")
    owners = {backend_for_array(y) for y in y0 if not _on_host(y)}
    if len(owners) > 1 or (owners and any(_on_host(y) for y in y0)):
        raise TypeError(f"the arrays of a tuple y0 must be of one type, got "
                        f"{sorted({type(y).__name__ for y in y0})}")
    if backend is None:
        backend = next(iter(owners), None) or resolve_backend_name(None)
    engine = get_backend(backend)
    if config.adjoint is not None and any(
            cls.__module__ == "torch.nn.modules.module" for cls in type(func).__mro__):
        # The flat field wrapping it is no module: the adjoint would not see its
        # parameters, and their gradients would be silently missing.
        raise ValueError("with a tuple y0 and adjoint=True, pass the parameters of a "
                         "torch.nn.Module field in args")
    if not owners:  # host values: joined by NumPy, converted by the engine
        pieces = [np.asarray(y) for y in y0]
        join = np.concatenate
    else:
        pieces, join = list(y0), engine.concatenate
    dtypes = {str(piece.dtype) for piece in pieces}
    if len(dtypes) > 1:
        raise TypeError(f"the arrays of a tuple y0 must share one dtype, got {sorted(dtypes)}")
    shapes = tuple(tuple(piece.shape) for piece in pieces)
    flat0 = join([piece.reshape(-1) for piece in pieces])
    ys, stats = _odeint_array(_flat_field(func, shapes, backend), flat0, t, args, config,
                              backend, count_backward)
    return _split(ys, shapes, lead=(int(ys.shape[0]),)), stats


def _split(flat, shapes, lead=()):
    """The arrays of ``shapes`` from the last axis of ``flat`` (leading axes ``lead``)."""
    out, start = [], 0
    for shape in shapes:
        stop = start + math.prod(shape)
        out.append(flat[(slice(None),) * len(lead) + (slice(start, stop),)].reshape(
            lead + shape))
        start = stop
    return tuple(out)


def _flat_field(func, shapes, backend):
    """``func`` on tuples of ``shapes`` as a field on their flat concatenation: one per
    (field, shapes, engine), since JAX compiles a solve once per field object and
    repeated solves of one tuple field must see the same one (a new one for a field that
    cannot be hashed)."""
    try:
        return _cached_flat_field(func, shapes, backend)
    except TypeError:  # unhashable field
        return _make_flat_field(func, shapes, backend)


def _make_flat_field(func, shapes, backend):
    concatenate = get_backend(backend).concatenate

    def flat_func(s, y, a):
        dy = func(s, _split(y, shapes), a)
        if not isinstance(dy, tuple) or len(dy) != len(shapes):
            raise ValueError(f"the vector field of a tuple state of {len(shapes)} arrays "
                             f"must return a tuple of {len(shapes)} arrays, got "
                             f"{type(dy).__name__}")
        for piece, shape in zip(dy, shapes, strict=True):
            if tuple(piece.shape) != shape:
                raise ValueError(f"the vector field returned shape {tuple(piece.shape)} for "
                                 f"a state of shape {shape}")
        return concatenate([piece.reshape(-1) for piece in dy])

    return flat_func


_cached_flat_field = functools.lru_cache(maxsize=64)(_make_flat_field)
