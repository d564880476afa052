"""The training loop, written once for every estimator and engine.

Epochs of shuffled minibatches drawn from the estimator's ``random_state``; each
minibatch is one call of the backend program's ``step``. The loop keeps the loss curve,
the validation scores (early stopping), the best parameters, and the mean NFE per batch
of the last epoch. A non-finite loss or a failed solve stops training with
``TrainingDivergedError`` after restoring the best parameters; ``KeyboardInterrupt``
stops it cleanly with a warning, keeping the best parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .exceptions import SolverError, TrainingDivergedError

__all__ = ["TrainingHistory", "train"]


@dataclass
class TrainingHistory:
    """What the loop records; carried over by ``warm_start`` and ``partial_fit``."""

    loss_curve: list[float] = field(default_factory=list)
    validation_scores: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_validation_score: float = -math.inf
    best_params: dict[str, np.ndarray] | None = None
    no_improvement_count: int = 0
    nfe: dict[str, float | None] = field(
        default_factory=lambda: {"forward": None, "backward": None})
    t_: int = 0  # samples seen, as MLPClassifier.t_

    @property
    def n_iter(self) -> int:
        return len(self.loss_curve)


def _batches(n_samples: int, batch_size: int, rng: np.random.RandomState | None):
    order = rng.permutation(n_samples) if rng is not None else np.arange(n_samples)
    for start in range(0, n_samples, batch_size):
        yield order[start : start + batch_size]


def train(
    program: Any,
    state: Any,
    arrays: tuple[np.ndarray, ...],
    history: TrainingHistory,
    *,
    max_iter: int,
    batch_size: int,
    rng: np.random.RandomState | None,
    tol: float,
    n_iter_no_change: int,
    validation_score: Callable[[dict[str, np.ndarray]], float] | None = None,
    verbose: int = 0,
    desc: str = "fit",
    warn_not_converged: bool = True,
) -> tuple[Any, dict[str, np.ndarray]]:
    """Run up to ``max_iter`` epochs; return the final state and the parameters to keep.

    ``arrays`` are the training arrays, indexed together along their first axis.
    With ``validation_score`` (early stopping), training stops when the score has not
    improved by ``tol`` for ``n_iter_no_change`` epochs and the best-scoring parameters
    are kept; without it, the same rule on the training loss, and the last parameters
    are kept (as scikit-learn's MLP).
    """
    n_samples = arrays[0].shape[0]
    if history.best_params is None:
        history.best_params = program.get_params(state)
    progress = _progress(max_iter, verbose, desc)
    converged = False
    epoch_index = history.n_iter
    try:
        for _ in range(max_iter):
            epoch_index = history.n_iter + 1
            total_loss = 0.0
            nfe_forward, nfe_backward, n_batches = 0.0, 0.0, 0
            backward_known = True
            for idx in _batches(n_samples, batch_size, rng):
                batch = tuple(a[idx] for a in arrays)
                try:
                    state, metrics = program.step(state, batch)
                except SolverError as error:
                    raise _diverged(history, epoch_index, f"the ODE solve failed: {error}") \
                        from error
                loss = float(metrics["loss"])
                if not math.isfinite(loss):
                    raise _diverged(history, epoch_index, f"the loss became {loss}")
                total_loss += loss * len(idx)
                nfe_forward += float(metrics["nfe_forward"])
                if metrics.get("nfe_backward") is None:
                    backward_known = False
                else:
                    nfe_backward += float(metrics["nfe_backward"])
                n_batches += 1
                history.t_ += len(idx)
            epoch_loss = total_loss / n_samples
            history.loss_curve.append(epoch_loss)
            history.nfe = {
                "forward": nfe_forward / n_batches,
                "backward": nfe_backward / n_batches if backward_known else None,
            }
            if validation_score is None:
                improved = epoch_loss < history.best_loss - tol
                if epoch_loss < history.best_loss:
                    history.best_loss = epoch_loss
                    history.best_params = program.get_params(state)
            else:
                score = float(validation_score(program.get_params(state)))
                history.validation_scores.append(score)
                improved = score > history.best_validation_score + tol
                if score > history.best_validation_score:
                    history.best_validation_score = score
                    history.best_params = program.get_params(state)
                history.best_loss = min(history.best_loss, epoch_loss)
            history.no_improvement_count = 0 if improved else history.no_improvement_count + 1
            _report(progress, epoch_loss, history)
            if history.no_improvement_count > n_iter_no_change:
                converged = True
                break
    except KeyboardInterrupt:
        warnings.warn(
            f"training interrupted during epoch {epoch_index}; keeping the best parameters "
            "seen so far", UserWarning, stacklevel=3)
        return state, history.best_params
    finally:
        if progress is not None:
            progress.close()
    if not converged and warn_not_converged and max_iter > 0:
        warnings.warn(
            f"Stochastic Optimizer: Maximum iterations ({max_iter}) reached and the "
            "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
    final = history.best_params if validation_score is not None else program.get_params(state)
    return state, final


def _diverged(history: TrainingHistory, epoch: int, what: str) -> TrainingDivergedError:
    kept = "the initial parameters" if not history.loss_curve else (
        f"the best parameters (training loss {history.best_loss:.4g})")
    return TrainingDivergedError(
        f"training diverged at epoch {epoch}: {what}. The estimator keeps {kept}; try a "
        "smaller learning_rate_init, a larger alpha, or tighter rtol/atol.", epoch=epoch)


def _progress(total: int, verbose: int, desc: str):
    if not verbose:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=verbose > 1)


def _report(progress, loss: float, history: TrainingHistory) -> None:
    if progress is None:
        return
    postfix = {"loss": f"{loss:.4g}", "nfe": f"{history.nfe['forward']:.0f}"}
    if history.nfe["backward"] is not None:
        postfix["nfe_bwd"] = f"{history.nfe['backward']:.0f}"
    if history.validation_scores:
        postfix["val"] = f"{history.validation_scores[-1]:.4f}"
    progress.set_postfix(postfix)
    progress.update(1)
