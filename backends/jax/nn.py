"""Layers of odeplug's model families in JAX, with the canonical parameter names.

The same functions as ``odeplug.reference.nn``: parameters are a ``dict`` of arrays keyed
by the canonical names of ``odeplug._specs`` (``{name}.weight`` of shape ``(fan_in,
fan_out)``, applied as ``x @ W + b``), so that the dict of a program is the dict of the
reference engine, array for array.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = ["ACTIVATIONS", "LAYER_OPS", "SLOPES", "LayerOps", "dense", "gru_cell", "log_softmax",
           "mlp", "mlp_field", "mlp_field_jvp"]


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


# Derivatives act'(x) as functions of (x, act(x)), as the reference engine's.
SLOPES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "tanh": lambda x, y: 1.0 - y * y,
    "relu": lambda x, y: (x > 0).astype(x.dtype),
    "softplus": lambda x, y: jax.nn.sigmoid(x),
    "logistic": lambda x, y: y * (1.0 - y),
    "identity": lambda x, y: jnp.ones_like(x),
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


def mlp_field_jvp(prefix: str, n_layers: int, activation: str) -> Callable:
    """The field of :func:`mlp_field` with its Jacobian-vector products, by forward mode
    (``odeplug.reference.nn.mlp_field_jvp``): ``field(t, z, tangents, params) -> (f,
    jvp)``, ``tangents`` ``(m, k, d)`` or None for the whole Jacobian (``jvp[:, i]`` is
    ``df/dz_i``). Products at full precision, as :func:`dense`."""
    act, slope = ACTIVATIONS[activation], SLOPES[activation]
    highest = jax.lax.Precision.HIGHEST

    def field(t, z, tangents, params: dict):
        m, d = z.shape
        column = jnp.broadcast_to(jnp.asarray(t, z.dtype), (m, 1))
        weight = params[f"{prefix}.0.weight"]
        h = dense(params, f"{prefix}.0", jnp.concatenate([z, column], axis=1))
        if tangents is None:
            jvp = jnp.broadcast_to(weight[:d], (m, d, weight.shape[1]))
        else:
            jvp = jnp.matmul(tangents, weight[:d], precision=highest)
        for i in range(1, n_layers):
            a = act(h)
            jvp = jvp * slope(h, a)[:, None, :]
            h = dense(params, f"{prefix}.{i}", a)
            jvp = jnp.matmul(jvp, params[f"{prefix}.{i}.weight"], precision=highest)
        return h, jvp

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


_LAYOUTS = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW")}


def _conv_xla(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    spatial = w.ndim - 2
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride,) * spatial, padding=[(padding, padding)] * spatial,
        dimension_numbers=_LAYOUTS[spatial], precision=jax.lax.Precision.HIGHEST)


def _conv_by_slices(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
    """The reference engine's convolution: a sum over the kernel's offsets of strided
    slices of the padded input, each a product over the channels."""
    spatial = w.ndim - 2
    x = jnp.pad(x, ((0, 0), (0, 0)) + ((padding, padding),) * spatial)
    kernel = w.shape[2:]
    out = [(n - k) // stride + 1 for n, k in zip(x.shape[2:], kernel, strict=True)]
    letters = "hw"[:spatial]
    total = None
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = (slice(None), slice(None)) + tuple(
            slice(o, o + stride * (m - 1) + 1, stride) for o, m in zip(offset, out, strict=True))
        term = jnp.einsum(f"oc,nc{letters}->no{letters}", w[(slice(None), slice(None), *offset)],
                          x[window], precision=jax.lax.Precision.HIGHEST)
        total = term if total is None else total + term
    return total


class LayerOps:
    """The array operations of :mod:`odeplug.layers` on JAX arrays; products at full
    precision, as :func:`dense`.

    Convolutions by ``lax.conv_general_dilated``, except on CPUs: there XLA runs that
    convolution about 15 times slower inside a loop (a solver's steps) than unrolled,
    while the reference engine's formulation (strided slices and products) stays fast,
    so the CPU lowering takes that one (``lax.platform_dependent``: the same function).
    """

    @staticmethod
    def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.matmul(x, w, precision=jax.lax.Precision.HIGHEST)

    def affine(self, x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        return self.matmul(x, w) + b

    @staticmethod
    def conv(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
        return jax.lax.platform_dependent(
            x, w, cpu=functools.partial(_conv_by_slices, stride=stride, padding=padding),
            default=functools.partial(_conv_xla, stride=stride, padding=padding))

    @staticmethod
    def concat(xs, axis: int) -> jax.Array:
        return jnp.concatenate(xs, axis=axis)

    @staticmethod
    def mean(x: jax.Array, axes) -> jax.Array:
        return jnp.mean(x, axis=axes, keepdims=True) if axes else x

    @staticmethod
    def reshape(x: jax.Array, shape) -> jax.Array:
        return jnp.reshape(x, shape)

    @staticmethod
    def zeros(shape, like: jax.Array) -> jax.Array:
        return jnp.zeros(shape, like.dtype)

    @staticmethod
    def eye(n: int, like: jax.Array) -> jax.Array:
        return jnp.eye(n, dtype=like.dtype)

    @staticmethod
    def time_column(t, n: int, like: jax.Array) -> jax.Array:
        t = jnp.asarray(t, like.dtype)
        return jnp.broadcast_to(jnp.reshape(t, (-1, 1)) if t.ndim else t, (n, 1))

    @staticmethod
    def sqrt(x: jax.Array) -> jax.Array:
        return jnp.sqrt(x)

    @staticmethod
    def sigmoid(x: jax.Array) -> jax.Array:
        return jax.nn.sigmoid(x)

    @staticmethod
    def activation(name: str):
        return ACTIVATIONS[name]

    @staticmethod
    def slope(name: str):
        return SLOPES[name]


LAYER_OPS = LayerOps()
