"""Models by name: `create_model("fast", num_classes=10, in_channels=1, img_size=28)`."""
from .registry import (ModelInfo, build_model, count_parameters, create_model, get_model_info, list_models, make_arch,
                       register_model)

__all__ = ["ModelInfo", "build_model", "make_arch", "count_parameters", "create_model", "get_model_info", "list_models", "register_model"]
