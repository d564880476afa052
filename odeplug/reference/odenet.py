"""The ODE-Net on the reference engine (autograd + NumPy Adam)."""

from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad

from .._protocols import INFERENCE_DTYPE, empty_row_stats
from .._solver_options import ODEStats
from .._specs import Hyper, ODENetSpec
from .nn import ACTIVATIONS, dense, log_softmax, mlp_field
from .programs import Adam, l2_penalty
from .solve import odeint, odeint_rows

__all__ = ["ODENetProgram"]


class ODENetProgram:
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``."""

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.field = mlp_field("field", spec.n_field_layers, spec.field_activation)
        self.inference_field = mlp_field("field", spec.n_field_layers, spec.field_activation,
                                         xp=np)
        self.dtype = np.dtype(spec.dtype)
        self.penalized = spec.penalized_names()

    def _initial_state(self, params, X):
        spec = self.spec
        z0 = ACTIVATIONS[spec.activation](dense(params, "embed", X))
        if spec.augment_dim:
            z0 = anp.concatenate([z0, np.zeros((X.shape[0], spec.augment_dim), X.dtype)],
                                 axis=1)
        return z0

    @staticmethod
    def _field_params(params):
        return {k: v for k, v in params.items() if k.startswith("field.")}

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}
        return {"params": params, "opt": Adam.init(params)}

    def _loss(self, params, X, y, hyper: Hyper, holder: dict):
        zs, holder["stats"] = odeint(self.field, self._initial_state(params, X),
                                     np.array([0.0, hyper.t1]), self._field_params(params),
                                     hyper.solve)
        logits = dense(params, "head", zs[-1])
        data_loss = -anp.mean(log_softmax(logits)[np.arange(len(y)), y])
        return data_loss + l2_penalty(params, self.penalized, hyper.alpha, len(y))

    @staticmethod
    def _metrics(loss, stats: ODEStats) -> dict[str, float]:
        return {"loss": float(loss), "nfe_forward": stats.nfe_forward,
                "nfe_backward": stats.nfe_backward}

    def step(self, state, batch, hyper: Hyper):
        X, y = batch
        X = np.asarray(X, dtype=self.dtype)
        holder: dict[str, ODEStats] = {}
        loss, grads = value_and_grad(self._loss)(state["params"], X, y, hyper, holder)
        params, opt = Adam.update(state["params"], grads, state["opt"], hyper)
        return {"params": params, "opt": opt}, self._metrics(loss, holder["stats"])

    def evaluate(self, state, batch, hyper: Hyper) -> dict[str, float]:
        X, y = batch
        holder: dict[str, ODEStats] = {}
        loss = self._loss(state["params"], np.asarray(X, dtype=self.dtype), y, hyper, holder)
        return self._metrics(loss, holder["stats"])

    def get_params(self, state) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in state["params"].items()}

    def predict(self, params, X, hyper: Hyper):
        """Log-probabilities (float64); each input is solved with its own adaptive steps."""
        self.spec.check_params(params)
        if len(X) == 0:
            return np.zeros((0, self.spec.n_outputs), INFERENCE_DTYPE), empty_row_stats()
        params = {k: np.asarray(v, dtype=INFERENCE_DTYPE) for k, v in params.items()}
        z0 = self._initial_state(params, np.asarray(X, dtype=INFERENCE_DTYPE))
        zs, stats = odeint_rows(self.inference_field, z0, np.array([0.0, hyper.t1]),
                                self._field_params(params), hyper.solve)
        return np.asarray(log_softmax(dense(params, "head", zs[-1]))), stats
