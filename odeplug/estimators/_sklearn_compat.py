"""scikit-learn's private API that odeplug's estimators use, in one place.

scikit-learn's declarative parameter validation (``_parameter_constraints`` checked by
``BaseEstimator._validate_params``) is what its own estimators use, and what gives a
user scikit-learn's messages (``InvalidParameterError``, a ``ValueError`` and
``TypeError``); it lives in a private module. Every touch is here, tested in
``tests/estimators/test_sklearn_compat.py`` (checked with scikit-learn 1.6 to 1.9).
"""

from __future__ import annotations

from sklearn.utils._param_validation import (
    HasMethods,
    Interval,
    InvalidParameterError,
    Options,
    StrOptions,
)

__all__ = ["HasMethods", "Interval", "InvalidParameterError", "Options", "StrOptions",
           "validate_params"]


def validate_params(estimator) -> None:
    """Check ``estimator.get_params()`` against its ``_parameter_constraints``."""
    estimator._validate_params()
