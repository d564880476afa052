"""The estimators' architecture presets, as layers of :mod:`odeplug.layers`.

``field="conv"`` of ``ODEClassifier`` is the ODE-Net of Chen et al. (2018, Sec. 7, and
torchdiffeq's ``odenet_mnist.py``): a convolutional stem that downsamples large
inputs, an ODE block whose field is ``GroupNorm, act, ConcatTime(Conv 3), GroupNorm,
act, ConcatTime(Conv 3), GroupNorm``, then ``GroupNorm, act``, global average pooling
and a linear head.

``field="conv"`` of ``CNFDensity`` is FFJORD's image field (Grathwohl et al. 2019, and
its ``ODEnet`` of ``concatsquash`` convolutions): 3-wide convolutions with padding,
each time-conditioned by concat-squash, ``field_activation`` between them, no
normalisation.
"""

from __future__ import annotations

import math

from .layers import (
    Activation,
    ConcatSquash,
    ConcatTime,
    Conv,
    Dense,
    GlobalAvgPool,
    GroupNorm,
    Layer,
    Sequential,
)

__all__ = ["conv_cnf_field", "conv_odenet", "group_count", "image_odenet_ends"]

# The stem halves the input with stride-2 convolutions while its largest spatial axis
# exceeds this: MNIST's 28 x 28 gets the paper's two, 8 x 8 digits none.
DOWNSAMPLE_ABOVE = 12


def group_count(channels: int) -> int:
    """GroupNorm's groups for ``channels``: 32 as the paper's where they divide the
    channels, else the largest divisor of both."""
    return math.gcd(32, channels)


def _kernel(size: int, n_spatial: int) -> tuple[int, ...]:
    return (size,) * n_spatial


def image_odenet_ends(input_shape: tuple[int, ...], width: int, augment_dim: int,
                      n_outputs: int, activation: str) -> tuple[Layer, Layer]:
    """``(embed, head)`` of a convolutional ODE-Net on rows of ``input_shape`` ``(C, L)``
    or ``(C, H, W)``: a stem to ``width`` channels (3-wide convolution, then stride-2
    convolutions while the input is large) and a head ``GroupNorm, activation,
    GlobalAvgPool, Dense(n_outputs)`` on the state's ``width + augment_dim``
    channels."""
    n_spatial = len(input_shape) - 1
    layers: list[Layer] = [Conv(width, _kernel(3, n_spatial), padding=1)]
    spatial = input_shape[1:]
    while max(spatial) > DOWNSAMPLE_ABOVE and min(spatial) >= 4:
        layers += [GroupNorm(group_count(width)), Activation(activation),
                   Conv(width, _kernel(4, n_spatial), stride=2, padding=1)]
        spatial = tuple(n // 2 for n in spatial)
    channels = width + augment_dim
    head = Sequential([GroupNorm(group_count(channels)), Activation(activation),
                       GlobalAvgPool(), Dense(n_outputs)])
    return Sequential(layers), head


def conv_odenet(input_shape: tuple[int, ...], width: int, hidden: tuple[int, ...],
                augment_dim: int, n_outputs: int, activation: str,
                field_activation: str) -> tuple[Layer, Layer, Layer]:
    """``(embed, field, head)`` of the convolutional ODE-Net: the field has a 3-wide
    convolution with the time channel per width in ``hidden`` and one back to the
    state's channels, each after ``GroupNorm, field_activation``, and a last
    GroupNorm (the paper's block for ``hidden == (width,)``)."""
    if len(input_shape) not in (2, 3):
        raise ValueError(f'field="conv" needs input_shape=(C, L) or (C, H, W), got '
                         f"{input_shape}")
    embed, head = image_odenet_ends(input_shape, width, augment_dim, n_outputs, activation)
    n_spatial = len(input_shape) - 1
    channels = width + augment_dim
    field: list[Layer] = []
    current = channels
    for out in (*hidden, channels):
        field += [GroupNorm(group_count(current)), Activation(field_activation),
                  ConcatTime(Conv(out, _kernel(3, n_spatial), padding=1))]
        current = out
    field.append(GroupNorm(group_count(channels)))
    return embed, Sequential(field), head


def conv_cnf_field(input_shape: tuple[int, ...], hidden: tuple[int, ...],
                   activation: str) -> Layer:
    """The convolutional field of a CNF on rows of ``input_shape`` ``(C, L)`` or ``(C,
    H, W)``: ``ConcatSquash(Conv 3)`` to each width of ``hidden``, each followed by
    ``activation``, and one back to the ``C`` channels (FFJORD's ``ODEnet``).

    No normalisation, as FFJORD's flows: a GroupNorm would couple every position of a
    group in the field's Jacobian and add its tangent work to every evaluation of the
    trace, and the flow's states start standardised. Padding keeps the spatial shape,
    as a field must give the state's own shape.
    """
    if len(input_shape) not in (2, 3):
        raise ValueError(f'field="conv" needs input_shape=(C, L) or (C, H, W), got '
                         f"{input_shape}")
    kernel = _kernel(3, len(input_shape) - 1)
    layers: list[Layer] = []
    for width in hidden:
        layers += [ConcatSquash(Conv(width, kernel, padding=1)), Activation(activation)]
    layers.append(ConcatSquash(Conv(input_shape[0], kernel, padding=1)))
    return Sequential(layers)
