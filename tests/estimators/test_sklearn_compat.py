"""The touches of scikit-learn's private API (``odeplug/estimators/_sklearn_compat.py``),
checked with scikit-learn 1.6 to 1.9: what odeplug relies on still exists and behaves."""

from __future__ import annotations

from numbers import Integral

import pytest
import sklearn
from sklearn.base import BaseEstimator

from odeplug.estimators import _sklearn_compat as compat


class _Toy(BaseEstimator):
    _parameter_constraints = {
        "n": [compat.Interval(Integral, 1, None, closed="left")],
        "kind": [compat.StrOptions({"a", "b"})],
        "flag": ["boolean"],
    }

    def __init__(self, n=1, kind="a", flag=False):
        self.n, self.kind, self.flag = n, kind, flag


def test_checked_version_range():
    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    assert (1, 6) <= (major, minor) <= (1, 9), (
        f"scikit-learn {sklearn.__version__}: check _sklearn_compat.py against it")


@pytest.mark.parametrize("params, bad", [(dict(n=0), "'n'"), (dict(kind="c"), "'kind'"),
                                         (dict(flag=1), "'flag'")])
def test_validate_params_raises_sklearns_error(params, bad):
    with pytest.raises(compat.InvalidParameterError, match=bad) as info:
        compat.validate_params(_Toy(**params))
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_valid_params_pass():
    compat.validate_params(_Toy(n=3, kind="b", flag=True))
