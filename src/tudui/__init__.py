"""tudui: train, evaluate, explain, export and serve image classifiers with PyTorch.

    import tudui
    result = tudui.train(data="fashion-mnist", epochs=5)
    metrics = tudui.evaluate(result.best, data="fashion-mnist", split="test")
    preds = tudui.Predictor.from_checkpoint(result.best).predict(["shoe.png"], topk=3)
"""
__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .errors import TuduiError  # noqa: E402


def __getattr__(name: str):
    # Heavy imports (torch, torchvision) happen on first use, keeping `tudui --help` fast.
    if name == "train":
        from .engine.trainer import train
        return train
    if name == "evaluate":
        from .engine.evaluator import evaluate_checkpoint
        return evaluate_checkpoint
    if name == "Predictor":
        from .inference.predictor import Predictor
        return Predictor
    if name in ("create_model", "list_models", "register_model"):
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module 'tudui' has no attribute {name!r}")


__all__ = ["TrainConfig", "TuduiError", "train", "evaluate", "Predictor", "create_model", "list_models",
           "register_model", "__version__"]
