"""The latent ODE on the JAX engine (diffrax + optax).

The reference engine's computation (``odeplug.reference.latent``: the batch, the
encoders, the negative ELBO and the per-series inference are described there), on JAX:
same parameters, same loss, same update. The encoder's steps are a ``lax.scan`` (one
compiled solve whatever the number of observations); the batch's union grid and the
encoder's gaps are computed on the host (:mod:`odeplug._series`), the grid padded to a
power of two, so a fit compiles its step for a few grid lengths at most.
Compilation and errors: see :mod:`odeplug_backends.jax.programs`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from odeplug._protocols import INFERENCE_DTYPE, empty_row_stats
from odeplug._series import encoder_gaps, union_grid
from odeplug._specs import LatentHyper, LatentODESpec
from odeplug.layers import as_field

from .nn import LAYER_OPS, dense, gru_cell, mlp
from .programs import (
    TRACE_COUNTS,
    ParamsProgram,
    adam_update,
    as_arrays,
    precision,
    rows_in_chunks,
    run_step,
    solve_key,
    solve_values,
    step_status,
    traced_values,
)
from .solve import SolveInfo, SolveStatic, backward_probe, odeint_rows_traced, odeint_traced

__all__ = ["LatentProgram"]

LOG_2PI = math.log(2.0 * math.pi)


def _first_failure(info: SolveInfo, axis: int = 0) -> SolveInfo:
    """One ``SolveInfo`` of solves stacked along ``axis``: counters summed, the first
    failure's code, time and outputs."""
    failed = info.code != 0
    first = jnp.argmax(failed, axis=axis)

    def pick(a):
        return jnp.take_along_axis(a, jnp.expand_dims(first, axis), axis=axis).squeeze(axis)

    any_failed = failed.any(axis=axis)
    last_t = jnp.take(info.t_reached, -1, axis=axis)
    return SolveInfo(
        nfe_forward=info.nfe_forward.sum(axis=axis), n_steps=info.n_steps.sum(axis=axis),
        n_rejected=info.n_rejected.sum(axis=axis),
        code=jnp.where(any_failed, pick(info.code), 0),
        t_reached=jnp.where(any_failed, pick(info.t_reached), last_t),
        n_outputs=pick(info.n_outputs))


def _first_backward(probe_grads: jax.Array) -> jax.Array:
    """The probe cotangent of several solves as one: NFE summed, the first failure's
    code and time."""
    failed = probe_grads[:, 1] != 0
    first = jnp.argmax(failed)
    return jnp.stack([probe_grads[:, 0].sum(), probe_grads[first, 1],
                      jnp.where(failed.any(), probe_grads[first, 2], jnp.nan)])


class _Latent:
    """The latent ODE's functions of (JAX) parameters, for one spec."""

    def __init__(self, spec: LatentODESpec):
        self.spec = spec
        hidden, activation = spec.encoder_hidden, spec.encoder_activation
        n_encoder = len(spec.encoder_field_sizes) - 1
        self.n_decoder = len(spec.decoder_sizes) - 1

        def encoder_field(t, y, params):
            h, gap = y[:, :hidden], y[:, hidden:]
            dh = gap * mlp(params, "encoder.field", n_encoder, activation, h)
            return jnp.concatenate([dh, jnp.zeros_like(gap)], axis=1)

        self.encoder_field = encoder_field
        # The spec's layer (the MLP by default), realised by this engine's LayerOps.
        self.latent_field = as_field(spec.field(), "field", spec.state_shape, LAYER_OPS)

    @staticmethod
    def subset(params: dict, prefix: str) -> dict:
        return {k: v for k, v in params.items() if k.startswith(prefix)}

    def gru_inputs(self, values, mask, previous):
        inputs = [jnp.where(mask, values, 0.0), mask.astype(values.dtype)]
        if self.spec.encoder == "rnn":
            inputs.append(previous[:, None])
        return jnp.concatenate(inputs, axis=1)

    def encode(self, params, values, mask, gaps, static: SolveStatic, tolerances, *,
               probes=None, rows: bool = False):
        """``(mean, log_var, info, failed_ys)`` of a batch ``(n, J, C)``: ``info`` one
        ``SolveInfo`` (training) or per-row ones (``rows``: each series solved alone),
        ``failed_ys`` the outputs of each row's first failed solve (``rows`` only)."""
        spec = self.spec
        n = values.shape[0]
        hidden = spec.encoder_hidden
        dtype = values.dtype
        previous = jnp.concatenate([jnp.zeros((n, 1), dtype), gaps[:, :-1]], axis=1)
        valid = mask.any(axis=2)
        field_params = self.subset(params, "encoder.field.")
        span = jnp.array([0.0, 1.0], dtype)
        swap = functools.partial(jnp.swapaxes, axis1=0, axis2=1)
        xs = (swap(values), swap(mask), swap(valid), swap(gaps), swap(previous))
        ode = spec.encoder == "ode_rnn"

        def update(h, v, m, ok, prev):
            new = gru_cell(params, "encoder.gru", self.gru_inputs(v, m, prev), h)
            return jnp.where(ok[:, None], new, h)

        if not ode:
            def body(h, x):
                v, m, ok, _, prev = x
                return update(h, v, m, ok, prev), None

            h, _ = jax.lax.scan(body, jnp.zeros((n, hidden), dtype), xs)
            info, failed_ys = None, None
        elif not rows:
            def body(h, x):
                (v, m, ok, gap, prev), probe = x
                h = update(h, v, m, ok, prev)
                y = jnp.concatenate([h, gap[:, None]], axis=1)
                ys, info = odeint_traced(self.encoder_field, y, span, field_params, static,
                                         tolerances, probe=probe)
                return ys[-1][:, :hidden], info

            h, infos = jax.lax.scan(body, jnp.zeros((n, hidden), dtype), (xs, probes))
            info, failed_ys = _first_failure(infos), None
        else:
            zero_info = SolveInfo(*(jnp.zeros(n, jnp.int32) for _ in range(4)),
                                  t_reached=jnp.zeros(n, dtype),
                                  n_outputs=jnp.full(n, 2, jnp.int32))

            def body(carry, x):
                h, failed_info, failed_ys = carry
                v, m, ok, gap, prev = x
                h = update(h, v, m, ok, prev)
                y = jnp.concatenate([h, gap[:, None]], axis=1)
                ys, info = odeint_rows_traced(self.encoder_field, y, span, field_params,
                                              static, tolerances)
                moving = gap > 0
                # Counters of the series that move (as the reference engine, which
                # solves those only); a zero gap leaves the state as it is.
                counted = info._replace(**{k: jnp.where(moving, getattr(info, k), 0)
                                           for k in ("nfe_forward", "n_steps",
                                                     "n_rejected")})
                first = (counted.code != 0) & moving & (failed_info.code == 0)
                summed = failed_info._replace(
                    nfe_forward=failed_info.nfe_forward + counted.nfe_forward,
                    n_steps=failed_info.n_steps + counted.n_steps,
                    n_rejected=failed_info.n_rejected + counted.n_rejected)
                failed_info = summed._replace(
                    code=jnp.where(first, info.code, summed.code),
                    t_reached=jnp.where(first, info.t_reached, summed.t_reached),
                    n_outputs=jnp.where(first, info.n_outputs, summed.n_outputs))
                failed_ys = jnp.where(first[None, :, None], ys, failed_ys)
                return (ys[-1][:, :hidden], failed_info, failed_ys), None

            carry = (jnp.zeros((n, hidden), dtype), zero_info,
                     jnp.zeros((2, n, hidden + 1), dtype))
            (h, info, failed_ys), _ = jax.lax.scan(body, carry, xs)
        out = dense(params, "encoder.head", h)
        return out[:, : spec.latent_dim], out[:, spec.latent_dim :], info, failed_ys

    def decode(self, params, z):
        return mlp(params, "decoder", self.n_decoder, self.spec.decoder_activation, z)


@functools.lru_cache(maxsize=32)
def _train_step(spec: LatentODESpec, static: SolveStatic) -> Callable:
    """The compiled training step of an architecture and a solver: ``(params, opt_state,
    batch arrays, values, solve_values) -> (params, opt_state, metrics, status)``."""
    model = _Latent(spec)
    penalized = spec.penalized_names()
    n_encoder_solves = spec.encoder == "ode_rnn"

    def loss_fn(params, probes, data, values, tolerances):
        n, n_steps = data["gaps"].shape
        enc_probes = probes[:n_steps] if n_encoder_solves else None
        mean, log_var, enc_info, _ = model.encode(
            params, data["enc_values"], data["enc_mask"], data["gaps"], static, tolerances,
            probes=enc_probes)
        z0 = mean + jnp.exp(0.5 * log_var) * data["eps"]
        zs, info = odeint_traced(model.latent_field, z0, data["grid"],
                                 model.subset(params, "field."), static, tolerances,
                                 probe=probes[-1])
        if enc_info is not None:
            info = _first_failure(jax.tree.map(lambda a, b: jnp.stack([a, b]), enc_info, info))
        z = zs[data["index"], jnp.arange(n)[:, None]]
        predicted = model.decode(params, z)
        if spec.fit_noise:
            std = jnp.exp(params["likelihood.log_std"])
        else:
            std = values["noise_std"]
        residual = (data["dec_values"] - predicted) / std
        nll = 0.5 * residual**2 + jnp.log(std) + 0.5 * LOG_2PI
        reconstruction = jnp.where(data["dec_mask"], nll, 0.0).sum(axis=(1, 2))
        kl = 0.5 * (mean**2 + jnp.exp(log_var) - log_var - 1.0).sum(axis=1)
        loss = jnp.mean(reconstruction + values["kl_weight"] * kl)
        penalty = sum(jnp.sum(params[k] ** 2) for k in penalized)
        loss = loss + 0.5 * values["alpha"] * penalty / n
        return loss, (info, jnp.mean(reconstruction), jnp.mean(kl))

    def step(params, opt_state, data, values, tolerances):
        TRACE_COUNTS["latent_step"] += 1
        n_probes = data["gaps"].shape[1] * n_encoder_solves + 1
        probes = jnp.zeros((n_probes, backward_probe().shape[0]), data["eps"].dtype)
        (loss, (info, reconstruction, kl)), (grads, probe_grads) = jax.value_and_grad(
            loss_fn, argnums=(0, 1), has_aux=True)(params, probes, data, values, tolerances)
        params, opt_state = adam_update(params, grads, opt_state, values)
        metrics = {"loss": loss, "nfe_forward": info.nfe_forward,
                   "reconstruction": reconstruction, "kl": kl}
        return params, opt_state, metrics, step_status(info, _first_backward(probe_grads))

    return jax.jit(step)


@functools.lru_cache(maxsize=32)
def _encode_rows(spec: LatentODESpec, static: SolveStatic) -> Callable:
    """Compiled inference of ``q(z0)``, each series alone: ``(params, values, mask, gaps,
    values, solve_values) -> ((mean, log_var), failed_ys, info)``."""
    model = _Latent(spec)

    def rows(params, values, mask, gaps, traced, tolerances):
        TRACE_COUNTS["latent_encode"] += 1
        mean, log_var, info, failed_ys = model.encode(params, values, mask, gaps, static,
                                                      tolerances, rows=True)
        if info is None:  # the RNN encoder solves nothing
            n = values.shape[0]
            info = SolveInfo(*(jnp.zeros(n, jnp.int32) for _ in range(4)),
                             t_reached=jnp.zeros(n, values.dtype),
                             n_outputs=jnp.full(n, 2, jnp.int32))
            failed_ys = jnp.zeros((2, n, 1), values.dtype)
        return (mean, log_var), failed_ys, info

    return jax.jit(rows)


@functools.lru_cache(maxsize=32)
def _trajectory_rows(spec: LatentODESpec, static: SolveStatic) -> Callable:
    """Compiled latent trajectories, each series alone on its own grid: ``(params, z0,
    grids, values, solve_values) -> (zs (n, T, L), ys, info)``."""
    model = _Latent(spec)

    def rows(params, z0, grids, traced, tolerances):
        TRACE_COUNTS["latent_trajectory"] += 1
        ys, info = odeint_rows_traced(model.latent_field, z0, grids,
                                      model.subset(params, "field."), static, tolerances)
        return jnp.swapaxes(ys, 0, 1), ys, info

    return jax.jit(rows)


class LatentProgram(ParamsProgram):
    """Latent ODE: negative ELBO, Adam; see ``odeplug._specs.LatentODESpec``.

    The training state is ``{"params": dict of JAX arrays, "opt": optax's Adam state}``;
    ``step`` returns a new one.
    """

    def _batch(self, batch) -> dict[str, np.ndarray]:
        enc_values, enc_mask, enc_times, dec_times, dec_values, dec_mask, eps = batch
        dtype = self.np_dtype
        grid, index = union_grid(dec_times, dtype)
        return dict(enc_values=np.asarray(enc_values, dtype), enc_mask=np.asarray(
            enc_mask, bool), gaps=encoder_gaps(enc_times).astype(dtype), grid=grid,
            index=index.astype(np.int32),
            dec_values=np.where(dec_mask, dec_values, 0.0).astype(dtype),
            dec_mask=np.asarray(dec_mask, bool), eps=np.asarray(eps, dtype))

    def step(self, state, batch, hyper: LatentHyper):
        compiled = _train_step(self.spec, solve_key(hyper.solve))
        (params, opt), metrics = run_step(
            compiled, self.np_dtype, hyper.solve, state["params"], state["opt"],
            self._batch(batch), traced_values(hyper, self.np_dtype),
            solve_values(hyper.solve, self.np_dtype))
        metrics["nfe_forward"] = int(metrics["nfe_forward"])
        return {"params": params, "opt": opt}, metrics

    def evaluate(self, state, batch, hyper: LatentHyper) -> dict[str, float]:
        # The step's compilation with a zero step size, its new state dropped.
        _, metrics = self.step(state, batch, dataclasses.replace(hyper, learning_rate=0.0))
        return metrics

    # --------------------------------------------------------------- inference

    def _inference(self, params, hyper):
        self.spec.check_params(params)
        solve = dataclasses.replace(hyper.solve, adjoint=None)
        with precision(INFERENCE_DTYPE):
            arrays = as_arrays(params, self.names, INFERENCE_DTYPE)
        values = (traced_values(hyper, INFERENCE_DTYPE), solve_values(solve, INFERENCE_DTYPE))
        return arrays, solve, values

    def encode(self, params, values, mask, times, hyper: LatentHyper):
        """Mean and log-variance of ``q(z0)`` (float64); each series alone."""
        arrays, solve, traced = self._inference(params, hyper)
        values = np.asarray(values, INFERENCE_DTYPE)
        n = values.shape[0]
        if n == 0:
            empty = np.zeros((0, self.spec.latent_dim), INFERENCE_DTYPE)
            return empty, empty.copy(), empty_row_stats()
        (mean, log_var), stats = rows_in_chunks(
            _encode_rows(self.spec, solve_key(solve)), arrays,
            (values, np.asarray(mask, bool), encoder_gaps(times)), traced, solve,
            np.array([0.0, 1.0]))
        return np.asarray(mean), np.asarray(log_var), stats

    def decode(self, params, z, hyper: LatentHyper) -> np.ndarray:
        self.spec.check_params(params)
        model = _Latent(self.spec)
        with precision(INFERENCE_DTYPE):
            arrays = as_arrays(params, self.names, INFERENCE_DTYPE)
            out = model.decode(arrays, jnp.asarray(np.asarray(z, INFERENCE_DTYPE)))
            return np.asarray(jax.device_get(out))

    def trajectory(self, params, z0, times, hyper: LatentHyper):
        """Latent states ``(n, T, L)`` at per-series grids ``times`` (from 0, increasing
        or decreasing, NaN-padded), each series with its own steps."""
        arrays, solve, traced = self._inference(params, hyper)
        z0 = np.asarray(z0, INFERENCE_DTYPE)
        times = np.asarray(times, INFERENCE_DTYPE)
        if z0.shape[0] == 0:
            return (np.zeros((0, times.shape[1], self.spec.latent_dim), INFERENCE_DTYPE),
                    empty_row_stats())
        zs, stats = rows_in_chunks(_trajectory_rows(self.spec, solve_key(solve)), arrays,
                                   (z0, times), traced, solve, times)
        return np.asarray(zs), stats
