"""The latent ODE on the reference engine (autograd + NumPy Adam).

The model is ``odeplug._specs.LatentODESpec``'s; the batch and the loss are those of
every engine:

* batch ``(enc_values, enc_mask, enc_times, dec_times, dec_values, dec_mask, eps)``:
  the encoder's observations ``(n, J, C)`` in reverse time order (left-compacted,
  values under a zero mask ignored), their times ``(n, J)`` (decreasing, NaN-padded),
  the decode times ``(n, K)`` from each series' first observation, the values and
  mask to fit there ``(n, K, C)``, and the reparameterisation noise ``(n, L)`` drawn
  by the training loop;
* loss: the negative ELBO per series, averaged over the batch, ``sum over observed
  entries of -log N(x; decoder(z(t)), std**2) + kl_weight * KL(q(z0) || N(0, I))``,
  plus the L2 penalty ``0.5 alpha sum(W**2) / batch_size``.

The encoder's ODE (``"ode_rnn"``) carries the hidden state over each gap between two
observations: with the gap ``g`` of each series as a last, constant, entry of the state,
``d[h, g]/ds = [g * f(h), 0]`` over ``s`` in ``[0, 1]``, one solve per encoder step for
the whole batch in training, each series alone at inference. In training the latent
trajectory is one solve over the union of the batch's decode times
(:func:`odeplug._series.union_grid`); at inference each series is solved with its own
steps on its own times.
"""

from __future__ import annotations

import math
from typing import Any

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.tracer import getval

from .._protocols import INFERENCE_DTYPE, ROW_COUNTERS, RowStats
from .._series import encoder_gaps, union_grid
from .._solver_options import ODESolveConfig, ODEStats
from .._specs import LatentHyper, LatentODESpec
from .._validation import check_model_rows, check_model_state
from ..layers import as_field
from .nn import INFERENCE_OPS, LAYER_OPS, dense, gru_cell, mlp
from .programs import Adam, l2_penalty
from .solve import odeint, odeint_rows

__all__ = ["LatentProgram"]

LOG_2PI = math.log(2.0 * math.pi)


class LatentProgram:
    """Latent ODE: negative ELBO, Adam; see ``odeplug._specs.LatentODESpec``."""

    def __init__(self, spec: LatentODESpec):
        self.spec = spec
        self.dtype = np.dtype(spec.dtype)
        self.penalized = spec.penalized_names()
        self.n_encoder_layers = len(spec.encoder_field_sizes) - 1
        self.n_decoder_layers = len(spec.decoder_sizes) - 1
        # The latent field is the spec's layer (the MLP by default), realised by this
        # engine's LayerOps: autograd's NumPy to train, NumPy to predict.
        field = spec.field()
        self.field = as_field(field, "field", spec.state_shape, LAYER_OPS)
        self.inference_field = as_field(field, "field", spec.state_shape, INFERENCE_OPS)

    # ---------------------------------------------------------------- the model

    def _encoder_field(self, xp):
        spec, n_layers, hidden = self.spec, self.n_encoder_layers, self.spec.encoder_hidden

        def field(t, y, params):
            h, gap = y[:, :hidden], y[:, hidden:]
            dh = gap * mlp(params, "encoder.field", n_layers, spec.encoder_activation, h, xp)
            return xp.concatenate([dh, xp.zeros_like(gap)], axis=1)

        return field

    def _latent_field(self, xp):
        return self.inference_field if xp is np else self.field

    @staticmethod
    def _subset(params: dict, prefix: str) -> dict:
        return {k: v for k, v in params.items() if k.startswith(prefix)}

    def _encode(self, params, values, mask, gaps, solve: ODESolveConfig, xp, training):
        """``(mean, log_var, stats)``: ``stats`` a list of ``ODEStats`` (training) or
        per-row counters (inference)."""
        spec = self.spec
        n, n_steps, _ = values.shape
        hidden = spec.encoder_hidden
        dtype = values.dtype
        values = np.where(mask, values, 0.0).astype(dtype)
        mask_f = mask.astype(dtype)
        valid = mask.any(axis=2)
        previous = np.concatenate([np.zeros((n, 1)), gaps[:, :-1]], axis=1).astype(dtype)
        gaps = gaps.astype(dtype)
        field = self._encoder_field(xp)
        field_params = self._subset(params, "encoder.field.")
        h = np.zeros((n, hidden), dtype)
        stats: Any = [] if training else {k: np.zeros(n, np.int64) for k in ROW_COUNTERS}
        for j in range(n_steps):
            inputs = [values[:, j], mask_f[:, j]]
            if spec.encoder == "rnn":
                inputs.append(previous[:, j : j + 1])
            updated = gru_cell(params, "encoder.gru", np.concatenate(inputs, axis=1), h, xp)
            h = xp.where(valid[:, j : j + 1], updated, h)
            if spec.encoder != "ode_rnn":
                continue
            moving = gaps[:, j] > 0
            if not moving.any():
                continue
            if training:
                y = xp.concatenate([h, gaps[:, j : j + 1]], axis=1)
                check_model_state(getval(y), 0.0, 1.0)
                ys, solve_stats = odeint(field, y, np.array([0.0, 1.0]), field_params, solve)
                h = ys[-1][:, :hidden]
                stats.append(solve_stats)
            else:  # each series alone, only those that move
                rows = np.flatnonzero(moving)
                y = np.concatenate([h[rows], gaps[rows, j : j + 1]], axis=1)
                ys, counters = odeint_rows(field, y, np.array([0.0, 1.0]), field_params,
                                           solve)
                h = h.copy()
                h[rows] = ys[-1][:, :hidden]
                for k in ROW_COUNTERS:
                    stats[k][rows] += counters[k]
        out = dense(params, "encoder.head", h)
        return out[:, : spec.latent_dim], out[:, spec.latent_dim :], stats

    def _decode(self, params, z, xp):
        return mlp(params, "decoder", self.n_decoder_layers, self.spec.decoder_activation, z, xp)

    def _noise_std(self, params, hyper: LatentHyper):
        if self.spec.fit_noise:
            return anp.exp(params["likelihood.log_std"])
        return hyper.noise_std

    # ---------------------------------------------------------------- training

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}
        return {"params": params, "opt": Adam.init(params)}

    def _batch(self, batch):
        enc_values, enc_mask, enc_times, dec_times, dec_values, dec_mask, eps = batch
        dtype = self.dtype
        grid, index = union_grid(dec_times, dtype)
        return dict(enc_values=np.asarray(enc_values, dtype), enc_mask=np.asarray(enc_mask,
                    bool), gaps=encoder_gaps(enc_times), grid=grid, index=index,
                    dec_values=np.where(dec_mask, dec_values, 0.0).astype(dtype),
                    dec_mask=np.asarray(dec_mask, bool), eps=np.asarray(eps, dtype))

    def _loss(self, params, data: dict, hyper: LatentHyper, holder: dict):
        """The negative ELBO (mean over series) + L2; ``holder`` gets the solves' stats
        and the loss's parts."""
        mean, log_var, stats = self._encode(params, data["enc_values"], data["enc_mask"],
                                            data["gaps"], hyper.solve, anp, training=True)
        z0 = mean + anp.exp(0.5 * log_var) * data["eps"]
        check_model_state(getval(z0), data["grid"][0], data["grid"][-1])
        zs, latent_stats = odeint(self._latent_field(anp), z0, data["grid"],
                                  self._subset(params, "field."), hyper.solve)
        holder["stats"] = [*stats, latent_stats]
        n = z0.shape[0]
        z = zs[data["index"], np.arange(n)[:, None]]  # (n, K, L)
        predicted = self._decode(params, z, anp)
        std = self._noise_std(params, hyper)
        residual = (data["dec_values"] - predicted) / std
        nll = 0.5 * residual**2 + anp.log(std) + 0.5 * LOG_2PI
        reconstruction = anp.sum(anp.where(data["dec_mask"], nll, 0.0), axis=(1, 2))
        kl = 0.5 * anp.sum(mean**2 + anp.exp(log_var) - log_var - 1.0, axis=1)
        loss = anp.mean(reconstruction + hyper.kl_weight * kl)
        holder["reconstruction"] = anp.mean(reconstruction)
        holder["kl"] = anp.mean(kl)
        return loss + l2_penalty(params, self.penalized, hyper.alpha, n)

    @staticmethod
    def _metrics(loss, holder) -> dict[str, float]:
        stats: list[ODEStats] = holder["stats"]
        return {"loss": float(loss),
                "nfe_forward": int(sum(s.nfe_forward for s in stats)),
                "nfe_backward": int(sum(s.nfe_backward for s in stats)),
                "reconstruction": float(getattr(holder["reconstruction"], "_value",
                                                holder["reconstruction"])),
                "kl": float(getattr(holder["kl"], "_value", holder["kl"]))}

    def loss(self, params, batch, hyper: LatentHyper) -> float:
        """The loss of ``params`` on a batch (for finite differences in the tests)."""
        holder: dict = {}
        params = {k: np.asarray(v, self.dtype) for k, v in params.items()}
        return float(self._loss(params, self._batch(batch), hyper, holder))

    def gradient(self, params, batch, hyper: LatentHyper) -> dict[str, np.ndarray]:
        """The loss's gradient (the step's, without an update)."""
        holder: dict = {}
        params = {k: np.asarray(v, self.dtype) for k, v in params.items()}
        return value_and_grad(self._loss)(params, self._batch(batch), hyper, holder)[1]

    def step(self, state, batch, hyper: LatentHyper):
        holder: dict = {}
        loss, grads = value_and_grad(self._loss)(state["params"], self._batch(batch), hyper,
                                                 holder)
        params, opt = Adam.update(state["params"], grads, state["opt"], hyper)
        return {"params": params, "opt": opt}, self._metrics(loss, holder)

    def evaluate(self, state, batch, hyper: LatentHyper) -> dict[str, float]:
        holder: dict = {}
        loss = self._loss(state["params"], self._batch(batch), hyper, holder)
        return self._metrics(loss, holder)

    def get_params(self, state) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in state["params"].items()}

    # --------------------------------------------------------------- inference

    def _inference_params(self, params):
        self.spec.check_params(params)
        return {k: np.asarray(v, dtype=INFERENCE_DTYPE) for k, v in params.items()}

    def encode(self, params, values, mask, times, hyper: LatentHyper
               ) -> tuple[np.ndarray, np.ndarray, RowStats]:
        """Mean and log-variance of ``q(z0)`` (float64); each series alone."""
        params = self._inference_params(params)
        values = np.asarray(values, INFERENCE_DTYPE)
        mask = np.asarray(mask, bool)
        return self._encode(params, values, mask, encoder_gaps(times), hyper.solve, np,
                            training=False)

    def decode(self, params, z, hyper: LatentHyper) -> np.ndarray:
        params = self._inference_params(params)
        return np.asarray(self._decode(params, np.asarray(z, INFERENCE_DTYPE), np))

    def trajectory(self, params, z0, times, hyper: LatentHyper
                   ) -> tuple[np.ndarray, RowStats]:
        """Latent states ``(n, T, L)`` at per-series grids ``times`` ``(n, T)`` (from 0,
        increasing or decreasing: the past of ``z0``, NaN-padded), each series with its
        own steps."""
        params = self._inference_params(params)
        z0 = np.asarray(z0, INFERENCE_DTYPE)
        check_model_rows(z0, times)
        ys, counters = odeint_rows(self._latent_field(np), z0, np.asarray(times, np.float64),
                                   self._subset(params, "field."), hyper.solve)
        return np.transpose(ys, (1, 0, 2)), counters
