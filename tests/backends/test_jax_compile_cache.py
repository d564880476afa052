"""JAX's persistent compilation cache serves the JAX engine's compiled programs: XLA
programs with host callbacks are never written to it, so none may be left in a solve
(diffrax's ``error_if`` on a traced ``dt0`` was one; odeplug now hands the first step to
its controllers and calls ``diffeqsolve`` with ``dt0=None``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("diffrax")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from odeplug_backends.jax.solve import backward_probe, odeint_traced, split_config  # noqa: E402

from odeplug._solver_options import make_solve_config  # noqa: E402


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("grid", [{}, {"solver": "rk4", "step_size": 0.1}],
                         ids=["adaptive", "fixed"])
def test_compiled_solve_and_gradient_have_no_host_callback(adjoint, grid):
    # Outputs at [t0, t1], as the ODE-Net's and the CNF's solves. (More output times
    # still bring diffrax's check of SaveAt(ts=...), two error_ifs: not removed yet.)
    static, values = split_config(make_solve_config(adjoint=adjoint, **grid))

    def loss(w, y0, values, probe):
        ys, _ = odeint_traced(lambda t, y, w: jnp.tanh(w @ y), y0, jnp.array([0.0, 1.0]),
                              w, static, values, probe=probe if adjoint else None)
        return jnp.sum(ys[-1] ** 2)

    text = jax.jit(jax.grad(loss, argnums=(0, 3))).lower(
        jnp.eye(2), jnp.ones(2), values, backward_probe()).as_text()
    assert "callback" not in text


_FIT = """
import logging, warnings
import numpy as np
import jax
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
logging.basicConfig(level=logging.WARNING)
logging.getLogger("jax._src.compiler").setLevel(logging.DEBUG)
logging.getLogger("jax._src.compilation_cache").setLevel(logging.DEBUG)
import odeplug
rng = np.random.default_rng(0)
X = rng.normal(size=(24, 3)).astype(np.float32)
y = np.arange(24) % 2
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    clf = odeplug.ODEClassifier(backend="jax", latent_dim=4, hidden_layer_sizes=(), max_iter=1,
                                batch_size=8, random_state=0).fit(X, y)
clf.predict(X)
"""


def _fit_in_a_fresh_process(cache) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["ODEPLUG_JAX_CACHE_DIR"] = str(cache)
    out = subprocess.run([sys.executable, "-c", _FIT], capture_output=True, text=True,
                         env=env, check=True)
    return out.stderr


def test_classifier_programs_are_written_to_and_read_from_the_persistent_cache(tmp_path):
    log = _fit_in_a_fresh_process(tmp_path)
    assert "Not writing persistent cache entry" not in log
    names = {p.name.split("-")[0] for p in tmp_path.iterdir()}
    assert {"jit_step", "jit_rows"} <= names  # the training step and the inference
    log = _fit_in_a_fresh_process(tmp_path)  # a second process: no compilation
    assert "Persistent compilation cache hit for 'jit_step'" in log
    assert "Persistent compilation cache hit for 'jit_rows'" in log
