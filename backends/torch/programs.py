"""What the model families' programs share on the torch engine: NumPy <-> tensor
conversion, Adam's settings per step and the L2 penalty.

Devices. The estimators run every program call inside the engine's
``device_scope(device)`` (:func:`placed_on`): there :func:`tensor` and :func:`view` put
their tensors on that device, and, off the CPU, torch's factory functions default to it
(``torch.device`` as a context manager), so family code has no device code of its own;
it brings results back with ``.detach().cpu().numpy()`` (a no-op on the CPU). On the CPU
nothing changes: no mode is entered and tensors share NumPy's memory as before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from odeplug._specs import Hyper

__all__ = ["current_device", "l2_penalty", "placed_on", "set_adam_hyper",
           "tensor", "view"]

_CPU = torch.device("cpu")
_placement = threading.local()  # the device of this thread's scope


def current_device() -> torch.device:
    """The device of the innermost :func:`placed_on` of this thread (the CPU outside)."""
    return getattr(_placement, "device", _CPU)


@contextlib.contextmanager
def placed_on(device: str | torch.device) -> Iterator[torch.device]:
    """Inside the block, :func:`tensor` and :func:`view` make tensors on ``device``;
    off the CPU, torch's factory functions (``torch.zeros``, ``torch.tensor``) too."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type != "cpu":
        # Modules that build tensors when first imported (torchdiffeq's tableaus) are
        # imported before the default device changes, so that they stay on the CPU.
        from . import solve  # noqa: F401
    previous = current_device()
    _placement.device = device
    try:
        if device.type == "cpu":
            yield device
        else:
            with device:
                yield device
    finally:
        _placement.device = previous


def tensor(array: Any, dtype: np.dtype) -> torch.Tensor:
    """A torch copy of a NumPy array (the caller's array is never shared), on the
    scope's device (:func:`placed_on`)."""
    return _placed(torch.from_numpy(np.array(array, dtype=dtype, order="C", copy=True)))


def view(array: Any, dtype: np.dtype) -> torch.Tensor:
    """A tensor on the memory of ``array`` where it has ``dtype`` already (read only here);
    off the CPU, a copy on the scope's device."""
    array = np.asarray(array, dtype=dtype)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C")
    return _placed(torch.from_numpy(array))


def _placed(host: torch.Tensor) -> torch.Tensor:
    device = current_device()
    return host if device.type == "cpu" else host.to(device)


def adam(tensors) -> torch.optim.Adam:
    """``torch.optim.Adam`` over the parameters; its settings come from each step's
    :func:`set_adam_hyper`. The L2 penalty is in the loss (as the reference engine's),
    not Adam's weight_decay: it is divided by the batch size and spares the biases."""
    return torch.optim.Adam(list(tensors))


def set_adam_hyper(opt: torch.optim.Adam, hyper: Hyper) -> None:
    """The step size and Adam's constants of this step (values, not fixed at init)."""
    for group in opt.param_groups:
        group.update(lr=hyper.learning_rate, betas=(hyper.beta1, hyper.beta2),
                     eps=hyper.epsilon)


def l2_penalty(params: dict, names, alpha: float, batch_size: int) -> torch.Tensor:
    """scikit-learn's MLP penalty ``0.5 * alpha * sum(W**2) / batch_size``."""
    return (0.5 * alpha / batch_size) * sum(torch.sum(params[k] ** 2) for k in names)
