"""The PyTorch engine: odeplug's own stepper on torch (torchdiffeq kept to compare)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

from odeplug.backend import Backend

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """PyTorch: odeplug's own stepper and adjoint (``solve.odeint``)."""

    name: ClassVar[str] = "torch"
    requires: ClassVar[tuple[str, ...]] = ("torch", "torchdiffeq")
    install: ClassVar[str] = 'pip install "odeplug[torch]"'
    array_modules: ClassVar[tuple[str, ...]] = ("torch",)
    programs_package: ClassVar[str] = "odeplug_backends.torch"

    def odeint(self, func, y0, t, args, config, *, count_backward=True):
        from .solve import odeint

        return odeint(func, y0, t, args, config, count_backward=count_backward)

    def odeint_rows(self, func, y0, t, args, config):
        from .solve import odeint_rows

        return odeint_rows(func, y0, t, args, config)

    def concatenate(self, arrays):
        import torch

        return torch.cat(arrays)

    def limit_threads(self, n: int) -> contextlib.AbstractContextManager:
        """``torch.set_num_threads(n)`` inside the block; the previous count after it."""
        return _torch_threads(n)

    def gpu_missing(self) -> str | None:
        import torch

        if torch.version.cuda is None:
            return (f"torch {torch.__version__} is built without CUDA (install a CUDA build "
                    "of torch, https://pytorch.org/get-started/locally/)")
        if not torch.cuda.is_available():
            return ("torch.cuda.is_available() is False (no NVIDIA GPU visible, or no "
                    "working driver; CUDA_VISIBLE_DEVICES may hide them)")
        return None

    def device_scope(self, device: str) -> contextlib.AbstractContextManager:
        """Tensors made by the programs' ``tensor``/``view`` (and torch's factory
        functions) on ``device`` inside the block."""
        if device != "cpu":
            missing = self.gpu_missing()
            if missing is not None:
                from odeplug.exceptions import DeviceNotAvailableError

                raise DeviceNotAvailableError(self.name, device, missing)
        from .programs import placed_on

        return placed_on(device)


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
