"""Model specs: what a backend needs to build a model family's program.

A spec is a frozen dataclass of plain values that fix the *shapes* of the computation
(sizes, activations, dtype, the kind of trace estimator...), so that it is hashable and
JAX compiles once per spec. It defines the canonical parameter table once, here: names,
shapes and one initialiser per parameter. Every backend computes the same function of
the same ``dict[str, numpy.ndarray]``, so a model fitted on one engine predicts on any
other, and model files need no pickle.

What changes only *values* (learning rate, ``alpha``, tolerances, ``t1``, regulariser
weights) is not in the spec but in a :class:`Hyper`, passed to every program call: on
JAX those values are traced inputs of the compiled functions, never constants baked into
them, so a hyperparameter grid shares one compilation per architecture and batch shape.
The program contract itself is in :mod:`odeplug._protocols`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ._solver_options import ODESolveConfig

__all__ = [
    "ACTIVATIONS",
    "CNFHyper",
    "CNFSpec",
    "CNFTrainingSpec",
    "Fill",
    "GlorotUniform",
    "Hyper",
    "LatentHyper",
    "LatentODESpec",
    "ModelSpec",
    "Normal",
    "ODENetSpec",
    "Orthogonal",
    "Param",
    "TRACE_ESTIMATORS",
    "Zeros",
    "cnf_training",
    "dense_params",
]

ACTIVATIONS = ("tanh", "relu", "softplus", "logistic", "identity")


# ----------------------------------------------------------------- initialisers
# Each draws from the spec's NumPy generator in the order of the parameter table, so a
# seed gives the same parameters on every engine.


@dataclass(frozen=True)
class GlorotUniform:
    """``U(-b, b)`` with ``b = sqrt(factor / (fan_in + fan_out))`` (Glorot & Bengio 2010).

    scikit-learn's MLP draws weights *and* biases so, with ``factor`` 6, or 2 for the
    logistic activation; odeplug follows it, so ``ODEClassifier`` starts where
    ``MLPClassifier`` would.
    """

    fan_in: int
    fan_out: int
    factor: float = 6.0

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
        bound = math.sqrt(self.factor / (self.fan_in + self.fan_out))
        return rng.uniform(-bound, bound, shape).astype(dtype)


@dataclass(frozen=True)
class Orthogonal:
    """Orthogonal blocks, for recurrent weights (Saxe et al. 2014).

    A weight of shape ``(n, blocks * n)`` (a GRU's three gates side by side) gets one
    independent orthogonal ``(n, n)`` block per gate, as torch and Keras initialise
    recurrent kernels; ``blocks=1`` and a non-square shape give orthonormal columns or
    rows. Signs are fixed by the diagonal of R, so the draw is uniform (Haar).
    """

    blocks: int = 1
    gain: float = 1.0

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
        rows, cols = shape
        width = cols // self.blocks
        out = []
        for _ in range(self.blocks):
            a = rng.standard_normal((max(rows, width), min(rows, width)))
            q, r = np.linalg.qr(a)
            q = q * np.sign(np.diag(r))
            out.append(q if rows >= width else q.T)
        return (self.gain * np.concatenate(out, axis=1)).astype(dtype)


@dataclass(frozen=True)
class Normal:
    """``N(0, std**2)`` entries."""

    std: float

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
        return (self.std * rng.standard_normal(shape)).astype(dtype)


@dataclass(frozen=True)
class Fill:
    """Every entry ``value`` (a log noise scale, a gate bias); draws nothing."""

    value: float

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
        return np.full(shape, self.value, dtype=dtype)


def Zeros() -> Fill:  # noqa: N802 (reads as an initialiser, as the others)
    """Every entry 0."""
    return Fill(0.0)


@dataclass(frozen=True)
class Param:
    """One entry of a spec's parameter table.

    ``penalized``: under the L2 penalty ``0.5 * alpha * sum(W**2) / batch_size``
    (weights, not biases, as scikit-learn's MLP).
    """

    shape: tuple[int, ...]
    init: Any
    penalized: bool = False


def dense_params(name: str, fan_in: int, fan_out: int, *, factor: float = 6.0,
                 penalized: bool = True) -> dict[str, Param]:
    """``{name}.weight`` of shape ``(fan_in, fan_out)`` (applied as ``x @ W + b``) and
    ``{name}.bias``, Glorot-initialised as scikit-learn's MLP."""
    init = GlorotUniform(fan_in, fan_out, factor)
    return {f"{name}.weight": Param((fan_in, fan_out), init, penalized=penalized),
            f"{name}.bias": Param((fan_out,), init)}


def mlp_params(name: str, sizes: tuple[int, ...], *, factor: float = 6.0
               ) -> dict[str, Param]:
    """``{name}.{i}.weight`` and ``{name}.{i}.bias`` of an MLP of layer widths ``sizes``
    (input to output), Glorot-initialised."""
    table: dict[str, Param] = {}
    for i in range(len(sizes) - 1):
        table.update(dense_params(f"{name}.{i}", sizes[i], sizes[i + 1], factor=factor))
    return table


def glorot_factor(activation: str) -> float:
    """scikit-learn's factor: 2 for the logistic activation, else 6."""
    return 2.0 if activation == "logistic" else 6.0


# ------------------------------------------------------------------------ specs


class ModelSpec:
    """Base of the model specs (each a frozen dataclass with a ``dtype`` field).

    Subclasses define :meth:`param_table`; everything else about the canonical
    parameters (shapes, initial values, checks, the penalised names) follows from it.
    """

    family: ClassVar[str] = ""
    # Where every engine keeps this spec's program: (module of the engine's package,
    # class). Every engine has the same floor plan, so the dispatch is written once
    # (``Backend.make_program``).
    program: ClassVar[tuple[str, str] | None] = None
    dtype: str

    def param_table(self) -> dict[str, Param]:
        """Canonical parameters in a fixed order: name -> :class:`Param`."""
        raise NotImplementedError

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: p.shape for name, p in self.param_table().items()}

    def penalized_names(self) -> tuple[str, ...]:
        """Parameters under the L2 penalty."""
        return tuple(name for name, p in self.param_table().items() if p.penalized)

    def init_params(self, seed: int) -> dict[str, np.ndarray]:
        """Initial parameters, the same on every engine for the same seed."""
        rng = np.random.default_rng(seed)
        return {name: p.init(rng, p.shape, self.dtype) for name, p in self.param_table().items()}

    def check_params(self, params: dict) -> None:
        """Raise ``ValueError`` unless ``params`` has exactly the canonical names and
        shapes (engines call it on the parameters they are given)."""
        expected = self.param_shapes()
        actual = {k: tuple(np.shape(v)) for k, v in params.items()}
        if actual != expected:
            raise ValueError(f"parameters of shapes {actual} for a {type(self).__name__} "
                             f"that has {expected}")


@dataclass(frozen=True)
class Hyper:
    """The values every program call takes besides parameters and data.

    None of them changes a shape, so on JAX every float here is a traced input of the
    compiled step (one compilation serves a whole grid over them); the solver's static
    choices (its name, the adjoint, the step budget) are read from ``solve``. Families
    extend it with their own weights (regularisers, KL annealing).

    Attributes
    ----------
    solve : ODESolveConfig
        Solver settings, read again at every call (so ``set_params(rtol=...)`` after fit
        changes inference).
    t1 : float
        End of the integration interval ``[0, t1]``.
    learning_rate, alpha : float
        Adam's step size; the L2 penalty ``0.5 * alpha * sum(W**2) / batch_size``.
    beta1, beta2, epsilon : float
        Adam's constants (Kingma & Ba 2015), as ``torch.optim.Adam``, ``optax.adam`` and
        scikit-learn's ``MLPClassifier``.
    """

    solve: ODESolveConfig
    t1: float = 1.0
    learning_rate: float = 1e-3
    alpha: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8

    def values(self) -> dict[str, float]:
        """Every float field but ``solve``: what JAX traces."""
        return {f.name: float(getattr(self, f.name)) for f in fields(self) if f.name != "solve"}


@dataclass(frozen=True)
class ODENetSpec(ModelSpec):
    """The ODE-Net of Chen et al. (2018), a continuous-depth residual network.

    ``x -> z0 = embed(x)``, padded with ``augment_dim`` zero channels (Dupont et al.
    2019); ``z(t1)`` solves ``dz/dt = field(t, z)`` from 0 to ``t1``; logits
    ``head(z(t1))``. ``embed``, ``field`` and ``head`` are layers of
    :mod:`odeplug.layers` (the solvers integrate the state flat; the layers see it in
    its shape, ``(C,)`` or ``(C, L)`` or ``(C, H, W)``).

    Without layers given (``embed_layer``, ``field_layer``, ``head_layer`` None) it is
    the MLP ODE-Net: ``embed = Dense(embed_dim, embed_activation)``; the field an MLP of
    ``[z, t]`` (hidden layers of widths ``field_hidden`` with ``field_activation``, then
    a linear layer back to the state); ``head = Dense(n_outputs)``. Parameter names
    (weights ``(fan_in, fan_out)``, applied as ``x @ W + b``): ``embed.weight``,
    ``embed.bias``, ``field.{i}.weight``, ``field.{i}.bias`` for each layer ``i`` of
    the field, ``head.weight``, ``head.bias``. Given layers name their parameters
    under ``embed``, ``field`` and ``head`` by the layers' own layouts.

    ``input_shape``: the shape of a row of ``X`` as the embedding sees it (None: flat,
    ``(n_features,)``).
    """

    family: ClassVar[str] = "classifier"
    program: ClassVar[tuple[str, str]] = ("odenet", "ODENetProgram")
    # Fields of model files written before the one vocabulary (format 1, issue 19):
    # old name -> its new names (odeplug._persistence).
    RENAMED_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "activation": ("embed_activation",)}

    n_features: int
    n_outputs: int
    embed_dim: int
    field_hidden: tuple[int, ...]
    augment_dim: int
    embed_activation: str
    field_activation: str
    dtype: str = "float32"
    input_shape: tuple[int, ...] | None = None
    embed_layer: Any = None
    field_layer: Any = None
    head_layer: Any = None

    def __post_init__(self):
        if self.input_shape is not None and math.prod(self.input_shape) != self.n_features:
            raise ValueError(f"input_shape {self.input_shape} has "
                             f"{math.prod(self.input_shape)} entries for rows of "
                             f"{self.n_features} features")
        state = self.state_shape
        out = self.layers()[1].output_shape(state)
        if out != state:
            raise ValueError(f"the field maps states of shape {state} to {out}: an ODE's "
                             "field must give the state's own shape")

    def layers(self) -> tuple[Any, Any, Any]:
        """``(embed, field, head)``, the MLP ODE-Net's where not given."""
        from .layers import ConcatTime, Dense, Sequential

        factor = glorot_factor(self.embed_activation)
        embed = (self.embed_layer if self.embed_layer is not None
                 else Dense(self.embed_dim, self.embed_activation, factor))
        if self.field_layer is not None:
            field = self.field_layer
        else:
            width = self._embedded_shape(embed)[0] + self.augment_dim
            hidden = [Dense(h, self.field_activation, factor) for h in self.field_hidden]
            dense = [*hidden, Dense(width, factor=factor)]
            field = Sequential([ConcatTime(dense[0]), *dense[1:]])
        head = (self.head_layer if self.head_layer is not None
                else Dense(self.n_outputs, factor=factor))
        return embed, field, head

    @property
    def row_shape(self) -> tuple[int, ...]:
        """The shape of a row of ``X`` for the embedding."""
        return self.input_shape or (self.n_features,)

    def _embedded_shape(self, embed) -> tuple[int, ...]:
        return embed.output_shape(self.row_shape)

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The ODE's state per row: the embedding's channels and ``augment_dim`` more."""
        embedded = self._embedded_shape(self.layers()[0])
        return (embedded[0] + self.augment_dim, *embedded[1:])

    @property
    def state_dim(self) -> int:
        return math.prod(self.state_shape)

    @property
    def field_sizes(self) -> tuple[int, ...]:
        """Widths of the MLP field's layers, input (state and time) to output."""
        return (self.state_dim + 1, *self.field_hidden, self.state_dim)

    @property
    def n_field_layers(self) -> int:
        return len(self.field_sizes) - 1

    def param_table(self) -> dict[str, Param]:
        embed, field, head = self.layers()
        state = self.state_shape
        table = embed.param_table(self.row_shape, "embed")
        table.update(field.param_table(state, "field"))
        table.update(head.param_table(state, "head"))
        return table


# Training trace estimators of a CNF (inference always takes the exact trace).
TRACE_ESTIMATORS = ("exact", "hutchinson")


@dataclass(frozen=True)
class CNFHyper(Hyper):
    """:class:`Hyper` of a continuous normalizing flow, with RNODE's regulariser weights
    (Finlay et al. 2020): the training loss adds ``kinetic_energy * mean(int |f|^2 dt)``
    and ``jacobian_norm * mean(int |df/dz|_F^2 dt)``. Traced on JAX, as every float of a
    ``Hyper``."""

    kinetic_energy: float = 0.0
    jacobian_norm: float = 0.0


@dataclass(frozen=True)
class CNFSpec(ModelSpec):
    """A continuous normalizing flow (Chen et al. 2018, Sec. 4; FFJORD, Grathwohl et al.
    2019): the fitted model, its architecture only.

    Time convention: data ``x`` at ``t = 0`` is carried by ``dz/dt = f(t, z)`` to the
    base distribution ``N(0, I)`` at ``t1``; ``log p(x) = log N(z(t1); 0, I) +
    int_0^t1 tr(df/dz) dt``, the log-density change solved in the same augmented state
    ``[z, int tr]``. Sampling solves from ``t1`` back to 0.

    The field ``f``: without ``field_layer`` (None), an MLP of ``[z, t]`` (the
    ODE-Net's field, the same canonical names): hidden layers of widths
    ``field_hidden`` with ``field_activation``, then a linear layer back to the state.
    Parameters ``field.{i}.weight`` ``(fan_in, fan_out)`` and ``field.{i}.bias`` for
    each layer ``i``. With ``field_layer`` (a layer of :mod:`odeplug.layers`): that
    layer on states of ``state_shape`` (``input_shape``, or flat rows ``(n_features,)``
    where it is None), mapping them to their own shape, its parameters under ``field``
    by the layers' own layouts; its trace comes from its per-layer JVPs.

    How it is trained (the trace estimator, RNODE's regularisers) is not part of the
    model: :class:`CNFTrainingSpec` wraps it with those choices. Inference (exact trace,
    no regulariser channels) is the program of this spec alone, so it compiles once per
    architecture whatever the training was. A program built from a bare ``CNFSpec``
    trains by maximum likelihood with the exact trace and no regulariser.
    """

    family: ClassVar[str] = "density"
    program: ClassVar[tuple[str, str]] = ("cnf", "CNFProgram")
    # Fields of model files written before the training choices left the fitted spec
    # (format 1): read and dropped (odeplug._persistence).
    RETIRED_FIELDS: ClassVar[frozenset[str]] = frozenset({"trace", "regularize"})

    n_features: int
    field_hidden: tuple[int, ...]
    field_activation: str
    dtype: str = "float32"
    # Added with the layer fields (files written before hold neither: the MLP, flat).
    input_shape: tuple[int, ...] | None = None
    field_layer: Any = None

    def __post_init__(self):
        if self.input_shape is not None and math.prod(self.input_shape) != self.n_features:
            raise ValueError(f"input_shape {self.input_shape} has "
                             f"{math.prod(self.input_shape)} entries for rows of "
                             f"{self.n_features} features")
        if self.field_layer is not None:
            state = self.state_shape
            out = self.field_layer.output_shape(state)
            if tuple(out) != state:
                raise ValueError(f"the field maps states of shape {state} to {tuple(out)}: "
                                 "a flow's field must give the state's own shape")

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The shape of a state row as the field's layers see it."""
        return tuple(self.input_shape) if self.input_shape is not None else (self.n_features,)

    def field_functions(self, ops: Any, mlp_field: Callable, mlp_field_jvp: Callable):
        """``(field, field_jvp)`` of this spec on an engine: the MLP's own forward mode
        (``mlp_field("field", n_layers, activation)`` and its ``_jvp``, the engine's),
        or a layer field realised by the engine's ``ops`` with per-layer JVPs
        (:func:`odeplug.layers.as_trace_field`). Written once for every engine."""
        if self.field_layer is None:
            n, act = self.n_field_layers, self.field_activation
            return mlp_field("field", n, act), mlp_field_jvp("field", n, act)
        from .layers import as_field, as_trace_field

        layer, shape = self.field_layer, self.state_shape
        return (as_field(layer, "field", shape, ops),
                as_trace_field(layer, "field", shape, ops))

    @property
    def field_sizes(self) -> tuple[int, ...]:
        """Widths of the MLP field's layers, input (state and time) to output."""
        return (self.n_features + 1, *self.field_hidden, self.n_features)

    @property
    def n_field_layers(self) -> int:
        return len(self.field_sizes) - 1

    def param_table(self) -> dict[str, Param]:
        if self.field_layer is not None:
            return self.field_layer.param_table(self.state_shape, "field")
        return mlp_params("field", self.field_sizes,
                          factor=glorot_factor(self.field_activation))


@dataclass(frozen=True)
class CNFTrainingSpec(ModelSpec):
    """What a CNF's maximum-likelihood training program is built from: the model
    (``cnf``, a :class:`CNFSpec`) and the training-only choices.

    ``trace`` is the training estimator of ``tr(df/dz)``: ``"exact"`` (a forward-mode
    pass with ``n_features`` tangents) or ``"hutchinson"`` (one tangent, the probe
    vector of the batch). ``regularize``: the state also integrates RNODE's kinetic
    energy and Jacobian Frobenius norm (two more channels; their weights are values of a
    :class:`CNFHyper`). The program trains the very parameters of ``cnf`` in the same
    training state whatever the choices, so a warm start may change them; its
    inference entry points are those of ``cnf``.
    """

    family: ClassVar[str] = "density"
    program: ClassVar[tuple[str, str]] = ("cnf", "CNFProgram")

    cnf: CNFSpec
    trace: str = "exact"
    regularize: bool = False

    def __post_init__(self):
        if self.trace not in TRACE_ESTIMATORS:
            raise ValueError(f"trace must be one of {TRACE_ESTIMATORS}, got {self.trace!r}")

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.cnf.dtype

    @property
    def n_features(self) -> int:
        return self.cnf.n_features

    @property
    def n_channels(self) -> int:
        """Integrated channels beside ``z``: the trace, and RNODE's two if regularised."""
        return 3 if self.regularize else 1

    def param_table(self) -> dict[str, Param]:
        return self.cnf.param_table()


def cnf_training(spec: CNFSpec | CNFTrainingSpec) -> CNFTrainingSpec:
    """The training spec of a CNF program's spec (a bare ``CNFSpec``: the exact trace,
    no regulariser)."""
    return spec if isinstance(spec, CNFTrainingSpec) else CNFTrainingSpec(spec)


def gru_params(name: str, n_inputs: int, n_hidden: int) -> dict[str, Param]:
    """A GRU cell's ``{name}.weight_ih`` ``(n_inputs, 3 n_hidden)`` (Glorot),
    ``{name}.weight_hh`` ``(n_hidden, 3 n_hidden)`` (one orthogonal block per gate) and
    zero biases ``{name}.bias_ih``, ``{name}.bias_hh``; gates in torch's order (reset,
    update, new)."""
    width = 3 * n_hidden
    return {
        f"{name}.weight_ih": Param((n_inputs, width), GlorotUniform(n_inputs, n_hidden),
                                   penalized=True),
        f"{name}.weight_hh": Param((n_hidden, width), Orthogonal(blocks=3), penalized=True),
        f"{name}.bias_ih": Param((width,), Zeros()),
        f"{name}.bias_hh": Param((width,), Zeros()),
    }


ENCODERS = ("ode_rnn", "rnn")


@dataclass(frozen=True)
class LatentODESpec(ModelSpec):
    """The latent ODE of Chen et al. (2018, Sec. 5) for irregularly sampled series.

    Encoder (``q(z0)``): a GRU cell run backwards in time over a series' observations,
    its input ``[x * m, m]`` (values with unobserved entries zeroed, and the mask), for
    ``"rnn"`` also the time gap to the observation processed before it (the paper's
    RNN); for ``"ode_rnn"`` (Rubanova et al. 2019) the hidden state also follows
    ``dh/dt = encoder_field(h)`` between observations. ``encoder.head`` maps the last
    hidden state to the mean and log-variance of ``z0`` (``latent_dim`` each).
    Latent dynamics: ``dz/dt = field(t, z)``, ``field_layer`` (a layer of
    :mod:`odeplug.layers` or an :class:`odeplug.UserField` mapping latent vectors
    ``(latent_dim,)`` to themselves; ``t`` measured from the series' first
    observation), or, where None, an MLP of ``z`` alone (autonomous) with hidden layers
    ``field_hidden`` and ``field_activation``, a linear last layer. Decoder: an MLP from
    ``z`` to the ``n_channels`` observations. The activations are per part:
    ``encoder_activation`` (the encoder's field and head), ``field_activation``,
    ``decoder_activation``. Likelihood: Gaussian, of standard deviation
    ``exp(likelihood.log_std)`` per channel when ``fit_noise``, else the fixed
    ``LatentHyper.noise_std``.

    Parameter names: ``encoder.gru.{weight_ih, weight_hh, bias_ih, bias_hh}``,
    ``encoder.field.{i}.{weight, bias}`` (``"ode_rnn"`` only), ``encoder.head.{weight,
    bias}``, ``field.{i}.{weight, bias}`` (the MLP field; a given layer names its
    parameters under ``field`` by its own layout), ``decoder.{i}.{weight, bias}``,
    ``likelihood.log_std`` (``fit_noise`` only).
    """

    family: ClassVar[str] = "latent"
    program: ClassVar[tuple[str, str]] = ("latent", "LatentProgram")
    # Format 1 had one activation for every part (odeplug._persistence).
    RENAMED_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "activation": ("field_activation", "encoder_activation", "decoder_activation")}

    n_channels: int
    latent_dim: int
    encoder: str
    encoder_hidden: int
    encoder_field_hidden: tuple[int, ...]
    field_hidden: tuple[int, ...]
    decoder_hidden: tuple[int, ...]
    encoder_activation: str
    field_activation: str
    decoder_activation: str
    fit_noise: bool
    dtype: str = "float32"
    field_layer: Any = None

    def __post_init__(self):
        out = self.field().output_shape(self.state_shape)
        if out != self.state_shape:
            raise ValueError(f"the field maps latent states of shape {self.state_shape} to "
                             f"{out}: an ODE's field must give the state's own shape")

    @property
    def state_shape(self) -> tuple[int, ...]:
        """The latent ODE's state per series: ``(latent_dim,)``."""
        return (self.latent_dim,)

    def field(self) -> Any:
        """The latent field as a layer: ``field_layer``, else the MLP of ``z`` (the same
        parameter names and draws as ``mlp_params("field", field_sizes)``)."""
        if self.field_layer is not None:
            return self.field_layer
        from .layers import Dense, Sequential

        factor = glorot_factor(self.field_activation)
        hidden = [Dense(h, self.field_activation, factor) for h in self.field_hidden]
        return Sequential([*hidden, Dense(self.latent_dim, factor=factor)])

    @property
    def gru_inputs(self) -> int:
        """Values, mask and (``"rnn"``) the time gap."""
        return 2 * self.n_channels + (self.encoder == "rnn")

    @property
    def encoder_field_sizes(self) -> tuple[int, ...]:
        return (self.encoder_hidden, *self.encoder_field_hidden, self.encoder_hidden)

    @property
    def field_sizes(self) -> tuple[int, ...]:
        return (self.latent_dim, *self.field_hidden, self.latent_dim)

    @property
    def decoder_sizes(self) -> tuple[int, ...]:
        return (self.latent_dim, *self.decoder_hidden, self.n_channels)

    def param_table(self) -> dict[str, Param]:
        # scikit-learn's Glorot factor, per part (the same draws as one activation for
        # all when they agree).
        encoder = glorot_factor(self.encoder_activation)
        table = gru_params("encoder.gru", self.gru_inputs, self.encoder_hidden)
        if self.encoder == "ode_rnn":
            table.update(mlp_params("encoder.field", self.encoder_field_sizes, factor=encoder))
        table.update(dense_params("encoder.head", self.encoder_hidden, 2 * self.latent_dim,
                                  factor=encoder))
        table.update(self.field().param_table(self.state_shape, "field"))
        table.update(mlp_params("decoder", self.decoder_sizes,
                                factor=glorot_factor(self.decoder_activation)))
        if self.fit_noise:
            table["likelihood.log_std"] = Param((self.n_channels,), Zeros())
        return table


@dataclass(frozen=True)
class LatentHyper(Hyper):
    """A latent ODE's step values: :class:`Hyper`'s and

    Attributes
    ----------
    kl_weight : float
        Weight of the KL term of the negative ELBO (KL annealing raises it to 1).
    noise_std : float
        The likelihood's standard deviation when the spec does not fit it.
    """

    kl_weight: float = 1.0
    noise_std: float = 1.0
