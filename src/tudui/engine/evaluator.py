"""`tudui eval`: a checkpoint against a labelled split, with the training-time preprocessing."""
from __future__ import annotations

import numpy as np

from ..data import load_splits, make_loader
from ..data.memory import decode_split
from ..errors import TuduiError
from .device import select_device
from .evaluate import evaluate


def _align(split, classes: list[str]):
    """Re-index `split` to the checkpoint's class order (names must be a subset)."""
    unknown = sorted(set(split.classes) - set(classes))
    if unknown:
        raise TuduiError(f"the data has classes the model was not trained on: {', '.join(unknown[:10])}; "
                         f"the model knows: {', '.join(classes[:20])}")
    index = {c: i for i, c in enumerate(classes)}
    split.targets = np.array([index[split.classes[t]] for t in split.targets], dtype=np.int64)
    split.classes = list(classes)
    return split


def evaluate_checkpoint(checkpoint: str, data: list[str] | str, split: str = "test", *, data_root: str | None = None,
                        batch_size: int = 512, device: str = "auto", workers: int = 0, tta: bool | None = None) -> dict:
    """Loss, top-1/top-5, per-class precision/recall/F1 and confusion matrix of `checkpoint` on `split`.

    split='val' re-creates the training run's hold-out (same --val-split and --seed) when the data has no val folder.
    tta: flip test-time augmentation on/off; None keeps the model's own setting.
    """
    import torch.nn as nn

    from ..inference.backends import load_model, suffix_format

    # Any model file tudui writes (checkpoint, .onnx, .torchscript, .safetensors); ONNX runs on the CPU.
    dev = select_device("cpu" if suffix_format(checkpoint) == "onnx" else device)
    loaded = load_model(checkpoint, "cpu")
    model, spec, cfg = loaded.model, loaded.spec.with_tta(tta), loaded.meta.get("training", {})
    data = [data] if isinstance(data, str) else list(data)
    train, val, test = load_splits(data, data_root, False, cfg.get("val_split", 0.1), cfg.get("seed", 0))
    chosen = {"train": train, "val": val, "test": test}.get(split)
    if split not in ("train", "val", "test"):
        raise TuduiError(f"--split must be train, val or test, got {split}")
    if chosen is None:
        raise TuduiError(f"the data has no {split} split; use --split " + ("val" if val is not None else "train"))
    chosen = _align(chosen, spec.classes)
    if chosen.images is not None or len(chosen) * spec.channels * spec.img_size ** 2 <= 2**31:
        chosen = decode_split(chosen, spec.channels, spec.img_size)
    loader = make_loader(chosen, spec, batch_size, False, dev, workers=workers)
    result = evaluate(model.to(dev), loader, spec, dev, nn.CrossEntropyLoss())
    result["classes"] = spec.classes
    result["split"] = split
    result["checkpoint"] = loaded.path
    result["tta"] = spec.flip_tta
    return result
