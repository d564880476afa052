"""The shared step-size controller (``odeplug._stepping``) on every namespace it runs
on: Python floats (the reference and torch steppers), NumPy (the row solver) and
jax.numpy (the JAX engine)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from odeplug._solver_options import make_solve_config
from odeplug._stepping import SCALARS, step_factor


def _namespaces():
    spaces = [pytest.param(SCALARS, id="scalars"), pytest.param(np, id="numpy")]
    try:
        import jax.numpy as jnp
    except ImportError:  # pragma: no cover - jax is an optional engine
        return spaces
    return spaces + [pytest.param(jnp, id="jax")]


@pytest.mark.parametrize("xp", _namespaces())
def test_exactly_accepted_step_leaves_a_memory_of_one(xp):
    """diffrax's guard: an error ratio of exactly 0 is accepted with the largest growth,
    and the PI memory it leaves is 1, not 1e30 (which, through ``pcoeff``, would crush
    the factor of the next step)."""
    config = make_solve_config(options={"pcoeff": 0.3, "icoeff": 0.3})
    accept, factor, memory = step_factor(xp, 0.0, 1.0, 5, config)
    assert bool(accept) and float(factor) == config.factormax
    assert float(memory) == 1.0
    # The next step, of ratio 0.01, grows as after any ordinary step of memory 1 (with a
    # memory of 1e30 its factor would be 0.025, clipped to 1).
    _, next_factor, _ = step_factor(xp, 0.01, memory, 5, config)
    expected = config.safety * 100.0 ** (0.6 / 5)
    assert math.isclose(float(next_factor), expected, rel_tol=1e-5)


@pytest.mark.parametrize("xp", _namespaces())
def test_memory_of_ordinary_and_rejected_steps(xp):
    config = make_solve_config(options={"pcoeff": 0.3, "icoeff": 0.3})
    _, _, memory = step_factor(xp, 0.25, 1.0, 5, config)
    assert math.isclose(float(memory), 4.0, rel_tol=1e-6)
    accept, _, memory = step_factor(xp, 3.0, 4.0, 5, config)
    assert not bool(accept) and float(memory) == 4.0
    accept, factor, memory = step_factor(xp, math.nan, 4.0, 5, config)
    assert not bool(accept) and float(memory) == 4.0
    assert math.isclose(float(factor), config.factormin, rel_tol=1e-6)
