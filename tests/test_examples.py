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
