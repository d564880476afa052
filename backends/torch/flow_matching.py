"""Flow matching on the torch engine: a CNF's field regressed onto the conditional path's
targets (``odeplug._flow_matching``), plain batched torch + ``torch.optim.Adam``, no ODE
solve. The same computation as ``odeplug.reference.flow_matching``.

The training state and the parameters are the CNF program's (``cnf.CNFProgram``), so a
fit can change objectives under ``warm_start``, and the fitted model is scored and
sampled by the CNF program.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from odeplug._flow_matching import FlowMatchingSpec

from .cnf import CNFProgram
from .programs import l2_penalty, set_adam_hyper, view

__all__ = ["FlowMatchingProgram"]


class FlowMatchingProgram:
    """``mean ||f(t, x_t) - target||^2`` + L2, Adam; see ``FlowMatchingSpec``.

    Batch: ``(t, x_t, target)`` with ``t`` a column ``(m, 1)``: each row at its own time.
    ``step`` updates the CNF's training state in place, as the CNF's own step.
    """

    def __init__(self, spec: FlowMatchingSpec):
        self.spec = spec
        self.cnf = CNFProgram(spec.cnf)
        self.np_dtype = np.dtype(spec.dtype)
        self.penalized = spec.penalized_names()

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return self.cnf.init(params)

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.cnf.get_params(state)

    def _batch(self, batch):
        if len(batch) != 3:
            raise ValueError("a flow-matching step takes a batch (t, x_t, target)")
        return tuple(view(a, self.np_dtype) for a in batch)

    def loss(self, params: dict, t, x_t, target, hyper):
        """The training loss and its regression part."""
        residual = self.cnf.velocity(params, t, x_t) - target
        mse = torch.mean(torch.sum(residual * residual, dim=1))
        return mse + l2_penalty(params, self.penalized, hyper.alpha, x_t.shape[0]), mse

    @staticmethod
    def _metrics(loss, mse) -> dict[str, float]:
        # One field evaluation and its backpropagation: no solve, no adjoint.
        return {"loss": loss.item(), "nfe_forward": 1, "nfe_backward": 0, "mse": mse.item()}

    def step(self, state: dict[str, Any], batch, hyper):
        t, x_t, target = self._batch(batch)
        opt = state["opt"]
        set_adam_hyper(opt, hyper)
        opt.zero_grad(set_to_none=True)
        loss, mse = self.loss(state["params"], t, x_t, target, hyper)
        loss.backward()
        opt.step()
        return state, self._metrics(loss, mse)

    def evaluate(self, state: dict[str, Any], batch, hyper) -> dict[str, float]:
        t, x_t, target = self._batch(batch)
        with torch.no_grad():
            return self._metrics(*self.loss(state["params"], t, x_t, target, hyper))
