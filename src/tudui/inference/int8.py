"""int8 and OpenVINO exports: an fp32 ONNX graph quantised by ONNX Runtime, or converted (and quantised by NNCF) for
the OpenVINO runtime.

ONNX int8 is ONNX Runtime's static quantisation in the QDQ format (QuantizeLinear/DequantizeLinear pairs around
each quantised operator, which every ONNX runtime reads), int8 weights per output channel, uint8 activations whose
ranges come from running the calibration images (min/max). OpenVINO int8 is NNCF's post-training quantisation of
the converted model on the same images. Both are then held to the accuracy gate (inference/gate.py) like any export.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..core.errors import TuduiError

INSTALL_OPENVINO = "pip install 'tudui[openvino]' (the openvino runtime and nncf)"
OV_META = "tudui"  # rt_info section of an OpenVINO model that holds tudui's metadata, key by key (JSON strings)


def count_int8_weights(path: str | Path) -> tuple[int, int]:
    """(int8 initialisers, float initialisers with 2+ dimensions) of an ONNX file: an 'int8' file with no int8
    weights (a quantiser that silently left the model in fp32) is refused by the caller."""
    import onnx

    proto = onnx.load(str(path))
    i8 = sum(1 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2)
    f32 = sum(1 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2)
    return i8, f32


def quantize_onnx(fp32: Path, out: Path, calib: torch.Tensor, fixed_batch: int | None) -> dict:
    """Write the int8 QDQ model of the fp32 ONNX file `fp32` to `out`, calibrated on `calib` ((N, C, S, S)
    normalised float32); returns the `quantization` metadata entry. A graph without int8 weights is an error."""
    try:
        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise TuduiError("--int8 needs onnxruntime's quantisation tools: pip install 'tudui[export]'") from None
    step = fixed_batch or 32

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.chunks = iter([calib[i:i + step].numpy() for i in range(0, len(calib), step)])

        def get_next(self):
            chunk = next(self.chunks, None)
            return None if chunk is None else {"input": chunk}

    with tempfile.TemporaryDirectory(prefix="tudui-int8-") as work:
        pre = Path(work) / "pre.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # the quantiser logs each step at INFO/WARNING through the root logger
            try:
                # shape inference and graph optimisation (Conv+BN folded) first, as onnxruntime recommends
                quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
                quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
            except Exception as e:  # noqa: BLE001 - the quantiser raises assorted types for unsupported graphs
                raise TuduiError(f"int8 quantisation failed: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}"
                                 "; export fp32 (without --int8) instead") from None
            finally:
                root.setLevel(level)
    i8, f32 = count_int8_weights(out)
    if i8 == 0:
        raise TuduiError(f"int8 quantisation left no int8 weights in the model ({f32} float weight tensors); export "
                         "fp32 (without --int8) instead")
    return {"dtype": "int8", "method": "onnxruntime static, QDQ, per-channel int8 weights, uint8 activations, "
                                      "min/max calibration", "calibration_images": len(calib),
            "int8_weights": i8, "float_weights": f32}


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def set_onnx_metadata(path: Path, entries: dict) -> None:
    """Set (add or replace) metadata_props of an ONNX file, each value as a JSON string; what is there already is
    kept, except values that are not JSON (the quantiser's own marks, which tudui's loader would refuse)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries and _is_json(p.value)]
    del proto.metadata_props[:]
    for key, value in kept + [(k, json.dumps(v, ensure_ascii=False)) for k, v in entries.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


# --- OpenVINO ------------------------------------------------------------------------------------------------------
def import_openvino():
    try:
        import openvino
    except ImportError:
        raise TuduiError(f"OpenVINO models need the openvino runtime: {INSTALL_OPENVINO}") from None
    return openvino


def openvino_model(onnx_path: Path, meta: dict, calib: torch.Tensor | None, fixed_batch: int | None):
    """The OpenVINO model of an fp32 ONNX file, int8 through NNCF when `calib` is given; tudui's metadata in its
    rt_info. Returns (ov.Model, quantization entry or None)."""
    ov = import_openvino()
    model = ov.convert_model(str(onnx_path))
    quant = None
    if calib is not None:
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # nncf's import: "No CUDA runtime"
        try:
            import nncf
        except ImportError:
            raise TuduiError(f"OpenVINO int8 needs nncf: {INSTALL_OPENVINO}") from None
        step = fixed_batch or 32
        items = [calib[i:i + step].numpy() for i in range(0, len(calib), step)]
        logging.getLogger("nncf").setLevel(logging.ERROR)
        # NNCF draws rich progress bars on stdout even when it is no terminal: kept out of tudui's output
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                model = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items),
                                      preset=nncf.QuantizationPreset.PERFORMANCE)
            except Exception as e:  # noqa: BLE001
                raise TuduiError(f"OpenVINO int8 quantisation failed: {str(e).splitlines()[0][:200]}; export fp32 "
                                 "(without --int8) instead") from None
        quant = {"dtype": "int8", "method": "NNCF post-training quantisation (performance preset)",
                 "calibration_images": len(calib)}
    set_openvino_metadata(model, meta | ({"quantization": quant} if quant else {}))
    return model, quant


def set_openvino_metadata(model, entries: dict) -> None:
    for key, value in entries.items():
        model.set_rt_info(json.dumps(value, ensure_ascii=False), [OV_META, key])


def openvino_metadata(model) -> dict:
    """tudui's metadata from an OpenVINO model's rt_info ({} when it has none)."""
    info = model.get_rt_info()
    if OV_META not in info:
        return {}
    section = info[OV_META]
    keys = section.keys() if hasattr(section, "keys") else []
    out = {}
    for key in keys:
        try:
            out[key] = json.loads(model.get_rt_info([OV_META, key]).astype(str))
        except (json.JSONDecodeError, RuntimeError, TypeError):
            continue
    return out


def save_openvino(model, xml: Path) -> None:
    """ov.save_model to `xml` (+ its .bin), weights kept in fp32 (no fp16 compression: the gate measured these)."""
    ov = import_openvino()
    ov.save_model(model, str(xml), compress_to_fp16=False)


def openvino_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
