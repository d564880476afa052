"""The row solver (``odeplug._rows``): every row is the solve of that row alone, at batch
speed, on NumPy and on torch.

"Alone" is checked two ways:

* against ``batched=False``, the same solver one row at a time: with a field of
  elementwise arithmetic (no BLAS product, no vectorised transcendental whose tail
  rounds differently), a row's numbers must be those of its solve alone to the last bit;
* against the reference engine's one-problem stepper, independent code (BLAS products,
  another sum order in the norm): in float64 equal to rounding with the same counts. In
  float32 the first steps' error estimates lie near rounding (Hairer's first step is
  cautious), so two correct implementations may step differently there: the solutions
  then agree to the tolerance, not to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import odeplug
from odeplug import SolverError
from odeplug._rows import solve_rows, solve_single
from odeplug._solver_options import make_solve_config

# Tolerances well above the rounding of each error estimate (float32: rtol 1e-3), so
# that the steps are decided by the error, not by rounding noise (where two correct
# implementations may legitimately step differently).
SETTINGS = {
    "euler": dict(step_size=0.05),
    "midpoint": dict(step_size=0.05),
    "heun": dict(step_size=0.05),
    "rk4": dict(step_size=0.07),
    "bosh3": dict(rtol=1e-6, atol=1e-8),
    "dopri5": dict(rtol=1e-6, atol=1e-8),
    "tsit5": dict(rtol=1e-6, atol=1e-8),
    "dopri8": dict(rtol=1e-8, atol=1e-10),
}
FLOAT32 = dict(rtol=1e-3, atol=1e-5)
# Rows of different stiffness: each needs its own number of steps.
Y0 = np.array([[0.1, 2.0], [3.0, -1.0], [0.5, 0.5], [-2.5, 1.5], [0.0, 0.2]])


class Namespace:
    """One array library under test: conversions and the elementwise test field."""

    def __init__(self, name: str):
        self.name = name
        if name == "torch":
            self.xp = pytest.importorskip("torch")
            from odeplug_backends.torch._row_arrays import TORCH

            self.rows = TORCH  # the engine's adapter, what solve_rows takes
        else:
            self.xp = self.rows = np

    def __repr__(self) -> str:
        return self.name

    def asarray(self, x, dtype=np.float64):
        x = np.array(x, dtype=dtype)
        return self.xp.from_numpy(x) if self.name == "torch" else x

    def numpy(self, x):
        return x.cpu().numpy() if self.name == "torch" else np.asarray(x)

    def field(self, t, y):
        """Nonlinear, time dependent, elementwise arithmetic only."""
        return numpy_field(t, y)


@pytest.fixture(params=["numpy", "torch"])
def ns(request) -> Namespace:
    return Namespace(request.param)


def numpy_field(t, y, args=None):
    """Operators only (the same function on NumPy and torch arrays), nonlinear, time
    dependent, bounded growth either way in time."""
    return (1 + t) * (2 * y / (1 + y * y) - 0.4 * y)


def settings(solver, dtype=np.float64):
    if dtype == np.float32 and "rtol" in SETTINGS[solver]:
        return FLOAT32
    return SETTINGS[solver]


def alone(row, t, solver, dtype=np.float64):
    """The reference engine's solve of one row, ``(1, d)``, on its own grid."""
    return odeplug.odeint(numpy_field, np.asarray(row, dtype)[None], t, backend="reference",
                          solver=solver, return_stats=True, **settings(solver, dtype))


def agreement(solver):
    """How closely float64 rows agree with the reference engine's solve of each: to
    rounding, but for dopri8, whose first step's error estimate is near rounding (order 8
    on a smooth problem), so that a rounding-level difference moves the next step sizes
    by up to 1e-3 relative, and the solution by that much of its global error."""
    return 1e-10 if solver == "dopri8" else 1e-12


def assert_counts_equal(solution, i, stats):
    assert (solution.nfe_forward[i], solution.n_steps[i], solution.n_rejected[i]) == (
        stats.nfe_forward, stats.n_steps, stats.n_rejected)


# --------------------------------------------------------------------- the rows


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("solver", list(SETTINGS))
def test_each_row_is_its_solve_alone(ns, solver, dtype):
    t = np.array([0.0, 0.3, 1.1, 2.0])
    config = make_solve_config(solver, **settings(solver, dtype))
    y0 = ns.asarray(Y0, dtype)
    batched = solve_rows(ns.rows, ns.field, y0, t, config)
    one_by_one = solve_rows(ns.rows, ns.field, y0, t, config, batched=False)
    np.testing.assert_array_equal(ns.numpy(batched.ys), ns.numpy(one_by_one.ys))
    for name, counts in batched.counters().items():
        np.testing.assert_array_equal(counts, one_by_one.counters()[name])
    # Against the reference engine's one-problem stepper: other code, same numbers.
    for i, row in enumerate(Y0):
        ys, stats = alone(row, t, solver, dtype)
        if dtype == np.float64 or not config.adaptive:
            tolerance = agreement(solver) if dtype == np.float64 else 1e-5
            np.testing.assert_allclose(ns.numpy(batched.ys)[:, i], ys[:, 0], rtol=tolerance,
                                       atol=tolerance)
            assert_counts_equal(batched, i, stats)
        else:
            np.testing.assert_allclose(ns.numpy(batched.ys)[:, i], ys[:, 0], rtol=0,
                                       atol=10 * (FLOAT32["rtol"] * 3 + FLOAT32["atol"]))
    if config.adaptive:
        assert len(set(batched.nfe_forward.tolist())) > 1  # the rows' own step sizes


def test_rows_share_the_evaluations():
    """One call of the field per stage for every row still running: a FSAL solve calls
    it as often as its costliest row evaluates (f(t0), the first step, 6 per attempt)."""
    calls = []

    def field(t, y):
        calls.append((t.shape, t.dtype, y.shape[0]))
        return numpy_field(t, y)

    solution = solve_rows(np, field, Y0, np.array([0.0, 2.0]),
                          make_solve_config("dopri5", rtol=1e-6, atol=1e-8))
    assert len(calls) == solution.nfe_forward.max()
    assert solution.nfe_forward.min() < solution.nfe_forward.max()
    assert all(shape == (rows, 1) and dtype == np.float64 for shape, dtype, rows in calls)
    # Rows that finished left the batch: later calls see fewer rows.
    assert calls[0][2] == len(Y0) and calls[-1][2] < len(Y0)


def test_rows_with_a_matrix_product_agree_to_rounding(ns):
    """A field of BLAS products rounds a row of a big product differently from the row
    alone: the rows agree to rounding, with the same steps, at a tolerance far above
    the rounding of the error estimate."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 4))
    y0 = rng.standard_normal((64, 4))

    def field(t, y):
        return ns.xp.tanh(y @ w) * (1 + t) - 0.3 * y

    w = ns.asarray(weight)
    config = make_solve_config("dopri5", rtol=1e-6, atol=1e-8)
    t = np.linspace(0.0, 2.0, 5)
    batched = solve_rows(ns.rows, field, ns.asarray(y0), t, config)
    one_by_one = solve_rows(ns.rows, field, ns.asarray(y0), t, config, batched=False)
    np.testing.assert_allclose(ns.numpy(batched.ys), ns.numpy(one_by_one.ys), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_array_equal(batched.nfe_forward, one_by_one.nfe_forward)


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_one_grid_per_row_nan_padded_either_direction(ns, solver):
    nan = math.nan
    t = np.array([
        [0.0, 0.5, 1.0, 3.0],     # the longest row
        [0.0, 0.2, nan, nan],     # a short one: finishes early
        [2.0, 1.5, 0.1, nan],     # backwards
        [1.0, 1.1, 1.2, 1.3],     # starts elsewhere
        [0.4, nan, nan, nan],     # only its initial time: nothing to solve
    ])
    config = make_solve_config(solver, **SETTINGS[solver])
    solution = solve_rows(ns.rows, ns.field, ns.asarray(Y0), t, config)
    ys = ns.numpy(solution.ys)
    for i, row in enumerate(Y0):
        valid = ~np.isnan(t[i])
        assert np.isnan(ys[~valid, i]).all()  # outputs at NaN times are NaN
        if valid.sum() == 1:
            np.testing.assert_array_equal(ys[0, i], row)
            assert solution.nfe_forward[i] == solution.n_steps[i] == 0
            continue
        expected, stats = alone(row, t[i, valid], solver)
        np.testing.assert_allclose(ys[valid, i], expected[:, 0], rtol=1e-12, atol=1e-12)
        assert_counts_equal(solution, i, stats)
    assert solution.n_steps[1] < solution.n_steps[0]


@pytest.mark.parametrize("solver", ["bosh3", "dopri8", "heun"])
def test_shared_decreasing_grid(ns, solver):
    t = np.array([1.5, 1.0, 0.2, -0.5])
    config = make_solve_config(solver, **SETTINGS[solver])
    solution = solve_rows(ns.rows, ns.field, ns.asarray(Y0), t, config)
    for i, row in enumerate(Y0):
        expected, stats = alone(row, t, solver)
        tolerance = agreement(solver)
        np.testing.assert_allclose(ns.numpy(solution.ys)[:, i], expected[:, 0],
                                   rtol=tolerance, atol=tolerance)
        assert_counts_equal(solution, i, stats)


def test_controller_options_per_row():
    options = {"pcoeff": 0.3, "icoeff": 0.5, "safety": 0.8, "first_step": 0.05}
    config = make_solve_config("tsit5", rtol=1e-7, atol=1e-9, options=options)
    t = np.array([0.0, 1.0, 2.5])
    solution = solve_rows(np, numpy_field, Y0, t, config)
    for i, row in enumerate(Y0):
        expected, stats = odeplug.odeint(numpy_field, row[None], t, solver="tsit5",
                                         rtol=1e-7, atol=1e-9, options=options,
                                         return_stats=True)
        np.testing.assert_allclose(solution.ys[:, i], expected[:, 0], rtol=1e-12, atol=1e-12)
        assert_counts_equal(solution, i, stats)


# -------------------------------------------------------------------- failures


def blow_up_field(t, y):
    return y * y  # y = y0 / (1 - y0 t): infinite at t = 1 / y0


def test_first_failed_row_raises_as_it_would_alone(ns):
    """Rows 1 and 3 blow up (at t = 1 and t = 0.5); the error is row 1's, the one a loop
    over rows meets first, with the reason, time and solution so far of its solve alone."""
    y0 = np.array([[0.1], [1.0], [-0.5], [2.0], [0.2]])
    t = np.array([0.0, 0.25, 0.9, 2.0])
    with pytest.raises(SolverError, match="^row 1: step size underflow") as info, \
            np.errstate(over="ignore", invalid="ignore"):
        solve_rows(ns.rows, blow_up_field, ns.asarray(y0), t, make_solve_config("dopri5"))
    with pytest.raises(SolverError) as alone_info, np.errstate(over="ignore", invalid="ignore"):
        odeplug.odeint(lambda s, y, a: y * y, y0[1], t, backend="reference")
    error, expected = info.value, alone_info.value
    assert (error.reason, error.t) == (expected.reason, pytest.approx(expected.t, abs=1e-12))
    assert str(expected) in str(error)
    np.testing.assert_array_equal(error.ts, expected.ts)
    np.testing.assert_allclose(ns.numpy(error.ys), expected.ys, rtol=1e-12)
    assert ns.numpy(error.ys).shape == (3, 1)


def test_non_finite_row(ns):
    def field(t, y):
        # Row 2's field is NaN beyond t = 0.5 only.
        bad = (y[:, :1] > 10) & (t > 0.5)
        return ns.xp.where(bad, y * math.nan, -y)

    y0 = ns.asarray([[1.0], [2.0], [20.0]])
    with pytest.raises(SolverError, match="row 2: non-finite state") as info:
        solve_rows(ns.rows, field, y0, np.array([0.0, 0.3, 1.0]), make_solve_config("dopri5"))
    assert info.value.reason == "non_finite"
    assert 0.5 - 1e-6 < info.value.t <= 0.5
    np.testing.assert_array_equal(info.value.ts, [0.0, 0.3])


def test_step_budget_per_row(ns):
    # The same problem over spans of 1, 2 and 8: only the long row exceeds the budget.
    t = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 8.0]])
    y0 = ns.asarray(np.ones((3, 1)))
    config = make_solve_config("rk4", step_size=0.05, max_num_steps=100)
    with pytest.raises(SolverError, match="row 2: max_num_steps=100 exceeded at t=5 ") as info:
        solve_rows(ns.rows, lambda s, y: -y, y0, t, config)
    assert info.value.reason == "max_num_steps"
    assert info.value.t == pytest.approx(5.0)
    np.testing.assert_array_equal(info.value.ts, [0.0])


def test_single_problem_of_any_shape():
    y0 = np.array([[1.0, 2.0], [0.5, -1.0]])

    def field(t, y):
        assert t.shape == () and y.shape == y0.shape
        return -2.0 * t * y

    t = np.array([0.0, 0.5, 1.5])
    solution = solve_single(np, field, y0, t, make_solve_config("dopri5", rtol=1e-10,
                                                                 atol=1e-12))
    np.testing.assert_allclose(solution.ys, np.exp(-(t**2))[:, None, None] * y0, rtol=1e-9)
    with pytest.raises(SolverError, match="^step size underflow") as info, \
            np.errstate(over="ignore", invalid="ignore"):
        solve_single(np, lambda s, y: y * y, y0, np.array([0.0, 0.5, 2.0]),
                     make_solve_config("dopri5"))
    assert info.value.ys.shape == (2, 2, 2)


# ------------------------------------------------------------------ the inputs


@pytest.mark.parametrize("t, message", [
    (np.array([[0.0, 1.0, np.nan, 2.0]] * 5), "NaN is only padding"),
    (np.array([[np.nan, 1.0]] * 5), "first time must be finite"),
    (np.array([[0.0, 1.0, 0.5]] * 5), "strictly"),
    (np.array([[0.0, np.inf]] * 5), "inf"),
    (np.zeros((4, 3)), r"\(5, T\)"),
])
def test_bad_row_grids(t, message):
    with pytest.raises(ValueError, match=message):
        solve_rows(np, numpy_field, Y0, t, make_solve_config("dopri5"))


def test_field_output_checked():
    with pytest.raises(TypeError, match="mismatched dtypes"):
        solve_rows(np, lambda t, y: y.astype(np.float32), Y0, np.array([0.0, 1.0]),
                   make_solve_config("dopri5"))


def test_torch_rows_stay_on_their_dtype():
    torch = pytest.importorskip("torch")
    y0 = torch.tensor(Y0, dtype=torch.float32)
    seen = []

    def field(t, y):
        seen.append(t.dtype)
        return -y

    from odeplug_backends.torch._row_arrays import TORCH

    solution = solve_rows(TORCH, field, y0, np.array([0.0, 1.0]), make_solve_config("dopri5"))
    assert solution.ys.dtype == torch.float32 and set(seen) == {torch.float32}
    assert solution.ys.shape == (2, 5, 2) and solution.nfe_forward.dtype == np.int64


# ------------------------------------------------------------- the engines' rows


ENGINES = ["reference", "torch", "jax"]


def engine_arrays(engine, request):
    """``as_array`` of an engine (float64; JAX in x64 for this test)."""
    if engine == "torch":
        torch = pytest.importorskip("torch")
        return lambda x: torch.tensor(np.asarray(x, np.float64))
    if engine == "jax":
        pytest.importorskip("diffrax")
        request.getfixturevalue("jax_x64")
        import jax.numpy as jnp

        return lambda x: jnp.asarray(np.asarray(x, np.float64))
    return lambda x: np.asarray(x, np.float64)


def engine_field(t, y, args):
    """One field for every engine (arithmetic only): ``t`` a row's time, ``(m, 1)`` in
    ``odeint_rows`` and a scalar in ``odeint``; Constant args arrive unwrapped."""
    assert not isinstance(args["noise"], odeplug.Constant)
    return (1 + t) * (2 * y / (1 + y * y) - args["k"] * y) + args["noise"]


# Per-row grids: NaN padding, a decreasing row, a row of one time.
ROW_TIMES = np.array([[0.0, 1.0, 2.0], [0.0, 0.7, 2.5], [0.2, 0.9, 1.4], [2.0, 1.0, 0.0],
                      [0.0, 0.5, np.nan]])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_odeint_rows_is_odeint_row_by_row_on_every_engine(engine, solver, request):
    """``odeplug.odeint_rows(func, y0, t, args, ...)``: one signature on every engine
    (the Backend contract), each row the states and counters of ``odeplug.odeint`` on
    that row alone, on the same engine; and the same rows and counts on every engine."""
    as_array = engine_arrays(engine, request)
    args = {"k": as_array(0.4), "noise": odeplug.Constant(as_array(np.zeros(2)))}
    kwargs = SETTINGS[solver]
    ys, counters = odeplug.odeint_rows(engine_field, as_array(Y0), ROW_TIMES, args,
                                       solver=solver, **kwargs)
    assert type(ys) is type(as_array(Y0))
    ys = np.asarray(ys)
    assert ys.shape == (3,) + Y0.shape and np.isnan(ys[2, 4]).all()
    assert sorted(counters) == ["n_rejected", "n_steps", "nfe_forward"]
    for name in counters:
        assert isinstance(counters[name], np.ndarray) and counters[name].shape == (5,)
    for i, row in enumerate(Y0):
        valid = ~np.isnan(ROW_TIMES[i])
        expected, stats = odeplug.odeint(engine_field, as_array(row[None]),
                                         as_array(ROW_TIMES[i, valid]), args, solver=solver,
                                         return_stats=True, **kwargs)
        np.testing.assert_allclose(ys[valid, i], np.asarray(expected)[:, 0], rtol=1e-12,
                                   atol=1e-12)
        assert [int(counters[name][i]) for name in ("nfe_forward", "n_steps", "n_rejected")
                ] == [stats.nfe_forward, stats.n_steps, stats.n_rejected], i
    # Every engine gives the reference engine's rows and counts.
    reference, reference_counters = odeplug.odeint_rows(
        engine_field, Y0, ROW_TIMES, {"k": np.array(0.4),
                                      "noise": odeplug.Constant(np.zeros(2))},
        solver=solver, **kwargs)
    np.testing.assert_allclose(ys, reference, rtol=1e-10, atol=1e-12)
    if engine == "jax" and solver in odeplug.FIXED_STEP_SOLVERS:
        # JAX's fixed-step methods end with the FSAL stage f(t1, y1) (its dense output
        # needs it): one evaluation more per solve, as odeint's docstring says.
        reference_counters["nfe_forward"] = reference_counters["nfe_forward"] + 1
    for name in counters:
        np.testing.assert_array_equal(counters[name], reference_counters[name])


@pytest.mark.parametrize("engine", ENGINES)
def test_odeint_rows_a_row_of_one_time_costs_nothing(engine, request):
    as_array = engine_arrays(engine, request)
    t = np.array([[0.0, 1.0], [0.5, np.nan]])
    ys, counters = odeplug.odeint_rows(lambda t, y, a: -y, as_array(Y0[:2]), t)
    np.testing.assert_array_equal(np.asarray(ys)[0], Y0[:2])
    assert np.isnan(np.asarray(ys)[1, 1]).all()
    assert counters["nfe_forward"][1] == counters["n_steps"][1] == 0
    assert counters["nfe_forward"][0] > 0


@pytest.mark.parametrize("engine", ENGINES)
def test_odeint_rows_failures_read_the_same_on_every_engine(engine, request):
    """The failed row of lowest index raises, prefixed with its index, with the reason,
    time reached and solution so far of ``odeint`` on that row alone."""
    as_array = engine_arrays(engine, request)
    # dy/dt = y**2 blows up at t = 1 / y0: rows 1 and 3 fail, row 1 is reported.
    y0 = np.array([[0.1], [1.0], [0.2], [2.0]])
    t = np.array([0.0, 0.5, 0.9, 2.0])
    with pytest.raises(SolverError) as rows, np.errstate(all="ignore"):
        odeplug.odeint_rows(lambda t, y, a: y**2, as_array(y0), t, rtol=1e-6, atol=1e-8)
    with pytest.raises(SolverError) as alone, np.errstate(all="ignore"):
        odeplug.odeint(lambda t, y, a: y**2, as_array(y0[1:2]), as_array(t), rtol=1e-6,
                       atol=1e-8)
    error = rows.value
    assert str(error).startswith("row 1: step size underflow")
    assert str(error) == "row 1: " + str(alone.value)
    assert error.reason == alone.value.reason == "step_size_underflow"
    assert error.t == pytest.approx(alone.value.t, rel=1e-12)
    np.testing.assert_array_equal(error.ts, [0.0, 0.5, 0.9])
    ys = np.asarray(error.ys)
    assert ys.shape == (3, 1)  # the row's states
    np.testing.assert_allclose(ys, np.asarray(alone.value.ys).reshape(3, 1), rtol=1e-12)


@pytest.mark.parametrize("engine", ENGINES)
def test_odeint_rows_bad_input_reads_the_same_on_every_engine(engine, request):
    as_array = engine_arrays(engine, request)
    with pytest.raises(ValueError, match=r"odeint_rows needs states of shape \(n, d\), "
                                         r"got \(5,\)"):
        odeplug.odeint_rows(lambda t, y, a: -y, as_array(Y0[:, 0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="row 1 of t: NaN is only padding"):
        odeplug.odeint_rows(lambda t, y, a: -y, as_array(Y0[:2]),
                            np.array([[0.0, 1.0], [np.nan, 1.0]]))


def test_a_third_party_engine_without_rows_says_so():
    class Bare(odeplug.Backend):
        name = "bare"

        def odeint(self, func, y0, t, args, config, *, count_backward=True):
            raise AssertionError("not called")

    with pytest.raises(NotImplementedError, match="the bare engine has no odeint_rows"):
        Bare().odeint_rows(None, Y0, np.array([0.0, 1.0]), None, make_solve_config())


def test_the_core_names_no_engine():
    """The torch adapter lives in the torch engine; the core takes it as an object."""
    import inspect

    import odeplug._rows as rows

    source = inspect.getsource(rows)
    assert "import torch" not in source and '"torch"' not in source
    with pytest.raises(TypeError, match="row_arrays"):
        solve_rows(object(), numpy_field, Y0, np.array([0.0, 1.0]), make_solve_config())
