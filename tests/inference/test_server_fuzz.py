"""Fuzzing the HTTP API on 127.0.0.1: schemathesis from the server's own OpenAPI schema, and hostile image bytes.

Both run against one live uvicorn (micro-batching on, as `tudui serve` runs by default) and require zero 5xx
answers, every error as the documented one-line JSON, and the server still answering /health and a real
prediction afterwards. Bounded: a few hundred requests in all (~20 s on 2 cores).
"""
from __future__ import annotations

import collections
import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

MAX_UPLOAD_MB = 0.25  # small, so oversized cases need little memory
SCALE = int(os.environ.get("TUDUI_FUZZ_SCALE", "1"))  # e.g. 20 for a longer hunt than CI's
API_EXAMPLES = 120 * SCALE  # schemathesis cases per operation and generation mode (POST /predict: positive + negative)
IMAGE_EXAMPLES = 150 * SCALE  # hostile images
ALLOWED = {200, 400, 413, 415, 422}  # every documented answer; anything else (5xx above all) is a failure


@pytest.fixture(scope="module")
def server(tiny_model, live_server):
    """(base URL, app) of a live server on a free loopback port, with batching on; stopped afterwards."""
    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    app = create_app(Predictor.from_path(tiny_model, device="cpu"), max_upload_mb=MAX_UPLOAD_MB, topk=3,
                     max_batch=8, max_wait_ms=2)
    with live_server(app) as url:
        yield url, app


def assert_alive(url: str) -> None:
    assert httpx.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8), "L").save(buf, "PNG")
    r = httpx.post(f"{url}/predict", content=buf.getvalue(), timeout=30)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


# --- schemathesis -----------------------------------------------------------------------------------------------------
def test_schemathesis_finds_no_server_error(server):
    from schemathesis import GenerationMode

    url, _ = server
    # The schema can say "binary, at least one byte" but not "bytes that decode as an image", so a schema-valid
    # body may rightly get 415 (not an image) or 413 (too many pixels); every other check runs as schemathesis has it.
    config = schemathesis.Config.from_dict(
        {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "413", "415"]}}})
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /health", "GET /info", "POST /predict"}
    statuses: collections.Counter = collections.Counter()
    for op in operations:
        has_input = bool(op.body) or any(True for _ in op.iter_parameters())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,):
            @settings(max_examples=API_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(mode))
            def fuzz(case):
                response = case.call(base_url=url, timeout=30)
                statuses[response.status_code] += 1
                case.validate_response(response)  # not_a_server_error, status/content-type/schema conformance, ...

            fuzz()
    print(f"\nschemathesis: {sum(statuses.values())} requests, answers {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 200  # the GETs without input take 1 case each; /predict takes the rest
    assert not [s for s in statuses if s >= 500]
    assert statuses[200] and statuses[415] and statuses[422]  # real images, non-images and bad parameters were sent
    assert_alive(url)


# --- hostile image bytes ----------------------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# Formats Pillow writes, with the modes each takes; a frame in another mode is converted to the format's first one.
FORMATS = {"PNG": ["RGB", "1", "L", "LA", "P", "RGBA", "I", "I;16"], "JPEG": ["RGB", "L", "CMYK"],
           "BMP": ["RGB", "1", "L", "P"], "GIF": ["P", "L", "RGB"], "TIFF": ["RGB", "1", "L", "LA", "P", "RGBA",
           "CMYK", "I", "I;16", "F", "YCbCr"], "WEBP": ["RGB", "RGBA"], "PPM": ["RGB", "1", "L", "I"],
           "ICO": ["RGBA", "RGB"]}
MULTI_FRAME = {"GIF", "TIFF", "WEBP", "PNG"}  # PNG: APNG


@st.composite
def images(draw) -> bytes:
    """A real image file: any format and mode above, 1 to 40 px a side, one frame or several of different sizes."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    frames = draw(st.integers(2, 4)) if fmt in MULTI_FRAME and draw(st.booleans()) else 1
    pics = []
    for i in range(frames):
        w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        seed = draw(st.integers(0, 2**16))
        rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        mode = draw(st.sampled_from(FORMATS[fmt]))
        pics.append(rgb.convert(mode) if mode not in ("I;16",) else rgb.convert("L").convert("I").convert("I;16"))
    buf = io.BytesIO()
    try:
        pics[0].save(buf, fmt, **({"save_all": True, "append_images": pics[1:]} if frames > 1 else {}))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # this Pillow cannot write that (mode, frames)
        buf = io.BytesIO()
        pics[0].convert(FORMATS[fmt][0]).save(buf, fmt)
    return buf.getvalue()


def with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with the width and height in its header replaced (PNG, GIF, BMP; others unchanged)."""
    if data.startswith(b"\x89PNG") and data[12:16] == b"IHDR":
        ihdr = struct.pack(">II", width % 2**32, height % 2**32) + data[24:29]
        return data[:8] + _chunk(b"IHDR", ihdr) + data[33:]
    if data[:3] == b"GIF":  # logical screen, then the first image descriptor when it follows directly
        out = bytearray(data)
        out[6:10] = struct.pack("<HH", width % 2**16, height % 2**16)
        return bytes(out)
    if data[:2] == b"BM" and len(data) >= 26:  # signed 32-bit: a negative height is a top-down bitmap
        out = bytearray(data)
        out[18:26] = struct.pack("<ii", max(-2**31, min(width, 2**31 - 1)), max(-2**31, min(height, 2**31 - 1)))
        return bytes(out)
    return data


hostile_sizes = st.sampled_from([0, 1, 2, 8_000, 65_535, 100_000, 2**31 - 1, 2**32 - 1, -1, -8_000])


@st.composite
def hostile_images(draw) -> bytes:
    data = draw(images())
    how = draw(st.sampled_from(["intact", "resized header", "truncated", "flipped", "appended", "resized+truncated"]))
    if "resized" in how:
        data = with_size(data, draw(hostile_sizes), draw(hostile_sizes))
    if "truncated" in how:
        data = data[:draw(st.integers(1, max(1, len(data) - 1)))]
    if how == "flipped":
        at = draw(st.integers(0, len(data) - 1))
        junk = draw(st.binary(min_size=1, max_size=16))
        data = data[:at] + junk + data[at + len(junk):]
    if how == "appended":
        data += draw(st.binary(min_size=1, max_size=64))
    return data


def test_hostile_image_bytes_get_an_answer_never_a_server_error(server):
    url, app = server
    statuses: collections.Counter = collections.Counter()
    with httpx.Client(base_url=url, timeout=60) as client:
        @settings(max_examples=IMAGE_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(data=hostile_images(), multipart=st.booleans())
        def post(data, multipart):
            kwargs = {"files": {"file": ("x", data, "application/octet-stream")}} if multipart else {"content": data}
            r = client.post("/predict", **kwargs)
            statuses[r.status_code] += 1
            assert r.status_code in ALLOWED, r.text
            body = r.json()
            if r.status_code == 200:
                probs = [p["probability"] for p in body["predictions"]]
                assert len(probs) == 3 and all(0 <= p <= 1 for p in probs) and probs == sorted(probs, reverse=True)
                assert body["batch"] >= 1
            else:
                assert body["status"] == r.status_code and body["error"] and "\n" not in body["error"]

        post()
    print(f"\nhostile images: {sum(statuses.values())} requests, answers {dict(sorted(statuses.items()))}")
    assert statuses[200] and statuses[415]  # both decodable and broken images were among them
    assert app.state.batcher.items >= statuses[200]  # the 200s went through the micro-batcher
    assert_alive(url)
