"""Models by name: `create_model("fast", num_classes=10, in_channels=1, img_size=28)`.

registry.py holds the table and imports no model; the modules below register their builders when imported here
(as timm and torchvision register theirs), so every model is known once `tudui.models` is imported.
"""
from . import course, fast, timm_models, zoo  # noqa: F401  (importing registers the builders)
from .registry import (ModelInfo, build_model, count_parameters, create_model, get_model_info, list_models, make_arch,
                       register_model, register_source)
from .surgery import adapt_first_conv, head_path, load_weights, replace_head

__all__ = ["ModelInfo", "build_model", "make_arch", "count_parameters", "create_model", "get_model_info", "list_models",
           "register_model", "register_source", "head_path", "replace_head", "adapt_first_conv", "load_weights"]
