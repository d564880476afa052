"""scikit-learn estimators built on odeplug's engines."""

from ._classifier import ODEClassifier
from ._latent import LatentODERegressor

__all__ = ["LatentODERegressor", "ODEClassifier"]
