"""The user's own module as an estimator's vector field: :class:`UserField`.

``ODEClassifier(field=UserField(MyField, width=64))`` integrates ``dz/dt =
MyField(width=64)(t, z)``: a ``torch.nn.Module`` with torchdiffeq's ``forward(t, y)``
(torch engine) or an ``equinox.Module`` with diffrax's ``__call__(t, y, args)`` (jax
engine). odeplug's embedding and head stay around it.

Why a class and its keyword arguments, not a module instance: a scikit-learn parameter
is a *description* (``clone`` deep-copies it, grids compare and hash it); an instance
carries weights, which would leak from one fit into the next and into every clone.
A ``UserField`` is frozen and hashable like the layers of :mod:`odeplug.layers` (the
JAX engine compiles once per architecture); each fit builds a fresh module.

Parameters cross the program contract as ``dict[str, numpy.ndarray]``, as every
field's: the module's own names under ``field.`` (``field.net.0.weight``: torch's
``named_parameters``, equinox's tree paths joined by dots), so the training loop,
``params_`` and model files need nothing of their own. At each evaluation the engine
calls the module *functionally* on those arrays (``torch.func.functional_call``;
``equinox.combine`` of the arrays with the module's static part), so gradients reach
them through the engine's solver and adjoint.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import sys
import threading
from typing import Any

import numpy as np

from ._specs import Param
from .layers import Layer

__all__ = ["UserField"]

# The engine that runs each framework's modules.
ENGINE_OF = {"torch": "torch", "equinox": "jax"}


def a_module_of(framework: str) -> str:
    """``"a torch module"``, ``"an equinox module"``: what error messages call one."""
    return f"{'an' if framework == 'equinox' else 'a'} {framework} module"


def _framework(cls: Any) -> str | None:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(cls, type) and issubclass(cls, torch.nn.Module):
        return "torch"
    eqx = sys.modules.get("equinox")
    if eqx is not None and isinstance(cls, type) and issubclass(cls, eqx.Module):
        return "equinox"
    return None


def _is_module_instance(value: Any) -> bool:
    return _framework(type(value)) is not None


class UserField(Layer):
    """A vector field written as a torch or equinox module: ``UserField(cls, **kwargs)``.

    A frozen description: the module class and its keyword arguments. Every fit builds
    ``cls(**kwargs)`` afresh, with the module's own initialisation seeded from the
    estimator's ``random_state`` (never a global seed); its parameters are then trained
    as odeplug's own.

    Parameters
    ----------
    module : type
        A subclass of ``torch.nn.Module`` (runs on the torch engine only) whose
        ``forward(t, y)`` returns ``dy/dt`` for a batch ``y`` of shape ``(n,
        *state_shape)`` (torchdiffeq's convention), or a subclass of ``equinox.Module``
        (runs on the jax engine only) whose ``__call__(t, y, args)`` returns ``dy/dt``
        for *one* row ``y`` of shape ``state_shape`` (diffrax's convention; odeplug maps
        it over the rows with ``jax.vmap``; ``args`` is None). An equinox module takes
        its ``key`` as a keyword argument, equinox's convention.
    **kwargs
        Keyword arguments of the module's constructor; hashable values (ints, floats,
        strings, tuples), as every estimator parameter that grids compare.

    Notes
    -----
    The state. The module sees the ODE state that odeplug's embedding gives: for
    ``ODEClassifier`` on flat rows, width ``latent_dim + augment_dim``; with
    ``input_shape=(C, H, W)`` the convolutional stem's ``(latent_dim + augment_dim, H',
    W')``. It must return a derivative of the state's shape (checked
    when the model is built, with a clear error).

    Time. ``t`` has the state's dtype. On torch it is a 0-d tensor during training and,
    at prediction (each row solved with its own steps), a column ``(n, 1)`` of each row's
    time: write ``t`` so that it broadcasts against the batch (``t * y[:, :1] ** 0``,
    ``t.expand(n, 1)``), or ignore it. On jax, each row's call gets its own scalar ``t``.

    Parameters and penalty. The torch module's ``named_parameters`` (its buffers keep
    their constructor values, cast to the state's dtype, and are not trained); every
    array leaf of the equinox module. The L2 penalty ``alpha`` applies to those of two
    or more dimensions (weights, not biases, as scikit-learn's MLP). The module is
    called in evaluation mode (``module.eval()``): a field is a function of ``(t, y)``.

    Examples
    --------
    >>> import torch
    >>> from odeplug import UserField
    >>> class Field(torch.nn.Module):
    ...     def __init__(self, width, hidden=16):
    ...         super().__init__()
    ...         self.net = torch.nn.Sequential(torch.nn.Linear(width, hidden),
    ...                                        torch.nn.Tanh(),
    ...                                        torch.nn.Linear(hidden, width))
    ...     def forward(self, t, y):
    ...         return self.net(y)
    >>> field = UserField(Field, width=8)
    >>> sorted(field.param_table((8,), "field"))[:2]
    ['field.net.0.bias', 'field.net.0.weight']
    >>> field == UserField(Field, width=8), hash(field) == hash(UserField(Field, width=8))
    (True, True)
    """

    def __init__(self, module: type, /, **kwargs: Any):
        framework = _framework(module)
        if framework is None:
            if _is_module_instance(module):
                raise TypeError(
                    f"UserField takes the module's class and its keyword arguments, not an "
                    f"instance: UserField({type(module).__name__}, ...). An instance's "
                    "weights would leak between fits and clones")
            raise TypeError(f"UserField takes a subclass of torch.nn.Module or "
                            f"equinox.Module, got {module!r:.100}")
        items = tuple(sorted(kwargs.items()))
        try:
            hash(items)
        except TypeError as error:
            raise TypeError(f"UserField's keyword arguments must be hashable (ints, floats, "
                            f"strings, tuples), got {kwargs!r:.200}") from error
        object.__setattr__(self, "module", module)
        object.__setattr__(self, "kwargs", dict(items))
        object.__setattr__(self, "framework", framework)

    def __setattr__(self, name, value):
        raise AttributeError("a UserField is frozen")

    # ------------------------------------------------------- a parameter value

    def _key(self) -> tuple:
        return (self.module, tuple(sorted(self.kwargs.items())))

    def __eq__(self, other):
        return isinstance(other, UserField) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"UserField({self.module.__qualname__}{args})"

    def __deepcopy__(self, memo):
        return self  # immutable: clone keeps the very description

    def __reduce__(self):
        return (functools.partial(UserField, self.module, **self.kwargs), ())

    @property
    def engine(self) -> str:
        """The engine that runs this module: ``"torch"`` or ``"jax"``."""
        return ENGINE_OF[self.framework]

    @property
    def class_name(self) -> str:
        return f"{self.module.__module__}.{self.module.__qualname__}"

    def check_engine(self, engine: str) -> None:
        """``ValueError`` unless ``engine`` runs this module (the same words on every
        engine)."""
        if engine != self.engine:
            raise ValueError(
                f"field={self!r} is {a_module_of(self.framework)}: it runs on the "
                f"{self.engine!r} engine only, not on {engine!r}. Set backend="
                f"{self.engine!r} (a model of it predicts on that engine only)")

    # --------------------------------------------------------------- building

    def build(self, seed: int) -> Any:
        """A fresh module, initialised by its own code under ``seed`` (a local
        generator: the global one is left as it was)."""
        if self.framework == "torch":
            import torch

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = self.module(**self.kwargs)
            return module.eval()
        import jax

        return self.module(**self.kwargs, key=jax.random.PRNGKey(seed))

    def named_arrays(self, module: Any) -> dict[str, np.ndarray]:
        """The module's parameters as NumPy arrays, by their own names."""
        if self.framework == "torch":
            return {name: p.detach().cpu().numpy() for name, p in module.named_parameters()}
        return {name: np.asarray(leaf) for name, leaf in _equinox_leaves(module)[0].items()}

    # ----------------------------------------------------------- the Layer API

    def param_table(self, in_shape, prefix):
        module, _ = _template(self)
        arrays = self.named_arrays(module)
        return {f"{prefix}.{name}": Param(tuple(a.shape), _ModuleInit(self, name),
                                          penalized=a.ndim >= 2)
                for name, a in arrays.items()}

    def output_shape(self, in_shape):
        return _output_shape(self, tuple(in_shape))

    def apply(self, ops, params, prefix, t, x):
        engine = _engine_of(ops)
        self.check_engine(engine)
        names = _template(self)[1]
        arrays = {name: params[f"{prefix}.{name}"] for name in names}
        if self.framework == "torch":
            return _torch_call(self, arrays, t, x)
        return _equinox_call(self, arrays, t, x)

    def jvp(self, ops, params, prefix, t, x, dx):
        raise NotImplementedError(
            f"field={self!r}: a user module serves ODEClassifier's field; tangents "
            "(what a CNF's trace needs) are not pushed through user modules")


def _engine_of(ops: Any) -> str:
    module = type(ops).__module__
    for engine in ("torch", "jax"):
        if module.startswith(f"odeplug_backends.{engine}"):
            return engine
    return "reference"


# Which parameters a seed gives: the module's own draws. One module per (field, seed).
@functools.lru_cache(maxsize=16)
def _initial_arrays(field: UserField, seed: int) -> dict[str, np.ndarray]:
    return field.named_arrays(field.build(seed))


@functools.lru_cache(maxsize=16)
def _template(field: UserField) -> tuple[Any, tuple[str, ...]]:
    """A module of the field whose structure (not its weights) each call uses, and its
    parameter names in order."""
    module = field.build(0)
    return module, tuple(field.named_arrays(module))


class _ModuleInit:
    """The initialiser of one of a user module's parameters (a ``Param.init``).

    The spec draws its parameters from one NumPy generator, in table order. A module
    draws all of its parameters at once, so every parameter of it derives the same
    module seed from the generator's position, without drawing: the embedding's draws
    before it and the head's after it are those of any field.
    """

    def __init__(self, field: UserField, name: str):
        self.field, self.name = field, name

    def __call__(self, rng: np.random.Generator, shape, dtype) -> np.ndarray:
        position = repr(rng.bit_generator.state).encode()
        seed = int.from_bytes(hashlib.sha256(position).digest()[:4], "little") >> 1
        array = _initial_arrays(self.field, seed)[self.name]
        return np.array(array, dtype=dtype).reshape(shape)

    def __eq__(self, other):
        return (isinstance(other, _ModuleInit)
                and (self.field, self.name) == (other.field, other.name))

    def __hash__(self):
        return hash((self.field, self.name))


@functools.lru_cache(maxsize=64)
def _output_shape(field: UserField, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The derivative's shape for a state of ``in_shape``, from one evaluation of the
    module on zeros (a module that fails on the state says so here, when the model is
    built, not inside a solver)."""
    module = _template(field)[0]
    try:
        if field.framework == "torch":
            import torch

            with torch.no_grad():
                out = module(torch.zeros(()), torch.zeros((1, *in_shape)))
            return tuple(out.shape[1:])
        import jax
        import jax.numpy as jnp

        out = jax.eval_shape(lambda y: module(jnp.zeros(()), y, None),
                             jax.ShapeDtypeStruct(in_shape, jnp.float32))
        return tuple(out.shape)
    except Exception as error:
        batch = "(1, *state)" if field.framework == "torch" else "one row"
        raise ValueError(
            f"field={field!r} fails on the ODE state of shape {in_shape} ({batch}): "
            f"{type(error).__name__}: {error}. The module maps the state (ODEClassifier: "
            "width latent_dim + augment_dim for flat rows; LatentODERegressor: "
            "latent_dim) to its derivative") from error


# functional_call swaps the given tensors into the module for the call's duration:
# each thread calls its own copy (threaded grid searches, inference in threads).
_PER_THREAD = threading.local()


def _thread_module(field: UserField) -> Any:
    modules = _PER_THREAD.__dict__.setdefault("modules", {})
    if field not in modules:
        modules[field] = copy.deepcopy(_template(field)[0])
    return modules[field]


def _torch_call(field: UserField, arrays: dict, t, x):
    import torch
    from torch.func import functional_call

    module = _thread_module(field)
    t = (t.to(x.dtype) if isinstance(t, torch.Tensor)
         else torch.as_tensor(t, dtype=x.dtype, device=x.device))
    tensors = dict(arrays)
    for name, buffer in module.named_buffers():
        tensors[name] = buffer.to(x.device, x.dtype) if buffer.is_floating_point() \
            else buffer.to(x.device)
    return functional_call(module, tensors, (t, x))


def _equinox_leaves(module: Any) -> tuple[dict[str, Any], Any, Any]:
    """The array leaves of an equinox module by dotted tree path, its tree structure and
    its static part."""
    import equinox as eqx
    import jax

    arrays, static = eqx.partition(module, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(arrays)
    named = {".".join(_key_name(k) for k in path): leaf for path, leaf in leaves}
    return named, treedef, static


def _key_name(key: Any) -> str:
    for attr in ("name", "idx", "key"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _equinox_call(field: UserField, arrays: dict, t, x):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    _, treedef, static = _equinox_leaves(_template(field)[0])
    names = _template(field)[1]
    module = eqx.combine(jax.tree_util.tree_unflatten(treedef, [arrays[k] for k in names]),
                         static)
    n = x.shape[0]
    t = jnp.asarray(t, x.dtype)
    if t.ndim == 0:
        return jax.vmap(lambda y: module(t, y, None))(x)
    t = jnp.broadcast_to(jnp.reshape(t, (-1,)), (n,))
    return jax.vmap(lambda s, y: module(s, y, None))(t, x)
