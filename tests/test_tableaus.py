"""The tableaus of ``odeplug._tableaus`` against the theory of Runge-Kutta methods.

Order conditions by Butcher's rooted trees: a method has order p when
``sum_i b_i Phi_i(tau) = 1 / gamma(tau)`` for every rooted tree ``tau`` of at most p
nodes, with ``Phi_i`` the elementary weights (``Phi_i(leaf) = 1``; a root with subtrees
``t_1..t_m`` has ``Phi_i = prod_k sum_j a_ij Phi_j(t_k)``) and ``gamma`` the density
(``|tau| prod_k gamma(t_k)``). Hairer, Norsett & Wanner, *Solving ODEs I*, Sec. II.2.
A continuous extension of order q satisfies ``sum_i b_i(x) Phi_i(tau) = x**|tau| /
gamma(tau)`` for ``|tau| <= q`` and every x in [0, 1].
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache

import numpy as np
import pytest

from odeplug._tableaus import TABLEAUS, ButcherTableau

# Orders of the embedded solutions (b - b_error) and of the continuous extensions.
# dopri8's extension is of degree 6 and of order 5 (its order-6 conditions hold to 1e-5
# only, a small error constant rather than an order).
EMBEDDED_ORDER = {"bosh3": 2, "dopri5": 4, "tsit5": 4, "dopri8": 7}
DENSE_ORDER = {"dopri5": 4, "tsit5": 4, "dopri8": 5}
# The coefficients are floats; tsit5's are 16-digit decimals of irrational numbers, so
# its conditions hold to a few ulps more than the rational tableaus'.
RESIDUAL = {"tsit5": 3e-14}
DEFAULT_RESIDUAL = 5e-15
# dopri8's extension (diffrax's 20-digit decimals) meets b at x = 1 to 1e-12 only.
DENSE_AT_ONE = {"dopri8": 2e-12}


@cache
def trees(order: int) -> frozenset:
    """Rooted trees of ``order`` nodes, each a sorted tuple of its subtrees."""
    if order == 1:
        return frozenset({()})
    return frozenset(tuple(sorted(forest)) for forest in forests(order - 1))


@cache
def forests(nodes: int) -> frozenset:
    """Multisets of rooted trees (sorted tuples) with ``nodes`` nodes in all."""
    if nodes == 0:
        return frozenset({()})
    out = set()
    for first in range(1, nodes + 1):
        for tree in trees(first):
            for rest in forests(nodes - first):
                out.add(tuple(sorted(rest + (tree,))))
    return frozenset(out)


def size(tree) -> int:
    return 1 + sum(size(child) for child in tree)


def density(tree) -> int:
    return size(tree) * int(np.prod([density(child) for child in tree]))


def elementary_weights(tree, a: np.ndarray) -> np.ndarray:
    phi = np.ones(a.shape[0])
    for child in tree:
        phi = phi * (a @ elementary_weights(child, a))
    return phi


def test_rooted_trees_are_counted_right():
    # OEIS A000081: 1, 1, 2, 4, 9, 20, 48, 115 rooted trees of 1..8 nodes.
    assert [len(trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]
    # The bushy tree of n nodes has density n, the tall one n!.
    assert density(((),) * 4) == 5 and density(((((),),),)) == 24


def residuals(weights: np.ndarray, tableau: ButcherTableau, order: int) -> list:
    """``|sum_i w_i Phi_i(tau) - 1/gamma(tau)|`` for every tree of each order."""
    a = tableau.matrix()
    return [(n, abs(weights @ elementary_weights(tree, a) - 1.0 / density(tree)))
            for n in range(1, order + 1) for tree in trees(n)]


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_consistency(name):
    tableau = TABLEAUS[name]
    a, c = tableau.matrix(), np.asarray(tableau.c)
    np.testing.assert_allclose(a.sum(axis=1), c, rtol=0, atol=4e-15)
    assert np.triu(a).max() == np.triu(a).min() == 0.0  # explicit
    assert abs(sum(tableau.b) - 1.0) <= 1e-15
    if tableau.b_error is not None:
        assert abs(sum(tableau.b_error)) <= 1e-15
    if tableau.fsal:  # the last stage is f(t1, y1): its row of a is b
        assert c[-1] == 1.0 and tableau.b[-1] == 0.0


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_order_conditions(name):
    tableau = TABLEAUS[name]
    tolerance = RESIDUAL.get(name, DEFAULT_RESIDUAL)
    bad = [(n, r) for n, r in residuals(np.asarray(tableau.b), tableau, tableau.order)
           if r > tolerance]
    assert not bad, bad
    # And not one order more (the declared order is the true one): some tree of order
    # p + 1 fails by far more than rounding.
    if tableau.order < 8:
        extra = [r for n, r in residuals(np.asarray(tableau.b), tableau, tableau.order + 1)
                 if n == tableau.order + 1]
        assert max(extra) > 1e-4


@pytest.mark.parametrize("name", list(EMBEDDED_ORDER))
def test_embedded_order(name):
    """``b - b_error`` is the embedded solution, of order ``order - 1``; the difference
    of the two, the error estimate, is of order ``order - 1`` exactly (not zero)."""
    tableau = TABLEAUS[name]
    embedded = np.asarray(tableau.b) - np.asarray(tableau.b_error)
    order = EMBEDDED_ORDER[name]
    assert order == tableau.order - 1
    tolerance = RESIDUAL.get(name, DEFAULT_RESIDUAL)
    bad = [(n, r) for n, r in residuals(embedded, tableau, order) if r > tolerance]
    assert not bad, bad
    estimate = [r for n, r in residuals(embedded, tableau, order + 1) if n == order + 1]
    assert max(estimate) > 1e-5


@pytest.mark.parametrize("name", list(DENSE_ORDER))
def test_dense_output(name):
    """``b_i(x) = sum_p b_dense[i][p] x**(p+1)``: ``b(0) = 0``, ``b(1) = b``, and the
    continuous order conditions up to the interpolant's order at every x."""
    tableau = TABLEAUS[name]
    b_dense = np.asarray(tableau.b_dense)
    powers = np.arange(1, b_dense.shape[1] + 1)

    def weights(x):
        return b_dense @ (x**powers)

    np.testing.assert_array_equal(weights(0.0), 0.0)
    np.testing.assert_allclose(weights(1.0), tableau.b, rtol=0,
                               atol=DENSE_AT_ONE.get(name, 1e-14))
    a = tableau.matrix()
    tolerance = 10 * RESIDUAL.get(name, DEFAULT_RESIDUAL)
    order = DENSE_ORDER[name]
    worst = dict.fromkeys(range(1, order + 2), 0.0)
    for x in (0.1, 0.37, 0.5, 0.81):
        for n in worst:
            for tree in trees(n):
                got = weights(x) @ elementary_weights(tree, a)
                worst[n] = max(worst[n], abs(got - x**n / density(tree)))
    assert max(worst[n] for n in range(1, order + 1)) <= tolerance, worst
    assert worst[order + 1] > 1e-6, worst  # and no more: the declared order is its order


def test_dopri5_dense_output_is_shampines_midpoint():
    """At x = 1/2 the quartic goes through Shampine's midpoint weights (exact rationals)."""
    mid = [Fraction(6025192743, 30085553152), 0, Fraction(51252292925, 65400821598),
           Fraction(-2691868925, 45128329728), Fraction(187940372067, 1594534317056),
           Fraction(-1776094331, 19743644256), Fraction(11237099, 235043384)]
    b_dense = np.asarray(TABLEAUS["dopri5"].b_dense)
    at_half = b_dense @ (0.5 ** np.arange(1, b_dense.shape[1] + 1))
    np.testing.assert_allclose(at_half, [float(m) / 2 for m in mid], rtol=0, atol=1e-15)


@pytest.mark.parametrize("kwargs, message", [
    ({"a": ((), (0.5, 0.5))}, "strictly lower triangular"),
    ({"a": ((),)}, "strictly lower triangular"),
    ({"b": (1.0,)}, "b needs 2 entries"),
    ({"b_error": (1.0, 0.0, 0.0)}, "b_error needs 2 entries"),
    ({"b_dense": ((1.0,),)}, "b_dense needs 2 entries"),
    ({"c": (0.1, 0.5)}, "c\\[0\\] must be 0"),
])
def test_malformed_tableau_raises(kwargs, message):
    # Exceptions, not asserts (which python -O skips).
    fields = {"name": "bad", "order": 2, "c": (0.0, 0.5), "a": ((), (0.5,)),
              "b": (0.0, 1.0), **kwargs}
    with pytest.raises(ValueError, match=message):
        ButcherTableau(**fields)
