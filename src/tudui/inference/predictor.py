"""Predictions on new images with exactly the preprocessing the model was trained with."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..core.errors import TuduiError
from ..core.files import atomic_path
from ..core.notebook import html_table, png_uri
from ..core.options import PredictOptions
from ..data import DataSpec, denormalize, model_logits, normalize
from ..data.images import BadImage, ImageScan, gray_mode, peek_image, scan_images, shown, special_file
from ..engine import calibration, rejection
from .formats import load_model, runtime_device


UNKNOWN = "unknown"  # the label of an image rejected as unlike the training data


def _numpy(probs) -> np.ndarray:
    """A (B, K) tensor (on the CPU) or array of probabilities as a NumPy array."""
    return probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)


@dataclass
class Prediction:
    source: str | Path
    topk: list[tuple[str, float]] = field(default_factory=list)  # (class name, probability), best first
    error: str | None = None  # why the image could not be read
    seen: Path | None = None  # --save-input: the PNG of what the model saw
    # multi-label models: every class whose sigmoid probability reaches its threshold, most probable first
    labels: list[tuple[str, float]] | None = None
    unknown: bool = False  # its score is below the rejection threshold (--reject-below, --reject auto)
    score: float | None = None  # that score (--score), when rejection is on


    @property
    def label(self) -> str | None:
        """The top class, or 'unknown' for a rejected image (its scores stay in `topk`)."""
        return UNKNOWN if self.unknown else self.topk[0][0] if self.topk else None

    def to_dict(self) -> dict:
        out = {"source": self.source, "error": self.error,
               "predictions": [{"class": c, "probability": p} for c, p in self.topk]}
        if self.labels is not None:
            out["labels"] = [{"class": c, "probability": p} for c, p in self.labels]
        if self.score is not None:
            out |= {"label": self.label, "unknown": self.unknown, "score": self.score}
        return out | ({"input_png": str(self.seen)} if self.seen else {})


class Predictions(list):
    """What `Predictor.predict` returns: a list of Prediction that a notebook shows as a table, each image's
    thumbnail (files only; the PNG of what the model saw with save_input) beside its top classes."""

    SHOWN = 50  # rows a notebook shows; the list itself holds every prediction

    def _repr_html_(self) -> str:
        rows = []
        for p in self[:self.SHOWN]:
            picture = p.seen or (p.source if isinstance(p.source, Path) or (
                isinstance(p.source, str) and Path(p.source).is_file()) else None)
            try:
                thumb = f'<img src="{png_uri(picture, 64)}">' if picture is not None and not p.error else ""
            except (OSError, ValueError):  # changed or gone since it was predicted
                thumb = ""
            shown_classes = p.labels if p.labels is not None else p.topk  # a multi-label model: its labels
            top = p.error and f"error: {p.error}" or ", ".join(f"{c} {prob:.1%}" for c, prob in shown_classes) or "-"
            rows.append([thumb, shown(p.source), top])
        more = f"<p>... and {len(self) - self.SHOWN} more</p>" if len(self) > self.SHOWN else ""
        return html_table(["image", "source", "top classes"], rows, raw=(0,)) + more


def expand_paths(paths: list[str]) -> list[str]:
    """Files as given, folders searched recursively for images (sorted; special files and link loops left out with
    one warning each, data/images.scan_images)."""
    given = [Path(p).expanduser() for p in paths]
    for p, path in zip(paths, given):
        if not path.exists():
            raise TuduiError(f"no such file or folder: {p}")
        if not path.is_dir() and not path.is_file():  # a FIFO would wait forever, /dev/zero would fill the memory
            raise TuduiError(f"{shown(p)} is {special_file(path)}, not an image file or a folder")
    folders = [path for path in given if path.is_dir()]
    scans = [scan_images([f]) for f in folders]  # each folder on its own: `predict m data data/cats` lists cats twice
    ImageScan(special=[s for scan in scans for s in scan.special], loops=[s for scan in scans for s in scan.loops],
              twice=[s for scan in scans for s in scan.twice]).warn()
    found = {f: scan.files[0] for f, scan in zip(folders, scans)}
    out = []
    for p, path in zip(paths, given):
        if path.is_dir():
            if not found[path]:
                raise TuduiError(f"no image files in folder {p}")
            out.extend(str(f) for f in found[path])
        else:
            out.append(str(path))
    return out


FAR = 4  # an image whose short side is this many times the model's input side (or less than 1/FAR of it) is far
# from what a squash model (built-in sets, small images) was trained on


def far_from_training(source, spec: DataSpec) -> tuple[str, str] | None:
    """(what preprocessing does to `source` that the training images did not need, its size and mode): 'resized to
    28x28' for an image far larger or smaller than the model's input (squash models: photo models crop large photos
    as in training), 'converted to grey' for a colour image given to a greyscale model, with '1280x960 RGB'; None when
    nothing is far off."""
    if isinstance(source, (str, Path)):
        head = peek_image(source)
    elif hasattr(source, "size") and hasattr(source, "mode"):  # a PIL image
        head = source.size, source.mode
    else:  # bytes: decoded once, for the model only
        return None
    if head is None:
        return None
    (w, h), mode = head
    side = spec.img_size
    what = []
    if spec.crop_pct is None and not side / FAR < min(w, h) < side * FAR:
        what.append(f"resized to {side}x{side}")
    if spec.channels == 1 and not gray_mode(mode):
        what.append("converted to grey")
    return (" and ".join(what), f"{w}x{h} {mode}") if what else None


def save_seen(x: torch.Tensor, spec: DataSpec, path: Path) -> Path:
    """One normalised (C, H, W) input as the model saw it, de-normalised to an 8-bit PNG (grey or RGB) at `path`."""
    pixels = (denormalize(x[None].float(), spec)[0] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def seen_name(source, index: int, taken: set[str]) -> str:
    """'photo.png' for photo.jpg (the input's name, any script), 'photo-2.png' for a second photo.*, 'image-3.png'
    for an input that is not a file."""
    stem = Path(source).stem if isinstance(source, (str, Path)) else f"image-{index}"
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def _positive(t) -> bool:
    return not isinstance(t, bool) and isinstance(t, (int, float)) and math.isfinite(t) and t > 0


def temperature_of(meta: dict) -> float | list[float]:
    """The calibration temperature a model file's metadata carries (a checkpoint's, an export's), checked: a
    positive finite number, or for a multi-label model one per class (a list as long as its class names; a single
    number, as files written before per-class temperatures would hold, divides every class's logit); 1.0 when it has
    none."""
    t = meta.get("temperature")
    if t is None:
        return 1.0
    if isinstance(t, (list, tuple)):
        k = len(meta.get("classes") or [])
        if not meta.get("multi_label"):
            raise TuduiError(f"this model's calibration temperature is a list ({t!r:.60}), but a single-label model "
                             "has one; calibrate it again with `tudui calibrate`")
        if len(t) != k or not all(_positive(v) for v in t):
            raise TuduiError(f"this model's calibration temperatures are {t!r:.60}, not one positive number for each "
                             f"of its {k} classes; calibrate it again with `tudui calibrate`")
        return [float(v) for v in t]
    if not _positive(t):
        raise TuduiError(f"this model's calibration temperature is {t!r}, not a positive number; calibrate it again "
                         "with `tudui calibrate`")
    return float(t)


class Predictor:
    """A model plus its DataSpec: `Predictor.from_path("runs/exp/best.pt").predict(["cat.png"])`."""

    def __init__(self, model: torch.nn.Module, spec: DataSpec, device: torch.device | str = "cpu",
                 source: str | None = None, format: str = "module", meta: dict | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # what computes the logits: the model itself, or a copy of it in another runtime (inference/runtime.py)
        self.runner: Callable[[torch.Tensor], torch.Tensor] = self.model
        self.runtime = {"onnx": "onnxruntime", "openvino": "openvino"}.get(format, "torch")
        self.spec = spec
        self.source = source  # the file the model came from, when it came from one
        self.format = format  # "checkpoint", "onnx", "torchscript", "safetensors" or "module"
        self.meta = meta or {}  # export metadata: arch, training, tudui_version, temperature
        # the calibration temperature the logits are divided by before the softmax (1: none was fitted); a
        # multi-label model's: one per class, each dividing its class's logit before the sigmoid
        self.temperature = temperature_of(self.meta | {"classes": spec.classes, "multi_label": spec.multi_label})
        self.reject_limit: float | None = None  # images scoring below it are unknown (`reject`)
        self.reject_score = "msp"

    def reject(self, reject_below: float | None = None, reject: str | None = None, coverage: float = 0.95,
               score: str = "msp") -> "Predictor":
        """Answer unknown for images whose `score` ('msp' or 'energy') is below `reject_below`, or with
        reject='auto' below the threshold that keeps `coverage` of the validation images (stored with the model by
        training or `tudui calibrate`). Returns the predictor. A multi-label model answers its labels over their
        thresholds instead (none above: no label), so rejection is an error there."""
        if self.spec.multi_label and (reject_below is not None or reject is not None):
            raise TuduiError("--reject-below and --reject answer unknown for a single-label model's top class; this "
                             "model is multi-label: an image with no class over its threshold gets no label")
        self.reject_limit = rejection.threshold(self.meta, reject, reject_below, coverage, score)
        self.reject_score = score
        return self

    @classmethod
    def from_path(cls, path: str | Path, device: str = "auto", tta: bool | None = None,
                  model_file: str | Path | None = None, trust_code: bool = False) -> "Predictor":
        """A checkpoint (.pt or run directory), .onnx, .torchscript or .safetensors (+ sidecar JSON).

        tta: flip test-time augmentation on/off; None keeps the model's own setting (`--tta` at training).
        model_file: where a user model's Python file is now, if it has moved since training.
        trust_code: run the Python file the model names even if you neither named it nor trained with it here.
        """
        dev = runtime_device(path, device)
        loaded = load_model(path, dev, model_file, trust_code)
        return cls(loaded.model, loaded.spec.with_tta(tta), dev, loaded.path, loaded.format, loaded.meta)

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    def preprocess(self, sources: list) -> torch.Tensor:
        """Paths, bytes or PIL images -> (B, C, H, W) float, normalised (raises BadImage)."""
        return self.batch([self.spec.decode(s) for s in sources])

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """(H, W, C) uint8 arrays -> (B, C, H, W) normalised float on the predictor's device."""
        return normalize(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device), self.spec)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised float -> (B, num_classes) float logits on the CPU, not divided by the temperature."""
        return model_logits(self.runner, x.to(self.device), self.spec).float().cpu()

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised float -> (B, num_classes) softmax probabilities of the logits divided by the
        model's calibration temperature (a multi-label model's: each class's sigmoid of its logit divided by that
        class's temperature)."""
        return self.probabilities_of(self.logits(x))

    def probabilities_of(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) logits -> the probabilities `probabilities` gives."""
        z = calibration.scale(logits, self.temperature)
        return z.sigmoid() if self.spec.multi_label else z.softmax(1)

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label model's per-class probability thresholds (chosen on validation at training, or 0.5 where
        the model has none); None for a single-label model."""
        if not self.spec.multi_label:
            return None
        return list(self.spec.thresholds or [0.5] * len(self.classes))

    def labels_above(self, probs) -> list[list[tuple[str, float]]] | None:
        """(B, num_classes) probabilities (a tensor or an array) -> per row every (class, probability) at or above
        its class's threshold, most probable first; None for a single-label model."""
        if not self.spec.multi_label:
            return None
        p = _numpy(probs)
        th = np.asarray(self.thresholds, dtype=p.dtype)
        return [sorted(((self.classes[c], float(row[c])) for c in np.flatnonzero(row >= th)), key=lambda t: -t[1])
                for row in p]

    def top_classes(self, probs, k: int, order: np.ndarray | None = None) -> list[list[tuple[str, float]]]:
        """(B, num_classes) probabilities (a tensor or an array) -> per row the k most likely (class name,
        probability), best first (ties: the lower class index first); `order`: their `class_order`, if known.

        k is clamped to 1..num_classes. In NumPy: the server calls this once per request, where torch's per-call
        overhead (~10 us an operation) was a tenth of the event loop's time under load.
        """
        k = max(1, min(k, len(self.classes)))
        p = _numpy(probs)
        idx = (self.class_order(p) if order is None else order)[:, :k]
        return [[(self.classes[c], float(row[c])) for c in ir] for row, ir in zip(p, idx.tolist())]

    @staticmethod
    def class_order(probs) -> np.ndarray:
        """(B, num_classes) probabilities -> (B, num_classes) class indices, most probable first (ties: the lower
        index first): `top_classes`' order, which the server computes for a whole batch at once."""
        return np.argsort(-_numpy(probs), axis=1, kind="stable")

    def predict(self, sources: list, topk: int = PredictOptions.topk,
                batch_size: int = PredictOptions.batch_size, save_input: str | Path | None = None) -> Predictions:
        """Top-k classes for each source, in order; an unreadable image gives a Prediction with `error` set.

        save_input: a folder to write each image into as the model saw it (after resizing and conversion, the
        normalisation undone), as a PNG named after the input. The first image far from the training images' size
        or colour gets one warning (on stderr) saying what preprocessing did to it."""
        folder = Path(save_input).expanduser() if save_input is not None else None
        if folder is not None:
            if folder.exists() and not folder.is_dir():
                raise TuduiError(f"--save-input {shown(save_input)} is a file; name a folder for the PNGs")
            folder.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        warned = False
        results = Predictions()
        for start in range(0, len(sources), batch_size):
            chunk = sources[start:start + batch_size]
            preds = [Prediction(s if isinstance(s, (str, Path)) else f"<image {start + i}>") for i, s in enumerate(chunk)]
            arrays = {}
            for i, s in enumerate(chunk):
                try:
                    arrays[i] = self.spec.decode(s)
                except BadImage as e:
                    preds[i].error = e.reason
            if arrays:
                x = self.batch(list(arrays.values()))
                logits = self.logits(x)
                probs = self.probabilities_of(logits)
                tops, above = self.top_classes(probs, topk), self.labels_above(probs)
                scores = rejection.score(logits, self.reject_score, self.temperature).tolist() \
                    if self.reject_limit is not None else [None] * len(tops)
                for row, (i, top, sc) in enumerate(zip(arrays, tops, scores)):
                    preds[i].topk = top
                    preds[i].labels = above[row] if above is not None else None
                    if sc is not None:
                        preds[i].score, preds[i].unknown = sc, sc < self.reject_limit
                    if folder is not None:
                        preds[i].seen = save_seen(x[row], self.spec, folder / seen_name(chunk[i], start + i, taken))
                    if not warned and (far := far_from_training(chunk[i], self.spec)):
                        warned = True  # once: the same is true of every such image
                        where = f"{shown(folder)} shows" if folder is not None else "--save-input DIR shows"
                        print(f"warning: images are {far[0]} for this model ({shown(preds[i].source)} is {far[1]}); "
                              f"{where} what it saw", file=sys.stderr)
            results.extend(preds)
        return results

