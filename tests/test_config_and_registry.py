"""Choosing the engine at run time: config, environment, registry, lazy imports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import odeplug
from odeplug import Backend, BackendNotAvailableError
from odeplug._config import resolve_backend_name
from odeplug.backend import _instances, _targets


def test_default_backend_is_reference(monkeypatch):
    monkeypatch.delenv("ODEPLUG_BACKEND", raising=False)
    assert odeplug.get_config()["backend"] is None
    assert resolve_backend_name() == "reference"


def test_environment_variable_then_config_then_argument(monkeypatch):
    monkeypatch.setenv("ODEPLUG_BACKEND", "jax")
    assert resolve_backend_name() == "jax"
    with odeplug.config_context(backend="torch"):
        assert resolve_backend_name() == "torch"
        assert resolve_backend_name("reference") == "reference"
    assert resolve_backend_name() == "jax"


def test_config_context_restores_on_error():
    with pytest.raises(RuntimeError), odeplug.config_context(backend="torch"):
        raise RuntimeError
    assert odeplug.get_config()["backend"] is None


def test_config_is_thread_local():
    seen = {}
    with odeplug.config_context(backend="torch"):
        thread = threading.Thread(target=lambda: seen.update(odeplug.get_config()))
        thread.start()
        thread.join()
    assert seen["backend"] is None


def test_set_config_validates():
    with pytest.raises(TypeError):
        odeplug.set_config(backend=3)
    with pytest.raises(ValueError):
        odeplug.set_config(num_threads=0)


def test_available_backends_lists_all_three():
    info = odeplug.available_backends()
    assert {"reference", "torch", "jax"} <= set(info)
    assert info["reference"].available
    assert info["reference"].versions["numpy"] == np.__version__
    assert info["jax"].install == 'pip install "odeplug[jax]"'
    assert info["torch"].install == 'pip install "odeplug[torch]"'


def test_unknown_backend_lists_registered():
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'.*'jax'.*'reference'.*'torch'"):
        odeplug.get_backend("tpu")


class _MissingEngine(Backend):
    name = "missing"
    requires = ("odeplug-no-such-distribution",)
    install = 'pip install "odeplug[missing]"'

    def odeint(self, func, y0, t, args, config):  # pragma: no cover - never reached
        raise AssertionError


@pytest.fixture
def missing_backend():
    odeplug.register_backend("missing", _MissingEngine)
    yield
    _targets.pop("missing", None)
    _instances.pop("missing", None)


def test_missing_engine_names_the_pip_extra(missing_backend):
    with pytest.raises(BackendNotAvailableError, match=r'pip install "odeplug\[missing\]"'):
        odeplug.odeint(lambda t, y, a: -y, np.ones(1), np.array([0.0, 1.0]), backend="missing")
    assert not odeplug.available_backends()["missing"].available


def _run(code: str, **env) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, **env}, check=True)
    return result.stdout.strip()


def test_import_odeplug_imports_no_engine():
    out = _run("import sys, odeplug; odeplug.available_backends(); "
               "print(sorted(m for m in ('torch', 'jax', 'diffrax', 'torchdiffeq') "
               "if m in sys.modules))")
    assert out == "[]"


def test_entry_points_are_registered_once():
    from importlib.metadata import entry_points

    names = [ep.name for ep in entry_points(group="odeplug.backends")]
    assert {"reference", "torch", "jax"} <= set(names)
    assert odeplug.backend.registered_backends().count("torch") == 1


def test_environment_variable_reaches_a_fresh_process():
    out = _run("import odeplug._config as c; print(c.resolve_backend_name())",
               ODEPLUG_BACKEND="torch")
    assert out == "torch"


_CACHE_PROBE = (
    "import jax, numpy as np, odeplug; "
    "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
    "odeplug.odeint(lambda t, y, a: -y, jax.numpy.ones(2), np.array([0.0, 1.0])); "
    "print(jax.config.jax_compilation_cache_dir)")


def _run_without(code: str, unset: tuple[str, ...], **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**environ, **env}, check=True)
    return result.stdout.strip()


def test_jax_compilation_cache_is_on_by_default_in_the_users_cache(tmp_path):
    pytest.importorskip("jax")
    unset = ("ODEPLUG_JAX_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")
    out = _run_without(_CACHE_PROBE, unset, HOME=str(tmp_path))
    folder = tmp_path / ".cache" / "odeplug" / "jax"
    assert out == str(folder)
    assert any(folder.iterdir())  # the solve's compilation was written there


def test_jax_compilation_cache_moved_or_off_by_environment(tmp_path):
    pytest.importorskip("jax")
    unset = ("JAX_COMPILATION_CACHE_DIR",)
    moved = tmp_path / "moved"
    assert _run_without(_CACHE_PROBE, unset, ODEPLUG_JAX_CACHE_DIR=str(moved)) == str(moved)
    assert any(moved.iterdir())
    assert _run_without(_CACHE_PROBE, unset, ODEPLUG_JAX_CACHE_DIR="") == "None"
    # JAX's own setting wins.
    own = tmp_path / "own"
    assert _run_without(_CACHE_PROBE, (), ODEPLUG_JAX_CACHE_DIR=str(moved),
                        JAX_COMPILATION_CACHE_DIR=str(own)) == str(own)


def test_jax_cache_dir_config(monkeypatch):
    from odeplug._config import resolve_jax_cache_dir

    monkeypatch.setenv("ODEPLUG_JAX_CACHE_DIR", "/from/env")
    assert resolve_jax_cache_dir() == "/from/env"
    with odeplug.config_context(jax_cache_dir="/from/config"):
        assert resolve_jax_cache_dir() == "/from/config"
    with odeplug.config_context(jax_cache_dir=""):
        assert resolve_jax_cache_dir() is None
    monkeypatch.setenv("ODEPLUG_JAX_CACHE_DIR", "off")
    assert resolve_jax_cache_dir() is None
    with pytest.raises(TypeError, match="jax_cache_dir"):
        odeplug.set_config(jax_cache_dir=3)
