"""CNFDensity: the continuous normalizing flow of Chen et al. (2018) as a scikit-learn
density estimator (FFJORD's trace estimator, RNODE's regularisers)."""

from __future__ import annotations

import dataclasses
import numbers
from numbers import Real

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, DensityMixin, TransformerMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._architectures import conv_cnf_field
from .._flow_matching import OBJECTIVES, FlowMatching, FlowMatchingSpec
from .._solver_options import DEFAULT_MAX_NUM_STEPS
from .._specs import CNFHyper, CNFSpec, CNFTrainingSpec
from .._user_field import UserField
from ..layers import Layer
from ._base import COMMON_CONSTRAINTS, FIELD_CONSTRAINTS, ODEEstimatorBase
from ._sklearn_compat import Interval, StrOptions

__all__ = ["AUTO_EXACT_MAX_FEATURES", "CNFDensity"]

# trace_estimator="auto" trains with the exact trace up to this many features and with
# Hutchinson's estimate above. The exact trace pushes d tangents through the field per
# evaluation, Hutchinson's one. Measured (docs/density.md, bench_density.py --only
# dimension; field 64-64, batch 200): a step with the exact trace costs 1.1 / 1.3 / 1.6 /
# 6.5 times Hutchinson's at d = 2 / 4 / 8 / 64 on torch and 1.6 / 3.7 / 5 / 29 times on
# JAX, while Hutchinson's stays nearly flat. Up to 4 features the exact trace's
# noise-free gradients cost a few milliseconds more per step; one threshold for every
# engine, so that a seed gives the same fit everywhere.
# The same threshold holds for every field (field="conv", any layer): the exact trace
# pushes the identity's d tangents through the per-layer JVPs, so its cost over
# Hutchinson's grows with d whatever the layers. Measured for the conv preset on digits
# (input_shape (1, 8, 8), d = 64, channels 16-16, 100 rows, JAX on the shared CPU): one
# evaluation of the augmented field costs 2.0 s exact against 44 ms with one probe (46
# times), with its gradient 9.2 s against 145 ms (63 times); a maximum-likelihood step
# with Hutchinson's trace took 3.6 s (46 evaluations), the exact one would take minutes.
# So "auto" picks Hutchinson there, as for any field above 4 features.
AUTO_EXACT_MAX_FEATURES = 4

# Flow matching's default path width at the data end (odeplug._flow_matching).
SIGMA_MIN = 1e-2


def _standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` of each column of ``X``, in float64, without overflow.

    Computed on the columns divided by their largest magnitude (a power of two, so
    exactly): ``X.std()`` of data of magnitude 1e200 squares it to inf. A column whose
    spread is at rounding level of its mean (a constant) gets scale 1.
    """
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(divide="ignore"):  # log2(0) = -inf, clipped
        exponent = np.ceil(np.log2(np.max(np.abs(X), axis=0)))
    unit = np.exp2(np.clip(exponent, -1022, 1023))
    scaled = X / unit
    mean = scaled.mean(axis=0) * unit
    scale = scaled.std(axis=0) * unit
    constant = ~(scale > 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean)))
    scale[constant] = 1.0
    return mean, scale


class CNFDensity(ClassNamePrefixFeaturesOutMixin, DensityMixin, TransformerMixin,
                 ODEEstimatorBase):
    """Continuous normalizing flow density estimator (Chen et al. 2018; FFJORD, Grathwohl
    et al. 2019; RNODE, Finlay et al. 2020).

    Data ``x`` at time 0 (standardised inside the estimator) is carried by
    ``dz/dt = f(t, z)`` to the base distribution ``N(0, I)`` at ``t1``; ``f`` is an MLP
    of ``[z, t]``, or a convolutional field on image-shaped rows, or any architecture of
    :mod:`odeplug.layers` (``field``). The log-density follows from the instantaneous
    change of variables, solved in the same augmented state::

        log p(x) = log N(z(t1); 0, I) + int_0^t1 tr(df/dz(t, z(t))) dt

    Trained by maximum likelihood with Adam on the engine chosen by ``backend``;
    gradients by the adjoint method by default. Sampling solves from ``t1`` back to 0.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(64, 64, 64)
        Hidden layers of the vector field (none: a linear field, a Gaussian model), as
        in every odeplug estimator; with ``field="conv"``, the channels of its hidden
        convolutions. The defaults (with ``batch_size=100``) reach -1.198
        nats per sample on standardised moons, against -1.193 for ``GaussianMixture``
        chosen by BIC (``docs/density.md``).
    activation : {"tanh", "softplus", "logistic", "relu", "identity"}, default="tanh"
        Activation of the field's hidden layers. A smooth one keeps the adaptive
        solver's steps few and the trace smooth ("relu" has a piecewise constant
        Jacobian).
    backend : str, default=None
        ``"reference"`` (NumPy + autograd), ``"torch"`` (torchdiffeq) or ``"jax"``
        (diffrax). None: ``odeplug.set_config``/``config_context``, then the environment
        variable ``ODEPLUG_BACKEND``, then ``"reference"``. Read again at every call: a
        model fitted on one engine scores and samples on any other.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the torch and jax engines compute: "cuda" a GPU (an error naming what is
        missing where the engine sees none), "auto" a GPU where the engine sees one,
        else the CPU. The reference engine computes on the CPU ("cuda" is refused).
        Read at every call; fitted parameters are NumPy arrays, so a model fitted on a
        GPU scores and samples on a CPU-only machine. On jax, training steps are data
        parallel over all devices of the platform when it has several
        (``odeplug.set_config(data_parallel=False)`` turns it off).
    t1 : float, default=1.0
        End of the flow: the base distribution is at ``t1``.
    solver : str, default="dopri5"
        One of ``odeplug.SOLVERS``. Read again at every call, as ``rtol``, ``atol``,
        ``step_size`` and ``max_num_steps``: ``set_params(rtol=1e-6)`` after fitting
        scores and samples more precisely without refitting.
    rtol, atol : float, default=1e-3, 1e-5
        Tolerances of adaptive solvers.
    step_size : float, default=None
        Step of fixed-step solvers (required by them).
    adjoint : bool or BacksolveAdjoint, default=True
        Gradients by the adjoint method (memory constant in the number of steps), or by
        backpropagation through the solver (False).
    max_num_steps : int, default=4096
        Step budget of each solve.
    trace_estimator : {"auto", "exact", "hutchinson"}, default="auto"
        How training computes ``tr(df/dz)``: exactly (``d`` forward-mode tangents per
        evaluation) or by Hutchinson's unbiased estimate ``e^T (df/dz) e`` with one
        Rademacher probe ``e`` per sample and minibatch, drawn from ``random_state``.
        "auto": exact up to :data:`AUTO_EXACT_MAX_FEATURES` (4) features, Hutchinson above,
        for every ``field`` (with a convolutional field on 8 x 8 digits the exact trace
        costs 46 times Hutchinson's per evaluation). Scoring always uses the exact
        trace (``n_features`` tangents: scoring a conv field on 64 pixels is slow, about
        0.8 s per row on a loaded 2-core machine, ``docs/density.md``).
    kinetic_energy, jacobian_norm : float, default=0.01
        RNODE's regulariser weights: the loss adds ``kinetic_energy * int |f|^2 dt`` and
        ``jacobian_norm * int |df/dz|_F^2 dt`` (means over the batch; the Frobenius
        norm by the same estimator as the trace), integrated as two more channels of the
        state. They make the flow straighter and cheaper to solve: on moons, 0.01 each
        cut the NFE per training step by a fifth and per scored point by a fifth, at a
        slightly better held-out likelihood than both 0. Either one positive adds the
        channels (another compilation of the training step on JAX than both zero;
        inference compiles once whatever the training choices). Maximum likelihood only:
        ignored by flow matching, which solves no trajectory to regularise.
    objective : {"maximum_likelihood", "flow_matching"}, default="maximum_likelihood"
        How the field is trained. "maximum_likelihood": the negative log-likelihood,
        an ODE solve with the trace (and its adjoint) at every step. "flow_matching"
        (Lipman et al. 2023): a regression of ``f(t, x_t)`` onto the velocity of a
        straight path between each data point (at 0) and a base draw (at ``t1``), at
        ``t ~ U(0, t1)``: no solve in training, one field evaluation per step. Either
        way the fitted model is the same CNF: ``score_samples``, ``sample``,
        ``transform`` and ``inverse_transform`` solve the same ODE, exactly.
    ot_pairing : bool, default=True
        Flow matching only: pair each minibatch's base draws with its data by exact
        optimal transport (squared Euclidean cost, ``scipy.optimize.
        linear_sum_assignment``; OT-CFM, Tong et al. 2023), else independently. OT
        pairing gives straighter flows (fewer steps to sample) and costs an
        assignment per minibatch, cubic in its size (about 20 ms at 256 rows on a
        loaded 2-core machine, several times the step; ``docs/density.md``).
    sigma_min : float in [0, 1), default=0.01
        Flow matching only: the path's width at the data end, in standardised units
        (the path runs from ``x + sigma_min * e`` at 0 to ``e`` at ``t1``, ``e`` the
        base draw). 0 is the straight line; a small width smooths the data the field
        carries, which regularises.
    alpha : float, default=1e-4
        L2 penalty ``0.5 * alpha * sum(W**2) / batch_size`` on the field's weights.
    batch_size : int or "auto", default="auto"
        Minibatch size; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "adaptive"}, default="adaptive"
        Schedule of Adam's step size (scikit-learn's MLP names, applied to Adam):
        "constant" keeps ``learning_rate_init``; "adaptive" divides it by 5 each time
        ``n_iter_no_change`` epochs pass without progress, instead of stopping, and
        stops once that happens at a step size of 1e-6 or less. Each epoch's step size
        is in ``curves_["learning_rate"]``. Every ``fit`` (``warm_start`` too) starts at
        ``learning_rate_init``, as scikit-learn's MLP; ``partial_fit`` stays there. The
        default here is "adaptive" (the other estimators': "constant"): a density's
        negative log-likelihood plateaus at Adam's noise floor, and a smaller step
        lowers it (moons: -1.165 nats against -1.198 at a constant step;
        ``docs/density.md``).
    learning_rate_init : float, default=5e-3
        Adam's initial step size (under the adaptive schedule 5e-3 beat 2e-3 on moons,
        8 Gaussians and two spirals; at a constant step it plateaued higher).
    max_iter : int, default=200
        Maximum number of epochs.
    tol : float, default=1e-4
        Improvement of the loss (or of the held-out log-likelihood) that counts as
        progress.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data and stop when its mean
        log-likelihood stops improving; keep the best parameters.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=20
        Epochs without progress before stopping (minibatch likelihoods are noisy: with
        10, the benchmark's first fits stopped after about 50 epochs, still improving).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial parameters, the minibatch order, Hutchinson's probes and the
        validation split, on every engine (no global seed is touched).
    verbose : int, default=0
        Progress with loss and NFE per epoch: a bar on a terminal or in a notebook (it
        says "compiling" during the first step, kept after the fit), one line per epoch
        elsewhere (a log file), as scikit-learn's MLP.
    warm_start : bool, default=False
        Continue from the fitted parameters (and standardisation) on the next ``fit``.
        The architecture must stay; the training choices (``trace_estimator``, RNODE's
        weights, ``objective``) may change. After early stopping or Ctrl-C it continues
        from ``params_`` (the best or last completed epoch's), with a fresh optimiser.
    field : {"mlp", "conv"} or odeplug.layers.Layer, default="mlp"
        The vector field ``f(t, z)``. "mlp": an MLP of ``[z, t]`` on the flat rows,
        hidden layers ``hidden_layer_sizes`` with ``activation`` (the model of
        earlier releases: the same parameters, files and results). "conv": FFJORD's
        convolutional field (Grathwohl et al. 2019) on rows of ``input_shape``
        (required, ``(C, L)`` or ``(C, H, W)``): a 3-wide convolution (padding 1) to each
        width of ``hidden_layer_sizes``, time-conditioned by concat-squash and followed
        by ``activation``, and one back to the ``C`` channels; no normalisation.
        A layer of :mod:`odeplug.layers` (``Sequential(...)``): the field itself, on
        states of ``input_shape`` (flat rows where None), mapping them to their own
        shape (checked at fit); ``hidden_layer_sizes`` and ``activation`` do not
        shape it. Every layer gives its Jacobian-vector products, so the exact trace and
        Hutchinson's work for any of them. Strings and layers are valid grid values:
        ``{"field": ["mlp", "conv"]}``; a warm start keeps the field. A user module
        (``odeplug.UserField``) is refused by ``fit``, before anything changes: the
        trace needs the per-layer products that only :mod:`odeplug.layers` provide.
    input_shape : tuple of int, default=None
        The shape of one row of ``X`` as the field sees it, channels first: ``(C, L)``
        for signals, ``(C, H, W)`` for images (rows in C order, as
        ``images.reshape(n, -1)`` gives them; ``X`` stays 2-D). None: flat rows. The
        MLP field ignores it.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string feature names.
    mean_, scale_ : ndarray of shape (n_features_in_,)
        The standardisation of the first fit (``scale_`` 1 for a constant feature); its
        log-determinant is added back, so densities are of ``X`` in its own units. Data
        of huge magnitude (1e200, say) is standardised without overflow; data whose
        distance to its mean overflows the float range is refused.
    backend_ : str
        The engine that fitted the model.
    params_ : dict of str to ndarray
        Canonical parameters of the field (the same names and shapes on every engine).
    loss_curve_ : list of float
        Training loss of each epoch: the negative log-likelihood of the standardised
        data (nats per sample), plus the regularisers and the L2 penalty; with
        ``objective="flow_matching"``, the regression's mean squared error (per sample,
        summed over features) plus the L2 penalty.
    curves_ : dict of str to list
        Every metric per epoch: ``loss``, ``nll``, ``nfe_forward``, ``nfe_backward`` and,
        with a regulariser, ``kinetic_energy`` and ``jacobian_norm``; with flow
        matching, ``mse`` instead of ``nll`` (and ``nfe_forward`` 1, ``nfe_backward`` 0:
        one field evaluation per step).
    best_loss_ : float or None
        Lowest training loss (None with early stopping).
    validation_scores_ : list of float or None
        Held-out mean log-likelihood of each epoch (early stopping only).
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    t_ : int
        Training samples seen.
    nfe_ : dict
        ``{"nfe_forward": ..., "nfe_backward": ...}``: mean function evaluations per
        minibatch in the last epoch (backward is None where the engine does not report
        it); the keys of ``curves_`` and of :meth:`inference_stats`.

    See Also
    --------
    sklearn.mixture.GaussianMixture : Its ``score`` is also a mean per sample.
    sklearn.neighbors.KernelDensity : Its ``score`` is the *total* log-likelihood.

    Notes
    -----
    ``score(X)`` is the mean log-likelihood per sample, as ``GaussianMixture.score``;
    ``KernelDensity.score`` returns the sum over samples instead. Each row is scored,
    transformed or sampled with its own adaptive steps, so a result does not depend on
    the other rows; :meth:`inference_stats` reports the cost per row.

    Flow matching's time convention is the estimator's: data at 0, base at ``t1``. The
    papers put the base at 0 and the data at 1; the path and its target are converted
    (``odeplug._flow_matching``), so the regression's minimiser is the field whose flow
    carries the (``sigma_min``-smoothed) data to exactly ``N(0, I)`` at ``t1``: the
    model every inference method assumes. Its loss is a stochastic regression whose
    minimum is not zero and whose minibatch values are noisy: the tolerance rule on the
    training loss (``tol``, ``n_iter_no_change``) fires early, so give it a larger
    ``n_iter_no_change`` (or ``early_stopping=True``, judged by held-out
    log-likelihood) and more epochs; the default ``learning_rate="adaptive"`` turns each
    plateau into a smaller step (at a constant step size Adam stops at a noise floor).
    ``docs/density.md`` compares the objectives.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from odeplug import CNFDensity
    >>> X, _ = make_moons(200, noise=0.05, random_state=0)
    >>> cnf = CNFDensity((16, 16), max_iter=3, random_state=0).fit(X)
    >>> cnf.score_samples(X[:3]).shape
    (3,)
    >>> cnf.sample(4, random_state=0).shape
    (4, 2)
    >>> cnf.transform(X[:2]).shape  # the data carried to N(0, I)
    (2, 2)

    Trained by flow matching, without solving an ODE (the same model, scored alike):

    >>> fm = CNFDensity((16, 16), objective="flow_matching", max_iter=20,
    ...                 random_state=0).fit(X)
    >>> fm.nfe_  # one field evaluation per training step
    {'nfe_forward': 1.0, 'nfe_backward': 0.0}
    >>> fm.score_samples(X[:3]).shape
    (3,)
    """

    def __init__(
        self,
        hidden_layer_sizes=(64, 64, 64),
        *,
        activation="tanh",
        backend=None,
        device="cpu",
        t1=1.0,
        solver="dopri5",
        rtol=1e-3,
        atol=1e-5,
        step_size=None,
        adjoint=True,
        max_num_steps=DEFAULT_MAX_NUM_STEPS,
        trace_estimator="auto",
        kinetic_energy=0.01,
        jacobian_norm=0.01,
        objective="maximum_likelihood",
        ot_pairing=True,
        sigma_min=SIGMA_MIN,
        alpha=1e-4,
        batch_size="auto",
        learning_rate="adaptive",
        learning_rate_init=5e-3,
        max_iter=200,
        tol=1e-4,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=None,
        verbose=0,
        warm_start=False,
        field="mlp",
        input_shape=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.backend = backend
        self.device = device
        self.t1 = t1
        self.solver = solver
        self.rtol = rtol
        self.atol = atol
        self.step_size = step_size
        self.adjoint = adjoint
        self.max_num_steps = max_num_steps
        self.trace_estimator = trace_estimator
        self.kinetic_energy = kinetic_energy
        self.jacobian_norm = jacobian_norm
        self.objective = objective
        self.ot_pairing = ot_pairing
        self.sigma_min = sigma_min
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
        self.input_shape = input_shape

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        **FIELD_CONSTRAINTS,
        "trace_estimator": [StrOptions({"auto", "exact", "hutchinson"})],
        "kinetic_energy": [Interval(Real, 0, None, closed="left")],
        "jacobian_norm": [Interval(Real, 0, None, closed="left")],
        "objective": [StrOptions(set(OBJECTIVES))],
        "ot_pairing": ["boolean"],
        "sigma_min": [Interval(Real, 0, 1, closed="left")],
        # A UserField is a Layer: accepted here, refused by fit with its reason.
        "field": [StrOptions({"mlp", "conv"}), Layer],
        "input_shape": [None, tuple, list],
    }

    # Format 1 (before issue 19's one vocabulary) named the field's activation so.
    RENAMED_PARAMS = {"field_activation": "activation"}

    # ------------------------------------------------------------------ spec

    def _trace_of(self, n_features: int) -> str:
        if self.trace_estimator == "auto":
            return "exact" if n_features <= AUTO_EXACT_MAX_FEATURES else "hutchinson"
        return self.trace_estimator

    def _spec_of(self, n_features: int, dtype: str) -> CNFSpec:
        """The model: the architecture only (what ``warm_start`` must keep)."""
        sizes = self._hidden_sizes(self.hidden_layer_sizes)
        shape = self._input_shape(n_features)
        spec = dict(n_features=n_features, field_hidden=sizes,
                    field_activation=self.activation, dtype=dtype)
        if isinstance(self.field, str) and self.field == "mlp":
            return CNFSpec(**spec)  # flat rows whatever input_shape says: today's model
        if isinstance(self.field, str):  # "conv"
            if shape is None or len(shape) < 2:
                raise ValueError('field="conv" needs input_shape=(C, L) or (C, H, W), got '
                                 f"{self.input_shape!r}")
            return CNFSpec(**spec, input_shape=shape,
                           field_layer=conv_cnf_field(shape, sizes, self.activation))
        # The layer is the whole field: the sizes do not shape it (a warm start with
        # other sizes keeps the model).
        return CNFSpec(**{**spec, "field_hidden": ()}, input_shape=shape,
                       field_layer=self.field)

    def _training_spec(self, spec: CNFSpec) -> CNFTrainingSpec:
        """Maximum likelihood's training choices for the model ``spec``: free to change
        between fits (``warm_start``) as the learning rate is."""
        return CNFTrainingSpec(
            spec, trace=self._trace_of(spec.n_features),
            regularize=bool(self.kinetic_energy > 0 or self.jacobian_norm > 0))

    def _hyper(self, **values) -> CNFHyper:
        hyper = CNFHyper(
            solve=self._solve_config(), t1=float(self.t1),
            learning_rate=float(self.learning_rate_init), alpha=float(self.alpha),
            kinetic_energy=float(self.kinetic_energy), jacobian_norm=float(self.jacobian_norm))
        return dataclasses.replace(hyper, **values)

    @staticmethod
    def _noise_drawer(training: CNFTrainingSpec):
        """Hutchinson's Rademacher probes, drawn by the training loop from the fit's
        generator and passed in the batch (None with the exact trace)."""
        if training.trace != "hutchinson":
            return None
        dtype, d = np.dtype(training.dtype), training.n_features

        def draw(rng: np.random.RandomState, n_rows: int):
            return ((2 * rng.randint(0, 2, size=(n_rows, d)) - 1).astype(dtype),)

        return draw

    # ------------------------------------------------------------------- fit

    def fit(self, X, y=None):
        """Fit the flow to data X by maximum likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data, at least 2 samples.
        y : None
            Ignored.

        Returns
        -------
        self : CNFDensity
            The fitted estimator.

        Raises
        ------
        TrainingDivergedError
            The loss became non-finite or exploded, or a solve failed. A fresh fit keeps
            the last parameters whose loss was finite; with ``warm_start`` the estimator
            keeps its previous fit.
        """
        return self._fit_transaction(self._fit, X, incremental=False)

    def partial_fit(self, X, y=None):
        """One epoch over X, continuing from the current parameters.

        The first call fixes the standardisation (``mean_``, ``scale_``) from its X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        self : CNFDensity
            The updated estimator.

        Raises
        ------
        ValueError
            ``early_stopping=True`` (as ``MLPClassifier``: partial_fit has no
            validation split).
        TrainingDivergedError
            The estimator keeps its parameters from before the call.
        """
        return self._fit_transaction(self._fit, X, incremental=True)

    def _fit(self, X, *, incremental: bool):
        if incremental:
            self._check_partial_fit_params()
        first_call = not (incremental or self.warm_start) or not hasattr(self, "params_")
        X = validate_data(self, X, reset=first_call, dtype=(np.float64, np.float32),
                          ensure_min_samples=2)
        engine = self._engine()
        if isinstance(self.field, UserField):  # before anything is built or changed
            raise ValueError(
                f"CNFDensity does not take a user module as its field (field={self.field!r})"
                ": the flow's log-density needs tr(df/dz) from the field's per-layer "
                "Jacobian-vector products, which odeplug.layers provide and a user module "
                "does not. Write the field with odeplug.layers (Sequential, Conv, Dense, "
                "ConcatSquash, ...) or use field=\"conv\" with input_shape")
        self._solve_config()  # solver settings, checked before anything is built
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        dtype = engine.default_dtype if first_call else self._spec.dtype
        spec = self._spec_of(X.shape[1], dtype)
        params, history = self._start(engine, spec, first_call=first_call, seed=seed)
        if first_call:
            self.mean_, self.scale_ = _standardisation(X)
        with np.errstate(over="ignore", invalid="ignore"):
            standardized = self._standardize(X).astype(spec.dtype)
        if not np.all(np.isfinite(standardized)):
            # Only near the float range (X - mean_ overflows), or for a warm start's X
            # far from the first fit's mean_ in the model's dtype.
            raise ValueError(
                f"X cannot be standardised in {spec.dtype}: its values (up to "
                f"{np.max(np.abs(X)):.3g} in magnitude) are too far from mean_ for the "
                "float range; rescale X")
        return self._train_program(engine, spec, params, standardized, rng=rng,
                                   history=history, incremental=incremental,
                                   first_call=first_call)

    def _train_program(self, engine, spec: CNFSpec, params, X, *, rng, history,
                       incremental: bool, first_call: bool):
        """The training of a fit, in one place: the data (standardised), the step's noise,
        the validation score of early stopping, and the shared loop."""
        validation_score = None
        if self.early_stopping and not incremental:
            X, X_val = train_test_split(X, test_size=self.validation_fraction,
                                        random_state=rng)
            program = engine.make_program(spec)
            hyper = self._hyper()
            offset = float(np.sum(np.log(self.scale_)))

            def validation_score(current):
                log_p, _ = program.log_density(current, X_val, hyper)
                return float(np.mean(log_p)) - offset

        return self._run_training(
            engine, spec, params, (X,), rng=rng, history=history, continuing=not first_call,
            max_iter=1 if incremental else int(self.max_iter),
            validation_score=validation_score, **self._objective(engine, spec))

    def _objective(self, engine, spec: CNFSpec) -> dict:
        """What the training loop takes for the objective: maximum likelihood's program
        (of the training spec: trace estimator, regularisers) and step noise, or flow
        matching's program and batches
        (``odeplug._flow_matching``: paths, pairings and times drawn from the fit's
        generator, a solver-free step; the fitted model is the same CNF)."""
        if self.objective == "maximum_likelihood":
            training = self._training_spec(spec)
            return {"program": engine.make_program(training),
                    "draw_noise": self._noise_drawer(training)}
        paths = FlowMatching(sigma_min=float(self.sigma_min), ot_pairing=bool(self.ot_pairing),
                             t1=float(self.t1), dtype=spec.dtype)
        return {"program": engine.make_program(FlowMatchingSpec(spec)),
                "prepare_batch": paths.batch}

    # -------------------------------------------------------------- inference

    @property
    def _n_features_out(self) -> int:
        """Width of :meth:`transform`'s output (``get_feature_names_out``)."""
        return self.n_features_in_

    def _standardize(self, X) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_

    def _checked(self, X) -> np.ndarray:
        check_is_fitted(self, "params_")
        return validate_data(self, X, reset=False, dtype=(np.float64, np.float32))

    def _score_and_stats(self, X):
        X = self._checked(X)
        log_p, stats = self._infer("log_density", self._standardize(X))
        return np.asarray(log_p, np.float64) - float(np.sum(np.log(self.scale_))), stats

    def score_samples(self, X):
        """Log-density of each sample, in the units of X.

        Exact trace, whatever the training estimator; each row solved with its own
        adaptive steps and the current solver settings.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)

        Raises
        ------
        SolverError
            A row's solve failed: the error names the row, the reason and the time.
        """
        return self._score_and_stats(X)[0]

    def score(self, X, y=None):
        """Mean log-likelihood per sample (as ``GaussianMixture.score``; note that
        ``KernelDensity.score`` is the total).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        log_likelihood : float
        """
        return float(np.mean(self.score_samples(X)))

    def transform(self, X):
        """The data carried to the base distribution: ``z(t1)``, Gaussian if the fit
        is good.

        Solved at the current tolerances: ``inverse_transform`` undoes it to the
        solvers' error (tighten ``rtol`` and ``atol`` for a round trip, see
        :meth:`inverse_transform`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
        """
        X = self._checked(X)
        return np.asarray(self._infer("transform", self._standardize(X))[0], np.float64)

    def inverse_transform(self, Z):
        """Base points carried back to data space: the reverse solve from ``t1`` to 0.

        ``inverse_transform(transform(X))`` gives X back only to the solvers' error,
        which the tolerances set: for an exact round trip, tighten them first,
        ``set_params(rtol=1e-6, atol=1e-8)``. On two moons (the gallery's model, 2,000
        points) the round trip is off by up to 0.22 at the defaults (254 points by more
        than 0.01) and by 2e-5 at most with ``rtol=1e-6, atol=1e-8``.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "params_")
        Z = validate_data(self, Z, reset=False, dtype=(np.float64, np.float32))
        X_std = np.asarray(self._infer("inverse_transform", np.asarray(Z, np.float64))[0])
        return X_std * self.scale_ + self.mean_

    def sample(self, n_samples=1, random_state=None):
        """Draw samples: base draws ``N(0, I)`` carried back to data space.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples, at least 1.
        random_state : int, RandomState instance or None, default=None
            Seeds the base draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)

        Examples
        --------
        >>> import numpy as np
        >>> from odeplug import CNFDensity
        >>> X = np.random.default_rng(0).normal(size=(50, 2))
        >>> cnf = CNFDensity((8,), max_iter=2, random_state=0).fit(X)
        >>> cnf.sample(3, random_state=0).shape
        (3, 2)
        """
        check_is_fitted(self, "params_")
        if (isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral)
                or n_samples < 1):
            raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
        rng = check_random_state(random_state)
        Z = rng.standard_normal((int(n_samples), self.n_features_in_))
        X_std = np.asarray(self._infer("inverse_transform", Z)[0])
        return X_std * self.scale_ + self.mean_

    def inference_stats(self, X) -> dict[str, np.ndarray]:
        """Solver cost of scoring each row of X with the current settings.

        Leaves the estimator unchanged.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        stats : dict of str to ndarray of shape (n_samples,)
            ``nfe_forward`` (function evaluations), ``n_steps`` and ``n_rejected`` of
            each row's solve.
        """
        return {k: np.asarray(v) for k, v in self._score_and_stats(X)[1].items()}
