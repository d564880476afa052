"""The paper's constant-memory claim on its own architecture (issue #19): the training
memory of the convolutional ODE-Net (``ODEClassifier(field="conv")``) stays flat as the
depth ``t1`` grows with the adjoint, and grows with backpropagation where backpropagation
stores every step (the reference engine; jax's backprop checkpoints instead). Tiny
sizes; the benchmark at 28 x 28 on every engine is
``tests/benchmarks/bench_conv_memory.py`` (``docs/benchmarks.md``)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import odeplug
from odeplug.backend import get_backend

# Fixed Euler steps of 0.25 (one evaluation each, the cheapest): t1 = 1 is 4 steps,
# t1 = 4 is 16.
STEP = dict(solver="euler", step_size=0.25)


def _setup(engine: str, shape: tuple[int, ...], width: int, t1: float, adjoint: bool,
           rows: int, **settings):
    clf = odeplug.ODEClassifier(backend=engine, field="conv", input_shape=shape,
                                latent_dim=width, hidden_layer_sizes=(width,), t1=t1,
                                adjoint=adjoint, random_state=0, **STEP, **settings)
    backend = get_backend(engine)
    n = int(np.prod(shape))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, n)).astype(backend.default_dtype)
    y = np.arange(rows) % 10
    spec = clf._spec_of(n, 10, backend.default_dtype)
    program = backend.make_program(spec)
    return program, spec, clf._hyper(), X, y


def _reference_peak(t1: float, adjoint: bool) -> float:
    """tracemalloc's peak (bytes) of one training step on 28 x 28 images (the paper's
    stem: two stride-2 convolutions to 7 x 7), width 4, 2 rows."""
    program, spec, hyper, X, y = _setup("reference", (1, 28, 28), 4, t1, adjoint, 2)
    params = spec.init_params(0)
    program.step(program.init(params), (X[:1], y[:1]), hyper)  # lazy imports, caches
    state = program.init(params)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _, metrics = program.step(state, (X, y), hyper)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert metrics["nfe_forward"] == 4 * t1  # the steps grow with t1
    return peak - before


def test_reference_adjoint_memory_is_flat_in_t1_and_backprop_grows():
    adjoint = _reference_peak(4.0, True) / _reference_peak(1.0, True)
    backprop = _reference_peak(4.0, False) / _reference_peak(1.0, False)
    assert adjoint < 1.3, adjoint
    assert backprop > 2.0, backprop


def _jax_temp_bytes(t1: float, adjoint: bool) -> int:
    """XLA's temporary buffers of the compiled training step (``memory_analysis``) with
    ``max_num_steps`` the grid's steps (``4 t1``)."""
    from odeplug_backends.jax import odenet
    from odeplug_backends.jax.programs import solve_key, solve_values, traced_values

    steps = int(round(t1 / STEP["step_size"]))
    program, spec, hyper, X, y = _setup("jax", (1, 6, 6), 4, t1, adjoint, 2,
                                        max_num_steps=steps)
    state = program.init(spec.init_params(0))
    compiled = odenet._train_step(spec, solve_key(hyper.solve)).lower(
        state["params"], state["opt"], X, y.astype(np.int32),
        traced_values(hyper, np.float32), solve_values(hyper.solve, np.float32)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_jax_adjoint_memory_is_flat_in_the_steps():
    """One compiled jax step serves every ``t1`` (a traced input), so what could grow
    with the depth is set by the step budget: compiled for the grid's steps of t1 = 1
    (4) and of t1 = 4 (16), the adjoint's buffers stay flat. (Backprop on jax does not
    store every step either: diffrax's ``RecursiveCheckpointAdjoint`` keeps about
    ``sqrt(2 max_num_steps)`` checkpoints; measured by the benchmark. Each compilation
    of the conv step costs tens of seconds, hence two.)"""
    at_1, at_4 = _jax_temp_bytes(1.0, True), _jax_temp_bytes(4.0, True)
    assert at_4 < 1.3 * at_1, (at_1, at_4)
