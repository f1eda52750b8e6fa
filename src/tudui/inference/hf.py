"""`tudui export RUN --format hf`: a timm model's run as the folder timm itself loads (`timm.create_model(
"local-dir:FOLDER")`) and `huggingface_hub.upload_folder` could send: `config.json` (architecture, class names,
pretrained_cfg with the run's DataSpec preprocessing, written by timm's `save_for_hf`), `model.safetensors`, a README
model card with the run's metrics and confusion matrix, and `tudui.json` (the DataSpec and arch, as every export's
metadata). The folder is written beside its destination, loaded back through timm and compared with the checkpoint's
logits; only then is it moved into place.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import TuduiError
from ..data import DataSpec
from ..models.timm_models import TIMM, import_timm


def hf_config(spec: DataSpec) -> dict:
    """The preprocessing timm's config.json records: the run's own (what tudui's validation fed the model)."""
    return {"input_size": [spec.channels, spec.img_size, spec.img_size], "mean": list(spec.mean),
            "std": list(spec.std), "crop_pct": spec.crop_pct or 1.0, "interpolation": spec.interpolation}


def model_card(arch: str, spec: DataSpec, metrics: dict | None, has_matrix: bool) -> str:
    """README.md: what the model is, how to load it, its preprocessing, and the run's validation figures."""
    lines = ["---", "library_name: timm", "tags:", "- image-classification", "- timm", "- tudui", "---", "",
             f"# {arch} trained with tudui", "",
             f"A {arch} image classifier for {spec.num_classes} classes: {', '.join(spec.classes)}.", "",
             "```python", "import timm", 'model = timm.create_model("local-dir:THIS_FOLDER", pretrained=True)  # or "hf-hub:USER/REPO"',
             "```", "", "tudui loads it too: `tudui train --model local-dir:THIS_FOLDER ...`.", "",
             "## Preprocessing", "",
             f"Input {spec.channels}x{spec.img_size}x{spec.img_size}, mean {list(spec.mean)}, std {list(spec.std)}, "
             + (f"resize the short side then centre crop {spec.crop_pct:g}." if spec.crop_pct else
                "the whole image resized to a square."), ""]
    val = (metrics or {}).get("val") or {}
    if val:
        lines += ["## Validation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in val.items() if isinstance(v, (int, float)) and k != "n"]
        lines += [f"| images | {val.get('n')} |", ""]
        confusion = val.get("confusion")
        if confusion:
            lines += ["Confusion matrix (rows: true class, columns: predicted):", "",
                      "| | " + " | ".join(spec.classes) + " |", "|---" * (len(spec.classes) + 1) + "|"]
            lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(spec.classes, confusion)]
            lines.append("")
    if has_matrix:
        lines += ["![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def export_hf(model: nn.Module, ckpt: dict, spec: DataSpec, meta: dict, x: torch.Tensor, reference: torch.Tensor,
              out: Path, verify) -> None:
    """Write the folder `out` (replacing an earlier export there) once timm's own load of it passes
    `verify(reference, got)` (the parity check, which raises on a failure: then nothing is written)."""
    name = ckpt["arch"]["name"]
    if not isinstance(name, str) or not name.startswith(TIMM):
        raise TuduiError(f"--format hf writes the folder timm loads, for timm models (--model timm:NAME); this "
                         f"checkpoint's model is {name}: export it as onnx, torchscript or safetensors")
    timm = import_timm()
    from timm.models import save_for_hf

    run_dir = Path(ckpt["path"]).parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_for_hf(model, str(tmp), model_config={"label_names": list(spec.classes), "pretrained_cfg": hf_config(spec)},
                    safe_serialization=True)
        (tmp / "tudui.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        matrix = run_dir / "confusion_matrix.png"
        if matrix.is_file():
            shutil.copyfile(matrix, tmp / "confusion_matrix.png")
        metrics_path = run_dir / "metrics.json"
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else None
        (tmp / "README.md").write_text(model_card(name.removeprefix(TIMM), spec, metrics, matrix.is_file()),
                                       encoding="utf-8")
        loaded = timm.create_model(f"local-dir:{tmp}", pretrained=True).eval()
        with torch.no_grad():
            got = loaded(x).float()
        verify(reference, got)
        if out.exists():
            if not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file()):
                raise TuduiError(f"--out {out} exists and is not an earlier hf export; choose another folder")
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
