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
def _live_server(app, config=None):
    """Serve `app` on 127.0.0.1:<free port> (with uvicorn `config` when given, e.g. `tudui serve`'s own); yields the
    base URL and stops the server on exit."""
    import uvicorn

    from tudui.inference.server import listen_socket

    sock = listen_socket("127.0.0.1", 0)  # as `tudui serve` binds
    srv = uvicorn.Server(config or uvicorn.Config(app, log_level="warning"))
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


@pytest.fixture(scope="session")
def tta_checkpoint(tiny_model, tmp_path_factory):
    """A checkpoint that predicts with flip TTA (the tiny digits model, its DataSpec saying hflip and tta), a digit
    image it sees differently from its mirror, and the reference probabilities on that image computed here with
    torch alone: (checkpoint, image, plain forward pass, mean of the image's and the mirror's logits)."""
    import numpy as np
    import torch
    from PIL import Image

    from tudui.core.checkpoint import load_checkpoint
    from tudui.data.sources import load_named
    from tudui.models.registry import build_model

    ckpt = load_checkpoint(tiny_model)
    ckpt["data"] |= {"hflip": True, "tta": True}
    root = tmp_path_factory.mktemp("tta")
    torch.save(ckpt, root / "tta.pt")
    model = build_model(ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    mean, std = ckpt["data"]["mean"][0], ckpt["data"]["std"][0]
    images = load_named("digits", False).images[:32, ..., 0]  # (32, 8, 8) uint8
    x = (torch.from_numpy(images).float()[:, None] / 255 - mean) / std  # (32, 1, 8, 8)
    with torch.no_grad():
        logits, mirrored = model(x), model(x.flip(3))
    t = ckpt.get("temperature", 1.0)  # the run's calibration temperature, which predict divides the logits by
    plain, tta = (logits / t).softmax(1), ((logits + mirrored) / 2 / t).softmax(1)
    i = int((plain - tta).abs().amax(1).argmax())  # the digit whose mirror changes the answer most
    Image.fromarray(images[i]).save(root / "digit.png")
    return root / "tta.pt", root / "digit.png", plain[i].numpy(), tta[i].numpy()
