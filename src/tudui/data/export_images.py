"""Write a dataset split out as image files in the class-folder layout (`tudui data export`).

A class name a folder cannot carry ('T-shirt/top') gets a folder name that can ('T-shirt_top'); `classes.json`
beside the folders maps each folder back to its class name, and every reader of class folders uses it, so a model
trained on the folders knows the same classes as one trained on the named dataset."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import TuduiError
from .folders import read_manifest, write_manifest
from .sources import NAMED, load_named


def safe_name(name: str) -> str:
    """A class name usable as a folder name ('T-shirt/top' -> 'T-shirt_top')."""
    return re.sub(r"[^\w.\- ]+", "_", name).strip() or "class"


def folder_names(classes: list[str]) -> dict[str, str]:
    """{class name: its folder name}: `safe_name`, with ' 2', ' 3' ... added where two classes would share one."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for c in classes:
        base = name = safe_name(c)
        n = 1
        while name.casefold() in taken:  # case too: one folder on macOS' and Windows' file systems
            n += 1
            name = f"{base} {n}"
        taken.add(name.casefold())
        out[c] = name
    return out


def export_images(name: str, out: str, split: str = "test", limit: int | None = None, fmt: str = "png",
                  data_root: str | None = None, seed: int = 0) -> list[Path]:
    """Save images of named dataset `name` to out/<class>/<index>.<fmt> and out/classes.json (folder -> class
    name); returns the image files written.

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
    folders = folder_names(s.classes)
    written = []
    for i in index:
        folder = Path(out) / folders[s.classes[s.targets[i]]]
        folder.mkdir(parents=True, exist_ok=True)
        img = s.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        path = folder / f"{i:05d}.{fmt}"
        pil.save(path, quality=95) if fmt == "jpg" else pil.save(path)
        written.append(path)
    used = {folders[s.classes[t]]: s.classes[t] for t in np.unique(s.targets[index])}
    if used:  # the folders of an earlier export into `out` keep their names
        write_manifest(Path(out), read_manifest(Path(out)) | used)
    return written
