"""odeplug.plot draws what it is given, on an Agg canvas, with labelled axes."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.datasets import make_moons  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.neighbors import KernelDensity  # noqa: E402

import odeplug  # noqa: E402
from odeplug.plot import measure_nfe, plot_density, plot_nfe, plot_trajectories  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _render(figure) -> int:
    """Draw on the Agg canvas and return the PNG's size in bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=50)
    return buffer.tell()


def _assert_labelled(ax):
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


@pytest.fixture(scope="module")
def fitted():
    X, y = make_moons(80, noise=0.1, random_state=0)
    clf = odeplug.ODEClassifier((8,), latent_dim=4, backend="reference", max_iter=4,
                                learning_rate_init=0.01, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    return clf, X


# ------------------------------------------------------------------ trajectories


def _spiral():
    t = np.linspace(0.0, 3.0, 30)
    a = np.array([[-0.1, 1.0], [-1.0, -0.1]])
    y0 = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])
    ys = odeplug.odeint(lambda t, y, a: y @ a, y0, t, args=a, rtol=1e-9, atol=1e-11)
    return t, ys


def test_trajectories_over_time_draw_every_component_of_every_state():
    t, ys = _spiral()
    ax = plot_trajectories(t, ys, time_unit="s")
    assert _render(ax.figure) > 1000
    _assert_labelled(ax)
    assert ax.get_xlabel() == "time t (s)"
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert len(lines) == 3 * 2  # trajectories x components
    np.testing.assert_array_equal(lines[0].get_xdata(), t)
    np.testing.assert_allclose(lines[0].get_ydata(), ys[:, 0, 0])


def test_trajectories_in_the_phase_plane_coloured_by_class():
    t, ys = _spiral()
    ax = plot_trajectories(t, ys, mode="phase", color_by=["a", "b", "a"])
    assert _render(ax.figure) > 1000
    _assert_labelled(ax)
    first = ax.get_lines()[0]
    np.testing.assert_allclose(first.get_xdata(), ys[:, 0, 0])
    np.testing.assert_allclose(first.get_ydata(), ys[:, 0, 1])
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["a", "b"]


def test_trajectories_coloured_by_a_continuous_value_get_a_colour_bar():
    t = np.linspace(0, 1, 5)
    ys = np.random.default_rng(0).normal(size=(5, 20, 2))
    ax = plot_trajectories(t, ys, color_by=np.linspace(0, 1, 20), max_trajectories=12)
    assert len(ax.figure.axes) == 2  # the colour bar
    assert "12 trajectories" in ax.get_title()


def test_trajectories_refuse_bad_shapes_with_the_expected_shape():
    with pytest.raises(ValueError, match="n_times = len"):
        plot_trajectories(np.linspace(0, 1, 4), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="out of range"):
        plot_trajectories(np.linspace(0, 1, 4), np.zeros((4, 2)), components=[3])
    with pytest.raises(ValueError, match="mode"):
        plot_trajectories(np.linspace(0, 1, 4), np.zeros((4, 2)), mode="3d")


# ----------------------------------------------------------------------- density


def test_density_of_a_callable_is_its_exponentiated_log_density_on_the_grid():
    def log_normal(x):  # standard normal in 2-D: p(0) = 1 / (2 pi)
        return -0.5 * (x ** 2).sum(axis=1) - np.log(2 * np.pi)

    ax = plot_density(log_normal, extent=(-2, 2, -2, 2), resolution=21, unit="m")
    assert _render(ax.figure) > 1000
    _assert_labelled(ax)
    image = ax.get_images()[0].get_array()
    assert image.shape == (21, 21)
    assert image[10, 10] == pytest.approx(1 / (2 * np.pi))
    assert image[0, 0] == pytest.approx(np.exp(-4) / (2 * np.pi))
    assert ax.get_xlabel() == "x[0] (m)"
    assert "per m²" in ax.figure.axes[1].get_ylabel()  # the colour bar


def test_density_of_estimators_with_samples_drawn_from_them():
    X = np.random.default_rng(0).normal(size=(300, 2))
    for estimator in (KernelDensity(bandwidth=0.5).fit(X),
                      GaussianMixture(2, random_state=0).fit(X)):  # sample -> (X, labels)
        ax = plot_density(estimator, samples=50, random_state=0, resolution=20, log=True)
        assert _render(ax.figure) > 1000
        assert ax.collections[0].get_offsets().shape == (50, 2)
        assert "log density" in ax.figure.axes[-1].get_ylabel()
        # extent from the samples, widened by 10% each side
        offsets = np.asarray(ax.collections[0].get_offsets())
        assert ax.get_xlim()[0] < offsets[:, 0].min()


def test_density_errors_say_what_is_missing():
    with pytest.raises(ValueError, match="extent"):
        plot_density(lambda x: np.zeros(len(x)))
    with pytest.raises(TypeError, match="does not have"):
        plot_density(lambda x: np.zeros(len(x)), samples=10)
    with pytest.raises(TypeError, match="score_samples"):
        plot_density(object())
    with pytest.raises(ValueError, match=r"\(n_samples, 2\)"):
        plot_density(lambda x: np.zeros(len(x)), samples=np.zeros((5, 3)))


# --------------------------------------------------------------------------- NFE


def test_nfe_over_training_and_backward_against_forward_from_a_fitted_classifier(fitted):
    clf, _ = fitted
    ax = plot_nfe(clf, kind="training")
    assert _render(ax.figure) > 1000
    _assert_labelled(ax)
    forward, backward = ax.get_lines()[:2]
    np.testing.assert_array_equal(forward.get_xdata(), np.arange(1, clf.n_iter_ + 1))
    np.testing.assert_allclose(forward.get_ydata(), clf.curves_["nfe_forward"])
    np.testing.assert_allclose(backward.get_ydata(), clf.curves_["nfe_backward"])

    ax = plot_nfe(clf, kind="backward")
    _assert_labelled(ax)
    points = ax.get_lines()[1]  # [0]: the diagonal
    np.testing.assert_allclose(points.get_xdata(), clf.curves_["nfe_forward"])
    np.testing.assert_allclose(points.get_ydata(), clf.curves_["nfe_backward"])


def test_measure_nfe_costs_more_and_errs_less_at_tighter_tolerances(fitted):
    clf, X = fitted
    rtol_before = clf.rtol
    m = measure_nfe(clf, X, rtols=[1e-1, 1e-3, 1e-6], repeats=1)
    assert clf.rtol == rtol_before  # restored
    assert set(m) == {"rtol", "nfe", "nfe_p10", "nfe_p90", "error", "time"}
    assert np.all(np.diff(m["nfe"]) > 0)
    assert m["error"][-1] < m["error"][0]
    assert m["error"][-1] < 1e-4
    assert np.all(m["nfe_p10"] <= m["nfe"]) and np.all(m["nfe"] <= m["nfe_p90"])
    assert np.all(m["time"] > 0)

    fig = plot_nfe({**m, **clf.curves_}, kind="all")
    assert _render(fig) > 5000
    assert len(fig.axes) == 4
    for ax in fig.axes:
        _assert_labelled(ax)
    error_panel = fig.axes[0]
    np.testing.assert_allclose(error_panel.get_lines()[0].get_ydata(), m["nfe"])
    ax = plot_nfe(m, kind="tolerance")
    assert ax.xaxis_inverted()


def test_nfe_errors_name_what_is_missing(fitted):
    clf, _ = fitted
    with pytest.raises(ValueError, match="measure_nfe"):
        plot_nfe(clf, kind="error")
    with pytest.raises(ValueError, match="kind must be"):
        plot_nfe(clf, kind="nfe")
    with pytest.raises(TypeError, match="curves_"):
        plot_nfe(object())
    with pytest.raises(ValueError, match="missing"):  # an engine without backward counts
        plot_nfe({"nfe_forward": [10.0], "nfe_backward": [None]}, kind="backward")
    with pytest.raises(TypeError, match="inference_stats"):
        measure_nfe(KernelDensity().fit(np.zeros((3, 2))), np.zeros((3, 2)))


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "odeplug\[plot\]"'):
        plot_nfe({"rtol": [1e-3], "nfe": [20.0]}, kind="tolerance")


def test_backward_series_overlaid_on_one_axes_share_the_diagonal_and_the_limits():
    ax = plot_nfe({"nfe_forward": [10.0, 30.0], "nfe_backward": [8.0, 40.0]}, "backward",
                  label="sweep")
    plot_nfe({"nfe_forward": [12.0], "nfe_backward": [6.0]}, "backward", ax=ax,
             label="epochs")
    diagonals = [line for line in ax.get_lines() if line.get_label() == "backward = forward"]
    assert len(diagonals) == 1
    assert ax.get_xlim()[1] == pytest.approx(1.05 * 40.0)  # the first series still shows
    assert ax.get_ylim() == ax.get_xlim()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "backward = forward", "sweep", "epochs"]
