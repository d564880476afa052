"""The continuous normalizing flow on the torch engine (torchdiffeq + ``torch.optim.Adam``).

The same computation as the reference engine's program (``odeplug.reference.cnf``): same
parameters, same augmented state ``[z, int tr, (kinetic, jacobian)]``, same forward-mode
traces, same loss and update. Tensors move through ``programs.tensor`` / ``programs.view``
and come back with ``.detach().cpu().numpy()``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from odeplug._constant import Constant
from odeplug._protocols import INFERENCE_DTYPE, empty_row_stats
from odeplug._specs import CNFHyper, CNFSpec, CNFTrainingSpec, cnf_training

from .nn import LAYER_OPS, mlp_field, mlp_field_jvp
from .programs import adam, l2_penalty, set_adam_hyper, tensor, view
from .solve import odeint, odeint_rows

__all__ = ["CNFProgram", "augmented_field", "log_normal"]


def augmented_field(field_jvp, n_features: int, regularize: bool):
    """``dynamics(t, y, args)`` of ``[z, trace, (kinetic, jacobian)]``; see
    ``odeplug.reference.cnf.augmented_field``."""
    d = n_features

    def dynamics(t, y, args):
        z = y[:, :d]
        noise = args.get("noise")
        f, jvp = field_jvp(t, z, None if noise is None else noise.unsqueeze(1), args["field"])
        if noise is None:
            trace = torch.diagonal(jvp, dim1=1, dim2=2).sum(dim=1)
        else:
            trace = torch.sum(noise * jvp[:, 0], dim=1)
        columns = [f, trace.unsqueeze(1)]
        if regularize:
            columns += [torch.sum(f * f, dim=1, keepdim=True),
                        torch.sum(jvp * jvp, dim=(1, 2)).unsqueeze(1)]
        return torch.cat(columns, dim=1)

    return dynamics


def log_normal(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per row."""
    return -0.5 * torch.sum(z * z, dim=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


class CNFProgram:
    """CNF density: negative log-likelihood (+ RNODE's terms, + L2), Adam; see
    ``odeplug._specs.CNFSpec``. Batch: ``(X,)``, or ``(X, noise)`` with Hutchinson.

    The training state is ``{"params": dict of leaf tensors, "opt": torch.optim.Adam}``,
    updated in place by ``step``. Built from a ``CNFTrainingSpec`` (or a bare
    ``CNFSpec``); ``spec`` is the model's ``CNFSpec``, ``training`` the training spec.
    """

    def __init__(self, spec: CNFSpec | CNFTrainingSpec):
        self.training = cnf_training(spec)
        self.spec = spec = self.training.cnf
        self.np_dtype = np.dtype(spec.dtype)
        self.names = tuple(spec.param_shapes())
        self.penalized = spec.penalized_names()
        d = spec.n_features
        # The vector field f(t, z, params) itself (flow matching regresses it).
        self.field, field_jvp = spec.field_functions(LAYER_OPS, mlp_field, mlp_field_jvp)
        self.dynamics = augmented_field(field_jvp, d, self.training.regularize)
        self.inference_dynamics = augmented_field(field_jvp, d, False)
        self._checked = False

    def velocity(self, params: dict, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``f(t, z)``: the vector field on states ``z`` ``(m, d)`` at a time ``t``."""
        return self.field(t, z, params)

    @staticmethod
    def _times(start: float, end: float) -> torch.Tensor:
        return torch.tensor([start, end], dtype=torch.float64)

    # --------------------------------------------------------------- training

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        tensors = {k: tensor(params[k], self.np_dtype).requires_grad_(True)
                   for k in self.names}
        return {"params": tensors, "opt": adam(tensors.values())}

    def _batch(self, batch):
        X = view(batch[0], self.np_dtype)
        noise = None
        if self.training.trace == "hutchinson":
            if len(batch) != 2:
                raise ValueError("a Hutchinson CNF step takes a batch (X, noise)")
            noise = view(batch[1], self.np_dtype)
        return X, noise

    def loss(self, params: dict, X: torch.Tensor, noise, hyper: CNFHyper, check: bool = True):
        """The training loss, its parts (floats) and the ODEStats."""
        training, d = self.training, self.spec.n_features
        y0 = torch.cat([X, X.new_zeros((X.shape[0], training.n_channels))], dim=1)
        args = {"field": params}
        if noise is not None:
            args["noise"] = Constant(noise)
        ys, stats = odeint(self.dynamics, y0, self._times(0.0, hyper.t1), args, hyper.solve,
                           check=check)
        y1 = ys[-1]
        nll = -torch.mean(log_normal(y1[:, :d]) + y1[:, d])
        loss = nll + l2_penalty(params, self.penalized, hyper.alpha, X.shape[0])
        parts = {"nll": nll}
        if training.regularize:
            parts["kinetic_energy"] = torch.mean(y1[:, d + 1])
            parts["jacobian_norm"] = torch.mean(y1[:, d + 2])
            loss = (loss + hyper.kinetic_energy * parts["kinetic_energy"]
                    + hyper.jacobian_norm * parts["jacobian_norm"])
        return loss, parts, stats

    @staticmethod
    def _metrics(loss, parts, stats, nfe_backward) -> dict[str, float]:
        metrics = {"loss": loss.item(), "nfe_forward": stats.nfe_forward,
                   "nfe_backward": nfe_backward}
        metrics.update({k: v.item() for k, v in parts.items()})
        return metrics

    def step(self, state: dict[str, Any], batch, hyper: CNFHyper):
        X, noise = self._batch(batch)
        opt = state["opt"]
        set_adam_hyper(opt, hyper)
        opt.zero_grad(set_to_none=True)
        loss, parts, stats = self.loss(state["params"], X, noise, hyper,
                                       check=not self._checked)
        self._checked = True
        loss.backward()
        opt.step()
        return state, self._metrics(loss, parts, stats, stats.nfe_backward)

    def evaluate(self, state: dict[str, Any], batch, hyper: CNFHyper) -> dict[str, float]:
        X, noise = self._batch(batch)
        with torch.no_grad():
            loss, parts, stats = self.loss(state["params"], X, noise, hyper)
        return self._metrics(loss, parts, stats, 0)

    def get_params(self, state: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in state["params"].items()}

    # -------------------------------------------------------------- inference

    def _inference_params(self, params) -> dict[str, torch.Tensor]:
        self.spec.check_params(params)
        return {k: view(params[k], INFERENCE_DTYPE) for k in self.names}

    def log_density(self, params: dict[str, np.ndarray], X: np.ndarray, hyper: CNFHyper):
        """``log p(x)`` (float64, exact trace); each row solved with its own steps."""
        self.spec.check_params(params)
        if len(X) == 0:
            return np.zeros(0, INFERENCE_DTYPE), empty_row_stats()
        d = self.spec.n_features
        with torch.inference_mode():
            X = view(X, INFERENCE_DTYPE)
            y0 = torch.cat([X, X.new_zeros((X.shape[0], 1))], dim=1)
            ys, stats = odeint_rows(self.inference_dynamics, y0, self._times(0.0, hyper.t1),
                                    {"field": self._inference_params(params)}, hyper.solve)
            out = log_normal(ys[-1][:, :d]) + ys[-1][:, d]
        return out.detach().cpu().numpy(), stats

    def _flow(self, params, Z, times, hyper: CNFHyper):
        self.spec.check_params(params)
        if len(Z) == 0:
            return np.zeros((0, self.spec.n_features), INFERENCE_DTYPE), empty_row_stats()
        with torch.inference_mode():
            ys, stats = odeint_rows(self.field, view(Z, INFERENCE_DTYPE), times,
                                    self._inference_params(params), hyper.solve)
        return ys[-1].detach().cpu().numpy(), stats

    def transform(self, params, X, hyper: CNFHyper):
        """``z(t1)`` of data at time 0 (float64)."""
        return self._flow(params, X, self._times(0.0, hyper.t1), hyper)

    def inverse_transform(self, params, Z, hyper: CNFHyper):
        """``z(0)`` of base points at ``t1``: the reverse solve (float64)."""
        return self._flow(params, Z, self._times(hyper.t1, 0.0), hyper)
