"""Upstream's checks on every engine: ``torch.autograd.gradcheck`` and gradients of a
scalar loss, in a given dtype."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# torch.autograd.gradcheck's defaults, which upstream uses.
GRADCHECK_EPS, GRADCHECK_ATOL, GRADCHECK_RTOL = 1e-6, 1e-5, 1e-3


def gradcheck(engine, fn: Callable, inputs: Sequence[np.ndarray]) -> None:
    """Upstream's ``self.assertTrue(torch.autograd.gradcheck(fn, inputs))`` on ``engine``.

    On torch it is ``torch.autograd.gradcheck`` itself. On the other engines the same
    check: the engine's Jacobian of ``fn`` (autograd's, JAX's ``jacrev``) against
    central differences of step ``eps``, entry by entry ``|analytic - numeric| <= atol +
    rtol * |numeric|``, with gradcheck's ``eps``, ``atol`` and ``rtol``.

    ``fn`` takes and returns the engine's arrays; ``inputs`` are float64 NumPy arrays.
    """
    inputs = [np.array(x, dtype=np.float64) for x in inputs]
    if engine.name == "torch":
        torch = engine.torch
        tensors = tuple(torch.tensor(x, requires_grad=True) for x in inputs)
        assert torch.autograd.gradcheck(fn, tensors, eps=GRADCHECK_EPS, atol=GRADCHECK_ATOL,
                                        rtol=GRADCHECK_RTOL)
        return
    argnums = tuple(range(len(inputs)))
    if engine.name == "reference":
        import autograd

        analytic = [np.asarray(autograd.jacobian(fn, argnum=i)(*inputs)) for i in argnums]
    else:
        jnp = engine.jax.numpy
        jacobians = engine.jax.jacrev(fn, argnums=argnums)(*[jnp.asarray(x) for x in inputs])
        analytic = [np.asarray(j) for j in jacobians]

    def evaluate(values):
        return engine.numpy(fn(*[engine.asarray(v) for v in values])).astype(np.float64)

    for i, x in enumerate(inputs):
        numeric = np.empty(analytic[i].shape)
        out_ndim = numeric.ndim - x.ndim
        for j in range(x.size):
            plus, minus = [v.copy() for v in inputs], [v.copy() for v in inputs]
            plus[i].flat[j] += GRADCHECK_EPS
            minus[i].flat[j] -= GRADCHECK_EPS
            column = (evaluate(plus) - evaluate(minus)) / (2 * GRADCHECK_EPS)
            index = np.unravel_index(j, x.shape) if x.ndim else ()
            numeric[(slice(None),) * out_ndim + tuple(index)] = column
        bad = np.abs(analytic[i] - numeric) > GRADCHECK_ATOL + GRADCHECK_RTOL * np.abs(numeric)
        assert not bad.any(), (
            f"Jacobian mismatch for input {i}:\nnumerical {numeric}\nanalytical {analytic[i]}")


def grads(engine, loss: Callable, inputs: Sequence, dtype=np.float64) -> list:
    """Gradients of the scalar ``loss(*inputs)`` w.r.t. every input, as NumPy.

    Each input is a NumPy array or a dict of them, converted to ``dtype`` on the engine
    (``tests/conftest.py``'s ``Engine.grad`` works in float64 only).
    """

    def tree(x, fn):
        if isinstance(x, dict):
            return {key: fn(np.asarray(value, dtype=dtype)) for key, value in x.items()}
        return fn(np.asarray(x, dtype=dtype))

    def to_numpy(x, fn):
        if isinstance(x, dict):
            return {key: fn(value) for key, value in x.items()}
        return fn(x)

    if engine.name == "reference":
        import autograd

        values = tuple(tree(x, lambda v: v) for x in inputs)
        out = autograd.grad(lambda xs: loss(*xs))(values)
        return [to_numpy(g, np.asarray) for g in out]
    if engine.name == "torch":
        torch = engine.torch
        leaves = [tree(x, lambda v: torch.tensor(v, requires_grad=True)) for x in inputs]
        loss(*leaves).backward()

        def grad_of(v):
            return np.zeros(tuple(v.shape)) if v.grad is None else v.grad.numpy()

        return [to_numpy(x, grad_of) for x in leaves]
    jnp = engine.jax.numpy
    leaves = tuple(tree(x, jnp.asarray) for x in inputs)
    out = engine.jax.grad(lambda xs: loss(*xs))(leaves)
    return [to_numpy(g, np.asarray) for g in out]
