"""The PyTorch engine: torch + torchdiffeq."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from odeplug.backend import Backend

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """PyTorch (torchdiffeq's ``odeint`` / ``odeint_adjoint``)."""

    name: ClassVar[str] = "torch"
    requires: ClassVar[tuple[str, ...]] = ("torch", "torchdiffeq")
    install: ClassVar[str] = 'pip install "odeplug[torch]"'
    array_modules: ClassVar[tuple[str, ...]] = ("torch",)

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        from .solve import odeint

        return odeint(func, y0, t, args, config, count_backward=count_backward)

    def make_program(self, spec: Any) -> Any:
        from .programs import make_program

        return make_program(spec)

    def limit_threads(self, n: int) -> contextlib.AbstractContextManager:
        """``torch.set_num_threads(n)`` inside the block; the previous count after it."""
        return _torch_threads(n)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch  # here: importing the backend must not import torch

    previous = torch.get_num_threads()
    if previous == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
