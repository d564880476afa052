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
  parameters; the estimator decides what to keep.
* **Step-size schedule** (``learning_rate``, scikit-learn's MLP vocabulary, applied to
  Adam): ``"constant"`` keeps ``learning_rate_init``; ``"adaptive"`` divides the step
  size by :data:`ADAPTIVE_FACTOR` each time the tolerance rule fires, instead of
  stopping, and stops once it fires at a step size of :data:`MIN_ADAPTIVE_RATE` or less
  (as scikit-learn's ``SGDOptimizer.trigger_stopping``). The step size of each epoch is
  the curve ``learning_rate``.
* **Ctrl-C**: after at least one completed epoch, the loop stops and reports it, with the
  verified parameters; before any epoch completed, ``KeyboardInterrupt`` propagates and
  the estimator restores itself as it was.

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
    to give after Ctrl-C, else None)."""

    state: Any
    params: dict[str, np.ndarray]
    converged: bool
    interrupted: str | None = None


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
    epoch = history.n_iter + 1
    progress = _progress(max_iter, verbose, desc)
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
            raise _diverged(epoch, f"the loss became {loss} {what}", verified)
        if loss > best_step + EXPLOSION_FACTOR * max(1.0, abs(best_step)):
            raise _diverged(epoch, f"the loss exploded to {loss:.4g} {what} (lowest so "
                            f"far {best_step:.4g})", verified)
        return loss

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
                try:
                    state, metrics = program.step(state, batch, current)
                except SolverError as error:
                    raise _diverged(epoch, f"the ODE solve failed: {error}", verified) \
                        from error
                loss = check(metrics, "in a training step")
                verified, best_step = before, min(best_step, loss)
                _accumulate(sums, metrics)
            n_batches = len(batches)
            means = {name: None if total is None else total / n_batches
                     for name, total in sums.items()}
            means["learning_rate"] = current.learning_rate
            for name, mean in means.items():
                history.curves.setdefault(name, [None] * (epoch - 1)).append(mean)
            for values in history.curves.values():  # a metric missing this epoch
                if len(values) < epoch:
                    values.append(None)
            history.t_ += n_batches * len(batches[0])
            completed += 1
            epoch_loss = history.curves["loss"][-1]
            if validation_score is None:
                improved = epoch_loss < history.best_loss - tol
                history.best_loss = min(history.best_loss, epoch_loss)
            else:
                params = program.get_params(state)
                try:
                    score = float(validation_score(params))
                except SolverError as error:
                    raise _diverged(epoch, f"the ODE solve of the validation split failed: "
                                    f"{error}", verified) from error
                if not math.isfinite(score):
                    raise _diverged(epoch, f"the validation score became {score}", verified)
                history.validation_scores.append(score)
                improved = score > history.best_validation_score + tol
                if score > history.best_validation_score:
                    history.best_validation_score = score
                    history.best_params = params
                history.best_loss = min(history.best_loss, epoch_loss)
            history.no_improvement_count = 0 if improved else history.no_improvement_count + 1
            _report(progress, history)
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
        batch = minibatch(batches[-1])
        try:
            check(program.evaluate(state, batch, hyper_at(history.n_iter)),
                  "after the last step")
        except SolverError as error:
            raise _diverged(epoch, f"the ODE solve failed after the last step: {error}",
                            verified) from error
        verified = program.get_params(state)
    except KeyboardInterrupt:
        if not completed or verified is None:
            raise
        kept = (history.best_params if validation_score is not None else verified)
        return TrainingOutcome(state, kept, converged=False, interrupted=(
            f"training interrupted during epoch {epoch}; keeping the parameters of the last "
            f"completed step ({completed} epoch(s) completed in this call)"))
    finally:
        if progress is not None:
            progress.close()
    final = history.best_params if validation_score is not None else verified
    return TrainingOutcome(state, final, converged=converged)


def _accumulate(sums: dict[str, float | None], metrics: dict) -> None:
    for name, value in metrics.items():
        if value is None or sums.get(name, 0.0) is None:
            sums[name] = None
        else:
            sums[name] = sums.get(name, 0.0) + float(value)


def _diverged(epoch: int, what: str, verified) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"training diverged at epoch {epoch}: {what}. Try a smaller learning_rate_init, a "
        "larger alpha, or tighter rtol/atol.", epoch=epoch, params=verified)


def _progress(total: int, verbose: int, desc: str):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=verbose > 1)


def _report(progress, history: TrainingHistory) -> None:
    if progress is None:
        return
    postfix = {"loss": f"{history.last('loss'):.4g}"}
    for name, label in (("nfe_forward", "nfe"), ("nfe_backward", "nfe_bwd")):
        if history.last(name) is not None:
            postfix[label] = f"{history.last(name):.0f}"
    if history.validation_scores:
        postfix["val"] = f"{history.validation_scores[-1]:.4f}"
    progress.set_postfix(postfix)
    progress.update(1)
