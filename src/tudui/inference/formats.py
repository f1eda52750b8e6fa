"""The model file formats tudui reads, chosen by the file's suffix; `load_model` opens any of them.

    best.pt / a run directory      tudui checkpoint (core/checkpoint.py)
    model.onnx                     ONNX, run by onnxruntime on the CPU; preprocessing from its metadata_props
    model.torchscript              TorchScript; metadata in the archive's extra file `tudui.json`
    model.safetensors              weights, with the sidecar `model.safetensors.json` (architecture + DataSpec)

Every backend yields an nn.Module mapping a normalised (B, C, H, W) float batch to
(B, num_classes) logits, plus the DataSpec it was trained with, so Predictor,
evaluation and the server use one code path whatever the file.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..core import __version__
from ..core.checkpoint import INSTALL_EXPORT, import_safetensors, load_checkpoint
from ..core.device import select_device
from ..core.errors import TuduiError
from ..data import DataSpec
from ..models import build_model

EXPORT_FORMAT = "tudui.export"  # the "format" entry of every export's metadata
TS_EXTRA_FILE = "tudui.json"  # name of the metadata file inside a TorchScript archive
SIDECAR_SUFFIX = ".json"  # model.safetensors -> model.safetensors.json


@dataclass
class LoadedModel:
    model: nn.Module  # normalised (B, C, H, W) float32 -> (B, num_classes) logits, in eval mode
    spec: DataSpec
    path: str
    format: str  # "checkpoint", "onnx", "torchscript" or "safetensors"
    meta: dict = field(default_factory=dict)  # arch, training (val_split, seed), tudui_version, ...


def export_metadata(ckpt: dict) -> dict:
    """The flat metadata every export carries: DataSpec fields, architecture, how the split was made."""
    cfg = ckpt.get("config", {})
    return {"format": EXPORT_FORMAT, "tudui_version": __version__, **DataSpec.from_dict(ckpt["data"]).to_dict(),
            "arch": ckpt["arch"], "training": {"val_split": cfg.get("val_split", 0.1), "seed": cfg.get("seed", 0),
                                               "epoch": ckpt.get("epoch")}}


def _spec_from_meta(meta: dict, path: Path) -> DataSpec:
    missing = [k for k in ("classes", "img_size", "channels", "mean", "std") if k not in meta]
    if missing:
        raise TuduiError(f"{path} has no tudui metadata ({', '.join(missing)} missing); export it with `tudui export`")
    return DataSpec.from_dict(meta)


def suffix_format(path: str | Path) -> str:
    name = str(path).lower()
    for fmt, ends in (("onnx", ".onnx"), ("torchscript", ".torchscript"), ("safetensors", ".safetensors")):
        if name.endswith(ends):
            return fmt
    if name.endswith(".safetensors" + SIDECAR_SUFFIX):
        return "safetensors"
    return "checkpoint"


def runtime_device(path: str | Path, device: str = "auto") -> torch.device:
    """Where a model file runs: onnxruntime runs on the CPU here; the others go where `device` says."""
    return torch.device("cpu") if suffix_format(path) == "onnx" else select_device(device)


def load_model(path: str | Path, device: torch.device | str = "cpu", model_file: str | Path | None = None,
               trust_code: bool = False) -> LoadedModel:
    """Any tudui model file -> LoadedModel on `device` (ONNX always runs on the CPU).

    model_file: where the Python file of a user's own model is now, when it has moved since training
    (checkpoints and safetensors need the code; ONNX and TorchScript carry the whole graph).
    trust_code: import the Python file the model names even if the user neither named it nor trained with it
    here (models/user.py build_from_source).
    """
    fmt = suffix_format(path)
    path = Path(path).expanduser()
    if fmt == "checkpoint":
        loaded = _load_checkpoint(path, model_file, trust_code)
    elif fmt == "safetensors":
        loaded = _load_safetensors(path, model_file, trust_code)
    else:
        loaded = {"onnx": _load_onnx, "torchscript": _load_torchscript}[fmt](path)
    if fmt != "onnx":
        loaded.model.to(device)
    return loaded


# --- checkpoint --------------------------------------------------------------------------------------------------------
def model_from_checkpoint(ckpt: dict, model_file: str | Path | None = None,
                          trust_code: bool = False) -> tuple[nn.Module, DataSpec]:
    """(model in eval mode with a loaded checkpoint's weights, its DataSpec)."""
    a = ckpt["arch"]
    model = build_model(a, model_file, Path(ckpt["path"]).parent if ckpt.get("path") else None, trust_code)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TuduiError(f"checkpoint {ckpt.get('path')} does not match architecture {a['name']}: "
                         f"{str(e).splitlines()[0]}") from e
    return model.eval(), DataSpec.from_dict(ckpt["data"])


def _load_checkpoint(path: Path, model_file: str | Path | None = None, trust_code: bool = False) -> LoadedModel:
    ckpt = load_checkpoint(path, map_location="cpu")
    model, spec = model_from_checkpoint(ckpt, model_file, trust_code)
    return LoadedModel(model, spec, ckpt["path"], "checkpoint", export_metadata(ckpt))


# --- ONNX --------------------------------------------------------------------------------------------------------------
def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise TuduiError(f"running .onnx models needs onnxruntime: {INSTALL_EXPORT}") from None
    return onnxruntime


class OnnxModule(nn.Module):
    """An onnxruntime session behind the nn.Module interface (CPU only, no gradients).

    A model exported without --dynamic-batch has a fixed batch size (1); larger
    batches are run in chunks of that size, so callers need not care.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        ort = import_onnxruntime()
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise TuduiError(f"{path} is not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        batch = inp.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) float -> (B, K) float32, on x's device
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.fixed_batch or max(len(arr), 1)
        outs = [self.session.run(None, {self.input_name: arr[i:i + step]})[0] for i in range(0, len(arr), step)]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)


def _load_onnx(path: Path) -> LoadedModel:
    if not path.is_file():
        raise TuduiError(f"model file not found: {path}")
    module = OnnxModule(path)
    try:
        meta = {k: json.loads(v) for k, v in module.metadata.items()}
    except json.JSONDecodeError:
        raise TuduiError(f"{path} has metadata that is not tudui's (not JSON); export it with `tudui export`") from None
    return LoadedModel(module.eval(), _spec_from_meta(meta, path), str(path), "onnx", meta)


# --- TorchScript -------------------------------------------------------------------------------------------------------
def _load_torchscript(path: Path) -> LoadedModel:
    if not path.is_file():
        raise TuduiError(f"model file not found: {path}")
    extra = {TS_EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except RuntimeError as e:
        raise TuduiError(f"{path} is not a loadable TorchScript archive ({str(e).splitlines()[0][:200]})") from None
    try:
        meta = json.loads(extra[TS_EXTRA_FILE] or "{}")
    except json.JSONDecodeError:
        meta = {}
    return LoadedModel(model.eval(), _spec_from_meta(meta, path), str(path), "torchscript", meta)


# --- safetensors + JSON sidecar ----------------------------------------------------------------------------------------
def build_from_safetensors(weights: str | Path, meta: dict, model_file: str | Path | None = None,
                           trust_code: bool = False) -> nn.Module:
    """The architecture named in `meta` with the tensors of `weights`, in eval mode."""
    load_file = import_safetensors().load_file
    a = meta["arch"]
    model = build_model(a, model_file, Path(weights).parent, trust_code)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # noqa: BLE001 - safetensors' header errors and load_state_dict's mismatches
        raise TuduiError(f"{weights} does not fit architecture {a['name']}: {str(e).splitlines()[0][:200]}") from None
    return model.eval()


def _load_safetensors(path: Path, model_file: str | Path | None = None, trust_code: bool = False) -> LoadedModel:
    if str(path).endswith(SIDECAR_SUFFIX):
        path = Path(str(path)[: -len(SIDECAR_SUFFIX)])
    sidecar = Path(str(path) + SIDECAR_SUFFIX)
    for p in (path, sidecar):
        if not p.is_file():
            raise TuduiError(f"{p} not found: a .safetensors export needs its weights and the sidecar "
                             f"{sidecar.name} (architecture and preprocessing) side by side")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TuduiError(f"{sidecar} is not valid JSON ({e})") from None
    if "arch" not in meta:
        raise TuduiError(f"{sidecar} has no architecture ('arch'); export it with `tudui export --format safetensors`")
    spec = _spec_from_meta(meta, sidecar)
    return LoadedModel(build_from_safetensors(path, meta, model_file, trust_code), spec, str(path), "safetensors",
                       meta)
