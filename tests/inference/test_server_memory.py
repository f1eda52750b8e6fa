"""The server's memory under concurrent worst-case uploads: small files that decode to large images.

A ~150 KB PNG can hold 64 Mpx of 16-bit grey; decoded through float64 it took 1.6 GB, and 8 such uploads at once
15 GB. Decodes are now admitted by the bytes they declare (--max-decode-mb) and one per core at most, so the
server's resident memory stays within its own plus --max-decode-mb plus the uploads themselves.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import threading

import numpy as np
import pytest

from tests.conftest import big_float_tiff, big_png

httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")
pytest.importorskip("fastapi")

from tests.memory import peak_rss_growth_mb  # noqa: E402  (imports psutil: after its importorskip)

# The server under test decodes 16-Mpx images (a quarter of the pixel limit) with a quarter of the default budget,
# so 8 uploads take seconds; the bound scales with both.
BUDGET_MB = 256
# Beyond the budget: the uploads (8 x ~0.2 MB), the allocator's arenas and thread stacks, the client's threads.
SLACK_MB = 160


def _uploads() -> list[tuple[str, bytes]]:
    grey16, tiff, rgba = big_png(4000, 4000), big_float_tiff(4000, 4000), big_png(4000, 4000, 8, 6)
    return [("16-bit PNG", grey16)] * 3 + [("float TIFF", tiff)] * 3 + [("RGBA PNG", rgba)] * 2


def _trim_heap() -> None:
    """Hand the heap's free memory back to the OS (glibc's malloc_trim), so that memory freed by earlier work (building
    the uploads) is not reused unseen and the growth measured from here is what the decodes really take."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the bound is then only looser, never wrong
        pass


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from tudui.inference import Predictor

    return Predictor.from_path(tiny_model, device="cpu")


def test_concurrent_worst_case_uploads_stay_within_the_memory_bound(predictor, live_server):
    from tudui.inference.server import create_app

    uploads = _uploads()
    # 8 decodes allowed at once by count, so the byte budget is what holds them back (on any number of cores).
    app = create_app(predictor, max_decode_mb=BUDGET_MB, max_decodes=8)
    with live_server(app) as url, httpx.Client(timeout=120) as client:
        assert client.post(f"{url}/predict", content=big_png(64, 64)).status_code == 200  # warm: model, threads
        _trim_heap()
        start = threading.Barrier(len(uploads))

        def send(data: bytes):
            with httpx.Client(timeout=120) as c:
                start.wait()
                return c.post(f"{url}/predict", content=data)

        def send_all():  # the server runs in this process: its resident size is what peak_rss_growth_mb samples
            with concurrent.futures.ThreadPoolExecutor(len(uploads)) as pool:
                return list(pool.map(send, [data for _, data in uploads]))

        answers, grown = peak_rss_growth_mb(send_all)
        budget = app.state.decode_budget
    assert not isinstance(answers, Exception), answers
    assert [r.status_code for r in answers] == [200] * len(uploads), [r.text[:200] for r in answers]
    assert budget.peak_bytes <= BUDGET_MB * 2**20 and budget.used == 0 and budget.running == 0
    print(f"resident memory grew {grown:.0f} MiB; decodes held at most {budget.peak_bytes / 2**20:.0f} MiB")
    assert grown <= BUDGET_MB + SLACK_MB, f"resident memory grew {grown:.0f} MiB (bound {BUDGET_MB + SLACK_MB} MiB)"
    # The server's answer is `tudui predict`'s: the same decoding path for 16-bit images.
    want = predictor.probabilities(predictor.batch([predictor.spec.decode(uploads[0][1])]))[0].numpy()
    got = {p["class"]: p["probability"] for p in answers[0].json()["predictions"]}
    assert all(abs(got[c] - float(want[predictor.classes.index(c)])) < 1e-6 for c in got)


def test_an_image_whose_decoding_alone_exceeds_the_budget_gets_413(predictor, live_server):
    from tudui.inference.server import create_app

    app = create_app(predictor, max_decode_mb=100)
    with live_server(app) as url, httpx.Client(timeout=120) as client:
        r = client.post(f"{url}/predict", content=big_float_tiff(4000, 4000))  # 16 Mpx of float32: ~150 MiB
        assert r.status_code == 413
        body = r.json()
        assert body["status"] == 413 and "--max-decode-mb" in body["error"] and "4000x4000" in body["error"]
        assert client.post(f"{url}/predict", content=big_png(1000, 1000)).status_code == 200  # still serving
        info = client.get(f"{url}/info").json()
        assert info["max_decode_mb"] == 100 and info["max_decodes"] >= 1
    assert app.state.decode_budget.peak_bytes < 50 * 2**20  # only the small image was admitted: refused from its header
