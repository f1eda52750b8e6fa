"""Class-activation maps drawn over the images they explain: one PNG per image, and a grid of them all.

The maps come from engine/cam.py at the model's input size; here each is laid over the part of the image as given
that the model saw (data/images.seen_region: all of it for a squash model, the centre crop for a photo model),
coloured with matplotlib's `jet` colour map at half opacity.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..core.files import atomic_path
from .plots import _image_grid

ALPHA = 0.5  # the heat map's share of each drawn pixel


def overlay(image: Image.Image, region: tuple[float, float, float, float], shown_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: `region` of `image` resized to the map's (H, W), the map in [0, 1] coloured over it."""
    from matplotlib import colormaps

    h, w = shown_map.shape
    part = np.asarray(image.resize((w, h), Image.BILINEAR, box=region), dtype=np.float32) / 255
    heat = colormaps["jet"](np.clip(shown_map, 0, 1))[..., :3]
    return np.round(((1 - ALPHA) * part + ALPHA * heat) * 255).astype(np.uint8)


def save_png(pixels: np.ndarray, path: str | Path) -> Path:
    """An (H, W, 3) uint8 array written atomically as a PNG."""
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return Path(path)


def plot_cam_grid(pictures: list[np.ndarray], titles: list[str], path: str | Path, title: str,
                  side: int = 128) -> Path:
    """The overlays side by side, each fitted into a side x side white square under its title."""
    cells = np.full((len(pictures), side, side, 3), 255, np.uint8)
    for cell, pic in zip(cells, pictures):
        h, w = pic.shape[:2]
        scale = side / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        small = np.asarray(Image.fromarray(pic).resize((nw, nh), Image.BILINEAR))
        top, left = (side - nh) // 2, (side - nw) // 2
        cell[top:top + nh, left:left + nw] = small
    return _image_grid(cells, titles, path, title, cols=min(6, len(pictures)))
