"""ODEClassifier: the ODE-Net of Chen et al. (2018) as a scikit-learn classifier."""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from .._architectures import conv_odenet, image_odenet_ends
from .._solver_options import DEFAULT_MAX_NUM_STEPS
from .._specs import ACTIVATIONS, ODENetSpec
from .._user_field import UserField
from ..layers import Layer
from ._base import COMMON_CONSTRAINTS, FIELD_CONSTRAINTS, ODEEstimatorBase
from ._sklearn_compat import Interval, StrOptions

__all__ = ["ODEClassifier"]


class ODEClassifier(ClassifierMixin, ODEEstimatorBase):
    """ODE-Net classifier: a residual network of continuous depth (Chen et al. 2018).

    Each input is embedded, ``z0 = act(x @ W + b)`` of width ``latent_dim`` (padded with
    ``augment_dim`` zeros, Dupont et al. 2019), carried from time 0 to ``t1`` by
    ``dz/dt = f(t, z)`` with ``f``
    an MLP of ``[z, t]``, and classified by a linear softmax head on ``z(t1)``. With
    ``field="conv"`` and image or signal rows (``input_shape``), the paper's
    convolutional ODE-Net instead (a convolutional stem, a convolutional field, global
    pooling and a linear head); ``field`` also takes any architecture of
    :mod:`odeplug.layers`, or the user's own torch or equinox module
    (:class:`odeplug.UserField`). Trained
    with Adam on the cross-entropy plus an L2 penalty, on the engine chosen by
    ``backend``; gradients by the adjoint method by default.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default=(64,)
        Hidden layers of the vector field ``f`` (none: a linear field); with
        ``field="conv"``, the channels of its hidden convolutions. The same meaning in
        every odeplug estimator. With ``latent_dim=128`` and ``max_iter=100`` the
        defaults reach 0.98 test accuracy on scikit-learn's digits
        (``docs/benchmarks.md``).
    latent_dim : int, default=128
        Width of the ODE's state: the embedding's width (its channels with
        ``field="conv"`` or an image ``input_shape``), before ``augment_dim``.
    activation : {"tanh", "softplus", "logistic", "relu", "identity"}, default="tanh"
        Activation of the vector field's hidden layers (as in every odeplug
        estimator). A smooth one keeps adaptive solvers efficient: with "relu" the
        field has kinks, the error estimates become erratic and tightening the
        tolerance costs far more steps.
    embedding_activation : {"relu", "tanh", "softplus", "logistic", "identity"}, \
default="relu"
        Activation of the embedding (and, with ``field="conv"``, of the head before
        its pooling).
    backend : str, default=None
        ``"reference"`` (NumPy + autograd), ``"torch"`` (torchdiffeq) or ``"jax"``
        (diffrax). None: ``odeplug.set_config``/``config_context``, then the environment
        variable ``ODEPLUG_BACKEND``, then ``"reference"``. Read again at predict time:
        a model fitted on one engine predicts on any other.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the torch and jax engines compute: "cuda" a GPU (an error naming what is
        missing where the engine sees none), "auto" a GPU where the engine sees one,
        else the CPU. The reference engine computes on the CPU ("cuda" is refused).
        Read at every fit and predict call; fitted parameters are NumPy arrays, so a
        model fitted on a GPU predicts on a CPU-only machine. On jax, training steps are
        data parallel over all devices of the platform when it has several
        (``odeplug.set_config(data_parallel=False)`` turns it off).
    augment_dim : int, default=0
        Zeros appended to the state (augmented neural ODE).
    t1 : float, default=1.0
        Integration time: the "depth" of the network.
    solver : str, default="dopri5"
        One of ``odeplug.SOLVERS``. Read again at predict time, as ``rtol``, ``atol``,
        ``step_size`` and ``max_num_steps``: ``set_params(rtol=1e-1)`` after fitting
        trades accuracy for speed without refitting.
    rtol, atol : float, default=1e-3, 1e-4
        Tolerances of adaptive solvers.
    step_size : float, default=None
        Step of fixed-step solvers (required by them).
    adjoint : bool or BacksolveAdjoint, default=True
        Gradients by the adjoint method (memory constant in the number of steps), or by
        backpropagation through the solver (False).
    max_num_steps : int, default=4096
        Step budget of each solve.
    alpha : float, default=1.0
        L2 penalty ``0.5 * alpha * sum(W**2) / batch_size`` on the weights.
    batch_size : int or "auto", default="auto"
        Minibatch size; "auto" is ``min(200, n_samples)``.
    learning_rate : {"constant", "adaptive"}, default="constant"
        Schedule of Adam's step size (scikit-learn's MLP names, applied to Adam):
        "constant" keeps ``learning_rate_init``; "adaptive" divides it by 5 each time
        ``n_iter_no_change`` epochs pass without progress, instead of stopping, and
        stops once that happens at a step size of 1e-6 or less. Each epoch's step size
        is in ``curves_["learning_rate"]``. Every ``fit`` (``warm_start`` too) starts at
        ``learning_rate_init``, as scikit-learn's MLP; ``partial_fit`` stays there.
    learning_rate_init : float, default=1e-3
        Adam's step size.
    max_iter : int, default=100
        Maximum number of epochs.
    tol : float, default=1e-4
        Improvement of the loss (or validation score) that counts as progress.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (stratified) and stop when
        its accuracy stops improving; keep the best parameters.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
        Epochs without progress before stopping.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial parameters, the minibatch order and the validation split, on
        every engine (no global seed is touched).
    verbose : int, default=0
        Progress bar with loss and NFE per epoch.
    warm_start : bool, default=False
        Continue from the fitted parameters on the next ``fit``.
    field : {"mlp", "conv"}, odeplug.layers.Layer or odeplug.UserField, default="mlp"
        The vector field. "mlp": an MLP of ``[z, t]`` on the flat state, hidden layers
        ``hidden_layer_sizes``. "conv": the convolutional ODE-Net of Chen et al.
        (2018) on rows of ``input_shape`` (required): a stem of ``latent_dim``
        channels (a 3-wide convolution, then stride-2 ones while the input is larger
        than 12 along an axis), a field ``GroupNorm, activation, ConcatTime(Conv)``
        per width of ``hidden_layer_sizes`` and one back to the state's channels,
        then a GroupNorm; a head ``GroupNorm, embedding_activation, GlobalAvgPool,
        Dense``. A
        layer (``odeplug.layers.Sequential(...)``): the field itself, mapping states to
        states of the same shape, with the MLP's embedding and head on flat rows and
        the convolutional ones where ``input_shape`` has channels and positions. Strings
        and layers are valid grid values: ``{"field": ["mlp", "conv"]}``.
        ``odeplug.UserField(cls, **kwargs)``: the user's module maps the state to its
        derivative, a ``torch.nn.Module`` with torchdiffeq's ``forward(t, y)`` (the torch
        engine only) or an ``equinox.Module`` with diffrax's ``__call__(t, y, args)`` on
        one row (the jax engine only; any other engine is refused before anything
        changes, naming the module's framework and its engine). It sees the state of
        width ``latent_dim + augment_dim`` (the stem's channels and positions
        with an image ``input_shape``) and must return that shape. A class and its
        keyword arguments, not an instance: ``clone`` deep-copies parameters and grids
        compare them, so an instance's weights would leak between fits; every fit
        builds a fresh module, initialised by its own code under a seed from
        ``random_state`` (a local generator). Its parameters join ``params_`` under
        ``field.<its own names>``; ``odeplug.load(path, field=...)`` takes it back.
    input_shape : tuple of int, default=None
        The shape of one row of ``X`` as the field sees it, channels first: ``(C, L)``
        for signals, ``(C, H, W)`` for images (rows in C order, as
        ``images.reshape(n, -1)`` gives them; ``X`` stays 2-D). None: flat rows.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The labels seen in ``fit``, sorted.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Only when X has string feature names.
    backend_ : str
        The engine that fitted the model.
    params_ : dict of str to ndarray
        Canonical parameters (the same names and shapes on every engine).
    loss_curve_ : list of float
        Training loss of each epoch.
    best_loss_ : float or None
        Lowest training loss (None with early stopping).
    validation_scores_ : list of float or None
        Validation accuracy of each epoch (early stopping only).
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    t_ : int
        Training samples seen.
    nfe_ : dict
        ``{"nfe_forward": ..., "nfe_backward": ...}``: mean function evaluations per
        minibatch in the last epoch (backward is None where the engine does not report
        it); the keys of ``curves_`` and of :meth:`inference_stats`.
    curves_ : dict of str to list
        Mean per minibatch of each epoch of every training metric: ``loss``,
        ``nfe_forward``, ``nfe_backward`` (None entries where the engine does not report
        it). What :func:`odeplug.plot.plot_nfe` draws.

    See Also
    --------
    sklearn.neural_network.MLPClassifier : The discrete-depth counterpart.

    Notes
    -----
    ``predict`` solves each input with its own adaptive steps, so a prediction does not
    depend on the other rows of ``X``, and its cost adapts to the input;
    :meth:`inference_stats` reports that cost per input without changing the estimator.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from odeplug import ODEClassifier
    >>> X, y = make_moons(100, noise=0.1, random_state=0)
    >>> clf = ODEClassifier((16,), latent_dim=8, max_iter=100,
    ...                     learning_rate_init=0.01, random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    >>> clf.set_params(rtol=1e-1).predict(X[:3]).shape  # cheaper, no refit
    (3,)
    """

    def __init__(
        self,
        hidden_layer_sizes=(64,),
        *,
        latent_dim=128,
        activation="tanh",
        embedding_activation="relu",
        backend=None,
        device="cpu",
        augment_dim=0,
        t1=1.0,
        solver="dopri5",
        rtol=1e-3,
        atol=1e-4,
        step_size=None,
        adjoint=True,
        max_num_steps=DEFAULT_MAX_NUM_STEPS,
        alpha=1.0,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=1e-3,
        max_iter=100,
        tol=1e-4,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=None,
        verbose=0,
        warm_start=False,
        field="mlp",
        input_shape=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.latent_dim = latent_dim
        self.activation = activation
        self.embedding_activation = embedding_activation
        self.backend = backend
        self.device = device
        self.augment_dim = augment_dim
        self.t1 = t1
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
        self.input_shape = input_shape

    _parameter_constraints: dict = {
        **COMMON_CONSTRAINTS,
        **FIELD_CONSTRAINTS,
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "embedding_activation": [StrOptions(set(ACTIVATIONS))],
        "augment_dim": [Interval(Integral, 0, None, closed="left")],
        "field": [StrOptions({"mlp", "conv"}), Layer, UserField],
        "input_shape": [None, tuple, list],
    }

    @classmethod
    def _upgrade_saved(cls, params, fitted):
        """Format 1 (before issue 19's one vocabulary): ``hidden_layer_sizes[0]`` was
        the state's width (now ``latent_dim``) and the rest the field's hidden layers;
        ``activation`` was the embedding's (now ``embedding_activation``) and
        ``field_activation`` the field's (now ``activation``)."""
        params, fitted = super()._upgrade_saved(params, fitted)
        if "field_activation" in params and "latent_dim" not in params:
            sizes = params["hidden_layer_sizes"]
            sizes = (sizes,) if isinstance(sizes, int) else tuple(sizes)
            params["latent_dim"], params["hidden_layer_sizes"] = sizes[0], sizes[1:]
            params["embedding_activation"] = params.pop("activation")
            params["activation"] = params.pop("field_activation")
        return params, fitted

    # ------------------------------------------------------------------ spec

    def _spec_of(self, n_features: int, n_classes: int, dtype: str) -> ODENetSpec:
        sizes = self._hidden_sizes(self.hidden_layer_sizes)
        shape = self._input_shape(n_features)
        spec = dict(
            n_features=n_features, n_outputs=n_classes, embed_dim=int(self.latent_dim),
            field_hidden=sizes, augment_dim=int(self.augment_dim),
            embed_activation=self.embedding_activation, field_activation=self.activation,
            dtype=dtype)
        images = shape is not None and len(shape) > 1
        if isinstance(self.field, str) and self.field == "mlp":
            return ODENetSpec(**spec)  # flat rows whatever input_shape says
        if isinstance(self.field, str):  # "conv"
            if not images:
                raise ValueError('field="conv" needs input_shape=(C, L) or (C, H, W), got '
                                 f"{self.input_shape!r}")
            embed, field, head = conv_odenet(shape, spec["embed_dim"], sizes,
                                             spec["augment_dim"], n_classes,
                                             self.embedding_activation, self.activation)
            return ODENetSpec(**spec, input_shape=shape, embed_layer=embed,
                              field_layer=field, head_layer=head)
        if not images:
            return ODENetSpec(**spec, field_layer=self.field)
        embed, head = image_odenet_ends(shape, spec["embed_dim"], spec["augment_dim"],
                                        n_classes, self.embedding_activation)
        return ODENetSpec(**spec, input_shape=shape, embed_layer=embed,
                          field_layer=self.field, head_layer=head)

    # ------------------------------------------------------------------- fit

    def fit(self, X, y):
        """Fit the ODE-Net to data X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Labels of any type (ints, strings, objects).

        Returns
        -------
        self : ODEClassifier
            The fitted estimator.

        Raises
        ------
        TrainingDivergedError
            The loss became non-finite or exploded, or a solve failed. A fresh fit keeps
            the last parameters whose loss was finite; with ``warm_start`` the estimator
            keeps its previous fit.
        """
        return self._fit_transaction(self._fit, X, y, incremental=False, classes=None)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current parameters.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Labels, all of them in ``classes``.
        classes : array-like of shape (n_classes,), default=None
            All the classes; required on the first call, optional after it.

        Returns
        -------
        self : ODEClassifier
            The updated estimator.

        Raises
        ------
        ValueError
            ``early_stopping=True`` (as ``MLPClassifier``: partial_fit has no
            validation split), or labels outside ``classes``.
        TrainingDivergedError
            The estimator keeps its parameters from before the call.
        """
        return self._fit_transaction(self._fit, X, y, incremental=True, classes=classes)

    def _fit(self, X, y, *, incremental: bool, classes):
        if incremental:
            self._check_partial_fit_params()
        first_call = not (incremental or self.warm_start) or not hasattr(self, "classes_")
        X, y = validate_data(self, X, y, reset=first_call, dtype=(np.float64, np.float32),
                             ensure_min_samples=1)
        check_classification_targets(y)
        if incremental and first_call:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            labels = unique_labels(classes)
        elif first_call:
            labels = unique_labels(y)
        else:
            labels = self.classes_
            if classes is not None and not np.array_equal(unique_labels(classes), labels):
                raise ValueError(f"classes {unique_labels(classes)} differ from the fitted "
                                 f"classes {labels}")
        unseen = np.setdiff1d(unique_labels(y), labels)
        if unseen.size:
            raise ValueError(f"y contains labels not in classes: {unseen.tolist()}")
        if len(labels) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; only one class "
                f"is present: {labels[0]!r}")
        y_index = np.searchsorted(labels, y).astype(np.int64)

        engine = self._engine()
        if isinstance(self.field, UserField):
            self.field.check_engine(engine.name)  # before anything is built
        self._solve_config()  # solver settings, checked before anything is built
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        dtype = engine.default_dtype if first_call else self._spec.dtype
        spec = self._spec_of(X.shape[1], len(labels), dtype)
        params, history = self._start(engine, spec, first_call=first_call, seed=seed)
        self.classes_ = labels
        X = X.astype(spec.dtype, copy=False)

        validation_score = None
        if self.early_stopping and not incremental:
            X, X_val, y_index, y_val = train_test_split(
                X, y_index, test_size=self.validation_fraction, random_state=rng,
                stratify=y_index)
            program = engine.make_program(spec)
            hyper = self._hyper()

            def validation_score(current):
                log_proba, _ = program.predict(current, X_val, hyper)
                return float(np.mean(np.argmax(log_proba, axis=1) == y_val))

        return self._run_training(
            engine, spec, params, (X, y_index), rng=rng, history=history,
            continuing=not first_call, max_iter=1 if incremental else int(self.max_iter),
            validation_score=validation_score)

    # --------------------------------------------------------------- predict

    def _log_proba_and_stats(self, X):
        check_is_fitted(self, "params_")
        X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        if isinstance(self._spec.field_layer, UserField):
            self._spec.field_layer.check_engine(self._engine().name)
        return self._infer("predict", X.astype(self._spec.dtype, copy=False))

    def predict_log_proba(self, X):
        """Log of the class probabilities.

        Each row is solved alone, with its own adaptive steps and the current solver
        settings (``rtol``, ``atol``, ``solver``, ``max_num_steps`` are read again).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.

        Raises
        ------
        SolverError
            A row's solve failed (the step budget, say): the error names the row, the
            reason and the time reached.
        """
        return self._log_proba_and_stats(X)[0].astype(np.float64)

    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``; rows sum to 1.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from odeplug import ODEClassifier
        >>> X, y = make_moons(60, noise=0.1, random_state=0)
        >>> clf = ODEClassifier((), latent_dim=4, max_iter=5, random_state=0)
        >>> clf.fit(X, y).predict_proba(X[:2]).shape
        (2, 2)
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Predicted labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        y : ndarray of shape (n_samples,)
            Entries of ``classes_``.
        """
        log_proba = self.predict_log_proba(X)
        return self.classes_[np.argmax(log_proba, axis=1)]

    def inference_stats(self, X) -> dict[str, np.ndarray]:
        """Solver cost of predicting each row of X with the current settings.

        Leaves the estimator unchanged (``predict`` records nothing).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        stats : dict of str to ndarray of shape (n_samples,)
            ``nfe_forward`` (function evaluations), ``n_steps`` and ``n_rejected`` of
            each row's solve.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from odeplug import ODEClassifier
        >>> X, y = make_moons(60, noise=0.1, random_state=0)
        >>> clf = ODEClassifier((), latent_dim=4, max_iter=5, random_state=0)
        >>> clf.fit(X, y).inference_stats(X[:3])["nfe_forward"].shape
        (3,)
        """
        return {k: np.asarray(v) for k, v in self._log_proba_and_stats(X)[1].items()}
