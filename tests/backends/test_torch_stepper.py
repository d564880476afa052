"""odeplug's own stepper and adjoint on torch (``implementation="odeplug"``, the
default), against the reference engine (the same steps: the same solutions to rounding
and the same counts) and against torchdiffeq (``implementation="torchdiffeq"``, the
same solutions within the tolerances), on every solver."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from odeplug_backends.torch.solve import odeint as torch_odeint  # noqa: E402

import odeplug  # noqa: E402
from odeplug import BacksolveAdjoint, SolverError  # noqa: E402
from tests.problems import LOTKA_VOLTERRA, OSCILLATOR  # noqa: E402

F64 = torch.float64
FIXED = ["euler", "midpoint", "heun", "rk4"]
ADAPTIVE = ["bosh3", "dopri5", "tsit5", "dopri8"]
TORCHDIFFEQ_HAS = FIXED + ["bosh3", "dopri5", "dopri8"]


def _kwargs(solver):
    return {"step_size": 0.05} if solver in FIXED else {"rtol": 1e-7, "atol": 1e-9}


def _solve(problem, solver, implementation="odeplug", t=None, **kwargs):
    t = problem.t if t is None else t
    args = {k: torch.as_tensor(v) for k, v in problem.args.items()}
    config = odeplug.make_solve_config(solver=solver, **{**_kwargs(solver), **kwargs})
    return torch_odeint(problem.func, torch.as_tensor(problem.y0), torch.as_tensor(t), args,
                        config, implementation=implementation)


@pytest.mark.parametrize("solver", FIXED + ADAPTIVE)
@pytest.mark.parametrize("problem", [OSCILLATOR, LOTKA_VOLTERRA], ids=lambda p: p.name)
@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing", "decreasing"])
def test_same_steps_as_the_reference_engine(problem, solver, decreasing):
    t = problem.t[::-1].copy() if decreasing else problem.t
    ref, ref_stats = odeplug.odeint(problem.func, problem.y0, t, problem.args, solver=solver,
                                    backend="reference", return_stats=True,
                                    **_kwargs(solver))
    ys, stats = _solve(problem, solver, t=t)
    # Rounding only: the stages are summed in another order (BLAS against torch), which
    # the solve amplifies (dopri8's weights reach 1e2) to a thousandth of the tolerance.
    np.testing.assert_allclose(ys.numpy(), ref, rtol=1e-9, atol=1e-12)
    assert (stats.nfe_forward, stats.n_steps, stats.n_rejected) == (
        ref_stats.nfe_forward, ref_stats.n_steps, ref_stats.n_rejected)


@pytest.mark.parametrize("solver", TORCHDIFFEQ_HAS)
def test_same_solution_as_torchdiffeq(solver):
    ours, _ = _solve(OSCILLATOR, solver)
    theirs, _ = _solve(OSCILLATOR, solver, implementation="torchdiffeq")
    tolerance = 1e-12 if solver in FIXED else 50 * 1e-7
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=tolerance)


# t1 in the middle of a fixed step: finite differences then keep the number of steps.
T1 = 1.305


def _loss_and_grads(solver, adjoint, implementation="odeplug", k=0.7, t1=T1):
    k = torch.tensor(k, dtype=F64, requires_grad=True)
    y0 = torch.tensor([1.0, -0.5], dtype=F64, requires_grad=True)
    t1 = torch.tensor(t1, dtype=F64, requires_grad=True)
    t = torch.cat([torch.tensor([0.0, 0.4], dtype=F64), t1.reshape(1)])
    config = odeplug.make_solve_config(solver=solver, adjoint=adjoint,
                                       **({"step_size": 0.01} if solver in FIXED else
                                          {"rtol": 1e-10, "atol": 1e-12}))

    def field(t, y, args):
        return torch.stack([y[1], -args["k"] * torch.sin(y[0]) + 0.1 * t])

    ys, stats = torch_odeint(field, y0, t, {"k": k}, config, implementation=implementation)
    loss = (ys[1:] ** 2).sum()
    loss.backward()
    return float(loss.detach()), [float(v) for v in (*y0.grad, k.grad, t1.grad)], stats


@pytest.mark.parametrize("solver", FIXED + ADAPTIVE)
@pytest.mark.parametrize("adjoint", [BacksolveAdjoint(), BacksolveAdjoint(seminorm=True),
                                     False], ids=["adjoint", "seminorm", "backprop"])
def test_gradients_equal_finite_differences(solver, adjoint):
    _, grads, stats = _loss_and_grads(solver, adjoint)
    assert stats.nfe_backward > 0
    eps = 1e-5
    numeric = []
    for name in ("y0_0", "y0_1", "k", "t1"):
        values = []
        for sign in (1, -1):
            k, t1, y_shift = 0.7, T1, np.zeros(2)
            if name == "k":
                k += sign * eps
            elif name == "t1":
                t1 += sign * eps
            else:
                y_shift[int(name[-1])] = sign * eps
            values.append(_shifted_loss(solver, k, t1, y_shift))
        numeric.append((values[0] - values[1]) / (2 * eps))
    # Backprop differentiates the discrete scheme (to the differences' own error); the
    # adjoint solves the continuous adjoint with fixed steps of 0.01, off by their
    # discretisation error (first order for Euler); adaptive solves at rtol 1e-10 agree
    # to the differences' error, 1e-10 / eps.
    if adjoint is False:
        tolerance = 1e-6 if solver in FIXED else 1e-5
    else:
        tolerance = {"euler": 3e-2, "midpoint": 1e-3, "heun": 1e-3, "rk4": 1e-6}.get(
            solver, 1e-5)
    np.testing.assert_allclose(grads, numeric, rtol=tolerance, atol=tolerance)


def _shifted_loss(solver, k, t1, y_shift):
    y0 = torch.tensor([1.0, -0.5], dtype=F64) + torch.as_tensor(y_shift)
    t = torch.tensor([0.0, 0.4, t1], dtype=F64)
    config = odeplug.make_solve_config(solver=solver, **({"step_size": 0.01} if solver in FIXED
                                                         else {"rtol": 1e-10, "atol": 1e-12}))

    def field(t, y, args):
        return torch.stack([y[1], -args["k"] * torch.sin(y[0]) + 0.1 * t])

    ys, _ = torch_odeint(field, y0, t, {"k": torch.tensor(k, dtype=F64)}, config)
    return float((ys[1:] ** 2).sum())


@pytest.mark.parametrize("solver", ["rk4", "dopri5", "dopri8"])
def test_adjoint_gradients_match_backprop_and_torchdiffeq(solver):
    _, backprop, _ = _loss_and_grads(solver, False)
    _, adjoint, _ = _loss_and_grads(solver, True)
    _, theirs, _ = _loss_and_grads(solver, True, implementation="torchdiffeq")
    tolerance = 1e-3 if solver in FIXED else 1e-7
    np.testing.assert_allclose(adjoint, backprop, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(adjoint, theirs, rtol=tolerance, atol=tolerance)


def _saved_bytes(t1, adjoint):
    """Bytes autograd keeps for the backward pass of a solve to ``t1``."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8).double()

        def forward(self, t, y, args):
            return torch.tanh(self.linear(y))

    field = Field()
    y0 = torch.randn(16, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        ys, stats = odeplug.odeint(field, y0, [0.0, t1], adjoint=adjoint, rtol=1e-6,
                                   atol=1e-8, return_stats=True)
    ys.sum().backward()
    assert field.linear.weight.grad is not None
    return total, stats.n_steps


def test_adjoint_memory_is_flat_in_t1():
    short, short_steps = _saved_bytes(1.0, adjoint=True)
    long, long_steps = _saved_bytes(20.0, adjoint=True)
    assert long_steps > 3 * short_steps
    assert long == short
    # Backpropagation keeps every step's stages.
    backprop_short, _ = _saved_bytes(1.0, adjoint=False)
    backprop_long, _ = _saved_bytes(20.0, adjoint=False)
    assert backprop_long > 3 * backprop_short > 0


def test_float32_batch_matches_torchdiffeq():
    generator = torch.Generator().manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    y0 = torch.randn(32, 4, generator=generator)
    t = torch.linspace(0.0, 1.0, 3)
    config = odeplug.make_solve_config(rtol=1e-5, atol=1e-7)
    ours, stats = torch_odeint(lambda t, y, a: net(y), y0, t, None, config)
    theirs, their_stats = torch_odeint(lambda t, y, a: net(y), y0, t, None, config,
                                       implementation="torchdiffeq")
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert stats.nfe_forward == their_stats.nfe_forward


def test_failure_carries_the_solution_so_far():
    def blow_up(t, y, args):
        return y * y

    with pytest.raises(SolverError) as info:
        odeplug.odeint(blow_up, torch.ones(1, dtype=F64), [0.0, 0.5, 0.9, 2.0])
    error = info.value
    with pytest.raises(SolverError) as reference:
        odeplug.odeint(blow_up, np.ones(1), [0.0, 0.5, 0.9, 2.0], backend="reference")
    assert str(error) == str(reference.value)
    assert error.reason == reference.value.reason
    assert error.t == pytest.approx(reference.value.t, rel=1e-12)
    np.testing.assert_allclose(error.ts, [0.0, 0.5, 0.9])
    np.testing.assert_allclose(error.ys.numpy()[:, 0], 1 / (1 - np.array([0.0, 0.5, 0.9])),
                               rtol=1e-6)
