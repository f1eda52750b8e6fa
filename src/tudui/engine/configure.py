"""The TrainConfig a run uses, resolved the one way every caller (`tudui train`, `tudui tune`'s trials) shares."""
from __future__ import annotations

from pathlib import Path

from ..core.config import TrainConfig, load_yaml
from ..models.timm_models import entrypoint_name
from .resume import resume_config


def resolve_config(values: dict, config_file: str | Path | None = None) -> TrainConfig:
    """The TrainConfig a run uses: `config_file` (YAML) overridden by `values`, a `preset` filling the rest.

    With `values["resume"]` it is the run's own config.yaml with only the options that may change on resume
    (engine/resume.py); a run that has nothing left to do raises RunFinished.
    """
    values = dict(values)
    if entrypoint_name(values.get("model")):  # timm.models.resnet18 given as the model: timm:resnet18
        values["model"] = entrypoint_name(values["model"])
    if values.get("resume"):
        return resume_config(values | {"_config": config_file})
    base = load_yaml(config_file) if config_file else {}
    if config_file and "name" not in values:
        base.pop("name", None)  # a repeated run gets a new directory
    base.pop("resume", None)
    return TrainConfig.from_dict(base | values)
