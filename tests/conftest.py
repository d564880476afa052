"""Engines as test parameters: each test that takes ``engine`` runs on every installed
backend (reference, torch, jax), skipped with the reason where one is missing."""

from __future__ import annotations

import os
import sys

# Small problems: one thread each, and no XLA thread pool fighting pytest-xdist. XLA
# optimises as it does for users (its default level): the cross-engine tolerances are
# checked against the code users run, not against a cheaper compilation.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import odeplug  # noqa: E402

ENGINES = ("reference", "torch", "jax")


class Engine:
    """Converts test data to an engine's arrays and takes gradients there."""

    def __init__(self, name: str):
        self.name = name
        info = odeplug.available_backends().get(name)
        if info is None or not info.available:
            pytest.skip(f"backend {name!r} not installed")
        if name == "torch":
            import torch

            self.torch = torch
        elif name == "jax":
            import jax

            self.jax = jax

    def __repr__(self) -> str:
        return self.name

    def asarray(self, x, dtype=np.float64):
        x = np.array(x, dtype=dtype)  # a copy: torch refuses negative strides (t[::-1])
        if self.name == "torch":
            return self.torch.as_tensor(x)
        if self.name == "jax":
            return self.jax.numpy.asarray(x)
        return x

    def tree(self, tree, dtype=np.float64):
        return {key: self.asarray(value, dtype) for key, value in tree.items()}

    def numpy(self, x):
        if self.name == "torch":
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def grad(self, loss, *inputs):
        """Gradients of ``loss(*inputs)`` (a scalar) w.r.t. every input, as NumPy.

        Each input is a NumPy array or a dict of NumPy arrays."""
        if self.name == "reference":
            import autograd

            grads = autograd.grad(lambda xs: loss(*xs))(tuple(inputs))
            return [_to_numpy_tree(g, np.asarray) for g in grads]
        if self.name == "torch":
            torch = self.torch
            leaves = [_map_tree(x, lambda v: torch.tensor(v, requires_grad=True)) for x in inputs]
            loss(*leaves).backward()
            return [_to_numpy_tree(x, lambda v: v.grad.numpy()) for x in leaves]
        jnp = self.jax.numpy
        leaves = [_map_tree(x, jnp.asarray) for x in inputs]
        grads = self.jax.grad(lambda xs: loss(*xs))(tuple(leaves))
        return [_to_numpy_tree(g, np.asarray) for g in grads]


def _map_tree(x, fn):
    if isinstance(x, dict):
        return {k: fn(np.asarray(v, dtype=np.float64)) for k, v in x.items()}
    return fn(np.asarray(x, dtype=np.float64))


def _to_numpy_tree(x, fn):
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    return fn(x)


@pytest.fixture(params=ENGINES)
def engine(request) -> Engine:
    return Engine(request.param)


@pytest.fixture
def jax_x64():
    """JAX in float64 for one test (``pytestmark = pytest.mark.usefixtures("jax_x64")``
    for a module): for the tests that compare float64 numerics across engines. Users run
    JAX in float32, and so does every other test: x64 is never switched on globally."""
    try:
        import jax
    except ImportError:  # the test runs on the other engines
        yield
        return
    with jax.enable_x64(True):
        yield


@pytest.fixture(autouse=True)
def _fresh_config():
    """Each test starts from the default configuration."""
    with odeplug.config_context():
        yield


# Every program XLA compiles for the CPU lives in memory mappings of its own (about 640 for
# one small ODEClassifier fit and its predictions, measured), and JAX keeps every compiled
# program of a live function. A whole serial run compiles thousands: the one process
# reached Linux's vm.max_map_count (65,530) about half way through the suite, and XLA
# aborted the interpreter inside a compilation (seen with `python -m pytest -q`; under
# `-n 2` each worker holds half as many). Past this many mappings, the compiled programs
# are dropped after the test (`jax.clear_caches()`); later tests compile again, nothing
# else changes.
_MAX_MAPPINGS = 30_000


def _n_mappings() -> int:
    try:
        with open(f"/proc/{os.getpid()}/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux: no such limit to guard
        return 0


@pytest.fixture(autouse=True)
def _jax_left_as_users_have_it():
    """After each test: x64 is off again (a test that switched it on globally would run
    every later JAX test of its process in float64, unlike users), and the compiled
    programs are dropped past ``_MAX_MAPPINGS``. Autouse fixtures are torn down after
    the ones a test asks for, so this runs outside ``jax_x64``'s scope."""
    yield
    jax = sys.modules.get("jax")
    if jax is None:
        return
    if _n_mappings() > _MAX_MAPPINGS:
        jax.clear_caches()
    if jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", False)
        pytest.fail("the test left JAX's x64 switched on: use the jax_x64 fixture")
