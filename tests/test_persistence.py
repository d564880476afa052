"""Model files: round trips of every estimator between every pair of engines, fitted
attributes of any type, continuing a fit from a file, no pickle anywhere, and every kind
of file that ``odeplug.load`` must refuse."""

from __future__ import annotations

import builtins
import copy
import io
import json
import marshal
import pickle
import pickletools
import zipfile

import joblib
import numpy as np
import pytest
import safetensors.numpy
from sklearn.datasets import make_moons
from sklearn.exceptions import NotFittedError

import odeplug
from odeplug import BacksolveAdjoint, ModelFileError, ODEClassifier
from odeplug._persistence import FORMAT_VERSION, _compact, _digest
from tests.conftest import ENGINES

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

X, Y = make_moons(40, noise=0.15, random_state=0)
LABELS = np.array(["left", "right"])[Y]  # string labels: classes_ of dtype <U5


def tiny(cls=ODEClassifier, **kwargs):
    params = dict(hidden_layer_sizes=(4,), latent_dim=4, max_iter=2, batch_size=20,
                  learning_rate_init=0.02, random_state=0)
    params.update(kwargs)
    return cls(**params)


def installed(name: str) -> bool:
    info = odeplug.available_backends().get(name)
    return info is not None and info.available


def need(name: str) -> None:
    if not installed(name):
        pytest.skip(f"backend {name!r} not installed")


def to_bytes(estimator, **kwargs) -> bytes:
    buffer = io.BytesIO()
    odeplug.save(estimator, buffer, **kwargs)
    return buffer.getvalue()


def from_bytes(data: bytes, **kwargs):
    return odeplug.load(io.BytesIO(data), **kwargs)


def assert_same(a, b, path="value"):
    """Deep equality with types: arrays by dtype, shape and bytes; floats bit for bit."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if a.dtype.kind == "O":
            for i, (x, y) in enumerate(zip(a.reshape(-1), b.reshape(-1), strict=True)):
                assert_same(x, y, f"{path}[{i}]")
        else:
            assert a.tobytes() == b.tobytes(), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    elif isinstance(a, np.random.RandomState):
        assert_same(list(a.get_state()), list(b.get_state()), path)
    elif hasattr(a, "__dataclass_fields__"):
        for name in a.__dataclass_fields__:
            assert_same(getattr(a, name), getattr(b, name), f"{path}.{name}")
    else:
        assert a == b, path


def saved_state(estimator) -> dict:
    """What a file must restore: the pickled state, without engine objects (by name:
    the order of attributes means nothing)."""
    state = estimator.__getstate__()
    state.pop("_sklearn_version", None)
    return dict(sorted(state.items()))


# ------------------------------------------------------------ round trips


class _Fitted(dict):
    """One tiny classifier per engine, fitted on first use (JAX compiles once)."""

    def __missing__(self, name):
        need(name)
        self[name] = tiny(backend=name).fit(X, LABELS)
        return self[name]


@pytest.fixture(scope="module")
def fitted():
    return _Fitted()


@pytest.mark.parametrize("load_engine", ENGINES)
@pytest.mark.parametrize("fit_engine", ENGINES)
def test_classifier_round_trip_between_engines(fit_engine, load_engine, fitted, tmp_path):
    need(load_engine)
    original = fitted[fit_engine]
    path = tmp_path / "model.odeplug"
    odeplug.save(original, path)
    loaded = odeplug.load(path, backend=load_engine)

    assert loaded.backend == load_engine and loaded.backend_ == fit_engine
    assert_same(saved_state(loaded), saved_state(copy.deepcopy(original).set_params(
        backend=load_engine)))
    # Exactly the original's predictions on the engine it is loaded into.
    on_engine = copy.deepcopy(original).set_params(backend=load_engine)
    np.testing.assert_array_equal(loaded.predict_proba(X), on_engine.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), on_engine.predict(X))
    assert loaded.predict(X[:3]).dtype == LABELS.dtype


# The other families, as they land: fitted once on torch (float32: a spec that no
# float64 engine could have made), loaded into every engine, each of their inference
# entry points compared exactly with the original's on that engine.
SERIES_TIMES, SERIES_TARGETS = np.linspace(0.0, 3.0, 6), np.array([3.5, 4.0])


def _series():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(16, 6, 2))
    series[rng.random(series.shape) < 0.2] = np.nan
    return series, rng.normal(size=(16, 2, 2))


FAMILIES = {
    "CNFDensity": (
        lambda cls: cls(hidden_layer_sizes=(4,), max_iter=2, batch_size=32, random_state=0)
        .fit(X),
        lambda m: [m.score_samples(X), m.transform(X), m.sample(3, random_state=0)]),
    "LatentODERegressor": (
        lambda cls: cls(obs_times=SERIES_TIMES, target_times=SERIES_TARGETS, encoder="rnn",
                        latent_dim=2, encoder_hidden_sizes=(4,), hidden_layer_sizes=(4,),
                        decoder_hidden_sizes=(), solver="bosh3", batch_size=16, max_iter=2,
                        random_state=0).fit(*_series()),
        lambda m: [*m.predict(_series()[0], return_std=True), m.transform(_series()[0])]),
}


@pytest.fixture(scope="module")
def families():
    return {}


@pytest.mark.parametrize("load_engine", ENGINES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_round_trip_into_every_engine(family, load_engine, families):
    cls = getattr(odeplug, family, None)
    if cls is None:
        pytest.skip(f"{family} is not in this odeplug yet")
    need("torch")
    need(load_engine)
    fit, outputs = FAMILIES[family]
    if family not in families:
        with odeplug.config_context(backend="torch"):
            families[family] = fit(cls)
    original = families[family]
    loaded = from_bytes(to_bytes(original), backend=load_engine)
    assert type(loaded) is cls and loaded.backend_ == "torch"
    assert_same(saved_state(loaded), saved_state(copy.deepcopy(original).set_params(
        backend=load_engine)))
    on_engine = copy.deepcopy(original).set_params(backend=load_engine)
    for got, expected in zip(outputs(loaded), outputs(on_engine), strict=True):
        np.testing.assert_array_equal(got, expected)
    # And training goes on from the file, with fresh moments.
    if load_engine == "reference":
        warm = from_bytes(to_bytes(original)).set_params(warm_start=True, max_iter=1)
        assert warm.fit(*_data_of(family)).n_iter_ == original.n_iter_ + 1


def _data_of(family):
    return (X,) if family == "CNFDensity" else _series()


def test_saving_is_deterministic_and_files_read_back_to_the_same_bytes(fitted):
    data = to_bytes(fitted["reference"])
    assert to_bytes(fitted["reference"]) == data
    assert to_bytes(from_bytes(data)) == data


def test_any_safetensors_reader_sees_the_canonical_parameters(fitted, tmp_path):
    model = fitted["reference"]
    odeplug.save(model, tmp_path / "m")
    arrays = safetensors.numpy.load_file(tmp_path / "m")
    for name, value in model.params_.items():
        np.testing.assert_array_equal(arrays[name], value)
    assert set(arrays) - set(model.params_) == {"odeplug/fitted.classes_"}


def test_paths_are_written_atomically(fitted, tmp_path, monkeypatch):
    path = tmp_path / "model.odeplug"
    odeplug.save(fitted["reference"], path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        odeplug.save(tiny(max_iter=3), path)
    assert path.read_bytes() == before  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["model.odeplug"]  # no leftovers


def test_labels_of_any_type_round_trip():
    for labels in (Y.astype(bool), Y * 10 - 3, Y.astype(np.float32),
                   np.array(["ä", "ß"], dtype=object)[Y]):
        model = tiny(max_iter=1).fit(X, labels)
        loaded = from_bytes(to_bytes(model))
        assert_same(loaded.classes_, model.classes_)
        assert_same(loaded.predict(X), model.predict(X))


def test_feature_names_round_trip():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(X, columns=["width", "höhe"])
    model = tiny(max_iter=1).fit(frame, Y)
    loaded = from_bytes(to_bytes(model))
    assert_same(loaded.feature_names_in_, model.feature_names_in_)
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
    with pytest.raises(ValueError, match="feature names"):
        loaded.predict(pandas.DataFrame(X, columns=["a", "b"]))


def test_parameters_of_every_kind_round_trip():
    model = tiny(max_iter=1, random_state=np.random.RandomState(7), hidden_layer_sizes=[4],
                 latent_dim=4,
                 adjoint=BacksolveAdjoint(rtol=1e-5, seminorm=True), early_stopping=True,
                 validation_fraction=0.25)
    model.fit(X, Y)
    loaded = from_bytes(to_bytes(model))
    assert_same(loaded.get_params(), model.get_params())
    assert_same(saved_state(loaded), saved_state(model))


def test_an_unfitted_estimator_round_trips_unfitted():
    loaded = from_bytes(to_bytes(tiny(solver="rk4", step_size=0.25)))
    assert loaded.get_params() == tiny(solver="rk4", step_size=0.25).get_params()
    with pytest.raises(NotFittedError):
        loaded.predict(X)


class Annotated(ODEClassifier):
    """A stand-in for a family to come: fitted attributes of every kind the format
    holds, besides the classifier's own."""

    def fit(self, X, y):
        super().fit(X, y)
        self.extras_ = {
            "float32": np.float32(0.1), "int8": np.int8(-3), "bool": np.bool_(True),
            "big int": 2**70, "floats": [0.1, float("inf"), float("-inf"), float("nan")],
            "nested": ([1, (2, "three")], {4: None, (5, 6): "tuple key", 7.5: True}),
            "complex": np.array([1 + 2j, -3j]), "big-endian": np.arange(3, dtype=">i4"),
            "dates": np.array(["2024-01-01", "2026-12-31"], dtype="datetime64[D]"),
            "bytes": np.array([b"ab", b"c"]), "unicode": np.array([["ü", "€uro"]]),
            "empty": np.zeros((0, 3), np.float32), "0-d": np.array(2.5),
            "objects": np.array([None, 1, "two", 3.0], dtype=object),
            "adjoint": BacksolveAdjoint(atol=1e-9), "dict of arrays": {"a": np.ones((2, 2))},
            "random": np.random.RandomState(3),
        }
        self.scale_ = np.float64(2.0)
        return self


def test_a_family_with_fitted_attributes_of_every_kind_round_trips():
    model = Annotated((), latent_dim=3, max_iter=1, random_state=0).fit(X, Y)
    loaded = from_bytes(to_bytes(model))
    assert type(loaded) is Annotated
    assert_same(saved_state(loaded), saved_state(model))
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


class Unsaveable(ODEClassifier):
    def fit(self, X, y):
        super().fit(X, y)
        self.callback_ = {"on_epoch": print}
        return self


def test_a_value_outside_the_format_is_refused_when_saving_and_named():
    model = Unsaveable((), latent_dim=3, max_iter=1, random_state=0).fit(X, Y)
    with pytest.raises(TypeError, match=r"fitted\.callback_\.on_epoch: .*builtin"):
        to_bytes(model)
    with pytest.raises(TypeError, match="odeplug estimators"):
        to_bytes(make_moons)


@pytest.mark.parametrize("engine", ["reference", "torch"])
def test_partial_fit_and_warm_start_continue_from_a_file_with_fresh_moments(engine):
    need(engine)
    original = tiny(backend=engine).fit(X, Y)
    data, rows = to_bytes(original), original.t_
    # A pickle keeps no engine state either: both continue with fresh Adam moments.
    fresh = pickle.loads(pickle.dumps(original))

    loaded = from_bytes(data).partial_fit(X, Y)
    assert loaded.n_iter_ == 3 and loaded.loss_curve_[:2] == original.loss_curve_
    expected = copy.deepcopy(fresh).partial_fit(X, Y)
    assert_same(loaded.params_, expected.params_)
    # The original kept its moments, so its continuation differs: they did restart.
    kept = original.partial_fit(X, Y)
    assert any(not np.array_equal(kept.params_[k], loaded.params_[k]) for k in kept.params_)

    warm = from_bytes(data).set_params(warm_start=True).fit(X, Y)
    assert warm.n_iter_ == 4 and warm.t_ == 2 * rows
    assert_same(warm.params_, copy.deepcopy(fresh).set_params(warm_start=True).fit(X, Y).params_)


# -------------------------------------------------------------- no pickle


def pickle_free(data: bytes) -> list[str]:
    """What in a file's bytes is not pure data: an empty list for a model file.

    A model file is an 8-byte length, a JSON header, and arrays whose dtypes are
    safetensors' numeric ones that exactly fill the rest; the header's strings name no
    importable object. Anything else (a pickle, a joblib dump) is reported."""
    problems = []
    try:
        list(pickletools.genops(data))
        problems.append("the bytes are a valid pickle")
    except Exception:
        pass
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
    except Exception:
        return [*problems, "no JSON header"]
    numeric = {"F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8",
               "BOOL"}
    ends = []
    if not isinstance(header, dict):
        return [*problems, "no JSON header"]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or "data_offsets" not in entry:
            problems.append(f"entry {name} is no array")
            continue
        if entry.get("dtype") not in numeric:
            problems.append(f"array {name} of dtype {entry['dtype']}")
        ends.append(entry["data_offsets"])
    ends.sort()
    covered = 0
    for start, end in ends:
        if start != covered:
            problems.append("bytes outside the arrays")
        covered = end
    if 8 + size + covered != len(data):
        problems.append("bytes after the arrays")
    text = json.dumps(header)
    for marker in ("builtins", "__reduce__", "__import__", "copyreg", "numpy.core",
                   "numpy._core", "cloudpickle", "marshal", "<lambda>"):
        if marker in text:
            problems.append(f"the header names {marker}")
    return problems


def test_files_hold_no_pickle_and_no_code(fitted, tmp_path):
    model = Annotated((), latent_dim=3, max_iter=1, random_state=0).fit(X, Y)
    for estimator in (model, fitted["reference"]):
        assert pickle_free(to_bytes(estimator)) == []
    # The check finds what it looks for.
    assert "the bytes are a valid pickle" in pickle_free(pickle.dumps(model))
    joblib.dump(model, tmp_path / "dump.joblib")
    assert pickle_free((tmp_path / "dump.joblib").read_bytes())
    assert pickle_free(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":\"builtins\"}") != []


def test_loading_needs_no_unpickler_no_marshal_and_no_eval(fitted, monkeypatch):
    data = to_bytes(Annotated((), latent_dim=3, max_iter=1, random_state=0).fit(X, Y))
    from_bytes(data)  # imports done before the blockade: importing runs exec

    def blocked(*args, **kwargs):
        raise AssertionError("odeplug.load used a blocked function")

    import _pickle

    for module, names in ((pickle, ("loads", "load", "Unpickler", "_loads", "_load",
                                    "_Unpickler")),
                          (_pickle, ("loads", "load", "Unpickler")),
                          (marshal, ("loads", "load")),
                          (builtins, ("eval", "exec", "compile"))):
        for name in names:
            monkeypatch.setattr(module, name, blocked)
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name.split(".")[0] in {"pickle", "_pickle", "cloudpickle", "copyreg", "marshal"}:
            raise AssertionError(f"odeplug.load imported {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded_import)
    loaded = from_bytes(data)
    monkeypatch.undo()
    assert type(loaded) is Annotated
    np.testing.assert_array_equal(loaded.predict_proba(X), from_bytes(data).predict_proba(X))


# ------------------------------------------------------------ refused files


def entry_of(data: bytes) -> dict:
    size = int.from_bytes(data[:8], "little")
    return json.loads(json.loads(data[8:8 + size])["__metadata__"]["odeplug"])


def rewrite(data: bytes, edit, *, sign=True, key=None) -> bytes:
    """The file with its odeplug entry edited by ``edit(entry)``; re-signed (a valid
    digest of the edited contents) unless ``sign`` is False: what a forger makes."""
    tensors = {k: np.array(v) for k, v in safetensors.numpy.load(data).items()}
    entry = entry_of(data)
    edit(entry, tensors)
    if sign:
        entry["integrity"] = _digest(FORMAT_VERSION, _compact(entry["model"]), tensors,
                                     key)
    return safetensors.numpy.save(tensors, metadata={"odeplug": json.dumps(entry)})


def refused(data: bytes, reason: str, match: str | None = None,
            **kwargs) -> ModelFileError:
    with pytest.raises(ModelFileError, match=match) as info:
        from_bytes(data, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


@pytest.fixture(scope="module")
def data(fitted):
    return to_bytes(fitted["reference"])


def test_refuses_a_tampered_file(data):
    size = int.from_bytes(data[:8], "little")
    flipped = bytearray(data)
    flipped[-1] ^= 1  # one bit of the last array
    refused(bytes(flipped), "tampered", "modified or corrupted")
    # Header edits that keep the file valid: a parameter, a fitted attribute.
    text = data[8:8 + size].decode()
    for old, new in (('max_iter\\":2', 'max_iter\\":3'), ('t_\\":80', 't_\\":81')):
        assert old in text, old
        refused(data[:8] + text.replace(old, new).encode() + data[8 + size:], "tampered")
    # Arrays swapped, added or removed, digest kept.
    def swap(entry, tensors):
        tensors["head.bias"] = tensors["head.bias"][::-1].copy()
    refused(rewrite(data, swap, sign=False), "tampered")
    def add(entry, tensors):
        tensors["extra"] = np.zeros(1)
    refused(rewrite(data, add, sign=False), "tampered")


def test_refuses_a_truncated_file(data):
    size = int.from_bytes(data[:8], "little")
    for cut in (0, 5, 8, 9, 8 + size // 2, 8 + size, len(data) - 1):
        refused(data[:cut], "truncated", "truncated")


def test_refuses_malformed_files(data):
    size = int.from_bytes(data[:8], "little")
    bad_json = data[:8] + b"{" + b"x" * (size - 1) + data[8 + size:]
    refused(bad_json, "malformed", "malformed header")
    cases = {
        "unknown tag": lambda e, t: e["model"]["params"].update(alpha={"$code": "print()"}),
        "two tags": lambda e, t: e["model"]["params"].update(alpha={"$tuple": [], "$x": 1}),
        "unknown dataclass": lambda e, t: e["model"]["fitted"]["_spec"]["$dataclass"].update(
            name="os.system"),
        "spec field": lambda e, t: e["model"]["fitted"]["_spec"]["$dataclass"]["fields"]
        .update(dtype="float16", extra=1),
        "shadows a method": lambda e, t: e["model"]["fitted"].update(predict=1),
        "unknown parameter": lambda e, t: e["model"]["params"].update(exec="x"),
        "invalid parameter": lambda e, t: e["model"]["params"].update(max_iter=-1),
        "wrong shapes": lambda e, t: t.update({"head.bias": np.zeros(5)}),
        "object dtype": lambda e, t: e["model"]["fitted"]["classes_"]["$array"].update(
            dtype="O"),
        "missing array": lambda e, t: t.pop("odeplug/fitted.classes_"),
        "stray array": lambda e, t: t.update(stray=np.zeros(2)),
        "bad version": lambda e, t: e.update(format_version="one"),
    }
    for what, edit in cases.items():
        error = refused(rewrite(data, edit), "malformed")
        assert "malformed" in str(error) or "cannot build" in str(error) \
            or "format version" in str(error), what


def test_refuses_a_file_of_another_format_or_estimator(tmp_path, data):
    model = tiny(max_iter=1).fit(X, Y)
    joblib.dump(model, tmp_path / "model.joblib")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", "{}")
    for other in (pickle.dumps(model), (tmp_path / "model.joblib").read_bytes(),
                  buffer.getvalue(), b'{"estimator": "odeplug.ODEClassifier"}',
                  safetensors.numpy.save({"embed.weight": np.zeros((2, 2))}),
                  safetensors.numpy.save({"w": np.zeros(1)}, metadata={"format": "pt"})):
        refused(other, "foreign", "not an odeplug model file")
    error = refused(rewrite(data, lambda e, t: e["model"].update(estimator="sklearn.svm.SVC")),
                    "foreign", "not an odeplug estimator")
    assert "odeplug.ODEClassifier" in str(error)  # it names those it knows
    refused(rewrite(data, lambda e, t: e.update(format="another.model")), "foreign")
    refused(data, "foreign", "not the expected", expected=Annotated)
    assert type(from_bytes(data, expected=ODEClassifier)) is ODEClassifier


def test_refuses_a_file_of_a_newer_format_version(data):
    newer = rewrite(data, lambda e, t: e.update(format_version=FORMAT_VERSION + 1),
                    sign=False)
    refused(newer, "newer", f"version {FORMAT_VERSION + 1}.*upgrade odeplug")


def test_signed_files_need_their_key(fitted):
    signed = to_bytes(fitted["reference"], key="secret")
    assert entry_of(signed)["integrity"].startswith("hmac-sha256:")
    assert type(from_bytes(signed, key=b"secret")) is ODEClassifier
    refused(signed, "key", "pass key=")
    refused(signed, "tampered", "another key", key="guess")
    refused(to_bytes(fitted["reference"]), "key", "not signed", key="secret")
    # A forger without the key: a plain digest of the edited contents is refused.
    forged = rewrite(signed, lambda e, t: e["model"]["params"].update(max_iter=9))
    refused(forged, "key", "not signed", key="secret")
    refused(rewrite(signed, lambda e, t: e["model"]["params"].update(max_iter=9),
                    key=b"guess"), "tampered", key="secret")


def test_backend_override_is_checked_at_load(data):
    with pytest.raises(ValueError, match="registered"):
        from_bytes(data, backend="no-such-engine")


def _with_header(data: bytes, edit) -> bytes:
    """The file with its safetensors header (the JSON) edited by ``edit(header)``."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    edit(header)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


def test_refuses_arrays_described_by_malformed_offsets(data):
    # An offsets list of the wrong length was an IndexError; every one is a clear error.
    name = "head.bias"
    for offsets in ([0], [0, 8, 16], [], "0-8", [8, 0], [-8, 0], [0.0, 8.0], [True, 8]):
        def edit(header, offsets=offsets):
            header[name]["data_offsets"] = offsets
        error = refused(_with_header(data, edit), "malformed", "data_offsets")
        assert name in str(error)


def test_refuses_fitted_attributes_that_contradict_each_other():
    # Edits that keep every array's own description valid, digest recomputed: the model
    # they describe is impossible and would fail at predict with NumPy's shape errors.
    density = odeplug.CNFDensity(hidden_layer_sizes=(4,), max_iter=1, batch_size=40,
                                 random_state=0).fit(X)
    saved = to_bytes(density)

    def features(n):
        return lambda e, t: e["model"]["fitted"].update(n_features_in_=n)

    def mean(n):
        def edit(e, t):
            t["odeplug/fitted.mean_"] = np.zeros(n)
            e["model"]["fitted"]["mean_"]["$array"]["shape"] = [n]
        return edit

    def scale_of(value):
        def edit(e, t):
            t["odeplug/fitted.scale_"] = np.full(2, value)
        return edit

    cases = [  # edit, what the error says; the first is the file
        (features(3), "n_features_in_ is 3"),  # spec and mean_ 2
        (mean(3), "mean_ has shape"),
        (scale_of(0.0), "scale_"),
        (scale_of(np.nan), "scale_"),
        (features(0), "not a count"),
        (features(2.0), "not a count"),
    ]
    for edit, match in cases:
        refused(rewrite(saved, edit), "malformed", match)
    # The untouched file loads and scores as the original.
    np.testing.assert_array_equal(from_bytes(saved).score_samples(X),
                                  density.score_samples(X))


def test_refuses_classes_that_contradict_the_spec(data):
    def three_classes(e, t):
        t["odeplug/fitted.classes_"] = np.frombuffer(np.array(["a", "b", "c"]).tobytes(),
                                                     np.uint8)  # strings go as bytes
        e["model"]["fitted"]["classes_"]["$array"].update(dtype="<U1", shape=[3])
    refused(rewrite(data, three_classes), "malformed", "n_outputs=2")


def test_expected_is_a_class_and_a_name_is_the_callers_error(data):
    # A string was reported as a malformed *file*; it is the call that is wrong.
    for wrong in ("ODEClassifier", ("ODEClassifier",), (ODEClassifier, "x"), 1):
        with pytest.raises(TypeError, match="expected must be an estimator class"):
            from_bytes(data, expected=wrong)
    with pytest.raises(TypeError, match="expected must be"):
        from_bytes(b"not even a file", expected="CNFDensity")  # said before reading
    assert type(from_bytes(data, expected=(odeplug.CNFDensity, ODEClassifier))) \
        is ODEClassifier
