"""torchdiffeq's ``tests/api_tests.py`` (``TestCollectionState``), through
``odeplug.odeint`` on every engine: a tuple of arrays as the state.

Not ported: the ``scipy_solver``, ``adaptive_heun`` and ``fehlberg2`` methods (odeplug
has none of them).
"""

from __future__ import annotations

import numpy as np
import pytest

import odeplug
from tests.torchdiffeq_suite._checks import gradcheck
from tests.torchdiffeq_suite.problems import ADAPTIVE_METHODS, DTYPES, construct_problem

pytestmark = pytest.mark.usefixtures("jax_x64")

EPS = {np.float32: 1e-4, np.float64: 1e-12}


def _tuple_field(f):
    return lambda t, y, args: (f(t, y[0], args), f(t, y[1], args))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_collection_state_forward(engine, method, dtype):
    """Upstream: ``api_tests.py::TestCollectionState::test_forward``."""
    eps = EPS[dtype]
    p = construct_problem(engine, dtype=dtype)
    tuple_y = odeplug.odeint(_tuple_field(p.func), (p.y0, p.y0), p.t, p.args, solver=method)
    assert isinstance(tuple_y, tuple) and len(tuple_y) == 2
    for y in tuple_y:
        # The engine's own arrays, as for a single array (not NumPy's for torch or JAX).
        assert type(y).__module__.split(".")[0] == type(p.y0).__module__.split(".")[0]
        assert np.abs(p.sol - engine.numpy(y)).max() < eps


@pytest.mark.parametrize("i", [0, 1])
@pytest.mark.parametrize("method", ADAPTIVE_METHODS)
def test_collection_state_gradient(engine, method, i):
    """Upstream: ``api_tests.py::TestCollectionState::test_gradient``: gradcheck of each
    component w.r.t. ``y0`` and the times."""
    p = construct_problem(engine)
    tuple_f = _tuple_field(p.func)

    def func(y0, t_points):
        return odeplug.odeint(tuple_f, (y0, y0), t_points, p.args, solver=method)[i]

    gradcheck(engine, func, (engine.numpy(p.y0), engine.numpy(p.t)))
