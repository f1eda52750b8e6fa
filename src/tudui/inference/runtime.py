"""What runs a served PyTorch model's forward pass: `tudui serve --runtime` (its table: core/modes.SERVE_RUNTIMES).

Why ONNX Runtime by default on a CPU: for the small nets tudui trains, PyTorch eager's per-operator overhead is most
of a forward pass, and ONNX Runtime's graph (batch norm folded into the convolutions, one C++ call per pass) costs a
quarter to a fifth of it. The default 28-px net, one thread: 0.10 against 0.58 ms at batch 1, 0.56 against 2.3 ms
at batch 8; resnet18 at 224 px, batch 8: 315 against 508 ms (benchmarks/README.md, "Deploy on a CPU"). The server's
batcher thread holds the GIL for less of each pass too, so the event loop gets more of the cores.

The copy is proven against the PyTorch model on sample inputs before it is used (export.onnx_copy, the tolerance
of `tudui export`), and the PyTorch model stays loaded: `POST /explain` needs its gradients. A server with
`--workers N` exports once, in the parent; each worker loads the same file.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import TuduiError
from .export import onnx_copy
from .formats import OnnxModule
from .predictor import Predictor

# the formats loaded as a PyTorch model: copied into ONNX Runtime, and what `POST /explain` can map
PYTORCH_FORMATS = ("checkpoint", "safetensors", "module")
ONNX_FILE = "model.onnx"  # the copy's name inside the server's private folder


def prepare(predictor: Predictor, runtime: str, folder: Path) -> tuple[Path | None, str]:
    """Decide what runs `predictor`'s forward pass: (the ONNX file written into `folder` for ONNX Runtime, or None
    for the predictor as loaded; the words the server's first line says it with).

    runtime: a row of core/modes.SERVE_RUNTIMES (ServeOptions checked it). 'onnxruntime' raises a TuduiError where
    the copy cannot be made or proven; 'auto' falls back to PyTorch then, saying why.
    """
    if runtime == "torch" or predictor.format not in PYTORCH_FORMATS:
        return None, predictor.runtime
    if predictor.device.type != "cpu":
        if runtime == "onnxruntime":
            raise TuduiError(f"--runtime onnxruntime runs on the CPU, but the model is on {predictor.device}; add "
                             "--device cpu, or leave --runtime at auto to keep PyTorch on the GPU")
        return None, f"torch on {predictor.device}"
    path = folder / ONNX_FILE
    try:
        onnx_copy(predictor.model, predictor.spec, {"channels": predictor.spec.channels,
                                                    "img_size": predictor.spec.img_size}, path)
    except TuduiError as e:
        if runtime == "onnxruntime":
            raise TuduiError(f"--runtime onnxruntime: {e}; use --runtime torch") from None
        return None, f"torch: no ONNX Runtime copy ({str(e).splitlines()[0]})"
    return path, "onnxruntime"


def attach(predictor: Predictor, path: Path | None) -> Predictor:
    """Run `predictor`'s forward passes on the ONNX file `prepare` wrote (None: leave it as it is)."""
    if path is not None:
        predictor.runner = OnnxModule(path)
        predictor.runtime = "onnxruntime"
    return predictor
