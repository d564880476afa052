"""Argument layout of the JAX engine's solves: what is static, what is traced, what is
differentiated.

* :class:`SolveStatic` / :class:`SolveValues` (:func:`split_config`): an
  ``ODESolveConfig`` cut into what changes the computation (static under ``jit``: the
  key of a compile cache) and what only changes values (traced), so that a jitted
  caller compiles once per architecture, whatever the tolerances;
* :class:`Layout`: how a pytree of ``args`` is flattened into differentiated
  parameters, constants (``odeplug.Constant`` leaves and non-float arrays: no gradient,
  no adjoint channel) and static Python values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from odeplug._constant import Constant
from odeplug._solver_options import ODESolveConfig

__all__ = [
    "CONSTANT",
    "PARAM",
    "STATIC",
    "Layout",
    "SolveStatic",
    "SolveValues",
    "as_arrays",
    "split_config",
    "stop_gradient_constants",
]

# --------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SolveStatic:
    """What of an ``ODESolveConfig`` changes the computation: static under ``jit``.

    Hashable: the key of a compile cache (a program's compiled step, say, is one per
    ``SolveStatic`` and architecture, whatever the tolerances). Built by
    :func:`split_config`; no field has a default, so the controller's constants come
    from ``ODESolveConfig`` alone.

    Attributes
    ----------
    solver : str
    adaptive : bool
        Adaptive steps (else a fixed grid of ``SolveValues.step_size``).
    adjoint : bool
        Gradients by odeplug's adjoint (else backpropagation through the solver).
    seminorm : bool
        The adjoint's backward solves leave the parameter channels out of their error.
    max_num_steps : int
        Step budget of each solve (forward, and each backward interval). Static because
        diffrax's ``max_steps`` is: it sizes the buffers of the loop.
    has_first_step : bool
        The first step is ``SolveValues.first_step`` rather than Hairer's.
    safety, factormin, factormax, pcoeff, icoeff : float
        The PI controller's constants (``ODESolveConfig``).
    """

    solver: str
    adaptive: bool
    adjoint: bool
    seminorm: bool
    max_num_steps: int
    has_first_step: bool
    safety: float
    factormin: float
    factormax: float
    pcoeff: float
    icoeff: float


class SolveValues(NamedTuple):
    """What of an ``ODESolveConfig`` only changes values: traced under ``jit``.

    Python floats or JAX scalars; cast to the state's dtype. An entry that the static
    part does not use (``step_size`` of an adaptive solve, ``first_step`` without
    ``has_first_step``) is NaN and ignored.
    """

    rtol: Any
    atol: Any
    adjoint_rtol: Any
    adjoint_atol: Any
    step_size: Any
    first_step: Any


def split_config(config: ODESolveConfig) -> tuple[SolveStatic, SolveValues]:
    """``(static, values)`` of a configuration; see :class:`SolveStatic`."""
    strategy = config.adjoint
    adjoint_rtol = config.rtol if strategy is None or strategy.rtol is None else strategy.rtol
    adjoint_atol = config.atol if strategy is None or strategy.atol is None else strategy.atol
    static = SolveStatic(
        solver=config.solver, adaptive=config.adaptive, adjoint=strategy is not None,
        seminorm=strategy is not None and strategy.seminorm,
        max_num_steps=config.max_num_steps, has_first_step=config.first_step is not None,
        safety=config.safety, factormin=config.factormin, factormax=config.factormax,
        pcoeff=config.pcoeff, icoeff=config.icoeff)
    nan = math.nan
    values = SolveValues(
        rtol=config.rtol, atol=config.atol, adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        step_size=nan if config.step_size is None else config.step_size,
        first_step=nan if config.first_step is None else config.first_step)
    return static, values


def as_arrays(values: SolveValues, dtype) -> SolveValues:
    """The values as JAX scalars of ``dtype`` (the state's)."""
    return SolveValues(*(jnp.asarray(v, dtype) for v in values))


# -------------------------------------------------------------------------- the args


PARAM, CONSTANT, STATIC = 0, 1, 2


@dataclass(frozen=True)
class Layout:
    """How a pytree of ``args`` was flattened (hashable: static under jit).

    Leaves in order, the value of each ``Constant`` flattened in its place. ``kinds``:
    ``PARAM`` (an inexact array outside a ``Constant``: differentiated), ``CONSTANT``
    (another array: no gradient, no adjoint channel) or ``STATIC`` (not an array: a
    Python value, part of the function).
    """

    treedef: Any
    # Per node of treedef: (the Constant value's treedef,) or () for a plain leaf (not
    # None: a PyTreeDef cannot be compared with None, and jit compares layouts).
    inner: tuple[tuple, ...]
    kinds: tuple[int, ...]

    @classmethod
    def of(cls, args: Any) -> tuple[Layout, list]:
        nodes, treedef = jax.tree.flatten(args, is_leaf=lambda x: isinstance(x, Constant))
        leaves, inner, kinds = [], [], []
        for node in nodes:
            if isinstance(node, Constant):
                values, value_def = jax.tree.flatten(node.value)
                leaves += values
                inner.append((value_def,))
                kinds += [CONSTANT if eqx.is_array(v) else STATIC for v in values]
            else:
                leaves.append(node)
                inner.append(())
                kinds.append(PARAM if eqx.is_inexact_array(node)
                             else CONSTANT if eqx.is_array(node) else STATIC)
        return cls(treedef, tuple(inner), tuple(kinds)), leaves

    def unflatten(self, leaves: Sequence) -> Any:
        """The args the field receives: each ``Constant`` replaced by its value."""
        nodes, position = [], 0
        for constant in self.inner:
            if not constant:
                nodes.append(leaves[position])
                position += 1
            else:
                value_def, = constant
                size = value_def.num_leaves
                nodes.append(value_def.unflatten(leaves[position : position + size]))
                position += size
        return self.treedef.unflatten(nodes)

    def split(self, leaves: Sequence) -> tuple[list, list, list]:
        """``(params, constants, statics)`` of the leaves, each in order."""
        return tuple([x for x, k in zip(leaves, self.kinds, strict=True) if k == kind]
                     for kind in (PARAM, CONSTANT, STATIC))

    def merge(self, params: Sequence, constants: Sequence, statics: Sequence) -> list:
        sources = (iter(params), iter(constants), iter(statics))
        return [next(sources[kind]) for kind in self.kinds]


def stop_gradient_constants(layout: Layout, leaves: list) -> list:
    """The leaves, ``CONSTANT`` ones cut from differentiation."""
    return [jax.lax.stop_gradient(x) if kind == CONSTANT else x
            for x, kind in zip(leaves, layout.kinds, strict=True)]
