"""`tudui export`: a checkpoint as ONNX, TorchScript or safetensors, proven to give the same answers.

Each export is written to a temporary file next to its destination, reloaded the
way a user would load it (onnxruntime, torch.jit.load, safetensors + sidecar),
and compared with the PyTorch model on sample inputs; only when the largest
logit difference is within tolerance and every argmax agrees is it renamed into
place. A failed or interrupted (Ctrl-C, SIGTERM) export leaves no file behind.

ONNX uses PyTorch's TorchScript-based exporter (`dynamo=False`): the default
torch.export-based exporter needs the extra `onnxscript` package, and for these
plain feed-forward CNNs the older exporter gives the same graph with no new
dependency. Its deprecation warning is silenced; the parity check is what
guards correctness either way.

Every file export is then scored on the training run's validation split beside the PyTorch model (inference/gate.py)
and refused when its top-1 falls more than `max_drop` points; `--int8` (ONNX Runtime's static quantisation, or NNCF's
for OpenVINO: inference/int8.py) is calibrated on class-balanced training images and passes the same gate.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..core.checkpoint import INSTALL_EXPORT, import_safetensors, load_checkpoint
from ..core.errors import TuduiError
from ..core.files import atomic_path
from ..core.options import ExportOptions
from ..data import DataSpec, normalize
from ..engine.signals import sigterm_as_interrupt
from . import formats, gate, int8 as q
from .hf import export_hf
from .formats import SIDECAR_SUFFIX, TS_EXTRA_FILE, build_from_safetensors, export_metadata, model_from_checkpoint

FORMATS = ("onnx", "torchscript", "safetensors", "hf", "openvino")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript", "safetensors": ".safetensors", "hf": "-hf",
          "openvino": ".xml"}
INT8_FORMATS = ("onnx", "openvino")
CALIB_IMAGES = ExportOptions.calib  # default --calib: training images the int8 ranges are measured on
MAX_DROP = ExportOptions.max_drop  # default --max-drop: points of validation top-1 an export may lose against PyTorch
TOLERANCE = 1e-4  # largest |logit difference| accepted for fp32 (absolute)


class ExportError(TuduiError):
    """The exported model does not match the PyTorch model (nothing was written)."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float  # largest |logit difference| between the export and PyTorch over the samples
    argmax_agree: int  # samples whose predicted class is the same
    n_samples: int
    files: list[Path] = field(default_factory=list)  # every file written (weights + sidecar for safetensors)
    opset: int | None = None
    accuracy: gate.Accuracy | None = None  # the validation figures (None: the images could not be read)
    quantization: dict | None = None  # int8: how it was quantised (also in the file's metadata)


def sample_inputs(spec: DataSpec, n: int = 8, seed: int = 0) -> torch.Tensor:
    """(n, C, S, S) normalised float32 batch of image-like inputs, deterministic.

    Smooth random shapes (low-resolution noise upsampled) plus pixel noise, as uint8
    put through the model's own `normalize`: values in the range real images
    give, rather than N(0, 1) noise that real data never produces. The first two
    are all black and all white (the extremes of the input range).
    """
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, spec.channels, 4, 4, generator=g) * 255  # (n, C, 4, 4) coarse structure
    x = nn.functional.interpolate(low, size=(spec.img_size, spec.img_size), mode="bilinear", align_corners=False)
    x = x + torch.randn(x.shape, generator=g) * 20  # texture: sigma 20 grey levels
    x = x.clamp(0, 255).round().to(torch.uint8)
    x[0], x[min(1, n - 1)] = 0, 255
    return normalize(x, spec)


def _compare(reference: torch.Tensor, got: torch.Tensor) -> tuple[float, int]:
    """(max |diff|, number of rows with the same argmax) for two (N, K) logit tensors."""
    got = got.float().cpu()
    if got.shape != reference.shape:
        raise ExportError(f"the exported model gives logits of shape {tuple(got.shape)}, PyTorch {tuple(reference.shape)}")
    diff = float((got - reference).abs().max())
    return diff, int((got.argmax(1) == reference.argmax(1)).sum())


@contextlib.contextmanager
def _exporter_output_dropped():
    """Drop what torch.onnx's C++ side writes to file descriptor 1 while it runs: on an unsupported operator it
    prints the whole Torch IR graph (80+ lines for VGG) before raising, and the error below already says what
    failed and what to do."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout at all: nothing to protect
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def onnx_pool_size(model: nn.Module, channels: int, img_size: int, max_size: int = 1024) -> int | None:
    """The smallest input side from `img_size` up at which every AdaptiveAvgPool2d's input is a multiple of its
    output, the one case the ONNX exporter can write (VGG's pool to 7x7 needs 7x7 feature maps: 224 px); None when
    no side up to `max_size` is. Shapes only: the passes run on the meta device."""
    meta = copy.deepcopy(model).to("meta").eval()
    pools = [m for m in meta.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    seen: list[bool] = []

    def check(mod, args, out):
        seen.append(all(i % o == 0 for i, o in zip(args[0].shape[-2:], out.shape[-2:]) if o))

    handles = [m.register_forward_hook(check) for m in pools]
    try:
        for side in range(img_size, max_size + 1):
            seen.clear()
            try:
                with torch.no_grad():
                    meta(torch.zeros(1, channels, side, side, device="meta"))
            except Exception:  # noqa: BLE001 - a size the model cannot take at all: try the next
                continue
            if all(seen):
                return side
        return None
    finally:
        for h in handles:
            h.remove()


# --- writers: (model, spec, meta, tmp path, options) -> opset or None ---------------------------------------------------
def _write_onnx(model: nn.Module, example: torch.Tensor, meta: dict, tmp: Path, dynamic_batch: bool,
                opset: int | None) -> int:
    try:
        import onnx
    except ImportError:
        raise TuduiError(f"ONNX export needs onnx and onnxruntime: {INSTALL_EXPORT}") from None
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings(), _exporter_output_dropped():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and tracer warnings
            torch.onnx.export(model, (example,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - unsupported operators / opsets surface as various types
        if "adaptive_avg_pool2d" in str(e):  # e.g. VGG below 224 px: AdaptiveAvgPool2d(7) over a 1x1 feature map
            c, size = example.shape[1], example.shape[-1]
            fit = onnx_pool_size(model, c, size)
            larger = f"--img-size {fit} (the smallest from {size} up at which it is)" if fit else "a larger --img-size"
            raise TuduiError(f"ONNX export failed{f' at opset {opset}' if opset else ''}: this model's adaptive "
                             f"pooling cannot be written to ONNX at {size}x{size} input (its input must be a "
                             f"multiple of its output size); train at {larger}, or export with --format "
                             "torchscript or safetensors") from None
        raise TuduiError(f"ONNX export failed{f' at opset {opset}' if opset else ''}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    proto = onnx.load(str(tmp))
    for key, value in meta.items():  # string -> JSON string, readable by any ONNX runtime
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.producer_name = "tudui (torch.onnx)"
    proto.doc_string = f"tudui image classifier: input (N, {meta['channels']}, {meta['img_size']}, " \
                       f"{meta['img_size']}) float32 normalised with mean/std from metadata; output logits"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _write_torchscript(model: nn.Module, example: torch.Tensor, meta: dict, tmp: Path, **_) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's FutureWarning (deprecated for torch.export) and tracer notes
        traced = torch.jit.trace(model, example, check_trace=False)  # our own check below is stricter
        torch.jit.save(traced, str(tmp), _extra_files={TS_EXTRA_FILE: json.dumps(meta)})


def _write_safetensors(model: nn.Module, example: torch.Tensor, meta: dict, tmp: Path, **_) -> None:
    save_file = import_safetensors().save_file
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt", "tudui": json.dumps(meta)})


WRITERS: dict[str, Callable] = {"onnx": _write_onnx, "torchscript": _write_torchscript,
                                "safetensors": _write_safetensors}


def _reload(fmt: str, tmp: Path, meta: dict, model_file: str | Path | None = None,
            trust_code: bool = False) -> nn.Module:
    """The written file loaded back the way `tudui predict` will load it."""
    if fmt == "safetensors":
        return build_from_safetensors(tmp, meta, model_file, trust_code)
    # A temp name has no telling suffix: load through the format's own loader.
    return {"onnx": formats._load_onnx, "torchscript": formats._load_torchscript,
            "openvino": formats._load_openvino}[fmt](tmp).model


def default_output(checkpoint_path: Path, fmt: str, int8: bool = False) -> Path:
    """runs/exp/best.pt -> runs/exp/best.onnx (or .torchscript, .safetensors, .xml; best-int8.onnx for int8; the
    folder best-hf for hf)."""
    if fmt == "hf" or int8:
        return checkpoint_path.with_name(checkpoint_path.stem + ("-int8" if int8 else "") + SUFFIX[fmt])
    return checkpoint_path.with_suffix(SUFFIX[fmt])


def _parity(format: str, reference: torch.Tensor, got: torch.Tensor, n: int, tolerance: float, log) -> tuple:
    """(max |logit diff|, argmax agreements) of an export's reloaded logits, said; an ExportError beyond tolerance."""
    diff, agree = _compare(reference, got)
    ok = diff <= tolerance and agree == n
    if log:
        log(f"parity ({format} vs PyTorch, {n} samples): max |logit diff| {diff:.3g} "
            f"(tolerance {tolerance:g}), same argmax {agree}/{n} -> {'ok' if ok else 'FAILED'}")
    if not ok:
        raise ExportError(f"parity check failed: max |logit diff| {diff:.3g} (tolerance {tolerance:g}), same "
                          f"argmax {agree}/{n}; nothing was written"
                          + ("; try another --opset" if format == "onnx" else ""))
    return diff, agree


def onnx_copy(model: nn.Module, spec: DataSpec, meta: dict, path: Path, tolerance: float = TOLERANCE) -> nn.Module:
    """`model` written to `path` as fp32 ONNX with a symbolic batch, loaded into ONNX Runtime and proven against the
    PyTorch model on sample inputs (an ExportError beyond `tolerance`, a TuduiError where it cannot be written);
    returns the ONNX Runtime module. Neither the validation gate nor the temp-file dance of `export_model`: the file
    is a server's private copy (inference/runtime.py), not something handed to users."""
    x = sample_inputs(spec)
    with torch.no_grad():
        reference = model(x).float()
        _write_onnx(model, x[:1], meta, path, dynamic_batch=True, opset=None)
        copy_ = formats.OnnxModule(path)
        _parity("onnx", reference, copy_(x), len(x), tolerance, None)
    return copy_


def _gate_images(cfg: dict, data: list | None, spec: DataSpec, int8: bool, log) -> list | None:
    """The validation batches the export is scored on; None (said as a warning) for an fp32 export whose run's data
    cannot be read here. Data given by --data, and every int8 export, must be readable."""
    try:
        return gate.validation_batches(cfg, data, spec)
    except TuduiError as e:
        if data or int8:
            raise TuduiError(f"cannot read the validation images the export is checked on ({e}); pass --data with "
                             "the data the model was trained on") from None
        if log:
            print(f"warning: not checked on validation images ({e}); pass --data with the data the model was "
                  "trained on to check it", file=sys.stderr)
        return None


def _restamp_torchscript(tmp: Path, meta: dict) -> None:
    """Rewrite a TorchScript archive's metadata file (the gate's figures are known only after it was reloaded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torch.jit.load(str(tmp), map_location="cpu")
        torch.jit.save(m, str(tmp), _extra_files={TS_EXTRA_FILE: json.dumps(meta)})


@contextlib.contextmanager
def _openvino_paths(out: Path):
    """(temp .xml path) in a hidden folder beside `out`; on a clean exit the .bin then the .xml are renamed into
    place (the model never appears without its weights); the folder is removed either way."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp = work / "model.xml"
        yield tmp
        os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_model(checkpoint: str | Path, format: str = "onnx", out: str | Path | None = None,
                 dynamic_batch: bool = False, opset: int | None = None, *, n_samples: int = 8,
                 tolerance: float = TOLERANCE, log: Callable[[str], None] | None = print,
                 model_file: str | Path | None = None, trust_code: bool = False, int8: bool = False,
                 calib: int = CALIB_IMAGES, max_drop: float = MAX_DROP, force: bool = False,
                 data: list | None = None) -> ExportResult:
    """Export `checkpoint` (a tudui checkpoint or run directory), prove parity and hold it to the accuracy gate;
    returns where, how close and what the gate measured.

    dynamic_batch: ONNX input/output batch dimension symbolic ("batch"); otherwise fixed at 1.
    opset: ONNX opset version (default: the exporter's).
    model_file, trust_code: which Python file a user's own model is rebuilt from, and whether a file the checkpoint
    names may run without the user's having named or trained with it (models/user.py build_from_source).
    int8: quantise (onnx, openvino), calibrated on `calib` class-balanced training images.
    max_drop, force: the largest validation top-1 drop (points) written without `force`.
    data: the data to take the validation (and calibration) images from [default: the run's own].
    """
    if format not in FORMATS:
        raise TuduiError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format not in ("onnx", "openvino") and (opset is not None or dynamic_batch):
        raise TuduiError("--opset and --dynamic-batch shape the ONNX graph, so apply to --format openvino and onnx only "
                         "(TorchScript traces are batch-size independent here, safetensors holds weights only)")
    if int8 and format not in INT8_FORMATS:
        raise TuduiError(f"--int8 applies to --format onnx or openvino, not {format}")
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    source = Path(ckpt["path"])
    model, spec = model_from_checkpoint(ckpt, model_file, trust_code)
    meta = export_metadata(ckpt)
    out = Path(out).expanduser() if out else default_output(source, format, int8)
    if out.resolve() == source.resolve():
        raise TuduiError(f"--out {out} is the checkpoint itself; choose another file name")
    if out.is_dir() and not (format == "hf" and (out / "config.json").is_file()):  # not an earlier hf export
        out = out / default_output(source, format, int8).name
    if format == "openvino" and out.suffix.lower() != ".xml":
        raise TuduiError(f"--out of an OpenVINO export is its .xml file (the weights go beside it as .bin), got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)

    x = sample_inputs(spec, n_samples)  # (n, C, S, S) normalised float32
    with torch.no_grad():
        reference = model(x).float()
    if format == "hf":  # a folder timm loads (inference/hf.py), checked through timm's own loader
        found: list = []

        def verify(ref: torch.Tensor, got: torch.Tensor) -> None:
            found.extend(_parity(format, ref, got, len(x), tolerance, log))

        with sigterm_as_interrupt():  # SIGTERM raises like Ctrl-C: the half-written folder is removed
            export_hf(model, ckpt, spec, meta, x, reference, out, verify)
        return ExportResult(out, format, found[0], found[1], len(x), sorted(out.iterdir()), None)
    cfg = ckpt.get("config", {})
    batches = _gate_images(cfg, data, spec, int8, log)
    calib_x = gate.calibration_images(cfg, data, spec, calib) if int8 else None
    example = x[:1]  # the traced/exported batch size (1 unless --dynamic-batch makes it symbolic)
    sidecar = Path(str(out) + SIDECAR_SUFFIX)
    fixed = None if dynamic_batch else 1
    quant = None
    # Both files are renamed into place only after the parity check and the gate pass, the sidecar first (its context
    # is the inner one): weights never appear without what they need. A failure anywhere writes nothing.
    # SIGTERM raises like Ctrl-C while the temp files exist, so atomic_path removes them (the default action would
    # end the process on the spot and leave them behind).
    with sigterm_as_interrupt(), (_openvino_paths(out) if format == "openvino" else atomic_path(out)) as tmp, \
            (atomic_path(sidecar) if format == "safetensors" else contextlib.nullcontext()) as tmp_sidecar, \
            tempfile.TemporaryDirectory(prefix="tudui-export-") as work:
        if format in ("onnx", "openvino"):
            # the fp32 ONNX graph first, proven against PyTorch; int8 and OpenVINO are made from it
            fp32 = tmp if format == "onnx" and not int8 else Path(work) / "fp32.onnx"
            with torch.no_grad():
                opset_used = _write_onnx(model, example, meta, fp32, dynamic_batch=dynamic_batch, opset=opset)
            with torch.no_grad():
                got = formats._load_onnx(fp32).model(x)
            diff, agree = _parity("onnx", reference, got, len(x), tolerance, log)
            if format == "onnx" and int8:
                quant = q.quantize_onnx(fp32, tmp, calib_x, fixed)
                q.set_onnx_metadata(tmp, meta | {"quantization": quant})
            elif format == "openvino":
                ov_model, quant = q.openvino_model(fp32, meta, calib_x, fixed)
                q.save_openvino(ov_model, tmp)
        else:
            with torch.no_grad():
                opset_used = WRITERS[format](model, example, meta, tmp, dynamic_batch=dynamic_batch, opset=opset)
        reloaded = _reload(format, tmp, meta, model_file, trust_code)
        if quant is None and format != "onnx":  # (fp32 ONNX was checked above: it is the file itself)
            with torch.no_grad():
                # A fixed-batch model is run one sample at a time by OnnxModule/OpenVinoModule; the rest see the batch.
                got = reloaded(x)
            diff, agree = _parity(format, reference, got, len(x), tolerance, log)
        elif quant is not None:  # int8 logits differ by design: said, and judged by the gate on real images
            with torch.no_grad():
                diff, agree = _compare(reference, reloaded(x))
            if log:
                log(f"int8 ({format}) vs PyTorch on {len(x)} samples: max |logit diff| {diff:.3g}, same argmax "
                    f"{agree}/{len(x)} (judged on the validation images below)")
        acc = None
        if batches is not None:
            what = f"{format}{' int8' if quant else ''}"
            acc = gate.check(gate.score(model, reloaded, batches, spec, max_drop), what, force)
            if log:
                log(acc.line(what))
            stamp = {"validation": acc.to_dict()}
            if format == "onnx":
                q.set_onnx_metadata(tmp, stamp)
            elif format == "openvino":
                q.set_openvino_metadata(ov_model, stamp)
                q.save_openvino(ov_model, tmp)
            elif format == "torchscript":
                _restamp_torchscript(tmp, meta | stamp)
            meta = meta | stamp
        if tmp_sidecar is not None:
            tmp_sidecar.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    files = [out] + ([sidecar] if format == "safetensors" else []) + \
        ([out.with_suffix(".bin")] if format == "openvino" else [])
    return ExportResult(out, format, diff, agree, len(x), files, opset_used if format == "onnx" else None, acc, quant)
