"""A live uvicorn on a free 127.0.0.1 port, in a thread of the test process, for tests that need real sockets."""
from __future__ import annotations

import contextlib
import threading
import time

import pytest


@pytest.fixture(scope="session")
def live_server():
    """`with live_server(app) as url:` serves the FastAPI `app` on 127.0.0.1 for the block."""
    return _live_server


@contextlib.contextmanager
def _live_server(app):
    """Serve `app` on 127.0.0.1:<free port>; yields the base URL and stops the server on exit."""
    import uvicorn

    from tudui.inference.server import listen_socket

    sock = listen_socket("127.0.0.1", 0)  # as `tudui serve` binds
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()
