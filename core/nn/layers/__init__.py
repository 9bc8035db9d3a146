"""Layer types. Importing this package registers every layer in LAYERS."""

from . import conv, dense, preprocessing, recurrent, regularization, residual  # noqa: F401
from .base import LAYERS, Layer, ShapeError, register

__all__ = ["LAYERS", "Layer", "ShapeError", "register"]
