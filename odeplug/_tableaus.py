"""Butcher tableaus of odeplug's solvers, as data.

One Runge-Kutta stepper (``odeplug.reference.solve``) runs all of them. Each tableau
also says how to interpolate inside a step (dense output):

* ``b_dense`` given: a continuous extension ``y(t0 + x h) = y0 + h sum_i b_i(x) k_i``
  with ``b_i(x) = sum_p b_dense[i][p] x**(p + 1)``. dopri5 and tsit5: the quartic
  through y0, y(t0 + h/2), y1 with slopes f0, f1 (torchdiffeq's construction, order 4,
  with Shampine's and Tsitouras' midpoint weights); dopri8: diffrax's extension, of
  degree 6 and order 5 (its order-6 conditions hold to 1e-5: ``tests/test_tableaus.py``).
* order 1: linear;
* otherwise: cubic Hermite through y0, y1 with slopes f0, f1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ButcherTableau", "TABLEAUS"]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Attributes
    ----------
    name : str
    order : int
        Order of the propagated solution (also the error order used by the controller).
    c : tuple of float
        Nodes, one per stage (``c[0] == 0``).
    a : tuple of tuple of float
        Strictly lower triangle: ``a[i]`` holds the ``i`` coefficients of stage ``i``.
    b : tuple of float
        Weights of the solution.
    b_error : tuple of float or None
        ``b - b_embedded``: weights of the local error estimate (None: fixed-step only).
    b_dense : tuple of tuple of float or None
        Continuous extension: ``b_dense[i][p]`` multiplies ``x**(p + 1)`` in ``b_i(x)``.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    b_dense: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        # Exceptions, not asserts: checks that ``python -O`` would skip.
        n = len(self.c)
        if len(self.a) != n or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"tableau {self.name!r}: a must be strictly lower triangular "
                             f"with {n} rows (row i holds i coefficients)")
        for field in ("b", "b_error", "b_dense"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"tableau {self.name!r}: {field} needs {n} entries (one "
                                 f"per stage), got {len(value)}")
        if n and self.c[0] != 0.0:
            raise ValueError(f"tableau {self.name!r}: c[0] must be 0, got {self.c[0]}")

    @property
    def n_stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is f(t1, y1), reused as the next k1."""
        return (
            self.n_stages > 1
            and self.c[-1] == 1.0
            and self.b[-1] == 0.0
            and tuple(self.a[-1]) == tuple(self.b[:-1])
        )

    @property
    def interpolation(self) -> str:
        if self.b_dense is not None:
            return "polynomial"
        return "linear" if self.order == 1 else "hermite"

    def matrix(self, dtype=np.float64) -> np.ndarray:
        """The full ``(n_stages, n_stages)`` matrix A."""
        out = np.zeros((self.n_stages, self.n_stages), dtype=dtype)
        for i, row in enumerate(self.a):
            out[i, :i] = row
        return out


def quartic_dense(b: tuple[float, ...], b_mid: tuple[float, ...]) -> tuple:
    """``b_dense`` of the quartic through y0, y_mid, y1 with slopes f0, f1 (FSAL).

    With ``y1 = y0 + h b.k``, ``y_mid = y0 + h b_mid.k``, ``f0 = k_0`` and ``f1 = k_last``,
    torchdiffeq's quartic fit is linear in the stages; these are its weights.
    """
    b, m = np.asarray(b), np.asarray(b_mid)
    first, last = np.eye(len(b))[0], np.eye(len(b))[-1]
    powers = (
        first,
        last - 4 * first - 5 * b + 16 * m,
        5 * first - 3 * last + 14 * b - 32 * m,
        2 * last - 2 * first - 8 * b + 16 * m,
    )
    return tuple(tuple(float(v) for v in row) for row in np.stack(powers, axis=1))


EULER = ButcherTableau(name="euler", order=1, c=(0.0,), a=((),), b=(1.0,))

MIDPOINT = ButcherTableau(
    name="midpoint", order=2, c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0)
)

# Heun's method: the explicit trapezoidal rule.
HEUN = ButcherTableau(name="heun", order=2, c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))

RK4 = ButcherTableau(
    name="rk4",
    order=4,
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)

# Bogacki & Shampine (1989), 3(2), FSAL.
BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
)

# Dormand & Prince (1980), 5(4), FSAL; dense output by Shampine (1986).
DOPRI5 = ButcherTableau(
    name="dopri5",
    order=5,
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    # The embedded 4th-order weights used by torchdiffeq and diffrax, so that all
    # engines take the same steps.
    b_error=(
        35 / 384 - 1951 / 21600,
        0.0,
        500 / 1113 - 22642 / 50085,
        125 / 192 - 451 / 720,
        -2187 / 6784 + 12231 / 42400,
        11 / 84 - 649 / 6300,
        -1 / 60,
    ),
    b_dense=quartic_dense(
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
        (6025192743 / 30085553152 / 2,
        0.0,
        51252292925 / 65400821598 / 2,
        -2691868925 / 45128329728 / 2,
        187940372067 / 1594534317056 / 2,
        -1776094331 / 19743644256 / 2,
         11237099 / 235043384 / 2),
    ),
)

# Tsitouras (2011), 5(4), FSAL. b_mid: Tsitouras' continuous extension at theta = 1/2.
TSIT5 = ButcherTableau(
    name="tsit5",
    order=5,
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
         -0.028269050394068383),
        (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
         -3.290069515436081, 2.324710524099774),
    ),
    b=(0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
       -3.290069515436081, 2.324710524099774, 0.0),
    b_error=(
        0.09646076681806523 - 0.09468075576583945,
        0.01 - 0.009183565540343254,
        0.4798896504144996 - 0.4877705284247616,
        1.379008574103742 - 1.234297566930479,
        -3.290069515436081 + 2.7077123499835256,
        2.324710524099774 - 1.866628418170587,
        -1 / 66,
    ),
    b_dense=quartic_dense(
        (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
         -3.290069515436081, 2.324710524099774, 0.0),
        (0.10741235230096871, 0.01135625, 0.39560903056045305, -0.34475214352593553,
         1.3161853649581645, -1.0170608542936508, 0.031249999999999993),
    ),
)


def _dopri8() -> ButcherTableau:
    # Prince & Dormand (1981), 8(7) with 13 stages, plus a 14th FSAL stage f(t1, y1)
    # that the midpoint weights use (coefficients as in torchdiffeq's dopri8).
    c = (0.0, 1 / 18, 1 / 12, 1 / 8, 5 / 16, 3 / 8, 59 / 400, 93 / 200,
         5490023248 / 9719169821, 13 / 20, 1201146811 / 1299019798, 1.0, 1.0, 1.0)
    a = (
        (),
        (1 / 18,),
        (1 / 48, 1 / 16),
        (1 / 32, 0, 3 / 32),
        (5 / 16, 0, -75 / 64, 75 / 64),
        (3 / 80, 0, 0, 3 / 16, 3 / 20),
        (29443841 / 614563906, 0, 0, 77736538 / 692538347, -28693883 / 1125000000,
         23124283 / 1800000000),
        (16016141 / 946692911, 0, 0, 61564180 / 158732637, 22789713 / 633445777,
         545815736 / 2771057229, -180193667 / 1043307555),
        (39632708 / 573591083, 0, 0, -433636366 / 683701615, -421739975 / 2616292301,
         100302831 / 723423059, 790204164 / 839813087, 800635310 / 3783071287),
        (246121993 / 1340847787, 0, 0, -37695042795 / 15268766246, -309121744 / 1061227803,
         -12992083 / 490766935, 6005943493 / 2108947869, 393006217 / 1396673457,
         123872331 / 1001029789),
        (-1028468189 / 846180014, 0, 0, 8478235783 / 508512852, 1311729495 / 1432422823,
         -10304129995 / 1701304382, -48777925059 / 3047939560, 15336726248 / 1032824649,
         -45442868181 / 3398467696, 3065993473 / 597172653),
        (185892177 / 718116043, 0, 0, -3185094517 / 667107341, -477755414 / 1098053517,
         -703635378 / 230739211, 5731566787 / 1027545527, 5232866602 / 850066563,
         -4093664535 / 808688257, 3962137247 / 1805957418, 65686358 / 487910083),
        (403863854 / 491063109, 0, 0, -5068492393 / 434740067, -411421997 / 543043805,
         652783627 / 914296604, 11173962825 / 925320556, -13158990841 / 6184727034,
         3936647629 / 1978049680, -160528059 / 685178525, 248638103 / 1413531060, 0),
        (14005451 / 335480064, 0, 0, 0, 0, -59238493 / 1068277825, 181606767 / 758867731,
         561292985 / 797845732, -1041891430 / 1371343529, 760417239 / 1151165299,
         118820643 / 751138087, -528747749 / 2220607170, 1 / 4),
    )
    b = a[-1] + (0.0,)
    b_embedded = (13451932 / 455176623, 0, 0, 0, 0, -808719846 / 976000145,
                  1757004468 / 5645159321, 656045339 / 265891186, -3867574721 / 1518517206,
                  465885868 / 322736535, 53011238 / 667516719, 2 / 45, 0.0, 0.0)
    b_error = tuple(bi - ei for bi, ei in zip(b, b_embedded, strict=True))
    # Continuous extension (as in diffrax's Dopri8): b_i(x) = x * polyval(poly[i], x).
    poly = {
        0: (-6.3448349392860401388, 22.1396504998094068976, -30.0610568289666450593,
            19.9990069333683970610, -6.6910181737837595697, 1.0),
        5: (-39.6107919852202505218, 116.4422149550342161651, -121.4999627731334642623,
            52.2273532792945524050, -7.6142658045872677172, 0.0),
        6: (20.3761213808791436958, -67.1451318825957197185, 83.1721004639847717481,
            -46.8919164181093621583, 10.7281392630428866124, 0.0),
        7: (7.3347098826795362023, -16.5672243527496524646, 9.5724507555993664382,
            -0.1890893225010595467, 0.5526637063753648783, 0.0),
        8: (32.8801774352459155182, -89.9916014847245016028, 87.8406057677205645007,
            -35.7075975946222072821, 4.2186562625665153803, 0.0),
        9: (-10.1588990526426760954, 22.6237489648532849093, -17.4152107770762969005,
            6.2736448083240352160, -0.6627209125361597559, 0.0),
        10: (-12.5401268098782561200, 32.2362340167355370113, -28.5903289514790976966,
             10.3160881272450748458, -1.2636789001135462218, 0.0),
        11: (29.5553001484516038033, -82.1020315488359848644, 81.6630950584341412934,
             -34.7650769866611817349, 5.4106037898590422230, 0.0),
        12: (-41.7923486424390588923, 116.2662185791119533462, -114.9375291377009418170,
             47.7457971078225540396, -7.0321379067945741781, 0.0),
        13: (20.3006925822100825485, -53.9020777466385396792, 50.2558364226176017553,
             -19.0082099341608028453, 2.3537586759714983486, 0.0),
    }
    # polyval order (highest first) -> ascending powers x**1 .. x**6.
    b_dense = tuple(tuple(reversed(poly[i])) if i in poly else (0.0,) * 6 for i in range(14))
    return ButcherTableau(
        name="dopri8", order=8, c=c, a=a, b=b, b_error=b_error, b_dense=b_dense
    )


DOPRI8 = _dopri8()

TABLEAUS: dict[str, ButcherTableau] = {
    tableau.name: tableau
    for tableau in (EULER, MIDPOINT, HEUN, RK4, BOSH3, DOPRI5, TSIT5, DOPRI8)
}
