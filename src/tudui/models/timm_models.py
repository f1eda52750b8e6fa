"""timm's architectures as one more model source: `--model timm:NAME` (any name `timm.list_models()` knows, with
an optional pretrained tag: `timm:convnext_nano.in12k_ft_in1k`) and `--model local-dir:FOLDER` (a folder timm's
`create_model("local-dir:FOLDER")` loads: `config.json` + `model.safetensors`, as `tudui export --format hf` writes).

timm builds the model itself: the class count and input channels go through its `num_classes`/`in_chans` (timm
adapts a pretrained first convolution), `--model-args` reach `timm.create_model` (drop_path_rate=0.1, ...), and the
weights' `pretrained_cfg` (mean/std, input size, crop ratio, interpolation) is read without building anything, so the
data's DataSpec can take it before any image is decoded. Weights: `DEFAULT` or a tag through timm's Hugging Face Hub
cache, or a state_dict file in timm's naming or in another naming whose tensors line up in order and shape.

timm is optional (`pip install 'tudui[timm]'`) and imported only when a `timm:` or `local-dir:` model is named.
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn as nn

from ..core.checkpoint import read_weights
from ..core.console import shown
from ..core.errors import TuduiError
from .registry import ModelInfo, register_source
from .surgery import load_weights

TIMM, LOCAL = "timm:", "local-dir:"
INSTALL = "pip install 'tudui[timm]'"
MAPPING = "_tudui_weights_mapping"  # where a by-order mapping is left on the model for take_weights_mapping


def import_timm():
    """The timm module, or one line saying how to install it."""
    try:
        import timm
    except ImportError:
        raise TuduiError(f"timm models need the timm package, which is not installed: {INSTALL}") from None
    return timm


def is_timm(name) -> bool:
    return isinstance(name, str) and name.startswith((TIMM, LOCAL))


def split_name(name: str) -> tuple[str, str | None]:
    """'timm:resnet18.a1_in1k' -> ('resnet18', 'a1_in1k'); 'timm:resnet18' -> ('resnet18', None)."""
    arch, _, tag = name.removeprefix(TIMM).partition(".")
    return arch, tag or None


def _local_config(name: str) -> dict:
    folder = Path(name.removeprefix(LOCAL)).expanduser()
    path = folder / "config.json"
    if not path.is_file():
        raise TuduiError(f"--model {name}: {shown(path)} not found; a local-dir: model is a folder with config.json and "
                         "model.safetensors (as `tudui export RUN --format hf` writes)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TuduiError(f"--model {name}: {shown(path)} is not readable JSON ({e})") from None


def check_name(name: str) -> None:
    """An unknown architecture or tag is one line with the close names timm knows."""
    if name.startswith(LOCAL):
        _local_config(name)
        return
    timm = import_timm()
    arch, tag = split_name(name)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(TIMM + c for c in close)}? " if close else ""
        raise TuduiError(f"unknown timm model '{arch}'; {hint}`tudui models --timm '*{arch[:4]}*'` lists the names "
                         "timm knows")
    if tag and f"{arch}.{tag}" not in timm.list_pretrained(f"{arch}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{arch}.*")]
        close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.4) or tags[:3]
        raise TuduiError(f"timm has no pretrained weights '{arch}.{tag}'"
                         + (f"; its tags include {', '.join(close)}" if close else f"; {arch} has no pretrained tags"))


def pretrained_cfg(name: str) -> dict:
    """The weights' pretrained_cfg as a dict (mean, std, input_size, crop_pct, interpolation, hf_hub_id, ...), read
    from timm's tables (or a local-dir's config.json) without building the model."""
    if name.startswith(LOCAL):
        config = _local_config(name)
        return {"architecture": config.get("architecture"), **(config.get("pretrained_cfg") or {}),
                "source": f"{name.removeprefix(LOCAL)}/config.json"}
    timm = import_timm()
    arch, tag = split_name(name)
    cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    return cfg.to_dict() if cfg is not None else {}


def weights_kind(name: str, weights: str | None) -> str | None:
    """Where a timm model's initial weights come from: 'hub' (--weights DEFAULT, or a tag in the name without
    --weights: timm's Hugging Face Hub cache), 'local' (a local-dir: folder's own), 'file' (--weights FILE), None."""
    if weights is not None and weights.upper() != "DEFAULT":
        return "file"
    if name.startswith(LOCAL):  # the folder's own weights (DEFAULT names them too)
        return "local"
    if weights is not None or split_name(name)[1]:
        return "hub"
    return None


def arch_name(name: str) -> str:
    """The name a checkpoint rebuilds the model by: 'timm:ARCH', without the tag (its weights are the run's own) and,
    for a local-dir: folder, the architecture its config.json names (predict does not need the folder)."""
    if name.startswith(LOCAL):
        return TIMM + str(_local_config(name)["architecture"])
    return TIMM + split_name(name)[0]


def hf_folder(weights: str | None) -> bool:
    """Whether --weights names a folder timm loads (config.json + model.safetensors: `tudui export --format hf`)."""
    if not weights:
        return False
    folder = Path(weights).expanduser()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _state_of(weights: str) -> dict[str, torch.Tensor]:
    state = read_weights(Path(weights).expanduser() / "model.safetensors" if hf_folder(weights) else weights)
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_by_order(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> tuple[dict, list]:
    """`state` under `model`'s names: as saved when the names are timm's, else tensor by tensor in order, which needs
    the same number of tensors with the same shapes except the head (another class count) and the first conv
    (another channel count). Returns (state, mapping [(file name, model name)], empty when the names were timm's)."""
    own = model.state_dict()
    if sum(k in own for k in state) >= len(own) // 2:
        return state, []
    src, dst = list(state.items()), list(own.items())
    head = {n + ".weight" for n in _classifier_names(model)} | {n + ".bias" for n in _classifier_names(model)}
    counts = f" (the file has {len(src)} tensors under other names, the model {len(dst)})" if len(src) != len(dst) \
        else ""
    for i, ((sk, sv), (dk, dv)) in enumerate(zip(src, dst)):
        first_conv = i < 2 and sv.dim() == dv.dim() == 4 and sv.shape[0] == dv.shape[0] and \
            sv.shape[2:] == dv.shape[2:]  # another input channel count: load_weights adapts it
        if sv.shape != dv.shape and dk not in head and not first_conv:
            raise TuduiError(f"weights {shown(source)} do not fit this model: tensor {i + 1} is {sk} "
                             f"{tuple(sv.shape)} in the file but {dk} {tuple(dv.shape)} in the model{counts}; pass "
                             "weights of the same architecture")
    if counts:
        n = min(len(src), len(dst))
        extra = f"{src[n][0]} is tensor {n + 1} of the file, the model has no more" if len(src) > n else \
            f"the model's tensor {n + 1}, {dst[n][0]}, has none in the file"
        raise TuduiError(f"weights {shown(source)} do not fit this model: the first {n} tensors line up in order and "
                         f"shape but {extra}{counts}; pass weights of the same architecture")
    return {dk: sv for (_, sv), (dk, _) in zip(src, dst)}, [(sk, dk) for (sk, _), (dk, _) in zip(src, dst)]


def _classifier_names(model: nn.Module) -> list[str]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return [n for n, m in model.named_modules() if head is not None and m is head]


def take_weights_mapping(model: nn.Module) -> list | None:
    return model.__dict__.pop(MAPPING, None)


def offline_error(name: str, cfg: dict, err: Exception) -> TuduiError:
    """Pretrained weights timm could not fetch: the file to get and the folder to put it in, on one line."""
    from huggingface_hub import constants

    hub = cfg.get("hf_hub_id")
    filename = cfg.get("hf_hub_filename") or "model.safetensors"
    if hub:
        repo_dir = Path(constants.HF_HUB_CACHE) / f"models--{hub.replace('/', '--')}"
        where = (f"download https://huggingface.co/{hub}/resolve/main/{filename} where there is a network and pass "
                 f"--weights FILE, or fill timm's Hugging Face cache folder {repo_dir} (`hf download {hub}`)")
    else:
        where = f"download {cfg.get('url') or 'the weights'} and pass --weights FILE"
    text = str(err).strip()
    first = text.splitlines()[0].split(". ")[0][:160] if text else type(err).__name__
    return TuduiError(f"could not get {name}'s pretrained weights ({first}); {where}")


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host takes a TCP connection within `timeout_s` (behind a proxy: assumed so).
    Without a network huggingface_hub retries each request for about a minute, printing a warning at every try."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_session():
    """Around timm's download: offline (the Hub cache only) when the Hub cannot be reached, and huggingface_hub's
    retry warnings kept off the console (a failure is one line: offline_error)."""
    from huggingface_hub import constants

    offline, log = constants.HF_HUB_OFFLINE, logging.getLogger("huggingface_hub")
    level = log.level
    if not offline and not _hub_reachable():
        constants.HF_HUB_OFFLINE = True
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = offline
        log.setLevel(level)


def build_timm(name: str, num_classes: int, in_channels: int, img_size: int, weights: str | None = None,
               **kwargs) -> nn.Module:
    """timm.create_model for `num_classes` outputs and `in_channels` inputs, with initial weights: None (random),
    'DEFAULT' (the tag in the name, else timm's default tag; through timm's Hugging Face Hub cache) or a file."""
    timm = import_timm()
    check_name(name)
    cfg = pretrained_cfg(name)
    arch = name if name.startswith(LOCAL) else name.removeprefix(TIMM)
    size = (cfg.get("input_size") or (3, 0, 0))[-1]
    if cfg.get("fixed_input_size") and size != img_size and "img_size" not in kwargs:
        kwargs["img_size"] = img_size  # a ViT's position embedding is sized for its input (timm resamples it)
    local = name.startswith(LOCAL)
    download = weights_kind(name, weights) in ("hub", "local")
    args = dict(num_classes=num_classes, in_chans=in_channels, **kwargs)
    try:
        if download and not local:
            try:
                with _hub_session():
                    model = timm.create_model(arch, pretrained=True, **args)
            except (OSError, RuntimeError, ValueError) as e:  # no network, HF_HUB_OFFLINE=1, a missing cache file
                raise offline_error(name, cfg, e) from None
        else:
            model = timm.create_model(arch, pretrained=local and download, **args)
    except TuduiError:
        raise
    except TypeError as e:  # a --model-args key the architecture does not take
        raise TuduiError(f"timm could not build {name} with {', '.join(f'{k}={v!r}' for k, v in kwargs.items())}: "
                         f"{e}") from None
    if weights and not download:
        state, mapping = map_by_order(model, _state_of(weights), weights)
        load_weights(model, state, weights)
        if mapping:
            model.__dict__[MAPPING] = mapping
    return model


def entrypoint_name(fn) -> str | None:
    """'timm:resnet18' for one of timm's own builder functions given to the library as the model
    (`tudui.train(model=timm.models.resnet18)`), which takes timm's in_chans, not in_channels; else None."""
    timm = sys.modules.get("timm")  # such a function exists only once timm is imported
    name = getattr(fn, "__name__", None)
    if timm is None or not inspect.isfunction(fn) or not str(getattr(fn, "__module__", "")).startswith("timm.") \
            or not isinstance(name, str) or not timm.is_model(name):
        return None
    return TIMM + name if timm.models.model_entrypoint(name) is fn else None


def instance_name(model: nn.Module, num_classes: int, in_channels: int, img_size: int) -> str | None:
    """'timm:ARCH' for a model timm built (`timm.create_model("ARCH", ...)` given to the library as it is) when timm
    rebuilds that architecture for this data with the same tensors, names and shapes, so predict, export and serve
    rebuild it as they do `--model timm:ARCH`; None for any other model (it stays the user's own)."""
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if not type(model).__module__.startswith("timm.") or not isinstance(arch, str):
        return None
    try:
        with torch.device("meta"):  # shapes only
            rebuilt = build_timm(TIMM + arch, num_classes, in_channels, img_size)
    except Exception:  # noqa: BLE001 - an architecture timm does not rebuild this way: the user's own model
        return None
    same = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return TIMM + arch if same else None


def _info(name: str) -> ModelInfo:
    check_name(name)
    cfg = pretrained_cfg(name)
    size = (cfg.get("input_size") or (3, 224, 224))[-1]

    def builder(num_classes: int, in_channels: int, img_size: int, weights: str | None = None, **kwargs):
        return build_timm(name, num_classes, in_channels, img_size, weights, **kwargs)

    return ModelInfo(name, builder, f"timm's {name.removeprefix(TIMM)}", "timm", 1, size)


def _suggest(name: str) -> list[str]:
    """'timm:convnext_nano' for a plain `--model convnext_nano` that timm knows (nothing when timm is not installed)."""
    try:
        import timm
    except ImportError:
        return []
    return [TIMM + name] if timm.is_model(name.partition(".")[0]) else []


register_source(TIMM, _info, _suggest)
register_source(LOCAL, _info)


def list_timm(pattern: str) -> list[tuple[str, int, bool]]:
    """(name, parameters at 1000 classes, whether timm knows pretrained weights) for each name matching `pattern`
    (fnmatch wildcards; a bare word matches anywhere in the name). Built on the meta device: nothing is allocated."""
    timm = import_timm()
    pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = timm.list_models(pat)
    with_weights = {n.partition(".")[0] for n in timm.list_pretrained(pat)} | set(timm.list_models(pat, pretrained=True))
    rows = []
    for n in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(n)
            params = sum(p.numel() for p in model.parameters())
        except Exception:  # noqa: BLE001 - an architecture that cannot be built on the meta device: count unknown
            params = -1
        rows.append((n, params, n in with_weights))
    return rows

