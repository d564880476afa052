"""Writes the golden model files of ``tests/test_golden_files.py``: one small fitted
model per estimator family, saved in model-file format 1, and what each one predicted
on every engine when it was written.

How they were made: ``python tests/golden/make_golden.py`` on 2026-12-07, with the
``save`` and the estimators of odeplug's main at commit a68483d (format version 1; the
branch that added these files changed only ``load``), numpy/scikit-learn/safetensors as
recorded in each file's header, torch 2.13.0 CPU, jax 0.10.2. Each model is fitted on
the reference engine (float64) for two epochs on the inputs stored beside it, so the
files are small and fully determined by ``random_state``. It uses the estimators'
parameter names of that commit (before issue 19's one vocabulary: ``field_activation``,
``field_hidden_sizes``, ``hidden_layer_sizes[0]`` as the classifier's state width), which
``odeplug.load`` maps to today's; it runs on the odeplug of that commit only.

Never regenerate these files to make a failing test pass: a later odeplug must load
the files of every earlier format version and predict what they predicted. Add files
of a new format version beside them (``<family>.v2.odeplug``) instead.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np

import odeplug

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINES = ("reference", "torch", "jax")


def inputs() -> dict[str, np.ndarray]:
    """The inputs the models are fitted on and predict, made without scikit-learn's
    datasets (whose output may change between versions): they are stored anyway."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(0.0, np.pi, 24)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    X = np.concatenate([upper, lower]) + 0.1 * rng.normal(size=(48, 2))
    y = np.repeat(np.array(["upper", "lower"]), 24)
    series = np.sin(np.linspace(0.0, 3.0, 6)[None, :, None] + rng.normal(size=(8, 1, 2)))
    series[rng.random(series.shape) < 0.2] = np.nan  # irregular sampling
    targets = np.sin(np.array([3.5, 4.0])[None, :, None] + rng.normal(size=(8, 1, 2)))
    return {"X": X, "y": y, "series": series, "targets": targets}


def models(data):
    """The fitted models, by file name."""
    small = dict(max_iter=2, random_state=0, backend="reference")
    return {
        "classifier": odeplug.ODEClassifier((4, 4), batch_size=16,
                                            **small).fit(data["X"], data["y"]),
        "density": odeplug.CNFDensity(hidden_layer_sizes=(4,), batch_size=16, **small)
        .fit(data["X"]),
        "latent": odeplug.LatentODERegressor(
            obs_times=np.linspace(0.0, 3.0, 6), target_times=np.array([3.5, 4.0]),
            encoder="rnn", latent_dim=2, encoder_hidden_sizes=(4,), field_hidden_sizes=(4,),
            decoder_hidden_sizes=(), solver="bosh3", batch_size=8, **small)
        .fit(data["series"], data["targets"]),
    }


def outputs(name, model, data) -> dict[str, np.ndarray]:
    """What each model predicts: every inference entry point of its family."""
    if name == "classifier":
        return {"predict_proba": model.predict_proba(data["X"]),
                "predict": model.predict(data["X"])}
    if name == "density":
        return {"score_samples": model.score_samples(data["X"]),
                "transform": model.transform(data["X"]),
                "sample": model.sample(5, random_state=0)}
    mean, std = model.predict(data["series"], return_std=True)
    return {"predict": mean, "predict_std": std, "transform": model.transform(data["series"])}


def main() -> None:
    existing = [name for name in os.listdir(HERE) if name.endswith((".odeplug", ".npz"))]
    if existing and "--overwrite" not in sys.argv:
        sys.exit(f"{HERE} already holds {sorted(existing)}: golden files are written once "
                 "(see this script's docstring); --overwrite only for a new folder")
    warnings.simplefilter("ignore")  # two epochs do not converge
    data = inputs()
    np.savez(os.path.join(HERE, "inputs.npz"), **data)
    recorded = {}
    for name, model in models(data).items():
        path = os.path.join(HERE, f"{name}.v1.odeplug")
        odeplug.save(model, path)
        loaded = odeplug.load(path)
        for engine in ENGINES:
            for what, value in outputs(name, loaded.set_params(backend=engine), data).items():
                recorded[f"{name}/{engine}/{what}"] = value
    np.savez(os.path.join(HERE, "predictions.v1.npz"), **recorded)
    print(json.dumps({k: list(np.shape(v)) for k, v in recorded.items()}, indent=1))


if __name__ == "__main__":
    main()
