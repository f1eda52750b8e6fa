"""Every error the server answers is its documented JSON body {"error": ..., "status": ...}, never plain text."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")


class Broken(torch.nn.Module):
    """A model that fails on every batch, as one whose metadata did not fit its weights used to."""

    def forward(self, x):
        raise RuntimeError("Given groups=1, weight of size [16, 1, 3, 3], expected input to have 1 channels")


def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def assert_json_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.text  # was text/plain "Internal Server Error"
    body = r.json()
    assert body["status"] == status and isinstance(body["error"], str) and body["error"]
    return body


def test_unexpected_errors_and_unknown_paths_answer_json(live_server):
    from tudui.data import DataSpec
    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    spec = DataSpec([str(i) for i in range(10)], 8, 1, [0.5], [0.5], hflip=False)
    app = create_app(Predictor(Broken(), spec), docs=False)
    with live_server(app) as url:
        body = assert_json_error(httpx.post(f"{url}/predict", content=png(), timeout=30), 500)
        assert "RuntimeError" in body["error"] and "weight of size" not in body["error"]  # no internals leak
        assert_json_error(httpx.get(f"{url}/no-such-page", timeout=30), 404)
        assert_json_error(httpx.get(f"{url}/predict", timeout=30), 405)
        assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}  # and it keeps serving
