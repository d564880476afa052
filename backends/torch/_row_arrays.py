"""The torch engine's adapter of the core's row solver (:func:`odeplug._rows.solve_rows`):
gathers, scatters and host transfers of torch tensors, so that the core names no engine.
Pass :data:`TORCH` where the core takes ``numpy``."""

from __future__ import annotations

import math

import numpy as np
import torch

from odeplug._rows import RowArrays

__all__ = ["TORCH", "TorchRowArrays"]


class TorchRowArrays(RowArrays):
    """torch tensors of one dtype and device."""

    def __init__(self, dtype, device):
        self.xp = torch
        self.dtype, self.device = dtype, device
        # On the CPU whatever torch's default device (a GPU inside torch's device scope).
        self.np_dtype = torch.empty((), dtype=dtype, device="cpu").numpy().dtype

    def coefficients(self, values):
        # Python floats, rounded to the state's dtype as NumPy does with weak scalars.
        return [float(v) for v in np.asarray(values, dtype=self.np_dtype)]

    def combine(self, coefficients, stages):
        """``sum_j c_j stages[j]`` as a chain of products and sums, in order of j (torch's
        reductions round by the length of the vector; its products and sums do not),
        skipping the zero coefficients."""
        total = None
        for j, c in enumerate(coefficients):
            if c != 0.0:
                term = stages[j] * c
                total = term if total is None else total + term
        return stages[0] * 0.0 if total is None else total

    def combine_rows(self, weights, stages):
        """``sum_j weights[r, j] stages[j, r]`` for every row ``r``, in order of j."""
        weights = self._from_host(weights.T[:, :, None].astype(self.np_dtype))
        total = weights[0] * stages[0]
        for j in range(1, len(weights)):
            total = total + weights[j] * stages[j]
        return total

    def _from_host(self, values):
        return self.xp.from_numpy(np.ascontiguousarray(values)).to(self.device)

    def column(self, values):
        return self._from_host(np.asarray(values).astype(self.np_dtype)[:, None])

    def mask_column(self, mask):
        return self._from_host(mask[:, None])

    def to_host(self, x):
        return x.detach().cpu().numpy().astype(np.float64)

    def row_finite(self, x):
        return self.xp.isfinite(x).all(dim=1).cpu().numpy()

    def empty(self, shape):
        return self.xp.empty(shape, dtype=self.dtype, device=self.device)

    def full_nan(self, shape):
        return self.xp.full(shape, math.nan, dtype=self.dtype, device=self.device)

    def _index(self, positions):
        return self._from_host(np.asarray(positions, dtype=np.int64))

    def take(self, x, positions, axis=0):
        return x.index_select(axis, self._index(positions))

    def put(self, x, positions, values):
        return x.index_copy(0, self._index(positions), values)

    def put_outputs(self, ys, j, rows, values):
        ys[self._index(j), self._index(rows)] = values

    def put_rows(self, ys, rows, values):
        ys.index_copy_(1, self._index(rows), values)

    def copy(self, x):
        return x.clone()

    def where(self, mask, a, b):
        return self.xp.where(mask, a, b)


class _TorchRows:
    """The adapter :func:`odeplug._rows.solve_rows` takes for torch states."""

    def row_arrays(self, y0: torch.Tensor) -> TorchRowArrays:
        return TorchRowArrays(y0.dtype, y0.device)

    def __repr__(self) -> str:
        return "odeplug_backends.torch._row_arrays.TORCH"


TORCH = _TorchRows()
