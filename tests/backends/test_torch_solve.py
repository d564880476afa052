"""What only the torch engine has: nn.Module fields, torchdiffeq's limits and the fixes
odeplug adds to it (classical RK4, bosh3 and dopri8 dense output, SolverError)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

import odeplug  # noqa: E402
from odeplug import BacksolveAdjoint, SolverError  # noqa: E402
from tests.problems import OSCILLATOR  # noqa: E402

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _decay(t, y, args):
    return -args["k"] * y


class Linear(torch.nn.Module):
    """dy/dt = y W^T: y(t) = y0 expm(t W)^T, so gradients are known exactly."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=F64))

    def forward(self, t, y, args):
        return y @ self.weight.T


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_module_parameters_get_gradients(adjoint):
    field = Linear()
    y0 = torch.tensor([[0.8, -0.4], [0.1, 0.2]], dtype=F64)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=F64)
    ys, stats = odeplug.odeint(field, y0, t, adjoint=adjoint, rtol=1e-11, atol=1e-12,
                               return_stats=True)
    (ys[1:] ** 2).sum().backward()

    weight = field.weight.detach().clone().requires_grad_(True)
    exact = torch.stack([y0 @ torch.linalg.matrix_exp(s * weight).T for s in t[1:]])
    (exact**2).sum().backward()
    torch.testing.assert_close(ys[1:].detach(), exact.detach(), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(field.weight.grad, weight.grad, rtol=1e-7, atol=1e-9)
    assert stats.nfe_backward > stats.n_steps > 0


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing", "decreasing"])
def test_gradient_of_end_time_is_the_field(adjoint, decreasing):
    # d y(t1) / d t1 = f(t1, y(t1)), whichever way time runs.
    k = torch.tensor(0.7, dtype=F64)
    t1 = torch.tensor(-1.2 if decreasing else 1.2, dtype=F64, requires_grad=True)
    t = torch.cat([torch.tensor([0.0, t1.item() / 2], dtype=F64), t1.reshape(1)])
    ys = odeplug.odeint(_decay, torch.tensor([1.0, -2.0], dtype=F64), t, {"k": k},
                        adjoint=adjoint, rtol=1e-11, atol=1e-12)
    ys[-1].sum().backward()
    expected = float((-k * ys[-1]).sum().detach())
    assert abs(float(t1.grad) - expected) <= 1e-8


def test_tsit5_refused_with_the_solvers_torch_has():
    with pytest.raises(ValueError, match="no solver 'tsit5'") as info:
        odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], {"k": 1.0},
                       solver="tsit5")
    for name in ("euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "dopri8"):
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("options", [{"pcoeff": 0.2}, {"icoeff": 0.7}])
def test_pi_controller_refused(options):
    with pytest.raises(ValueError, match="integral only"):
        odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], {"k": 1.0},
                       options=options)


def test_controller_options_are_used():
    def steps(**options):
        _, stats = odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 5.0], {"k": 1.0},
                                  rtol=1e-6, atol=1e-8, options=options, return_stats=True)
        return stats.n_steps

    assert steps(safety=0.5) > steps()
    assert steps(factormax=1.5, first_step=1e-6) > steps(first_step=1e-6)


@pytest.mark.parametrize("solver", ["bosh3", "dopri5", "dopri8"])
def test_outputs_between_steps_are_accurate(solver):
    # dopri8 steps onto every output time and bosh3 uses a cubic Hermite, because
    # torchdiffeq's own dense output of both is far less accurate than their steps.
    t = np.linspace(0.0, 5.0, 201)
    args = {"A": torch.as_tensor(OSCILLATOR.args["A"])}
    rtol, atol = 1e-8, 1e-10
    ys = odeplug.odeint(OSCILLATOR.func, torch.as_tensor(OSCILLATOR.y0), t, args,
                        solver=solver, rtol=rtol, atol=atol, max_num_steps=20_000)
    exact = OSCILLATOR.solution(t)
    assert np.abs(ys.numpy() - exact).max() <= 30 * (atol + rtol * np.abs(exact).max())


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun", "rk4"])
def test_fixed_step_decreasing_time_matches_reference(solver):
    t = np.linspace(2.0, 0.3, 7)  # output times between grid points, last step shortened
    ref = odeplug.odeint(OSCILLATOR.func, OSCILLATOR.y0, t, OSCILLATOR.args, solver=solver,
                         step_size=0.07, backend="reference")
    args = {"A": torch.as_tensor(OSCILLATOR.args["A"])}
    ys, stats = odeplug.odeint(OSCILLATOR.func, torch.as_tensor(OSCILLATOR.y0), t, args,
                               solver=solver, step_size=0.07, return_stats=True)
    np.testing.assert_allclose(ys.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert (stats.n_steps, stats.n_rejected) == (25, 0)


@pytest.mark.parametrize("solver", ["heun", "rk4"])
def test_fixed_step_adjoint_matches_backprop(solver):
    def grads(adjoint):
        k = torch.tensor(0.7, dtype=F64, requires_grad=True)
        y0 = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
        ys = odeplug.odeint(lambda t, y, a: -a["k"] * y * y * t, y0, [0.0, 0.5, 1.0],
                            {"k": k}, solver=solver, step_size=0.01, adjoint=adjoint)
        ys.sum().backward()
        return torch.cat([k.grad.reshape(1), y0.grad])

    # The adjoint solves its own (backward) ODE with the same steps: equal up to the
    # solver's error, not to rounding.
    torch.testing.assert_close(grads(True), grads(False), rtol=1e-4, atol=1e-6)


def test_blow_up_raises_solver_error_near_singularity():
    # y' = y^2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1.
    with pytest.raises(SolverError, match="at t=1") as info:
        odeplug.odeint(lambda t, y, a: y * y, torch.ones(1, dtype=F64), [0.0, 0.5, 2.0])
    error = info.value
    assert error.reason in ("step_size_underflow", "non_finite")
    assert abs(error.t - 1.0) < 1e-3
    np.testing.assert_array_equal(error.ts, [0.0, 0.5])


def test_non_finite_field_raises_solver_error():
    def field(t, y, args):
        return torch.where(t < 0.5, -y, torch.full_like(y, torch.nan))

    with pytest.raises(SolverError, match="non-finite") as info:
        odeplug.odeint(field, torch.ones(2, dtype=F64), [0.0, 2.0])
    assert info.value.reason == "non_finite"
    assert 0.0 < info.value.t <= 0.5

    with pytest.raises(SolverError, match="non-finite") as info:
        odeplug.odeint(field, torch.ones(2, dtype=F64), [0.0, 0.25, 1.0], solver="rk4",
                       step_size=0.1)
    assert info.value.reason == "non_finite" and info.value.t == 1.0
    np.testing.assert_array_equal(info.value.ts, [0.0, 0.25])
    assert info.value.ys.shape == (2, 2) and torch.isfinite(info.value.ys).all()


def test_step_budget_of_the_backward_solve():
    y0 = torch.ones(1, dtype=F64, requires_grad=True)
    ys = odeplug.odeint(lambda t, y, a: -y, y0, [0.0, 1.0, 2.0], max_num_steps=20,
                        adjoint=BacksolveAdjoint(rtol=1e-13, atol=1e-14))
    with pytest.raises(SolverError, match="max_num_steps=20 exceeded .* backward") as info:
        ys.sum().backward()
    assert info.value.reason == "max_num_steps" and 0.0 < info.value.t < 2.0


def test_adjoint_refuses_a_field_closing_over_tensors_that_require_grad():
    k = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="pass them through `args`"):
        odeplug.odeint(lambda t, y, a: -k * y, y0, [0.0, 1.0], adjoint=True)
    # Backpropagation sees through closures.
    ys = odeplug.odeint(lambda t, y, a: -k * y, y0, [0.0, 1.0], rtol=1e-10, atol=1e-12)
    ys[-1].sum().backward()
    assert abs(float(k.grad) + 2 * np.exp(-0.5)) < 1e-7


def test_array_like_inputs():
    # A list of floats and a reversed (negative-stride) NumPy grid stay float64.
    ys = odeplug.odeint(_decay, [1.0, 2.0], np.array([0.0, 1.0])[::-1], {"k": np.array(0.5)},
                        backend="torch", rtol=1e-10, atol=1e-12)
    assert isinstance(ys, torch.Tensor) and ys.dtype == F64
    np.testing.assert_allclose(ys[-1].numpy(), [np.exp(0.5), 2 * np.exp(0.5)], rtol=1e-8)
    ys = odeplug.odeint(_decay, torch.ones((), dtype=F64), [0, 1, 2], {"k": 1.0})
    assert ys.shape == (3,)


def test_stats_of_fixed_and_adaptive_solves():
    args = {"k": torch.tensor(1.0, dtype=F64, requires_grad=True)}
    ys, stats = odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], args,
                               solver="rk4", step_size=0.3, return_stats=True)
    assert (stats.n_steps, stats.n_rejected, stats.nfe_backward) == (4, 0, 0)
    assert stats.nfe_forward >= 4 * 4
    ys.sum().backward()
    assert stats.nfe_backward == stats.nfe_forward  # one VJP per evaluation

    full = odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], args,
                          adjoint=True, return_stats=True)[1]
    semi_ys, semi = odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], args,
                                   adjoint=BacksolveAdjoint(seminorm=True), return_stats=True)
    semi_ys.sum().backward()
    assert semi.nfe_forward == full.nfe_forward and semi.nfe_backward > 0


@pytest.mark.parametrize("solver, kwargs", [("dopri5", {}), ("rk4", {"step_size": 0.1})])
def test_no_warnings_from_torchdiffeq(solver, kwargs):
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for adjoint in (False, True):
            ys = odeplug.odeint(_decay, y0, [0.0, 1.0], {"k": 1.0}, solver=solver,
                                adjoint=adjoint, **kwargs)
            ys.sum().backward()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_runs_on_the_device_of_y0(device, adjoint):
    k = torch.tensor(0.7, device=device, requires_grad=True)
    y0 = torch.tensor([1.0, -2.0], device=device)  # float32 stays float32
    ys = odeplug.odeint(_decay, y0, np.linspace(0.0, 1.0, 4), {"k": k}, adjoint=adjoint,
                        rtol=1e-6, atol=1e-8)
    assert ys.device == y0.device and ys.dtype == torch.float32
    ys[-1].sum().backward()
    # d/dk sum(y0 exp(-k)) = -sum(y0) exp(-k)
    assert abs(float(k.grad) - float(np.exp(-0.7))) < 1e-4
