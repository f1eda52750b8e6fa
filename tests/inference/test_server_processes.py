"""`tudui serve`'s connections and processes: slow-loris clients closed after --header-timeout while others are
answered, raw image bodies, and --workers N processes sharing one port that stop cleanly."""
from __future__ import annotations

import contextlib
import re
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
import httpx  # noqa: E402

from tests.conftest import Child  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "images"


@contextlib.contextmanager
def served(app, header_timeout_s: float, http: str = "auto"):
    """`tudui serve`'s uvicorn setup (inference/http.py) for `app` in a thread, on a free loopback port."""
    from tests.inference.conftest import _live_server
    from tudui.core.options import ServeOptions
    from tudui.inference.http import uvicorn_config

    o = ServeOptions(model="m.pt", header_timeout_s=header_timeout_s, log_level="warning", workers=1)
    with _live_server(app, uvicorn_config(app, o, http=http)) as url:
        yield int(url.rsplit(":", 1)[1])


def closed_by_server(s: socket.socket, within: float) -> bool:
    """Whether the server closes `s` (EOF or reset) within `within` seconds."""
    s.settimeout(within)
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_slow_loris_clients_are_closed_while_others_are_answered(tiny_model, http):
    from tudui.inference import Predictor
    from tudui.inference.http import protocol
    from tudui.inference.server import create_app

    assert protocol(http).__name__ == {"httptools": "HeaderDeadlineHttpTools", "h11": "HeaderDeadlineH11"}[http]
    app = create_app(Predictor.from_path(tiny_model, device="cpu"))
    image = (IMAGES / "digit0003.png").read_bytes()
    with served(app, header_timeout_s=1.0, http=http) as port:
        lorises = []
        for _ in range(30):  # each sends a request line and one header, then never finishes
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            lorises.append(s)
        trickler = socket.create_connection(("127.0.0.1", port))  # keeps sending, a byte at a time, never done
        stop = threading.Event()

        def trickle():
            with contextlib.suppress(OSError):
                for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                    if stop.wait(0.1):
                        return
                    trickler.sendall(bytes([byte]))

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:  # an ordinary client is answered meanwhile, at once
            r = client.post(f"http://127.0.0.1:{port}/predict", content=image, headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["predictions"]
            assert time.monotonic() - started < 1.0
        try:
            assert all(closed_by_server(s, 5) for s in lorises)
            assert closed_by_server(trickler, 5)  # its bytes kept coming, but its headers never ended
            assert time.monotonic() - started < 8
        finally:
            stop.set()
            for s in [*lorises, trickler]:
                s.close()
        # a kept-alive connection is not cut off by the deadline: its second request is answered after it
        with httpx.Client(timeout=10) as client:
            assert client.get(f"http://127.0.0.1:{port}/health").status_code == 200
            time.sleep(1.5)
            assert client.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}


def test_raw_image_bodies_with_an_image_content_type(tiny_model):
    from fastapi.testclient import TestClient

    from tudui.inference import Predictor
    from tudui.inference.server import create_app

    predictor = Predictor.from_path(tiny_model, device="cpu")
    path = IMAGES / "digit0003.png"
    want = predictor.predict([path], topk=1)[0].topk[0][0]
    with TestClient(create_app(predictor)) as client:
        for kind in ("image/png", "image/*", "application/octet-stream"):
            r = client.post("/predict", content=path.read_bytes(), headers={"Content-Type": kind})
            assert r.status_code == 200 and r.json()["predictions"][0]["class"] == want, (kind, r.text)
        r = client.post("/predict", content=b"not an image", headers={"Content-Type": "image/png"})
        assert r.status_code == 415


def listening_children(parent, port: int, n: int, gone: int | None = None) -> list:
    """The descendants of psutil Process `parent` (but `gone`, a PID) listening on `port`, once there are `n` of them
    (at most 60 s: a worker may still be loading the model)."""
    import psutil

    deadline = time.monotonic() + 60
    while True:
        listening = [p for p in parent.children(recursive=True) if p.pid != gone and any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in p.net_connections("tcp"))]
        if len(listening) == n or time.monotonic() > deadline:
            return listening
        time.sleep(0.2)


def test_workers_share_one_port_and_stop_cleanly(tiny_model, tmp_path):
    """As a user runs it: `tudui serve --workers 2`; both worker processes listen on the one port, answer from the
    ONNX Runtime copy the parent made (--runtime auto on a CPU), a killed worker's replacement takes over its
    listening socket (on Linux each has its own: inference/http.py), and all are gone after SIGTERM to the command,
    the copy's folder with them."""
    import psutil

    child = Child("serve", tiny_model, "--port", "0", "--device", "cpu", "--workers", "2",
                  env={"TMPDIR": str(tmp_path)})
    try:
        child.wait_for_line("tudui: serving", timeout=120)
        line = "".join(child.stdout)
        assert "2 worker processes" in line and "(checkpoint on onnxruntime, " in line, line
        assert [p.name for p in tmp_path.glob("tudui-serve-*/*")] == ["model.onnx"]  # one copy for both workers
        port = int(re.search(r"on http://127\.0\.0\.1:(\d+)/", line).group(1))
        image = (IMAGES / "digit0003.png").read_bytes()
        with httpx.Client(timeout=120) as client:
            for _ in range(4):
                r = client.post(f"http://127.0.0.1:{port}/predict", content=image,
                                headers={"Content-Type": "image/png"})
                assert r.status_code == 200, r.text
                assert client.get(f"http://127.0.0.1:{port}/info").json()["runtime"] == "onnxruntime"
        parent = psutil.Process(child.proc.pid)
        listening = listening_children(parent, port, 2)
        assert len(listening) == 2, parent.children(recursive=True)
        if sys.platform.startswith("linux"):  # one socket per worker: a dead one's must not be left without one
            listening[0].kill()
            listening = listening_children(parent, port, 2, gone=listening[0].pid)
            assert len(listening) == 2, parent.children(recursive=True)
            # 16 new connections, spread over both sockets by the kernel (all on one: p = 2^-15); each answered. Those
            # on the replacement's socket wait in its backlog while it imports and loads the model, which on a loaded
            # 2-core machine took over 30 s once: as long as the first start may take
            with ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(lambda _: httpx.post(f"http://127.0.0.1:{port}/predict", content=image,
                                                           timeout=120).status_code, range(16)))
            assert codes == [200] * 16
        pids = [p.pid for p in listening]
        child.proc.send_signal(signal.SIGTERM)
        assert child.wait(60) == 0, child.err
        assert not list(tmp_path.glob("tudui-serve-*"))
        assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                       for pid in pids)
    finally:
        child.kill()


def test_workers_must_be_a_positive_count(tiny_model, capsys):
    from tudui.cli import main as tudui_main

    for value, words in (("0", "--workers must be at least 1"), ("1.5", "--workers takes a number of processes")):
        assert tudui_main(["serve", str(tiny_model), "--workers", value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err


@pytest.mark.parametrize("access_log", [True, False])
def test_no_access_log_leaves_out_the_line_per_request(tiny_model, access_log, capsys):
    """`--access-log` prints one line per request, as uvicorn does; the default (`--no-access-log`) none."""
    from tests.inference.conftest import _live_server
    from tudui.cli import build_parser
    from tudui.core.options import ServeOptions
    from tudui.inference import Predictor
    from tudui.inference.http import uvicorn_config
    from tudui.inference.server import create_app

    flags = ["--access-log"] if access_log else []
    parsed = vars(build_parser().parse_args(["serve", str(tiny_model), *flags]))
    assert parsed.get("access_log", ServeOptions.access_log) is access_log  # a flag not given is left to the default
    app = create_app(Predictor.from_path(tiny_model, device="cpu"))
    # uvicorn's logging set-up: its access lines go to the sys.stdout of now (this test's captured one)
    config = uvicorn_config(app, ServeOptions(model=str(tiny_model), workers=1, access_log=access_log))
    with _live_server(app, config) as url:
        for _ in range(3):
            r = httpx.post(f"{url}/predict", content=(IMAGES / "digit0003.png").read_bytes(),
                           headers={"content-type": "image/png"})
            assert r.status_code == 200
    out = capsys.readouterr().out
    assert out.count('"POST /predict HTTP/1.1" 200') == (3 if access_log else 0), out
