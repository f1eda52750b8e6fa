"""Models by name: `create_model("fast", num_classes=10, in_channels=1, img_size=28)`."""
from .registry import ModelInfo, count_parameters, create_model, get_model_info, list_models, register_model

__all__ = ["ModelInfo", "count_parameters", "create_model", "get_model_info", "list_models", "register_model"]
