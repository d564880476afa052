"""Programs of the model families on the reference engine (autograd + NumPy Adam)."""

from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad

from .._solver_options import ODESolveConfig, ODEStats
from .._specs import ODENetSpec, OptimizerSpec
from .nn import ACTIVATIONS, dense, log_softmax, mlp_field
from .solve import odeint, odeint_rows

__all__ = ["make_program", "ODENetProgram"]


def make_program(spec: Any):
    if isinstance(spec, ODENetSpec):
        return ODENetProgram(spec)
    raise NotImplementedError(f"the reference engine has no program for {type(spec).__name__}")


class Adam:
    """Adam with bias correction, the update of ``torch.optim.Adam`` and ``optax.adam``."""

    def __init__(self, spec: OptimizerSpec):
        self.spec = spec

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        zeros = {k: np.zeros_like(v) for k, v in params.items()}
        return {"m": zeros, "v": {k: np.zeros_like(v) for k, v in params.items()}, "count": 0}

    def update(self, params, grads, state):
        s = self.spec
        count = state["count"] + 1
        lr = s.learning_rate * np.sqrt(1 - s.beta2**count) / (1 - s.beta1**count)
        new_params, m, v = {}, {}, {}
        for k, g in grads.items():
            m[k] = s.beta1 * state["m"][k] + (1 - s.beta1) * g
            v[k] = s.beta2 * state["v"][k] + (1 - s.beta2) * g * g
            # eps is scaled like torch/optax: added to sqrt(v_hat), not sqrt(v).
            eps_hat = s.epsilon * np.sqrt(1 - s.beta2**count)
            new_params[k] = (params[k] - lr * m[k] / (np.sqrt(v[k]) + eps_hat)).astype(
                params[k].dtype)
        return new_params, {"m": m, "v": v, "count": count}


class ODENetProgram:
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``."""

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.field = mlp_field("field", spec.n_field_layers, spec.field_activation)
        self.inference_field = mlp_field("field", spec.n_field_layers, spec.field_activation,
                                         xp=np)
        self.optimizer = Adam(spec.optimizer)
        self.dtype = np.dtype(spec.dtype)
        self.times = np.array([0.0, spec.t1])

    def _initial_state(self, params, X):
        spec = self.spec
        z0 = ACTIVATIONS[spec.activation](dense(params, "embed", X))
        if spec.augment_dim:
            z0 = anp.concatenate([z0, np.zeros((X.shape[0], spec.augment_dim), self.dtype)],
                                 axis=1)
        return z0

    @staticmethod
    def _field_params(params):
        return {k: v for k, v in params.items() if k.startswith("field.")}

    def init(self, params: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
        params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}
        return {"params": params, "opt": self.optimizer.init(params)}

    def step(self, state, batch):
        X, y = batch
        X = np.asarray(X, dtype=self.dtype)
        spec = self.spec
        stats_box: dict[str, ODEStats] = {}

        def loss_fn(params):
            zs, stats_box["stats"] = odeint(self.field, self._initial_state(params, X),
                                            self.times, self._field_params(params), spec.solve)
            logits = dense(params, "head", zs[-1])
            data_loss = -anp.mean(log_softmax(logits)[np.arange(len(y)), y])
            penalty = sum(anp.sum(params[k] ** 2) for k in spec.weight_names())
            return data_loss + 0.5 * spec.optimizer.alpha * penalty / len(y)

        loss, grads = value_and_grad(loss_fn)(state["params"])
        params, opt = self.optimizer.update(state["params"], grads, state["opt"])
        stats = stats_box["stats"]
        metrics = {"loss": float(loss), "nfe_forward": stats.nfe_forward,
                   "nfe_backward": stats.nfe_backward}
        return {"params": params, "opt": opt}, metrics

    def get_params(self, state) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in state["params"].items()}

    def predict(self, params, X, solve: ODESolveConfig):
        """Log-probabilities; each input is solved with its own adaptive steps."""
        params = {k: np.asarray(v, dtype=self.dtype) for k, v in params.items()}
        z0 = self._initial_state(params, np.asarray(X, dtype=self.dtype))
        zs, stats = odeint_rows(self.inference_field, z0, self.times,
                                self._field_params(params), solve)
        return np.asarray(log_softmax(dense(params, "head", zs[-1]))), stats
