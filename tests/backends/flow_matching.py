"""Shared pieces of the engines' flow-matching program tests: a small CNF, its
flow-matching batches, and the field written out in NumPy (independent of every
engine's code)."""

from __future__ import annotations

import numpy as np

from odeplug._flow_matching import FlowMatching, FlowMatchingSpec
from odeplug._solver_options import make_solve_config
from odeplug._specs import CNFHyper, CNFSpec

T1 = 1.5


def fm_spec(dtype="float64", field_hidden=(8,), field_activation="tanh", n_features=2):
    """The ``FlowMatchingSpec`` of a small CNF."""
    return FlowMatchingSpec(CNFSpec(n_features=n_features, field_hidden=field_hidden,
                                    field_activation=field_activation, dtype=dtype))


def fm_hyper(**changes) -> CNFHyper:
    """Learning rate 1e-2, alpha 0.5, ``t1`` 1.5 (the solver plays no part)."""
    values = dict(solve=make_solve_config(), t1=T1, learning_rate=1e-2, alpha=0.5)
    return CNFHyper(**{**values, **changes})


def fm_batch(spec, n=32, seed=0, ot_pairing=True, sigma_min=0.05):
    """``(t, x_t, target)`` of ``n`` rows of skewed data, as the training loop makes it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, spec.cnf.n_features)) * [1.5, 0.5][: spec.cnf.n_features] + 0.3
    maker = FlowMatching(sigma_min=sigma_min, ot_pairing=ot_pairing, t1=T1,
                         dtype=spec.dtype)
    return maker.batch(np.random.RandomState(seed), (X,))


ACTIVATIONS = {"tanh": np.tanh, "softplus": lambda x: np.logaddexp(0.0, x),
               "logistic": lambda x: 0.5 * (np.tanh(0.5 * x) + 1.0)}


def numpy_field(params, t, z, activation="tanh"):
    """The CNF's field, an MLP of ``[z, t]`` with a linear last layer, per row ``t``."""
    n_layers = len([k for k in params if k.endswith(".weight")])
    h = np.concatenate([z, np.broadcast_to(t, (len(z), 1))], axis=1).astype(np.float64)
    for i in range(n_layers):
        h = h @ params[f"field.{i}.weight"] + params[f"field.{i}.bias"]
        if i < n_layers - 1:
            h = ACTIVATIONS[activation](h)
    return h


def numpy_loss(params, batch, alpha, penalized):
    """``mean ||f(t, x_t) - target||^2 + 0.5 alpha sum(W^2) / batch_size``."""
    t, x_t, target = (np.asarray(a, dtype=np.float64) for a in batch)
    residual = numpy_field({k: np.float64(v) for k, v in params.items()}, t, x_t) - target
    penalty = sum(np.sum(np.float64(params[k]) ** 2) for k in penalized)
    return np.mean(np.sum(residual**2, axis=1)) + 0.5 * alpha * penalty / len(x_t)
