"""Flow matching on the reference engine: a CNF's field regressed onto the conditional
path's targets (``odeplug._flow_matching``), autograd + NumPy Adam, no ODE solve.

The training state and the parameters are the CNF program's (``cnf.CNFProgram``), so a
fit can change objectives under ``warm_start``, and the fitted model is scored and
sampled by the CNF program.
"""

from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.tracer import getval

from .._flow_matching import FlowMatchingSpec
from .cnf import CNFProgram
from .programs import Adam, l2_penalty

__all__ = ["FlowMatchingProgram"]


class FlowMatchingProgram:
    """``mean ||f(t, x_t) - target||^2`` + L2, Adam; see ``FlowMatchingSpec``.

    Batch: ``(t, x_t, target)`` with ``t`` a column ``(m, 1)``: each row at its own time.
    """

    def __init__(self, spec: FlowMatchingSpec):
        self.spec = spec
        self.cnf = CNFProgram(spec.cnf)
        self.dtype = np.dtype(spec.dtype)
        self.penalized = spec.penalized_names()

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return self.cnf.init(params)

    def get_params(self, state) -> dict[str, np.ndarray]:
        return self.cnf.get_params(state)

    def _batch(self, batch):
        if len(batch) != 3:
            raise ValueError("a flow-matching step takes a batch (t, x_t, target)")
        return tuple(np.asarray(a, dtype=self.dtype) for a in batch)

    def _loss(self, params, t, x_t, target, hyper, holder: dict):
        residual = self.cnf.velocity(params, t, x_t) - target
        mse = anp.mean(anp.sum(residual * residual, axis=1))
        holder["mse"] = getval(mse)
        return mse + l2_penalty(params, self.penalized, hyper.alpha, x_t.shape[0])

    @staticmethod
    def _metrics(loss, holder: dict) -> dict[str, float]:
        # One field evaluation and its backpropagation: no solve, no adjoint.
        return {"loss": float(loss), "nfe_forward": 1, "nfe_backward": 0,
                "mse": float(holder["mse"])}

    def step(self, state, batch, hyper):
        t, x_t, target = self._batch(batch)
        holder: dict = {}
        loss, grads = value_and_grad(self._loss)(state["params"], t, x_t, target, hyper,
                                                 holder)
        params, opt = Adam.update(state["params"], grads, state["opt"], hyper)
        return {**state, "params": params, "opt": opt}, self._metrics(loss, holder)

    def evaluate(self, state, batch, hyper) -> dict[str, float]:
        t, x_t, target = self._batch(batch)
        holder: dict = {}
        loss = self._loss(state["params"], t, x_t, target, hyper, holder)
        return self._metrics(loss, holder)
