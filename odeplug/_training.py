"""The training loop, written once for every estimator and engine.

Epochs of shuffled minibatches drawn from the estimator's ``random_state``; each
minibatch is one call of the program's ``step``. The loop records every metric the
program returns (epoch means), the validation scores (early stopping) and the best
parameters, and guarantees that the parameters it hands back can be used:

* **Verified parameters.** A step returns the loss of the parameters it *started* from,
  so parameters are known to be good only once a later step (or the final
  :meth:`evaluate`) has computed a finite, sane loss from them. The loop keeps the last
  verified parameters and only ever hands those back.
* **Divergence** (:class:`~odeplug.TrainingDivergedError`): a non-finite loss, a loss
  that explodes relative to the best one seen (:data:`EXPLOSION_FACTOR`), or a failed
  solve in a step or in the validation score. The error carries the last verified
  parameters; the estimator decides what to keep. Its message words the cause the same
  on every engine (a failed solve by its ``reason``, not by the engine's message) and
  gives the advice that fits it: the learning rate only once updates were made, the
  data's scale when the very first loss or solve failed, the step budget or tolerances
  for a failed solve.
* **Step-size schedule** (``learning_rate``, scikit-learn's MLP vocabulary, applied to
  Adam): ``"constant"`` keeps ``learning_rate_init``; ``"adaptive"`` divides the step
  size by :data:`ADAPTIVE_FACTOR` each time the tolerance rule fires, instead of
  stopping, and stops once it fires at a step size of :data:`MIN_ADAPTIVE_RATE` or less
  (as scikit-learn's ``SGDOptimizer.trigger_stopping``). The step size of each epoch is
  the curve ``learning_rate``.
* **Ctrl-C**: after at least one completed epoch, the loop stops and reports it, with the
  parameters at the end of the last completed epoch (verified by a loss, computed if no
  step did yet) or, with early stopping, the best-scoring ones: parameters, curves and
  counts describe one moment. The training state has moved on from them, so the outcome
  is not ``resumable``: a warm start continues from the parameters kept. Before any
  epoch completed, ``KeyboardInterrupt`` propagates and the estimator restores itself
  as it was.
* **One epoch at a time**: an epoch enters the history (curves, counts, validation
  score) at once, after everything in it that can fail or be interrupted.

Batches all have the same size: the last batch of an epoch is filled up with the first
samples of the epoch's order, so that a compiled (JAX) step serves every batch of a fit
instead of compiling a second time for a shorter last batch. A sample is then seen at
most twice in an epoch; ``t_`` counts the rows processed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._progress import epoch_progress
from .exceptions import SolverError, TrainingDivergedError

__all__ = ["ADAPTIVE_FACTOR", "EXPLOSION_FACTOR", "LEARNING_RATE_SCHEDULES",
           "MIN_ADAPTIVE_RATE", "TrainingHistory", "TrainingOutcome", "train"]

LEARNING_RATE_SCHEDULES = ("constant", "adaptive")
# scikit-learn's "adaptive" schedule: divide by 5 on a plateau, stop at 1e-6. Adam's
# update is scale-free in the gradient, so its step size is the parameters' step: a
# plateau at a constant step is Adam's noise floor (the minibatch gradient's noise times
# the step), and a fifth of the step lowers that floor without retraining from scratch.
ADAPTIVE_FACTOR = 5.0
MIN_ADAPTIVE_RATE = 1e-6

# A minibatch loss above best + EXPLOSION_FACTOR * max(1, |best|) is an explosion. Losses
# of healthy fits move by far less between minibatches (cross-entropies by a few nats,
# negative log-likelihoods by a few nats per sample); a learning rate that blows the
# parameters up gives losses of 1e6 and more, and its next solve usually fails.
EXPLOSION_FACTOR = 1e3


@dataclass
class TrainingHistory:
    """What the loop records; carried over by ``warm_start`` and ``partial_fit``.

    ``curves`` maps every metric a program returns (``loss``, ``nfe_forward``,
    ``nfe_backward``, a family's own such as ``kl``) to its mean per epoch (None where the
    engine did not report it).
    """

    curves: dict[str, list[float | None]] = field(default_factory=dict)
    validation_scores: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_validation_score: float = -math.inf
    best_params: dict[str, np.ndarray] | None = None
    no_improvement_count: int = 0
    t_: int = 0  # rows processed, as MLPClassifier.t_

    @property
    def loss_curve(self) -> list[float]:
        return list(self.curves.get("loss", []))

    @property
    def n_iter(self) -> int:
        return len(self.curves.get("loss", []))

    def last(self, name: str) -> float | None:
        """The last epoch's mean of a metric (None if never recorded)."""
        values = self.curves.get(name)
        return values[-1] if values else None

    def copy(self) -> TrainingHistory:
        return copy.deepcopy(self)


@dataclass
class TrainingOutcome:
    """What :func:`train` returns: the final state, the parameters to keep, and how it
    stopped (``converged``: the tolerance rule stopped it; ``interrupted``: the warning
    to give after Ctrl-C, else None). ``resumable``: ``state`` holds ``params``, so a
    later call may continue from it; else (early stopping kept an earlier epoch, Ctrl-C)
    it continues from ``params`` with a fresh optimiser."""

    state: Any
    params: dict[str, np.ndarray]
    converged: bool
    interrupted: str | None = None
    resumable: bool = True


def epoch_batches(n_samples: int, batch_size: int, rng: np.random.RandomState):
    """Index arrays of one epoch, every one of ``min(batch_size, n_samples)`` rows."""
    order = rng.permutation(n_samples)
    size = min(batch_size, n_samples)
    n_batches = -(-n_samples // size)
    fill = n_batches * size - n_samples
    order = np.concatenate([order, order[:fill]])
    return [order[i * size : (i + 1) * size] for i in range(n_batches)]


def train(
    program: Any,
    state: Any,
    arrays: tuple[np.ndarray, ...],
    history: TrainingHistory,
    hyper: Any,
    *,
    max_iter: int,
    batch_size: int,
    rng: np.random.RandomState,
    tol: float,
    n_iter_no_change: int,
    learning_rate: str = "constant",
    validation_score: Callable[[dict[str, np.ndarray]], float] | None = None,
    draw_noise: Callable[[np.random.RandomState, int], tuple[np.ndarray, ...]] | None = None,
    prepare_batch: Callable[[np.random.RandomState, tuple[np.ndarray, ...]],
                            tuple[np.ndarray, ...]] | None = None,
    verbose: int = 0,
    desc: str = "fit",
    warmup_epochs: int = 0,
) -> TrainingOutcome:
    """Run up to ``max_iter`` epochs of ``program.step``.

    Parameters
    ----------
    program : TrainingProgram
    state : the program's training state, updated and returned.
    arrays : tuple of ndarray
        Training arrays, indexed together along their first axis.
    history : TrainingHistory
        Updated in place, one record per *completed* epoch.
    hyper : Hyper or callable
        The step's values, or ``hyper(epoch) -> Hyper`` (epochs from 1, counted over
        the whole history) for schedules such as KL annealing.
    learning_rate : {"constant", "adaptive"}
        The step-size schedule (module docstring); ``"adaptive"`` starts every call at
        ``hyper``'s ``learning_rate``, as scikit-learn's MLP builds a new optimiser for
        every ``fit``.
    validation_score : callable, optional
        Early stopping: ``score(params) -> float`` (higher is better) after each epoch;
        training stops when it has not improved by ``tol`` for ``n_iter_no_change``
        epochs, and the best-scoring parameters are kept. Without it, the same rule on
        the training loss, and the last parameters are kept (as scikit-learn's MLP).
    draw_noise : callable, optional
        ``draw_noise(rng, n_rows) -> arrays`` appended to every batch: the randomness of
        a step, drawn from the estimator's generator.
    prepare_batch : callable, optional
        ``prepare_batch(rng, batch) -> batch``: what the step takes, made from the
        minibatch (after ``draw_noise``) with draws from the estimator's generator, for
        randomness that depends on the data (flow matching's paths and pairings).
    warmup_epochs : int, default=0
        Epochs (counted over the whole history) whose training loss is not comparable
        with later ones, because ``hyper(epoch)`` changes the objective (KL annealing
        raises the KL term's weight): without ``validation_score`` they count as
        progress, and the first epoch after them sets the lowest loss afresh. Else a
        loss that rises with the weight reads as a plateau, and training stops (or the
        adaptive schedule cuts the step size) during the warm-up.

    Raises
    ------
    TrainingDivergedError
        With ``params``, the last verified parameters.
    KeyboardInterrupt
        Interrupted before any epoch of this call completed.
    """
    if learning_rate not in LEARNING_RATE_SCHEDULES:
        raise ValueError(f"learning_rate must be one of {LEARNING_RATE_SCHEDULES}, got "
                         f"{learning_rate!r}")
    hyper_at = hyper if callable(hyper) else (lambda epoch: hyper)
    scale = 1.0  # of the step size, divided on plateaus by the "adaptive" schedule
    n_samples = arrays[0].shape[0]
    verified = None  # parameters a finite, sane loss was computed from
    best_step = math.inf  # lowest minibatch loss of this call
    completed = 0
    # The parameters at the end of the last epoch recorded in ``history`` (what Ctrl-C
    # hands back: parameters, curves and counts of one moment), and whether a step has
    # computed a loss from them yet (the first step after the epoch does).
    recorded, recorded_verified = None, False
    epoch = history.n_iter + 1
    progress = epoch_progress(max_iter, verbose, desc)
    converged = False

    def minibatch(idx: np.ndarray) -> tuple[np.ndarray, ...]:
        batch = tuple(a[idx] for a in arrays)
        if draw_noise is not None:
            batch += draw_noise(rng, len(idx))
        if prepare_batch is not None:
            batch = prepare_batch(rng, batch)
        return batch

    def check(metrics: dict, what: str) -> float:
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise _diverged(epoch, f"the loss became {loss} {what}",
                            _loss_advice(verified), verified)
        if loss > best_step + EXPLOSION_FACTOR * max(1.0, abs(best_step)):
            raise _diverged(epoch, f"the loss exploded to {loss:.4g} {what} (lowest so "
                            f"far {best_step:.4g})", _loss_advice(verified), verified)
        return loss

    def solve_failed(what: str, error: SolverError) -> TrainingDivergedError:
        cause = _solve_cause(error, hyper_at(epoch))
        return _diverged(epoch, f"the ODE solve {what} failed: {cause}",
                         _solve_advice(error, verified), verified)

    try:
        for _ in range(max_iter):
            epoch = history.n_iter + 1
            current = hyper_at(epoch)
            if scale != 1.0:
                current = dataclasses.replace(
                    current, learning_rate=current.learning_rate / scale)
            sums: dict[str, float | None] = {}
            batches = epoch_batches(n_samples, batch_size, rng)
            for idx in batches:
                batch = minibatch(idx)
                before = program.get_params(state)
                # The first step of a fit (not of each partial_fit): JAX compiles it.
                announce = progress is not None and verified is None and not history.n_iter
                if announce:
                    progress.compiling()
                try:
                    state, metrics = program.step(state, batch, current)
                except SolverError as error:
                    raise solve_failed("of a training step", error) from error
                if announce:
                    progress.compiled()
                loss = check(metrics, "in a training step")
                verified, best_step = before, min(best_step, loss)
                recorded_verified = True
                _accumulate(sums, metrics)
            n_batches = len(batches)
            means = {name: None if total is None else total / n_batches
                     for name, total in sums.items()}
            means["learning_rate"] = current.learning_rate
            end = program.get_params(state)
            score = None
            if validation_score is not None:
                try:
                    score = float(validation_score(end))
                except SolverError as error:
                    raise solve_failed("of the validation split", error) from error
                if not math.isfinite(score):
                    raise _diverged(epoch, f"the validation score became {score}",
                                    _loss_advice(verified), verified)
            # The epoch is recorded at once, after everything that can fail or be
            # interrupted: the history holds whole epochs only.
            for name, mean in means.items():
                history.curves.setdefault(name, [None] * (epoch - 1)).append(mean)
            for values in history.curves.values():  # a metric missing this epoch
                if len(values) < epoch:
                    values.append(None)
            history.t_ += n_batches * len(batches[0])
            epoch_loss = history.curves["loss"][-1]
            if score is None:
                if epoch == warmup_epochs + 1:
                    history.best_loss = math.inf  # the first loss of the full objective
                improved = epoch <= warmup_epochs or epoch_loss < history.best_loss - tol
            else:
                history.validation_scores.append(score)
                improved = score > history.best_validation_score + tol
                if score > history.best_validation_score:
                    history.best_validation_score = score
                    history.best_params = end
            history.best_loss = min(history.best_loss, epoch_loss)
            history.no_improvement_count = 0 if improved else history.no_improvement_count + 1
            recorded, recorded_verified = end, False
            completed += 1
            if progress is not None:
                progress.epoch(history)
            if history.no_improvement_count > n_iter_no_change:
                if learning_rate == "adaptive" and current.learning_rate > MIN_ADAPTIVE_RATE:
                    scale *= ADAPTIVE_FACTOR
                    history.no_improvement_count = 0
                    if progress is not None:
                        progress.write(f"epoch {epoch}: no improvement in "
                                       f"{n_iter_no_change + 1} epochs, learning rate "
                                       f"{current.learning_rate / ADAPTIVE_FACTOR:.3g}")
                    continue
                converged = True
                break
        # The last step's parameters have no loss yet: compute one, without a step.
        _verify(program, state, minibatch(batches[-1]), hyper_at(history.n_iter), check,
                solve_failed, "after the last step")
        verified = recorded
    except KeyboardInterrupt:
        if not completed:
            raise
        if validation_score is not None:
            kept, which = history.best_params, "of the best validation score"
        else:
            if not recorded_verified:  # interrupted before a step computed their loss
                _verify(program, program.init(recorded), minibatch(batches[-1]),
                        hyper_at(history.n_iter), check, solve_failed,
                        "of the last completed epoch")
            kept, which = recorded, f"at the end of epoch {history.n_iter}"
        # The training state has moved on from ``kept``: a warm start continues from
        # the parameters kept, not from it.
        return TrainingOutcome(state, kept, converged=False, resumable=False, interrupted=(
            f"training interrupted during epoch {history.n_iter + 1}; keeping the "
            f"parameters {which} ({completed} epoch(s) completed in this call)"))
    finally:
        if progress is not None:
            progress.close()
    if validation_score is not None:
        final = history.best_params
        return TrainingOutcome(state, final, converged=converged,
                               resumable=final is recorded)
    return TrainingOutcome(state, verified, converged=converged)


def _verify(program, state, batch, hyper, check, solve_failed, what: str) -> None:
    """Compute the loss of ``state``'s parameters without a step; a non-finite or
    exploded loss or a failed solve is divergence."""
    try:
        check(program.evaluate(state, batch, hyper), what)
    except SolverError as error:
        raise solve_failed(what, error) from error


def _accumulate(sums: dict[str, float | None], metrics: dict) -> None:
    for name, value in metrics.items():
        if value is None or sums.get(name, 0.0) is None:
            sums[name] = None
        else:
            sums[name] = sums.get(name, 0.0) + float(value)


# What a failed solve says, by its reason: the same words on every engine (each engine's
# SolverError message has its own details; the error stays chained as the cause).
_SOLVE_CAUSES = {
    "max_num_steps": "the step budget max_num_steps={max_num_steps} was exhausted",
    "step_size_underflow": "the step size fell below what the time can resolve",
    "non_finite": "the state became non-finite",
}


def _solve_cause(error: SolverError, hyper: Any) -> str:
    solve = getattr(hyper, "solve", None)
    cause = _SOLVE_CAUSES.get(error.reason, "it stopped ({reason})").format(
        max_num_steps=getattr(solve, "max_num_steps", "?"), reason=error.reason)
    return f"{cause} at t={error.t:.6g}"


def _loss_advice(verified) -> str:
    """Advice for a non-finite or exploding loss."""
    if verified is None:
        # The very first loss of this call: no update has been made, so the step size
        # is not the cause; the data (or times) at the model's initial parameters is.
        return ("Nothing was updated yet: check the scale of the data (values or times "
                "of very large magnitude)")
    return "Try a smaller learning_rate_init or a larger alpha"


def _solve_advice(error: SolverError, verified) -> str:
    """Advice for a failed solve, by its reason and whether updates came before it."""
    if error.reason != "max_num_steps":
        # A solution that blows up (non-finite, or steps shrinking to nothing): the
        # field is too large for the data, at the initial or at the updated parameters.
        return _loss_advice(verified)
    advice = "Raise max_num_steps, or loosen rtol/atol"
    if verified is None:
        return f"{advice}; nothing was updated yet, so check the scale of the data too"
    # After updates, a field made stiff by too large steps is a likely cause too.
    return f"{advice}, or try a smaller learning_rate_init or a larger alpha"


def _diverged(epoch: int, what: str, advice: str, verified) -> TrainingDivergedError:
    return TrainingDivergedError(f"training diverged at epoch {epoch}: {what}. {advice}.",
                                 epoch=epoch, params=verified)
