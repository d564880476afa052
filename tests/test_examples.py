"""The examples run end to end (few epochs: their results are measured by the
benchmarks, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_digits_example(tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "tolerance.png"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "digits.py"), "--backend", "reference",
         "--max-iter", "3", "--output", str(figure)],
        capture_output=True, text=True, timeout=600, check=True)
    assert "test accuracy:" in out.stdout
    accuracy = float(out.stdout.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.5  # three epochs: far from converged, far from chance (0.1)
    assert figure.stat().st_size > 10_000
    # The predict sweep says where it is, one line per setting before the table.
    progress = [line for line in out.stdout.splitlines()
                if line.startswith("predicting the test set ")]
    assert len(progress) == 11 + 8, progress  # 11 tolerances (the fitted one among them), 8 fixed
    assert progress[-1].startswith("predicting the test set 19/19: solver rk4")
    assert out.stdout.index(progress[-1]) < out.stdout.index("test accuracy:")


@pytest.mark.slow
def test_conv_digits_example_loads_the_gallery_model(tmp_path):
    """What the docs build runs: the fitted file (0.9889 on the test digits), the solver
    sweep without refitting, the figure."""
    pytest.importorskip("matplotlib")
    figure = tmp_path / "conv.png"
    model = ROOT / "docs" / "gallery_models" / "digits_conv_odeclassifier.odeplug"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "plot_conv_digits.py"), "--quick",
         "--model", str(model), "--output", str(figure)],
        capture_output=True, text=True, timeout=600, check=True)
    accuracy = float(out.stdout.split("test accuracy:")[1].split()[0])
    assert accuracy > 0.98  # the full fit, not a --quick one (0.4356)
    assert out.stdout.count("NFE per input") == 6  # midpoint x1..x8, dopri5 at two rtols
    assert figure.stat().st_size > 10_000


@pytest.mark.slow
def test_cnf_density_example(tmp_path):
    pytest.importorskip("matplotlib")
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "cnf_density.py"), "--quick", "--backend",
         "torch", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=True)
    assert "held-out mean log-likelihood:" in out.stdout
    for name in ("cnf_density.png", "cnf_samples.png", "cnf_flow.png"):
        assert (tmp_path / name).stat().st_size > 10_000, name


@pytest.mark.slow
def test_flow_matching_example(tmp_path):
    pytest.importorskip("matplotlib")
    figure = tmp_path / "ll_vs_time.png"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flow_matching_density.py"), "--backend",
         "reference", "--quick", "--output", str(figure)],
        capture_output=True, text=True, timeout=600, check=True)
    lines = [line for line in out.stdout.splitlines() if "held-out LL" in line]
    assert len(lines) == 4 + 5 + 5  # every stage of the three fits is scored
    assert all(np.isfinite(float(line.split()[-1])) for line in lines)
    assert figure.stat().st_size > 10_000


def _example_module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its main() runs only as a script
    return module


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("n_panels", [1, 4])
def test_flow_matching_figure_keeps_title_legend_and_ticks_inside_and_apart(tmp_path,
                                                                            n_panels):
    """The gallery draws one panel (moons at --quick), docs/density.md four: the title
    and the legend lie inside the figure, and no two tick labels of an axis overlap."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    example = _example_module("flow_matching_density")
    # Times under a decade, as in a --quick run: log scale's minor labels crowd there.
    curves = {label: [(t, -2.8 + 0.1 * i) for i, t in enumerate((1.6, 1.8, 2.0, 2.3, 2.9))]
              for label in example.LABELS}
    names = ["moons", "8gaussians", "2spirals", "digits"][:n_panels]
    fig = example.draw({name: curves for name in names}, tmp_path / "figure.png",
                       references={name: -2.5 for name in names},
                       note="--quick: 600 points, a tenth of the epochs, unconverged")
    try:
        renderer = fig.canvas.get_renderer()
        inside = fig.bbox
        for artist in (fig._suptitle, *fig.legends):
            box = artist.get_window_extent(renderer)
            assert (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0
                    and box.y1 <= inside.y1), (artist, box, inside)
        for ax in fig.axes:
            for axis in (ax.xaxis, ax.yaxis):
                labels = [label.get_window_extent(renderer)
                          for label in axis.get_ticklabels(which="both")
                          if label.get_visible() and label.get_text()]
                clashes = [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]
                           if _overlap(a, b)]
                assert not clashes, clashes
    finally:
        plt.close(fig)
