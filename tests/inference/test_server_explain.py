"""POST /explain: the map of one upload as a PNG or as numbers (?format=json), by any `tudui explain --method`
(?method=), the same as `tudui explain`'s, with /predict's answers to bad uploads."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("pytorch_grad_cam")

from fastapi.testclient import TestClient  # noqa: E402

from tudui.engine import cam  # noqa: E402
from tudui.inference import Predictor  # noqa: E402
from tudui.inference.server import create_app  # noqa: E402


@pytest.fixture(scope="module")
def digit_png():
    from sklearn.datasets import load_digits

    out = io.BytesIO()
    Image.fromarray((load_digits().images[3] * 255 / 16).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def client(tiny_model):
    predictor = Predictor.from_path(tiny_model, device="cpu")
    with TestClient(create_app(predictor, topk=3)) as c:
        yield c, predictor


def test_the_map_as_numbers_and_as_a_picture(client, digit_png):
    c, predictor = client
    r = c.post("/explain?format=json", content=digit_png)
    assert r.status_code == 200, r.text
    got = r.json()
    x = predictor.preprocess([digit_png])
    top = c.post("/predict", content=digit_png).json()["predictions"][0]
    assert (got["class"], got["probability"]) == (top["class"], pytest.approx(top["probability"], abs=1e-6))
    layer = cam.find_layer(predictor.model, x)
    expected = cam.class_maps(predictor.model, x, [predictor.classes.index(top["class"])], "layercam", layer)[0]
    assert got["layer"] == layer.name and np.allclose(got["map"], expected, atol=1e-4)
    other = c.post("/explain?format=json&class=7", content=digit_png).json()
    assert other["class"] == "7" and not np.allclose(other["map"], got["map"], atol=1e-3)
    plus = cam.class_maps(predictor.model, x, [predictor.classes.index(top["class"])], "gradcam++", layer)[0]
    for query in ("method=gradcam%2B%2B", "method=gradcam++"):  # an unescaped '+' arrives as a space
        other = c.post(f"/explain?format=json&{query}", content=digit_png).json()
        assert other["method"] == "gradcam++" and np.allclose(other["map"], plus, atol=1e-4), query
    png = c.post("/explain", files={"file": ("d.png", digit_png, "image/png")})
    assert png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert rgb.shape == (224, 224, 3) and np.ptp(rgb, axis=-1).max() > 60  # the map's colours over the digit


def test_bad_requests_get_predicts_answers(client):
    c, _ = client
    for kwargs, status in ((dict(content=b""), 400), (dict(content=b"not an image"), 415)):
        a, b = c.post("/explain", **kwargs), c.post("/predict", **kwargs)
        assert a.status_code == b.status_code == status and a.json()["error"] == b.json()["error"]
    assert c.post("/explain?class=cat", content=b"x").json() == {
        "error": "invalid request: class 'cat' is not one of the model's classes", "status": 422}
    assert c.post("/explain?format=gif", content=b"x").status_code == 422
    assert c.post("/explain?method=cam", content=b"x").json() == {
        "error": "invalid request: method 'cam' is not one of gradcam, gradcam++, layercam, eigencam, scorecam, "
                 "occlusion", "status": 422}


def test_an_export_cannot_be_explained(tiny_onnx, digit_png):
    with TestClient(create_app(Predictor.from_path(tiny_onnx[0], device="cpu"))) as c:
        r = c.post("/explain", content=digit_png)
    assert r.status_code == 501 and "serve its checkpoint to explain" in r.json()["error"]
