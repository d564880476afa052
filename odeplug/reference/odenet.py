"""The ODE-Net on the reference engine (autograd + NumPy Adam)."""

from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad

from .._protocols import INFERENCE_DTYPE, empty_row_stats
from .._solver_options import ODEStats
from .._specs import Hyper, ODENetSpec
from ..layers import as_field
from .nn import INFERENCE_OPS, LAYER_OPS, log_softmax
from .programs import Adam, l2_penalty
from .solve import odeint, odeint_rows

__all__ = ["ODENetProgram"]


class ODENetProgram:
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``.

    The embedding, field and head are the spec's layers, realised by this engine's
    :class:`~odeplug.reference.nn.LayerOps` (autograd's NumPy to train, NumPy to
    predict); the solver sees flat states.
    """

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.embed, field, self.head = spec.layers()
        self.field = as_field(field, "field", spec.state_shape, LAYER_OPS)
        self.inference_field = as_field(field, "field", spec.state_shape, INFERENCE_OPS)
        self.dtype = np.dtype(spec.dtype)
        self.penalized = spec.penalized_names()

    def _initial_state(self, params, X, ops=LAYER_OPS):
        spec = self.spec
        n = X.shape[0]
        z0 = self.embed.apply(ops, params, "embed", 0.0, np.reshape(X, (n, *spec.row_shape)))
        if spec.augment_dim:
            zeros = np.zeros((n, spec.augment_dim, *z0.shape[2:]), X.dtype)
            z0 = anp.concatenate([z0, zeros], axis=1)
        return anp.reshape(z0, (n, spec.state_dim))

    def _logits(self, params, z, t1, ops=LAYER_OPS):
        z = anp.reshape(z, (z.shape[0], *self.spec.state_shape))
        return self.head.apply(ops, params, "head", t1, z)

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
        logits = self._logits(params, zs[-1], hyper.t1)
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
        z0 = self._initial_state(params, np.asarray(X, dtype=INFERENCE_DTYPE), INFERENCE_OPS)
        zs, stats = odeint_rows(self.inference_field, z0, np.array([0.0, hyper.t1]),
                                self._field_params(params), hyper.solve)
        logits = self._logits(params, zs[-1], hyper.t1, INFERENCE_OPS)
        return np.asarray(log_softmax(logits)), stats
