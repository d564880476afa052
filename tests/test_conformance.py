"""The conformance kit (:mod:`odeplug.testing`) on every registered engine, on a fourth
engine registered here (the kit runs on it unchanged), and on broken engines (each
check can fail); the public extension module (:mod:`odeplug.extend`)."""

from __future__ import annotations

import doctest
import subprocess
import sys

import numpy as np
import pytest

import odeplug
import odeplug.extend
from odeplug import backend as registry
from odeplug.reference import ReferenceBackend
from odeplug.testing import (
    ENGINE_CHECKS,
    check_classifier_program,
    check_counters,
    check_engine,
    check_odeint_closed_forms,
    check_solver_errors,
    engine_checks,
    parametrize_with_engine_checks,
    registered_engines,
)


@parametrize_with_engine_checks()
def test_every_registered_engine_conforms(engine_name, check):
    check(engine_name)


def test_the_kit_covers_every_registered_engine():
    # Not a hard-coded list: what the registry has (entry points and code).
    names = registered_engines()
    assert names == sorted(name for name, info in odeplug.available_backends().items()
                           if info.available)
    assert "reference" in names
    assert {name for name, _ in engine_checks()} == set(names)
    assert len(engine_checks(["reference"])) == len(ENGINE_CHECKS)


# ------------------------------------------------------------- a fourth engine


@pytest.fixture
def registered():
    """Register engines for one test; the registry is restored after it."""
    registry.registered_backends()
    saved = (dict(registry._targets), dict(registry._instances), dict(registry._classes))

    def register(cls):
        odeplug.register_backend(cls.name, cls)
        return cls.name

    yield register
    for table, before in zip((registry._targets, registry._instances, registry._classes),
                             saved, strict=True):
        table.clear()
        table.update(before)


class Toy(ReferenceBackend):
    """A fourth engine: the reference one under another name (a third party's engine
    would bring its own ``odeint`` and programs)."""

    name = "toy"


def test_a_fourth_engine_runs_the_kit_unchanged(registered):
    name = registered(Toy)
    assert name in registered_engines()
    assert {n for n, _ in engine_checks()} >= {"reference", name}
    check_engine(name)


class DriftingSolve(ReferenceBackend):
    """Solutions off by 1e-3 after the first output time."""

    name = "drifting"

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        ys, stats = super().odeint(func, y0, t, args, config, count_backward=count_backward)
        return ys + 1e-3 * (np.arange(len(ys)) > 0).reshape((-1,) + (1,) * (ys.ndim - 1)), \
            stats


class MiscountingSolve(ReferenceBackend):
    """Counts one evaluation per step only."""

    name = "miscounting"

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        ys, stats = super().odeint(func, y0, t, args, config, count_backward=count_backward)
        return ys, type(stats)(nfe_forward=stats.n_steps, nfe_backward=stats.nfe_backward,
                               n_steps=stats.n_steps, n_rejected=stats.n_rejected)


class SilentFailure(ReferenceBackend):
    """Returns what it has instead of raising SolverError."""

    name = "silent"

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        try:
            return super().odeint(func, y0, t, args, config, count_backward=count_backward)
        except odeplug.SolverError as error:
            ys = np.concatenate([np.asarray(error.ys),
                                 np.full((len(t) - len(error.ts),) + np.shape(y0), np.nan)])
            return ys, None


class SkewedPrediction(ReferenceBackend):
    """An ODE-Net program whose log-probabilities are off by 1e-4."""

    name = "skewed"

    def make_program(self, spec):
        program = super().make_program(spec)
        if hasattr(program, "predict"):
            predict = program.predict

            def skewed(params, X, hyper):
                log_proba, stats = predict(params, X, hyper)
                return log_proba + 1e-4, stats

            program.predict = skewed
        return program


class NoAlphaStep(ReferenceBackend):
    """An ODE-Net program whose step ignores the L2 penalty."""

    name = "no_alpha"

    def make_program(self, spec):
        program = super().make_program(spec)
        if hasattr(program, "predict"):
            step = program.step

            def without_alpha(state, batch, hyper):
                import dataclasses

                return step(state, batch, dataclasses.replace(hyper, alpha=0.0))

            program.step = without_alpha
        return program


@pytest.mark.parametrize("engine, check, message", [
    (DriftingSolve, check_odeint_closed_forms, "against the exact solution"),
    (MiscountingSolve, check_counters, "evaluations for 30 steps"),
    (SilentFailure, check_solver_errors, "did not raise SolverError"),
    (SkewedPrediction, check_classifier_program, "predict"),
    (NoAlphaStep, check_classifier_program, "step"),
], ids=lambda v: getattr(v, "name", getattr(v, "__name__", "")))
def test_a_broken_engine_fails_the_check(registered, engine, check, message):
    name = registered(engine)
    with pytest.raises(AssertionError, match=message):
        check(name)
    with pytest.raises(AssertionError, match=f"engine '{name}' fails {check.__name__}"):
        check_engine(name)


# ------------------------------------------------------- the extension module


def test_the_extension_module_is_public_and_light():
    for name in odeplug.extend.__all__:
        assert getattr(odeplug.extend, name) is not None, name
    out = subprocess.run(
        [sys.executable, "-c", "import sys, odeplug.extend, odeplug.testing; "
         "print(sorted(m for m in ('torch', 'jax', 'pytest') if m in sys.modules))"],
        capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_the_extension_module_examples_run(registered):
    result = doctest.testmod(odeplug.extend, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_the_protocols_name_every_method_the_estimators_call():
    from odeplug.extend import ClassifierProgram, DensityProgram, LatentProgram

    for protocol, methods in (
            (ClassifierProgram, {"init", "step", "evaluate", "get_params", "predict"}),
            (DensityProgram, {"init", "step", "evaluate", "get_params", "velocity",
                              "log_density", "transform", "inverse_transform"}),
            (LatentProgram, {"init", "step", "evaluate", "get_params", "encode",
                             "decode", "trajectory"})):
        assert methods <= set(dir(protocol)), protocol
