"""What the model families' programs share on the reference engine: Adam and the L2
penalty."""

from __future__ import annotations

from typing import Any

import autograd.numpy as anp
import numpy as np

from .._specs import Hyper

__all__ = ["Adam", "l2_penalty"]


class Adam:
    """Adam with bias correction, the update of ``torch.optim.Adam`` and ``optax.adam``.

    State: ``{"m", "v"}`` (dicts like the parameters) and the step ``count``; the step
    size and constants come from the :class:`~odeplug._specs.Hyper` of each step.
    """

    @staticmethod
    def init(params: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"m": {k: np.zeros_like(v) for k, v in params.items()},
                "v": {k: np.zeros_like(v) for k, v in params.items()}, "count": 0}

    @staticmethod
    def update(params, grads, state, hyper: Hyper):
        count = state["count"] + 1
        b1, b2 = hyper.beta1, hyper.beta2
        lr = hyper.learning_rate * np.sqrt(1 - b2**count) / (1 - b1**count)
        # eps is scaled like torch/optax: added to sqrt(v_hat), not sqrt(v).
        eps_hat = hyper.epsilon * np.sqrt(1 - b2**count)
        new_params, m, v = {}, {}, {}
        for k, g in grads.items():
            m[k] = b1 * state["m"][k] + (1 - b1) * g
            v[k] = b2 * state["v"][k] + (1 - b2) * g * g
            new_params[k] = (params[k] - lr * m[k] / (np.sqrt(v[k]) + eps_hat)).astype(
                params[k].dtype)
        return new_params, {"m": m, "v": v, "count": count}


def l2_penalty(params, names, alpha: float, batch_size: int):
    """scikit-learn's MLP penalty ``0.5 * alpha * sum(W**2) / batch_size``."""
    return 0.5 * alpha * sum(anp.sum(params[k] ** 2) for k in names) / batch_size
