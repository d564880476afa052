"""Layers of odeplug's model families in autograd's NumPy, with canonical names."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import autograd.numpy as anp
import numpy as np
from autograd.scipy.special import logsumexp

__all__ = ["ACTIVATIONS", "INFERENCE_OPS", "LAYER_OPS", "LayerOps", "activation_slopes",
           "activations", "dense", "gru_cell", "log_softmax", "mlp", "mlp_field",
           "mlp_field_jvp"]

def activations(xp) -> dict[str, Callable]:
    """Activations written with ``xp``: autograd's NumPy to train, NumPy to predict."""
    return {
        "tanh": xp.tanh,
        "relu": lambda x: xp.maximum(x, 0.0),
        "softplus": lambda x: xp.logaddexp(0.0, x),
        "logistic": lambda x: 0.5 * (xp.tanh(0.5 * x) + 1.0),
        "identity": lambda x: x,
    }


ACTIVATIONS = activations(anp)


def activation_slopes(xp) -> dict[str, Callable]:
    """Derivatives ``act'(x)`` as functions of ``(x, act(x))`` (the cheaper of the two)."""
    return {
        "tanh": lambda x, y: 1.0 - y * y,
        "relu": lambda x, y: xp.where(x > 0, xp.ones_like(x), xp.zeros_like(x)),
        "softplus": lambda x, y: 0.5 * (xp.tanh(0.5 * x) + 1.0),
        "logistic": lambda x, y: y * (1.0 - y),
        "identity": lambda x, y: xp.ones_like(x),
    }


def dense(params: dict, name: str, x):
    """``x @ W + b`` with the canonical ``{name}.weight`` and ``{name}.bias``."""
    return x @ params[f"{name}.weight"] + params[f"{name}.bias"]


def mlp_field(prefix: str, n_layers: int, activation: str, xp=anp) -> Callable:
    """Vector field ``f(t, z, params)``: an MLP of ``[z, t]``, linear last layer.

    ``xp=numpy`` gives the same function without autograd's wrappers (inference)."""
    act = activations(xp)[activation]

    def field(t, z, params):
        h = xp.concatenate([z, xp.full((z.shape[0], 1), t, dtype=z.dtype)], axis=1)
        for i in range(n_layers):
            h = dense(params, f"{prefix}.{i}", h)
            if i < n_layers - 1:
                h = act(h)
        return h

    return field


def mlp_field_jvp(prefix: str, n_layers: int, activation: str, xp=anp) -> Callable:
    """The field of :func:`mlp_field` with its Jacobian-vector products, by forward mode.

    ``field(t, z, tangents, params) -> (f, jvp)``: ``f`` of shape ``(m, d)``; with
    ``tangents`` of shape ``(m, k, d)``, ``jvp[:, j] = (df/dz) tangents[:, j]``, shape
    ``(m, k, d)``; with ``tangents=None``, the whole Jacobian ``jvp[:, i, :] = df/dz_i``
    (``k = d``, the exact trace's). Written with ``xp`` so that autograd differentiates
    it (training) and NumPy runs it plain (inference); ``t`` is a scalar or ``(m, 1)``.
    """
    act = activations(xp)[activation]
    slope = activation_slopes(xp)[activation]

    def field(t, z, tangents, params):
        m, d = z.shape
        weight = params[f"{prefix}.0.weight"]
        h = xp.concatenate([z, xp.full((m, 1), t, dtype=z.dtype)], axis=1)
        h = h @ weight + params[f"{prefix}.0.bias"]
        if tangents is None:  # the rows of the Jacobian of the first layer, per row
            jvp = weight[:d][None] * xp.ones((m, 1, 1), dtype=z.dtype)
        else:
            jvp = tangents @ weight[:d]
        for i in range(1, n_layers):
            a = act(h)
            jvp = jvp * slope(h, a)[:, None, :]
            weight = params[f"{prefix}.{i}.weight"]
            h = a @ weight + params[f"{prefix}.{i}.bias"]
            jvp = jvp @ weight
        return h, jvp

    return field


def log_softmax(logits):
    return logits - logsumexp(logits, axis=1, keepdims=True)


def mlp(params: dict, prefix: str, n_layers: int, activation: str, x, xp=anp):
    """An MLP ``{prefix}.{i}`` of ``x`` (any leading shape), linear last layer."""
    act = activations(xp)[activation]
    for i in range(n_layers):
        x = x @ params[f"{prefix}.{i}.weight"] + params[f"{prefix}.{i}.bias"]
        if i < n_layers - 1:
            x = act(x)
    return x


def gru_cell(params: dict, prefix: str, x, h, xp=anp):
    """One GRU update of ``h`` by input ``x`` (torch's ``GRUCell``: gates reset, update,
    new, in that order along the weights' columns)."""
    gi = x @ params[f"{prefix}.weight_ih"] + params[f"{prefix}.bias_ih"]
    gh = h @ params[f"{prefix}.weight_hh"] + params[f"{prefix}.bias_hh"]
    n_hidden = h.shape[-1]
    sigmoid = activations(xp)["logistic"]
    r = sigmoid(gi[..., :n_hidden] + gh[..., :n_hidden])
    z = sigmoid(gi[..., n_hidden : 2 * n_hidden] + gh[..., n_hidden : 2 * n_hidden])
    n = xp.tanh(gi[..., 2 * n_hidden :] + r * gh[..., 2 * n_hidden :])
    return (1.0 - z) * n + z * h


class LayerOps:
    """The array operations of :mod:`odeplug.layers` in ``xp`` (autograd's NumPy to
    train, NumPy to predict). Convolutions are sums over the kernel's offsets of
    strided slices of the zero-padded input, each an ``einsum`` over the channels, so
    autograd differentiates them with nothing of its own."""

    def __init__(self, xp):
        self.xp = xp
        self._activations = activations(xp)
        self._slopes = activation_slopes(xp)

    def matmul(self, x, w):
        return x @ w

    def affine(self, x, w, b):
        return x @ w + b

    def conv(self, x, w, stride: int, padding: int):
        xp = self.xp
        spatial = w.ndim - 2
        if padding:
            for axis in range(2, 2 + spatial):
                shape = list(x.shape)
                shape[axis] = padding
                zeros = xp.zeros(shape, dtype=x.dtype)
                x = xp.concatenate([zeros, x, zeros], axis=axis)
        kernel = w.shape[2:]
        out = [(n - k) // stride + 1 for n, k in zip(x.shape[2:], kernel, strict=True)]
        letters = "hw"[:spatial]
        spec = f"oc,nc{letters}->no{letters}"
        total = None
        for offset in itertools.product(*(range(k) for k in kernel)):
            window = (slice(None), slice(None)) + tuple(
                slice(o, o + stride * (m - 1) + 1, stride)
                for o, m in zip(offset, out, strict=True))
            term = xp.einsum(spec, w[(slice(None), slice(None), *offset)], x[window])
            total = term if total is None else total + term
        return total

    def concat(self, xs, axis: int):
        return self.xp.concatenate(xs, axis=axis)

    def mean(self, x, axes):
        return self.xp.mean(x, axis=axes, keepdims=True) if axes else x

    def reshape(self, x, shape):
        return self.xp.reshape(x, shape)

    def zeros(self, shape, like):
        return np.zeros(shape, dtype=like.dtype)

    def eye(self, n: int, like):
        return np.eye(n, dtype=like.dtype)

    def time_column(self, t, n: int, like):
        t = self.xp.reshape(t, (-1, 1)) if np.ndim(t) else t
        return self.xp.zeros((n, 1), dtype=like.dtype) + t

    def sqrt(self, x):
        return self.xp.sqrt(x)

    def sigmoid(self, x):
        return self._activations["logistic"](x)

    def activation(self, name: str):
        return self._activations[name]

    def slope(self, name: str):
        return self._slopes[name]


LAYER_OPS = LayerOps(anp)  # training (autograd)
INFERENCE_OPS = LayerOps(np)  # plain NumPy
