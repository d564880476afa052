"""Layers of odeplug's model families in PyTorch, with the canonical parameter names.

The same functions as ``odeplug.reference.nn``: parameters are a ``dict`` of tensors keyed
by the canonical names of ``odeplug._specs`` (``{name}.weight`` of shape ``(fan_in,
fan_out)``, applied as ``x @ W + b``), so that the dict of a program is the dict of the
reference engine, tensor for array.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

__all__ = ["ACTIVATIONS", "LAYER_OPS", "SLOPES", "LayerOps", "dense", "gru_cell", "log_softmax",
           "mlp", "mlp_field", "mlp_field_jvp"]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# The reference writes softplus as logaddexp(0, x) and the logistic as 0.5 (tanh(x/2) + 1):
# the same functions; torch's kernels differ from those only by rounding (softplus is
# linear above 20, where log1p(exp(-x)) is below float32's resolution of x).
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "softplus": F.softplus,
    "logistic": torch.sigmoid,
    "identity": _identity,
}


# Derivatives act'(x) as functions of (x, act(x)), as the reference engine's.
SLOPES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tanh": lambda x, y: 1.0 - y * y,
    "relu": lambda x, y: (x > 0).to(x.dtype),
    "softplus": lambda x, y: torch.sigmoid(x),
    "logistic": lambda x, y: y * (1.0 - y),
    "identity": lambda x, y: torch.ones_like(x),
}


def dense(params: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    """``x @ W + b`` with the canonical ``{name}.weight`` and ``{name}.bias``."""
    weight, bias = params[f"{name}.weight"], params[f"{name}.bias"]
    if x.dim() == 2:
        return torch.addmm(bias, x, weight)  # one kernel for the product and the bias
    return x @ weight + bias


def mlp_field(prefix: str, n_layers: int, activation: str) -> Callable:
    """Vector field ``f(t, z, params)``: an MLP of ``[z, t]``, linear last layer.

    For :func:`odeplug_backends.torch.solve.odeint`, with ``params`` (its ``args``) the
    dict of the field's tensors, so that the adjoint method reaches them. ``z`` is
    ``(batch, state_dim)``; ``t`` a 0-d tensor, appended to every row as a last column
    of the input (only of the first layer).
    """
    act = ACTIVATIONS[activation]
    names = [(f"{prefix}.{i}.weight", f"{prefix}.{i}.bias") for i in range(n_layers)]
    last = n_layers - 1

    def field(t: torch.Tensor, z: torch.Tensor, params: dict) -> torch.Tensor:
        # ``expand`` keeps ``t`` on the device: no host synchronisation per evaluation.
        column = t.to(z.dtype).expand(z.shape[0], 1)
        h = torch.cat([z, column], dim=1)
        for i, (weight, bias) in enumerate(names):
            h = torch.addmm(params[bias], h, params[weight])
            if i < last:
                h = act(h)
        return h

    return field


def mlp_field_jvp(prefix: str, n_layers: int, activation: str) -> Callable:
    """The field of :func:`mlp_field` with its Jacobian-vector products, by forward mode
    (``odeplug.reference.nn.mlp_field_jvp``): ``field(t, z, tangents, params) -> (f,
    jvp)``, ``tangents`` ``(m, k, d)`` or None for the whole Jacobian (``jvp[:, i]`` is
    ``df/dz_i``)."""
    act, slope = ACTIVATIONS[activation], SLOPES[activation]
    last = n_layers - 1

    def field(t: torch.Tensor, z: torch.Tensor, tangents, params: dict):
        m, d = z.shape
        column = t.to(z.dtype).expand(m, 1)
        weight = params[f"{prefix}.0.weight"]
        h = torch.addmm(params[f"{prefix}.0.bias"], torch.cat([z, column], dim=1), weight)
        if tangents is None:
            jvp = weight[:d].expand(m, d, weight.shape[1])
        else:
            jvp = tangents @ weight[:d]
        for i in range(1, last + 1):
            a = act(h)
            jvp = jvp * slope(h, a).unsqueeze(1)
            weight = params[f"{prefix}.{i}.weight"]
            h = torch.addmm(params[f"{prefix}.{i}.bias"], a, weight)
            jvp = jvp @ weight
        return h, jvp

    return field


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=1)


def mlp(params: dict, prefix: str, n_layers: int, activation: str, x: torch.Tensor
        ) -> torch.Tensor:
    """An MLP ``{prefix}.{i}`` of ``x`` (any leading shape), linear last layer."""
    act = ACTIVATIONS[activation]
    for i in range(n_layers):
        x = dense(params, f"{prefix}.{i}", x)
        if i < n_layers - 1:
            x = act(x)
    return x


def gru_cell(params: dict, prefix: str, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU update of ``h`` by input ``x`` (``torch.nn.GRUCell``'s arithmetic, with
    odeplug's ``(fan_in, 3 * hidden)`` weights; gates reset, update, new)."""
    gi = x @ params[f"{prefix}.weight_ih"] + params[f"{prefix}.bias_ih"]
    gh = h @ params[f"{prefix}.weight_hh"] + params[f"{prefix}.bias_hh"]
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


class LayerOps:
    """The array operations of :mod:`odeplug.layers` on torch tensors (convolutions by
    ``torch.nn.functional``)."""

    _convs = {1: F.conv1d, 2: F.conv2d}

    @staticmethod
    def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w

    @staticmethod
    def affine(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.addmm(b, x, w) if x.dim() == 2 else x @ w + b  # one kernel

    def conv(self, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int
             ) -> torch.Tensor:
        return self._convs[w.dim() - 2](x, w, stride=stride, padding=padding)

    @staticmethod
    def concat(xs, axis: int) -> torch.Tensor:
        return torch.cat(xs, dim=axis)

    @staticmethod
    def mean(x: torch.Tensor, axes) -> torch.Tensor:
        return x.mean(dim=axes, keepdim=True) if axes else x

    @staticmethod
    def reshape(x: torch.Tensor, shape) -> torch.Tensor:
        return x.reshape(shape)

    @staticmethod
    def zeros(shape, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(shape)

    @staticmethod
    def eye(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.eye(n, dtype=like.dtype, device=like.device)

    @staticmethod
    def time_column(t, n: int, like: torch.Tensor) -> torch.Tensor:
        # ``expand`` keeps ``t`` on the device: no host synchronisation per evaluation.
        t = (t.to(like.dtype) if isinstance(t, torch.Tensor)
             else torch.as_tensor(t, dtype=like.dtype, device=like.device))
        return t.reshape(-1, 1).expand(n, 1) if t.dim() else t.expand(n, 1)

    @staticmethod
    def sqrt(x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    @staticmethod
    def sigmoid(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)

    @staticmethod
    def activation(name: str):
        return ACTIVATIONS[name]

    @staticmethod
    def slope(name: str):
        return SLOPES[name]


LAYER_OPS = LayerOps()
