"""Search spaces: which training options a study varies, over which ranges or choices.

A YAML space maps TrainConfig options to a range or a list of choices:

    lr: {low: 0.0003, high: 0.03, log: true}     # a float range (log: sampled on a log scale)
    epochs: {low: 2, high: 6}                    # both ends integers: an integer range
    batch_size: [64, 128, 256]                   # choices
    augment: [crop-flip, trivialaugment]
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.config import TrainConfig
from ..core.errors import TuduiError
from ..data.factory import input_format
from ..models import count_parameters, create_model, list_models

# The default space: the options the defaults were tuned over, around today's defaults (core/config.py), and the
# model among tudui's own nets that fit the data (default_models), unless --model is given.
DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 3e-4, "high": 3e-2, "log": True},
    "weight_decay": {"low": 1e-4, "high": 0.3, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "batch_size": [64, 128, 256],
    "augment": ["auto", "none", "crop-flip", "trivialaugment"],
    "ema": [False, True],
}

# The default space's models: tudui's own nets (family "tudui": built for small images, trained from scratch) that
# take the data's input side and have at most this many parameters there: cheap to train for a few epochs each
# (fast, fast-mlp, fast-wide, fast-res; not fast-res-wide, --preset max's net, 1.7 M).
DEFAULT_MODEL_FAMILY = "tudui"
DEFAULT_MODEL_MAX_PARAMS = 1_000_000

# Options a trial cannot take from a space: where it is written and how it runs are the study's.
NOT_SEARCHABLE = {"data", "project", "name", "exist_ok", "resume", "nproc", "preset"}


@dataclass(frozen=True)
class Param:
    """One searched option: a range (low, high, log; int when both ends are) or choices."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def ends(self) -> list:
        """The values a trial may take at the edges: both ends of a range, every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def default_models(cfg: TrainConfig) -> list[str]:
    """The models `--space default` chooses among for the run `cfg` (the fixed options): none when --model (or
    --model-args) is given, else the registered nets of DEFAULT_MODEL_FAMILY whose smallest input is within the
    data's side and that have at most DEFAULT_MODEL_MAX_PARAMS parameters at the data's format, in registry order."""
    if not (isinstance(cfg.model, str) and cfg.model == "auto") or cfg.model_args:
        return []
    side, channels, classes = input_format(cfg)
    return [m.name for m in list_models() if m.family == DEFAULT_MODEL_FAMILY and m.min_size <= side
            and count_parameters(create_model(m.name, classes, channels, side)) <= DEFAULT_MODEL_MAX_PARAMS]


def default_space(cfg: TrainConfig) -> dict[str, Any]:
    """DEFAULT_SPACE, with `model` among default_models(cfg) where --model is not fixed."""
    models = default_models(cfg)
    return DEFAULT_SPACE | ({"model": models} if models else {})


def load_space(space: str | Path | dict, fixed: dict, cfg: TrainConfig | None = None) -> list[Param]:
    """The parameters of `space` ('default', a YAML file, or a dict), each checked against TrainConfig: an unknown
    option, an empty range or a value the option refuses is a TuduiError naming it. `fixed`: the run's other options
    (every searched value is checked with them); `cfg`: those options resolved, which the default space fits its
    models to (without it the default space searches no model)."""
    if isinstance(space, dict):
        spec, where = space, "the search space"
    elif str(space) == "default":
        spec, where = (default_space(cfg) if cfg is not None else DEFAULT_SPACE), "the default space"
    else:
        path = Path(space)
        if not path.is_file():
            raise TuduiError(f"search space file not found: {space} (give a YAML file, or --space default)")
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise TuduiError(f"search space {space} is not valid YAML: {str(e).splitlines()[0]}") from None
        where = f"search space {space}"
    if not isinstance(spec, dict) or not spec:
        raise TuduiError(f"{where} must map options to ranges or choices, e.g. 'lr: {{low: 0.001, high: 0.01, "
                         "log: true}' or 'batch_size: [64, 128]'")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    params = []
    for key, value in spec.items():
        name = str(key).replace("-", "_")
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            raise TuduiError(f"{where}: unknown option {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                             + "; the options are `tudui train --help`'s, as YAML keys")
        if name in NOT_SEARCHABLE:
            raise TuduiError(f"{where}: {key!r} cannot be searched (the study decides it); give it as a fixed option")
        params.append(_param(name, value, where))
    for p in params:  # every edge value with the fixed options: the option's own range and choices
        for v in p.ends():
            try:
                TrainConfig.from_dict({"data": "x"} | {k: w for k, w in fixed.items() if k != "data"} | {p.name: v})
            except TuduiError as e:
                raise TuduiError(f"{where}: {p.name} = {v!r} is not a value the option takes ({e})") from None
    return params


def _param(name: str, value: Any, where: str) -> Param:
    if isinstance(value, list):
        if not value:
            raise TuduiError(f"{where}: {name} has an empty list of choices; give at least one value")
        return Param(name, choices=tuple(value))
    if not isinstance(value, dict) or set(value) - {"low", "high", "log"} or not {"low", "high"} <= set(value):
        raise TuduiError(f"{where}: {name} must be a range {{low: A, high: B[, log: true]}} or a list of choices, "
                         f"got {value!r}")
    low, high, log = _number(value["low"]), _number(value["high"]), bool(value.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise TuduiError(f"{where}: {name}'s low and high must be numbers, got {low!r} and {high!r}")
    if not low < high:
        raise TuduiError(f"{where}: {name}'s range [{low}, {high}] is empty; low must be below high")
    if log and low <= 0:
        raise TuduiError(f"{where}: {name}'s log range must start above 0, got low = {low}")
    return Param(name, low, high, log)


def _number(v: Any) -> Any:
    """YAML reads `1e-4` (no dot) as text: such a number is taken as the float it spells."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v
