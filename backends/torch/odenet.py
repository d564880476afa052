"""The ODE-Net on the torch engine (torchdiffeq + ``torch.optim.Adam``).

The same computation as the reference engine's programs (``odeplug.reference.models``):
same parameters, same loss, same optimiser update, so that both give the same result up
to rounding. The ODE solves go through :mod:`odeplug_backends.torch.solve`, which holds
the solver vocabulary, the step budget, :class:`~odeplug.SolverError` and the counters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from odeplug._protocols import INFERENCE_DTYPE, empty_row_stats
from odeplug._specs import Hyper, ODENetSpec
from odeplug.layers import as_field

from .nn import LAYER_OPS, log_softmax
from .programs import adam, l2_penalty, set_adam_hyper, tensor, view
from .solve import odeint, odeint_rows

__all__ = ["ODENetProgram"]


class ODENetProgram:
    """ODE-Net classifier: cross-entropy + L2, Adam; see ``odeplug._specs.ODENetSpec``.

    The training state is ``{"params": dict of leaf tensors, "field": the field's
    entries of it, "opt": torch.optim.Adam}``; ``step`` updates it in place (one
    optimiser step costs no copy of the parameters) and returns it.
    """

    def __init__(self, spec: ODENetSpec):
        self.spec = spec
        self.np_dtype = np.dtype(spec.dtype)
        self.dtype = getattr(torch, self.np_dtype.name)
        self.names = tuple(spec.param_shapes())
        self.field_names = tuple(k for k in self.names if k.startswith("field."))
        self.penalized = spec.penalized_names()
        self.embed, field, self.head = spec.layers()
        self.field = as_field(field, "field", spec.state_shape, LAYER_OPS)
        # The first training solve checks the inputs and the field; later ones, on the
        # same field with tensors of the same shapes and dtype, skip it (it costs a field
        # evaluation per step).
        self._checked = False

    @staticmethod
    def _times(hyper: Hyper) -> torch.Tensor:
        # In float64, as the reference engine's: torchdiffeq keeps time-like quantities
        # in float64 whatever the state's dtype.
        return torch.tensor([0.0, hyper.t1], dtype=torch.float64)

    # ------------------------------------------------------------------ the model

    def _initial_state(self, params: dict, X: torch.Tensor) -> torch.Tensor:
        spec, n = self.spec, X.shape[0]
        zero = torch.zeros((), dtype=torch.float64)
        z0 = self.embed.apply(LAYER_OPS, params, "embed", zero, X.reshape(n, *spec.row_shape))
        if spec.augment_dim:
            zeros = z0.new_zeros((n, spec.augment_dim, *z0.shape[2:]))
            z0 = torch.cat([z0, zeros], dim=1)
        return z0.reshape(n, spec.state_dim)

    def _logits(self, params: dict, z: torch.Tensor, hyper: Hyper) -> torch.Tensor:
        t1 = torch.tensor(hyper.t1, dtype=torch.float64)
        z = z.reshape(z.shape[0], *self.spec.state_shape)
        return self.head.apply(LAYER_OPS, params, "head", t1, z)

    # --------------------------------------------------------------- training

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        tensors = {k: tensor(params[k], self.np_dtype).requires_grad_(True)
                   for k in self.names}
        opt = adam(tensors.values())
        field = {k: tensors[k] for k in self.field_names}
        return {"params": tensors, "field": field, "opt": opt}

    def loss(self, params: dict, field_params: dict, X: torch.Tensor, y: torch.Tensor,
             hyper: Hyper, check: bool = True):
        """Mean cross-entropy + ``0.5 alpha sum(W**2) / batch_size``, and the ODEStats."""
        zs, stats = odeint(self.field, self._initial_state(params, X), self._times(hyper),
                           field_params, hyper.solve, check=check)
        logits = self._logits(params, zs[-1], hyper)
        data_loss = F.cross_entropy(logits, y)
        penalty = l2_penalty(params, self.penalized, hyper.alpha, y.shape[0])
        return data_loss + penalty, stats

    def _batch(self, batch):
        X, y = batch
        return view(X, self.np_dtype), view(y, np.int64)

    def step(self, state: dict[str, Any], batch: tuple[np.ndarray, np.ndarray], hyper: Hyper):
        X, y = self._batch(batch)
        opt = state["opt"]
        set_adam_hyper(opt, hyper)
        opt.zero_grad(set_to_none=True)
        loss, stats = self.loss(state["params"], state["field"], X, y, hyper,
                                check=not self._checked)
        self._checked = True
        loss.backward()
        opt.step()
        metrics = {"loss": loss.item(), "nfe_forward": stats.nfe_forward,
                   "nfe_backward": stats.nfe_backward}
        return state, metrics

    def evaluate(self, state: dict[str, Any], batch, hyper: Hyper) -> dict[str, float]:
        X, y = self._batch(batch)
        with torch.no_grad():
            loss, stats = self.loss(state["params"], state["field"], X, y, hyper)
        return {"loss": loss.item(), "nfe_forward": stats.nfe_forward, "nfe_backward": 0}

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in state["params"].items()}

    # -------------------------------------------------------------- inference

    def predict(self, params: dict[str, np.ndarray], X: np.ndarray, hyper: Hyper):
        """Log-probabilities (float64); each input is solved alone, with its own adaptive
        steps (the core's row solver: all rows at once, each with its own steps)."""
        self.spec.check_params(params)
        if len(X) == 0:
            return np.zeros((0, self.spec.n_outputs), INFERENCE_DTYPE), empty_row_stats()
        with torch.inference_mode():
            tensors = {k: view(params[k], INFERENCE_DTYPE) for k in self.names}
            field_params = {k: tensors[k] for k in self.field_names}
            z0 = self._initial_state(tensors, view(X, INFERENCE_DTYPE))
            zs, stats = odeint_rows(self.field, z0, self._times(hyper), field_params,
                                    hyper.solve)
            out = log_softmax(self._logits(tensors, zs[-1], hyper))
        return out.cpu().numpy(), stats
