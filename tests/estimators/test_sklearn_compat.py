"""The touches of scikit-learn's private API (``odeplug/estimators/_sklearn_compat.py``),
checked with scikit-learn 1.6 to 1.9: what odeplug relies on still exists and behaves."""

from __future__ import annotations

import re
import warnings
from numbers import Integral
from pathlib import Path

import pytest
import sklearn
from packaging.version import Version
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


# Oldest scikit-learn odeplug supports (pyproject.toml's requirement) and newest one
# _sklearn_compat.py was read against.
MINIMUM, CHECKED = (1, 6), (1, 9)


def _minor(version: str) -> tuple[int, ...]:
    return Version(version).release[:2]


def test_installed_version_is_supported_and_newer_ones_are_not_failures():
    # Only the minimum is a requirement. A scikit-learn newer than the one checked is
    # no failure: the tests below check the behaviour odeplug relies on, and fail if it
    # changed; a warning asks someone to re-read _sklearn_compat.py and move CHECKED.
    assert _required_scikit_learn() == "scikit-learn>={}.{}".format(*MINIMUM)
    assert _minor(sklearn.__version__) >= MINIMUM
    if _minor(sklearn.__version__) > CHECKED:
        warnings.warn(f"scikit-learn {sklearn.__version__} is newer than the "
                      f"{CHECKED} that _sklearn_compat.py was checked against", stacklevel=1)
    assert [_minor(v) >= MINIMUM for v in ("1.5.2", "1.6.0rc1", "1.10.0", "2.0")] == \
        [False, True, True, True]


def _required_scikit_learn() -> str:
    """pyproject.toml's scikit-learn requirement (read as text: tomllib is 3.11+)."""
    path = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not path.exists():
        pytest.skip("not run from a source checkout")
    found = re.findall(r'"(scikit-learn[^"]*)"', path.read_text())
    assert len(found) == 1, found
    return found[0].replace(" ", "")


@pytest.mark.parametrize("params, bad", [(dict(n=0), "'n'"), (dict(kind="c"), "'kind'"),
                                         (dict(flag=1), "'flag'")])
def test_validate_params_raises_sklearns_error(params, bad):
    with pytest.raises(compat.InvalidParameterError, match=bad) as info:
        compat.validate_params(_Toy(**params))
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_valid_params_pass():
    compat.validate_params(_Toy(n=3, kind="b", flag=True))
