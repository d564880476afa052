"""What only the torch engine has: nn.Module fields, torchdiffeq's limits and the fixes
odeplug adds to it (classical RK4, bosh3 and dopri8 dense output, SolverError), and the
checks of every touch of torchdiffeq's private API (``odeplug_backends.torch._compat``)
against the torchdiffeq version they were written for."""

from __future__ import annotations

import inspect
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


def _torchdiffeq(func, y0, t, args=None, **kwargs):
    """The torch engine's solve through torchdiffeq (``implementation="torchdiffeq"``)."""
    from odeplug_backends.torch.solve import odeint

    return odeint(func, y0, t, args, odeplug.make_solve_config(**kwargs),
                  implementation="torchdiffeq")[0]


def test_tsit5_refused_by_torchdiffeq_with_the_solvers_it_has():
    with pytest.raises(ValueError, match="no solver 'tsit5'") as info:
        _torchdiffeq(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], {"k": 1.0},
                     solver="tsit5")
    for name in ("euler", "midpoint", "heun", "rk4", "bosh3", "dopri5", "dopri8"):
        assert repr(name) in str(info.value)
    # odeplug's own stepper has it.
    ys = odeplug.odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], {"k": 1.0},
                        solver="tsit5", rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ys[-1].numpy(), np.exp(-1.0), rtol=1e-8)


def test_unknown_implementation_refused():
    from odeplug_backends.torch.solve import odeint

    with pytest.raises(ValueError, match="'odeplug' or 'torchdiffeq'"):
        odeint(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], {"k": 1.0},
               odeplug.make_solve_config(), implementation="diffrax")


@pytest.mark.parametrize("options", [{"pcoeff": 0.2}, {"icoeff": 0.7}])
def test_pi_controller_refused_by_torchdiffeq(options):
    with pytest.raises(ValueError, match="integral only"):
        _torchdiffeq(_decay, torch.ones(2, dtype=F64), [0.0, 1.0], {"k": 1.0},
                     options=options)


@pytest.mark.parametrize("options", [{"pcoeff": 0.2, "icoeff": 0.4}, {"icoeff": 0.7}])
def test_pi_controller_matches_reference(options):
    # The own stepper takes the reference engine's steps, PI controller included.
    t = np.linspace(0.0, 5.0, 4)
    args = {"A": torch.as_tensor(OSCILLATOR.args["A"])}
    ref, ref_stats = odeplug.odeint(OSCILLATOR.func, OSCILLATOR.y0, t, OSCILLATOR.args,
                                    rtol=1e-6, atol=1e-8, options=options,
                                    backend="reference", return_stats=True)
    ys, stats = odeplug.odeint(OSCILLATOR.func, torch.as_tensor(OSCILLATOR.y0), t, args,
                               rtol=1e-6, atol=1e-8, options=options, return_stats=True)
    np.testing.assert_allclose(ys.numpy(), ref, rtol=1e-12, atol=1e-12)
    assert (stats.nfe_forward, stats.n_steps, stats.n_rejected) == (
        ref_stats.nfe_forward, ref_stats.n_steps, ref_stats.n_rejected)


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
    # y' = y^2, y(0) = 1: y = 1 / (1 - t) blows up at t = 1; the reference engine's error.
    t = [0.0, 0.5, 2.0]
    with pytest.raises(SolverError, match="at t=1") as info:
        odeplug.odeint(lambda t, y, a: y * y, torch.ones(1, dtype=F64), t)
    with pytest.raises(SolverError) as reference:
        odeplug.odeint(lambda t, y, a: y * y, np.ones(1), np.array(t))
    error = info.value
    assert error.reason == reference.value.reason == "step_size_underflow"
    assert error.t == pytest.approx(reference.value.t, abs=1e-12)
    np.testing.assert_array_equal(error.ts, [0.0, 0.5])
    assert isinstance(error.ys, torch.Tensor) and not error.ys.requires_grad
    np.testing.assert_allclose(error.ys.numpy(), reference.value.ys, rtol=1e-12)


@pytest.mark.parametrize("adjoint", [False, True], ids=["backprop", "adjoint"])
def test_solution_so_far_is_detached(adjoint):
    k = torch.tensor(0.5, dtype=F64, requires_grad=True)
    with pytest.raises(SolverError) as info:
        odeplug.odeint(lambda t, y, a: -a * y, torch.ones(2, dtype=F64), [0.0, 1.0, 2.0, 3.0],
                       k, adjoint=adjoint, max_num_steps=8)
    assert info.value.reason == "max_num_steps"
    assert len(info.value.ts) == len(info.value.ys) >= 2 and not info.value.ys.requires_grad


def test_non_finite_field_raises_solver_error():
    """As on the reference engine: adaptive steps that go non-finite are rejected and
    shrink towards t = 0.5 until they underflow; a fixed step fails where its state goes
    non-finite (0.5), found step by step after the solve."""
    def field(t, y, args):
        return torch.where(t < 0.5, -y, torch.full_like(y, torch.nan))

    with pytest.raises(SolverError, match="non-finite") as info:
        odeplug.odeint(field, torch.ones(2, dtype=F64), [0.0, 2.0])
    assert info.value.reason == "non_finite"
    assert 0.5 - 1e-9 < info.value.t <= 0.5
    np.testing.assert_array_equal(info.value.ys, [[1.0, 1.0]])

    with pytest.raises(SolverError, match="non-finite") as info:
        odeplug.odeint(field, torch.ones(2, dtype=F64), [0.0, 0.25, 1.0], solver="rk4",
                       step_size=0.1)
    assert info.value.reason == "non_finite" and info.value.t == pytest.approx(0.5)
    np.testing.assert_array_equal(info.value.ts, [0.0, 0.25])
    assert info.value.ys.shape == (2, 2) and torch.isfinite(info.value.ys).all()


# ------------------------------------------------------------------- constants


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
@pytest.mark.parametrize("implementation", ["odeplug", "torchdiffeq"])
def test_constant_tensor_is_never_differentiated(monkeypatch, adjoint, implementation):
    """A Constant tensor that requires grad: not among the adjoint's parameters, no
    gradient by backprop either, passed to the field unwrapped and detached."""
    import torchdiffeq
    from odeplug_backends.torch import solve

    seen = {}
    if implementation == "torchdiffeq":
        original = torchdiffeq.odeint_adjoint

        def spy(*args, **kwargs):
            seen["params"] = kwargs["adjoint_params"]
            return original(*args, **kwargs)

        monkeypatch.setattr(torchdiffeq, "odeint_adjoint", spy)
    else:
        original_params = solve._adjoint_params

        def spy(*args):
            seen["params"] = original_params(*args)
            return seen["params"]

        monkeypatch.setattr(solve, "_adjoint_params", spy)
    odeint = solve.odeint

    def engine_odeint(func, y0, t, args, config, **kwargs):
        return odeint(func, y0, t, args, config, implementation=implementation, **kwargs)

    monkeypatch.setattr(odeplug.get_backend("torch"), "odeint", engine_odeint)
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    noise = torch.tensor([0.1, -0.2], dtype=F64, requires_grad=True)

    def field(t, y, args):
        assert isinstance(args["noise"], torch.Tensor) and not args["noise"].requires_grad
        return -args["k"] * y + args["noise"]

    ys = odeplug.odeint(field, torch.ones(2, dtype=F64), [0.0, 1.0],
                        {"k": k, "noise": odeplug.Constant(noise)}, adjoint=adjoint)
    ys.sum().backward()
    if adjoint:
        assert [p is k for p in seen["params"]] == [True]
    assert k.grad is not None and noise.grad is None


# ------------------------------------------------------------ private API


def test_compat_names_the_checked_torchdiffeq():
    """_compat was checked against torchdiffeq 0.2.5; pyproject allows < 0.3 only."""
    import torchdiffeq
    from odeplug_backends.torch import _compat

    assert _compat.CHECKED_VERSION == "0.2.5"
    assert torchdiffeq.__version__.split(".")[:2] == _compat.CHECKED_VERSION.split(".")[:2]


def test_compat_registry_0_2_5():
    """torchdiffeq 0.2.5 looks methods up in ``_impl.odeint.SOLVERS`` (forward and the
    adjoint's backward): odeplug's join it, torchdiffeq's own entries are untouched."""
    from odeplug_backends.torch import _compat
    from torchdiffeq._impl.dopri5 import Dopri5Solver
    from torchdiffeq._impl.fixed_grid import RK4
    from torchdiffeq._impl.odeint import SOLVERS as registry

    for name, method in _compat.METHODS.items():
        assert method in registry, name
    assert registry["odeplug_dopri5"] is not Dopri5Solver
    assert issubclass(registry["odeplug_dopri5"], Dopri5Solver)
    assert registry["dopri5"] is Dopri5Solver and registry["rk4"] is RK4


def test_compat_classical_rk4_0_2_5():
    """torchdiffeq 0.2.5: ``FixedGridODESolver._step_func(func, t0, dt, t1, y0)`` returns
    ``(dy, f0)``; ``rk_common.rk4_step_func(func, t0, dt, t1, y0, f0, perturb)`` is the
    classical RK4 increment; ``misc.Perturb`` has NONE, NEXT, PREV."""
    from odeplug_backends.torch._compat import ClassicalRK4
    from torchdiffeq._impl.misc import Perturb
    from torchdiffeq._impl.rk_common import rk4_step_func
    from torchdiffeq._impl.solvers import FixedGridODESolver

    assert list(inspect.signature(FixedGridODESolver._step_func).parameters) == [
        "self", "func", "t0", "dt", "t1", "y0"]
    assert list(inspect.signature(rk4_step_func).parameters) == [
        "func", "t0", "dt", "t1", "y0", "f0", "perturb"]
    assert {p.name for p in Perturb} == {"NONE", "NEXT", "PREV"}

    def func(t, y, perturb=Perturb.NONE):
        return y

    y0, h = torch.ones(1, dtype=F64), 0.1
    t0, dt = torch.tensor(0.0, dtype=F64), torch.tensor(h, dtype=F64)
    solver = ClassicalRK4(func, y0, step_size=h, atol=1e-9)
    dy, f0 = solver._step_func(func, t0, dt, t0 + dt, y0)
    assert float(dy) == pytest.approx(h + h**2 / 2 + h**3 / 6 + h**4 / 24, rel=1e-15)
    assert float(f0) == 1.0


def test_compat_hermite_bosh3_0_2_5():
    """torchdiffeq 0.2.5: ``RKAdaptiveStepsizeODESolver._interp_fit(y0, y1, k, dt)``
    returns the coefficients of x**0..x**3 that ``interp._interp_evaluate`` evaluates;
    odeplug's are those of the cubic Hermite through (y0, f0), (y1, f1)."""
    from odeplug_backends.torch._compat import HermiteBosh3
    from torchdiffeq._impl.bosh3 import Bosh3Solver
    from torchdiffeq._impl.interp import _interp_evaluate

    assert list(inspect.signature(Bosh3Solver._interp_fit).parameters) == [
        "self", "y0", "y1", "k", "dt"]
    y0, y1 = torch.tensor([1.0], dtype=F64), torch.tensor([2.0], dtype=F64)
    k = torch.tensor([[0.5, 0.0, 0.0, 3.0]], dtype=F64)  # f0 = 0.5, f1 = 3
    dt = torch.tensor(0.5, dtype=F64)
    coefficients = HermiteBosh3._interp_fit(None, y0, y1, k, dt)
    t0, t1 = torch.tensor(0.0, dtype=F64), dt
    for x in (0.0, 0.3, 1.0):
        x2, x3 = x * x, x**3
        hermite = ((2 * x3 - 3 * x2 + 1) * 1.0 + (x3 - 2 * x2 + x) * 0.5 * 0.5
                   + (3 * x2 - 2 * x3) * 2.0 + (x3 - x2) * 0.5 * 3.0)
        got = _interp_evaluate(coefficients, t0, t1, torch.tensor(x * 0.5, dtype=F64))
        assert float(got) == pytest.approx(hermite, rel=1e-14)


def test_compat_keeps_outputs_0_2_5():
    """torchdiffeq 0.2.5: ``AdaptiveStepsizeODESolver.integrate`` calls
    ``_before_integrate(t)`` once, then ``_advance(t[i])`` once per output time, in
    order; odeplug's solvers keep those outputs for a SolverError."""
    from odeplug_backends.torch._compat import KeepsOutputs, register
    from torchdiffeq._impl.odeint import SOLVERS as registry
    from torchdiffeq._impl.solvers import AdaptiveStepsizeODESolver

    assert list(inspect.signature(AdaptiveStepsizeODESolver._advance).parameters) == [
        "self", "next_t"]
    assert list(inspect.signature(AdaptiveStepsizeODESolver._before_integrate).parameters) \
        == ["self", "t"]
    register()
    calls = []

    class Spy(registry["odeplug_dopri5"]):
        def _before_integrate(self, t):
            calls.append("before")
            super()._before_integrate(t)

        def _advance(self, next_t):
            calls.append(float(next_t))
            return super()._advance(next_t)

    assert issubclass(Spy, KeepsOutputs)
    registry["odeplug_test_spy"] = Spy
    try:
        import torchdiffeq

        t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
        torchdiffeq.odeint(lambda s, y: -y, torch.ones(1, dtype=F64), t,
                           method="odeplug_test_spy")
    finally:
        del registry["odeplug_test_spy"]
    assert calls == ["before", 0.5, 1.0]


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
