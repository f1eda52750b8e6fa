"""`tudui explain` / `tudui.explain`: maps for a registered net on real images, torchvision's and timm's nets and a
user's file, drawn over what the model saw (the same crop as predict), the JSON's peak and box share, and one error
line for each bad input."""
from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pytorch_grad_cam")

import tudui  # noqa: E402
from tudui.cli import main as cli_main  # noqa: E402
from tudui.core.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from tudui.data import DataSpec  # noqa: E402
from tudui.engine import cam  # noqa: E402
from tudui.models import create_model  # noqa: E402
from tudui.models.registry import make_arch  # noqa: E402


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """Four real 8x8 digits (scikit-learn's) as PNG files, in a folder whose name has a space."""
    from sklearn.datasets import load_digits

    folder = tmp_path_factory.mktemp("digits") / "my digits"
    folder.mkdir()
    digits = load_digits()
    for i in range(4):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def _checkpoint(path, name: str, channels: int, size: int, classes: list[str], crop_pct=None):
    """A checkpoint of `name` with its initial weights (maps need no training to be drawn)."""
    torch.manual_seed(0)
    net = create_model(name, len(classes), channels, size)
    spec = DataSpec(classes, size, channels, [0.5] * channels, [0.25] * channels, crop_pct=crop_pct)
    save_checkpoint(make_checkpoint(net, make_arch(name, len(classes), channels, size), spec.to_dict()), path)
    return path


def _error(capsys, *argv) -> str:
    assert cli_main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_registered_net_on_real_images(digits_run, digit_pngs, tmp_path, capsys):
    out = tmp_path / "maps"
    assert cli_main(["explain", str(digits_run.best), str(digit_pngs), "--out", str(out), "--json",
                     "--box", "0", "0", "4", "8"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["method"] == "layercam" and r["layer"] == "8"  # fast at 8 px: its last 2x2 conv
    predictions = tudui.predict(digits_run.best, [str(digit_pngs)], topk=1)[1]
    assert [(e["class"], round(e["probability"], 5)) for e in r["images"]] == \
        [(p.topk[0][0], round(p.topk[0][1], 5)) for p in predictions]  # the top class, as predict says
    for i, e in enumerate(r["images"]):
        assert e["png"] == str(out / f"{i}-cam.png")
        with Image.open(e["png"]) as im:  # 8x8 drawn at 224x224, coloured by the map
            assert im.size == (224, 224) and np.ptp(np.asarray(im.convert("RGB")).astype(int), axis=-1).max() > 60
        assert 0 <= e["peak"][0] < 8 and 0 <= e["peak"][1] < 8 and 0 <= e["box_share"] <= 1
    assert (out / "cams.png").stat().st_size > 0
    # the box share is the map's mass in the image's left half, as summed from the map itself
    r2 = tudui.explain(digits_run.best, [str(digit_pngs / "0.png")], out=str(out), box=[0, 0, 4, 8])
    left = cam.box_share(cam.resample(r2.images[0].map, (224, 224)), (0, 0, 112, 224))
    assert r2.images[0].box_share == pytest.approx(left) == pytest.approx(r["images"][0]["box_share"], abs=1e-5)


def test_the_map_is_drawn_over_what_the_model_saw(tmp_path, fmnist):
    """A crop model (torchvision's resnet18 at 32 px, crop 0.5) on a 120x60 photo: the map covers the centre
    60x60 square it saw; a squash model on the same photo: the whole 2:1 image."""
    train, _ = fmnist
    photo = tmp_path / "wide photo.jpg"
    Image.fromarray(train.images[0][..., 0]).resize((120, 60)).convert("RGB").save(photo)
    crop = _checkpoint(tmp_path / "crop.pt", "resnet18", 3, 32, ["a", "b"], crop_pct=0.5)
    e = tudui.explain(crop, [str(photo)], out=str(tmp_path / "c"), box=[30, 0, 90, 60]).images[0]
    with Image.open(e.png) as im:
        assert im.size == (224, 224)  # the 60x60 crop, drawn at 224 px
    assert 30 <= e.peak[0] < 90 and e.box_share == pytest.approx(1.0)  # all of the map is inside the crop
    squash = _checkpoint(tmp_path / "squash.pt", "fast", 1, 16, ["a", "b"])
    e = tudui.explain(squash, [str(photo)], out=str(tmp_path / "s"), box=[0, 0, 60, 60]).images[0]
    with Image.open(e.png) as im:
        assert im.size == (224, 112)
    assert 0 < e.box_share < 1


def test_a_timm_vit(tmp_path, digit_pngs):
    pytest.importorskip("timm")
    ckpt = _checkpoint(tmp_path / "vit.pt", "timm:test_vit", 1, 32, ["a", "b", "c"])
    r = tudui.explain(ckpt, [str(digit_pngs)], out=str(tmp_path / "v"), method="gradcam")
    assert r.layer == "blocks.5.norm1" and len(r.images) == 4
    assert all(e.map.shape == (32, 32) and np.ptp(e.map) > 0 for e in r.images)


def test_a_users_model_file(tmp_path, digit_pngs):
    (tmp_path / "mine.py").write_text(textwrap.dedent('''
        from torch import nn

        class Mine(nn.Module):
            def __init__(self, num_classes, in_channels=1):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU())
                self.head = nn.Linear(8, num_classes)

            def forward(self, x):
                return self.head(self.body(x).mean((2, 3)))
    '''))
    run = tudui.train(data="digits", model=f"{tmp_path / 'mine.py'}:Mine", epochs=1, batch_size=256,
                      project=str(tmp_path), name="mine", plots=False, tensorboard=False, img_size=8)
    r = tudui.explain(run.best, [str(digit_pngs / "1.png")], out=str(tmp_path / "m"), class_name="7")
    assert r.layer == "body" and r.images[0].class_name == "7" and r.images[0].map.shape == (8, 8)


def test_bad_input_is_one_error_line(digits_run, digit_pngs, tmp_path, capsys):
    base = ["explain", digits_run.best, digit_pngs, "--out", tmp_path / "x"]
    assert "--class 'cat' is not one of this model's classes: 0, 1, 2" in _error(capsys, *base, "--class", "cat")
    assert "--layer 'features.7': this model has no layer of that name" in \
        _error(capsys, *base, "--layer", "features.7")
    assert "no spatial map" in _error(capsys, *base, "--layer", "13")
    assert "--box X0 Y0 X1 Y1 needs X0 < X1" in _error(capsys, *base, "--box", "5", "0", "1", "8")
    assert "and --method occlusion reads none" in _error(capsys, *base, "--method", "occlusion", "--layer", "8")
    assert not (tmp_path / "x").exists()  # nothing written


def test_occlusion_maps_the_input_without_a_layer(digits_run, digit_pngs, tmp_path, capsys):
    """`tudui explain --method occlusion`: a map per image of the class predict gives, said to be of the input (the
    JSON's layer null), with the sanity check's cascade of randomised copies."""
    pytest.importorskip("captum")
    out = tmp_path / "occ"
    assert cli_main(["explain", str(digits_run.best), str(digit_pngs), "--method", "occlusion", "--out", str(out),
                     "--sanity"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("occlusion of the input\n") and "sanity check" in printed
    assert cli_main(["explain", str(digits_run.best), str(digit_pngs), "--method", "occlusion", "--out", str(out),
                     "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    predictions = tudui.predict(digits_run.best, [str(digit_pngs)], topk=1)[1]
    assert r["method"] == "occlusion" and r["layer"] is None and len(r["images"]) == 4
    assert [e["class"] for e in r["images"]] == [p.topk[0][0] for p in predictions]
    assert all(os.path.isfile(e["png"]) for e in r["images"]) and (out / "cams.png").is_file()


def test_eval_cam_draws_the_mistakes_with_their_maps(digits_run, tmp_path, capsys):
    from tests.conftest import colored_pixels
    from tudui.data import normalize
    from tudui.inference.formats import load_model

    assert cli_main(["eval", str(digits_run.best), "--data", "digits", "--split", "val", "--cam", "--json",
                     "--out", str(tmp_path)]) == 0
    assert "cam_mistakes" not in json.loads(capsys.readouterr().out)
    assert colored_pixels(tmp_path / "eval_val_mistakes.png") > 2000  # the heat maps' colours
    r = tudui.evaluate(digits_run.best, "digits", split="val", cam="layercam")["cam_mistakes"]
    items = r["items"]
    assert r["method"] == "layercam" and len(items) >= 2 and all(t != p for _, _, t, p, _ in items)
    loaded = load_model(digits_run.best)
    x = normalize(torch.from_numpy(np.stack([i[1] for i in items])).permute(0, 3, 1, 2), loaded.spec)
    layer = cam.find_layer(loaded.model, x[:1])
    taken_for = cam.class_maps(loaded.model, x, [i[3] for i in items], "layercam", layer)
    truth = cam.class_maps(loaded.model, x, [i[2] for i in items], "layercam", layer)
    maps = np.stack([i[4] for i in items])
    assert maps.shape[1:] == (8, 8) and np.allclose(maps, taken_for, atol=1e-5)  # the class it was taken for
    assert not np.allclose(maps, truth, atol=1e-3)  # which is not the true class's map
    # --cam occlusion reads no layer: each mistake's map is Captum's occlusion map of the input, at its 8x8 size
    r = tudui.evaluate(digits_run.best, "digits", split="val", cam="occlusion")["cam_mistakes"]
    occluded = r["items"]
    assert r["method"] == "occlusion" and [i[0] for i in occluded] == [i[0] for i in items]
    x = normalize(torch.from_numpy(np.stack([i[1] for i in occluded])).permute(0, 3, 1, 2), loaded.spec)
    maps = np.stack([i[4] for i in occluded])
    assert maps.shape[1:] == (8, 8) and np.allclose(maps, cam.occlusion_maps(loaded.model, x, [i[3] for i in occluded]),
                                                    atol=1e-5)
    assert not np.allclose(maps, taken_for, atol=1e-2)  # not the layer's map under another name


def test_train_cam_draws_the_runs_mistakes_with_their_maps(tmp_path, monkeypatch):
    """`tudui train --cam gradcam`: mistakes.png holds the run's most confidently wrong images, each with the map of
    the class it was taken for, computed from best.pt's weights as `tudui explain` computes them."""
    from tests.conftest import colored_pixels
    from tudui.cli import main as cli
    from tudui.data import normalize
    from tudui.inference.formats import load_model
    from tudui.reporting import plots

    drawn = []
    real = plots.plot_cam_mistakes
    monkeypatch.setattr(plots, "plot_cam_mistakes", lambda items, *a: drawn.append(items) or real(items, *a))
    assert cli(["train", "--data", "digits", "--model", "fast", "--epochs", "1", "--subset", "300", "--cam", "gradcam",
                "--calibrate", "off", "--no-tensorboard", "--project", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    assert colored_pixels(run / "mistakes.png") > 2000  # the heat maps' colours over grey digits
    (items,) = drawn
    loaded = load_model(run / "best.pt")
    x = normalize(torch.from_numpy(np.stack([i[1] for i in items])).permute(0, 3, 1, 2), loaded.spec)
    expected = cam.class_maps(loaded.model, x, [i[3] for i in items], "gradcam", cam.find_layer(loaded.model, x[:1]))
    assert len(items) >= 2 and all(t != p for _, _, t, p, _ in items)
    assert np.allclose(np.stack([i[4] for i in items]), expected, atol=1e-5)


def test_a_multi_label_model_gets_one_map_per_predicted_label(pairs_run, pairs_csv, tmp_path):
    """Each label the model predicts for an image (over its class's threshold, most probable first; the top class
    where none is) gets its own entry, PNG and map: the map of that class, as for --class."""
    from tudui.inference.formats import load_model

    files = [str(pairs_csv.parent / "img" / f"{i}.png") for i in range(6)]
    found = tudui.explain(pairs_run.best, files, out=str(tmp_path / "maps"), method="gradcam")
    predictor = tudui.Predictor.from_path(pairs_run.best, device="cpu")
    x = predictor.preprocess(files)
    probs = predictor.probabilities(x)
    expected = [[c for c, _ in labels] or [predictor.classes[int(p.argmax())]]
                for labels, p in zip(predictor.labels_above(probs), probs)]
    assert any(len(e) >= 2 for e in expected)  # the pairs carry two digits: some images get two maps
    assert [e.source for e in found.images] == [f for f, labels in zip(files, expected) for _ in labels]
    assert [e.class_name for e in found.images] == [c for labels in expected for c in labels]
    assert len({e.png for e in found.images}) == len(found.images)  # a PNG each
    model = load_model(pairs_run.best).model
    rows = [k for k, labels in enumerate(expected) for _ in labels]
    maps = cam.class_maps(model, x[rows], [predictor.classes.index(e.class_name) for e in found.images], "gradcam",
                          cam.find_layer(model, x[:1]))
    assert np.allclose(np.stack([e.map for e in found.images]), maps, atol=1e-5)
