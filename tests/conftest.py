"""Shared fixtures: tiny real data (Fashion-MNIST written as image files, scikit-learn digits) and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fmnist():
    """(train Split, test Split) of the real Fashion-MNIST (skips with the install hint when absent)."""
    from tudui.data.sources import find, load_named

    if find("fashion-mnist") is None:
        pytest.skip("Fashion-MNIST not installed: run `make data` (apt-get install dataset-fashion-mnist)")
    return load_named("fashion-mnist", True), load_named("fashion-mnist", False)


def write_class_folders(root: Path, split, per_class: int, fmt: str = "png", offset: int = 0) -> Path:
    """Write `per_class` real images of each class to root/<class>/<i>.<fmt>."""
    from tudui.data.export_images import safe_name

    for c, name in enumerate(split.classes):
        idx = np.flatnonzero(split.targets == c)[offset:offset + per_class]
        folder = root / safe_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        for i in idx:
            img = split.images[i]
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:05d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def fmnist_folders(tmp_path_factory, fmnist):
    """A class-folder dataset of real Fashion-MNIST images: train/ (PNG, 60 per class) and val/ (JPEG, 20 per class)."""
    train, test = fmnist
    root = tmp_path_factory.mktemp("fmnist_folders")
    write_class_folders(root / "train", train, 60, "png")
    write_class_folders(root / "val", test, 20, "jpg")
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m tudui ARGS` as a user would, with this checkout's sources."""
    full_env = os.environ.copy() | {"PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"} | (env or {})
    return subprocess.run([sys.executable, "-m", "tudui", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


@pytest.fixture
def cli():
    return run_cli


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A trained tiny classifier (mnist-cnn, 1 epoch on the bundled digits): the path of its best.pt."""
    import tudui

    root = tmp_path_factory.mktemp("tiny_model")
    result = tudui.train(data=["digits"], model="mnist-cnn", epochs=1, project=str(root), name="run", workers=0)
    return result.best
