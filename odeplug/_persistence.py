"""Model files: ``odeplug.save`` and ``odeplug.load``, one safetensors file, no pickle.

The file is a `safetensors <https://github.com/huggingface/safetensors>`_ file: an
8-byte little-endian header length, a JSON header, the bytes of the arrays. Its arrays
are the canonical parameters, under their canonical names (``embed.weight``, ...: any
safetensors reader lists them, in any language), and the fitted arrays (named
``odeplug/...``). Everything else is one entry ``"odeplug"`` of the header's
``__metadata__`` (one entry: safetensors writes several in a random order, and a file
should be the same bytes for the same model), a JSON object:

``format``
    ``"odeplug.model"``.
``format_version``
    :data:`FORMAT_VERSION`; a file of a newer version is refused, older ones are read.
``integrity``
    ``sha256:<hex>`` of the format, its version, the compact JSON of ``model`` and every
    array (name, dtype, shape, bytes); ``hmac-sha256:<hex>`` when saved with a ``key``.
``model``
    The estimator's class, odeplug's version (and those of NumPy, scikit-learn and
    safetensors, informative), ``get_params()``, the fitted attributes and the order of
    the canonical parameters.

Values are written in a typed, allow-listed encoding (:func:`_encode`): JSON's own
scalars, non-finite floats, lists, tuples, dicts with keys of any of these types, NumPy
arrays and scalars of any numeric, string, bytes or date dtype (in the safetensors
part), object arrays of encodable values (labels), ``RandomState`` instances, and the
dataclasses odeplug owns (model specs, ``TrainingHistory``, ``BacksolveAdjoint``,
``ODESolveConfig``, ``Hyper``). A value of any other type is refused when saving, so
nothing is silently dropped. Loading builds only these values and classes that this
process has already defined (subclasses of ``ODEEstimatorBase`` and ``ModelSpec``, found
by name among the defined subclasses, never imported by a name from the file): no code
of the file runs, there is no pickle to run it.

A user module field (:class:`odeplug.UserField`) is code, so a file holds only its
description (``{"$user_field": {"framework", "module", "kwargs"}}``, informative) and
its parameters (canonical arrays under ``field.<the module's own names>``); ``load``
takes the module back from its caller (``field=``) and refuses one whose parameter
names or shapes differ from the saved ones.

Why safetensors and JSON rather than ``skops.io``: skops persists an estimator's
``__dict__`` object by object, in a zip of JSON and ``.npy`` files, and asks its user
to trust every type it does not know (odeplug's specs and history would be such
types); it is a format for any estimator. odeplug's models have a contract of their own,
canonical parameters that every engine reads, so the file can be that contract, with an
allow-list that odeplug writes and tests, readable by any safetensors reader without
odeplug, and with one dependency that is itself a format (a Rust parser that checks
offsets and sizes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import os
import sys
import tempfile
import warnings
from typing import Any

import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFileError", "load", "save"]

FORMAT = "odeplug.model"
# Bump for any change that an older odeplug would read wrongly. A newer odeplug reads
# every older version (a migration, keyed by the version, would go in load).
FORMAT_VERSION = 1

_PREFIX = "odeplug/"  # arrays other than the canonical parameters
# Array dtypes safetensors holds natively (NumPy names); others go as raw bytes.
_NATIVE = {"float64", "float32", "float16", "int64", "uint64", "int32", "uint32", "int16",
           "uint16", "int8", "uint8", "bool", "complex64"}
# Kinds of NumPy dtypes a file may hold: bool, ints, floats, complex, str, bytes, dates.
_ARRAY_KINDS = set("biufcUSMm")
_JSON_SCALARS = (str, int, float, bool, type(None))


class ModelFileError(ValueError):
    """A file that :func:`odeplug.load` refuses; nothing of it was executed.

    Attributes
    ----------
    reason : str
        ``"truncated"`` (shorter than its header says), ``"malformed"`` (not a valid
        file of the format), ``"foreign"`` (not an odeplug model file, or of an
        estimator this process does not know or did not expect), ``"newer"`` (written
        in a newer format version), ``"tampered"`` (its contents do not match its
        integrity digest), ``"key"`` (saved with a key and loaded without it, or the
        other way round), ``"field"`` (a model of the user's own module, loaded without
        it or with one that does not match: see :func:`load`'s ``field``).

    Examples
    --------
    >>> import io
    >>> import odeplug
    >>> try:
    ...     odeplug.load(io.BytesIO(b"not a model file"))
    ... except odeplug.ModelFileError as error:
    ...     print(error.reason)
    foreign
    """

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------- allow-list


def _subclasses(cls: type) -> list[type]:
    out, todo = [], [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out:
                out.append(sub)
                todo.append(sub)
    return out


def _type_name(cls: type) -> str:
    """A class's name in files: its top-level package and qualified name
    (``odeplug.ODENetSpec``), stable when odeplug moves code between its modules."""
    return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _registry(classes: list[type]) -> dict[str, type | None]:
    """Classes by file name; None for a name two classes share (refused both ways)."""
    names: dict[str, type | None] = {}
    for cls in classes:
        name = _type_name(cls)
        names[name] = cls if names.get(name, cls) is cls else None
    return names


def _estimator_classes() -> dict[str, type]:
    from .estimators._base import ODEEstimatorBase

    return _registry(_subclasses(ODEEstimatorBase))


def _dataclasses() -> list[type]:
    """Dataclasses a file may hold: odeplug's own, and the specs and Hyper subclasses
    of any family this process defines."""
    from ._solver_options import BacksolveAdjoint, ODESolveConfig
    from ._specs import Hyper, ModelSpec
    from ._training import TrainingHistory
    from .layers import Layer

    classes = [TrainingHistory, BacksolveAdjoint, ODESolveConfig, Hyper,
               *_subclasses(Hyper), *_subclasses(ModelSpec), *_subclasses(Layer)]
    return [c for c in classes if dataclasses.is_dataclass(c)]


def _check_unique(cls: type, registry: dict[str, type | None], what: str) -> str:
    name = _type_name(cls)
    if registry.get(name) is not cls:
        raise TypeError(f"cannot save a {what} {cls.__module__}.{cls.__qualname__}: "
                        f"another class of this process has its file name {name!r}")
    return name


# ----------------------------------------------------------------------- encoding
# Every value is JSON's own (None, bool, int, finite float, str, list) or a one-key
# object whose key, a tag starting with "$", says what it is.


class _Writer:
    """Encodes values to JSON, collecting the arrays for the safetensors part."""

    def __init__(self):
        self.tensors: dict[str, np.ndarray] = {}
        self.allowed = _dataclasses()
        self.dataclasses = _registry(self.allowed)

    def add_tensor(self, name: str, array: np.ndarray) -> None:
        if name in self.tensors:
            raise ValueError(f"two arrays named {name!r}")
        self.tensors[name] = array

    def array(self, value: np.ndarray, path: str) -> dict:
        dtype = value.dtype
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
            raise TypeError(f"{path}: arrays of dtype {dtype} cannot be saved")
        name = _PREFIX + path
        while name in self.tensors:
            name += "'"
        data = np.require(value, requirements="C")  # ascontiguousarray makes 0-d 1-d
        if _is_native(dtype):
            self.add_tensor(name, data)
        else:  # strings, bytes, dates, other byte orders: their bytes, as uint8
            self.add_tensor(name, np.frombuffer(data.tobytes(), np.uint8))
        return {"tensor": name, "dtype": dtype.str, "shape": list(value.shape)}

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):  # before int and float: np.float64 is a float
            return {"$scalar": self.array(np.asarray(value), path)}
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else {"$float": repr(float(value))}
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "O":  # labels and feature names of any Python type
                return {"$objects": {"shape": list(value.shape),
                                     "items": [self.encode(v, f"{path}[{i}]")
                                               for i, v in enumerate(value.reshape(-1))]}}
            return {"$array": self.array(value, path)}
        if type(value) is list:
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if type(value) is tuple:
            return {"$tuple": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if type(value) is dict:
            return {"$dict": [[self.encode(k, f"{path}.<key>"), self.encode(v, f"{path}.{k}")]
                              for k, v in value.items()]}
        if type(value) is np.random.RandomState:
            kind, key, pos, has_gauss, cached = value.get_state(legacy=True)
            return {"$random_state": {"kind": kind, "key": self.array(key, f"{path}.key"),
                                      "pos": int(pos), "has_gauss": int(has_gauss),
                                      "cached_gaussian": self.encode(float(cached), path)}}
        from ._user_field import UserField

        if isinstance(value, UserField):  # a description of the user's code, never the code
            return {"$user_field": {"framework": value.framework, "module": value.class_name,
                                    "kwargs": self.encode(value.kwargs, f"{path}.kwargs")}}
        cls = type(value)
        if cls in self.allowed:
            name = _check_unique(cls, self.dataclasses, "dataclass")
            return {"$dataclass": {"name": name, "fields": {
                f.name: self.encode(getattr(value, f.name), f"{path}.{f.name}")
                for f in dataclasses.fields(value)}}}
        raise TypeError(
            f"{path}: values of type {cls.__module__}.{cls.__qualname__} are not in "
            "odeplug's model files (they hold None, bool, int, float, str, lists, tuples, "
            "dicts, NumPy arrays and scalars, RandomState, and odeplug's dataclasses)")


def _is_native(dtype: np.dtype) -> bool:
    return (dtype.name in _NATIVE and dtype.byteorder in "=<|"
            and (dtype.byteorder != "=" or sys.byteorder == "little"))


def _fail(message: str) -> None:
    raise ValueError(message)


def _of(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _fail(f"{what} must be a {kind.__name__}, got {value!r:.80}")
    return value


def _keys(node: Any, keys: set[str], what: str) -> dict:
    _of(node, dict, what)
    if set(node) != keys:
        _fail(f"{what} has keys {sorted(node)}, expected {sorted(keys)}")
    return node


def _shape(node: Any) -> tuple[int, ...]:
    shape = tuple(_of(n, int, "a shape entry") for n in _of(node, list, "a shape"))
    if any(n < 0 for n in shape):
        _fail(f"negative shape {shape}")
    return shape


class _Reader:
    """Decodes what :class:`_Writer` wrote; a malformation is a ``ValueError``."""

    def __init__(self, tensors: dict[str, np.ndarray], field: Any = None):
        self.tensors = tensors
        self.used: set[str] = set()
        self.field = field  # the user's module given back to load (a UserField)
        self.field_used = False
        self.dataclasses = _registry(_dataclasses())

    def tensor(self, name: Any) -> np.ndarray:
        if not isinstance(name, str) or name not in self.tensors:
            _fail(f"it refers to an array {name!r:.80} that it does not have")
        if name in self.used:
            _fail(f"it refers twice to the array {name!r}")
        self.used.add(name)
        return self.tensors[name]

    def array(self, node: Any) -> np.ndarray:
        _keys(node, {"tensor", "dtype", "shape"}, "an array")
        dtype = np.dtype(_of(node["dtype"], str, "a dtype"))
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None or dtype.subdtype:
            _fail(f"arrays of dtype {dtype} are not in the format")
        shape, name = _shape(node["shape"]), node["tensor"]
        stored = self.tensor(name)
        if _is_native(dtype):
            if stored.dtype != dtype or stored.shape != shape:
                _fail(f"array {name!r} is {stored.dtype}{stored.shape}, described as "
                      f"{dtype}{shape}")
            return np.array(stored)  # a writable copy of the file's buffer
        if stored.dtype != np.uint8 or stored.ndim != 1:
            _fail(f"array {name!r} of {dtype} must be stored as bytes")
        if stored.size != math.prod(shape) * dtype.itemsize:
            _fail(f"array {name!r}: {stored.size} bytes for {shape} of {dtype}")
        if dtype.itemsize == 0:
            return np.zeros(shape, dtype)
        return np.frombuffer(stored.tobytes(), dtype).reshape(shape).copy()

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, str, int, float)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict) or len(node) != 1:
            _fail(f"unexpected value {node!r:.80}")
        ((tag, body),) = node.items()
        if tag == "$float":
            if body not in ("inf", "-inf", "nan"):
                _fail(f"unexpected float {body!r:.80}")
            return float(body)
        if tag == "$tuple":
            return tuple(self.decode(v) for v in _of(body, list, "a tuple"))
        if tag == "$dict":
            out: dict = {}
            for pair in _of(body, list, "a dict"):
                if not isinstance(pair, list) or len(pair) != 2:
                    _fail("a dict entry must be a [key, value] pair")
                key = self.decode(pair[0])
                try:
                    if key in out:
                        _fail(f"repeated dict key {key!r:.80}")
                except TypeError:
                    _fail(f"unhashable dict key {key!r:.80}")
                out[key] = self.decode(pair[1])
            return out
        if tag == "$array":
            return self.array(body)
        if tag == "$scalar":
            array = self.array(body)
            if array.shape != ():
                _fail("a NumPy scalar must be a 0-d array")
            return array[()]
        if tag == "$objects":
            _keys(body, {"shape", "items"}, "an object array")
            shape, items = _shape(body["shape"]), _of(body["items"], list, "items")
            if len(items) != math.prod(shape):
                _fail(f"{len(items)} items for an object array of shape {shape}")
            out = np.empty(len(items), dtype=object)
            for i, item in enumerate(items):
                out[i] = self.decode(item)
            return out.reshape(shape)
        if tag == "$random_state":
            _keys(body, {"kind", "key", "pos", "has_gauss", "cached_gaussian"}, "a RandomState")
            state = np.random.RandomState()
            state.set_state((_of(body["kind"], str, "kind"), self.array(body["key"]),
                             _of(body["pos"], int, "pos"), _of(body["has_gauss"], int, "gauss"),
                             float(_of(self.decode(body["cached_gaussian"]), float, "gauss"))))
            return state
        if tag == "$dataclass":
            return self.dataclass(body)
        if tag == "$user_field":
            return self.user_field(body)
        _fail(f"unknown tag {tag!r:.80}")

    def user_field(self, body: Any) -> Any:
        """The module the caller gave back for the file's user field (the file holds its
        description only: no code travels in a model file)."""
        from ._user_field import a_module_of

        _keys(body, {"framework", "module", "kwargs"}, "a user field")
        framework = _of(body["framework"], str, "a framework")
        name = _of(body["module"], str, "a module name")
        kwargs = _of(self.decode(body["kwargs"]), dict, "keyword arguments")
        described = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        if self.field is None:
            raise ModelFileError(
                f"the model's field is the user's {framework} module {described:.200}: "
                "give it back, odeplug.load(file, field=odeplug.UserField(cls, **kwargs))",
                reason="field")
        if self.field.framework != framework:
            raise ModelFileError(
                f"the model's field is {a_module_of(framework)} ({described:.200}); "
                f"field={self.field!r} is {a_module_of(self.field.framework)}",
                reason="field")
        if self.field.class_name != name or self.field.kwargs != kwargs:
            warnings.warn(f"odeplug.load: the model was saved with field {described:.200}, "
                          f"and is given back {self.field!r}", UserWarning, stacklevel=4)
        self.field_used = True
        return self.field

    def dataclass(self, body: Any) -> Any:
        _keys(body, {"name", "fields"}, "a dataclass")
        name = _of(body["name"], str, "a dataclass name")
        cls = self.dataclasses.get(name)
        if cls is None:
            _fail(f"it holds a {name!r:.80}, which is not a dataclass of odeplug's model files "
                  "(or its model family is not defined in this process, or two are)")
        values = {k: self.decode(v) for k, v in _of(body["fields"], dict, "fields").items()}
        known = {f.name: f for f in dataclasses.fields(cls)}
        # Fields a class has retired (its RETIRED_FIELDS) are read from older files and
        # dropped; renamed ones (its RENAMED_FIELDS: old name -> the new names it became)
        # are read under their new names, where the file has none of them.
        for retired in set(values) & getattr(cls, "RETIRED_FIELDS", frozenset()):
            del values[retired]
        for old, new in getattr(cls, "RENAMED_FIELDS", {}).items():
            if old in values and not set(new) & set(values):
                value = values.pop(old)
                values.update(dict.fromkeys(new, value))
        unknown = set(values) - set(known)
        if unknown:
            _fail(f"{name} has no fields {sorted(unknown)} in this odeplug")
        # A field added since the file was written takes its default (the constructor
        # refuses a missing one without); fields outside __init__ are set afterwards.
        try:
            obj = cls(**{k: v for k, v in values.items() if known[k].init})
        except Exception as error:
            if self.field is not None and any(v is self.field for v in values.values()):
                raise ModelFileError(f"field={self.field!r} does not fit the saved model: "
                                     f"{error}", reason="field") from error
            raise
        for k, v in values.items():
            if not known[k].init:
                object.__setattr__(obj, k, v)
        return obj


# ------------------------------------------------------------------------ the file


def _compact(model: Any) -> bytes:
    """The JSON whose bytes the digest covers (Python's json writes back what it read
    in these settings, so reading and writing again gives the same bytes)."""
    return json.dumps(model, separators=(",", ":"), allow_nan=False).encode()


def _digest(version: int, model: bytes, tensors: dict[str, np.ndarray],
            key: bytes | None) -> str:
    """``sha256:<hex>``, or ``hmac-sha256:<hex>`` with a key, of everything the file
    means: the format and its version, the model's JSON, and each array's name, dtype,
    shape and bytes (in name order, so independent of the layout of the file)."""
    h = hmac.new(key, digestmod=hashlib.sha256) if key is not None else hashlib.sha256()

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    put(FORMAT.encode())
    put(str(version).encode())
    put(model)
    for name in sorted(tensors):
        array = np.require(tensors[name], requirements="C")
        put(name.encode())
        put(array.dtype.str.encode())
        put(json.dumps(list(array.shape)).encode())
        put(array.tobytes())
    return ("hmac-sha256:" if key is not None else "sha256:") + h.hexdigest()


def _key_bytes(key: bytes | str | None) -> bytes | None:
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"key must be bytes or str, got {type(key).__name__}")


# Attributes that are neither parameters nor fitted state: engine objects (not
# picklable either), the settings carried to a joblib worker (odeplug._parallel), and
# scikit-learn's version stamp (the file records versions of its own).
_NOT_SAVED = {"_train_state", "_carried_config", "_sklearn_version"}
# Parameters of the machine, not of the model: a model fitted on a GPU loads with the
# default device (the CPU) wherever it is loaded; set_params(device=...) moves it.
_PARAMS_NOT_SAVED = {"device"}


def save(estimator, file, *, key: bytes | str | None = None) -> None:
    """Save an odeplug estimator, fitted or not, to one file without pickle.

    The file is a safetensors file: its arrays are the canonical parameters (under their
    canonical names, readable with any safetensors reader) and the fitted arrays; its
    header holds, in JSON, the format version, odeplug's version, the estimator's class,
    ``get_params()`` and every fitted attribute (``classes_`` of any label type,
    ``feature_names_in_``, curves, the training history, the model spec), and an integrity
    digest over all of it. Saving is deterministic: the same model gives the same bytes.

    Parameters
    ----------
    estimator : ODEEstimatorBase
        An odeplug estimator (``ODEClassifier``, ``CNFDensity``, ``LatentODERegressor``, or
        a subclass of ``odeplug.estimators._base.ODEEstimatorBase``).
    file : str, os.PathLike or binary file object
        A path is written atomically (a crash never leaves half a file there).
    key : bytes or str, optional
        Sign the file with HMAC-SHA256 under this key; :func:`load` then needs the key.
        Without one the digest (SHA-256) detects corruption and edits, but anyone can
        recompute it: use a key when files cross a trust boundary.

    Raises
    ------
    TypeError
        An attribute holds a value outside the format (the message names it): nothing is
        dropped silently.

    Notes
    -----
    What the format promises (``docs/files_and_scaleout.md``): a file of format version
    N is read by every odeplug from the one that wrote it on (``load`` reads every older
    version and refuses newer ones); loading runs no code from the file; the loaded
    estimator has the same parameters and fitted attributes and predicts exactly as the
    saved one on each engine. Engine state
    (Adam's moments), the ``device`` parameter (a loaded model computes on the CPU until
    ``set_params(device=...)``) and the configuration of the saving process are not saved:
    ``partial_fit`` and ``warm_start`` continue from the parameters with fresh moments.

    Examples
    --------
    >>> import os, tempfile, warnings
    >>> import odeplug
    >>> from sklearn.datasets import make_moons
    >>> X, y = make_moons(40, noise=0.1, random_state=0)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # not converged in 2 epochs
    ...     clf = odeplug.ODEClassifier((), latent_dim=4, max_iter=2,
    ...                                 random_state=0).fit(X, y)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.odeplug")
    >>> odeplug.save(clf, path)
    >>> bool((odeplug.load(path).predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    from . import __version__
    from .estimators._base import ODEEstimatorBase

    if not isinstance(estimator, ODEEstimatorBase):
        raise TypeError(f"odeplug.save saves odeplug estimators, not "
                        f"{type(estimator).__name__}")
    key = _key_bytes(key)
    cls = type(estimator)
    writer = _Writer()
    params = estimator.get_params(deep=False)
    state = {k: v for k, v in estimator.__getstate__().items()
             if k not in params and k not in _NOT_SAVED}
    canonical = state.pop("params_", None)
    order = None
    if canonical is not None:
        order = list(canonical)
        for name, value in canonical.items():
            array = np.asarray(value)
            if name.startswith(_PREFIX) or array.dtype.kind != "f" or not _is_native(array.dtype):
                raise TypeError(f"params_[{name!r}]: canonical parameters are float arrays "
                                f"with names outside {_PREFIX!r}")
            writer.add_tensor(name, np.require(array, requirements="C"))
    model = {
        "estimator": _check_unique(cls, _estimator_classes(), "estimator"),
        "odeplug_version": __version__,
        "versions": _versions(),
        "params": {k: writer.encode(v, f"params.{k}") for k, v in params.items()
                   if k not in _PARAMS_NOT_SAVED},
        "fitted": {k: writer.encode(v, f"fitted.{k}") for k, v in state.items()},
        "parameters": order,
    }
    entry = {"format": FORMAT, "format_version": FORMAT_VERSION,
             "integrity": _digest(FORMAT_VERSION, _compact(model), writer.tensors, key),
             "model": model}
    metadata = {"odeplug": json.dumps(entry, separators=(",", ":"), allow_nan=False)}
    import safetensors.numpy

    data = safetensors.numpy.save(writer.tensors, metadata=metadata)
    if hasattr(file, "write"):
        file.write(data)
        return
    path = os.fspath(file)
    folder = os.path.dirname(os.path.abspath(path))
    # A temporary file beside the target, renamed over it: readers see the old file or
    # the new one, never a part (open(..., "xb") keeps the umask's permissions).
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=".odeplug-", suffix=".tmp")
    os.close(handle)
    os.remove(tmp)
    try:
        with open(tmp, "xb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("numpy", "scikit-learn", "safetensors"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


# safetensors refuses headers above 100 MB; a larger "length" means another format.
_MAX_HEADER = 100_000_000


def _read(file) -> bytes:
    if hasattr(file, "read"):
        data = file.read()
    else:
        with open(os.fspath(file), "rb") as f:
            data = f.read()
    if not isinstance(data, bytes):
        raise TypeError("odeplug.load reads a path or a binary file object")
    return data


def _header(data: bytes, where: str) -> dict[str, Any]:
    """odeplug's entry of the safetensors header; refuses foreign and cut headers."""
    if len(data) < 8:
        raise ModelFileError(f"{where} has {len(data)} bytes: it is truncated, or not a "
                             "model file", reason="truncated")
    size = int.from_bytes(data[:8], "little")
    if size > _MAX_HEADER or data[8:9] not in (b"{", b""):
        raise ModelFileError(f"{where} is not an odeplug model file (no safetensors header)",
                             reason="foreign")
    if 8 + size > len(data):
        raise ModelFileError(f"{where} is truncated: its header says {size} bytes, it has "
                             f"{len(data) - 8}", reason="truncated")
    try:
        header = json.loads(data[8:8 + size])
        _of(header, dict, "the header")
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{where} has a malformed header: {error}",
                             reason="malformed") from error
    metadata = header.get("__metadata__")
    entry = metadata.get("odeplug") if isinstance(metadata, dict) else None
    if isinstance(entry, str):
        try:
            entry = json.loads(entry)
        except (ValueError, RecursionError) as error:
            raise ModelFileError(f"{where} has a malformed odeplug entry: {error}",
                                 reason="malformed") from error
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ModelFileError(
            f"{where} is not an odeplug model file: a safetensors file without odeplug's "
            f"metadata (format {FORMAT!r})", reason="foreign")
    ends = [_data_end(name, info, where) for name, info in header.items()
            if name != "__metadata__"]
    if any(8 + size + end > len(data) for end in ends):
        raise ModelFileError(f"{where} is truncated: its arrays end past its last byte",
                             reason="truncated")
    return entry


def _data_end(name: str, info: Any, where: str) -> int:
    """Where an array of the header ends; a description that is not ``[begin, end]``
    is a malformed file (safetensors would say so too, but truncation is told first)."""
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                       for n in offsets) or offsets[0] > offsets[1]):
        raise ModelFileError(f"{where} has a malformed header: the array {name!r:.80} has "
                             f"data_offsets {offsets!r:.80}, not [begin, end]",
                             reason="malformed")
    return offsets[1]


def load(file, backend: str | None = None, *, expected: type | tuple[type, ...] | None = None,
         key: bytes | str | None = None, field: Any = None):
    """Load an estimator saved by :func:`save`, on any engine, without running code.

    Parameters
    ----------
    file : str, os.PathLike or binary file object
        A file written by :func:`odeplug.save`.
    backend : str, optional
        Engine of the loaded estimator: sets its ``backend`` parameter (checked to be
        installed now). None keeps the saved parameter. Models predict on any engine:
        ``backend_`` stays the engine that fitted it.
    expected : class or tuple of classes, optional
        Refuse a file of an estimator of another class.
    key : bytes or str, optional
        The key the file was signed with (:func:`save`).
    field : odeplug.UserField, optional
        The user's module of a model fitted with ``field=odeplug.UserField(...)``: the
        file holds its parameters (as arrays, under the module's own names) and a
        description of it, never its code, so the caller gives the module back. Its
        parameter names and shapes must be the saved ones.

    Returns
    -------
    estimator : ODEEstimatorBase
        With the saved parameters and fitted attributes; it predicts exactly as the saved
        one did on the same engine, and ``partial_fit``/``warm_start`` continue from it
        (Adam's moments restart).

    Raises
    ------
    ModelFileError
        Before anything is built, with ``reason``: a file that is ``"truncated"`` or
        ``"malformed"``, ``"foreign"`` (another format, or an estimator class this process
        does not define, or not ``expected``), ``"newer"`` (a newer format version),
        ``"tampered"`` (its digest does not match: corrupted or edited), ``"key"``
        (signed and no key given, or a key given for an unsigned file), ``"field"``
        (a model of a user module loaded without ``field=``, or with one of another
        framework or whose parameter names or shapes differ from the saved ones, or
        ``field=`` for a model without a user module). A file whose
        fitted attributes contradict each other or its model spec (``n_features_in_``,
        the spec's widths, ``classes_``, per-feature arrays such as ``mean_``) is
        ``"malformed"``, even with a valid digest.
    TypeError
        ``expected`` is not a class or a tuple of classes (a class's name is not one).
    ValueError, BackendNotAvailableError
        ``backend`` is unknown or not installed.

    Notes
    -----
    Classes are looked up by name among the estimator classes (subclasses of
    ``ODEEstimatorBase``) and model specs this process has defined; the file names no
    module to import. Import the module of a third-party estimator before loading its
    files.

    Examples
    --------
    Fitted on one engine, loaded for another:

    >>> import io
    >>> from sklearn.datasets import make_moons
    >>> import odeplug
    >>> X, y = make_moons(60, noise=0.1, random_state=0)
    >>> clf = odeplug.ODEClassifier((), latent_dim=4, max_iter=5,
    ...                             random_state=0).fit(X, y)
    >>> file = io.BytesIO()
    >>> odeplug.save(clf, file)
    >>> loaded = odeplug.load(io.BytesIO(file.getvalue()), expected=odeplug.ODEClassifier)
    >>> bool((loaded.predict(X) == clf.predict(X)).all()), loaded.backend_
    (True, 'reference')
    """
    where = f"{file!r:.200}" if not hasattr(file, "read") else "the file"
    _check_expected(expected)
    key = _key_bytes(key)
    data = _read(file)
    entry = _header(data, where)
    version = entry.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{where} has no valid format version ({version!r:.40})",
                             reason="malformed")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{where} was written in format version {version}, by a newer odeplug; this "
            f"odeplug reads versions up to {FORMAT_VERSION}: upgrade odeplug to load it",
            reason="newer")
    import safetensors.numpy

    try:
        tensors = safetensors.numpy.load(data)
    except Exception as error:  # safetensors' own error type, or KeyError for a dtype
        raise ModelFileError(f"{where} is a malformed safetensors file: {error}",
                             reason="malformed") from error
    model, integrity = entry.get("model"), entry.get("integrity")
    if set(entry) != {"format", "format_version", "integrity", "model"} \
            or not isinstance(integrity, str):
        raise ModelFileError(f"{where} has an odeplug entry of keys {sorted(entry)}",
                             reason="malformed")
    try:
        compact = _compact(model)
    except ValueError as error:  # a non-finite float where the format has none
        raise ModelFileError(f"{where} has a malformed model: {error}",
                             reason="malformed") from error
    signed = integrity.startswith("hmac-sha256:")
    if signed and key is None:
        raise ModelFileError(f"{where} is signed with a key: pass key= to load it",
                             reason="key")
    if not signed and key is not None:
        raise ModelFileError(f"{where} is not signed with a key, and a key was given",
                             reason="key")
    if not hmac.compare_digest(_digest(version, compact, tensors, key), integrity):
        raise ModelFileError(
            f"{where} does not match its integrity digest: it was modified or corrupted"
            + (", or signed with another key" if signed else ""), reason="tampered")
    try:
        estimator = _build(model, tensors, expected=expected, field=field)
    except ModelFileError:
        raise
    except Exception as error:  # of the file's contents: a bad value, a dataclass's check
        raise ModelFileError(f"{where} holds a model this odeplug cannot build: {error}",
                             reason="malformed") from error
    if backend is not None:
        from .backend import get_backend

        get_backend(backend)  # unknown or not installed: said now, not at predict
        estimator.set_params(backend=backend)
    return estimator


def _check_expected(expected) -> None:
    """``expected`` is the caller's, not the file's: a wrong one is a TypeError, said
    before the file is read."""
    classes = expected if isinstance(expected, tuple) else (expected,)
    if expected is not None and not all(isinstance(c, type) for c in classes):
        raise TypeError(f"expected must be an estimator class or a tuple of classes "
                        f"(odeplug.CNFDensity, not its name), got {expected!r:.80}")


def _build(model: Any, tensors: dict[str, np.ndarray], *, expected, field=None):
    from ._specs import ModelSpec
    from .estimators._sklearn_compat import validate_params

    _keys(model, {"estimator", "odeplug_version", "versions", "params", "fitted",
                  "parameters"}, "the model")
    name = _of(model["estimator"], str, "the estimator")
    classes = _estimator_classes()
    cls = classes.get(name)
    if cls is None:
        raise ModelFileError(
            f"the file holds a {name:.80}, which is not an odeplug estimator defined once in "
            f"this process (these are: {', '.join(sorted(k for k, v in classes.items() if v))});"
            " import the module of a third-party estimator before loading its files",
            reason="foreign")
    if expected is not None and not issubclass(cls, expected):
        raise ModelFileError(f"the file holds a {name}, not the expected {expected}",
                             reason="foreign")
    if field is not None:
        from ._user_field import UserField

        if not isinstance(field, UserField):
            raise TypeError(f"field= takes an odeplug.UserField, got {field!r:.100}")
    reader = _Reader(tensors, field)
    params = {k: reader.decode(v) for k, v in _of(model["params"], dict, "params").items()}
    fitted = {}
    for attr, node in _of(model["fitted"], dict, "fitted").items():
        # Data attributes only: none that shadows a method or a parameter.
        if (attr.startswith("__") or not attr.isidentifier() or hasattr(cls, attr)
                or attr in params or attr in _NOT_SAVED or attr == "params_"):
            _fail(f"it sets the attribute {attr!r:.80}, which is no fitted attribute")
        fitted[attr] = reader.decode(node)
    # Files written before a parameter was renamed: the estimator class says what its
    # old names mean now (ODEEstimatorBase._upgrade_saved).
    upgrade = getattr(cls, "_upgrade_saved", None)
    if upgrade is not None:
        params, fitted = upgrade(params, fitted)
    estimator = cls(**params)  # an unknown parameter is a TypeError
    validate_params(estimator)
    order = model["parameters"]
    if order is not None:
        canonical = {}
        for pname in _of(order, list, "parameters"):
            if pname in canonical:
                _fail(f"it lists the parameter {pname!r} twice")
            array = np.array(reader.tensor(pname))
            if array.dtype.kind != "f":
                _fail(f"parameter {pname!r} is of dtype {array.dtype}")
            canonical[pname] = array
        spec = fitted.get("_spec")
        if not isinstance(spec, ModelSpec):
            _fail("its parameters come without a model spec")
        if reader.field_used:
            _check_user_parameters(spec, canonical, field)
        spec.check_params(canonical)  # the names and shapes of the spec's table
        fitted["params_"] = canonical
    if field is not None and not reader.field_used:
        raise ModelFileError(f"field={field!r} was given, but the saved model's field is "
                             "not a user module", reason="field")
    extra = set(tensors) - reader.used
    if extra:
        _fail(f"it holds arrays that nothing refers to: {sorted(extra)[:5]}")
    _check_consistent(fitted)
    estimator.__dict__.update(fitted)
    return estimator


def _check_user_parameters(spec: Any, canonical: dict[str, np.ndarray], field: Any) -> None:
    """Refuse a user module whose parameters are not the saved ones, naming each
    difference."""
    expected = {k: v for k, v in spec.param_shapes().items() if k.startswith("field.")}
    saved = {k: tuple(v.shape) for k, v in canonical.items() if k.startswith("field.")}
    missing, extra = sorted(set(saved) - set(expected)), sorted(set(expected) - set(saved))
    shapes = [f"{k}: saved {saved[k]}, module {expected[k]}"
              for k in saved if k in expected and saved[k] != expected[k]]
    if missing or extra or shapes:
        parts = ([f"saved parameters the module lacks: {missing}"] if missing else []) \
            + ([f"module parameters not saved: {extra}"] if extra else []) \
            + ([f"shapes differ: {'; '.join(shapes)}"] if shapes else [])
        raise ModelFileError(f"field={field!r} does not match the saved model's field: "
                             + "; ".join(parts), reason="field")


# How the fitted attributes of odeplug's estimators depend on each other: a file whose
# digest was recomputed after an edit that breaks one of these would load, then fail
# later inside the engine with an error about shapes; it is refused at load instead.
# Counts: each must be an int >= 1 where present.
_COUNTS = ("n_features_in_", "n_channels_", "n_targets_")
# Spec fields that are the width of a fitted count (the spec's parameter table is
# checked against the arrays already).
_SPEC_COUNTS = {"n_features": "n_features_in_", "n_channels": "n_channels_"}
# Arrays of one entry per feature (or channel): shape (count,). scikit-learn's for
# every estimator, the others by the family of the model spec (another family may
# give these names other meanings).
_PER_COUNT = {"feature_names_in_": "n_features_in_"}
_FAMILY_PER_COUNT = {"density": {"mean_": "n_features_in_", "scale_": "n_features_in_"},
                     "latent": {"noise_std_": "n_channels_"}}
# Arrays that divide the data: finite and positive (fit makes them so).
_FAMILY_POSITIVE = {"density": ("scale_",)}


def _check_consistent(fitted: dict[str, Any]) -> None:
    for name in _COUNTS:
        if name in fitted:
            count = fitted[name]
            if not isinstance(count, (int, np.integer)) or isinstance(count, bool) \
                    or count < 1:
                _fail(f"its {name} is {count!r:.80}, not a count")
    spec = fitted.get("_spec")
    if spec is not None and "params_" not in fitted:
        _fail("its model spec comes without parameters")
    for field, name in _SPEC_COUNTS.items():
        if hasattr(spec, field) and name in fitted and getattr(spec, field) != fitted[name]:
            _fail(f"its {name} is {fitted[name]} but its model spec has {field}="
                  f"{getattr(spec, field)!r:.40}")
    classes = fitted.get("classes_")
    if hasattr(spec, "n_outputs") and classes is not None \
            and np.shape(classes) != (spec.n_outputs,):
        _fail(f"its classes_ has shape {np.shape(classes)} but its model spec has "
              f"n_outputs={spec.n_outputs!r:.40}")
    family = getattr(spec, "family", None)
    for name, count in {**_PER_COUNT, **_FAMILY_PER_COUNT.get(family, {})}.items():
        value = fitted.get(name)
        if value is not None and count in fitted and np.shape(value) != (fitted[count],):
            _fail(f"its {name} has shape {np.shape(value)} but its {count} is "
                  f"{fitted[count]}")
    for name in _FAMILY_POSITIVE.get(family, ()):
        value = fitted.get(name)
        if value is not None:
            array = np.asarray(value)
            if array.dtype.kind != "f" or not np.all(np.isfinite(array) & (array > 0)):
                _fail(f"its {name} must hold finite positive floats")
