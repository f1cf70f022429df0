"""Hyperbolic deep metric learning for pytorch-metric-learning."""

__version__ = "0.1.0"

from . import datasets, distances, layers, losses, miners, poincare, regularizers, utils  # noqa: E402,F401
