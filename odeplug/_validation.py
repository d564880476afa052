"""Input checks shared by every backend (and the estimators' times), on NumPy copies of
concrete values, and the failure of a solve whose initial state a model made
non-finite."""

from __future__ import annotations

import numpy as np

from .exceptions import SolverError

__all__ = ["check_time_grid", "check_row_time_grids", "check_initial_state",
           "check_model_state", "check_model_rows", "check_field_output",
           "real_array"]


def real_array(values, name: str) -> np.ndarray:
    """``values`` (times given to an estimator) as a float64 array.

    Raises ``ValueError`` naming ``name`` unless they are real numbers: strings are
    refused even when they read as numbers, as scikit-learn refuses them in ``X``.
    """
    array = np.asarray(values)
    if array.dtype.kind in "fiu":
        return array.astype(np.float64)
    if array.dtype.kind == "O":  # Python numbers (and None), or anything else
        try:
            if not any(isinstance(v, (str, bytes)) for v in array.reshape(-1)):
                return array.astype(np.float64)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{name} must hold real numbers (times), got an array of dtype "
                     f"{array.dtype}: {_excerpt(array)}")


def _excerpt(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in flat[:3])
    return f"[{shown}{', ...' if flat.size > 3 else ''}]"


def check_time_grid(t: np.ndarray) -> int:
    """Check a time grid; return its direction (+1 increasing, -1 decreasing).

    Raises ``ValueError`` unless ``t`` is 1-D with at least one finite value, strictly
    monotonic, and ``TypeError`` unless it is real. A grid of one time is increasing (a
    solve on it returns ``y0``, as torchdiffeq's).
    """
    t = np.asarray(t)
    if t.dtype.kind not in "fiu":
        raise TypeError(f"t must be a real array of times, got dtype {t.dtype}")
    if t.ndim != 1:
        raise ValueError(f"t must be 1-D, got shape {t.shape}")
    if t.shape[0] < 1:
        raise ValueError("t needs at least one time (that of y0), got none")
    if not np.all(np.isfinite(t)):
        raise ValueError(f"t contains NaN or inf: {t}")
    diff = np.diff(t.astype(np.float64))
    if np.all(diff > 0):
        return 1
    if np.all(diff < 0):
        return -1
    bad = int(np.argmax(diff == 0)) if np.any(diff == 0) else None
    if bad is not None:
        raise ValueError(f"t must be strictly monotonic; t[{bad}] == t[{bad + 1}] == {t[bad]}")
    raise ValueError("t must be strictly increasing or strictly decreasing")


def check_row_time_grids(t, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the time grids of a row-wise solve: one shared grid or one per row.

    ``t`` is 1-D (a grid of :func:`check_time_grid`, shared by the ``n_rows`` rows) or of
    shape ``(n_rows, T)``: each row finite, strictly monotonic (either way) and at least
    its first time, then NaN padding only.

    Returns
    -------
    grid : ndarray of shape ``(n_rows, T)``, float64
        The grids (a broadcast view for a shared one).
    lengths : ndarray of shape ``(n_rows,)``, int
        The number of valid times of each row.
    directions : ndarray of shape ``(n_rows,)``, float64
        +1 or -1 (+1 for a row of one time).
    """
    t = np.asarray(t)
    if t.dtype.kind not in "fiu":
        raise TypeError(f"t must be a real array of times, got dtype {t.dtype}")
    if t.ndim == 1:
        direction = check_time_grid(t)
        grid = np.broadcast_to(t.astype(np.float64), (n_rows, t.shape[0]))
        return (grid, np.full(n_rows, t.shape[0]), np.full(n_rows, float(direction)))
    if t.ndim != 2 or t.shape[0] != n_rows:
        raise ValueError(f"t must have shape (T,) or (n_rows, T) = ({n_rows}, T), got "
                         f"{t.shape}")
    grid = t.astype(np.float64)
    if np.isinf(grid).any():
        raise ValueError("t contains inf")
    finite = ~np.isnan(grid)
    lengths = finite.sum(axis=1)
    padded = np.arange(grid.shape[1]) >= lengths[:, None]
    if (finite == padded).any():
        row = int(np.flatnonzero((finite == padded).any(axis=1))[0])
        raise ValueError(f"row {row} of t: NaN is only padding after its last time, and its "
                         f"first time must be finite: {t[row]}")
    diff = np.diff(grid, axis=1)
    valid = ~padded[:, 1:]  # diff[i, j] is between two valid times
    increasing = ((diff > 0) | ~valid).all(axis=1)
    decreasing = ((diff < 0) | ~valid).all(axis=1)
    bad = ~(increasing | decreasing)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"row {row} of t must be strictly increasing or strictly "
                         f"decreasing: {t[row]}")
    directions = np.where(decreasing & ~increasing, -1.0, 1.0)
    return grid, lengths, directions


def check_initial_state(y0: np.ndarray) -> None:
    """``y0`` must be a floating array with finite values."""
    if y0.dtype.kind != "f":
        raise TypeError(
            f"y0 must be a floating-point array, got dtype {y0.dtype}; "
            "convert it, e.g. y0.astype(float)"
        )
    if y0.size == 0:
        raise ValueError("y0 is empty")
    if not np.all(np.isfinite(y0)):
        raise ValueError("y0 contains NaN or inf")


def check_model_state(y0, t0: float, t1: float) -> None:
    """A solve's initial state computed by a model in training (an encoder's output).

    A non-finite one is the model's divergence, not bad input: it raises the
    ``SolverError`` of a state that turns non-finite (reason ``"non_finite"`` at
    ``t0``), worded as the solvers word it, as the JAX engine reports it from inside its
    compiled step; the training loop reads it as a divergence on every engine.
    ``y0``: a NumPy array of its values.
    """
    if not np.all(np.isfinite(y0)):
        raise SolverError(f"non-finite state at t={t0:.6g} (solving from {t0:.6g} to "
                          f"{t1:.6g})", reason="non_finite", t=t0)


def check_model_rows(y0, t) -> None:
    """:func:`check_model_state` for a row-wise solve (inference): ``y0`` of shape
    ``(n, d)``, ``t`` one grid ``(T,)`` or one per row ``(n, T)`` (NaN-padded). The
    first non-finite row fails as the row solvers report a row's failure."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(y0).reshape(len(y0), -1)).all(axis=1))
    if bad.size:
        row = int(bad[0])
        times = np.asarray(t, dtype=np.float64)
        times = times if times.ndim == 1 else times[row]
        times = times[~np.isnan(times)]
        raise SolverError(f"row {row}: non-finite state at t={times[0]:.6g} (solving from "
                          f"{times[0]:.6g} to {times[-1]:.6g})", reason="non_finite",
                          t=times[0], ts=times[:0], ys=np.asarray(y0)[:0])


def check_field_output(dy_shape, dy_dtype, y_shape, y_dtype) -> None:
    """The vector field must return the state's shape and dtype (no silent casts)."""
    if tuple(dy_shape) != tuple(y_shape):
        raise ValueError(
            f"the vector field returned shape {tuple(dy_shape)} for a state of shape "
            f"{tuple(y_shape)}"
        )
    if dy_dtype != y_dtype:
        raise TypeError(
            f"mismatched dtypes: the vector field returned {dy_dtype} for a {y_dtype} state; "
            "make the field keep the state's dtype (e.g. parameters of the same dtype)"
        )
