"""odeplug's settings in joblib workers: carried by clones (``odeplug._parallel``), on
loky, threads, a real Dask cluster and Ray; thread limits inside a worker's fit; JAX's
compilation cache shared by worker processes."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import threading
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_moons
from sklearn.model_selection import GridSearchCV, cross_validate

import odeplug
from odeplug import ODEClassifier
from odeplug._config import chosen_config, fallback_context

pytestmark = [
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
    # Dask and Ray start their processes by fork+exec, which JAX (imported by other
    # tests of the session) warns about; exec follows at once, so no thread is copied.
    pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning"),
]

X, Y = make_moons(48, noise=0.15, random_state=0)
GRID = {"learning_rate_init": [0.01, 0.05]}


def tiny(cls=ODEClassifier, **kwargs):
    params = dict(hidden_layer_sizes=(), latent_dim=4, max_iter=2, batch_size=24,
                  random_state=0)
    params.update(kwargs)
    return cls(**params)


def need(name: str) -> None:
    info = odeplug.available_backends().get(name)
    if info is None or not info.available:
        pytest.skip(f"backend {name!r} not installed")


def threads_now() -> dict:
    """Thread counts of this process's pools, as a fit sees them."""
    from threadpoolctl import threadpool_info

    seen = {"pid": os.getpid()}
    for pool in threadpool_info():
        seen.setdefault(pool["user_api"], set()).add(pool["num_threads"])
    if "torch" in sys.modules:
        seen["torch"] = sys.modules["torch"].get_num_threads()
    return seen


class ThreadProbe(ODEClassifier):
    """Records the thread counts inside its training loop (through the loop's hook for a
    step's random draws, which it leaves empty)."""

    def _run_training(self, *args, **kwargs):
        def probe(rng, n_rows):
            self.threads_seen_ = threads_now()
            return ()

        return super()._run_training(*args, draw_noise=probe, **kwargs)


def search(n_jobs: int) -> dict:
    grid = GridSearchCV(tiny(), GRID, cv=2, n_jobs=n_jobs, scoring="neg_log_loss")
    return grid.fit(X, Y).cv_results_


def assert_same_results(a: dict, b: dict) -> None:
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# -------------------------------------------------------- the configuration


def test_chosen_config_is_what_the_user_set(monkeypatch):
    monkeypatch.delenv("ODEPLUG_BACKEND", raising=False)
    monkeypatch.delenv("ODEPLUG_JAX_CACHE_DIR", raising=False)
    assert chosen_config() == {}  # the defaults do not travel
    with odeplug.config_context(num_threads=2):
        assert chosen_config() == {"num_threads": 2}
        with odeplug.config_context(backend="torch", jax_cache_dir=""):
            assert chosen_config() == {"backend": "torch", "jax_cache_dir": "",
                                       "num_threads": 2}
        assert chosen_config() == {"num_threads": 2}
    assert chosen_config() == {}
    monkeypatch.setenv("ODEPLUG_BACKEND", "torch")
    monkeypatch.setenv("ODEPLUG_JAX_CACHE_DIR", "/cache")
    assert chosen_config() == {"backend": "torch", "jax_cache_dir": "/cache"}
    with odeplug.config_context(backend="jax"):
        assert chosen_config()["backend"] == "jax"


def test_fallback_context_yields_to_the_threads_own_settings():
    carried = {"backend": "torch", "num_threads": 3, "from_a_newer_odeplug": 1}
    with fallback_context(carried):
        assert odeplug.get_config()["backend"] == "torch"
        assert odeplug.get_config()["num_threads"] == 3
        assert chosen_config() == {}  # applied, not chosen here
        assert "from_a_newer_odeplug" not in odeplug.get_config()
    assert odeplug.get_config()["backend"] is None
    with odeplug.config_context(backend="reference"), fallback_context(carried):
        assert odeplug.get_config()["backend"] == "reference"
        assert odeplug.get_config()["num_threads"] == 3


def run_in_thread(fn):
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller)
            out["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_clones_carry_the_settings_to_other_threads_not_at_home():
    with odeplug.config_context(backend="torch"):
        carried = clone(tiny())
        again = clone(carried)
    need("torch")
    # At home, after the context: the configuration of the moment, as any estimator.
    assert clone(carried).fit(X, Y).backend_ == "reference"
    # Elsewhere: the settings of the thread that cloned it.
    assert run_in_thread(lambda: again.fit(X, Y).backend_) == "torch"
    assert run_in_thread(lambda: clone(carried).fit(X, Y).backend_) == "torch"

    def own_settings():
        with odeplug.config_context(backend="reference"):
            return clone(carried).fit(X, Y).backend_

    assert run_in_thread(own_settings) == "reference"
    # Without a carried configuration, another thread has the defaults.
    assert run_in_thread(lambda: tiny().fit(X, Y).backend_) == "reference"

    # Inference too: the engine a fitted clone predicts on, there and at home.
    def engine_of(model):
        with model._running() as engine:
            return engine.name

    fitted = clone(carried).fit(X, Y)
    assert engine_of(fitted) == "reference"
    with odeplug.config_context(backend="torch"):
        fitted = clone(carried).fit(X, Y)
    assert run_in_thread(lambda: engine_of(fitted)) == "torch"
    assert run_in_thread(lambda: fitted._engine().name) == "torch"  # for any path
    assert fitted._engine().name == "reference"
    assert run_in_thread(lambda: fitted.predict_proba(X).shape) == (len(X), 2)


def test_grid_search_on_threads_gets_the_callers_settings():
    need("torch")
    with odeplug.config_context(backend="torch"):
        expected = search(n_jobs=1)
        with joblib.parallel_backend("threading"):
            assert_same_results(search(n_jobs=2), expected)


def test_fitted_models_carry_no_settings_in_pickles_or_files():
    with odeplug.config_context(backend="reference", num_threads=2):
        carried = clone(tiny())
    assert pickle.loads(pickle.dumps(carried))._carried_config.config == (
        ("backend", "reference"), ("num_threads", 2))  # on its way to a worker
    carried.fit(X, Y)
    assert "_carried_config" in vars(carried)
    assert not hasattr(pickle.loads(pickle.dumps(carried)), "_carried_config")
    buffer = io.BytesIO()
    joblib.dump(carried, buffer)
    buffer.seek(0)
    assert not hasattr(joblib.load(buffer), "_carried_config")
    buffer = io.BytesIO()
    odeplug.save(carried, buffer)
    assert b"carried" not in buffer.getvalue() and b"num_threads" not in buffer.getvalue()
    assert not hasattr(odeplug.load(io.BytesIO(buffer.getvalue())), "_carried_config")


# ------------------------------------------------------------- processes


def test_loky_workers_get_the_callers_settings_and_limit_their_threads():
    need("torch")
    with odeplug.config_context(backend="torch"):
        expected = search(n_jobs=1)
        assert_same_results(search(n_jobs=2), expected)
    # The engine mattered: reference's float64 fits score otherwise.
    reference = search(n_jobs=1)
    assert not np.array_equal(reference["mean_test_score"], expected["mean_test_score"])

    # 2 threads: not loky's own limit in its workers (cpu_count // n_jobs).
    with odeplug.config_context(backend="torch", num_threads=2):
        fitted = cross_validate(tiny(ThreadProbe), X, Y, cv=2, n_jobs=2,
                                return_estimator=True)["estimator"]
    for model in fitted:
        seen = model.threads_seen_
        assert seen["pid"] != os.getpid()
        assert model.backend_ == "torch"
        assert seen["torch"] == 2
        assert seen["blas"] == {2}, seen


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the cluster's notes on ports and memory
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_grid_search_on_a_dask_cluster_equals_one_process(dask_client):
    need("torch")
    workers = dask_client.scheduler_info()["workers"]
    assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())
    with odeplug.config_context(backend="torch", num_threads=1):
        expected = search(n_jobs=1)
        with joblib.parallel_backend("dask"):
            assert_same_results(search(n_jobs=-1), expected)
    with odeplug.config_context(backend="torch", num_threads=2), \
            joblib.parallel_backend("dask"):
        fitted = cross_validate(tiny(ThreadProbe), X, Y, cv=2, n_jobs=-1,
                                return_estimator=True)["estimator"]
    worker_pids = set(dask_client.run(os.getpid).values())
    for model in fitted:
        assert model.backend_ == "torch"
        assert model.threads_seen_["pid"] in worker_pids
        assert model.threads_seen_["torch"] == 2 and model.threads_seen_["blas"] == {2}


def test_grid_search_on_ray_equals_one_process():
    ray = pytest.importorskip("ray", reason="ray does not install here")
    need("torch")
    from ray.util.joblib import register_ray

    register_ray()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        with odeplug.config_context(backend="torch"):
            expected = search(n_jobs=1)
            with joblib.parallel_backend("ray"):
                assert_same_results(search(n_jobs=2), expected)
                fitted = cross_validate(tiny(), X, Y, cv=2, n_jobs=2,
                                        return_estimator=True)["estimator"]
        assert [m.backend_ for m in fitted] == ["torch", "torch"]
    finally:
        ray.shutdown()


def fit_and_count_cache_hits(estimator):
    """In a worker: fit, and report JAX's cache folder and persistent-cache hits."""
    import jax
    from jax import monitoring

    hits = []
    monitoring.register_event_listener(
        lambda event, **kwargs: hits.append(event)
        if event == "/jax/compilation_cache/cache_hits" else None)
    # Small test programs compile under JAX's 1 s threshold for writing to the cache.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    estimator.fit(X, Y)
    return os.getpid(), jax.config.jax_compilation_cache_dir, len(hits)


def fresh_loky_workers():
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def test_jax_workers_share_the_persistent_compilation_cache(tmp_path):
    need("jax")
    folder = str(tmp_path / "jax-cache")
    runs = []
    for _ in range(2):
        fresh_loky_workers()  # a new process each time: no compilation in its memory
        with odeplug.config_context(backend="jax", jax_cache_dir=folder):
            (run,) = joblib.Parallel(n_jobs=2)(
                joblib.delayed(fit_and_count_cache_hits)(clone(tiny())) for _ in range(1))
        runs.append(run)
    fresh_loky_workers()
    (first_pid, first_dir, _), (second_pid, second_dir, second_hits) = runs
    assert first_pid != second_pid and os.getpid() not in (first_pid, second_pid)
    assert first_dir == second_dir == folder
    assert any(os.scandir(folder))  # the first worker wrote its compilations there
    assert second_hits > 0  # and the second read them back


def test_settings_reach_workers_as_json_values():
    # What travels is plain data (names, numbers, paths), readable by any odeplug.
    with odeplug.config_context(backend="torch", num_threads=4, jax_cache_dir="/c"):
        carried = clone(tiny())._carried_config
    assert json.loads(json.dumps(dict(carried.config))) == {
        "backend": "torch", "jax_cache_dir": "/c", "num_threads": 4}
