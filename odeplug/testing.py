"""A conformance kit for odeplug's engines: the checks an engine passes to honour the
Backend contract, for odeplug's own engines and a third party's.

Each check is a function ``check_<what>(name)`` of a registered engine's name that
raises ``AssertionError`` (or the unexpected error) naming what differs. They check:

* ``odeint`` against closed-form solutions (decay, a harmonic oscillator, a
  time-dependent linear field), forwards and backwards in time, fixed steps that end on
  ``t1``;
* the counters (:class:`odeplug.ODEStats`): four evaluations per ``rk4`` step, six per
  attempted ``dopri5`` step (its last stage is the next step's first), no rejection with
  fixed steps;
* failures: :class:`odeplug.SolverError` with the same ``reason``, time reached and
  solution so far as on every engine (step budget, step size underflow, non-finite
  state), and a field of the wrong shape refused;
* each model family's program (:mod:`odeplug.extend`: ``ClassifierProgram``,
  ``DensityProgram``, ``LatentProgram``, and flow matching's training program) against
  the reference engine's for the same canonical parameters: the protocol's methods, the
  parameters' round trip, a training step's loss, metrics and gradient, and every
  inference entry point's outputs and per-row counters.

Use them as scikit-learn's ``parametrize_with_checks``, in the engine's own tests::

    from odeplug.testing import parametrize_with_engine_checks

    @parametrize_with_engine_checks(["my_engine"])
    def test_odeplug_conformance(engine_name, check):
        check(engine_name)

or all at once with :func:`check_engine`. Every check runs in a second or less on a
CPU. Inputs are NumPy arrays in float64: an engine converts them as ``odeplug.odeint``
and the programs receive them, and the tolerances follow the dtype the engine computes
in (float32 on JAX unless x64 is enabled). Programs are built from specs in the engine's
``default_dtype``; inference computes in float64 on every engine
(:data:`odeplug.extend.INFERENCE_DTYPE`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np

from ._protocols import (
    ROW_COUNTERS,
    ClassifierProgram,
    DensityProgram,
    FlowMatchingProgram,
    LatentProgram,
)
from ._series import row_grids
from ._solver_options import make_solve_config
from ._specs import (
    CNFHyper,
    CNFSpec,
    CNFTrainingSpec,
    Hyper,
    LatentHyper,
    LatentODESpec,
    ODENetSpec,
)
from .backend import Backend, available_backends, get_backend
from .exceptions import SolverError

__all__ = [
    "ENGINE_CHECKS",
    "check_classifier_program",
    "check_counters",
    "check_density_program",
    "check_engine",
    "check_flow_matching_program",
    "check_latent_program",
    "check_odeint_closed_forms",
    "check_registered",
    "check_solver_errors",
    "engine_checks",
    "parametrize_with_engine_checks",
    "registered_engines",
]

REFERENCE = "reference"


# ------------------------------------------------------------------ helpers


def _numpy(x) -> np.ndarray:
    """An engine's array as NumPy (torch tensors through ``detach``)."""
    detach = getattr(x, "detach", None)
    if callable(detach):
        x = detach().cpu()
    return np.asarray(x)


def _tolerance(dtype) -> float:
    """The relative precision to expect of a computation in ``dtype``."""
    return 1e-9 if np.dtype(dtype) == np.float64 else 2e-4


def _odeint(name: str, func, y0, t, args=None, **kwargs):
    from ._odeint import odeint

    return odeint(func, np.asarray(y0, np.float64), np.asarray(t, np.float64), args,
                  backend=name, return_stats=True, **kwargs)


def _decay(t, y, args):
    return -0.7 * y


def _oscillator(t, y, args):
    # y = [x, v]: dx/dt = v, dv/dt = -4 x (operators only: any array type runs it).
    return y @ args["A"]


def _time_dependent(t, y, args):
    return -2.0 * t * y


_Y0 = np.array([1.0, -2.0, 0.5])
_ARGS = {"A": np.array([[0.0, -4.0], [1.0, 0.0]])}
# (field, y0, times, args, exact solution at the times)
CLOSED_FORMS: dict[str, tuple[Callable, np.ndarray, np.ndarray, dict | None, Callable]] = {
    "decay": (_decay, _Y0, np.linspace(0.0, 2.0, 6), None,
              lambda t: np.exp(-0.7 * t)[:, None] * _Y0),
    "oscillator": (_oscillator, np.array([1.0, 0.0]), np.linspace(0.0, 3.0, 7), _ARGS,
                   lambda t: np.stack([np.cos(2 * t), -2 * np.sin(2 * t)], axis=-1)),
    "time_dependent": (_time_dependent, np.array([[1.0, 2.0], [0.5, -1.0]]),
                       np.linspace(0.0, 1.5, 4), None,
                       lambda t: np.exp(-(t ** 2))[:, None, None]
                       * np.array([[1.0, 2.0], [0.5, -1.0]])),
}


def _close(actual, expected, rtol, atol, what: str) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected " \
                                           f"{expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# --------------------------------------------------------------- the checks


def check_registered(name: str) -> None:
    """The engine is registered, available, a :class:`odeplug.Backend` of its name with
    a floating ``default_dtype``."""
    info = available_backends().get(name)
    assert info is not None, f"no engine {name!r} is registered"
    assert info.available, f"engine {name!r} is registered but not available"
    engine = get_backend(name)
    assert isinstance(engine, Backend), f"{name!r} is a {type(engine)}, not a Backend"
    assert engine.name == name, f"engine {name!r} calls itself {engine.name!r}"
    assert np.dtype(engine.default_dtype).kind == "f", engine.default_dtype


def check_odeint_closed_forms(name: str) -> None:
    """``odeint`` on closed forms: adaptive solves within tolerance, ``ys[0] == y0``,
    decreasing time, and fixed steps whose last one ends on ``t1``."""
    for i, (problem, (func, y0, t, args, exact)) in enumerate(CLOSED_FORMS.items()):
        ys, _ = _odeint(name, func, y0, t, args, rtol=1e-8, atol=1e-10)
        ys = _numpy(ys)
        tol = _tolerance(ys.dtype)
        assert ys.shape == (len(t),) + y0.shape, f"{problem}: ys of shape {ys.shape}"
        _close(ys[0], y0, tol, tol, f"{problem}: ys[0] is y0")
        _close(ys, exact(t), max(tol, 1e-6), max(tol, 1e-6) * 10,
               f"{problem}: dopri5 at rtol 1e-8 against the exact solution")
        if i == 1:  # one problem backwards (each solve compiles anew on JAX)
            back, _ = _odeint(name, func, exact(t)[-1], t[::-1], args, rtol=1e-8,
                              atol=1e-10)
            _close(_numpy(back)[::-1], exact(t), max(tol, 1e-6), max(tol, 1e-6) * 10,
                   f"{problem}: solved backwards in time")
    func, y0, _, _, exact = CLOSED_FORMS["decay"]
    t = np.array([0.0, 1.0])
    ys, stats = _odeint(name, func, y0, t, solver="rk4", step_size=0.3)
    # 1.0 / 0.3 is not an integer: three steps of 0.3 and a last one of 0.1.
    assert int(stats.n_steps) == 4, f"rk4 by 0.3 over [0, 1]: {stats.n_steps} steps, not 4"
    _close(_numpy(ys)[-1], exact(t)[-1], 1e-4, 1e-6, "rk4 by 0.3 ends on t1")


def check_counters(name: str) -> None:
    """The counters of a solve: ``rk4`` evaluates the field 4 times per step (and at
    most once more: JAX's engine, diffrax, counts one evaluation of its solver's
    initialisation) and rejects none; ``dopri5`` 6 times per attempted step, and at most
    2 more (the first evaluation, the initial step's choice); a failed step is counted
    in ``n_rejected``."""
    func, y0, t, args, _ = CLOSED_FORMS["oscillator"]
    _, stats = _odeint(name, func, y0, t, args, solver="rk4", step_size=0.1)
    assert int(stats.n_steps) == 30 and int(stats.n_rejected) == 0, stats
    assert 4 * 30 <= int(stats.nfe_forward) <= 4 * 30 + 1, \
        f"rk4: {stats.nfe_forward} evaluations for 30 steps, not 120"
    _, stats = _odeint(name, func, y0, t, args, rtol=1e-7, atol=1e-9)
    attempted = int(stats.n_steps) + int(stats.n_rejected)
    assert int(stats.n_steps) > 5, stats
    extra = int(stats.nfe_forward) - 6 * attempted
    assert 0 <= extra <= 2, f"dopri5: {stats.nfe_forward} evaluations for {attempted} " \
                            "attempted steps (6 each, and at most 2 more)"
    # A first step far too large for the tolerance is rejected, and counted.
    _, stats = _odeint(name, func, y0, t, args, rtol=1e-9, atol=1e-11,
                       options={"first_step": 2.0})
    assert int(stats.n_rejected) >= 1, f"a first step of 2.0 was not rejected: {stats}"


def _blow_up(t, y, args):
    return y * y  # y = 1 / (1 - t): infinite at t = 1


def _nan_field(t, y, args):
    return y * math.nan


def check_solver_errors(name: str) -> None:
    """Failures read the same on every engine: ``SolverError`` with ``reason``
    ``"max_num_steps"`` (the time reached and the solution so far),
    ``"step_size_underflow"`` (a blow-up), ``"non_finite"`` (a NaN field); a field
    that returns another shape is a ``ValueError``."""
    func, y0, t, args, exact = CLOSED_FORMS["oscillator"]
    try:
        _odeint(name, func, y0, t, args, rtol=1e-10, atol=1e-12, max_num_steps=50)
    except SolverError as error:
        assert error.reason == "max_num_steps", error.reason
        assert "max_num_steps=50 exceeded at t=" in str(error), str(error)
        k = len(error.ts)
        assert k >= 1 and error.t >= t[k - 1] and (k == len(t) or error.t < t[k]), \
            (error.t, error.ts)
        np.testing.assert_array_equal(np.asarray(error.ts, np.float64), t[:k])
        _close(np.asarray(error.ys), exact(t)[:k], 1e-5, 1e-5, "the solution so far")
    else:
        raise AssertionError("50 steps at rtol 1e-10 over [0, 3] did not raise SolverError")
    times = np.array([0.0, 0.5, 0.9, 2.0])
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            _odeint(name, _blow_up, np.array([1.0]), times)
    except SolverError as error:
        assert error.reason == "step_size_underflow", error.reason
        # At the singularity, to the precision of the engine's dtype.
        assert abs(error.t - 1.0) < 1e-4, error.t
        np.testing.assert_array_equal(np.asarray(error.ts, np.float64), times[:3])
    else:
        raise AssertionError("dy/dt = y**2 solved past its singularity at t = 1")
    try:
        _odeint(name, _nan_field, np.array([1.0, 2.0]), np.array([0.0, 1.0]), solver="rk4",
                step_size=0.1)
    except SolverError as error:
        # Fixed steps fail on the step that ends where the state is non-finite.
        assert error.reason == "non_finite", error.reason
        assert abs(error.t - 0.1) < 1e-6, error.t
        np.testing.assert_array_equal(np.asarray(error.ts, np.float64), [0.0])
    else:
        raise AssertionError("a NaN field did not raise SolverError")
    try:
        _odeint(name, lambda t, y, a: y[:2], y0=_Y0, t=np.array([0.0, 1.0]))
    except ValueError as error:
        assert "shape" in str(error), str(error)
    else:
        raise AssertionError("a field of another shape than the state was accepted")


# ---------------------------------------------------------------- programs

# Fixed steps: the same arithmetic on every engine, up to rounding.
_SOLVE = dict(solver="rk4", step_size=0.25)


def _hyper(cls=Hyper, **values):
    # Adam's first step is -lr * g / (|g| + epsilon): with epsilon much larger than the
    # gradient, a step moves each parameter by -(lr / epsilon) * g, so the step
    # compares the engines' gradients, not only their signs.
    return cls(solve=make_solve_config(**_SOLVE, adjoint=values.pop("adjoint", False)),
               learning_rate=10.0, epsilon=1e3, **values)


def _programs(name: str, spec, protocol: type):
    engine, reference = get_backend(name), get_backend(REFERENCE)
    program = engine.make_program(spec)
    assert isinstance(program, protocol), \
        f"{name}'s program of {type(spec).__name__} lacks methods of {protocol.__name__}: " \
        + ", ".join(m for m in dir(protocol) if not m.startswith("_")
                    and not hasattr(program, m))
    return engine, program, reference.make_program(spec)


def _check_training(name: str, program, reference, spec, batch, hyper, *,
                    metrics: Iterable[str] = ()) -> None:
    """Parameters round-trip; ``evaluate`` and one ``step`` give the reference's loss
    and metrics; the step moves the parameters as the reference's gradient does."""
    params = spec.init_params(3)
    state = program.init(params)
    back = program.get_params(state)
    assert set(back) == set(params), sorted(set(back) ^ set(params))
    for k, v in back.items():
        assert isinstance(v, np.ndarray) and v.shape == params[k].shape, k
        _close(v, params[k], 0, 0, f"get_params(init(params))[{k!r}]")
    tol = _tolerance(spec.dtype)
    ref_state = reference.init(params)
    expected = reference.evaluate(ref_state, batch, hyper)
    got = program.evaluate(state, batch, hyper)
    for key in ("loss", *metrics):
        assert key in got, f"evaluate's metrics {sorted(got)} lack {key!r}"
        _close(got[key], expected[key], 100 * tol, 100 * tol, f"evaluate()[{key!r}]")
    for key in ("nfe_forward", "nfe_backward"):
        assert key in got, f"evaluate's metrics {sorted(got)} lack {key!r}"
    new_state, step_metrics = program.step(state, batch, hyper)
    ref_new, ref_metrics = reference.step(ref_state, batch, hyper)
    _close(step_metrics["loss"], ref_metrics["loss"], 100 * tol, 100 * tol,
           "step()'s loss (of the parameters it started from)")
    assert step_metrics["nfe_forward"] is not None and step_metrics["nfe_forward"] > 0, \
        step_metrics
    moved, ref_moved = program.get_params(new_state), reference.get_params(ref_new)
    for k in params:
        # -(lr / epsilon) * gradient, to the engine's precision.
        delta = np.asarray(moved[k], np.float64) - params[k]
        ref_delta = np.asarray(ref_moved[k], np.float64) - params[k]
        scale = np.abs(ref_delta).max() + 1e-12
        _close(delta, ref_delta, 1e-3, 1e-3 * scale + 50 * tol * np.abs(params[k]).max(),
               f"one step's change of {k!r} (the gradient)")


def _check_rows(stats, n: int, what: str) -> None:
    assert set(stats) >= set(ROW_COUNTERS), f"{what}: counters {sorted(stats)}"
    for key in ROW_COUNTERS:
        value = np.asarray(stats[key])
        assert value.shape == (n,) and value.dtype.kind in "iu", \
            f"{what}: {key} of shape {value.shape} and dtype {value.dtype}"


def _check_inference(program, reference, params, entry: str, *inputs, hyper,
                     n_rows: int, rtol: float = 1e-8) -> None:
    got = getattr(program, entry)(params, *inputs, hyper)
    expected = getattr(reference, entry)(params, *inputs, hyper)
    got = got if isinstance(got, tuple) else (got,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected), f"{entry} returns {len(got)} values"
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        if isinstance(b, dict):
            _check_rows(a, n_rows, entry)
            for key in ("n_steps", "n_rejected"):
                np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]),
                                              err_msg=f"{entry}: {key} per row")
            # The same steps; JAX counts one more evaluation per solve (check_counters),
            # and a solve takes a step at least.
            extra = np.asarray(a["nfe_forward"]) - np.asarray(b["nfe_forward"])
            assert np.all((extra >= 0) & (extra <= np.maximum(1, np.asarray(b["n_steps"])))), \
                f"{entry}: nfe_forward per row {np.asarray(a['nfe_forward'])}, the " \
                f"reference's {np.asarray(b['nfe_forward'])}"
        else:
            assert isinstance(a, np.ndarray), f"{entry}[{i}] is a {type(a)}, not NumPy"
            _close(a, b, rtol, rtol, f"{entry}[{i}]")


def check_classifier_program(name: str) -> None:
    """The ODE-Net's program (``ClassifierProgram``) against the reference's."""
    dtype = get_backend(name).default_dtype
    spec = ODENetSpec(n_features=3, n_outputs=3, embed_dim=4, field_hidden=(5,),
                      augment_dim=1, embed_activation="relu", field_activation="tanh",
                      dtype=dtype)
    _, program, reference = _programs(name, spec, ClassifierProgram)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 3)).astype(dtype)
    y = np.arange(8, dtype=np.int64) % 3
    for adjoint in (False, True):
        _check_training(name, program, reference, spec, (X, y),
                        _hyper(alpha=0.1, adjoint=adjoint))
    params = spec.init_params(5)
    _check_inference(program, reference, params, "predict", X.astype(np.float64),
                     hyper=_hyper(), n_rows=len(X))
    adaptive = dataclasses.replace(_hyper(), solve=make_solve_config(
        "dopri5", rtol=1e-6, atol=1e-8, max_num_steps=1))
    try:
        program.predict(params, X.astype(np.float64), adaptive)
    except SolverError as error:
        assert error.reason == "max_num_steps", error.reason
    else:
        raise AssertionError("predict with max_num_steps=1 did not raise SolverError")


def check_density_program(name: str) -> None:
    """The CNF's program (``DensityProgram``) against the reference's: training with
    the exact trace, with Hutchinson's and RNODE's regularisers, and every inference
    entry point."""
    dtype = get_backend(name).default_dtype
    cnf = CNFSpec(n_features=2, field_hidden=(6,), field_activation="tanh", dtype=dtype)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((8, 2)).astype(dtype)
    probes = (2 * rng.integers(0, 2, (8, 2)) - 1).astype(dtype)
    for spec, batch in ((cnf, (X,)),
                        (CNFTrainingSpec(cnf, trace="hutchinson", regularize=True),
                         (X, probes))):
        _, program, reference = _programs(name, spec, DensityProgram)
        _check_training(name, program, reference, cnf, batch,
                        _hyper(CNFHyper, alpha=0.1, kinetic_energy=0.1, jacobian_norm=0.1))
    _, program, reference = _programs(name, cnf, DensityProgram)
    params, hyper = cnf.init_params(5), _hyper(CNFHyper)
    X64 = X.astype(np.float64)
    for entry in ("log_density", "transform", "inverse_transform"):
        _check_inference(program, reference, params, entry, X64, hyper=hyper, n_rows=len(X))


def check_flow_matching_program(name: str) -> None:
    """Flow matching's training program (``FlowMatchingProgram``) against the
    reference's."""
    from ._flow_matching import FlowMatchingSpec

    dtype = get_backend(name).default_dtype
    cnf = CNFSpec(n_features=2, field_hidden=(6,), field_activation="tanh", dtype=dtype)
    rng = np.random.default_rng(2)
    t = rng.uniform(0, 1, (8, 1)).astype(dtype)
    x_t, target = (rng.standard_normal((8, 2)).astype(dtype) for _ in range(2))
    _, program, reference = _programs(name, FlowMatchingSpec(cnf), FlowMatchingProgram)
    _check_training(name, program, reference, cnf, (t, x_t, target),
                    _hyper(CNFHyper, alpha=0.1))


def check_latent_program(name: str) -> None:
    """The latent ODE's program (``LatentProgram``) against the reference's, with the
    ODE-RNN encoder (an ODE between observations, and the latent ODE)."""
    dtype = get_backend(name).default_dtype
    rng = np.random.default_rng(3)
    n, n_obs, n_targets = 5, 4, 2
    # As an estimator builds them: each series' observations backwards in time (NaN
    # after its last), the decode times as spans from its first observation.
    obs = np.sort(rng.uniform(0.0, 2.0, (n, n_obs)), axis=1)
    lengths = np.array([2, 4, 3, 4, 1])
    enc_times = np.full((n, n_obs), np.nan)
    enc_values = np.zeros((n, n_obs, 2), dtype)
    enc_mask = np.zeros((n, n_obs, 2), bool)
    for i, k in enumerate(lengths):
        enc_times[i, :k] = obs[i, :k][::-1]
        enc_values[i, :k] = rng.standard_normal((k, 2))
        enc_mask[i, :k] = rng.random((k, 2)) < 0.8
        enc_mask[i, :k, 0] = True
    first = np.nanmin(enc_times, axis=1)
    dec_times = np.concatenate([np.nan_to_num(enc_times[:, ::-1] - first[:, None]),
                                2.0 + rng.uniform(0.0, 1.0, (n, n_targets))], axis=1)
    dec_values = rng.standard_normal((n, n_obs + n_targets, 2)).astype(dtype)
    dec_mask = np.concatenate([enc_mask[:, ::-1], rng.random((n, n_targets, 2)) < 0.9], 1)
    for encoder in ("ode_rnn",):
        spec = LatentODESpec(
            n_channels=2, latent_dim=3, encoder=encoder, encoder_hidden=4,
            encoder_field_hidden=(4,) if encoder == "ode_rnn" else (), field_hidden=(5,),
            decoder_hidden=(4,), encoder_activation="tanh", field_activation="softplus",
            decoder_activation="relu", fit_noise=True, dtype=dtype)
        _, program, reference = _programs(name, spec, LatentProgram)
        eps = rng.standard_normal((n, 3)).astype(dtype)
        batch = (enc_values, enc_mask, enc_times.astype(dtype), dec_times.astype(dtype),
                 dec_values, dec_mask, eps)
        _check_training(name, program, reference, spec, batch,
                        _hyper(LatentHyper, alpha=0.1, kl_weight=0.5),
                        metrics=("kl", "reconstruction"))
        params, hyper = spec.init_params(5), _hyper(LatentHyper)
        _check_inference(program, reference, params, "encode", enc_values.astype(np.float64),
                         enc_mask, enc_times, hyper=hyper, n_rows=n)
        z0 = rng.standard_normal((n, 3))
        grids, _ = row_grids(dec_times)  # 0, then each series' distinct times
        _check_inference(program, reference, params, "trajectory", z0, grids,
                         hyper=hyper, n_rows=n)
        _close(program.decode(params, z0, hyper), reference.decode(params, z0, hyper),
               1e-8, 1e-8, "decode")


# ------------------------------------------------------------ running them

ENGINE_CHECKS: tuple[Callable[[str], None], ...] = (
    check_registered,
    check_odeint_closed_forms,
    check_counters,
    check_solver_errors,
    check_classifier_program,
    check_density_program,
    check_flow_matching_program,
    check_latent_program,
)


def registered_engines() -> list[str]:
    """The names of the registered engines that are available in this environment."""
    return sorted(name for name, info in available_backends().items() if info.available)


def engine_checks(names: Iterable[str] | None = None
                  ) -> list[tuple[str, Callable[[str], None]]]:
    """``(engine name, check)`` pairs: every check of :data:`ENGINE_CHECKS` for each
    engine of ``names`` (default: :func:`registered_engines`)."""
    names = registered_engines() if names is None else list(names)
    return [(name, check) for name in names for check in ENGINE_CHECKS]


def parametrize_with_engine_checks(names: Iterable[str] | None = None):
    """A ``pytest.mark.parametrize`` over ``(engine_name, check)``, as scikit-learn's
    ``parametrize_with_checks``: the test calls ``check(engine_name)``.

    Parameters
    ----------
    names : iterable of str, optional
        Engines to check; default: every registered engine available here.
    """
    import pytest

    pairs = engine_checks(names)
    return pytest.mark.parametrize(
        "engine_name, check", pairs,
        ids=[f"{name}-{check.__name__}" for name, check in pairs])


def check_engine(name: str) -> None:
    """Run every check of :data:`ENGINE_CHECKS` on the engine ``name``; the first
    failure raises, naming the check."""
    for check in ENGINE_CHECKS:
        try:
            check(name)
        except Exception as error:
            raise AssertionError(f"engine {name!r} fails {check.__name__}: "
                                 f"{type(error).__name__}: {error}") from error

