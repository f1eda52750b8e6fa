"""Defaults that scale with the data: --batch-size, --epochs and --best-by auto (engine/choices.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tudui
from tudui.api import resolve_config
from tudui.core.config import TrainConfig, load_yaml
from tudui.core.device import World
from tudui.core.errors import TuduiError
from tudui.engine.choices import resolve_best_by, resolve_length


def resolved(n: int, processes: int = 1, **values):
    cfg = resolve_config({"data": "x"} | values)
    note = resolve_length(cfg, n, World(size=processes, local_size=processes))
    return cfg, note


@pytest.mark.parametrize("n, processes, batch, epochs", [
    (72, 1, 16, 40),  # 112 epochs would train on 8,000 images; at most 40
    (216, 1, 16, 38),  # 38 x 216 = 8,208 images
    (511, 1, 16, 16),
    (512, 1, 32, 16),
    (1_000, 1, 32, 10),  # 10 epochs are 10,000 images already
    (1_024, 1, 128, 10),  # the recipe before auto, from here on
    (1_437, 1, 128, 10),  # scikit-learn's digits: as before
    (54_000, 1, 128, 10),  # Fashion-MNIST: today's recipe
    (54_000, 2, 128, 10),  # torchrun: 128 per process (global 256), as before
    (216, 2, 8, 38),  # torchrun: the global batch 16 shared, 8 a rank; the same images seen in all
])
def test_batch_and_epochs_follow_the_training_set(n, processes, batch, epochs):
    cfg, note = resolved(n, processes)
    assert (cfg.batch_size, cfg.epochs) == (batch, epochs)
    assert f"batch {batch}" in note and f"auto: {n:,} training images" in note and f"{epochs} epochs (auto:" in note


def test_full_fashion_mnist_resolves_to_the_recipe_before_auto():
    """54,000 training images and a 6,000-image validation split: exactly the config of batch 128, 10 epochs, best.pt
    by top-1, the same learning rate and warm-up."""
    cfg, _ = resolved(54_000)
    resolve_best_by(cfg, np.full(10, 600))
    before = TrainConfig(data=["x"], batch_size=128, epochs=10, best_by="top1")
    assert cfg.to_dict() == before.to_dict()
    assert (cfg.lr, cfg.warmup_epochs, cfg.scheduler) == (0.003, 0.0, "onecycle")


def test_explicit_options_and_presets_win():
    cfg, note = resolved(216, batch_size=64, epochs=3)
    assert (cfg.batch_size, cfg.epochs, note) == (64, 3, None)
    cfg, note = resolved(216, preset="course")  # the course's batch 64, 10 epochs
    assert (cfg.batch_size, cfg.epochs, note) == (64, 10, None)
    cfg, note = resolved(216, preset="best")  # best sets 14 epochs, not the batch
    assert (cfg.batch_size, cfg.epochs) == (16, 14) and note == "batch 16 (auto: 216 training images)"
    cfg, _ = resolved(216, fine_tune=39, weights="w.pt")  # at least one epoch after the head-only phase
    assert cfg.epochs == 40
    with pytest.raises(TuduiError, match="--batch-size takes a whole number or auto"):
        TrainConfig(data=["x"], batch_size="big")
    assert TrainConfig(data=["x"], batch_size="32", epochs="AUTO").batch_size == 32


def test_best_by_follows_the_validation_split():
    cfg = TrainConfig(data=["x"])
    assert "24 validation images, 6 of the smallest class" in resolve_best_by(cfg, np.array([6, 6, 6, 6]))
    assert cfg.best_by == "last"
    cfg = TrainConfig(data=["x"])
    assert resolve_best_by(cfg, np.array([10, 12])) is None and cfg.best_by == "top1"
    cfg = TrainConfig(data=["x"], best_by="top1")
    assert resolve_best_by(cfg, np.array([2, 2])) is None and cfg.best_by == "top1"


def digits_folder(root, per_class: int):
    """train/ (`per_class` real 8x8 digits per class, PNG) and test/ (the digits test split)."""
    from tudui.data.sources import load_named

    for split, n in (("train", per_class), ("test", None)):
        s = load_named("digits", split == "train")
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True)
            for i in np.flatnonzero(s.targets == c)[:n]:
                Image.fromarray(s.images[i][..., 0]).save(root / split / str(c) / f"{i}.png")
    return root


def test_a_small_folder_trains_well_with_the_defaults(tmp_path, capsys):
    """100 real digits as a folder: the auto choices in the first line and config.yaml, a test top-1 the fixed
    batch 128 x 10 epochs misses by far, and --resume keeping the choices (it never decides again)."""
    data = str(digits_folder(tmp_path / "data", 10))
    common = dict(data=data, seed=0, project=str(tmp_path / "runs"), tensorboard=False, plots=False, model="fast",
                  threads=1)  # one thread: steps of 16 8x8 images gain nothing from more, and a busy machine slows them
    before = tudui.train(**common, name="before", batch_size=128, epochs=10, best_by="top1")
    r = tudui.train(**common, name="auto")
    first = next(line for line in capsys.readouterr().out.splitlines() if "/auto" in line and "->" in line)
    assert "batch 16 (auto: 90 training images); 40 epochs (auto: 3,600 training images seen; at most 40" in first
    assert "best.pt: the last epoch (auto: 10 validation images" in first
    saved = load_yaml(r.run_dir / "config.yaml")
    assert (saved["batch_size"], saved["epochs"], saved["best_by"]) == (16, 40, "last")
    assert r.test["top1"] >= 0.75 and before.test["top1"] < 0.40  # measured (seed 0): 83.6% against 23.1%
    cfg = resolve_config({"resume": str(r.run_dir), "epochs": 41})
    assert (cfg.batch_size, cfg.epochs, cfg.best_by) == (16, 41, "last")
