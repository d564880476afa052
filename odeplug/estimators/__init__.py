"""scikit-learn estimators built on odeplug's engines."""

from ._classifier import ODEClassifier
from ._density import CNFDensity
from ._latent import LatentODERegressor

__all__ = ["CNFDensity", "LatentODERegressor", "ODEClassifier"]
