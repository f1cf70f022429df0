"""Hyperbolic deep metric learning for pytorch-metric-learning: Poincaré distances, layers into the ball, hyperbolic
SoftTriple, HIER and CHEST losses, HypHC's proxy regularizer. The core needs torch and pytorch-metric-learning only;
``datasets`` (readers) and ``utils`` (kNN for testers, metrics, DDP) are imported on first use."""

import importlib

__version__ = "0.2.0"

from . import distances, layers, losses, miners, poincare, regularizers  # noqa: E402,F401


def __getattr__(name):
    if name in ("backends", "datasets", "utils"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
