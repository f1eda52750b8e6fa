"""What the server shows and how it treats slow clients: /docs from its own files, /info without paths, read timeout."""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from tudui.inference import Predictor

    return Predictor.from_path(tiny_model, device="cpu")


def test_info_names_the_model_file_but_no_directory(predictor, live_server, tiny_model):
    from tudui.inference.server import create_app

    with live_server(create_app(predictor)) as url:
        r = httpx.get(f"{url}/info")
    info = r.json()
    assert info["model"] == Path(tiny_model).name == "best.pt"
    for part in Path(tiny_model).resolve().parent.parts[1:]:  # no directory of the server shows up anywhere
        assert part not in r.text, part
    assert info["max_batch"] == 32 and info["read_timeout_s"] == 30  # the serving settings, for clients to see


def test_docs_load_nothing_from_other_hosts(predictor, live_server):
    from tudui.inference.server import create_app

    with live_server(create_app(predictor)) as url:
        page = httpx.get(f"{url}/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "http" not in csp  # the browser may fetch from this server only
        # Every resource the page names is a path on this server, and each one is there.
        refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert len(refs) == 4 and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
        assert not re.search(r"https?://", page.text)
        for ref in refs:
            asset = httpx.get(url + ref)
            assert asset.status_code == 200 and len(asset.content) > 100, ref
        assert '"validatorUrl": null' in page.text  # Swagger UI would otherwise send the schema to a validator site
        schema = httpx.get(f"{url}/openapi.json").json()
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
        assert httpx.get(f"{url}/redoc").status_code == 404  # ReDoc's page would load its script from a CDN


def test_no_docs_turns_the_page_and_its_files_off(predictor, live_server):
    from tudui.inference.server import DOCS_ASSETS, create_app

    with live_server(create_app(predictor, docs=False)) as url:
        assert httpx.get(f"{url}/docs").status_code == 404
        assert httpx.get(f"{url}{DOCS_ASSETS}/swagger-ui.css").status_code == 404
        assert httpx.get(f"{url}/health").status_code == 200


def test_workers_sockets_share_their_port_with_nobody_else():
    """--workers N binds N sockets to one port (SO_REUSEPORT on Linux), and a second server on that port, with
    workers or not, is the one-line busy-port error rather than a silent share of the first one's clients."""
    from tudui.core.errors import TuduiError
    from tudui.inference.server import listen_socket, listen_sockets

    socks = listen_sockets("127.0.0.1", 0, 2)
    try:
        port = socks[0].getsockname()[1]
        assert [s.getsockname()[1] for s in socks] == [port] * len(socks)
        for s in socks:
            s.listen()
        for n in (1, 2):
            with pytest.raises(TuduiError, match=f"cannot listen on 127.0.0.1:{port}"):
                listen_sockets("127.0.0.1", port, n)
    finally:
        for s in socks:
            s.close()
    listen_socket("127.0.0.1", port).close()  # free again once they are closed


def test_connections_to_the_listening_socket_send_without_nagle_delay():
    """Without TCP_NODELAY each response waited ~40 ms for the client's delayed ACK (45 ms per request)."""
    import asyncio

    from tudui.inference.server import listen_socket

    sock = listen_socket("127.0.0.1", 0)
    nodelay = []

    async def main():
        async def handle(reader, writer):  # what uvicorn's connections get: asyncio's transport on an accepted socket
            nodelay.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            while not nodelay:
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert sock.proto == socket.IPPROTO_TCP and nodelay == [1]


def _raw_request(url: str, head: bytes, body: bytes, wait_s: float) -> bytes:
    """Send `head` + `body` on a raw socket, then keep the connection open without sending; what came back."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as s:
        s.sendall(head + body)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except socket.timeout:
            pass
    return b"".join(chunks)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_that_stops_arriving_gets_408_and_the_server_goes_on(predictor, live_server, framing):
    from tudui.inference.server import create_app

    app = create_app(predictor, read_timeout_s=0.5)
    if framing == "content-length":  # promises 1,000 bytes, sends 10
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
        body = b"\x89PNG\r\n\x1a\n\0\0"
    else:  # one 10-byte chunk, then silence
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"a\r\n\x89PNG\r\n\x1a\n\0\0\r\n"
    with live_server(app) as url:
        t0 = time.monotonic()
        reply = _raw_request(url, head, body, wait_s=20)
        waited = time.monotonic() - t0
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        assert b'"status":408' in reply and b"--read-timeout" in reply
        assert waited < 15  # answered, and the connection closed, instead of waiting for the client forever
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_bad_query_parameter_is_a_one_line_json_error(predictor, live_server):
    from tudui.inference.server import create_app

    with live_server(create_app(predictor)) as url:
        r = httpx.post(f"{url}/predict?topk=0", content=b"x")
        assert r.status_code == 422 and r.json()["status"] == 422
        assert "topk" in r.json()["error"] and "\n" not in r.json()["error"]


def test_topk_zero_is_refused_by_predict_serve_and_the_server_in_the_same_words(predictor, live_server, tiny_model,
                                                                                 tmp_path, capsys):
    import tudui.cli
    from PIL import Image
    from tudui.inference.server import create_app

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    words = "topk must be at least 1 (classes per image), got 0"
    assert tudui.cli.main(["predict", str(tiny_model), str(tmp_path / "x.png"), "--topk", "0"]) == 2
    assert capsys.readouterr().err == f"error: --{words}\n"  # was accepted: a table with no classes
    assert tudui.cli.main(["serve", str(tiny_model), "--topk", "0"]) == 2  # refused before the model is read
    assert capsys.readouterr().err == f"error: --{words}\n"
    with live_server(create_app(predictor)) as url:
        r = httpx.post(f"{url}/predict?topk=0", content=b"x")
    assert r.status_code == 422 and r.json()["error"] == f"invalid request: {words}"


@pytest.mark.parametrize("flag, value", [("--max-batch", "0"), ("--max-wait-ms", "-1"), ("--read-timeout", "0")])
def test_serve_refuses_bad_settings_in_one_line(cli, flag, value, tmp_path):
    r = cli("serve", str(tmp_path / "none.pt"), flag, value, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {flag} must be") and len(r.stderr.strip().splitlines()) == 1


def test_serve_no_tta_answers_with_the_plain_forward_pass(tta_checkpoint, monkeypatch, capsys):
    """`tudui serve` answers with the flip TTA the model was trained with; `--no-tta` with the plain forward pass.
    The command runs in-process up to uvicorn, whose run() here sends one request to the app instead of serving."""
    import numpy as np
    import uvicorn
    from fastapi.testclient import TestClient

    from tudui.cli import main as tudui_main

    ckpt, image, plain, tta = tta_checkpoint
    answers = []

    def one_request(server, sockets=None):
        with TestClient(server.config.app) as client:
            answers.append(client.post("/predict?topk=10", content=image.read_bytes()).json())

    monkeypatch.setattr(uvicorn.Server, "run", one_request)
    for flags, expected in (([], tta), (["--no-tta"], plain)):
        assert tudui_main(["serve", str(ckpt), "--port", "0", "--device", "cpu", "--workers", "1", *flags]) == 0
        assert "tudui: serving" in capsys.readouterr().out
        given = {p["class"]: p["probability"] for p in answers.pop()["predictions"]}
        np.testing.assert_allclose([given[str(c)] for c in range(10)], expected, atol=1e-5, err_msg=str(flags))
    assert np.abs(plain - tta).max() > 0.02


def test_the_direct_predict_path_answers_as_fastapis_route(predictor, monkeypatch):
    """POST /predict without a query string (or with topk=K) skips FastAPI's routing (server._with_direct_predict);
    any other query goes through FastAPI's route. Both give the same JSON, statuses, errors and headers."""
    from fastapi.testclient import TestClient

    from tudui.inference import server

    image = (Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "images" / "digit0003.png").read_bytes()
    direct_calls = []
    app = server.create_app(predictor, max_upload_mb=0.01)
    inner = app.direct_predict

    async def counted(*args):
        direct_calls.append(args[-1])
        await inner(*args)
    app.direct_predict = counted
    bodies = {"image": (image, "image/png"), "empty": (b"", "image/png"), "not an image": (b"GIF89a...", "image/gif"),
              "too big": (b"\0" * 20_000, "image/png")}
    timing = ("time_ms", "preprocess_ms", "inference_ms")
    with TestClient(app) as client:
        for name, (body, kind) in bodies.items():
            for query in ("", "?topk=3"):
                direct = client.post(f"/predict{query}", content=body, headers={"Content-Type": kind})
                routed = client.post(f"/predict{query}{'&' if query else '?'}unused=1", content=body,
                                     headers={"Content-Type": kind})
                assert direct.status_code == routed.status_code, (name, query, direct.text, routed.text)
                assert direct.headers["content-type"] == routed.headers["content-type"] == "application/json"
                assert direct.headers.get("connection") == routed.headers.get("connection"), name
                a, b = direct.json(), routed.json()
                for key in timing:
                    a.pop(key, None), b.pop(key, None)
                assert a == b, (name, query)
        assert len(direct_calls) == 2 * len(bodies)  # the unusual queries never reached it
        assert direct_calls[:2] == [None, 3]
        assert len(client.post("/predict?topk=3", content=image).json()["predictions"]) == 3
        assert client.post("/predict?topk=0", content=image).status_code == 422  # FastAPI's check, its words
        twice = client.post("/predict?topk=3&topk=5", content=image)  # not the last value quietly taken
        assert twice.json() == {"error": "invalid request: query parameter 'topk' given more than once; give each "
                                         "once", "status": 422}
        assert client.get("/info?x=1&x=2").status_code == 422 and client.get("/info?x=1&y=2").status_code == 200
