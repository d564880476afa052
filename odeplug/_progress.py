"""The training loop's progress display (``verbose``).

Two forms, chosen by where the output goes:

* a terminal or a notebook: a ``tqdm`` bar of epochs with the last loss, NFE and
  validation score, kept on screen after the fit (a bar that erased itself would leave
  no trace of the fit);
* anything else (a log file, a pipe, a CI log): one line per epoch, as scikit-learn's
  MLP prints them (``Iteration 1, loss = 0.69314718``). A bar there would be one line of
  carriage returns.

Both say "compiling" during the first step of a fit, which on JAX compiles the step
(seconds to minutes, during which a bar would sit at 0 % with nothing said).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["EpochProgress", "epoch_progress"]


def epoch_progress(total: int, verbose: int, desc: str,
                   stream: TextIO | None = None) -> EpochProgress | None:
    """The display of a fit of at most ``total`` epochs (None when ``verbose`` is 0).

    ``stream``: where it writes (default ``sys.stderr``, as tqdm); a bar where it is a
    terminal or the notebook's output, lines otherwise.
    """
    if not verbose:
        return None
    stream = sys.stderr if stream is None else stream
    if _interactive(stream):
        return _Bar(total, desc, stream)
    return _Lines(desc, stream)


def _interactive(stream: TextIO) -> bool:
    from tqdm.autonotebook import tqdm as auto
    from tqdm.std import tqdm as plain

    if auto is not plain:  # in a notebook: its widget
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _fields(history: Any) -> dict[str, str]:
    """What an epoch reports: loss, NFE and validation score of the last epoch."""
    fields = {"loss": f"{history.last('loss'):.8g}"}
    for name, label in (("nfe_forward", "nfe"), ("nfe_backward", "nfe_bwd")):
        if history.last(name) is not None:
            fields[label] = f"{history.last(name):.4g}"
    if history.validation_scores:
        fields["val"] = f"{history.validation_scores[-1]:.6g}"
    return fields


class EpochProgress:
    """What the training loop calls: :meth:`compiling` before the first step and
    :meth:`compiled` after it, :meth:`epoch` after each recorded epoch, :meth:`write` for a message,
    :meth:`close` at the end."""

    def compiling(self) -> None:
        raise NotImplementedError

    def compiled(self) -> None:
        """The first step is done."""

    def epoch(self, history: Any) -> None:
        raise NotImplementedError

    def write(self, message: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Bar(EpochProgress):
    def __init__(self, total: int, desc: str, stream: TextIO):
        from tqdm.auto import tqdm

        self.stream = stream
        self.bar = tqdm(total=total, desc=desc, unit="epoch", leave=True, file=stream)

    def compiling(self) -> None:
        self.bar.set_postfix_str("compiling")

    def compiled(self) -> None:
        self.bar.set_postfix_str("")

    def epoch(self, history: Any) -> None:
        self.bar.set_postfix(_fields(history), refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        self.bar.write(message, file=self.stream)

    def close(self) -> None:
        self.bar.close()


class _Lines(EpochProgress):
    def __init__(self, desc: str, stream: TextIO):
        self.desc = desc
        self.stream = stream

    def write(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def compiling(self) -> None:
        self.write(f"{self.desc}: compiling the first step")

    def epoch(self, history: Any) -> None:
        fields = _fields(history)
        loss = f"{history.last('loss'):.8f}"
        extra = "".join(f", {name} = {value}" for name, value in fields.items()
                        if name != "loss")
        self.write(f"Iteration {history.n_iter}, loss = {loss}{extra}")

    def close(self) -> None:
        pass
