"""tudui: train, evaluate, explain, export and serve image classifiers with PyTorch.

    import tudui
    result = tudui.train(data="fashion-mnist", epochs=5)
    metrics = tudui.evaluate(result.best, data="fashion-mnist", split="test")
    preds = tudui.Predictor.from_path(result.best).predict(["shoe.png"], topk=3)

Everything here is `tudui.api`'s; it is imported on first use (with torch), keeping `tudui --help` quick.
"""
from .core import __version__
from .core.config import TrainConfig
from .core.errors import TuduiError

_API = ("train", "evaluate", "calibrate", "predict", "explain", "export", "benchmark", "serve", "convert", "summary",
        "Predictor", "RunResult", "create_model", "list_models", "register_model", "resolve_config", "default_callbacks",
        "tune", "runs")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tudui' has no attribute {name!r}")


__all__ = ["TrainConfig", "TuduiError", "__version__", *_API]
