"""Inputs of ``odeint`` that are not differentiated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Constant"]


@dataclass(frozen=True, eq=False)
class Constant:
    """A leaf of ``odeint``'s ``args`` that gradients do not flow to.

    Wrap inputs of the vector field that are data rather than parameters (Hutchinson
    noise, masks, observation times): the field receives ``value`` itself, ``odeint``
    takes no gradient for it, and the adjoint method integrates no adjoint channel for it
    (an unwrapped array of ``args`` costs as many channels as it has entries in the
    backward solve).

    Examples
    --------
    >>> import numpy as np
    >>> import odeplug
    >>> def field(t, y, args):
    ...     return args["w"] * y + args["noise"]
    >>> args = {"w": np.array(-1.0), "noise": odeplug.Constant(np.zeros(2))}
    >>> odeplug.odeint(field, np.ones(2), np.array([0.0, 1.0]), args).shape
    (2, 2)
    """

    value: Any
