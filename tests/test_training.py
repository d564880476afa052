"""The training loop on its own, with a scripted program: which parameters it keeps when a
step diverges, explodes, fails or is interrupted, what it records, and its batches."""

from __future__ import annotations

import io
import math
import sys

import numpy as np
import pytest

from odeplug import SolverError, TrainingDivergedError
from odeplug._solver_options import make_solve_config
from odeplug._specs import Hyper
from odeplug._training import (
    ADAPTIVE_FACTOR,
    EXPLOSION_FACTOR,
    MIN_ADAPTIVE_RATE,
    TrainingHistory,
    epoch_batches,
    train,
)

HYPER = Hyper(solve=make_solve_config(), learning_rate=1e-2)


class Scripted:
    """A program whose parameter is a step counter and whose losses follow a script.

    ``losses[k]`` is the loss reported by step ``k`` (from 0), the loss of the parameters
    after ``k`` steps; an exception instance in the script is raised by that step.
    ``evaluate`` reports ``final`` (the loss of the parameters after the last step).
    """

    def __init__(self, losses, final=0.5, metrics=None):
        self.losses = list(losses)
        self.final = final
        self.metrics = metrics or {}
        self.batches = []
        self.learning_rates = []  # of every step

    def init(self, params):
        return {"w": np.array(0.0)}

    def step(self, state, batch, hyper):
        k = int(state["w"])
        self.batches.append(batch)
        self.learning_rates.append(hyper.learning_rate)
        outcome = self.losses[k]
        if isinstance(outcome, BaseException):
            raise outcome
        return {"w": np.array(k + 1.0)}, {"loss": outcome, "nfe_forward": 10 + k,
                                         "nfe_backward": None, **self.metrics}

    def evaluate(self, state, batch, hyper):
        if isinstance(self.final, BaseException):
            raise self.final
        return {"loss": self.final, "nfe_forward": 1, "nfe_backward": None}

    def get_params(self, state):
        return {"w": state["w"].copy()}


def run(program, n_samples=8, batch_size=4, max_iter=3, history=None, **kwargs):
    history = TrainingHistory() if history is None else history
    X = np.arange(n_samples, dtype=float)[:, None]
    kwargs = {"tol": 0.0, "n_iter_no_change": 100, **kwargs}
    outcome = train(program, program.init(None), (X,), history, hyper=HYPER,
                    max_iter=max_iter, batch_size=batch_size,
                    rng=np.random.RandomState(0), **kwargs)
    return outcome, history


def test_records_every_metric_per_epoch():
    program = Scripted([4.0, 2.0, 3.0, 1.0], metrics={"kl": 0.25})
    outcome, history = run(program, max_iter=2)
    assert history.curves["loss"] == [3.0, 2.0]  # means of two batches per epoch
    assert history.curves["nfe_forward"] == [10.5, 12.5]
    assert history.curves["nfe_backward"] == [None, None]
    assert history.curves["kl"] == [0.25, 0.25]
    assert history.curves["learning_rate"] == [1e-2, 1e-2]
    assert history.n_iter == 2 and history.t_ == 16
    assert outcome.params == {"w": 4.0} and not outcome.converged


def test_a_non_finite_loss_keeps_the_parameters_it_last_verified():
    # Step 3's loss (of the parameters after 3 steps) is NaN: the last parameters with a
    # finite loss are those after 2 steps.
    program = Scripted([4.0, 2.0, 3.0, math.nan, 1.0])
    with pytest.raises(TrainingDivergedError, match="the loss became nan") as info:
        run(program)
    assert info.value.params == {"w": 2.0}
    assert info.value.epoch == 2


def test_an_exploding_loss_is_divergence():
    best = 2.0
    just_below = best + EXPLOSION_FACTOR * best - 1.0
    run(Scripted([4.0, best, just_below, 1.0, 1.0, 1.0]))  # no error below the bound
    with pytest.raises(TrainingDivergedError, match="exploded to 1e\\+07") as info:
        run(Scripted([4.0, best, 1e7, 1.0]))
    assert info.value.params == {"w": 1.0}


def test_a_failed_solve_in_the_first_step_verifies_nothing():
    error = SolverError("max_num_steps=5 exceeded at t=0.3", reason="max_num_steps", t=0.3)
    with pytest.raises(TrainingDivergedError,
                       match="the ODE solve of a training step failed") as info:
        run(Scripted([error]))
    assert info.value.params is None
    assert isinstance(info.value.__cause__, SolverError)


def test_the_last_step_is_verified_after_the_loop():
    # A fit that ends right after an update that broke the parameters: no later step
    # reports it, the final evaluation does.
    with pytest.raises(TrainingDivergedError, match="after the last step") as info:
        run(Scripted([1.0, 1.0, 1.0, 1.0, 1.0, 1.0], final=math.inf))
    assert info.value.params == {"w": 5.0}
    outcome, _ = run(Scripted([1.0] * 6, final=0.9))
    assert outcome.params == {"w": 6.0}


def test_ctrl_c_before_an_epoch_completed_propagates():
    with pytest.raises(KeyboardInterrupt):
        run(Scripted([1.0, KeyboardInterrupt()]))


def test_ctrl_c_after_an_epoch_keeps_the_verified_parameters():
    program = Scripted([4.0, 2.0, 3.0, KeyboardInterrupt()])
    outcome, history = run(program)
    assert outcome.interrupted and "epoch 2" in outcome.interrupted
    assert outcome.params == {"w": 2.0}  # the loss of w=3 was never computed
    assert history.n_iter == 1  # only completed epochs are recorded


def test_early_stopping_keeps_the_best_scoring_parameters():
    scores = iter([0.2, 0.9, 0.5, 0.4])
    program = Scripted([1.0] * 8)
    outcome, history = run(program, max_iter=4, validation_score=lambda p: next(scores))
    assert history.validation_scores == [0.2, 0.9, 0.5, 0.4]
    assert outcome.params == {"w": 4.0}  # after epoch 2 (two steps per epoch)
    assert history.best_validation_score == 0.9


def test_a_failed_validation_solve_is_divergence():
    def score(params):
        raise SolverError("step size underflow at t=0.5", reason="step_size_underflow", t=0.5)

    with pytest.raises(TrainingDivergedError, match="validation split failed"):
        run(Scripted([1.0] * 8), validation_score=score)


def test_batches_have_one_size_and_cover_every_sample():
    rng = np.random.RandomState(3)
    batches = epoch_batches(10, 4, rng)
    assert [len(b) for b in batches] == [4, 4, 4]
    assert set(np.concatenate(batches)) == set(range(10))
    assert [len(b) for b in epoch_batches(3, 200, rng)] == [3]


def test_noise_is_drawn_per_batch_from_the_generator():
    program = Scripted([1.0] * 6)
    run(program, max_iter=1, draw_noise=lambda rng, n: (rng.normal(size=(n, 2)),))
    first, second = program.batches
    assert first[1].shape == (4, 2) and not np.array_equal(first[1], second[1])


def test_prepare_batch_makes_what_the_step_takes_from_the_minibatch():
    # Flow matching's batches: a function of the minibatch (after draw_noise) and draws
    # from the same generator; the final evaluate gets one made the same way.
    seen = []

    def prepare(rng, batch):
        seen.append(batch)
        X, noise = batch
        return (X + noise, rng.uniform(size=len(X)))

    program = Scripted([1.0] * 6)
    run(program, max_iter=1, draw_noise=lambda rng, n: (rng.normal(size=(n, 1)),),
        prepare_batch=prepare)
    assert len(seen) == 3  # two steps and the final evaluate
    for (X, noise), (shifted, drawn) in zip(seen, program.batches, strict=False):
        np.testing.assert_array_equal(shifted, X + noise)
        assert drawn.shape == (4,)
    assert not np.array_equal(program.batches[0][1], program.batches[1][1])


# ------------------------------------------------------------ step-size schedules


def test_a_constant_step_size_stops_at_the_first_plateau():
    program = Scripted([1.0] * 40)  # one batch per epoch, no progress after epoch 1
    outcome, history = run(program, n_samples=4, max_iter=40, n_iter_no_change=2)
    # Epoch 1 improves on inf; epochs 2, 3, 4 do not: more than 2 without progress.
    assert history.n_iter == 4 and outcome.converged
    assert set(program.learning_rates) == {1e-2}


def test_warmup_epochs_are_no_plateau_and_the_lowest_loss_starts_after_them():
    # KL annealing: the loss rises over the 5 warm-up epochs, then falls below the
    # warm-up's last but never to its first (lowest) value.
    losses = [1.0, 2.0, 3.0, 4.0, 5.0, 4.5, 4.0, 3.5, 3.5, 3.5, 3.5]
    stopped, plain = run(Scripted(losses), n_samples=4, max_iter=11, n_iter_no_change=2)
    assert plain.n_iter == 4 and stopped.converged  # read as a plateau after epoch 1
    outcome, history = run(Scripted(losses), n_samples=4, max_iter=11, n_iter_no_change=2,
                           warmup_epochs=5)
    # Epochs 6-8 improve on the first loss after the warm-up; 9, 10, 11 do not.
    assert history.n_iter == 11 and outcome.converged
    assert history.best_loss == 3.5


def test_the_adaptive_schedule_divides_the_step_size_on_each_plateau():
    program = Scripted([1.0] * 40)
    outcome, history = run(program, n_samples=4, max_iter=40, n_iter_no_change=2,
                           learning_rate="adaptive")
    rates = history.curves["learning_rate"]
    assert rates == program.learning_rates  # what the steps were given
    # Each plateau of 3 epochs divides the step by 5, instead of stopping, until it
    # fires at a step of 1e-6 or less (scikit-learn's rule): 1e-2 / 5**k > 1e-6 for
    # k <= 5, so six plateaus divide it and the seventh stops.
    expected = [1e-2] * 4
    for k in range(1, 7):
        expected += [1e-2 / ADAPTIVE_FACTOR**k] * 3
    np.testing.assert_allclose(rates, expected, rtol=1e-12)
    assert rates[-1] <= MIN_ADAPTIVE_RATE < rates[-4]
    assert outcome.converged


def test_progress_resets_the_plateau_count_under_the_adaptive_schedule():
    # Improving every epoch: the step size never changes.
    program = Scripted([10.0 - k for k in range(8)])
    _, history = run(program, n_samples=4, max_iter=8, n_iter_no_change=1,
                     learning_rate="adaptive")
    assert history.curves["learning_rate"] == [1e-2] * 8


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="learning_rate must be one of"):
        run(Scripted([1.0]), learning_rate="invscaling")


# ------------------------------------------------------------------ progress display


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_off_a_terminal_is_one_line_per_epoch(capsys):
    # A log file gets scikit-learn's MLP lines, not a bar's carriage returns.
    program = Scripted([4.0, 2.0, 3.0, 1.0, 2.0, 2.0])
    run(program, verbose=1, desc="Model")
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines() == [
        "Model: compiling the first step",
        "Iteration 1, loss = 3.00000000, nfe = 10.5",
        "Iteration 2, loss = 2.00000000, nfe = 12.5",
        "Iteration 3, loss = 2.00000000, nfe = 14.5",
    ]


def test_progress_bar_says_compiling_and_stays_after_the_fit(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run(Scripted([1.0] * 6), verbose=1, desc="Model")
    frames = terminal.getvalue().split("\r")
    assert any("compiling" in frame for frame in frames)
    # Kept on screen (verbose=1 used to erase it): the last frame is the full bar.
    assert "3/3" in frames[-1] and frames[-1].endswith("\n")


# ------------------------------------------------------------- divergence messages


def _message(script) -> str:
    with pytest.raises(TrainingDivergedError) as info:
        run(Scripted(script))
    return str(info.value)


def test_the_advice_fits_the_cause():
    # Nothing updated yet: the step size cannot be the cause, the data can.
    first = _message([math.nan])
    assert "check the scale of the data" in first and "learning_rate_init" not in first
    # After updates, a non-finite loss is the step size's (or the penalty's) doing.
    later = _message([1.0, math.nan])
    assert "smaller learning_rate_init" in later and "scale of the data" not in later
    budget = SolverError("budget", reason="max_num_steps", t=0.5)
    first = _message([budget])
    assert "Raise max_num_steps, or loosen rtol/atol" in first
    assert "learning_rate_init" not in first
    later = _message([1.0, budget])
    assert "Raise max_num_steps" in later and "learning_rate_init" in later


def test_a_failed_solve_reads_the_same_whatever_the_engine_wrote():
    # The cause is worded from the error's reason and time, not from its engine's text.
    messages = {_message([SolverError(text, reason="step_size_underflow", t=0.25)])
                for text in ("the training solve failed: step size underflow at t=0.25",
                             "step size underflow (h=1e-17) at t=0.25 (solving from 0 "
                             "to 1)")}
    assert messages == {
        "training diverged at epoch 1: the ODE solve of a training step failed: the step "
        "size fell below what the time can resolve at t=0.25. Nothing was updated yet: "
        "check the scale of the data (values or times of very large magnitude)."}


def test_progress_says_compiling_once_per_fit_not_per_partial_fit(capsys):
    history = TrainingHistory()
    for _ in range(2):  # two calls of partial_fit: one epoch each
        run(Scripted([1.0] * 8), max_iter=1, history=history, verbose=1, desc="Model")
    assert capsys.readouterr().err.splitlines() == [
        "Model: compiling the first step",
        "Iteration 1, loss = 1.00000000, nfe = 10.5",
        "Iteration 2, loss = 1.00000000, nfe = 10.5",
    ]
