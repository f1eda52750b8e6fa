"""Write a dataset split out as image files in the class-folder layout (`tudui data export`)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import TuduiError
from .sources import NAMED, load_named


def safe_name(name: str) -> str:
    """A class name usable as a folder name ('T-shirt/top' -> 'T-shirt_top')."""
    return re.sub(r"[^\w.\- ]+", "_", name).strip() or "class"


def export_images(name: str, out: str, split: str = "test", limit: int | None = None, fmt: str = "png",
                  data_root: str | None = None, seed: int = 0) -> list[Path]:
    """Save images of named dataset `name` to out/<class>/<index>.<fmt>; returns the files written.

    With `limit`, a seeded random sample of that many images (classes mixed) is written.
    """
    if name not in NAMED:
        raise TuduiError(f"unknown dataset {name}; named datasets: {', '.join(NAMED)}")
    if fmt not in ("png", "jpg"):
        raise TuduiError("--format must be png or jpg")
    s = load_named(name, split == "train", data_root)
    index = np.arange(len(s))
    if limit is not None and limit < len(s):
        index = np.sort(np.random.default_rng(seed).permutation(len(s))[:limit])
    written = []
    for i in index:
        folder = Path(out) / safe_name(s.classes[s.targets[i]])
        folder.mkdir(parents=True, exist_ok=True)
        img = s.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        path = folder / f"{i:05d}.{fmt}"
        pil.save(path, quality=95) if fmt == "jpg" else pil.save(path)
        written.append(path)
    return written
