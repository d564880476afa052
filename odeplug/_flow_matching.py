"""Flow matching: a CNF's field trained by regression, without solving an ODE.

Written once, in NumPy, for every engine. The training loop calls :meth:`FlowMatching.
batch` on each minibatch of (standardised) data; it draws everything random from the
estimator's generator (the base draws, their pairing with the data, the times) and
returns the regression problem of the step, ``(t, x_t, target)``. An engine's step is
then a deterministic, solver-free regression of ``f(t, x_t)`` onto ``target`` (the
programs of ``FlowMatchingSpec``, one per engine).

Path (Lipman et al. 2023, the "optimal transport" conditional path with ``sigma_min``;
independent or minibatch-OT pairing, Tong et al. 2023). The papers put the base draw
``x0 ~ N(0, I)`` at ``s = 0`` and the data ``x1`` at ``s = 1``:

    x_s = (1 - (1 - sigma_min) s) x0 + s x1,      d x_s / ds = x1 - (1 - sigma_min) x0.

``CNFDensity`` has the opposite direction and its own length: data at ``t = 0``, base at
``t = t1``. With ``u = t / t1`` (the fraction of the way to the base), ``s = 1 - u``, so
for a data point ``x`` and a base draw ``e``

    x_t = (1 - u) x + (sigma_min + (1 - sigma_min) u) e,
    d x_t / dt = ((1 - sigma_min) e - x) / t1,

and that is the regression target. ``sigma_min = 0`` gives the issue's
``x_t = (1 - t) x0 + t x1`` with target ``x1 - x0``, read backwards and rescaled.

Why inference is unchanged. The minimiser of the regression is the marginal field
``v(t, z) = E[d x_t/dt | x_t = z]``, and its flow carries the marginal path ``p_t``
(Lipman et al., Thm. 1): ``p_0`` is the data smoothed by ``N(0, sigma_min**2 I)``,
``p_t1`` exactly ``N(0, I)``. That is the very model ``CNFDensity`` assumes of its field,
in its own direction of time: ``transform`` carries data from 0 to ``t1`` onto the base,
``inverse_transform`` and ``sample`` carry base points back, and ``score_samples`` is
``log N(z(t1); 0, I)`` plus the integrated trace along the same flow (the instantaneous
change of variables holds for any field). None of them asks how the field was trained,
so a flow-matching fit is scored, sampled and transformed by the same code, on every
engine, and its log-densities are exact for the field it learnt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import linear_sum_assignment

from ._specs import ModelSpec, Param

__all__ = [
    "OBJECTIVES",
    "FlowMatching",
    "FlowMatchingSpec",
    "conditional_path",
    "gaussian_optimal_field",
    "ot_pairing",
]

OBJECTIVES = ("maximum_likelihood", "flow_matching")


def ot_pairing(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """The permutation ``perm`` minimising ``sum_i ||x_i - e[perm[i]]||**2``: exact optimal
    transport between two equal-size batches with uniform weights (OT-CFM, Tong et al.
    2023), by ``scipy.optimize.linear_sum_assignment`` (an optimal vertex of the transport
    polytope of equal-size uniform batches is a permutation).
    """
    # ||x - e||^2 = |x|^2 + |e|^2 - 2 x.e; the squared norms are exact costs (no clipping).
    cost = (np.sum(x * x, axis=1)[:, None] + np.sum(e * e, axis=1)[None, :]
            - 2.0 * (x @ e.T))
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(x), dtype=np.intp)
    perm[rows] = cols
    return perm


def conditional_path(x: np.ndarray, e: np.ndarray, u: np.ndarray, sigma_min: float,
                     t1: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The conditional path in ``CNFDensity``'s time (module docstring).

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Data, at ``t = 0``.
    e : ndarray of shape (n, d)
        Base draws (``N(0, I)``), at ``t = t1``, already paired with ``x`` row by row.
    u : ndarray of shape (n,)
        Fractions ``t / t1`` in ``[0, 1]``.
    sigma_min, t1 : float

    Returns
    -------
    t : ndarray of shape (n, 1)
        Times ``u * t1`` (a column: the field appends it to the state).
    x_t : ndarray of shape (n, d)
    target : ndarray of shape (n, d)
        ``d x_t / dt``, what ``f(t, x_t)`` is regressed onto.
    """
    u = np.asarray(u, dtype=np.float64)[:, None]
    x_t = (1.0 - u) * x + (sigma_min + (1.0 - sigma_min) * u) * e
    target = ((1.0 - sigma_min) * e - x) / t1
    return u * t1, x_t, target


@dataclass(frozen=True)
class FlowMatching:
    """The flow-matching batches of a fit: what :func:`odeplug._training.train` calls on
    each minibatch (its ``prepare_batch``).

    Attributes
    ----------
    sigma_min : float
        Width of the path at the data end (0: straight lines from each data point).
    ot_pairing : bool
        Pair the minibatch's base draws with its data by exact optimal transport, else
        independently (the order they were drawn in).
    t1 : float
        The CNF's integration time.
    dtype : str
        The model's dtype, that of the arrays returned.
    """

    sigma_min: float
    ot_pairing: bool
    t1: float
    dtype: str

    def batch(self, rng: np.random.RandomState, batch: tuple[np.ndarray, ...]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t, x_t, target)`` of a minibatch ``(X,)``, every draw from ``rng`` (base
        draws, then times), computed in float64 and returned in ``dtype``."""
        x = np.asarray(batch[0], dtype=np.float64)
        e = rng.standard_normal(x.shape)
        if self.ot_pairing:
            e = e[ot_pairing(x, e)]
        u = rng.uniform(0.0, 1.0, size=x.shape[0])
        return tuple(a.astype(self.dtype) for a in
                     conditional_path(x, e, u, self.sigma_min, self.t1))


def gaussian_optimal_field(t: float, z: np.ndarray, mean: np.ndarray, cov: np.ndarray,
                           sigma_min: float, t1: float) -> np.ndarray:
    """The minimiser of the flow-matching regression for Gaussian data ``N(mean, cov)``
    and independent pairing, at time ``t`` and points ``z`` of shape ``(n, d)``.

    With ``a = 1 - u``, ``b = sigma_min + (1 - sigma_min) u`` (``u = t / t1``), ``x_t =
    a x + b e`` and the target ``v = ((1 - sigma_min) e - x) / t1`` are jointly Gaussian,
    so ``E[v | x_t = z] = E[v] + Cov(v, x_t) Cov(x_t)^{-1} (z - E[x_t])`` with
    ``E[v] = -mean / t1``, ``E[x_t] = a mean``, ``Cov(x_t) = a^2 cov + b^2 I`` and
    ``Cov(v, x_t) = ((1 - sigma_min) b I - a cov) / t1``: a field affine in ``z``.
    (The regression's minimiser is this conditional mean, whatever the model class that
    can represent it.)
    """
    d = len(mean)
    u = t / t1
    a, b = 1.0 - u, sigma_min + (1.0 - sigma_min) * u
    cov_xt = a * a * cov + b * b * np.eye(d)
    cross = ((1.0 - sigma_min) * b * np.eye(d) - a * cov) / t1
    gain = np.linalg.solve(cov_xt, cross.T).T  # cross @ inv(cov_xt); both symmetric
    return -mean / t1 + (np.asarray(z) - a * mean) @ gain.T


@dataclass(frozen=True)
class FlowMatchingSpec(ModelSpec):
    """The flow-matching training program of a CNF (``cnf``, a ``CNFSpec``).

    A thin key for the engines' ``make_program``: the program trains the very parameters
    of ``cnf`` (same table, same training state as the CNF's own program, so a fit can
    switch objectives under ``warm_start``), and the fitted model is a plain CNF of
    ``cnf``, scored and sampled by the CNF's program. Batch: ``(t, x_t, target)`` from
    :class:`FlowMatching`; loss ``mean_i ||f(t_i, x_t_i) - target_i||**2`` plus the L2
    penalty ``0.5 * alpha * sum(W**2) / batch_size``.
    """

    family: ClassVar[str] = "density"
    program: ClassVar[tuple[str, str]] = ("flow_matching", "FlowMatchingProgram")

    cnf: Any

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.cnf.dtype

    def param_table(self) -> dict[str, Param]:
        return self.cnf.param_table()
