"""scikit-learn estimators built on odeplug's engines."""

from ._classifier import ODEClassifier
from ._density import CNFDensity

__all__ = ["CNFDensity", "ODEClassifier"]
