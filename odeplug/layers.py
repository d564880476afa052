"""A layer vocabulary that every engine realises: ``odeplug.layers``.

A layer is a small frozen, hashable dataclass that *describes* a computation: its
hyperparameters are its fields, its canonical parameters follow from its input shape
(:meth:`Layer.param_table`: names, shapes, one initialiser per parameter), and so does
its output shape (:meth:`Layer.output_shape`). Being frozen and hashable, layers are
valid scikit-learn parameter values (``clone``, ``get_params``, grids) and JAX compiles
once per architecture.

The numerics are written once, here, over an engine's array operations
(:class:`Ops`): each engine's ``nn.py`` gives its ``Ops`` (reference: autograd's NumPy,
convolutions by shifted slices; torch: ``torch.nn.functional``; jax:
``lax.conv_general_dilated``, on CPUs the reference's slices), so the same canonical
parameters give the same outputs on every engine. Each layer also pushes tangents
forward (:meth:`Layer.jvp`), what a CNF's trace needs, without a forward-mode autodiff
of its own on the reference engine.

Shapes exclude the batch: a layer maps inputs of shape ``(n, *in_shape)`` to ``(n,
*out_shape)``; channels come first (``(C,)``, ``(C, L)`` or ``(C, H, W)``), as torch's.
Tangents carry one more axis, ``(n, k, *in_shape)``: ``k`` directions per row.

Canonical layouts (``{prefix}`` is the layer's place, ``field.0`` say):

- :class:`Dense`: ``{prefix}.weight`` ``(fan_in, features)`` applied as ``x @ W + b``
  (scikit-learn's ``coefs_``), ``{prefix}.bias`` ``(features,)``.
- :class:`Conv`: ``{prefix}.weight`` ``(features, in_channels, *kernel_size)`` (torch's
  layout), ``{prefix}.bias`` ``(features,)``.
- :class:`GroupNorm`: ``{prefix}.weight`` and ``{prefix}.bias``, ``(channels,)``.
- :class:`ConcatTime`: the wrapped layer's, with one more input channel (the last).
- :class:`ConcatSquash`: the wrapped layer's, plus ``{prefix}.gate_weight``,
  ``{prefix}.gate_bias`` and ``{prefix}.time_weight``, ``(features,)``.
- :class:`Sequential`: layer ``i``'s under ``{prefix}.{i}``.

Examples
--------
The convolutional field of the paper's ODE-Net on 16 channels of 7 x 7, as a
parameter of :class:`odeplug.ODEClassifier`:

>>> from odeplug import layers as L
>>> field = L.Sequential([
...     L.GroupNorm(16), L.Activation("relu"),
...     L.ConcatTime(L.Conv(16, kernel_size=(3, 3), padding=1)),
...     L.GroupNorm(16), L.Activation("relu"),
...     L.ConcatTime(L.Conv(16, kernel_size=(3, 3), padding=1)), L.GroupNorm(16)])
>>> field.output_shape((16, 7, 7))
(16, 7, 7)
>>> {k: p.shape for k, p in field.param_table((16, 7, 7), "field").items()
...  if k.startswith("field.2")}
{'field.2.weight': (16, 17, 3, 3), 'field.2.bias': (16,)}
>>> hash(field) == hash(L.Sequential(list(field.layers)))  # a valid grid value
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from ._specs import ACTIVATIONS, Fill, GlorotUniform, Param

__all__ = [
    "Activation",
    "ConcatSquash",
    "ConcatTime",
    "Conv",
    "Dense",
    "Flatten",
    "GlobalAvgPool",
    "GroupNorm",
    "Layer",
    "Ops",
    "Sequential",
    "as_field",
    "as_trace_field",
]

Shape = tuple[int, ...]


class Ops(Protocol):
    """The array operations an engine gives the layers (its ``nn.py``'s ``OPS``).

    Arrays are the engine's (autograd's NumPy, torch tensors, JAX arrays); every
    operation is differentiable by the engine's reverse mode.
    """

    def matmul(self, x, w): ...
    def affine(self, x, w, b): ...
    def conv(self, x, w, stride: int, padding: int): ...
    def concat(self, xs, axis: int): ...
    def mean(self, x, axes: tuple[int, ...]): ...
    def reshape(self, x, shape: tuple[int, ...]): ...
    def zeros(self, shape: tuple[int, ...], like): ...
    def eye(self, n: int, like): ...
    def time_column(self, t, n: int, like): ...
    def sqrt(self, x): ...
    def sigmoid(self, x): ...
    def activation(self, name: str): ...
    def slope(self, name: str): ...


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _check_activation(name) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _channel(b, ndim: int, ops: Ops):
    """A per-channel vector ``(C,)`` shaped to broadcast over ``(..., C, *spatial)``
    with ``ndim`` spatial axes."""
    return ops.reshape(b, (-1,) + (1,) * ndim)


def _tangent_map(fn, dx, ops: Ops):
    """Apply a batch-wise linear map ``fn`` to tangents ``(n, k, *shape)``."""
    n, k = dx.shape[:2]
    out = fn(ops.reshape(dx, (n * k, *dx.shape[2:])))
    return ops.reshape(out, (n, k, *out.shape[1:]))


class Layer:
    """Base of the layers: a description, realised by any engine's :class:`Ops`.

    Subclasses define :meth:`output_shape`, :meth:`apply` and :meth:`jvp`, and
    :meth:`param_table` if they hold parameters.
    """

    def param_table(self, in_shape: Shape, prefix: str) -> dict[str, Param]:
        """Canonical parameters of the layer at ``prefix`` for inputs of ``in_shape``."""
        return {}

    def output_shape(self, in_shape: Shape) -> Shape:
        """Shape of an output row for an input row of ``in_shape``."""
        return in_shape

    def apply(self, ops: Ops, params: dict, prefix: str, t, x):
        """Outputs ``(n, *out_shape)`` at time ``t`` (a scalar or ``(n, 1)``)."""
        raise NotImplementedError

    def jvp(self, ops: Ops, params: dict, prefix: str, t, x, dx):
        """``(apply(x), J dx)``: outputs and tangents ``(n, k, *out_shape)`` pushed
        forward from tangents ``dx`` of shape ``(n, k, *in_shape)``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Activation(Layer):
    """An elementwise activation, one of ``odeplug._specs.ACTIVATIONS``."""

    name: str

    def __post_init__(self):
        _check_activation(self.name)

    def apply(self, ops, params, prefix, t, x):
        return ops.activation(self.name)(x)

    def jvp(self, ops, params, prefix, t, x, dx):
        y = ops.activation(self.name)(x)
        return y, dx * ops.slope(self.name)(x, y)[:, None]


def _activate(ops: Ops, name: str, h, dh):
    """``act(h)`` and its tangents from those of ``h`` (``dh`` None: none)."""
    y = ops.activation(name)(h)
    if dh is None or name == "identity":
        return y, dh
    return y, dh * ops.slope(name)(h, y)[:, None]


@dataclass(frozen=True)
class Dense(Layer):
    """``activation(x @ W + b)`` on rows of shape ``(fan_in,)``.

    Weights and biases both Glorot-uniform, ``U(-s, s)`` with ``s = sqrt(factor /
    (fan_in + features))``, as scikit-learn's MLP (``factor`` 2 for a logistic network,
    else 6).
    """

    features: int
    activation: str = "identity"
    factor: float = 6.0

    def __post_init__(self):
        _positive_int(self.features, "Dense.features")
        _check_activation(self.activation)

    def _fan_in(self, in_shape: Shape) -> int:
        if len(in_shape) != 1:
            raise ValueError(f"Dense takes rows of shape (features,), got {in_shape}: "
                             "put a Flatten or a GlobalAvgPool before it")
        return in_shape[0]

    def param_table(self, in_shape, prefix):
        fan_in = self._fan_in(in_shape)
        init = GlorotUniform(fan_in, self.features, self.factor)
        return {f"{prefix}.weight": Param((fan_in, self.features), init, penalized=True),
                f"{prefix}.bias": Param((self.features,), init)}

    def output_shape(self, in_shape):
        self._fan_in(in_shape)
        return (self.features,)

    def _pre(self, ops, params, prefix, x):
        return ops.affine(x, params[f"{prefix}.weight"], params[f"{prefix}.bias"])

    def apply(self, ops, params, prefix, t, x):
        return ops.activation(self.activation)(self._pre(ops, params, prefix, x))

    def jvp(self, ops, params, prefix, t, x, dx):
        h = self._pre(ops, params, prefix, x)
        return _activate(ops, self.activation, h, ops.matmul(dx, params[f"{prefix}.weight"]))


def _pair(value, n: int, what: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries for {n} spatial axes")
    return values


@dataclass(frozen=True)
class Conv(Layer):
    """A 1-D or 2-D convolution (as many spatial axes as ``kernel_size`` has entries),
    then ``activation``: rows ``(C, L)`` or ``(C, H, W)``.

    ``stride`` and ``padding`` (zeros on both sides) are the same along every spatial
    axis. Output length ``(L + 2 padding - kernel) // stride + 1`` per axis. Kernel
    ``(features, C, *kernel_size)``, Glorot-uniform over the receptive field (Keras'
    default); zero bias.
    """

    features: int
    kernel_size: tuple[int, ...] = (3, 3)
    stride: int = 1
    padding: int = 0
    activation: str = "identity"

    def __post_init__(self):
        _positive_int(self.features, "Conv.features")
        size = self.kernel_size
        size = (size,) if isinstance(size, int) else tuple(size)
        if len(size) not in (1, 2):
            raise ValueError(f"Conv is 1-D or 2-D: kernel_size {self.kernel_size!r}")
        for k in size:
            _positive_int(k, "Conv.kernel_size entries")
        object.__setattr__(self, "kernel_size", size)  # a tuple: hashable
        _positive_int(self.stride, "Conv.stride")
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) \
                or self.padding < 0:
            raise ValueError(f"Conv.padding must be an int >= 0, got {self.padding!r}")
        _check_activation(self.activation)

    def _check(self, in_shape: Shape) -> None:
        if len(in_shape) != len(self.kernel_size) + 1:
            raise ValueError(f"a {len(self.kernel_size)}-D Conv takes rows of shape "
                             f"(C, {', '.join('L' * len(self.kernel_size))}), got {in_shape}")

    def param_table(self, in_shape, prefix):
        self._check(in_shape)
        area = math.prod(self.kernel_size)
        init = GlorotUniform(in_shape[0] * area, self.features * area)
        return {f"{prefix}.weight": Param((self.features, in_shape[0], *self.kernel_size),
                                          init, penalized=True),
                f"{prefix}.bias": Param((self.features,), Fill(0.0))}

    def output_shape(self, in_shape):
        self._check(in_shape)
        spatial = tuple((n + 2 * self.padding - k) // self.stride + 1
                        for n, k in zip(in_shape[1:], self.kernel_size, strict=True))
        if min(spatial) < 1:
            raise ValueError(f"Conv of kernel {self.kernel_size} leaves nothing of rows "
                             f"of shape {in_shape}")
        return (self.features, *spatial)

    def _linear(self, ops, params, prefix, x):
        return ops.conv(x, params[f"{prefix}.weight"], self.stride, self.padding)

    def _pre(self, ops, params, prefix, x):
        bias = _channel(params[f"{prefix}.bias"], len(self.kernel_size), ops)
        return self._linear(ops, params, prefix, x) + bias

    def apply(self, ops, params, prefix, t, x):
        return ops.activation(self.activation)(self._pre(ops, params, prefix, x))

    def jvp(self, ops, params, prefix, t, x, dx):
        h = self._pre(ops, params, prefix, x)
        dh = _tangent_map(lambda v: self._linear(ops, params, prefix, v), dx, ops)
        return _activate(ops, self.activation, h, dh)


@dataclass(frozen=True)
class GroupNorm(Layer):
    """Group normalisation (Wu & He 2018): each row's channels in ``groups`` groups,
    each group normalised over its channels and positions, then a per-channel scale
    (``weight``, ones) and shift (``bias``, zeros). ``groups`` must divide the
    channels."""

    groups: int
    eps: float = 1e-5

    def __post_init__(self):
        _positive_int(self.groups, "GroupNorm.groups")

    def _check(self, in_shape):
        if in_shape[0] % self.groups:
            raise ValueError(f"GroupNorm of {self.groups} groups over {in_shape[0]} "
                             "channels: the groups must divide the channels")

    def param_table(self, in_shape, prefix):
        self._check(in_shape)
        channels = (in_shape[0],)
        return {f"{prefix}.weight": Param(channels, Fill(1.0)),
                f"{prefix}.bias": Param(channels, Fill(0.0))}

    def output_shape(self, in_shape):
        self._check(in_shape)
        return in_shape

    def _normalise(self, ops, x):
        """``(xhat, rstd)`` of rows ``(n, *shape)``, grouped as ``(n, G, rest)``."""
        n = x.shape[0]
        xg = ops.reshape(x, (n, self.groups, -1))
        centred = xg - ops.mean(xg, (2,))
        rstd = 1.0 / ops.sqrt(ops.mean(centred * centred, (2,)) + self.eps)
        return centred * rstd, rstd

    def _affine(self, ops, params, prefix, xhat, shape):
        ndim = len(shape) - 1
        return (xhat * _channel(params[f"{prefix}.weight"], ndim, ops)
                + _channel(params[f"{prefix}.bias"], ndim, ops))

    def apply(self, ops, params, prefix, t, x):
        xhat, _ = self._normalise(ops, x)
        return self._affine(ops, params, prefix, ops.reshape(xhat, x.shape), x.shape[1:])

    def jvp(self, ops, params, prefix, t, x, dx):
        n, k = dx.shape[:2]
        xhat, rstd = self._normalise(ops, x)
        y = self._affine(ops, params, prefix, ops.reshape(xhat, x.shape), x.shape[1:])
        # d xhat = (dx - mean dx - xhat mean(xhat dx)) / std, per group.
        dg = ops.reshape(dx, (n, k, self.groups, -1))
        dg = dg - ops.mean(dg, (3,))
        xh = xhat[:, None]
        dxhat = (dg - xh * ops.mean(xh * dg, (3,))) * rstd[:, None]
        weight = _channel(params[f"{prefix}.weight"], len(x.shape) - 2, ops)
        return y, ops.reshape(dxhat, dx.shape) * weight


@dataclass(frozen=True)
class ConcatTime(Layer):
    """The wrapped layer applied to its input with the time appended as one more
    channel, the last (a column for rows ``(C,)``, a constant plane for images): the
    ODE-Net's time conditioning of Chen et al. (2018)."""

    layer: Layer

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise TypeError(f"ConcatTime wraps a layer, got {self.layer!r}")

    @staticmethod
    def _widened(in_shape: Shape) -> Shape:
        return (in_shape[0] + 1, *in_shape[1:])

    def param_table(self, in_shape, prefix):
        return self.layer.param_table(self._widened(in_shape), prefix)

    def output_shape(self, in_shape):
        return self.layer.output_shape(self._widened(in_shape))

    @staticmethod
    def _with_time(ops, t, x):
        n = x.shape[0]
        column = ops.time_column(t, n, x)  # (n, 1)
        plane = ops.reshape(column, (n, 1) + (1,) * (x.ndim - 2))
        if x.ndim > 2:
            plane = plane + ops.zeros((n, 1, *x.shape[2:]), x)
        return ops.concat([x, plane], 1)

    def apply(self, ops, params, prefix, t, x):
        return self.layer.apply(ops, params, prefix, t, self._with_time(ops, t, x))

    def jvp(self, ops, params, prefix, t, x, dx):
        # The time channel does not move with the state: its tangent is zero.
        zero = ops.zeros((*dx.shape[:2], 1, *dx.shape[3:]), dx)
        return self.layer.jvp(ops, params, prefix, t, self._with_time(ops, t, x),
                              ops.concat([dx, zero], 2))


@dataclass(frozen=True)
class ConcatSquash(Layer):
    """FFJORD's concat-squash time conditioning (Grathwohl et al. 2019): ``layer(x) *
    sigmoid(t a + c) + t b`` with per-output-channel ``a`` (``gate_weight``), ``c``
    (``gate_bias``) and ``b`` (``time_weight``)."""

    layer: Layer

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise TypeError(f"ConcatSquash wraps a layer, got {self.layer!r}")

    def param_table(self, in_shape, prefix):
        table = self.layer.param_table(in_shape, prefix)
        features = self.layer.output_shape(in_shape)[0]
        init = GlorotUniform(1, features)
        table[f"{prefix}.gate_weight"] = Param((features,), init)
        table[f"{prefix}.gate_bias"] = Param((features,), Fill(0.0))
        table[f"{prefix}.time_weight"] = Param((features,), init)
        return table

    def output_shape(self, in_shape):
        return self.layer.output_shape(in_shape)

    def _gate_and_shift(self, ops, params, prefix, t, y):
        ndim = y.ndim - 2
        n = y.shape[0]
        column = ops.reshape(ops.time_column(t, n, y), (n, 1) + (1,) * ndim)
        gate = ops.sigmoid(column * _channel(params[f"{prefix}.gate_weight"], ndim, ops)
                           + _channel(params[f"{prefix}.gate_bias"], ndim, ops))
        return gate, column * _channel(params[f"{prefix}.time_weight"], ndim, ops)

    def apply(self, ops, params, prefix, t, x):
        y = self.layer.apply(ops, params, prefix, t, x)
        gate, shift = self._gate_and_shift(ops, params, prefix, t, y)
        return y * gate + shift

    def jvp(self, ops, params, prefix, t, x, dx):
        y, dy = self.layer.jvp(ops, params, prefix, t, x, dx)
        gate, shift = self._gate_and_shift(ops, params, prefix, t, y)
        return y * gate + shift, dy * gate[:, None]


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """The mean over the spatial axes: ``(C, *spatial) -> (C,)``."""

    def output_shape(self, in_shape):
        if len(in_shape) < 2:
            raise ValueError(f"GlobalAvgPool takes rows (C, L) or (C, H, W), got {in_shape}")
        return in_shape[:1]

    def apply(self, ops, params, prefix, t, x):
        return ops.reshape(ops.mean(x, tuple(range(2, x.ndim))), x.shape[:2])

    def jvp(self, ops, params, prefix, t, x, dx):
        pooled = ops.reshape(ops.mean(dx, tuple(range(3, dx.ndim))), dx.shape[:3])
        return self.apply(ops, params, prefix, t, x), pooled


@dataclass(frozen=True)
class Flatten(Layer):
    """Rows of any shape as vectors ``(prod(shape),)``, channels first (C order)."""

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def apply(self, ops, params, prefix, t, x):
        return ops.reshape(x, (x.shape[0], -1))

    def jvp(self, ops, params, prefix, t, x, dx):
        return self.apply(ops, params, prefix, t, x), ops.reshape(dx, (*dx.shape[:2], -1))


@dataclass(frozen=True)
class Sequential(Layer):
    """Layers applied in order; layer ``i``'s parameters under ``{prefix}.{i}``.

    ``Sequential([ConcatTime(Dense(64, "tanh")), Dense(2)])`` is an MLP field of a
    2-D state: parameters ``field.0.weight`` ``(3, 64)``, ``field.0.bias``,
    ``field.1.weight`` ``(64, 2)``, ``field.1.bias`` at prefix ``field``.
    """

    layers: tuple[Layer, ...]

    def __post_init__(self):
        layers = tuple(self.layers)
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes layers of odeplug.layers, got {layer!r}")
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        object.__setattr__(self, "layers", layers)  # a tuple: hashable

    def param_table(self, in_shape, prefix):
        table: dict[str, Param] = {}
        shape = in_shape
        for i, layer in enumerate(self.layers):
            table.update(layer.param_table(shape, f"{prefix}.{i}"))
            shape = layer.output_shape(shape)
        return table

    def output_shape(self, in_shape):
        for layer in self.layers:
            in_shape = layer.output_shape(in_shape)
        return in_shape

    def apply(self, ops, params, prefix, t, x):
        for i, layer in enumerate(self.layers):
            x = layer.apply(ops, params, f"{prefix}.{i}", t, x)
        return x

    def jvp(self, ops, params, prefix, t, x, dx):
        for i, layer in enumerate(self.layers):
            x, dx = layer.jvp(ops, params, f"{prefix}.{i}", t, x, dx)
        return x, dx


def as_field(layer: Layer, prefix: str, state_shape: Shape, ops: Ops, *,
             tangents: bool = False) -> Any:
    """A solver's vector field ``f(t, z, params)`` on flat states ``(n, prod(shape))``.

    The solvers integrate flat rows; the layers see them as ``(n, *state_shape)``.
    With ``tangents=True``: ``f(t, z, dz, params) -> (f, df)`` with ``dz`` of shape
    ``(n, k, prod(shape))`` (the form of the engines' ``mlp_field_jvp``).
    """
    flat = math.prod(state_shape)

    def field(t, z, params):
        x = ops.reshape(z, (z.shape[0], *state_shape))
        return ops.reshape(layer.apply(ops, params, prefix, t, x), (z.shape[0], flat))

    def field_jvp(t, z, dz, params):
        n, k = dz.shape[:2]
        x = ops.reshape(z, (n, *state_shape))
        y, dy = layer.jvp(ops, params, prefix, t, x, ops.reshape(dz, (n, k, *state_shape)))
        return ops.reshape(y, (n, flat)), ops.reshape(dy, (n, k, flat))

    return field_jvp if tangents else field


def as_trace_field(layer: Layer, prefix: str, state_shape: Shape, ops: Ops) -> Any:
    """``f(t, z, tangents, params) -> (f, jvp)`` on flat states, the form of the
    engines' ``mlp_field_jvp`` that a CNF's trace takes: with ``tangents`` of shape
    ``(n, k, d)``, ``jvp[:, j] = (df/dz) tangents[:, j]``; with ``tangents=None``, the
    whole Jacobian ``jvp[:, j] = df/dz_j`` (the identity's ``d`` tangents pushed through
    every layer: the exact trace, ``d`` times the tangent work of Hutchinson's one
    probe)."""
    field_jvp = as_field(layer, prefix, state_shape, ops, tangents=True)
    d = math.prod(state_shape)

    def field(t, z, tangents, params):
        if tangents is None:
            tangents = ops.eye(d, z)[None] + ops.zeros((z.shape[0], d, d), z)
        return field_jvp(t, z, tangents, params)

    return field
