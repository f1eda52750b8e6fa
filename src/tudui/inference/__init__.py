"""Using a trained model: prediction (predictor.py), exports and their loading (export.py, formats.py),
conversion of other checkpoints (convert.py) and the HTTP server (server.py, with batching.py and budget.py)."""
from .predictor import Prediction, Predictor, expand_paths

__all__ = ["Prediction", "Predictor", "expand_paths"]
