"""What the model families' programs share on the torch engine: the dispatch from a spec
to its program, NumPy <-> tensor conversion, Adam's settings per step and the L2
penalty."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from odeplug._specs import Hyper, LatentODESpec, ODENetSpec

__all__ = ["l2_penalty", "make_program", "set_adam_hyper", "tensor", "view"]


def make_program(spec: Any):
    """The torch engine's program of a model spec."""
    if isinstance(spec, ODENetSpec):
        from .odenet import ODENetProgram

        return ODENetProgram(spec)
    if isinstance(spec, LatentODESpec):
        from .latent import LatentProgram

        return LatentProgram(spec)
    raise NotImplementedError(f"the torch engine has no program for {type(spec).__name__}")


def tensor(array: Any, dtype: np.dtype) -> torch.Tensor:
    """A torch copy of a NumPy array (the caller's array is never shared)."""
    return torch.from_numpy(np.array(array, dtype=dtype, order="C", copy=True))


def view(array: Any, dtype: np.dtype) -> torch.Tensor:
    """A tensor on the memory of ``array`` where it has ``dtype`` already (read only here)."""
    array = np.asarray(array, dtype=dtype)
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


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
