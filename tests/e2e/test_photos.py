"""Your photos: the photo recipe is chosen by itself, and evaluation's resize + centre crop is the same pixels in
train-time validation, `tudui eval`, `predict`, `serve` and an ONNX export; older checkpoints keep squashing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tudui
from tudui.data import IMAGENET_MEAN, IMAGENET_STD, Layout, normalize
from tudui.data.cache import cached_split
from tudui.data.folders import read_class_folders
from tudui.data.images import decode_image
from tudui.inference.predictor import Predictor

QUIET = dict(plots=False, tensorboard=False, amp="off")


@pytest.fixture(scope="module")
def photo_run(photo_folder, tmp_path_factory):
    """`fast` at 32 px, 2 epochs on the tiny photo folder (about 2 s)."""
    project = tmp_path_factory.mktemp("photo-runs")
    return tudui.train(data=str(photo_folder), model="fast", img_size=32, epochs=2, batch_size=16,
                       project=str(project), name="photos", **QUIET)


def _val_files(photo_folder) -> tuple[list[str], np.ndarray]:
    split = read_class_folders(photo_folder / "val")
    return split.paths, split.targets


def test_photos_get_the_photo_recipe_by_themselves(photo_run):
    ckpt = torch.load(photo_run.best, weights_only=True)
    assert ckpt["data"]["crop_pct"] == 0.875 and ckpt["data"]["img_size"] == 32
    assert ckpt["config"]["augment"] == "auto"  # asked for auto...
    config = (photo_run.run_dir / "config.yaml").read_text()
    assert "augment: photo" in config and "crop_pct: 0.875" in config  # ...and this is what auto chose


def test_validation_rows_are_the_pixels_predict_decodes(photo_run, photo_folder):
    paths, _ = _val_files(photo_folder)
    spec = photo_run.spec
    rows = np.asarray(cached_split(read_class_folders(photo_folder / "val"), Layout(3, 32, 0.875)).split.images)
    for path, row in zip(paths, rows):
        assert np.array_equal(row, spec.decode(path)), path  # the run's own val cache entry, hit here


def test_train_time_validation_eval_predict_onnx_and_serve_agree(photo_run, photo_folder, tmp_path):
    paths, targets = _val_files(photo_folder)
    metrics = json.loads((photo_run.run_dir / "metrics.json").read_text())["val"]
    predictor = Predictor.from_path(photo_run.best, device="cpu")
    x = predictor.preprocess(paths)
    probs = predictor.probabilities(x)  # (16, 4), flip TTA as trained, calibrated
    # train-time validation (best weights, metrics.json) = predict: same loss and top-1 from the same pixels; the
    # probabilities predict reports are those logits divided by the run's calibration temperature
    logits = predictor.logits(x)
    assert torch.allclose(probs, (logits / predictor.temperature).softmax(1), atol=1e-6)
    loss = F.cross_entropy(logits, torch.from_numpy(targets)).item()
    assert loss == pytest.approx(metrics["loss"], rel=1e-4)
    assert (probs.argmax(1).numpy() == targets).mean() == pytest.approx(metrics["top1"])
    evaluated = tudui.evaluate(photo_run.best, str(photo_folder), "val", device="cpu")
    assert evaluated["loss"] == pytest.approx(metrics["loss"], rel=1e-5) and evaluated["n"] == len(paths)
    # the ONNX export carries the crop in its metadata and answers the same
    pytest.importorskip("onnxruntime")
    onnx_path = tudui.export(photo_run.best, "onnx", tmp_path / "m.onnx", dynamic_batch=True).path
    onnx = Predictor.from_path(onnx_path)
    assert onnx.spec.crop_pct == 0.875
    assert torch.allclose(onnx.probabilities(onnx.preprocess(paths)), probs, atol=1e-5)
    # the server decodes an upload the same way
    import httpx

    from tests.inference.conftest import _live_server
    from tudui.inference.server import create_app

    with _live_server(create_app(predictor, topk=4)) as url, open(paths[3], "rb") as f:
        got = httpx.post(f"{url}/predict", files={"file": ("x.jpg", f, "image/jpeg")}, timeout=30).json()
    got = got["predictions"]
    served = {p["class"]: p["probability"] for p in got}
    for c, name in enumerate(predictor.classes):
        assert served[name] == pytest.approx(float(probs[3, c]), abs=1e-5)


def test_a_checkpoint_from_before_the_crop_field_still_squashes(photo_run, photo_folder, tmp_path):
    ckpt = torch.load(photo_run.best, weights_only=True)
    del ckpt["data"]["crop_pct"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    predictor = Predictor.from_path(old, device="cpu")
    assert predictor.spec.crop_pct is None
    paths, _ = _val_files(photo_folder)
    squashed = np.stack([decode_image(p, 3, 32) for p in paths])  # the whole photo squashed to 32 x 32
    want = normalize(torch.from_numpy(squashed).permute(0, 3, 1, 2), predictor.spec)
    assert torch.equal(predictor.preprocess(paths), want)


def test_weights_file_brings_imagenet_mean_std_and_crop(photo_folder, tmp_path):
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    r = tudui.train(data=str(photo_folder), model="resnet18", weights=str(tmp_path / "r18.pth"), img_size=32,
                    epochs=1, batch_size=16, freeze_backbone=True, project=str(tmp_path), name="file", **QUIET)
    assert r.spec.mean == IMAGENET_MEAN and r.spec.std == IMAGENET_STD and r.spec.crop_pct == 0.875


def test_weights_default_from_torch_home_bring_their_own_crop(photo_folder, tmp_path, monkeypatch):
    """torchvision's DEFAULT weights of mobilenet_v3_large (V2) evaluate at resize 232 / crop 224: crop 0.9655."""
    import torchvision

    weights = torchvision.models.get_model_weights("mobilenet_v3_large").DEFAULT
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v3_large().state_dict()  # stands in for the download (no network here)
    torch.save(state, hub / weights.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = tudui.train(data=str(photo_folder), model="mobilenet_v3_large", weights="DEFAULT", img_size=32, epochs=1,
                    batch_size=16, freeze_backbone=True, project=str(tmp_path), name="default", **QUIET)
    assert r.spec.crop_pct == pytest.approx(224 / 232) and r.spec.mean == IMAGENET_MEAN
    final = torch.load(r.last, weights_only=True)["model"]
    assert torch.equal(final["features.5.block.0.0.weight"], state["features.5.block.0.0.weight"])
