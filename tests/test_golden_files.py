"""Model files of every format version, kept in ``tests/golden/``, load and predict what
they predicted when they were written, on every engine.

The files and the recorded predictions were written once by
``tests/golden/make_golden.py`` (its docstring says when and how) and are never
regenerated: a change that makes one of these tests fail breaks users' saved models
(a renamed or removed spec field, a parameter renamed, a change of numerics); it needs
a migration in ``odeplug.load``, not new files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import odeplug
from tests.conftest import ENGINES

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
FAMILIES = {"classifier": odeplug.ODEClassifier, "density": odeplug.CNFDensity,
            "latent": odeplug.LatentODERegressor}
VERSIONS = (1,)


def _load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(HERE, name), allow_pickle=False) as data:
        return dict(data)


INPUTS = _load_npz("inputs.npz")


def _outputs(family: str, model) -> dict[str, np.ndarray]:
    """The inference entry points make_golden.py recorded, on the same inputs."""
    if family == "classifier":
        return {"predict_proba": model.predict_proba(INPUTS["X"]),
                "predict": model.predict(INPUTS["X"])}
    if family == "density":
        return {"score_samples": model.score_samples(INPUTS["X"]),
                "transform": model.transform(INPUTS["X"]),
                "sample": model.sample(5, random_state=0)}
    mean, std = model.predict(INPUTS["series"], return_std=True)
    return {"predict": mean, "predict_std": std,
            "transform": model.transform(INPUTS["series"])}


@pytest.mark.parametrize("engine_name", ENGINES)
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_golden_file_loads_and_predicts_what_it_predicted(family, version, engine_name):
    info = odeplug.available_backends().get(engine_name)
    if info is None or not info.available:
        pytest.skip(f"backend {engine_name!r} not installed")
    recorded = _load_npz(f"predictions.v{version}.npz")
    path = os.path.join(HERE, f"{family}.v{version}.odeplug")
    model = odeplug.load(path, engine_name, expected=FAMILIES[family])
    assert type(model) is FAMILIES[family] and model.backend_ == "reference"
    got = _outputs(family, model)
    prefix = f"{family}/{engine_name}/"
    assert sorted(got) == sorted(k[len(prefix):] for k in recorded if k.startswith(prefix))
    for what, value in got.items():
        expected = recorded[prefix + what]
        assert value.dtype == expected.dtype and value.shape == expected.shape, what
        if value.dtype.kind == "f":
            # float64 models: the same engine gives the same numbers up to the last
            # bits (another CPU or library build may sum in another order).
            np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-12,
                                       err_msg=f"{family} v{version} {engine_name} {what}")
        else:
            np.testing.assert_array_equal(value, expected, err_msg=what)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_golden_file_is_still_saved_the_same_way(family, version):
    """Loaded and saved again, an old file keeps what it meant: the same parameters and
    predictions (the bytes may change: the format version, odeplug's version)."""
    path = os.path.join(HERE, f"{family}.v{version}.odeplug")
    model = odeplug.load(path)
    buffer = io.BytesIO()
    odeplug.save(model, buffer)
    again = odeplug.load(io.BytesIO(buffer.getvalue()))
    for name, value in model.params_.items():
        np.testing.assert_array_equal(again.params_[name], value)
    for (what, a), b in zip(_outputs(family, again).items(),
                            _outputs(family, model).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=what)
