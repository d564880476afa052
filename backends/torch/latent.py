"""The latent ODE on the torch engine (torchdiffeq + ``torch.optim.Adam``).

The reference engine's computation (``odeplug.reference.latent``: the batch, the
encoders, the negative ELBO and the per-series inference are described there), on
torch tensors: same parameters, same loss, same update.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from odeplug._protocols import INFERENCE_DTYPE, ROW_COUNTERS
from odeplug._series import encoder_gaps, union_grid
from odeplug._specs import LatentHyper, LatentODESpec
from odeplug._validation import check_model_rows, check_model_state
from odeplug.layers import as_field

from .nn import LAYER_OPS, dense, gru_cell, mlp
from .programs import adam, l2_penalty, set_adam_hyper, tensor, view
from .solve import odeint, odeint_rows

__all__ = ["LatentProgram"]

LOG_2PI = math.log(2.0 * math.pi)


class LatentProgram:
    """Latent ODE: negative ELBO, Adam; see ``odeplug._specs.LatentODESpec``.

    The training state is ``{"params": dict of leaf tensors, "opt": torch.optim.Adam}``,
    updated in place by ``step``.
    """

    def __init__(self, spec: LatentODESpec):
        self.spec = spec
        self.np_dtype = np.dtype(spec.dtype)
        self.names = tuple(spec.param_shapes())
        self.penalized = spec.penalized_names()
        self.n_encoder_layers = len(spec.encoder_field_sizes) - 1
        self.n_decoder_layers = len(spec.decoder_sizes) - 1
        hidden, activation = spec.encoder_hidden, spec.encoder_activation
        n_encoder = self.n_encoder_layers

        def encoder_field(t, y, params):
            h, gap = y[:, :hidden], y[:, hidden:]
            dh = gap * mlp(params, "encoder.field", n_encoder, activation, h)
            return torch.cat([dh, torch.zeros_like(gap)], dim=1)

        self.encoder_field = encoder_field
        # The spec's layer (the MLP by default), realised by this engine's LayerOps.
        self.latent_field = as_field(spec.field(), "field", spec.state_shape, LAYER_OPS)

    @staticmethod
    def _subset(params: dict, prefix: str) -> dict:
        return {k: v for k, v in params.items() if k.startswith(prefix)}

    def _encode(self, params, values, mask, gaps: np.ndarray, solve, training: bool):
        """``(mean, log_var, stats)``: a list of ``ODEStats`` (training) or per-row
        counters (inference). ``values``, ``mask``: tensors ``(n, J, C)``; ``gaps``
        NumPy ``(n, J)``."""
        spec = self.spec
        n, n_steps, _ = values.shape
        hidden = spec.encoder_hidden
        values = torch.where(mask, values, torch.zeros((), dtype=values.dtype))
        mask_f = mask.to(values.dtype)
        valid = mask.any(dim=2)
        gaps_t = view(gaps, self._dtype_of(values))
        previous = torch.cat([gaps_t.new_zeros((n, 1)), gaps_t[:, :-1]], dim=1)
        field_params = self._subset(params, "encoder.field.")
        h = values.new_zeros((n, hidden))
        stats: Any = [] if training else {k: np.zeros(n, np.int64) for k in ROW_COUNTERS}
        span = torch.tensor([0.0, 1.0], dtype=torch.float64)
        for j in range(n_steps):
            inputs = [values[:, j], mask_f[:, j]]
            if spec.encoder == "rnn":
                inputs.append(previous[:, j : j + 1])
            updated = gru_cell(params, "encoder.gru", torch.cat(inputs, dim=1), h)
            h = torch.where(valid[:, j : j + 1], updated, h)
            if spec.encoder != "ode_rnn":
                continue
            moving = gaps[:, j] > 0
            if not moving.any():
                continue
            if training:
                y = torch.cat([h, gaps_t[:, j : j + 1]], dim=1)
                check_model_state(y.detach().cpu().numpy(), 0.0, 1.0)
                ys, solve_stats = odeint(self.encoder_field, y, span, field_params, solve)
                h = ys[-1][:, :hidden]
                stats.append(solve_stats)
            else:
                rows = view(np.flatnonzero(moving), np.int64)
                y = torch.cat([h[rows], gaps_t[rows, j : j + 1]], dim=1)
                ys, counters = odeint_rows(self.encoder_field, y, span, field_params, solve)
                h = h.clone()
                h[rows] = ys[-1][:, :hidden]
                for k in ROW_COUNTERS:
                    stats[k][np.flatnonzero(moving)] += counters[k]
        out = dense(params, "encoder.head", h)
        return out[:, : spec.latent_dim], out[:, spec.latent_dim :], stats

    @staticmethod
    def _dtype_of(x: torch.Tensor) -> np.dtype:
        return np.dtype(str(x.dtype).removeprefix("torch."))

    def _decode(self, params, z):
        return mlp(params, "decoder", self.n_decoder_layers, self.spec.decoder_activation, z)

    def _noise_std(self, params, hyper: LatentHyper):
        if self.spec.fit_noise:
            return torch.exp(params["likelihood.log_std"])
        return torch.tensor(hyper.noise_std, dtype=getattr(torch, self.np_dtype.name))

    # ---------------------------------------------------------------- training

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        self.spec.check_params(params)
        tensors = {k: tensor(params[k], self.np_dtype).requires_grad_(True)
                   for k in self.names}
        return {"params": tensors, "opt": adam(tensors.values())}

    def _batch(self, batch):
        enc_values, enc_mask, enc_times, dec_times, dec_values, dec_mask, eps = batch
        dtype = self.np_dtype
        grid, index = union_grid(dec_times, dtype)
        return dict(enc_values=view(enc_values, dtype), enc_mask=view(enc_mask, np.bool_),
                    gaps=encoder_gaps(enc_times), grid=view(grid, np.float64),
                    index=view(index, np.int64),
                    dec_values=view(np.where(dec_mask, dec_values, 0.0), dtype),
                    dec_mask=view(dec_mask, np.bool_), eps=view(eps, dtype))

    def _loss(self, params, data: dict, hyper: LatentHyper):
        """``(loss, parts)``: the negative ELBO (mean over series) + L2, and the stats
        and parts of the loss."""
        mean, log_var, stats = self._encode(params, data["enc_values"], data["enc_mask"],
                                            data["gaps"], hyper.solve, training=True)
        z0 = mean + torch.exp(0.5 * log_var) * data["eps"]
        check_model_state(z0.detach().cpu().numpy(), float(data["grid"][0]),
                          float(data["grid"][-1]))
        zs, latent_stats = odeint(self.latent_field, z0, data["grid"],
                                  self._subset(params, "field."), hyper.solve)
        n = z0.shape[0]
        z = zs[data["index"], torch.arange(n)[:, None]]
        predicted = self._decode(params, z)
        std = self._noise_std(params, hyper)
        residual = (data["dec_values"] - predicted) / std
        nll = 0.5 * residual**2 + torch.log(std) + 0.5 * LOG_2PI
        reconstruction = torch.where(data["dec_mask"], nll, torch.zeros((), dtype=nll.dtype)
                                     ).sum(dim=(1, 2))
        kl = 0.5 * (mean**2 + torch.exp(log_var) - log_var - 1.0).sum(dim=1)
        loss = (reconstruction + hyper.kl_weight * kl).mean()
        loss = loss + l2_penalty(params, self.penalized, hyper.alpha, n)
        return loss, {"stats": [*stats, latent_stats],
                      "reconstruction": reconstruction.mean(), "kl": kl.mean()}

    @staticmethod
    def _metrics(loss, parts) -> dict[str, float]:
        stats = parts["stats"]
        return {"loss": loss.item(), "nfe_forward": int(sum(s.nfe_forward for s in stats)),
                "nfe_backward": int(sum(s.nfe_backward for s in stats)),
                "reconstruction": parts["reconstruction"].item(), "kl": parts["kl"].item()}

    def step(self, state, batch, hyper: LatentHyper):
        data = self._batch(batch)
        opt = state["opt"]
        set_adam_hyper(opt, hyper)
        opt.zero_grad(set_to_none=True)
        loss, parts = self._loss(state["params"], data, hyper)
        loss.backward()
        opt.step()
        return state, self._metrics(loss, parts)

    def evaluate(self, state, batch, hyper: LatentHyper) -> dict[str, float]:
        with torch.no_grad():
            loss, parts = self._loss(state["params"], self._batch(batch), hyper)
        metrics = self._metrics(loss, parts)
        metrics["nfe_backward"] = 0
        return metrics

    def get_params(self, state) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in state["params"].items()}

    # --------------------------------------------------------------- inference

    def _inference_params(self, params):
        self.spec.check_params(params)
        return {k: view(params[k], INFERENCE_DTYPE) for k in self.names}

    def encode(self, params, values, mask, times, hyper: LatentHyper):
        """Mean and log-variance of ``q(z0)`` (float64); each series alone."""
        with torch.inference_mode():
            tensors = self._inference_params(params)
            mean, log_var, stats = self._encode(
                tensors, view(values, INFERENCE_DTYPE), view(mask, np.bool_),
                encoder_gaps(times), hyper.solve, training=False)
            return (mean.detach().cpu().numpy(), log_var.detach().cpu().numpy(), stats)

    def decode(self, params, z, hyper: LatentHyper) -> np.ndarray:
        with torch.inference_mode():
            out = self._decode(self._inference_params(params), view(z, INFERENCE_DTYPE))
            return out.detach().cpu().numpy()

    def trajectory(self, params, z0, times, hyper: LatentHyper):
        """Latent states ``(n, T, L)`` at per-series grids ``times`` (from 0, increasing
        or decreasing, NaN-padded), each series with its own steps."""
        check_model_rows(z0, times)
        with torch.inference_mode():
            tensors = self._inference_params(params)
            ys, counters = odeint_rows(self.latent_field, view(z0, INFERENCE_DTYPE),
                                       np.asarray(times, np.float64),
                                       self._subset(tensors, "field."), hyper.solve)
            return ys.permute(1, 0, 2).detach().cpu().numpy(), counters
