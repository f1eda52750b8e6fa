"""The model file formats tudui reads, chosen by the file's suffix; `load_model` opens any of them.

    best.pt / a run directory      tudui checkpoint (core/checkpoint.py)
    model.onnx                     ONNX, run by onnxruntime on the CPU; preprocessing from its metadata_props
    model.torchscript              TorchScript; metadata in the archive's extra file `tudui.json`
    model.safetensors              weights, with the sidecar `model.safetensors.json` (architecture + DataSpec)
    model.xml (+ model.bin)        OpenVINO IR, run by the openvino runtime on the CPU; metadata in its rt_info

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
from ..core.checkpoint import INSTALL_EXPORT, check_arch, check_data, import_safetensors, load_checkpoint
from ..core.device import select_device
from ..core.errors import TuduiError
from ..core.pyfile import is_file_ref
from ..data import DataSpec
from ..models import build_model, get_model_info
from .int8 import import_openvino, openvino_metadata

CPU_RUNTIMES = ("onnx", "openvino")  # formats run by their own runtime on the CPU, whatever --device says
EXPORT_FORMAT = "tudui.export"  # the "format" entry of every export's metadata
TS_EXTRA_FILE = "tudui.json"  # name of the metadata file inside a TorchScript archive
SIDECAR_SUFFIX = ".json"  # model.safetensors -> model.safetensors.json


@dataclass
class LoadedModel:
    model: nn.Module  # normalised (B, C, H, W) float32 -> (B, num_classes) logits, in eval mode
    spec: DataSpec
    path: str
    format: str  # "checkpoint", "onnx", "torchscript", "safetensors" or "openvino"
    meta: dict = field(default_factory=dict)  # arch, training (val_split, seed), tudui_version, ...


def export_metadata(ckpt: dict) -> dict:
    """The flat metadata every export carries: DataSpec fields, architecture, how the split was made."""
    cfg = ckpt.get("config", {})
    return {"format": EXPORT_FORMAT, "tudui_version": __version__, **DataSpec.from_dict(ckpt["data"]).to_dict(),
            "arch": ckpt["arch"], "training": {"val_split": cfg.get("val_split", 0.1), "seed": cfg.get("seed", 0),
                                               "epoch": ckpt.get("epoch")},
            # the calibration temperature the logits are divided by (engine/calibration.py), when one was fitted: a
            # number, or a multi-label model's list of one per class (checked where it is read: temperature_of)
            **({"temperature": _temperature(ckpt["temperature"])} if ckpt.get("temperature") is not None else {}),
            # the validation scores' quantiles `--reject auto` reads (engine/rejection.py)
            **({"rejection": ckpt["rejection"]} if ckpt.get("rejection") else {})}


def _temperature(t):
    """A stored temperature as plain JSON: a float, or a list of floats (left as found where it is neither)."""
    if isinstance(t, (list, tuple)):
        return [float(v) if isinstance(v, (int, float)) else v for v in t]
    return float(t) if isinstance(t, (int, float)) else t


def _spec_from_meta(meta: dict, path: Path) -> DataSpec:
    missing = [k for k in ("classes", "img_size", "channels", "mean", "std") if k not in meta]
    if missing:
        raise TuduiError(f"{path} has no tudui metadata ({', '.join(missing)} missing); export it with `tudui export`")
    check_data(meta, path, "metadata")
    return DataSpec.from_dict(meta)


def check_fit(arch: dict, spec: DataSpec, shapes: dict[str, tuple], where: str | Path, build) -> None:
    """Refuse an `arch` whose declared sizes disagree with its DataSpec or with the weights' shapes, before the model
    is built for real: `build()` runs on the meta device (no memory), so a file that claims 4,000,000 classes over
    weights for 10 costs nothing. shapes: the file's {state_dict key: shape}."""
    for k, want, what in (("num_classes", spec.num_classes, "class names"), ("in_channels", spec.channels, "channels")):
        if arch[k] != want:
            raise TuduiError(f"{where} is not a usable tudui model: its architecture has {k} {arch[k]}, but its "
                             f"preprocessing names {want} {what}")
    if arch.get("source") or is_file_ref(arch["name"]):
        # A user's model: its file is imported (once per process) by this build, and importing it on the meta
        # device would leave its module-level tensors there; its sizes are checked by load_state_dict instead.
        return
    get_model_info(arch["name"])  # imports the builders' modules (torchvision) here, not on the meta device
    try:
        with torch.device("meta"):
            skeleton = build()
        need = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except TuduiError:
        raise
    except Exception:  # noqa: BLE001 - a builder that cannot run on the meta device: load_state_dict checks the sizes
        return
    got = {k: tuple(v) for k, v in shapes.items()}
    problems = [f"{k} is missing" for k in need if k not in got]
    problems += [f"{k} is not part of it" for k in got if k not in need]
    problems += [f"{k} is {list(got[k])} in the file, {list(need[k])} in the architecture"
                 for k in need if k in got and got[k] != need[k]]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TuduiError(f"{where} does not fit architecture {arch['name']} ({arch['num_classes']} classes, "
                         f"{arch['in_channels']} channel(s), {arch['img_size']} px): {problems[0]}{more}")


def check_runs(model: nn.Module, spec: DataSpec, where: str | Path, device: torch.device | str = "cpu") -> None:
    """One forward pass on a blank (1, C, S, S) input of the size the metadata declares: the model must run on it
    and give one finite logit per class name. Catches metadata that does not fit the weights (channels, size,
    too few class names) and damaged weights (NaN) at load, instead of on every image (or every request)."""
    c, size = spec.channels, spec.img_size
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, c, size, size, device=device))  # normalised zeros: the mean image
    except TuduiError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the model's own code raises on this input
        text = (str(e).strip().splitlines() or [""])[0][:200]
        raise TuduiError(f"{where} cannot classify a {c}x{size}x{size} input, the size its metadata declares "
                         f"({type(e).__name__}: {text}); its metadata does not fit its weights") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (1, spec.num_classes):
        raise TuduiError(f"{where} is not a usable tudui model: it outputs {list(shape) if shape else type(out).__name__}"
                         f" per image, but its metadata names {spec.num_classes} classes")
    if not torch.isfinite(out).all():
        raise TuduiError(f"{where} outputs NaN or infinity on a blank image: its weights are damaged (did its "
                         "training diverge?)")


def suffix_format(path: str | Path) -> str:
    name = str(path).lower()
    for fmt, ends in (("onnx", ".onnx"), ("torchscript", ".torchscript"), ("safetensors", ".safetensors"),
                      ("openvino", ".xml")):
        if name.endswith(ends):
            return fmt
    if name.endswith(".safetensors" + SIDECAR_SUFFIX):
        return "safetensors"
    return "checkpoint"


def runtime_device(path: str | Path, device: str = "auto") -> torch.device:
    """Where a model file runs: onnxruntime and OpenVINO run on the CPU here; the others go where `device` says."""
    return torch.device("cpu") if suffix_format(path) in CPU_RUNTIMES else select_device(device)


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
        loaded = {"onnx": _load_onnx, "torchscript": _load_torchscript, "openvino": _load_openvino}[fmt](path)
    if fmt not in CPU_RUNTIMES:
        loaded.model.to(device)
    check_runs(loaded.model, loaded.spec, loaded.path, "cpu" if fmt in CPU_RUNTIMES else device)
    return loaded


# --- checkpoint --------------------------------------------------------------------------------------------------------
def model_from_checkpoint(ckpt: dict, model_file: str | Path | None = None,
                          trust_code: bool = False) -> tuple[nn.Module, DataSpec]:
    """(model in eval mode with a loaded checkpoint's weights, its DataSpec)."""
    where = ckpt.get("path", "checkpoint")
    for k in ("model", "arch", "data"):
        if k not in ckpt:
            raise TuduiError(f"{where} is not a usable tudui model: it has no '{k}' entry")
    a, spec = ckpt["arch"], DataSpec.from_dict(ckpt["data"])

    def build() -> nn.Module:
        return build_model(a, model_file, Path(ckpt["path"]).parent if ckpt.get("path") else None, trust_code)

    check_fit(a, spec, {k: v.shape for k, v in ckpt["model"].items()}, where, build)
    model = build()
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise TuduiError(f"checkpoint {ckpt.get('path')} does not match architecture {a['name']}: "
                         f"{str(e).splitlines()[0]}") from e
    return model.eval(), spec


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
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()  # tudui's thread count (one per `serve` worker)
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
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
    spec = _spec_from_meta(meta, path)
    # The graph's fixed dimensions (ints; named ones are dynamic) must be what the metadata promises.
    inp, out = module.session.get_inputs()[0].shape, module.session.get_outputs()[0].shape
    for dims, i, want, what in ((inp, 1, spec.channels, "input channels"), (inp, 2, spec.img_size, "input height"),
                                (inp, 3, spec.img_size, "input width"), (out, 1, spec.num_classes, "outputs")):
        if len(dims) > i and isinstance(dims[i], int) and dims[i] != want:
            raise TuduiError(f"{path} is not a usable tudui model: its graph has {dims[i]} {what}, its metadata "
                             f"says {want}")
    return LoadedModel(module.eval(), spec, str(path), "onnx", meta)


def _check_graph_dims(path: Path, spec: DataSpec, inp: list, out: list) -> None:
    """The graph's fixed dimensions (ints; named or -1 ones are dynamic) must be what the metadata promises."""
    for dims, i, want, what in ((inp, 1, spec.channels, "input channels"), (inp, 2, spec.img_size, "input height"),
                                (inp, 3, spec.img_size, "input width"), (out, 1, spec.num_classes, "outputs")):
        if len(dims) > i and isinstance(dims[i], int) and dims[i] > 0 and dims[i] != want:
            raise TuduiError(f"{path} is not a usable tudui model: its graph has {dims[i]} {what}, its metadata "
                             f"says {want}")


# --- OpenVINO ----------------------------------------------------------------------------------------------------------
class OpenVinoModule(nn.Module):
    """An OpenVINO model compiled for the CPU behind the nn.Module interface (no gradients); a fixed batch size (1,
    without --dynamic-batch) is run in chunks like OnnxModule. Inference in fp32 (OpenVINO would otherwise pick bf16
    on CPUs that have it, and the export's accuracy was measured in fp32); int8 layers stay int8."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        ov = import_openvino()
        try:
            core = ov.Core()
            self.ov_model = core.read_model(str(path))
            self.compiled = core.compile_model(self.ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                      "PERFORMANCE_HINT": "LATENCY",
                                                                      "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        except Exception as e:  # noqa: BLE001 - openvino raises RuntimeError and its own types
            # openvino's first line names its own source file ("Exception from src/inference/..."): skip such lines
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from")]
            raise TuduiError(f"{path} is not a loadable OpenVINO model ({(lines or [type(e).__name__])[0][:200]})") \
                from None
        self.request = self.compiled.create_infer_request()
        shape = self.ov_model.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape.rank.is_static and shape[0].is_static else None
        self.metadata = openvino_metadata(self.ov_model)

    def dims(self) -> tuple[list, list]:
        def of(port) -> list:
            return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]

        return of(self.ov_model.inputs[0]), of(self.ov_model.outputs[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) float -> (B, K) float32, on x's device
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        step = self.fixed_batch or max(len(arr), 1)
        outs = [np.array(self.request.infer({0: arr[i:i + step]})[0], copy=True) for i in range(0, len(arr), step)]
        return torch.from_numpy(np.concatenate(outs)).to(x.device)


def _load_openvino(path: Path) -> LoadedModel:
    if not path.is_file():
        raise TuduiError(f"model file not found: {path}")
    if not path.with_suffix(".bin").is_file():
        raise TuduiError(f"{path.with_suffix('.bin')} not found: an OpenVINO model needs its weights ({path.stem}.bin) "
                         f"beside {path.name}")
    module = OpenVinoModule(path)
    spec = _spec_from_meta(module.metadata, path)
    _check_graph_dims(path, spec, *module.dims())
    return LoadedModel(module.eval(), spec, str(path), "openvino", module.metadata)


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
    check_arch(a, weights)
    spec = _spec_from_meta(meta, Path(weights))
    try:
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:  # reads the header only
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors' own errors for a damaged header
        raise TuduiError(f"{weights} is not a readable .safetensors file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None

    def build() -> nn.Module:
        return build_model(a, model_file, Path(weights).parent, trust_code)

    check_fit(a, spec, shapes, weights, build)
    model = build()
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
