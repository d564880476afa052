"""Layers of odeplug's model families in JAX, with the canonical parameter names.

The same functions as ``odeplug.reference.nn``: parameters are a ``dict`` of arrays keyed
by the canonical names of ``odeplug._specs`` (``{name}.weight`` of shape ``(fan_in,
fan_out)``, applied as ``x @ W + b``), so that the dict of a program is the dict of the
reference engine, array for array.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "dense", "gru_cell", "log_softmax", "mlp", "mlp_field"]


def _identity(x: jax.Array) -> jax.Array:
    return x


# The reference writes softplus as logaddexp(0, x) and the logistic as 0.5 (tanh(x/2) + 1):
# the same functions; jax.nn's differ from those only by rounding.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "logistic": jax.nn.sigmoid,
    "identity": _identity,
}


def dense(params: dict, name: str, x: jax.Array) -> jax.Array:
    """``x @ W + b`` with the canonical ``{name}.weight`` and ``{name}.bias``.

    At full precision: on NVIDIA GPUs JAX's default float32 product is TF32 (a 10-bit
    mantissa, relative errors near 1e-3), which would make a model's predictions differ
    from the reference and torch engines (torch keeps float32 products in float32 by
    default). CPUs compute in full precision either way.
    """
    product = jnp.matmul(x, params[f"{name}.weight"], precision=jax.lax.Precision.HIGHEST)
    return product + params[f"{name}.bias"]


def mlp_field(prefix: str, n_layers: int, activation: str) -> Callable:
    """Vector field ``f(t, z, params)``: an MLP of ``[z, t]``, linear last layer.

    For :func:`odeplug_backends.jax.solve.odeint`, with ``params`` (its ``args``) the
    dict of the field's arrays. ``z`` is ``(batch, state_dim)``; ``t`` a scalar,
    appended to every row as a last column of the input (only of the first layer).
    """
    act = ACTIVATIONS[activation]
    last = n_layers - 1

    def field(t: jax.Array, z: jax.Array, params: dict) -> jax.Array:
        column = jnp.broadcast_to(jnp.asarray(t, z.dtype), (z.shape[0], 1))
        h = jnp.concatenate([z, column], axis=1)
        for i in range(n_layers):
            h = dense(params, f"{prefix}.{i}", h)
            if i < last:
                h = act(h)
        return h

    return field


def log_softmax(logits: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(logits, axis=1)


def mlp(params: dict, prefix: str, n_layers: int, activation: str, x: jax.Array) -> jax.Array:
    """An MLP ``{prefix}.{i}`` of ``x`` (any leading shape), linear last layer."""
    act = ACTIVATIONS[activation]
    for i in range(n_layers):
        x = dense(params, f"{prefix}.{i}", x)
        if i < n_layers - 1:
            x = act(x)
    return x


def _product(x: jax.Array, weight: jax.Array) -> jax.Array:
    return jnp.matmul(x, weight, precision=jax.lax.Precision.HIGHEST)  # as dense's


def gru_cell(params: dict, prefix: str, x: jax.Array, h: jax.Array) -> jax.Array:
    """One GRU update of ``h`` by input ``x`` (torch's ``GRUCell``: gates reset, update,
    new, in that order along the weights' columns)."""
    gi = _product(x, params[f"{prefix}.weight_ih"]) + params[f"{prefix}.bias_ih"]
    gh = _product(h, params[f"{prefix}.weight_hh"]) + params[f"{prefix}.bias_hh"]
    i_r, i_z, i_n = jnp.split(gi, 3, axis=-1)
    h_r, h_z, h_n = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(i_r + h_r)
    z = jax.nn.sigmoid(i_z + h_z)
    n = jnp.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h
