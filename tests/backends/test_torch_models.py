"""The torch engine's ODE-Net program: the reference engine's computation on torch.

Same initial parameters, same batch: the loss, the gradients (Adam's first moments) and
the updated parameters agree with the reference program to float32 precision; predict
agrees, solves each row alone, and reports its cost per row.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchdiffeq")

from odeplug_backends.torch.models import make_program  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402

import odeplug  # noqa: E402
from odeplug import ODEClassifier, SolverError  # noqa: E402
from odeplug._solver_options import make_solve_config  # noqa: E402
from odeplug._specs import ODENetSpec, OptimizerSpec  # noqa: E402
from odeplug.reference.models import make_program as reference_program  # noqa: E402
from tests.backends.programs import assert_first_step_matches, make_batch  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

RK4 = dict(solver="rk4", step_size=0.25)
DOPRI5 = dict(solver="dopri5", rtol=1e-5, atol=1e-7)


def _spec(solve=None, *, activation="tanh", field_activation="tanh", augment_dim=2,
          field_hidden=(7,), alpha=0.5, learning_rate=1e-2, t1=1.0):
    solve = solve or make_solve_config(**RK4, adjoint=True)
    return ODENetSpec(n_features=5, n_outputs=3, embed_dim=6, field_hidden=field_hidden,
                      augment_dim=augment_dim, activation=activation,
                      field_activation=field_activation, t1=t1, solve=solve,
                      optimizer=OptimizerSpec(learning_rate=learning_rate, alpha=alpha),
                      dtype="float32")


def _one_step(spec, seed=0):
    """(loss, first moments, updated params) of one step on each engine."""
    params = spec.init_params(seed)
    batch = make_batch()
    out = {}
    for name, program in (("torch", make_program(spec)), ("reference", reference_program(spec))):
        state = program.init(params, seed)
        state, metrics = program.step(state, batch)
        if name == "torch":
            moments = {k: state["opt"].state[p]["exp_avg"].numpy().copy()
                       for k, p in state["params"].items()}
        else:
            moments = state["opt"]["m"]
        out[name] = metrics, moments, program.get_params(state)
    return out


# ------------------------------------------------------------- one training step


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
@pytest.mark.parametrize("activation, field_activation", [
    ("tanh", "tanh"), ("relu", "softplus"), ("logistic", "identity"), ("softplus", "logistic"),
])
def test_step_matches_reference_rk4(adjoint, activation, field_activation):
    # Fixed steps on the same grid: the same arithmetic up to float32 rounding.
    spec = _spec(make_solve_config(**RK4, adjoint=adjoint), activation=activation,
                 field_activation=field_activation)
    out = _one_step(spec)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-6,
                              moment_rtol=1e-4, moment_atol=1e-5, param_rtol=1e-5,
                              param_atol=1e-6)


@pytest.mark.parametrize("field_hidden", [(), (5, 4)], ids=["linear-field", "two-hidden"])
def test_step_matches_reference_field_depths(field_hidden):
    spec = _spec(make_solve_config(**RK4, adjoint=True), field_hidden=field_hidden)
    out = _one_step(spec)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-6,
                              moment_rtol=1e-4, moment_atol=1e-5, param_rtol=1e-5,
                              param_atol=1e-6)


@pytest.mark.parametrize("adjoint", [True, False], ids=["adjoint", "backprop"])
def test_step_matches_reference_dopri5(adjoint):
    spec = _spec(make_solve_config(**DOPRI5, adjoint=adjoint), augment_dim=0,
                 field_hidden=(8, 8))
    out = _one_step(spec)
    assert_first_step_matches(out["torch"], out["reference"], spec, loss_rtol=1e-5,
                              moment_rtol=1e-3, moment_atol=1e-3, param_rtol=1e-4,
                              param_atol=1e-5)
    metrics = out["torch"][0]
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0


def test_several_steps_track_reference():
    spec = _spec(make_solve_config(**DOPRI5, adjoint=True), learning_rate=1e-3)
    params = spec.init_params(3)
    X, y = make_batch(40, seed=5)
    programs = [make_program(spec), reference_program(spec)]
    states = [p.init(params, 3) for p in programs]
    for i in range(5):
        batch = (X[8 * i: 8 * i + 8], y[8 * i: 8 * i + 8])
        results = [p.step(s, batch) for p, s in zip(programs, states, strict=True)]
        states = [state for state, _ in results]
        losses = [metrics["loss"] for _, metrics in results]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    final = [p.get_params(s) for p, s in zip(programs, states, strict=True)]
    for key in final[1]:
        np.testing.assert_allclose(final[0][key], final[1][key], rtol=1e-3, atol=1e-5)


def test_metrics_and_state():
    spec = _spec(make_solve_config("dopri5", rtol=1e-3, atol=1e-4, adjoint=True))
    program = make_program(spec)
    params = spec.init_params(0)
    state = program.init(params, 0)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in state["params"].values())
    assert isinstance(state["opt"], torch.optim.Adam)
    assert state["opt"].defaults["weight_decay"] == 0  # the L2 penalty is in the loss
    params["embed.weight"][:] = 7.0  # init copied the caller's arrays
    assert not torch.any(state["params"]["embed.weight"] == 7.0)
    for _ in range(2):  # the first solve is checked, the next is not: same counters
        state, metrics = program.step(state, make_batch())
        assert set(metrics) == {"loss", "nfe_forward", "nfe_backward"}
        assert all(isinstance(metrics[k], int) and metrics[k] > 0
                   for k in ("nfe_forward", "nfe_backward"))
    got = program.get_params(state)
    assert set(got) == set(spec.param_shapes())
    got["head.bias"][:] = 1e3  # a copy
    assert not torch.any(state["params"]["head.bias"] == 1e3)


def test_non_finite_parameters_raise_solver_error():
    # Diverged parameters give a non-finite state: SolverError (the training loop turns
    # it into TrainingDivergedError), also on the unchecked solves after the first.
    for solver in (dict(DOPRI5), dict(RK4)):
        spec = _spec(make_solve_config(**solver, adjoint=True))
        program = make_program(spec)
        state = program.init(spec.init_params(0), 0)
        state, _ = program.step(state, make_batch())
        with torch.no_grad():
            state["params"]["embed.bias"][0] = float("nan")
        with pytest.raises(SolverError):
            program.step(state, make_batch())


def test_init_checks_shapes_and_other_specs_are_refused():
    spec = _spec()
    params = spec.init_params(0)
    params["head.weight"] = params["head.weight"][:, :2]
    with pytest.raises(ValueError, match="shapes"):
        make_program(spec).init(params, 0)
    with pytest.raises(NotImplementedError, match="no program for"):
        make_program(object())
    with pytest.raises(NotImplementedError):
        odeplug.get_backend("torch").make_program(object())


# ------------------------------------------------------------------------ predict


@pytest.mark.parametrize("solver", [RK4, DOPRI5], ids=["rk4", "dopri5"])
def test_predict_matches_reference(solver):
    solve = make_solve_config(**solver, adjoint=True)
    spec = _spec(solve)
    params = spec.init_params(2)
    X, _ = make_batch(30, seed=4)
    log_proba, stats = make_program(spec).predict(params, X, solve)
    ref_log_proba, ref_stats = reference_program(spec).predict(params, X, solve)
    assert log_proba.dtype == np.float32 and log_proba.shape == (30, 3)
    np.testing.assert_allclose(log_proba, ref_log_proba, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.exp(log_proba).sum(axis=1), 1.0, rtol=1e-5)
    assert set(stats) == {"nfe_forward", "n_steps", "n_rejected"}
    for key, values in stats.items():
        assert values.shape == (30,) and values.dtype.kind == "i", key
    assert np.all(stats["nfe_forward"] > 0) and np.all(stats["n_steps"] > 0)
    if solver is RK4:
        assert np.all(stats["n_steps"] == 4) and np.all(stats["n_rejected"] == 0)
    else:
        # The same controller: the same steps, but for a rare rounding flip.
        assert np.mean(stats["n_steps"] == ref_stats["n_steps"]) >= 0.9


def test_predict_rows_are_independent():
    solve = make_solve_config("dopri5", rtol=1e-3, atol=1e-4)
    spec = _spec(solve)
    # A stronger field: rows need different numbers of steps (32 to 50 evaluations),
    # which must not leak into each other.
    params = {k: v * 3 if k.startswith("field.") else v
              for k, v in spec.init_params(0).items()}
    X, _ = make_batch(25, seed=7)
    program = make_program(spec)
    full, stats = program.predict(params, X, solve)
    assert len(set(stats["nfe_forward"].tolist())) > 2
    for rows in ([0], [3], [2, 3, 4], list(range(24, -1, -2))):
        part, part_stats = program.predict(params, X[rows], solve)
        np.testing.assert_array_equal(part, full[rows])  # bit for bit
        for key in stats:
            np.testing.assert_array_equal(part_stats[key], stats[key][rows])


def test_odeint_rows_solves_each_row_alone():
    from odeplug_backends.torch.solve import odeint, odeint_rows

    def field(t, y, args):
        return -args["k"] * y * (1 + t) + torch.sin(3 * y)

    config = make_solve_config("dopri5", rtol=1e-6, atol=1e-8, adjoint=True)
    y0 = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)
    k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    for t in ([0.0, 0.5, 1.0], [1.0, 0.2]):  # increasing and decreasing grids
        ys, counters = odeint_rows(field, y0, t, {"k": k}, config)
        assert ys.shape == (len(t), 3, 2) and not ys.requires_grad
        for i in range(3):
            alone, stats = odeint(field, y0[i : i + 1], t, {"k": k.detach()}, config)
            torch.testing.assert_close(ys[:, i : i + 1], alone, rtol=0, atol=0)
            assert counters["nfe_forward"][i] == stats.nfe_forward
            assert counters["n_steps"][i] == stats.n_steps
            assert counters["n_rejected"][i] == stats.n_rejected
    assert len(set(counters["nfe_forward"].tolist())) > 1  # adaptive per row


def test_predict_reads_the_solver_settings_and_accepts_float64_params():
    spec = _spec(make_solve_config("dopri5", rtol=1e-3, atol=1e-4, adjoint=True))
    params = {k: v.astype(np.float64) for k, v in spec.init_params(0).items()}
    X = make_batch(10)[0] * 5
    program = make_program(spec)
    loose = program.predict(params, X, make_solve_config("dopri5", rtol=1e-1, atol=1e-1))
    tight = program.predict(params, X, make_solve_config("dopri5", rtol=1e-7, atol=1e-8))
    assert tight[1]["nfe_forward"].sum() > loose[1]["nfe_forward"].sum()
    assert tight[0].dtype == np.float32
    empty, empty_stats = program.predict(params, X[:0], spec.solve)
    assert empty.shape == (0, 3) and empty_stats["nfe_forward"].shape == (0,)
    with pytest.raises(ValueError, match="no solver 'tsit5'"):
        program.predict(params, X, make_solve_config("tsit5", rtol=1e-3, atol=1e-4))


# --------------------------------------------------------------------- estimator


def _moons_classifier(**kwargs):
    return ODEClassifier(backend="torch", hidden_layer_sizes=(8, 16), max_iter=100,
                         learning_rate_init=0.01, random_state=0, **kwargs)


def test_classifier_fits_moons():
    X, y = make_moons(100, noise=0.1, random_state=0)
    clf = _moons_classifier().fit(X, y)
    assert clf.backend_ == "torch"
    assert clf.score(X, y) > 0.9
    assert clf.nfe_["forward"] > 0 and clf.nfe_["backward"] > 0
    assert all(v.dtype == np.float32 for v in clf.params_.values())
    stats = clf.inference_stats(X[:5])
    assert stats["nfe_forward"].shape == (5,) and np.all(stats["nfe_forward"] > 0)
    # A model fitted on torch predicts on the reference engine.
    reference = np.exp(clf.set_params(backend="reference").predict_log_proba(X))
    np.testing.assert_allclose(reference, clf.set_params(backend="torch").predict_proba(X),
                               atol=1e-4)


def test_same_random_state_same_model():
    X, y = make_moons(60, noise=0.2, random_state=1)
    first = ODEClassifier(backend="torch", hidden_layer_sizes=(4, 8), max_iter=5,
                          random_state=3).fit(X, y)
    proba = first.predict_proba(X)
    params = {k: v.copy() for k, v in first.params_.items()}
    first.fit(X, y)  # refit
    second = ODEClassifier(backend="torch", hidden_layer_sizes=(4, 8), max_iter=5,
                           random_state=3).fit(X, y)
    for clf in (first, second):
        np.testing.assert_array_equal(clf.predict_proba(X), proba)
        for key, value in params.items():
            np.testing.assert_array_equal(clf.params_[key], value)


def test_sklearn_subset_invariance():
    from sklearn.utils.estimator_checks import check_methods_subset_invariance

    check_methods_subset_invariance(
        "ODEClassifier", ODEClassifier(backend="torch", hidden_layer_sizes=(4, 8), max_iter=3,
                                       random_state=0))


# ------------------------------------------------------------------------ threads


def test_limit_threads_restores_torch_threads():
    engine = odeplug.get_backend("torch")
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    try:
        with engine.limit_threads(other):
            assert torch.get_num_threads() == other
        assert torch.get_num_threads() == before
        with pytest.raises(RuntimeError, match="inside"):
            with engine.limit_threads(other):
                raise RuntimeError("inside")
        assert torch.get_num_threads() == before
        with engine.limit_threads(before):
            assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_backend_import_does_not_import_torch():
    code = ("import sys, odeplug, odeplug_backends.torch as b; b.TorchBackend(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
