"""``odeplug.layers``: every layer computes the same function of the same canonical
parameters on every engine, its gradients match finite differences, and its tangents
(the CNF's trace) match the exact Jacobian."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
from sklearn.base import clone

from odeplug import layers as L
from odeplug.reference.nn import INFERENCE_OPS

# Float64 comparisons across engines: JAX in x64 for each test of this module (scoped).
pytestmark = pytest.mark.usefixtures("jax_x64")

OPS_MODULES = {"reference": "odeplug.reference.nn", "torch": "odeplug_backends.torch.nn",
               "jax": "odeplug_backends.jax.nn"}


def ops_of(engine):
    return importlib.import_module(OPS_MODULES[engine.name]).LAYER_OPS


# (layer, row shape): every layer of the vocabulary, 1-D and 2-D where it applies.
CASES = {
    "dense": (L.Dense(4, activation="tanh"), (3,)),
    "dense-softplus": (L.Dense(3, activation="softplus"), (5,)),
    "conv1d": (L.Conv(3, kernel_size=(3,), padding=1, activation="tanh"), (2, 7)),
    "conv1d-stride": (L.Conv(2, kernel_size=(4,), stride=2, padding=1), (3, 9)),
    "conv2d": (L.Conv(3, kernel_size=(3, 3), padding=1), (2, 5, 4)),
    "conv2d-stride": (L.Conv(2, kernel_size=(3, 2), stride=2, activation="logistic"),
                      (2, 6, 5)),
    "groupnorm": (L.GroupNorm(2), (4, 3, 3)),
    "groupnorm-vector": (L.GroupNorm(3), (6,)),
    "activation": (L.Activation("tanh"), (2, 3)),
    "concat-time-dense": (L.ConcatTime(L.Dense(3)), (4,)),
    "concat-time-conv": (L.ConcatTime(L.Conv(2, kernel_size=(3, 3), padding=1)), (2, 4, 4)),
    "concat-squash-dense": (L.ConcatSquash(L.Dense(3, activation="tanh")), (4,)),
    "concat-squash-conv": (L.ConcatSquash(L.Conv(2, kernel_size=(3,), padding=1)), (2, 5)),
    "pool": (L.GlobalAvgPool(), (3, 4, 2)),
    "flatten": (L.Flatten(), (2, 3, 2)),
    "sequential": (L.Sequential([L.GroupNorm(1), L.Activation("softplus"),
                                 L.ConcatTime(L.Conv(3, kernel_size=(3, 3), padding=1)),
                                 L.GroupNorm(3), L.GlobalAvgPool(), L.Dense(2)]), (2, 4, 4)),
}


def _params(layer, shape, seed=0):
    """Canonical parameters, perturbed so that no initial constant (a zero bias, a unit
    scale) hides a wrong use."""
    rng = np.random.default_rng(seed)
    table = layer.param_table(shape, "p")
    return {k: p.init(rng, p.shape, "float64") + 0.3 * rng.standard_normal(p.shape)
            for k, p in table.items()}


def _inputs(shape, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)), rng.uniform(0.1, 1.0)


def _reference_forward(layer, params, t, x):
    return layer.apply(INFERENCE_OPS, params, "p", t, x)


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_vjp_equal_on_every_engine(engine, case):
    layer, shape = CASES[case]
    params = _params(layer, shape)
    x, t = _inputs(shape)
    expected = _reference_forward(layer, params, t, x)
    assert expected.shape == (len(x), *layer.output_shape(shape))
    ops = ops_of(engine)
    out = layer.apply(ops, engine.tree(params), "p", t, engine.asarray(x))
    np.testing.assert_allclose(engine.numpy(out), expected, rtol=1e-12, atol=1e-12)

    # Reverse mode: the VJP of a fixed cotangent, w.r.t. the parameters and the input.
    cotangent = np.random.default_rng(2).standard_normal(expected.shape)

    def loss(p, xs):
        y = layer.apply(ops, p, "p", t, xs)
        return (y * engine.asarray(cotangent)).sum()

    grads = engine.grad(loss, params, x)
    reference = _ReferenceEngine()
    ref_grads = reference.grad(
        lambda p, xs: (layer.apply(_ref_ops(), p, "p", t, xs) * cotangent).sum(), params, x)
    for name in params:
        np.testing.assert_allclose(grads[0][name], ref_grads[0][name], rtol=1e-10,
                                   atol=1e-12, err_msg=name)
    np.testing.assert_allclose(grads[1], ref_grads[1], rtol=1e-10, atol=1e-12)


class _ReferenceEngine:
    def grad(self, loss, *inputs):
        import autograd

        return autograd.grad(lambda xs: loss(*xs))(tuple(inputs))


def _ref_ops():
    from odeplug.reference.nn import LAYER_OPS

    return LAYER_OPS


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_finite_differences(case):
    layer, shape = CASES[case]
    params = _params(layer, shape)
    x, t = _inputs(shape, n=2)
    cotangent = np.random.default_rng(3).standard_normal((2, *layer.output_shape(shape)))

    def loss(p, xs):
        return float((_reference_forward(layer, p, t, xs) * cotangent).sum())

    grads = _ReferenceEngine().grad(
        lambda p, xs: (layer.apply(_ref_ops(), p, "p", t, xs) * cotangent).sum(), params, x)
    rng = np.random.default_rng(4)
    eps = 1e-6
    for name, value in [*params.items(), ("x", x)]:
        direction = rng.standard_normal(value.shape)

        def shifted(s, name=name, value=value, direction=direction):
            if name == "x":
                return loss(params, value + s * direction)
            return loss({**params, name: value + s * direction}, x)

        numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
        analytic = np.sum((grads[1] if name == "x" else grads[0][name]) * direction)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def _exact_jacobian(layer, params, t, x):
    """``J[r, i, j] = d out_j / d in_i`` of each row, by central differences of the
    reference (float64, smooth layers)."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    d = flat.shape[1]
    eps = 1e-6
    columns = []
    for i in range(d):
        e = np.zeros(d)
        e[i] = eps
        up = _reference_forward(layer, params, t, (flat + e).reshape(x.shape)).reshape(n, -1)
        down = _reference_forward(layer, params, t, (flat - e).reshape(x.shape)).reshape(n, -1)
        columns.append((up - down) / (2 * eps))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("case", list(CASES))
def test_jvp_equals_the_jacobian(engine, case):
    layer, shape = CASES[case]
    params = _params(layer, shape)
    x, t = _inputs(shape)
    n, d = x.shape[0], math.prod(shape)
    tangents = np.broadcast_to(np.eye(d).reshape(1, d, *shape), (n, d, *shape)).copy()
    ops = ops_of(engine)
    y, dy = layer.jvp(ops, engine.tree(params), "p", t, engine.asarray(x),
                      engine.asarray(tangents))
    np.testing.assert_allclose(engine.numpy(y), _reference_forward(layer, params, t, x),
                               rtol=1e-12, atol=1e-12)
    jacobian = _exact_jacobian(layer, params, t, x)
    np.testing.assert_allclose(engine.numpy(dy).reshape(n, d, -1), jacobian, rtol=1e-6,
                               atol=1e-7)


def test_jvp_trace_of_a_field_equals_the_exact_trace(engine):
    """A CNF's field built from layers (a conv field on 2-channel 4x4 images): the trace
    pushed forward by :func:`odeplug.layers.as_field` equals the trace of its Jacobian."""
    shape = (2, 4, 4)
    field_layer = L.Sequential([
        L.ConcatSquash(L.Conv(4, kernel_size=(3, 3), padding=1, activation="softplus")),
        L.GroupNorm(2), L.Activation("tanh"),
        L.ConcatTime(L.Conv(2, kernel_size=(3, 3), padding=1))])
    params = _params(field_layer, shape)
    rng = np.random.default_rng(5)
    d = math.prod(shape)
    z, t = rng.standard_normal((3, d)), 0.4
    field = L.as_field(field_layer, "p", shape, ops_of(engine), tangents=True)
    eye = np.broadcast_to(np.eye(d), (3, d, d)).copy()
    f, jvp = field(t, engine.asarray(z), engine.asarray(eye), engine.tree(params))
    trace = np.einsum("nii->n", engine.numpy(jvp))
    jacobian = _exact_jacobian(field_layer, params, t, z.reshape(3, *shape))
    np.testing.assert_allclose(trace, np.einsum("nii->n", jacobian), rtol=1e-6)
    plain = L.as_field(field_layer, "p", shape, INFERENCE_OPS)(t, z, params)
    np.testing.assert_allclose(engine.numpy(f), plain, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the descriptions


def test_layers_are_hashable_and_clone_as_parameters():
    a = L.Sequential([L.ConcatTime(L.Conv(8, kernel_size=[3, 3], padding=1)),
                      L.GroupNorm(4)])
    b = L.Sequential((L.ConcatTime(L.Conv(8, kernel_size=(3, 3), padding=1)),
                      L.GroupNorm(4)))
    assert a == b and hash(a) == hash(b)
    assert clone(a, safe=False) == a


def test_parameter_table_layouts():
    table = L.Sequential([L.ConcatTime(L.Conv(8, kernel_size=(3, 3), padding=1)),
                          L.GroupNorm(4), L.GlobalAvgPool(),
                          L.ConcatSquash(L.Dense(5))]).param_table((3, 6, 6), "field")
    assert {k: p.shape for k, p in table.items()} == {
        "field.0.weight": (8, 4, 3, 3), "field.0.bias": (8,),
        "field.1.weight": (8,), "field.1.bias": (8,),
        "field.3.weight": (8, 5), "field.3.bias": (5,),
        "field.3.gate_weight": (5,), "field.3.gate_bias": (5,), "field.3.time_weight": (5,)}
    assert [k for k, p in table.items() if p.penalized] == ["field.0.weight",
                                                             "field.3.weight"]


def test_output_shapes():
    assert L.Conv(4, kernel_size=(4, 4), stride=2, padding=1).output_shape((1, 28, 28)) \
        == (4, 14, 14)
    assert L.Conv(4, kernel_size=(3,)).output_shape((2, 10)) == (4, 8)
    assert L.Flatten().output_shape((2, 3, 4)) == (24,)
    assert L.GlobalAvgPool().output_shape((5, 3, 3)) == (5,)


@pytest.mark.parametrize("make, match", [
    (lambda: L.Dense(0), "Dense.features must be a positive int"),
    (lambda: L.Dense(3, activation="gelu"), "activation must be one of"),
    (lambda: L.Conv(3, kernel_size=(3, 3, 3)), "Conv is 1-D or 2-D"),
    (lambda: L.Conv(3, padding=-1), "Conv.padding"),
    (lambda: L.Sequential([]), "at least one layer"),
    (lambda: L.Sequential([np.tanh]), "Sequential takes layers"),
    (lambda: L.Dense(3).output_shape((2, 4)), "put a Flatten or a GlobalAvgPool"),
    (lambda: L.GroupNorm(3).output_shape((4, 2)), "groups must divide"),
    (lambda: L.Conv(3, kernel_size=(3,)).output_shape((2, 4, 4)), "1-D Conv takes rows"),
    (lambda: L.Conv(3, kernel_size=(5,)).output_shape((2, 3)), "leaves nothing"),
])
def test_bad_layers_are_refused_clearly(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_both_jax_lowerings_of_a_convolution_agree(jax_x64):
    """The jax engine lowers a convolution by ``lax.conv_general_dilated`` on GPUs and
    by strided slices on CPUs (faster there inside a solver's loop): the same function
    and gradients, so a model's outputs do not depend on the platform."""
    jax = pytest.importorskip("jax")
    from odeplug_backends.jax.nn import _conv_by_slices, _conv_xla

    rng = np.random.default_rng(0)
    for x_shape, w_shape, stride, padding in [((2, 3, 7, 6), (4, 3, 3, 2), 2, 1),
                                              ((2, 3, 9), (2, 3, 4), 1, 0)]:
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        outs = [np.asarray(conv(x, w, stride, padding))
                for conv in (_conv_by_slices, _conv_xla)]
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
        grads = [jax.grad(lambda x, w, c=conv, s=stride, p=padding: (c(x, w, s, p) ** 2).sum(),
                          argnums=(0, 1))(x, w) for conv in (_conv_by_slices, _conv_xla)]
        for a, b in zip(*grads, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)
