"""The continuous normalizing flow on the reference engine (autograd + NumPy Adam).

Data at ``t = 0``, the base ``N(0, I)`` at ``t1`` (``odeplug._specs.CNFSpec``). The
augmented state is ``[z, int tr(df/dz) dt]`` (with RNODE's ``int |f|^2 dt`` and
``int |df/dz|_F^2 dt`` when regularised); traces come from a forward-mode pass through
the field (``nn.mlp_field_jvp``): all ``d`` tangents for the exact trace, the batch's
probe vector for Hutchinson's estimate.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.tracer import getval

from .._constant import Constant
from .._protocols import INFERENCE_DTYPE, empty_row_stats
from .._solver_options import ODEStats
from .._specs import CNFHyper, CNFSpec, CNFTrainingSpec, cnf_training
from .nn import INFERENCE_OPS, LAYER_OPS, mlp_field, mlp_field_jvp
from .programs import Adam, l2_penalty
from .solve import odeint, odeint_rows

__all__ = ["CNFProgram", "augmented_field", "field_functions", "log_normal"]


def field_functions(spec: CNFSpec, inference: bool = False):
    """``(field, field_jvp)`` of the spec's field (:meth:`CNFSpec.field_functions`) on
    this engine; inference: plain NumPy."""
    xp = np if inference else anp
    return spec.field_functions(INFERENCE_OPS if inference else LAYER_OPS,
                                functools.partial(mlp_field, xp=xp),
                                functools.partial(mlp_field_jvp, xp=xp))


def augmented_field(field_jvp, n_features: int, regularize: bool, xp=anp):
    """``dynamics(t, y, args)`` of the augmented state ``[z, trace, (kinetic, jacobian)]``.

    ``args["field"]`` holds the field's parameters; ``args["noise"]`` (``(m, d)``), when
    present, is Hutchinson's probe: the trace is then ``e^T (df/dz) e`` and the Jacobian
    norm ``|(df/dz) e|^2`` (both unbiased); without it both are exact.
    """
    d = n_features

    def dynamics(t, y, args):
        z = y[:, :d]
        noise = args.get("noise")
        f, jvp = field_jvp(t, z, None if noise is None else noise[:, None, :], args["field"])
        if noise is None:
            trace = xp.sum(jvp * np.eye(d, dtype=y.dtype), axis=(1, 2))
        else:
            trace = xp.sum(noise * jvp[:, 0], axis=1)
        columns = [f, trace[:, None]]
        if regularize:
            columns += [xp.sum(f * f, axis=1)[:, None], xp.sum(jvp * jvp, axis=(1, 2))[:, None]]
        return xp.concatenate(columns, axis=1)

    return dynamics


def log_normal(z, xp=anp):
    """``log N(z; 0, I)`` per row."""
    return -0.5 * xp.sum(z * z, axis=1) - 0.5 * z.shape[1] * math.log(2.0 * math.pi)


class CNFProgram:
    """CNF density: negative log-likelihood (+ RNODE's terms, + L2), Adam; see
    ``odeplug._specs.CNFSpec``. Batch: ``(X,)``, or ``(X, noise)`` with Hutchinson.

    Built from a ``CNFTrainingSpec`` (or a bare ``CNFSpec``: exact trace, no
    regulariser); ``spec`` is the model's ``CNFSpec``, ``training`` the training spec."""

    def __init__(self, spec: CNFSpec | CNFTrainingSpec):
        self.training = cnf_training(spec)
        self.spec = spec = self.training.cnf
        d = spec.n_features
        # The vector field f(t, z, params) itself (flow matching regresses it).
        self.field, field_jvp = field_functions(spec)
        self.inference_field, inference_jvp = field_functions(spec, inference=True)
        self.dynamics = augmented_field(field_jvp, d, self.training.regularize)
        self.inference_dynamics = augmented_field(inference_jvp, d, False, xp=np)
        self.dtype = np.dtype(spec.dtype)
        self.penalized = spec.penalized_names()

    def velocity(self, params, t, z):
        """``f(t, z)``: the vector field on states ``z`` ``(m, d)`` at a time ``t``."""
        return self.field(t, z, params)

    # --------------------------------------------------------------- training

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}
        return {"params": params, "opt": Adam.init(params)}

    def _batch(self, batch):
        X = np.asarray(batch[0], dtype=self.dtype)
        noise = None
        if self.training.trace == "hutchinson":
            if len(batch) != 2:
                raise ValueError("a Hutchinson CNF step takes a batch (X, noise)")
            noise = np.asarray(batch[1], dtype=self.dtype)
        return X, noise

    def _loss(self, params, X, noise, hyper: CNFHyper, holder: dict):
        training, d = self.training, self.spec.n_features
        y0 = np.concatenate([X, np.zeros((X.shape[0], training.n_channels), X.dtype)],
                            axis=1)
        args = {"field": params}
        if noise is not None:
            args["noise"] = Constant(noise)
        ys, holder["stats"] = odeint(self.dynamics, y0, np.array([0.0, hyper.t1]), args,
                                     hyper.solve)
        y1 = ys[-1]
        nll = -anp.mean(log_normal(y1[:, :d]) + y1[:, d])
        loss = nll + l2_penalty(params, self.penalized, hyper.alpha, X.shape[0])
        holder["nll"] = getval(nll)
        if training.regularize:
            kinetic, jacobian = anp.mean(y1[:, d + 1]), anp.mean(y1[:, d + 2])
            loss = loss + hyper.kinetic_energy * kinetic + hyper.jacobian_norm * jacobian
            holder["kinetic_energy"], holder["jacobian_norm"] = getval(kinetic), getval(jacobian)
        return loss

    @staticmethod
    def _metrics(loss, holder: dict) -> dict[str, float]:
        stats: ODEStats = holder.pop("stats")
        metrics = {"loss": float(loss), "nfe_forward": stats.nfe_forward,
                   "nfe_backward": stats.nfe_backward}
        metrics.update({k: float(v) for k, v in holder.items()})
        return metrics

    def step(self, state, batch, hyper: CNFHyper):
        X, noise = self._batch(batch)
        holder: dict = {}
        loss, grads = value_and_grad(self._loss)(state["params"], X, noise, hyper, holder)
        params, opt = Adam.update(state["params"], grads, state["opt"], hyper)
        return {"params": params, "opt": opt}, self._metrics(loss, holder)

    def evaluate(self, state, batch, hyper: CNFHyper) -> dict[str, float]:
        X, noise = self._batch(batch)
        holder: dict = {}
        loss = self._loss(state["params"], X, noise, hyper, holder)
        return self._metrics(loss, holder)

    def get_params(self, state) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in state["params"].items()}

    # -------------------------------------------------------------- inference

    def _inference_params(self, params):
        self.spec.check_params(params)
        return {k: np.asarray(v, dtype=INFERENCE_DTYPE) for k, v in params.items()}

    def log_density(self, params, X, hyper: CNFHyper):
        """``log p(x)`` (float64, exact trace); each row solved with its own steps."""
        params = self._inference_params(params)
        if len(X) == 0:
            return np.zeros(0, INFERENCE_DTYPE), empty_row_stats()
        X = np.asarray(X, dtype=INFERENCE_DTYPE)
        y0 = np.concatenate([X, np.zeros((X.shape[0], 1), INFERENCE_DTYPE)], axis=1)
        ys, stats = odeint_rows(self.inference_dynamics, y0, np.array([0.0, hyper.t1]),
                                {"field": params}, hyper.solve)
        d = self.spec.n_features
        return log_normal(ys[-1][:, :d], xp=np) + ys[-1][:, d], stats

    def _flow(self, params, Z, times, hyper: CNFHyper):
        params = self._inference_params(params)
        if len(Z) == 0:
            return np.zeros((0, self.spec.n_features), INFERENCE_DTYPE), empty_row_stats()
        ys, stats = odeint_rows(self.inference_field, np.asarray(Z, dtype=INFERENCE_DTYPE),
                                times, params, hyper.solve)
        return ys[-1], stats

    def transform(self, params, X, hyper: CNFHyper):
        """``z(t1)`` of data at time 0 (float64)."""
        return self._flow(params, X, np.array([0.0, hyper.t1]), hyper)

    def inverse_transform(self, params, Z, hyper: CNFHyper):
        """``z(0)`` of base points at ``t1``: the reverse solve (float64)."""
        return self._flow(params, Z, np.array([hyper.t1, 0.0]), hyper)
