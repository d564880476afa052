"""Irregularly sampled series, as the latent ODE's programs take them (engine-free).

What the programs of every engine share about times, written once in NumPy on the host
(times are data, never differentiated):

* :func:`encoder_gaps`: the time each encoder step spans, from a series' observation
  times in reverse order;
* :func:`union_grid`: one strictly increasing grid for a training batch (the union of
  its series' decode times) and where each series' times are in it; its length is
  padded to a power of two, so that a compiled (JAX) step serves every batch of a fit
  (a grid of another length is another shape) but for a few sizes;
* :func:`row_grids`: each series' own strictly increasing grid from 0 for inference,
  and where its requested times are in it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encoder_gaps", "row_grids", "union_grid"]

_MERGE_ULPS = 64


def encoder_gaps(times: np.ndarray) -> np.ndarray:
    """Gaps ``times[:, j] - times[:, j + 1]`` of decreasing, NaN-padded times
    ``(n, J)``; 0 after a series' last (earliest) observation and in its padding."""
    times = np.asarray(times, dtype=np.float64)
    gaps = np.zeros_like(times)
    if times.shape[1] > 1:
        gaps[:, :-1] = times[:, :-1] - times[:, 1:]
    return np.where(np.isnan(gaps), 0.0, gaps)


def _pad_grid(grid: np.ndarray, size: int, dtype) -> np.ndarray:
    """``grid`` (strictly increasing, of ``dtype``) with points added inside its
    largest gaps until it has ``size`` points (beyond its end where no gap can be split
    in ``dtype``)."""
    grid = np.asarray(grid, dtype=dtype)
    while len(grid) < size:
        need = size - len(grid)
        if len(grid) < 2:
            grid = np.append(grid, grid[-1] + dtype.type(1.0))
            continue
        mids = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(dtype)
        room = _MERGE_ULPS * np.finfo(dtype).eps * np.maximum(1.0, np.abs(grid[1:]))
        splittable = np.flatnonzero((mids > grid[:-1]) & (mids < grid[1:])
                                    & (grid[1:] - grid[:-1] > 2 * room))
        if not splittable.size:
            step = dtype.type(max(1e-3 * (1.0 + abs(float(grid[-1]))), 1e-3))
            grid = np.append(grid, grid[-1] + step * np.arange(1, need + 1, dtype=dtype))
            continue
        gaps = (grid[1:] - grid[:-1])[splittable]
        chosen = splittable[np.argsort(-gaps, kind="stable")[:need]]
        grid = np.sort(np.concatenate([grid, mids[chosen]]))
    return grid


def union_grid(times: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """One grid for a training batch: ``(grid, index)``.

    Parameters
    ----------
    times : ndarray of shape (n, K)
        Each series' decode times, measured from its own start (>= 0; padding entries
        hold 0, their outputs unused).
    dtype : the state's dtype (the grid is strictly increasing in it).

    Returns
    -------
    grid : ndarray of shape (U,)
        0, then the distinct times, padded to a power of two (>= 2) with points inside
        its largest gaps (outputs there are unused; they do not change a solve's steps).
    index : ndarray of shape (n, K), int64
        ``grid[index[i, k]] == times[i, k]`` in ``dtype``, up to times within 64 ulps
        of each other, which are merged into one.
    """
    dtype = np.dtype(dtype)
    values = np.asarray(times, dtype=dtype)
    distinct = np.unique(np.concatenate([np.zeros(1, dtype), values.reshape(-1)]))
    # Times a few ulps apart (t - t0 rounded differently in two series) are one time:
    # an adjoint's backward solve over an interval of rounding size cannot step.
    close = np.diff(distinct) <= _MERGE_ULPS * np.finfo(dtype).eps * np.maximum(
        1.0, np.abs(distinct[1:]))
    distinct = distinct[np.concatenate([[True], ~close])]
    size = max(2, 1 << int(np.ceil(np.log2(max(len(distinct), 1)))))
    grid = _pad_grid(distinct, size, dtype)
    right = np.clip(np.searchsorted(grid, values), 1, len(grid) - 1)
    nearer_left = np.abs(values - grid[right - 1]) <= np.abs(grid[right] - values)
    index = np.where(nearer_left, right - 1, right).astype(np.int64)
    return grid, index


def row_grids(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each series' own grid for inference: ``(grids, index)``.

    Parameters
    ----------
    times : ndarray of shape (n, K)
        Requested times from each series' start (>= 0), NaN where none is requested;
        in any order, with repeats.

    Returns
    -------
    grids : ndarray of shape (n, G), float64
        Row ``i``: 0 then its distinct requested times, increasing, NaN-padded (``G``
        a power of two, at least 2).
    index : ndarray of shape (n, K), int64
        Where each requested time is in its row's grid (0 for NaN entries).
    """
    times = np.asarray(times, dtype=np.float64)
    n, k = times.shape
    rows = []
    for row in times:
        rows.append(np.unique(np.concatenate([[0.0], row[~np.isnan(row)]])))
    # A power of two (NaN columns beyond): JAX compiles one solve per grid width.
    width = max((len(r) for r in rows), default=1)
    width = max(2, 1 << int(np.ceil(np.log2(width))))
    grids = np.full((n, width), np.nan)
    index = np.zeros((n, k), dtype=np.int64)
    for i, row in enumerate(rows):
        grids[i, : len(row)] = row
        ok = ~np.isnan(times[i])
        index[i, ok] = np.searchsorted(row, times[i, ok])
    return grids, index
