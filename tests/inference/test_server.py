"""The HTTP API against a real uvicorn on 127.0.0.1, with an HTTP client, including every bad-input case."""
from __future__ import annotations

import io
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

MAX_UPLOAD_MB = 0.25  # small, so the 413 cases need little memory


def png_bytes(size=(8, 8), mode="L", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A few hundred bytes that declare a width x height image (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def server(tiny_model):
    """Base URL of a live server on a free loopback port; stopped after the module's tests."""
    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    predictor = Predictor.from_path(tiny_model, device="cpu")
    app = create_app(predictor, max_upload_mb=MAX_UPLOAD_MB, topk=3)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as tudui serve
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", predictor
    srv.should_exit = True
    thread.join(10)
    sock.close()


def assert_still_serving(url: str) -> None:
    r = httpx.post(f"{url}/predict", content=png_bytes(seed=1), timeout=30)
    assert r.status_code == 200 and r.json()["predictions"]


def test_health_info_and_page(server):
    url, predictor = server
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    info = httpx.get(f"{url}/info").json()
    assert info["classes"] == predictor.classes and info["img_size"] == 8 and info["channels"] == 1
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="predictions"' in page.text and "Content-Security-Policy" in page.headers
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere


def test_predict_multipart_and_raw_match_the_predictor(server):
    url, predictor = server
    data = png_bytes(seed=2)
    expected = predictor.predict([data], topk=3)[0].topk
    for kwargs in ({"files": {"file": ("x.png", data, "image/png")}}, {"content": data}):
        r = httpx.post(f"{url}/predict", timeout=30, **kwargs)
        assert r.status_code == 200, r.text
        body = r.json()
        got = [(p["class"], p["probability"]) for p in body["predictions"]]
        assert [c for c, _ in got] == [c for c, _ in expected]
        assert np.allclose([p for _, p in got], [p for _, p in expected], atol=1e-6)
        assert body["time_ms"] >= 0 and body["image"] == {"width": 8, "height": 8, "bytes": len(data)}
    r = httpx.post(f"{url}/predict?topk=1", content=data, timeout=30)
    assert len(r.json()["predictions"]) == 1


@pytest.mark.parametrize("case", ["not_image", "truncated", "too_big", "too_big_chunked", "bomb", "empty",
                                  "empty_multipart", "no_file_field"])
def test_bad_input_gets_clear_error_and_server_keeps_serving(server, case):
    url, _ = server
    big = b"\0" * int(MAX_UPLOAD_MB * 1024 * 1024 + 1)
    requests = {  # case: (status, request, the start of the JSON error message)
        "not_image": (415, {"content": b"this is plain text, not a picture"},
                      "the upload is not an image that can be decoded (PNG, JPEG"),
        # A valid PNG header (64x64) whose pixel data is cut off: known as an image, fails only when decoded.
        "truncated": (415, {"content": png_bytes((64, 64))[:80]},
                      "the upload is not a readable image: corrupt or truncated (image file is truncated)"),
        "too_big": (413, {"content": big}, "upload is over this server's limit of 0.25 MiB (--max-upload-mb)"),
        # No Content-Length: the limit must be enforced while reading.
        "too_big_chunked": (413, {"content": iter([big[:100_000]] * 4)},
                            "upload is over this server's limit of 0.25 MiB (--max-upload-mb)"),
        "bomb": (413, {"content": bomb_png()}, "image has too many pixels"),
        "empty": (400, {"content": b""},
                  "empty upload: send an image as multipart field 'file' or as the request body"),
        "empty_multipart": (400, {"files": {"file": ("x.png", b"", "image/png")}}, "empty upload: send an image"),
        "no_file_field": (400, {"files": {"other": ("x.png", png_bytes(), "image/png")}},
                          "multipart upload has no file field named 'file'"),
    }
    status, kwargs, words = requests[case]
    r = httpx.post(f"{url}/predict", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json" and r.json()["error"].startswith(words), r.text
    assert_still_serving(url)


def test_missing_web_packages_message(monkeypatch):
    import builtins

    from tudui.core.errors import TuduiError
    from tudui.inference import server as srv

    real_import = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name == "fastapi":
            raise ImportError("no fastapi", name="fastapi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    with pytest.raises(TuduiError, match=r"pip install 'tudui\[serve\]'"):
        srv._import_web()
