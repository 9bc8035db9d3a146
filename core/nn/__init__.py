"""backprop's engine: a small deep-learning library in NumPy alone.

    from core.nn import Network, train
    net = Network.from_spec(model_spec, seed=0)
    result = train(net, X, y, {"epochs": 50, "optimizer": {"type": "adam"}})
    net.forward(X_new)
"""

from .layers import LAYERS
from .network import Network, check_model_spec
from .spec import SpecError
from .training import FitResult, Trainer, TrainingDiverged, check_training_spec, train

__all__ = ["LAYERS", "FitResult", "Network", "SpecError", "Trainer", "TrainingDiverged",
           "check_model_spec", "check_training_spec", "train"]
