"""LatentODERegressor: the latent ODE of Chen et al. (2018, Sec. 5) for irregularly
sampled series, as a scikit-learn regressor."""

from __future__ import annotations

import contextlib
from numbers import Integral, Real

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import TransformerTags, check_array, check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._protocols import ROW_COUNTERS
from .._series import row_grids
from .._solver_options import DEFAULT_MAX_NUM_STEPS, make_solve_config
from .._specs import ACTIVATIONS, ENCODERS, LatentHyper, LatentODESpec
from .._user_field import UserField
from .._validation import real_array
from ..layers import Layer
from ._base import COMMON_CONSTRAINTS, FIELD_CONSTRAINTS, ODEEstimatorBase
from ._sklearn_compat import Interval, StrOptions

__all__ = ["LatentODERegressor"]

_FLOATS = (np.float64, np.float32)

# Times reach the programs as spans from each series' first observation, in the model's
# training dtype: float32 on the torch and jax engines, where a longer span is inf. Such
# spans are refused on every engine, so that a fit's outcome does not depend on the
# engine (no solve could cross them in float64 within a step budget either).
MAX_TIME_SPAN = float(np.finfo(np.float32).max)

# Posterior draws of z0 behind ``predict(return_std=True)``: the same draws (a fixed
# seed, shared by every series) at every call, so that the standard deviation of a
# series is a function of that series alone.
N_STD_DRAWS = 64
_STD_SEED = 20181

# Times are divided by ``time_scale_`` (fitted: the training series' median observation
# span over this, at least 1) before they reach the programs, so that the latent ODE
# never integrates across more than about this many of its own time units in an observed
# window. The field starts with Lipschitz constant about 1; over the 46 steps of
# ArrowHead (obs_times 0, 1, ...) its trajectories grew without bound and the default
# fit diverged at epoch 2 (loss 2.2e11; docs/real_data.md). The spirals of the paper's
# benchmark (span 1.87) and the tests' series (span 3) are left as they are.
MAX_UNSCALED_SPAN = 4.0


def _ndim(a) -> int:
    """Dimensions of an array-like (lists and array-likes without ``ndim`` too)."""
    if a is None:
        return 0
    ndim = getattr(a, "ndim", None)
    return int(ndim) if ndim is not None else np.asarray(a, dtype=object).ndim


def _check_spans(spans: np.ndarray, name: str) -> None:
    """Refuse times (``name``) that span :data:`MAX_TIME_SPAN` or more from a series'
    first observation (before or after it)."""
    with np.errstate(invalid="ignore"):
        longest = np.nanmax(np.abs(spans), initial=0.0)
    if not longest < MAX_TIME_SPAN:
        raise ValueError(
            f"{name} span {longest:.3g} from a series' first observation; the latent ODE "
            f"takes spans below {MAX_TIME_SPAN:.3g} (float32's range, in which the torch "
            "and jax engines train) on every engine: rescale the times")


class _Series:
    """A batch of series, validated, in the arrays the programs take."""

    def __init__(self, values, times):
        self.values = values  # (n, T, C) float64, NaN unobserved
        self.times = times  # (n, T) float64, NaN padding at the end
        observed = ~np.isnan(values)
        any_observed = observed.any(axis=2)
        counts = any_observed.sum(axis=1)
        self.n, self.n_times, self.n_channels = values.shape
        # Each series' observed times, left-compacted (increasing), then reversed for
        # the encoder (it runs backwards in time).
        order = np.argsort(~any_observed, axis=1, kind="stable")
        width = max(int(counts.max()), 1)
        steps = np.arange(width)
        forward_ok = steps[None, :] < counts[:, None]
        forward = np.take_along_axis(order, np.minimum(steps[None, :], self.n_times - 1), 1)
        backward = np.take_along_axis(
            order, np.clip(counts[:, None] - 1 - steps[None, :], 0, None), 1)
        rows = np.arange(self.n)[:, None]
        self.t0 = times[np.arange(self.n), order[:, 0]]
        self.enc_values = np.where(forward_ok[..., None], values[rows, backward], np.nan)
        self.enc_mask = forward_ok[..., None] & observed[rows, backward]
        self.enc_times = np.where(forward_ok, times[rows, backward], np.nan)
        self.obs_values = np.where(forward_ok[..., None], values[rows, forward], np.nan)
        self.obs_mask = forward_ok[..., None] & observed[rows, forward]
        self.obs_offsets = np.where(forward_ok, times[rows, forward] - self.t0[:, None], 0.0)
        self.last_time = np.nanmax(times, axis=1)
        with np.errstate(invalid="ignore"):
            n_grid = (~np.isnan(times)).sum(axis=1)
        before = times[np.arange(self.n), np.maximum(n_grid - 2, 0)]
        self.step = np.where(n_grid > 1, self.last_time - before, 1.0)

    def encoder_inputs(self, dtype):
        return (np.where(self.enc_mask, self.enc_values, 0.0).astype(dtype),
                self.enc_mask, self.enc_times)


class LatentODERegressor(RegressorMixin, ODEEstimatorBase):
    """Latent ODE for irregularly sampled time series (Chen et al. 2018, Sec. 5).

    An encoder reads a series' observations backwards in time and gives ``q(z0)``, a
    Gaussian over the latent state at the series' first observation; the latent ODE
    ``dz/dt = f(z)`` carries ``z0`` to any time; a decoder maps latent states to
    observations. Trained as a variational autoencoder (negative ELBO over the observed
    entries of ``X`` and ``y``, with KL annealing), it interpolates and extrapolates a
    series to any time, with uncertainty.

    Data. ``X`` of shape ``(n_series, n_times)`` (one channel) or ``(n_series, n_times,
    n_channels)`` holds the values at the observation times; NaN means not observed, per
    value. The times are ``obs_times`` (one grid for every series) or the ``times``
    keyword of the methods (one row per series, NaN-padded at the end). ``y`` holds the
    values at ``target_times`` (inside the observation window or after it), of shape
    ``(n_series,)``, ``(n_series, n_targets)`` or ``(n_series, n_targets, n_channels)``;
    NaN targets are left out of the loss.

    Parameters
    ----------
    latent_dim : int, default=4
        Dimension of the latent state ``z`` (the width of :meth:`transform`'s output).
    hidden_layer_sizes : tuple of int, default=(20, 20)
        Hidden layers of the latent vector field ``f`` (none: a linear field), as in
        every odeplug estimator.
    activation : {"tanh", "softplus", "relu", "logistic", "identity"}, default="tanh"
        Activation of the vector field's hidden layers, as in every odeplug estimator.
    backend : str, default=None
        ``"reference"``, ``"torch"`` or ``"jax"``; None: the configuration, then
        ``ODEPLUG_BACKEND``, then ``"reference"``. Read again at predict time.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the torch and jax engines compute: "cuda" a GPU (an error naming what is
        missing where the engine sees none), "auto" a GPU where the engine sees one,
        else the CPU. The reference engine computes on the CPU ("cuda" is refused).
        Read at every call; fitted parameters are NumPy arrays, so a model fitted on a
        GPU predicts on a CPU-only machine. On jax, training steps are data parallel
        over all devices of the platform when it has several
        (``odeplug.set_config(data_parallel=False)`` turns it off).
    obs_times : array-like of shape (n_times,), default=None
        Observation times shared by the series (strictly increasing); None means
        ``0, 1, ..., n_times - 1``.
    target_times : array-like of shape (n_targets,), default=None
        Times of the targets ``y``. None: the ``n_targets`` steps after the last
        observation time (a step is the grid's last spacing, 1 for one time).
    encoder : {"ode_rnn", "rnn"}, default="ode_rnn"
        ``"ode_rnn"`` (Rubanova et al. 2019): GRU updates at the observations and an ODE
        carrying the hidden state between them. ``"rnn"``: the paper's RNN, a GRU over
        the observations with the time gaps as inputs. Both run backwards in time.
    encoder_hidden_sizes : tuple of int, default=(25, 25)
        Width of the GRU's state, then the hidden layers of the ``"ode_rnn"`` encoder's
        ODE (unused by ``"rnn"``; none: a linear field).
    encoder_activation : {"tanh", "softplus", "relu", "logistic", "identity"}, \
default="tanh"
        Activation of the ``"ode_rnn"`` encoder's ODE and of the encoder's head.
    decoder_hidden_sizes : tuple of int, default=(20,)
        Hidden layers of the decoder (none: linear).
    decoder_activation : {"tanh", "softplus", "relu", "logistic", "identity"}, \
default="tanh"
        Activation of the decoder's hidden layers.
    noise_std : float or "auto", default="auto"
        Standard deviation of the Gaussian likelihood; "auto" fits one per channel.
    kl_annealing : int, default=10
        Epochs over which the weight of the KL term rises linearly to 1 (0: weight 1
        from the start). The training loss of those epochs rises with the weight, so
        they do not count towards ``n_iter_no_change`` (without early stopping), and
        ``best_loss_`` is the lowest loss after them.
    solver : str, default="dopri5"
        One of ``odeplug.SOLVERS``; read again at predict time, as the tolerances.
    rtol, atol : float, default=1e-3, 1e-4
    step_size : float, default=None
        Step of fixed-step solvers.
    adjoint : bool or BacksolveAdjoint, default=False
        Gradients by the adjoint method, or (False) by backpropagation through the
        solver: the latent ODE's solves are short, and backpropagation is faster.
    max_num_steps : int, default=4096
    alpha : float, default=0.0
        L2 penalty ``0.5 * alpha * sum(W**2) / batch_size`` on the weights.
    batch_size : int or "auto", default="auto"
        "auto" is ``min(200, n_series)``.
    learning_rate : {"constant", "adaptive"}, default="constant"
        Schedule of Adam's step size (scikit-learn's MLP names, applied to Adam):
        "constant" keeps ``learning_rate_init``; "adaptive" divides it by 5 each time
        ``n_iter_no_change`` epochs pass without progress, instead of stopping, and
        stops once that happens at a step size of 1e-6 or less. Each epoch's step size
        is in ``curves_["learning_rate"]``. Every ``fit`` (``warm_start`` too) starts at
        ``learning_rate_init``, as scikit-learn's MLP; ``partial_fit`` stays there.
    learning_rate_init : float, default=1e-2
        Adam's step size.
    max_iter : int, default=200
        Maximum number of epochs.
    tol : float, default=1e-4
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the series and stop when their ELBO stops
        improving; keep the best parameters.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    random_state : int, RandomState instance or None, default=None
        Seeds the initial parameters, the minibatches, the reparameterisation noise and
        the validation split, on every engine.
    verbose : int, default=0
    warm_start : bool, default=False
    field : "mlp", odeplug.layers.Layer or odeplug.UserField, default="mlp"
        The latent vector field ``f``. "mlp": an MLP of ``z`` alone (autonomous), hidden
        layers ``hidden_layer_sizes`` with ``activation``, a linear last layer. A layer
        of :mod:`odeplug.layers` mapping latent vectors ``(latent_dim,)`` to themselves,
        for instance ``Sequential([ConcatSquash(Dense(32, activation="tanh")),
        Dense(latent_dim)])`` (FFJORD's time conditioning): its parameters under
        ``field.`` by the layer's own layout; it sees the time measured from the series'
        first observation. ``odeplug.UserField(cls, **kwargs)``: the user's own module
        maps ``(t, z)`` to ``dz/dt`` on latent states ``(n, latent_dim)``, a
        ``torch.nn.Module`` with torchdiffeq's ``forward(t, y)`` (the torch engine only)
        or an ``equinox.Module`` with diffrax's ``__call__(t, y, args)`` on one row (the
        jax engine only); any other engine is refused before anything changes, and
        ``odeplug.load(path, field=...)`` takes it back (see ``ODEClassifier``'s
        ``field``). Strings and layers are valid grid values: ``{"field": ["mlp",
        layer]}``. The encoder and decoder stay odeplug's.

    Attributes
    ----------
    n_features_in_ : int
        ``n_times`` of the training ``X``.
    n_channels_ : int
    n_targets_ : int
        Targets per series in the training ``y``.
    noise_std_ : ndarray of shape (n_channels_,)
        The likelihood's standard deviation (fitted or fixed).
    time_scale_ : float
        What the times are divided by inside the model: the training series' median
        span from first to last observation time over 4, or 1 where that is smaller.
        Over a long span in the field's own units (ArrowHead's 46 steps at
        ``obs_times=None``) the default fit diverged; the paper's spirals (span 1.87)
        are unchanged. Predictions, targets and ``eval_times`` stay in the data's
        units.
    backend_ : str
    params_ : dict of str to ndarray
        Canonical parameters, the same on every engine.
    loss_curve_ : list of float
        Negative ELBO per series, each epoch.
    curves_ : dict of str to list
        Every metric per epoch: ``loss``, ``reconstruction``, ``kl``, ``nfe_forward``,
        ``nfe_backward``.
    n_iter_, t_ : int
    nfe_ : dict
        ``{"nfe_forward": ..., "nfe_backward": ...}``: mean function evaluations per
        minibatch in the last epoch, as ``ODEClassifier``'s.
    best_loss_, validation_scores_, best_validation_score_ :
        As ``ODEClassifier``'s.

    See Also
    --------
    ODEClassifier : The ODE-Net.

    Notes
    -----
    Every series is solved with its own steps at prediction, so a prediction does not
    depend on the other series of ``X``; :meth:`inference_stats` reports that cost per
    series.

    ``z0`` sits at each series' first observation. Predictions at earlier times (the
    state at ``t = 0`` of a series first observed at 0.55, say) solve the latent ODE
    backwards from ``z0``, the posterior draws of ``return_std`` too: the fitted model
    is unchanged, where anchoring ``z0`` at a common start time would make it mean
    another time for every data set. Such times extrapolate the dynamics fitted on the
    observed windows into the past. ``fit``'s targets must be at or after each series'
    first observation.

    Examples
    --------
    >>> import numpy as np
    >>> from odeplug import LatentODERegressor
    >>> t = np.linspace(0, 3, 8)
    >>> phase = np.random.default_rng(0).uniform(0, 3, 40)
    >>> X = np.sin(t + phase[:, None])
    >>> y = np.sin(3.5 + phase)
    >>> model = LatentODERegressor(2, obs_times=t, target_times=[3.5], encoder="rnn",
    ...                            max_iter=5, random_state=0).fit(X, y)
    >>> model.predict(X[:2]).shape
    (2,)
    >>> model.transform(X[:2]).shape
    (2, 2)
    """

    def __init__(
        self,
        latent_dim=4,
        *,
        hidden_layer_sizes=(20, 20),
        activation="tanh",
        backend=None,
        device="cpu",
        obs_times=None,
        target_times=None,
        encoder="ode_rnn",
        encoder_hidden_sizes=(25, 25),
        encoder_activation="tanh",
        decoder_hidden_sizes=(20,),
        decoder_activation="tanh",
        noise_std="auto",
        kl_annealing=10,
        solver="dopri5",
        rtol=1e-3,
        atol=1e-4,
        step_size=None,
        adjoint=False,
        max_num_steps=DEFAULT_MAX_NUM_STEPS,
        alpha=0.0,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=1e-2,
        max_iter=200,
        tol=1e-4,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=None,
        verbose=0,
        warm_start=False,
        field="mlp",
    ):
        self.latent_dim = latent_dim
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.backend = backend
        self.device = device
        self.obs_times = obs_times
        self.target_times = target_times
        self.encoder = encoder
        self.encoder_hidden_sizes = encoder_hidden_sizes
        self.encoder_activation = encoder_activation
        self.decoder_hidden_sizes = decoder_hidden_sizes
        self.decoder_activation = decoder_activation
        self.noise_std = noise_std
        self.kl_annealing = kl_annealing
        self.solver = solver
        self.rtol = rtol
        self.atol = atol
        self.step_size = step_size
        self.adjoint = adjoint
        self.max_num_steps = max_num_steps
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.field = field

    _parameter_constraints: dict = {
        **{k: v for k, v in COMMON_CONSTRAINTS.items() if k != "t1"},
        "obs_times": [None, "array-like"],
        "target_times": [None, "array-like"],
        "encoder": [StrOptions(set(ENCODERS))],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        **FIELD_CONSTRAINTS,
        "encoder_hidden_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "encoder_activation": [StrOptions(set(ACTIVATIONS))],
        "decoder_hidden_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "decoder_activation": [StrOptions(set(ACTIVATIONS))],
        "noise_std": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "kl_annealing": [Interval(Integral, 0, None, closed="left")],
        "field": [StrOptions({"mlp"}), Layer, UserField],
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.target_tags.multi_output = True
        # transform: the posterior mean of z0, in float64 whatever X's dtype.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags

    # Format 1 (before issue 19's one vocabulary) named the field's layers so.
    RENAMED_PARAMS = {"field_hidden_sizes": "hidden_layer_sizes"}

    @classmethod
    def _upgrade_saved(cls, params, fitted):
        """Format 1 had one ``activation`` for the encoder, the field and the decoder."""
        if "field_hidden_sizes" in params and "encoder_activation" not in params:
            params = {**params, "encoder_activation": params["activation"],
                      "decoder_activation": params["activation"]}
        return super()._upgrade_saved(params, fitted)

    # ------------------------------------------------------------ parameters

    @staticmethod
    def _sizes(name: str, sizes, *, allow_empty: bool) -> tuple[int, ...]:
        given = sizes
        sizes = (sizes,) if isinstance(sizes, Integral) else tuple(sizes)
        if (not sizes and not allow_empty) or any(
                isinstance(s, bool) or not isinstance(s, Integral) or s < 1 for s in sizes):
            raise ValueError(f"{name} must be positive ints, got {given!r}")
        return tuple(int(s) for s in sizes)

    def _spec_of(self, n_channels: int, dtype: str) -> LatentODESpec:
        encoder = self._sizes("encoder_hidden_sizes", self.encoder_hidden_sizes,
                              allow_empty=False)
        return LatentODESpec(
            n_channels=n_channels, latent_dim=int(self.latent_dim), encoder=self.encoder,
            encoder_hidden=encoder[0],
            encoder_field_hidden=encoder[1:] if self.encoder == "ode_rnn" else (),
            field_hidden=self._sizes("hidden_layer_sizes", self.hidden_layer_sizes,
                                     allow_empty=True),
            decoder_hidden=self._sizes("decoder_hidden_sizes", self.decoder_hidden_sizes,
                                       allow_empty=True),
            encoder_activation=self.encoder_activation, field_activation=self.activation,
            decoder_activation=self.decoder_activation, fit_noise=self.noise_std == "auto",
            dtype=dtype, field_layer=None if isinstance(self.field, str) else self.field)

    @staticmethod
    def _check_field_engine(field, engine) -> None:
        """A user module runs on its own engine only: refused on any other, before
        anything is built or changed (fit) or computed (inference)."""
        if isinstance(field, UserField):
            field.check_engine(engine.name)

    @contextlib.contextmanager
    def _running(self):
        with super()._running() as engine:
            self._check_field_engine(self._spec.field_layer, engine)
            yield engine

    def _hyper(self, **values) -> LatentHyper:
        noise = 1.0 if self.noise_std == "auto" else float(self.noise_std)
        fields = dict(solve=self._solve_config(), learning_rate=float(self.learning_rate_init),
                      alpha=float(self.alpha), noise_std=noise)
        fields.update(values)
        return LatentHyper(**fields)

    def _inference_hyper(self) -> LatentHyper:
        return self._hyper(noise_std=float(self._fixed_noise))

    def _kl_weight(self, epoch: int) -> float:
        return 1.0 if not self.kl_annealing else min(1.0, epoch / int(self.kl_annealing))

    # ------------------------------------------------------------------ data

    def _check_X(self, X, times, *, reset: bool) -> _Series:
        ndim = _ndim(X)
        if ndim not in (2, 3):
            raise ValueError(
                f"X must have shape (n_series, n_times) or (n_series, n_times, n_channels); "
                f"got a {ndim}-D array. Reshape your data: one row per series.")
        if times is None or reset:
            X = validate_data(self, X, reset=reset, dtype=_FLOATS, allow_nd=True,
                              ensure_all_finite="allow-nan", ensure_min_samples=1)
        else:  # per-series times: series of any length
            X = check_array(X, dtype=_FLOATS, allow_nd=True, ensure_all_finite="allow-nan")
        values = np.asarray(X, dtype=np.float64)
        if values.ndim == 2:
            values = values[:, :, None]
        n, n_times, n_channels = values.shape
        if not reset and n_channels != self.n_channels_:
            raise ValueError(f"X has {n_channels} channel(s), but {type(self).__name__} was "
                             f"fitted with {self.n_channels_}")
        if times is None:
            grid = self._shared_times(n_times)
            grid = np.broadcast_to(grid, (n, n_times)).copy()
        else:
            grid = self._per_series_times(times, n, n_times, values)
        empty = np.flatnonzero(np.isnan(values).all(axis=(1, 2)))
        if empty.size:
            raise ValueError(f"series {empty[0]} of X has no observed value (all NaN): "
                             "each series needs at least one")
        if reset:
            unscaled = _Series(values, grid)
            span = float(np.median(unscaled.last_time - unscaled.t0))
            self.time_scale_ = max(1.0, span / MAX_UNSCALED_SPAN) if np.isfinite(span) \
                else 1.0
        series = _Series(values, grid / self._time_scale)
        _check_spans(series.last_time - series.t0, "obs_times" if times is None else "times")
        return series

    @property
    def _time_scale(self) -> float:
        """``time_scale_`` (1 for a model saved before it existed)."""
        return float(getattr(self, "time_scale_", 1.0))

    def _solve_config(self):
        """The base's settings, with ``step_size`` in the model's time units: the user
        gives it in the data's, as every time."""
        config = super()._solve_config()
        if self.step_size is None or self._time_scale == 1.0:
            return config
        return make_solve_config(
            solver=self.solver, rtol=self.rtol, atol=self.atol,
            step_size=float(self.step_size) / self._time_scale, adjoint=self.adjoint,
            max_num_steps=self.max_num_steps)

    def _shared_times(self, n_times: int) -> np.ndarray:
        if self.obs_times is None:
            return np.arange(n_times, dtype=np.float64)
        grid = real_array(self.obs_times, "obs_times")
        if grid.shape != (n_times,):
            raise ValueError(f"obs_times has shape {grid.shape}, X has {n_times} times: "
                             f"it must be of shape ({n_times},)")
        if not np.all(np.isfinite(grid)) or np.any(np.diff(grid) <= 0):
            raise ValueError("obs_times must be finite and strictly increasing")
        return grid

    @staticmethod
    def _per_series_times(times, n, n_times, values) -> np.ndarray:
        grid = real_array(times, "times")
        if grid.shape != (n, n_times):
            raise ValueError(f"times has shape {grid.shape}; for X of {n} series of "
                             f"{n_times} times it must be of shape ({n}, {n_times})")
        if np.isinf(grid).any():
            raise ValueError("times must be finite or NaN (padding)")
        missing = np.isnan(grid)
        # NaN only as padding at the end of a row, with nothing observed there.
        inner = missing[:, :-1] & ~missing[:, 1:]
        if inner.any():
            row = int(np.flatnonzero(inner.any(axis=1))[0])
            raise ValueError(f"times of series {row} contain NaN before observed times: NaN "
                             "is only padding at the end of a row")
        at_nan = missing & ~np.isnan(values).all(axis=2)
        if at_nan.any():
            row = int(np.flatnonzero(at_nan.any(axis=1))[0])
            raise ValueError(f"series {row} has values at NaN times")
        with np.errstate(invalid="ignore"):
            steps = np.diff(grid, axis=1)
        if np.any(steps <= 0):
            row = int(np.flatnonzero((steps <= 0).any(axis=1))[0])
            raise ValueError(f"times of series {row} do not increase strictly")
        return grid

    def _target_offsets(self, series: _Series, target_times, n_targets: int | None,
                        name: str = "target_times", *, before_first: bool = True):
        """Target times from each series' first observation ``(n, K)`` (NaN: none);
        ``name``: the argument they come from, for the errors; ``before_first``: times
        before a series' first observation are answered (inference), else refused
        (fit: see :meth:`_decoded_at`)."""
        given = target_times if target_times is not None else self.target_times
        if given is None:
            k = 1 if n_targets is None else n_targets
            times = series.last_time[:, None] + series.step[:, None] * np.arange(1, k + 1)
        else:
            times = real_array(given, name)
            per_series = target_times is not None and times.ndim == 2
            if times.ndim == 1:
                if not np.all(np.isfinite(times)):
                    raise ValueError(f"{name} must be finite")
                times = np.broadcast_to(times, (series.n, times.shape[0])).copy()
            elif not per_series or times.shape[0] != series.n:
                raise ValueError(f"{name} has shape {times.shape}; it must be of shape "
                                 f"(n_targets,) or, per series, ({series.n}, n_targets)")
            if np.isinf(times).any():
                raise ValueError(f"{name} must be finite or NaN (no target)")
            times = times / self._time_scale  # the series' units (_check_X)
        offsets = times - series.t0[:, None]
        _check_spans(offsets, name if given is not None else "the default target times")
        if before_first:
            return offsets
        with np.errstate(invalid="ignore"):
            early = offsets < 0
        if early.any():
            row = int(np.flatnonzero(early.any(axis=1))[0])
            raise ValueError(
                f"a target time of series {row} precedes its first observation "
                f"(t={series.t0[row] * self._time_scale:.6g}): fit trains on targets at or "
                "after it (z0 sits there); predict, predict_trajectory and score answer "
                "earlier times")
        return offsets

    def _check_y(self, y, series: _Series, offsets: np.ndarray, purpose: str = "fit"
                 ) -> np.ndarray:
        """``y`` as ``(n, K, C)``; raises unless it matches the targets and channels
        (``purpose``: what it is for, in the errors)."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = check_array(y, dtype=_FLOATS, ensure_2d=False, allow_nd=True,
                        ensure_all_finite="allow-nan", input_name="y")
        y = np.asarray(y, dtype=np.float64)
        n, k, c = series.n, offsets.shape[1], series.n_channels
        expected = {1: (n,), 2: (n, k), 3: (n, k, c)}.get(y.ndim)
        if expected is None or y.shape != expected or (y.ndim < 3 and c != 1) or (
                y.ndim == 1 and k != 1):
            raise ValueError(
                f"y has shape {y.shape}; for {n} series, {k} target time(s) and {c} "
                f"channel(s) it must be of shape {(n, k, c)}"
                + (f" or {(n, k)}" if c == 1 else "") + (f" or {(n,)}" if c == 1 and k == 1
                                                         else ""))
        y = y.reshape(n, k, c)
        if np.isnan(y).all():
            raise ValueError(f"Input y contains NaN only: there is no target to {purpose}")
        stray = np.isnan(offsets)[..., None] & ~np.isnan(y)
        if stray.any():
            raise ValueError("y has values where target_times is NaN (no target there)")
        return y

    def _targets_for(self, y, series, target_times):
        """Offsets of the fit's targets; K from y's shape when target_times is None."""
        if target_times is None and self.target_times is None:
            y_arr = np.asarray(y) if y is not None else None
            k = 1 if y_arr is None or y_arr.ndim < 2 else y_arr.shape[1]
            return self._target_offsets(series, None, k, before_first=False)
        return self._target_offsets(series, target_times, None, before_first=False)

    # ------------------------------------------------------------------- fit

    def fit(self, X, y, times=None, target_times=None):
        """Fit the latent ODE to series X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_series, n_times) or (n_series, n_times, n_channels)
            Values at the observation times; NaN: not observed.
        y : array-like of shape (n_series,), (n_series, n_targets) or \
(n_series, n_targets, n_channels)
            Values at the target times; NaN: left out of the loss.
        times : array-like of shape (n_series, n_times), default=None
            Each series' observation times (NaN-padded at the end); default
            ``obs_times``.
        target_times : array-like of shape (n_series, n_targets), default=None
            Each series' target times (NaN: no target); default ``target_times``.

        Returns
        -------
        self : LatentODERegressor

        Raises
        ------
        ValueError
            Input of the wrong shape, infinite values, a series with nothing observed,
            times that are not real numbers or do not increase, times spanning
            ``MAX_TIME_SPAN`` (float32's range) or more from a series' first
            observation, ``y`` that does not match the targets. The estimator is left
            as it was.
        TrainingDivergedError
            As ``ODEClassifier``'s.
        """
        return self._fit_transaction(self._fit, X, y, times, target_times, incremental=False)

    def partial_fit(self, X, y, times=None, target_times=None):
        """One epoch over (X, y), continuing from the current parameters.

        Parameters
        ----------
        X, y, times, target_times
            As :meth:`fit`.

        Returns
        -------
        self : LatentODERegressor
        """
        return self._fit_transaction(self._fit, X, y, times, target_times, incremental=True)

    def fit_transform(self, X, y, times=None, target_times=None):
        """Fit, then return the posterior mean of ``z0`` of each series of X.

        Parameters
        ----------
        X, y, times, target_times
            As :meth:`fit`.

        Returns
        -------
        z0 : ndarray of shape (n_series, latent_dim)
        """
        return self.fit(X, y, times=times, target_times=target_times).transform(
            X, times=times)

    def _fit(self, X, y, times, target_times, *, incremental: bool):
        if incremental:
            self._check_partial_fit_params()
        first_call = not (incremental or self.warm_start) or not hasattr(self, "params_")
        if y is None:
            self._check_y(None, None, None)
        series = self._check_X(X, times, reset=first_call)
        offsets = self._targets_for(y, series, target_times)
        y_ndim = _ndim(y)
        y = self._check_y(y, series, offsets)

        engine = self._engine()
        self._check_field_engine(self.field, engine)
        self._solve_config()
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        dtype = engine.default_dtype if first_call else self._spec.dtype
        spec = self._spec_of(series.n_channels, dtype)
        if not first_call and spec.n_channels != self._spec.n_channels:
            raise ValueError(f"X has {spec.n_channels} channel(s), the model was fitted with "
                             f"{self._spec.n_channels}")
        params, history = self._start(engine, spec, first_call=first_call, seed=seed)

        arrays = self._training_arrays(series, y, offsets, spec.dtype)
        latent_dim = spec.latent_dim

        def draw_noise(generator, n_rows):
            return (generator.standard_normal((n_rows, latent_dim)).astype(spec.dtype),)

        def hyper(epoch):
            return self._hyper(kl_weight=self._kl_weight(epoch))

        validation_score = None
        if self.early_stopping and not incremental:
            order = rng.permutation(series.n)
            n_val = max(1, int(round(self.validation_fraction * series.n)))
            if n_val >= series.n:
                raise ValueError("validation_fraction leaves no series to train on")
            held, kept = order[:n_val], order[n_val:]
            val_batch = tuple(a[held] for a in arrays) + draw_noise(rng, n_val)
            arrays = tuple(a[kept] for a in arrays)
            program = engine.make_program(spec)

            def validation_score(current):
                state = program.init(current)
                return -program.evaluate(state, val_batch, self._hyper())["loss"]

        self.n_channels_ = series.n_channels
        self.n_targets_ = offsets.shape[1]
        self._y_ndim = y_ndim
        # Before training: a fit that diverges keeps its last sane parameters
        # (_store_fit), and inference needs the fixed noise with them.
        self._fixed_noise = 1.0 if self.noise_std == "auto" else float(self.noise_std)
        return self._run_training(
            engine, spec, params, arrays, rng=rng, history=history,
            continuing=not first_call, max_iter=1 if incremental else int(self.max_iter),
            validation_score=validation_score, draw_noise=draw_noise, hyper=hyper,
            # The negative ELBO rises while its KL weight does: those epochs are no
            # plateau (with one step per epoch, a fit of under 200 series stopped there,
            # after 14 epochs, on ItalyPowerDemand; docs/real_data.md).
            warmup_epochs=int(self.kl_annealing))

    def _store_fit(self, engine, spec, history, params) -> None:
        """The base's fitted attributes, and ``noise_std_`` from the same parameters:
        the one path of a completed fit and of a diverged one that keeps its last sane
        parameters."""
        super()._store_fit(engine, spec, history, params)
        self.noise_std_ = self._noise_of(self.params_)

    @staticmethod
    def _training_arrays(series: _Series, y: np.ndarray, offsets: np.ndarray, dtype):
        """The training loop's arrays (a program's batch without the noise): the
        encoder's inputs, then the decode times (the observations', then the targets'),
        values and mask."""
        dec_times = np.concatenate([series.obs_offsets, np.nan_to_num(offsets)], axis=1)
        dec_values = np.concatenate([series.obs_values, y], axis=1)
        dec_mask = np.concatenate([series.obs_mask, ~np.isnan(y)], axis=1)
        enc_values, enc_mask, enc_times = series.encoder_inputs(dtype)
        return (enc_values, enc_mask, enc_times, dec_times,
                np.nan_to_num(dec_values).astype(dtype), dec_mask)

    def _noise_of(self, params) -> np.ndarray:
        if "likelihood.log_std" in params:
            return np.exp(np.asarray(params["likelihood.log_std"], dtype=np.float64))
        return np.full(self._spec.n_channels, self._fixed_noise)

    # -------------------------------------------------------------- inference

    def _posterior(self, series: _Series, program, hyper, stats: list | None = None):
        """Mean and log-variance of ``q(z0)``; the encoder's per-series counters are
        appended to ``stats`` (when given)."""
        values, mask, enc_times = series.encoder_inputs(np.float64)
        mean, log_var, counts = program.encode(self.params_, values, mask, enc_times, hyper)
        if stats is not None:
            stats.append(counts)
        return mean, log_var

    def _decoded_at(self, program, hyper, z0, offsets, stats: list | None = None):
        """Decoded trajectories ``(n, K, C)`` of ``z0`` at ``offsets`` ``(n, K)``, of
        any sign: times before a series' first observation are solved backwards. The
        solves' per-row counters are appended to ``stats`` (when given).

        Why backwards from z0 rather than z0 anchored at a common start time (the
        paper's choice): z0 sits at each series' first observation, where the encoder
        (which reads the series backwards in time) has seen every observation and
        where training put it, so the fitted model and its training are unchanged; an
        ODE's flow runs both ways, so the state at an earlier time is the solution of
        the same field from z0 over a decreasing grid (every engine's row solvers take
        one). A common anchor would instead make z0 mean another time for every data
        set (its earliest observation, or an arbitrary origin of the times) and retrain
        every model. Posterior draws of z0 are carried back the same way, so
        ``return_std`` widens where the dynamics spread them (a damped system's past).
        The cost: the past is extrapolated with dynamics fitted on the observed
        window and after it.
        """
        with np.errstate(invalid="ignore"):
            before = offsets < 0
        grids, index = row_grids(np.where(before, np.nan, offsets))
        zs, counts = program.trajectory(self.params_, z0, grids, hyper)
        if stats is not None:
            stats.append(counts)
        z = np.take_along_axis(zs, index[..., None], axis=1)
        rows = np.flatnonzero(before.any(axis=1))
        if rows.size:  # each series' own decreasing grid, from 0 to its earliest time
            early = before[rows]
            grids, index = row_grids(np.where(early, -offsets[rows], np.nan))
            zs, back_counts = program.trajectory(self.params_, z0[rows], -grids, hyper)
            if stats is not None:  # the backward solves' cost, on their series
                stats.append({name: np.zeros(len(z0), dtype=np.asarray(value).dtype)
                              for name, value in back_counts.items()})
                for name, value in back_counts.items():
                    stats[-1][name][rows] = np.asarray(value)
            back = np.take_along_axis(zs, index[..., None], axis=1)
            z[rows] = np.where(early[..., None], back, z[rows])
        out = program.decode(self.params_, z, hyper)
        return np.where(np.isnan(offsets)[..., None], np.nan, out)

    def _predict_offsets(self, X, times, offsets_of, return_std: bool):
        check_is_fitted(self, "params_")
        series = self._check_X(X, times, reset=False)
        return self._predicted(series, offsets_of(series), return_std)

    def _predicted(self, series: _Series, offsets: np.ndarray, return_std: bool,
                   stats: list | None = None):
        """Posterior-mean predictions ``(n, K, C)`` at ``offsets``, and their standard
        deviations (None without ``return_std``); the counters of the encoder's and the
        trajectories' solves are appended to ``stats`` (when given)."""
        with self._running() as engine:
            program = engine.make_program(self._spec)
            hyper = self._inference_hyper()
            mean, log_var = self._posterior(series, program, hyper, stats)
            prediction = self._decoded_at(program, hyper, mean, offsets, stats)
            if not return_std:
                return prediction, None
            eps = np.random.default_rng(_STD_SEED).standard_normal(
                (N_STD_DRAWS, self._spec.latent_dim))
            draws = mean[None] + np.exp(0.5 * log_var)[None] * eps[:, None, :]
            n = series.n
            decoded = self._decoded_at(program, hyper, draws.reshape(-1, mean.shape[1]),
                                       np.tile(offsets, (N_STD_DRAWS, 1)))
            decoded = decoded.reshape((N_STD_DRAWS, n) + decoded.shape[1:])
            variance = decoded.var(axis=0) + self._noise_of(self.params_) ** 2
            return prediction, np.sqrt(variance)

    def _shaped_like_y(self, out: np.ndarray) -> np.ndarray:
        n, k, c = out.shape
        if self._y_ndim == 3 or c != 1:
            return out
        if self._y_ndim == 1 and k == 1:
            return out[:, 0, 0]
        return out[:, :, 0]

    def predict(self, X, return_std=False, times=None, target_times=None):
        """The posterior-mean prediction at the target times.

        The decoded trajectory of the mean of ``q(z0)``, each series solved with its own
        steps (so independent of the other series).

        Parameters
        ----------
        X : array-like of shape (n_series, n_times[, n_channels])
        return_std : bool, default=False
            Also return the predictive standard deviation, from 64 posterior draws of
            ``z0`` (the same draws at every call) and the observation noise.
        times : array-like of shape (n_series, n_times), default=None
        target_times : array-like of shape (n_targets,) or (n_series, n_targets), \
default=None
            Default: the ``target_times`` parameter, else the fit's number of steps after
            the last observation time. Times before a series' first observation are
            answered by solving the latent ODE backwards from ``z0``.

        Returns
        -------
        y_pred : ndarray, shaped like the training ``y``
        y_std : ndarray, same shape (only with ``return_std``)
        """
        def offsets_of(series):
            return self._prediction_offsets(series, target_times)

        mean, std = self._predict_offsets(X, times, offsets_of, return_std)
        if return_std:
            return self._shaped_like_y(mean), self._shaped_like_y(std)
        return self._shaped_like_y(mean)

    def _prediction_offsets(self, series: _Series, target_times) -> np.ndarray:
        """The offsets of :meth:`predict` (and :meth:`score`): ``target_times``, else
        the parameter, else the fit's number of steps after the last observation."""
        given = target_times is not None or self.target_times is not None
        return self._target_offsets(series, target_times, None if given else self.n_targets_)

    def _eval_offsets(self, eval_times):
        grid = real_array(eval_times, "eval_times")
        if grid.ndim != 1 or not np.all(np.isfinite(grid)):
            raise ValueError(f"eval_times must be a finite 1-D array; got shape {grid.shape}")

        def offsets_of(series):
            return self._target_offsets(series, grid, None, name="eval_times")

        return offsets_of

    def predict_trajectory(self, X, eval_times, return_std=False, times=None):
        """Decoded trajectories at ``eval_times`` (interpolation and extrapolation).

        Parameters
        ----------
        X : array-like of shape (n_series, n_times[, n_channels])
        eval_times : array-like of shape (n_eval,)
            Any times: before a series' first observation (where ``z0`` sits), the
            latent ODE is solved backwards from ``z0``.
        return_std : bool, default=False
        times : array-like of shape (n_series, n_times), default=None

        Returns
        -------
        trajectory : ndarray of shape (n_series, n_eval, n_channels)
        std : ndarray of the same shape (only with ``return_std``)
        """
        mean, std = self._predict_offsets(X, times, self._eval_offsets(eval_times),
                                          return_std)
        return (mean, std) if return_std else mean

    def sample_trajectories(self, X, eval_times, n_samples=1, random_state=None,
                            times=None):
        """Trajectories of posterior draws of ``z0``, decoded (without observation
        noise).

        Parameters
        ----------
        X : array-like of shape (n_series, n_times[, n_channels])
        eval_times : array-like of shape (n_eval,)
        n_samples : int, default=1
            Draws per series, at least 1 (the name of ``CNFDensity.sample`` and of
            scikit-learn's ``GaussianProcessRegressor.sample_y``).
        random_state : int, RandomState instance or None, default=None
            Seeds the draws.
        times : array-like of shape (n_series, n_times), default=None

        Returns
        -------
        samples : ndarray of shape (n_series, n_samples, n_eval, n_channels)
        """
        check_is_fitted(self, "params_")
        if (isinstance(n_samples, bool) or not isinstance(n_samples, Integral)
                or n_samples < 1):
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        series = self._check_X(X, times, reset=False)
        offsets = self._eval_offsets(eval_times)(series)
        rng = check_random_state(random_state)
        with self._running() as engine:
            program = engine.make_program(self._spec)
            hyper = self._inference_hyper()
            mean, log_var = self._posterior(series, program, hyper)
            eps = rng.standard_normal((series.n, n_samples, mean.shape[1]))
            draws = mean[:, None] + np.exp(0.5 * log_var)[:, None] * eps
            decoded = self._decoded_at(program, hyper, draws.reshape(-1, mean.shape[1]),
                                       np.repeat(offsets, n_samples, axis=0))
        return decoded.reshape((series.n, n_samples) + decoded.shape[1:])

    def inference_stats(self, X, times=None, target_times=None) -> dict[str, np.ndarray]:
        """Solver cost of predicting each series of X with the current settings.

        The cost of :meth:`predict` (the posterior mean, without ``return_std``): the
        encoder's solves (``"ode_rnn"``; none for ``"rnn"``) and the latent trajectory's,
        added per series. Leaves the estimator unchanged.

        Parameters
        ----------
        X : array-like of shape (n_series, n_times[, n_channels])
        times : array-like of shape (n_series, n_times), default=None
        target_times : array-like of shape (n_targets,) or (n_series, n_targets), \
default=None
            As :meth:`predict`.

        Returns
        -------
        stats : dict of str to ndarray of shape (n_series,)
            ``nfe_forward`` (function evaluations), ``n_steps`` and ``n_rejected`` of
            each series' solves, the keys of the other estimators' ``inference_stats``.

        Examples
        --------
        >>> import numpy as np
        >>> from odeplug import LatentODERegressor
        >>> t = np.linspace(0, 3, 8)
        >>> X = np.sin(t + np.random.default_rng(0).uniform(0, 3, 30)[:, None])
        >>> model = LatentODERegressor(2, obs_times=t, target_times=[3.5], max_iter=2,
        ...                            random_state=0).fit(X, X[:, -1])
        >>> model.inference_stats(X[:3])["nfe_forward"].shape
        (3,)
        """
        check_is_fitted(self, "params_")
        series = self._check_X(X, times, reset=False)
        stats: list = []
        self._predicted(series, self._prediction_offsets(series, target_times),
                        return_std=False, stats=stats)
        return {name: np.sum([np.asarray(part[name]) for part in stats], axis=0)
                for name in ROW_COUNTERS}

    def transform(self, X, times=None):
        """The posterior mean of ``z0``: a fixed-length embedding of each series.

        Parameters
        ----------
        X : array-like of shape (n_series, n_times[, n_channels])
        times : array-like of shape (n_series, n_times), default=None

        Returns
        -------
        z0 : ndarray of shape (n_series, latent_dim)
        """
        check_is_fitted(self, "params_")
        series = self._check_X(X, times, reset=False)
        with self._running() as engine:
            program = engine.make_program(self._spec)
            return self._posterior(series, program, self._inference_hyper())[0]

    def score(self, X, y, times=None, target_times=None):
        """R² of :meth:`predict` over the observed (non-NaN) targets, averaged over the
        target times and channels.

        Parameters
        ----------
        X, y, times, target_times
            As :meth:`fit`.

        Returns
        -------
        score : float

        Raises
        ------
        ValueError
            ``y`` that does not match the targets (as :meth:`fit`), or that has fewer
            than two observed values at every target time and channel (R² is undefined).
        """
        check_is_fitted(self, "params_")
        series = self._check_X(X, times, reset=False)
        offsets = self._prediction_offsets(series, target_times)
        y = self._check_y(y, series, offsets, purpose="score")
        n = series.n
        y = y.reshape(n, -1)
        observed = ~np.isnan(y)
        columns = np.flatnonzero(observed.sum(axis=0) > 1)
        if not columns.size:
            raise ValueError("y has fewer than two observed values at every target time "
                             "and channel: R² is undefined")
        predicted = self._predicted(series, offsets, return_std=False)[0].reshape(n, -1)
        if observed.all():
            return float(r2_score(y, predicted))
        return float(np.mean([r2_score(y[observed[:, j], j], predicted[observed[:, j], j])
                              for j in columns]))
