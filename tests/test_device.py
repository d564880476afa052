"""The ``device`` parameter: on every estimator, checked the same way on every engine,
carried by the estimator base into every program call, never in fitted attributes or
model files; data-parallel training on JAX over several devices of one host; and, where
a GPU is present, fits on it that agree with the CPU's.

Tests that need a GPU skip with the reason elsewhere. The mechanism is checked on the
CPU: a fit with ``device="cpu"`` goes through the same scope as one with
``device="cuda"``, and torch's helpers are checked to place tensors on the scope's
device with torch's ``meta`` device, which every build of torch has.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_moons

import odeplug
from odeplug import DeviceNotAvailableError, ODEClassifier
from odeplug.estimators._base import DEFAULT_DEVICE
from odeplug.estimators._sklearn_compat import InvalidParameterError
from tests.conftest import ENGINES

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X, Y = make_moons(40, noise=0.15, random_state=0)
ESTIMATOR_NAMES = ("ODEClassifier", "CNFDensity", "LatentODERegressor")


def tiny(**kwargs):
    params = dict(hidden_layer_sizes=(4,), latent_dim=4, max_iter=2, batch_size=20,
                  learning_rate_init=0.02, random_state=0)
    params.update(kwargs)
    return ODEClassifier(**params)


def engine_or_skip(name: str):
    info = odeplug.available_backends().get(name)
    if info is None or not info.available:
        pytest.skip(f"backend {name!r} not installed")
    return odeplug.get_backend(name)


def gpu_or_skip(name: str):
    engine = engine_or_skip(name)
    missing = engine.gpu_missing()
    if missing is not None:
        pytest.skip(f"no GPU for the {name} engine: {missing}")
    return engine


# ------------------------------------------------------------------ the parameter


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_estimator_has_the_device_parameter(name):
    cls = getattr(odeplug, name, None)
    if cls is None:
        pytest.skip(f"{name} is not in this odeplug yet")
    parameter = inspect.signature(cls).parameters["device"]
    assert parameter.default == DEFAULT_DEVICE == "cpu"
    estimator = cls(device="auto")
    assert estimator.get_params()["device"] == "auto"
    assert clone(estimator).device == "auto"
    assert "device='auto'" in repr(estimator)
    assert "device" in cls._parameter_constraints


def test_every_estimator_declares_and_documents_device_after_backend():
    for name in ESTIMATOR_NAMES:
        cls = getattr(odeplug, name, None)
        if cls is None:
            continue
        # After the architecture's parameters (the main size first, keyword-only after
        # it: docs/architecture.md, "One vocabulary"), the engine then its device.
        names = list(inspect.signature(cls).parameters)
        assert names[names.index("backend") + 1] == "device", name
        doc = cls.__doc__
        assert doc.count("    device : {") == 1, name
        assert doc.index("backend :") < doc.index("    device : {"), name


def test_an_unknown_device_is_refused_before_anything_changes():
    clf = tiny(device="gpu")
    with pytest.raises(InvalidParameterError, match="'device' parameter"):
        clf.fit(X, Y)
    assert not hasattr(clf, "params_")


# ------------------------------------------------------- where there is no GPU


def _wording(error: DeviceNotAvailableError) -> str:
    """The message without the engine's name and what it misses: what every engine
    words the same."""
    return str(error).replace(error.missing, "<missing>").replace(error.engine, "<engine>")


def test_cuda_is_refused_the_same_way_on_every_engine_without_a_gpu():
    wordings = {}
    for name in ENGINES:
        info = odeplug.available_backends()[name]
        if not info.available or odeplug.get_backend(name).gpu_missing() is None:
            continue
        clf = tiny(backend=name, device="cuda")
        with pytest.raises(DeviceNotAvailableError) as caught:
            clf.fit(X, Y)
        assert not hasattr(clf, "params_"), "a refused fit changes nothing"
        error = caught.value
        assert (error.engine, error.device) == (name, "cuda")
        assert error.missing and error.missing in str(error)
        wordings[name] = _wording(error)
    assert "reference" in wordings
    assert len(set(wordings.values())) == 1, wordings
    assert wordings["reference"] == (
        "device='cuda' asks for a GPU, and the <engine> engine sees none: <missing>. Use "
        "device='cpu', or device='auto' (a GPU where the engine sees one, else the CPU)")


@pytest.mark.parametrize("name", ENGINES)
def test_what_is_missing_is_named(name):
    missing = engine_or_skip(name).gpu_missing()
    if missing is None:
        pytest.skip(f"the {name} engine sees a GPU")
    if name == "reference":
        assert "CPU only" in missing
    elif name == "torch":
        import torch

        assert ("without CUDA" in missing if torch.version.cuda is None
                else "torch.cuda.is_available()" in missing)
    else:
        assert "no GPU platform" in missing and "jax[cuda" in missing


def test_a_fitted_model_refused_cuda_keeps_its_fit_and_predicts_on_the_cpu():
    clf = tiny(backend="reference").fit(X, Y)
    before = {k: v.copy() for k, v in clf.params_.items()}
    proba = clf.predict_proba(X)
    clf.set_params(device="cuda")
    with pytest.raises(DeviceNotAvailableError):
        clf.fit(X, Y)
    with pytest.raises(DeviceNotAvailableError):
        clf.predict(X)
    assert all(np.array_equal(before[k], clf.params_[k]) for k in before)
    np.testing.assert_array_equal(clf.set_params(device="cpu").predict_proba(X), proba)


@pytest.mark.parametrize("name", ENGINES)
def test_auto_means_a_gpu_only_where_the_engine_sees_one(name):
    engine = engine_or_skip(name)
    assert engine.resolve_device("cpu") == "cpu"
    expected = "cpu" if engine.gpu_missing() is not None else "cuda"
    assert engine.resolve_device("auto") == expected
    with pytest.raises(ValueError, match="device must be one of"):
        engine.resolve_device("tpu")


# --------------------------------------------------------------- the mechanism


class _Watched:
    """A program whose every call checks that it runs inside the device scope."""

    def __init__(self, program, inside: list):
        self._program, self._inside = program, inside

    def __getattr__(self, name):
        attribute = getattr(self._program, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            assert self._inside, f"program.{name} called outside the device scope"
            self._inside.append(name)
            return attribute(*args, **kwargs)

        return call


def test_every_program_call_runs_inside_the_engine_device_scope(monkeypatch):
    engine = odeplug.get_backend("reference")
    inside: list = []
    scopes: list = []

    @contextlib.contextmanager
    def scope(device):
        scopes.append(device)
        inside.append("scope")
        try:
            yield
        finally:
            del inside[:]

    make_program = type(engine).make_program
    monkeypatch.setattr(type(engine), "device_scope", lambda self, device: scope(device))
    monkeypatch.setattr(type(engine), "make_program",
                        lambda self, spec: _Watched(make_program(self, spec), inside))
    clf = tiny(backend="reference", device="auto", early_stopping=True,
               validation_fraction=0.25, max_iter=2)
    clf.fit(X, Y)  # init, step, evaluate, get_params and the validation's predict
    clf.predict(X)
    clf.inference_stats(X[:3])
    assert set(scopes) == {"cpu"}
    assert len(scopes) == 3  # the fit, predict, inference_stats


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_a_model_fitted_in_a_device_scope_is_numpy_and_its_file_holds_no_device(name):
    engine_or_skip(name)
    # "auto" resolves to the CPU here and to the GPU where there is one: either way the
    # fit goes through the engine's device scope, and what comes out must be NumPy.
    clf = tiny(backend=name, device="auto").fit(X, Y)
    assert all(type(v) is np.ndarray for v in clf.params_.values())
    for attribute in ("classes_", "loss_curve_", "nfe_", "n_iter_", "t_"):
        assert "torch" not in type(getattr(clf, attribute)).__module__
        assert "jax" not in type(getattr(clf, attribute)).__module__
    buffer = io.BytesIO()
    odeplug.save(clf, buffer)
    data = buffer.getvalue()
    header = json.loads(_metadata(data)["odeplug"])
    assert "device" not in header["model"]["params"]
    assert "hidden_layer_sizes" in header["model"]["params"]
    loaded = odeplug.load(io.BytesIO(data))
    assert loaded.device == "cpu"
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X), rtol=0,
                               atol=1e-6)


def _metadata(data: bytes) -> dict:
    """The safetensors header's metadata (an 8-byte length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])["__metadata__"]


def test_torch_helpers_place_tensors_on_the_scope_device():
    engine_or_skip("torch")
    import torch
    from odeplug_backends.torch.programs import current_device, placed_on, tensor, view

    array = np.arange(6.0).reshape(2, 3)
    assert view(array, np.float64).data_ptr() == array.__array_interface__["data"][0]
    with placed_on("meta"):  # a device without memory: where a GPU would be
        assert current_device().type == "meta"
        assert tensor(array, np.float32).device.type == "meta"
        assert view(array, np.float64).device.type == "meta"
        assert torch.zeros(2).device.type == "meta"  # factory functions follow
    assert current_device().type == "cpu"
    assert tensor(array, np.float32).device.type == "cpu"
    assert torch.zeros(2).device.type == "cpu"


def test_jax_scope_puts_programs_on_the_platform_device():
    engine = engine_or_skip("jax")
    import jax
    from odeplug_backends.jax.programs import step_devices

    assert step_devices() == ()
    with engine.device_scope("cpu"):
        assert jax.numpy.zeros(2).devices() == {jax.devices("cpu")[0]}
        assert step_devices() == tuple(jax.devices("cpu"))
        with odeplug.config_context(data_parallel=False), engine.device_scope("cpu"):
            assert step_devices() == tuple(jax.devices("cpu"))[:1]
    assert step_devices() == ()


def test_data_parallel_is_a_checked_setting():
    assert odeplug.get_config()["data_parallel"] is True
    with pytest.raises(TypeError, match="data_parallel"):
        odeplug.set_config(data_parallel="yes")
    with odeplug.config_context(data_parallel=False):
        assert odeplug.get_config()["data_parallel"] is False
    assert odeplug.get_config()["data_parallel"] is True


# ------------------------------------------------------- data parallel on JAX

_SHARDED_FIT = textwrap.dedent("""
    import json, warnings
    import jax, numpy as np
    import odeplug
    from sklearn.datasets import make_moons
    from odeplug_backends.jax.programs import placed_on, shard_batch

    assert len(jax.devices("cpu")) == 2, jax.devices()
    X, y = make_moons(32, noise=0.15, random_state=0)
    warnings.simplefilter("ignore")
    fits = {}
    for parallel in (False, True):
        with odeplug.config_context(data_parallel=parallel):
            clf = odeplug.ODEClassifier(
                backend="jax", hidden_layer_sizes=(4,), latent_dim=4, max_iter=3, batch_size=8,
                learning_rate_init=0.02, random_state=0).fit(X, y)
        state = clf._train_state[1]["params"]
        fits[parallel] = dict(
            loss=clf.loss_curve_, nfe=clf.curves_["nfe_forward"],
            params={k: v.tolist() for k, v in clf.params_.items()},
            devices=sorted({len(v.sharding.device_set) for v in state.values()}))
    with placed_on("cpu"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        even = shard_batch((np.ones((8, 2)), np.zeros(8), {"a": np.ones(3)}))
        odd = shard_batch((np.ones((7, 2)), np.zeros(7)))
        shard_batch((np.ones((7, 2)), np.zeros(7)))  # warned once
    print(json.dumps(dict(
        fits=fits,
        even=[list(a.sharding.spec) if hasattr(a, "sharding") else None
              for a in (even[0], even[1], even[2]["a"])],
        odd=[type(a).__name__ for a in odd],
        warnings=[str(w.message) for w in caught])))
""")


def test_sharded_training_over_two_cpu_devices_matches_one_device():
    engine_or_skip("jax")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=2").strip()
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", _SHARDED_FIT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    one, two = out["fits"]["false"], out["fits"]["true"]
    assert one["devices"] == [1] and two["devices"] == [2], "the batch was not sharded"
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    assert two["nfe"] == one["nfe"]  # the same adaptive steps
    for name in one["params"]:
        np.testing.assert_allclose(two["params"][name], one["params"][name], rtol=1e-4,
                                   atol=1e-6, err_msg=name)
    assert out["even"] == [["batch"], ["batch"], []]  # the batch split, the rest whole
    assert out["odd"] == ["ndarray", "ndarray"]  # 7 rows: one device
    assert out["warnings"] == [
        "data parallel training: a batch of 7 rows does not divide over 2 devices; its "
        "steps run on 1 of them. Choose a batch_size that is a multiple of 2 to use them "
        "all."]


# ------------------------------------------------------------- on a real GPU


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_a_fit_on_the_gpu_agrees_with_the_cpu_and_predicts_on_it(name):
    gpu_or_skip(name)
    kwargs = dict(backend=name, hidden_layer_sizes=(8,), latent_dim=8, max_iter=3,
                  batch_size=20)
    cpu = tiny(device="cpu", **kwargs).fit(X, Y)
    gpu = tiny(device="cuda", **kwargs).fit(X, Y)
    assert all(type(v) is np.ndarray for v in gpu.params_.values())
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-4)
    for k in cpu.params_:
        np.testing.assert_allclose(gpu.params_[k], cpu.params_[k], rtol=1e-3, atol=1e-5)
    on_gpu = gpu.predict_proba(X)
    # Trained on the GPU, predicted on the CPU (what a CPU-only machine does), and from
    # its file, which loads on the CPU.
    np.testing.assert_allclose(gpu.set_params(device="cpu").predict_proba(X), on_gpu,
                               atol=1e-6)
    buffer = io.BytesIO()
    odeplug.save(gpu, buffer)
    np.testing.assert_allclose(odeplug.load(io.BytesIO(buffer.getvalue())).predict_proba(X),
                               on_gpu, atol=1e-6)


def test_the_gpu_tensors_of_a_torch_fit_are_on_the_gpu():
    gpu_or_skip("torch")
    clf = tiny(backend="torch", device="cuda").fit(X, Y)
    state = clf._train_state[1]
    assert {t.device.type for t in state["params"].values()} == {"cuda"}


def test_a_jax_fit_on_the_gpu_uses_the_gpu():
    gpu_or_skip("jax")
    clf = tiny(backend="jax", device="cuda").fit(X, Y)
    state = clf._train_state[1]["params"]
    assert {d.platform for v in state.values() for d in v.devices()} == {"gpu"}

