"""Using a trained model: prediction (and later export and serving)."""
from .predictor import Prediction, Predictor, expand_paths

__all__ = ["Prediction", "Predictor", "expand_paths"]
