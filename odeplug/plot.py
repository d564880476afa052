"""Figures of Neural ODEs: trajectories, 2-D densities and solver cost (NFE).

Needs matplotlib, an optional extra: ``pip install "odeplug[plot]"``. It is imported when
a figure is drawn, not when this module is, so ``import odeplug.plot`` and
:func:`measure_nfe` work without it.

Every function draws on the Axes it is given (``ax=``) or on a new figure, labels its
axes with their units and returns what it drew on.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["measure_nfe", "plot_density", "plot_nfe", "plot_trajectories"]

PLOT_EXTRA_HINT = 'pip install "odeplug[plot]"'
NFE_KINDS = ("training", "backward", "tolerance", "error", "time", "all")

# Time in an ODE-Net or a flow is the solver's integration variable, without a physical
# unit unless the data gives it one (the latent ODE's observation times).
DEFAULT_TIME_UNIT = "dimensionless"


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"odeplug.plot draws with matplotlib, which is not installed: "
            f"{PLOT_EXTRA_HINT}") from error
    return plt


def _axes(ax, figsize=(6.0, 4.5)):
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots(figsize=figsize, constrained_layout=True)
    return ax


def _unit(label: str, unit: str | None) -> str:
    return f"{label} ({unit})" if unit else label


# ------------------------------------------------------------------ trajectories


def plot_trajectories(times, states, *, mode="time", components=None, color_by=None,
                      max_trajectories=50, ax=None, time_unit=DEFAULT_TIME_UNIT,
                      state_label="hidden state z", state_unit=None, title=None,
                      **line_kwargs):
    """Draw hidden-state or latent trajectories ``z(t)`` over time, or in a phase plane.

    Parameters
    ----------
    times : array-like of shape (n_times,)
        Time grid, as given to :func:`odeplug.odeint`.
    states : array-like of shape (n_times, n_dims) or (n_times, n_trajectories, n_dims)
        The states at ``times``: what ``odeint`` returns for one state or a batch.
    mode : {"time", "phase"}, default="time"
        ``"time"``: each component against time, one panel. ``"phase"``: component
        ``components[1]`` against ``components[0]``, a marker at the start of each
        trajectory and an arrow at its end.
    components : sequence of int, default=None
        State components to draw: all (at most 8) in ``"time"`` mode, ``(0, 1)`` in
        ``"phase"`` mode.
    color_by : array-like of shape (n_trajectories,), default=None
        One value per trajectory (a class label, a target) that colours it, with a
        legend for few distinct values and a colour bar otherwise.
    max_trajectories : int, default=50
        Draw at most this many (the first ones), so large batches stay readable.
    ax : matplotlib Axes, default=None
        Where to draw; None: a new figure.
    time_unit, state_unit : str or None
        Units written on the axes (``time_unit`` defaults to ``"dimensionless"``: an
        ODE-Net's depth variable has no physical unit).
    state_label : str, default="hidden state z"
        Name of the state on the axes and in the title.
    title : str, default=None
        None: says what is drawn and how many trajectories.
    **line_kwargs
        Passed to ``Axes.plot``.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> import odeplug
    >>> from odeplug.plot import plot_trajectories
    >>> t = np.linspace(0.0, 6.0, 50)
    >>> ys = odeplug.odeint(lambda t, y, w: y @ w, np.eye(2), t,
    ...                     args=np.array([[-0.1, 1.0], [-1.0, -0.1]]))
    >>> ys.shape
    (50, 2, 2)
    >>> ax = plot_trajectories(t, ys, mode="phase", color_by=[0, 1])
    >>> ax.get_xlabel()
    'hidden state z[0]'
    """
    if mode not in ("time", "phase"):
        raise ValueError(f"mode must be 'time' or 'phase', got {mode!r}")
    times = np.asarray(times, dtype=float)
    states = np.asarray(states, dtype=float)
    if times.ndim != 1:
        raise ValueError(f"times must be 1-D, got shape {times.shape}")
    if states.ndim == 2:
        states = states[:, None, :]
    if states.ndim != 3 or states.shape[0] != times.shape[0]:
        raise ValueError(
            f"states must have shape (n_times, n_dims) or (n_times, n_trajectories, "
            f"n_dims) with n_times = len(times) = {times.shape[0]}, got {states.shape}")
    n_dims = states.shape[2]
    if components is None:
        components = (0, 1) if mode == "phase" else tuple(range(min(n_dims, 8)))
    components = tuple(int(c) for c in components)
    if mode == "phase" and len(components) != 2:
        raise ValueError(f"phase mode draws 2 components, got {components}")
    bad = [c for c in components if not 0 <= c < n_dims]
    if bad:
        raise ValueError(f"components {bad} out of range for states of {n_dims} dims")

    n_drawn = min(states.shape[1], int(max_trajectories))
    states = states[:, :n_drawn]
    colors, legend = _trajectory_colors(color_by, states.shape[1], n_drawn, len(components),
                                        mode)
    ax = _axes(ax)
    plt = _pyplot()
    if mode == "time":
        # Without color_by, colour by component and dash every trajectory alike.
        for j, c in enumerate(components):
            for i in range(n_drawn):
                color = colors[i] if colors is not None else f"C{j % 10}"
                ax.plot(times, states[:, i, c], color=color, lw=1.0, alpha=0.8,
                        label=(f"{state_label}[{c}]" if colors is None and i == 0 else None),
                        **line_kwargs)
        ax.set_xlabel(_unit("time t", time_unit))
        ax.set_ylabel(_unit(state_label, state_unit))
    else:
        a, b = components
        for i in range(n_drawn):
            color = colors[i] if colors is not None else "C0"
            ax.plot(states[:, i, a], states[:, i, b], color=color, lw=1.0, alpha=0.8,
                    **line_kwargs)
            ax.plot(states[0, i, a], states[0, i, b], "o", color=color, ms=3)
            if len(times) > 1:
                ax.annotate("", xy=(states[-1, i, a], states[-1, i, b]),
                            xytext=(states[-2, i, a], states[-2, i, b]),
                            arrowprops={"arrowstyle": "->", "color": color})
        ax.set_xlabel(_unit(f"{state_label}[{a}]", state_unit))
        ax.set_ylabel(_unit(f"{state_label}[{b}]", state_unit))
    if legend == "classes":
        values = np.asarray(color_by)[:n_drawn]
        for k, value in enumerate(np.unique(values)):
            ax.plot([], [], color=f"C{k % 10}", label=str(value))
        ax.legend(fontsize=8, title=None)
    elif legend == "colorbar":
        values = np.asarray(color_by, dtype=float)[:n_drawn]
        mappable = plt.cm.ScalarMappable(
            norm=plt.Normalize(values.min(), values.max()), cmap="viridis")
        ax.figure.colorbar(mappable, ax=ax)
    elif mode == "time" and len(components) > 1:
        ax.legend(fontsize=8)
    if title is None:
        where = "over time" if mode == "time" else "in the phase plane, o = start"
        title = (f"{state_label}: {n_drawn} trajector{'y' if n_drawn == 1 else 'ies'} "
                 f"{where}")
    ax.set_title(title)
    return ax


def _trajectory_colors(color_by, n_trajectories, n_drawn, n_components, mode):
    if color_by is None:
        return None, None
    values = np.asarray(color_by)
    if values.shape[0] != n_trajectories and values.shape[0] < n_drawn:
        raise ValueError(f"color_by has {values.shape[0]} values for {n_trajectories} "
                         f"trajectories")
    values = values[:n_drawn]
    distinct = np.unique(values)
    if distinct.size <= 10 or not np.issubdtype(values.dtype, np.number):
        index = np.searchsorted(distinct, values)
        return [f"C{k % 10}" for k in index], "classes"
    plt = _pyplot()
    norm = plt.Normalize(values.min(), values.max())
    return [plt.cm.viridis(norm(v)) for v in values], "colorbar"


# ----------------------------------------------------------------------- density


def plot_density(density, *, samples=None, extent=None, resolution=120, ax=None,
                 random_state=None, log=False, unit=None, title=None, cmap="viridis",
                 sample_kwargs=None):
    """Draw a 2-D density on a grid, with samples over it.

    Parameters
    ----------
    density : estimator or callable
        A fitted density estimator with ``score_samples(X) -> log p(X)`` (and, to draw
        samples from it, ``sample(n_samples, random_state=...)``): ``CNFDensity``,
        scikit-learn's ``KernelDensity`` or ``GaussianMixture``. Or a callable mapping
        an array of shape (n_points, 2) to the log-density of each point.
    samples : int or array-like of shape (n_samples, 2), default=None
        Points drawn over the density: an array (data, say), or a number of samples
        drawn from ``density.sample``. None: none.
    extent : (xmin, xmax, ymin, ymax), default=None
        The grid's bounds; None: the samples' range, widened by 10% on each side.
    resolution : int, default=120
        Grid points per axis (``resolution**2`` log-density evaluations).
    ax : matplotlib Axes, default=None
        Where to draw; None: a new figure.
    random_state : int, RandomState instance or None
        Passed to ``density.sample`` where it takes one.
    log : bool, default=False
        Draw ``log p`` instead of ``p``.
    unit : str, default=None
        Unit of the coordinates, written on the axes; the density is then per that
        unit squared.
    title : str, default=None
        None: says what is drawn.
    cmap : str, default="viridis"
    sample_kwargs : dict, default=None
        Passed to ``Axes.scatter`` for the samples.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.neighbors import KernelDensity
    >>> from odeplug.plot import plot_density
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> kde = KernelDensity(bandwidth=0.5).fit(X)
    >>> ax = plot_density(kde, samples=100, random_state=0, resolution=40)
    >>> ax.get_xlabel(), ax.get_ylabel()
    ('x[0]', 'x[1]')
    """
    if callable(getattr(density, "score_samples", None)):
        log_density = density.score_samples
    elif callable(density):
        log_density = density
    else:
        raise TypeError(f"density must have score_samples or be callable, got "
                        f"{type(density).__name__}")
    points = _samples(density, samples, random_state)
    if extent is None:
        if points is None:
            raise ValueError("give extent=(xmin, xmax, ymin, ymax) or samples to place "
                             "the grid")
        lo, hi = points.min(axis=0), points.max(axis=0)
        pad = 0.1 * np.maximum(hi - lo, 1e-12)
        extent = (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])
    xmin, xmax, ymin, ymax = (float(v) for v in extent)
    if not (xmin < xmax and ymin < ymax):
        raise ValueError(f"extent must be (xmin, xmax, ymin, ymax) with min < max, got "
                         f"{extent}")
    resolution = int(resolution)
    gx, gy = np.meshgrid(np.linspace(xmin, xmax, resolution),
                         np.linspace(ymin, ymax, resolution))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    values = np.asarray(log_density(grid), dtype=float).reshape(gx.shape)
    if not log:
        values = np.exp(values)

    ax = _axes(ax, figsize=(5.5, 4.5))
    image = ax.imshow(values, origin="lower", extent=(xmin, xmax, ymin, ymax),
                      aspect="auto", cmap=cmap)
    area = f"per {unit}²" if unit else "per unit area"
    ax.figure.colorbar(image, ax=ax,
                       label=f"log density log p(x) (log of {area})" if log
                       else f"density p(x) ({area})")
    if points is not None:
        style = {"s": 4, "c": "white", "alpha": 0.6, "linewidths": 0}
        style.update(sample_kwargs or {})
        ax.scatter(points[:, 0], points[:, 1], **style)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
    ax.set_xlabel(_unit("x[0]", unit))
    ax.set_ylabel(_unit("x[1]", unit))
    if title is None:
        title = f"{'log-' if log else ''}density on a {resolution}×{resolution} grid"
        if points is not None:
            title += f", {len(points)} samples"
    ax.set_title(title)
    return ax


def _samples(density, samples, random_state):
    if samples is None:
        return None
    if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool):
        if not callable(getattr(density, "sample", None)):
            raise TypeError(f"samples={samples} draws from density.sample, which "
                            f"{type(density).__name__} does not have; pass an array")
        # GaussianMixture.sample takes no random_state (it uses the estimator's own).
        accepts_seed = "random_state" in inspect.signature(density.sample).parameters
        drawn = (density.sample(int(samples), random_state=random_state) if accepts_seed
                 else density.sample(int(samples)))
        if isinstance(drawn, tuple):  # GaussianMixture.sample returns (X, labels)
            drawn = drawn[0]
        points = np.asarray(drawn, dtype=float)
    else:
        points = np.asarray(samples, dtype=float)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"samples must have shape (n_samples, 2), got {points.shape}")
    return points


# --------------------------------------------------------------------------- NFE


def measure_nfe(estimator, X, rtols=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), *, atol_ratio=0.1,
                reference_rtol=1e-8, repeats=3, method=None) -> dict[str, np.ndarray]:
    """Cost, error and time of a fitted estimator's predictions at several tolerances.

    The solver settings of odeplug's estimators are read at predict time, so one fit is
    solved again at each ``rtol`` (``atol = atol_ratio * rtol``) with ``set_params``;
    the estimator's own settings are restored afterwards.

    Parameters
    ----------
    estimator : fitted odeplug estimator
        With ``inference_stats(X)`` (per-row counters) and the output ``method``.
    X : array-like of shape (n_samples, n_features)
        Inputs, as the estimator's ``predict`` takes them.
    rtols : sequence of float
        Relative tolerances to solve at.
    atol_ratio : float, default=0.1
        ``atol = atol_ratio * rtol``.
    reference_rtol : float, default=1e-8
        The tight solve the numerical error is measured against.
    repeats : int, default=3
        Timed predictions per tolerance (after one untimed call, which also compiles on
        JAX): the median is reported.
    method : str, default=None
        The output whose error is measured: ``predict_log_proba``, else
        ``score_samples``, else ``predict``.

    Returns
    -------
    measurements : dict of str to ndarray of shape (len(rtols),)
        ``rtol``; ``nfe`` (mean function evaluations per input), ``nfe_p10`` and
        ``nfe_p90`` (their 10th and 90th percentiles over the inputs); ``error`` (max
        absolute difference of the output from the ``reference_rtol`` solve); ``time``
        (median wall time of one ``method`` call on all of X, in seconds). What
        :func:`plot_nfe` draws.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from odeplug import ODEClassifier
    >>> from odeplug.plot import measure_nfe
    >>> X, y = make_moons(60, noise=0.1, random_state=0)
    >>> clf = ODEClassifier((), latent_dim=4, max_iter=5, random_state=0).fit(X, y)
    >>> m = measure_nfe(clf, X, rtols=[1e-2, 1e-5], repeats=1)
    >>> bool(m["nfe"][1] > m["nfe"][0]), bool(m["error"][1] < m["error"][0])
    (True, True)
    """
    if method is None:
        method = next((m for m in ("predict_log_proba", "score_samples", "predict")
                       if callable(getattr(estimator, m, None))), None)
    output = getattr(estimator, method, None) if method else None
    if not callable(output) or not callable(getattr(estimator, "inference_stats", None)):
        raise TypeError(f"measure_nfe needs an estimator with inference_stats and "
                        f"{method or 'predict'}, got {type(estimator).__name__}")
    rtols = [float(r) for r in rtols]
    if not rtols or min(rtols) <= 0:
        raise ValueError(f"rtols must be positive, got {rtols}")
    saved = {k: estimator.get_params()[k] for k in ("rtol", "atol")}
    table: dict[str, list[float]] = {k: [] for k in
                                     ("rtol", "nfe", "nfe_p10", "nfe_p90", "error", "time")}
    try:
        estimator.set_params(rtol=reference_rtol, atol=atol_ratio * reference_rtol)
        reference = np.asarray(output(X), dtype=float)
        for rtol in rtols:
            estimator.set_params(rtol=rtol, atol=atol_ratio * rtol)
            value = np.asarray(output(X), dtype=float)  # also JAX's compilation
            times = []
            for _ in range(max(1, int(repeats))):
                start = time.perf_counter()
                output(X)
                times.append(time.perf_counter() - start)
            nfe = np.asarray(estimator.inference_stats(X)["nfe_forward"], dtype=float)
            table["rtol"].append(rtol)
            table["nfe"].append(float(nfe.mean()))
            table["nfe_p10"].append(float(np.percentile(nfe, 10)))
            table["nfe_p90"].append(float(np.percentile(nfe, 90)))
            table["error"].append(float(np.max(np.abs(value - reference))))
            table["time"].append(float(np.median(times)))
    finally:
        estimator.set_params(**saved)
    return {k: np.asarray(v) for k, v in table.items()}


def plot_nfe(data, kind="training", *, ax=None, label=None, title=None, **line_kwargs):
    """Draw the solver's cost: the number of function evaluations (NFE).

    The four panels of Fig. 3 of Chen et al. (2018), one per ``kind``:

    - ``"error"``: NFE per input against the numerical error of the output;
    - ``"time"``: wall time of a prediction against NFE per input;
    - ``"backward"``: backward NFE (adjoint solve) against forward NFE, one point per
      training epoch, with the line backward = forward;
    - ``"training"``: forward (and backward) NFE per minibatch over the training epochs.

    and ``"tolerance"``: NFE per input against ``rtol``; ``"all"``: the four panels in
    one new figure.

    Parameters
    ----------
    data : fitted estimator or mapping
        A fitted odeplug estimator: its ``curves_`` (``nfe_forward`` and
        ``nfe_backward``, means per minibatch of each epoch) give ``"training"`` and
        ``"backward"``. A mapping: what :func:`measure_nfe` returns (``rtol``, ``nfe``,
        ``error``, ``time``, optionally ``nfe_p10``/``nfe_p90``), and/or per-epoch lists
        ``nfe_forward``/``nfe_backward``; ``"all"`` needs both (``{**measurements,
        **clf.curves_}``).
    kind : {"training", "backward", "tolerance", "error", "time", "all"}
    ax : matplotlib Axes, default=None
        Where to draw; None: a new figure. Not with ``kind="all"``.
    label : str, default=None
        Legend label of the line (to overlay several models on one Axes).
    title : str, default=None
        None: says what is drawn.
    **line_kwargs
        Passed to ``Axes.plot``.

    Returns
    -------
    ax : matplotlib Axes, or Figure for ``kind="all"``

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from odeplug import ODEClassifier
    >>> from odeplug.plot import plot_nfe
    >>> X, y = make_moons(60, noise=0.1, random_state=0)
    >>> clf = ODEClassifier((), latent_dim=4, max_iter=5, random_state=0).fit(X, y)
    >>> ax = plot_nfe(clf, kind="training")
    >>> ax.get_xlabel()
    'training epoch'
    >>> plot_nfe({"rtol": [1e-2, 1e-4], "nfe": [14.0, 26.0]}, kind="tolerance").get_ylabel()
    'NFE per input (function evaluations)'
    """
    if kind not in NFE_KINDS:
        raise ValueError(f"kind must be one of {NFE_KINDS}, got {kind!r}")
    table = _nfe_table(data)
    if kind == "all":
        if ax is not None:
            raise ValueError("kind='all' draws a new figure of four panels; ax must be None")
        _, axes = _pyplot().subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
        panels = ("error", "time", "backward", "training")
        for panel, name in zip(axes.ravel(), panels, strict=True):
            plot_nfe(table, name, ax=panel, label=label, **line_kwargs)
        fig = axes[0, 0].figure
        fig.suptitle(title or "Solver cost of a Neural ODE (Chen et al. 2018, Fig. 3)")
        return fig

    needs = {"training": ("nfe_forward",), "backward": ("nfe_forward", "nfe_backward"),
             "tolerance": ("rtol", "nfe"), "error": ("error", "nfe"),
             "time": ("nfe", "time")}[kind]
    missing = [k for k in needs if _column(table, k) is None]
    if missing:
        hint = ("fit the estimator first (its curves_ hold them)"
                if kind in ("training", "backward") else "see odeplug.plot.measure_nfe")
        raise ValueError(f"plot_nfe(kind={kind!r}) needs {list(needs)}; missing "
                         f"{missing}: {hint}")
    ax = _axes(ax)
    nfe_axis = "NFE per input (function evaluations)"
    # NFE is a count: said once in the x or y label of each panel, "(function
    # evaluations)" or "(evaluations)".
    style = {"marker": "o", **line_kwargs}
    if kind == "training":
        forward = _column(table, "nfe_forward")
        epochs = np.arange(1, len(forward) + 1)
        ax.plot(epochs, forward, label=_join(label, "forward"), **style)
        backward = _column(table, "nfe_backward")
        if backward is not None:
            ax.plot(epochs, backward, label=_join(label, "backward"),
                    **{**style, "marker": "s", "ls": "--"})
        ax.set_xlabel("training epoch")
        ax.set_ylabel("NFE per minibatch (epoch mean)")
        default_title = "NFE over training"
        ax.legend(fontsize=8)
    elif kind == "backward":
        forward, backward = _column(table, "nfe_forward"), _column(table, "nfe_backward")
        # Drawn over earlier calls on the same Axes: the limits cover them all and the
        # diagonal is drawn once.
        diagonal = [line for line in ax.get_lines()
                    if line.get_label() == "backward = forward"]
        top = 1.05 * max(np.max(forward), np.max(backward))
        if diagonal:
            top = max(top, ax.get_xlim()[1])
            diagonal[0].set_data([0.0, top], [0.0, top])
        else:
            ax.plot([0.0, top], [0.0, top], color="grey", lw=0.8, ls=":",
                    label="backward = forward")
        ax.plot(forward, backward, label=label, **{**style, "ls": "none"})
        ax.set_xlim(0.0, top)
        ax.set_ylim(0.0, top)
        ax.set_xlabel("forward NFE per minibatch (function evaluations)")
        ax.set_ylabel("backward NFE per minibatch (evaluations)")
        default_title = "backward against forward NFE, one point per epoch"
        ax.legend(fontsize=8)
    elif kind == "tolerance":
        rtol, nfe = _column(table, "rtol"), _column(table, "nfe")
        ax.semilogx(rtol, nfe, label=label, **style)
        _percentile_band(ax, table, rtol)
        ax.invert_xaxis()  # tighter tolerances, more evaluations, to the right
        ax.set_xlabel("rtol at predict time (relative tolerance, dimensionless)")
        ax.set_ylabel(nfe_axis)
        default_title = "NFE against tolerance"
    elif kind == "error":
        error, nfe = _column(table, "error"), _column(table, "nfe")
        # An output identical to the reference solve has error 0: drawn at the floor.
        floor = np.finfo(float).eps
        ax.semilogx(np.maximum(error, floor), nfe, label=label, **style)
        ax.set_xlabel("numerical error: max |output - output at tight rtol|")
        ax.set_ylabel(nfe_axis)
        default_title = "NFE against numerical error"
    else:
        nfe, seconds = _column(table, "nfe"), _column(table, "time")
        ax.plot(nfe, seconds, label=label, **style)
        ax.set_xlabel(nfe_axis)
        ax.set_ylabel("prediction time (s, wall clock, median)")
        default_title = "prediction time against NFE"
    if label is not None and kind in ("tolerance", "error", "time"):
        ax.legend(fontsize=8)
    ax.set_title(title or default_title)
    return ax


def _nfe_table(data) -> Mapping[str, Any]:
    if isinstance(data, Mapping):
        return data
    curves = getattr(data, "curves_", None)
    if curves is None:
        raise TypeError(f"plot_nfe takes a fitted odeplug estimator (with curves_) or a "
                        f"mapping of measurements, got {type(data).__name__}")
    return curves


def _column(table: Mapping[str, Any], key: str) -> np.ndarray | None:
    values = table.get(key)
    if values is None:
        return None
    values = list(values) if not np.isscalar(values) else [values]
    if not values or any(v is None for v in values):
        return None  # an engine that does not report the backward count
    return np.asarray(values, dtype=float)


def _percentile_band(ax, table, x) -> None:
    lo, hi = _column(table, "nfe_p10"), _column(table, "nfe_p90")
    if lo is not None and hi is not None:
        ax.fill_between(x, lo, hi, alpha=0.25, label="10th to 90th percentile of inputs")
        ax.legend(fontsize=8)


def _join(label: str | None, what: str) -> str:
    return f"{label}, {what}" if label else what

