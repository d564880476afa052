"""scikit-learn estimators built on odeplug's engines."""

from ._classifier import ODEClassifier

__all__ = ["ODEClassifier"]
