"""Model specs: what a backend needs to build a model family's program.

A spec is a frozen dataclass of plain values (hashable, so JAX can compile against it).
It defines the canonical parameters once, here: their names, shapes and initial values.
Every backend computes the same function of the same ``dict[str, numpy.ndarray]``, so a
model fitted on one engine predicts on any other, and persistence needs no pickle of
engine objects.

Program contract (``Backend.make_program(spec)`` returns an object with):

``init(params, seed) -> state``
    Engine training state (parameters, optimiser state, random keys) from canonical
    NumPy parameters.
``step(state, batch) -> (state, metrics)``
    One optimiser step on a minibatch (tuple of NumPy arrays); ``metrics`` holds floats
    ``loss``, ``nfe_forward`` and ``nfe_backward`` (None where the engine cannot tell).
``get_params(state) -> dict[str, numpy.ndarray]``
    Canonical parameters of a training state.
``predict(params, inputs, solve) -> (outputs, stats)``
    Inference with canonical parameters and an ``ODESolveConfig`` read at call time;
    ``outputs`` is NumPy, ``stats`` a dict of ``nfe_forward``, ``n_steps``, ``n_rejected``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._solver_options import ODESolveConfig

__all__ = ["ACTIVATIONS", "OptimizerSpec", "ODENetSpec", "glorot_uniform"]

ACTIVATIONS = ("tanh", "relu", "softplus", "logistic", "identity")


@dataclass(frozen=True)
class OptimizerSpec:
    """Adam (Kingma & Ba 2015) with an L2 penalty ``0.5 * alpha * sum(W**2) / batch_size``
    on the weights (not the biases), as scikit-learn's ``MLPClassifier``."""

    learning_rate: float = 1e-3
    alpha: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8


def glorot_uniform(rng: np.random.Generator, fan_in: int, fan_out: int, activation: str,
                   dtype) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias as scikit-learn's MLP initialises them (Glorot & Bengio 2010)."""
    factor = 2.0 if activation == "logistic" else 6.0
    bound = np.sqrt(factor / (fan_in + fan_out))
    weight = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
    bias = rng.uniform(-bound, bound, fan_out).astype(dtype)
    return weight, bias


@dataclass(frozen=True)
class ODENetSpec:
    """The ODE-Net of Chen et al. (2018), a continuous-depth residual network.

    ``x -> z0 = activation(x @ W_embed + b_embed)``, padded with ``augment_dim`` zeros
    (Dupont et al. 2019); ``z(t1)`` solves ``dz/dt = field(t, z)`` from 0 to ``t1``;
    logits ``z(t1) @ W_head + b_head``. The field is an MLP of ``[z, t]``: hidden layers
    of widths ``field_hidden`` with ``field_activation``, then a linear layer back to the
    state.

    Parameter names (weights are ``(fan_in, fan_out)``, applied as ``x @ W + b``):
    ``embed.weight``, ``embed.bias``, ``field.{i}.weight``, ``field.{i}.bias`` for each
    layer ``i`` of the field, ``head.weight``, ``head.bias``.
    """

    n_features: int
    n_outputs: int
    embed_dim: int
    field_hidden: tuple[int, ...]
    augment_dim: int
    activation: str
    field_activation: str
    t1: float
    solve: ODESolveConfig
    optimizer: OptimizerSpec
    dtype: str = "float32"

    @property
    def state_dim(self) -> int:
        return self.embed_dim + self.augment_dim

    @property
    def field_sizes(self) -> tuple[int, ...]:
        """Widths of the field's layers, input (state and time) to output."""
        return (self.state_dim + 1, *self.field_hidden, self.state_dim)

    @property
    def n_field_layers(self) -> int:
        return len(self.field_sizes) - 1

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {
            "embed.weight": (self.n_features, self.embed_dim),
            "embed.bias": (self.embed_dim,),
        }
        sizes = self.field_sizes
        for i in range(self.n_field_layers):
            shapes[f"field.{i}.weight"] = (sizes[i], sizes[i + 1])
            shapes[f"field.{i}.bias"] = (sizes[i + 1],)
        shapes["head.weight"] = (self.state_dim, self.n_outputs)
        shapes["head.bias"] = (self.n_outputs,)
        return shapes

    def check_params(self, params: dict) -> None:
        """Raise ``ValueError`` unless ``params`` has exactly the canonical names and
        shapes (engines call it on the parameters they are given)."""
        expected = self.param_shapes()
        actual = {k: tuple(np.shape(v)) for k, v in params.items()}
        if actual != expected:
            raise ValueError(f"parameters of shapes {actual} for an ODE-Net that has "
                             f"{expected}")

    def weight_names(self) -> tuple[str, ...]:
        """Parameters under the L2 penalty."""
        return tuple(name for name in self.param_shapes() if name.endswith(".weight"))

    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """Initial parameters, the same on every engine for the same seed."""
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in self.param_shapes().items():
            if name.endswith(".weight"):
                weight, bias = glorot_uniform(rng, shape[0], shape[1], self.activation,
                                              self.dtype)
                prefix = name[: -len(".weight")]
                params[name], params[f"{prefix}.bias"] = weight, bias
        return params
